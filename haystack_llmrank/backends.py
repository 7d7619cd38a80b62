"""Build a tokenizer and a :class:`LabelScorer` for a model reference and a backend."""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haystack_llmrank.checks import check_positive
from haystack_llmrank.devices import Device, parse_device
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.gpu_policy import OnMissingGpu, check_on_missing_gpu, fall_back_to_cpu
from haystack_llmrank.labels import readout_label_ids
from haystack_llmrank.models import (
    DEFAULT_MODEL,
    ModelSource,
    context_length,
    load_causal_lm,
    load_tokenizer,
    loadable_source,
    resolve_model,
)
from haystack_llmrank.scorers.base import LabelScorer

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
_TORCH_GPU_HINT = "install a CUDA build of torch on a machine with a CUDA GPU"


@dataclass(frozen=True)
class LoadedScorer:
    """What a backend loads: the tokenizer, the scorer, the context length and a model name."""

    tokenizer: Any
    scorer: LabelScorer
    context_length: int
    model_name: str


def resolve_torch_device(device: str | None, on_missing_gpu: OnMissingGpu = "raise") -> str:
    """``device`` by its name (see :func:`~haystack_llmrank.devices.parse_device`), or CUDA
    when torch sees it and ``None`` was given, else the CPU.

    A CUDA device that torch cannot see raises, or with ``on_missing_gpu="warn"`` logs a
    warning and resolves to the CPU.
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    parsed = parse_device(device, "torch")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            seen = "no CUDA device" if count == 0 else f"{count} CUDA device(s), from cuda:0"
            message = f"device {device!r} was asked for but torch sees {seen}"
            fall_back_to_cpu(message, on_missing_gpu, _TORCH_GPU_HINT)
            return "cpu"
    _check_mps(device, parsed)
    return parsed.name


def _check_mps(device: str, parsed: Device) -> None:
    """``ValueError`` for an MPS device this torch does not have."""
    import torch

    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for but this torch has no MPS device")


def check_placement(backend: str, device: str | None, dtype: str | None) -> None:
    """``ValueError`` for a ``device`` that ``backend`` does not run on (see
    :func:`~haystack_llmrank.devices.parse_device`; for torch, also an MPS device this
    torch does not have) or a torch ``dtype`` it does not have, with no model loaded."""
    if device is not None:
        parsed = parse_device(device, backend)
        if backend == "torch":
            _check_mps(device, parsed)
    if dtype is not None:
        named_torch_dtype(dtype)


def named_torch_dtype(dtype: str) -> Any:
    """The torch dtype named ``dtype``; ``ValueError`` unless it is one a model's weights
    are held in (float32, bfloat16, float16, float64)."""
    import torch

    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    if str(resolved).removeprefix("torch.") not in _MODEL_DTYPES:
        raise ValueError(
            f"dtype {dtype!r} cannot hold a model's weights here; use float32, bfloat16, "
            "float16 or float64"
        )
    return resolved


def resolve_torch_dtype(device: str, dtype: str | None, checkpoint: Any = None) -> Any:
    """The torch dtype named ``dtype``, or the default for ``device``.

    The default is float32 on the CPU. On CUDA it is ``checkpoint``, the checkpoint's own
    dtype (float32 when unknown), except that bfloat16 becomes float32 on a device without
    native bfloat16 (compute capability below 8.0): bfloat16-trained weights overflow in
    float16. A named float16 on the CPU, or bfloat16 on a CPU without native bfloat16
    (:func:`cpu_has_native_bf16`), is kept, with a warning that it runs slowly.
    """
    import torch

    if dtype is not None:
        resolved = named_torch_dtype(dtype)
        if resolved == torch.float16 and device.startswith("cpu"):
            logger.warning(
                "float16 on %s: most CPUs compute it far slower than float32 or bfloat16", device
            )
        elif resolved == torch.bfloat16 and device.startswith("cpu") and not cpu_has_native_bf16():
            logger.warning(
                "bfloat16 on %s: this CPU has neither AVX512-BF16 nor AMX, so it computes "
                "bfloat16 far slower than float32; use float32",
                device,
            )
        return resolved
    if not device.startswith("cuda") or not isinstance(checkpoint, torch.dtype):
        return torch.float32
    if checkpoint == torch.bfloat16 and not cuda_has_native_bf16(device):
        logger.info("%s has no native bfloat16; running the bfloat16 checkpoint in float32", device)
        return torch.float32
    return checkpoint


_MODEL_DTYPES = frozenset(("float32", "bfloat16", "float16", "float64"))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: an x86 CPU with AVX512-BF16 or AMX.

    Other architectures count as native: torch reports those features for x86 only.
    """
    import torch

    if platform.machine().lower() not in _X86_MACHINES:
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


_X86_MACHINES = frozenset(("x86_64", "amd64", "i386", "i686"))


def cuda_has_native_bf16(device: str | None) -> bool:
    """Whether the CUDA ``device`` computes in bfloat16 natively (compute capability 8.0+)."""
    import torch

    return bool(torch.cuda.get_device_capability(device) >= (8, 0))


def source_device_and_dtype(
    source: ModelSource,
    device: str | None,
    dtype: str | None,
    on_missing_gpu: OnMissingGpu = "raise",
) -> tuple[str, Any]:
    """Where and in what dtype to load ``source`` (one that :func:`loadable_source` returned).

    :func:`resolve_torch_device`, then :func:`resolve_torch_dtype` with the checkpoint's own
    dtype on CUDA (read only there, and only when ``dtype`` is not given).
    """
    resolved = resolve_torch_device(device, on_missing_gpu)
    on_cuda = resolved.startswith("cuda")
    checkpoint = checkpoint_dtype(source) if dtype is None and on_cuda else None
    return resolved, resolve_torch_dtype(resolved, dtype, checkpoint)


def checkpoint_dtype(source: ModelSource) -> Any:
    """The torch dtype that ``source``'s config records, or ``None``.

    ``None`` for GGUF files (their weights are dequantised) and for configs that record no
    floating dtype or cannot be read.
    """
    import torch
    from transformers import AutoConfig

    if source.gguf_file:
        return None
    try:
        config = AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError):
        return None
    recorded = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(recorded, str):
        recorded = getattr(torch, recorded, None)
    return recorded if isinstance(recorded, torch.dtype) and recorded.is_floating_point else None


def check_backend(backend: str, threads: int | None, dtype: str | None = None) -> None:
    """``ValueError`` for an unknown ``backend``, ``threads`` that it cannot take (a
    positive count, for the onnx backend only), or a ``dtype`` with the onnx backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    check_positive("threads", threads)
    if threads is not None and backend != "onnx":
        raise ValueError(
            "threads applies to the onnx backend; the torch backend uses torch's process-wide "
            "setting (torch.set_num_threads)"
        )
    if dtype is not None and backend == "onnx":
        raise ValueError(
            "dtype does not apply to the onnx backend: the precision is chosen at export "
            "(llmrank export --precision fp32|fp16|int8)"
        )


def load_scorer(
    model: str | None,
    *,
    backend: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    labels: Sequence[str],
    vote: str | None = None,
    threads: int | None = None,
    on_missing_gpu: OnMissingGpu = "raise",
) -> LoadedScorer:
    """Load ``model`` on ``backend``, scoring ``labels``, or the one token ``vote`` where
    given (see :attr:`~haystack_llmrank.prompt.PromptTemplate.vote`).

    ``dtype`` (torch backend only) defaults to float32 on the CPU and to the checkpoint's
    dtype on CUDA (see :func:`resolve_torch_dtype`). ``threads`` sets ONNX Runtime's
    intra-op threads (onnx backend only; torch's threads are process-wide, see
    ``torch.set_num_threads``). ``on_missing_gpu`` is what an explicit CUDA device that
    cannot be used does: ``"raise"``, or ``"warn"`` and run on the CPU.
    """
    check_backend(backend, threads, dtype)
    check_on_missing_gpu(on_missing_gpu)
    check_placement(backend, device, dtype)
    if backend == "onnx":
        return _load_onnx(
            model,
            device=device,
            labels=labels,
            vote=vote,
            threads=threads,
            on_missing_gpu=on_missing_gpu,
        )
    from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

    source = loadable_source(resolve_model(model))
    torch_device, torch_dtype = source_device_and_dtype(source, device, dtype, on_missing_gpu)
    tokenizer = load_tokenizer(source)
    lm = load_causal_lm(source, device=torch_device, dtype=torch_dtype, tokenizer=tokenizer)
    label_ids = readout_label_ids(tokenizer, labels, vote)
    logger.info("loaded %s on %s (%s)", source.name, torch_device, torch_dtype)
    return LoadedScorer(
        tokenizer,
        TorchLabelScorer(lm, label_ids, pad_token_id=tokenizer.pad_token_id),
        context_length(lm.config, tokenizer),
        source.name,
    )


def check_export(model: str | None) -> None:
    """Raise :class:`ModelResolutionError` unless ``model`` is an export folder with its
    metadata and files, as the onnx backend loads (their hashes are checked at the load)."""
    from haystack_llmrank.scorers.onnx_metadata import check_files_present, read_metadata

    folder = _export_folder(model)
    check_files_present(Path(folder).expanduser(), read_metadata(folder, verify_hashes=False).files)


def _export_folder(model: str | None) -> str:
    """``model``, refused where it names no export folder (none, or the default model)."""
    from haystack_llmrank.scorers.onnx_metadata import EXPORT_HINT

    if model is None or model == DEFAULT_MODEL:
        raise ModelResolutionError(
            f"the onnx backend loads an export folder by path; {EXPORT_HINT}"
        )
    return model


def _load_onnx(
    model: str | None,
    *,
    device: str | None,
    labels: Sequence[str],
    vote: str | None,
    threads: int | None,
    on_missing_gpu: OnMissingGpu,
) -> LoadedScorer:
    """An export folder (see :func:`haystack_llmrank.export.export_onnx`) on ONNX Runtime."""
    from haystack_llmrank.scorers.onnx_loading import load_export

    loaded = load_export(
        _export_folder(model),
        labels=labels if vote is None else (vote,),
        device=device,
        on_missing_gpu=on_missing_gpu,
        intra_op_num_threads=threads,
    )
    return LoadedScorer(
        loaded.tokenizer,
        loaded.scorer,
        loaded.metadata.context_length,
        loaded.metadata.source_model,
    )
