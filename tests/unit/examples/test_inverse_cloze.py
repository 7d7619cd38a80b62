"""``examples/inverse_cloze.py``: a pseudo-query is a sentence of its passage, removed or kept."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import import_example


@pytest.fixture(scope="module")
def inverse_cloze() -> Any:
    return import_example("inverse_cloze")


TEXT = (
    "Fleas live on cats. The flea life cycle has four stages: egg, larva, pupa and adult. "
    "Adults live for two or three months on a host."
)


def test_a_sentence_becomes_the_query_and_leaves_the_passage_or_not(inverse_cloze: Any) -> None:
    rng = random.Random(0)
    seen_removed = seen_kept = False
    for _ in range(40):
        query, passage = inverse_cloze.pseudo_query(TEXT, rng, drop=0.5)
        assert query in TEXT
        assert 6 <= len(query.split()) <= 25
        if passage == TEXT:
            seen_kept = True
        else:
            seen_removed = True
            assert query not in passage
            assert passage == " ".join(TEXT.replace(query, " ").split())
    assert seen_removed
    assert seen_kept


@given(words=st.lists(st.text("abc", min_size=1, max_size=5), min_size=1, max_size=30))
def test_text_without_sentences_gives_a_span_it_keeps(inverse_cloze: Any, words: list[str]) -> None:
    text = " ".join(words)
    query, passage = inverse_cloze.pseudo_query(text, random.Random(1), drop=1.0)
    assert passage == text
    assert query in text
    assert 1 <= len(query.split()) <= 10


def test_copies_of_the_pseudo_query_are_graded_relevant_only_when_asked(
    inverse_cloze: Any,
) -> None:
    from haystack_llmrank.data import Candidate, QueryCandidates

    sentence = "The flea life cycle has four stages: egg, larva, pupa and adult."
    texts = {"src": "Fleas live on cats.", "dup": TEXT, "other": "Dogs bark at night."}
    pseudo = QueryCandidates("ict-1", sentence, tuple(Candidate(d, t) for d, t in texts.items()))
    assert inverse_cloze.judgements(pseudo, "src", "unjudged") == {"src": 1}
    assert inverse_cloze.judgements(pseudo, "src", "relevant") == {"src": 1, "dup": 1}
