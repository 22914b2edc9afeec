"""The fintech support pipeline from MISSION.md, with conditional branches.

classify_intent -> route --(account_balance)--> balance_lookup
                         \\-(complex_dispute)--> embed_dispute -> search_cases -> draft_reply
                                                  -> review --(confidence >= 0.8)--> deliver
                                                   \\-(confidence < 0.8)--> escalate_to_human

Every request takes exactly one path; the result is the output of the final
step it reached (``balance_lookup``, ``deliver`` or ``escalate_to_human``).
"""

from __future__ import annotations

from pydantic import BaseModel

from examples._local_models import POLICY_CASES, classify_intent, embed
from streams import Branch, Pipeline, StepContext


class SupportMessage(BaseModel):
    customer_id: str
    text: str


class Draft(BaseModel):
    reply: str
    confidence: float
    cases: list[str]


pipeline = Pipeline("intent_support", input=SupportMessage)

_BALANCES = {"c-1": "1,204.50", "c-2": "88.00", "c-3": "15,000.00"}


@pipeline.step()
def classify(text: str) -> dict[str, str | float]:
    intent, confidence = classify_intent(text)
    return {"intent": intent, "confidence": confidence}


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
def embed_dispute(route: dict[str, str | float], ctx: StepContext) -> list[float]:
    return embed(ctx.request["text"])


@pipeline.step(depends_on=[embed_dispute])
def search_cases(embed_dispute: list[float]) -> list[dict[str, str | float]]:
    return [{"id": d.id, "score": round(s, 4)} for d, s in POLICY_CASES.search(embed_dispute)]


@pipeline.step(depends_on=[search_cases])
def draft_reply(search_cases: list[dict[str, str | float]], text: str = "") -> Draft:
    """Stand-in for the LLM call with policy context; confidence is the best case's score."""
    best = search_cases[0]
    return Draft(
        reply=f"We reviewed similar case {best['id']} and opened a dispute.",
        confidence=float(best["score"]),
        cases=[str(c["id"]) for c in search_cases],
    )


@pipeline.step(depends_on=[draft_reply], inline=True)
def review(draft_reply: Draft) -> Branch:
    target = "deliver" if draft_reply.confidence >= 0.8 else "escalate_to_human"
    return Branch(target, draft_reply)


@pipeline.step(depends_on=[review])
def deliver(review: Draft) -> dict[str, str]:
    return {"reply": review.reply, "path": "ai"}


@pipeline.step(depends_on=[review])
def escalate_to_human(review: Draft, ctx: StepContext) -> dict[str, str | list[str]]:
    return {
        "path": "human",
        "transcript": [ctx.request["text"], f"draft: {review.reply}"],
        "reason": f"confidence {review.confidence:.2f} < 0.8",
    }
