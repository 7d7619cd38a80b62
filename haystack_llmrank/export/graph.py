"""The exported computation: decoder body, position gather, label rows of the LM head."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from haystack_llmrank.export.attention import (
    AttentionFusionError,
    check_all_layers_fused,
    fused_attention_in,
)
from haystack_llmrank.scorers.label_head import LabelLogitsModel
from haystack_llmrank.scorers.onnx_metadata import (
    EXPORTERS,
    OUTPUT_NAME,
    POSITIONS_NAME,
    AttentionChoice,
    AttentionKind,
    Exporter,
    check_attention,
    graph_inputs,
)

logger = logging.getLogger(__name__)


def example_inputs(pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two prompts for tracing.

    One row is padded and both are longer than one token, so the traced graph takes the
    general masked-attention path (never a shortcut only valid without padding).
    """
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, pad_id, pad_id, pad_id]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.long)
    return ids, mask


def example_positions() -> torch.Tensor:
    """Positions to read in :func:`example_inputs`: three per row, within each row's tokens."""
    return torch.tensor([[1, 3, 5], [0, 2, 2]], dtype=torch.long)


def choose_attention(
    module: LabelLogitsModel, attention: AttentionChoice, *, pad_id: int, exporter: Exporter
) -> AttentionKind:
    """The attention the graph will have: ``fused`` where the model allows it.

    ``auto`` fuses when the exporter is TorchScript and every layer is plain causal
    attention, else falls back to ``plain`` (logged); ``fused`` raises instead of falling
    back. Fusability is checked by running ``module`` once on the tracing example: every
    layer must reach the fused function and accept it.
    """
    check_attention(attention, exporter)
    if attention == "plain":
        return "plain"
    if exporter != "torchscript":
        logger.info("attention not fused: the %s exporter writes it as plain operators", exporter)
        return "plain"
    try:
        with torch.no_grad(), fused_attention_in(module.body) as calls:
            module(*example_inputs(pad_id))
        check_all_layers_fused(module.body, calls)
    except AttentionFusionError as exc:
        if attention == "fused":
            raise
        logger.info("attention not fused: %s", exc)
        return "plain"
    return "fused"


def export_graph(
    module: LabelLogitsModel,
    path: Path,
    *,
    pad_id: int,
    opset: int,
    exporter: Exporter,
    attention: AttentionKind = "plain",
    positions: bool = False,
) -> None:
    """Write ``module`` as an ONNX graph with dynamic batch and sequence axes to ``path``.

    ``attention="fused"`` writes each layer's attention as one ONNX Runtime node (see
    :mod:`haystack_llmrank.export.attention`; TorchScript exporter only). ``positions``
    adds the :data:`~haystack_llmrank.scorers.onnx_metadata.POSITIONS_NAME` input (int64
    ``[batch, P]``, dynamic ``P``), and the output becomes ``[batch, P, K]``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    module = module.eval()
    fused = fused_attention_in(module.body) if attention == "fused" else contextlib.nullcontext()
    with torch.no_grad(), fused, warnings.catch_warnings():
        # Tracer warnings name Python-side branches; example_inputs() pins the general ones.
        warnings.filterwarnings("ignore", message=".*might cause the trace to be incorrect.*")
        # transformers indexes the padding mask with aranges, which are never negative.
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        warnings.simplefilter("ignore", FutureWarning)
        inputs = (*example_inputs(pad_id), *([example_positions()] if positions else []))
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(graph_inputs(positions)),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=exporter == "dynamo",
            external_data=True,
            verbose=False,
            **_dynamic_dimensions(exporter, positions),
        )
    written = graph_opset(path)
    if written != opset:  # the dynamo exporter logs a failed conversion and keeps its own
        raise ValueError(
            f"the {exporter} exporter wrote opset {written}, not the requested {opset}; "
            "use --exporter torchscript for that opset"
        )
    logger.info(
        "exported the label-logit graph with the %s exporter (opset %d, %s attention)",
        exporter,
        opset,
        attention,
    )


def graph_opset(path: Path) -> int:
    """The default-domain opset an ONNX file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _dynamic_dimensions(exporter: Exporter, positions: bool) -> dict[str, Any]:
    """Batch, sequence (and positions) axes as each exporter takes them."""
    second = {name: "sequence" for name in graph_inputs(positions)}
    output: dict[int, str] = {0: "batch"}
    if positions:
        second[POSITIONS_NAME] = output[1] = "positions"
    if exporter == "dynamo":
        dims = {name: torch.export.Dim(name) for name in ("batch", *set(second.values()))}
        shapes = {name: {0: dims["batch"], 1: dims[axis]} for name, axis in second.items()}
        return {"dynamic_shapes": shapes}
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: axis} for name, axis in second.items()}
    return {"dynamic_axes": {**axes, OUTPUT_NAME: output}}
