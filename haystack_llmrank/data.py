"""Evaluation files: query candidates (JSONL or rank_llm JSON), TREC runs and qrels.

A run is ``{qid: {docid: score}}`` with each query's documents in rank order. trec_eval
ranks a run by score, read as a 32-bit float (:func:`trec_float`), and breaks ties by docid,
so every run written here has scores that strictly decrease down each query's list as
trec_eval reads them (see :func:`strictly_decreasing`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from haystack_llmrank.blank_passages import is_blank
from haystack_llmrank.errors import LlmRankError
from haystack_llmrank.ranking import Ranking

logger = logging.getLogger(__name__)

FORMATS = ("auto", "candidates", "rankllm")
TEXT_FIELDS = ("text", "contents", "content", "segment", "body", "passage")
"""Fields that may hold a candidate's text, in the order they are looked up."""
RUN_DECIMALS = 4
"""Decimals of the score column of written runs."""

_LINE_END = re.compile(r"\r\n|\r|\n")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
"""Numbers as trec_eval reads them: ASCII digits (no ``1_0``, no other scripts' digits)."""
GRADE_RANGE = (-(2**31), 2**31 - 1)
"""The grades trec_eval holds: a 32-bit C long (relevance levels: from 1 to its top)."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude of a run score trec_eval holds (a 32-bit C float), about 3.4e38."""
_FLOAT32 = struct.Struct("f")

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


class DataFormatError(LlmRankError, ValueError):
    """An input file does not have the expected format; the message names the record."""


class JsonLineError(DataFormatError):
    """A line of a TREC run or qrels file looks like JSON, as a candidates file's do."""


@dataclass(frozen=True)
class Candidate:
    """One first-stage hit: its id, its text and its first-stage score (if the file has one)."""

    docid: str
    text: str
    score: float | None = None


@dataclass(frozen=True)
class QueryCandidates:
    """A query and its first-stage candidates, in first-stage order; ``where`` names the
    record it was read from, for messages (empty when it was not read from a file)."""

    qid: str
    query: str
    candidates: tuple[Candidate, ...]
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        counts = Counter(c.docid for c in self.candidates)
        duplicates = sorted(docid for docid, count in counts.items() if count > 1)
        if duplicates:
            raise DataFormatError(f"query {self.qid}: duplicate docids {duplicates}")

    @property
    def texts(self) -> list[str]:
        """The candidates' texts, in order."""
        return [c.text for c in self.candidates]

    def top(self, k: int) -> QueryCandidates:
        """The same query with only its first ``k`` candidates."""
        return replace(self, candidates=self.candidates[:k])


def read_utf8(path: Path) -> str:
    """The text of ``path``, a byte order mark left out; a file that is not UTF-8 raises
    :class:`DataFormatError` naming it."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = len(data) - len(exc.object) + exc.start  # the codec saw no byte order mark
        raise DataFormatError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {offset})"
        ) from None


def finite_float(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _finite_score(value: str | float, where: str) -> float:
    """``value`` as a float; :class:`DataFormatError` naming ``where`` unless it is a finite
    number."""
    score = finite_float(value)
    if score is None:
        raise DataFormatError(f"{where}: score {value!r} is not a finite number")
    return score


def _lines(text: str) -> list[str]:
    """``text`` cut at line ends: ``\\r\\n``, ``\\n`` or ``\\r``, and not at the other
    breaks that ``str.splitlines`` cuts at (U+2028, U+0085...), which JSON strings may hold."""
    return _LINE_END.split(text)


class RepeatedKeyError(ValueError):
    """An object of the JSON names one key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's pairs as a dict; :class:`RepeatedKeyError` where a key repeats, which
    ``json`` would resolve silently by keeping the last value (``object_pairs_hook`` of
    ``json.loads``)."""
    counts = Counter(key for key, _ in pairs)
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        raise RepeatedKeyError(f"an object repeats the key {repeated[0]!r}")
    return dict(pairs)


def _json(text: str, where: str) -> Any:
    """``text`` parsed; :class:`DataFormatError` naming ``where`` if it is not valid JSON or
    an object repeats a key."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except RepeatedKeyError as exc:
        raise DataFormatError(f"{where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{where}: invalid JSON: {exc}") from exc


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)``: the items of a JSON list, or the lines of a JSONL file."""
    text = read_utf8(path)
    if text.lstrip().startswith("["):
        for i, item in enumerate(_json(text, str(path))):
            yield f"{path} item {i}", item
        return
    for number, line in enumerate(_lines(text), start=1):
        if line.strip():
            yield f"{path}:{number}", _json(line, f"{path}:{number}")


def unwritable(text: str) -> str | None:
    """Why ``text`` cannot be an identifier in a TREC file or reach trec_eval intact (a control
    character, at which pytrec_eval cuts it; a lone surrogate, which no file can hold), or
    ``None``."""
    if any(char < " " or char == "\x7f" for char in text):
        return "holds a control character"
    if not _encodes(text):
        return "holds a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _identifier(value: Any, what: str, where: str) -> str:
    if (
        isinstance(value, bool)
        or not isinstance(value, str | int)
        or str(value).split() != [str(value)]
    ):
        raise DataFormatError(
            f"{where}: {what} must be a string without spaces or an integer, got {value!r}"
        )
    problem = unwritable(str(value))
    if problem is not None:
        raise DataFormatError(f"{where}: {what} {value!r} {problem}")
    return str(value)


def _text(value: str, what: str, where: str) -> str:
    """``value``, unless it holds a lone surrogate, which no tokenizer or file takes."""
    if not _encodes(value):
        raise DataFormatError(f"{where}: {what} holds a lone surrogate (an unpaired escape)")
    return value


def _field(record: dict[str, Any], name: str, where: str, *, under: str = "") -> Any:
    """``record[name]``; :class:`DataFormatError` naming the field (and the object ``under``
    which it belongs, if any) and ``where`` if the record lacks it."""
    if name not in record:
        place = f" under {under!r}" if under else ""
        raise DataFormatError(f"{where}: no {name!r} field{place}")
    return record[name]


def _query_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or is_blank(value):
        raise DataFormatError(f"{where}: the query text must be a non-empty string, got {value!r}")
    return _text(value, "the query text", where)


def _looked_up(
    places: Sequence[tuple[str, dict[str, Any]]], fields: Sequence[str], what: str, where: str
) -> Any:
    """The value of the first of ``fields`` each of ``places`` (a label, an object) has: one
    where they agree, ``None`` where none has one; :class:`DataFormatError` naming both
    where two differ."""
    found: list[tuple[str, Any]] = []
    for label, place in places:
        name = next((f for f in fields if f in place), None)
        if name is not None:
            found.append((f"{name!r} {label}", place[name]))
    if any(value != found[0][1] for _, value in found[1:]):
        named = " and ".join(name for name, _ in found)
        raise DataFormatError(f"{where}: two different {what}s, {named}; give one")
    return found[0][1] if found else None


def _candidate(item: Any, position: int, where: str) -> Candidate:
    """One candidate: ``text`` (or another of :data:`TEXT_FIELDS`) on it or under ``doc``.

    Each of the text and ``title`` is looked up under ``doc`` and on the candidate: found in
    both, the two must be equal. A non-empty ``title`` is prepended as
    ``"Title: {title} Content: {text}"`` (rank_llm's convention). A ``score``, if present,
    must be a finite number, and a ``rank`` the 1-based list position.
    """
    where = f"{where} candidate {position}"
    if not isinstance(item, dict):
        raise DataFormatError(f"{where}: expected an object, got {type(item).__name__}")
    docid = _identifier(_field(item, "docid", where), "docid", where)
    where = f"{where} ({docid})"
    doc = item.get("doc", {})
    if not isinstance(doc, dict):
        raise DataFormatError(f"{where}: 'doc' must be an object")
    places = [("under 'doc'", doc), ("on the candidate", item)]
    text = _looked_up(places, TEXT_FIELDS, "text", where)
    if not isinstance(text, str):
        raise DataFormatError(
            f"{where}: no text; expected a string in one of {TEXT_FIELDS}, on the candidate "
            "or under its 'doc'"
        )
    text = _text(text, "the text", where)
    title = _looked_up(places, ("title",), "title", where)
    if title:
        text = f"Title: {_text(str(title), 'the title', where)} Content: {text}"
    score = item.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise DataFormatError(f"{where}: score must be a number, got {score!r}")
    value = None if score is None else _finite_score(score, where)
    rank = item.get("rank")
    if rank is not None and (isinstance(rank, bool) or rank != position + 1):
        raise DataFormatError(
            f"{where}: rank {rank!r} does not match its list position {position + 1}"
        )
    return Candidate(docid, text, value)


QueryFields = tuple[str, str, tuple[Candidate, ...]]
"""A parsed record: qid, query text, candidates."""


def _candidate_list(value: Any, where: str) -> tuple[Candidate, ...]:
    if not isinstance(value, list):
        raise DataFormatError(f"{where}: 'candidates' must be a list")
    return tuple(_candidate(item, i, where) for i, item in enumerate(value))


def _from_candidates_record(record: dict[str, Any], where: str) -> QueryFields:
    """``{"qid", "query", "candidates": [{"docid", "rank", "score", "text"}, ...]}``."""
    return (
        _identifier(_field(record, "qid", where), "qid", where),
        _query_text(_field(record, "query", where), where),
        _candidate_list(_field(record, "candidates", where), where),
    )


def _from_rankllm_record(record: dict[str, Any], where: str) -> QueryFields:
    """``{"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc": {...}}, ...]}``."""
    query = record.get("query")
    if not isinstance(query, dict):
        raise DataFormatError(f"{where}: 'query' must be an object with 'text' and 'qid'")
    return (
        _identifier(_field(query, "qid", where, under="query"), "qid", where),
        _query_text(_field(query, "text", where, under="query"), where),
        _candidate_list(_field(record, "candidates", where), where),
    )


_PARSERS = {"candidates": _from_candidates_record, "rankllm": _from_rankllm_record}


def _detect(record: dict[str, Any]) -> str:
    return "rankllm" if isinstance(record.get("query"), dict) else "candidates"


def read_queries(path: str | Path, format: str = "auto") -> list[QueryCandidates]:
    """Read queries with candidates from a candidates JSONL or a rank_llm retrieve-results file.

    Both formats may be a JSON list or one record a line. ``format="auto"`` takes the format
    of the first record (``"query"`` an object: rank_llm) for the whole file. A record that
    does not fit, a duplicate docid within a query or a repeated qid raises
    :class:`DataFormatError` naming the record.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
    path = Path(path)
    queries: list[QueryCandidates] = []
    where_of: dict[str, str] = {}
    detected = ""
    for where, record in _records(path):
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: expected an object, got {type(record).__name__}")
        if format == "auto":
            format, detected = _detect(record), " (detected from the first record)"
            logger.info("%s: reading the %s format", path, format)
        try:
            fields = _PARSERS[format](record, where)
        except DataFormatError as exc:
            raise DataFormatError(f"{exc}; expected the {format} format{detected}") from None
        try:
            query = QueryCandidates(*fields, where=where)
        except DataFormatError as exc:
            raise DataFormatError(f"{where}: {exc}") from None
        if query.qid in where_of:
            raise DataFormatError(f"{where}: qid {query.qid} repeats {where_of[query.qid]}")
        where_of[query.qid] = where
        if not query.candidates:
            logger.warning("%s: query %s has no candidates", where, query.qid)
        queries.append(query)
    if not queries:
        raise DataFormatError(f"{path}: no queries")
    return queries


def trec_float(score: float) -> float:
    """``score`` as trec_eval holds a run score: rounded to a 32-bit C float, and infinite
    beyond its range (:data:`FLOAT32_MAX`)."""
    try:
        held: float = _FLOAT32.unpack(_FLOAT32.pack(score))[0]
    except OverflowError:  # where the platform's packing refuses what C rounds to infinity
        return math.copysign(math.inf, score)
    return held


def strictly_decreasing(scores: Sequence[float]) -> list[float]:
    """Scores rounded to :data:`RUN_DECIMALS` decimals (as :func:`write_run` writes them), each
    lowered where needed to stay below the one above as trec_eval reads them
    (:func:`trec_float`).

    A score is lowered to one unit (0.0001) below the score above it or, where that still
    reads as the same 32-bit float (from about 1024 in magnitude up), to the largest number
    of those decimals below the next 32-bit float down. The result strictly decreases as
    trec_eval reads it, so trec_eval keeps the given order, and it equals the rounded input
    wherever that already strictly decreases so. A score that is not finite or is beyond
    :data:`FLOAT32_MAX` in magnitude, or one that would have to go below ``-FLOAT32_MAX``,
    raises ``ValueError``.
    """
    unit = 10**RUN_DECIMALS
    units: list[int] = []
    above = math.inf  # the score above, as trec_eval reads it
    for score in scores:
        if not math.isfinite(score):
            raise ValueError(f"cannot write a non-finite score ({score}) to a run")
        if math.isinf(trec_float(score)):
            raise ValueError(
                f"the score {score:g} is too large for a run: trec_eval reads scores as "
                f"32-bit floats, at most {FLOAT32_MAX:.4g} in magnitude"
            )
        value = round(score * unit)
        if units:
            value = min(value, units[-1] - 1)
        if trec_float(value / unit) >= above:
            if above == -FLOAT32_MAX:
                raise ValueError(
                    f"the scores cannot decrease below {-FLOAT32_MAX:.4g}, the lowest 32-bit "
                    "float, which trec_eval reads them as"
                )
            below = float(np.nextafter(np.float32(above), np.float32(-math.inf)))
            value = math.floor(below * unit)  # exact: a float32 times 10**4 fits a double
        units.append(value)
        above = trec_float(value / unit)
    return [u / unit for u in units]


def first_stage_run(queries: Sequence[QueryCandidates]) -> Run:
    """The candidates' own order as a run.

    Scores are the first-stage scores made strictly decreasing; a query with any candidate
    lacking a score gets ``n, n-1, ..., 1`` instead. A score :func:`strictly_decreasing`
    cannot write raises :class:`DataFormatError` naming the query.
    """
    run: Run = {}
    for query in queries:
        given = [c.score for c in query.candidates]
        if any(s is None for s in given):
            values = [float(len(given) - r) for r in range(len(given))]
        else:
            values = [s for s in given if s is not None]
        try:
            scores = strictly_decreasing(values)
        except ValueError as exc:
            raise DataFormatError(f"query {query.qid}: {exc}") from None
        docids = [c.docid for c in query.candidates]
        run[query.qid] = dict(zip(docids, scores, strict=True))
    return run


def check_word(value: str, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` can be one column of a TREC file."""
    if value.split() != [value]:
        raise ValueError(f"{what} in a TREC file must be one word without spaces, got {value!r}")
    problem = unwritable(value)
    if problem is not None:
        raise ValueError(f"{what} {value!r} {problem}")


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
    """Write ``qid Q0 docid rank score tag`` lines, documents in the run's order.

    Each query's scores must strictly decrease as written and as trec_eval reads them (use
    :func:`strictly_decreasing`), else trec_eval would reorder them.
    """
    check_word(tag, "the run tag")
    lines: list[str] = []
    for qid, docs in run.items():
        check_word(qid, "a qid")
        for docid in docs:
            check_word(docid, f"query {qid}: a docid")
        written = [f"{score:.{RUN_DECIMALS}f}" for score in docs.values()]
        held = [trec_float(float(text)) for text in written]
        if not all(map(math.isfinite, held)):
            raise ValueError(
                f"query {qid}: run scores must be finite numbers that trec_eval holds, at most "
                f"{FLOAT32_MAX:.4g} in magnitude"
            )
        if any(a <= b for a, b in pairwise(held)):
            raise ValueError(
                f"query {qid}: run scores must strictly decrease down the list as written, "
                f"to {RUN_DECIMALS} decimals, and as trec_eval reads them, as 32-bit floats "
                "(see strictly_decreasing)"
            )
        for rank, (docid, text) in enumerate(zip(docs, written, strict=True), start=1):
            lines.append(f"{qid} Q0 {docid} {rank} {text} {tag}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def _rows(path: Path, columns: int, layout: str) -> Iterator[tuple[str, list[str]]]:
    for number, line in enumerate(_lines(read_utf8(path)), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            mismatch = f"{path}:{number}: expected {columns} columns ({layout}), got {len(fields)}"
            if fields[0].startswith(("{", "[")):
                raise JsonLineError(
                    f"{mismatch}; the line looks like JSON, as in a candidates file"
                )
            raise DataFormatError(mismatch)
        for word in fields:
            problem = unwritable(word)
            if problem is not None:
                raise DataFormatError(f"{path}:{number}: {word!r} {problem}")
        yield f"{path}:{number}", fields


def read_run(path: str | Path) -> Run:
    """Read a TREC run (``qid Q0 docid rank score tag``); the rank column is not used, and
    every score must be a finite number."""
    path = Path(path)
    run: Run = {}
    for where, (qid, _, docid, _, score, _) in _rows(path, 6, "qid Q0 docid rank score tag"):
        if not _NUMBER.fullmatch(score):
            raise DataFormatError(f"{where}: score {score!r} is not a finite number")
        value = _finite_score(score, where)
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataFormatError(f"{where}: docid {docid} appears twice for query {qid}")
        docs[docid] = value
    if not run:
        raise DataFormatError(f"{path}: the run is empty")
    return run


def read_qrels(path: str | Path) -> Qrels:
    """Read TREC qrels (``qid iteration docid grade``)."""
    path = Path(path)
    qrels: Qrels = {}
    for where, (qid, _, docid, grade) in _rows(path, 4, "qid iteration docid grade"):
        if not _INTEGER.fullmatch(grade):
            raise DataFormatError(f"{where}: grade {grade!r} is not an integer")
        value = int(grade)
        if not GRADE_RANGE[0] <= value <= GRADE_RANGE[1]:
            raise DataFormatError(
                f"{where}: grade {grade} is out of range ({GRADE_RANGE[0]} to {GRADE_RANGE[1]})"
            )
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise DataFormatError(f"{where}: docid {docid} is judged twice for query {qid}")
        judged[docid] = value
    if not qrels:
        raise DataFormatError(f"{path}: the qrels file is empty")
    return qrels


def run_from_rankings(queries: Sequence[QueryCandidates], rankings: Sequence[Ranking]) -> Run:
    """A run of reranked queries: each ranking's order, its scores made strictly decreasing."""
    if len(queries) != len(rankings):
        raise ValueError(f"{len(queries)} queries but {len(rankings)} rankings")
    run: Run = {}
    for query, ranking in zip(queries, rankings, strict=True):
        if len(ranking) != len(query.candidates):
            raise ValueError(
                f"query {query.qid}: {len(ranking)} ranked for {len(query.candidates)} candidates"
            )
        docids = [query.candidates[i].docid for i in ranking.order]
        run[query.qid] = dict(zip(docids, strictly_decreasing(ranking.scores), strict=True))
    return run
