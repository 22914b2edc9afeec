"""A pipeline that spills canary PII and secrets every way a step can, for the redaction tests.

``lookup`` logs its input and outputs it (traced with ``log_io``); ``charge``
logs a line with a canary key, logs an exception whose message and source
line carry the canaries, and fails with them in its message and its cause.
Subprocess workers learn their pipeline's name from ``WEIR_TEST_PIPELINE``.
"""

from __future__ import annotations

import logging
import os

from weir.streams import Pipeline, RetryPolicy

CANARY_EMAIL = "zed.canary7@example.org"
CANARY_KEY = "sk-canary-Q7w9E2r4T6y8U1i3O5p7A9s2"
CANARY_PASSWORD = "canary-pw-5531"
CANARIES = (CANARY_EMAIL, CANARY_KEY, CANARY_PASSWORD)

log = logging.getLogger("weir.tests.canary")


def canary_pipeline(name: str) -> Pipeline:
    p = Pipeline(name, retry=RetryPolicy(maximum_attempts=1))

    @p.step(log_io=True)
    def lookup(customer: str) -> dict[str, str]:
        log.info("looking up %s", customer)
        return {"customer": customer, "plan": "gold"}

    @p.step(depends_on=[lookup], log_io=True)
    def charge(lookup: dict[str, str]) -> str:
        log.warning("charging %s with key %s", lookup["customer"], CANARY_KEY)
        try:
            # A literal canary, so that the traceback's source line carries one as well.
            raise LookupError("no account zed.canary7@example.org")
        except LookupError as exc:
            where = f"http://billing:{CANARY_PASSWORD}@127.0.0.1:9/"
            log.exception("billing lookup failed for %s at %s", lookup["customer"], where)
            raise RuntimeError(
                f"charge of {lookup['customer']} failed at {where} (key {CANARY_KEY})"
            ) from exc

    return p


canary = canary_pipeline(os.environ.get("WEIR_TEST_PIPELINE", "test-canary"))
