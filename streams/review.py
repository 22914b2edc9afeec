"""Humans in the loop: a step escalates a request, and a person's answer becomes its result.

A step returns ``Escalate(reason, transcript=[...])``.  Instead of its output,
the worker writes an *escalation* to the pipeline's review topic
(``weir.<pipeline>.reviews``, keyed by request id): the reason, the
transcript, the step's inputs (the intermediate outputs it saw), the request,
the deadline and the fallback, and the envelope the step's output would have
travelled in.  Every later event of that review goes to the same topic and
key, so one partition holds a review's whole story in order:

* ``weir review answer`` (or ``POST /reviews/{pipeline}/{request_id}``) appends
  an ``answered`` record with the person's text.
* A worker's review desk appends ``expired`` for an open review past its
  deadline.

The first closing record in topic order decides, so two people answering at
once, or an answer racing the deadline, end the same way on every reader.  The
review desk of the worker that owns the partition puts the decided answer (the
text, or the fallback) on the answers topic in the saved envelope, and the
answer stage makes it the request's one result; a desk that takes a partition
over sends again what was decided within ``answer_dedup_window_s``, and the
answer stage drops what it had answered already.

The result's value says who answered and how long the request waited::

    {"answer": ..., "human_answered": true, "answered_by": "ada",
     "waited_ms": 5230, "reason": "...", "answer_id": "..."}

(``human_answered`` is false and ``timed_out`` true for a fallback.)  The review
topic holds the customer's words in clear, like the step topics: it is where
the person who answers reads them.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import (
    ReviewClosedError,
    ReviewError,
    ReviewNotFoundError,
    UnknownPipelineError,
)
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Envelope, Result, now_ms, now_us
from weir.streams._result_listener import ResultListener
from weir.streams.executor import encode_output
from weir.topics._aiokafka import read_until, retrying, rewind, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = [
    "Escalate",
    "Review",
    "ReviewBook",
    "answer_review",
    "closing_record",
    "escalation_record",
    "read_reviews",
    "review_answer",
]

ReviewStatus = Literal["open", "answered", "expired"]


@dataclass(frozen=True, init=False)
class Escalate:
    """Return ``Escalate(reason, transcript=[...])`` from a step to hand the request to a person.

    The person's answer (``weir review answer``) becomes the request's result.
    If nobody answers within ``deadline_s`` (default: the ``review_deadline_s``
    setting), the result is ``fallback`` instead.

    >>> Escalate("confidence 0.41 < 0.8", transcript=["customer: refund?"]).transcript
    ('customer: refund?',)
    """

    reason: str
    transcript: tuple[str, ...]
    fallback: Any
    deadline_s: float | None

    def __init__(
        self,
        reason: str,
        *,
        transcript: Iterable[str] = (),
        fallback: Any = None,
        deadline_s: float | None = None,
    ) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(
                f"Escalate deadline_s must be a number of seconds above 0: {deadline_s}"
            )
        object.__setattr__(self, "reason", str(reason))
        object.__setattr__(self, "transcript", tuple(str(line) for line in transcript))
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "deadline_s", deadline_s)


@dataclass
class Review:
    """One escalated request, as the review topic tells it."""

    request_id: str
    pipeline: str
    step: str
    reason: str
    transcript: list[str]
    outputs: dict[str, Any]
    """The escalating step's inputs: the intermediate outputs, by step."""
    request: Any
    escalated_at: int
    """Epoch milliseconds."""
    deadline_at: int
    fallback: Any
    envelope: bytes = field(repr=False)
    status: ReviewStatus = "open"
    closed_by: str | None = None
    closed_at: int | None = None
    token: str | None = None
    """Of the closing record that decided the review."""
    answer: Any = None
    """The person's text, once answered."""

    def summary(self) -> dict[str, Any]:
        """What ``weir review list`` shows: no transcript, no request."""
        return {
            "request_id": self.request_id,
            "step": self.step,
            "reason": self.reason,
            "status": self.status,
            "escalated_at": self.escalated_at,
            "deadline_at": self.deadline_at,
            "closed_by": self.closed_by,
            "closed_at": self.closed_at,
        }

    def details(self) -> dict[str, Any]:
        """What ``weir review show`` shows: everything a person needs to answer."""
        return {
            **self.summary(),
            "transcript": self.transcript,
            "outputs": self.outputs,
            "request": self.request,
            "fallback": self.fallback,
        }


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def escalation_record(
    escalate: Escalate,
    *,
    envelope: Envelope,
    inputs: Mapping[str, str | None],
    settings: WeirSettings,
) -> bytes:
    """The review-topic record of a step's ``Escalate`` (``envelope``: its answers envelope)."""
    now = now_ms()
    deadline_s = (
        escalate.deadline_s if escalate.deadline_s is not None else settings.review_deadline_s
    )
    return json.dumps(
        {
            "type": "escalation",
            "request_id": envelope.request_id,
            "pipeline": envelope.pipeline,
            "step": envelope.source,
            "reason": escalate.reason,
            "transcript": list(escalate.transcript),
            "outputs": {step: _json_or_text(value) for step, value in inputs.items()},
            "request": _json_or_text(envelope.request),
            "escalated_at": now,
            "deadline_at": now + int(deadline_s * 1000),
            "fallback": json.loads(encode_output(escalate.fallback, step=envelope.source)),
            "envelope": base64.b64encode(envelope.encode()).decode(),
        }
    ).encode()


def closing_record(
    kind: Literal["answered", "expired"],
    request_id: str,
    *,
    by: str,
    at: int,
    token: str,
    text: str | None = None,
) -> bytes:
    """An ``answered`` (with the person's ``text``) or ``expired`` record; ``token`` names it."""
    body = {"type": kind, "request_id": request_id, "by": by, "at": at, "token": token}
    if text is not None:
        body["text"] = text
    return json.dumps(body).encode()


class ReviewBook:
    """Reviews by request id, folded from review-topic records in topic order."""

    def __init__(self) -> None:
        self.reviews: dict[str, Review] = {}

    def apply(self, raw: bytes | None) -> Review | None:
        """Fold one record in; return the review it opened or closed (``None``: nothing)."""
        if not raw:
            return None
        try:
            body = json.loads(raw)
            rid = str(body["request_id"])
            kind = body["type"]
            if kind == "escalation":
                review = Review(
                    request_id=rid,
                    pipeline=str(body["pipeline"]),
                    step=str(body["step"]),
                    reason=str(body["reason"]),
                    transcript=[str(t) for t in body["transcript"]],
                    outputs=dict(body["outputs"]),
                    request=body["request"],
                    escalated_at=int(body["escalated_at"]),
                    deadline_at=int(body["deadline_at"]),
                    fallback=body["fallback"],
                    envelope=base64.b64decode(body["envelope"]),
                )
                if rid in self.reviews:
                    return None  # a redelivered step escalated again: the first one stands
                self.reviews[rid] = review
                return review
            found = self.reviews.get(rid)
            if kind not in ("answered", "expired") or found is None or found.status != "open":
                return None  # the first closing record wins, as the first answer does
            review = found
            review.status = kind
            review.closed_by = str(body["by"])
            review.closed_at = int(body["at"])
            review.token = str(body["token"])
            review.answer = body.get("text") if kind == "answered" else review.fallback
            return review
        except (ValueError, KeyError, TypeError):
            return None

    def open(self) -> list[Review]:
        return [r for r in self.reviews.values() if r.status == "open"]


def review_answer(review: Review) -> bytes:
    """The answers-topic envelope that makes a closed review's answer the request's result."""
    if review.status == "open" or review.closed_at is None:
        raise ReviewError(f"the review of request {review.request_id} is still open")
    template = Envelope.decode(review.envelope)
    human = review.status == "answered"
    output: dict[str, Any] = {
        "answer": review.answer,
        "human_answered": human,
        "answered_by": review.closed_by if human else None,
        "waited_ms": max(0, review.closed_at - review.escalated_at),
        "reason": review.reason,
        "answer_id": review.token,
    }
    if not human:
        output["timed_out"] = True
    return template.replace(
        kind="VALUE",
        payload=encode_output(output, step=review.step),
        created_at=now_us(),
    ).encode()


async def read_reviews(settings: WeirSettings, pipeline: str) -> ReviewBook:
    """Every review of ``pipeline`` still in its review topic, as it stands now."""
    topic = PipelineTopics(pipeline).reviews
    async with TopicAdmin(settings) as admin:
        count = (await admin.partitions([topic])).get(topic)
    if not count:
        raise UnknownPipelineError(
            f"pipeline {pipeline!r} has no review topic ({topic}): start a worker for it first"
        )
    consumer = KafkaConnection.of(settings).consumer(enable_auto_commit=False)
    await consumer.start()
    book = ReviewBook()
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        ends = await retrying(lambda: consumer.end_offsets(tps), what="reading review ends")
        for tp in tps:
            async for record in read_until(consumer, tp, ends[tp]):
                book.apply(record.value)
    finally:
        await stop_consumer(consumer)
    return book


async def answer_review(
    settings: WeirSettings,
    pipeline: str,
    request_id: str,
    *,
    text: str,
    by: str,
    timeout: float = 60.0,
) -> Result:
    """Deliver a person's answer as the request's result; return that result.

    Raises ``ReviewError`` if there is no such review, it is closed already, or
    another answer (or the deadline) closed it first; ``ResultTimeoutError`` if
    no worker's review desk delivered it within ``timeout`` seconds.
    """
    if not text.strip():
        raise ReviewError("the answer is empty: give the text the customer should get (--text)")
    review = (await read_reviews(settings, pipeline)).reviews.get(request_id)
    if review is None:
        raise ReviewNotFoundError(
            f"request {request_id} has no review in pipeline {pipeline!r}"
            " ('weir review list' shows them)"
        )
    if review.status != "open":
        raise ReviewClosedError(_closed(review))
    listener = ResultListener(settings, keep=16, client_id=f"weir-review-{uuid.uuid4().hex[:8]}")
    await listener.start()
    try:
        await listener.watch(pipeline)
        token = uuid.uuid4().hex
        record = closing_record("answered", request_id, by=by, at=now_ms(), token=token, text=text)
        producer = KafkaConnection.of(settings).producer(acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(
                PipelineTopics(pipeline).reviews, record, key=request_id.encode()
            )
        except KafkaError as exc:
            raise ReviewError(
                f"could not record the answer of request {request_id}: {exc}"
            ) from exc
        finally:
            await producer.stop()
        decided = (await read_reviews(settings, pipeline)).reviews[request_id]
        if decided.token != token:
            raise ReviewClosedError(_closed(decided))
        return await listener.result(request_id, timeout=timeout)
    finally:
        await listener.stop()


def _closed(review: Review) -> str:
    how = "answered by " + str(review.closed_by) if review.status == "answered" else "expired"
    return (
        f"the review of request {review.request_id} is closed already ({how}):"
        " its result was that answer"
    )
