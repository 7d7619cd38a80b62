"""Exceptions raised by the llmrank engine."""


class LlmRankError(Exception):
    """Base class of every error the engine raises on purpose."""


class PromptTooLongError(LlmRankError, ValueError):
    """The instruction, the query and the answer prefix alone exceed the token budget."""


class WindowTooLargeError(LlmRankError, ValueError):
    """A window holds more passages than the prompt has labels for."""


class LabelResolutionError(LlmRankError, ValueError):
    """A label has no single vocabulary token that decodes to it."""


class ModelResolutionError(LlmRankError, ValueError):
    """A model reference cannot be resolved to weights and a tokenizer."""


class NonFiniteLogitsError(LlmRankError, ValueError):
    """A scorer computed NaN or infinite label logits (an overflow), which rank nothing."""
