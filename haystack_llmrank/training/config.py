"""Settings of a training run: the one source of every :class:`TrainConfig` default (the CLI
reads them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from haystack_llmrank.training.adapters import LoraSettings
from haystack_llmrank.training.targets import WindowSampling

OBJECTIVES = ("first", "pointwise")
"""What a run trains: FIRST's listwise readout, or pointwise scores to warm up on."""

RanknetReduction = Literal["sum", "mean"]
"""How FIRST's weighted RankNet reduces a window's pairs: ``"sum"`` (FIRST's paper) or
``"mean"`` (FIRST's released code; :func:`~haystack_llmrank.training.losses.ranknet_scale`)."""
RANKNET_REDUCTIONS: tuple[RanknetReduction, ...] = get_args(RanknetReduction)


def _require_finite(values: Mapping[str, float | None], *, zero: bool) -> None:
    """Refuse each value (``None``: unset) that is not finite, negative, or 0 unless ``zero``."""
    bound = ">= 0" if zero else "above 0"
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
            raise ValueError(f"{name} must be a finite number {bound}, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. ``steps`` counts optimizer updates.

    ``objective`` ``"first"`` trains FIRST's loss on listwise windows. ``"pointwise"``
    scores each passage of a sampled window in a prompt of its own, by ``passage_vote``'s
    logit after a relevance question (:mod:`haystack_llmrank.training.pointwise`), and
    trains a pairwise RankNet over the window's target order: a warm start for FIRST
    training (``LoraSettings.init_from``). The window's input order, ``ranknet_weight``,
    ``ranknet_reduction`` and the LM loss do not apply to it: changing the first three from
    their defaults is an error. With ``"first"``, ``pointwise_weight`` adds that pointwise
    loss, over each window's passages, to FIRST's: the listwise readout then trains while
    the relevance a pointwise warm start taught is still trained too.
    """

    steps: int = 200
    stop_after: int | None = None
    """End this run after this update of the ``steps``-long schedule (checkpointed, so that
    ``resume`` with a later ``stop_after``, or none, goes on)."""
    max_minutes: float | None = None
    """End this run at the first update that finishes this many minutes or more after the
    run's first update began, validated and checkpointed as a last update is (``resume``
    goes on): a time budget of wall time, the validations and checkpoints between updates
    included (loading and update 0's validation not)."""
    objective: str = "first"
    grad_accumulation: int = 4
    batch_windows: int = 1
    """Windows per forward pass (padded to the longest); an update still has
    ``grad_accumulation`` windows, so this changes speed and memory, not the result."""
    learning_rate: float = 3e-4
    warmup_steps: int = 10
    """Updates of linear warm-up, fewer than ``steps``: the k-th runs at ``k / (warmup_steps
    + 1)`` of ``learning_rate``, the next one at ``learning_rate``."""
    min_lr_ratio: float = 0.1
    """The share of ``learning_rate`` that the cosine decay after warm-up ends at: the rate
    of update ``steps``, the last (of a decay over at least two updates)."""
    ranknet_weight: float = 10.0
    ranknet_reduction: RanknetReduction = "sum"
    """Reduction of the weighted RankNet over a window's pairs, for the label RankNet and
    the passage RankNet alike: ``"sum"``, or ``"mean"`` (the sum over ``n (n - 1) / 2``
    pairs, as FIRST's released code trains, there with ``ranknet_weight`` 10)."""
    passage_ranknet_weight: float = 0.0
    passage_vote: str | None = None
    """With ``passage_ranknet_weight``: the token whose logit at the end of each passage line
    scores that passage (one token shared by all, e.g. ``" yes"``); ``None`` scores each
    passage by its own label's logit there. The pointwise objective and ``pointwise_weight``
    score by it too."""
    pointwise_weight: float = 0.0
    """With the ``"first"`` objective: the weight of the pointwise loss (the ``"pointwise"``
    objective's, over each window's passages) added to FIRST's loss; needs ``passage_vote``."""
    max_grad_norm: float = 1.0
    seed: int = 0
    max_passage_words: int = 64
    max_prompt_tokens: int = 2048
    eval_every: int = 25
    checkpoint_every: int = 25
    validation_depth: int = 20
    validation_passage_words: int | None = None
    """Words per passage when validating; ``None``: ``max_passage_words``, the length the
    saved model is read at (its template records it)."""
    sampling: WindowSampling = field(default_factory=WindowSampling)
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "grad_accumulation": self.grad_accumulation,
            "batch_windows": self.batch_windows,
            "max_passage_words": self.max_passage_words,
            "max_prompt_tokens": self.max_prompt_tokens,
            "eval_every": self.eval_every,
            "checkpoint_every": self.checkpoint_every,
            "validation_depth": self.validation_depth,
            "validation_passage_words": self.validation_words,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ValueError(
                f"stop_after must be in [1, steps={self.steps}], got {self.stop_after}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"warmup_steps (--warmup-steps) must be in [0, steps={self.steps}), got "
                f"{self.warmup_steps}: the rate reaches learning_rate only after warm-up"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (--seed), got {self.seed}")
        rates = {
            "learning_rate": self.learning_rate,
            "max_grad_norm": self.max_grad_norm,
            "max_minutes": self.max_minutes,
        }
        _require_finite(rates, zero=False)
        weights = {
            "ranknet_weight": self.ranknet_weight,
            "passage_ranknet_weight": self.passage_ranknet_weight,
            "pointwise_weight": self.pointwise_weight,
        }
        _require_finite(weights, zero=True)
        if self.grad_accumulation % self.sampling.group_size:
            raise ValueError(
                "mirrored windows come in pairs: grad_accumulation must be even, "
                f"got {self.grad_accumulation}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.ranknet_reduction not in RANKNET_REDUCTIONS:
            raise ValueError(
                f"ranknet_reduction must be one of {RANKNET_REDUCTIONS}, "
                f"got {self.ranknet_reduction!r}"
            )
        if self.objective == "pointwise":
            self._check_pointwise()
        elif self.passage_vote is None and self.pointwise_weight > 0:
            raise ValueError("pointwise_weight scores passages by passage_vote; set it")
        elif self.passage_vote is not None and not (
            self.passage_ranknet_weight > 0 or self.pointwise_weight > 0
        ):
            raise ValueError(
                "passage_vote is used only with a positive passage_ranknet_weight or "
                "pointwise_weight"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def _check_pointwise(self) -> None:
        if self.passage_vote is None:
            raise ValueError("objective 'pointwise' scores passages by passage_vote; set it")
        refused = {
            "passage_ranknet_weight": self.passage_ranknet_weight > 0,
            "pointwise_weight": self.pointwise_weight > 0,
            "mirrored sampling": self.sampling.mirrored,
            "batch_windows > 1": self.batch_windows > 1,
        }
        for name, given in refused.items():
            if given:
                raise ValueError(f"{name} applies to FIRST windows, not to objective 'pointwise'")
        # each passage is scored alone and the pairwise RankNet is the whole loss
        unused = {
            "ranknet_weight": self.ranknet_weight != TrainConfig.ranknet_weight,
            "ranknet_reduction": self.ranknet_reduction != TrainConfig.ranknet_reduction,
            "the input order (orders, with their weights)": (
                self.sampling.orders,
                self.sampling.order_weights,
            )
            != (WindowSampling.orders, WindowSampling.order_weights),
        }
        for name, changed in unused.items():
            if changed:
                raise ValueError(
                    f"{name} has no effect with objective 'pointwise', which scores each "
                    "passage in a prompt of its own with one loss; leave it at its default"
                )

    @property
    def last_step(self) -> int:
        """The update this run ends at: ``stop_after``, else ``steps``."""
        return self.steps if self.stop_after is None else self.stop_after

    @property
    def validation_words(self) -> int:
        """Words per passage when validating: ``validation_passage_words``, else
        ``max_passage_words``."""
        return self.validation_passage_words or self.max_passage_words

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)
