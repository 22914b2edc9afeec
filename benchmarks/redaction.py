"""Redaction throughput: the labeled 600-string corpus, a 1 MB body, and the issue's e-mail body.

Reproduce (no broker; ~1 min):

    python benchmarks/redaction.py            # table
    python benchmarks/redaction.py --json     # machine-readable

* **corpus**: the 600 strings of ``tests/streams/test_redaction.py`` (400 with
  PII of every kind, 200 near misses), each redacted on its own, as trace
  events and error messages are.
* **1 MB body**: those strings joined by newlines and repeated to 1,000,000
  bytes, redacted as one text (a large ``log_io`` input).
* **e-mail body**: 8,000 e-mail addresses separated by spaces (~190 KB), and
  16,000: the case issue 8 measured at 1.4 s, with a x3.5 doubling ratio.

MB/s is input UTF-8 bytes (10^6) per second, best of ``--runs``; CPU time of
the redacting thread is reported beside wall time, because the machine is
shared and wall time includes other processes' turns.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' corpus

from tests.streams.test_redaction import corpus, email
from weir.streams.redaction import Redactor

ONE_MB = 1_000_000


def _best(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Best wall time and best CPU time of this thread, in seconds."""
    wall = cpu = float("inf")
    for _ in range(runs):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpu = min(cpu, time.thread_time() - c)
        wall = min(wall, time.perf_counter() - w)
    return wall, cpu


def _body(texts: list[str], size: int) -> str:
    joined = "\n".join(texts)
    body = "\n".join([joined] * (size // len(joined.encode()) + 1))
    return body.encode()[:size].decode("utf-8", "ignore")


def _emails(n: int) -> str:
    rng = random.Random(8)
    return " ".join(email(rng) for _ in range(n))


def run(runs: int) -> list[dict[str, object]]:
    redactor = Redactor(max_bytes=64 * ONE_MB)  # measure the redaction, not the cap
    texts = [text for text, _ in corpus()]
    body = _body(texts, ONE_MB)
    cases: list[tuple[str, int, Callable[[], object]]] = [
        (
            f"corpus ({len(texts)} strings)",
            sum(len(t.encode()) for t in texts),
            lambda: [redactor.redact(t) for t in texts],
        ),
        ("1 MB body", len(body.encode()), lambda: redactor.redact(body)),
    ]
    for n in (8000, 16000):
        text = _emails(n)
        cases.append(
            (f"{n} e-mail addresses", len(text.encode()), lambda t=text: redactor.redact(t))
        )
    rows: list[dict[str, object]] = []
    for name, size, fn in cases:
        wall, cpu = _best(fn, runs)
        rows.append(
            {
                "case": name,
                "bytes": size,
                "wall_ms": round(wall * 1000, 1),
                "cpu_ms": round(cpu * 1000, 1),
                "mb_per_s_wall": round(size / ONE_MB / wall, 2),
                "mb_per_s_cpu": round(size / ONE_MB / cpu, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs per case")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    rows = run(args.runs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'case':28} {'bytes':>10} {'wall ms':>9} {'cpu ms':>9} {'MB/s wall':>10} {'MB/s cpu':>9}"
    )
    for r in rows:
        print(
            f"{r['case']:28} {r['bytes']:>10} {r['wall_ms']:>9} {r['cpu_ms']:>9}"
            f" {r['mb_per_s_wall']:>10} {r['mb_per_s_cpu']:>9}"
        )
    double = rows[-1]["cpu_ms"], rows[-2]["cpu_ms"]
    print(f"doubling the e-mail body multiplied CPU time by {double[0] / double[1]:.2f}")  # type: ignore[operator]


if __name__ == "__main__":
    main()
