"""Build the status patch and the Events from a decision: pure, so it is tested without a cluster."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from llmscale.api.models import LLMDeploymentSpec
from llmscale.policy.types import Decision, Signals, Workload


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
