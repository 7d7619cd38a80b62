"""The rerank wire format: request validation, response shape, strictly decreasing scores."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from haystack_llmrank.ranking import Ranking
from opensearch_ltr.service.config import ServiceConfig
from opensearch_ltr.service.protocol import (
    RequestError,
    RerankQuery,
    dumps,
    parse_rerank_request,
    relevance_scores,
    rerank_response,
    score_literal,
)

LIMITS = ServiceConfig(max_documents=3, max_document_chars=10, max_query_chars=12)


def parse(payload: Any) -> RerankQuery:
    return parse_rerank_request(json.dumps(payload).encode(), LIMITS)


def refusal(body: bytes) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_rerank_request(body, LIMITS)
    return caught.value


def test_strings_and_text_objects_become_passages_in_order() -> None:
    request = parse({"query": "q", "documents": ["a", {"text": "b", "title": "x"}, "c"]})
    assert request == RerankQuery("q", ("a", "b", "c"), None, False)


def test_optional_fields_are_read_and_model_is_ignored() -> None:
    payload = {"query": "q", "documents": [], "top_n": 2, "model": "m", "return_documents": True}
    assert parse(payload) == RerankQuery("q", (), 2, True)
    assert parse({"query": "q", "documents": [], "top_n": None}).top_n is None


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"",
        b"\xff\xfe",
        b'{"query": "q",}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"query": "q", "documents": ["a"], "top_n": ' + b"1" * 5000 + b"}",
    ],
)
def test_malformed_json_is_400(body: bytes) -> None:
    error = refusal(body)
    assert (error.status, error.kind) == (400, "malformed_json")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"query": "x", "query": "capital of France", "documents": ["a"]}', "query"),
        (b'{"query": "q", "documents": [{"text": "a", "text": "b"}]}', "text"),
    ],
)
def test_a_repeated_key_is_400_and_named(body: bytes, key: str) -> None:
    # json keeps the last value; a gateway that reads the first would see another request
    error = refusal(body)
    assert (error.status, error.kind) == (400, "malformed_json")
    assert error.message == f"the body's JSON is ambiguous: an object repeats the key {key!r}"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (["q", ["a"]], "object"),
        ({"documents": ["a"]}, "'query'"),
        ({"query": "  ", "documents": ["a"]}, "'query'"),
        ({"query": 3, "documents": ["a"]}, "'query'"),
        ({"query": "q"}, "'documents'"),
        ({"query": "q", "documents": "a"}, "'documents'"),
        ({"query": "q", "documents": ["a", 1]}, "documents[1]"),
        ({"query": "q", "documents": [{"title": "a"}]}, "documents[0]"),
        ({"query": "q", "documents": [{"text": None}]}, "documents[0]"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "'top_n'"),
        ({"query": "q", "documents": ["a"], "top_n": -2}, "'top_n'"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "'top_n'"),
        ({"query": "q", "documents": ["a"], "top_n": 1.5}, "'top_n'"),
        ({"query": "q", "documents": ["a"], "top_n": True}, "'top_n'"),
        ({"query": "q", "documents": ["a"], "model": 5}, "'model'"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "'return_documents'"),
    ],
)
def test_wrong_shapes_are_422_and_name_the_field(payload: Any, field: str) -> None:
    error = refusal(json.dumps(payload).encode())
    assert (error.status, error.kind) == (422, "invalid_request")
    assert field in error.message


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"query": "q", "documents": ["a", "b", "c", "d"]}, "4 documents"),
        ({"query": "q" * 13, "documents": ["a"]}, "'query' has 13 characters"),
    ],
)
def test_limits_are_413(payload: Any, needle: str) -> None:
    error = refusal(json.dumps(payload).encode())
    assert (error.status, error.kind) == (413, "too_large")
    assert needle in error.message


def test_a_document_is_read_to_max_document_chars_and_returned_whole() -> None:
    # a 413 would fail an OpenSearch search over one long hit: the rest is left unread
    query = parse({"query": "q", "documents": ["a", "x" * 11, {"text": "y" * 30}]})
    assert query.texts == ("a", "x" * 10, "y" * 10)
    assert query.documents == ("a", "x" * 11, "y" * 30)
    ranking = Ranking((2, 0, 1), (3.0, 2.0, 1.0), (3.0, 2.0, 1.0))
    returned = rerank_response(replace(query, return_documents=True), ranking, "id")
    assert [r["document"]["text"] for r in returned["results"]] == ["y" * 30, "a", "x" * 11]


def test_limits_are_inclusive() -> None:
    assert len(parse({"query": "q" * 12, "documents": ["x" * 10] * 3}).documents) == 3


def test_error_body_is_json_with_type_and_message() -> None:
    assert RequestError(413, "too_large", "big").body() == {
        "error": {"type": "too_large", "message": "big"}
    }


def strictly_decreasing_f32(values: list[float]) -> bool:
    as32 = np.asarray(values, dtype=np.float32)
    return bool(np.all(as32[1:] < as32[:-1])) and np.array_equal(as32, np.asarray(values))


def test_ties_and_float32_collisions_are_stepped_down() -> None:
    ranking = Ranking.from_logits([2, 0, 1, 3], [5.0, 5.0, 7.0, 5.00000001])
    scores = relevance_scores(ranking)
    assert scores[0] == 5.0
    assert scores[1] == float(np.nextafter(np.float32(5.0), np.float32(-np.inf)))
    assert strictly_decreasing_f32(scores)


@given(st.lists(st.floats(-60, 60, allow_nan=False, width=32), min_size=1, max_size=40))
def test_scores_strictly_decrease_and_stay_close(logits: list[float]) -> None:
    ranking = Ranking.from_logits(range(len(logits)), logits)
    scores = relevance_scores(ranking)
    assert strictly_decreasing_f32(scores)
    for given_score, score in zip(ranking.scores, scores, strict=True):
        assert score <= np.float32(given_score)
        assert abs(score - given_score) <= 1e-4 * max(1.0, abs(given_score))


def test_strictly_decreasing_scores_are_kept_as_float32() -> None:
    ranking = Ranking.from_logits([1, 0, 2], [3.25, 1.5, -2.0])
    assert relevance_scores(ranking) == [3.25, 1.5, -2.0]


def test_non_finite_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        relevance_scores(Ranking.from_logits([0], [float("inf")]))


def test_response_lists_every_document_in_ranked_order() -> None:
    request = RerankQuery("q", ("a", "b", "c"))
    ranking = Ranking.from_logits([2, 0, 1], [3.0, 2.0, 1.0])
    body = rerank_response(request, ranking, "rid")
    assert body == {
        "id": "rid",
        "results": [
            {"index": 2, "relevance_score": 3.0},
            {"index": 0, "relevance_score": 2.0},
            {"index": 1, "relevance_score": 1.0},
        ],
        "meta": {"api_version": {"version": "1"}},
    }


def test_response_top_n_and_documents() -> None:
    ranking = Ranking.from_logits([2, 0, 1], [3.0, 2.0, 1.0])
    body = rerank_response(RerankQuery("q", ("a", "b", "c"), 2, True), ranking, "rid")
    assert body["results"] == [
        {"index": 2, "relevance_score": 3.0, "document": {"text": "c"}},
        {"index": 0, "relevance_score": 2.0, "document": {"text": "a"}},
    ]
    assert len(rerank_response(RerankQuery("q", ("a", "b", "c"), 9), ranking, "r")["results"]) == 3


def test_response_refuses_a_ranking_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="2 passages for 3 documents"):
        rerank_response(RerankQuery("q", ("a", "b", "c")), Ranking.from_logits([1, 0], [1, 0]), "r")


def read_as_ml_commons(literal: str) -> float:
    """What ML Commons makes of a ``relevance_score`` literal: json-smart (permissive mode) reads
    a literal with neither ``.`` nor an exponent as an integer and one over 18 characters as a
    BigDecimal, and the Cohere post-process function casts the value to Double."""
    if len(literal) > 18:
        raise TypeError(f"BigDecimal cannot be cast to Double: {literal}")
    if not any(mark in literal for mark in ".eE"):
        raise TypeError(f"Integer cannot be cast to Double: {literal}")
    return float(literal)


def wire_scores(logits: list[float]) -> list[str]:
    """The ``relevance_score`` literals the service writes for a ranking with these logits."""
    ranking = Ranking.from_logits(range(len(logits)), logits)
    text = dumps(rerank_response(RerankQuery("q", ("d",) * len(logits)), ranking, "r"))
    return re.findall(r'"relevance_score":([^,}]+)', text)


def assert_ml_commons_reads_the_ranking(logits: list[float]) -> None:
    literals = wire_scores(logits)
    expected = relevance_scores(Ranking.from_logits(range(len(logits)), logits))
    read = np.asarray([read_as_ml_commons(literal) for literal in literals], dtype=np.float32)
    assert np.array_equal(read, np.asarray(expected, dtype=np.float32))
    assert np.all(read[1:] < read[:-1])


def test_long_literals_and_ties_at_negative_scores_reach_ml_commons_as_doubles() -> None:
    """``float(np.float32(x))`` printed ``-1.0000001192092896`` for a tie at -1.0."""
    assert wire_scores([-1.0, -1.0, -1.0]) == ["-1.0", "-1.0000001", "-1.0000002"]
    rng = np.random.default_rng(0)
    for low, high in [(0, 1), (-1, 0), (-40, -20), (20, 40), (-1e-3, 1e-3), (-1e20, 1e20)]:
        for _ in range(200):
            logits = rng.uniform(low, high, size=rng.integers(1, 30)).astype(np.float32)
            tied = rng.choice(logits, size=rng.integers(0, 10))  # ties, then capped ones
            assert_ml_commons_reads_the_ranking([float(v) for v in (*logits, *tied)])


def test_ties_at_the_lowest_float32_stay_finite_and_strictly_decreasing() -> None:
    lowest = float(np.finfo(np.float32).min)
    scores = relevance_scores(Ranking.from_logits(range(3), [lowest, lowest, lowest]))
    assert scores[0] == -(2.0**127)
    assert all(np.isfinite(scores))
    assert scores[0] > scores[1] > scores[2]


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1))
def test_every_float32_score_is_a_short_literal_that_reads_back(logits: list[float]) -> None:
    assert_ml_commons_reads_the_ranking(logits)


@pytest.mark.parametrize(
    ("score", "literal"),
    [
        (3.0, "3.0"),
        (-1.0, "-1.0"),
        (0.1, "0.1"),
        (float(np.float32(30.123456)), "30.123455"),
        (1e-5, "1e-5"),
        (-1.2345678e15, "-1.2345678e+15"),
        (float(np.float32(3.4e38)), "3.4e+38"),
        (float(np.nextafter(np.float32(-1.0), np.float32(-2.0))), "-1.0000001"),
    ],
)
def test_score_literals_are_the_shortest_float32_decimals(score: float, literal: str) -> None:
    assert score_literal(score) == literal


def test_dumps_writes_json_with_short_float_literals() -> None:
    body = {"id": 'a"b', "n": [1, True, None], "s": {"x": 0.1, "é": -2.5}}
    assert dumps(body) == '{"id":"a\\"b","n":[1,true,null],"s":{"x":0.1,"\\u00e9":-2.5}}'
    assert json.loads(dumps(body)) == body
    with pytest.raises(ValueError, match="finite"):
        dumps({"x": float("nan")})
