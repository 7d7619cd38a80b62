"""``examples/teacher_run.py``: cosine scores become a run in the teacher's order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import import_example

from haystack_llmrank.data import Candidate, QueryCandidates


@pytest.fixture(scope="module")
def teacher_run() -> Any:
    return import_example("teacher_run")


def test_cosine_scores_rank_by_similarity_to_the_query_row(teacher_run: Any) -> None:
    query = QueryCandidates(
        "q", "fleas", (Candidate("a", "one"), Candidate("b", "two"), Candidate("c", "three"))
    )
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    scores = teacher_run.cosine_scores(query, vectors)
    assert sorted(scores, key=scores.get, reverse=True) == ["b", "c", "a"]
    assert scores == pytest.approx({"b": 1.0, "c": 0.6, "a": 0.0})


def test_tied_cosines_keep_the_candidates_order_and_strictly_decrease(teacher_run: Any) -> None:
    query = QueryCandidates("q", "fleas", (Candidate("a", "one"), Candidate("b", "two")))
    scores = teacher_run.cosine_scores(query, np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]))
    assert scores["a"] > scores["b"]
