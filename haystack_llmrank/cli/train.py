"""``llmrank train``: fine-tune a causal LM for FIRST, or its pointwise warm start, on judged
queries and/or teacher scores."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from haystack_llmrank.cli.options import (
    device_help,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    template_option,
)
from haystack_llmrank.errors import listed

logger = logging.getLogger(__name__)

_SPLIT = "split.json"
VALIDATION_FRACTION = 0.3
"""The share of queries held out when no ``--split`` is given."""
SPLIT_SEED = 0
"""The seed of the drawn query split."""


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options and handler to ``parser``; defaults come from TrainConfig."""
    from haystack_llmrank.training.config import OBJECTIVES, RANKNET_REDUCTIONS, TrainConfig

    config = TrainConfig()
    sampling, lora_defaults = config.sampling, config.lora
    assert lora_defaults is not None
    parser.description = (
        "Fine-tune a causal LM for single-token listwise reranking with FIRST's loss: LM "
        "cross-entropy on the target ranking string plus a weighted RankNet on the label "
        "logits of the first generated token. Targets come from graded qrels, ties broken "
        "by teacher score, then first-stage order. The output folder loads wherever a "
        "model is named (--model, Reranker.from_pretrained, FirstListwiseRanker). "
        "--objective pointwise trains per-passage relevance scores instead, as a warm start."
    )
    parser.add_argument("input", type=Path, help="candidates JSONL or rank_llm JSON")
    parser.add_argument("--format", default="auto", help="input format (default auto)")
    parser.add_argument("--qrels", type=Path, default=None, help="TREC qrels with graded labels")
    parser.add_argument(
        "--teacher", type=Path, default=None, help="TREC run whose scores break ties / teach"
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="base model: a name, HF id or folder, or .gguf (default smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--template",
        type=template_option,
        default="first",
        help="prompt template to train with, recorded in OUTPUT so that loading uses it: "
        "first ([A] text); first-echo ([A] text [A]: the label also after its passage, easier "
        "for small models to learn); first-numeric; first-judge (each passage line restates "
        "the query and asks whether it is relevant: the previous default model's, with "
        "--passage-vote ' yes'); judge (that line alone, one passage a window, the default "
        "model's: with --objective pointwise and --rank-by-vote, the saved model ranks as it "
        "trained); or a .json file of a template's fields (default %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help=device_help("cpu", "torch"))
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32 on CPU (default; bfloat16 is faster on CPUs with AMX); on CUDA the "
        "checkpoint's, or bfloat16/float16",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    run = parser.add_argument_group("run")
    _numbers(
        run,
        ("--steps", positive_int, config.steps, "optimizer updates"),
        ("--grad-accumulation", positive_int, config.grad_accumulation, "windows per update"),
        (
            "--batch-windows",
            positive_int,
            config.batch_windows,
            "windows per forward pass, padded to the longest (speed and memory only)",
        ),
        ("--learning-rate", positive_float, config.learning_rate, "peak learning rate"),
        (
            "--warmup-steps",
            non_negative_int,
            config.warmup_steps,
            "linear warm-up updates, fewer than --steps",
        ),
        (
            "--min-lr-ratio",
            float,
            config.min_lr_ratio,
            "where the cosine decay ends, as a share of the peak rate: the last update's rate; "
            "1 keeps it constant",
        ),
        ("--max-grad-norm", positive_float, config.max_grad_norm, "gradient clipping norm"),
        ("--ranknet-weight", float, config.ranknet_weight, "lambda on RankNet; FIRST used 10"),
        (
            "--passage-ranknet-weight",
            float,
            config.passage_ranknet_weight,
            "weight of a RankNet on each passage's own-label logit at the end of its line "
            "(needs --template first-echo, or --passage-vote)",
        ),
        (
            "--pointwise-weight",
            float,
            config.pointwise_weight,
            "weight of the pointwise objective's loss over each window's passages, added to "
            "FIRST's (needs --passage-vote): trains the readout while keeping a pointwise "
            "warm start's relevance",
        ),
        ("--seed", non_negative_int, config.seed, "seed of sampling and init"),
    )
    run.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=config.objective,
        help="first: FIRST's loss on listwise windows; pointwise: score each passage of a "
        "window in a prompt of its own by --passage-vote's logit after a relevance question, "
        "trained with a pairwise RankNet, as a warm start for FIRST training (--init-adapter), "
        "or, with --rank-by-vote and a one-passage template (judge), in that template's "
        "window, as the saved model then ranks (default %(default)s)",
    )
    run.add_argument(
        "--ranknet-reduction",
        choices=RANKNET_REDUCTIONS,
        default=config.ranknet_reduction,
        help="sum: each window's weighted RankNet (and --passage-ranknet-weight's) summed over "
        "its pairs, as FIRST's paper writes it; mean: that sum over the n(n-1)/2 pairs of an "
        "n-passage window, as FIRST's released code trains (with --ranknet-weight 10); "
        "--resume refuses a change (default %(default)s)",
    )
    run.add_argument(
        "--stop-after",
        type=positive_int,
        default=None,
        metavar="N",
        help="end after update N of the --steps schedule, checkpointed; --resume goes on",
    )
    run.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        metavar="M",
        help="end at the first update that finishes M minutes or more after this run's first "
        "update began (wall time: the validations and checkpoints between count; loading and "
        "update 0's validation do not), checkpointed; --resume goes on",
    )
    run.add_argument(
        "--passage-vote",
        default=None,
        metavar="TOKEN",
        help="score passages for --passage-ranknet-weight by this one token's logit at the end "
        "of each line (e.g. ' yes'), shared by all, instead of each passage's own label; with "
        "--objective pointwise or --pointwise-weight, the token that scores each passage",
    )
    run.add_argument(
        "--rank-by-vote",
        action="store_true",
        help="record --passage-vote in the saved template, so that the model ranks (and "
        "validation ranks) by each passage's vote instead of the FIRST readout",
    )
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    run.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations (less memory)"
    )
    windows = parser.add_argument_group("windows")
    _numbers(
        windows,
        ("--min-window", positive_int, sampling.min_size, "smallest window"),
        ("--max-window", positive_int, sampling.max_size, "largest window"),
        ("--pool", positive_int, sampling.pool, "sample from the top N candidates"),
    )
    windows.add_argument(
        "--max-passage-words",
        type=positive_int,
        default=None,
        help="words per passage, recorded in the saved template: rankers read it at this "
        "length (default: the length a --template file records, else "
        f"{config.max_passage_words})",
    )
    _numbers(
        windows,
        ("--max-prompt-tokens", positive_int, config.max_prompt_tokens, "prompt budget"),
        (
            "--contiguous",
            float,
            sampling.contiguous,
            "share of windows that are neighbours in first-stage order",
        ),
        (
            "--orders",
            parse_orders,
            format_orders(sampling.orders, sampling.order_weights),
            "input orders with their weights",
        ),
    )
    windows.add_argument(
        "--mirrored",
        action="store_true",
        help="train every drawn window also in reversed order, in the same update, so that "
        "position preferences cancel (--grad-accumulation must be even)",
    )
    lora = parser.add_argument_group("adapter")
    lora.add_argument("--full", action="store_true", help="train every weight instead of LoRA")
    _numbers(
        lora,
        ("--lora-rank", positive_int, lora_defaults.rank, "LoRA rank"),
        ("--lora-alpha", positive_int, lora_defaults.alpha, "LoRA alpha"),
        (
            "--lora-dropout",
            non_negative_float,
            lora_defaults.dropout,
            "dropout on the adapters' inputs, below 1; 0 skips drawing its masks, which "
            "take a quarter to a third of a CPU update",
        ),
    )
    lora.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated module names (default: every attention and MLP projection)",
    )
    lora.add_argument(
        "--lora-top-layers",
        type=positive_int,
        default=lora_defaults.top_layers,
        help="adapt only the last N decoder layers; without --gradient-checkpointing a step "
        "then costs about a forward pass plus N layers of backward (default: every layer)",
    )
    lora.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="start from the weights of a saved LoRA adapter of the same rank and targets "
        "(e.g. one trained on another task) instead of a fresh initialisation; held-out "
        "queries that the split it records beside it trained on are refused",
    )
    lora.add_argument(
        "--merge",
        action="store_true",
        help="also write the adapter merged into its base to OUTPUT/merged, as float32 "
        "weights, which score as the adapter folder does in float32 (on the CPU)",
    )
    held = parser.add_argument_group("validation")
    held.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="share of the queries with qrels held out (by query) for validation, drawn "
        "among them only; queries without qrels always train; 0 turns it off (default "
        f"{VALIDATION_FRACTION}; not with --split)",
    )
    held.add_argument(
        "--split-seed",
        type=non_negative_int,
        default=None,
        help=f"seed of the query split (default {SPLIT_SEED}; not with --split)",
    )
    held.add_argument(
        "--split",
        type=Path,
        default=None,
        help="a split.json to train and validate on (its 'train' and 'validation' qids) "
        "instead of drawing one; e.g. the held-out queries of an earlier run",
    )
    _numbers(
        held,
        ("--eval-every", positive_int, config.eval_every, "updates between validations"),
        ("--checkpoint-every", positive_int, config.checkpoint_every, "updates per checkpoint"),
        ("--validation-depth", positive_int, config.validation_depth, "rerank the top N"),
        (
            "--validation-passage-words",
            positive_int,
            config.validation_passage_words,
            "words per passage when validating; unset: --max-passage-words, the length the "
            "saved model is read at",
        ),
    )
    parser.set_defaults(handler=run_train)


def _numbers(group: Any, *options: tuple[str, Callable[[str], Any], Any, str]) -> None:
    """Add options that take one parsed value, each help ending with its default (where it
    has one: an unset default's meaning is the help's to say)."""
    for flag, kind, default, text in options:
        shown = text if default is None else f"{text} (%(default)s)"
        group.add_argument(flag, type=kind, default=default, help=shown)


def format_orders(orders: tuple[str, ...], weights: tuple[float, ...]) -> str:
    """``first-stage:0.25,reversed:0.25,...``: the form ``--orders`` takes."""
    return ",".join(f"{order}:{weight:g}" for order, weight in zip(orders, weights, strict=True))


def parse_orders(text: str) -> dict[str, float]:
    """``--orders``: comma-separated ``order:weight`` pairs (``order`` alone weighs 1)."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        if name in weights:
            raise argparse.ArgumentTypeError(f"order {name!r} is given twice")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from None
        if not (math.isfinite(value) and value >= 0):
            raise argparse.ArgumentTypeError(f"the weight in {part!r} must be a finite number >= 0")
        weights[name] = value
    return weights


def split_queries(
    qids: list[str], fraction: float, seed: int, judged: Collection[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(train, validation)`` qids: a seeded shuffle of the ``judged`` qids (all where
    ``None``), in input order, the last ``fraction`` of them held out; every other qid
    trains. Where every qid is judged, the draw is the one over all of them."""
    import numpy as np

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--validation-fraction must be in [0, 1), got {fraction}")
    drawn = qids if judged is None else [q for q in qids if q in judged]
    order = [drawn[i] for i in np.random.default_rng(seed).permutation(len(drawn))]
    held = round(len(order) * fraction)
    which = "queries" if judged is None else "queries with qrels"
    if fraction > 0 and held == 0:
        raise ValueError(f"{len(drawn)} {which} are too few to hold out {fraction:.0%}")
    if held >= len(order):
        raise ValueError(f"none of the {len(drawn)} {which} would be left to train on")
    validation = set(order[len(order) - held :])
    return sorted(q for q in qids if q not in validation), sorted(validation)


def read_split(file: Path, qids: list[str]) -> tuple[list[str], list[str]]:
    """``(train, validation)`` qids from a ``split.json``, checked against the input's qids."""
    try:
        data = json.loads(file.read_text("utf-8"))
        train, held = data["train"], data["validation"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file} is no split.json with 'train' and 'validation': {exc}") from exc
    if not isinstance(train, list) or not isinstance(held, list):
        raise ValueError(f"{file}: 'train' and 'validation' must be lists of qids")
    if not all(isinstance(q, str) for q in [*train, *held]):
        raise ValueError(f"{file}: qids must be strings")
    if not train:
        raise ValueError(f"{file}: no training query")
    for side, side_qids in (("train", train), ("validation", held)):
        repeated = sorted(q for q, count in Counter(side_qids).items() if count > 1)
        if repeated:
            raise ValueError(f"{file}: qids listed twice in '{side}': {listed(repeated, 5)}")
    both = set(train) & set(held)
    if both:
        raise ValueError(f"{file}: {len(both)} qids are in both lists, e.g. {sorted(both)[0]!r}")
    missing = (set(train) | set(held)) - set(qids)
    if missing:
        raise ValueError(
            f"{file}: {len(missing)} qids are not in the input, e.g. {sorted(missing)[0]!r}"
        )
    left_out = len(set(qids) - set(train) - set(held))
    if left_out:
        logger.warning("%d input queries are in neither list of %s: not used", left_out, file)
    return sorted(train), sorted(held)


def _config(args: argparse.Namespace) -> Any:
    """The run's settings, checked against ``--template``'s vote before the model loads; a
    refusal names the options (:func:`flag_names`), where the library names its fields."""
    from haystack_llmrank.training.trainer import check_template_vote

    try:
        config = _settings(args)
        check_template_vote(_template(args), config)
    except ValueError as exc:
        raise ValueError(flag_names(str(exc))) from exc
    return config


_FIELD_OPTIONS = {
    "min_size": "min_window",
    "max_size": "max_window",
    "order_weights": "orders",
    "dropout": "lora_dropout",
    "top_layers": "lora_top_layers",
    "target_modules": "lora_targets",
    "init_from": "init_adapter",
}
"""Settings fields whose option's ``dest`` has another name: field -> dest."""


@functools.cache
def _options() -> dict[str, str]:
    """Each ``train`` option's ``dest`` (and each field of :data:`_FIELD_OPTIONS`) -> its
    long option string, read off the parser itself."""
    parser = argparse.ArgumentParser()
    register(parser)
    options = {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }
    return options | {field: options[dest] for field, dest in _FIELD_OPTIONS.items()}


def flag_names(message: str) -> str:
    """``message`` with each whole identifier that names a setting with a ``train`` option
    (``pool``, ``max_size``, ``passage_vote=' yes'``) written as that option (``--pool``,
    ``--max-window``, ``--passage-vote=' yes'``); a parenthesised option after it, or one the
    message names elsewhere, is dropped (``warmup_steps (--warmup-steps)``)."""
    options = _options()
    names = "|".join(sorted(map(re.escape, options), key=len, reverse=True))
    shown = re.sub(rf"(?<![\w.'\"-])({names})(?![\w'\"-])", lambda m: options[m.group(1)], message)
    for hint in set(re.findall(r" \((--[\w-]+)\)", shown)):
        if len(re.findall(rf"{re.escape(hint)}(?![\w-])", shown)) > 1:
            shown = shown.replace(f" ({hint})", "")
    return shown


def _settings(args: argparse.Namespace) -> Any:
    """The run's settings; passages as long as ``--max-passage-words``, else as the
    ``--template`` file records, else :class:`TrainConfig`'s default."""
    from haystack_llmrank.prompt import get_template
    from haystack_llmrank.training import LoraSettings, TrainConfig, WindowSampling

    lora = None
    if not args.full:
        targets = LoraSettings.target_modules
        if args.lora_targets:
            targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        lora = LoraSettings(
            rank=args.lora_rank,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=targets,
            top_layers=args.lora_top_layers,
            init_from=str(args.init_adapter) if args.init_adapter else None,
        )
    else:
        given = [
            option
            for option, used in (
                ("--lora-top-layers", args.lora_top_layers is not None),
                ("--init-adapter", args.init_adapter is not None),
                ("--lora-targets", args.lora_targets is not None),
                ("--lora-rank", args.lora_rank != LoraSettings.rank),
                ("--lora-alpha", args.lora_alpha != LoraSettings.alpha),
                ("--lora-dropout", args.lora_dropout != LoraSettings.dropout),
            )
            if used
        ]
        if given:
            raise ValueError(f"{', '.join(given)}: LoRA options, which --full does not use")
    return TrainConfig(
        steps=args.steps,
        stop_after=args.stop_after,
        max_minutes=args.max_minutes,
        objective=args.objective,
        grad_accumulation=args.grad_accumulation,
        batch_windows=args.batch_windows,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        max_grad_norm=args.max_grad_norm,
        ranknet_weight=args.ranknet_weight,
        ranknet_reduction=args.ranknet_reduction,
        passage_ranknet_weight=args.passage_ranknet_weight,
        passage_vote=args.passage_vote,
        pointwise_weight=args.pointwise_weight,
        seed=args.seed,
        max_passage_words=(
            args.max_passage_words
            or get_template(args.template).max_passage_words
            or TrainConfig.max_passage_words
        ),
        max_prompt_tokens=args.max_prompt_tokens,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        validation_depth=args.validation_depth,
        validation_passage_words=args.validation_passage_words,
        sampling=WindowSampling(
            min_size=args.min_window,
            max_size=args.max_window,
            pool=args.pool,
            contiguous=args.contiguous,
            orders=tuple(args.orders),
            order_weights=tuple(args.orders.values()),
            mirrored=args.mirrored,
        ),
        lora=lora,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def run_train(args: argparse.Namespace) -> int:
    """Validate everything, load the model, train with a progress bar, report where it went."""
    from tqdm import tqdm

    from haystack_llmrank.backends import check_placement
    from haystack_llmrank.data import read_qrels, read_queries, read_run
    from haystack_llmrank.evaluation import require_pytrec_eval
    from haystack_llmrank.training import training_queries

    if args.qrels is None and args.teacher is None:
        raise ValueError("give --qrels, --teacher, or both")
    check_placement("torch", args.device, args.dtype)
    config = _config(args)
    queries = read_queries(args.input, args.format)
    qrels = read_qrels(args.qrels) if args.qrels else None
    teacher = read_run(args.teacher) if args.teacher else None
    qids = [q.qid for q in queries]
    if qrels is not None and qrels.keys().isdisjoint(qids):
        raise ValueError(
            f"none of the {len(qrels)} queries of {args.qrels} is among the queries of "
            f"{args.input}: check that their qids agree (e.g. 'Q1' against '1')"
        )
    seed = None  # a given --split records none
    if args.split is not None:
        drawn = [
            option
            for option, value in (
                ("--validation-fraction", args.validation_fraction),
                ("--split-seed", args.split_seed),
            )
            if value is not None
        ]
        if drawn:
            raise ValueError(
                f"{' and '.join(drawn)} would draw a split, and --split gives one: leave "
                f"{'them' if len(drawn) > 1 else 'it'} out"
            )
        train_ids, held_ids = read_split(args.split, qids)
    else:
        seed = SPLIT_SEED if args.split_seed is None else args.split_seed
        fraction = args.validation_fraction
        fraction = VALIDATION_FRACTION if fraction is None else fraction
        judged = None if qrels is None else {q for q, graded in qrels.items() if graded}
        train_ids, held_ids = split_queries(qids, fraction, seed, judged)
    if held_ids and qrels is None:
        raise ValueError(
            "validation needs --qrels; skip it with --validation-fraction 0, or a --split "
            "that holds out no query"
        )
    unjudged = [q for q in held_ids if qrels is not None and not qrels.get(q)]
    if unjudged:
        raise ValueError(
            f"held-out queries without qrels: {listed(unjudged, 5)}"
            "; validation needs judged queries: give their qrels, or put them on the "
            "training side with --split"
        )
    by_id = {q.qid: q for q in queries}
    train = training_queries([by_id[q] for q in train_ids], qrels=qrels, teacher=teacher)
    validation = None
    if held_ids:
        from haystack_llmrank.training import Validation

        require_pytrec_eval()
        assert qrels is not None
        validation = Validation([by_id[q] for q in held_ids], qrels)
        validation.check_depth(config.validation_depth)
    starts = [Path(args.model), *([args.init_adapter] if args.init_adapter else [])]
    _refuse_held_out_queries_trained_on(starts, held_ids)
    split_file = args.output / _SPLIT
    split = {"train": train_ids, "validation": held_ids, "seed": seed}
    if args.resume:
        _check_resumed_split(args.output, split)
        _check_updates_left(args.output, config)
    else:
        _check_fresh_output(args.output)

    trainer = _trainer(args, config)
    if args.resume and not trainer.resume():
        _check_fresh_output(args.output, resuming=True)
        print(f"no checkpoint in {args.output}; starting from step 0")
    # written once the trainer stands, so that a run refused at setup leaves OUTPUT resumable
    args.output.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(split, indent=1) + "\n", "utf-8")
    resumed_at = trainer.step
    started = time.perf_counter()
    with tqdm(total=config.last_step, initial=trainer.step, unit="update", desc="train") as bar:

        @contextlib.contextmanager
        def validating(step: int) -> Iterator[None]:
            """Show a validation on the bar, and leave its time out of the bar's time and
            rate (as tqdm's unpause does), which then count updates alone."""
            bar.set_description(f"validating update {step}")
            began = time.perf_counter()  # not the run's ``started``, which the summary reads
            try:
                yield
            finally:
                spent = time.perf_counter() - began
                bar.start_t += spent
                bar.last_print_t += spent
                bar.set_description("train")

        def show(report: Any) -> None:
            shown = {
                "loss": f"{report.loss:.3f}",
                "ranknet": f"{report.ranknet:.3f}",
                "chance": f"{report.ranknet_chance:.3f}",
                "win/s": f"{report.windows_per_second:.2f}",
            }
            if config.passage_ranknet_weight > 0:
                shown["passage"] = f"{report.passage_ranknet:.3f}"
            if config.pointwise_weight > 0:
                shown["pointwise"] = f"{report.pointwise:.3f}"
            if report.validation is not None:
                shown["val_ndcg@10"] = f"{report.validation:.4f}"
            if report.stop_validation is not None:
                shown["stop_val_ndcg@10"] = f"{report.stop_validation:.4f}"
            bar.set_postfix(shown)
            bar.update(1)

        record = trainer.fit(train, validation, on_step=show, validating=validating)
    if args.merge:
        _write_merged(args.output)
    print(summary(record, resumed_at, time.perf_counter() - started, args.output))
    return 0


def _check_fresh_output(output: Path, *, resuming: bool = False) -> None:
    """Refuse to start a run from step 0 in a folder that holds an earlier run's output (a
    model, ``merged/``, a checkpoint, a record), which this run's would replace or mix with;
    for a ``--resume`` that found no checkpoint, a finished run's (``merged/``, a record): a
    run stopped before its first checkpoint left only its step-0 model, started over."""
    from haystack_llmrank.training.trainer import CHECKPOINT, RECORD

    previous = ("adapter_config.json", "config.json", "model.safetensors", "merged")
    if resuming:  # a run stopped before its first checkpoint left only its step-0 model
        done = [name for name in ("merged", RECORD) if (output / name).exists()]
        if done:
            raise ValueError(
                f"{output} holds the output of an earlier training run ({', '.join(done)}) "
                "but no checkpoint to resume it from; starting over would replace it: train "
                "into another folder, or remove that output first"
            )
        return
    found = [name for name in (*previous, CHECKPOINT, RECORD) if (output / name).exists()]
    if found:
        raise ValueError(
            f"{output} holds the output of an earlier training run ({', '.join(found)}); "
            "continue that run with --resume, or train into another folder"
        )


def _recorded_split(model: Path) -> tuple[Path, dict[str, Any]] | None:
    """The query split of the run that trained the model in folder ``model``, and the file
    that records it: ``model/split.json`` (a run's output, its ``merged/``, the default
    adapter), or for a checkpoint's ``model/``,
    its checkpoint's record, else its run's ``split.json``; ``None`` where none is found."""
    from haystack_llmrank.training.trainer import CHECKPOINT_STATE

    files = [model / _SPLIT]
    if model.name == "model":
        files += [model.parent / CHECKPOINT_STATE, model.parent.parent / _SPLIT]
    for file in files:
        if file.is_file():
            recorded = json.loads(file.read_text("utf-8"))
            split = recorded.get("split") if file.name == CHECKPOINT_STATE else recorded
            if split is not None:
                return file, split
    return None


def _refuse_held_out_queries_trained_on(starts: list[Path], held: list[str]) -> None:
    """Refuse held-out qids that a folder this run starts from (``--model``,
    ``--init-adapter``) records it was trained on: validation would score memorised queries."""
    for folder in starts:
        found = _recorded_split(folder) if folder.is_dir() else None
        if found is None:
            continue
        file, split = found
        seen = sorted(set(held) & set(split.get("train", ())))
        if seen:
            raise ValueError(
                f"{file} records that {folder}, which this run starts from, was trained on "
                f"{len(seen)} of this run's held-out queries: {listed(seen, 5)}; validation "
                "would score queries it learned: hold out what that run held out (--split "
                "with its split.json), or start from other weights"
            )


def _check_resumed_split(output: Path, split: dict[str, Any]) -> None:
    """Refuse to resume with other train or validation queries than ``output``'s checkpoint
    records or, where it records none, ``output/split.json`` (the seed may differ: a given
    --split records none)."""
    from haystack_llmrank.training.trainer import CHECKPOINT

    found = _recorded_split(output / CHECKPOINT / "model")
    if found is None:
        return
    file, saved = found
    if any(saved.get(side) != split[side] for side in ("train", "validation")):
        raise ValueError(f"{file} holds another query split; resume with the same one")


def _check_updates_left(output: Path, config: Any) -> None:
    """Refuse, before the model loads, to resume ``output``'s checkpoint with a run that
    ends at or before the update it reached."""
    from haystack_llmrank.training.trainer import (
        CHECKPOINT,
        CHECKPOINT_STATE,
        refuse_no_updates_left,
    )

    state = output / CHECKPOINT / CHECKPOINT_STATE
    if state.is_file():
        step = int(json.loads(state.read_text("utf-8"))["step"])
        refuse_no_updates_left(config, step, state.parent)


def summary(record: dict[str, Any], resumed_at: int, seconds: float, output: Path) -> str:
    """The closing line: the updates this run trained (and in all, after a resume), the best
    validation and the dtype it ran in, where the model is."""
    trained = record["steps"] - resumed_at
    total = f" ({record['steps']} in all)" if resumed_at else ""
    best = record["best_validation_ndcg@10"]
    shown = (
        f"best validation nDCG@10 {best:.4f} in {record['validation_dtype']} at update "
        f"{record['best_step']}; "
        if best is not None
        else ""
    )
    return f"trained {trained} updates{total} in {seconds:.0f} s; {shown}model in {output}"


def _trainer(args: argparse.Namespace, config: Any) -> Any:
    from haystack_llmrank.backends import source_device_and_dtype
    from haystack_llmrank.models import (
        load_causal_lm,
        load_tokenizer,
        loadable_source,
        resolve_model,
    )
    from haystack_llmrank.training import FirstTrainer

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    source = resolve_model(args.model)
    if source.adapter is not None:
        base = json.loads((Path(source.adapter) / "adapter_config.json").read_text("utf-8"))
        raise ValueError(
            f"{args.model} is an adapter; train from its base model "
            f"(--model {base['base_model_name_or_path']}) with --init-adapter {source.adapter} "
            "to start from its weights"
        )
    source = loadable_source(source)
    device, dtype = source_device_and_dtype(source, args.device, args.dtype)
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, device=device, dtype=dtype, tokenizer=tokenizer)
    return FirstTrainer(
        model,
        tokenizer,
        config,
        base_model=args.model,
        output_dir=args.output,
        template=_template(args),
    )


def _template(args: argparse.Namespace) -> Any:
    """The template to train with: ``--template``, with ``--passage-vote`` as its vote when
    ``--rank-by-vote`` is given."""
    from haystack_llmrank.prompt import get_template

    template = get_template(args.template)
    if not args.rank_by_vote:
        return template
    if args.passage_vote is None:
        raise ValueError("--rank-by-vote ranks by --passage-vote's token; give it")
    return template.with_vote(args.passage_vote)


def _write_merged(output: Path) -> None:
    """Write ``output``'s adapter merged into its base to ``output/merged``, in float32:
    merged as llmrank merges the adapter folder on the CPU, so it scores the same there
    (the base's bfloat16, say, would round the adapter's delta); with ``output``'s
    ``split.json``, so that a run starting from ``merged/`` is held to its split too."""
    import torch

    from haystack_llmrank.model_templates import recorded_template
    from haystack_llmrank.models import (
        load_causal_lm,
        load_tokenizer,
        loadable_source,
        resolve_model,
    )
    from haystack_llmrank.training.adapters import save_trained

    source = loadable_source(resolve_model(str(output)))
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, dtype=torch.float32, tokenizer=tokenizer)
    template = recorded_template(str(output))
    if template is None:  # save_trained wrote it beside the adapter
        raise ValueError(f"{output} records no prompt template, so it is no llmrank train output")
    merged = output / "merged"
    save_trained(model, tokenizer, merged, base_model=str(output), template=template)
    if (output / _SPLIT).is_file():  # run_train wrote it before training
        shutil.copyfile(output / _SPLIT, merged / _SPLIT)
