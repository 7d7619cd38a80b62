"""The BM25 order of the DL19 candidates reproduces the published nDCG@10 of 0.5058."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import haystack_llmrank.cli as cli
from haystack_llmrank.data import first_stage_run, read_qrels, read_queries, read_run, write_run
from haystack_llmrank.evaluation import evaluate

pytestmark = pytest.mark.integration

BM25_NDCG_AT_10 = 0.5058


def test_bm25_ndcg_at_10(dl19_dir: Path, tmp_path: Path) -> None:
    queries = read_queries(dl19_dir / "candidates.jsonl")
    assert len(queries) == 43
    assert all(len(q.candidates) == 100 for q in queries)
    qrels = read_qrels(dl19_dir / "qrels.txt")
    result = evaluate(first_stage_run(queries), qrels)
    assert result.missing == ()
    assert result.unjudged == ()
    assert len(result.per_query) == 43
    assert result.mean["ndcg@10"] == pytest.approx(BM25_NDCG_AT_10, abs=1e-4)

    path = tmp_path / "bm25.run"
    write_run(path, first_stage_run(queries), "bm25")
    assert evaluate(read_run(path), qrels).mean == pytest.approx(result.mean, abs=1e-12)


def test_bm25_through_the_command_line(dl19_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bm25.json"
    candidates, qrels = dl19_dir / "candidates.jsonl", dl19_dir / "qrels.txt"
    assert cli.main(["eval", "--candidates", str(candidates), str(qrels), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mean"]["ndcg@10"] == pytest.approx(
        BM25_NDCG_AT_10, abs=1e-4
    )
