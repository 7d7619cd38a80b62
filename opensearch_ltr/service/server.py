"""Run the service on a TCP port until told to stop, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from opensearch_ltr.service.app import BATCHER, CONFIG

logger = logging.getLogger(__name__)


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM; a second signal acts as if unhandled (stops at once).

    Call from the running loop's thread.
    """
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            loop.remove_signal_handler(sig)
            signal.raise_signal(sig)
        else:
            logger.info("%s received: shutting down (send it again to stop at once)", sig.name)
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


async def run_service(
    app: web.Application,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_listening: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set.

    Shutdown stops accepting connections, lets in-flight requests finish for up to the
    config's ``shutdown_grace_s``, then stops the worker. ``on_listening`` receives the bound
    ``http://host:port`` URLs (useful with ``port=0``). Raises :class:`RuntimeError` if the
    model fails to load.
    """
    batcher = app[BATCHER]
    loop = asyncio.get_running_loop()
    settled = asyncio.Event()
    batcher.loaded.add_done_callback(lambda _: loop.call_soon_threadsafe(settled.set))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=app[CONFIG].shutdown_grace_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        urls = [f"http://{address[0]}:{address[1]}" for address in runner.addresses]
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
    finally:
        await runner.cleanup()
