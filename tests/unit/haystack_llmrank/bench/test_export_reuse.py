"""``llmrank bench --export-dir`` reuses an export only of the weights the model holds now."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from haystack_llmrank.bench.runner import export_onnx_row
from haystack_llmrank.models import resolve_model
from haystack_llmrank.prompt import FIRST_TEMPLATE
from haystack_llmrank.scorers.onnx_metadata import METADATA_FILE

pytest.importorskip("onnxruntime")


def save_adapter(base: Path, folder: Path, seed: int) -> None:
    """A random LoRA adapter over the model in ``base``, saved in ``folder``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    torch.manual_seed(seed)
    get_peft_model(model, config).save_pretrained(folder)


@pytest.fixture
def adapter(tiny_model_dir: Path, tmp_path: Path) -> Path:
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    save_adapter(base, tmp_path / "adapter", seed=1)
    return tmp_path / "adapter"


def refusal(folder: Path, why: str) -> str:
    return re.escape(f"the ONNX export in {folder} is {why}; delete it (it is then exported")


def test_an_export_of_weights_changed_since_is_refused_not_reused(
    adapter: Path, tmp_path: Path
) -> None:
    exports = tmp_path / "exports"
    folder, seconds = export_onnx_row(str(adapter), "fp32", exports, FIRST_TEMPLATE)
    assert seconds is not None
    assert export_onnx_row(str(adapter), "fp32", exports, FIRST_TEMPLATE) == (folder, None)
    weights = adapter / "adapter_model.safetensors"
    trained = weights.read_bytes()
    save_adapter(tmp_path / "base", adapter, seed=2)  # trained again into the same folder
    other = f"of other weights than --model '{adapter.parent / 'base'}+{adapter}' holds now"
    changed = "(adapter/adapter_model.safetensors changed)"
    with pytest.raises(ValueError, match=refusal(folder, f"{other} {changed}")):
        export_onnx_row(str(adapter), "fp32", exports, FIRST_TEMPLATE)
    weights.write_bytes(trained)  # the same content again: the adapter is compared by content
    assert export_onnx_row(str(adapter), "fp32", exports, FIRST_TEMPLATE) == (folder, None)
    base_weights = tmp_path / "base" / "model.safetensors"
    base_weights.write_bytes(base_weights.read_bytes())  # the base by size and mtime
    with pytest.raises(ValueError, match=re.escape("(base/model.safetensors changed)")):
        export_onnx_row(str(adapter), "fp32", exports, FIRST_TEMPLATE)


def test_an_export_that_records_no_weights_is_refused_asking_to_export_again(
    adapter: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "exports" / "onnx-fp32"
    folder.mkdir(parents=True)
    older = {  # as format 1 wrote it: no source_weights
        "format": "llmrank-onnx",
        "format_version": 1,
        "label_ids": {"labels": ["A"], "ids": [[32]]},
        "template": FIRST_TEMPLATE.to_dict(),
        "precision": "fp32",
        "source_model": resolve_model(str(adapter)).name,
        "context_length": 4096,
        "pad_token_id": 0,
        "opset": 18,
        "optimized": True,
        "files": {},
        "attention": "fused",
    }
    (folder / METADATA_FILE).write_text(json.dumps(older))
    why = (
        "from an older llmrank, which did not record the weights it was made from, so whether "
        "--model still holds them cannot be checked"
    )
    with pytest.raises(ValueError, match=refusal(folder, why)):
        export_onnx_row(str(adapter), "fp32", tmp_path / "exports", FIRST_TEMPLATE)
