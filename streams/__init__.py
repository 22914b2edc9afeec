"""The pipeline DSL and the runtime that runs it on Kafka.

>>> from weir.streams import Pipeline, Branch
>>> support = Pipeline("support")
>>> @support.step()
... def classify(text: str) -> str:
...     return "balance" if "balance" in text else "dispute"
>>> @support.step(depends_on=[classify])
... def route(classify: str):
...     return Branch(classify, {"intent": classify})
>>> @support.step(depends_on=[route])
... def balance(route: dict) -> str:
...     return "your balance is 42"
>>> @support.step(depends_on=[route])
... def dispute(route: dict) -> str:
...     return "a human will call you"
>>> support.validate().final_steps
('balance', 'dispute')
"""

from weir.streams.branch import Branch
from weir.streams.cache import Cache
from weir.streams.client import WeirClient
from weir.streams.context import StepContext
from weir.streams.conversation import Conversation, History
from weir.streams.dependencies import AnyOf, any_of
from weir.streams.local import run_local
from weir.streams.pipeline import Pipeline, Step
from weir.streams.retry import NO_RETRY, Fallback, RetryPolicy
from weir.streams.review import Escalate
from weir.streams.side_effects import side_effect
from weir.streams.sync_client import SyncWeirClient
from weir.streams.worker import Worker, WorkerStats

__all__ = [
    "NO_RETRY",
    "AnyOf",
    "Branch",
    "Cache",
    "Conversation",
    "Escalate",
    "Fallback",
    "History",
    "Pipeline",
    "RetryPolicy",
    "Step",
    "StepContext",
    "SyncWeirClient",
    "WeirClient",
    "Worker",
    "WorkerStats",
    "any_of",
    "run_local",
    "side_effect",
]
