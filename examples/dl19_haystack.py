"""Rerank TREC DL19 BM25 top-100 with the Haystack component and write a TREC run.

    python examples/dl19_haystack.py --output runs/dl19-smollm2.run
    llmrank eval runs/dl19-smollm2.run ../shared/data/trec-dl19/qrels.txt

Every query goes through a one-component Haystack pipeline (FirstListwiseRanker) exactly as
a user's pipeline would run it, the Documents carrying their BM25 scores as a retriever's
do; seconds per query are measured around ``Pipeline.run``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from haystack import Document, Pipeline
from tqdm import tqdm

from haystack_llmrank import FirstListwiseRanker
from haystack_llmrank.cli.options import add_passage_words_option, fusion_choice, positive_int

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trec-dl19"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with candidates.jsonl"
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument(
        "--queries", type=positive_int, default=None, help="only the first N queries"
    )
    parser.add_argument(
        "--candidates", type=positive_int, default=100, help="top-k BM25 candidates"
    )
    parser.add_argument("--output", type=Path, required=True, help="TREC run file to write")
    parser.add_argument(
        "--timings", type=Path, default=None, help="JSON file for per-query seconds"
    )
    parser.add_argument(
        "--order-invariant",
        action="store_true",
        help="rank in an order fixed by the passages' texts (FirstListwiseRanker option)",
    )
    parser.add_argument(
        "--fusion-k",
        type=fusion_choice,
        default="auto",
        help="FirstListwiseRanker's fusion_k: auto (default; the default model fuses with "
        "the Documents' BM25 scores), none (the model alone) or an integer",
    )
    add_passage_words_option(parser)
    args = parser.parse_args()

    with (args.data / "candidates.jsonl").open(encoding="utf-8") as handle:
        queries = [json.loads(line) for line in handle if line.strip()][: args.queries]

    pipeline = Pipeline()
    pipeline.add_component(
        "ranker",
        FirstListwiseRanker(
            model=args.model,
            backend=args.backend,
            order_invariant=args.order_invariant,
            max_passage_words=args.max_passage_words,
            fusion_k=args.fusion_k,
        ),
    )
    pipeline.warm_up()

    seconds: dict[str, float] = {}
    lines: list[str] = []
    for record in tqdm(queries, desc="queries", unit="q"):
        docs = [
            Document(id=c["docid"], content=c["text"], score=c["score"])
            for c in record["candidates"][: args.candidates]
        ]
        start = time.perf_counter()
        ranked = pipeline.run({"ranker": {"query": record["query"], "documents": docs}})
        seconds[record["qid"]] = time.perf_counter() - start
        for rank, doc in enumerate(ranked["ranker"]["documents"], start=1):
            # trec_eval orders by score; a rank-derived score keeps the ranker's order exactly.
            lines.append(f"{record['qid']} Q0 {doc.id} {rank} {len(docs) - rank + 1} llmrank")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mean = statistics.mean(seconds.values())
    median = statistics.median(seconds.values())
    print(f"{len(queries)} queries, {mean:.2f} s/query (median {median:.2f})")
    if args.timings:
        args.timings.write_text(json.dumps({"seconds_per_query": seconds, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()
