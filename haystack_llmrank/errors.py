"""Exceptions raised by the llmrank engine, and how their messages list what they name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def listed(items: Sequence[str], shown: int) -> str:
    """The first ``shown`` of ``items``, comma-separated, and how many more."""
    text = ", ".join(items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


class LlmRankError(Exception):
    """Base class of every error the engine raises on purpose."""


class PromptTooLongError(LlmRankError, ValueError):
    """A prompt cannot be held to its token budget: the instruction, the query and the answer
    prefix leave too little of it for the passages (fewer than
    :data:`~haystack_llmrank.prompt.MIN_PASSAGE_TOKENS` each, or none at all), or, in
    training, a pointwise prompt of one passage exceeds it.

    ``requests`` maps the position of each request refused for it to that request's own
    problem, in order, where
    :meth:`~haystack_llmrank.reranker.Reranker.rerank_many` refuses a batch; it is empty
    elsewhere."""

    def __init__(self, message: str, *, requests: Mapping[int, str] | None = None) -> None:
        super().__init__(message)
        self.requests: dict[int, str] = dict(requests or {})


class WindowTooLargeError(LlmRankError, ValueError):
    """A window holds more passages than the prompt has labels for."""


class LabelResolutionError(LlmRankError, ValueError):
    """A label has no single vocabulary token that decodes to it."""


class ModelResolutionError(LlmRankError, ValueError):
    """A model reference cannot be resolved to weights and a tokenizer."""


class NonFiniteLogitsError(LlmRankError, ValueError):
    """A scorer computed NaN or infinite label logits (an overflow), which rank nothing."""


class ClosedError(LlmRankError, RuntimeError):
    """A scorer or reranker was used after its ``close()`` released the model."""


class ExportError(LlmRankError, RuntimeError):
    """ONNX or ONNX Runtime failed while an export wrote or checked its graph (a full disk,
    say); the message names the step, and the original error is the cause."""
