"""The fintech support pipeline from MISSION.md, with conditional branches.

classify_intent -> route --(account_balance)--> balance_lookup
                         \\-(complex_dispute)--> embed_dispute -> search_cases -> draft_reply
                                                  -> review --(confidence >= 0.8)--> deliver
                                                   \\-(confidence < 0.8)--> escalate_to_human

``draft_reply`` keeps each customer's conversation (``History``): a follow-up
question in the same conversation is answered knowing the earlier turns.

Every request takes exactly one path; the result is the output of the final
step it reached (``balance_lookup``, ``deliver``), or for ``escalate_to_human``
the answer of the person who reviewed it (or its fallback after the deadline).
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from weir.demo.models import POLICY_CASES, classify_intent, draft_with_policy, embed
from weir.processors import LocalModel, ModelEndpoint, OpenAICompatible, Price
from weir.streams import Branch, Conversation, Escalate, History, Pipeline, StepContext


class SupportMessage(BaseModel):
    customer_id: str
    text: str
    conversation_id: str | None = None


class Draft(BaseModel):
    reply: str
    confidence: float
    cases: list[str]
    earlier_turns: int = 0
    """Turns of the conversation the reply was drafted with."""


# The models: a classifier and an embedder loaded once per worker, and an LLM. With
# SUPPORT_LLM_URL (any OpenAI-compatible server: vLLM, Ollama, OpenAI) the LLM is real;
# without it a local stand-in answers, priced like gpt-4o-mini so cost tracking shows.
intent_model = ModelEndpoint(
    "intent-classifier", provider=LocalModel(model=classify_intent, threaded=False)
)
embedder = ModelEndpoint(
    "case-embedder",
    provider=LocalModel(model=lambda texts: [embed(t) for t in texts], threaded=False),
)
_LLM_URL = os.environ.get("SUPPORT_LLM_URL")
policy_llm = ModelEndpoint(
    os.environ.get("SUPPORT_LLM_MODEL", "gpt-4o-mini"),
    provider=(
        OpenAICompatible(_LLM_URL, api_key=os.environ.get("SUPPORT_LLM_KEY_REF"))
        if _LLM_URL
        else LocalModel(model=draft_with_policy, threaded=False)
    ),
    price=Price.per_million(input="0.15", output="0.60"),
)

pipeline = Pipeline("intent_support", input=SupportMessage)

_BALANCES = {"c-1": "1,204.50", "c-2": "88.00", "c-3": "15,000.00"}


@pipeline.step()
async def classify(text: str) -> dict[str, str | float]:
    result = await intent_model.classify(text)
    return {"intent": result.label, "confidence": result.score or 0.0}


@pipeline.step(depends_on=[classify], inline=True)
def route(classify: dict[str, str | float]) -> Branch:
    target = "balance_lookup" if classify["intent"] == "account_balance" else "embed_dispute"
    return Branch(target, classify)


@pipeline.step(depends_on=[route])
async def balance_lookup(route: dict[str, str | float], ctx: StepContext) -> dict[str, str]:
    """Stand-in for the internal accounts API (no LLM on this path)."""
    customer = ctx.request["customer_id"]
    return {"customer_id": customer, "balance": _BALANCES.get(customer, "0.00"), "path": "api"}


@pipeline.step(depends_on=[route])
async def embed_dispute(route: dict[str, str | float], ctx: StepContext) -> list[float]:
    return (await embedder.embed([ctx.request["text"]])).vectors[0]


@pipeline.step(depends_on=[embed_dispute])
def search_cases(embed_dispute: list[float]) -> list[dict[str, str | float]]:
    """Stand-in for the vector database."""
    hits = POLICY_CASES.search(embed_dispute)
    return [{"id": d.id, "text": d.text, "score": round(s, 4)} for d, s in hits]


@pipeline.step(
    depends_on=[search_cases], log_io=True, conversation=Conversation(budget_tokens=1500)
)
async def draft_reply(
    search_cases: list[dict[str, str | float]], history: History, text: str = ""
) -> Draft:
    """The LLM call with policy context and the conversation so far; confidence is the
    best case's similarity."""
    policy = "\n".join(f"{c['id']}: {c['text']}" for c in search_cases)
    result = await policy_llm.chat(
        [
            {"role": "system", "content": f"Answer using these past cases:\n{policy}"},
            *history.messages(),
            {"role": "user", "content": text},
        ],
        max_tokens=120,
    )
    history.add("user", text)
    history.add("assistant", result.text)
    best = search_cases[0]
    return Draft(
        reply=result.text,
        confidence=float(best["score"]),
        cases=[str(c["id"]) for c in search_cases],
        earlier_turns=len(history),
    )


@pipeline.step(depends_on=[draft_reply], inline=True)
def review(draft_reply: Draft) -> Branch:
    target = "deliver" if draft_reply.confidence >= 0.8 else "escalate_to_human"
    return Branch(target, draft_reply)


@pipeline.step(depends_on=[review])
def deliver(review: Draft) -> dict[str, str | int]:
    return {"reply": review.reply, "path": "ai", "earlier_turns": review.earlier_turns}


@pipeline.step(depends_on=[review])
def escalate_to_human(review: Draft, ctx: StepContext) -> Escalate:
    """Low confidence: a person answers, with the whole context in front of them.

    The request waits on the review topic (``weir review list``); if nobody
    answers before the deadline (``review_deadline_s``), the customer gets the
    fallback.
    """
    return Escalate(
        f"confidence {review.confidence:.2f} < 0.8",
        transcript=[
            f"customer {ctx.request['customer_id']}: {ctx.request['text']}",
            f"similar cases: {', '.join(review.cases)}",
            f"draft reply: {review.reply}",
        ],
        fallback={
            "reply": "A specialist will look into this and contact you within one business day.",
            "path": "human",
        },
    )
