"""Replays of recorded traffic: run a candidate over a step's past inputs, and compare.

>>> from weir.replays import StepReplay, in_sample
"""

from weir.replays.recording import Baseline, PartitionRange, RecordedInput, Recording
from weir.replays.step_replay import (
    ReplayOutcome,
    ReplayPlan,
    ReplayProgress,
    StepReplay,
    in_sample,
)

__all__ = [
    "Baseline",
    "PartitionRange",
    "RecordedInput",
    "Recording",
    "ReplayOutcome",
    "ReplayPlan",
    "ReplayProgress",
    "StepReplay",
    "in_sample",
]
