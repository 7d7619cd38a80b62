"""``examples/relevance_probe.py``: hidden states at each passage's end, and the ridge read-out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import import_example

from haystack_llmrank.data import Candidate, QueryCandidates
from haystack_llmrank.prompt import FIRST_ECHO_TEMPLATE, PromptBuilder


@pytest.fixture(scope="module")
def probe() -> Any:
    return import_example("relevance_probe")


PASSAGES = [
    "Berlin is in Germany.",
    "A passage that cites [B] and [4] and\nspans two lines.",
    "Paris is in France.",
]


def test_a_passage_state_depends_on_its_own_text_and_not_on_later_ones(
    probe: Any, tiny_model: Any, smollm2_tokenizer: Any
) -> None:
    builder = PromptBuilder(smollm2_tokenizer, FIRST_ECHO_TEMPLATE, max_prompt_tokens=4096)
    states = probe.window_features(tiny_model, builder, "q", PASSAGES)
    layers = tiny_model.config.num_hidden_layers + 1
    assert states.shape == (3, layers, tiny_model.config.hidden_size)
    changed = probe.window_features(tiny_model, builder, "q", [*PASSAGES[:2], "Rome is in Italy."])
    np.testing.assert_allclose(changed[:2], states[:2], atol=1e-5)
    assert not np.allclose(changed[2, -1], states[2, -1], atol=1e-3)


def test_the_read_out_ranks_by_a_feature_that_carries_the_grade(probe: Any) -> None:
    rng = np.random.default_rng(0)
    queries, qrels, features = {}, {}, {}
    for q in range(8):
        qid = f"q{q}"
        grades = rng.integers(0, 4, size=12)
        queries[qid] = QueryCandidates(
            qid, "query", tuple(Candidate(f"{qid}-d{i}", "text") for i in range(12))
        )
        qrels[qid] = {f"{qid}-d{i}": int(g) for i, g in enumerate(grades)}
        noise = rng.normal(size=(12, 2, 5))
        noise[:, 1, 3] = grades + q  # layer 1, dimension 3: the grade, offset per query
        features[qid] = noise
    train, held = [f"q{q}" for q in range(6)], ["q6", "q7"]
    assert probe.probe_ndcg(features, queries, qrels, train, held, 1, 1.0) == pytest.approx(1.0)
    assert probe.probe_ndcg(features, queries, qrels, train, held, 0, 1.0) < 0.95


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--folds", "5"], "--folds must be between 2 and the 3 training queries"),
        (["--folds", "1"], "--folds must be between 2"),
        (["--folds", "2", "--layer-step", "3"], "--layer-step 3 probes no layer of the model's 2"),
    ],
)
def test_settings_the_split_or_the_model_cannot_meet_are_refused(
    probe: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b", "c"], "validation": ["d"]}))
    argv = ["relevance_probe.py", "--model", str(tiny_model_dir), "--split", str(split)]
    monkeypatch.setattr(sys, "argv", [*argv, *options, "--json", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit) as exited:
        probe.main()
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
