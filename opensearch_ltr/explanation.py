"""The ``_explanation`` of a client-side rescored hit, shaped as OpenSearch's query rescorer
explains a rescored hit (``QueryRescorer.explain``).

Every node is ``{"value", "description", "details"}``, each value printed as the cluster prints
a Java ``float``:

- a window hit: ``"<mode> of:"`` (``sum``, ``product``, ``avg``, ``max``, ``min``) with the
  final score, over ``"product of:"`` the first-pass explanation and ``primaryWeight``
  (``query_weight`` as applied, ``2**-k`` for 0), and ``"product of:"`` the engine's value and
  ``secondaryWeight`` (``rescore_query_weight``);
- a hit past the window: the first-pass ``"product of:"`` alone, as OpenSearch explains a hit
  it did not rescore.

The engine's node describes its value: the score transform, the model, and the hit's rank in
the engine's ranking of the window. Where :func:`~opensearch_ltr.rescore.break_ties` moved the
value, the node holds the value combined and describes the move, over the engine's own value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opensearch_ltr.rescore import RescoredHit, RescoreSpec, as_printed

_MODE_NAMES = {"total": "sum", "multiply": "product", "avg": "avg", "max": "max", "min": "min"}
"""How OpenSearch names each ``score_mode`` in an explanation."""


@dataclass(frozen=True)
class EngineVerdict:
    """What the engine gave one window hit.

    ``value`` is the score transform's value before tie-breaking, ``rank`` the hit's 0-based
    position in the engine's ranking of the ``ranked`` window hits, and ``missing_text``
    whether the hit was ranked without its text fields (``missing_text="empty"``).
    """

    value: float
    rank: int
    ranked: int
    transform: str
    model: str | None
    missing_text: bool


def _node(value: float, description: str, *details: Any) -> dict[str, Any]:
    """One explanation node, its value as the cluster prints a Java ``float``."""
    return {"value": as_printed(value), "description": description, "details": list(details)}


def _engine_node(verdict: EngineVerdict, applied: float) -> dict[str, Any]:
    """The engine's value for a hit: ``applied`` is the value combined, after tie-breaking."""
    description = (
        f"llmrank {verdict.transform!r} value of engine rank {verdict.rank} (0-based) of "
        f"{verdict.ranked}"
    )
    if verdict.model is not None:
        description += f", model {verdict.model}"
    if verdict.missing_text:
        description += ", ranked without its text fields"
    engine = _node(verdict.value, description)
    if np.float32(applied) == np.float32(verdict.value):
        return engine
    return _node(
        applied,
        "moved by tie-breaking, the least that keeps this hit's final score in rescore order, "
        "from:",
        engine,
    )


def rescored_explanation(
    source: Any, hit: RescoredHit, spec: RescoreSpec, verdict: EngineVerdict | None
) -> dict[str, Any]:
    """``hit``'s explanation under ``spec`` (the spec combined, after tie-breaking), wrapping
    its first-pass explanation ``source``; ``verdict`` is ``None`` past the window."""
    primary = _node(
        float(np.float32(hit.first_pass_score) * np.float32(spec.query_weight)),
        "product of:",
        source,
        _node(spec.query_weight, "primaryWeight"),
    )
    if verdict is None or hit.second_score is None:
        return primary
    secondary = _node(
        float(np.float32(hit.second_score) * np.float32(spec.rescore_query_weight)),
        "product of:",
        _engine_node(verdict, hit.second_score),
        _node(spec.rescore_query_weight, "secondaryWeight"),
    )
    return _node(hit.score, f"{_MODE_NAMES[spec.score_mode]} of:", primary, secondary)
