"""FIRST prompts: templates as data, passage normalisation, and a token budget.

The budget shrinks passages only: the instruction, the query and the template's answer
prefix (``[``) are never cut, and a window whose budget leaves its passages fewer than
:data:`MIN_PASSAGE_TOKENS` tokens each is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

from ftfy import fix_text

from haystack_llmrank.checks import check_positive, is_whole
from haystack_llmrank.errors import PromptTooLongError, WindowTooLargeError
from haystack_llmrank.labels import ALPHABETIC_LABELS, NUMERIC_LABELS

logger = logging.getLogger(__name__)

DEFAULT_MAX_PASSAGE_WORDS = 300
"""Words kept per passage before prompting, for a template that records no training length."""

AUTO_PASSAGE_WORDS: Final = "auto"
"""``max_passage_words`` that keeps the template's recorded training length, else
:data:`DEFAULT_MAX_PASSAGE_WORDS`."""

MIN_PASSAGE_TOKENS: Final = 16
"""The fewest tokens the prompt budget must leave each passage that it shortens; a window
with less room is refused (:class:`~haystack_llmrank.errors.PromptTooLongError`).

A passage cut to a few tokens shows the model next to nothing, and its verdict on a window
of such passages reads their positions, not their content, as it would for blank passages
(see :mod:`haystack_llmrank.blank_passages`). 16 tokens is about a dozen words: a title or
a short sentence, about the least that a judgement of relevance can rest on. It is small beside any
real budget (a window of 20 needs 320 tokens more than its instruction and query), so it
only refuses budgets set too tight. Passages naturally shorter are shown whole."""

PassageWords = int | Literal["auto"] | None
"""Words kept per passage: a positive number, ``"auto"`` (see :data:`AUTO_PASSAGE_WORDS`),
or ``None`` for all."""

RANKLLM_SYSTEM_MESSAGE = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their "
    "relevancy to the query"
)
_INSTRUCTION = (
    "Rank the {n} passages above based on their relevance to the search query. All the "
    "passages should be included and listed using identifiers, in descending order of "
    "relevance. The output format should be [] > [], e.g., {example}, Only respond with the "
    "ranking results, do not say any word or explain."
)
_FIRST_LETTERS = re.compile(r"\[([A-z]+)\]")
"""FIRST's own rewrite of bracketed letters (its ``[A-z]`` range included)."""
_DIGITS = re.compile(r"\[(\d+)\]")
_MARKUP = re.compile(r"<[^\s<>]+>|\[[^\s\[\]]+\]")
"""An added token that reads as markup: a tag (``<think>``, ``</tool_call>``, ``<|fim_pad|>``)
or a bracketed word (``[INST]``), with no whitespace. Tokenisation splits every added token
out of text, special or not, and a chat model reads these as structure; an added HTML tag
(``<table>``) is caught too. Plain added words (``cardiomyopathy``) are not markup."""
_SYSTEM_JOINER = "\n "


@dataclass(frozen=True)
class PromptTemplate:
    """The wording of a listwise prompt, with ``{n}``, ``{query}``, ``{label}``, ``{text}`` slots.

    The user turn is ``prefix`` + one ``passage`` line per passage + ``suffix``; the rendered
    chat prompt ends with ``answer_prefix``, after which the model's first token is a label.
    ``prefix`` and ``suffix`` may name ``{n}`` and ``{query}``; ``passage`` must name
    ``{label}`` and ``{text}`` and may name ``{query}``.

    ``vote`` switches the readout: with it, a window is ordered by the logit of the single
    token ``vote`` (for instance ``" yes"``) at the last token of each passage line, read
    in the same forward pass, instead of by the label logits after ``answer_prefix``. For
    models trained with ``llmrank train --passage-vote`` on this template. Its passage line
    must then close with wording that holds a line break after its last slot (as
    ``"[{label}] {text}\n"`` does), so that the line's end cannot be found inside a passage.

    ``max_passage_words`` is the words per passage the model was trained on (``llmrank
    train`` records it): a prompt builder left at ``"auto"`` keeps that many. ``None``
    records no length.
    """

    name: str
    prefix: str
    passage: str
    suffix: str
    labels: tuple[str, ...]
    system: str | None = RANKLLM_SYSTEM_MESSAGE
    answer_prefix: str = "["
    vote: str | None = None
    max_passage_words: int | None = None

    def __post_init__(self) -> None:
        check_vote(self.vote)
        if self.max_passage_words is not None and not is_whole(self.max_passage_words):
            raise ValueError(
                "a template's max_passage_words must be a positive integer or None, "
                f"got {self.max_passage_words!r}"
            )
        if not self.labels:
            raise ValueError("a template needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"template labels must be distinct: {self.labels}")
        _check_slots("prefix", self.prefix, allowed={"n", "query"})
        _check_slots("suffix", self.suffix, allowed={"n", "query"})
        _check_slots("passage", self.passage, allowed={"label", "text", "query"})
        slots = _slots(self.passage)
        if "label" not in slots or slots.count("text") != 1:
            raise ValueError(
                f"the passage line must name {{label}}, and {{text}} once: {self.passage!r}"
            )
        if self.vote is not None:
            check_line_end(self.passage)

    def check_window(self, size: int) -> None:
        """Raise :class:`WindowTooLargeError` if ``size`` passages need more than its labels."""
        if size > len(self.labels):
            raise WindowTooLargeError(
                f"{size} passages but template {self.name!r} has {len(self.labels)} labels"
            )

    def user_turn(self, query: str, texts: Sequence[str]) -> str:
        """The user message for ``texts`` in this order."""
        n = len(texts)
        lines = "".join(
            self.passage.format(label=label, text=text, query=query)
            for label, text in zip(self.labels, texts, strict=False)
        )
        return self.prefix.format(n=n, query=query) + lines + self.suffix.format(n=n, query=query)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    def with_vote(self, vote: str | None) -> PromptTemplate:
        """This template read by ``vote`` at each passage line's end (``None``: by labels)."""
        return replace(self, vote=vote)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        """Inverse of :meth:`to_dict`; ``ValueError`` names missing and unknown fields."""
        if not isinstance(data, dict):
            raise ValueError(f"a template is an object of its fields, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        required = {f.name for f in fields(cls) if f.default is MISSING}
        problems = [
            f"{what} fields {names}"
            for what, names in (
                ("missing", sorted(required - data.keys())),
                ("unknown", sorted(data.keys() - set(known))),
            )
            if names
        ]
        if problems:
            raise ValueError(
                f"a template has {' and '.join(problems)}; its fields are {', '.join(known)}"
            )
        labels = data["labels"]
        if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"a template's labels must be a list of strings, got {labels!r}")
        return cls(**{**data, "labels": tuple(labels)})


def check_passage_words(words: PassageWords) -> None:
    """``ValueError`` unless ``words`` is a positive integer, ``"auto"`` or ``None``."""
    if words is not None and words != AUTO_PASSAGE_WORDS and not is_whole(words):
        raise ValueError(
            f"max_passage_words must be a positive integer, {AUTO_PASSAGE_WORDS!r} or None, "
            f"got {words!r}"
        )


def defuse(text: str, controls: re.Pattern[str] | None) -> str:
    """``text`` with each match of ``controls`` (:func:`control_strings`: a tokenizer's
    special-token strings, ``<|im_end|>``..., and markup such as ``<think>``) broken by a
    space after its first character, so that text from a query or a passage is tokenised as
    text and cannot end a turn, open one or open a reasoning block."""
    if controls is None:
        return text
    while (found := controls.search(text)) is not None:
        at = found.start() + 1
        text = text[:at] + " " + text[at:]
    return text


def control_strings(tokenizer: Any) -> re.Pattern[str] | None:
    """A pattern (longest first) of the strings that ``tokenizer``'s tokenisation turns into
    one control token wherever they appear in text: its special tokens, and its other added
    tokens that read as markup (:data:`_MARKUP`), such as Qwen3's ``<think>`` and
    ``<tool_call>``. Other added tokens, such as a domain word, stay text."""
    strings = set(getattr(tokenizer, "all_special_tokens", ()))
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    strings.update(token.content for token in decoder.values() if _is_control(token))
    strings = {s for s in strings if isinstance(s, str) and len(s) > 1}
    if not strings:
        return None
    return re.compile("|".join(map(re.escape, sorted(strings, key=len, reverse=True))))


def _is_control(token: Any) -> bool:
    """Whether an added token is special or reads as markup (:data:`_MARKUP`)."""
    content = getattr(token, "content", None)
    return bool(getattr(token, "special", False)) or (
        isinstance(content, str) and _MARKUP.fullmatch(content) is not None
    )


def resolve_passage_words(words: PassageWords, template: PromptTemplate) -> int | None:
    """The words kept per passage for ``words`` with ``template``: ``"auto"`` is the
    template's recorded training length, else :data:`DEFAULT_MAX_PASSAGE_WORDS`."""
    check_passage_words(words)
    if words == AUTO_PASSAGE_WORDS:
        return template.max_passage_words or DEFAULT_MAX_PASSAGE_WORDS
    return words


def check_vote(vote: str | None) -> None:
    """``ValueError`` unless ``vote`` is ``None`` or holds a visible character."""
    if vote is not None and not vote.strip():
        raise ValueError(f"a template's vote must be a visible token, got {vote!r}")


def _slots(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def _check_slots(part: str, text: str, allowed: set[str]) -> None:
    try:
        unknown = set(_slots(text)) - allowed
    except ValueError as exc:  # unbalanced braces
        raise ValueError(f"template {part} is not a valid format string: {exc}") from None
    if unknown:
        raise ValueError(
            f"template {part} names unknown slots {sorted(unknown)}; it may use "
            f"{sorted(allowed)} (write literal braces as {{{{ and }}}})"
        )


def _first_template(
    name: str,
    kind: str,
    example: str,
    labels: tuple[str, ...],
    passage: str = "[{label}] {text}\n",
) -> PromptTemplate:
    """The FIRST wording with ``kind`` identifiers (alphabetical, numerical)."""
    return PromptTemplate(
        name=name,
        prefix=(
            f"I will provide you with {{n}} passages, each indicated by a {kind} identifier []. "
            "Rank the passages based on their relevance to the search query: {query}.\n\n"
        ),
        passage=passage,
        suffix="Search Query: {query}.\n" + _INSTRUCTION.replace("{example}", example),
        labels=labels,
    )


FIRST_TEMPLATE = _first_template("first", "alphabetical", "[B] > [A]", ALPHABETIC_LABELS)
FIRST_NUMERIC_TEMPLATE = _first_template("first-numeric", "numerical", "[2] > [1]", NUMERIC_LABELS)
FIRST_ECHO_TEMPLATE = _first_template(
    "first-echo", "alphabetical", "[B] > [A]", ALPHABETIC_LABELS, "[{label}] {text} [{label}]\n"
)
"""FIRST's wording with each label repeated after its passage (``[A] text [A]``).

The label then sits right after the text it names, where the model has read the whole
passage, so choosing a label needs one attention step instead of two (find the relevant
text, then the label printed before it). For models trained with it (``llmrank train
--template first-echo``); untrained models and FIRST's own checkpoints expect ``first``.
"""

FIRST_JUDGE_TEMPLATE = _first_template(
    "first-judge",
    "alphabetical",
    "[B] > [A]",
    ALPHABETIC_LABELS[:20],  # as the first-judge default model was trained
    "[{label}] Query: {query}\nPassage: {text}\nIs the passage relevant to the query? "
    "[{label}] Answer:\n",
)
"""FIRST's wording with each passage line restating the query and asking whether the
passage is relevant, as a pointwise prompt would, so that a vote (``" yes"``) at the line's
end judges that passage (the previous default model's template: ``llmrank train --template
first-judge --passage-vote ' yes'``)."""

JUDGE_TEMPLATE = PromptTemplate(
    name="judge",
    prefix="",
    passage=FIRST_JUDGE_TEMPLATE.passage,
    suffix="",
    labels=ALPHABETIC_LABELS[:1],
)
"""One passage a window, in ``first-judge``'s passage line and nothing else (the default
model's template): a model trained with ``llmrank train --objective pointwise --template
judge --passage-vote ' yes' --rank-by-vote`` judges each passage alone by its vote, in the
prompt it was trained on.
With no instruction around the line, a window is about a third of the tokens that
``first-judge`` takes for one passage."""

TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        FIRST_TEMPLATE,
        FIRST_NUMERIC_TEMPLATE,
        FIRST_ECHO_TEMPLATE,
        FIRST_JUDGE_TEMPLATE,
        JUDGE_TEMPLATE,
    )
}


def get_template(
    template: str | os.PathLike[str] | PromptTemplate | dict[str, Any],
) -> PromptTemplate:
    """A template by name, from a JSON file of its dict form (a path ending in ``.json``),
    from its dict form, or as given."""
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, dict):
        return PromptTemplate.from_dict(template)
    template = os.fspath(template)
    if template in TEMPLATES:
        return TEMPLATES[template]
    if template.endswith(".json"):
        return _template_file(Path(template))
    raise ValueError(
        f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}, or a .json file "
        "of a template's fields"
    )


def _template_file(file: Path) -> PromptTemplate:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return PromptTemplate.from_dict(data)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read a prompt template from {file}: {exc}") from exc


def label_lookalike(labels: Sequence[str]) -> re.Pattern[str]:
    """What in a passage or a query could pass for one of ``labels`` in brackets.

    Letters for alphabetical labels (FIRST's own pattern, so prompts stay token-identical
    to FIRST's), digits for numerical ones, else the labels themselves.
    """
    if all(label.isascii() and label.isalpha() for label in labels):
        return _FIRST_LETTERS
    if all(label.isdigit() for label in labels):
        return _DIGITS
    return re.compile(r"\[(" + "|".join(re.escape(label) for label in labels) + r")\]")


def normalize_query(query: str) -> str:
    """``query`` repaired as a passage is (``ftfy``, which also unescapes HTML entities such as
    ``&amp;``), with its whitespace collapsed to single spaces and trimmed (so that
    ``"  where is berlin\n"`` and ``"where is berlin"`` give the same prompt)."""
    return " ".join(str(fix_text(query)).split())


def normalize_passage(
    text: str,
    max_words: int | None = DEFAULT_MAX_PASSAGE_WORDS,
    labels: Sequence[str] = ALPHABETIC_LABELS,
) -> str:
    """Repair the text as the rendered prompt will (``ftfy``: mojibake, full-width forms, so
    full-width brackets become ASCII first), collapse whitespace, keep ``max_words`` words at
    most, and turn what could pass for a bracketed label (see :func:`label_lookalike`) into
    parentheses: ``[A]`` -> ``(A)``."""
    words = str(fix_text(text)).split()
    if max_words is not None:
        words = words[:max_words]
    return label_lookalike(labels).sub(r"(\1)", " ".join(words))


@dataclass(frozen=True)
class Prompt:
    """One rendered window: its text, its token ids, and how many passages were shortened.

    ``score_positions`` holds, for a template with a ``vote``, the index of the last token
    of each passage line, where the scores are read; it is empty otherwise (the scores are
    read at the last token).
    """

    text: str
    token_ids: tuple[int, ...]
    truncated_passages: int = 0
    score_positions: tuple[int, ...] = ()


def _water_level(lengths: Sequence[int], budget: int) -> int:
    """Largest cap ``t`` with ``sum(min(length, t)) <= budget`` (``budget >= 0``)."""
    remaining = budget
    ordered = sorted(lengths)
    for i, length in enumerate(ordered):
        share = remaining // (len(ordered) - i)
        if length > share:
            return share
        remaining -= length
    return ordered[-1] if ordered else 0


class PromptBuilder:
    """Renders FIRST prompts for a tokenizer and keeps them within a token budget.

    Passages keep ``max_passage_words`` words (``"auto"``: the template's recorded training
    length, else :data:`DEFAULT_MAX_PASSAGE_WORDS`; ``None``: all), resolved in
    :attr:`max_passage_words`.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: PromptTemplate = FIRST_TEMPLATE,
        *,
        max_prompt_tokens: int,
        max_passage_words: PassageWords = AUTO_PASSAGE_WORDS,
    ) -> None:
        check_positive("max_prompt_tokens", max_prompt_tokens, optional=False)
        resolved = resolve_passage_words(max_passage_words, template)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the tokenizer has no chat template; FIRST prompts are chat prompts "
                "(set tokenizer.chat_template to the model's template)"
            )
        self._tokenizer = tokenizer
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.max_passage_words = resolved
        self.requested_max_passage_words = max_passage_words
        """As asked (``"auto"`` included), for a builder of another template to resolve."""
        self._controls = control_strings(tokenizer)
        self._system_role = template.system is not None and self._has_system_role()

    def _has_system_role(self) -> bool:
        marker = "\u2063llmrank-system-probe\u2063"
        messages = [{"role": "system", "content": marker}, {"role": "user", "content": "q"}]
        try:
            rendered = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception:  # templates signal "no system role" by raising
            return False
        return marker in rendered

    def render(self, query: str, texts: Sequence[str]) -> str:
        """The full prompt text for already-normalised passage texts."""
        user = self.template.user_turn(query, texts)
        messages = []
        if self.template.system is not None:
            if self._system_role:
                messages.append({"role": "system", "content": self.template.system})
            else:
                user = self.template.system + _SYSTEM_JOINER + user
        messages.append({"role": "user", "content": user})
        chat = self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(fix_text(chat)) + self.template.answer_prefix

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def defuse(self, text: str) -> str:
        """``text`` defused for this builder's tokenizer (see :func:`defuse`)."""
        return defuse(text, self._controls)

    def shown_query(self, query: str) -> str:
        """``query`` as this builder's prompts show it: repaired and its whitespace collapsed
        (:func:`normalize_query`), what could pass for one of the template's labels in
        parentheses as in a passage (:func:`label_lookalike`: ``[B]`` -> ``(B)``), and
        defused (:meth:`defuse`). Showing it twice changes nothing."""
        shown = label_lookalike(self.template.labels).sub(r"(\1)", normalize_query(query))
        return self.defuse(shown)

    def build(self, query: str, passages: Sequence[str]) -> Prompt:
        """Render and tokenise one window, shrinking passages if it exceeds the budget;
        :class:`~haystack_llmrank.errors.PromptTooLongError` where that leaves a passage it
        cuts fewer than :data:`MIN_PASSAGE_TOKENS` tokens.

        The query is shown as :meth:`shown_query` gives it, and the passages normalised
        (:func:`normalize_passage`) and defused (:meth:`defuse`).
        """
        self.template.check_window(len(passages))
        labels = self.template.labels
        query = self.shown_query(query)
        texts = [
            self.defuse(normalize_passage(p, self.max_passage_words, labels)) for p in passages
        ]
        text = self.render(query, texts)
        ids = self._encode(text)
        if len(ids) <= self.max_prompt_tokens:
            prompt = Prompt(text, tuple(ids))
        else:
            prompt = self._fit(query, texts, len(ids))
        if self.template.vote is None:
            return prompt
        ends = self.passage_end_tokens(prompt, query, len(passages))
        return replace(prompt, score_positions=tuple(ends))

    def passage_end_tokens(self, prompt: Prompt, query: str, count: int) -> list[int]:
        """Index in ``prompt.token_ids`` of the last token of each of the first ``count``
        passage lines of ``prompt``, built for ``query`` (with ``first-echo``: the ``]`` of
        the label repeated after the text)."""
        return [last for _, last in self.passage_line_tokens(prompt, query, count)]

    def passage_line_tokens(self, prompt: Prompt, query: str, count: int) -> list[tuple[int, int]]:
        """Index in ``prompt.token_ids`` of the first and the last token of each of the first
        ``count`` passage lines of ``prompt``, built for ``query``. The first is the token
        that holds the line's first character, which it may share with what precedes; it is
        -1 where the template's line starts with a slot (``{text}``), which has no wording to
        find it by.

        Lines are searched after the query (as :meth:`shown_query` gives it) where the
        template's prefix holds it, by the template's wording around its slots, which
        passages cannot contain:
        :func:`normalize_passage` rewrites bracketed labels and line breaks. A template whose
        line does not close with a line break raises ``ValueError`` (see
        :func:`check_line_end`).
        """
        encoded = self._tokenizer(
            prompt.text, add_special_tokens=False, return_offsets_mapping=True
        )
        if list(encoded["input_ids"]) != list(prompt.token_ids):
            raise ValueError("the prompt does not re-tokenise to its own ids")
        query = self.shown_query(query)  # as build shows it
        shown = query if query in prompt.text else None
        start = 0
        if shown is not None and "query" in _slots(self.template.prefix):
            start = prompt.text.index(shown) + len(shown)
        offsets = encoded["offset_mapping"]

        def token_of(char: int) -> int:
            found = [i for i, (a, b) in enumerate(offsets) if a <= char < b]
            if not found:
                raise ValueError(f"no token covers character {char} of the prompt")
            return found[0]

        spans = _line_spans(self.template, prompt.text, count, start, shown)
        return [(token_of(first) if first >= 0 else -1, token_of(last)) for first, last in spans]

    def instruction_tokens(self, query: str, count: int) -> int:
        """Tokens of a window of ``count`` empty passages for ``query``: what no cut of the
        passages can shorten (a template that restates the query per passage grows with
        ``count``)."""
        shown = self.shown_query(query)  # as build shows it; twice changes nothing
        return len(self._encode(self.render(shown, [""] * count)))

    def check_query(self, query: str, count: int = 1) -> int:
        """The :meth:`instruction_tokens` of ``query`` and ``count`` passages; raises
        :class:`~haystack_llmrank.errors.PromptTooLongError` where the budget leaves fewer
        than :data:`MIN_PASSAGE_TOKENS` tokens for each passage beside them (as
        :meth:`build` would for passages long enough to be cut), whatever the passages;
        ``count`` must be at least 1."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        bare = self.instruction_tokens(query, count)
        self._check_room(bare, count, max(self.max_prompt_tokens - bare, 0) // count)
        return bare

    def least_budget(self, query: str, count: int) -> int:
        """The smallest ``max_prompt_tokens`` that :meth:`check_query` passes for ``query``
        and ``count`` passages: their :meth:`instruction_tokens` and
        :data:`MIN_PASSAGE_TOKENS` per passage."""
        return self.instruction_tokens(query, count) + count * MIN_PASSAGE_TOKENS

    def _check_room(self, bare: int, count: int, left: int) -> None:
        """:class:`~haystack_llmrank.errors.PromptTooLongError` where ``left``, the tokens
        the budget leaves each of ``count`` passages beside the ``bare`` tokens of the
        instruction and query, is under :data:`MIN_PASSAGE_TOKENS`."""
        if left >= MIN_PASSAGE_TOKENS:
            return
        budget = self.max_prompt_tokens
        if bare > budget:
            problem = (
                f"the instruction and query alone take {bare} tokens for a window of {count} "
                f"passages, over the budget of {budget}"
            )
        else:
            problem = (
                f"the budget of {budget} tokens leaves {left} tokens per passage to a window "
                f"of {count} passages beside the {bare} tokens of the instruction and query, "
                f"under the {MIN_PASSAGE_TOKENS} a passage needs to be judged by its content"
            )
        narrower = " or rank in narrower windows" if count > 1 else ""
        raise PromptTooLongError(f"{problem}; raise max_prompt_tokens, shorten the query{narrower}")

    def _fit(self, query: str, texts: list[str], full_length: int) -> Prompt:
        bare = self.instruction_tokens(query, len(texts))
        encoded = [
            self._tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts
        ]
        offsets = [list(e["offset_mapping"]) for e in encoded]
        lengths = [len(o) for o in offsets]
        cap = _water_level(lengths, max(self.max_prompt_tokens - bare, 0))
        if cap < max(lengths, default=0):  # a passage within the cap is not cut, however short
            self._check_room(bare, len(texts), cap)
        while True:
            cut = [
                t if len(o) <= cap else t[: o[cap - 1][1]].rstrip() if cap else ""
                for t, o in zip(texts, offsets, strict=True)
            ]
            text = self.render(query, cut)
            ids = self._encode(text)
            shortened = sum(len(o) > cap for o in offsets)
            if len(ids) <= self.max_prompt_tokens:
                logger.debug(
                    "shortened %d passages to %d tokens each (%d -> %d prompt tokens)",
                    shortened,
                    cap,
                    full_length,
                    len(ids),
                )
                return Prompt(text, tuple(ids), shortened)
            if cap == 0:
                raise PromptTooLongError(
                    f"the prompt takes {len(ids)} tokens with every passage emptied, over the "
                    f"budget of {self.max_prompt_tokens}"
                )
            excess = len(ids) - self.max_prompt_tokens
            cap = max(0, cap - max(1, -(-excess // max(shortened, 1))))


def check_line_end(passage: str) -> None:
    """``ValueError`` unless the ``passage`` line closes, after its last slot, with wording that
    holds a line break: no passage text holds one, so the line's end, where a vote is read,
    cannot be found inside a passage."""
    if "\n" not in _line_wording(passage, "")[-1][1]:
        raise ValueError(
            f"the passage line {passage!r} must close with wording that holds a line break "
            "after its last slot (as '[{label}] {text}\\n' does): a vote is read at the "
            "line's end, which could otherwise be found inside a passage"
        )


def _line_spans(
    template: PromptTemplate, text: str, count: int, start: int, query: str | None
) -> list[tuple[int, int]]:
    """Character index of the first and the last character (newline aside) of each of
    ``count`` passage lines of ``text``, a prompt rendered with ``template``, searched from
    ``start`` on; the first is -1 where a line starts with a slot, which has no wording to
    find it by.

    A line is found by its fixed wording (labels included) in order. What fills a
    ``{query}`` slot is skipped as ``query``, the query as the prompt shows it (where
    ``None``, by the wording after it); what fills ``{text}``, by the wording after it. The
    line's closing wording holds a line break (:func:`check_line_end`), which no passage
    text holds, so its end is never found inside one.
    """
    check_line_end(template.passage)
    spans: list[tuple[int, int]] = []
    cursor = start
    for label in template.labels[:count]:
        first = -1
        wording = ""
        for slot, wording in _line_wording(template.passage, label):
            if slot == "query" and query is not None:
                cursor = _find(text, query, cursor, label) + len(query)
            if wording:
                found = _find(text, wording, cursor, label)
                if slot is None:  # the line starts with this wording
                    first = found
                cursor = found + len(wording)
        spans.append((first, cursor - 1 - (len(wording) - len(wording.rstrip("\n")))))
    return spans


def _find(text: str, wording: str, cursor: int, label: str) -> int:
    found = text.find(wording, cursor)
    if found < 0:
        raise ValueError(f"passage [{label}] is not in the prompt as rendered")
    return found


def _line_wording(passage: str, label: str) -> list[tuple[str | None, str]]:
    """The wording of a ``passage`` line for ``label``, cut where text or query go: each
    piece with the slot before it (``None`` for the first)."""
    pieces: list[tuple[str | None, str]] = [(None, "")]
    for literal, name, _, _ in string.Formatter().parse(passage):
        slot, wording = pieces[-1]
        pieces[-1] = (slot, wording + literal + (label if name == "label" else ""))
        if name is not None and name != "label":
            pieces.append((name, ""))
    return pieces
