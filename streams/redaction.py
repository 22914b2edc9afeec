"""PII redaction of everything user data can leave the worker in.

Applied to step inputs and outputs on trace events (``log_io``), error
messages on trace events, FAILURE results and OpenTelemetry spans, error
messages and stack traces in dead-letter headers, and log records (through
``RedactingFilter``, which ``weir worker`` and ``weir sink`` install).

Built-in kinds (each replaced by ``[REDACTED:<kind>]``):

* ``email``;
* ``card``: payment card numbers, 13-19 digits, optionally grouped by spaces
  or dashes, that pass the Luhn check;
* ``national_id``: US SSN (``123-45-6789``, impossible ranges excluded), UK
  National Insurance numbers, Spanish DNI/NIE (check letter verified),
  Canadian SIN (``123 456 782``, Luhn-checked);
* ``ip``: IPv4 and IPv6 addresses (validated by ``ipaddress``), except
  ``127.0.0.1``, ``0.0.0.0``, ``::1`` and ``::`` (this machine, no person);
* ``api_key``: well-known key and token formats (OpenAI/Anthropic ``sk-``,
  GitHub, GitLab, Slack, AWS access key ids, Google API keys, JWTs, ``Bearer``
  tokens) and long random-looking tokens (24+ characters mixing upper case,
  lower case and digits);
* ``phone``: 7-15 digit numbers written as phone numbers: with a leading
  ``+``/``00`` or an area code in parentheses, or in three or more groups
  ending in at least four digits (``415-555-2671``, ``020 7946 0958``).  A bare
  run of digits (``4155552671``) is not taken for a phone number;
* ``password``: the password of a URL (``http://user:***@host``) and values
  of ``password=``, ``token:``, ``api_key=`` and the like.

Where matches overlap the longer wins, then the kind listed first.  Plug in
more with ``Pattern`` (a regex, optionally with a validator) or any
``Detector`` (an object with ``find(text)``, e.g. a wrapper around an NER
library).

Time is linear in the text: every pattern is linear, and choosing among
overlapping findings marks the characters they cover instead of comparing
each finding with every one taken before.  Texts longer than ``max_bytes``
are cut first (``…[truncated N bytes]``), and ``redact_async`` moves long
texts off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from operator import attrgetter, itemgetter

from weir.core.config import WeirSettings
from weir.streams._pii import DEFAULT_PATTERNS, Detector, Finding, Pattern, luhn_valid

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_OFFLOAD_CHARS",
    "DEFAULT_PATTERNS",
    "LOG_MAX_BYTES",
    "Detector",
    "Finding",
    "Pattern",
    "RedactingFilter",
    "Redactor",
    "install_log_redaction",
    "luhn_valid",
    "truncate",
]

DEFAULT_MAX_BYTES = 1_048_576
"""Texts are cut to this many UTF-8 bytes before redaction (``WEIR_REDACT_MAX_BYTES``)."""
DEFAULT_OFFLOAD_CHARS = 65_536
"""``redact_async`` redacts longer texts in a thread (``WEIR_REDACT_OFFLOAD_CHARS``)."""
LOG_MAX_BYTES = 65_536
"""A log record's text (message, then exception) is cut to this before redaction.

Logging runs in the caller's thread, often the event loop's: bounded, a record
costs at most a few tens of milliseconds to redact.
"""

_SEPARATORS = " \t\r\n,;\"'()[]{}<>|"
_BOUNDARY_WINDOW = 4096
"""How far back a cut looks for a word boundary before dropping the window whole."""


def truncate(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, plus ``…[truncated N bytes]``.

    The cut falls on a separator (space, comma, quote, bracket) within the last
    4 KiB kept, never inside a value: half an e-mail address or key would no
    longer be recognised as one, and its first half would leave unredacted.

    >>> truncate("call ada@example.com now " * 3, 40)
    'call ada@example.com now call …[truncated 45 bytes]'
    """
    if len(text) * 4 <= max_bytes:  # no character takes more than 4 bytes
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    end = max_bytes
    while end > 0 and data[end] & 0xC0 == 0x80:  # not inside a multi-byte character
        end -= 1
    kept = data[:end].decode("utf-8", "surrogatepass")
    low = max(0, len(kept) - _BOUNDARY_WINDOW)
    cut = max(kept.rfind(sep, low) for sep in _SEPARATORS) + 1
    kept = kept[: cut or low]
    dropped = len(data) - len(kept.encode("utf-8", "surrogatepass"))
    return f"{kept}…[truncated {dropped} bytes]"


def _tail(text: str, max_chars: int) -> str:
    """The last ``max_chars`` of ``text``, starting after a separator (see ``truncate``)."""
    if len(text) <= max_chars:
        return text
    start = len(text) - max_chars
    window = text[start : start + _BOUNDARY_WINDOW]
    first = min((i for i in (window.find(sep) for sep in _SEPARATORS) if i >= 0), default=-1)
    return text[start + (first + 1 if first >= 0 else len(window)) :]


class Redactor:
    """Replaces every finding of its patterns and detectors with ``[REDACTED:<kind>]``.

    >>> Redactor().redact("write to ada@example.com or call +44 20 7946 0958")
    'write to [REDACTED:email] or call [REDACTED:phone]'
    """

    def __init__(
        self,
        patterns: Iterable[Pattern] = DEFAULT_PATTERNS,
        *,
        detectors: Iterable[Detector] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        offload_chars: int = DEFAULT_OFFLOAD_CHARS,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.patterns = tuple(patterns)
        self.detectors = tuple(detectors)
        self.max_bytes = max_bytes
        self.offload_chars = offload_chars

    @classmethod
    def from_settings(cls, settings: WeirSettings) -> Redactor:
        """The built-in patterns plus ``settings.redact_patterns``, with the settings' limits."""
        extra = [Pattern(kind, re.compile(rx)) for kind, rx in settings.redact_patterns.items()]
        return cls(
            (*DEFAULT_PATTERNS, *extra),
            max_bytes=settings.redact_max_bytes,
            offload_chars=settings.redact_offload_chars,
        )

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in order: the longer wins, then the earlier-listed kind.

        ``text`` is searched whole (no size cap: that is ``redact``'s).
        """
        found: list[tuple[int, int, int, Finding]] = []
        sources: list[Detector] = [*self.patterns, *self.detectors]
        for rank, source in enumerate(sources):
            for f in source.find(text):
                if 0 <= f.start < f.end <= len(text):
                    found.append((f.start - f.end, rank, f.start, f))
        if not found:
            return []
        found.sort(key=itemgetter(0, 1, 2))
        # One mark per covered character: checking a finding costs its own length, so the
        # whole choice is linear (each pattern's own matches never overlap).
        covered = bytearray(len(text))
        taken: list[Finding] = []
        for *_, f in found:
            if covered.find(1, f.start, f.end) < 0:
                covered[f.start : f.end] = b"\x01" * (f.end - f.start)
                taken.append(f)
        taken.sort(key=attrgetter("start"))
        return taken

    def redact(self, text: str, *, max_bytes: int | None = None) -> str:
        """``text`` cut to ``max_bytes`` (default: the redactor's) with every finding replaced."""
        text = truncate(text, self.max_bytes if max_bytes is None else max_bytes)
        findings = self.find(text)
        if not findings:
            return text
        parts, pos = [], 0
        for f in findings:
            parts.append(text[pos : f.start])
            parts.append(f"[REDACTED:{f.kind}]")
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts)

    def redact_tail(self, text: str, max_chars: int) -> str:
        """The redacted end of ``text`` (at most ``max_chars`` of it): for stack traces."""
        return self.redact(_tail(text, max_chars))

    async def redact_async(self, text: str) -> str:
        """``redact``, in a thread when ``text`` is longer than ``offload_chars``.

        Redacting a megabyte takes tens of milliseconds; on the event loop that
        would stall every other request of the worker (and its heartbeats).
        """
        if len(text) <= self.offload_chars:
            return self.redact(text)
        return await asyncio.to_thread(self.redact, text)


class RedactingFilter(logging.Filter):
    """Redacts a log record's message, arguments, exception and stack text in place.

    Put it on handlers (``install_log_redaction``): a handler's filters see the
    records of every logger that propagates to it, a logger's only its own.
    ``scrub`` also takes out known secret values (``weir.core.secrets.scrub``).
    """

    def __init__(
        self,
        redactor: Redactor,
        *,
        scrub: Callable[[str], str] | None = None,
        max_bytes: int = LOG_MAX_BYTES,
    ) -> None:
        super().__init__()
        self._redactor = redactor
        self._scrub = scrub
        self._max_bytes = max_bytes

    def _clean(self, text: str) -> str:
        # Cut and redacted first: scrub then works on a bounded text.
        text = self._redactor.redact(text, max_bytes=self._max_bytes)
        return self._scrub(text) if self._scrub is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "weir_redacted", False):  # a second handler: done already
            return True
        try:
            message = record.getMessage()
        except Exception:
            # logging would print msg and args raw in its "--- Logging error ---" report.
            message = f"{record.msg} (arguments that did not format: {record.args!r})"
        record.msg, record.args = self._clean(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
            # Formatters print exc_text when set; without exc_info none renders it again raw.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        record.weir_redacted = True
        return True


def install_log_redaction(
    redactor: Redactor,
    *,
    logger: logging.Logger | None = None,
    scrub: Callable[[str], str] | None = None,
) -> RedactingFilter:
    """Add a ``RedactingFilter`` to every handler of ``logger`` (default: the root logger).

    Call it after the handlers are configured (``logging.basicConfig``).
    """
    target = logger or logging.getLogger()
    filt = RedactingFilter(redactor, scrub=scrub)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(filt)
    return filt
