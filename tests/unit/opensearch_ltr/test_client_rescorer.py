"""LlmRescorer and AsyncLlmRescorer over a scripted client: requests, responses and faults."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from opensearchpy.exceptions import ConnectionError as OsConnectionError
from opensearchpy.exceptions import ConnectionTimeout, NotFoundError
from opensearchpy.exceptions import RequestError as OsRequestError
from support import body_rescore_spec

from haystack_llmrank.errors import PromptTooLongError
from haystack_llmrank.fusion import fuse_with_first_stage
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from opensearch_ltr import AsyncLlmRescorer, LlmRescorer
from opensearch_ltr.errors import (
    MissingTextError,
    QueryTextNotFoundError,
    RerankError,
    RescoreRequestError,
    SearchFailedError,
)
from opensearch_ltr.rescore import RescoreSpec, rescore

BODY = {"query": {"match": {"text": "cats"}}, "aggs": {"n": {"value_count": {"field": "x"}}}}
TEXTS = ["cats purr", "a long passage about dogs", "cats", "birds sing", "fish swim", "cows moo"]
SCORES = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]


def make_hits(texts: Sequence[str | None] = TEXTS) -> list[dict[str, Any]]:
    return [
        {
            "_index": "docs",
            "_id": f"d{i}",
            "_score": SCORES[i],
            "_source": {} if text is None else {"text": text},
        }
        for i, text in enumerate(texts)
    ]


def first_pass_explanation(hit: dict[str, Any]) -> dict[str, Any]:
    """The ``_explanation`` a cluster gives a first-pass hit under ``explain: true``."""
    return {
        "value": hit["_score"],
        "description": f"weight(text:cats in {hit['_id']})",
        "details": [],
    }


class ScriptedClient:
    """Answers ``search`` from a fixed first-pass list, explained under ``explain: true``;
    raises the queued errors in turn."""

    def __init__(self, hits: list[dict[str, Any]], errors: Sequence[Exception | None] = ()) -> None:
        self.hits = hits
        self.errors = list(errors)
        self.calls: list[dict[str, Any]] = []

    def answer(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(copy.deepcopy(kwargs))
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        body = kwargs["body"]
        start, size = body.get("from", 0), body.get("size", 10)
        hits = copy.deepcopy(self.hits[start : start + size])
        if body.get("explain"):
            for hit in hits:
                hit["_explanation"] = first_pass_explanation(hit)
        return {
            "took": 7,
            "timed_out": False,
            "hits": {
                "total": {"value": len(self.hits), "relation": "eq"},
                "max_score": self.hits[0]["_score"] if self.hits and size else None,
                "hits": hits,
            },
            "aggregations": {"n": {"value": len(self.hits)}},
        }

    def search(self, **kwargs: Any) -> dict[str, Any]:
        return self.answer(**kwargs)


class AsyncScriptedClient(ScriptedClient):
    async def search(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.answer(**kwargs)


class ShortestFirst:
    """Ranks passages by length (shortest first); logits 10, 9, ... (``tied``: 10, 10, 9, 9,
    ..., as capping across windows makes them)."""

    def __init__(self, error: Exception | None = None, *, tied: bool = False) -> None:
        self.error = error
        self.step = 2 if tied else 1
        self.calls: list[tuple[str, list[str]]] = []
        self.top_ks: list[int | None] = []
        self.first_pass: list[list[float] | None] = []

    def rerank(self, query: str, passages: Sequence[str], **kwargs: Any) -> Ranking:
        self.calls.append((query, list(passages)))
        self.top_ks.append(kwargs.get("top_k"))
        scores = kwargs.get("first_stage_scores")
        self.first_pass.append(None if scores is None else list(scores))
        if self.error is not None:
            raise self.error
        order = sorted(range(len(passages)), key=lambda i: (len(passages[i]), i))
        return Ranking.from_logits(order, [10.0 - r // self.step for r in range(len(order))])


def rescorer(client: Any, engine: Any = None, **kwargs: Any) -> LlmRescorer:
    return LlmRescorer(client, engine or ShortestFirst(), window_size=3, **kwargs)


def ids(response: dict[str, Any]) -> list[str]:
    return [hit["_id"] for hit in response["hits"]["hits"]]


def test_client_side_rescore_end_to_end() -> None:
    client, engine = ScriptedClient(make_hits()), ShortestFirst()
    body = copy.deepcopy(BODY)
    response = rescorer(client, engine, query_weight=0.5).search("docs", body, size=4)
    assert body == BODY
    # Window d0..d2 ranked d2 ("cats"), d0, d1 -> rank values 1, 2/3, 1/3.
    assert engine.calls == [("cats", TEXTS[:3])]
    # Final: d0 6 * 0.5 + 2/3, d2 4 * 0.5 + 1, d1 5 * 0.5 + 1/3, d3 3 * 0.5 (past the window).
    assert ids(response) == ["d0", "d2", "d1", "d3"]
    hits = response["hits"]["hits"]
    assert [h["_score"] for h in hits] == [3.6666667, 3.0, 2.8333333, 1.5]
    assert [h["_first_pass_score"] for h in hits] == [6.0, 4.0, 5.0, 3.0]
    assert [h["_rank"] for h in hits] == [
        {"final": 0, "first_pass": 0, "engine": 1},
        {"final": 1, "first_pass": 2, "engine": 0},
        {"final": 2, "first_pass": 1, "engine": 2},
        {"final": 3, "first_pass": 3, "engine": None},
    ]
    assert hits[1]["_source"] == {"text": "cats"}
    assert response["hits"]["max_score"] == hits[0]["_score"]
    assert response["hits"]["total"] == {"value": 6, "relation": "eq"}
    assert response["aggregations"] == {"n": {"value": 6}}
    assert response["took"] == 7 + response["llmrank"]["took_ms"]
    assert response["llmrank"] == {
        "mode": "client",
        "query_text": "cats",
        "window_size": 3,
        "reranked": 3,
        "score_transform": "rank",
        "model": None,
        "fail_open": False,
        "reason": None,
        "missing_text": [],
        "took_ms": response["llmrank"]["took_ms"],
    }
    assert isinstance(response["llmrank"]["took_ms"], int)
    assert response["llmrank"]["took_ms"] >= 0
    (call,) = client.calls
    assert call["index"] == "docs"
    assert call["body"] == {**BODY, "from": 0, "size": 3 + 0 + 4}
    assert call["preference"].startswith("llmrank-")


def test_default_weights_rank_the_window_by_the_engine_then_first_pass() -> None:
    response = rescorer(ScriptedClient(make_hits())).search("docs", BODY, size=6)
    assert ids(response) == ["d2", "d0", "d1", "d3", "d4", "d5"]
    hits = response["hits"]["hits"]
    assert [h["_score"] for h in hits][:3] == [1.0, 0.6666667, 0.33333334]
    # Past the window: first-pass scores times one vanishing power of two, never a tie at 0.
    weights = {np.float32(h["_score"]) / np.float32(h["_first_pass_score"]) for h in hits[3:]}
    (weight,) = weights
    assert 0 < weight < 1e-6
    assert np.frexp(weight)[0] == 0.5  # a power of two


def test_pages_are_slices_of_one_order() -> None:
    client = ScriptedClient(make_hits())
    stage = rescorer(client, score_mode="multiply", query_weight=1.0)
    full = ids(stage.search("docs", BODY, size=6))
    pages = [ids(stage.search("docs", BODY, from_=start, size=2)) for start in (0, 2, 4)]
    assert [docid for page in pages for docid in page] == full
    assert [c["body"]["size"] for c in client.calls] == [9, 5, 7, 9]
    assert len({c["preference"] for c in client.calls}) == 1


def test_the_engine_ranks_the_whole_window_whatever_the_page() -> None:
    # A top-k aware strategy orders positions past k differently for each k, so a page-
    # dependent depth would let pages disagree about the window's order.
    engine = ShortestFirst()
    stage = rescorer(ScriptedClient(make_hits()), engine)
    for start, size in [(0, 6), (2, 2), (3, 4)]:
        stage.search("docs", BODY, from_=start, size=size)
    assert engine.top_ks == [None, None, None]


def test_the_engine_gets_the_window_hits_first_pass_scores() -> None:
    engine = ShortestFirst()
    LlmRescorer(ScriptedClient(make_hits()), engine, window_size=4).search("docs", BODY, size=6)
    assert engine.first_pass == [[6.0, 5.0, 4.0, 3.0]]


def test_an_engine_that_fuses_ranks_the_window_fused_with_the_first_pass(
    smollm2_tokenizer: Any, tiny_scorer: TorchLabelScorer
) -> None:
    alone = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096)
    fusing = Reranker(
        smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, fusion_k=0, fusion_needs_scores=True
    )
    model = alone.rerank("cats", TEXTS)
    fused = fuse_with_first_stage(model, 0)  # the hits come in first-pass order
    assert fused.order != model.order, "the fixture must tell fused from alone"
    stage = LlmRescorer(ScriptedClient(make_hits()), fusing, window_size=6)
    page = ids(stage.search("docs", BODY, size=6))
    assert page == [f"d{i}" for i in fused.order]


def test_arguments_reach_the_client_and_users_preference_wins() -> None:
    client = ScriptedClient(make_hits())
    rescorer(client).search("docs", BODY, request_timeout=3, preference="_local", routing="r")
    assert {k: client.calls[0][k] for k in ("request_timeout", "preference", "routing")} == {
        "request_timeout": 3,
        "preference": "_local",
        "routing": "r",
    }


def test_a_preference_in_params_or_a_point_in_time_gets_no_preference_of_ours() -> None:
    client = ScriptedClient(make_hits())
    rescorer(client).search("docs", BODY, params={"preference": "_shards:0"})
    assert "preference" not in client.calls[0]  # opensearch-py would write ours over it
    assert client.calls[0]["params"] == {"preference": "_shards:0"}
    # OpenSearch refuses a preference beside a point in time, which pins shard copies itself
    pit = {**BODY, "pit": {"id": "abc", "keep_alive": "1m"}}
    rescorer(client).search(None, pit)
    assert "preference" not in client.calls[1]


def test_a_client_of_the_other_kind_is_refused_at_once() -> None:
    with pytest.raises(
        TypeError, match=r"LlmRescorer needs an OpenSearch client .*AsyncLlmRescorer"
    ):
        LlmRescorer(AsyncScriptedClient(make_hits()), ShortestFirst())
    with pytest.raises(TypeError, match="AsyncLlmRescorer needs an AsyncOpenSearch client"):
        AsyncLlmRescorer(ScriptedClient(make_hits()), ShortestFirst())
    from opensearchpy import AsyncOpenSearch, OpenSearch  # wraps its async methods in plain ones

    LlmRescorer(OpenSearch(), ShortestFirst())
    AsyncLlmRescorer(AsyncOpenSearch(), ShortestFirst())
    with pytest.raises(TypeError, match="use AsyncLlmRescorer for it"):
        LlmRescorer(AsyncOpenSearch(), ShortestFirst())


def test_a_partial_first_pass_is_reranked_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class PartialClient(ScriptedClient):
        def search(self, **kwargs: Any) -> dict[str, Any]:
            answer = self.answer(**kwargs)
            return {**answer, "_shards": {"total": 3, "successful": 2, "failed": 1}}

    with caplog.at_level(logging.WARNING, logger="opensearch_ltr.client_rescorer"):
        response = rescorer(PartialClient(make_hits())).search("docs", BODY, size=4)
    assert len(ids(response)) == 4
    assert "the first pass search is partial (1 shard(s) failed)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opensearch_ltr.client_rescorer"):
        rescorer(ScriptedClient(make_hits())).search("docs", BODY, size=4)
    assert caplog.text == ""


def test_explicit_query_text_and_page_from_body() -> None:
    engine = ShortestFirst()
    body = {"query": {"knn": {"v": {"vector": [0.1], "k": 5}}}, "from": 1, "size": 2}
    response = rescorer(ScriptedClient(make_hits()), engine).search(
        "docs", body, query_text="cats?"
    )
    assert engine.calls[0][0] == "cats?"
    assert [h["_rank"]["final"] for h in response["hits"]["hits"]] == [1, 2]


def test_bad_requests_fail_before_any_search() -> None:
    client = ScriptedClient(make_hits())
    stage = rescorer(client)
    with pytest.raises(QueryTextNotFoundError):
        stage.search("docs", {"query": {"match_all": {}}})
    with pytest.raises(RescoreRequestError, match="query_text"):
        stage.search("docs", BODY, query_text=" ")
    with pytest.raises(RescoreRequestError, match="sort"):
        stage.search("docs", {**BODY, "sort": [{"date": "desc"}]})
    with pytest.raises(RescoreRequestError, match="Rescore window"):
        stage.search("docs", BODY, from_=9990, size=10)
    logits = rescorer(client, score_transform="logit", query_weight=1.0)
    with pytest.raises(RescoreRequestError, match="can be negative"):
        logits.search("docs", BODY, apply="server")
    with pytest.raises(RescoreRequestError, match="apply must be 'client' or 'server'"):
        stage.search("docs", BODY, apply="cluster")  # type: ignore[arg-type]
    assert client.calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_error": "ignore"}, "on_error"),
        ({"missing_text": "drop"}, "missing_text"),
        ({"score_transform": "softmax"}, "score_transform"),
        ({"score_mode": "sum"}, "score_mode"),
        ({"text_fields": "text"}, "not one string"),
        ({"score_mode": "min"}, "'min' with query_weight 0 scores every hit 0"),
        ({"score_mode": "multiply"}, "'multiply' with query_weight 0 scores every hit 0"),
        ({"query_weight": 1.0, "rescore_query_weight": 0.0}, "rescore_query_weight"),
        ({"score_transform": "logit"}, "'logit' with query_weight 0"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rescorer(ScriptedClient([]), **kwargs)


def test_size_zero_and_no_hits_skip_the_engine() -> None:
    client, engine = ScriptedClient(make_hits()), ShortestFirst()
    response = rescorer(client, engine).search("docs", BODY, size=0)
    assert client.calls[0]["body"]["size"] == 0
    assert response["hits"]["hits"] == []
    assert response["aggregations"] == {"n": {"value": 6}}
    empty = rescorer(ScriptedClient([]), engine).search("docs", BODY)
    assert empty["hits"]["hits"] == []
    assert empty["llmrank"]["reranked"] == 0
    assert engine.calls == []


def test_hits_without_score_are_refused() -> None:
    hits = make_hits()
    hits[1]["_score"] = None
    with pytest.raises(RescoreRequestError, match="docs/d1 has no _score"):
        rescorer(ScriptedClient(hits)).search("docs", BODY)


@pytest.mark.parametrize(
    ("filter_path", "dropped"),
    [
        ("took", "hits.hits._index, hits.hits._id, hits.hits._score, hits.hits._source.text"),
        ("hits.hits._id", "hits.hits._index, hits.hits._score, hits.hits._source.text"),
        (["took", "hits.hits._index,hits.hits._id,hits.hits._score"], "hits.hits._source.text"),
        ("-hits.hits._score", "hits.hits._score"),
    ],
)
def test_a_filter_path_that_drops_what_rescoring_reads_is_refused(
    filter_path: str | list[str], dropped: str
) -> None:
    """Refused before any search, whatever on_error (it is the request that is wrong)."""
    client, engine = ScriptedClient(make_hits()), ShortestFirst()
    for on_error in ("raise", "fail_open"):
        stage = rescorer(client, engine, on_error=on_error)
        for kwargs in ({"filter_path": filter_path}, {"params": {"filter_path": filter_path}}):
            with pytest.raises(RescoreRequestError, match=f"drops {dropped}, which rescoring"):
                stage.search("docs", BODY, apply="server", **kwargs)
    assert client.calls == []
    assert engine.calls == []


class FilteredClient(ScriptedClient):
    """Drops an empty ``hits.hits``, as a cluster applying a ``filter_path`` does."""

    def answer(self, **kwargs: Any) -> dict[str, Any]:
        response = super().answer(**kwargs)
        return {} if not response["hits"]["hits"] else {"hits": response["hits"]}


def test_a_filter_path_that_keeps_what_rescoring_reads() -> None:
    keep = "hits.hits._index,hits.hits._id,hits.hits._score,hits.hits._source"
    stage = rescorer(FilteredClient(make_hits()), query_weight=0.5)
    response = stage.search("docs", BODY, size=4, filter_path=keep)
    assert ids(response) == ["d0", "d2", "d1", "d3"]
    for apply in ("client", "server"):
        empty = rescorer(FilteredClient([])).search("docs", BODY, filter_path=keep, apply=apply)
        assert empty["hits"]["hits"] == []
        assert empty["llmrank"]["reranked"] == 0


def test_server_applied_limits_are_checked_before_the_engine() -> None:
    client, engine = ScriptedClient(make_hits()), ShortestFirst()
    for on_error in ("raise", "fail_open"):
        # A window of 3 hits of one index needs 5 clauses.
        stage = rescorer(client, engine, max_clause_count=3, on_error=on_error)
        with pytest.raises(RescoreRequestError, match="needs 5 clauses"):
            stage.search("docs", BODY, apply="server")
    assert client.calls == []
    assert rescorer(client, engine, max_clause_count=3).search("docs", BODY)["hits"]["hits"]
    # Each index adds two clauses: known once the first pass is back, still before the engine.
    hits = make_hits()
    hits[1]["_index"] = "other"
    client, engine = ScriptedClient(hits), ShortestFirst()
    with pytest.raises(RescoreRequestError, match="needs 7 clauses"):
        rescorer(client, engine, max_clause_count=6).search("docs", BODY, apply="server")
    assert len(client.calls) == 1
    assert engine.calls == []


def test_first_pass_failure_always_raises() -> None:
    for error in (
        OsConnectionError("N/A", "refused", Exception("refused")),
        ConnectionTimeout("TIMEOUT", "timed out", Exception("timed out")),
        NotFoundError(404, "index_not_found_exception", {}),
    ):
        stage = rescorer(ScriptedClient(make_hits(), [error]), on_error="fail_open")
        with pytest.raises(SearchFailedError, match="first_pass search failed") as caught:
            stage.search("docs", BODY)
        assert caught.value.stage == "first_pass"
        assert caught.value.__cause__ is error


def test_engine_failure_raises_or_fails_open() -> None:
    boom = RuntimeError("out of memory")
    with pytest.raises(RerankError, match="out of memory") as caught:
        rescorer(ScriptedClient(make_hits()), ShortestFirst(boom)).search("docs", BODY)
    assert caught.value.__cause__ is boom

    stage = rescorer(ScriptedClient(make_hits()), ShortestFirst(boom), on_error="fail_open")
    response = stage.search("docs", BODY, from_=1, size=3)
    assert ids(response) == ["d1", "d2", "d3"]
    assert [h["_score"] for h in response["hits"]["hits"]] == [5.0, 4.0, 3.0]
    assert [h["_rank"]["final"] for h in response["hits"]["hits"]] == [1, 2, 3]
    assert response["hits"]["max_score"] == 6.0
    assert response["llmrank"]["fail_open"] is True
    assert response["llmrank"]["reranked"] == 0
    assert "RuntimeError: out of memory" in response["llmrank"]["reason"]


def test_a_query_too_long_for_the_prompt_is_a_request_error_even_failing_open() -> None:
    too_long = PromptTooLongError("the query alone exceeds the prompt budget")
    for on_error in ("raise", "fail_open"):
        stage = rescorer(ScriptedClient(make_hits()), ShortestFirst(too_long), on_error=on_error)
        with pytest.raises(RescoreRequestError, match="the query cannot be ranked") as caught:
            stage.search("docs", BODY)
        assert caught.value.__cause__ is too_long


def test_missing_text_raises_flags_or_fails_open() -> None:
    texts = [TEXTS[0], None, TEXTS[2], None]
    with pytest.raises(MissingTextError, match="docs/d1") as caught:
        rescorer(ScriptedClient(make_hits(texts))).search("docs", BODY)
    assert caught.value.hits == [("docs", "d1", None)]

    engine = ShortestFirst()
    response = rescorer(ScriptedClient(make_hits(texts)), engine, missing_text="empty").search(
        "docs", BODY
    )
    assert engine.calls == [("cats", ["cats purr", "", "cats"])]
    assert sorted(ids(response)) == ["d0", "d1", "d2", "d3"]
    assert response["llmrank"]["missing_text"] == [{"_index": "docs", "_id": "d1"}]
    assert response["llmrank"]["fail_open"] is False

    failed = rescorer(ScriptedClient(make_hits(texts)), on_error="fail_open").search("docs", BODY)
    assert ids(failed) == ["d0", "d1", "d2", "d3"]
    assert failed["llmrank"]["fail_open"] is True
    assert failed["llmrank"]["missing_text"] == [{"_index": "docs", "_id": "d1"}]


@pytest.mark.parametrize(
    ("field", "value", "lacks"),
    [
        ("_id", None, "_id"),
        ("_index", None, "_index"),
        ("_id", 7, "_id"),
        ("_score", None, "_score"),
    ],
)
def test_first_pass_hits_without_their_keys_are_refused(field: str, value: Any, lacks: str) -> None:
    hits = make_hits()
    hits[1][field] = value
    with pytest.raises(RescoreRequestError, match=f"has no {lacks}; rescoring needs"):
        rescorer(ScriptedClient(hits)).search("docs", BODY)


def test_a_server_applied_hit_the_first_pass_did_not_return_gets_no_ranks() -> None:
    class ChangedIndex(ScriptedClient):
        """The second search finds a document the first pass did not (the index changed)."""

        def answer(self, **kwargs: Any) -> dict[str, Any]:
            response = super().answer(**kwargs)
            if "rescore" in kwargs["body"]:
                new = {"_index": "docs", "_id": "new", "_score": 99.0, "_source": {"text": "x"}}
                response["hits"]["hits"].insert(0, new)
            return response

    response = rescorer(ChangedIndex(make_hits())).search("docs", BODY, size=2, apply="server")
    first = response["hits"]["hits"][0]
    assert first["_id"] == "new"
    assert first["_rank"] == {"final": 0, "first_pass": None, "engine": None}
    assert first["_first_pass_score"] is None
    assert response["hits"]["hits"][1]["_rank"]["first_pass"] is not None


def test_server_applied_sends_one_more_search() -> None:
    client = ScriptedClient(make_hits())
    spec = {"query_weight": 0.5, "score_mode": "avg"}
    response = rescorer(client, **spec).search("docs", BODY, from_=1, size=2, apply="server")
    first, second = client.calls
    assert first["body"]["size"] == 6
    assert second["preference"] == first["preference"]
    assert second["body"]["from"] == 1
    assert second["body"]["size"] == 2
    (ours,) = second["body"]["rescore"]
    assert ours["window_size"] == 3 + 1 + 2
    assert ours["query"]["score_mode"] == "avg"
    boosts = {
        c["constant_score"]["filter"]["ids"]["values"][0]: c["constant_score"]["boost"]
        for c in ours["query"]["rescore_query"]["bool"]["should"]
    }
    assert boosts.keys() == {"d0", "d1", "d2"}
    assert (boosts["d0"], boosts["d1"]) == (float(np.float32(2 / 3)), float(np.float32(1 / 3)))
    # d2's value 1 scores (4 * 0.5 + 1) / 2 = 1.5, as d3 past the window does (3 * 0.5): it
    # is raised the least that puts it above d3, where client-side rescore lists it
    spec_ = RescoreSpec(window_size=3, **spec)  # type: ignore[arg-type]
    below = float(np.nextafter(np.float32(boosts["d2"]), np.float32(0)))
    assert spec_.combine(4.0, below) == 1.5 < spec_.combine(4.0, boosts["d2"])
    # The scripted cluster ignores the rescore: the response is its page, annotated.
    assert ids(response) == ["d1", "d2"]
    assert [h["_rank"] for h in response["hits"]["hits"]] == [
        {"final": 1, "first_pass": 1, "engine": 2},
        {"final": 2, "first_pass": 2, "engine": 0},
    ]
    assert response["took"] == 14 + response["llmrank"]["took_ms"]
    assert response["llmrank"]["mode"] == "server"


class ShardedCluster(ScriptedClient):
    """Searches as an OpenSearch cluster of 3 shards does, rescore included.

    Hit ``i`` (``hits`` in first-pass order) lives on shard ``i % 3`` as document ``n - i``.
    Each shard takes its top ``max(from + size, window sizes)`` hits, applies each rescore to
    its own top ``window_size`` (the query as :func:`window_query` builds it) and orders equal
    scores by document; the merge orders them by shard, then document.
    """

    def answer(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(copy.deepcopy(kwargs))
        body = kwargs["body"]
        start, size = body.get("from", 0), body.get("size", 10)
        rescorers = body.get("rescore", [])
        depth = max([start + size, *(r["window_size"] for r in rescorers)])
        located = [(hit["_score"], len(self.hits) - i, hit) for i, hit in enumerate(self.hits)]
        merged = []
        for shard in range(3):
            scored = sorted(located[shard::3], key=lambda x: (-x[0], x[1]))[:depth]
            for rescorer_ in rescorers:
                scored = self._rescore(scored, rescorer_)
            merged += [(score, shard, doc, hit) for score, doc, hit in scored]
        page = sorted(merged, key=lambda x: (-x[0], x[1], x[2]))[start : start + size]
        hits = [{**copy.deepcopy(hit), "_score": score} for score, _, _, hit in page]
        return {"took": 1, "hits": {"hits": hits}}

    @staticmethod
    def _rescore(
        scored: list[tuple[float, int, dict[str, Any]]], rescorer_: dict[str, Any]
    ) -> list[tuple[float, int, dict[str, Any]]]:
        query, spec = rescorer_["query"], body_rescore_spec(rescorer_)
        top = query["rescore_query"]["bool"]
        groups = [top] if "filter" in top else [group["bool"] for group in top["should"]]
        boosts = {
            (group["filter"][0]["term"]["_index"], clause["filter"]["ids"]["values"][0]): clause[
                "boost"
            ]
            for group in groups
            for clause in (should["constant_score"] for should in group["should"])
        }
        matched = [
            boosts.get((hit["_index"], hit["_id"])) for _, _, hit in scored[: spec.window_size]
        ]
        rescored = [
            (spec.combine(score, matched[rank] if rank < len(matched) else None), doc, hit)
            for rank, (score, doc, hit) in enumerate(scored)
        ]
        return sorted(rescored, key=lambda x: (-x[0], x[1]))


def scored(response: dict[str, Any]) -> list[tuple[str, np.float32]]:
    """``(_id, _score)`` of each hit, the score as a Java float."""
    return [(hit["_id"], np.float32(hit["_score"])) for hit in response["hits"]["hits"]]


SETTINGS = [
    {},
    {"score_mode": "avg"},
    {"score_mode": "max", "score_transform": "minmax"},
    {"score_transform": "minmax"},
    {"query_weight": 1.0, "score_transform": "minmax"},
    {"query_weight": 0.5, "score_mode": "min"},
    {"query_weight": 0.5, "score_mode": "min", "score_transform": "minmax"},
    {"query_weight": 0.5, "score_mode": "max", "score_transform": "minmax"},
    {"query_weight": 0.5, "rescore_query_weight": 3.0, "score_mode": "multiply"},
]
"""Rescorer settings over :func:`twelve_hits`, a window of 5 and tied engine logits."""


def twelve_hits() -> list[dict[str, Any]]:
    """Twelve first-pass hits whose passage lengths make the engine reorder the window."""
    return [
        {
            "_index": "docs",
            "_id": f"d{i}",
            "_score": 12.0 - i,
            "_source": {"text": "x" * (1 + i * 7 % 12)},
        }
        for i in range(12)
    ]


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_server_applied_equals_client_side_on_every_page(kwargs: dict[str, Any]) -> None:
    """Both modes page through one order, whatever the cluster does with equal scores."""
    hits = twelve_hits()
    stage = LlmRescorer(ShardedCluster(hits), ShortestFirst(tied=True), window_size=5, **kwargs)
    full = scored(stage.search("docs", BODY, size=12))
    assert sorted(docid for docid, _ in full) == sorted(hit["_id"] for hit in hits)
    for start in range(0, 12, 3):
        client_side = scored(stage.search("docs", BODY, from_=start, size=3))
        server_side = scored(stage.search("docs", BODY, from_=start, size=3, apply="server"))
        assert server_side == client_side == full[start : start + 3]
    if not kwargs.get("query_weight"):
        past = [docid for docid, _ in full if int(docid[1:]) >= 5]
        assert past == [f"d{i}" for i in range(5, 12)]


def tying_stage(client_class: type[ScriptedClient]) -> LlmRescorer:
    """A rescorer under which d3 (9 + 1) ties d0 (10 + 0); on one shard, a cluster would
    list d3 first (its doc)."""
    lengths, scores = [12, 2, 8, 1, 5], [10.0, 9.75, 9.5, 9.0, 8.0]
    hits = [
        {"_index": "docs", "_id": f"d{i}", "_score": score, "_source": {"text": "x" * length}}
        for i, (length, score) in enumerate(zip(lengths, scores, strict=True))
    ]
    return LlmRescorer(
        client_class(hits),
        ShortestFirst(tied=True),
        window_size=4,
        query_weight=1.0,
        score_transform="minmax",
    )


def test_both_modes_keep_first_pass_order_where_final_scores_tie() -> None:
    stage = tying_stage(ShardedCluster)
    for apply in ("client", "server"):
        response = stage.search("docs", BODY, size=5, apply=apply)
        assert ids(response) == ["d1", "d0", "d3", "d2", "d4"], apply
    # d0's value is raised by float steps, so the cluster cannot list them the other way
    (_, raised), (_, kept) = scored(response)[1:3]
    assert 10.0 < raised < 10.00001
    assert kept == 10.0


def test_server_applied_failure_raises_or_fails_open() -> None:
    down = OsConnectionError("N/A", "refused", Exception("refused"))
    with pytest.raises(SearchFailedError, match="server_rescore") as caught:
        rescorer(ScriptedClient(make_hits(), [None, down])).search("docs", BODY, apply="server")
    assert caught.value.stage == "server_rescore"

    client = ScriptedClient(make_hits(), [None, down])
    response = rescorer(client, on_error="fail_open").search("docs", BODY, size=4, apply="server")
    assert ids(response) == ["d0", "d1", "d2", "d3"]
    assert response["llmrank"]["fail_open"] is True
    assert response["llmrank"]["reason"].startswith("server_rescore search failed: ConnectionError")
    assert len(client.calls) == 2

    # a 400 is the request's fault (index.max_rescore_window, say): raised even failing open
    refused = OsRequestError(400, "search_phase_execution_exception", "Rescore window too large")
    client = ScriptedClient(make_hits(), [None, refused])
    with pytest.raises(RescoreRequestError, match="the cluster refused the server-applied"):
        rescorer(client, on_error="fail_open").search("docs", BODY, size=4, apply="server")


def test_client_result_matches_the_arithmetic() -> None:
    response = rescorer(ScriptedClient(make_hits()), query_weight=0.25, score_mode="min").search(
        "docs", BODY, size=6
    )
    values = [float(np.float32(v)) for v in (2 / 3, 1 / 3, 1.0)]
    expected = rescore(SCORES, values, RescoreSpec(3, 0.25, 1.0, "min"))
    assert ids(response) == [f"d{h.position}" for h in expected]
    assert ids(response) == ["d2", "d3", "d0", "d4", "d1", "d5"]  # worked out by hand


# explain: true ------------------------------------------------------------------------------

EXPLAIN = {**BODY, "explain": True}
COMBINED = {
    "sum of:": lambda a, b: a + b,
    "product of:": lambda a, b: a * b,
    "avg of:": lambda a, b: (a + b) / np.float32(2),
    "max of:": max,
    "min of:": min,
}
"""OpenSearch's descriptions of the nodes that combine their two details, and how."""


def leaf(value: float, description: str) -> dict[str, Any]:
    return {"value": value, "description": description, "details": []}


def check_adds_up(node: dict[str, Any]) -> None:
    """Every combining node's value is its details' combination, as Java floats."""
    if node["description"] in COMBINED:
        first, second = (np.float32(detail["value"]) for detail in node["details"])
        assert np.float32(node["value"]) == COMBINED[node["description"]](first, second), node
    for detail in node["details"]:
        check_adds_up(detail)


def test_explain_explains_each_final_score_as_opensearch_does() -> None:
    stage = rescorer(ScriptedClient(make_hits()), query_weight=0.5, model_name="tiny")
    hits = stage.search("docs", EXPLAIN, size=4)["hits"]["hits"]
    assert ids({"hits": {"hits": hits}}) == ["d0", "d2", "d1", "d3"]
    # d0: 6 * 0.5 + 2/3, the engine's second (rank 1) of 3
    assert hits[0]["_explanation"] == {
        "value": hits[0]["_score"],
        "description": "sum of:",
        "details": [
            {
                "value": 3.0,
                "description": "product of:",
                "details": [
                    first_pass_explanation(make_hits()[0]),
                    leaf(0.5, "primaryWeight"),
                ],
            },
            {
                "value": 0.6666667,
                "description": "product of:",
                "details": [
                    leaf(
                        0.6666667,
                        "llmrank 'rank' value of engine rank 1 (0-based) of 3, model tiny",
                    ),
                    leaf(1.0, "secondaryWeight"),
                ],
            },
        ],
    }
    assert hits[0]["_score"] == 3.6666667
    # d3, past the window: its first-pass score weighted, as OpenSearch explains it
    assert hits[3]["_explanation"] == {
        "value": 1.5,
        "description": "product of:",
        "details": [first_pass_explanation(make_hits()[3]), leaf(0.5, "primaryWeight")],
    }
    assert hits[3]["_score"] == 1.5


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_explanations_add_up_to_the_score_on_every_page(kwargs: dict[str, Any]) -> None:
    """Whatever the mode, transform and tie-breaking: the explanation's value is ``_score``,
    each combination adds up, and only the window's hits are explained by the engine."""
    stage = LlmRescorer(
        ScriptedClient(twelve_hits()), ShortestFirst(tied=True), window_size=5, **kwargs
    )
    mode = {"total": "sum", "multiply": "product"}.get(kwargs.get("score_mode", "total"))
    for start in range(0, 12, 4):
        for hit in stage.search("docs", EXPLAIN, from_=start, size=4)["hits"]["hits"]:
            explanation = hit["_explanation"]
            assert explanation["value"] == hit["_score"]
            check_adds_up(explanation)
            primary = (
                explanation["details"][0] if hit["_rank"]["engine"] is not None else explanation
            )
            assert primary["description"] == "product of:"
            first = {"_id": hit["_id"], "_score": hit["_first_pass_score"]}
            assert primary["details"][0] == first_pass_explanation(first)
            assert primary["details"][1]["description"] == "primaryWeight"
            if hit["_rank"]["engine"] is not None:
                expected = f"{mode or kwargs['score_mode']} of:"
                assert explanation["description"] == expected
                assert explanation["details"][1]["details"][1]["description"] == "secondaryWeight"


def test_a_value_moved_by_tie_breaking_shows_the_move() -> None:
    # d0's minmax value 0 is raised by float steps to keep it above d3 (see tying_stage)
    stage = tying_stage(ScriptedClient)
    response = stage.search("docs", EXPLAIN, size=5)
    d0 = response["hits"]["hits"][1]
    assert d0["_id"] == "d0"
    explanation = d0["_explanation"]
    check_adds_up(explanation)
    assert explanation["value"] == d0["_score"] > 10.0
    moved = explanation["details"][1]["details"][0]
    assert 0.0 < moved["value"] < 1e-5
    assert moved["description"].startswith("moved by tie-breaking")
    assert moved["details"] == [leaf(0.0, "llmrank 'minmax' value of engine rank 3 (0-based) of 4")]
    untouched = response["hits"]["hits"][2]["_explanation"]["details"][1]["details"][0]
    assert untouched == leaf(1.0, "llmrank 'minmax' value of engine rank 0 (0-based) of 4")


def test_a_hit_ranked_without_text_says_so() -> None:
    texts = [TEXTS[0], None, TEXTS[2], None]
    response = rescorer(ScriptedClient(make_hits(texts)), missing_text="empty").search(
        "docs", EXPLAIN, size=4
    )
    (d1,) = (hit for hit in response["hits"]["hits"] if hit["_id"] == "d1")
    engine = d1["_explanation"]["details"][1]["details"][0]
    assert engine["description"].endswith("of 3, ranked without its text fields")
    assert d1["_explanation"]["value"] == d1["_score"]


def test_hits_nothing_rescored_keep_the_clusters_explanation() -> None:
    """Failing open the page is the first pass's; server-applied, the cluster explains it."""
    failing = rescorer(
        ScriptedClient(make_hits()), ShortestFirst(RuntimeError("boom")), on_error="fail_open"
    )
    for response in (
        failing.search("docs", EXPLAIN, size=4),
        rescorer(ScriptedClient(make_hits())).search("docs", EXPLAIN, size=4, apply="server"),
    ):
        for hit in response["hits"]["hits"]:
            assert hit["_explanation"] == first_pass_explanation(hit)
    plain = rescorer(ScriptedClient(make_hits())).search("docs", BODY, size=4)
    assert not any("_explanation" in hit for hit in plain["hits"]["hits"])


async def test_async_rescorer_matches_the_sync_one() -> None:
    sync = rescorer(ScriptedClient(make_hits()), query_weight=0.5).search("docs", BODY, size=5)
    stage = AsyncLlmRescorer(
        AsyncScriptedClient(make_hits()), ShortestFirst(), window_size=3, query_weight=0.5
    )
    response = await stage.search("docs", BODY, size=5)
    assert response["hits"] == sync["hits"]

    down = OsConnectionError("N/A", "refused", Exception("refused"))
    failing = AsyncLlmRescorer(
        AsyncScriptedClient(make_hits(), [None, down]), ShortestFirst(), on_error="fail_open"
    )
    opened = await failing.search("docs", BODY, apply="server")
    assert opened["llmrank"]["fail_open"] is True
    with pytest.raises(SearchFailedError):
        await AsyncLlmRescorer(AsyncScriptedClient(make_hits(), [down]), ShortestFirst()).search(
            "docs", BODY
        )


async def test_async_searches_wait_in_the_rescorers_thread_and_timeouts_drop_them() -> None:
    class Slow(ShortestFirst):
        def rerank(self, query: str, passages: Sequence[str], **kwargs: Any) -> Ranking:
            time.sleep(0.2)
            return super().rerank(query, passages, **kwargs)

    engine = Slow()
    stage = AsyncLlmRescorer(AsyncScriptedClient(make_hits()), engine, window_size=3)
    searches = [
        asyncio.ensure_future(asyncio.wait_for(stage.search("docs", BODY), 0.3)) for _ in range(8)
    ]
    await asyncio.sleep(0.05)  # every search is waiting for the engine now
    started = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, lambda: None)
    assert time.monotonic() - started < 0.15, "the loop's default executor was held"
    outcomes = await asyncio.gather(*searches, return_exceptions=True)
    await asyncio.sleep(0.5)  # what still ran after the timeouts
    assert sum(isinstance(o, TimeoutError) for o in outcomes) >= 6
    assert len(engine.calls) <= 2, "searches that timed out still reached the engine"


REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


async def test_the_engine_sees_the_searching_tasks_context() -> None:
    seen: list[str | None] = []

    class Reading(ShortestFirst):
        def rerank(self, query: str, passages: Sequence[str], **kwargs: Any) -> Ranking:
            seen.append(REQUEST_ID.get())
            return super().rerank(query, passages, **kwargs)

    stage = AsyncLlmRescorer(AsyncScriptedClient(make_hits()), Reading(), window_size=3)
    REQUEST_ID.set("req-42")
    await stage.search("docs", BODY)
    assert seen == ["req-42"]
