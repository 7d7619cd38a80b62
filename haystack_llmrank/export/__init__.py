"""ONNX export of the label-logit graph, and the metadata that makes a folder loadable."""

from haystack_llmrank.export.metadata import (
    EXPORT_HINT,
    PRECISIONS,
    ExportMetadata,
    check_labels,
    is_export,
    read_metadata,
)
from haystack_llmrank.export.pipeline import DEFAULT_OPSET, export_onnx

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_HINT",
    "PRECISIONS",
    "ExportMetadata",
    "check_labels",
    "export_onnx",
    "is_export",
    "read_metadata",
]
