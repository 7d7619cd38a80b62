"""The engine: tokenizer + prompt + scorer + strategy -> :class:`Ranking`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from itertools import accumulate
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from haystack_llmrank.arrangement import (
    check_order_invariant,
    content_order,
    in_input_indices,
)
from haystack_llmrank.blank_passages import is_blank, split_blank, with_blank_passages
from haystack_llmrank.checks import check_positive
from haystack_llmrank.errors import ClosedError, PromptTooLongError, listed
from haystack_llmrank.fusion import (
    AUTO_FUSION,
    FusionChoice,
    check_fusion_choice,
    check_fusion_k,
    first_stage_ranks,
    first_stage_scores,
    fuse_with_first_stage,
)
from haystack_llmrank.gpu_policy import OnMissingGpu
from haystack_llmrank.model_templates import TemplateChoice, model_template
from haystack_llmrank.prompt import (
    AUTO_PASSAGE_WORDS,
    FIRST_TEMPLATE,
    PassageWords,
    Prompt,
    PromptBuilder,
    PromptTemplate,
    check_passage_words,
    get_template,
)
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.scorers.base import (
    DEFAULT_MAX_BATCH_TOKENS as DEFAULT_MAX_BATCH_TOKENS,  # kept importable from here
)
from haystack_llmrank.scorers.base import (
    LabelScorer,
    PositionScorer,
    preferred_max_batch_tokens,
    reads_positions,
)
from haystack_llmrank.strategies import (
    DEFAULT_WINDOW_SIZE,
    QueryRun,
    SlidingWindow,
    Strategy,
    check_step_applies,
    default_step,
    make_strategy,
    run_windows,
)

RerankRequest = tuple[str, Iterable[str]]


def template_sizes(
    template: PromptTemplate, window_size: int | None = None, step: int | None = None
) -> tuple[int, int]:
    """The window size and sliding step for ``template``, the window checked against its
    labels and readout (:func:`check_readout_window`).

    ``window_size`` ``None`` is FIRST's 20 passages, or the template's labels where fewer;
    ``step`` ``None`` is as far as FIRST's 10 for 20 passages: half the window, at least 1.
    """
    check_positive("window_size", window_size)
    check_positive("step", step)
    if window_size is None:
        window_size = min(DEFAULT_WINDOW_SIZE, len(template.labels))
    check_readout_window(template, window_size)
    return window_size, default_step(window_size) if step is None else step


def template_strategy(
    template: PromptTemplate,
    name: str | None = None,
    *,
    window_size: int | None = None,
    step: int | None = None,
) -> Strategy:
    """The strategy ``name`` (``None``: the readout's own, see
    :func:`~haystack_llmrank.strategies.readout_strategy`) for ``template``, sized by
    :func:`template_sizes`. A ``step`` given to a strategy without one is refused."""
    window_size, sliding_step = template_sizes(template, window_size, step)
    strategy = make_strategy(name, window_size=window_size, step=sliding_step, vote=template.vote)
    check_step_applies(step, strategy.name)
    return strategy


def resolve_strategy(
    template: PromptTemplate,
    strategy: Strategy | str | None,
    *,
    window_size: int | None = None,
    step: int | None = None,
    order_invariant: bool = False,
    both_orders: bool = False,
) -> Strategy:
    """The strategy ``strategy`` names (see :func:`template_strategy`), or the one given,
    checked against ``template``, ``order_invariant`` and ``both_orders`` before any model
    loads. ``window_size`` and ``step`` apply to a strategy given by name or ``None`` only."""
    if strategy is None or isinstance(strategy, str):
        strategy = template_strategy(template, strategy, window_size=window_size, step=step)
    elif window_size is not None or step is not None:
        raise ValueError("window_size and step apply to a strategy given by name or None")
    else:
        check_readout_window(template, strategy.window_size)
    check_order_invariant(order_invariant, strategy.name)
    check_both_orders(both_orders, strategy.window_size)
    return strategy


def check_both_orders(both_orders: bool, window_size: int) -> None:
    """``ValueError`` for ``both_orders`` with windows of one passage, which read the same
    both ways: it would double the forward passes and change nothing."""
    if both_orders and window_size == 1:
        raise ValueError(
            "both_orders reads each window reversed too, and a window of one passage "
            "reads the same both ways: it would double the forward passes and change "
            "nothing; leave it out"
        )


def check_readout_window(template: PromptTemplate, window_size: int) -> None:
    """:class:`~haystack_llmrank.errors.WindowTooLargeError` if windows of ``window_size``
    passages need more than ``template``'s labels; ``ValueError`` if its labels are read
    (not a vote) and a window holds one passage, which orders nothing (a vote judges one
    alone, in the ``disjoint`` strategy's windows: the others need two)."""
    template.check_window(window_size)
    if template.vote is None and window_size < 2:
        raise ValueError(
            f"template {template.name!r} is read by its labels, which order a window: one "
            "passage a window orders nothing; give it two labels or more, or a vote and the "
            "'disjoint' strategy"
        )


def check_options(
    *,
    max_prompt_tokens: int | None = None,
    batch_size: int = 1,
    max_batch_tokens: int | None = None,
    fusion_k: FusionChoice = None,
) -> None:
    """``ValueError`` for :class:`Reranker` options that are wrong whatever the model, so
    that :meth:`Reranker.from_pretrained` and the adapters refuse them before loading one."""
    check_positive("max_prompt_tokens", max_prompt_tokens)
    check_positive("batch_size", batch_size, optional=False)
    check_positive("max_batch_tokens", max_batch_tokens)
    check_fusion_choice(fusion_k)


def length_buckets(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group indices by length so each group's padded size stays within ``max_batch_tokens``.

    Indices are visited longest first; a prompt longer than the budget gets a group alone.
    """
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_batch_tokens:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


_SET_BY_FROM_PRETRAINED = frozenset(
    ("tokenizer", "scorer", "prompts", "max_prompt_tokens", "template", "strategy", "model_name")
)


def _check_constructor_options(options: Mapping[str, Any]) -> None:
    """``TypeError`` for keyword arguments that :meth:`Reranker.from_pretrained` would pass
    to :class:`Reranker` in vain (unknown, or ones it sets itself), before any model loads."""
    accepted = set(inspect.signature(Reranker.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"from_pretrained() got unexpected keyword arguments: {', '.join(unknown)}")
    taken = sorted(set(options) & _SET_BY_FROM_PRETRAINED)
    if taken:
        raise TypeError(
            f"from_pretrained() sets {', '.join(taken)} itself; give the model and its "
            "loading options instead"
        )


class Reranker:
    """Ranks passages for a query with a single-token listwise LLM (FIRST).

    Each window is one forward pass: the label logits of the first generated token order
    the window (or, for a template with a ``vote``, the vote's logit at the end of each
    passage line). Windows follow ``strategy``, a :class:`Strategy` or a name sized for the
    template; ``None`` is the readout's own (see :func:`template_strategy`): FIRST's sliding
    window for label logits, one step of disjoint windows for a vote. ``batch_size`` caps
    the windows that go to the scorer together, drawn from the steps of several queries
    (one query's step is never split, so it may exceed the cap); each forward pass holds at
    most ``max_batch_tokens`` padded tokens (``None``: the scorer's preference, one prompt
    per call on a CPU except with an int8 ONNX graph, ``DEFAULT_MAX_BATCH_TOKENS``
    elsewhere).
    Passages keep ``max_passage_words`` words: ``"auto"`` (the default) keeps as many as
    the model was trained on, recorded in its template, else 300; ``None`` keeps all.
    ``prompts`` replaces the :class:`PromptBuilder` made from ``template``,
    ``max_prompt_tokens`` and ``max_passage_words`` (for instance one that caches prompts);
    it must use ``template``.

    ``both_orders`` scores every window twice, as given and reversed, and orders it by the
    mean of the two label log-probabilities (log-softmax over the window's labels): a
    window and its reverse then get the same verdict, and a pull that grows steadily with
    position cancels out, at twice the forward passes. Scores are then those mean
    log-probabilities, not raw logits. With a vote readout, where each passage's vote is a
    logit of its own (not a share of the window), the mean of its two votes.

    ``fusion_k`` fuses each final ranking with the first stage's by reciprocal rank fusion
    with that constant (60 is the usual one; see
    :func:`~haystack_llmrank.fusion.fuse_with_first_stage`): scores are then the fused ones.
    The first stage's ranking is the order of the request's ``first_stage_scores`` where
    they are given (so any input order fuses alike), else the input order, taken as best
    first; with ``fusion_needs_scores`` a request without scores is ranked by the model
    alone. ``None`` (the default) ranks by the model alone.

    ``order_invariant`` ranks each query's passages in an order fixed by their texts
    (:func:`~haystack_llmrank.arrangement.content_order`) instead of the order given, so
    the windows, and the ranking, are the same whatever order the passages arrive in; only
    ``fusion_k`` without first-stage scores still reads the input order. Equal scores then
    keep that content order; identical passages keep their input order among themselves.
    It needs the ``disjoint`` strategy, which judges every passage once and ranks them all
    by their own scores: the other strategies take the input order as the first stage's.

    :meth:`close` (or leaving a ``with`` block) lets go of the model.
    """

    def __init__(
        self,
        tokenizer: Any,
        scorer: LabelScorer,
        *,
        max_prompt_tokens: int,
        template: PromptTemplate = FIRST_TEMPLATE,
        strategy: Strategy | str | None = None,
        max_passage_words: PassageWords = AUTO_PASSAGE_WORDS,
        batch_size: int = 1,
        max_batch_tokens: int | None = None,
        model_name: str | None = None,
        prompts: PromptBuilder | None = None,
        both_orders: bool = False,
        fusion_k: int | None = None,
        order_invariant: bool = False,
        fusion_needs_scores: bool = False,
    ) -> None:
        check_options(
            max_prompt_tokens=max_prompt_tokens,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            fusion_k=fusion_k,
        )
        self.strategy = resolve_strategy(
            template, strategy, order_invariant=order_invariant, both_orders=both_orders
        )
        self.fusion_k = check_fusion_k(fusion_k)
        self.fusion_needs_scores = bool(fusion_needs_scores)
        read = template.labels if template.vote is None else (template.vote,)
        if scorer.label_ids.labels[: len(read)] != read:
            raise ValueError(
                f"the scorer's labels {scorer.label_ids.labels} do not match the template's "
                f"{'vote' if template.vote is not None else 'labels'} {read}"
            )
        if template.vote is not None and not reads_positions(scorer):
            raise ValueError(
                f"template {template.name!r} reads a vote at each passage line's end, which "
                f"{type(scorer).__name__} cannot score (it reads the last token only)"
            )
        if prompts is not None and prompts.template != template:
            raise ValueError("the prompt builder's template is not the reranker's template")
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.prompts = prompts or PromptBuilder(
            tokenizer,
            template,
            max_prompt_tokens=max_prompt_tokens,
            max_passage_words=max_passage_words,
        )
        self._requested_max_passage_words = (
            max_passage_words if prompts is None else self.prompts.requested_max_passage_words
        )
        self.batch_size = batch_size
        self._requested_max_batch_tokens = max_batch_tokens
        self.max_batch_tokens = max_batch_tokens or preferred_max_batch_tokens(scorer)
        self.model_name = model_name
        self.both_orders = both_orders
        self.order_invariant = order_invariant
        # the sliding step that was chosen (a strategy object's is, a name's is not), which
        # replace() keeps for a new window or strategy; None: a default step follows the window
        self._step: int | None = (
            None
            if strategy is None or isinstance(strategy, str)
            else getattr(strategy, "step", None)
        )
        self._closed = False

    def close(self) -> None:
        """Let go of the model by closing the scorer (one with no ``close`` method is left
        as it is). Rerankers made by :meth:`replace` share the scorer, so they are closed
        too. Ranking afterwards raises :class:`~haystack_llmrank.errors.ClosedError`;
        closing again does nothing."""
        close = getattr(self.scorer, "close", None)
        if callable(close):
            close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        backend: str = "torch",
        device: str | None = None,
        dtype: str | None = None,
        template: TemplateChoice = None,
        vote: str | None = None,
        max_prompt_tokens: int | None = None,
        threads: int | None = None,
        on_missing_gpu: OnMissingGpu = "raise",
        strategy: Strategy | str | None = None,
        window_size: int | None = None,
        step: int | None = None,
        **kwargs: Any,
    ) -> Reranker:
        """Load a reranker for ``model`` (see :func:`haystack_llmrank.models.resolve_model`).

        ``backend`` is ``"torch"`` or ``"onnx"``; ``device`` is ``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"mps"`` (torch only; checked before loading, see
        :func:`~haystack_llmrank.devices.parse_device`) or ``None`` (CUDA when available);
        ``dtype`` is a torch dtype name or ``None`` (float32 on the CPU; on CUDA the
        checkpoint's recorded dtype, float32 when it records none, as for GGUF files, and
        float32 for bfloat16 below compute capability 8.0).
        ``threads`` is ONNX Runtime's intra-op thread count (onnx backend only).
        ``on_missing_gpu`` is ``"raise"`` (default) or ``"warn"`` (log and run on the CPU) for
        a CUDA device that cannot be used. ``template`` is a template name, dict or object, or
        ``None``: the one the model was trained or exported with, else ``"first"`` (see
        :mod:`haystack_llmrank.model_templates`). ``vote`` reads that template by the
        logit of this one token at each passage line's end instead of its labels (see
        :attr:`~haystack_llmrank.prompt.PromptTemplate.vote`); ``None`` keeps the template's
        readout. ``strategy`` is a :class:`~haystack_llmrank.strategies.Strategy`, or a
        name (see :func:`~haystack_llmrank.strategies.make_strategy`) built with
        ``window_size`` and ``step`` (``None``: see :func:`template_strategy`); ``None`` is
        the readout's own, chosen once the template is known. A window wider than the
        template's labels fails before the model loads. Other keyword arguments go to
        :class:`Reranker`, but ``fusion_k`` may also be ``"auto"`` (the default): the
        model's own constant (:func:`~haystack_llmrank.models.recommended_fusion_k`: 60 for
        the default model, none for the others), used only where first-stage scores come
        with the passages (``fusion_needs_scores``).
        """
        from haystack_llmrank.backends import load_scorer
        from haystack_llmrank.models import recommended_fusion_k

        _check_constructor_options(kwargs)
        if check_fusion_choice(kwargs.get("fusion_k", AUTO_FUSION)) == AUTO_FUSION:
            kwargs["fusion_k"] = recommended_fusion_k(model)
            kwargs.setdefault("fusion_needs_scores", True)
        check_passage_words(kwargs.get("max_passage_words", AUTO_PASSAGE_WORDS))
        check_options(
            max_prompt_tokens=max_prompt_tokens,
            batch_size=kwargs.get("batch_size", 1),
            max_batch_tokens=kwargs.get("max_batch_tokens"),
            fusion_k=kwargs["fusion_k"],
        )
        chosen = model_template(template, model, vote=vote)
        named = strategy is None or isinstance(strategy, str)
        strategy = resolve_strategy(
            chosen,
            strategy,
            window_size=window_size,
            step=step,
            order_invariant=kwargs.get("order_invariant", False),
            both_orders=kwargs.get("both_orders", False),
        )
        loaded = load_scorer(
            model,
            backend=backend,
            device=device,
            dtype=dtype,
            labels=chosen.labels,
            vote=chosen.vote,
            threads=threads,
            on_missing_gpu=on_missing_gpu,
        )
        reranker = cls(
            loaded.tokenizer,
            loaded.scorer,
            max_prompt_tokens=(
                loaded.context_length if max_prompt_tokens is None else max_prompt_tokens
            ),
            template=chosen,
            strategy=strategy,
            model_name=loaded.model_name,
            **kwargs,
        )
        if named:  # a named strategy's step was chosen only where ``step`` was given
            reranker._step = step
        return reranker

    def replace(self, **changes: Any) -> Reranker:
        """A new reranker with the same parts except ``changes`` (constructor arguments),
        checked as the constructor checks them.

        As in :meth:`from_pretrained`, ``template`` may be a name or a dict, and
        ``strategy`` a name (or ``None``, the readout's own) built with ``window_size`` and
        ``step``; ``window_size`` or ``step`` alone rebuild the current strategy. What is not
        given stays as it is: a strategy named without a ``window_size`` keeps the current
        window (unless the template changes), a rebuilt one its other settings, and a
        ``step`` that was chosen (or came with a strategy object) is kept, through strategies
        without one too, until the strategy is reset (``None``, or named for a new template);
        a default step (half the window) follows a new window. A ``step`` given to a
        strategy without one is refused.
        """
        sizes: dict[str, Any] = {k: changes.pop(k) for k in ("window_size", "step") if k in changes}
        parts: dict[str, Any] = {
            "tokenizer": self.tokenizer,
            "scorer": self.scorer,
            "max_prompt_tokens": self.prompts.max_prompt_tokens,
            "template": self.prompts.template,
            "strategy": self.strategy,
            "max_passage_words": self._requested_max_passage_words,
            "batch_size": self.batch_size,
            "max_batch_tokens": self._requested_max_batch_tokens,
            "model_name": self.model_name,
            "prompts": self.prompts,
            "both_orders": self.both_orders,
            "fusion_k": self.fusion_k,
            "order_invariant": self.order_invariant,
            "fusion_needs_scores": self.fusion_needs_scores,
        }
        unknown = set(changes) - set(parts)
        if unknown:
            raise TypeError(f"Reranker has no argument {', '.join(sorted(unknown))}")
        parts.update(changes)
        if "template" in changes:
            parts["template"] = get_template(changes["template"])
        strategy = parts["strategy"]
        named = strategy is None or isinstance(strategy, str)
        if sizes and not named and "strategy" in changes:
            raise ValueError("window_size and step apply to a strategy given by name or None")
        # a strategy named anew for a new template, or None, starts from its defaults
        reset = named and (strategy is None or "template" in changes)
        if "step" in sizes:
            step = sizes["step"]
        elif not named and "strategy" in changes:
            step = getattr(strategy, "step", self._step)
        else:
            step = None if reset else self._step
        if named:
            if not reset:
                sizes = {**self._kept_sizes(strategy, sizes.get("window_size"), step), **sizes}
            parts["strategy"] = template_strategy(parts["template"], strategy, **sizes)
        elif sizes:  # the current strategy, rebuilt: what is not given stays as it is
            sizes = {**self._kept_sizes(strategy.name, sizes.get("window_size"), step), **sizes}
            fresh = template_strategy(parts["template"], strategy.name, **sizes)
            own = dataclasses.fields(strategy) if dataclasses.is_dataclass(strategy) else ()
            kept = {
                f.name: getattr(strategy, f.name)
                for f in own
                if f.name not in ("window_size", "step")
            }
            parts["strategy"] = dataclasses.replace(fresh, **kept)  # type: ignore[type-var]
        rebuilt = {"tokenizer", "template", "max_prompt_tokens", "max_passage_words"}
        if "prompts" not in changes and rebuilt & set(changes):
            parts["prompts"] = None
        tokenizer, scorer = parts.pop("tokenizer"), parts.pop("scorer")
        replaced = Reranker(tokenizer, scorer, **parts)
        replaced._step = step
        return replaced

    def _kept_sizes(self, name: str, window_size: int | None, step: int | None) -> dict[str, int]:
        """The sizes a rebuild to strategy ``name`` with ``window_size`` (``None``: the
        current one) keeps: the current window, and ``step`` if chosen and ``name`` slides."""
        kept = {} if window_size is not None else {"window_size": self.strategy.window_size}
        if step is not None and name == SlidingWindow.name:
            kept["step"] = step
        return kept

    def count_windows(self, sizes: Sequence[int], top_k: int | None = None) -> int:
        """The most windows ranking lists of these sizes can take (each is one forward pass,
        two with ``both_orders``), blank passages included: as those get no window, each
        list counts the most of any list no longer (a strategy can take more windows for
        fewer passages)."""
        windows = (self.strategy.max_windows(n, top_k) for n in range(max(sizes, default=0) + 1))
        most = list(accumulate(windows, max))
        return sum(most[n] for n in sizes)

    def check_request(self, query: str, passages: Sequence[str]) -> None:
        """Raise, without scoring, what :meth:`rerank_many` would raise for this request
        whatever the others: ``TypeError`` or ``ValueError`` for a wrong one, and
        :class:`~haystack_llmrank.errors.PromptTooLongError` where the prompt budget, beside
        the query and its widest window's labels, leaves fewer than
        :data:`~haystack_llmrank.prompt.MIN_PASSAGE_TOKENS` tokens per passage (see
        :meth:`PromptBuilder.check_query`)."""
        _, listed = _checked_request(query, passages)
        self._check_query(query, sum(not is_blank(passage) for passage in listed))

    def _check_query(self, query: str, shown: int) -> None:
        """Raise where the budget leaves too little room beside ``query`` for the widest
        window of ``shown`` passages (blank ones get no window, so none at all for 0)."""
        if shown:
            self.prompts.check_query(query, min(shown, self.strategy.window_size))

    def _check_queries(self, requests: Sequence[tuple[str, Sequence[str]]]) -> None:
        """:class:`~haystack_llmrank.errors.PromptTooLongError` naming every request whose
        query leaves too little room for its passages (see :meth:`_check_query`), with
        their positions and problems in ``requests``, chained from the first's error."""
        over: dict[int, str] = {}
        first: PromptTooLongError | None = None
        for position, (query, passages) in enumerate(requests):
            try:
                self._check_query(query, len(passages))
            except PromptTooLongError as exc:
                over[position] = str(exc)
                first = first or exc
        if over:
            (position, problem), *others = over.items()
            also = [str(other) for other, _ in others]
            so = f" (so are requests {listed(also, 10)})" if also else ""
            raise PromptTooLongError(f"request {position}: {problem}{so}", requests=over) from first

    def rerank(
        self,
        query: str,
        passages: Iterable[str],
        *,
        top_k: int | None = None,
        first_stage_scores: Iterable[float] | None = None,
    ) -> Ranking:
        """Rank ``passages`` for ``query``; with ``top_k``, only the first ``top_k`` matter.
        ``first_stage_scores`` (one per passage) are the first stage's, which ``fusion_k``
        fuses with (see :meth:`rerank_many`)."""
        scores = None if first_stage_scores is None else [first_stage_scores]
        return self.rerank_many([(query, passages)], top_k=top_k, first_stage_scores=scores)[0]

    def rerank_many(
        self,
        requests: Iterable[RerankRequest],
        *,
        top_k: int | Sequence[int | None] | None = None,
        on_window: Callable[[int], None] | None = None,
        first_stage_scores: Sequence[Iterable[float] | None] | None = None,
    ) -> list[Ranking]:
        """Rank many queries' passages, batching windows of different queries together.

        ``top_k`` (one value, or one per request) tells the strategy that only the first
        ``top_k`` positions of a ranking matter; it may then leave more positions in
        first-stage order (:attr:`Ranking.unranked`). ``on_window`` is called after each
        forward pass with the number of windows it finished (0 when it scored only one of a
        window's two orders), so it may stop the ranking between passes by raising. A
        query's ranking does not depend on the others, up to the float rounding of padded
        batches. ``requests``, and each request's passages, may be any iterable in a
        definite order (a set or a mapping is refused); each is read once. Blank passages
        (:func:`~haystack_llmrank.blank_passages.is_blank`) are shown to no window: they come
        last, in input order (:attr:`Ranking.blank`). Requests whose query is too long for
        any prompt (see :meth:`check_request`) refuse the batch before any scoring, with a
        :class:`~haystack_llmrank.errors.PromptTooLongError` that names every one of them.
        ``first_stage_scores`` (one entry per request: ``None``, or one finite score per
        passage, blank ones included) give the first stage's ranking that ``fusion_k`` fuses
        with, highest first, equal scores in input order; without them it is the input order,
        or none with ``fusion_needs_scores``. Only fusion reads them.
        """
        if self._closed:
            raise ClosedError("this Reranker was closed; load the model again to rank")
        given = [_checked_request(query, passages) for query, passages in requests]
        first_ranks = _first_stage_ranks(first_stage_scores, [len(p) for _, p in given])
        splits = [split_blank(passages) for _, passages in given]
        texted = [
            (query, [passages[i] for i in kept])
            for (query, passages), (kept, _) in zip(given, splits, strict=True)
        ]
        self._check_queries(texted)
        arrangements = [
            content_order(query, passages) if self.order_invariant else None
            for query, passages in texted
        ]
        laid_out = [
            (query, passages if order is None else [passages[i] for i in order])
            for (query, passages), order in zip(texted, arrangements, strict=True)
        ]
        depths = _per_request(top_k, len(laid_out))
        runs = [
            QueryRun(self.strategy, len(passages), depth)
            for (_, passages), depth in zip(laid_out, depths, strict=True)
        ]
        tokens = [0] * len(runs)
        truncated = [0] * len(runs)

        orders = 2 if self.both_orders else 1

        def score(windows: Sequence[tuple[int, Sequence[int]]]) -> list[npt.NDArray[np.float32]]:
            prompts = []
            for position, members in windows:
                query, passages = laid_out[position]
                for arranged in (members, members[::-1])[:orders]:
                    prompt = self.prompts.build(query, [passages[i] for i in arranged])
                    tokens[position] += len(prompt.token_ids)
                    truncated[position] += prompt.truncated_passages
                    prompts.append(prompt)
            progress = (
                None if on_window is None else _window_progress(len(windows), orders, on_window)
            )
            logits = self.score_prompts(prompts, on_pass=progress)
            if orders == 1:
                return logits
            combine = (
                both_orders_logits if self.prompts.template.vote is None else both_orders_votes
            )
            return [
                combine(logits[2 * k], logits[2 * k + 1], len(members))
                for k, (_, members) in enumerate(windows)
            ]

        run_windows(runs, score, batch_size=self.batch_size)
        results = [
            run.result(count, cut) for run, count, cut in zip(runs, tokens, truncated, strict=True)
        ]
        rankings = [
            result if order is None else in_input_indices(result, order, passages)
            for result, order, (_, passages) in zip(results, arrangements, texted, strict=True)
        ]
        if self.fusion_k is not None:  # first-stage ranks count blank passages
            rankings = [
                self._fused(ranking, kept, ranks)
                for ranking, (kept, _), ranks in zip(rankings, splits, first_ranks, strict=True)
            ]
        return [
            with_blank_passages(ranking, kept, blank)
            for ranking, (kept, blank) in zip(rankings, splits, strict=True)
        ]

    def _fused(self, ranking: Ranking, kept: Sequence[int], ranks: list[int] | None) -> Ranking:
        """``ranking`` (of the passages at input indices ``kept``) fused with the first stage:
        ``ranks`` (every input passage's first-stage rank) where given, else the input order
        unless fusion needs scores."""
        assert self.fusion_k is not None
        if ranks is None and self.fusion_needs_scores:
            return ranking
        positions = list(kept) if ranks is None else [ranks[i] for i in kept]
        return fuse_with_first_stage(ranking, self.fusion_k, positions=positions)

    def score_prompts(
        self,
        prompts: Sequence[Prompt],
        *,
        on_pass: Callable[[Sequence[int]], None] | None = None,
    ) -> list[npt.NDArray[np.float32]]:
        """Each prompt's scores, one per passage in prompt order (label logits, or vote
        logits at the line ends), scored in length buckets within the token budget, one
        forward pass each; ``on_pass`` gets the positions in ``prompts`` of each pass."""
        scored: dict[int, npt.NDArray[np.float32]] = {}
        lengths = [len(p.token_ids) for p in prompts]
        for group in length_buckets(lengths, self.max_batch_tokens):
            ids = [prompts[i].token_ids for i in group]
            if self.prompts.template.vote is None:
                scored.update(zip(group, self.scorer.score(ids), strict=True))
            else:
                assert isinstance(self.scorer, PositionScorer)  # checked in __init__
                at = [prompts[i].score_positions for i in group]
                votes = self.scorer.score_at(ids, at)[:, :, 0]
                scored.update(
                    (i, row[: len(a)]) for i, row, a in zip(group, votes, at, strict=True)
                )
            if on_pass is not None:
                on_pass(group)
        return [scored[i] for i in range(len(prompts))]


def both_orders_logits(
    given: npt.NDArray[np.float32], reversed_: npt.NDArray[np.float32], size: int
) -> npt.NDArray[np.float32]:
    """The mean label log-probability of each of a window's ``size`` members (in the given
    order) from its label logits as given and as reversed."""
    forward = _log_softmax(given[:size])
    backward = _log_softmax(reversed_[:size])[::-1]
    return ((forward + backward) / 2).astype(np.float32)


def both_orders_votes(
    given: npt.NDArray[np.float32], reversed_: npt.NDArray[np.float32], size: int
) -> npt.NDArray[np.float32]:
    """The mean vote of each of a window's ``size`` members (in the given order) from its
    votes as given and as reversed."""
    return ((given[:size] + reversed_[:size][::-1]) / 2).astype(np.float32)


def _window_progress(
    windows: int, orders: int, on_window: Callable[[int], None]
) -> Callable[[Sequence[int]], None]:
    """An ``on_pass`` for the prompts of ``windows`` windows, ``orders`` in a row each, that
    tells ``on_window`` how many windows each pass finished."""
    unscored = [orders] * windows

    def finished(group: Sequence[int]) -> None:
        for i in group:
            unscored[i // orders] -= 1
        on_window(len({i // orders for i in group if not unscored[i // orders]}))

    return finished


def _log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    shifted: npt.NDArray[np.float64] = logits.astype(np.float64) - logits.max()
    log_probabilities: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum())
    return log_probabilities


def _per_request(top_k: int | Sequence[int | None] | None, count: int) -> list[int | None]:
    if not isinstance(top_k, Sequence) or isinstance(top_k, str):
        return [top_k] * count
    depths = list(top_k)
    if len(depths) != count:
        raise ValueError(f"top_k has {len(depths)} values for {count} requests")
    return depths


def _first_stage_ranks(
    scores: Sequence[Iterable[float] | None] | None, counts: Sequence[int]
) -> list[list[int] | None]:
    """Each request's first-stage ranks from its ``scores`` (``None`` where it has none);
    ``ValueError`` for a wrong number of entries or of scores, or a score that is not a
    finite number."""
    if scores is None:
        return [None] * len(counts)
    if isinstance(scores, str) or not isinstance(scores, Sequence):
        raise TypeError("first_stage_scores must be a sequence, one entry per request")
    if len(scores) != len(counts):
        raise ValueError(f"first_stage_scores has {len(scores)} entries for {len(counts)} requests")
    return [
        None if given is None else first_stage_ranks(first_stage_scores(given, count))
        for given, count in zip(scores, counts, strict=True)
    ]


def _checked_request(query: str, passages: Iterable[str]) -> tuple[str, list[str]]:
    """``query`` and ``passages`` as a list, read once; the passages must come in an order."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if is_blank(query):
        raise ValueError("query is empty")
    if isinstance(passages, str):
        raise TypeError("passages must be a sequence of strings, not one string")
    if isinstance(passages, Set | Mapping) or not isinstance(passages, Iterable):
        raise TypeError(
            f"passages must be a sequence of strings, in first-stage order; "
            f"got {type(passages).__name__}"
        )
    listed = list(passages)
    for position, passage in enumerate(listed):
        if not isinstance(passage, str):
            raise TypeError(f"passage {position} is {type(passage).__name__}, not a string")
    return query, listed
