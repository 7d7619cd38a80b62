"""The example scripts refuse an input file that does not exist as they parse their options,
as ``llmrank`` does, instead of a traceback once the data has loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import import_example

ARGVS = {
    "fold_summary": ["{record}", "{records}", "--json", "{out}"],
    "heldout_eval": [
        "--split", "{split}", "--candidates", "{candidates}", "--qrels", "{qrels}",
        "--teacher", "{teacher}", "--json", "{out}",
    ],
    "inverse_cloze": [
        "{candidates}", "--qrels", "{qrels}", "--teacher", "{teacher}", "--split", "{split}",
        "--output", "{out}",
    ],
    "relevance_probe": [
        "--split", "{split}", "--candidates", "{candidates}", "--qrels", "{qrels}",
        "--teacher", "{teacher}", "--json", "{out}",
    ],
    "teacher_run": ["{candidates}", "--output", "{out}"],
    "vote_check": [
        "model", "{candidates}", "--qrels", "{qrels}", "--split", "{split}", "--json", "{out}"
    ],
    "vote_position_bias": [
        "--split", "{split}", "--candidates", "{candidates}", "--qrels", "{qrels}",
        "--json", "{out}",
    ],
}  # fmt: skip
"""Each script's arguments, every file it reads named by a placeholder."""

FILES = [
    ("fold_summary", "records"),
    ("heldout_eval", "--split"),
    ("heldout_eval", "--candidates"),
    ("heldout_eval", "--qrels"),
    ("heldout_eval", "--teacher"),
    ("inverse_cloze", "candidates"),
    ("inverse_cloze", "--qrels"),
    ("inverse_cloze", "--teacher"),
    ("inverse_cloze", "--split"),
    ("relevance_probe", "--split"),
    ("relevance_probe", "--candidates"),
    ("relevance_probe", "--qrels"),
    ("relevance_probe", "--teacher"),
    ("teacher_run", "candidates"),
    ("vote_check", "candidates"),
    ("vote_check", "--qrels"),
    ("vote_check", "--split"),
    ("vote_position_bias", "--split"),
    ("vote_position_bias", "--candidates"),
    ("vote_position_bias", "--qrels"),
]


def refused(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``script`` run with ``argv`` wrote to stderr as it exited with status 2."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [f"{script}.py", *argv])
        with pytest.raises(SystemExit) as exit_info:
            import_example(script).main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("script", "option"), FILES)
def test_a_missing_input_file_is_refused_before_any_work(
    script: str, option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # every other input exists, so that only the missing one can fail
    missing = tmp_path / "missing" / "input"
    paths = {"out": tmp_path / "out.json"}
    for token in ARGVS[script]:
        name = token.strip("{}")
        if token.startswith("{") and name != "out":
            paths[name] = tmp_path / name
            paths[name].write_text("")
    paths[option.lstrip("-")] = missing
    argv = [token.format(**paths) for token in ARGVS[script]]
    expected = f"argument {option}: no such file: {str(missing)!r}"
    assert expected in refused(script, argv, capsys)


@pytest.mark.parametrize("script", ["heldout_eval", "relevance_probe", "vote_position_bias"])
@pytest.mark.parametrize(
    ("option", "name"), [("--candidates", "candidates.jsonl"), ("--qrels", "qrels.txt")]
)
def test_a_missing_default_input_file_is_refused_too(
    script: str,
    option: str,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the defaults are under heldout_eval's DL19 folder (add_data_options, shared by all
    # three), absent where the shared data is not fetched
    monkeypatch.setattr(import_example("heldout_eval"), "DL19", tmp_path / "dl19")
    given = tmp_path / "given"
    given.write_text("")
    other = "--qrels" if option == "--candidates" else "--candidates"
    argv = ["--split", str(given), other, str(given), "--json", str(tmp_path / "out.json")]
    expected = f"argument {option}: no such file: {str(tmp_path / 'dl19' / name)!r}"
    assert expected in refused(script, argv, capsys)
