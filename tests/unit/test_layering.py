"""Layering: the engine and each adapter import without the others' stacks; the CLI loads lazily."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import PROJECT_ROOT

ENGINE = (
    "haystack_llmrank",
    "haystack_llmrank.reranker",
    "haystack_llmrank.prompt",
    "haystack_llmrank.labels",
    "haystack_llmrank.scorers.torch_scorer",
    "haystack_llmrank.scorers.onnx_scorer",
    "haystack_llmrank.strategies",
    "haystack_llmrank.models",
    "haystack_llmrank.backends",
    "haystack_llmrank.ranking",
    "haystack_llmrank.training",
    "haystack_llmrank.evaluation",
)
OPENSEARCH_ADAPTER = (
    "opensearch_ltr",
    "opensearch_ltr.client_rescorer",
    "opensearch_ltr.ml_commons_blueprints",
    "opensearch_ltr.service",
)

# Imports the modules in argv[2:] with the top-level packages in argv[1] (comma-separated)
# made unimportable, then prints the sorted names of every module loaded.
IMPORT_BLOCKED = """
import importlib, json, sys
for name in filter(None, sys.argv[1].split(",")):
    sys.modules[name] = None
for module in sys.argv[2:]:
    importlib.import_module(module)
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""

# Runs ``llmrank`` with argv[1:] and prints the sorted names of every module loaded.
RUN_CLI = """
import contextlib, io, json, sys
from haystack_llmrank.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(script: str, *argv: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``script``; fails on its error."""
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def tops(modules: set[str]) -> set[str]:
    """The top-level packages of ``modules``."""
    return {name.split(".")[0] for name in modules}


def test_engine_imports_without_haystack_opensearch_or_pytrec_eval() -> None:
    loaded = loaded_modules(IMPORT_BLOCKED, "haystack,opensearchpy,pytrec_eval", *ENGINE)
    assert set(ENGINE) <= loaded
    assert not {"haystack", "opensearchpy", "pytrec_eval", "opensearch_ltr"} & tops(loaded)


def test_opensearch_adapter_imports_without_haystack_or_pytrec_eval() -> None:
    loaded = loaded_modules(IMPORT_BLOCKED, "haystack,pytrec_eval", *OPENSEARCH_ADAPTER)
    assert set(OPENSEARCH_ADAPTER) <= loaded
    assert not {"haystack", "pytrec_eval"} & tops(loaded)
    assert "haystack_llmrank.components" not in loaded


def test_evaluation_without_pytrec_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from haystack_llmrank.evaluation import evaluate

    monkeypatch.setitem(sys.modules, "pytrec_eval", None)
    with pytest.raises(RuntimeError, match=r"llmrank\[eval\]"):
        evaluate({"q": {"d": 1.0}}, {"q": {"d": 1}})


def test_bench_without_pytrec_eval_names_the_extra_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from haystack_llmrank.cli import main

    monkeypatch.setitem(sys.modules, "pytrec_eval", None)
    assert main(["bench", "--data-dir", str(tmp_path / "absent")]) == 2
    assert "pip install 'llmrank[eval]'" in capsys.readouterr().err


HEAVY = {"torch", "transformers", "pytrec_eval", "tqdm", "haystack", "opensearchpy", "aiohttp"}


@pytest.mark.parametrize(
    ("argv", "subcommand"),
    [
        (["serve", "--help"], "serve"),
        (["-v", "bench", "--help"], "bench"),
        (["train", "--help"], "train"),
        (["--help"], None),
    ],
)
def test_help_loads_only_the_registration_of_its_subcommand(
    argv: list[str], subcommand: str | None
) -> None:
    loaded = loaded_modules(RUN_CLI, *argv)
    assert not HEAVY & tops(loaded)
    assert not {name for name in loaded if name.startswith("haystack_llmrank.bench.")} - {
        "haystack_llmrank.bench.config"
    }
    commands = {name for name in loaded if name.startswith("haystack_llmrank.cli.")}
    expected = {f"haystack_llmrank.cli.{subcommand}"} if subcommand else set()
    assert commands - {"haystack_llmrank.cli.options"} == expected


def test_onnx_scorer_and_export_loading_do_not_load_the_exporter() -> None:
    loaded = loaded_modules(
        IMPORT_BLOCKED, "", "haystack_llmrank.scorers.onnx_scorer", "haystack_llmrank.backends"
    )
    loaded |= loaded_modules(IMPORT_BLOCKED, "", "haystack_llmrank.scorers.onnx_loading")
    assert not {name for name in loaded if name.startswith("haystack_llmrank.export")}


MOVED = [
    ("haystack_llmrank.export.metadata", "haystack_llmrank.scorers.onnx_metadata"),
    ("haystack_llmrank.export.loading", "haystack_llmrank.scorers.onnx_loading"),
    ("haystack_llmrank.export.pipeline", "haystack_llmrank.export.onnx_folder"),
    ("haystack_llmrank.bench.models", "haystack_llmrank.bench.model_loading"),
    ("opensearch_ltr.blueprints", "opensearch_ltr.ml_commons_blueprints"),
    ("opensearch_ltr.rescorer", "opensearch_ltr.client_rescorer"),
    ("opensearch_ltr.server_rescore", "opensearch_ltr.server_applied_rescore"),
]


@pytest.mark.parametrize(("old", "new"), MOVED)
def test_old_import_paths_give_the_moved_objects(old: str, new: str) -> None:
    moved = importlib.import_module(new)
    alias = importlib.import_module(old)
    public = [name for name in vars(moved) if not name.startswith("_")]
    assert public
    for name in public:
        assert getattr(alias, name) is getattr(moved, name)
    with pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018


def test_bench_finds_its_data_without_the_package_location(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from haystack_llmrank.bench.config import DATA_DIR_VARIABLE, default_data_dir

    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    assert default_data_dir() == Path("..", "shared", "data", "trec-dl19")
    monkeypatch.setenv(DATA_DIR_VARIABLE, "/data/dl19")
    assert default_data_dir() == Path("/data/dl19")


def test_bench_sets_no_attribute_of_an_engine_object() -> None:
    """The bench varies the engine through its constructor, never by assignment."""

    def foreign(target: str) -> bool:
        target = target.strip()
        own = target.startswith("self.") and target.count(".") == 1
        return "." in target and "[" not in target and not own

    found = []
    for path in (PROJECT_ROOT / "haystack_llmrank" / "bench").glob("*.py"):
        for line in path.read_text().splitlines():
            left, equals, _ = line.partition(" = ")
            targets = left.split(":")[0].split(",")
            if equals and "(" not in left and any(foreign(t) for t in targets):
                found.append(f"{path.name}: {line.strip()}")
    assert not found
