"""``examples/pointwise_check.py``: training groups, their pairwise loss, and the prompt."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from support import import_example

from haystack_llmrank.data import Candidate, QueryCandidates


@pytest.fixture(scope="module")
def check() -> Any:
    return import_example("pointwise_check")


def test_groups_key_each_candidate_by_grade_then_teacher(check: Any) -> None:
    query = QueryCandidates(
        "q", "fleas", tuple(Candidate(f"d{i}", f"text {i}", 0.0) for i in range(4))
    )
    [(text, pool)] = check.training_groups(
        [query], {"q": {"d1": 2}}, {"q": {"d0": 0.5, "d2": 0.9}}, pool=3
    )
    assert text == "fleas"
    assert pool == [("text 0", (0, 0.5)), ("text 1", (2, -math.inf)), ("text 2", (0, 0.9))]


def test_ranknet_is_the_mean_logistic_loss_over_ordered_pairs(check: Any) -> None:
    scores = torch.tensor([1.0, 3.0, 0.0])
    keys = [(0, 0.5), (2, 0.0), (0, 0.5)]  # 1 above 0 and 2; 0 and 2 tie
    expected = (math.log1p(math.exp(1.0 - 3.0)) + math.log1p(math.exp(0.0 - 3.0))) / 2
    assert check.ranknet(scores, keys).item() == pytest.approx(expected, rel=1e-6)
    assert check.ranknet(scores, [(1, 0.0)] * 3) is None


def test_prompt_cuts_the_passage_to_its_first_words(check: Any) -> None:
    text = check.prompt("q", "one two  three\nfour", 3)
    assert text == "Query: q\nPassage: one two three\nIs the passage relevant to the query? Answer:"
