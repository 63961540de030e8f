"""Step 7: the tolerance band. Demand within +-tolerance of what today's replicas are planned to
carry changes nothing (HPA's dead band: rounding at a boundary must not flap)."""

from __future__ import annotations

from llmscale.api.models import LLMDeploymentSpec

from .capacity import CapacityStep
from .forecast import Forecast
from .reasons import Code, Reason
from .types import Proposal


def tolerance(spec: LLMDeploymentSpec, current: int, cap: CapacityStep, fc: Forecast, proposal: Proposal,
              acting_on_feedback: bool) -> Proposal:
    sc = spec.scaling
    if current == 0 or proposal.replicas == current or acting_on_feedback:
        return proposal
    if fc.rate is not None and cap.current.feasible:
        ratio = fc.rate / (current * cap.current.per_replica * fc.plan_utilization(spec))
        # Never within tolerance of a plan today's replicas cannot carry at full capacity (a held
        # peak planned with the headroom returning bursts showed may leave no margin to tolerate).
        if abs(ratio - 1) <= sc.tolerance and fc.rate <= current * cap.current.per_replica:
            return proposal.to(current, Reason(Code.WITHIN_TOLERANCE, f"demand at {ratio:.2f}x the plan for {current} replicas "
                                                                      f"(tolerance {sc.tolerance:.0%})"))
        return proposal
    if abs(proposal.replicas - current) / current <= sc.tolerance:
        return proposal.to(current, Reason(Code.WITHIN_TOLERANCE, f"{proposal.replicas} is within {sc.tolerance:.0%} of {current}"))
    return proposal
