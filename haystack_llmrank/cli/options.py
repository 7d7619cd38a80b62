"""Argument types and the model options shared by the subcommands that load a reranker."""

from __future__ import annotations

import argparse
from typing import Any

from haystack_llmrank.backends import BACKENDS
from haystack_llmrank.gpu_policy import ON_MISSING_GPU


def positive_int(text: str) -> int:
    """An argparse type for integers of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type for numbers above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def add_model_options(group: Any, *, batch_size: int) -> None:
    """Add ``--model``, ``--backend``, ``--device``, ``--dtype``, window and batch options."""
    group.add_argument(
        "--model",
        default="default",
        help="'default' (embedded SmolLM2), a HF id or folder, a .gguf, or an export folder",
    )
    group.add_argument("--backend", choices=BACKENDS, default="torch")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    group.add_argument(
        "--dtype", default=None, help="float32, float16, bfloat16 (default: by device)"
    )
    group.add_argument("--window-size", type=positive_int, default=20)
    group.add_argument("--step", type=positive_int, default=10)
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"windows per forward pass (default {batch_size})",
    )
    group.add_argument("--max-passage-words", type=positive_int, default=300)
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads: torch's with --backend torch, ONNX Runtime's intra-op with onnx",
    )
    group.add_argument(
        "--on-missing-gpu",
        choices=ON_MISSING_GPU,
        default="raise",
        help="when a CUDA --device cannot be used: raise (default) or warn and use the CPU",
    )


def load_reranker(args: argparse.Namespace) -> Any:
    """The :class:`~haystack_llmrank.reranker.Reranker` that :func:`add_model_options` describes."""
    from haystack_llmrank.reranker import Reranker
    from haystack_llmrank.strategies import SlidingWindow

    onnx = args.backend == "onnx"
    if args.threads is not None and not onnx:
        import torch

        torch.set_num_threads(args.threads)
    return Reranker.from_pretrained(
        args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads if onnx else None,
        on_missing_gpu=args.on_missing_gpu,
        strategy=SlidingWindow(args.window_size, args.step),
        batch_size=args.batch_size,
        max_passage_words=args.max_passage_words,
    )
