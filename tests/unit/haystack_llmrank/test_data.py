"""Readers and writers of candidates, rank_llm results, TREC runs and qrels."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haystack_llmrank.data import (
    FLOAT32_MAX,
    Candidate,
    DataFormatError,
    JsonLineError,
    QueryCandidates,
    first_stage_run,
    read_qrels,
    read_queries,
    read_run,
    run_from_rankings,
    strictly_decreasing,
    trec_float,
    write_run,
)
from haystack_llmrank.ranking import Ranking


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def candidates_record(qid: Any = "q1", n: int = 3) -> dict[str, Any]:
    return {
        "qid": qid,
        "query": "what is a flea",
        "candidates": [
            {"docid": f"d{i}", "rank": i + 1, "score": 10.0 - i, "text": f"passage {i}"}
            for i in range(n)
        ],
    }


def rankllm_record(qid: Any = "q1", docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    docs = docs or [{"contents": "first"}, {"contents": "second"}]
    return {
        "query": {"text": "what is a flea", "qid": qid},
        "candidates": [
            {"docid": f"d{i}", "score": 5.0 - i, "doc": doc} for i, doc in enumerate(docs)
        ],
    }


def test_reads_candidates_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [candidates_record(), candidates_record(7, n=2)])
    queries = read_queries(path)
    assert [q.qid for q in queries] == ["q1", "7"]
    assert queries[0].query == "what is a flea"
    assert queries[0].candidates[1] == Candidate("d1", "passage 1", 9.0)
    assert queries[1].texts == ["passage 0", "passage 1"]


def test_jsonl_lines_end_at_line_feeds_only(tmp_path: Path) -> None:
    record = candidates_record()
    record["candidates"][0]["text"] = "one\u2028two\x85three\x0cfour"
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(record, ensure_ascii=False), json.dumps(candidates_record("q2"))]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    queries = read_queries(path)
    assert [q.qid for q in queries] == ["q1", "q2"]
    assert queries[0].candidates[0].text == "one\u2028two\x85three\x0cfour"
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d\u20281 2\r\nq1 0 d2 1\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"qrels.txt:1: expected 4 columns"):
        read_qrels(qrels)  # U+2028 is whitespace inside a line, not a line break
    qrels.write_bytes(b"q1 0 d1 2\rq1 0 d2 1\r")  # old Mac line ends
    assert read_qrels(qrels) == {"q1": {"d1": 2, "d2": 1}}
    path.write_text("\r".join(lines), encoding="utf-8")
    assert [q.qid for q in read_queries(path)] == ["q1", "q2"]


def test_reads_rankllm_json_list_with_text_field_variants(tmp_path: Path) -> None:
    docs = [
        {"contents": "c"},
        {"text": "t", "contents": "ignored"},
        {"segment": "s", "title": "Fleas"},
        {"body": "b", "title": ""},
    ]
    path = tmp_path / "retrieve.json"
    path.write_text(json.dumps([rankllm_record(19335, docs)]), encoding="utf-8")
    (query,) = read_queries(path)
    assert query.qid == "19335"
    assert query.texts == ["c", "t", "Title: Fleas Content: s", "b"]
    assert [c.score for c in query.candidates] == [5.0, 4.0, 3.0, 2.0]


def test_text_and_title_are_found_on_the_candidate_or_under_its_doc(tmp_path: Path) -> None:
    candidates = [
        {"docid": 1, "doc": {"title": "T"}, "text": "top-level text"},
        {"docid": 2, "title": "T", "doc": {"contents": "c"}},
        {"docid": 3, "doc": {"contents": "same", "title": "T"}, "text": "same", "title": "T"},
        {"docid": 4, "doc": {}, "segment": "s"},
    ]
    record = {"qid": 7, "query": "q", "candidates": candidates}
    (query,) = read_queries(write_jsonl(tmp_path / "c.jsonl", [record]))
    assert query.texts == [
        "Title: T Content: top-level text",
        "Title: T Content: c",
        "Title: T Content: same",
        "s",
    ]


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (
            {"doc": {"contents": "c"}, "text": "t"},
            r"two different texts, 'contents' under 'doc' and 'text' on the candidate; give one",
        ),
        (
            {"doc": {"text": "t", "title": "A"}, "title": "B"},
            r"two different titles, 'title' under 'doc' and 'title' on the candidate",
        ),
        ({"doc": {"title": "T"}}, r"no text; expected a string in one of .* under its 'doc'"),
    ],
)
def test_two_different_texts_of_a_candidate_are_refused(
    tmp_path: Path, candidate: dict[str, Any], message: str
) -> None:
    record = {"qid": "q", "query": "x", "candidates": [{"docid": "d", **candidate}]}
    with pytest.raises(DataFormatError, match=rf"c\.jsonl:1 candidate 0 \(d\): {message}"):
        read_queries(write_jsonl(tmp_path / "c.jsonl", [record]))


def test_reads_rankllm_records_one_a_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [rankllm_record("a"), rankllm_record("b")])
    assert [q.qid for q in read_queries(path, "rankllm")] == ["a", "b"]


def test_candidate_without_score_is_kept_with_none(tmp_path: Path) -> None:
    record = {"qid": "q", "query": "x", "candidates": [{"docid": "d", "text": "t"}]}
    (query,) = read_queries(write_jsonl(tmp_path / "c.jsonl", [record]))
    assert query.candidates == (Candidate("d", "t", None),)


def test_top_keeps_the_first_k_candidates() -> None:
    query = QueryCandidates("q", "x", tuple(Candidate(f"d{i}", "t") for i in range(5)))
    assert [c.docid for c in query.top(2).candidates] == ["d0", "d1"]
    assert query.top(9) == query


def test_duplicate_docids_raise_naming_them() -> None:
    candidates = tuple(Candidate(d, "t") for d in ["a", "b", "a", "c", "b"])
    with pytest.raises(DataFormatError, match=r"query q: duplicate docids \['a', 'b'\]"):
        QueryCandidates("q", "x", candidates)


def _bad(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``record`` with the item at the dotted ``path`` replaced (or removed when ``...``)."""
    record = json.loads(json.dumps(record))
    *parents, last = path.split(".")
    target: Any = record
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return record


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("qid", ..., r"c\.jsonl:1: no 'qid' field; expected the candidates format"),
        ("qid", None, r":1: qid must be a string without spaces or an integer, got None"),
        ("qid", True, r"qid must be a string without spaces or an integer, got True"),
        ("qid", "q 1", r"qid must be a string without spaces or an integer, got 'q 1'"),
        ("candidates.0.docid", "", r"candidate 0: docid must be"),
        ("query", ..., r"c\.jsonl:1: no 'query' field; expected the candidates format"),
        ("query", None, r"c\.jsonl:1: the query text must be a non-empty string, got None"),
        ("query", "  ", r"the query text must be a non-empty string"),
        ("query", "\ufeff ", r"the query text must be a non-empty string"),
        ("candidates", ..., r"c\.jsonl:1: no 'candidates' field"),
        ("candidates", {"d": 1}, r"'candidates' must be a list"),
        ("candidates.1", "d1", r"candidate 1: expected an object, got str"),
        ("candidates.1.docid", ..., r"c\.jsonl:1 candidate 1: no 'docid' field"),
        ("candidates.1.docid", None, r"candidate 1: docid must be"),
        ("candidates.1.text", ..., r"candidate 1 \(d1\): no text"),
        ("candidates.1.text", 3, r"candidate 1 \(d1\): no text"),
        ("candidates.1.score", "high", r"candidate 1 \(d1\): score must be a number"),
        ("candidates.1.score", float("nan"), r":1 candidate 1 \(d1\): score nan is not a finite"),
        ("candidates.0.score", float("-inf"), r"candidate 0 \(d0\): score -inf is not a finite"),
        pytest.param(
            "candidates.0.score", 10**400, r"\(d0\): score 1000.* is not a finite", id="huge"
        ),
        ("candidates.1.rank", 5, r"candidate 1 \(d1\): rank 5 does not match its list position 2"),
        ("candidates.0.rank", True, r"candidate 0 \(d0\): rank True does not match"),  # not 1
        ("candidates.2.docid", "d0", r"c\.jsonl:1: query q1: duplicate docids \['d0'\]$"),
    ],
)
def test_malformed_candidates_name_the_record(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    file = write_jsonl(tmp_path / "c.jsonl", [_bad(candidates_record(), path, value)])
    with pytest.raises(DataFormatError, match=message):
        read_queries(file)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("query", "plain text", r"'query' must be an object"),
        ("query.text", ..., r"no 'text' field under 'query'"),
        ("query.text", None, r"the query text must be a non-empty string"),
        ("query.qid", ..., r"no 'qid' field under 'query'"),
        ("query.qid", None, r"qid must be"),
        ("candidates", ..., r"no 'candidates' field"),
        ("candidates.0.doc", "text", r"candidate 0 \(d0\): 'doc' must be an object"),
        ("candidates.0.doc", {"title": "t"}, r"candidate 0 \(d0\): no text"),
    ],
)
def test_malformed_rankllm_records_name_the_record(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    file = tmp_path / "r.json"
    file.write_text(json.dumps([rankllm_record(), _bad(rankllm_record("q2"), path, value)]))
    with pytest.raises(DataFormatError, match=rf"r\.json item 1.*{message}"):
        read_queries(file, "rankllm")


def test_file_level_errors(tmp_path: Path) -> None:
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps(candidates_record()) + "\n{not json\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: invalid JSON"):
        read_queries(bad_line)
    bad_list = tmp_path / "bad.json"
    bad_list.write_text("[{]")
    with pytest.raises(DataFormatError, match="invalid JSON"):
        read_queries(bad_list)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no queries"):
        read_queries(empty)
    scalar = write_jsonl(tmp_path / "scalar.jsonl", [3])
    with pytest.raises(DataFormatError, match=r"scalar\.jsonl:1: expected an object, got int"):
        read_queries(scalar)
    with pytest.raises(ValueError, match="unknown format 'trec'"):
        read_queries(scalar, "trec")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"qid": "1", "qid": "2", "query": "q", "candidates": []}', "repeats the key 'qid'"),
        (
            '{"qid": "1", "query": "q", '
            '"candidates": [{"docid": "d1", "docid": "d2", "text": "a"}]}',
            "repeats the key 'docid'",
        ),
        (
            '{"qid": "1", "query": "q", "candidates": [{"docid": "d\\ud800", "text": "a"}]}',
            r"docid 'd\\ud800' holds a lone surrogate",
        ),
        (
            '{"qid": "1", "query": "q", "candidates": [{"docid": "x\\u0000a", "text": "a"}]}',
            r"docid 'x\\x00a' holds a control character",
        ),
        (
            '{"qid": "1\\u0007", "query": "q", "candidates": []}',
            r"qid '1\\x07' holds a control character",
        ),
        (
            '{"qid": "1", "query": "q\\udc00", "candidates": []}',
            "the query text holds a lone surrogate",
        ),
        (
            '{"qid": "1", "query": "q", "candidates": [{"docid": "d", "text": "\\ud800"}]}',
            r"candidate 0 \(d\): the text holds a lone surrogate",
        ),
    ],
)
def test_what_json_or_trec_eval_would_lose_is_refused_naming_the_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"c\.jsonl:2\b.*{message}"):
        read_queries(path)
    listed = tmp_path / "c.json"
    listed.write_text(f"[{line}]", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        read_queries(listed)


def test_repeated_qid_names_both_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [candidates_record("q"), candidates_record("q")])
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: qid q repeats .*c\.jsonl:1"):
        read_queries(path)


def test_each_query_names_the_record_it_was_read_from(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(f"{json.dumps(candidates_record('a'))}\n\n{json.dumps(candidates_record('b'))}")
    assert [query.where for query in read_queries(path)] == [f"{path}:1", f"{path}:3"]
    items = tmp_path / "r.json"
    items.write_text(json.dumps([rankllm_record("a"), rankllm_record("b")]))
    assert [query.where for query in read_queries(items)] == [f"{items} item 0", f"{items} item 1"]
    first = read_queries(path)[0]
    assert first == QueryCandidates(first.qid, first.query, first.candidates)  # not compared


def test_auto_format_holds_for_the_whole_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [candidates_record(), rankllm_record("q2")])
    with pytest.raises(
        DataFormatError,
        match=r"mixed\.jsonl:2: no 'qid' field; "
        r"expected the candidates format \(detected from the first record\)$",
    ):
        read_queries(path)


def test_forced_format_rejects_the_other_one(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [candidates_record()])
    with pytest.raises(DataFormatError, match=r"'query' must be an object.*the rankllm format$"):
        read_queries(path, "rankllm")


def test_query_without_candidates_is_kept_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"qid": "q", "query": "x", "candidates": []}])
    (query,) = read_queries(path)
    assert query.candidates == ()
    assert "query q has no candidates" in caplog.text


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path: Path) -> None:
    bom = "\ufeff"
    qrels = tmp_path / "qrels.txt"
    qrels.write_text(bom + "1 0 a 2\n1 0 b 0\n", encoding="utf-8")
    assert read_qrels(qrels) == {"1": {"a": 2, "b": 0}}
    run = tmp_path / "run.txt"
    run.write_text(bom + "1 Q0 a 1 2.0 t\n1 Q0 b 2 1.0 t\n", encoding="utf-8")
    assert read_run(run) == {"1": {"a": 2.0, "b": 1.0}}
    lines = tmp_path / "c.jsonl"
    lines.write_text(bom + json.dumps(candidates_record()) + "\n", encoding="utf-8")
    listed = tmp_path / "c.json"
    listed.write_text(bom + json.dumps([candidates_record()]), encoding="utf-8")
    assert read_queries(lines) == read_queries(listed) != []
    broken = tmp_path / "broken.txt"
    broken.write_bytes(bom.encode() + b"1 0 \xff 2\n")
    with pytest.raises(DataFormatError, match=r"not UTF-8 text \(byte 0xff at offset 7\)"):
        read_qrels(broken)


def test_strictly_decreasing_breaks_ties_in_order() -> None:
    assert strictly_decreasing([3.0, 2.5, 2.5, 2.5, 1.0]) == [3.0, 2.5, 2.4999, 2.4998, 1.0]
    assert strictly_decreasing([1.23456789, 1.2345678, -7.0]) == [1.2346, 1.2345, -7.0]
    assert strictly_decreasing([]) == []
    with pytest.raises(ValueError, match="non-finite"):
        strictly_decreasing([1.0, float("nan")])


def as_trec_eval_reads(scores: list[float]) -> list[float]:
    """``scores`` as :func:`write_run` writes them and trec_eval reads them back."""
    return [trec_float(float(f"{score:.4f}")) for score in scores]


@pytest.mark.parametrize("score", [1023.0, 1024.0, 3000.0, -3000.0, 1e8, 2.0**39, 3e38])
def test_strictly_decreasing_separates_ties_as_trec_eval_reads_them(score: float) -> None:
    # from 1024 up, scores 0.0001 apart can be one 32-bit float, and trec_eval reads those
    tied = strictly_decreasing([score] * 4)
    assert all(a > b for a, b in pairwise(as_trec_eval_reads(tied)))
    assert tied[0] == round(score, 4)
    assert all(value <= score for value in tied)


def test_strictly_decreasing_lowers_only_as_far_as_a_32_bit_float_needs() -> None:
    assert strictly_decreasing([3000.0, 3000.0]) == [3000.0, 2999.9997]  # float32 step 2.4e-4
    assert strictly_decreasing([1000.0, 1000.0]) == [1000.0, 999.9999]
    assert strictly_decreasing([3000.0, 2999.9999]) == [3000.0, 2999.9997]
    assert strictly_decreasing([3000.0, 2990.0]) == [3000.0, 2990.0]


@pytest.mark.parametrize("score", [1e39, -1e39, 3.5e38, 1e305])
def test_strictly_decreasing_refuses_scores_beyond_32_bit_floats(score: float) -> None:
    assert trec_float(FLOAT32_MAX) == FLOAT32_MAX
    with pytest.raises(ValueError, match=r"too large for a run: trec_eval reads scores as 32-bit"):
        strictly_decreasing([1.0, score])
    huge = QueryCandidates("q7", "x", (Candidate("a", "t", score),))
    with pytest.raises(DataFormatError, match=r"^query q7: the score .* is too large"):
        first_stage_run([huge])
    with pytest.raises(ValueError, match=r"cannot decrease below -3\.403e\+38"):
        strictly_decreasing([-FLOAT32_MAX, -FLOAT32_MAX])


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=50))
def test_strictly_decreasing_properties(scores: list[float]) -> None:
    out = strictly_decreasing(scores)
    assert len(out) == len(scores)
    assert all(a > b for a, b in pairwise(out))
    assert all(o <= s + 0.5e-4 + 1e-9 for o, s in zip(out, scores, strict=True))
    assert all(f"{o:.4f}" != f"{p:.4f}" for o, p in pairwise(out))
    assert all(a > b for a, b in pairwise(as_trec_eval_reads(out)))


@given(st.lists(st.floats(min_value=-1e38, max_value=1e38), max_size=20))
def test_strictly_decreasing_holds_in_32_bit_floats_at_any_magnitude(scores: list[float]) -> None:
    out = strictly_decreasing(scores)
    assert all(a > b for a, b in pairwise(as_trec_eval_reads(out)))


def test_run_round_trip(tmp_path: Path) -> None:
    run = {"q1": {"d3": 2.5, "d1": 2.4999, "d2": -1.0}, "q2": {"x": 0.0}}
    path = tmp_path / "run.txt"
    write_run(path, run, "mytag")
    assert path.read_text().splitlines() == [
        "q1 Q0 d3 1 2.5000 mytag",
        "q1 Q0 d1 2 2.4999 mytag",
        "q1 Q0 d2 3 -1.0000 mytag",
        "q2 Q0 x 1 0.0000 mytag",
    ]
    assert read_run(path) == run
    assert list(read_run(path)["q1"]) == ["d3", "d1", "d2"]


def test_write_run_refuses_ties_and_spaces(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="query q: run scores must strictly decrease"):
        write_run(tmp_path / "r", {"q": {"a": 1.0, "b": 1.0}}, "t")
    # apart, but one score once written to 4 decimals: trec_eval would reorder them
    with pytest.raises(ValueError, match=r"query q: run scores must strictly decrease .* written"):
        write_run(tmp_path / "r", {"q": {"a": 1.00002, "b": 1.00001}}, "t")
    # apart as written, but one 32-bit float as trec_eval reads them
    with pytest.raises(ValueError, match=r"query q: .* as trec_eval reads them, as 32-bit"):
        write_run(tmp_path / "r", {"q": {"a": 3000.0, "b": 2999.9999}}, "t")
    with pytest.raises(ValueError, match="query q: run scores must be finite"):
        write_run(tmp_path / "r", {"q": {"a": float("nan"), "b": float("nan")}}, "t")
    with pytest.raises(ValueError, match=r"query q: run scores must be finite .* at most 3\.403e"):
        write_run(tmp_path / "r", {"q": {"a": 1e39}}, "t")
    with pytest.raises(ValueError, match=r"query q: a docid 'x\\x00a' holds a control character"):
        write_run(tmp_path / "r", {"q": {"x\x00a": 1.0}}, "t")
    with pytest.raises(ValueError, match=r"a qid 'q\\ud800' holds a lone surrogate"):
        write_run(tmp_path / "r", {"q\ud800": {"a": 1.0}}, "t")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="the run tag in a TREC file must be one word"):
        write_run(tmp_path / "r", {"q": {"a": 1.0}}, "two words")
    with pytest.raises(ValueError, match=r"the run tag .* got ''$"):
        write_run(tmp_path / "r", {"q": {"a": 1.0}}, "")
    with pytest.raises(ValueError, match=r"query q: a docid .* got 'doc 1'$"):
        write_run(tmp_path / "r", {"q": {"doc 1": 1.0}}, "t")
    with pytest.raises(ValueError, match=r"a qid .* got 'q\\t'$"):
        write_run(tmp_path / "r", {"q\t": {"a": 1.0}}, "t")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q Q0 d 1 1.0\n", r"run\.txt:1: expected 6 columns"),
        ("q Q0 d 1 1.0 t\nq Q0 e 2 high t\n", r"run\.txt:2: score 'high' is not a finite number"),
        ("q Q0 d 1 1.0 t\nq Q0 e 2 nan t\n", r"run\.txt:2: score 'nan' is not a finite number"),
        ("q Q0 d 1 inf t\n", r"run\.txt:1: score 'inf' is not a finite number"),
        ("q Q0 d 1 -1e999 t\n", r"run\.txt:1: score '-1e999' is not a finite number"),
        ("q Q0 d 1 1_0 t\n", r"run\.txt:1: score '1_0' is not a finite number"),  # not 10
        ("q Q0 d 1 \uff11\uff12 t\n", r"run\.txt:1: score '\uff11\uff12' is not a finite"),
        ("q Q0 x\x00a 1 1.0 t\n", r"run\.txt:1: 'x\\x00a' holds a control character"),
        ("q Q0 d 1 1.0 t\n\nq Q0 d 2 0.5 t\n", r"run\.txt:3: docid d appears twice for query q"),
        ("\n", "the run is empty"),
    ],
)
def test_malformed_runs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "run.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_run(path)


@pytest.mark.parametrize(("reader", "columns"), [(read_run, 6), (read_qrels, 4)])
def test_a_json_line_in_a_trec_file_is_named_as_json(
    tmp_path: Path, reader: Callable[[Path], Any], columns: int
) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [candidates_record()])
    with pytest.raises(
        JsonLineError,
        match=rf"c\.jsonl:1: expected {columns} columns .*; the line looks like JSON, as in a "
        "candidates file$",
    ):
        reader(path)
    path.write_text("q Q0 d 1 1.0\n")
    with pytest.raises(DataFormatError, match=r"got 5$") as raised:
        reader(path)
    assert not isinstance(raised.value, JsonLineError)


def test_reads_qrels(tmp_path: Path) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text("1 0 a 2\n1 0 b 0\n\n2 Q0 c 3\n")
    assert read_qrels(path) == {"1": {"a": 2, "b": 0}, "2": {"c": 3}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 0 a\n", r"qrels\.txt:1: expected 4 columns"),
        ("1 0 a 2\n1 0 b x\n", r"qrels\.txt:2: grade 'x' is not an integer"),
        ("1 0 a 2\n1 0 a 1\n", r"qrels\.txt:2: docid a is judged twice for query 1"),
        ("1 0 a 1_0\n", r"qrels\.txt:1: grade '1_0' is not an integer"),
        ("1 0 a \u0663\n", r"qrels\.txt:1: grade '\u0663' is not an integer"),
        ("1 0 a 99999999999999999999\n", r"qrels\.txt:1: grade 9+ is out of range"),
        ("1 0 a\x00b 1\n", r"qrels\.txt:1: 'a\\x00b' holds a control character"),
        ("", "the qrels file is empty"),
    ],
)
def test_malformed_qrels(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_qrels(path)


def test_first_stage_run_keeps_list_order() -> None:
    scored = QueryCandidates(
        "q", "x", (Candidate("b", "t", 9.0), Candidate("a", "t", 9.0), Candidate("c", "t", 1.0))
    )
    unscored = QueryCandidates("u", "x", (Candidate("z", "t"), Candidate("y", "t", 4.0)))
    run = first_stage_run([scored, unscored])
    assert run == {"q": {"b": 9.0, "a": 8.9999, "c": 1.0}, "u": {"z": 2.0, "y": 1.0}}


def test_run_from_rankings_maps_order_to_docids() -> None:
    query = QueryCandidates("q", "x", tuple(Candidate(d, "t") for d in ["a", "b", "c"]))
    ranking = Ranking.from_logits([2, 0, 1], [5.0, 6.0, 1.0])
    assert run_from_rankings([query], [ranking]) == {"q": {"c": 5.0, "a": 4.9999, "b": 1.0}}
    with pytest.raises(ValueError, match="1 queries but 0 rankings"):
        run_from_rankings([query], [])
    with pytest.raises(ValueError, match="query q: 2 ranked for 3 candidates"):
        run_from_rankings([query], [Ranking.from_logits([1, 0], [1.0, 0.0])])
