"""``examples/vote_check.py``: one window's FIRST readout and passage votes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support import PROJECT_ROOT, import_example, make_tiny_llama

from haystack_llmrank.labels import resolve_label_ids
from haystack_llmrank.prompt import FIRST_ECHO_TEMPLATE, PromptBuilder, get_template
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer


@pytest.mark.parametrize(
    "template", ["first-echo", str(PROJECT_ROOT / "examples" / "templates" / "first-judge.json")]
)
def test_window_scores_are_the_label_readout_and_the_vote_at_each_line_end(
    smollm2_tokenizer: Any, template: str
) -> None:
    check = import_example("vote_check")
    model = make_tiny_llama(len(smollm2_tokenizer), seed=3)
    builder = PromptBuilder(smollm2_tokenizer, get_template(template), max_prompt_tokens=4096)
    labels = resolve_label_ids(smollm2_tokenizer, FIRST_ECHO_TEMPLATE.labels)
    yes = smollm2_tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
    texts = ["fleas bite", "cats purr", "dogs bark"]
    first, votes = check.window_scores(model, builder, labels, yes, "fleas", texts)
    prompt = builder.build("fleas", texts)
    scorer = TorchLabelScorer(model, labels, pad_token_id=smollm2_tokenizer.pad_token_id)
    assert first == pytest.approx(scorer.score([prompt.token_ids])[0][:3].tolist(), abs=1e-4)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt.token_ids])).logits[0]
    ends = builder.passage_end_tokens(prompt, "fleas", 3)
    assert votes == pytest.approx([logits[e, yes].item() for e in ends], abs=1e-4)
    assert len(set(votes)) == 3


def test_windowed_votes_are_each_windows_own_votes(smollm2_tokenizer: Any) -> None:
    check = import_example("vote_check")
    model = make_tiny_llama(len(smollm2_tokenizer), seed=3)
    builder = PromptBuilder(smollm2_tokenizer, FIRST_ECHO_TEMPLATE, max_prompt_tokens=4096)
    labels = resolve_label_ids(smollm2_tokenizer, FIRST_ECHO_TEMPLATE.labels)
    yes = smollm2_tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
    texts = ["fleas bite", "cats purr", "dogs bark", "fleas jump", "birds sing"]

    def votes_of(window: list[str]) -> tuple[list[float], list[float]]:
        result: tuple[list[float], list[float]] = check.window_scores(
            model, builder, labels, yes, "fleas", window
        )
        return result

    def votes(window: list[str]) -> list[float]:
        return votes_of(window)[1]

    whole = check.windowed_votes(votes_of, texts, 5)
    assert whole == pytest.approx(votes(texts), abs=1e-5)
    pairs = check.windowed_votes(votes_of, texts, 2)
    assert pairs == pytest.approx(votes(texts[:2]) + votes(texts[2:4]) + votes(texts[4:]), abs=1e-5)
    alone = check.windowed_votes(votes_of, texts, 1)
    assert alone == pytest.approx([v for t in texts for v in votes([t])], abs=1e-5)
    assert alone != pytest.approx(whole, abs=1e-3)  # the other passages change a vote


def test_isolation_lets_each_passage_line_see_the_instructions_and_itself() -> None:
    check = import_example("vote_check")
    # tokens 0-2 instructions, lines at 3-4 and 5-7, 8-9 the rest
    mask, positions = check.isolation(10, [(3, 4), (5, 7)])
    seen = (mask[0, 0] == 0).int().tolist()
    assert seen[4] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert seen[6] == [1, 1, 1, 0, 0, 1, 1, 0, 0, 0]  # not the first line
    assert seen[9] == [1] * 10
    assert seen[2] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 6, 7]]
    with pytest.raises(ValueError, match="each passage line's first token"):
        check.isolation(10, [(-1, 4), (5, 7)])


def test_isolated_votes_do_not_depend_on_the_other_passages(smollm2_tokenizer: Any) -> None:
    check = import_example("vote_check")
    model = make_tiny_llama(len(smollm2_tokenizer), seed=3)
    template = get_template(str(PROJECT_ROOT / "examples" / "templates" / "first-judge.json"))
    builder = PromptBuilder(smollm2_tokenizer, template, max_prompt_tokens=4096)
    labels = resolve_label_ids(smollm2_tokenizer, template.labels)
    yes = smollm2_tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
    texts = ["fleas bite", "cats purr", "dogs bark"]
    other = [texts[0], "an unrelated and much longer line about the weather", texts[2]]
    first, votes = check.window_scores(model, builder, labels, yes, "fleas", texts, isolated=True)
    first_b, votes_b = check.window_scores(
        model, builder, labels, yes, "fleas", other, isolated=True
    )
    assert [votes[0], votes[2]] == pytest.approx([votes_b[0], votes_b[2]], abs=1e-5)
    assert votes[1] != pytest.approx(votes_b[1], abs=1e-3)
    assert first != pytest.approx(first_b, abs=1e-3)  # the readout sees every passage
    _, in_context = check.window_scores(model, builder, labels, yes, "fleas", texts)
    _, in_context_b = check.window_scores(model, builder, labels, yes, "fleas", other)
    assert in_context[2] != pytest.approx(in_context_b[2], abs=1e-3)  # without isolation
