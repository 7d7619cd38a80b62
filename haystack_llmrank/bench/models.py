"""Old import path: this module moved to :mod:`haystack_llmrank.bench.model_loading`."""

from typing import Any

from haystack_llmrank.bench import model_loading as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
