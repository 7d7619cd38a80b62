"""The uniform result of ranking one query's passages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

_LOWEST_SCORE = np.float32(-(2.0**127))


@dataclass(frozen=True)
class Cost:
    """What a ranking took: forward passes, sequential steps and prompt tokens, and how many
    passages the prompt budget cut.

    ``windows`` counts the windows judged (one forward pass each, two when the reranker scores
    both orders); ``steps`` counts the rounds of windows that had to wait for an earlier round
    (windows of one step can run in one batch); ``tokens`` sums the tokens of every prompt
    scored. ``truncated_passages`` counts, over every prompt scored, the passages shortened to
    fit ``max_prompt_tokens`` (a passage cut in two prompts counts twice; the
    ``max_passage_words`` cut, a setting, is not counted).
    """

    windows: int = 0
    steps: int = 0
    tokens: int = 0
    truncated_passages: int = 0


@dataclass(frozen=True)
class Ranking:
    """A permutation of the input passages with one score per passage.

    ``order[r]`` is the input index of the passage ranked ``r`` (0 = most relevant).
    ``scores[r]`` is that passage's score: the readout's value it received in the last window
    that placed it (its label logit, or its vote logit with a vote template; with
    ``both_orders`` the mean of its two label log-probabilities or votes), capped at the
    score of the passage ranked above it, so scores never increase down the ranking.
    ``logits[r]`` is that value uncapped. A blank passage, which no window showed, takes the
    lowest score and the lowest logit of the others (0.0 where there are none).
    Scores from one window are directly comparable; across windows and queries they
    are a heuristic (logits of a FIRST model, not probabilities).

    ``unranked`` is how many positions at the bottom no window ordered: those the strategy
    left in first-stage order (their input indices ascend), then the ``blank`` passages, which
    no window shows, at the very bottom (in input order too); the first :attr:`depth`
    positions are in the model's order.
    """

    order: tuple[int, ...]
    scores: tuple[float, ...]
    logits: tuple[float, ...]
    unranked: int = 0
    cost: Cost = field(default_factory=Cost)
    blank: int = 0

    def __post_init__(self) -> None:
        n = len(self.order)
        if sorted(self.order) != list(range(n)):
            raise ValueError(f"order is not a permutation of range({n}): {self.order}")
        if len(self.scores) != n or len(self.logits) != n:
            raise ValueError("order, scores and logits must have the same length")
        if any(a < b for a, b in zip(self.scores, self.scores[1:], strict=False)):
            raise ValueError("scores must not increase down the ranking")
        if not 0 <= self.unranked <= n:
            raise ValueError(f"unranked must be between 0 and {n}, got {self.unranked}")
        if not 0 <= self.blank <= self.unranked:
            raise ValueError(f"blank must be between 0 and unranked, got {self.blank}")
        kept = self.order[n - self.unranked : n - self.blank]
        if any(a > b for a, b in pairwise(kept)):
            raise ValueError("the unranked positions must keep first-stage (input) order")
        if any(a > b for a, b in pairwise(self.order[n - self.blank :])):
            raise ValueError("the blank passages must keep input order")

    def __len__(self) -> int:
        return len(self.order)

    @property
    def depth(self) -> int:
        """How many positions from the top the model ordered."""
        return len(self.order) - self.unranked

    @classmethod
    def from_logits(
        cls,
        order: Sequence[int],
        logits: Sequence[float],
        *,
        unranked: int = 0,
        cost: Cost | None = None,
    ) -> Ranking:
        """Build a ranking from a final order and each ranked passage's last logit."""
        scores: list[float] = []
        for value in logits:
            scores.append(value if not scores else min(value, scores[-1]))
        return cls(
            tuple(order),
            tuple(scores),
            tuple(float(v) for v in logits),
            unranked,
            cost or Cost(),
        )

    def score_of(self) -> dict[int, float]:
        """Map each input index to its score."""
        return dict(zip(self.order, self.scores, strict=True))

    def logit_of(self) -> dict[int, float]:
        """Map each input index to its raw logit."""
        return dict(zip(self.order, self.logits, strict=True))

    def distinct_scores(self) -> list[float]:
        """:attr:`scores` made strictly decreasing in float32, for consumers that sort by score.

        Each score is rounded to float32, or, where that is not below the score above it,
        set to the next float32 below that one; so a later sort or threshold keeps the
        engine's order exactly, even after a round trip through float32. Scores below
        ``-2**127`` (far below any logit) are raised to it first, so that the float32 steps
        below never run out.
        """
        distinct: list[float] = []
        previous: np.float32 | None = None
        for score in self.scores:
            if not math.isfinite(score):
                raise ValueError(f"the engine returned a non-finite score: {score}")
            value = max(np.float32(score), _LOWEST_SCORE)
            if previous is not None and value >= previous:
                value = np.nextafter(previous, np.float32(-np.inf))
            distinct.append(float(value))
            previous = value
        return distinct
