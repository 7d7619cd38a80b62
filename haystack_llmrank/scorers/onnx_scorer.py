"""Label scorer on ONNX Runtime: CPU, or CUDA with inputs and outputs bound on the device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from haystack_llmrank.export.metadata import INPUT_NAMES, OUTPUT_NAME
from haystack_llmrank.gpu_policy import OnMissingGpu, check_on_missing_gpu, fall_back_to_cpu
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.scorers.padding import pad_right

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_GPU_HINT = "install onnxruntime-gpu (pip install 'llmrank[gpu]') on a machine with a CUDA GPU"


@dataclass(frozen=True)
class Placement:
    """Where a session runs: ``cpu`` or ``cuda`` with a device index."""

    device_type: Literal["cpu", "cuda"]
    device_id: int = 0

    @property
    def name(self) -> str:
        """``cpu`` or ``cuda:N``."""
        return "cpu" if self.device_type == "cpu" else f"cuda:{self.device_id}"

    @property
    def providers(self) -> list[Any]:
        """The execution providers to ask ONNX Runtime for, best first."""
        if self.device_type == "cpu":
            return [CPU_PROVIDER]
        return [(CUDA_PROVIDER, {"device_id": self.device_id}), CPU_PROVIDER]


def parse_device(device: str) -> Placement:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a :class:`Placement`."""
    kind, _, index = device.strip().lower().partition(":")
    if kind == "cpu" and not index:
        return Placement("cpu")
    if kind == "cuda" and (not index or index.isdigit()):
        return Placement("cuda", int(index or 0))
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")


def _missing_gpu(message: str, on_missing_gpu: OnMissingGpu) -> Placement:
    fall_back_to_cpu(message, on_missing_gpu, _GPU_HINT)
    return Placement("cpu")


def choose_placement(
    device: str | None, available: Sequence[str], on_missing_gpu: OnMissingGpu = "raise"
) -> Placement:
    """The placement to ask for, given ONNX Runtime's available providers.

    ``None`` picks CUDA when its provider is available, else the CPU. An explicit CUDA
    device without the CUDA provider raises, or with ``on_missing_gpu="warn"`` logs a
    warning and returns the CPU.
    """
    check_on_missing_gpu(on_missing_gpu)
    if device is None:
        return Placement("cuda") if CUDA_PROVIDER in available else Placement("cpu")
    placement = parse_device(device)
    if placement.device_type == "cuda" and CUDA_PROVIDER not in available:
        return _missing_gpu(
            f"device {device!r} was asked for but onnxruntime offers no {CUDA_PROVIDER} "
            f"(available: {list(available)})",
            on_missing_gpu,
        )
    return placement


def confirm_placement(
    wanted: Placement, active: Sequence[str], on_missing_gpu: OnMissingGpu
) -> Placement:
    """The placement a created session really has: CUDA wanted but not active raises or warns."""
    if wanted.device_type == "cuda" and CUDA_PROVIDER not in active:
        return _missing_gpu(
            f"onnxruntime could not start {CUDA_PROVIDER} on {wanted.name} "
            f"(the session has {list(active)})",
            on_missing_gpu,
        )
    return wanted


def _positive_or_none(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class OnnxLabelScorer:
    """Label logits from an exported ``model.onnx`` (see :mod:`haystack_llmrank.export`).

    The graph maps right-padded ``input_ids``/``attention_mask`` to float32
    ``label_logits [batch, K]``. Inputs are copied to the session's device once and the
    output is allocated there (IOBinding); only the ``[batch, K]`` result comes back.

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (CUDA when onnxruntime
    offers it). A CUDA device that cannot be used raises, or with ``on_missing_gpu="warn"``
    logs a warning and runs on the CPU; with ``device=None`` it always warns.
    ``intra_op_num_threads``/``inter_op_num_threads`` default to ONNX Runtime's choice.
    """

    def __init__(
        self,
        graph: str | Path,
        label_ids: LabelIds,
        *,
        pad_token_id: int = 0,
        device: str | None = None,
        on_missing_gpu: OnMissingGpu = "raise",
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        wanted = choose_placement(device, ort.get_available_providers(), on_missing_gpu)
        options = ort.SessionOptions()
        intra = _positive_or_none("intra_op_num_threads", intra_op_num_threads)
        inter = _positive_or_none("inter_op_num_threads", inter_op_num_threads)
        if intra is not None:
            options.intra_op_num_threads = intra
        if inter is not None:
            options.inter_op_num_threads = inter
        self._session = ort.InferenceSession(str(graph), options, providers=wanted.providers)
        policy: OnMissingGpu = on_missing_gpu if device is not None else "warn"
        self._placement = confirm_placement(wanted, self._session.get_providers(), policy)
        self._label_ids = label_ids
        self._pad_id = pad_token_id
        self._check_signature()
        logger.info("onnx scorer for %s on %s", graph, self._placement.name)

    def _check_signature(self) -> None:
        inputs = sorted(i.name for i in self._session.get_inputs())
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != sorted(INPUT_NAMES) or outputs != [OUTPUT_NAME]:
            raise ValueError(
                f"the graph takes {inputs} and returns {outputs}; a label-logit export takes "
                f"{list(INPUT_NAMES)} and returns only [{OUTPUT_NAME!r}]"
            )

    @property
    def label_ids(self) -> LabelIds:
        """The labels whose logits :meth:`score` returns."""
        return self._label_ids

    @property
    def device(self) -> str:
        """Where the session runs: ``cpu`` or ``cuda:N``."""
        return self._placement.name

    @property
    def providers(self) -> list[str]:
        """The execution providers of the session, in priority order."""
        return list(self._session.get_providers())

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Return float32 label logits ``[len(prompts), len(label_ids)]``."""
        import onnxruntime as ort

        ids, mask = pad_right(prompts, self._pad_id)
        where = (self._placement.device_type, self._placement.device_id)
        binding = self._session.io_binding()
        values = [ort.OrtValue.ortvalue_from_numpy(array, *where) for array in (ids, mask)]
        for name, value in zip(INPUT_NAMES, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(OUTPUT_NAME, *where)
        self._session.run_with_iobinding(binding)
        logits = binding.copy_outputs_to_cpu()[0]
        expected = (len(prompts), len(self._label_ids))
        if logits.shape != expected or logits.dtype != np.float32:
            raise RuntimeError(
                f"the graph returned {logits.dtype} {logits.shape}, expected float32 {expected}"
            )
        return np.asarray(logits, dtype=np.float32)
