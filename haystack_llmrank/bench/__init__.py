"""``llmrank bench``: seconds per query, peak memory and nDCG@10 of FIRST reranking variants.

Rows: ``plain`` (full-vocabulary logits with plain transformers), ``torch`` (the engine),
``onnx-fp32`` / ``onnx-fp16`` / ``onnx-int8`` (the engine on ONNX Runtime) and ``generate``
(generating the whole permutation). Every row gets the same prompt token ids.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "DEFAULT_ROWS": "config",
    "ROWS": "config",
    "SYNTHETIC_CONFIGS": "config",
    "BenchConfig": "config",
    "BenchReport": "report",
    "build_report": "report",
    "Plan": "runner",
    "RowResult": "runner",
    "prepare": "runner",
    "run": "runner",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy, so that `llmrank bench --help` reads the settings without loading the runner.
    if name in _LAZY:
        return getattr(import_module(f"haystack_llmrank.bench.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
