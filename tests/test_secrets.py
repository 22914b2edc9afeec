"""Secret references resolved for real: env, file, Vault (hvac) and AWS Secrets Manager (boto3).

Vault and Secrets Manager are local HTTP servers speaking their APIs (KV v2
reads; ``GetSecretValue``), so the real client libraries do the talking.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from weir.core.config import load_settings
from weir.core.errors import SecretError, SecretStoreError
from weir.core.secrets import SecretRef, SecretResolver, scrub

VAULT_TOKEN = "hvs.test-token-0123456789"


class FakeSecretStores:
    """Vault KV v2 and AWS Secrets Manager, on one local aiohttp server."""

    def __init__(self) -> None:
        self.vault: dict[str, dict[str, str]] = {"llm/openai": {"api_key": "sk-from-vault-123"}}
        self.aws: dict[str, str] = {
            "prod/llm": json.dumps({"anthropic": "sk-ant-from-aws-456"}),
            "plain": "sk-plain-from-aws-789",
        }
        self.reads = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/secret/data/{path:.*}", self._vault_read)
        app.router.add_post("/", self._aws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _vault_read(self, request: web.Request) -> web.Response:
        self.reads += 1
        if request.headers.get("X-Vault-Token") != VAULT_TOKEN:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        data = self.vault.get(request.match_info["path"])
        if data is None:
            return web.json_response({"errors": []}, status=404)
        metadata = {
            "created_time": "2025-01-01T00:00:00Z",
            "deletion_time": "",
            "destroyed": False,
            "version": 1,
        }
        return web.json_response({"data": {"data": data, "metadata": metadata}})

    async def _aws(self, request: web.Request) -> web.Response:
        self.reads += 1
        target = request.headers.get("X-Amz-Target", "")
        body: dict[str, Any] = json.loads(await request.read())
        if target != "secretsmanager.GetSecretValue":
            return web.json_response({"__type": "UnknownOperationException"}, status=400)
        secret = self.aws.get(body["SecretId"])
        if secret is None:
            return web.json_response(
                {"__type": "ResourceNotFoundException", "message": "no such secret"},
                status=400,
                content_type="application/x-amz-json-1.1",
            )
        return web.json_response(
            {
                "ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:x",
                "Name": body["SecretId"],
                "SecretString": secret,
                "VersionId": "v1",
            },
            content_type="application/x-amz-json-1.1",
        )


@pytest.fixture
async def stores(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSecretStores]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    fake = FakeSecretStores()
    await fake.start()
    yield fake
    await fake.stop()


def resolver(stores: FakeSecretStores, **kw: Any) -> SecretResolver:
    url = f"http://127.0.0.1:{stores.port}"
    return SecretResolver(
        load_settings(
            vault_addr=url,
            vault_token=VAULT_TOKEN,
            aws_region="eu-west-1",
            aws_endpoint_url=url,
            **kw,
        )
    )


@pytest.mark.parametrize(
    "text",
    [
        "sk-proj-abcdef123456",
        "Bearer abc",
        "ENV:X",
        "env:",
        "env:A#b",
        "vault:nopath",
        "vault:secret/x",
        "file:/x#k",
        "http://x",
    ],
)
def test_literals_and_malformed_references_are_refused_without_echo(text):
    with pytest.raises(SecretError) as raised:
        SecretRef.parse(text)
    if ":" not in text or text.split(":")[0] not in ("env", "file", "vault", "aws-sm"):
        assert text not in str(raised.value)


async def test_env_and_file_references(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIR_T_KEY", "sk-env-value-1")
    key_file = tmp_path / "key"
    key_file.write_text("sk-file-value-2\n")
    r = SecretResolver(load_settings())
    assert (await r.resolve("env:WEIR_T_KEY")).get_secret_value() == "sk-env-value-1"
    assert (await r.resolve(f"file:{key_file}")).get_secret_value() == "sk-file-value-2"
    with pytest.raises(SecretError, match="not set"):
        await r.resolve("env:WEIR_T_MISSING")
    with pytest.raises(SecretError, match="cannot read"):
        await r.resolve(f"file:{tmp_path / 'nope'}")
    assert repr(await r.resolve("env:WEIR_T_KEY")) == "SecretStr('**********')"
    assert scrub("the key sk-env-value-1 leaked") == "the key *** leaked"


async def test_vault_kv2_through_hvac_is_cached_for_the_ttl(stores):
    r = resolver(stores, secret_cache_ttl_s=60)
    ref = "vault:secret/llm/openai#api_key"
    assert (await r.resolve(ref)).get_secret_value() == "sk-from-vault-123"
    assert (await r.resolve(ref)).get_secret_value() == "sk-from-vault-123"
    assert stores.reads == 1  # the second call came from the cache
    stores.vault["llm/openai"]["api_key"] = "sk-rotated-999999"
    r.invalidate(ref)
    assert (await r.resolve(ref)).get_secret_value() == "sk-rotated-999999"
    with pytest.raises(SecretError, match="no such path"):
        await r.resolve("vault:secret/llm/missing#api_key")
    with pytest.raises(SecretError, match="no field 'nope'"):
        await r.resolve("vault:secret/llm/openai#nope")


async def test_vault_refusing_the_token_is_a_clear_error(stores):
    url = f"http://127.0.0.1:{stores.port}"
    r = SecretResolver(load_settings(vault_addr=url, vault_token="wrong-token-value"))
    with pytest.raises(SecretError, match="refused the token") as raised:
        await r.resolve("vault:secret/llm/openai#api_key")
    assert "wrong-token-value" not in str(raised.value)


async def test_zero_ttl_resolves_at_every_call(stores):
    r = resolver(stores, secret_cache_ttl_s=0)
    for _ in range(3):
        await r.resolve("vault:secret/llm/openai#api_key")
    assert stores.reads == 3


async def test_aws_secrets_manager_through_boto3(stores):
    r = resolver(stores)
    assert (await r.resolve("aws-sm:prod/llm#anthropic")).get_secret_value() == (
        "sk-ant-from-aws-456"
    )
    assert (await r.resolve("aws-sm:plain")).get_secret_value() == "sk-plain-from-aws-789"
    with pytest.raises(SecretError, match="ResourceNotFoundException"):
        await r.resolve("aws-sm:missing")
    with pytest.raises(SecretError, match="not JSON"):
        await r.resolve("aws-sm:plain#field")


async def test_an_unreachable_vault_is_retriable_but_a_missing_secret_is_not(stores):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = SecretResolver(
        load_settings(vault_addr=f"http://127.0.0.1:{closed}", vault_token=VAULT_TOKEN)
    )
    with pytest.raises(SecretStoreError, match="cannot reach") as raised:
        await down.resolve("vault:secret/llm/openai#api_key")
    assert raised.value.retriable and raised.value.error_type == "secret_store_unreachable"
    with pytest.raises(SecretError) as missing:
        await resolver(stores).resolve("vault:secret/llm/missing#api_key")
    assert not isinstance(missing.value, SecretStoreError) and not missing.value.retriable
    with pytest.raises(SecretError) as malformed:
        SecretRef.parse("vault:nopath")
    assert not malformed.value.retriable
