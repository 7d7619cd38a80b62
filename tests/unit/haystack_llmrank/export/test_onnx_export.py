"""ONNX export of the tiny Llama: parity with torch, metadata refusals, precisions, providers."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from support import PROJECT_ROOT, make_tiny_llama, tiny_scaled_model

from haystack_llmrank.cli import main
from haystack_llmrank.errors import ClosedError, ModelResolutionError, NonFiniteLogitsError
from haystack_llmrank.export import export_onnx, read_metadata
from haystack_llmrank.export.attention import (
    FUSED_ATTENTION,
    AttentionFusionError,
    fused_attention_in,
)
from haystack_llmrank.export.graph import choose_attention, export_graph
from haystack_llmrank.export.onnx_folder import check_opset
from haystack_llmrank.export.precision import QUANTIZER_MODULE as QUANTIZER
from haystack_llmrank.export.precision import (
    convert_precision,
    label_head_nodes,
    quiet_quantizer,
    save_graph,
)
from haystack_llmrank.export.verify import check_graph
from haystack_llmrank.labels import ALPHABETIC_LABELS, LabelIds, resolve_label_ids
from haystack_llmrank.models import resolve_model, weights_fingerprint
from haystack_llmrank.prompt import FIRST_TEMPLATE
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.base import DEFAULT_MAX_BATCH_TOKENS, LabelScorer
from haystack_llmrank.scorers.label_head import LabelLogitsModel
from haystack_llmrank.scorers.onnx_loading import load_export
from haystack_llmrank.scorers.onnx_metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    Exporter,
    file_sha256,
)
from haystack_llmrank.scorers.onnx_scorer import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxLabelScorer,
    Placement,
    choose_placement,
    confirm_placement,
    cuda_obstacles,
    device_placement,
    node_placement,
    onnxruntime_wheels,
    report_node_placement,
    wheel_collision,
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
    assert meta.format_version == FORMAT_VERSION
    assert meta.label_ids == resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    assert meta.template == FIRST_TEMPLATE.to_dict()
    assert (meta.precision, meta.context_length, meta.opset) == ("fp32", 4096, 18)
    assert meta.source_model == str(tiny_model_dir)
    assert meta.pad_token_id == smollm2_tokenizer.pad_token_id
    recorded = ("model.onnx", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    assert meta.files == {name: file_sha256(fp32_dir / name) for name in recorded}
    assert {"method", "torch", "transformers", "onnx", "onnxruntime"} <= set(meta.exporter)
    assert meta.attention == "fused"
    assert meta.source_weights == weights_fingerprint(resolve_model(str(tiny_model_dir)))
    assert set(meta.source_weights) == {"base/config.json", "base/model.safetensors"}
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


def test_a_cpu_session_scores_one_prompt_a_call_unless_its_graph_is_int8(fp32_dir: Path) -> None:
    """A padded batch cost an fp32 graph time on a CPU, and saved an int8 one some."""
    loaded = load_export(fp32_dir, device="cpu")
    assert loaded.scorer.preferred_max_batch_tokens == 1
    assert Reranker.from_pretrained(fp32_dir, backend="onnx", device="cpu").max_batch_tokens == 1
    int8 = dataclasses.replace(read_metadata(fp32_dir), precision="int8")
    scorer = OnnxLabelScorer(
        fp32_dir / "model.onnx", loaded.scorer.label_ids, device="cpu", metadata=int8
    )
    assert scorer.preferred_max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS


def test_close_lets_go_of_the_session(fp32_dir: Path) -> None:
    scorer = load_export(fp32_dir, device="cpu").scorer
    assert scorer.score(BATCHES[0]).shape[0] == len(BATCHES[0])
    scorer.close()
    with pytest.raises(ClosedError, match="scorer was closed"):
        scorer.score(BATCHES[0])
    with pytest.raises(ClosedError):
        _ = scorer.providers
    scorer.close()


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


def test_refuses_a_newer_format_version(fp32_copy: Path) -> None:
    rewrite_metadata(fp32_copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelResolutionError, match="exported by a newer llmrank"):
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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"template": "first"}, "template='first'"),
        ({"files": []}, "files=[]"),
        ({"files": None}, "files=None"),
        ({"context_length": "4096"}, "context_length='4096'"),
        ({"pad_token_id": None}, "pad_token_id=None"),
        ({"pad_token_id": 10**6}, "pad_token_id 1000000 is not among the tokenizer's"),
    ],
)
def test_metadata_of_the_wrong_type_is_refused_at_load(
    fp32_copy: Path, changes: dict[str, Any], message: str
) -> None:
    rewrite_metadata(fp32_copy, **changes)
    with pytest.raises(ModelResolutionError, match=re.escape(message)):
        load_export(fp32_copy, device="cpu", verify_hashes=False)


def test_a_label_count_the_graph_does_not_return_is_refused_at_load(fp32_copy: Path) -> None:
    data = json.loads((fp32_copy / METADATA_FILE).read_text())
    labels = data["label_ids"]
    labels["labels"], labels["ids"] = labels["labels"][:-1], labels["ids"][:-1]
    data["template"]["labels"] = data["template"]["labels"][:-1]
    (fp32_copy / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match="returns 26 label logits, not one for each of the 25 labels given"
    ):
        load_export(fp32_copy, device="cpu")


def test_refuses_a_tokenizer_changed_after_export(fp32_copy: Path) -> None:
    recorded = read_metadata(fp32_copy).files
    assert {"tokenizer.json", "tokenizer_config.json"} <= recorded.keys()
    tokenizer = fp32_copy / "tokenizer.json"
    data = json.loads(tokenizer.read_text())
    vocab = data["model"]["vocab"]
    vocab["Ġflea"], vocab["Ġocean"] = vocab["Ġocean"], vocab["Ġflea"]  # loads, ranks wrong
    tokenizer.write_text(json.dumps(data))
    with pytest.raises(ModelResolutionError, match=r"\['tokenizer.json'\] in .* do not match"):
        load_export(fp32_copy, device="cpu")
    # an export that recorded the graph's hashes only (before tokenizers were) still loads
    rewrite_metadata(fp32_copy, files={n: h for n, h in recorded.items() if "tokenizer" not in n})
    assert load_export(fp32_copy, device="cpu").scorer.device == "cpu"


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


def test_refuses_a_tokenizer_that_gives_the_labels_other_ids(fp32_copy: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fp32_copy)
    tokenizer.add_tokens([" A"])  # one more id that decodes to the label A
    tokenizer.save_pretrained(fp32_copy)
    refused = (
        rf"the tokenizer in {re.escape(str(fp32_copy))} does not encode the labels the graph "
        r"scores \(it gives 'A' the ids \[49, 330, 49152\], the graph scores \[49, 330\]\); "
        "export again"
    )
    with pytest.raises(ModelResolutionError, match=r"tokenizer\.json'.* do not match the hashes"):
        load_export(fp32_copy, device="cpu")
    # where hashes are not checked (or an export recorded none for its tokenizer)
    with pytest.raises(ModelResolutionError, match=refused):
        load_export(fp32_copy, device="cpu", verify_hashes=False)


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


@pytest.mark.parametrize(
    ("exporter", "low", "high"),
    # below 14 TorchScript cannot write plain attention, above 20 torch does not support it;
    # dynamo writes 18 for a lower opset, and its opset-23 graph fails in ONNX Runtime
    [("torchscript", 14, 20), ("dynamo", 18, 22)],
)
def test_opsets_the_exporter_cannot_write_are_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exporter: Exporter, low: int, high: int
) -> None:
    check_opset(low, exporter)
    check_opset(high, exporter)
    for opset in (low - 1, high + 1):
        args = ["export", "no/such", str(tmp_path / "out"), "--exporter", exporter]
        assert main([*args, "--opset", str(opset)]) == 2
        assert f"opset {opset} is not supported by the {exporter} exporter: choose {low} to " in (
            capsys.readouterr().err
        )
    assert not (tmp_path / "out").exists()


def test_fused_attention_with_dynamo_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["export", "no/such", str(tmp_path / "out"), "--exporter", "dynamo"]
    assert main([*args, "--attention", "fused"]) == 2
    assert "fused attention is written by the torchscript exporter only" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_export_names_a_folder_that_holds_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("hi")
    assert main(["export", str(tmp_path / "notes"), str(tmp_path / "out")]) == 2
    assert "notes holds no model: no config.json, .gguf file or" in capsys.readouterr().err


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_the_graph_divides_granites_logits_as_its_forward_does(tmp_path: Path) -> None:
    model = tiny_scaled_model("Granite")
    labels = LabelIds(("A", "B", "C"), ((10, 20), (11,), (12, 30)))
    path = tmp_path / "model.onnx"
    export_graph(LabelLogitsModel(model, labels), path, pad_id=0, opset=18, exporter="torchscript")
    ids, mask = pad_right([[5, 6, 7, 8, 9], [3, 4]], 0)
    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        logits = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    last = logits[[0, 1], [4, 1]]
    expected = [[float(row[list(group)].max()) for group in labels.ids] for row in last]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_fp16_export_is_valid_with_float32_output(
    tiny_model_dir: Path,
    tmp_path: Path,
    tiny_scorer: TorchLabelScorer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = export_to(tmp_path / "fp16", tiny_model_dir, precision="fp16")
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.INT64}
    [head] = label_head_nodes(model)
    head_weights = {n.input[1] for n in model.graph.node if n.name == head}
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert len(weights) > 1
    for weight in weights:
        kept = weight.name in head_weights
        assert weight.data_type == (onnx.TensorProto.FLOAT if kept else onnx.TensorProto.FLOAT16)
    with caplog.at_level(logging.WARNING):
        got = load_export(folder, device="cpu").scorer.score(BATCHES[0])
    assert "fp16 is meant for CUDA" in caplog.text
    assert got.dtype == np.float32
    assert_decisive_pairs_kept(got, tiny_scorer.score(BATCHES[0]), margin=0.1)


def position_sensitive_llama(vocab_size: int) -> Any:
    """The tiny Llama with sharp attention, so its logits follow the rotary angles closely."""
    model = make_tiny_llama(vocab_size, seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


@pytest.fixture(scope="module")
def sharp_model(smollm2_tokenizer: Any) -> Any:
    return position_sensitive_llama(len(smollm2_tokenizer))


@pytest.fixture(scope="module")
def sharp_fp16_dir(
    tmp_path_factory: pytest.TempPathFactory, sharp_model: Any, smollm2_tokenizer: Any
) -> Path:
    source = tmp_path_factory.mktemp("sharp-llama")
    sharp_model.save_pretrained(source)
    smollm2_tokenizer.save_pretrained(source)
    return export_to(tmp_path_factory.mktemp("onnx") / "sharp-fp16", source, precision="fp16")


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor that ONNX shape inference can type."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]}
    types.update({v.name: v.type.tensor_type.elem_type for v in graph.output})
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def test_fp16_export_keeps_rotary_angles_and_label_head_in_float32(sharp_fp16_dir: Path) -> None:
    model = onnx.load(str(sharp_fp16_dir / "model.onnx"))
    types = tensor_types(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    # From each Sin/Cos back to the integer positions, every tensor is float32.
    trig = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    assert len(trig) == 2
    pending, angles = [t for n in trig for t in (*n.input, *n.output)], set()
    while pending:
        name = pending.pop()
        if name in angles or types.get(name) == int64:
            continue
        angles.add(name)
        node = producers.get(name)
        pending.extend(node.input if node is not None else ())
    assert len(angles) >= 4
    assert {name: types.get(name) for name in angles} == dict.fromkeys(angles, float32)
    # The label-head product, its weight and everything after it up to label_logits too.
    [head] = label_head_nodes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pending = [n for n in model.graph.node if n.name == head]
    tail: set[str] = set(pending[0].input)
    while pending:
        node = pending.pop()
        for name in node.output:
            if types.get(name) != int64 and name not in tail:
                tail.add(name)
                pending.extend(consumers.get(name, []))
    assert "label_logits" in tail
    assert {name: types.get(name) for name in tail} == dict.fromkeys(tail, float32)


@pytest.mark.slow
def test_fp16_export_matches_float32_on_prompts_over_2000_tokens(
    sharp_fp16_dir: Path, sharp_model: Any, smollm2_tokenizer: Any
) -> None:
    """Rotary angles rounded to fp16 are off by up to 1 rad past 2,048 tokens (0.2 in logits)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 40000, size=n).tolist() for n in (2000, 2300, 2600)]
    reference = TorchLabelScorer(
        sharp_model, resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS), pad_token_id=2
    ).score(prompts)
    got = load_export(sharp_fp16_dir, device="cpu").scorer.score(prompts)
    assert np.abs(got - reference).max() < 0.05
    assert_decisive_pairs_kept(got, reference, margin=0.1)


@pytest.mark.slow
def test_dynamo_exporter_matches_torch(
    tiny_model_dir: Path, tmp_path: Path, tiny_scorer: TorchLabelScorer
) -> None:
    pytest.importorskip("onnxscript")
    folder = export_to(tmp_path / "dynamo", tiny_model_dir, exporter="dynamo")
    assert read_metadata(folder).exporter["method"] == "dynamo"
    scorer = load_export(folder, device="cpu").scorer
    for batch in BATCHES:
        np.testing.assert_allclose(scorer.score(batch), tiny_scorer.score(batch), atol=1e-4, rtol=0)


def graph_over_2_gib(folder: Path, table_mib: int = 1030, width: int = 64) -> Path:
    """A graph shaped like a label-logit export whose weights exceed protobuf's 2 GiB.

    Its two int8 tables lie in a sparse external data file, so they cost neither disk nor
    memory until read, and fp16 conversion leaves int8 alone: only loading and saving touch
    them. Only the small label head is float.
    """
    rows = (table_mib << 20) // width
    folder.mkdir(parents=True)
    with (folder / "model.onnx.data").open("wb") as handle:
        handle.truncate(2 * rows * width)
    tables = []
    for i in range(2):
        table = onnx.TensorProto(name=f"table{i}", data_type=onnx.TensorProto.INT8)
        table.dims.extend([rows, width])
        table.data_location = onnx.TensorProto.EXTERNAL
        entries = {
            "location": "model.onnx.data",
            "offset": i * rows * width,
            "length": rows * width,
        }
        for key, value in entries.items():
            table.external_data.add(key=key, value=str(value))
        tables.append(table)
    make = onnx.helper.make_node
    nodes = [
        *(
            make("Gather", [f"table{i}", "input_ids"], [f"rows{i}"], name=f"gather{i}")
            for i in (0, 1)
        ),
        *(make("Cast", [f"rows{i}"], [f"float{i}"], to=1, name=f"cast{i}") for i in (0, 1)),
        make("Add", ["float0", "float1"], ["sum"], name="add"),
        make("ReduceMean", ["sum", "axes"], ["hidden"], keepdims=0, name="mean"),
        make("MatMul", ["hidden", "head"], ["label_logits"], name="head"),
    ]
    ids = [
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask")
    ]
    logits = onnx.helper.make_tensor_value_info(
        "label_logits", onnx.TensorProto.FLOAT, ["batch", 4]
    )
    small = [
        onnx.numpy_helper.from_array(np.ones((width, 4), np.float32), "head"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    graph = onnx.helper.make_graph(nodes, "big", ids, [logits], initializer=[*tables, *small])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save_model(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


#: What saving the converted graph writes for real, with room to spare: its tables are not sparse.
SAVE_BYTES_NEEDED = 3 << 30


@pytest.mark.slow
def test_fp16_conversion_of_a_graph_over_2_gib(tmp_path: Path) -> None:
    """Shape inference on an in-memory proto over 2 GiB fails: 'Failed to serialize proto'."""
    source = graph_over_2_gib(tmp_path / "big")
    converted = convert_precision(source, "fp16")
    casts = {n.name: n.attribute[0].i for n in converted.graph.node if n.name in ("cast0", "cast1")}
    assert casts == {"cast0": onnx.TensorProto.FLOAT16, "cast1": onnx.TensorProto.FLOAT16}
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types == {
        "table0": onnx.TensorProto.INT8,
        "table1": onnx.TensorProto.INT8,
        "head": onnx.TensorProto.FLOAT,
        "axes": onnx.TensorProto.INT64,
    }
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    free = shutil.disk_usage(tmp_path).free
    if free < SAVE_BYTES_NEEDED:
        pytest.skip(f"saving a graph over 2 GiB needs 3 GiB of free disk; {free >> 20} MiB free")
    target = tmp_path / "fp16"
    target.mkdir()
    try:
        save_graph(converted, target)
        del converted
        onnx.checker.check_model(str(target / "model.onnx"))
        saved = onnx.load(str(target / "model.onnx"), load_external_data=False)
        assert {t.name: t.data_type for t in saved.graph.initializer} == types
        assert (target / "model.onnx.data").stat().st_size > 2 << 30
    finally:
        shutil.rmtree(target)  # 2 GiB of real blocks must not outlive the test, passed or failed


# --- providers and threads ------------------------------------------------------------------


def test_device_placement() -> None:
    assert device_placement("cpu") == device_placement("CPU:0") == Placement("cpu")
    assert device_placement("cuda") == Placement("cuda", 0)
    assert device_placement("CUDA:2") == Placement("cuda", 2)
    for bad in ("gpu", "cuda:x", "cpu:1", "", "mps"):
        with pytest.raises(ValueError, match="unknown device"):
            device_placement(bad)


def test_choose_placement() -> None:
    cpu_only, with_cuda = [CPU_PROVIDER], [CUDA_PROVIDER, CPU_PROVIDER]
    assert choose_placement(None, cpu_only) == Placement("cpu")
    assert choose_placement(None, with_cuda) == Placement("cuda", 0)
    assert choose_placement("cpu", with_cuda) == Placement("cpu")
    cuda1 = choose_placement("cuda:1", with_cuda)
    assert cuda1.name == "cuda:1"
    assert cuda1.providers == [(CUDA_PROVIDER, {"device_id": 1, "use_tf32": 0}), CPU_PROVIDER]
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
        graph, labels, device="cpu", intra_op_num_threads=1, inter_op_num_threads=2
    )
    np.testing.assert_allclose(scorer.score(BATCHES[0]), fp32_scorer.score(BATCHES[0]), atol=1e-5)
    options = scorer._session.get_session_options()  # an inter-op pool runs in parallel mode
    assert (options.execution_mode, options.inter_op_num_threads) == (
        ort.ExecutionMode.ORT_PARALLEL,
        2,
    )
    default = fp32_scorer._session.get_session_options()
    assert default.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    with pytest.raises(ValueError, match="intra_op_num_threads must be a positive integer or None"):
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


def test_cuda_obstacles_name_what_would_run_on_the_cpu() -> None:
    assert cuda_obstacles("fp16", "fused") == []
    assert cuda_obstacles("fp32", "plain") == []
    assert cuda_obstacles("fp16", "plain") == []
    [attention] = cuda_obstacles("fp32", "fused")
    assert "GroupQueryAttention in fp16 and bf16 only" in attention
    assert cuda_obstacles("int8", "plain") == []  # 8-bit MatMulNBits runs on CUDA from 1.22
    [attention] = cuda_obstacles("int8", "fused")
    assert "the int8 export's fused attention" in attention


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
@pytest.mark.parametrize(
    ("precision", "attention", "reason"),
    [("fp32", "fused", "GroupQueryAttention"), ("int8", "fused", "GroupQueryAttention")],
)
def test_exports_that_cuda_cannot_run_whole_are_refused_or_rerouted(
    fp32_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    precision: str,
    attention: str,
    reason: str,
) -> None:
    """The checks read llmrank.json, so relabelling the fp32 export stands in for the others."""
    rewrite_metadata(fp32_copy, precision=precision, attention=attention)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    with pytest.raises(RuntimeError, match=rf"{reason}.*--precision fp16.*device='cpu'"):
        load_export(fp32_copy, device="cuda")
    with caplog.at_level(logging.WARNING):
        scorer = load_export(fp32_copy, device=None).scorer
    assert scorer.device == "cpu"
    assert scorer.providers == [CPU_PROVIDER]
    assert reason in caplog.text
    assert "running on the CPU instead" in caplog.text


def test_a_scorer_built_directly_warns_that_nothing_is_checked(
    fp32_dir: Path, fp32_scorer: OnnxLabelScorer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        load_export(fp32_dir, device="cpu")
    assert "built directly" not in caplog.text
    with caplog.at_level(logging.WARNING):
        OnnxLabelScorer(fp32_dir / "model.onnx", fp32_scorer.label_ids, device="cpu")
    assert "built directly" in caplog.text
    assert "load_export()" in caplog.text


def test_node_placement_is_read_from_the_session_and_reported(
    fp32_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    session = ort.InferenceSession(str(fp32_dir / "model.onnx"), options, providers=[CPU_PROVIDER])
    placement = node_placement(session)
    assert list(placement) == [CPU_PROVIDER]
    assert placement[CPU_PROVIDER]["GroupQueryAttention"] == 2
    with caplog.at_level(logging.INFO, logger="haystack_llmrank.scorers.onnx_scorer"):
        report_node_placement(placement, "cuda:0")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "GroupQueryAttention" in record.message
    assert "--precision fp16" in record.message
    caplog.clear()
    shapes_only = {CUDA_PROVIDER: Counter(MatMul=4), CPU_PROVIDER: Counter(Shape=3, Gather=1)}
    with caplog.at_level(logging.INFO, logger="haystack_llmrank.scorers.onnx_scorer"):
        report_node_placement(shapes_only, "cuda:0")
        report_node_placement({CUDA_PROVIDER: Counter(MatMul=4)}, "cuda:0")
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "4 of 8 nodes" in record.message
    assert "Gather x1, Shape x3" in record.message


def test_unrecorded_node_placement_is_empty_and_warned_about_on_cuda(
    fp32_scorer: OnnxLabelScorer, caplog: pytest.LogCaptureFixture
) -> None:
    assert node_placement(fp32_scorer._session) == {}
    with caplog.at_level(logging.INFO, logger="haystack_llmrank.scorers.onnx_scorer"):
        report_node_placement({}, "cuda:0")  # an onnxruntime before 1.24 reports none
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "does not report where the cuda:0 session's nodes run" in record.message


def test_both_onnxruntime_wheels_are_detected(
    fp32_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``pip install 'llmrank[gpu,onnx]'``: the last wheel installed hides CUDA."""
    both = ["onnxruntime", "onnxruntime-gpu"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU_PROVIDER])
    monkeypatch.setattr("haystack_llmrank.scorers.onnx_scorer.onnxruntime_wheels", lambda: both)
    fix = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    with caplog.at_level(logging.WARNING):
        scorer = load_export(fp32_dir, device=None).scorer
    assert scorer.device == "cpu"
    assert fix in caplog.text
    with pytest.raises(RuntimeError, match=re.escape(fix)):
        load_export(fp32_dir, device="cuda")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_export(fp32_dir, device="cpu").scorer.device == "cpu"
    assert fix not in caplog.text


def test_onnxruntime_wheels_lists_the_installed_runtime() -> None:
    wheels = onnxruntime_wheels()
    assert {"onnxruntime", "onnxruntime-gpu"} & set(wheels)
    assert all(name.startswith("onnxruntime") for name in wheels)
    assert wheel_collision(["onnxruntime"]) is None
    assert wheel_collision(["onnxruntime-gpu"]) is None
    assert wheel_collision(["onnxruntime", "onnxruntime-directml"]) is None


def test_runtime_extras_do_not_collide() -> None:
    """Each runtime extra brings one ONNX Runtime wheel; ``export`` brings none."""
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def runtimes(*names: str) -> set[str]:
        requirements = [r for name in names for r in extras[name]]
        return {re.split(r"[<>=\[;]", r)[0].strip() for r in requirements} & {
            "onnxruntime",
            "onnxruntime-gpu",
        }

    assert runtimes("onnx") == {"onnxruntime"}
    assert runtimes("gpu") == {"onnxruntime-gpu"}
    assert runtimes("export") == set()
    assert runtimes("gpu", "export") == {"onnxruntime-gpu"}
    assert runtimes("onnx", "export") == {"onnxruntime"}


def test_default_attributes_of_onnxruntime_operators_are_not_saved(fp32_dir: Path) -> None:
    """An older runtime rejects attributes its schema lacks; the re-save writes all defaults."""
    model = onnx.load(str(fp32_dir / "model.onnx"))
    fused = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert fused
    for node in fused:
        assert {a.name for a in node.attribute} == {"num_heads", "kv_num_heads", "scale"}


def with_unknown_attribute(folder: Path, exporting_runtime: str) -> None:
    """Give every fused node an attribute this runtime does not know, as a newer one might."""
    graph = folder / "model.onnx"
    model = onnx.load(str(graph))
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            node.attribute.append(onnx.helper.make_attribute("from_the_future", 1))
    onnx.save(model, str(graph))
    meta = read_metadata(folder, verify_hashes=False)
    exporter = {**meta.exporter, "onnxruntime": exporting_runtime}
    rewrite_metadata(folder, exporter=exporter, files={"model.onnx": file_sha256(graph)})


def test_a_graph_from_a_newer_onnxruntime_names_both_versions(fp32_copy: Path) -> None:
    with_unknown_attribute(fp32_copy, "99.1.0")
    message = rf"exported with onnxruntime 99\.1\.0.*this onnxruntime {re.escape(ort.__version__)}"
    with pytest.raises(ModelResolutionError, match=message):
        load_export(fp32_copy, device="cpu")


def test_a_graph_the_same_onnxruntime_rejects_is_refused_with_its_error(
    fp32_copy: Path,
) -> None:
    with_unknown_attribute(fp32_copy, ort.__version__)
    graph = re.escape(str(fp32_copy / "model.onnx"))
    with pytest.raises(ModelResolutionError, match=f"cannot load {graph} .*from_the_future"):
        load_export(fp32_copy, device="cpu")


def test_a_damaged_graph_with_its_hash_recorded_is_refused_naming_it(fp32_copy: Path) -> None:
    """ONNX Runtime's own error (``InvalidProtobuf``), which the CLI does not catch, escaped
    as a traceback."""
    graph = fp32_copy / "model.onnx"
    graph.write_bytes(b"not a protobuf" + graph.read_bytes()[100:])
    rewrite_metadata(fp32_copy, files={"model.onnx": file_sha256(graph)})
    with pytest.raises(ModelResolutionError, match=f"cannot load {re.escape(str(graph))}"):
        load_export(fp32_copy, device="cpu")


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


def test_infinite_label_logits_are_an_error(tmp_path: Path) -> None:
    """A graph with the label-logit signature that divides the ids by zero."""
    ids, mask = (
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask")
    )
    logits = onnx.helper.make_tensor_value_info("label_logits", onnx.TensorProto.FLOAT, None)
    zero = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    nodes = [
        onnx.helper.make_node("Cast", ["input_ids"], ["ids"], to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Div", ["ids", "zero"], ["label_logits"]),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [ids, mask], [logits], initializer=[zero])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "inf.onnx")
    labels = LabelIds(("A", "B"), ((1,), (2,)))
    scorer = OnnxLabelScorer(tmp_path / "inf.onnx", labels, device="cpu")
    with pytest.raises(NonFiniteLogitsError, match=r"2 of 2 label logits are \+inf"):
        scorer.score([[3, 4]])
