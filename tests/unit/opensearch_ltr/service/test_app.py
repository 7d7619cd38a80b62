"""The rerank service over HTTP: contract, auth, limits, timeouts, batching, shutdown."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from haystack_llmrank.errors import NonFiniteLogitsError, PromptTooLongError
from haystack_llmrank.labels import ALPHABETIC_LABELS, LabelIds, resolve_label_ids
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import Tournament
from opensearch_ltr.service import ServiceConfig, create_app, run_service
from opensearch_ltr.service import batcher as batcher_module
from opensearch_ltr.service.app import BATCHER, key_matches, presented_key
from opensearch_ltr.service.batcher import (
    RerankBatcher,
    RerankEngine,
    ServiceUnavailableError,
    WorkerState,
)

KEY = "secret-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
DOCS: list[str | dict[str, str]] = [
    "The Eiffel Tower is in Paris.",
    {"text": "Berlin is the capital of Germany."},
    "Bananas are rich in potassium.",
    "Paris is the capital of France.",
    "The Seine flows through Paris.",
    "Mount Everest is the highest mountain.",
    "France borders Spain.",
]
TEXTS = [doc if isinstance(doc, str) else doc["text"] for doc in DOCS]


class RecordingEngine:
    """Wraps an engine: records each ``rerank_many`` call's size; calls wait while the gate
    is closed (it starts open, so the warm-up passes)."""

    def __init__(self, inner: RerankEngine) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.depths: list[list[int | None]] = []
        self.gate = threading.Event()
        self.gate.set()

    def check_request(self, query: str, passages: Sequence[str]) -> None:
        self.inner.check_request(query, passages)

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        top_k: Sequence[int | None] | None = None,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        self.calls.append(len(requests))
        self.depths.append(list(top_k or [None] * len(requests)))
        if not self.gate.wait(10):
            raise RuntimeError("gate never opened")
        return self.inner.rerank_many(requests, top_k=top_k, on_window=on_window)


class FakeEngine:
    """Ranks by a fixed rule: reversed input order with given logits; raises on marked queries
    (its check refuses "too long" ones)."""

    def __init__(self, logits: Sequence[float] | None = None) -> None:
        self.logits = logits

    def check_request(self, query: str, passages: Sequence[str]) -> None:
        if "too long" in query:
            raise PromptTooLongError("the query alone exceeds the prompt budget")

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        top_k: Sequence[int | None] | None = None,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        rankings = []
        for query, passages in requests:
            self.check_request(query, passages)
            if "crash" in query:
                raise RuntimeError("device lost")
            if "stuck" in query:
                raise TimeoutError("the device did not answer")
            if "overflow" in query:
                raise NonFiniteLogitsError("label logits are NaN (fp16 overflow)")
            n = len(passages)
            logits = self.logits or [float(n - r) for r in range(n)]
            rankings.append(Ranking.from_logits(list(reversed(range(n))), logits[:n]))
        return rankings


class SteppingEngine(FakeEngine):
    """Ranks like :class:`FakeEngine` after some windows of ``step_s`` each, calling
    ``on_window`` after each as the real engine does. A query ``"windows:N ..."`` takes N
    windows, any other one; a call takes as many windows as its longest query."""

    def __init__(self, step_s: float = 0.02) -> None:
        super().__init__()
        self.step_s = step_s
        self.windows = 0

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        top_k: Sequence[int | None] | None = None,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        match = [re.match(r"windows:(\d+)", query) for query, _ in requests]
        for _ in range(max(int(m[1]) if m else 1 for m in match)):
            time.sleep(self.step_s)
            self.windows += 1
            if on_window is not None:
                on_window(len(requests))
        return super().rerank_many(requests)


@asynccontextmanager
async def serving(engine: RerankEngine, **config: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """A test client for the service over ``engine``, ready to answer."""
    config.setdefault("api_keys", (KEY,))
    app = create_app(lambda: engine, ServiceConfig(**config))
    async with TestClient(TestServer(app)) as client:
        await until(lambda: app[BATCHER].loaded.done())
        yield client


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def batcher_of(client: TestClient[Any, Any]) -> RerankBatcher:
    app = client.app
    assert isinstance(app, web.Application)
    return app[BATCHER]


async def post(client: TestClient[Any, Any], payload: Any, **kwargs: Any) -> tuple[int, Any]:
    kwargs.setdefault("headers", AUTH)
    async with client.post("/v1/rerank", json=payload, **kwargs) as response:
        return response.status, await response.json()


def assert_error(status: int, body: Any, expected_status: int, kind: str) -> None:
    assert status == expected_status
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


# --- contract ---------------------------------------------------------------------------


async def test_contract_one_sorted_result_per_document(tiny_reranker: Reranker) -> None:
    async with serving(tiny_reranker) as client:
        status, body = await post(client, {"query": "capital of France", "documents": DOCS})
    assert status == 200
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
    assert all(type(r["index"]) is int and type(r["relevance_score"]) is float for r in results)
    scores = np.asarray([r["relevance_score"] for r in results], dtype=np.float32)
    assert np.all(scores[1:] < scores[:-1])
    expected = tiny_reranker.rerank("capital of France", TEXTS)
    assert [r["index"] for r in results] == list(expected.order)
    assert isinstance(body["id"], str)
    assert body["meta"] == {"api_version": {"version": "1"}}


async def test_top_n_return_documents_and_empty_list(tiny_reranker: Reranker) -> None:
    async with serving(tiny_reranker) as client:
        _, full = await post(client, {"query": "Paris", "documents": DOCS})
        status, top = await post(
            client, {"query": "Paris", "documents": DOCS, "top_n": 3, "return_documents": True}
        )
        _, more = await post(client, {"query": "Paris", "documents": DOCS, "top_n": 50})
        _, empty = await post(client, {"query": "Paris", "documents": []})
    assert status == 200
    assert [r["index"] for r in top["results"]] == [r["index"] for r in full["results"][:3]]
    assert all(r["document"]["text"] == TEXTS[r["index"]] for r in top["results"])
    assert len(more["results"]) == len(DOCS)
    assert empty["results"] == []


async def test_blank_documents_follow_the_judged_ones(tiny_reranker: Reranker) -> None:
    documents = ["", "alpha", " \n", "beta", {"text": ""}]
    async with serving(tiny_reranker) as client:
        status, body = await post(client, {"query": "q", "documents": documents})
        _, blank = await post(client, {"query": "q", "documents": ["", " "]})
        _, top = await post(client, {"query": "q", "documents": documents, "top_n": 3})
    assert status == 200
    judged = [[1, 3][i] for i in tiny_reranker.rerank("q", ["alpha", "beta"]).order]
    assert [r["index"] for r in body["results"]] == [*judged, 0, 2, 4]
    scores = [r["relevance_score"] for r in body["results"]]
    assert all(a > b for a, b in itertools.pairwise(scores))
    assert [r["index"] for r in blank["results"]] == [0, 1]
    assert [r["index"] for r in top["results"]] == [*judged, 0]


async def test_json_numbers_parse_as_ml_commons_expects() -> None:
    """ML Commons reads ``index`` as Integer and ``relevance_score`` as Double (json-smart),
    which makes a BigDecimal of a literal over 18 characters: a tie at -1.0 was written
    ``-1.0000001192092896``."""
    async with (
        serving(FakeEngine([7.0, -1.0, -1.0, -1.0])) as client,
        client.post(
            "/v1/rerank", json={"query": "q", "documents": ["a", "b", "c", "d"]}, headers=AUTH
        ) as response,
    ):
        text = await response.text()
    assert response.content_type == "application/json"
    indices = re.findall(r'"index": ?([^,}]+)', text)
    scores = re.findall(r'"relevance_score": ?([^,}]+)', text)
    assert len(indices) == len(scores) == 4
    assert all(re.fullmatch(r"\d+", value) for value in indices)
    assert all(re.fullmatch(r"-?\d+\.\d+(e[-+]?\d+)?|-?\d+(\.\d+)?e[-+]?\d+", v) for v in scores)
    assert all(len(value) <= 18 for value in scores)
    as32 = np.asarray([float(value) for value in scores], dtype=np.float32)
    assert np.all(as32[1:] < as32[:-1])
    assert as32[1] == np.float32(-1.0)


def ml_commons_rerank(response: dict[str, Any], hits: list[str]) -> list[str]:
    """What OpenSearch does with the response: the connector's ``post_process_function``
    (``connector.post_process.cohere.rerank``) writes ``scores[index] = relevance_score`` in
    input order, then the ``rerank`` processor sets each hit's ``_score`` (float32) and
    sorts the hits by it, highest first (a stable sort)."""
    scores: list[float | None] = [None] * len(response["results"])
    for result in response["results"]:
        scores[result["index"]] = result["relevance_score"]
    assert None not in scores
    assert len(scores) == len(hits)
    as32 = [float(np.float32(score)) for score in scores if score is not None]
    ranked = sorted(range(len(hits)), key=lambda i: -as32[i])
    return [hits[i] for i in ranked]


async def test_opensearch_rerank_processor_reproduces_the_ranking_despite_ties() -> None:
    """The engine ranks d,c,b,a with tied capped scores; OpenSearch must keep that order."""
    hits = ["a", "b", "c", "d"]
    async with serving(FakeEngine([5.0, 5.0, 9.0, 5.0])) as client:
        _, body = await post(client, {"query": "q", "documents": hits, "top_n": len(hits)})
    assert ml_commons_rerank(body, hits) == ["d", "c", "b", "a"]


# --- auth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"x-api-key": "wrong"},
        {"x-api-key": KEY[:-1]},
    ],
)
async def test_missing_or_wrong_keys_are_401(headers: dict[str, str]) -> None:
    async with (
        serving(FakeEngine()) as client,
        client.post(
            "/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=headers
        ) as response,
    ):
        body = await response.json()
    assert_error(response.status, body, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"x-api-key": "second"}, {"X-API-KEY": KEY}]
)
async def test_any_configured_key_in_either_header_is_accepted(headers: dict[str, str]) -> None:
    async with serving(FakeEngine(), api_keys=(KEY, "second")) as client:
        status, _ = await post(client, {"query": "q", "documents": ["a"]}, headers=headers)
    assert status == 200


async def test_health_and_ready_need_no_key_and_auth_can_be_off() -> None:
    async with serving(FakeEngine()) as client:
        for path in ("/health", "/ready"):
            async with client.get(path) as response:
                assert response.status == 200
    async with serving(FakeEngine(), api_keys=()) as client:
        status, _ = await post(client, {"query": "q", "documents": ["a"]}, headers={})
    assert status == 200


def test_keys_must_be_a_sequence_of_strings() -> None:
    """One string of keys made each of its characters a valid key."""
    with pytest.raises(TypeError, match="not one string"):
        ServiceConfig(api_keys="my-secret-key")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be strings, got bytes"):
        ServiceConfig(api_keys=(b"key",))  # type: ignore[arg-type]
    assert ServiceConfig(api_keys=["a", "b"]).api_keys == ("a", "b")  # type: ignore[arg-type]


def test_key_helpers() -> None:
    assert presented_key({"Authorization": "bearer  abc "}) == "abc"
    assert presented_key({"X-API-Key": "k"}) == "k"
    assert presented_key({}) is None
    assert key_matches("b", ["a", "b"])
    assert not key_matches("c", ["a", "b"])


# --- malformed and oversize bodies, unknown routes --------------------------------------


async def test_malformed_json_is_400_and_wrong_shape_is_422() -> None:
    async with serving(FakeEngine()) as client:
        async with client.post("/v1/rerank", data=b'{"query": ', headers=JSON_AUTH) as response:
            assert_error(response.status, await response.json(), 400, "malformed_json")
        repeated = b'{"query": "x", "query": "capital of France", "documents": ["a"]}'
        async with client.post("/v1/rerank", data=repeated, headers=JSON_AUTH) as response:
            assert_error(response.status, await response.json(), 400, "malformed_json")
        status, body = await post(client, {"query": "q", "documents": [1]})
        assert_error(status, body, 422, "invalid_request")


async def test_size_limits_are_413() -> None:
    async with serving(FakeEngine(), max_body_bytes=200, max_documents=2) as client:
        status, body = await post(client, {"query": "q", "documents": ["x" * 300]})
        assert_error(status, body, 413, "too_large")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"query": "q", "documents": ["'
            yield b"y" * 400
            yield b'"]}'

        async with client.post("/v1/rerank", data=chunks(), headers=JSON_AUTH) as response:
            assert_error(response.status, await response.json(), 413, "too_large")
        status, body = await post(client, {"query": "q", "documents": ["a", "b", "c"]})
        assert_error(status, body, 413, "too_large")
        assert "3 documents" in body["error"]["message"]


async def test_unknown_routes_and_methods_answer_json() -> None:
    async with serving(FakeEngine()) as client:
        async with client.get("/v2/nothing", headers=AUTH) as response:
            assert_error(response.status, await response.json(), 404, "not_found")
        async with client.get("/v1/rerank", headers=AUTH) as response:
            assert_error(response.status, await response.json(), 405, "method_not_allowed")
            assert response.headers["Allow"] == "POST"


# --- engine errors ----------------------------------------------------------------------


async def test_engine_input_errors_are_422_and_model_faults_500() -> None:
    async with serving(FakeEngine()) as client:
        status, body = await post(client, {"query": "too long", "documents": ["a"]})
        assert_error(status, body, 422, "invalid_request")
        assert "prompt budget" in body["error"]["message"]
        status, body = await post(client, {"query": "crash", "documents": ["a"]})
        assert_error(status, body, 500, "internal_error")
        status, body = await post(client, {"query": "overflow", "documents": ["a"]})
        assert_error(status, body, 500, "internal_error")
        status, _ = await post(client, {"query": "fine", "documents": ["a"]})
        assert status == 200


def logged_error(
    caplog: pytest.LogCaptureFixture, test: Callable[[logging.LogRecord], bool]
) -> bool:
    """Whether an ERROR record with its traceback passes ``test``."""
    return any(
        r.levelno == logging.ERROR and r.exc_info is not None and test(r) for r in caplog.records
    )


async def test_a_timeout_inside_the_engine_is_a_logged_500_not_a_504(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine's TimeoutError was answered "no answer within 30 s" at once, unlogged."""
    async with serving(FakeEngine()) as client:
        answer = await post(client, {"query": "stuck", "documents": ["a"]})
    assert_error(*answer, 500, "internal_error")
    assert logged_error(caplog, lambda r: r.exc_info is not None and r.exc_info[0] is TimeoutError)


async def test_an_unknown_content_encoding_is_415() -> None:
    """aiohttp reads an encoding it does not know as plain: the body was ranked (200)."""
    payload = json.dumps({"query": "q", "documents": ["a"]}).encode()
    async with serving(FakeEngine()) as client:
        for encoding in ("foo", "gzip, gzip"):
            headers = {**JSON_AUTH, "Content-Encoding": encoding}
            async with client.post("/v1/rerank", data=payload, headers=headers) as response:
                body = await response.json()
            assert_error(response.status, body, 415, "unsupported_media_type")
        for encoding in ("identity", "GZIP", ""):  # an empty one is plain
            data = gzip.compress(payload) if encoding == "GZIP" else payload
            headers = {**JSON_AUTH, "Content-Encoding": encoding}
            async with client.post("/v1/rerank", data=data, headers=headers) as response:
                assert response.status == 200


async def test_a_body_declared_other_than_json_is_415() -> None:
    """A text/plain or form body, which a browser posts cross-site without asking first,
    was ranked (200)."""
    payload = json.dumps({"query": "q", "documents": ["a"]}).encode()
    refused = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"]
    async with serving(FakeEngine()) as client:
        for kind in refused:
            headers = {**AUTH, "Content-Type": kind}
            async with client.post("/v1/rerank", data=payload, headers=headers) as response:
                body = await response.json()
            assert_error(response.status, body, 415, "unsupported_media_type")
            assert "send Content-Type: application/json" in body["error"]["message"]
        for kind in ["application/json; charset=utf-8", "Application/JSON", "application/x+json"]:
            headers = {**AUTH, "Content-Type": kind}
            async with client.post("/v1/rerank", data=payload, headers=headers) as response:
                assert response.status == 200
    async with running_service(FakeEngine()) as (url, _, _, _):  # none declared: JSON
        auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        assert json_answer(await raw_exchange(url, request_bytes(auth, payload)))[0] == 200


async def test_a_query_too_long_for_any_prompt_is_refused_outside_its_batch(
    tiny_reranker: Reranker,
) -> None:
    """Such a request failed its whole batch, whose other requests were then ranked again,
    one engine call each."""
    engine = RecordingEngine(tiny_reranker.replace(max_prompt_tokens=400))
    async with serving(engine) as client:
        engine.calls.clear()
        engine.gate.clear()
        first = asyncio.create_task(post(client, {"query": "first", "documents": DOCS}))
        await until(lambda: engine.calls == [1])
        queued = [
            asyncio.create_task(post(client, {"query": query, "documents": DOCS}))
            for query in ("Paris", "cats " * 300, "Berlin")
        ]
        await until(lambda: batcher_of(client).pending == 3)
        engine.gate.set()
        results = await asyncio.gather(first, *queued)
    assert [status for status, _ in results] == [200, 200, 422, 200]
    assert_error(*results[2], 422, "invalid_request")
    assert "instruction and query alone" in results[2][1]["error"]["message"]
    assert engine.calls == [1, 2]
    expected = tiny_reranker.rerank("Berlin", TEXTS)
    assert [r["index"] for r in results[3][1]["results"]] == list(expected.order)


async def test_a_budget_with_no_room_for_the_documents_is_refused_before_scoring(
    tiny_reranker: Reranker,
) -> None:
    """A budget that holds the query and the labels but no text of the documents would rank
    them by position alone: 422, and no engine call."""
    query = "where is paris"
    bare = tiny_reranker.prompts.instruction_tokens(query, len(DOCS))
    engine = RecordingEngine(tiny_reranker.replace(max_prompt_tokens=bare))
    async with serving(engine) as client:
        engine.calls.clear()
        status, body = await post(client, {"query": query, "documents": DOCS})
    assert_error(status, body, 422, "invalid_request")
    assert f"leaves 0 tokens per passage to a window of {len(DOCS)}" in body["error"]["message"]
    assert engine.calls == []


class UncheckedEngine:
    """An engine with ``rerank_many`` alone, as :class:`RerankEngine` asks."""

    def __init__(self) -> None:
        self.inner = FakeEngine()

    def rerank_many(self, requests: Any, **options: Any) -> list[Ranking]:
        return self.inner.rerank_many(requests, **options)


async def test_an_engine_without_a_request_check_still_answers() -> None:
    async with serving(UncheckedEngine()) as client:
        status, body = await post(client, {"query": "fine", "documents": ["a", "b"]})
        assert status == 200
        assert [r["index"] for r in body["results"]] == [1, 0]
        status, body = await post(client, {"query": "too long", "documents": ["a"]})
        assert_error(status, body, 422, "invalid_request")


async def test_a_request_that_fails_in_the_engine_does_not_fail_its_batch() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine) as client:
        engine.calls.clear()
        engine.gate.clear()
        first = asyncio.create_task(post(client, {"query": "first", "documents": ["a"]}))
        await until(lambda: engine.calls == [1])
        good = asyncio.create_task(post(client, {"query": "good", "documents": ["a", "b"]}))
        bad = asyncio.create_task(post(client, {"query": "crash", "documents": ["a"]}))
        await until(lambda: batcher_of(client).pending == 2)
        engine.gate.set()
        results = await asyncio.gather(first, good, bad)
    assert [status for status, _ in results] == [200, 200, 500]
    assert [r["index"] for r in results[1][1]["results"]] == [1, 0]
    assert engine.calls == [1, 2, 1, 1]


# --- readiness --------------------------------------------------------------------------


async def test_not_ready_until_loaded_then_ready() -> None:
    release = threading.Event()

    def slow_factory() -> RerankEngine:
        release.wait(10)
        return FakeEngine()

    app = create_app(slow_factory, ServiceConfig(api_keys=(KEY,)))
    async with TestClient(TestServer(app)) as client:
        async with client.get("/ready") as response:
            assert (response.status, await response.json()) == (503, {"status": "loading"})
        status, body = await post(client, {"query": "q", "documents": ["a"]})
        assert_error(status, body, 503, "unavailable")
        release.set()
        await until(lambda: app[BATCHER].state is WorkerState.READY)
        async with client.get("/ready") as response:
            assert response.status == 200
            assert await response.text() == '{"status":"ready"}'


async def test_a_failed_load_is_reported_without_its_text_and_stops_the_server() -> None:
    def broken() -> RerankEngine:
        raise OSError("weights not found in /srv/models/secret-model")

    app = create_app(broken, ServiceConfig(api_keys=(KEY,)))
    async with TestClient(TestServer(app)) as client:
        await until(lambda: app[BATCHER].loaded.done())
        async with client.get("/ready") as response:
            text = await response.text()
        async with client.get("/health") as health:
            assert (health.status, await health.json()) == (503, {"status": "failed"})
    assert response.status == 503
    assert text == '{"status":"failed"}'
    app = create_app(broken, ServiceConfig(api_keys=(KEY,)))
    with pytest.raises(RuntimeError, match="failed to load: weights not found"):
        await run_service(app, host="127.0.0.1", port=0, stop=asyncio.Event())


async def test_a_busy_port_fails_before_the_model_starts_loading() -> None:
    loads: list[int] = []

    def factory() -> RerankEngine:
        loads.append(1)
        return FakeEngine()

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        app = create_app(factory, ServiceConfig(api_keys=(KEY,)))
        with pytest.raises(OSError, match="in use"):
            await run_service(app, host="127.0.0.1", port=port, stop=asyncio.Event())
    assert loads == []
    assert not app[BATCHER].loaded.done()


# --- timeouts and overload --------------------------------------------------------------


async def test_timeout_is_504_and_queued_timed_out_work_is_skipped() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine, timeout_s=0.3) as client:
        engine.calls.clear()
        engine.gate.clear()
        running = asyncio.create_task(post(client, {"query": "a", "documents": ["a"]}))
        await until(lambda: engine.calls == [1])
        queued = asyncio.create_task(post(client, {"query": "b", "documents": ["b"]}))
        for status, body in await asyncio.gather(running, queued):
            assert_error(status, body, 504, "timeout")
        engine.gate.set()  # the stuck call outlasted the timeout: stalled until it returns
        await until(lambda: batcher_of(client).state is WorkerState.READY)
        status, _ = await post(client, {"query": "c", "documents": ["c"]})
    assert status == 200
    assert engine.calls == [1, 1]


async def test_too_many_waiting_requests_are_503_with_retry_after() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine, max_pending_requests=2) as client:
        engine.calls.clear()
        engine.gate.clear()
        tasks = [asyncio.create_task(post(client, {"query": "a", "documents": ["a"]}))]
        await until(lambda: engine.calls == [1])
        tasks += [asyncio.create_task(post(client, {"query": "b", "documents": ["b"]}))]
        tasks += [asyncio.create_task(post(client, {"query": "c", "documents": ["c"]}))]
        await until(lambda: batcher_of(client).pending == 2)
        async with client.post(
            "/v1/rerank", json={"query": "d", "documents": ["d"]}, headers=AUTH
        ) as response:
            assert_error(response.status, await response.json(), 503, "unavailable")
            assert response.headers["Retry-After"] == "1"
        engine.gate.set()
        assert [status for status, _ in await asyncio.gather(*tasks)] == [200, 200, 200]


async def test_top_n_reaches_the_strategy_as_each_requests_top_k(
    tiny_reranker: Reranker,
) -> None:
    from haystack_llmrank.strategies import make_strategy

    tdpart = tiny_reranker.replace(strategy=make_strategy("tdpart"))
    engine = RecordingEngine(tdpart)
    texts = [f"{TEXTS[i % len(TEXTS)]} (copy {i})" for i in range(45)]
    asked = [("Paris", 3), ("Spain", None), ("mountain", 12), ("river", 45), ("lake", 60)]
    async with serving(engine, max_batch_requests=8) as client:
        engine.depths.clear()
        engine.gate.clear()
        first = asyncio.create_task(post(client, {"query": "warm", "documents": texts[:2]}))
        await until(lambda: len(engine.depths) == 1)
        tasks = [
            asyncio.create_task(
                post(client, {"query": q, "documents": texts} | ({"top_n": n} if n else {}))
            )
            for q, n in asked
        ]
        await until(lambda: batcher_of(client).pending == 5)
        engine.gate.set()
        responses = await asyncio.gather(first, *tasks)
    # a top_n that cuts nothing (45 or 60 of 45 documents) asks what none asks
    assert engine.depths == [[None], [3, None, 12, None, None]]
    for (query, top_n), (status, body) in zip(asked, responses[1:], strict=True):
        assert status == 200
        depth = top_n if top_n is not None and top_n < len(texts) else None
        expected = tdpart.rerank(query, texts, top_k=depth)
        assert [r["index"] for r in body["results"]] == list(expected.order[:top_n])
    settled = tdpart.rerank("Paris", texts, top_k=3).unranked
    assert settled > tdpart.rerank("Paris", texts).unranked  # top_n lets tdpart stop sooner


# --- batching ---------------------------------------------------------------------------


async def test_waiting_requests_are_ranked_in_one_engine_call(tiny_reranker: Reranker) -> None:
    engine = RecordingEngine(tiny_reranker)
    queries = [f"query number {i} about Paris" for i in range(6)]
    async with serving(engine, max_batch_requests=8) as client:
        engine.calls.clear()
        engine.gate.clear()
        tasks = [asyncio.create_task(post(client, {"query": queries[0], "documents": DOCS}))]
        await until(lambda: engine.calls == [1])
        for query in queries[1:]:
            tasks.append(asyncio.create_task(post(client, {"query": query, "documents": DOCS})))
        await until(lambda: batcher_of(client).pending == 5)
        engine.gate.set()
        responses = await asyncio.gather(*tasks)
    assert engine.calls == [1, 5]
    for query, (status, body) in zip(queries, responses, strict=True):
        assert status == 200
        assert [r["index"] for r in body["results"]] == list(
            tiny_reranker.rerank(query, TEXTS).order
        )


async def test_batches_are_capped() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine, max_batch_requests=2) as client:
        engine.calls.clear()
        engine.gate.clear()
        tasks = [asyncio.create_task(post(client, {"query": "0", "documents": ["a"]}))]
        await until(lambda: engine.calls == [1])
        for i in range(1, 6):
            tasks.append(asyncio.create_task(post(client, {"query": str(i), "documents": ["a"]})))
        await until(lambda: batcher_of(client).pending == 5)
        engine.gate.set()
        assert all(status == 200 for status, _ in await asyncio.gather(*tasks))
    assert engine.calls == [1, 2, 2, 1]


# --- graceful shutdown ------------------------------------------------------------------


@asynccontextmanager
async def running_service(
    engine: RerankEngine, host: str = "127.0.0.1", **config: Any
) -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Task[None], web.Application]]:
    """``run_service`` on a free loopback port: yields its URL, stop event, task and app."""
    app = create_app(lambda: engine, ServiceConfig(api_keys=(KEY,), **config))
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(
        run_service(app, host=host, port=0, stop=stop, on_listening=urls.extend)
    )
    await until(lambda: bool(urls) and app[BATCHER].state is WorkerState.READY)
    try:
        yield urls[0], stop, task, app
    finally:
        if isinstance(engine, RecordingEngine):
            engine.gate.set()
        stop.set()
        await task


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_an_ipv6_address_is_announced_as_a_url_in_brackets() -> None:
    async with running_service(FakeEngine(), host="::1") as (url, _, _, _):
        assert url.startswith("http://[::1]:")
        async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as reply:
            assert reply.status == 200


async def test_shutdown_refuses_new_connections_and_finishes_in_flight_requests() -> None:
    engine = RecordingEngine(FakeEngine())
    async with running_service(engine, shutdown_grace_s=10) as (url, stop, task, app):
        engine.calls.clear()
        engine.gate.clear()
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.create_task(
                session.post(
                    f"{url}/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, headers=AUTH
                )
            )
            await until(lambda: engine.calls == [1])
            stop.set()
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession() as fresh:
                with pytest.raises(aiohttp.ClientConnectionError):
                    await fresh.get(f"{url}/health")
            assert not task.done()
            engine.gate.set()
            response = await in_flight
            assert response.status == 200
            assert [r["index"] for r in (await response.json())["results"]] == [1, 0]
        await asyncio.wait_for(task, 10)
    assert not app[BATCHER]._thread.is_alive()


async def test_shutdown_answers_open_connections_draining() -> None:
    engine = RecordingEngine(FakeEngine())
    async with running_service(engine, shutdown_grace_s=10) as (url, stop, task, _):
        engine.calls.clear()
        engine.gate.clear()
        async with aiohttp.ClientSession() as kept, aiohttp.ClientSession() as session:
            async with kept.get(f"{url}/ready") as response:
                assert response.status == 200  # its connection stays open (keep-alive)
            in_flight = asyncio.create_task(
                session.post(
                    f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=AUTH
                )
            )
            await until(lambda: engine.calls == [1])
            stop.set()
            await asyncio.sleep(0.3)
            async with kept.get(f"{url}/ready") as response:
                assert (response.status, await response.json()) == (503, {"status": "draining"})
            payload = {"query": "q", "documents": ["a"]}
            async with kept.post(f"{url}/v1/rerank", json=payload, headers=AUTH) as response:
                assert response.status == 503
            engine.gate.set()
            assert (await in_flight).status == 200
        await asyncio.wait_for(task, 10)


async def test_shutdown_gives_up_on_requests_that_outlast_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = RecordingEngine(FakeEngine())
    caplog.set_level("WARNING", logger="opensearch_ltr.service.server")
    async with running_service(engine, shutdown_grace_s=0.3) as (url, stop, task, _):
        engine.calls.clear()
        engine.gate.clear()
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.create_task(
                session.post(
                    f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=AUTH
                )
            )
            await until(lambda: engine.calls == [1])
            started = time.monotonic()
            stop.set()
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await in_flight
            await asyncio.wait_for(task, 5)
            assert time.monotonic() - started < 3
    assert "cancelled 1 requests still running after 0.3 s" in caplog.text


SIGNAL_SCRIPT = """
import asyncio, time
from opensearch_ltr.service import stop_on_signals

async def main():
    stop = asyncio.Event()
    stop_on_signals(stop)
    print("waiting", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    await asyncio.to_thread(time.sleep, 30)  # as the worker's join: exit would wait for it

asyncio.run(main())
"""


STOP_WHILE_LOADING_SCRIPT = """
import asyncio, logging, time
from opensearch_ltr.service import ServiceConfig, create_app, run_service
from opensearch_ltr.service import batcher as batcher_module

logging.basicConfig(level=logging.WARNING)

class Engine:
    def rerank_many(self, requests, *, top_k=None, on_window=None):
        raise AssertionError("no warm-up once closed")

def slow_factory():
    time.sleep(1.0)
    return Engine()

app = create_app(slow_factory, ServiceConfig(api_keys=(), shutdown_grace_s=0.1))

async def main():
    stop = asyncio.Event()
    stop.set()
    await run_service(app, host="127.0.0.1", port=0, stop=stop)

asyncio.run(main())
print("stopped", flush=True)
"""


def test_stopping_while_the_model_loads_ends_quietly_without_a_warm_up() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STOP_WHILE_LOADING_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stopped\n"
    assert "ERROR" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_for_shutdown_second_one_stops_at_once(sig: signal.Signals) -> None:
    """A second SIGINT raised KeyboardInterrupt, and exit still waited for the threads."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", SIGNAL_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        assert process.stdout.readline() == "waiting\n"
        process.send_signal(sig)
        assert process.stdout.readline() == "stopping\n"
        assert process.poll() is None
        process.send_signal(sig)
        assert process.wait(timeout=10) == -sig  # ended by the signal itself
        assert f"{sig.name} received again: stopping at once" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


# --- abandoned work ---------------------------------------------------------------------


async def test_a_timed_out_batch_stops_between_windows_and_the_service_recovers() -> None:
    """Timed-out heavy requests kept the engine busy long after their 504s, so small requests
    behind them timed out too while ``/ready`` said 200."""
    engine = SteppingEngine(step_s=0.02)
    async with serving(engine, timeout_s=0.5) as client:
        heavy = {"query": "windows:500 heavy", "documents": ["a", "b"]}
        started = time.monotonic()
        answers = await asyncio.gather(*(post(client, heavy) for _ in range(4)))
        for status, body in answers:
            assert_error(status, body, 504, "timeout")
        await asyncio.sleep(0.3)
        windows = engine.windows
        await asyncio.sleep(0.3)
        assert engine.windows == windows  # idle: nothing of the 2,000 windows is left running
        status, body = await post(client, {"query": "small", "documents": ["a", "b"]})
        assert status == 200
        assert [r["index"] for r in body["results"]] == [1, 0]
        assert time.monotonic() - started < 5
        assert engine.windows == windows + 1
        async with client.get("/ready") as response:
            assert response.status == 200


def test_the_batcher_drops_abandoned_work_before_it_starts_and_between_windows() -> None:
    engine = SteppingEngine(step_s=0.01)
    batcher = RerankBatcher(lambda: engine, max_batch_requests=4)
    batcher.start()
    try:
        assert batcher.loaded.result(10) is None
        engine.windows = 0
        running = batcher.submit("windows:300 first", ["a"])
        time.sleep(0.1)
        queued = [batcher.submit("windows:300 next", ["a"]) for _ in range(3)]
        assert batcher.pending == 3
        for future in queued:
            assert future.cancel()
        assert batcher.pending == 0
        assert running.cancel()  # the caller leaves while its batch is running
        time.sleep(0.1)
        windows = engine.windows
        time.sleep(0.2)
        assert engine.windows == windows < 100
        kept = batcher.submit("windows:3 kept", ["a", "b"])
        assert list(kept.result(5).order) == [1, 0]
        # One wanted request keeps its batch going to the end.
        first = batcher.submit("windows:40 first", ["a"])
        time.sleep(0.05)
        both = [
            batcher.submit("windows:30 wanted", ["a"]),
            batcher.submit("windows:30 gone", ["a"]),
        ]
        both[1].cancel()
        assert list(both[0].result(5).order) == [0]
        assert first.result(5) is not None
    finally:
        assert batcher.close(10)


class GatedScorer:
    """Label logits by position, one forward pass per call; while :attr:`gated`, each pass
    releases :attr:`entered` and waits for :attr:`go`."""

    def __init__(self, label_ids: LabelIds) -> None:
        self.label_ids = label_ids
        self.passes = 0
        self.gated = False
        self.entered = threading.Semaphore(0)
        self.go = threading.Semaphore(0)

    def score(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        self.passes += 1
        if self.gated:
            self.entered.release()
            if not self.go.acquire(timeout=10):
                raise RuntimeError("the test never let the pass end")
        row = -np.arange(len(self.label_ids.labels), dtype=np.float32)
        return np.tile(row, (len(prompts), 1))


def gated_engine(tokenizer: Any) -> tuple[GatedScorer, Reranker]:
    """A real engine over a :class:`GatedScorer`, one window a pass; 100 documents take five
    passes in their first step."""
    scorer = GatedScorer(resolve_label_ids(tokenizer, ALPHABETIC_LABELS))
    engine = Reranker(
        tokenizer, scorer, max_prompt_tokens=4096, strategy=Tournament(), max_batch_tokens=1
    )
    return scorer, engine


HUNDRED = [f"document {i}" for i in range(100)]


def test_an_abandoned_request_stops_after_the_running_forward_pass(
    smollm2_tokenizer: Any,
) -> None:
    """The engine checked for abandoned work only between steps: a request cancelled in the
    first of its step's five forward passes still ran all five."""
    scorer, engine = gated_engine(smollm2_tokenizer)
    batcher = RerankBatcher(lambda: engine)
    batcher.start()
    try:
        assert batcher.loaded.result(10) is None
        scorer.passes = 0
        scorer.gated = True
        future = batcher.submit("q", HUNDRED)
        assert scorer.entered.acquire(timeout=10)
        assert future.cancel()
        scorer.gated = False
        scorer.go.release()
    finally:
        assert batcher.close(10)
    assert scorer.passes == 1


def test_the_stall_clock_restarts_at_each_forward_pass(
    smollm2_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress was marked only between steps, so a step of passes each well within the
    stall time read ``stalled`` from its second pass on."""
    now = [0.0]
    clock = SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(batcher_module, "time", clock)
    scorer, engine = gated_engine(smollm2_tokenizer)
    batcher = RerankBatcher(lambda: engine, stall_after_s=10)
    batcher.start()
    try:
        assert batcher.loaded.result(10) is None
        scorer.gated = True
        future = batcher.submit("q", HUNDRED)
        states = []
        for last in [False] * 4 + [True]:
            assert scorer.entered.acquire(timeout=10)
            now[0] += 6  # each pass takes 6 s of the 10 s stall time
            states.append(batcher.state)
            scorer.gated = not last
            scorer.go.release()
        assert len(future.result(10).order) == 100
    finally:
        assert batcher.close(10)
    assert states == [WorkerState.READY] * 5


async def test_a_client_that_leaves_cancels_its_work(caplog: pytest.LogCaptureFixture) -> None:
    engine = SteppingEngine(step_s=0.02)
    async with running_service(engine) as (url, _, _, _):
        async with aiohttp.ClientSession() as session:
            leaving = asyncio.create_task(
                session.post(
                    f"{url}/v1/rerank",
                    json={"query": "windows:500 q", "documents": ["a"]},
                    headers=AUTH,
                )
            )
            await until(lambda: engine.windows > 3)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
        await asyncio.sleep(0.3)
        windows = engine.windows
        await asyncio.sleep(0.3)
        assert engine.windows == windows < 100
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- readiness under load ---------------------------------------------------------------


async def ready_status(client: TestClient[Any, Any]) -> tuple[int, Any]:
    async with client.get("/ready") as response:
        return response.status, await response.json()


async def test_ready_says_saturated_while_the_queue_is_full_then_recovers() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine, max_pending_requests=1) as client:
        engine.calls.clear()
        engine.gate.clear()
        tasks = [asyncio.create_task(post(client, {"query": "a", "documents": ["a"]}))]
        await until(lambda: engine.calls == [1])
        tasks.append(asyncio.create_task(post(client, {"query": "b", "documents": ["b"]})))
        await until(lambda: batcher_of(client).pending == 1)
        assert await ready_status(client) == (503, {"status": "saturated"})
        engine.gate.set()
        assert [status for status, _ in await asyncio.gather(*tasks)] == [200, 200]
        assert await ready_status(client) == (200, {"status": "ready"})


async def test_ready_says_stalled_while_a_window_outlasts_the_timeout_then_recovers() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine, timeout_s=0.3) as client:
        engine.gate.clear()
        stuck = asyncio.create_task(post(client, {"query": "a", "documents": ["a"]}))
        await until(lambda: batcher_of(client).state is WorkerState.STALLED)
        assert await ready_status(client) == (503, {"status": "stalled"})
        status, body = await post(client, {"query": "b", "documents": ["b"]})
        assert_error(status, body, 503, "unavailable")
        assert_error(*await stuck, 504, "timeout")
        engine.gate.set()
        await until(lambda: batcher_of(client).state is WorkerState.READY)
        status, _ = await post(client, {"query": "c", "documents": ["c"]})
        assert status == 200


class DyingEngine(FakeEngine):
    """Kills its worker thread on a query with "die" (an error no handler catches)."""

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        top_k: Sequence[int | None] | None = None,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        if any("die" in query for query, _ in requests):
            raise SystemExit("worker gone")
        return super().rerank_many(requests, on_window=on_window)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_worker_fails_health_and_its_requests_are_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/health said 200 for ever, and requests were told the service was shutting down."""
    async with serving(DyingEngine()) as client:
        status, body = await post(client, {"query": "die", "documents": ["a"]})
        assert_error(status, body, 503, "unavailable")
        await until(lambda: not batcher_of(client)._thread.is_alive())
        assert await ready_status(client) == (503, {"status": "stopped"})
        async with client.get("/health") as response:
            assert (response.status, await response.json()) == (503, {"status": "stopped"})
        status, body = await post(client, {"query": "fine", "documents": ["a"]})
        assert_error(status, body, 503, "unavailable")
        assert "worker stopped on an error" in body["error"]["message"]
    assert logged_error(caplog, lambda r: "worker stopped" in r.getMessage())


# --- client errors ----------------------------------------------------------------------


async def raw_exchange(url: str, data: bytes, *, close_after: float | None = None) -> bytes:
    """Send raw bytes to the service; return all it answers (or nothing, if we hang up)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        if close_after is not None:
            await asyncio.sleep(close_after)
            return b""
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def json_answer(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/json" in head
    return int(head.split()[1]), json.loads(body)


def request_bytes(headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def noisy(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records a client's mistake must not cause: WARNING or above, or any traceback."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_client_errors_are_4xx_json_and_log_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = json.dumps({"query": "q", "documents": ["a"]}).encode()
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
    with caplog.at_level(logging.DEBUG):
        async with running_service(FakeEngine()) as (url, _, _, _):
            bad_key = request_bytes(b"Authorization: Bearer \xff\xfe\r\n", payload)
            status, body = json_answer(await raw_exchange(url, bad_key))
            assert_error(status, body, 401, "unauthorized")
            not_gzip = request_bytes(auth + b"Content-Encoding: gzip\r\n", payload)
            status, body = json_answer(await raw_exchange(url, not_gzip))
            assert_error(status, body, 400, "unreadable_body")
            gzipped = request_bytes(auth + b"Content-Encoding: gzip\r\n", gzip.compress(payload))
            assert json_answer(await raw_exchange(url, gzipped))[0] == 200
            for broken in (b"GARBAGE\r\n\r\n", b"GET /ready HTTP/1.1\r\nBad Header: x\r\n\r\n"):
                status, body = json_answer(await raw_exchange(url, broken))
                assert_error(status, body, 400, "bad_request")
            cut = request_bytes(auth, payload)[:-5]
            await raw_exchange(url, cut, close_after=0.2)
            status, body = json_answer(
                await raw_exchange(
                    url, request_bytes(auth, b'{"query": "too long", "documents": ["a"]}')
                )
            )
            assert_error(status, body, 422, "invalid_request")
            await asyncio.sleep(0.2)
    assert noisy(caplog) == []


async def test_a_coding_aiohttp_cannot_decode_is_415_like_any_other() -> None:
    """br and zstd, which aiohttp knows but cannot decode without their modules, were 400
    bad_request from its parser, where the README promises 415 for any other coding."""
    payload = json.dumps({"query": "q", "documents": ["a"]}).encode()
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
    async with running_service(FakeEngine()) as (url, _, _, _):
        for coding, named in (("br", "br"), ("zstd", "zstd"), ("BR", "br"), ("foo", "foo")):
            head = auth + b"Content-Encoding: %s\r\n" % coding.encode()
            status, body = json_answer(await raw_exchange(url, request_bytes(head, payload)))
            assert_error(status, body, 415, "unsupported_media_type")
            assert body["error"]["message"] == (
                f"Content-Encoding {named!r} is not supported; use gzip, deflate, identity"
            )


async def test_expect_100_continue_waits_for_the_key_and_size_checks() -> None:
    """The body was invited (100 Continue) before the key and the size were checked."""
    body = json.dumps({"query": "q", "documents": ["a", "b"]}).encode()
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"

    async def exchange(headers: bytes, length: int) -> tuple[bool, int, Any]:
        """Send a head declaring ``length`` bytes, and ``body`` only after 100 Continue:
        whether it came, and the answer."""
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        try:
            writer.write(request_bytes(headers, b"x" * length)[:-length])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            continued = head == b"HTTP/1.1 100 Continue\r\n\r\n"
            if continued:
                writer.write(body)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            size = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            answer = head + await asyncio.wait_for(reader.readexactly(size), 5)
            return (continued, *json_answer(answer))
        finally:
            writer.close()

    async with running_service(FakeEngine(), max_body_bytes=1000) as (url, _, _, _):
        expect = b"Expect: 100-continue\r\n"
        for headers, length, status, kind in (
            (expect, len(body), 401, "unauthorized"),
            (auth + expect, 5000, 413, "too_large"),
            (auth + b"Expect: bogus\r\n", len(body), 417, "expectation_failed"),
            (
                auth + b"Content-Encoding: foo\r\n" + expect,
                len(body),
                415,
                "unsupported_media_type",
            ),
        ):
            continued, *answer = await exchange(headers, length)
            assert not continued
            assert_error(*answer, status, kind)
        continued, status, ranked = await exchange(auth + expect, len(body))
        assert continued
        assert status == 200
        assert [r["index"] for r in ranked["results"]] == [1, 0]


# --- connections ------------------------------------------------------------------------


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False


async def test_connections_without_a_complete_head_are_closed_in_time() -> None:
    async with running_service(FakeEngine(), header_timeout_s=0.3) as (url, _, _, _):
        host, port = url.removeprefix("http://").split(":")
        silent = await asyncio.open_connection(host, int(port))
        partial = await asyncio.open_connection(host, int(port))
        partial[1].write(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert await closed_within(silent[0], 3)
        assert await closed_within(partial[0], 3)
        assert time.monotonic() - started < 2
        for _, writer in (silent, partial):
            writer.close()
        # A slow body and an idle keep-alive connection are not cut by the head timeout.
        reader, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps({"query": "q", "documents": ["a", "b"]}).encode()
        head = request_bytes(b"Authorization: Bearer " + KEY.encode() + b"\r\n", body)
        head = head.replace(b"Connection: close", b"Connection: keep-alive")
        writer.write(head[: -len(body)] + body[:5])
        await asyncio.sleep(0.6)
        writer.write(body[5:])
        answer = await reader.readuntil(b'{"version":"1"}}}')
        assert answer.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.6)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_connections_over_the_cap_get_503_and_are_closed() -> None:
    async with running_service(FakeEngine(), max_connections=3) as (url, _, _, _):
        host, port = url.removeprefix("http://").split(":")
        held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
        reader, writer = await asyncio.open_connection(host, int(port))
        status, body = json_answer(await asyncio.wait_for(reader.read(), 5))
        assert_error(status, body, 503, "unavailable")
        writer.close()
        held.pop()[1].close()
        await asyncio.sleep(0.2)
        health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert (await raw_exchange(url, health)).startswith(b"HTTP/1.1 200")
        for _, held_writer in held:
            held_writer.close()


# --- shutdown past the grace period -----------------------------------------------------


async def test_shutdown_past_the_grace_period_stops_the_engine_at_its_next_window() -> None:
    """The worker used to keep ranking the abandoned request after the server stopped; the
    process then exited with the model still running ("terminate called", exit -6)."""
    engine = SteppingEngine(step_s=0.02)
    async with (
        running_service(engine, shutdown_grace_s=0.2) as (url, stop, task, app),
        aiohttp.ClientSession() as session,
    ):
        in_flight = asyncio.create_task(
            session.post(
                f"{url}/v1/rerank",
                json={"query": "windows:1000 q", "documents": ["a"]},
                headers=AUTH,
            )
        )
        await until(lambda: engine.windows > 3)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 2
        assert not app[BATCHER]._thread.is_alive()
        windows = engine.windows
        assert windows < 200
        with pytest.raises(aiohttp.ClientError):
            await in_flight


@pytest.mark.parametrize("name", ["timeout_s", "header_timeout_s", "shutdown_grace_s"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_durations_must_be_finite(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        ServiceConfig(**{name: value})


def test_close_waits_at_most_the_longest_timeout_threads_take() -> None:
    """A grace period over threading.TIMEOUT_MAX crashed the shutdown with OverflowError."""
    engine = RecordingEngine(FakeEngine())
    batcher = RerankBatcher(lambda: engine)
    batcher.start()
    assert batcher.loaded.result(10) is None
    engine.gate.clear()
    job = batcher.submit("q", ["a", "b"])
    deadline = time.monotonic() + 10
    while engine.calls != [1, 1]:
        assert time.monotonic() < deadline, "the job never reached the engine"
        time.sleep(0.01)
    threading.Timer(0.1, engine.gate.set).start()
    assert batcher.close(1e10)
    assert list(job.result(0).order) == [1, 0]
    assert batcher.state is WorkerState.STOPPED
    assert not batcher.dead  # closed, not broken: /health stays 200 while shutting down


def test_an_idle_worker_stops_within_a_grace_of_zero() -> None:
    """close(0) on a worker parked for work returned before it woke, so every shutdown with
    --shutdown-grace-s 0 warned that the engine was still in a window."""
    for _ in range(20):
        batcher = RerankBatcher(lambda: FakeEngine())
        batcher.start()
        assert batcher.loaded.result(10) is None
        deadline = time.monotonic() + 10
        while not batcher._parked:
            assert time.monotonic() < deadline, "the worker never waited for work"
            time.sleep(0.001)
        assert batcher.close(0)


def test_a_factory_that_exits_fails_the_load_instead_of_loading_forever() -> None:
    def factory() -> RerankEngine:
        raise SystemExit(3)

    batcher = RerankBatcher(factory)
    batcher.start()
    with pytest.raises(SystemExit):
        batcher.loaded.result(10)
    assert batcher.state is WorkerState.FAILED
    assert batcher.close(10)


def test_a_worker_stopped_while_retrying_a_batch_answers_every_request() -> None:
    gate = threading.Event()

    class Stopping(FakeEngine):
        def rerank_many(self, requests: Any, **kwargs: Any) -> list[Ranking]:
            if len(requests) > 1:
                raise RuntimeError("one of them is bad")
            if gate.is_set():
                raise SystemExit(1)  # stops the worker while it retries one by one
            return super().rerank_many(requests, **kwargs)

    batcher = RerankBatcher(lambda: Stopping(), max_batch_requests=4)
    batcher.start()
    assert batcher.loaded.result(10) is None
    gate.set()
    with batcher._changed:  # queue three at once, so that they form one batch
        jobs = [batcher.submit(f"q{i}", ["a", "b"]) for i in range(3)]
    for job in jobs:
        with pytest.raises(ServiceUnavailableError, match="the rerank worker stopped"):
            job.result(10)
    assert batcher.close(10)
