"""OpenSearch-shaped responses of a rescored search.

Every response is the cluster's own response (first pass, or the server-applied search) with
``hits.hits`` replaced by copies of the page's hits and an ``llmrank`` section added. Each
returned hit carries:

- ``_score``: the final score (the first-pass score when failing open);
- ``_first_pass_score``: its first-pass score;
- ``_rank``: ``{"final": r, "first_pass": r, "engine": r | None}``, 0-based positions in the
  final order, the first pass, and the engine's ranking of the window (``None`` outside it).

A client-side hit that carries an ``_explanation`` (``explain: true``) gets one of its final
score (:mod:`opensearch_ltr.explanation`); others keep the cluster's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opensearch_ltr.errors import HitKey, RescoreRequestError, hit_label
from opensearch_ltr.explanation import EngineVerdict, rescored_explanation
from opensearch_ltr.rescore import RescoredHit, RescoreSpec, as_printed

HIT_FIELDS = ("_index", "_id", "_score")
"""What rescoring reads from every first-pass hit, besides the passage's ``_source`` fields."""


def hit_key(hit: Mapping[str, Any]) -> HitKey:
    """A hit's identity across responses: ``(_index, _id, _routing)`` (see :data:`HitKey`)."""
    routing = hit.get("_routing")
    return (str(hit.get("_index")), str(hit.get("_id")), None if routing is None else str(routing))


def hits_of(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The response's ``hits.hits``; none when absent (a ``filter_path`` drops empty lists)."""
    hits = response.get("hits")
    found = hits.get("hits") if isinstance(hits, Mapping) else None
    return found if isinstance(found, list) else []


def check_hits(hits: Sequence[Mapping[str, Any]]) -> None:
    """Refuse first-pass hits without the :data:`HIT_FIELDS` rescoring reads (``_index`` and
    ``_id`` strings, and a numeric ``_score``), and two hits with one :func:`hit_key`."""
    seen: set[HitKey] = set()
    for hit in hits:
        score = hit.get("_score")
        numeric = isinstance(score, int | float) and not isinstance(score, bool)
        lacks = [
            name
            for name in HIT_FIELDS
            if not (numeric if name == "_score" else isinstance(hit.get(name), str))
        ]
        key = hit_key(hit)
        if lacks:
            raise RescoreRequestError(
                f"first-pass hit {hit_label(key)} has no {', '.join(lacks)}; rescoring needs "
                "_index, _id and a numeric _score on every hit (does a filter_path drop them?)"
            )
        if key in seen:
            raise RescoreRequestError(
                f"first-pass hit {hit_label(key)} is there twice; rescoring tells hits apart by "
                "_index, _id and _routing (does a filter_path drop _routing?)"
            )
        seen.add(key)


@dataclass(frozen=True)
class EngineWindow:
    """The engine's verdict on the window, by first-pass position: its rank, and the score
    transform's value before tie-breaking."""

    ranks: dict[int, int]
    values: list[float]


@dataclass
class LlmrankInfo:
    """What the rescoring stage did; rendered as the response's ``llmrank`` section."""

    mode: str
    query_text: str | None
    window_size: int
    score_transform: str
    model: str | None
    reranked: int = 0
    fail_open: bool = False
    reason: str | None = None
    missing_text: list[HitKey] = field(default_factory=list)
    took_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``llmrank`` section."""
        return {
            "mode": self.mode,
            "query_text": self.query_text,
            "window_size": self.window_size,
            "reranked": self.reranked,
            "score_transform": self.score_transform,
            "model": self.model,
            "fail_open": self.fail_open,
            "reason": self.reason,
            "missing_text": [_reference(key) for key in self.missing_text],
            "took_ms": self.took_ms,
        }


def _reference(key: HitKey) -> dict[str, str]:
    """A hit's ``_index`` and ``_id``, and its ``_routing`` when it has one."""
    index, doc_id, routing = key
    reference = {"_index": index, "_id": doc_id}
    return reference if routing is None else {**reference, "_routing": routing}


def annotate(
    hit: Mapping[str, Any],
    score: Any,
    first_pass: tuple[int, Any] | None,
    final: int,
    engine: int | None,
) -> dict[str, Any]:
    """A copy of ``hit`` with its final score, first-pass score and ranks."""
    position, first_score = first_pass if first_pass is not None else (None, None)
    rank = {"final": final, "first_pass": position, "engine": engine}
    return {**hit, "_score": score, "_first_pass_score": first_score, "_rank": rank}


def respond(
    base: Mapping[str, Any],
    hits: list[dict[str, Any]],
    max_score: Any,
    took: int,
    info: LlmrankInfo,
) -> dict[str, Any]:
    """``base`` with the page's hits, ``max_score``, ``took`` and the ``llmrank`` section."""
    return {
        **base,
        "took": took,
        "hits": {**base.get("hits", {}), "hits": hits, "max_score": max_score},
        "llmrank": info.to_dict(),
    }


def first_pass_page(
    first: Mapping[str, Any], from_: int, size: int, took: int, info: LlmrankInfo
) -> dict[str, Any]:
    """The first-pass order, untouched but annotated: the fail-open response."""
    hits = hits_of(first)
    page = [
        annotate(hits[i], hits[i].get("_score"), (i, hits[i].get("_score")), i, None)
        for i in range(from_, min(from_ + size, len(hits)))
    ]
    return respond(first, page, first.get("hits", {}).get("max_score"), took, info)


def client_page(
    first: Mapping[str, Any],
    ranked: Sequence[RescoredHit],
    spec: RescoreSpec,
    window: EngineWindow,
    from_: int,
    size: int,
    took: int,
    info: LlmrankInfo,
) -> dict[str, Any]:
    """The page ``[from_, from_ + size)`` of the client-side rescore; ``spec`` is the one
    combined (after :func:`~opensearch_ltr.rescore.break_ties`)."""
    hits = hits_of(first)
    page = []
    for final, r in enumerate(ranked[from_ : from_ + size], start=from_):
        rank = window.ranks.get(r.position)
        hit = annotate(
            hits[r.position], as_printed(r.score), (r.position, r.first_pass_score), final, rank
        )
        page.append(_explained(hit, r, spec, window, info))
    return respond(first, page, as_printed(ranked[0].score) if ranked else None, took, info)


def _explained(
    hit: dict[str, Any],
    rescored: RescoredHit,
    spec: RescoreSpec,
    window: EngineWindow,
    info: LlmrankInfo,
) -> dict[str, Any]:
    """``hit`` with its ``_explanation``, if it has one, explaining its final score."""
    if "_explanation" not in hit:
        return hit
    rank = window.ranks.get(rescored.position)
    verdict = None
    if rank is not None:
        verdict = EngineVerdict(
            value=window.values[rescored.position],
            rank=rank,
            ranked=info.reranked,
            transform=info.score_transform,
            model=info.model,
            missing_text=hit_key(hit) in info.missing_text,
        )
    explanation = rescored_explanation(hit["_explanation"], rescored, spec, verdict)
    return {**hit, "_explanation": explanation}


def server_page(
    second: Mapping[str, Any],
    first: Mapping[str, Any],
    engine_ranks: Mapping[int, int],
    from_: int,
    took: int,
    info: LlmrankInfo,
) -> dict[str, Any]:
    """The server-applied search's response, its hits annotated from the first pass.

    A hit absent from the first pass (the index changed in between) gets ``None`` ranks.
    """
    first_hits = {hit_key(h): (i, h.get("_score")) for i, h in enumerate(hits_of(first))}
    page = []
    for final, hit in enumerate(hits_of(second), start=from_):
        found = first_hits.get(hit_key(hit))
        engine = engine_ranks.get(found[0]) if found is not None else None
        page.append(annotate(hit, hit.get("_score"), found, final, engine))
    return respond(second, page, second.get("hits", {}).get("max_score"), took, info)
