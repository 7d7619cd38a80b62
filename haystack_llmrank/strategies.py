"""Which windows are scored, in what order, and how their logits reorder a query's list.

A strategy plans one query as a generator (:data:`Plan`): it yields a *step*, the windows
that can be scored together (each a list of input indices, in prompt order), is sent their
label logits, and returns the final order and how many positions at the bottom it left in
first-stage order. :class:`QueryRun` drives one query; :func:`run_windows` drives many,
scoring whole steps of several queries in one call.

- :class:`SlidingWindow` (``"sliding"``): FIRST's window moving up from the bottom; every
  window waits for the one before it.
- :class:`TopDownPartition` (``"tdpart"``): a pivot from the top window, every other passage
  judged against it in parallel, then the passages above it ranked: at most 3 steps a round.
- :class:`Tournament` (``"tournament"``): disjoint windows in one step, then windows over
  their winners: 2 steps for up to ``window_size ** 2`` passages.
- :class:`Disjoint` (``"disjoint"``): disjoint windows in one step, every passage ranked by
  its own logit; for readouts whose logits compare across windows (a template's vote).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from haystack_llmrank.checks import check_positive, is_whole
from haystack_llmrank.ranking import Cost, Ranking

Window = tuple[int, int]
"""A half-open range of positions in the current order (sliding window)."""
Step = list[list[int]]
"""Windows that can be scored together: each a list of input indices, in prompt order."""
Verdicts = list[list[float]]
"""The label logits of each window of a step, one per member, in prompt order."""
Outcome = tuple[list[int], int]
"""The final order (input indices) and how many bottom positions keep first-stage order."""
Plan = Generator[Step, Verdicts, Outcome]
"""A strategy's plan for one query."""
WindowScorer = Callable[[Sequence[tuple[int, Sequence[int]]]], Sequence[npt.NDArray[np.float32]]]
"""Label logits of windows given as (position of the run, input indices of the members)."""

STRATEGIES = ("sliding", "tdpart", "tournament", "disjoint")
"""The strategy names :func:`make_strategy` knows."""
DEFAULT_WINDOW_SIZE = 20
"""Passages per window, FIRST's: the default of every strategy, the CLI and the adapters."""
DEFAULT_STEP = 10
"""How far the sliding window moves, FIRST's."""


class Strategy(Protocol):
    """Plans the windows that rank one query's passages."""

    @property
    def name(self) -> str:
        """The strategy's name in :data:`STRATEGIES`."""
        ...

    @property
    def window_size(self) -> int:
        """The most passages in one window."""
        ...

    def plan(self, n: int, top_k: int | None = None) -> Plan:
        """The plan that ranks ``n`` passages when only the first ``top_k`` matter."""
        ...

    def max_windows(self, n: int, top_k: int | None = None) -> int:
        """The most windows :meth:`plan` can take for these arguments."""
        ...


def check_top_k(top_k: int | None) -> int | None:
    """``top_k`` as an ``int`` (numpy integers too), or ``ValueError`` unless it is ``None``
    or a positive integer."""
    return check_positive("top_k", top_k)


def rank_members(members: Sequence[int], values: Sequence[float]) -> list[int]:
    """``members`` by descending value; equal values keep their order."""
    ranked = sorted(range(len(members)), key=lambda i: -values[i])
    return [members[i] for i in ranked]


def split_evenly(items: Sequence[int], parts: int) -> list[list[int]]:
    """``items`` cut into ``parts`` consecutive runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        runs.append(list(items[start:end]))
        start = end
    return runs


def deal(items: Sequence[int], window_size: int) -> list[list[int]]:
    """``items`` dealt like cards into the fewest windows of at most ``window_size``: the
    first to the first window, the second to the second... Reversed ``items`` deal each
    window the same items in reverse."""
    count = math.ceil(len(items) / window_size)
    return [list(items[i::count]) for i in range(count)]


def _check_integer(name: str, value: int) -> None:
    """``ValueError`` unless ``value`` is an integer (numpy's too, not a bool)."""
    if not is_whole(value, least=None):
        raise ValueError(f"{name} must be an integer, got {value!r}")


def _check_window_size(window_size: int, least: int) -> None:
    _check_integer("window_size", window_size)
    if window_size < least:
        why = " (one passage a window orders nothing)" if window_size == 1 else ""
        raise ValueError(f"window_size must be at least {least}, got {window_size}{why}")


@dataclass(frozen=True, init=False)
class SlidingWindow:
    """FIRST's sliding window: ``window_size`` wide, moving up by ``step`` from the bottom.

    Windows are half-open position ranges over the current order. The first covers the last
    ``window_size`` positions; each next one starts ``step`` higher; the last one starts at 0.
    A list no longer than the window is ranked in one window. Every window waits for the one
    before it; ``top_k`` changes nothing. A judge that gives each passage one fixed logit gets
    the top ``window_size - step`` positions exactly right. ``window_size`` is at least 2
    (one passage a window orders nothing). ``step`` defaults to :func:`default_step`; it must
    be below ``window_size`` (windows that do not overlap leave every passage in its block:
    that is :class:`Disjoint`'s job).
    """

    name: ClassVar[str] = "sliding"
    window_size: int
    step: int

    def __init__(self, window_size: int = DEFAULT_WINDOW_SIZE, step: int | None = None) -> None:
        _check_window_size(window_size, 2)
        step = default_step(window_size) if step is None else step
        _check_integer("step", step)
        most = window_size - 1
        if not 1 <= step <= most:
            raise ValueError(
                f"step must be between 1 and {most} for window_size ({window_size}), got {step}"
            )
        object.__setattr__(self, "window_size", window_size)
        object.__setattr__(self, "step", step)

    def windows(self, n: int) -> list[Window]:
        """The windows that rank ``n`` passages, in the order they run."""
        if n < 0:
            raise ValueError(f"cannot rank {n} passages")
        plan: list[Window] = []
        end = n
        while n:
            start = max(0, end - self.window_size)
            plan.append((start, end))
            if start == 0:
                break
            end -= self.step
        return plan

    def plan(self, n: int, top_k: int | None = None) -> Plan:
        """One window at a time, bottom up; the model orders every position."""
        order = list(range(n))
        for start, end in self.windows(n):
            members = order[start:end]
            (values,) = yield [members]
            order[start:end] = rank_members(members, values)
        return order, 0

    def max_windows(self, n: int, top_k: int | None = None) -> int:
        """Exactly ``len(windows(n))``."""
        return len(self.windows(n))


RoundPlan = Generator[Step, Verdicts, tuple[list[int], list[int]]]
"""One round over a list: returns the positions it ranked and the rest in first-stage order."""


def _rounds(n: int, top_k: int | None, play: Callable[[list[int]], RoundPlan]) -> Plan:
    """Play rounds on what earlier rounds left, until ``top_k`` positions are ranked.

    Without ``top_k`` one round is played.
    """
    ranked: list[int] = []
    left = list(range(n))
    while left:
        prefix, left = yield from play(left)
        ranked += prefix
        if top_k is None or len(ranked) >= top_k:
            break
    return ranked + left, len(left)


def _count_rounds(n: int, top_k: int | None, play: Callable[[int], tuple[int, int]]) -> int:
    """Windows of :func:`_rounds` when ``play(size)`` gives (windows, fewest ranked)."""
    windows, ranked, left = 0, 0, n
    while left:
        spent, settled = play(left)
        windows, ranked, left = windows + spent, ranked + settled, left - settled
        if top_k is None or ranked >= top_k:
            break
    return windows


@dataclass(frozen=True)
class TopDownPartition:
    """Top-down partitioning with a pivot (TDPart; Parry, MacAvaney and Ganguly, SIGIR 2024).

    A round over a list longer than the window takes at most three steps:

    1. the top ``window_size`` passages are ranked; the one at the pivot rank (1-based)
       becomes the pivot, those above it candidates, those below it are left behind;
    2. every other passage is judged against the pivot, in windows of the pivot followed by
       up to ``window_size - 1`` passages, all in one step; a passage ranked above the pivot
       becomes a candidate (a tie keeps the pivot first);
    3. if step 2 found candidates, one window ranks the candidates, as many as fit: those
       of step 1 in their order, then the others by how far their logit rose above the
       pivot's in their window.

    The round's order is the candidates, the pivot, then what was left behind in first-stage
    order (unranked). Where the candidates do not fit one window, a riser left out may beat
    those of step 1 but none of the risers in it: the round ranks only the window's first
    ``window_size + 1 - pivot rank`` positions (as many as it holds risers) and leaves all
    else in first-stage order. (The paper partitions the candidates again instead, which
    takes more steps.) The pivot rank is ``pivot_rank``, by default half the window rounded
    up (10 of 20, as in the paper); with ``top_k`` it is ``top_k``, at most half the window,
    and rounds go on over what the round left until ``top_k`` positions are ranked. A round
    ranks at least the pivot rank's positions, and a judge that gives each passage one fixed
    logit gets every ranked position exactly right. A list no longer than the window is
    ranked in one window.
    """

    name: ClassVar[str] = "tdpart"
    window_size: int = DEFAULT_WINDOW_SIZE
    pivot_rank: int | None = None

    def __post_init__(self) -> None:
        _check_window_size(self.window_size, 2)
        half = self._half
        if self.pivot_rank is not None:
            _check_integer("pivot_rank", self.pivot_rank)
            if not 1 <= self.pivot_rank <= half:
                raise ValueError(f"pivot_rank must be between 1 and {half}, got {self.pivot_rank}")

    @property
    def _half(self) -> int:
        return (self.window_size + 1) // 2

    def _pivot_rank(self, top_k: int | None) -> int:
        if top_k is None:
            return self.pivot_rank or self._half
        return min(top_k, self._half)

    def plan(self, n: int, top_k: int | None = None) -> Plan:
        """Rounds of top-down partitioning (see the class docstring)."""
        rank = self._pivot_rank(top_k)
        return _rounds(n, top_k, lambda items: self._round(items, rank))

    def _round(self, items: list[int], pivot_rank: int) -> RoundPlan:
        width = self.window_size
        if len(items) <= width:
            (values,) = yield [items]
            return rank_members(items, values), []
        head, rest = items[:width], items[width:]
        (values,) = yield [head]
        ranked = rank_members(head, values)
        above, pivot, behind = ranked[: pivot_rank - 1], ranked[pivot_rank - 1], ranked[pivot_rank:]
        parts = split_evenly(rest, math.ceil(len(rest) / (width - 1)))
        verdicts = yield [[pivot, *part] for part in parts]
        risers: list[tuple[float, int]] = []
        for part, (bar, *judged) in zip(parts, verdicts, strict=True):
            for item, value in zip(part, judged, strict=True):
                if value > bar:
                    risers.append((value - bar, item))
                else:
                    behind.append(item)
        candidates = above + [item for _, item in sorted(risers, key=lambda r: (-r[0], r[1]))]
        if not risers or len(candidates) == 1:  # none rose, or one alone: it is first
            return [*candidates, pivot], sorted(behind)
        window = candidates[:width]
        (values,) = yield [window]
        ranked = rank_members(window, values)
        if len(candidates) <= width:
            return [*ranked, pivot], sorted(behind)
        # a riser left out may beat those of step 1, none of the window's risers
        known = width - len(above)
        return ranked[:known], sorted([*ranked[known:], *candidates[width:], pivot, *behind])

    def max_windows(self, n: int, top_k: int | None = None) -> int:
        """Rounds of 1 + ``ceil((size - window_size) / (window_size - 1))`` + 1 windows."""
        width, rank = self.window_size, self._pivot_rank(top_k)

        def play(size: int) -> tuple[int, int]:
            if size <= width:
                return 1, size
            return 2 + math.ceil((size - width) / (width - 1)), rank

        return _count_rounds(n, top_k, play)


@dataclass(frozen=True)
class Tournament:
    """Disjoint windows in one step, then windows over their winners.

    A round deals the list into the fewest windows of at most ``window_size`` passages, like
    cards (the first passage to the first window, the second to the second...), so that each
    window gets its share of the first-stage top. All are scored in one step, and the best of
    each go on, in first-stage order, until they fit in one window, which is ranked last.
    The windows share its seats out evenly, one more from some where that does not divide
    (at least 1 from each, at most ``top_k``): with windows of 20, 100 candidates send on 4
    from each of 5 windows, 60 candidates 7, 6 and 7. A judge that gives each passage one
    fixed logit gets as many first positions exactly right as the fewest any window lets go
    on.

    The order is the final window, then all the others in first-stage order (unranked).
    With ``top_k``, rounds go on over the others until ``top_k`` positions are ranked.

    Reversed input deals each window the same passages in reverse, so with
    ``Reranker(both_orders=True)`` the ranked positions do not depend on whether the list
    comes first to last or last to first, except where equal scores tie (ties keep input
    order).
    """

    name: ClassVar[str] = "tournament"
    window_size: int = DEFAULT_WINDOW_SIZE

    def __post_init__(self) -> None:
        _check_window_size(self.window_size, 2)

    def _keeps(self, sizes: Sequence[int], top_k: int | None) -> list[int]:
        """How many go on from each window that :func:`deal` made, given their ``sizes``:
        ``window_size`` shared out between them, at least 1 each, at most the window's size
        and ``top_k``.

        Where the share is uneven, one more goes on from some windows, each with its mirror
        (the window that reversed input deals the same passages), so that reversed input
        sends on the same passages. An odd remainder needs a window that is its own mirror;
        without one, one seat of the next window stays empty."""
        count = len(sizes)
        share, extra = divmod(self.window_size, count)
        mirror = [(sum(sizes) - 1 - i) % count for i in range(count)]
        alone = [i for i in range(count) if mirror[i] == i]
        more = set(alone[: extra % 2])
        for i in range(count):
            pair = {i, mirror[i]}
            if len(pair) == 2 and not pair & more and len(more) + 2 <= extra:
                more |= pair
        most = self.window_size if top_k is None else top_k
        return [max(1, min(share + (i in more), size, most)) for i, size in enumerate(sizes)]

    def plan(self, n: int, top_k: int | None = None) -> Plan:
        """Rounds of a tournament (see the class docstring)."""
        return _rounds(n, top_k, lambda items: self._round(items, top_k))

    def _round(self, items: list[int], top_k: int | None) -> RoundPlan:
        pool, out = items, []
        while len(pool) > self.window_size:
            groups = deal(pool, self.window_size)
            keeps = self._keeps([len(group) for group in groups], top_k)
            verdicts = yield groups
            winners: list[int] = []
            for group, values, keep in zip(groups, verdicts, keeps, strict=True):
                ranked = rank_members(group, values)
                winners += ranked[:keep]
                out += ranked[keep:]
            pool = sorted(winners)
        (values,) = yield [pool]
        return rank_members(pool, values), sorted(out)

    def max_windows(self, n: int, top_k: int | None = None) -> int:
        """Exactly the windows :meth:`plan` takes (they do not depend on the logits)."""

        def play(size: int) -> tuple[int, int]:
            windows = 1
            while size > self.window_size:
                sizes = [len(group) for group in deal(range(size), self.window_size)]
                windows += len(sizes)
                size = sum(self._keeps(sizes, top_k))
            return windows, size

        return _count_rounds(n, top_k, play)


@dataclass(frozen=True)
class Disjoint:
    """Disjoint windows in one step, then one order of all passages by their logits.

    The list is dealt like a tournament's first round (the first passage to the first
    window, the second to the second...) into the fewest windows of at most ``window_size``
    passages, all scored in one step, and every passage is ranked by the logit its window
    gave it; equal logits keep input order. That is ``ceil(n / window_size)`` windows, the
    fewest that judge every passage, and no window waits for another. It is only as good as
    logits of different windows are comparable: a vote readout (a template's ``vote``)
    scores each passage by the same token at its own line, whereas the FIRST readout's label
    logits compete within one window. A judge that gives each passage one fixed logit gets
    every position right; ``top_k`` changes nothing. Reversed input deals each window the
    same passages in reverse, as in :class:`Tournament`.
    """

    name: ClassVar[str] = "disjoint"
    window_size: int = DEFAULT_WINDOW_SIZE

    def __post_init__(self) -> None:
        _check_window_size(self.window_size, 1)

    def plan(self, n: int, top_k: int | None = None) -> Plan:
        """One step of disjoint windows, then every passage by its logit."""
        if n == 0:
            return [], 0
        groups = deal(range(n), self.window_size)
        verdicts = yield groups
        value = [0.0] * n
        for group, values in zip(groups, verdicts, strict=True):
            for item, logit in zip(group, values, strict=True):
                value[item] = logit
        return rank_members(list(range(n)), value), 0

    def max_windows(self, n: int, top_k: int | None = None) -> int:
        """Exactly ``ceil(n / window_size)``."""
        return math.ceil(n / self.window_size)


def readout_strategy(vote: str | None) -> str:
    """The strategy a readout ranks with when none is named: ``"disjoint"`` for a vote
    readout (each passage's vote compares across windows, so one step of disjoint windows
    judges every passage once), FIRST's ``"sliding"`` for label logits (``vote`` is None)."""
    return Disjoint.name if vote is not None else SlidingWindow.name


def default_step(window_size: int) -> int:
    """The sliding window's step for ``window_size``: as far as FIRST's 10 for 20 passages,
    half the window, at least 1."""
    return max(1, window_size * DEFAULT_STEP // DEFAULT_WINDOW_SIZE)


def check_step_applies(step: int | None, *names: str) -> None:
    """``ValueError`` for a ``step`` given where none of the strategies ``names`` slides (only
    the sliding window has a step), as it would be ignored."""
    if step is not None and SlidingWindow.name not in names:
        which = ", ".join(repr(name) for name in sorted(set(names)))
        raise ValueError(f"step applies to the sliding window only; strategy {which} has none")


def check_strategy_options(name: str | None, *, window_size: int | None, step: int | None) -> None:
    """Check a strategy's options before the template, and so the readout, is known: a
    named one fully (``window_size`` ``None`` taken as :data:`DEFAULT_WINDOW_SIZE` and
    ``step`` ``None`` as :func:`default_step`), any as far as every strategy needs
    (positive integers)."""
    check_positive("window_size", window_size)
    check_positive("step", step)
    if name is not None:
        size = DEFAULT_WINDOW_SIZE if window_size is None else window_size
        make_strategy(name, window_size=size, step=step)
        check_step_applies(step, name)


def make_strategy(
    name: str | None,
    *,
    window_size: int = DEFAULT_WINDOW_SIZE,
    step: int | None = None,
    vote: str | None = None,
) -> Strategy:
    """The strategy called ``name`` (see :data:`STRATEGIES`); ``step`` is the sliding window's
    (:func:`default_step` when ``None``). ``None`` is the readout's own
    (:func:`readout_strategy` of ``vote``)."""
    if name is None:
        name = readout_strategy(vote)
    if name == SlidingWindow.name:
        return SlidingWindow(window_size, step)
    if name == TopDownPartition.name:
        return TopDownPartition(window_size)
    if name == Tournament.name:
        return Tournament(window_size)
    if name == Disjoint.name:
        return Disjoint(window_size)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


class QueryRun:
    """One query's plan, driven a step at a time."""

    def __init__(self, strategy: Strategy, size: int, top_k: int | None = None) -> None:
        top_k = check_top_k(top_k)
        if size < 0:
            raise ValueError(f"cannot rank {size} passages")
        self._plan = strategy.plan(size, top_k)
        self._last_logit = [math.nan] * size
        self._windows = 0
        self._steps = 0
        self._outcome: Outcome | None = None
        self.pending: Step = []
        """The windows of the current step (empty once done)."""
        self._advance(None)

    def _advance(self, verdicts: Verdicts | None) -> None:
        try:
            step = next(self._plan) if verdicts is None else self._plan.send(verdicts)
        except StopIteration as stop:
            self._outcome = stop.value
            self.pending = []
            return
        if not step or not all(step):
            raise RuntimeError(f"the strategy planned an empty step or window: {step}")
        self.pending = step

    @property
    def done(self) -> bool:
        """True once the plan has finished."""
        return self._outcome is not None

    def apply(self, logits: Sequence[npt.NDArray[np.float32]]) -> None:
        """Give the label logits of each pending window (in order) and plan the next step."""
        if len(logits) != len(self.pending):
            raise ValueError(f"expected logits of {len(self.pending)} windows, got {len(logits)}")
        verdicts: Verdicts = []
        for members, row in zip(self.pending, logits, strict=True):
            values = [float(v) for v in row[: len(members)]]
            if len(values) != len(members) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"expected {len(members)} finite label logits, got {values}")
            for i, value in zip(members, values, strict=True):
                self._last_logit[i] = value
            verdicts.append(values)
        self._windows += len(self.pending)
        self._steps += 1
        self._advance(verdicts)

    def result(self, tokens: int = 0, truncated_passages: int = 0) -> Ranking:
        """The final ranking (call once :attr:`done`); ``tokens`` and ``truncated_passages``
        (what its prompts took and cut) go into its cost."""
        if self._outcome is None:
            raise RuntimeError("windows are still pending")
        order, unranked = self._outcome
        logits = [self._last_logit[i] for i in order]
        if any(math.isnan(v) for v in logits):
            raise RuntimeError("the strategy left passages that no window judged")
        return Ranking.from_logits(
            order,
            logits,
            unranked=unranked,
            cost=Cost(self._windows, self._steps, tokens, truncated_passages),
        )


def run_windows(
    runs: Sequence[QueryRun],
    score: WindowScorer,
    *,
    batch_size: int,
) -> None:
    """Advance every run to completion, scoring the steps of several runs in one call.

    Runs wait in a queue. A call takes the pending windows of the first run in the queue,
    then of the runs after it while the call holds at most ``batch_size`` windows; a run's
    step is never split, so one run alone may exceed ``batch_size``. ``score`` gets each
    window as (position of its run in ``runs``, members) and returns their label logits.
    A run with more steps goes back to the end of the queue, so a query's next step is
    scheduled as soon as its previous one is done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    queue = deque((position, run) for position, run in enumerate(runs) if not run.done)
    while queue:
        taken = [queue.popleft()]
        size = len(taken[0][1].pending)
        while queue and size + len(queue[0][1].pending) <= batch_size:
            taken.append(queue.popleft())
            size += len(taken[-1][1].pending)
        windows = [(position, members) for position, run in taken for members in run.pending]
        logits = score(windows)
        if len(logits) != len(windows):
            raise ValueError(f"expected logits of {len(windows)} windows, got {len(logits)}")
        offset = 0
        for position, run in taken:
            count = len(run.pending)
            run.apply(logits[offset : offset + count])
            offset += count
            if not run.done:
                queue.append((position, run))
