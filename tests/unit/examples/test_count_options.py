"""The example scripts refuse a count below 1 as they parse their options."""

from __future__ import annotations

import sys

import pytest
from support import import_example

COUNTS = [
    ("dl19_haystack", "--queries"),
    ("dl19_haystack", "--candidates"),
    ("fold_summary", "--resamples"),
    ("fold_summary", "--expect-queries"),
    ("haystack_opensearch_pipeline", "--retrieve-k"),
    ("haystack_opensearch_pipeline", "--top-k"),
    ("heldout_eval", "--depth"),
    ("heldout_eval", "--threads"),
    ("heldout_eval", "--window-size"),
    ("heldout_eval", "--step"),
    ("inverse_cloze", "--per-query"),
    ("inverse_cloze", "--depth"),
    ("onnx_variants", "--windows"),
    ("onnx_variants", "--threads"),
    ("relevance_probe", "--depth"),
    ("relevance_probe", "--max-passage-words"),
    ("relevance_probe", "--layer-step"),
    ("relevance_probe", "--threads"),
    ("vote_check", "--depth"),
    ("vote_check", "--words"),
    ("vote_check", "--threads"),
    ("vote_check", "--vote-windows"),
    ("vote_position_bias", "--depth"),
    ("vote_position_bias", "--threads"),
]


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize(("script", "option"), COUNTS)
def test_a_count_below_one_is_refused_before_any_work(
    script: str,
    option: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a negative depth or query count slices off the end of the data instead
    monkeypatch.setattr(sys, "argv", [f"{script}.py", option, value])
    with pytest.raises(SystemExit) as exit_info:
        import_example(script).main()
    assert exit_info.value.code == 2
    expected = f"argument {option}: expected a positive integer, got {int(value)}"
    assert expected in capsys.readouterr().err
