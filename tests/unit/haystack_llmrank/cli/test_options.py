"""The argparse types of :mod:`haystack_llmrank.cli.options`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from haystack_llmrank.cli.options import existing_file


def test_existing_file_takes_a_file(tmp_path: Path) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text("")
    assert existing_file(str(path)) == path


def test_existing_file_refuses_a_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.run")
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        existing_file(missing)
    assert str(refused.value) == f"no such file: {missing!r}"


def test_existing_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        existing_file(str(tmp_path))
    assert str(refused.value) == f"no such file: {str(tmp_path)!r}"
