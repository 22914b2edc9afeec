"""The hot path's modules run compiled (mypyc, ``setup.py``) in an install made by ``make install``.

What they do is checked by the rest of the suite, which then runs the compiled code (the
codecs against fastavro: ``test_envelope_codec.py``, ``test_trace_codec.py``,
``tests/traces/test_row_decoder.py``); this makes sure a build that silently fell back to
Python, or a compiled module older than its source, is noticed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
from pathlib import Path

import pytest


def _compiled() -> list[str]:
    """The modules ``setup.py`` compiles (its ``COMPILED`` list), as module names."""
    tree = ast.parse((Path(__file__).parents[2] / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


COMPILED = _compiled()


def _origin(name: str) -> str:
    """The file ``name`` loads from: its package's extension module, else its source.

    Found in the package's folder, not from ``__file__`` (which mypyc can set off when
    another compiled module of the group imported it first).
    """
    parent, _, last = name.rpartition(".")
    folder = Path(importlib.import_module(parent).__path__[0])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / f"{last}{suffix}").exists():
            return str(folder / f"{last}{suffix}")
    return str(folder / f"{last}.py")


def test_the_codecs_and_the_step_runner_are_among_the_compiled() -> None:
    assert {"weir.schemas._envelope_codec", "weir.streams.runner"} <= set(COMPILED)


@pytest.mark.parametrize("name", COMPILED)
def test_the_hot_path_modules_are_compiled_in_this_install(name: str) -> None:
    origin = _origin(name)
    assert not origin.endswith(".py"), (
        f"{name} runs as Python ({origin}): reinstall with a C compiler and Python's"
        " headers (make install), or see setup.py"
    )


@pytest.mark.parametrize("name", COMPILED)
def test_no_compiled_module_is_older_than_its_source(name: str) -> None:
    origin = Path(_origin(name))
    source = origin.parent / (name.rsplit(".", 1)[1] + ".py")
    assert origin.stat().st_mtime >= source.stat().st_mtime, (
        f"{source} changed after it was compiled: the old code still runs (make install)"
    )
