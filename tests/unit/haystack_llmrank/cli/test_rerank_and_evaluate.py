"""``llmrank rerank`` and ``llmrank eval`` end to end, with a tiny random model."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from support import make_tiny_llama

import haystack_llmrank.cli as cli
from haystack_llmrank import backends, models
from haystack_llmrank.cli.options import add_model_options, load_reranker
from haystack_llmrank.data import DataFormatError, read_qrels, read_queries, read_run
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.model_templates import write_template
from haystack_llmrank.prompt import FIRST_NUMERIC_TEMPLATE
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import SlidingWindow, make_strategy


@pytest.fixture
def llmrank() -> Any:
    """Run ``llmrank``."""
    return cli.main


@pytest.fixture
def candidates(tmp_path: Path) -> Path:
    """Two queries with seven and four candidates."""
    records = [
        {
            "qid": qid,
            "query": query,
            "candidates": [
                {"docid": f"{qid}-{i}", "rank": i + 1, "score": 20.0 - i, "text": f"{query} {i}"}
                for i in range(n)
            ],
        }
        for qid, query, n in [("q1", "what do fleas eat", 7), ("q2", "capital of peru", 4)]
    ]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def qrels(tmp_path: Path) -> Path:
    """Judgements that make the first-stage order ideal for q1 and worst for q2."""
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 q1-0 3\nq1 0 q1-1 2\nq1 0 q1-5 0\nq2 0 q2-3 2\nq2 0 q2-0 0\n")
    return path


def rerank_args(
    candidates: Path, output: Path, model: Path, *extra: str, step: bool = True
) -> list[str]:
    """``llmrank rerank`` with windows of 3, sliding by 2 unless ``step`` is false."""
    return [
        "rerank",
        str(candidates),
        "--output",
        str(output),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--window-size",
        "3",
        *(("--step", "2") if step else ()),
        *extra,
    ]


def test_rerank_writes_the_engine_ranking(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output, rankings = tmp_path / "run.txt", tmp_path / "rankings.json"
    args = rerank_args(candidates, output, tiny_model_dir, "--save-json", str(rankings))
    assert llmrank([*args, "--tag", "tiny"]) == 0

    engine = Reranker.from_pretrained(
        str(tiny_model_dir), device="cpu", strategy=SlidingWindow(3, 2)
    )
    lines = [line.split() for line in output.read_text().splitlines()]
    assert {line[5] for line in lines} == {"tiny"}
    for query in read_queries(candidates):
        rows = [line for line in lines if line[0] == query.qid]
        expected = engine.rerank(query.query, query.texts)
        assert [row[2] for row in rows] == [query.candidates[i].docid for i in expected.order]
        assert [row[3] for row in rows] == [str(r) for r in range(1, len(rows) + 1)]
        scores = [float(row[4]) for row in rows]
        assert all(a > b for a, b in pairwise(scores))

    saved = json.loads(rankings.read_text())
    assert [entry["qid"] for entry in saved] == ["q1", "q2"]
    assert [e["docid"] for e in saved[1]["ranking"]] == [line[2] for line in lines[7:]]
    assert {"docid", "rank", "score", "logit", "placed_by"} == set(saved[0]["ranking"][0])
    assert {e["placed_by"] for entry in saved for e in entry["ranking"]} == {"model"}
    summary = capsys.readouterr().out
    assert "reranked 2 queries (11 passages, " in summary
    assert " s/query " in summary


def test_fusion_reads_the_candidates_scores_where_every_one_has_a_score(
    llmrank: Any, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = [3.0, 9.0, 1.0, 7.0, 5.0]
    records = [
        {
            "qid": "q1",
            "query": "what do fleas eat",
            "candidates": [
                {"docid": f"a{i}", "score": score, "text": f"fleas eat {i}"}
                for i, score in enumerate(scores)
            ],
        },
        {
            "qid": "q2",
            "query": "capital of peru",
            "candidates": [{"docid": f"b{i}", "text": f"peru {i}"} for i in range(4)],
        },
    ]
    source, output = tmp_path / "mixed.jsonl", tmp_path / "run.txt"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert llmrank(rerank_args(source, output, tiny_model_dir, "--fusion-k", "60")) == 0
    engine = Reranker.from_pretrained(
        str(tiny_model_dir), device="cpu", strategy=SlidingWindow(3, 2), fusion_k=60
    )
    q1, q2 = read_queries(source)
    expected = [
        engine.rerank(q1.query, q1.texts, first_stage_scores=scores),
        engine.rerank(q2.query, q2.texts),
    ]
    assert expected[0] != engine.rerank(q1.query, q1.texts), "not the candidates' order"
    lines = [line.split() for line in output.read_text().splitlines()]
    for query, ranking in zip((q1, q2), expected, strict=True):
        rows = [line[2] for line in lines if line[0] == query.qid]
        assert rows == [query.candidates[i].docid for i in ranking.order]
    summary = capsys.readouterr().out
    assert "(K=60): 1 query by candidate scores, 1 query by candidate order" in summary
    assert llmrank(rerank_args(source, output, tiny_model_dir)) == 0
    assert "fused" not in capsys.readouterr().out, "auto: this model recommends no fusion"


def test_saved_json_says_what_placed_each_position(
    llmrank: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    texts = [f"fleas eat blood {i}" for i in range(8)]
    texts[2] = "&nbsp;"  # shows nothing in a prompt
    record = {
        "qid": "q1",
        "query": "what do fleas eat",
        "candidates": [{"docid": f"d{i}", "text": text} for i, text in enumerate(texts)],
    }
    source, output, saved = tmp_path / "c.jsonl", tmp_path / "run.txt", tmp_path / "r.json"
    source.write_text(json.dumps(record) + "\n", encoding="utf-8")
    args = ["rerank", str(source), "--output", str(output), "--model", str(tiny_model_dir)]
    options = ["--device", "cpu", "--strategy", "tdpart", "--window-size", "3"]
    assert llmrank([*args, *options, "--rank-depth", "1", "--save-json", str(saved)]) == 0

    engine = Reranker.from_pretrained(
        str(tiny_model_dir), device="cpu", strategy=make_strategy("tdpart", window_size=3)
    )
    expected = engine.rerank(record["query"], texts, top_k=1)
    assert expected.unranked - expected.blank > 0
    ranking = json.loads(saved.read_text())[0]["ranking"]
    placed = [entry["placed_by"] for entry in ranking]
    depth, left = expected.depth, expected.unranked - 1
    assert placed == ["model"] * depth + ["input order"] * left + ["blank"]
    assert [entry["docid"] for entry in ranking] == [f"d{i}" for i in expected.order]
    assert ranking[-1]["docid"] == "d2"


def test_rerank_limits_queries_and_candidates(
    llmrank: Any, candidates: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run.txt"
    args = rerank_args(candidates, output, tiny_model_dir, "--queries", "1")
    assert llmrank([*args, "--top-k-candidates", "3"]) == 0
    assert {qid: sorted(docs) for qid, docs in read_run(output).items()} == {
        "q1": ["q1-0", "q1-1", "q1-2"]
    }


def test_rerank_reads_rankllm_files(llmrank: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    records = [
        {
            "query": {"text": "capital of peru", "qid": 5},
            "candidates": [
                {"docid": d, "score": 1.0, "doc": {"contents": f"text {d}", "title": "Peru"}}
                for d in ["a", "b", "c"]
            ],
        }
    ]
    source = tmp_path / "retrieve.json"
    source.write_text(json.dumps(records))
    output = tmp_path / "run.txt"
    assert llmrank(rerank_args(source, output, tiny_model_dir, "--format", "rankllm")) == 0
    assert sorted(read_run(output)["5"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--window-size", "30", "--step", "10"], "--window-size 30 is over the 26 labels"),
        (["--window-size", "3", "--step", "5"], "step must be between 1 and 2 for window_size (3)"),
    ],
)
def test_rerank_rejects_bad_windows(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    args = rerank_args(candidates, tmp_path / "run.txt", tiny_model_dir)[:-4]
    assert llmrank([*args, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run.txt").exists()


def test_rerank_refuses_more_queries_than_the_file_holds(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "run.txt"
    assert llmrank(rerank_args(candidates, output, tiny_model_dir, "--queries", "3")) == 2
    assert "--queries 3 but" in capsys.readouterr().err
    assert not output.exists()
    assert llmrank(rerank_args(candidates, output, tiny_model_dir, "--queries", "1")) == 0
    assert "reranked 1 query (7 passages, " in capsys.readouterr().out


def test_argument_errors_come_before_any_model_load(
    llmrank: Any,
    candidates: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Reranker, "from_pretrained", never)
    base = ["rerank", str(candidates), "-o", str(tmp_path / "run.txt")]
    assert llmrank([*base, "--window-size", "2"]) == 2  # the default model's template has 1
    assert "--window-size 2 is over the 1 labels of the model's prompt template 'judge'" in (
        capsys.readouterr().err
    )
    assert llmrank([*base, "--both-orders"]) == 2  # the default judges one passage a window
    assert "a window of one passage reads the same both ways" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert llmrank([*base, "--model", "nosuchmodel"]) == 2
    assert "'nosuchmodel' is not a local folder" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    assert llmrank([*base, "--model", "nosuchmodel"]) == 2
    assert "the Hugging Face hub cannot be reached" in capsys.readouterr().err


def test_rerank_on_torch_points_an_onnx_export_to_the_onnx_backend(
    llmrank: Any, candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "llmrank.json").write_text(json.dumps({"template": FIRST_NUMERIC_TEMPLATE.to_dict()}))
    args = ["rerank", str(candidates), "-o", str(tmp_path / "run.txt"), "--model", str(export)]
    assert llmrank(args) == 2
    assert "is an ONNX export (it holds llmrank.json), not a torch model; load it with the " in (
        capsys.readouterr().err
    )


def test_a_file_that_is_not_utf8_is_named(
    llmrank: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"qid": "q", "query": "caf\xe9"}\n')
    assert llmrank(["rerank", str(bad), "-o", str(tmp_path / "run.txt")]) == 2
    assert f"{bad}: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    qrels = tmp_path / "qrels.txt"
    qrels.write_bytes(b"q 0 d\xff 1\n")
    with pytest.raises(DataFormatError, match=r"qrels\.txt: not UTF-8"):
        read_qrels(qrels)


def test_rerank_fails_on_bad_input_before_loading_the_model(
    llmrank: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "q", "query": "x", "candidates": [{"docid": "d"}]}\n')
    args = ["rerank", str(bad), "--output", str(tmp_path / "run.txt"), "--model", "no/such"]
    assert llmrank(args) == 2
    assert "bad.jsonl:1 candidate 0 (d): no text" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output", "no/run.txt"], "/no does not exist"),
        (["--output", "run.txt", "--tag", "my run"], "the run tag in a TREC file must be one word"),
        (["--output", "."], "cannot write .: it is a folder"),
        (["--output", "run.txt", "--save-json", "."], "cannot write .: it is a folder"),
        (["--output", "run.txt", "--save-json", "./run.txt"], "--save-json names the --output"),
        (["--output", "candidates.jsonl"], "--output names the candidates file"),
        (["--output", "r", "--save-json", "candidates.jsonl"], "--save-json names the candidates"),
    ],
)
def test_rerank_checks_output_settings_before_loading_the_model(
    llmrank: Any,
    candidates: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    given = candidates.read_bytes()
    assert llmrank(["rerank", str(candidates), "--model", "no/such", *extra]) == 2
    assert message in capsys.readouterr().err
    assert candidates.read_bytes() == given


@pytest.mark.parametrize("special", ["fifo", "/dev/null", "pipe"])
def test_rerank_refuses_a_special_output_file_before_loading_the_model(
    llmrank: Any,
    candidates: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    special: str,
) -> None:
    if special == "fifo":
        output = tmp_path / "out.fifo"
        os.mkfifo(output)
        kind = "a pipe or FIFO"
    elif special == "pipe":  # what /dev/stdout is when the output is piped
        ends = os.pipe()
        request.addfinalizer(lambda: [os.close(end) for end in ends])
        output = Path(f"/proc/self/fd/{ends[1]}")
        kind = "a pipe or FIFO"
    else:
        output = Path(special)
        kind = "a character device"
    for option in (["-o"], ["-o", str(tmp_path / "run.txt"), "--save-json"]):
        assert llmrank(["rerank", str(candidates), "--model", "no/such", *option, str(output)]) == 2
        assert f"cannot write {output}: it is {kind}" in capsys.readouterr().err
    assert special != "fifo" or output.is_fifo()


def test_rerank_checks_the_folder_an_output_symlink_leads_to(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dangling = tmp_path / "link.run"
    dangling.symlink_to(tmp_path / "missing" / "out.run")
    assert llmrank(["rerank", str(candidates), "--model", "no/such", "-o", str(dangling)]) == 2
    assert f"folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    (tmp_path / "missing").mkdir()
    assert llmrank(rerank_args(candidates, dangling, tiny_model_dir)) == 0
    assert dangling.is_symlink()
    assert len((tmp_path / "missing" / "out.run").read_text().splitlines()) == 11


def test_eval_refuses_a_cutoff_pytrec_eval_cannot_hold(
    llmrank: Any, candidates: Path, qrels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metric = "ndcg@9223372036854775808"  # 2^63: pytrec_eval reports it under another key
    assert llmrank(["eval", "--candidates", str(candidates), str(qrels), "--metrics", metric]) == 2
    assert f"metric {metric!r}: k must be at most 2147483647" in capsys.readouterr().err


def test_eval_json_must_not_replace_an_input(
    llmrank: Any, candidates: Path, qrels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = qrels.read_bytes(), candidates.read_bytes()
    for output, what in [(qrels, "the qrels file"), (candidates, "the candidates file")]:
        code = llmrank(["eval", "--candidates", str(candidates), str(qrels), "--json", str(output)])
        assert code == 2
        assert f"--json names {what} {output}; give another path" in capsys.readouterr().err
    assert llmrank(["eval", str(candidates), str(qrels), "--json", str(candidates)]) == 2
    assert f"--json names the run {candidates}; give" in capsys.readouterr().err
    assert (qrels.read_bytes(), candidates.read_bytes()) == given


def test_rerank_writes_its_outputs_all_or_none(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output, rankings = tmp_path / "out" / "run.txt", tmp_path / "out" / "rankings.json"
    output.parent.mkdir()
    output.write_text("the old run\n")

    def full_disk(*args: Any) -> Any:
        raise OSError("no space left on device")

    monkeypatch.setattr("haystack_llmrank.cli.rerank.rankings_json", full_disk)
    args = rerank_args(candidates, output, tiny_model_dir, "--save-json", str(rankings))
    assert llmrank(args) == 2
    assert output.read_text() == "the old run\n"
    assert [path.name for path in output.parent.iterdir()] == ["run.txt"]


def test_rerank_refuses_to_write_an_empty_run(
    llmrank: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    none = tmp_path / "none.jsonl"
    none.write_text('{"qid": "q", "query": "x", "candidates": []}\n')
    output = tmp_path / "run.txt"
    assert llmrank(["rerank", str(none), "-o", str(output), "--model", "no/such"]) == 2
    assert f"no query of {none} has candidates: the run would be empty" in capsys.readouterr().err
    assert not output.exists()


def test_a_query_too_long_for_any_prompt_is_named_before_any_scoring(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = candidates.read_text().splitlines()
    long = {
        "qid": "argument-42",
        "query": "why " * 300,
        "candidates": [{"docid": "d", "text": "t"}],
    }
    candidates.write_text("\n".join([lines[0], json.dumps(long), lines[1]]) + "\n")

    def scored(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a window was scored")

    monkeypatch.setattr(Reranker, "score_prompts", scored)
    output = tmp_path / "run.txt"
    args = rerank_args(candidates, output, tiny_model_dir, "--max-prompt-tokens", "256")
    assert llmrank(args) == 2
    error = capsys.readouterr().err
    named = f"argument-42 ({candidates}:2); argument-42: the instruction and query alone take"
    assert f"1 query too long for any prompt, so none was reranked: {named}" in error
    assert "over the budget of 256" in error
    assert not output.exists()
    # every long query is named by its record, each query checked once
    longer = {**long, "qid": "argument-43", "query": "how " * 300}
    candidates.write_text(
        "\n".join([lines[0], json.dumps(long), lines[1], json.dumps(longer)]) + "\n"
    )
    checked: list[str] = []
    check = Reranker._check_query

    def counted(self: Reranker, query: str, shown: int) -> None:
        checked.append(query)
        check(self, query, shown)

    monkeypatch.setattr(Reranker, "_check_query", counted)
    assert llmrank(args) == 2
    error = capsys.readouterr().err
    named = f"argument-42 ({candidates}:2), argument-43 ({candidates}:4); argument-42: the"
    assert f"2 queries too long for any prompt, so none was reranked: {named}" in error
    queries = [json.loads(lines[0])["query"], long["query"], json.loads(lines[1])["query"]]
    assert checked == [*queries, longer["query"]]
    assert not output.exists()
    # and a run whose queries all fit checks each once too
    candidates.write_text("\n".join(lines) + "\n")
    checked.clear()
    monkeypatch.undo()
    monkeypatch.setattr(Reranker, "_check_query", counted)
    assert llmrank([*args[:-1], "4096"]) == 0
    assert checked == [json.loads(line)["query"] for line in lines]


def test_a_query_without_candidates_is_missing_from_either_run(
    llmrank: Any,
    candidates: Path,
    qrels: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = [json.loads(line) for line in candidates.read_text().splitlines()]
    records[1]["candidates"] = []
    candidates.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = ["--metrics", "ndcg@10"]
    assert llmrank(["eval", "--candidates", str(candidates), str(qrels), *metrics]) == 0
    first_stage = capsys.readouterr().out.splitlines()[-1]
    output = tmp_path / "run.txt"
    assert llmrank(rerank_args(candidates, output, tiny_model_dir)) == 0
    capsys.readouterr()
    assert llmrank(["eval", str(output), str(qrels), *metrics]) == 0
    reranked = capsys.readouterr().out.splitlines()[-1]
    assert (
        first_stage
        == reranked
        == (
            "1 query; relevance level 2; 1 judged query not in the run (left out of the mean; "
            "--missing-as-zero counts 0)"
        )
    )


def test_rank_depth_help_says_what_unset_means(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rerank", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    rank_depth = text[text.index("--rank-depth K only") : text.index("--model MODEL '")]
    assert "Unset, they play one round, which ranks tdpart's pivot" in rank_depth
    assert "default: all" not in rank_depth


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("sliding", ()),
        ("sliding", ("--strategy", "sliding")),
        ("disjoint", ("--strategy", "disjoint")),
    ],
)
def test_rank_depth_is_refused_for_a_strategy_that_ranks_every_position(
    llmrank: Any,
    candidates: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    strategy: str,
    extra: tuple[str, ...],
) -> None:
    """It was silently ignored there (rc 0), where a --step a strategy lacks is refused."""
    output = tmp_path / "run.txt"
    step = strategy == "sliding"
    args = rerank_args(candidates, output, tiny_model_dir, *extra, "--rank-depth", "2", step=step)
    assert llmrank(args) == 2
    assert (
        "--rank-depth applies to the tdpart and tournament strategies only; strategy "
        f"{strategy!r} ranks every position"
    ) in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("command", ["rerank", "serve"])
def test_dtype_help_names_float64(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """float64 is accepted, but the help named only float32, float16 and bfloat16."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.partition("options:")[2].split())
    dtype = text[text.index("--dtype DTYPE") : text.index("--strategy")]
    assert dtype == "--dtype DTYPE float32, float16, bfloat16, float64 (default: by device) "


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_rerank_rejects_non_positive_counts(
    llmrank: Any, candidates: Path, tmp_path: Path, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        llmrank(["rerank", str(candidates), "-o", str(tmp_path / "r"), "--queries", value])
    assert exit_info.value.code == 2


def test_eval_of_a_run(
    llmrank: Any, qrels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 q1-5 1 2.0 t\nq1 Q0 q1-0 2 1.0 t\nq2 Q0 q2-3 1 1.0 t\n")
    out = tmp_path / "metrics.json"
    assert (
        llmrank(["eval", str(run), str(qrels), "--metrics", "mrr@1,mrr@10", "--json", str(out)])
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["qid", "mrr@1", "mrr@10"]
    assert table[1].split() == ["mean", "0.5000", "0.7500"]
    assert table[2] == "2 queries; relevance level 2"
    saved = json.loads(out.read_text())
    assert saved["per_query"] == {
        "q1": {"mrr@1": 0.0, "mrr@10": 0.5},
        "q2": {"mrr@1": 1.0, "mrr@10": 1.0},
    }
    assert saved["relevance_level"] == 2


def test_eval_ranks_scores_as_trec_eval_reads_them(
    llmrank: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 a 2\nq1 0 b 0\n")
    metrics = ["--metrics", "p@1", "ndcg@1", "mrr@1", "mrr@10"]
    # impact scores tied in the thousands: the list order, with "a" first, is what counts
    listed = [{"docid": d, "score": 3000.0, "text": d} for d in "ab"]
    tied = tmp_path / "tied.jsonl"
    tied.write_text(json.dumps({"qid": "q1", "query": "impact", "candidates": listed}) + "\n")
    assert llmrank(["eval", "--candidates", str(tied), str(qrels), *metrics]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["mean", *["1.0000"] * 4]
    # one 32-bit float, so a tie that trec_eval gives to "b": every metric says so
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 a 1 0.50000001 t\nq1 Q0 b 2 0.5 t\n")
    assert llmrank(["eval", str(run), str(qrels), *metrics]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row == ["mean", "0.0000", "0.0000", "0.0000", "0.5000"]


def test_eval_of_a_candidates_file(
    llmrank: Any, candidates: Path, qrels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--candidates", str(candidates), str(qrels), "--metrics", "ndcg@10"]
    assert llmrank([*args, "--per-query"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["q1", "1.0000"]
    assert rows[2][0] == "q2"
    assert float(rows[2][1]) == pytest.approx(1 / 2.321928, abs=1e-4)  # grade 2 at rank 4


def test_eval_reports_queries_on_one_side_only(
    llmrank: Any,
    qrels: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 q1-0 1 1.0 t\nq9 Q0 x 1 1.0 t\n")
    assert llmrank(["eval", str(run), str(qrels), "--metrics", "p@1"]) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer == (
        "1 query; relevance level 2; 1 judged query not in the run (left out of the mean; "
        "--missing-as-zero counts 0); 1 run query without judgements"
    )
    assert "missing from the run (left out of the mean): q2" in caplog.text
    out = tmp_path / "eval.json"
    args = ["eval", str(run), str(qrels), "--metrics", "p@1", "--missing-as-zero"]
    assert llmrank([*args, "--json", str(out)]) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer == (
        "2 queries; relevance level 2; 1 judged query not in the run (counted as 0); "
        "1 run query without judgements"
    )
    assert json.loads(out.read_text())["missing_as_zero"] is True


def test_eval_of_a_candidates_file_cut_as_rerank_cuts_it(
    llmrank: Any, candidates: Path, qrels: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "--candidates", str(candidates), str(qrels), "--metrics", "recall@100"]
    assert llmrank([*args, "--queries", "1", "--top-k-candidates", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["per_query"]) == ["q1"]
    assert result["per_query"]["q1"]["recall@100"] == 0.5  # q1-0 of the two relevant
    assert llmrank([*args, "--queries", "3"]) == 2
    assert llmrank(["eval", str(out), str(qrels), "--queries", "1"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["RUN"], "give RUN QRELS, or --candidates FILE QRELS"),
        (["--candidates", "RUN", "RUN", "QRELS"], "give RUN QRELS, or --candidates FILE QRELS"),
        (["RUN", "QRELS", "--metrics", "ndcg@ten"], "unknown metric 'ndcg@ten'"),
        (["RUN", "RUN"], "expected 4 columns (qid iteration docid grade), got 6"),
        (["QRELS", "QRELS"], "expected 6 columns (qid Q0 docid rank score tag), got 4"),
        (["missing.txt", "QRELS"], "No such file"),
        (["RUN", "QRELS", "--format", "rankllm"], "--format, --queries and --top-k-candidates"),
        (["--candidates", "HUGE", "QRELS"], "query q1: the score 1e+305 is too large for a run"),
    ],
)
def test_eval_errors(
    llmrank: Any,
    qrels: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 q1-0 1 1.0 t\n")
    huge = tmp_path / "huge.jsonl"
    huge.write_text(
        '{"qid": "q1", "query": "x", "candidates": [{"docid": "a", "score": 1e305, "text": "t"}]}'
    )
    paths = {"RUN": str(run), "QRELS": str(qrels), "HUGE": str(huge)}
    assert llmrank(["eval", *(paths.get(a, a) for a in args)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("level", ["0", "-1"])
def test_eval_refuses_relevance_levels_below_1(
    llmrank: Any, qrels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], level: str
) -> None:
    """Level 0 was a pytrec_eval traceback, and a negative level scored every binary metric 0."""
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 q1-0 1 1.0 t\n")
    with pytest.raises(SystemExit) as exit_info:
        llmrank(["eval", str(run), str(qrels), "--relevance-level", level])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --relevance-level: expected a positive integer, got {level}" in error


def test_eval_help_gives_the_relevance_level_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.partition("options:")[2].split())
    level = text[text.index("--relevance-level") : text.index("--missing-as-zero")]
    assert "at least 1: pytrec_eval takes no lower level, though trec_eval's -l does" in level


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("", "cannot write {json}: it is a folder"),
        ("absent/metrics.json", "cannot write {json}: folder {tmp}/absent does not exist"),
    ],
)
def test_eval_checks_json_before_evaluating(
    llmrank: Any,
    qrels: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    message: str,
) -> None:
    """The table was printed before --json failed, with exit 2."""
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 q1-0 1 1.0 t\n")
    json_path = tmp_path / where
    assert llmrank(["eval", str(run), str(qrels), "--json", str(json_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message.format(json=json_path, tmp=tmp_path) in captured.err


def test_eval_writes_json_whole_or_not_at_all(
    llmrank: Any,
    qrels: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A write that fails part way leaves the earlier file, no partial one, and no table."""
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 q1-0 1 1.0 t\n")
    out = tmp_path / "metrics.json"
    out.write_text("earlier metrics\n")

    def full_disk(path: Path, *args: Any, **kwargs: Any) -> int:
        path.write_bytes(b'{"metr')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert llmrank(["eval", str(run), str(qrels), "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, "No space left on device" in captured.err) == ("", True)
    assert out.read_bytes() == b"earlier metrics\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "qrels.txt", "run.txt"]
    monkeypatch.undo()
    assert llmrank(["eval", str(run), str(qrels), "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("qid")
    assert json.loads(out.read_text())["queries"] == 1


def test_eval_of_a_candidates_file_as_the_run_points_to_candidates(
    llmrank: Any, candidates: Path, qrels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert llmrank(["eval", str(candidates), str(qrels)]) == 2
    error = capsys.readouterr().err
    assert f"{candidates}:1: expected 6 columns (qid Q0 docid rank score tag), got " in error
    assert error.rstrip().endswith(
        "the line looks like JSON, as in a candidates file; to evaluate a candidates file's "
        "order, give it with --candidates"
    )


ANY_BACKEND = "cpu, cuda, cuda:N (a CUDA device by index) or mps (torch only), in any case"


@pytest.mark.parametrize(
    ("command", "help_text"),
    [
        ("rerank", f"{ANY_BACKEND} (default: cuda if any)"),
        ("serve", f"{ANY_BACKEND} (default: cuda if any)"),
        # its onnx rows run on the device too, so no mps
        (
            "bench",
            "cpu, cuda or cuda:N (a CUDA device by index), in any case (default: cuda if any)",
        ),
        ("train", "cpu, cuda, cuda:N (a CUDA device by index) or mps, in any case (default: cpu)"),
    ],
)
def test_device_help_names_every_device_accepted(
    command: str, help_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.partition("options:")[2].split())
    device = text[text.index("--device DEVICE") : text.index("--dtype DTYPE")]
    assert device == f"--device DEVICE {help_text} "
    needed = {"rerank": ["in.jsonl", "-o", "run.txt"], "train": ["in.jsonl", "-o", "out"]}
    parsed = cli.build_parser(command).parse_args([command, *needed.get(command, [])])
    assert parsed.device == ("cpu" if command == "train" else None)  # each keeps its default


def test_train_refuses_a_device_before_reading_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent.jsonl"
    base = ["train", str(absent), "--qrels", str(absent), "-o", str(tmp_path / "out")]
    for device in ("gpu", "cuda:x", "cpu:1"):
        assert cli.main([*base, "--device", device]) == 2
        error = capsys.readouterr().err
        assert f"unknown device {device!r}: the torch backend runs on cpu, cuda or mps" in error
    assert cli.main([*base, "--device", "CPU"]) == 2  # a device it takes: on to the input
    assert "absent.jsonl" in capsys.readouterr().err


ModelArgs = Callable[..., argparse.Namespace]


@pytest.fixture
def model_args(tmp_path: Path) -> ModelArgs:
    """Parse model options naming a local model folder (the backend is mocked; the folder
    holds only a config.json)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    def parse(*extra: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_model_options(parser, batch_size=1)
        return parser.parse_args(["--model", str(folder), *extra])

    return parse


def test_threads_and_gpu_policy_reach_the_backend(
    monkeypatch: pytest.MonkeyPatch, model_args: ModelArgs
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(backends, "check_export", lambda model: None)  # no export here
    torch_threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", torch_threads.append)
    load_reranker(model_args("--backend", "onnx", "--threads", "3", "--on-missing-gpu", "warn"))
    assert (calls[-1]["threads"], calls[-1]["on_missing_gpu"]) == (3, "warn")
    assert torch_threads == []  # ONNX Runtime's threads, not torch's
    load_reranker(model_args("--threads", "2"))
    assert (calls[-1]["threads"], calls[-1]["on_missing_gpu"]) == (None, "raise")
    assert torch_threads == [2]
    with pytest.raises(SystemExit):
        model_args("--on-missing-gpu", "ignore")


def test_an_onnx_model_that_is_no_export_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, model_args: ModelArgs
) -> None:
    """The onnx backend's folder was first read by the load (for ``serve``, on its worker,
    after the port was bound)."""
    loads: list[Any] = []
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: loads.append(a))
    with pytest.raises(ModelResolutionError, match=r"holds no llmrank\.json"):
        load_reranker(model_args("--backend", "onnx"))
    assert loads == []


def test_the_strategy_and_both_orders_reach_the_engine(
    monkeypatch: pytest.MonkeyPatch, model_args: ModelArgs
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: calls.append(kw))
    load_reranker(model_args())
    # none given: the engine picks the readout's strategy and window once the template is known
    assert (calls[-1]["strategy"], calls[-1]["window_size"], calls[-1]["step"]) == (None,) * 3
    assert calls[-1]["both_orders"] is False
    load_reranker(model_args("--both-orders"))
    assert calls[-1]["both_orders"] is True
    load_reranker(model_args("--strategy", "tdpart", "--window-size", "8"))
    assert (calls[-1]["strategy"], calls[-1]["window_size"]) == ("tdpart", 8)
    assert calls[-1]["fusion_k"] == "auto"
    assert calls[-1]["vote"] is None
    load_reranker(model_args("--strategy", "disjoint", "--fusion-k", "60", "--vote", " yes"))
    assert (calls[-1]["strategy"], calls[-1]["fusion_k"]) == ("disjoint", 60)
    assert calls[-1]["vote"] == " yes"
    assert calls[-1]["order_invariant"] is False
    load_reranker(model_args("--order-invariant", "--vote", " yes"))  # a vote: disjoint
    assert calls[-1]["order_invariant"] is True
    with pytest.raises(ValueError, match="order_invariant needs the 'disjoint' strategy"):
        load_reranker(model_args("--order-invariant", "--strategy", "sliding"))
    # the folder records no template: FIRST's, read by its labels in sliding windows
    with pytest.raises(ValueError, match="order_invariant needs the 'disjoint' strategy"):
        load_reranker(model_args("--order-invariant"))
    with pytest.raises(ValueError, match="visible token"):
        load_reranker(model_args("--vote", " "))
    load_reranker(model_args("--fusion-k", "none"))
    assert calls[-1]["fusion_k"] is None
    with pytest.raises(ValueError, match="fusion_k"):
        load_reranker(model_args("--fusion-k", "-1"))
    with pytest.raises(SystemExit):
        model_args("--fusion-k", "sixty")
    with pytest.raises(SystemExit):
        model_args("--strategy", "bubble")
    with pytest.raises(ValueError, match="step must be between"):
        load_reranker(model_args("--strategy", "sliding", "--window-size", "4", "--step", "5"))


def test_windows_are_checked_against_the_models_template_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_args: ModelArgs
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: calls.append(kw))
    (tmp_path / "config.json").write_text("{}")
    write_template(tmp_path, FIRST_NUMERIC_TEMPLATE)
    numeric = ("--model", str(tmp_path))
    with pytest.raises(ValueError, match="--window-size 10 is over the 9 labels of the model's"):
        load_reranker(model_args(*numeric, "--window-size", "10"))
    with pytest.raises(ValueError, match=r"step must be between 1 and 8 for window_size \(9\)"):
        load_reranker(model_args(*numeric, "--step", "10"))
    assert calls == []
    load_reranker(model_args(*numeric))  # the engine narrows its default window to 9
    load_reranker(model_args(*numeric, "--window-size", "9", "--step", "3"))
    assert [(c["window_size"], c["step"]) for c in calls] == [(None, None), (9, 3)]
    load_reranker(model_args("--window-size", "26"))  # FIRST's own template has 26 labels
    with pytest.raises(
        ValueError, match="over the 26 labels of the model's prompt template 'first'"
    ):
        load_reranker(model_args("--window-size", "27"))


def test_template_budgets_and_placement_reach_the_engine_or_fail_before_it(
    monkeypatch: pytest.MonkeyPatch, model_args: ModelArgs
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: calls.append(kw))
    load_reranker(
        model_args(
            "--template",
            "first-numeric",
            "--max-prompt-tokens",
            "900",
            "--max-batch-tokens",
            "4096",
        )
    )
    assert (calls[-1]["template"], calls[-1]["max_prompt_tokens"]) == ("first-numeric", 900)
    assert calls[-1]["max_batch_tokens"] == 4096
    with pytest.raises(ValueError, match="--window-size 10 is over the 9 labels"):
        load_reranker(model_args("--template", "first-numeric", "--window-size", "10"))
    with pytest.raises(ValueError, match="unknown torch dtype 'float17'"):
        load_reranker(model_args("--dtype", "float17"))
    with pytest.raises(ValueError, match="unknown device 'gpu': the torch backend runs on"):
        load_reranker(model_args("--device", "gpu"))
    for device in ("mps", "garbage"):  # the onnx backend's device too, before any load
        with pytest.raises(ValueError, match="the onnx backend runs on cpu or cuda only"):
            load_reranker(model_args("--backend", "onnx", "--device", device))
    assert len(calls) == 1
    for bad in (("--template", "nosuch"), ("--max-prompt-tokens", "0")):
        with pytest.raises(SystemExit):
            model_args(*bad)


def test_passage_words_reach_the_engine(
    monkeypatch: pytest.MonkeyPatch, model_args: ModelArgs
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: calls.append(kw))
    for given, expected in ((None, "auto"), ("auto", "auto"), ("all", None), ("48", 48)):
        load_reranker(model_args(*(() if given is None else ("--max-passage-words", given))))
        assert calls[-1]["max_passage_words"] == expected
    for bad in ("0", "-3", "most", "4.5"):
        with pytest.raises(SystemExit):
            model_args("--max-passage-words", bad)


@pytest.mark.parametrize("strategy", ["tdpart", "tournament"])
def test_rerank_ranks_with_the_chosen_strategy(
    llmrank: Any, candidates: Path, tiny_model_dir: Path, tmp_path: Path, strategy: str
) -> None:
    output = tmp_path / "run.txt"
    chosen = ("--strategy", strategy)
    assert llmrank(rerank_args(candidates, output, tiny_model_dir, *chosen, step=False)) == 0
    engine = Reranker.from_pretrained(
        str(tiny_model_dir), device="cpu", strategy=make_strategy(strategy, window_size=3)
    )
    run = read_run(output)
    for query in read_queries(candidates):
        expected = engine.rerank(query.query, query.texts)
        assert list(run[query.qid]) == [query.candidates[i].docid for i in expected.order]
    shallow = tmp_path / "shallow.txt"
    args = ("--strategy", strategy, "--rank-depth", "1")
    assert llmrank(rerank_args(candidates, shallow, tiny_model_dir, *args, step=False)) == 0
    given = rerank_args(candidates, tmp_path / "stepped.txt", tiny_model_dir, *chosen)
    assert llmrank(given) == 2  # a --step this strategy would ignore is refused
    run = read_run(shallow)
    for query in read_queries(candidates):
        expected = engine.rerank(query.query, query.texts, top_k=1)
        assert expected.unranked > 0, "a depth of 1 should leave a first-stage tail"
        assert list(run[query.qid]) == [query.candidates[i].docid for i in expected.order]


def test_gguf_cache_holds_float32_whatever_dtype_the_load_asks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_tokenizer: Any
) -> None:
    import transformers
    from safetensors import safe_open

    monkeypatch.setenv("LLMRANK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMRANK_NO_CACHE", raising=False)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    asked: list[Any] = []

    def dequantise(location: str, **kwargs: Any) -> Any:
        asked.append(kwargs.get("dtype"))
        model = make_tiny_llama(len(smollm2_tokenizer)).to(kwargs.get("dtype", torch.float32))
        loaded = {"missing_keys": set(), "mismatched_keys": set()}
        return (model, loaded) if kwargs.get("output_loading_info") else model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", dequantise)
    source = models.ModelSource(str(tmp_path), "m.gguf")
    model = models.load_causal_lm(source, dtype=torch.bfloat16, tokenizer=smollm2_tokenizer)
    assert asked == [torch.float32]
    assert model.dtype == torch.bfloat16
    cached = models._gguf_cache_dir(source)
    assert cached is not None
    with safe_open(str(cached / "model.safetensors"), "pt") as saved:
        assert {saved.get_tensor(name).dtype for name in saved.keys()} == {torch.float32}  # noqa: SIM118


def test_gguf_cache_is_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    monkeypatch.setenv("LLMRANK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMRANK_NO_CACHE", raising=False)
    folders = []
    for name, payload in [
        ("venv1", b"GGUF same"),
        ("venv2", b"GGUF same"),
        ("venv3", b"GGUF other"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.gguf").write_bytes(payload)
        folders.append(models._gguf_cache_dir(models.ModelSource(str(tmp_path / name), "m.gguf")))
    assert folders[0] == folders[1] != folders[2]
    index = json.loads((tmp_path / "cache" / "gguf" / "index.json").read_text())
    assert len(index) == 3
    # another transformers major version writes tokenizer files this one may not read
    major = transformers.__version__.split(".")[0]
    assert folders[0] is not None
    assert folders[0].name.endswith(f"-transformers{major}")
    monkeypatch.setattr(transformers, "__version__", "5.0.0" if major == "4" else "4.56.2")
    other = models._gguf_cache_dir(models.ModelSource(str(tmp_path / "venv1"), "m.gguf"))
    assert other not in (None, folders[0])


def test_the_fusion_summary_says_which_queries_went_unfused(tiny_reranker: Reranker) -> None:
    from haystack_llmrank.cli.rerank import _fusion_summary

    auto = tiny_reranker.replace(fusion_k=60, fusion_needs_scores=True)
    assert _fusion_summary(auto, [[2.0, 1.0], None, None]) == (
        "fused with the first stage by reciprocal rank fusion (K=60): 1 query by candidate "
        "scores, 2 queries not fused (no scores)"
    )
    assert _fusion_summary(auto, [[2.0, 1.0]]).endswith("1 query by candidate scores")
