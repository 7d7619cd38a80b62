"""Where a listwise model's relevance is: its passage votes against its FIRST readout.

A model trained with ``llmrank train --passage-ranknet-weight W --passage-vote TOKEN``
learns two things in one prompt: a vote per passage (``TOKEN``'s logit at the end of the
passage's line) and the FIRST readout (the label logits of the first generated token),
which must find the passages with the strongest votes. This check ranks each held-out
query's top ``--depth`` candidates (BM25 order, one window) both ways, in the same forward
pass, next to BM25, and reports nDCG@10 of each:

    python examples/vote_check.py runs/judge-vote/checkpoint/model \
        runs/ict6/candidates.jsonl --qrels runs/ict6/qrels.txt --split runs/ict6/split.json \
        --json runs/vote-check.json

Votes above BM25 with a readout below it mean that the relevance is there and the readout
has not learned to read it. ``--vote-windows 1 5`` also ranks by the votes cast in
consecutive windows of 1 and 5 passages (of the same top ``--depth``), and ``--pointwise``
by each passage's score in a prompt of its own (the ``--objective pointwise`` prompt): how
much of a passage's vote the other passages in its window change. ``--isolated`` ranks the
window once more, in BM25 order and reversed, with passages that cannot see each other:
each passage line attends only to the instructions before the first line and to itself,
every line starts at the same position, and the rest of the prompt sees everything (a
measurement of what such a prompt would give the model as trained, not something the
engine runs).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from haystack_llmrank.cli.options import existing_file, positive_int
from haystack_llmrank.data import Qrels, read_qrels, read_queries
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.labels import LabelIds, resolve_label_ids
from haystack_llmrank.model_templates import model_template
from haystack_llmrank.models import load_causal_lm, load_tokenizer, resolve_model
from haystack_llmrank.prompt import PromptBuilder
from haystack_llmrank.training.listwise import label_logits, vote_token_id
from haystack_llmrank.training.pointwise import PointwiseScorer


def window_scores(
    model: Any,
    builder: PromptBuilder,
    labels: LabelIds,
    vote_id: int,
    query: str,
    texts: Sequence[str],
    *,
    isolated: bool = False,
) -> tuple[list[float], list[float]]:
    """For ``texts`` in this order, one window: each passage's FIRST readout (its label's
    logit at the first generated position) and its vote (``vote_id``'s logit at its line
    end); with ``isolated``, from passages that cannot see each other (:func:`isolation`)."""
    prompt = builder.build(query, texts)
    lines = builder.passage_line_tokens(prompt, query, len(texts))
    inputs: dict[str, torch.Tensor] = {"input_ids": torch.tensor([prompt.token_ids])}
    if isolated:
        mask, positions = isolation(len(prompt.token_ids), lines)
        inputs.update(attention_mask=mask.to(model.dtype), position_ids=positions)
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    first = label_logits(logits[-1], labels, len(texts)).tolist()
    return first, [logits[last, vote_id].item() for _, last in lines]


def isolation(length: int, lines: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """An additive attention mask (1, 1, ``length``, ``length``) and position ids (1,
    ``length``) that isolate the passage ``lines`` (first and last token of each) of a
    prompt: a line's tokens, up to the next line's first, see the tokens before the first
    line and their own line only, and each line's positions start where the first line's
    do; tokens after the last line see everything, placed after the longest line."""
    firsts = [first for first, _ in lines]
    if min(firsts) < 0 or any(b <= a for a, b in itertools.pairwise(firsts)):
        raise ValueError("isolation needs each passage line's first token, in order")
    bounds = [*firsts[1:], lines[-1][1] + 1]
    block = torch.full((length,), -1)
    positions = torch.arange(length)
    for index, (start, stop) in enumerate(zip(firsts, bounds, strict=True)):
        block[start:stop] = index
        positions[start:stop] = firsts[0] + torch.arange(stop - start)
    tail = bounds[-1]
    block[tail:] = len(lines)
    positions[tail:] = firsts[0] + max(b - a for a, b in zip(firsts, bounds, strict=True))
    positions[tail:] += torch.arange(length - tail)
    in_line = (block >= 0) & (block < len(lines))
    sees = (block[None, :] == -1) | (block[None, :] == block[:, None]) | ~in_line[:, None]
    order = torch.arange(length)
    allowed = sees & (order[None, :] <= order[:, None])
    mask = torch.zeros(1, 1, length, length)
    mask[0, 0][~allowed] = torch.finfo(mask.dtype).min
    return mask, positions[None, :]


def windowed_votes(
    scores_of: Callable[[Sequence[str]], tuple[list[float], list[float]]],
    texts: Sequence[str],
    size: int,
) -> list[float]:
    """Each passage's vote, cast in consecutive windows of ``size`` passages of ``texts``;
    ``scores_of`` scores one window as :func:`window_scores` does."""
    votes: list[float] = []
    for start in range(0, len(texts), size):
        votes.extend(scores_of(texts[start : start + size])[1])
    return votes


def ndcg(run: dict[str, dict[str, float]], qrels: Qrels) -> float:
    """Mean nDCG@10 of ``run`` over its queries."""
    return float(evaluate(run, {q: qrels[q] for q in run}, ["ndcg@10"]).mean["ndcg@10"])


ISOLATED = (
    "first_isolated",
    "votes_isolated",
    "first_isolated_reversed",
    "votes_isolated_reversed",
)
"""The runs ``--isolated`` adds: readout and votes, BM25 order and reversed."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained folder (its template is used)")
    parser.add_argument("candidates", type=existing_file)
    parser.add_argument("--qrels", type=existing_file, required=True)
    parser.add_argument("--split", type=existing_file, required=True, help="its validation qids")
    parser.add_argument("--vote", default=" yes", help="the vote token")
    parser.add_argument("--depth", type=positive_int, default=20)
    parser.add_argument("--words", type=positive_int, default=48, help="words per passage")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument(
        "--vote-windows",
        type=positive_int,
        nargs="*",
        default=[],
        metavar="N",
        help="also rank by the votes cast in consecutive windows of N passages",
    )
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="also rank the window, in BM25 order and reversed, with passages isolated",
    )
    parser.add_argument(
        "--pointwise",
        action="store_true",
        help="also rank by each passage's score in a prompt of its own",
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, dtype=getattr(torch, args.dtype), tokenizer=tokenizer)
    template = model_template(None, args.model)
    builder = PromptBuilder(
        tokenizer, template, max_prompt_tokens=32768, max_passage_words=args.words
    )
    labels = resolve_label_ids(tokenizer, template.labels)
    vote_id = vote_token_id(tokenizer, args.vote)
    assert vote_id is not None
    held = set(json.loads(args.split.read_text("utf-8"))["validation"])
    qrels = read_qrels(args.qrels)
    if any(n < 1 for n in args.vote_windows):
        parser.error("--vote-windows takes sizes of at least 1")
    pointwise = (
        PointwiseScorer(tokenizer, vote_id, max_passage_words=args.words, max_prompt_tokens=32768)
        if args.pointwise
        else None
    )
    runs: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for query in read_queries(args.candidates):
        if query.qid not in held:
            continue
        top = query.candidates[: args.depth]
        texts = [c.text for c in top]
        window = functools.partial(window_scores, model, builder, labels, vote_id, query.query)
        first, votes = window(texts)
        docids = [c.docid for c in top]
        scores = {"bm25": [-float(r) for r in range(len(docids))], "first": first, "votes": votes}
        for n in args.vote_windows:
            scores[f"votes_w{n}"] = windowed_votes(window, texts, n)
        if args.isolated:
            first_i, votes_i = window(texts, isolated=True)
            first_r, votes_r = window(texts[::-1], isolated=True)
            scores.update(
                zip(ISOLATED, [first_i, votes_i, first_r[::-1], votes_r[::-1]], strict=True)
            )
        if pointwise is not None:
            scores["pointwise"] = pointwise.scores(model, query.query, texts)
        for name, values in scores.items():
            runs[name][query.qid] = dict(zip(docids, values, strict=True))
    record = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "template": template.name,
        "queries": len(runs["bm25"]),
        **{f"{name}_ndcg@10": ndcg(run, qrels) for name, run in runs.items()},
    }
    print(json.dumps(record, indent=1))
    args.json.write_text(json.dumps(record, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    main()
