"""Where an export writes: only its own files in OUT_DIR, never beside it, whole or not at all;
what interrupted exports leave; onnx and ONNX Runtime failures as export errors."""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from support import PROJECT_ROOT

from haystack_llmrank.backends import check_export
from haystack_llmrank.cli import main
from haystack_llmrank.errors import ExportError
from haystack_llmrank.export import export_onnx, onnx_folder, precision, read_metadata, verify
from haystack_llmrank.staged_files import STAGING_PREFIX


class LoadAttemptedError(Exception):
    """Raised in place of loading the model: what is checked before has passed."""


def refuse_to_load(*args: Any, **kwargs: Any) -> Any:
    raise LoadAttemptedError


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (relative) -> its content's SHA-256 (``dir`` for folders)."""
    return {
        str(path.relative_to(folder)): (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
        for path in sorted(folder.rglob("*"))
    }


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return export_onnx(str(tiny_model_dir), tmp_path_factory.mktemp("earlier") / "out")


@pytest.fixture
def copy(earlier: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(earlier, tmp_path / "parent" / "out"))


def test_serve_refuses_an_export_without_its_graph_in_one_line_before_serving(
    copy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It bound the port, then logged the worker's traceback of the failed load."""
    import opensearch_ltr.service as service

    monkeypatch.setattr(service, "run_service", refuse_to_load)
    check_export(str(copy))  # whole: passes
    (copy / "model.onnx").unlink()
    assert main(["serve", "--no-auth", "--backend", "onnx", "--model", str(copy)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"{copy} lacks ['model.onnx']" in error


# --- overwriting replaces the export's own files, and only a folder of nothing else --------


def test_overwrite_refuses_a_folder_that_holds_more_than_an_export(
    copy: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A git checkout of an export lost its .git, model card and .gitattributes."""
    (copy / ".git").mkdir()
    (copy / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (copy / "README.md").write_text("# My model card\n")
    (copy / ".gitattributes").write_text("*.onnx filter=lfs\n")
    for index in range(9):
        (copy / f"notes-{index}.txt").write_text("mine")
    (copy / "model.onnx.data").mkdir()  # an export's name, but a folder: not the export's
    before = snapshot(copy)
    monkeypatch.setattr(onnx_folder, "load_causal_lm", refuse_to_load)
    with pytest.raises(FileExistsError) as refused:
        export_onnx(str(tiny_model_dir), copy, overwrite=True)
    assert str(refused.value).startswith(
        f"{copy} holds an export and 13 other entries (.git, .gitattributes, README.md, "
        "model.onnx.data, notes-0.txt, notes-1.txt, notes-2.txt, notes-3.txt, notes-4.txt, "
        "notes-5.txt and 3 more); overwriting replaces a folder that holds nothing but an export"
    )
    assert snapshot(copy) == before


def test_overwrite_replaces_the_export_in_place_and_drops_its_stale_files(
    copy: Path, tiny_model_dir: Path
) -> None:
    (copy / "model.onnx.data").write_bytes(b"a graph's data from a larger export")
    (copy / "special_tokens_map.json").write_text("{}")  # an older transformers' file
    copy.chmod(0o750)
    inode = copy.stat().st_ino
    export_onnx(str(tiny_model_dir), copy, optimize=False, overwrite=True)
    assert not read_metadata(copy).optimized
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [
            "chat_template.jinja",
            "llmrank.json",
            "model.onnx",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    assert (copy.stat().st_ino, copy.stat().st_mode & 0o777) == (inode, 0o750)
    assert [p.name for p in copy.parent.iterdir()] == ["out"]


# --- staged inside OUT_DIR, moved into place whole -----------------------------------------


def test_the_export_is_staged_inside_out_dir_and_never_beside_it(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount point or a folder whose parent is read-only could not take the export."""
    out = tmp_path / "out"
    out.mkdir()
    seen: dict[str, list[str]] = {}
    check = verify.check_graph

    def watching(*args: Any, **kwargs: Any) -> None:
        seen["parent"] = sorted(p.name for p in tmp_path.iterdir())
        seen["out"] = sorted(p.name for p in out.iterdir())
        check(*args, **kwargs)

    monkeypatch.setattr(verify, "check_graph", watching)
    export_onnx(str(tiny_model_dir), out, optimize=False)
    assert seen["parent"] == ["out"]
    [staging] = seen["out"]
    assert staging.startswith(STAGING_PREFIX)
    assert read_metadata(out).source_model == str(tiny_model_dir)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_an_empty_out_dir_under_a_read_only_parent_takes_the_export(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("this process may write into read-only folders (root, say)")
        export_onnx(str(tiny_model_dir), out, optimize=False)
    finally:
        tmp_path.chmod(0o755)
    assert read_metadata(out).optimized is False


def test_a_folder_that_cannot_be_written_is_refused_before_the_model_loads(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "read-only"
    parent.mkdir()
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != parent and access(path, mode)
    )
    monkeypatch.setattr(onnx_folder, "load_causal_lm", refuse_to_load)
    with pytest.raises(
        PermissionError,
        match=f"cannot write into {parent}/new/out: folder {parent} is not writable",
    ):
        export_onnx(str(tiny_model_dir), parent / "new" / "out")
    assert list(parent.iterdir()) == []


def test_a_failed_export_leaves_an_earlier_one_and_makes_no_folder(
    copy: Path, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the exported graph differs from the model")

    monkeypatch.setattr(verify, "check_graph", failing)
    before = snapshot(copy)
    with pytest.raises(RuntimeError, match="differs"):
        export_onnx(str(tiny_model_dir), copy, optimize=False, overwrite=True)
    assert snapshot(copy) == before
    with pytest.raises(RuntimeError, match="differs"):
        export_onnx(str(tiny_model_dir), tmp_path / "new" / "deeper" / "out", optimize=False)
    assert not (tmp_path / "new").exists()


# --- what interrupted exports leave ---------------------------------------------------------


def test_staging_left_by_an_ended_process_is_removed_and_a_running_ones_refused(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    stale = out / f"{STAGING_PREFIX}{dead_pid()}-abc"
    (stale / "new").mkdir(parents=True)
    (stale / "new" / "model.onnx").write_bytes(b"half a graph")
    monkeypatch.setattr(onnx_folder, "load_causal_lm", refuse_to_load)
    with caplog.at_level(logging.WARNING), pytest.raises(LoadAttemptedError):
        export_onnx(str(tiny_model_dir), out)
    assert f"removing {stale}" in caplog.text
    assert list(out.iterdir()) == []
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            live = out / f"{STAGING_PREFIX}{running.pid}-def"
            live.mkdir()
            with pytest.raises(
                FileExistsError, match=f"is being written by another export \\({live.name}\\)"
            ):
                export_onnx(str(tiny_model_dir), out)
        finally:
            running.kill()
    assert live.is_dir()


EXPORT_SCRIPT = """
import sys
from haystack_llmrank.cli import main
sys.exit(main(["export", sys.argv[1], sys.argv[2], "--no-optimize"]))
"""


@pytest.mark.slow
def test_sigterm_during_an_export_leaves_nothing_behind(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``timeout``, ``docker stop`` and Kubernetes send SIGTERM, which skipped all cleanup."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SCRIPT, str(tiny_model_dir), str(tmp_path / "out")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".") for p in tmp_path.rglob("*")):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM, process.communicate()[1]
    finally:
        process.kill()
        process.wait()
    assert list(tmp_path.rglob("*")) == []


# --- onnx and ONNX Runtime failures ---------------------------------------------------------


def test_onnx_runtime_failures_are_reported_as_export_errors(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A full disk while optimising gave a raw ``Fail`` traceback."""
    message = "[ONNXRuntimeError] : 1 : FAIL : Failed to write external initializers to file"

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise ort_state.Fail(message)

    monkeypatch.setattr(precision, "optimize_graph", full_disk)
    assert main(["export", str(tiny_model_dir), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"llmrank export: error: export failed while optimising the graph: Fail: {message}"
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError) as failed:
        export_onnx(str(tiny_model_dir), tmp_path / "out")
    assert isinstance(failed.value.__cause__, ort_state.Fail)


def test_other_errors_are_not_wrapped(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(precision, "optimize_graph", bug)
    with pytest.raises(TypeError, match="a bug"):
        main(["export", str(tiny_model_dir), str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []


def fake_export(monkeypatch: pytest.MonkeyPatch, out: Path, label_ids: list[int]) -> None:
    """Make ``llmrank export`` write nothing and report an export of ``label_ids`` in ``out``."""
    out.mkdir()
    metadata = SimpleNamespace(
        source_model="m",
        precision="fp32",
        attention="plain",
        template={"name": "first-judge"},
        label_ids=label_ids,
    )
    monkeypatch.setattr("haystack_llmrank.export.export_onnx", lambda *a, **kw: out)
    monkeypatch.setattr("haystack_llmrank.export.read_metadata", lambda *a, **kw: metadata)


@pytest.mark.parametrize(("label_ids", "counted"), [([42], "1 label"), ([7, 8], "2 labels")])
def test_cli_export_counts_the_labels_in_words(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    label_ids: list[int],
    counted: str,
) -> None:
    """A vote export scores one label: its line said "1 labels"."""
    out = tmp_path / "out"
    fake_export(monkeypatch, out, label_ids)
    assert main(["export", "m", str(out)]) == 0
    assert f"template 'first-judge', {counted}) to {out} in" in capsys.readouterr().out


def test_cli_export_hint_is_a_shell_word_for_a_folder_with_a_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pasted, the hint split such a folder in two: "unrecognized arguments"."""
    out = tmp_path / "my export"
    fake_export(monkeypatch, out, [42])
    assert main(["export", "m", str(out)]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert shlex.split(hint)[-2:] == ["--model", str(out)]
