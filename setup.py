"""Compiles the worker's hot path with mypyc: the wire codecs and the step runner.

These modules are plain typed Python and run as such when not compiled; compiled, the
codecs take 2-7x less CPU per message and a worker ~35% less per request (BENCHMARKS.md).
The rest of the package is not compiled.  ``WEIR_PURE_PYTHON=1`` skips the compilation;
so does a machine without a C compiler (with a warning), and weir then runs the same code,
slower.  A module is listed here only if the whole suite passes with it compiled: mypyc
does not set ``__cause__`` on ``raise ... from`` (the executor's ``StepError`` needs it, so
``streams/executor.py`` stays out) and its dataclasses need their field types at run time.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "weir/schemas/_envelope_codec.py",
    "weir/schemas/_trace_codec.py",
    "weir/traces/_row_decoder.py",
    "weir/schemas/_result_codec.py",
    "weir/streams/_attempt.py",
    "weir/streams/_attempt_trace.py",
    "weir/streams/_record_tasks.py",
    "weir/streams/_trace_batch.py",
    "weir/streams/offsets.py",
    "weir/streams/runner.py",
]


def _extensions() -> list[object]:
    if os.environ.get("WEIR_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify

        return list(mypycify(COMPILED, opt_level="3", group_name="weir._codecs"))
    except Exception as exc:  # no compiler, no headers: weir still works, uncompiled
        print(f"weir: not compiling the codecs ({exc}); running them as Python", file=sys.stderr)
        return []


setup(ext_modules=_extensions())
