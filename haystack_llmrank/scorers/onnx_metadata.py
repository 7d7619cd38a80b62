"""``llmrank.json``, the export format the ONNX scorer reads: a folder's contents and checks."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from haystack_llmrank.checks import is_whole
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.labels import LabelIds

logger = logging.getLogger(__name__)

METADATA_FILE = "llmrank.json"
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
FORMAT = "llmrank-onnx"
FORMAT_VERSION = 2
"""The newest format this llmrank writes and reads; it reads every version from 1 on.

A field that a reader may ignore is added without raising it: readers of the same version
ignore fields they do not know, with a warning. It is raised when a reader must understand a
new field: version 2 added ``source_weights``, which reuse must compare."""
INPUT_NAMES = ("input_ids", "attention_mask")
POSITIONS_NAME = "positions"
"""The third input of a vote export: int64 ``[batch, P]`` token positions to read at."""
OUTPUT_NAME = "label_logits"
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
AttentionKind = Literal["fused", "plain"]
AttentionChoice = Literal["auto", "fused", "plain"]
ATTENTION_CHOICES: tuple[AttentionChoice, ...] = ("auto", "fused", "plain")
EXPORT_HINT = (
    "export it first: llmrank export MODEL OUT_DIR (or haystack_llmrank.export.export_onnx)"
)


@dataclass(frozen=True)
class ExportMetadata:
    """The contents of ``llmrank.json``.

    A template with a ``vote`` was exported with a :data:`POSITIONS_NAME` input
    (:attr:`reads_positions`).

    ``files`` maps each file of the graph (``model.onnx`` and its external data, if any)
    and of the tokenizer (:data:`TOKENIZER_FILES`) to its SHA-256; ``template`` is
    :meth:`PromptTemplate.to_dict` of the template whose labels the graph scores;
    ``exporter`` records the exporting method and library versions;
    ``attention`` is ``fused`` (one ONNX Runtime node per layer) or ``plain`` (exports
    written before the field existed have plain attention); ``source_weights`` is
    :func:`~haystack_llmrank.models.weights_fingerprint` of the exported model (empty in
    format 1).
    """

    label_ids: LabelIds
    template: dict[str, Any]
    precision: str
    source_model: str
    context_length: int
    pad_token_id: int
    opset: int
    optimized: bool
    files: dict[str, str]
    exporter: dict[str, str] = field(default_factory=dict)
    attention: str = "plain"
    source_weights: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def reads_positions(self) -> bool:
        """Whether the graph takes :data:`POSITIONS_NAME` (the template has a vote)."""
        return self.template.get("vote") is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        data = asdict(self)
        data["label_ids"] = self.label_ids.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportMetadata:
        """Inverse of :meth:`to_dict`; ``ValueError`` for a field of the wrong type."""
        metadata = cls(**{**data, "label_ids": LabelIds.from_dict(data["label_ids"])})
        metadata._check_types()
        return metadata

    def _check_types(self) -> None:
        wrong = [
            name
            for name, right in (
                ("template", isinstance(self.template, dict)),
                ("exporter", isinstance(self.exporter, dict)),
                ("files", _str_map(self.files)),
                ("source_weights", _str_map(self.source_weights)),
                ("context_length", is_whole(self.context_length, 1)),
                ("opset", is_whole(self.opset, 1)),
                ("pad_token_id", is_whole(self.pad_token_id, 0)),
                ("optimized", isinstance(self.optimized, bool)),
                ("precision", isinstance(self.precision, str)),
                ("attention", self.attention in ("fused", "plain")),
            )
            if not right
        ]
        if wrong:
            shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in wrong)
            raise ValueError(f"fields of the wrong type or value: {shown}")

    def write(self, folder: Path) -> None:
        """Write ``llmrank.json`` into ``folder``."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        (folder / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


def _str_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def graph_inputs(positions: bool) -> tuple[str, ...]:
    """The input names of a graph that reads the last token, or ``positions`` too."""
    return (*INPUT_NAMES, POSITIONS_NAME) if positions else INPUT_NAMES


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
"""Tokenizer files an export records the hashes of, where the tokenizer saved them: what
turns a prompt into the ids the graph reads."""


def graph_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of ``model.onnx`` and, when present, its external data file."""
    names = [GRAPH_FILE] + ([DATA_FILE] if (folder / DATA_FILE).is_file() else [])
    return {name: file_sha256(folder / name) for name in names}


def export_hashes(folder: Path) -> dict[str, str]:
    """:func:`graph_hashes`, and SHA-256 of each of :data:`TOKENIZER_FILES` present."""
    tokenizer = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return {**graph_hashes(folder), **{name: file_sha256(folder / name) for name in tokenizer}}


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` looks like an ONNX export (it holds ``llmrank.json``)."""
    return (Path(folder) / METADATA_FILE).is_file()


def read_metadata(folder: str | Path, *, verify_hashes: bool = True) -> ExportMetadata:
    """Read and check the metadata of an export folder.

    Raises :class:`ModelResolutionError` if ``folder`` is not an export, has no or
    unreadable metadata, is of a format version newer than :data:`FORMAT_VERSION` (written
    by a newer llmrank), or (with ``verify_hashes``) its graph files, or the tokenizer files
    it recorded, do not match the recorded hashes. Fields this version does not know are
    ignored, with a warning.
    """
    path = Path(folder).expanduser()
    meta_path = path / METADATA_FILE
    if not path.is_dir():
        raise ModelResolutionError(
            f"{path} is not a folder; the onnx backend loads an export "
            f"folder by path; {EXPORT_HINT}"
        )
    if not meta_path.is_file():
        raise ModelResolutionError(
            f"{path} holds no {METADATA_FILE}, so it is not an ONNX export; {EXPORT_HINT}"
        )
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(f"cannot read {meta_path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelResolutionError(f"{meta_path} is not {FORMAT} metadata")
    version = data.get("format_version")
    if not is_whole(version, 1):
        raise ModelResolutionError(
            f"{meta_path} is incomplete or malformed: format_version={version!r}"
        )
    if int(version) > FORMAT_VERSION:
        raise ModelResolutionError(
            f"{path} was exported by a newer llmrank{_writer(data)} (format {version}, this "
            f"llmrank reads up to {FORMAT_VERSION}): upgrade llmrank, or export the model "
            "again with this one"
        )
    known = {item.name for item in fields(ExportMetadata)}
    unknown = sorted(data.keys() - known)
    if unknown:
        logger.warning(
            "%s holds fields this llmrank does not know, ignored: %s (written by a newer "
            "llmrank%s)",
            meta_path,
            unknown,
            _writer(data),
        )
    try:
        metadata = ExportMetadata.from_dict({k: v for k, v in data.items() if k in known})
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelResolutionError(f"{meta_path} is incomplete or malformed: {exc}") from exc
    if verify_hashes:
        _check_hashes(path, metadata.files)
    return metadata


def _writer(data: dict[str, Any]) -> str:
    """``" X"`` where the metadata records that llmrank X wrote it, else ``""``."""
    exporter = data.get("exporter")
    version = exporter.get("llmrank") if isinstance(exporter, dict) else None
    return f" {version}" if isinstance(version, str) else ""


def check_files_present(folder: Path, recorded: dict[str, str]) -> None:
    """Raise :class:`ModelResolutionError` where ``folder`` lacks its graph or a file whose
    hash the export ``recorded``."""
    missing = [name for name in sorted({GRAPH_FILE, *recorded}) if not (folder / name).is_file()]
    if missing:
        raise ModelResolutionError(f"{folder} lacks {missing}; {EXPORT_HINT}")


def _check_hashes(folder: Path, recorded: dict[str, str]) -> None:
    check_files_present(folder, recorded)
    # the graph's files always; tokenizer files where the export recorded them (exports
    # written before they were recorded hold graph hashes only)
    actual = {
        **graph_hashes(folder),
        **{name: file_sha256(folder / name) for name in recorded if name in TOKENIZER_FILES},
    }
    changed = sorted(
        name for name in {*actual, *recorded} if actual.get(name) != recorded.get(name)
    )
    if changed:
        raise ModelResolutionError(
            f"{changed} in {folder} do not match the hashes in {METADATA_FILE} (changed or "
            "corrupt); export the model again"
        )


def check_labels(metadata: ExportMetadata, labels: Sequence[str]) -> None:
    """Raise :class:`ModelResolutionError` unless the export scores exactly ``labels`` (for
    an export that reads a vote, that one token)."""
    exported = metadata.label_ids.labels
    if tuple(labels) == exported:
        return
    name = metadata.template.get("name", "?")
    vote = metadata.template.get("vote")
    if vote is None:
        reads = f"scores the labels {list(exported)} of template {name!r}, without a vote"
    else:
        reads = f"reads template {name!r} by the vote {vote!r}"
    raise ModelResolutionError(
        f"this export {reads}, not the requested {list(labels)}; load it with labels=None "
        "(what it records), or export again with the template you want"
    )


def check_attention(attention: str, exporter: str) -> None:
    """``ValueError`` for an unknown ``attention``, or ``fused`` with an exporter that cannot
    write it (only ``torchscript`` can), so that an export refuses it before the model loads."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {attention!r}; choose one of {ATTENTION_CHOICES}")
    if attention == "fused" and exporter != "torchscript":
        raise ValueError("fused attention is written by the torchscript exporter only")
