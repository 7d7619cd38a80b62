"""Right padding of token id lists into the arrays every scorer feeds its model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def pad_right(
    prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad token id lists into ``input_ids`` and ``attention_mask`` arrays."""
    if not prompts:
        raise ValueError("no prompts to score")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError("cannot score an empty prompt")
    ids = np.full((len(prompts), max(lengths)), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        mask[row, : len(prompt)] = 1
    return ids, mask


def pad_positions(
    positions: Sequence[Sequence[int]], lengths: Sequence[int]
) -> npt.NDArray[np.int64]:
    """Right-pad per-prompt token positions into one ``[batch, P]`` array (padding reads
    position 0), after checking each lies within its prompt of ``lengths[row]`` tokens."""
    if len(positions) != len(lengths):
        raise ValueError(f"{len(positions)} position lists for {len(lengths)} prompts")
    if not positions or min(len(p) for p in positions) == 0:
        raise ValueError("every prompt needs at least one position to score at")
    table = np.zeros((len(positions), max(len(p) for p in positions)), dtype=np.int64)
    for row, (at, length) in enumerate(zip(positions, lengths, strict=True)):
        if min(at) < 0 or max(at) >= length:
            raise ValueError(f"positions {list(at)} fall outside a prompt of {length} tokens")
        table[row, : len(at)] = at
    return table


def pad_inputs(
    prompts: Sequence[Sequence[int]], pad_id: int, at: Sequence[Sequence[int]] | None = None
) -> list[npt.NDArray[np.int64]]:
    """A label-logit graph's inputs in order: ``input_ids`` and ``attention_mask``
    (:func:`pad_right`), then, with ``at``, each prompt's positions (:func:`pad_positions`)."""
    ids, mask = pad_right(prompts, pad_id)
    if at is None:
        return [ids, mask]
    return [ids, mask, pad_positions(at, [len(p) for p in prompts])]
