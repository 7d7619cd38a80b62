"""The real embedded SmolLM2: golden label logits of a fixed DL19 window, and end-to-end ranking."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from haystack import Document, Pipeline

from haystack_llmrank import FirstListwiseRanker
from haystack_llmrank.data import read_qrels
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.models import EMBEDDED_BASE
from haystack_llmrank.reranker import Reranker

pytestmark = pytest.mark.integration

# Query 264014 ("how long is life cycle of flea") with its BM25 top 20, scored once by this
# engine. A change of prompt, tokenizer, label resolution or scoring path (e.g. generation in
# place of first-token logits) moves these numbers.
GOLDEN_LOGITS = [
    30.974,
    29.117,
    28.245,
    29.269,
    28.890,
    29.545,
    28.370,
    27.017,
    28.409,
    28.910,
    28.784,
    28.483,
    28.497,
    28.552,
    26.638,
    26.899,
    25.913,
    29.161,
    27.745,
    26.957,
]
GOLDEN_ORDER = [0, 5, 3, 17, 1, 9, 4, 10, 13, 12, 11, 8, 6, 2, 18, 7, 19, 15, 14, 16]
GOLDEN_PROMPT_TOKENS = 2205


@pytest.fixture(scope="module")
def flea(dl19_queries: list[dict[str, Any]]) -> dict[str, Any]:
    record = dl19_queries[0]
    assert record["qid"] == "264014"
    return record


def test_golden_window_logits_and_order(smollm2_reranker: Reranker, flea: dict[str, Any]) -> None:
    texts = [c["text"] for c in flea["candidates"][:20]]
    prompt = smollm2_reranker.prompts.build(flea["query"], texts)
    assert len(prompt.token_ids) == GOLDEN_PROMPT_TOKENS
    logits = smollm2_reranker.scorer.score([prompt.token_ids])[0][:20]
    np.testing.assert_allclose(logits, GOLDEN_LOGITS, atol=5e-3)
    assert list(smollm2_reranker.rerank(flea["query"], texts).order) == GOLDEN_ORDER


def test_label_logits_equal_the_full_vocabulary_distribution(
    smollm2_reranker: Reranker, flea: dict[str, Any]
) -> None:
    texts = [c["text"] for c in flea["candidates"][:20]]
    prompt = smollm2_reranker.prompts.build(flea["query"], texts)
    model: Any = smollm2_reranker.scorer._model  # type: ignore[attr-defined]
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([prompt.token_ids])).logits[0, -1]
    groups = smollm2_reranker.scorer.label_ids.ids
    expected = [max(float(full[i]) for i in group) for group in groups]
    np.testing.assert_allclose(
        smollm2_reranker.scorer.score([prompt.token_ids])[0], expected, atol=1e-3
    )


def test_cached_tokenizer_equals_the_gguf_one(
    smollm2_reranker: Reranker, flea: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_llmrank.models import embedded_base, load_tokenizer

    monkeypatch.setenv("LLMRANK_NO_CACHE", "1")
    direct = load_tokenizer(embedded_base())
    text = smollm2_reranker.prompts.build(flea["query"], [flea["candidates"][0]["text"]]).text
    assert direct(text, add_special_tokens=False)["input_ids"] == list(
        smollm2_reranker.tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def test_dl19_queries_through_a_haystack_pipeline(
    smollm2_reranker: Reranker, dl19_queries: list[dict[str, Any]], dl19_dir: Path
) -> None:
    ranker = FirstListwiseRanker(model=EMBEDDED_BASE, device="cpu")
    ranker._reranker = smollm2_reranker  # reuse the session's loaded model
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    run: dict[str, dict[str, float]] = {}
    for record in dl19_queries[1:3]:
        docs = [Document(id=c["docid"], content=c["text"]) for c in record["candidates"][:20]]
        out = pipeline.run({"ranker": {"query": record["query"], "documents": docs}})["ranker"]
        ranked = out["documents"]
        expected = smollm2_reranker.rerank(record["query"], [d.content for d in docs]).order
        assert [d.id for d in ranked] == [docs[i].id for i in expected]
        assert all(a.score > b.score for a, b in itertools.pairwise(ranked))
        run[record["qid"]] = {d.id: float(len(ranked) - r) for r, d in enumerate(ranked)}
    result = evaluate(run, read_qrels(dl19_dir / "qrels.txt"), ["ndcg@10"])
    assert set(result.per_query) == set(run)
    assert result.mean["ndcg@10"] > 0.0
