"""The autoscalers a platform team would otherwise run, each from its documented algorithm and
defaults (the source is named in each docstring), so that the twin compares llmscale with them on
the same traffic, the same replicas and the same cold starts.

Every baseline exposes one headroom knob (`knob`, default = the documented default): the number a
user would turn to trade GPU-hours for attainment. `bench/frontier.py` sweeps it.

Where a real system reads a signal the twin does not have, the docstring says what stands in.
"""

from __future__ import annotations

import math
from collections import deque

from llmscale.api.models import LLMDeploymentSpec
from llmscale.policy.ceilings import ceiling_replicas

from .traffic import Trace
from .twin import Policy, RunResult, Target, Twin, View


def clamp(spec: LLMDeploymentSpec, variant_name: str, n: int) -> Target:
    """Within replicas.min and the ceilings (maxGPUs, maxHourlyCost): every policy gets the same
    budget cap (Dynamo's max_gpu_budget, the HPA's maxReplicas)."""
    limit, _ = ceiling_replicas(spec, spec.variant(variant_name))
    lo = spec.replicas.min
    return Target(max(lo, min(n, limit)) if limit >= lo else limit, variant_name, capped=n > limit)


class Baseline(Policy):
    """A policy with one headroom knob."""

    knob_name = "knob"
    default_knob = 1.0

    def __init__(self, knob: float | None = None) -> None:
        self.knob = self.default_knob if knob is None else knob
        self.variant = ""

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        # The shape of the warm fleet the twin hands every adaptive policy (the cheapest for the
        # first minute); the baselines keep it, they know one shape.
        self.variant = self.initial_variant or spec.variants[0].name
        return Target(max(1, spec.replicas.min, self.initial or 1), self.variant)


class HPAAlgorithm(Baseline):
    """The Kubernetes HPA algorithm (kubernetes/kubernetes pkg/controller/podautoscaler, defaults of
    autoscaling/v2 `behavior`): a 10 % tolerance on the usage ratio, 300 s scale-down stabilization
    (the highest recommendation of the window wins), scale-up limited to max(4 pods, 100 %) per
    15 s sync. Subclasses say what the desired count is."""

    tolerance = 0.10
    down_window_s = 300.0
    sync_s = 15.0

    def __init__(self, knob: float | None = None) -> None:
        super().__init__(knob)
        self.recs: list[tuple[float, int]] = []

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return self.sync_s

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
        return clamp(view.spec, self.variant, max(1, desired))


class HPAGPUUtilPolicy(HPAAlgorithm):
    """The HPA algorithm above on DCGM GPU utilisation: `DCGM_FI_DEV_GPU_UTIL` from NVIDIA's
    dcgm-exporter, averaged per pod and served to the HPA as a Pods metric by a metrics adapter
    (prometheus-adapter; GKE's guide uses its Custom Metrics Stackdriver Adapter). GKE's "Best
    practices for autoscaling LLM inference workloads with GPUs"
    (cloud.google.com/kubernetes-engine/docs/best-practices/machine-learning/inference/autoscaling)
    lists the metric and warns that it is a duty cycle: busy with one request reads as busy. We
    found no vendor default target for it (OpenShift's Custom Metrics Autoscaler GPU example,
    openshift-docs modules/nodes-cma-autoscaling-custom-trigger-prom-gpu.adoc, uses 90 on a sum):
    70 % is our assumption, and `bench/frontier.py` sweeps 35-100 %. The twin's utilisation is the
    share of GPU-seconds in which an engine had work (`sim.promstore`), the same duty cycle. Knob:
    the utilisation target."""

    name = "hpa-gpu-util"
    knob_name = "target utilisation"
    default_knob = 0.70

    def desired(self, view: View) -> int | None:
        w, util = view.workload, view.signals.gpu_utilization
        if util is None or w.ready == 0:
            return None
        ratio = util / self.knob
        return w.replicas if abs(ratio - 1) <= self.tolerance else math.ceil(w.ready * ratio)


class KEDAQueuePolicy(HPAAlgorithm):
    """KEDA's Prometheus scaler on the requests waiting, with the settings of the vLLM
    production-stack tutorial (vllm-project/production-stack, docs/source/use_cases/autoscaling-keda.rst:
    `threshold: '5'`, `pollingInterval: 15`, `cooldownPeriod: 360`), through the HPA that KEDA
    creates. The tutorial's query is a bare `vllm:num_requests_waiting`, one series per pod, which
    KEDA's Prometheus scaler refuses (it wants one element): this models the working form,
    `sum(vllm:num_requests_waiting)`. The trigger's default metric type is AverageValue, so the HPA
    wants ceil(waiting in all pods / 5) replicas, with the HPA's tolerance, stabilization and step
    limits above. From one replica up the HPA reads the trigger at each 15 s sync (KEDA queries
    Prometheus then unless `useCachedMetrics` is set, which caches for the polling interval, 15 s
    here too); the polling interval and the cooldown otherwise govern only the step to and from
    zero, which this baseline never takes (replicas.min >= 1). Knob: the threshold."""

    name = "keda-queue"
    knob_name = "waiting per replica"
    default_knob = 5.0

    def desired(self, view: View) -> int | None:
        current, waiting = view.workload.replicas, view.signals.requests_waiting
        if waiting is None:
            return None  # KEDA's fallback is off by default
        if current > 0 and abs(waiting / (self.knob * current) - 1) <= self.tolerance:
            return current
        return math.ceil(waiting / self.knob)


class KPAPolicy(Baseline):
    """Knative's KPA (knative/serving pkg/autoscaler/scaling/autoscaler.go; `config-autoscaler`
    defaults): target concurrency per pod 100 x 70 % = 70; a 60 s stable and a 6 s panic window
    over the observed concurrency, ticked every 2 s; desired = ceil(average / target) for each
    window, clamped to [ready / 2, ready x 1000]; panic when the panic window's desired count is
    at least 200 % of the Ready pods, held for one stable window after the last such tick, and no
    scale-down while panicking. Knative's queue-proxy reports concurrency every second: the twin
    gives the requests in flight at each tick. In panic the count is the larger of the two windows'
    and never below the most asked for in this panic; panic ends once a stable window has passed
    since the last tick over the threshold. The activator (requests buffered at zero) is not
    modelled; replicas.min is 1. Knob: the target concurrency per pod."""

    name = "kpa"
    knob_name = "target concurrency"
    default_knob = 70.0
    stable_s = 60.0
    panic_s = 6.0
    tick_s = 2.0
    panic_threshold = 2.0
    max_up_rate = 1000.0
    max_down_rate = 2.0

    def __init__(self, knob: float | None = None) -> None:
        super().__init__(knob)
        self.seen: deque[tuple[float, float]] = deque()
        self.panic_since: float | None = None
        self.max_panic = 0

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return self.tick_s

    def decide(self, view: View) -> Target:
        now = view.now
        self.seen.append((now, view.concurrency))
        while self.seen and now - self.seen[0][0] > self.stable_s:
            self.seen.popleft()
        stable = sum(c for _, c in self.seen) / len(self.seen)
        recent = [c for t, c in self.seen if now - t < self.panic_s]
        panic = sum(recent) / len(recent)
        ready = max(1, view.workload.ready)
        lo, hi = math.floor(ready / self.max_down_rate), math.ceil(ready * self.max_up_rate)
        want_stable = min(hi, max(lo, math.ceil(stable / self.knob)))
        want_panic = min(hi, max(lo, math.ceil(panic / self.knob)))
        if want_panic / ready >= self.panic_threshold:
            self.panic_since = now  # enter, or extend, panic
        elif self.panic_since is not None and now - self.panic_since > self.stable_s:
            self.panic_since, self.max_panic = None, 0
        if self.panic_since is not None:
            # Knative: the larger of the two windows' counts, and never below the most asked for in
            # this panic (no scale-down while panicking).
            desired = max(want_stable, want_panic, self.max_panic)
            self.max_panic = desired
        else:
            desired = want_stable
        return clamp(view.spec, self.variant, max(1, desired))


class LLMDSLOPolicy(Baseline):
    """llm-d's SLO-aware autoscaling path (llm-d/llm-d guides/workload-autoscaling/
    README.slo-aware.md, as of commit d38c9f0): KEDA driven by the router's latency signal
    s = min(2.0, max(p90 TTFT / TTFT target, p90 TPOT / TPOT target)), averaged over 45 s. Above
    0.55: n + ceil(n (s c / 0.55 - 1)) replicas, with the in-flight credit c = ready / provisioned
    (1 when none or all are Ready), so pods still starting are not asked for twice; below 0.40:
    n - floor(n (1 - s / 0.40)), uncredited; in between, hold. The output reaches the HPA as an
    external metric with an AverageValue target of 1, so its 10 % tolerance holds d within 10 % of
    n. The HPA behaviour the guide states
    (its step 3): up by max(100 %, 4 pods) per 60 s with a 30 s stabilization window (the lowest
    recommendation in it), down by 1 pod per 120 s with a 180 s window (the highest), as the
    HPA's stabilizeRecommendationWithBehaviors clamps today's count between the two. llm-d's
    router predicts each request's p90 latency; the twin observes it from the vLLM histograms over
    the last minute (a lagging stand-in); a window without requests reads as 0 (KEDA's
    `ignoreNullValues`, on by default). The token-backlog signal of the same guide is not
    modelled. Knob: a factor on both thresholds (lower = more headroom)."""

    name = "llmd-slo"
    knob_name = "threshold factor"
    default_knob = 1.0
    up_at, down_at = 0.55, 0.40
    average_s = 45.0
    sync_s = 15.0
    up_period_s, down_period_s = 60.0, 120.0
    up_window_s, down_window_s = 30.0, 180.0

    def __init__(self, knob: float | None = None) -> None:
        super().__init__(knob)
        self.samples: deque[tuple[float, float]] = deque()
        self.ups: list[tuple[float, int]] = []  # (time, replicas before) of each scale-up
        self.last_down: float | None = None
        self.recs: list[tuple[float, int]] = []  # the unstabilized recommendations, as the HPA keeps them

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return self.sync_s

    def signal(self, view: View) -> float | None:
        if view.prom is None:
            return None
        ttft90, itl90 = view.prom.quantiles(view.now, 60.0, 0.90)
        if ttft90 is None and itl90 is None:
            return 0.0  # no requests in the window: KEDA's Prometheus scaler reads an empty result as 0
        slo, ratios = view.spec.slo, []
        if slo.ttft and ttft90 is not None:
            ratios.append(ttft90 / slo.ttft.seconds)
        itl = slo.itl_target()
        if itl and itl90 is not None:
            ratios.append(itl90 / itl.seconds)
        return min(2.0, max(ratios)) if ratios else None

    def decide(self, view: View) -> Target:
        now, w = view.now, view.workload
        current = w.replicas
        s = self.signal(view)
        if s is not None:
            self.samples.append((now, s))
        while self.samples and now - self.samples[0][0] > self.average_s:
            self.samples.popleft()
        if not self.samples:
            return Target(current, self.variant)  # no metric: hold
        avg = sum(v for _, v in self.samples) / len(self.samples)
        up, down = self.up_at * self.knob, self.down_at * self.knob
        n = max(current, 1)
        if avg > up:
            credit = w.ready / n if 0 < w.ready < n else 1.0
            # As written: the credit may bring the ask under n while pods warm; the HPA's windows
            # (the highest recommendation of the last 180 s) then usually hold the count.
            desired = n + math.ceil(n * (avg * credit / up - 1) - 1e-9)
        elif avg < down:
            desired = n - math.floor(n * (1 - avg / down) + 1e-9)
        else:
            desired = current
        # The formula's output reaches the HPA as an external metric with an AverageValue target of
        # 1: the HPA keeps today's count while d / n is within its 10 % tolerance.
        if abs(desired / n - 1) <= HPAAlgorithm.tolerance:
            desired = current
        # The HPA's stabilization: today's count clamped between the lowest recommendation of the
        # up window and the highest of the down window (this one included).
        self.recs = [(t, r) for t, r in self.recs if now - t < max(self.up_window_s, self.down_window_s)]
        up_rec = min([r for t, r in self.recs if now - t < self.up_window_s] + [desired])
        down_rec = max([r for t, r in self.recs if now - t < self.down_window_s] + [desired])
        self.recs.append((now, desired))
        desired = min(max(current, up_rec), down_rec)
        if desired < current:
            if self.last_down is not None and now - self.last_down < self.down_period_s:
                desired = current
            else:
                desired = max(desired, current - 1)
                if desired < current:
                    self.last_down = now
        elif desired > current:
            self.ups = [(t, r) for t, r in self.ups if now - t < self.up_period_s]
            base = min([r for _, r in self.ups] + [current])
            desired = min(desired, max(2 * base, base + 4))
            if desired > current:
                self.ups.append((now, current))
        return clamp(view.spec, self.variant, max(1, desired))


class DynamoLoadPolicy(Baseline):
    """NVIDIA Dynamo's load-based planner (ai-dynamo/dynamo, docs/components/planner and the
    planner's `load_plan_adjustment`): every `load_adjustment_interval` (5 s), an online linear
    regression of latency on the load per worker gives the load at which the predicted latency
    meets the SLA target; when every worker is above it, one worker more; when every worker is
    below it x (n - 1) / n x `load_scaling_down_sensitivity` (80 %), one fewer (what n - 1 workers
    would carry, with margin); at least `load_min_observations` (5) observations first, nothing
    while a previous scaling is in progress (a worker still starting), the GPU budget as a cap.
    One worker per adjustment is Dynamo's rule against over-compensation; with the wait for a
    scaling to finish it adds about one worker per cold start.
    **Stand-ins:** Dynamo regresses per-iteration engine metrics (active prefill tokens against
    TTFT, decode KV load against ITL) and compares each worker's own load; the twin regresses the
    median TTFT and inter-token latency of the last minute on the requests in flight per Ready
    replica averaged over the same minute, and compares the mean per Ready replica (the twin's
    router keeps the workers' loads close to it). Knob: a factor on the load per worker it allows
    (lower = more headroom)."""

    name = "dynamo-load"
    knob_name = "load factor"
    default_knob = 1.0
    tick_s = 5.0
    min_observations = 5
    down_sensitivity = 0.80
    kept = 120  # observations in the regression (10 minutes)

    def __init__(self, knob: float | None = None) -> None:
        super().__init__(knob)
        self.obs: deque[tuple[float, float, float]] = deque(maxlen=self.kept)  # (load per worker, ttft, itl)
        self.loads: deque[tuple[float, float]] = deque()  # (time, in flight per Ready replica)

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return self.tick_s

    @staticmethod
    def fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        var = sum((x - mx) ** 2 for x in xs)
        if var <= 1e-12:
            return None
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return my - b * mx, b

    def max_load(self, view: View) -> float | None:
        """The load per worker at which the fitted latency reaches the first target."""
        slo = view.spec.slo
        itl = slo.itl_target()
        xs = [o[0] for o in self.obs]
        limits = []
        for i, target in ((1, slo.ttft.seconds if slo.ttft else None), (2, itl.seconds if itl else None)):
            if target is None:
                continue
            line = self.fit(xs, [o[i] for o in self.obs])
            if line is None or line[1] <= 0:
                continue  # latency does not grow with load in what was seen: no limit learnt
            limits.append((target - line[0]) / line[1])
        return max(0.0, min(limits)) if limits else None

    def decide(self, view: View) -> Target:
        w = view.workload
        current = w.replicas
        if w.ready > 0:
            self.loads.append((view.now, view.concurrency / w.ready))
        while self.loads and view.now - self.loads[0][0] > 60.0:
            self.loads.popleft()
        if view.prom is not None and self.loads:
            ttft50, itl50 = view.prom.quantiles(view.now, 60.0, 0.5)
            if ttft50 is not None and itl50 is not None:
                self.obs.append((sum(x for _, x in self.loads) / len(self.loads), ttft50, itl50))
        if len(self.obs) < self.min_observations or w.starting > 0:
            return Target(current, self.variant)
        limit = self.max_load(view)
        if limit is None or limit <= 0:
            return Target(current, self.variant)
        target = limit * self.knob  # load per worker at the SLA
        load = view.concurrency / w.ready if w.ready > 0 else math.inf
        if load > target:
            return clamp(view.spec, self.variant, current + 1)
        if current > 1 and load < target * (current - 1) / current * self.down_sensitivity:
            return clamp(view.spec, self.variant, current - 1)
        return Target(current, self.variant)


def slo_met(spec: LLMDeploymentSpec, r: RunResult) -> bool:
    """The run meets the SLO as written: the percentile's share of requests within each target."""
    ttft, itl = spec.slo.ttft, spec.slo.itl_target()
    return (ttft is None or r.ttft_attainment >= ttft.percentile / 100) and (itl is None or r.itl_attainment >= itl.percentile / 100)


class Fixed(Policy):
    name = "fixed"

    def __init__(self, n: int, variant: str):
        self.target = Target(n, variant)

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        return self.target

    def decide(self, view: View) -> Target:
        return self.target


class StaticPeakPolicy(Baseline):
    """The fewest constant replicas that meet the SLO over the whole trace, found offline and
    pre-warmed: what a team that sized its pool in hindsight runs. Knob: replicas added (or taken)."""

    name = "static-peak"
    knob_name = "replicas over the sizing"
    default_knob = 0.0

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        v = spec.variants[0].name
        limit, _ = ceiling_replicas(spec, spec.variant(v))
        top = max(1, limit)
        if not slo_met(spec, Twin(spec, trace, Fixed(top, v), cold_start).run()):
            self.target = clamp(spec, v, top + 1)  # even the ceiling misses: run at it, report capped
            return self.target
        # Upward, one count at a time, from the floor: the first that meets the SLO is the fewest,
        # whether or not attainment grows with every replica added (a bisection assumes it does).
        # An answer of n costs n replays, each longer as the fleet grows (a second or two for the
        # benchmarks' fleets of up to a dozen replicas).
        n = next((n for n in range(min(max(1, spec.replicas.min), top), top + 1)
                  if n == top or slo_met(spec, Twin(spec, trace, Fixed(n, v), cold_start).run())), top)
        self.target = clamp(spec, v, max(1, n + round(self.knob)))
        return self.target

    def decide(self, view: View) -> Target:
        return self.target
