"""Benchmark summaries: per-row figures, nDCG@10, agreement with ``plain``, a table and JSON."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from haystack_llmrank.bench.config import GENERATE, ORACLE, PLAIN, SLIDING
from haystack_llmrank.bench.rows import Orders, RowOutcome, SweepPoint
from haystack_llmrank.bench.runner import Calibration, Plan, RowResult
from haystack_llmrank.data import Qrels, QueryCandidates
from haystack_llmrank.evaluation import evaluate

METRIC = "ndcg@10"
CPU_EXTENSIONS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)
"""The /proc/cpuinfo flags that decide how fast the CPU rows run (int8 needs VNNI to pay,
bfloat16 AVX512-BF16 or AMX), recorded with every run."""


@dataclass(frozen=True)
class Agreement:
    """How often a row ordered a window, and a query, exactly as ``plain`` did.

    Only windows of two passages or more that both rows saw with the same passages are
    compared (once two rows order a window differently, their later windows of that query
    hold different passages; a window of one passage orders nothing).
    """

    windows_shared: int
    windows_agreeing: int
    queries: int
    queries_identical: int

    @property
    def fraction(self) -> float | None:
        """Share of shared windows ordered identically (None when none are shared)."""
        return self.windows_agreeing / self.windows_shared if self.windows_shared else None


@dataclass(frozen=True)
class SweepSummary:
    """Throughput of an engine row at one batch size: ``windows`` scored in
    ``forward_passes`` of ``prompts_per_pass`` prompts on average."""

    batch_size: int
    seconds: float
    windows: int
    forward_passes: int
    prompts_per_pass: float
    queries_per_second: float
    windows_per_second: float
    peak_cuda_mb: float | None


@dataclass(frozen=True)
class RowSummary:
    """One row of the results; figures are ``None`` for a row that did not run.

    Times are seconds of the timed pass (no loading, warm-up or prompt building);
    ``floor_seconds_per_window`` is :func:`window_flops` at the mean tokens per window over
    the measured matmul rate. ``label`` is the row with the oracle's noise (``oracle@0.5``).
    Per query: ``windows_per_query`` forward passes, ``steps_per_query`` sequential steps
    (``max_steps`` at most), ``tokens_per_query`` prompt tokens. The oracle rows have no
    floor, no agreement and no speedups: they run no model.
    """

    row: str
    status: str
    reason: str | None = None
    strategy: str = SLIDING
    noise: float | None = None
    label: str = ""
    queries: int = 0
    windows: int = 0
    windows_per_query: float | None = None
    steps_per_query: float | None = None
    max_steps: int | None = None
    tokens_per_query: float | None = None
    seconds: float | None = None
    seconds_per_query: float | None = None
    seconds_per_window: float | None = None
    mean_prompt_tokens: float | None = None
    mean_generated_tokens: float | None = None
    load_seconds: float | None = None
    prompt_build_seconds: float | None = None
    export_seconds: float | None = None
    export_attention: str | None = None
    export_source_model: str | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    memory_isolated: bool | None = None
    ndcg_at_10: float | None = None
    agreement_with_plain: Agreement | None = None
    speedup_vs_plain: float | None = None
    speedup_vs_generate: float | None = None
    floor_seconds_per_window: float | None = None
    times_floor: float | None = None
    sweep: tuple[SweepSummary, ...] = ()


@dataclass(frozen=True)
class BenchReport:
    """Everything a benchmark run measured, as written to JSON."""

    command: str | None
    created: str
    config: dict[str, Any]
    environment: dict[str, Any]
    data: dict[str, Any]
    bm25_ndcg_at_10: float | None
    calibration: dict[str, Any] | None
    estimate_seconds: dict[str, float]
    floor: dict[str, Any]
    rows: tuple[RowSummary, ...]
    planned_rows: int
    """How many rows the run has in all; ``rows`` holds fewer while it runs."""

    @property
    def complete(self) -> bool:
        """True once every planned row is in ``rows``."""
        return len(self.rows) == self.planned_rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (agreement fractions and ``complete`` included)."""
        data = asdict(self)
        data["complete"] = self.complete
        for row, summary in zip(data["rows"], self.rows, strict=True):
            if summary.agreement_with_plain is not None:
                row["agreement_with_plain"]["fraction"] = summary.agreement_with_plain.fraction
        result: dict[str, Any] = _jsonable(data)
        return result

    @property
    def failed(self) -> bool:
        """True when a row failed (unavailable rows do not count)."""
        return any(row.status == "failed" for row in self.rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def ndcg_at_10(queries: Sequence[QueryCandidates], orders: Orders, qrels: Qrels) -> float | None:
    """Mean nDCG@10 of the ranked queries (None when none of them is judged)."""
    run = {
        q.qid: {
            q.candidates[i].docid: float(len(orders[q.qid]) - r)
            for r, i in enumerate(orders[q.qid])
        }
        for q in queries
        if q.qid in orders and q.qid in qrels and orders[q.qid]
    }
    judged = {qid: qrels[qid] for qid in run}
    return evaluate(run, judged, [METRIC]).mean[METRIC] if run else None


def agreement(reference: RowOutcome, other: RowOutcome) -> Agreement:
    """Compare ``other``'s window orderings and final orders with ``reference``'s."""
    shared = {
        key
        for key in reference.window_orders.keys() & other.window_orders.keys()
        if len(key[1]) > 1
    }
    agreeing = sum(reference.window_orders[k] == other.window_orders[k] for k in shared)
    queries = reference.orders.keys() & other.orders.keys()
    identical = sum(reference.orders[q] == other.orders[q] for q in queries)
    return Agreement(len(shared), agreeing, len(queries), identical)


def _sweep(point: SweepPoint, queries: int) -> SweepSummary:
    return SweepSummary(
        batch_size=point.batch_size,
        seconds=point.seconds,
        windows=point.windows,
        forward_passes=point.forward_passes,
        prompts_per_pass=point.prompts / point.forward_passes if point.forward_passes else 0.0,
        queries_per_second=queries / point.seconds if point.seconds > 0 else 0.0,
        windows_per_second=point.windows / point.seconds if point.seconds > 0 else 0.0,
        peak_cuda_mb=point.peak_cuda_mb,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def window_flops(calibration: Calibration, tokens: float) -> float:
    """FLOPs one window needs at least: its weight products plus causal attention.

    ``2 x body_parameters x tokens`` for the weights, and ``2 x attention_width x tokens^2``
    for the scores and the weighted values of the lower triangle (none when the width is
    unknown). Fed the mean tokens of a row's windows, it stays a lower bound.
    """
    attention = 2 * (calibration.attention_width or 0) * tokens**2
    return 2 * calibration.body_parameters * tokens + attention


def _summary(plan: Plan, result: RowResult, references: Mapping[str, RowOutcome]) -> RowSummary:
    outcome = result.outcome
    line = RowSummary(
        result.row,
        result.status,
        result.reason,
        strategy=result.strategy,
        noise=result.noise,
        label=result.variant.label,
    )
    if outcome is None:
        return line
    model = result.row != ORACLE
    queries = len(outcome.orders)
    per_query = outcome.seconds / queries if queries else None
    per_window = outcome.seconds / outcome.windows if outcome.windows else None
    prompt_tokens = outcome.prompt_tokens / outcome.windows if outcome.windows else None
    generated = outcome.generated_tokens / outcome.windows if outcome.windows else None
    floor = None
    if model and plan.calibration is not None and prompt_tokens is not None:
        floor = window_flops(plan.calibration, prompt_tokens + (generated or 0.0)) / (
            plan.throughput_of(result.row).tflops * 1e12
        )

    def reference_seconds(row: str) -> float | None:
        reference = references.get(row)
        return reference.seconds / len(reference.orders) if reference and reference.orders else None

    plain = references.get(PLAIN) if model else None
    return replace(
        line,
        queries=queries,
        windows=outcome.windows,
        windows_per_query=outcome.windows / queries if queries else None,
        steps_per_query=sum(outcome.steps.values()) / queries if queries else None,
        max_steps=max(outcome.steps.values(), default=None),
        tokens_per_query=outcome.prompt_tokens / queries if queries else None,
        seconds=outcome.seconds,
        seconds_per_query=per_query,
        seconds_per_window=per_window,
        mean_prompt_tokens=prompt_tokens,
        mean_generated_tokens=generated,
        load_seconds=outcome.load_seconds,
        prompt_build_seconds=outcome.prompt_seconds,
        export_seconds=result.export_seconds,
        export_attention=result.export_attention,
        export_source_model=result.export_source_model,
        peak_rss_mb=outcome.peak_rss_mb,
        peak_cuda_mb=outcome.peak_cuda_mb,
        memory_isolated=outcome.memory_isolated,
        ndcg_at_10=ndcg_at_10(plan.queries, outcome.orders, plan.qrels),
        agreement_with_plain=agreement(plain, outcome) if plain and result.row != PLAIN else None,
        speedup_vs_plain=_ratio(reference_seconds(PLAIN), per_query) if model else None,
        speedup_vs_generate=_ratio(reference_seconds(GENERATE), per_query) if model else None,
        floor_seconds_per_window=floor,
        times_floor=_ratio(per_window, floor),
        sweep=tuple(_sweep(p, queries) for p in outcome.sweep),
    )


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware the numbers were taken on; ``usable_cpus`` are those this
    process may run on, ``host_cpus`` all the host has."""
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "usable_cpus": usable_cpus(),
        "host_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "cpu": cpu_description(),
    }
    for package in ("onnxruntime", "onnxruntime-gpu"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return env


def usable_cpus() -> int | None:
    """The CPUs this process may run on: its affinity where the OS has one (a container or
    ``taskset`` may allow fewer than the host has), else the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name and which of the vector extensions that CPU timings here depend
    on it has (read from ``cpuinfo`` on Linux; elsewhere the model name only, as
    :func:`platform.processor` gives it)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"model": platform.processor() or None, "extensions": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    model = fields.get("model name") or platform.processor() or None
    if "flags" not in fields:  # not an x86 CPU (ARM lists "Features"): unknown, not none
        return {"model": model, "extensions": None}
    flags = set(fields["flags"].split())
    return {"model": model, "extensions": [name for name in CPU_EXTENSIONS if name in flags]}


def build_report(
    plan: Plan, results: Sequence[RowResult], *, command: str | None = None
) -> BenchReport:
    """Summarise the rows of a run against ``plain`` and ``generate``; ``command`` is the
    command line that ran it, where known. ``results`` may be the first rows of a run that
    is still going (the report is then not :attr:`~BenchReport.complete`)."""
    config = plan.config
    assert config.device is not None
    references = {r.row: r.outcome for r in results if r.outcome is not None}
    identity: Orders = {q.qid: tuple(range(len(q.candidates))) for q in plan.queries}
    calibration = plan.calibration
    return BenchReport(
        command=command,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        config=asdict(config),
        environment=environment(config.device),
        data={
            "dir": str(config.data_dir),
            "queries": len(plan.queries),
            "total_queries": plan.total_queries,
            "qids": [q.qid for q in plan.queries],
            "top_k": plan.depth,
            "windows": plan.windows,
            "windows_strategy": config.readout_strategy,
            "max_prompt_tokens": plan.max_prompt_tokens,
        },
        bm25_ndcg_at_10=ndcg_at_10(plan.queries, identity, plan.qrels),
        calibration=None if calibration is None else asdict(calibration),
        estimate_seconds=plan.estimates(),
        floor={
            "matmul_tflops": plan.throughput.tflops,
            "matmul_size": plan.throughput.size,
            "dtype": plan.throughput.dtype,
            "other_dtypes": {
                name: {"matmul_tflops": t.tflops, "matmul_size": t.size}
                for name, t in plan.row_throughputs.items()
            },
            "body_parameters": None if calibration is None else calibration.body_parameters,
            "attention_width": None if calibration is None else calibration.attention_width,
            "formula": (
                "(2 x body_parameters x tokens + 2 x attention_width x tokens^2) / matmul_tflops,"
                " tokens = mean prompt + generated tokens per window"
            ),
        },
        rows=tuple(_summary(plan, r, references) for r in results),
        planned_rows=len(config.variants),
    )
