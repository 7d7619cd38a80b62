"""llmrank: single-token listwise LLM reranking (FIRST) for search stacks.

The engine (:class:`Reranker`) knows nothing of Haystack; the Haystack component is
imported lazily as :class:`FirstListwiseRanker`.
"""

from typing import Any

from haystack_llmrank.errors import (
    ClosedError,
    LabelResolutionError,
    LlmRankError,
    ModelResolutionError,
    PromptTooLongError,
    WindowTooLargeError,
)
from haystack_llmrank.labels import LabelIds, resolve_label_ids
from haystack_llmrank.prompt import FIRST_TEMPLATE, PromptBuilder, PromptTemplate
from haystack_llmrank.ranking import Cost, Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import (
    STRATEGIES,
    Disjoint,
    SlidingWindow,
    Strategy,
    TopDownPartition,
    Tournament,
    make_strategy,
    readout_strategy,
)

__all__ = [
    "FIRST_TEMPLATE",
    "STRATEGIES",
    "ClosedError",
    "Cost",
    "Disjoint",
    "FirstListwiseRanker",
    "LabelIds",
    "LabelResolutionError",
    "LlmRankError",
    "ModelResolutionError",
    "PromptBuilder",
    "PromptTemplate",
    "PromptTooLongError",
    "Ranking",
    "Reranker",
    "SlidingWindow",
    "Strategy",
    "TopDownPartition",
    "Tournament",
    "WindowTooLargeError",
    "make_strategy",
    "readout_strategy",
    "resolve_label_ids",
]


def __getattr__(name: str) -> Any:
    if name == "FirstListwiseRanker":
        try:
            from haystack_llmrank.components.ranker import FirstListwiseRanker
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "haystack":
                raise
            raise ModuleNotFoundError(
                f"{exc}; FirstListwiseRanker needs the haystack extra: "
                "pip install 'llmrank[haystack]'",
                name=exc.name,
            ) from exc
        return FirstListwiseRanker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
