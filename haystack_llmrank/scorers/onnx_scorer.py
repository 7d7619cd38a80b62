"""Label scorer on ONNX Runtime: CPU, or CUDA with inputs and outputs bound on the device."""

from __future__ import annotations

import importlib.metadata
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from haystack_llmrank.checks import check_positive
from haystack_llmrank.devices import parse_device
from haystack_llmrank.errors import ClosedError
from haystack_llmrank.gpu_policy import OnMissingGpu, check_on_missing_gpu, fall_back_to_cpu
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.scorers.base import DEFAULT_MAX_BATCH_TOKENS, check_finite
from haystack_llmrank.scorers.onnx_metadata import (
    OUTPUT_NAME,
    POSITIONS_NAME,
    ExportMetadata,
    graph_inputs,
)
from haystack_llmrank.scorers.padding import pad_inputs

logger = logging.getLogger(__name__)

MIN_ONNXRUNTIME = "1.28"
"""The oldest onnxruntime that exports, loads and scores every precision: fp16 graphs fail
to load on 1.23 to 1.27 (its SimplifiedLayerNormFusion), int8 graphs fail to score on 1.22
and to export before 1.24. The extras ``onnx`` and ``gpu`` require it."""
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_GPU_HINT = "install onnxruntime-gpu (pip install 'llmrank[gpu]') on a machine with a CUDA GPU"
CUDA_EXPORT_HINT = (
    "for CUDA, export an fp16 graph (llmrank export MODEL OUT_DIR --precision fp16), or one "
    "with --attention plain"
)
HEAVY_OPS = frozenset(
    {
        "Attention",
        "FusedMatMul",
        "Gemm",
        "GroupQueryAttention",
        "MatMul",
        "MatMulNBits",
        "MultiHeadAttention",
        "Softmax",
    }
)
"""Operators that carry a window's arithmetic: on the CPU under CUDA, they cost device copies."""
_ASSIGNMENT_ENTRY = "session.record_ep_graph_assignment_info"


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
        """The execution providers to ask ONNX Runtime for, best first.

        CUDA runs float32 in float32: ONNX Runtime's default TF32 matmuls keep 10 mantissa
        bits, so an fp32 export would not score as it does in torch, whose matmuls are full
        float32 by default. fp16 and bf16 exports are unaffected.
        """
        if self.device_type == "cpu":
            return [CPU_PROVIDER]
        return [(CUDA_PROVIDER, {"device_id": self.device_id, "use_tf32": 0}), CPU_PROVIDER]


def device_placement(device: str) -> Placement:
    """``device`` (see :func:`~haystack_llmrank.devices.parse_device`) as a :class:`Placement`."""
    parsed = parse_device(device, "onnx")
    return Placement("cuda", parsed.index or 0) if parsed.type == "cuda" else Placement("cpu")


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """The error types of ONNX Runtime's native code (``Fail``, ``InvalidGraph``,
    ``RuntimeException``...), which derive from ``Exception`` alone."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(
        kind
        for kind in vars(state).values()
        if isinstance(kind, type)
        and issubclass(kind, Exception)
        and kind.__module__ == state.__name__
    )


def check_onnxruntime() -> None:
    """Raise ``ImportError`` when the installed onnxruntime is older than
    :data:`MIN_ONNXRUNTIME`, naming both versions (pip may keep an older one installed)."""
    import onnxruntime as ort
    from packaging.version import InvalidVersion, Version

    installed = str(ort.__version__)
    try:
        old = Version(installed).release < Version(MIN_ONNXRUNTIME).release
    except InvalidVersion:
        logger.warning("cannot read the onnxruntime version %r; assuming it is recent", installed)
        return
    if old:
        raise ImportError(
            f"onnxruntime {installed} is installed, and llmrank needs {MIN_ONNXRUNTIME} or "
            f"later for ONNX exports; pip install -U 'onnxruntime>={MIN_ONNXRUNTIME}' (or "
            f"'onnxruntime-gpu>={MIN_ONNXRUNTIME}' where CUDA is used)"
        )


def onnxruntime_wheels() -> list[str]:
    """The installed distributions that ship the ``onnxruntime`` package, by name."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith(("onnxruntime", "ort-")):
            continue
        if any(str(f).replace("\\", "/") == "onnxruntime/__init__.py" for f in dist.files or ()):
            found.add(name)
    return sorted(found)


def wheel_collision(wheels: Sequence[str]) -> str | None:
    """How to fix two ONNX Runtime wheels that share one package, or None if there is one."""
    if "onnxruntime-gpu" not in wheels or len(wheels) < 2:
        return None
    return (
        f"{' and '.join(wheels)} are installed together and write the same 'onnxruntime' "
        "package: the last one installed wins, and CUDA is not offered; fix it with: pip "
        f"uninstall -y {' '.join(wheels)} && pip install onnxruntime-gpu"
    )


def _missing_gpu(message: str, on_missing_gpu: OnMissingGpu, wheels: Sequence[str]) -> Placement:
    collision = wheel_collision(wheels)
    fall_back_to_cpu(f"{message}; {collision}" if collision else message, on_missing_gpu, _GPU_HINT)
    return Placement("cpu")


def choose_placement(
    device: str | None,
    available: Sequence[str],
    on_missing_gpu: OnMissingGpu = "raise",
    wheels: Sequence[str] = (),
) -> Placement:
    """The placement to ask for, given ONNX Runtime's available providers.

    ``None`` picks CUDA when its provider is available, else the CPU; when ``wheels`` (the
    installed ONNX Runtime distributions) hold onnxruntime-gpu beside another, that CPU is
    logged as a warning with the fix. An explicit CUDA device without the CUDA provider
    raises, or with ``on_missing_gpu="warn"`` logs a warning and returns the CPU.
    """
    check_on_missing_gpu(on_missing_gpu)
    if device is None:
        if CUDA_PROVIDER in available:
            return Placement("cuda")
        if wheel_collision(wheels) is not None:
            message = f"device=None found no {CUDA_PROVIDER} (available: {list(available)})"
            return _missing_gpu(message, "warn", wheels)
        return Placement("cpu")
    placement = device_placement(device)
    if placement.device_type == "cuda" and CUDA_PROVIDER not in available:
        return _missing_gpu(
            f"device {device!r} was asked for but onnxruntime offers no {CUDA_PROVIDER} "
            f"(available: {list(available)})",
            on_missing_gpu,
            wheels,
        )
    return placement


def cuda_obstacles(precision: str, attention: str) -> list[str]:
    """Why an export of ``precision`` and ``attention`` would run partly on the CPU under CUDA.

    ONNX Runtime's CUDA ``GroupQueryAttention`` takes fp16 and bf16 only: such nodes fall
    back to the CPU, with device copies in every layer. (Its CUDA ``MatMulNBits`` takes the
    int8 export's 8-bit weights, from 1.22 on.)
    """
    problems = []
    if attention == "fused" and precision != "fp16":
        problems.append(
            f"the {precision} export's fused attention has no CUDA kernel (CUDA runs "
            "GroupQueryAttention in fp16 and bf16 only)"
        )
    return problems


def confirm_placement(
    wanted: Placement, active: Sequence[str], on_missing_gpu: OnMissingGpu
) -> Placement:
    """The placement a created session really has: CUDA wanted but not active raises or warns."""
    if wanted.device_type == "cuda" and CUDA_PROVIDER not in active:
        return _missing_gpu(
            f"onnxruntime could not start {CUDA_PROVIDER} on {wanted.name} "
            f"(the session has {list(active)}; onnxruntime's log says why)",
            on_missing_gpu,
            (),
        )
    return wanted


def node_placement(session: Any) -> dict[str, Counter[str]]:
    """``provider -> Counter(op_type)`` of a session's nodes; empty when it was not recorded.

    Recording needs the session config entry ``session.record_ep_graph_assignment_info``
    and an onnxruntime that offers ``get_provider_graph_assignment_info``.
    """
    placement: dict[str, Counter[str]] = {}
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        logger.debug("onnxruntime does not report node placement: %s", exc)
        return placement
    for subgraph in subgraphs:
        counts = placement.setdefault(subgraph.ep_name, Counter())
        counts.update(node.op_type for node in subgraph.get_nodes())
    return placement


def report_node_placement(placement: dict[str, Counter[str]], device: str) -> None:
    """Log where nodes run when a CUDA session runs some elsewhere.

    ONNX Runtime places shape arithmetic on the CPU on purpose, which is logged at INFO;
    :data:`HEAVY_OPS` off CUDA are logged as a warning, and so is a placement the session did
    not report (onnxruntime before 1.24), which would hide them.
    """
    if not placement:
        logger.warning(
            "this onnxruntime does not report where the %s session's nodes run (1.24 and "
            "later do): matrix products or attention falling back to the CPU would go unseen",
            device,
        )
        return
    elsewhere = {ep: ops for ep, ops in placement.items() if ep != CUDA_PROVIDER}
    if not elsewhere:
        return
    total = sum(sum(ops.values()) for ops in placement.values())
    text = "; ".join(
        f"{ep}: " + ", ".join(f"{op} x{n}" for op, n in sorted(ops.items()))
        for ep, ops in sorted(elsewhere.items())
    )
    off = sum(sum(ops.values()) for ops in elsewhere.values())
    heavy = sorted({op for ops in elsewhere.values() for op in ops} & HEAVY_OPS)
    if heavy:
        logger.warning(
            "%d of %d nodes of the %s session run off CUDA, %s among them (%s); %s",
            off,
            total,
            device,
            heavy,
            text,
            CUDA_EXPORT_HINT,
        )
    else:
        logger.info("%d of %d nodes of the %s session run off CUDA (%s)", off, total, device, text)


def _fit_export(
    wanted: Placement, metadata: ExportMetadata | None, graph: str | Path, policy: OnMissingGpu
) -> Placement:
    """``wanted``, or the CPU when the export cannot run wholly on CUDA (see the scorer)."""
    if metadata is None:
        logger.warning(
            "OnnxLabelScorer built directly on %s: the export's precision and attention are not "
            "checked against %s; load the folder with load_export() or "
            "Reranker.from_pretrained(folder, backend='onnx')",
            graph,
            wanted.name,
        )
        return wanted
    if wanted.device_type == "cpu":
        if metadata.precision == "fp16":
            logger.warning("%s: fp16 is meant for CUDA; on the CPU use fp32 or int8", graph)
        return wanted
    obstacles = cuda_obstacles(metadata.precision, metadata.attention)
    if not obstacles:
        return wanted
    message = f"{graph} cannot run wholly on {wanted.name}: {'; '.join(obstacles)}"
    fall_back_to_cpu(message, policy, CUDA_EXPORT_HINT)
    return Placement("cpu")


class OnnxLabelScorer:
    """Label logits from an exported ``model.onnx`` (see :mod:`haystack_llmrank.export`).

    The graph maps right-padded ``input_ids``/``attention_mask`` to float32
    ``label_logits [batch, K]``; the export of a vote template also takes ``positions``
    and returns ``[batch, P, K]`` (:meth:`score_at`; :meth:`score` then reads each
    prompt's last token). Inputs are copied to the session's device once and the output
    is allocated there (IOBinding); only the label logits come back.

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (see
    :func:`~haystack_llmrank.devices.parse_device`) or ``None`` (CUDA when onnxruntime
    offers it). A CUDA device that cannot be used raises, or with ``on_missing_gpu="warn"``
    logs a warning and runs on the CPU; with ``device=None`` it always warns.
    ``intra_op_num_threads``/``inter_op_num_threads`` default to ONNX Runtime's choice.

    ``metadata`` is the export's ``llmrank.json`` (:func:`~haystack_llmrank.scorers.onnx_loading.
    load_export` passes it). With it, an export that would run partly on the CPU under CUDA
    (:func:`cuda_obstacles`) is refused on an explicit CUDA device (or, with
    ``on_missing_gpu="warn"``, and always with ``device=None``, runs on the CPU with a
    warning). Without it nothing is checked, which is logged as a warning.

    An onnxruntime older than :data:`MIN_ONNXRUNTIME` raises ``ImportError``.
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
        metadata: ExportMetadata | None = None,
    ) -> None:
        import onnxruntime as ort

        check_onnxruntime()
        available = ort.get_available_providers()
        asks_cuda = device is None or device_placement(device).device_type == "cuda"
        wheels = onnxruntime_wheels() if asks_cuda and CUDA_PROVIDER not in available else ()
        wanted = choose_placement(device, available, on_missing_gpu, wheels)
        policy: OnMissingGpu = on_missing_gpu if device is not None else "warn"
        wanted = _fit_export(wanted, metadata, graph, policy)
        options = ort.SessionOptions()
        intra = check_positive("intra_op_num_threads", intra_op_num_threads)
        inter = check_positive("inter_op_num_threads", inter_op_num_threads)
        if intra is not None:
            options.intra_op_num_threads = intra
        if inter is not None:  # ONNX Runtime uses an inter-op pool in parallel mode only
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            options.inter_op_num_threads = inter
        if wanted.device_type == "cuda":
            options.add_session_config_entry(_ASSIGNMENT_ENTRY, "1")
        session = ort.InferenceSession(str(graph), options, providers=wanted.providers)
        self._session: Any = session
        self._placement = confirm_placement(wanted, session.get_providers(), policy)
        if self._placement.device_type == "cuda":
            report_node_placement(node_placement(session), self._placement.name)
        self._label_ids = label_ids
        self._pad_id = pad_token_id
        self._precision = metadata.precision if metadata is not None else None
        self._positions = self._check_signature()
        logger.info("onnx scorer for %s on %s", graph, self._placement.name)

    def close(self) -> None:
        """Let go of the inference session and the memory it holds. Scoring afterwards
        raises :class:`~haystack_llmrank.errors.ClosedError`; closing again does nothing."""
        self._session = None

    def _live(self) -> Any:
        if self._session is None:
            raise ClosedError("this scorer was closed; load the export again to score")
        return self._session

    def _check_signature(self) -> bool:
        """Whether the graph takes positions; ``ValueError`` for a graph of another kind."""
        inputs = sorted(i.name for i in self._session.get_inputs())
        outputs = [o.name for o in self._session.get_outputs()]
        if outputs == [OUTPUT_NAME]:
            width = self._session.get_outputs()[0].shape[-1]
            if isinstance(width, int) and width != len(self._label_ids):
                raise ValueError(
                    f"the graph returns {width} label logits, not one for each of the "
                    f"{len(self._label_ids)} labels given; export the model again"
                )
            for positions in (False, True):
                if inputs == sorted(graph_inputs(positions)):
                    return positions
        raise ValueError(
            f"the graph takes {inputs} and returns {outputs}; a label-logit export takes "
            f"{list(graph_inputs(False))} (and {POSITIONS_NAME!r} for a vote) and returns "
            f"only [{OUTPUT_NAME!r}]"
        )

    @property
    def reads_positions(self) -> bool:
        """Whether the graph takes positions (:meth:`score_at`): an export of a vote."""
        return self._positions

    @property
    def label_ids(self) -> LabelIds:
        """The labels whose logits :meth:`score` returns."""
        return self._label_ids

    @property
    def device(self) -> str:
        """Where the session runs: ``cpu`` or ``cuda:N``."""
        return self._placement.name

    @property
    def preferred_max_batch_tokens(self) -> int:
        """One prompt per call on a CPU, except for an int8 graph; else
        :data:`~haystack_llmrank.scorers.base.DEFAULT_MAX_BATCH_TOKENS`.

        On a 2-core CPU the default's fp32 export ranked 2 DL19 queries in 16.9 s a query
        with each query's 5 windows as one batch and in 14.8 s one by one (2 threads), where
        an int8 export ranked 2 queries' tdpart steps in 58.9 s a query batched and 63.4 s one
        by one (1 thread).
        """
        if self._placement.device_type == "cpu" and self._precision != "int8":
            return 1
        return DEFAULT_MAX_BATCH_TOKENS

    @property
    def providers(self) -> list[str]:
        """The execution providers of the session, in priority order."""
        return list(self._live().get_providers())

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Return float32 label logits ``[len(prompts), len(label_ids)]`` at each last token.

        Raises :class:`~haystack_llmrank.errors.NonFiniteLogitsError` on NaN or ±inf.
        """
        if self._positions:
            return self._run(prompts, [[len(p) - 1] for p in prompts])[:, 0]
        return self._run(prompts, None)

    def score_at(
        self, prompts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Return float32 label logits ``[len(prompts), P, len(label_ids)]`` at each
        prompt's ``positions`` (P: the most of any prompt; shorter rows are padded).

        Only an export of a vote template takes positions; others raise ``ValueError``.
        Raises :class:`~haystack_llmrank.errors.NonFiniteLogitsError` on NaN or ±inf.
        """
        if not self._positions:
            raise ValueError(
                "this export reads the last token only; export a template with a vote "
                "to read label logits at given positions"
            )
        return self._run(prompts, positions)

    def _run(
        self, prompts: Sequence[Sequence[int]], at: Sequence[Sequence[int]] | None
    ) -> npt.NDArray[np.float32]:
        import onnxruntime as ort

        session = self._live()
        arrays = pad_inputs(prompts, self._pad_id, at)
        where = (self._placement.device_type, self._placement.device_id)
        binding = session.io_binding()
        for name, array in zip(graph_inputs(at is not None), arrays, strict=True):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, *where))
        binding.bind_output(OUTPUT_NAME, *where)
        session.run_with_iobinding(binding)
        logits = binding.copy_outputs_to_cpu()[0]
        expected: tuple[int, ...] = (len(prompts), len(self._label_ids))
        if at is not None:
            expected = (len(prompts), arrays[2].shape[1], len(self._label_ids))
        if logits.shape != expected or logits.dtype != np.float32:
            raise RuntimeError(
                f"the graph returned {logits.dtype} {logits.shape}, expected float32 {expected}"
            )
        remedy = f"this is a {self._precision or 'graph of unknown precision'}; use an fp32 export"
        return check_finite(np.asarray(logits, dtype=np.float32), remedy)
