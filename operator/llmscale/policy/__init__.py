"""The decision core (pure). Only `api`, `perf` and the standard library are imported here."""

from .decide import decide
from .reasons import Code, Reason
from .types import Action, Condition, Decision, Estimate, History, PodCounts, Proposal, Signals, Workload

__all__ = ["Action", "Code", "Condition", "Decision", "Estimate", "History", "PodCounts", "Proposal", "Reason", "Signals", "Workload",
           "decide"]
