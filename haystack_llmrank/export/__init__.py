"""ONNX export of the label-logit graph, and the metadata that makes a folder loadable."""

from haystack_llmrank.export.onnx_folder import DEFAULT_OPSET, export_onnx
from haystack_llmrank.scorers.onnx_metadata import (
    EXPORT_HINT,
    PRECISIONS,
    ExportMetadata,
    check_labels,
    is_export,
    read_metadata,
)

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
