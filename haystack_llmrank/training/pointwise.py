"""Pointwise relevance scores for training: one passage per prompt, read from one token's logit.

FIRST's readout asks a model to find the most relevant of up to 20 passages. A small base
may first have to learn what relevance is; judging one (query, passage) pair at a time, by
the logit of a vote token such as ``" yes"`` after a relevance question, is a simpler task
to warm up on, and the adapter it trains starts FIRST training (``LoraSettings.init_from``).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import torch

from haystack_llmrank.errors import PromptTooLongError
from haystack_llmrank.prompt import control_strings, defuse, normalize_query
from haystack_llmrank.training.adapters import causal_lm, plain_output_head

POINTWISE_PROMPT = "Query: {query}\nPassage: {text}\nIs the passage relevant to the query? Answer:"
"""The prompt of one (query, passage) pair; its score is the vote token's logit next."""


class PointwiseScorer:
    """Scores (query, passage) pairs by the logit of ``vote_id`` after :data:`POINTWISE_PROMPT`.

    Passages are cut at ``max_passage_words`` words; a prompt longer than
    ``max_prompt_tokens`` tokens is an error. The query and passages are defused as in
    ranking prompts (:func:`~haystack_llmrank.prompt.defuse`). Each (query, passage) pair is
    tokenised once: its ids are kept for the scorer's life, as training checks every
    candidate's prompt before the first update and then scores the same prompts again.
    """

    def __init__(
        self, tokenizer: Any, vote_id: int, *, max_passage_words: int, max_prompt_tokens: int
    ) -> None:
        self._tokenizer = tokenizer
        self._controls = control_strings(tokenizer)
        self.vote_id = vote_id
        self.max_passage_words = max_passage_words
        self.max_prompt_tokens = max_prompt_tokens
        # the ids of each (query, passage) prompt within the budget, 4 bytes a token
        self._encoded: dict[tuple[str, str], array[int]] = {}

    def encode(self, query: str, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids of each passage's prompt."""
        encoded: list[tuple[int, ...]] = []
        for text in texts:
            ids = self._encoded.get((query, text))
            if ids is None:
                ids = self._tokenize(query, text)
                self._encoded[query, text] = ids
            encoded.append(tuple(ids))
        return encoded

    def _tokenize(self, query: str, text: str) -> array[int]:
        """The token ids of ``text``'s prompt for ``query``; ``PromptTooLongError`` when they
        exceed ``max_prompt_tokens``."""
        cut = " ".join(text.split()[: self.max_passage_words])
        prompt = POINTWISE_PROMPT.format(
            query=defuse(normalize_query(query), self._controls),
            text=defuse(cut, self._controls),
        )
        ids = array("i", self._tokenizer(prompt)["input_ids"])
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLongError(
                f"a pointwise prompt of {len(ids)} tokens exceeds max_prompt_tokens="
                f"{self.max_prompt_tokens}; cut passages shorter or shorten the query"
            )
        return ids

    def score_ids(self, model: Any, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """One float32 score per prompt, from one forward pass (with gradients if enabled).

        Prompts are right-padded without an attention mask: causal attention never lets a
        prompt's tokens see the padding after them, so each keeps the positions and the
        score it has alone.
        """
        if not prompts:
            raise ValueError("score_ids needs at least one prompt")
        lm = causal_lm(model)
        head = plain_output_head(lm)
        lengths = torch.tensor([len(p) for p in prompts])
        ids = torch.zeros((len(prompts), int(lengths.max())), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(list(prompt))
        device = next(model.parameters()).device
        hidden = lm.get_decoder()(input_ids=ids.to(device), use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(prompts), device=device), (lengths - 1).to(device)]
        scores: torch.Tensor = head(last)[:, self.vote_id].float()
        return scores

    def scores(
        self, model: Any, query: str, texts: Sequence[str], *, batch_size: int = 16
    ) -> list[float]:
        """Scores of ``texts`` for ``query`` without gradients, ``batch_size`` prompts a pass."""
        encoded = self.encode(query, texts)
        values: list[float] = []
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                values.extend(self.score_ids(model, encoded[start : start + batch_size]).tolist())
        return values
