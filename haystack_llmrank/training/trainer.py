"""FIRST fine-tuning: sample windows, optimise RankNet + LM loss, validate, checkpoint, resume."""

from __future__ import annotations

import json
import logging
import math
import reprlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haystack_llmrank.data import Qrels, QueryCandidates
from haystack_llmrank.errors import PromptTooLongError, listed
from haystack_llmrank.labels import readout_label_ids, resolve_label_ids
from haystack_llmrank.model_templates import recorded_template
from haystack_llmrank.prompt import (
    FIRST_TEMPLATE,
    MIN_PASSAGE_TOKENS,
    PromptBuilder,
    PromptTemplate,
)
from haystack_llmrank.training.adapters import (
    LoraSettings,
    causal_lm,
    make_trainable,
    recordable_base,
    save_trained,
    trainable_parameters,
)
from haystack_llmrank.training.config import TrainConfig
from haystack_llmrank.training.encoding import WindowEncoder
from haystack_llmrank.training.listwise import batch_losses, vote_token_id
from haystack_llmrank.training.losses import chance_ranknet, pairwise_ranknet, ranknet_scale
from haystack_llmrank.training.pointwise import PointwiseScorer, check_one_passage_template
from haystack_llmrank.training.targets import TrainingQuery, TrainingWindow

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
"""Sub-folder of the output folder that holds the latest resumable state."""
CHECKPOINT_STATE = "trainer.json"
"""File in the checkpoint with the trainer's state: step, history, settings and split."""
_RUN_LENGTH = ("stop_after", "max_minutes")
"""Settings that may change between a run and its resumption without a warning."""
_LORA_SHAPE = ("rank", "alpha", "target_modules", "top_layers")
"""LoRA settings that shape or scale the trained adapter, so that a resumed run keeps them."""
RECORD = "training.json"
"""File in the output folder with the settings, the history and the best validation."""
FLOAT16_LOSS_SCALE = 2.0**10
"""The first loss scale of a float16 model: scaled by it, float16 holds gradients from about
6e-11 (its smallest subnormal) up to 64. An overflow halves it and skips its update; 2,000
updates without one double it (``torch.amp.GradScaler``)."""


@dataclass(frozen=True)
class StepReport:
    """What one optimizer update did.

    Losses are means over the update's windows; ``ranknet_chance`` is the mean RankNet the
    same windows would have with equal label logits, the level a model must get below (and
    ``passage_ranknet`` must get below too; 0 when it is not trained). With the pointwise
    objective, ``ranknet`` is the pairwise RankNet of the windows' passage scores, its
    chance level ``log 2``, and ``lm`` is 0. With FIRST's objective and a
    ``pointwise_weight``, ``pointwise`` is that pairwise RankNet (else 0), and ``loss``
    includes it times the weight.
    """

    step: int
    loss: float
    ranknet: float
    lm: float
    ranknet_chance: float
    windows: int
    tokens: int
    seconds: float
    learning_rate: float
    passage_ranknet: float = 0.0
    pointwise: float = 0.0
    validation: float | None = None
    stop_validation: float | None = None
    """The validation of a run that stopped here (``stop_after``, ``max_minutes``) off the
    ``eval_every`` schedule: recorded, but never the best model, so that the resumed run
    keeps the model an uninterrupted one would."""

    @property
    def windows_per_second(self) -> float:
        """Training windows (forward + backward) per second in this update."""
        return self.windows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Validation:
    """Held-out queries: their candidates and judgements. A query without candidates
    would score 0 at every validation, so it is refused."""

    queries: Sequence[QueryCandidates]
    qrels: Qrels

    def __post_init__(self) -> None:
        empty = [q.qid for q in self.queries if not q.candidates]
        if empty:
            raise ValueError(
                f"held-out queries without candidates: {listed(empty, 5)}; they would score "
                "0 at every validation: drop them or give their candidates"
            )

    def check_depth(self, depth: int) -> None:
        """Refuse held-out queries whose qrels grade none of their first ``depth`` candidates
        above 0: validation reranks only those, so such a query would score 0 every time."""
        unscorable = [
            q.qid
            for q in self.queries
            if not any(
                self.qrels.get(q.qid, {}).get(c.docid, 0) > 0 for c in q.top(depth).candidates
            )
        ]
        if unscorable:
            raise ValueError(
                f"held-out queries whose qrels grade none of their first {depth} candidates "
                f"above 0: {listed(unscorable, 5)}; they would score 0 at every validation: "
                "check that the qrels' docids are the candidates' (e.g. 'D123' against '123'), "
                "raise validation_depth (--validation-depth), or train on them instead (--split)"
            )


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    """The factor on ``learning_rate`` of update ``step + 1``: a linear warm-up, the peak
    at update ``warmup_steps + 1``, then a cosine decay to ``min_lr_ratio`` at update
    ``steps``, the last (a single update after warm-up runs at the peak)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        span = config.steps - 1 - config.warmup_steps  # from the peak to the last update
        progress = min(1.0, (step - config.warmup_steps) / span) if span > 0 else 0.0
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def refuse_no_updates_left(config: TrainConfig, step: int, checkpoint: Path) -> None:
    """Refuse to go on from ``checkpoint``, at update ``step``, with a run that ends
    (``config.last_step``) at or before it: it would train nothing."""
    if config.last_step > step:
        return
    ends = "steps" if config.stop_after is None else "stop_after"
    more = [f"steps above {step} (--steps)"] if config.steps <= step else []
    if config.stop_after is not None:
        more.append(f"a stop_after above {step} (--stop-after), or none")
    raise ValueError(
        f"{checkpoint} is at update {step}, and this run ends at update {config.last_step} "
        f"({ends}={config.last_step}): it would train nothing; give {' and '.join(more)}"
    )


def check_template_vote(template: PromptTemplate, config: TrainConfig) -> None:
    """Refuse a ``template`` that ranks by a vote other than ``config.passage_vote``: the token
    trained must be the token read. The message names every setting still missing, so that one
    try tells all (a vote is used only with a positive weight on a loss that reads it). With
    the pointwise objective, a template with a vote must rank one passage a window
    (:func:`~haystack_llmrank.training.pointwise.check_one_passage_template`)."""
    if template.vote is not None and config.objective == "pointwise":
        check_one_passage_template(template)
    if template.vote is None or template.vote == config.passage_vote:
        return
    other = "" if config.passage_vote is None else f", not {config.passage_vote!r}"
    weight = (
        ", with a positive passage_ranknet_weight or pointwise_weight"
        if config.objective == "first"
        and config.passage_ranknet_weight <= 0
        and config.pointwise_weight <= 0
        else ""
    )
    raise ValueError(
        f"template {template.name!r} ranks by the vote {template.vote!r}; train that token: "
        f"passage_vote={template.vote!r}{other}{weight}"
    )


class FirstTrainer:
    """Fine-tunes a causal LM for FIRST reranking.

    Each update accumulates ``grad_accumulation`` windows, each drawn from a random training
    query by ``config.sampling``. The loss is FIRST's: LM cross-entropy on the target
    ranking string plus ``ranknet_weight`` times the weighted RankNet over the label logits
    of the first generated token. With ``passage_ranknet_weight`` (and an echo template),
    plus that weight times a weighted RankNet over each passage's own-label logit at the end
    of its line (or its ``passage_vote`` token's): every passage learns to vote in proportion
    to its relevance, a signal per passage rather than one per window.

    With ``config.objective == "pointwise"``, each drawn window's passages are instead
    scored one per prompt (:class:`PointwiseScorer`) and trained with a pairwise RankNet,
    and validation ranks held-out candidates by those scores. A ``template`` with a ``vote``
    must then be one to rank in windows of one passage (``judge``), whose windows are the
    prompts: the saved model ranks as it trained. Without one, each passage is judged in
    :data:`~haystack_llmrank.training.pointwise.POINTWISE_PROMPT`, a warm start for FIRST
    training.

    With FIRST's objective and a ``pointwise_weight``, that pairwise RankNet over each
    window's passages is added to FIRST's loss, and validation ranks by the FIRST readout,
    or by the votes where ``template`` has a ``vote`` (which must be ``passage_vote``: the
    token trained is the token read, and the saved template records it).

    An update whose loss or gradient norm is not finite is skipped with a warning, the
    weights left as they were (``skipped_updates`` counts them). A float16 model trains its
    float32 adapters with a dynamic loss scale, from :data:`FLOAT16_LOSS_SCALE`.

    ``base_model`` is the model reference the saved adapter and the record name, a local
    base by absolute path (:func:`~haystack_llmrank.training.adapters.recordable_base`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: TrainConfig,
        *,
        base_model: str,
        output_dir: str | Path,
        template: PromptTemplate = FIRST_TEMPLATE,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.template = template
        self.base_model = recordable_base(base_model)  # as the saved adapter names it
        self.output_dir = Path(output_dir)
        self.label_ids = resolve_label_ids(tokenizer, template.labels)
        if config.objective == "first":  # pointwise windows are groups of one-passage prompts
            self.label_ids.check_window(config.sampling.max_size)
        check_template_vote(template, config)
        self.vote_id = vote_token_id(tokenizer, config.passage_vote)
        if (
            config.passage_ranknet_weight > 0
            and self.vote_id is None
            and not template.passage.rstrip().endswith("[{label}]")
        ):
            raise ValueError(
                f"passage_ranknet_weight needs a template that repeats each label after its "
                f"passage (first-echo), or a passage_vote token; {template.name!r} does not"
            )
        self.pointwise: PointwiseScorer | None = None
        if config.objective == "pointwise" or config.pointwise_weight > 0:
            assert self.vote_id is not None  # TrainConfig requires passage_vote
            self.pointwise = PointwiseScorer(
                tokenizer,
                self.vote_id,
                max_passage_words=config.max_passage_words,
                max_prompt_tokens=config.max_prompt_tokens,
                template=self._pointwise_template(),
            )
        torch.manual_seed(config.seed)
        self.model = make_trainable(
            model, config.lora, gradient_checkpointing=config.gradient_checkpointing
        )
        self._warn_of_other_lengths_and_templates()
        self.encoder = WindowEncoder(
            tokenizer,
            PromptBuilder(
                tokenizer,
                template,
                max_prompt_tokens=config.max_prompt_tokens,
                max_passage_words=config.max_passage_words,
            ),
            passage_ends=config.passage_ranknet_weight > 0,
        )
        self._check_context(tokenizer)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config))
        # float16 activations underflow small gradients: scale the loss (the trained weights
        # are float32: full fine-tuning refuses half-precision weights, LoRA keeps float32)
        device = next(self.model.parameters()).device.type
        half = any(p.dtype == torch.float16 for p in self.model.parameters())
        self.scaler = torch.amp.GradScaler(device, init_scale=FLOAT16_LOSS_SCALE) if half else None
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.best: float | None = None
        self.best_step = 0
        self.skipped_updates = 0
        self.history: list[dict[str, Any]] = []
        self.split: dict[str, list[str]] | None = None
        """The qids :meth:`fit` trains and validates on (``train``, ``validation``), which
        checkpoints record."""
        logger.info("training %d parameters", trainable_parameters(self.model))

    def _pointwise_template(self) -> PromptTemplate | None:
        """The template whose one-passage windows the pointwise objective trains: the run's,
        where it ranks by a vote (so that the saved model ranks as it was trained); else
        ``None``, :data:`~haystack_llmrank.training.pointwise.POINTWISE_PROMPT` (a warm start)."""
        if self.config.objective != "pointwise" or self.template.vote is None:
            return None
        return self.template

    def _warn_of_other_lengths_and_templates(self) -> None:
        """Warn where ``template`` records another passage length than this run trains at,
        or the model (``base_model``, a trained folder say) or adapter (``init_from``) it
        starts from was trained with another template: the saved template records this
        run's."""
        recorded = self.template.max_passage_words
        if recorded is not None and recorded != self.config.max_passage_words:
            logger.warning(
                "template %r records max_passage_words=%d; this run trains at %d, which the "
                "saved template records",
                self.template.name,
                recorded,
                self.config.max_passage_words,
            )
        init = None if self.config.lora is None else self.config.lora.init_from
        starts = {"model": self.base_model, "adapter": init}
        for kind, start in starts.items():
            other = None if start is None else self._other_template(start)
            if other is not None:
                logger.warning(
                    "the %s this run starts from, %s, was trained with %s; this run trains "
                    "it on with its own (as expected after a pointwise warm start, which "
                    "trains no template)",
                    kind,
                    start,
                    other,
                )

    def _check_context(self, tokenizer: Any) -> None:
        """Refuse a prompt budget that, with the target ranking after it, exceeds the
        model's context length: the model would train on positions it never saw."""
        from haystack_llmrank.models import context_length

        context = context_length(causal_lm(self.model).config, tokenizer)
        budget = self.config.max_prompt_tokens
        target = 0
        if self.config.objective == "first":
            target = self.encoder.target_tokens(self.config.sampling.max_size)
        if budget + target > context:
            raise ValueError(
                f"max_prompt_tokens={budget} plus the {target} tokens of the target ranking "
                f"of {self.config.sampling.max_size} passages exceed the model's context of "
                f"{context} tokens; lower max_prompt_tokens (--max-prompt-tokens) to "
                f"{context - target} or less"
            )

    def fit(
        self,
        train: Sequence[TrainingQuery],
        validation: Validation | None = None,
        *,
        on_step: Callable[[StepReport], None] | None = None,
        validating: Callable[[int], AbstractContextManager[object]] | None = None,
    ) -> dict[str, Any]:
        """Train to update ``config.last_step`` (continuing from :attr:`step`), or to the
        first update that finishes ``config.max_minutes`` or more after this call's first
        update began (validations and checkpoints included); return the record.

        With ``validation``, nDCG@10 of reranking each held-out query's top
        ``validation_depth`` candidates is measured at update 0, every ``eval_every`` updates
        and at update ``steps``, and the best of those is what the output folder holds.
        Without it, the last update. A stop off that schedule (``stop_after``,
        ``max_minutes``) validates too, as ``stop_validation``, which never becomes the best:
        a stopped and resumed run keeps what an uninterrupted one would. A new best after
        update 0 is checkpointed before the output folder takes it, so that :meth:`resume`
        always finds the best model that its record names. A run that would end at or
        before :attr:`step` (that of a resumed checkpoint) is refused.

        ``on_step`` is called with each update's report; each validation runs inside the
        context ``validating(step)`` returns (a progress bar's status, say).
        """
        if not train:
            raise ValueError("no training queries")
        refuse_no_updates_left(self.config, self.step, self.output_dir / CHECKPOINT)
        self.split = {
            "train": sorted(q.qid for q in train),
            "validation": [] if validation is None else sorted(q.qid for q in validation.queries),
        }
        if validation is not None:
            validation.check_depth(self.config.validation_depth)
            seen = sorted({q.qid for q in train} & {q.qid for q in validation.queries})
            if seen:
                logger.warning(
                    "%d validation queries are also trained on (%s): the validation score, "
                    "and so the best model, then says little of unseen queries",
                    len(seen),
                    listed(seen, 5),
                )
        self.config.sampling.check_targets(train)
        caps = self._window_caps(train)
        self._check_pointwise_prompts(train)
        if validation is not None and self.step == 0 and self.best is None:
            score = self._validate_in(validation, validating)
            self._improves(score)  # the first score is the best so far
            self.history.append({"step": 0, "validation": score})
            self._save_model(self.output_dir)
        started = time.monotonic()
        budget = math.inf if self.config.max_minutes is None else 60 * self.config.max_minutes
        last = False
        while not last and self.step < self.config.last_step:
            report = self._update(train, caps)
            self.step += 1
            out_of_time = time.monotonic() - started >= budget
            if out_of_time and self.step < self.config.last_step:
                logger.info("max_minutes reached: ending this run at update %d", self.step)
            last = self.step == self.config.last_step or out_of_time
            scheduled = self.step % self.config.eval_every == 0 or self.step == self.config.steps
            improved = False
            if validation is not None and (scheduled or last):
                score = self._validate_in(validation, validating)
                if scheduled:
                    report = replace(report, validation=score)
                    improved = self._improves(score)
                else:
                    report = replace(report, stop_validation=score)
                    logger.info(
                        "update %d is a stop off the eval_every schedule: its validation is "
                        "recorded (stop_validation), not compared for the best model",
                        self.step,
                    )
            self.history.append(asdict(report))
            if improved or self.step % self.config.checkpoint_every == 0 or last:
                self.save_checkpoint()
            if improved:
                self._save_model(self.output_dir)
            if on_step is not None:
                on_step(report)
        if validation is None:
            self._save_model(self.output_dir)
        elif self.best is not None and self.best_step == 0 and self.step > 0:
            validated = any(h["step"] > 0 and h.get("validation") is not None for h in self.history)
            why = (
                f"no scheduled validation after update 0 scored above its nDCG@10 of "
                f"{self.best:.4f}"
                if validated
                else f"no scheduled validation (every eval_every={self.config.eval_every} "
                f"updates, and at update steps={self.config.steps}) has run after update 0"
            )
            logger.warning(
                "%s: %s holds the starting model, unchanged by training; the last update (%d) "
                "is in %s",
                why,
                self.output_dir,
                self.step,
                self.output_dir / CHECKPOINT / "model",
            )
        record = self.record()
        self._write_record(record)
        if self.config.objective == "pointwise" and self._pointwise_template() is None:
            logger.warning(
                "%s holds a pointwise warm start: start FIRST training from it "
                "(LoraSettings.init_from, --init-adapter). Loaded as a ranker it ranks by its "
                "template's listwise readout, which the pointwise objective did not train; "
                "its validation nDCG@10 scored each passage in a prompt of its own and does "
                "not describe that ranker",
                self.output_dir,
            )
        return record

    def _window_caps(self, train: Sequence[TrainingQuery]) -> dict[str, int]:
        """The largest window of each query whose prompt does not fit ``max_prompt_tokens`` at
        the sampler's largest size, counting the instruction and query and
        :data:`~haystack_llmrank.prompt.MIN_PASSAGE_TOKENS` per passage, the least the prompt
        builder cuts one to (:meth:`~haystack_llmrank.prompt.PromptBuilder.least_budget`; a
        template that restates the query per passage, a long query): such queries are drawn
        in windows only as large as fit, with a warning. A query that cannot fit ``min_size``
        passages is refused before any update, rather than stopping the run at the update
        that first draws it.
        """
        if self.config.objective != "first":
            return {}
        sampling = self.config.sampling
        limit = self.config.max_prompt_tokens
        caps: dict[str, int] = {}
        refused: list[str] = []
        least = self.encoder.prompts.least_budget
        for query in train:
            smallest, largest = sampling.size_range(query)
            count = largest
            while count >= smallest and least(query.query, count) > limit:
                count -= 1
            if count < smallest:
                refused.append(query.qid)
            elif count < largest:
                caps[query.qid] = count
        if refused:
            raise ValueError(
                f"{len(refused)} training queries do not fit max_prompt_tokens={limit} in "
                f"windows of min_size={sampling.min_size} with {MIN_PASSAGE_TOKENS} tokens "
                f"per passage: {listed(refused, 10)}; shorten or leave out those queries, lower "
                "min_size (--min-window) or raise max_prompt_tokens (--max-prompt-tokens)"
            )
        if caps:
            logger.warning(
                "%d training queries are too long for windows of %d within "
                "max_prompt_tokens=%d; they are drawn in windows of at most: %s",
                len(caps),
                sampling.max_size,
                limit,
                listed([f"{qid} ({count})" for qid, count in caps.items()], 10),
            )
        return caps

    def _check_pointwise_prompts(self, train: Sequence[TrainingQuery]) -> None:
        """Refuse, before any update, training queries with a pointwise prompt (of one of
        the first ``pool`` candidates, which windows are drawn from) over
        ``max_prompt_tokens``: the update that drew it would stop the run, and a resumed run
        would draw it again."""
        if self.pointwise is None:
            return
        pool = self.config.sampling.pool
        over: list[str] = []
        for query in train:
            try:
                self.pointwise.encode(query.query, query.texts[:pool])
            except PromptTooLongError:
                over.append(query.qid)
        if over:
            raise ValueError(
                f"{len(over)} training queries have a pointwise prompt (query and one passage "
                f"of their first pool={pool}) over max_prompt_tokens="
                f"{self.config.max_prompt_tokens}: {listed(over, 10)}; raise "
                "max_prompt_tokens (--max-prompt-tokens), cut passages shorter "
                "(--max-passage-words) or leave out those queries"
            )

    def _update(self, train: Sequence[TrainingQuery], caps: Mapping[str, int]) -> StepReport:
        started = time.perf_counter()
        accumulation = self.config.grad_accumulation
        windows: list[TrainingWindow] = []
        while len(windows) < accumulation:
            query = train[int(self.rng.integers(len(train)))]
            windows.extend(self.config.sampling.sample_group(query, self.rng, caps.get(query.qid)))
        pointwise = self.config.objective == "pointwise"
        backward = self._pointwise_backward if pointwise else self._first_backward
        totals, tokens = backward(windows)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
        rate = float(self.optimizer.param_groups[0]["lr"])
        finite = math.isfinite(totals[0]) and bool(torch.isfinite(norm))
        if finite and self.scaler is not None:
            self.scaler.step(self.optimizer)
        elif finite:
            self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()  # halves the loss scale after an overflow
        if not finite:
            self._skip_update(totals[0], float(norm))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, ranknet, lm, chance, passage, pointwise = (totals / accumulation).tolist()
        seconds = time.perf_counter() - started
        return StepReport(
            self.step + 1,
            loss,
            ranknet,
            lm,
            chance,
            accumulation,
            tokens,
            seconds,
            rate,
            passage,
            pointwise,
        )

    def _skip_update(self, loss: float, norm: float) -> None:
        """Count and report an update left out for a non-finite loss or gradient norm."""
        self.skipped_updates += 1
        scale = (
            "" if self.scaler is None else f"; float16 loss scale now {self.scaler.get_scale():g}"
        )
        logger.warning(
            "update %d: loss %s, gradient norm %s, not finite: skipped, weights unchanged "
            "(%d updates skipped in all%s)",
            self.step + 1,
            loss,
            norm,
            self.skipped_updates,
            scale,
        )

    def _backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``, scaled by the float16 loss scale if there is one."""
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        scaled.backward()  # type: ignore[no-untyped-call]

    def _first_backward(self, windows: Sequence[TrainingWindow]) -> tuple[np.ndarray, int]:
        """Backpropagate FIRST's loss over ``windows``, ``batch_windows`` per forward pass,
        and ``pointwise_weight`` times the pointwise loss of their passages; return the
        summed (loss, ranknet, lm, chance, passage ranknet, pointwise) and the tokens."""
        totals = np.zeros(6)
        tokens = 0
        # by length, so that each forward pass pads as little as it can
        encoded = sorted((self.encoder.encode(w) for w in windows), key=lambda e: len(e.input_ids))
        size = self.config.batch_windows
        for chunk in (encoded[i : i + size] for i in range(0, len(encoded), size)):
            total: torch.Tensor | None = None
            terms_of = batch_losses(self.model, chunk, self.label_ids, self.vote_id)
            for window, terms in zip(chunk, terms_of, strict=True):
                passages = len(window.target)
                # batch_losses sums each RankNet over its pairs
                scale = ranknet_scale(passages, self.config.ranknet_reduction)
                ranknet = terms.ranknet * scale
                loss = terms.lm + self.config.ranknet_weight * ranknet
                passage = 0.0
                if terms.passage_ranknet is not None:
                    passage_ranknet = terms.passage_ranknet * scale
                    loss = loss + self.config.passage_ranknet_weight * passage_ranknet
                    passage = passage_ranknet.item()
                total = loss if total is None else total + loss
                chance = chance_ranknet(passages, self.config.ranknet_reduction)
                totals += (loss.item(), ranknet.item(), terms.lm.item(), chance, passage, 0)
                tokens += len(window.input_ids)
            assert total is not None
            self._backward(total / len(windows))
        if self.config.pointwise_weight > 0:
            # scored one passage per prompt, a mirrored window is its drawn one again
            drawn = windows[:: self.config.sampling.group_size]
            mean, scored = self._pointwise_losses(drawn, self.config.pointwise_weight)
            totals[[0, 5]] += (
                self.config.pointwise_weight * mean * len(windows),
                mean * len(windows),
            )
            tokens += scored
        return totals, tokens

    def _pointwise_backward(self, windows: Sequence[TrainingWindow]) -> tuple[np.ndarray, int]:
        """Backpropagate the pointwise objective's loss over ``windows``; return the summed
        terms as :meth:`_first_backward` does (the pairwise RankNet as ``ranknet``)."""
        mean, tokens = self._pointwise_losses(windows, 1.0)
        count = len(windows)
        return np.array([mean, mean, 0.0, math.log(2), 0.0, 0.0]) * count, tokens

    def _pointwise_losses(
        self, windows: Sequence[TrainingWindow], weight: float
    ) -> tuple[float, int]:
        """Backpropagate ``weight`` times the mean over ``windows`` of the pairwise RankNet of
        each one's pointwise passage scores (a forward pass per window); return that mean
        RankNet and the tokens scored."""
        assert self.pointwise is not None
        summed = 0.0
        tokens = 0
        for window in windows:
            prompts = self.pointwise.encode(window.query, window.passages)
            loss = pairwise_ranknet(self.pointwise.score_ids(self.model, prompts), window.target)
            self._backward(weight * loss / len(windows))
            summed += loss.item()
            tokens += sum(len(p.ids) for p in prompts)
        return summed / len(windows), tokens

    def _validate_in(
        self,
        validation: Validation,
        validating: Callable[[int], AbstractContextManager[object]] | None,
    ) -> float:
        """:meth:`validate`, inside the context ``validating(step)`` where it is given."""
        with nullcontext() if validating is None else validating(self.step):
            return self.validate(validation)

    def validate(self, validation: Validation) -> float:
        """Mean nDCG@10 of reranking each held-out query's top ``validation_depth`` candidates.

        Held-out queries are ranked as a loaded reranker ranks them: within the model's
        context length (not the training budget ``max_prompt_tokens``) and with passages cut
        at ``validation_passage_words``. With the pointwise objective, by pointwise scores of
        passages cut at that length.
        """
        from haystack_llmrank.data import run_from_rankings
        from haystack_llmrank.evaluation import evaluate

        queries = [q.top(self.config.validation_depth) for q in validation.queries]
        self.model.eval()
        try:
            if self.config.objective == "pointwise":
                run = self._pointwise_run(queries)
            else:
                run = run_from_rankings(queries, self._listwise_rankings(queries))
        finally:
            self.model.train()
        judged = {q.qid: validation.qrels[q.qid] for q in queries if q.qid in validation.qrels}
        score = evaluate(run, judged, ["ndcg@10"]).mean["ndcg@10"]
        logger.info(
            "step %d: validation nDCG@10 %.4f in %s", self.step, score, self.validation_dtype
        )
        return float(score)

    @property
    def validation_dtype(self) -> str:
        """The dtype :meth:`validate` computes in: the model's as it trains (its output
        head's, e.g. ``bfloat16``). A ranker that loads the output in another (float32, the
        CPU's default) scores it slightly differently."""
        head = causal_lm(self.model).get_output_embeddings()
        return str(head.weight.dtype).removeprefix("torch.")

    def _listwise_rankings(self, queries: Sequence[QueryCandidates]) -> list[Any]:
        from haystack_llmrank.models import context_length
        from haystack_llmrank.reranker import Reranker
        from haystack_llmrank.scorers.torch_scorer import TorchLabelScorer

        lm = causal_lm(self.model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        template = self.template
        read = readout_label_ids(self.tokenizer, template.labels, template.vote)
        reranker = Reranker(
            self.tokenizer,
            TorchLabelScorer(lm, read, pad_token_id=pad),
            max_prompt_tokens=context_length(lm.config, self.tokenizer),
            template=self.template,
            max_passage_words=self.config.validation_words,
        )
        return reranker.rerank_many([(q.query, q.texts) for q in queries])

    def _pointwise_run(self, queries: Sequence[QueryCandidates]) -> dict[str, dict[str, float]]:
        from haystack_llmrank.models import context_length

        assert self.pointwise is not None
        scorer = PointwiseScorer(
            self.tokenizer,
            self.pointwise.vote_id,
            max_passage_words=self.config.validation_words,
            max_prompt_tokens=context_length(causal_lm(self.model).config, self.tokenizer),
            template=self.pointwise.template,
        )
        return {
            q.qid: dict(
                zip(
                    [c.docid for c in q.candidates],
                    scorer.scores(self.model, q.query, q.texts),
                    strict=True,
                )
            )
            for q in queries
        }

    def _improves(self, score: float) -> bool:
        """Whether ``score`` is the best validation so far; if it is, it becomes the best."""
        if self.best is not None and score <= self.best:
            return False
        self.best = score
        self.best_step = self.step
        return True

    def record(self) -> dict[str, Any]:
        """Settings, base model, template, history, and best validation score with the
        dtype validation ran in."""
        return {
            "base_model": self.base_model,
            "template": self.template.name,
            "config": self.config.to_dict(),
            "steps": self.step,
            "best_validation_ndcg@10": self.best,
            "best_step": self.best_step,
            "validation_dtype": None if self.best is None else self.validation_dtype,
            "skipped_updates": self.skipped_updates,
            "trainable_parameters": trainable_parameters(self.model),
            "history": self.history,
        }

    @property
    def saved_template(self) -> PromptTemplate:
        """The template the saved model records: the one trained, with the words per
        passage it was trained on."""
        return replace(self.template, max_passage_words=self.config.max_passage_words)

    def _save_model(self, folder: Path) -> None:
        """Save the model as a folder that loads wherever a model is named."""
        save_trained(
            self.model,
            self.tokenizer,
            folder,
            base_model=self.base_model,
            template=self.saved_template,
        )

    def _other_template(self, model: str) -> str | None:
        """How the template recorded with ``model`` differs from :attr:`saved_template`;
        ``None`` where it records none or the same."""
        recorded = recorded_template(model)
        if recorded is None or recorded == self.saved_template:
            return None
        differences = _differences(recorded, self.saved_template)
        return f"template {recorded.name!r}, and this run's differs: {differences}"

    def _write_record(self, record: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n", "utf-8")

    def save_checkpoint(self) -> Path:
        """Write the resumable state, and the last model as a loadable folder (``model/``), to
        ``output_dir/checkpoint`` (replaced atomically)."""
        target = self.output_dir / CHECKPOINT
        staging = self.output_dir / f".{CHECKPOINT}-partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        weights = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save(
            {
                "weights": weights,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self._device) if self._on_cuda else None,
                "scaler": None if self.scaler is None else self.scaler.state_dict(),
            },
            staging / "state.pt",
        )
        meta = {
            "step": self.step,
            "best": self.best,
            "best_step": self.best_step,
            "skipped_updates": self.skipped_updates,
            "rng": self.rng.bit_generator.state,
            "history": self.history,
            "config": self.config.to_dict(),
            "base_model": self.base_model,
            "split": self.split,
        }
        (staging / CHECKPOINT_STATE).write_text(json.dumps(meta) + "\n", "utf-8")
        self._save_model(staging / "model")
        if target.exists():
            old = self.output_dir / f".{CHECKPOINT}-old"  # resume() puts it back if need be
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
        self._write_record(self.record())
        return target

    @property
    def _device(self) -> torch.device:
        device: torch.device = next(self.model.parameters()).device
        return device

    @property
    def _on_cuda(self) -> bool:
        return self._device.type == "cuda"

    def _apply_schedule(self) -> None:
        """Use this config's learning rate and schedule from the step reached (the loaded
        scheduler state holds the rate the checkpoint was trained with)."""
        rate = _schedule(self.config)(self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.config.learning_rate] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.learning_rate
            group["lr"] = self.config.learning_rate * rate

    def _refuse_changes(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Refuse to resume the checkpoint in ``folder`` (its ``trainer.json`` is ``meta``)
        with another base model, template, RankNet reduction, or LoRA shape: what the
        trained weights fit or what they were trained to mean.

        A checkpoint from before a setting was recorded was trained with its default (the
        base model: unknown, so accepted).
        """
        other = self._other_template(str(folder / "model"))
        if other is not None:
            raise ValueError(
                f"{folder} was trained with {other}; resume with the same template and "
                "max_passage_words"
            )
        saved_lora = meta["config"].get("lora")
        if (saved_lora is None) != (self.config.lora is None):
            kinds = {True: "every weight (full fine-tuning)", False: "LoRA adapters"}
            raise ValueError(
                f"{folder} trained {kinds[saved_lora is None]}, and this run trains "
                f"{kinds[self.config.lora is None]}; resume the same way"
            )
        fixed = {
            "base model": (meta.get("base_model", self.base_model), self.base_model),
            "ranknet_reduction": (
                meta["config"].get("ranknet_reduction", TrainConfig.ranknet_reduction),
                self.config.ranknet_reduction,
            ),
        }
        if saved_lora is not None and self.config.lora is not None:
            given = _unordered_targets(json.loads(json.dumps(asdict(self.config.lora))))
            defaults = _unordered_targets(json.loads(json.dumps(asdict(LoraSettings()))))
            saved = _unordered_targets(saved_lora)
            for name in _LORA_SHAPE:
                fixed[f"LoRA {name}"] = (saved.get(name, defaults[name]), given[name])
        for name, (there, here) in fixed.items():
            if there != here:
                raise ValueError(
                    f"{folder} was trained with {name} {there!r}, not {here!r}; resume with "
                    f"the same {name}"
                )

    def resume(self) -> bool:
        """Load ``output_dir/checkpoint`` if there is one; return whether it was loaded.

        A save stopped between moving the old checkpoint aside and putting the new one in
        its place leaves only the old one: it is put back and loaded.
        """
        folder = self.output_dir / CHECKPOINT
        old = self.output_dir / f".{CHECKPOINT}-old"
        if not folder.exists() and (old / CHECKPOINT_STATE).is_file():
            logger.warning("%s: restoring the checkpoint a stopped save moved aside", old)
            old.rename(folder)
        if not (folder / CHECKPOINT_STATE).is_file():
            return False
        meta = json.loads((folder / CHECKPOINT_STATE).read_text("utf-8"))
        self._refuse_changes(folder, meta)
        # checkpoints from before the setting were trained with the default
        saved = {"ranknet_reduction": TrainConfig.ranknet_reduction, **meta["config"]}
        current = json.loads(json.dumps(self.config.to_dict()))  # tuples as the JSON's lists
        for config in (saved, current):
            if isinstance(config.get("lora"), dict):
                config["lora"] = _unordered_targets(config["lora"])
        changed = sorted(
            k for k, v in current.items() if saved.get(k) != v and k not in _RUN_LENGTH
        )
        if changed:
            logger.warning("resuming with changed settings: %s", ", ".join(changed))
        # onto the CPU first: a checkpoint of a CUDA run resumes on another GPU or none (the
        # optimizer's state follows its parameters when loaded)
        state = torch.load(folder / "state.pt", weights_only=False, map_location="cpu")
        missing = set(n for n, p in self.model.named_parameters() if p.requires_grad) - set(
            state["weights"]
        )
        if missing:
            raise ValueError(
                f"{folder}: the checkpoint lacks trained weights: {sorted(missing)[:3]}"
            )
        self.model.load_state_dict(state["weights"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_schedule()
        torch.set_rng_state(state["torch_rng"])
        cuda_rng = state.get("cuda_rng")
        if isinstance(cuda_rng, list):  # checkpoints that saved every GPU's state
            index = self._device.index or 0
            cuda_rng = cuda_rng[index] if index < len(cuda_rng) else None
        if self._on_cuda and cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self._device)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = meta["rng"]
        self.step = int(meta["step"])
        self.best = meta["best"]
        self.best_step = int(meta.get("best_step", 0))
        self.skipped_updates = int(meta.get("skipped_updates", 0))
        self.history = list(meta["history"])
        if self.best is not None and self.best_step == self.step:
            # a new best is checkpointed, then saved: finish a save that a crash cut short
            self._save_model(self.output_dir)
        logger.info("resumed from %s at step %d", folder, self.step)
        return True


def _differences(there: PromptTemplate, here: PromptTemplate) -> str:
    """The fields in which two templates differ, each with its two values."""
    short = reprlib.Repr()
    short.maxstring, short.maxtuple = 40, 30  # long texts cut; label tuples whole
    return "; ".join(
        f"{f.name} {short.repr(getattr(there, f.name))} there, "
        f"{short.repr(getattr(here, f.name))} here"
        for f in fields(PromptTemplate)
        if getattr(there, f.name) != getattr(here, f.name)
    )


def _unordered_targets(lora: Mapping[str, Any]) -> dict[str, Any]:
    """LoRA settings (as JSON) with their target modules sorted: a set, whose order shapes
    nothing."""
    if "target_modules" not in lora:
        return dict(lora)
    return {**lora, "target_modules": sorted(lora["target_modules"])}
