"""ONNX export of the tiny Llama: parity with torch, metadata refusals, precisions, providers."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from haystack_llmrank.cli import main
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.export import export_onnx, read_metadata
from haystack_llmrank.export.attention import (
    FUSED_ATTENTION,
    AttentionFusionError,
    fused_attention_in,
)
from haystack_llmrank.export.graph import choose_attention
from haystack_llmrank.export.loading import device_mismatches, load_export
from haystack_llmrank.export.metadata import METADATA_FILE, file_sha256
from haystack_llmrank.export.precision import QUANTIZER_MODULE as QUANTIZER
from haystack_llmrank.export.precision import label_head_nodes, quiet_quantizer
from haystack_llmrank.export.verify import check_graph
from haystack_llmrank.labels import ALPHABETIC_LABELS, LabelIds, resolve_label_ids
from haystack_llmrank.prompt import FIRST_TEMPLATE
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.base import LabelScorer
from haystack_llmrank.scorers.label_head import LabelLogitsModel
from haystack_llmrank.scorers.onnx_scorer import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxLabelScorer,
    Placement,
    choose_placement,
    confirm_placement,
    parse_device,
)
from haystack_llmrank.scorers.padding import pad_right
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from haystack_llmrank.strategies import SlidingWindow

BATCHES = [
    [list(range(100, 160)), list(range(300, 310)), [5]],
    [[7, 8, 9, 10]],
    [[5]],
    [list(range(1000, 1000 + n)) for n in (3, 97, 41, 12, 64)],
]
"""Right-padded batches of different widths, including one-token prompts."""

PASSAGES = [
    "The flea life cycle has four stages: egg, larva, pupa and adult.",
    "Roman roads connected the provinces of the empire.",
    "Adult fleas live for two to three months on a host.",
    "Photosynthesis turns light into chemical energy in plants.",
    "A flea can jump a hundred times its own length.",
    "The stock market closed higher on Tuesday.",
    "Flea eggs hatch within two weeks in warm, humid places.",
    "Jazz grew out of New Orleans in the early twentieth century.",
    "Cats and dogs are the usual hosts of the cat flea.",
    "Volcanoes form where tectonic plates meet.",
    "Pupae can stay dormant for months until a host is near.",
    "The Pacific is the largest ocean on Earth.",
]


def export_to(folder: Path, model_dir: Path, **kwargs: Any) -> Path:
    return export_onnx(str(model_dir), folder, **kwargs)


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return export_to(tmp_path_factory.mktemp("onnx") / "fp32", tiny_model_dir)


@pytest.fixture(scope="module")
def fp32_scorer(fp32_dir: Path) -> OnnxLabelScorer:
    return load_export(fp32_dir, device="cpu").scorer


@pytest.fixture
def fp32_copy(fp32_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fp32_dir, tmp_path / "copy"))


def rewrite_metadata(folder: Path, **changes: Any) -> None:
    path = folder / METADATA_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --- the folder and the graph ---------------------------------------------------------------


def test_export_folder_is_self_contained(
    fp32_dir: Path, smollm2_tokenizer: Any, tiny_model_dir: Path
) -> None:
    names = {p.name for p in fp32_dir.iterdir()}
    assert {"model.onnx", METADATA_FILE, "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.startswith(".") for name in names)
    meta = read_metadata(fp32_dir)
    assert meta.format_version == 1
    assert meta.label_ids == resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    assert meta.template == FIRST_TEMPLATE.to_dict()
    assert (meta.precision, meta.context_length, meta.opset) == ("fp32", 4096, 18)
    assert meta.source_model == str(tiny_model_dir)
    assert meta.pad_token_id == smollm2_tokenizer.pad_token_id
    assert meta.files == {"model.onnx": file_sha256(fp32_dir / "model.onnx")}
    assert {"method", "torch", "transformers", "onnx", "onnxruntime"} <= set(meta.exporter)
    assert meta.attention == "fused"
    tokenizer = load_export(fp32_dir, device="cpu").tokenizer
    assert tokenizer.chat_template == smollm2_tokenizer.chat_template


def test_graph_has_two_int64_inputs_and_only_label_logits(fp32_dir: Path) -> None:
    model = onnx.load(str(fp32_dir / "model.onnx"))
    onnx.checker.check_model(model)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for tensor in inputs.values():
        assert tensor.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.shape.dim] == ["batch", "sequence"]
    [output] = model.graph.output
    dims = output.type.tensor_type.shape.dim
    assert output.name == "label_logits"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (dims[0].dim_param, dims[1].dim_value) == ("batch", 26)
    assert len(label_head_nodes(model)) == 1


def test_no_vocabulary_wide_tensor_in_the_graph(fp32_dir: Path, smollm2_tokenizer: Any) -> None:
    model = onnx.load(str(fp32_dir / "model.onnx"))
    vocab = len(smollm2_tokenizer)
    shapes = [list(t.dims) for t in model.graph.initializer]
    # the embedding table is [vocab, hidden]; nothing else spans the vocabulary
    assert sum(vocab in dims for dims in shapes) == 1


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
def test_fp32_matches_torch_on_padded_batches(
    fp32_scorer: OnnxLabelScorer, tiny_scorer: TorchLabelScorer, batch: list[list[int]]
) -> None:
    got = fp32_scorer.score(batch)
    assert got.dtype == np.float32
    assert got.shape == (len(batch), 26)
    np.testing.assert_allclose(got, tiny_scorer.score(batch), atol=1e-4, rtol=0)


def test_scores_do_not_depend_on_batch_partners(fp32_scorer: OnnxLabelScorer) -> None:
    batch = BATCHES[3]
    together = fp32_scorer.score(batch)
    alone = np.vstack([fp32_scorer.score([p]) for p in batch])
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)


def test_scorer_satisfies_protocol_and_rejects_empty_prompts(
    fp32_scorer: OnnxLabelScorer,
) -> None:
    assert isinstance(fp32_scorer, LabelScorer)
    assert fp32_scorer.device == "cpu"
    assert fp32_scorer.providers == [CPU_PROVIDER]
    with pytest.raises(ValueError, match="empty prompt"):
        fp32_scorer.score([[1, 2], []])
    with pytest.raises(ValueError, match="no prompts"):
        fp32_scorer.score([])


def test_reranker_orderings_identical_to_torch(fp32_dir: Path, tiny_reranker: Reranker) -> None:
    strategy = SlidingWindow(5, 3)
    onnx_reranker = Reranker.from_pretrained(
        str(fp32_dir), backend="onnx", device="cpu", strategy=strategy
    )
    torch_reranker = Reranker(
        tiny_reranker.tokenizer, tiny_reranker.scorer, max_prompt_tokens=4096, strategy=strategy
    )
    requests = [
        ("how long is the life cycle of a flea", PASSAGES),
        ("largest ocean", PASSAGES[::-1]),
        ("jazz", PASSAGES[:4]),
    ]
    for expected, got in zip(
        torch_reranker.rerank_many(requests), onnx_reranker.rerank_many(requests), strict=True
    ):
        assert got.order == expected.order
        np.testing.assert_allclose(got.logits, expected.logits, atol=1e-4, rtol=0)


def test_from_pretrained_takes_context_length_from_metadata(fp32_dir: Path) -> None:
    reranker = Reranker.from_pretrained(str(fp32_dir), backend="onnx", device="cpu")
    assert reranker.prompts.max_prompt_tokens == 4096
    assert isinstance(reranker.scorer, OnnxLabelScorer)


# --- refusals -------------------------------------------------------------------------------


def test_refuses_folder_without_metadata(fp32_copy: Path) -> None:
    (fp32_copy / METADATA_FILE).unlink()
    with pytest.raises(ModelResolutionError, match=r"not an ONNX export.*llmrank export"):
        Reranker.from_pretrained(str(fp32_copy), backend="onnx", device="cpu")


def test_metadata_without_attention_reads_as_plain(fp32_copy: Path) -> None:
    """Folders written before the field existed have plain attention."""
    path = fp32_copy / METADATA_FILE
    data = json.loads(path.read_text())
    del data["attention"]
    path.write_text(json.dumps(data))
    assert read_metadata(fp32_copy).attention == "plain"


def test_refuses_other_format_version(fp32_copy: Path) -> None:
    rewrite_metadata(fp32_copy, format_version=2)
    with pytest.raises(ModelResolutionError, match="format version 2"):
        load_export(fp32_copy, device="cpu")


def test_refuses_other_format_and_malformed_metadata(fp32_copy: Path) -> None:
    rewrite_metadata(fp32_copy, format="something-else")
    with pytest.raises(ModelResolutionError, match="not llmrank-onnx metadata"):
        load_export(fp32_copy, device="cpu")
    rewrite_metadata(fp32_copy, format="llmrank-onnx", label_ids={"labels": ["A"]})
    with pytest.raises(ModelResolutionError, match="incomplete or malformed"):
        load_export(fp32_copy, device="cpu")
    (fp32_copy / METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelResolutionError, match="cannot read"):
        load_export(fp32_copy, device="cpu")


def test_refuses_graph_whose_hash_does_not_match(fp32_copy: Path) -> None:
    graph = fp32_copy / "model.onnx"
    model = onnx.load(str(graph))
    model.doc_string = "edited after export"
    onnx.save(model, str(graph))
    with pytest.raises(ModelResolutionError, match="do not match the hashes"):
        Reranker.from_pretrained(str(fp32_copy), backend="onnx", device="cpu")
    assert load_export(fp32_copy, device="cpu", verify_hashes=False).scorer.device == "cpu"


def test_refuses_missing_graph_file(fp32_copy: Path) -> None:
    (fp32_copy / "model.onnx").unlink()
    with pytest.raises(ModelResolutionError, match=r"lacks \['model\.onnx'\]"):
        load_export(fp32_copy, device="cpu")


def test_refuses_unrecorded_external_data(fp32_copy: Path) -> None:
    (fp32_copy / "model.onnx.data").write_bytes(b"weights from elsewhere")
    with pytest.raises(ModelResolutionError, match=r"\['model\.onnx\.data'\] in .* do not match"):
        load_export(fp32_copy, device="cpu")


def test_refuses_labels_of_another_template(fp32_dir: Path) -> None:
    with pytest.raises(ModelResolutionError, match="template 'first'"):
        Reranker.from_pretrained(
            str(fp32_dir), backend="onnx", device="cpu", template="first-numeric"
        )


def test_onnx_backend_refuses_what_is_not_an_export(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="llmrank export MODEL OUT_DIR"):
        Reranker.from_pretrained(str(tiny_model_dir), backend="onnx", device="cpu")
    with pytest.raises(ModelResolutionError, match="export folder by path"):
        Reranker.from_pretrained(None, backend="onnx", device="cpu")
    with pytest.raises(ModelResolutionError, match="is not a folder"):
        Reranker.from_pretrained(str(tmp_path / "nowhere"), backend="onnx", device="cpu")


def test_onnx_backend_refuses_a_dtype(fp32_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype does not apply"):
        Reranker.from_pretrained(str(fp32_dir), backend="onnx", device="cpu", dtype="float16")


# --- export arguments -----------------------------------------------------------------------


def test_export_rejects_bad_arguments(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        export_to(tmp_path / "a", tiny_model_dir, precision="int4")
    with pytest.raises(ValueError, match="unknown exporter"):
        export_to(tmp_path / "a", tiny_model_dir, exporter="jit")
    with pytest.raises(ValueError, match="unknown prompt template"):
        export_to(tmp_path / "a", tiny_model_dir, template="nope")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an ONNX export"):
        export_to(tmp_path / "busy", tiny_model_dir)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_existing_export_is_replaced_only_with_overwrite(
    fp32_copy: Path, tiny_model_dir: Path
) -> None:
    with pytest.raises(FileExistsError, match="overwrite"):
        export_to(fp32_copy, tiny_model_dir)
    before = read_metadata(fp32_copy).files
    export_to(fp32_copy, tiny_model_dir, template="first-numeric", optimize=False, overwrite=True)
    meta = read_metadata(fp32_copy)
    assert meta.label_ids.labels == tuple("123456789")
    assert meta.template["name"] == "first-numeric"
    assert not meta.optimized
    assert meta.files != before
    assert [p.name for p in fp32_copy.parent.iterdir()] == [fp32_copy.name]


def test_export_into_an_existing_empty_folder(
    tiny_model_dir: Path, tmp_path: Path, smollm2_tokenizer: Any
) -> None:
    (tmp_path / "empty").mkdir()
    folder = export_to(tmp_path / "empty", tiny_model_dir, optimize=False)
    assert read_metadata(folder).pad_token_id == smollm2_tokenizer.pad_token_id


def test_export_check_fails_for_a_graph_of_another_model(
    fp32_dir: Path, tiny_model: Any, fp32_scorer: OnnxLabelScorer
) -> None:
    other = LabelLogitsModel(tiny_model, fp32_scorer.label_ids)
    check_graph(other, fp32_dir / "model.onnx", pad_id=2, exact=True)
    other.head_weight.mul_(1.5)
    with pytest.raises(RuntimeError, match="differs from the model"):
        check_graph(other, fp32_dir / "model.onnx", pad_id=2, exact=True)
    check_graph(other, fp32_dir / "model.onnx", pad_id=2, exact=False)


def test_cli_export(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    args = ["--no-optimize", "--opset", "17", "--attention", "plain"]
    assert main(["export", str(tiny_model_dir), str(out), *args]) == 0
    assert "exported" in capsys.readouterr().out
    meta = read_metadata(out)
    assert (meta.opset, meta.optimized, meta.precision) == (17, False, "fp32")
    assert meta.attention == "plain"
    assert main(["export", str(tiny_model_dir), str(out)]) == 2
    assert "already holds an export" in capsys.readouterr().err


# --- fused attention ------------------------------------------------------------------------


def node_count(folder: Path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


def test_default_export_fuses_each_layers_attention(fp32_dir: Path, tiny_model: Any) -> None:
    assert read_metadata(fp32_dir).attention == "fused"
    layers = tiny_model.config.num_hidden_layers
    assert node_count(fp32_dir, "GroupQueryAttention") == layers
    assert node_count(fp32_dir, "Softmax") == 0


def test_plain_attention_export_matches_torch(
    tiny_model_dir: Path, tmp_path: Path, tiny_scorer: TorchLabelScorer
) -> None:
    folder = export_to(tmp_path / "plain", tiny_model_dir, attention="plain")
    assert read_metadata(folder).attention == "plain"
    assert node_count(folder, "GroupQueryAttention") == 0
    assert node_count(folder, "Softmax") > 0
    scorer = load_export(folder, device="cpu").scorer
    for batch in BATCHES:
        np.testing.assert_allclose(scorer.score(batch), tiny_scorer.score(batch), atol=1e-4, rtol=0)


def test_fused_attention_without_mask_is_exact_for_right_padded_prompts(
    tiny_model: Any, fp32_scorer: OnnxLabelScorer
) -> None:
    """Ignoring the padding mask changes nothing a real token sees, in torch as in ONNX."""
    module = LabelLogitsModel(tiny_model, fp32_scorer.label_ids).eval()
    implementation = tiny_model.config._attn_implementation
    for batch in BATCHES:
        ids, mask = (torch.from_numpy(a) for a in pad_right(batch, 2))
        with torch.no_grad():
            expected = module(ids, mask)
            with fused_attention_in(module.body) as calls:
                assert tiny_model.config._attn_implementation == FUSED_ATTENTION
                got = module(ids, mask)
            assert calls.count == tiny_model.config.num_hidden_layers
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert tiny_model.config._attn_implementation == implementation


def tiny_mistral_head(label_ids: LabelIds, **config: Any) -> LabelLogitsModel:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    shape: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    model = MistralForCausalLM(MistralConfig(vocab_size=50000, **{**shape, **config}))
    return LabelLogitsModel(model.eval(), label_ids)


def test_attention_that_cannot_be_fused_falls_back_or_raises(
    fp32_scorer: OnnxLabelScorer, caplog: pytest.LogCaptureFixture
) -> None:
    windowed = tiny_mistral_head(fp32_scorer.label_ids, sliding_window=3)
    caplog.set_level(logging.INFO, logger="haystack_llmrank.export.graph")
    assert choose_attention(windowed, "auto", pad_id=2, exporter="torchscript") == "plain"
    assert "uses ['sliding_window']" in caplog.text
    with pytest.raises(AttentionFusionError, match="sliding_window"):
        choose_attention(windowed, "fused", pad_id=2, exporter="torchscript")
    assert windowed.body.config._attn_implementation != FUSED_ATTENTION
    full = tiny_mistral_head(fp32_scorer.label_ids, sliding_window=None)
    assert choose_attention(full, "auto", pad_id=2, exporter="torchscript") == "fused"
    assert choose_attention(full, "plain", pad_id=2, exporter="torchscript") == "plain"
    assert choose_attention(full, "auto", pad_id=2, exporter="dynamo") == "plain"
    with pytest.raises(ValueError, match="torchscript exporter only"):
        choose_attention(full, "fused", pad_id=2, exporter="dynamo")
    with pytest.raises(ValueError, match="unknown attention"):
        choose_attention(full, "flash", pad_id=2, exporter="torchscript")  # type: ignore[arg-type]


def test_layers_that_bypass_the_attention_interface_are_not_called_fused(
    fp32_scorer: OnnxLabelScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tiny_mistral_head(fp32_scorer.label_ids, num_hidden_layers=2, sliding_window=None)
    assert choose_attention(module, "auto", pad_id=2, exporter="torchscript") == "fused"
    # Layers that never look up the attention implementation keep their own attention.
    monkeypatch.setattr("haystack_llmrank.export.attention._configs", lambda model: iter(()))
    assert choose_attention(module, "auto", pad_id=2, exporter="torchscript") == "plain"
    with pytest.raises(AttentionFusionError, match="0 of 2 attention layers"):
        choose_attention(module, "fused", pad_id=2, exporter="torchscript")


# --- precisions -----------------------------------------------------------------------------


def assert_decisive_pairs_kept(got: np.ndarray, expected: np.ndarray, margin: float = 1.0) -> None:
    """Every pair of labels whose torch logits differ by more than ``margin`` keeps its order."""
    want = expected[:, :, None] - expected[:, None, :]
    have = got[:, :, None] - got[:, None, :]
    decisive = np.abs(want) > margin
    assert decisive.mean() > 0.5  # the example is decisive for most pairs
    np.testing.assert_array_equal(np.sign(have[decisive]), np.sign(want[decisive]))
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def op_types(folder: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}


def test_int8_export_keeps_ordering_on_decisive_example(
    tiny_model_dir: Path, tmp_path: Path, tiny_scorer: TorchLabelScorer
) -> None:
    folder = export_to(tmp_path / "int8", tiny_model_dir, precision="int8")
    assert read_metadata(folder).precision == "int8"
    assert "MatMulNBits" in op_types(folder)
    model = onnx.load(str(folder / "model.onnx"))
    [head] = label_head_nodes(model)
    assert next(n for n in model.graph.node if n.name == head).op_type == "MatMul"
    got = load_export(folder, device="cpu").scorer.score(BATCHES[0])
    assert_decisive_pairs_kept(got, tiny_scorer.score(BATCHES[0]))


def test_quantizer_import_leaves_root_logger_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantizer calls logging.basicConfig(level=INFO) on import; that is undone."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.delitem(sys.modules, QUANTIZER, raising=False)
    with quiet_quantizer() as module:
        assert hasattr(module, "MatMulNBitsQuantizer")
        assert logging.getLogger(QUANTIZER).level == logging.WARNING
    assert (root.handlers, root.level) == ([], logging.WARNING)


def test_fp16_export_is_valid_with_float32_output(
    tiny_model_dir: Path, tmp_path: Path, tiny_scorer: TorchLabelScorer
) -> None:
    folder = export_to(tmp_path / "fp16", tiny_model_dir, precision="fp16")
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.INT64}
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert weights
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    got = load_export(folder, device="cpu").scorer.score(BATCHES[0])
    assert got.dtype == np.float32
    assert_decisive_pairs_kept(got, tiny_scorer.score(BATCHES[0]), margin=0.1)


def test_dynamo_exporter_matches_torch(
    tiny_model_dir: Path, tmp_path: Path, tiny_scorer: TorchLabelScorer
) -> None:
    pytest.importorskip("onnxscript")
    folder = export_to(tmp_path / "dynamo", tiny_model_dir, exporter="dynamo")
    assert read_metadata(folder).exporter["method"] == "dynamo"
    scorer = load_export(folder, device="cpu").scorer
    for batch in BATCHES:
        np.testing.assert_allclose(scorer.score(batch), tiny_scorer.score(batch), atol=1e-4, rtol=0)


# --- providers and threads ------------------------------------------------------------------


def test_parse_device() -> None:
    assert parse_device("cpu") == Placement("cpu")
    assert parse_device("cuda") == Placement("cuda", 0)
    assert parse_device("CUDA:2") == Placement("cuda", 2)
    for bad in ("gpu", "cuda:x", "cpu:1", ""):
        with pytest.raises(ValueError, match="unknown device"):
            parse_device(bad)


def test_choose_placement() -> None:
    cpu_only, with_cuda = [CPU_PROVIDER], [CUDA_PROVIDER, CPU_PROVIDER]
    assert choose_placement(None, cpu_only) == Placement("cpu")
    assert choose_placement(None, with_cuda) == Placement("cuda", 0)
    assert choose_placement("cpu", with_cuda) == Placement("cpu")
    cuda1 = choose_placement("cuda:1", with_cuda)
    assert cuda1.name == "cuda:1"
    assert cuda1.providers == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    with pytest.raises(ValueError, match="on_missing_gpu"):
        choose_placement("cpu", cpu_only, "ignore")  # type: ignore[arg-type]


def test_missing_gpu_raises_by_default_and_warns_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(RuntimeError, match=r"no CUDAExecutionProvider.*onnxruntime-gpu"):
        choose_placement("cuda", [CPU_PROVIDER])
    with caplog.at_level(logging.WARNING):
        assert choose_placement("cuda", [CPU_PROVIDER], "warn") == Placement("cpu")
    assert "running on the CPU instead" in caplog.text


def test_session_without_cuda_is_caught(caplog: pytest.LogCaptureFixture) -> None:
    cuda = Placement("cuda", 0)
    assert confirm_placement(cuda, [CUDA_PROVIDER, CPU_PROVIDER], "raise") == cuda
    with pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider"):
        confirm_placement(cuda, [CPU_PROVIDER], "raise")
    with caplog.at_level(logging.WARNING):
        assert confirm_placement(cuda, [CPU_PROVIDER], "warn") == Placement("cpu")
    assert "could not start" in caplog.text


def test_scorer_never_falls_back_to_cpu_silently(
    fp32_dir: Path, fp32_scorer: OnnxLabelScorer, caplog: pytest.LogCaptureFixture
) -> None:
    graph, labels = fp32_dir / "model.onnx", fp32_scorer.label_ids
    assert CUDA_PROVIDER not in ort.get_available_providers()
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        OnnxLabelScorer(graph, labels, device="cuda")
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        Reranker.from_pretrained(str(fp32_dir), backend="onnx", device="cuda")
    with caplog.at_level(logging.WARNING):
        scorer = OnnxLabelScorer(graph, labels, device="cuda", on_missing_gpu="warn")
    assert scorer.device == "cpu"
    assert "running on the CPU instead" in caplog.text
    np.testing.assert_array_equal(scorer.score(BATCHES[1]), fp32_scorer.score(BATCHES[1]))


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_provider_listed_but_unusable(
    fp32_dir: Path,
    fp32_scorer: OnnxLabelScorer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """onnxruntime-gpu without a usable GPU: the session starts on the CPU, which is caught."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    graph, labels = fp32_dir / "model.onnx", fp32_scorer.label_ids
    with pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider"):
        OnnxLabelScorer(graph, labels, device="cuda")
    with caplog.at_level(logging.WARNING):
        automatic = OnnxLabelScorer(graph, labels, device=None)
    assert automatic.device == "cpu"
    assert "could not start" in caplog.text


def test_thread_settings(fp32_dir: Path, fp32_scorer: OnnxLabelScorer) -> None:
    graph, labels = fp32_dir / "model.onnx", fp32_scorer.label_ids
    scorer = OnnxLabelScorer(
        graph, labels, device="cpu", intra_op_num_threads=1, inter_op_num_threads=1
    )
    np.testing.assert_allclose(scorer.score(BATCHES[0]), fp32_scorer.score(BATCHES[0]), atol=1e-5)
    with pytest.raises(ValueError, match="intra_op_num_threads must be positive"):
        OnnxLabelScorer(graph, labels, device="cpu", intra_op_num_threads=0)


def test_from_pretrained_passes_threads_and_the_gpu_policy(
    fp32_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU_PROVIDER])
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        Reranker.from_pretrained(str(fp32_dir), backend="onnx", device="cuda")
    with caplog.at_level(logging.WARNING):
        reranker = Reranker.from_pretrained(
            str(fp32_dir), backend="onnx", device="cuda", threads=1, on_missing_gpu="warn"
        )
    assert "running on the CPU instead" in caplog.text
    scorer = reranker.scorer
    assert isinstance(scorer, OnnxLabelScorer)
    assert scorer.device == "cpu"
    assert scorer._session.get_session_options().intra_op_num_threads == 1


def test_device_mismatches_name_slow_combinations(fp32_dir: Path) -> None:
    fused = read_metadata(fp32_dir)
    fp16 = dataclasses.replace(fused, precision="fp16")
    plain = dataclasses.replace(fused, attention="plain")
    assert device_mismatches(fused, "cpu") == []
    assert device_mismatches(fp16, "cuda:0") == []
    assert device_mismatches(plain, "cuda:0") == []
    [fp16_on_cpu] = device_mismatches(fp16, "cpu")
    assert "meant for CUDA" in fp16_on_cpu
    [fused_on_cuda] = device_mismatches(fused, "cuda:1")
    assert "fused attention in fp16 only" in fused_on_cuda


def identity_model() -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_label_head_must_be_found() -> None:
    with pytest.raises(RuntimeError, match="expected one label-head matrix product"):
        label_head_nodes(identity_model())


def test_scorer_rejects_a_graph_of_another_signature(tmp_path: Path) -> None:
    path = tmp_path / "other.onnx"
    onnx.save(identity_model(), path)
    with pytest.raises(ValueError, match="label-logit export"):
        OnnxLabelScorer(path, LabelIds(("A",), ((1,),)), device="cpu")
