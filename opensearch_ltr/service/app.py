"""The aiohttp application: ``POST /v1/rerank``, ``GET /health``, ``GET /ready``.

Every error is JSON: ``{"error": {"type": ..., "message": ...}}``. Status codes: 400 malformed
JSON or an unreadable body, 401 missing or wrong API key, 413 over a size limit, 415 a
``Content-Encoding`` other than gzip, deflate or identity, 417 an ``Expect`` other than
``100-continue`` (which is granted only once the key and the declared size pass), 422 a wrong
request shape or value, 503 not ready, overloaded or shutting down, 504 no answer within the
timeout (an engine's own ``TimeoutError`` is a 500). Errors caused by the client are not
logged above DEBUG.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import HttpVersion11, web

from haystack_llmrank.errors import PromptTooLongError
from haystack_llmrank.ranking import Ranking
from opensearch_ltr.ml_commons_blueprints import RERANK_PATH
from opensearch_ltr.service.batcher import (
    RerankBatcher,
    RerankEngine,
    ServiceUnavailableError,
    WorkerState,
)
from opensearch_ltr.service.config import ServiceConfig
from opensearch_ltr.service.protocol import (
    RequestError,
    RerankQuery,
    dumps,
    error_body,
    parse_rerank_request,
    rerank_response,
)

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/ready"})
RETRY_AFTER_S = "1"
CONTENT_ENCODINGS = ("gzip", "deflate", "identity")
"""The request body encodings read."""


@dataclass
class ServiceState:
    """Mutable state of a running service: whether it is shutting down, and the rerank
    requests it is answering (so that shutdown can wait for them, then cancel them)."""

    draining: bool = False
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)


BATCHER = web.AppKey("batcher", RerankBatcher)
CONFIG = web.AppKey("config", ServiceConfig)
STATE = web.AppKey("state", ServiceState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def presented_key(headers: Any) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>``, else ``x-api-key``."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return str(token.strip())
    key = headers.get("X-API-Key")
    return None if key is None else str(key)


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys``, compared in constant time (fixed-size digests).

    ``given`` may hold the surrogate escapes aiohttp decodes non-UTF-8 header bytes into.
    """
    digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
    return matched


def _refusal(request: web.Request, exc: RequestError) -> web.Response:
    """The JSON response for ``exc``, logged at DEBUG (the client's doing)."""
    logger.debug("%s %s: %d %s", request.method, request.path, exc.status, exc.message)
    return _json(exc.body(), exc.status, exc.headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals, aiohttp's HTTP errors and crashes into JSON error responses."""
    try:
        return await handler(request)
    except ServiceUnavailableError as exc:
        logger.debug("%s %s: 503 %s", request.method, request.path, exc)
        return _json(error_body("unavailable", str(exc)), 503, {"Retry-After": RETRY_AFTER_S})
    except RequestError as exc:
        return _refusal(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        kind = exc.reason.lower().replace(" ", "_")
        return _json(error_body(kind, exc.reason), exc.status, allow)
    except Exception:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return _json(error_body("internal_error", "the request failed inside the service"), 500)


def check_api_key(request: web.Request) -> None:
    """Raise a 401 :class:`RequestError` unless the request holds a valid API key (or the
    service has none)."""
    keys = request.app[CONFIG].api_keys
    if keys:
        given = presented_key(request.headers)
        if given is None or not key_matches(given, keys):
            raise RequestError(
                401,
                "unauthorized",
                "missing or invalid API key; send 'Authorization: Bearer <key>' or 'x-api-key'",
                {"WWW-Authenticate": "Bearer"},
            )


@web.middleware
async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests without a valid API key (health and readiness stay open)."""
    if request.path not in PUBLIC_PATHS:
        check_api_key(request)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 ``{"status": "ok"}``, unless the engine can never answer again (it
    failed to load, or its worker ended on an error): then 503 with the status ``failed`` or
    ``stopped``, so that a liveness probe restarts the service."""
    batcher = request.app[BATCHER]
    if batcher.dead:
        return _json({"status": str(batcher.state)}, 503)
    return _json({"status": "ok"})


def _readiness(app: web.Application) -> str:
    return "draining" if app[STATE].draining else str(app[BATCHER].state)


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 ``{"status": "ready"}`` while a rerank request would be taken.

    Otherwise 503 with the status ``loading``, ``saturated`` (the queue is full), ``stalled``
    (the engine has made no progress for ``timeout_s``), ``failed`` (the model did not load),
    ``stopped`` (the worker has ended) or ``draining`` (shutting down). Nothing else is told:
    the endpoint needs no key.
    """
    status = _readiness(request.app)
    if status == WorkerState.READY:
        return _json({"status": status})
    headers = None if status == WorkerState.FAILED else {"Retry-After": RETRY_AFTER_S}
    return _json({"status": status}, 503, headers)


def _too_large(limit: int) -> RequestError:
    return RequestError(413, "too_large", f"the body is larger than {limit} bytes")


def _check_declared_size(request: web.Request, limit: int) -> None:
    """Raise 413 if the request's ``Content-Length`` is over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only once the API key, the declared size and the
    encoding pass, so that a refused client sends no body; refuse any other expectation
    (417)."""
    if request.version != HttpVersion11:
        return None
    try:
        check_api_key(request)
        _check_declared_size(request, request.app[CONFIG].max_body_bytes)
        _check_content_type(request)
        _check_encoding(request)
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            raise RequestError(417, "expectation_failed", f"unsupported Expect: {expect[:40]}")
    except RequestError as exc:
        refusal = _refusal(request, exc)
        refusal.force_close()  # the body, if the client sends it anyway, is not read
        return refusal
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the response proper has not started
    return None


def _check_encoding(request: web.Request) -> None:
    """Raise 415 for a ``Content-Encoding`` the service does not read (aiohttp would read an
    unknown one as plain); an empty one is plain."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower() or "identity"
    if encoding not in CONTENT_ENCODINGS:
        raise unsupported_encoding(encoding)


def unsupported_encoding(encoding: str) -> RequestError:
    """The 415 refusal of a request body in ``encoding``, one not in
    :data:`CONTENT_ENCODINGS`."""
    return RequestError(
        415,
        "unsupported_media_type",
        f"Content-Encoding {encoding[:40]!r} is not supported; use " + ", ".join(CONTENT_ENCODINGS),
    )


def _check_content_type(request: web.Request) -> None:
    """Raise 415 for a body declared other than JSON (``application/json`` or a ``+json``
    type); none declared reads as JSON. A browser sends a page's cross-site ``text/plain``
    or form posts without asking first, so those must not queue work."""
    if "Content-Type" not in request.headers:
        return
    kind = request.content_type.lower()
    if kind != "application/json" and not (
        kind.startswith("application/") and kind.endswith("+json")
    ):
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type {kind[:60]!r} is not JSON; send Content-Type: application/json",
        )


async def _read_body(request: web.Request, limit: int) -> bytes:
    _check_content_type(request)
    _check_encoding(request)
    _check_declared_size(request, limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except web.RequestPayloadError as exc:
        message = str(exc).splitlines()[-1].strip()
        raise RequestError(400, "unreadable_body", f"the body cannot be read: {message}") from None
    except ConnectionError:
        raise RequestError(
            400, "incomplete_body", "the client left before the body ended"
        ) from None


async def _rank(batcher: RerankBatcher, query: RerankQuery) -> Ranking:
    """The ranking of the request's documents; blank ones follow the others
    (:mod:`haystack_llmrank.blank_passages`)."""
    future = batcher.submit(query.query, query.texts, query.depth)
    try:
        return await asyncio.wrap_future(future)
    except PromptTooLongError as exc:  # the request's own content; others are the model's
        raise RequestError(422, "invalid_request", str(exc)) from None


async def rerank(request: web.Request) -> web.Response:
    """Rank the request's documents for its query (see :mod:`opensearch_ltr.service.protocol`).

    Leaving (a timeout, a client that disconnects) cancels the queued or running work.
    """
    config, state = request.app[CONFIG], request.app[STATE]
    if state.draining:
        raise ServiceUnavailableError("the service is shutting down")
    request.app[BATCHER].check_ready()
    task = asyncio.current_task()
    assert task is not None
    state.in_flight.add(task)
    deadline = asyncio.timeout(config.timeout_s)
    try:
        async with deadline:
            query = parse_rerank_request(await _read_body(request, config.max_body_bytes), config)
            ranking = await _rank(request.app[BATCHER], query)
    except TimeoutError:
        if not deadline.expired():
            raise  # the engine's own: a fault, answered 500 and logged
        raise RequestError(504, "timeout", f"no answer within {config.timeout_s:g} s") from None
    finally:
        state.in_flight.discard(task)
    return _json(rerank_response(query, ranking, uuid.uuid4().hex))


def create_app(factory: Callable[[], RerankEngine], config: ServiceConfig) -> web.Application:
    """The service for the engine ``factory`` builds; its worker starts with the app."""
    app = web.Application(
        middlewares=[json_errors, require_api_key], client_max_size=config.max_body_bytes
    )
    batcher = RerankBatcher(
        factory,
        max_batch_requests=config.max_batch_requests,
        max_pending_requests=config.max_pending_requests,
        stall_after_s=config.timeout_s,
    )
    app[BATCHER] = batcher
    app[CONFIG] = config
    app[STATE] = ServiceState()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post(RERANK_PATH, rerank, expect_handler=expect_continue)

    async def start_worker(app: web.Application) -> None:
        batcher.start()

    async def start_draining(app: web.Application) -> None:
        app[STATE].draining = True

    async def stop_worker(app: web.Application) -> None:
        stopped = await asyncio.get_running_loop().run_in_executor(
            None, batcher.close, config.shutdown_grace_s
        )
        if not stopped:
            logger.warning(
                "the engine is still loading or in a forward pass; exit waits for it to end"
            )

    app.on_startup.append(start_worker)
    app.on_shutdown.append(start_draining)
    app.on_cleanup.append(stop_worker)
    if not config.api_keys:
        logger.warning("API key authentication is off: anyone who can reach the port can rerank")
    return app
