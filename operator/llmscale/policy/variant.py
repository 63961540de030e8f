"""Step: which pod shape to run (the vertical axis). GPUs cannot be resized in place, so a switch
replaces pods; it is made only with hysteresis: a clear saving held for a while, or when the
current shape cannot meet the SLO at all."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec

from .capacity import VariantCapacity
from .ceilings import ceiling_replicas

SAVING_TO_SWITCH = 0.2  # a switch must save at least this share of the hourly cost


@dataclass(frozen=True)
class VariantPlan:
    capacity: VariantCapacity
    replicas: int
    cost: float  # per hour, or GPU count when unpriced
    fits_ceiling: bool


def plan_for(spec: LLMDeploymentSpec, cap: VariantCapacity, replicas: int) -> VariantPlan | None:
    """What running `replicas` of a variant (the count its pooled capacity needs) costs."""
    if not cap.feasible:
        return None
    n = max(spec.replicas.min, 1, replicas)
    limit, _ = ceiling_replicas(spec, cap.variant)
    price = spec.cost.price(cap.variant.accelerator)
    unit = float(price) if price is not None else 1.0
    return VariantPlan(cap, n, n * cap.variant.gpus_per_replica * unit, n <= limit)


def best_variant(plans: list[VariantPlan]) -> VariantPlan | None:
    fitting = [p for p in plans if p.fits_ceiling]
    pool = fitting or plans
    if not pool:
        return None
    # Cheapest; ties go to the earlier (preferred) variant, since sorted() is stable.
    return sorted(pool, key=lambda p: (not p.fits_ceiling, p.cost))[0]
