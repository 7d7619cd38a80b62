"""Rescore OpenSearch searches with the llmrank engine, through the user's own client.

One search runs as a fixed series of steps, written once (:meth:`_RescorerBase._steps`) and
driven by :class:`LlmRescorer` (``OpenSearch``) or :class:`AsyncLlmRescorer`
(``AsyncOpenSearch``, the engine in a worker thread):

1. first pass: the user's body with ``from: 0`` and ``size: window_size + from + size``;
2. the engine ranks the passages of the top ``window_size`` hits, given their first-pass
   scores (an engine that fuses, as the default model does, fuses its ranking with theirs);
3. ``apply="client"``: the scores are combined here (:mod:`opensearch_ltr.rescore`);
   ``apply="server"``: one more search carries them in a ``rescore`` clause and the cluster
   combines them (:mod:`opensearch_ltr.server_applied_rescore`). Both combine the spec and values of
   :func:`~opensearch_ltr.rescore.break_ties`, so both give the same hits and scores.

Requests: everything that can be checked is checked before the engine runs: the body, page
and limits before any search (:class:`RescoreRequestError`); the first-pass hits and the
server-applied clause count right after the first pass.

Faults: a failed first pass always raises :class:`SearchFailedError`. A failed rerank
(:class:`RerankError`: engine error, or hits without text under ``missing_text="raise"``) or a
failed server-applied search raises with ``on_error="raise"``; with ``on_error="fail_open"``
the first-pass page is returned with ``llmrank.fail_open = true`` and the reason. Request
errors are always raised, and so is a query too long for the engine's prompt budget
(:class:`RescoreRequestError`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from opensearchpy.exceptions import OpenSearchException, RequestError

from haystack_llmrank.blank_passages import is_blank
from haystack_llmrank.errors import PromptTooLongError
from haystack_llmrank.ranking import Ranking
from opensearch_ltr.errors import (
    MissingTextError,
    RerankError,
    RescoreError,
    RescoreRequestError,
    SearchFailedError,
)
from opensearch_ltr.passages import DEFAULT_SEPARATOR, PassageFields
from opensearch_ltr.query_text import extract_query_text
from opensearch_ltr.request import (
    MAX_RESULT_WINDOW,
    check_body,
    check_fetch,
    check_filter_path,
    check_search_kwargs,
    fetch_size,
    first_pass_body,
    resolve_page,
    stable_preference,
)
from opensearch_ltr.rescore import (
    RescoreSpec,
    ScoreMode,
    break_ties,
    check_engine_counts,
    rescore,
    to_float32,
)
from opensearch_ltr.response import (
    EngineWindow,
    LlmrankInfo,
    check_hits,
    client_page,
    first_pass_page,
    hit_key,
    hits_of,
    server_page,
)
from opensearch_ltr.server_applied_rescore import (
    MAX_CLAUSE_COUNT,
    check_clause_count,
    clause_count,
    fewest_clauses,
    server_rescore_body,
)
from opensearch_ltr.transforms import (
    NON_NEGATIVE_TRANSFORMS,
    ScoreTransform,
    check_transform,
    rescore_values,
)

logger = logging.getLogger(__name__)

OnError = Literal["raise", "fail_open"]
MissingText = Literal["raise", "empty"]
Apply = Literal["client", "server"]


class PassageReranker(Protocol):
    """What the rescorer needs from the engine (:class:`haystack_llmrank.Reranker`)."""

    def rerank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_k: int | None = None,
        first_stage_scores: Sequence[float] | None = None,
    ) -> Ranking:
        """Rank ``passages`` for ``query``; only the first ``top_k`` positions matter.
        ``first_stage_scores`` are the hits' first-pass scores, for an engine that fuses its
        ranking with the first stage's."""
        ...


@dataclass(frozen=True)
class _Request:
    """A step: one ``search`` call on the client."""

    stage: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Compute:
    """A step: CPU work (the engine), run in a worker thread by the async driver."""

    run: Callable[[], Any]


@dataclass(frozen=True)
class _Search:
    """One validated search request."""

    index: Any
    body: Mapping[str, Any]
    from_: int
    size: int
    fetch: int
    apply: Apply
    query_text: str | None
    kwargs: dict[str, Any]


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


_Step = _Request | _Compute
_Steps = Generator[_Step, Any, dict[str, Any]]


def _advance(steps: _Steps, value: Any, error: RescoreError | None) -> _Step | dict[str, Any]:
    """Send the last step's result (or throw its error) in; the next step, or the response."""
    try:
        return steps.throw(error) if error is not None else steps.send(value)
    except StopIteration as stop:
        response: dict[str, Any] = stop.value
        return response


def _warn_partial(response: Mapping[str, Any], stage: str) -> None:
    """Log a warning when ``response`` misses shards or timed out: its window is then the top
    of the hits that came back, as OpenSearch's own rescore would take it."""
    shards = response.get("_shards")
    failed = shards.get("failed", 0) if isinstance(shards, Mapping) else 0
    if failed or response.get("timed_out"):
        logger.warning(
            "the %s search is partial (%s shard(s) failed%s): its hits are reranked as they are",
            stage,
            failed,
            ", timed out" if response.get("timed_out") else "",
        )


def _search_failed(step: _Request, error: OpenSearchException) -> RescoreError:
    """The error a failed search raises: a server-applied search the cluster refused as bad
    (400) is the request's fault, raised whatever ``on_error``; anything else is the
    cluster's (:class:`SearchFailedError`)."""
    if step.stage == "server_rescore" and isinstance(error, RequestError):
        return RescoreRequestError(
            f"the cluster refused the server-applied search: {_describe(error)}"
        )
    return SearchFailedError(step.stage, _describe(error))


class _RescorerBase:
    """Configuration and the steps of one rescored search, shared by both drivers."""

    _awaits_client: ClassVar[bool] = False
    """Whether the driver awaits the client's ``search`` (``AsyncOpenSearch``)."""

    def __init__(
        self,
        client: Any,
        reranker: PassageReranker,
        *,
        text_fields: Sequence[str] = ("text",),
        title_field: str | None = None,
        separator: str = DEFAULT_SEPARATOR,
        window_size: int = 20,
        query_weight: float = 0.0,
        rescore_query_weight: float = 1.0,
        score_mode: ScoreMode = "total",
        score_transform: ScoreTransform = "rank",
        missing_text: MissingText = "raise",
        on_error: OnError = "raise",
        max_result_window: int = MAX_RESULT_WINDOW,
        max_clause_count: int = MAX_CLAUSE_COUNT,
        model_name: str | None = None,
    ) -> None:
        """Configure the stage.

        :param client: the user's ``OpenSearch`` (or ``AsyncOpenSearch``) client.
        :param reranker: the engine, e.g. ``Reranker.from_pretrained()``.
        :param text_fields: ``_source`` fields joined into each hit's passage.
        :param title_field: a ``_source`` field put before the text fields.
        :param separator: joins title and text fields.
        :param window_size: first-pass hits reranked (over the merged result, not per shard).
        :param query_weight: weight of the first-pass score (OpenSearch's ``query_weight``).
            The default 0 ranks the window purely by the engine, then the rest in first-pass
            order: it is applied as a vanishing ``2**-k`` (see
            :func:`~opensearch_ltr.rescore.break_ties`), so window hits keep their scores and
            the rest score ``first_pass * 2**-k``, tiny, positive and in first-pass order.
        :param rescore_query_weight: weight of the engine's value; positive.
        :param score_mode: ``total``, ``multiply``, ``avg``, ``max`` or ``min``; ``multiply``
            and ``min`` need ``query_weight > 0`` (with 0, every hit would score 0).
        :param score_transform: ``rank``, ``minmax`` or ``logit`` (see
            :mod:`opensearch_ltr.transforms`).
        :param missing_text: a window hit without any text field: ``"raise"``
            (:class:`MissingTextError`) or ``"empty"`` (ranked on its title, or without
            one after the hits the model judged, and listed in ``llmrank.missing_text``).
        :param on_error: ``"raise"`` or ``"fail_open"`` (see the module docstring).
        :param max_result_window: the indices' ``index.max_result_window``.
        :param max_clause_count: the cluster's ``indices.query.bool.max_clause_count``:
            server-applied rescoring needs ``window_size`` clauses plus one per index.
        :param model_name: reported in ``llmrank.model`` (default: the reranker's ``model_name``).
        """
        search = getattr(client, "search", None)
        # opensearch-py wraps its async methods in plain functions: look beneath the wrapper
        awaited = callable(search) and inspect.iscoroutinefunction(inspect.unwrap(search))
        if not callable(search) or awaited != self._awaits_client:
            kind = "an AsyncOpenSearch" if self._awaits_client else "an OpenSearch"
            other = "LlmRescorer" if self._awaits_client else "AsyncLlmRescorer"
            raise TypeError(
                f"{type(self).__name__} needs {kind} client (its search awaited or not); "
                f"got {type(client).__name__}: use {other} for it"
            )
        self.client = client
        self.reranker = reranker
        self.fields = PassageFields.of(text_fields, title_field, separator)
        self.spec = RescoreSpec(window_size, query_weight, rescore_query_weight, score_mode)
        check_engine_counts(self.spec)
        check_transform(score_transform)
        if score_transform == "logit" and to_float32(query_weight) == 0:
            raise ValueError(
                "score_transform 'logit' with query_weight 0 would put window hits with a "
                "negative logit below the hits past the window; set query_weight > 0, or "
                "use 'rank' or 'minmax'"
            )
        if missing_text not in ("raise", "empty"):
            raise ValueError(f"missing_text must be 'raise' or 'empty', got {missing_text!r}")
        if on_error not in ("raise", "fail_open"):
            raise ValueError(f"on_error must be 'raise' or 'fail_open', got {on_error!r}")
        self.score_transform = score_transform
        self.missing_text = missing_text
        self.on_error = on_error
        self.max_result_window = max_result_window
        self.max_clause_count = max_clause_count
        self.model_name = model_name or getattr(reranker, "model_name", None)
        self._lock = threading.Lock()
        # the async driver's engine thread: a search cancelled while it waits there (a
        # timeout) is dropped before it reaches the engine; started on first use
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrank-rescorer")

    def _prepare(
        self,
        index: Any,
        body: Any,
        from_: int | None,
        size: int | None,
        apply: Apply,
        query_text: str | None,
        search_kwargs: dict[str, Any],
    ) -> _Search:
        check_body(body)
        check_search_kwargs(search_kwargs)
        title = [self.fields.title_field] if self.fields.title_field else []
        check_filter_path(search_kwargs, [*title, *self.fields.text_fields])
        if apply not in ("client", "server"):
            raise RescoreRequestError(f"apply must be 'client' or 'server', got {apply!r}")
        if apply == "server":
            if self.score_transform not in NON_NEGATIVE_TRANSFORMS:
                raise RescoreRequestError(
                    f"score_transform {self.score_transform!r} can be negative; server-applied "
                    f"rescoring needs one of {NON_NEGATIVE_TRANSFORMS}"
                )
            check_clause_count(fewest_clauses(self.spec.window_size), self.max_clause_count)
        start, count = resolve_page(body, from_, size)
        fetch = fetch_size(self.spec.window_size, start, count)
        check_fetch(fetch, self.max_result_window)
        text = None
        if fetch:
            text = query_text if query_text is not None else extract_query_text(body)
            if not isinstance(text, str) or is_blank(text):
                raise RescoreRequestError(f"query_text must be a non-empty string, got {text!r}")
        kwargs = dict(search_kwargs)
        params = kwargs.get("params")
        chosen = "preference" in kwargs or (isinstance(params, Mapping) and "preference" in params)
        # a point in time pins the shard copies itself, and OpenSearch refuses a preference
        # beside it
        if not chosen and "pit" not in body:
            kwargs["preference"] = stable_preference(index, body)
        return _Search(index, body, start, count, fetch, apply, text, kwargs)

    def _info(self, search: _Search) -> LlmrankInfo:
        return LlmrankInfo(
            mode=search.apply,
            query_text=search.query_text,
            window_size=self.spec.window_size,
            score_transform=self.score_transform,
            model=self.model_name,
        )

    def _rerank(
        self,
        search: _Search,
        hits: list[dict[str, Any]],
        first_pass: list[float],
        info: LlmrankInfo,
    ) -> EngineWindow:
        """Rank the window's passages with the engine, given their first-pass scores (raises
        :class:`RerankError`)."""
        info.missing_text = [hit_key(h) for h in hits if not self.fields.texts(h)]
        if info.missing_text and self.missing_text == "raise":
            raise MissingTextError(info.missing_text, list(self.fields.text_fields))
        passages = [self.fields.passage(h) for h in hits]
        started = time.perf_counter()
        try:
            with self._lock:
                # The whole window: every page reruns it and must get the same order.
                ranking = self.reranker.rerank(
                    search.query_text or "", passages, first_stage_scores=first_pass
                )
        except PromptTooLongError as error:  # the request's own query: no page can show it
            raise RescoreRequestError(f"the query cannot be ranked: {error}") from error
        except Exception as error:
            raise RerankError(f"the engine failed: {_describe(error)}") from error
        finally:
            info.took_ms = round((time.perf_counter() - started) * 1000)
        if sorted(ranking.order) != list(range(len(passages))):
            raise RerankError(f"the engine ranked {len(ranking)} passages, not {len(passages)}")
        info.reranked = len(passages)
        ranks = {index: rank for rank, index in enumerate(ranking.order)}
        return EngineWindow(ranks, rescore_values(ranking, self.score_transform))

    def _fail_open(
        self,
        error: RescoreError,
        search: _Search,
        first: dict[str, Any],
        took: int,
        info: LlmrankInfo,
    ) -> dict[str, Any]:
        if self.on_error == "raise":
            raise error
        logger.warning("llmrank rescoring failed open: %s", error)
        info.fail_open, info.reason, info.reranked = True, str(error), 0
        return first_pass_page(first, search.from_, search.size, took, info)

    def _steps(self, search: _Search) -> _Steps:
        """The steps of one search; yields requests and engine work, returns the response."""
        request = {"index": search.index, **search.kwargs}
        first = yield _Request(
            "first_pass", {**request, "body": first_pass_body(search.body, search.fetch)}
        )
        info = self._info(search)
        _warn_partial(first, "first pass")
        took = int(first.get("took", 0))
        hits = hits_of(first)
        if not hits:
            return first_pass_page(first, search.from_, search.size, took, info)
        check_hits(hits)
        scores = [float(hit["_score"]) for hit in hits]
        window_hits = hits[: self.spec.window_size]
        if search.apply == "server":
            check_clause_count(clause_count(window_hits), self.max_clause_count)
        try:
            window: EngineWindow = yield _Compute(
                lambda: self._rerank(search, window_hits, scores[: len(window_hits)], info)
            )
        except RerankError as error:
            return self._fail_open(error, search, first, took + info.took_ms, info)
        took += info.took_ms
        spec, values = break_ties(self.spec, scores, window.values)
        if search.apply == "client":
            ranked = rescore(scores, values, spec)
            return client_page(first, ranked, spec, window, search.from_, search.size, took, info)
        body = server_rescore_body(
            search.body,
            window_hits,
            values,
            spec,
            from_=search.from_,
            size=search.size,
            max_clause_count=self.max_clause_count,
        )
        try:
            second = yield _Request("server_rescore", {**request, "body": body})
        except SearchFailedError as error:
            return self._fail_open(error, search, first, took, info)
        _warn_partial(second, "server-applied")
        took += int(second.get("took", 0))
        return server_page(second, first, window.ranks, search.from_, took, info)


class LlmRescorer(_RescorerBase):
    """Adds an LLM rerank stage to searches made with an ``opensearchpy.OpenSearch`` client.

    Usage:
    ```python
    from opensearchpy import OpenSearch
    from haystack_llmrank import Reranker
    from opensearch_ltr import LlmRescorer

    rescorer = LlmRescorer(OpenSearch("http://localhost:9200"), Reranker.from_pretrained())
    response = rescorer.search("passages", {"query": {"match": {"text": "what is a cat"}}})
    ```
    """

    def search(
        self,
        index: Any,
        body: Mapping[str, Any],
        *,
        from_: int | None = None,
        size: int | None = None,
        apply: Apply = "client",
        query_text: str | None = None,
        **search_kwargs: Any,
    ) -> dict[str, Any]:
        """Search ``index`` with ``body`` and rerank the top ``window_size`` hits.

        :param from_: first hit of the page (default: the body's ``from``, else 0).
        :param size: hits on the page (default: the body's ``size``, else 10).
        :param apply: ``"client"`` (combine here) or ``"server"`` (the cluster combines).
        :param query_text: the text the engine ranks for (default: found in the body).
        :param search_kwargs: passed to ``client.search`` (``request_timeout``,
            ``routing``, ``preference``...). Without ``preference``, a fixed string per query
            keeps every request of the query on the same shard copies. A ``filter_path`` must
            keep ``hits.hits._index``, ``_id``, ``_score`` and the passage's ``_source`` fields.
        """
        steps = self._steps(
            self._prepare(index, body, from_, size, apply, query_text, search_kwargs)
        )
        step = _advance(steps, None, None)
        while not isinstance(step, dict):
            try:
                value, error = self._run(step), None
            except RescoreError as failed:
                value, error = None, failed
            step = _advance(steps, value, error)
        return step

    def _run(self, step: _Step) -> Any:
        if isinstance(step, _Compute):
            return step.run()
        try:
            return self.client.search(**step.kwargs)
        except OpenSearchException as error:
            raise _search_failed(step, error) from error


class AsyncLlmRescorer(_RescorerBase):
    """:class:`LlmRescorer` for an ``opensearchpy.AsyncOpenSearch`` client.

    The engine runs in the rescorer's own worker thread, one window at a time, off the
    event loop and off its default executor. Searches wait their turn there, and one
    cancelled while it waits (a timeout) never reaches the engine.
    """

    _awaits_client = True

    async def search(
        self,
        index: Any,
        body: Mapping[str, Any],
        *,
        from_: int | None = None,
        size: int | None = None,
        apply: Apply = "client",
        query_text: str | None = None,
        **search_kwargs: Any,
    ) -> dict[str, Any]:
        """See :meth:`LlmRescorer.search`."""
        steps = self._steps(
            self._prepare(index, body, from_, size, apply, query_text, search_kwargs)
        )
        step = _advance(steps, None, None)
        while not isinstance(step, dict):
            try:
                value, error = await self._run(step), None
            except RescoreError as failed:
                value, error = None, failed
            step = _advance(steps, value, error)
        return step

    async def _run(self, step: _Step) -> Any:
        if isinstance(step, _Compute):
            context = contextvars.copy_context()  # the caller's, as asyncio.to_thread passes
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._worker, context.run, step.run)
        try:
            return await self.client.search(**step.kwargs)
        except OpenSearchException as error:
            raise _search_failed(step, error) from error
