"""Routing conditions: Python-like expressions, checked when a rule is made, evaluated safely.

Conditions are evaluated by simpleeval (never ``eval``) over the names in
``ROOT_NAMES`` (see ``weir.processors.router`` for what each holds).  A
condition is parsed and checked once (``compile_condition``): unknown names,
unknown ``input.<feature>``s, private attributes, lambdas and comprehensions,
mismatched types and units are refused with the rule's name, and a dry run on
a sample request catches the rest before any request meets it.

>>> c = compile_condition("input.token_count < 500 and lag < 10", rule="short")
>>> sorted(c.names)
['input', 'lag']
>>> compile_condition("lag <", rule="broken")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
weir.core.errors.RoutingError: rule 'broken': the condition is not a valid expression ...
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simpleeval import InvalidExpression, SimpleEval

from weir.core.errors import RoutingError
from weir.processors.condition_check import type_mismatch, units_hint
from weir.processors.features import DERIVED_FEATURES, Features
from weir.processors.options import typed_options

__all__ = [
    "MAX_CONDITION_CHARS",
    "ROOT_NAMES",
    "Condition",
    "compile_condition",
    "condition_names",
    "lookup",
]

log = logging.getLogger("weir.models")

ROOT_NAMES = frozenset(
    {
        "input",
        "request",
        "options",
        "latency_sla",
        "lag",
        "budget_exceeded",
        "budget_spent",
        "budget_remaining",
    }
)
_FUNCTIONS = {
    "int": int,
    "float": float,
    "str": str,
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
}
_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False}
MAX_CONDITION_CHARS = 2000


@dataclass(frozen=True)
class Condition:
    """A parsed, checked condition; ``names`` are the root names it reads."""

    text: str
    tree: ast.AST = field(repr=False)
    names: frozenset[str]

    def evaluate(self, namespace: Mapping[str, Any]) -> bool:
        evaluator = SimpleEval(functions=_FUNCTIONS, names={**_CONSTANTS, **namespace})
        return bool(evaluator.eval(self.text, previously_parsed=self.tree))


class _Anything:
    """A stand-in request field for the dry run: compares false with everything."""

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    def __lt__(self, other: object) -> bool:
        return False

    __le__ = __gt__ = __ge__ = __lt__

    def __hash__(self) -> int:
        return 0

    def __getattr__(self, name: str) -> _Anything:
        return self

    def __getitem__(self, name: object) -> _Anything:
        return self

    def __contains__(self, item: object) -> bool:
        return False

    def __bool__(self) -> bool:
        return False


def compile_condition(text: str, *, rule: str, features: frozenset[str] = frozenset()) -> Condition:
    """Parse and check a condition; ``RoutingError`` naming ``rule`` and the problem."""
    where = f"rule {rule!r}"
    if not isinstance(text, str) or not text.strip():
        raise RoutingError(f"{where}: the condition is empty (use 'True' to always match)")
    if len(text) > MAX_CONDITION_CHARS:
        raise RoutingError(f"{where}: the condition is longer than {MAX_CONDITION_CHARS} chars")
    try:
        module = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        hint = units_hint(text)
        if hint is not None:
            raise RoutingError(f"{where}: {hint}") from None
        raise RoutingError(
            f"{where}: the condition is not a valid expression ({exc.msg} in {text.strip()!r});"
            " expected a Python-like expression such as"
            " input.token_count < 500 and input.language == 'en'"
        ) from None
    known = DERIVED_FEATURES | features
    names: set[str] = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Lambda | ast.comprehension | ast.NamedExpr):
            raise RoutingError(f"{where}: {type(node).__name__} is not allowed in conditions")
    for node in ast.walk(module):
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS or node.id in _FUNCTIONS:
                continue
            if node.id not in ROOT_NAMES:
                raise RoutingError(
                    f"{where}: unknown name {node.id!r} (known: {', '.join(sorted(ROOT_NAMES))})"
                )
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise RoutingError(f"{where}: attribute {node.attr!r} is not allowed")
            reads_input = isinstance(node.value, ast.Name) and node.value.id == "input"
            if reads_input and node.attr not in known:
                raise RoutingError(
                    f"{where}: input.{node.attr} is not a feature"
                    f" (known: {', '.join(sorted(known))})"
                )
    mismatch = type_mismatch(module.body)
    if mismatch is not None:
        raise RoutingError(f"{where}: {mismatch}")
    condition = Condition(text.strip(), module.body, frozenset(names))
    sample = {
        "input": Features("sample text", extra={name: _Anything() for name in features}),
        "request": _Anything(),
        "options": _Anything(),
        "latency_sla": 1000.0,
        "lag": 0,
        "budget_exceeded": False,
        "budget_spent": 0.0,
        "budget_remaining": 1.0,
    }
    try:
        condition.evaluate(sample)
    except (InvalidExpression, TypeError, ValueError, ZeroDivisionError, AttributeError) as exc:
        raise RoutingError(f"{where}: the condition fails on a sample request: {exc}") from None
    return condition


def condition_names(
    feats: Features,
    *,
    request: Mapping[str, Any] | None,
    options: Mapping[str, str] | None,
    features: Mapping[str, Any] | None,
    lag: int,
    budget: tuple[bool, Decimal, Decimal],
) -> dict[str, Any]:
    """The values of ``ROOT_NAMES`` for one call, as its conditions read them."""
    exceeded, spent, remaining = budget
    return {
        "input": feats,
        "request": dict(request or {}),
        "options": typed_options(options),
        "latency_sla": _latency_sla(options, features),
        "lag": lag,
        "budget_exceeded": exceeded,
        "budget_spent": float(spent),
        "budget_remaining": float(remaining),
    }


def _latency_sla(options: Mapping[str, str] | None, features: Mapping[str, Any] | None) -> float:
    raw = (features or {}).get("latency_sla", (options or {}).get("latency_sla"))
    if raw is None or raw == "":
        return math.inf
    try:
        return float(raw)
    except (TypeError, ValueError):
        log.warning("latency_sla %r is not a number of milliseconds; ignoring it", raw)
        return math.inf


def lookup(namespace: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``request.user.id``), ``None`` where there is none."""
    root, _, rest = path.partition(".")
    value: Any = namespace.get(root)
    for part in rest.split(".") if rest else ():
        if isinstance(value, Features):
            try:
                value = value.get(part)
            except KeyError:
                return None
        elif isinstance(value, Mapping):
            value = value.get(part)
        else:
            return None
    return value
