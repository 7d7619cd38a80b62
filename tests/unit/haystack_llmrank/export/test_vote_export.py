"""ONNX export of a vote template: a positions input, parity with torch, and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.export import export_onnx, read_metadata
from haystack_llmrank.export.precision import label_head_nodes
from haystack_llmrank.labels import vote_label_ids
from haystack_llmrank.prompt import FIRST_TEMPLATE, PromptBuilder
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.base import PositionScorer
from haystack_llmrank.scorers.onnx_loading import load_export
from haystack_llmrank.scorers.onnx_scorer import OnnxLabelScorer
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

VOTED = FIRST_TEMPLATE.with_vote(" yes")
QUERY = "how long do fleas live"
PASSAGES = [
    "Adult fleas live for two to three months on a host.",
    "Roman roads connected the provinces of the empire.",
    "Flea eggs hatch within two weeks in warm, humid places.",
    "The stock market closed higher on Tuesday.",
    "Cats and dogs are the usual hosts of the cat flea.",
]


@pytest.fixture(scope="module")
def vote_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return export_onnx(str(tiny_model_dir), tmp_path_factory.mktemp("vote") / "out", template=VOTED)


def test_the_graph_takes_positions_and_the_metadata_records_the_vote(vote_dir: Path) -> None:
    graph = onnx.load(str(vote_dir / "model.onnx"), load_external_data=False)
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "positions"]
    metadata = read_metadata(vote_dir)
    assert metadata.template["vote"] == " yes"
    assert metadata.reads_positions
    assert metadata.label_ids.labels == (" yes",)


def test_votes_match_torch_at_the_line_ends_of_a_padded_batch(
    vote_dir: Path, vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    scorer = load_export(vote_dir, labels=(" yes",), device="cpu").scorer
    assert isinstance(scorer, PositionScorer)
    assert scorer.reads_positions
    builder = PromptBuilder(smollm2_tokenizer, VOTED, max_prompt_tokens=4096)
    prompts = [builder.build(QUERY, PASSAGES), builder.build(QUERY, PASSAGES[:2])]
    ids = [p.token_ids for p in prompts]
    at = [p.score_positions for p in prompts]
    got = scorer.score_at(ids, at)
    assert got.shape == (2, 5, 1)
    np.testing.assert_allclose(got, vote_scorer.score_at(ids, at), rtol=1e-3, atol=1e-3)
    last = scorer.score(ids)
    assert last.shape == (2, 1)
    np.testing.assert_allclose(last, vote_scorer.score(ids), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="outside a prompt"):
        scorer.score_at([ids[1]], [[len(ids[1])]])


def test_the_onnx_reranker_orders_by_votes_as_torch_does(
    vote_dir: Path, tiny_model_dir: Path
) -> None:
    onnx_reranker = Reranker.from_pretrained(str(vote_dir), backend="onnx", device="cpu")
    torch_reranker = Reranker.from_pretrained(str(tiny_model_dir), template=VOTED, device="cpu")
    assert onnx_reranker.prompts.template == VOTED
    passages = PASSAGES * 5
    got = onnx_reranker.rerank(QUERY, passages)
    expected = torch_reranker.rerank(QUERY, passages)
    assert got.order == expected.order
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-3, atol=1e-3)


def test_an_int8_vote_export_keeps_its_positions(
    tmp_path: Path, tiny_model_dir: Path, vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    folder = export_onnx(str(tiny_model_dir), tmp_path / "int8", template=VOTED, precision="int8")
    scorer = load_export(folder, labels=(" yes",), device="cpu").scorer
    prompt = PromptBuilder(smollm2_tokenizer, VOTED, max_prompt_tokens=4096).build(QUERY, PASSAGES)
    got = scorer.score_at([prompt.token_ids], [prompt.score_positions])
    expected = vote_scorer.score_at([prompt.token_ids], [prompt.score_positions])
    assert got.shape == expected.shape
    assert np.isfinite(got).all()
    # read at the line ends: close to torch's votes, and apart where torch's are apart
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert np.ptp(expected) > 0.2


@pytest.mark.slow
def test_an_fp16_vote_export_keeps_its_head_in_float32_and_the_order_of_clear_votes(
    tmp_path: Path, tiny_model_dir: Path, vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    folder = export_onnx(str(tiny_model_dir), tmp_path / "fp16", template=VOTED, precision="fp16")
    graph = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "positions"]
    [head] = label_head_nodes(graph)
    head_weights = {n.input[1] for n in graph.graph.node if n.name == head}
    assert {t.data_type for t in graph.graph.initializer if t.name in head_weights} == {
        onnx.TensorProto.FLOAT
    }
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    scorer = load_export(folder, labels=(" yes",), device="cpu").scorer
    builder = PromptBuilder(smollm2_tokenizer, VOTED, max_prompt_tokens=4096)
    prompts = [builder.build(QUERY, PASSAGES * 3), builder.build(QUERY, PASSAGES[:2])]
    ids = [p.token_ids for p in prompts]
    at = [p.score_positions for p in prompts]
    got, expected = scorer.score_at(ids, at), vote_scorer.score_at(ids, at)
    assert got.shape == expected.shape == (2, 15, 1)
    assert got.dtype == np.float32
    real = [(row, column) for row, p in enumerate(at) for column in range(len(p))]
    have = np.array([got[r, c, 0] for r, c in real])
    want = np.array([expected[r, c, 0] for r, c in real])
    assert np.abs(have - want).max() < 0.05
    decisive = np.abs(want[:, None] - want[None, :]) > 0.1
    assert decisive.any()
    np.testing.assert_array_equal(
        np.sign((have[:, None] - have[None, :])[decisive]),
        np.sign((want[:, None] - want[None, :])[decisive]),
    )


def test_loading_with_the_labels_names_the_vote_the_export_reads(vote_dir: Path) -> None:
    refused = (
        f"{vote_dir} is an ONNX export for template 'first' read by the vote ' yes', and its "
        "graph scores that readout only, not the requested 'first' read by its labels; load "
        "it with template=None to rank with the template it records, or export the model "
        "again with the template you want"
    )
    with pytest.raises(ModelResolutionError) as raised:
        Reranker.from_pretrained(str(vote_dir), backend="onnx", device="cpu", template="first")
    assert str(raised.value) == refused
    for advised in ({"template": None}, {"template": "first", "vote": " yes"}):
        loaded = Reranker.from_pretrained(str(vote_dir), backend="onnx", device="cpu", **advised)
        assert loaded.prompts.template.vote == " yes"


def test_a_tokenizer_that_encodes_the_vote_otherwise_is_refused(
    vote_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    copy = Path(shutil.copytree(vote_dir, tmp_path / "copy"))
    tokenizer = AutoTokenizer.from_pretrained(copy)
    tokenizer.add_tokens([" yes"])  # " yes" is now one new token
    tokenizer.save_pretrained(copy)
    with pytest.raises(ModelResolutionError) as raised:
        load_export(copy, device="cpu", verify_hashes=False)
    assert str(raised.value) == (
        f"the tokenizer in {copy} does not encode the labels the graph scores (it gives "
        "' yes' the ids [49152], the graph scores [9805]); export again"
    )


def test_the_export_command_sets_a_vote_on_the_recorded_template(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from haystack_llmrank.cli import main

    out = tmp_path / "cli"
    assert main(["export", str(tiny_model_dir), str(out), "--vote", " yes"]) == 0
    assert read_metadata(out).template == VOTED.to_dict()
    assert main(["export", str(tiny_model_dir), str(tmp_path / "bad"), "--vote", " "]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_last_token_export_cannot_read_votes(
    tmp_path: Path, tiny_model_dir: Path, smollm2_tokenizer: Any
) -> None:
    folder = export_onnx(str(tiny_model_dir), tmp_path / "first", attention="plain")
    first = load_export(folder, device="cpu").scorer
    assert not first.reads_positions
    with pytest.raises(ModelResolutionError) as refused:
        load_export(folder, labels=(" yes",), device="cpu")
    assert str(refused.value).startswith(
        "this export scores the labels ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', "
        "'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z'] of "
        "template 'first', without a vote, not the requested [' yes']; load it with "
        "labels=None (what it records), or export again"
    )
    with pytest.raises(ValueError, match="last token only"):
        first.score_at([[1, 2, 3]], [[1]])
    votes = vote_label_ids(smollm2_tokenizer, " yes")
    with pytest.raises(ValueError, match="returns 26 label logits, not one for each of the 1"):
        OnnxLabelScorer(folder / "model.onnx", votes, device="cpu")


def test_metadata_that_disagrees_with_the_graph_is_refused(vote_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    copy = Path(shutil.copytree(vote_dir, tmp_path / "copy"))
    path = copy / "llmrank.json"
    data = json.loads(path.read_text())
    data["template"].pop("vote")
    path.write_text(json.dumps(data))
    with pytest.raises(ModelResolutionError, match="positions input"):
        load_export(copy, device="cpu")
