"""Prices: exact Decimal cost, the default table, config overrides, display."""

from decimal import Decimal

import pytest

from weir.core.config import load_settings
from weir.core.errors import ConfigError, SecretError
from weir.processors import ModelEndpoint, OpenAICompatible, Price
from weir.processors.cost import DEFAULT_PRICES, format_usd, price_of


def test_cost_is_exact_decimal_arithmetic():
    price = Price.per_million(input="0.15", output="0.60")
    assert price.cost(1_000_000, 0) == Decimal("0.15")
    assert price.cost(1, 1) == Decimal("0.00000075")
    assert sum((price.cost(1, 0) for _ in range(1000)), Decimal(0)) == Decimal("0.00015")
    assert Price.per_token(input=0.000002, output=0.000008).cost(10, 10) == Decimal("0.0001")


def test_config_prices_override_the_default_table_and_endpoint_prices_win():
    settings = load_settings(
        model_prices={"gpt-4o-mini": {"input_per_1m": "0.10", "output_per_1m": "0.50"}}
    )
    assert price_of("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_of("gpt-4o-mini", settings) == Price.per_million(input="0.10", output="0.50")
    assert price_of("gpt-4o-mini-2024-07-18", settings).input_per_1m == Decimal("0.10")
    own = Price.per_million(input="9")
    assert price_of("gpt-4o-mini", settings, own) is own
    assert price_of("my-finetune") is None


def test_bad_prices_and_literal_provider_keys_are_refused():
    with pytest.raises(ConfigError):
        Price.per_million(input="-1")
    with pytest.raises(ConfigError):
        Price.per_million(input="abc")
    with pytest.raises(ConfigError, match="not both"):
        ModelEndpoint(
            "both",
            provider=OpenAICompatible("http://127.0.0.1:1/v1"),
            price=Price.per_million(input="1"),
            cost_per_token="0.000001",
        )
    with pytest.raises(SecretError) as raised:
        OpenAICompatible("http://127.0.0.1:1/v1", api_key="sk-literal-xyz")
    assert "sk-literal-xyz" not in str(raised.value)


def test_usd_is_shown_to_two_significant_digits_below_a_cent():
    assert format_usd(Decimal("0.0021")) == "$0.0021"
    assert format_usd(Decimal("0.00213")) == "$0.0021"
    assert format_usd(Decimal("12.345")) == "$12.35"
    assert format_usd(Decimal(0)) == "$0"
