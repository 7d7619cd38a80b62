"""Find the user's query text in an OpenSearch query body.

Full-text clauses are read where they are the query: the query itself, ``bool.must`` /
``should``, ``dis_max.queries``, ``constant_score.filter``, ``function_score.query``,
``script_score.query``, ``boosting.positive``, ``nested.query`` and ``hybrid.queries``;
never in ``bool.filter`` or ``must_not``, which restrict what another clause asks (a kNN
query filtered by ``match: {lang: "en"}`` asks no "en"). Field-style clauses (``match``,
``match_phrase``, ``match_phrase_prefix``, ``match_bool_prefix``) give ``{field: text}`` or
``{field: {"query": text}}``; ``neural`` gives ``{field: {"query_text": text}}``;
``multi_match``, ``combined_fields``, ``query_string`` and ``simple_query_string`` give
``{"query": text}`` (query-string syntax is passed on as written). Exactly one distinct text
must be found.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from opensearch_ltr.errors import QueryTextNotFoundError

FIELD_QUERIES = ("match", "match_phrase", "match_phrase_prefix", "match_bool_prefix")
TEXT_QUERIES = ("multi_match", "combined_fields", "query_string", "simple_query_string")
_NESTED: dict[str, tuple[str, ...]] = {
    "bool": ("must", "should"),
    "dis_max": ("queries",),
    "constant_score": ("filter",),
    "function_score": ("query",),
    "script_score": ("query",),
    "boosting": ("positive",),
    "nested": ("query",),
    "hybrid": ("queries",),
}


def _field_text(clause: Any, key: str = "query") -> Iterator[str]:
    if isinstance(clause, Mapping):
        for value in clause.values():
            text = value.get(key) if isinstance(value, Mapping) else value
            if isinstance(text, str):
                yield text


def _texts(query: Any) -> Iterator[str]:
    if isinstance(query, list):
        for item in query:
            yield from _texts(item)
        return
    if not isinstance(query, Mapping):
        return
    for kind, clause in query.items():
        if kind in FIELD_QUERIES:
            yield from _field_text(clause)
        elif kind == "neural" and isinstance(clause, Mapping):
            yield from _field_text(clause, "query_text")
        elif kind in TEXT_QUERIES and isinstance(clause, Mapping):
            text = clause.get("query")
            if isinstance(text, str):
                yield text
        elif kind in _NESTED and isinstance(clause, Mapping):
            for key in _NESTED[kind]:
                yield from _texts(clause.get(key))


def extract_query_text(body: Mapping[str, Any]) -> str:
    """The one query text of ``body["query"]``; :class:`QueryTextNotFoundError` otherwise."""
    found = list(dict.fromkeys(t.strip() for t in _texts(body.get("query")) if t.strip()))
    if len(found) == 1:
        return found[0]
    if not found:
        raise QueryTextNotFoundError(
            "no full-text clause (match, multi_match, query_string, ...) with a query text "
            "in the query body; pass query_text="
        )
    raise QueryTextNotFoundError(f"several query texts in the query body {found}; pass query_text=")
