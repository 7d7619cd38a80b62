"""``examples/onnx_variants.py`` reuses a variant's export only where it is that variant of
the model's current weights."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from support import import_example

from haystack_llmrank.prompt import FIRST_TEMPLATE
from haystack_llmrank.scorers.onnx_metadata import GRAPH_FILE

pytest.importorskip("onnxruntime")


def test_an_export_is_reused_only_as_the_variant_of_the_same_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    other_model = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    variants = import_example("onnx_variants")
    root = tmp_path / "exports"
    folder = variants.exported(str(tiny_model_dir), root, "fp32-plain", FIRST_TEMPLATE)
    graph = (folder / GRAPH_FILE).stat().st_mtime_ns
    assert variants.exported(str(tiny_model_dir), root, "fp32-plain", FIRST_TEMPLATE) == folder
    assert (folder / GRAPH_FILE).stat().st_mtime_ns == graph  # reused, not exported again
    with pytest.raises(ValueError, match=re.escape(f"of '{tiny_model_dir}', not of --model")):
        variants.exported(str(other_model), root, "fp32-plain", FIRST_TEMPLATE)
    shutil.copytree(folder, root / "fp32-fused")  # plain attention under the fused name
    with pytest.raises(ValueError, match="with plain attention, not fused; delete it"):
        variants.exported(str(tiny_model_dir), root, "fp32-fused", FIRST_TEMPLATE)
