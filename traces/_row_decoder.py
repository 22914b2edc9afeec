"""An encoded trace event straight into its ``pipeline_events`` row (the sink's hot path).

The sink used to decode each event into a dict (``TraceEvent.decode``) and then
build its row from the dict (``event_row``); for an event without model calls
this reads the Avro bytes (``trace_event.avsc``) once, straight into the row, and
shares the values that repeat from event to event (names, statuses, times of
the same millisecond), model calls included.  Anything else (another schema,
bytes it does not expect) gives ``None``: the caller takes the general path, which also
says what is wrong.  ``tests/traces/test_row_decoder.py`` checks the rows
against ``event_row(TraceEvent.decode(raw))``.
"""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal
from typing import Any

__all__ = ["RowDecoder"]

_TWO_DOUBLES = struct.Struct("<dd")
_DOUBLE = struct.Struct("<d")
_CACHE_MAX = 4096


class _Unexpected(Exception):
    pass


def _long(raw: bytes, pos: int) -> tuple[int, int]:
    b = raw[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    n, shift = b & 0x7F, 7
    while True:
        b = raw[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise _Unexpected


class RowDecoder:
    """Decodes events of the trace-event schema framed with ``header`` into rows.

    Keeps small caches of repeated texts, times and costs (bounded; one per sink).
    """

    def __init__(self, header: bytes) -> None:
        self._header = header
        self._texts: dict[bytes, str] = {}
        self._times: dict[int, dt.datetime] = {}
        self._costs: dict[bytes, Decimal] = {}

    def _text(self, raw: bytes, pos: int) -> tuple[str, int]:
        """A string that repeats (a name, a status): decoded once."""
        n, pos = _long(raw, pos)
        end = pos + n
        if n < 0 or end > len(raw):
            raise _Unexpected
        key = raw[pos:end]
        text = self._texts.get(key)
        if text is None:
            if len(self._texts) >= _CACHE_MAX:
                self._texts.clear()
            text = self._texts[key] = key.decode()
        return text, end

    def _time(self, ms: int) -> dt.datetime:
        value = self._times.get(ms)
        if value is None:
            if len(self._times) >= _CACHE_MAX:
                self._times.clear()
            value = self._times[ms] = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
        return value

    def _call(self, raw: bytes, pos: int, calls: list[list[Any]]) -> int:
        """One model call (``ModelCall`` in the schema) onto the row's ``calls.*`` arrays."""
        text, long, end = self._text, _long, len(raw)

        def opt(pos: int) -> tuple[str | None, int]:
            branch = raw[pos]
            if branch == 0:
                return None, pos + 1
            if branch != 2:
                raise _Unexpected
            return text(raw, pos + 1)

        _, pos = text(raw, pos)  # step
        _, pos = long(raw, pos)  # attempt
        endpoint, pos = text(raw, pos)
        provider, pos = text(raw, pos)
        model, pos = text(raw, pos)
        operation, pos = text(raw, pos)
        status, pos = text(raw, pos)
        error_type, pos = opt(pos)
        input_tokens, pos = long(raw, pos)
        output_tokens, pos = long(raw, pos)
        _, pos = text(raw, pos)  # usage_source
        n, pos = long(raw, pos)
        if n < 0 or pos + n > end:
            raise _Unexpected
        cost = self._cost(raw[pos : pos + n])
        pos += n
        _, pos = long(raw, pos)  # started_at
        (duration_ms,) = _DOUBLE.unpack_from(raw, pos)
        pos += 8
        branch = raw[pos]
        if branch == 0:
            ttft_ms, pos = 0.0, pos + 1
        elif branch == 2:
            (ttft_ms,) = _DOUBLE.unpack_from(raw, pos + 1)
            pos += 9
        else:
            raise _Unexpected
        if raw[pos] > 1:  # streamed
            raise _Unexpected
        rule, pos = opt(pos + 1)
        branch = raw[pos]
        if branch == 2:
            _, pos = long(raw, pos + 1)  # rules_version
        elif branch == 0:
            pos += 1
        else:
            raise _Unexpected
        _, pos = opt(pos)  # fallback_from
        for column, value in zip(
            calls,
            (
                endpoint,
                provider,
                model,
                operation,
                status,
                error_type or "",
                input_tokens or 0,
                output_tokens or 0,
                cost,
                duration_ms,
                ttft_ms,
                rule or "",
            ),
            strict=True,
        ):
            column.append(value)
        return pos

    def _cost(self, key: bytes) -> Decimal:
        cost = self._costs.get(key)
        if cost is None:
            cost = Decimal(key.decode() or "0")
            if len(self._costs) < _CACHE_MAX:
                self._costs[key] = cost
        return cost

    def row(self, raw: bytes, trace_partition: int, trace_offset: int) -> list[Any] | None:
        """The event's row (``event_columns()`` order), or ``None``: use the general path.

        Raises ``decimal.InvalidOperation`` for a cost that is not a number (as that path).
        """
        if raw[:5] != self._header:
            return None
        try:
            return self._row(raw, trace_partition, trace_offset)
        except (IndexError, UnicodeDecodeError, _Unexpected, struct.error):
            return None

    def _row(self, raw: bytes, trace_partition: int, trace_offset: int) -> list[Any] | None:
        text, long, end = self._text, _long, len(raw)

        def string(pos: int) -> tuple[str, int]:
            n, pos = long(raw, pos)
            stop = pos + n
            if n < 0 or stop > end:
                raise _Unexpected
            return raw[pos:stop].decode(), stop

        def opt(pos: int, repeats: bool = False) -> tuple[str | None, int]:
            branch = raw[pos]
            if branch == 0:
                return None, pos + 1
            if branch != 2:
                raise _Unexpected
            return text(raw, pos + 1) if repeats else string(pos + 1)

        event_id, pos = string(5)
        pipeline_id, pos = text(raw, pos)
        step_name, pos = text(raw, pos)
        request_id, pos = string(pos)
        attempt, pos = long(raw, pos)
        status, pos = text(raw, pos)
        disposition, pos = text(raw, pos)
        error_type, pos = opt(pos, True)
        error_message, pos = opt(pos)
        created_at, pos = long(raw, pos)
        started_at, pos = long(raw, pos)
        submitted_at, pos = long(raw, pos)
        duration_ms, queue_wait_ms = _TWO_DOUBLES.unpack_from(raw, pos)
        pos += 16
        worker_id, pos = text(raw, pos)
        topic, pos = text(raw, pos)
        partition, pos = long(raw, pos)
        offset, pos = long(raw, pos)
        endpoint, pos = opt(pos, True)
        model, pos = opt(pos, True)
        provider, pos = opt(pos, True)
        input_tokens, pos = long(raw, pos)
        output_tokens, pos = long(raw, pos)
        n, pos = long(raw, pos)
        if n < 0 or pos + n > end:
            raise _Unexpected
        cost_key = raw[pos : pos + n]
        pos += n
        usage_source, pos = opt(pos, True)
        routing_rule, pos = opt(pos, True)
        branch = raw[pos]
        if branch == 0:
            rules_version, pos = None, pos + 1
        elif branch == 2:
            rules_version, pos = long(raw, pos + 1)
        else:
            raise _Unexpected
        calls: list[list[Any]] = [[] for _ in range(12)]
        count, pos = long(raw, pos)
        while count:
            if count < 0:  # a block with its size in bytes
                count = -count
                _, pos = long(raw, pos)
            for _ in range(count):
                pos = self._call(raw, pos, calls)
            count, pos = long(raw, pos)
        trace_id, pos = opt(pos)
        span_id, pos = opt(pos)
        given, pos = opt(pos)
        made, pos = opt(pos)
        replay_id, pos = text(raw, pos)
        variant, pos = text(raw, pos)
        if pos != end:
            return None
        cost = self._cost(cost_key)
        time = self._time
        return [
            event_id,
            pipeline_id,
            step_name,
            request_id,
            attempt,
            status,
            disposition,
            error_type,
            error_message,
            time(created_at),
            time(started_at),
            time(submitted_at),
            duration_ms,
            queue_wait_ms,
            worker_id,
            topic,
            partition,
            offset,
            endpoint,
            model,
            provider,
            input_tokens or 0,
            output_tokens or 0,
            cost,
            usage_source,
            routing_rule,
            rules_version,
            *calls,
            trace_id or "",
            span_id or "",
            given,
            made,
            trace_partition,
            trace_offset,
            replay_id,
            variant,
        ]
