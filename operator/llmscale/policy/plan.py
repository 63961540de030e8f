"""Step 4: the fewest replicas whose pooled capacity, at targetUtilization, carries the forecast."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant

from .capacity import CapacityStep, replicas_for
from .forecast import Forecast
from .reasons import Code, Reason
from .types import Proposal, Signals


@dataclass(frozen=True)
class Plan:
    proposal: Proposal
    planned: int | None  # None when nothing could be planned (rate unknown, SLO infeasible)


def plan(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, cap: CapacityStep, fc: Forecast, current: int) -> Plan:
    if fc.rate is None or not cap.current.feasible:
        return Plan(Proposal(current), None)
    util = fc.plan_utilization(spec)
    n, at = replicas_for(spec, variant, signals, cap.correction, cap.mix, fc.rate, util, cap.started)
    why = Reason(Code.CAPACITY_PLAN, f"forecast {fc.rate:.2f} req/s over {fc.horizon_s:.0f}s / {at.per_replica:.2f} req/s "
                                     f"per replica (in a fleet of {n}) at {util:.0%} -> {n}")
    return Plan(Proposal(n, (why,)), n)
