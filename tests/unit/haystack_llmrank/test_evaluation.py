"""Metrics through pytrec_eval, checked against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given
from hypothesis import strategies as st

from haystack_llmrank.data import (
    Candidate,
    Qrels,
    QueryCandidates,
    first_stage_run,
    read_run,
    run_from_rankings,
    write_run,
)
from haystack_llmrank.evaluation import (
    DEFAULT_METRICS,
    Metric,
    evaluate,
    parse_metrics,
    trec_order,
)
from haystack_llmrank.ranking import Ranking

QRELS: Qrels = {"q": {"d1": 3, "d2": 0, "d3": 2, "d4": 1, "d5": 2}}
RUN = {"q": {"d2": 4.0, "d1": 3.0, "d4": 2.0, "d3": 1.0, "x": 0.5}}
"""Ranks: d2 (0), d1 (3), d4 (1), d3 (2), x (unjudged); d5 (2) is not retrieved."""


def ndcg(grades: list[int], judged: list[int], k: int) -> float:
    """nDCG@k with linear gain, the ideal list from all judgements (trec_eval's ndcg_cut)."""

    def dcg(values: list[int]) -> float:
        return sum(g / math.log2(r + 2) for r, g in enumerate(values[:k]))

    return dcg(grades) / dcg(sorted(judged, reverse=True))


def test_metric_names() -> None:
    assert Metric.parse(" NDCG@10 ") == Metric("ndcg", 10)
    assert Metric("map", 100).measure == "map_cut.100"
    assert Metric("map", 100).key == "map_cut_100"
    assert Metric("mrr", 10).measure == "recip_rank"
    assert Metric("p", 5).key == "P_5"
    assert [m.name for m in parse_metrics(DEFAULT_METRICS)] == list(DEFAULT_METRICS)


@pytest.mark.parametrize(
    "name", ["ndcg", "ndcg@", "ndcg@0", "ndcg@x", "bleu@4", "mrr@-1", "ndcg@\u00b2"]
)
def test_bad_metric_names(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown metric {name!r}"):
        Metric.parse(name)


@pytest.mark.parametrize("name", ["ndcg@2147483648", "p@9223372036854775808", "mrr@10" + "0" * 20])
def test_a_cutoff_past_a_32_bit_long_is_refused(name: str) -> None:
    # pytrec_eval reports an overflowing cutoff under another key: a KeyError, not a metric
    with pytest.raises(ValueError, match=f"metric {name!r}: k must be at most 2147483647$"):
        Metric.parse(name)
    largest = evaluate(RUN, QRELS, ["ndcg@2147483647", "ndcg@100"]).mean
    assert largest["ndcg@2147483647"] == largest["ndcg@100"]


def test_repeated_or_no_metrics() -> None:
    with pytest.raises(ValueError, match=r"more than once: \['ndcg@10'\]"):
        parse_metrics(["ndcg@10", "NDCG@10"])
    with pytest.raises(ValueError, match="no metrics"):
        parse_metrics([])


def test_values_match_hand_computation() -> None:
    metrics = ["ndcg@3", "ndcg@10", "map@100", "map@2", "recall@2", "recall@100", "p@2"]
    result = evaluate(RUN, QRELS, [*metrics, "mrr@1", "mrr@10"])
    values = result.per_query["q"]
    judged = list(QRELS["q"].values())
    assert values["ndcg@3"] == pytest.approx(ndcg([0, 3, 1], judged, 3))
    assert values["ndcg@10"] == pytest.approx(ndcg([0, 3, 1, 2, 0], judged, 10))
    # Relevant at level 2: d1 (rank 2), d3 (rank 4), d5 (never retrieved).
    assert values["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert values["map@2"] == pytest.approx((1 / 2) / 3)
    assert values["recall@2"] == pytest.approx(1 / 3)
    assert values["recall@100"] == pytest.approx(2 / 3)
    assert values["p@2"] == pytest.approx(1 / 2)
    assert values["mrr@1"] == 0.0
    assert values["mrr@10"] == pytest.approx(1 / 2)
    assert result.mean == values
    assert result.metrics == (*metrics, "mrr@1", "mrr@10")


def test_relevance_level_changes_binary_metrics_only() -> None:
    strict = evaluate(RUN, QRELS, ["ndcg@10", "recall@3"]).per_query["q"]
    loose = evaluate(RUN, QRELS, ["ndcg@10", "recall@3"], relevance_level=1).per_query["q"]
    assert strict["ndcg@10"] == loose["ndcg@10"]
    assert strict["recall@3"] == pytest.approx(1 / 3)
    assert loose["recall@3"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("level", [0, -1, -(2**31)])
def test_relevance_levels_below_1_are_refused(level: int) -> None:
    """pytrec_eval raises a TypeError at level 0 and scores every binary metric 0 below it,
    where trec_eval would count every judged document relevant."""
    with pytest.raises(ValueError, match=rf"relevance level must be an integer from 1 .*{level}$"):
        evaluate(RUN, QRELS, relevance_level=level)
    assert evaluate(RUN, QRELS, ["recall@100"], relevance_level=1).mean["recall@100"] == 0.75


def test_mrr_cut_follows_trec_order() -> None:
    qrels: Qrels = {"q": {"a": 2}}
    # Tied scores: trec_eval puts the larger docid first, so "a" is ranked second.
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.0}}
    assert trec_order(run["q"]) == ["b", "a", "c"]
    result = evaluate(run, qrels, ["mrr@1", "mrr@2"]).per_query["q"]
    assert result == {"mrr@1": 0.0, "mrr@2": 0.5}


def pytrec_eval_order(docs: dict[str, float]) -> list[str]:
    """The docids of ``docs`` in the order trec_eval itself ranks them: the docid judged
    alone relevant at each reciprocal rank."""
    ranks: dict[int, str] = {}
    for docid in docs:
        evaluator = pytrec_eval.RelevanceEvaluator({"q": {docid: 1}}, {"recip_rank"})
        ranks[round(1 / evaluator.evaluate({"q": docs})["q"]["recip_rank"])] = docid
    return [ranks[rank] for rank in sorted(ranks)]


def test_mrr_cut_ranks_scores_as_32_bit_floats_as_trec_eval_does() -> None:
    # 0.50000001 and 0.5 are one 32-bit float: a tie, which trec_eval gives to "b"
    run = {"q": {"a": 0.50000001, "b": 0.5}}
    assert trec_order(run["q"]) == pytrec_eval_order(run["q"]) == ["b", "a"]
    result = evaluate(run, {"q": {"a": 2, "b": 0}}, ["p@1", "ndcg@1", "mrr@1", "mrr@10"])
    assert result.mean == {"p@1": 0.0, "ndcg@1": 0.0, "mrr@1": 0.0, "mrr@10": 0.5}


SCORES = st.sampled_from(
    [3000.0, 2999.9999, 2999.9997, 0.50000001, 0.5, 0.0, -0.0, 1e-46, 3.5e38, 1e39, -1e39]
)
DOCIDS = st.text(alphabet="aAbB9\u00e9\u00ff\u4e00\U0001f600", min_size=1, max_size=3)


@given(st.dictionaries(DOCIDS, SCORES, min_size=1, max_size=6))
def test_trec_order_is_trec_evals_order(docs: dict[str, float]) -> None:
    assert trec_order(docs) == pytrec_eval_order(docs)


@pytest.mark.parametrize("score", [1.0, 1023.0, 1024.0, 3000.0, -3000.0, 1e6, 2.0**39, 3e38])
def test_first_stage_ties_keep_the_list_order_at_any_magnitude(score: float) -> None:
    # impact-score retrievers tie often, in the thousands; 0.0001 apart is one float32 there
    listed = tuple(Candidate(docid, "t", score) for docid in "abcde")
    run = first_stage_run([QueryCandidates("q", "x", listed)])
    assert pytrec_eval_order(run["q"]) == trec_order(run["q"]) == list("abcde")
    result = evaluate(run, {"q": {"a": 2}}, ["p@1", "mrr@1", "mrr@10"])
    assert result.mean == {"p@1": 1.0, "mrr@1": 1.0, "mrr@10": 1.0}


def test_written_runs_keep_tied_rankings_in_order(tmp_path: Path) -> None:
    query = QueryCandidates("q", "x", (Candidate("a", "t"), Candidate("b", "t")))
    tied = Ranking((0, 1), (2.0, 2.0), (2.0, 2.0))
    path = tmp_path / "run.txt"
    write_run(path, run_from_rankings([query], [tied]), "t")
    assert evaluate(read_run(path), {"q": {"a": 2, "b": 0}}, ["mrr@10"]).mean["mrr@10"] == 1.0


def test_missing_and_unjudged_queries_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    qrels: Qrels = {"q1": {"a": 2}, "q2": {"b": 2}, "q3": {"c": 3}}
    run = {"q1": {"a": 1.0}, "q2": {"z": 1.0}, "extra": {"a": 1.0}}
    result = evaluate(run, qrels, ["mrr@10"])
    assert result.missing == ("q3",)
    assert result.unjudged == ("extra",)
    assert set(result.per_query) == {"q1", "q2"}
    assert result.mean["mrr@10"] == pytest.approx(0.5)
    assert "1 judged queries are missing from the run (left out of the mean): q3" in caplog.text
    assert "1 run queries have no judgements and are not evaluated: extra" in caplog.text

    many = {f"q{i}": {"a": 1} for i in range(13)}
    evaluate({"q0": {"a": 1.0}}, many, ["mrr@10"])
    shown = ", ".join(sorted(f"q{i}" for i in range(1, 13))[:10])  # sorted as text
    assert (
        f"12 judged queries are missing from the run (left out of the mean): {shown} and 2 more"
        in caplog.text
    )

    assert not result.missing_as_zero
    assert result.to_dict()["missing_as_zero"] is False
    zero = evaluate(run, qrels, ["mrr@10"], missing_as_zero=True)
    assert zero.per_query["q3"] == {"mrr@10": 0.0}
    assert zero.mean["mrr@10"] == pytest.approx(1 / 3)
    assert zero.to_dict()["queries"] == 3
    assert zero.missing_as_zero
    assert zero.to_dict()["missing_as_zero"] is True


def test_a_run_query_without_documents_is_missing_as_in_a_run_file(tmp_path: Path) -> None:
    run = {"q1": {}, "q2": {"b": 1.0}, "q9": {}}
    qrels: Qrels = {"q1": {"a": 2}, "q2": {"b": 2}}
    result = evaluate(run, qrels, ["ndcg@10"])
    assert result.per_query == {"q2": {"ndcg@10": 1.0}}
    assert (result.missing, result.unjudged) == (("q1",), ())
    path = tmp_path / "run.txt"
    write_run(path, run, "t")  # the file cannot hold q1 or q9
    assert evaluate(read_run(path), qrels, ["ndcg@10"]) == result
    zero = evaluate(run, qrels, ["ndcg@10"], missing_as_zero=True)
    assert zero.per_query == {"q2": {"ndcg@10": 1.0}, "q1": {"ndcg@10": 0.0}}


def test_no_common_query_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query in common"):
        evaluate({"a": {"d": 1.0}}, {"b": {"d": 1}})


def test_a_qrels_query_without_judgements_is_unjudged() -> None:
    run = {"q": RUN["q"], "empty": {"d1": 1.0}}
    result = evaluate(run, {**QRELS, "empty": {}})
    assert result.unjudged == ("empty",)
    assert result.per_query == evaluate(RUN, QRELS).per_query


def test_grades_are_whole_numbers_trec_eval_holds() -> None:
    numpy_grades = {"q": {d: np.int64(g) for d, g in QRELS["q"].items()}}
    assert evaluate(RUN, numpy_grades).per_query == evaluate(RUN, QRELS).per_query
    whole = {"q": {d: float(g) for d, g in QRELS["q"].items()}}
    assert evaluate(RUN, whole).per_query == evaluate(RUN, QRELS).per_query
    for grade, message in ((1.5, "not an integer"), (True, "not an integer"), (2**40, "range")):
        with pytest.raises(ValueError, match=f"query q: the grade of d1 .*{message}"):
            evaluate(RUN, {"q": {**QRELS["q"], "d1": grade}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="the relevance level must be an integer from"):
        evaluate(RUN, QRELS, relevance_level=2**40)


def test_numpy_scores_evaluate_as_floats() -> None:
    run = {"q": {d: np.float32(s) for d, s in RUN["q"].items()}}
    assert evaluate(run, QRELS).per_query == evaluate(RUN, QRELS).per_query
    mixed = {"q": {"d1": np.float64(2.0), "d2": np.int64(1), "d3": 0.5}}
    assert evaluate(mixed, QRELS, ["mrr@10"]).mean == {"mrr@10": 1.0}


@pytest.mark.parametrize("score", [math.nan, np.float32("inf"), -math.inf, "high", None])
def test_a_score_that_is_not_a_finite_number_is_named(score: object) -> None:
    run = {"q": {"d1": 1.0, "d2": score}}
    with pytest.raises(ValueError, match=r"query q: the score of d2 is not a finite number"):
        evaluate(run, QRELS)  # type: ignore[arg-type]
