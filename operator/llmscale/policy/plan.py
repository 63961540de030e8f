"""Step 4: the fewest replicas whose capacity (pooled behind a load-aware gateway, each replica
alone behind a Service), at targetUtilization, carries the forecast.

What the scale-down window remembers of the plan is the fewest replicas the tolerance band would
have kept for the load (see `tolerated`), not the plan's own rounding: on steady traffic the load
straddles a replica boundary by noise, and the window, holding the highest of a score of noisy
decisions, kept the upper count for good (mooncake: five replicas for forty minutes, where four,
whose plan stretched by the 10 % tolerance carried every one of those loads, met the SLO). A
scale-up from those replicas needs the load past the band, and so does holding the count it
scaled to: the two sides of a boundary are judged alike. The band's count is recorded at or below
today's count only (policy/stabilization.py): a scale-up is recorded as the count it goes to.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant

from .capacity import CapacityStep, capacity_curve, replicas_for
from .forecast import Forecast
from .reasons import Code, Reason
from .types import Proposal, Signals


@dataclass(frozen=True)
class Plan:
    proposal: Proposal
    planned: int | None  # None when nothing could be planned (rate unknown, SLO infeasible)


def tolerated(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, cap: CapacityStep, demand: float,
              utilization: float, planned: int) -> int:
    """The fewest replicas (at most `planned`) that the tolerance band keeps for `demand`: their
    plan stretched by scaling.tolerance carries it, and so does their full capacity (the band
    never keeps replicas that cannot carry the load at all; see the tolerance step)."""
    tol = spec.scaling.tolerance
    if tol <= 0 or planned <= 1:
        return planned
    # Both tests only get easier with more replicas (capacity never shrinks with the fleet): the
    # fewest that pass. One fewer than the plan is tried first (a 10 % band spans more than one
    # replica only past a dozen); past that, a bisection (a plan of millions, from a rate no
    # fleet sees, costs a few lookups, not a step per replica).
    curve = capacity_curve(spec, variant, signals, cap.mix, cap.started, cap.speed)

    def passes(n: int) -> bool:
        carried = n * curve.at(n, cap.correction).per_replica
        return not (demand > carried * utilization * (1 + tol) or demand > carried)

    if not passes(planned - 1):
        return planned
    lo, hi = 1, planned - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def plan(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, cap: CapacityStep, fc: Forecast, current: int) -> Plan:
    if fc.rate is None or not cap.current.feasible:
        return Plan(Proposal(current), None)
    util = fc.plan_utilization(spec)
    n, at = replicas_for(spec, variant, signals, cap.correction, cap.mix, fc.rate, util, cap.started, cap.speed)
    pooled = f"in a fleet of {n}" if spec.routing.pools else "equal shares behind a Service"
    why = Reason(Code.CAPACITY_PLAN, f"forecast {fc.rate:.2f} req/s over {fc.horizon_s:.0f}s / {at.per_replica:.2f} req/s "
                                     f"per replica ({pooled}) at {util:.0%} -> {n}")
    kept = tolerated(spec, variant, signals, cap, fc.rate, util, n)
    return Plan(Proposal(n, (why,), kept if kept < n else None), n)
