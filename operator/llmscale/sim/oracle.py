"""Lower bounds that see the future: what no autoscaler can beat, computed on the trace.

The model (stated, so that a result can be checked): time in steps of the decision interval; in
step k, a_k requests arrive; r Ready replicas carry up to F(r) x h x step requests within the SLO
(F from the same capacity model llmscale plans with, for the trace's token mix, h a headroom factor);
the rest miss. A replica ordered at step j is Ready from step j + L (L = the cold start in steps)
and is paid for from step j; removing one is immediate and the newest go first. For a plan of
Ready replicas r_k, the cheapest order is n_j = max(r_j .. r_j+L), so the cost is
sum_j max(r_j .. r_j+L) and the misses sum_k max(0, a_k - F(r_k) h step).

- `oracle-lookahead` orders, at every step, what the load of the next cold start needs with no
  miss at all (n_j = max need over j .. j+L). It sees one cold start ahead and never trades a
  miss for money.
- `oracle` sees the whole trace and tries to spend the SLO's miss allowance where it saves the
  most GPU time: it minimises cost + lambda x misses level by level (a replica level m covers a
  set of steps; its cost is the length of the union of their cold-start windows, a
  one-dimensional dynamic programme), for a sweep of lambda and of the headroom. The per-level
  programme is the exact optimum of this model only when a replica's marginal capacity does not
  grow with the fleet (checked against brute force); pooling makes it grow, and then the plan is
  rebuilt from the highest level each step is covered at (valid, not proven optimal).

Limits, plainly: the model counts a step's shortfall as that step's misses, while the twin
queues them first-in-first-out into the steps after, so a plan that spends the allowance in the
model often misses more in the replay; then the search keeps the lookahead plan, and `oracle`
equals `oracle-lookahead`. So neither is a proven lower bound of the twin: they are the cheapest
plans found that replay within the SLO, and a policy that beats them is a search to improve.

Both are replayed in the twin, and the attainment reported is the twin's, not the model's. The
headroom h and lambda are chosen offline so that the replay meets the SLO as written (`oracle` at
the SLO's level is the cheapest replayed plan that does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec
from llmscale.api.units import parse_duration
from llmscale.perf.capacity import simulated_capacity
from llmscale.policy.capacity import replica_profile
from llmscale.policy.ceilings import ceiling_replicas

from .baselines import clamp, slo_met
from .traffic import Trace
from .twin import Policy, RunResult, Target, Twin, View


@dataclass(frozen=True)
class Problem:
    step_s: float
    lead: int  # cold start in steps: ordered at j, Ready from j + lead
    arrivals: tuple[int, ...]  # per step
    fleet: tuple[float, ...]  # fleet[m] = requests/s m Ready replicas carry at the SLO (fleet[0] = 0)

    @property
    def levels(self) -> int:
        return len(self.fleet) - 1


def problem(spec: LLMDeploymentSpec, trace: Trace, cold_start_s: float) -> Problem:
    step = parse_duration(spec.scaling.interval)
    variant = spec.variants[0]
    limit, _ = ceiling_replicas(spec, variant)
    arr = trace.arrivals
    mean_in = sum(a.input_tokens for a in arr) / len(arr) if arr else 1024.0
    mean_out = sum(a.output_tokens for a in arr) / len(arr) if arr else 256.0
    profile = replica_profile(spec, variant, Twin.pod_slowdown)  # full knowledge: the pods as they run
    itl, ttft = spec.slo.itl_target(), spec.slo.ttft
    fleet = [0.0]
    for m in range(1, max(1, limit) + 1):
        cap = simulated_capacity(profile, mean_in, mean_out, itl.seconds if itl else None, ttft.seconds if ttft else None,
                                 itl_pct=itl.percentile if itl else 95.0, ttft_pct=ttft.percentile if ttft else 95.0,
                                 replicas=m if spec.routing.pools else 1)
        fleet.append(max(fleet[-1], m * cap.requests_per_s))
    steps = int(math.ceil((arr[-1].t if arr else 0.0) / step)) + 1
    counts = [0] * steps
    for a in arr:
        counts[min(steps - 1, int(a.t // step))] += 1
    return Problem(step, max(0, math.ceil(cold_start_s / step - 1e-9)), tuple(counts), tuple(fleet))


def misses(p: Problem, k: int, ready: int, headroom: float) -> float:
    return max(0.0, p.arrivals[k] * headroom - p.fleet[ready] * p.step_s)


def need(p: Problem, k: int, headroom: float) -> int:
    """The fewest Ready replicas with no miss in step k."""
    for m in range(p.levels + 1):
        if misses(p, k, m, headroom) <= 0:
            return m
    return p.levels


def orders(p: Problem, ready: list[int]) -> list[int]:
    """The cheapest orders that have `ready` replicas Ready at every step: n_j = max(r_j .. r_j+L)."""
    n = len(ready)
    return [max(ready[j: min(n, j + p.lead + 1)]) for j in range(n)]


def lookahead_plan(p: Problem, headroom: float) -> list[int]:
    return orders(p, [max(1, need(p, k, headroom)) for k in range(len(p.arrivals))])


def _cover(weights: list[float], lead: int) -> set[int]:
    """The steps to cover at one replica level: maximise sum of weights of covered steps minus the
    length of the union of their windows [k - lead, k] (clipped at 0)."""
    n = len(weights)
    g = [-math.inf] * n
    back: list[int | None] = [None] * n
    best_upto = [0.0] * n  # max(0, g[0..i])
    arg_upto: list[int | None] = [None] * n
    for k in range(n):
        if weights[k] > 0:
            # A new run of windows: pays its whole (clipped) window.
            i = k - lead - 1
            prev, prev_arg = (best_upto[i], arg_upto[i]) if i >= 0 else (0.0, None)
            val: float = prev - (min(k, lead) + 1)
            arg: int | None = prev_arg
            # Or extend a run whose last covered step is within the window: pays the new steps only.
            for j in range(max(0, k - lead), k):
                if g[j] > -math.inf and g[j] - (k - j) > val:
                    val, arg = g[j] - (k - j), j
            g[k] = weights[k] + val
            back[k] = arg
        top, top_arg = (best_upto[k - 1], arg_upto[k - 1]) if k > 0 else (0.0, None)
        best_upto[k], arg_upto[k] = (g[k], k) if g[k] > top else (top, top_arg)
    chosen: set[int] = set()
    last = arg_upto[n - 1] if n else None
    while last is not None:
        chosen.add(last)
        last = back[last]
    return chosen


def optimal_plan(p: Problem, headroom: float, price_of_miss: float) -> list[int]:
    """Orders minimising GPU-steps + price_of_miss x missed requests (see the module docstring)."""
    n = len(p.arrivals)
    ready = [0] * n
    for m in range(1, p.levels + 1):
        weights = [price_of_miss * (misses(p, k, m - 1, headroom) - misses(p, k, m, headroom)) for k in range(n)]
        if not any(w > 0 for w in weights):
            break
        for k in _cover(weights, p.lead):
            ready[k] = max(ready[k], m)
    # Nested levels: a step covered at level m is covered at every level below it.
    return orders(p, [max(1, r) for r in ready])


def plan_cost(plan: list[int]) -> int:
    return sum(plan)


class Schedule(Policy):
    """Replays a plan of orders, one per step."""

    def __init__(self, name: str, plan: list[int], step_s: float) -> None:
        self.name = name
        self.plan = plan
        self.step_s = step_s

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return self.step_s

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        self.spec = spec
        return clamp(spec, spec.variants[0].name, max(1, self.plan[0] if self.plan else 1))

    def decide(self, view: View) -> Target:
        j = min(len(self.plan) - 1, int(round(view.now / self.step_s)))
        return clamp(self.spec, self.spec.variants[0].name, max(1, self.plan[j]))


def _replay(spec: LLMDeploymentSpec, trace: Trace, cold: dict[str, float], name: str, plan: list[int], step: float) -> RunResult:
    return Twin(spec, trace, Schedule(name, plan, step), cold).run()


_CALIBRATED: dict[tuple[str, int, str, float, float], float] = {}


def calibrate_headroom(spec: LLMDeploymentSpec, trace: Trace, cold: dict[str, float], p: Problem) -> float:
    """The least headroom (0.5 .. 16) whose no-miss lookahead plan, replayed, meets the SLO
    (bisection; cached per trace and deployment, since both oracles need it). When even 16x
    misses, 16 is returned and the replay reports the shortfall."""
    # The pods' speed too: a replay on pods slower than the model (Twin.pod_slowdown) needs its own.
    key = (trace.name, len(trace.arrivals), spec.model_dump_json(), p.lead, Twin.pod_slowdown)
    if key in _CALIBRATED:
        return _CALIBRATED[key]

    def ok(h: float) -> bool:
        return slo_met(spec, _replay(spec, trace, cold, "probe", lookahead_plan(p, h), p.step_s))

    lo, hi = 0.5, 1.0
    while hi < 16 and not ok(hi):
        lo, hi = hi, hi * 2
    if hi == 1.0 and ok(lo):
        _CALIBRATED[key] = lo
        return lo
    for _ in range(5):
        mid = (lo + hi) / 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    _CALIBRATED[key] = hi
    return hi


class _Offline(Policy):
    """Plans on the whole trace at start, then replays the plan."""

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        variant = spec.variants[0].name
        p = problem(spec, trace, cold_start.get(variant, 90.0))
        self.schedule = Schedule(self.name, self.plan(spec, trace, cold_start, p), p.step_s)
        return self.schedule.start(spec, trace, cold_start)

    def plan(self, spec: LLMDeploymentSpec, trace: Trace, cold: dict[str, float], p: Problem) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def interval(self, spec: LLMDeploymentSpec) -> float:
        return parse_duration(spec.scaling.interval)

    def decide(self, view: View) -> Target:
        return self.schedule.decide(view)


class OracleLookaheadPolicy(_Offline):
    """Sees one cold start ahead: orders, at every step, what the coming cold start's load needs with
    no miss (headroom calibrated offline so that the replay meets the SLO)."""

    name = "oracle-lookahead"

    def plan(self, spec: LLMDeploymentSpec, trace: Trace, cold: dict[str, float], p: Problem) -> list[int]:
        return lookahead_plan(p, calibrate_headroom(spec, trace, cold, p))


class OraclePolicy(_Offline):
    """Sees the whole trace: the cheapest plan found whose replay meets the SLO. It searches the
    price of a miss at the lookahead's headroom and at 25 % and 50 % more (more headroom in the
    model leaves room in the replay to spend the miss allowance), and keeps the lookahead plan when
    nothing cheaper replays within the SLO."""

    name = "oracle"
    prices = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01)  # GPU-steps a missed request is worth
    headroom_steps = (1.0, 1.25, 1.5)

    def plan(self, spec: LLMDeploymentSpec, trace: Trace, cold: dict[str, float], p: Problem) -> list[int]:
        h0 = calibrate_headroom(spec, trace, cold, p)
        best = lookahead_plan(p, h0)
        tried: set[tuple[int, ...]] = {tuple(best)}
        for step in self.headroom_steps:
            for price in self.prices:
                candidate = optimal_plan(p, h0 * step, price)
                if tuple(candidate) in tried:
                    continue
                tried.add(tuple(candidate))
                if plan_cost(candidate) >= plan_cost(best):
                    continue
                if slo_met(spec, _replay(spec, trace, cold, "probe", candidate, p.step_s)):
                    best = candidate
                else:
                    break  # cheaper plans at this headroom miss more: the replay says where the allowance ends
        return best


def frontier(spec: LLMDeploymentSpec, trace: Trace, cold: dict[str, float] | None = None,
             prices: tuple[float, ...] = (1e6, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)) -> list[RunResult]:
    """The oracle's GPU-hours against attainment: one replayed plan per price of a miss."""
    variant = spec.variants[0]
    cold = cold or {variant.name: parse_duration(variant.cold_start) if variant.cold_start else 90.0}
    p = problem(spec, trace, cold[variant.name])
    h = calibrate_headroom(spec, trace, cold, p)
    seen: set[tuple[int, ...]] = set()
    out = []
    for price in prices:
        plan = optimal_plan(p, h, price)
        if tuple(plan) in seen:
            continue
        seen.add(tuple(plan))
        out.append(_replay(spec, trace, cold, f"oracle@{price:g}", plan, p.step_s))
    return out


BEATEN_BY = 0.999  # fewer GPU-hours than the oracle's by more than a replay's rounding


def oracle_run(results: list[RunResult]) -> RunResult | None:
    """The oracle's replay among a run's results, if the run has one."""
    return next((r for r in results if r.policy == "oracle"), None)


def yardstick(spec: LLMDeploymentSpec, results: list[RunResult], judged: str = "llmscale") -> tuple[float, float] | None:
    """The oracle's yardstick: the fewest GPU-hours, over the whole run and from minute ten on, of
    the replayed plans that meet the SLO as written (`slo_met`), each view its own cheapest: the
    oracle's own, or that of any policy that meets it for less (a plan the oracle's search missed;
    it is not a proven bound).
    The policy judged (`judged`) is never its own yardstick, so a search that misses never flatters
    it. None without an oracle in the run."""
    oracle = oracle_run(results)
    if oracle is None:
        return None
    whole, settled = yardstick_plans(spec, results, judged)
    return ((whole if whole is not None else oracle).gpu_hours,
            (settled if settled is not None else oracle).settled_gpu_hours)


def yardstick_plans(spec: LLMDeploymentSpec, results: list[RunResult],
                    judged: str = "llmscale") -> tuple[RunResult | None, RunResult | None]:
    """Whose replay sets each view's yardstick (see yardstick), the whole run's and the one from
    minute ten on: a policy other than the oracle, or None where the oracle's own plan does (or
    there is no oracle). The view from minute ten may take a policy that `beat_oracle` does not
    name: one that meets the SLO over the whole run and holds less than the oracle's plan from
    minute ten, though more over the whole run; the report names it."""
    oracle = oracle_run(results)
    if oracle is None:
        return None, None
    meeting = [r for r in results if r.policy not in ("oracle", judged) and slo_met(spec, r)]
    # Each view its own cheapest, past the rounding of a replay (BEATEN_BY: what beat_oracle names).
    whole = min((r for r in meeting if r.gpu_hours < oracle.gpu_hours * BEATEN_BY),
                key=lambda r: r.gpu_hours, default=None)
    settled = min((r for r in meeting if r.settled_gpu_hours < oracle.settled_gpu_hours * BEATEN_BY),
                  key=lambda r: r.settled_gpu_hours, default=None)
    return whole, settled


def beat_oracle(spec: LLMDeploymentSpec, results: list[RunResult]) -> list[str]:
    """The policies whose replay meets the SLO for fewer GPU-hours than the oracle's plan."""
    oracle = oracle_run(results)
    if oracle is None:
        return []
    return [r.policy for r in results
            if r.policy != "oracle" and slo_met(spec, r) and r.gpu_hours < oracle.gpu_hours * BEATEN_BY]
