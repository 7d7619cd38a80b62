"""Build a tokenizer and a :class:`LabelScorer` for a model reference and a backend."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from haystack_llmrank.labels import resolve_label_ids
from haystack_llmrank.models import context_length, load_causal_lm, load_tokenizer, resolve_model
from haystack_llmrank.scorers.base import LabelScorer

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


def _torch_device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, Any]:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no CUDA device")
    if dtype is None:
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return device, resolved


def load_scorer(
    model: str | None,
    *,
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    labels: Sequence[str],
) -> tuple[Any, LabelScorer, int]:
    """Return ``(tokenizer, scorer, context_length)`` for ``model`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "onnx":
        raise NotImplementedError("the onnx backend is not available in this build")
    from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

    source = resolve_model(model)
    torch_device, torch_dtype = _torch_device_and_dtype(device, dtype)
    tokenizer = load_tokenizer(source)
    lm = load_causal_lm(source, device=torch_device, dtype=torch_dtype, tokenizer=tokenizer)
    label_ids = resolve_label_ids(tokenizer, labels)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logger.info("loaded %s on %s (%s)", source.name, torch_device, torch_dtype)
    return (
        tokenizer,
        TorchLabelScorer(lm, label_ids, pad_token_id=pad),
        context_length(lm.config, tokenizer),
    )
