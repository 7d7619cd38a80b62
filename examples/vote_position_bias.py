"""A vote model's preference for window positions, and what taking it out does.

A vote readout in disjoint windows (the default model's) ranks every passage by its own
vote logit, so a model that votes higher on some line of a window than on others, whatever
the line holds, ranks by position as well as by content. This measures that preference
and its effect:

1. the split's training queries (``split.json``: ``train``) are ranked with their top
   ``--depth`` candidates shuffled, so that a position says nothing of relevance, and each
   window position's bias is the mean of its votes less their window's mean;
2. the held-out queries (``validation``) are ranked in BM25, reversed and shuffled order,
   and scored by nDCG@10 both as read and with every vote less its position's bias:

    python examples/vote_position_bias.py --split examples/results/split-seed0.json \
        --json runs/vote-position-bias.json

Windows are dealt as the engine deals them (:func:`~haystack_llmrank.strategies.deal`);
the held-out figures as read are the ``heldout_eval.py`` figures of the same orders.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from heldout_eval import ORDERS, add_data_options, arrange, heldout_queries, ndcg10
from tqdm import tqdm

from haystack_llmrank.bench.report import environment
from haystack_llmrank.cli.options import device_help, positive_int
from haystack_llmrank.data import Qrels, QueryCandidates, Run, read_qrels
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import deal


@dataclass(frozen=True)
class Vote:
    """One passage's vote logit, with the window and the position in it that it was cast at."""

    qid: str
    docid: str
    window: int
    position: int
    logit: float


def window_positions(count: int, window_size: int) -> list[tuple[int, int]]:
    """``(window, position)`` of each of ``count`` passages, as the engine deals them."""
    where: dict[int, tuple[int, int]] = {}
    for window, members in enumerate(deal(range(count), window_size)):
        for position, item in enumerate(members):
            where[item] = (window, position)
    return [where[i] for i in range(count)]


def cast_votes(reranker: Reranker, queries: Sequence[QueryCandidates]) -> list[Vote]:
    """Every passage's vote logit when ``reranker`` ranks ``queries`` as given."""
    size = reranker.strategy.window_size
    with tqdm(total=reranker.count_windows([len(q.candidates) for q in queries])) as bar:
        rankings = reranker.rerank_many([(q.query, q.texts) for q in queries], on_window=bar.update)
    votes: list[Vote] = []
    for query, ranking in zip(queries, rankings, strict=True):
        logit = ranking.logit_of()
        for i, (window, position) in enumerate(window_positions(len(query.candidates), size)):
            votes.append(Vote(query.qid, query.candidates[i].docid, window, position, logit[i]))
    return votes


def position_bias(votes: Sequence[Vote]) -> dict[int, tuple[float, float]]:
    """Each position's mean vote above its window's mean, with that mean's standard error."""
    windows: dict[tuple[str, int], list[Vote]] = defaultdict(list)
    for vote in votes:
        windows[vote.qid, vote.window].append(vote)
    lifts: dict[int, list[float]] = defaultdict(list)
    for members in windows.values():
        mean = float(np.mean([v.logit for v in members]))
        for vote in members:
            lifts[vote.position].append(vote.logit - mean)
    return {
        position: (float(np.mean(values)), float(np.std(values) / np.sqrt(len(values))))
        for position, values in sorted(lifts.items())
    }


def debiased_run(votes: Sequence[Vote], bias: Mapping[int, float]) -> Run:
    """A run of each query's passages by vote less its position's bias (none where the
    bias has no value for a position); equal values keep the order of ``votes``."""
    by_query: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for index, vote in enumerate(votes):
        by_query[vote.qid].append((vote.logit - bias.get(vote.position, 0.0), index, vote.docid))
    run: Run = {}
    for qid, scored in by_query.items():
        ranked = sorted(scored, key=lambda item: (-item[0], item[1]))
        run[qid] = {docid: float(len(ranked) - r) for r, (_, _, docid) in enumerate(ranked)}
    return run


def split_queries(candidates: Path, split: Path, side: str, depth: int) -> list[QueryCandidates]:
    """The top ``depth`` candidates of each query on ``side`` of ``split``
    (:func:`heldout_queries`), of which there must be some."""
    queries = heldout_queries(candidates, split, depth, side)
    if not queries:
        raise ValueError(f"{split} lists no {side} queries")
    return queries


def held_out_figures(
    reranker: Reranker,
    queries: Sequence[QueryCandidates],
    qrels: Qrels,
    bias: Mapping[int, float],
    seed: int,
    report: dict[str, Any],
) -> None:
    """nDCG@10 of ``queries`` in each order, as read and less ``bias``, into ``report``."""
    for order in ORDERS:
        votes = cast_votes(reranker, [arrange(q, order, seed) for q in queries])
        ndcg10(debiased_run(votes, {}), qrels, report, f"as_read_{order}")
        ndcg10(debiased_run(votes, bias), qrels, report, f"debiased_{order}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    add_data_options(parser, teacher=False)
    parser.add_argument("--depth", type=positive_int, default=100, help="rank the top N")
    parser.add_argument("--device", default="cpu", help=device_help("cpu", "torch"))
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled orders")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = split_queries(args.candidates, args.split, "train", args.depth)
    held = split_queries(args.candidates, args.split, "validation", args.depth)
    held_ids = {q.qid for q in held}
    qrels = {qid: judged for qid, judged in read_qrels(args.qrels).items() if qid in held_ids}
    reranker = Reranker.from_pretrained(args.model, device=args.device)
    if reranker.prompts.template.vote is None or reranker.strategy.name != "disjoint":
        raise ValueError(f"{args.model} is not read by votes in disjoint windows")
    report: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "environment": environment(args.device),
        "model": args.model,
        "window_size": reranker.strategy.window_size,
        "max_passage_words": reranker.prompts.max_passage_words,
        "train_queries": len(train),
        "validation_queries": sorted(q.qid for q in held),
    }
    started = time.perf_counter()
    measured = position_bias(
        cast_votes(reranker, [arrange(q, "shuffled", args.seed) for q in train])
    )
    report["position_bias"] = {str(p): mean for p, (mean, _) in measured.items()}
    report["position_bias_standard_error"] = {str(p): se for p, (_, se) in measured.items()}
    bias = {position: mean for position, (mean, _) in measured.items()}
    held_out_figures(reranker, held, qrels, bias, args.seed, report)
    report["seconds"] = time.perf_counter() - started
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_query"}, indent=1))


if __name__ == "__main__":
    main()
