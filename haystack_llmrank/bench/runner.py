"""Plan a benchmark (data, one calibration window, estimates) and run its rows."""

from __future__ import annotations

import functools
import gc
import importlib.util
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from haystack_llmrank.backends import cuda_has_native_bf16
from haystack_llmrank.bench.config import (
    DATA_DIR_VARIABLE,
    ENGINE_ROWS,
    GENERATE,
    ORACLE,
    PLAIN,
    SLIDING,
    SYNTHETIC_CONFIGS,
    TORCH_BF16,
    BenchConfig,
    Variant,
    default_rows,
    floor_dtype,
    onnx_precision,
)
from haystack_llmrank.bench.measure import clock, matmul_tflops
from haystack_llmrank.bench.model_loading import (
    attention_width,
    body_parameters,
    load_bench_model,
    load_bench_tokenizer,
    resolve_device,
)
from haystack_llmrank.bench.plain import answer_tokens
from haystack_llmrank.bench.prompts import CachedPromptBuilder, WindowKey
from haystack_llmrank.bench.rows import (
    RowJob,
    RowOutcome,
    RowUnavailableError,
    first_window,
    run_row,
)
from haystack_llmrank.blank_passages import is_blank
from haystack_llmrank.data import Qrels, QueryCandidates, read_qrels, read_queries
from haystack_llmrank.export import export_onnx, is_export, read_metadata
from haystack_llmrank.model_templates import model_template
from haystack_llmrank.models import context_length, resolve_model, weights_fingerprint
from haystack_llmrank.prompt import FIRST_TEMPLATE, Prompt, PromptTemplate
from haystack_llmrank.reranker import template_sizes
from haystack_llmrank.scorers.base import device_max_batch_tokens
from haystack_llmrank.scorers.onnx_metadata import Precision
from haystack_llmrank.strategies import check_step_applies, make_strategy

logger = logging.getLogger(__name__)

T = TypeVar("T")
DECODE_PROBE_TOKENS = 8
"""Tokens generated to time one decoding step."""


@dataclass(frozen=True)
class Calibration:
    """One window timed before the rows run: the basis of estimates and of the FLOP floor.

    ``forward_seconds`` is one forward pass of the prompt, ``token_seconds`` one greedy
    decoding step after it, ``body_parameters`` the parameters without embeddings and LM head,
    ``attention_width`` layers x query heads x head size (None when the config lacks them).
    """

    load_seconds: float
    forward_seconds: float
    token_seconds: float
    prompt_tokens: int
    max_new_tokens: int
    body_parameters: int
    attention_width: int | None


@dataclass(frozen=True)
class Throughput:
    """Best dense ``size x size`` matmul throughput of the device, in TFLOP/s."""

    tflops: float
    size: int
    dtype: str


@dataclass(frozen=True)
class Plan:
    """The resolved settings, the queries (cut to ``top_k``) and what was measured up front.

    ``unavailable`` names rows that cannot run here, with the reason. ``windows`` counts
    the windows of the readout's own strategy (``config.readout_strategy``) over all
    queries; ``calibration`` is ``None`` when no row runs the model; ``template`` is the
    model's prompt template, which every row's prompts use.
    """

    config: BenchConfig
    queries: tuple[QueryCandidates, ...]
    total_queries: int
    qrels: Qrels
    windows: int
    max_prompt_tokens: int
    calibration: Calibration | None
    throughput: Throughput
    prompts: dict[WindowKey, Prompt]
    unavailable: dict[str, str]
    template: PromptTemplate
    row_throughputs: dict[str, Throughput] = field(default_factory=dict)

    def throughput_of(self, row: str) -> Throughput:
        """The matmul rate of the dtype ``row`` runs in: its FLOP floor's denominator."""
        assert self.config.dtype is not None
        return self.row_throughputs.get(floor_dtype(row, self.config.dtype), self.throughput)

    def estimates(self) -> dict[str, float]:
        """Expected seconds of each runnable line, by :attr:`Variant.name`.

        Loading, warm-up, the timed pass and the sweep, at the most windows its strategy can
        take. ONNX exports, process start-up and the oracle rows (no model) are not included.
        """
        c = self.calibration
        passes = 1 + len(self.config.sweep_batch_sizes)
        result = {}
        for variant in self.config.variants:
            row = variant.row
            if row in self.unavailable:
                continue
            if c is None or row == ORACLE:
                result[variant.name] = 0.0
                continue
            windows = self.windows_of(variant.strategy)
            if row == GENERATE:
                per_window = c.forward_seconds + c.max_new_tokens * c.token_seconds
                scored = windows
            else:
                per_window = c.forward_seconds
                scored = windows * (1 if row == PLAIN else passes)
            result[variant.name] = c.load_seconds + (scored + self.config.warmup) * per_window
        return result

    @property
    def depth(self) -> int:
        """The most candidates a query ranks: ``config.top_k``, or fewer where no chosen
        query holds that many."""
        return max((len(q.candidates) for q in self.queries), default=0)

    def windows_of(self, strategy: str) -> int:
        """The most windows ``strategy`` takes over all queries."""
        config = self.config
        chosen = make_strategy(strategy, window_size=config.window, step=config.sliding_step)
        return sum(chosen.max_windows(len(q.candidates)) for q in self.queries)


@dataclass(frozen=True)
class RowResult:
    """A line's fate: ``status`` is ``ok`` (with ``outcome``), ``unavailable`` or ``failed``.

    An ONNX row's ``export_*`` are the export's seconds (``None`` when reused), attention and
    the source model its metadata records.
    """

    row: str
    status: str
    outcome: RowOutcome | None = None
    reason: str | None = None
    export_seconds: float | None = None
    export_attention: str | None = None
    export_source_model: str | None = None
    strategy: str = SLIDING
    noise: float | None = None

    @property
    def variant(self) -> Variant:
        """The row, strategy and noise this result measured."""
        return Variant(self.row, self.strategy, self.noise)


def read_data(config: BenchConfig) -> tuple[list[QueryCandidates], Qrels]:
    """All queries of ``candidates.jsonl`` and the judgements of ``qrels.txt`` in the data dir."""
    candidates, qrels = config.data_files
    for path in (candidates, qrels):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; point --data-dir (or ${DATA_DIR_VARIABLE}) at the DL19 folder"
            )
    return read_queries(candidates), read_qrels(qrels)


def select_queries(
    queries: list[QueryCandidates], count: int | None, top_k: int
) -> tuple[QueryCandidates, ...]:
    """The first ``count`` queries (all for ``None``), each cut to its top ``top_k``.

    A blank candidate is refused: the engine rows would keep it out of their windows and the
    plain rows, FIRST's loop as written, would show it, so the rows would not rank alike.
    """
    if count is not None and count > len(queries):
        raise ValueError(f"{count} queries asked for; the data has {len(queries)}")
    chosen = tuple(q.top(top_k) for q in queries[:count])
    for query in chosen:
        blank = [c.docid for c in query.candidates if is_blank(c.text)]
        if blank:
            raise ValueError(
                f"query {query.qid} has blank candidates {blank}; the bench compares rows on "
                "passages with text (the engine keeps blank ones out of its windows)"
            )
    return chosen


def onnx_unavailable(config: BenchConfig) -> str | None:
    """Why the ONNX rows cannot run here, or None when they can be tried."""
    if config.synthetic is not None:
        return "synthetic models are measured on torch only (there are no weights to export)"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'llmrank[onnx]')"
    return None


def unavailable_rows(config: BenchConfig) -> dict[str, str]:
    """The chosen rows that cannot run here, with the reason: ONNX rows, and ``torch-bf16``
    on a GPU without native bfloat16.

    On CUDA, that includes the precisions whose (fused-attention) export would run partly on
    the CPU: their timings would measure CPU kernels and device copies.
    """
    from haystack_llmrank.scorers.onnx_scorer import CUDA_EXPORT_HINT, cuda_obstacles

    reason = onnx_unavailable(config)
    unavailable = {}
    on_cuda = (config.device or "cpu").startswith("cuda")
    if TORCH_BF16 in config.ordered_rows and on_cuda and not cuda_has_native_bf16(config.device):
        unavailable[TORCH_BF16] = f"{config.device} has no native bfloat16"
    for row in config.ordered_rows:
        precision = onnx_precision(row)
        if precision is None:
            continue
        obstacles = cuda_obstacles(precision, "fused") if on_cuda else []
        if reason is not None:
            unavailable[row] = reason
        elif obstacles:
            unavailable[row] = f"on {config.device}, {'; '.join(obstacles)}; {CUDA_EXPORT_HINT}"
    return unavailable


def _prefill_and_decode_seconds(
    model: Any, token_ids: tuple[int, ...], device: str
) -> tuple[float, float]:
    """Seconds of a prompt's forward pass (last logits only) and of one greedy decoding step.

    The prompt runs twice (the first is a warm-up); then, on its cache, one untimed step (the
    decoding path's warm-up: a first step can cost far more than later ones) and
    :data:`DECODE_PROBE_TOKENS` timed steps.
    """
    import torch

    def step(output: Any) -> Any:
        token = output.logits[:, -1:].argmax(dim=-1)
        return model(token, past_key_values=output.past_key_values, use_cache=True)

    input_ids = torch.tensor([list(token_ids)], device=model.device)
    with torch.inference_mode():
        model(input_ids, logits_to_keep=1)
        start = clock(device)
        output = model(input_ids, use_cache=True, logits_to_keep=1)
        prefill = clock(device) - start
        output = step(output)
        start = clock(device)
        for _ in range(DECODE_PROBE_TOKENS):
            output = step(output)
        decode = (clock(device) - start) / DECODE_PROBE_TOKENS
    return prefill, decode


def bench_template(config: BenchConfig) -> PromptTemplate:
    """The prompt template of the bench's model: the one it was trained with, readout
    included, else FIRST's (always for synthetic models, which have random weights)."""
    if config.synthetic:
        return FIRST_TEMPLATE
    return model_template(None, config.model)


def calibrate(
    config: BenchConfig, queries: tuple[QueryCandidates, ...], template: PromptTemplate
) -> tuple[Calibration | None, int, dict[WindowKey, Prompt]]:
    """Time one window in this process; also return the prompt budget and the prompt built
    with ``template``."""
    assert config.device is not None
    assert config.dtype is not None
    start = time.perf_counter()
    loaded = load_bench_model(
        config.model, config.synthetic, device=config.device, dtype=config.dtype, seed=config.seed
    )
    load_seconds = time.perf_counter() - start
    max_prompt_tokens = config.max_prompt_tokens or loaded.context
    builder = CachedPromptBuilder(
        loaded.tokenizer,
        template,
        max_prompt_tokens=max_prompt_tokens,
        vocab_size=loaded.vocab_size,
    )
    readout = make_strategy(
        config.readout_strategy, window_size=config.window, step=config.sliding_step
    )
    warm = first_window(queries, readout)
    if warm is None:
        return None, max_prompt_tokens, builder.cache
    prompt = builder.build(*warm)
    prefill, decode = _prefill_and_decode_seconds(loaded.model, prompt.token_ids, config.device)
    labels = template.labels[: config.window]
    calibration = Calibration(
        load_seconds=load_seconds,
        forward_seconds=prefill,
        token_seconds=decode,
        prompt_tokens=len(prompt.token_ids),
        max_new_tokens=answer_tokens(loaded.tokenizer, labels, template.answer_prefix),
        body_parameters=body_parameters(loaded.model),
        attention_width=attention_width(loaded.model),
    )
    return calibration, max_prompt_tokens, builder.cache


def measure_throughput(device: str, dtype: str) -> Throughput:
    """Dense matmul throughput: 8192^2 on CUDA (ten products per timing), 2048^2 on CPU.

    On CPUs, 1024^2 products run below the rate the model's own products reach, and the best
    of 5 timings varied from 0.117 to 0.136 TFLOP/s on a 2-core VM, the best of 20 from 0.153
    to 0.157: the CPU takes 20 (about 3 s), or as many as fit in
    :data:`CPU_MATMUL_SECONDS` (a dtype the CPU emulates gets one).
    """
    if device.startswith("cuda"):
        return Throughput(matmul_tflops(device, dtype, 8192, repeats=10, inner=10), 8192, dtype)
    rate = matmul_tflops(device, dtype, 2048, repeats=20, budget_seconds=CPU_MATMUL_SECONDS)
    return Throughput(rate, 2048, dtype)


CPU_MATMUL_SECONDS = 10.0
"""Seconds after which :func:`measure_throughput` stops timing a CPU's matmuls, counted
from the first product."""


def _release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def prompt_budget(config: BenchConfig) -> int:
    """``max_prompt_tokens``, else the model's context length, read without its weights."""
    if config.max_prompt_tokens is not None:
        return config.max_prompt_tokens
    if config.synthetic is not None:
        return SYNTHETIC_CONFIGS[config.synthetic]["max_position_embeddings"]
    from transformers import AutoConfig

    source = resolve_model(config.model)
    model_config = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
    return context_length(model_config, load_bench_tokenizer(config.model, config.synthetic))


def model_rows(
    config: BenchConfig, device: str, window_size: int, template: PromptTemplate
) -> tuple[str, ...]:
    """The rows to run: those given, else ``device``'s defaults. ``generate`` decodes the
    order of a window's labels, so with one passage a window it is left out of the
    defaults, and refused when given."""
    rows = config.rows or default_rows(device)
    if window_size > 1 or GENERATE not in rows:
        return rows
    if config.rows is not None:
        raise ValueError(
            f"the generate row decodes the order of a window's passages, and "
            f"{config.model!r} ranks with template {template.name!r}, one passage a window; "
            "choose other rows"
        )
    return tuple(row for row in rows if row != GENERATE)


def prepare(config: BenchConfig) -> Plan:
    """Resolve the settings, read the data, time one window and the device's matmul rate."""
    device, dtype = resolve_device(config.device, config.dtype, config.model, config.synthetic)
    template = bench_template(config)
    given_step = config.step
    window_size, step = template_sizes(template, config.window_size, config.step)
    config = replace(
        config,
        device=device,
        dtype=dtype,
        rows=model_rows(config, device, window_size, template),
        vote=template.vote,
        window_size=window_size,
        step=step,
    )
    check_step_applies(given_step, *(variant.strategy for variant in config.variants))
    if set(ENGINE_ROWS) & set(config.ordered_rows):  # one budget: torch and ONNX batch alike
        config = replace(
            config,
            strategies=config.ranking_strategies,
            max_batch_tokens=config.max_batch_tokens or device_max_batch_tokens(device),
        )
    unavailable = unavailable_rows(config)
    check_exports(config, [r for r in config.ordered_rows if r not in unavailable], template)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    all_queries, qrels = read_data(config)
    queries = select_queries(all_queries, config.queries, config.top_k)
    readout = make_strategy(
        config.readout_strategy, window_size=config.window, step=config.sliding_step
    )
    if config.needs_model:
        calibration, max_prompt_tokens, prompts = calibrate(config, queries, template)
        _release_memory(device)
    else:
        calibration, max_prompt_tokens, prompts = None, prompt_budget(config), {}
    return Plan(
        config=config,
        queries=queries,
        total_queries=len(all_queries),
        qrels=qrels,
        windows=sum(readout.max_windows(len(q.candidates)) for q in queries),
        max_prompt_tokens=max_prompt_tokens,
        calibration=calibration,
        throughput=measure_throughput(device, dtype),
        prompts=prompts,
        unavailable=unavailable,
        template=template,
        row_throughputs={
            other: measure_throughput(device, other)
            for other in {floor_dtype(row, dtype) for row in config.ordered_rows} - {dtype}
        },
    )


def _init_child(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _call(isolate: bool, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` here, or in a fresh spawned process when ``isolate``."""
    if not isolate:
        return function(*args)
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_init_child, initargs=(level,)
    ) as pool:
        return pool.submit(function, *args).result()


def export_folder(root: Path, precision: Precision) -> Path:
    """Where the export of ``precision`` is kept under ``root``: ``root/onnx-<precision>``."""
    return root / f"onnx-{precision}"


def check_reusable(
    folder: Path,
    model: str,
    precision: str,
    template: PromptTemplate,
    *,
    attention: str | None = None,
) -> None:
    """Raise ``ValueError`` unless the export in ``folder`` is of ``model`` (the source its
    metadata records: the same name, or the same folder) and of the weights it holds now
    (:func:`~haystack_llmrank.models.weights_fingerprint`) at ``precision``, for ``template``
    and, where given, with ``attention`` (``fused`` or ``plain``).

    An export that records no weights (written before llmrank recorded them) is refused too.
    """
    metadata = read_metadata(folder, verify_hashes=False)
    resolved = resolve_model(model)
    source = resolved.name
    recorded = PromptTemplate.from_dict(metadata.template)
    if not _same_model(metadata.source_model, source):
        mismatch = f"of {metadata.source_model!r}, not of --model {source!r}"
    elif metadata.precision != precision:
        mismatch = f"at {metadata.precision}, not {precision}"
    elif recorded.name != template.name:
        mismatch = f"for template {recorded.name!r}, not {template.name!r}"
    elif recorded != template:
        mismatch = f"for another version of template {template.name!r}"
    elif attention is not None and metadata.attention != attention:
        mismatch = f"with {metadata.attention} attention, not {attention}"
    elif not metadata.source_weights:
        mismatch = (
            "from an older llmrank, which did not record the weights it was made from, so "
            "whether --model still holds them cannot be checked"
        )
    elif changed := _changed_weights(metadata.source_weights, weights_fingerprint(resolved)):
        mismatch = f"of other weights than --model {source!r} holds now ({changed})"
    else:
        return
    raise ValueError(
        f"the ONNX export in {folder} is {mismatch}; delete it (it is then exported "
        "again), or choose another --export-dir"
    )


def _changed_weights(recorded: dict[str, str], current: dict[str, str]) -> str:
    """The files whose fingerprints differ, each as ``NAME changed``, ``gone`` or ``new``;
    empty when none do."""
    changes = {
        name: "new" if name not in recorded else "gone" if name not in current else "changed"
        for name in sorted(recorded.keys() | current.keys())
        if recorded.get(name) != current.get(name)
    }
    return ", ".join(f"{name} {change}" for name, change in changes.items())


def _same_model(recorded: str, source: str) -> bool:
    """Whether two model names (:attr:`ModelSource.name`) are equal or name one folder."""
    if recorded == source:
        return True
    try:
        return os.path.samefile(recorded, source)
    except OSError:
        return False


def check_exports(config: BenchConfig, rows: Iterable[str], template: PromptTemplate) -> None:
    """:func:`check_reusable` for each export in ``config.export_dir`` that an ONNX row of
    ``rows`` would reuse."""
    if config.export_dir is None:
        return
    for row in rows:
        precision = onnx_precision(row)
        if precision is None:
            continue
        folder = export_folder(config.export_dir, precision)
        if is_export(folder):
            check_reusable(folder, config.model, precision, template)


def export_onnx_row(
    model: str, precision: Precision, root: Path, template: PromptTemplate
) -> tuple[Path, float | None]:
    """Export ``model`` for ``template`` to ``root/onnx-<precision>``, or reuse the export
    already there when it was made from ``model``'s current weights for ``template`` (else
    ``ValueError``, see :func:`check_reusable`).

    Returns the folder to load and the export's seconds (``None`` when reused). Missing
    export tools make the row unavailable.
    """
    target = export_folder(root, precision)
    if is_export(target):
        check_reusable(target, model, precision, template)
        logger.info("reusing the ONNX export in %s", target)
        return target, None
    start = time.perf_counter()
    try:
        path = export_onnx(model, target, precision=precision, template=template)
    except ImportError as exc:
        raise RowUnavailableError(f"cannot export: {exc}") from exc
    return path, time.perf_counter() - start


def _run_one(
    plan: Plan, variant: Variant, prompts: dict[WindowKey, Prompt], root: Path
) -> RowResult:
    config, row = plan.config, variant.row
    precision = onnx_precision(row)
    onnx_dir, export_seconds = None, None
    if precision is not None:
        onnx_dir, export_seconds = _call(
            config.isolate, export_onnx_row, config.model, precision, root, plan.template
        )
    job = RowJob(
        row,
        config,
        plan.queries,
        plan.max_prompt_tokens,
        prompts,
        plan.template,
        onnx_dir,
        strategy=variant.strategy,
        noise=variant.noise or 0.0,
        qrels=plan.qrels if row == ORACLE else None,
    )
    isolate = config.isolate and row != ORACLE
    outcome = _call(isolate, functools.partial(run_row, fresh_process=isolate), job)
    metadata = None if onnx_dir is None else read_metadata(onnx_dir, verify_hashes=False)
    return RowResult(
        row,
        "ok",
        outcome,
        export_seconds=export_seconds,
        export_attention=None if metadata is None else metadata.attention,
        export_source_model=None if metadata is None else metadata.source_model,
        strategy=variant.strategy,
        noise=variant.noise,
    )


def run(plan: Plan, on_row: Callable[[RowResult], None] | None = None) -> list[RowResult]:
    """Run every line of :attr:`BenchConfig.variants`; one that cannot run or fails is recorded.

    Every line gets the prompts built by the lines before it, so equal windows get equal
    token ids. ``on_row`` is called as each line finishes.
    """
    config = plan.config
    prompts = dict(plan.prompts)
    results: list[RowResult] = []
    with tempfile.TemporaryDirectory(prefix="llmrank-bench-") as scratch:
        root = config.export_dir or Path(scratch)
        for variant in config.variants:
            row, strategy, noise = variant.row, variant.strategy, variant.noise
            if row in plan.unavailable:
                result = RowResult(
                    row, "unavailable", reason=plan.unavailable[row], strategy=strategy, noise=noise
                )
            else:
                try:
                    result = _run_one(plan, variant, prompts, root)
                except RowUnavailableError as exc:
                    result = RowResult(
                        row, "unavailable", reason=str(exc), strategy=strategy, noise=noise
                    )
                except Exception as exc:
                    logger.exception("%s failed", variant.name)
                    reason = f"{type(exc).__name__}: {exc}"
                    result = RowResult(row, "failed", reason=reason, strategy=strategy, noise=noise)
            if result.outcome is not None:
                prompts = result.outcome.prompts
            results.append(result)
            if on_row is not None:
                on_row(result)
    return results
