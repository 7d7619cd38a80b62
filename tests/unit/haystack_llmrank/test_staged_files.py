"""Folder outputs written whole or not at all: the swap, its undo, stale staging folders."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haystack_llmrank.staged_files import (
    STAGING_PREFIX,
    check_output_folder,
    clear_stale_staging,
    staged_folder,
)


def contents(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(folder.iterdir())}


def write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_written_files_replace_the_named_ones_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    write(folder, **{"a": "old a", "gone": "old", "meta": "old meta", "README": "mine"})
    inode = folder.stat().st_ino
    with staged_folder(folder, replaces=["a", "gone", "meta"], last="meta") as staging:
        assert staging.parent.parent == folder
        write(staging, a="new a", b="new b", meta="new meta")
    assert contents(folder) == {"README": "mine", "a": "new a", "b": "new b", "meta": "new meta"}
    assert folder.stat().st_ino == inode


def test_last_is_moved_out_first_and_in_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    write(folder, a="old", meta="old")
    moves: list[tuple[str, str]] = []
    replace = Path.replace

    def recording(self: Path, target: Path) -> Path:
        moves.append((self.parent.name, self.name))
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", recording)
    with staged_folder(folder, replaces=["a", "meta"], last="meta") as staging:
        write(staging, meta="new", a="new", z="new")
    assert moves == [("out", "meta"), ("out", "a"), ("new", "a"), ("new", "z"), ("new", "meta")]


def test_a_failed_move_puts_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    write(folder, a="old a", meta="old meta", README="mine")
    replace = Path.replace

    def failing(self: Path, target: Path) -> Path:
        if self.parent.name == "new" and self.name == "b":
            raise OSError(16, "Device or resource busy")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with (
        pytest.raises(OSError, match="busy"),
        staged_folder(folder, replaces=["a", "meta"], last="meta") as staging,
    ):
        write(staging, a="new a", b="new b", meta="new meta")
    assert contents(folder) == {"README": "mine", "a": "old a", "meta": "old meta"}


def test_a_failed_block_removes_the_staging_and_the_folders_it_made(tmp_path: Path) -> None:
    folder = tmp_path / "made" / "out"

    def failing() -> None:
        with staged_folder(folder, replaces=[], last="m") as staging:
            write(staging, m="new")
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        failing()
    assert list(tmp_path.iterdir()) == []


def test_a_name_taken_by_an_entry_not_replaced_fails_the_swap(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    write(folder, a="mine")
    with (
        pytest.raises(FileExistsError, match=r"\['a'\]"),
        staged_folder(folder, replaces=[], last="m") as staging,
    ):
        write(staging, a="new", m="new")
    assert contents(folder) == {"a": "mine"}


def test_staging_of_ended_processes_is_removed_and_of_running_ones_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid = dead_pid()
    stale = tmp_path / f"{STAGING_PREFIX}{pid}-abc"
    (stale / "new").mkdir(parents=True)
    write(stale / "new", **{"model.onnx": "half"})
    mine = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-def"  # an earlier run's, with this pid
    mine.mkdir()
    other = tmp_path / f".{STAGING_PREFIX.strip('.')}x-1"  # not of this naming
    other.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            live = tmp_path / f"{STAGING_PREFIX}{running.pid}-ghi"
            live.mkdir()
            with caplog.at_level(logging.WARNING):
                assert clear_stale_staging(tmp_path) == [live]
        finally:
            running.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    assert f"removing {stale}, left by process {pid}, which no longer runs" in caplog.text


def test_check_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_output_folder(tmp_path)
    check_output_folder(tmp_path / "new" / "deeper")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="it is not a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        check_output_folder(tmp_path / "file" / "out")
    refused = tmp_path / "read-only"
    refused.mkdir()
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != refused and access(path, mode)
    )
    with pytest.raises(PermissionError, match=f"into {refused}/out: folder {refused} is not wr"):
        check_output_folder(refused / "out")
