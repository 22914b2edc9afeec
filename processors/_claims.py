"""Budget reservations decided in the costs topic's order, the same in every worker.

A budgeted call's reservation is a *claim* event on the ``weir.costs`` topic
(key: the budget key, so all of a key's events are in one partition, in one
order).  Every worker reads every event of that partition in that order and
decides each claim the same way, from the spend and the claims held before it
in the log: granted if its amount fits under the limit beside the claims held,
or if none is held and the spend is below the limit (the last call runs alone).
A claim is held until the call's cost events (which name it) use it up or its
release event frees the rest; a claim whose worker died is dropped after
``CLAIM_TTL_MS``.  So the group as a whole behaves as one worker did: spend
stops within one call's cost of the limit, however many workers spend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

__all__ = ["CLAIM_TTL_MS", "Claim", "ClaimBook", "Verdict"]

CLAIM_TTL_MS = 600_000
"""A claim no cost or release event has settled is dropped this long after it was made
(its worker died mid-call); longer than any call's own timeout should be."""

Verdict = Literal["granted", "spent", "held"]
"""``spent``: the limit is reached; ``held``: other calls' claims leave no room for now."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A granted reservation: ``amount`` USD of ``key``'s budget set aside for one call."""

    id: str
    key: str
    amount: Decimal


class ClaimBook:
    """The claims held per budget key, as decided by reading the topic in order."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, tuple[Decimal, int]]] = {}
        """Budget key -> claim id -> (amount still held, expiry in epoch ms)."""
        self._waiting: dict[str, asyncio.Future[Verdict]] = {}

    def expect(self, claim_id: str) -> asyncio.Future[Verdict]:
        """A future for the verdict on our own claim ``claim_id`` (set before it is sent)."""
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting[claim_id] = future
        return future

    def forget(self, claim_id: str) -> None:
        self._waiting.pop(claim_id, None)

    def reserved(self, key: str, at_ms: int) -> Decimal:
        """USD held by ``key``'s unexpired claims at ``at_ms``."""
        held = self._held.get(key)
        if not held:
            return Decimal(0)
        return sum((left for left, expires in held.values() if expires > at_ms), Decimal(0))

    def holds(self, key: str) -> bool:
        return bool(self._held.get(key))

    def decide(self, event: dict[str, Any], spent: Callable[[str, Any, int], Decimal]) -> None:
        """Apply a claim event: grant it or not, from the state before it in the log."""
        key, claim_id, at = str(event["key"]), str(event["event_id"]), int(event["ts"])
        amount, limit = Decimal(str(event["amount_usd"])), Decimal(str(event["limit_usd"]))
        used = spent(key, str(event["window"]), at)
        self._expire(key, at)
        reserved = self.reserved(key, at)
        verdict: Verdict
        if used + reserved + amount <= limit or (reserved == 0 and used < limit):
            verdict = "granted"
            if amount:
                self._held.setdefault(key, {})[claim_id] = (amount, at + CLAIM_TTL_MS)
        else:
            verdict = "spent" if used >= limit else "held"
        future = self._waiting.pop(claim_id, None)
        if future is not None and not future.done():
            future.set_result(verdict)

    def settle(self, key: str, claim_id: str | None, cost: Decimal) -> bool:
        """A cost event of ``claim_id``: its claim holds that much less; whether it changed."""
        held = self._held.get(key)
        if claim_id is None or not held or claim_id not in held:
            return False
        left, expires = held[claim_id]
        left -= min(cost, left)
        if left:
            held[claim_id] = (left, expires)
        else:
            self.release(key, claim_id)
        return True

    def release(self, key: str, claim_id: str) -> bool:
        """A release event: the claim holds nothing any more; whether it was held."""
        held = self._held.get(key)
        if not held or held.pop(claim_id, None) is None:
            return False
        if not held:
            del self._held[key]  # no entry per key ever used: keys come from request fields
        return True

    def _expire(self, key: str, at_ms: int) -> None:
        held = self._held.get(key)
        if held:
            for claim_id in [c for c, (_, expires) in held.items() if expires <= at_ms]:
                self.release(key, claim_id)

    def fail_waiting(self, error: BaseException) -> None:
        """The ledger stops: no verdict will come for the claims still waiting."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)
