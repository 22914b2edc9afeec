"""A circuit breaker per model endpoint: stop calling an endpoint that keeps failing.

    closed ──(failure_threshold failures within window_s)──▶ open
    open ──(cooldown_s passed)──▶ half_open: up to half_open_probes calls go through
    half_open ──(a probe succeeds)──▶ closed
    half_open ──(a probe fails)──▶ open (the cooldown starts again)

Only failures that say the endpoint is unwell count (timeouts, 5xx, 429,
broken streams, unreadable answers); a request the endpoint refuses as
invalid (4xx) is the caller's fault and does not, nor does a call that never
reached the endpoint (weir's own rate limits, a secret that cannot be
resolved).  Breakers belong to a worker (its ``ModelServices`` holds one per
endpoint name): each worker learns on its own, so one worker's network
trouble does not stop the others; the worker's ``/stats`` route shows them.

>>> breaker = CircuitBreaker("emb", BreakerPolicy(failure_threshold=2, cooldown_s=60))
>>> breaker.allow(), breaker.state
(True, 'closed')
>>> breaker.record_failure(); breaker.record_failure()
>>> breaker.allow(), breaker.state
(False, 'open')
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from weir.core.errors import ConfigError, ModelError, ModelRequestError

__all__ = ["BreakerPolicy", "CircuitBreaker", "Probe", "counts_against_circuit"]

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it probes its way back."""

    failure_threshold: int = 5
    """Failures within ``window_s`` that open the breaker."""
    window_s: float = 30.0
    cooldown_s: float = 10.0
    """How long an open breaker refuses calls before it lets a probe through."""
    half_open_probes: int = 1
    """Calls let through at once while half-open."""

    def __post_init__(self) -> None:
        problems = []
        if self.failure_threshold < 1:
            problems.append("failure_threshold must be >= 1")
        if self.window_s <= 0:
            problems.append("window_s must be > 0")
        if self.cooldown_s < 0:
            problems.append("cooldown_s must be >= 0")
        if self.half_open_probes < 1:
            problems.append("half_open_probes must be >= 1")
        if problems:
            raise ConfigError(f"invalid BreakerPolicy: {'; '.join(problems)}")


def counts_against_circuit(error: BaseException) -> bool:
    """Whether ``error`` says the endpoint is unwell (rather than the request is bad)."""
    return isinstance(error, ModelError) and not isinstance(error, ModelRequestError)


class CircuitBreaker:
    """The state of one endpoint's circuit in one worker (thread-safe)."""

    def __init__(self, endpoint: str, policy: BreakerPolicy | None = None) -> None:
        self.endpoint = endpoint
        self.policy = policy or BreakerPolicy()
        self._state: State = "closed"
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probes = 0
        self._lock = threading.Lock()
        self.opened = 0
        """Times this breaker has opened (a counter for health reports and tests)."""
        self.refused = 0
        """Calls refused while open."""

    @property
    def state(self) -> State:
        with self._lock:
            self._advance(time.monotonic())
            return self._state

    def _advance(self, now: float) -> None:
        if self._state == "open" and now - self._opened_at >= self.policy.cooldown_s:
            self._state = "half_open"
            self._probes = 0

    def allow(self) -> bool:
        """Whether a call may go to the endpoint now (a half-open probe counts as one)."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            if self._state == "closed":
                return True
            if self._state == "half_open" and self._probes < self.policy.half_open_probes:
                self._probes += 1
                return True
            self.refused += 1
            return False

    def record_success(self) -> None:
        with self._lock:
            if self._state != "closed":
                self._state = "closed"
                self._failures.clear()
            self._probes = 0

    def record_failure(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._state == "half_open":
                self._open(now)
                return
            if self._state == "open":
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.policy.window_s:
                self._failures.popleft()
            if len(self._failures) >= self.policy.failure_threshold:
                self._open(now)

    def release_probe(self) -> None:
        """A probe ended without saying anything about the endpoint (e.g. it was cancelled)."""
        with self._lock:
            if self._state == "half_open" and self._probes > 0:
                self._probes -= 1

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._failures.clear()
        self._probes = 0
        self.opened += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            out: dict[str, Any] = {
                "state": self._state,
                "recent_failures": len(self._failures),
                "opened": self.opened,
                "refused": self.refused,
            }
            if self._state == "open":
                out["retry_in_s"] = round(
                    max(0.0, self.policy.cooldown_s - (now - self._opened_at)), 3
                )
            return out


class Probe:
    """What one call tells its endpoint's breaker (``with Probe(breaker) as probe:``).

    ``success()`` or ``failure(error)`` reports the outcome; a call that leaves
    the block without either (cancelled, or failed before it reached the
    endpoint: a secret that cannot be resolved, weir's own limits) says nothing
    about the endpoint, so a half-open probe it took is freed for the next call.
    """

    __slots__ = ("_breaker", "_told")

    def __init__(self, breaker: CircuitBreaker | None) -> None:
        self._breaker = breaker
        self._told = False

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._told and self._breaker is not None:
            self._breaker.release_probe()

    def success(self) -> None:
        self._told = True
        if self._breaker is not None:
            self._breaker.record_success()

    def failure(self, error: BaseException) -> None:
        self._told = True
        if self._breaker is not None:
            if counts_against_circuit(error):
                self._breaker.record_failure()
            else:
                self._breaker.release_probe()
