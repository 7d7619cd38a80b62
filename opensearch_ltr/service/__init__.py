"""Cohere-compatible HTTP rerank service for OpenSearch ML Commons remote connectors.

Needs the ``serve`` extra (aiohttp). See :mod:`opensearch_ltr.service.protocol` for the wire
format and :func:`create_app` / :func:`run_service` to run it.
"""

from opensearch_ltr.ml_commons_blueprints import RERANK_PATH
from opensearch_ltr.service.app import BATCHER, create_app
from opensearch_ltr.service.batcher import (
    RerankBatcher,
    RerankEngine,
    ServiceUnavailableError,
    WorkerState,
)
from opensearch_ltr.service.config import ServiceConfig
from opensearch_ltr.service.protocol import (
    RequestError,
    RerankQuery,
    parse_rerank_request,
    relevance_scores,
    rerank_response,
    score_literal,
)
from opensearch_ltr.service.server import run_service, stop_on_signals

__all__ = [
    "BATCHER",
    "RERANK_PATH",
    "RequestError",
    "RerankBatcher",
    "RerankEngine",
    "RerankQuery",
    "ServiceConfig",
    "ServiceUnavailableError",
    "WorkerState",
    "create_app",
    "parse_rerank_request",
    "relevance_scores",
    "rerank_response",
    "run_service",
    "score_literal",
    "stop_on_signals",
]
