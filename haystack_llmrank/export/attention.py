"""Fused causal attention for the export: each layer's attention as one ONNX Runtime node.

The exporter otherwise writes attention as MatMul, mask arithmetic, Softmax and MatMul over
the full ``[batch, heads, sequence, sequence]`` score matrix; on ONNX Runtime's CPU
provider the mask arithmetic and Softmax cost about as much as the weight matrix products.
Here the attention function of every layer is swapped, for the duration of the export, for
one that the TorchScript exporter writes as a single ``com.microsoft::GroupQueryAttention``
node, which computes causal attention without building a mask.

Causal attention without the padding mask is exact for the graph's prompts: they are
right-padded, so every real token sees only real tokens before it, and only the last real
token's hidden state is read. Layers whose attention is not plain causal softmax attention
(sliding windows, soft-capping, attention sinks, dropout, non-causal layers) raise
:class:`AttentionFusionError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from haystack_llmrank.models import text_config

FUSED_ATTENTION = "llmrank_fused_gqa"
"""The name the fused attention function is registered under in transformers."""
_UNSUPPORTED_ARGUMENTS = ("sliding_window", "softcap", "s_aux", "position_bias")


class AttentionFusionError(RuntimeError):
    """A layer's attention has a feature the fused node does not compute."""


class _GroupQueryAttention(torch.autograd.Function):
    """Causal grouped-query attention on ``[batch, sequence, heads * head_dim]`` tensors.

    Runs scaled dot-product attention in eager mode (so tracing sees the real values) and
    is written by the TorchScript exporter as ``com.microsoft::GroupQueryAttention``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        heads: int,
        kv_heads: int,
        scale: float,
    ) -> torch.Tensor:
        group = heads // kv_heads
        q = torch.unflatten(query, 2, (heads, -1)).transpose(1, 2)
        k = torch.unflatten(key, 2, (kv_heads, -1)).transpose(1, 2).repeat_interleave(group, dim=1)
        v = (
            torch.unflatten(value, 2, (kv_heads, -1))
            .transpose(1, 2)
            .repeat_interleave(group, dim=1)
        )
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return out.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(
        g: Any,
        query: Any,
        key: Any,
        value: Any,
        heads: int,
        kv_heads: int,
        scale: float,
    ) -> Any:
        shape = g.op("Shape", query)
        batch = g.op("Slice", shape, _const(g, [0]), _const(g, [1]))
        length = g.op("Cast", g.op("Gather", shape, _const(g, 1)), to_i=6)  # int32 scalar
        # Every row attends causally over the padded length; real tokens come first.
        last = g.op("Sub", length, _const(g, 1, torch.int32))
        seqlens_k = g.op("Expand", last, batch)
        absent = [_absent(g), _absent(g)]  # no past key/value
        outputs = g.op(
            "com.microsoft::GroupQueryAttention",
            query,
            key,
            value,
            *absent,
            seqlens_k,
            length,
            num_heads_i=heads,
            kv_num_heads_i=kv_heads,
            scale_f=scale,
            outputs=3,
        )
        outputs[0].setType(query.type())  # same shape and type as the query
        return outputs[0]


def _const(g: Any, value: Any, dtype: torch.dtype = torch.long) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _absent(g: Any) -> Any:
    """An omitted optional input."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


def _head_counts(module: Any) -> tuple[int, int, int]:
    """``(heads, kv_heads, head_dim)`` of an attention module, from its config."""
    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(module, "head_dim", None)
    if not (
        isinstance(heads, int)
        and isinstance(kv_heads, int)
        and isinstance(head_dim, int)
        and min(heads, kv_heads, head_dim) > 0
    ):
        raise AttentionFusionError(
            f"{type(module).__name__} does not state its head counts and head size"
        )
    if heads % kv_heads:
        raise AttentionFusionError(f"{heads} query heads do not split into {kv_heads} groups")
    return heads, kv_heads, head_dim


def fused_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function that exports as one fused node.

    Takes ``query [batch, heads, sequence, head_dim]`` and ``key``/``value`` with the
    key-value heads, after rotary embeddings; ignores ``attention_mask`` (right padding, see
    the module docstring). Returns ``[batch, sequence, heads, head_dim]``.
    """
    unsupported = [name for name in _UNSUPPORTED_ARGUMENTS if kwargs.get(name) is not None]
    if unsupported or dropout or not getattr(module, "is_causal", True):
        features = unsupported + (["dropout"] if dropout else [])
        raise AttentionFusionError(
            f"{type(module).__name__} uses {features or ['non-causal attention']}"
        )
    heads, kv_heads, head_dim = _head_counts(module)
    scale = float(scaling) if scaling is not None else head_dim**-0.5
    out: torch.Tensor = _GroupQueryAttention.apply(  # type: ignore[no-untyped-call]
        query.transpose(1, 2).flatten(2),
        key.transpose(1, 2).flatten(2),
        value.transpose(1, 2).flatten(2),
        heads,
        kv_heads,
        scale,
    )
    return torch.unflatten(out, 2, (heads, head_dim)), None


@dataclass
class FusedCalls:
    """How many attention calls went through :func:`fused_attention` in a block."""

    count: int = 0


@contextlib.contextmanager
def fused_attention_in(model: Any) -> Iterator[FusedCalls]:
    """Run every attention layer of ``model`` through :func:`fused_attention` inside the block.

    Yields a :class:`FusedCalls` that counts the calls, so a caller can tell layers that
    bypass transformers' attention interface (and so would not be fused).
    """
    from transformers import AttentionInterface

    calls = FusedCalls()

    def counted(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        calls.count += 1
        return fused_attention(*args, **kwargs)

    AttentionInterface.register(FUSED_ATTENTION, counted)
    configs = {id(c): c for c in _configs(model)}.values()
    previous = [(config, config._attn_implementation) for config in configs]
    try:
        for config in configs:
            config._attn_implementation = FUSED_ATTENTION
        yield calls
    finally:
        for config, implementation in previous:
            config._attn_implementation = implementation


def check_all_layers_fused(model: Any, calls: FusedCalls) -> None:
    """Raise :class:`AttentionFusionError` unless one forward fused every layer of ``model``."""
    layers = getattr(text_config(model.config), "num_hidden_layers", None)
    if calls.count == 0 or (isinstance(layers, int) and calls.count != layers):
        raise AttentionFusionError(
            f"{calls.count} of {layers if isinstance(layers, int) else '?'} attention layers "
            f"of {type(model).__name__} went through transformers' attention interface"
        )


def _configs(model: Any) -> Iterator[Any]:
    """The model's config and every sub-module's, where attention layers look it up."""
    yield model.config
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            yield config
