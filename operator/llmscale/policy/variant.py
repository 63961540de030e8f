"""Step 11: which pod shape to run (the vertical axis). GPUs cannot be resized in place, so a switch
replaces pods; it is made only with hysteresis: a clear saving held for a while, or when the
current shape cannot meet the SLO at all."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration

from .capacity import CapacityStep, VariantCapacity, replicas_for
from .ceilings import ceiling_replicas
from .forecast import Forecast
from .reasons import Code, Reason
from .types import History, Proposal, Signals

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


@dataclass(frozen=True)
class Shape:
    variant: Variant
    proposal: Proposal
    history: History


def variant(spec: LLMDeploymentSpec, current: Variant, signals: Signals, cap: CapacityStep, fc: Forecast,
            proposal: Proposal, history: History, now: float) -> Shape:
    if len(spec.variants) < 2 or fc.rate is None or fc.rate <= 0:
        return Shape(current, proposal, history)
    sc = spec.scaling
    plans = []
    for v in spec.variants:
        n, c = replicas_for(spec, v, signals, cap.correction if v.name == current.name else 1.0, cap.mix, fc.rate,
                            sc.target_utilization)
        p = plan_for(spec, c, n)
        if p is not None:
            plans.append(p)
    best = best_variant(plans)
    cur = next((p for p in plans if p.capacity.variant.name == current.name), None)
    hist = history
    switch = False
    if best is not None and best.capacity.variant.name != current.name:
        if cur is None or (not cur.fits_ceiling and best.fits_ceiling):
            switch = True  # the current shape cannot do the job at all: switch now
        elif best.fits_ceiling and best.cost <= (1 - SAVING_TO_SWITCH) * cur.cost:
            name = best.capacity.variant.name
            since = hist.variant_candidate_since if hist.variant_candidate == name else None
            since = since if since is not None else now
            hist = hist.with_(variant_candidate=name, variant_candidate_since=since)
            switch = now - since >= max(parse_duration(sc.scale_down.stabilization_window), parse_duration(sc.interval))
    else:
        hist = hist.with_(variant_candidate=None, variant_candidate_since=None)
    if not switch or best is None:
        return Shape(current, proposal, hist)
    target = best.capacity.variant
    limit, _ = ceiling_replicas(spec, target)
    n = min(limit, max(spec.replicas.min, best.replicas))  # the ceiling wins over replicas.min
    why = Reason(Code.VARIANT_SWITCH, f"{current.name} -> {target.name}: {best.replicas} x {target.gpus_per_replica} GPU serve "
                                      f"{fc.rate:.2f} req/s for {best.cost:.2f}/h"
                                      + (f" vs {cur.cost:.2f}/h" if cur else " (current shape cannot meet the SLO)"))
    return Shape(target, proposal.to(n, why), hist.with_(variant_candidate=None, variant_candidate_since=None))
