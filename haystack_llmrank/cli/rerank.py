"""``llmrank rerank``: rerank a candidates file and write a TREC run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from haystack_llmrank.cli.options import (
    add_model_options,
    load_reranker,
    plural,
    positive_int,
)
from haystack_llmrank.data import (
    FORMATS,
    QueryCandidates,
    check_word,
    read_queries,
    run_from_rankings,
    write_run,
)
from haystack_llmrank.ranking import Ranking


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``rerank`` options and handler to ``parser``."""
    parser.description = (
        "Rerank each query's candidates with a FIRST listwise reranker and write a TREC run "
        "(qid Q0 docid rank score tag). The score column is the ranking's score rounded to "
        "4 decimals and lowered where needed so it strictly decreases down each query."
    )
    parser.add_argument(
        "input", type=Path, help="candidates JSONL or rank_llm retrieve-results JSON"
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="TREC run file to write")
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="input format (default auto)"
    )
    parser.add_argument(
        "--top-k-candidates",
        type=positive_int,
        default=100,
        help="rerank only the first K candidates of each query (default 100)",
    )
    parser.add_argument(
        "--rank-depth",
        type=positive_int,
        default=None,
        metavar="K",
        help="only the first K positions of each ranking matter: tdpart and tournament rank "
        "just enough and keep the rest in first-stage order; sliding and disjoint rank all "
        "(default: all)",
    )
    add_model_options(parser, batch_size=1)
    parser.add_argument(
        "--queries",
        type=positive_int,
        default=None,
        help="only the first N queries; more than the file holds is an error (default: all)",
    )
    parser.add_argument("--tag", default="llmrank", help="run tag (last column)")
    parser.add_argument(
        "--save-json", type=Path, default=None, help="also write the rankings as JSON"
    )
    parser.set_defaults(handler=run)


def rankings_json(queries: list[QueryCandidates], rankings: list[Ranking]) -> list[dict[str, Any]]:
    """Rankings as JSON: per query, each docid with its rank, score and uncapped logit."""
    return [
        {
            "qid": query.qid,
            "query": query.query,
            "ranking": [
                {"docid": query.candidates[i].docid, "rank": r + 1, "score": score, "logit": logit}
                for r, (i, score, logit) in enumerate(
                    zip(ranking.order, ranking.scores, ranking.logits, strict=True)
                )
            ],
        }
        for query, ranking in zip(queries, rankings, strict=True)
    ]


def _check_writable(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and not path.parent.is_dir():
            raise OSError(f"cannot write {path}: folder {path.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    """Rerank, write the run (and optionally the rankings as JSON), print a summary."""
    from tqdm import tqdm

    check_word(args.tag, "the run tag")
    _check_writable(args.output, args.save_json)
    queries = read_queries(args.input, args.format)
    if args.queries is not None and args.queries > len(queries):
        held = plural(len(queries), "query", "queries")
        raise ValueError(f"--queries {args.queries} but {args.input} holds {held}")
    queries = [query.top(args.top_k_candidates) for query in queries[: args.queries]]
    started = time.perf_counter()
    reranker = load_reranker(args)
    loaded = time.perf_counter()
    requests = [(query.query, query.texts) for query in queries]
    most = reranker.count_windows([len(texts) for _, texts in requests], args.rank_depth)
    with tqdm(total=most, unit="window", desc="rerank") as bar:
        rankings = reranker.rerank_many(requests, top_k=args.rank_depth, on_window=bar.update)
    seconds = time.perf_counter() - loaded
    windows = sum(ranking.cost.windows for ranking in rankings)
    write_run(args.output, run_from_rankings(queries, rankings), args.tag)
    if args.save_json is not None:
        args.save_json.write_text(
            json.dumps(rankings_json(queries, rankings), indent=1) + "\n", encoding="utf-8"
        )
    passages = sum(len(query.candidates) for query in queries)
    print(
        f"reranked {plural(len(queries), 'query', 'queries')} ({plural(passages, 'passage')}, "
        f"{plural(windows, 'window')}) in "
        f"{seconds:.1f} s, {seconds / len(queries):.2f} s/query "
        f"(model load {loaded - started:.1f} s); run written to {args.output}"
    )
    return 0
