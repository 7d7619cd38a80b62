"""Backends that turn prompt token ids into label logits."""

from haystack_llmrank.scorers.base import LabelScorer

__all__ = ["LabelScorer"]
