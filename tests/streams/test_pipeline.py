"""The pipeline DSL: declaration errors, parameter binding and the validated graph (no Kafka)."""

import inspect

import pytest
from pydantic import BaseModel

from weir.core.errors import (
    CycleError,
    DuplicateStepError,
    JoinInputSkippedError,
    PipelineDefinitionError,
    UnknownDependencyError,
    UnsatisfiedParameterError,
)
from weir.streams.branch import Branch
from weir.streams.context import StepContext
from weir.streams.dependencies import any_of
from weir.streams.local import run_local
from weir.streams.pipeline import Binding, Pipeline
from weir.topics.names import ANSWER


def _message_of(info: pytest.ExceptionInfo[BaseException], exc_type: type, *fragments: str) -> str:
    """Check the exact error class and that the message contains every fragment."""
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


class Query(BaseModel):
    text: str
    user_id: str = "anonymous"


def _seed_pipeline() -> Pipeline:
    p = Pipeline("support")

    @p.step()
    def query_vector_db(text: str) -> str:
        return f"docs about {text}"

    @p.step()
    def fetch_user_messages(user_id: str) -> list[str]:
        return [f"earlier message from {user_id}"]

    @p.step(depends_on=[query_vector_db, fetch_user_messages])
    def generate_response(context: str, history: list) -> str:
        return f"{context} / {len(history)}"

    return p


# -- invalid definitions -----------------------------------------------------------------


def test_duplicate_step_name_is_rejected_naming_pipeline_and_step() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str) -> str:
        return sku

    with pytest.raises(DuplicateStepError) as info:

        @p.step(name="lookup")
        def other(sku: str) -> str:
            return sku

    _message_of(info, DuplicateStepError, "'shop'", "'lookup'", "already declared")
    assert info.value.error_type == "duplicate_step"
    assert list(p.steps) == ["lookup"]


def test_unknown_string_dependency_is_found_at_validate_with_did_you_mean_hint() -> None:
    p = Pipeline("shop")

    @p.step()
    def fetch_user(user_id: str) -> dict:
        return {"id": user_id}

    @p.step(depends_on=["fetch_usr"])
    def greet(user: dict) -> str:
        return "hi"

    with pytest.raises(UnknownDependencyError) as info:
        p.validate()
    _message_of(
        info,
        UnknownDependencyError,
        "'shop'",
        "'greet'",
        "unknown step 'fetch_usr'",
        "did you mean 'fetch_user'?",
    )
    assert info.value.error_type == "unknown_dependency"


def test_unknown_string_dependency_without_close_match_has_no_hint() -> None:
    p = Pipeline("shop")

    @p.step()
    def fetch_user(user_id: str) -> dict:
        return {"id": user_id}

    @p.step(depends_on=["zzz"])
    def greet(user: dict) -> str:
        return "hi"

    with pytest.raises(UnknownDependencyError) as info:
        p.validate()
    message = _message_of(info, UnknownDependencyError, "'shop'", "'greet'", "'zzz'")
    assert "did you mean" not in message


def test_graph_properties_validate_the_pipeline_first() -> None:
    p = Pipeline("shop")

    @p.step(depends_on=["missing"])
    def greet(user: dict) -> str:
        return "hi"

    for read in (
        lambda: p.order,
        lambda: p.final_steps,
        lambda: p.root_steps,
        lambda: p.dependents("greet"),
    ):
        with pytest.raises(UnknownDependencyError):
            read()


def test_dependency_on_a_plain_function_is_rejected_at_declaration() -> None:
    p = Pipeline("shop")

    def helper(sku: str) -> str:
        return sku

    with pytest.raises(UnknownDependencyError) as info:

        @p.step(depends_on=[helper])
        def price(helper: str) -> float:
            return 1.0

    _message_of(
        info, UnknownDependencyError, "'shop'", "'price'", "'helper'", "not a step of this pipeline"
    )
    assert "price" not in p.steps


def test_dependency_on_a_step_of_another_pipeline_is_rejected() -> None:
    other = Pipeline("other")

    @other.step()
    def lookup(sku: str) -> str:
        return sku

    p = Pipeline("shop")
    with pytest.raises(UnknownDependencyError) as info:

        @p.step(depends_on=[lookup])
        def price(lookup: str) -> float:
            return 1.0

    _message_of(
        info, UnknownDependencyError, "'shop'", "'price'", "'lookup'", "not a step of this pipeline"
    )


def test_function_declared_in_two_pipelines_under_different_names_is_a_valid_dependency() -> None:
    first, second = Pipeline("first"), Pipeline("second")

    def embed(text: str) -> list[float]:
        return [0.0]

    first.step()(embed)
    second.step(name="embed_query")(embed)

    @first.step(depends_on=[embed])
    def search(embed: list[float]) -> str:
        return "hit"

    assert first.steps["search"].depends_on == ("embed",)


def test_cycle_through_string_forward_references_shows_the_path() -> None:
    p = Pipeline("loop")

    @p.step(depends_on=["b"])
    def a(b: str) -> str:
        return b

    @p.step(depends_on=[a])
    def b(a: str) -> str:
        return a

    with pytest.raises(CycleError) as info:
        p.validate()
    _message_of(info, CycleError, "'loop'", "cycle", "a -> b -> a")
    assert info.value.error_type == "pipeline_cycle"


def test_longer_cycle_below_a_root_shows_only_the_cycle() -> None:
    p = Pipeline("loop")

    @p.step()
    def root(text: str) -> str:
        return text

    @p.step(depends_on=[root, "c"])
    def a(root: str, c: str) -> str:
        return root

    @p.step(depends_on=[a])
    def b(a: str) -> str:
        return a

    @p.step(depends_on=[b])
    def c(b: str) -> str:
        return b

    with pytest.raises(CycleError) as info:
        p.validate()
    message = _message_of(info, CycleError, "'loop'", "a -> c -> b -> a")
    assert "root" not in message.split("cycle:")[1]


def test_self_dependency_is_a_cycle_error_at_declaration() -> None:
    p = Pipeline("loop")
    with pytest.raises(CycleError) as info:

        @p.step(depends_on=["again"])
        def again(again: str) -> str:
            return again

    _message_of(info, CycleError, "'loop'", "'again'", "depends on itself")


def test_dependency_listed_twice_is_rejected() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str) -> str:
        return sku

    with pytest.raises(PipelineDefinitionError) as info:

        @p.step(depends_on=[lookup, "lookup"])
        def price(lookup: str, again: str) -> float:
            return 1.0

    _message_of(info, PipelineDefinitionError, "'shop'", "'price'", "dependency twice")


def test_non_root_parameter_that_matches_nothing_is_rejected() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str) -> str:
        return sku

    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step(depends_on=[lookup])
        def price(lookup: str, currency: str) -> float:
            return 1.0

    _message_of(
        info,
        UnsatisfiedParameterError,
        "'shop'",
        "'price'",
        "parameter 'currency'",
        "matches no dependency",
        "['lookup']",
    )
    assert info.value.error_type == "unsatisfied_parameter"


def test_non_root_parameter_with_default_is_left_to_its_default() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str) -> str:
        return sku

    @p.step(depends_on=[lookup])
    def price(lookup: str, currency: str = "EUR") -> str:
        return currency

    assert [b.parameter for b in p.steps["price"].bindings] == ["lookup"]


def test_more_dependencies_than_parameters_is_rejected() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str) -> str:
        return sku

    @p.step()
    def stock(sku: str) -> int:
        return 1

    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step(depends_on=[lookup, stock])
        def price(lookup: str) -> float:
            return 1.0

    _message_of(
        info, UnsatisfiedParameterError, "'shop'", "'price'", "['stock']", "no parameter left"
    )


def test_var_positional_parameter_is_rejected() -> None:
    p = Pipeline("shop")
    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step()
        def collect(*args: str) -> str:
            return ""

    _message_of(info, UnsatisfiedParameterError, "'shop'", "'collect'", "*args", "cannot be")


def test_var_keyword_parameter_is_rejected() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str) -> str:
        return sku

    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step(depends_on=[lookup])
        def collect(lookup: str, **extra: str) -> str:
            return ""

    _message_of(info, UnsatisfiedParameterError, "'shop'", "'collect'", "**extra", "cannot be")


def test_positional_only_parameter_is_rejected() -> None:
    p = Pipeline("shop")
    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step()
        def lookup(sku: str, /) -> str:
            return sku

    _message_of(info, UnsatisfiedParameterError, "'shop'", "'lookup'", "positional-only", "'sku'")


@pytest.mark.parametrize("name", ["my.pipeline", "my pipeline", "", "1st", "_private", "x" * 101])
def test_bad_pipeline_name_is_rejected(name: str) -> None:
    with pytest.raises(PipelineDefinitionError) as info:
        Pipeline(name)
    _message_of(
        info, PipelineDefinitionError, f"pipeline name {name!r}", "must start with a letter"
    )


@pytest.mark.parametrize("name", ["support", "a", "customer-support_v3", "x" * 100])
def test_good_pipeline_name_is_accepted(name: str) -> None:
    assert Pipeline(name).name == name


@pytest.mark.parametrize("name", ["my.step", "my step", "", "2nd", "-x"])
def test_bad_step_name_is_rejected(name: str) -> None:
    p = Pipeline("shop")

    def fn(sku: str) -> str:
        return sku

    with pytest.raises(PipelineDefinitionError) as info:
        p.add_step(name, fn)
    _message_of(info, PipelineDefinitionError, "'shop'", f"step name {name!r}", "must start")
    assert p.steps == {}


@pytest.mark.parametrize("name", ["my.step", "my step"])
def test_bad_step_name_given_to_the_decorator_is_rejected(name: str) -> None:
    p = Pipeline("shop")
    with pytest.raises(PipelineDefinitionError) as info:

        @p.step(name=name)
        def fn(sku: str) -> str:
            return sku

    _message_of(info, PipelineDefinitionError, "'shop'", f"step name {name!r}")


def test_empty_step_name_given_to_the_decorator_is_rejected() -> None:
    p = Pipeline("shop")
    with pytest.raises(PipelineDefinitionError):

        @p.step(name="")
        def fn(sku: str) -> str:
            return sku


def test_non_callable_step_is_rejected() -> None:
    p = Pipeline("shop")
    with pytest.raises(PipelineDefinitionError) as info:
        p.add_step("price", 42)  # type: ignore[arg-type]
    _message_of(info, PipelineDefinitionError, "'shop'", "'price'", "not callable")


@pytest.mark.parametrize("timeout", [0, -1.5])
def test_non_positive_timeout_is_rejected(timeout: float) -> None:
    p = Pipeline("shop")
    with pytest.raises(PipelineDefinitionError) as info:

        @p.step(timeout=timeout)
        def lookup(sku: str) -> str:
            return sku

    _message_of(info, PipelineDefinitionError, "'shop'", "'lookup'", "timeout must be positive")


def test_empty_pipeline_fails_validation() -> None:
    with pytest.raises(PipelineDefinitionError) as info:
        Pipeline("empty").validate()
    _message_of(info, PipelineDefinitionError, "'empty'", "no steps")


def test_root_parameter_outside_the_input_model_is_rejected() -> None:
    p = Pipeline("shop", input=Query)
    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step()
        def search(text: str, language: str) -> str:
            return text

    _message_of(
        info,
        UnsatisfiedParameterError,
        "'shop'",
        "'search'",
        "parameter 'language'",
        "input model Query",
        "['text', 'user_id']",
    )


def test_root_parameter_outside_the_input_model_with_a_default_is_accepted() -> None:
    p = Pipeline("shop", input=Query)

    @p.step()
    def search(text: str, language: str = "en") -> str:
        return text

    by_param = {b.parameter: b for b in p.steps["search"].bindings}
    assert by_param["text"].source == "field"
    assert by_param["text"].required
    assert by_param["language"].source == "field"
    assert not by_param["language"].required
    assert by_param["language"].default == "en"


def test_non_root_step_reads_input_model_fields() -> None:
    p = Pipeline("shop", input=Query)

    @p.step()
    def search(text: str) -> list[str]:
        return [text]

    @p.step(depends_on=[search])
    def answer(search: list[str], user_id: str) -> str:
        return user_id

    by_param = {b.parameter: b for b in p.steps["answer"].bindings}
    assert by_param["search"] == Binding(
        "search", "dependency", "search", by_param["search"].adapter
    )
    assert by_param["user_id"].source == "field"
    assert by_param["user_id"].name == "user_id"


def test_non_root_parameter_outside_the_input_model_is_rejected() -> None:
    p = Pipeline("shop", input=Query)

    @p.step()
    def search(text: str) -> list[str]:
        return [text]

    with pytest.raises(UnsatisfiedParameterError) as info:

        @p.step(depends_on=[search])
        def answer(search: list[str], tone: str) -> str:
            return tone

    _message_of(info, UnsatisfiedParameterError, "'shop'", "'answer'", "parameter 'tone'")


def test_input_that_is_not_a_pydantic_model_is_a_definition_error() -> None:
    with pytest.raises(PipelineDefinitionError):
        p = Pipeline("shop", input=dict)  # type: ignore[arg-type]

        @p.step()
        def search(text: str) -> str:
            return text


# -- valid definitions and binding ------------------------------------------------------------


def test_seed_example_binds_dependencies_by_position() -> None:
    p = _seed_pipeline()
    step = p.steps["generate_response"]
    assert step.depends_on == ("query_vector_db", "fetch_user_messages")
    assert [(b.parameter, b.source, b.name) for b in step.bindings] == [
        ("context", "dependency", "query_vector_db"),
        ("history", "dependency", "fetch_user_messages"),
    ]
    assert all(b.adapter is not None for b in step.bindings)
    assert step.is_join and not step.is_root
    assert p.validate().final_steps == ("generate_response",)


def test_name_matching_binding_wins_over_position() -> None:
    p = Pipeline("shop")

    @p.step()
    def price(sku: str) -> float:
        return 1.0

    @p.step()
    def stock(sku: str) -> int:
        return 1

    @p.step(depends_on=[price, stock])
    def offer(stock: int, price: float) -> str:
        return ""

    @p.step(depends_on=[price, stock])
    def label(amount: float, stock: int) -> str:
        return ""

    assert [(b.parameter, b.name) for b in p.steps["offer"].bindings] == [
        ("stock", "stock"),
        ("price", "price"),
    ]
    # 'stock' is taken by name, so the remaining dependency 'price' fills 'amount'.
    assert [(b.parameter, b.name) for b in p.steps["label"].bindings] == [
        ("amount", "price"),
        ("stock", "stock"),
    ]


def test_step_context_parameter_is_injected_anywhere_in_the_signature() -> None:
    p = Pipeline("shop")

    @p.step()
    def lookup(sku: str, ctx: StepContext) -> str:
        return sku

    @p.step(depends_on=[lookup])
    def price(ctx: StepContext, lookup: str) -> float:
        return 1.0

    assert [(b.parameter, b.source) for b in p.steps["lookup"].bindings] == [
        ("sku", "field"),
        ("ctx", "context"),
    ]
    assert [(b.parameter, b.source, b.name) for b in p.steps["price"].bindings] == [
        ("ctx", "context", ""),
        ("lookup", "dependency", "lookup"),
    ]


def test_unresolvable_type_hints_fail_at_definition_naming_pipeline_step_and_reason() -> None:
    # Before, validation switched itself off silently for such a step.
    p = Pipeline("shop")

    def lookup(ctx: "StepContext", item: "NotDefinedAnywhere") -> str:  # type: ignore[name-defined] # noqa: F821
        return ""

    with pytest.raises(PipelineDefinitionError) as caught:
        p.add_step("lookup", lookup)
    message = str(caught.value)
    assert "pipeline 'shop'" in message and "step 'lookup'" in message
    assert "NotDefinedAnywhere" in message and "NameError" in message
    assert caught.value.error_type == "pipeline_invalid"
    assert "lookup" not in p.steps


def test_root_parameters_are_payload_fields_with_required_flag_and_default() -> None:
    p = Pipeline("shop")

    @p.step()
    def search(text: str, limit: int = 5, tags=None) -> list[str]:
        return []

    bindings = p.steps["search"].bindings
    assert [(b.parameter, b.source, b.name, b.required, b.default) for b in bindings] == [
        ("text", "field", "text", True, None),
        ("limit", "field", "limit", False, 5),
        ("tags", "field", "tags", False, None),
    ]
    assert bindings[0].adapter is not None and bindings[0].adapter.validate_python("x") == "x"
    assert bindings[1].adapter is not None and bindings[1].adapter.validate_python("7") == 7
    assert bindings[2].adapter is None  # unannotated: passed through


def test_root_step_with_a_pydantic_model_parameter_takes_the_whole_payload() -> None:
    p = Pipeline("shop")

    @p.step()
    def search(query: Query) -> str:
        return query.text

    (binding,) = p.steps["search"].bindings
    assert (binding.parameter, binding.source, binding.name) == ("query", "payload", "")
    assert binding.adapter is not None
    assert binding.adapter.validate_python({"text": "hi"}) == Query(text="hi")


def test_parameter_named_request_takes_the_whole_payload_even_below_the_root() -> None:
    p = Pipeline("shop")

    @p.step()
    def search(request) -> str:
        return ""

    @p.step(depends_on=[search])
    def answer(search: str, request: dict) -> str:
        return ""

    assert [(b.parameter, b.source) for b in p.steps["search"].bindings] == [("request", "payload")]
    assert [(b.parameter, b.source) for b in p.steps["answer"].bindings] == [
        ("search", "dependency"),
        ("request", "payload"),
    ]


def test_step_attributes_from_the_declaration() -> None:
    p = Pipeline("shop")

    @p.step(timeout=2.5)
    def lookup(sku: str) -> str:
        return sku

    @p.step(depends_on=[lookup], name="price-v2", inline=True)
    def price(lookup: str) -> float:
        return 1.0

    @p.step(depends_on=["price-v2"])
    async def notify(price: float) -> None:
        return None

    lookup_step, price_step, notify_step = (p.steps[n] for n in ("lookup", "price-v2", "notify"))
    assert lookup_step.timeout_s == 2.5 and not lookup_step.inline and not lookup_step.is_async
    assert lookup_step.is_root and not lookup_step.is_join
    assert price_step.fn is price and price_step.inline and price_step.timeout_s is None
    assert notify_step.is_async
    assert notify_step.bindings[0].name == "price-v2"


def test_decorator_returns_the_original_function_still_callable() -> None:
    p = Pipeline("shop")

    def lookup(sku: str) -> str:
        return sku.upper()

    decorated = p.step()(lookup)
    assert decorated is lookup
    assert lookup("abc") == "ABC"
    assert lookup.__weir_step__ == "lookup"  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(lookup)


def test_callable_object_with_annotated_call_is_bound_from_its_call_signature() -> None:
    class Scorer:
        def __call__(self, text: str, threshold: float = 0.5) -> bool:
            return len(text) > threshold

    p = Pipeline("shop")
    p.add_step("score", Scorer())
    bindings = p.steps["score"].bindings
    assert [(b.parameter, b.required) for b in bindings] == [("text", True), ("threshold", False)]
    assert bindings[1].adapter is not None and bindings[1].adapter.validate_python("2") == 2.0


def _diamond() -> Pipeline:
    p = Pipeline("diamond")

    @p.step()
    def a(text: str) -> str:
        return text

    @p.step(depends_on=[a])
    def b(a: str) -> str:
        return a

    @p.step(depends_on=[a])
    def c(a: str) -> str:
        return a

    @p.step(depends_on=[b, c])
    def d(b: str, c: str) -> str:
        return b + c

    @p.step()
    def e(user_id: str) -> str:
        return user_id

    return p


def test_order_puts_every_step_after_its_dependencies() -> None:
    p = _diamond()
    order = p.order
    assert sorted(order) == sorted(p.steps)
    for name, step in p.steps.items():
        for dep in step.depends_on:
            assert order.index(dep) < order.index(name)


def test_order_with_forward_references_is_still_topological() -> None:
    p = Pipeline("forward")

    @p.step(depends_on=["b"])
    def c(b: str) -> str:
        return b

    @p.step(depends_on=["a"])
    def b(a: str) -> str:
        return a

    @p.step()
    def a(text: str) -> str:
        return text

    assert p.order == ("a", "b", "c")
    assert p.root_steps == ("a",)
    assert p.final_steps == ("c",)


def test_root_final_steps_dependents_and_result_collector() -> None:
    p = _diamond().validate()
    assert set(p.root_steps) == {"a", "e"}
    assert set(p.final_steps) == {"d", "e"}
    assert set(p.dependents("a")) == {"b", "c"}
    assert p.dependents("b") == ("d",)
    assert p.dependents("d") == ()
    assert p.needs_result_collector
    assert ANSWER not in p.steps


def test_single_final_step_needs_no_result_collector() -> None:
    p = _seed_pipeline()
    assert set(p.root_steps) == {"query_vector_db", "fetch_user_messages"}
    assert p.final_steps == ("generate_response",)
    assert p.dependents("query_vector_db") == ("generate_response",)
    assert not p.needs_result_collector


def test_adding_a_step_after_validation_updates_the_graph() -> None:
    p = _seed_pipeline()
    assert p.final_steps == ("generate_response",)

    @p.step(depends_on=["generate_response"])
    def moderate(generate_response: str) -> str:
        return generate_response

    assert p.final_steps == ("moderate",)
    assert p.order[-1] == "moderate"


def test_validate_returns_the_pipeline_and_steps_is_a_copy() -> None:
    p = _seed_pipeline()
    assert p.validate() is p
    p.steps.clear()
    assert len(p.steps) == 3
    assert "support" in repr(p) and "generate_response" in repr(p)


# -- Branch ------------------------------------------------------------------------------------


def test_branch_targets_by_name_by_function_and_by_list() -> None:
    p = _seed_pipeline()
    generate_response = p.steps["generate_response"].fn
    assert Branch("a", 1).targets == ("a",)
    assert Branch("a").value is None
    assert Branch(generate_response, {"x": 1}).targets == ("generate_response",)
    assert Branch([generate_response, "b"], 2).targets == ("generate_response", "b")
    assert Branch(("a", "b")).targets == ("a", "b")


def test_branch_to_a_function_that_is_not_a_step_raises_type_error() -> None:
    def not_a_step() -> None:
        return None

    with pytest.raises(TypeError, match="not a weir step"):
        Branch(not_a_step)


# -- joins: all of the dependencies, or any of them --------------------------------------


def _two_branches(name: str) -> tuple[Pipeline, object, object]:
    p = Pipeline(name)

    @p.step(inline=True)
    def route(lane: str) -> Branch:
        return Branch(f"path_{lane}", lane)

    @p.step(depends_on=[route])
    def path_a(route: str) -> str:
        return "A"

    @p.step(depends_on=[route])
    def path_b(route: str) -> str:
        return "B"

    return p, path_a, path_b


async def test_any_of_rejoin_gets_the_branch_that_ran_and_none_for_the_other():
    p, path_a, path_b = _two_branches("rejoin")

    @p.step(depends_on=any_of(path_a, path_b))
    def finish(answer: str, path_b: str | None) -> dict[str, object]:
        return {"answer": answer, "b": path_b}

    assert p.steps["finish"].joins == "any"
    assert await run_local(p, {"lane": "a"}) == (
        {"answer": "A", "b": None},
        ["route", "path_a", "finish"],
    )
    assert await run_local(p, {"lane": "b"}) == (
        {"answer": "B", "b": "B"},
        ["route", "path_b", "finish"],
    )


async def test_any_of_step_is_skipped_when_none_of_its_inputs_ran():
    p, path_a, path_b = _two_branches("rejoin-none")

    @p.step(depends_on=any_of(path_a, path_b))
    def finish(answer: str) -> str:
        return answer

    @p.step(depends_on=["route"])
    def path_c(route: str) -> str:
        return "C"

    assert await run_local(p, {"lane": "c"}) == ("C", ["route", "path_c"])


async def test_all_of_join_over_exclusive_branches_raises_in_run_local():
    p, path_a, path_b = _two_branches("rejoin-all")

    @p.step(depends_on=[path_a, path_b])
    def finish(path_a: str, path_b: str) -> str:
        return path_a + path_b

    with pytest.raises(JoinInputSkippedError, match=r"'path_b' was skipped.*any_of"):
        await run_local(p, {"lane": "a"})


def test_depends_on_takes_one_step_without_a_list():
    p = Pipeline("single")

    @p.step()
    def first(n: int) -> int:
        return n

    @p.step(depends_on=first)
    def second(first: int) -> int:
        return first

    assert p.steps["second"].depends_on == ("first",)


def test_any_of_must_not_hide_inside_a_list_or_be_empty():
    p = Pipeline("bad-any")

    @p.step()
    def first(n: int) -> int:
        return n

    with pytest.raises(PipelineDefinitionError, match="not inside a list"):
        p.add_step("x", lambda first: first, [any_of(first)])  # type: ignore[list-item]
    with pytest.raises(PipelineDefinitionError, match="empty any_of"):
        p.add_step("y", lambda: 1, any_of())
