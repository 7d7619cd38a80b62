"""One prompt per window for every row: a :class:`PromptBuilder` that builds each window once."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from haystack_llmrank.prompt import FIRST_TEMPLATE, Prompt, PromptBuilder, PromptTemplate

WindowKey = tuple[str, tuple[str, ...]]
"""A window: the query and its passages' texts, in window order."""


def window_key(query: str, passages: Sequence[str]) -> WindowKey:
    """The cache key of a window."""
    return query, tuple(passages)


class CachedPromptBuilder(PromptBuilder):
    """Builds each window's prompt once and returns the same token ids afterwards.

    ``vocab_size`` folds token ids into a smaller vocabulary (``id % vocab_size``), for
    random-weight models whose vocabulary differs from the tokenizer's. Time spent building
    (cache misses) accumulates in :attr:`build_seconds`, so that timings can leave it out;
    :attr:`requested` lists every window asked for, in order.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: PromptTemplate = FIRST_TEMPLATE,
        *,
        max_prompt_tokens: int,
        cache: Mapping[WindowKey, Prompt] | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__(tokenizer, template, max_prompt_tokens=max_prompt_tokens)
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.cache: dict[WindowKey, Prompt] = dict(cache or {})
        self.vocab_size = vocab_size
        self.build_seconds = 0.0
        self.requested: list[WindowKey] = []

    def build(self, query: str, passages: Sequence[str]) -> Prompt:
        """The window's prompt, built on first request."""
        key = window_key(query, passages)
        self.requested.append(key)
        prompt = self.cache.get(key)
        if prompt is None:
            start = time.perf_counter()
            prompt = super().build(query, passages)
            if self.vocab_size is not None:
                size = self.vocab_size
                prompt = replace(prompt, token_ids=tuple(i % size for i in prompt.token_ids))
            self.cache[key] = prompt
            self.build_seconds += time.perf_counter() - start
        return prompt
