"""Check a search request for rescoring, as OpenSearch would, and build the first pass.

The user's body is never mutated: the first pass is a shallow copy with ``from: 0`` and
``size`` set to the fetch depth (see :func:`fetch_size`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from opensearch_ltr.errors import RescoreRequestError
from opensearch_ltr.response import HIT_FIELDS

MAX_RESULT_WINDOW = 10_000
"""Default of OpenSearch's ``index.max_result_window`` (and so of ``index.max_rescore_window``)."""
DEFAULT_SIZE = 10


def _is_score_sort(sort: Any) -> bool:
    """True for a sort OpenSearch treats as no sort: none, or one ``_score`` descending (the
    order in any case); a list of two entries or more is a sort, even of ``_score`` twice."""
    items = sort if isinstance(sort, list) else [sort]
    if len(items) != 1:
        return not items
    item = items[0]
    if item == "_score":
        return True
    if isinstance(item, Mapping) and list(item) == ["_score"]:
        order = item["_score"]
        order = order.get("order", "desc") if isinstance(order, Mapping) else order
        return isinstance(order, str) and order.lower() == "desc"
    return False


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
    """Reject client arguments that conflict with rescoring, given as keywords or in
    ``params`` (the query string, which OpenSearch reads over the body)."""
    if "body" in search_kwargs:
        raise RescoreRequestError("pass 'body' as the rescorer's own argument")
    params = search_kwargs.get("params")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise RescoreRequestError(f"params must be a mapping, got {type(params).__name__}")
    for where, given in (("an argument", search_kwargs), ("params", params)):
        if given.get("scroll") is not None:
            raise RescoreRequestError("using [rescore] is not allowed in a scroll context")
        for name in ("from", "from_", "size"):
            if name in given:
                raise RescoreRequestError(
                    f"pass {name.rstrip('_')!r} as the rescorer's own argument, not in {where}: "
                    "the query string's would replace the page and the first pass's depth"
                )
        if given.get("q") is not None:
            raise RescoreRequestError(
                f"q (in {where}) replaces the body's query, which rescoring reads; "
                "put the query in the body"
            )
        if given.get("sort") is not None and not _is_score_sort_param(given["sort"]):
            raise RescoreRequestError("Cannot use [sort] option in conjunction with [rescore].")


def _is_score_sort_param(sort: Any) -> bool:
    """True for a query-string sort (``field:order``, comma-separated or listed) that is one
    ``_score`` descending."""
    items = sort.split(",") if isinstance(sort, str) else sort
    if not isinstance(items, Sequence) or isinstance(items, str | bytes) or len(items) != 1:
        return False
    item = items[0]
    return isinstance(item, str) and item.strip().lower() in ("_score", "_score:desc")


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
    """The page asked for: the arguments, else the body's ``from``/``size``, else 0 and 10.

    Each is read as OpenSearch reads it: an integer, a float with no fraction, or a string
    of digits; anything else, or a negative value, is a :class:`RescoreRequestError`.
    """
    resolved = []
    for name, given, default in (("from", from_, 0), ("size", size, DEFAULT_SIZE)):
        argument = None if given is None else _page_number(name, given)
        in_body = None if body.get(name) is None else _page_number(name, body[name])
        if argument is not None and in_body is not None and argument != in_body:
            raise RescoreRequestError(
                f"[{name}] is {argument} as an argument but {in_body} in the body"
            )
        resolved.append(next(v for v in (argument, in_body, default) if v is not None))
    return resolved[0], resolved[1]


def _page_number(name: str, value: Any) -> int:
    """``value`` of ``from`` or ``size`` as a non-negative int (see :func:`resolve_page`)."""
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )
    digits = isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value) is not None
    if not (whole or digits):
        raise RescoreRequestError(f"[{name}] must be an integer, got {value!r}")
    number = int(value)
    if number < 0:
        raise RescoreRequestError(f"[{name}] parameter cannot be negative, got {number}")
    return number


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


def check_page(from_: int, size: int) -> None:
    """Reject a page OpenSearch would reject: ``from_`` and ``size`` are ints >= 0."""
    for name, value in (("from", from_), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"[{name}] must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"[{name}] parameter cannot be negative, got {value}")


def fetch_size(window_size: int, from_: int, size: int) -> int:
    """First-pass hits a page needs: ``window_size + from_ + size``, or 0 when ``size`` is 0."""
    check_page(from_, size)
    return window_size + from_ + size if size else 0
