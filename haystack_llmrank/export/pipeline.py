"""Old import path: this module moved to :mod:`haystack_llmrank.export.onnx_folder`."""

from typing import Any

from haystack_llmrank.export import onnx_folder as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
