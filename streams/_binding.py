"""How a step's parameters are filled: the rules of ``weir.streams.pipeline``, applied.

Each parameter gets a ``Binding`` when the step is declared, so a step that cannot
be called fails at declaration, with a message naming the parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, TypeAdapter

from weir.core.errors import PipelineDefinitionError, UnsatisfiedParameterError
from weir.streams.context import StepContext
from weir.streams.conversation import History

__all__ = ["Binding", "BindingSource", "JoinMode", "bind_parameters", "check_fallback_signature"]

BindingSource = Literal["dependency", "any", "field", "payload", "context", "history"]
JoinMode = Literal["all", "any"]


@dataclass(frozen=True)
class Binding:
    """Where one parameter's value comes from."""

    parameter: str
    source: BindingSource
    name: str = ""
    """The dependency's step name, or the payload field's name."""
    adapter: TypeAdapter[Any] | None = None
    """Validates the value against the parameter's annotation; ``None`` when unannotated."""
    required: bool = True
    default: Any = None
    names: tuple[str, ...] = ()
    """``any``: the dependencies whose output (whichever ran) the parameter receives."""


def bind_parameters(
    where: str,
    fn: Callable[..., Any],
    deps: tuple[str, ...],
    *,
    joins: JoinMode,
    input_model: type[BaseModel] | None,
) -> tuple[Binding, ...]:
    """Where each parameter of ``fn``, a step depending on ``deps``, gets its value.

    ``where`` names the step in errors; ``input_model``: the pipeline's, if any.
    Raises ``UnsatisfiedParameterError`` (or ``PipelineDefinitionError``) for a
    parameter nothing can fill.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise PipelineDefinitionError(f"{where}: cannot read its signature: {exc}") from exc
    target = inspect.unwrap(fn)  # processors wrap the user's function (__wrapped__)
    if not inspect.isfunction(target) and not inspect.ismethod(target):
        target = type(target).__call__
    try:
        hints = get_type_hints(target)
    except Exception as exc:
        # Without hints no parameter would be validated; say so now, not never.
        raise PipelineDefinitionError(
            f"{where}: its type hints cannot be resolved ({type(exc).__name__}: {exc});"
            " define or import every name its annotations use at module level (under"
            " `from __future__ import annotations` they are looked up there)"
        ) from exc

    params = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise UnsatisfiedParameterError(
                f"{where}: *args/**kwargs ({p}) cannot be injected; name each input"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise UnsatisfiedParameterError(
                f"{where}: positional-only parameter {p.name!r} cannot be injected"
            )
        params.append(p)

    bindings: dict[str, Binding] = {}
    remaining_deps = list(deps)
    unbound = []
    for p in params:
        hint = hints.get(p.name, p.annotation)
        if hint is StepContext or (isinstance(hint, str) and hint.endswith("StepContext")):
            bindings[p.name] = Binding(p.name, "context")
        elif hint is History or (isinstance(hint, str) and hint.endswith("History")):
            bindings[p.name] = Binding(p.name, "history")
        elif p.name in remaining_deps:
            bindings[p.name] = Binding(p.name, "dependency", p.name, _adapter(hint))
            remaining_deps.remove(p.name)
        else:
            unbound.append(p)

    if joins == "any" and remaining_deps and unbound:
        # A rejoin: one parameter receives whichever of the remaining branches ran.
        p = unbound.pop(0)
        hint = hints.get(p.name)
        bindings[p.name] = Binding(p.name, "any", remaining_deps[0], _adapter(hint), names=deps)
        remaining_deps = []
    for p in list(unbound):
        if not remaining_deps:
            break
        dep = remaining_deps.pop(0)
        bindings[p.name] = Binding(p.name, "dependency", dep, _adapter(hints.get(p.name)))
        unbound.remove(p)

    if remaining_deps:
        raise UnsatisfiedParameterError(
            f"{where}: depends on {remaining_deps} but has no parameter left to receive"
            f" {'its' if len(remaining_deps) == 1 else 'their'} output; add one parameter"
            " per dependency"
        )

    model_fields = set(input_model.model_fields) if input_model else None
    for p in unbound:
        hint = hints.get(p.name, p.annotation)
        has_default = p.default is not p.empty
        whole = (isinstance(hint, type) and issubclass(hint, BaseModel)) or p.name == "request"
        if whole and (deps == () or p.name == "request"):
            bindings[p.name] = Binding(p.name, "payload", "", _adapter(hint))
        elif not deps or (model_fields is not None and p.name in model_fields):
            if model_fields is not None and p.name not in model_fields and not has_default:
                raise UnsatisfiedParameterError(
                    f"{where}: parameter {p.name!r} is not a field of the pipeline's input"
                    f" model {input_model.__name__} ({sorted(model_fields)})"  # type: ignore[union-attr]
                )
            bindings[p.name] = Binding(
                p.name,
                "field",
                p.name,
                _adapter(hint),
                required=not has_default,
                default=None if not has_default else p.default,
            )
        elif has_default:
            continue
        else:
            raise UnsatisfiedParameterError(
                f"{where}: parameter {p.name!r} matches no dependency ({list(deps)}) and is"
                " not a request field; depend on the step that produces it, name it"
                " 'request' to receive the payload, or give it a default"
            )
    return tuple(bindings[p.name] for p in params if p.name in bindings)


def _adapter(hint: Any) -> TypeAdapter[Any] | None:
    if hint is None or hint is inspect.Parameter.empty or hint is Any:
        return None
    try:
        return TypeAdapter(hint)
    except Exception:
        # An annotation pydantic cannot validate (e.g. an arbitrary class): pass values through.
        return None


def check_fallback_signature(
    where: str, step: str, fn: Callable[..., Any], bindings: tuple[Binding, ...]
) -> None:
    """A fallback function is called with the step's own keyword arguments."""
    try:
        inspect.signature(fn).bind(**{b.parameter: None for b in bindings})
    except TypeError as exc:
        params = [b.parameter for b in bindings]
        raise PipelineDefinitionError(
            f"{where}: the fallback of step {step!r} cannot take the step's arguments"
            f" {params}: {exc}"
        ) from exc
    except ValueError:
        pass  # no readable signature (some builtins): checked when called
