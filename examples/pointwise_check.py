"""How fast a base model learns relevance at all: a pointwise cross-encoder check on a CPU.

FIRST asks a model to find the most relevant passage among up to 20 and emit its label.
This check asks for much less: score one passage at a time (the logit of " yes" after
"Query: ... Passage: ... Is the passage relevant to the query? Answer:"), trained with a
pairwise RankNet over groups of candidates of one query, ordered by qrels grade and then
teacher score, with LoRA on every layer. If a model cannot beat BM25 on held-out queries
this way within a budget, FIRST training on the same budget has no relevance to build on:

    python examples/pointwise_check.py runs/ict6/candidates.jsonl \
        --qrels runs/ict6/qrels.txt --teacher runs/ict6/teacher.run \
        --split runs/ict6/split.json --minutes 20 --eval-minutes 10 \
        --save runs/pointwise-adapter --json runs/pointwise-check.json

The input's ``train`` queries (a ``split.json``, e.g. the one ``examples/inverse_cloze.py``
writes, which adds pseudo-queries) are trained on; every ``--eval-minutes`` the model
ranks each ``validation`` query's top ``--depth`` candidates, and at the end its top 100.
``--groups N`` trains on N groups instead of for ``--minutes``, so that a rerun does not
depend on the CPU's speed. ``--save`` keeps the adapter (the same rank and targets as
``llmrank train``'s default), so that ``llmrank train --init-adapter`` can start FIRST
training from it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from haystack_llmrank.data import Qrels, QueryCandidates, Run, read_qrels, read_queries, read_run
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.models import load_causal_lm, load_tokenizer, resolve_model
from haystack_llmrank.training.adapters import LORA_TARGETS

Group = tuple[str, list[tuple[str, tuple[int, float]]]]
"""A training query and its candidates, each with its (grade, teacher score) sort key."""


def prompt(query: str, passage: str, words: int) -> str:
    """The pointwise prompt; the score is the next token's " yes" logit."""
    text = " ".join(passage.split()[:words])
    return f"Query: {query}\nPassage: {text}\nIs the passage relevant to the query? Answer:"


class PointwiseScorer:
    """A causal LM with LoRA adapters that scores (query, passage) pairs by a " yes" logit."""

    def __init__(self, model: str, rank: int, words: int) -> None:
        from peft import LoraConfig, get_peft_model

        source = resolve_model(model)
        self.tokenizer = load_tokenizer(source)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = load_causal_lm(source, dtype=torch.bfloat16, tokenizer=self.tokenizer)
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS))
        self.model = get_peft_model(base, lora)
        self.yes = self.tokenizer(" yes", add_special_tokens=False)["input_ids"][-1]
        self.words = words

    def scores(self, query: str, passages: Sequence[str]) -> torch.Tensor:
        """One score per passage (with gradients when the model is in training mode)."""
        batch = self.tokenizer(
            [prompt(query, p, self.words) for p in passages], return_tensors="pt", padding=True
        )
        out = self.model(**batch, logits_to_keep=1, use_cache=False)
        logits: torch.Tensor = out.logits[:, -1, self.yes]
        return logits.float()

    def rank(self, queries: Sequence[QueryCandidates], depth: int) -> Run:
        """A run over each query's top ``depth`` candidates."""
        self.model.eval()
        run: Run = {}
        with torch.no_grad():
            for query in queries:
                top = query.candidates[:depth]
                values: list[float] = []
                for start in range(0, len(top), 16):
                    chunk = [c.text for c in top[start : start + 16]]
                    values.extend(self.scores(query.query, chunk).tolist())
                run[query.qid] = {c.docid: v for c, v in zip(top, values, strict=True)}
        self.model.train()
        return run


def ranknet(scores: torch.Tensor, keys: Sequence[tuple[int, float]]) -> torch.Tensor | None:
    """Mean pairwise logistic loss over the pairs the keys order (``None`` if none)."""
    pairs = [
        torch.nn.functional.softplus(scores[j] - scores[i])
        for i in range(len(keys))
        for j in range(len(keys))
        if keys[i] > keys[j]
    ]
    return torch.stack(pairs).mean() if pairs else None


def training_groups(
    queries: Sequence[QueryCandidates], qrels: Qrels, teacher: Run, pool: int
) -> list[Group]:
    """Each query's top ``pool`` candidates with (grade, teacher score) keys."""
    return [
        (
            q.query,
            [
                (
                    c.text,
                    (
                        qrels.get(q.qid, {}).get(c.docid, 0),
                        teacher.get(q.qid, {}).get(c.docid, -math.inf),
                    ),
                )
                for c in q.candidates[:pool]
            ],
        )
        for q in queries
    ]


def ndcg(run: Run, qrels: Qrels) -> float:
    """Mean nDCG@10 of ``run`` over its queries."""
    return float(evaluate(run, {q: qrels[q] for q in run}, ["ndcg@10"]).mean["ndcg@10"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", type=Path)
    parser.add_argument("--qrels", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--minutes", type=float, default=40.0, help="training time")
    parser.add_argument(
        "--groups", type=int, default=None, help="train on this many groups instead of --minutes"
    )
    parser.add_argument("--eval-minutes", type=float, default=20.0)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--words", type=int, default=48, help="words per passage")
    parser.add_argument("--group", type=int, default=8, help="passages per training group")
    parser.add_argument("--pool", type=int, default=30, help="draw groups from the top N")
    parser.add_argument("--depth", type=int, default=20, help="held-out top N during training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--save", type=Path, default=None, help="write the trained LoRA adapter to this folder"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    split: dict[str, Any] = json.loads(args.split.read_text("utf-8"))
    queries = {q.qid: q for q in read_queries(args.candidates)}
    qrels, teacher = read_qrels(args.qrels), read_run(args.teacher)
    train = training_groups([queries[q] for q in split["train"]], qrels, teacher, args.pool)
    held = [queries[q] for q in split["validation"]]
    scorer = PointwiseScorer(args.model, args.lora_rank, args.words)
    bm25 = {q.qid: {c.docid: -float(r) for r, c in enumerate(q.candidates)} for q in held}
    top = {q: dict(list(docs.items())[: args.depth]) for q, docs in bm25.items()}
    record: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training_queries": len(train),
        "validation_queries": len(held),
        f"bm25_top{args.depth}": ndcg(top, qrels),
        "bm25_top100": ndcg(bm25, qrels),
        "history": [],
    }

    def validate(step: int, pairs: int, losses: Sequence[float], seconds: float) -> None:
        score = ndcg(scorer.rank(held, args.depth), qrels)
        mean = sum(losses) / len(losses) if losses else None
        record["history"].append(
            {
                "minutes": round(seconds / 60, 1),
                "groups": step,
                "passages": pairs,
                "loss": mean,
                f"heldout_top{args.depth}": score,
            }
        )
        print(
            f"{seconds / 60:.1f} min, {step} groups: loss {mean}, held-out {score:.4f}", flush=True
        )
        args.json.write_text(json.dumps(record, indent=1) + "\n", "utf-8")

    groups: int | None = args.groups
    minutes: float = args.minutes

    def done(step: int, elapsed: float) -> bool:
        return step >= groups if groups is not None else elapsed >= minutes * 60

    validate(0, 0, [], 0.0)
    parameters = [p for p in scorer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    started, step, passages, losses = time.perf_counter(), 0, 0, []
    next_eval = args.eval_minutes * 60
    while not done(step, elapsed := time.perf_counter() - started):
        query, pool = rng.choice(train)
        group = rng.sample(pool, min(args.group, len(pool)))
        loss = ranknet(scorer.scores(query, [text for text, _ in group]), [k for _, k in group])
        step, passages = step + 1, passages + len(group)
        if loss is None:
            continue
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if elapsed >= next_eval:
            validate(step, passages, losses[-50:], elapsed)
            next_eval += args.eval_minutes * 60
    validate(step, passages, losses[-50:], time.perf_counter() - started)
    if args.save is not None:
        scorer.model.save_pretrained(args.save)
    record["heldout_top100"] = ndcg(scorer.rank(held, 100), qrels)
    print(f"held-out top 100: {record['heldout_top100']:.4f} (BM25 {record['bm25_top100']:.4f})")
    args.json.write_text(json.dumps(record, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    main()
