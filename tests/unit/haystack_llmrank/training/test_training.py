"""FIRST fine-tuning on tiny random models: targets, sampling, loss, LoRA, save/load, export."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import PROJECT_ROOT, fit_toy, lora_gradients, make_tiny_llama, small_config

from haystack_llmrank.data import Candidate, QueryCandidates
from haystack_llmrank.labels import ALPHABETIC_LABELS, resolve_label_ids
from haystack_llmrank.model_templates import recorded_template
from haystack_llmrank.models import load_causal_lm, resolve_model
from haystack_llmrank.prompt import (
    FIRST_ECHO_TEMPLATE,
    FIRST_NUMERIC_TEMPLATE,
    FIRST_TEMPLATE,
    PromptBuilder,
    PromptTemplate,
)
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from haystack_llmrank.training import (
    FirstTrainer,
    LoraSettings,
    TrainConfig,
    TrainingQuery,
    TrainingWindow,
    WindowEncoder,
    WindowLosses,
    WindowSampling,
    batch_losses,
    chance_ranknet,
    training_queries,
    weighted_ranknet,
    window_losses,
)
from haystack_llmrank.training.adapters import causal_lm, make_trainable
from haystack_llmrank.training.losses import ranknet_scale
from haystack_llmrank.training.trainer import _schedule

TEXTS = (
    "Fleas live on cats and dogs.",
    "The flea life cycle has four stages: egg, larva, pupa and adult.",
    "Roman roads connected the provinces.",
    "Adult fleas live two to three months.",
    "The stock market closed higher.",
    "Flea eggs hatch within two weeks.",
)


def toy_query(qid: str = "q1") -> QueryCandidates:
    return QueryCandidates(
        qid,
        "how long is the life cycle of a flea",
        tuple(Candidate(f"d{i}", text, float(10 - i)) for i, text in enumerate(TEXTS)),
    )


TOY_QRELS = {"q1": {"d1": 3, "d3": 2, "d5": 2, "d0": 1, "d2": 0}}


def toy_trainer(tokenizer: Any, output_dir: Path, **changes: Any) -> FirstTrainer:
    """A trainer of a tiny Llama with :func:`small_config` and ``changes``."""
    return FirstTrainer(
        make_tiny_llama(len(tokenizer), seed=4),
        tokenizer,
        small_config(**changes),
        base_model="x",
        output_dir=output_dir,
    )


# --- targets and sampling --------------------------------------------------------------------


def test_target_order_uses_grade_then_teacher_then_first_stage_rank() -> None:
    query = TrainingQuery(
        "q", "q", ("a", "b", "c", "d", "e"), (1, 2, 1, 1, 0), (0.1, 0.0, 0.5, float("nan"), 0.9)
    )
    # grade 2 first; among grade 1: teacher 0.5 > 0.1 > no teacher score; grade 0 last.
    assert query.target_order([0, 1, 2, 3, 4]) == [1, 2, 0, 3, 4]
    tied = TrainingQuery("q", "q", ("a", "b", "c"), (1, 1, 1), (float("nan"),) * 3)
    assert tied.target_order([2, 0, 1]) == [0, 1, 2]
    # negative scores (a cross-encoder's logits): the unscored passage still comes last
    logits = TrainingQuery("q", "q", ("a", "b", "c", "d"), (0,) * 4, (-1, -3, -2, float("nan")))
    assert logits.target_order([3, 2, 1, 0]) == [0, 2, 1, 3]


def test_training_queries_joins_qrels_and_teacher() -> None:
    [joined] = training_queries(
        [toy_query()], qrels=TOY_QRELS, teacher={"q1": {"d4": 0.7}}, unjudged_grade=0
    )
    assert joined.grades == (1, 3, 0, 2, 0, 2)
    assert joined.teacher[4] == 0.7
    assert all(math.isnan(t) for i, t in enumerate(joined.teacher) if i != 4)


def test_fractional_grades_are_refused_and_whole_ones_of_any_type_kept() -> None:
    fractional = {"q1": {"d0": 0.9, "d1": 0.2, "d2": 1.7, "d3": 2.4}}
    with pytest.raises(
        ValueError, match=r"query q1: the grade of d0 is not an integer: 0.9; qrels grades"
    ):
        training_queries([toy_query()], qrels=fractional)
    with pytest.raises(ValueError, match="the grade of d1 is not an integer: True"):
        training_queries([toy_query()], qrels={"q1": {"d0": 2, "d1": True}})
    whole = {"q1": {"d1": np.int64(3), "d3": 2.0, "d5": 2, "d0": 1, "d2": 0}}
    [joined] = training_queries([toy_query()], qrels=whole)
    assert joined.grades == (1, 3, 0, 2, 0, 2)
    assert all(type(grade) is int for grade in joined.grades)
    # the scores are kept, unrounded, as teacher scores
    [taught] = training_queries([toy_query()], teacher={"q1": fractional["q1"]})
    assert taught.target_order(range(4)) == [3, 2, 0, 1]


def test_training_queries_refuses_what_it_cannot_label() -> None:
    with pytest.raises(ValueError, match="qrels, teacher"):
        training_queries([toy_query()])
    with pytest.raises(ValueError, match="neither judgements nor teacher"):
        training_queries([toy_query("q9")], qrels=TOY_QRELS)


def test_judgements_that_name_no_candidate_are_refused() -> None:
    prefixed = {"q1": {f"D{docid[1:]}": grade for docid, grade in TOY_QRELS["q1"].items()}}
    with pytest.raises(ValueError, match="none of the 5 judged documents is among its query's"):
        training_queries([toy_query()], qrels=prefixed)  # "D1" is not "d1"
    queries = [toy_query(f"q{i}") for i in range(1, 9)]
    qrels = {q.qid: TOY_QRELS["q1"] if q.qid == "q1" else {"x": 1} for q in queries}
    with pytest.raises(
        ValueError, match=r"would be first-stage order: q2, q3, q4, q5, q6 and 2 more"
    ):
        training_queries(queries, qrels=qrels)
    with pytest.raises(ValueError, match=r"first-stage order: q1; check that the docids"):
        training_queries([toy_query()], teacher={"q1": {"D1": 0.5}})


def test_judged_documents_that_were_not_retrieved_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    two = [toy_query(), toy_query("q2")]
    qrels = {"q1": {**TOY_QRELS["q1"], "d9": 3}, "q2": {"x": 2}}
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        # q2's judgements name none of its candidates, but its teacher orders them
        joined = training_queries(two, qrels=qrels, teacher={"q2": {"d4": 0.7}})
    assert [q.grades for q in joined] == [(1, 3, 0, 2, 0, 2), (0,) * 6]
    assert "2 of 7 judged documents are not among their query's candidates" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        training_queries([toy_query()], qrels=TOY_QRELS)
    assert caplog.text == ""


def test_queries_whose_candidates_all_tie_are_refused() -> None:
    judged_zero = {"q1": TOY_QRELS["q1"], "q2": {"d0": 0, "d3": 0}}
    with pytest.raises(ValueError, match=r"all of one grade.*first-stage order: q2; judge"):
        training_queries([toy_query(), toy_query("q2")], qrels=judged_zero)
    every_one = {"q1": {f"d{i}": 1 for i in range(len(TEXTS))}}
    with pytest.raises(ValueError, match="all of one grade"):
        training_queries([toy_query()], qrels=every_one)
    equal = {"q1": {f"d{i}": 0.5 for i in range(len(TEXTS))}}
    with pytest.raises(ValueError, match="all of one grade"):
        training_queries([toy_query()], qrels={"q1": {"d0": 0}}, teacher=equal)
    # a teacher score breaks the tie: the scored candidate comes first
    [taught] = training_queries([toy_query()], qrels={"q1": {"d0": 0}}, teacher={"q1": {"d4": 1}})
    assert taught.target_order(range(len(TEXTS)))[0] == 4


def test_a_teacher_run_that_names_no_candidate_is_refused_or_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    two = [toy_query(), toy_query("q2")]
    qrels = {"q1": TOY_QRELS["q1"], "q2": TOY_QRELS["q1"]}
    prefixed = {q.qid: {"D1": 0.9, "D3": 0.1} for q in two}  # "D1" is not "d1"
    with pytest.raises(ValueError, match="the teacher run scores none of the training queries'"):
        training_queries(two, qrels=qrels, teacher=prefixed)
    with pytest.raises(ValueError, match="the teacher run scores none"):
        training_queries(two, qrels=qrels, teacher={"q9": {"d1": 0.9}})
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        training_queries(two, qrels=qrels, teacher={**prefixed, "q1": {"d1": 0.9}})
    assert (
        "the teacher scores of 1 queries name none of their candidates, so that their ties "
        "fall back to first-stage order: q2" in caplog.text
    )


def test_blank_candidates_are_left_out_of_training_as_rankers_leave_them_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blanked = {1: "", 2: "  \n ", 4: "&nbsp;"}  # what a prompt shows as nothing
    texts = [blanked.get(i, text) for i, text in enumerate(TEXTS)]
    query = QueryCandidates(
        "q1", "flea life", tuple(Candidate(f"d{i}", t) for i, t in enumerate(texts))
    )
    teacher = {"q1": {"d4": 0.9, "d5": 0.5}}
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        joined, _ = training_queries(
            [query, toy_query("q2")], qrels={**TOY_QRELS, "q2": TOY_QRELS["q1"]}, teacher=teacher
        )
    # the judged grade-3 (d1) and grade-0 (d2) blanks are gone, and the teacher's d4
    assert joined.texts == (TEXTS[0], TEXTS[3], TEXTS[5])
    assert joined.grades == (1, 2, 2)
    assert joined.teacher[2] == 0.5
    assert math.isnan(joined.teacher[0])
    assert caplog.text.count("blank candidates") == 1
    assert (
        "3 blank candidates (empty or whitespace) of 1 queries are left out of training, as "
        "rankers leave them out of their windows and rank them last; judged relevant among "
        "them: q1/d1" in caplog.text
    )
    sampling = WindowSampling(min_size=2, max_size=3, pool=3)
    rng = np.random.default_rng(0)
    for window in (sampling.sample(joined, rng) for _ in range(50)):
        assert all(text.strip() for text in window.passages)
    # as a small query is: refused, named, with fewer than 2 candidates with text
    two_blank = QueryCandidates("q3", "q", (Candidate("a", "text"), Candidate("b", " ")))
    with pytest.raises(ValueError, match=r"q3: at least 2 candidates with text .*\(1 blank"):
        training_queries([two_blank], qrels={"q3": {"a": 1}})
    with pytest.raises(ValueError, match="q: the texts at 1 are blank"):
        TrainingQuery("q", "q", ("a", "\t"), (1, 0), (math.nan, math.nan))


def test_a_teacher_run_that_leaves_candidates_unscored_is_counted_and_puts_them_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    three = [toy_query(), toy_query("q2"), toy_query("q3")]
    qrels = {q.qid: {"d5": 2} for q in three}
    full = {f"d{i}": 0.1 * i for i in range(len(TEXTS))}
    # q1's first-stage top two are missing, as from a run over another candidate set
    partial = {"q1": {"d2": 0.1, "d3": 0.9, "d4": 0.5, "d5": 0.0}, "q2": full}
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        first, _, _ = training_queries(three, qrels=qrels, teacher=partial)
    assert (
        "the teacher run leaves 2 candidates of 1 queries unscored; within a grade, each "
        "follows every candidate it scored (in first-stage order among the unscored): "
        "q1 (2 of 6)" in caplog.text
    )
    # q3, which the run lacks, is named as a query whose teacher scores name none
    assert "name none of their candidates, so that their ties fall back to first-stage " in (
        caplog.text
    )
    assert "order: q3\n" in caplog.text
    # the README's rule: grade first; within it the scored by score, then the unscored in
    # first-stage order
    assert first.target_order(range(len(TEXTS))) == [5, 3, 4, 2, 0, 1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        training_queries(three, qrels=qrels, teacher={q.qid: full for q in three})
    assert caplog.text == ""


def test_queries_the_qrels_do_not_judge_are_named_when_a_teacher_trains_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    two = [toy_query(), toy_query("q2")]
    teacher = {q.qid: {f"d{i}": 0.1 * i for i in range(len(TEXTS))} for q in two}
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        joined = training_queries(two, qrels={"Q1": TOY_QRELS["q1"]}, teacher=teacher)
    assert [q.grades for q in joined] == [(0,) * 6] * 2  # "Q1" is not "q1"
    assert "2 of 2 queries have no judgements in the qrels and are trained on teacher" in (
        caplog.text
    )
    assert "q1 and q2" in caplog.text or "q1, q2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        training_queries(two, qrels={"q1": TOY_QRELS["q1"], "q2": TOY_QRELS["q1"]}, teacher=teacher)
        training_queries(two, teacher=teacher)  # no qrels given: nothing to say
    assert caplog.text == ""


def test_fit_warns_of_validation_queries_it_trains_on(
    smollm2_tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from haystack_llmrank.training import Validation

    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    trainer = toy_trainer(smollm2_tokenizer, tmp_path, steps=1)
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        trainer.fit(queries, Validation([toy_query()], TOY_QRELS))
    assert "1 validation queries are also trained on (q1)" in caplog.text


def test_queries_tied_within_the_pool_are_refused_before_any_update(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    # q2's one relevant candidate is the last: a pool of the first 5 holds only zeros
    queries = training_queries(
        [toy_query(), toy_query("q2")], qrels={**TOY_QRELS, "q2": {"d5": 2, "d0": 0}}
    )
    WindowSampling(min_size=3, max_size=5, pool=6).check_targets(queries)
    narrow = WindowSampling(min_size=3, max_size=5, pool=5)
    with pytest.raises(ValueError, match=r"first pool=5 candidates.*first-stage order: q2; raise"):
        narrow.check_targets(queries)
    trainer = toy_trainer(smollm2_tokenizer, tmp_path, sampling=narrow)
    with pytest.raises(ValueError, match="first-stage order: q2"):
        trainer.fit(queries)
    assert trainer.step == 0


def test_a_pool_smaller_than_the_largest_window_is_refused() -> None:
    with pytest.raises(ValueError, match=r"pool \(10\) is smaller than max_size \(20\)"):
        WindowSampling(pool=10)
    WindowSampling(pool=20)


def test_sampled_windows_vary_size_and_order_and_keep_targets_consistent() -> None:
    [query] = training_queries([toy_query()], qrels=TOY_QRELS)
    sampling = WindowSampling(min_size=2, max_size=6, pool=6)
    rng = np.random.default_rng(0)
    windows = [sampling.sample(query, rng) for _ in range(200)]
    assert {len(w.passages) for w in windows} == {2, 3, 4, 5, 6}
    first_positions = {w.passages.index(TEXTS[1]) for w in windows if TEXTS[1] in w.passages}
    assert len(first_positions) == 6  # the best passage is seen at every position
    for window in windows:
        grades = [query.grades[TEXTS.index(window.passages[p])] for p in window.target]
        assert grades == sorted(grades, reverse=True)


def test_mirrored_sampling_adds_the_reversed_window_with_the_same_ranking() -> None:
    [query] = training_queries([toy_query()], qrels=TOY_QRELS)
    sampling = WindowSampling(min_size=3, max_size=6, pool=6, mirrored=True)
    rng = np.random.default_rng(1)
    for _ in range(50):
        window, mirror = sampling.sample_group(query, rng)
        assert mirror.passages == window.passages[::-1]
        assert [mirror.passages[p] for p in mirror.target] == [
            window.passages[p] for p in window.target
        ]
    assert sampling.group_size == 2
    assert len(WindowSampling().sample_group(query, rng)) == 1
    with pytest.raises(ValueError, match="must be even"):
        TrainConfig(grad_accumulation=3, sampling=sampling)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ranknet_weight", "finite number >= 0"),
        ("passage_ranknet_weight", "finite number >= 0"),
        ("pointwise_weight", "finite number >= 0"),
        ("learning_rate", "finite number above 0"),
        ("max_grad_norm", "finite number above 0"),
        ("max_minutes", "finite number above 0"),
        ("min_lr_ratio", "in \\[0, 1\\]"),
    ],
)
def test_non_finite_settings_are_refused(name: str, message: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name} must be .*{message}"):
        small_config(**{name: value})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_sampling_settings_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="one finite, non-negative weight per order"):
        WindowSampling(order_weights=(0.25, 0.25, value))
    with pytest.raises(ValueError, match="contiguous is a probability"):
        WindowSampling(contiguous=value)
    with pytest.raises(ValueError, match="dropout must be in"):
        LoraSettings(dropout=value)


def test_sampling_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="min_size"):
        WindowSampling(min_size=1)
    with pytest.raises(ValueError, match="orders"):
        WindowSampling(orders=("sideways",), order_weights=(1.0,))
    with pytest.raises(ValueError, match="permutation"):
        TrainingWindow("q", "q", ("a", "b"), (0, 0))


# --- the loss --------------------------------------------------------------------------------


def test_weighted_ranknet_matches_a_hand_computed_value() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0])
    target = [1, 2, 0]  # ranked: position 1 (s=3), position 2 (s=2), position 0 (s=1)
    # pairs by 1-based rank (i, j): (1,2): log(1+e^(2-3))/3, (1,3): log(1+e^(1-3))/4,
    # (2,3): log(1+e^(1-2))/5
    expected = (
        math.log1p(math.exp(-1)) / 3 + math.log1p(math.exp(-2)) / 4 + math.log1p(math.exp(-1)) / 5
    )
    assert weighted_ranknet(logits, target).item() == pytest.approx(expected, rel=1e-6)
    reversed_loss = weighted_ranknet(logits, [0, 2, 1]).item()
    assert reversed_loss > expected
    assert weighted_ranknet(torch.tensor([5.0]), [0]).item() == 0.0


def test_chance_ranknet_is_the_loss_of_equal_logits() -> None:
    assert chance_ranknet(3) == pytest.approx(math.log(2) * (1 / 3 + 1 / 4 + 1 / 5), rel=1e-12)
    assert chance_ranknet(1) == 0.0
    target = list(np.random.default_rng(0).permutation(20))
    assert weighted_ranknet(torch.zeros(20), target).item() == pytest.approx(
        chance_ranknet(20), rel=1e-6
    )


def test_the_mean_ranknet_divides_by_the_pairs_as_first_code_does() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0])
    target = [1, 2, 0]
    # FIRST's code: BCEWithLogitsLoss(weight=1 / (i + j)), mean over the 3 pairs
    expected = (
        math.log1p(math.exp(-1)) / 3 + math.log1p(math.exp(-2)) / 4 + math.log1p(math.exp(-1)) / 5
    ) / 3
    mean = weighted_ranknet(logits, target) * ranknet_scale(3, "mean")
    assert mean.item() == pytest.approx(expected, rel=1e-6)
    ordered = logits[target]
    pairs = [(0, 1), (0, 2), (1, 2)]
    first = torch.nn.BCEWithLogitsLoss(weight=torch.tensor([1 / (i + j + 2) for i, j in pairs]))
    diffs = torch.stack([ordered[i] - ordered[j] for i, j in pairs])
    assert first(diffs, torch.ones(3)).item() == pytest.approx(expected, rel=1e-6)
    assert ranknet_scale(3, "sum") == ranknet_scale(1, "mean") == 1.0
    assert chance_ranknet(3, "mean") == pytest.approx(chance_ranknet(3) / 3, rel=1e-12)
    assert chance_ranknet(20, "mean") == pytest.approx(chance_ranknet(20) / 190, rel=1e-12)
    assert chance_ranknet(1, "mean") == 0.0
    with pytest.raises(ValueError, match="ranknet_reduction must be one of"):
        small_config(ranknet_reduction="max")
    with pytest.raises(
        ValueError, match="ranknet_reduction has no effect with objective 'pointwise'"
    ):
        small_config(objective="pointwise", passage_vote=" yes", ranknet_reduction="mean")


def test_encoded_window_is_the_reranker_prompt_then_the_ranking(smollm2_tokenizer: Any) -> None:
    builder = PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    encoder = WindowEncoder(smollm2_tokenizer, builder)
    window = TrainingWindow("q", "fleas", TEXTS[:3], (2, 0, 1))
    assert encoder.target_text(window) == "C] > [A] > [B]"
    encoded = encoder.encode(window)
    prompt = builder.build("fleas", TEXTS[:3])
    assert encoded.input_ids[: encoded.prompt_length] == prompt.token_ids
    assert encoded.input_ids[-1] == smollm2_tokenizer.eos_token_id
    tail = smollm2_tokenizer.decode(list(encoded.input_ids[encoded.prompt_length : -1]))
    assert tail == "C] > [A] > [B]"


# --- LoRA, steps, save and load --------------------------------------------------------------


def backpropagate_one_window(tokenizer: Any, model: Any) -> set[str]:
    """Backpropagate FIRST's loss of one toy window; the names of parameters given a gradient."""
    builder = PromptBuilder(tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    encoded = WindowEncoder(tokenizer, builder).encode(
        TrainingWindow("q", "fleas", TEXTS[:4], (1, 3, 0, 2))
    )
    terms = window_losses(model, encoded, resolve_label_ids(tokenizer, ALPHABETIC_LABELS))
    (terms.lm + 10 * terms.ranknet).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


def hand_ranknet(ordered: list[float]) -> float:
    """FIRST's weighted RankNet, pair by pair, of scores listed best first."""
    n = len(ordered)
    return sum(
        math.log1p(math.exp(ordered[j] - ordered[i])) / (i + j + 2)
        for i in range(n)
        for j in range(i + 1, n)
    )


def echo_setup(tokenizer: Any, seed: int) -> tuple[Any, Any, PromptBuilder]:
    """A tiny model, the label ids and a ``first-echo`` prompt builder."""
    model = make_tiny_llama(len(tokenizer), seed=seed)
    labels = resolve_label_ids(tokenizer, ALPHABETIC_LABELS)
    return model, labels, PromptBuilder(tokenizer, FIRST_ECHO_TEMPLATE, max_prompt_tokens=4096)


def test_passage_ranknet_is_ranknet_over_each_passage_own_label_at_its_line_end(
    smollm2_tokenizer: Any,
) -> None:
    model, labels, builder = echo_setup(smollm2_tokenizer, seed=5)
    window = TrainingWindow("q", "fleas", TEXTS[:4], (1, 3, 0, 2))
    plain = window_losses(model, WindowEncoder(smollm2_tokenizer, builder).encode(window), labels)
    encoded = WindowEncoder(smollm2_tokenizer, builder, passage_ends=True).encode(window)
    terms = window_losses(model, encoded, labels)
    assert plain.passage_ranknet is None
    assert terms.ranknet.item() == pytest.approx(plain.ranknet.item(), rel=1e-5)
    assert terms.lm.item() == pytest.approx(plain.lm.item(), rel=1e-5)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([encoded.input_ids])).logits[0]
    own = [
        max(full[end, i].item() for i in labels.ids[p])
        for p, end in enumerate(encoded.passage_ends)
    ]
    ordered = [own[p] for p in window.target]  # best first
    expected = hand_ranknet(ordered)
    assert terms.passage_ranknet is not None
    assert terms.passage_ranknet.item() == pytest.approx(expected, rel=1e-4)


def test_a_passage_vote_scores_every_passage_by_one_token_at_its_line_end(
    smollm2_tokenizer: Any,
) -> None:
    model, labels, _ = echo_setup(smollm2_tokenizer, seed=6)
    builder = PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    window = TrainingWindow("q", "fleas", TEXTS[:4], (2, 0, 3, 1))
    encoded = WindowEncoder(smollm2_tokenizer, builder, passage_ends=True).encode(window)
    yes = smollm2_tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
    terms = window_losses(model, encoded, labels, yes)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([encoded.input_ids])).logits[0]
    ordered = [full[encoded.passage_ends[p], yes].item() for p in window.target]
    expected = hand_ranknet(ordered)
    assert terms.passage_ranknet is not None
    assert terms.passage_ranknet.item() == pytest.approx(expected, rel=1e-4)
    own = window_losses(model, encoded, labels).passage_ranknet
    assert own is not None
    assert own.item() != pytest.approx(expected, rel=1e-3)


def test_a_padded_batch_gives_each_window_its_own_losses_and_gradients(
    smollm2_tokenizer: Any,
) -> None:
    model, labels, builder = echo_setup(smollm2_tokenizer, seed=6)
    # float64, so that the padded and the one-window matmuls cannot round apart (in float32
    # their summation orders differ by CPU kernel); a window seeing another's tokens still would
    model = model.double()
    encoder = WindowEncoder(smollm2_tokenizer, builder, passage_ends=True)
    windows = [  # three lengths, so two of them are padded
        encoder.encode(TrainingWindow("q", "fleas", TEXTS[:4], (1, 3, 0, 2))),
        encoder.encode(TrainingWindow("q", "roman roads", TEXTS[2:4], (0, 1))),
        encoder.encode(TrainingWindow("q", "flea eggs", TEXTS, (5, 1, 3, 0, 2, 4))),
    ]
    assert len({len(w.input_ids) for w in windows}) == 3

    def total(terms: list[WindowLosses]) -> torch.Tensor:
        return sum(
            (t.lm + 10 * t.ranknet + 2 * t.passage_ranknet for t in terms if t.passage_ranknet),
            torch.tensor(0.0),
        )

    alone = [window_losses(model, w, labels) for w in windows]
    total(alone).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batched = batch_losses(model, windows, labels)
    total(batched).backward()
    for one, many in zip(alone, batched, strict=True):
        assert many.lm.item() == pytest.approx(one.lm.item(), rel=1e-4)
        assert many.ranknet.item() == pytest.approx(one.ranknet.item(), rel=1e-4)
        assert one.passage_ranknet is not None
        assert many.passage_ranknet is not None
        assert many.passage_ranknet.item() == pytest.approx(one.passage_ranknet.item(), rel=1e-4)
    assert expected.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="at least one window"):
        batch_losses(model, [], labels)


def test_batch_losses_refuses_a_model_that_rescales_its_logits(smollm2_tokenizer: Any) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer))
    model.config.final_logit_softcapping = 30.0
    builder = PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    encoded = WindowEncoder(smollm2_tokenizer, builder).encode(
        TrainingWindow("q", "fleas", TEXTS[:2], (1, 0))
    )
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    with pytest.raises(ValueError, match=r"final_logit_softcapping=30\.0"):
        window_losses(model, encoded, labels)


def test_windows_per_forward_pass_change_nothing_but_speed(
    smollm2_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_llmrank.training import trainer as trainer_module

    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    histories = []
    passes: dict[int, list[int]] = {1: [], 3: []}
    for batch in (1, 3):

        def counted(model: Any, chunk: Any, *args: Any, batch: int = batch) -> Any:
            passes[batch].append(len(chunk))
            return batch_losses(model, chunk, *args)  # this module's, not the patched one

        monkeypatch.setattr(trainer_module, "batch_losses", counted)
        trainer = FirstTrainer(
            make_tiny_llama(len(smollm2_tokenizer), seed=4),
            smollm2_tokenizer,
            small_config(steps=3, grad_accumulation=4, batch_windows=batch),
            base_model="unused",
            output_dir=tmp_path / str(batch),
        )
        histories.append(trainer.fit(queries)["history"])
    for one, batched in zip(*histories, strict=True):
        for key in ("loss", "ranknet", "lm", "ranknet_chance", "tokens", "windows"):
            assert batched[key] == pytest.approx(one[key], rel=1e-3), key
    # 4 windows an update: one a pass, or 3 then 1
    assert set(passes[1]) == {1}
    assert max(passes[3]) == 3
    assert sum(passes[1]) == sum(passes[3])
    with pytest.raises(ValueError, match="batch_windows must be at least 1"):
        small_config(batch_windows=0)


def test_passage_ranknet_needs_a_template_that_repeats_labels(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="repeats each label after its passage"):
        FirstTrainer(
            make_tiny_llama(len(smollm2_tokenizer)),
            smollm2_tokenizer,
            small_config(passage_ranknet_weight=1.0),
            base_model="unused",
            output_dir=tmp_path,
        )
    with pytest.raises(ValueError, match="passage_ranknet_weight must be a finite number >= 0"):
        small_config(passage_ranknet_weight=-1.0)
    with pytest.raises(ValueError, match="only with a positive passage_ranknet_weight"):
        small_config(passage_vote=" yes")
    for vote, template, message in (
        (" yes please", FIRST_TEMPLATE, "a vote must be one token; ' yes please' is 2"),
        (" no", FIRST_TEMPLATE.with_vote(" yes"), "train that token"),
        # a line ending in its passage's text: its end, where the vote is read, is ambiguous
        (" yes", replace(FIRST_TEMPLATE, passage="\n[{label}] {text}"), "line break"),
    ):
        with pytest.raises(ValueError, match=message):
            FirstTrainer(
                make_tiny_llama(len(smollm2_tokenizer)),
                smollm2_tokenizer,
                small_config(passage_ranknet_weight=1.0, passage_vote=vote),
                base_model="unused",
                output_dir=tmp_path,
                template=template,
            )


@pytest.mark.parametrize(
    ("template", "vote"), [(FIRST_ECHO_TEMPLATE, None), (FIRST_TEMPLATE, " yes")]
)
def test_passage_ranknet_is_trained_and_reported(
    smollm2_tokenizer: Any, tmp_path: Path, template: PromptTemplate, vote: str | None
) -> None:
    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    trainer = FirstTrainer(
        make_tiny_llama(len(smollm2_tokenizer), seed=4),
        smollm2_tokenizer,
        small_config(steps=2, passage_ranknet_weight=1.0, passage_vote=vote),
        base_model="unused",
        output_dir=tmp_path,
        template=template,
    )
    history = trainer.fit(queries)["history"]
    assert all(entry["passage_ranknet"] > 0 for entry in history)
    assert all(entry["loss"] > entry["lm"] + 10 * entry["ranknet"] for entry in history)
    # and it reaches the adapter's gradients
    rng = np.random.default_rng(0)
    windows = [WindowSampling(min_size=3, max_size=6, pool=6).sample(queries[0], rng)]
    grads = []
    for weight in (0.0, 1.0):
        config = small_config(passage_ranknet_weight=weight, passage_vote=vote if weight else None)
        with_weight = FirstTrainer(
            make_tiny_llama(len(smollm2_tokenizer), seed=4),
            smollm2_tokenizer,
            config,
            base_model="unused",
            output_dir=tmp_path / f"weight-{weight}",
            template=template,
        )
        with_weight._first_backward(windows)
        grads.append(lora_gradients(with_weight))
    assert set(grads[0]) == set(grads[1])
    assert any(not torch.allclose(grads[0][n], grads[1][n]) for n in grads[0])


def test_the_mean_reduction_divides_both_ranknets_and_their_chance_by_the_pairs(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    three = WindowSampling(min_size=3, max_size=3, pool=6)
    reports: dict[str, Any] = {}
    for reduction in ("sum", "mean"):
        config = small_config(
            steps=1, sampling=three, passage_ranknet_weight=2.0, ranknet_reduction=reduction
        )
        trainer = FirstTrainer(
            make_tiny_llama(len(smollm2_tokenizer), seed=4),
            smollm2_tokenizer,
            config,
            base_model="unused",
            output_dir=tmp_path / reduction,
            template=FIRST_ECHO_TEMPLATE,
        )
        [reports[reduction]] = trainer.fit(queries)["history"]
        recorded = json.loads((tmp_path / reduction / "training.json").read_text())
        assert recorded["config"]["ranknet_reduction"] == reduction
    summed, mean = reports["sum"], reports["mean"]
    for key in ("ranknet", "passage_ranknet", "ranknet_chance"):
        assert mean[key] == pytest.approx(summed[key] / 3, rel=1e-5), key  # 3 pairs
    assert mean["lm"] == pytest.approx(summed["lm"], rel=1e-5)
    expected = mean["lm"] + 10 * mean["ranknet"] + 2 * mean["passage_ranknet"]
    assert mean["loss"] == pytest.approx(expected, rel=1e-5)


def test_lora_gradients_reach_only_the_adapter(smollm2_tokenizer: Any) -> None:
    model = make_trainable(
        make_tiny_llama(len(smollm2_tokenizer), seed=3),
        LoraSettings(rank=4, alpha=8),
        gradient_checkpointing=False,
    )
    with_grad = backpropagate_one_window(smollm2_tokenizer, model)
    assert with_grad
    assert all("lora_" in n for n in with_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_top_layer_lora_adapts_and_trains_only_the_last_layers(smollm2_tokenizer: Any) -> None:
    model = make_trainable(
        make_tiny_llama(len(smollm2_tokenizer), seed=3, layers=4),
        LoraSettings(rank=4, alpha=8, top_layers=1),
        gradient_checkpointing=False,
    )
    adapted = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted
    assert all(".layers.3." in n for n in adapted)
    assert backpropagate_one_window(smollm2_tokenizer, model) == adapted
    with pytest.raises(ValueError, match="has 4 layers"):
        make_trainable(
            make_tiny_llama(len(smollm2_tokenizer), layers=4),
            LoraSettings(top_layers=5),
            gradient_checkpointing=False,
        )
    with pytest.raises(ValueError, match="top_layers must be at least 1"):
        LoraSettings(top_layers=0)


def test_checkpointing_keeps_the_gradients_and_stops_below_the_adapted_layers(
    smollm2_tokenizer: Any,
) -> None:
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0, top_layers=1)
    gradients = {}
    tracked: dict[str, bool] = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = make_trainable(
            make_tiny_llama(len(smollm2_tokenizer), seed=3, layers=4),
            settings,
            gradient_checkpointing=checkpointing,
        )
        layers = model.get_base_model().model.layers
        hooks = [
            layers[k].register_forward_hook(
                lambda _m, _i, out, key=f"{checkpointing}/{k}": tracked.__setitem__(
                    key, out.requires_grad
                )
            )
            for k in (2, 3)
        ]
        backpropagate_one_window(smollm2_tokenizer, model)
        for hook in hooks:
            hook.remove()
        gradients[checkpointing] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    assert gradients[True].keys() == gradients[False].keys()
    for name, grad in gradients[False].items():
        torch.testing.assert_close(gradients[True][name], grad, msg=name)
    # layer 2's output needs no gradient: backpropagation stops at layer 3, the adapted one
    assert tracked == {"False/2": False, "False/3": True, "True/2": False, "True/3": True}


def test_full_fine_tuning_refuses_half_precision_weights(smollm2_tokenizer: Any) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer)).to(torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16: small updates would round away"):
        make_trainable(model, None, gradient_checkpointing=False)
    full = make_trainable(
        make_tiny_llama(len(smollm2_tokenizer)), None, gradient_checkpointing=False
    )
    assert all(p.requires_grad for p in full.parameters())


def test_a_few_steps_lower_the_loss_on_a_toy_set(smollm2_tokenizer: Any, tmp_path: Path) -> None:
    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    _, reports = fit_toy(smollm2_tokenizer, queries, tmp_path)
    losses = [report.loss for report in reports]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    assert all(r.ranknet_chance == pytest.approx(chance_ranknet(6)) for r in reports)


def test_a_mirrored_update_trains_each_drawn_window_in_both_orders(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer), seed=4)
    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    sampling = WindowSampling(min_size=3, max_size=6, pool=6, mirrored=True)
    trainer = FirstTrainer(
        model,
        smollm2_tokenizer,
        small_config(steps=1, grad_accumulation=4, sampling=sampling),
        base_model="unused",
        output_dir=tmp_path,
    )
    seen: list[TrainingWindow] = []
    encode = trainer.encoder.encode

    def recording(window: TrainingWindow) -> Any:
        seen.append(window)
        return encode(window)

    trainer.encoder.encode = recording  # type: ignore[method-assign]
    [report] = trainer.fit(queries)["history"]
    assert report["windows"] == len(seen) == 4
    assert seen[1] == seen[0].reversed()
    assert seen[3] == seen[2].reversed()


def train_adapter(
    tokenizer: Any,
    base_dir: Path,
    output: Path,
    steps: int = 2,
    template: PromptTemplate = FIRST_TEMPLATE,
    device: str = "cpu",
    **changes: Any,
) -> FirstTrainer:
    model = load_causal_lm(resolve_model(str(base_dir)), device=device)
    trainer = FirstTrainer(
        model,
        tokenizer,
        small_config(steps=steps, **changes),
        base_model=str(base_dir),
        output_dir=output,
        template=template,
    )
    trainer.fit(training_queries([toy_query()], qrels=TOY_QRELS))
    return trainer


def test_training_can_start_from_a_saved_adapter_of_the_same_shape(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    first = make_tiny_llama(len(smollm2_tokenizer), seed=7)
    trained = make_trainable(first, LoraSettings(rank=4, alpha=8), gradient_checkpointing=False)
    with torch.no_grad():  # a non-trivial adapter: LoRA starts with B = 0
        for name, parameter in trained.named_parameters():
            if parameter.requires_grad:
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    trained.save_pretrained(tmp_path / "adapter")
    saved = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}

    def start(**lora: Any) -> Any:
        settings = LoraSettings(init_from=str(tmp_path / "adapter"), **lora)
        model = make_tiny_llama(len(smollm2_tokenizer), seed=7)
        return make_trainable(model, settings, gradient_checkpointing=False)

    resumed = start(rank=4, alpha=8)
    loaded = {n: p for n, p in resumed.named_parameters() if p.requires_grad}
    assert loaded.keys() == saved.keys()
    for name, weight in saved.items():
        torch.testing.assert_close(loaded[name], weight)
    with pytest.raises(ValueError, match="does not fit these LoRA settings"):
        start(rank=8, alpha=16)
    with pytest.raises(ValueError, match="does not fit these LoRA settings"):
        start(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "gate_proj"))
    with pytest.raises(ValueError, match=r"no adapter_model\.safetensors"):
        make_trainable(
            make_tiny_llama(len(smollm2_tokenizer)),
            LoraSettings(init_from=str(tmp_path)),
            gradient_checkpointing=False,
        )


def test_saved_adapter_loads_with_identical_label_logits(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer = train_adapter(smollm2_tokenizer, tiny_model_dir, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    builder = PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    prompts = [builder.build("fleas", TEXTS).token_ids, builder.build("roads", TEXTS[:3]).token_ids]
    pad = smollm2_tokenizer.pad_token_id
    trained = TorchLabelScorer(causal_lm(trainer.model), labels, pad_token_id=pad).score(prompts)
    source = resolve_model(str(tmp_path / "adapter"))
    assert source.adapter is not None
    loaded = TorchLabelScorer(load_causal_lm(source), labels, pad_token_id=pad).score(prompts)
    base = TorchLabelScorer(
        load_causal_lm(resolve_model(str(tiny_model_dir))), labels, pad_token_id=pad
    ).score(prompts)
    np.testing.assert_allclose(loaded, trained, atol=1e-4)
    assert np.abs(loaded - base).max() > 1e-3  # the adapter changed something


def test_validation_ranks_within_the_models_context_not_the_training_budget(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_llmrank.training import Validation

    long_texts = tuple(f"{text} " + " ".join(["detail"] * 120) for text in TEXTS)
    query = QueryCandidates(
        "q1",
        "how long is the life cycle of a flea",
        tuple(Candidate(f"d{i}", text, float(10 - i)) for i, text in enumerate(long_texts)),
    )
    lengths: list[int] = []
    build = PromptBuilder.build

    def measured(self: PromptBuilder, query: str, passages: Any) -> Any:
        prompt = build(self, query, passages)
        lengths.append(len(prompt.token_ids))
        return prompt

    monkeypatch.setattr(PromptBuilder, "build", measured)
    model = load_causal_lm(resolve_model(str(tiny_model_dir)))
    config = small_config(
        steps=1, max_prompt_tokens=300, validation_depth=6, validation_passage_words=300
    )
    trainer = FirstTrainer(model, smollm2_tokenizer, config, base_model="x", output_dir=tmp_path)
    score = trainer.validate(Validation([query], TOY_QRELS))
    assert 0.0 <= score <= 1.0
    assert lengths
    assert max(lengths) > 6 * 120  # whole passages, not cut to the 300-token budget


def test_validation_ranks_in_windows_that_the_templates_labels_fit(
    smollm2_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_llmrank.training import Validation

    sizes: list[int] = []
    build = PromptBuilder.build

    def counted(self: PromptBuilder, query: str, passages: Any) -> Any:
        sizes.append(len(passages))
        return build(self, query, passages)

    monkeypatch.setattr(PromptBuilder, "build", counted)
    texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(12)]
    query = QueryCandidates(
        "q1", toy_query().query, tuple(Candidate(f"d{i}", t) for i, t in enumerate(texts))
    )
    config = small_config(steps=1, sampling=WindowSampling(min_size=3, max_size=8, pool=8))
    model = make_tiny_llama(len(smollm2_tokenizer), seed=4)
    trainer = FirstTrainer(
        model,
        smollm2_tokenizer,
        config,
        base_model="x",
        output_dir=tmp_path,
        template=FIRST_NUMERIC_TEMPLATE,
    )
    assert 0.0 <= trainer.validate(Validation([query], TOY_QRELS)) <= 1.0
    assert max(sizes) == len(FIRST_NUMERIC_TEMPLATE.labels)  # FIRST's window, narrowed to 9


def test_validation_and_the_saved_template_use_the_training_passage_length(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_llmrank.reranker import Reranker
    from haystack_llmrank.training import Validation

    seen: list[int | None] = []
    build = PromptBuilder.build

    def recorded(self: PromptBuilder, query: str, passages: Any) -> Any:
        seen.append(self.max_passage_words)
        return build(self, query, passages)

    monkeypatch.setattr(PromptBuilder, "build", recorded)
    trainer = train_adapter(
        smollm2_tokenizer, tiny_model_dir, tmp_path / "run", steps=2, max_passage_words=7
    )
    seen.clear()
    trainer.validate(Validation([toy_query()], TOY_QRELS))
    assert seen
    assert set(seen) == {7}  # validated as the saved model will be read
    recorded_with = recorded_template(str(tmp_path / "run"))
    assert recorded_with == replace(FIRST_TEMPLATE, max_passage_words=7)
    assert Reranker.from_pretrained(str(tmp_path / "run")).prompts.max_passage_words == 7
    again = FirstTrainer(
        load_causal_lm(resolve_model(str(tiny_model_dir))),
        smollm2_tokenizer,
        small_config(steps=2, max_passage_words=7),
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "run",
    )
    assert again.resume()  # the recorded length is not another template


def test_the_record_names_the_dtype_validation_ran_in(
    smollm2_tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from haystack_llmrank.training import Validation

    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    held = Validation([toy_query("q2")], {"q2": TOY_QRELS["q1"]})
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32")):
        trainer = FirstTrainer(
            make_tiny_llama(len(smollm2_tokenizer), seed=4).to(dtype),
            smollm2_tokenizer,
            small_config(steps=1),
            base_model="x",
            output_dir=tmp_path / name,
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="haystack_llmrank.training.trainer"):
            record = trainer.fit(queries, held)
        assert record["validation_dtype"] == name
        assert re.search(rf"step 1: validation nDCG@10 [0-9.]+ in {name}", caplog.text)
    unvalidated = toy_trainer(smollm2_tokenizer, tmp_path / "none", steps=1).fit(queries)
    assert unvalidated["validation_dtype"] is None


class StopTrainingError(Exception):
    pass


def stop_after_two(report: Any) -> None:
    if report.step == 2:
        raise StopTrainingError


ON_DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]
"""The CPU, and CUDA where there is a GPU (``-m gpu`` selects it)."""


@pytest.mark.parametrize("device", ON_DEVICES)
def test_checkpoint_resume_continues_the_same_run(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    device: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lora = LoraSettings(rank=4, alpha=8, dropout=0.2)  # dropout draws from the device's RNG
    straight = train_adapter(
        smollm2_tokenizer, tiny_model_dir, tmp_path / "straight", 4, device=device, lora=lora
    )

    def trainer_for(output: Path) -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)), device=device)
        return FirstTrainer(
            model,
            smollm2_tokenizer,
            small_config(steps=4, lora=lora),
            base_model=str(tiny_model_dir),
            output_dir=output,
        )

    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    with pytest.raises(StopTrainingError):
        trainer_for(tmp_path / "resumed").fit(queries, on_step=stop_after_two)
    assert (tmp_path / "resumed" / "checkpoint" / "state.pt").is_file()
    assert resolve_model(str(tmp_path / "resumed" / "checkpoint" / "model")).adapter is not None
    again = trainer_for(tmp_path / "resumed")
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        assert again.resume()
    assert "changed settings" not in caplog.text
    assert again.step == 2
    again.fit(queries)
    losses = [h["loss"] for h in again.history]
    assert losses == pytest.approx([h["loss"] for h in straight.history], rel=1e-4)


def test_a_checkpoint_saved_on_a_gpu_resumes_without_one(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    def trainer() -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        return FirstTrainer(
            model,
            smollm2_tokenizer,
            small_config(steps=4, stop_after=2),
            base_model=str(tiny_model_dir),
            output_dir=tmp_path,
        )

    trainer().fit(training_queries([toy_query()], qrels=TOY_QRELS))
    # what a CUDA run writes: the optimizer's state stored on cuda:0
    state = tmp_path / "checkpoint" / "state.pt"
    with zipfile.ZipFile(state) as saved:
        files = {name: saved.read(name) for name in saved.namelist()}
    with zipfile.ZipFile(state, "w", zipfile.ZIP_STORED) as moved:
        for name, data in files.items():
            if name.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            moved.writestr(name, data)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(state, weights_only=False)  # the file really names the GPU
    again = trainer()
    assert again.resume()
    assert again.step == 2
    moments = [v for s in again.optimizer.state.values() for v in s.values() if v.dim()]
    assert moments
    assert {v.device.type for v in moments} == {"cpu"}


def test_a_checkpoint_keeps_the_random_state_of_the_models_gpu_only(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []
    device = torch.device("cuda", 1)
    monkeypatch.setattr(FirstTrainer, "_device", property(lambda self: device))
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda at: calls.append(("get", at)) or torch.ones(3)
    )
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda st, at: calls.append(("set", at)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", None)  # every GPU's: not kept
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", None)

    def trainer() -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        config = small_config(steps=4, stop_after=2)
        return FirstTrainer(model, smollm2_tokenizer, config, base_model="x", output_dir=tmp_path)

    trainer().fit(training_queries([toy_query()], qrels=TOY_QRELS))
    assert calls == [("get", device)]
    assert trainer().resume()
    assert calls == [("get", device), ("set", device)]


def test_the_schedule_warms_up_linearly_then_decays_by_a_cosine_to_the_floor() -> None:
    factor = _schedule(small_config(steps=10, warmup_steps=1, min_lr_ratio=0.1))
    assert factor(0) == pytest.approx(0.5)  # update 1: (0 + 1) / (1 + 1)
    assert factor(1) == pytest.approx(1.0)  # update 2: the peak
    assert factor(5) == pytest.approx(0.1 + 0.9 * 0.5)  # update 6: half way to update 10
    assert factor(9) == pytest.approx(0.1)  # update 10, the last: the floor
    assert factor(20) == pytest.approx(0.1)
    single = _schedule(small_config(steps=2, warmup_steps=1, min_lr_ratio=0.1))
    assert [single(0), single(1)] == pytest.approx([0.5, 1.0])  # one update after warm-up


def test_the_last_update_runs_at_the_floor_rate(smollm2_tokenizer: Any, tmp_path: Path) -> None:
    trainer = toy_trainer(
        smollm2_tokenizer, tmp_path, steps=4, warmup_steps=1, min_lr_ratio=0.1, learning_rate=0.01
    )
    history = trainer.fit(training_queries([toy_query()], qrels=TOY_QRELS))["history"]
    rates = [h["learning_rate"] for h in history]
    assert rates == pytest.approx([0.005, 0.01, 0.0055, 0.001])  # warm-up, peak, cosine, floor


def test_warm_up_as_long_as_the_run_and_negative_seeds_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from haystack_llmrank.cli import build_parser
    from haystack_llmrank.cli.train import _config

    for warmup in (3, 4, -1):
        with pytest.raises(ValueError, match=r"warmup_steps \(--warmup-steps\) must be in \[0, "):
            small_config(steps=3, warmup_steps=warmup)
    assert small_config(steps=3, warmup_steps=2).warmup_steps == 2
    with pytest.raises(ValueError, match=r"seed must be >= 0 \(--seed\), got -1"):
        small_config(seed=-1)
    parser = build_parser("train")
    base = ["train", "c.jsonl", "--qrels", "q.txt", "-o", "out"]
    with pytest.raises(ValueError, match=r"--steps=5\), got 10: the rate reaches --learning-rate"):
        _config(parser.parse_args([*base, "--steps", "5"]))  # the default warm-up, 10
    for option in ("--seed", "--split-seed", "--warmup-steps"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, option, "-1"])
        assert f"argument {option}: expected an integer of at least 0, got -1" in (
            capsys.readouterr().err
        )


def test_resume_applies_a_changed_learning_rate_and_schedule(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queries = training_queries([toy_query()], qrels=TOY_QRELS)

    def trainer_for(config: TrainConfig) -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        return FirstTrainer(
            model, smollm2_tokenizer, config, base_model="x", output_dir=tmp_path / "run"
        )

    with pytest.raises(StopTrainingError):
        trainer_for(small_config(steps=4, warmup_steps=1)).fit(queries, on_step=stop_after_two)
    changed = small_config(steps=8, warmup_steps=1, learning_rate=1e-3)
    again = trainer_for(changed)
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        assert again.resume()
    assert "changed settings: learning_rate, steps" in caplog.text
    again.fit(queries)
    expected = [1e-3 * factor for factor in map(_schedule(changed), range(2, 8))]
    assert [h["learning_rate"] for h in again.history[2:]] == pytest.approx(expected)


def scripted_validation(
    monkeypatch: pytest.MonkeyPatch, scores: dict[int, float]
) -> tuple[list[TrainingQuery], Any]:
    """Training queries, and held-out ones that validate at ``scores[step]`` (0 if unlisted)."""
    from haystack_llmrank.training import Validation

    def scripted(self: FirstTrainer, validation: Any) -> float:
        return scores.get(self.step, 0.0)

    monkeypatch.setattr(FirstTrainer, "validate", scripted)
    return training_queries([toy_query()], qrels=TOY_QRELS), Validation([toy_query()], TOY_QRELS)


def slow_validation(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every validation take ``seconds`` longer."""
    validate = FirstTrainer.validate

    def slow(self: FirstTrainer, validation: Any) -> float:
        time.sleep(seconds)
        return validate(self, validation)

    monkeypatch.setattr(FirstTrainer, "validate", slow)


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_resumed_run_records_the_best_model_its_output_holds(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft.utils import get_peft_model_state_dict

    scores = {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4, 4: 0.9, 5: 0.5}
    queries, held = scripted_validation(monkeypatch, scores)
    config = small_config(steps=6, eval_every=1, checkpoint_every=3)

    def trainer() -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        return FirstTrainer(
            model, smollm2_tokenizer, config, base_model="x", output_dir=tmp_path / "run"
        )

    crashed = trainer()
    models: dict[int, dict[str, torch.Tensor]] = {}

    def crash_after_five(report: Any) -> None:
        state = get_peft_model_state_dict(crashed.model)
        models[report.step] = {name: weight.clone() for name, weight in state.items()}
        if report.step == 5:  # after the best at 4, before the checkpoint at 6
            raise StopTrainingError

    with pytest.raises(StopTrainingError):
        crashed.fit(queries, held, on_step=crash_after_five)
    scores.clear()  # the resumed run validates lower: the best stays the crashed run's
    again = trainer()
    assert again.resume()
    record = again.fit(queries, held)
    assert (record["best_step"], record["best_validation_ndcg@10"]) == (4, 0.9)
    output = adapter_weights(tmp_path / "run")
    best = models[record["best_step"]]
    assert output.keys() == best.keys()
    assert all(torch.equal(output[name], best[name]) for name in best)


def test_resume_finishes_saving_a_best_model_that_a_crash_cut_short(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries, held = scripted_validation(monkeypatch, {step: step / 10 for step in range(5)})
    save = FirstTrainer._save_model

    def crashing(self: FirstTrainer, folder: Path) -> None:
        if folder == self.output_dir and self.step == 3:
            raise StopTrainingError
        save(self, folder)

    def trainer() -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        config = small_config(steps=4, eval_every=1, checkpoint_every=2)
        return FirstTrainer(
            model, smollm2_tokenizer, config, base_model="x", output_dir=tmp_path / "run"
        )

    monkeypatch.setattr(FirstTrainer, "_save_model", crashing)
    with pytest.raises(StopTrainingError):
        trainer().fit(queries, held)
    monkeypatch.setattr(FirstTrainer, "_save_model", save)
    again = trainer()
    assert again.resume()
    assert again.step == again.best_step == 3  # the new best was checkpointed first
    output = adapter_weights(tmp_path / "run")
    checkpointed = adapter_weights(tmp_path / "run" / "checkpoint" / "model")
    assert all(torch.equal(output[name], checkpointed[name]) for name in checkpointed)


def test_a_stopped_and_resumed_run_keeps_the_model_an_uninterrupted_run_keeps(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the validation at the stop scores best of all, where an uninterrupted run validates not
    queries, held = scripted_validation(monkeypatch, {0: 0.1, 3: 0.2, 5: 0.9, 6: 0.3})

    def run(output: Path, **changes: Any) -> dict[str, Any]:
        trainer = FirstTrainer(
            load_causal_lm(resolve_model(str(tiny_model_dir))),
            smollm2_tokenizer,
            small_config(steps=6, eval_every=3, checkpoint_every=3, **changes),
            base_model="x",
            output_dir=output,
        )
        trainer.resume()
        return trainer.fit(queries, held)

    straight = run(tmp_path / "straight")
    stopped = run(tmp_path / "stopped", stop_after=5)
    resumed = run(tmp_path / "stopped")
    assert straight["best_step"] == resumed["best_step"] == 6
    assert resumed["best_validation_ndcg@10"] == 0.3
    adapter = "adapter_model.safetensors"
    assert (tmp_path / "straight" / adapter).read_bytes() == (
        tmp_path / "stopped" / adapter
    ).read_bytes()
    # the stop's score is recorded as such, and never was the best
    assert stopped["best_step"] == 3
    assert stopped["history"][-1]["stop_validation"] == 0.9
    assert stopped["history"][-1]["validation"] is None
    validated = [h["step"] for h in resumed["history"] if h.get("validation") is not None]
    assert validated == [0, 3, 6]


def test_an_update_with_a_non_finite_loss_is_skipped_and_the_weights_stay_finite(
    smollm2_tokenizer: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def poisoned(*args: Any) -> list[WindowLosses]:
        calls.append(1)
        terms = batch_losses(*args)
        if len(calls) == 2:  # the second update's one window
            return [replace(t, ranknet=t.ranknet * float("nan")) for t in terms]
        return terms

    monkeypatch.setattr("haystack_llmrank.training.trainer.batch_losses", poisoned)
    trainer = toy_trainer(smollm2_tokenizer, tmp_path, steps=3)
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(report: Any) -> None:
        trained = trainer.model.named_parameters()
        weights[report.step] = {n: p.detach().clone() for n, p in trained if p.requires_grad}

    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        record = trainer.fit(training_queries([toy_query()], qrels=TOY_QRELS), on_step=snapshot)
    assert "update 2: loss nan, gradient norm nan, not finite: skipped" in caplog.text
    assert "(1 updates skipped in all)" in caplog.text
    assert record["skipped_updates"] == 1
    assert all(torch.equal(weights[2][n], weights[1][n]) for n in weights[1])
    assert all(bool(torch.isfinite(w).all()) for w in weights[3].values())
    assert any(not torch.equal(weights[3][n], weights[2][n]) for n in weights[2])


@pytest.mark.parametrize("device", ON_DEVICES)
def test_float16_training_scales_the_loss_and_checkpoints_the_scaler(
    smollm2_tokenizer: Any, tmp_path: Path, device: str
) -> None:
    from haystack_llmrank.training.trainer import FLOAT16_LOSS_SCALE

    def trainer(**changes: Any) -> FirstTrainer:
        model = make_tiny_llama(len(smollm2_tokenizer), seed=4)
        with torch.no_grad():
            model.lm_head.weight.div_(50)  # logits in float16's range
        config = small_config(**{"steps": 4, "stop_after": 2, **changes})
        return FirstTrainer(
            model.half().to(device),
            smollm2_tokenizer,
            config,
            base_model="x",
            output_dir=tmp_path,
        )

    with pytest.raises(ValueError, match="float16: small updates would round away"):
        trainer(lora=None)  # full fine-tuning: float16 weights would not take small updates
    half = trainer()
    assert half.scaler is not None
    assert half.scaler.get_scale() == FLOAT16_LOSS_SCALE
    scaled: list[torch.Tensor] = []
    scale = half.scaler.scale

    def recorded(loss: torch.Tensor) -> torch.Tensor:
        scaled.append(loss)
        return scale(loss)

    half.scaler.scale = recorded  # type: ignore[method-assign, assignment]
    before = {n: p.detach().clone() for n, p in half.model.named_parameters() if p.requires_grad}
    record = half.fit(training_queries([toy_query()], qrels=TOY_QRELS))
    assert len(scaled) == 2  # each update's one window
    assert record["skipped_updates"] == 0
    trained = {n: p for n, p in half.model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert all(bool(torch.isfinite(p).all()) for p in trained.values())
    assert any(not torch.equal(trained[n], before[n]) for n in before)
    saved = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)["scaler"]
    assert saved == half.scaler.state_dict()
    again = trainer(stop_after=None)
    assert again.resume()
    assert again.scaler is not None
    assert again.scaler.state_dict() == saved


def test_resume_refuses_another_template_and_names_what_differs(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    train_adapter(smollm2_tokenizer, tiny_model_dir, tmp_path / "run", steps=2)

    def resumed(template: PromptTemplate = FIRST_TEMPLATE, **changes: Any) -> bool:
        return FirstTrainer(
            load_causal_lm(resolve_model(str(tiny_model_dir))),
            smollm2_tokenizer,
            small_config(steps=2, **changes),
            base_model=str(tiny_model_dir),
            output_dir=tmp_path / "run",
            template=template,
        ).resume()

    with pytest.raises(
        ValueError,
        match="trained with template 'first', and this run's differs: name 'first' "
        "there, 'first-echo' here; passage",
    ):
        resumed(FIRST_ECHO_TEMPLATE)
    with pytest.raises(ValueError, match="differs: max_passage_words 64 there, 48 here; resume"):
        resumed(max_passage_words=48)
    with pytest.raises(ValueError, match="ranknet_reduction 'sum', not 'mean'"):
        resumed(ranknet_reduction="mean")
    assert resumed()
    # a checkpoint from before the setting was trained with the default: nothing changed
    record = tmp_path / "run" / "checkpoint" / "trainer.json"
    meta = json.loads(record.read_text())
    del meta["config"]["ranknet_reduction"]
    record.write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resumed()
    assert not [r for r in caplog.records if "changed settings" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        assert resumed(learning_rate=1e-5)
    assert "changed settings: learning_rate" in caplog.text


def test_resume_refuses_another_base_model_or_lora_shape(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lora = LoraSettings(rank=4, alpha=8, dropout=0.0)
    train_adapter(smollm2_tokenizer, tiny_model_dir, tmp_path / "run", steps=2, lora=lora)
    folder = tmp_path / "run" / "checkpoint"

    def resumed(base: Path = tiny_model_dir, **changes: Any) -> bool:
        return FirstTrainer(
            load_causal_lm(resolve_model(str(tiny_model_dir))),
            smollm2_tokenizer,
            small_config(steps=2, **{"lora": lora, **changes}),
            base_model=str(base),
            output_dir=tmp_path / "run",
        ).resume()

    with pytest.raises(
        ValueError,
        match=re.escape(
            f"trained with base model {str(tiny_model_dir)!r}, not '/elsewhere'; resume with "
            "the same base model"
        ),
    ):
        resumed(Path("/elsewhere"))
    # the same modules in another order: the same adapter, as --init-adapter finds too, and
    # no changed setting to warn of
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        assert resumed(lora=replace(lora, target_modules=lora.target_modules[::-1]))
    assert "changed settings" not in caplog.text
    for changed, message in (
        ({"alpha": 16}, "LoRA alpha 8, not 16"),  # same shapes: it would load, scaled 2x
        ({"rank": 8}, "LoRA rank 4, not 8"),
        ({"top_layers": 1}, "LoRA top_layers None, not 1"),
        ({"target_modules": ("q_proj", "v_proj")}, "LoRA target_modules \\['down_proj', "),
    ):
        with pytest.raises(
            ValueError, match=f"{re.escape(str(folder))} was trained with {message}"
        ):
            resumed(lora=replace(lora, **changed))
    with pytest.raises(ValueError, match="trained LoRA adapters, and this run trains every weight"):
        resumed(lora=None)
    assert resumed(lora=replace(lora, dropout=0.1))  # dropout shapes no weight
    # a checkpoint from before the base model was recorded: not known, so not refused
    record = folder / "trainer.json"
    meta = json.loads(record.read_text())
    assert meta["base_model"] == str(tiny_model_dir)
    del meta["base_model"]
    record.write_text(json.dumps(meta))
    assert resumed(Path("/elsewhere"))


def test_held_out_queries_without_candidates_are_refused() -> None:
    from haystack_llmrank.training import Validation

    empty = QueryCandidates("q0", "fleas", ())
    with pytest.raises(ValueError, match="held-out queries without candidates: q0; they would"):
        Validation([toy_query(), empty], TOY_QRELS)


def test_held_out_queries_that_can_never_score_are_refused(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    from haystack_llmrank.training import Validation

    qrels = {
        **TOY_QRELS,
        "q2": {"D1": 3, "D3": 2},  # docids that are not the candidates'
        "q3": {"d1": 0, "d2": 0},  # judged, none relevant
        "q4": {"d5": 1},  # relevant only at rank 6
    }
    queries = [toy_query(qid) for qid in ("q1", "q2", "q3", "q4")]
    with pytest.raises(
        ValueError,
        match="qrels grade none of their first 20 candidates above 0: q2, q3; they would score "
        "0 at every validation",
    ):
        Validation(queries, qrels).check_depth(20)
    held = Validation([toy_query(), toy_query("q4")], qrels)
    held.check_depth(20)
    with pytest.raises(ValueError, match="first 5 candidates above 0: q4;"):
        held.check_depth(5)
    trainer = toy_trainer(smollm2_tokenizer, tmp_path, steps=1, validation_depth=5)
    with pytest.raises(ValueError, match="first 5 candidates above 0: q4;"):
        trainer.fit(training_queries([toy_query()], qrels=TOY_QRELS), held)
    assert trainer.step == 0


def test_cli_refuses_held_out_queries_that_can_never_score(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    qrels.write_text(qrels.read_text().replace("q0 0 q0d", "q0 0 D-q0d"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["q1", "q2"], "validation": ["q0", "q3"]}))
    args = validated_train_args(candidates, qrels, tmp_path / "run", tiny_model_dir, steps=1)
    assert main([*args[:-2], "--split", str(split)]) == 2  # args[:-2]: no --validation-fraction
    assert "held-out queries whose qrels grade none of their first 20 candidates above 0: q0;" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_max_minutes_counts_the_validations_between_updates(
    smollm2_tokenizer: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from haystack_llmrank.cli import main

    queries, held = scripted_validation(monkeypatch, {})
    slow_validation(monkeypatch, 1.0)
    trainer = toy_trainer(
        smollm2_tokenizer,
        tmp_path,
        steps=20,
        eval_every=1,
        checkpoint_every=100,
        max_minutes=0.5 / 60,
    )
    # updates of a tiny model take far less than 0.5 s: the second one starts after a
    # validation of 1 s, which counts (update 0's does not)
    assert trainer.fit(queries, held)["steps"] <= 2
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "M minutes or more after this run's first update began (wall time: the validations "
        "and checkpoints between count; loading and update 0's validation do not)" in text
    )


def test_a_run_whose_best_model_is_the_starting_one_says_so(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queries, held = scripted_validation(monkeypatch, {0: 0.5})
    trainer = FirstTrainer(
        load_causal_lm(resolve_model(str(tiny_model_dir))),
        smollm2_tokenizer,
        small_config(steps=2, eval_every=1),
        base_model="x",
        output_dir=tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        assert trainer.fit(queries, held)["best_step"] == 0
    assert (
        f"no scheduled validation after update 0 scored above its nDCG@10 of 0.5000: {tmp_path} "
        f"holds the starting model, unchanged by training; the last update (2) is in "
        f"{tmp_path / 'checkpoint' / 'model'}" in caplog.text
    )
    caplog.clear()
    queries, held = scripted_validation(monkeypatch, {0: 0.5, 2: 0.6})
    again = FirstTrainer(
        load_causal_lm(resolve_model(str(tiny_model_dir))),
        smollm2_tokenizer,
        small_config(steps=2, eval_every=1),
        base_model="x",
        output_dir=tmp_path / "better",
    )
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        assert again.fit(queries, held)["best_step"] == 2
    assert "starting model" not in caplog.text
    caplog.clear()
    stopped = FirstTrainer(  # stopped before its first scheduled validation
        load_causal_lm(resolve_model(str(tiny_model_dir))),
        smollm2_tokenizer,
        small_config(steps=4, eval_every=2, stop_after=1),
        base_model="x",
        output_dir=tmp_path / "stopped",
    )
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        assert stopped.fit(queries, held)["best_step"] == 0
    assert "scored above" not in caplog.text
    assert (
        "no scheduled validation (every eval_every=2 updates, and at update steps=4) has run "
        f"after update 0: {tmp_path / 'stopped'} holds the starting model" in caplog.text
    )


@pytest.mark.slow
def test_onnx_export_of_an_adapter_matches_torch(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from haystack_llmrank.export import export_onnx
    from haystack_llmrank.scorers.onnx_loading import load_export

    trainer = train_adapter(
        smollm2_tokenizer, tiny_model_dir, tmp_path / "adapter", template=FIRST_ECHO_TEMPLATE
    )
    folder = export_onnx(str(tmp_path / "adapter"), tmp_path / "onnx")
    exported_with = recorded_template(str(folder))  # the export keeps the saved template
    assert exported_with == trainer.saved_template
    assert exported_with.max_passage_words == trainer.config.max_passage_words
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    builder = PromptBuilder(smollm2_tokenizer, FIRST_ECHO_TEMPLATE, max_prompt_tokens=4096)
    prompts = [builder.build("fleas", TEXTS).token_ids]
    pad = smollm2_tokenizer.pad_token_id
    expected = TorchLabelScorer(causal_lm(trainer.model), labels, pad_token_id=pad).score(prompts)
    exported = load_export(folder, device="cpu").scorer.score(prompts)
    np.testing.assert_allclose(exported, expected, atol=1e-3)
    base_lm = load_causal_lm(resolve_model(str(tiny_model_dir)))
    base = TorchLabelScorer(base_lm, labels, pad_token_id=pad).score(prompts)
    assert np.abs(expected - base).max() > 1e-2, "the adapter changes nothing to export"


def write_toy_files(folder: Path, queries: int = 4) -> tuple[Path, Path]:
    """A candidates JSONL of ``queries`` toy queries (q0, q1...) and their qrels."""
    candidates = folder / "candidates.jsonl"
    qrels = folder / "qrels.txt"
    lines, judged = [], []
    for q in range(queries):
        docs = [{"docid": f"q{q}d{i}", "text": TEXTS[i], "score": 9.0 - i} for i in range(6)]
        lines.append(json.dumps({"qid": f"q{q}", "query": "flea life", "candidates": docs}))
        judged += [f"q{q} 0 q{q}d1 3", f"q{q} 0 q{q}d3 2", f"q{q} 0 q{q}d2 0"]
    candidates.write_text("\n".join(lines) + "\n")
    qrels.write_text("\n".join(judged) + "\n")
    return candidates, qrels


def validated_train_args(
    candidates: Path, qrels: Path, output: Path, model: Path, *, steps: int
) -> list[str]:
    """``llmrank train`` on the toy files, validating at every update on half the queries."""
    return [
        "train", str(candidates), "--qrels", str(qrels), "--output", str(output),
        "--model", str(model), "--steps", str(steps), "--grad-accumulation", "1",
        "--min-window", "3", "--max-window", "6", "--eval-every", "1", "--warmup-steps", "0",
        "--validation-fraction", "0.5",
    ]  # fmt: skip


def test_cli_trains_on_a_given_split_and_checks_it(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    split = tmp_path / "split.json"
    args = [
        "train", str(candidates), "--qrels", str(qrels), "--model", str(tiny_model_dir),
        "--steps", "1", "--grad-accumulation", "1", "--min-window", "3", "--max-window", "6",
        "--warmup-steps", "0", "--split", str(split),
    ]  # fmt: skip
    split.write_text(json.dumps({"train": ["q2", "q0"], "validation": ["q3"]}))
    with caplog.at_level("WARNING", logger="haystack_llmrank.cli.train"):
        assert main([*args, "--output", str(tmp_path / "run")]) == 0
    written = json.loads((tmp_path / "run" / "split.json").read_text())
    assert (written["train"], written["validation"]) == (["q0", "q2"], ["q3"])
    assert "1 input queries are in neither list" in caplog.text  # q1 is said to be left out
    for bad in (
        {"train": ["q0"], "validation": ["q0"]},
        {"train": ["q9"], "validation": []},
        {"train": "q0", "validation": []},
    ):
        split.write_text(json.dumps(bad))
        assert main([*args, "--output", str(tmp_path / "bad")]) == 2


def test_cli_trains_on_the_candidates_with_text_and_counts_the_blank_ones_once(
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    lines = candidates.read_text().splitlines()
    record = json.loads(lines[0])
    record["candidates"][1]["text"] = ""  # q0d1, judged 3
    record["candidates"][4]["text"] = "   "
    candidates.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    drawn: list[TrainingWindow] = []
    sample = WindowSampling.sample

    def recorded(self: WindowSampling, *args: Any) -> TrainingWindow:
        drawn.append(sample(self, *args))
        return drawn[-1]

    monkeypatch.setattr(WindowSampling, "sample", recorded)
    args = validated_train_args(candidates, qrels, tmp_path / "run", tiny_model_dir, steps=6)
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.targets"):
        assert main([*args, "--validation-fraction", "0"]) == 0
    assert len(drawn) == 6
    assert {"q0"} < {w.qid for w in drawn}
    assert all(text.strip() for window in drawn for text in window.passages)
    assert caplog.text.count("blank candidates") == 1  # once a run, not once a window
    assert "2 blank candidates (empty or whitespace) of 1 queries" in caplog.text
    assert "judged relevant among them: q0/q0d1" in caplog.text


def test_the_recorded_base_is_what_the_name_resolves_to(
    smollm2_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haystack_llmrank.training.adapters import recordable_base

    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()  # a folder named as the embedded base
    (tmp_path / "mine").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert recordable_base("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert recordable_base("mine") == str(tmp_path / "mine")
    assert recordable_base("~/mine") == str(tmp_path / "mine")
    assert recordable_base("org/model") == "org/model"
    # from Python as from the command line: the record names what the adapter names
    model = make_tiny_llama(len(smollm2_tokenizer))
    trainer = FirstTrainer(
        model, smollm2_tokenizer, small_config(), base_model="mine", output_dir="run"
    )
    assert trainer.record()["base_model"] == str(tmp_path / "mine")


def test_cli_records_a_local_base_by_absolute_path_and_refuses_unjudged_held_out_queries(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    qrels.write_text("\n".join(line for line in qrels.read_text().splitlines() if "q3" not in line))
    monkeypatch.chdir(tmp_path)
    args = [
        "train", candidates.name, "--qrels", qrels.name, "--steps", "1",
        "--model", os.path.relpath(tiny_model_dir, tmp_path), "--grad-accumulation", "1",
        "--min-window", "3", "--max-window", "6", "--warmup-steps", "0",
    ]  # fmt: skip
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["q0", "q1", "q2"], "validation": []}))
    assert main([*args, "--split", str(split), "--output", "run"]) == 0
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    split.write_text(json.dumps({"train": ["q0", "q1"], "validation": ["q2", "q3"]}))
    assert main([*args, "--split", str(split), "--output", "held"]) == 2
    assert "held-out queries without qrels: q3;" in capsys.readouterr().err
    assert not (tmp_path / "held" / "split.json").exists()


def test_cli_trains_validates_and_writes_adapter_and_merged_weights(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    output = tmp_path / "trained"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=2)
    args += ["--template", "first-echo", "--merge"]
    assert main(args) == 0
    trained_with = replace(FIRST_ECHO_TEMPLATE, max_passage_words=TrainConfig().max_passage_words)
    assert recorded_template(str(output)) == trained_with
    assert recorded_template(str(output / "merged")) == trained_with
    record = json.loads((output / "training.json").read_text())
    split = json.loads((output / "split.json").read_text())
    assert len(split["train"]) == len(split["validation"]) == 2
    assert not set(split["train"]) & set(split["validation"])
    assert [h["step"] for h in record["history"] if h.get("validation") is not None] == [0, 1, 2]
    assert main([*args[:-1], "--qrels", str(qrels), "--validation-fraction", "0.99"]) == 2
    # with no validation the output is the last update, which training changed
    last = tmp_path / "last"
    unvalidated = validated_train_args(candidates, qrels, last, tiny_model_dir, steps=2)
    assert (
        main([*unvalidated, "--validation-fraction", "0", "--learning-rate", "0.05", "--merge"])
        == 0
    )
    labels = resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS)
    prompt = PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    ids = [prompt.build("flea life", TEXTS).token_ids]
    pad = smollm2_tokenizer.pad_token_id

    def scores(model: Path) -> Any:
        lm = load_causal_lm(resolve_model(str(model)))
        return TorchLabelScorer(lm, labels, pad_token_id=pad).score(ids)

    adapter = scores(last)
    assert np.abs(adapter - scores(tiny_model_dir)).max() > 1e-3, "the adapter changes nothing"
    np.testing.assert_allclose(adapter, scores(last / "merged"), atol=1e-4)


def test_cli_progress_bar_shows_validations_and_leaves_them_out_of_the_rate(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from haystack_llmrank.cli import main

    slow_validation(monkeypatch, 3.0)
    candidates, qrels = write_toy_files(tmp_path)
    args = validated_train_args(candidates, qrels, tmp_path / "run", tiny_model_dir, steps=1)
    assert main(args) == 0
    bar = capsys.readouterr().err
    assert "validating update 0: " in bar
    assert "validating update 1: " in bar
    # the rate shown last: with the 2 validations of 3 s, 6 s/update or more; a tiny
    # model's update and its saves take far less than 3 s, even on a busy machine
    value, unit = re.findall(r"([0-9.]+)(s/update|update/s)", bar)[-1]
    assert (float(value) if unit == "s/update" else 1 / float(value)) < 3.0


def test_cli_resumes_with_the_same_ranknet_reduction_and_counts_this_runs_updates(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    output = tmp_path / "run"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=3)
    assert main([*args, "--ranknet-reduction", "mean", "--stop-after", "1"]) == 0
    assert "trained 1 updates in " in capsys.readouterr().out
    record = json.loads((output / "training.json").read_text())
    assert record["config"]["ranknet_reduction"] == "mean"
    assert main([*args, "--resume"]) == 2
    assert "ranknet_reduction 'mean', not 'sum'" in capsys.readouterr().err
    assert main([*args, "--ranknet-reduction", "mean", "--resume"]) == 0
    assert "trained 2 updates (3 in all) in " in capsys.readouterr().out


def test_resume_refuses_a_run_that_ends_at_or_before_the_checkpoint(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import haystack_llmrank.cli.train as train_cli
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    output = tmp_path / "run"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=4)
    assert main([*args, "--stop-after", "2"]) == 0
    record = (output / "training.json").read_text()
    capsys.readouterr()

    def loads_no_model(*args: Any) -> Any:
        raise AssertionError("the model loaded")

    monkeypatch.setattr(train_cli, "_trainer", loads_no_model)
    checkpoint = output / "checkpoint"
    for changes, refusal in (
        (["--stop-after", "1"], "ends at update 1 (stop_after=1): it would train nothing; give "
         "a stop_after above 2 (--stop-after), or none"),
        (["--stop-after", "2"], "ends at update 2 (stop_after=2)"),
        (["--steps", "2"], "ends at update 2 (steps=2): it would train nothing; give steps "
         "above 2 (--steps)"),
    ):  # fmt: skip
        assert main([*args, *changes, "--resume"]) == 2
        assert f"{checkpoint} is at update 2, and this run {refusal}" in capsys.readouterr().err
    assert (output / "training.json").read_text() == record
    # from Python, fit refuses it
    trainer = FirstTrainer(
        load_causal_lm(resolve_model(str(tiny_model_dir))),
        smollm2_tokenizer,
        small_config(steps=2),
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "python",
    )
    queries = training_queries([toy_query()], qrels=TOY_QRELS)
    trainer.fit(queries)
    with pytest.raises(ValueError, match="is at update 2, and this run ends at update 2"):
        trainer.fit(queries)


def test_cli_refuses_an_earlier_runs_output_without_resume(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    output = tmp_path / "run"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=1)
    args += ["--validation-fraction", "0"]
    assert main(args) == 0
    capsys.readouterr()
    # a --full run here would leave the adapter that the folder loads
    assert main([*args, "--full"]) == 2
    assert (
        f"{output} holds the output of an earlier training run (adapter_config.json, "
        "checkpoint, training.json); continue that run with --resume, or train into another "
        "folder" in capsys.readouterr().err
    )
    assert resolve_model(str(output)).adapter is not None
    # nor may --resume start over where it finds no checkpoint: it would replace the model
    adapter = (output / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(output / "checkpoint")
    assert main([*args, "--resume", "--steps", "2"]) == 2
    assert "but no checkpoint to resume it from; starting over would replace it" in (
        capsys.readouterr().err
    )
    assert (output / "adapter_model.safetensors").read_bytes() == adapter
    assert json.loads((output / "training.json").read_text())["steps"] == 1
    # a run stopped before its first checkpoint leaves only its step-0 model: it starts over
    (output / "training.json").unlink()
    assert main([*args, "--resume", "--steps", "2"]) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    assert json.loads((output / "training.json").read_text())["steps"] == 2
    # a run refused at setup writes nothing, so the folder's split stays resumable
    fresh = tmp_path / "fresh"
    bad = validated_train_args(candidates, qrels, fresh, tiny_model_dir, steps=1)
    assert main([*bad, "--lora-targets", "fooo_proj"]) == 2
    assert "name no module of LlamaForCausalLM: fooo_proj" in capsys.readouterr().err
    assert not (fresh / "split.json").exists()


def test_resume_puts_back_a_checkpoint_that_a_stopped_save_moved_aside(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    [query] = training_queries([toy_query()], qrels=TOY_QRELS)

    def trainer() -> FirstTrainer:
        model = make_tiny_llama(len(smollm2_tokenizer), seed=4)
        return FirstTrainer(
            model, smollm2_tokenizer, small_config(steps=2), base_model="x", output_dir=tmp_path
        )

    first = trainer()
    first.fit([query])
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint-old")  # stopped mid-swap
    resumed = trainer()
    assert resumed.resume()
    assert resumed.step == 2
    assert (tmp_path / "checkpoint" / "trainer.json").is_file()
    assert not (tmp_path / ".checkpoint-old").exists()


def test_cli_refuses_qrels_that_judge_none_of_the_input_queries(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    prefixed = tmp_path / "prefixed.txt"
    prefixed.write_text(qrels.read_text().replace("q", "Q"))  # "Q0" is not "q0"
    teacher = tmp_path / "teacher.run"  # scores every candidate: nothing else would stop it
    teacher.write_text(
        "".join(f"q{q} Q0 q{q}d{i} {i + 1} {9.0 - i} t\n" for q in range(4) for i in range(6))
    )
    args = validated_train_args(candidates, prefixed, tmp_path / "run", tiny_model_dir, steps=1)
    assert main([*args, "--validation-fraction", "0", "--teacher", str(teacher)]) == 2
    assert f"none of the 4 queries of {prefixed} is among the queries of {candidates}" in (
        capsys.readouterr().err
    )


def test_a_drawn_split_holds_out_only_queries_with_qrels() -> None:
    from haystack_llmrank.cli.train import split_queries

    qids = [f"q{i}" for i in range(8)]
    # every query judged: the draw over all of them, as recorded splits were drawn
    assert split_queries(qids, 0.3, 0, set(qids)) == (
        ["q0", "q2", "q3", "q4", "q5", "q6"],
        ["q1", "q7"],
    )
    for seed in range(10):
        assert split_queries(qids, 0.3, seed, set(qids)) == split_queries(qids, 0.3, seed)
    judged = {"q0", "q1", "q2", "q3", "q4"}
    for seed in range(20):
        train, validation = split_queries(qids, 0.3, seed, judged)
        assert len(validation) == 2  # 30% of the 5 judged queries
        assert set(validation) <= judged
        assert sorted(train + validation) == qids
    with pytest.raises(ValueError, match="1 queries with qrels are too few to hold out 30%"):
        split_queries(qids, 0.3, 0, {"q0"})
    with pytest.raises(ValueError, match="none of the 2 queries with qrels would be left to"):
        split_queries(qids, 0.9, 0, {"q0", "q1"})


def test_cli_draws_held_out_queries_among_those_with_qrels(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path, queries=8)
    unjudged = ("q5", "q6", "q7")  # the default seed's draw over all 8 holds out q1 and q7
    kept = [line for line in qrels.read_text().splitlines() if not line.startswith(unjudged)]
    qrels.write_text("\n".join(kept) + "\n")
    teacher = tmp_path / "teacher.run"
    teacher.write_text(
        "".join(f"q{q} Q0 q{q}d{i} {i + 1} {9.0 - i} t\n" for q in range(8) for i in range(6))
    )
    args = validated_train_args(candidates, qrels, tmp_path / "run", tiny_model_dir, steps=1)
    assert main([*args[:-2], "--teacher", str(teacher)]) == 0  # the default fraction and seed
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["validation"] == ["q0", "q1"]
    assert set(unjudged) <= set(split["train"])


def test_cli_resumes_with_a_given_split_of_the_same_queries(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    output = tmp_path / "run"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=2)
    assert main([*args, "--stop-after", "1"]) == 0
    drawn = json.loads((output / "split.json").read_text())
    assert drawn["seed"] == 0
    given = tmp_path / "split.json"  # the same queries; a given split records no seed
    given.write_text(json.dumps({"train": drawn["train"], "validation": drawn["validation"]}))
    resumed = [*args[:-2], "--resume", "--split", str(given)]  # without --validation-fraction
    assert main(resumed) == 0
    assert "trained 1 updates (2 in all)" in capsys.readouterr().out
    swapped = {"train": drawn["validation"], "validation": drawn["train"]}
    given.write_text(json.dumps(swapped))
    assert main(resumed) == 2
    assert "holds another query split; resume with the same one" in capsys.readouterr().err


def test_a_split_that_lists_a_qid_twice_is_refused(tmp_path: Path) -> None:
    from haystack_llmrank.cli.train import read_split

    split = tmp_path / "split.json"
    qids = ["q0", "q1", "q2", "q3"]
    split.write_text(json.dumps({"train": ["q1", "q1", "q2", "q2", "q1"], "validation": ["q0"]}))
    with pytest.raises(ValueError, match=r"qids listed twice in 'train': q1, q2$"):
        read_split(split, qids)
    split.write_text(json.dumps({"train": ["q1"], "validation": ["q0", "q3", "q0"]}))
    with pytest.raises(ValueError, match=r"qids listed twice in 'validation': q0$"):
        read_split(split, qids)


def test_cli_refuses_the_options_of_a_drawn_split_with_a_given_one(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["q0", "q1", "q2"], "validation": ["q3"]}))
    output = tmp_path / "run"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=1)[:-2]
    for given, error in (
        (["--validation-fraction", "0"], "--validation-fraction would draw a split, and --split "),
        (["--split-seed", "7"], "--split-seed would draw a split, and --split gives one: leave it"),
        (
            ["--split-seed", "0", "--validation-fraction", "0.3"],
            "--validation-fraction and --split-seed would draw a split, and --split gives one: "
            "leave them out",
        ),
    ):
        assert main([*args, "--split", str(split), *given]) == 2
        assert error in capsys.readouterr().err
    assert not output.exists()


def two_splits_and_a_first_stage(
    model: Path, tmp_path: Path
) -> tuple[Callable[..., int], Path, Path, Path]:
    """``train(output, split, *options, steps=1)``, which runs ``llmrank train`` on the toy
    files; two splits, ``first`` and one that holds out two of its training queries; and
    the output of a run trained on ``first``."""
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    first, other = tmp_path / "first.json", tmp_path / "other.json"
    first.write_text(json.dumps({"train": ["q0", "q1", "q2"], "validation": ["q3"]}))
    other.write_text(json.dumps({"train": ["q2", "q3"], "validation": ["q0", "q1"]}))

    def train(output: str, split: Path, *more: str, steps: int = 1) -> int:
        args = validated_train_args(candidates, qrels, tmp_path / output, model, steps=steps)
        return main([*args[:-2], "--split", str(split), *more])  # without --validation-fraction

    assert train("stage1", first) == 0
    return train, first, other, tmp_path / "stage1"


def test_cli_refuses_to_validate_on_queries_the_starting_weights_were_trained_on(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, first, other, stage1 = two_splits_and_a_first_stage(tiny_model_dir, tmp_path)
    checkpoint = stage1 / "checkpoint"
    capsys.readouterr()
    for start, file in (
        (stage1, stage1 / "split.json"),
        (checkpoint / "model", checkpoint / "trainer.json"),
    ):
        assert train("stage2", other, "--init-adapter", str(start)) == 2
        assert (
            f"{file} records that {start}, which this run starts "
            "from, was trained on 2 of this run's held-out queries: q0, q1; validation would "
            "score queries it learned" in capsys.readouterr().err
        )
    # a checkpoint from before checkpoints recorded their split: its run's split.json
    meta = json.loads((checkpoint / "trainer.json").read_text())
    del meta["split"]
    (checkpoint / "trainer.json").write_text(json.dumps(meta))
    assert train("stage2", other, "--init-adapter", str(checkpoint / "model")) == 2
    assert f"{stage1 / 'split.json'} records that {checkpoint / 'model'}" in (
        capsys.readouterr().err
    )
    # the multi-stage recipes: every stage on the same split
    assert train("stage2", first, "--init-adapter", str(checkpoint / "model")) == 0
    # full weights trained on the first split, as the base model
    assert train("full", first, "--full") == 0
    assert train("stage2-full", other, "--model", str(tmp_path / "full")) == 2
    assert f"{tmp_path / 'full' / 'split.json'} records that {tmp_path / 'full'}" in (
        capsys.readouterr().err
    )
    # merged weights carry their run's split
    assert train("merged", first, "--merge") == 0
    merged = tmp_path / "merged" / "merged"
    assert train("stage2-merged", other, "--model", str(merged)) == 2
    assert f"{merged / 'split.json'} records that {merged}" in capsys.readouterr().err


def test_cli_refuses_to_validate_on_queries_the_default_adapter_was_trained_on(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main
    from haystack_llmrank.models import DEFAULT_ADAPTER

    candidates, qrels = write_toy_files(tmp_path)
    recorded = PROJECT_ROOT / "examples" / "results" / "split-seed0.json"  # the adapter's
    trained_on = json.loads(recorded.read_text())["train"][:2]
    for file in (candidates, qrels):  # q0 and q1 take qids the default adapter trained on
        file.write_text(file.read_text().replace("q0", trained_on[0]).replace("q1", trained_on[1]))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["q2", "q3"], "validation": trained_on}))
    args = validated_train_args(candidates, qrels, tmp_path / "run", tiny_model_dir, steps=1)
    assert main([*args[:-2], "--split", str(split), "--init-adapter", str(DEFAULT_ADAPTER)]) == 2
    assert (
        f"{DEFAULT_ADAPTER / 'split.json'} records that {DEFAULT_ADAPTER}, which this run starts "
        f"from, was trained on 2 of this run's held-out queries: {', '.join(sorted(trained_on))}"
        in capsys.readouterr().err
    )


def test_a_copied_checkpoint_resumes_only_on_the_split_it_records(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, first, other, stage1 = two_splits_and_a_first_stage(tiny_model_dir, tmp_path)
    copy = tmp_path / "copy" / "checkpoint"
    shutil.copytree(stage1 / "checkpoint", copy)  # without the run's split.json
    capsys.readouterr()
    assert train("copy", other, "--resume", steps=2) == 2
    assert f"{copy / 'trainer.json'} holds another query split" in capsys.readouterr().err
    assert train("copy", first, "--resume", steps=2) == 0
    assert "trained 1 updates (2 in all)" in capsys.readouterr().out


def test_the_closing_line_shows_a_best_validation_of_zero() -> None:
    from haystack_llmrank.cli.train import summary

    record = {
        "steps": 4,
        "best_validation_ndcg@10": 0.0,
        "best_step": 0,
        "validation_dtype": "bfloat16",
    }
    assert summary(record, 0, 12.3, Path("out")) == (
        "trained 4 updates in 12 s; best validation nDCG@10 0.0000 in bfloat16 at update 0; "
        "model in out"
    )
    unvalidated = {**record, "best_validation_ndcg@10": None}
    assert summary(unvalidated, 3, 2.0, Path("out")) == (
        "trained 1 updates (4 in all) in 2 s; model in out"
    )


def test_cli_rank_by_vote_records_the_vote_and_validates_by_it(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from haystack_llmrank.cli import main
    from haystack_llmrank.reranker import Reranker

    readouts: list[tuple[str | None, tuple[str, ...]]] = []  # what validation ranked by
    building = Reranker.__init__

    def recording(self: Reranker, tokenizer: Any, scorer: Any, **kwargs: Any) -> None:
        readouts.append((kwargs["template"].vote, scorer.label_ids.labels))
        building(self, tokenizer, scorer, **kwargs)

    monkeypatch.setattr(Reranker, "__init__", recording)
    candidates, qrels = write_toy_files(tmp_path)
    output = tmp_path / "voted"
    args = validated_train_args(candidates, qrels, output, tiny_model_dir, steps=1)
    args += ["--passage-ranknet-weight", "1"]
    assert main([*args, "--rank-by-vote"]) == 2, "--rank-by-vote needs --passage-vote"
    with caplog.at_level("INFO", logger="haystack_llmrank.training.trainer"):
        assert main([*args, "--passage-vote", " yes", "--rank-by-vote"]) == 0
    assert recorded_template(str(output)) == replace(
        FIRST_TEMPLATE.with_vote(" yes"), max_passage_words=TrainConfig().max_passage_words
    )
    record = json.loads((output / "training.json").read_text())
    validated = [h["validation"] for h in record["history"] if h.get("validation") is not None]
    assert len(validated) == 2
    assert "validation nDCG@10" in caplog.text
    assert readouts == [(" yes", (" yes",))] * 2
    monkeypatch.undo()
    reranker = Reranker.from_pretrained(str(output), device="cpu")
    assert reranker.prompts.template.vote == " yes"
    assert reranker.scorer.label_ids.labels == (" yes",)


def test_every_public_training_name_resolves() -> None:
    import haystack_llmrank.training as training

    for name in training.__all__:
        assert getattr(training, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        _ = training.Trainer  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "cli", "library"),
    [
        (
            ["--pool", "3", "--max-window", "4"],
            "--pool (3) is smaller than --max-window (4): windows are drawn from the first "
            "--pool candidates and could never be that large; raise --pool or lower --max-window",
            "pool (3) is smaller than max_size (4)",
        ),
        (
            ["--mirrored", "--grad-accumulation", "3"],
            "--mirrored windows come in pairs: --grad-accumulation must be even, got 3",
            "grad_accumulation must be even",
        ),
        (
            ["--objective", "pointwise"],
            "--objective 'pointwise' scores passages by --passage-vote; set it",
            "objective 'pointwise' scores passages by passage_vote",
        ),
        (
            ["--objective", "pointwise", "--passage-vote", " yes", "--orders", "shuffled:1"],
            "the input order (--orders, with their weights) has no effect with --objective "
            "'pointwise'",
            "the input order (orders, with their weights) has no effect",
        ),
        (
            ["--passage-vote", " yes"],
            "--passage-vote is used only with a positive --passage-ranknet-weight or "
            "--pointwise-weight",
            "passage_vote is used only with a positive passage_ranknet_weight or pointwise_weight",
        ),
        (
            ["--warmup-steps", "4", "--steps", "4"],
            "--warmup-steps must be in [0, --steps=4), got 4: the rate reaches --learning-rate",
            "warmup_steps (--warmup-steps) must be in [0, steps=4)",
        ),
        (
            [
                "--template",
                str(PROJECT_ROOT / "haystack_llmrank/default_adapter/llmrank_template.json"),
            ],
            "--template 'judge' ranks by the vote ' yes'; train that token: "
            "--passage-vote=' yes', with a positive --passage-ranknet-weight or "
            "--pointwise-weight",
            "template 'judge' ranks by the vote ' yes'; train that token: "
            "passage_vote=' yes', with a positive passage_ranknet_weight or pointwise_weight",
        ),
    ],
)
def test_train_command_line_refusals_name_its_options_and_the_api_its_fields(
    options: list[str], cli: str, library: str
) -> None:
    """From ``llmrank train`` a refused setting is named by its option (and a template's vote
    asks for all it needs at once, before the model loads); from Python, by its field."""
    from haystack_llmrank.cli import build_parser
    from haystack_llmrank.cli.train import _config, _settings, _template
    from haystack_llmrank.training.trainer import check_template_vote

    parser = build_parser("train")
    args = parser.parse_args(["train", "c.jsonl", "--qrels", "q.txt", "-o", "out", *options])
    with pytest.raises(ValueError, match=re.escape(cli)):
        _config(args)
    with pytest.raises(ValueError, match=re.escape(library)):
        check_template_vote(_template(args), _settings(args))


def test_the_train_command_line_sets_window_orders_and_their_weights(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from haystack_llmrank.cli import build_parser
    from haystack_llmrank.cli.train import _config

    parser = build_parser("train")
    base = ["train", "c.jsonl", "--qrels", "q.txt", "-o", "out"]
    default = _config(parser.parse_args(base)).sampling
    assert default == WindowSampling()
    args = parser.parse_args(
        [*base, "--orders", "first-stage:0.8,shuffled:0.2", "--contiguous", "1"]
    )
    sampling = _config(args).sampling
    assert sampling.orders == ("first-stage", "shuffled")
    assert sampling.order_weights == (0.8, 0.2)
    assert sampling.contiguous == 1.0
    with pytest.raises(ValueError, match="orders must be among"):
        _config(parser.parse_args([*base, "--orders", "sideways:1"]))
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--orders", "shuffled:lots"])
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--orders", "shuffled:0.5,shuffled:0.5"])
    for weight in ("nan", "inf", "-1"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--orders", f"first-stage:1,shuffled:{weight}"])
        assert (
            f"argument --orders: the weight in 'shuffled:{weight}' must be a finite number >= 0"
            in capsys.readouterr().err
        )
    assert _config(parser.parse_args([*base, "--mirrored"])).sampling.mirrored
    assert _config(parser.parse_args(base)).ranknet_reduction == "sum"
    mean = _config(parser.parse_args([*base, "--ranknet-reduction", "mean"]))
    assert mean.ranknet_reduction == "mean"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--ranknet-reduction", "max"])
    top = _config(parser.parse_args([*base, "--lora-top-layers", "8"])).lora
    assert top == LoraSettings(top_layers=8)
    with pytest.raises(ValueError, match="--lora-top-layers: LoRA options, which --full"):
        _config(parser.parse_args([*base, "--full", "--lora-top-layers", "8"]))
    assert _config(parser.parse_args([*base, "--lora-dropout", "0"])).lora == LoraSettings(
        dropout=0.0
    )
    with pytest.raises(ValueError, match=r"LoRA --lora-dropout must be in \[0, 1\), got 1.0"):
        _config(parser.parse_args([*base, "--lora-dropout", "1"]))
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--lora-dropout", "-0.1"])
    for option in (
        ["--lora-rank", "8"],
        ["--lora-alpha", "8"],
        ["--lora-dropout", "0"],
        ["--lora-targets", "q_proj"],
    ):
        with pytest.raises(ValueError, match=f"{option[0]}: LoRA options, which --full"):
            _config(parser.parse_args([*base, "--full", *option]))
    assert _config(parser.parse_args([*base, "--full"])).lora is None
    started = _config(
        parser.parse_args([*base, "--init-adapter", "runs/a", "--batch-windows", "4"])
    )
    voted = _config(
        parser.parse_args([*base, "--passage-ranknet-weight", "2", "--passage-vote", " yes"])
    )
    assert (voted.passage_ranknet_weight, voted.passage_vote) == (2.0, " yes")
    mixed = _config(
        parser.parse_args([*base, "--pointwise-weight", "1.5", "--passage-vote", " yes"])
    )
    assert (mixed.pointwise_weight, mixed.objective) == (1.5, "first")
    assert started.lora == LoraSettings(init_from="runs/a")
    assert started.batch_windows == 4
    with pytest.raises(ValueError, match="--init-adapter: LoRA options, which --full"):
        _config(parser.parse_args([*base, "--full", "--init-adapter", "runs/a"]))


def test_train_and_export_take_a_template_file_and_refuse_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import build_parser

    good, bad = tmp_path / "echo.json", tmp_path / "bad.json"
    good.write_text(json.dumps(FIRST_ECHO_TEMPLATE.to_dict()))
    bad.write_text(json.dumps({**FIRST_ECHO_TEMPLATE.to_dict(), "passage": "[{label}]\n"}))
    base = ["train", "c.jsonl", "--qrels", "q.txt", "-o", "out", "--template"]
    assert build_parser("train").parse_args([*base, str(good)]).template == str(good)
    for command in ([*base, str(bad)], ["export", "m", "out", "--template", str(bad)]):
        with pytest.raises(SystemExit):
            build_parser(command[0]).parse_args(command)
        assert "and {text} once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser("train").parse_args([*base, "fist-echo"])
    assert "unknown prompt template 'fist-echo'" in capsys.readouterr().err


def test_a_template_file_sets_the_passage_length_and_other_ones_are_named(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import haystack_llmrank
    from haystack_llmrank.cli import build_parser
    from haystack_llmrank.cli.train import _config

    shipped = Path(haystack_llmrank.__file__).parent / "default_adapter" / "llmrank_template.json"
    parser = build_parser("train")
    base = ["train", "c.jsonl", "--qrels", "q.txt", "-o", "out"]

    def words(*given: str) -> int:
        return int(_config(parser.parse_args([*base, *given])).max_passage_words)

    vote = ["--passage-vote", " yes", "--passage-ranknet-weight", "1"]  # as it ranks
    assert words("--template", str(shipped), *vote) == 48  # the length it records
    assert words("--template", str(shipped), *vote, "--max-passage-words", "30") == 30
    assert words() == words("--template", "first-judge") == 64  # none recorded
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        FirstTrainer(
            make_tiny_llama(len(smollm2_tokenizer), seed=4),
            smollm2_tokenizer,
            small_config(max_passage_words=30),
            base_model="x",
            output_dir=tmp_path / "short",
            template=replace(FIRST_TEMPLATE, max_passage_words=48),
        )
    assert (
        "template 'first' records max_passage_words=48; this run trains at 30, which the "
        "saved template records" in caplog.text
    )
    echo = tmp_path / "echo"
    train_adapter(smollm2_tokenizer, tiny_model_dir, echo, steps=1, template=FIRST_ECHO_TEMPLATE)

    def started_from_echo(template: PromptTemplate, **changes: Any) -> str:
        caplog.clear()
        lora = LoraSettings(rank=4, alpha=8, dropout=0.0, init_from=str(echo))
        with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
            FirstTrainer(
                load_causal_lm(resolve_model(str(tiny_model_dir))),
                smollm2_tokenizer,
                small_config(lora=lora, **changes),
                base_model="x",
                output_dir=tmp_path / "next",
                template=template,
            )
        return caplog.text

    assert (
        f"the adapter this run starts from, {echo}, was trained with template 'first-echo', "
        "and this run's differs: name 'first-echo' there, 'first' here; passage"
    ) in started_from_echo(FIRST_TEMPLATE)
    assert "differs: max_passage_words 64 there, 48 here; this run trains it on" in (
        started_from_echo(FIRST_ECHO_TEMPLATE, max_passage_words=48)
    )
    assert started_from_echo(FIRST_ECHO_TEMPLATE) == ""


def test_training_on_from_a_model_folder_names_another_recorded_template(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from haystack_llmrank.cli import main
    from haystack_llmrank.model_templates import write_template

    candidates, qrels = write_toy_files(tmp_path)
    echo = tmp_path / "echo"  # full weights, or merged/, trained with first-echo
    shutil.copytree(tiny_model_dir, echo)
    trained_with = replace(FIRST_ECHO_TEMPLATE, max_passage_words=TrainConfig().max_passage_words)
    write_template(echo, trained_with)
    args = validated_train_args(candidates, qrels, tmp_path / "on", echo, steps=1)
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        assert main([*args, "--full", "--validation-fraction", "0"]) == 0
    assert (
        f"the model this run starts from, {echo}, was trained with template 'first-echo', "
        "and this run's differs: name 'first-echo' there, 'first' here; passage"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.training.trainer"):
        FirstTrainer(
            load_causal_lm(resolve_model(str(echo))),
            smollm2_tokenizer,
            small_config(),
            base_model=str(echo),
            output_dir=tmp_path / "same",
            template=FIRST_ECHO_TEMPLATE,
        )
    assert "starts from" not in caplog.text


def test_training_from_an_adapter_names_its_base_and_init_adapter(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from haystack_llmrank.cli import main

    candidates, qrels = write_toy_files(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"base_model_name_or_path": str(tiny_model_dir), "peft_type": "LORA"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    args = ["train", str(candidates), "--qrels", str(qrels), "--output", str(tmp_path / "out")]
    assert main([*args, "--model", str(adapter)]) == 2
    error = capsys.readouterr().err
    assert f"--model {tiny_model_dir}" in error
    assert f"--init-adapter {adapter.resolve()}" in error


def long_query_setup(
    tokenizer: Any, tmp_path: Path, window_limit: int
) -> tuple[Any, list[TrainingQuery], int]:
    """A trainer whose budget fits ``window_limit`` but not 6 passages of a long query (at
    the prompt builder's floor of tokens per passage), in a template that restates the query
    per passage, and its training queries."""
    judge = PromptTemplate.from_dict(
        {**FIRST_TEMPLATE.to_dict(), "name": "judge", "passage": "[{label}] {query}: {text}\n"}
    )
    long_query = QueryCandidates("long", " ".join(["flea"] * 60), toy_query().candidates)
    queries = training_queries([toy_query(), long_query], qrels={**TOY_QRELS, "long": {"d1": 1}})
    builder = PromptBuilder(tokenizer, judge, max_prompt_tokens=4096)
    limit = builder.least_budget(long_query.query, window_limit)
    assert builder.least_budget(long_query.query, window_limit + 1) > limit
    assert builder.least_budget(toy_query().query, 6) < limit
    model = make_tiny_llama(len(tokenizer), seed=4)
    config = small_config(steps=6, eval_every=100, max_prompt_tokens=limit)
    trainer = FirstTrainer(
        model, tokenizer, config, base_model="x", output_dir=tmp_path, template=judge
    )
    return trainer, queries, limit


def test_a_query_too_long_for_the_largest_windows_is_drawn_in_windows_that_fit(
    smollm2_tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer, queries, _ = long_query_setup(smollm2_tokenizer, tmp_path, window_limit=4)
    drawn: list[TrainingWindow] = []
    backward = trainer._first_backward

    def recorded(windows: Any) -> Any:
        drawn.extend(windows)
        return backward(windows)

    trainer._first_backward = recorded  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        trainer.fit(queries)
    assert "1 training queries are too long for windows of 6" in caplog.text
    assert "long (4)" in caplog.text
    sizes = {q: {len(w.passages) for w in drawn if w.qid == q} for q in ("q1", "long")}
    assert sizes["long"]
    assert max(sizes["long"]) <= 4
    assert max(sizes["q1"]) > 4  # the other query keeps its larger windows


def test_a_prompt_budget_beyond_the_models_context_is_refused(smollm2_tokenizer: Any) -> None:
    model = make_tiny_llama(len(smollm2_tokenizer), seed=4)  # 4096 positions
    encoder = WindowEncoder(
        smollm2_tokenizer, PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    )
    target = encoder.target_tokens(6)
    window = TrainingWindow("q", "q", ("a",) * 6, (5, 4, 3, 2, 1, 0))
    assert target == len(encoder.encode(window).input_ids) - encoder.encode(window).prompt_length
    fits = small_config(max_prompt_tokens=4096 - target)
    FirstTrainer(model, smollm2_tokenizer, fits, base_model="x", output_dir="unused")
    over = small_config(max_prompt_tokens=4097 - target)
    with pytest.raises(
        ValueError,
        match=rf"exceed the model's context of 4096 tokens; lower "
        rf"max_prompt_tokens \(--max-prompt-tokens\) to {4096 - target} or less",
    ):
        FirstTrainer(model, smollm2_tokenizer, over, base_model="x", output_dir="unused")


def test_training_refuses_a_query_too_long_for_its_smallest_windows_before_any_update(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    trainer, queries, limit = long_query_setup(smollm2_tokenizer, tmp_path, window_limit=2)
    with pytest.raises(
        ValueError, match=rf"1 training queries do not fit max_prompt_tokens={limit} .*: long;"
    ):
        trainer.fit(queries)
    assert trainer.step == 0
    assert not (tmp_path / "checkpoint").exists()
