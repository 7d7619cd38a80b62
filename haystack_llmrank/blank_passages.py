"""Blank passages (nothing left once the prompt repairs their text): kept out of the
windows, put after the others.

A model has nothing to judge in a blank passage, and its score for one is noise that can
put it first. The engine ranks the other passages and adds the blank ones to the ranking's
unranked tail, in input order, where they follow every passage a window judged.
"""

from __future__ import annotations

from collections.abc import Sequence

from haystack_llmrank.prompt import normalize_passage
from haystack_llmrank.ranking import Ranking


def is_blank(text: str) -> bool:
    """Whether ``text`` would show nothing in a prompt: empty once repaired and split into
    words as :func:`~haystack_llmrank.prompt.normalize_passage` does (whitespace, a byte
    order mark, control characters, ``&nbsp;``)."""
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
    with the ``blank`` ones (ascending) joined to its unranked tail.

    The tail, the passages the strategy left in first-stage order and the blank ones, keeps
    input order. A blank passage takes the score of the position above it (0.0 at the top of
    an empty ranking), so scores still never increase down the ranking.
    """
    depth = ranking.depth
    head = [kept[j] for j in ranking.order[:depth]]
    tail = sorted(
        [
            (kept[j], score, logit)
            for j, score, logit in zip(
                ranking.order[depth:],
                ranking.scores[depth:],
                ranking.logits[depth:],
                strict=True,
            )
        ]
        + [(i, None, None) for i in blank]
    )
    scores = list(ranking.scores[:depth])
    logits = list(ranking.logits[:depth])
    for _, score, logit in tail:
        above = scores[-1] if scores else 0.0
        scores.append(above if score is None else score)
        logits.append(above if logit is None else logit)
    return Ranking(
        tuple(head + [i for i, _, _ in tail]),
        tuple(scores),
        tuple(logits),
        len(tail),
        ranking.cost,
    )
