"""``llmrank rerank``: rerank a candidates file and write a TREC run."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haystack_llmrank.cli.options import (
    add_model_options,
    check_not_input,
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
from haystack_llmrank.errors import PromptTooLongError, listed
from haystack_llmrank.fusion import complete_scores
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.staged_files import check_output, staged_outputs

if TYPE_CHECKING:
    from haystack_llmrank.reranker import Reranker


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``rerank`` options and handler to ``parser``."""
    parser.description = (
        "Rerank each query's candidates with a FIRST listwise reranker and write a TREC run "
        "(qid Q0 docid rank score tag). The score column is the ranking's score rounded to "
        "4 decimals and lowered where needed so it strictly decreases down each query as "
        "trec_eval reads it (as a 32-bit float)."
    )
    parser.add_argument(
        "input", type=Path, help="candidates JSONL or rank_llm retrieve-results JSON"
    )
    parser.add_argument(
        "--output", "-o", type=Path, required=True, help="TREC run file to write (a regular file)"
    )
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
        help="only the first K positions of each ranking matter: tdpart and tournament play "
        "rounds until K are ranked and keep the rest in first-stage order. Unset, they play "
        "one round, which ranks tdpart's pivot and the passages above it (at least half the "
        "window; where they do not fit one window, only its first passages that no passage "
        "left out can beat) and tournament's last window. sliding and disjoint always rank all, "
        "and refuse it",
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


def placed_by(ranking: Ranking) -> list[str]:
    """What put each position of ``ranking`` where it is: ``"model"`` for the positions a
    window ordered, ``"input order"`` for those the strategy left in first-stage order, and
    ``"blank"`` for the blank passages after them (see :class:`Ranking`)."""
    n, left = len(ranking), ranking.unranked - ranking.blank
    return ["model"] * (n - ranking.unranked) + ["input order"] * left + ["blank"] * ranking.blank


def rankings_json(queries: list[QueryCandidates], rankings: list[Ranking]) -> list[dict[str, Any]]:
    """Rankings as JSON: per query, each docid with its rank, score, uncapped logit and what
    placed it (:func:`placed_by`)."""
    return [
        {
            "qid": query.qid,
            "query": query.query,
            "ranking": [
                {
                    "docid": query.candidates[i].docid,
                    "rank": r + 1,
                    "score": score,
                    "logit": logit,
                    "placed_by": placed,
                }
                for r, (i, score, logit, placed) in enumerate(
                    zip(
                        ranking.order,
                        ranking.scores,
                        ranking.logits,
                        placed_by(ranking),
                        strict=True,
                    )
                )
            ],
        }
        for query, ranking in zip(queries, rankings, strict=True)
    ]


def _check_outputs(source: Path, output: Path, save_json: Path | None) -> None:
    """Refuse outputs that could not be written, or would replace the candidates file
    ``source`` or each other, before anything runs."""
    check_output(output)
    candidates = ("the candidates file", source)
    check_not_input("--output", output, [candidates])
    if save_json is not None:
        check_output(save_json)
        check_not_input("--save-json", save_json, [("the --output file", output), candidates])


def _too_long(queries: Sequence[QueryCandidates], refused: Mapping[int, str]) -> PromptTooLongError:
    """The refusal of the ``refused`` requests (by position in ``queries``, each with its
    problem), naming each query and its record."""
    over = [(queries[position], problem) for position, problem in refused.items()]
    named = listed([f"{query.qid} ({query.where})" for query, _ in over], 10)
    first, problem = over[0]
    return PromptTooLongError(
        f"{plural(len(over), 'query', 'queries')} too long for any prompt, so none was "
        f"reranked: {named}; {first.qid}: {problem} (--max-prompt-tokens)"
    )


def run(args: argparse.Namespace) -> int:
    """Rerank, write the run (and optionally the rankings as JSON), print a summary."""
    from tqdm import tqdm

    check_word(args.tag, "the run tag")
    _check_outputs(args.input, args.output, args.save_json)
    queries = read_queries(args.input, args.format)
    if args.queries is not None and args.queries > len(queries):
        held = plural(len(queries), "query", "queries")
        raise ValueError(f"--queries {args.queries} but {args.input} holds {held}")
    queries = [query.top(args.top_k_candidates) for query in queries[: args.queries]]
    if not any(query.candidates for query in queries):
        raise ValueError(f"no query of {args.input} has candidates: the run would be empty")
    started = time.perf_counter()
    reranker = load_reranker(args)
    loaded = time.perf_counter()
    requests = [(query.query, query.texts) for query in queries]
    scores = [complete_scores(c.score for c in query.candidates) for query in queries]
    most = reranker.count_windows([len(texts) for _, texts in requests], args.rank_depth)
    with tqdm(total=most, unit="window", desc="rerank") as bar:
        try:
            rankings = reranker.rerank_many(
                requests,
                top_k=args.rank_depth,
                on_window=bar.update,
                first_stage_scores=scores,
            )
        except PromptTooLongError as exc:
            if not exc.requests:  # a prompt of a window, not a query refused up front
                raise
            raise _too_long(queries, exc.requests) from exc
    seconds = time.perf_counter() - loaded
    windows = sum(ranking.cost.windows for ranking in rankings)
    outputs = [args.output] if args.save_json is None else [args.output, args.save_json]
    with staged_outputs(*outputs) as staged:
        write_run(staged[0], run_from_rankings(queries, rankings), args.tag)
        if args.save_json is not None:
            staged[1].write_text(
                json.dumps(rankings_json(queries, rankings), indent=1) + "\n", encoding="utf-8"
            )
    passages = sum(len(query.candidates) for query in queries)
    print(
        f"reranked {plural(len(queries), 'query', 'queries')} ({plural(passages, 'passage')}, "
        f"{plural(windows, 'window')}) in "
        f"{seconds:.1f} s, {seconds / len(queries):.2f} s/query "
        f"(model load {loaded - started:.1f} s); run written to {args.output}"
    )
    if reranker.fusion_k is not None:
        print(_fusion_summary(reranker, scores))
    return 0


def _fusion_summary(reranker: Reranker, scores: list[list[float] | None]) -> str:
    """Which queries' rankings were fused with the first stage's, and by what."""
    scored = sum(given is not None for given in scores)
    rest = len(scores) - scored
    others = "by candidate order" if not reranker.fusion_needs_scores else "not fused (no scores)"
    tail = f", {plural(rest, 'query', 'queries')} {others}" if rest else ""
    return (
        f"fused with the first stage by reciprocal rank fusion (K={reranker.fusion_k}): "
        f"{plural(scored, 'query', 'queries')} by candidate scores{tail}"
    )
