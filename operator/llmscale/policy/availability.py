"""Step 1: the mode and whether the metrics can be trusted at all.

Paused decides nothing (apart from manualReplicas, held inside the ceilings); an unreachable
Prometheus means hold, bar a ceiling lowered under what runs (known without metrics: cut to it).
Either is the final answer: no later step runs."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, ScalingMode, Variant

from .ceilings import CEILING_CODES, ceiling_replicas
from .reasons import Code, Reason
from .types import Condition, Proposal, Signals, Workload

CRITICAL_SIGNALS = ("requestRate", "requestsWaiting")


@dataclass(frozen=True)
class Availability:
    final: Proposal | None  # the whole decision when nothing else may run (Paused, no metrics)
    apply: bool
    metrics: Condition | None
    unknown_critical: tuple[str, ...] = ()
    reasons: tuple[Reason, ...] = ()


def availability(spec: LLMDeploymentSpec, variant: Variant, workload: Workload, signals: Signals) -> Availability:
    current = workload.replicas
    sc = spec.scaling
    if sc.mode == ScalingMode.PAUSED:
        manual = sc.manual_replicas
        if manual is None:
            return Availability(Proposal(current, (Reason(Code.PAUSED, "scaling.mode is Paused"),)), False, None)
        limit, why = ceiling_replicas(spec, variant)
        target = min(manual, limit)
        capped = (Reason(CEILING_CODES[why], f"manualReplicas {manual} capped at {target} by {why}"),) if target < manual else ()
        return Availability(Proposal(target, (*capped, Reason(Code.PAUSED, f"scaling.mode is Paused; manualReplicas {target}"))),
                            True, None)
    if signals.unavailable is not None:
        unavailable = Condition("False", Code.METRICS_UNAVAILABLE.value, signals.unavailable)
        limit, why = ceiling_replicas(spec, variant)
        if current > limit:
            # A ceiling lowered under what runs is the user's word and known without metrics.
            return Availability(Proposal(limit, (Reason(CEILING_CODES[why], f"{current} replicas over {why}: {limit}"),
                                                 Reason(Code.METRICS_UNAVAILABLE, f"holding at {limit} replicas: {signals.unavailable}"))),
                                True, unavailable)
        return Availability(Proposal(current, (Reason(Code.METRICS_UNAVAILABLE, f"holding at {current} replicas: {signals.unavailable}"),)),
                            False, unavailable)
    critical = tuple(sorted(k for k in signals.unknown if k in CRITICAL_SIGNALS))
    if signals.unknown:
        metrics = Condition("False" if critical else "True", Code.METRICS_UNKNOWN.value,
                            "; ".join(f"{k}: {v}" for k, v in sorted(signals.unknown.items())))
    else:
        metrics = Condition("True", "MetricsRead", "all signals read")
    reasons: tuple[Reason, ...] = ()
    if critical:
        why = "; ".join(signals.unknown[k] for k in critical)
        reasons = (Reason(Code.METRICS_UNKNOWN, f"{', '.join(critical)} unknown ({why}): scale-down disabled"),)
    return Availability(None, True, metrics, critical, reasons)
