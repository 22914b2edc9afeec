"""mask_url: the one way a URL with credentials is shown, in settings, logs and errors."""

from __future__ import annotations

import pytest

from weir.core.urls import SecretUrl, mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://weir:s3cret@127.0.0.1:8123/db", "http://weir:***@127.0.0.1:8123/db"),
        ("https://user:p@ss@host", "https://user:***@host"),  # a raw '@' in the password
        ("chdb:///var/lib/weir/clickhouse", "chdb:///var/lib/weir/clickhouse"),
        ("http://host:8123?compress=false", "http://host:8123?compress=false"),
        ("http://token-only@host/", "http://token-only@host/"),  # a user name alone is kept
        ("http://h/?user=a&password=s3cret&x=1", "http://h/?user=a&password=***&x=1"),
        ("http://h/?access_token=abc#frag", "http://h/?access_token=***#frag"),
        (
            "store http://a:b@h1 unreachable, tried https://c:d@h2:443/x too",
            "store http://a:***@h1 unreachable, tried https://c:***@h2:443/x too",
        ),
        ("no url here: a=b", "no url here: a=b"),
    ],
)
def test_mask_url_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_long_run_without_a_url_is_scanned_in_linear_time() -> None:
    # A bounded scheme: "a+a+a+...://" must not be re-scanned from every position.
    text = "a+" * 200_000 + "=x"
    assert mask_url(text) == text


def test_a_secret_url_is_masked_in_str_repr_and_format() -> None:
    url = SecretUrl("http://weir:s3cret@host:8123")
    assert str(url) == f"{url}" == "http://weir:***@host:8123"
    assert repr(url) == "SecretUrl('http://weir:***@host:8123')"
    assert url.get_secret_value() == "http://weir:s3cret@host:8123"
    assert url.startswith("http://")


def test_a_model_provider_names_its_base_url_masked() -> None:
    from weir.processors.providers.openai import OpenAICompatible

    provider = OpenAICompatible("http://proxy:s3cret@127.0.0.1:11434/v1")
    assert "s3cret" not in provider.describe()
    assert "proxy:***@127.0.0.1:11434" in provider.describe()
