"""Settings of one ``llmrank bench`` run and the rows it can measure."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import haystack_llmrank
from haystack_llmrank.export.metadata import PRECISIONS, Precision

PLAIN = "plain"
TORCH = "torch"
GENERATE = "generate"
ONNX_PREFIX = "onnx-"
ROWS = (PLAIN, TORCH, *(ONNX_PREFIX + p for p in PRECISIONS), GENERATE)
"""Every row the benchmark knows, in the order rows run."""
DEFAULT_ROWS = (PLAIN, TORCH, "onnx-fp32", "onnx-int8", GENERATE)

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


def default_data_dir() -> Path:
    """``$LLMRANK_DL19_DIR``, else ``../shared/data/trec-dl19`` next to the project root."""
    configured = os.environ.get("LLMRANK_DL19_DIR")
    if configured:
        return Path(configured)
    project_root = Path(haystack_llmrank.__file__).resolve().parents[1]
    return project_root.parent / "shared" / "data" / "trec-dl19"


def onnx_precision(row: str) -> Precision | None:
    """The export precision of an ONNX row (``"onnx-int8"`` -> ``"int8"``), else ``None``."""
    return next((p for p in PRECISIONS if row == ONNX_PREFIX + p), None)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how; ``queries=None`` means every query in the data.

    ``device`` and ``dtype`` ``None`` mean the engine's defaults (CUDA when available;
    float32 on CPU, float16 on CUDA). ``batch_size`` and ``max_batch_tokens`` apply to the
    engine rows; ``sweep_batch_sizes`` re-runs those rows at each batch size for throughput.
    ``isolate`` runs every row (and every ONNX export) in a fresh process so that its peak
    memory is its own.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    model: str = "default"
    synthetic: str | None = None
    rows: tuple[str, ...] = DEFAULT_ROWS
    queries: int | None = 5
    top_k: int = 100
    window_size: int = 20
    step: int = 10
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    batch_size: int = 1
    max_batch_tokens: int = 16384
    sweep_batch_sizes: tuple[int, ...] = ()
    max_prompt_tokens: int | None = None
    export_dir: Path | None = None
    warmup: int = 1
    isolate: bool = True
    progress: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("no rows to run")
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown:
            raise ValueError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
        if len(set(self.rows)) != len(self.rows):
            raise ValueError(f"rows given more than once: {list(self.rows)}")
        if self.synthetic is not None and self.synthetic not in SYNTHETIC_CONFIGS:
            raise ValueError(
                f"unknown synthetic config {self.synthetic!r}; "
                f"choose from {sorted(SYNTHETIC_CONFIGS)}"
            )
        positive = {
            "queries": self.queries if self.queries is not None else 1,
            "top_k": self.top_k,
            "window_size": self.window_size,
            "step": self.step,
            "threads": self.threads if self.threads is not None else 1,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_prompt_tokens": self.max_prompt_tokens or 1,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.step > self.window_size:
            raise ValueError(f"step ({self.step}) must not exceed window_size ({self.window_size})")
        if any(size < 1 for size in self.sweep_batch_sizes):
            raise ValueError(f"batch sizes must be at least 1, got {list(self.sweep_batch_sizes)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must not be negative, got {self.warmup}")
        if self.device is not None and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")

    @property
    def ordered_rows(self) -> tuple[str, ...]:
        """The chosen rows in run order (plain first, generate last)."""
        return tuple(row for row in ROWS if row in self.rows)
