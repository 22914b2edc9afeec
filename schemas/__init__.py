"""Avro schemas and typed models of every message weir puts on Kafka.

>>> from weir.schemas import Request, REQUEST_SCHEMA
>>> raw = Request(pipeline="echo", payload={"text": "hi"}, request_id="r1").to_avro()
>>> Request.from_wire(raw, pipeline="echo", key=None, max_bytes=1 << 20).payload
{'text': 'hi'}
"""

from weir.schemas._codec import MAGIC_BYTE, AvroSchema, load_schema
from weir.schemas.messages import (
    DEAD_LETTER_SCHEMA,
    ENVELOPE_SCHEMA,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    TRACE_EVENT_SCHEMA,
    DeadLetter,
    Envelope,
    ModelCall,
    Request,
    Result,
    TraceEvent,
)

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "ENVELOPE_SCHEMA",
    "MAGIC_BYTE",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "TRACE_EVENT_SCHEMA",
    "AvroSchema",
    "DeadLetter",
    "Envelope",
    "ModelCall",
    "Request",
    "Result",
    "TraceEvent",
    "load_schema",
]
