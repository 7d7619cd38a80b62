"""``llmrank serve`` as a real process on loopback: a bounded load test, then SIGTERM (within
and past the grace period).

32 clients each send 3 requests of 20 short documents at once. Every answer must be 200 and
hold the contract (one result per document, integer indices, strictly decreasing float
scores); a fixed sample must match ranking that request alone, so batching under load mixes
nothing up. Latency percentiles and throughput are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from haystack_llmrank.reranker import Reranker

pytestmark = pytest.mark.integration

KEY = "load-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 32
REQUESTS_PER_CLIENT = 3
CHECKED = 16
DOCUMENTS = 20
LAUNCH = "import sys; from haystack_llmrank.cli import main; sys.exit(main(sys.argv[1:]))"
SERVE_ARGS = ("--device", "cpu", "--threads", "1", "--port", "0", "--batch-size", "8")
TOPICS = ["rivers", "volcanoes", "bread", "chess", "trains", "tea", "bees", "glaciers"]


class Server:
    """A ``llmrank serve`` subprocess and the lines it printed."""

    def __init__(self, model_dir: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-u", "-c", LAUNCH, "serve", "--model", str(model_dir)),
                *SERVE_ARGS,
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "LLMRANK_API_KEY": KEY},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url(timeout=120)
        self._wait_until_ready(timeout=120)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if match:
                return match[1]
        raise AssertionError("the server did not start:\n" + "".join(self.output))

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server never became ready:\n" + "".join(self.output))


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[Server]:
    served = Server(tiny_model_dir)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


def make_request(rng: random.Random, client: int, number: int) -> dict[str, Any]:
    topic = TOPICS[(client + number) % len(TOPICS)]
    documents: list[Any] = [
        f"Passage {j} of request {client}.{number} is about {rng.choice(TOPICS)}."
        for j in range(DOCUMENTS)
    ]
    documents[rng.randrange(DOCUMENTS)] = {"text": f"A short note on {topic}."}
    return {"query": f"facts about {topic} ({client}.{number})", "documents": documents}


def texts(request: dict[str, Any]) -> list[str]:
    return [d if isinstance(d, str) else d["text"] for d in request["documents"]]


def assert_contract(body: dict[str, Any], size: int) -> list[int]:
    results = body["results"]
    order = [r["index"] for r in results]
    assert sorted(order) == list(range(size))
    assert all(type(i) is int for i in order)
    scores = [r["relevance_score"] for r in results]
    assert all(type(s) is float for s in scores)
    as32 = np.asarray(scores, dtype=np.float32)
    assert np.all(as32[1:] < as32[:-1])
    return order


async def run_client(
    session: aiohttp.ClientSession, url: str, client: int
) -> list[tuple[float, dict[str, Any], int, Any]]:
    rng = random.Random(client)
    done = []
    for number in range(REQUESTS_PER_CLIENT):
        request = make_request(rng, client, number)
        started = time.perf_counter()
        async with session.post(f"{url}/v1/rerank", json=request, headers=AUTH) as response:
            body = await response.json()
        done.append((time.perf_counter() - started, request, response.status, body))
    return done


async def load(url: str) -> tuple[list[tuple[float, dict[str, Any], int, Any]], float]:
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        per_client = await asyncio.gather(*(run_client(session, url, c) for c in range(CLIENTS)))
        wall = time.perf_counter() - started
    return [item for items in per_client for item in items], wall


def test_concurrent_clients_all_get_correct_answers(
    server: Server, tiny_reranker: Reranker
) -> None:
    answers, wall = asyncio.run(asyncio.wait_for(load(server.url), 150))
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    assert [status for _, _, status, _ in answers] == [200] * len(answers)
    orders = [assert_contract(body, DOCUMENTS) for _, _, _, body in answers]
    for i in random.Random(0).sample(range(len(answers)), CHECKED):
        request = answers[i][1]
        assert orders[i] == list(tiny_reranker.rerank(request["query"], texts(request)).order)
    latencies = np.asarray([latency for latency, _, _, _ in answers])
    print(
        f"\n{len(answers)} requests from {CLIENTS} clients x {DOCUMENTS} documents: "
        f"p50 {np.percentile(latencies, 50) * 1000:.0f} ms, "
        f"p95 {np.percentile(latencies, 95) * 1000:.0f} ms, "
        f"{len(answers) / wall:.1f} requests/s"
    )


def test_sigterm_finishes_in_flight_requests_then_exits(server: Server) -> None:
    rng = random.Random(99)
    requests = [make_request(rng, 100, i) for i in range(8)]
    for request in requests:
        request["documents"] = request["documents"] * 10  # 200 documents: 19 windows each

    async def in_flight() -> tuple[list[tuple[int, Any, float]], float]:
        timeout = aiohttp.ClientTimeout(total=90)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(request: dict[str, Any]) -> tuple[int, Any, float]:
                async with session.post(
                    f"{server.url}/v1/rerank", json=request, headers=AUTH
                ) as response:
                    return response.status, await response.json(), time.monotonic()

            tasks = [asyncio.create_task(one(request)) for request in requests]
            await asyncio.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            return await asyncio.gather(*tasks), signalled

    answers, signalled = asyncio.run(in_flight())
    assert [status for status, _, _ in answers] == [200] * len(requests)
    for _, body, _ in answers:
        assert_contract(body, 200)
    assert max(finished for _, _, finished in answers) > signalled
    assert server.process.wait(timeout=60) == 0
    assert "llmrank serve: stopped" in "".join(server.output)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/health", timeout=2)


def test_sigterm_past_the_grace_period_drops_the_request_and_exits_cleanly(
    tiny_model_dir: Path,
) -> None:
    """A request still in the engine when the grace period ended used to abort the process:
    "terminate called without an active exception", exit -6."""
    served = Server(tiny_model_dir, "--shutdown-grace-s", "0.2")
    try:
        request = make_request(random.Random(7), 200, 0)
        request["documents"] = [f"{text} " * 40 for text in texts(request)] * 50  # 99 windows
        answers: list[BaseException | int] = []

        def send() -> None:
            message = urllib.request.Request(
                f"{served.url}/v1/rerank",
                data=json.dumps(request).encode(),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(message, timeout=60) as response:
                    answers.append(response.status)
            except OSError as exc:
                answers.append(exc)

        client = threading.Thread(target=send)
        client.start()
        time.sleep(1.0)
        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert served.process.wait(timeout=60) == 0
        client.join(10)
        output = "".join(served.output)
        assert "terminate called" not in output
        assert "llmrank serve: stopped" in output
        (answer,) = answers
        assert isinstance(answer, OSError), answer  # dropped, not answered
        print(f"\nexited {time.monotonic() - signalled:.1f} s after SIGTERM")
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()
