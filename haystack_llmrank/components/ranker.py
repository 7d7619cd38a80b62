"""Haystack component: FIRST single-token listwise reranking of Documents."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import ComponentDevice

from haystack_llmrank.arrangement import check_order_invariant
from haystack_llmrank.backends import check_backend, check_placement
from haystack_llmrank.blank_passages import is_blank, with_blank_passages
from haystack_llmrank.fusion import AUTO_FUSION, FusionChoice, complete_scores
from haystack_llmrank.gpu_policy import OnMissingGpu, check_on_missing_gpu
from haystack_llmrank.models import DEFAULT_MODEL
from haystack_llmrank.prompt import (
    AUTO_PASSAGE_WORDS,
    PassageWords,
    PromptTemplate,
    check_passage_words,
    check_vote,
    get_template,
)
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker, check_options, resolve_strategy
from haystack_llmrank.strategies import check_strategy_options, check_top_k

logger = logging.getLogger(__name__)

_RUNTIME = ("_reranker", "_lock", "_warm_lock", "_worker_pool", "_worker_pid", "_pool_lock")
"""What :meth:`FirstListwiseRanker._start_cold` sets: a copy or a pickle leaves it out."""


def deduplicate(documents: list[Document]) -> list[Document]:
    """Keep one Document per id, the highest-scored, at the place of the id's first occurrence."""
    best: dict[str, Document] = {}
    for doc in documents:
        kept = best.get(doc.id)
        score = -math.inf if doc.score is None else doc.score
        if kept is None or score > (-math.inf if kept.score is None else kept.score):
            best[doc.id] = doc
    return list(best.values())


@component
class FirstListwiseRanker:
    """Reranks Documents with a single-token listwise LLM (FIRST): one forward pass per window.

    Usage:
    ```python
    from haystack import Document
    from haystack_llmrank import FirstListwiseRanker

    # the embedded FIRST-trained SmolLM2; or model="castorini/first_mistral"
    ranker = FirstListwiseRanker(top_k=3)
    ranker.warm_up()
    docs = [Document(content="Paris is in France."), Document(content="Berlin is in Germany.")]
    ranker.run(query="Where is Berlin?", documents=docs)["documents"]
    ```

    Output Documents are copies with ``score`` set to the engine's score (see
    :class:`haystack_llmrank.ranking.Ranking`): non-increasing down the list. Documents with the
    same id are deduplicated first (the copy with the highest input ``score`` is kept).
    Documents with no text (no content and no embedded meta, or only what a prompt shows as
    nothing: see
    :func:`~haystack_llmrank.blank_passages.is_blank`) cannot be judged: they follow the
    ranked ones in input order with ``score=None``. Scores strictly decrease down the ranked
    Documents (ties from the engine's capping are set apart by one float32 step), so a later
    sort by score or a threshold keeps the engine's order. An empty query ranks nothing: the
    deduplicated Documents come back as copies in input order with ``score=None``, so
    ``top_k`` applies and a ``score_threshold`` drops them all.

    With ``fusion_k`` (``"auto"``, the default, fuses for the default model), the input
    Documents' scores, higher is better, are the first stage's ranking the model's is fused
    with, whatever order the Documents come in; that needs a score on every Document.

    A copy (by ``copy.deepcopy`` or ``pickle``, of the ranker or of a Pipeline holding it) is
    cold: the same init parameters, its own locks and no model; :meth:`warm_up` or its first
    run loads its own. A loaded model is neither copied nor shared.
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        backend: str = "torch",
        device: str | ComponentDevice | None = None,
        dtype: str | None = None,
        top_k: int | None = None,
        score_threshold: float | None = None,
        window_size: int | None = None,
        step: int | None = None,
        strategy: str | None = None,
        template: str | os.PathLike[str] | dict[str, Any] | PromptTemplate | None = None,
        vote: str | None = None,
        max_passage_words: PassageWords = AUTO_PASSAGE_WORDS,
        max_prompt_tokens: int | None = None,
        batch_size: int = 1,
        max_batch_tokens: int | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        threads: int | None = None,
        on_missing_gpu: OnMissingGpu = "raise",
        both_orders: bool = False,
        fusion_k: FusionChoice = AUTO_FUSION,
        order_invariant: bool = False,
    ) -> None:
        """Configure the ranker; the model is loaded by :meth:`warm_up`.

        :param model: ``"default"`` (embedded SmolLM2-135M-Instruct, FIRST-trained),
            ``"smollm2-135m-instruct"`` (untrained), a Hugging Face id or
            folder, a ``.gguf`` file, or (with ``backend="onnx"``) an ``llmrank export`` folder.
        :param backend: ``"torch"`` or ``"onnx"``.
        :param device: ``"cpu"``, ``"cuda"`` (``"cuda:1"``...), a Haystack ``ComponentDevice``
            of one device, or ``None`` (CUDA when available); kept as its torch name.
        :param dtype: torch dtype name (``"float16"``...) or ``None`` for the device's default.
        :param top_k: keep at most this many Documents (``None``: all).
        :param score_threshold: drop Documents scored below this (and unscored ones); a
            finite number or ``None``.
        :param window_size: passages per window, at most the template's label count
            (``None``: FIRST's 20, or the template's labels where fewer).
        :param step: how far the sliding window moves up each time (``strategy="sliding"``;
            ``None``: half the window). A step for a strategy without one is refused: at
            init for a named strategy, at :meth:`warm_up` when ``strategy`` is ``None`` and
            the model's readout turns out not to slide (a vote's disjoint windows).
        :param strategy: ``"sliding"`` (FIRST's sliding window), ``"tdpart"`` (top-down
            partitioning), ``"tournament"`` or ``"disjoint"`` (for a vote readout); see
            :mod:`haystack_llmrank.strategies`. ``None``: the readout's, ``"disjoint"`` for a
            vote (the default model's) and ``"sliding"`` for label logits. ``tdpart`` and
            ``tournament`` rank fewer positions (the rest keep their input order) and use
            ``top_k`` to rank just enough.
        :param template: prompt template: a name, a ``.json`` file of one, a
            :class:`PromptTemplate` or its dict form; ``None``: the one the model was
            trained or exported with, else ``"first"``.
        :param vote: rank by this one token's logit at the end of each passage's line
            (e.g. ``" yes"``, for a model whose votes were trained) instead of the
            template's labels; ``None``: the template's readout.
        :param max_passage_words: words kept per passage before prompting: ``"auto"``, as
            many as the model was trained on (recorded in its folder), else 300; ``None``: all.
        :param max_prompt_tokens: token budget of one prompt (``None``: the model's context);
            passages are cut to fit it, to no fewer than
            :data:`~haystack_llmrank.prompt.MIN_PASSAGE_TOKENS` tokens each, else the query is
            refused (:class:`~haystack_llmrank.errors.PromptTooLongError`).
        :param batch_size: windows per scorer call (a query's step is never split, so a
            call may hold more); forward passes are bounded by ``max_batch_tokens``.
        :param max_batch_tokens: padded tokens per forward pass (``None``: the scorer's
            choice, one window per pass on a CPU except with an int8 ONNX graph, 16384
            elsewhere).
        :param meta_fields_to_embed: meta fields prepended to the content (a list of names;
            a value that is ``None`` or blank is left out).
        :param embedding_separator: joins the embedded meta fields and the content.
        :param threads: ONNX Runtime intra-op threads (``backend="onnx"`` only; ``None``:
            ONNX Runtime's choice).
        :param on_missing_gpu: ``"raise"``, or ``"warn"`` to log and run on the CPU, when a
            CUDA ``device`` cannot be used.
        :param both_orders: score every window as given and reversed (twice the forward
            passes), so that a window and its reverse get the same verdict; scores are then
            mean label log-probabilities. Refused for windows of one passage (a vote's
            disjoint windows, the default model's), which read the same both ways: at init
            where ``template`` is given, else at :meth:`warm_up`.
        :param fusion_k: fuse the model's order with the first stage's by reciprocal rank
            fusion with this constant (60 is the usual one); scores are then the fused
            ones. The first stage's order is that of the Documents' scores where every one
            has a score, else the input order. ``"auto"``: the model's own constant (60 for
            the default model, none for others), and only where every Document has a
            score. ``None``: the model's order alone.
        :param order_invariant: rank the Documents in an order fixed by their texts instead
            of the order they come in, so that any order of the same Documents ranks alike
            (the ``"disjoint"`` strategy only, the default model's).
        """
        # what is wrong whatever the model fails here, before warm_up loads one
        for name, flag in (("both_orders", both_orders), ("order_invariant", order_invariant)):
            if not isinstance(flag, bool):  # a YAML "false" is a string, and truthy
                raise TypeError(f"{name} must be true or false, got {flag!r}")
        check_vote(vote)
        if template is None:
            check_strategy_options(strategy, window_size=window_size, step=step)
            check_order_invariant(order_invariant, strategy)
        else:  # the template, and so the labels and the readout, is known: check in full
            given = get_template(template)
            resolve_strategy(
                given if vote is None else given.with_vote(vote),
                strategy,
                window_size=window_size,
                step=step,
                order_invariant=order_invariant,
                both_orders=both_orders,
            )
        check_backend(backend, threads, dtype)
        check_on_missing_gpu(on_missing_gpu)
        check_options(
            max_prompt_tokens=max_prompt_tokens,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            fusion_k=fusion_k,
        )
        check_passage_words(max_passage_words)
        if isinstance(meta_fields_to_embed, str):
            raise TypeError(
                f"meta_fields_to_embed must be a list of field names, not one string: "
                f"[{meta_fields_to_embed!r}]"
            )
        if not isinstance(embedding_separator, str):
            raise TypeError(f"embedding_separator must be a string, got {embedding_separator!r}")
        # kept as a string, which to_dict and YAML can write
        self.model = os.fspath(model) if isinstance(model, os.PathLike) else model
        self.backend = backend
        self.device = _device_name(device)
        self.dtype = _dtype_name(dtype)
        check_placement(backend, self.device, self.dtype)  # as the CLI does: here, not at warm_up
        # numbers as plain ints and floats (numpy's too), which to_dict and YAML can write
        self.top_k = check_top_k(top_k)
        self.score_threshold = check_threshold(score_threshold)
        self.window_size = _plain_int(window_size)
        self.step = _plain_int(step)
        self.strategy = strategy
        # kept as a name, a file name or a dict, which to_dict and YAML can write
        if isinstance(template, PromptTemplate):
            template = template.to_dict()
        elif isinstance(template, os.PathLike):
            template = os.fspath(template)
        self.template = template
        self.vote = vote
        self.max_passage_words = _plain_int(max_passage_words)
        self.max_prompt_tokens = _plain_int(max_prompt_tokens)
        self.batch_size = int(batch_size)
        self.max_batch_tokens = _plain_int(max_batch_tokens)
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.threads = _plain_int(threads)
        self.on_missing_gpu = on_missing_gpu
        self.both_orders = both_orders
        self.fusion_k = _plain_int(fusion_k)
        self.order_invariant = order_invariant
        self._start_cold()

    def _start_cold(self) -> None:
        """No model, new locks and no worker thread yet (the attributes in ``_RUNTIME``)."""
        self._reranker: Reranker | None = None
        self._lock = threading.Lock()
        self._warm_lock = threading.Lock()
        # run_async queues here, one call at a time, instead of parking shared executor threads
        self._worker_pool: ThreadPoolExecutor | None = None
        self._worker_pid = 0
        self._pool_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """The attributes that ``copy.deepcopy`` and ``pickle`` carry over: the init parameters
        and Haystack's sockets, not the model, the locks or the worker thread."""
        return {name: value for name, value in vars(self).items() if name not in _RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore :meth:`__getstate__`'s attributes, cold: a model shared by two rankers would
        rank under two locks, and one's :meth:`close` would end the other's rankings."""
        vars(self).update(state)
        self._start_cold()

    @property
    def _worker(self) -> ThreadPoolExecutor:
        """The component's one worker thread, made anew in a forked child (whose copy of the
        parent's pool has no thread, so work queued there would never run)."""
        with self._pool_lock:
            if self._worker_pool is None or self._worker_pid != os.getpid():
                self._worker_pool = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="llmrank-ranker"
                )
                self._worker_pid = os.getpid()
            return self._worker_pool

    def warm_up(self) -> None:
        """Load the model once; later calls do nothing until :meth:`close`."""
        with self._warm_lock:
            if self._reranker is None:
                self._reranker = Reranker.from_pretrained(
                    self.model,
                    backend=self.backend,
                    device=self.device,
                    dtype=self.dtype,
                    template=self.template,
                    vote=self.vote,
                    max_prompt_tokens=self.max_prompt_tokens,
                    strategy=self.strategy,
                    window_size=self.window_size,
                    step=self.step,
                    max_passage_words=self.max_passage_words,
                    batch_size=self.batch_size,
                    max_batch_tokens=self.max_batch_tokens,
                    threads=self.threads,
                    on_missing_gpu=self.on_missing_gpu,
                    both_orders=self.both_orders,
                    fusion_k=self.fusion_k,
                    order_invariant=self.order_invariant,
                )

    async def warm_up_async(self) -> None:
        """Like :meth:`warm_up`, off the event loop, in the component's worker thread."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self.warm_up)

    def close(self) -> None:
        """Let go of the model (:meth:`Reranker.close`) once a ranking in progress ends;
        a later :meth:`warm_up` or run loads it again. Closing a cold ranker does nothing."""
        with self._lock, self._warm_lock:  # the order _rank takes them in
            reranker, self._reranker = self._reranker, None
        if reranker is not None:
            reranker.close()

    async def close_async(self) -> None:
        """Like :meth:`close`, queued in the worker thread behind the calls of ``run_async``
        already there, so the event loop never waits for a ranking to end."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self.close)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the init parameters."""
        return default_to_dict(
            self,
            model=self.model,
            backend=self.backend,
            device=self.device,
            dtype=self.dtype,
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            window_size=self.window_size,
            step=self.step,
            strategy=self.strategy,
            template=self.template,
            vote=self.vote,
            max_passage_words=self.max_passage_words,
            max_prompt_tokens=self.max_prompt_tokens,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            meta_fields_to_embed=self.meta_fields_to_embed,
            threads=self.threads,
            on_missing_gpu=self.on_missing_gpu,
            embedding_separator=self.embedding_separator,
            both_orders=self.both_orders,
            fusion_k=self.fusion_k,
            order_invariant=self.order_invariant,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FirstListwiseRanker:
        """Build a ranker from :meth:`to_dict` output."""
        return default_from_dict(cls, data)

    def _text(self, doc: Document) -> str:
        """The embedded meta values that are not blank, then the content, joined."""
        fields = [str(doc.meta[k]) for k in self.meta_fields_to_embed if _shown(doc, k)]
        return self.embedding_separator.join([*fields, doc.content or ""]).strip()

    def _plan(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None,
        score_threshold: float | None,
    ) -> _Plan | list[Document]:
        """What a call ranks: a :class:`_Plan` of the deduplicated Documents, or, when there
        are none or the query is empty, the Documents it returns unranked."""
        check_top_k(top_k)
        given = check_threshold(score_threshold)
        threshold = self.score_threshold if given is None else given
        limit = self.top_k if top_k is None else top_k
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if not isinstance(documents, list) or not all(isinstance(d, Document) for d in documents):
            raise TypeError("documents must be a list of Documents")
        if not documents or is_blank(query):
            if documents:
                logger.warning("empty query: returning the deduplicated documents unranked")
            unscored = [_copy(d, None) for d in deduplicate(documents)]
            return _limit(unscored, limit, threshold)
        unique = deduplicate(documents)
        texts = [self._text(d) for d in unique]
        blank = sum(map(is_blank, texts))
        if blank:
            logger.warning(
                "%d document(s) have no text to rank; they follow the ranked ones unscored",
                blank,
            )
        return _Plan(unique, texts, [d.score for d in unique], limit, threshold)

    def _rank(
        self,
        query: str,
        texts: list[str],
        top_k: int | None,
        scores: list[float | None],
    ) -> Ranking:
        """Load the model if it is not, and rank, in one hold of the lock: a :meth:`close`
        falls before or after a whole ranking, never inside one. Texts that are all blank
        need no model: they keep their order (:func:`with_blank_passages`). ``scores`` (the
        Documents') are read only by a model that fuses."""
        if all(map(is_blank, texts)):
            return with_blank_passages(Ranking((), (), ()), [], range(len(texts)))
        with self._lock:
            self.warm_up()
            reranker = self._reranker
            assert reranker is not None  # warm_up loaded it, and close waits for the lock
            first_stage = _first_stage(scores) if reranker.fusion_k is not None else None
            return reranker.rerank(query, texts, top_k=top_k, first_stage_scores=first_stage)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Rank ``documents`` for ``query``, best first.

        :param query: the search query; if empty, nothing is ranked (see the class docstring).
        :param documents: candidate Documents (not modified).
        :param top_k: overrides the init ``top_k``.
        :param score_threshold: overrides the init ``score_threshold``.
        :returns: ``{"documents": [...]}`` as described in the class docstring.
        """
        plan = self._plan(query, documents, top_k, score_threshold)
        if isinstance(plan, list):
            return {"documents": plan}
        ranking = self._rank(query, plan.texts, plan.top_k, plan.scores)
        return {"documents": plan.finish(ranking)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Like :meth:`run`, with loading and ranking off the event loop, in the component's
        own worker thread (concurrent calls wait their turn there)."""
        plan = self._plan(query, documents, top_k, score_threshold)
        if isinstance(plan, list):
            return {"documents": plan}
        loop = asyncio.get_running_loop()
        ranking = await loop.run_in_executor(
            self._worker, self._rank, query, plan.texts, plan.top_k, plan.scores
        )
        return {"documents": plan.finish(ranking)}


@dataclass(frozen=True)
class _Plan:
    """A call's deduplicated Documents, their texts (blank ones included: the engine puts
    them last) and input scores, with the call's ``top_k`` and score threshold."""

    documents: list[Document]
    texts: list[str]
    scores: list[float | None]
    top_k: int | None
    threshold: float | None

    def finish(self, ranking: Ranking) -> list[Document]:
        """Copies of the Documents in ``ranking``'s order, scored by it, the blank ones
        (:attr:`Ranking.blank`, last) unscored, through ``top_k`` and the threshold."""
        judged = len(ranking) - ranking.blank
        ranked = [
            _copy(self.documents[i], score if rank < judged else None)
            for rank, (i, score) in enumerate(
                zip(ranking.order, ranking.distinct_scores(), strict=True)
            )
        ]
        return _limit(ranked, self.top_k, self.threshold)


def _first_stage(scores: list[float | None]) -> list[float] | None:
    """The Documents' scores as the first stage's, where every one has a score; ``None``,
    with a warning where only some have one."""
    complete = complete_scores(scores)
    missing = scores.count(None)
    if complete is None and missing < len(scores):
        logger.warning(
            "%d of %d document(s) have no score, so fusion_k reads no first-stage scores",
            missing,
            len(scores),
        )
    return complete


def _copy(document: Document, score: float | None) -> Document:
    """``document`` with ``score`` and a deep copy of every other field (``meta``,
    ``embedding``, ``sparse_embedding``, ``blob``... any its dataclass has): editing what a run
    returns must not change what it was given."""
    given = {f.name: getattr(document, f.name) for f in fields(document) if f.init}
    del given["score"]
    return replace(document, score=score, **copy.deepcopy(given))


def check_threshold(threshold: float | None) -> float | None:
    """``threshold`` as a ``float`` (numpy's too), or ``ValueError`` unless it is ``None`` or
    a finite real number."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"score_threshold must be a number or None, got {threshold!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"score_threshold must be finite, got {threshold!r}")
    return float(threshold)


def _limit(result: list[Document], top_k: int | None, threshold: float | None) -> list[Document]:
    """``result`` without Documents scored below ``threshold`` (or unscored, where there is
    one), then its first ``top_k``."""
    if threshold is not None:
        result = [d for d in result if d.score is not None and d.score >= threshold]
    return result[:top_k] if top_k is not None else result


def _shown(doc: Document, field: str) -> bool:
    """Whether ``doc``'s meta ``field`` holds something to embed: present, not ``None``, and
    not blank once written."""
    value = doc.meta.get(field)
    return value is not None and not is_blank(str(value))


def _plain_int(value: Any) -> Any:
    """``value`` as a plain ``int`` where it is an integer (numpy's too), else as it is
    (``None``, ``"auto"``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _dtype_name(dtype: Any) -> str | None:
    """``dtype`` as a name (a ``torch.dtype``'s too, ``torch.float16`` as ``"float16"``), which
    to_dict and YAML can write; ``TypeError`` for anything else but ``None``."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if type(dtype).__name__ == "dtype" and name.startswith("torch."):
        return name.removeprefix("torch.")
    raise TypeError(f"dtype must be a torch dtype or its name, such as 'bfloat16', got {dtype!r}")


def _device_name(device: Any) -> str | None:
    """``device`` as a torch device string: a string or ``None`` as given, a Haystack
    ``ComponentDevice`` of one device as its torch name."""
    if isinstance(device, ComponentDevice):
        try:
            return str(device.to_torch_str())
        except ValueError as exc:
            raise ValueError(f"the ranker runs on one device: {exc}") from None
    if device is not None and not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    return device
