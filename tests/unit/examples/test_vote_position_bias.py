"""``examples/vote_position_bias.py``: positions as the engine deals them, the bias, the run."""

from __future__ import annotations

import pytest
from support import import_example

from haystack_llmrank.strategies import Disjoint


def test_window_positions_are_where_the_disjoint_strategy_puts_each_passage() -> None:
    bias = import_example("vote_position_bias")
    for count, size in ((100, 20), (95, 20), (7, 3), (3, 20)):
        plan = Disjoint(size).plan(count)
        windows = next(plan)
        expected = {
            item: (w, p) for w, members in enumerate(windows) for p, item in enumerate(members)
        }
        assert bias.window_positions(count, size) == [expected[i] for i in range(count)]


def test_the_bias_is_each_positions_lift_over_its_window_and_comes_out_of_the_run() -> None:
    bias = import_example("vote_position_bias")
    lift = {0: 1.5, 1: 0.0, 2: -1.5}
    content = {"a": 0.2, "b": 0.1, "c": 0.0}
    votes = [
        bias.Vote("q", docid, window, position, content[docid] + lift[position])
        for window, layout in enumerate(("abc", "bca", "cab"))
        for position, docid in enumerate(layout)
    ]
    measured = bias.position_bias(votes)
    assert {p: mean for p, (mean, _) in measured.items()} == pytest.approx(lift)
    as_read = bias.debiased_run(votes[:3], {})  # window 0: "a" on the favoured line
    assert sorted(as_read["q"], key=as_read["q"].get, reverse=True) == ["a", "b", "c"]
    flipped = [
        bias.Vote("q", d, 0, p, content[d] + lift[p]) for d, p in (("a", 2), ("b", 1), ("c", 0))
    ]
    read = bias.debiased_run(flipped, {})
    assert sorted(read["q"], key=read["q"].get, reverse=True) == ["c", "b", "a"]  # position won
    fixed = bias.debiased_run(flipped, lift)
    assert sorted(fixed["q"], key=fixed["q"].get, reverse=True) == ["a", "b", "c"]
    tied = bias.debiased_run([bias.Vote("q", d, 0, 0, 1.0) for d in "zyx"], {})
    assert sorted(tied["q"], key=tied["q"].get, reverse=True) == ["z", "y", "x"]  # input order
