"""``examples/fold_summary.py``: pooling disjoint held-out records."""

from __future__ import annotations

from typing import Any

import pytest
from support import import_example


def record(values: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"model": "m", "per_query": values}


def test_pool_joins_disjoint_records_and_keeps_shared_figures() -> None:
    summary = import_example("fold_summary")
    first = record(
        {"first_stage": {"a": 0.2, "b": 0.4}, "reranked_bm25": {"a": 0.5, "b": 0.4}, "x": {}}
    )
    second = record({"first_stage": {"c": 0.6}, "reranked_bm25": {"c": 0.3}})
    pooled = summary.pool([first, second])
    assert pooled == {
        "first_stage": {"a": 0.2, "b": 0.4, "c": 0.6},
        "reranked_bm25": {"a": 0.5, "b": 0.4, "c": 0.3},
    }


def test_pool_refuses_overlapping_or_partial_records() -> None:
    summary = import_example("fold_summary")
    one = record({"first_stage": {"a": 0.2}, "reranked_bm25": {"a": 0.5}})
    with pytest.raises(SystemExit, match="overlap"):
        summary.pool([one, one])
    partial = record({"first_stage": {"b": 0.2, "c": 0.1}, "reranked_bm25": {"b": 0.5}})
    with pytest.raises(SystemExit, match="does not cover"):
        summary.pool([one, partial])
    with pytest.raises(SystemExit, match="first_stage"):
        summary.pool([record({"reranked_bm25": {"a": 0.5}})])


def test_compare_counts_and_brackets_the_mean_difference() -> None:
    summary = import_example("fold_summary")
    values = {"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.9}
    baseline = {"a": 0.2, "b": 0.4, "c": 0.6, "d": 0.1}
    result = summary.compare(values, baseline, resamples=2000, seed=0)
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert result["mean_difference"] == pytest.approx((0.3 + 0 - 0.3 + 0.8) / 4)
    low, high = result["interval_95"]
    assert -0.3 <= low < result["mean_difference"] < high <= 0.8
