"""Conversations: a step that declares ``history: History`` sees and extends a request's
conversation.

A request carries ``conversation_id`` in its payload (``client.submit(...,
conversation_id="c-42")``).  A step with a parameter annotated ``History``
receives that conversation's earlier turns and adds its own::

    @pipeline.step(conversation=Conversation(budget_tokens=2000, system="Be brief."))
    async def answer(question: str, history: History) -> str:
        reply = await model.chat([*history.messages(), {"role": "user", "content": question}])
        history.add("user", question)
        history.add("assistant", reply, data={"model": "small"})
        return reply

The turns a step adds are stored only when its attempt succeeds, written with
the step's output (``weir.streams.conversation_store``).  A request without
``conversation_id`` gets an empty history whose turns are dropped.

**Trimming policy.**  After each turn the stored conversation is brought back
under its caps, oldest turns first: the system prompt (``Conversation.system``)
and turns of role ``system`` are never dropped, nor are the turns just added.
Turns go while the estimated tokens exceed ``budget_tokens``, the turns exceed
``max_turns``, or the JSON exceeds ``max_bytes``.  With ``summarize``, the
dropped turns (and the summary so far) are folded into a new summary, shown as
a system message after the system prompt and counted in the budget.  Tokens
are estimated as ``len(text) / 4`` rounded up plus 4 per turn, unless
``count_tokens`` is given.  A conversation untouched for ``ttl`` seconds
starts over (and Kafka deletes it from the table after about as long).
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from weir.core.errors import ConversationIdError, PipelineDefinitionError, StepError

__all__ = [
    "MAX_CONVERSATION_ID_BYTES",
    "Conversation",
    "ConversationState",
    "History",
    "Turn",
    "conversation_id_of",
    "routing_key",
]

MAX_CONVERSATION_ID_BYTES = 256
"""Longest ``conversation_id`` (UTF-8 bytes), as for a request id."""
PAST_SUMMARIES_KEPT = 4
"""Earlier summaries a stored conversation keeps, for step replays of older requests."""

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = ("system", "user", "assistant", "tool")

Summarize = Callable[[str | None, list["Turn"]], "Awaitable[str] | str"]
"""``summarize(summary_so_far, dropped_turns) -> new summary`` (may call a model)."""


def conversation_id_of(payload: Mapping[str, Any]) -> str | None:
    """The request's ``conversation_id`` (``None``: none); ``ConversationIdError`` if unusable."""
    value = payload.get("conversation_id")
    if value is None:
        return None
    if not isinstance(value, str):
        # Not the value itself: it may be personal data, and errors travel (results, traces).
        raise ConversationIdError(f"conversation_id must be a string, got {type(value).__name__}")
    if not value:
        raise ConversationIdError("conversation_id must not be empty; omit it for no conversation")
    if len(value.encode()) > MAX_CONVERSATION_ID_BYTES:
        raise ConversationIdError(
            f"conversation_id is {len(value.encode())} bytes long; at most"
            f" {MAX_CONVERSATION_ID_BYTES} are allowed"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConversationIdError("conversation_id must not contain control characters")
    return value


def routing_key(request: str, request_id: str) -> bytes:
    """The Kafka key of a request's messages in a pipeline with conversations: its
    conversation id (so a conversation stays on one partition), else its request id.

    ``request`` is the payload as JSON text; a payload that does not parse or whose id
    is unusable is keyed by request id (the step rejects it with a clear error).
    """
    try:
        payload = json.loads(request)
        cid = conversation_id_of(payload) if isinstance(payload, dict) else None
    except (ValueError, ConversationIdError):
        cid = None
    return (cid or request_id).encode()


def estimate_tokens(text: str) -> int:
    """About 4 characters a token (English prose with OpenAI-style tokenizers)."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True, kw_only=True)
class Conversation:
    """How a step's conversations are kept (``@pipeline.step(conversation=...)``).

    >>> Conversation(budget_tokens=1000).max_turns
    200
    """

    budget_tokens: int = 4000
    """What the history (system prompt, summary, turns) may weigh, in estimated tokens."""
    system: str | None = None
    """A system prompt put first in ``History.messages()``; never trimmed."""
    max_turns: int = 200
    max_bytes: int = 256_000
    """The stored conversation's JSON size cap (a Kafka message must stay well under 1 MB)."""
    ttl: float | None = 30 * 24 * 3600.0
    """Seconds after its last turn a conversation is forgotten; ``None``: kept."""
    summarize: Summarize | None = None
    count_tokens: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        for name in ("budget_tokens", "max_turns", "max_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise PipelineDefinitionError(
                    f"Conversation {name} must be an integer >= 1: {getattr(self, name)!r}"
                )
        if self.max_bytes > 900_000:
            raise PipelineDefinitionError(
                f"Conversation max_bytes must be at most 900000 (one Kafka message): "
                f"{self.max_bytes}"
            )
        if self.ttl is not None and not self.ttl > 0:
            raise PipelineDefinitionError(f"Conversation ttl must be above 0 or None: {self.ttl}")
        for name in ("summarize", "count_tokens"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise PipelineDefinitionError(f"Conversation {name} must be a function")

    def topic_config(self) -> dict[str, str]:
        config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        if self.ttl is not None:
            config["cleanup.policy"] = "compact,delete"
            config["retention.ms"] = str(int(self.ttl * 1000))
        return config

    def tokens(self, text: str) -> int:
        return (self.count_tokens or estimate_tokens)(text)


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation."""

    role: Role
    content: str
    at: int
    """Epoch milliseconds when the step added it."""
    request_id: str
    step: str
    data: Any = None
    """What else the step chose to record with it (JSON)."""


@dataclass(slots=True)
class ConversationState:
    """A conversation as stored (one compacted-table value)."""

    turns: list[Turn] = field(default_factory=list)
    summary: str | None = None
    updated_at: int = 0
    """Epoch milliseconds of the last change."""
    seq: int = 0
    """Turns ever added: the newer of two copies has the higher one."""
    dropped: int = 0
    """Turns trimmed away so far."""
    summary_until: int = 0
    """``at`` of the newest turn ``summary`` folds in (0: not known, stored before 2026-12)."""
    past_summaries: list[tuple[int, str]] = field(default_factory=list)
    """The summaries ``summary`` replaced, as ``(summary_until, summary)``, oldest first; the
    last ``PAST_SUMMARIES_KEPT``.  A step replay picks the one its request saw."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), default=str).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ConversationState:
        body = json.loads(raw)
        turns = [Turn(**t) for t in body["turns"]]
        return cls(
            turns,
            body.get("summary"),
            int(body["updated_at"]),
            int(body["seq"]),
            int(body.get("dropped", 0)),
            int(body.get("summary_until", 0)),
            [(int(until), str(text)) for until, text in body.get("past_summaries", ())],
        )

    def summary_before(self, at: int) -> str | None:
        """The newest summary that folds in only turns added before ``at`` (epoch ms): what
        a request submitted then saw, when the table still holds it; ``None`` when every
        summary kept folds in later turns (a replay must not see what came after it)."""
        if self.summary is not None and self.summary_until < at:
            return self.summary  # also a summary stored before its time was (0)
        for until, text in reversed(self.past_summaries):
            if until < at:
                return text
        return None

    def expired(self, ttl: float | None, now_ms: int) -> bool:
        return ttl is not None and now_ms - self.updated_at > ttl * 1000


class History:
    """A conversation as one attempt of a step sees it; ``add`` records new turns."""

    def __init__(
        self,
        conversation_id: str | None,
        state: ConversationState,
        config: Conversation,
        *,
        request_id: str,
        step: str,
    ) -> None:
        self.conversation_id = conversation_id
        self.config = config
        self.summary = state.summary
        mine = next((i for i, t in enumerate(state.turns) if t.request_id == request_id), None)
        self.recorded = mine is not None
        """This request's turns are stored already (it is redelivered after a crash)."""
        self.turns: tuple[Turn, ...] = tuple(state.turns[:mine])
        """Earlier turns, oldest first: as the request's first attempt saw them, when it is
        redelivered after a crash."""
        self.dropped = state.dropped
        """Turns the trimming policy has dropped from this conversation so far."""
        self.added: list[Turn] = []
        self._request_id = request_id
        self._step = step

    def add(self, role: Role, content: str, *, data: Any = None) -> Turn:
        """Record a turn; it is stored when the attempt succeeds."""
        if role not in _ROLES:
            raise StepError(f"History.add: role must be one of {_ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise StepError(f"History.add: content must be a string, got {type(content).__name__}")
        turn = Turn(role, content, int(time.time() * 1000), self._request_id, self._step, data)
        self.added.append(turn)
        return turn

    def messages(self) -> list[dict[str, str]]:
        """System prompt, summary, then the turns: chat-completion messages."""
        out = []
        if self.config.system:
            out.append({"role": "system", "content": self.config.system})
        if self.summary:
            out.append({"role": "system", "content": f"Summary of earlier turns: {self.summary}"})
        return out + [{"role": t.role, "content": t.content} for t in self.turns]

    @property
    def tokens(self) -> int:
        """Estimated tokens of ``messages()`` (what the budget bounds)."""
        return weigh(self.config, self.summary, self.turns)

    def __len__(self) -> int:
        return len(self.turns)

    def __repr__(self) -> str:  # turns may hold personal data: never in a repr
        return (
            f"History(conversation_id={self.conversation_id!r}, turns={len(self.turns)},"
            f" added={len(self.added)}, dropped={self.dropped})"
        )


def weigh(config: Conversation, summary: str | None, turns: Sequence[Turn]) -> int:
    """Estimated tokens of a history: system prompt, summary and 4 + content per turn."""
    total = config.tokens(config.system) + 4 if config.system else 0
    if summary:
        total += config.tokens(summary) + 4
    return total + sum(config.tokens(t.content) + 4 for t in turns)


async def trimmed(
    config: Conversation, state: ConversationState, keep: int
) -> tuple[ConversationState, list[Turn]]:
    """``state`` within the caps (the policy in the module docstring); the last ``keep``
    turns (just added) stay.  Returns the new state and the turns dropped."""
    turns = list(state.turns)
    dropped: list[Turn] = []

    def over() -> bool:
        size = len(ConversationState(turns, state.summary).encode())
        return (
            weigh(config, state.summary, turns) > config.budget_tokens
            or len(turns) > config.max_turns
            or size > config.max_bytes
        )

    def drop_oldest() -> Turn | None:
        oldest = next(
            (i for i, t in enumerate(turns[: len(turns) - keep]) if t.role != "system"), None
        )
        return None if oldest is None else turns.pop(oldest)

    while over():
        turn = drop_oldest()
        if turn is None:
            break  # only system turns and this request's are left: kept over budget
        dropped.append(turn)
    summary = state.summary
    pending = list(dropped)
    # A new summary can push the history over budget again; the turns dropped for it are
    # folded in too, so no turn leaves unsummarised.  Each round drops at least one turn.
    while pending and config.summarize is not None:
        made = config.summarize(summary, pending)
        summary = str(await made) if inspect.isawaitable(made) else str(made)
        pending = []
        while weigh(config, summary, turns) > config.budget_tokens:
            turn = drop_oldest()
            if turn is None:
                break
            pending.append(turn)
        dropped.extend(pending)
    past, until = state.past_summaries, state.summary_until
    if dropped and config.summarize is not None:
        # Folded in, whether or not the text changed: the summary now covers these turns.
        if state.summary is not None:
            past = [*past, (state.summary_until, state.summary)][-PAST_SUMMARIES_KEPT:]
        until = max(t.at for t in dropped)
    out = ConversationState(
        turns,
        summary,
        state.updated_at,
        state.seq,
        state.dropped + len(dropped),
        until,
        list(past),
    )
    # Past summaries serve replays only: the first to go when the value outgrows its cap.
    while out.past_summaries and len(out.encode()) > config.max_bytes:
        del out.past_summaries[0]
    return out, dropped
