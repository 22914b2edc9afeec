"""Spend limits per pipeline, tenant or API key, over hour/day/month windows; the ledger is Kafka.

    >>> budget = Budget("support-daily", limit_usd="25.00", window="day", per="request.tenant")
    >>> budget.window, budget.limit_usd
    ('day', Decimal('25.00'))

A ``Router`` with a budget checks it before each call, against the worker's
``CostLedger`` (``weir.processors.ledger``: the ``weir.costs`` topic, reservations
that hold for every worker of the group, and what happens past ``budget_max_keys``).

Over budget, ``on_exceeded="reject"`` fails the call with ``budget_exceeded``
(not retried); ``"downgrade"`` evaluates the router's rules with
``budget_exceeded`` true, and only rules that read ``budget_exceeded`` may then
route (for example ``Rule("budget_exceeded", endpoint=small_model)``); if none
matches, the call is rejected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from weir.core.errors import ConfigError
from weir.processors.ledger import BudgetStatus, Claim, CostLedger, Window, window_start
from weir.processors.services import services_now
from weir.streams.context import current_scope

__all__ = ["Budget", "BudgetStatus", "CostLedger", "Reservation", "window_start"]


@dataclass(frozen=True)
class Budget:
    """A spend limit in USD over a calendar window (UTC), per pipeline or per a request field.

    ``per`` is ``pipeline``, ``request.<field>`` (a payload field, e.g. a tenant)
    or ``options.<name>`` (a request option, e.g. an API key; values of fields
    whose name contains ``key`` or ``token`` are hashed before they reach the
    topic).
    """

    name: str
    limit_usd: Decimal | str | int
    window: Window = "day"
    per: str = "pipeline"
    on_exceeded: Literal["reject", "downgrade"] = "reject"

    def __post_init__(self) -> None:
        where = f"budget {self.name!r}"
        try:
            limit = Decimal(str(self.limit_usd))
        except InvalidOperation:
            raise ConfigError(f"{where}: limit_usd must be a number of dollars") from None
        if not limit.is_finite() or limit < 0:
            raise ConfigError(f"{where}: limit_usd must be >= 0")
        object.__setattr__(self, "limit_usd", limit)
        if self.window not in ("hour", "day", "month"):
            raise ConfigError(f"{where}: window must be hour, day or month")
        if self.on_exceeded not in ("reject", "downgrade"):
            raise ConfigError(f"{where}: on_exceeded must be reject or downgrade")
        root, _, rest = self.per.partition(".")
        if not (self.per == "pipeline" or (root in ("request", "options") and rest)):
            raise ConfigError(
                f"{where}: per must be pipeline, request.<field> or options.<name>,"
                f" got {self.per!r}"
            )

    @property
    def limit(self) -> Decimal:
        return Decimal(self.limit_usd)

    def key(self) -> str:
        """The ledger key of the current request: ``budget/pipeline/scope``."""
        scope = current_scope()
        pipeline = scope.context.pipeline if scope is not None else "-"
        if self.per == "pipeline":
            return f"{self.name}/{pipeline}"
        root, _, name = self.per.partition(".")
        source: Mapping[str, Any] = {}
        if scope is not None:
            source = scope.context.request if root == "request" else scope.context.options
        value = source.get(name)
        text = "-" if value is None else str(value)
        if any(word in name.lower() for word in ("key", "token", "secret")):
            text = hashlib.sha256(text.encode()).hexdigest()[:16]
        return f"{self.name}/{pipeline}/{text}"

    async def _ledger(self) -> CostLedger:
        return await services_now().ledger()

    async def status(self) -> BudgetStatus:
        ledger = await self._ledger()
        return ledger.status(self.key(), self.window, self.limit)

    async def reserve(self, amount: Decimal) -> Reservation | None:
        """Reserve ``amount`` for a call, for all the group's workers; ``None`` when the spend
        leaves no room for it.

        While other calls' reservations (in any worker) block it but their actual
        spend may leave room, it waits for them to settle (so concurrency does not
        stop spending early).
        """
        ledger = await self._ledger()
        claim = await ledger.reserve(self.key(), self.window, self.limit, amount)
        if claim is None:
            return None
        return Reservation(ledger, claim.key, amount, claim=claim)

    async def unreserved(self) -> Reservation:
        """A reservation of nothing, to record the spend of a call allowed over budget."""
        return Reservation(await self._ledger(), self.key(), Decimal(0))

    def exceeded_message(self) -> str:
        return (
            f"budget {self.name!r} ({self.limit} USD per {self.window}, per {self.per}) is used"
            f" up for {self.key()!r}"
        )


@dataclass
class Reservation:
    """Money set aside for one routed call; ``spend`` settles, ``release`` frees the rest."""

    ledger: CostLedger
    key: str
    amount: Decimal
    claim: Claim | None = None
    """The group-wide claim holding ``amount`` (``None``: nothing was reserved)."""
    spent: Decimal = field(default=Decimal(0))
    _released: bool = False

    async def spend(self, cost: Decimal) -> None:
        """Count ``cost`` (against the claim) and return once it is counted (see ``record``)."""
        self.spent += cost
        await self.ledger.record(
            self.key, cost, claim=self.claim.id or None if self.claim else None
        )

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self.claim is not None:
                self.ledger.release(self.claim, self.amount - self.spent)
