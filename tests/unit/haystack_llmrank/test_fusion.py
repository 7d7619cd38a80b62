"""Reciprocal rank fusion of a model's ranking with the input order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_llmrank.fusion import check_fusion_k, fuse_with_input_order
from haystack_llmrank.ranking import Cost, Ranking
from haystack_llmrank.reranker import Reranker

PASSAGES = [
    "Berlin is the capital of Germany.",
    "Paris is in France.",
    "Pasta cooks in salted water.",
    "Germany's capital city is Berlin.",
    "The Rhine flows through Germany.",
]


def test_fused_scores_and_order_are_computed_by_hand() -> None:
    model = Ranking.from_logits([2, 0, 1], [3.0, 2.0, 1.0], cost=Cost(1, 1, 50))
    fused = fuse_with_input_order(model, 0)
    # item 2: 1/1 + 1/3; item 0: 1/2 + 1/1; item 1: 1/3 + 1/2
    assert fused.order == (0, 2, 1)
    assert fused.scores == pytest.approx((1.5, 4 / 3, 5 / 6))
    assert fused.logits == (2.0, 3.0, 1.0), "each passage keeps its own logit"
    assert fused.cost == Cost(1, 1, 50)
    assert fused.unranked == 0


def test_equal_fused_scores_keep_the_models_order() -> None:
    swapped = Ranking.from_logits([1, 0], [2.0, 1.0])
    assert fuse_with_input_order(swapped, 0).order == (1, 0)  # both 1/1 + 1/2


@settings(max_examples=100, deadline=None)
@given(order=st.integers(0, 60).flatmap(lambda n: st.permutations(list(range(n)))))
def test_fusion_scores_every_passage_by_both_ranks(order: list[int]) -> None:
    ranking = Ranking.from_logits(order, [float(-r) for r in range(len(order))])
    fused = fuse_with_input_order(ranking, 60)
    assert sorted(fused.order) == list(range(len(order)))
    model_rank = {item: rank for rank, item in enumerate(order)}
    for item, score in zip(fused.order, fused.scores, strict=True):
        assert score == pytest.approx(1 / (61 + model_rank[item]) + 1 / (61 + item))
    if order and order[0] == 0:
        assert fused.order[0] == 0, "first in both orders stays first"
    agreeing = Ranking.from_logits(range(len(order)), [0.0] * len(order))
    assert fuse_with_input_order(agreeing, 60).order == tuple(range(len(order)))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "60"])
def test_a_bad_constant_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="fusion_k"):
        check_fusion_k(bad)  # type: ignore[arg-type]
    assert check_fusion_k(None) is None
    assert check_fusion_k(60) == 60


def test_the_reranker_fuses_its_rankings(tiny_reranker: Reranker) -> None:
    fusing = tiny_reranker.replace(fusion_k=60)
    assert fusing.fusion_k == 60
    plain = tiny_reranker.rerank("capital of germany", PASSAGES)
    fused = fusing.rerank("capital of germany", PASSAGES)
    assert fused == fuse_with_input_order(plain, 60)
    with pytest.raises(ValueError, match="fusion_k"):
        tiny_reranker.replace(fusion_k=-5)
