"""Deterministic local stand-ins for models and data stores, so examples run offline.

They are small but real: the embedder is feature hashing over word unigrams and
bigrams (L2-normalised), the vector index is exact cosine search, and the
classifier scores keyword evidence.  Swap them for real endpoints later.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9']+")
DIMENSIONS = 64


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def embed(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A hashing embedding: similar wording gives nearby vectors."""
    vector = [0.0] * dimensions
    words = tokens(text)
    for feature in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "big") % dimensions
        vector[index] += 1.0 if digest[4] % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class Document:
    id: str
    text: str


class VectorIndex:
    """Exact nearest-neighbour search over a fixed corpus."""

    def __init__(self, docs: list[Document]) -> None:
        self._docs = [(d, embed(d.text)) for d in docs]

    def search(self, vector: list[float], k: int = 3) -> list[tuple[Document, float]]:
        scored = [(d, cosine(vector, v)) for d, v in self._docs]
        scored.sort(key=lambda item: (-item[1], item[0].id))
        return scored[:k]


POLICY_CASES = VectorIndex(
    [
        Document("case-101", "card charged twice for the same purchase refund issued"),
        Document("case-102", "unauthorised transaction on card reported as fraud chargeback"),
        Document("case-103", "merchant refused refund for cancelled subscription dispute"),
        Document("case-104", "wire transfer delayed beyond three business days"),
        Document("case-105", "atm withdrawal failed but account was debited"),
        Document("case-106", "foreign exchange fee charged on domestic purchase"),
    ]
)

_INTENTS = {
    "account_balance": {"balance", "how much", "available", "funds", "account balance"},
    "complex_dispute": {
        "dispute",
        "charged",
        "refund",
        "fraud",
        "unauthorised",
        "twice",
        "debited",
    },
}


def classify_intent(text: str) -> tuple[str, float]:
    """(intent, confidence) from keyword evidence; ties go to the dispute path (safer)."""
    lowered = text.lower()
    scores = {intent: sum(kw in lowered for kw in kws) for intent, kws in _INTENTS.items()}
    total = sum(scores.values())
    if total == 0:
        return "complex_dispute", 0.5
    intent = max(scores, key=lambda i: (scores[i], i == "complex_dispute"))
    return intent, round(scores[intent] / total, 3)


def draft_with_policy(messages: list[dict[str, str]], **params: object) -> str:
    """A stand-in LLM: cites the first past case given in the system prompt."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    cases = re.findall(r"(case-\d+): ([^\n]+)", system)
    if not cases:
        return "A specialist will review your request and get back to you."
    case_id, summary = cases[0]
    reply = f"We reviewed similar case {case_id} ({summary}) and opened a dispute for you."
    earlier = sum(1 for m in messages if m["role"] == "user") - 1
    if earlier > 0:  # a follow-up: the conversation so far came with the question
        plural = "s" if earlier > 1 else ""
        return f"Following up on your {earlier} earlier message{plural}: {reply}"
    return reply
