"""The torch scorer: exact label logits, padding invariance, no vocabulary-wide logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from haystack_llmrank.labels import ALPHABETIC_LABELS, resolve_label_ids
from haystack_llmrank.scorers.padding import pad_right
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer


def full_vocab_label_logits(
    model: Any, ids: list[int], label_groups: tuple[tuple[int, ...], ...]
) -> np.ndarray:
    """What a plain implementation computes: full logits at the last position, max per label."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return np.array(
        [max(float(logits[i]) for i in group) for group in label_groups], dtype=np.float32
    )


def prompts_of(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


TEXTS = [
    "Rank these: [A] cats [B] dogs. Answer: [",
    "A much longer prompt about passages on the history of the Roman empire and its roads. [",
    "short [",
]


def test_matches_full_vocabulary_logits(
    tiny_model: Any, tiny_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    for ids in prompts_of(smollm2_tokenizer, TEXTS):
        expected = full_vocab_label_logits(tiny_model, ids, tiny_scorer.label_ids.ids)
        got = tiny_scorer.score([ids])[0]
        assert got.dtype == np.float32
        assert got.shape == (len(ALPHABETIC_LABELS),)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_padding_invariance(tiny_scorer: TorchLabelScorer, smollm2_tokenizer: Any) -> None:
    prompts = prompts_of(smollm2_tokenizer, TEXTS)
    batched = tiny_scorer.score(prompts)
    assert batched.shape == (3, 26)
    for row, ids in zip(batched, prompts, strict=True):
        np.testing.assert_allclose(row, tiny_scorer.score([ids])[0], rtol=1e-5, atol=1e-4)


def test_lm_head_module_is_never_run(tiny_model: Any, smollm2_tokenizer: Any) -> None:
    scorer = TorchLabelScorer(tiny_model, resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS))

    def refuse(*_: Any) -> None:
        raise AssertionError("the full LM head ran: [batch, seq, vocab] logits were built")

    handle = tiny_model.lm_head.register_forward_hook(refuse)
    try:
        scorer.score(prompts_of(smollm2_tokenizer, TEXTS))
    finally:
        handle.remove()


def test_label_logit_is_max_over_variants(tiny_model: Any, smollm2_tokenizer: Any) -> None:
    ids = prompts_of(smollm2_tokenizer, TEXTS[:1])[0]
    with torch.inference_mode():
        logits = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1]
    scorer = TorchLabelScorer(tiny_model, resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS))
    bare = [smollm2_tokenizer.convert_tokens_to_ids(c) for c in ALPHABETIC_LABELS]
    spaced = [smollm2_tokenizer.convert_tokens_to_ids("Ġ" + c) for c in ALPHABETIC_LABELS]
    expected = torch.maximum(logits[bare], logits[spaced]).numpy()
    np.testing.assert_allclose(scorer.score([ids])[0], expected, rtol=1e-5, atol=1e-4)
    assert (logits[spaced] > logits[bare]).any(), "the test needs some spaced variant to win"


def test_pad_right_and_empty_prompts() -> None:
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="empty prompt"):
        pad_right([[1], []], pad_id=0)
    with pytest.raises(ValueError, match="no prompts"):
        pad_right([], pad_id=0)
