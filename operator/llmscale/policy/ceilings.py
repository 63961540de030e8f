"""Step 10: the hard ceilings. Replicas x GPUs <= maxGPUs and hourly cost <= maxHourlyCost, always."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant

from .reasons import Code, Reason
from .types import Condition, Proposal

# Which rule binds -> the reason code that says so (the one place this mapping lives).
CEILING_CODES = {"replicas.max": Code.AT_MAX, "cost.maxGPUs": Code.BUDGET_GPUS, "cost.maxHourlyCost": Code.BUDGET_COST}


def ceiling_replicas(spec: LLMDeploymentSpec, variant: Variant) -> tuple[int, str]:
    """The most replicas of this variant allowed by max replicas, maxGPUs and maxHourlyCost; and which binds."""
    limit, why = spec.replicas.max, "replicas.max"
    if spec.cost.max_gpus is not None:
        by_gpus = spec.cost.max_gpus // variant.gpus_per_replica
        if by_gpus < limit:
            limit, why = by_gpus, "cost.maxGPUs"
    ceiling = spec.cost.hourly_ceiling
    price = spec.cost.price(variant.accelerator)
    if ceiling is not None and price is not None and price > 0:
        by_cost = int(ceiling // (price * variant.gpus_per_replica))
        if by_cost < limit:
            limit, why = by_cost, "cost.maxHourlyCost"
    return max(0, limit), why


def floor_replicas(spec: LLMDeploymentSpec, to_zero: bool = False) -> int:
    """The fewest replicas: replicas.min, but never 0 unless scale-to-zero is enabled and decided."""
    if to_zero and spec.scaling.scale_to_zero.enabled and spec.replicas.min == 0:
        return 0
    return max(1, spec.replicas.min)


def within_bounds(spec: LLMDeploymentSpec, variant: Variant, replicas: int, to_zero: bool = False) -> int:
    """`replicas` clamped to the floor and the ceiling (the ceiling wins)."""
    limit, _ = ceiling_replicas(spec, variant)
    return min(limit, max(floor_replicas(spec, to_zero), replicas))


@dataclass(frozen=True)
class Bounded:
    proposal: Proposal
    limit: int
    budget_limited: Condition


def ceilings(spec: LLMDeploymentSpec, variant: Variant, proposal: Proposal, to_zero: bool) -> Bounded:
    """Raise to the floor, cap at the ceiling; the ceiling always wins."""
    limit, why = ceiling_replicas(spec, variant)
    floor = floor_replicas(spec, to_zero and proposal.replicas == 0)
    out = proposal
    if out.replicas < floor:
        out = out.to(floor, Reason(Code.AT_MIN, f"raised to {floor}" + (
            " (replicas.min is 0 but scaling.scaleToZero is not enabled)" if spec.replicas.min == 0 else " (replicas.min)")))
    if out.replicas > limit:
        code = CEILING_CODES[why]
        out = out.to(limit, Reason(code, f"{out.replicas} capped at {limit} by {why}"))
        if code != Code.AT_MAX:
            return Bounded(out, limit, Condition("True", "BudgetLimited",
                                                 f"the SLO needs more than {limit} replicas of {variant.name}; capped by {why}"))
    return Bounded(out, limit, Condition("False", "WithinBudget", ""))
