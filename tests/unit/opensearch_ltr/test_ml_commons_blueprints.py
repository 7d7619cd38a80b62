"""OpenSearch request bodies for the rerank service, and the ``llmrank blueprints`` command."""

from __future__ import annotations

import argparse
import json
import logging
import re
from typing import Any

import pytest

from haystack_llmrank.cli import blueprints as blueprints_cli
from opensearch_ltr.ml_commons_blueprints import (
    API_KEY_PLACEHOLDER,
    MODEL_ID_PLACEHOLDER,
    BlueprintRequest,
    ServiceEndpoint,
    Version,
    blueprint_requests,
    client_config,
    cluster_settings,
    connector,
    parse_service_url,
    parse_version,
    predict_check,
    register_model,
    search_pipeline,
    search_query,
    trusted_endpoint_regex,
)

V: Version = (3, 7)
"""An OpenSearch version for the tests that do not depend on it."""


@pytest.mark.parametrize("version", [(3, 2, 0), V], ids=["3.2.0", "3.7"])
@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.0.1", True),
        ("172.10.0.1", False),
        ("172.32.0.1", False),
        ("192.168.0.9", True),
        ("127.0.0.2", True),
        ("177.0.0.2", False),
        ("254.38.0.1", False),
        ("254.9.0.1", False),
        ("[::1]", True),
        ("[fec0::1]", True),  # site-local: Java's only private IPv6 range
        ("[::ffff:10.0.0.5]", True),  # an IPv4-mapped address is judged as IPv4
        ("[fd00::5]", False),  # unique-local and link-local IPv6 pass ML Commons as public
        ("[fe80::1]", False),
        ("198.18.0.1", False),  # benchmarking and documentation ranges are not refused
        ("192.0.2.1", False),
        ("100.64.0.1", False),
        ("localhost", True),
        ("rerank.internal", False),
    ],
)
def test_addresses_are_private_as_ml_commons_counts_them(
    host: str, private: bool, version: Version
) -> None:
    """Addresses both ML Commons rules agree on."""
    assert parse_service_url(f"http://{host}:8080").is_private(version) is private


DIFFERING = [
    ("12.1.2.3", True, False),  # 12 read as octal is 10
    ("[::ffff:12.1.2.3]", True, False),  # an IPv4-mapped address is judged as IPv4
    ("177.0.0.1", True, False),  # 177 read as octal is 127, then only .0.0.1
    ("254.10.0.1", True, False),  # 254 read as octal is 172, 10 read as hex is 16
    ("254.28.0.1", True, False),  # 28 is within 16..32 (not octal: read as decimal)
    ("254.37.0.1", True, False),  # 37 read as octal is 31
    ("254.40.0.1", True, False),  # 40 read as octal is 32
    ("192.250.0.1", True, False),  # 250 read as octal is 168
    ("169.254.10.1", False, True),  # link-local: the legacy rule never counts it
    ("[::ffff:169.254.10.1]", False, True),
]
"""Addresses the ML Commons rules disagree on: private by the legacy rule (2.12 to 3.2 but
2.19.4+), private by the modern one (3.3+ and 2.19.4+)."""
LEGACY_VERSIONS = ["2.15", "2.16.0", "2.19.0", "2.19.3", "3.0.0", "3.2", "3.2.1"]
"""Versions from 2.15 (private addresses allowed) judged by the legacy rule."""


def allows_private(url: str, version: str, private: bool | None = None) -> bool:
    """Whether the blueprints for ``version`` allow ML Commons to call a private ``url``."""
    body = blueprint_requests(url, private=private, opensearch_version=version)[0].body
    assert body is not None
    return "plugins.ml_commons.connector.private_ip_enabled" in body["persistent"]


@pytest.mark.parametrize("version", LEGACY_VERSIONS)
@pytest.mark.parametrize(("host", "legacy", "modern"), DIFFERING)
def test_legacy_versions_count_private_addresses_by_the_legacy_rule(
    host: str, legacy: bool, modern: bool, version: str
) -> None:
    assert allows_private(f"http://{host}:8080", version) is legacy


@pytest.mark.parametrize("version", ["2.12", "2.13.0", "2.14", "2.14.1"])
@pytest.mark.parametrize(("host", "legacy", "modern"), DIFFERING)
def test_before_2_15_the_legacy_rule_decides_what_is_refused(
    host: str, legacy: bool, modern: bool, version: str
) -> None:
    url = f"http://{host}:8080"
    if legacy:
        with pytest.raises(ValueError, match="never calls a private"):
            blueprint_requests(url, opensearch_version=version)
    else:
        assert not allows_private(url, version)


@pytest.mark.parametrize(("host", "legacy", "modern"), DIFFERING)
def test_the_rule_changes_at_2_19_4_and_3_3(host: str, legacy: bool, modern: bool) -> None:
    versions = ["2.19.3", "2.19.4", "2.19.6", "3.2.1", "3.3", "3.3.2", "3.8.0"]
    expected = [legacy, modern, modern, legacy, modern, modern, modern]
    assert [allows_private(f"http://{host}:8080", v) for v in versions] == expected


@pytest.mark.parametrize(("host", "legacy", "modern"), DIFFERING)
def test_2_19_without_a_patch_counts_private_what_either_rule_does(
    host: str, legacy: bool, modern: bool
) -> None:
    """Allowing private addresses for one ML Commons counts public is harmless; the reverse
    gets the connector refused."""
    url = f"http://{host}:8080"
    assert (allows_private(url, "2.19.3"), allows_private(url, "2.19.4")) == (legacy, modern)
    assert allows_private(url, "2.19")


def legacy_private_prefixes(third: int, fourth: int) -> set[tuple[int, int]]:
    """The ``(first, second)`` bytes the legacy rule counts private, ``third.fourth`` after."""
    prefixes = {(first, second) for first in (10, 12, 127) for second in range(256)}
    prefixes |= {(172, second) for second in range(16, 32)}
    prefixes |= {(192, 168), (192, 250)}
    prefixes |= {(254, second) for second in [*range(10, 38), 40]}
    if (third, fourth) == (0, 1):
        prefixes.add((177, 0))
    return prefixes


@pytest.mark.parametrize("version", [(2, 12), (2, 19, 3), (3, 2)], ids=["2.12", "2.19.3", "3.2"])
@pytest.mark.parametrize(("third", "fourth"), [(0, 1), (2, 3)])
def test_the_legacy_rule_over_every_first_and_second_byte(
    third: int, fourth: int, version: Version
) -> None:
    hosts = {
        (first, second): f"{first}.{second}.{third}.{fourth}"
        for first in range(256)
        for second in range(256)
    }
    private = {
        prefix
        for prefix, host in hosts.items()
        if ServiceEndpoint(f"http://{host}", host).is_private(version)
    }
    assert private == legacy_private_prefixes(third, fourth)


@pytest.mark.parametrize(
    ("url", "base", "private"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", True),
        ("http://localhost:8080/", "http://localhost:8080", True),
        ("https://rerank.example.com", "https://rerank.example.com", False),
        ("https://rerank.example.com/llmrank/", "https://rerank.example.com/llmrank", False),
        ("http://10.1.2.3:9000/v1/rerank", "http://10.1.2.3:9000", True),
        ("http://[::1]:8080", "http://[::1]:8080", True),
        ("http://[2001:db8::1]:8080", "http://[2001:db8::1]:8080", False),
        ("http://93.184.216.34:80", "http://93.184.216.34", False),
        ("https://rerank.example.com:443/x", "https://rerank.example.com/x", False),
        ("http://rerank.example.com:443", "http://rerank.example.com:443", False),
        ("https://rerank.example.com:80", "https://rerank.example.com:80", False),
        ("  http://HOST.example:8080 ", "http://host.example:8080", False),
    ],
)
def test_service_urls_are_normalised(url: str, base: str, private: bool) -> None:
    endpoint = parse_service_url(url)
    assert (endpoint.base_url, endpoint.is_private(V)) == (base, private)
    assert endpoint.rerank_url == base + "/v1/rerank"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://host/x", "http:// or https://"),
        ("127.0.0.1:8080", "http:// or https://"),
        ("http://", "no host"),
        ("http://user:pw@host:8080", "credentials"),
        ("http://host:8080/?a=1", "query or fragment"),
        ("http://host:8080/#x", "query or fragment"),
        ("http://host:99999", "invalid service URL"),
        ("http://host:port", "invalid service URL"),
        ("http://0.0.0.0:8080", "bind address"),
    ],
)
def test_bad_service_urls_are_refused(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_service_url(url)


def test_privacy_can_be_forced() -> None:
    assert parse_service_url("http://reranker.internal:8080", private=True).is_private(V)
    assert not parse_service_url("http://127.0.0.1:8080", private=False).is_private(V)
    for host, legacy, modern in DIFFERING:
        url = f"http://{host}:8080"
        for version, counted in (("3.2", legacy), ("3.3", modern)):
            assert allows_private(url, version, private=not counted) is not counted


def test_trusted_regex_matches_only_the_service() -> None:
    regex = re.compile(trusted_endpoint_regex(parse_service_url("http://10.0.0.5:8080")))
    assert regex.fullmatch("http://10.0.0.5:8080/v1/rerank")
    assert not regex.fullmatch("http://10.0.0.59:8080/v1/rerank")
    assert not regex.fullmatch("http://10x0x0x5:8080/v1/rerank")
    assert not regex.fullmatch("https://10.0.0.5:8080/v1/rerank")


@pytest.mark.parametrize(
    ("url", "rebuilt"),
    [
        ("http://10.0.0.5:80", "http://10.0.0.5/v1/rerank"),
        ("http://10.0.0.5", "http://10.0.0.5:80/v1/rerank"),
        ("https://10.0.0.5:443/p", "https://10.0.0.5/p/v1/rerank"),
        ("https://10.0.0.5/p", "https://10.0.0.5:443/p/v1/rerank"),
    ],
)
def test_trusted_regex_matches_default_ports_written_or_dropped(url: str, rebuilt: str) -> None:
    """ML Commons 3.7+ checks a private URL as its HTTP client rebuilt it, default port dropped;
    the connector keeps the URL as written. The pattern must match both forms."""
    endpoint = parse_service_url(url)
    regex = re.compile(trusted_endpoint_regex(endpoint))
    assert regex.fullmatch(endpoint.rerank_url)
    assert regex.fullmatch(rebuilt)
    assert not regex.fullmatch(endpoint.rerank_url.replace("10.0.0.5", "10.0.0.5:8081"))
    assert not regex.fullmatch(endpoint.rerank_url.replace("10.0.0.5", "10.0.0.50"))


def accepted_by_ml_commons(regex: str) -> bool:
    """ML Commons 3.7+'s ``validateRegexSafety`` (Java ``String.matches`` is a full match)."""
    nested = re.fullmatch(r".*\([^)]*[*+?]\)[*+?{].*", regex)
    backreference = re.fullmatch(r".*\\[1-9].*", regex)
    return nested is None and backreference is None and len(regex) <= 256


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8080",
        "http://10.0.0.5",
        "https://rerank-1.example.com/a-b/c_d",
        "http://[fd00::1]:9000",
        "https://x" + "y" * 150 + ".example.com",
    ],
)
def test_trusted_regex_passes_ml_commons_safety_checks(url: str) -> None:
    assert accepted_by_ml_commons(trusted_endpoint_regex(parse_service_url(url)))


def test_a_regex_ml_commons_would_refuse_is_refused_here() -> None:
    assert not accepted_by_ml_commons("^http://(a+)+/.*$")
    with pytest.raises(ValueError, match="256 characters"):
        trusted_endpoint_regex(parse_service_url("https://" + "a" * 250 + ".example.com"))


def test_cluster_settings_for_public_and_private_hosts() -> None:
    public = cluster_settings(
        parse_service_url("https://rerank.example.com"), opensearch_version=V
    )["persistent"]
    assert public == {
        "plugins.ml_commons.trusted_connector_endpoints_regex": [
            r"^https://rerank\.example\.com(?::443)?/.*$"
        ]
    }
    endpoint = parse_service_url("http://127.0.0.1:8080")
    private = cluster_settings(endpoint, opensearch_version=V)["persistent"]
    assert private["plugins.ml_commons.connector.private_ip_enabled"] is True
    assert private["plugins.ml_commons.trusted_connector_private_endpoints_regex"] == [
        trusted_endpoint_regex(endpoint)
    ]
    older = cluster_settings(endpoint, opensearch_version=(2, 19))["persistent"]
    assert "plugins.ml_commons.trusted_connector_private_endpoints_regex" not in older
    assert older["plugins.ml_commons.connector.private_ip_enabled"] is True


ALL_VERSIONS = [(2, minor) for minor in range(12, 20)] + [(3, minor) for minor in range(9)]
SETTINGS_SINCE = {
    "plugins.ml_commons.trusted_connector_endpoints_regex": (2, 12),
    "plugins.ml_commons.connector.private_ip_enabled": (2, 15),
    "plugins.ml_commons.trusted_connector_private_endpoints_regex": (3, 7),
}
"""The settings the blueprints may print, and the first ML Commons release that knows each
(read from ml-commons' ``MLCommonsSettings`` at each release tag)."""


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
@pytest.mark.parametrize("url", ["https://rerank.example.com", "http://10.0.0.5:8080"])
def test_every_version_gets_only_settings_it_knows(version: tuple[int, int], url: str) -> None:
    endpoint = parse_service_url(url)
    if endpoint.is_private(version) and version < (2, 15):
        with pytest.raises(ValueError, match="never calls a private"):
            cluster_settings(endpoint, opensearch_version=version)
        return
    settings = cluster_settings(endpoint, opensearch_version=version)["persistent"]
    assert all(version >= SETTINGS_SINCE[name] for name in settings)
    expected = {name for name, since in SETTINGS_SINCE.items() if version >= since}
    if not endpoint.is_private(version):
        expected = {"plugins.ml_commons.trusted_connector_endpoints_regex"}
    assert set(settings) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_client_config_is_complete_in_the_version_s_unit(version: tuple[int, int]) -> None:
    """2.12 ignores ``client_config``; 2.13 and 2.14 fail on any field left out; 2.13 reads
    milliseconds, later versions seconds."""
    config = client_config(12.5, opensearch_version=version)
    body = connector(parse_service_url("http://10.0.0.5:8080"), opensearch_version=version)
    if version == (2, 12):
        assert config is None
        assert "client_config" not in body
        return
    unit = 1000 if version == (2, 13) else 1
    assert config == {
        "max_connection": 30,
        "connection_timeout": 10 * unit,
        "read_timeout": 18 * unit,
    }
    assert body["client_config"] == client_config(30.0, opensearch_version=version)


def test_connector_is_a_cohere_rerank_connector_to_the_service() -> None:
    body = connector(
        parse_service_url("http://10.0.0.5:8080"), api_key="k", timeout_s=12.5, opensearch_version=V
    )
    (action,) = body["actions"]
    assert body["protocol"] == "http"
    assert body["credential"] == {"api_key": "k"}
    assert body["parameters"] == {"model": "llmrank-first"}
    assert body["client_config"] == {
        "max_connection": 30,
        "connection_timeout": 10,
        "read_timeout": 18,
    }
    assert action["url"] == "http://10.0.0.5:8080/v1/rerank"
    # 2.12 and 2.13 add their own Content-Type beside a connector's: the service refuses two
    assert action["headers"] == {"Authorization": "Bearer ${credential.api_key}"}
    assert action["pre_process_function"] == "connector.pre_process.cohere.rerank"
    assert action["post_process_function"] == "connector.post_process.cohere.rerank"


def substitute(template: str, parameters: dict[str, str]) -> str:
    """What ML Commons does with ``request_body``: replace ``${parameters.x}`` verbatim."""
    return re.sub(r"\$\{parameters\.(\w+)\}", lambda m: parameters[m[1]], template)


def test_request_body_becomes_the_service_request() -> None:
    """The pre-process function yields query (escaped text), documents and top_n as JSON."""
    body = connector(parse_service_url("http://10.0.0.5:8080"), opensearch_version=V)
    template = body["actions"][0]["request_body"]
    query = 'say "hi"\n'
    documents = ["a", 'b "quoted"']
    parameters = {
        **body["parameters"],
        "query": json.dumps(query)[1:-1],
        "documents": json.dumps(documents),
        "top_n": str(len(documents)),
    }
    assert json.loads(substitute(template, parameters)) == {
        "model": "llmrank-first",
        "query": query,
        "documents": documents,
        "top_n": 2,
    }


def test_model_pipeline_and_query_bodies() -> None:
    assert register_model(connector_id="c1") == {
        "name": "llmrank-first",
        "function_name": "remote",
        "description": "FIRST listwise reranker (llmrank) behind an HTTP connector",
        "connector_id": "c1",
    }
    assert predict_check("q", ["a", "b", "c"])["parameters"]["top_n"] == 3
    (processor,) = search_pipeline(model_id="m1", document_fields=("body",))["response_processors"]
    assert processor == {
        "rerank": {"ml_opensearch": {"model_id": "m1"}, "context": {"document_fields": ["body"]}}
    }
    assert search_query("capital", text_field="body", size=7) == {
        "query": {"match": {"body": "capital"}},
        "size": 7,
        "ext": {"rerank": {"query_context": {"query_text": "capital"}}},
    }


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: search_pipeline(document_fields=()), "document_fields"),
        (lambda: search_query(" "), "query text"),
        (lambda: search_query("q", size=0), "size"),
        (lambda: parse_version("three"), "OpenSearch version"),
        (lambda: parse_version("2.11.1"), "2.12 or later"),
        (lambda: blueprint_requests("http://10.0.0.5:1", opensearch_version="2.14"), "2.15"),
        (lambda: blueprint_requests("http://h:1", index="a b", opensearch_version="3.7"), "index"),
        (
            lambda: blueprint_requests("http://h:1", pipeline="p/q", opensearch_version="3.7"),
            "pipeline",
        ),
        (
            lambda: blueprint_requests("http://h:1", model_name='a "b"', opensearch_version="3.7"),
            "quotes",
        ),
        (
            lambda: blueprint_requests("http://h:1", model_name="a\\b", opensearch_version="3.7"),
            "backslash",
        ),
        (
            lambda: blueprint_requests("http://h:1", model_name="a\nb", opensearch_version="3.7"),
            "control",
        ),
    ],
)
def test_bad_options_are_refused(call: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        call()


def test_versions_keep_the_patch_where_given() -> None:
    assert parse_version("2.12.0") == (2, 12, 0)
    assert parse_version("2.19") == (2, 19)
    assert parse_version(" 3.7.1 ") == (3, 7, 1)
    assert parse_version("3.0.0-SNAPSHOT") == (3, 0, 0)
    assert parse_version("2.19.4+build.1") == (2, 19, 4)


def test_requests_come_in_order_with_placeholders() -> None:
    requests = blueprint_requests(
        "http://127.0.0.1:8080", index="docs", pipeline="p", size=5, opensearch_version="3.7"
    )
    assert [(r.method, r.path) for r in requests] == [
        ("PUT", "/_cluster/settings"),
        ("POST", "/_plugins/_ml/connectors/_create"),
        ("POST", "/_plugins/_ml/models/_register"),
        ("POST", f"/_plugins/_ml/models/{MODEL_ID_PLACEHOLDER}/_deploy"),
        ("POST", f"/_plugins/_ml/models/{MODEL_ID_PLACEHOLDER}/_predict"),
        ("PUT", "/_search/pipeline/p"),
        ("POST", "/docs/_search?search_pipeline=p"),
    ]
    assert requests[1].body is not None
    assert requests[1].body["credential"]["api_key"] == API_KEY_PLACEHOLDER
    assert requests[3].body is None


def test_several_document_fields_warn_that_they_run_together(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="opensearch_ltr.ml_commons_blueprints"):
        search_pipeline(document_fields=("text",))
        assert not caplog.records
        body = search_pipeline(document_fields=("title", "text"))
    assert body["response_processors"][0]["rerank"]["context"]["document_fields"] == [
        "title",
        "text",
    ]
    assert "no separator" in caplog.text
    assert "title, text" in caplog.text


def test_render_is_console_form() -> None:
    request = BlueprintRequest("Title", "PUT", "/x", {"a": "é"})
    assert request.render() == '# Title\nPUT /x\n{\n  "a": "é"\n}'
    assert BlueprintRequest("T", "POST", "/y", None).render() == "# T\nPOST /y"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    blueprints_cli.register(parser)
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_cli_prints_every_request(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--service-url", "http://10.0.0.5:8080", "--api-key-secret", "k", "--index", "docs"]
    with pytest.raises(SystemExit):  # which version decides what to print: no default
        run_cli(argv)
    assert run_cli([*argv, "--opensearch-version", "3.7"]) == 0
    out = capsys.readouterr().out
    blocks = out.strip().split("\n\n# ")
    assert len(blocks) == 7
    assert "POST /docs/_search?search_pipeline=llmrank-rerank" in out
    assert '"api_key": "k"' in out


def test_cli_json_output_matches_the_functions(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--service-url", "https://r.example.com", "--public-network", "--json", "--size", "9"]
    assert run_cli([*argv, "--opensearch-version", "3.7"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = blueprint_requests(
        "https://r.example.com", private=False, size=9, opensearch_version="3.7"
    )
    assert printed == [request.as_dict() for request in expected]
    # the flags override what the URL suggests, both ways
    for url, flag, private in [
        ("https://r.example.com", "--private-network", True),
        ("http://10.0.0.5:8080", "--public-network", False),
    ]:
        assert run_cli(["--service-url", url, flag, "--json", "--opensearch-version", "3.7"]) == 0
        printed = json.loads(capsys.readouterr().out)
        for given, equal in ((private, True), (not private, False)):
            made = blueprint_requests(url, private=given, opensearch_version="3.7")
            assert (printed == [r.as_dict() for r in made]) is equal


def test_cli_prints_the_settings_of_the_version_asked(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--service-url", "https://r.example.com:443", "--json", "--opensearch-version"]
    assert run_cli([*argv, "2.13.0"]) == 0
    settings, created = json.loads(capsys.readouterr().out)[:2]
    assert created["body"]["client_config"]["read_timeout"] == 35_000
    assert created["body"]["actions"][0]["url"] == "https://r.example.com/v1/rerank"
    assert "only_run_on_ml_node" not in json.dumps(settings)
    with pytest.raises(ValueError, match="never calls a private"):
        run_cli(["--service-url", "http://192.168.1.9:8080", "--opensearch-version", "2.14"])


def test_cli_counts_private_addresses_as_the_version_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def settings(*argv: str) -> dict[str, Any]:
        assert run_cli(["--json", *argv]) == 0
        printed: dict[str, Any] = json.loads(capsys.readouterr().out)[0]["body"]["persistent"]
        return printed

    flag = "plugins.ml_commons.connector.private_ip_enabled"
    legacy_only = ["--service-url", "http://12.1.2.3:8080", "--opensearch-version"]
    assert flag in settings(*legacy_only, "3.2")
    assert flag not in settings(*legacy_only, "3.3")
    assert flag not in settings(*legacy_only, "3.2", "--public-network")
    with pytest.raises(ValueError, match="never calls a private"):
        run_cli([*legacy_only, "2.14"])
    modern_only = ["--service-url", "http://169.254.10.1:8080", "--opensearch-version"]
    assert flag not in settings(*modern_only, "2.14")
    assert flag in settings(*modern_only, "2.19.4")
    assert flag in settings(*modern_only, "3.2", "--private-network")


def test_cli_refuses_a_bad_url() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        run_cli(["--service-url", "10.0.0.5:8080", "--opensearch-version", "3.7"])
