"""Request checks, query text, passages, engine-score transforms and server-applied bodies."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from haystack_llmrank.ranking import Ranking
from opensearch_ltr.errors import QueryTextNotFoundError, RescoreRequestError
from opensearch_ltr.passages import PassageFields
from opensearch_ltr.query_text import extract_query_text
from opensearch_ltr.request import (
    check_body,
    check_fetch,
    check_filter_path,
    check_search_kwargs,
    filter_path_keeps,
    first_pass_body,
    resolve_page,
    stable_preference,
)
from opensearch_ltr.rescore import RescoreSpec
from opensearch_ltr.server_applied_rescore import (
    check_clause_count,
    clause_count,
    fewest_clauses,
    server_rescore_body,
    window_query,
)
from opensearch_ltr.transforms import rescore_values

# Request checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sort",
    [
        "_score",
        ["_score"],
        [{"_score": "desc"}],
        [{"_score": {"order": "desc"}}],
        [],
        [{"_score": "DESC"}],  # OpenSearch reads the order in any case
    ],
)
def test_a_score_sort_is_no_sort(sort: Any) -> None:
    check_body({"query": {"match_all": {}}, "sort": sort})


@pytest.mark.parametrize(
    "sort",
    [
        "date",
        [{"_score": "asc"}],
        ["_score", {"date": "desc"}],
        [{"_score": {"order": "asc"}}],
        ["_score", "_score"],  # two entries make a sort, which OpenSearch refuses with rescore
    ],
)
def test_a_field_sort_conflicts_with_rescore(sort: Any) -> None:
    with pytest.raises(RescoreRequestError, match=r"Cannot use \[sort\] option"):
        check_body({"sort": sort})


def test_collapse_search_after_scroll_and_bad_bodies_are_refused() -> None:
    with pytest.raises(RescoreRequestError, match="collapse"):
        check_body({"collapse": {"field": "site"}})
    with pytest.raises(RescoreRequestError, match="search_after"):
        check_body({"search_after": [1.0, "x"]})
    with pytest.raises(RescoreRequestError, match="JSON object"):
        check_body([{"query": {}}])
    with pytest.raises(RescoreRequestError, match="scroll"):
        check_search_kwargs({"scroll": "1m"})
    with pytest.raises(RescoreRequestError, match="'size'"):
        check_search_kwargs({"size": 3})
    # the query string's page, depth, query and sort would override the body's
    for given in ({"from_": 2}, {"params": {"from": 25}}, {"params": {"size": "2"}}):
        with pytest.raises(RescoreRequestError, match="rescorer's own argument"):
            check_search_kwargs(given)
    with pytest.raises(RescoreRequestError, match="scroll"):
        check_search_kwargs({"params": {"scroll": "1m"}})
    with pytest.raises(RescoreRequestError, match="q \\(in params\\) replaces"):
        check_search_kwargs({"params": {"q": "cats"}})
    with pytest.raises(RescoreRequestError, match=r"\[sort\]"):
        check_search_kwargs({"sort": "date:desc"})
    with pytest.raises(RescoreRequestError, match="params must be a mapping"):
        check_search_kwargs({"params": "size=2"})
    check_search_kwargs({"request_timeout": 3, "routing": "a", "params": {"routing": "a"}})
    check_search_kwargs({"sort": "_score:desc", "params": {"sort": ["_score"]}})


def test_resolve_page() -> None:
    assert resolve_page({}, None, None) == (0, 10)
    assert resolve_page({"from": 20, "size": 5}, None, None) == (20, 5)
    assert resolve_page({"from": 20, "size": 5}, 20, 5) == (20, 5)
    assert resolve_page({}, 3, 0) == (3, 0)
    with pytest.raises(RescoreRequestError, match=r"\[size\] is 7 as an argument but 5"):
        resolve_page({"size": 5}, None, 7)
    # as OpenSearch reads them: whole floats and strings of digits too
    assert resolve_page({"from": "2", "size": 5.0}, None, " 5") == (2, 5)
    for bad in ("5.5", 2.5, True, [3], "x"):
        with pytest.raises(RescoreRequestError, match=r"\[size\] must be an integer"):
            resolve_page({"size": bad}, None, None)
    with pytest.raises(RescoreRequestError, match="negative"):
        resolve_page({}, -1, None)
    with pytest.raises(RescoreRequestError, match="negative"):
        resolve_page({"size": "-3"}, None, None)


def test_fetch_limit_mirrors_max_result_window() -> None:
    check_fetch(10_000, 10_000)
    with pytest.raises(RescoreRequestError, match=r"Rescore window \[10001\]"):
        check_fetch(10_001, 10_000)


def test_first_pass_body_is_a_copy() -> None:
    body = {"query": {"match": {"text": "cats"}}, "from": 30, "size": 5, "aggs": {"a": {}}}
    before = copy.deepcopy(body)
    assert first_pass_body(body, 55) == {**before, "from": 0, "size": 55}
    assert body == before


@pytest.mark.parametrize(
    ("filter_path", "kept", "dropped"),
    [
        ("hits.hits", ["hits.hits._id", "hits.hits._source.text"], ["took"]),
        ("hits.hits._id,took", ["hits.hits._id", "took"], ["hits.hits._score"]),
        (["took", "hits.hits._id"], ["hits.hits._id"], ["hits.total"]),
        ("hits.*._i*", ["hits.hits._id", "hits.hits._index"], ["hits.hits._score"]),
        ("**._score", ["hits.hits._score", "hits.max_score.x._score"], ["hits.max_score"]),
        ("hits.**", ["hits.hits._source.a.b"], ["took"]),
        ("-hits.hits._source", ["hits.hits._id", "took"], ["hits.hits._source.text"]),
        ("hits,-hits.hits._source.text", ["hits.hits._source.title"], ["hits.hits._source.text"]),
        ("hits.hits._source.a", ["hits.hits._source.a.b"], ["hits.hits._source.ab"]),
        (" took , hits.hits._id ", ["took", "hits.hits._id"], ["hits.hits._index"]),
        ("", ["took", "hits.hits._id"], []),
    ],
)
def test_filter_path_semantics(
    filter_path: str | list[str], kept: list[str], dropped: list[str]
) -> None:
    assert [filter_path_keeps(filter_path, path) for path in kept] == [True] * len(kept)
    assert [filter_path_keeps(filter_path, path) for path in dropped] == [False] * len(dropped)


def test_filter_path_must_keep_what_rescoring_reads() -> None:
    keep = "hits.hits._index,hits.hits._id,hits.hits._score,hits.hits._source.body"
    check_filter_path({}, ["body"])
    check_filter_path({"filter_path": keep}, ["body"])
    check_filter_path({"params": {"filter_path": keep}}, ["body"])
    check_filter_path({"filter_path": [keep, "took"]}, ["body"])
    with pytest.raises(RescoreRequestError, match=r"drops hits\.hits\._source\.title, which"):
        check_filter_path({"filter_path": keep}, ["title", "body"])
    with pytest.raises(RescoreRequestError, match=r"drops hits\.hits\._score"):
        check_filter_path({"filter_path": "-hits.hits._score", "params": {"filter_path": keep}}, [])
    with pytest.raises(RescoreRequestError, match="string or strings"):
        check_filter_path({"filter_path": 3}, [])


def test_stable_preference_is_per_query_not_per_page() -> None:
    body = {"query": {"match": {"text": "cats"}}}
    same = stable_preference("idx", {**body, "from": 10, "size": 5})
    assert stable_preference("idx", body) == same
    assert same.startswith("llmrank-")
    assert stable_preference("idx", {"query": {"match": {"text": "dogs"}}}) != same
    assert stable_preference("other", body) != same


# Query text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"match": {"text": "cats"}}, "cats"),
        ({"match": {"text": {"query": "cats", "operator": "and"}}}, "cats"),
        ({"match_phrase": {"title": "black cats"}}, "black cats"),
        ({"multi_match": {"query": "cats", "fields": ["a", "b"]}}, "cats"),
        ({"query_string": {"query": "title:(cats) AND dogs"}}, "title:(cats) AND dogs"),
        ({"simple_query_string": {"query": "cats +dogs"}}, "cats +dogs"),
        ({"combined_fields": {"query": "cats", "fields": ["a"]}}, "cats"),
        (
            {
                "bool": {
                    "must": [{"match": {"text": "cats"}}],
                    "should": {"multi_match": {"query": " cats "}},
                    "filter": [{"term": {"lang": "en"}}],
                    "must_not": [{"match": {"text": "dogs"}}],
                }
            },
            "cats",
        ),
        ({"function_score": {"query": {"match": {"text": "cats"}}, "functions": []}}, "cats"),
        ({"dis_max": {"queries": [{"match": {"a": "cats"}}, {"match": {"b": "cats"}}]}}, "cats"),
        (
            {"boosting": {"positive": {"match": {"a": "cats"}}, "negative": {"match": {"a": "x"}}}},
            "cats",
        ),
        ({"hybrid": {"queries": [{"match": {"a": "cats"}}, {"neural": {"v": {"k": 5}}}]}}, "cats"),
        ({"neural": {"vec": {"query_text": "cats", "model_id": "m", "k": 5}}}, "cats"),
        ({"constant_score": {"filter": {"match": {"a": "cats"}}}}, "cats"),
        ({"script_score": {"query": {"match": {"a": "cats"}}, "script": {}}}, "cats"),
        (
            {
                "bool": {
                    "must": {"knn": {"v": {"vector": [1.0]}}},
                    "should": {"match": {"a": "cats"}},
                }
            },
            "cats",
        ),
    ],
)
def test_query_text_is_found(query: dict[str, Any], text: str) -> None:
    assert extract_query_text({"query": query}) == text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "no full-text clause"),
        ({"query": {"term": {"match": {"value": "x"}}}}, "no full-text clause"),
        ({"query": {"knn": {"vec": {"vector": [1.0], "k": 3}}}}, "no full-text clause"),
        ({"query": {"match": {"text": "   "}}}, "no full-text clause"),
        # a filter's text selects documents, it is not what was asked: kNN with a filter
        (
            {"query": {"bool": {"must": {"knn": {}}, "filter": {"match": {"lang": "en"}}}}},
            "no full-text clause",
        ),
        (
            {"query": {"bool": {"should": [{"match": {"a": "cats"}}, {"match": {"a": "dogs"}}]}}},
            r"several query texts in the query body \['cats', 'dogs'\]",
        ),
    ],
)
def test_query_text_not_found(body: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryTextNotFoundError, match=message):
        extract_query_text(body)


# Passages --------------------------------------------------------------------------------------


def test_passages_join_title_and_present_fields() -> None:
    fields = PassageFields(("body", "meta.summary", "tags"), title_field="title", separator=" | ")
    hit = {
        "_source": {
            "title": "Cats",
            "body": "Cats sleep.",
            "meta": {"summary": "About cats."},
            "tags": ["pets", " ", 3, "animals"],
        }
    }
    assert fields.texts(hit) == ["Cats sleep.", "About cats.", "pets | animals"]
    assert fields.passage(hit) == "Cats | Cats sleep. | About cats. | pets | animals"
    # a dotted key is an object path too; at each object OpenSearch takes the shortest key
    dotted = {"_source": {"meta.summary": "dotted key", "meta": {"summary": "nested"}}}
    assert fields.texts(dotted) == ["nested"]
    deep = PassageFields(("meta.body.text", "a.b.c.d"))
    source = {"meta.body": {"text": "cats sleep"}, "a": {"b.c": {"d": "dotted inside"}}}
    assert deep.texts({"_source": source}) == ["cats sleep", "dotted inside"]
    assert deep.texts({"_source": {"meta": {"body.text": ["x", "y"]}}}) == ["x\ny"]
    assert deep.texts({"_source": {"meta": "not an object", "meta.body": None}}) == []


def test_passages_read_dotted_paths_through_lists_of_objects() -> None:
    # A nested or object-array field: OpenSearch resolves "paragraphs.text" over every element.
    fields = PassageFields(("paragraphs.text", "tags"), title_field="meta.title", separator=" ")
    hit = {
        "_source": {
            "meta": [{"title": "Paris"}, {"lang": "en"}],
            "paragraphs": [
                {"text": "Paris is in France."},
                {"text": ["It is big.", ["It is old."]]},
                {"note": "no text here"},
                "a bare string is not an object",
            ],
            "tags": [["city"], "capital"],
        }
    }
    assert fields.texts(hit) == ["Paris is in France. It is big. It is old.", "city capital"]
    assert fields.passage(hit) == "Paris Paris is in France. It is big. It is old. city capital"
    assert fields.texts({"_source": {"paragraphs": [{"note": "x"}]}}) == []


def test_passages_with_missing_text() -> None:
    fields = PassageFields(("text",), title_field="title")
    assert fields.texts({"_source": {"title": "Only a title", "text": 42}}) == []
    assert fields.texts({"_source": {"text": ["\ufeff", " ", "&nbsp;"]}}) == []  # shows nothing
    assert fields.texts({"_source": {"text": ["\ufeff", "cats"]}}) == ["cats"]
    assert fields.passage({"_source": {"title": "Only a title"}}) == "Only a title"
    assert fields.passage({"_id": "x"}) == ""
    with pytest.raises(ValueError, match="not one string"):
        PassageFields.of("text", None, "\n")
    with pytest.raises(ValueError, match="non-empty"):
        PassageFields(())


# Transforms ------------------------------------------------------------------------------------


def test_transforms_follow_the_engine() -> None:
    # Input 2 is ranked first, then 0, then 1; capped logits 3, 1, 1.
    ranking = Ranking.from_logits([2, 0, 1], [3.0, 1.0, 1.5])
    assert rescore_values(ranking, "rank") == [
        float(np.float32(2 / 3)),
        float(np.float32(1 / 3)),
        1.0,
    ]
    assert rescore_values(ranking, "minmax") == [0.0, 0.0, 1.0]
    assert rescore_values(ranking, "logit") == [1.0, 1.0, 3.0]
    flat = Ranking.from_logits([1, 0], [-2.0, -2.0])
    assert rescore_values(flat, "minmax") == [1.0, 1.0]
    assert rescore_values(flat, "logit") == [-2.0, -2.0]
    assert rescore_values(Ranking.from_logits([], []), "minmax") == []
    with pytest.raises(ValueError, match="score_transform"):
        rescore_values(ranking, "softmax")  # type: ignore[arg-type]


# Server-applied bodies -------------------------------------------------------------------------

HITS = [{"_index": "a", "_id": "1"}, {"_index": "a", "_id": "2"}, {"_index": "b", "_id": "1"}]


def test_window_query_scores_each_hit_by_index_and_id() -> None:
    one = window_query(HITS[:2], [1.0, 0.1])
    assert one == {
        "bool": {
            "filter": [{"term": {"_index": "a"}}],
            "must_not": [{"exists": {"field": "_routing"}}],
            "should": [
                {"constant_score": {"filter": {"ids": {"values": ["1"]}}, "boost": 1.0}},
                {
                    "constant_score": {
                        "filter": {"ids": {"values": ["2"]}},
                        "boost": float(np.float32(0.1)),
                    }
                },
            ],
            "minimum_should_match": 1,
        }
    }
    two = window_query(HITS, [1.0, 0.5, 0.0])
    assert [clause["bool"]["filter"] for clause in two["bool"]["should"]] == [
        [{"term": {"_index": "a"}}],
        [{"term": {"_index": "b"}}],
    ]
    with pytest.raises(RescoreRequestError, match="non-negative"):
        window_query(HITS[:1], [-0.5])
    with pytest.raises(ValueError, match="1 hits but 2 values"):
        window_query(HITS[:1], [1.0, 2.0])


def test_server_rescore_body_appends_to_the_users_rescore() -> None:
    theirs = {"window_size": 50, "query": {"rescore_query": {"match_phrase": {"t": "x"}}}}
    body = {"query": {"match": {"t": "x"}}, "rescore": theirs, "aggs": {"n": {}}}
    before = copy.deepcopy(body)
    spec = RescoreSpec(window_size=2, query_weight=0.5, rescore_query_weight=2.0, score_mode="max")
    built = server_rescore_body(body, HITS[:2], [1.0, 0.5], spec, from_=10, size=5)
    assert body == before
    assert built["from"] == 10
    assert built["size"] == 5
    assert built["aggs"] == {"n": {}}
    assert built["rescore"][0] == theirs
    ours = built["rescore"][1]
    assert ours["window_size"] == 2 + 10 + 5
    assert ours["query"] == {
        "rescore_query": window_query(HITS[:2], [1.0, 0.5]),
        "query_weight": 0.5,
        "rescore_query_weight": 2.0,
        "score_mode": "max",
    }
    listed = server_rescore_body(
        {"rescore": [theirs, theirs]}, HITS[:1], [1.0], spec, from_=0, size=1
    )
    assert len(listed["rescore"]) == 3
    plain = server_rescore_body({}, HITS[:1], [1.0], spec, from_=0, size=1)
    assert len(plain["rescore"]) == 1


def test_clause_count_is_one_per_hit_and_two_per_index_without_routing() -> None:
    assert clause_count(HITS) == 3 + 2 * 2
    assert clause_count(HITS[:2]) == 2 + 2
    assert clause_count([]) == 0
    assert fewest_clauses(2) == clause_count(HITS[:2])
    assert fewest_clauses(2) < clause_count([{**hit, "_routing": "r"} for hit in HITS[:2]])
    check_clause_count(5, 5)
    with pytest.raises(RescoreRequestError, match=r"needs 6 clauses, more than .*\[5\]"):
        check_clause_count(6, 5)


def test_server_rescore_body_respects_max_clause_count() -> None:
    spec = RescoreSpec(window_size=3)
    server_rescore_body({}, HITS, [1.0, 1.0, 1.0], spec, from_=0, size=1, max_clause_count=7)
    with pytest.raises(RescoreRequestError, match="max_clause_count"):
        server_rescore_body({}, HITS, [1.0, 1.0, 1.0], spec, from_=0, size=1, max_clause_count=6)
