"""The seed's ``customer_support_v3``: fetch -> embed -> vector search -> generate.

``generate_response`` depends on two steps (a fan-in joined by request id):
its ``context`` comes from ``query_vector_db`` and its ``history`` from
``fetch_user_messages``, in ``depends_on`` order.

    weir worker examples.customer_support:pipeline
    weir submit customer_support_v3 --json '{"user_id": "alice_789"}' --wait
"""

from __future__ import annotations

from weir.demo.models import POLICY_CASES, embed
from weir.processors import Transform
from weir.streams import Pipeline

pipeline = Pipeline("customer_support_v3")

_TOPICS = ["refund", "card charged twice", "wire transfer", "atm withdrawal", "exchange fee"]


def message_store(user_id: str, limit: int = 50) -> list[str]:
    """Stand-in for the message database: a user's last messages, derived from the id."""
    seed = sum(user_id.encode())
    count = 1 + seed % 4
    return [
        f"message {i + 1} from {user_id} about {_TOPICS[(seed + i) % len(_TOPICS)]}"
        for i in range(count)
    ][-limit:]


@pipeline.step()
def fetch_user_messages(user_id: str) -> list[str]:
    return message_store(user_id, limit=50)


@pipeline.step(depends_on=[fetch_user_messages])
def embed_messages(messages: list[str]) -> list[list[float]]:
    return [embed(m) for m in messages]


@pipeline.step(depends_on=[embed_messages])
def query_vector_db(embeddings: list[list[float]]) -> str:
    hits = POLICY_CASES.search(embeddings[-1], k=3)
    return "\n".join(f"{doc.id}: {doc.text}" for doc, _ in hits)


def build_prompt(history: list[str], context: str) -> str:
    return f"Context:\n{context}\n\nConversation:\n" + "\n".join(history)


def generate(context: str, history: list[str]) -> dict[str, str | int]:
    """Stand-in for the LLM call: a deterministic answer citing the best case."""
    best = context.splitlines()[0].split(":")[0] if context else "none"
    prompt = build_prompt(history, context)
    return {
        "answer": f"Based on {best}, we are looking into: {history[-1]}",
        "cited_case": best,
        "prompt_chars": len(prompt),
    }


pipeline.add_step(
    "generate_response", Transform(generate), depends_on=[query_vector_db, fetch_user_messages]
)
