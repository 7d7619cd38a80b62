"""The Haystack component: conventions, serialisation, pipelines, edge cases."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import math
import pickle
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
from haystack import Document, Pipeline
from haystack.components.joiners import DocumentJoiner
from haystack.core.errors import DeserializationError
from haystack.dataclasses import ByteStream, SparseEmbedding
from haystack.utils import ComponentDevice

from haystack_llmrank import FirstListwiseRanker
from haystack_llmrank.errors import ClosedError, WindowTooLargeError
from haystack_llmrank.prompt import FIRST_NUMERIC_TEMPLATE
from haystack_llmrank.ranking import Ranking
from haystack_llmrank.reranker import Reranker
from haystack_llmrank.strategies import SlidingWindow

QUERY = "which animals are mammals"


def docs(n: int) -> list[Document]:
    return [
        Document(id=f"d{i}", content=f"passage number {i} about animal {i % 5}", score=float(i))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def ranker(tiny_model_dir: Path) -> FirstListwiseRanker:
    component = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu")
    component.warm_up()
    return component


def test_run_ranks_all_documents_without_mutating_input(
    ranker: FirstListwiseRanker, tiny_reranker: Reranker
) -> None:
    inputs = docs(25)
    before = copy.deepcopy(inputs)
    out = ranker.run(query=QUERY, documents=inputs)["documents"]
    assert inputs == before
    expected = tiny_reranker.rerank(QUERY, [d.content for d in inputs])
    assert [d.id for d in out] == [f"d{i}" for i in expected.order]
    assert [d.score for d in out] == expected.distinct_scores()
    assert all(a.score > b.score for a, b in itertools.pairwise(out))
    assert all(o is not i for o in out for i in inputs)


def test_top_k_and_threshold(ranker: FirstListwiseRanker) -> None:
    full = ranker.run(query=QUERY, documents=docs(12))["documents"]
    assert ranker.run(query=QUERY, documents=docs(12), top_k=3)["documents"] == full[:3]
    threshold = full[4].score
    thresholded = FirstListwiseRanker(model=ranker.model, score_threshold=threshold)
    thresholded._reranker = ranker._reranker
    kept = thresholded.run(query=QUERY, documents=docs(12))["documents"]
    assert kept == [d for d in full if d.score >= threshold]
    with pytest.raises(ValueError, match="top_k"):
        ranker.run(query=QUERY, documents=docs(3), top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        FirstListwiseRanker(top_k=0)
    # a run's score_threshold overrides the init one, as in Haystack's rankers
    assert (
        thresholded.run(query=QUERY, documents=docs(12), score_threshold=full[1].score)["documents"]
        == full[:2]
    )
    assert (
        ranker.run(query=QUERY, documents=docs(12), score_threshold=threshold)["documents"] == kept
    )
    assert asyncio.run(
        ranker.run_async(query=QUERY, documents=docs(12), score_threshold=threshold)
    ) == {"documents": kept}
    for bad in ("0.5", float("nan"), True, [1.0]):
        with pytest.raises(ValueError, match="score_threshold must be"):
            FirstListwiseRanker(score_threshold=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="score_threshold must be"):
            ranker.run(query=QUERY, documents=docs(3), score_threshold=bad)  # type: ignore[arg-type]


def test_duplicates_keep_highest_scored_copy(ranker: FirstListwiseRanker) -> None:
    inputs = [
        Document(id="a", content="alpha", score=1.0, meta={"copy": "low"}),
        Document(id="b", content="beta", score=0.5),
        Document(id="a", content="alpha", score=3.0, meta={"copy": "high"}),
    ]
    out = ranker.run(query=QUERY, documents=inputs)["documents"]
    assert sorted(d.id for d in out) == ["a", "b"]
    assert [d.meta for d in out if d.id == "a"] == [{"copy": "high"}]


def test_documents_without_text_follow_unscored(ranker: FirstListwiseRanker) -> None:
    inputs = [
        Document(id="x", content=None),
        *docs(3),
        Document(id="y", content="   "),
        Document(id="z", content="\ufeff&nbsp;"),  # shows nothing in a prompt either
    ]
    out = ranker.run(query=QUERY, documents=inputs)["documents"]
    assert [(d.id, d.score) for d in out[-3:]] == [("x", None), ("y", None), ("z", None)]
    assert sorted(d.id for d in out[:3]) == ["d0", "d1", "d2"]


def test_fusion_counts_text_less_documents_in_the_input_order(tiny_model_dir: Path) -> None:
    fused = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu", fusion_k=60)
    fused.warm_up()
    engine = fused._reranker
    assert engine is not None
    inputs = [Document(id="x", content=None), *docs(6)]
    out = fused.run(query=QUERY, documents=inputs)["documents"]
    texts = ["", *(d.content or "" for d in docs(6))]
    expected = engine.rerank(QUERY, texts)
    assert [d.id for d in out] == [inputs[i].id for i in expected.order]
    assert [d.score for d in out[:-1]] == expected.distinct_scores()[:-1]  # input index 1..6
    assert (out[-1].id, out[-1].score) == ("x", None)


def test_fusion_reads_the_documents_scores_in_any_input_order(tiny_model_dir: Path) -> None:
    fused = FirstListwiseRanker(
        model=str(tiny_model_dir),
        device="cpu",
        fusion_k=60,
        strategy="disjoint",
        order_invariant=True,
    )
    inputs = docs(7)  # scored 0..6: the first stage put the last one first
    out = fused.run(query=QUERY, documents=inputs)["documents"]
    engine = fused._reranker
    assert engine is not None
    texts = [d.content or "" for d in inputs]
    expected = engine.rerank(QUERY, texts, first_stage_scores=[d.score or 0.0 for d in inputs])
    assert [d.id for d in out] == [inputs[i].id for i in expected.order]
    assert expected != engine.rerank(QUERY, texts), "not fused with the input order"
    for order in (inputs[::-1], [inputs[i] for i in (3, 0, 6, 1, 5, 2, 4)]):
        again = fused.run(query=QUERY, documents=order)["documents"]
        assert [(d.id, d.score) for d in again] == [(d.id, d.score) for d in out]


def test_fusion_without_every_score_reads_the_input_order(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fused = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu", fusion_k=60)
    inputs = [*docs(5), Document(id="n", content="a passage with no score")]
    out = fused.run(query=QUERY, documents=inputs)["documents"]
    assert "1 of 6 document(s) have no score" in caplog.text
    engine = fused._reranker
    assert engine is not None
    expected = engine.rerank(QUERY, [d.content or "" for d in inputs])
    assert [d.id for d in out] == [inputs[i].id for i in expected.order]


def test_auto_fusion_leaves_a_model_that_recommends_none_alone(
    ranker: FirstListwiseRanker,
) -> None:
    assert ranker.fusion_k == "auto"
    engine = ranker._reranker
    assert engine is not None
    assert engine.fusion_k is None
    inputs = [*docs(5), Document(id="nan", content="a passage scored nan", score=math.nan)]
    out = ranker.run(query=QUERY, documents=inputs)["documents"]
    expected = engine.rerank(QUERY, [d.content or "" for d in inputs])
    assert [d.id for d in out] == [inputs[i].id for i in expected.order], "scores unread"


def test_documents_all_without_text_need_no_model() -> None:
    ranker = FirstListwiseRanker(model="no/such-model")
    inputs = [Document(id="x", content=None), Document(id="y", content="   ")]
    out = ranker.run(query=QUERY, documents=inputs)["documents"]
    assert [(d.id, d.score) for d in out] == [("x", None), ("y", None)]


def test_empty_query_and_no_documents(ranker: FirstListwiseRanker) -> None:
    assert ranker.run(query=QUERY, documents=[]) == {"documents": []}
    inputs = docs(4)
    out = ranker.run(query="  ", documents=inputs)["documents"]
    assert [d.id for d in out] == [d.id for d in inputs]
    assert all(d.score is None for d in out)
    assert all(o is not i for o, i in zip(out, inputs, strict=True))
    assert [d.score for d in inputs] == [0.0, 1.0, 2.0, 3.0]
    assert [d.id for d in ranker.run(query="", documents=inputs, top_k=2)["documents"]] == [
        "d0",
        "d1",
    ]
    thresholded = FirstListwiseRanker(model=ranker.model, score_threshold=-1e9)
    assert thresholded.run(query="", documents=inputs)["documents"] == []
    with pytest.raises(TypeError):
        ranker.run(query=None, documents=inputs)  # type: ignore[arg-type]


def test_tied_engine_scores_come_out_strictly_decreasing(ranker: FirstListwiseRanker) -> None:
    capped = Ranking.from_logits([2, 0, 1, 3], [5.0, 7.0, 5.0, -1.0])
    assert capped.scores == (5.0, 5.0, 5.0, -1.0)
    distinct = capped.distinct_scores()
    assert distinct[0] == 5.0
    assert distinct[3] == -1.0
    assert all(a > b for a, b in itertools.pairwise(distinct))
    assert all(np.float32(v) == v for v in distinct)  # steps survive float32
    out = ranker.run(query=QUERY, documents=docs(25))["documents"]
    assert all(a.score > b.score for a, b in itertools.pairwise(out))


def test_meta_fields_are_embedded(ranker: FirstListwiseRanker) -> None:
    embedding = FirstListwiseRanker(
        model=ranker.model, meta_fields_to_embed=["title"], embedding_separator=" | "
    )
    assert embedding._text(Document(content="body", meta={"title": "T"})) == "T | body"
    assert embedding._text(Document(content=None, meta={"title": "T"})) == "T |"
    assert embedding._text(Document(content="body", meta={})) == "body"
    # blank values are left out, as Haystack's rankers leave out empty ones
    for blank in ("", "  ", None):
        assert embedding._text(Document(content="body", meta={"title": blank})) == "body"
    assert embedding._text(Document(content="body", meta={"title": 0})) == "0 | body"
    with pytest.raises(TypeError, match=r"not one string: \['title'\]"):
        FirstListwiseRanker(meta_fields_to_embed="title")  # type: ignore[arg-type]
    engine = Mock(spec=Reranker, wraps=ranker._reranker)
    engine.fusion_k = None  # an instance attribute, which the spec does not list
    embedding._reranker = engine
    documents = [
        Document(id="a", content="body", meta={"title": "T"}),
        Document(id="b", content="other", meta={}),
    ]
    out = embedding.run(query=QUERY, documents=documents)["documents"]
    engine.rerank.assert_called_once_with(
        QUERY, ["T | body", "other"], top_k=None, first_stage_scores=None
    )
    assert sorted((d.content, d.meta.get("title")) for d in out) == [
        ("body", "T"),
        ("other", None),
    ], "the output keeps the content and meta apart, as given"


def test_run_async_equals_run(ranker: FirstListwiseRanker) -> None:
    inputs = docs(15)
    assert asyncio.run(ranker.run_async(query=QUERY, documents=inputs)) == ranker.run(
        query=QUERY, documents=inputs
    )


def test_concurrent_run_async_calls_leave_the_default_executor_free(
    ranker: FirstListwiseRanker,
) -> None:
    release = threading.Event()
    threads: set[str] = set()

    class Held:
        fusion_k = None

        def rerank(
            self, query: str, texts: list[str], top_k: int | None = None, **_: object
        ) -> Ranking:
            threads.add(threading.current_thread().name)
            release.wait(10)
            return Ranking.from_logits(list(range(len(texts))), [0.0] * len(texts))

    held = FirstListwiseRanker(model=ranker.model)
    held._reranker = Held()  # type: ignore[assignment]

    async def main() -> None:
        calls = [
            asyncio.create_task(held.run_async(query=QUERY, documents=docs(3))) for _ in range(40)
        ]
        await asyncio.sleep(0.1)
        # more calls than the default executor has threads, and it still answers
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
        release.set()
        assert all(len(out["documents"]) == 3 for out in await asyncio.gather(*calls))

    asyncio.run(main())
    assert len(threads) == 1


def test_warm_up_is_idempotent_and_lazy(
    monkeypatch: pytest.MonkeyPatch, tiny_reranker: Reranker
) -> None:
    calls: list[str] = []

    def fake_load(*args: Any, **kwargs: Any) -> Reranker:
        calls.append(args[0])
        return tiny_reranker

    monkeypatch.setattr(Reranker, "from_pretrained", staticmethod(fake_load))
    component = FirstListwiseRanker(model="some/model")
    assert calls == []
    component.warm_up()
    component.warm_up()
    component.run(query=QUERY, documents=docs(2))
    assert calls == ["some/model"]


def test_close_lets_go_of_the_model_and_a_run_loads_it_again(
    monkeypatch: pytest.MonkeyPatch, tiny_reranker: Reranker
) -> None:
    loaded: list[Reranker] = []

    def fake_load(*args: Any, **kwargs: Any) -> Reranker:
        loaded.append(tiny_reranker.replace())
        return loaded[-1]

    monkeypatch.setattr(Reranker, "from_pretrained", staticmethod(fake_load))
    closed: list[Reranker] = []
    monkeypatch.setattr(Reranker, "close", lambda self: closed.append(self))
    component = FirstListwiseRanker(model="some/model")
    component.close()  # cold: nothing to close
    assert closed == []
    component.warm_up()
    component.close()
    assert closed == loaded
    assert component._reranker is None
    assert len(component.run(query=QUERY, documents=docs(3))["documents"]) == 3
    assert len(loaded) == 2

    async def main() -> list[str]:
        threads: list[str] = []
        monkeypatch.setattr(
            Reranker, "close", lambda self: threads.append(threading.current_thread().name)
        )
        await component.close_async()
        await component.warm_up_async()
        assert component._reranker is loaded[-1]
        out = await component.run_async(query=QUERY, documents=docs(3))
        assert len(out["documents"]) == 3
        return threads

    threads = asyncio.run(main())
    assert len(loaded) == 3
    assert len(threads) == 1
    assert threads[0].startswith("llmrank-ranker")


def test_close_racing_with_runs_never_breaks_one(
    monkeypatch: pytest.MonkeyPatch, tiny_reranker: Reranker
) -> None:
    monkeypatch.setattr(Reranker, "from_pretrained", lambda *a, **kw: tiny_reranker.replace())
    monkeypatch.setattr(Reranker, "close", lambda self: None)  # the scorer is shared
    component = FirstListwiseRanker(model="some/model")
    errors: list[BaseException] = []
    done = threading.Event()

    def runs() -> None:
        for _ in range(40):
            try:
                assert len(component.run(query=QUERY, documents=docs(2))["documents"]) == 2
            except BaseException as error:
                errors.append(error)

    def closes() -> None:
        while not done.is_set():
            component.close()

    closer = threading.Thread(target=closes)
    workers = [threading.Thread(target=runs) for _ in range(3)]
    closer.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    closer.join()
    assert errors == []

    async def main(pause: bool) -> list[dict[str, list[Document]]]:
        calls = [component.run_async(query=QUERY, documents=docs(3)) for _ in range(6)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        if pause:
            await asyncio.sleep(0)  # every run_async has queued its ranking
        await component.close_async()
        return await asyncio.gather(*tasks)

    for pause in (True, False):
        assert all(len(out["documents"]) == 3 for out in asyncio.run(main(pause)))

    async def async_runs() -> list[BaseException | dict[str, list[Document]]]:
        calls = [component.run_async(query=QUERY, documents=docs(2)) for _ in range(60)]
        return await asyncio.gather(*calls, return_exceptions=True)

    done.clear()
    closer = threading.Thread(target=closes)
    closer.start()
    outcomes = asyncio.run(async_runs())
    done.set()
    closer.join()
    assert [o for o in outcomes if isinstance(o, BaseException)] == []


def test_a_pipeline_closes_its_ranker(tiny_model_dir: Path) -> None:
    component = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu")
    pipeline = Pipeline()
    pipeline.add_component("ranker", component)
    pipeline.warm_up()
    reranker = component._reranker
    assert reranker is not None
    pipeline.close()
    assert component._reranker is None
    with pytest.raises(ClosedError):
        reranker.rerank(QUERY, ["a passage"])


def test_a_template_object_is_kept_as_its_dict_and_a_bad_one_fails_at_init(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    component = FirstListwiseRanker(model=str(tiny_model_dir), template=FIRST_NUMERIC_TEMPLATE)
    data = component.to_dict()
    assert data["init_parameters"]["template"] == FIRST_NUMERIC_TEMPLATE.to_dict()
    pipeline = Pipeline()
    pipeline.add_component("ranker", FirstListwiseRanker.from_dict(data))
    assert "first-numeric" in pipeline.dumps()
    component.warm_up()
    assert component._reranker is not None
    assert component._reranker.prompts.template == FIRST_NUMERIC_TEMPLATE
    with pytest.raises(ValueError, match="nosuch"):
        FirstListwiseRanker(template="nosuch")
    file = tmp_path / "numeric.json"
    file.write_text(json.dumps(FIRST_NUMERIC_TEMPLATE.to_dict()), encoding="utf-8")
    from_file = FirstListwiseRanker(model=str(tiny_model_dir), template=file)
    assert from_file.to_dict()["init_parameters"]["template"] == str(file)


def test_default_windows_fit_the_template(tiny_model_dir: Path) -> None:
    component = FirstListwiseRanker(
        model=str(tiny_model_dir), device="cpu", template="first-numeric"
    )
    component.warm_up()
    assert component._reranker is not None
    assert component._reranker.strategy == SlidingWindow(9, 4)
    assert len(component.run(query=QUERY, documents=docs(12))["documents"]) == 12


def test_to_dict_of_the_defaults() -> None:
    assert FirstListwiseRanker().to_dict() == {
        "type": "haystack_llmrank.components.ranker.FirstListwiseRanker",
        "init_parameters": {
            "model": "default",
            "backend": "torch",
            "device": None,
            "dtype": None,
            "top_k": None,
            "score_threshold": None,
            "window_size": None,
            "step": None,
            "strategy": None,
            "template": None,
            "vote": None,
            "max_passage_words": "auto",
            "max_prompt_tokens": None,
            "batch_size": 1,
            "max_batch_tokens": None,
            "meta_fields_to_embed": [],
            "embedding_separator": "\n",
            "threads": None,
            "on_missing_gpu": "raise",
            "both_orders": False,
            "fusion_k": "auto",
            "order_invariant": False,
        },
    }


def test_to_dict_from_dict_round_trip() -> None:
    component = FirstListwiseRanker(
        model="castorini/first_mistral",
        backend="onnx",
        device="cuda:1",
        top_k=5,
        score_threshold=0.5,
        window_size=9,
        step=None,
        strategy="disjoint",
        template="first-numeric",
        vote=" yes",
        max_passage_words=None,
        max_prompt_tokens=2048,
        batch_size=4,
        max_batch_tokens=8192,
        meta_fields_to_embed=["title"],
        embedding_separator=" | ",
        threads=3,
        on_missing_gpu="warn",
        both_orders=True,
        fusion_k=60,
        order_invariant=True,
    )
    data = component.to_dict()
    assert data == {
        "type": "haystack_llmrank.components.ranker.FirstListwiseRanker",
        "init_parameters": {
            "model": "castorini/first_mistral",
            "backend": "onnx",
            "device": "cuda:1",
            "dtype": None,
            "top_k": 5,
            "score_threshold": 0.5,
            "window_size": 9,
            "step": None,
            "strategy": "disjoint",
            "template": "first-numeric",
            "vote": " yes",
            "max_passage_words": None,
            "max_prompt_tokens": 2048,
            "batch_size": 4,
            "max_batch_tokens": 8192,
            "meta_fields_to_embed": ["title"],
            "embedding_separator": " | ",
            "threads": 3,
            "on_missing_gpu": "warn",
            "both_orders": True,
            "fusion_k": 60,
            "order_invariant": True,
        },
    }
    assert FirstListwiseRanker.from_dict(data).to_dict() == data
    stepped = FirstListwiseRanker(strategy="sliding", window_size=9, step=5).to_dict()
    assert stepped["init_parameters"]["step"] == 5
    assert FirstListwiseRanker.from_dict(stepped).to_dict() == stepped


def test_bad_window_rejected_at_init() -> None:
    with pytest.raises(ValueError, match="step"):
        FirstListwiseRanker(window_size=5, step=9, strategy="sliding")
    # with no strategy the readout picks one at warm_up; a vote's disjoint windows have no step
    assert FirstListwiseRanker(window_size=5, step=9).strategy is None
    with pytest.raises(ValueError, match="unknown strategy"):
        FirstListwiseRanker(strategy="bubble")
    with pytest.raises(ValueError, match="window_size"):
        FirstListwiseRanker(strategy="tdpart", window_size=1)
    with pytest.raises(ValueError, match="step applies to the sliding window only"):
        FirstListwiseRanker(strategy="disjoint", step=5)
    with pytest.raises(ValueError, match="fusion_k"):
        FirstListwiseRanker(fusion_k=-1)
    with pytest.raises(ValueError, match="order_invariant needs the 'disjoint' strategy"):
        FirstListwiseRanker(strategy="tdpart", order_invariant=True)
    with pytest.raises(ValueError, match="visible token"):
        FirstListwiseRanker(vote=" ")
    with pytest.raises(ValueError, match="max_passage_words must be"):
        FirstListwiseRanker(max_passage_words=0)
    # a named template fixes the labels and the readout: its window is checked in full
    with pytest.raises(ValueError, match="step must be between 1 and 8 for window_size \\(9\\)"):
        FirstListwiseRanker(template="first-numeric", strategy="sliding", step=12)
    with pytest.raises(WindowTooLargeError, match="template 'first-numeric' has 9 labels"):
        FirstListwiseRanker(template="first-numeric", window_size=12)
    with pytest.raises(ValueError, match="one passage a window orders nothing"):
        FirstListwiseRanker(template="first", window_size=1)
    assert FirstListwiseRanker(template="first", vote=" yes", window_size=1).window_size == 1
    with pytest.raises(ValueError, match="window_size must be at least 2, got 1"):
        FirstListwiseRanker(template="first", vote=" yes", strategy="sliding", window_size=1)
    with pytest.raises(ValueError, match="order_invariant needs the 'disjoint' strategy"):
        FirstListwiseRanker(template="first", order_invariant=True)  # resolves to sliding
    assert FirstListwiseRanker(template="first", vote=" yes", order_invariant=True).vote
    with pytest.raises(ValueError, match="a window of one passage reads the same both ways"):
        FirstListwiseRanker(template="judge", vote=" yes", both_orders=True)
    assert FirstListwiseRanker(template="first", vote=" yes", both_orders=True).both_orders


def test_strategy_is_serialised_and_top_k_reaches_it(tiny_model_dir: Path) -> None:
    component = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu", strategy="tdpart")
    data = component.to_dict()
    assert data["init_parameters"]["strategy"] == "tdpart"
    assert FirstListwiseRanker.from_dict(data).to_dict() == data
    assert FirstListwiseRanker().to_dict()["init_parameters"]["strategy"] is None

    component.warm_up()
    engine = component._reranker
    assert engine is not None
    texts = [d.content or "" for d in docs(30)]
    for top_k in (None, 3):
        out = component.run(query=QUERY, documents=docs(30), top_k=top_k)["documents"]
        expected = engine.rerank(QUERY, texts, top_k=top_k)
        assert [d.id for d in out] == [f"d{i}" for i in expected.order][:top_k]
        assert expected.unranked > 0, "tdpart leaves the bottom in first-stage order"


def test_bad_onnx_settings_rejected_at_init() -> None:
    with pytest.raises(ValueError, match="threads must be a positive integer or None, got 0"):
        FirstListwiseRanker(backend="onnx", threads=0)
    with pytest.raises(ValueError, match="threads applies to the onnx backend"):
        FirstListwiseRanker(threads=2)
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        FirstListwiseRanker(backend="tensorrt")
    with pytest.raises(ValueError, match="dtype does not apply to the onnx backend"):
        FirstListwiseRanker(backend="onnx", dtype="float16")


def test_options_wrong_for_any_model_fail_at_init() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"top_k": 2.5}, "top_k must be a positive integer or None, got 2.5"),
        ({"top_k": True}, "top_k must be a positive integer or None, got True"),
        ({"top_k": 0}, "top_k must be a positive integer or None, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be a positive integer or None"),
        ({"max_prompt_tokens": -5}, "max_prompt_tokens must be a positive integer or None"),
        ({"window_size": 2.5}, "window_size must be a positive integer or None"),
        ({"device": "gpu"}, "unknown device 'gpu': the torch backend runs on"),
        ({"dtype": "float17"}, "float17"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            FirstListwiseRanker(**options)
    with pytest.raises(ValueError, match="on_missing_gpu must be one of"):
        FirstListwiseRanker(on_missing_gpu="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_both_backends_check_the_device_at_init_in_one_grammar(backend: str) -> None:
    for device in ("cpu", "CPU", "cpu:0", "cuda", "CUDA:1", " cuda:0 "):
        FirstListwiseRanker(backend=backend, device=device)  # used as given, at warm_up
    for device in ("garbage", "gpu", "meta", "cpu:1", "cuda:x", "cuda:-1", ""):
        refused = f"unknown device {device!r}: the {backend} backend runs on cpu"
        with pytest.raises(ValueError, match=re.escape(refused)):
            FirstListwiseRanker(backend=backend, device=device)
    if backend == "onnx":
        with pytest.raises(ValueError, match="the onnx backend runs on cpu or cuda only"):
            FirstListwiseRanker(backend=backend, device="mps")


def test_types_yaml_would_get_wrong_are_refused_or_kept_as_names(tiny_model_dir: Path) -> None:
    for name in ("both_orders", "order_invariant"):  # a quoted YAML "false" is truthy
        with pytest.raises(TypeError, match=f"{name} must be true or false, got 'false'"):
            FirstListwiseRanker(**{name: "false"})
    with pytest.raises(TypeError, match="embedding_separator must be a string"):
        FirstListwiseRanker(embedding_separator=None)  # type: ignore[arg-type]
    import torch

    ranker = FirstListwiseRanker(model=tiny_model_dir, dtype=torch.bfloat16, device="cpu")
    init = ranker.to_dict()["init_parameters"]
    assert (init["model"], init["dtype"]) == (str(tiny_model_dir), "bfloat16")
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    assert f"model: {tiny_model_dir}" in pipeline.dumps()  # a Path used to fail here
    with pytest.raises(TypeError, match="dtype must be a torch dtype or its name"):
        FirstListwiseRanker(dtype=16)  # type: ignore[arg-type]


def test_documents_that_are_not_a_list_of_documents_are_refused(
    ranker: FirstListwiseRanker,
) -> None:
    for documents in (None, "abc", [None], [{"content": "x"}]):
        with pytest.raises(TypeError, match="documents must be a list of Documents"):
            ranker.run(query=QUERY, documents=documents)  # type: ignore[arg-type]


def mutable_parts(value: Any) -> Iterator[Any]:
    """``value`` and what it holds (a dataclass's fields too), where they can change in place."""
    if isinstance(value, str | bytes | int | float | complex | type(None)):
        return
    if not isinstance(value, tuple | frozenset):
        yield value
    if is_dataclass(value) and not isinstance(value, type):
        parts: Any = [getattr(value, f.name) for f in fields(value)]
    elif isinstance(value, dict):
        parts = [*value, *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        parts = value
    else:
        parts = []
    for part in parts:
        yield from mutable_parts(part)


def test_what_a_run_returns_shares_nothing_mutable_with_its_input(
    ranker: FirstListwiseRanker,
) -> None:
    given = [
        Document(
            id=f"d{i}",
            content=f"animal {i}",
            meta={"n": [i]},
            score=float(i),
            embedding=[float(i)],
            sparse_embedding=SparseEmbedding(indices=[i, 7], values=[0.5, 0.25]),
            blob=ByteStream(data=b"x", meta={"k": ["v"]}, mime_type="text/plain"),
        )
        for i in range(3)
    ]
    before = copy.deepcopy(given)
    assert all(getattr(d, f.name) is not None for d in given for f in fields(d)), (
        "set every field, so that each is checked"
    )
    for query in (QUERY, ""):  # ranked, and returned unranked
        out = ranker.run(query=query, documents=given)["documents"]
        for o, d in zip(sorted(out, key=lambda o: o.id), given, strict=True):
            assert replace(o, score=d.score) == d, "equal but for the score, id included"
            assert not {id(p) for p in mutable_parts(o)} & {id(p) for p in mutable_parts(d)}
            o.meta["n"].append(-1)  # nested values too
            assert o.embedding is not None
            assert o.sparse_embedding is not None
            assert o.blob is not None
            o.embedding.append(9.0)
            o.sparse_embedding.indices.append(9)
            o.sparse_embedding.values[0] = 99.0
            o.blob.meta["k"].append("changed")
            o.blob.meta["new"] = "x"
    assert given == before


def rank_twice(ranker: FirstListwiseRanker) -> list[dict[str, list[Document]]]:
    """What ``ranker`` returns from ``run`` and ``run_async`` for the same call."""
    call = {"query": QUERY, "documents": docs(12), "top_k": 5}
    return [ranker.run(**call), asyncio.run(ranker.run_async(**call))]


def deep_copy(value: Any) -> Any:
    return copy.deepcopy(value)


def unpickled(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value))


@pytest.mark.parametrize("clone", [deep_copy, unpickled])
@pytest.mark.parametrize("warm", [False, True])
def test_a_copied_or_unpickled_ranker_is_cold_and_ranks_alike(
    clone: Any, warm: bool, tiny_model_dir: Path
) -> None:
    original = FirstListwiseRanker(
        model=str(tiny_model_dir), device="cpu", meta_fields_to_embed=["title"]
    )
    if warm:
        original.warm_up()
        asyncio.run(original.warm_up_async())  # its worker thread exists too
    engine = original._reranker
    copied = clone(original)
    assert type(copied) is FirstListwiseRanker
    assert copied.to_dict() == original.to_dict()
    assert copied.meta_fields_to_embed is not original.meta_fields_to_embed
    assert copied._reranker is None, "cold: warm_up loads its own model"
    assert (copied._worker_pool, copied._worker_pid) == (None, 0)
    locks = ("_lock", "_warm_lock", "_pool_lock")
    assert all(getattr(copied, n) is not getattr(original, n) for n in locks)
    assert original._reranker is engine, "the original keeps its model"
    expected = rank_twice(original)
    copied.warm_up()
    assert copied._reranker is not None
    assert copied._reranker is not engine
    assert rank_twice(copied) == expected
    copied.close()  # closes its own model, not the original's
    assert rank_twice(original) == expected
    original.close()
    assert rank_twice(copied) == expected, "a closed copy loads its model again"


@pytest.mark.parametrize("clone", [deep_copy, unpickled])
def test_a_pipeline_holding_a_ranker_copies_and_pickles(
    clone: Any, ranker: FirstListwiseRanker, tiny_model_dir: Path
) -> None:
    pipeline = Pipeline()
    pipeline.add_component("joiner", DocumentJoiner(sort_by_score=False))
    ranking = FirstListwiseRanker(model=str(tiny_model_dir), device="cpu", top_k=4)
    pipeline.add_component("ranker", ranking)
    pipeline.connect("joiner.documents", "ranker.documents")
    inputs = {"joiner": {"documents": docs(9)}, "ranker": {"query": QUERY}}
    expected = {"ranker": ranker.run(query=QUERY, documents=docs(9), top_k=4)}
    cold = clone(pipeline)
    pipeline.warm_up()
    warm = clone(pipeline)
    for copied in (cold, warm):
        component = copied.get_component("ranker")
        assert type(component) is FirstListwiseRanker
        assert component.__haystack_added_to_pipeline__ is copied
        assert component._reranker is None
        assert copied.to_dict() == pipeline.to_dict()
        copied.warm_up()
        assert copied.run(inputs) == expected
        copied.close()
    assert ranking._reranker is not None, "the original keeps its model"
    assert pipeline.run(inputs) == expected
    pipeline.close()


def test_run_async_works_in_a_forked_child(ranker: FirstListwiseRanker) -> None:
    import os

    asyncio.run(ranker.warm_up_async())  # the parent's worker thread exists now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the pool has no thread
        try:
            out = asyncio.run(asyncio.wait_for(ranker.run_async(QUERY, docs(3)), 30))
            os.write(write, str(len(out["documents"])).encode())
        finally:
            os._exit(0)
    os.close(write)
    import select
    import signal

    ready, _, _ = select.select([read], [], [], 60)
    if not ready:  # a child stuck anywhere must not hang the suite
        os.kill(pid, signal.SIGKILL)
    answer = os.read(read, 16).decode() if ready else "no answer in 60 s"
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == "3"


def test_numpy_numbers_and_a_component_device_are_kept_as_yaml_can_write_them() -> None:
    ranker = FirstListwiseRanker(
        top_k=np.int64(3),
        score_threshold=np.float32(0.5),
        window_size=np.int64(10),
        step=np.int32(5),
        batch_size=np.int64(2),
        max_batch_tokens=np.int64(4096),
        max_prompt_tokens=np.int64(2048),
        max_passage_words=np.int64(100),
        fusion_k=np.int64(60),
        device=ComponentDevice.from_str("cuda:1"),
    )
    init = ranker.to_dict()["init_parameters"]
    assert json.loads(json.dumps(init)) == init
    expected = {
        "top_k": 3,
        "score_threshold": 0.5,
        "window_size": 10,
        "step": 5,
        "batch_size": 2,
        "max_batch_tokens": 4096,
        "max_prompt_tokens": 2048,
        "max_passage_words": 100,
        "fusion_k": 60,
        "device": "cuda:1",
    }
    assert {name: init[name] for name in expected} == expected
    assert all(type(init[name]) is type(value) for name, value in expected.items())
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    assert "device: cuda:1" in pipeline.dumps()
    with pytest.raises(ValueError, match="device must be a string"):
        FirstListwiseRanker(device=5)  # type: ignore[arg-type]


def test_pipeline_yaml_round_trip_needs_the_allowlist(
    tiny_model_dir: Path, tmp_path: Path, ranker: FirstListwiseRanker
) -> None:
    pipeline = Pipeline()
    pipeline.add_component("ranker", FirstListwiseRanker(model=str(tiny_model_dir), top_k=4))
    path = tmp_path / "pipeline.yaml"
    path.write_text(pipeline.dumps())
    with pytest.raises(DeserializationError):
        Pipeline.loads(path.read_text())
    loaded = Pipeline.loads(path.read_text(), allowed_modules=["haystack_llmrank"])
    result = loaded.run({"ranker": {"query": QUERY, "documents": docs(9)}})
    assert (
        result["ranker"]["documents"]
        == ranker.run(query=QUERY, documents=docs(9), top_k=4)["documents"]
    )


# A pipeline as Haystack saved it; the `type:` string must keep resolving after any move.
SAVED_PIPELINE = """\
components:
  ranker:
    init_parameters:
      model: castorini/first_mistral
      top_k: 4
    type: haystack_llmrank.components.ranker.FirstListwiseRanker
connections: []
max_runs_per_component: 100
metadata: {}
"""


@pytest.mark.parametrize("allow", ["env", "argument"])
def test_saved_type_string_loads_with_the_readme_allowlist(
    allow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed_modules = None
    if allow == "env":
        monkeypatch.setenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", "haystack_llmrank.*")
    else:
        allowed_modules = ["haystack_llmrank"]
    loaded = Pipeline.loads(SAVED_PIPELINE, allowed_modules=allowed_modules)
    ranker = loaded.get_component("ranker")
    assert type(ranker) is FirstListwiseRanker
    assert (ranker.model, ranker.top_k) == ("castorini/first_mistral", 4)


def test_the_component_without_haystack_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import haystack_llmrank

    monkeypatch.setitem(sys.modules, "haystack", None)
    for module in ("haystack_llmrank.components", "haystack_llmrank.components.ranker"):
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'llmrank\[haystack\]'") as info:
        _ = haystack_llmrank.FirstListwiseRanker
    assert info.value.name == "haystack"
