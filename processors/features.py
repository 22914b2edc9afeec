"""Derived request features that routing rules read as ``input.<feature>``.

Features are computed lazily, only when a rule reads them, and once per
request: a rule set that never asks for ``language`` never runs the language
identifier.  Features given by the caller (``features={...}``) win over derived
ones and may add new names.

    token_count     estimated tokens of the text (``weir.processors.tokens``)
    char_count      characters
    word_count      whitespace-separated words
    message_count   chat messages (1 for plain text)
    language        ISO 639-1 code from py3langid (a small model shipped with the package)
    document_type   legal, code, email, question or text (keyword evidence, see below)

>>> f = Features("Whereas the parties hereby agree to the terms of this Agreement.")
>>> f.document_type, f.language, f.word_count
('legal', 'en', 11)
>>> Features("hi", extra={"tier": "gold"}).get("tier")
'gold'
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from weir.processors.tokens import estimate_messages, estimate_tokens, message_text

__all__ = ["DERIVED_FEATURES", "Features", "detect_language", "document_type"]

DERIVED_FEATURES = frozenset(
    {"token_count", "char_count", "word_count", "message_count", "language", "document_type"}
)

_LEGAL = re.compile(
    r"\b(whereas|hereby|hereinafter|hereto|herein|thereof|pursuant|indemnif\w*|liabilit\w*|"
    r"jurisdiction|governing law|agreement|contract|clause|the parties|warrant\w*|"
    r"termination|confidentiality|breach|arbitration|licensor|licensee|shall)\b",
    re.IGNORECASE,
)
_CODE = re.compile(r"```|\bdef |\bclass |\bimport |\breturn\b|[{};]\s*$|=>|\bfunction\b", re.M)
_EMAIL = re.compile(r"^(subject:|from:|to:|dear |hi |hello )", re.IGNORECASE | re.MULTILINE)

_langid_lock = threading.Lock()
_langid: Any = None


def detect_language(text: str) -> str:
    """ISO 639-1 code of ``text`` (``und`` when there is nothing to tell from)."""
    global _langid
    if not any(ch.isalpha() for ch in text):
        return "und"
    if _langid is None:
        with _langid_lock:
            if _langid is None:
                import py3langid

                _langid = py3langid
    return str(_langid.classify(text)[0])


def document_type(text: str) -> str:
    """legal (two or more distinct legal terms), code, email, question, or text."""
    legal_terms = {m.group(0).lower() for m in _LEGAL.finditer(text)}
    if len(legal_terms) >= 2:
        return "legal"
    if len(_CODE.findall(text)) >= 2:
        return "code"
    if _EMAIL.search(text[:200]):
        return "email"
    if text.rstrip().endswith("?") and len(text) < 500:
        return "question"
    return "text"


class Features:
    """The features of one request's text (lazy; attribute or ``get`` access)."""

    def __init__(
        self,
        text: str = "",
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if messages is not None and not text:
            text = "\n".join(message_text(m) for m in messages)
        self.text = text
        self._messages = messages
        self._values: dict[str, Any] = dict(extra or {})

    def _compute(self, name: str) -> Any:
        text = self.text
        if name == "token_count":
            if self._messages is not None:
                return estimate_messages(self._messages)
            return estimate_tokens(text)
        if name == "char_count":
            return len(text)
        if name == "word_count":
            return len(text.split())
        if name == "message_count":
            return len(self._messages) if self._messages is not None else 1
        if name == "language":
            return detect_language(text)
        if name == "document_type":
            return document_type(text)
        raise KeyError(name)

    def get(self, name: str) -> Any:
        if name not in self._values:
            self._values[name] = self._compute(name)
        return self._values[name]

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.get(name)
        except KeyError:
            raise AttributeError(name) from None

    def known(self) -> dict[str, Any]:
        """The features computed or given so far."""
        return dict(self._values)
