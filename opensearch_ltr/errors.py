"""Exceptions raised by the OpenSearch rescoring adapter.

``on_error="fail_open"`` turns :class:`RerankError` and a failed server-applied search
(:class:`SearchFailedError` with ``stage="server_rescore"``) into a first-pass response;
every other error is always raised.
"""

from __future__ import annotations

from haystack_llmrank.errors import LlmRankError, listed

HitKey = tuple[str, str, str | None]
"""A hit's identity across responses: ``(_index, _id, _routing)``, ``_routing`` ``None`` for a
hit without one. OpenSearch keeps ``_id`` unique per shard only: under custom routing, two
documents of one index can share it."""


def hit_label(key: HitKey) -> str:
    """How errors name a hit: ``index/id``, followed by its routing when it has one."""
    index, doc_id, routing = key
    return f"{index}/{doc_id}" if routing is None else f"{index}/{doc_id} (routing {routing})"


class RescoreError(LlmRankError):
    """Base class of every error the OpenSearch adapter raises on purpose."""


class RescoreRequestError(RescoreError, ValueError):
    """The search cannot be rescored as asked (OpenSearch would refuse it, or it is ambiguous)."""


class QueryTextNotFoundError(RescoreRequestError):
    """No query text for the engine: none or several in the query body; pass ``query_text``."""


class SearchFailedError(RescoreError):
    """A search request to the cluster failed (unreachable, timed out, missing index, refused).

    ``stage`` is ``"first_pass"`` (nothing to fall back to: always raised) or
    ``"server_rescore"`` (the server-applied search after the engine ran).
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage} search failed: {message}")
        self.stage = stage


class RerankError(RescoreError):
    """The engine could not rerank the window."""


class MissingTextError(RerankError):
    """Hits in the window have none of the text fields (with ``missing_text="raise"``)."""

    def __init__(self, hits: list[HitKey], fields: list[str]) -> None:
        shown = listed([hit_label(key) for key in hits], 5)
        super().__init__(
            f"{len(hits)} hits have none of the fields {fields} in _source: {shown} "
            "(is _source filtered? missing_text='empty' ranks them on their title or nothing)"
        )
        self.hits = hits
