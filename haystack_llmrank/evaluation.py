"""Ranking metrics, computed by trec_eval through pytrec_eval.

Metrics are named ``family@k``: ``ndcg@k`` (trec_eval's ``ndcg_cut``: graded, linear gain),
``map@k`` (``map_cut``), ``recall@k``, ``p@k`` (``P``) and ``mrr@k`` (``recip_rank`` of the run
cut to its top ``k``). The binary metrics (map, recall, p, mrr) count a document as relevant
when its grade is at least ``relevance_level``: 2 by default, as TREC Deep Learning does, and
never below 1, which pytrec_eval does not take.
Documents are ranked as trec_eval ranks them: by score read as a 32-bit float, ties by docid,
both descending (:func:`trec_order`).
pytrec_eval (the ``eval`` extra) is imported only when metrics are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from haystack_llmrank.data import GRADE_RANGE, Qrels, finite_float, trec_float
from haystack_llmrank.errors import listed

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "ndcg@5", "ndcg@20", "map@100", "mrr@10", "recall@100")
RELEVANCE_LEVEL = 2
"""Lowest grade that counts as relevant for binary metrics (TREC Deep Learning convention)."""

_MEASURES = {
    "ndcg": "ndcg_cut",
    "map": "map_cut",
    "recall": "recall",
    "p": "P",
    "mrr": "recip_rank",
}
MAX_CUTOFF = 2**31 - 1
"""The largest ``k`` of ``family@k``: pytrec_eval reads a cutoff into a C long (32 bits on
some platforms) and reports one that overflows it under another measure's key."""


@dataclass(frozen=True)
class Metric:
    """A metric family at a rank cutoff, e.g. ``ndcg@10``."""

    family: str
    cutoff: int

    @classmethod
    def parse(cls, name: str) -> Metric:
        """Parse ``family@k``, ``k`` from 1 to :data:`MAX_CUTOFF`."""
        family, at, cutoff = name.strip().lower().partition("@")
        if family not in _MEASURES or not at or not cutoff.isdecimal() or int(cutoff) < 1:
            raise ValueError(
                f"unknown metric {name!r}; use family@k with family in {sorted(_MEASURES)} "
                "and k a positive integer, e.g. ndcg@10"
            )
        if int(cutoff) > MAX_CUTOFF:
            raise ValueError(f"metric {name!r}: k must be at most {MAX_CUTOFF}")
        return cls(family, int(cutoff))

    @property
    def name(self) -> str:
        """The canonical name, ``family@k``."""
        return f"{self.family}@{self.cutoff}"

    @property
    def measure(self) -> str:
        """The pytrec_eval measure to ask for (``mrr`` is cut by truncating the run)."""
        base = _MEASURES[self.family]
        return base if self.family == "mrr" else f"{base}.{self.cutoff}"

    @property
    def key(self) -> str:
        """The key of this metric in pytrec_eval's results."""
        return self.measure.replace(".", "_")


def parse_metrics(names: Iterable[str]) -> list[Metric]:
    """Parse metric names; a repeated metric is an error."""
    metrics = [Metric.parse(name) for name in names]
    repeated = sorted({m.name for m in metrics if metrics.count(m) > 1})
    if repeated:
        raise ValueError(f"metrics given more than once: {repeated}")
    if not metrics:
        raise ValueError("no metrics given")
    return metrics


@dataclass(frozen=True)
class Evaluation:
    """Per-query and mean metric values of a run against qrels.

    ``missing`` are judged queries absent from the run (or present without documents):
    left out of ``per_query`` and the mean, or counted as zero there when
    ``missing_as_zero``. ``unjudged`` are run queries without judgements; they are never
    evaluated.
    """

    metrics: tuple[str, ...]
    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]
    relevance_level: int
    missing: tuple[str, ...]
    unjudged: tuple[str, ...]
    missing_as_zero: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "metrics": list(self.metrics),
            "mean": self.mean,
            "per_query": self.per_query,
            "queries": len(self.per_query),
            "relevance_level": self.relevance_level,
            "missing": list(self.missing),
            "missing_as_zero": self.missing_as_zero,
            "unjudged": list(self.unjudged),
        }


def trec_order(docs: Mapping[str, float]) -> list[str]:
    """Docids in trec_eval's order: score descending as a 32-bit float (:func:`trec_float`:
    scores that round to the same one tie), ties by docid descending (as C's ``strcmp`` orders
    UTF-8, which is Python's order of strings)."""
    return sorted(docs, key=lambda docid: (trec_float(docs[docid]), docid), reverse=True)


def require_pytrec_eval() -> Any:
    """The ``pytrec_eval`` module, or RuntimeError naming the ``eval`` extra that installs it."""
    try:
        import pytrec_eval
    except ImportError as exc:
        raise RuntimeError(f"{exc}; install the eval extra: pip install 'llmrank[eval]'") from exc
    return pytrec_eval


def _scores(
    run: Mapping[str, Mapping[str, float]], qrels: Qrels, measures: set[str], level: int
) -> dict[str, dict[str, float]]:
    evaluator = require_pytrec_eval().RelevanceEvaluator(qrels, measures, relevance_level=level)
    result: dict[str, dict[str, float]] = evaluator.evaluate({q: dict(d) for q, d in run.items()})
    return result


def _float_scores(qid: str, docs: Mapping[str, float]) -> dict[str, float]:
    """``docs`` with Python float scores (numpy's fail in pytrec_eval); ``ValueError`` naming
    a score that is not a finite number."""
    scores: dict[str, float] = {}
    for docid, score in docs.items():
        value = finite_float(score)
        if value is None:
            raise ValueError(f"query {qid}: the score of {docid} is not a finite number: {score!r}")
        scores[docid] = value
    return scores


def _check_level(level: int) -> None:
    """``ValueError`` unless ``level`` is an integer from 1 to the highest grade trec_eval
    holds: trec_eval's ``-l`` takes lower ones, but pytrec_eval refuses 0 and gives every
    binary metric 0 for a negative level."""
    high = GRADE_RANGE[1]
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= high:
        raise ValueError(
            f"the relevance level must be an integer from 1 to {high} (pytrec_eval takes no "
            f"lower one), got {level!r}"
        )


def int_grades(qid: str, judged: Mapping[str, int]) -> dict[str, int]:
    """``judged`` with Python int grades (numpy's, or whole floats, fail in pytrec_eval);
    ``ValueError`` naming a grade that is not a whole number trec_eval holds."""
    grades: dict[str, int] = {}
    low, high = GRADE_RANGE
    for docid, grade in judged.items():
        value = finite_float(grade)
        if isinstance(grade, bool) or value is None or not value.is_integer():
            raise ValueError(f"query {qid}: the grade of {docid} is not an integer: {grade!r}")
        if not low <= value <= high:
            raise ValueError(f"query {qid}: the grade of {docid} is out of range: {grade!r}")
        grades[docid] = int(value)
    return grades


def _warn(queries: tuple[str, ...], what: str) -> None:
    if queries:
        logger.warning("%d %s: %s", len(queries), what, listed(queries, 10))


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_level: int = RELEVANCE_LEVEL,
    missing_as_zero: bool = False,
) -> Evaluation:
    """Evaluate ``run`` (``{qid: {docid: score}}``) against ``qrels``.

    Scores may be any real numbers (numpy's too) but must be finite; grades whole numbers
    (numpy's too). A query without documents is absent from the run, as in a TREC run file,
    and one without judgements is absent from the qrels. Queries in only one of the two
    are logged as warnings and reported in the result.
    """
    parsed = parse_metrics(metrics)
    _check_level(relevance_level)
    qrels = {qid: int_grades(qid, judged) for qid, judged in qrels.items() if judged}
    ranked_qids = [qid for qid, docs in run.items() if docs]
    missing = tuple(sorted(set(qrels).difference(ranked_qids)))
    unjudged = tuple(sorted(set(ranked_qids) - set(qrels)))
    common = [qid for qid in ranked_qids if qid in qrels]
    if not common:
        raise ValueError("the run and the qrels have no query in common")
    treatment = "counted as 0" if missing_as_zero else "left out of the mean"
    _warn(missing, f"judged queries are missing from the run ({treatment})")
    _warn(unjudged, "run queries have no judgements and are not evaluated")
    judged = {qid: qrels[qid] for qid in common}
    ranked = {qid: _float_scores(qid, run[qid]) for qid in common}

    results: dict[str, dict[str, float]] = {qid: {} for qid in common}
    cut = [m for m in parsed if m.family != "mrr"]
    if cut:
        for qid, values in _scores(
            ranked, judged, {m.measure for m in cut}, relevance_level
        ).items():
            results[qid].update({m.name: values[m.key] for m in cut})
    for metric in (m for m in parsed if m.family == "mrr"):
        top = {
            qid: {d: docs[d] for d in trec_order(docs)[: metric.cutoff]}
            for qid, docs in ranked.items()
        }
        for qid, values in _scores(top, judged, {metric.measure}, relevance_level).items():
            results[qid][metric.name] = values[metric.key]
    if missing_as_zero:
        results.update({qid: {m.name: 0.0 for m in parsed} for qid in missing})
    names = tuple(m.name for m in parsed)
    mean = {name: sum(v[name] for v in results.values()) / len(results) for name in names}
    return Evaluation(names, results, mean, relevance_level, missing, unjudged, missing_as_zero)
