"""Pipelines the runtime tests run, in-process and in ``weir worker`` subprocesses.

Subprocess workers learn their pipeline's name from ``WEIR_TEST_PIPELINE`` so
that every test uses topics of its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from pydantic import BaseModel

from weir.streams import Branch, Pipeline, RetryPolicy, any_of


def linear(name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step()
    def parse(text: str, n: int) -> dict[str, object]:
        return {"words": text.split(), "n": n}

    @p.step(depends_on=[parse])
    async def count(parse: dict[str, object]) -> dict[str, object]:
        await asyncio.sleep(0.005)  # an awaited call, like a model's
        return {"n": parse["n"], "words": len(parse["words"])}  # type: ignore[arg-type]

    @p.step(depends_on=[count])
    def answer(count: dict[str, int]) -> str:
        return f"request {count['n']} has {count['words']} words"

    return p


def diamond(name: str, slow_s: float = 0.0, hold_s: float = 0.0) -> Pipeline:
    """``hold_s``: the fan-in ``combine`` blocks this long (its thread) before it returns."""
    p = Pipeline(name)

    @p.step()
    def start(n: int) -> int:
        return n + 1

    @p.step(depends_on=[start])
    async def double(start: int) -> int:
        await asyncio.sleep(slow_s)
        return start * 2

    @p.step(depends_on=[start])
    def square(start: int) -> int:
        return start * start

    @p.step(depends_on=[double, square])
    def combine(double: int, square: int) -> dict[str, int]:
        time.sleep(hold_s)
        return {"double": double, "square": square, "sum": double + square}

    return p


class SupportRequest(BaseModel):
    text: str
    customer: str


def branching(name: str) -> Pipeline:
    # The input model lets later steps read request fields (customer, text) by name.
    p = Pipeline(name, input=SupportRequest)

    @p.step()
    def classify(text: str) -> str:
        return "balance" if "balance" in text else "dispute"

    @p.step(depends_on=[classify], inline=True)
    def route(classify: str) -> Branch:
        return Branch("lookup" if classify == "balance" else "embed", classify)

    @p.step(depends_on=[route])
    def lookup(route: str, customer: str) -> dict[str, str]:
        return {"customer": customer, "balance": str(len(customer) * 100)}

    @p.step(depends_on=[route])
    def embed(route: str, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    @p.step(depends_on=[embed])
    def reply(embed: list[int]) -> Branch:
        score = sum(embed) / (10 * len(embed))
        return Branch("escalate" if score < 0.45 else "deliver", {"score": round(score, 3)})

    @p.step(depends_on=[reply])
    def deliver(reply: dict[str, float]) -> str:
        return f"delivered with score {reply['score']}"

    @p.step(depends_on=[reply])
    def escalate(reply: dict[str, float], customer: str) -> dict[str, str]:
        return {"to": "human", "customer": customer, "why": f"score {reply['score']}"}

    return p


def rejoin(name: str, *, any_branch: bool = True) -> Pipeline:
    """classify -> route --Branch--> path_a | path_b -> finish: the two-branch rejoin.

    ``any_branch=False`` declares ``finish`` with plain ``depends_on`` (all of them), a
    join that can never complete: one of its inputs is always skipped.
    """
    p = Pipeline(name)

    @p.step()
    def classify(n: int) -> dict[str, int | str]:
        return {"n": n, "lane": "a" if n % 2 == 0 else "b"}

    @p.step(depends_on=[classify], inline=True)
    def route(classify: dict[str, int | str]) -> Branch:
        return Branch(f"path_{classify['lane']}", {"n": classify["n"]})

    @p.step(depends_on=[route])
    def path_a(route: dict[str, int]) -> dict[str, object]:
        return {"via": "a", "value": route["n"] * 10}

    @p.step(depends_on=[route])
    async def path_b(route: dict[str, int]) -> dict[str, object]:
        return {"via": "b", "value": route["n"] + 1000}

    if any_branch:

        @p.step(depends_on=any_of(path_a, path_b), inline=True)
        def finish(
            answer: dict[str, object], path_a: dict[str, object] | None
        ) -> dict[str, object]:
            return {**answer, "took_a": path_a is not None}

    else:

        @p.step(depends_on=[path_a, path_b])
        def finish(path_a: dict[str, object], path_b: dict[str, object]) -> dict[str, object]:
            return {**path_a, **path_b}

    return p


def hung(name: str) -> Pipeline:
    """A synchronous step that never returns (as a hung client library does), 0.5 s timeout."""
    p = Pipeline(name, retry=RetryPolicy(maximum_attempts=1))

    @p.step(timeout=0.5)
    def wait_forever(n: int) -> int:
        threading.Event().wait()
        return n

    return p


def inline_chain(name: str) -> Pipeline:
    """Three inline steps in a row: the second and third run in place (``_in_place``)."""
    p = Pipeline(name)

    @p.step(inline=True)
    def first(n: int) -> int:
        return n + 1

    @p.step(depends_on=[first], inline=True)
    def second(first: int) -> int:
        return first * 2

    @p.step(depends_on=[second], inline=True)
    def third(second: int) -> dict[str, int]:
        return {"n": second + 1}

    return p


_NAME = os.environ.get("WEIR_TEST_PIPELINE", "test-pipeline")
_SLOW = float(os.environ.get("WEIR_TEST_SLOW_S", "0"))
_HOLD = float(os.environ.get("WEIR_TEST_HOLD_S", "0"))
diamond_pipeline = diamond(_NAME, _SLOW, _HOLD)
hung_pipeline = hung(_NAME)
inline_chain_pipeline = inline_chain(_NAME)
