"""The real embedded SmolLM2 exported to ONNX (fp32, fused attention): parity with torch on DL19."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from haystack_llmrank.export import export_onnx, read_metadata
from haystack_llmrank.models import EMBEDDED_BASE
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import SlidingWindow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(EMBEDDED_BASE, tmp_path_factory.mktemp("smollm2") / "fp32")


@pytest.fixture(scope="module")
def onnx_reranker(smollm2_export: Path) -> Reranker:
    return Reranker.from_pretrained(str(smollm2_export), backend="onnx", device="cpu")


def test_metadata_matches_the_torch_engine(
    smollm2_export: Path, smollm2_reranker: Reranker, onnx_reranker: Reranker
) -> None:
    meta = read_metadata(smollm2_export)
    assert meta.attention == "fused"
    assert meta.label_ids == smollm2_reranker.scorer.label_ids
    assert meta.context_length == smollm2_reranker.prompts.max_prompt_tokens
    assert meta.pad_token_id == smollm2_reranker.tokenizer.pad_token_id
    assert onnx_reranker.tokenizer.chat_template == smollm2_reranker.tokenizer.chat_template


def engine(reranker: Reranker, **kwargs: Any) -> Reranker:
    """``reranker``'s tokenizer and scorer with short passages (fast on a CPU)."""
    return Reranker(
        reranker.tokenizer,
        reranker.scorer,
        max_prompt_tokens=reranker.prompts.max_prompt_tokens,
        max_passage_words=25,
        **kwargs,
    )


def test_label_logits_match_torch_on_dl19_windows(
    smollm2_reranker: Reranker, onnx_reranker: Reranker, dl19_queries: list[dict[str, Any]]
) -> None:
    builder = engine(smollm2_reranker).prompts
    ids = [
        builder.build(q["query"], [c["text"] for c in q["candidates"][a:b]]).token_ids
        for q, (a, b) in zip(dl19_queries[:3], [(0, 4), (10, 13), (40, 45)], strict=True)
    ]
    assert len({len(i) for i in ids}) == 3  # a right-padded batch
    expected = smollm2_reranker.scorer.score(ids)
    got = onnx_reranker.scorer.score(ids)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(np.argsort(-got, axis=1), np.argsort(-expected, axis=1))


def test_orderings_identical_to_torch(
    smollm2_reranker: Reranker, onnx_reranker: Reranker, dl19_queries: list[dict[str, Any]]
) -> None:
    strategy = SlidingWindow(4, 2)
    query = dl19_queries[1]
    passages = [c["text"] for c in query["candidates"][:6]]
    expected = engine(smollm2_reranker, strategy=strategy).rerank(query["query"], passages)
    got = engine(onnx_reranker, strategy=strategy).rerank(query["query"], passages)
    assert got.order == expected.order
    np.testing.assert_allclose(got.logits, expected.logits, atol=1e-3, rtol=0)
