"""Compiles the worker's hot path with mypyc: the wire codecs, the step runner and its runtime.

These modules are plain typed Python and run as such when not compiled; compiled, the
codecs take 2-7x less CPU per message and a worker ~35% less per request (BENCHMARKS.md).
The rest of the package is not compiled.  ``WEIR_PURE_PYTHON=1`` skips the compilation;
so does a machine without a C compiler (with a warning), and weir then runs the same code,
slower.  A module is listed here only if the whole suite passes with it compiled: mypyc
does not set ``__cause__`` on ``raise ... from`` (compiled modules raise
``weir.core._cause.caused_by(error, cause)`` instead) and its dataclasses need their field
types at run time (``streams/context.py`` imports them for type checking only: not listed).
A module with doctests stays out too: doctest cannot see inside a compiled one.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "weir/schemas/_clock.py",
    "weir/schemas/_envelope.py",
    "weir/schemas/_envelope_codec.py",
    "weir/schemas/_trace_codec.py",
    "weir/traces/_row_decoder.py",
    "weir/traces/_event_block.py",
    "weir/schemas/_result_codec.py",
    "weir/streams/_attempt.py",
    "weir/streams/_attempt_trace.py",
    "weir/streams/_emitter.py",
    "weir/streams/_failures.py",
    "weir/streams/_out_message.py",
    "weir/streams/_record_tasks.py",
    "weir/streams/_trace_batch.py",
    "weir/streams/answer.py",
    "weir/streams/_answer_writer.py",
    "weir/streams/executor.py",
    "weir/streams/ingress.py",
    "weir/streams/runner.py",
    "weir/streams/_runtime.py",
    "weir/streams/offsets.py",
    "weir/streams/table.py",
    "weir/streams/tracing.py",
    "weir/topics/_murmur2.py",
]


def _extensions() -> list[object]:
    if os.environ.get("WEIR_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify

        # The same build wherever it runs: no config file (the project's mypy settings are
        # for checking, not compiling) and no third-party packages (pip builds weir before
        # it installs them; their types are ``Any`` to mypyc either way).
        flags = ["--config-file=", "--no-site-packages", "--ignore-missing-imports"]
        return list(mypycify([*flags, *COMPILED], opt_level="3", group_name="weir._codecs"))
    except (Exception, SystemExit) as exc:  # no compiler, a type error: weir runs uncompiled
        print(f"weir: not compiling the hot path ({exc}); running it as Python", file=sys.stderr)
        return []


setup(ext_modules=_extensions())
