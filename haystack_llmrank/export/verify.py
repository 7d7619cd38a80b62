"""A check that a freshly written graph runs and agrees with the module it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from haystack_llmrank.scorers.label_head import LabelLogitsModel
from haystack_llmrank.scorers.onnx_metadata import INPUT_NAMES, OUTPUT_NAME
from haystack_llmrank.scorers.padding import pad_right

_PROMPTS = ([1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6], [5])
"""Three lengths, none equal to the tracing example's, one of a single token."""
_TOLERANCE = 1e-3


def check_graph(module: LabelLogitsModel, path: Path, *, pad_id: int, exact: bool) -> None:
    """Run ``path`` on ONNX Runtime (CPU) and compare it with ``module``.

    Raises :class:`RuntimeError` if the output is not finite float32 ``[batch, K]`` or, with
    ``exact``, differs from the module by more than ``1e-3`` (relative and absolute).
    """
    import onnxruntime as ort

    ids, mask = pad_right(_PROMPTS, pad_id)
    with torch.no_grad():
        expected = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, (ids, mask), strict=True)))[0]
    if got.shape != expected.shape or got.dtype != np.float32:
        raise RuntimeError(
            f"the exported graph returns {got.dtype} {got.shape}, expected float32 {expected.shape}"
        )
    if not np.isfinite(got).all():
        raise RuntimeError("the exported graph returns non-finite label logits")
    if exact and not np.allclose(got, expected, rtol=_TOLERANCE, atol=_TOLERANCE):
        worst = float(np.abs(got - expected).max())
        raise RuntimeError(f"the exported graph differs from the model by up to {worst:.3g}")
