"""The uniform result of ranking one query's passages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranking:
    """A permutation of the input passages with one score per passage.

    ``order[r]`` is the input index of the passage ranked ``r`` (0 = most relevant).
    ``scores[r]`` is that passage's score: the label logit it received in the last window
    that placed it, capped at the score of the passage ranked above it, so scores never
    increase down the ranking. ``logits[r]`` is the uncapped label logit.
    Scores from one window are directly comparable; across windows and queries they
    are a heuristic (logits of a FIRST model, not probabilities).
    """

    order: tuple[int, ...]
    scores: tuple[float, ...]
    logits: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.order)
        if sorted(self.order) != list(range(n)):
            raise ValueError(f"order is not a permutation of range({n}): {self.order}")
        if len(self.scores) != n or len(self.logits) != n:
            raise ValueError("order, scores and logits must have the same length")
        if any(a < b for a, b in zip(self.scores, self.scores[1:], strict=False)):
            raise ValueError("scores must not increase down the ranking")

    def __len__(self) -> int:
        return len(self.order)

    @classmethod
    def from_logits(cls, order: Sequence[int], logits: Sequence[float]) -> Ranking:
        """Build a ranking from a final order and each ranked passage's last logit."""
        scores: list[float] = []
        for value in logits:
            scores.append(value if not scores else min(value, scores[-1]))
        return cls(tuple(order), tuple(scores), tuple(float(v) for v in logits))

    def score_of(self) -> dict[int, float]:
        """Map each input index to its score."""
        return dict(zip(self.order, self.scores, strict=True))
