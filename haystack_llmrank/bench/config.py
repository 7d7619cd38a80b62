"""Settings of one ``llmrank bench`` run and the rows it can measure."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from haystack_llmrank.devices import parse_device
from haystack_llmrank.scorers.onnx_metadata import PRECISIONS, Precision
from haystack_llmrank.strategies import (
    STRATEGIES,
    SlidingWindow,
    check_strategy_options,
    readout_strategy,
)

ORACLE = "oracle"
PLAIN = "plain"
TORCH = "torch"
TORCH_BF16 = "torch-bf16"
GENERATE = "generate"
ONNX_PREFIX = "onnx-"
SLIDING = SlidingWindow.name
ROWS = (ORACLE, PLAIN, TORCH, TORCH_BF16, *(ONNX_PREFIX + p for p in PRECISIONS), GENERATE)
"""Every row the benchmark knows, in the order rows run."""
ENGINE_ROWS = tuple(row for row in ROWS if row not in (PLAIN, GENERATE))
"""The rows that run the engine (the oracle with its own scorer): only they take strategies
and batch settings; ``plain`` and ``generate`` are plain loops."""
ROW_DTYPES: dict[str, str] = {TORCH_BF16: "bfloat16"}
"""Rows that run in their own torch dtype, whatever the run's ``dtype`` is."""
FLOOR_DTYPES: dict[str, str] = {
    **ROW_DTYPES,
    ONNX_PREFIX + "fp32": "float32",
    ONNX_PREFIX + "fp16": "float16",
    ONNX_PREFIX + "int8": "float32",  # no torch int8 matmul rate to measure: float32's
}
"""Rows whose FLOP floor takes the matmul rate of a dtype other than the run's."""
DEFAULT_ROWS = (PLAIN, TORCH, "onnx-fp32", "onnx-int8", GENERATE)
"""The rows a CPU run measures unless told otherwise."""
CUDA_DEFAULT_ROWS = (PLAIN, TORCH, "onnx-fp16", GENERATE)
"""The rows a CUDA run measures unless told otherwise: fp16 is the export that runs on CUDA."""

SYNTHETIC_CONFIGS: dict[str, dict[str, int]] = {
    "mistral-7b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
    },
}
"""Random-weight Mistral configurations: shapes only, for timing without downloaded weights."""


DATA_DIR_VARIABLE = "LLMRANK_DL19_DIR"
"""Environment variable naming the DL19 folder (``candidates.jsonl``, ``qrels.txt``)."""
RELATIVE_DATA_DIR = Path("..") / "shared" / "data" / "trec-dl19"
"""Where the DL19 folder is looked for, from the working directory, without the variable."""


def default_data_dir() -> Path:
    """``$LLMRANK_DL19_DIR``, else ``../shared/data/trec-dl19`` from the working directory.

    Neither depends on where the package is installed, so an installed wheel finds the same
    data as a checkout run from its root.
    """
    configured = os.environ.get(DATA_DIR_VARIABLE)
    return Path(configured) if configured else RELATIVE_DATA_DIR


def default_rows(device: str) -> tuple[str, ...]:
    """:data:`CUDA_DEFAULT_ROWS` on a CUDA device, else :data:`DEFAULT_ROWS`."""
    return CUDA_DEFAULT_ROWS if device.startswith("cuda") else DEFAULT_ROWS


def row_dtype(row: str, dtype: str) -> str:
    """The torch dtype ``row`` runs in, in a run whose dtype is ``dtype``."""
    return ROW_DTYPES.get(row, dtype)


def floor_dtype(row: str, dtype: str) -> str:
    """The dtype whose matmul rate gives ``row``'s FLOP floor, in a run of ``dtype``."""
    return FLOOR_DTYPES.get(row, dtype)


def onnx_precision(row: str) -> Precision | None:
    """The export precision of an ONNX row (``"onnx-int8"`` -> ``"int8"``), else ``None``."""
    return next((p for p in PRECISIONS if row == ONNX_PREFIX + p), None)


def _check_choice(what: str, chosen: tuple[str, ...], known: tuple[str, ...]) -> None:
    if not chosen:
        raise ValueError(f"no {what} to run")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{what} given more than once: {list(chosen)}")


@dataclass(frozen=True)
class Variant:
    """One line of results: a row, the strategy it ranks with and, for the oracle, its noise."""

    row: str
    strategy: str = SLIDING
    noise: float | None = None

    @property
    def label(self) -> str:
        """The row's name, with the oracle's noise (``oracle@0.5``)."""
        return self.row if self.noise is None else f"{self.row}@{self.noise:g}"

    @property
    def name(self) -> str:
        """The label and the strategy (``oracle@0.5 tdpart``): unique within a run."""
        return f"{self.label} {self.strategy}"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how; ``queries=None`` means every query in the data.

    ``rows=None`` means the device's :func:`default_rows`. ``device`` and ``dtype`` ``None``
    mean the engine's defaults (CUDA when available; float32 on CPU, the checkpoint's dtype
    on CUDA, bfloat16 for synthetic models). ``batch_size`` and ``max_batch_tokens`` apply to
    the engine rows, all alike (``max_batch_tokens=None``: what suits a torch model on the
    device, one window per forward pass on a CPU, which
    :func:`~haystack_llmrank.bench.runner.prepare` sets); ``sweep_batch_sizes`` re-runs
    those rows at each batch size for throughput.
    ``isolate`` runs every row (and every ONNX export) in a fresh process so that its peak
    memory is its own (the oracle rows, which hold no model, run in this process).

    ``strategies`` are the strategies the engine and oracle rows rank with, one line each;
    ``None`` is the readout's own (:func:`~haystack_llmrank.strategies.readout_strategy`).
    ``plain`` ranks with the readout's own strategy and ``generate`` slides. The oracle rows
    run once per strategy and ``oracle_noise`` level, with the noise drawn from ``seed``.
    ``vote`` is the readout: the vote token of the model's template, else ``None`` (FIRST's
    label logits); :func:`~haystack_llmrank.bench.runner.prepare` sets it from the model.
    An option given other than its default that no chosen row uses is refused.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    model: str = "default"
    synthetic: str | None = None
    rows: tuple[str, ...] | None = None
    queries: int | None = 5
    top_k: int = 100
    window_size: int | None = None
    step: int | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    batch_size: int = 1
    max_batch_tokens: int | None = None
    sweep_batch_sizes: tuple[int, ...] = ()
    max_prompt_tokens: int | None = None
    export_dir: Path | None = None
    warmup: int = 1
    isolate: bool = True
    progress: bool = False
    seed: int = 0
    strategies: tuple[str, ...] | None = None
    oracle_noise: tuple[float, ...] = (0.0,)
    vote: str | None = None

    def __post_init__(self) -> None:
        if self.strategies is not None:
            _check_choice("strategies", self.strategies, STRATEGIES)
        if not self.oracle_noise:
            raise ValueError("no oracle noise levels to run")
        if len(set(self.oracle_noise)) != len(self.oracle_noise):
            raise ValueError(f"oracle noise given more than once: {list(self.oracle_noise)}")
        if any(not math.isfinite(level) or level < 0 for level in self.oracle_noise):
            raise ValueError(f"oracle noise must be at least 0, got {list(self.oracle_noise)}")
        if self.rows is not None:
            _check_choice("rows", self.rows, ROWS)
        if self.synthetic is not None and self.synthetic not in SYNTHETIC_CONFIGS:
            raise ValueError(
                f"unknown synthetic config {self.synthetic!r}; "
                f"choose from {sorted(SYNTHETIC_CONFIGS)}"
            )
        positive = {  # None: not given
            "queries": self.queries,
            "top_k": self.top_k,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for strategy in self.ranking_strategies:
            check_strategy_options(strategy, window_size=self.window_size, step=None)
        if self.slides:  # a one-passage window of a vote slides nowhere
            check_strategy_options(SLIDING, window_size=self.window_size, step=self.step)
        if any(size < 1 for size in self.sweep_batch_sizes):
            raise ValueError(f"batch sizes must be at least 1, got {list(self.sweep_batch_sizes)}")
        if len(set(self.sweep_batch_sizes)) != len(self.sweep_batch_sizes):
            raise ValueError(f"batch sizes given more than once: {list(self.sweep_batch_sizes)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must not be negative, got {self.warmup}")
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if (
            self.export_dir is not None
            and self.export_dir.exists()
            and not self.export_dir.is_dir()
        ):
            raise ValueError(f"export_dir {self.export_dir} is not a folder")
        if self.device is not None:  # both backends' rows run on it: what onnx takes
            try:
                device = parse_device(self.device, "onnx").name
            except ValueError:
                raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}") from None
            object.__setattr__(self, "device", device)
        self._check_used()

    def _check_used(self) -> None:
        """Refuse options, given other than their defaults, that no chosen row uses."""
        options = {
            ENGINE_ROWS: {
                "strategies": self.strategies is not None,
                "batch_size": self.batch_size != 1,
                "max_batch_tokens": self.max_batch_tokens is not None,
                "sweep_batch_sizes (--batch-sizes)": bool(self.sweep_batch_sizes),
            },
            (ORACLE,): {"oracle_noise": self.oracle_noise != (0.0,)},
        }
        chosen = self.ordered_rows
        for users, given in options.items():
            unused = [name for name, set_ in given.items() if set_]
            if unused and not set(users) & set(chosen):
                raise ValueError(
                    f"only the rows {', '.join(users)} use {', '.join(unused)}; "
                    f"none of them is chosen (rows: {', '.join(chosen)})"
                )

    @property
    def data_files(self) -> tuple[Path, Path]:
        """The candidates (``candidates.jsonl``) and qrels (``qrels.txt``) in :attr:`data_dir`."""
        return self.data_dir / "candidates.jsonl", self.data_dir / "qrels.txt"

    @property
    def window(self) -> int:
        """:attr:`window_size` once :func:`~haystack_llmrank.bench.runner.prepare` has sized
        it for the model's template (``None`` there: 20, or the template's labels where
        fewer)."""
        if self.window_size is None:
            raise ValueError("the window is sized for the model's template by prepare()")
        return self.window_size

    @property
    def sliding_step(self) -> int:
        """:attr:`step` once :func:`~haystack_llmrank.bench.runner.prepare` has set it
        (``None`` there: half the window)."""
        if self.step is None:
            raise ValueError("the step is set for the model's template by prepare()")
        return self.step

    @property
    def ordered_rows(self) -> tuple[str, ...]:
        """The chosen rows in run order (oracle first, generate last).

        Unset rows are the defaults of ``device`` (of the CPU while it is unresolved).
        """
        chosen = self.rows if self.rows is not None else default_rows(self.device or "cpu")
        return tuple(row for row in ROWS if row in chosen)

    @property
    def readout_strategy(self) -> str:
        """The readout's own strategy: ``disjoint`` for a vote, ``sliding`` for labels."""
        return readout_strategy(self.vote)

    @property
    def ranking_strategies(self) -> tuple[str, ...]:
        """``strategies``, else the readout's own."""
        return self.strategies or (self.readout_strategy,)

    @property
    def variants(self) -> tuple[Variant, ...]:
        """Every line to measure, in run order: each row with each of its strategies."""
        strategies = self.ranking_strategies
        lines: list[Variant] = []
        for row in self.ordered_rows:
            if row == PLAIN:
                lines.append(Variant(row, self.readout_strategy))
            elif row == GENERATE:
                lines.append(Variant(row))
            elif row == ORACLE:
                lines += [Variant(row, s, n) for s in strategies for n in self.oracle_noise]
            else:
                lines += [Variant(row, s) for s in strategies]
        return tuple(lines)

    @property
    def slides(self) -> bool:
        """True when a line ranks with the sliding window (``generate`` always does)."""
        return any(variant.strategy == SLIDING for variant in self.variants)

    @property
    def needs_model(self) -> bool:
        """True when a chosen row runs the model (every row but the oracle)."""
        return any(row != ORACLE for row in self.ordered_rows)
