"""``llmrank serve``: the Cohere-compatible rerank endpoint for OpenSearch ML Commons."""

from __future__ import annotations

import argparse
import asyncio
import os
from concurrent.futures import Future

from haystack_llmrank.cli.options import (
    add_model_options,
    check_model_options,
    load_reranker,
    non_negative_float,
    positive_float,
    positive_int,
)


def port_number(text: str) -> int:
    """An argparse type for TCP ports (0 picks a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 0 and 65535, got {value}")
    return value


def host_address(text: str) -> str:
    """An argparse type for ``--host``: an address or host name, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "expected an address or host name (0.0.0.0 or :: for all interfaces), got ''"
        )
    return text


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options and handler to ``parser``."""
    parser.description = (
        "Serve a FIRST listwise reranker over HTTP: POST /v1/rerank (Cohere rerank format), "
        "GET /health (liveness), GET /ready (a request would be taken). One worker thread "
        "owns the model and ranks requests that wait together in one batch. SIGINT/SIGTERM "
        "stop accepting connections and let in-flight requests finish for the grace period; "
        "work still running then stops after the engine's running forward pass. A second "
        "signal stops at once."
    )
    model = parser.add_argument_group("model")
    add_model_options(model, batch_size=8)
    http = parser.add_argument_group("HTTP")
    http.add_argument(
        "--host", type=host_address, default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    http.add_argument(
        "--port", type=port_number, default=8080, help="port (default 8080; 0: any free)"
    )
    http.add_argument(
        "--api-key-env",
        default="LLMRANK_API_KEY",
        help="env variable with the API key(s), comma-separated (default LLMRANK_API_KEY)",
    )
    http.add_argument(
        "--no-auth", action="store_true", help="serve without API keys (trusted networks only)"
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-batch-requests",
        type=positive_int,
        default=16,
        help="requests ranked together in one engine call (default 16)",
    )
    limits.add_argument(
        "--max-pending-requests",
        type=positive_int,
        default=256,
        help="requests waiting at most; more are answered 503 (default 256)",
    )
    limits.add_argument(
        "--max-documents",
        type=positive_int,
        default=1000,
        help="documents per request at most; more are answered 413 (default 1000)",
    )
    limits.add_argument(
        "--max-document-chars",
        type=positive_int,
        default=20_000,
        help="characters of a document read; the rest is not (no prompt reads that far; "
        "default 20000)",
    )
    limits.add_argument(
        "--max-query-chars",
        type=positive_int,
        default=4_000,
        help="characters of the query at most (default 4000)",
    )
    limits.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=4 * 1024 * 1024,
        help="request body bytes at most, after gzip (default 4194304)",
    )
    limits.add_argument(
        "--timeout-s",
        type=positive_float,
        default=30.0,
        help="per request, queueing included; later work is dropped; a worker that finishes "
        "no window for this long counts as stalled (/ready 503) (default 30)",
    )
    limits.add_argument(
        "--shutdown-grace-s",
        type=non_negative_float,
        default=30.0,
        help="how long in-flight requests may run on shutdown (default 30; 0: cancel them at once)",
    )
    limits.add_argument(
        "--header-timeout-s",
        type=positive_float,
        default=10.0,
        help="seconds a client has to send a complete request head (default 10)",
    )
    limits.add_argument(
        "--max-connections",
        type=positive_int,
        default=512,
        help="open connections at most; more are answered 503 and closed (default 512)",
    )
    parser.set_defaults(handler=run)


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys from ``--api-key-env``; empty only with ``--no-auth``."""
    if args.no_auth:
        return ()
    keys = tuple(key.strip() for key in os.environ.get(args.api_key_env, "").split(","))
    keys = tuple(key for key in keys if key)
    if not keys:
        raise ValueError(
            f"no API key: set {args.api_key_env} (comma-separated for several keys) "
            "or pass --no-auth"
        )
    return keys


def run(args: argparse.Namespace) -> int:
    """Load the model in the background, serve until SIGINT/SIGTERM, shut down gracefully."""
    try:
        from opensearch_ltr.service import (
            BATCHER,
            ServiceConfig,
            create_app,
            run_service,
            stop_on_signals,
        )
    except ImportError as exc:
        raise RuntimeError(f"{exc}; install the serve extra: pip install 'llmrank[serve]'") from exc
    check_model_options(args)  # bad options fail before the port is bound
    config = ServiceConfig(
        api_keys=api_keys(args),
        max_body_bytes=args.max_body_bytes,
        max_documents=args.max_documents,
        max_document_chars=args.max_document_chars,
        max_query_chars=args.max_query_chars,
        timeout_s=args.timeout_s,
        max_batch_requests=args.max_batch_requests,
        max_pending_requests=args.max_pending_requests,
        shutdown_grace_s=args.shutdown_grace_s,
        header_timeout_s=args.header_timeout_s,
        max_connections=args.max_connections,
    )

    def announce(urls: list[str]) -> None:
        print(f"llmrank serve: listening on {', '.join(urls)} (POST /v1/rerank); loading the model")

    async def serve() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        app = create_app(lambda: load_reranker(args), config)

        def announce_ready(loaded: Future[None]) -> None:
            if loaded.exception() is None and not stop.is_set():  # a load that ends on exit
                print("llmrank serve: model ready", flush=True)

        app[BATCHER].loaded.add_done_callback(announce_ready)
        await run_service(app, host=args.host, port=args.port, stop=stop, on_listening=announce)

    asyncio.run(serve())
    print("llmrank serve: stopped")
    return 0
