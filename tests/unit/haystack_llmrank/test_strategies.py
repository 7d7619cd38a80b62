"""Strategies: their plans, what they guarantee, and how many windows and steps they take."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from haystack_llmrank.ranking import Cost, Ranking
from haystack_llmrank.strategies import (
    STRATEGIES,
    Disjoint,
    QueryRun,
    SlidingWindow,
    Strategy,
    TopDownPartition,
    Tournament,
    check_strategy_options,
    default_step,
    make_strategy,
    readout_strategy,
    run_windows,
    split_evenly,
)


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


@pytest.mark.parametrize(
    ("size", "step"), [(0, 1), (1, 1), (1, None), (5, 0), (5, 6), (5, 5), (2, 2)]
)
def test_bad_window_settings(size: int, step: int | None) -> None:
    with pytest.raises(ValueError, match=r"window_size|step"):
        SlidingWindow(size, step)


def test_a_sliding_window_of_one_passage_is_refused() -> None:
    # it would leave every passage where it is and call the list ranked
    message = r"window_size must be at least 2, got 1 \(one passage a window orders nothing\)"
    with pytest.raises(ValueError, match=message):
        make_strategy("sliding", window_size=1)
    with pytest.raises(ValueError, match=message):
        TopDownPartition(1)
    assert Disjoint(1).window_size == 1, "a vote judges one passage alone"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TopDownPartition(1), "window_size"),
        (lambda: TopDownPartition(20, pivot_rank=11), "pivot_rank"),
        (lambda: TopDownPartition(20, pivot_rank=0), "pivot_rank"),
        (lambda: Tournament(1), "window_size"),
        (lambda: Disjoint(0), "window_size"),
        (lambda: make_strategy("bubble"), "unknown strategy"),
    ],
)
def test_bad_strategy_settings(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True])
def test_bad_top_k(top_k: object) -> None:
    with pytest.raises(ValueError, match="top_k"):
        QueryRun(SlidingWindow(), 5, top_k)  # type: ignore[arg-type]


def test_make_strategy_knows_every_name() -> None:
    made = [make_strategy(name, window_size=8, step=3) for name in STRATEGIES]
    assert [s.name for s in made] == list(STRATEGIES)
    assert all(s.window_size == 8 for s in made)
    assert made[0] == SlidingWindow(8, 3)


def test_no_name_is_the_readouts_own_strategy() -> None:
    assert readout_strategy(None) == "sliding"
    assert readout_strategy(" yes") == "disjoint"
    assert make_strategy(None, window_size=8, step=3) == SlidingWindow(8, 3)
    # the step a window takes when none is given is the same however the strategy is made
    for size in (2, 3, 8, 12, 20):
        assert make_strategy("sliding", window_size=size) == SlidingWindow(size)
        assert SlidingWindow(size).step == default_step(size)
    assert make_strategy(None, window_size=8, step=3, vote=" yes") == Disjoint(8)
    # a name wins over the readout
    assert make_strategy("tdpart", vote=" yes") == TopDownPartition()


def test_options_are_checked_before_the_readout_is_known() -> None:
    # None may turn out disjoint, which has no step: only what every strategy needs is checked
    check_strategy_options(None, window_size=8, step=10)
    with pytest.raises(ValueError, match="step must be between"):
        check_strategy_options("sliding", window_size=8, step=10)
    with pytest.raises(ValueError, match="window_size"):
        check_strategy_options(None, window_size=0, step=1)
    with pytest.raises(ValueError, match="step must be a positive integer or None, got 0"):
        check_strategy_options(None, window_size=8, step=0)
    with pytest.raises(ValueError, match="unknown strategy"):
        check_strategy_options("bubble", window_size=8, step=1)
    with pytest.raises(
        ValueError, match=r"window_size must be a positive integer or None, got 2\.5"
    ):
        check_strategy_options(None, window_size=2.5, step=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be a positive integer or None, got True"):
        check_strategy_options("sliding", window_size=None, step=True)
    check_strategy_options("sliding", window_size=None, step=None)  # 20, step 10
    check_strategy_options(None, window_size=np.int64(8), step=None)  # type: ignore[arg-type]


def test_split_evenly() -> None:
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([], 1) == [[]]


def drive(
    strategy: Strategy,
    values: Sequence[float],
    top_k: int | None = None,
    windows: list[list[int]] | None = None,
) -> Ranking:
    """Rank items whose label logit is always ``values[i]``; record every window seen."""
    run = QueryRun(strategy, len(values), top_k)

    def score(batch: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        for _, members in batch:
            assert 1 <= len(members) <= strategy.window_size
            assert len(set(members)) == len(members)
            if windows is not None:
                windows.append(list(members))
        return [np.array([values[i] for i in m], dtype=np.float32) for _, m in batch]

    run_windows([run], score, batch_size=1)
    return run.result()


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


def truth(values: Sequence[float]) -> list[int]:
    """Every item by descending value; ties in input order."""
    return sorted(range(len(values)), key=lambda i: -values[i])


window_settings = st.integers(min_value=2, max_value=26).flatmap(
    lambda w: st.tuples(st.just(w), st.integers(min_value=1, max_value=w - 1))
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(min_value=-3, max_value=3).map(float), min_size=0, max_size=250),
    window=window_settings,
)
def test_sliding_matches_the_reference(values: list[float], window: tuple[int, int]) -> None:
    size, step = window
    ranking = drive(SlidingWindow(size, step), values)
    assert list(ranking.order) == reference_rank(values, size, step)
    assert ranking.unranked == 0
    assert list(ranking.logits) == [values[i] for i in ranking.order]
    if values:
        assert values[ranking.order[0]] == max(values)


def any_strategy() -> st.SearchStrategy[Strategy]:
    sizes = st.integers(min_value=2, max_value=26)
    return st.one_of(
        window_settings.map(lambda w: SlidingWindow(*w)),
        sizes.map(TopDownPartition),
        sizes.map(Tournament),
        sizes.map(Disjoint),
    )


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=1000),
    strategy=any_strategy(),
    top_k=st.none() | st.integers(min_value=1, max_value=60),
    data=st.data(),
)
@example(n=1000, strategy=SlidingWindow(), top_k=None, data=None)
@example(n=1000, strategy=TopDownPartition(), top_k=None, data=None)
@example(n=1000, strategy=Tournament(), top_k=10, data=None)
@example(n=1000, strategy=TopDownPartition(), top_k=45, data=None)
def test_every_strategy_returns_a_permutation(
    n: int, strategy: Strategy, top_k: int | None, data: st.DataObject | None
) -> None:
    scale = st.integers(min_value=-4, max_value=4).map(float)
    values = data.draw(st.lists(scale, min_size=n, max_size=n)) if data else [0.0] * n
    seen: list[list[int]] = []
    ranking = drive(strategy, values, top_k, seen)
    assert sorted(ranking.order) == list(range(n))
    assert all(a >= b for a, b in zip(ranking.scores, ranking.scores[1:], strict=False))
    assert list(ranking.logits) == [values[i] for i in ranking.order]
    assert set().union(*map(set, seen)) == set(range(n)), "every passage is judged"
    assert ranking.depth >= min(top_k or 1, n)
    assert ranking.cost.windows == len(seen) <= strategy.max_windows(n, top_k)
    assert ranking.cost.steps <= ranking.cost.windows


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    strategy=any_strategy(),
    top_k=st.none() | st.integers(min_value=1, max_value=40),
)
def test_a_list_of_ties_keeps_its_order(n: int, strategy: Strategy, top_k: int | None) -> None:
    ranking = drive(strategy, [1.0] * n, top_k)
    if not isinstance(strategy, Tournament):
        assert list(ranking.order) == list(range(n))
        return
    # some windows send on one more than others (the same ones from either end of the list),
    # so a passage may go on where an earlier one stays behind; but each round's last window
    # and what is left keep input order: at most one step down a round
    ranked, rest = ranking.order[: ranking.depth], ranking.order[ranking.depth :]
    assert list(rest) == sorted(rest)
    if top_k is None:
        assert list(ranked) == sorted(ranked)
    assert sum(a > b for a, b in pairwise(ranking.order)) <= ranking.cost.steps


def tied_pairs_in_order(order: Sequence[int], values: Sequence[float]) -> bool:
    """True when every two items of equal value keep their input order in ``order``."""
    seen: dict[float, int] = {}
    for item in order:
        if seen.get(values[item], -1) > item:
            return False
        seen[values[item]] = item
    return True


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(min_value=0, max_value=3).map(float), max_size=300),
    strategy=any_strategy(),
    top_k=st.none() | st.integers(min_value=1, max_value=40),
)
def test_equal_logits_keep_input_order(
    values: list[float], strategy: Strategy, top_k: int | None
) -> None:
    ranking = drive(strategy, values, top_k)
    ranked, rest = ranking.order[: ranking.depth], ranking.order[ranking.depth :]
    assert list(rest) == sorted(rest)
    if not isinstance(strategy, Tournament):
        assert tied_pairs_in_order(ranking.order, values)
    elif top_k is None:
        # a tournament may let one of two equals go on and drop the other, and a second
        # tournament over the dropped ones may rank it; its last window keeps their order
        assert tied_pairs_in_order(ranked, values)


distinct_values = st.integers(min_value=0, max_value=600).flatmap(
    lambda n: st.permutations(list(range(n))).map(lambda p: [float(v) for v in p])
)


@settings(max_examples=150, deadline=None)
@given(
    values=distinct_values,
    window=st.integers(min_value=2, max_value=26),
    data=st.data(),
)
def test_tdpart_gets_every_position_it_ranks_exactly_right(
    values: list[float], window: int, data: st.DataObject
) -> None:
    half = (window + 1) // 2
    pivot_rank = data.draw(st.none() | st.integers(min_value=1, max_value=half))
    top_k = data.draw(st.none() | st.integers(min_value=1, max_value=len(values) + 3))
    ranking = drive(TopDownPartition(window, pivot_rank), values, top_k)
    assert ranking.depth >= min(top_k or pivot_rank or half, len(values))
    assert list(ranking.order[: ranking.depth]) == truth(values)[: ranking.depth]


@pytest.mark.parametrize("window", [2, 3, 4, 7, 10, 20])
def test_tdpart_ranks_every_size_right_to_any_depth(window: int) -> None:
    half = (window + 1) // 2
    for n in range(131):
        values = [float((i * 7919) % 1009) for i in range(n)]  # distinct, in no order
        for top_k in {None, 1, half, half + 1, window, n + 3}:
            ranking = drive(TopDownPartition(window), values, top_k)
            assert list(ranking.order[: ranking.depth]) == truth(values)[: ranking.depth]


def test_tdpart_ranks_no_step_1_candidate_that_a_riser_left_out_beats() -> None:
    # the top 20 (50..31) put 9 above the pivot (41); all 80 below rise (120..199), more
    # than the last window holds with the 9: its first 11 are ranked, and a second round
    # over the rest ranks 11 more
    values = [50.0 - i for i in range(20)] + [100.0 + i for i in range(20, 100)]
    ranking = drive(TopDownPartition(20), values, top_k=20)
    assert list(ranking.order[: ranking.depth]) == list(range(99, 77, -1))
    assert ranking.cost == Cost(windows=7 + 6, steps=6)
    assert ranking.cost.windows <= TopDownPartition(20).max_windows(100, 20)


@settings(max_examples=150, deadline=None)
@given(
    values=distinct_values.filter(lambda v: len(v) <= 400),
    window=st.integers(min_value=20, max_value=26),
)
def test_a_tournament_gets_as_many_right_as_go_on(values: list[float], window: int) -> None:
    n = len(values)
    kept = window // math.ceil(n / window) if n > window else n
    ranking = drive(Tournament(window), values)
    assert list(ranking.order[:kept]) == truth(values)[:kept]
    assert ranking.cost.steps == (0 if n == 0 else 1 if n <= window else 2)


def test_a_tournament_fills_its_last_window_in_one_round() -> None:
    # 60 passages deal into 3 windows of 20; 7, 6 and 7 go on (not 6 each), so 20 positions
    # are ranked without a second round
    seen: list[list[int]] = []
    ranking = drive(Tournament(), [float(i) for i in range(60)], top_k=20, windows=seen)
    assert ranking.cost == Cost(windows=4, steps=2)
    assert ranking.depth == 20
    assert [sum(i % 3 == group for i in seen[-1]) for group in range(3)] == [7, 6, 7]
    assert Tournament().max_windows(60, 20) == 4


@pytest.mark.parametrize("window", range(2, 27))
def test_a_tournament_sends_on_a_full_window_and_the_same_passages_reversed(window: int) -> None:
    tournament = Tournament(window)
    for n in range(window + 1, min(window * window, 130) + 1):
        values = [float((i * 7919) % 1009) for i in range(n)]  # distinct, in no order
        seen: list[list[int]] = []
        backwards: list[list[int]] = []
        ranking = drive(tournament, values, windows=seen)
        drive(tournament, values[::-1], windows=backwards)
        # full, or one seat short where an odd window's seats cannot be shared out alike
        # from both ends
        assert window - ranking.depth <= window % 2
        as_given = [sorted(n - 1 - i for i in w) for w in backwards]
        assert sorted(as_given) == sorted(map(sorted, seen)), "the same windows reversed"
        assert ranking.cost.windows == tournament.max_windows(n)


@settings(max_examples=150, deadline=None)
@given(values=distinct_values, window=st.integers(min_value=1, max_value=26))
def test_disjoint_windows_get_every_position_right_in_one_step(
    values: list[float], window: int
) -> None:
    seen: list[list[int]] = []
    ranking = drive(Disjoint(window), values, windows=seen)
    n = len(values)
    assert list(ranking.order) == truth(values)
    assert ranking.cost == Cost(windows=math.ceil(n / window), steps=min(n, 1))
    evenly = split_evenly(range(n), len(seen)) if n else []
    assert sorted(len(w) for w in seen) == sorted(len(p) for p in evenly)
    reversed_values = values[::-1]
    reversed_seen: list[list[int]] = []
    drive(Disjoint(window), reversed_values, windows=reversed_seen)
    as_given = [[n - 1 - i for i in reversed(w)] for w in reversed_seen]
    assert sorted(map(sorted, as_given)) == sorted(map(sorted, seen)), "same windows reversed"


def test_sliding_over_100_takes_9_windows_one_after_another() -> None:
    ranking = drive(SlidingWindow(), [float(i % 7) for i in range(100)])
    assert ranking.cost == Cost(windows=9, steps=9)
    assert ranking.depth == 100


def test_tdpart_over_100_takes_at_most_3_steps() -> None:
    # pivot first in 19-wide partitions of the 80 below the top 20: ceil(80 / 19) = 5 windows
    seen: list[list[int]] = []
    ties = drive(TopDownPartition(), [0.0] * 100, windows=seen)
    assert ties.cost == Cost(windows=6, steps=2), "nobody beats the pivot: no third step"
    assert ties.depth == 10
    assert [len(w) for w in seen] == [20] + [17] * 5
    pivot = seen[0][9]
    assert all(w[0] == pivot for w in seen[1:])

    seen.clear()
    rising = drive(TopDownPartition(), [float(i) for i in range(100)], windows=seen)
    assert rising.cost == Cost(windows=7, steps=3)
    # all 80 rose: the last window holds the 9 above the pivot and the 11 that rose most
    # (99..89); a riser left out beats the 9, so only the first 11 positions are ranked
    assert sorted(seen[-1]) == [*range(11, 20), *range(89, 100)]
    assert list(rising.order[:11]) == list(range(99, 88, -1))
    assert rising.depth == 11
    assert list(rising.order[11:]) == list(range(89)), "the rest in first-stage order"

    # 10 of the 80 rise above the pivot (91): with the 9 above it they fit the last window
    values = [100.0 - i for i in range(20)] + [95.0 * (i % 8 == 0) for i in range(20, 100)]
    fitting = drive(TopDownPartition(), values)
    assert fitting.cost == Cost(windows=7, steps=3)
    assert fitting.depth == 9 + 10 + 1, "the candidates and the pivot"
    assert list(fitting.order[:20]) == truth(values)[:20]


def test_tdpart_leaves_the_passages_below_the_pivot_in_first_stage_order() -> None:
    values = [5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 0.0, 2.0, 6.0, 4.0]
    ranking = drive(TopDownPartition(4, pivot_rank=2), values)
    # items 0-3 (5 9 1 7) rank 1 3 0 2: item 3 is the pivot, item 1 above it;
    # items 4-6 (3 8 0) and 7-9 (2 6 4) meet the pivot (7): only item 5 (8) rises
    assert list(ranking.order) == [1, 5, 3, 0, 2, 4, 6, 7, 8, 9]
    assert ranking.unranked == 7
    assert ranking.cost == Cost(windows=4, steps=3)


def test_tdpart_plays_no_window_for_a_lone_riser() -> None:
    # pivot rank 1: nothing stands above the pivot; passage 6 alone beats it, so it is first
    # without a third window
    values = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 9.0, 0.0, 0.0]
    seen: list[list[int]] = []
    ranking = drive(TopDownPartition(6), values, 1, seen)
    assert seen == [[0, 1, 2, 3, 4, 5], [0, 6, 7, 8]]
    assert ranking.order[:2] == (6, 0)
    assert ranking.cost == Cost(windows=2, steps=2)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make_strategy("sliding", window_size=4.0, step=2), "window_size must be an int"),
        (lambda: make_strategy("tdpart", window_size=4.0), "window_size must be an integer"),
        (lambda: make_strategy("tournament", window_size=4.0), "window_size must be an int"),
        (lambda: make_strategy("disjoint", window_size=4.0), "window_size must be an integer"),
        (lambda: make_strategy("sliding", window_size=4, step=2.5), "step must be an integer"),
        (lambda: SlidingWindow(4, True), "step must be an integer"),
        (lambda: TopDownPartition(6, pivot_rank=1.5), "pivot_rank must be an integer"),
    ],
)
def test_strategies_refuse_sizes_that_are_not_integers(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
    assert make_strategy("sliding", window_size=np.int64(4), step=np.int32(2)).window_size == 4


def test_top_k_makes_tdpart_and_tournaments_cheaper_or_deeper() -> None:
    values = [float((i * 37) % 101) for i in range(100)]
    judged = {}
    for top_k in (None, 3):
        seen: list[list[int]] = []
        ranking = drive(TopDownPartition(), values, top_k, seen)
        if top_k is None:
            assert list(ranking.order[:10]) == truth(values)[:10]
        assert list(ranking.order[:3]) == truth(values)[:3]
        judged[top_k] = sum(len(w) for w in seen)
    assert judged[3] < judged[None], "a lower pivot lets fewer rise into the last window"
    small = drive(Tournament(), values, top_k=2)
    assert small.cost.windows == 6
    assert small.depth == 10, "5 windows let 2 each go on"
    deep = drive(Tournament(), values, top_k=30)
    assert deep.depth >= 30
    assert list(deep.order[:2]) == truth(values)[:2]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_are_an_error(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        drive(SlidingWindow(20, 10), [1.0, bad, 0.5])


def test_ranking_checks_its_unranked_tail() -> None:
    with pytest.raises(ValueError, match="first-stage"):
        Ranking.from_logits([0, 2, 1], [3.0, 2.0, 1.0], unranked=2)
    with pytest.raises(ValueError, match="unranked"):
        Ranking.from_logits([0, 1], [3.0, 2.0], unranked=3)
    ranking = Ranking.from_logits([1, 0, 2], [3.0, 4.0, 1.0], unranked=2)
    assert ranking.depth == 1
    assert ranking.scores == (3.0, 3.0, 1.0)


def test_scores_are_capped_to_stay_monotone() -> None:
    ranking = Ranking.from_logits([2, 0, 1], [5.0, 7.0, 1.0])
    assert ranking.scores == (5.0, 5.0, 1.0)
    assert ranking.logits == (5.0, 7.0, 1.0)
    assert ranking.score_of() == {2: 5.0, 0: 5.0, 1: 1.0}
    assert ranking.logit_of() == {2: 5.0, 0: 7.0, 1: 1.0}


def test_ranking_rejects_broken_results() -> None:
    with pytest.raises(ValueError, match="permutation"):
        Ranking((0, 0), (1.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="increase"):
        Ranking((0, 1), (1.0, 2.0), (1.0, 2.0))


def test_batches_interleave_queries() -> None:
    sizes = [45, 5, 100]
    runs = [QueryRun(SlidingWindow(), n) for n in sizes]
    calls: list[list[int]] = []

    def score(batch: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        calls.append([position for position, _ in batch])
        return [np.zeros(len(members), dtype=np.float32) for _, members in batch]

    run_windows(runs, score, batch_size=2)
    assert sum(map(len, calls)) == sum(len(SlidingWindow().windows(n)) for n in sizes)
    assert all(len(c) <= 2 for c in calls)
    assert calls[0] == [0, 1]
    assert calls[1] == [2, 0]
    assert all(r.done for r in runs)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=150), min_size=1, max_size=6),
    strategy=any_strategy(),
    batch_size=st.integers(min_value=1, max_value=12),
    top_k=st.none() | st.integers(min_value=1, max_value=30),
)
def test_steps_go_whole_and_queries_do_not_affect_each_other(
    sizes: list[int], strategy: Strategy, batch_size: int, top_k: int | None
) -> None:
    def value(query: int, item: int) -> float:
        return float((item * 7919 + query * 104729) % 13)

    alone = [drive(strategy, [value(q, i) for i in range(n)], top_k) for q, n in enumerate(sizes)]
    runs = [QueryRun(strategy, n, top_k) for n in sizes]
    calls: list[list[tuple[int, list[int]]]] = []

    def score(batch: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        calls.append([(q, list(m)) for q, m in batch])
        for q, run in enumerate(runs):
            taken = [m for p, m in calls[-1] if p == q]
            assert taken in ([], run.pending), "a query's step goes whole into one call"
        assert len(batch) <= batch_size or len({q for q, _ in batch}) == 1
        return [np.array([value(q, i) for i in m], dtype=np.float32) for q, m in batch]

    run_windows(runs, score, batch_size=batch_size)
    assert [r.result() for r in runs] == alone
