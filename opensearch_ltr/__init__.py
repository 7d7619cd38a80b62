"""OpenSearch adapter of the llmrank engine: LLM reranking as a rescore stage.

The pure parts (rescore arithmetic, server-applied request bodies, errors) import only the
engine; the rescorers need ``opensearch-py`` (the ``opensearch`` extra) and are imported
lazily on first use.
"""

from typing import TYPE_CHECKING, Any

from opensearch_ltr.errors import (
    MissingTextError,
    QueryTextNotFoundError,
    RerankError,
    RescoreError,
    RescoreRequestError,
    SearchFailedError,
)
from opensearch_ltr.query_text import extract_query_text
from opensearch_ltr.rescore import SCORE_MODES, RescoredHit, RescoreSpec, rescore
from opensearch_ltr.server_applied_rescore import server_rescore_body, window_query
from opensearch_ltr.transforms import SCORE_TRANSFORMS, rescore_values

if TYPE_CHECKING:
    from opensearch_ltr.client_rescorer import AsyncLlmRescorer, LlmRescorer

__all__ = [
    "SCORE_MODES",
    "SCORE_TRANSFORMS",
    "AsyncLlmRescorer",
    "LlmRescorer",
    "MissingTextError",
    "QueryTextNotFoundError",
    "RerankError",
    "RescoreError",
    "RescoreRequestError",
    "RescoreSpec",
    "RescoredHit",
    "SearchFailedError",
    "extract_query_text",
    "rescore",
    "rescore_values",
    "server_rescore_body",
    "window_query",
]

_LAZY = {
    "LlmRescorer": "opensearch_ltr.client_rescorer",
    "AsyncLlmRescorer": "opensearch_ltr.client_rescorer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
