"""Capacity at the SLO from a queueing model of the engine: no simulation, a few milliseconds per
token mix, so a decision never waits on a simulated fleet.

The engine simulator (`perf.engine`) is the reference; this model reproduces what it finds for a
fleet behind a least-outstanding-requests router (`bench/capacity_model.py` prints the agreement,
`tests/perf/test_queueing.py` bounds it). What the simulation taught, modelled:

- Steps come in two kinds. A decode-only step costs the weights and the batch's KV reads; a step
  that carries a prompt chunk is compute-bound and long. Averaging prefill into every step (the
  closed form of `perf.capacity`) lets compute hide behind memory reads that in a real step it
  cannot, and underestimates both the mean gap and the decode batch.
- Inter-token latency is vLLM's histogram, one observation per gap: the percentile sits in the
  decode steps while fewer than (1 - p) of the steps carry prefill, then jumps to the prefill
  steps. Prompts queue for prefill and share a step: for one replica their number is geometric in
  the prefill queue's load (a clump of arrivals makes full-budget steps of 100-250 ms), and the
  router spreads clumps as the fleet grows (dispersion / sqrt(fleet)). Each request's mean gap
  is checked too: a 30-token answer that meets two long prefill steps misses on its mean.
- Time to first token is one's own prefill plus the wait for the prefill work ahead: an M/G/n
  queue whose service is each prompt's prefill steps. The chance of waiting is Erlang C, and the
  wait's tail decays at the Cramer-Lundberg rate of that service. Lognormal prompts make the real
  tail heavier than that exponential: the rate is scaled by TAIL_RATE_SCALE, fitted once to the
  steady-state simulation (`bench/capacity_model.py`: over 48 mixes, SLOs and fleet sizes the
  model is within 3 % on average, worst 17 % low and 9 % high).
- The KV cache and the sequence slots hold the running requests, which are the long ones (a
  request runs as long as its output): a request that finds them full waits for a completion.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from statistics import NormalDist
from typing import NamedTuple

from . import buckets
from .capacity import (
    DEFAULT_SIGMA_IN,
    DEFAULT_SIGMA_OUT,
    POOL_ANCHORS,
    Capacity,
    _snap,
    unloaded_floor,
)
from .hardware import ServerProfile
from .histogram import attainment

TAIL_RATE_SCALE = 0.85  # fitted to the steady-state simulation (module docstring)
MERGE_DISPERSION = 1.0  # prompts sharing a prefill step: Poisson for one replica, / sqrt(fleet) beyond
RELATIVE_PRECISION = 0.01  # the search stops when the bracket is this narrow

# Quadrature over the token-length distribution: probability bins that are dense in the upper
# tail, where the SLO percentiles (p95, p99) are decided.
_BIN_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998,
              0.999, 1.0)
_NORMAL = NormalDist()
_NODES = tuple((_NORMAL.inv_cdf((a + b) / 2), b - a) for a, b in zip(_BIN_EDGES, _BIN_EDGES[1:], strict=False))


_RESIDUAL = (0.125, 0.375, 0.625, 0.875)


_SQRT2 = math.sqrt(2)


def _phi(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1 + math.erf(z / _SQRT2))


def _lengths(mean: float, sigma: float, cap: float) -> tuple[tuple[float, float], ...]:
    """(length, probability) nodes of a lognormal with this mean, capped."""
    mu = math.log(mean) - sigma**2 / 2
    return tuple((min(cap, max(1.0, math.exp(mu + sigma * z))), w) for z, w in _NODES)


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/n with `offered` = arrival rate x service time."""
    if offered >= servers:
        return 1.0
    total, term = 1.0, 1.0
    for k in range(1, servers):
        term *= offered / k
        total += term
    last = term * offered / servers * servers / (servers - offered)
    return last / (total + last)


Lengths = tuple[tuple[float, float], ...]


class Mix:
    """The token mix as the model integrates over it, with the moments that do not depend on load."""

    __slots__ = ("mean_in", "mean_out", "prompts", "outputs", "running_out", "reserve_mean", "reserve_second")

    def __init__(self, mean_in: float, mean_out: float, sigma_in: float, sigma_out: float, max_prompt: float) -> None:
        self.mean_in, self.mean_out = mean_in, mean_out
        self.prompts = _lengths(mean_in, sigma_in, max_prompt)
        self.outputs = _lengths(mean_out, sigma_out, math.inf)
        # A request runs for as long as its output, so the running ones are the long ones: their
        # mean output is E[O^2] / E[O] (2.7x the mean at sigma 1), and so are their reservations.
        eo = sum(o * w for o, w in self.outputs)
        self.running_out = sum(o * o * w for o, w in self.outputs) / eo
        mean = second = 0.0
        for o, wo in self.outputs:
            for x, wi in self.prompts:
                share = wo * wi * o / eo
                mean += share * (x + o)
                second += share * (x + o) ** 2
        self.reserve_mean, self.reserve_second = mean, second


class _State:
    """One replica in steady state at arrival rate `lam`."""

    __slots__ = ("gap", "busy_share", "batch", "decode_step", "prefill_steps", "prefill_share", "merged", "own",
                 "saved", "batch_int", "context", "budget")

    def __init__(self, profile: ServerProfile, lam: float, mix: Mix, gap: float | None = None) -> None:
        # The mean gap between steps fixes the decode batch, which fixes the steps: solve the
        # fixed point by secant from a warm start (the search asks about nearby rates in turn).
        g0 = gap or profile.step_seconds(1, mix.mean_in, 0)
        h0 = self._settle(profile, lam, mix, g0) - g0
        g1 = g0 + h0
        for _ in range(40):
            h1 = self._settle(profile, lam, mix, g1) - g1
            if abs(h1) < 1e-5 * g1:
                break
            slope = (h1 - h0) / (g1 - g0) if g1 != g0 else -1.0
            nxt = g1 - h1 / slope if slope < -1e-9 else g1 + h1 / 2
            g0, h0, g1 = g1, h1, max(1e-6, nxt if nxt > 0 else g1 / 2)
        else:
            raise OverflowError  # no steady state: the replica saturates
        if self.batch > profile.max_num_seqs or self.busy_share >= 1:
            raise OverflowError
        self.gap = g1

    def _settle(self, profile: ServerProfile, lam: float, mix: Mix, gap: float) -> float:
        """The mean gap that a decode batch sized by `gap` produces; the state is kept."""
        self.batch = lam * mix.mean_out * gap
        b = max(1, min(profile.max_num_seqs, round(self.batch)))  # beyond it requests wait, not run
        ctx = self.batch * (mix.mean_in + mix.running_out / 2)
        budget = max(1, profile.max_batched_tokens - b)
        decode = profile.step_seconds(b, ctx, 0)
        own: list[tuple[float, float]] = []
        steps: list[tuple[float, float]] = []
        chunks = busy = 0.0
        for x, w in mix.prompts:
            full, rest = divmod(int(x), budget)
            s = 0.0
            for j in range(full):
                d = profile.step_seconds(b, ctx, budget, j * budget + budget / 2)
                s += d
                steps.append((d, w))
            if rest:
                d = profile.step_seconds(b, ctx, rest, full * budget + rest / 2)
                s += d
                steps.append((d, w))
            chunks += w * (full + (1 if rest else 0))
            busy += w * s
            own.append((s, w))
        # Prompts that arrive during a prefill step share the next one and its fixed cost.
        merged = min(1 + lam * busy / chunks, max(1.0, budget / max(1.0, mix.mean_in)))
        per_s = lam * chunks / merged
        share = lam * busy - (lam * chunks - per_s) * decode
        self.busy_share = share
        if share >= 1:  # more prefill than time: the gap grows without bound, say so steeply
            return gap * 2 + decode
        decode_per_s = (1 - share) / decode
        self.decode_step = decode
        self.prefill_steps = steps
        self.prefill_share = per_s / (per_s + decode_per_s)
        self.merged = merged
        self.saved = decode * (1 - 1 / merged)
        self.own = own
        self.batch_int, self.context, self.budget = b, ctx, budget
        return 1 / (per_s + decode_per_s)


def _sharers(st: _State, mean_in: float, replicas: int) -> list[tuple[float, float]]:
    """(other prompts in a prefill step, probability). Prompts queue for prefill like customers of
    a single server busy `busy_share` of the time: for one replica their number is geometric
    (bursts of arrivals make full-budget steps); the router spreads bursts over a fleet, so the
    spread shrinks as dispersion / sqrt(fleet) around the mean. Counts that fill the token budget
    make the same step and are lumped."""
    disp = MERGE_DISPERSION / math.sqrt(replicas)
    out: list[tuple[float, float]] = [(st.merged - 1, 1 - disp)]
    rho = min(0.98, max(0.0, st.busy_share))
    full = math.ceil(st.budget / max(1.0, mean_in))
    p = 1 - rho
    k = 0
    while k < full and p > 1e-5:
        out.append((k, disp * p))
        k += 1
        p *= rho
    if k == full:
        out.append((full, disp * rho**full))  # the rest of the geometric tail: all full-budget steps
    return out


class _Gaps(NamedTuple):
    """The inter-token gaps at one load: by how much a prefill-carrying step outlasts a decode step
    (mean and second moment), and every gap as vLLM's histogram would count it (cumulative)."""

    mean: float
    second: float
    histogram: list[float]


def _prefill_gaps(profile: ServerProfile, st: _State, mix: Mix, replicas: int) -> _Gaps:
    """The gaps over the prefill-carrying steps (each prompt's chunks, with the prompts that share
    the step) and the decode-only ones, in one pass: the capacity search reads them at every rate."""
    total = sum(w for _, w in st.prefill_steps)
    dec, f, itl = st.decode_step, st.prefill_share, buckets.ITL
    counts = [0.0] * (len(itl) + 1)
    counts[bisect.bisect_left(itl, dec)] += 1 - f
    d1 = d2 = 0.0
    for k, kw in _sharers(st, mix.mean_in, replicas):
        tokens = min(k * mix.mean_in, st.budget)
        shared = profile.step_seconds(st.batch_int, st.context, int(tokens), tokens / 2) if tokens >= 1 else dec
        for d, w in st.prefill_steps:
            extra, q = d + shared - 2 * dec, kw * w / total
            d1 += extra * q
            d2 += extra * extra * q
            counts[bisect.bisect_left(itl, dec + extra)] += f * q
    acc = 0.0
    for i, c in enumerate(counts):
        acc += c
        counts[i] = acc
    return _Gaps(d1, d2, counts)


def _itl_attainment(gaps: _Gaps, target: float) -> float:
    """Share of inter-token gaps at or under target, read from vLLM's buckets as Prometheus would."""
    share, _ = attainment(target, buckets.ITL, gaps.histogram)
    return 1.0 if share is None else share


def _request_itl_attainment(st: _State, mix: Mix, gaps: _Gaps, target: float) -> float:
    """Share of requests whose mean inter-token latency is at or under target. A request with g gaps
    meets a Poisson number (mean f g) of prefill-carrying steps, each longer than a decode step by
    delta; short outputs meet few, so one long prefill decides their mean."""
    d1, d2 = gaps.mean, gaps.second
    sd = math.sqrt(max(0.0, d2 - d1 * d1))
    erf, sqrt = math.erf, math.sqrt
    ok = weight = 0.0
    for o, w in mix.outputs:
        if o < 2:
            continue
        n_gaps = o - 1
        weight += w
        slack = (target - st.decode_step) * n_gaps
        if slack <= 0:
            continue
        mu = st.prefill_share * n_gaps
        if mu > 20:  # many prefill steps: their sum is close to normal
            ok += w * _phi((slack - mu * d1) / math.sqrt(mu * d2))
            continue
        p = math.exp(-mu)
        part = p  # no prefill step met: the mean is the decode step, within target
        k = 0
        while k < 200:
            k += 1
            p *= mu / k
            term = 0.5 * (1 + erf((slack - k * d1) / (sqrt(k) * sd + 1e-12) / _SQRT2))  # _phi, inlined: the hot loop
            part += p * term
            if k > mu and (p < 1e-7 or term < 1e-7):  # both fall from here on
                break
        ok += w * part
    return ok / weight if weight else 1.0


def blocking(profile: ServerProfile, batch: float, mix: Mix) -> float:
    """Chance that the KV space reserved by the running requests (prompt + output each, reserved at
    admission) or the sequence slots leave no room for the next, which then waits for a completion.
    The running requests are a Poisson number (mean `batch`), each seen with the chance its output
    length gives it; their reservations sum to a compound Poisson variable, read with its normal
    approximation."""
    if batch <= 0:
        return 0.0
    room = profile.kv_capacity_tokens - mix.mean_in
    kv = 1 - _NORMAL.cdf((room - batch * mix.reserve_mean) / math.sqrt(batch * mix.reserve_second))
    seqs = 1 - _NORMAL.cdf((profile.max_num_seqs - 0.5 - batch) / math.sqrt(batch))
    return 1 - (1 - kv) * (1 - seqs)


def _ttft_attainment(lam: float, st: _State, target: float, replicas: int) -> float:
    """Share of requests whose first token comes within target: own prefill plus the M/G/n wait."""
    service = [(max(1e-6, v - st.saved), w) for v, w in st.own]
    mean = sum(v * w for v, w in service)
    rho = lam * mean
    if rho >= 1:
        return 0.0
    waits = erlang_c(replicas, replicas * rho)
    # Cramer-Lundberg: lam_n (E[exp(g V/n)] - 1) = g, by Newton from the diffusion estimate.
    lam_n = lam * replicas
    g = 2 * (1 - rho) * mean / sum(v * v * w for v, w in service) * replicas
    exp = math.exp
    for _ in range(30):
        s0 = s1 = 0.0
        for v, w in service:
            vn, z = v / replicas, g * v / replicas
            x = exp(z if z < 50.0 else 50.0)
            s0 += w * x
            s1 += w * vn * x
        f = lam_n * (s0 - 1) - g
        fd = lam_n * s1 - 1
        if fd <= 0:
            break
        step = f / fd
        g -= step
        if abs(step) < 1e-6 * g:
            break
    rate = max(g, 1e-6) * TAIL_RATE_SCALE
    ok = 0.0
    for r in _RESIDUAL:  # an arrival waits out the step in progress: uniform over one step
        residual = st.decode_step * r
        for v, w in service:
            slack = target - v - st.saved - residual
            if slack > 0:
                ok += w * (1 - waits * math.exp(-rate * slack))
    return ok / len(_RESIDUAL)


class Targets(NamedTuple):
    itl_s: float | None
    ttft_s: float | None
    itl_pct: float
    ttft_pct: float


def _margin(profile: ServerProfile, lam: float, replicas: int, mix: Mix, slo: Targets,
            states: dict[float, _State | None]) -> tuple[float, str]:
    """How far rate `lam` is inside the SLO (>= 0: met), with the first limit it misses. Margins
    are shares (of the KV cache, of the sequence slots, of requests within target): continuous in
    the rate, so the search can interpolate. States are kept by rate: fleet sizes share them."""
    st = states.get(lam, _MISSING)
    if st is _MISSING:
        warm = next((s.gap for s in reversed(states.values()) if s is not None), None)
        try:
            st = _State(profile, lam, mix, warm)
        except OverflowError:
            st = None
        states[lam] = st
    if not isinstance(st, _State):
        return -1.0, "throughput"
    margins = [(0.9 - st.batch * (mix.mean_in + mix.running_out) / profile.kv_capacity_tokens, "kv-cache"),
               (0.9 - st.batch / profile.max_num_seqs, "max-num-seqs")]
    if min(margins)[0] < 0:  # over what the replica holds: the latencies need not be read
        return min(margins)
    if slo.itl_s is not None:
        if slo.itl_s <= st.decode_step:
            return slo.itl_s / st.decode_step - 1, "itl"
        gaps = _prefill_gaps(profile, st, mix, replicas)
        margins.append((min(_itl_attainment(gaps, slo.itl_s),
                            _request_itl_attainment(st, mix, gaps, slo.itl_s)) - slo.itl_pct / 100, "itl"))
    if slo.ttft_s is not None:
        blocked = blocking(profile, st.batch, mix)
        margins.append(((1 - blocked) * _ttft_attainment(lam, st, slo.ttft_s, replicas) - slo.ttft_pct / 100,
                        "kv-cache" if blocked > 1 - slo.ttft_pct / 100 else "ttft"))
    return min(margins)


_MISSING = object()


def _largest_rate(f: Callable[[float], tuple[float, str]], lo: float, f_lo: float, hi: float, f_hi: float,
                  reason: str) -> tuple[float, str]:
    """The largest rate in [lo, hi] with f >= 0, given f(lo) >= 0 > f(hi), to RELATIVE_PRECISION:
    the secant where the margins are informative, a halving where they are not (a saturated
    replica has no margin, only -1; an attainment far from its target is flat) or where the
    last secant step left the bracket more than half as wide."""
    last = math.inf
    while hi - lo > RELATIVE_PRECISION * hi:
        span = hi - lo
        if f_hi > -1 and f_lo > 0 and span < 0.5 * last:
            x = hi - f_hi * span / (f_hi - f_lo)
            x = min(max(x, lo + 0.02 * span), hi - 0.02 * span)
        else:
            x = (lo + hi) / 2
        last = span
        fx, why = f(x)
        if fx >= 0:
            lo, f_lo = x, fx
        else:
            hi, f_hi, reason = x, fx, why
    return lo, reason


def modelled_curve(
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
) -> tuple[tuple[int, Capacity], ...]:
    """The question `perf.capacity.simulated_capacity` answers by simulation, without one: the
    largest Poisson arrival rate per replica that meets the targets, as (fleet size, capacity per
    replica) at the POOL_ANCHORS, for `at_fleet_size` to read a fleet of any size from."""
    return _model_curve(profile, _snap(mean_in), _snap(mean_out),
                        None if itl_target_s is None else round(itl_target_s, 4),
                        None if ttft_target_s is None else round(ttft_target_s, 4),
                        itl_pct, ttft_pct, round(sigma_in, 1), round(sigma_out, 1), max_prompt)


def _rate_ceiling(profile: ServerProfile, mix: Mix) -> float:
    """A rate per replica that no SLO allows: the largest batch the KV cache and the sequence slots
    hold, turned over no faster than a decode step of that batch (a decode step is the shortest
    gap, and tokens per second grow with the batch)."""
    batch = min(0.9 * profile.max_num_seqs, 0.9 * profile.kv_capacity_tokens / (mix.mean_in + mix.running_out))
    step = profile.step_seconds(max(1, round(batch)), batch * (mix.mean_in + mix.running_out / 2), 0)
    return batch / (mix.mean_out * step)


@functools.lru_cache(maxsize=4096)
def _model_curve(profile: ServerProfile, mean_in: float, mean_out: float, itl_t: float | None, ttft_t: float | None,
                 itl_pct: float, ttft_pct: float, sigma_in: float, sigma_out: float,
                 max_prompt: int | None) -> tuple[tuple[int, Capacity], ...]:
    floor = unloaded_floor(profile, mean_in, mean_out, itl_t, ttft_t)
    if floor is not None:
        return ((1, floor),)
    mix = Mix(mean_in, mean_out, sigma_in, sigma_out, max(1, min(profile.kv_capacity_tokens // 2, max_prompt or 1 << 30)))
    slo = Targets(itl_t, ttft_t, itl_pct, ttft_pct)
    states: dict[float, _State | None] = {}
    found: dict[int, Capacity] = {}
    # Largest fleet first: what a replica sustains grows with the fleet, so each answer brackets
    # the next (fleet of 1 below the largest, the middle between them) and the searches stay short.
    biggest, smallest = max(POOL_ANCHORS), min(POOL_ANCHORS)
    order = [biggest, smallest] + [n for n in POOL_ANCHORS if n not in (biggest, smallest)]
    for n in order:
        def f(lam: float, n: int = n) -> tuple[float, str]:
            return _margin(profile, lam, n, mix, slo, states)

        below = [c.requests_per_s for m, c in found.items() if m < n]
        above = [c.requests_per_s for m, c in found.items() if m > n]
        hi = min(above) if above else _rate_ceiling(profile, mix)
        f_hi, reason = f(hi)
        if f_hi >= 0:
            lo = hi
            reason = found[min(m for m in found if m > n)].limited_by if above else "throughput"
        else:
            lo = max(below) if below else hi / 2
            while True:
                f_lo, why = f(lo)
                if f_lo >= 0:
                    break
                hi, f_hi, reason = lo, f_lo, why
                lo /= 4
                if lo < 1e-5:
                    if n == biggest:
                        return ((1, Capacity(0.0, math.inf, 0.0,
                                             f"infeasible: {reason} target unreachable even at low load")),)
                    lo, f_lo = 0.0, 0.0
                    break
            if lo > 0:
                lo, reason = _largest_rate(f, lo, max(f_lo, 0.0), hi, f_hi, reason)
        at = states.get(lo)
        found[n] = Capacity(lo, at.gap if isinstance(at, _State) else math.inf,
                            at.batch if isinstance(at, _State) else 0.0, reason or "throughput")
    out = [(n, found[n]) for n in POOL_ANCHORS]
    return tuple(out)
