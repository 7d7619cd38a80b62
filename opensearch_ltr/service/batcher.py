"""One worker thread owns the model and ranks waiting requests together.

The worker builds the engine, warms it up with one tiny request, then loops: it takes the
oldest waiting request plus every other one already waiting (up to ``max_batch_requests``)
and ranks them in a single ``rerank_many`` call, so the engine batches their windows
together. The model only ever runs on this thread. Requests that waited for the model are
batched naturally: nothing is delayed on purpose.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from haystack_llmrank.ranking import Ranking

logger = logging.getLogger(__name__)

WARM_UP_REQUEST = ("warm-up query", ("warm-up passage",))


class RerankEngine(Protocol):
    """What the batcher needs of :class:`haystack_llmrank.reranker.Reranker`."""

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        """Rank many queries' passages in one call."""
        ...


class ServiceUnavailableError(RuntimeError):
    """The batcher takes no more requests now: it is full, closed, or has no model."""


@dataclass
class _Job:
    query: str
    passages: tuple[str, ...]
    future: Future[Ranking] = field(default_factory=Future)


class RerankBatcher:
    """Queue in front of an engine that a single worker thread builds and runs.

    ``factory`` builds the engine on the worker thread. :attr:`loaded` resolves once the
    engine answered a warm-up request (or holds the error that stopped it).
    """

    def __init__(
        self,
        factory: Callable[[], RerankEngine],
        *,
        max_batch_requests: int = 16,
        max_pending_requests: int = 256,
    ) -> None:
        if max_batch_requests < 1 or max_pending_requests < 1:
            raise ValueError("max_batch_requests and max_pending_requests must be positive")
        self._factory = factory
        self._max_batch = max_batch_requests
        self._max_pending = max_pending_requests
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="llmrank-engine", daemon=True)
        self.loaded: Future[None] = Future()

    @property
    def ready(self) -> bool:
        """True once the engine is built and warmed up."""
        return self.loaded.done() and self.loaded.exception() is None

    @property
    def pending(self) -> int:
        """Requests waiting for the worker (not counting the batch it is ranking)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker thread, which builds and warms up the engine."""
        self._thread.start()

    def submit(self, query: str, passages: Sequence[str]) -> Future[Ranking]:
        """Queue one request; the future resolves with its ranking or the engine's error.

        Raises :class:`ServiceUnavailableError` when closed, not ready, or
        ``max_pending_requests`` are already waiting.
        """
        job = _Job(query, tuple(passages))
        with self._lock:
            if self._closed:
                raise ServiceUnavailableError("the service is shutting down")
            if not self.ready:
                raise ServiceUnavailableError("the model is not loaded")
            if self._queue.qsize() >= self._max_pending:
                raise ServiceUnavailableError(
                    f"{self._max_pending} requests are already waiting; retry later"
                )
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, let the worker finish the queued ones, and wait for it."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        engine = self._load()
        if engine is None:
            return
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._rank(engine, live)

    def _load(self) -> RerankEngine | None:
        started = time.perf_counter()
        try:
            engine = self._factory()
            engine.rerank_many([WARM_UP_REQUEST])
        except Exception as exc:
            logger.exception("the rerank engine failed to load")
            self.loaded.set_exception(exc)
            return None
        logger.info("rerank engine ready in %.1f s", time.perf_counter() - started)
        self.loaded.set_result(None)
        return engine

    def _next_batch(self) -> tuple[list[_Job], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _rank(self, engine: RerankEngine, jobs: list[_Job]) -> None:
        try:
            rankings = engine.rerank_many([(job.query, job.passages) for job in jobs])
            if len(rankings) != len(jobs):
                raise RuntimeError(f"the engine answered {len(rankings)} of {len(jobs)} requests")
        except Exception as exc:
            if len(jobs) > 1:
                logger.warning("a batch of %d requests failed; ranking them one by one", len(jobs))
                for job in jobs:
                    self._rank(engine, [job])
                return
            logger.warning("a rerank request failed: %s", exc, exc_info=True)
            jobs[0].future.set_exception(exc)
            return
        for job, ranking in zip(jobs, rankings, strict=True):
            job.future.set_result(ranking)
