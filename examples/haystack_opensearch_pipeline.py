"""BM25 retrieval from OpenSearch, then FIRST listwise reranking, in one Haystack pipeline.

    # against a cluster (OPENSEARCH_USERNAME / OPENSEARCH_PASSWORD are read if set)
    python examples/haystack_opensearch_pipeline.py --opensearch-url http://localhost:9200
    # with no cluster: an in-memory OpenSearch-compatible server (pip install osmem-server)
    python examples/haystack_opensearch_pipeline.py --in-memory --query "Where is the Louvre?"

Needs ``pip install "llmrank[haystack-opensearch]"``. The example indexes a few passages
into ``--index`` (overwriting documents with the same id), retrieves the BM25 top
``--retrieve-k`` and prints the reranked top ``--top-k``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from haystack import Document, Pipeline
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.retrievers.opensearch import OpenSearchBM25Retriever
from haystack_integrations.document_stores.opensearch import OpenSearchDocumentStore

from haystack_llmrank import FirstListwiseRanker
from haystack_llmrank.cli.options import device_help, positive_int

BM25_MAPPINGS: dict[str, Any] = {
    "properties": {"content": {"type": "text"}},
    "dynamic_templates": [
        {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}
    ],
}
"""Text for BM25 and keywords for meta; no vector field, since nothing here embeds."""

PASSAGES = [
    "Paris is the capital and largest city of France.",
    "The Louvre, in Paris, is the world's most-visited art museum.",
    "Lyon is a French city at the confluence of the Rhône and the Saône.",
    "Berlin is the capital of Germany and its largest city.",
    "The capital of Italy is Rome, home of the Colosseum.",
    "France's national football team plays at the Stade de France near Paris.",
    "Canberra, not Sydney, is the capital city of Australia.",
    "The Seine flows through Paris before reaching the English Channel.",
    "Madrid has been the capital of Spain since the 16th century.",
    "Marseille is the oldest city of France and a major Mediterranean port.",
    "Capital gains tax is charged on the profit from selling an asset.",
    "The Eiffel Tower was built for the 1889 World's Fair in Paris.",
]


def document_store(url: str, index: str) -> OpenSearchDocumentStore:
    """A store on ``index`` at ``url`` that creates the index with :data:`BM25_MAPPINGS`."""
    https = url.startswith("https://")
    return OpenSearchDocumentStore(
        hosts=[url], index=index, mappings=BM25_MAPPINGS, use_ssl=https, verify_certs=https
    )


def build_pipeline(
    store: OpenSearchDocumentStore,
    *,
    model: str = "default",
    device: str | None = None,
    retrieve_k: int = 20,
    top_k: int = 5,
) -> Pipeline:
    """``retriever`` (BM25, top ``retrieve_k``) -> ``ranker`` (FIRST, keeps ``top_k``)."""
    pipeline = Pipeline()
    pipeline.add_component(
        "retriever", OpenSearchBM25Retriever(document_store=store, top_k=retrieve_k)
    )
    pipeline.add_component("ranker", FirstListwiseRanker(model=model, device=device, top_k=top_k))
    pipeline.connect("retriever.documents", "ranker.documents")
    return pipeline


def search(pipeline: Pipeline, query: str) -> list[Document]:
    """Run the pipeline: the reranked Documents, best first."""
    result = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})
    documents: list[Document] = result["ranker"]["documents"]
    return documents


def main(argv: Sequence[str] | None = None) -> int:
    """Index the sample passages, search, print the reranked hits."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--opensearch-url", default=os.environ.get("OPENSEARCH_URL", "http://localhost:9200")
    )
    parser.add_argument(
        "--in-memory", action="store_true", help="start an osmem-server instead of a cluster"
    )
    parser.add_argument("--index", default="llmrank-demo")
    parser.add_argument("--model", default="default", help="'default' = the trained SmolLM2")
    parser.add_argument("--device", default=None, help=device_help("cuda if any", "torch"))
    parser.add_argument("--query", default="What is the capital of France?")
    parser.add_argument("--retrieve-k", type=positive_int, default=20)
    parser.add_argument("--top-k", type=positive_int, default=5)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.opensearch_url
        if args.in_memory:
            from osmem_server import OsmemServer

            server = stack.enter_context(OsmemServer.start(japanese=False))
            url = stack.enter_context(server.clone()).url
        store = document_store(url, args.index)
        store.write_documents([Document(content=p) for p in PASSAGES], DuplicatePolicy.OVERWRITE)
        pipeline = build_pipeline(
            store,
            model=args.model,
            device=args.device,
            retrieve_k=args.retrieve_k,
            top_k=args.top_k,
        )
        for rank, doc in enumerate(search(pipeline, args.query), start=1):
            print(f"{rank}. [{doc.score:.3f}] {doc.content}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
