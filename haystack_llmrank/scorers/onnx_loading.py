"""Load an export folder: its tokenizer, an :class:`OnnxLabelScorer`, and its metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haystack_llmrank.errors import LabelResolutionError, ModelResolutionError
from haystack_llmrank.gpu_policy import OnMissingGpu
from haystack_llmrank.labels import readout_label_ids
from haystack_llmrank.scorers.onnx_metadata import (
    EXPORT_HINT,
    GRAPH_FILE,
    ExportMetadata,
    check_labels,
    read_metadata,
)
from haystack_llmrank.scorers.onnx_scorer import OnnxLabelScorer, onnxruntime_errors


@dataclass(frozen=True)
class LoadedExport:
    """What :func:`load_export` returns."""

    tokenizer: Any
    scorer: OnnxLabelScorer
    metadata: ExportMetadata


def load_export(
    folder: str | Path,
    *,
    labels: Sequence[str] | None = None,
    device: str | None = None,
    on_missing_gpu: OnMissingGpu = "raise",
    intra_op_num_threads: int | None = None,
    inter_op_num_threads: int | None = None,
    verify_hashes: bool = True,
) -> LoadedExport:
    """Load an export written by :func:`~haystack_llmrank.export.export_onnx`.

    Refuses (:class:`~haystack_llmrank.errors.ModelResolutionError`) a folder that is not an
    export, is of another format version, whose graph does not match its recorded hash
    (checked unless ``verify_hashes`` is false), whose tokenizer does not give the recorded
    labels (or vote) the ids the graph scores, or, when ``labels`` are given, that scores
    other labels; also a graph that this onnxruntime cannot load, naming both versions when
    it is older than the one that exported it. The other arguments, and the metadata, go to
    :class:`OnnxLabelScorer`.
    """
    path = Path(folder).expanduser()
    metadata = read_metadata(path, verify_hashes=verify_hashes)
    if labels is not None:
        check_labels(metadata, labels)
    tokenizer = _load_tokenizer(path)
    if metadata.pad_token_id >= len(tokenizer):
        raise ModelResolutionError(
            f"{path}: pad_token_id {metadata.pad_token_id} is not among the tokenizer's "
            f"{len(tokenizer)} tokens; {EXPORT_HINT}"
        )
    try:
        scorer = OnnxLabelScorer(
            path / GRAPH_FILE,
            metadata.label_ids,
            pad_token_id=metadata.pad_token_id,
            device=device,
            on_missing_gpu=on_missing_gpu,
            intra_op_num_threads=intra_op_num_threads,
            inter_op_num_threads=inter_op_num_threads,
            metadata=metadata,
        )
    except onnxruntime_errors() as exc:
        older = runtime_older_than_export(metadata)
        if older is None:
            raise ModelResolutionError(
                f"onnxruntime cannot load {path / GRAPH_FILE} ({exc}); export the model again"
            ) from exc
        running, exporting = older
        raise ModelResolutionError(
            f"{path} was exported with onnxruntime {exporting}, and this onnxruntime "
            f"{running} cannot load it ({exc}); upgrade onnxruntime to {exporting} or later, "
            "or export the model again with this one"
        ) from exc
    if scorer.reads_positions != metadata.reads_positions:
        vote = metadata.template.get("vote")
        raise ModelResolutionError(
            f"{path}'s template has {'no vote' if vote is None else f'the vote {vote!r}'}, but "
            f"its graph {'takes' if scorer.reads_positions else 'lacks'} the positions input; "
            "export the model again"
        )
    _check_tokenizer(path, tokenizer, metadata)
    return LoadedExport(tokenizer, scorer, metadata)


def runtime_older_than_export(metadata: ExportMetadata) -> tuple[str, str] | None:
    """``(running, exporting)`` onnxruntime versions when the running one is older, else None.

    None also when the export does not record its version.
    """
    import onnxruntime as ort
    from packaging.version import InvalidVersion, Version

    exporting = metadata.exporter.get("onnxruntime")
    running = str(ort.__version__)
    try:
        if exporting is None or Version(running) >= Version(exporting):
            return None
    except InvalidVersion:
        return None
    return running, exporting


def _check_tokenizer(folder: Path, tokenizer: Any, metadata: ExportMetadata) -> None:
    """Raise :class:`ModelResolutionError` unless ``tokenizer`` gives the recorded labels (or
    vote) the ids that the graph scores, as it did at export."""
    recorded = metadata.label_ids
    try:
        found = readout_label_ids(tokenizer, recorded.labels, metadata.template.get("vote"))
    except LabelResolutionError as exc:
        problem = str(exc)
    else:
        if found == recorded:
            return
        label, theirs, ours = next(
            (label, list(theirs), list(ours))
            for label, theirs, ours in zip(recorded.labels, found.ids, recorded.ids, strict=True)
            if theirs != ours
        )
        problem = f"it gives {label!r} the ids {theirs}, the graph scores {ours}"
    raise ModelResolutionError(
        f"the tokenizer in {folder} does not encode the labels the graph scores ({problem}); "
        "export again"
    )


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(
            f"cannot load the tokenizer of the export {folder}: {exc}"
        ) from exc
