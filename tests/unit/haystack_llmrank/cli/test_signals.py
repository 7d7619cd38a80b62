"""SIGTERM ends a command like Ctrl-C does, running its cleanup; ``serve`` keeps its own."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from haystack_llmrank.cli import export, main, serve
from haystack_llmrank.export import onnx_folder

received: list[int] = []


def record(signum: int, frame: FrameType | None) -> None:
    received.append(signum)


@pytest.fixture
def recording() -> Iterator[None]:
    """SIGTERM only recorded, so that a command that ignores it does not end the tests."""
    received.clear()
    previous = signal.signal(signal.SIGTERM, record)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_ends_the_command_with_143_after_its_cleanup(
    recording: None, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def terminated(*args: Any, **kwargs: Any) -> Any:
        assert list(tmp_path.rglob(".*"))  # the export's staging folder
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        raise AssertionError("SIGTERM did not end the command")

    monkeypatch.setattr(onnx_folder, "load_causal_lm", terminated)
    assert main(["export", str(tiny_model_dir), str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert received == []
    assert signal.getsignal(signal.SIGTERM) is record


def test_serve_keeps_its_own_handling_and_others_get_theirs_only_while_they_run(
    recording: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def run(args: Any) -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        return 0

    monkeypatch.setattr(serve, "run", run)
    assert main(["serve", "--no-auth"]) == 0
    assert seen == [record]
    monkeypatch.setattr(export, "run", run)
    assert main(["export", "default", "out"]) == 0
    assert seen[1] not in (record, signal.SIG_DFL)
    assert signal.getsignal(signal.SIGTERM) is record


def test_sigterm_ends_the_command_with_143_whatever_error_a_library_raised_for_it(
    recording: None,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library that turns the interruption into its own error ended the command with an
    error and status 2."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt as exc:
            raise RuntimeError("interrupted") from exc
        raise AssertionError("SIGTERM did not end the command")

    monkeypatch.setattr(onnx_folder, "load_causal_lm", wrapped)
    assert main(["export", str(tiny_model_dir), str(tmp_path / "out")]) == 128 + signal.SIGTERM
    assert "error" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # the next command's errors are its own again
    assert main(["export", str(tmp_path / "no-model"), str(tmp_path / "out")]) == 2


def test_a_command_run_outside_the_main_thread_leaves_sigterm_alone(
    recording: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    codes: list[int] = []
    args = ["export", "no/such", str(tmp_path / "out"), "--opset", "1"]
    thread = threading.Thread(target=lambda: codes.append(main(args)))
    thread.start()
    thread.join()
    assert codes == [2]
    assert "opset 1 is not supported" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is record
