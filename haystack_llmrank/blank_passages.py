"""Blank passages (empty, or only whitespace): kept out of the windows, put after the others.

A model has nothing to judge in a blank passage, and its score for one is noise that can
put it first. The engine ranks the other passages and adds the blank ones to the ranking's
unranked tail, in input order, where they follow every passage a window judged.
"""

from __future__ import annotations

from collections.abc import Sequence

from haystack_llmrank.ranking import Ranking


def split_blank(passages: Sequence[str]) -> tuple[list[int], list[int]]:
    """The input indices of the passages with text, and those of the blank ones."""
    kept = [i for i, text in enumerate(passages) if text.strip()]
    blank = [i for i, text in enumerate(passages) if not text.strip()]
    return kept, blank


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
