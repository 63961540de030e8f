"""Closed-form steady-state capacity of one replica at an SLO.

With arrival rate lam, mean prompt I and mean output O, Little's law gives the decode batch
B = lam * O * tau and the prefill tokens per step P = lam * I * tau, where tau is the step time,
itself a function of B and P. We solve that fixed point and search the largest lam whose step
time keeps the inter-token target, whose KV cache holds the batch, and whose first token
(queue-free chunked prefill plus one step of waiting) keeps the TTFT target.
"""

from __future__ import annotations

import functools
import math
import random  # seeded below: every result is deterministic
from collections.abc import Sequence
from dataclasses import dataclass

from . import buckets
from .engine import Engine, Finished, Request
from .hardware import ServerProfile
from .histogram import histogram_quantile


@dataclass(frozen=True)
class Capacity:
    requests_per_s: float  # sustainable arrival rate at the SLO (0 when infeasible)
    step_s_at_capacity: float
    batch_at_capacity: float
    limited_by: str  # "itl", "ttft", "kv-cache", "max-num-seqs", "throughput" or "infeasible: ..."


def step_time_at(profile: ServerProfile, lam: float, mean_in: float, mean_out: float) -> tuple[float, float] | None:
    """(step seconds, batch) in steady state at arrival rate lam, or None when the server saturates."""
    tau = profile.step_seconds(1, mean_in, 0)
    for _ in range(200):
        b = lam * mean_out * tau
        p = lam * mean_in * tau
        if p > profile.max_batched_tokens or b > profile.max_num_seqs:
            return None
        nxt = profile.step_seconds(max(1, round(b)), b * (mean_in + mean_out / 2), int(p), mean_in / 2)
        if abs(nxt - tau) < 1e-7:
            return nxt, b
        if nxt > 50:
            return None
        tau = nxt
    # Oscillation or slow growth means the knee: treat as saturated.
    return None


def unloaded_floor(profile: ServerProfile, mean_in: float, mean_out: float, itl_target_s: float | None,
                   ttft_target_s: float | None) -> Capacity | None:
    """The infeasible answer when even an idle replica misses a target (or the model does not
    fit), else None: no load makes a replica faster than idle."""
    if not profile.fits:
        return Capacity(0.0, math.inf, 0, "infeasible: model does not fit in GPU memory")
    floor_itl = profile.unloaded_itl(mean_in + mean_out / 2)
    if itl_target_s is not None and floor_itl > itl_target_s:
        return Capacity(0.0, floor_itl, 0, f"infeasible: unloaded inter-token latency {floor_itl * 1000:.0f}ms")
    if ttft_target_s is not None:
        floor_ttft = profile.unloaded_ttft(int(mean_in))
        if floor_ttft > ttft_target_s:
            return Capacity(0.0, math.inf, 0, f"infeasible: unloaded TTFT {floor_ttft * 1000:.0f}ms for a mean prompt")
    return None


def replica_capacity(
    profile: ServerProfile,
    mean_in: float,
    mean_out: float,
    itl_target_s: float | None,
    ttft_target_s: float | None,
    prompt_tail_factor: float = 3.0,
    rel_tol: float = 0.0,
) -> Capacity:
    """Largest arrival rate one replica sustains within the targets (bisection on lam, 40 halvings
    or until the bracket is narrower than rel_tol of its top)."""
    mean_in = max(1.0, mean_in)
    mean_out = max(1.0, mean_out)
    floor = unloaded_floor(profile, mean_in, mean_out, itl_target_s, ttft_target_s)
    if floor is not None:
        return floor
    tail_prompt = int(mean_in * prompt_tail_factor)

    def ok(lam: float) -> tuple[bool, str]:
        st = step_time_at(profile, lam, mean_in, mean_out)
        if st is None:
            return False, "throughput"
        tau, b = st
        if itl_target_s is not None and tau > itl_target_s:
            return False, "itl"
        if b * (mean_in + mean_out) > profile.kv_capacity_tokens * 0.9:
            return False, "kv-cache"
        if b > profile.max_num_seqs * 0.9:
            return False, "max-num-seqs"
        if ttft_target_s is not None:
            # A tail prompt's chunked prefill, each chunk sharing the step with the decode batch.
            chunks = max(1, math.ceil(tail_prompt / profile.max_batched_tokens))
            ttft = tau + chunks * profile.step_seconds(max(1, round(b)), b * mean_in, min(tail_prompt, profile.max_batched_tokens), tail_prompt / 2)
            if ttft > ttft_target_s:
                return False, "ttft"
        return True, ""

    lo, hi = 0.0, 1.0
    while ok(hi)[0] and hi < 1e5:
        lo, hi = hi, hi * 2
    reason = ok(hi)[1]
    for _ in range(40):
        if hi - lo <= rel_tol * hi:
            break
        mid = (lo + hi) / 2
        good, why = ok(mid)
        if good:
            lo = mid
        else:
            hi, reason = mid, why
    st = step_time_at(profile, lo, mean_in, mean_out) or (math.inf, 0.0)
    if lo < 1e-6:
        return Capacity(0.0, st[0], 0.0, f"infeasible: {reason or 'throughput'} target unreachable even at low load")
    return Capacity(lo, st[0], st[1], reason or "throughput")


# ---- simulated capacity -------------------------------------------------------------------------
# The closed form above gives the mean step time; SLOs are on tail percentiles, which depend on
# the spread of prompt and output lengths (a long prompt's prefill delays everyone's next token).
# So the capacity the policy plans with comes from running the engine simulator itself on a
# synthetic Poisson workload with the observed token mix, bracketed by the closed form.
#
# A fleet is more than the sum of its replicas: the router sends new requests away from a
# replica busy with a long prefill, so the tail a lone replica shows (everyone queued behind the
# 80k-token prompt) mostly disappears with pooling. With long, spread prompts a replica in a fleet
# of eight sustains nearly twice what it does alone. So capacity is simulated for fleets of 1, 4
# and 16 replicas behind a least-outstanding-requests router (a load-aware gateway), and read
# between them on a log scale of the fleet size; behind a Service the plan reads the lone replica
# (policy.capacity.CapacityCurve).
#
# Inter-token latency is checked as vLLM's histogram reports it, one observation per gap (a step
# that carries a prefill chunk is a long gap for every running stream), and as each request's mean
# gap: the plan must hold the target the operator will measure.


# Lognormal spread of prompt and output lengths. Real prompt lengths are bounded by the context
# window, so their tail is lighter than a lognormal fitted to mean and median suggests (the Azure
# code trace: median 1469, mean 2048, max 7437); 0.7 reproduces its measured capacity within ~20%.
DEFAULT_SIGMA_IN = 0.7
DEFAULT_SIGMA_OUT = 1.0

MIX_GRID = 1.08  # token means are snapped to an 8% log grid: the cache then serves nearby mixes
POOL_ANCHORS = (1, 4, 16)  # fleet sizes simulated; others are read between them


def _snap(x: float) -> float:
    if x <= 1:
        return 1.0
    return round(MIX_GRID ** round(math.log(x) / math.log(MIX_GRID)), 1)


def simulated_capacity(
    profile: ServerProfile,
    mean_in: float,
    mean_out: float,
    itl_target_s: float | None,
    ttft_target_s: float | None,
    itl_pct: float = 95.0,
    ttft_pct: float = 95.0,
    sigma_in: float = DEFAULT_SIGMA_IN,
    sigma_out: float = DEFAULT_SIGMA_OUT,
    max_prompt: int | None = None,
    replicas: int = 1,
) -> Capacity:
    """Largest Poisson arrival rate per replica whose simulated TTFT and ITL percentiles meet the
    targets, for a fleet of `replicas` behind a least-outstanding-requests router."""
    curve = _pool_curve(profile, _snap(mean_in), _snap(mean_out),
                        None if itl_target_s is None else round(itl_target_s, 4),
                        None if ttft_target_s is None else round(ttft_target_s, 4),
                        itl_pct, ttft_pct, round(sigma_in, 1), round(sigma_out, 1), max_prompt)
    return at_fleet_size(curve, replicas)


def at_fleet_size(curve: tuple[tuple[int, Capacity], ...], replicas: int) -> Capacity:
    """Per-replica capacity for `replicas`, linear in log(fleet size) between simulated anchors and
    flat beyond the largest (pooling gains flatten out)."""
    n = max(1, replicas)
    lo_n, lo = curve[0]
    for hi_n, hi in curve[1:]:
        if n <= hi_n:
            if lo.requests_per_s <= 0 or hi.requests_per_s <= 0:
                return lo
            w = math.log(n / lo_n) / math.log(hi_n / lo_n)
            rate = lo.requests_per_s + w * (hi.requests_per_s - lo.requests_per_s)
            return Capacity(rate, lo.step_s_at_capacity, lo.batch_at_capacity, lo.limited_by if w < 0.5 else hi.limited_by)
        lo_n, lo = hi_n, hi
    return lo


@functools.lru_cache(maxsize=2048)
def _pool_curve(profile: ServerProfile, mean_in: float, mean_out: float, itl_t: float | None, ttft_t: float | None,
                itl_pct: float, ttft_pct: float, sigma_in: float, sigma_out: float,
                max_prompt: int | None = None) -> tuple[tuple[int, Capacity], ...]:
    closed = replica_capacity(profile, mean_in, mean_out, itl_t, ttft_t)
    if closed.requests_per_s <= 0 and closed.limited_by.startswith("infeasible"):
        return ((1, closed),)
    # Pooling shortens the tail; it cannot raise what a replica pushes through at all. A simulated
    # fleet of many replicas runs for only seconds of arrivals, too short to show an overload
    # building, so its result is held under the replica's throughput bound.
    bound = replica_capacity(profile, mean_in, mean_out, None, None)
    out: list[tuple[int, Capacity]] = []
    floor = 0.0
    for n in POOL_ANCHORS:
        cap = _simulated(profile, closed, mean_in, mean_out, itl_t, ttft_t, itl_pct, ttft_pct, sigma_in, sigma_out,
                         max_prompt, n, floor)
        if bound.requests_per_s > 0 and cap.requests_per_s > bound.requests_per_s:
            cap = bound
        out.append((n, cap))
        floor = cap.requests_per_s  # pooling never lowers what a replica sustains: start the search there
    return tuple(out)


def _gap_quantile(fleet: list[Engine], pct: float) -> float | None:
    """The inter-token latency quantile as vLLM's histogram gives it (one observation per gap)."""
    total = [0] * (len(buckets.ITL) + 1)
    for e in fleet:
        for i, c in enumerate(e.counters.itl.cumulative()):
            total[i] += c
    return histogram_quantile(pct / 100, buckets.ITL, total)


def _missed(fleet: list[Engine], done: list[Finished], itl_t: float | None, itl_pct: float, ttft_t: float | None,
            ttft_pct: float) -> tuple[bool, str]:
    """(met, the first target missed) for a simulated fleet's finished requests: TTFT and each
    request's mean inter-token latency at their percentiles, and the per-gap histogram's."""
    if not done:
        return False, "throughput"
    tt = sorted(f.ttft_s for f in done)
    if ttft_t is not None and tt[min(len(tt) - 1, int(ttft_pct / 100 * len(tt)))] > ttft_t:
        return False, "ttft"
    if itl_t is not None:
        it = sorted(f.itl_s for f in done if f.output_tokens > 1)
        if it and it[min(len(it) - 1, int(itl_pct / 100 * len(it)))] > itl_t:
            return False, "itl"
        gap = _gap_quantile(fleet, itl_pct)
        if gap is not None and gap > itl_t:
            return False, "itl"
    return True, ""


def _simulated(profile: ServerProfile, closed: Capacity, mean_in: float, mean_out: float, itl_t: float | None,
               ttft_t: float | None, itl_pct: float, ttft_pct: float, sigma_in: float, sigma_out: float,
               max_prompt: int | None, replicas: int, floor: float) -> Capacity:
    rng = random.Random(12345)
    n = max(2000, 250 * replicas)
    mu_in = math.log(mean_in) - sigma_in**2 / 2
    mu_out = math.log(mean_out) - sigma_out**2 / 2
    cap_in = max(1, min(profile.kv_capacity_tokens // 2, max_prompt or 1 << 30))  # vLLM rejects longer prompts
    toks = [(min(cap_in, max(1, int(rng.lognormvariate(mu_in, sigma_in)))), max(1, int(rng.lognormvariate(mu_out, sigma_out))))
            for _ in range(n)]
    gaps = [rng.expovariate(1.0) for _ in range(n)]

    def check(lam: float) -> tuple[bool, str]:
        fleet = [Engine(profile, record=True) for _ in range(replicas)]
        t = 0.0
        for i, (a, b) in enumerate(toks):
            t += gaps[i] / (lam * replicas)
            for e in fleet:
                e.advance(t)
            min(fleet, key=lambda e: e.outstanding).submit(Request(i, t, a, b))
        done = []
        for e in fleet:
            e.advance(t + 3600)
            done += e.drain_finished()
        done.sort(key=lambda f: f.id)
        done = done[n // 5 :]  # skip the warm-up fifth
        return _missed(fleet, done, itl_t, itl_pct, ttft_t, ttft_pct)

    lo = 0.0
    reason = "throughput"
    if floor > 0 and check(floor)[0]:
        lo, hi = floor, floor * 1.5
    else:
        hi = max(closed.requests_per_s * 1.3, 0.05)
    ok, why = check(hi)
    while ok and hi < 1e4:
        lo, hi = hi, hi * 2
        ok, why = check(hi)
    reason = why or reason
    for _ in range(9):
        if lo > 0 and hi - lo < 0.03 * hi:
            break
        mid = (lo + hi) / 2 if lo > 0 else hi / 4
        ok, why = check(mid)
        if ok:
            lo = mid
        else:
            hi, reason = mid, why
    if lo <= 0:
        return Capacity(0.0, math.inf, 0.0, f"infeasible: {reason} target unreachable even at low load")
    return Capacity(lo, closed.step_s_at_capacity, closed.batch_at_capacity, reason)


def steady_state_meets(profile: ServerProfile, mean_in: float, mean_out: float, lam: float, replicas: int,
                       itl_target_s: float | None, itl_pct: float, ttft_target_s: float | None, ttft_pct: float,
                       seed: int = 7, lengths: Sequence[tuple[int, int]] | None = None) -> bool:
    """Does a fleet of `replicas` behind a least-outstanding-requests router meet the targets at a
    Poisson rate of `lam` per replica, in steady state? The reference the capacity model is checked
    against: thousands of requests per replica (the first quarter discarded), long enough for the
    running batch and the KV cache to fill, where the short runs of `simulated_capacity` stop
    while long outputs are still arriving (they overstate what a pooled replica sustains by up to
    40 %). Seconds per call: a benchmark and test tool, never on the decision path. `lengths`:
    (prompt, output) tokens to draw each request from (a trace's own mix) instead of the lognormal
    mix with these means."""
    rng = random.Random(seed)
    n = 4000 + 1500 * replicas
    mu_in = math.log(mean_in) - DEFAULT_SIGMA_IN**2 / 2
    mu_out = math.log(mean_out) - DEFAULT_SIGMA_OUT**2 / 2
    cap_in = max(1, profile.kv_capacity_tokens // 2)
    fleet = [Engine(profile, record=True) for _ in range(replicas)]
    t = 0.0
    for i in range(n):
        t += rng.expovariate(lam * replicas)
        if lengths:
            a, b = lengths[rng.randrange(len(lengths))]
            a, b = min(cap_in, max(1, a)), max(1, b)
        else:
            a = min(cap_in, max(1, int(rng.lognormvariate(mu_in, DEFAULT_SIGMA_IN))))
            b = max(1, int(rng.lognormvariate(mu_out, DEFAULT_SIGMA_OUT)))
        for e in fleet:
            e.advance(t)
        min(fleet, key=lambda e: e.outstanding).submit(Request(i, t, a, b))
    done = []
    for e in fleet:
        e.advance(t + 36000)
        done += e.drain_finished()
    done.sort(key=lambda f: f.id)
    return _missed(fleet, done[n // 4:], itl_target_s, itl_pct, ttft_target_s, ttft_pct)[0]
