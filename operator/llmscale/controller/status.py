"""Build the status patch and the Events from a decision: pure, so it is tested without a cluster."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from llmscale.api.models import LLMDeploymentSpec
from llmscale.policy.rollout import gpus_held, held, shape_of
from llmscale.policy.types import Decision, PodCounts, Signals, Workload


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(existing: list[dict[str, Any]] | None, updates: Mapping[str, tuple[str, str, str]], now: float,
                     generation: int | None) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, str]]]:
    """New conditions list and the changes [(type, old status, new status, reason)] for Events.

    lastTransitionTime moves only when the status flips (Kubernetes API conventions).
    """
    by_type = {c.get("type"): dict(c) for c in (existing or []) if c.get("type")}
    changes = []
    for ctype, (status, reason, message) in updates.items():
        old = by_type.get(ctype)
        cond = {"type": ctype, "status": status, "reason": reason, "message": message[:1000],
                "observedGeneration": generation}
        if old is None or old.get("status") != status:
            cond["lastTransitionTime"] = iso(now)
            changes.append((ctype, str(old.get("status") or "") if old else "", status, reason))
        else:
            cond["lastTransitionTime"] = old.get("lastTransitionTime") or iso(now)
        by_type[ctype] = {k: v for k, v in cond.items() if v is not None}
    order = ["Ready", "Progressing", "SLOMet", "BudgetLimited", "MetricsAvailable", "SLOFeasible", "CompetingAutoscaler"]
    return sorted(by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 99, c["type"])), changes


def observed(signals: Signals, spec: LLMDeploymentSpec) -> dict[str, Any]:
    itl = spec.slo.itl_target()
    o = {
        "ttftQuantile": signals.ttft_quantile,
        "ttftPercentile": spec.slo.ttft.percentile if spec.slo.ttft else None,
        "interTokenLatencyQuantile": signals.itl_quantile,
        "interTokenLatencyPercentile": itl.percentile if itl else None,
        "e2eLatencyQuantile": signals.e2e_quantile,
        "ttftAttainment": signals.ttft_attainment,
        "itlAttainment": signals.itl_attainment,
        "requestsWaiting": signals.requests_waiting,
        "requestsRunning": signals.requests_running,
        "kvCacheUsage": signals.kv_cache_usage,
        "gpuUtilization": signals.gpu_utilization,
        "requestRate": signals.request_rate,
        "promptTokensRate": signals.prompt_tokens_rate,
        "generationTokensRate": signals.generation_tokens_rate,
        "sampledAt": iso(signals.sampled_at) if signals.sampled_at else None,
    }
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in o.items()}


def ttft_display(signals: Signals, spec: LLMDeploymentSpec) -> str:
    """TTFT for `kubectl get`, with the percentile it is taken at: "226ms@p99"."""
    if signals.ttft_quantile is None or spec.slo.ttft is None:
        return "-"
    return f"{signals.ttft_quantile * 1000:.0f}ms@p{spec.slo.ttft.percentile:g}"


def decision_status(decision: Decision, signals: Signals, workload: Workload, now: float, spec: LLMDeploymentSpec) -> dict[str, Any]:
    """The status fields a decision sets (the caller adds conditions)."""
    slo = {"True": "Met", "False": "Breached"}.get(decision.conditions.get("SLOMet", ("Unknown",))[0], "Unknown")
    est = decision.estimate
    return {
        "desiredReplicas": decision.to_replicas,
        "startingReplicas": workload.starting,
        "sloMet": slo,
        "ttftDisplay": ttft_display(signals, spec),
        "observed": observed(signals, spec),
        "estimate": {
            "capacityPerReplica": None if est.capacity_per_replica is None else round(est.capacity_per_replica, 4),
            "capacityLimitedBy": est.capacity_limited_by,
            "forecastRate": None if est.forecast_rate is None else round(est.forecast_rate, 4),
            "horizonSeconds": est.horizon_s,
            "ceilingReplicas": est.ceiling_replicas,
            "stepTimeFactor": None if est.step_time_factor is None else round(est.step_time_factor, 4),
            "shapes": [{"variant": o.variant, "replicas": o.replicas, "hourlyCost": o.hourly_cost, "fitsCeiling": o.fits_ceiling,
                        "capacityPerReplica": o.capacity_per_replica, "limitedBy": o.limited_by, "note": o.note}
                       for o in est.shapes] or None,
        },
        "lastDecision": {
            "time": iso(now),
            "action": decision.action.value,
            "from": decision.from_replicas,
            "to": decision.to_replicas,
            "variant": decision.variant,
            "applied": decision.apply,
            "reasons": [str(r) for r in decision.reasons],
        },
        "warnings": list(signals.warnings),
        "history": decision.history.to_dict(),
    }


def shape_status(spec: LLMDeploymentSpec, workload: Workload, desired: Mapping[str, int],
                 target: str | None = None, spill: str | None = None) -> dict[str, Any]:
    """Replicas, GPUs and cost over every shape (each pod at its own price), and the switch in
    progress; `target` is the shape just applied (default: the one observed), `spill` the shape
    carrying the share of target pods that wait for GPUs (shown as "<target>+<spill>")."""
    target = target or workload.variant or spec.variants[0].name
    names = [target] + sorted(v for v in set(desired) | set(workload.pods) if v != target)
    shapes: list[dict[str, Any]] = []
    for v in names:
        pods = workload.pods.get(v, PodCounts())
        if v != target and not desired.get(v) and not pods.holding_gpus:
            continue
        shapes.append({"name": v, "replicas": desired.get(v, 0), "readyReplicas": pods.ready,
                       "gpus": held(desired.get(v, 0), pods) * shape_of(spec, workload, v)[0],
                       "role": "Target" if v == target else "Spill" if v == spill else "Retiring"})
    gpus, cost = gpus_held(spec, workload, desired)
    retiring = [str(x["name"]) for x in shapes if x["role"] == "Retiring" and x["replicas"] > 0]
    spilling = [str(x["name"]) for x in shapes if x["role"] == "Spill" and x["replicas"] > 0]
    priced = all(spec.cost.price(v.accelerator) is not None for v in spec.variants)
    return {
        "variant": target,
        "replicas": sum(desired.values()),
        "readyReplicas": sum(p.ready for p in workload.pods.values()),
        "gpus": gpus,
        "hourlyCost": f"{cost:.2f}" if priced else None,
        "shape": (f"{'+'.join(retiring)}->{target}" if retiring else target) + "".join(f"+{v}" for v in spilling),
        "variants": shapes,
        "switch": {"from": "+".join(retiring), "to": target, "ready": workload.pods.get(target, PodCounts()).ready,
                   "target": desired.get(target, 0)} if retiring else None,
    }


# Status is written when a decision changes something a user reads (or a restart needs), and only
# then: a steady deployment's status stays as it is (a GitOps tool watching the object sees no churn).
# The readings that move at every decision (observed metrics, the estimate, rate samples, the
# decision's time) are those of the last write; the operator's own metrics are the live view
# (llmscale_last_decision_timestamp_seconds, ..._desired_replicas, ..._condition). Between writes
# the operator carries its history in memory (see OwnStatus); a restart continues from the last
# write, whose gaps the policy reads as time nobody saw (see policy.stabilization, policy.idleness).
# What the policy has learnt, or marks it must not lose across a restart: a change is written at once.
LEARNT = ("capacityCorrection", "plannedSpeed", "burstGaps", "burstGrowth", "burstFrom", "burstSince", "quietSince", "lullPeak", "plannedMix", "variantCandidate",
          "variantCandidateSince", "panicUntil", "idleSince", "lastScaleAt", "observingSince", "startedShapes",
          "spillShape")
USER_FIELDS = ("desiredReplicas", "startingReplicas", "sloMet", "warnings", "variant", "replicas", "readyReplicas", "gpus",
               "hourlyCost", "shape", "variants", "switch", "observedGeneration", "coldStartSeconds", "readyPods")


def user_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """What a user reads in status (kubectl get and describe, Events, conditions) and what a restart
    must not lose, without the readings that move at every decision: two statuses with the same
    view differ only in numbers that are as recent as the last write."""
    def part(key: str) -> Mapping[str, Any]:
        v = status.get(key)
        return v if isinstance(v, Mapping) else {}

    last, hist, est = part("lastDecision"), part("history"), part("estimate")
    conds = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    return {
        **{k: status.get(k) for k in USER_FIELDS},
        "conditions": sorted((str(c.get("type")), str(c.get("status")), str(c.get("reason"))) for c in conds),
        # Why a change was made is read; why nothing changed moves with the readings (a steady load's
        # burst memory holds at one decision and not at the next) and is not written; a hold a user
        # must see is a condition.
        "lastDecision": (last.get("action"), last.get("from"), last.get("to"), last.get("variant"), last.get("applied"),
                         () if last.get("action") == "NoChange" else tuple(str(r).split(":", 1)[0] for r in last.get("reasons") or [])),
        "learnt": {k: hist.get(k) for k in LEARNT},
        # The burst memory: a restart must not forget a burst (see _differs; not compared as is).
        "samples": _samples(hist.get("rateSamples")),
        "ceilingReplicas": est.get("ceilingReplicas"),
    }


PEAK_RISE = 1.5  # a burst memory's peak this much above what a restart would find is written at once


def _differs(view: Mapping[str, Any], written: Mapping[str, Any]) -> bool:
    """Whether a user reads something new, or a restart would forget a burst. The burst memory
    counts when its peak is 50 % above the peak a restart would find now: the written samples that
    are still within the memory's span (no older than its oldest sample). A steady load's highest
    window creeping up by chance is no burst (seen in CI: a steady 2 req/s wrote at four decisions
    of a minute), and a peak falling (an old burst leaving the memory) needs no write: a restart
    drops the written samples by their age just as the memory did."""
    if {k: v for k, v in view.items() if k != "samples"} != {k: v for k, v in written.items() if k != "samples"}:
        return True
    now_samples, written_samples = view.get("samples") or (), written.get("samples") or ()
    peak = max((x for _, x in now_samples), default=0.0)
    if peak <= 0:
        return False  # no load in the memory: a restart finds at least as much
    since = min(t for t, _ in now_samples)
    # What a restart would know: the written samples still in the span. Once every one has aged
    # out, the memory's lowest sample stands in for them: a steady load is no burst to keep (one
    # write at most per span when its windows vary by half), a burst over it is.
    kept = [x for t, x in written_samples if t >= since]
    known = max(kept) if kept else min(x for _, x in now_samples)
    return peak >= PEAK_RISE * known


def _samples(samples: Any) -> tuple[tuple[float, float], ...]:
    """The burst memory's (time, rate) samples that can be read (finite, not negative)."""
    out = []
    for pair in samples if isinstance(samples, list | tuple) else ():
        try:
            t, x = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(t) and math.isfinite(x) and x >= 0:
            out.append((t, x))
    return tuple(out)


def needs_write(written_view: Mapping[str, Any] | None, view: Mapping[str, Any]) -> str | None:
    """Why this decision's status is written ("first": nothing written by this operator yet,
    "changed": something a user reads), or None."""
    if written_view is None:
        return "first"
    return "changed" if _differs(view, written_view) else None


def ready_pods_seen(status: Mapping[str, Any]) -> list[str]:
    """The pods the operator has seen Ready, as it wrote them in status (`readyPods`): a pod among
    them that is not Ready now had a blip or a crash, not a start. Anything else there reads as none."""
    seen = status.get("readyPods")
    return [n for n in seen if isinstance(n, str)] if isinstance(seen, list) else []
