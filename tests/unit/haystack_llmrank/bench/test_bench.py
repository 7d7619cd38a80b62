"""``llmrank bench``: every row measured from the same prompts, on a tiny random model."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import multiprocessing
import os
import random
import re
import shlex
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from support import SMOLLM2_TOKENIZER_DIR

import haystack_llmrank.bench.rows as bench_rows
import haystack_llmrank.bench.runner as bench_runner
import haystack_llmrank.cli as cli
import haystack_llmrank.cli.bench as bench_cli
from haystack_llmrank.bench import measure
from haystack_llmrank.bench.config import CUDA_DEFAULT_ROWS, DEFAULT_ROWS, BenchConfig
from haystack_llmrank.bench.measure import peak_rss_mb
from haystack_llmrank.bench.model_loading import attention_width, resolve_device
from haystack_llmrank.bench.oracle import qrels_judge
from haystack_llmrank.bench.plain import answer_text, deal_and_sort, parse_permutation, slide
from haystack_llmrank.bench.prompts import CachedPromptBuilder
from haystack_llmrank.bench.report import Agreement, agreement, cpu_description, environment
from haystack_llmrank.bench.runner import (
    Plan,
    Throughput,
    export_onnx_row,
    model_rows,
    prepare,
    read_data,
    run,
    select_queries,
    unavailable_rows,
)
from haystack_llmrank.data import read_qrels, read_queries
from haystack_llmrank.errors import WindowTooLargeError
from haystack_llmrank.labels import ALPHABETIC_LABELS, resolve_label_ids
from haystack_llmrank.model_templates import write_template
from haystack_llmrank.models import resolve_model, weights_fingerprint
from haystack_llmrank.prompt import (
    FIRST_ECHO_TEMPLATE,
    FIRST_NUMERIC_TEMPLATE,
    FIRST_TEMPLATE,
    JUDGE_TEMPLATE,
    PromptBuilder,
    PromptTemplate,
)
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.onnx_metadata import ExportMetadata
from haystack_llmrank.strategies import STRATEGIES, SlidingWindow, deal, make_strategy

WORDS = "river bank loan coffee mountain tree city music flea peru capital rate".split()  # noqa: SIM905
SLICE = ["--queries", "2", "--top-k", "8", "--window-size", "4"]  # step 2: half the window
WINDOWS = 6
"""Windows of the slice: 8 candidates in windows of 4 moving up by 2 is 3 per query."""


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three queries of 15 random candidates each, with graded judgements."""
    folder = tmp_path_factory.mktemp("bench-data")
    rng = random.Random(7)
    records, qrels = [], []
    for q in range(3):
        candidates = [
            {
                "docid": f"q{q}-{i}",
                "rank": i + 1,
                "score": 20.0 - i,
                "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))),
            }
            for i in range(15)
        ]
        records.append({"qid": f"q{q}", "query": f"what is a {WORDS[q]}", "candidates": candidates})
        qrels += [f"q{q} 0 q{q}-{i} {rng.randint(0, 3)}\n" for i in range(0, 15, 2)]
    (folder / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "qrels.txt").write_text("".join(qrels))
    return folder


@pytest.fixture(scope="module")
def tied_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, smollm2_tokenizer: Any
) -> Path:
    """The tiny model with every variant of a label ("A", " A") given the same LM-head row.

    ``plain`` reads the single id of "A"; the engine takes the maximum over all ids of
    the label. With tied rows both see the same logits, so their orderings must agree.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    first = smollm2_tokenizer.convert_tokens_to_ids(list(ALPHABETIC_LABELS))
    with torch.no_grad():
        for primary, group in zip(first, labels.ids, strict=True):
            for token in group:
                model.lm_head.weight[token] = model.lm_head.weight[primary]
    folder = tmp_path_factory.mktemp("tied-llama")
    model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def llmrank_bench(*args: str) -> tuple[int, str]:
    """Run ``llmrank bench``: exit code and stdout."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["bench", *args])
    return code, printed.getvalue()


def bench_json(output: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    """Run ``llmrank bench`` in process on the CPU without progress bars, writing ``output``:
    exit code, stdout and the JSON."""
    code, printed = llmrank_bench(
        *args, "--device", "cpu", "--in-process", "--no-progress", "--json", str(output)
    )
    return code, printed, json.loads(output.read_text())


@pytest.fixture(scope="module")
def bench_run(
    bench_data: Path, tied_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, str, dict[str, Any]]:
    """Every default row over two queries, in process: exit code, stdout and the JSON.

    The ONNX exports are kept in ``exports`` next to the JSON.
    """
    output = tmp_path_factory.mktemp("bench-out") / "bench.json"
    return bench_json(
        output,
        "--export-dir",
        str(output.parent / "exports"),
        "--data-dir",
        str(bench_data),
        "--model",
        str(tied_model_dir),
        *SLICE,
    )


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["row"]: row for row in report["rows"]}


@pytest.mark.slow
def test_every_row_is_in_the_table_and_the_json(bench_run: tuple[int, str, dict[str, Any]]) -> None:
    code, printed, report = bench_run
    assert code == 0
    assert list(rows_of(report)) == list(DEFAULT_ROWS)
    table = printed[printed.index("s/query") :]
    for name in DEFAULT_ROWS:
        assert f"\n{name}" in table
    assert report["data"]["queries"] == 2
    assert report["data"]["qids"] == ["q0", "q1"]
    assert report["data"]["windows"] == WINDOWS
    assert report["data"]["windows_strategy"] == "sliding"
    assert f"{WINDOWS} sliding windows" in printed


RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "seconds": float,
    "seconds_per_query": float,
    "seconds_per_window": float,
    "mean_prompt_tokens": float,
    "mean_generated_tokens": float,
    "load_seconds": float,
    "prompt_build_seconds": float,
    "peak_rss_mb": float,
    "ndcg_at_10": float,
    "speedup_vs_plain": float,
    "speedup_vs_generate": float,
    "floor_seconds_per_window": float,
    "times_floor": float,
    "memory_isolated": bool,
}


@pytest.mark.slow
def test_rows_that_ran_have_typed_fields(bench_run: tuple[int, str, dict[str, Any]]) -> None:
    _, _, report = bench_run
    ran = [row for row in report["rows"] if row["status"] == "ok"]
    assert {"plain", "torch", "generate"} <= {row["row"] for row in ran}
    for row in ran:
        for field, kind in RUN_FIELDS.items():
            assert isinstance(row[field], kind), (row["row"], field, row[field])
        assert row["queries"] == 2
        assert row["windows"] == WINDOWS
        assert row["seconds"] > 0
        assert row["peak_rss_mb"] > 0
        assert row["peak_cuda_mb"] is None
        assert 0.0 <= row["ndcg_at_10"] <= 1.0
    for row in report["rows"]:
        if row["status"] != "ok":
            assert row["status"] == "unavailable"
            assert isinstance(row["reason"], str)
            assert row["reason"]
    assert 0.0 <= report["bm25_ndcg_at_10"] <= 1.0
    assert report["floor"]["matmul_tflops"] > 0
    assert report["floor"]["body_parameters"] > 0


@pytest.mark.parametrize(
    ("product_seconds", "budget", "products"),
    [(1.0, None, 1 + 5), (1.0, 2.5, 1 + 2), (3.0, 2.5, 1)],
)
def test_matmul_timings_stop_at_the_budget(
    product_seconds: float,
    budget: float | None,
    products: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each product advances a fake clock by ``product_seconds``: timings stop once the
    budget has passed since the warm-up began, and a warm-up past it is the one timing."""
    now = [0.0]
    done: list[int] = []

    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        now[0] += product_seconds
        done.append(1)
        return a

    monkeypatch.setattr(torch, "matmul", product)
    monkeypatch.setattr(measure, "clock", lambda device: now[0])
    rate = measure.matmul_tflops("cpu", "float32", 4, repeats=5, budget_seconds=budget)
    assert len(done) == products
    assert rate == pytest.approx(2 * 4**3 / product_seconds / 1e12)


@pytest.mark.slow
def test_floor_counts_weights_and_causal_attention(
    bench_run: tuple[int, str, dict[str, Any]],
) -> None:
    _, _, report = bench_run
    floor = report["floor"]
    assert floor["attention_width"] == 2 * 4 * 16  # layers x query heads x head size
    assert any(row["status"] == "ok" for row in report["rows"])
    for row in report["rows"]:
        if row["status"] != "ok":
            continue
        tokens = row["mean_prompt_tokens"] + (row["mean_generated_tokens"] or 0.0)
        flops = 2 * floor["body_parameters"] * tokens + 2 * floor["attention_width"] * tokens**2
        expected = flops / (floor["matmul_tflops"] * 1e12)
        assert row["floor_seconds_per_window"] == pytest.approx(expected), row["row"]
        assert row["times_floor"] == pytest.approx(row["seconds_per_window"] / expected)


def test_attention_width_reads_head_dim_or_derives_it() -> None:
    from types import SimpleNamespace

    explicit = SimpleNamespace(num_hidden_layers=3, num_attention_heads=4, head_dim=8)
    derived = SimpleNamespace(num_hidden_layers=3, num_attention_heads=4, hidden_size=64)
    assert attention_width(SimpleNamespace(config=explicit)) == 3 * 4 * 8
    assert attention_width(SimpleNamespace(config=derived)) == 3 * 4 * 16
    assert attention_width(SimpleNamespace(config=SimpleNamespace(n_layer=3))) is None
    assert attention_width(SimpleNamespace()) is None


@pytest.mark.slow
def test_speedups_are_relative_to_plain_and_generate(
    bench_run: tuple[int, str, dict[str, Any]],
) -> None:
    rows = rows_of(bench_run[2])
    plain, generate = rows["plain"], rows["generate"]
    assert plain["speedup_vs_plain"] == pytest.approx(1.0)
    assert generate["speedup_vs_generate"] == pytest.approx(1.0)
    torch_row = rows["torch"]
    expected = plain["seconds_per_query"] / torch_row["seconds_per_query"]
    assert torch_row["speedup_vs_plain"] == pytest.approx(expected)
    assert generate["mean_generated_tokens"] > 0
    assert plain["mean_generated_tokens"] == 0


def assert_same_as_plain(row: dict[str, Any], plain: dict[str, Any]) -> None:
    agreement = row["agreement_with_plain"]
    assert agreement["windows_shared"] == WINDOWS
    assert agreement["windows_agreeing"] == WINDOWS
    assert agreement["fraction"] == 1.0
    assert agreement["queries_identical"] == agreement["queries"] == 2
    assert row["ndcg_at_10"] == plain["ndcg_at_10"]


@pytest.mark.slow
def test_plain_and_torch_order_every_window_alike(
    bench_run: tuple[int, str, dict[str, Any]],
) -> None:
    rows = rows_of(bench_run[2])
    assert_same_as_plain(rows["torch"], rows["plain"])
    assert rows["plain"]["agreement_with_plain"] is None


@pytest.mark.slow
def test_onnx_fp32_orders_windows_like_plain_where_onnxruntime_is_installed(
    bench_run: tuple[int, str, dict[str, Any]],
) -> None:
    rows = rows_of(bench_run[2])
    onnx = rows["onnx-fp32"]
    if importlib.util.find_spec("onnxruntime") is None:
        assert onnx["status"] == "unavailable"
        assert "onnxruntime" in onnx["reason"]
    else:
        assert onnx["status"] == "ok"
        assert isinstance(onnx["export_seconds"], float)
        assert onnx["export_attention"] == "fused"
        assert onnx["export_source_model"] == bench_run[2]["config"]["model"]
        assert rows["torch"]["export_attention"] is rows["torch"]["export_source_model"] is None
        assert_same_as_plain(onnx, rows["plain"])
        assert rows["onnx-int8"]["agreement_with_plain"]["windows_shared"] == WINDOWS


@pytest.mark.slow
def test_an_existing_export_is_reused(
    bench_run: tuple[int, str, dict[str, Any]], tied_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    exports = Path(bench_run[2]["config"]["export_dir"])
    reused = export_onnx_row(str(tied_model_dir), "fp32", exports, FIRST_TEMPLATE)
    assert reused == (exports / "onnx-fp32", None)
    (tmp_path / "onnx-fp32").mkdir()
    (tmp_path / "onnx-fp32" / "notes.txt").write_text("not an export")
    with pytest.raises(FileExistsError, match="not an ONNX export"):
        export_onnx_row(str(tied_model_dir), "fp32", tmp_path, FIRST_TEMPLATE)


def test_an_export_of_another_model_or_template_is_refused_not_reused(
    bench_data: Path,
    tied_model_dir: Path,
    tiny_model_dir: Path,
    smollm2_tokenizer: Any,
    tmp_path: Path,
) -> None:
    exports = tmp_path / "exports"
    folder = exports / "onnx-fp32"
    folder.mkdir(parents=True)

    def record(source: Path, template: PromptTemplate = FIRST_TEMPLATE) -> None:
        labels = resolve_label_ids(smollm2_tokenizer, template.labels)
        weights = weights_fingerprint(resolve_model(str(source)))
        ExportMetadata(
            labels,
            template.to_dict(),
            "fp32",
            str(source),
            4096,
            0,
            17,
            True,
            {},
            source_weights=weights,
        ).write(folder)

    record(tiny_model_dir)
    other = f"is of '{tiny_model_dir}', not of --model '{tied_model_dir}'; delete it"
    with pytest.raises(ValueError, match=re.escape(f"the ONNX export in {folder} {other}")):
        export_onnx_row(str(tied_model_dir), "fp32", exports, FIRST_TEMPLATE)
    if importlib.util.find_spec("onnxruntime") is not None:  # else the row is unavailable
        config = plain_and_torch(bench_data, tied_model_dir, rows=("onnx-fp32",))
        with pytest.raises(ValueError, match=re.escape(other)):  # before any model loads
            prepare(dataclasses.replace(config, export_dir=exports))
    record(tied_model_dir, FIRST_NUMERIC_TEMPLATE)
    with pytest.raises(ValueError, match="for template 'first-numeric', not 'first'"):
        export_onnx_row(str(tied_model_dir), "fp32", exports, FIRST_TEMPLATE)
    record(tied_model_dir, FIRST_TEMPLATE.with_vote(" yes"))
    with pytest.raises(ValueError, match="for another version of template 'first'"):
        export_onnx_row(str(tied_model_dir), "fp32", exports, FIRST_TEMPLATE)
    record(tied_model_dir)  # the same folder, however it is spelled, is reused
    reused = export_onnx_row(os.path.relpath(tied_model_dir), "fp32", exports, FIRST_TEMPLATE)
    assert reused == (folder, None)


@pytest.mark.slow
def test_torch_and_onnx_rows_batch_alike_on_the_cpu(
    bench_run: tuple[int, str, dict[str, Any]],
    bench_data: Path,
    tied_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("onnxruntime")
    assert bench_run[2]["config"]["max_batch_tokens"] == 1  # recorded: one window per pass
    batches: dict[str, list[int]] = {}
    score = bench_rows.RecordingScorer.score

    def counting(recorder: Any, prompts: Any) -> Any:
        batches.setdefault(type(recorder.inner).__name__, []).append(len(prompts))
        return score(recorder, prompts)

    monkeypatch.setattr(bench_rows.RecordingScorer, "score", counting)
    exports = Path(bench_run[2]["config"]["export_dir"])  # the onnx-fp32 export is reused
    config = plain_and_torch(
        bench_data,
        tied_model_dir,
        rows=("torch", "onnx-fp32"),
        strategies=("disjoint",),
        top_k=12,
        window_size=4,
        step=None,
        isolate=False,
        export_dir=exports,
    )
    results = run(prepare(config))
    assert [r.status for r in results] == ["ok", "ok"]
    assert batches == {"TorchLabelScorer": [1, 1, 1], "OnnxLabelScorer": [1, 1, 1]}


@pytest.mark.slow
def test_synthetic_config_runs_with_a_batch_size_sweep(
    bench_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Synthetic models use the embedded SmolLM2's tokenizer: the same files, without the GGUF.
    monkeypatch.setattr(
        "haystack_llmrank.bench.model_loading.embedded_base",
        lambda: resolve_model(str(SMOLLM2_TOKENIZER_DIR)),
    )
    code, printed, report = bench_json(
        tmp_path / "synthetic.json",
        "--data-dir",
        str(bench_data),
        "--synthetic-config",
        "tiny",
        *SLICE,
        "--rows",
        "oracle,torch,onnx-fp32",
        "--batch-sizes",
        "1,2",
        "--warmup",
        "0",
    )
    assert code == 0
    rows = rows_of(report)
    # the oracle runs first and shares its prompts: folded into the synthetic vocabulary
    assert rows["oracle"]["status"] == rows["torch"]["status"] == "ok"
    assert rows["onnx-fp32"]["status"] == "unavailable"
    assert "synthetic" in rows["onnx-fp32"]["reason"]
    sweep = rows["torch"]["sweep"]
    assert [point["batch_size"] for point in sweep] == [1, 2]
    assert [point["windows"] for point in sweep] == [WINDOWS, WINDOWS]
    assert [point["prompts_per_pass"] for point in sweep] == [1.0, 2.0]
    assert all(point["queries_per_second"] > 0 for point in sweep)
    assert rows["torch"]["floor_seconds_per_window"] > 0
    assert "prompts/pass" in printed


def test_the_sweep_caps_and_counts_the_prompts_of_each_forward_pass(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path
) -> None:
    # disjoint: a query's 2 windows are one step, which one scheduling call never splits; a
    # budget of 16384 tokens would score it in one forward pass at batch size 1
    code, printed, report = bench_json(
        tmp_path / "sweep.json",
        *("--data-dir", str(bench_data), "--model", str(tied_model_dir), *SLICE),
        *("--rows", "torch", "--strategies", "disjoint", "--warmup", "0"),
        *("--max-batch-tokens", "16384", "--batch-sizes", "1,2"),
    )
    assert code == 0
    sweep = rows_of(report)["torch"]["sweep"]
    assert [p["windows"] for p in sweep] == [4, 4]  # 8 passages dealt into 2 windows, twice
    assert [p["forward_passes"] for p in sweep] == [4, 2]
    assert [p["prompts_per_pass"] for p in sweep] == [1.0, 2.0]
    assert re.search(r"\ntorch disjoint +1 +1\.0 ", printed[printed.index("prompts/pass") :])


@given(n=st.integers(0, 60), size=st.integers(2, 25), data=st.data())
def test_plain_loop_visits_the_engine_windows(n: int, size: int, data: st.DataObject) -> None:
    step = data.draw(st.integers(1, size - 1))
    seen: list[tuple[int, int]] = []

    def keep(members: list[int]) -> list[int]:
        seen.append((members[0], members[-1] + 1))
        return list(range(len(members)))

    assert slide(n, size, step, keep) == list(range(n))
    assert seen == SlidingWindow(size, step).windows(n)


def test_plain_loop_applies_each_window_order() -> None:
    assert slide(4, 2, 1, lambda members: [1, 0]) == [3, 0, 1, 2]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("[B] > [A] > [C]", [1, 0, 2]),
        ("[C] > [C] > [A]", [2, 0, 1]),
        ("[B]", [1, 0, 2]),
        ("[Z] > [B] > I think", [1, 0, 2]),
        ("", [0, 1, 2]),
    ],
)
def test_permutations_are_parsed_like_rank_llm(answer: str, expected: list[int]) -> None:
    assert parse_permutation(answer, ["A", "B", "C"]) == expected


def test_answer_text_follows_the_open_bracket() -> None:
    assert answer_text(["A", "B", "C"]) == "A] > [B] > [C]"


def test_cached_prompts_match_the_engine_and_are_built_once(smollm2_tokenizer: Any) -> None:
    passages = ["a river bank", "a loan from a bank"]
    engine = PromptBuilder(smollm2_tokenizer, max_prompt_tokens=512).build("bank", passages)
    cached = CachedPromptBuilder(smollm2_tokenizer, max_prompt_tokens=512)
    first = cached.build("bank", passages)
    spent = cached.build_seconds
    assert first.token_ids == engine.token_ids
    assert cached.build("bank", passages) is first
    assert cached.build_seconds == spent
    assert len(cached.requested) == 2
    folded = CachedPromptBuilder(smollm2_tokenizer, max_prompt_tokens=512, vocab_size=1000)
    assert folded.build("bank", passages).token_ids == tuple(i % 1000 for i in engine.token_ids)


def test_a_device_is_read_in_the_backends_grammar() -> None:
    assert BenchConfig(device="CUDA:1").device == "cuda:1"
    assert BenchConfig(device=" cpu:0 ").device == "cpu"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rows": ("plain", "fast")}, "unknown rows"),
        ({"rows": ("plain", "plain")}, "more than once"),
        ({"rows": ()}, "no rows"),
        ({"step": 30}, r"step must be between 1 and \d+ for window_size"),
        ({"queries": 0}, "queries must be at least 1"),
        ({"synthetic": "llama-70b"}, "unknown synthetic"),
        ({"device": "tpu"}, "cpu or cuda"),
        ({"device": "cudafoo"}, "cpu or cuda"),
        ({"device": "mps"}, "cpu or cuda"),
        ({"sweep_batch_sizes": (4, 0)}, "batch sizes"),
        ({"sweep_batch_sizes": (4, 1, 4)}, r"batch sizes given more than once: \[4, 1, 4\]"),
        ({"strategies": ("sliding", "bubble")}, "unknown strategies"),
        ({"strategies": ()}, "no strategies"),
        ({"oracle_noise": (0.5, 0.5)}, "more than once"),
        ({"oracle_noise": (-1.0,)}, "at least 0"),
        ({"seed": -1}, "seed must not be negative"),
        ({"export_dir": Path(__file__)}, "is not a folder"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be at least 1, got 0"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be at least 1, got 0"),
        (
            {"rows": ("plain", "generate"), "strategies": ("tdpart",)},
            r"only the rows oracle, torch, .*onnx-int8 use strategies; none .*plain, generate",
        ),
        ({"rows": ("torch",), "oracle_noise": (0.5,)}, "only the rows oracle use oracle_noise"),
        (
            {"rows": ("plain",), "batch_size": 4, "max_batch_tokens": 99},
            r"use batch_size, max_batch_tokens; none of them is chosen \(rows: plain\)",
        ),
        ({"rows": ("generate",), "sweep_batch_sizes": (1, 4)}, r"sweep_batch_sizes \(--batch-"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(**settings)


ORACLE_SLICE = ["--queries", "2", "--top-k", "15", "--window-size", "4"]
FAST_MATMUL = Throughput(1.0, 2048, "float32")
"""A matmul rate for runs that measure no floor (the oracle's), to skip timing products."""


def oracle_args(data: Path, model: Path, *rest: str) -> tuple[str, ...]:
    """``llmrank bench`` arguments for the oracle rows of ``model`` over ``data``."""
    return ("--data-dir", str(data), "--model", str(model), "--rows", "oracle", *rest)


@pytest.fixture(scope="module")
def strategy_run(
    bench_data: Path, tied_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, str, dict[str, Any]]:
    """The oracle and torch rows with every strategy, in process."""
    return bench_json(
        tmp_path_factory.mktemp("bench-strategies") / "bench.json",
        "--data-dir",
        str(bench_data),
        "--model",
        str(tied_model_dir),
        "--rows",
        "torch,oracle",
        "--strategies",
        ",".join(STRATEGIES),
        "--oracle-noise",
        "0,1.5",
        *ORACLE_SLICE,
    )


@pytest.mark.slow
def test_every_strategy_gets_a_line_of_its_own(
    strategy_run: tuple[int, str, dict[str, Any]],
) -> None:
    code, printed, report = strategy_run
    assert code == 0
    lines = [(row["label"], row["strategy"]) for row in report["rows"]]
    assert lines == [
        *((f"oracle@{noise}", s) for s in STRATEGIES for noise in ("0", "1.5")),
        *(("torch", s) for s in STRATEGIES),
    ]
    assert all(row["status"] == "ok" for row in report["rows"])
    table = printed[printed.index("s/query") :]
    assert re.search(r"\noracle@1\.5 +tdpart ", table)
    assert re.search(r"\ntorch +tournament ", table)


@pytest.mark.slow
def test_lines_count_windows_steps_and_tokens_per_query(
    strategy_run: tuple[int, str, dict[str, Any]],
) -> None:
    report = strategy_run[2]
    for row in report["rows"]:
        strategy = make_strategy(row["strategy"], window_size=4, step=2)
        most = strategy.max_windows(15)
        assert 1 <= row["windows_per_query"] <= most
        assert row["windows"] == row["windows_per_query"] * 2
        assert 1 <= row["steps_per_query"] <= row["max_steps"]
        assert row["steps_per_query"] <= row["windows_per_query"]
        assert row["tokens_per_query"] > 100 * row["windows_per_query"]
        assert row["mean_prompt_tokens"] == pytest.approx(
            row["tokens_per_query"] / row["windows_per_query"]
        )
        if row["strategy"] == "sliding":
            assert row["steps_per_query"] == row["windows_per_query"] == most
        if row["strategy"] == "tdpart":
            assert row["max_steps"] <= 3
        if row["strategy"] == "tournament":
            assert (row["windows_per_query"], row["max_steps"]) == (most, 2)
        oracle = row["row"] == "oracle"
        assert (row["floor_seconds_per_window"] is None) == oracle
        assert (row["speedup_vs_plain"], row["agreement_with_plain"]) == (None, None)


@pytest.mark.slow
def test_the_bf16_row_loads_bfloat16_and_measures_its_floor_at_the_bfloat16_rate(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    load = bench_rows.load_bench_model

    def recording(*args: Any, dtype: str, **kwargs: Any) -> Any:
        loaded.append(dtype)
        return load(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(bench_rows, "load_bench_model", recording)
    code, _, report = bench_json(
        tmp_path / "bench.json",
        "--rows",
        "plain,torch-bf16",
        "--data-dir",
        str(bench_data),
        "--model",
        str(tied_model_dir),
        *SLICE,
    )
    assert code == 0
    assert loaded == ["float32", "bfloat16"]
    floor = report["floor"]
    assert floor["dtype"] == "float32"
    rate = floor["other_dtypes"]["bfloat16"]["matmul_tflops"]
    assert rate > 0
    row = rows_of(report)["torch-bf16"]
    assert row["status"] == "ok"
    tokens = row["mean_prompt_tokens"]
    flops = 2 * floor["body_parameters"] * tokens + 2 * floor["attention_width"] * tokens**2
    assert row["floor_seconds_per_window"] == pytest.approx(flops / (rate * 1e12))
    assert row["agreement_with_plain"]["windows_shared"] == WINDOWS


def slice_bench(data: Path, model: Path, output: Path, *options: str) -> int:
    """``llmrank bench`` of ``model`` on the CPU over :data:`ORACLE_SLICE`, writing
    ``output``: its exit code."""
    common = ("--data-dir", str(data), "--model", str(model), *ORACLE_SLICE, "--device", "cpu")
    code, _ = llmrank_bench(*common, "--no-progress", "--json", str(output), *options)
    return code


def test_oracle_rows_alone_load_no_model(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the oracle loaded a model")

    monkeypatch.setattr(bench_runner, "load_bench_model", refuse)
    monkeypatch.setattr(bench_rows, "load_bench_model", refuse)
    output = tmp_path / "bench.json"
    code = slice_bench(
        bench_data, tied_model_dir, output, "--rows", "oracle", "--strategies", "tdpart"
    )
    report = json.loads(output.read_text())
    assert code == 0
    assert report["calibration"] is None
    assert report["data"]["max_prompt_tokens"] == 4096, "the tiny Llama's context, from its config"
    assert [(r["label"], r["strategy"], r["status"]) for r in report["rows"]] == [
        ("oracle@0", "tdpart", "ok")
    ]


@pytest.mark.parametrize(("asked", "note"), [("40", " (--top-k 40: no query has more)"), ("8", "")])
def test_the_record_says_how_deep_the_queries_were_ranked(
    bench_data: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    asked: str,
    note: str,
) -> None:
    # the data holds 15 candidates a query: a deeper --top-k ranks those 15
    monkeypatch.setattr(bench_runner, "measure_throughput", lambda device, dtype: FAST_MATMUL)
    args = oracle_args(bench_data, tiny_model_dir, "--queries", "all")
    code, printed, report = bench_json(
        tmp_path / "bench.json", *args, "--window-size", "4", "--top-k", asked
    )
    ranked = min(int(asked), 15)
    assert code == 0
    assert (report["config"]["top_k"], report["data"]["top_k"]) == (int(asked), ranked)
    plan, *_, footer = printed.splitlines()[:-1]
    assert f"3 of 3 queries, top {ranked}{note}, window 4 step 2:" in plan
    assert footer.startswith(f"3 of 3 queries, top {ranked}{note}, ")


def test_the_load_time_is_read_once_the_device_has_finished(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a model built on CUDA queues its kernels: the clock must wait for them to count them
    events: list[str] = []
    load, clock = bench_rows._load, bench_rows.clock
    monkeypatch.setattr(bench_rows, "clock", lambda device: events.append(device) or clock(device))
    monkeypatch.setattr(bench_rows, "_load", lambda job: events.append("load") or load(job))
    code = slice_bench(
        bench_data, tied_model_dir, tmp_path / "bench.json", "--rows", "torch", "--in-process"
    )
    assert code == 0
    at = events.index("load")
    assert events[at - 1 : at + 2] == ["cpu", "load", "cpu"]


def test_the_decoding_step_is_timed_after_an_untimed_warm_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 8 timed steps began with the first, whose warm-up cost made the estimate of the
    generate row 4.6x too high."""
    now = [0.0]
    calls: list[str] = []

    class Model:
        device = torch.device("cpu")

        def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
            decoding = kwargs.get("past_key_values") is not None
            calls.append("decode" if decoding else "prefill")
            # a prefill costs 10, the first decoding step 100, each later one 1
            now[0] += 10.0 if not decoding else 100.0 if calls.count("decode") == 1 else 1.0
            logits = torch.zeros((1, input_ids.shape[1], 5))
            return argparse.Namespace(logits=logits, past_key_values=object())

    monkeypatch.setattr(bench_runner, "clock", lambda device: now[0])
    prefill, decode = bench_runner._prefill_and_decode_seconds(Model(), (1, 2, 3), "cpu")
    assert calls == ["prefill"] * 2 + ["decode"] * (1 + bench_runner.DECODE_PROBE_TOKENS)
    assert (prefill, decode) == (10.0, 1.0)


def test_an_unwritable_json_path_fails_before_any_row(
    bench_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--data-dir", str(bench_data), "--rows", "oracle", *ORACLE_SLICE, "--no-progress")
    code, printed = llmrank_bench(*args, "--json", str(tmp_path))
    assert (code, printed) == (2, "")
    assert f"cannot write {tmp_path}: it is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    code, printed = llmrank_bench(*args, "--json", str(tmp_path / "file" / "bench.json"))
    assert (code, printed) == (2, "")
    assert f"{tmp_path / 'file'} is not a folder" in capsys.readouterr().err


def test_a_special_json_path_is_refused_before_any_row(
    bench_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the staged file would replace a FIFO, whose reader then never gets the JSON
    args = ("--data-dir", str(bench_data), "--rows", "oracle", *ORACLE_SLICE, "--no-progress")
    fifo = tmp_path / "bench.fifo"
    os.mkfifo(fifo)
    code, printed = llmrank_bench(*args, "--json", str(fifo))
    assert (code, printed) == (2, "")
    assert f"cannot write {fifo}: it is a pipe or FIFO, not a regular file" in (
        capsys.readouterr().err
    )
    assert fifo.is_fifo()


@pytest.mark.parametrize(
    ("name", "what"), [("candidates.jsonl", "the candidates file"), ("qrels.txt", "the qrels file")]
)
def test_a_json_path_naming_the_benchs_data_is_refused_before_any_row(
    bench_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, what: str
) -> None:
    # the report would replace the judgements (or candidates) that every later run reads
    data = tmp_path / "data"
    shutil.copytree(bench_data, data)
    given = (data / name).read_bytes()
    link = tmp_path / "bench.json"
    link.symlink_to(data / name)
    args = ("--data-dir", str(data), "--rows", "oracle", *ORACLE_SLICE, "--no-progress")
    for output in (data / name, tmp_path / "data" / ".." / "data" / name, link):
        code, printed = llmrank_bench(*args, "--json", str(output))
        assert (code, printed) == (2, "")
        assert f"--json names {what} {data / name}; give another path" in capsys.readouterr().err
        assert (data / name).read_bytes() == given


def test_the_json_goes_where_its_symlink_leads_making_folders_there(
    bench_data: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_runner, "measure_throughput", lambda device, dtype: FAST_MATMUL)
    link = tmp_path / "bench.json"
    link.symlink_to(tmp_path / "new" / "deep" / "bench.json")
    args = oracle_args(bench_data, tiny_model_dir, *ORACLE_SLICE)
    code, _, report = bench_json(link, *args)
    assert code == 0
    assert link.is_symlink()
    assert report["complete"] is True


def test_unknown_rows_are_a_command_line_error(
    bench_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, printed = llmrank_bench("--data-dir", str(bench_data), "--rows", "plain,fast")
    assert code == 2
    assert printed == ""
    assert "unknown rows ['fast']" in capsys.readouterr().err


def test_the_oracle_noise_help_says_every_passage_gets_noise() -> None:
    parser = argparse.ArgumentParser()
    bench_cli.register(parser)
    help_text = " ".join(parser.format_help().split())
    assert "added to every passage's qrels grade (0 for unjudged passages)" in help_text
    assert "every judged passage" not in help_text


@pytest.mark.parametrize("option", [["--queries", "0"], ["--batch-sizes", "4,x"], ["--step", "-1"]])
def test_malformed_numbers_are_refused_by_the_parser(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        llmrank_bench(*option)
    assert exit_info.value.code == 2


@pytest.mark.parametrize("sizes", [",", "", "1,,4", "4, "])
def test_a_batch_size_list_with_an_empty_item_is_refused_by_the_parser(
    sizes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "," was read as no sweep at all, and "1,,4" as 1,4
    with pytest.raises(SystemExit) as exit_info:
        llmrank_bench("--rows", "torch", "--batch-sizes", sizes)
    assert exit_info.value.code == 2
    expected = f"argument --batch-sizes: expected batch sizes like 1,4,16, got {sizes!r}"
    assert expected in capsys.readouterr().err


def test_a_batch_size_given_twice_is_refused_before_any_row(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # it was timed twice over
    args = ("--data-dir", str(bench_data), "--model", str(tied_model_dir), "--rows", "torch")
    options = ("--device", "cpu", "--in-process", "--no-progress", *SLICE)
    output = tmp_path / "bench.json"
    code, printed = llmrank_bench(*args, *options, "--batch-sizes", "1, 1", "--json", str(output))
    assert (code, printed) == (2, "")
    assert not output.exists()
    assert "batch sizes given more than once: [1, 1]" in capsys.readouterr().err


def test_more_queries_than_the_data_holds_is_an_error(bench_data: Path) -> None:
    queries, _ = read_data(BenchConfig(data_dir=bench_data))
    assert len(select_queries(queries, None, 5)) == 3
    assert all(len(q.candidates) == 5 for q in select_queries(queries, 2, 5))
    with pytest.raises(ValueError, match="4 queries asked for; the data has 3"):
        select_queries(queries, 4, 5)
    first = queries[0]
    blanked = dataclasses.replace(
        first,
        candidates=(
            first.candidates[0],
            dataclasses.replace(first.candidates[1], text=" \ufeff"),
            *first.candidates[2:],
        ),
    )
    with pytest.raises(ValueError, match=f"query {first.qid} has blank candidates"):
        select_queries([blanked, *queries[1:]], None, 5)


def test_a_missing_data_folder_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        read_data(BenchConfig(data_dir=tmp_path))


@pytest.mark.slow
def test_a_spawned_process_reports_its_own_peak_memory() -> None:
    held = np.ones(2**25)  # 256 MiB in this process
    assert peak_rss_mb() > 256
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        child_peak = pool.submit(peak_rss_mb).result()
    assert child_peak < 200
    del held


def plain_and_torch(data: Path, model: Path, **changes: Any) -> BenchConfig:
    """The plain and torch rows on one query's top 6, windows of 6, on the CPU."""
    settings: dict[str, Any] = {
        "data_dir": data,
        "model": str(model),
        "rows": ("plain", "torch"),
        "queries": 1,
        "top_k": 6,
        "window_size": 6,
        "step": 3,
        "device": "cpu",
        "warmup": 0,
    }
    return BenchConfig(**{**settings, **changes})


def assert_rows_order_alike(results: Any) -> None:
    """Both rows ran and ordered every window alike."""
    plain, torch_row = (r.outcome for r in results)
    assert plain is not None
    assert torch_row is not None
    assert plain.window_orders == torch_row.window_orders


@pytest.mark.slow
def test_isolated_rows_report_their_own_process_memory(
    bench_data: Path, tied_model_dir: Path
) -> None:
    results = run(prepare(plain_and_torch(bench_data, tied_model_dir)))
    assert [r.status for r in results] == ["ok", "ok"]
    for result in results:
        assert result.outcome is not None
        assert result.outcome.memory_isolated
        assert result.outcome.peak_rss_mb > 0
    assert_rows_order_alike(results)


@pytest.mark.slow
def test_a_trained_models_own_template_is_benched(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "echo-model"
    shutil.copytree(tied_model_dir, model)
    write_template(model, FIRST_ECHO_TEMPLATE)
    plan = prepare(plain_and_torch(bench_data, model, isolate=False))
    assert plan.prompts
    assert all("[A] " in p.text and " [A]\n" in p.text for p in plan.prompts.values())
    assert_rows_order_alike(run(plan))


@pytest.mark.slow
def test_a_model_read_by_its_vote_is_benched_by_its_votes(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "voted-model"
    shutil.copytree(tied_model_dir, model)
    voted = FIRST_TEMPLATE.with_vote(" yes")
    write_template(model, voted)
    pytest.importorskip("onnxruntime")
    config = plain_and_torch(bench_data, model, isolate=False, top_k=12, window_size=4, step=None)
    rows = ("oracle", "plain", "torch", "onnx-fp32")
    with pytest.raises(ValueError, match="step applies to the sliding window only"):
        prepare(dataclasses.replace(config, step=2))  # votes are read in disjoint windows
    generating = prepare(dataclasses.replace(config, rows=("generate",), step=2))
    assert generating.config.step == 2  # generation slides
    plan = prepare(dataclasses.replace(config, rows=rows, export_dir=tmp_path / "exports"))
    assert plan.template == voted
    assert (plan.config.vote, plan.config.strategies) == (" yes", ("disjoint",))
    assert plan.windows == 3  # 12 passages dealt into 3 disjoint windows
    assert [v.name for v in plan.config.variants] == [
        "oracle@0 disjoint", "plain disjoint", "torch disjoint", "onnx-fp32 disjoint"
    ]  # fmt: skip
    assert all(len(p.score_positions) == len(key[1]) for key, p in plan.prompts.items())
    results = run(plan)
    assert [r.status for r in results] == ["ok"] * 4
    assert_rows_order_alike(results[1:3])
    assert_rows_order_alike(results[2:])  # the export reads the same votes
    query = read_queries(bench_data / "candidates.jsonl")[0].top(12)
    engine = Reranker.from_pretrained(str(model), device="cpu", window_size=4)
    expected = engine.rerank(query.query, query.texts)
    for result in results[1:]:
        assert result.outcome is not None
        assert result.outcome.orders[query.qid] == expected.order  # the engine's own ranking
        assert result.outcome.windows == 3  # 12 passages dealt into 3 windows of 4
        assert result.outcome.steps[query.qid] == 1
    oracle = results[0].outcome
    assert oracle is not None
    grades = qrels_judge([query], read_qrels(bench_data / "qrels.txt"))
    ranked = [grades(query.query, query.texts[i]) for i in oracle.orders[query.qid]]
    assert ranked == sorted(ranked, reverse=True)  # the oracle's votes are the grades


def test_plain_disjoint_windows_deal_like_the_engine() -> None:
    dealt: list[list[int]] = []

    def score(members: list[int]) -> list[float]:
        dealt.append(members)
        return [float(-(m % 3)) for m in members]

    assert deal_and_sort(7, 3, score) == [0, 3, 6, 1, 4, 2, 5]
    assert dealt == [[0, 3, 6], [1, 4], [2, 5]]
    assert [list(w) for w in deal(range(7), 3)] == dealt
    assert deal_and_sort(0, 3, score) == []
    with pytest.raises(ValueError, match="a window of 3 got 2 scores"):
        deal_and_sort(3, 3, lambda members: [0.0, 1.0])


@pytest.fixture
def numeric_model(tied_model_dir: Path, tmp_path: Path) -> Path:
    """The tied model recorded with ``first-numeric``'s 9 labels."""
    model = tmp_path / "numeric-model"
    shutil.copytree(tied_model_dir, model)
    write_template(model, FIRST_NUMERIC_TEMPLATE)
    return model


def test_a_window_wider_than_the_templates_labels_is_refused_before_any_row(
    bench_data: Path, numeric_model: Path
) -> None:
    with pytest.raises(WindowTooLargeError, match="template 'first-numeric' has 9"):
        prepare(plain_and_torch(bench_data, numeric_model, window_size=10, step=5))
    with pytest.raises(ValueError, match="a window of 3 was ranked as"):
        slide(5, 3, 2, lambda members: [0, 1])


def test_the_window_and_step_follow_the_models_template_unless_given(
    bench_data: Path, tied_model_dir: Path, numeric_model: Path
) -> None:
    model = numeric_model
    sized = {"rows": ("oracle",), "window_size": None, "step": None}
    plan = prepare(plain_and_torch(bench_data, model, **sized))
    assert (plan.config.window_size, plan.config.step) == (9, 4)
    plan = prepare(plain_and_torch(bench_data, tied_model_dir, **sized))
    assert (plan.config.window_size, plan.config.step) == (20, 10)
    plan = prepare(plain_and_torch(bench_data, model, rows=("oracle",), window_size=6, step=None))
    assert (plan.config.window_size, plan.config.step) == (6, 3)


def test_options_no_chosen_row_uses_are_refused_and_plain_loops_get_no_strategies(
    bench_data: Path, tied_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--data-dir", str(bench_data), "--rows", "plain,generate", "--device", "cpu")
    code, printed = llmrank_bench(*args, "--oracle-noise", "0.5")
    assert (code, printed) == (2, "")
    assert "only the rows oracle use oracle_noise" in capsys.readouterr().err
    plan = prepare(plain_and_torch(bench_data, tied_model_dir, rows=("plain",)))
    assert plan.config.strategies is None
    assert [v.name for v in plan.config.variants] == ["plain sliding"]


def test_one_passage_windows_of_a_label_readout_are_refused_before_any_row(
    bench_data: Path, tied_model_dir: Path
) -> None:
    with pytest.raises(ValueError, match="one passage a window orders nothing"):
        prepare(plain_and_torch(bench_data, tied_model_dir, window_size=1, step=1))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--warmup", "-1"], "warmup must not be negative"),
        (["--dtype", "banana"], "banana"),
        (["--data-dir", "/nonexistent/trec-dl19"], "candidates.jsonl not found"),
    ],
)
def test_a_refused_command_leaves_no_json_folder_behind(
    bench_data: Path,
    tied_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
    message: str,
) -> None:
    output = tmp_path / "new" / "deep" / "bench.json"
    args = ("--data-dir", str(bench_data), "--model", str(tied_model_dir), "--rows", "oracle")
    code, _ = llmrank_bench(*args, *option, "--device", "cpu", "--json", str(output))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_json_replaces_an_earlier_one_whole_and_says_so(
    bench_data: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_runner, "measure_throughput", lambda device, dtype: FAST_MATMUL)
    output = tmp_path / "runs" / "bench.json"
    args = oracle_args(bench_data, tiny_model_dir, *ORACLE_SLICE)
    code, printed, first = bench_json(output, *args, "--queries", "1")
    assert code == 0
    assert "exists:" not in printed
    assert "(replaced" not in printed
    earlier = output.read_text()
    write_text = Path.write_text

    def torn(path: Path, text: str, *more: Any, **options: Any) -> int:
        write_text(path, text[: len(text) // 2], *more, **options)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as torn_disk:
        torn_disk.setattr(Path, "write_text", torn)
        code, printed = llmrank_bench(*args, "--device", "cpu", "--json", str(output))
    assert code == 2
    assert f"{output} exists: this run replaces it as its first row ends" in printed
    assert output.read_text() == earlier, "a failed write leaves the earlier record whole"
    assert [p.name for p in output.parent.iterdir()] == ["bench.json"]
    code, printed, second = bench_json(output, *args)
    assert code == 0
    assert f"saved {output} (replaced the earlier file)" in printed
    assert (first["data"]["queries"], second["data"]["queries"]) == (1, 2)


def test_an_interrupted_run_keeps_the_rows_it_finished(
    bench_data: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_runner, "measure_throughput", lambda device, dtype: FAST_MATMUL)
    run_one = bench_runner._run_one
    ran: list[str] = []

    def stopped_at_the_third(plan: Any, variant: Any, *rest: Any) -> Any:
        ran.append(variant.name)
        if len(ran) == 3:
            raise KeyboardInterrupt
        return run_one(plan, variant, *rest)

    monkeypatch.setattr(bench_runner, "_run_one", stopped_at_the_third)
    output = tmp_path / "bench.json"
    args = oracle_args(bench_data, tiny_model_dir, *ORACLE_SLICE)
    code, printed = llmrank_bench(
        *args, "--oracle-noise", "0,0.5,1", "--device", "cpu", "--json", str(output)
    )
    assert code == 130
    assert f"interrupted: {output} holds the 2 rows that ended" in printed
    kept = json.loads(output.read_text())
    assert [row["status"] for row in kept["rows"]] == ["ok", "ok"]
    assert [row["noise"] for row in kept["rows"]] == [0.0, 0.5]
    assert (kept["complete"], kept["planned_rows"]) == (False, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"], "no partial file left"
    monkeypatch.setattr(bench_runner, "_run_one", run_one)
    code, _, whole = bench_json(output, *args, "--oracle-noise", "0,0.5,1")
    assert code == 0
    assert (whole["complete"], whole["planned_rows"], len(whole["rows"])) == (True, 3, 3)


def test_the_record_names_its_command_and_cpu(
    bench_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    args = oracle_args(bench_data, tiny_model_dir, *ORACLE_SLICE)
    code, _, report = bench_json(tmp_path / "bench.json", *args)
    assert code == 0
    assert report["command"] == shlex.join(
        [
            "llmrank",
            "bench",
            *args,
            "--device",
            "cpu",
            "--in-process",
            "--no-progress",
            "--json",
            str(tmp_path / "bench.json"),
        ]
    )
    assert report["environment"]["cpu"] == cpu_description()


def test_the_record_counts_the_cpus_the_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    recorded = environment("cpu")
    assert (recorded["usable_cpus"], recorded["host_cpus"]) == (2, 8)
    assert "cpu_count" not in recorded  # the host's count under a name that did not say so
    monkeypatch.delattr(os, "sched_getaffinity")
    assert environment("cpu")["usable_cpus"] == 8


def test_cpu_description_reads_the_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512_bf16 sse\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: amx_bf16\n"
    )
    assert cpu_description(info) == {
        "model": "Some CPU 9000",
        "extensions": ["avx2", "avx512_bf16"],
    }
    assert cpu_description(tmp_path / "missing")["extensions"] is None
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_description(arm)["extensions"] is None


def test_each_row_takes_the_floor_of_the_dtype_it_computes_in(bench_data: Path) -> None:
    rates = {d: Throughput(rate, 2048, d) for d, rate in [("float32", 0.2), ("float16", 0.5)]}
    run_rate = Throughput(1.3, 2048, "bfloat16")
    plan = Plan(
        config=BenchConfig(data_dir=bench_data, device="cpu", dtype="bfloat16"),
        queries=(),
        total_queries=0,
        qrels={},
        windows=0,
        max_prompt_tokens=0,
        calibration=None,
        throughput=run_rate,
        prompts={},
        unavailable={},
        template=FIRST_TEMPLATE,
        row_throughputs=rates,
    )
    assert plan.throughput_of("torch") == plan.throughput_of("plain") == run_rate
    assert plan.throughput_of("onnx-fp32") == plan.throughput_of("onnx-int8") == rates["float32"]
    assert plan.throughput_of("onnx-fp16") == rates["float16"]


def test_cuda_runs_measure_the_fp16_export(bench_data: Path) -> None:
    """On CUDA, fp32 and int8 exports run their attention or weight products on the CPU."""
    assert BenchConfig(data_dir=bench_data, device="cuda").ordered_rows == CUDA_DEFAULT_ROWS
    assert "onnx-fp16" in CUDA_DEFAULT_ROWS
    assert not {"onnx-fp32", "onnx-int8"} & set(CUDA_DEFAULT_ROWS)
    assert BenchConfig(data_dir=bench_data, device="cpu").ordered_rows == DEFAULT_ROWS
    rows = ("torch", "onnx-fp32", "onnx-int8", "onnx-fp16")
    explicit = BenchConfig(data_dir=bench_data, device="cuda:0", rows=rows)
    unavailable = unavailable_rows(explicit)
    assert set(unavailable) == {"onnx-fp32", "onnx-int8"}
    assert "GroupQueryAttention" in unavailable["onnx-fp32"]
    assert "int8 export's fused attention" in unavailable["onnx-int8"]  # its weights would run
    assert all("--precision fp16" in reason for reason in unavailable.values())
    assert unavailable_rows(dataclasses.replace(explicit, device="cpu")) == {}


def test_bench_dtype_on_cuda_follows_the_checkpoint(
    fake_cuda: list[tuple[int, int]], tiny_model_dir: Path
) -> None:
    assert resolve_device(None, None, "default", "mistral-7b") == ("cuda", "bfloat16")
    assert resolve_device("cuda", None, str(tiny_model_dir), None) == ("cuda", "float32")
    assert resolve_device("cuda", "float16", "default", "tiny") == ("cuda", "float16")
    fake_cuda[0] = (7, 5)
    assert resolve_device("cuda", None, "default", "mistral-7b") == ("cuda", "float32")


def test_recording_keeps_the_scorers_batching(tiny_scorer: Any) -> None:
    from haystack_llmrank.bench.rows import RecordingScorer

    assert RecordingScorer(tiny_scorer).preferred_max_batch_tokens == 1  # torch on the CPU


@pytest.mark.slow
def test_a_model_that_judges_one_passage_a_window_is_benched_by_its_votes(
    bench_data: Path, tied_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "judge-model"
    shutil.copytree(tied_model_dir, model)
    write_template(model, JUDGE_TEMPLATE.with_vote(" yes"))
    config = plain_and_torch(bench_data, model, isolate=False, window_size=None, step=None)
    with pytest.raises(ValueError, match="the generate row decodes the order of a window's"):
        prepare(dataclasses.replace(config, rows=("plain", "generate")))
    plan = prepare(dataclasses.replace(config, rows=("oracle", "plain", "torch")))
    assert (plan.config.window_size, plan.config.strategies) == (1, ("disjoint",))
    assert plan.windows == 6  # a window a passage
    results = run(plan)
    assert [r.status for r in results] == ["ok"] * 3
    query = read_queries(bench_data / "candidates.jsonl")[0].top(6)
    expected = Reranker.from_pretrained(str(model), device="cpu").rerank(query.query, query.texts)
    plain, torch_row = (r.outcome for r in results[1:])
    assert plain is not None
    assert torch_row is not None
    for outcome in (plain, torch_row):
        assert outcome.orders[query.qid] == expected.order
        assert (outcome.windows, outcome.steps[query.qid]) == (6, 1)
    # a one-passage window orders nothing: only the queries' orders are compared
    assert agreement(plain, torch_row) == Agreement(0, 0, 1, 1)


def test_the_default_rows_of_a_one_passage_model_leave_generate_out(bench_data: Path) -> None:
    given = BenchConfig(data_dir=bench_data, rows=("plain", "torch"))
    assert model_rows(given, "cpu", 1, JUDGE_TEMPLATE) == ("plain", "torch")
    defaults = BenchConfig(data_dir=bench_data)
    assert model_rows(defaults, "cpu", 1, JUDGE_TEMPLATE) == DEFAULT_ROWS[:-1]
    assert DEFAULT_ROWS[-1] == "generate"
    assert model_rows(defaults, "cpu", 20, FIRST_TEMPLATE) == DEFAULT_ROWS


def test_the_default_model_is_benched_one_passage_a_window(
    bench_data: Path, tmp_path: Path
) -> None:
    code, printed, report = bench_json(
        tmp_path / "bench.json",
        "--data-dir",
        str(bench_data),
        "--rows",
        "oracle",
        "--queries",
        "2",
        "--top-k",
        "5",
    )
    assert code == 0
    assert "window 1: 10 disjoint windows" in printed  # the default's judge template
    (row,) = report["rows"]
    assert (row["row"], row["strategy"], row["windows_per_query"]) == ("oracle", "disjoint", 5)
