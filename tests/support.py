"""Helpers shared by test modules: the project root, tiny random Llama models, small settings.

A module of its own (not ``conftest``), so that test files can import it whichever
``conftest`` pytest loaded last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_TOKENIZER_DIR = Path(__file__).parent / "data" / "smollm2-tokenizer"
"""The SmolLM2-135M-Instruct tokenizer files, so that unit tests need no GGUF."""


def make_tiny_llama(vocab_size: int, *, seed: int = 0, layers: int = 2, tied: bool = False) -> Any:
    """A small random Llama with the given vocabulary, in eval mode; with ``tied``, its
    output layer is its input embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-equal logits; widen them so orderings are decisive.
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model.eval()


def tiny_scaled_model(kind: str) -> Any:
    """A one-layer random model whose forward scales its logits: Cohere multiplies them by
    ``logit_scale``, Granite divides them by ``logits_scaling``."""
    import transformers

    shape: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
    }
    scale = {"Cohere": {"logit_scale": 0.25}, "Granite": {"logits_scaling": 8.0}}[kind]
    config = getattr(transformers, f"{kind}Config")(**shape, **scale)
    torch.manual_seed(0)
    model = getattr(transformers, f"{kind}ForCausalLM")(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50)
    return model


def tiny_composite_model(kind: str, softcap: float = 10.0) -> Any:
    """A random text-only ``kind`` (``Gemma3``, ``Gemma4``) composite model, loaded as
    ``AutoModelForCausalLM`` loads it, whose text config records ``softcap`` as its
    ``final_logit_softcapping`` (Gemma 4's forward applies it; Gemma 3's does not)."""
    import transformers

    text: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 16,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "final_logit_softcapping": softcap,
    }
    if kind == "Gemma4":
        parts: dict[str, Any] = {"vision_config": None, "audio_config": None}
        text.update(vocab_size_per_layer_input=64, hidden_size_per_layer_input=8)
    else:
        vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
        parts = {"vision_config": {**vision, "num_attention_heads": 2, "image_size": 16}}
    config = getattr(transformers, f"{kind}Config")(text_config=text, **parts)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50)
    return model


def import_example(name: str) -> Any:
    """The module ``examples/<name>.py``, imported by name."""
    import importlib
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(PROJECT_ROOT / "examples"))


def small_config(**changes: Any) -> Any:
    """A :class:`TrainConfig` of a few quick updates on a tiny model, with ``changes``."""
    from haystack_llmrank.training import LoraSettings, TrainConfig, WindowSampling

    settings: dict[str, Any] = {
        "steps": 4,
        "grad_accumulation": 1,
        "learning_rate": 1e-2,
        "warmup_steps": 0,
        "eval_every": 2,
        "checkpoint_every": 2,
        "sampling": WindowSampling(min_size=3, max_size=6, pool=6),
        "lora": LoraSettings(rank=4, alpha=8, dropout=0.0),
    }
    settings.update(changes)
    return TrainConfig(**settings)


def fit_toy(
    tokenizer: Any, queries: Any, output_dir: Path, **changes: Any
) -> tuple[Any, list[Any]]:
    """Train a tiny Llama at a trainable logit scale for 12 updates of every toy candidate
    (in first-stage order, for FIRST windows); return the trainer and its step reports."""
    from haystack_llmrank.training import FirstTrainer, WindowSampling

    torch.manual_seed(0)
    model = make_tiny_llama(len(tokenizer), seed=4)
    with torch.no_grad():
        model.lm_head.weight.div_(50)  # back to a trainable scale
    size = len(queries[0].texts)
    # the pointwise objective refuses input orders: it scores each passage alone
    pointwise = changes.get("objective") == "pointwise"
    orders = {} if pointwise else {"orders": ("first-stage",), "order_weights": (1.0,)}
    in_order = WindowSampling(min_size=size, max_size=size, pool=size, contiguous=1.0, **orders)
    config = small_config(steps=12, sampling=in_order, learning_rate=5e-3, **changes)
    trainer = FirstTrainer(model, tokenizer, config, base_model="unused", output_dir=output_dir)
    reports: list[Any] = []
    trainer.fit(queries, on_step=reports.append)
    return trainer, reports


def lora_gradients(trainer: Any) -> dict[str, Any]:
    """The gradients a trainer's backward left on its parameters, cleared from them."""
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.optimizer.zero_grad(set_to_none=True)
    return grads


def body_rescore_spec(rescorer: dict[str, Any]) -> Any:
    """The :class:`~opensearch_ltr.rescore.RescoreSpec` one ``rescore`` entry of a search
    body carries."""
    from opensearch_ltr.rescore import RescoreSpec

    query = rescorer["query"]
    return RescoreSpec(
        rescorer["window_size"],
        query["query_weight"],
        query["rescore_query_weight"],
        query["score_mode"],
    )
