"""Step 3: the load to plan for over the cold-start horizon (pods take minutes to load weights).

Three things are planned for, whichever is highest:
- the current rate plus a damped upward trend;
- the recent peak, held for one cold start (a burst that came may come again before new capacity
  could be Ready) and, once bursts have been seen to come back, for as long as the quiet spells
  between them usually last (the burst memory): capacity released in a lull would be needed again
  before it could be Ready. When lulls are usually longer than 15 minutes, capacity is released
  after one cold start;
- today's queue, drained within the horizon.
An unknown request rate is not replaced by a stored sample: unknown means hold.
"""

from __future__ import annotations

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


def cold_start_s(spec: LLMDeploymentSpec, variant: Variant, workload: Workload) -> float:
    measured = workload.cold_start_s.get(variant.name)
    if measured:
        return measured
    return parse_duration(variant.cold_start) if variant.cold_start else DEFAULT_COLD_START_S


def trend_forecast(samples: tuple[tuple[float, float], ...], now: float, horizon_s: float) -> float | None:
    """Current rate plus the upward trend over the horizon (least squares over recent samples).

    Only upward trends are extrapolated: a falling trend is left to the burst memory and the
    scale-down window, since under-forecasting costs SLO and over-forecasting costs money.
    """
    if not samples:
        return None
    current = samples[-1][1]
    recent = [(t, v) for t, v in samples if now - t <= max(120.0, horizon_s)]
    if len(recent) < 3:
        return current
    n = len(recent)
    mt = sum(t for t, _ in recent) / n
    mv = sum(v for _, v in recent) / n
    var = sum((t - mt) ** 2 for t, _ in recent)
    if var <= 0:
        return current
    slope = sum((t - mt) * (v - mv) for t, v in recent) / var
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


def hold_time(gaps: tuple[float, ...], horizon_s: float, first_hold_s: float) -> float:
    """How long to hold a peak: one horizon, plus the lull that bursts usually come back within.
    Before two lulls have ended, `first_hold_s` (the scale-down window); when lulls are usually
    long, one horizon only."""
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
    hold = hold_time(history.burst_gaps, horizon, parse_duration(spec.scaling.scale_down.stabilization_window))
    rate = signals.request_rate
    if rate is None:
        return Forecast(None, horizon, hold, history)
    samples = _keep(history.rate_samples + ((now, rate),), now)
    trend = trend_forecast(samples, now, horizon) or rate
    peak = recent_peak(samples, now, hold) or rate
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
    if signals.requests_waiting:
        # Drain today's queue within the horizon, but never plan on draining faster than in two
        # minutes: a burst's backlog is transient and would otherwise overshoot to the ceiling.
        value += signals.requests_waiting / max(horizon, 120.0)
    return Forecast(value, horizon, hold, hist, reasons)
