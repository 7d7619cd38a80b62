"""Reciprocal rank fusion of a model's ranking with the first stage's: its scores where they
come with the passages, else the input order."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Literal

from haystack_llmrank.ranking import Ranking

AUTO_FUSION: Literal["auto"] = "auto"
"""``fusion_k`` that fuses as the model recommends
(:func:`~haystack_llmrank.models.recommended_fusion_k`), and only where first-stage scores
come with the passages."""

FusionChoice = int | Literal["auto"] | None


def check_fusion_k(fusion_k: int | None) -> int | None:
    """``fusion_k`` as an ``int``, or ``ValueError`` unless it is ``None`` or an integer >= 0."""
    return None if fusion_k is None else _integer_k(fusion_k)


def check_fusion_choice(fusion_k: FusionChoice) -> FusionChoice:
    """``fusion_k`` as given to :meth:`~haystack_llmrank.reranker.Reranker.from_pretrained`
    and the adapters: :data:`AUTO_FUSION`, or what :func:`check_fusion_k` accepts."""
    return AUTO_FUSION if fusion_k == AUTO_FUSION else check_fusion_k(fusion_k)


def first_stage_scores(scores: Iterable[object], count: int) -> list[float]:
    """``scores`` as floats, one per passage of a request of ``count``; ``ValueError``
    unless each is a finite real number (not a bool) and there are ``count`` of them."""
    given = list(scores)
    if len(given) != count:
        raise ValueError(f"{len(given)} first-stage scores for {count} passages")
    for position, score in enumerate(given):
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise ValueError(f"first-stage score {position} is not a number: {score!r}")
        if not math.isfinite(score):
            raise ValueError(f"first-stage score {position} is not finite: {score!r}")
    return [float(score) for score in given]  # type: ignore[arg-type]


def complete_scores(scores: Iterable[float | None]) -> list[float] | None:
    """``scores`` where every passage has one, else ``None``: a first stage that scored only
    some passages gives no ranking of them all."""
    given = list(scores)
    return None if None in given else [score for score in given if score is not None]


def first_stage_ranks(scores: Sequence[float]) -> list[int]:
    """Each passage's first-stage rank (from 0) by ``scores``, highest first, equal scores
    in input order."""
    ranks = [0] * len(scores)
    for rank, index in enumerate(sorted(range(len(scores)), key=lambda i: -scores[i])):
        ranks[index] = rank
    return ranks


def _integer_k(fusion_k: int) -> int:
    if isinstance(fusion_k, bool) or not isinstance(fusion_k, numbers.Integral) or fusion_k < 0:
        raise ValueError(f"fusion_k must be an integer >= 0 or None, got {fusion_k!r}")
    return int(fusion_k)


def fuse_with_first_stage(
    ranking: Ranking, fusion_k: int, positions: Sequence[int] | None = None
) -> Ranking:
    """``ranking`` fused with the first stage's by reciprocal rank fusion (RRF).

    The first-stage rank of the passage at index ``i`` of ``ranking`` is ``positions[i]``
    (the input index where ``None``: the input order taken as the first stage's, best
    first). A passage of first-stage rank ``f`` that the model ranked ``r`` (both from 0)
    scores ``1 / (fusion_k + 1 + r) + 1 / (fusion_k + 1 + f)``; passages are ordered by
    that score, equal scores in the model's order. Those scores become :attr:`Ranking.scores`, the
    model's logits stay in :attr:`Ranking.logits`, and every position counts as ranked
    (``unranked`` is 0) except the blank passages (:attr:`Ranking.blank`), which no window
    showed: they stay last, at the lowest fused score. The cost is unchanged: fusion takes
    no forward pass.
    """
    k = _integer_k(fusion_k)
    first = list(range(len(ranking))) if positions is None else list(positions)
    judged = ranking.order[: len(ranking) - ranking.blank]
    blank = ranking.order[len(judged) :]
    fused = {
        item: 1.0 / (k + 1 + rank) + 1.0 / (k + 1 + first[item]) for rank, item in enumerate(judged)
    }
    logit = ranking.logit_of()
    order = [*sorted(judged, key=lambda item: -fused[item]), *blank]
    scores = [fused[item] for item in order[: len(judged)]]
    lowest = scores[-1] if scores else 0.0
    return Ranking(
        tuple(order),
        (*scores, *(lowest,) * len(blank)),
        tuple(logit[item] for item in order),
        len(blank),
        ranking.cost,
        len(blank),
    )
