"""FIRST's loss terms on listwise windows: label logits, RankNet and LM loss from one forward pass.

The counterpart of :mod:`haystack_llmrank.training.pointwise`, which scores one passage per
prompt instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from haystack_llmrank.labels import LabelIds, vote_label_ids
from haystack_llmrank.training.adapters import causal_lm, plain_output_head
from haystack_llmrank.training.encoding import EncodedWindow
from haystack_llmrank.training.losses import weighted_ranknet


def label_logits(logits: torch.Tensor, label_ids: LabelIds, size: int) -> torch.Tensor:
    """Per-label maximum over each label's ids, for the first ``size`` labels."""
    return torch.stack([logits[list(group)].max() for group in label_ids.ids[:size]])


@dataclass(frozen=True)
class WindowLosses:
    """The loss terms of one window.

    ``passage_ranknet`` is the weighted RankNet over each passage's own-label logit at the
    end of its line (``None`` unless the window records where its lines end).
    """

    ranknet: torch.Tensor
    lm: torch.Tensor
    passage_ranknet: torch.Tensor | None = None


def window_losses(
    model: Any, encoded: EncodedWindow, label_ids: LabelIds, vote_id: int | None = None
) -> WindowLosses:
    """The loss terms of one window, from a single forward pass (see :func:`batch_losses`)."""
    return batch_losses(model, [encoded], label_ids, vote_id)[0]


def batch_losses(
    model: Any, batch: Sequence[EncodedWindow], label_ids: LabelIds, vote_id: int | None = None
) -> list[WindowLosses]:
    """The loss terms of each window in ``batch``, from one forward pass over all of them.

    Windows are right-padded to the longest: padding only ever follows a window's real
    tokens, which causal attention never lets them see, so no attention mask is needed and
    the fused causal kernel runs (a padding mask would make it materialise every window's
    attention matrix). Logits are computed only from each prompt's last position on, and
    at the passage line ends the window records: the last position's label logits feed
    RankNet, every later position predicts the next target token for the LM loss, and at
    the end of passage ``p``'s line the logit of ``p``'s own label is that passage's score.
    """
    if not batch:
        raise ValueError("batch_losses needs at least one window")
    lm = causal_lm(model)
    head = plain_output_head(lm)
    device = next(model.parameters()).device
    longest = max(len(encoded.input_ids) for encoded in batch)
    ids = torch.zeros((len(batch), longest), dtype=torch.long)
    rows: list[int] = []
    columns: list[int] = []
    for row, encoded in enumerate(batch):
        length = len(encoded.input_ids)
        ids[row, :length] = torch.tensor(encoded.input_ids)
        tail = range(length - encoded.target_length - 1, length)
        picked = [*encoded.passage_ends, *tail]
        rows.extend([row] * len(picked))
        columns.extend(picked)
    ids = ids.to(device)
    hidden = lm.get_decoder()(input_ids=ids, use_cache=False)
    logits = head(hidden.last_hidden_state[rows, columns]).float()
    losses: list[WindowLosses] = []
    start = 0
    for row, encoded in enumerate(batch):
        ends = len(encoded.passage_ends)
        window = logits[start : start + ends + encoded.target_length + 1]
        start += len(window)
        answer = window[ends:]
        size = len(encoded.target)
        ranknet = weighted_ranknet(label_logits(answer[0], label_ids, size), encoded.target)
        lm_loss = torch.nn.functional.cross_entropy(
            answer[:-1], ids[row, encoded.prompt_length : len(encoded.input_ids)]
        )
        if not ends:
            losses.append(WindowLosses(ranknet, lm_loss))
            continue
        if vote_id is None:
            own = torch.stack([window[p, list(label_ids.ids[p])].max() for p in range(ends)])
        else:
            own = window[:ends, vote_id]
        losses.append(WindowLosses(ranknet, lm_loss, weighted_ranknet(own, encoded.target)))
    return losses


def vote_token_id(tokenizer: Any, vote: str | None) -> int | None:
    """The id of the single token ``vote`` (``None`` for none)."""
    return None if vote is None else vote_label_ids(tokenizer, vote).ids[0][0]
