"""One worker thread owns the model and ranks waiting requests together.

The worker builds the engine, warms it up with one tiny request, then loops: it takes the
oldest waiting request plus every other one already waiting (up to ``max_batch_requests``)
and ranks them in a single ``rerank_many`` call, so the engine batches their windows
together; a request the engine's ``check_request`` refuses (a query too long for any
prompt) gets its error without joining the batch. The model only ever runs on this
thread. Requests that waited for the model are batched naturally: nothing is delayed on
purpose.

A request whose future is cancelled (as ``asyncio.wrap_future`` does when the awaiting task
is cancelled: a timeout, a client that left, shutdown) is abandoned: the worker drops it
before it starts, and stops a batch between two forward passes once every request in it is
abandoned. A batch that still holds a wanted request runs to its end.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Protocol

from haystack_llmrank.ranking import Ranking
from opensearch_ltr.service.config import ServiceConfig

logger = logging.getLogger(__name__)

WARM_UP_REQUEST = ("warm-up query", ("warm-up passage",))


class RerankEngine(Protocol):
    """What the batcher needs of :class:`haystack_llmrank.reranker.Reranker`."""

    def rerank_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        *,
        top_k: Sequence[int | None] | None = None,
        on_window: Callable[[int], None] | None = None,
    ) -> list[Ranking]:
        """Rank many queries' passages in one call; only each request's first ``top_k``
        positions need ranking; ``on_window`` runs after each forward pass (it may raise to stop
        the call) with the windows that pass finished. Requests may hold blank
        documents, or only blank ones: the service passes every document on, and the
        engine puts blank ones last (:mod:`haystack_llmrank.blank_passages`).

        An engine may also offer ``check_request(query, passages)``, raising without
        scoring an error ``rerank_many`` would surely raise for that request (a query too
        long for any prompt: :class:`~haystack_llmrank.errors.PromptTooLongError`), as
        :class:`~haystack_llmrank.reranker.Reranker` does: such a request is then answered
        without holding up its batch."""
        ...


class ServiceUnavailableError(RuntimeError):
    """The batcher takes no more requests now: it is full, stalled, closed, or has no model."""


class WorkerState(enum.StrEnum):
    """What the worker can do for a new request now; only ``READY`` accepts one."""

    LOADING = "loading"
    READY = "ready"
    SATURATED = "saturated"
    """``max_pending_requests`` wanted requests are already waiting."""
    STALLED = "stalled"
    """The current batch has finished no forward pass for longer than ``stall_after_s``."""
    FAILED = "failed"
    """The engine failed to load."""
    STOPPED = "stopped"
    """Closed, or the worker thread has ended (:attr:`RerankBatcher.dead` if not closed)."""


class _BatchAbandonedError(Exception):
    """Raised between forward passes to stop a batch whose requests are all abandoned."""


@dataclass
class _Job:
    query: str
    passages: tuple[str, ...]
    top_k: int | None = None
    future: Future[Ranking] = field(default_factory=Future)

    @property
    def wanted(self) -> bool:
        return not self.future.cancelled()

    def resolve(self, outcome: Ranking | BaseException) -> None:
        """Set the ranking or error, unless the caller has abandoned the job meanwhile."""
        try:
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)
        except InvalidStateError:
            pass  # cancelled by the caller in the meantime: nobody waits for it


class RerankBatcher:
    """Queue in front of an engine that a single worker thread builds and runs.

    ``factory`` builds the engine on the worker thread. :attr:`loaded` resolves once the
    engine answered a warm-up request (or holds the error that stopped it). :attr:`state`
    says whether a new request would be taken. The worker is not a daemon thread: the
    process waits for it to finish its current forward pass, never killing it inside the model.
    """

    def __init__(
        self,
        factory: Callable[[], RerankEngine],
        *,
        max_batch_requests: int = ServiceConfig.max_batch_requests,
        max_pending_requests: int = ServiceConfig.max_pending_requests,
        stall_after_s: float = ServiceConfig.timeout_s,
    ) -> None:
        if max_batch_requests < 1 or max_pending_requests < 1:
            raise ValueError("max_batch_requests and max_pending_requests must be positive")
        if not stall_after_s > 0:
            raise ValueError(f"stall_after_s must be positive, got {stall_after_s}")
        self._factory = factory
        self._max_batch = max_batch_requests
        self._max_pending = max_pending_requests
        self._stall_after_s = stall_after_s
        self._queue: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._close_called = False
        self._progress_at: float | None = None
        """When the running batch started or last finished a forward pass; ``None`` when idle."""
        self._parked = False
        """Whether the worker waits for work (under ``_changed``), so a close ends it at once."""
        self._thread = threading.Thread(target=self._work, name="llmrank-engine")
        self.loaded: Future[None] = Future()

    @property
    def state(self) -> WorkerState:
        """Whether a request submitted now would be taken, and if not, why."""
        if not self.loaded.done():
            return WorkerState.LOADING
        if self.loaded.exception() is not None:
            return WorkerState.FAILED
        if self._closed or not self._thread.is_alive():
            return WorkerState.STOPPED
        progress = self._progress_at
        if progress is not None and time.monotonic() - progress > self._stall_after_s:
            return WorkerState.STALLED
        if self.pending >= self._max_pending:
            return WorkerState.SATURATED
        return WorkerState.READY

    @property
    def dead(self) -> bool:
        """Whether no request will ever be taken again though :meth:`close` was not called:
        the engine failed to load, or the worker ended on an error (which it logged)."""
        state = self.state
        return state is WorkerState.FAILED or (
            state is WorkerState.STOPPED and not self._close_called
        )

    @property
    def pending(self) -> int:
        """Wanted requests waiting for the worker (not counting the batch it is ranking)."""
        with self._changed:
            return sum(job.wanted for job in self._queue)

    def start(self) -> None:
        """Start the worker thread, which builds and warms up the engine."""
        self._thread.start()

    def submit(
        self, query: str, passages: Sequence[str], top_k: int | None = None
    ) -> Future[Ranking]:
        """Queue one request; the future resolves with its ranking or the engine's error.

        With ``top_k``, only the first ``top_k`` positions need to be ranked (the strategy
        may leave the rest in input order).

        Cancel the future to abandon the request. Raises :class:`ServiceUnavailableError`
        unless :attr:`state` is ``READY``.
        """
        job = _Job(query, tuple(passages), top_k)
        with self._changed:
            self._queue = deque(queued for queued in self._queue if queued.wanted)
            self.check_ready()
            self._queue.append(job)
            self._changed.notify()
        return job.future

    def check_ready(self) -> None:
        """Raise :class:`ServiceUnavailableError`, saying why, unless :attr:`state` is ``READY``."""
        refusals = {
            WorkerState.LOADING: "the model is not loaded yet",
            WorkerState.SATURATED: f"{self._max_pending} requests are already waiting",
            WorkerState.STALLED: (
                f"the engine has finished no forward pass for over {self._stall_after_s:g} s"
            ),
            WorkerState.FAILED: "the model failed to load",
            WorkerState.STOPPED: (
                "the service is shutting down"
                if self._close_called
                else "the rerank worker stopped on an error; restart the service"
            ),
        }
        state = self.state
        if state is not WorkerState.READY:
            raise ServiceUnavailableError(refusals[state])

    def close(self, timeout: float | None = None) -> bool:
        """Take no new requests, let the worker rank the wanted queued ones, and wait for it.

        Returns whether the worker has stopped within ``timeout`` seconds (at most
        :data:`threading.TIMEOUT_MAX`).
        """
        with self._changed:
            self._closed = self._close_called = True
            # a parked worker with nothing to rank wakes only to end: wait for that, however
            # short the timeout
            ending = self._parked and not any(job.wanted for job in self._queue)
            self._changed.notify()
        if self._thread.is_alive():
            limit = None if timeout is None or ending else min(timeout, threading.TIMEOUT_MAX)
            self._thread.join(limit)
        return not self._thread.is_alive()

    def _work(self) -> None:
        engine = self._load()
        if engine is None:
            return
        try:
            while (batch := self._next_batch()) is not None:
                self._rank(engine, batch)
        except BaseException:  # SystemExit from the engine, say: every request is answered
            logger.exception("the rerank worker stopped")
        finally:
            with self._changed:
                self._closed = True
                left, self._queue = list(self._queue), deque()
            for job in left:
                job.resolve(ServiceUnavailableError("the rerank worker stopped"))

    def _load(self) -> RerankEngine | None:
        started = time.perf_counter()
        try:
            engine = self._factory()
            if not self._closed:  # closed while loading: no warm-up to wait for
                engine.rerank_many([WARM_UP_REQUEST])
        except BaseException as exc:  # SystemExit too: the worker ends, and says why
            logger.exception("the rerank engine failed to load")
            self.loaded.set_exception(exc)
            return None
        logger.info("rerank engine ready in %.1f s", time.perf_counter() - started)
        self.loaded.set_result(None)
        return engine

    def _next_batch(self) -> list[_Job] | None:
        """The wanted jobs to rank next, oldest first; ``None`` once closed and drained."""
        with self._changed:
            while True:
                wanted = [job for job in self._queue if job.wanted]
                if wanted:
                    batch = wanted[: self._max_batch]
                    self._queue = deque(wanted[self._max_batch :])
                    return batch
                self._queue.clear()
                if self._closed:
                    return None
                self._parked = True
                self._changed.wait()
                self._parked = False

    def _rank(self, engine: RerankEngine, jobs: list[_Job]) -> None:
        """Rank a batch in one engine call, less the requests the engine's check refuses
        (answered with its error at once). If the call fails anyway, each request still
        waited for is ranked alone, so that only the faulty one gets the error."""
        try:
            checked = [job for job in jobs if self._passes_check(engine, job)]
            if checked and not self._call(engine, checked):
                for job in checked:
                    if not job.future.done():
                        self._call(engine, [job])
        except BaseException:  # the worker stops: answer every request of the batch
            for job in jobs:
                job.resolve(ServiceUnavailableError("the rerank worker stopped"))
            raise

    @staticmethod
    def _passes_check(engine: RerankEngine, job: _Job) -> bool:
        """Whether the engine's ``check_request``, where it has one, passes ``job``; if not,
        ``job`` gets its error."""
        check = getattr(engine, "check_request", None)
        if check is None:
            return True
        try:
            check(job.query, job.passages)
        except Exception as exc:
            job.resolve(exc)
            return False
        return True

    def _call(self, engine: RerankEngine, jobs: list[_Job]) -> bool:
        """Rank ``jobs`` in one engine call and answer them; ``False`` if the call failed
        for several jobs, which are left unanswered (a lone job gets the error)."""

        def between_passes(count: int) -> None:
            self._progress_at = time.monotonic()
            if not any(job.wanted for job in jobs):
                raise _BatchAbandonedError

        self._progress_at = time.monotonic()
        try:
            rankings = engine.rerank_many(
                [(job.query, job.passages) for job in jobs],
                top_k=[job.top_k for job in jobs],
                on_window=between_passes,
            )
            if len(rankings) != len(jobs):
                raise RuntimeError(f"the engine answered {len(rankings)} of {len(jobs)} requests")
        except _BatchAbandonedError:
            logger.info(
                "stopped a batch of %d abandoned requests between forward passes", len(jobs)
            )
            return True
        except Exception as exc:
            if len(jobs) > 1:
                logger.debug("a batch of %d failed (%s); ranking them one by one", len(jobs), exc)
                return False
            jobs[0].resolve(exc)
            return True
        finally:
            self._progress_at = None
        for job, ranking in zip(jobs, rankings, strict=True):
            job.resolve(ranking)
        return True
