"""``WeirClient`` input checks that need no broker."""

from __future__ import annotations

import pytest

from weir.core.config import load_settings
from weir.core.errors import ConfigError
from weir.streams.client import WeirClient


@pytest.mark.parametrize(("payloads", "ids"), [(3, 2), (1, 2)])
async def test_submit_many_refuses_a_request_id_count_that_does_not_match(payloads, ids):
    client = WeirClient(load_settings())  # not started: the check comes before any I/O
    with pytest.raises(ConfigError) as raised:
        await client.submit_many(
            "p", [{"n": n} for n in range(payloads)], request_ids=[f"r{n}" for n in range(ids)]
        )
    assert f"{payloads} payload(s) but {ids} request id(s)" in str(raised.value)
