"""CUDA paths on a tiny random Llama. Skipped without a CUDA GPU; examples/gpu_check.sh runs them.

Nothing here needs the embedded SmolLM2: the models use a small word-level tokenizer, so that a
GPU machine needs only the project's Python dependencies and onnxruntime-gpu.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import make_tiny_llama

from haystack_llmrank.backends import load_scorer
from haystack_llmrank.export import export_onnx
from haystack_llmrank.labels import ALPHABETIC_LABELS
from haystack_llmrank.scorers.onnx_loading import load_export
from haystack_llmrank.scorers.onnx_metadata import Precision
from haystack_llmrank.scorers.onnx_scorer import CUDA_PROVIDER, HEAVY_OPS, node_placement
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
WORDS = 400
LONG = (2000, 2300, 2600)
"""Prompt lengths past 2,048 tokens, where fp16 rotary angles went wrong."""


def onnxruntime_cuda() -> bool:
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


needs_onnxruntime_cuda = pytest.mark.skipif(
    not onnxruntime_cuda(), reason="onnxruntime offers no CUDAExecutionProvider"
)


def word_tokenizer() -> Any:
    """A word-level tokenizer with the labels A..Z as tokens and a plain chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<pad>", "<s>", "</s>", "<unk>", "[", "]", *ALPHABETIC_LABELS]
    tokens += [f"w{i}" for i in range(WORDS)]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    return tokenizer


def save_model(folder: Path, model: Any) -> Path:
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def position_sensitive(model: Any) -> Any:
    """Sharpen attention, so that the logits follow the rotary angles closely."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = position_sensitive(make_tiny_llama(len(word_tokenizer()), seed=1))
    return save_model(tmp_path_factory.mktemp("tiny-llama"), model)


@pytest.fixture(scope="module")
def cpu_scorer(model_dir: Path) -> Any:
    return load_scorer(str(model_dir), device="cpu", labels=ALPHABETIC_LABELS).scorer


def long_prompts() -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(6 + 26, 6 + 26 + WORDS, size=n).tolist() for n in LONG]


def test_torch_scorer_on_cuda_matches_the_cpu(model_dir: Path, cpu_scorer: Any) -> None:
    loaded = load_scorer(str(model_dir), device="cuda", labels=ALPHABETIC_LABELS)
    scorer = loaded.scorer
    assert isinstance(scorer, TorchLabelScorer)
    assert scorer.device.type == "cuda"
    assert scorer.dtype == torch.float32  # the checkpoint's dtype
    prompts = long_prompts()
    np.testing.assert_allclose(scorer.score(prompts), cpu_scorer.score(prompts), atol=2e-3)


def test_a_bf16_checkpoint_runs_in_bf16_on_cuda(tmp_path: Path, cpu_scorer: Any) -> None:
    model = position_sensitive(make_tiny_llama(len(word_tokenizer()), seed=1))
    folder = save_model(tmp_path / "bf16", model.to(torch.bfloat16))
    scorer = load_scorer(str(folder), device="cuda", labels=ALPHABETIC_LABELS).scorer
    assert isinstance(scorer, TorchLabelScorer)
    assert scorer.dtype == torch.bfloat16
    prompts = long_prompts()
    got, expected = scorer.score(prompts), cpu_scorer.score(prompts)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@needs_onnxruntime_cuda
def test_an_fp16_export_runs_wholly_on_cuda(
    model_dir: Path, cpu_scorer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = export_onnx(str(model_dir), tmp_path / "fp16", precision="fp16")
    with caplog.at_level(logging.INFO, logger="haystack_llmrank.scorers.onnx_scorer"):
        scorer = load_export(folder, device="cuda").scorer
    assert scorer.device == "cuda:0"
    ours = [r for r in caplog.records if r.name.startswith("haystack_llmrank")]
    assert not [r.message for r in ours if r.levelno >= logging.WARNING]
    placement = node_placement(scorer._session)
    on_cuda = set(placement.get(CUDA_PROVIDER, {}))
    assert "GroupQueryAttention" in on_cuda
    assert {"MatMul", "FusedMatMul", "Gemm"} & on_cuda
    assert not any(HEAVY_OPS & set(ops) for ep, ops in placement.items() if ep != CUDA_PROVIDER)
    prompts = long_prompts()
    assert np.abs(scorer.score(prompts) - cpu_scorer.score(prompts)).max() < 0.05


@needs_onnxruntime_cuda
def test_an_int8_export_with_plain_attention_runs_on_cuda(
    model_dir: Path, cpu_scorer: Any, tmp_path: Path
) -> None:
    folder = export_onnx(str(model_dir), tmp_path / "int8", precision="int8", attention="plain")
    scorer = load_export(folder, device="cuda").scorer
    assert scorer.device == "cuda:0"
    placement = node_placement(scorer._session)  # reported from onnxruntime 1.24 on
    if placement:
        assert "MatMulNBits" in placement.get(CUDA_PROVIDER, {})  # 8-bit weights, from 1.22
    prompts = long_prompts()
    assert np.abs(scorer.score(prompts) - cpu_scorer.score(prompts)).max() < 0.05


@needs_onnxruntime_cuda
@pytest.mark.parametrize(
    ("precision", "reason"), [("fp32", "GroupQueryAttention"), ("int8", "GroupQueryAttention")]
)
def test_exports_that_fall_back_to_the_cpu_are_refused_on_cuda(
    model_dir: Path, tmp_path: Path, precision: Precision, reason: str
) -> None:
    folder = export_onnx(str(model_dir), tmp_path / precision, precision=precision)
    with pytest.raises(RuntimeError, match=rf"{reason}.*--precision fp16"):
        load_export(folder, device="cuda")
    assert load_export(folder, device=None).scorer.device == "cpu"
