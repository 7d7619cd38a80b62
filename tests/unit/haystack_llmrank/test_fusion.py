"""Reciprocal rank fusion of a model's ranking with the first stage's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_llmrank.fusion import (
    check_fusion_choice,
    check_fusion_k,
    complete_scores,
    first_stage_ranks,
    first_stage_scores,
    fuse_with_first_stage,
)
from haystack_llmrank.models import DEFAULT_ADAPTER, recommended_fusion_k
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
    fused = fuse_with_first_stage(model, 0)
    # item 2: 1/1 + 1/3; item 0: 1/2 + 1/1; item 1: 1/3 + 1/2
    assert fused.order == (0, 2, 1)
    assert fused.scores == pytest.approx((1.5, 4 / 3, 5 / 6))
    assert fused.logits == (2.0, 3.0, 1.0), "each passage keeps its own logit"
    assert fused.cost == Cost(1, 1, 50)
    assert fused.unranked == 0


def test_equal_fused_scores_keep_the_models_order() -> None:
    swapped = Ranking.from_logits([1, 0], [2.0, 1.0])
    assert fuse_with_first_stage(swapped, 0).order == (1, 0)  # both 1/1 + 1/2


@settings(max_examples=100, deadline=None)
@given(order=st.integers(0, 60).flatmap(lambda n: st.permutations(list(range(n)))))
def test_fusion_scores_every_passage_by_both_ranks(order: list[int]) -> None:
    ranking = Ranking.from_logits(order, [float(-r) for r in range(len(order))])
    fused = fuse_with_first_stage(ranking, 60)
    assert sorted(fused.order) == list(range(len(order)))
    model_rank = {item: rank for rank, item in enumerate(order)}
    for item, score in zip(fused.order, fused.scores, strict=True):
        assert score == pytest.approx(1 / (61 + model_rank[item]) + 1 / (61 + item))
    if order and order[0] == 0:
        assert fused.order[0] == 0, "first in both orders stays first"
    agreeing = Ranking.from_logits(range(len(order)), [0.0] * len(order))
    assert fuse_with_first_stage(agreeing, 60).order == tuple(range(len(order)))


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
    assert fused == fuse_with_first_stage(plain, 60)
    with pytest.raises(ValueError, match="fusion_k"):
        tiny_reranker.replace(fusion_k=-5)


def test_scores_count_only_where_every_passage_has_one() -> None:
    assert complete_scores([2.0, 0.0, -1.5]) == [2.0, 0.0, -1.5]
    assert complete_scores(iter([2.0, None])) is None
    assert complete_scores([]) == []


def test_first_stage_ranks_follow_the_scores_ties_in_input_order() -> None:
    assert first_stage_ranks([1.0, 3.0, 2.0, 3.0]) == [3, 0, 2, 1]
    assert first_stage_ranks([]) == []


@pytest.mark.parametrize(
    ("scores", "problem"),
    [
        ([1.0], "1 first-stage scores for 2 passages"),
        ([1.0, math.nan], "score 1 is not finite"),
        ([math.inf, 1.0], "score 0 is not finite"),
        ([1.0, True], "score 1 is not a number"),
        (["1", 2.0], "score 0 is not a number"),
    ],
)
def test_bad_first_stage_scores_are_refused(scores: list[object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        first_stage_scores(scores, 2)


def test_auto_is_a_choice_but_not_a_constant() -> None:
    assert check_fusion_choice("auto") == "auto"
    assert check_fusion_choice(None) is None
    assert check_fusion_choice(60) == 60
    with pytest.raises(ValueError, match="fusion_k"):
        check_fusion_choice("sixty")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fusion_k"):
        check_fusion_k("auto")  # type: ignore[arg-type]


def test_only_the_default_model_recommends_fusion(tiny_model_dir: Path) -> None:
    assert recommended_fusion_k(None) == 60
    assert recommended_fusion_k("default") == 60
    assert recommended_fusion_k(DEFAULT_ADAPTER) == 60
    assert recommended_fusion_k("smollm2-135m-instruct") is None
    assert recommended_fusion_k(str(tiny_model_dir)) is None
    assert recommended_fusion_k("castorini/first_mistral") is None


def test_scores_are_the_first_stage_whatever_the_input_order(tiny_reranker: Reranker) -> None:
    fusing = tiny_reranker.replace(fusion_k=60)
    scores = [5.0, 1.0, 4.0, 2.0, 3.0]
    plain = tiny_reranker.rerank("capital of germany", PASSAGES)
    fused = fusing.rerank("capital of germany", PASSAGES, first_stage_scores=scores)
    assert fused == fuse_with_first_stage(plain, 60, positions=[0, 4, 1, 3, 2])
    assert fused != fusing.rerank("capital of germany", PASSAGES), "not the input order"


def test_fusion_that_needs_scores_leaves_a_request_without_them_alone(
    tiny_reranker: Reranker,
) -> None:
    fusing = tiny_reranker.replace(fusion_k=60, fusion_needs_scores=True)
    query, scores = "capital of germany", [5.0, 4.0, 3.0, 2.0, 1.0]
    plain = tiny_reranker.rerank(query, PASSAGES)
    rankings = fusing.rerank_many(
        [(query, PASSAGES), (query, PASSAGES)], first_stage_scores=[None, scores]
    )
    assert rankings == [plain, fuse_with_first_stage(plain, 60)]
    assert fusing.replace(batch_size=2).fusion_needs_scores, "replace keeps it"


def test_first_stage_scores_must_match_the_requests(tiny_reranker: Reranker) -> None:
    request = ("capital of germany", PASSAGES)
    with pytest.raises(ValueError, match="2 entries for 1 requests"):
        tiny_reranker.rerank_many([request], first_stage_scores=[None, None])
    with pytest.raises(ValueError, match="4 first-stage scores for 5 passages"):
        tiny_reranker.rerank(*request, first_stage_scores=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(TypeError, match="one entry per request"):
        tiny_reranker.rerank_many([request], first_stage_scores=iter([None]))  # type: ignore[arg-type]


def test_auto_fusion_follows_the_model(tiny_model_dir: Path) -> None:
    loaded = Reranker.from_pretrained(str(tiny_model_dir), device="cpu")
    assert (loaded.fusion_k, loaded.fusion_needs_scores) == (None, True)
    chosen = Reranker.from_pretrained(str(tiny_model_dir), device="cpu", fusion_k=60)
    assert (chosen.fusion_k, chosen.fusion_needs_scores) == (60, False)
    with pytest.raises(ValueError, match="fusion_k"):
        Reranker.from_pretrained(str(tiny_model_dir), fusion_k="sixty")
