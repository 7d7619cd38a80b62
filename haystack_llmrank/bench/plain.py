"""Baselines written the way a user would write them from the papers, with plain transformers.

:func:`slide` is FIRST's sliding window as a plain loop; a window is ordered either by the
full-vocabulary logits of the next token (:class:`FullLogitsWindow`, FIRST) or by generating
the whole permutation and parsing it (:class:`GenerateWindow`, RankGPT / rank_llm).
:func:`deal_and_sort` is one round of disjoint windows for a vote readout, each window scored
by :class:`VoteWindow`: the vote token's logit at the end of every passage line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

_LABEL = re.compile(r"\b([A-Z]|\d+)\b")


def slide(
    n: int, window_size: int, step: int, order_window: Callable[[list[int]], list[int]]
) -> list[int]:
    """Rank ``n`` items bottom-up in windows; ``order_window(members)`` ranks one window.

    ``order_window`` gets the item indices of the window in current order and returns the
    window positions from best to worst.
    """
    order = list(range(n))
    end = n
    while n:
        start = max(0, end - window_size)
        members = order[start:end]
        ranked = order_window(members)
        if sorted(ranked) != list(range(len(members))):
            raise ValueError(f"a window of {len(members)} was ranked as {ranked}")
        order[start:end] = [members[i] for i in ranked]
        if start == 0:
            break
        end -= step
    return order


def deal_and_sort(
    n: int, window_size: int, score_window: Callable[[list[int]], list[float]]
) -> list[int]:
    """Rank ``n`` items by one score each, from one round of disjoint windows.

    Item ``i`` goes to window ``i % k``, ``k = ceil(n / window_size)`` windows;
    ``score_window(members)`` scores one window's items (in window order). All items are
    then sorted by score, best first; equal scores keep input order.
    """
    count = math.ceil(n / window_size)
    scores = [0.0] * n
    for first in range(count):
        members = list(range(first, n, count))
        values = score_window(members)
        if len(values) != len(members):
            raise ValueError(f"a window of {len(members)} got {len(values)} scores")
        for item, value in zip(members, values, strict=True):
            scores[item] = value
    return sorted(range(n), key=lambda item: -scores[item])


class FullLogitsWindow:
    """FIRST with plain transformers: ``model(input_ids).logits[0, -1]``, sort the label logits."""

    def __init__(self, model: Any, label_ids: Sequence[int]) -> None:
        self.model = model
        self.label_ids = list(label_ids)

    def __call__(self, token_ids: Sequence[int], n: int) -> list[int]:
        """Window positions ``0..n-1`` from the highest to the lowest label logit."""
        import torch

        device = self.model.device
        input_ids = torch.tensor([list(token_ids)], device=device)
        with torch.inference_mode():
            logits = self.model(input_ids).logits[0, -1]
        label_logits = logits[torch.tensor(self.label_ids[:n], device=device)]
        ranked: list[int] = torch.argsort(label_logits, descending=True, stable=True).tolist()
        return ranked


class VoteWindow:
    """A vote readout with plain transformers: the logit of the vote token at the last token of
    each passage line (``logits_to_keep`` keeps only those positions)."""

    def __init__(self, model: Any, vote_id: int) -> None:
        self.model = model
        self.vote_id = vote_id

    def __call__(self, token_ids: Sequence[int], positions: Sequence[int]) -> list[float]:
        """The vote of each passage whose line ends at ``positions``, in that order."""
        import torch

        device = self.model.device
        input_ids = torch.tensor([list(token_ids)], device=device)
        keep = torch.tensor(list(positions), device=device)
        with torch.inference_mode():
            logits = self.model(input_ids, logits_to_keep=keep).logits[0]
        votes: list[float] = logits[:, self.vote_id].float().tolist()
        return votes


def parse_permutation(text: str, labels: Sequence[str]) -> list[int]:
    """Window positions in the order ``text`` names their labels, as rank_llm reads an answer.

    Labels outside ``labels`` are ignored, repeats keep their first place, and labels the
    answer leaves out follow in their original order.
    """
    position = {label: i for i, label in enumerate(labels)}
    named = [position[m] for m in _LABEL.findall(text) if m in position]
    ranked = list(dict.fromkeys(named))
    return ranked + [i for i in range(len(labels)) if i not in set(ranked)]


def answer_text(labels: Sequence[str], answer_prefix: str = "[") -> str:
    """The complete answer ``A] > [B] > ...`` that follows the prompt's ``answer_prefix``."""
    return " > ".join(f"[{label}]" for label in labels).removeprefix(answer_prefix)


def answer_tokens(tokenizer: Any, labels: Sequence[str], answer_prefix: str = "[") -> int:
    """New tokens enough for the complete answer and an end-of-sequence token."""
    answer = tokenizer(answer_text(labels, answer_prefix), add_special_tokens=False)
    return len(answer["input_ids"]) + 1


class GenerateWindow:
    """Generate the whole permutation greedily (until EOS or the full answer's length), parse it."""

    def __init__(
        self, model: Any, tokenizer: Any, labels: Sequence[str], *, answer_prefix: str = "["
    ) -> None:
        from transformers import GenerationConfig

        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.answer_prefix = answer_prefix
        eos = tokenizer.eos_token_id
        self.config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=answer_tokens(tokenizer, labels, answer_prefix),
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        )
        self.generated_tokens = 0

    def __call__(self, token_ids: Sequence[int], n: int) -> list[int]:
        """Window positions ``0..n-1`` in the order the generated answer lists them."""
        import torch

        input_ids = torch.tensor([list(token_ids)], device=self.model.device)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self.config,
            )
        new = output[0, input_ids.shape[1] :]
        self.generated_tokens += int(new.shape[0])
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return parse_permutation(self.answer_prefix + text, self.labels[:n])
