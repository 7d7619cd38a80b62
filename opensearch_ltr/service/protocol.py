"""The Cohere-compatible rerank wire format: parse a request, build a response.

Request (``POST /v1/rerank``)::

    {"query": str, "documents": [str | {"text": str}], "top_n": int?, "model": str?,
     "return_documents": bool?}

Response::

    {"id": str, "results": [{"index": int, "relevance_score": float}, ...],
     "meta": {"api_version": {"version": "1"}}}

``results`` are sorted by relevance, most relevant first; ``index`` is the document's position
in the request. Without ``top_n`` there is exactly one result per document; with it, the first
``min(top_n, len(documents))``. A ``top_n`` below the number of documents also tells the
engine that only those positions matter (``tdpart`` then ranks that deep and stops); one at
or above it cuts nothing and asks what no ``top_n`` asks, so the two rank alike (OpenSearch's
``rerank`` processor always sends the number of hits, where the rescorer sends none).
``model`` is accepted for compatibility and ignored. Other
fields are ignored. In a ``{"text": ...}`` object only ``text`` is ranked. A blank document
(empty or whitespace, as the ``rerank`` processor sends for a hit without its field, or what
a prompt shows as nothing: :func:`haystack_llmrank.blank_passages.is_blank`) is
not shown to the model: blank ones follow every document it judged, in request order, scored
below them (:mod:`haystack_llmrank.blank_passages`).

``relevance_score`` is the engine's score (:class:`haystack_llmrank.ranking.Ranking`: the
label or vote logit, non-increasing down the ranking), stepped down where needed to the next
representable float32 so that it strictly decreases in float32. Higher is better; the values
are logits (any sign), not probabilities. Strictness matters: OpenSearch's ``rerank``
processor re-sorts hits by these scores as float32, and ties would let it reorder them.
Each score is written as the shortest decimal that reads back as the same float32 (see
:func:`score_literal`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from haystack_llmrank.blank_passages import is_blank
from haystack_llmrank.data import RepeatedKeyError, unique_keys
from haystack_llmrank.ranking import Ranking
from opensearch_ltr.service.config import ServiceConfig

API_VERSION = "1"


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, a short ``kind``, a message, headers."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return error_body(self.kind, self.message)


def error_body(kind: str, message: str) -> dict[str, Any]:
    """``{"error": {"type": kind, "message": message}}``."""
    return {"error": {"type": kind, "message": message}}


@dataclass(frozen=True)
class RerankQuery:
    """One validated rerank request: ``documents`` as sent, and ``texts``, what the engine
    reads of them (each cut at ``max_document_chars``; the documents where not given)."""

    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = False
    texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.texts:
            object.__setattr__(self, "texts", self.documents)
        elif len(self.texts) != len(self.documents):
            raise ValueError("texts must hold one text per document")

    @property
    def depth(self) -> int | None:
        """The ``top_k`` the engine is told: ``top_n`` where it cuts the results, else
        ``None``."""
        if self.top_n is not None and self.top_n < len(self.documents):
            return self.top_n
        return None


def _invalid(message: str) -> RequestError:
    return RequestError(422, "invalid_request", message)


def _too_large(message: str) -> RequestError:
    return RequestError(413, "too_large", message)


def _document_text(item: Any, position: int) -> str:
    if isinstance(item, dict):
        item = item.get("text")
        if not isinstance(item, str):
            raise _invalid(f"documents[{position}] is an object without a string 'text'")
    if not isinstance(item, str):
        raise _invalid(f"documents[{position}] must be a string or an object with 'text'")
    return item


def _optional(payload: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = payload.get(name)
    if value is not None and type(value) is not kind:  # JSON gives exact types; bool is no int
        raise _invalid(f"'{name}' must be {what}")
    return value


def parse_rerank_request(body: bytes, config: ServiceConfig) -> RerankQuery:
    """Validate a request body: 400 for malformed JSON (an object that repeats a key
    included), 422 for a wrong shape, 413 over a limit."""
    try:
        payload = json.loads(body, object_pairs_hook=unique_keys)
    except RepeatedKeyError as exc:  # JSON readers differ on which value wins
        raise RequestError(400, "malformed_json", f"the body's JSON is ambiguous: {exc}") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, an over-long integer
        raise RequestError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _invalid("the body must be a JSON object")
    query = payload.get("query")
    if not isinstance(query, str) or is_blank(query):
        raise _invalid("'query' must be a non-empty string")
    if len(query) > config.max_query_chars:
        raise _too_large(
            f"'query' has {len(query)} characters; the limit is {config.max_query_chars}"
        )
    documents = payload.get("documents")
    if not isinstance(documents, list):
        raise _invalid("'documents' must be a list")
    if len(documents) > config.max_documents:
        raise _too_large(
            f"{len(documents)} documents sent; the limit is {config.max_documents} per request"
        )
    sent = tuple(_document_text(item, i) for i, item in enumerate(documents))
    # no prompt reads that far (passages keep their first words), and a 413 would fail the
    # whole search of an OpenSearch rerank processor, which cannot cut fields itself
    texts = tuple(text[: config.max_document_chars] for text in sent)
    top_n = _optional(payload, "top_n", int, "a positive integer")
    if top_n is not None and top_n < 1:
        raise _invalid("'top_n' must be a positive integer")
    _optional(payload, "model", str, "a string")
    return_documents = _optional(payload, "return_documents", bool, "true or false")
    return RerankQuery(query, sent, top_n, bool(return_documents), texts)


def relevance_scores(ranking: Ranking) -> list[float]:
    """The ranking's scores, in ranked order, made strictly decreasing in float32.

    :meth:`Ranking.distinct_scores`: each score rounded to float32, or, if that is not below
    the previous one, the next float32 below the previous one.
    """
    return ranking.distinct_scores()


def score_literal(score: float) -> str:
    """JSON number text for ``score`` as float32: the shortest decimal that reads back as it.

    At most 15 characters, always with a ``.`` or an exponent. ML Commons reads the response
    with json-smart, which turns a number literal over 18 characters into a BigDecimal and one
    with neither into an integer; its Cohere post-process function then fails to cast either
    to Double.
    """
    value = np.float32(score)
    if not np.isfinite(value):
        raise ValueError(f"a score must be finite, got {score}")
    positional = np.format_float_positional(value, unique=True, trim="0")
    scientific = np.format_float_scientific(value, unique=True, trim="-", exp_digits=1)
    return positional if len(positional) <= len(scientific) else scientific


def dumps(body: Any) -> str:
    """Compact JSON for ``body`` in which every float is written by :func:`score_literal`."""
    if isinstance(body, float):
        return score_literal(body)
    if isinstance(body, dict):
        items = (f"{json.dumps(str(key))}:{dumps(value)}" for key, value in body.items())
        return "{" + ",".join(items) + "}"
    if isinstance(body, list | tuple):
        return "[" + ",".join(dumps(item) for item in body) + "]"
    return json.dumps(body, allow_nan=False)


def rerank_response(request: RerankQuery, ranking: Ranking, request_id: str) -> dict[str, Any]:
    """The response body for ``request`` ranked as ``ranking``."""
    if len(ranking) != len(request.documents):
        raise ValueError(
            f"a ranking of {len(ranking)} passages for {len(request.documents)} documents"
        )
    results: list[dict[str, Any]] = []
    for index, score in zip(ranking.order, relevance_scores(ranking), strict=True):
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if request.return_documents:
            result["document"] = {"text": request.documents[index]}
        results.append(result)
    if request.top_n is not None:
        results = results[: request.top_n]
    return {"id": request_id, "results": results, "meta": {"api_version": {"version": API_VERSION}}}
