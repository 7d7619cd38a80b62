"""Old import path: this module moved to :mod:`opensearch_ltr.server_applied_rescore`."""

from typing import Any

from opensearch_ltr import server_applied_rescore as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
