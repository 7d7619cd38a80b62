"""The scorer interface: token ids of prompts in, exact label logits out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from haystack_llmrank.errors import NonFiniteLogitsError
from haystack_llmrank.labels import LabelIds

DEFAULT_MAX_BATCH_TOKENS = 16384
"""Padded tokens per forward pass at most (batch rows x longest prompt) where batches pay."""


@runtime_checkable
class LabelScorer(Protocol):
    """Scores a batch of prompts: float32 logits ``[batch, len(label_ids)]``.

    Each row holds the next-token logits, at the prompt's last token, of every label
    (the maximum over the label's vocabulary ids). Exact, never a top-k.
    """

    @property
    def label_ids(self) -> LabelIds:
        """The labels whose logits :meth:`score` returns, in column order."""
        ...

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Return the label logits of each prompt (token ids, no padding)."""
        ...


@runtime_checkable
class PositionScorer(LabelScorer, Protocol):
    """A :class:`LabelScorer` that can also read the label logits at given positions."""

    def score_at(
        self, prompts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Float32 label logits ``[batch, P, K]`` of each prompt at each of its
        ``positions`` (token indices); P is the most positions of any prompt, and a row
        with fewer is padded with values that mean nothing."""
        ...


def check_finite(logits: npt.NDArray[np.float32], remedy: str) -> npt.NDArray[np.float32]:
    """``logits``, or :class:`NonFiniteLogitsError` (with ``remedy``) if any is NaN or ±inf."""
    bad = ~np.isfinite(logits)
    if bad.any():
        kinds = sorted({"NaN" if np.isnan(v) else f"{v:+}" for v in logits[bad].tolist()})
        raise NonFiniteLogitsError(
            f"{int(bad.sum())} of {logits.size} label logits are {'/'.join(kinds)}: the model "
            f"overflowed, and such logits rank nothing; {remedy}"
        )
    return logits


def reads_positions(scorer: LabelScorer) -> bool:
    """Whether ``scorer`` reads logits at given positions, as a vote readout needs: a
    :class:`PositionScorer`, unless it says otherwise with a ``reads_positions`` attribute
    (an ONNX graph exported without the positions input)."""
    return isinstance(scorer, PositionScorer) and bool(getattr(scorer, "reads_positions", True))


def device_max_batch_tokens(device: str) -> int:
    """The padded-token budget per forward pass that suits a torch model on ``device`` (a
    device, ``cuda:0``, or its type): one prompt per pass on a CPU, else
    :data:`DEFAULT_MAX_BATCH_TOKENS`.

    On a CPU a padded batch needs an attention mask, which leaves the fast causal attention
    path: one DL19 tdpart step scored as a batch took 1.67x the time of its windows scored
    one by one (SmolLM2, one thread). On CUDA, batches pay.
    """
    return 1 if device == "cpu" else DEFAULT_MAX_BATCH_TOKENS


def preferred_max_batch_tokens(scorer: LabelScorer) -> int:
    """The padded-token budget per call that suits ``scorer``.

    A scorer may say so with a ``preferred_max_batch_tokens`` attribute (the torch scorer
    asks for one prompt per call on a CPU, and so does the ONNX scorer unless its graph is
    int8); otherwise :data:`DEFAULT_MAX_BATCH_TOKENS`.
    """
    preferred = getattr(scorer, "preferred_max_batch_tokens", None)
    return preferred if isinstance(preferred, int) and preferred > 0 else DEFAULT_MAX_BATCH_TOKENS
