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
from collections.abc import Callable
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
Version = tuple[int, int] | tuple[int, int, int]
"""``(major, minor)``, or ``(major, minor, patch)`` where the patch is known."""

FIRST_SUPPORTED: Version = (2, 12)
"""The first OpenSearch version with the ``rerank`` processor and the Cohere rerank functions."""
PRIVATE_IP_SINCE: Version = (2, 15)
"""From here ``plugins.ml_commons.connector.private_ip_enabled`` exists; before, ML Commons
refuses every private address (:meth:`ServiceEndpoint.is_private`)."""
MODERN_PRIVATE_RULE_SINCE: Version = (3, 3)
MODERN_PRIVATE_RULE_2_19_SINCE: Version = (2, 19, 4)
"""From these, ML Commons judges an IPv4 address by :func:`_modern_private_v4`; before, by
:func:`_legacy_private_v4`."""
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
    """A validated service base URL (no trailing slash), its host (IPv6 without brackets), and
    whether that host is private (``None``: as ML Commons counts it, see :meth:`is_private`)."""

    base_url: str
    host: str
    private: bool | None = None

    @property
    def rerank_url(self) -> str:
        """The URL the connector posts to."""
        return self.base_url + RERANK_PATH

    def is_private(self, opensearch_version: Version) -> bool:
        """:attr:`private` where given, else whether the ML Commons of ``opensearch_version``
        counts the host as private (:func:`_is_private_host`)."""
        if self.private is not None:
            return self.private
        return _is_private_host(self.host, opensearch_version)


JAVA_LOCAL_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in ("0.0.0.0/32", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8")
)
"""The IPv4 addresses Java counts as any-local, site-local or loopback: private to every
ML Commons version."""
LINK_LOCAL_V4 = ipaddress.IPv4Network("169.254.0.0/16")


def _modern_private_v4(address: ipaddress.IPv4Address) -> bool:
    """ML Commons 3.3+ and 2.19.4+: :data:`JAVA_LOCAL_V4` and link-local ``169.254/16``."""
    return address in LINK_LOCAL_V4 or any(address in net for net in JAVA_LOCAL_V4)


def _java_readings(byte: int) -> tuple[int, int]:
    """The decimal text of ``byte`` read again as octal (as decimal if it holds an 8 or 9)
    and as hexadecimal."""
    text = str(byte)
    octal = int(text) if any(c in "89" for c in text) else int(text, 8)
    return octal, int(text, 16)


def _legacy_private_v4(address: ipaddress.IPv4Address) -> bool:
    """ML Commons 2.12 to 3.2 except 2.19.4+: the first byte is re-read by
    :func:`_java_readings`, so ``12`` reads as 10, ``177`` as 127, ``254`` as 172 and ``192``
    as itself (``10``, ``127`` and ``172`` read as something else). For a first byte read as

    - 127: private only as ``.0.0.1`` (``177.0.0.1``);
    - 10: private (``12/8``);
    - 172: private when a reading of the second byte is within 16..32 (``254.10`` to
      ``254.37`` and ``254.40``);
    - 192: private when a reading of the second byte is 168 (``192.168`` and ``192.250``).

    Any other address is private when in :data:`JAVA_LOCAL_V4`; ``169.254/16`` is public."""
    first, second, third, fourth = address.packed
    firsts = _java_readings(first)
    if 127 in firsts:
        return (second, third, fourth) == (0, 0, 1)
    if 10 in firsts:
        return True
    if 172 in firsts:
        return any(16 <= reading <= 32 for reading in _java_readings(second))
    if 192 in firsts:
        return 168 in _java_readings(second)
    return any(address in net for net in JAVA_LOCAL_V4)


def _private_v4_rules(
    opensearch_version: Version,
) -> tuple[Callable[[ipaddress.IPv4Address], bool], ...]:
    """The IPv4 rules the ML Commons of ``opensearch_version`` may apply. A ``2.19`` without
    a patch gets both (2.19.4 changed the rule), so an address either counts as private is
    private: allowing private addresses for a public one is harmless, while a private one
    not allowed is refused."""
    if opensearch_version == (2, 19):
        return _legacy_private_v4, _modern_private_v4
    if opensearch_version[:2] == (2, 19):
        modern = opensearch_version >= MODERN_PRIVATE_RULE_2_19_SINCE
    else:
        modern = opensearch_version >= MODERN_PRIVATE_RULE_SINCE
    return (_modern_private_v4,) if modern else (_legacy_private_v4,)


def _is_private_host(host: str, opensearch_version: Version) -> bool:
    """Whether the ML Commons of ``opensearch_version`` counts ``host`` as a private address:
    localhost, IPv4 (IPv4-mapped IPv6 included) by :func:`_private_v4_rules`, and of other
    IPv6 only the loopback, ``::`` and site-local ``fec0::/10`` (unique-local ``fd00::/8``
    and link-local ``fe80::/10`` pass as public). Other host names count as public."""
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
    return any(rule(address) for rule in _private_v4_rules(opensearch_version))


def parse_service_url(url: str, *, private: bool | None = None) -> ServiceEndpoint:
    """Validate the service's base URL as OpenSearch will call it.

    ``http`` or ``https``, a host, an optional port and path prefix; no credentials, query or
    fragment. A URL that already ends in ``/v1/rerank`` is taken as its base, and the scheme's
    default port is dropped. ``private`` says whether the host resolves to a private address;
    ``None`` leaves it to the OpenSearch version (:meth:`ServiceEndpoint.is_private`).
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
    return ServiceEndpoint(f"{parts.scheme}://{netloc}{path}", host, private)


def parse_version(text: str) -> Version:
    """``"3.7"`` -> ``(3, 7)``; ``"2.19.1"`` or ``"3.0.0-SNAPSHOT"`` -> ``(major, minor,
    patch)``; 2.12 or later."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[-+][\w.-]*)?", text.strip())
    if match is None:
        raise ValueError(f"expected an OpenSearch version like 2.19 or 3.7, got {text!r}")
    major, minor, patch = match.groups()
    version: Version = (
        (int(major), int(minor)) if patch is None else (int(major), int(minor), int(patch))
    )
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

    A private address (:meth:`ServiceEndpoint.is_private` for this version) needs
    ``connector.private_ip_enabled`` (2.15+; older versions cannot call one at all, so this
    raises :class:`ValueError`). From 3.7 the same pattern also goes to
    ``trusted_connector_private_endpoints_regex``, so that only the service's private address
    is allowed rather than all of them. Remote models run on the nodes of
    ``task_dispatcher.eligible_node_role.remote_model`` (data and ML nodes by default), so no
    node-placement setting is changed.

    Note: ``trusted_connector_endpoints_regex`` replaces the cluster's list; add the patterns
    of other connectors you use.
    """
    regex = trusted_endpoint_regex(endpoint)
    settings: dict[str, Any] = {"plugins.ml_commons.trusted_connector_endpoints_regex": [regex]}
    if endpoint.is_private(opensearch_version):
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
