"""Blank passages: kept out of every window, joined to the unranked tail in input order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from haystack_llmrank.blank_passages import is_blank, split_blank, with_blank_passages
from haystack_llmrank.prompt import normalize_passage
from haystack_llmrank.ranking import Cost, Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import make_strategy

TEXTS = [
    "whales are mammals",
    "bees make honey",
    "owls hunt at night",
    "tea grows on hills",
    "the moon orbits earth",
    "jazz began in new orleans",
]


def test_split_blank_names_empty_and_whitespace_only_passages() -> None:
    assert split_blank(["a", "", " \n\t", "b", "\u3000"]) == ([0, 3], [1, 2, 4])


@pytest.mark.parametrize("text", ["", " \n", "\ufeff", "\x00", "\x1b", "&nbsp;"])
def test_text_the_prompt_would_show_as_nothing_is_blank(text: str) -> None:
    assert normalize_passage(text, None) == ""
    assert is_blank(text)


@pytest.mark.parametrize("text", ["a", " [A] ", "&amp;", "\ufeffx", "0"])
def test_text_with_something_to_show_is_not_blank(text: str) -> None:
    assert not is_blank(text)


def test_blank_passages_join_a_full_ranking_at_the_bottom() -> None:
    ranking = Ranking.from_logits([1, 0], [3.0, 2.0], cost=Cost(1, 1, 10))
    joined = with_blank_passages(ranking, [1, 2], [0, 3, 4])
    assert joined.order == (2, 1, 0, 3, 4)
    assert joined.scores == (3.0, 2.0, 2.0, 2.0, 2.0)
    assert joined.logits == (3.0, 2.0, 2.0, 2.0, 2.0)
    assert joined.unranked == 3
    assert joined.cost == Cost(1, 1, 10)


def test_blank_passages_take_their_input_place_in_an_unranked_tail() -> None:
    # ranked: sub-index 2 first; sub-indices 0 and 1 left in first-stage order
    ranking = Ranking.from_logits([2, 0, 1], [5.0, 1.0, 0.5], unranked=2)
    joined = with_blank_passages(ranking, [1, 3, 4], [0, 2])
    assert joined.order == (4, 0, 1, 2, 3)
    assert joined.scores == (5.0, 5.0, 1.0, 1.0, 0.5)
    assert joined.logits == (5.0, 5.0, 1.0, 1.0, 0.5)
    assert joined.unranked == 4


def test_only_blank_passages_keep_input_order() -> None:
    joined = with_blank_passages(Ranking((), (), ()), [], [0, 1, 2])
    assert joined.order == (0, 1, 2)
    assert joined.scores == (0.0, 0.0, 0.0)


def _engines(smollm2_tokenizer: Any, scorer: Any) -> dict[str, Reranker]:
    def engine(strategy: str = "sliding", **options: Any) -> Reranker:
        return Reranker(
            smollm2_tokenizer,
            scorer,
            max_prompt_tokens=4096,
            strategy=make_strategy(strategy, window_size=4, step=2),
            **options,
        )

    return {
        "sliding": engine(),
        "both_orders": engine(both_orders=True),
        "fusion": engine(fusion_k=60),
        "order_invariant": engine("disjoint", order_invariant=True),
        "tdpart": engine("tdpart"),
    }


@pytest.mark.parametrize(
    "setting", ["sliding", "both_orders", "fusion", "order_invariant", "tdpart"]
)
def test_the_model_never_sees_a_blank_passage(
    smollm2_tokenizer: Any, tiny_scorer: Any, setting: str
) -> None:
    reranker = _engines(smollm2_tokenizer, tiny_scorer)[setting]
    seen: list[str] = []
    build = reranker.prompts.build

    def recording(query: str, texts: Any) -> Any:
        seen.extend(texts)
        return build(query, texts)

    reranker.prompts.build = recording  # type: ignore[method-assign]
    given = ["", TEXTS[0], "  ", TEXTS[1], TEXTS[2], "\ufeff", TEXTS[3]]
    ranking = reranker.rerank("whales and bees", given)
    alone = reranker.rerank("whales and bees", [t for t in given if not is_blank(t)])
    assert seen
    assert not any(is_blank(text) for text in seen)
    texted = [1, 3, 4, 6]
    assert ranking.order == (*tuple(texted[i] for i in alone.order), 0, 2, 5)
    assert ranking.scores[:4] == alone.scores
    assert all(a >= b for a, b in itertools.pairwise(ranking.scores))


def test_blank_passages_join_a_tdpart_tail_in_input_order(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    reranker = Reranker(
        smollm2_tokenizer,
        tiny_scorer,
        max_prompt_tokens=4096,
        strategy=make_strategy("tdpart", window_size=4),
    )
    texts = [*TEXTS, *(f"{t} again" for t in TEXTS)]
    given = [*texts[:5], "", *texts[5:], " "]
    ranking = reranker.rerank("whales", given, top_k=2)
    alone = reranker.rerank("whales", texts, top_k=2)
    assert alone.unranked > 0, "tdpart should leave a tail, or this test shows nothing"
    assert ranking.unranked == alone.unranked + 2
    tail = ranking.order[ranking.depth :]
    assert list(tail) == sorted(tail)
    assert {5, 13} <= set(tail)
    texted = [i for i, t in enumerate(given) if t.strip()]
    assert ranking.order[: ranking.depth] == tuple(texted[i] for i in alone.order[: alone.depth])


def test_a_request_of_only_blank_passages_needs_no_forward_pass(tiny_reranker: Reranker) -> None:
    ranking = tiny_reranker.rerank("q", ["", " ", "\t"])
    assert ranking.order == (0, 1, 2)
    assert ranking.cost.windows == 0
