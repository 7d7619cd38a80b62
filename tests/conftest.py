"""Shared fixtures: the real SmolLM2 tokenizer, tiny random Llama models, DL19 data."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support import PROJECT_ROOT, SMOLLM2_TOKENIZER_DIR, make_tiny_llama

from haystack_llmrank.labels import ALPHABETIC_LABELS, resolve_label_ids, vote_label_ids
from haystack_llmrank.models import EMBEDDED_BASE, load_tokenizer, resolve_model
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

DL19_DIR = Path(
    os.environ.get("LLMRANK_DL19_DIR", PROJECT_ROOT.parent / "shared" / "data" / "trec-dl19")
)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """The real SmolLM2-135M-Instruct tokenizer, from the files under ``tests/data``."""
    return load_tokenizer(resolve_model(str(SMOLLM2_TOKENIZER_DIR)))


@pytest.fixture(scope="session")
def tiny_model(smollm2_tokenizer: Any) -> Any:
    """A 2-layer random Llama over the SmolLM2 vocabulary."""
    return make_tiny_llama(len(smollm2_tokenizer))


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model: Any, smollm2_tokenizer: Any) -> TorchLabelScorer:
    """Torch scorer for the tiny model with alphabetic labels."""
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    return TorchLabelScorer(tiny_model, labels, pad_token_id=smollm2_tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def vote_scorer(tiny_model: Any, smollm2_tokenizer: Any) -> TorchLabelScorer:
    """Torch scorer for the tiny model that reads the vote ``" yes"``."""
    labels = vote_label_ids(smollm2_tokenizer, " yes")
    return TorchLabelScorer(tiny_model, labels, pad_token_id=smollm2_tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def tiny_reranker(smollm2_tokenizer: Any, tiny_scorer: TorchLabelScorer) -> Reranker:
    """Engine over the tiny model with FIRST defaults."""
    return Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096)


@pytest.fixture(scope="session")
def tiny_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, smollm2_tokenizer: Any
) -> Path:
    """The tiny model and the real tokenizer saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_reranker() -> Reranker:
    """The real embedded SmolLM2, untrained, on the torch backend, CPU."""
    return Reranker.from_pretrained(EMBEDDED_BASE, device="cpu")


def _require_dl19() -> Path:
    if not (DL19_DIR / "candidates.jsonl").is_file():
        pytest.skip(f"DL19 data not found in {DL19_DIR} (set LLMRANK_DL19_DIR)")
    return DL19_DIR


@pytest.fixture(scope="session")
def dl19_dir() -> Path:
    """Folder with DL19 ``candidates.jsonl`` and ``qrels.txt``."""
    return _require_dl19()


@pytest.fixture(scope="session")
def dl19_queries(dl19_dir: Path) -> list[dict[str, Any]]:
    """The 43 DL19 queries with their BM25 top-100 candidates."""
    with (dl19_dir / "candidates.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """torch sees one CUDA device, of the compute capability held in the returned list."""
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    return capability


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` at INFO level."""
    with caplog.at_level("INFO"):
        yield caplog
