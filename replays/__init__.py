"""Replays of recorded traffic: run a candidate over a step's past inputs, and compare.

>>> from weir.replays import StepReplay, in_sample
"""

from weir.replays.recording import Baseline, PartitionRange, RecordedInput, Recording
from weir.replays.records import ReplayOutcome, ReplayPlan, find_replay, in_sample, read_outcomes
from weir.replays.step_replay import ReplayProgress, StepReplay

__all__ = [
    "Baseline",
    "PartitionRange",
    "RecordedInput",
    "Recording",
    "ReplayOutcome",
    "ReplayPlan",
    "ReplayProgress",
    "StepReplay",
    "find_replay",
    "in_sample",
    "read_outcomes",
]
