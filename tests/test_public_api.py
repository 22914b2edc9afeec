"""Public API: ``__all__`` lists exactly what each public module exposes; doctests pass."""

import __future__

import doctest
import importlib
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import weir

ROOT = Path(__file__).resolve().parent.parent

API_MODULES = [
    "weir.streams",
    "weir.schemas",
    "weir.topics",
    "weir.core.errors",
    "weir.processors",
    "weir.processors.providers",
    "weir.replays",
    "weir.traces",
]
DOCTEST_MODULES = [
    "weir.streams",
    "weir.streams.pipeline",
    "weir.streams.branch",
    "weir.streams.dependencies",
    "weir.topics.names",
    "weir.topics.lag",
    "weir.schemas",
    "weir.core.config",
    "weir",
    "weir.streams.redaction",
    "weir.streams.review",
    "weir.streams.conversation",
    "weir.traces",
    "weir.traces.schema",
    "weir.traces.rows",
    "weir.traces.results",
    "weir.traces.sql",
    "weir.dashboard",
    "weir.core.secrets",
    "weir.processors",
    "weir.processors.cost",
    "weir.processors.circuit_breaker",
    "weir.processors.features",
    "weir.processors.limits",
    "weir.processors.tokens",
    "weir.processors.router",
    "weir.processors.condition",
    "weir.processors.rules",
    "weir.processors.budget",
    "weir.processors.batcher",
    "weir.processors._spend_sketch",
    "weir.processors._spend_table",
    "weir.streams._bounded",
    "weir.streams.threads",
    "weir.schemas.trace_batch",
    "weir.processors.providers.openai",
    "weir.processors.providers.anthropic",
    "weir.processors.providers.local",
    "weir.streams.side_effects",
    "weir.processors.shadow",
    "weir.replays",
    "weir.replays.records",
    "weir.replays.compare",
]
# Typing helpers a module imports for its own annotations are not part of its API.
_TYPING_MODULES = {"typing", "typing_extensions", "collections.abc", "__future__"}


def _public_names(module: ModuleType) -> set[str]:
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, __future__._Feature):  # `from __future__ import annotations`
            continue
        if getattr(value, "__module__", None) in _TYPING_MODULES:
            continue
        names.add(name)
    return names


@pytest.mark.parametrize("name", API_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == _public_names(module)
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("name", API_MODULES)
def test_every_name_in_all_is_importable(name: str) -> None:
    module = importlib.import_module(name)
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    for member in module.__all__:
        assert member in namespace
        assert namespace[member] is getattr(module, member)


def test_errors_are_exported_and_form_one_hierarchy() -> None:
    errors = importlib.import_module("weir.core.errors")
    for member in errors.__all__:
        cls = getattr(errors, member)
        assert issubclass(cls, errors.WeirError)
        assert isinstance(cls.error_type, str) and cls.error_type
    distinct = {getattr(errors, m).error_type for m in errors.__all__} - {"weir_error"}
    assert len(distinct) == len(errors.__all__) - 2  # WeirError and MessageError share it


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("WEIR_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, report=False)
    assert result.attempted > 0, f"{name} has no doctests"
    assert result.failed == 0


# -- each package imports on its own, in a fresh interpreter --------------------------------------
# (regression: weir/__init__ once imported streams eagerly, so importing schemas first was circular)

_STANDALONE = [
    "weir",
    "weir.core.errors",
    "weir.core.config",
    "weir.streams",
    "weir.schemas",
    "weir.topics",
    "weir.replays",
]


@pytest.fixture(scope="module")
def standalone_imports() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    # Started together so the interpreters boot in parallel.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in _STANDALONE
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    yield results


@pytest.mark.parametrize(
    "name",
    _STANDALONE,
)
def test_package_imports_standalone(
    name: str, standalone_imports: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = standalone_imports[name]
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]


def test_weir_reexports_the_same_objects() -> None:
    from weir import streams
    from weir.core import config, errors

    assert weir.Pipeline is streams.Pipeline
    assert weir.Branch is streams.Branch
    assert weir.WeirError is errors.WeirError
    assert weir.load_settings is config.load_settings


def test_weir_resolves_every_exported_name_lazily() -> None:
    namespace: dict[str, object] = {}
    exec("from weir import *", namespace)
    assert set(weir.__all__) <= set(namespace)
    for member in weir.__all__:
        assert getattr(weir, member) is namespace[member]
        assert getattr(weir, member).__name__ == member
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        weir.nope  # noqa: B018
