"""An order of a query's passages that depends on their texts, not on the order given.

Ranking in this order (``Reranker(order_invariant=True)``) makes the windows, and so the
ranking, the same whatever order the passages arrive in.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence

from haystack_llmrank.ranking import Ranking
from haystack_llmrank.strategies import Disjoint

ORDER_FREE_STRATEGY = Disjoint.name
"""The one strategy that can rank in a content order: it judges every passage once and
ranks them all by their own scores, where the others take the input order as the first
stage's."""


def check_order_invariant(order_invariant: bool, strategy: str | None) -> None:
    """``ValueError`` if ``order_invariant`` is asked of a strategy other than
    :data:`ORDER_FREE_STRATEGY`; a ``None`` strategy is not known yet and passes."""
    if order_invariant and strategy not in (None, ORDER_FREE_STRATEGY):
        raise ValueError(
            f"order_invariant needs the {ORDER_FREE_STRATEGY!r} strategy, not {strategy!r}, "
            "which takes the input order as the first stage's"
        )


def content_order(query: str, passages: Sequence[str]) -> list[int]:
    """The input indices of ``passages`` sorted by a keyed hash of their text.

    The key is BLAKE2b of the passage keyed with the query, so the order is fixed for a
    query and its passages, differs between queries, and looks random with respect to any
    first-stage order. Identical passages keep their input order among themselves.
    """
    key = hashlib.blake2b(_utf8(query), digest_size=32).digest()
    digests = [hashlib.blake2b(_utf8(text), digest_size=16, key=key).digest() for text in passages]
    return sorted(range(len(passages)), key=lambda i: digests[i])


def in_input_indices(ranking: Ranking, order: Sequence[int], passages: Sequence[str]) -> Ranking:
    """``ranking`` of ``passages`` taken in ``order`` (``order[j]`` is the input index of
    its ``j``-th passage), with its positions mapped back to input indices.

    Copies of one text sit on different window lines, so their scores can differ; the
    better-ranked copy is then given the earlier input index, so that identical passages
    keep their input order in the ranking too, and the ranked texts and their scores are
    the same whatever order the passages came in.

    Only a ranking that left no position unranked can be mapped: an unranked tail keeps
    the order it was ranked in, which would not be the input order.
    """
    if ranking.unranked:
        raise ValueError("a ranking with unranked positions keeps its arrangement's order")
    copies: dict[str, deque[int]] = {}
    for index in sorted(order):
        copies.setdefault(passages[index], deque()).append(index)
    return Ranking(
        tuple(copies[passages[order[j]]].popleft() for j in ranking.order),
        ranking.scores,
        ranking.logits,
        0,
        ranking.cost,
    )


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from JSON, say) still has bytes to hash
    return text.encode("utf-8", "surrogatepass")
