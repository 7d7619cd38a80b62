"""LlmRescorer against an OpenSearch-compatible server: DL19 quality, client-side arithmetic
against the cluster's own rescore on 3 shards, pages, and faults."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opensearchpy import AsyncOpenSearch, OpenSearch
from osmem_server import OsmemClone, OsmemServer

from haystack_llmrank.data import read_qrels
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from opensearch_ltr import AsyncLlmRescorer, LlmRescorer
from opensearch_ltr.errors import MissingTextError, RescoreRequestError, SearchFailedError
from opensearch_ltr.rescore import SCORE_MODES

pytestmark = pytest.mark.integration

QUERY_IDS = ("19335", "47923")
"""DL19 queries used where a few suffice."""


class RecordingEngine:
    """Wraps an engine: remembers every call and answers repeated calls from memory."""

    def __init__(self, engine: Reranker, before: Any = None) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.before = before
        self.calls: list[tuple[str, list[str], Ranking]] = []
        self._memory: dict[tuple[str, tuple[str, ...], tuple[float, ...] | None], Ranking] = {}

    def rerank(self, query: str, passages: Sequence[str], **kwargs: Any) -> Ranking:
        if self.before is not None:
            self.before()
        scores = kwargs.get("first_stage_scores")
        key = (query, tuple(passages), None if scores is None else tuple(scores))
        if key not in self._memory:
            self._memory[key] = self.engine.rerank(query, passages, **kwargs)
        self.calls.append((query, list(passages), self._memory[key]))
        return self._memory[key]


def match(query: str) -> dict[str, Any]:
    return {"query": {"match": {"text": query}}}


def ids(response: dict[str, Any]) -> list[str]:
    return [hit["_id"] for hit in response["hits"]["hits"]]


def scored(response: dict[str, Any]) -> list[tuple[str, np.float32]]:
    """``(_id, _score)`` of each hit, the score as the Java float the cluster computed."""
    return [(hit["_id"], np.float32(hit["_score"])) for hit in response["hits"]["hits"]]


def ranked_run(responses: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """A run whose scores follow each response's order exactly (trec_eval re-sorts by score)."""
    run = {}
    for qid, response in responses.items():
        hits = ids(response)
        run[qid] = {docid: float(len(hits) - rank) for rank, docid in enumerate(hits)}
    return run


@pytest.fixture(scope="module")
def queries(dl19_queries: list[dict[str, Any]]) -> dict[str, str]:
    return {q["qid"]: q["query"] for q in dl19_queries}


@pytest.fixture(scope="module")
def tiny_engine(smollm2_tokenizer: Any, tiny_scorer: Any) -> RecordingEngine:
    """The tiny random model, reading 40 words a passage to stay fast on every DL19 query."""
    return RecordingEngine(
        Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, max_passage_words=40)
    )


@pytest.fixture(params=["osmem", pytest.param("cluster", marks=pytest.mark.cluster)])
def backend(request: pytest.FixtureRequest) -> tuple[OpenSearch, str]:
    """(client, DL19 index): the session osmem-server, or the cluster at OPENSEARCH_URL."""
    if request.param == "osmem":
        return request.getfixturevalue("opensearch_client"), request.getfixturevalue("dl19_index")
    return request.getfixturevalue("cluster_client"), request.getfixturevalue("cluster_dl19_index")


# Quality on DL19 ------------------------------------------------------------------------------


def test_dl19_all_queries_bm25_and_tiny_engine(
    opensearch_client: OpenSearch,
    dl19_index: str,
    dl19_dir: Path,
    dl19_passages: dict[str, str],
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
) -> None:
    """The engine permutes exactly the window; the rest keeps BM25 order; nDCG@10 of both."""
    stage = LlmRescorer(opensearch_client, tiny_engine, window_size=10)
    bm25, reranked = {}, {}
    for qid, query in queries.items():
        bm25[qid] = opensearch_client.search(index=dl19_index, body={**match(query), "size": 100})
        reranked[qid] = stage.search(dl19_index, match(query), size=100)
        first, final = ids(bm25[qid]), ids(reranked[qid])
        assert final[10:] == first[10:]
        query_sent, passages, ranking = tiny_engine.calls[-1]
        assert query_sent == query
        assert passages == [dl19_passages[docid] for docid in first[:10]]
        assert final[:10] == [first[i] for i in ranking.order]
        assert [hit["_rank"]["engine"] for hit in reranked[qid]["hits"]["hits"][:10]] == list(
            range(10)
        )

    qrels = read_qrels(dl19_dir / "qrels.txt")
    before = evaluate(ranked_run(bm25), qrels, ["ndcg@10", "recall@10"])
    after = evaluate(ranked_run(reranked), qrels, ["ndcg@10", "recall@10"])
    assert len(before.per_query) == len(after.per_query) == 43
    for qid in queries:
        assert after.per_query[qid]["recall@10"] == before.per_query[qid]["recall@10"]
    assert any(after.per_query[q]["ndcg@10"] != before.per_query[q]["ndcg@10"] for q in queries)
    # BM25 over the candidate pool alone, with the server's BM25 and per-shard statistics:
    # 0.313 on osmem-server 0.1.6 (the published 0.5058 ranks the full MS MARCO corpus).
    assert 0.25 < before.mean["ndcg@10"] < 0.6


def test_dl19_real_model_on_two_queries(
    opensearch_client: OpenSearch,
    dl19_index: str,
    dl19_dir: Path,
    dl19_passages: dict[str, str],
    queries: dict[str, str],
    smollm2_reranker: Reranker,
) -> None:
    """SmolLM2 through the rescorer: the window it reranks is the engine's own order."""
    engine = RecordingEngine(smollm2_reranker)
    stage = LlmRescorer(opensearch_client, engine, window_size=20)
    bm25, reranked = {}, {}
    for qid in QUERY_IDS:
        body = match(queries[qid])
        bm25[qid] = opensearch_client.search(index=dl19_index, body={**body, "size": 20})
        reranked[qid] = stage.search(dl19_index, body, size=20)
        _, passages, ranking = engine.calls[-1]
        first = ids(bm25[qid])
        assert passages == [dl19_passages[docid] for docid in first]
        assert ids(reranked[qid]) == [first[i] for i in ranking.order]
        assert "SmolLM2" in reranked[qid]["llmrank"]["model"]
    qrels = read_qrels(dl19_dir / "qrels.txt")
    before = evaluate(ranked_run(bm25), qrels, ["ndcg@10"]).mean["ndcg@10"]
    after = evaluate(ranked_run(reranked), qrels, ["ndcg@10"]).mean["ndcg@10"]
    # 0.1893 -> 0.2145 with the embedded SmolLM2 on the torch backend.
    assert after != before
    assert after > 0.5 * before


# Client-side arithmetic against the cluster's own rescore ---------------------------------------

PAGES = ((0, 10), (0, 35), (5, 10), (12, 9), (30, 10))
MODES = [
    (mode, transform, weight)
    for mode, transform in [(mode, "rank") for mode in SCORE_MODES]
    + [("total", "minmax"), ("avg", "minmax"), ("max", "minmax"), ("multiply", "minmax")]
    for weight in (0.0, 0.7)
    if weight or mode not in ("min", "multiply")  # refused: every hit would score 0
]


@pytest.mark.parametrize(("mode", "transform", "query_weight"), MODES)
def test_client_side_equals_server_applied(
    backend: tuple[OpenSearch, str],
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
    mode: str,
    transform: str,
    query_weight: float,
) -> None:
    """Same hits, same scores to the bit, on every page, in every score mode, on 3 shards."""
    client, index = backend
    stage = LlmRescorer(
        client,
        tiny_engine,
        window_size=10,
        query_weight=query_weight,
        rescore_query_weight=1.3,
        score_mode=mode,  # type: ignore[arg-type]
        score_transform=transform,  # type: ignore[arg-type]
    )
    for qid in QUERY_IDS:
        body = match(queries[qid])
        full = stage.search(index, body, size=60)
        assert scored(stage.search(index, body, size=60, apply="server")) == scored(full)
        for start, size in PAGES:
            client_side = stage.search(index, body, from_=start, size=size)
            server_side = stage.search(index, body, from_=start, size=size, apply="server")
            assert scored(client_side) == scored(server_side) == scored(full)[start : start + size]
            assert server_side["llmrank"]["mode"] == "server"


def test_defaults_page_alike_in_both_modes(
    backend: tuple[OpenSearch, str],
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
) -> None:
    """Default settings (query_weight 0, window 20), 40 hits 10 at a time, 4 queries: no hit
    twice or lost, the same scores in both modes, and the rest in first-pass order."""
    client, index = backend
    stage = LlmRescorer(client, tiny_engine)
    for qid in list(queries)[:4]:
        body = match(queries[qid])
        first = ids(client.search(index=index, body={**body, "size": 120}))
        full = stage.search(index, body, size=120)
        assert [docid for docid in ids(full) if docid not in first[:20]] == first[20:]
        for apply in ("client", "server"):
            pages = [
                scored(stage.search(index, body, from_=start, size=10, apply=apply))
                for start in range(0, 40, 10)
            ]
            assert [hit for page in pages for hit in page] == scored(full)[:40]


def test_filter_path(
    opensearch_client: OpenSearch,
    dl19_index: str,
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
) -> None:
    """One that keeps what rescoring reads works in both modes, even with no hits (the
    cluster then drops ``hits.hits``); one that drops it is refused before any search."""
    keep = "took,hits.hits._index,hits.hits._id,hits.hits._score,hits.hits._source.text"
    stage = LlmRescorer(opensearch_client, tiny_engine, window_size=10, on_error="fail_open")
    body = match(queries[QUERY_IDS[0]])
    plain = stage.search(dl19_index, body, size=15)
    for apply in ("client", "server"):
        filtered = stage.search(dl19_index, body, size=15, apply=apply, filter_path=keep)
        assert scored(filtered) == scored(plain)
        assert "total" not in filtered["hits"]
        nothing = stage.search(dl19_index, match("zzzzqqqq"), apply=apply, filter_path=keep)
        assert nothing["hits"]["hits"] == []
        for dropping in ("took", "hits.hits._id"):
            with pytest.raises(RescoreRequestError, match=f"filter_path '{dropping}' drops"):
                stage.search(dl19_index, body, apply=apply, filter_path=dropping)


def test_window_hits_can_fall_below_hits_past_the_window(
    opensearch_client: OpenSearch,
    dl19_index: str,
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
) -> None:
    """The case a per-shard or shallow fetch gets wrong is really exercised above."""
    stage = LlmRescorer(
        opensearch_client,
        tiny_engine,
        window_size=10,
        query_weight=0.7,
        rescore_query_weight=1.3,
        score_mode="multiply",
    )
    hits = stage.search(dl19_index, match(queries[QUERY_IDS[0]]), size=60)["hits"]["hits"]
    finals = [hit["_rank"]["final"] for hit in hits if hit["_rank"]["engine"] is not None]
    assert max(finals) >= 10


def test_opensearch_window_size_is_per_shard(
    backend: tuple[OpenSearch, str], queries: dict[str, str]
) -> None:
    """A plain rescore with window_size 5 rescores 5 hits on each shard (3 here)."""
    client, index = backend
    shards = int(
        client.indices.get_settings(index=index)[index]["settings"]["index"]["number_of_shards"]
    )
    assert shards == 3
    rescore = {"window_size": 5, "query": {"rescore_query": {"match_all": {}}, "query_weight": 0}}
    body = {**match(queries[QUERY_IDS[0]]), "size": 50, "rescore": rescore}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    assert sum(hit["_score"] > 0 for hit in hits) == 5 * shards


def test_server_applied_keeps_totals_aggregations_and_highlights(
    opensearch_client: OpenSearch,
    dl19_index: str,
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
) -> None:
    body = {
        **match(queries[QUERY_IDS[0]]),
        "aggs": {"with_the": {"filter": {"match": {"text": "the"}}}},
        "highlight": {"fields": {"text": {}}},
    }
    plain = opensearch_client.search(index=dl19_index, body=body)
    response = LlmRescorer(opensearch_client, tiny_engine, window_size=10).search(
        dl19_index, body, apply="server"
    )
    assert response["hits"]["total"] == plain["hits"]["total"]
    assert response["aggregations"] == plain["aggregations"]
    assert all("<em>" in " ".join(hit["highlight"]["text"]) for hit in response["hits"]["hits"])
    assert sorted(ids(response)) == sorted(ids(plain))


async def test_async_rescorer_against_the_server(
    osmem_session_clone: OsmemClone,
    opensearch_client: OpenSearch,
    dl19_index: str,
    queries: dict[str, str],
    tiny_engine: RecordingEngine,
) -> None:
    sync = LlmRescorer(opensearch_client, tiny_engine, window_size=10)
    client = AsyncOpenSearch(hosts=[osmem_session_clone.url])
    try:
        stage = AsyncLlmRescorer(client, tiny_engine, window_size=10)
        body = match(queries[QUERY_IDS[1]])
        for apply in ("client", "server"):
            response = await stage.search(dl19_index, body, size=15, apply=apply)
            expected = sync.search(dl19_index, body, size=15, apply=apply)
            assert scored(response) == scored(expected)
    finally:
        await client.close()


# Faults ---------------------------------------------------------------------------------------

FAULT_DOCS = {
    "with-text": {"title": "Cats", "text": "cats purr when they are content"},
    "title-only": {"title": "cats and more cats"},
    "other-text": {"text": "a cat sleeps sixteen hours a day, cats do"},
}
CATS = {"query": {"multi_match": {"query": "cats", "fields": ["title", "text"]}}}


@pytest.fixture(scope="module")
def fault_index(opensearch_client: OpenSearch) -> str:
    opensearch_client.indices.create(index="llmrank-faults")
    for docid, source in FAULT_DOCS.items():
        opensearch_client.index(index="llmrank-faults", id=docid, body=source, refresh=True)
    return "llmrank-faults"


def test_missing_index_raises_whatever_on_error(
    opensearch_client: OpenSearch, tiny_engine: RecordingEngine
) -> None:
    for on_error in ("raise", "fail_open"):
        stage = LlmRescorer(opensearch_client, tiny_engine, on_error=on_error)
        with pytest.raises(SearchFailedError, match="index_not_found_exception") as caught:
            stage.search("no-such-index", CATS)
        assert caught.value.stage == "first_pass"


def test_hit_without_text_field(
    opensearch_client: OpenSearch, fault_index: str, tiny_engine: RecordingEngine
) -> None:
    with pytest.raises(MissingTextError, match="llmrank-faults/title-only"):
        LlmRescorer(opensearch_client, tiny_engine).search(fault_index, CATS)

    flagged = LlmRescorer(
        opensearch_client, tiny_engine, missing_text="empty", title_field="title"
    ).search(fault_index, CATS)
    assert sorted(ids(flagged)) == sorted(FAULT_DOCS)
    assert flagged["llmrank"]["missing_text"] == [{"_index": fault_index, "_id": "title-only"}]
    assert "cats and more cats" in tiny_engine.calls[-1][1]

    opened = LlmRescorer(opensearch_client, tiny_engine, on_error="fail_open").search(
        fault_index, CATS
    )
    plain = opensearch_client.search(index=fault_index, body=CATS)
    assert ids(opened) == ids(plain)
    assert opened["llmrank"]["fail_open"] is True
    assert "title-only" in opened["llmrank"]["reason"]


def test_text_of_a_nested_field(
    opensearch_client: OpenSearch, tiny_engine: RecordingEngine
) -> None:
    index = "llmrank-nested"
    opensearch_client.indices.create(
        index=index,
        body={"mappings": {"properties": {"paragraphs": {"type": "nested"}}}},
    )
    docs = {
        "two": [{"text": "cats purr"}, {"text": "when they are content"}],
        "one": [{"text": "a cat sleeps sixteen hours a day, cats do"}],
    }
    for docid, paragraphs in docs.items():
        body = {"title": "cats", "paragraphs": paragraphs}
        opensearch_client.index(index=index, id=docid, body=body, refresh=True)
    response = LlmRescorer(opensearch_client, tiny_engine, text_fields=["paragraphs.text"]).search(
        index, {"query": {"match": {"title": "cats"}}}
    )
    assert sorted(ids(response)) == sorted(docs)
    assert sorted(tiny_engine.calls[-1][1]) == sorted(
        ["cats purr\nwhen they are content", "a cat sleeps sixteen hours a day, cats do"]
    )


@pytest.fixture
def small_server(
    disposable_server: OsmemServer,
    dl19_passages: dict[str, str],
    make_passage_index: Callable[[OpenSearch, str, dict[str, str], int], None],
) -> Iterator[tuple[OsmemServer, OpenSearch]]:
    """A disposable server holding 300 DL19 passages; resumed if a test paused it."""
    client = OpenSearch(hosts=[disposable_server.url], timeout=1, max_retries=0)
    make_passage_index(client, "passages", dict(list(dl19_passages.items())[:300]), 1)
    yield disposable_server, client
    if disposable_server.process.poll() is None:
        os.kill(disposable_server.process.pid, signal.SIGCONT)


def test_server_stopped_mid_run(
    small_server: tuple[OsmemServer, OpenSearch], tiny_reranker: Reranker
) -> None:
    """The server dies while the engine runs: only a server-applied search notices."""
    server, client = small_server
    body = match("what is the daily life of a cat")
    engine = RecordingEngine(tiny_reranker, before=server.close)
    with pytest.raises(SearchFailedError, match="server_rescore search failed: ConnectionError"):
        LlmRescorer(client, engine, window_size=5).search("passages", body, apply="server")
    assert len(engine.calls) == 1
    # The server is gone: the next search fails in its first pass, even failing open.
    with pytest.raises(SearchFailedError, match="first_pass search failed: ConnectionError"):
        LlmRescorer(client, engine, on_error="fail_open").search("passages", body)


def test_server_stopped_mid_run_fails_open(
    small_server: tuple[OsmemServer, OpenSearch], tiny_reranker: Reranker
) -> None:
    server, client = small_server
    body = match("what is the daily life of a cat")
    first_pass = client.search(index="passages", body=body)
    engine = RecordingEngine(tiny_reranker, before=server.close)
    opened = LlmRescorer(client, engine, window_size=5, on_error="fail_open").search(
        "passages", body, apply="server"
    )
    assert ids(opened) == ids(first_pass)
    assert opened["llmrank"]["fail_open"] is True
    assert opened["llmrank"]["reason"].startswith("server_rescore search failed: ConnectionError")


def test_client_side_finishes_when_the_server_stops_mid_run(
    small_server: tuple[OsmemServer, OpenSearch], tiny_reranker: Reranker
) -> None:
    server, client = small_server
    engine = RecordingEngine(tiny_reranker, before=server.close)
    response = LlmRescorer(client, engine, window_size=5).search("passages", match("cat sleep"))
    assert response["llmrank"]["reranked"] == 5
    assert response["llmrank"]["fail_open"] is False


def test_timeouts(small_server: tuple[OsmemServer, OpenSearch], tiny_reranker: Reranker) -> None:
    """A server that stops answering: the first pass raises, a server-applied search fails open."""
    server, client = small_server
    body = match("what is the daily life of a cat")
    first_pass = client.search(index="passages", body=body)
    pause = lambda: os.kill(server.process.pid, signal.SIGSTOP)  # noqa: E731
    engine = RecordingEngine(tiny_reranker, before=pause)
    opened = LlmRescorer(client, engine, window_size=5, on_error="fail_open").search(
        "passages", body, apply="server"
    )
    assert ids(opened) == ids(first_pass)
    assert opened["llmrank"]["reason"].startswith("server_rescore search failed: ConnectionTimeout")
    with pytest.raises(SearchFailedError, match="first_pass search failed: ConnectionTimeout"):
        LlmRescorer(client, engine, on_error="fail_open").search("passages", body)
