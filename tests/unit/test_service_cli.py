"""``llmrank serve`` arguments: defaults, validation, API keys from the environment."""

from __future__ import annotations

import argparse

import pytest

from haystack_llmrank.cli import serve


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


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


@pytest.mark.parametrize(
    "argv",
    [
        ("--port", "70000"),
        ("--port", "-1"),
        ("--timeout-s", "0"),
        ("--timeout-s", "soon"),
        ("--max-documents", "0"),
        ("--backend", "tpu"),
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
