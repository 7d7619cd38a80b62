"""The label head as a torch module: decoder body, position gather, label rows of the LM head.

The torch scorer runs it directly and the ONNX export traces it, so both backends compute
exactly the same thing.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from haystack_llmrank.labels import LabelIds
from haystack_llmrank.models import text_config


def logit_scales(config: Any) -> dict[str, float]:
    """The factors by which the forward of ``config``'s model multiplies its LM head's
    output (before any softcap), keyed by the field of its :func:`text_config` each comes
    from; factors of 1 are left out.

    Cohere multiplies by ``logit_scale``, Falcon-H1 by ``lm_head_multiplier`` and
    HyperCLOVAX by ``logits_scaling``; Granite and MiniCPM3 divide by ``logits_scaling``.
    MPT records a ``logit_scale`` that its forward does not apply.
    """
    text = text_config(config)
    kind = getattr(text, "model_type", None)
    scaling = _number(text, "logits_scaling")
    factors = {
        "logit_scale": 1.0 if kind == "mpt" else _number(text, "logit_scale"),
        "lm_head_multiplier": _number(text, "lm_head_multiplier"),
        "logits_scaling": scaling if kind == "hyperclovax" else 1.0 / scaling,
    }
    return {name: factor for name, factor in factors.items() if factor != 1.0}


def final_softcap(config: Any) -> float | None:
    """The ``final_logit_softcapping`` the forward of ``config``'s model applies, if any,
    read from its :func:`text_config`. Gemma 3's composite model does not apply the one its
    text config may record."""
    if getattr(config, "model_type", None) == "gemma3":
        return None
    softcap = getattr(text_config(config), "final_logit_softcapping", None)
    return float(softcap) if softcap else None


def _number(config: Any, name: str) -> float:
    value = getattr(config, name, None)
    return 1.0 if value is None else float(value)


class LabelLogitsModel(torch.nn.Module):
    """``(input_ids, attention_mask) -> label_logits [batch, K]`` for right-padded prompts,
    or with ``positions [batch, P]``, ``label_logits [batch, P, K]`` at those positions.

    Runs the decoder body, gathers the hidden state at each prompt's last real token (or at
    ``positions``) and multiplies it by the label rows of the LM head only, in float32
    whatever the model's dtype, then applies the model's own logit scale
    (:func:`logit_scales`) and softcap. The rows are laid out as
    ``[K * width]`` (each label's ids, padded by repeating its first id), so the per-label
    maximum is one reshape and one reduction.
    """

    head_weight: torch.Tensor
    head_bias: torch.Tensor | None

    def __init__(self, model: Any, label_ids: LabelIds) -> None:
        super().__init__()
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no LM head")
        self.body = model.base_model
        flat = torch.tensor(label_ids.flat_ids, dtype=torch.long)
        index = flat[torch.tensor(label_ids.padded_index(), dtype=torch.long).reshape(-1)]
        # index_select on CUDA takes its indices on the weight's device.
        rows = index.to(head.weight.device)
        self.labels = len(label_ids)
        self.register_buffer("head_weight", head.weight.detach().index_select(0, rows).clone())
        bias = getattr(head, "bias", None)
        self.register_buffer(
            "head_bias", None if bias is None else bias.detach().index_select(0, rows).clone()
        )
        self.scale = math.prod(logit_scales(model.config).values())
        self.softcap = final_softcap(model.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Label logits in float32: ``[batch, K]`` at each last real token, or
        ``[batch, P, K]`` at ``positions``."""
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        if positions is None:
            last = (attention_mask.sum(dim=1) - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
            final = torch.gather(hidden, 1, last).select(1, 0)
        else:
            # Within each prompt's real tokens; this also keeps the mask an input of a graph
            # whose fused attention does not read it.
            within = torch.minimum(positions, attention_mask.sum(dim=1, keepdim=True) - 1)
            index = within.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            final = torch.gather(hidden, 1, index)
        weight, bias = self.head_weight, self.head_bias
        if final.dtype != torch.float32:
            # Near 30, bfloat16 steps by 0.125 (float16 by 0.016), coarser than the gaps
            # between label logits: a head in the model's dtype rounds them into ties.
            final, weight = final.float(), weight.float()
            bias = None if bias is None else bias.float()
        logits = torch.nn.functional.linear(final, weight, bias)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.view(*logits.shape[:-1], self.labels, -1).amax(dim=-1)
