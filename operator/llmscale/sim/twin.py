"""The twin: a virtual-time fleet of simulated vLLM replicas driven by a trace and a policy.

Pods start (cold start), become Ready, take traffic routed as spec.routing says (a Service: each
request to a Ready pod at random; a load-aware gateway: to the one with the fewest outstanding),
drain when removed, and hold GPUs from creation until drained; a finite GPU pool per accelerator
leaves pods Pending when it runs out. Every request is accounted for.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration
from llmscale.perf import Engine, Request
from llmscale.perf.engine import Finished
from llmscale.policy.capacity import max_model_len, replica_profile
from llmscale.policy.ceilings import ceiling_replicas
from llmscale.policy.types import PodCounts, Signals, Workload

from .promstore import PromStore, Sample
from .traffic import Trace

SCRAPE_INTERVAL_S = 15.0
TIMELINE_BIN_S = 15.0
SETTLE_S = 600.0  # a second view of attainment leaves out the first ten minutes, when a policy has no history yet


def has_settled_view(trace: Trace) -> bool:
    """Whether the view from SETTLE_S on is worth showing: it counts at least five minutes."""
    return trace.duration >= SETTLE_S + 300.0


@dataclass
class Pod:
    id: int
    variant: Variant
    created: float
    ready_at: float | None = None  # set when scheduled: created (or GPUs freed) + cold start
    ready: bool = False
    draining: bool = False
    engine: Engine | None = None
    last_counts: tuple[float, ...] = ()
    last_ttft: list[int] = field(default_factory=list)
    last_itl: list[int] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return self.variant.gpus_per_replica


@dataclass(frozen=True)
class Target:
    replicas: int
    variant: str
    capped: bool = False  # the policy wanted more than a ceiling allowed
    # Replicas of each variant's Deployment, applied exactly as the operator applies them (the
    # policy holds the ceilings); None: the twin moves `replicas` of `variant` make-before-break
    # within the ceilings itself (the baselines, which know one shape).
    by_variant: dict[str, int] | None = None
    failed: tuple[str, str] | None = None  # (variant, why): the policy rolled a switch back


@dataclass
class View:
    """What a policy sees at a decision: the same inputs the operator gathers."""

    spec: LLMDeploymentSpec
    workload: Workload
    signals: Signals
    now: float
    # For baselines whose real systems read more than the operator does: the requests in flight
    # right now (Knative's queue-proxy reports concurrency every second), and the scraped series
    # (other percentiles than the SLO's, e.g. llm-d's p90).
    concurrency: float = 0.0
    prom: PromStore | None = None


class Policy:
    name = "policy"
    initial: int | None = None  # the warm fleet the twin hands adaptive policies at t=0
    initial_variant: str | None = None  # and its shape (the cheapest for the first minute)

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return parse_duration(spec.scaling.interval)

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        return Target(max(1, spec.replicas.min), spec.variants[0].name)

    def decide(self, view: View) -> Target:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class RunResult:
    policy: str
    trace: str
    requests: int
    ttft_attainment: float
    itl_attainment: float
    joint_attainment: float  # requests within every SLO target (TTFT and inter-token) at once
    settled_ttft_attainment: float  # TTFT attainment of the requests after the first SETTLE_S (history learnt)
    settled_joint_attainment: float  # joint attainment of the same requests
    settled_requests: int  # requests arriving after the first SETTLE_S
    settled_gpu_hours: float  # GPU-hours held after the first SETTLE_S
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    itl_p95_s: float
    gpu_hours: float
    cost: float | None
    scale_actions: int
    ceiling_s: float
    rejected: int
    peak_gpus: int = 0  # the most GPUs held at any instant (starting, Ready and draining pods)
    peak_hourly_cost: float | None = None  # the same in money per hour, each pod at its own variant's price
    variants: dict[str, float] = field(default_factory=dict)  # GPU-hours per shape
    timeline: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "timeline"}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def warm_start(spec: LLMDeploymentSpec, trace: Trace) -> int:
    """Replicas for the trace's first minute at the SLO: every adaptive policy starts from the
    same warm fleet, as it would when it takes over a running service."""
    return warm_fleet(spec, trace)[1]


def warm_fleet(spec: LLMDeploymentSpec, trace: Trace) -> tuple[str, int]:
    """The shape llmscale's own plan finds cheapest for the trace's first minute, and the replicas
    of that shape for it at the SLO (the first variant when none is priced or the minute is empty):
    the fewest whose simulated capacity, pooled when a load-aware gateway routes, carries the
    minute's mean rate."""
    from llmscale.perf.capacity import simulated_capacity
    from llmscale.policy.capacity import replicas_for
    from llmscale.policy.types import Signals

    first = [a for a in trace.arrivals if a.t < 60.0]
    if not first:
        return spec.variants[0].name, max(1, spec.replicas.min)
    mean_in = sum(a.input_tokens for a in first) / len(first)
    mean_out = sum(a.output_tokens for a in first) / len(first)
    chosen = spec.variants[0]
    if len(spec.variants) > 1 and all(spec.cost.price(v.accelerator) is not None for v in spec.variants):
        best: tuple[float, int] | None = None
        for i, v in enumerate(spec.variants):
            n, cap = replicas_for(spec, v, Signals(), 1.0, (mean_in, mean_out), len(first) / 60.0, spec.scaling.target_utilization)
            limit, _ = ceiling_replicas(spec, v)
            cost = n * v.gpus_per_replica * float(spec.cost.price(v.accelerator) or 0)
            key = (cost if cap.feasible and n <= limit else math.inf, i)
            if best is None or key < best:
                best, chosen = key, v
    itl, ttft = spec.slo.itl_target(), spec.slo.ttft
    profile = replica_profile(spec, chosen)
    limit, _ = ceiling_replicas(spec, chosen)
    rate = len(first) / 60.0

    def carried(n: int) -> float:
        # Behind a load-aware gateway the fleet pools its capacity (a replica in a fleet of n carries
        # more than a lone one); behind a Service each replica is a queue of its own.
        cap = simulated_capacity(profile, mean_in, mean_out, itl.seconds if itl else None, ttft.seconds if ttft else None,
                                 itl_pct=itl.percentile if itl else 95.0, ttft_pct=ttft.percentile if ttft else 95.0,
                                 replicas=n if spec.routing.pools else 1)
        return n * cap.requests_per_s

    single = carried(1)
    # A lone replica's count (an upper bound when pooled), within the ceiling; then fewer while they carry it.
    n = min(math.ceil(rate / single), limit) if single > 0 else limit
    while n > 1 and single > 0 and carried(n - 1) >= rate:
        n -= 1
    return chosen.name, max(1, spec.replicas.min, min(n, limit))


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return math.nan
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[i]


class Twin:
    # The pods' engine steps take this many times what the performance model says (1.0: the model
    # is exact). A class setting, so that the replays static-peak and the oracle size themselves
    # with run on the same pods (bench/decision_quality.py --pod-slowdown).
    pod_slowdown: float = 1.0

    def __init__(
        self,
        spec: LLMDeploymentSpec,
        trace: Trace,
        policy: Policy,
        cold_start_s: dict[str, float] | None = None,
        gpu_pool: dict[str, int] | None = None,
        progress: Callable[[float], None] | None = None,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
        decision_phase_s: float = 0.0,
    ):
        self.spec = spec
        self.scrape_interval_s = scrape_interval_s  # Prometheus scrape interval (the test bed scrapes every 2 s)
        # Where the decisions fall against the trace: the first one interval + this after it starts
        # (the scrapes keep their own cadence). An operator's cadence has no fixed phase against its
        # traffic; the fidelity bench runs several.
        if not 0 <= decision_phase_s:
            raise ValueError(f"decision_phase_s must be >= 0, not {decision_phase_s}")
        self.decision_phase_s = decision_phase_s
        self.trace = trace
        self.policy = policy
        self.cold = {}
        for v in spec.variants:
            if cold_start_s and v.name in cold_start_s:
                self.cold[v.name] = cold_start_s[v.name]
            else:
                self.cold[v.name] = parse_duration(v.cold_start) if v.cold_start else 90.0
        self.pool = dict(gpu_pool) if gpu_pool else {}
        self.progress = progress
        self.pods: list[Pod] = []
        self.next_pod = 0
        self.gateway: deque[Request] = deque()
        # Requests reach the pods the way spec.routing says: through a Service (kube-proxy picks a
        # Ready pod at random, seeded so a run repeats) or a load-aware gateway (the least-loaded).
        self.load_aware = spec.routing.pools
        self.pick = random.Random(0)
        self.finished: list[Finished] = []
        self.prom = PromStore()
        # requests, prompt, generation, busy GPU-s, ready GPU-s, inter-token latency _sum and _count
        self.totals = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self.ttft_tot = [0] * 23
        self.itl_tot = [0] * 20
        self.gpu_seconds = 0.0
        self.settled_gpu_seconds = 0.0  # held after SETTLE_S
        self.cost = 0.0
        self.priced = all(spec.cost.price(v.accelerator) is not None for v in spec.variants)
        self.actions = 0
        self.ceiling_s = 0.0
        self.target = Target(0, spec.variants[0].name)
        self.desired: dict[str, int] = {}  # replicas of each variant's Deployment
        self.target_since: float | None = None
        self.target_variant = spec.variants[0].name
        self.failed: dict[str, tuple[float, str]] = {}
        self.peak_gpus = 0
        self.peak_cost = 0.0
        self.variant_gpu_s: dict[str, float] = {}
        self.timeline: list[dict] = []

    # ---- pods -----------------------------------------------------------------------------
    def _free_gpus(self, accelerator: str) -> float:
        if accelerator not in self.pool:
            return math.inf
        used = sum(p.gpus for p in self.pods if p.variant.accelerator == accelerator and p.ready_at is not None)
        return self.pool[accelerator] - used

    def _schedule_pending(self, now: float) -> None:
        for p in self.pods:
            if p.ready_at is None and not p.draining and self._free_gpus(p.variant.accelerator) >= p.gpus:
                p.ready_at = now + self.cold[p.variant.name]

    def _add_pod(self, variant: Variant, now: float) -> None:
        self.pods.append(Pod(self.next_pod, variant, now))
        self.next_pod += 1

    def _remove_pod(self, pod: Pod, now: float) -> None:
        if not pod.ready or pod.engine is None:
            self.pods.remove(pod)  # not serving yet: delete at once
            return
        pod.draining = True
        pod.ready = False

    def _set_desired(self, target: Target, now: float) -> None:
        """Apply replicas per variant the way Deployments do: create pods up to the count, and on a
        scale-down delete Pending pods first, then starting ones, then the least loaded."""
        assert target.by_variant is not None
        if target.variant != self.target_variant:
            self.target_variant, self.target_since = target.variant, now
        if target.failed is not None:
            self.failed[target.failed[0]] = (now, target.failed[1])
        for name, n in target.by_variant.items():
            self.desired[name] = n
            variant = self.spec.variant(name)
            live = [p for p in self.pods if not p.draining and p.variant.name == name]
            for _ in range(n - len(live)):
                self._add_pod(variant, now)
            if len(live) > n:
                order = sorted(live, key=lambda p: (p.ready_at is not None, p.ready, p.engine.outstanding if p.engine else 0))
                for p in order[: len(live) - n]:
                    self._remove_pod(p, now)
        self._schedule_pending(now)
        self._note_held()

    def _note_held(self) -> None:
        held = [p for p in self.pods if p.ready_at is not None or p.draining]
        self.peak_gpus = max(self.peak_gpus, sum(p.gpus for p in held))
        self.peak_cost = max(self.peak_cost, sum(float(self.spec.cost.price(p.variant.accelerator) or 0) * p.gpus for p in held))

    def _apply(self, target: Target, now: float) -> None:
        if target.by_variant is not None:
            self._set_desired(target, now)
            return
        spec = self.spec
        variant = spec.variant(target.variant)
        live = [p for p in self.pods if not p.draining]
        same = [p for p in live if p.variant.name == variant.name]
        other = [p for p in live if p.variant.name != variant.name]
        if len(same) < target.replicas:
            # Make before break: new-shape pods start while old ones serve, inside the ceilings.
            for _ in range(target.replicas - len(same)):
                if not self._fits(variant):
                    break
                self._add_pod(variant, now)
        elif len(same) > target.replicas:
            # Remove the least loaded first: unready pods, then those with the fewest in-flight requests.
            order = sorted(same, key=lambda p: (p.ready, p.engine.outstanding if p.engine else 0))
            for p in order[: len(same) - target.replicas]:
                self._remove_pod(p, now)
        # Retire old-shape pods as new-shape pods become ready.
        ready_new = sum(1 for p in self.pods if p.variant.name == variant.name and p.ready)
        if other:
            keep = max(0, target.replicas - ready_new)
            order = sorted(other, key=lambda p: (p.ready, p.engine.outstanding if p.engine else 0))
            for p in order[: max(0, len(other) - keep)]:
                self._remove_pod(p, now)
            # If the ceilings left no room to surge, free one old pod first (maxUnavailable: 1).
            if len([p for p in self.pods if p.variant.name == variant.name and not p.draining]) == 0 and target.replicas > 0:
                old_ready = [p for p in self.pods if p.variant.name != variant.name and not p.draining]
                if old_ready and not self._fits(variant):
                    self._remove_pod(min(old_ready, key=lambda p: p.engine.outstanding if p.engine else 0), now)
        self._schedule_pending(now)
        self._note_held()
        self.desired = {v.name: len([p for p in self.pods if not p.draining and p.variant.name == v.name])
                        for v in spec.variants}

    def _fits(self, variant: Variant) -> bool:
        """Would one more pod of this variant keep every ceiling (counting draining pods)?"""
        spec = self.spec
        gpus = sum(p.gpus for p in self.pods) + variant.gpus_per_replica
        if spec.cost.max_gpus is not None and gpus > spec.cost.max_gpus:
            return False
        ceiling = spec.cost.hourly_ceiling
        if ceiling is not None:
            cost = sum(float(spec.cost.price(p.variant.accelerator) or 0) * p.gpus for p in self.pods)
            cost += float(spec.cost.price(variant.accelerator) or 0) * variant.gpus_per_replica
            if cost > float(ceiling) + 1e-9:
                return False
        return True

    def _workload(self) -> Workload:
        counts: dict[str, list[int]] = {}
        since: dict[str, list[float | None]] = {}
        for p in self.pods:
            c = counts.setdefault(p.variant.name, [0, 0, 0, 0])
            first = since.setdefault(p.variant.name, [None, None, None])
            if p.draining:
                c[2] += 1
            elif p.ready:
                c[1] += 1
            elif p.ready_at is not None:
                c[0] += 1
                on_node = p.ready_at - self.cold[p.variant.name]  # scheduled: startupTimeout counts from here
                first[0] = on_node if first[0] is None else min(first[0], on_node)
                first[2] = on_node if first[2] is None else max(first[2], on_node)
            else:
                c[3] += 1
                first[1] = p.created if first[1] is None else min(first[1], p.created)
        pods = {v: PodCounts(c[0], c[1], c[2], c[3], starting_since=since[v][0], waiting_since=since[v][1],
                             scheduled_last=since[v][2]) for v, c in counts.items()}
        current = self.target.variant
        mine = pods.get(current, PodCounts())
        desired = {v: n for v, n in self.desired.items() if n or v in pods}
        return Workload(
            variant=current,
            replicas=self.desired.get(current, 0) if self.target.by_variant is not None
            else len([p for p in self.pods if not p.draining]),
            desired=desired or {current: 0},
            target_since=self.target_since,
            failed=dict(self.failed),
            ready=mine.ready,
            starting=mine.starting,
            pending_unschedulable=mine.unschedulable,
            cold_start_s=dict(self.cold),
            terminating=sum(c.terminating for c in pods.values()),
            pods=pods,
        )

    def _concurrency(self) -> float:
        """Requests in flight now: held at the gateway, waiting in a replica or running."""
        inflight = sum(p.engine.outstanding for p in self.pods if p.engine is not None)
        return float(len(self.gateway) + inflight)

    # ---- traffic ----------------------------------------------------------------------------
    def _route(self, req: Request) -> None:
        ready = [p for p in self.pods if p.ready and p.engine is not None]
        if not ready:
            self.gateway.append(req)
            return
        if self.load_aware:
            best = min(ready, key=lambda p: (p.engine.outstanding, p.id))  # type: ignore[union-attr]
        else:
            best = ready[self.pick.randrange(len(ready))]
        best.engine.submit(req)  # type: ignore[union-attr]

    def _advance(self, t: float) -> None:
        for p in self.pods:
            if p.engine is not None:
                p.engine.advance(t)
                if p.engine.finished:
                    self.finished.extend(p.engine.drain_finished())
        done = [p for p in self.pods if p.draining and p.engine is not None and p.engine.outstanding == 0]
        for p in done:
            self._collect(p)
            self.pods.remove(p)

    def _collect(self, p: Pod) -> None:
        """Fold a pod's counters since its last scrape into the fleet totals (Prometheus keeps
        the series of a deleted pod until it goes stale, so its increase is still counted)."""
        e = p.engine
        if e is None:
            return
        c = e.counters
        now_counts = (c.success, c.prompt_tokens, c.generation_tokens, c.busy_s * p.gpus, c.itl.sum, c.itl.count)
        prev = p.last_counts or (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        for i, total in enumerate((0, 1, 2, 3, 5, 6)):
            self.totals[total] += now_counts[i] - prev[i]
        p.last_counts = now_counts
        tt, it = c.ttft.counts, c.itl.counts
        pt = p.last_ttft or [0] * len(tt)
        pi = p.last_itl or [0] * len(it)
        for i in range(len(tt)):
            self.ttft_tot[i] += tt[i] - pt[i]
        for i in range(len(it)):
            self.itl_tot[i] += it[i] - pi[i]
        p.last_ttft, p.last_itl = list(tt), list(it)

    def _scrape(self, now: float, dt_since: float) -> None:
        waiting = float(len(self.gateway))
        running = 0.0
        kv, n_ready = 0.0, 0
        for p in self.pods:
            if p.engine is None:
                continue
            self._collect(p)
            waiting += p.engine.num_waiting
            running += p.engine.num_running
            if p.ready:
                kv += p.engine.kv_usage
                n_ready += 1
                self.totals[4] += dt_since * p.gpus
        cum = lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))]  # noqa: E731
        self.prom.add(Sample(now, self.totals[0], self.totals[1], self.totals[2], self.totals[3], self.totals[4],
                             cum(self.ttft_tot), cum(self.itl_tot), waiting, running, kv / n_ready if n_ready else None,
                             self.totals[5], self.totals[6]))

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        spec = self.spec
        arrivals = self.trace.arrivals
        end = (arrivals[-1].t if arrivals else 0.0) + 1.0
        interval = self.policy.interval(spec)
        if self.policy.initial is None:
            self.policy.initial_variant, self.policy.initial = warm_fleet(spec, self.trace)
        self.target = self.policy.start(spec, self.trace, self.cold)
        self.desired = {self.target.variant: self.target.replicas}
        self.target_variant = self.target.variant
        # Pre-warm the starting fleet (it exists before the trace begins).
        variant = spec.variant(self.target.variant)
        for _ in range(self.target.replicas):
            self._add_pod(variant, -self.cold[variant.name])
        self._schedule_pending(-self.cold[variant.name])
        for p in self.pods:
            if p.ready_at is not None:
                p.ready_at = 0.0
        ttft_t = (spec.slo.ttft.seconds, spec.slo.ttft.percentile) if spec.slo.ttft else None
        itl = spec.slo.itl_target()
        itl_t = (itl.seconds, itl.percentile) if itl else None
        window = parse_duration(spec.metrics.rate_window)

        i, t = 0, 0.0
        next_tick, next_scrape, next_bin = interval + self.decision_phase_s, self.scrape_interval_s, 0.0
        last_scrape = 0.0
        bin_arrivals = 0
        prog_next = 0.0
        while i < len(arrivals) or any(p.engine and p.engine.outstanding for p in self.pods) or self.gateway:
            ready_times = [p.ready_at for p in self.pods if p.ready_at is not None and not p.ready and not p.draining]
            nt = min(
                arrivals[i].t if i < len(arrivals) else math.inf,
                next_tick if i < len(arrivals) else math.inf,
                next_scrape,
                min(ready_times) if ready_times else math.inf,
                next_bin,
            )
            if nt == math.inf or nt > end + 3600:
                break
            # GPU time and money accrue for every scheduled pod (starting, ready or draining).
            dt = nt - t
            if dt > 0:
                late_dt = max(0.0, nt - max(t, SETTLE_S))
                for p in self.pods:
                    if p.ready_at is not None:
                        self.gpu_seconds += dt * p.gpus
                        self.settled_gpu_seconds += late_dt * p.gpus
                        self.variant_gpu_s[p.variant.name] = self.variant_gpu_s.get(p.variant.name, 0.0) + dt * p.gpus
                        self.cost += dt / 3600 * p.gpus * float(spec.cost.price(p.variant.accelerator) or 0)
                if self.target.capped:
                    self.ceiling_s += dt
            self._advance(nt)
            t = nt
            for p in self.pods:
                if not p.ready and not p.draining and p.ready_at is not None and p.ready_at <= t:
                    p.ready = True
                    profile = replica_profile(spec, p.variant, self.pod_slowdown)
                    p.engine = Engine(profile, start=t, max_model_len=max_model_len(spec))
                    if self.target.by_variant is None:
                        self._apply(self.target, t)  # may retire old-shape pods now (the operator's rollout does this at its next decision)
            while self.gateway and any(p.ready for p in self.pods):
                self._route(self.gateway.popleft())
            if t >= next_bin:
                live = [p for p in self.pods if not p.draining]
                self.timeline.append({
                    "t": t,
                    "rate": bin_arrivals / TIMELINE_BIN_S if t > 0 else 0.0,
                    "ready": {v.name: sum(1 for p in live if p.ready and p.variant.name == v.name) for v in spec.variants},
                    "pods": len(live),
                    "gpus": sum(p.gpus for p in self.pods if p.ready_at is not None),
                    "target": self.target.replicas,
                })
                bin_arrivals = 0
                next_bin += TIMELINE_BIN_S
            if t >= next_scrape:
                self._scrape(t, t - last_scrape)
                last_scrape = t
                next_scrape += self.scrape_interval_s
            if i < len(arrivals) and t >= next_tick:
                view = View(spec, self._workload(), self.prom.signals(t, window, ttft_t, itl_t), t,
                            self._concurrency(), self.prom)
                new = self.policy.decide(view)
                if new.replicas != self.target.replicas or new.variant != self.target.variant:
                    self.actions += 1
                self.target = new
                self._apply(new, t)
                next_tick += interval
            while i < len(arrivals) and arrivals[i].t <= t:
                a = arrivals[i]
                self._route(Request(i, a.t, a.input_tokens, a.output_tokens))
                bin_arrivals += 1
                i += 1
            if self.progress and t >= prog_next:
                self.progress(min(1.0, t / end))
                prog_next = t + end / 50
        # The loop steps to the next scrape or bin after the last request finished: give back the
        # GPU time (and money) accrued past the true end of the run (the fleet is fixed by then).
        finish = max([f.arrival + f.e2e_s for f in self.finished if not f.rejected] + [arrivals[-1].t if arrivals else 0.0])
        if t > finish:
            tail = t - finish
            for p in self.pods:
                if p.ready_at is not None:
                    self.gpu_seconds -= tail * p.gpus
                    self.settled_gpu_seconds -= max(0.0, t - max(finish, SETTLE_S)) * p.gpus
                    self.variant_gpu_s[p.variant.name] -= tail * p.gpus
                    self.cost -= tail / 3600 * p.gpus * float(spec.cost.price(p.variant.accelerator) or 0)
        if self.progress:
            self.progress(1.0)
        return self._result(ttft_t, itl_t)

    def _result(self, ttft_t: tuple[float, float] | None, itl_t: tuple[float, float] | None) -> RunResult:
        done = self.finished
        n = len(self.trace.arrivals)
        served = [f for f in done if not f.rejected]
        ttfts = sorted(f.ttft_s for f in served)
        itls = sorted(f.itl_s for f in served if f.output_tokens > 1)
        # Requests never finished (the run ended) or rejected count as misses.
        ttft_ok = sum(1 for f in served if ttft_t is None or f.ttft_s <= ttft_t[0])
        def itl_met(f: Finished) -> bool:
            return itl_t is None or f.output_tokens <= 1 or f.itl_s <= itl_t[0]

        itl_ok = sum(1 for f in served if itl_met(f))
        joint_ok = sum(1 for f in served if (ttft_t is None or f.ttft_s <= ttft_t[0]) and itl_met(f))
        late = [a for a in self.trace.arrivals if a.t >= SETTLE_S]
        late_ok = sum(1 for f in served if f.arrival >= SETTLE_S and (ttft_t is None or f.ttft_s <= ttft_t[0]))
        late_joint = sum(1 for f in served if f.arrival >= SETTLE_S and (ttft_t is None or f.ttft_s <= ttft_t[0])
                         and itl_met(f))
        # Per-bin TTFT p95 of the requests that arrived in the bin, for the plot.
        by_bin: dict[int, list[float]] = {}
        for f in served:
            by_bin.setdefault(int(f.arrival // TIMELINE_BIN_S), []).append(f.ttft_s)
        for row in self.timeline:
            vals = sorted(by_bin.get(int(row["t"] // TIMELINE_BIN_S) - 1, []))
            row["ttft_p95"] = _pct(vals, 0.95) if vals else None
        return RunResult(
            policy=self.policy.name,
            trace=self.trace.name,
            requests=n,
            ttft_attainment=ttft_ok / n if n else 1.0,
            itl_attainment=itl_ok / n if n else 1.0,
            joint_attainment=joint_ok / n if n else 1.0,
            settled_ttft_attainment=late_ok / len(late) if late else 1.0,
            settled_joint_attainment=late_joint / len(late) if late else 1.0,
            settled_requests=len(late),
            settled_gpu_hours=self.settled_gpu_seconds / 3600,
            ttft_p50_s=_pct(ttfts, 0.50),
            ttft_p95_s=_pct(ttfts, 0.95),
            ttft_p99_s=_pct(ttfts, 0.99),
            itl_p95_s=_pct(itls, 0.95),
            gpu_hours=self.gpu_seconds / 3600,
            cost=self.cost if self.priced else None,
            scale_actions=self.actions,
            ceiling_s=self.ceiling_s,
            rejected=sum(1 for f in done if f.rejected),
            peak_gpus=self.peak_gpus,
            peak_hourly_cost=self.peak_cost if self.priced else None,
            variants={v: round(s / 3600, 4) for v, s in self.variant_gpu_s.items()},
            timeline=self.timeline,
        )
