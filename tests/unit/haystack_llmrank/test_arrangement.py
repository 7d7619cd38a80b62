"""Ranking in an order fixed by the passages' texts (``order_invariant``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from haystack_llmrank.arrangement import content_order, in_input_indices
from haystack_llmrank.fusion import fuse_with_first_stage
from haystack_llmrank.prompt import FIRST_TEMPLATE
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from haystack_llmrank.strategies import Disjoint, Tournament

VOTED = FIRST_TEMPLATE.with_vote(" yes")
QUERY = "where is berlin"
TEXTS = [
    f"{word} {fact}"
    for word in ("one", "two", "six")
    for fact in ("Paris is in France.", "Berlin is in Germany.", "Pasta cooks in water.", "Bonn.")
][:11]


def make(scorer: TorchLabelScorer, tokenizer: Any, **options: Any) -> Reranker:
    return Reranker(
        tokenizer,
        scorer,
        max_prompt_tokens=4096,
        template=VOTED,
        **{"strategy": Disjoint(4), **options},
    )


def test_content_order_follows_the_texts_not_their_order() -> None:
    order = content_order(QUERY, TEXTS)
    assert sorted(order) == list(range(len(TEXTS)))
    assert order != list(range(len(TEXTS))), "11 hashed texts should not come out as given"
    shuffled = random.Random(0).sample(TEXTS, len(TEXTS))
    assert [shuffled[i] for i in content_order(QUERY, shuffled)] == [TEXTS[i] for i in order]
    assert content_order("where is bonn", TEXTS) != order
    assert content_order(QUERY, []) == []
    assert sorted(content_order("q \ud800", ["a \udfff", "b"])) == [0, 1]  # lone surrogates


def test_identical_passages_keep_their_input_order() -> None:
    texts = ["a b", "c d", "a b", "e f", "a b"]
    order = content_order(QUERY, texts)
    assert [i for i in order if texts[i] == "a b"] == [0, 2, 4]


def test_a_ranking_is_mapped_back_to_input_indices() -> None:
    ranked = Ranking.from_logits([1, 2, 0], [3.0, 2.0, 1.0])
    mapped = in_input_indices(ranked, [2, 0, 1], ["a", "b", "c"])
    assert mapped.order == (0, 1, 2)
    assert mapped.scores == ranked.scores
    assert mapped.logits == ranked.logits
    with pytest.raises(ValueError, match="unranked"):
        in_input_indices(
            Ranking.from_logits([0, 1, 2], [3.0, 2.0, 1.0], unranked=2), [2, 0, 1], ["a", "b", "c"]
        )


def test_the_better_ranked_copy_of_a_text_takes_the_earlier_input_index() -> None:
    texts = ["a", "b", "a", "c", "a"]
    order = [3, 0, 2, 4, 1]  # the copies of "a" on lines 1, 2 and 3
    ranked = Ranking.from_logits([3, 0, 1, 4, 2], [5.0, 4.0, 3.0, 2.0, 1.0])
    mapped = in_input_indices(ranked, order, texts)
    assert mapped.order == (0, 3, 2, 1, 4)
    assert [texts[i] for i in mapped.order] == ["a", "c", "a", "b", "a"]
    assert mapped.scores == ranked.scores


def test_order_invariant_ranks_any_order_of_the_input_alike(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    reranker = make(vote_scorer, smollm2_tokenizer, order_invariant=True)
    given = reranker.rerank(QUERY, TEXTS)
    assert given.cost.windows == 3
    for texts in (TEXTS[::-1], random.Random(1).sample(TEXTS, len(TEXTS))):
        other = reranker.rerank(QUERY, texts)
        assert [texts[i] for i in other.order] == [TEXTS[i] for i in given.order]
        assert other.scores == given.scores
    plain = make(vote_scorer, smollm2_tokenizer)
    assert [TEXTS[i] for i in plain.rerank(QUERY, TEXTS).order] != [
        TEXTS[::-1][i] for i in plain.rerank(QUERY, TEXTS[::-1]).order
    ], "the tiny model should depend on order, or this test shows nothing"


def test_order_invariant_ranks_the_content_order_and_maps_it_back(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    order = content_order(QUERY, TEXTS)
    given = make(vote_scorer, smollm2_tokenizer)
    arranged = given.rerank(QUERY, [TEXTS[i] for i in order])
    invariant = make(vote_scorer, smollm2_tokenizer, order_invariant=True)
    assert invariant.rerank(QUERY, TEXTS) == in_input_indices(arranged, order, TEXTS)
    fused = invariant.replace(fusion_k=60).rerank(QUERY, TEXTS)
    assert fused == fuse_with_first_stage(in_input_indices(arranged, order, TEXTS), 60)


def test_order_invariant_ranks_identical_passages_in_their_input_order(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    texts = [TEXTS[1], TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[1], TEXTS[3]]
    reranker = make(vote_scorer, smollm2_tokenizer, order_invariant=True)
    given = reranker.rerank(QUERY, texts)
    copies = [i for i in given.order if texts[i] == TEXTS[1]]
    assert copies == [0, 2, 4]
    ranks = [given.order.index(i) for i in copies]
    assert len({given.scores[r] for r in ranks}) > 1, "copies on other lines should score apart"
    for other in (texts[::-1], random.Random(2).sample(texts, len(texts))):
        ranked = reranker.rerank(QUERY, other)
        assert [other[i] for i in ranked.order] == [texts[i] for i in given.order]
        assert ranked.scores == given.scores
        assert [i for i in ranked.order if other[i] == TEXTS[1]] == [
            i for i, text in enumerate(other) if text == TEXTS[1]
        ]


def test_order_invariant_needs_the_disjoint_strategy(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    with pytest.raises(ValueError, match="'disjoint' strategy, not 'tournament'"):
        make(vote_scorer, smollm2_tokenizer, order_invariant=True, strategy=Tournament(4))
    assert (
        make(vote_scorer, smollm2_tokenizer, order_invariant=True)
        .replace(batch_size=2)
        .order_invariant
    )
