"""``examples/fold_summary.py``: pooling disjoint held-out records."""

from __future__ import annotations

import json
from pathlib import Path
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


def test_compare_settings_names_what_differs_and_what_is_not_recorded() -> None:
    summary = import_example("fold_summary")
    compared = summary.compare_settings(
        {
            "a": {"strategy": "disjoint", "vote": " yes", "max_passage_words": 300},
            "b": {"strategy": "sliding", "vote": " yes"},
        }
    )
    assert compared["mixed"] == {"strategy": {"a": "disjoint", "b": "sliding"}}
    assert compared["shared"] == {"vote": " yes", "max_passage_words": 300}
    assert compared["unrecorded"]["max_passage_words"] == ["b"]
    assert compared["unrecorded"]["depth"] == ["a", "b"]


def summarise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]], *options: str
) -> dict[str, Any]:
    """fold_summary.py's main on ``records``, written to files; its summary."""
    paths = []
    for i, written in enumerate(records):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(written))
    out = tmp_path / "summary.json"
    argv = ["fold_summary.py", *map(str, paths), "--resamples", "100", "--json", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, *options])
    import_example("fold_summary").main()
    result: dict[str, Any] = json.loads(out.read_text())
    return result


SETTINGS = {"strategy": "disjoint", "vote": " yes", "max_passage_words": 48, "depth": 100}


def test_records_read_differently_are_pooled_only_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = {**SETTINGS, **record({"first_stage": {"a": 0.2}, "reranked_bm25": {"a": 0.5}})}
    second = {**SETTINGS, **record({"first_stage": {"b": 0.4}, "reranked_bm25": {"b": 0.3}})}
    second["max_passage_words"] = 300
    with pytest.raises(SystemExit, match=r"different settings .*max_passage_words"):
        summarise(tmp_path, monkeypatch, [first, second])
    pooled = summarise(tmp_path, monkeypatch, [first, second], "--allow-mixed")
    assert pooled["queries"] == 2
    assert pooled["settings"]["mixed"] == {
        "max_passage_words": {str(tmp_path / "r0.json"): 48, str(tmp_path / "r1.json"): 300}
    }
    assert "pooling records read with different settings" in capsys.readouterr().err
    second["max_passage_words"] = 48  # the same settings, another model: pooled
    second["model"] = "another fold's"
    assert summarise(tmp_path, monkeypatch, [first, second])["settings"]["mixed"] == {}


def test_figures_some_records_lack_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = record({"first_stage": {"a": 0.2}, "reranked_bm25": {"a": 0.5}})
    whole["per_query"]["reranked_reversed"] = {"a": 0.1}
    crashed = record({"first_stage": {"b": 0.4}, "reranked_bm25": {"b": 0.3}})
    pooled = summarise(tmp_path, monkeypatch, [whole, crashed])
    assert pooled["dropped_figures"] == ["reranked_reversed"]
    assert set(pooled["mean"]) == {"first_stage", "reranked_bm25"}
    err = capsys.readouterr().err
    assert "left out, as some records lack them: reranked_reversed" in err
    assert "cannot check strategy: not recorded in" in err  # older records still pool


def test_a_pool_of_other_than_the_expected_queries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = record({"first_stage": {"a": 0.2, "b": 0.1}, "reranked_bm25": {"a": 0.5, "b": 0.3}})
    other = record({"first_stage": {"c": 0.4}, "reranked_bm25": {"c": 0.3}})
    with pytest.raises(SystemExit, match="the records hold 3 queries, not 43"):
        summarise(tmp_path, monkeypatch, [one, other], "--expect-queries", "43")
    assert summarise(tmp_path, monkeypatch, [one, other], "--expect-queries", "3")["queries"] == 3
