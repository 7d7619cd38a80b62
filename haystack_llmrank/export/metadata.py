"""Old import path: this module moved to :mod:`haystack_llmrank.scorers.onnx_metadata`."""

from typing import Any

from haystack_llmrank.scorers import onnx_metadata as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
