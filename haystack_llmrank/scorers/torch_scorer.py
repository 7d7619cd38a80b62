"""Reference scorer on PyTorch and transformers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from haystack_llmrank.labels import LabelIds
from haystack_llmrank.scorers.padding import pad_right


class TorchLabelScorer:
    """Label logits from a transformers causal LM.

    Runs the decoder body, gathers the hidden state at each prompt's last real
    token (prompts are right-padded, so padding never reaches a real token), and
    multiplies it by the label rows of the LM head only: the ``[batch, seq, vocab]``
    logits tensor is never built.
    """

    def __init__(self, model: Any, label_ids: LabelIds, *, pad_token_id: int = 0) -> None:
        self._model = model.eval()
        self._label_ids = label_ids
        self._pad_id = pad_token_id
        self._body = model.base_model
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no LM head")
        flat = torch.tensor(label_ids.flat_ids, dtype=torch.long, device=head.weight.device)
        self._head_weight = head.weight.detach().index_select(0, flat)
        bias = getattr(head, "bias", None)
        self._head_bias = None if bias is None else bias.detach().index_select(0, flat)
        self._group_index = torch.tensor(label_ids.padded_index(), device=head.weight.device)
        self._softcap = getattr(model.config, "final_logit_softcapping", None)

    @property
    def label_ids(self) -> LabelIds:
        """The labels whose logits :meth:`score` returns."""
        return self._label_ids

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        device: torch.device = self._head_weight.device
        return device

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Return float32 label logits ``[len(prompts), len(label_ids)]``."""
        ids, mask = pad_right(prompts, self._pad_id)
        input_ids = torch.from_numpy(ids).to(self.device)
        attention_mask = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            hidden = self._body(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            last = attention_mask.sum(dim=1) - 1
            final = hidden[torch.arange(hidden.shape[0], device=self.device), last]
            logits = torch.nn.functional.linear(
                final.to(self._head_weight.dtype), self._head_weight, self._head_bias
            ).float()
            if self._softcap:
                logits = torch.tanh(logits / self._softcap) * self._softcap
            per_label = logits[:, self._group_index].amax(dim=-1)
        return per_label.cpu().numpy().astype(np.float32, copy=False)
