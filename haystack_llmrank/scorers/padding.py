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
