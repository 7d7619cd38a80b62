"""``examples/pointwise_check.py``: training groups, their pairwise loss, and the prompt."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from support import import_example

from haystack_llmrank.data import Candidate, QueryCandidates


@pytest.fixture(scope="module")
def check() -> Any:
    return import_example("pointwise_check")


def test_groups_key_each_candidate_by_grade_then_teacher(check: Any) -> None:
    query = QueryCandidates(
        "q", "fleas", tuple(Candidate(f"d{i}", f"text {i}", 0.0) for i in range(4))
    )
    [(text, pool)] = check.training_groups(
        [query], {"q": {"d1": 2}}, {"q": {"d0": 0.5, "d2": 0.9}}, pool=3
    )
    assert text == "fleas"
    assert pool == [("text 0", (0, 0.5)), ("text 1", (2, -math.inf)), ("text 2", (0, 0.9))]


def test_ranknet_is_the_mean_logistic_loss_over_ordered_pairs(check: Any) -> None:
    scores = torch.tensor([1.0, 3.0, 0.0])
    keys = [(0, 0.5), (2, 0.0), (0, 0.5)]  # 1 above 0 and 2; 0 and 2 tie
    expected = (math.log1p(math.exp(1.0 - 3.0)) + math.log1p(math.exp(0.0 - 3.0))) / 2
    assert check.ranknet(scores, keys).item() == pytest.approx(expected, rel=1e-6)
    assert check.ranknet(scores, [(1, 0.0)] * 3) is None


def test_prompt_cuts_the_passage_to_its_first_words(check: Any) -> None:
    text = check.prompt("q", "one two  three\nfour", 3)
    assert text == "Query: q\nPassage: one two three\nIs the passage relevant to the query? Answer:"


def test_groups_fix_the_training_budget_whatever_the_clock(
    check: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        {
            "qid": qid,
            "query": f"query {qid}",
            "candidates": [
                {"docid": f"{qid}-{i}", "score": 10.0 - i, "text": f"passage {i} of {qid}"}
                for i in range(4)
            ],
        }
        for qid in ("a", "b", "c")
    ]
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{q} 0 {q}-2 2\n{q} 0 {q}-0 1\n" for q in "abc"), encoding="utf-8")
    teacher = tmp_path / "teacher.run"
    teacher.write_text(
        "".join(f"{q} Q0 {q}-{i} {i + 1} {1 - i / 10} t\n" for q in "abc" for i in range(4)),
        encoding="utf-8",
    )
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "validation": ["c"]}), encoding="utf-8")
    record = tmp_path / "record.json"
    command = [str(candidates), "--qrels", str(qrels), "--teacher", str(teacher)]
    command += ["--split", str(split), "--model", str(tiny_model_dir), "--group", "3"]
    command += ["--groups", "5", "--minutes", "0", "--threads", "1", "--json", str(record)]
    monkeypatch.setattr(sys, "argv", ["pointwise_check.py", *command])
    check.main()
    history = json.loads(record.read_text(encoding="utf-8"))["history"]
    assert [entry["groups"] for entry in history] == [0, 5]  # --minutes 0 did not stop it
    assert history[-1]["passages"] == 15
