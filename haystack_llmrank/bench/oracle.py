"""An oracle in place of the model: label logits from relevance grades, with controllable noise.

It measures what a strategy can reach apart from the model. A passage's label logit is its
grade plus, when ``noise > 0``, a draw from N(0, noise^2): each window draws its own noise,
seeded by ``seed`` and the window's token ids, so the same window always gets the same logits,
whatever it is batched with. With ``noise=0`` a window is ordered by grade, and equal grades
keep their window order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from haystack_llmrank.bench.prompts import CachedPromptBuilder, WindowKey
from haystack_llmrank.data import Qrels, QueryCandidates
from haystack_llmrank.errors import LlmRankError
from haystack_llmrank.labels import LabelIds, readout_label_ids
from haystack_llmrank.prompt import FIRST_TEMPLATE, Prompt, PromptTemplate
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import Strategy

Judge = Callable[[str, str], float]
"""The grade of a passage (second argument) for a query (first argument)."""

UNUSED_LABEL_LOGIT = -1.0e4
"""The logit of labels past the window's passages."""


class OracleScorer:
    """A :class:`~haystack_llmrank.scorers.base.LabelScorer` that reads grades, not a model.

    It knows which passages a prompt holds only from :meth:`register`;
    :class:`OraclePromptBuilder` registers every prompt it builds. It reads a window by its
    labels (:meth:`score`) or, for a template with a vote, by one vote per passage
    (:meth:`score_at`); ``window_size`` caps the passages a prompt may hold (default: one per
    label).
    """

    def __init__(
        self,
        label_ids: LabelIds,
        *,
        noise: float = 0.0,
        seed: int = 0,
        window_size: int | None = None,
    ) -> None:
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be a finite number of at least 0, got {noise}")
        self._label_ids = label_ids
        self.window_size = len(label_ids) if window_size is None else window_size
        self.noise = noise
        self.seed = seed
        self._grades: dict[tuple[int, ...], tuple[float, ...]] = {}

    @property
    def label_ids(self) -> LabelIds:
        """The labels whose logits :meth:`score` returns."""
        return self._label_ids

    def register(self, token_ids: Sequence[int], grades: Sequence[float]) -> None:
        """Say that the prompt ``token_ids`` holds passages of these grades, in label order."""
        if len(grades) > self.window_size:
            raise ValueError(f"{len(grades)} grades for windows of {self.window_size}")
        self._grades[tuple(token_ids)] = tuple(float(g) for g in grades)

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Each registered prompt's grades plus its noise; other labels get a low logit."""
        logits = np.full((len(prompts), len(self._label_ids)), UNUSED_LABEL_LOGIT, np.float32)
        for row, prompt in enumerate(prompts):
            judged = self._judged(prompt)
            logits[row, : len(judged)] = judged
        return logits

    def score_at(
        self, prompts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Each registered prompt's grades plus its noise as one vote per passage,
        ``[batch, P, 1]``; a prompt's ``positions`` count its passages."""
        width = max((len(at) for at in positions), default=0)
        votes = np.full((len(prompts), width, 1), UNUSED_LABEL_LOGIT, np.float32)
        for row, (prompt, at) in enumerate(zip(prompts, positions, strict=True)):
            judged = self._judged(prompt)
            if len(judged) != len(at):
                raise LlmRankError(f"{len(at)} positions for a prompt of {len(judged)} passages")
            votes[row, : len(judged), 0] = judged
        return votes

    def _judged(self, prompt: Sequence[int]) -> npt.NDArray[np.float64]:
        """The registered grades of ``prompt`` plus its noise."""
        key = tuple(prompt)
        grades = self._grades.get(key)
        if grades is None:
            raise LlmRankError(
                "the oracle was asked about a prompt nobody registered; build prompts "
                "with OraclePromptBuilder"
            )
        return np.asarray(grades) + self._noise(key, len(grades))

    def _noise(self, key: tuple[int, ...], count: int) -> npt.NDArray[np.float64]:
        if self.noise == 0:
            return np.zeros(count)
        digest = hashlib.blake2b(np.asarray(key, dtype=np.int64).tobytes(), digest_size=8)
        rng = np.random.default_rng([self.seed, int.from_bytes(digest.digest(), "little")])
        return rng.normal(0.0, self.noise, count)


class OraclePromptBuilder(CachedPromptBuilder):
    """Builds (and caches) prompts, and tells the oracle the grades of each one's passages."""

    def __init__(
        self,
        tokenizer: Any,
        template: PromptTemplate = FIRST_TEMPLATE,
        *,
        max_prompt_tokens: int,
        oracle: OracleScorer,
        judge: Judge,
        cache: Mapping[WindowKey, Prompt] | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__(
            tokenizer,
            template,
            max_prompt_tokens=max_prompt_tokens,
            cache=cache,
            vocab_size=vocab_size,
        )
        self.oracle = oracle
        self.judge = judge

    def build(self, query: str, passages: Sequence[str]) -> Prompt:
        """The window's prompt, registered with the oracle."""
        prompt = super().build(query, passages)
        self.oracle.register(prompt.token_ids, [self.judge(query, p) for p in passages])
        return prompt


def qrels_judge(queries: Sequence[QueryCandidates], qrels: Qrels) -> Judge:
    """Grades from TREC qrels, looked up by query and passage text.

    Unjudged passages grade 0. Where one text stands for several docids of a query, the
    highest grade counts.
    """
    table: dict[tuple[str, str], float] = {}
    for query in queries:
        judged = qrels.get(query.qid, {})
        for candidate in query.candidates:
            key = (query.query, candidate.text)
            table[key] = max(table.get(key, 0.0), float(judged.get(candidate.docid, 0)))
    return lambda query, passage: table.get((query, passage), 0.0)


def oracle_reranker(
    tokenizer: Any,
    judge: Judge,
    *,
    max_prompt_tokens: int,
    noise: float = 0.0,
    seed: int = 0,
    strategy: Strategy | None = None,
    template: PromptTemplate = FIRST_TEMPLATE,
    batch_size: int = 1,
    max_batch_tokens: int | None = None,
    cache: Mapping[WindowKey, Prompt] | None = None,
    vocab_size: int | None = None,
) -> Reranker:
    """A :class:`Reranker` whose scorer is an :class:`OracleScorer` judging with ``judge``.

    Prompts are real (``tokenizer``'s), so windows and tokens count as with a model;
    ``cache`` holds prompts built before, and ``vocab_size`` folds their ids as the rows of
    a synthetic model do (see :class:`~haystack_llmrank.bench.prompts.CachedPromptBuilder`),
    so that the rows can share them. ``batch_size`` and ``max_batch_tokens`` batch as in
    :class:`Reranker`.
    """
    oracle = OracleScorer(
        readout_label_ids(tokenizer, template.labels, template.vote),
        noise=noise,
        seed=seed,
        window_size=len(template.labels),
    )
    prompts = OraclePromptBuilder(
        tokenizer,
        template,
        max_prompt_tokens=max_prompt_tokens,
        oracle=oracle,
        judge=judge,
        cache=cache,
        vocab_size=vocab_size,
    )
    return Reranker(
        tokenizer,
        oracle,
        max_prompt_tokens=max_prompt_tokens,
        template=template,
        strategy=strategy,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        model_name="oracle",
        prompts=prompts,
    )
