"""``examples/onnx_variants.py``: every variant exported as named and compared on DL19 windows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import pytest

from haystack_llmrank.export import read_metadata
from haystack_llmrank.model_templates import TEMPLATE_FILE
from haystack_llmrank.prompt import FIRST_TEMPLATE, JUDGE_TEMPLATE, PromptTemplate

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "onnx_variants.py"


def test_variants_are_exported_as_named_and_fp32_matches_torch(
    tiny_model_dir: Path, dl19_dir: Path, tmp_path: Path
) -> None:
    exports, output = tmp_path / "exports", tmp_path / "variants.json"
    command = [sys.executable, str(EXAMPLE), "--model", str(tiny_model_dir)]
    command += ["--data", str(dl19_dir), "--windows", "3", "--threads", "1"]
    command += ["--export-dir", str(exports), "--json", str(output), "--profile"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr

    results = json.loads(output.read_text(encoding="utf-8"))
    assert results["windows"] == 3
    assert all(tokens > 1000 for tokens in results["tokens"])  # real 20-passage windows
    variants = results["variants"]
    assert set(variants) == {"fp32-fused", "fp32-plain", "int8-fused", "int8-dynamic"}
    for name, (precision, attention) in {
        "fp32-fused": ("fp32", "fused"),
        "fp32-plain": ("fp32", "plain"),
        "int8-fused": ("int8", "fused"),
        "int8-dynamic": ("int8-dynamic", "fused"),
    }.items():
        metadata = read_metadata(exports / name)  # checks the graph's recorded hashes
        assert (metadata.precision, metadata.attention) == (precision, attention)
        assert variants[name]["seconds_per_window"] > 0
        assert -1.0 <= variants[name]["kendall_tau"] <= 1.0
    assert variants["int8-fused"]["kendall_tau"] > 0.8  # measured 0.975 (README)
    for name, attention_op in {
        "fp32-fused": "GroupQueryAttention",
        "fp32-plain": "Softmax",
        "int8-fused": "GroupQueryAttention",
        "int8-dynamic": "GroupQueryAttention",
    }.items():
        profile = variants[name]["profile"]
        assert profile["tokens"] == max(results["tokens"])
        assert attention_op in profile["operator_seconds"]
        assert all(seconds >= 0 for seconds in profile["operator_seconds"].values())
    assert "GroupQueryAttention" not in variants["fp32-plain"]["profile"]["operator_seconds"]
    # int8 activations, quantized at run time, in every decoder MatMul but the label head
    assert "DynamicQuantizeLinear" in variants["int8-dynamic"]["profile"]["operator_seconds"]
    graph = onnx.load(str(exports / "int8-dynamic" / "model.onnx"), load_external_data=False)
    kinds = Counter(node.op_type for node in graph.graph.node)
    assert kinds["MatMulInteger"] == 2 * 7  # 2 layers of 7 projections
    assert kinds["MatMul"] == 1  # the label head
    for name in ("fp32-fused", "fp32-plain"):
        assert variants[name]["max_abs_diff"] < 1e-3
        assert variants[name]["kendall_tau"] == 1.0
        assert variants[name]["same_order"] == 3
    assert "fp32-plain" in done.stdout


def compare_fp32_with_template(
    tiny_model_dir: Path, dl19_dir: Path, tmp_path: Path, template: PromptTemplate
) -> tuple[dict[str, Any], Path]:
    """The example's results for the tiny model recorded with ``template`` (2 windows, the
    fused fp32 export, profiled), and its export folder."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / TEMPLATE_FILE).write_text(json.dumps(template.to_dict()), encoding="utf-8")
    exports, output = tmp_path / "exports", tmp_path / "variants.json"
    command = [sys.executable, str(EXAMPLE), "--model", str(model), "--data", str(dl19_dir)]
    command += ["--windows", "2", "--threads", "1", "--variants", "fp32-fused", "--profile"]
    command += ["--export-dir", str(exports), "--json", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(output.read_text(encoding="utf-8")), exports / "fp32-fused"


def test_a_vote_template_is_compared_by_its_votes(
    tiny_model_dir: Path, dl19_dir: Path, tmp_path: Path
) -> None:
    voted = FIRST_TEMPLATE.with_vote(" yes")
    results, export = compare_fp32_with_template(tiny_model_dir, dl19_dir, tmp_path, voted)
    assert results["vote"] == " yes"
    assert read_metadata(export).reads_positions  # the graph reads votes
    row = results["variants"]["fp32-fused"]
    # 20 votes a window, one per passage line, as torch reads them
    assert (row["max_abs_diff"] < 1e-3, row["kendall_tau"], row["same_order"]) == (True, 1.0, 2)
    assert "GroupQueryAttention" in row["profile"]["operator_seconds"]


def test_a_one_passage_template_is_compared_over_a_window_of_its_prompts(
    tiny_model_dir: Path, dl19_dir: Path, tmp_path: Path
) -> None:
    """It built windows of 20 in a template of one label and failed (the default's)."""
    judged = JUDGE_TEMPLATE.with_vote(" yes")
    results, _ = compare_fp32_with_template(tiny_model_dir, dl19_dir, tmp_path, judged)
    assert (results["template"], results["windows"], results["prompts_per_window"]) == (
        "judge",
        2,
        20,
    )
    row = results["variants"]["fp32-fused"]
    # 20 votes a window, one per passage's own prompt, ordered as torch orders them
    assert (row["max_abs_diff"] < 1e-3, row["kendall_tau"], row["same_order"]) == (True, 1.0, 2)
    assert row["profile"]["tokens"] < min(results["tokens"]) / 10  # one passage's prompt
