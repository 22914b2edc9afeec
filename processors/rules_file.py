"""Rules files (YAML or JSON): parsed into ``RuleSet``s, every problem pointing at its line.

A rules file holds one rule set (a mapping), a list of them, or
``{routers: [...]}``.  What can be wrong is said with the file's line and
what was expected there:

* YAML that does not parse; the common case of a value that starts with a
  quote (``condition: 'en' == input.language``: YAML reads ``'en'`` as the
  whole value) gets the fix, the condition quoted as a whole;
* a key that is not known, a missing or mistyped field (with the keys a rule
  set or a rule takes);
* a condition that does not parse, reads an unknown name, compares a number
  with text, or writes a unit after a number.

>>> load_rule_sets("router: r\\nrules:\\n  - name: a\\n    condition: lag >\\n    endpoint: x\\n")
Traceback (most recent call last):
...
weir.core.errors.RoutingError: rules file, line 4: rule 'a': the condition is not a valid ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from weir.core.errors import RoutingError
from weir.processors.condition import compile_condition
from weir.processors.rules import RuleSet, RuleSpec

__all__ = ["load_rule_sets"]

_MAX_PROBLEMS = 5
_QUOTED_START = re.compile(r"^(?P<lead>\s*(?:-\s+)?)(?P<key>[\w-]+)\s*:\s*(?P<value>['\"].*?)\s*$")

Path = tuple[str | int, ...]


class _Lines:
    """Line numbers (1-based) of the nodes of a composed YAML document, by path."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    def at(self, path: Sequence[str | int]) -> int | None:
        node = self._root
        if node is None:
            return None
        line = node.start_mark.line
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == part]
                if not match:
                    return line + 1  # a missing key: the mapping that lacks it
                key, node = match[0]
                line = key.start_mark.line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line + 1
                node = node.value[part]
                line = node.start_mark.line
            else:
                break
        return line + 1


def _yaml_problem(text: str, exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return f"{source} is not valid YAML: {exc}"
    lines = text.splitlines()
    # The parser notices a stray quote one token late: look at the line it names and
    # the one where the mapping began.
    candidates = [mark.line]
    if exc.context_mark is not None:
        candidates.append(exc.context_mark.line)
    for number in candidates:
        line = lines[number] if 0 <= number < len(lines) else ""
        found = _QUOTED_START.match(line)
        if found and not _closed_at_end(found["value"]):
            value = found["value"]
            fixed = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            return (
                f"{source}, line {number + 1}: the value of {found['key']!r} starts with a"
                f" quote, so YAML takes only the quoted part as the value and cannot read the"
                f" rest; quote the whole value: {found['key']}: {fixed}"
            )
    what = exc.problem or "cannot be parsed"
    return (
        f"{source}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({what});"
        " expected a rule set such as `router: name` with `rules:` as a list of mappings"
    )


def _closed_at_end(value: str) -> bool:
    """Whether a value that starts with a quote is one quoted scalar (nothing after it)."""
    quote = value[0]
    if quote == "'":
        body = value[1:].replace("''", "")
        return body.endswith("'") and "'" not in body[:-1]
    return bool(re.fullmatch(r'"(?:[^"\\]|\\.)*"', value))


def _expected_keys(loc: Sequence[str | int]) -> str:
    model = RuleSpec if "rules" in loc[:-1] else RuleSet
    names = [n for n in model.model_fields if n not in ("version", "applied_at", "applied_by")]
    return ", ".join(names)


def _describe(error: ErrorDetails) -> str:
    loc = [p for p in error["loc"] if isinstance(p, str | int)]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    field = field or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}; expected one of: {_expected_keys(loc)}"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" or kind.startswith("assertion"):
        return f"{field}: {message}"
    return f"{field}: {message} (got {error.get('input')!r})"


def _parse_one(item: Any, *, source: str, base: Path, lines: _Lines) -> RuleSet:
    problems: list[str] = []

    def at(path: Sequence[str | int]) -> str:
        line = lines.at([*base, *path])
        return f"{source}, line {line}" if line is not None else source

    try:
        rule_set = RuleSet.model_validate(item)
    except ValidationError as exc:
        for error in exc.errors()[:_MAX_PROBLEMS]:
            problems.append(f"{at(error['loc'])}: {_describe(error)}")
        raise RoutingError("\n".join(problems)) from None
    features = frozenset(rule_set.features)
    for index, spec in enumerate(rule_set.rules):
        for field in ("condition", "hold_until"):
            text = getattr(spec, field)
            if text is None:
                continue
            try:
                compile_condition(text, rule=spec.name, features=features)
            except RoutingError as exc:
                problems.append(f"{at(('rules', index, field))}: {exc}")
    if problems:
        raise RoutingError("\n".join(problems[:_MAX_PROBLEMS]))
    return RuleSet.parse(item, source=source)


def load_rule_sets(text: str, *, source: str = "rules file") -> list[RuleSet]:
    """Rule sets from YAML (or JSON): one mapping, a list, or ``{routers: [...]}``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise RoutingError(_yaml_problem(text, exc, source)) from None
    except yaml.YAMLError as exc:
        raise RoutingError(f"{source} is not valid YAML: {exc}") from None
    lines = _Lines(root)
    base: Path = ()
    if isinstance(data, Mapping) and "routers" in data:
        data, base = data["routers"], ("routers",)
    if isinstance(data, list):
        items = [(item, (*base, n)) for n, item in enumerate(data)]
    else:
        items = [(data, base)]
    if not items or not all(isinstance(i, Mapping) for i, _ in items):
        raise RoutingError(
            f"{source} must hold a rule set (a mapping with router: and rules:) or a list of them"
        )
    sets = [_parse_one(item, source=source, base=path, lines=lines) for item, path in items]
    names = [s.router for s in sets]
    if len(set(names)) != len(names):
        raise RoutingError(f"{source} names a router twice: {names}")
    return sets
