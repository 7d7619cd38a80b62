"""Blank passages: kept out of every window, joined to the unranked tail in input order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haystack_llmrank.blank_passages import is_blank, split_blank, with_blank_passages
from haystack_llmrank.fusion import fuse_with_first_stage
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


MOJIBAKE = "ÃÂâ€™©®\u00a0\ufeff\u200b\u2019\u2013é漢\uff41\u0301\x80\x9d\u0153\u201cï»¿"


@given(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=12)
    | st.text(alphabet=st.characters(max_codepoint=127) | st.sampled_from(MOJIBAKE), max_size=12)
)
def test_the_shortcut_agrees_with_the_prompts_repair(text: str) -> None:
    assert is_blank(text) == (not normalize_passage(text, None))


@pytest.mark.parametrize("text", ["a", " [A] ", "&amp;", "\ufeffx", "0"])
def test_text_with_something_to_show_is_not_blank(text: str) -> None:
    assert not is_blank(text)


def test_blank_passages_come_after_a_full_ranking() -> None:
    ranking = Ranking.from_logits([1, 0], [3.0, 2.0], cost=Cost(1, 1, 10))
    joined = with_blank_passages(ranking, [1, 2], [0, 3, 4])
    assert joined.order == (2, 1, 0, 3, 4)
    assert joined.scores == (3.0, 2.0, 2.0, 2.0, 2.0)
    assert joined.logits == (3.0, 2.0, 2.0, 2.0, 2.0)
    assert (joined.unranked, joined.blank) == (3, 3)
    assert joined.cost == Cost(1, 1, 10)


def test_blank_passages_come_after_an_unranked_tail_too() -> None:
    # ranked: sub-index 2 first; sub-indices 0 and 1 left in first-stage order; capped logit
    ranking = Ranking.from_logits([2, 0, 1], [5.0, 1.0, 7.0], unranked=2)
    joined = with_blank_passages(ranking, [1, 3, 4], [0, 2])
    assert joined.order == (4, 1, 3, 0, 2)
    assert joined.scores == (5.0, 1.0, 1.0, 1.0, 1.0)
    assert joined.logits == (5.0, 1.0, 7.0, 1.0, 1.0), "the lowest logit, not the capped score"
    assert (joined.unranked, joined.blank, joined.depth) == (4, 2, 1)


def test_only_blank_passages_keep_input_order() -> None:
    joined = with_blank_passages(Ranking((), (), ()), [], [0, 1, 2])
    assert joined.order == (0, 1, 2)
    assert joined.scores == joined.logits == (0.0, 0.0, 0.0)


def test_a_ranking_checks_its_blank_positions() -> None:
    with pytest.raises(ValueError, match="blank must be between 0 and unranked"):
        Ranking((0, 1), (1.0, 0.0), (1.0, 0.0), unranked=1, blank=2)
    with pytest.raises(ValueError, match="the blank passages must keep input order"):
        Ranking((0, 2, 1), (1.0, 0.0, 0.0), (1.0, 0.0, 0.0), unranked=2, blank=2)
    # the strategy's tail and the blank passages each ascend; together they need not
    assert Ranking((1, 3, 0, 2), (4.0, 3.0, 3.0, 3.0), (4.0, 3.0, 3.0, 3.0), 3, blank=2).depth == 1


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
    assert ranking.order[4:] == (0, 2, 5)
    assert ranking.blank == 3
    if setting == "fusion":  # fused by input index, which the blank passages move
        assert sorted(ranking.order[:4]) == texted
    else:
        assert ranking.order[:4] == tuple(texted[i] for i in alone.order)
        assert ranking.scores[:4] == alone.scores
    assert all(a >= b for a, b in itertools.pairwise(ranking.scores))


def test_blank_passages_come_after_a_tdpart_tail(smollm2_tokenizer: Any, tiny_scorer: Any) -> None:
    reranker = Reranker(
        smollm2_tokenizer,
        tiny_scorer,
        max_prompt_tokens=4096,
        strategy=make_strategy("tdpart", window_size=4),
    )
    texts = [*TEXTS, *(f"{t} again" for t in TEXTS)]
    given = ["", *texts[:5], "\ufeff", *texts[5:], " "]
    for top_k in (None, 2):
        ranking = reranker.rerank("whales", given, top_k=top_k)
        alone = reranker.rerank("whales", texts, top_k=top_k)
        assert alone.unranked > 0, "tdpart should leave a tail, or this test shows nothing"
        texted = [i for i, t in enumerate(given) if not is_blank(t)]
        assert ranking.order == (*(texted[i] for i in alone.order), 0, 6, 14)
        assert (ranking.unranked, ranking.blank) == (alone.unranked + 3, 3)
        assert ranking.scores[-3:] == (alone.scores[-1],) * 3


def test_fusion_reads_input_indices_with_blank_passages_among_them(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    # the blank passage before them moves every passage one place down the first stage
    fused = _engines(smollm2_tokenizer, tiny_scorer)["fusion"]
    plain = Reranker(
        smollm2_tokenizer,
        tiny_scorer,
        max_prompt_tokens=4096,
        strategy=make_strategy("sliding", window_size=4, step=2),
    )
    model = plain.rerank("whales and bees", TEXTS)
    ranking = fused.rerank("whales and bees", ["", *TEXTS])
    # fusion_k 60: the passage at input index i that the model ranked r scores
    # 1 / (61 + r) + 1 / (61 + i); TEXTS[j] is at input index j + 1
    score = {j + 1: 1 / (61 + r) + 1 / (61 + j + 1) for r, j in enumerate(model.order)}
    expected = sorted(score, key=lambda item: -score[item])  # ties keep the model's order
    assert ranking.order == (*expected, 0)
    assert ranking.scores[: len(TEXTS)] == tuple(score[i] for i in expected)


def test_fusing_a_finished_ranking_keeps_its_blank_passages_last(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    engines = _engines(smollm2_tokenizer, tiny_scorer)
    given = ["", *TEXTS, " "]
    finished = engines["sliding"].rerank("whales and bees", given)
    fused = fuse_with_first_stage(finished, 60)
    assert fused == engines["fusion"].rerank("whales and bees", given)
    assert fused.order[-2:] == (0, len(given) - 1)
    assert (fused.unranked, fused.blank) == (2, 2)


def test_a_query_the_prompt_shows_as_nothing_is_refused(tiny_reranker: Reranker) -> None:
    for query in ("\ufeff", "\x00 ", "&nbsp;"):
        with pytest.raises(ValueError, match="query is empty"):
            tiny_reranker.rerank(query, TEXTS[:2])


def test_a_request_of_only_blank_passages_needs_no_forward_pass(tiny_reranker: Reranker) -> None:
    ranking = tiny_reranker.rerank("q", ["", " ", "\t"])
    assert ranking.order == (0, 1, 2)
    assert ranking.cost.windows == 0
