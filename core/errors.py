"""weir's error hierarchy.

Every error has a stable, machine-readable ``error_type``: the same string that
lands in dead-letter headers, failure results and trace events.  ``retriable``
says whether trying the same input again can succeed.

    WeirError                       weir_error
    ├── ConfigError                 config_invalid
    ├── BrokerError                 broker_unavailable
    ├── PipelineDefinitionError     pipeline_invalid
    │   ├── DuplicateStepError      duplicate_step
    │   ├── UnknownDependencyError  unknown_dependency
    │   ├── CycleError              pipeline_cycle
    │   └── UnsatisfiedParameterError  unsatisfied_parameter
    ├── UnknownPipelineError        unknown_pipeline
    ├── ResultTimeoutError          result_timeout       (also a TimeoutError)
    ├── MessageError                (bad input: never retried)
    │   ├── UndecodableError        undecodable
    │   ├── SchemaInvalidError      schema_invalid
    │   ├── SchemaRegistryError     schema_registry_unavailable (dead-lettered, replayable)
    │   └── PayloadTooLargeError    payload_too_large
    ├── StepError                   step_error
    │   ├── StepTimeoutError        step_timeout
    │   └── StepThreadsExhaustedError step_threads_exhausted (stuck sync steps hold the budget)
    ├── BranchError                 branch_invalid
    ├── JoinInputSkippedError       join_input_skipped   (all-of join, a branch skipped)
    ├── JoinEvictedError            join_evicted         (a fan-in never completed)
    ├── OutputTooLargeError         output_too_large     (the broker refuses the message)
    ├── ModelError                  model_error          (a model call failed)
    │   ├── ModelTimeoutError       model_timeout
    │   ├── ModelUnavailableError   model_unavailable    (5xx, connection refused/reset)
    │   ├── RateLimitedError        rate_limited         (429)
    │   ├── ModelRequestError       model_request_invalid (other 4xx: never retried)
    │   ├── ModelResponseError      model_response_invalid (unparseable answer)
    │   ├── StreamInterruptedError  stream_interrupted   (a stream broke mid-answer)
    │   └── CircuitOpenError        circuit_open         (the endpoint's breaker is open)
    ├── StreamAbortedError          stream_aborted       (a request's token stream ended unfinished)
    ├── RoutingError                routing_invalid      (a rule set that does not parse)
    │   └── NoRouteError            no_route             (no rule matched, no default)
    ├── BudgetExceededError         budget_exceeded
    ├── SecretError                 secret_unavailable   (malformed, literal, missing: not retried)
    │   └── SecretStoreError        secret_store_unreachable (Vault/AWS down or throttling)
    ├── TraceStoreError             trace_store_unavailable (ClickHouse down, store locked)
    │   └── TraceSchemaMissingError trace_schema_missing (nobody created the tables yet)
    ├── TraceRowsRejectedError      trace_rows_rejected  (the store refused a block's values)
    ├── UnauthorizedError           unauthorized         (HTTP: missing or wrong bearer token)
    ├── ParameterInvalidError       parameter_invalid    (HTTP: a query parameter out of range)
    ├── TooManyStreamsError         too_many_streams     (HTTP: the SSE cap is reached)
    ├── TraceQueryError             trace_query_invalid  (weir sql: ClickHouse refused the query)
    ├── RequestNotFoundError        request_not_found    (no trace events for that id)
    ├── ReplayNotFoundError         replay_not_found     (no step replay with that id)
    └── ReviewError                 review_invalid       (weir review: an empty answer)
        ├── ReviewNotFoundError     review_not_found     (no such escalated request)
        └── ReviewClosedError       review_closed        (answered or expired already)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BranchError",
    "BrokerError",
    "BudgetExceededError",
    "CircuitOpenError",
    "ConfigError",
    "ConversationIdError",
    "ConversationNotFoundError",
    "CycleError",
    "DuplicateStepError",
    "JoinEvictedError",
    "JoinInputSkippedError",
    "MessageError",
    "ModelError",
    "ModelRequestError",
    "ModelResponseError",
    "ModelTimeoutError",
    "ModelUnavailableError",
    "NoRouteError",
    "OutputTooLargeError",
    "ParameterInvalidError",
    "PayloadTooLargeError",
    "PipelineDefinitionError",
    "RateLimitedError",
    "ReplayNotFoundError",
    "RequestNotFoundError",
    "ResultTimeoutError",
    "ReviewClosedError",
    "ReviewError",
    "ReviewNotFoundError",
    "RoutingError",
    "SchemaInvalidError",
    "SchemaRegistryError",
    "SecretError",
    "SecretStoreError",
    "StepError",
    "StepThreadsExhaustedError",
    "StepTimeoutError",
    "StreamAbortedError",
    "StreamInterruptedError",
    "TooManyStreamsError",
    "TraceQueryError",
    "TraceRowsRejectedError",
    "TraceSchemaMissingError",
    "TraceStoreError",
    "UnauthorizedError",
    "UndecodableError",
    "UnknownDependencyError",
    "UnknownPipelineError",
    "UnsatisfiedParameterError",
    "WeirError",
]


class WeirError(Exception):
    """Root of every error weir raises."""

    error_type: ClassVar[str] = "weir_error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(WeirError):
    """Settings or a config file are invalid."""

    error_type = "config_invalid"


class BrokerError(WeirError):
    """The Kafka broker cannot be fetched, started, stopped or reached."""

    error_type = "broker_unavailable"
    retriable = True


class PipelineDefinitionError(WeirError):
    """A pipeline definition is invalid; raised at definition time."""

    error_type = "pipeline_invalid"


class DuplicateStepError(PipelineDefinitionError):
    """Two steps share a name."""

    error_type = "duplicate_step"


class UnknownDependencyError(PipelineDefinitionError):
    """``depends_on`` names a step the pipeline does not have."""

    error_type = "unknown_dependency"


class CycleError(PipelineDefinitionError):
    """The steps' dependencies form a cycle."""

    error_type = "pipeline_cycle"


class UnsatisfiedParameterError(PipelineDefinitionError):
    """A step has a parameter that no dependency or request field can fill."""

    error_type = "unsatisfied_parameter"


class UnknownPipelineError(WeirError):
    """A module path or name does not lead to a ``Pipeline``."""

    error_type = "unknown_pipeline"


class ResultTimeoutError(WeirError, TimeoutError):
    """Results a client waits for did not all arrive in time."""

    error_type = "result_timeout"
    retriable = True


class MessageError(WeirError):
    """A message cannot be processed as it is; retrying it cannot help."""


class SchemaRegistryError(MessageError):
    """The schema registry could not be reached or refused a request; the message is
    dead-lettered with its bytes and can be replayed once the registry answers."""

    error_type = "schema_registry_unavailable"


class UndecodableError(MessageError):
    """The bytes are neither a weir Avro message nor JSON."""

    error_type = "undecodable"


class SchemaInvalidError(MessageError):
    """The message decodes but does not match the schema or the pipeline's input."""

    error_type = "schema_invalid"


class ConversationIdError(SchemaInvalidError):
    """A request's ``conversation_id`` is not a usable id (not a string, empty, too long)."""

    error_type = "conversation_id_invalid"


class ConversationNotFoundError(WeirError):
    """No conversational step holds the conversation asked for."""

    error_type = "conversation_not_found"


class PayloadTooLargeError(MessageError):
    """The message is larger than ``max_payload_bytes``."""

    error_type = "payload_too_large"


class StepError(WeirError):
    """A step function raised; the original exception is the ``__cause__``."""

    error_type = "step_error"
    retriable = True


class StepTimeoutError(StepError):
    """A step attempt ran past its timeout."""

    error_type = "step_timeout"


class BranchError(WeirError):
    """A step returned a ``Branch`` to a step that does not depend on it."""

    error_type = "branch_invalid"


class JoinInputSkippedError(WeirError):
    """A step that needs all of its inputs got a skip for one of them (a ``Branch`` upstream)."""

    error_type = "join_input_skipped"


class JoinEvictedError(WeirError):
    """A fan-in waited too long, or among too many others, for an input that never came."""

    error_type = "join_evicted"


class OutputTooLargeError(WeirError):
    """What a step produced is larger than Kafka accepts in one message."""

    error_type = "output_too_large"


class ModelError(WeirError):
    """A call to a model endpoint failed; the endpoint's name is in the message."""

    error_type = "model_error"
    retriable = True
    status: int | None = None
    """The HTTP status the endpoint answered, when it answered one."""


class ModelTimeoutError(ModelError):
    """The endpoint did not answer (or finish streaming) within its timeout."""

    error_type = "model_timeout"


class ModelUnavailableError(ModelError):
    """The endpoint answered 5xx, or could not be connected to."""

    error_type = "model_unavailable"


class RateLimitedError(ModelError):
    """The endpoint answered 429, or weir's own rate limit for it is exhausted."""

    error_type = "rate_limited"


class ModelRequestError(ModelError):
    """The endpoint refused the request (4xx other than 429): retrying cannot help."""

    error_type = "model_request_invalid"
    retriable = False


class ModelResponseError(ModelError):
    """The endpoint's answer could not be understood."""

    error_type = "model_response_invalid"


class StreamInterruptedError(ModelError):
    """A streamed answer ended before the model said it was complete."""

    error_type = "stream_interrupted"


class CircuitOpenError(ModelError):
    """The endpoint's circuit breaker is open and no fallback endpoint took the call."""

    error_type = "circuit_open"


class StreamAbortedError(WeirError):
    """A request's token stream was aborted and the request ended without a streamed answer.

    ``reason`` is the request's error type (``None`` if it succeeded some other
    way, e.g. with its step's fallback); its result says the rest.
    """

    error_type = "stream_aborted"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class RoutingError(WeirError):
    """A routing rule set is invalid (it is refused before it reaches any worker)."""

    error_type = "routing_invalid"


class NoRouteError(RoutingError):
    """No rule matched the request and the router has no default endpoint."""

    error_type = "no_route"


class BudgetExceededError(WeirError):
    """The spend limit of a pipeline, tenant or key is used up for the current window."""

    error_type = "budget_exceeded"


class SecretError(WeirError):
    """A secret reference is malformed, a literal key, or cannot be resolved.

    Messages name the reference, never the secret's value.
    """

    error_type = "secret_unavailable"


class SecretStoreError(SecretError):
    """The secret store (Vault, AWS Secrets Manager) could not be reached or was overloaded.

    Unlike a malformed or missing reference, trying again later can succeed.
    """

    error_type = "secret_store_unreachable"
    retriable = True


class TraceStoreError(WeirError):
    """The trace store (ClickHouse or the embedded engine) cannot be reached or opened."""

    error_type = "trace_store_unavailable"
    retriable = True


class TraceSchemaMissingError(TraceStoreError):
    """The trace store has no ``pipeline_events`` yet: ``weir sink`` or a worker creates it."""

    error_type = "trace_schema_missing"
    retriable = True


class TraceRowsRejectedError(WeirError):
    """The trace store answered but refused a block of events (a value it cannot read).

    Not the store being down: the same block is refused again, so the sink reads
    those events in Python instead, which stores the good ones and names the bad.
    """

    error_type = "trace_rows_rejected"


class UnauthorizedError(WeirError):
    """An HTTP request without the configured bearer token (or with a wrong one)."""

    error_type = "unauthorized"


class ParameterInvalidError(WeirError):
    """An HTTP query parameter that is not a valid value (``idle_timeout=nan``, ``-1``)."""

    error_type = "parameter_invalid"


class TooManyStreamsError(WeirError):
    """An HTTP server already serves ``sse_max_streams`` token streams: come back later."""

    error_type = "too_many_streams"
    retriable = True


class StepThreadsExhaustedError(StepError):
    """Too many timed-out synchronous steps still hold threads: sync steps fail fast."""

    error_type = "step_threads_exhausted"
    retriable = True


class TraceQueryError(WeirError):
    """``weir sql``: the trace store refused the statement (syntax, unknown column, a write)."""

    error_type = "trace_query_invalid"


class RequestNotFoundError(WeirError):
    """The trace store holds no events for the request asked about."""

    error_type = "request_not_found"


class ReplayNotFoundError(WeirError):
    """No step replay has the id asked about (its topic expired, or a wrong id)."""

    error_type = "replay_not_found"


class ReviewError(WeirError):
    """A human review cannot be answered: unknown, already closed, or the answer is invalid."""

    error_type = "review_invalid"


class ReviewNotFoundError(ReviewError):
    """No review of that request (never escalated, or gone with the topic's retention)."""

    error_type = "review_not_found"


class ReviewClosedError(ReviewError):
    """The review was answered, or its deadline passed, before this answer."""

    error_type = "review_closed"
