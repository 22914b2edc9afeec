"""Prices and the exact cost of a model call (``Decimal``: no float rounding anywhere).

A price is USD per million tokens, input and output apart.  ``price_of`` finds a
model's price: the endpoint's own, else ``WeirSettings.model_prices``, else
``DEFAULT_PRICES`` (list prices at the time of writing; override them in config
when they change).

>>> gpt = Price.per_million(input="0.15", output="0.60")
>>> gpt.cost(1234, 56)
Decimal('0.0002187')
>>> Price.per_token(input="0.000002").input_per_1m
Decimal('2.000000')
>>> format_usd(Decimal("0.00213"))
'$0.0021'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TypeVar

from weir.core.config import ModelPrice, WeirSettings
from weir.core.errors import ConfigError

__all__ = ["DEFAULT_PRICES", "FREE", "Price", "format_usd", "price_of"]

_MILLION = Decimal(1_000_000)
_P = TypeVar("_P", "Price", ModelPrice)


def _decimal(value: Decimal | str | int | float, what: str) -> Decimal:
    # A float goes through str so that 0.15 means 0.15, not 0.149999999999999994448...
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens."""

    input_per_1m: Decimal
    output_per_1m: Decimal = Decimal(0)
    per_image: Decimal = Decimal(0)
    """USD per generated image (image models)."""
    per_audio_second: Decimal = Decimal(0)
    """USD per second of audio transcribed (speech-to-text models)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_per_1m", _decimal(self.input_per_1m, "input price"))
        object.__setattr__(self, "output_per_1m", _decimal(self.output_per_1m, "output price"))
        object.__setattr__(self, "per_image", _decimal(self.per_image, "price per image"))
        object.__setattr__(
            self, "per_audio_second", _decimal(self.per_audio_second, "price per audio second")
        )

    @classmethod
    def per_unit(
        cls, *, image: Decimal | str | float = 0, audio_second: Decimal | str | float = 0
    ) -> Price:
        """A price per generated image and/or per second of transcribed audio.

        >>> Price.per_unit(image="0.04").units_cost(images=3)
        Decimal('0.12')
        >>> Price.per_unit(audio_second="0.0001").units_cost(audio_seconds=Decimal("61.5"))
        Decimal('0.00615')
        """
        return cls(
            Decimal(0),
            Decimal(0),
            _decimal(image, "price per image"),
            _decimal(audio_second, "price per audio second"),
        )

    def units_cost(self, *, images: int = 0, audio_seconds: Decimal = Decimal(0)) -> Decimal:
        """Exact USD for ``images`` generated images and ``audio_seconds`` of audio."""
        total = images * self.per_image + audio_seconds * self.per_audio_second
        return total.normalize() if total else Decimal(0)

    @classmethod
    def per_million(
        cls, *, input: Decimal | str | float, output: Decimal | str | float = 0
    ) -> Price:
        return cls(_decimal(input, "input price"), _decimal(output, "output price"))

    @classmethod
    def per_token(cls, *, input: Decimal | str | float, output: Decimal | str | float = 0) -> Price:
        return cls(
            _decimal(input, "input price per token") * _MILLION,
            _decimal(output, "output price per token") * _MILLION,
        )

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact USD for a call with this usage."""
        total = input_tokens * self.input_per_1m + output_tokens * self.output_per_1m
        return (total / _MILLION).normalize() if total else Decimal(0)


FREE = Price(Decimal(0), Decimal(0))

# USD per 1M tokens (input, output): public list prices, standard tier.
DEFAULT_PRICES: dict[str, Price] = {
    name: Price.per_million(input=i, output=o)
    for name, (i, o) in {
        "gpt-4o": ("2.50", "10.00"),
        "gpt-4o-mini": ("0.15", "0.60"),
        "gpt-4.1": ("2.00", "8.00"),
        "gpt-4.1-mini": ("0.40", "1.60"),
        "gpt-4.1-nano": ("0.10", "0.40"),
        "o3": ("2.00", "8.00"),
        "o4-mini": ("1.10", "4.40"),
        "gpt-3.5-turbo": ("0.50", "1.50"),
        "text-embedding-3-small": ("0.02", "0"),
        "text-embedding-3-large": ("0.13", "0"),
        "text-embedding-ada-002": ("0.10", "0"),
        "claude-opus-4-1": ("15.00", "75.00"),
        "claude-opus-4": ("15.00", "75.00"),
        "claude-sonnet-4": ("3.00", "15.00"),
        "claude-3-7-sonnet": ("3.00", "15.00"),
        "claude-3-5-sonnet": ("3.00", "15.00"),
        "claude-3-5-haiku": ("0.80", "4.00"),
        "claude-3-haiku": ("0.25", "1.25"),
    }.items()
}


def price_of(
    model: str, settings: WeirSettings | None = None, own: Price | None = None
) -> Price | None:
    """The price of ``model``: ``own``, else the configured table, else the default one.

    Dated model names (``claude-3-5-haiku-20241022``, ``gpt-4o-2024-08-06``) match
    the longest table entry they start with.
    """
    if own is not None:
        return own
    if settings is not None and settings.model_prices:
        found = _lookup(model, settings.model_prices)
        if found is not None:
            return Price(found.input_per_1m, found.output_per_1m)
    return _lookup(model, DEFAULT_PRICES)


def _lookup(model: str, table: Mapping[str, _P]) -> _P | None:
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def format_usd(amount: Decimal) -> str:
    """Dollars for people: two significant digits below a cent, cents above."""
    if amount == 0:
        return "$0"
    digits = 2 if abs(amount) >= 1 else max(2, -amount.adjusted() + 1)
    rounded = amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"${rounded:,.{digits}f}"
