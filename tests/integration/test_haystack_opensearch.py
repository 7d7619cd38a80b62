"""One Haystack pipeline: OpenSearch BM25 retrieval (osmem-server) -> FIRST reranking."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from haystack import Document
from haystack_integrations.components.retrievers.opensearch import OpenSearchBM25Retriever

from haystack_llmrank import FirstListwiseRanker

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "haystack_opensearch_pipeline.py"
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example script, imported as a module."""
    spec = importlib.util.spec_from_file_location("haystack_opensearch_pipeline", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def store(example: ModuleType, osmem_clone: Any) -> Any:
    """The example's document store on a fresh osmem clone, holding its passages."""
    store = example.document_store(osmem_clone.url, "passages")
    store.write_documents([Document(content=p) for p in example.PASSAGES])
    return store


def test_pipeline_reranks_the_bm25_hits(
    example: ModuleType, store: Any, tiny_model_dir: Path
) -> None:
    pipeline = example.build_pipeline(
        store, model=str(tiny_model_dir), device="cpu", retrieve_k=8, top_k=4
    )
    ranked = example.search(pipeline, QUERY)

    hits = OpenSearchBM25Retriever(document_store=store, top_k=8).run(query=QUERY)["documents"]
    assert len(hits) == 8
    direct = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu", top_k=4)
    expected = direct.run(query=QUERY, documents=hits)["documents"]

    assert [d.id for d in ranked] == [d.id for d in expected]
    assert [d.score for d in ranked] == pytest.approx([d.score for d in expected])
    assert len(ranked) == 4
    assert {d.id for d in ranked} <= {d.id for d in hits}
    scores = [d.score for d in ranked]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)
    bm25 = {d.id: d.score for d in hits}
    assert any(d.score != bm25[d.id] for d in ranked)


def test_example_runs_with_the_embedded_model(
    example: ModuleType, osmem_clone: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--opensearch-url", osmem_clone.url, "--device", "cpu", "--query", QUERY]
    assert example.main([*argv, "--top-k", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line.split(".")[0] for line in lines] == ["1", "2", "3"]
    assert all(re.match(r"\d\. \[-?\d+\.\d{3}\] \S", line) for line in lines)
    passages = {f"] {p}" for p in example.PASSAGES}
    assert all(any(line.endswith(p) for p in passages) for line in lines)
