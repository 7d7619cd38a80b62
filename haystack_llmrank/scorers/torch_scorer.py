"""Reference scorer on PyTorch and transformers."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from haystack_llmrank.errors import ClosedError
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.scorers.base import check_finite, device_max_batch_tokens
from haystack_llmrank.scorers.label_head import LabelLogitsModel
from haystack_llmrank.scorers.padding import pad_positions, pad_right


class TorchLabelScorer:
    """Label logits from a transformers causal LM.

    Runs :class:`LabelLogitsModel` (the same module the ONNX export traces) on right-padded
    batches: the decoder body, the hidden state at each prompt's last real token, and the
    label rows of the LM head only. The ``[batch, seq, vocab]`` logits tensor is never built,
    and padding never reaches a real token, so any id pads: ``pad_token_id`` ``None`` (a
    tokenizer without a pad token) pads with 0. :meth:`close` lets go of the model.
    """

    def __init__(self, model: Any, label_ids: LabelIds, *, pad_token_id: int | None = 0) -> None:
        self._label_ids = label_ids
        self._pad_id = 0 if pad_token_id is None else pad_token_id
        self._model: Any = model.eval()
        self._head: LabelLogitsModel | None = LabelLogitsModel(self._model, label_ids).eval()

    def close(self) -> None:
        """Let go of the model, so that its memory is freed once nothing else holds it (on
        CUDA, the allocator's cache is emptied too). Scoring afterwards raises
        :class:`~haystack_llmrank.errors.ClosedError`; closing again does nothing."""
        if self._head is None:
            return
        on_cuda = self._head.head_weight.device.type == "cuda"
        self._head = self._model = None
        gc.collect()  # now, even where the model sits in a reference cycle
        if on_cuda:
            torch.cuda.empty_cache()

    def _live(self) -> LabelLogitsModel:
        if self._head is None:
            raise ClosedError("this scorer was closed; load the model again to score")
        return self._head

    @property
    def label_ids(self) -> LabelIds:
        """The labels whose logits :meth:`score` returns."""
        return self._label_ids

    @property
    def preferred_max_batch_tokens(self) -> int:
        """The budget that suits this model's device: one prompt per call on a CPU
        (:func:`~haystack_llmrank.scorers.base.device_max_batch_tokens`)."""
        return device_max_batch_tokens(self.device.type)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        device: torch.device = self._live().head_weight.device
        return device

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Return float32 label logits ``[len(prompts), len(label_ids)]``.

        Raises :class:`~haystack_llmrank.errors.NonFiniteLogitsError` on NaN or ±inf.
        """
        return self._run(prompts, None)

    def score_at(
        self, prompts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Return float32 label logits ``[len(prompts), P, len(label_ids)]`` at each
        prompt's ``positions`` (P: the most of any prompt; shorter rows are padded).

        Raises :class:`~haystack_llmrank.errors.NonFiniteLogitsError` on NaN or ±inf.
        """
        return self._run(prompts, pad_positions(positions, [len(p) for p in prompts]))

    def _run(
        self, prompts: Sequence[Sequence[int]], positions: npt.NDArray[np.int64] | None
    ) -> npt.NDArray[np.float32]:
        head = self._live()  # held to the end, so a close() meanwhile cannot cut this call
        device, dtype = head.head_weight.device, head.head_weight.dtype
        ids, mask = pad_right(prompts, self._pad_id)
        at = None if positions is None else torch.from_numpy(positions).to(device)
        with torch.inference_mode():
            logits = head(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), at)
        result: npt.NDArray[np.float32] = logits.cpu().numpy().astype(np.float32, copy=False)
        if dtype == torch.float32:
            return check_finite(result, "the model computes them in float32")
        return check_finite(result, f"it runs in {dtype}: load it with dtype='float32'")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        dtype: torch.dtype = self._live().head_weight.dtype
        return dtype
