"""examples/gpu_folds.sh, run with training and scoring faked: what it does with failures,
with earlier runs' output and with splits whose trained and scored held-out queries differ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

SPLITS = {"s1": ["q1", "q2"], "s2": ["q3"], "all": []}
"""Held-out queries of each split: s1 and s2 are folds, all holds none out."""

STUB = """#!/usr/bin/env bash
# Python for gpu_folds.sh: llmrank train and heldout_eval.py faked, everything else real.
if [[ "$1" == -c && "$2" == *"cli import main"* ]]; then
    shift 2
    [[ -n "${FAIL_TRAINING:-}" && "$*" == *"$FAIL_TRAINING"* ]] && { echo failed >&2; exit 1; }
    while (($#)); do [[ "$1" == --output ]] && output="$2"; shift; done
    mkdir -p "$output/checkpoint/model" && echo '{}' >"$output/training.json"
    exit 0
fi
[[ "$1" == -c && "$2" == *Reranker* ]] && exit 0
[[ "$1" == examples/heldout_eval.py ]] && { shift; exec PYTHON FAKE_EVAL "$@"; }
exec PYTHON "$@"
"""

FAKE_EVAL = '''"""A heldout_eval.py record of every held-out query, in each order (only the
first where $PARTIAL is in the record's name)."""
import argparse
import json
import os

parser = argparse.ArgumentParser()
for option in ("--split", "--json", "--strategy", "--vote"):
    parser.add_argument(option)
parser.add_argument("--orders", nargs="+")
parser.add_argument("--order-invariant", action="store_true")
args, _ = parser.parse_known_args()
queries = json.load(open(args.split))["validation"]
partial = os.environ.get("PARTIAL")
orders = args.orders[:1] if partial and partial in args.json else args.orders
per_query = {f"reranked_{order}": {q: 0.6 for q in queries} for order in orders}
settings = {"strategy": args.strategy, "vote": args.vote, "order_invariant": args.order_invariant}
record = {**settings, "per_query": {"first_stage": {q: 0.5 for q in queries}, **per_query}}
open(args.json, "w").write(json.dumps(record))
'''


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the scripts with SPLITS' split files, their packed training data, the
    DL19 stand-in and the Python stand-in."""
    repo = tmp_path / "repo"
    (repo / "examples" / "results").mkdir(parents=True)
    for script in ("gpu_check.sh", "gpu_folds.sh", "fold_summary.py"):
        shutil.copy(PROJECT_ROOT / "examples" / script, repo / "examples" / script)
    for split, validation in SPLITS.items():
        text = json.dumps({"train": [], "validation": validation})
        (repo / "examples" / "results" / f"split-{split}.json").write_text(text)
    pack(repo, SPLITS)
    (tmp_path / "dl19").mkdir()
    for name in ("candidates.jsonl", "qrels.txt"):
        (tmp_path / "dl19" / name).write_text("")
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL)
    stub = tmp_path / "python"
    stub.write_text(
        STUB.replace("FAKE_EVAL", str(tmp_path / "fake_eval.py")).replace("PYTHON", sys.executable)
    )
    stub.chmod(0o755)
    return repo


def pack(repo: Path, validation: dict[str, list[str]]) -> None:
    """.whl/train-data.tgz as prepare packs it, each ict20 split holding out ``validation``."""
    runs = repo / "runs"
    runs.mkdir(exist_ok=True)
    (runs / "dl19-minilm.run").write_text("")
    for split, held in validation.items():
        ict = runs / f"ict20-{split}"
        ict.mkdir(exist_ok=True)
        for name in ("candidates.jsonl", "qrels.txt", "teacher.run"):
            (ict / name).write_text("")
        (ict / "split.json").write_text(json.dumps({"train": [], "validation": held}))
    (repo / ".whl").mkdir(exist_ok=True)
    with tarfile.open(repo / ".whl" / "train-data.tgz", "w:gz") as archive:
        archive.add(runs, arcname="runs")
    shutil.rmtree(runs)


def folds(repo: Path, splits: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``folds`` of gpu_folds.sh on ``splits`` with the first recipe, on the CPU, into
    ``out`` beside the repo."""
    tmp = repo.parent
    script = f"source examples/gpu_folds.sh; DATA={tmp}/data; WORK={tmp}/work; folds"
    variables = {
        "PYTHON": str(tmp / "python"),
        "SPLITS": splits,
        "RECIPES": "first",
        "DEVICE": "cpu",
        "LLMRANK_DL19_DIR": str(tmp / "dl19"),
        "OUT": str(tmp / "out"),
    }
    return subprocess.run(
        ["bash", "-c", script],
        cwd=repo,
        env={**os.environ, **variables, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def runs(repo: Path) -> list[Path]:
    """The folders the runs wrote into $OUT, oldest first."""
    return sorted((repo.parent / "out").iterdir())


def records(run: Path) -> dict[str, dict[str, object]]:
    """The JSON files under records/ in ``run``'s results.tgz, by name."""
    with tarfile.open(run / "results.tgz") as archive:
        return {
            Path(member.name).name: json.load(archive.extractfile(member))  # type: ignore[arg-type]
            for member in archive.getmembers()
            if member.name.startswith("records/") and member.name.endswith(".json")
        }


def test_prepare_refuses_to_pack_without_every_input(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "examples").mkdir(parents=True)
    for script in ("gpu_check.sh", "gpu_folds.sh"):
        shutil.copy(PROJECT_ROOT / "examples" / script, repo / "examples" / script)
    (repo / "runs" / "ict20-seed0").mkdir(parents=True)
    for name in ("candidates.jsonl", "qrels.txt", "teacher.run", "split.json"):
        (repo / "runs" / "ict20-seed0" / name).write_text("")
    done = subprocess.run(
        ["bash", "-c", "source examples/gpu_folds.sh; prepare_data; echo rc=$?"],
        cwd=repo,
        env={**os.environ, "PYTHON": "false", "SPLITS": "seed0 fold1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "rc=1" in done.stdout
    assert "missing runs/dl19-minilm.run" in done.stderr
    assert "missing runs/ict20-fold1/candidates.jsonl" in done.stderr
    assert "missing runs/ict20-seed0" not in done.stderr
    assert not (repo / ".whl" / "train-data.tgz").exists()


def test_every_split_scored_pools_into_a_summary_named_by_its_splits(repo: Path) -> None:
    done = folds(repo, "s1 s2 all")
    assert done.returncode == 0, done.stderr
    [run] = runs(repo)
    assert run.name.endswith("-s1-s2-all-first")
    written = records(run)
    assert set(written) >= {"s1-first-votes.json", "s2-first-sliding.json"}
    assert not any(name.startswith("all-") for name in written)  # all is trained, not scored
    summary = written["out-of-fold-first-votes-s1-s2.json"]
    assert summary["queries"] == 3
    assert "--expect-queries 3" in str(summary["command"])
    assert {"out-of-fold-first-sliding-s1-s2.json"} <= set(written)
    packed = {path.name for path in run.iterdir()}
    assert {"adapter-s1-first.tar.part-0", "adapter-all-first.tar.part-0"} <= packed


def test_a_failed_training_fails_the_run_after_packing_the_others(repo: Path) -> None:
    done = folds(repo, "s1 s2", FAIL_TRAINING="ict20-s2")
    assert done.returncode == 1
    assert "s2-first failed (logs/s2-first.log)" in done.stderr
    [run] = runs(repo)
    written = records(run)
    assert "s1-first-votes.json" in written
    assert not any(name.startswith("out-of-fold") for name in written)
    packed = {path.name for path in run.iterdir()}
    assert "adapter-s1-first.tar.part-0" in packed
    assert not any("s2" in name for name in packed)


def test_a_record_without_every_order_fails_the_run_and_its_summary(repo: Path) -> None:
    done = folds(repo, "s1 s2", PARTIAL="s2-first-sliding")
    assert done.returncode == 1
    assert "s2 first-sliding: no complete record (bm25 reversed)" in done.stderr
    written = records(runs(repo)[0])
    assert "out-of-fold-first-votes-s1-s2.json" in written
    assert not any(name.startswith("out-of-fold-first-sliding") for name in written)


def test_a_split_trained_on_other_held_out_queries_is_not_scored(repo: Path) -> None:
    pack(repo, {**SPLITS, "s1": ["q1", "q9"]})
    done = folds(repo, "s1 s2")
    assert done.returncode == 1
    assert "['q9'] only in the first, ['q2'] only in the second" in done.stderr
    assert "s1: trained and scored held-out queries differ, not evaluated" in done.stderr
    written = records(runs(repo)[0])
    assert not any(name.startswith(("s1-", "out-of-fold")) for name in written)
    assert "s2-first-votes.json" in written


def test_a_rerun_writes_beside_the_earlier_runs(repo: Path) -> None:
    assert folds(repo, "s1 s2").returncode == 0
    [first] = runs(repo)
    archive = (first / "results.tgz").read_bytes()
    assert folds(repo, "s2").returncode == 0
    assert [run.name.split("-", 1)[1] for run in runs(repo)] == ["s1-s2-first", "s2-first"]
    assert (first / "results.tgz").read_bytes() == archive
    written = records(runs(repo)[1])
    assert not any(name.startswith("out-of-fold") for name in written)  # one split: no pool
