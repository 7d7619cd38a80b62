"""Pointwise relevance scores for training: one passage per prompt, read from one token's logit.

FIRST's readout asks a model to find the most relevant of up to 20 passages. A small base
may first have to learn what relevance is; judging one (query, passage) pair at a time, by
the logit of a vote token such as ``" yes"`` after a relevance question, is a simpler task
to warm up on, and the adapter it trains starts FIRST training (``LoraSettings.init_from``).

Given a template that ranks by a vote in windows of one passage (``judge``), each pair is
that template's window instead, read where a ranker reads it: the trained model then ranks
as it was trained, one passage a prompt.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from haystack_llmrank.errors import PromptTooLongError
from haystack_llmrank.prompt import (
    PromptBuilder,
    PromptTemplate,
    control_strings,
    defuse,
    normalize_query,
)
from haystack_llmrank.training.adapters import causal_lm, plain_output_head

POINTWISE_PROMPT = "Query: {query}\nPassage: {text}\nIs the passage relevant to the query? Answer:"
"""The prompt of one (query, passage) pair; its score is the vote token's logit next."""


class PointwisePrompt(NamedTuple):
    """One pair's token ids and the index of the token after which the vote is read."""

    ids: tuple[int, ...]
    position: int


def check_one_passage_template(template: PromptTemplate) -> None:
    """``ValueError`` unless ``template`` ranks by a vote in windows of one passage (one label):
    the form in which pointwise training and ranking read the same prompt."""
    if template.vote is None or len(template.labels) != 1:
        raise ValueError(
            f"pointwise prompts from template {template.name!r} need one that ranks by a vote "
            f"in windows of one passage (one label, such as 'judge'); it has "
            f"{len(template.labels)} labels and vote {template.vote!r} (without a vote, a "
            "warm start trains in the pointwise prompt instead)"
        )


class PointwiseScorer:
    """Scores (query, passage) pairs by the logit of ``vote_id`` after :data:`POINTWISE_PROMPT`,
    or, given a ``template`` (:func:`check_one_passage_template`; its vote must be
    ``vote_id``'s token), at the end of the passage line of its window of that one passage.

    Passages are cut at ``max_passage_words`` words. A :data:`POINTWISE_PROMPT` longer than
    ``max_prompt_tokens`` tokens is an error; a template's window is fitted to the budget as
    a ranker fits it (:meth:`~haystack_llmrank.prompt.PromptBuilder.build`). The query and
    passages are defused as in ranking prompts (:func:`~haystack_llmrank.prompt.defuse`).
    Each (query, passage) pair is tokenised once: its ids are kept for the scorer's life, as
    training checks every candidate's prompt before the first update and then scores the
    same prompts again.
    """

    def __init__(
        self,
        tokenizer: Any,
        vote_id: int,
        *,
        max_passage_words: int,
        max_prompt_tokens: int,
        template: PromptTemplate | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._controls = control_strings(tokenizer)
        self.vote_id = vote_id
        self.max_passage_words = max_passage_words
        self.max_prompt_tokens = max_prompt_tokens
        self._builder: PromptBuilder | None = None
        if template is not None:
            check_one_passage_template(template)
            self._builder = PromptBuilder(
                tokenizer,
                template,
                max_prompt_tokens=max_prompt_tokens,
                max_passage_words=max_passage_words,
            )
        # each (query, passage) prompt's ids, 4 bytes a token, and its vote position
        self._encoded: dict[tuple[str, str], tuple[array[int], int]] = {}

    @property
    def template(self) -> PromptTemplate | None:
        """The one-passage template whose windows are scored; ``None``: :data:`POINTWISE_PROMPT`."""
        return None if self._builder is None else self._builder.template

    def encode(self, query: str, texts: Sequence[str]) -> list[PointwisePrompt]:
        """Each passage's prompt."""
        encoded: list[PointwisePrompt] = []
        for text in texts:
            found = self._encoded.get((query, text))
            if found is None:
                found = self._tokenize(query, text)
                self._encoded[query, text] = found
            ids, position = found
            encoded.append(PointwisePrompt(tuple(ids), position))
        return encoded

    def _tokenize(self, query: str, text: str) -> tuple[array[int], int]:
        """The token ids of ``text``'s prompt for ``query`` and its vote position;
        ``PromptTooLongError`` when a :data:`POINTWISE_PROMPT` exceeds ``max_prompt_tokens``
        (or a template's window cannot be fitted to it)."""
        if self._builder is not None:
            window = self._builder.build(query, [text])
            return array("i", window.token_ids), window.score_positions[0]
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
        return ids, len(ids) - 1

    def score_ids(self, model: Any, prompts: Sequence[PointwisePrompt]) -> torch.Tensor:
        """One float32 score per prompt, from one forward pass (with gradients if enabled).

        Prompts are right-padded without an attention mask: causal attention never lets a
        prompt's tokens see the padding after them, so each keeps the positions and the
        score it has alone.
        """
        if not prompts:
            raise ValueError("score_ids needs at least one prompt")
        lm = causal_lm(model)
        head = plain_output_head(lm)
        ids = torch.zeros((len(prompts), max(len(p.ids) for p in prompts)), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt.ids)] = torch.tensor(prompt.ids)
        device = next(model.parameters()).device
        positions = torch.tensor([p.position for p in prompts], device=device)
        hidden = lm.get_decoder()(input_ids=ids.to(device), use_cache=False).last_hidden_state
        read = hidden[torch.arange(len(prompts), device=device), positions]
        scores: torch.Tensor = head(read)[:, self.vote_id].float()
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
