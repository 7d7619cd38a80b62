"""Old import path: this module moved to :mod:`opensearch_ltr.ml_commons_blueprints`."""

from typing import Any

from opensearch_ltr import ml_commons_blueprints as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
