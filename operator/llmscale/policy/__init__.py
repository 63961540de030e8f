"""The decision core (pure). Only `api`, `perf` and the standard library are imported here."""

from .decide import decide
from .reasons import Code, Reason
from .types import Decision, Estimate, History, Signals, Workload

__all__ = ["Code", "Decision", "Estimate", "History", "Reason", "Signals", "Workload", "decide"]
