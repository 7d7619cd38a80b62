"""The torch scorer: exact label logits, padding invariance, no vocabulary-wide logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from support import make_tiny_llama, tiny_composite_model, tiny_scaled_model
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from haystack_llmrank.backends import (
    checkpoint_dtype,
    load_scorer,
    resolve_torch_dtype,
    source_device_and_dtype,
)
from haystack_llmrank.errors import ModelResolutionError, NonFiniteLogitsError
from haystack_llmrank.labels import ALPHABETIC_LABELS, LabelIds, resolve_label_ids
from haystack_llmrank.models import ModelSource
from haystack_llmrank.scorers.label_head import LabelLogitsModel, final_softcap, logit_scales
from haystack_llmrank.scorers.padding import pad_inputs, pad_right
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer


def full_vocab_label_logits(
    model: Any, ids: list[int], label_groups: tuple[tuple[int, ...], ...]
) -> np.ndarray:
    """What a plain implementation computes: full logits at the last position, max per label."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return np.array(
        [max(float(logits[i]) for i in group) for group in label_groups], dtype=np.float32
    )


def prompts_of(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


TEXTS = [
    "Rank these: [A] cats [B] dogs. Answer: [",
    "A much longer prompt about passages on the history of the Roman empire and its roads. [",
    "short [",
]


def test_matches_full_vocabulary_logits(
    tiny_model: Any, tiny_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    for ids in prompts_of(smollm2_tokenizer, TEXTS):
        expected = full_vocab_label_logits(tiny_model, ids, tiny_scorer.label_ids.ids)
        got = tiny_scorer.score([ids])[0]
        assert got.dtype == np.float32
        assert got.shape == (len(ALPHABETIC_LABELS),)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_padding_invariance(tiny_scorer: TorchLabelScorer, smollm2_tokenizer: Any) -> None:
    prompts = prompts_of(smollm2_tokenizer, TEXTS)
    batched = tiny_scorer.score(prompts)
    assert batched.shape == (3, 26)
    for row, ids in zip(batched, prompts, strict=True):
        np.testing.assert_allclose(row, tiny_scorer.score([ids])[0], rtol=1e-5, atol=1e-4)


def test_a_tokenizer_without_a_pad_token_pads_with_any_id(
    tiny_model: Any, tiny_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    unpadded = TorchLabelScorer(
        tiny_model, resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS), pad_token_id=None
    )
    prompts = prompts_of(smollm2_tokenizer, TEXTS)
    np.testing.assert_array_equal(unpadded.score(prompts), tiny_scorer.score(prompts))


def test_lm_head_module_is_never_run(tiny_model: Any, smollm2_tokenizer: Any) -> None:
    scorer = TorchLabelScorer(tiny_model, resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS))

    def refuse(*_: Any) -> None:
        raise AssertionError("the full LM head ran: [batch, seq, vocab] logits were built")

    handle = tiny_model.lm_head.register_forward_hook(refuse)
    try:
        scorer.score(prompts_of(smollm2_tokenizer, TEXTS))
    finally:
        handle.remove()


def test_label_logit_is_max_over_variants(tiny_model: Any, smollm2_tokenizer: Any) -> None:
    ids = prompts_of(smollm2_tokenizer, TEXTS[:1])[0]
    with torch.inference_mode():
        logits = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1]
    scorer = TorchLabelScorer(tiny_model, resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS))
    bare = [smollm2_tokenizer.convert_tokens_to_ids(c) for c in ALPHABETIC_LABELS]
    spaced = [smollm2_tokenizer.convert_tokens_to_ids("Ġ" + c) for c in ALPHABETIC_LABELS]
    expected = torch.maximum(logits[bare], logits[spaced]).numpy()
    np.testing.assert_allclose(scorer.score([ids])[0], expected, rtol=1e-5, atol=1e-4)
    assert (logits[spaced] > logits[bare]).any(), "the test needs some spaced variant to win"


@pytest.mark.parametrize("kind", ["Cohere", "Granite"])
def test_label_logits_carry_the_models_own_logit_scale(kind: str) -> None:
    model = tiny_scaled_model(kind)
    labels = LabelIds(("A", "B", "C"), ((10, 20), (11,), (12, 30)))
    ids = [5, 6, 7, 8, 9]
    expected = full_vocab_label_logits(model, ids, labels.ids)
    got = TorchLabelScorer(model, labels, pad_token_id=0).score([ids])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["Gemma3", "Gemma4"])
def test_a_composite_models_label_logits_follow_its_own_forward(kind: str) -> None:
    # both text configs record a softcap of 10, which only Gemma 4's forward applies
    model = tiny_composite_model(kind)
    labels = LabelIds(("A", "B", "C"), ((10, 20), (11,), (12, 30)))
    ids = [5, 6, 7, 8, 9]
    expected = full_vocab_label_logits(model, ids, labels.ids)
    assert np.abs(expected).max() > 5, "the test needs logits that a softcap of 10 bends"
    got = TorchLabelScorer(model, labels, pad_token_id=0).score([ids])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert final_softcap(model.config) == (10.0 if kind == "Gemma4" else None)


def test_logit_scales_follow_each_models_forward() -> None:
    import transformers

    def config(model_type: str, **fields: Any) -> SimpleNamespace:
        return SimpleNamespace(model_type=model_type, **fields)

    assert logit_scales(config("granite", logits_scaling=4.0)) == {"logits_scaling": 0.25}
    assert logit_scales(config("hyperclovax", logits_scaling=4.0)) == {"logits_scaling": 4.0}
    assert logit_scales(config("cohere", logit_scale=0.5)) == {"logit_scale": 0.5}
    assert logit_scales(config("falcon_h1", lm_head_multiplier=2.0)) == {"lm_head_multiplier": 2}
    assert logit_scales(config("mpt", logit_scale="inv_sqrt_d_model")) == {}
    assert logit_scales(config("granite", logits_scaling=1.0)) == {}
    assert logit_scales(config("llama")) == {}
    # a composite model's scale is its text model's (Aya Vision multiplies by it)
    aya = transformers.AyaVisionConfig(text_config={"model_type": "cohere2", "logit_scale": 0.5})
    assert logit_scales(aya) == {"logit_scale": 0.5}


def test_pad_right_and_empty_prompts() -> None:
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="empty prompt"):
        pad_right([[1], []], pad_id=0)
    with pytest.raises(ValueError, match="no prompts"):
        pad_right([], pad_id=0)


def test_pad_inputs_adds_the_positions_of_a_vote_graph() -> None:
    ids, mask = pad_inputs([[5, 6, 7], [8]], 0)
    assert (ids.tolist(), mask.tolist()) == ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    *_, positions = pad_inputs([[5, 6, 7], [8]], 0, [[0, 2], [0]])
    assert positions.tolist() == [[0, 2], [0, 0]]  # padding reads position 0
    with pytest.raises(ValueError, match="outside a prompt"):
        pad_inputs([[5, 6, 7], [8]], 0, [[0, 2], [1]])


# --- devices and dtypes ----------------------------------------------------------------------


class MixedDevices(TorchFunctionMode):
    """Records every torch call whose tensor arguments live on more than one device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        leaves = tree_flatten((args, kwargs))[0]
        devices = {t.device for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            self.calls.append(f"{getattr(func, '__name__', func)} on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_label_head_builds_every_tensor_on_the_weights_device() -> None:
    """CUDA's index_select takes its indices on the weight's device; "meta" stands in here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    labels = LabelIds(("A", "B", "C"), ((10, 11), (12,), (13, 14, 15)))
    with MixedDevices() as mixed:
        head = LabelLogitsModel(model, labels)
    assert mixed.calls == []
    assert head.head_weight.device.type == "meta"
    assert head.head_weight.shape == (3 * 3, 32)


def overflowing_fp16_scorer(tokenizer: Any) -> TorchLabelScorer:
    """A tiny model in float16 whose embeddings exceed float16's range (65504)."""
    model = make_tiny_llama(len(tokenizer), seed=3)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e6)
    return TorchLabelScorer(model.half(), resolve_label_ids(tokenizer, ALPHABETIC_LABELS))


def test_infinite_logits_are_an_error_naming_the_dtype(smollm2_tokenizer: Any) -> None:
    scorer = overflowing_fp16_scorer(smollm2_tokenizer)
    with torch.inference_mode():
        raw = scorer._head(*(torch.from_numpy(a) for a in pad_right([[5, 6, 7]], 0)))
    assert not torch.isfinite(raw).all(), "the example must overflow float16"
    with pytest.raises(NonFiniteLogitsError, match=r"torch\.float16.*dtype='float32'"):
        scorer.score([[5, 6, 7]])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_gets_its_label_logits_in_float32(
    smollm2_tokenizer: Any, dtype: torch.dtype
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer), seed=3).to(dtype)
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    ids = prompts_of(smollm2_tokenizer, TEXTS[:1])[0]
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        weight = model.lm_head.weight
        in_float32 = [float((hidden.float() @ weight[list(g)].float().T).max()) for g in labels.ids]
        in_dtype = [float((hidden @ weight[list(g)].T).max()) for g in labels.ids]
    scorer = TorchLabelScorer(model, labels)
    got = scorer.score([ids])[0]
    assert scorer.dtype == dtype  # the weights stay as loaded
    np.testing.assert_allclose(got, in_float32, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, in_dtype, rtol=1e-5, atol=1e-5)


def test_cuda_takes_the_checkpoints_dtype(
    fake_cuda: list[tuple[int, int]], tmp_path: Path, smollm2_tokenizer: Any
) -> None:
    make_tiny_llama(len(smollm2_tokenizer)).to(torch.bfloat16).save_pretrained(tmp_path)
    source = ModelSource(str(tmp_path))
    assert source_device_and_dtype(source, None, None) == ("cuda", torch.bfloat16)
    assert source_device_and_dtype(source, "cpu", None) == ("cpu", torch.float32)
    assert resolve_torch_dtype("cuda:1", None, torch.float16) == torch.float16
    assert resolve_torch_dtype("cuda", None, None) == torch.float32
    assert resolve_torch_dtype("cuda", "float16", torch.bfloat16) == torch.float16
    assert resolve_torch_dtype("cpu", None, torch.bfloat16) == torch.float32
    fake_cuda[0] = (7, 5)  # no native bfloat16: float16 would overflow where bfloat16 did not
    assert resolve_torch_dtype("cuda", None, torch.bfloat16) == torch.float32
    with pytest.raises(ValueError, match="unknown torch dtype"):
        resolve_torch_dtype("cuda", "float17", None)


def test_checkpoint_dtype_reads_the_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import LlamaConfig

    assert checkpoint_dtype(ModelSource(str(tiny_model_dir))) == torch.float32
    LlamaConfig(dtype="bfloat16").save_pretrained(tmp_path)
    assert checkpoint_dtype(ModelSource(str(tmp_path))) == torch.bfloat16
    assert checkpoint_dtype(ModelSource(str(tmp_path / "missing"))) is None
    assert checkpoint_dtype(ModelSource(str(tmp_path), gguf_file="model.gguf")) is None


def test_load_scorer_on_cuda_loads_a_bf16_checkpoint_in_bf16(
    fake_cuda: list[tuple[int, int]],
    tmp_path: Path,
    smollm2_tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer)).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    loads: list[dict[str, Any]] = []

    def load_on_cpu(source: Any, **kwargs: Any) -> Any:
        loads.append(kwargs)
        return model

    monkeypatch.setattr("haystack_llmrank.backends.load_causal_lm", load_on_cpu)
    loaded = load_scorer(str(tmp_path), labels=ALPHABETIC_LABELS)
    assert [(k["device"], k["dtype"]) for k in loads] == [("cuda", torch.bfloat16)]
    assert isinstance(loaded.scorer, TorchLabelScorer)
    assert loaded.scorer.dtype == torch.bfloat16


def test_an_unavailable_model_fails_before_its_config_is_read_on_cuda(
    fake_cuda: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[Any] = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("haystack_llmrank.backends.checkpoint_dtype", read.append)
    with pytest.raises(ModelResolutionError, match="HF_HUB_OFFLINE is set"):
        load_scorer("nonexistent-org/nonexistent-model", device="cuda", labels=ALPHABETIC_LABELS)
    assert read == []
