"""Saved adapters load only onto what they fit: their base model, and the LoRA settings given."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from support import make_tiny_llama

from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.models import load_causal_lm, resolve_model
from haystack_llmrank.prompt import FIRST_TEMPLATE
from haystack_llmrank.training.adapters import (
    LoraSettings,
    make_trainable,
    plain_output_head,
    save_trained,
)

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def exactly(message: str) -> str:
    """A pattern that matches ``message`` and nothing more."""
    return f"^{re.escape(message)}$"


def save_adapter(model: Any, folder: Path, *, base: Path, **lora: Any) -> Any:
    """Save a LoRA adapter of ``model`` with random weights (LoRA starts as a no-op) that
    records ``base`` as its base model; return the adapted model."""
    settings = LoraSettings(**{"rank": 4, "alpha": 8, "dropout": 0.0, **lora})
    wrapped = make_trainable(model, settings, gradient_checkpointing=False)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    save_trained(wrapped, None, folder, base_model=str(base), template=FIRST_TEMPLATE)
    return wrapped.eval()


def test_an_adapter_records_a_local_base_by_absolute_path(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_model_dir.parent)
    relative = Path(tiny_model_dir.name)  # as FirstTrainer(base_model=...) may be given it
    save_adapter(make_tiny_llama(len(smollm2_tokenizer)), tmp_path / "adapter", base=relative)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tmp_path)  # so it loads onto that base from anywhere
    assert resolve_model(str(tmp_path / "adapter")).location == str(tiny_model_dir.resolve())


def test_an_adapter_of_the_top_layers_loads_as_trained(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer))
    trained = save_adapter(model, tmp_path / "adapter", base=tiny_model_dir, top_layers=1)
    loaded = load_causal_lm(resolve_model(str(tmp_path / "adapter")))
    base = load_causal_lm(resolve_model(str(tiny_model_dir)))
    with torch.no_grad():
        merged, expected = loaded(IDS).logits, trained(IDS).logits
        assert (merged - base(IDS).logits).abs().max() > 1e-2  # the adapter changed something
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)


def test_an_adapter_is_merged_into_the_base_as_saved_then_cast_once(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer))  # a float32 checkpoint
    save_adapter(model, tmp_path / "adapter", base=tiny_model_dir)
    source = resolve_model(str(tmp_path / "adapter"))
    merged = load_causal_lm(source).state_dict()
    assert {weight.dtype for weight in merged.values()} == {torch.float32}
    low = load_causal_lm(source, dtype=torch.bfloat16).state_dict()
    assert merged.keys() == low.keys()
    for name, weight in low.items():
        assert weight.dtype == torch.bfloat16, name
        assert torch.equal(weight, merged[name].to(torch.bfloat16)), name


@pytest.fixture
def bf16_adapter(smollm2_tokenizer: Any, tmp_path: Path) -> tuple[Any, Path]:
    """A model trained with a LoRA adapter in float32 over a bfloat16 checkpoint, and the
    folder the adapter is saved in."""
    base_dir = tmp_path / "bf16-base"
    make_tiny_llama(len(smollm2_tokenizer)).to(torch.bfloat16).save_pretrained(base_dir)
    smollm2_tokenizer.save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return save_adapter(base, tmp_path / "adapter", base=base_dir), tmp_path / "adapter"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_adapter_of_a_bfloat16_base_merges_at_float32_or_wider_as_trained(
    bf16_adapter: tuple[Any, Path], dtype: torch.dtype
) -> None:
    trained, folder = bf16_adapter
    loaded = load_causal_lm(resolve_model(str(folder)), dtype=dtype)
    assert {weight.dtype for weight in loaded.state_dict().values()} == {dtype}
    with torch.no_grad():
        expected, merged = trained(IDS).logits, loaded(IDS).logits.float()
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)  # bfloat16: 0.36 off


def test_an_adapter_of_a_bfloat16_base_loads_in_bfloat16_as_asked(
    bf16_adapter: tuple[Any, Path],
) -> None:
    low = load_causal_lm(resolve_model(str(bf16_adapter[1])), dtype=torch.bfloat16)
    assert {weight.dtype for weight in low.state_dict().values()} == {torch.bfloat16}


def test_merge_writes_float32_weights_that_score_as_the_adapter_folder(
    bf16_adapter: tuple[Any, Path],
) -> None:
    from haystack_llmrank.backends import checkpoint_dtype
    from haystack_llmrank.cli.train import _write_merged

    folder = bf16_adapter[1]
    _write_merged(folder)
    merged = resolve_model(str(folder / "merged"))
    assert checkpoint_dtype(merged) == torch.float32
    with torch.no_grad():  # loaded as llmrank loads them on the CPU
        expected = load_causal_lm(resolve_model(str(folder)), dtype=torch.float32)(IDS).logits
        found = load_causal_lm(merged, dtype=torch.float32)(IDS).logits
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)  # bfloat16: 0.36 off


def test_an_adapter_is_refused_by_a_base_with_fewer_layers(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    save_adapter(make_tiny_llama(len(smollm2_tokenizer), layers=4), tmp_path, base=tiny_model_dir)
    with pytest.raises(ModelResolutionError) as refused:
        load_causal_lm(resolve_model(str(tmp_path)))
    message = str(refused.value)
    assert f"the adapter in {tmp_path.resolve()} (its recorded base model: " in message
    assert f"{str(tiny_model_dir)!r}) to {tiny_model_dir}: 28 weights the model has no " in message
    assert "such as base_model.model.model.layers.2." in message


def test_an_adapter_is_refused_by_a_base_with_more_layers(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    deeper = tmp_path / "deeper"
    make_tiny_llama(len(smollm2_tokenizer), layers=4).save_pretrained(deeper)
    save_adapter(make_tiny_llama(len(smollm2_tokenizer)), tmp_path / "adapter", base=deeper)
    with pytest.raises(ModelResolutionError, match="28 adapter weights of the model missing"):
        load_causal_lm(resolve_model(str(tmp_path / "adapter")))


def test_an_adapter_is_refused_by_a_base_of_another_width(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    narrow = tmp_path / "narrow"
    shape: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
    config = LlamaConfig(vocab_size=64, num_hidden_layers=2, num_key_value_heads=2, **shape)
    LlamaForCausalLM(config).save_pretrained(narrow)
    save_adapter(make_tiny_llama(len(smollm2_tokenizer)), tmp_path / "adapter", base=narrow)
    with pytest.raises(ModelResolutionError) as refused:
        load_causal_lm(resolve_model(str(tmp_path / "adapter")))
    assert f"its recorded base model: {str(narrow)!r}" in str(refused.value)
    assert "weights of another shape, such as " in str(refused.value)
    assert "is (4, 128) saved, (4, 64) here" in str(refused.value)


def test_starting_from_an_adapter_takes_its_scaling_and_targets_as_they_were_saved(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer))
    saved = save_adapter(model, tmp_path, base=tiny_model_dir, alpha=32)

    def start(**lora: Any) -> Any:
        given = {"rank": 4, "alpha": 32, "dropout": 0.0, "init_from": str(tmp_path), **lora}
        return make_trainable(
            make_tiny_llama(len(smollm2_tokenizer)),
            LoraSettings(**given),
            gradient_checkpointing=False,
        )

    with torch.no_grad():
        torch.testing.assert_close(start().eval()(IDS).logits, saved(IDS).logits)
    unfit = f"the adapter in {tmp_path} does not fit these LoRA settings: "
    with pytest.raises(ValueError, match=exactly(unfit + "lora_alpha is 32 saved, 8 given")):
        start(alpha=8)
    differing = (
        "r is 4 saved, 8 given; lora_alpha is 32 saved, 16 given; target_modules is "
        "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'] "
        "saved, ['q_proj', 'v_proj'] given"
    )
    with pytest.raises(ValueError, match=exactly(unfit + differing)):
        start(rank=8, alpha=16, target_modules=("v_proj", "q_proj"))
    with pytest.raises(ValueError, match="14 weights the model has no place for"):
        start(top_layers=1)


@pytest.mark.parametrize(
    ("kind", "fields", "applied"),
    [
        ("GraniteConfig", {"logits_scaling": 8.0}, "logits_scaling=8.0"),
        ("CohereConfig", {"logit_scale": 0.25}, "logit_scale=0.25"),
        (  # a composite model whose forward caps logits by its text config's softcap
            "Gemma4Config",
            {"text_config": {"final_logit_softcapping": 30.0}},
            "final_logit_softcapping=30.0",
        ),
    ],
)
def test_training_refuses_a_model_that_scales_its_logits(
    kind: str, fields: dict[str, Any], applied: str
) -> None:
    import transformers

    lm = SimpleNamespace(config=getattr(transformers, kind)(**fields))
    with pytest.raises(ValueError, match=f"forward also applies {applied}; it is not supported"):
        plain_output_head(lm)


def test_lora_targets_that_name_no_module_are_refused_by_name(smollm2_tokenizer: Any) -> None:
    def adapt(*targets: str) -> Any:
        lora = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=targets)
        return make_trainable(
            make_tiny_llama(len(smollm2_tokenizer)), lora, gradient_checkpointing=False
        )

    # peft would adapt q_proj and drop the misspelt name without a word
    with pytest.raises(
        ValueError,
        match=exactly(
            "LoRA target modules that name no module of LlamaForCausalLM: fooo_proj, mlp.q_proj; "
            "its linear layers are named e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, "
            "up_proj, down_proj, lm_head"
        ),
    ):
        adapt("q_proj", "fooo_proj", "mlp.q_proj")
    adapted = adapt("self_attn.q_proj", "down_proj")  # a dotted suffix names modules too
    trained = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained} == {"q_proj", "down_proj"}


def test_saving_one_kind_of_weights_removes_the_other_kind(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer))
    save_adapter(model, tmp_path, base=tiny_model_dir)
    assert resolve_model(str(tmp_path)).adapter is not None
    full = make_tiny_llama(len(smollm2_tokenizer))
    save_trained(full, smollm2_tokenizer, tmp_path, base_model="x", template=FIRST_TEMPLATE)
    assert not (tmp_path / "adapter_config.json").exists()
    assert not (tmp_path / "adapter_model.safetensors").exists()
    assert resolve_model(str(tmp_path)).adapter is None  # the folder loads the full weights
    save_adapter(make_tiny_llama(len(smollm2_tokenizer)), tmp_path, base=tiny_model_dir)
    assert not list(tmp_path.glob("model*.safetensors*"))
    assert not (tmp_path / "config.json").exists()


def test_saving_full_weights_prints_no_transformers_progress_bar(
    smollm2_tokenizer: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as transformers_logging

    full = make_tiny_llama(len(smollm2_tokenizer))
    for enabled in (True, False):
        was = transformers_logging.is_progress_bar_enabled()
        try:
            transformers_logging._tqdm_active = enabled
            save_trained(full, smollm2_tokenizer, tmp_path, base_model="x", template=FIRST_TEMPLATE)
            assert transformers_logging.is_progress_bar_enabled() == enabled  # as it was
        finally:
            transformers_logging._tqdm_active = was
    assert "Writing model shards" not in capsys.readouterr().err


def test_saved_weights_take_the_modes_the_umask_allows(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from haystack_llmrank.cli.train import _write_merged

    old = os.umask(0o022)
    try:
        save_adapter(
            make_tiny_llama(len(smollm2_tokenizer)), tmp_path / "lora", base=tiny_model_dir
        )
        _write_merged(tmp_path / "lora")
        full = make_tiny_llama(len(smollm2_tokenizer))
        save_trained(
            full, smollm2_tokenizer, tmp_path / "full", base_model="x", template=FIRST_TEMPLATE
        )
    finally:
        os.umask(old)
    # safetensors alone would write them 0600: other users could not load the folder
    for weights in (
        tmp_path / "lora" / "adapter_model.safetensors",
        tmp_path / "lora" / "merged" / "model.safetensors",
        tmp_path / "full" / "model.safetensors",
    ):
        assert stat.S_IMODE(weights.stat().st_mode) == 0o644


def test_the_model_card_names_the_base_that_adapter_config_records(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    model = make_tiny_llama(len(smollm2_tokenizer))
    model.config._name_or_path = "/root/.cache/llmrank/gguf/SmolLM2-135M-Instruct.Q4_1-x"
    save_adapter(model, tmp_path, base=tiny_model_dir)
    recorded = json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_model_dir)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == recorded
    assert f"base_model:adapter:{recorded}" in card.data.tags
    assert "/root/.cache" not in card.content


def test_wrapping_with_peft_shows_users_no_deprecation_warning(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import warnings

    model = make_tiny_llama(len(smollm2_tokenizer))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        save_adapter(model, tmp_path / "adapter", base=tiny_model_dir)
        load_causal_lm(resolve_model(str(tmp_path / "adapter")))
    assert not [w for w in shown if issubclass(w.category, FutureWarning)]
