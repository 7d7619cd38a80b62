"""``examples/onnx_variants.py`` reuses a variant's export only where it is that variant of
the model's current weights."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

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


def test_a_mismatched_variant_is_refused_before_any_timing(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It was refused with a traceback, and only after the torch pass was timed."""
    variants = import_example("onnx_variants")
    root = tmp_path / "exports"
    template = variants.model_template(None, str(tiny_model_dir))
    plain = variants.exported(str(tiny_model_dir), root, "fp32-plain", template)
    shutil.copytree(plain, root / "fp32-fused")  # plain attention under the fused name

    def timed(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the torch pass ran before the variants were checked")

    monkeypatch.setattr(variants, "load_scorer", timed)
    base = ["--model", str(tiny_model_dir), "--data", str(tmp_path), "--export-dir", str(root)]
    for chosen in ("fp32-plain,fp32-fused", "int8-dynamic"):  # the latter is made from fused
        monkeypatch.setattr(sys, "argv", ["onnx_variants.py", *base, "--variants", chosen])
        with pytest.raises(SystemExit) as exit_info:
            variants.main()
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.splitlines()[-1].endswith(
            f"error: the ONNX export in {root / 'fp32-fused'} is with plain attention, not "
            "fused; delete it (it is then exported again), or choose another --export-dir"
        )
