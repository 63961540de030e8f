"""Step 3: the load to plan for over the cold-start horizon (pods take minutes to load weights).

Three things are planned for, whichever is highest:
- the current rate plus a damped upward trend;
- the recent peak, held for one cold start (a burst that came may come again before new capacity
  could be Ready) and, once bursts have been seen to come back, for as long as the quiet spells
  between them usually last (the burst memory): capacity released in a lull would be needed again
  before it could be Ready. When lulls are usually longer than 15 minutes, capacity is released
  after one cold start;
- today's queue, drained within the horizon, unless the replicas already drain it.
The load is what arrives, not only what vLLM counts as completed: while a queue builds, the replicas
complete fewer requests than arrive (at a burst's onset the completion rate says 4 req/s of a
36 req/s burst), and the difference is what the requests in flight (waiting + running) grew by since
the last decision. While a backlog drains the completions exceed the arrivals: the plan keeps the
higher of the two until the backlog is gone.
An unknown request rate is not replaced by a stored sample: unknown means hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration

from .reasons import Code, Reason
from .types import History, Signals, Workload

DEFAULT_COLD_START_S = 120.0
SAMPLES_KEPT_S = 1800.0  # the burst memory looks back this far
MAX_SAMPLES = 120
QUIET_SHARE = 0.5  # a lull: load under half the held peak
MAX_GAPS = 12  # quiet spells remembered
GAP_QUANTILE = 0.9  # hold through nine lulls in ten
LONG_GAP_S = 900.0  # lulls usually (median) longer than this release capacity after one cold start


@dataclass(frozen=True)
class Forecast:
    rate: float | None  # requests/s to plan for; None when the current rate is unknown
    horizon_s: float  # cold start + one interval: the time a decision taken now needs to take effect
    hold_s: float  # how long a peak is held
    history: History
    reasons: tuple[Reason, ...] = ()
    arrivals: float | None = None  # requests/s arriving since the last decision; None when unknown
    draining: bool = False  # the waiting queue shrank since the last decision: the replicas carry the load


def cold_start_s(spec: LLMDeploymentSpec, variant: Variant, workload: Workload) -> float:
    measured = workload.cold_start_s.get(variant.name)
    if measured:
        return measured
    return parse_duration(variant.cold_start) if variant.cold_start else DEFAULT_COLD_START_S


def arrival_rate(completions: float, signals: Signals, seen: tuple[float, float, float] | None, now: float,
                 max_age_s: float) -> tuple[float | None, bool]:
    """Requests arriving per second since the last decision (completions plus the growth of the
    requests in flight), and whether the waiting queue shrank since then. (None, False) without
    both gauges now and at a decision at most `max_age_s` ago.

    A growth within chance is no evidence: arrivals and completions are each Poisson-like, so over
    dt the count in flight moves by about sqrt(2 x rate x dt) with a steady load; a change within
    twice that leaves the completion rate as the arrival rate (the burst memory keeps the highest
    sample for half an hour, and would keep the noise).
    """
    waiting, running = signals.requests_waiting, signals.requests_running
    if waiting is None or running is None or seen is None or not 0 < now - seen[0] <= max_age_s:
        return None, False
    t0, waiting0, running0 = seen
    dt = now - t0
    change = waiting + running - waiting0 - running0
    drained = waiting < waiting0
    if abs(change) <= 2 * math.sqrt(2 * completions * dt + 1):
        return completions, drained
    return max(0.0, completions + change / dt), drained


def _slope(points: list[tuple[float, float]]) -> float | None:
    n = len(points)
    if n < 3:
        return None
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / var


def trend_forecast(samples: tuple[tuple[float, float], ...], now: float, horizon_s: float) -> float | None:
    """Current rate plus the upward trend over the horizon (least squares over recent samples).

    Only upward trends are extrapolated: a falling trend is left to the burst memory and the
    scale-down window, since under-forecasting costs SLO and over-forecasting costs money.
    """
    if not samples:
        return None
    current = samples[-1][1]
    recent = [(t, v) for t, v in samples if now - t <= max(120.0, horizon_s)]
    slope = _slope(recent)
    if slope is None:
        return current
    if slope <= 0:
        return current
    # Damp the extrapolation: a trend seen over a short window is weak evidence.
    return current + 0.5 * slope * horizon_s


def recent_peak(samples: tuple[tuple[float, float], ...], now: float, hold_s: float) -> float | None:
    """The highest rate seen within `hold_s`."""
    recent = [v for t, v in samples if now - t <= hold_s]
    return max(recent) if recent else None


def quantile(values: tuple[float, ...], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def error_budget(samples: tuple[tuple[float, float], ...], miss_share: float) -> float:
    """Requests the SLO allows to miss over the burst memory: `miss_share` of the requests it holds
    (the mean of the samples kept, over the whole span; thinning keeps peaks, so this errs high)."""
    return miss_share * sum(v for _, v in samples) / len(samples) * SAMPLES_KEPT_S if samples else 0.0


def budget_exceeded(samples: tuple[tuple[float, float], ...], peak: float, horizon_s: float, miss_share: float) -> bool:
    """Would one returning burst spend more than the SLO's error budget over the burst memory?

    Capacity released in a lull is back a horizon after the burst returns; until then the queue
    grows and nearly every request misses: about peak x horizon misses. The SLO allows
    `miss_share` of the requests to miss; over the memory (SAMPLES_KEPT_S) that is miss_share x the
    requests it holds (the mean of the samples kept, over the whole span).
    """
    if not samples or peak <= 0:
        return False
    return peak * horizon_s > error_budget(samples, miss_share)


def held_share(peak: float, horizon_s: float, ttft_target_s: float, budget: float) -> float:
    """The share of a peak to hold so that a returning burst's misses fit the error budget.

    With capacity C < peak P the queue grows at P - C and its delay at (P - C) / C per second: it
    passes the TTFT target after ttft x C / (P - C) seconds, and from then until new replicas are
    Ready (the horizon) about every request misses. Holding C = P x h / (ttft + h), where
    h = horizon - budget / P, keeps those misses within the budget: nearly the whole peak for a
    1 s target (0.99 at a 105 s horizon), less where the target itself absorbs a queue (0.90 for a
    10 s target).
    """
    if peak <= 0:
        return 1.0
    h = horizon_s - budget / peak
    if h <= 0:
        return 0.0
    return h / (ttft_target_s + h)


def hold_time(gaps: tuple[float, ...], horizon_s: float, first_hold_s: float, over_budget: bool = False) -> float:
    """How long to hold a peak. Once bursts have been seen to come back (a lull ended), and a
    returning burst would spend more than the error budget (`over_budget`), for the whole burst
    memory: capacity is released only once the peak is half an hour old. Otherwise one horizon, plus the lull that bursts usually come back within; before
    two lulls have ended, `first_hold_s` (the scale-down window); when lulls are usually long, one
    horizon only."""
    if over_budget and gaps:
        return SAMPLES_KEPT_S
    if len(gaps) < 2:
        return max(horizon_s, first_hold_s)
    if quantile(gaps, 0.5) > LONG_GAP_S:
        return horizon_s
    return horizon_s + min(quantile(gaps, GAP_QUANTILE), LONG_GAP_S)


def _keep(samples: tuple[tuple[float, float], ...], now: float) -> tuple[tuple[float, float], ...]:
    recent = [(t, v) for t, v in samples if now - t <= SAMPLES_KEPT_S]
    while len(recent) > MAX_SAMPLES:
        # Thin the older half by pairs, keeping each pair's peak (at the later time, so a held peak
        # is never forgotten early): the burst memory lives on peaks.
        half = len(recent) // 2 // 2 * 2
        old = [(recent[i + 1][0], max(recent[i][1], recent[i + 1][1])) for i in range(0, half, 2)]
        recent = old + recent[half:]
    return tuple(recent)


def forecast(spec: LLMDeploymentSpec, variant: Variant, workload: Workload, signals: Signals, history: History,
             now: float) -> Forecast:
    interval = parse_duration(spec.scaling.interval)
    horizon = cold_start_s(spec, variant, workload) + interval
    completions = signals.request_rate
    waiting, running = signals.requests_waiting, signals.requests_running
    seen = None if waiting is None or running is None else (now, waiting, running)
    first_hold = parse_duration(spec.scaling.scale_down.stabilization_window)
    if completions is None:
        return Forecast(None, horizon, hold_time(history.burst_gaps, horizon, first_hold), history.with_(queue_seen=seen))
    arrivals, draining = arrival_rate(completions, signals, history.queue_seen, now,
                                      parse_duration(spec.metrics.rate_window))
    rate = completions if arrivals is None else max(completions, arrivals)
    history = history.with_(queue_seen=seen)
    samples = _keep(history.rate_samples + ((now, rate),), now)
    miss_share = 1 - (spec.slo.ttft.percentile / 100 if spec.slo.ttft else 0.95)
    longest = recent_peak(samples, now, SAMPLES_KEPT_S) or rate
    over_budget = budget_exceeded(samples, longest, horizon, miss_share)
    hold = hold_time(history.burst_gaps, horizon, first_hold, over_budget)
    trend = trend_forecast(samples, now, horizon) or rate
    peak = recent_peak(samples, now, hold) or rate
    if over_budget and history.burst_gaps and spec.slo.ttft:
        # Held for the error budget: as much of the peak as keeps a returning burst's misses in it.
        peak = max(rate, peak * held_share(peak, horizon, spec.slo.ttft.seconds, error_budget(samples, miss_share)))
    # The burst memory: the length of each lull, counted once, when the load comes back to the
    # peak the lull fell from (not when that peak drops out of the hold: a lull outlasts it).
    hist = history.with_(rate_samples=samples)
    if history.quiet_since is None:
        if rate < QUIET_SHARE * peak:
            hist = hist.with_(quiet_since=now, lull_peak=peak)
    elif rate >= QUIET_SHARE * (history.lull_peak or 0.0):
        gap = now - history.quiet_since
        hist = hist.with_(quiet_since=None, lull_peak=None, burst_gaps=(history.burst_gaps + (gap,))[-MAX_GAPS:])
    value = max(trend, peak)
    reasons: tuple[Reason, ...] = ()
    if peak > max(trend, rate) * 1.05 and peak > 0:
        reasons = (Reason(Code.BURST_MEMORY, f"holding capacity for the {peak:.2f} req/s peak of the last {hold:.0f}s "
                          f"(now {rate:.2f} req/s)"),)
    if waiting and not draining:
        # Drain today's queue within the horizon, but never plan on draining faster than in two
        # minutes: a burst's backlog is transient and would otherwise overshoot to the ceiling.
        # A queue that already shrinks needs nothing more: vLLM's queue is per pod, so replicas
        # added now would serve only new arrivals, which the plan already counts.
        value += waiting / max(horizon, 120.0)
    return Forecast(value, horizon, hold, hist, reasons, arrivals, draining)
