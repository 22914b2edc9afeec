"""StepExecutor without Kafka: argument injection and coercion, calling, timeouts, branches."""

import asyncio
import contextvars
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import BaseModel

from weir.core.errors import SchemaInvalidError, StepError, StepTimeoutError
from weir.schemas.messages import Envelope
from weir.streams.branch import Branch
from weir.streams.context import StepContext
from weir.streams.executor import StepExecutor, encode_output, split_branch
from weir.streams.pipeline import Pipeline


class Item(BaseModel):
    name: str
    qty: int


class Query(BaseModel):
    text: str
    limit: int = 3


@pytest.fixture(scope="module")
def threads() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-step")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def _envelope(
    step: str, source: str = "", payload: str | None = None, request: Any = None
) -> Envelope:
    return Envelope(
        request_id="req-1",
        pipeline="shop",
        step=step,
        source=source,
        kind="VALUE" if payload is not None or not source else "SKIP",
        submitted_at=1_700_000_000_000,
        created_at=1_700_000_000_000_123,
        request=json.dumps({} if request is None else request),
        payload=payload,
        attempt=2,
        options={"latency_sla": "fast"},
        path=["a"],
    )


def _executor(
    p: Pipeline, step: str, threads: ThreadPoolExecutor, default_timeout_s: float = 5.0
) -> StepExecutor:
    return StepExecutor(
        p.steps[step],
        pipeline=p.name,
        worker_id="worker-7",
        default_timeout_s=default_timeout_s,
        threads=threads,
    )


def _args(ex: StepExecutor, request: Any = None, **outputs: Any) -> dict[str, Any]:
    """arguments() with each dependency's output given as a Python value (JSON-encoded here)."""
    inputs = {name: json.dumps(value) for name, value in outputs.items()}
    first = _envelope(ex.step.name, request=request)
    return ex.arguments(inputs, first)


# -- arguments() -------------------------------------------------------------------------------


def test_seed_example_receives_outputs_positionally(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("support")

    @p.step()
    def query_vector_db(text: str) -> str:
        return text

    @p.step()
    def fetch_user_messages(user_id: str) -> list[str]:
        return [user_id]

    @p.step(depends_on=[query_vector_db, fetch_user_messages])
    def generate_response(context: str, history: list) -> str:
        return context

    ex = _executor(p, "generate_response", threads)
    kwargs = _args(ex, query_vector_db="relevant docs", fetch_user_messages=["hi", "bye"])
    assert kwargs == {"context": "relevant docs", "history": ["hi", "bye"]}


def test_dependency_outputs_are_coerced_to_annotations(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def count(sku: str) -> str:
        return "3"

    @p.step()
    def item(sku: str) -> dict:
        return {}

    @p.step(depends_on=[count, item])
    def total(count: int, item: Item, note=None) -> int:
        return count

    ex = _executor(p, "total", threads)
    kwargs = _args(ex, count="3", item={"name": "pen", "qty": "2"})
    assert kwargs == {"count": 3, "item": Item(name="pen", qty=2)}
    assert type(kwargs["count"]) is int


def test_unannotated_dependency_is_plain_json(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def a(sku: str) -> dict:
        return {}

    @p.step(depends_on=[a])
    def b(a):
        return a

    ex = _executor(p, "b", threads)
    assert _args(ex, a={"k": [1, 2.5, None]}) == {"a": {"k": [1, 2.5, None]}}
    assert ex.arguments({"a": None}, _envelope("b", "a", None)) == {"a": None}


def test_wrong_dependency_type_raises_schema_invalid_naming_step_and_parameter(
    threads: ThreadPoolExecutor,
) -> None:
    p = Pipeline("shop")

    @p.step()
    def count(sku: str) -> str:
        return ""

    @p.step(depends_on=[count])
    def total(amount: int) -> int:
        return amount

    ex = _executor(p, "total", threads)
    with pytest.raises(SchemaInvalidError) as info:
        _args(ex, count="many")
    message = str(info.value)
    assert "'total'" in message and "'amount'" in message and "integer" in message
    assert info.value.error_type == "schema_invalid"
    assert info.value.__cause__ is not None


def test_root_fields_are_injected_coerced_and_defaulted(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def search(text: str, limit: int = 5, tags=None) -> list[str]:
        return []

    ex = _executor(p, "search", threads)
    assert _args(ex, request={"text": "pens"}) == {"text": "pens", "limit": 5, "tags": None}
    assert _args(ex, request={"text": "pens", "limit": "7", "tags": ["a"], "other": 1}) == {
        "text": "pens",
        "limit": 7,
        "tags": ["a"],
    }


def test_missing_required_request_field_raises_schema_invalid(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def search(text: str, limit: int = 5) -> list[str]:
        return []

    ex = _executor(p, "search", threads)
    with pytest.raises(SchemaInvalidError) as info:
        _args(ex, request={"limit": 2})
    assert "'search'" in str(info.value) and "'text'" in str(info.value)


def test_wrong_request_field_type_raises_schema_invalid(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def search(text: str, limit: int = 5) -> list[str]:
        return []

    ex = _executor(p, "search", threads)
    with pytest.raises(SchemaInvalidError) as info:
        _args(ex, request={"text": "pens", "limit": "lots"})
    assert "'search'" in str(info.value) and "'limit'" in str(info.value)


def test_whole_payload_is_validated_into_the_model(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def search(query: Query) -> list[str]:
        return []

    ex = _executor(p, "search", threads)
    assert _args(ex, request={"text": "pens", "limit": "2"}) == {
        "query": Query(text="pens", limit=2)
    }
    with pytest.raises(SchemaInvalidError) as info:
        _args(ex, request={"limit": 2})
    assert "'search'" in str(info.value) and "'query'" in str(info.value)


def test_request_parameter_receives_the_raw_payload(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def search(request) -> str:
        return ""

    ex = _executor(p, "search", threads)
    assert _args(ex, request={"text": "pens", "n": [1]}) == {"request": {"text": "pens", "n": [1]}}


def test_step_context_is_built_from_the_first_envelope(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def a(sku: str) -> str:
        return sku

    @p.step(depends_on=[a])
    def b(ctx: StepContext, a: str) -> str:
        return a

    ex = _executor(p, "b", threads)
    kwargs = _args(ex, request={"sku": "X1"}, a="x1")
    ctx = kwargs["ctx"]
    assert isinstance(ctx, StepContext)
    assert (ctx.request_id, ctx.pipeline, ctx.step, ctx.attempt, ctx.worker_id) == (
        "req-1",
        "shop",
        "b",
        2,
        "worker-7",
    )
    assert ctx.request == {"sku": "X1"}
    assert ctx.options == {"latency_sla": "fast"}
    assert ctx.submitted_at == 1_700_000_000_000
    assert kwargs["a"] == "x1"


# -- call() ------------------------------------------------------------------------------------


async def test_sync_step_runs_in_the_thread_pool_with_the_callers_context(
    threads: ThreadPoolExecutor,
) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    p = Pipeline("shop")

    @p.step()
    def where(sku: str) -> tuple[str, str, str]:
        return sku, threading.current_thread().name, var.get()

    var.set("from the caller")
    sku, thread_name, seen = await _executor(p, "where", threads).call({"sku": "X"})
    assert sku == "X"
    assert thread_name.startswith("test-step")
    assert seen == "from the caller"


async def test_inline_sync_step_runs_on_the_event_loop_thread(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step(inline=True)
    def where(sku: str) -> str:
        return threading.current_thread().name

    assert await _executor(p, "where", threads).call({"sku": "X"}) == (
        threading.current_thread().name
    )


async def test_async_step_is_awaited(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    async def fetch(sku: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"sku": sku}

    ex = _executor(p, "fetch", threads)
    assert await ex.call({"sku": "X"}) == {"sku": "X"}


async def test_run_injects_then_calls(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def a(sku: str) -> str:
        return sku

    @p.step(depends_on=[a])
    async def b(a: int) -> int:
        return a * 2

    assert await _executor(p, "b", threads).run({"a": '"21"'}, _envelope("b", "a", '"21"')) == 42


@pytest.mark.parametrize("is_async", [False, True])
async def test_exception_is_wrapped_in_step_error_with_cause(
    threads: ThreadPoolExecutor, is_async: bool
) -> None:
    p = Pipeline("shop")
    original = ValueError("boom")

    def fail(sku: str) -> None:
        raise original

    async def afail(sku: str) -> None:
        raise original

    p.add_step("fail", afail if is_async else fail)
    with pytest.raises(StepError) as info:
        await _executor(p, "fail", threads).call({"sku": "X"})
    assert type(info.value) is StepError
    assert info.value.__cause__ is original
    assert str(info.value) == "step 'fail' raised ValueError: boom"
    assert info.value.retriable and info.value.error_type == "step_error"


async def test_weir_errors_raised_by_a_step_pass_through(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    def check(sku: str) -> None:
        raise SchemaInvalidError("sku is not a sku")

    with pytest.raises(SchemaInvalidError, match="sku is not a sku"):
        await _executor(p, "check", threads).call({"sku": "X"})


async def test_slow_async_step_times_out(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step(timeout=0.05)
    async def slow(sku: str) -> None:
        await asyncio.sleep(10)

    with pytest.raises(StepTimeoutError) as info:
        await _executor(p, "slow", threads, default_timeout_s=60).call({"sku": "X"})
    assert str(info.value) == "step 'slow' did not finish within 0.05s"
    assert isinstance(info.value, StepError)
    assert info.value.error_type == "step_timeout"


async def test_slow_sync_step_times_out_without_waiting_for_the_thread(
    threads: ThreadPoolExecutor,
) -> None:
    release = threading.Event()
    p = Pipeline("shop")

    @p.step(timeout=0.05)
    def slow(sku: str) -> None:
        release.wait(5)

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(StepTimeoutError, match="'slow'"):
            await _executor(p, "slow", threads, default_timeout_s=60).call({"sku": "X"})
        assert loop.time() - started < 1.0
    finally:
        release.set()


async def test_default_timeout_applies_when_the_step_has_none(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("shop")

    @p.step()
    async def slow(sku: str) -> None:
        await asyncio.sleep(10)

    with pytest.raises(StepTimeoutError, match=r"within 0\.05s"):
        await _executor(p, "slow", threads, default_timeout_s=0.05).call({"sku": "X"})


async def test_timeout_error_raised_by_the_step_is_a_step_error(
    threads: ThreadPoolExecutor,
) -> None:
    p = Pipeline("shop")

    @p.step()
    async def call_upstream(sku: str) -> None:
        raise TimeoutError("upstream read timed out")

    with pytest.raises(StepError) as info:
        await _executor(p, "call_upstream", threads).call({"sku": "X"})
    assert type(info.value) is StepError
    assert "upstream read timed out" in str(info.value)


async def test_branch_return_is_split_into_value_and_targets(threads: ThreadPoolExecutor) -> None:
    p = Pipeline("support")

    @p.step()
    def classify(text: str) -> str:
        return "balance"

    @p.step(depends_on=[classify])
    def route(classify: str) -> Branch:
        return Branch([balance, "dispute"] if classify == "both" else classify, {"intent": 1})

    @p.step(depends_on=[route])
    def balance(route: dict) -> str:
        return "42"

    @p.step(depends_on=[route])
    def dispute(route: dict) -> str:
        return "call"

    ex = _executor(p, "route", threads)
    assert split_branch(await ex.call({"classify": "balance"})) == ({"intent": 1}, ("balance",))
    assert split_branch(await ex.call({"classify": "both"})) == (
        {"intent": 1},
        ("balance", "dispute"),
    )


def test_split_branch_of_a_plain_value_has_no_targets() -> None:
    assert split_branch({"a": 1}) == ({"a": 1}, None)
    assert split_branch(None) == (None, None)


# -- encode_output -----------------------------------------------------------------------------


def test_encode_output_handles_models_and_plain_values() -> None:
    assert json.loads(encode_output(Item(name="pen", qty=2), step="s")) == {"name": "pen", "qty": 2}
    assert encode_output(None, step="s") == "null"
    assert json.loads(encode_output({"a": (1, 2)}, step="s")) == {"a": [1, 2]}


def test_encode_output_of_an_unserialisable_value_is_a_step_error() -> None:
    with pytest.raises(StepError, match="step 'odd' returned a value that is not JSON"):
        encode_output(object(), step="odd")


def test_a_step_that_never_reads_the_request_does_not_parse_it(
    threads: ThreadPoolExecutor,
) -> None:
    p = Pipeline("shop")

    @p.step()
    def a(sku: str) -> str:
        return sku

    @p.step(depends_on=[a])
    def b(a: str) -> str:
        return a

    ex = _executor(p, "b", threads)
    first = _envelope("b", "a", json.dumps("x1")).replace(request="not JSON")
    ctx = ex.context(first)  # what the runner makes for every attempt
    assert ex.arguments({"a": json.dumps("x1")}, first, ctx) == {"a": "x1"}
    assert (ctx.request_id, ctx.attempt, ctx.options) == ("req-1", 2, {"latency_sla": "fast"})
    with pytest.raises(json.JSONDecodeError):  # parsed only when read
        _ = ctx.request


def test_the_request_is_parsed_once_for_the_context_and_the_bound_fields(
    threads: ThreadPoolExecutor,
) -> None:
    p = Pipeline("shop")

    @p.step()
    def a(ctx: StepContext, request: Any, sku: str) -> str:
        return sku

    ex = _executor(p, "a", threads)
    first = _envelope("a", request={"sku": "X1"})
    ctx = ex.context(first)
    kwargs = ex.arguments({}, first, ctx)
    assert kwargs["request"] is ctx.request == {"sku": "X1"}
    assert kwargs["sku"] == "X1"
    # A replaced envelope (a retry's, a dead letter's) parses its own request.
    other = first.replace(request=json.dumps({"sku": "Y2"}))
    assert ex.context(other).request == {"sku": "Y2"}


def test_step_context_keeps_the_request_out_of_its_repr() -> None:
    ctx = StepContext(
        request_id="r", pipeline="p", step="s", attempt=1, worker_id="w", request={"ssn": "1"}
    )
    assert "ssn" not in repr(ctx) and "request_id='r'" in repr(ctx)
    assert ctx == StepContext(
        request_id="r", pipeline="p", step="s", attempt=1, worker_id="w", request={"ssn": "1"}
    )
