"""``llmrank blueprints``: print the OpenSearch requests that wire ``llmrank serve`` in."""

from __future__ import annotations

import argparse
import json
from typing import Any

from haystack_llmrank.cli.options import positive_float, positive_int


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``blueprints`` options and handler to ``parser``."""
    parser.description = (
        "Print, in order and in Dev Tools console form (METHOD path, then the JSON body), the "
        "requests that let an OpenSearch cluster rerank search results with `llmrank serve`: "
        "cluster settings, ML Commons connector, model registration and deployment, a Predict "
        "check, a search pipeline with a rerank processor, and a search using it. Replace "
        "<CONNECTOR_ID> and <MODEL_ID> with the ids the cluster returns."
    )
    parser.add_argument(
        "--service-url",
        required=True,
        help="base URL at which the OpenSearch nodes reach the service, e.g. http://10.0.0.5:8080",
    )
    parser.add_argument(
        "--api-key-secret",
        default=None,
        help="API key to store in the connector's credential (default: a placeholder to edit)",
    )
    parser.add_argument("--model-name", default=None, help="model name (default llmrank-first)")
    parser.add_argument("--pipeline", default=None, help="search pipeline name")
    parser.add_argument("--index", default="my-index", help="index of the example search")
    parser.add_argument("--text-field", default="text", help="field searched and reranked")
    parser.add_argument("--query", default=None, help="query text of the example search")
    parser.add_argument(
        "--size", type=positive_int, default=20, help="hits per page = how many get reranked"
    )
    parser.add_argument(
        "--timeout-s",
        type=positive_float,
        default=30.0,
        help="the service's --timeout-s (sets the connector's read timeout)",
    )
    network = parser.add_mutually_exclusive_group()
    network.add_argument(
        "--private-network",
        dest="private",
        action="store_const",
        const=True,
        default=None,
        help=(
            "the host resolves to a private address (default: decide from the URL as the "
            "version's ML Commons does)"
        ),
    )
    network.add_argument(
        "--public-network", dest="private", action="store_const", const=False, help="it does not"
    )
    parser.add_argument(
        "--opensearch-version",
        required=True,
        help=(
            "the cluster's version, 2.12 or later (e.g. 2.19, 3.7): decides the "
            "private-address settings and the connector's client_config"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build and print the requests."""
    from opensearch_ltr.ml_commons_blueprints import blueprint_requests

    options: dict[str, Any] = {
        "api_key": args.api_key_secret,
        "model_name": args.model_name,
        "pipeline": args.pipeline,
        "query_text": args.query,
    }
    requests = blueprint_requests(
        args.service_url,
        index=args.index,
        text_field=args.text_field,
        size=args.size,
        timeout_s=args.timeout_s,
        private=args.private,
        opensearch_version=args.opensearch_version,
        **{name: value for name, value in options.items() if value is not None},
    )
    if args.json:
        print(json.dumps([request.as_dict() for request in requests], indent=2))
    else:
        print("\n\n".join(request.render() for request in requests))
    return 0
