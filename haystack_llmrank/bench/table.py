"""Plain-text tables of a benchmark report and of its plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from haystack_llmrank.bench.config import ORACLE, onnx_precision
from haystack_llmrank.bench.report import BenchReport, RowSummary
from haystack_llmrank.bench.runner import Plan, RowResult


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _windows_agreeing(row: RowSummary) -> str:
    agreement = row.agreement_with_plain
    if agreement is None or not agreement.windows_shared:
        return "-"
    return f"{agreement.windows_agreeing}/{agreement.windows_shared}"


def _queries_identical(row: RowSummary) -> str:
    agreement = row.agreement_with_plain
    if agreement is None:
        return "-"
    return f"{agreement.queries_identical}/{agreement.queries}"


_COLUMNS: tuple[tuple[str, Callable[[RowSummary], str]], ...] = (
    ("row", lambda r: r.label),
    ("strategy", lambda r: r.strategy),
    ("windows/q", lambda r: _number(r.windows_per_query)),
    ("steps/q", lambda r: _number(r.steps_per_query)),
    ("tokens/q", lambda r: _number(r.tokens_per_query)),
    ("s/query", lambda r: _number(r.seconds_per_query)),
    ("s/window", lambda r: _number(r.seconds_per_window)),
    ("floor s/window", lambda r: _number(r.floor_seconds_per_window)),
    ("x floor", lambda r: _number(r.times_floor)),
    ("peak RSS MiB", lambda r: _mib(r.peak_rss_mb)),
    ("peak CUDA MiB", lambda r: _mib(r.peak_cuda_mb)),
    ("nDCG@10", lambda r: "-" if r.ndcg_at_10 is None else f"{r.ndcg_at_10:.4f}"),
    ("windows = plain", _windows_agreeing),
    ("queries = plain", _queries_identical),
    ("vs plain", lambda r: _times(r.speedup_vs_plain)),
    ("vs generate", lambda r: _times(r.speedup_vs_generate)),
)


def _render(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            [
                row[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
            ]
        )
        for row in rows
    ]


def _depth(ranked: int, asked: int) -> str:
    """``top K``, the most candidates a query ranked, with the ``--top-k`` asked where that
    was more."""
    return f"top {ranked}" + (f" (--top-k {asked}: no query has more)" if ranked < asked else "")


def results_table(report: BenchReport) -> str:
    """One line per row; rows that did not run show their status and reason."""
    ran = [row for row in report.rows if row.status == "ok"]
    lines = _render(
        [[name for name, _ in _COLUMNS], *([cell(r) for _, cell in _COLUMNS] for r in ran)]
    )
    lines += [
        f"{r.label} {r.strategy}: {r.status}: {r.reason}" for r in report.rows if r.status != "ok"
    ]
    data = report.data
    bm25 = report.bm25_ndcg_at_10
    lines.append(
        f"{data['queries']} of {data['total_queries']} queries, "
        f"{_depth(data['top_k'], report.config['top_k'])}, "
        f"{data['windows']} {data['windows_strategy']} windows; BM25 nDCG@10 "
        + ("-" if bm25 is None else f"{bm25:.4f}")
        + f"; matmul {report.floor['matmul_tflops']:.3g} TFLOP/s ({report.floor['dtype']})"
    )
    if any(r.memory_isolated is False for r in ran if r.row != ORACLE):
        lines.append("rows ran in one process: peak RSS may include memory held from earlier rows")
    return "\n".join(lines)


def sweep_table(report: BenchReport) -> str | None:
    """Throughput per batch size of the engine rows, or None without a sweep."""
    rows = [
        [
            f"{r.label} {r.strategy}",
            str(p.batch_size),
            f"{p.prompts_per_pass:.1f}",
            _number(p.queries_per_second),
            _number(p.windows_per_second),
            _mib(p.peak_cuda_mb),
        ]
        for r in report.rows
        for p in r.sweep
    ]
    if not rows:
        return None
    header = ["row", "batch size", "prompts/pass", "queries/s", "windows/s", "peak CUDA MiB"]
    return "\n".join(_render([header, *rows]))


def plan_text(plan: Plan) -> str:
    """What will run and the expected time of each row, from the calibration window."""
    config, calibration = plan.config, plan.calibration
    model = config.model if config.synthetic is None else f"synthetic {config.synthetic}"
    step = f" step {config.sliding_step}" if config.slides else ""
    lines = [
        f"model {model} on "
        f"{config.device} ({config.dtype}); {len(plan.queries)} of {plan.total_queries} queries, "
        f"{_depth(plan.depth, config.top_k)}, window {config.window}{step}: "
        f"{plan.windows} {config.readout_strategy} windows; "
        f"strategies {', '.join(config.ranking_strategies)}"
    ]
    if calibration is not None:
        lines.append(
            f"calibration: one window of {calibration.prompt_tokens} tokens: forward "
            f"{calibration.forward_seconds:.3g} s, decoding {calibration.token_seconds:.3g} s/token"
        )
    estimates = plan.estimates()
    lines += [f"  {name}: expected {seconds:.0f} s" for name, seconds in estimates.items()]
    lines += [f"  {row}: unavailable: {reason}" for row, reason in plan.unavailable.items()]
    extras = ["process start-up"] if config.isolate else []
    runnable = [row for row in config.ordered_rows if row not in plan.unavailable]
    if any(onnx_precision(row) is not None for row in runnable):
        extras.append("ONNX exports")
    note = f" plus {' and '.join(extras)}" if extras else ""
    lines.append(f"expected total: {sum(estimates.values()) / 60:.1f} min{note}")
    return "\n".join(lines)


def row_line(result: RowResult) -> str:
    """A one-line progress note for a finished row."""
    outcome, name = result.outcome, result.variant.name
    if outcome is None:
        return f"{name}: {result.status}: {result.reason}"
    return (
        f"{name}: {outcome.seconds:.1f} s for {outcome.windows} windows "
        f"(loaded in {outcome.load_seconds:.1f} s)"
    )
