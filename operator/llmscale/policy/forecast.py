"""Step: the load to plan for, over the cold-start horizon (pods take minutes to load weights)."""

from __future__ import annotations

DEFAULT_COLD_START_S = 120.0


def trend_forecast(samples: tuple[tuple[float, float], ...], now: float, horizon_s: float) -> float | None:
    """Current rate plus the upward trend over the horizon (least squares over recent samples).

    Only upward trends are extrapolated: a falling trend is left to the scale-down
    stabilization window, since under-forecasting costs SLO and over-forecasting costs money.
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


def recent_peak(samples: tuple[tuple[float, float], ...], now: float, horizon_s: float) -> float | None:
    """The highest rate seen within one cold-start horizon: a burst that came once may come again
    before new capacity could be Ready, so capacity is not released under it."""
    recent = [v for t, v in samples if now - t <= horizon_s]
    return max(recent) if recent else None
