"""Argument types and the model options shared by the subcommands that load a reranker."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from haystack_llmrank.backends import BACKENDS
from haystack_llmrank.data import finite_float
from haystack_llmrank.devices import BACKEND_DEVICES
from haystack_llmrank.fusion import AUTO_FUSION, FusionChoice
from haystack_llmrank.gpu_policy import ON_MISSING_GPU
from haystack_llmrank.prompt import (
    AUTO_PASSAGE_WORDS,
    DEFAULT_MAX_PASSAGE_WORDS,
    MIN_PASSAGE_TOKENS,
    PassageWords,
    get_template,
)
from haystack_llmrank.strategies import (
    DEFAULT_STEP,
    DEFAULT_WINDOW_SIZE,
    STRATEGIES,
    TopDownPartition,
    Tournament,
)


def _int_from(text: str, least: int, expected: str) -> int:
    """``text`` as an integer of at least ``least``, else an argparse error saying
    ``expected``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for integers of at least 1."""
    return _int_from(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type for integers of at least 0."""
    return _int_from(text, 0, "an integer of at least 0")


def passage_words(text: str) -> PassageWords:
    """An argparse type for ``--max-passage-words``: a positive integer, ``auto`` or ``all``
    (``None``)."""
    if text == AUTO_PASSAGE_WORDS:
        return AUTO_PASSAGE_WORDS
    if text == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, {AUTO_PASSAGE_WORDS} or all, got {text!r}"
        ) from None


def fusion_choice(text: str) -> FusionChoice:
    """An argparse type for ``--fusion-k``: an integer (checked later, with the other model
    options), ``auto`` or ``none`` (``None``)."""
    if text == AUTO_FUSION:
        return AUTO_FUSION
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer, {AUTO_FUSION} or none, got {text!r}"
        ) from None


def _finite_float(text: str, expected: str) -> float:
    """``text`` as a finite number, else an argparse error saying ``expected``."""
    value = finite_float(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type for finite numbers above 0."""
    value = _finite_float(text, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type for finite numbers of at least 0."""
    value = _finite_float(text, "a number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {value}")
    return value


def existing_file(text: str) -> Path:
    """An argparse type for the path of a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return Path(text)


def template_option(text: str) -> str:
    """An argparse type for a template name or a ``.json`` file of one, checked on parsing."""
    try:
        get_template(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_passage_words_option(group: Any) -> None:
    """``--max-passage-words`` (:func:`passage_words`) on an argparse parser or group."""
    group.add_argument(
        "--max-passage-words",
        type=passage_words,
        default=AUTO_PASSAGE_WORDS,
        help="words kept per passage before prompting: a number, all, or auto, as many as "
        f"the model was trained on (recorded in its folder), else {DEFAULT_MAX_PASSAGE_WORDS} "
        "(default %(default)s)",
    )


def device_help(default: str, backend: str | None = None) -> str:
    """The ``--device`` help: the names :func:`~haystack_llmrank.devices.parse_device` takes
    for ``backend`` (``None``: for the one ``--backend`` picks, those that only some
    backends run on marked so), then ``default``."""
    runs = BACKEND_DEVICES if backend is None else {backend: BACKEND_DEVICES[backend]}
    names: list[str] = []
    for kind in dict.fromkeys(kind for kinds in runs.values() for kind in kinds):
        spelled: list[str] = (
            ["cuda", "cuda:N (a CUDA device by index)"] if kind == "cuda" else [kind]
        )
        on = [name for name, kinds in runs.items() if kind in kinds]
        if len(on) < len(runs):
            spelled[-1] += f" ({' and '.join(on)} only)"
        names += spelled
    return f"{', '.join(names[:-1])} or {names[-1]}, in any case (default: {default})"


def add_model_options(group: Any, *, batch_size: int) -> None:
    """Add ``--model``, ``--backend``, ``--device``, ``--dtype``, strategy, window and batch
    options."""
    group.add_argument(
        "--model",
        default="default",
        help=(
            "'default' (embedded FIRST-trained SmolLM2), 'smollm2-135m-instruct' (untrained), "
            "a HF id or folder, a .gguf, or an export folder"
        ),
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch (default; any model) or onnx (an `llmrank export` folder)",
    )
    group.add_argument(
        "--device",
        default=None,
        help=device_help("cuda if any"),
    )
    group.add_argument(
        "--dtype", default=None, help="float32, float16, bfloat16, float64 (default: by device)"
    )
    group.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="which windows rank a list: sliding (FIRST's), tdpart (top-down partitioning, at "
        "most 3 steps), tournament (parallel windows, then their winners) or disjoint "
        "(parallel windows, every passage by its own logit; for a vote readout). Default: "
        "the readout's, disjoint for a vote (the default model's), else sliding",
    )
    group.add_argument(
        "--window-size",
        type=positive_int,
        default=None,
        help="passages per window (one prompt), at most the template's labels (default "
        f"{DEFAULT_WINDOW_SIZE}, or the template's labels where fewer)",
    )
    group.add_argument(
        "--step",
        type=positive_int,
        default=None,
        help=f"sliding window step, below the window (default half the window: "
        f"{DEFAULT_STEP} for {DEFAULT_WINDOW_SIZE} passages)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"windows per scorer call, from several queries; one query's step is never split "
        f"(default {batch_size})",
    )
    group.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=None,
        help="padded tokens per forward pass (default: one window a pass on a CPU, except with "
        "an int8 ONNX graph; else 16384)",
    )
    group.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=None,
        help="token budget of one prompt; longer passages are shortened, to no fewer than "
        f"{MIN_PASSAGE_TOKENS} tokens each, else the query is refused (default: the model's "
        "context)",
    )
    group.add_argument(
        "--template",
        type=template_option,
        default=None,
        help="prompt template: a name or a .json file of one (default: the one the model "
        "was trained or exported with, else first)",
    )
    add_passage_words_option(group)
    group.add_argument(
        "--both-orders",
        action="store_true",
        help="score every window as given and reversed, so a window and its reverse get "
        "the same verdict (twice the forward passes)",
    )
    group.add_argument(
        "--order-invariant",
        action="store_true",
        help="rank each query's passages in an order fixed by their texts, so that any "
        "order of the same candidates ranks alike (the disjoint strategy only, the default "
        "model's)",
    )
    group.add_argument(
        "--vote",
        default=None,
        metavar="TOKEN",
        help="rank by this one token's logit at the end of each passage's line (e.g. ' yes', "
        "for a model whose votes were trained) instead of the template's labels",
    )
    group.add_argument(
        "--fusion-k",
        type=fusion_choice,
        default=AUTO_FUSION,
        metavar="K",
        help="fuse the model's order with the first stage's by reciprocal rank fusion with "
        "constant K (60 is usual); scores are then the fused ones. The first stage's order "
        "is that of its scores where every passage of a query has one (rerank: the "
        "candidates' scores; serve: requests carry none), else the input order. auto "
        "(default): the model's own K (60 for the default model, none for others), only "
        "where scores are given; none: the model alone",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads: torch's with --backend torch, ONNX Runtime's intra-op with onnx",
    )
    group.add_argument(
        "--on-missing-gpu",
        choices=ON_MISSING_GPU,
        default="raise",
        help="when a CUDA --device cannot be used: raise (default) or warn and use the CPU",
    )


def check_model_options(args: argparse.Namespace) -> None:
    """Check what :func:`add_model_options` parsed before any model loads.

    A window wider than the labels of the template (``--template``, else the one recorded
    with the model, else FIRST's), a step wider than the window, ``--order-invariant`` with
    a strategy other than ``disjoint`` (as the template's readout resolves it),
    ``--both-orders`` with windows of one passage, rerank's
    ``--rank-depth`` with a strategy that plays no rounds, a template (or ``--vote``) whose
    readout an ONNX export does not score, a dtype with the onnx backend, a device the
    backend does not run on, an unknown dtype, a model that is neither local nor reachable,
    or (onnx) a folder that is no complete export fails here in well under a second.
    """
    from haystack_llmrank.backends import check_backend, check_export, check_placement
    from haystack_llmrank.fusion import check_fusion_choice
    from haystack_llmrank.model_templates import model_template
    from haystack_llmrank.models import check_available, resolve_model
    from haystack_llmrank.reranker import resolve_strategy

    # the load warns of a template other than the model's: once, not here too
    template = model_template(args.template, args.model, vote=args.vote, flags=True, warn=False)
    labels = len(template.labels)
    if args.window_size is not None and args.window_size > labels:
        raise ValueError(
            f"--window-size {args.window_size} is over the {labels} labels of the model's "
            f"prompt template {template.name!r}"
        )
    strategy = resolve_strategy(
        template,
        args.strategy,
        window_size=args.window_size,
        step=args.step,
        order_invariant=args.order_invariant,
        both_orders=args.both_orders,
    )
    check_rank_depth_applies(getattr(args, "rank_depth", None), strategy.name)
    check_fusion_choice(args.fusion_k)
    # --threads also sets torch's process-wide threads (load_reranker), which the API leaves
    check_backend(args.backend, args.threads if args.backend == "onnx" else None, args.dtype)
    check_placement(args.backend, args.device, args.dtype)
    if args.backend == "torch":
        check_available(resolve_model(args.model))
    else:
        check_export(args.model)


def check_rank_depth_applies(rank_depth: int | None, strategy: str) -> None:
    """``ValueError`` for a ``--rank-depth`` given with ``strategy`` where it plays no rounds
    (only tdpart and tournament do), as it would be ignored."""
    if rank_depth is not None and strategy not in (TopDownPartition.name, Tournament.name):
        raise ValueError(
            "--rank-depth applies to the tdpart and tournament strategies only; strategy "
            f"{strategy!r} ranks every position"
        )


def check_not_input(option: str, output: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """Raise ``ValueError`` where ``output``, the path ``option`` gives, resolves to one of
    ``inputs`` (what each is, e.g. ``"the qrels file"``, and its path): writing it would
    replace that input."""
    written = output.resolve()
    for what, path in inputs:
        if written == path.resolve():
            raise ValueError(f"{option} names {what} {path}; give another path")


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``"1 query"``, ``"2 queries"``: ``count`` with the right form of the noun."""
    if count == 1:
        return f"{count} {singular}"
    return f"{count} {plural_form or singular + 's'}"


def load_reranker(args: argparse.Namespace) -> Any:
    """The :class:`~haystack_llmrank.reranker.Reranker` that :func:`add_model_options` describes."""
    from haystack_llmrank.reranker import Reranker

    check_model_options(args)
    onnx = args.backend == "onnx"
    if args.threads is not None and not onnx:
        import torch

        torch.set_num_threads(args.threads)
    return Reranker.from_pretrained(
        args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads if onnx else None,
        on_missing_gpu=args.on_missing_gpu,
        strategy=args.strategy,
        window_size=args.window_size,
        step=args.step,
        batch_size=args.batch_size,
        max_passage_words=args.max_passage_words,
        both_orders=args.both_orders,
        fusion_k=args.fusion_k,
        order_invariant=args.order_invariant,
        template=args.template,
        vote=args.vote,
        max_prompt_tokens=args.max_prompt_tokens,
        max_batch_tokens=args.max_batch_tokens,
    )
