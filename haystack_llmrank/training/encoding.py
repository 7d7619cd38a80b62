"""Turn a training window into token ids: the FIRST prompt followed by its target ranking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haystack_llmrank.prompt import PromptBuilder, check_line_end
from haystack_llmrank.training.targets import TrainingWindow


@dataclass(frozen=True)
class EncodedWindow:
    """Token ids of prompt + target, where the prompt ends, and the window's target order.

    The prompt ends with the answer prefix ``[``; the target continues it with the ranking
    string (``B] > [A] > [C]``) and the tokenizer's end-of-sequence token.
    """

    input_ids: tuple[int, ...]
    prompt_length: int
    target: tuple[int, ...]
    passage_ends: tuple[int, ...] = ()
    """Position of the last token of each passage line (empty unless the encoder finds them)."""

    @property
    def target_length(self) -> int:
        """How many target tokens follow the prompt."""
        return len(self.input_ids) - self.prompt_length


class WindowEncoder:
    """Encodes :class:`TrainingWindow` objects with the same prompts the reranker builds.

    With ``passage_ends``, each encoded window also records where every passage line ends,
    and a template whose lines do not close with a line break is refused at once
    (:func:`~haystack_llmrank.prompt.check_line_end`).
    """

    def __init__(
        self, tokenizer: Any, prompts: PromptBuilder, *, passage_ends: bool = False
    ) -> None:
        self._tokenizer = tokenizer
        self.prompts = prompts
        self._passage_ends = passage_ends
        if passage_ends:
            check_line_end(prompts.template.passage)
        end = tokenizer.eos_token_id
        if end is None:
            raise ValueError("the tokenizer has no end-of-sequence token to close the target")
        self._end = int(end)

    def target_text(self, window: TrainingWindow) -> str:
        """The ranking string after the prompt's answer prefix, e.g. ``B] > [A] > [C]``."""
        labels = self.prompts.template.labels
        text = " > ".join(f"[{labels[p]}]" for p in window.target)
        prefix = self.prompts.template.answer_prefix
        if not text.startswith(prefix):
            raise ValueError(f"the template's answer prefix {prefix!r} does not open a ranking")
        return text[len(prefix) :]

    def target_tokens(self, size: int) -> int:
        """Tokens the target of a window of ``size`` passages takes (its ranking string and
        the end token), the most over the ranking best-first and worst-first."""
        orders = (tuple(range(size)), tuple(reversed(range(size))))
        texts = [self.target_text(TrainingWindow("", "", ("",) * size, order)) for order in orders]
        lengths = [len(self._tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        return 1 + max(lengths)

    def encode(self, window: TrainingWindow) -> EncodedWindow:
        """Prompt ids (within the builder's token budget) plus target ids."""
        prompt = self.prompts.build(window.query, window.passages)
        target = self._tokenizer(self.target_text(window), add_special_tokens=False)["input_ids"]
        ids = (*prompt.token_ids, *(int(i) for i in target), self._end)
        ends: tuple[int, ...] | list[int] = ()
        if self._passage_ends:  # a vote template's prompt has found them already
            ends = prompt.score_positions or self.prompts.passage_end_tokens(
                prompt, window.query, len(window.passages)
            )
        return EncodedWindow(ids, len(prompt.token_ids), window.target, tuple(ends))
