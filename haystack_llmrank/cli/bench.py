"""``llmrank bench``: time FIRST reranking variants on DL19 and save the results as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from haystack_llmrank.bench.config import (
    CUDA_DEFAULT_ROWS,
    DEFAULT_ROWS,
    ROWS,
    SYNTHETIC_CONFIGS,
    BenchConfig,
    default_data_dir,
)
from haystack_llmrank.cli.options import check_not_input, device_help, positive_int
from haystack_llmrank.scorers.base import DEFAULT_MAX_BATCH_TOKENS
from haystack_llmrank.strategies import DEFAULT_WINDOW_SIZE, STRATEGIES

DEFAULT_JSON = Path("llmrank-bench.json")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _sizes(text: str) -> tuple[int, ...]:
    sizes = [size.strip() for size in text.split(",")]
    if not all(sizes):
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,4,16, got {text!r}")
    return tuple(positive_int(size) for size in sizes)


def _noise_levels(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(level) for level in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,0.5,1, got {text!r}") from None


def _query_count(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options and handler to ``parser``."""
    parser.description = (
        "Rerank the first N DL19 queries with each row (plain transformers, the engine on "
        "torch and ONNX, full-permutation generation, an oracle that reads the qrels "
        "instead of running a model), all from the same prompt token ids; the engine and "
        "oracle rows once per --strategies. Print a table and save JSON. Each row runs in "
        "a fresh process unless --in-process."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="folder with candidates.jsonl and qrels.txt (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="HF folder, GGUF file or 'default' (the embedded FIRST-trained SmolLM2)",
    )
    parser.add_argument(
        "--synthetic-config",
        choices=sorted(SYNTHETIC_CONFIGS),
        default=None,
        help="time a random-weight model of this shape instead of --model",
    )
    parser.add_argument(
        "--rows",
        type=_names,
        default=None,
        help=f"comma-separated rows out of {','.join(ROWS)} (default: {','.join(DEFAULT_ROWS)}"
        f" on CPU, {','.join(CUDA_DEFAULT_ROWS)} on CUDA)",
    )
    parser.add_argument(
        "--queries",
        type=_query_count,
        default=5,
        help="rank the first N queries, or 'all' (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=100, help="candidates per query (default: 100)"
    )
    parser.add_argument(
        "--window-size",
        type=positive_int,
        default=None,
        help=f"passages per window (default: {DEFAULT_WINDOW_SIZE}, or the template's labels "
        "where fewer)",
    )
    parser.add_argument(
        "--step",
        type=positive_int,
        default=None,
        help="sliding window step (default: half the window)",
    )
    parser.add_argument(
        "--strategies",
        type=_names,
        default=None,
        help=f"comma-separated strategies of the engine and oracle rows, out of "
        f"{','.join(STRATEGIES)} (default: the readout's, sliding for label logits and "
        "disjoint for a vote; the plain row always ranks with the readout's)",
    )
    parser.add_argument(
        "--oracle-noise",
        type=_noise_levels,
        default=(0.0,),
        help="comma-separated noise levels of the oracle rows: the standard deviation of the "
        "Gaussian noise added to every passage's qrels grade (0 for unjudged passages) "
        "(default: 0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the oracle's noise and of synthetic weights (default: 0)",
    )
    parser.add_argument(  # the onnx rows run on it too: what the onnx backend takes
        "--device", default=None, help=device_help("cuda if any", "onnx")
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="torch dtype of the torch rows (default: float32 on CPU; on CUDA the checkpoint's, "
        "bfloat16 for synthetic models); torch-bf16 always runs the engine in bfloat16",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads of every row (torch's, and ONNX Runtime's intra-op)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="windows per scorer call of the engine rows (one query's step is never split)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=None,
        help="padded tokens per forward pass of every engine row alike (default: one window "
        f"per pass on a CPU, else {DEFAULT_MAX_BATCH_TOKENS})",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=(),
        help="also time the engine rows at each of these batch sizes, e.g. 1,4,16: up to that "
        "many windows per scorer call (one query's step is never split) and, per forward "
        "pass, up to that many times the longest prompt's tokens",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=None,
        help="prompt token budget (default: the model's context length)",
    )
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=None,
        help="keep ONNX exports here and reuse those already there",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed windows per row (default: 1)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run all rows in this process (faster start; peak RSS not per row)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to save the results (default: %(default)s)",
    )
    parser.set_defaults(handler=handle)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The benchmark settings of parsed ``bench`` arguments."""
    return BenchConfig(
        data_dir=args.data_dir,
        model=args.model,
        synthetic=args.synthetic_config,
        rows=args.rows,
        queries=args.queries,
        top_k=args.top_k,
        window_size=args.window_size,
        step=args.step,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        sweep_batch_sizes=args.batch_sizes,
        max_prompt_tokens=args.max_prompt_tokens,
        export_dir=args.export_dir,
        warmup=args.warmup,
        isolate=not args.in_process,
        progress=not args.no_progress,
        seed=args.seed,
        strategies=args.strategies,
        oracle_noise=args.oracle_noise,
    )


def handle(args: argparse.Namespace) -> int:
    """Plan, print the estimate, run every row, print the tables and save the JSON (after
    each row, so that an interrupted run keeps the rows it finished)."""
    from haystack_llmrank.bench.report import build_report
    from haystack_llmrank.bench.runner import RowResult, prepare, run
    from haystack_llmrank.bench.table import plan_text, results_table, row_line, sweep_table
    from haystack_llmrank.evaluation import require_pytrec_eval
    from haystack_llmrank.staged_files import check_output, staged_outputs

    require_pytrec_eval()  # nDCG@10 of every row: fail before hours of timing, not after
    config = config_from_args(args)  # checks every setting before any folder is made
    check_output(args.json, new_folders=True)  # likewise
    candidates, qrels = config.data_files
    check_not_input(
        "--json", args.json, [("the candidates file", candidates), ("the qrels file", qrels)]
    )
    plan = prepare(config)
    replaced = args.json.exists()
    if replaced:
        print(f"{args.json} exists: this run replaces it as its first row ends", flush=True)
    print(plan_text(plan), flush=True)

    finished: list[RowResult] = []

    def row_done(result: RowResult) -> None:
        print(row_line(result), flush=True)
        finished.append(result)
        so_far = build_report(plan, finished, command=args.command_line)
        args.json.resolve().parent.mkdir(parents=True, exist_ok=True)
        with staged_outputs(args.json) as (staged,):
            staged.write_text(json.dumps(so_far.to_dict(), indent=2) + "\n", encoding="utf-8")

    try:
        results = run(plan, on_row=row_done)
    except KeyboardInterrupt:
        if finished:
            print(f"interrupted: {args.json} holds the {len(finished)} rows that ended", flush=True)
        raise
    report = build_report(plan, results, command=args.command_line)
    print(results_table(report))
    sweep = sweep_table(report)
    if sweep is not None:
        print(sweep)
    print(f"saved {args.json}" + (" (replaced the earlier file)" if replaced else ""))
    return 1 if report.failed else 0
