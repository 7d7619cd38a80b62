"""The one search that makes the cluster combine the engine's scores itself.

The engine's values ride in a ``rescore`` clause: a ``bool`` query whose ``should`` clauses are
``constant_score`` filters on each window hit's ``_id``, and on its ``_routing`` when it has one,
boosted by the hit's value. They are grouped under an ``_index`` filter, hits without routing
apart, under a filter that excludes routed documents. A window hit matches exactly
one clause and scores its value; every other hit does not match and scores
``first * query_weight``, exactly as hits past the window do. With the spec and values of
:func:`opensearch_ltr.rescore.break_ties` (no ties that a cluster would order by shard and
document), the cluster's result equals :func:`opensearch_ltr.rescore.rescore`.

Per-shard window: OpenSearch rescores the top ``window_size`` hits *of each shard*. The clause
uses ``window_size + from + size`` so that every shard's window holds all of its hits among the
merged top ``window_size + from + size`` (a hit ranked ``r`` overall is ranked at most ``r`` on
its shard), and only the global window hits match the query. Aggregations, highlights,
suggestions and totals come from the cluster as usual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from opensearch_ltr.errors import RescoreRequestError
from opensearch_ltr.request import check_page
from opensearch_ltr.rescore import RescoreSpec, to_float32

MAX_CLAUSE_COUNT = 1024
"""Default of OpenSearch's ``indices.query.bool.max_clause_count``."""


def _groups(hits: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """The ``(_index, routed)`` groups of :func:`window_query` for ``hits``, in order."""
    return list(dict.fromkeys((hit["_index"], hit.get("_routing") is not None) for hit in hits))


def clause_count(hits: Sequence[Mapping[str, Any]]) -> int:
    """Boolean clauses :func:`window_query` needs for ``hits``: one per hit, one more per hit
    with a ``_routing``, one per group, one more per group of hits without routing."""
    routed = sum(hit.get("_routing") is not None for hit in hits)
    groups = _groups(hits)
    return len(hits) + routed + len(groups) + sum(not routed for _, routed in groups)


def fewest_clauses(window_size: int) -> int:
    """The fewest clauses :func:`window_query` needs for ``window_size`` hits: those of hits of
    one index, none routed."""
    return clause_count([{"_index": "", "_id": ""}] * window_size)


def check_clause_count(clauses: int, max_clause_count: int) -> None:
    """Refuse a rescore query of more than ``max_clause_count`` boolean clauses."""
    if clauses > max_clause_count:
        raise RescoreRequestError(
            f"the server-applied rescore query needs {clauses} clauses, more than "
            f"indices.query.bool.max_clause_count [{max_clause_count}]; lower window_size"
        )


def window_query(hits: Sequence[Mapping[str, Any]], values: Sequence[float]) -> dict[str, Any]:
    """A query that scores each hit with its value: it matches the hit's ``_index``, ``_id``
    and routing, its ``_routing`` when it has one and none when it has none (OpenSearch keeps
    ``_id`` unique per shard only)."""
    if len(hits) != len(values):
        raise ValueError(f"{len(hits)} hits but {len(values)} values")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise RescoreRequestError("a rescore query can only carry finite, non-negative scores")
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {key: [] for key in _groups(hits)}
    for hit, value in zip(hits, values, strict=True):
        match: dict[str, Any] = {"ids": {"values": [hit["_id"]]}}
        routing = hit.get("_routing")
        if routing is not None:
            match = {"bool": {"filter": [match, {"term": {"_routing": routing}}]}}
        clause = {"constant_score": {"filter": match, "boost": to_float32(value)}}
        groups[hit["_index"], routing is not None].append(clause)
    per_group = [
        {
            "bool": {
                "filter": [{"term": {"_index": index}}],
                # exists reads _field_names: the documents indexed with a routing
                **({} if routed else {"must_not": [{"exists": {"field": "_routing"}}]}),
                "should": clauses,
                "minimum_should_match": 1,
            }
        }
        for (index, routed), clauses in groups.items()
    ]
    return per_group[0] if len(per_group) == 1 else {"bool": {"should": per_group}}


def server_rescore_body(
    body: Mapping[str, Any],
    window_hits: Sequence[Mapping[str, Any]],
    values: Sequence[float],
    spec: RescoreSpec,
    *,
    from_: int,
    size: int,
    max_clause_count: int = MAX_CLAUSE_COUNT,
) -> dict[str, Any]:
    """A copy of ``body`` for page ``[from_, from_ + size)`` with the engine's rescore appended.

    ``window_hits`` are the first-pass top ``spec.window_size`` hits (with ``_index``, ``_id``
    and any ``_routing``) and ``values`` their non-negative rescore values; pass ``spec`` and
    ``values`` through :func:`opensearch_ltr.rescore.break_ties` for the cluster to order hits
    exactly as :func:`opensearch_ltr.rescore.rescore`. A ``rescore`` already in the body runs
    first, as it did in the first pass.
    """
    check_page(from_, size)
    check_clause_count(clause_count(window_hits), max_clause_count)
    rescorer = {
        "window_size": spec.window_size + from_ + size,
        "query": {
            "rescore_query": window_query(window_hits, values),
            "query_weight": spec.query_weight,
            "rescore_query_weight": spec.rescore_query_weight,
            "score_mode": spec.score_mode,
        },
    }
    existing = body.get("rescore")
    earlier = (
        [] if existing is None else list(existing) if isinstance(existing, list) else [existing]
    )
    return {**body, "from": from_, "size": size, "rescore": [*earlier, rescorer]}
