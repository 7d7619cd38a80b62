"""``export_onnx``: a causal LM -> a self-contained folder the onnx backend loads by path."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from haystack_llmrank.errors import ExportError, listed
from haystack_llmrank.labels import LabelIds, readout_label_ids
from haystack_llmrank.model_templates import TemplateChoice, model_template
from haystack_llmrank.models import (
    context_length,
    load_causal_lm,
    load_tokenizer,
    loadable_source,
    resolve_model,
    weights_fingerprint,
)
from haystack_llmrank.scorers.onnx_metadata import (
    DATA_FILE,
    EXPORTERS,
    GRAPH_FILE,
    METADATA_FILE,
    PRECISIONS,
    TOKENIZER_FILES,
    AttentionChoice,
    AttentionKind,
    Exporter,
    ExportMetadata,
    Precision,
    check_attention,
    export_hashes,
    is_export,
)
from haystack_llmrank.scorers.onnx_scorer import check_onnxruntime, onnxruntime_errors
from haystack_llmrank.staged_files import check_output_folder, clear_stale_staging, staged_folder

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
OPSETS: dict[Exporter, tuple[int, int]] = {"torchscript": (14, 20), "dynamo": (18, 22)}
"""Lowest and highest opset each exporter writes a working graph in: plain attention needs
14 (``scaled_dot_product_attention``), torch's TorchScript exporter supports up to 20, its
dynamo exporter writes 18 for anything lower, and ONNX Runtime cannot run the dynamo
graph's opset-23 ``RotaryEmbedding``."""

EXPORT_FILES = frozenset(
    {
        METADATA_FILE,
        GRAPH_FILE,
        DATA_FILE,
        *TOKENIZER_FILES,
        # what other tokenizers and older transformers versions save as well
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
    }
)
"""The names an export's files may have: overwriting replaces a folder that holds only these."""


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
    :mod:`haystack_llmrank.export.attention`.

    ``out_dir`` is new or an empty folder; an earlier export in it is replaced only with
    ``overwrite``, and only where the folder holds nothing but an export's files
    (:data:`EXPORT_FILES`): any other entry is refused, named, before the model loads, as is
    a folder that cannot be written. The files are written into a private folder inside
    ``out_dir`` and moved into place at the end, ``llmrank.json`` last, with
    :func:`~haystack_llmrank.staged_files.staged_folder`; ``out_dir`` itself is never renamed
    or removed. Returns the folder.
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
    check_output_folder(target)
    replaced = _check_target(target, overwrite=overwrite)
    source = loadable_source(resolve_model(model))
    tokenizer = load_tokenizer(source)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{source.name} has no chat template; FIRST prompts are chat prompts")
    label_ids = readout_label_ids(tokenizer, chosen.labels, chosen.vote)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with staged_folder(target, replaces=replaced, last=METADATA_FILE) as staging:
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


def _check_target(target: Path, *, overwrite: bool) -> list[str]:
    """The entries of the folder ``target`` that the export replaces: none where it is
    missing or empty, the earlier export's files with ``overwrite``; ``FileExistsError`` for
    any other folder, or one that another export is writing into. Removes what interrupted
    exports left (:func:`~haystack_llmrank.staged_files.clear_stale_staging`) first."""
    if not target.exists():
        return []
    running = clear_stale_staging(target)
    if running:
        raise FileExistsError(
            f"{target} is being written by another export ({running[0].name}); wait for it to "
            f"end, or remove {running[0]} if no export runs"
        )
    entries = sorted(path.name for path in target.iterdir())
    if not entries:
        return []
    if not is_export(target):
        raise FileExistsError(
            f"{target} is not empty and not an ONNX export; choose another folder"
        )
    if not overwrite:
        raise FileExistsError(
            f"{target} already holds an export; pass overwrite=True "
            "(llmrank export --overwrite) to replace it"
        )
    foreign = [name for name in entries if name not in EXPORT_FILES or (target / name).is_dir()]
    if foreign:
        raise FileExistsError(
            f"{target} holds an export and {len(foreign)} other entries ("
            f"{listed(foreign, 10)}); overwriting replaces a folder that holds nothing but an "
            "export, so that nothing else is lost: move them away, or export into a new "
            "folder and copy the files over"
        )
    return entries


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

    The graphs before conversion are kept in a scratch folder inside ``folder``, removed
    before this returns.

    ``positions``: the graph reads label logits at given positions (a vote template).
    Returns the attention the graph got.
    """
    from haystack_llmrank.export.graph import choose_attention, export_graph
    from haystack_llmrank.export.precision import convert_precision, optimize_graph, save_graph
    from haystack_llmrank.export.verify import check_graph
    from haystack_llmrank.scorers.label_head import LabelLogitsModel

    module = LabelLogitsModel(lm, label_ids)
    kind = choose_attention(module, attention, pad_id=pad_id, exporter=exporter)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".scratch-") as scratch:
        raw = Path(scratch) / "raw"
        raw.mkdir()
        with _step("exporting the graph"):
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
            with _step("optimising the graph"):
                optimize_graph(graph, optimized / GRAPH_FILE)
            graph = optimized / GRAPH_FILE
        with _step(f"converting the graph to {precision} and saving it"):
            save_graph(convert_precision(graph, precision), folder)
    exact = precision == "fp32"
    with _step("checking the graph on ONNX Runtime"):
        check_graph(module, folder / GRAPH_FILE, pad_id=pad_id, exact=exact, positions=positions)
    return kind


@contextlib.contextmanager
def _step(doing: str) -> Iterator[None]:
    """Raise :class:`ExportError` for an error of onnx's or ONNX Runtime's own while
    ``doing``, so that it reads as the export's failure, with the original as its cause."""
    try:
        yield
    except _tool_errors() as exc:
        raise ExportError(f"export failed while {doing}: {type(exc).__name__}: {exc}") from exc


def _tool_errors() -> tuple[type[Exception], ...]:
    """The error types of onnx's and ONNX Runtime's native code (:func:`onnxruntime_errors`,
    ``ValidationError``...), which derive from ``Exception`` alone."""
    from onnx.checker import ValidationError
    from onnx.shape_inference import InferenceError

    return (*onnxruntime_errors(), ValidationError, InferenceError)


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
