"""The answer stage's result writer gives the bytes the pydantic ``Result`` gives."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from weir.schemas._result_codec import ResultFields
from weir.schemas.messages import ModelCall, Result, total_usage


def _call(n: int) -> ModelCall:
    return ModelCall(
        step="classify",
        attempt=n,
        endpoint="gpt",
        model="m-ü",
        provider="openai",
        operation="chat",
        status="SUCCESS" if n % 2 else "FAILURE",
        started_at=1_764_000_000_000 + n,
        duration_ms=12.5 * n,
        input_tokens=100 * n,
        output_tokens=7 * n,
        cost_usd=Decimal("0.000123456789") * n,
        usage_source="provider",
    )


def _fields(**changes: object) -> ResultFields:
    calls = [_call(1), _call(2)]
    tokens_in, tokens_out, cost = total_usage(calls)
    base = ResultFields(
        request_id="r-1",
        pipeline="p",
        status="SUCCESS",
        output=json.dumps({"label": "spam", "score": 0.1 + 0.2, "text": "naïve ☃ \u2028"}),
        error_type=None,
        error_message=None,
        failed_step=None,
        path=["a", "b", "c"],
        submitted_at=1_764_000_000_000,
        completed_at=1_764_000_000_123,
        latency_ms=123.456789,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=cost,
        calls=[c.to_record() for c in calls],
        replay=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


CASES = {
    "success with calls": _fields(),
    "no calls": _fields(calls=[], input_tokens=0, output_tokens=0, cost_usd=Decimal(0)),
    "output a bare value": _fields(output="3"),
    "output null": _fields(output="null"),
    "no output": _fields(output=None),
    "large and small floats": _fields(output="[1e300, 5e-324, -0.0, 1.5]", latency_ms=1e-7),
    "failure": _fields(
        status="FAILURE",
        output=None,
        error_type="step_error",
        error_message='boom "quoted" \n\t <script>',
        failed_step="b",
    ),
    "replay": _fields(replay="replay-7"),
    "empty path": _fields(path=[]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_json_result_bytes_are_the_pydantic_results(name: str) -> None:
    fields = CASES[name]
    assert fields.to_wire("json") == fields.to_result().to_wire("json")


@pytest.mark.parametrize("name", list(CASES))
def test_avro_result_bytes_are_the_pydantic_results(name: str) -> None:
    fields = CASES[name]
    assert fields.to_wire("avro", schema_id=7) == fields.to_result().to_wire("avro", schema_id=7)


def test_the_written_result_reads_back_as_the_same_result() -> None:
    fields = CASES["success with calls"]
    back = Result.from_wire(fields.to_wire("json"))
    assert back.to_wire("json") == fields.to_wire("json")
    assert back.value == json.loads(fields.output or "null")
    assert back.model_calls() == [_call(1), _call(2)]
