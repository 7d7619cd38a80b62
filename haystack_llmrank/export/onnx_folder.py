"""``export_onnx``: a causal LM -> a self-contained folder the onnx backend loads by path."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from haystack_llmrank.labels import LabelIds, readout_label_ids
from haystack_llmrank.model_templates import TemplateChoice, model_template
from haystack_llmrank.models import (
    check_available,
    context_length,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    weights_fingerprint,
)
from haystack_llmrank.scorers.onnx_metadata import (
    EXPORTERS,
    GRAPH_FILE,
    PRECISIONS,
    AttentionChoice,
    AttentionKind,
    Exporter,
    ExportMetadata,
    Precision,
    check_attention,
    export_hashes,
    is_export,
)
from haystack_llmrank.scorers.onnx_scorer import check_onnxruntime

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
OPSETS: dict[Exporter, tuple[int, int]] = {"torchscript": (14, 20), "dynamo": (18, 22)}
"""Lowest and highest opset each exporter writes a working graph in: plain attention needs
14 (``scaled_dot_product_attention``), torch's TorchScript exporter supports up to 20, its
dynamo exporter writes 18 for anything lower, and ONNX Runtime cannot run the dynamo
graph's opset-23 ``RotaryEmbedding``."""


def export_onnx(
    model: str | None,
    out_dir: str | Path,
    *,
    precision: Precision = "fp32",
    template: TemplateChoice = None,
    vote: str | None = None,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    exporter: Exporter = "torchscript",
    attention: AttentionChoice = "auto",
    overwrite: bool = False,
) -> Path:
    """Export ``model``'s label-logit graph and everything needed to load it into ``out_dir``.

    ``model`` is anything :func:`~haystack_llmrank.models.resolve_model` accepts. The folder
    gets ``model.onnx`` (inputs ``input_ids``/``attention_mask`` int64 ``[batch, sequence]``,
    output float32 ``label_logits [batch, K]`` for ``template``'s labels (``None``: the
    template ``model`` was trained with, else ``first``); for a template with a ``vote``,
    also ``positions`` int64 ``[batch, P]`` and ``label_logits [batch, P, 1]``, the vote's
    logit at each position (``vote`` sets one on the chosen template); ``model.onnx.data``
    too for graphs over 1 GiB), the tokenizer with its chat template, and ``llmrank.json``.
    ``precision`` is ``fp32``, ``fp16`` (for CUDA) or ``int8`` (weight-only; on CUDA with
    ``attention="plain"``);
    ``optimize`` saves ONNX Runtime's basic graph optimisations; ``exporter`` is
    ``torchscript`` or ``dynamo`` (needs ``onnxscript``), and ``opset`` one it supports
    (:data:`OPSETS`). ``attention`` is ``auto`` (one fused ONNX Runtime node per layer
    where the model and exporter allow it, else plain operators), ``fused`` (raise where
    not possible) or ``plain``; see
    :mod:`haystack_llmrank.export.attention`. An existing export is replaced only
    with ``overwrite``; any other non-empty folder is refused. Returns the folder.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    check_opset(opset, exporter)
    check_attention(attention, exporter)
    _require_export_tools(precision, exporter)
    chosen = model_template(template, model, vote=vote)
    target = Path(out_dir).expanduser().resolve()
    _check_target(target, overwrite=overwrite)
    source = resolve_model(model)
    check_available(source)
    tokenizer = load_tokenizer(source)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{source.name} has no chat template; FIRST prompts are chat prompts")
    label_ids = readout_label_ids(tokenizer, chosen.labels, chosen.vote)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        lm = load_causal_lm(source, device="cpu", dtype=_float32(), tokenizer=tokenizer)
        context = context_length(lm.config, tokenizer)
        attention_kind = _build_graph(
            lm,
            label_ids,
            staging,
            pad_id=pad_id,
            opset=opset,
            optimize=optimize,
            precision=precision,
            exporter=exporter,
            attention=attention,
            positions=chosen.vote is not None,
        )
        tokenizer.save_pretrained(staging)
        ExportMetadata(
            label_ids=label_ids,
            template=chosen.to_dict(),
            precision=precision,
            source_model=source.name,
            context_length=context,
            pad_token_id=pad_id,
            opset=opset,
            optimized=optimize,
            files=export_hashes(staging),
            exporter=_versions(exporter),
            attention=attention_kind,
            source_weights=weights_fingerprint(source),
        ).write(staging)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %s (%s) to %s", source.name, precision, target)
    return target


def _require_export_tools(precision: Precision, exporter: Exporter) -> None:
    needed = ["onnx", "onnxruntime"]
    needed += ["onnx_ir"] if precision == "int8" else []
    needed += ["onnxscript"] if exporter == "dynamo" else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"exporting needs {missing}; pip install 'llmrank[onnx,export]' (or "
            "'llmrank[gpu,export]' on a CUDA machine)"
        )
    check_onnxruntime()


def _float32() -> Any:
    import torch

    return torch.float32


def _check_target(target: Path, *, overwrite: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if not any(target.iterdir()):
        return
    if not is_export(target):
        raise FileExistsError(
            f"{target} is not empty and not an ONNX export; choose another folder"
        )
    if not overwrite:
        raise FileExistsError(
            f"{target} already holds an export; pass overwrite=True "
            "(llmrank export --overwrite) to replace it"
        )


def check_opset(opset: int, exporter: Exporter) -> None:
    """Raise ``ValueError`` unless ``exporter`` writes a working graph in ``opset``
    (see :data:`OPSETS`)."""
    low, high = OPSETS[exporter]
    if not low <= opset <= high:
        raise ValueError(
            f"opset {opset} is not supported by the {exporter} exporter: choose {low} to {high}"
        )


def _build_graph(
    lm: Any,
    label_ids: LabelIds,
    folder: Path,
    *,
    pad_id: int,
    opset: int,
    optimize: bool,
    precision: Precision,
    exporter: Exporter,
    attention: AttentionChoice,
    positions: bool,
) -> AttentionKind:
    """Export, optimise, convert and save the graph into ``folder``, checking it runs.

    ``positions``: the graph reads label logits at given positions (a vote template).
    Returns the attention the graph got.
    """
    from haystack_llmrank.export.graph import choose_attention, export_graph
    from haystack_llmrank.export.precision import convert_precision, optimize_graph, save_graph
    from haystack_llmrank.export.verify import check_graph
    from haystack_llmrank.scorers.label_head import LabelLogitsModel

    module = LabelLogitsModel(lm, label_ids)
    kind = choose_attention(module, attention, pad_id=pad_id, exporter=exporter)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".onnx-scratch-") as scratch:
        raw = Path(scratch) / "raw"
        raw.mkdir()
        export_graph(
            module,
            raw / GRAPH_FILE,
            pad_id=pad_id,
            opset=opset,
            exporter=exporter,
            attention=kind,
            positions=positions,
        )
        graph = raw / GRAPH_FILE
        if optimize:
            optimized = Path(scratch) / "optimized"
            optimized.mkdir()
            optimize_graph(graph, optimized / GRAPH_FILE)
            graph = optimized / GRAPH_FILE
        save_graph(convert_precision(graph, precision), folder)
    exact = precision == "fp32"
    check_graph(module, folder / GRAPH_FILE, pad_id=pad_id, exact=exact, positions=positions)
    return kind


def _versions(exporter: Exporter) -> dict[str, str]:
    """The exporting method and the versions of the libraries that wrote the graph."""
    versions: dict[str, str] = {"method": exporter}
    try:
        versions["llmrank"] = importlib.metadata.version("llmrank")
    except importlib.metadata.PackageNotFoundError:
        versions["llmrank"] = "unknown"
    modules = ["torch", "transformers", "onnx", "onnxruntime"]
    modules += ["onnxscript"] if exporter == "dynamo" else []
    for name in modules:
        versions[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
    return versions
