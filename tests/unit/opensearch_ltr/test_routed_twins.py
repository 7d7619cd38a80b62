"""Routed twins: OpenSearch keeps ``_id`` unique per shard only, so under custom routing two
documents of one index can share an ``_id``. Both modes tell them apart by ``_routing``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest
from support import body_rescore_spec

from haystack_llmrank.ranking import Ranking
from opensearch_ltr import LlmRescorer
from opensearch_ltr.errors import MissingTextError, RescoreRequestError
from opensearch_ltr.rescore import as_printed
from opensearch_ltr.server_applied_rescore import clause_count, window_query

BODY = {"query": {"match": {"text": "cats"}}}
EXPLAIN = {**BODY, "explain": True}


def hit(doc_id: str, score: float, text: str | None, routing: str | None = None) -> dict[str, Any]:
    """A first-pass hit of index ``docs``; ``_routing`` only when given, as OpenSearch shows it."""
    found = {
        "_index": "docs",
        "_id": doc_id,
        "_score": score,
        "_source": {} if text is None else {"text": text},
    }
    return found if routing is None else {**found, "_routing": routing}


def matched(query: dict[str, Any], doc: dict[str, Any]) -> float | None:
    """The score of ``query`` (a :func:`window_query`) for ``doc``; ``None``: no match."""
    ((kind, clause),) = query.items()
    if kind == "constant_score":
        return clause["boost"] if matched(clause["filter"], doc) is not None else None
    if kind == "ids":
        return 0.0 if doc["_id"] in clause["values"] else None
    if kind == "term":
        ((field, value),) = clause.items()
        return 0.0 if doc.get(field) == value else None
    if kind == "exists":
        return 0.0 if doc.get(clause["field"]) is not None else None
    assert kind == "bool", kind
    if any(matched(part, doc) is None for part in clause.get("filter", [])):
        return None
    if any(matched(part, doc) is not None for part in clause.get("must_not", [])):
        return None
    scores = [s for part in clause.get("should", []) if (s := matched(part, doc)) is not None]
    return None if clause.get("should") and not scores else sum(scores)


class OneShard:
    """A one-shard cluster holding ``hits`` (in first-pass order, all within any rescore
    window): pages them, explains them under ``explain: true``, and applies each ``rescore`` as
    OpenSearch's query rescorer does, running its query on every document."""

    def __init__(self, hits: list[dict[str, Any]]) -> None:
        self.hits = hits
        self.calls: list[dict[str, Any]] = []

    def search(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(copy.deepcopy(kwargs))
        body = kwargs["body"]
        ranked = [(float(doc["_score"]), i, doc) for i, doc in enumerate(self.hits)]
        for rescorer in body.get("rescore", []):
            query, spec = rescorer["query"], body_rescore_spec(rescorer)
            assert len(ranked) <= spec.window_size
            combined = [
                (spec.combine(score, matched(query["rescore_query"], doc)), i, doc)
                for score, i, doc in ranked
            ]
            ranked = sorted(combined, key=lambda x: (-x[0], x[1]))
        start, size = body.get("from", 0), body.get("size", 10)
        page = [
            {**copy.deepcopy(doc), "_score": as_printed(score)}
            for score, _, doc in ranked[start : start + size]
        ]
        if body.get("explain"):
            for doc in page:
                doc["_explanation"] = {"value": doc["_score"], "description": "bm25", "details": []}
        return {"took": 1, "hits": {"hits": page}}


class ShortestFirst:
    """Ranks passages by length, shortest first; logits 10, 9, ..."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def rerank(self, query: str, passages: Sequence[str], **kwargs: Any) -> Ranking:
        self.calls.append(list(passages))
        order = sorted(range(len(passages)), key=lambda i: (len(passages[i]), i))
        return Ranking.from_logits(order, [10.0 - r for r in range(len(order))])


def keyed(response: dict[str, Any], *fields: str) -> list[tuple[Any, ...]]:
    """``(_id, _routing, *fields)`` of each hit of the page."""
    return [
        (h["_id"], h.get("_routing"), *(h[name] for name in fields))
        for h in response["hits"]["hits"]
    ]


@pytest.mark.parametrize("routing", ["a", None])
def test_a_twin_past_the_window_gets_no_value_of_the_window_hit(routing: str | None) -> None:
    # The window of 3 holds dup, under routing a or without one; its twin under routing b is
    # past it. The engine ranks y ("cats"), dup, x; past the window, hits keep first-pass
    # order. Matched by _index and _id alone, the twin would take dup's value.
    hits = [
        hit("dup", 6.0, "cats purr", routing),
        hit("x", 5.0, "a long passage about dogs"),
        hit("y", 4.0, "cats"),
        hit("dup", 3.0, "birds sing", routing="b"),
        hit("z", 2.0, "fish swim"),
    ]
    stage = LlmRescorer(OneShard(hits), ShortestFirst(), window_size=3)
    client = stage.search("docs", BODY, size=5)
    server = stage.search("docs", BODY, size=5, apply="server")
    expected = [
        ("y", None, {"final": 0, "first_pass": 2, "engine": 0}, 4.0),
        ("dup", routing, {"final": 1, "first_pass": 0, "engine": 1}, 6.0),
        ("x", None, {"final": 2, "first_pass": 1, "engine": 2}, 5.0),
        ("dup", "b", {"final": 3, "first_pass": 3, "engine": None}, 3.0),
        ("z", None, {"final": 4, "first_pass": 4, "engine": None}, 2.0),
    ]
    for response in (client, server):
        assert keyed(response, "_rank", "_first_pass_score") == expected
    assert keyed(server, "_score") == keyed(client, "_score")


def test_twins_in_the_window_keep_their_own_ranks_and_missing_text() -> None:
    # dup/a has no text (the engine ranks its empty passage first); dup/b has its own.
    hits = [
        hit("dup", 6.0, None, routing="a"),
        hit("dup", 5.0, "birds sing", routing="b"),
        hit("x", 4.0, "cats"),
    ]
    with pytest.raises(MissingTextError, match=r"docs/dup \(routing a\) ") as caught:
        LlmRescorer(OneShard(hits), ShortestFirst(), window_size=3).search("docs", BODY)
    assert caught.value.hits == [("docs", "dup", "a")]

    stage = LlmRescorer(OneShard(hits), ShortestFirst(), window_size=3, missing_text="empty")
    expected = [
        ("dup", "a", {"final": 0, "first_pass": 0, "engine": 0}, 6.0),
        ("x", None, {"final": 1, "first_pass": 2, "engine": 1}, 4.0),
        ("dup", "b", {"final": 2, "first_pass": 1, "engine": 2}, 5.0),
    ]
    for apply in ("client", "server"):
        response = stage.search("docs", EXPLAIN, size=3, apply=apply)
        assert keyed(response, "_rank", "_first_pass_score") == expected, apply
        assert response["llmrank"]["missing_text"] == [
            {"_index": "docs", "_id": "dup", "_routing": "a"}
        ]
    flagged = [
        h["_explanation"]["details"][1]["details"][0]["description"].endswith(
            "ranked without its text fields"
        )
        for h in stage.search("docs", EXPLAIN, size=3)["hits"]["hits"]
    ]
    assert flagged == [True, False, False]


def test_the_window_query_filters_on_routing_whether_or_not_a_hit_has_one() -> None:
    hits = [{"_index": "a", "_id": "1", "_routing": "r"}, {"_index": "a", "_id": "2"}]
    assert window_query(hits, [1.0, 0.5]) == {
        "bool": {
            "should": [
                {
                    "bool": {
                        "filter": [{"term": {"_index": "a"}}],
                        "should": [
                            {
                                "constant_score": {
                                    "filter": {
                                        "bool": {
                                            "filter": [
                                                {"ids": {"values": ["1"]}},
                                                {"term": {"_routing": "r"}},
                                            ]
                                        }
                                    },
                                    "boost": 1.0,
                                }
                            }
                        ],
                        "minimum_should_match": 1,
                    }
                },
                {
                    "bool": {
                        "filter": [{"term": {"_index": "a"}}],
                        "must_not": [{"exists": {"field": "_routing"}}],
                        "should": [
                            {"constant_score": {"filter": {"ids": {"values": ["2"]}}, "boost": 0.5}}
                        ],
                        "minimum_should_match": 1,
                    }
                },
            ]
        }
    }
    # one clause per hit, one for the routing, one per group, one for the group's exists
    assert clause_count(hits) == 2 + 1 + 2 + 1


@pytest.mark.parametrize(
    ("routing", "named"), [("a", r"docs/dup \(routing a\)"), (None, "docs/dup")]
)
def test_a_first_pass_that_repeats_a_hit_is_refused(routing: str | None, named: str) -> None:
    """Impossible on a sound cluster; refused rather than mixed up, whatever on_error."""
    hits = [
        hit("dup", 6.0, "cats", routing),
        hit("x", 5.0, "dogs"),
        hit("dup", 4.0, "cats", routing),
    ]
    engine = ShortestFirst()
    for apply in ("client", "server"):
        stage = LlmRescorer(OneShard(hits), engine, window_size=3, on_error="fail_open")
        with pytest.raises(RescoreRequestError, match=f"first-pass hit {named} is there twice"):
            stage.search("docs", BODY, apply=apply)
    assert engine.calls == []
