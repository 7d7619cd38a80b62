"""One benchmark row: load it, warm it up, rank every query under the clock, read peak memory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from haystack_llmrank.bench.config import (
    GENERATE,
    ORACLE,
    PLAIN,
    SLIDING,
    SYNTHETIC_CONFIGS,
    TORCH,
    TORCH_BF16,
    BenchConfig,
    onnx_precision,
    row_dtype,
)
from haystack_llmrank.bench.measure import (
    clock,
    peak_cuda_mb,
    peak_rss_mb,
    reset_peak_cuda,
    reset_peak_rss,
)
from haystack_llmrank.bench.model_loading import (
    LoadedModel,
    engine_label_ids,
    load_bench_model,
    load_bench_tokenizer,
    plain_label_ids,
    plain_vote_id,
)
from haystack_llmrank.bench.oracle import OraclePromptBuilder, oracle_reranker, qrels_judge
from haystack_llmrank.bench.plain import (
    FullLogitsWindow,
    GenerateWindow,
    VoteWindow,
    deal_and_sort,
    slide,
)
from haystack_llmrank.bench.prompts import CachedPromptBuilder, WindowKey, window_key
from haystack_llmrank.data import Qrels, QueryCandidates
from haystack_llmrank.errors import LlmRankError
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.prompt import Prompt, PromptTemplate
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.base import (
    LabelScorer,
    PositionScorer,
    preferred_max_batch_tokens,
    reads_positions,
)
from haystack_llmrank.strategies import Disjoint, SlidingWindow, Strategy, make_strategy

logger = logging.getLogger(__name__)

Orders = dict[str, tuple[int, ...]]
WindowOrders = dict[WindowKey, tuple[int, ...]]
Steps = dict[str, int]


Tick = Callable[[int], None]


class RowUnavailableError(LlmRankError):
    """A row cannot run in this installation (an optional dependency or feature is missing)."""


@dataclass(frozen=True)
class RowJob:
    """Everything a row needs, picklable so that it can run in a fresh process.

    ``config`` has its device and dtype resolved; ``prompts`` are the windows built so far,
    with ``template``, the prompt template of the bench's model.
    ``strategy`` is what the engine and oracle rows rank with; ``noise`` and ``qrels`` are
    the oracle's.
    """

    row: str
    config: BenchConfig
    queries: tuple[QueryCandidates, ...]
    max_prompt_tokens: int
    prompts: dict[WindowKey, Prompt]
    template: PromptTemplate
    onnx_dir: Path | None = None
    strategy: str = SLIDING
    noise: float = 0.0
    qrels: Qrels | None = None


@dataclass(frozen=True)
class SweepPoint:
    """One pass over every query at a batch size: ``windows`` scored as ``prompts`` in
    ``forward_passes`` (calls of the scorer)."""

    batch_size: int
    seconds: float
    windows: int
    prompts: int
    forward_passes: int
    peak_cuda_mb: float | None


@dataclass(frozen=True)
class RowOutcome:
    """What one row measured. ``seconds`` excludes loading, warm-up and prompt building.

    ``orders`` maps a qid to the ranked candidate indices; ``window_orders`` maps each window
    to the window positions from best to worst; ``steps`` maps a qid to the sequential steps
    its windows took (a step's windows can run as one batch). Peak memory covers loading and
    the timed pass (not the batch-size sweep); ``memory_isolated`` is True when the row ran in
    a fresh process, False when memory still held from earlier rows of the process may count.
    """

    row: str
    seconds: float
    windows: int
    prompt_tokens: int
    generated_tokens: int
    load_seconds: float
    prompt_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    memory_isolated: bool
    orders: Orders
    window_orders: WindowOrders
    steps: Steps
    sweep: tuple[SweepPoint, ...]
    prompts: dict[WindowKey, Prompt]


class PlainLoop:
    """A row written as a plain loop, one query after another: subclasses rank one query."""

    builder: CachedPromptBuilder

    def rank(
        self, queries: Sequence[QueryCandidates], tick: Tick
    ) -> tuple[Orders, WindowOrders, Steps]:
        """Rank each query in turn, recording every window's order."""
        windows: WindowOrders = {}
        orders = {q.qid: self._rank_query(q, windows, tick) for q in queries}
        steps = {q.qid: self._steps(len(q.candidates)) for q in queries}
        return orders, windows, steps

    def _rank_query(
        self, query: QueryCandidates, windows: WindowOrders, tick: Tick
    ) -> tuple[int, ...]:
        raise NotImplementedError

    def _steps(self, n: int) -> int:
        raise NotImplementedError

    def _prompt(self, query: QueryCandidates, members: list[int]) -> tuple[Prompt, WindowKey]:
        """The prompt of the window of ``query``'s candidates ``members``, and its key."""
        passages = [query.texts[i] for i in members]
        return self.builder.build(query.query, passages), window_key(query.query, passages)


class LoopRow(PlainLoop):
    """A plainly written sliding-window loop around one window function (rows plain, generate)."""

    def __init__(
        self,
        builder: CachedPromptBuilder,
        window: FullLogitsWindow | GenerateWindow,
        strategy: SlidingWindow,
    ) -> None:
        self.builder = builder
        self.window = window
        self.strategy = strategy

    @property
    def generated_tokens(self) -> int:
        """Tokens generated so far (0 for a row that does not generate)."""
        return self.window.generated_tokens if isinstance(self.window, GenerateWindow) else 0

    def warm(self, prompt: Prompt, n: int) -> None:
        """Order one window, untimed."""
        self.window(prompt.token_ids, n)

    def _steps(self, n: int) -> int:
        """Every window is a step of its own."""
        return len(self.strategy.windows(n))

    def _rank_query(
        self, query: QueryCandidates, windows: WindowOrders, tick: Tick
    ) -> tuple[int, ...]:
        def order_window(members: list[int]) -> list[int]:
            prompt, key = self._prompt(query, members)
            windows[key] = tuple(self.window(prompt.token_ids, len(members)))
            tick(1)
            return list(windows[key])

        size, step = self.strategy.window_size, self.strategy.step
        return tuple(slide(len(query.candidates), size, step, order_window))


class VoteLoopRow(PlainLoop):
    """A plainly written loop of disjoint windows around :class:`VoteWindow` (row plain, for
    a model read by its votes)."""

    generated_tokens = 0

    def __init__(
        self, builder: CachedPromptBuilder, window: VoteWindow, strategy: Disjoint
    ) -> None:
        self.builder = builder
        self.window = window
        self.strategy = strategy

    def warm(self, prompt: Prompt, n: int) -> None:
        """Score one window, untimed."""
        self.window(prompt.token_ids, prompt.score_positions)

    def _steps(self, n: int) -> int:
        """A query's windows make one step."""
        return int(n > 0)

    def _rank_query(
        self, query: QueryCandidates, windows: WindowOrders, tick: Tick
    ) -> tuple[int, ...]:
        def score_window(members: list[int]) -> list[float]:
            prompt, key = self._prompt(query, members)
            votes = self.window(prompt.token_ids, prompt.score_positions)
            windows[key] = tuple(sorted(range(len(votes)), key=lambda i: -votes[i]))
            tick(1)
            return votes

        size = self.strategy.window_size
        return tuple(deal_and_sort(len(query.candidates), size, score_window))


class RecordingScorer:
    """Passes scoring through to another scorer and keeps each prompt's scores (its label
    logits, or its votes at the positions read); ``batches`` holds the prompts of each call
    (each forward pass)."""

    def __init__(self, inner: LabelScorer) -> None:
        self.inner = inner
        self.logits: dict[tuple[int, ...], npt.NDArray[np.float32]] = {}
        self.batches: list[int] = []

    @property
    def label_ids(self) -> LabelIds:
        """The inner scorer's labels."""
        return self.inner.label_ids

    @property
    def preferred_max_batch_tokens(self) -> int:
        """The inner scorer's batching preference, so that recording changes no timing."""
        return preferred_max_batch_tokens(self.inner)

    @property
    def reads_positions(self) -> bool:
        """Whether the inner scorer reads logits at positions (a vote readout needs it)."""
        return reads_positions(self.inner)

    def score(self, prompts: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """The inner scorer's logits, remembered per prompt."""
        self.batches.append(len(prompts))
        logits = self.inner.score(prompts)
        for prompt, row in zip(prompts, logits, strict=True):
            self.logits[tuple(prompt)] = row
        return logits

    def score_at(
        self, prompts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """The inner scorer's logits at ``positions``; the first label's (a vote's) are
        remembered per prompt."""
        if not isinstance(self.inner, PositionScorer):
            raise TypeError(f"{type(self.inner).__name__} cannot read logits at positions")
        self.batches.append(len(prompts))
        logits = self.inner.score_at(prompts, positions)
        for prompt, row in zip(prompts, logits, strict=True):
            self.logits[tuple(prompt)] = row[:, 0]
        return logits


class EngineRow:
    """The project's :class:`Reranker` (rows torch and onnx-*), fed the shared prompts."""

    generated_tokens = 0

    def __init__(self, reranker: Reranker, builder: CachedPromptBuilder) -> None:
        self.recorder = RecordingScorer(reranker.scorer)
        self.reranker = reranker.replace(scorer=self.recorder, prompts=builder)
        self.builder = builder

    def warm(self, prompt: Prompt, n: int) -> None:
        """Score one window, untimed."""
        self.reranker.score_prompts([prompt])

    def rank(
        self, queries: Sequence[QueryCandidates], tick: Tick
    ) -> tuple[Orders, WindowOrders, Steps]:
        """Rank all queries in one :meth:`Reranker.rerank_many` call."""
        first = len(self.builder.requested)
        rankings = self.reranker.rerank_many([(q.query, q.texts) for q in queries], on_window=tick)
        windows: WindowOrders = {}
        for key in self.builder.requested[first:]:
            logits = self.recorder.logits[self.builder.cache[key].token_ids][: len(key[1])]
            windows[key] = tuple(int(i) for i in np.argsort(-logits, kind="stable"))
        orders = {q.qid: r.order for q, r in zip(queries, rankings, strict=True)}
        steps = {q.qid: r.cost.steps for q, r in zip(queries, rankings, strict=True)}
        return orders, windows, steps

    def sweep(
        self, queries: Sequence[QueryCandidates], sizes: Sequence[int], device: str
    ) -> tuple[SweepPoint, ...]:
        """Time a pass over all queries at each batch size ``size``: calls of up to ``size``
        windows, drawn from the steps of several queries (a query's step is never split), and
        forward passes of up to ``size x`` the longest prompt's tokens (``size`` prompts of
        that length, more of shorter ones)."""
        longest = max(len(p.token_ids) for p in self.builder.cache.values())
        requests = [(q.query, q.texts) for q in queries]
        points = []
        for size in sizes:
            sized = self.reranker.replace(batch_size=size, max_batch_tokens=size * longest)
            points.append(self._timed_pass(sized, requests, size, device))
        return tuple(points)

    def _timed_pass(
        self,
        reranker: Reranker,
        requests: Sequence[tuple[str, list[str]]],
        size: int,
        device: str,
    ) -> SweepPoint:
        windows: list[int] = []
        reset_peak_cuda(device)
        built, first = self.builder.build_seconds, len(self.recorder.batches)
        start = clock(device)
        reranker.rerank_many(requests, on_window=windows.append)
        seconds = clock(device) - start - (self.builder.build_seconds - built)
        batches = self.recorder.batches[first:]
        return SweepPoint(
            size, seconds, sum(windows), sum(batches), len(batches), peak_cuda_mb(device)
        )


def _builder(job: RowJob, tokenizer: object, vocab_size: int | None) -> CachedPromptBuilder:
    return CachedPromptBuilder(
        tokenizer,
        job.template,
        max_prompt_tokens=job.max_prompt_tokens,
        cache=job.prompts,
        vocab_size=vocab_size,
    )


def _strategy(config: BenchConfig) -> SlidingWindow:
    return SlidingWindow(config.window, config.sliding_step)


def job_strategy(job: RowJob) -> Strategy:
    """The strategy the row ranks with."""
    config = job.config
    return make_strategy(job.strategy, window_size=config.window, step=config.sliding_step)


def _load_model(job: RowJob) -> LoadedModel:
    config = job.config
    assert config.device is not None
    assert config.dtype is not None
    return load_bench_model(
        config.model,
        config.synthetic,
        device=config.device,
        dtype=row_dtype(job.row, config.dtype),
        seed=config.seed,
    )


def _load_loop_row(job: RowJob) -> LoopRow | VoteLoopRow:
    loaded = _load_model(job)
    builder = _builder(job, loaded.tokenizer, loaded.vocab_size)
    vote = job.template.vote
    if job.row == PLAIN and vote is not None:
        window_size = job.config.window
        return VoteLoopRow(
            builder, VoteWindow(loaded.model, plain_vote_id(loaded, vote)), Disjoint(window_size)
        )
    labels = job.template.labels[: job.config.window]
    window: FullLogitsWindow | GenerateWindow
    if job.row == PLAIN:
        window = FullLogitsWindow(loaded.model, plain_label_ids(loaded, labels))
    else:
        window = GenerateWindow(
            loaded.model, loaded.tokenizer, labels, answer_prefix=job.template.answer_prefix
        )
    return LoopRow(builder, window, _strategy(job.config))


def _load_torch_row(job: RowJob) -> EngineRow:
    from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

    config = job.config
    loaded = _load_model(job)
    pad = loaded.tokenizer.pad_token_id or 0
    if loaded.vocab_size is not None:
        pad %= loaded.vocab_size
    template = job.template
    scorer = TorchLabelScorer(
        loaded.model, engine_label_ids(loaded, template.labels, template.vote), pad_token_id=pad
    )
    reranker = Reranker(
        loaded.tokenizer,
        scorer,
        max_prompt_tokens=job.max_prompt_tokens,
        template=job.template,
        strategy=job_strategy(job),
        batch_size=config.batch_size,
        max_batch_tokens=config.max_batch_tokens,
    )
    return EngineRow(reranker, _builder(job, loaded.tokenizer, loaded.vocab_size))


def _load_oracle_row(job: RowJob) -> EngineRow:
    config = job.config
    if job.qrels is None:
        raise ValueError("the oracle row needs the qrels")
    reranker = oracle_reranker(
        load_bench_tokenizer(config.model, config.synthetic),
        qrels_judge(job.queries, job.qrels),
        max_prompt_tokens=job.max_prompt_tokens,
        noise=job.noise,
        seed=config.seed,
        strategy=job_strategy(job),
        template=job.template,
        batch_size=config.batch_size,
        max_batch_tokens=config.max_batch_tokens,
        cache=job.prompts,
        vocab_size=SYNTHETIC_CONFIGS[config.synthetic]["vocab_size"] if config.synthetic else None,
    )
    builder = reranker.prompts
    assert isinstance(builder, OraclePromptBuilder)
    return EngineRow(reranker, builder)


def _load_onnx_row(job: RowJob) -> EngineRow:
    config = job.config
    if job.onnx_dir is None:
        raise RowUnavailableError(f"{job.row}: no ONNX export to load")
    try:
        reranker = Reranker.from_pretrained(
            str(job.onnx_dir),
            backend="onnx",
            device=config.device,
            threads=config.threads,
            max_prompt_tokens=job.max_prompt_tokens,
            strategy=job_strategy(job),
            batch_size=config.batch_size,
            max_batch_tokens=config.max_batch_tokens,
        )
    except (ImportError, NotImplementedError) as exc:
        raise RowUnavailableError(f"the onnx backend cannot load: {exc}") from exc
    tokenizer = load_bench_tokenizer(config.model, config.synthetic)
    return EngineRow(reranker, _builder(job, tokenizer, None))


def _load(job: RowJob) -> LoopRow | VoteLoopRow | EngineRow:
    if job.row in (PLAIN, GENERATE):
        return _load_loop_row(job)
    if job.row in (TORCH, TORCH_BF16):
        return _load_torch_row(job)
    if job.row == ORACLE:
        return _load_oracle_row(job)
    if onnx_precision(job.row) is not None:
        return _load_onnx_row(job)
    raise ValueError(f"unknown row {job.row!r}")


def first_window(
    queries: Sequence[QueryCandidates], strategy: Strategy
) -> tuple[str, list[str]] | None:
    """The query and passages of the first window ``strategy`` runs, or None when there is
    none."""
    for query in queries:
        try:
            groups = next(strategy.plan(len(query.candidates)))
        except StopIteration:  # ranked without a window
            continue
        return query.query, [query.texts[i] for i in groups[0]]
    return None


def run_row(job: RowJob, *, fresh_process: bool = False) -> RowOutcome:
    """Load the row, warm it up, rank every query under the clock, and measure it."""
    config = job.config
    device = config.device or "cpu"
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    reset_peak_rss()
    reset_peak_cuda(device)
    start = clock(device)
    row = _load(job)
    load_seconds = clock(device) - start  # a model built on CUDA has queued kernels
    builder = row.builder
    warm = first_window(job.queries, job_strategy(job))
    if warm is not None and config.warmup:
        prompt = builder.build(*warm)
        for _ in range(config.warmup):
            row.warm(prompt, len(warm[1]))
    first, built, generated = len(builder.requested), builder.build_seconds, row.generated_tokens
    total = sum(job_strategy(job).max_windows(len(q.candidates)) for q in job.queries)
    with tqdm(total=total, desc=job.row, unit="window", disable=not config.progress) as bar:
        begin = clock(device)
        orders, window_orders, steps = row.rank(job.queries, bar.update)
        seconds = clock(device) - begin - (builder.build_seconds - built)
    keys = builder.requested[first:]
    peak_rss, peak_cuda = peak_rss_mb(), peak_cuda_mb(device)
    logger.info(
        "%s: %d windows in %.2f s, peak RSS %.0f MiB", job.row, len(keys), seconds, peak_rss
    )
    sweep: tuple[SweepPoint, ...] = ()
    if isinstance(row, EngineRow) and config.sweep_batch_sizes:
        sweep = row.sweep(job.queries, config.sweep_batch_sizes, device)
    return RowOutcome(
        row=job.row,
        seconds=seconds,
        windows=len(keys),
        prompt_tokens=sum(len(builder.cache[k].token_ids) for k in keys),
        generated_tokens=row.generated_tokens - generated,
        load_seconds=load_seconds,
        prompt_seconds=builder.build_seconds,
        peak_rss_mb=peak_rss,
        peak_cuda_mb=peak_cuda,
        memory_isolated=fresh_process,
        orders=orders,
        window_orders=window_orders,
        steps=steps,
        sweep=sweep,
        prompts=builder.cache,
    )
