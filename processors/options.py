"""Request options as routing rules read them: text that compares with numbers as numbers.

Options travel as strings (``Request.options``, an Avro ``map<string>``), so
``options.latency_sla < 500`` would compare ``"200"`` with ``500``: in Python
that raises, and ``options.tier == 1`` is silently false.  Rules see each
option as an ``OptionValue``: a ``str`` that, compared with a number, compares
as the number it spells (with a bool, as true/false text).  Compared with
text it is plain text.  An option that does not spell a number makes the
comparison raise ``OptionTypeError`` naming the option, so the rule does not
match and the router says why, instead of matching by accident.

>>> sla = OptionValue("200", name="latency_sla")
>>> sla < 500, 500 > sla, sla == 200, sla == "200"
(True, True, True, True)
>>> OptionValue("fast", name="latency_sla") < 500  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
processors.options.OptionTypeError: options.latency_sla is 'fast', not a number, so ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["OptionTypeError", "OptionValue", "typed_options"]

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class OptionTypeError(TypeError):
    """An option compared with a number does not spell one (the rule does not match)."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class OptionValue(str):
    """One request option: ``str``, comparing with numbers and bools by what it spells."""

    __slots__ = ("name",)

    name: str

    def __new__(cls, value: str, *, name: str = "?") -> OptionValue:
        self = super().__new__(cls, value)
        self.name = name
        return self

    def number(self, against: object) -> float:
        """The number this option spells; ``OptionTypeError`` (naming it) if none."""
        try:
            value = float(self.strip())
        except ValueError:
            value = math.nan
        if math.isnan(value):
            raise OptionTypeError(
                f"options.{self.name} is {str(self)!r}, not a number,"
                f" so it cannot be compared with {against!r}"
            )
        return value

    def _flag(self) -> bool | None:
        text = self.strip().lower()
        return True if text in _TRUE else False if text in _FALSE else None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bool):
            return self._flag() is other
        if _is_number(other):
            try:
                return self.number(other) == other
            except OptionTypeError:
                return False  # text that is no number equals no number
        return str.__eq__(self, other) is True

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __lt__(self, other: Any) -> bool:
        return self.number(other) < other if _is_number(other) else str.__lt__(self, other)

    def __le__(self, other: Any) -> bool:
        return self.number(other) <= other if _is_number(other) else str.__le__(self, other)

    def __gt__(self, other: Any) -> bool:
        return self.number(other) > other if _is_number(other) else str.__gt__(self, other)

    def __ge__(self, other: Any) -> bool:
        return self.number(other) >= other if _is_number(other) else str.__ge__(self, other)


def typed_options(options: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``options`` namespace of a routing condition."""
    return {
        k: OptionValue(v, name=k) if isinstance(v, str) else v for k, v in (options or {}).items()
    }
