"""``llmrank.json`` across versions: older formats read, unknown fields ignored, newer refused."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.scorers.onnx_metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    ExportMetadata,
    read_metadata,
)

LABELS = LabelIds(("A", "B"), ((32,), (33,)))


def format_1() -> dict[str, Any]:
    """Metadata as format 1 wrote it at first: no attention, tokenizer hashes or weights."""
    return {
        "format": "llmrank-onnx",
        "format_version": 1,
        "label_ids": LABELS.to_dict(),
        "template": {"name": "first"},
        "precision": "fp32",
        "source_model": "/models/tiny",
        "context_length": 4096,
        "pad_token_id": 0,
        "opset": 18,
        "optimized": True,
        "files": {"model.onnx": "0" * 64},
        "exporter": {"method": "torchscript", "llmrank": "0.1.0"},
    }


def written(folder: Path, data: dict[str, Any]) -> Path:
    (folder / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_format_1_is_still_read(tmp_path: Path) -> None:
    metadata = read_metadata(written(tmp_path, format_1()), verify_hashes=False)
    assert (metadata.format_version, metadata.attention) == (1, "plain")
    assert metadata.label_ids == LABELS


def test_what_this_version_writes_reads_back_with_the_source_weights(tmp_path: Path) -> None:
    weights = {"adapter/adapter_model.safetensors": "sha256:" + "1" * 64}
    files = {"model.onnx": "0" * 64}
    ExportMetadata(
        LABELS, {"name": "first"}, "fp32", "/m", 4096, 0, 18, True, files, source_weights=weights
    ).write(tmp_path)
    recorded = json.loads((tmp_path / METADATA_FILE).read_text())
    assert recorded["format_version"] == FORMAT_VERSION == 2
    assert recorded["source_weights"] == weights
    assert read_metadata(tmp_path, verify_hashes=False).source_weights == weights


def test_fields_this_version_does_not_know_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = {**format_1(), "format_version": FORMAT_VERSION, "sparsity": 0.5, "hint": "x"}
    with caplog.at_level(logging.WARNING, "haystack_llmrank.scorers.onnx_metadata"):
        metadata = read_metadata(written(tmp_path, data), verify_hashes=False)
    assert metadata.precision == "fp32"
    assert "does not know, ignored: ['hint', 'sparsity']" in caplog.text
    assert "written by a newer llmrank 0.1.0" in caplog.text


def test_a_newer_format_is_refused_asking_for_an_upgrade(tmp_path: Path) -> None:
    newer = FORMAT_VERSION + 1
    data = {**format_1(), "format_version": newer, "exporter": {"llmrank": "9.0"}, "x": 1}
    expected = (
        f"was exported by a newer llmrank 9.0 (format {newer}, this llmrank reads up to "
        f"{FORMAT_VERSION}): upgrade llmrank"
    )
    with pytest.raises(ModelResolutionError, match=re.escape(expected)):
        read_metadata(written(tmp_path, data), verify_hashes=False)


@pytest.mark.parametrize("version", ["2", True, None, 0, 1.5])
def test_a_format_version_that_is_no_whole_number_is_malformed(
    tmp_path: Path, version: Any
) -> None:
    data = {**format_1(), "format_version": version}
    with pytest.raises(ModelResolutionError, match=re.escape(f"format_version={version!r}")):
        read_metadata(written(tmp_path, data), verify_hashes=False)
