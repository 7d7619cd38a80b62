"""Integration fixtures: an in-memory OpenSearch-compatible server and indices in it.

The session server is osmem-server (``pip install osmem-server``: a static binary, started
here on 127.0.0.1 and a free port; it exits with the test process). Its base cluster is
frozen: writes go to clones. ``osmem_clone`` (osmem's pytest plugin) gives a test a fresh
clone; ``opensearch_client`` talks to one clone shared by the session, which holds the
session indices (tests only read them). A test that stops or pauses a server uses
``disposable_server``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opensearchpy import OpenSearch, helpers
from osmem_server import OsmemClone, OsmemServer

DL19_INDEX = "dl19-passages"
DL19_SHARDS = 3


def start_osmem(*, freeze: bool) -> OsmemServer:
    """A fresh osmem-server on 127.0.0.1 and a free port."""
    return OsmemServer.start(freeze=freeze, japanese=False, addr="127.0.0.1:0")


def index_passages(client: OpenSearch, index: str, passages: dict[str, str], shards: int) -> None:
    """Create ``index`` with ``shards`` shards and a ``text`` field, and index ``passages``."""
    client.indices.create(
        index=index,
        body={
            "settings": {"number_of_shards": shards, "number_of_replicas": 0},
            "mappings": {"properties": {"text": {"type": "text"}}},
        },
    )
    actions = ({"_index": index, "_id": docid, "text": text} for docid, text in passages.items())
    helpers.bulk(client, actions, refresh=True)


@pytest.fixture(scope="session")
def make_passage_index() -> Callable[[OpenSearch, str, dict[str, str], int], None]:
    """:func:`index_passages`, for tests that build an index of their own."""
    return index_passages


@pytest.fixture(scope="session")
def osmem_server() -> Iterator[OsmemServer]:
    """The session's osmem-server, base frozen (replaces the osmem plugin's fixture)."""
    server = start_osmem(freeze=True)
    yield server
    server.close()


@pytest.fixture(scope="session")
def osmem_session_clone(osmem_server: OsmemServer) -> Iterator[OsmemClone]:
    """One clone of the base for the whole session: where the session indices live."""
    clone = osmem_server.clone()
    yield clone
    clone.close()


@pytest.fixture(scope="session")
def opensearch_client(osmem_session_clone: OsmemClone) -> OpenSearch:
    """An opensearch-py client of the session clone."""
    return OpenSearch(hosts=[osmem_session_clone.url], timeout=30)


@pytest.fixture
def disposable_server() -> Iterator[OsmemServer]:
    """A writable server of its own for one test, which may stop or pause it."""
    server = start_osmem(freeze=False)
    yield server
    server.close()


@pytest.fixture(scope="session")
def dl19_passages(dl19_queries: list[dict[str, Any]]) -> dict[str, str]:
    """The distinct DL19 candidate passages, docid -> text."""
    return {c["docid"]: c["text"] for q in dl19_queries for c in q["candidates"]}


@pytest.fixture(scope="session")
def dl19_index(opensearch_client: OpenSearch, dl19_passages: dict[str, str]) -> str:
    """The DL19 passages in a 3-shard index of the session server."""
    index_passages(opensearch_client, DL19_INDEX, dl19_passages, DL19_SHARDS)
    return DL19_INDEX


@pytest.fixture(scope="session")
def cluster_client() -> OpenSearch:
    """A client of the real cluster at ``OPENSEARCH_URL`` (skipped when unset).

    ``OPENSEARCH_VERIFY_CERTS=0`` accepts a self-signed certificate.
    """
    url = os.environ.get("OPENSEARCH_URL")
    if not url:
        pytest.skip("OPENSEARCH_URL is not set")
    verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "1") != "0"
    return OpenSearch(hosts=[url], timeout=60, verify_certs=verify, ssl_show_warn=verify)


@pytest.fixture(scope="session")
def cluster_dl19_index(cluster_client: OpenSearch, dl19_passages: dict[str, str]) -> Iterator[str]:
    """The DL19 passages in a 3-shard index of the real cluster, deleted afterwards."""
    index = f"llmrank-test-dl19-{uuid.uuid4().hex[:8]}"
    index_passages(cluster_client, index, dl19_passages, DL19_SHARDS)
    yield index
    cluster_client.indices.delete(index=index, ignore_unavailable=True)
