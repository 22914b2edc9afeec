"""The PII kinds weir finds, as regular expressions with checks (see ``weir.streams.redaction``).

Every pattern runs in time linear in the text: quantifiers that could
backtrack over a long run are bounded (an IPv6 address is at most 45
characters), and each may start only where its look-behind allows.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DEFAULT_PATTERNS", "Detector", "Finding", "Pattern", "luhn_valid"]


@dataclass(frozen=True)
class Finding:
    """A piece of PII in a text: ``text[start:end]`` is of ``kind``."""

    kind: str
    start: int
    end: int


class Detector(Protocol):
    """Anything that finds PII: ``find(text)`` yields ``Finding``s."""

    def find(self, text: str) -> Iterable[Finding]: ...


@dataclass(frozen=True)
class Pattern:
    """A kind of PII, the regular expression that finds it, and an optional check.

    ``validate`` receives the matched text (``group``); a match it rejects is not PII.
    """

    kind: str
    regex: re.Pattern[str]
    validate: Callable[[str], bool] | None = None
    group: int | str = 0
    """The part of the match that is the secret (``password`` of ``user:password@``)."""
    needs: str = ""
    """Text every match contains: without it in the text, the regex is not run at all."""

    def find(self, text: str) -> Iterable[Finding]:
        if self.needs and self.needs not in text:  # a C-speed scan saves a regex pass
            return
        group = self.group
        for match in self.regex.finditer(text):
            value = match.group(group)
            if value and (self.validate is None or self.validate(value)):
                yield Finding(self.kind, match.start(group), match.end(group))


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a digit string (card numbers, Canadian SINs).

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _card(text: str) -> bool:
    digits = _digits(text)
    if not (13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)):
        return False
    seps = {c for c in text if not c.isdigit()}
    if not seps:
        return True
    if len(seps) > 1:  # 4111-1111 1111-1111 is not how cards are written
        return False
    # Grouped as printed on cards: fours (4-4-4-4, 4-4-4-4-3) or 4-6-x (Amex, Diners).
    sizes = [len(g) for g in re.split(r"[ -]", text)]
    fours = all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4
    return fours or (len(sizes) == 3 and sizes[:2] == [4, 6])


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _spanish_id(text: str) -> bool:
    value = text.upper()
    if value[0] in "XYZ":  # NIE: the leading letter stands for a digit
        value = str("XYZ".index(value[0])) + value[1:]
    return _DNI_LETTERS[int(value[:8]) % 23] == value[8]


def _canadian_sin(text: str) -> bool:
    digits = _digits(text)
    return digits[0] not in "08" and luhn_valid(digits)


_THIS_MACHINE = frozenset({ipaddress.ip_address(a) for a in ("127.0.0.1", "0.0.0.0", "::1", "::")})
"""Addresses that name this machine, never a person: logs are full of them
(``127.0.0.1:9092``, ``0.0.0.0:6066``) and would be unreadable without them."""


def _personal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address not in _THIS_MACHINE


def _ipv4(text: str) -> bool:
    return _personal(ipaddress.IPv4Address(text))


def _ipv6(text: str) -> bool:
    if text.count(":") < 2 or not any(c.isalnum() for c in text):
        return False
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return _personal(address)


def _entropy(text: str) -> float:
    counts: dict[str, int] = {}
    for c in text:
        counts[c] = counts.get(c, 0) + 1
    n = len(text)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def _random_token(text: str) -> bool:
    core = text.replace("-", "").replace("_", "")
    return (
        any(c.isupper() for c in core)
        and any(c.islower() for c in core)
        and sum(c.isdigit() for c in core) >= 2
        and _entropy(core) >= 3.5
    )


_DATE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}$|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}$")


def _phone(text: str) -> bool:
    digits = _digits(text)
    if not 7 <= len(digits) <= 15 or _DATE.match(text):
        return False
    if text.startswith("+") or re.match(r"00[1-9]", text) or "(" in text:
        return True
    # Separators only: shaped like 415-555-2671 or 020 7946 0958, not 100-200-300.
    groups = re.split(r"[ .-]", text)
    return (
        len(groups) >= 3
        and len(groups[0]) >= 2
        and all(len(g) >= 3 for g in groups[1:])
        and len(groups[-1]) >= 4
    )


def _unmasked(text: str) -> bool:
    return text != "***"  # already masked by weir.core.urls.mask_url: leave it readable


# Patterns that start with a digit (or a few letters) test for it first, "(?=\d)": a
# one-character test fails faster than the look-behind at most positions of a text
# (about 2x for these patterns; same matches).
DEFAULT_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "email",
        re.compile(
            r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
        ),
        needs="@",
    ),
    Pattern(
        "api_key",
        re.compile(
            r"(?<![\w-])(?:"
            r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"
            r"|glpat-[A-Za-z0-9_-]{20,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}"
            r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
            r"|AIza[0-9A-Za-z_-]{35}"
            r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
            r")(?![\w-])"
            r"|(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*"
        ),
    ),
    Pattern("api_key", re.compile(r"(?<![\w-])[A-Za-z0-9_-]{24,}(?![\w-])"), _random_token),
    Pattern("card", re.compile(r"(?=\d)(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card),
    Pattern(
        "national_id",
        re.compile(r"(?=\d)(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
    ),
    Pattern(
        "national_id",
        re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    ),
    Pattern("national_id", re.compile(r"\b[0-9XYZxyz]\d{7}[A-Za-z]\b"), _spanish_id),
    Pattern(
        "national_id",
        re.compile(r"(?=\d)(?<![\d-])\d{3}[ -]\d{3}[ -]\d{3}(?![\d-])"),
        _canadian_sin,
    ),
    Pattern(
        "ip",
        re.compile(
            r"(?=\d)(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
            r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)"
        ),
        _ipv4,
        needs=".",
    ),
    # Bounded: unbounded runs backtrack quadratically on "a:a:a:...:g" (45 = the longest
    # IPv6 text, with an embedded IPv4 address).
    Pattern(
        "ip",
        re.compile(r"(?<![\w:.])[0-9A-Fa-f:]{0,45}:[0-9A-Fa-f:.]{0,45}(?![\w:])"),
        _ipv6,
        needs=":",
    ),
    Pattern(
        "phone",
        re.compile(
            r"(?=[+(\d])(?<![\w+])(?:\+|00(?=[1-9]))?(?:\(\d{1,4}\)|\d{1,4})"
            r"(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}(?![\w])"
        ),
        _phone,
    ),
    # Credentials in connection strings (scheme://user:password@host) and in
    # ``password=...``-style settings that end up quoted in error messages.
    Pattern(
        "password",
        re.compile(
            r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/:@?#]*:(?P<secret>[^\s/?#]+)@"
        ),
        _unmasked,
        group="secret",
        needs="://",
    ),
    Pattern(
        "password",
        re.compile(
            r"(?i)(?=[psta])\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|token)"
            r"\b[\"']?\s*[=:]\s*[\"']?(?P<secret>[^\s\"',;&]{6,})"
        ),
        group="secret",
    ),
)
