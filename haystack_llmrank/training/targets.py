"""Training windows: a query's candidates, their target order, and how windows are sampled.

A window's target ranking comes from graded relevance judgements; ties are broken by a
teacher's score, then by first-stage order. Windows vary in size and in input order, so
that a model cannot learn to copy the position it is given. Blank passages are left out, as
the rankers leave them out of their windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from haystack_llmrank.blank_passages import is_blank, split_blank
from haystack_llmrank.data import QueryCandidates
from haystack_llmrank.errors import listed
from haystack_llmrank.evaluation import int_grades

logger = logging.getLogger(__name__)

INPUT_ORDERS = ("first-stage", "reversed", "shuffled")
"""How a sampled window's passages may be laid out in the prompt."""


@dataclass(frozen=True)
class TrainingQuery:
    """A query with its candidates in first-stage order, their grades and teacher scores.

    ``grades[i]`` is the judged grade of candidate ``i`` (unjudged candidates take the grade
    given to :func:`training_queries`); ``teacher[i]`` is a teacher's score or ``nan``. A
    blank text (:func:`~haystack_llmrank.blank_passages.is_blank`) is refused: rankers show
    none to a window.
    """

    qid: str
    query: str
    texts: tuple[str, ...]
    grades: tuple[int, ...]
    teacher: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.texts)
        if len(self.grades) != n or len(self.teacher) != n:
            raise ValueError(f"query {self.qid}: texts, grades and teacher differ in length")
        blank = [str(i) for i, text in enumerate(self.texts) if is_blank(text)]
        if blank:
            raise ValueError(
                f"query {self.qid}: the texts at {listed(blank, 5)} are blank; rankers show "
                "no blank passage to a window, so none is trained on (training_queries "
                "leaves them out)"
            )

    def target_order(self, members: Sequence[int]) -> list[int]:
        """``members`` (candidate indices) best first: grade, then teacher score, then rank.

        Within a grade, passages the teacher did not score (NaN) follow the scored ones.
        """
        return sorted(members, key=self._key)

    def tied(self, first: int | None = None) -> bool:
        """Whether grades and teacher scores tell no two of the first ``first`` candidates
        (all where ``None``) apart, so that a target among them is first-stage order."""
        count = len(self.texts) if first is None else min(first, len(self.texts))
        return len({self._key(i)[:3] for i in range(count)}) == 1

    def _key(self, i: int) -> tuple[int, bool, float, int]:
        """Candidate ``i``'s sort key: grade (best first), unscored after scored, teacher
        score (best first), then first-stage rank."""
        teacher = self.teacher[i]
        unscored = math.isnan(teacher)
        return (-self.grades[i], unscored, 0.0 if unscored else -teacher, i)


@dataclass(frozen=True)
class TrainingWindow:
    """One prompt's worth of training data.

    ``passages`` are in prompt order; ``target[r]`` is the prompt position of the passage
    that should be ranked ``r`` (0 = most relevant).
    """

    qid: str
    query: str
    passages: tuple[str, ...]
    target: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.target) != list(range(len(self.passages))):
            raise ValueError("target must be a permutation of the window's positions")

    def reversed(self) -> TrainingWindow:
        """The same passages and target ranking with the prompt order reversed."""
        last = len(self.passages) - 1
        return TrainingWindow(
            self.qid,
            self.query,
            self.passages[::-1],
            tuple(last - p for p in self.target),
        )


def training_queries(
    queries: Sequence[QueryCandidates],
    *,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    teacher: Mapping[str, Mapping[str, float]] | None = None,
    unjudged_grade: int = 0,
) -> list[TrainingQuery]:
    """Join candidates with qrels and/or teacher scores.

    At least one of ``qrels`` and ``teacher`` is needed. Grades are whole numbers, as in
    TREC qrels (numpy's, or whole floats, too); a fractional one is refused, named by query
    and docid: real-valued scores belong in ``teacher``. A query with no judgement and no
    teacher score is an error, not a silent skip; so is one whose judgements and teacher
    scores name none of its candidates, or tell none of them apart (all one grade, no
    teacher score to break the tie): its target would be first-stage order. Qrels, or a
    teacher run, that name no candidate at all are refused too. Judged documents that are
    not among their query's candidates (judged, not retrieved), and queries whose teacher
    scores name none of their candidates (or that the teacher run lacks), are logged, as
    are queries of which it scores some candidates but not all: within a grade, an unscored
    candidate follows every scored one (:meth:`TrainingQuery.target_order`).

    Blank candidates (:func:`~haystack_llmrank.blank_passages.is_blank`) are left out, as
    rankers leave them out of their windows and rank them last; their count, and those
    judged relevant, are logged. The rules above then apply to the candidates with text: a
    query needs 2 of them.
    """
    if qrels is None and teacher is None:
        raise ValueError("training needs qrels, teacher scores, or both")
    joined: list[TrainingQuery] = []
    unmatched: list[str] = []
    tied: list[str] = []
    untaught: list[str] = []
    partly_taught: list[str] = []
    unjudged: list[str] = []
    blank_relevant: list[str] = []
    judged_count = absent = taught = blank_count = blank_queries = unscored = 0
    for query in queries:
        try:
            judged = int_grades(query.qid, (qrels or {}).get(query.qid, {}))
        except ValueError as exc:
            raise ValueError(
                f"{exc}; qrels grades are whole numbers, as in TREC qrels: give real-valued "
                "scores as teacher scores"
            ) from exc
        scored = (teacher or {}).get(query.qid, {})
        if not judged and not scored:
            raise ValueError(
                f"query {query.qid} has neither judgements nor teacher scores; "
                "drop it from the candidates or supply them"
            )
        judged_count += len(judged)
        absent += len(judged.keys() - {c.docid for c in query.candidates})
        kept, blank = split_blank([c.text for c in query.candidates])
        if len(kept) < 2:
            left_out = f" ({len(blank)} blank ones are left out)" if blank else ""
            raise ValueError(
                f"query {query.qid}: at least 2 candidates with text are needed to train{left_out}"
            )
        blank_count += len(blank)
        blank_queries += bool(blank)
        for i in blank:
            docid = query.candidates[i].docid
            if judged.get(docid, unjudged_grade) > 0:
                blank_relevant.append(f"{query.qid}/{docid}")
        candidates = [query.candidates[i] for i in kept]
        docids = {c.docid for c in candidates}
        matched = not docids.isdisjoint(scored)
        taught += matched
        if teacher is not None and not matched:
            untaught.append(query.qid)
        missed = len(docids - scored.keys())
        if matched and missed:
            unscored += missed
            partly_taught.append(f"{query.qid} ({missed} of {len(docids)})")
        if qrels is not None and not judged:
            unjudged.append(query.qid)
        training = TrainingQuery(
            query.qid,
            query.query,
            tuple(c.text for c in candidates),
            tuple(judged.get(c.docid, unjudged_grade) for c in candidates),
            tuple(float(scored.get(c.docid, float("nan"))) for c in candidates),
        )
        if docids.isdisjoint(judged) and not matched:
            unmatched.append(query.qid)
        elif training.tied():
            tied.append(query.qid)
        joined.append(training)
    if judged_count and absent == judged_count:
        raise ValueError(
            f"none of the {judged_count} judged documents is among its query's candidates: "
            "check that the docids of the qrels and the candidates agree (e.g. 'D123' "
            "against '123')"
        )
    if unmatched:
        raise ValueError(
            "queries whose judgements and teacher scores name none of their candidates, so "
            f"that their targets would be first-stage order: {listed(unmatched, 5)}; check "
            "that the docids of the qrels, the teacher run and the candidates agree (e.g. "
            "'D123' against '123'), or drop these queries"
        )
    if teacher is not None and not taught:
        raise ValueError(
            "the teacher run scores none of the training queries' candidates: check that "
            "the qids and docids of the teacher run and the candidates agree (e.g. 'D123' "
            "against '123')"
        )
    if tied:
        raise ValueError(
            "queries whose candidates are all of one grade, with no teacher score to tell "
            f"them apart, so that their targets would be first-stage order: {listed(tied, 5)}; "
            "judge a relevant candidate of each, give teacher scores, or drop these queries"
        )
    if blank_count:
        logger.warning(
            "%d blank candidates (empty or whitespace) of %d queries are left out of training, "
            "as rankers leave them out of their windows and rank them last%s",
            blank_count,
            blank_queries,
            f"; judged relevant among them: {listed(blank_relevant, 5)}" if blank_relevant else "",
        )
    if absent:
        logger.warning(
            "%d of %d judged documents are not among their query's candidates (judged but "
            "not retrieved); they are not trained on",
            absent,
            judged_count,
        )
    if unjudged:
        logger.warning(
            "%d of %d queries have no judgements in the qrels and are trained on teacher "
            "scores alone (check that the qids of the qrels and the candidates agree): %s",
            len(unjudged),
            len(joined),
            listed(unjudged, 5),
        )
    if untaught:
        logger.warning(
            "the teacher scores of %d queries name none of their candidates, so that their "
            "ties fall back to first-stage order: %s",
            len(untaught),
            listed(untaught, 5),
        )
    if partly_taught:
        logger.warning(
            "the teacher run leaves %d candidates of %d queries unscored; within a grade, "
            "each follows every candidate it scored (in first-stage order among the "
            "unscored): %s",
            unscored,
            len(partly_taught),
            listed(partly_taught, 5),
        )
    return joined


@dataclass(frozen=True)
class WindowSampling:
    """How windows are drawn.

    Sizes are uniform in ``[min_size, max_size]``. With probability ``contiguous`` the
    members are a run of neighbours in first-stage order (as a sliding window sees them),
    otherwise a uniform sample of the query's first ``pool`` candidates. The input order is
    drawn from ``orders`` with weights ``order_weights``. With ``mirrored``, every drawn
    window also comes in reversed prompt order (:meth:`sample_group`), so that in one update
    a preference for early (or late) positions gains as much as it loses and the gradient
    left is the one that ties labels to content.
    """

    min_size: int = 4
    max_size: int = 20
    pool: int = 100
    contiguous: float = 0.5
    orders: tuple[str, ...] = INPUT_ORDERS
    order_weights: tuple[float, ...] = (0.25, 0.25, 0.5)
    mirrored: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.min_size <= self.max_size:
            raise ValueError(
                f"window sizes need 2 <= min_size <= max_size, got {self.min_size}, {self.max_size}"
            )
        if self.pool < self.max_size:
            raise ValueError(
                f"pool ({self.pool}) is smaller than max_size ({self.max_size}): windows are "
                "drawn from the first pool candidates and could never be that large; raise "
                "pool or lower max_size"
            )
        if not 0.0 <= self.contiguous <= 1.0:
            raise ValueError(f"contiguous is a probability, got {self.contiguous}")
        unknown = set(self.orders) - set(INPUT_ORDERS)
        if unknown or not self.orders:
            raise ValueError(f"orders must be among {INPUT_ORDERS}, got {self.orders}")
        if len(self.order_weights) != len(self.orders) or not all(
            math.isfinite(w) and w >= 0 for w in self.order_weights
        ):
            raise ValueError(
                f"order_weights needs one finite, non-negative weight per order, got "
                f"{self.order_weights}"
            )
        if sum(self.order_weights) <= 0:
            raise ValueError("order_weights must not all be zero")

    def check_targets(self, queries: Sequence[TrainingQuery]) -> None:
        """Refuse queries whose first ``pool`` candidates, the only ones drawn, are all of
        one grade with no teacher score to tell them apart: every window's target would be
        first-stage order (their judged or scored candidates lie beyond the pool)."""
        tied = [query.qid for query in queries if query.tied(self.pool)]
        if tied:
            raise ValueError(
                f"queries whose first pool={self.pool} candidates, from which windows are "
                "drawn, are all of one grade with no teacher score to tell them apart, so "
                f"that their targets would be first-stage order: {listed(tied, 5)}; raise "
                "pool (--pool), give teacher scores, or drop these queries"
            )

    @property
    def group_size(self) -> int:
        """Windows per draw: 2 when ``mirrored``, else 1."""
        return 2 if self.mirrored else 1

    def size_range(self, query: TrainingQuery) -> tuple[int, int]:
        """The fewest and the most passages a window :meth:`sample` draws of ``query`` has."""
        available = min(self.pool, len(query.texts))
        return min(self.min_size, available), min(self.max_size, available)

    def sample_group(
        self, query: TrainingQuery, rng: np.random.Generator, largest: int | None = None
    ) -> list[TrainingWindow]:
        """One drawn window of ``query``, followed by its reverse when ``mirrored``."""
        window = self.sample(query, rng, largest)
        return [window, window.reversed()] if self.mirrored else [window]

    def sample(
        self, query: TrainingQuery, rng: np.random.Generator, largest: int | None = None
    ) -> TrainingWindow:
        """Draw one window of ``query``, of at most ``largest`` passages where given (the
        size is drawn as without it, then capped, so other queries' draws do not change)."""
        available = min(self.pool, len(query.texts))
        size = int(rng.integers(self.min_size, self.max_size + 1))
        size = min(size, available, largest or available)
        if rng.random() < self.contiguous:
            start = int(rng.integers(0, available - size + 1))
            members = list(range(start, start + size))
        else:
            members = sorted(int(i) for i in rng.choice(available, size=size, replace=False))
        weights = np.asarray(self.order_weights, dtype=float)
        order = self.orders[int(rng.choice(len(self.orders), p=weights / weights.sum()))]
        if order == "reversed":
            members.reverse()
        elif order == "shuffled":
            members = [members[int(i)] for i in rng.permutation(len(members))]
        position = {candidate: p for p, candidate in enumerate(members)}
        target = tuple(position[c] for c in query.target_order(members))
        return TrainingWindow(
            query.qid, query.query, tuple(query.texts[i] for i in members), target
        )
