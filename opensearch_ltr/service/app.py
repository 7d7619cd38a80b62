"""The aiohttp application: ``POST /v1/rerank``, ``GET /health``, ``GET /ready``.

Every error is JSON: ``{"error": {"type": ..., "message": ...}}``. Status codes: 400 malformed
JSON, 401 missing or wrong API key, 413 over a size limit, 422 a wrong request shape or value,
503 not ready, overloaded or shutting down, 504 no answer within the timeout.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from haystack_llmrank.ranking import Ranking
from opensearch_ltr.service.batcher import RerankBatcher, RerankEngine, ServiceUnavailableError
from opensearch_ltr.service.config import ServiceConfig
from opensearch_ltr.service.protocol import (
    RequestError,
    RerankQuery,
    error_body,
    parse_rerank_request,
    rerank_response,
)

logger = logging.getLogger(__name__)

RERANK_PATH = "/v1/rerank"
PUBLIC_PATHS = frozenset({"/health", "/ready"})
RETRY_AFTER_S = "1"


@dataclass
class ServiceState:
    """Mutable state of a running service."""

    draining: bool = False


BATCHER = web.AppKey("batcher", RerankBatcher)
CONFIG = web.AppKey("config", ServiceConfig)
STATE = web.AppKey("state", ServiceState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_dumps = functools.partial(json.dumps, allow_nan=False)


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _unavailable(message: str) -> RequestError:
    return RequestError(503, "unavailable", message, {"Retry-After": RETRY_AFTER_S})


def presented_key(headers: Any) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>``, else ``x-api-key``."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return str(token.strip())
    key = headers.get("X-API-Key")
    return None if key is None else str(key)


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys``, compared in constant time (fixed-size digests)."""
    digest = hashlib.sha256(given.encode()).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
    return matched


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals, aiohttp's HTTP errors and crashes into JSON error responses."""
    try:
        return await handler(request)
    except RequestError as exc:
        return _json(exc.body(), exc.status, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        kind = exc.reason.lower().replace(" ", "_")
        return _json(error_body(kind, exc.reason), exc.status, allow)
    except Exception:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return _json(error_body("internal_error", "the request failed inside the service"), 500)


@web.middleware
async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests without a valid API key (health and readiness stay open)."""
    keys = request.app[CONFIG].api_keys
    if keys and request.path not in PUBLIC_PATHS:
        given = presented_key(request.headers)
        if given is None or not key_matches(given, keys):
            raise RequestError(
                401,
                "unauthorized",
                "missing or invalid API key; send 'Authorization: Bearer <key>' or 'x-api-key'",
                {"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves HTTP."""
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 once the model is loaded and warmed up, else 503."""
    batcher = request.app[BATCHER]
    if batcher.ready:
        return _json({"status": "ready", "model": request.app[CONFIG].model_name})
    if batcher.loaded.done():
        return _json({"status": "failed", "error": str(batcher.loaded.exception())}, 503)
    return _json({"status": "loading"}, 503, {"Retry-After": RETRY_AFTER_S})


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = RequestError(413, "too_large", f"the body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


async def _rank(batcher: RerankBatcher, query: RerankQuery) -> Ranking:
    if not query.documents:
        return Ranking((), (), ())
    try:
        future = batcher.submit(query.query, query.documents)
    except ServiceUnavailableError as exc:
        raise _unavailable(str(exc)) from None
    try:
        return await asyncio.wrap_future(future)
    except (ValueError, TypeError) as exc:
        raise RequestError(422, "invalid_request", str(exc)) from None


async def rerank(request: web.Request) -> web.Response:
    """Rank the request's documents for its query (see :mod:`opensearch_ltr.service.protocol`)."""
    config = request.app[CONFIG]
    if request.app[STATE].draining:
        raise _unavailable("the service is shutting down")
    if not request.app[BATCHER].ready:
        raise _unavailable("the model is not loaded yet")
    try:
        async with asyncio.timeout(config.timeout_s):
            query = parse_rerank_request(await _read_body(request, config.max_body_bytes), config)
            ranking = await _rank(request.app[BATCHER], query)
    except TimeoutError:
        raise RequestError(504, "timeout", f"no answer within {config.timeout_s:g} s") from None
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
    )
    app[BATCHER] = batcher
    app[CONFIG] = config
    app[STATE] = ServiceState()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post(RERANK_PATH, rerank)

    async def start_worker(app: web.Application) -> None:
        batcher.start()

    async def start_draining(app: web.Application) -> None:
        app[STATE].draining = True

    async def stop_worker(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, batcher.close, config.shutdown_grace_s
        )

    app.on_startup.append(start_worker)
    app.on_shutdown.append(start_draining)
    app.on_cleanup.append(stop_worker)
    if not config.api_keys:
        logger.warning("API key authentication is off: anyone who can reach the port can rerank")
    return app
