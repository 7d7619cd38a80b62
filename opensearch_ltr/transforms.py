"""Turn the engine's ranking of a window into the rescore-query scores that get combined.

The engine's scores are logits, FIRST label logits or a template's votes (see
:class:`haystack_llmrank.ranking.Ranking`): capped so they never increase down the ranking,
comparable within one window (votes across windows too) but only a heuristic across
queries, and of any sign; an engine that fuses with the first pass gives its fused values
(positive) instead. What is combined with the first-pass score:

- ``"rank"`` (default): ``(n - r) / n`` for the passage ranked ``r`` of ``n``; in ``(0, 1]``,
  strictly decreasing, so the engine's order is kept exactly (capped logits can tie).
- ``"minmax"``: the capped logits scaled to ``[0, 1]`` over the window (all 1.0 when equal);
  keeps how far apart the engine put passages, ties included.
- ``"logit"``: the capped logits as they are. Client-side only: a rescore query cannot carry
  a negative score, so server-applied mode refuses it.

Every value is rounded to a Java ``float``, as OpenSearch would read it.
"""

from __future__ import annotations

from typing import Literal, get_args

from haystack_llmrank.ranking import Ranking
from opensearch_ltr.rescore import to_float32

ScoreTransform = Literal["rank", "minmax", "logit"]
SCORE_TRANSFORMS: tuple[str, ...] = get_args(ScoreTransform)
NON_NEGATIVE_TRANSFORMS = ("rank", "minmax")
"""Transforms whose values a server-applied rescore query can carry."""


def check_transform(transform: str) -> None:
    """Reject an unknown transform name."""
    if transform not in SCORE_TRANSFORMS:
        raise ValueError(f"score_transform must be one of {SCORE_TRANSFORMS}, got {transform!r}")


def rescore_values(ranking: Ranking, transform: ScoreTransform) -> list[float]:
    """One value per passage, indexed like the engine's input."""
    check_transform(transform)
    n = len(ranking)
    by_rank: list[float]
    if transform == "rank":
        by_rank = [(n - r) / n for r in range(n)]
    elif transform == "minmax":
        top, bottom = (ranking.scores[0], ranking.scores[-1]) if n else (0.0, 0.0)
        spread = top - bottom
        by_rank = [(s - bottom) / spread if spread > 0 else 1.0 for s in ranking.scores]
    else:
        by_rank = list(ranking.scores)
    values = [0.0] * n
    for rank, index in enumerate(ranking.order):
        values[index] = to_float32(by_rank[rank])
    return values
