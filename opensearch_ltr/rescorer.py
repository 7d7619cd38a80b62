"""Old import path: this module moved to :mod:`opensearch_ltr.client_rescorer`."""

from typing import Any

from opensearch_ltr import client_rescorer as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
