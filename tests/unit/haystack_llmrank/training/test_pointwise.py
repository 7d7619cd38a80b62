"""The pointwise warm-up objective, its weight beside FIRST's loss, ``stop_after`` and
``max_minutes``, on tiny
random models."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import fit_toy, lora_gradients, make_tiny_llama, small_config

from haystack_llmrank.data import Candidate, QueryCandidates, run_from_rankings
from haystack_llmrank.evaluation import evaluate
from haystack_llmrank.model_templates import recorded_template
from haystack_llmrank.models import load_causal_lm, resolve_model
from haystack_llmrank.prompt import (
    FIRST_JUDGE_TEMPLATE,
    JUDGE_TEMPLATE,
    PromptBuilder,
    PromptTemplate,
)
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.training import (
    FirstTrainer,
    LoraSettings,
    PointwiseScorer,
    TrainConfig,
    Validation,
    WindowSampling,
    pairwise_ranknet,
    training_queries,
)
from haystack_llmrank.training.adapters import make_trainable
from haystack_llmrank.training.pointwise import POINTWISE_PROMPT

PASSAGES = (
    "Fleas live on cats and dogs.",
    "The flea life cycle has four stages: egg, larva, pupa and adult.",
    "Roman roads connected the provinces.",
    "Adult fleas live two to three months.",
    "The stock market closed higher.",
)
QUERY = QueryCandidates(
    "q1",
    "how long do fleas live",
    tuple(Candidate(f"d{i}", text, float(9 - i)) for i, text in enumerate(PASSAGES)),
)
QRELS = {"q1": {"d1": 3, "d3": 2, "d0": 1, "d2": 0}}


def yes_id(tokenizer: Any) -> int:
    [token] = tokenizer(" yes", add_special_tokens=False)["input_ids"]
    return int(token)


def pointwise_config(**changes: Any) -> TrainConfig:
    config: TrainConfig = small_config(
        **{"objective": "pointwise", "passage_vote": " yes", **changes}
    )
    return config


def tiny_trainer(tokenizer: Any, config: TrainConfig, output: Path) -> FirstTrainer:
    """A trainer of a tiny random model over ``tokenizer``, writing to ``output``."""
    return FirstTrainer(
        make_tiny_llama(len(tokenizer), seed=4),
        tokenizer,
        config,
        base_model="unused",
        output_dir=output,
    )


def test_pairwise_ranknet_matches_a_hand_computed_value() -> None:
    scores = torch.tensor([0.5, -1.0, 2.0])
    target = (2, 0, 1)  # position 2 best, then 0, then 1
    pairs = [(2, 0), (2, 1), (0, 1)]  # (better, worse)
    expected = np.mean([math.log1p(math.exp(scores[w] - scores[b])) for b, w in pairs])
    assert pairwise_ranknet(scores, target).item() == pytest.approx(expected)
    assert pairwise_ranknet(torch.zeros(4), (3, 1, 0, 2)).item() == pytest.approx(math.log(2))
    assert pairwise_ranknet(torch.tensor([1.0]), (0,)).item() == 0.0


def test_each_passage_is_scored_as_its_own_prompt_alone(smollm2_tokenizer: Any) -> None:
    # float64, so that the padded and the one-prompt passes cannot round apart (scores come
    # back as float32, hence rel=1e-6)
    model = make_tiny_llama(len(smollm2_tokenizer), seed=3).double()
    scorer = PointwiseScorer(
        smollm2_tokenizer, yes_id(smollm2_tokenizer), max_passage_words=4, max_prompt_tokens=64
    )
    prompts = scorer.encode(QUERY.query, PASSAGES[:3])
    cut = POINTWISE_PROMPT.format(query=QUERY.query, text="The flea life cycle")
    assert prompts[1] == (tuple(smollm2_tokenizer(cut)["input_ids"]), len(prompts[1].ids) - 1)
    assert len({len(p.ids) for p in prompts}) > 1  # so the shorter ones are padded
    batched = scorer.score_ids(model, prompts)
    for prompt, score in zip(prompts, batched, strict=True):
        logits = model(input_ids=torch.tensor([prompt.ids])).logits[0, -1]
        assert score.item() == pytest.approx(logits[scorer.vote_id].item(), rel=1e-6)
    assert scorer.scores(model, QUERY.query, PASSAGES[:3], batch_size=2) == pytest.approx(
        batched.tolist(), rel=1e-6
    )
    short = PointwiseScorer(
        smollm2_tokenizer, scorer.vote_id, max_passage_words=300, max_prompt_tokens=10
    )
    with pytest.raises(ValueError, match="exceeds max_prompt_tokens=10"):
        short.encode(QUERY.query, PASSAGES[:1])
    with pytest.raises(ValueError, match="at least one prompt"):
        scorer.score_ids(model, [])
    # special-token strings in training text stay text, as in ranking prompts
    (planted,) = scorer.encode("q<|im_end|>", ["x<|endoftext|> y"])
    assert not set(planted.ids) & set(smollm2_tokenizer.all_special_ids)


class CountingTokenizer:
    """A tokenizer that counts the texts it tokenises."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.calls: Counter[str] = Counter()

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.calls[text] += 1
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize(
    "changes", [{"objective": "pointwise"}, {"objective": "first", "pointwise_weight": 1.0}]
)
def test_each_pointwise_prompt_is_tokenised_once_for_its_check_and_every_update(
    smollm2_tokenizer: Any, tmp_path: Path, changes: dict[str, Any]
) -> None:
    config = small_config(passage_vote=" yes", sampling=WindowSampling(3, 5, pool=5), **changes)
    trainer = tiny_trainer(smollm2_tokenizer, config, tmp_path)
    assert trainer.pointwise is not None
    counting = CountingTokenizer(smollm2_tokenizer)
    trainer.pointwise._tokenizer = counting
    trainer.fit(training_queries([QUERY], qrels=QRELS))
    # the check tokenised all 5 candidates' prompts; 4 updates drew windows of them again
    assert len(counting.calls) == 5
    assert set(counting.calls.values()) == {1}
    fresh = PointwiseScorer(
        smollm2_tokenizer, trainer.pointwise.vote_id, max_passage_words=64, max_prompt_tokens=4096
    )
    again = trainer.pointwise.encode(QUERY.query, PASSAGES)
    assert again == fresh.encode(QUERY.query, PASSAGES)
    assert [p.ids for p in again] == [
        tuple(smollm2_tokenizer(prompt)["input_ids"]) for prompt in counting.calls
    ]
    assert len(counting.calls) == 5


def test_the_pointwise_objective_learns_the_target_order(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    queries = training_queries([QUERY], qrels=QRELS)
    trainer, reports = fit_toy(
        smollm2_tokenizer, queries, tmp_path, objective="pointwise", passage_vote=" yes"
    )
    assert np.mean([r.ranknet for r in reports[-3:]]) < 0.7 * reports[0].ranknet
    assert all(r.ranknet_chance == pytest.approx(math.log(2)) and r.lm == 0 for r in reports)
    assert all(r.loss == r.ranknet and r.tokens > 5 * 15 for r in reports)
    scores = trainer.pointwise.scores(trainer.model, QUERY.query, PASSAGES)  # type: ignore[union-attr]
    assert int(np.argmax(scores)) == 1  # the grade-3 passage


def test_a_pointwise_run_validates_by_its_scores_and_starts_first_training(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = load_causal_lm(resolve_model(str(tiny_model_dir)))
    trainer = FirstTrainer(
        model,
        smollm2_tokenizer,
        pointwise_config(),
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "pointwise",
    )
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        record = trainer.fit(training_queries([QUERY], qrels=QRELS), Validation([QUERY], QRELS))
    # its output, loaded as a ranker, reads a listwise readout that it did not train
    assert (
        f"{tmp_path / 'pointwise'} holds a pointwise warm start: start FIRST training from it"
        in caplog.text
    )
    assert "its validation nDCG@10 scored each passage in a prompt of its own" in caplog.text
    validated = [h["validation"] for h in record["history"] if h.get("validation") is not None]
    assert len(validated) == 3  # steps 0, 2 and 4
    assert trainer.validate(Validation([QUERY], QRELS)) == pytest.approx(validated[-1])
    # the score validation ranks by: each top candidate's pointwise score
    run = trainer._pointwise_run([QUERY.top(3)])
    assert list(run["q1"]) == ["d0", "d1", "d2"]
    expected = trainer.pointwise.scores(trainer.model, QUERY.query, PASSAGES[:3])  # type: ignore[union-attr]
    assert list(run["q1"].values()) == pytest.approx(expected, rel=1e-5)
    depth = trainer.config.validation_depth
    by_scores = evaluate(trainer._pointwise_run([QUERY.top(depth)]), QRELS, ["ndcg@10"])

    def listwise(*args: Any) -> None:
        raise AssertionError("a pointwise run validated listwise")

    monkeypatch.setattr(trainer, "_listwise_rankings", listwise)
    validated_now = trainer.validate(Validation([QUERY], QRELS))
    assert validated_now == pytest.approx(by_scores.mean["ndcg@10"])
    # its adapter starts FIRST training with the same weights
    saved = trainer.output_dir / "checkpoint" / "model"
    follow = make_trainable(
        load_causal_lm(resolve_model(str(tiny_model_dir))),
        LoraSettings(rank=4, alpha=8, dropout=0.0, init_from=str(saved)),
        gradient_checkpointing=False,
    )
    trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    for name, weight in follow.named_parameters():
        if weight.requires_grad:
            torch.testing.assert_close(weight, trained[name])


def mixed_trainer(tokenizer: Any, output: Path, weight: float, **changes: Any) -> FirstTrainer:
    config = small_config(pointwise_weight=weight, passage_vote=" yes", **changes)
    return tiny_trainer(tokenizer, config, output)


def test_the_pointwise_weight_adds_the_pointwise_loss_to_firsts(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    queries = training_queries([QUERY], qrels=QRELS)
    rng = np.random.default_rng(0)
    sampling = WindowSampling(min_size=3, max_size=5, pool=5)
    windows = [sampling.sample(queries[0], rng) for _ in range(3)]
    mixed = mixed_trainer(smollm2_tokenizer, tmp_path / "mixed", 0.5)
    plain = FirstTrainer(
        make_tiny_llama(len(smollm2_tokenizer), seed=4),
        smollm2_tokenizer,
        small_config(),
        base_model="unused",
        output_dir=tmp_path / "plain",
    )
    mixed_totals, mixed_tokens = mixed._first_backward(windows)
    with_both = lora_gradients(mixed)
    first_totals, first_tokens = plain._first_backward(windows)
    first_only = lora_gradients(plain)
    pointwise_mean, scored = mixed._pointwise_losses(windows, 1.0)
    pointwise_only = lora_gradients(mixed)
    assert pointwise_mean > 0
    assert scored > 0
    assert mixed_tokens == first_tokens + scored
    # summed over the 3 windows: FIRST's terms unchanged, plus 0.5 x the pointwise RankNet
    assert mixed_totals[1:5] == pytest.approx(first_totals[1:5], rel=1e-5)
    assert mixed_totals[5] == pytest.approx(3 * pointwise_mean, rel=1e-5)
    assert mixed_totals[0] == pytest.approx(first_totals[0] + 1.5 * pointwise_mean, rel=1e-5)
    assert set(with_both) == set(first_only) == set(pointwise_only)
    for name, grad in with_both.items():
        torch.testing.assert_close(grad, first_only[name] + 0.5 * pointwise_only[name])


def test_a_mirrored_window_is_scored_pointwise_once(smollm2_tokenizer: Any, tmp_path: Path) -> None:
    queries = training_queries([QUERY], qrels=QRELS)
    window = WindowSampling(min_size=4, max_size=4, pool=5).sample(
        queries[0], np.random.default_rng(1)
    )
    mirrored = mixed_trainer(
        smollm2_tokenizer,
        tmp_path / "mirrored",
        1.0,
        sampling=WindowSampling(min_size=4, max_size=4, pool=5, mirrored=True),
        grad_accumulation=2,
    )
    totals, tokens = mirrored._first_backward([window, window.reversed()])
    alone, scored = mirrored._pointwise_losses([window], 1.0)
    lora_gradients(mirrored)
    listwise = sum(len(mirrored.encoder.encode(w).input_ids) for w in (window, window.reversed()))
    assert tokens == listwise + scored
    assert totals[5] == pytest.approx(2 * alone, rel=1e-5)


def test_a_mixed_run_reports_the_pointwise_term_and_validates_listwise(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    trainer = mixed_trainer(smollm2_tokenizer, tmp_path, 2.0, steps=2)
    queries = training_queries([QUERY], qrels=QRELS)
    history = trainer.fit(queries, Validation([QUERY], QRELS))["history"]
    updates = [h for h in history if h["step"] > 0]
    assert len(updates) == 2
    for entry in updates:
        assert entry["pointwise"] > 0
        expected = entry["lm"] + 10 * entry["ranknet"] + 2.0 * entry["pointwise"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-5)
    listwise = trainer._listwise_rankings([QUERY.top(20)])
    assert trainer.validate(Validation([QUERY], QRELS)) == pytest.approx(
        evaluate(run_from_rankings([QUERY.top(20)], listwise), QRELS, ["ndcg@10"]).mean["ndcg@10"]
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pointwise_weight": -1.0}, "pointwise_weight must be a finite number >= 0"),
        ({"pointwise_weight": 1.0, "passage_vote": None}, "pointwise_weight scores passages"),
        ({"passage_vote": " yes"}, "passage_vote is used only with a positive"),
    ],
)
def test_mixed_settings_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"passage_vote": None}, "scores passages by passage_vote"),
        ({"pointwise_weight": 1.0}, "pointwise_weight applies to FIRST windows"),
        ({"passage_ranknet_weight": 1.0}, "passage_ranknet_weight applies to FIRST windows"),
        (
            {"sampling": WindowSampling(mirrored=True), "grad_accumulation": 2},
            "mirrored sampling applies to FIRST windows",
        ),
        ({"batch_windows": 2}, "batch_windows > 1 applies to FIRST windows"),
        ({"ranknet_weight": 30.0}, "ranknet_weight has no effect with objective 'pointwise'"),
        (
            {"sampling": WindowSampling(orders=("shuffled",), order_weights=(1.0,))},
            r"the input order \(orders, with their weights\) has no effect",
        ),
        ({"objective": "listwise"}, "objective must be one of"),
        ({"stop_after": 5}, r"stop_after must be in \[1, steps=4\]"),
        ({"stop_after": 0}, r"stop_after must be in \[1, steps=4\]"),
        ({"max_minutes": 0.0}, "max_minutes must be a finite number above 0"),
    ],
)
def test_pointwise_settings_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pointwise_config(**changes)


def test_stop_after_ends_a_run_that_resume_continues_unchanged(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queries = training_queries([QUERY], qrels=QRELS)

    def trainer_for(output: Path, **changes: Any) -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        config = pointwise_config(**changes)
        return FirstTrainer(
            model, smollm2_tokenizer, config, base_model="unused", output_dir=output
        )

    straight = trainer_for(tmp_path / "straight")
    straight.fit(queries)
    stopped = trainer_for(tmp_path / "stopped", stop_after=2)
    assert stopped.fit(queries)["steps"] == 2
    meta = json.loads((tmp_path / "stopped" / "checkpoint" / "trainer.json").read_text())
    assert meta["step"] == 2
    again = trainer_for(tmp_path / "stopped")
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        assert again.resume()
    assert "changed settings" not in caplog.text
    again.fit(queries)
    assert again.step == 4
    losses = [h["loss"] for h in again.history]
    assert losses == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)


def test_max_minutes_ends_a_run_at_the_first_update_past_it_and_resume_goes_on(
    smollm2_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queries = training_queries([QUERY], qrels=QRELS)

    def trainer_for(**changes: Any) -> FirstTrainer:
        model = load_causal_lm(resolve_model(str(tiny_model_dir)))
        config = pointwise_config(**changes)
        return FirstTrainer(
            model, smollm2_tokenizer, config, base_model="unused", output_dir=tmp_path
        )

    timed = trainer_for(max_minutes=1e-9)
    with caplog.at_level("INFO", logger="haystack_llmrank.training.trainer"):
        assert timed.fit(queries)["steps"] == 1
    assert "max_minutes reached: ending this run at update 1" in caplog.text
    meta = json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())
    assert meta["step"] == 1
    caplog.clear()
    again = trainer_for()
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        assert again.resume()
    assert "changed settings" not in caplog.text
    again.fit(queries)
    assert again.step == 4


def test_the_train_command_line_runs_the_pointwise_objective_and_stops_early(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from haystack_llmrank.cli import main

    candidates = tmp_path / "candidates.jsonl"
    docs = [{"docid": c.docid, "text": c.text, "score": c.score} for c in QUERY.candidates]
    lines = [{"qid": f"q{q}", "query": QUERY.query, "candidates": docs} for q in range(2)]
    candidates.write_text("".join(json.dumps(line) + "\n" for line in lines))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"q{q} 0 {d} {g}\n" for q in range(2) for d, g in QRELS["q1"].items()))
    args = [
        "train", str(candidates), "--qrels", str(qrels), "--model", str(tiny_model_dir),
        "--output", str(tmp_path / "run"), "--objective", "pointwise", "--passage-vote", " yes",
        "--steps", "3", "--stop-after", "1", "--grad-accumulation", "1", "--min-window", "3",
        "--max-window", "5", "--validation-passage-words", "4", "--validation-fraction", "0.5",
        "--min-lr-ratio", "1", "--max-grad-norm", "3", "--warmup-steps", "0",
    ]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["steps"] == 1
    config = record["config"]
    assert (config["objective"], config["steps"], config["validation_passage_words"]) == (
        "pointwise",
        3,
        4,
    )
    assert (config["min_lr_ratio"], config["max_grad_norm"]) == (1.0, 3.0)
    assert [h["step"] for h in record["history"]] == [0, 1]
    assert main([*args, "--batch-windows", "2"]) == 2
    assert "--batch-windows > 1 applies to FIRST windows" in capsys.readouterr().err
    # a template that ranks by the vote in windows of one passage saves a ranker of that form
    judged = [*args, "--rank-by-vote", "--output", str(tmp_path / "judge")]
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        assert main([*judged, "--template", "judge"]) == 0
    assert "pointwise warm start" not in caplog.text.split("/judge holds", 1)[-1]
    assert recorded_template(str(tmp_path / "judge")) == replace(
        JUDGE_TEMPLATE.with_vote(" yes"), max_passage_words=TrainConfig().max_passage_words
    )
    # one of more passages is refused before the model loads
    wide = [*judged, "--template", "first-judge", "--model", str(tmp_path / "none")]
    capsys.readouterr()
    assert main(wide) == 2
    assert (
        "pointwise prompts from --template 'first-judge' need one that ranks by a vote in "
        "windows of one passage (one label, such as 'judge'); it has 20 labels"
        in capsys.readouterr().err
    )


def test_a_pointwise_prompt_over_the_budget_is_refused_before_any_update(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    long = QueryCandidates("long", " ".join(["flea"] * 40), QUERY.candidates)
    queries = training_queries([QUERY, long], qrels={**QRELS, "long": QRELS["q1"]})
    scorer = PointwiseScorer(
        smollm2_tokenizer, yes_id(smollm2_tokenizer), max_passage_words=64, max_prompt_tokens=4096
    )
    longest = max(len(p.ids) for p in scorer.encode(QUERY.query, PASSAGES))
    config = pointwise_config(max_prompt_tokens=longest, sampling=WindowSampling(3, 5, pool=5))
    trainer = tiny_trainer(smollm2_tokenizer, config, tmp_path)
    with pytest.raises(
        ValueError,
        match=rf"1 training queries have a pointwise prompt .* "
        rf"over max_prompt_tokens={longest}: long; raise",
    ):
        trainer.fit(queries)
    assert trainer.step == 0
    trainer.fit(queries[:1])  # the short query alone trains


def test_a_one_passage_template_is_scored_where_its_ranker_reads_it(
    smollm2_tokenizer: Any, tiny_model: Any, vote_scorer: Any
) -> None:
    template = JUDGE_TEMPLATE.with_vote(" yes")
    scorer = PointwiseScorer(
        smollm2_tokenizer,
        yes_id(smollm2_tokenizer),
        max_passage_words=6,
        max_prompt_tokens=4096,
        template=template,
    )
    assert scorer.template == template
    built = PromptBuilder(smollm2_tokenizer, template, max_prompt_tokens=4096, max_passage_words=6)
    prompts = scorer.encode(QUERY.query, PASSAGES)
    for prompt, text in zip(prompts, PASSAGES, strict=True):
        window = built.build(QUERY.query, [text])
        assert prompt == (window.token_ids, window.score_positions[0])
        assert prompt.position < len(prompt.ids) - 1  # the vote is not read at the end
    ranker = Reranker(
        smollm2_tokenizer,
        vote_scorer,
        max_prompt_tokens=4096,
        template=template,
        max_passage_words=6,
    )
    assert ranker.strategy.window_size == 1
    ranking = ranker.rerank(QUERY.query, list(PASSAGES))
    with torch.no_grad():
        expected = scorer.scores(tiny_model, QUERY.query, PASSAGES, batch_size=2)
    assert ranking.order == tuple(int(i) for i in np.argsort(expected, kind="stable")[::-1])
    assert sorted(ranking.scores, reverse=True) == pytest.approx(
        sorted(expected, reverse=True), rel=1e-5
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            FIRST_JUDGE_TEMPLATE.with_vote(" yes"),
            "template 'first-judge' need one that ranks by a vote in windows of one "
            "passage .* it has 20 labels and vote ' yes'",
        ),
        (JUDGE_TEMPLATE, "it has 1 labels and vote None"),
    ],
)
def test_pointwise_prompts_need_a_one_passage_vote_template(
    smollm2_tokenizer: Any, template: PromptTemplate, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PointwiseScorer(
            smollm2_tokenizer, 1, max_passage_words=6, max_prompt_tokens=4096, template=template
        )


def test_a_pointwise_run_on_the_judge_template_saves_a_ranker_that_ranks_as_it_trained(
    smollm2_tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = load_causal_lm(resolve_model(str(tiny_model_dir)))
    output = tmp_path / "judge"
    trainer = FirstTrainer(
        model,
        smollm2_tokenizer,
        pointwise_config(max_passage_words=6),
        base_model=str(tiny_model_dir),
        output_dir=output,
        template=JUDGE_TEMPLATE.with_vote(" yes"),
    )
    assert trainer.pointwise is not None
    assert trainer.pointwise.template is not None
    with caplog.at_level("WARNING", logger="haystack_llmrank.training.trainer"):
        record = trainer.fit(training_queries([QUERY], qrels=QRELS), Validation([QUERY], QRELS))
    assert "pointwise warm start" not in caplog.text
    # the saved model ranks one passage a window by the vote it trained
    ranker = Reranker.from_pretrained(str(output / "checkpoint" / "model"), device="cpu")
    assert ranker.prompts.template == replace(JUDGE_TEMPLATE.with_vote(" yes"), max_passage_words=6)
    assert ranker.strategy.window_size == 1
    ranking = ranker.rerank(QUERY.query, list(PASSAGES))
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.pointwise.scores(trainer.model, QUERY.query, PASSAGES)
    by_rank = [trained[i] for i in ranking.order]
    assert by_rank == sorted(trained, reverse=True)
    assert list(ranking.scores) == pytest.approx(by_rank, rel=1e-4)
    validated = [h["validation"] for h in record["history"] if h.get("validation") is not None]
    run = run_from_rankings([QUERY], [ranking])
    assert validated[-1] == pytest.approx(evaluate(run, QRELS, ["ndcg@10"]).mean["ndcg@10"])
