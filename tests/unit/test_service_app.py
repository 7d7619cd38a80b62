"""The rerank service over HTTP: contract, auth, limits, timeouts, batching, shutdown."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from haystack_llmrank.errors import PromptTooLongError
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from opensearch_ltr.service import ServiceConfig, create_app, run_service
from opensearch_ltr.service.app import BATCHER, key_matches, presented_key
from opensearch_ltr.service.batcher import RerankBatcher, RerankEngine

KEY = "secret-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
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
        self.gate = threading.Event()
        self.gate.set()

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        self.calls.append(len(requests))
        if not self.gate.wait(10):
            raise RuntimeError("gate never opened")
        return self.inner.rerank_many(requests, on_window=on_window)


class FakeEngine:
    """Ranks by a fixed rule: reversed input order with given logits; raises on marked queries."""

    def __init__(self, logits: Sequence[float] | None = None) -> None:
        self.logits = logits

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        rankings = []
        for query, passages in requests:
            if "too long" in query:
                raise PromptTooLongError("the query alone exceeds the prompt budget")
            if "crash" in query:
                raise RuntimeError("device lost")
            n = len(passages)
            logits = self.logits or [float(n - r) for r in range(n)]
            rankings.append(Ranking.from_logits(list(reversed(range(n))), logits[:n]))
        return rankings


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


async def test_json_numbers_parse_as_ml_commons_expects() -> None:
    """ML Commons reads ``index`` as Integer and ``relevance_score`` as Double (json-smart)."""
    async with (
        serving(FakeEngine([7.0, 2.0, 2.0, -1.0])) as client,
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
    assert all(re.fullmatch(r"-?\d+\.\d+(e-?\d+)?|-?\d+(\.\d+)?e-?\d+", v) for v in scores)


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


def test_key_helpers() -> None:
    assert presented_key({"Authorization": "bearer  abc "}) == "abc"
    assert presented_key({"X-API-Key": "k"}) == "k"
    assert presented_key({}) is None
    assert key_matches("b", ["a", "b"])
    assert not key_matches("c", ["a", "b"])


# --- malformed and oversize bodies, unknown routes --------------------------------------


async def test_malformed_json_is_400_and_wrong_shape_is_422() -> None:
    async with serving(FakeEngine()) as client:
        async with client.post("/v1/rerank", data=b'{"query": ', headers=AUTH) as response:
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

        async with client.post("/v1/rerank", data=chunks(), headers=AUTH) as response:
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


async def test_engine_input_errors_are_422_and_crashes_500() -> None:
    async with serving(FakeEngine()) as client:
        status, body = await post(client, {"query": "too long", "documents": ["a"]})
        assert_error(status, body, 422, "invalid_request")
        assert "prompt budget" in body["error"]["message"]
        status, body = await post(client, {"query": "crash", "documents": ["a"]})
        assert_error(status, body, 500, "internal_error")
        status, _ = await post(client, {"query": "fine", "documents": ["a"]})
        assert status == 200


async def test_a_failing_request_does_not_fail_its_batch() -> None:
    engine = RecordingEngine(FakeEngine())
    async with serving(engine) as client:
        engine.calls.clear()
        engine.gate.clear()
        first = asyncio.create_task(post(client, {"query": "first", "documents": ["a"]}))
        await until(lambda: engine.calls == [1])
        good = asyncio.create_task(post(client, {"query": "good", "documents": ["a", "b"]}))
        bad = asyncio.create_task(post(client, {"query": "too long", "documents": ["a"]}))
        await until(lambda: batcher_of(client).pending == 2)
        engine.gate.set()
        results = await asyncio.gather(first, good, bad)
    assert [status for status, _ in results] == [200, 200, 422]
    assert [r["index"] for r in results[1][1]["results"]] == [1, 0]
    assert engine.calls[:2] == [1, 2]


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
        await until(lambda: app[BATCHER].ready)
        async with client.get("/ready") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ready", "model": "llmrank"}


async def test_a_failed_load_is_reported_and_stops_the_server() -> None:
    def broken() -> RerankEngine:
        raise OSError("weights not found")

    app = create_app(broken, ServiceConfig(api_keys=(KEY,)))
    async with TestClient(TestServer(app)) as client:
        await until(lambda: app[BATCHER].loaded.done())
        async with client.get("/ready") as response:
            body = await response.json()
    assert response.status == 503
    assert body["status"] == "failed"
    assert "weights not found" in body["error"]
    app = create_app(broken, ServiceConfig(api_keys=(KEY,)))
    with pytest.raises(RuntimeError, match="failed to load: weights not found"):
        await run_service(app, host="127.0.0.1", port=0, stop=asyncio.Event())


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
        engine.gate.set()
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
    engine: RecordingEngine, **config: Any
) -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Task[None], web.Application]]:
    """``run_service`` on a free loopback port: yields its URL, stop event, task and app."""
    app = create_app(lambda: engine, ServiceConfig(api_keys=(KEY,), **config))
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(
        run_service(app, host="127.0.0.1", port=0, stop=stop, on_listening=urls.extend)
    )
    await until(lambda: bool(urls) and app[BATCHER].ready)
    try:
        yield urls[0], stop, task, app
    finally:
        engine.gate.set()
        stop.set()
        await task


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


async def test_shutdown_gives_up_on_requests_that_outlast_the_grace_period() -> None:
    engine = RecordingEngine(FakeEngine())
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


SIGNAL_SCRIPT = """
import asyncio, time
from opensearch_ltr.service import stop_on_signals

async def main():
    stop = asyncio.Event()
    stop_on_signals(stop)
    print("waiting", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    await asyncio.sleep(30)

asyncio.run(main())
"""


def test_first_signal_asks_for_shutdown_second_one_stops_at_once() -> None:
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", SIGNAL_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "waiting\n"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline() == "stopping\n"
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()
