"""Static checks of routing conditions: comparisons that can never hold, numbers with units.

``compile_condition`` runs them when a rule is made or a rule set applied, so a
condition that would silently never match is refused with what to write
instead.  The kinds of the names rules read are known:

    number   latency_sla, lag, budget_spent, budget_remaining,
             input.token_count, char_count, word_count, message_count
    text     input.language, input.document_type
    bool     budget_exceeded
    option   options.<name>: text that compares with numbers as a number
             (``weir.processors.options``), so it goes with either
    unknown  request.<field>, caller-given input.<feature>

Comparing a number with text (``input.language == 500``,
``latency_sla < '500'``) is refused, naming both sides and their kinds.

>>> print(type_mismatch(ast.parse("input.language == 500", mode="eval").body))  # doctest: +ELLIPSIS
input.language is text and 500 is a number: they never compare equal ...
>>> print(units_hint("latency_sla < 2s"))  # doctest: +ELLIPSIS
numbers in conditions have no units: ... are milliseconds, so write 2000 for 2s
"""

from __future__ import annotations

import ast
import re

__all__ = ["type_mismatch", "units_hint"]

_NUMBER_NAMES = frozenset({"latency_sla", "lag", "budget_spent", "budget_remaining"})
_NUMBER_FEATURES = frozenset({"token_count", "char_count", "word_count", "message_count"})
_TEXT_FEATURES = frozenset({"language", "document_type"})
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_EQUALITY = (ast.Eq, ast.NotEq)

_UNIT = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s*(ms|msec|millis|milliseconds|s|sec|secs|seconds|m|min|mins"
    r"|minutes|h|hours?)\b"
)
_TO_MS = {"ms": 1, "msec": 1, "millis": 1, "milliseconds": 1, "s": 1000, "sec": 1000}
_TO_MS |= {"secs": 1000, "seconds": 1000, "m": 60_000, "min": 60_000, "mins": 60_000}
_TO_MS |= {"minutes": 60_000, "h": 3_600_000, "hour": 3_600_000, "hours": 3_600_000}


def units_hint(text: str) -> str | None:
    """What to write instead, when a condition that does not parse has a number with a unit."""
    match = _UNIT.search(text)
    if match is None:
        return None
    number, unit = float(match[1]), match[2]
    ms = number * _TO_MS[unit]
    spelled = f"{ms:g}" if ms < 1e15 else str(ms)
    return (
        "numbers in conditions have no units: latency_sla and options.latency_sla are"
        f" milliseconds, so write {spelled} for {match[0].replace(' ', '')}"
    )


def _kind(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return "bool"
        if isinstance(node.value, int | float):
            return "number"
        if isinstance(node.value, str):
            return "text"
        return "unknown"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return "number" if _kind(node.operand) == "number" else "unknown"
    if isinstance(node, ast.Name):
        if node.id in _NUMBER_NAMES:
            return "number"
        if node.id in ("budget_exceeded", "True", "False", "true", "false"):
            return "bool"
        return "unknown"
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        root = node.value.id
        if root == "options":
            return "option"
        if root == "input" and node.attr in _NUMBER_FEATURES:
            return "number"
        if root == "input" and node.attr in _TEXT_FEATURES:
            return "text"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in ("int", "float", "len", "abs"):
            return "number"
        if node.func.id == "str":
            return "text"
    return "unknown"


def _a(kind: str) -> str:
    return {"number": "a number", "text": "text", "bool": "true/false"}[kind]


def type_mismatch(tree: ast.AST) -> str | None:
    """The first comparison in ``tree`` between a number and text, described; else ``None``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if not isinstance(op, _ORDER + _EQUALITY):
                left = right
                continue
            kinds = {_kind(left), _kind(right)}
            if kinds == {"number", "text"}:
                lhs, rhs = ast.unparse(left), ast.unparse(right)
                never = (
                    "they never compare equal"
                    if isinstance(op, _EQUALITY)
                    else "text cannot be ordered against a number"
                )
                return (
                    f"{lhs} is {_a(_kind(left))} and {rhs} is {_a(_kind(right))}: {never}"
                    " (compare text with 'quoted text', numbers with numbers)"
                )
            left = right
    return None
