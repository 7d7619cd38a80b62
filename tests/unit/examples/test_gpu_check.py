"""examples/gpu_check.sh's wheel handling, which must stop on a bad part before a GPU run."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from support import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def repo_with_a_wheel(tmp_path: Path, recorded: bytes) -> Path:
    """A copy of the scripts beside one wheel part holding ``hello``, whose manifest records
    the SHA-256 of ``recorded``."""
    repo = tmp_path / "repo"
    (repo / "examples").mkdir(parents=True)
    for script in ("gpu_check.sh", "gpu_folds.sh"):
        shutil.copy(PROJECT_ROOT / "examples" / script, repo / "examples" / script)
    parts = repo / ".whl" / "parts"
    parts.mkdir(parents=True)
    (parts / "a.whl.part-00").write_bytes(b"hello\n")
    digest = hashlib.sha256(recorded).hexdigest()
    (repo / ".whl" / "MANIFEST").write_text(f"{digest} a.whl 1\n")
    return repo


def run(repo: Path, script: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` in bash after sourcing gpu_check.sh (from ``cwd``, the repo by default)."""
    source = "examples/gpu_check.sh" if cwd is None else repo / "examples" / "gpu_check.sh"
    return subprocess.run(
        ["bash", "-c", f"source {source}; set +e; {script}"],
        cwd=cwd or repo,
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_part_that_fails_its_checksum_stops_the_install(tmp_path: Path) -> None:
    repo = repo_with_a_wheel(tmp_path, b"something else\n")
    done = run(repo, "f() { install_wheels || return $?; echo installed; }; f; echo rc=$?")
    assert "checksum mismatch: a.whl" in done.stderr
    assert "installed" not in done.stdout
    assert "rc=4" in done.stdout


def test_a_failed_pip_install_stops_the_check(tmp_path: Path) -> None:
    repo = repo_with_a_wheel(tmp_path, b"hello\n")
    done = run(repo, "PYTHON=false; f() { install_wheels || return $?; echo ok; }; f; echo rc=$?")
    assert "ok" not in done.stdout.split()
    assert "rc=5" in done.stdout


def test_sourced_from_elsewhere_it_works_from_the_repo_root(tmp_path: Path) -> None:
    repo = repo_with_a_wheel(tmp_path, b"hello\n")
    assert run(repo, "pwd", cwd=tmp_path).stdout.strip() == str(repo)
    assert run(repo, "pwd", cwd=repo / "examples").stdout.strip() == str(repo)


def test_a_wheel_with_a_missing_part_does_not_hold_back_the_complete_ones(tmp_path: Path) -> None:
    repo = repo_with_a_wheel(tmp_path, b"hello\n")  # a.whl: complete, one part
    parts = repo / ".whl" / "parts"
    (parts / "b.whl.part-00").write_bytes(b"half")  # b.whl: its second part has not come
    (parts / "c.whl.part-00").write_bytes(b"whole\n")  # c.whl: complete, after b.whl
    manifest = repo / ".whl" / "MANIFEST"
    digest = hashlib.sha256(b"half and half").hexdigest()
    whole = hashlib.sha256(b"whole\n").hexdigest()
    manifest.write_text(manifest.read_text() + f"{digest} b.whl 2\n{whole} c.whl 1\n")
    done = run(repo, "join_wheels joined; echo rc=$?")
    assert "rc=3" in done.stdout
    assert "missing .whl/parts/b.whl.part-01" in done.stderr
    assert sorted(p.name for p in (repo / "joined").iterdir()) == ["a.whl", "c.whl"]
    assert (repo / "joined" / "c.whl").read_bytes() == b"whole\n"
