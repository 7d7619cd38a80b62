"""OpenSearch's query-rescorer arithmetic, and pages that never overlap or skip a hit.

The arithmetic is that of ``org.opensearch.search.rescore.QueryRescorer``, in Java ``float``
(IEEE single precision), so results equal the cluster's to the bit:

- a hit in the window that the rescore query matches scores
  ``mode(first * query_weight, second * rescore_query_weight)``, ``mode`` being ``total``
  (sum), ``multiply``, ``avg``, ``max`` or ``min``;
- a hit in the window that the rescore query does not match, and every hit past the window,
  scores ``first * query_weight`` (whatever the mode);
- all hits are sorted by final score, descending; equal scores keep first-pass order.

The window here is the top ``window_size`` hits of the merged first pass. OpenSearch applies
``window_size`` per shard instead (up to ``window_size`` x shards hits are rescored).

A cluster orders equal final scores by shard and document, not by first-pass position, so it
agrees with :func:`rescore` only where hits tie in their first-pass scores too.
:func:`break_ties` removes the ties that the settings make systematic (``query_weight`` 0,
equal engine values) before either one combines the scores.

Pages: a page ``[from_, from_ + size)`` is cut from the rescore of the first
``window_size + from_ + size`` first-pass hits (:func:`fetch_size`). Hits deeper than that
score at most ``first * query_weight`` of the ``from_ + size`` past-the-window hits fetched
above them (``query_weight >= 0``), so they cannot reach the page: every page is a slice of
one order over all hits, and no hit appears on two pages or on none. (OpenSearch fetches
``max(window_size, from_ + size)`` per shard, which can break that when the rescore lowers
window hits below hits past the window.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal, TypeVar, get_args

import numpy as np

from opensearch_ltr.errors import RescoreRequestError

ScoreMode = Literal["total", "multiply", "avg", "max", "min"]
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)
DEFAULT_WINDOW_SIZE = 10
"""OpenSearch's default ``window_size``."""
MAX_VANISHING_EXPONENT = 100
"""``query_weight`` 0 is replaced by ``2**-k`` with ``k`` at most this (see :func:`break_ties`)."""

T = TypeVar("T")

_COMBINE: dict[str, Callable[[np.float32, np.float32], np.float32]] = {
    "total": lambda primary, secondary: primary + secondary,
    "multiply": lambda primary, secondary: primary * secondary,
    "avg": lambda primary, secondary: (primary + secondary) / np.float32(2),
    "max": max,
    "min": min,
}


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest Java ``float``, as OpenSearch parses it."""
    return float(np.float32(value))


def as_printed(value: float) -> float:
    """A float score as a cluster's JSON shows it: the shortest decimal of its Java ``float``."""
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class RescoreSpec:
    """The parameters of an OpenSearch query rescorer, with OpenSearch's defaults.

    Weights must be finite and non-negative (Lucene scores are never negative).
    """

    window_size: int = DEFAULT_WINDOW_SIZE
    query_weight: float = 1.0
    rescore_query_weight: float = 1.0
    score_mode: ScoreMode = "total"

    def __post_init__(self) -> None:
        if isinstance(self.window_size, bool) or not isinstance(self.window_size, int):
            raise TypeError(f"window_size must be an int, got {self.window_size!r}")
        if self.window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {self.window_size}")
        for name in ("query_weight", "rescore_query_weight"):
            value = getattr(self, name)
            with np.errstate(over="ignore"):
                as_float = np.float32(value)
            if not math.isfinite(value) or value < 0 or not np.isfinite(as_float):
                raise ValueError(
                    f"{name} must be finite and non-negative (as a Java float), got {value}"
                )
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")

    def combine(self, first: float, second: float | None) -> float:
        """Final score of a hit: ``second`` is its rescore-query score, ``None`` if unmatched."""
        primary = np.float32(first) * np.float32(self.query_weight)
        if second is None:
            return float(primary)
        secondary = np.float32(second) * np.float32(self.rescore_query_weight)
        return float(_COMBINE[self.score_mode](primary, secondary))


@dataclass(frozen=True)
class RescoredHit:
    """One hit after rescoring; ``position`` is its index in the first-pass list."""

    position: int
    score: float
    first_pass_score: float
    second_score: float | None
    in_window: bool


def rescore(
    first_pass: Sequence[float], second: Sequence[float | None], spec: RescoreSpec
) -> list[RescoredHit]:
    """Rescore hits given in first-pass order and sort them by final score.

    ``second[i]`` is the rescore-query score of first-pass hit ``i`` for each hit of the
    window (the first ``min(window_size, len(first_pass))`` hits), ``None`` where the rescore
    query does not match it. Equal final scores keep first-pass order.
    """
    window = min(spec.window_size, len(first_pass))
    if len(second) != window:
        raise ValueError(
            f"expected {window} rescore scores (one per window hit), got {len(second)}"
        )
    values = [float(v) for v in first_pass]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("first-pass scores must be finite")
    if any(a < b for a, b in pairwise(values)):
        raise ValueError("first-pass scores must not increase: pass hits in first-pass order")
    if not all(s is None or math.isfinite(s) for s in second):
        raise ValueError("rescore scores must be finite")
    hits = [
        RescoredHit(
            position=i,
            score=spec.combine(value, second[i] if i < window else None),
            first_pass_score=value,
            second_score=second[i] if i < window else None,
            in_window=i < window,
        )
        for i, value in enumerate(values)
    ]
    return sorted(hits, key=lambda hit: (-hit.score, hit.position))


def check_engine_counts(spec: RescoreSpec) -> None:
    """Refuse weights under which the engine's values cannot change the ranking.

    ``rescore_query_weight`` 0 multiplies them away; ``query_weight`` 0 with ``min`` or
    ``multiply`` scores every hit 0.
    """
    if to_float32(spec.rescore_query_weight) == 0:
        raise ValueError("rescore_query_weight must be positive: 0 throws the engine's values away")
    if to_float32(spec.query_weight) == 0 and spec.score_mode in ("min", "multiply"):
        raise ValueError(
            f"score_mode {spec.score_mode!r} with query_weight 0 scores every hit 0; "
            "set query_weight > 0, or use 'total', 'avg' or 'max'"
        )


def _distinct_values(values: Sequence[float], weight: np.float32) -> list[float]:
    """``values`` with each positive tie of ``value * weight`` lowered below the one before,
    or level with it where that one is the smallest positive float32 (none is below it)."""
    result = [float(np.float32(v)) for v in values]
    if not weight > 0:
        return result
    zero = np.float32(0)
    terms = [np.float32(v) * weight for v in values]
    above: np.float32 | None = None
    with np.errstate(over="ignore", under="ignore"):
        for i in sorted(range(len(values)), key=lambda i: (-terms[i], i)):
            value = np.float32(values[i])
            # the highest term this one may have: the float below ``above``, else ``above``
            limit = None if above is None else np.nextafter(above, zero) or above
            while limit is not None and value > 0 and value * weight > limit:
                # Near the value whose term is ``limit``, then step by step.
                value = min(np.nextafter(value, zero), np.float32(limit / weight))
            result[i] = float(value)
            above = value * weight
    return result


def break_ties(
    spec: RescoreSpec, first_pass: Sequence[float], values: Sequence[float]
) -> tuple[RescoreSpec, list[float]]:
    """The spec and window values to combine, so that a cluster orders hits as :func:`rescore`.

    ``first_pass`` and ``values`` are the window hits' first-pass scores and rescore values.
    Two settings would make hits tie whose first-pass scores do not (a cluster then orders
    them by shard and document):

    - equal positive terms ``value * rescore_query_weight``: each later one, in first-pass
      order, is lowered by the fewest float steps that put its term below the one before
      (a term at the smallest positive float32 has none below it: those stay tied);
    - ``query_weight`` 0, which scores every hit past the window 0: it becomes ``2**-k``, the
      largest power of two up to 1 at which the window's highest first-pass score times
      ``2**-k`` is below a quarter float step of every nonzero term. Window hits with a
      nonzero term keep their ``query_weight`` 0 scores; hits past the window score
      ``first_pass * 2**-k``: in first-pass order and below every positive term. Under
      ``avg``, which halves a window hit's ``first_pass * 2**-k`` but not a past hit's, a
      window value of 0 is raised to the least value whose term is the highest first-pass
      score times ``2**-k``, so that it stays above every hit past the window (and below
      every positive term).

    Values of 0 cannot be lowered: with ``min`` or ``multiply``, window hits of value 0 (the
    bottom of a ``minmax`` window) all score 0, and a cluster may list them in another order.

    :raises RescoreRequestError: ``query_weight`` is 0 and first-pass scores are so large that
        ``k`` would exceed :data:`MAX_VANISHING_EXPONENT`.
    """
    if len(first_pass) != len(values):
        raise ValueError(f"{len(first_pass)} first-pass scores but {len(values)} values")
    weight = np.float32(spec.rescore_query_weight)
    distinct = _distinct_values(values, weight)
    if np.float32(spec.query_weight) > 0:
        return spec, distinct
    terms = [abs(np.float32(value) * weight) for value in distinct]
    highest = max((to_float32(first) for first in first_pass), default=0.0)
    exponent = 0
    if highest > 0 and any(terms):
        top = math.frexp(highest)[1]  # every first-pass score is below 2**top
        step = min(math.frexp(float(np.spacing(t)))[1] - 1 for t in terms if t)  # 2**step
        exponent = max(top - step + 2, 0)
        if exponent > MAX_VANISHING_EXPONENT:
            raise RescoreRequestError(
                f"query_weight 0 cannot keep first-pass scores up to {highest:g} below the "
                "engine's values; set query_weight > 0"
            )
    vanishing = replace(spec, query_weight=2.0**-exponent)
    if spec.score_mode == "avg" and highest > 0 and weight > 0:
        distinct = _raise_zeros(distinct, np.float32(highest) * np.float32(2.0**-exponent), weight)
    return vanishing, distinct


def _raise_zeros(values: Sequence[float], floor: np.float32, weight: np.float32) -> list[float]:
    """``values`` with each 0 raised to the least float32 whose term ``value * weight`` is at
    least ``floor``."""
    with np.errstate(over="ignore", under="ignore"):
        least = np.float32(floor / weight)
        while least * weight < floor:
            least = np.nextafter(least, np.float32(np.inf))
    return [float(least) if value == 0 else value for value in values]


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


def page(ranked: Sequence[T], from_: int, size: int) -> list[T]:
    """The page ``[from_, from_ + size)`` of ``ranked``."""
    check_page(from_, size)
    return list(ranked[from_ : from_ + size])
