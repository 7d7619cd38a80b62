"""nDCG@10 of a model on held-out queries, candidates in BM25, reversed or shuffled order.

Reads the query split that ``llmrank train`` wrote (``split.json``), reranks only its
validation queries, and compares with the first stage and, optionally, a teacher run on
the same queries:

    python examples/heldout_eval.py --model runs/train-smollm2 \
        --split runs/train-smollm2/split.json --teacher runs/dl19-minilm.run \
        --json runs/heldout-trained.json

The reranker sees the candidates in the given order (unless ``--order-invariant``); the run
is scored against the same qrels whatever the order, so the three figures differ only by
position sensitivity. ``--both-orders`` ranks with ``Reranker(both_orders=True)``: each
window scored as given and reversed. ``--order-invariant`` ranks with
``Reranker(order_invariant=True)``: each query's candidates in an order fixed by their
texts, whatever order they come in, so the BM25, reversed and shuffled figures are the
same. ``--strategy`` picks how windows cover the candidates (by default the readout's
own), with ``--window-size`` passages a window (and ``--step`` for the sliding window).
``--fusion-k K`` also scores each order's ranking fused by reciprocal rank fusion
(:func:`~haystack_llmrank.fusion.fuse_with_first_stage`), from the same forward passes,
with the first stage's ranking read from the candidates' BM25 scores, as a reranker
given ``first_stage_scores`` reads it: in every order the scores travel with the passages,
so each order is fused with BM25's ranking. ``--interpolate W`` scores instead, for a readout
that scores each passage on its own (a vote in disjoint windows), ``W`` times the model's
z-scored logits plus ``1 - W`` times BM25's z-scored scores, per query: score fusion, to
compare with rank fusion on the same forward passes.

The report records the model as resolved (``resolved_model``: its weights by SHA-256, see
:func:`resolved_model`) and the settings it read with (strategy, window, vote, passage
words, depth, dtype, order_invariant, both_orders), which ``fold_summary.py`` compares
before it pools records.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from haystack_llmrank.bench.report import environment
from haystack_llmrank.cli.options import (
    add_passage_words_option,
    device_help,
    existing_file,
    positive_int,
)
from haystack_llmrank.data import (
    Qrels,
    QueryCandidates,
    Run,
    first_stage_run,
    read_qrels,
    read_queries,
    read_run,
    run_from_rankings,
)
from haystack_llmrank.errors import listed
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.fusion import complete_scores, first_stage_ranks, fuse_with_first_stage
from haystack_llmrank.models import resolve_model, weights_fingerprint
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.onnx_metadata import read_metadata
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from haystack_llmrank.strategies import STRATEGIES

DL19 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trec-dl19"
ORDERS = ("bm25", "reversed", "shuffled")


def arrange(query: QueryCandidates, order: str, seed: int) -> QueryCandidates:
    """``query`` with its candidates in ``order``; ``shuffled`` draws from ``seed`` and the
    whole qid (its UTF-8 bytes as a little-endian integer, so a qid of at most 8 bytes gets
    the order that the recorded results were shuffled in)."""
    candidates = list(query.candidates)
    if order == "reversed":
        candidates.reverse()
    elif order == "shuffled":
        rng = np.random.default_rng([seed, int.from_bytes(query.qid.encode(), "little")])
        candidates = [candidates[i] for i in rng.permutation(len(candidates))]
    return QueryCandidates(query.qid, query.query, tuple(candidates))


def bm25_scores(query: QueryCandidates) -> list[float]:
    """The first stage's score of every candidate of ``query``, in its current order."""
    scores = complete_scores(candidate.score for candidate in query.candidates)
    if scores is None:
        raise SystemExit(
            f"--fusion-k needs a score on every candidate; query {query.qid} lacks one"
        )
    return scores


def unit_weight(text: str) -> float:
    """``text`` as a number from 0 to 1 (argparse type)."""
    try:
        weight = float(text)
    except ValueError:
        weight = float("nan")
    if not 0 <= weight <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return weight


def zscored(values: Sequence[float]) -> np.ndarray:
    """``values`` less their mean, over their standard deviation (all 0 where they are equal)."""
    array = np.asarray(values, dtype=float)
    spread = array.std()
    return (array - array.mean()) / spread if spread > 0 else np.zeros_like(array)


def interpolated(query: QueryCandidates, ranking: Ranking, weight: float) -> dict[str, float]:
    """Each candidate's ``weight`` x its z-scored logit + ``1 - weight`` x its z-scored BM25
    score, by docid; ``ranking`` must have a logit for every candidate (no blank passage)."""
    if ranking.blank:
        raise SystemExit(f"--interpolate: query {query.qid} has passages no window showed")
    logit = ranking.logit_of()
    fused = weight * zscored([logit[i] for i in range(len(ranking))]) + (1 - weight) * zscored(
        bm25_scores(query)
    )
    return {c.docid: float(v) for c, v in zip(query.candidates, fused, strict=True)}


def ndcg10(run: Run, qrels: Qrels, report: dict[str, Any], key: str) -> None:
    """Put ``run``'s mean nDCG@10 under ``key`` and its per-query values under ``per_query``."""
    scored = evaluate(run, qrels, ["ndcg@10"])
    report[key] = scored.mean["ndcg@10"]
    report.setdefault("per_query", {})[key] = {
        qid: values["ndcg@10"] for qid, values in sorted(scored.per_query.items())
    }


def add_data_options(parser: argparse.ArgumentParser, *, teacher: bool) -> None:
    """``--split`` (required), ``--candidates`` and ``--qrels`` (DL19's by default), and with
    ``teacher`` a ``--teacher`` run: files that must exist."""
    parser.add_argument(
        "--split", type=existing_file, required=True, help="split.json of llmrank train"
    )
    parser.add_argument("--candidates", type=existing_file, default=str(DL19 / "candidates.jsonl"))
    parser.add_argument("--qrels", type=existing_file, default=str(DL19 / "qrels.txt"))
    if teacher:
        parser.add_argument(
            "--teacher",
            type=existing_file,
            default=None,
            help="a baseline run to score (made by examples/teacher_run.py)",
        )


def heldout_queries(
    candidates: Path, split: Path, depth: int, side: str = "validation"
) -> list[QueryCandidates]:
    """The top ``depth`` candidates of each query on ``side`` of ``split`` (its held-out
    queries by default); every one must be in ``candidates``."""
    held = set(json.loads(split.read_text("utf-8"))[side])
    queries = [q.top(depth) for q in read_queries(candidates) if q.qid in held]
    missing = sorted(held - {q.qid for q in queries})
    if missing:
        raise ValueError(
            f"{len(missing)} {side} queries of {split} are not in {candidates}: "
            f"{listed(missing, 10)}"
        )
    return queries


def teacher_scores(queries: Sequence[QueryCandidates], teacher: Path) -> Run:
    """The teacher run's score of every candidate of ``queries``; each must have one."""
    run = read_run(teacher)
    missing = [
        f"{q.qid}/{c.docid}"
        for q in queries
        for c in q.candidates
        if c.docid not in run.get(q.qid, {})
    ]
    if missing:
        raise ValueError(
            f"the teacher run {teacher} does not score {len(missing)} candidates "
            f"(query/docid): {listed(missing, 10)}"
        )
    return {q.qid: {c.docid: run[q.qid][c.docid] for c in q.candidates} for q in queries}


def baselines(
    queries: Sequence[QueryCandidates], qrels: Qrels, teacher: Path | None, report: dict[str, Any]
) -> None:
    """nDCG@10 of the first stage's order and, given a TREC run, of the teacher's."""
    ndcg10(first_stage_run(queries), qrels, report, "first_stage")
    if teacher is not None:
        ndcg10(teacher_scores(queries, teacher), qrels, report, "teacher")


def used_dtype(reranker: Reranker) -> str | None:
    """The torch dtype ``reranker`` runs in (``None`` for ONNX: its export fixes that)."""
    scorer = reranker.scorer
    return (
        str(scorer.dtype).removeprefix("torch.") if isinstance(scorer, TorchLabelScorer) else None
    )


def resolved_model(model: str, backend: str) -> dict[str, Any]:
    """What ``model`` names, to tell records of different models apart whatever alias or
    path named them: on torch the resolved source and, by file, the SHA-256 of an adapter's
    config and weights and what identifies its base
    (:func:`~haystack_llmrank.models.weights_fingerprint`); on ONNX the export folder and
    the SHA-256 of its files and of the weights it was exported from."""
    if backend == "onnx":
        metadata = read_metadata(model, verify_hashes=False)  # loading verified them
        return {
            "export": str(Path(model).expanduser().resolve()),
            "files": metadata.files,
            "source_weights": metadata.source_weights,
        }
    source = resolve_model(model)
    return {
        "source": source.name,
        "adapter": source.adapter,
        "weights": weights_fingerprint(source),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--backend", default="torch", choices=["torch", "onnx"], help="onnx: an export folder"
    )
    add_data_options(parser, teacher=True)
    parser.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    parser.add_argument("--depth", type=positive_int, default=100, help="rerank the top N")
    parser.add_argument("--device", default="cpu", help=device_help("cpu"))
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument(
        "--dtype", default=None, help="torch dtype (default float32; on CUDA the checkpoint's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--both-orders", action="store_true", help="score each window as given and reversed"
    )
    parser.add_argument(
        "--order-invariant",
        action="store_true",
        help="rank in an order fixed by the candidates' texts (disjoint strategy only)",
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default=None, help="default: the readout's own"
    )
    parser.add_argument(
        "--window-size",
        type=positive_int,
        default=None,
        help="default: 20, or the template's labels",
    )
    parser.add_argument(
        "--step",
        type=positive_int,
        default=None,
        help="sliding window's step (default: half the window)",
    )
    parser.add_argument("--vote", default=None, help="rank by this token's votes (e.g. ' yes')")
    add_passage_words_option(parser)
    parser.add_argument(
        "--fusion-k", type=int, nargs="*", default=[], help="also score RRF with BM25's scores"
    )
    parser.add_argument(
        "--interpolate",
        type=unit_weight,
        nargs="*",
        default=[],
        metavar="W",
        help="also score W x the model's z-scored logits + (1 - W) x BM25's z-scored scores "
        "(a readout that scores each passage on its own: a vote in disjoint windows)",
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    queries = heldout_queries(args.candidates, args.split, args.depth)
    held = {q.qid for q in queries}
    qrels = {qid: judged for qid, judged in read_qrels(args.qrels).items() if qid in held}
    report: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "environment": environment(args.device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "model": args.model,
        "backend": args.backend,
        "device": args.device,
        "both_orders": args.both_orders,
        "fusion_k": args.fusion_k,
        "interpolate": args.interpolate,
        "queries": sorted(held),
    }
    baselines(queries, qrels, args.teacher, report)
    reranker = Reranker.from_pretrained(
        args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads if args.backend == "onnx" else None,  # torch's: set above
        both_orders=args.both_orders,
        order_invariant=args.order_invariant,
        vote=args.vote,
        strategy=args.strategy,
        window_size=args.window_size,
        step=args.step,
        max_passage_words=args.max_passage_words,
    )
    comparable = reranker.strategy.name == "disjoint" and reranker.prompts.template.vote
    if args.interpolate and not comparable:
        raise SystemExit("--interpolate needs a vote read in disjoint windows: logits that compare")
    report["resolved_model"] = resolved_model(args.model, args.backend)
    report["dtype"] = used_dtype(reranker)
    report["depth"] = args.depth
    report["max_passage_words"] = reranker.prompts.max_passage_words
    report["strategy"] = reranker.strategy.name
    report["window_size"] = reranker.strategy.window_size
    report["step"] = getattr(reranker.strategy, "step", None)  # the sliding window's
    report["order_invariant"] = reranker.order_invariant
    report["vote"] = reranker.prompts.template.vote
    for order in args.orders:
        arranged = [arrange(q, order, args.seed) for q in queries]
        started = time.perf_counter()
        with tqdm(total=reranker.count_windows([len(q.candidates) for q in arranged])) as bar:
            rankings = reranker.rerank_many(
                [(q.query, q.texts) for q in arranged], on_window=bar.update
            )
        seconds = (time.perf_counter() - started) / len(queries)
        ndcg10(run_from_rankings(arranged, rankings), qrels, report, f"reranked_{order}")
        first_stage = [first_stage_ranks(bm25_scores(q)) for q in arranged] if args.fusion_k else []
        for k in args.fusion_k:
            fused = [
                fuse_with_first_stage(ranking, k, positions=ranks)
                for ranking, ranks in zip(rankings, first_stage, strict=True)
            ]
            ndcg10(run_from_rankings(arranged, fused), qrels, report, f"fused_{order}_k{k}")
        for weight in args.interpolate:
            run = {
                q.qid: interpolated(q, ranking, weight)
                for q, ranking in zip(arranged, rankings, strict=True)
            }
            ndcg10(run, qrels, report, f"interpolated_{order}_w{weight:g}")
        report[f"{order}_seconds_per_query"] = seconds
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
