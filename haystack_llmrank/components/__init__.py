"""Haystack components."""

from haystack_llmrank.components.ranker import FirstListwiseRanker

__all__ = ["FirstListwiseRanker"]
