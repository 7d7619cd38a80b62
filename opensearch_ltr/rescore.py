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
:func:`break_ties` removes such ties (those the settings make systematic, ``query_weight``
0 and equal engine values, and any other) before either one combines the scores.

Pages: a page ``[from_, from_ + size)`` is cut from the rescore of the first
``window_size + from_ + size`` first-pass hits (:func:`opensearch_ltr.request.fetch_size`).
Hits deeper than that score at most ``first * query_weight`` of the ``from_ + size``
past-the-window hits fetched above them (``query_weight >= 0``), so they cannot reach the
page: every page is a slice of one order over all hits, and no hit appears on two pages or
on none. (OpenSearch fetches
``max(window_size, from_ + size)`` per shard, which can break that when the rescore lowers
window hits below hits past the window.)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal, get_args

import numpy as np

from opensearch_ltr.errors import RescoreRequestError

ScoreMode = Literal["total", "multiply", "avg", "max", "min"]
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)
DEFAULT_WINDOW_SIZE = 10
"""OpenSearch's default ``window_size``."""
MAX_VANISHING_EXPONENT = 100
"""``query_weight`` 0 is replaced by ``2**-k`` with ``k`` at most this (see :func:`break_ties`)."""


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


def break_ties(
    spec: RescoreSpec, first_pass: Sequence[float], values: Sequence[float]
) -> tuple[RescoreSpec, list[float]]:
    """The spec and window values to combine, so that a cluster orders hits as :func:`rescore`.

    ``first_pass`` are the first-pass scores of the hits fetched, in first-pass order, and
    ``values`` the rescore values of the first ``len(values)`` of them (the window). Hits
    whose first-pass scores differ must not tie in their final scores, or a cluster orders
    them by shard and document, where :func:`rescore` keeps first-pass order:

    - ``query_weight`` 0, which scores every hit past the window 0, becomes ``2**-k``, the
      largest power of two up to 1 at which the window's highest first-pass score times
      ``2**-k`` is below a quarter float step of every nonzero term ``value *
      rescore_query_weight``. Window hits with a nonzero term keep their ``query_weight`` 0
      scores; hits past the window score ``first_pass * 2**-k``: in first-pass order and
      below every positive term. Under ``avg``, which halves a window hit's ``first_pass *
      2**-k`` but not a past hit's, a window value of 0 is raised to the least value whose
      term is the highest first-pass score times ``2**-k``, so that it stays above every hit
      past the window (and below every positive term).
    - Then every final score a window hit shares with a hit of another first-pass score
      (equal values under ``query_weight`` 0, or ``2.0 + 0.5`` and ``1.5 + 1.0``) is undone
      in :func:`rescore`'s order: from the bottom up, such a hit's value is raised to the
      least one that scores it above the hit below it, short of the next higher score. Where
      none does, it is lowered instead, to the largest value (not below 0) that scores it
      below the hit above it.

    Hits that tie in the first pass too may still tie: a cluster lists them in first-pass
    order as well. Other ties remain only where float32 has no score between two hits
    (with a weight so small that scores reach the smallest positive float32, about
    1.4e-45), or where a value cannot move its hit's score (``multiply`` with a first-pass
    score of 0).

    :raises RescoreRequestError: ``query_weight`` is 0 and first-pass scores are so large that
        ``k`` would exceed :data:`MAX_VANISHING_EXPONENT`.
    """
    if len(first_pass) < len(values):
        raise ValueError(f"{len(first_pass)} first-pass scores but {len(values)} values")
    spec, window = _vanishing(spec, first_pass[: len(values)], values)
    return spec, _apart(spec, first_pass, window)


def _vanishing(
    spec: RescoreSpec, first_pass: Sequence[float], values: Sequence[float]
) -> tuple[RescoreSpec, list[float]]:
    """``query_weight`` 0 as ``2**-k`` (see :func:`break_ties`), with the window's values;
    ``first_pass`` are the window hits' first-pass scores."""
    weight = np.float32(spec.rescore_query_weight)
    window = [float(np.float32(value)) for value in values]
    if np.float32(spec.query_weight) > 0:
        return spec, window
    terms = [abs(np.float32(value) * weight) for value in window]
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
        window = _raise_zeros(window, np.float32(highest) * np.float32(2.0**-exponent), weight)
    return vanishing, window


def _apart(spec: RescoreSpec, first_pass: Sequence[float], values: Sequence[float]) -> list[float]:
    """``values`` with the ties of final scores that involve a window hit undone (see
    :func:`break_ties`)."""
    window = len(values)
    result = list(values)

    def final(i: int) -> float:
        return spec.combine(first_pass[i], result[i] if i < window else None)

    def apart(i: int, j: int | None) -> bool:
        # hits tied in the first pass too are listed alike by a cluster and by rescore
        return j is not None and final(i) == final(j) and first_pass[i] != first_pass[j]

    # From the bottom of rescore's order up, raise each window hit that does not score
    # above the hit below it, short of the first score above its own (hits tied with it
    # higher up are raised in turn: window hits, since ties list them first).
    order = sorted(range(len(first_pass)), key=lambda i: (final(i), -i))
    given = [final(i) for i in order]
    for k in range(1, len(order)):
        below, i = order[k - 1], order[k]
        if i >= window or final(i) > final(below):
            continue
        if final(i) == final(below) and first_pass[i] == first_pass[below]:
            continue
        raised = _moved_past(spec, first_pass[i], result[i], final(below), up=True)
        ceiling = next((score for score in given[k + 1 :] if score > given[k]), math.inf)
        if raised is not None and spec.combine(first_pass[i], raised) < ceiling:
            result[i] = raised
    # What is still tied (no value in reach above) is lowered, from the top down; equal
    # scores pop hits past the window (fixed) first, then window hits by position.
    queue = [(-final(i), i < window, i) for i in range(len(first_pass))]
    heapq.heapify(queue)
    above: int | None = None
    while queue:
        _, in_window, i = heapq.heappop(queue)
        if in_window and apart(i, above):
            assert above is not None
            lowered = _moved_past(spec, first_pass[i], result[i], final(above), up=False)
            if lowered is not None:
                result[i] = lowered
                heapq.heappush(queue, (-final(i), True, i))
                continue
        above = i
    return result


def _moved_past(
    spec: RescoreSpec, first: float, value: float, bound: float, *, up: bool
) -> float | None:
    """The float32 nearest ``value`` with which a hit of first-pass score ``first`` scores
    above ``bound`` (``up``) or below it, lowering no value past 0; ``None`` if none does.

    Final scores do not decrease as values rise (weights and first-pass scores are
    non-negative), so it is found by bisection over the float32s in order.
    """
    largest = float(np.finfo(np.float32).max)
    # ordinals low and high bracket it: low's score is not past the bound, high's is
    if up:
        low, high = _ordinal(value), _ordinal(largest)
    else:
        low, high = _ordinal(0.0 if value >= 0 else -largest), _ordinal(value)

    def past(ordinal: int) -> bool:
        score = spec.combine(first, _from_ordinal(ordinal))
        return score > bound if up else score >= bound

    with np.errstate(over="ignore"):
        if low >= high or past(low) or not past(high):
            return None
        while high - low > 1:
            middle = (low + high) // 2
            if past(middle):
                high = middle
            else:
                low = middle
    return _from_ordinal(high if up else low)


def _ordinal(value: float) -> int:
    """An integer for each float32, in the floats' order (``-0.0`` and ``0.0`` are both 0)."""
    bits = int(np.array(value, dtype=np.float32).view(np.int32))
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF)


def _from_ordinal(ordinal: int) -> float:
    """The float32 of :func:`_ordinal` ``ordinal``."""
    bits = ordinal if ordinal >= 0 else (-ordinal) | 0x80000000
    return float(np.array(bits, dtype=np.uint32).view(np.float32))


def _raise_zeros(values: Sequence[float], floor: np.float32, weight: np.float32) -> list[float]:
    """``values`` with each 0 raised to the least float32 whose term ``value * weight`` is at
    least ``floor``; :class:`RescoreRequestError` where that is beyond float32's range."""
    if 0 not in values:
        return list(values)
    with np.errstate(over="ignore", under="ignore"):
        least = np.float32(floor / weight)
        while least * weight < floor:
            least = np.nextafter(least, np.float32(np.inf))
    if not np.isfinite(least):
        raise RescoreRequestError(
            f"rescore_query_weight {float(weight):g} is too small for score_mode avg: a window "
            f"value of 0 would need a value beyond float32's range to stay above the hits past "
            "the window; raise it, or set query_weight > 0"
        )
    return [float(least) if value == 0 else value for value in values]
