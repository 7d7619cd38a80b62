"""OpenSearch requests that put the llmrank rerank service behind a search pipeline.

Each request body is built by a function returning a plain dict; :func:`blueprint_requests`
returns them in the order to apply, for an OpenSearch version from 2.12 (the first with the
``rerank`` processor and the Cohere rerank functions):

1. cluster settings: trust the service URL (and allow a private address when it is one);
2. create an ML Commons HTTP connector in the Cohere rerank format, with ML Commons' built-in
   ``connector.pre_process.cohere.rerank`` / ``connector.post_process.cohere.rerank``
   functions: the first turns the ``rerank`` processor's (query, hit texts) into ``query``,
   ``documents`` and ``top_n = len(documents)``; the second writes each result's
   ``relevance_score`` at position ``index``, so scores come back in hit order;
3. register the connector as a remote model; 4. deploy it; 5. a Predict call to check it;
6. a search pipeline whose ``rerank`` response processor (``ml_opensearch``) rescores the hits
   of a page and sorts them by score; 7. a search that uses the pipeline.

An ``ml_inference`` response processor is not offered: its ``one_to_one`` mode sends one
request per hit, which a listwise reranker cannot score meaningfully; its many-to-one mode
can pass the query (from 2.18, by a ``_request.`` path) but needs a ``rerank`` processor
``by_field`` after it to sort the hits, where the ``rerank`` processor alone does both.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

RERANK_PATH = "/v1/rerank"
"""Where the service takes rerank requests and the connector sends them."""
DEFAULT_MODEL_NAME = "llmrank-first"
DEFAULT_PIPELINE = "llmrank-rerank"
API_KEY_PLACEHOLDER = "<LLMRANK_API_KEY>"
CONNECTOR_ID_PLACEHOLDER = "<CONNECTOR_ID>"
MODEL_ID_PLACEHOLDER = "<MODEL_ID>"
Version = tuple[int, int]

FIRST_SUPPORTED: Version = (2, 12)
"""The first OpenSearch version with the ``rerank`` processor and the Cohere rerank functions."""
PRIVATE_IP_SINCE: Version = (2, 15)
"""From here ``plugins.ml_commons.connector.private_ip_enabled`` exists; before, ML Commons
refuses every private address (:func:`_is_private_host`)."""
PRIVATE_ENDPOINTS_SINCE: Version = (3, 7)
"""From here ``trusted_connector_private_endpoints_regex`` can narrow the private addresses
allowed (an empty list allows all of them); patterns longer than 256 characters are refused."""
CLIENT_CONFIG_SINCE: Version = (2, 13)
"""From here a connector's ``client_config`` is read (2.12 ignores it and never times out)."""
TIMEOUTS_IN_SECONDS_SINCE: Version = (2, 14)
"""Before this (2.13), ``client_config`` timeouts are in milliseconds."""
MAX_REGEX_CHARS = 256
MAX_CONNECTIONS = 30
"""ML Commons' default connection pool size per connector and node."""
CONNECT_TIMEOUT_S = 10
DEFAULT_PORTS = {"http": 80, "https": 443}

REQUEST_BODY_TEMPLATE = (
    '{ "model": "${parameters.model}", "query": "${parameters.query}", '
    '"documents": ${parameters.documents}, "top_n": ${parameters.top_n} }'
)


@dataclass(frozen=True)
class ServiceEndpoint:
    """A validated service base URL (no trailing slash) and whether its host is private."""

    base_url: str
    private: bool

    @property
    def rerank_url(self) -> str:
        """The URL the connector posts to."""
        return self.base_url + RERANK_PATH


ML_COMMONS_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16")
)
"""The IPv4 ranges ML Commons refuses as private (``MLHttpClientFactory``): site-local,
loopback and link-local (link-local only from 2.19.4 and 3.3; before, it passes as public)."""


def _is_private_host(host: str) -> bool:
    """Whether ML Commons counts ``host`` as a private address: localhost, the IPv4 ranges of
    :data:`ML_COMMONS_PRIVATE_V4` and ``0.0.0.0``, and of IPv6 only the loopback, ``::`` and
    site-local ``fec0::/10`` (Java's test: unique-local ``fd00::/8`` and link-local
    ``fe80::/10`` pass as public). Other host names count as public."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return address.is_loopback or address.is_unspecified or address.is_site_local
        address = address.ipv4_mapped
    return address.is_unspecified or any(address in net for net in ML_COMMONS_PRIVATE_V4)


def parse_service_url(url: str, *, private: bool | None = None) -> ServiceEndpoint:
    """Validate the service's base URL as OpenSearch will call it.

    ``http`` or ``https``, a host, an optional port and path prefix; no credentials, query or
    fragment. A URL that already ends in ``/v1/rerank`` is taken as its base, and the scheme's
    default port is dropped. ``private`` says whether the host resolves to a private address;
    ``None`` decides from the host as ML Commons does (:func:`_is_private_host`).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid service URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the service URL must start with http:// or https://, got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"the service URL has no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the service URL must not hold credentials; use --api-key-secret")
    if parts.query or parts.fragment:
        raise ValueError(f"the service URL must not have a query or fragment: {url!r}")
    if host in ("0.0.0.0", "::"):
        raise ValueError(
            f"{host} is a bind address, not one OpenSearch can call; use the service's real address"
        )
    path = parts.path.rstrip("/")
    if path.endswith(RERANK_PATH):
        path = path[: -len(RERANK_PATH)]
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        netloc += f":{port}"
    return ServiceEndpoint(
        f"{parts.scheme}://{netloc}{path}", _is_private_host(host) if private is None else private
    )


def parse_version(text: str) -> Version:
    """``"3.7"``, ``"2.19.1"`` or ``"3.0.0-SNAPSHOT"`` -> ``(major, minor)``, 2.12 or later."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?(?:[-+][\w.-]*)?", text.strip())
    if match is None:
        raise ValueError(f"expected an OpenSearch version like 2.19 or 3.7, got {text!r}")
    version = int(match[1]), int(match[2])
    if version < FIRST_SUPPORTED:
        raise ValueError(
            f"OpenSearch {text.strip()} has no rerank processor or Cohere rerank functions; "
            "2.12 or later is needed"
        )
    return version


def trusted_endpoint_regex(endpoint: ServiceEndpoint) -> str:
    """A Java regex matching every URL under the service's base URL.

    The scheme's default port may be present or not: ML Commons checks the URL as written in
    the connector, and (3.7+, private addresses) as the HTTP client rebuilt it, without it.
    """
    parts = urlsplit(endpoint.base_url)
    default_port = "" if parts.port is not None else f"(?::{DEFAULT_PORTS[parts.scheme]})?"
    regex = f"^{parts.scheme}://{re.escape(parts.netloc)}{default_port}{re.escape(parts.path)}/.*$"
    if len(regex) > MAX_REGEX_CHARS:
        raise ValueError(
            f"the service URL is too long: ML Commons refuses endpoint patterns over "
            f"{MAX_REGEX_CHARS} characters, and this one has {len(regex)}"
        )
    return regex


def cluster_settings(endpoint: ServiceEndpoint, *, opensearch_version: Version) -> dict[str, Any]:
    """``PUT /_cluster/settings``: let ML Commons call the service.

    A private address needs ``connector.private_ip_enabled`` (2.15+; older versions cannot
    call one at all, so this raises :class:`ValueError`). From 3.7 the same pattern also goes
    to ``trusted_connector_private_endpoints_regex``, so that only the service's private
    address is allowed rather than all of them. Remote models run on the nodes of
    ``task_dispatcher.eligible_node_role.remote_model`` (data and ML nodes by default), so no
    node-placement setting is changed.

    Note: ``trusted_connector_endpoints_regex`` replaces the cluster's list; add the patterns
    of other connectors you use.
    """
    regex = trusted_endpoint_regex(endpoint)
    settings: dict[str, Any] = {"plugins.ml_commons.trusted_connector_endpoints_regex": [regex]}
    if endpoint.private:
        if opensearch_version < PRIVATE_IP_SINCE:
            raise ValueError(
                f"OpenSearch before {_text(PRIVATE_IP_SINCE)} never calls a private address: "
                f"use {_text(PRIVATE_IP_SINCE)} or later, or a service address that is public "
                "(--public-network if the host name resolves to one)"
            )
        settings["plugins.ml_commons.connector.private_ip_enabled"] = True
        if opensearch_version >= PRIVATE_ENDPOINTS_SINCE:
            settings["plugins.ml_commons.trusted_connector_private_endpoints_regex"] = [regex]
    return {"persistent": settings}


def _text(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def client_config(timeout_s: float, *, opensearch_version: Version) -> dict[str, int] | None:
    """A connector's ``client_config``: every field set, read timeout ``timeout_s`` + 5 s.

    2.13 and 2.14 leave unset fields null and fail on them, and 2.13 reads the timeouts in
    milliseconds. ``None`` for 2.12, which ignores ``client_config``.
    """
    if opensearch_version < CLIENT_CONFIG_SINCE:
        return None
    unit = 1 if opensearch_version >= TIMEOUTS_IN_SECONDS_SINCE else 1000
    return {
        "max_connection": MAX_CONNECTIONS,
        "connection_timeout": CONNECT_TIMEOUT_S * unit,
        "read_timeout": (math.ceil(timeout_s) + 5) * unit,
    }


def connector(
    endpoint: ServiceEndpoint,
    *,
    api_key: str = API_KEY_PLACEHOLDER,
    model_name: str = DEFAULT_MODEL_NAME,
    timeout_s: float = 30.0,
    opensearch_version: Version,
) -> dict[str, Any]:
    """``POST /_plugins/_ml/connectors/_create``: a Cohere-format rerank connector.

    Its read timeout is ``timeout_s`` plus 5 s, so the service's own 504 arrives before the
    connection gives up (see :func:`client_config`).
    """
    check_model_name(model_name)
    body: dict[str, Any] = {
        "name": f"{model_name} connector",
        "description": "FIRST single-token listwise reranker served by llmrank (Cohere format)",
        "version": "1",
        "protocol": "http",
        "parameters": {"model": model_name},
        "credential": {"api_key": api_key},
        "actions": [
            {
                "action_type": "predict",
                "method": "POST",
                "url": endpoint.rerank_url,
                # no Content-Type: every version sends application/json itself, and 2.12
                # and 2.13 add it beside the connector's own, a duplicate the service refuses
                "headers": {"Authorization": "Bearer ${credential.api_key}"},
                "request_body": REQUEST_BODY_TEMPLATE,
                "pre_process_function": "connector.pre_process.cohere.rerank",
                "post_process_function": "connector.post_process.cohere.rerank",
            }
        ],
    }
    config = client_config(timeout_s, opensearch_version=opensearch_version)
    if config is not None:
        body["client_config"] = config
    return body


def check_model_name(name: str) -> None:
    """Refuse a model name ML Commons would put into the request body unescaped: with a
    ``"``, a backslash or a control character, every call's body would be invalid JSON."""
    if not name.strip() or any(c in name for c in '"\\') or any(ord(c) < 32 for c in name):
        raise ValueError(
            f"the model name must be visible text without quotes, backslashes or control "
            f"characters (ML Commons puts it into the request body unescaped), got {name!r}"
        )


def register_model(
    *, connector_id: str = CONNECTOR_ID_PLACEHOLDER, model_name: str = DEFAULT_MODEL_NAME
) -> dict[str, Any]:
    """``POST /_plugins/_ml/models/_register``: the connector as a remote model."""
    check_model_name(model_name)
    return {
        "name": model_name,
        "function_name": "remote",
        "description": "FIRST listwise reranker (llmrank) behind an HTTP connector",
        "connector_id": connector_id,
    }


def predict_check(query_text: str, documents: list[str]) -> dict[str, Any]:
    """``POST /_plugins/_ml/models/<id>/_predict``: rank ``documents`` directly.

    The answer holds one ``similarity`` tensor per document, in input order. ``top_n`` must
    equal the number of documents (the rerank processor's pre-process function sets it so).
    """
    return {"parameters": {"query": query_text, "documents": documents, "top_n": len(documents)}}


def search_pipeline(
    *, model_id: str = MODEL_ID_PLACEHOLDER, document_fields: tuple[str, ...] = ("text",)
) -> dict[str, Any]:
    """``PUT /_search/pipeline/<name>``: a ``rerank`` response processor over the model.

    The processor sends the values of ``document_fields`` of every hit of the page, joined with
    no separator (a missing field is sent as ``""``), then sorts the hits stably by the float
    value of their scores. Several fields are allowed but run into each other (a title straight
    into its body); prefer one combined field, written at index time.
    """
    if not document_fields:
        raise ValueError("document_fields must name at least one field")
    if len(document_fields) > 1:
        logger.warning(
            "the rerank processor joins %s with no separator; prefer one combined field",
            ", ".join(document_fields),
        )
    return {
        "description": "Rerank each page of hits with the llmrank FIRST reranker",
        "response_processors": [
            {
                "rerank": {
                    "ml_opensearch": {"model_id": model_id},
                    "context": {"document_fields": list(document_fields)},
                }
            }
        ],
    }


def search_query(query_text: str, *, text_field: str = "text", size: int = 20) -> dict[str, Any]:
    """``POST /<index>/_search?search_pipeline=<name>``: BM25 on ``text_field``, then rerank.

    The processor reranks exactly the ``size`` hits of the page. A page with no hits while the
    total is above zero (``from`` past the last hit) fails inside ML Commons.
    """
    if not query_text.strip():
        raise ValueError("the query text must not be empty")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    return {
        "query": {"match": {text_field: query_text}},
        "size": size,
        "ext": {"rerank": {"query_context": {"query_text": query_text}}},
    }


@dataclass(frozen=True)
class BlueprintRequest:
    """One HTTP request to send to OpenSearch, in Dev Tools console form."""

    title: str
    method: str
    path: str
    body: dict[str, Any] | None

    def render(self) -> str:
        """``# title``, ``METHOD path`` and the indented JSON body."""
        lines = [f"# {self.title}", f"{self.method} {self.path}"]
        if self.body is not None:
            lines.append(json.dumps(self.body, indent=2, ensure_ascii=False))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The request as JSON-ready data."""
        return {"title": self.title, "method": self.method, "path": self.path, "body": self.body}


def blueprint_requests(
    service_url: str,
    *,
    api_key: str = API_KEY_PLACEHOLDER,
    model_name: str = DEFAULT_MODEL_NAME,
    pipeline: str = DEFAULT_PIPELINE,
    index: str = "my-index",
    text_field: str = "text",
    query_text: str = "what is the capital of France",
    size: int = 20,
    timeout_s: float = 30.0,
    private: bool | None = None,
    opensearch_version: str,
) -> list[BlueprintRequest]:
    """Every request, in order, with ``<CONNECTOR_ID>`` and ``<MODEL_ID>`` placeholders.

    ``opensearch_version`` has no default: the settings and the connector that one version
    needs are refused (or misread) by others.
    """
    endpoint = parse_service_url(service_url, private=private)
    version = parse_version(opensearch_version)
    for name, value in (("pipeline", pipeline), ("index", index), ("text_field", text_field)):
        if not value or any(c in value for c in " /?#"):
            raise ValueError(f"{name} must be a non-empty name without spaces, '/', '?' or '#'")
    model_path = f"/_plugins/_ml/models/{MODEL_ID_PLACEHOLDER}"
    sample = ["Paris is the capital of France.", "Berlin is the capital of Germany."]
    return [
        BlueprintRequest(
            "Let ML Commons call the service (replaces the trusted endpoint list)",
            "PUT",
            "/_cluster/settings",
            cluster_settings(endpoint, opensearch_version=version),
        ),
        BlueprintRequest(
            "Create the connector; note connector_id",
            "POST",
            "/_plugins/_ml/connectors/_create",
            connector(
                endpoint,
                api_key=api_key,
                model_name=model_name,
                timeout_s=timeout_s,
                opensearch_version=version,
            ),
        ),
        BlueprintRequest(
            "Register the remote model; note model_id",
            "POST",
            "/_plugins/_ml/models/_register",
            register_model(model_name=model_name),
        ),
        BlueprintRequest("Deploy the model", "POST", f"{model_path}/_deploy", None),
        BlueprintRequest(
            "Check: one similarity score per document, in input order",
            "POST",
            f"{model_path}/_predict",
            predict_check("What is the capital of France?", sample),
        ),
        BlueprintRequest(
            "Create the search pipeline",
            "PUT",
            f"/_search/pipeline/{pipeline}",
            search_pipeline(document_fields=(text_field,)),
        ),
        BlueprintRequest(
            f"Search through it: the top {size} BM25 hits come back reranked",
            "POST",
            f"/{index}/_search?search_pipeline={pipeline}",
            search_query(query_text, text_field=text_field, size=size),
        ),
    ]
