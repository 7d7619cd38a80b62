"""The oldest onnxruntime llmrank accepts: declared, enforced, and what exporting under it needs."""

from __future__ import annotations

import copy
import logging
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from support import PROJECT_ROOT

from haystack_llmrank.export import export_onnx
from haystack_llmrank.labels import LabelIds
from haystack_llmrank.scorers import onnx_scorer

OLD_RUNTIME = "onnxruntime 1.27.0 is installed, and llmrank needs 1.28 or later"


def test_the_extras_require_the_oldest_runtime_the_code_accepts() -> None:
    from haystack_llmrank.scorers.onnx_scorer import MIN_ONNXRUNTIME

    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    assert f"onnxruntime>={MIN_ONNXRUNTIME}" in extras["onnx"]
    assert f"onnxruntime-gpu>={MIN_ONNXRUNTIME}" in extras["gpu"]
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"onnxruntime>={MIN_ONNXRUNTIME}" in readme


def test_an_older_runtime_is_refused_by_the_scorer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ort, "__version__", "1.27.0")
    labels = LabelIds(("A",), ((32,),))
    with pytest.raises(ImportError, match=re.escape(OLD_RUNTIME)):
        onnx_scorer.OnnxLabelScorer(tmp_path / "model.onnx", labels, device="cpu")


def test_an_older_runtime_is_refused_before_an_export_loads_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    monkeypatch.setattr(ort, "__version__", "1.27.0")

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("haystack_llmrank.export.onnx_folder.load_causal_lm", no_load)
    with pytest.raises(ImportError, match=re.escape(OLD_RUNTIME)):
        export_onnx(str(tiny_model_dir), tmp_path / "out")


@pytest.mark.parametrize("version", ["1.28.0", "1.28.0rc1", "1.32.0", "2.0.0.dev20260101"])
def test_the_oldest_accepted_runtime_and_newer_pass(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(ort, "__version__", version)
    onnx_scorer.check_onnxruntime()


def test_an_unreadable_runtime_version_is_let_through_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ort, "__version__", "custom-build")
    with caplog.at_level(logging.WARNING):
        onnx_scorer.check_onnxruntime()
    assert "cannot read the onnxruntime version 'custom-build'" in caplog.text


def converter_of_onnxruntime_1_31(convert: Any) -> Any:
    """``convert`` writing one ``Cast`` per consumer of a cast tensor, all of one name and
    output, as onnxruntime's float16 converter did before 1.32."""

    def converting(model: Any, **kwargs: Any) -> Any:
        converted = convert(model, **kwargs)
        consumers = Counter(name for node in converted.graph.node for name in node.input)
        copies = [
            copy.deepcopy(node)
            for node in converted.graph.node
            if node.op_type == "Cast"
            for _ in range(consumers[node.output[0]] - 1)
        ]
        assert copies, "the converted graph has no cast with several consumers"
        converted.graph.node.extend(copies)
        return converted

    return converting


@pytest.mark.slow
def test_fp16_exports_with_the_float16_converter_of_older_runtimes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from onnxruntime.transformers import float16

    older = converter_of_onnxruntime_1_31(float16.convert_float_to_float16)
    monkeypatch.setattr(float16, "convert_float_to_float16", older)
    folder = export_onnx(str(tiny_model_dir), tmp_path / "fp16", precision="fp16")
    model = onnx.load(str(folder / "model.onnx"))
    names = Counter(node.name for node in model.graph.node)
    assert names.most_common(1)[0][1] == 1


def test_duplicate_casts_are_merged_into_one() -> None:
    from haystack_llmrank.export.precision import merge_duplicate_nodes

    cast = helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="x_cast")
    nodes = [
        cast,
        helper.make_node("Sin", ["x32"], ["s"], name="sin"),
        copy.deepcopy(cast),
        helper.make_node("Cos", ["x32"], ["c"], name="cos"),
    ]
    value = helper.make_tensor_value_info("x32", TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("s", "c")],
        value_info=[value, copy.deepcopy(value)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(Exception, match="two nodes with same node name"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert merge_duplicate_nodes(model) == 1
    assert [node.name for node in model.graph.node] == ["x_cast", "sin", "cos"]
    assert [info.name for info in model.graph.value_info] == ["x32"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sin, cos = session.run(None, {"x": np.array([0.0, 1.0], np.float16)})
    assert np.allclose(sin, np.sin([0.0, 1.0]), atol=1e-3)
    assert np.allclose(cos, np.cos([0.0, 1.0]), atol=1e-3)
