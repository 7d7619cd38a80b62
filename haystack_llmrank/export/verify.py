"""A check that a freshly written graph runs and agrees with the module it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from haystack_llmrank.scorers.label_head import LabelLogitsModel
from haystack_llmrank.scorers.onnx_metadata import OUTPUT_NAME, graph_inputs
from haystack_llmrank.scorers.padding import pad_inputs

_PROMPTS = ([1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6], [5])
"""Three lengths, none equal to the tracing example's, one of a single token."""
_POSITIONS = ([0, 4, 8, 2], [3, 1], [0])
"""Positions to read in :data:`_PROMPTS` for a graph that takes them: counts differ by row."""
_TOLERANCE = 1e-3


def check_graph(
    module: LabelLogitsModel, path: Path, *, pad_id: int, exact: bool, positions: bool = False
) -> None:
    """Run ``path`` on ONNX Runtime (CPU) and compare it with ``module``.

    Raises :class:`RuntimeError` if the output is not finite float32 ``[batch, K]`` (with
    ``positions``, ``[batch, P, K]`` read at given positions) or, with ``exact``, differs
    from the module by more than ``1e-3`` (relative and absolute).
    """
    import onnxruntime as ort

    inputs = pad_inputs(_PROMPTS, pad_id, _POSITIONS if positions else None)
    with torch.no_grad():
        expected = module(*map(torch.from_numpy, inputs)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = dict(zip(graph_inputs(positions), inputs, strict=True))
    got = session.run([OUTPUT_NAME], feed)[0]
    if got.shape != expected.shape or got.dtype != np.float32:
        raise RuntimeError(
            f"the exported graph returns {got.dtype} {got.shape}, expected float32 {expected.shape}"
        )
    if not np.isfinite(got).all():
        raise RuntimeError("the exported graph returns non-finite label logits")
    if exact and not np.allclose(got, expected, rtol=_TOLERANCE, atol=_TOLERANCE):
        worst = float(np.abs(got - expected).max())
        raise RuntimeError(f"the exported graph differs from the model by up to {worst:.3g}")
