"""``llmrank eval``: metrics of a TREC run, or of a candidates file's own order, against qrels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from haystack_llmrank.cli.options import check_not_input, plural, positive_int
from haystack_llmrank.data import (
    FORMATS,
    DataFormatError,
    JsonLineError,
    first_stage_run,
    read_qrels,
    read_queries,
    read_run,
)
from haystack_llmrank.evaluation import DEFAULT_METRICS, RELEVANCE_LEVEL, Evaluation, evaluate
from haystack_llmrank.staged_files import check_output, staged_outputs


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options and handler to ``parser``."""
    parser.description = (
        "Evaluate with trec_eval (pytrec_eval): give RUN QRELS, or --candidates FILE QRELS "
        "to evaluate the first-stage order of a candidates file. nDCG uses graded, linear "
        "gains; map, mrr, recall and p count grades >= --relevance-level as relevant."
    )
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="RUN QRELS, or QRELS with --candidates"
    )
    parser.add_argument(
        "--candidates", type=Path, default=None, help="evaluate this candidates file's order"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="--candidates format (default auto)"
    )
    parser.add_argument(
        "--queries",
        type=positive_int,
        default=None,
        help="with --candidates: only its first N queries, as `llmrank rerank --queries`",
    )
    parser.add_argument(
        "--top-k-candidates",
        type=positive_int,
        default=None,
        help="with --candidates: only each query's first K, as `llmrank rerank` (default all)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(DEFAULT_METRICS),
        help=f"family@k names, space or comma separated (default: {' '.join(DEFAULT_METRICS)})",
    )
    parser.add_argument(
        "--relevance-level",
        type=positive_int,
        default=RELEVANCE_LEVEL,
        help=f"lowest grade counted relevant by binary metrics, at least 1: pytrec_eval takes "
        f"no lower level, though trec_eval's -l does (default {RELEVANCE_LEVEL}, as TREC Deep "
        "Learning)",
    )
    parser.add_argument(
        "--missing-as-zero",
        action="store_true",
        help="count judged queries absent from the run as 0 (like trec_eval -c)",
    )
    parser.add_argument("--per-query", action="store_true", help="print one row per query too")
    parser.add_argument(
        "--json", type=Path, default=None, help="write all results as JSON (a regular file)"
    )
    parser.set_defaults(handler=run)


def format_table(result: Evaluation, *, per_query: bool) -> str:
    """A plain-text table: a header, optional per-query rows, the mean row and a footer."""
    rows = [["qid", *result.metrics]]
    if per_query:
        rows += [
            [qid, *(f"{v[m]:.4f}" for m in result.metrics)] for qid, v in result.per_query.items()
        ]
    rows.append(["mean", *(f"{result.mean[m]:.4f}" for m in result.metrics)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            [
                row[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
            ]
        )
        for row in rows
    ]
    counted = plural(len(result.per_query), "query", "queries")
    footer = f"{counted}; relevance level {result.relevance_level}"
    if result.missing:
        missing = plural(len(result.missing), "judged query", "judged queries")
        treatment = (
            "counted as 0"
            if result.missing_as_zero
            else "left out of the mean; --missing-as-zero counts 0"
        )
        footer += f"; {missing} not in the run ({treatment})"
    if result.unjudged:
        footer += f"; {plural(len(result.unjudged), 'run query', 'run queries')} without judgements"
    return "\n".join([*lines, footer])


def run(args: argparse.Namespace) -> int:
    """Read the run (or candidates) and qrels, evaluate, write ``--json``, print the table."""
    expected = 1 if args.candidates is not None else 2
    if len(args.files) != expected:
        raise ValueError("give RUN QRELS, or --candidates FILE QRELS")
    if args.json is not None:
        check_output(args.json)
        order = (
            ("the run", args.files[0])
            if args.candidates is None
            else ("the candidates file", args.candidates)
        )
        check_not_input("--json", args.json, [order, ("the qrels file", args.files[-1])])
    candidate_options = (args.queries, args.top_k_candidates, args.format != "auto")
    if args.candidates is None and any(candidate_options):
        raise ValueError("--format, --queries and --top-k-candidates apply to --candidates only")
    if args.candidates is not None:
        queries = read_queries(args.candidates, args.format)
        if args.queries is not None and args.queries > len(queries):
            held = plural(len(queries), "query", "queries")
            raise ValueError(f"--queries {args.queries} but {args.candidates} holds {held}")
        queries = queries[: args.queries]
        if args.top_k_candidates is not None:
            queries = [query.top(args.top_k_candidates) for query in queries]
        ranked = first_stage_run(queries)
    else:
        try:
            ranked = read_run(args.files[0])
        except JsonLineError as exc:
            raise DataFormatError(
                f"{exc}; to evaluate a candidates file's order, give it with --candidates"
            ) from None
    metrics = [name for item in args.metrics for name in item.split(",") if name]
    result = evaluate(
        ranked,
        read_qrels(args.files[-1]),
        metrics,
        relevance_level=args.relevance_level,
        missing_as_zero=args.missing_as_zero,
    )
    if args.json is not None:
        with staged_outputs(args.json) as (staged,):
            staged.write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    print(format_table(result, per_query=args.per_query))
    return 0
