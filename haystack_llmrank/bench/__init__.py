"""``llmrank bench``: seconds per query, peak memory and nDCG@10 of FIRST reranking variants.

Rows: ``plain`` (full-vocabulary logits with plain transformers), ``torch`` (the engine),
``onnx-fp32`` / ``onnx-fp16`` / ``onnx-int8`` (the engine on ONNX Runtime) and ``generate``
(generating the whole permutation). Every row gets the same prompt token ids.
"""

from haystack_llmrank.bench.config import DEFAULT_ROWS, ROWS, SYNTHETIC_CONFIGS, BenchConfig
from haystack_llmrank.bench.report import BenchReport, build_report
from haystack_llmrank.bench.runner import Plan, RowResult, prepare, run

__all__ = [
    "DEFAULT_ROWS",
    "ROWS",
    "SYNTHETIC_CONFIGS",
    "BenchConfig",
    "BenchReport",
    "Plan",
    "RowResult",
    "build_report",
    "prepare",
    "run",
]
