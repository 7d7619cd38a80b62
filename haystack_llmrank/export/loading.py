"""Load an export folder: its tokenizer, an :class:`OnnxLabelScorer`, and its metadata."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.export.metadata import (
    GRAPH_FILE,
    ExportMetadata,
    check_labels,
    read_metadata,
)
from haystack_llmrank.gpu_policy import OnMissingGpu
from haystack_llmrank.scorers.onnx_scorer import OnnxLabelScorer

logger = logging.getLogger(__name__)


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
    (checked unless ``verify_hashes`` is false), or, when ``labels`` are given, that scores
    other labels. The other arguments go to :class:`OnnxLabelScorer`.
    """
    path = Path(folder).expanduser()
    metadata = read_metadata(path, verify_hashes=verify_hashes)
    if labels is not None:
        check_labels(metadata, labels)
    tokenizer = _load_tokenizer(path)
    scorer = OnnxLabelScorer(
        path / GRAPH_FILE,
        metadata.label_ids,
        pad_token_id=metadata.pad_token_id,
        device=device,
        on_missing_gpu=on_missing_gpu,
        intra_op_num_threads=intra_op_num_threads,
        inter_op_num_threads=inter_op_num_threads,
    )
    for problem in device_mismatches(metadata, scorer.device):
        logger.warning("%s: %s", path, problem)
    return LoadedExport(tokenizer, scorer, metadata)


def device_mismatches(metadata: ExportMetadata, device: str) -> list[str]:
    """Why an export runs slowly on ``device`` (``cpu`` or ``cuda:N``), if it does."""
    problems = []
    if metadata.precision == "fp16" and device == "cpu":
        problems.append("an fp16 export is meant for CUDA; on the CPU use fp32 or int8")
    if metadata.attention == "fused" and metadata.precision != "fp16" and device != "cpu":
        problems.append(
            f"the CUDA provider runs fused attention in fp16 only, so this {metadata.precision} "
            "export's attention runs on the CPU; on CUDA use an fp16 export (or export with "
            "attention='plain')"
        )
    return problems


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(
            f"cannot load the tokenizer of the export {folder}: {exc}"
        ) from exc
