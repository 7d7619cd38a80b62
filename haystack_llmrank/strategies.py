"""Which windows are scored, in what order, and how their logits reorder a query's list."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from haystack_llmrank.ranking import Ranking

Window = tuple[int, int]


@dataclass(frozen=True)
class SlidingWindow:
    """FIRST's sliding window: ``window_size`` wide, moving up by ``step`` from the bottom.

    Windows are half-open position ranges over the current order. The first covers the last
    ``window_size`` positions; each next one starts ``step`` higher; the last one starts at 0.
    A list no longer than the window is ranked in one window.
    """

    window_size: int = 20
    step: int = 10

    def __post_init__(self) -> None:
        if self.window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {self.window_size}")
        if not 1 <= self.step <= self.window_size:
            raise ValueError(
                f"step must be between 1 and window_size ({self.window_size}), got {self.step}"
            )

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


class WindowedRun:
    """The state of one query while its windows run one after another."""

    def __init__(self, size: int, windows: Sequence[Window]) -> None:
        self.order = list(range(size))
        self._last_logit = [math.nan] * size
        self._pending: deque[Window] = deque(windows)

    @property
    def done(self) -> bool:
        """True once every window has been applied."""
        return not self._pending

    def next_members(self) -> list[int]:
        """Input indices of the passages in the next window, in current order."""
        start, end = self._pending[0]
        return self.order[start:end]

    def apply(self, logits: npt.NDArray[np.float32]) -> None:
        """Reorder the next window by descending logit; equal logits keep their order."""
        start, end = self._pending[0]
        members = self.order[start:end]
        values = [float(v) for v in logits[: len(members)]]
        if len(values) != len(members) or any(math.isnan(v) for v in values):
            raise ValueError(f"expected {len(members)} finite label logits, got {values}")
        ranked = sorted(range(len(members)), key=lambda i: -values[i])
        self.order[start:end] = [members[i] for i in ranked]
        for i, value in zip(members, values, strict=True):
            self._last_logit[i] = value
        self._pending.popleft()

    def result(self) -> Ranking:
        """The final ranking (call once :attr:`done`)."""
        if not self.done:
            raise RuntimeError("windows are still pending")
        return Ranking.from_logits(self.order, [self._last_logit[i] for i in self.order])


def run_windows(
    runs: Sequence[WindowedRun],
    score_next: Callable[[Sequence[WindowedRun]], Sequence[npt.NDArray[np.float32]]],
    *,
    batch_size: int,
    on_window: Callable[[int], None] | None = None,
) -> None:
    """Advance every run to completion, ``batch_size`` windows of different runs at a time.

    Runs wait in a queue; each step takes the next window of up to ``batch_size`` runs,
    scores them together, and puts each run back at the end of the queue if it has more
    windows, so a query's next window is scheduled as soon as its previous one is done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    queue = deque(run for run in runs if not run.done)
    while queue:
        step = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
        for run, logits in zip(step, score_next(step), strict=True):
            run.apply(logits)
            if not run.done:
                queue.append(run)
        if on_window is not None:
            on_window(len(step))
