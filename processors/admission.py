"""``Admission``: when an endpoint's call may start — its limits, pauses and slots.

An endpoint owns one.  A call waits, up to ``queue_timeout_s``, for its share of
the group's per-minute limits, for any ``Retry-After`` pause (this process's or
the group's) to end, for room in the request and token buckets, and for one of
the endpoint's call slots; only then does its own ``timeout_s`` start.  So a
busy endpoint makes calls wait, not fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator

from weir.core.errors import RateLimitedError
from weir.processors._group import group_now, group_pause_s, tell_group_of_pause
from weir.processors.group_share import GroupMembers
from weir.processors.limits import Limits, TokenBucket
from weir.processors.services import services_now

__all__ = ["MAX_PAUSE_S", "Admission"]

MAX_PAUSE_S = 600.0
"""The longest ``Retry-After`` honoured; a longer one is cut to this."""


class Admission:
    """The limits of endpoint ``name``: buckets, pauses, call slots and calls in flight."""

    def __init__(
        self, name: str, *, limits: Limits, pool_size: int | None, queue_timeout_s: float
    ) -> None:
        self.name = name
        self.queue_timeout_s = queue_timeout_s
        bounds = [b for b in (limits.max_concurrency, pool_size) if b]
        self.concurrency = min(bounds) if bounds else None
        """Calls in flight at once: the limit, and never more than the provider's pool."""
        self.in_flight = 0
        self._requests = (
            TokenBucket(limits.requests_per_minute) if limits.requests_per_minute else None
        )
        self._tokens = TokenBucket(limits.tokens_per_minute) if limits.tokens_per_minute else None
        # Per event loop: a semaphore or a group reader belongs to the loop that made it.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._members: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupMembers] = (
            weakref.WeakKeyDictionary()
        )
        self._paused_until = 0.0
        """Monotonic time before which no call starts (the endpoint's last ``Retry-After``)."""

    def pause(self, seconds: float) -> None:
        """A 429 asked for ``seconds`` (cut to ``MAX_PAUSE_S``): this process and its group wait."""
        seconds = min(seconds, MAX_PAUSE_S)
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        tell_group_of_pause(self.name, seconds)

    def debit_tokens(self, tokens: int) -> None:
        """Charge tokens used beyond the admission's estimate to the tokens-per-minute limit."""
        if self._tokens is not None:
            self._tokens.debit(tokens)

    @contextlib.asynccontextmanager
    async def admitted(self, tokens: int) -> AsyncIterator[None]:
        """Wait for room for a call of ``tokens`` estimated tokens, up to ``queue_timeout_s``."""
        deadline = time.monotonic() + self.queue_timeout_s
        what = f"endpoint {self.name!r}"
        await self._take_group_share()
        await self._wait_out_pause(deadline, what)
        if self._requests is not None:
            await self._requests.take(1, deadline=deadline, what=what)
        if self._tokens is not None:
            await self._tokens.take(tokens, deadline=deadline, what=what)
        slots = self._semaphore()
        if slots is not None:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await slots.acquire()
            except TimeoutError:
                raise RateLimitedError(
                    f"{what}: all {self.concurrency} call slots stayed busy for"
                    f" {self.queue_timeout_s:g}s"
                ) from None
            try:
                # A pause may have begun while this call waited for its slot.
                await self._wait_out_pause(deadline, what)
            except BaseException:
                slots.release()
                raise
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if slots is not None:
                slots.release()

    async def _wait_out_pause(self, deadline: float, what: str) -> None:
        """Wait while a ``Retry-After`` of this process or of the group holds the endpoint."""
        while (paused := max(self._paused_until - time.monotonic(), group_pause_s(self.name))) > 0:
            if time.monotonic() + paused > deadline:
                raise RateLimitedError(
                    f"{what} asked to wait {paused:.1f}s more (Retry-After), past queue_timeout_s"
                )
            await asyncio.sleep(paused)

    async def _take_group_share(self) -> None:
        """Inside a worker, per-minute limits are the group's: keep 1/members of them."""
        if self._requests is None and self._tokens is None:
            return
        group = group_now()
        if group is None:
            return
        loop = asyncio.get_running_loop()
        members = self._members.get(loop)
        if members is None:
            services = services_now()
            members = self._members[loop] = GroupMembers(services.settings)
            services.add_closer(members.aclose)
        count = await members.count(group)
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.set_share(count)

    def _semaphore(self) -> asyncio.Semaphore | None:
        if self.concurrency is None:
            return None
        loop = asyncio.get_running_loop()
        sem = self._slots.get(loop)
        if sem is None:
            sem = self._slots[loop] = asyncio.Semaphore(self.concurrency)
        return sem
