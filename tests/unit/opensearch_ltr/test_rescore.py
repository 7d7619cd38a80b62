"""OpenSearch's query-rescorer arithmetic: score modes, windows, order and pages."""

from __future__ import annotations

import math
from itertools import pairwise
from random import Random

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opensearch_ltr.errors import RescoreRequestError
from opensearch_ltr.request import check_page, fetch_size
from opensearch_ltr.rescore import (
    MAX_VANISHING_EXPONENT,
    SCORE_MODES,
    RescoredHit,
    RescoreSpec,
    break_ties,
    check_engine_counts,
    rescore,
    to_float32,
)


def f32(value: str | float) -> float:
    return float(np.float32(value))


# Scores a cluster returned for a hit with first-pass score 0.23430327, rescored by a
# constant_score query with boost 5, query_weight 0.5 and rescore_query_weight 2.
CLUSTER_SCORES = {
    "total": "10.117151",
    "multiply": "1.1715163",
    "avg": "5.0585756",
    "max": "10.0",
    "min": "0.11715163",
}


@pytest.mark.parametrize("mode", SCORE_MODES)
def test_combine_matches_the_cluster(mode: str) -> None:
    spec = RescoreSpec(2, 0.5, 2.0, mode)  # type: ignore[arg-type]
    assert spec.combine(0.23430327, 5.0) == f32(CLUSTER_SCORES[mode])


def test_combine_is_single_precision() -> None:
    total = RescoreSpec().combine(0.1, 0.2)
    assert total == float(np.float32(0.1) + np.float32(0.2))
    assert total != 0.1 + 0.2
    assert RescoreSpec(score_mode="avg").combine(1.0, 2.0) == 1.5


@pytest.mark.parametrize("mode", SCORE_MODES)
def test_unmatched_and_past_window_hits_keep_weighted_first_pass(mode: str) -> None:
    spec = RescoreSpec(2, 0.5, 3.0, mode)  # type: ignore[arg-type]
    ranked = rescore([8.0, 6.0, 4.0], [None, 1.0], spec)
    by_position = {hit.position: hit for hit in ranked}
    assert by_position[0].score == 4.0  # in the window, not matched: 8 * 0.5 whatever the mode
    assert by_position[2].score == 2.0  # past the window: 4 * 0.5
    assert by_position[1].score == spec.combine(6.0, 1.0)
    assert [h.in_window for h in (by_position[0], by_position[1], by_position[2])] == [
        True,
        True,
        False,
    ]
    assert by_position[2].second_score is None
    assert by_position[0].second_score is None


def test_rescore_reorders_and_breaks_ties_by_first_pass_position() -> None:
    spec = RescoreSpec(window_size=3, query_weight=0.0)
    ranked = rescore([5.0, 4.0, 3.0, 2.0, 1.0], [0.2, 0.9, 0.2], spec)
    assert [h.position for h in ranked] == [1, 0, 2, 3, 4]
    assert [h.score for h in ranked] == [f32(0.9), f32(0.2), f32(0.2), 0.0, 0.0]
    assert [h.first_pass_score for h in ranked] == [4.0, 5.0, 3.0, 2.0, 1.0]


def test_window_larger_than_the_hits() -> None:
    ranked = rescore([3.0, 1.0], [0.0, 10.0], RescoreSpec(window_size=10))
    assert [(h.position, h.score) for h in ranked] == [(1, 11.0), (0, 3.0)]
    assert rescore([], [], RescoreSpec()) == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"window_size": 0}, ValueError),
        ({"window_size": 2.0}, TypeError),
        ({"window_size": True}, TypeError),
        ({"query_weight": -1.0}, ValueError),
        ({"rescore_query_weight": float("nan")}, ValueError),
        ({"query_weight": float("inf")}, ValueError),
        ({"rescore_query_weight": 1e39}, ValueError),  # infinite as a Java float
        ({"score_mode": "sum"}, ValueError),
    ],
)
def test_spec_validation(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RescoreSpec(**kwargs)  # type: ignore[arg-type]


def test_rescore_validation() -> None:
    spec = RescoreSpec(window_size=2)
    with pytest.raises(ValueError, match="expected 2 rescore scores"):
        rescore([3.0, 2.0, 1.0], [1.0], spec)
    with pytest.raises(ValueError, match="must not increase"):
        rescore([1.0, 2.0], [1.0, 1.0], spec)
    with pytest.raises(ValueError, match="finite"):
        rescore([float("nan"), 1.0], [1.0, 1.0], spec)
    with pytest.raises(ValueError, match="finite"):
        rescore([2.0, 1.0], [float("inf"), 1.0], spec)


def test_pages_and_fetch_size() -> None:
    assert fetch_size(10, 0, 10) == 20
    assert fetch_size(10, 30, 5) == 45
    assert fetch_size(10, 30, 0) == 0
    for bad in ((-1, 10), (0, -1)):
        with pytest.raises(ValueError, match="cannot be negative"):
            check_page(*bad)
    with pytest.raises(TypeError, match=r"\[size\] must be an int, got 1.5"):
        check_page(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\[size\] must be an int, got True"):
        check_page(0, True)
    with pytest.raises(TypeError, match=r"\[from\] must be an int, got 2.0"):
        fetch_size(10, 2.0, 5)  # type: ignore[arg-type]


def test_to_float32_rounds_to_the_nearest_float32() -> None:
    assert to_float32(0.1) == 0.100000001490116119384765625  # float32's 0x3DCCCCCD
    assert to_float32(16777217) == 16777216.0  # 2**24 + 1 has no float32
    assert to_float32(0.5) == 0.5
    assert to_float32(to_float32(0.3)) == to_float32(0.3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_weight": 0.0, "score_mode": "min"}, "'min' with query_weight 0"),
        ({"query_weight": 0.0, "score_mode": "multiply"}, "'multiply' with query_weight 0"),
        ({"query_weight": 1e-50, "score_mode": "multiply"}, "query_weight 0"),  # 0 as a float
        ({"query_weight": 1.0, "rescore_query_weight": 0.0}, "rescore_query_weight"),
    ],
)
def test_weights_that_throw_the_engine_away_are_refused(
    kwargs: dict[str, object], message: str
) -> None:
    spec = RescoreSpec(window_size=2, **kwargs)  # type: ignore[arg-type]
    # What it would do: the same result whatever the engine said.
    one, other = (
        [(h.position, h.score) for h in rescore([3.0, 2.0, 1.0], values, spec)]
        for values in ([1.0, 0.5], [0.5, 1.0])
    )
    assert one == other
    with pytest.raises(ValueError, match=message):
        check_engine_counts(spec)
    for mode in ("total", "avg", "max"):
        check_engine_counts(RescoreSpec(query_weight=0.0, score_mode=mode))  # type: ignore[arg-type]
    check_engine_counts(RescoreSpec(query_weight=0.5, score_mode="multiply"))


def test_query_weight_zero_keeps_the_window_and_orders_the_rest_by_first_pass() -> None:
    spec = RescoreSpec(window_size=3, query_weight=0.0)
    first = [5.0, 4.0, 3.0, 2.0, 1.0]
    values = [f32(0.2), f32(0.9), 0.0]
    plain = rescore(first, values, spec)
    # Unbroken, the last window hit and every hit past the window tie at 0.
    assert [h.score for h in plain][2:] == [0.0, 0.0, 0.0]
    tied_spec, tied_values = break_ties(spec, first[:3], values)
    ranked = rescore(first, tied_values, tied_spec)
    weight = tied_spec.query_weight
    assert math.frexp(weight)[0] == 0.5  # a power of two
    assert 0 < weight < 1
    assert tied_values == values
    assert [h.position for h in ranked] == [h.position for h in plain] == [1, 0, 2, 3, 4]
    assert [h.score for h in ranked][:2] == [f32(0.9), f32(0.2)]  # as with query_weight 0
    assert [h.score for h in ranked][2:] == [3.0 * weight, 2.0 * weight, 1.0 * weight]


@pytest.mark.parametrize("weight", [1.0, 0.3, 3.0])
def test_avg_with_query_weight_zero_keeps_a_zero_valued_window_hit_above_the_rest(
    weight: float,
) -> None:
    # The bottom of a minmax window has value 0; avg halves its first-pass term, not the
    # terms of hits past the window, which would all pass it.
    spec = RescoreSpec(
        window_size=3, query_weight=0.0, rescore_query_weight=weight, score_mode="avg"
    )
    first = [10.0, 9.9, 9.8, 9.7, 9.6]
    values = [1.0, 0.5, 0.0]
    exact = [h.position for h in rescore(first, values, spec)]
    assert exact == [0, 1, 2, 3, 4]
    tied_spec, tied_values = break_ties(spec, first[:3], values)
    assert tied_values[:2] == values[:2]
    assert 0 < tied_values[2] * weight < 0.5 * weight
    ranked = rescore(first, tied_values, tied_spec)
    assert [h.position for h in ranked] == exact
    assert all(h.score > 0 for h in ranked)


def test_break_ties_raises_tied_hits_by_float_steps_in_first_pass_order() -> None:
    spec = RescoreSpec(window_size=4, query_weight=0.5, rescore_query_weight=1.3, score_mode="min")
    values = [0.5, 0.25, 0.5, 0.5]
    tied_spec, tied_values = break_ties(spec, [9.0, 8.0, 7.0, 6.0], values)
    assert tied_spec == spec
    weight = np.float32(1.3)
    terms = [np.float32(v) * weight for v in tied_values]
    # the last of the three tied hits keeps its value; each one above it steps up past it
    assert (tied_values[1], tied_values[3]) == (0.25, 0.5)
    assert terms[0] > terms[2] > terms[3] == np.float32(0.5) * weight > terms[1]
    assert 0 < tied_values[0] - 0.5 < 1e-6
    assert 0 < tied_values[2] - 0.5 < tied_values[0] - 0.5
    assert np.nextafter(np.float32(tied_values[2]), np.float32(0)) * weight <= terms[3]
    # Zero values cannot go lower, but the one above can step up from 0.
    raised = break_ties(spec, [2.0, 1.0], [0.0, 0.0])[1]
    assert raised == [float(np.nextafter(np.float32(0), np.float32(1))), 0.0]
    # Values cover the window: the first hits fetched; those past it have no value.
    hits = break_ties(spec, [2.0, 1.0], [0.0])
    assert hits == (spec, [0.0])
    with pytest.raises(ValueError, match="1 first-pass scores but 2 values"):
        break_ties(spec, [2.0], [0.0, 0.0])


def test_break_ties_raises_a_window_hit_tied_with_a_hit_of_another_first_pass_score() -> None:
    # 2.0 + 0.5 and 1.5 + 1.0: a cluster would order the tie by shard and document.
    spec = RescoreSpec(window_size=2)
    tied_spec, tied_values = break_ties(spec, [2.0, 1.5, 0.1], [0.5, 1.0])
    ranked = rescore([2.0, 1.5, 0.1], tied_values, tied_spec)
    assert [hit.position for hit in ranked] == [0, 1, 2]  # as rescore orders the tie
    assert ranked[0].score == float(np.nextafter(np.float32(2.5), np.float32(3)))
    assert tied_values[1] == 1.0
    lower = float(np.nextafter(np.float32(tied_values[0]), np.float32(0)))
    assert spec.combine(2.0, lower) == 2.5 < spec.combine(2.0, tied_values[0])  # the least
    # min: the window hit ties the first hit past the window (2.0 = 2.0 * 1.0); it stays above
    spec = RescoreSpec(window_size=2, score_mode="min")
    first = [3.0, 2.5, 2.0, 1.0]
    tied_spec, tied_values = break_ties(spec, first, [2.5, 2.0])
    ranked = rescore(first, tied_values, tied_spec)
    assert [hit.position for hit in ranked] == [0, 1, 2, 3]
    assert ranked[1].score > ranked[2].score == 2.0
    # hits tied in the first pass too stay tied: a cluster lists them in first-pass order
    assert break_ties(spec, [2.0, 2.0], [1.0, 1.0])[1] == [1.0, 1.0]


def test_vanishing_weight_is_bounded() -> None:
    spec = RescoreSpec(window_size=2, query_weight=0.0)
    large = break_ties(spec, [2.0**70, 1.0], [0.0, 1 / 3])[0]
    assert 2.0**-MAX_VANISHING_EXPONENT <= large.query_weight < 2.0**-90
    assert [h.position for h in rescore([2.0**70, 1.0], [0.0, 1 / 3], large)] == [1, 0]
    # Scores too large for 2**-100 to take them below the engine's values: not silently
    # ranked by the first pass, refused.
    with pytest.raises(RescoreRequestError, match="set query_weight > 0"):
        break_ties(spec, [1e30, 1.0], [1e-30, 0.0])
    with pytest.raises(RescoreRequestError, match="query_weight 0"):
        break_ties(spec, [3e30, 2e30], [1 / 3, 2 / 3])
    assert MAX_VANISHING_EXPONENT == 100
    assert break_ties(spec, [1e-30, 1e-31], [1.0, 0.5])[0].query_weight == 1.0
    assert break_ties(spec, [0.0, 0.0], [1.0, 0.5])[0].query_weight == 1.0


# Property tests ------------------------------------------------------------------------------

# No subnormals: a tie at the smallest positive float32 cannot be lowered without reaching 0,
# and values of 0 cannot be lowered at all (see break_ties).
scores = st.floats(min_value=0.0, max_value=50.0, allow_nan=False, allow_subnormal=False, width=32)
weights = st.floats(min_value=0.0, max_value=4.0, allow_nan=False, width=32)
specs = st.builds(
    RescoreSpec,
    window_size=st.integers(1, 12),
    query_weight=weights,
    rescore_query_weight=weights,
    score_mode=st.sampled_from(SCORE_MODES),
)


@st.composite
def searches(draw: st.DrawFn) -> tuple[list[float], list[float | None], RescoreSpec]:
    """A first pass (non-increasing scores, ties likely), window rescore scores, a spec."""
    spec = draw(specs)
    first = sorted(draw(st.lists(st.sampled_from([0.0, 1.0, 2.5]) | scores, max_size=30)))[::-1]
    window = min(spec.window_size, len(first))
    second = draw(st.lists(st.none() | scores, min_size=window, max_size=window))
    return first, second, spec


@given(searches())
@settings(max_examples=300, deadline=None)
def test_rescore_is_a_sorted_permutation_with_opensearch_scores(
    search: tuple[list[float], list[float | None], RescoreSpec],
) -> None:
    first, second, spec = search
    ranked = rescore(first, second, spec)
    assert sorted(h.position for h in ranked) == list(range(len(first)))
    for above, below in pairwise(ranked):
        assert (above.score, -above.position) > (below.score, -below.position)
    for hit in ranked:
        matched = hit.position < len(second) and second[hit.position] is not None
        primary = np.float32(first[hit.position]) * np.float32(spec.query_weight)
        if not matched:
            assert hit.score == float(primary)
            continue
        secondary = np.float32(second[hit.position]) * np.float32(spec.rescore_query_weight)
        expected = {
            "total": primary + secondary,
            "multiply": primary * secondary,
            "avg": (primary + secondary) / np.float32(2),
            "max": max(primary, secondary),
            "min": min(primary, secondary),
        }[spec.score_mode]
        assert hit.score == float(expected)


@given(searches(), st.integers(1, 7))
@settings(max_examples=300, deadline=None)
def test_pages_cover_every_hit_exactly_once(
    search: tuple[list[float], list[float | None], RescoreSpec], size: int
) -> None:
    """Each page rescored from its own fetch depth is a slice of the one full order."""
    first, second, spec = search
    full = [h.position for h in rescore(first, second, spec)]
    shown: list[int] = []
    for start in range(0, len(first) + size, size):
        depth = fetch_size(spec.window_size, start, size)
        fetched = first[:depth]
        window = min(spec.window_size, len(fetched))
        ranked = rescore(fetched, second[:window], spec)
        shown += [h.position for h in ranked[start : start + size]]
    assert shown == full


@given(searches())
@settings(max_examples=200, deadline=None)
def test_pure_rerank_keeps_the_window_on_top(
    search: tuple[list[float], list[float | None], RescoreSpec],
) -> None:
    """query_weight 0 with positive engine values: window first, in value order."""
    first, _, spec = search
    window = min(spec.window_size, len(first))
    values = [float(window - i) for i in range(window)][::-1]  # the last window hit is best
    pure = RescoreSpec(spec.window_size, 0.0, 1.0, "total")
    ranked = rescore(first, values, pure)
    assert [h.position for h in ranked] == [*reversed(range(window)), *range(window, len(first))]


def test_fetching_only_max_window_from_size_would_repeat_hits() -> None:
    """Why pages fetch window_size + from + size: OpenSearch's own depth can repeat hits."""
    first, second = [5.0, 4.0, 3.0, 2.0], [0.01, 0.01]
    spec = RescoreSpec(2, 1.0, 1.0, "multiply")
    shallow = [
        h.position
        for start in (0, 2)
        for h in rescore(first[: max(2, start + 2)], second, spec)[start : start + 2]
    ]
    deep = [
        h.position
        for start in (0, 2)
        for h in rescore(first[: fetch_size(2, start, 2)], second, spec)[start : start + 2]
    ]
    assert shallow == [0, 1, 0, 1]
    assert deep == [h.position for h in rescore(first, second, spec)] == [2, 3, 0, 1]


def cluster_keys(first: list[float], shuffle: Random) -> list[int]:
    """A cluster's tie-break keys (shard, then document): arbitrary, but in first-pass order
    among equal first-pass scores, since the first pass was sorted by the same keys."""
    keys = list(range(len(first)))
    shuffle.shuffle(keys)
    for value in set(first):
        members = [i for i, score in enumerate(first) if score == value]
        for i, key in zip(members, sorted(keys[i] for i in members), strict=True):
            keys[i] = key
    return keys


def cluster_order(ranked: list[RescoredHit], keys: list[int]) -> list[int]:
    return [h.position for h in sorted(ranked, key=lambda h: (-h.score, keys[h.position]))]


first_pass_scores = st.sampled_from([0.0, 1.0, 2.0, 2.5]) | st.floats(2**-10, 50.0, width=32)
window_values = st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(2**-10, 1.0, width=32)


@st.composite
def pure_reranks(draw: st.DrawFn) -> tuple[list[float], list[float], RescoreSpec]:
    """query_weight 0, engine values with ties, and a first pass with ties."""
    spec = RescoreSpec(
        window_size=draw(st.integers(1, 12)),
        query_weight=0.0,
        rescore_query_weight=draw(st.floats(2**-7, 4.0, width=32)),
        score_mode=draw(st.sampled_from(["total", "max", "avg"])),
    )
    first = sorted(draw(st.lists(first_pass_scores, max_size=30)))[::-1]
    window = min(spec.window_size, len(first))
    values = draw(st.lists(window_values, min_size=window, max_size=window))
    return first, values, spec


@given(pure_reranks(), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_a_cluster_orders_a_pure_rerank_as_rescore_does(
    search: tuple[list[float], list[float], RescoreSpec], shuffle: Random
) -> None:
    """Whatever the cluster's tie-break, its order is ours: window first, the rest in
    first-pass order, and every page the same (no hit twice, none lost)."""
    first, values, spec = search
    window = len(values)
    tied_spec, tied_values = break_ties(spec, first[:window], values)
    ranked = rescore(first, tied_values, tied_spec)
    assert cluster_order(ranked, cluster_keys(first, shuffle)) == [h.position for h in ranked]
    positive = [h for h in ranked if h.in_window and values[h.position]]
    assert [h.position for h in ranked[: len(positive)]] == [h.position for h in positive]
    for hit in positive:
        exact = RescoreSpec(window, 0.0, spec.rescore_query_weight, spec.score_mode)
        assert hit.score == exact.combine(hit.first_pass_score, hit.second_score)
    rest = [h.position for h in ranked[len(positive) :]]
    assert rest == sorted(rest)


@given(searches())
@example(([0.0, 0.0, 0.0], [None, 1.0, 1.0], RescoreSpec(3, 0.0, 1.401298464324817e-45, "total")))
@example(([1.0], [None], RescoreSpec(1, 0.0, 2.7465449900766415e-43, "avg")))
@example(([1.0, 1.0, 0.0], [None, None], RescoreSpec(2, 1.0, 1.0, "multiply")))
@example(([1.0, 1.0, 1.0], [1.0, 1.0], RescoreSpec(2, 1.0, 1.0, "multiply")))
@settings(max_examples=300, deadline=None)
def test_break_ties_keeps_the_order_and_leaves_no_tie_a_cluster_would_break(
    search: tuple[list[float], list[float | None], RescoreSpec],
) -> None:
    first, second, spec = search
    values = [0.0 if v is None else v for v in second]
    weight = np.float32(spec.rescore_query_weight)
    try:
        tied_spec, tied_values = break_ties(spec, first, values)
    except RescoreRequestError as exc:
        # Refused only where query_weight 0 would need 2**-k below 2**-100: first-pass
        # scores over 2**60 times the smallest positive term; or, under avg with no positive
        # term, where raising a value of 0 to the highest first-pass score leaves float32.
        terms = [np.float32(v) * weight for v in values]
        assert np.float32(spec.query_weight) == 0
        if "too small for score_mode avg" in str(exc):
            assert spec.score_mode == "avg"
            assert 0 in values
            assert not any(terms)
            assert max(first) / float(weight) > float(np.finfo(np.float32).max) / 2
            return
        assert max(first) > 2.0**60 * min(float(t) for t in terms if t > 0)
        return
    assert all(tied >= 0 for tied in tied_values)
    if np.float32(spec.query_weight) > 0:
        assert tied_spec == spec
    else:
        assert 0 < tied_spec.query_weight <= 1
    try:
        check_engine_counts(spec)
    except ValueError:
        return  # the rescorer refuses these weights: the engine's values count for nothing
    ranked = rescore(first, tied_values, tied_spec)
    smallest = float(np.nextafter(np.float32(0), np.float32(1)))
    largest = float(np.finfo(np.float32).max)
    for above, below in pairwise(ranked):
        if above.score != below.score or not (above.in_window or below.in_window):
            continue
        # a cluster lists hits tied in the first pass too as rescore does
        if above.first_pass_score == below.first_pass_score:
            continue
        # else only where float32 has no score between them, or a value moves nothing
        stuck = [
            hit
            for hit in (above, below)
            if hit.in_window
            and tied_spec.combine(hit.first_pass_score, 0.0)
            == tied_spec.combine(hit.first_pass_score, largest)
        ]
        assert stuck or above.score in (0.0, smallest), (above, below)
    normal = np.finfo(np.float32).tiny
    if all(w == 0 or w >= normal for w in (spec.query_weight, spec.rescore_query_weight)):
        exact = [hit.position for hit in rescore(first, values, spec)]
        assert [hit.position for hit in ranked] == exact
