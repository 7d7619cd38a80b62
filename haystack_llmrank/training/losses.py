"""FIRST's ranking loss: weighted RankNet on the first generated token's label logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from haystack_llmrank.training.config import RanknetReduction


def weighted_ranknet(logits: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """FIRST's weighted RankNet over one window's label logits.

    ``logits[p]`` is the logit of the label at prompt position ``p``; ``target[r]`` is the
    position that should be ranked ``r``. Every pair ranked ``i < j`` (1-based) adds
    ``log(1 + exp(s_j - s_i)) / (i + j)``, so mistakes near the top weigh most. The result
    is the sum over pairs, as FIRST's paper writes it (:func:`ranknet_scale` gives the mean).
    """
    n = len(target)
    if n < 2:
        return logits.sum() * 0.0
    ranks = torch.arange(1, n + 1, device=logits.device, dtype=logits.dtype)
    weights = 1.0 / (ranks[:, None] + ranks[None, :])
    return (_pair_losses(logits, target) * weights)[_upper(n, logits.device)].sum()


def ranknet_scale(size: int, reduction: RanknetReduction) -> float:
    """The factor that reduces :func:`weighted_ranknet` of a ``size``-passage window as
    ``reduction`` says.

    ``"sum"``: 1, the sum over pairs (FIRST's paper). ``"mean"``: one over the number of
    pairs, ``size * (size - 1) / 2``, as FIRST's released code reduces it
    (``BCEWithLogitsLoss`` weighted by ``1 / (i + j)``, mean over pairs).
    """
    pairs = size * (size - 1) // 2
    return 1.0 if reduction == "sum" or pairs == 0 else 1.0 / pairs


def chance_ranknet(size: int, reduction: RanknetReduction = "sum") -> float:
    """:func:`weighted_ranknet` of ``size`` equal logits under ``reduction`` (see
    :func:`ranknet_scale`): ``log 2`` times the pair weights.

    A model whose loss is not below this has not learned to order the window; it has at
    most stopped preferring some positions.
    """
    ranks = range(1, size + 1)
    summed = math.log(2) * sum(1.0 / (i + j) for i in ranks for j in ranks if i < j)
    return summed * ranknet_scale(size, reduction)


def pairwise_ranknet(scores: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """Mean pairwise logistic loss over independent passage scores.

    ``scores[p]`` scores the passage at position ``p``; ``target[r]`` is the position that
    should be ranked ``r``. Every pair ranked ``i < j`` adds ``log(1 + exp(s_j - s_i))``,
    all pairs weighing the same; equal scores give ``log 2``.
    """
    if len(target) < 2:
        return scores.sum() * 0.0
    return _pair_losses(scores, target)[_upper(len(target), scores.device)].mean()


def _pair_losses(scores: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """``[i, j] = log(1 + exp(s_j - s_i))``, ``s_i`` the score of the passage ``target`` ranks
    ``i``; the pairs ranked ``i < j`` are the upper triangle (:func:`_upper`)."""
    ordered = scores[torch.as_tensor(list(target), device=scores.device)]
    return torch.nn.functional.softplus(ordered[None, :] - ordered[:, None])


def _upper(n: int, device: torch.device) -> torch.Tensor:
    """The ``n`` x ``n`` mask of pairs ``i < j``."""
    return torch.triu(torch.ones(n, n, dtype=torch.bool, device=device), diagonal=1)
