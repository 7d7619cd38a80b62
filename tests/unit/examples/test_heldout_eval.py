"""``examples/heldout_eval.py``: held-out queries, teacher scores and the recorded dtype."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from support import import_example

from haystack_llmrank.data import Candidate, QueryCandidates
from haystack_llmrank.ranking import Ranking

TEXTS = ("Fleas live on cats.", "Roman roads.", "Adult fleas live months.")


def write_inputs(folder: Path, qids: list[str], validation: list[str]) -> dict[str, Path]:
    """Candidates of ``qids`` (docids d0-d2), their qrels, a split holding out
    ``validation``, and a teacher run that scores every candidate but q1's d2."""
    lines, judged, scored = [], [], []
    for qid in qids:
        docs = [{"docid": f"d{i}", "text": text, "score": 3.0 - i} for i, text in enumerate(TEXTS)]
        lines.append(json.dumps({"qid": qid, "query": "flea life", "candidates": docs}))
        judged += [f"{qid} 0 d2 2", f"{qid} 0 d0 1"]
        scored += [f"{qid} Q0 d{i} {i + 1} {1.0 + i} t" for i in range(3) if (qid, i) != ("q1", 2)]
    files = {
        "candidates": folder / "candidates.jsonl",
        "qrels": folder / "qrels.txt",
        "split": folder / "split.json",
        "teacher": folder / "teacher.run",
    }
    files["candidates"].write_text("\n".join(lines) + "\n")
    files["qrels"].write_text("\n".join(judged) + "\n")
    files["split"].write_text(json.dumps({"train": [], "validation": validation}))
    files["teacher"].write_text("\n".join(scored) + "\n")
    return files


def test_every_validation_query_must_be_in_the_candidates(tmp_path: Path) -> None:
    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0", "q1"], ["q0", "q7", "q9"])
    with pytest.raises(ValueError, match=r"2 validation queries of .* are not in .*: q7, q9$"):
        heldout.heldout_queries(files["candidates"], files["split"], 100)
    files["split"].write_text(json.dumps({"train": [], "validation": ["q1"]}))
    [query] = heldout.heldout_queries(files["candidates"], files["split"], 2)
    assert (query.qid, len(query.candidates)) == ("q1", 2)


def test_the_teacher_must_score_every_candidate(tmp_path: Path) -> None:
    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0", "q1", "q2"], ["q0", "q1", "q2"])
    queries = heldout.heldout_queries(files["candidates"], files["split"], 100)
    with pytest.raises(ValueError, match=r"does not score 1 candidates \(query/docid\): q1/d2$"):
        heldout.teacher_scores(queries, files["teacher"])
    scores = heldout.teacher_scores([queries[0], queries[2]], files["teacher"])
    assert scores["q2"] == {"d0": 1.0, "d1": 2.0, "d2": 3.0}


def test_the_report_records_the_dtype_the_model_ran_in(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import haystack_llmrank.backends as backends

    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0", "q2"], ["q0", "q2"])

    def checkpoint_dtype(*args: Any) -> tuple[str, Any]:
        return "cpu", torch.bfloat16  # as CUDA picks a bfloat16 checkpoint's own dtype

    monkeypatch.setattr(backends, "source_device_and_dtype", checkpoint_dtype)
    report = tmp_path / "report.json"
    argv = [
        "heldout_eval.py", "--model", str(tiny_model_dir), "--split", str(files["split"]),
        "--candidates", str(files["candidates"]), "--qrels", str(files["qrels"]),
        "--orders", "bm25", "--json", str(report),
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    heldout.main()
    written = json.loads(report.read_text())
    assert written["dtype"] == "bfloat16"
    assert (written["depth"], written["max_passage_words"]) == (100, 300)
    assert written["resolved_model"]["adapter"] is None
    assert "base/config.json" in written["resolved_model"]["weights"]
    assert written["queries"] == ["q0", "q2"]
    assert written["command"].startswith("python heldout_eval.py --model")
    assert set(written["environment"]["cpu"]) == {"model", "extensions"}


@pytest.mark.parametrize(("backend", "onnx_threads"), [("onnx", 3), ("torch", None)])
def test_threads_reach_onnx_runtime_with_the_onnx_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, onnx_threads: int | None
) -> None:
    # torch's threads are process-wide (set from --threads); ONNX Runtime's are the session's
    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0"], ["q0"])
    loaded: dict[str, Any] = {}

    def from_pretrained(model: str, **options: Any) -> Any:
        loaded.update(options)
        raise InterruptedError("loaded")

    monkeypatch.setattr(heldout.Reranker, "from_pretrained", from_pretrained)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    argv = [
        "heldout_eval.py", "--model", "export", "--backend", backend, "--threads", "3",
        "--split", str(files["split"]), "--candidates", str(files["candidates"]),
        "--qrels", str(files["qrels"]), "--json", str(tmp_path / "report.json"),
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(InterruptedError):
        heldout.main()
    assert (loaded["backend"], loaded.get("threads")) == (backend, onnx_threads)


def test_an_adapter_is_recorded_by_its_folder_and_the_sha256_of_its_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    heldout = import_example("heldout_eval")

    def adapter(name: str, weights: bytes) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        config = {"base_model_name_or_path": str(tiny_model_dir)}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "adapter_model.safetensors").write_bytes(weights)
        return folder

    one = heldout.resolved_model(str(adapter("one", b"weights")), "torch")
    assert one["adapter"] == str(tmp_path / "one")
    digest = f"sha256:{hashlib.sha256(b'weights').hexdigest()}"
    assert one["weights"]["adapter/adapter_model.safetensors"] == digest
    copy = heldout.resolved_model(str(adapter("copy", b"weights")), "torch")
    assert copy["weights"] == one["weights"]  # the same model under another name
    other = heldout.resolved_model(str(adapter("other", b"other weights")), "torch")
    assert other["weights"] != one["weights"]


def shuffled(qid: str, seed: int = 0) -> list[int]:
    """The candidate order ``arrange`` shuffles 12 candidates of ``qid`` into."""
    heldout = import_example("heldout_eval")
    query = QueryCandidates(qid, "flea life", tuple(Candidate(f"d{i}", "t") for i in range(12)))
    return [int(c.docid[1:]) for c in heldout.arrange(query, "shuffled", seed).candidates]


def test_qids_that_share_their_first_8_bytes_are_shuffled_apart() -> None:
    assert shuffled("ict-104861-0") != shuffled("ict-104861-1")
    assert shuffled("ict-104861-0") != shuffled("ict-104861-0", seed=1)


def test_qids_of_at_most_8_bytes_keep_the_recorded_shuffles() -> None:
    # the orders examples/results/ were shuffled in (DL19 qids have at most 7 bytes)
    assert shuffled("1037798") == [2, 1, 4, 8, 10, 6, 7, 3, 0, 11, 9, 5]
    assert shuffled("87452", seed=1) == [5, 0, 10, 7, 9, 3, 11, 2, 4, 6, 1, 8]
    assert shuffled("ict-1048") == [11, 0, 1, 8, 3, 2, 6, 7, 4, 5, 10, 9]


def test_fusion_reads_bm25_scores_in_every_order(tmp_path: Path) -> None:
    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0"], ["q0"])
    [query] = heldout.heldout_queries(files["candidates"], files["split"], 100)
    for order in ("bm25", "reversed", "shuffled"):
        arranged = heldout.arrange(query, order, 0)
        scores = heldout.bm25_scores(arranged)
        assert scores == [c.score for c in arranged.candidates]
    assert heldout.bm25_scores(heldout.arrange(query, "reversed", 0)) == [1.0, 2.0, 3.0]
    unscored = QueryCandidates("q9", "flea life", (Candidate("d0", "Fleas."),))
    with pytest.raises(SystemExit, match="query q9 lacks one"):
        heldout.bm25_scores(unscored)


def test_interpolation_weighs_z_scored_logits_against_z_scored_bm25(tmp_path: Path) -> None:
    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0"], ["q0"])
    [query] = heldout.heldout_queries(files["candidates"], files["split"], 100)
    # BM25 3, 2, 1 z-score to sqrt(1.5), 0, -sqrt(1.5); the logits (0, 3, 6 by candidate) reversed
    ranking = Ranking((2, 1, 0), (6.0, 3.0, 0.0), (6.0, 3.0, 0.0))
    z = 1.5**0.5
    assert heldout.interpolated(query, ranking, 1.0) == pytest.approx({"d0": -z, "d1": 0, "d2": z})
    assert heldout.interpolated(query, ranking, 0.0) == pytest.approx({"d0": z, "d1": 0, "d2": -z})
    mixed = heldout.interpolated(query, ranking, 0.75)
    assert mixed == pytest.approx({"d0": -z / 2, "d1": 0, "d2": z / 2})
    assert list(heldout.zscored([4.0, 4.0])) == [0.0, 0.0]


def test_interpolation_refuses_blank_passages_and_weights_outside_0_to_1(tmp_path: Path) -> None:
    heldout = import_example("heldout_eval")
    files = write_inputs(tmp_path, ["q0"], ["q0"])
    [query] = heldout.heldout_queries(files["candidates"], files["split"], 100)
    blank = Ranking((1, 0, 2), (1.0, 0.0, 0.0), (1.0, 0.0, 0.0), unranked=1, blank=1)
    with pytest.raises(SystemExit, match="query q0 has passages no window showed"):
        heldout.interpolated(query, blank, 0.5)
    assert heldout.unit_weight("0.3") == 0.3
    for text in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(argparse.ArgumentTypeError, match="from 0 to 1"):
            heldout.unit_weight(text)
