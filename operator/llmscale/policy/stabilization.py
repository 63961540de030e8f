"""Step: stabilization windows (HPA semantics) and per-decision step limits."""

from __future__ import annotations


def stabilize(
    desired: int,
    current: int,
    recommendations: tuple[tuple[float, int], ...],
    now: float,
    up_window_s: float,
    down_window_s: float,
) -> tuple[int, str | None]:
    """Scale up to the lowest recommendation of the up window, down to the highest of the down window."""
    if desired > current and up_window_s > 0:
        window = [r for t, r in recommendations if now - t <= up_window_s] + [desired]
        held = max(current, min(window))
        if held < desired:
            return held, "up"
    if desired < current and down_window_s > 0:
        window = [r for t, r in recommendations if now - t <= down_window_s] + [desired]
        held = min(current, max(window))
        if held > desired:
            return held, "down"
    return desired, None


def limit_step(desired: int, current: int, max_up: int, max_down: int) -> tuple[int, str | None]:
    if desired > current + max_up:
        return current + max_up, "up"
    if desired < current - max_down:
        return current - max_down, "down"
    return desired, None
