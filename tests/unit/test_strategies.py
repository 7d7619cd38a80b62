"""Sliding-window plans and how window logits reorder a list (property tests)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_llmrank.ranking import Ranking
from haystack_llmrank.strategies import SlidingWindow, WindowedRun, run_windows


def test_first_plan_for_top_100() -> None:
    assert SlidingWindow().windows(100) == [
        (80, 100),
        (70, 90),
        (60, 80),
        (50, 70),
        (40, 60),
        (30, 50),
        (20, 40),
        (10, 30),
        (0, 20),
    ]


@pytest.mark.parametrize(
    ("n", "plan"),
    [
        (0, []),
        (1, [(0, 1)]),
        (20, [(0, 20)]),
        (25, [(5, 25), (0, 15)]),
        (31, [(11, 31), (1, 21), (0, 11)]),
    ],
)
def test_plans_for_other_sizes(n: int, plan: list[tuple[int, int]]) -> None:
    assert SlidingWindow().windows(n) == plan


@pytest.mark.parametrize(("size", "step"), [(0, 1), (5, 0), (5, 6)])
def test_bad_window_settings(size: int, step: int) -> None:
    with pytest.raises(ValueError, match=r"window_size|step"):
        SlidingWindow(size, step)


def reference_rank(values: Sequence[float], size: int, step: int) -> list[int]:
    """Plain FIRST sliding window over fixed per-passage logits, written independently."""
    order = list(range(len(values)))
    end = len(values)
    while end > 0:
        start = max(0, end - size)
        order[start:end] = sorted(order[start:end], key=lambda i: -values[i])
        if start == 0:
            break
        end -= step
    return order


def run_with(values: Sequence[float], size: int, step: int, batch: int = 1) -> Ranking:
    run = WindowedRun(len(values), SlidingWindow(size, step).windows(len(values)))

    def score(step_runs: Sequence[WindowedRun]) -> list[np.ndarray]:
        return [
            np.array([values[i] for i in r.next_members()], dtype=np.float32) for r in step_runs
        ]

    run_windows([run], score, batch_size=batch)
    return run.result()


window_settings = st.integers(min_value=1, max_value=26).flatmap(
    lambda w: st.tuples(st.just(w), st.integers(min_value=1, max_value=w))
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(min_value=-3, max_value=3).map(float), min_size=0, max_size=250),
    window=window_settings,
)
def test_ranking_is_a_permutation_matching_the_reference(
    values: list[float], window: tuple[int, int]
) -> None:
    size, step = window
    ranking = run_with(values, size, step)
    assert sorted(ranking.order) == list(range(len(values)))
    assert list(ranking.order) == reference_rank(values, size, step)
    assert all(a >= b for a, b in zip(ranking.scores, ranking.scores[1:], strict=False))
    assert list(ranking.logits) == [values[i] for i in ranking.order]
    if values and step < size:
        assert values[ranking.order[0]] == max(values)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=0, max_value=120), window=window_settings)
def test_equal_logits_keep_input_order(n: int, window: tuple[int, int]) -> None:
    assert list(run_with([1.0] * n, *window).order) == list(range(n))


def test_scores_are_capped_to_stay_monotone() -> None:
    ranking = Ranking.from_logits([2, 0, 1], [5.0, 7.0, 1.0])
    assert ranking.scores == (5.0, 5.0, 1.0)
    assert ranking.logits == (5.0, 7.0, 1.0)
    assert ranking.score_of() == {2: 5.0, 0: 5.0, 1: 1.0}


def test_ranking_rejects_broken_results() -> None:
    with pytest.raises(ValueError, match="permutation"):
        Ranking((0, 0), (1.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="increase"):
        Ranking((0, 1), (1.0, 2.0), (1.0, 2.0))


def test_nan_logits_are_an_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        run_with([1.0, float("nan"), 0.5], 20, 10)


def test_batches_interleave_queries_and_report_progress() -> None:
    sizes = [45, 5, 100]
    runs = [WindowedRun(n, SlidingWindow().windows(n)) for n in sizes]
    steps: list[list[int]] = []

    def score(step_runs: Sequence[WindowedRun]) -> list[np.ndarray]:
        steps.append([runs.index(r) for r in step_runs])
        return [np.zeros(len(r.next_members()), dtype=np.float32) for r in step_runs]

    done: list[int] = []
    run_windows(runs, score, batch_size=2, on_window=done.append)
    assert sum(done) == sum(len(SlidingWindow().windows(n)) for n in sizes)
    assert all(len(s) <= 2 for s in steps)
    assert steps[0] == [0, 1]
    assert steps[1] == [2, 0]
    assert all(r.done for r in runs)
