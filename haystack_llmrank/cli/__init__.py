"""The ``llmrank`` command line: one module per subcommand, each with ``register(parser)``.

Only the subcommand that runs is imported: ``llmrank --help`` lists the others from
:data:`SUBCOMMANDS` without loading them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

#: Subcommand name -> (module under ``haystack_llmrank.cli``, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "rerank": ("rerank", "rerank first-stage candidates and write a TREC run"),
    "eval": ("evaluate", "evaluate a TREC run (or a candidates file's order) against qrels"),
    "train": ("train", "fine-tune a FIRST reranker (LoRA by default)"),
    "export": ("export", "export a model's label-logit graph to ONNX"),
    "bench": (
        "bench",
        "time FIRST reranking variants on DL19 (seconds/query, peak memory, nDCG@10)",
    ),
    "serve": (
        "serve",
        "serve POST /v1/rerank (Cohere-compatible) for OpenSearch ML Commons connectors",
    ),
    "blueprints": (
        "blueprints",
        "print the OpenSearch requests (connector, model, search pipeline) for llmrank serve",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser listing every subcommand; ``command``'s options (all when None)."""
    parser = argparse.ArgumentParser(
        prog="llmrank", description="Single-token listwise LLM reranking (FIRST)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text)
        if command in (None, name):
            importlib.import_module(f"haystack_llmrank.cli.{module}").register(subparser)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (what ``timeout``, ``docker stop`` and Kubernetes send): raised in the
    main thread, a ``KeyboardInterrupt`` as SIGINT's is, so that cleanup code runs."""


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers
_sigterm = threading.Event()
"""Set when SIGTERM arrived during a command: whatever error ends it then (a library may
raise its own in place of :class:`Terminated`), it ends as terminated."""


def _raise_on_sigterm() -> _Handler | None:
    """Make SIGTERM raise :class:`Terminated` (and a second one end the process at once, as
    by default); return the handler replaced, or None where none was: outside the main
    thread, where SIGTERM is ignored, or where its handler was not set from Python."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        return None
    if previous is None or previous == signal.SIG_IGN:
        return None

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm.set()
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmrank`` script.

    SIGTERM ends every subcommand but ``serve`` (which handles it itself) as Ctrl-C does,
    running its cleanup, with status 143; the handler before is restored on return.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    # The first word that is not an option names the subcommand (global options take no value).
    command = next((word for word in argv if not word.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    args.command_line = shlex.join(["llmrank", *argv])  # what records of a run write
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _sigterm.clear()
    previous = None if args.command == "serve" else _raise_on_sigterm()  # serve has its own
    try:
        return int(args.handler(args) or 0)
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        logging.getLogger("llmrank").debug("command failed", exc_info=True)
        if _sigterm.is_set():  # the interruption, as a library reraised it
            return 128 + signal.SIGTERM
        print(f"llmrank {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
