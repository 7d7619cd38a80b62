"""Reciprocal rank fusion of a model's ranking with the first stage's (the input order)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from haystack_llmrank.ranking import Ranking


def check_fusion_k(fusion_k: int | None) -> int | None:
    """``fusion_k`` as an ``int``, or ``ValueError`` unless it is ``None`` or an integer >= 0."""
    return None if fusion_k is None else _integer_k(fusion_k)


def _integer_k(fusion_k: int) -> int:
    if isinstance(fusion_k, bool) or not isinstance(fusion_k, numbers.Integral) or fusion_k < 0:
        raise ValueError(f"fusion_k must be an integer >= 0 or None, got {fusion_k!r}")
    return int(fusion_k)


def fuse_with_input_order(
    ranking: Ranking, fusion_k: int, positions: Sequence[int] | None = None
) -> Ranking:
    """``ranking`` fused with the input order by reciprocal rank fusion (RRF).

    The input order is taken as the first stage's, best first. A passage at input index
    ``i`` (first-stage rank ``positions[i]`` where given: the passages ranked may be some of
    the input) that the model ranked ``r`` (both from 0) scores
    ``1 / (fusion_k + 1 + r) + 1 / (fusion_k + 1 + i)``; passages are ordered by that score,
    equal scores in the model's order. Those scores become :attr:`Ranking.scores`, the
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
    logit = dict(zip(ranking.order, ranking.logits, strict=True))
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
