"""The model every row measures: a real checkpoint or a random-weight synthetic configuration."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from haystack_llmrank.backends import checkpoint_dtype, resolve_torch_device, resolve_torch_dtype
from haystack_llmrank.bench.config import SYNTHETIC_CONFIGS
from haystack_llmrank.errors import LabelResolutionError
from haystack_llmrank.labels import LabelIds, readout_label_ids
from haystack_llmrank.models import (
    context_length,
    embedded_base,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    text_config,
)


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM with the tokenizer that builds its prompts.

    ``vocab_size`` is set for synthetic models: prompts from the SmolLM2 tokenizer are
    folded into the model's vocabulary (``id % vocab_size``).
    """

    tokenizer: Any
    model: Any
    context: int
    vocab_size: int | None


def resolve_device(
    device: str | None, dtype: str | None, model: str, synthetic: str | None
) -> tuple[str, str]:
    """The device and torch dtype name the engine would pick for these settings.

    On CUDA without a ``dtype``, a real model takes its checkpoint's dtype and a synthetic
    one bfloat16 (that of the 7B checkpoints it stands for), as
    :func:`~haystack_llmrank.backends.resolve_torch_dtype` adjusts them to the device.
    """
    import torch

    torch_device = resolve_torch_device(device)
    checkpoint = None
    if dtype is None and torch_device.startswith("cuda"):
        checkpoint = torch.bfloat16 if synthetic else checkpoint_dtype(resolve_model(model))
    torch_dtype = resolve_torch_dtype(torch_device, dtype, checkpoint)
    return torch_device, str(torch_dtype).removeprefix("torch.")


@functools.cache
def load_bench_tokenizer(model: str, synthetic: str | None) -> Any:
    """The tokenizer that builds every row's prompts (SmolLM2's for synthetic models).

    Loaded once per process: rows that run in one process share it.
    """
    return load_tokenizer(embedded_base() if synthetic else resolve_model(model))


def build_synthetic(name: str, *, device: str, dtype: str, seed: int) -> Any:
    """A Mistral model of the named configuration with random weights, made on ``device``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    shape: dict[str, Any] = dict(SYNTHETIC_CONFIGS[name])
    config = MistralConfig(
        **shape,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM._from_config(  # type: ignore[no-untyped-call]
            config, dtype=getattr(torch, dtype)
        )
    return model.eval()


def load_bench_model(
    model: str, synthetic: str | None, *, device: str, dtype: str, seed: int
) -> LoadedModel:
    """Load the real model, or build the synthetic one, with its prompt tokenizer."""
    import torch

    tokenizer = load_bench_tokenizer(model, synthetic)
    if synthetic is not None:
        lm = build_synthetic(synthetic, device=device, dtype=dtype, seed=seed)
        return LoadedModel(tokenizer, lm, lm.config.max_position_embeddings, lm.config.vocab_size)
    lm = load_causal_lm(
        resolve_model(model), device=device, dtype=getattr(torch, dtype), tokenizer=tokenizer
    )
    return LoadedModel(tokenizer, lm, context_length(lm.config, tokenizer), None)


def engine_label_ids(
    loaded: LoadedModel, labels: Sequence[str], vote: str | None = None
) -> LabelIds:
    """The ids the engine reads (every variant of each label, or the vote's one token),
    folded for synthetic models."""
    resolved = readout_label_ids(loaded.tokenizer, labels, vote)
    if loaded.vocab_size is None:
        return resolved
    size = loaded.vocab_size
    folded = (tuple(dict.fromkeys(i % size for i in group)) for group in resolved.ids)
    return LabelIds(resolved.labels, tuple(folded))


def plain_label_ids(loaded: LoadedModel, labels: Sequence[str]) -> list[int]:
    """One id per label, as a plain implementation finds it: ``convert_tokens_to_ids``."""
    found = loaded.tokenizer.convert_tokens_to_ids(list(labels))
    unknown = {None, loaded.tokenizer.unk_token_id}
    missing = [label for label, i in zip(labels, found, strict=True) if i in unknown]
    if missing:
        raise LabelResolutionError(f"the labels {missing} are not single tokens of this tokenizer")
    ids = [int(i) for i in found]
    return ids if loaded.vocab_size is None else [i % loaded.vocab_size for i in ids]


def plain_vote_id(loaded: LoadedModel, vote: str) -> int:
    """The vote's id, as a plain implementation finds it: its text must encode to one token."""
    ids = loaded.tokenizer.encode(vote, add_special_tokens=False)
    if len(ids) != 1:
        raise LabelResolutionError(f"the vote {vote!r} is not one token of this tokenizer: {ids}")
    return int(ids[0]) if loaded.vocab_size is None else int(ids[0]) % loaded.vocab_size


def body_parameters(model: Any) -> int:
    """Parameters of the model without its input embeddings and LM head (lookups, one row)."""
    skip = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        skip.add(id(head.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def attention_width(model: Any) -> int | None:
    """Layers x query heads x head size: the width of all attention scores and values.

    None when the config does not name the layer count and query heads.
    """
    config = text_config(getattr(model, "config", None))
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int) or heads <= 0:
        return None
    head_dim = getattr(config, "head_dim", None)
    if not isinstance(head_dim, int):
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            return None
        head_dim = hidden // heads
    return layers * heads * head_dim
