"""Check a search request for rescoring, as OpenSearch would, and build the first pass.

The user's body is never mutated: the first pass is a shallow copy with ``from: 0`` and
``size`` set to the fetch depth (see :func:`opensearch_ltr.rescore.fetch_size`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from opensearch_ltr.errors import RescoreRequestError
from opensearch_ltr.rescore import check_page
from opensearch_ltr.response import HIT_FIELDS

MAX_RESULT_WINDOW = 10_000
"""Default of OpenSearch's ``index.max_result_window`` (and so of ``index.max_rescore_window``)."""
DEFAULT_SIZE = 10


def _is_score_sort(sort: Any) -> bool:
    """True for a sort OpenSearch treats as no sort: ``_score`` descending only."""
    for item in sort if isinstance(sort, list) else [sort]:
        if item == "_score":
            continue
        if isinstance(item, Mapping) and list(item) == ["_score"]:
            order = item["_score"]
            order = order.get("order", "desc") if isinstance(order, Mapping) else order
            if order == "desc":
                continue
        return False
    return True


def check_body(body: Any) -> None:
    """Reject what OpenSearch rejects next to a ``rescore``, and deep paging by cursor."""
    if not isinstance(body, Mapping):
        raise RescoreRequestError(
            f"the search body must be a JSON object, got {type(body).__name__}"
        )
    if "sort" in body and not _is_score_sort(body["sort"]):
        raise RescoreRequestError("Cannot use [sort] option in conjunction with [rescore].")
    if body.get("collapse") is not None:
        raise RescoreRequestError("cannot use `collapse` in conjunction with `rescore`")
    if body.get("search_after") is not None:
        raise RescoreRequestError("[search_after] cannot page a rescored search; use from and size")


def check_search_kwargs(search_kwargs: Mapping[str, Any]) -> None:
    """Reject client arguments that conflict with rescoring."""
    if search_kwargs.get("scroll") is not None:
        raise RescoreRequestError("using [rescore] is not allowed in a scroll context")
    for name in ("body", "from", "size"):
        if name in search_kwargs:
            raise RescoreRequestError(f"pass {name!r} as the rescorer's own argument")


def _element_matches(pattern: str, key: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), key) is not None


def _covers(pattern: Sequence[str], path: Sequence[str]) -> bool:
    """True if ``pattern`` (``*`` within a name, ``**`` for any depth) selects ``path`` or a
    parent of it."""
    if not pattern:
        return True
    if pattern[0] == "**":
        return _covers(pattern[1:], path) or (bool(path) and _covers(pattern, path[1:]))
    return bool(path) and _element_matches(pattern[0], path[0]) and _covers(pattern[1:], path[1:])


def filter_path_keeps(filter_path: str | Sequence[str], path: str) -> bool:
    """Whether OpenSearch's ``filter_path`` keeps the response field ``path`` (dotted).

    Patterns are comma-separated; a leading ``-`` excludes. A field is kept unless an
    exclusion selects it or a parent, and, when there are inclusions, one selects it or a parent.
    """
    items = [filter_path] if isinstance(filter_path, str) else filter_path
    patterns = [p.strip() for item in items for p in item.split(",") if p.strip()]
    keys = path.split(".")
    includes = [p.split(".") for p in patterns if not p.startswith("-")]
    excludes = [p[1:].split(".") for p in patterns if p.startswith("-")]
    if any(_covers(pattern, keys) for pattern in excludes):
        return False
    return not includes or any(_covers(pattern, keys) for pattern in includes)


def check_filter_path(search_kwargs: Mapping[str, Any], source_fields: Sequence[str]) -> None:
    """Refuse a ``filter_path`` (argument or ``params``) that drops what rescoring reads from
    the hits: ``_index``, ``_id``, ``_score`` and the ``_source`` fields of the passage."""
    filter_path = search_kwargs.get("filter_path")
    if filter_path is None:
        filter_path = (search_kwargs.get("params") or {}).get("filter_path")
    if filter_path is None:
        return
    items = [filter_path] if isinstance(filter_path, str) else filter_path
    if not isinstance(items, Sequence) or not all(isinstance(p, str) for p in items):
        raise RescoreRequestError(f"filter_path must be a string or strings, got {filter_path!r}")
    needed = [f"hits.hits.{name}" for name in HIT_FIELDS]
    needed += [f"hits.hits._source.{name}" for name in source_fields]
    dropped = [path for path in needed if not filter_path_keeps(filter_path, path)]
    if dropped:
        raise RescoreRequestError(
            f"filter_path {filter_path!r} drops {', '.join(dropped)}, which rescoring reads "
            "from every hit; add them to it"
        )


def resolve_page(body: Mapping[str, Any], from_: int | None, size: int | None) -> tuple[int, int]:
    """The page asked for: the arguments, else the body's ``from``/``size``, else 0 and 10."""
    resolved = []
    for name, given, default in (("from", from_, 0), ("size", size, DEFAULT_SIZE)):
        in_body = body.get(name)
        if given is not None and in_body is not None and given != in_body:
            raise RescoreRequestError(
                f"[{name}] is {given} as an argument but {in_body} in the body"
            )
        resolved.append(given if given is not None else in_body if in_body is not None else default)
    check_page(resolved[0], resolved[1])
    return resolved[0], resolved[1]


def check_fetch(fetch: int, max_result_window: int) -> None:
    """The first pass (and a server-applied rescore window) must fit ``max_result_window``."""
    if fetch > max_result_window:
        raise RescoreRequestError(
            f"Rescore window [{fetch}] (window_size + from + size) is too large. It must be less "
            f"than [{max_result_window}]: the index.max_result_window and "
            "index.max_rescore_window index settings (see max_result_window=)."
        )


def first_pass_body(body: Mapping[str, Any], fetch: int) -> dict[str, Any]:
    """A copy of ``body`` that fetches the top ``fetch`` hits."""
    return {**body, "from": 0, "size": fetch}


def stable_preference(index: Any, body: Mapping[str, Any]) -> str:
    """A ``preference`` string fixed per index and body, so every request of one query
    (first pass, server-applied rescore, every page) reads the same shard copies."""
    query = {name: value for name, value in body.items() if name not in ("from", "size")}
    key = json.dumps([index, query], sort_keys=True, default=str).encode()
    return "llmrank-" + hashlib.sha256(key).hexdigest()[:16]
