"""The engine end to end on a tiny random Llama: FIRST semantics, batching, validation."""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
import torch

from haystack_llmrank.errors import ClosedError, PromptTooLongError, WindowTooLargeError
from haystack_llmrank.prompt import (
    FIRST_JUDGE_TEMPLATE,
    FIRST_NUMERIC_TEMPLATE,
    FIRST_TEMPLATE,
    Prompt,
    PromptBuilder,
    PromptTemplate,
)
from haystack_llmrank.reranker import (
    Reranker,
    both_orders_logits,
    length_buckets,
    template_strategy,
)
from haystack_llmrank.scorers.base import LabelScorer
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from haystack_llmrank.strategies import (
    STRATEGIES,
    Disjoint,
    SlidingWindow,
    TopDownPartition,
    Tournament,
    make_strategy,
)

TOPICS = [
    "cats sleep most of the day",
    "the roman empire built roads",
    "python is a language",
    "volcanoes erupt lava",
    "bread needs yeast",
    "whales are mammals",
    "the moon orbits earth",
    "tea grows on hills",
    "bees make honey",
    "glaciers carve valleys",
    "jazz began in new orleans",
    "owls hunt at night",
    "copper conducts electricity",
    "maple syrup comes from sap",
]


def passages(n: int) -> list[str]:
    return [f"{TOPICS[i % len(TOPICS)]} (note {i})" for i in range(n)]


def plain_first(
    model: Any, tokenizer: Any, query: str, texts: list[str], size: int, step: int
) -> list[int]:
    """FIRST written the plain way: full logits at the last token, one window at a time."""
    build = PromptBuilder(tokenizer, max_prompt_tokens=4096)
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    spaced = [tokenizer.convert_tokens_to_ids("Ġ" + c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    order = list(range(len(texts)))
    end = len(texts)
    while end > 0:
        start = max(0, end - size)
        members = order[start:end]
        ids = build.build(query, [texts[i] for i in members]).token_ids
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        values = torch.maximum(logits[letters], logits[spaced])[: len(members)].tolist()
        order[start:end] = [
            members[i] for i in sorted(range(len(members)), key=lambda k: -values[k])
        ]
        if start == 0:
            break
        end -= step
    return order


@pytest.mark.parametrize(
    ("n", "size", "step"), [(1, 20, 10), (7, 20, 10), (33, 20, 10), (30, 6, 3)]
)
def test_matches_plain_implementation(
    tiny_model: Any, smollm2_tokenizer: Any, tiny_scorer: Any, n: int, size: int, step: int
) -> None:
    reranker = Reranker(
        smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy=SlidingWindow(size, step)
    )
    texts = passages(n)
    ranking = reranker.rerank("which animals are mammals", texts)
    assert list(ranking.order) == plain_first(
        tiny_model, smollm2_tokenizer, "which animals are mammals", texts, size, step
    )
    assert len(set(ranking.order)) == n


@pytest.mark.parametrize("preference", [[5, 1, 4, 0, 3, 2], [0, 1, 2, 3, 4, 5]])
def test_one_window_is_ordered_by_the_scorers_label_logits(
    smollm2_tokenizer: Any, tiny_scorer: Any, preference: list[int]
) -> None:
    """Whatever the passages say, one window's order is the scorer's logits, highest first."""
    logits = np.zeros(len(tiny_scorer.label_ids.labels), dtype=np.float32)
    logits[preference] = np.arange(len(preference), 0, -1)
    scorer = Mock(spec=LabelScorer, label_ids=tiny_scorer.label_ids)
    scorer.score.side_effect = lambda prompts: np.tile(logits, (len(prompts), 1))
    reranker = Reranker(smollm2_tokenizer, scorer, max_prompt_tokens=4096)
    ranking = reranker.rerank("bees and honey", passages(6))
    assert list(ranking.order) == preference
    assert scorer.score.call_count == 1


@pytest.mark.parametrize("name", STRATEGIES)
def test_batched_queries_equal_one_by_one(
    smollm2_tokenizer: Any, tiny_scorer: Any, name: str
) -> None:
    requests = [
        ("bees and honey", passages(45)),
        ("roman roads", passages(9)),
        ("lava", passages(21)),
    ]
    strategy = make_strategy(name)
    single = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy=strategy)
    alone = [single.rerank(q, p) for q, p in requests]
    for batch_size, budget in [(2, 16384), (8, 100000), (8, 600)]:
        scorer = Mock(spec=LabelScorer, label_ids=tiny_scorer.label_ids, wraps=tiny_scorer)
        batched = Reranker(
            smollm2_tokenizer,
            scorer,
            max_prompt_tokens=4096,
            strategy=strategy,
            batch_size=batch_size,
            max_batch_tokens=budget,
        ).rerank_many(requests)
        for a, b in zip(alone, batched, strict=True):
            assert (a.order, a.unranked, a.cost) == (b.order, b.unranked, b.cost)
            np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-3)
        calls = [call.args[0] for call in scorer.score.call_args_list]
        assert sum(map(len, calls)) == sum(r.cost.windows for r in alone)
        # the three queries' first steps are ready at once: within budget, one call holds them
        assert max(map(len, calls)) > 1 or budget < 16384
        for prompts in calls:
            assert len(prompts) == 1 or len(prompts) * max(map(len, prompts)) <= budget


def test_cost_counts_the_prompts_scored(smollm2_tokenizer: Any, tiny_scorer: Any) -> None:
    scored: list[int] = []
    score = tiny_scorer.score

    def counting(prompts: Any) -> Any:
        scored.extend(len(p) for p in prompts)
        return score(prompts)

    reranker = Reranker(
        smollm2_tokenizer,
        Mock(wraps=tiny_scorer, label_ids=tiny_scorer.label_ids, score=counting),
        max_prompt_tokens=4096,
        strategy=make_strategy("tdpart"),
    )
    steps: list[int] = []
    rankings = reranker.rerank_many(
        [("bees", passages(45)), ("owls", passages(30))], on_window=steps.append
    )
    assert sum(r.cost.tokens for r in rankings) == sum(scored)
    assert sum(r.cost.windows for r in rankings) == len(scored) == sum(steps)
    assert sum(steps) <= reranker.count_windows([45, 30])
    # batch_size 1: each call holds one query's step, all its windows at once
    assert len(steps) == sum(r.cost.steps for r in rankings)
    assert all(2 <= r.cost.steps <= 3 for r in rankings)


def test_progress_callback_counts_windows(tiny_reranker: Reranker) -> None:
    seen: list[int] = []
    tiny_reranker.rerank_many([("q", passages(45)), ("r", passages(3))], on_window=seen.append)
    assert sum(seen) == tiny_reranker.count_windows([45, 3]) == 5


@pytest.mark.parametrize("both_orders", [False, True])
def test_progress_is_reported_after_each_forward_pass(
    smollm2_tokenizer: Any, tiny_scorer: Any, both_orders: bool
) -> None:
    """A step's windows were reported only once all its forward passes ran, so a caller
    could neither see nor stop a long step between them."""
    passes: list[int] = []
    score = tiny_scorer.score

    def counting(prompts: Any) -> Any:
        passes.append(len(prompts))
        return score(prompts)

    one_a_pass = Mock(
        wraps=tiny_scorer,
        label_ids=tiny_scorer.label_ids,
        score=counting,
        preferred_max_batch_tokens=1,
    )
    reranker = Reranker(
        smollm2_tokenizer,
        one_a_pass,
        max_prompt_tokens=4096,
        strategy=Tournament(5),
        both_orders=both_orders,
    )
    seen: list[tuple[int, int]] = []
    (ranking,) = reranker.rerank_many(
        [("q", passages(12))], on_window=lambda count: seen.append((len(passes), count))
    )
    assert [at for at, _ in seen] == list(range(1, len(passes) + 1))
    assert sum(count for _, count in seen) == ranking.cost.windows > ranking.cost.steps
    assert ranking == reranker.rerank("q", passages(12))


@pytest.mark.parametrize(
    ("strategy", "n", "top_k"),
    [
        (Tournament(20), 61, 20),  # 60 took 8 windows, 61 at most 5, before the last window filled
        (Tournament(5), 7, 5),  # 6 take 4 windows, 7 at most 3
    ],
)
def test_counted_windows_bound_requests_with_blank_passages(
    tiny_reranker: Reranker, strategy: Tournament, n: int, top_k: int
) -> None:
    # a blank passage gets no window, and a strategy may take more windows for fewer passages
    reranker = tiny_reranker.replace(strategy=strategy)
    texts = passages(n)
    texts[-1] = " "
    seen: list[int] = []
    (ranking,) = reranker.rerank_many([("q", texts)], top_k=top_k, on_window=seen.append)
    assert ranking.blank == 1
    assert sum(seen) == strategy.max_windows(n - 1, top_k) <= reranker.count_windows([n], top_k)
    for size in range(n + 1):
        assert reranker.count_windows([size, n], top_k) >= 2 * strategy.max_windows(size, top_k)


def test_passages_from_an_iterator_are_read_once_and_all_ranked(tiny_reranker: Reranker) -> None:
    texts = passages(25)
    expected = tiny_reranker.rerank("q", texts)
    assert tiny_reranker.rerank("q", iter(texts)) == expected
    assert tiny_reranker.rerank("q", (text for text in texts)) == expected
    assert sorted(expected.order) == list(range(25))


def test_empty_candidate_list(tiny_reranker: Reranker) -> None:
    ranking = tiny_reranker.rerank("q", [])
    assert ranking.order == ()
    assert ranking.scores == ()


@pytest.mark.parametrize(
    ("query", "texts", "error", "message"),
    [
        ("", ["a"], ValueError, "query is empty"),
        ("   ", ["a"], ValueError, "query is empty"),
        (None, ["a"], TypeError, "query must be a string, got NoneType"),
        ("q", "one string", TypeError, "not one string"),
        ("q", ["a", None], TypeError, "passage 1 is NoneType, not a string"),
        ("q", {"a", "b"}, TypeError, "in first-stage order; got set"),
        ("q", {"a": 1}, TypeError, "in first-stage order; got dict"),
        ("q", {"a": 1}.keys(), TypeError, "in first-stage order; got dict_keys"),
        ("q", 7, TypeError, "in first-stage order; got int"),
    ],
)
def test_bad_requests(
    tiny_reranker: Reranker, query: Any, texts: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        tiny_reranker.rerank(query, texts)


def test_a_strategy_given_by_name_is_sized_for_the_template(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    named = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy="tdpart")
    assert named.strategy == TopDownPartition(20)
    sliding = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy="sliding")
    assert sliding.replace(window_size=8).strategy == SlidingWindow(8, 4)  # a name sets no step
    with pytest.raises(ValueError, match="unknown strategy 'bubble'"):
        Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy="bubble")


def test_window_larger_than_labels_is_refused(smollm2_tokenizer: Any, tiny_scorer: Any) -> None:
    with pytest.raises(ValueError, match="27 passages"):
        Reranker(
            smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy=SlidingWindow(27, 10)
        )


def test_window_larger_than_the_templates_labels_is_refused(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    ten = PromptTemplate("ten", "{n} {query}\n", "[{label}] {text}\n", "", tuple("ABCDEFGHIJ"))
    with pytest.raises(WindowTooLargeError, match="11 passages but template 'ten' has 10"):
        Reranker(
            smollm2_tokenizer,
            tiny_scorer,
            max_prompt_tokens=4096,
            template=ten,
            strategy=SlidingWindow(11, 5),
        )
    narrow = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, template=ten)
    assert narrow.strategy == SlidingWindow(10, 5)  # FIRST's window narrowed to the labels
    assert sorted(narrow.rerank("q", [f"p{i}" for i in range(15)]).order) == list(range(15))


def test_the_default_window_fits_the_templates_labels() -> None:
    numeric = FIRST_NUMERIC_TEMPLATE
    assert template_strategy(FIRST_TEMPLATE) == SlidingWindow(20, 10)
    assert template_strategy(numeric) == SlidingWindow(9, 4)
    one = replace(numeric, labels=("1",))
    with pytest.raises(ValueError, match="one passage a window orders nothing"):
        template_strategy(one)
    with pytest.raises(ValueError, match="one passage a window orders nothing"):
        template_strategy(FIRST_TEMPLATE, window_size=1)
    assert template_strategy(one.with_vote(" yes")) == Disjoint(1)  # a vote judges one alone
    assert template_strategy(numeric.with_vote(" yes")) == Disjoint(9)
    assert template_strategy(numeric, "tdpart") == TopDownPartition(9)
    assert template_strategy(FIRST_TEMPLATE, window_size=6) == SlidingWindow(6, 3)
    assert template_strategy(FIRST_TEMPLATE, step=4) == SlidingWindow(20, 4)
    with pytest.raises(WindowTooLargeError, match="10 passages but template 'first-numeric'"):
        template_strategy(numeric, window_size=10)
    with pytest.raises(ValueError, match=r"step must be between 1 and \d+ for window_size"):
        template_strategy(numeric, step=10)


def test_from_pretrained_fits_the_window_to_the_template_before_loading(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = Reranker.from_pretrained(str(tiny_model_dir), template="first-numeric", device="cpu")
    assert loaded.strategy == SlidingWindow(9, 4)
    assert sorted(loaded.rerank("q", passages(12)).order) == list(range(12))

    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr("haystack_llmrank.backends.load_scorer", no_loading)
    for wide in ({"window_size": 10}, {"strategy": SlidingWindow(10, 5)}):
        with pytest.raises(WindowTooLargeError, match="10 passages but template 'first-numeric'"):
            Reranker.from_pretrained(str(tiny_model_dir), template="first-numeric", **wide)
    with pytest.raises(ValueError, match="window_size and step apply to a strategy given by name"):
        Reranker.from_pretrained(str(tiny_model_dir), strategy=SlidingWindow(9, 4), step=4)


def test_rerank_many_reads_any_iterable_of_requests(tiny_reranker: Reranker) -> None:
    requests = [("bees", passages(5)), ("roman roads", passages(3))]
    expected = tiny_reranker.rerank_many(requests)
    assert len(expected) == 2
    assert tiny_reranker.rerank_many(request for request in requests) == expected
    assert tiny_reranker.rerank_many(iter(requests), top_k=[2, None]) == tiny_reranker.rerank_many(
        requests, top_k=[2, None]
    )


def test_top_k_takes_numpy_integers_and_refuses_floats(tiny_reranker: Reranker) -> None:
    texts = [f"passage {i}" for i in range(5)]
    assert tiny_reranker.rerank("q", texts, top_k=np.int64(3)) == tiny_reranker.rerank(
        "q", texts, top_k=3
    )
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        tiny_reranker.rerank("q", texts, top_k=3.0)  # type: ignore[arg-type]


def test_template_must_match_scorer_labels(smollm2_tokenizer: Any, tiny_scorer: Any) -> None:
    with pytest.raises(ValueError, match="do not match"):
        Reranker(
            smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, template=FIRST_NUMERIC_TEMPLATE
        )


class CountingBuilder(PromptBuilder):
    """Counts the prompts it builds."""

    built = 0

    def build(self, query: str, texts: Any) -> Any:
        self.built += 1
        return super().build(query, texts)


def test_an_injected_prompt_builder_builds_every_prompt(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    builder = CountingBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    reranker = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, prompts=builder)
    ranking = reranker.rerank("bees", passages(45))
    assert reranker.prompts is builder
    assert builder.built == ranking.cost.windows == 4
    other = CountingBuilder(smollm2_tokenizer, FIRST_NUMERIC_TEMPLATE, max_prompt_tokens=4096)
    with pytest.raises(ValueError, match="template"):
        Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, prompts=other)


def test_replace_changes_only_what_it_names(tiny_reranker: Reranker) -> None:
    sized = tiny_reranker.replace(batch_size=3, max_batch_tokens=999)
    assert (sized.batch_size, sized.max_batch_tokens) == (3, 999)
    assert sized.scorer is tiny_reranker.scorer
    assert sized.prompts is tiny_reranker.prompts
    assert sized.strategy is tiny_reranker.strategy
    assert (
        sized.rerank("bees", passages(12)).order == tiny_reranker.rerank("bees", passages(12)).order
    )
    shorter = tiny_reranker.replace(max_passage_words=3)
    assert shorter.prompts is not tiny_reranker.prompts
    assert shorter.prompts.max_passage_words == 3
    assert shorter.prompts.max_prompt_tokens == tiny_reranker.prompts.max_prompt_tokens
    with pytest.raises(ValueError, match="27 passages"):
        tiny_reranker.replace(strategy=SlidingWindow(27, 10))
    with pytest.raises(ValueError, match="positive"):
        tiny_reranker.replace(batch_size=0)
    with pytest.raises(TypeError, match="no argument colour"):
        tiny_reranker.replace(colour="red")


def test_replace_takes_names_as_from_pretrained_does(tiny_reranker: Reranker) -> None:
    assert tiny_reranker.replace(strategy="tdpart").strategy == TopDownPartition(20)
    assert tiny_reranker.replace(strategy="sliding", window_size=8).strategy == SlidingWindow(8, 4)
    assert tiny_reranker.replace(step=5).strategy == SlidingWindow(20, 5)
    narrow = tiny_reranker.replace(strategy="sliding", window_size=10, step=5)
    assert narrow.replace(step=3).strategy == SlidingWindow(10, 3)
    assert narrow.replace(window_size=8).strategy == SlidingWindow(8, 5)
    # a step given to a strategy without one is refused, not ignored
    with pytest.raises(
        ValueError, match="step applies to the sliding window only; strategy 'tdpart'"
    ):
        narrow.replace(strategy="tdpart", window_size=10).replace(step=3)
    with pytest.raises(ValueError, match="strategy 'tdpart' has none"):
        tiny_reranker.replace(strategy="tdpart", step=3)
    assert tiny_reranker.replace(strategy=None).strategy == SlidingWindow(20, 10)
    # a default step follows a new window, through any replace; a chosen one stays
    for base in (tiny_reranker, tiny_reranker.replace(batch_size=2)):
        assert base.replace(window_size=5).strategy == SlidingWindow(5, 2)
        assert base.replace(window_size=10).strategy == SlidingWindow(10, 5)
    assert narrow.replace(batch_size=2).replace(window_size=8).strategy == SlidingWindow(8, 5)
    assert narrow.replace(strategy="tdpart").strategy == TopDownPartition(10)  # the window kept
    pivoted = tiny_reranker.replace(strategy=TopDownPartition(20, pivot_rank=3))
    assert pivoted.replace(window_size=10).strategy == TopDownPartition(10, pivot_rank=3)
    invariant = tiny_reranker.replace(strategy="disjoint", order_invariant=True)
    assert (invariant.strategy, invariant.order_invariant) == (Disjoint(20), True)
    # "auto" passage words resolve anew for a new template after any replace
    recorded = replace(FIRST_TEMPLATE, max_passage_words=48)
    for base in (tiny_reranker, tiny_reranker.replace(batch_size=2)):
        assert base.replace(template=recorded).prompts.max_passage_words == 48
    echo = tiny_reranker.replace(template="first-echo")
    assert echo.prompts.template.name == "first-echo"
    assert echo.strategy is tiny_reranker.strategy
    with pytest.raises(ValueError, match="apply to a strategy given by name"):
        tiny_reranker.replace(strategy=SlidingWindow(8, 4), step=2)
    with pytest.raises(ValueError, match="unknown strategy"):
        tiny_reranker.replace(strategy="bubble")
    with pytest.raises(ValueError, match="order_invariant needs the 'disjoint' strategy"):
        tiny_reranker.replace(order_invariant=True)


def test_a_chosen_step_survives_strategies_without_one(
    tiny_model_dir: Path, tiny_reranker: Reranker
) -> None:
    chosen = tiny_reranker.replace(step=4)
    loaded = Reranker.from_pretrained(str(tiny_model_dir), strategy="sliding", step=4)
    for base in (chosen, loaded, tiny_reranker.replace(strategy=SlidingWindow(20, 4))):
        for stepless in ("disjoint", "tdpart", "tournament", Tournament(20)):
            away = base.replace(strategy=stepless)
            assert away.replace(strategy="sliding").strategy == SlidingWindow(20, 4)
            # through other changes and a new window too
            assert away.replace(batch_size=2).replace(strategy="sliding").strategy == (
                SlidingWindow(20, 4)
            )
            assert away.replace(window_size=10).replace(strategy="sliding").strategy.step == 4
            with pytest.raises(ValueError, match="step applies to the sliding window only"):
                away.replace(step=5)
        # a reset forgets it, as it does the window
        reset = base.replace(strategy="disjoint").replace(strategy=None)
        assert reset.replace(strategy="sliding").strategy == SlidingWindow(20, 10)
    # a default step still follows the window after a stepless strategy
    away = tiny_reranker.replace(strategy="tdpart", window_size=8)
    assert away.replace(strategy="sliding").strategy == SlidingWindow(8, 4)


def test_a_strategy_objects_step_is_kept_however_the_reranker_was_made(
    tiny_model_dir: Path, smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    chosen = SlidingWindow(20, 5)
    made = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy=chosen)
    loaded = Reranker.from_pretrained(str(tiny_model_dir), strategy=chosen)
    named = Reranker.from_pretrained(str(tiny_model_dir), strategy="sliding")
    assert made.replace(window_size=16).strategy == SlidingWindow(16, 5)
    assert loaded.replace(window_size=16).strategy == SlidingWindow(16, 5)
    assert named.replace(window_size=16).strategy == SlidingWindow(16, 8)


def test_a_label_readout_refuses_one_passage_windows_however_given(
    tiny_model_dir: Path, smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    message = "one passage a window orders nothing"
    with pytest.raises(ValueError, match=message):
        Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, strategy=Disjoint(1))
    with pytest.raises(ValueError, match=message):
        Reranker.from_pretrained(str(tiny_model_dir), strategy=Disjoint(1))
    with pytest.raises(ValueError, match=message):
        Reranker.from_pretrained(str(tiny_model_dir), strategy="sliding", window_size=1)


def test_a_vote_judges_one_passage_a_window_in_disjoint_windows_only(tiny_model_dir: Path) -> None:
    # a sliding window of one would leave the input order, called ranked
    with pytest.raises(ValueError, match=r"at least 2, got 1 \(one passage a window orders"):
        Reranker.from_pretrained(
            str(tiny_model_dir), strategy="sliding", window_size=1, vote=" yes"
        )
    one = Reranker.from_pretrained(str(tiny_model_dir), window_size=1, vote=" yes")
    assert one.strategy == Disjoint(1)


def test_options_wrong_for_any_model_fail_before_it_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("haystack_llmrank.backends.load_scorer", no_loading)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be a positive integer or None"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be a positive integer or None"),
        ({"max_prompt_tokens": -5}, "max_prompt_tokens must be"),
        ({"fusion_k": -1}, "fusion_k must be an integer >= 0"),
        ({"fusion_k": True}, "fusion_k must be an integer >= 0"),
        ({"strategy": "sliding", "order_invariant": True}, "order_invariant needs"),
        ({"template": "first", "order_invariant": True}, "order_invariant needs"),
        ({"window_size": 2.5}, "window_size must be a positive integer"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            Reranker.from_pretrained("some/model", **options)


def test_both_orders_logits_average_the_two_log_softmaxes() -> None:
    given = np.array([2.0, 0.0, 0.0, 9.0], dtype=np.float32)  # the 4th label is not a member
    reversed_ = np.array([1.0, 0.0, 0.0, 9.0], dtype=np.float32)  # member 2 came first
    log_z = np.log(np.exp(2.0) + 2.0)
    log_z_reversed = np.log(np.exp(1.0) + 2.0)
    expected = [
        (2.0 - log_z + 0.0 - log_z_reversed) / 2,
        (0.0 - log_z + 0.0 - log_z_reversed) / 2,
        (0.0 - log_z + 1.0 - log_z_reversed) / 2,
    ]
    got = both_orders_logits(given, reversed_, 3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_both_orders_ranks_a_window_alike_whichever_way_it_comes(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    reranker = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, both_orders=True)
    texts = passages(9)
    given = reranker.rerank("whales and bees", texts)
    backwards = reranker.rerank("whales and bees", texts[::-1])
    assert [texts[i] for i in given.order] == [texts[::-1][i] for i in backwards.order]
    assert given.scores == backwards.scores
    one_way = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096)
    assert (
        one_way.rerank("whales and bees", texts).order
        != one_way.rerank("whales and bees", texts[::-1]).order[::-1]
    ), "the tiny model should depend on order, or this test shows nothing"


@pytest.mark.parametrize(
    ("n", "window", "both_orders"), [(18, 4, True), (18, 4, False), (12, 5, True)]
)
def test_tournament_with_both_orders_ranks_reversed_input_alike(
    smollm2_tokenizer: Any, tiny_scorer: Any, n: int, window: int, both_orders: bool
) -> None:
    # 18 passages deal into 5 windows, their 5 winners into 2, then a final window of 4;
    # reversed, every window holds the same passages in reverse, so with both orders the
    # winners and the final window are the same. 12 deal into 3 windows of 4, which send on
    # 2, 1 and 2: the first and the last hold the same passages reversed.
    reranker = Reranker(
        smollm2_tokenizer,
        tiny_scorer,
        max_prompt_tokens=4096,
        strategy=Tournament(window),
        both_orders=both_orders,
    )
    texts = passages(n)
    given = reranker.rerank("whales and bees", texts)
    backwards = reranker.rerank("whales and bees", texts[::-1])
    assert given.depth == backwards.depth == window
    head = [texts[i] for i in given.order[:window]]
    head_backwards = [texts[::-1][i] for i in backwards.order[:window]]
    assert (head == head_backwards) is both_orders


def test_both_orders_scores_each_window_twice_and_counts_it(
    smollm2_tokenizer: Any, tiny_scorer: Any
) -> None:
    scored: list[tuple[int, ...]] = []
    score = tiny_scorer.score

    def counting(prompts: Any) -> Any:
        scored.extend(tuple(p) for p in prompts)
        return score(prompts)

    scorer = Mock(wraps=tiny_scorer, label_ids=tiny_scorer.label_ids, score=counting)
    reranker = Reranker(smollm2_tokenizer, scorer, max_prompt_tokens=4096, both_orders=True)
    assert reranker.replace(batch_size=2).both_orders
    ranking = reranker.rerank("bees", passages(25))
    single = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096)
    assert 2 * ranking.cost.windows == len(scored) == 2 * single.count_windows([25]) == 4
    assert ranking.cost.tokens == sum(len(p) for p in scored)
    assert sorted(ranking.order) == list(range(25))


def test_length_buckets_respect_budget() -> None:
    lengths = [100, 900, 300, 300, 50, 1200]
    # longest first; a group takes the next prompt while its rows x its longest fit
    assert length_buckets(lengths, 1000) == [[5], [1], [2, 3, 0], [4]]
    assert length_buckets(lengths, 10**6) == [[5, 1, 2, 3, 0, 4]]
    assert length_buckets(lengths, 1) == [[5], [1], [2], [3], [0], [4]]


def test_from_pretrained_folder(tiny_model_dir: Path, tiny_reranker: Reranker) -> None:
    loaded = Reranker.from_pretrained(str(tiny_model_dir), device="cpu")
    texts = passages(15)
    assert loaded.rerank("owls", texts).order == tiny_reranker.rerank("owls", texts).order
    assert loaded.prompts.max_prompt_tokens == 4096


def test_close_lets_go_of_the_model(tiny_model_dir: Path) -> None:
    loaded = Reranker.from_pretrained(str(tiny_model_dir), device="cpu")
    model = weakref.ref(loaded.scorer._model)  # type: ignore[attr-defined]
    copy = loaded.replace(batch_size=2)
    assert len(loaded.rerank("owls", passages(3)).order) == 3
    with loaded:
        pass
    assert model() is None, "the model is still held after close()"
    with pytest.raises(ClosedError, match="Reranker was closed"):
        loaded.rerank("owls", passages(3))
    with pytest.raises(ClosedError, match="scorer was closed"):  # it shared the scorer
        copy.rerank("owls", passages(3))
    loaded.close()  # again: nothing to do


def test_close_with_a_scorer_that_cannot_close(
    smollm2_tokenizer: Any, tiny_scorer: TorchLabelScorer
) -> None:
    scorer = Mock(spec=LabelScorer, label_ids=tiny_scorer.label_ids, wraps=tiny_scorer)
    reranker = Reranker(smollm2_tokenizer, scorer, max_prompt_tokens=4096)
    reranker.close()
    with pytest.raises(ClosedError):
        reranker.rerank("owls", passages(3))
    assert len(tiny_scorer.score([[5, 6, 7]])) == 1, "the shared scorer was left open"


def test_unknown_backend_and_missing_model() -> None:
    from haystack_llmrank.errors import ModelResolutionError

    with pytest.raises(ValueError, match="unknown backend"):
        Reranker.from_pretrained("x", backend="tensorflow")
    with pytest.raises(ModelResolutionError):
        Reranker.from_pretrained("/nonexistent/model.gguf")


def test_torch_backend_gpu_policy_and_threads(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        Reranker.from_pretrained(str(tiny_model_dir), device="cuda")
    with caplog.at_level(logging.WARNING, logger="haystack_llmrank.gpu_policy"):
        reranker = Reranker.from_pretrained(
            str(tiny_model_dir), device="cuda", on_missing_gpu="warn"
        )
    assert str(reranker.scorer.device) == "cpu"  # type: ignore[attr-defined]
    assert "running on the CPU instead" in caplog.text
    with pytest.raises(ValueError, match="threads applies to the onnx backend"):
        Reranker.from_pretrained(str(tiny_model_dir), threads=2)
    with pytest.raises(ValueError, match="on_missing_gpu must be one of"):
        Reranker.from_pretrained(str(tiny_model_dir), on_missing_gpu="skip")  # type: ignore[arg-type]


def test_batching_follows_the_scorer_unless_given(smollm2_tokenizer: Any, tiny_scorer: Any) -> None:
    from haystack_llmrank.scorers.base import DEFAULT_MAX_BATCH_TOKENS

    assert tiny_scorer.device.type == "cpu"
    assert tiny_scorer.preferred_max_batch_tokens == 1
    cpu = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096)
    assert cpu.max_batch_tokens == 1
    assert (
        Reranker(
            smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, max_batch_tokens=5000
        ).max_batch_tokens
        == 5000
    )
    plain = Mock(
        label_ids=tiny_scorer.label_ids, score=tiny_scorer.score, spec=["label_ids", "score"]
    )
    assert cpu.replace(scorer=plain).max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS
    calls: list[int] = []

    def counting(prompts: Any) -> Any:
        calls.append(len(prompts))
        return tiny_scorer.score(prompts)

    spy = Mock(label_ids=tiny_scorer.label_ids, score=counting, preferred_max_batch_tokens=1)
    ranking = cpu.replace(scorer=spy, strategy=make_strategy("tdpart")).rerank("bees", passages(45))
    assert calls == [1] * ranking.cost.windows  # a step's windows, one call each


def test_check_request_refuses_what_every_window_would(tiny_reranker: Reranker) -> None:
    short = tiny_reranker.replace(max_prompt_tokens=400)
    long_query = "cats " * 300
    with pytest.raises(PromptTooLongError, match="instruction and query alone"):
        short.check_request(long_query, ["a", "b"])
    with pytest.raises(PromptTooLongError, match="instruction and query alone"):
        short.rerank(long_query, ["a", "b"])
    short.check_request("cats", ["a", "b"])
    short.check_request(long_query, ["", " "])  # blank passages get no window
    assert list(short.rerank(long_query, ["", " "]).order) == [0, 1]
    with pytest.raises(ValueError, match="query is empty"):
        short.check_request(" ", ["a"])


def test_check_request_counts_the_widest_window(tiny_reranker: Reranker) -> None:
    """A query that fits beside one passage but not beside a full window's labels is
    refused up front, since every window of 20 would fail."""
    prompts = tiny_reranker.prompts
    query = "cats " * 100
    one, twenty = prompts.instruction_tokens(query, 1), prompts.instruction_tokens(query, 20)
    assert one < twenty
    short = tiny_reranker.replace(max_prompt_tokens=(one + twenty) // 2)
    short.check_request(query, ["a"])  # one passage: one window of one, which fits
    with pytest.raises(PromptTooLongError, match="instruction and query alone"):
        short.check_request(query, [f"passage {i}" for i in range(30)])


def test_rerank_many_refuses_a_long_query_before_scoring(tiny_reranker: Reranker) -> None:
    """No window is scored when one request's query is too long for every prompt; the
    error names the request."""
    short = tiny_reranker.replace(max_prompt_tokens=400)
    windows: list[int] = []
    requests = [("cats", ["a", "b"]), ("dogs", ["c"]), ("cats " * 300, ["d", "e"])]
    with pytest.raises(PromptTooLongError, match="request 2: the instruction and query alone"):
        short.rerank_many(requests, on_window=windows.append)
    assert windows == []


def test_rerank_many_names_every_long_query_with_its_problem(tiny_reranker: Reranker) -> None:
    short = tiny_reranker.replace(max_prompt_tokens=400)
    longer = "cats " * 400
    requests = [("cats " * 300, ["a", "b"]), ("dogs", ["c"]), (longer, ["d"]), ("x", [])]
    with pytest.raises(PromptTooLongError) as refused:
        short.rerank_many(requests)
    error = refused.value
    assert list(error.requests) == [0, 2]
    for position, problem in error.requests.items():
        query, texts = requests[position]
        with pytest.raises(PromptTooLongError) as alone:
            short.check_request(query, texts)
        assert problem == str(alone.value)
    assert str(error) == f"request 0: {error.requests[0]} (so are requests 2)"
    assert isinstance(error.__cause__, PromptTooLongError)
    assert str(error.__cause__) == error.requests[0]
    with pytest.raises(PromptTooLongError) as one:
        short.rerank_many(requests[1:])
    assert str(one.value) == f"request 1: {error.requests[2]}"
    assert list(one.value.requests) == [1]


def long_passages(n: int) -> list[str]:
    """``n`` passages of about 90 tokens each, which a tight budget cuts."""
    return [f"{text}, " + "as the old notes on it say at some length " * 10 for text in passages(n)]


@pytest.mark.parametrize("readout", ["labels", "vote"])
def test_a_budget_with_no_room_for_the_passages_is_refused_before_scoring(
    smollm2_tokenizer: Any,
    tiny_scorer: Any,
    vote_scorer: Any,
    monkeypatch: pytest.MonkeyPatch,
    readout: str,
) -> None:
    """A budget at the instruction and query of a window of 20 would empty every passage and
    rank 20 blanks by their positions alone: refused before any window is scored, as
    check_request refuses it, with the numbers and the remedy."""
    if readout == "labels":
        reranker = Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096)
    else:
        judge = FIRST_JUDGE_TEMPLATE.with_vote(" yes")
        reranker = Reranker(smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=judge)
    query = "where is paris"
    bare = reranker.prompts.instruction_tokens(query, 20)
    tight = reranker.replace(max_prompt_tokens=bare)

    def scored(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a window was scored")

    monkeypatch.setattr(Reranker, "score_prompts", scored)
    refusal = (
        f"the budget of {bare} tokens leaves 0 tokens per passage to a window of 20 passages "
        f"beside the {bare} tokens of the instruction and query, under the 16 a passage needs "
        "to be judged by its content; raise max_prompt_tokens, shorten the query or rank in "
        "narrower windows"
    )
    for texts in (long_passages(20), long_passages(30)[10:]):  # two sets ranked alike before
        with pytest.raises(PromptTooLongError) as checked:
            tight.check_request(query, texts)
        assert str(checked.value) == refusal
        with pytest.raises(PromptTooLongError) as ranked:
            tight.rerank(query, texts)
        assert str(ranked.value) == f"request 0: {refusal}"
    one_short = tight.replace(max_prompt_tokens=tight.prompts.least_budget(query, 20) - 1)
    with pytest.raises(PromptTooLongError, match="leaves 15 tokens per passage"):
        one_short.check_request(query, long_passages(20))
    with pytest.raises(PromptTooLongError, match=r"request 1: the budget .* leaves 15 tokens"):
        one_short.rerank_many([("bees", ["a", "b"]), (query, long_passages(20))])


def test_a_budget_with_room_for_the_floor_ranks_cut_passages(tiny_reranker: Reranker) -> None:
    query = "where is paris"
    least = tiny_reranker.prompts.least_budget(query, 20)
    fitted = tiny_reranker.replace(max_prompt_tokens=least)
    texts = long_passages(30)
    fitted.check_request(query, texts)
    ranking = fitted.rerank(query, texts)
    assert sorted(ranking.order) == list(range(30))
    assert ranking.depth == 30
    assert ranking.cost.truncated_passages == 40  # both windows of 20 cut every passage


def test_cost_counts_the_passages_the_budget_cut_per_query(
    tiny_reranker: Reranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ranking's cost counts the passages its prompts showed cut to the budget (both
    orders' prompts, through fusion and blank passages); the word cut is a setting, not
    counted."""
    query = "where is paris"
    texts = [*long_passages(25), " "]
    least = tiny_reranker.prompts.least_budget(query, 20)
    assert tiny_reranker.rerank(query, texts).cost.truncated_passages == 0
    words = tiny_reranker.replace(max_prompt_tokens=least, max_passage_words=5)
    assert words.rerank(query, texts).cost.truncated_passages == 0
    tight = tiny_reranker.replace(max_prompt_tokens=least, both_orders=True, fusion_k=60)
    built: list[Prompt] = []
    build = tight.prompts.build

    def recorded(query: str, texts: Any) -> Prompt:
        built.append(build(query, texts))
        return built[-1]

    monkeypatch.setattr(tight.prompts, "build", recorded)
    cut, short = tight.rerank_many([(query, texts), ("bees", passages(5))])
    assert cut.blank == 1
    # windows of 20 and 15 passages, each in both orders, every passage cut
    assert cut.cost.truncated_passages == sum(p.truncated_passages for p in built) == 70
    assert short.cost.truncated_passages == 0
