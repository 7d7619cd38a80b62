"""FIRST fine-tuning: windows with target rankings, the losses, and a resumable trainer.

Names are imported from their modules on first use, so reading the settings
(:class:`TrainConfig`, :class:`WindowSampling`, :class:`LoraSettings`) loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haystack_llmrank.training.adapters import LoraSettings, save_trained
    from haystack_llmrank.training.config import TrainConfig
    from haystack_llmrank.training.encoding import EncodedWindow, WindowEncoder
    from haystack_llmrank.training.listwise import WindowLosses, batch_losses, window_losses
    from haystack_llmrank.training.losses import (
        chance_ranknet,
        pairwise_ranknet,
        weighted_ranknet,
    )
    from haystack_llmrank.training.pointwise import PointwiseScorer
    from haystack_llmrank.training.targets import (
        TrainingQuery,
        TrainingWindow,
        WindowSampling,
        training_queries,
    )
    from haystack_llmrank.training.trainer import FirstTrainer, StepReport, Validation

_MODULES = {
    "LoraSettings": "adapters",
    "save_trained": "adapters",
    "TrainConfig": "config",
    "EncodedWindow": "encoding",
    "WindowEncoder": "encoding",
    "chance_ranknet": "losses",
    "pairwise_ranknet": "losses",
    "PointwiseScorer": "pointwise",
    "weighted_ranknet": "losses",
    "TrainingQuery": "targets",
    "TrainingWindow": "targets",
    "WindowSampling": "targets",
    "training_queries": "targets",
    "FirstTrainer": "trainer",
    "StepReport": "trainer",
    "Validation": "trainer",
    "WindowLosses": "listwise",
    "batch_losses": "listwise",
    "window_losses": "listwise",
}

__all__ = [
    "EncodedWindow",
    "FirstTrainer",
    "LoraSettings",
    "PointwiseScorer",
    "StepReport",
    "TrainConfig",
    "TrainingQuery",
    "TrainingWindow",
    "Validation",
    "WindowEncoder",
    "WindowLosses",
    "WindowSampling",
    "batch_losses",
    "chance_ranknet",
    "pairwise_ranknet",
    "save_trained",
    "training_queries",
    "weighted_ranknet",
    "window_losses",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
