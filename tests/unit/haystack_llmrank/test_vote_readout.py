"""The vote readout: a window ordered by one token's logit at the end of each passage line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from haystack_llmrank import backends
from haystack_llmrank.errors import LabelResolutionError
from haystack_llmrank.labels import vote_label_ids
from haystack_llmrank.prompt import FIRST_TEMPLATE, JUDGE_TEMPLATE, PromptBuilder, PromptTemplate
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer
from haystack_llmrank.strategies import Disjoint, SlidingWindow, Tournament

VOTED = FIRST_TEMPLATE.with_vote(" yes")
QUERY = "where is berlin"
PASSAGES = ["Paris is in France.", "Berlin is in Germany.", "Pasta cooks in water.", "Bonn too."]


def test_the_vote_is_kept_with_the_template_and_checked() -> None:
    assert PromptTemplate.from_dict(VOTED.to_dict()) == VOTED
    assert VOTED.vote == " yes"
    assert FIRST_TEMPLATE.vote is None
    with pytest.raises(ValueError, match="visible token"):
        FIRST_TEMPLATE.with_vote(" ")


def test_a_vote_must_be_one_token(smollm2_tokenizer: Any) -> None:
    assert vote_label_ids(smollm2_tokenizer, " yes").ids[0] == (
        smollm2_tokenizer(" yes", add_special_tokens=False)["input_ids"][0],
    )
    with pytest.raises(LabelResolutionError, match="one token"):
        vote_label_ids(smollm2_tokenizer, " yes please")


def test_prompts_record_where_their_lines_end(smollm2_tokenizer: Any) -> None:
    voted = PromptBuilder(smollm2_tokenizer, VOTED, max_prompt_tokens=4096)
    plain = PromptBuilder(smollm2_tokenizer, FIRST_TEMPLATE, max_prompt_tokens=4096)
    prompt = voted.build(QUERY, PASSAGES)
    assert plain.build(QUERY, PASSAGES).score_positions == ()
    assert prompt.token_ids == plain.build(QUERY, PASSAGES).token_ids
    assert prompt.score_positions == tuple(voted.passage_end_tokens(prompt, QUERY, 4))
    for position, passage in zip(prompt.score_positions, PASSAGES, strict=True):
        line = smollm2_tokenizer.decode(prompt.token_ids[position - 3 : position + 1])
        assert passage.split()[-1] in line


def test_score_at_equals_the_full_logits_at_those_positions(
    tiny_model: Any, vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    builder = PromptBuilder(smollm2_tokenizer, VOTED, max_prompt_tokens=4096)
    prompts = [builder.build(QUERY, PASSAGES), builder.build(QUERY, PASSAGES[:2])]
    ids = [p.token_ids for p in prompts]
    got = vote_scorer.score_at(ids, [p.score_positions for p in prompts])
    assert got.shape == (2, 4, 1)
    assert got.dtype == np.float32
    vote = vote_scorer.label_ids.ids[0][0]
    for row, prompt in enumerate(prompts):
        with torch.inference_mode():
            logits = tiny_model(input_ids=torch.tensor([prompt.token_ids])).logits[0]
        expected = [float(logits[p, vote]) for p in prompt.score_positions]
        np.testing.assert_allclose(got[row, : len(expected), 0], expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="outside a prompt"):
        vote_scorer.score_at([ids[1]], [[len(ids[1])]])


def test_the_reranker_orders_a_window_by_its_votes(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    reranker = Reranker(smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=VOTED)
    prompt = reranker.prompts.build(QUERY, PASSAGES)
    votes = vote_scorer.score_at([prompt.token_ids], [prompt.score_positions])[0, :, 0]
    ranking = reranker.rerank(QUERY, PASSAGES)
    assert list(ranking.order) == sorted(range(4), key=lambda i: -votes[i])


def test_a_vote_needs_a_scorer_that_reads_positions_and_scores_the_vote(
    smollm2_tokenizer: Any, tiny_scorer: TorchLabelScorer, vote_scorer: TorchLabelScorer
) -> None:
    with pytest.raises(ValueError, match="do not match the template's vote"):
        Reranker(smollm2_tokenizer, tiny_scorer, max_prompt_tokens=4096, template=VOTED)

    class LastTokenOnly:
        label_ids = vote_scorer.label_ids

        def score(self, prompts: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(ValueError, match="cannot score"):
        Reranker(smollm2_tokenizer, LastTokenOnly(), max_prompt_tokens=4096, template=VOTED)


def test_both_orders_average_each_passages_two_votes(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    reranker = Reranker(
        smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=VOTED, both_orders=True
    )
    given = reranker.prompts.build(QUERY, PASSAGES)
    backward = reranker.prompts.build(QUERY, PASSAGES[::-1])
    forward_votes = vote_scorer.score_at([given.token_ids], [given.score_positions])[0, :, 0]
    backward_votes = vote_scorer.score_at([backward.token_ids], [backward.score_positions])[0, :, 0]
    mean = (forward_votes + backward_votes[::-1]) / 2
    ranking = reranker.rerank(QUERY, PASSAGES)
    assert list(ranking.order) == sorted(range(4), key=lambda i: -mean[i])
    np.testing.assert_allclose(ranking.logits, mean[list(ranking.order)], rtol=1e-5, atol=1e-5)


def test_a_window_of_one_passage_ranks_each_alone_and_refuses_both_orders(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    judge = JUDGE_TEMPLATE.with_vote(" yes")
    reranker = Reranker(smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=judge)
    assert reranker.strategy == Disjoint(1)
    alone = []
    for passage in PASSAGES:
        prompt = reranker.prompts.build(QUERY, [passage])
        alone.append(vote_scorer.score_at([prompt.token_ids], [prompt.score_positions])[0, 0, 0])
    ranking = reranker.rerank(QUERY, PASSAGES)
    assert list(ranking.order) == sorted(range(4), key=lambda i: -alone[i])
    assert reranker.rerank(QUERY, PASSAGES[::-1]).order == tuple(3 - i for i in ranking.order)
    with pytest.raises(ValueError, match="a window of one passage reads the same both ways"):
        Reranker(
            smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=judge, both_orders=True
        )
    voted = Reranker(smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=VOTED)
    with pytest.raises(ValueError, match="reads the same both ways"):
        voted.replace(window_size=1, both_orders=True)


def test_from_pretrained_refuses_both_orders_for_one_passage_windows_before_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backends, "load_scorer", never)
    with pytest.raises(ValueError, match="a window of one passage reads the same both ways"):
        Reranker.from_pretrained(both_orders=True)  # the default judges one passage a window
    with pytest.raises(ValueError, match="a window of one passage reads the same both ways"):
        Reranker.from_pretrained(template=VOTED, window_size=1, both_orders=True)


def test_from_pretrained_reads_the_chosen_template_by_a_vote(tiny_model_dir: Any) -> None:
    voted = Reranker.from_pretrained(str(tiny_model_dir), device="cpu", vote=" yes")
    assert voted.prompts.template == VOTED
    assert voted.scorer.label_ids.labels == (" yes",)
    explicit = Reranker.from_pretrained(str(tiny_model_dir), device="cpu", template=VOTED)
    assert voted.rerank(QUERY, PASSAGES) == explicit.rerank(QUERY, PASSAGES)


def test_a_vote_ranks_in_disjoint_windows_unless_a_strategy_is_named(
    tiny_model_dir: Any, vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any
) -> None:
    assert (
        Reranker(smollm2_tokenizer, vote_scorer, max_prompt_tokens=4096, template=VOTED).strategy
        == Disjoint()
    )
    assert Reranker.from_pretrained(str(tiny_model_dir), device="cpu").strategy == SlidingWindow()
    voted = Reranker.from_pretrained(str(tiny_model_dir), device="cpu", vote=" yes", window_size=6)
    assert voted.strategy == Disjoint(6)
    named = Reranker.from_pretrained(
        str(tiny_model_dir), device="cpu", vote=" yes", strategy="tournament", window_size=6
    )
    assert named.strategy == Tournament(6)
    given = Reranker.from_pretrained(str(tiny_model_dir), device="cpu", strategy=Tournament(6))
    assert given.strategy == Tournament(6)
    with pytest.raises(ValueError, match="given by name or None"):
        Reranker.from_pretrained(str(tiny_model_dir), strategy=Tournament(6), window_size=6)


@pytest.mark.parametrize("both_orders", [True, False])
def test_disjoint_votes_in_both_orders_rank_reversed_input_alike(
    vote_scorer: TorchLabelScorer, smollm2_tokenizer: Any, both_orders: bool
) -> None:
    # 10 passages deal into 3 windows; reversed, each holds the same passages in reverse,
    # so with both orders every passage gets the same mean vote
    reranker = Reranker(
        smollm2_tokenizer,
        vote_scorer,
        max_prompt_tokens=4096,
        template=VOTED,
        strategy=Disjoint(4),
        both_orders=both_orders,
    )
    texts = [f"{word} {passage}" for word in ("one", "two", "six") for passage in PASSAGES][:10]
    given = reranker.rerank(QUERY, texts)
    backwards = reranker.rerank(QUERY, texts[::-1])
    assert given.cost.windows == 3
    same = [texts[i] for i in given.order] == [texts[::-1][i] for i in backwards.order]
    assert same is both_orders
