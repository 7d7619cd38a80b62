"""Blank passages (nothing left once the prompt repairs their text): kept out of the
windows, put after the others.

A model has nothing to judge in a blank passage, and its score for one is noise that can
put it first. The engine ranks the other passages and puts the blank ones after all of
them, in input order, as unranked positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from haystack_llmrank.prompt import normalize_passage
from haystack_llmrank.ranking import Ranking


def is_blank(text: str) -> bool:
    """Whether ``text`` would show nothing in a prompt: empty once repaired and split into
    words as :func:`~haystack_llmrank.prompt.normalize_passage` does (whitespace, a byte
    order mark, control characters, ``&nbsp;``)."""
    if "&" not in text and "\x1b" not in text:
        # with no entity to unescape and no terminal escape to strip, the repair drops no
        # printable ASCII character, so one shows; nearly every passage ends here, spared
        # ftfy's pass (the prompt builder repairs it once more anyway)
        if any(" " < char < "\x7f" for char in text):
            return False
        if text.isascii():  # only spaces and control characters, which the repair drops
            return True
    return not normalize_passage(text, None)


def split_blank(passages: Sequence[str]) -> tuple[list[int], list[int]]:
    """The input indices of the passages with text, and those of the blank ones."""
    blank = [is_blank(text) for text in passages]
    return (
        [i for i, empty in enumerate(blank) if not empty],
        [i for i, empty in enumerate(blank) if empty],
    )


def with_blank_passages(ranking: Ranking, kept: Sequence[int], blank: Sequence[int]) -> Ranking:
    """``ranking`` of the passages at input indices ``kept`` (ascending), in input indices,
    with the ``blank`` ones (ascending) after all of them, in input order.

    They join the unranked positions (:attr:`Ranking.blank` counts them). Each takes the
    lowest score and the lowest logit of ``ranking`` (0.0 where it holds none), so scores
    still never increase down the ranking.
    """
    score = ranking.scores[-1] if ranking.scores else 0.0
    logit = min(ranking.logits) if ranking.logits else 0.0
    return Ranking(
        tuple(kept[j] for j in ranking.order) + tuple(blank),
        ranking.scores + (score,) * len(blank),
        ranking.logits + (logit,) * len(blank),
        ranking.unranked + len(blank),
        ranking.cost,
        len(blank),
    )
