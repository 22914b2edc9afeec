"""The pipeline DSL: plain functions, decorated as steps, wired by ``depends_on``.

How a step's parameters are filled, checked when the step is declared:

1. a parameter annotated ``StepContext`` receives the request's context, one
   annotated ``History`` the request's conversation (``weir.streams.conversation``);
2. a parameter named like one of its dependencies receives that step's output;
3. the remaining parameters receive the remaining dependencies' outputs, in
   ``depends_on`` order (so ``generate(context, history)`` may depend on
   ``[query_vector_db, fetch_user_messages]``);
   (with ``depends_on=any_of(...)``: the first remaining parameter receives
   the output of whichever dependency ran);
4. a root step (no dependencies) reads request payload fields by parameter
   name, or the whole payload when its single parameter is annotated with a
   pydantic model or is named ``request``;
5. anything else must have a default, or the declaration fails.

Annotated parameters are validated (and coerced) with pydantic on the way in.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from weir.core.errors import (
    CycleError,
    DuplicateStepError,
    PipelineDefinitionError,
    UnknownDependencyError,
)
from weir.streams._binding import (
    Binding,
    JoinMode,
    bind_parameters,
    check_fallback_signature,
)
from weir.streams.cache import Cache
from weir.streams.conversation import Conversation
from weir.streams.dependencies import AnyOf
from weir.streams.retry import Fallback, RetryPolicy

__all__ = ["Binding", "Pipeline", "Step"]

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")

Dependencies = Sequence[str | Callable[..., Any]] | AnyOf | str | Callable[..., Any]
"""``depends_on``: steps (by name or function), one step alone, or ``any_of(...)``."""


@dataclass(frozen=True)
class Step:
    """One declared step."""

    name: str
    fn: Callable[..., Any]
    depends_on: tuple[str, ...]
    bindings: tuple[Binding, ...]
    is_async: bool
    inline: bool
    """Run a sync function on the event loop instead of the step thread pool."""
    timeout_s: float | None
    retry: RetryPolicy | None = None
    """``None``: the pipeline's policy."""
    fallback: Fallback | None = None
    """Output once attempts are exhausted; ``None``: dead-letter the request."""
    log_io: bool = False
    """Put this step's (redacted) inputs and output on its trace events."""
    joins: JoinMode = "all"
    """``all``: runs once every dependency produced; ``any``: once each produced or was
    skipped, if at least one produced (``depends_on=any_of(...)``)."""
    cache: Cache | None = None
    """Reuse outputs of earlier attempts with the same inputs (``weir.streams.cache``)."""
    conversation: Conversation | None = None
    """Set when a parameter is annotated ``History`` (``weir.streams.conversation``)."""

    @property
    def is_root(self) -> bool:
        return not self.depends_on

    @property
    def is_join(self) -> bool:
        return len(self.depends_on) > 1


class Pipeline:
    """A named DAG of steps.

    >>> from weir.streams import Pipeline
    >>> p = Pipeline("greeter")
    >>> @p.step()
    ... def greet(name: str) -> str:
    ...     return f"hello {name}"
    >>> @p.step(depends_on=[greet])
    ... def shout(greet: str) -> str:
    ...     return greet.upper()
    >>> p.validate().final_steps
    ('shout',)
    """

    def __init__(
        self,
        name: str,
        *,
        input: type[BaseModel] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PipelineDefinitionError(
                f"pipeline name {name!r} must start with a letter and use only letters, digits,"
                " '_' and '-' (at most 100 characters): it is part of topic names"
            )
        if input is not None and not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise PipelineDefinitionError(
                f"pipeline {name!r}: input must be a pydantic BaseModel subclass, got {input!r}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise PipelineDefinitionError(f"pipeline {name!r}: retry must be a RetryPolicy")
        if timeout is not None and timeout <= 0:
            raise PipelineDefinitionError(f"pipeline {name!r}: timeout must be positive")
        self.name = name
        self.input_model = input
        self.retry = retry if retry is not None else RetryPolicy()
        """Retry policy of every step that declares none."""
        self.timeout_s = timeout
        """Attempt timeout of every step that declares none (else the worker's default)."""
        self._steps: dict[str, Step] = {}
        self._validated = False

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={list(self._steps)})"

    # -- declaration ---------------------------------------------------------------

    def step(
        self,
        depends_on: Dependencies = (),
        *,
        name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        fallback: Fallback | None = None,
        inline: bool = False,
        log_io: bool = False,
        cache: Cache | None = None,
        conversation: Conversation | None = None,
    ) -> Callable[[F], F]:
        """Declare the decorated function as a step; the function itself is returned unchanged.

        ``depends_on`` lists the steps whose outputs this one needs, all of them;
        ``any_of(a, b)`` instead runs it on whichever of them ran (a rejoin after a
        ``Branch``).  ``timeout`` bounds one attempt (seconds; default: the pipeline's, else
        the worker's ``step_timeout_s``).  ``retry`` overrides the pipeline's
        retry policy; ``fallback`` is output once attempts are exhausted instead
        of dead-lettering.  ``inline=True`` runs a cheap sync function on the
        event loop rather than in the step thread pool (nothing can interrupt it
        there, so no timeout applies).  ``log_io=True`` puts the
        step's PII-redacted inputs and output on its trace events.  ``cache``
        reuses the output of an earlier attempt with the same inputs (``Cache``).
        ``conversation`` sets the budget and caps of the conversation a ``History``
        parameter receives (default: ``Conversation()``).
        """

        def decorate(fn: F) -> F:
            step_name = fn.__name__ if name is None else name
            self.add_step(
                step_name,
                fn,
                depends_on,
                timeout=timeout,
                retry=retry,
                fallback=fallback,
                inline=inline,
                log_io=log_io,
                cache=cache,
                conversation=conversation,
            )
            # Builtins and some callables refuse attributes.
            with contextlib.suppress(AttributeError):
                fn.__weir_step__ = step_name  # type: ignore[attr-defined]
            return fn

        return decorate

    def add_step(
        self,
        name: str,
        fn: Callable[..., Any],
        depends_on: Dependencies = (),
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        fallback: Fallback | None = None,
        inline: bool = False,
        log_io: bool = False,
        cache: Cache | None = None,
        conversation: Conversation | None = None,
    ) -> Step:
        """Declare ``fn`` (a function or a processor) as step ``name``."""
        where = f"pipeline {self.name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PipelineDefinitionError(
                f"{where}: step name {name!r} must start with a letter and use only letters,"
                " digits, '_' and '-'"
            )
        if name in self._steps:
            raise DuplicateStepError(f"{where}: a step named {name!r} is already declared")
        if not callable(fn):
            raise PipelineDefinitionError(f"{where}: step {name!r} is not callable: {fn!r}")
        if timeout is not None and timeout <= 0:
            raise PipelineDefinitionError(f"{where}: step {name!r} timeout must be positive")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise PipelineDefinitionError(
                f"{where}: step {name!r} retry must be a RetryPolicy, got {retry!r}"
            )
        if fallback is not None and not isinstance(fallback, Fallback):
            raise PipelineDefinitionError(
                f"{where}: step {name!r} fallback must be a Fallback(value=...) or"
                f" Fallback(function=...), got {fallback!r}"
            )
        if cache is not None and not isinstance(cache, Cache):
            raise PipelineDefinitionError(
                f"{where}: step {name!r} cache must be a Cache(ttl=..., key=..., version=...),"
                f" got {cache!r}"
            )
        if isinstance(depends_on, str) or callable(depends_on):
            depends_on = [depends_on]  # one dependency, written without the list
        joins: JoinMode = "any" if isinstance(depends_on, AnyOf) else "all"
        if isinstance(depends_on, AnyOf):
            if not depends_on.steps:
                raise PipelineDefinitionError(f"{where}: step {name!r} has an empty any_of()")
            if any(isinstance(d, AnyOf) for d in depends_on):
                raise PipelineDefinitionError(f"{where}: step {name!r}: any_of cannot nest")
        elif any(isinstance(d, AnyOf) for d in depends_on):
            raise PipelineDefinitionError(
                f"{where}: step {name!r}: write depends_on=any_of(a, b), not inside a list"
            )
        deps = tuple(self._dependency_name(name, d) for d in depends_on)
        if len(set(deps)) != len(deps):
            raise PipelineDefinitionError(f"{where}: step {name!r} lists a dependency twice")
        if name in deps:
            raise CycleError(f"{where}: step {name!r} depends on itself")
        bindings = bind_parameters(
            f"{where}, step {name!r}", fn, deps, joins=joins, input_model=self.input_model
        )
        talks = any(b.source == "history" for b in bindings)
        if conversation is not None and not isinstance(conversation, Conversation):
            raise PipelineDefinitionError(
                f"{where}: step {name!r} conversation must be a Conversation(...),"
                f" got {conversation!r}"
            )
        if conversation is not None and not talks:
            raise PipelineDefinitionError(
                f"{where}: step {name!r} sets conversation= but has no parameter annotated"
                " History to receive it"
            )
        if talks and cache is not None:
            raise PipelineDefinitionError(
                f"{where}: step {name!r} has a History and a Cache; a cached output would"
                " skip the conversation's new turns, so a step can have only one of them"
            )
        if talks and conversation is None:
            conversation = Conversation()
        if fallback is not None and fallback.function is not None:
            check_fallback_signature(where, name, fallback.function, bindings)
        step = Step(
            name=name,
            fn=fn,
            depends_on=deps,
            bindings=bindings,
            is_async=inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None)),  # noqa: B004
            inline=inline or bool(getattr(fn, "weir_inline", False)),
            timeout_s=timeout,
            retry=retry,
            fallback=fallback,
            log_io=log_io,
            joins=joins,
            cache=cache,
            conversation=conversation,
        )
        self._steps[name] = step
        self._validated = False
        return step

    def _dependency_name(self, step: str, dep: str | Callable[..., Any]) -> str:
        if isinstance(dep, str):
            return dep
        # By identity: one function may be a step of several pipelines under other names.
        names = [s.name for s in self._steps.values() if s.fn is dep]
        if len(names) == 1:
            return names[0]
        if len(names) > 1:
            raise PipelineDefinitionError(
                f"pipeline {self.name!r}: step {step!r} depends on a function declared as several"
                f" steps ({names}); name the one you mean"
            )
        label = getattr(dep, "__name__", repr(dep))
        raise UnknownDependencyError(
            f"pipeline {self.name!r}: step {step!r} depends on {label!r}, which is not a"
            f" step of this pipeline (declare it with @{self.name}.step() first)"
        )

    # -- the validated graph -------------------------------------------------------

    def validate(self) -> Pipeline:
        """Check the whole graph (unknown dependencies, cycles); return ``self``."""
        if self._validated:
            return self
        where = f"pipeline {self.name!r}"
        if not self._steps:
            raise PipelineDefinitionError(f"{where} has no steps")
        for step in self._steps.values():
            for dep in step.depends_on:
                if dep not in self._steps:
                    hint = _closest(dep, list(self._steps))
                    raise UnknownDependencyError(
                        f"{where}: step {step.name!r} depends on unknown step {dep!r}"
                        + (f" (did you mean {hint!r}?)" if hint else "")
                    )
        self._order = self._topological_order()
        self._dependents: dict[str, list[str]] = {name: [] for name in self._steps}
        for name in self._order:
            for dep in self._steps[name].depends_on:
                self._dependents[dep].append(name)
        self._validated = True
        return self

    def _topological_order(self) -> tuple[str, ...]:
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        order: list[str] = []

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = [*path[path.index(name) :], name]
                raise CycleError(
                    f"pipeline {self.name!r} has a dependency cycle: {' -> '.join(cycle)}"
                )
            state[name] = 1
            for dep in self._steps[name].depends_on:
                visit(dep, [*path, name])
            state[name] = 2
            order.append(name)

        for name in self._steps:
            visit(name, [])
        return tuple(order)

    def retry_policy(self, step: str) -> RetryPolicy:
        """The policy ``step`` runs with: its own, else the pipeline's."""
        own = self._steps[step].retry if step in self._steps else None
        return own if own is not None else self.retry

    @property
    def steps(self) -> dict[str, Step]:
        """Steps by name, in declaration order."""
        return dict(self._steps)

    @property
    def order(self) -> tuple[str, ...]:
        """Step names, every step after its dependencies."""
        return self.validate()._order

    def dependents(self, step: str) -> tuple[str, ...]:
        """Steps that consume ``step``'s output."""
        return tuple(self.validate()._dependents[step])

    @property
    def root_steps(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if self._steps[n].is_root)

    @property
    def final_steps(self) -> tuple[str, ...]:
        """Steps nobody depends on; their outputs make the result."""
        return tuple(n for n in self.order if not self.dependents(n))

    @property
    def needs_result_collector(self) -> bool:
        """Several final steps: the answer stage joins their outputs into one result."""
        return len(self.final_steps) > 1

    @property
    def has_conversations(self) -> bool:
        """A step has a ``History``: messages are keyed by conversation id (``routing_key``)."""
        return any(s.conversation is not None for s in self._steps.values())


def _closest(name: str, candidates: list[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, candidates, n=1)
    return matches[0] if matches else None
