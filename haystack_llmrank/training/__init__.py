"""FIRST fine-tuning: windows with target rankings, the loss, and a resumable trainer."""

from haystack_llmrank.training.adapters import LoraSettings, save_trained
from haystack_llmrank.training.encoding import EncodedWindow, WindowEncoder
from haystack_llmrank.training.losses import weighted_ranknet
from haystack_llmrank.training.targets import (
    TrainingQuery,
    TrainingWindow,
    WindowSampling,
    training_queries,
)
from haystack_llmrank.training.trainer import (
    FirstTrainer,
    StepReport,
    TrainConfig,
    Validation,
    window_losses,
)

__all__ = [
    "EncodedWindow",
    "FirstTrainer",
    "LoraSettings",
    "StepReport",
    "TrainConfig",
    "TrainingQuery",
    "TrainingWindow",
    "Validation",
    "WindowEncoder",
    "WindowSampling",
    "save_trained",
    "training_queries",
    "weighted_ranknet",
    "window_losses",
]
