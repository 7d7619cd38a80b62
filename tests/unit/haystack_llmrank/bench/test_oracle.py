"""The oracle scorer, and every strategy driven through the engine by it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_llmrank.bench.oracle import (
    UNUSED_LABEL_LOGIT,
    Judge,
    OracleScorer,
    oracle_reranker,
    qrels_judge,
)
from haystack_llmrank.data import Candidate, QueryCandidates, read_qrels, read_queries
from haystack_llmrank.errors import LlmRankError
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import STRATEGIES, make_strategy

WORDS = "river bank loan coffee mountain tree city music flea peru capital rate owl".split()  # noqa: SIM905
TEXTS = [f"{WORDS[i % 13]} {WORDS[(i * 7) % 13]} note {i}" for i in range(1000)]
GRADES = {text: float(random.Random(i).randint(0, 3)) for i, text in enumerate(TEXTS)}
LABELS = LabelIds(("A", "B", "C", "D"), ((1,), (2,), (3,), (4,)))


def judge(query: str, passage: str) -> float:
    return GRADES[passage]


def engine(tokenizer: Any, name: str = "sliding", **kwargs: Any) -> Reranker:
    return oracle_reranker(
        tokenizer, judge, max_prompt_tokens=4096, strategy=make_strategy(name), **kwargs
    )


def by_grade(texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: -GRADES[texts[i]])


def test_without_noise_a_window_is_ordered_by_grade(smollm2_tokenizer: Any) -> None:
    texts = TEXTS[:17]
    ranking = engine(smollm2_tokenizer).rerank("q", texts)
    assert list(ranking.order) == by_grade(texts)
    assert list(ranking.logits) == [GRADES[texts[i]] for i in ranking.order]


def test_noise_is_fixed_per_window_and_seed() -> None:
    def scored(noise: float, seed: int, prompts: list[tuple[int, ...]]) -> np.ndarray:
        oracle = OracleScorer(LABELS, noise=noise, seed=seed)
        oracle.register((7, 8, 9), [3.0, 0.0])
        oracle.register((5, 6), [1.0, 2.0, 2.0])
        return oracle.score(prompts)

    clean = scored(0.0, 0, [(7, 8, 9), (5, 6)])
    unused = UNUSED_LABEL_LOGIT
    assert clean.tolist() == [[3.0, 0.0, unused, unused], [1.0, 2.0, 2.0, unused]]
    noisy = scored(0.5, 0, [(7, 8, 9), (5, 6)])
    assert np.all(noisy[:, :2] != clean[:, :2])
    assert (noisy[:, 3] == UNUSED_LABEL_LOGIT).all()
    np.testing.assert_array_equal(scored(0.5, 0, [(5, 6), (7, 8, 9)]), noisy[::-1])
    assert not np.array_equal(scored(0.5, 1, [(7, 8, 9), (5, 6)]), noisy)


def test_the_oracle_refuses_what_it_was_not_told() -> None:
    oracle = OracleScorer(LABELS)
    with pytest.raises(LlmRankError, match="nobody registered"):
        oracle.score([(1, 2, 3)])
    with pytest.raises(ValueError, match="5 grades for windows of 4"):
        oracle.register((1,), [0.0] * 5)
    with pytest.raises(ValueError, match="noise"):
        OracleScorer(LABELS, noise=-1.0)


def test_qrels_grades_are_read_by_query_and_text() -> None:
    query = QueryCandidates(
        "q1",
        "what is a flea",
        (Candidate("a", "same text"), Candidate("b", "same text"), Candidate("c", "other")),
    )
    grade: Judge = qrels_judge([query], {"q1": {"a": 1, "b": 3}, "q2": {"c": 2}})
    assert grade("what is a flea", "same text") == 3.0
    assert grade("what is a flea", "other") == 0.0
    assert grade("another query", "same text") == 0.0


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=4),
    name=st.sampled_from(STRATEGIES),
    noise=st.sampled_from([0.0, 0.8]),
    batch_size=st.integers(min_value=1, max_value=9),
    top_k=st.none() | st.integers(min_value=1, max_value=15),
)
def test_rankings_are_identical_alone_and_inside_rerank_many(
    smollm2_tokenizer: Any,
    sizes: list[int],
    name: str,
    noise: float,
    batch_size: int,
    top_k: int | None,
) -> None:
    requests = [(f"query {q}", TEXTS[q * 100 : q * 100 + n]) for q, n in enumerate(sizes)]
    alone = engine(smollm2_tokenizer, name, noise=noise)
    expected = [alone.rerank(query, texts, top_k=top_k) for query, texts in requests]
    built = alone.prompts.cache  # type: ignore[attr-defined]
    together = engine(smollm2_tokenizer, name, noise=noise, batch_size=batch_size, cache=built)
    assert together.rerank_many(requests, top_k=top_k) == expected


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_ranks_1000_passages_through_the_engine(
    smollm2_tokenizer: Any, name: str
) -> None:
    reranker = engine(smollm2_tokenizer, name, noise=1.0, batch_size=4)
    ranking = reranker.rerank("which rivers", TEXTS, top_k=10)
    assert sorted(ranking.order) == list(range(1000))
    assert ranking.depth >= 10
    assert ranking.cost.windows <= reranker.count_windows([1000], top_k=10)
    assert ranking.cost.tokens > ranking.cost.windows * 100


@pytest.mark.parametrize(("name", "exact"), [("sliding", 10), ("tdpart", 10), ("tournament", 4)])
def test_a_noise_free_oracle_puts_the_best_dl19_grades_first(
    smollm2_tokenizer: Any, dl19_dir: Path, name: str, exact: int
) -> None:
    queries = [q.top(100) for q in read_queries(dl19_dir / "candidates.jsonl")[:6]]
    qrels = read_qrels(dl19_dir / "qrels.txt")
    reranker = oracle_reranker(
        smollm2_tokenizer,
        qrels_judge(queries, qrels),
        max_prompt_tokens=8192,
        strategy=make_strategy(name),
    )
    rankings = reranker.rerank_many([(q.query, q.texts) for q in queries])
    for query, ranking in zip(queries, rankings, strict=True):
        grades = [qrels[query.qid].get(c.docid, 0) for c in query.candidates]
        got = [grades[i] for i in ranking.order[:exact]]
        assert got == sorted(grades, reverse=True)[:exact]
