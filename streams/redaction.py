"""PII redaction of step inputs and outputs before they leave the worker on trace events."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_PATTERNS", "Pattern", "Redactor"]


@dataclass(frozen=True)
class Pattern:
    """A kind of PII and the regular expression that finds it."""

    kind: str
    regex: re.Pattern[str]


DEFAULT_PATTERNS: tuple[Pattern, ...] = (
    Pattern("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")),
)


class Redactor:
    """Replaces every match of its patterns with ``[REDACTED:<kind>]``.

    >>> Redactor().redact("write to ada@example.com today")
    'write to [REDACTED:email] today'
    """

    def __init__(self, patterns: Iterable[Pattern] = DEFAULT_PATTERNS) -> None:
        self.patterns = tuple(patterns)

    def redact(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.regex.sub(f"[REDACTED:{pattern.kind}]", text)
        return text
