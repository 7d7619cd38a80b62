"""``llmrank serve`` arguments: defaults, validation, API keys from the environment."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from haystack_llmrank.cli import serve
from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.scorers.onnx_metadata import METADATA_FILE
from opensearch_ltr.service import ServiceConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser)
    return parser.parse_args(list(argv))


def test_defaults_bind_loopback_and_read_the_key_from_the_environment() -> None:
    args = parse()
    assert (args.host, args.port, args.api_key_env, args.no_auth) == (
        "127.0.0.1",
        8080,
        "LLMRANK_API_KEY",
        False,
    )
    assert (args.model, args.backend, args.timeout_s, args.max_batch_requests) == (
        "default",
        "torch",
        30.0,
        16,
    )
    assert (args.header_timeout_s, args.max_connections) == (10.0, 512)
    assert parse("--strategy", "tdpart").strategy == "tdpart"
    assert args.strategy is None  # the readout's own, chosen when the model loads


@pytest.mark.parametrize(
    "argv",
    [
        ("--port", "70000"),
        ("--port", "-1"),
        ("--timeout-s", "0"),
        ("--timeout-s", "soon"),
        ("--max-documents", "0"),
        ("--header-timeout-s", "0"),
        ("--timeout-s", "inf"),
        ("--shutdown-grace-s", "inf"),
        ("--shutdown-grace-s", "nan"),
        ("--shutdown-grace-s", "-1"),
        ("--max-connections", "0"),
        ("--backend", "tpu"),
        ("--strategy", "bubble"),
        ("--host", ""),
        ("--host", " "),
    ],
)
def test_bad_values_are_refused(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "error" in capsys.readouterr().err


def test_keys_come_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEYS", " first , second,,")
    assert serve.api_keys(parse("--api-key-env", "MY_KEYS")) == ("first", "second")


def test_a_missing_key_is_an_error_unless_auth_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMRANK_API_KEY", raising=False)
    with pytest.raises(ValueError, match="set LLMRANK_API_KEY"):
        serve.api_keys(parse())
    monkeypatch.setenv("LLMRANK_API_KEY", " , ")
    with pytest.raises(ValueError, match="--no-auth"):
        serve.api_keys(parse())
    assert serve.api_keys(parse("--no-auth")) == ()


def test_run_passes_the_limits_to_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import opensearch_ltr.service as service
    from opensearch_ltr.service.app import CONFIG

    served: list[ServiceConfig] = []

    async def fake_run_service(app: Any, **kwargs: Any) -> None:
        served.append(app[CONFIG])

    monkeypatch.setattr(service, "run_service", fake_run_service)
    monkeypatch.setattr(service, "stop_on_signals", lambda stop: None)
    argv = ("--no-auth", "--header-timeout-s", "2.5", "--max-connections", "7", "--timeout-s", "9")
    assert serve.run(parse(*argv, "--shutdown-grace-s", "0")) == 0
    (config,) = served
    assert (config.header_timeout_s, config.max_connections, config.timeout_s) == (2.5, 7, 9.0)
    assert config.shutdown_grace_s == 0
    assert config.api_keys == ()
    assert "stopped" in capsys.readouterr().out


def test_run_checks_the_model_options_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    import opensearch_ltr.service as service

    served: list[Any] = []

    async def fake_run_service(app: Any, **kwargs: Any) -> None:
        served.append(app)

    monkeypatch.setattr(service, "run_service", fake_run_service)
    with pytest.raises(ValueError, match="--window-size 2 is over the 1 labels"):
        serve.run(parse("--no-auth", "--window-size", "2"))
    # FIRST's template is read by its labels in sliding windows, which order_invariant refuses
    with pytest.raises(ValueError, match="order_invariant needs the 'disjoint' strategy"):
        serve.run(parse("--no-auth", "--template", "first", "--order-invariant"))
    with pytest.raises(ValueError, match="dtype does not apply to the onnx backend"):
        serve.run(parse("--no-auth", "--backend", "onnx", "--dtype", "float16"))
    assert served == []


def test_an_onnx_model_that_is_no_export_is_refused_before_serving(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The onnx backend's folder was first read by the worker, after the port was bound."""
    import opensearch_ltr.service as service

    served: list[Any] = []

    async def fake_run_service(app: Any, **kwargs: Any) -> None:
        served.append(app)

    monkeypatch.setattr(service, "run_service", fake_run_service)
    missing = tmp_path / "no export"
    with pytest.raises(ModelResolutionError, match=f"{missing} is not a folder"):
        serve.run(parse("--no-auth", "--backend", "onnx", "--model", str(missing)))
    with pytest.raises(ModelResolutionError, match="loads an export folder by path"):
        serve.run(parse("--no-auth", "--backend", "onnx"))  # the default model
    missing.mkdir()
    with pytest.raises(ModelResolutionError, match=f"holds no {METADATA_FILE}"):
        serve.run(parse("--no-auth", "--backend", "onnx", "--model", str(missing)))
    assert served == []


def test_an_empty_host_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    """It failed later with the resolver's "Name or service not known"."""
    with pytest.raises(SystemExit) as exited:
        parse("--host", "")
    assert exited.value.code == 2
    assert "argument --host: expected an address or host name" in capsys.readouterr().err


@pytest.mark.parametrize("loaded_while_serving", [True, False])
def test_model_ready_is_announced_only_while_serving(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    loaded_while_serving: bool,
) -> None:
    """A load that ended after a stop printed "model ready" after "stopped"."""
    import opensearch_ltr.service as service
    from opensearch_ltr.service.app import BATCHER

    served: list[Any] = []

    async def fake_run_service(app: Any, *, stop: asyncio.Event, **kwargs: Any) -> None:
        served.append(app)
        if loaded_while_serving:
            app[BATCHER].loaded.set_result(None)
        stop.set()  # as a signal does; run_service returns once it is set

    monkeypatch.setattr(service, "run_service", fake_run_service)
    monkeypatch.setattr(service, "stop_on_signals", lambda stop: None)
    assert serve.run(parse("--no-auth")) == 0
    if not loaded_while_serving:
        served[0][BATCHER].loaded.set_result(None)  # the load ends after the stop
    lines = capsys.readouterr().out.splitlines()
    expected = ["llmrank serve: model ready"] if loaded_while_serving else []
    assert lines == [*expected, "llmrank serve: stopped"]
