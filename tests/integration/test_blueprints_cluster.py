"""The blueprints applied to a real OpenSearch cluster with ML Commons and a running service.

Needs ``OPENSEARCH_URL`` (the cluster, see the ``cluster_client`` fixture),
``LLMRANK_SERVICE_URL`` (where the cluster's nodes reach a running
``llmrank serve``) and ``LLMRANK_API_KEY`` (that service's key). The test changes the
``plugins.ml_commons`` settings it needs and restores them afterwards; it creates and deletes
its own connector, model, index and search pipeline.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import parse_qsl

import pytest

from opensearch_ltr.ml_commons_blueprints import (
    blueprint_requests,
    connector,
    parse_service_url,
    parse_version,
    register_model,
    search_pipeline,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not os.environ.get("LLMRANK_SERVICE_URL"), reason="LLMRANK_SERVICE_URL is not set"
    ),
]

PASSAGES = [
    "Paris is the capital and largest city of France.",
    "Lyon is a French city on the Rhône.",
    "Berlin is the capital of Germany.",
    "The capital of Italy is Rome.",
    "France borders Spain, Italy and Germany.",
    "Capital gains are profits from selling assets.",
]
QUERY = "capital of France"


def send(client: Any, method: str, path: str, body: Any = None) -> Any:
    path, _, query = path.partition("?")
    return client.transport.perform_request(method, path, params=dict(parse_qsl(query)), body=body)


def wait_for_task(client: Any, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task: dict[str, Any] = send(client, "GET", f"/_plugins/_ml/tasks/{task_id}")
        if task["state"] == "COMPLETED":
            return task
        assert task["state"] not in ("FAILED", "COMPLETED_WITH_ERROR"), task
        time.sleep(0.5)
    raise AssertionError(f"ML task {task_id} did not complete")


def service_order(texts: list[str]) -> list[int]:
    """The service's own ranking of ``texts`` for :data:`QUERY`."""
    request = urllib.request.Request(
        parse_service_url(os.environ["LLMRANK_SERVICE_URL"]).rerank_url,
        data=json.dumps({"query": QUERY, "documents": texts}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {os.environ.get('LLMRANK_API_KEY', '')}",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return [r["index"] for r in json.load(response)["results"]]


@pytest.fixture(scope="module")
def model_id(cluster_client: Any) -> Iterator[str]:
    """Apply the settings, connector, model and deployment blueprints; undo them after."""
    version = cluster_client.info()["version"]["number"]
    settings = blueprint_requests(os.environ["LLMRANK_SERVICE_URL"], opensearch_version=version)[0]
    assert settings.body is not None
    before = send(cluster_client, "GET", "/_cluster/settings?flat_settings=true")["persistent"]
    restore = {"persistent": {name: before.get(name) for name in settings.body["persistent"]}}
    endpoint = parse_service_url(os.environ["LLMRANK_SERVICE_URL"])
    key = os.environ.get("LLMRANK_API_KEY") or "unused"
    name = f"llmrank-test-{uuid.uuid4().hex[:8]}"
    with ExitStack() as undo:
        send(cluster_client, "PUT", "/_cluster/settings", settings.body)
        undo.callback(send, cluster_client, "PUT", "/_cluster/settings", restore)
        connector_id = send(
            cluster_client,
            "POST",
            "/_plugins/_ml/connectors/_create",
            connector(
                endpoint, api_key=key, model_name=name, opensearch_version=parse_version(version)
            ),
        )["connector_id"]
        undo.callback(send, cluster_client, "DELETE", f"/_plugins/_ml/connectors/{connector_id}")
        registered = send(
            cluster_client,
            "POST",
            "/_plugins/_ml/models/_register",
            register_model(connector_id=connector_id, model_name=name),
        )
        model = (
            registered.get("model_id")
            or wait_for_task(cluster_client, registered["task_id"])["model_id"]
        )
        undo.callback(send, cluster_client, "DELETE", f"/_plugins/_ml/models/{model}")
        deployed = send(cluster_client, "POST", f"/_plugins/_ml/models/{model}/_deploy")
        undo.callback(send, cluster_client, "POST", f"/_plugins/_ml/models/{model}/_undeploy")
        wait_for_task(cluster_client, deployed["task_id"])
        yield model


def test_predict_returns_the_service_scores_in_input_order(
    cluster_client: Any, model_id: str
) -> None:
    predict = blueprint_requests(os.environ["LLMRANK_SERVICE_URL"], opensearch_version="3.7")[4]
    assert predict.body is not None
    predict.body["parameters"]["query"] = QUERY
    predict.body["parameters"]["documents"] = PASSAGES
    predict.body["parameters"]["top_n"] = len(PASSAGES)
    answer = send(cluster_client, "POST", f"/_plugins/_ml/models/{model_id}/_predict", predict.body)
    outputs = answer["inference_results"][0]["output"]
    assert [o["name"] for o in outputs] == ["similarity"] * len(PASSAGES)
    scores = [o["data"][0] for o in outputs]
    assert sorted(range(len(PASSAGES)), key=lambda i: -scores[i]) == service_order(PASSAGES)


def test_search_pipeline_reranks_the_page(cluster_client: Any, model_id: str) -> None:
    index, pipeline = f"llmrank-test-{uuid.uuid4().hex[:8]}", f"llmrank-test-{uuid.uuid4().hex[:8]}"
    for i, text in enumerate(PASSAGES):
        cluster_client.index(index=index, id=str(i), body={"text": text}, refresh=True)
    send(cluster_client, "PUT", f"/_search/pipeline/{pipeline}", search_pipeline(model_id=model_id))
    try:
        search = blueprint_requests(
            os.environ["LLMRANK_SERVICE_URL"],
            index=index,
            pipeline=pipeline,
            size=5,
            opensearch_version="3.7",  # the predict and search bodies are the same in every one
        )[-1]
        assert search.body is not None
        search.body["query"]["match"]["text"] = QUERY
        search.body["ext"]["rerank"]["query_context"]["query_text"] = QUERY
        plain = send(cluster_client, "POST", f"/{index}/_search", search.body)["hits"]["hits"]
        reranked = send(cluster_client, "POST", search.path, search.body)["hits"]["hits"]
        bm25_texts = [hit["_source"]["text"] for hit in plain]
        expected = [plain[i]["_id"] for i in service_order(bm25_texts)]
        assert [hit["_id"] for hit in reranked] == expected
        scores = [hit["_score"] for hit in reranked]
        assert scores == sorted(scores, reverse=True)
    finally:
        send(cluster_client, "DELETE", f"/_search/pipeline/{pipeline}")
        cluster_client.indices.delete(index=index)
