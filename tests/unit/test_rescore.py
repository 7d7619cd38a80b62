"""OpenSearch's query-rescorer arithmetic: score modes, windows, order and pages."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensearch_ltr.rescore import (
    SCORE_MODES,
    RescoreSpec,
    check_page,
    fetch_size,
    page,
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
    assert page(list(range(10)), 8, 5) == [8, 9]
    assert page(list(range(10)), 12, 5) == []
    for bad in ((-1, 10), (0, -1)):
        with pytest.raises(ValueError, match="cannot be negative"):
            check_page(*bad)
    with pytest.raises(TypeError):
        page([1], 0, 1.5)  # type: ignore[arg-type]


def test_to_float32() -> None:
    assert to_float32(0.1) == float(np.float32(0.1)) != 0.1


# Property tests ------------------------------------------------------------------------------

scores = st.floats(min_value=0.0, max_value=50.0, allow_nan=False, width=32)
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
        shown += [h.position for h in page(ranked, start, size)]
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
        for h in page(rescore(first[: max(2, start + 2)], second, spec), start, 2)
    ]
    deep = [
        h.position
        for start in (0, 2)
        for h in page(rescore(first[: fetch_size(2, start, 2)], second, spec), start, 2)
    ]
    assert shallow == [0, 1, 0, 1]
    assert deep == [h.position for h in rescore(first, second, spec)] == [2, 3, 0, 1]
