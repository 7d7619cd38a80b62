"""Label letters resolve to every vocabulary id that decodes to them."""

from __future__ import annotations

from typing import Any

import pytest

from haystack_llmrank.errors import LabelResolutionError, WindowTooLargeError
from haystack_llmrank.labels import ALPHABETIC_LABELS, NUMERIC_LABELS, LabelIds, resolve_label_ids


class FakeTokenizer:
    """A vocabulary where several ids decode to the same letter."""

    def __init__(self, vocab: list[str], special: tuple[int, ...] = ()) -> None:
        self.vocab = vocab
        self.all_special_ids = list(special)

    def __len__(self) -> int:
        return len(self.vocab)

    def batch_decode(self, batch: list[list[int]]) -> list[str]:
        return ["".join(self.vocab[i] for i in ids) for ids in batch]


def test_smollm2_letters_resolve_with_and_without_space(smollm2_tokenizer: Any) -> None:
    label_ids = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    assert label_ids.labels == ALPHABETIC_LABELS
    for label, ids in zip(label_ids.labels, label_ids.ids, strict=True):
        decoded = {smollm2_tokenizer.decode([i]) for i in ids}
        assert decoded == {label, " " + label}
    assert label_ids.ids[0] == tuple(
        sorted(
            [
                smollm2_tokenizer.convert_tokens_to_ids("A"),
                smollm2_tokenizer.convert_tokens_to_ids("ĠA"),
            ]
        )
    )


def test_every_variant_is_kept_and_specials_are_not() -> None:
    tokenizer = FakeTokenizer(["A", " A", "<0x41>", "B", "AB", "  A", "A"], special=(6,))
    tokenizer.vocab[2] = "A"  # a byte-fallback token decodes to the letter too
    label_ids = resolve_label_ids(tokenizer, ["A", "B"])
    assert label_ids.ids == ((0, 1, 2), (3,))


def test_missing_label_is_an_error() -> None:
    with pytest.raises(LabelResolutionError, match=r"\['C'\]"):
        resolve_label_ids(FakeTokenizer(["A", "B"]), ["A", "B", "C"])


def test_numeric_labels_resolve_on_smollm2(smollm2_tokenizer: Any) -> None:
    label_ids = resolve_label_ids(smollm2_tokenizer, NUMERIC_LABELS)
    assert label_ids.labels == NUMERIC_LABELS
    for label, ids in zip(label_ids.labels, label_ids.ids, strict=True):
        assert smollm2_tokenizer.convert_tokens_to_ids(label) in ids
        assert {smollm2_tokenizer.decode([i]) for i in ids} <= {label, " " + label}
    every = [i for ids in label_ids.ids for i in ids]
    assert len(every) == len(set(every)), "no id stands for two labels"


def test_window_larger_than_alphabet_is_refused() -> None:
    label_ids = LabelIds(("A", "B"), ((1,), (2, 3)))
    label_ids.check_window(2)
    with pytest.raises(WindowTooLargeError, match="3 passages"):
        label_ids.check_window(3)


def test_padded_index_and_round_trip() -> None:
    label_ids = LabelIds(("A", "B"), ((5, 9, 7), (2,)))
    assert label_ids.flat_ids == (5, 9, 7, 2)
    assert label_ids.padded_index() == [[0, 1, 2], [3, 3, 3]]
    assert LabelIds.from_dict(label_ids.to_dict()) == label_ids


def test_duplicate_labels_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        resolve_label_ids(FakeTokenizer(["A"]), ["A", "A"])


class CountingTokenizer(FakeTokenizer):
    """Counts how often the vocabulary is decoded."""

    decodes = 0

    def batch_decode(self, batch: list[list[int]]) -> list[str]:
        self.decodes += 1
        return super().batch_decode(batch)


def test_resolution_is_remembered_per_tokenizer_labels_and_vocabulary() -> None:
    tokenizer = CountingTokenizer(["A", " B", "x", "C"])
    first = resolve_label_ids(tokenizer, ("A", "B"))
    assert resolve_label_ids(tokenizer, ("A", "B")) is first
    assert tokenizer.decodes == 1
    assert resolve_label_ids(tokenizer, ("A", "C")).ids == ((0,), (3,))
    assert tokenizer.decodes == 2
    tokenizer.vocab.append(" A")
    assert resolve_label_ids(tokenizer, ("A", "B")).ids == ((0, 4), (1,))
    other = CountingTokenizer(["B", "A"])
    assert resolve_label_ids(other, ("A", "B")).ids == ((1,), (0,))
