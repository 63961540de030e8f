"""Step: the hard ceilings. Replicas x GPUs <= maxGPUs and hourly cost <= maxHourlyCost, always."""

from __future__ import annotations

from decimal import Decimal

from llmscale.api.models import LLMDeploymentSpec, Variant


def hourly_cost(spec: LLMDeploymentSpec, variant: Variant, replicas: int) -> Decimal | None:
    price = spec.cost.price(variant.accelerator)
    if price is None:
        return None
    return price * variant.gpus_per_replica * replicas


def ceiling_replicas(spec: LLMDeploymentSpec, variant: Variant) -> tuple[int, str | None]:
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
