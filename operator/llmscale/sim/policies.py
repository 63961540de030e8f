"""Policies the twin can run: llmscale's own core and honest baselines at their documented defaults.

- llmscale      the operator's decision core (llmscale.policy.decide), history carried between calls
- hpa-gpu-util  Kubernetes HPA on DCGM GPU utilisation: target 70 %, 15 s sync, 10 % tolerance,
                300 s scale-down stabilization, default scale-up rate (max of 4 pods or 100 % per 15 s)
- keda-queue    KEDA Prometheus trigger on vllm:num_requests_waiting (threshold 5 per replica,
                AverageValue), 30 s polling; the HPA it creates keeps 300 s scale-down stabilization
- static-peak   the fewest constant replicas that meet the SLO over the trace (found offline), pre-warmed
- oracle        knows the future: sizes every moment for the load it will see before a pod started
                now is Ready, with the smallest headroom that meets the SLO (found offline over the
                trace); the lower bound of cost for the SLO
"""

from __future__ import annotations

import math

from llmscale.api.models import LLMDeploymentSpec
from llmscale.perf.capacity import simulated_capacity
from llmscale.perf.hardware import server_profile
from llmscale.policy import History, decide
from llmscale.policy.ceilings import ceiling_replicas

from .traffic import Trace
from .twin import Policy, RunResult, Target, Twin, View


def _clamp(spec: LLMDeploymentSpec, variant_name: str, n: int) -> Target:
    limit, _ = ceiling_replicas(spec, spec.variant(variant_name))
    lo = spec.replicas.min
    return Target(max(lo, min(n, limit)) if limit >= lo else limit, variant_name, capped=n > limit)


def _trace_capacity(spec: LLMDeploymentSpec, trace: Trace, variant_name: str) -> float:
    v = spec.variant(variant_name)
    arr = trace.arrivals or []
    mean_in = sum(a.input_tokens for a in arr) / len(arr) if arr else 1024
    mean_out = sum(a.output_tokens for a in arr) / len(arr) if arr else 256
    itl = spec.slo.itl_target()
    ttft = spec.slo.ttft
    cap = simulated_capacity(server_profile(spec.model, v.accelerator, v.gpus_per_replica), mean_in, mean_out,
                             itl.seconds if itl else None, ttft.seconds if ttft else None,
                             itl_pct=itl.percentile if itl else 95.0, ttft_pct=ttft.percentile if ttft else 95.0)
    return cap.requests_per_s


class LLMScalePolicy(Policy):
    name = "llmscale"

    def __init__(self) -> None:
        self.history = History()
        self.variant: str | None = None

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        self.variant = spec.variants[0].name
        return Target(max(1, spec.replicas.min, self.initial or 1), self.variant)

    def decide(self, view: View) -> Target:
        d = decide(view.spec, view.workload, view.signals, self.history, view.now)
        self.history = d.history
        capped = any(r.code.value.startswith("BudgetLimited") for r in d.reasons)
        if not d.apply:
            return Target(view.workload.replicas, view.workload.variant or view.spec.variants[0].name, capped)
        return Target(d.to_replicas, d.variant, capped)


class _HPAAlgorithm(Policy):
    """The Kubernetes HPA algorithm (pkg/controller/podautoscaler) at its defaults: a 10 % tolerance
    on the usage ratio, 300 s scale-down stabilization (highest recommendation wins), and scale-up
    limited to max(4 pods, 100 %) per sync. Subclasses say what the desired count is."""

    tolerance = 0.10
    down_window_s = 300.0
    sync_s = 15.0

    def __init__(self) -> None:
        self.recs: list[tuple[float, int]] = []
        self.variant = ""

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return self.sync_s

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        self.variant = spec.variants[0].name
        return Target(max(1, spec.replicas.min, self.initial or 1), self.variant)

    def desired(self, view: View) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    def decide(self, view: View) -> Target:
        current = view.workload.replicas
        desired = self.desired(view)
        if desired is None:
            return Target(current, self.variant)  # no metric: the HPA keeps the count
        self.recs = [(t, r) for t, r in self.recs if view.now - t <= self.down_window_s] + [(view.now, desired)]
        if desired < current:
            desired = min(current, max(r for _, r in self.recs))
        if desired > current:
            desired = min(desired, max(current + 4, 2 * current))
        return _clamp(view.spec, self.variant, max(1, desired))


class HPAGPUUtilPolicy(_HPAAlgorithm):
    """HPA on DCGM GPU utilisation (an external metric through an adapter), target 70 %."""

    name = "hpa-gpu-util"
    target_util = 0.70

    def desired(self, view: View) -> int | None:
        w, util = view.workload, view.signals.gpu_utilization
        if util is None or w.ready == 0:
            return None
        ratio = util / self.target_util
        return w.replicas if abs(ratio - 1) <= self.tolerance else math.ceil(w.ready * ratio)


class KEDAQueuePolicy(_HPAAlgorithm):
    """KEDA's Prometheus scaler on vllm:num_requests_waiting (AverageValue threshold 5 per replica,
    30 s polling), through the HPA it creates."""

    name = "keda-queue"
    threshold = 5.0
    sync_s = 30.0

    def desired(self, view: View) -> int | None:
        current, waiting = view.workload.replicas, view.signals.requests_waiting
        if waiting is None:
            return None  # KEDA's fallback is off by default
        if current > 0 and abs(waiting / (self.threshold * current) - 1) <= self.tolerance:
            return current
        return math.ceil(waiting / self.threshold)


def _slo_met(spec: LLMDeploymentSpec, r: RunResult) -> bool:
    """The run meets the SLO as written: the percentile's share of requests within each target."""
    ttft, itl = spec.slo.ttft, spec.slo.itl_target()
    return (ttft is None or r.ttft_attainment >= ttft.percentile / 100) and (itl is None or r.itl_attainment >= itl.percentile / 100)


class _Fixed(Policy):
    name = "fixed"

    def __init__(self, n: int, variant: str):
        self.target = Target(n, variant)

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        return self.target

    def decide(self, view: View) -> Target:
        return self.target


class StaticPeakPolicy(Policy):
    """The fewest constant replicas that meet the SLO over the whole trace, found offline (pre-warmed)."""

    name = "static-peak"

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        v = spec.variants[0].name
        limit, _ = ceiling_replicas(spec, spec.variant(v))
        lo, hi = max(1, spec.replicas.min), max(1, limit)
        if not _slo_met(spec, Twin(spec, trace, _Fixed(hi, v), cold_start).run()):
            self.target = _clamp(spec, v, hi + 1)  # even the ceiling misses: run at it, report capped
            return self.target
        while lo < hi:  # attainment grows with replicas: bisect for the smallest that meets the SLO
            mid = (lo + hi) // 2
            if _slo_met(spec, Twin(spec, trace, _Fixed(mid, v), cold_start).run()):
                hi = mid
            else:
                lo = mid + 1
        self.target = _clamp(spec, v, hi)
        return self.target

    def decide(self, view: View) -> Target:
        return self.target


class OraclePolicy(Policy):
    """Knows the future: at each moment, replicas for the peak 30 s rate it will see before a pod
    started now could be Ready, with the smallest capacity headroom (found offline over the whole
    trace) that meets the SLO. The lower bound of cost for the SLO among look-ahead policies."""

    name = "oracle"

    def __init__(self, headroom: float | None = None):
        self.headroom = headroom

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        self.variant = spec.variants[0].name
        self.cap = _trace_capacity(spec, trace, self.variant) or 1e-9
        self.lead = cold_start.get(self.variant, 90.0) + 15.0
        self.spec = spec
        bins: dict[int, int] = {}
        for a in trace.arrivals:
            bins[int(a.t // 30)] = bins.get(int(a.t // 30), 0) + 1
        self.rate = bins
        if self.headroom is None:
            lo, hi = 0.3, 1.0
            while hi < 64 and not _slo_met(spec, Twin(spec, trace, OraclePolicy(hi), cold_start).run()):
                lo, hi = hi, hi * 2
            for _ in range(7):
                mid = (lo + hi) / 2
                if _slo_met(spec, Twin(spec, trace, OraclePolicy(mid), cold_start).run()):
                    hi = mid
                else:
                    lo = mid
            self.headroom = hi
        return self._need(0.0)

    def _need(self, now: float) -> Target:
        first, last = int(now // 30), int((now + self.lead + 30) // 30)
        peak = max((self.rate.get(b, 0) for b in range(first, last + 1)), default=0) / 30.0
        return _clamp(self.spec, self.variant, max(1, math.ceil(peak * (self.headroom or 1.0) / self.cap)))

    def decide(self, view: View) -> Target:
        return self._need(view.now)


POLICIES = {
    p.name: p
    for p in (LLMScalePolicy, HPAGPUUtilPolicy, KEDAQueuePolicy, StaticPeakPolicy, OraclePolicy)
}


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name]()
