"""The default model (embedded SmolLM2 plus the packaged FIRST adapter) on the README example."""

from __future__ import annotations

from typing import Any

import pytest
from haystack import Document

from haystack_llmrank import FirstListwiseRanker
from haystack_llmrank.models import DEFAULT_ADAPTER
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import Disjoint

pytestmark = pytest.mark.integration

PASSAGES = ["Paris is in France.", "Berlin is in Germany."]


@pytest.fixture(scope="module")
def default_ranker() -> FirstListwiseRanker:
    ranker = FirstListwiseRanker(device="cpu")
    ranker.warm_up()
    return ranker


def engine(ranker: FirstListwiseRanker, **changes: Any) -> Reranker:
    """The warmed-up component's engine with ``changes``."""
    assert ranker._reranker is not None
    return ranker._reranker.replace(**changes)


def test_the_default_loads_the_packaged_adapter_and_its_template(
    default_ranker: FirstListwiseRanker,
) -> None:
    reranker = default_ranker._reranker
    assert reranker is not None
    assert reranker.model_name is not None
    assert reranker.model_name.endswith(f"+{DEFAULT_ADAPTER.resolve()}")
    assert reranker.prompts.template.name == "judge"
    # each passage judged alone by its vote, in a window of its own: one step
    assert reranker.prompts.template.vote == " yes"
    assert reranker.strategy == Disjoint(1)


@pytest.mark.parametrize("order", [PASSAGES, PASSAGES[::-1]], ids=["paris-first", "berlin-first"])
def test_the_readme_example_puts_berlin_first_in_either_order(
    default_ranker: FirstListwiseRanker, order: list[str]
) -> None:
    documents = [Document(content=text) for text in order]
    ranked = default_ranker.run(query="where is berlin", documents=documents)["documents"]
    assert [d.content for d in ranked] == ["Berlin is in Germany.", "Paris is in France."]
    assert ranked[0].score > ranked[1].score


def test_each_passage_is_judged_alone_so_its_score_ignores_the_input_order(
    default_ranker: FirstListwiseRanker,
) -> None:
    reranker = engine(default_ranker)
    texts = [*PASSAGES, "Pasta cooks in water."]
    given = reranker.rerank("where is berlin", texts)
    backwards = reranker.rerank("where is berlin", texts[::-1])
    assert texts[given.order[0]] == "Berlin is in Germany."
    assert [texts[::-1][i] for i in backwards.order] == [texts[i] for i in given.order]
    assert given.scores == backwards.scores
    with pytest.raises(ValueError, match="a window of one passage reads the same both ways"):
        engine(default_ranker, both_orders=True)


def test_the_default_fuses_with_a_retrievers_scores_in_any_input_order(
    default_ranker: FirstListwiseRanker,
) -> None:
    reranker = engine(default_ranker)
    assert (reranker.fusion_k, reranker.fusion_needs_scores) == (60, True)
    texts = ["Pasta cooks in water.", *PASSAGES]
    scores = {
        "Pasta cooks in water.": 9.0,
        "Paris is in France.": 2.0,
        "Berlin is in Germany.": 5.0,
    }
    alone = reranker.rerank("where is berlin", texts)
    results = []
    for order in (texts, texts[::-1]):
        documents = [Document(content=text, score=scores[text]) for text in order]
        ranked = default_ranker.run(query="where is berlin", documents=documents)["documents"]
        results.append([(d.content, d.score) for d in ranked])
    assert results[0] == results[1], "the scores, not the input order, are the first stage"
    fused = reranker.rerank(
        "where is berlin", texts, first_stage_scores=[scores[text] for text in texts]
    )
    assert [text for text, _ in results[0]] == [texts[i] for i in fused.order]
    assert fused.scores != alone.scores
    assert max(fused.scores) <= 2 / 61


CAPITALS = [
    f"{city} is in {country}."
    for city, country in [
        ("Paris", "France"), ("Madrid", "Spain"), ("Rome", "Italy"), ("Vienna", "Austria"),
        ("Lisbon", "Portugal"), ("Warsaw", "Poland"), ("Prague", "the Czech Republic"),
        ("Oslo", "Norway"), ("Dublin", "Ireland"), ("Athens", "Greece"), ("Bern", "Switzerland"),
        ("Brussels", "Belgium"), ("Amsterdam", "the Netherlands"), ("Copenhagen", "Denmark"),
        ("Stockholm", "Sweden"), ("Helsinki", "Finland"), ("Budapest", "Hungary"),
        ("Bucharest", "Romania"), ("Sofia", "Bulgaria"), ("Zagreb", "Croatia"),
        ("Riga", "Latvia"), ("Vilnius", "Lithuania"), ("Tallinn", "Estonia"),
    ]
]  # fmt: skip
PASTA = "Cook the pasta in plenty of salted boiling water for ten minutes, then drain it."
TWENTY_FIVE = [PASTA, *CAPITALS[:12], "Berlin is in Germany.", *CAPITALS[12:]]


@pytest.mark.parametrize("reverse", [False, True], ids=["pasta-first", "pasta-last"])
def test_an_unrelated_passage_of_25_comes_last_whether_given_first_or_last(
    default_ranker: FirstListwiseRanker, reverse: bool
) -> None:
    texts = TWENTY_FIVE[::-1] if reverse else TWENTY_FIVE
    documents = [Document(content=text) for text in texts]
    ranked = default_ranker.run(query="where is berlin", documents=documents)["documents"]
    order = [d.content for d in ranked]
    assert len(order) == 25
    assert order[0] == "Berlin is in Germany."
    assert order[-1] == PASTA


def test_the_untrained_base_puts_the_unrelated_passage_given_first_first(
    smollm2_reranker: Reranker,
) -> None:
    # the contrast the README draws: the base follows the order it is given
    ranking = smollm2_reranker.rerank("where is berlin", TWENTY_FIVE)
    assert TWENTY_FIVE[ranking.order[0]] == PASTA


def test_order_invariant_ranks_25_documents_alike_in_any_order(
    default_ranker: FirstListwiseRanker,
) -> None:
    invariant = engine(default_ranker, order_invariant=True)
    texts = [PASTA, *PASSAGES, *CAPITALS[1:]]
    given = invariant.rerank("where is berlin", texts)
    assert texts[given.order[0]] == "Berlin is in Germany."
    for shuffled in (texts[::-1], [texts[(7 * i) % 25] for i in range(25)]):
        other = invariant.rerank("where is berlin", shuffled)
        assert [shuffled[i] for i in other.order] == [texts[i] for i in given.order]
        assert other.scores == given.scores
