"""Finding and loading models: the GGUF cache's failures, references, devices and dtypes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from support import make_tiny_llama

import haystack_llmrank.models as models
from haystack_llmrank.backends import check_placement, resolve_torch_device
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.models import (
    ModelSource,
    check_available,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)
from haystack_llmrank.reranker import Reranker


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GGUF cache for this test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LLMRANK_CACHE_DIR", str(folder))
    monkeypatch.delenv("LLMRANK_NO_CACHE", raising=False)
    return folder


def test_a_failed_cache_write_leaves_no_partial_copy(
    tiny_model: Any,
    smollm2_tokenizer: Any,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import safetensors.torch

    class DiskFullError(Exception):  # what safetensors raises is no OSError
        pass

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise DiskFullError("I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.torch, "save_model", full_disk)
    target = cache_dir / "gguf" / "model-abc"
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.models"):
        models._write_cache(tiny_model, smollm2_tokenizer, target)  # no error: cached or not
    assert "could not cache the GGUF model" in caplog.text
    assert "File too large" in caplog.text
    assert list((cache_dir / "gguf").iterdir()) == []


def test_the_cache_is_readable_as_the_umask_allows(
    tiny_model: Any, smollm2_tokenizer: Any, cache_dir: Path
) -> None:
    old = os.umask(0o022)
    try:
        target = cache_dir / "gguf" / "model-abc"
        models._write_cache(tiny_model, smollm2_tokenizer, target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "model.safetensors").stat().st_mode) == 0o644


@pytest.fixture
def cached_gguf(
    tiny_model: Any, smollm2_tokenizer: Any, cache_dir: Path, tmp_path: Path
) -> tuple[ModelSource, Path]:
    """A file that is no GGUF file, and a cached copy of the tiny model under its key."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really a GGUF file")
    source = resolve_model(str(gguf))
    target = models._gguf_cache_dir(source)
    assert target is not None
    models._write_cache(tiny_model, smollm2_tokenizer, target)
    return source, target


def test_a_damaged_cached_copy_is_dropped_and_the_file_read_again(
    cached_gguf: tuple[ModelSource, Path], caplog: pytest.LogCaptureFixture
) -> None:
    source, target = cached_gguf
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short
    # the file itself is no model either: reading it again fails, naming it
    with (
        caplog.at_level(logging.WARNING, logger="haystack_llmrank.models"),
        pytest.raises(ModelResolutionError, match="cannot load a causal LM from"),
    ):
        load_causal_lm(source)
    assert f"the cached copy in {target} cannot be loaded" in caplog.text
    assert not target.exists()


def test_running_out_of_memory_leaves_the_shared_cached_copy_in_place(
    cached_gguf: tuple[ModelSource, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    source, target = cached_gguf

    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")  # what torch raises

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", out_of_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        load_causal_lm(source)
    assert (target / "model.safetensors").is_file()


def test_a_truncated_gguf_file_is_named_with_a_hint_in_the_api_and_the_cli(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import haystack_llmrank.cli as cli

    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")  # the header stops after its version
    source = resolve_model(str(gguf))
    hint = re.escape(f"the GGUF file {gguf.resolve()} (truncated or not a GGUF file?): ")
    with pytest.raises(ModelResolutionError, match=f"^cannot load a tokenizer from {hint}"):
        load_tokenizer(source)
    with pytest.raises(ModelResolutionError, match=f"^cannot load a causal LM from {hint}"):
        load_causal_lm(source)
    query = {"qid": "q1", "query": "fleas", "candidates": [{"docid": "d1", "text": "fleas"}]}
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps(query) + "\n")
    argv = ["rerank", str(candidates), "-o", str(tmp_path / "run"), "--model", str(gguf)]
    assert cli.main(argv) == 2
    assert "(truncated or not a GGUF file?)" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "cached"), [("0", True), ("", True), ("1", False)])
def test_llmrank_no_cache_turns_the_cache_off_only_when_true(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str, cached: bool
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    monkeypatch.setenv("LLMRANK_NO_CACHE", value)
    assert (models._gguf_cache_dir(resolve_model(str(gguf))) is not None) is cached


def test_an_empty_xdg_cache_home_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMRANK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert models._cache_root() == Path(os.path.expanduser("~/.cache/llmrank/gguf"))


def test_behind_a_proxy_the_hub_is_not_called_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_direct_route(*args: Any, **kwargs: Any) -> None:
        raise OSError("direct connections are blocked")

    monkeypatch.setattr(models.socket, "create_connection", no_direct_route)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not models._hub_reachable()
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy.example:1080")
    assert models._hub_reachable()
    monkeypatch.delenv("ALL_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert models._hub_reachable()


def test_the_hub_probe_gives_up_on_a_name_lookup_that_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow_lookup(*args: Any, **kwargs: Any) -> Any:
        time.sleep(2)  # a resolver that gets no answer; the connection opens in the end
        return contextlib.nullcontext()

    monkeypatch.setattr(models.socket, "create_connection", slow_lookup)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    assert not models._hub_reachable(timeout=0.2)
    assert time.monotonic() - started < 1


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding the tiny model as the hub id ``fake/tiny``, with the hub
    allowed (no offline variable) but unreachable; returns the snapshot folder."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--fake--tiny"
    snapshot = repo / "snapshots" / ("b" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    return snapshot


def test_a_cached_hub_id_loads_from_its_snapshot_while_the_hub_cannot_be_reached(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lookups: list[Any] = []

    def no_network(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args[:2])
        raise AssertionError(f"a network lookup of {args[:2]}")  # not retried, unlike OSError

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.models"):
        reranker = Reranker.from_pretrained("fake/tiny", device="cpu")
    assert lookups == []
    assert reranker.model_name == "fake/tiny"
    assert (
        caplog.text.count(
            f"cannot be reached; loading fake/tiny from its cached snapshot {hub_cache}"
        )
        == 1
    )


def test_an_adapters_cached_hub_base_loads_from_its_snapshot_only_while_unreachable(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "fake/tiny"})
    )
    source = resolve_model(str(adapter))
    loaded = models.loadable_source(source)
    assert loaded == ModelSource(str(hub_cache), None, str(adapter.resolve()), "fake/tiny")
    assert loaded.name == source.name == f"fake/tiny+{adapter.resolve()}"
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    assert models.loadable_source(source) == source
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # transformers reads the cache, asking no hub
    assert models.loadable_source(source) == source


def test_a_cached_hub_id_is_looked_up_in_the_cache_once(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    lookups: list[tuple[str, str]] = []
    lookup = huggingface_hub.try_to_load_from_cache

    def counted(repo_id: str, filename: str, **kwargs: Any) -> Any:
        lookups.append((repo_id, filename))
        return lookup(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", counted)
    assert models.loadable_source(ModelSource("fake/tiny")).location == str(hub_cache)
    assert lookups == [("fake/tiny", "config.json")]


def test_a_cached_hub_ids_fingerprint_is_its_snapshots(hub_cache: Path) -> None:
    by_id = models.weights_fingerprint(ModelSource("fake/tiny"))
    assert by_id == models.weights_fingerprint(ModelSource(str(hub_cache)))
    assert "base/config.json" in by_id
    assert models.weights_fingerprint(ModelSource("foo bar")) == {}


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_either_offline_variable_refuses_a_hub_id_not_cached(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    monkeypatch.setenv(name, "1")
    with pytest.raises(ModelResolutionError, match=f"and {name} is set"):
        check_available(ModelSource("no-such-org/no-such-model"))


def test_references_that_name_no_model_say_so(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="neither a local folder or file nor a Hugging"):
        check_available(resolve_model("foo bar"))
    config = tmp_path / "config.json"
    config.write_text("{}")
    with pytest.raises(ModelResolutionError, match="is a file: name the folder that holds"):
        resolve_model(str(config))


def test_an_adapter_whose_base_is_missing_is_named(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    missing = tmp_path / "gone"
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(missing)})
    )
    with pytest.raises(ModelResolutionError, match=f"the adapter in {adapter} names the base"):
        resolve_model(str(adapter))


def test_a_checkpoint_missing_weights_is_refused_not_filled_at_random(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"], weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ModelResolutionError,
        match=rf"^cannot load a causal LM from {folder}: .*2 weights of the model missing "
        r"\(lm_head\.weight, model\.layers\.1\.mlp\.down_proj\.weight\)",
    ):
        load_causal_lm(ModelSource(str(folder)))


def test_a_config_that_does_not_fit_its_weights_is_refused_naming_the_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "wider"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(
        ModelResolutionError,
        match=rf"^cannot load a causal LM from {folder}: .* weights of another shape than its "
        r"config gives \(lm_head\.weight, ",
    ):
        load_causal_lm(ModelSource(str(folder)))


def test_an_output_layer_tied_to_the_embeddings_is_not_missing(tmp_path: Path) -> None:
    make_tiny_llama(64, layers=1, tied=True).save_pretrained(tmp_path)  # no lm_head.weight
    model = load_causal_lm(ModelSource(str(tmp_path)))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_folder_without_tokenizer_files_says_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"  # what model.save_pretrained() alone writes
    shutil.copytree(tiny_model_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(
        ModelResolutionError,
        match=rf"^{folder} holds no tokenizer: none of tokenizer\.json, tokenizer_config\.json, ",
    ):
        Reranker.from_pretrained(str(folder), device="cpu")


def test_a_relative_adapter_base_is_read_from_the_adapter_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, base, cwd = tmp_path / "run" / "adapter", tmp_path / "run" / "base", tmp_path / "cwd"
    for folder in (adapter, base, tmp_path / "base", cwd / "tiny"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")

    def recording(base_model: str) -> str:
        (adapter / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": base_model})
        )
        return str(adapter)

    monkeypatch.chdir(cwd)  # from which ../base and tiny are other folders
    assert resolve_model(recording("../base")).location == str(base.resolve())
    for unknown in ("tiny", "./tiny", "../cwd/tiny"):  # not beside the adapter
        with pytest.raises(ModelResolutionError, match="read from the adapter's folder, not the"):
            resolve_model(recording(unknown))
    assert resolve_model(recording("org/model")).location == "org/model"  # a hub id


@pytest.mark.parametrize("dtype", ["int8", "bool", "complex64", "float8_e4m3fn"])
def test_dtypes_that_cannot_hold_weights_are_refused_up_front(dtype: str) -> None:
    with pytest.raises(ValueError, match=f"dtype '{dtype}' cannot hold a model's weights"):
        check_placement("torch", "cpu", dtype)


def test_float16_on_the_cpu_warns(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from haystack_llmrank.backends import resolve_torch_dtype

    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.backends"):
        resolve_torch_dtype("mps", "float16")  # the fast dtype there
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.backends"):
        Reranker.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float16")
    assert "float16 on cpu: most CPUs compute it far slower" in caplog.text


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_native_bfloat16_warns(
    native: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from haystack_llmrank import backends

    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.backends"):
        assert backends.resolve_torch_dtype("cpu", "bfloat16") == torch.bfloat16
        assert backends.resolve_torch_dtype("cpu", "float32") == torch.float32
    warned = "this CPU has neither AVX512-BF16 nor AMX" in caplog.text
    assert warned is not native


def test_devices_torch_cannot_use_here_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="runs on cpu, cuda or mps only"):
        check_placement("torch", "meta", None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="this torch has no MPS device"):
        check_placement("torch", "mps", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_torch_device("cuda:0") == "cuda:0"
    with pytest.raises(RuntimeError, match=r"'cuda:1' was asked for but torch sees 1 CUDA"):
        resolve_torch_device("cuda:1")
    assert resolve_torch_device("cuda:1", "warn") == "cpu"


def test_torch_takes_devices_by_the_shared_grammar_in_their_plain_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for given, name in (("CPU", "cpu"), ("cpu:0", "cpu"), (" CUDA:1 ", "cuda:1"), ("Cuda", "cuda")):
        assert resolve_torch_device(given) == name


def test_from_pretrained_checks_its_options_before_loading(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import haystack_llmrank.backends as backends

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backends, "load_scorer", never)
    with pytest.raises(TypeError, match="unexpected keyword arguments: batchsize"):
        Reranker.from_pretrained(str(tiny_model_dir), batchsize=3)
    with pytest.raises(TypeError, match="sets model_name itself"):
        Reranker.from_pretrained(str(tiny_model_dir), model_name="x")


def test_a_composite_models_decoder_facts_are_read_from_its_text_config() -> None:
    import transformers

    from haystack_llmrank.bench.model_loading import attention_width
    from haystack_llmrank.export.attention import (
        AttentionFusionError,
        FusedCalls,
        check_all_layers_fused,
    )
    from haystack_llmrank.training.adapters import _top_layers

    text = {"num_hidden_layers": 3, "max_position_embeddings": 777, "num_attention_heads": 4}
    config = transformers.Gemma3Config(text_config={**text, "head_dim": 8})
    model = SimpleNamespace(config=config)
    assert models.context_length(config, SimpleNamespace(model_max_length=64)) == 777
    assert _top_layers(model, 2) == [1, 2]
    with pytest.raises(ValueError, match="the model has 3 layers"):
        _top_layers(model, 4)
    assert attention_width(model) == 3 * 4 * 8
    with pytest.raises(AttentionFusionError, match="2 of 3 attention layers"):
        check_all_layers_fused(model, FusedCalls(count=2))
    check_all_layers_fused(model, FusedCalls(count=3))
