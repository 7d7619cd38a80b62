"""Resolve label strings (``A``..``Z``, ``1``..) to every vocabulary id that decodes to them."""

from __future__ import annotations

import string
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from haystack_llmrank.errors import LabelResolutionError, WindowTooLargeError

ALPHABETIC_LABELS: tuple[str, ...] = tuple(string.ascii_uppercase)
NUMERIC_LABELS: tuple[str, ...] = tuple(str(i) for i in range(1, 10))


@dataclass(frozen=True)
class LabelIds:
    """For each label, the vocabulary ids whose single-token decoding is that label.

    A label's logit is the maximum over its ids (``"A"`` and ``" A"`` are both ``A``).
    """

    labels: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.ids):
            raise ValueError("labels and ids must have the same length")
        for label, group in zip(self.labels, self.ids, strict=True):
            if not group:
                raise LabelResolutionError(f"label {label!r} has no vocabulary id")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def flat_ids(self) -> tuple[int, ...]:
        """All ids, label after label."""
        return tuple(i for group in self.ids for i in group)

    def padded_index(self) -> list[list[int]]:
        """Per label, positions into :attr:`flat_ids`, padded by repeating the first one."""
        width = max(len(group) for group in self.ids)
        rows: list[list[int]] = []
        offset = 0
        for group in self.ids:
            row = list(range(offset, offset + len(group)))
            rows.append(row + [row[0]] * (width - len(row)))
            offset += len(group)
        return rows

    def check_window(self, size: int) -> None:
        """Raise :class:`WindowTooLargeError` if ``size`` passages cannot all be labelled."""
        if size > len(self.labels):
            raise WindowTooLargeError(
                f"a window of {size} passages needs {size} labels; "
                f"this prompt has {len(self.labels)} ({self.labels[0]}..{self.labels[-1]})"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"labels": list(self.labels), "ids": [list(g) for g in self.ids]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelIds:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["labels"]), tuple(tuple(int(i) for i in g) for g in data["ids"]))


_RESOLVED: weakref.WeakKeyDictionary[Any, dict[tuple[tuple[str, ...], int], LabelIds]] = (
    weakref.WeakKeyDictionary()
)


def vote_label_ids(tokenizer: Any, vote: str) -> LabelIds:
    """``vote`` as the one label of a :class:`LabelIds`: the id of the single token it
    encodes to, without the variants :func:`resolve_label_ids` adds (a vote readout is
    trained on that one id)."""
    ids = tokenizer(vote, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise LabelResolutionError(f"a vote must be one token; {vote!r} is {len(ids)}: {ids}")
    return LabelIds((vote,), ((int(ids[0]),),))


def readout_label_ids(tokenizer: Any, labels: Sequence[str], vote: str | None) -> LabelIds:
    """The ids a template's readout scores: ``vote``'s one token (:func:`vote_label_ids`)
    where it has a vote, else every id of each of its ``labels`` (:func:`resolve_label_ids`)."""
    return resolve_label_ids(tokenizer, labels) if vote is None else vote_label_ids(tokenizer, vote)


def resolve_label_ids(tokenizer: Any, labels: Sequence[str]) -> LabelIds:
    """Find, for each label, every id that decodes to it alone or after one space.

    Decoding (not the raw token string) makes this independent of the tokenizer's
    space marker (``Ġ``, ``▁``) and catches byte-fallback tokens such as ``<0x41>``. The
    result is remembered per tokenizer object, labels and vocabulary size (decoding the
    whole vocabulary takes about half a second).
    """
    try:
        remembered = _RESOLVED.setdefault(tokenizer, {})
    except TypeError:  # not weakly referenceable: resolve every time
        remembered = {}
    key = (tuple(labels), len(tokenizer))
    if key not in remembered:
        remembered[key] = _resolve(tokenizer, labels)
    return remembered[key]


def _resolve(tokenizer: Any, labels: Sequence[str]) -> LabelIds:
    wanted = {label: i for i, label in enumerate(labels)}
    if len(wanted) != len(labels):
        raise ValueError(f"labels must be distinct: {list(labels)}")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab_size = len(tokenizer)
    decoded = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    found: list[list[int]] = [[] for _ in labels]
    for token_id, text in enumerate(decoded):
        if token_id in special:
            continue
        key = text[1:] if text.startswith(" ") else text
        slot = wanted.get(key)
        if slot is not None:
            found[slot].append(token_id)
    missing = [label for label, group in zip(labels, found, strict=True) if not group]
    if missing:
        raise LabelResolutionError(
            f"no single vocabulary token decodes to the label(s) {missing}; "
            "use a template with other labels"
        )
    return LabelIds(tuple(labels), tuple(tuple(group) for group in found))
