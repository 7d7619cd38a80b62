"""Run the service on a TCP port until told to stop, then shut down gracefully.

The connections are aiohttp's, with three additions: each request head must be complete
within ``header_timeout_s``, at most ``max_connections`` are open at once, and malformed HTTP
is answered in the service's JSON error format. Errors a client causes are logged at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from opensearch_ltr.service.app import (
    BATCHER,
    CONFIG,
    CONTENT_ENCODINGS,
    RETRY_AFTER_S,
    STATE,
    ServiceState,
    unsupported_encoding,
)
from opensearch_ltr.service.protocol import dumps, error_body

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 75.0
"""An idle keep-alive connection closes after this long: longer than the 60 s after which the
HTTP client of ML Commons (AWS SDK defaults) drops an idle connection itself."""
CLIENT_ERRORS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)
"""Errors a client causes: logged at DEBUG, without a traceback."""


def _refusal_bytes() -> bytes:
    body = dumps(error_body("unavailable", "too many open connections; retry later")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _undecodable_coding(exc: BaseException | None) -> str | None:
    """The coding of a request that aiohttp's parser refused as one it knows but cannot
    decode here (``br`` or ``zstd`` without their modules), if ``exc`` is that refusal and
    the coding is not in :data:`CONTENT_ENCODINGS`; else None.

    aiohttp names the coding in parentheses: "Can not decode content-encoding: brotli (br)".
    """
    if not isinstance(exc, ContentEncodingError):
        return None
    found = re.search(r"\(([a-z0-9-]+)\)", str(exc.message))
    if found is None or found[1] in CONTENT_ENCODINGS:
        return None
    return found[1]


class _Connection(web.RequestHandler):
    """One client connection: aiohttp's handler with a head timeout and the connection cap.

    The head timer runs from the connection's opening, and again from the first byte of each
    later request that arrives while the connection is idle, until the request head is
    complete (bytes pipelined behind a running request are left to the idle timeout).
    """

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._counted = True
        self._guard.open_connections += 1
        if self._guard.open_connections > self._guard.max_connections:
            logger.info("refused a connection: %d are open", self._guard.max_connections)
            if self.transport is not None:
                self.transport.write(_refusal_bytes())
            self.force_close()
            return
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        if self._counted:
            self._counted = False
            self._guard.open_connections -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request and self._head_timer is None:
            self._start_head_timer()
        super().data_received(data)

    def head_received(self) -> None:
        """A complete request head arrived: its request runs until its response is sent."""
        self._stop_head_timer()
        self._in_request = True

    async def finish_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().finish_response(*args, **kwargs)
        finally:
            self._in_request = False

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        self.log_exception("malformed request", exc_info=exc)
        coding = _undecodable_coding(exc)
        if coding is not None:
            refusal = unsupported_encoding(coding)
            body, status = refusal.body(), refusal.status
        elif isinstance(exc, ContentEncodingError):
            text = "the Content-Encoding is not supported or does not match the body"
            body = error_body("bad_request", text)
        else:
            text = "malformed HTTP request: " + (message or "").strip().split("\n")[0]
            body = error_body("bad_request", text)
        response = web.json_response(body, status=status, dumps=dumps)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, CLIENT_ERRORS):
            logger.debug("a client error closed a connection: %s", str(error).strip())
        else:
            super().log_exception(*args, **kwargs)

    def _start_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._guard.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_request:
            logger.debug("closed a connection with no complete request head in time")
            self.force_close()


class _Server(web.Server):
    """aiohttp's low-level server, making :class:`_Connection` handlers."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        header_timeout_s: float,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        handler_kwargs = {
            name: value
            for name, value in kwargs.items()
            if name not in ("handler_cancellation", "loop")
        }
        super().__init__(handler, request_factory=self._start_request, **kwargs)
        self._make = request_factory
        self._handler_kwargs = handler_kwargs
        self._event_loop = asyncio.get_running_loop()
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.open_connections = 0

    def _start_request(self, message: Any, payload: Any, protocol: Any, *args: Any) -> Any:
        if isinstance(protocol, _Connection):
            protocol.head_received()
        return self._make(message, payload, protocol, *args)

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._event_loop, **self._handler_kwargs)


class _Runner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose server is a :class:`_Server`."""

    def __init__(
        self,
        app: web.Application,
        *,
        handle_signals: bool,
        shutdown_timeout: float,
        **server_kwargs: Any,
    ) -> None:
        super().__init__(
            app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, **server_kwargs
        )
        self._server_kwargs = server_kwargs

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        config = self.app[CONFIG]
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            header_timeout_s=config.header_timeout_s,
            max_connections=config.max_connections,
            **self._server_kwargs,
        )


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM; a second signal ends the process at once, by that
    signal, whatever threads are still running (the model's).

    Call from the running loop's thread.
    """
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("%s received again: stopping at once", sig.name)
            # die by the signal, as supervisors expect of one they sent (systemd counts a
            # SIGTERM death as clean, exit 143 as a failure), whatever threads still run
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)  # only if the signal did not end the process
        else:
            logger.info("%s received: shutting down (send it again to stop at once)", sig.name)
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, as ``host`` resolves)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family)


async def run_service(
    app: web.Application,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_listening: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set.

    Shutdown stops accepting connections, answers new requests on open ones 503 (``/ready``:
    ``draining``), lets in-flight rerank requests finish for up to the config's
    ``shutdown_grace_s``, then cancels them (their work stops after the engine's running
    forward pass) and stops the worker. A client that disconnects cancels its request the
    same way.
    ``on_listening`` receives the bound ``http://host:port`` URLs (useful with ``port=0``).
    Raises :class:`OSError` if ``host:port`` cannot be bound, before the app starts (so before
    the model loads), and :class:`RuntimeError` if the model fails to load.
    """
    batcher = app[BATCHER]
    loop = asyncio.get_running_loop()
    settled = asyncio.Event()

    def settle(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the model loaded
            loop.call_soon_threadsafe(settled.set)

    batcher.loaded.add_done_callback(settle)
    runner = _Runner(
        app,
        handle_signals=False,
        shutdown_timeout=app[CONFIG].shutdown_grace_s,
        handler_cancellation=True,
        keepalive_timeout=IDLE_TIMEOUT_S,
    )
    listening = _bind(host, port)  # a busy port fails here, before the model starts loading
    try:
        await runner.setup()
    except BaseException:
        listening.close()
        raise
    try:
        site = web.SockSite(runner, listening)
        await site.start()
        urls = [_url(address[0], address[1]) for address in runner.addresses]
        logger.info("serving on %s", ", ".join(urls))
        if on_listening is not None:
            on_listening(urls)
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(settled.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        error = batcher.loaded.exception() if batcher.loaded.done() else None
        if error is not None:
            raise RuntimeError(f"the model failed to load: {error}") from error
        await stop.wait()
        logger.info("shutting down: finishing in-flight requests")
        await site.stop()  # new connections are refused; open ones are answered "draining"
        await _drain(app[STATE], app[CONFIG].shutdown_grace_s)
    finally:
        await runner.cleanup()


async def _drain(state: ServiceState, grace_s: float) -> None:
    """Refuse new rerank requests, wait up to ``grace_s`` for those in flight, cancel the rest."""
    state.draining = True
    if not state.in_flight:
        return
    _, late = await asyncio.wait(set(state.in_flight), timeout=grace_s)
    for task in late:
        task.cancel()
    if late:
        logger.warning("cancelled %d requests still running after %g s", len(late), grace_s)


def _url(host: str, port: int) -> str:
    """The ``http://`` address of ``host`` and ``port``, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
