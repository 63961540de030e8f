"""Step 9: stabilization windows (HPA's, with the recommendations recorded as below), the panic
hold, step limits, and no scale-up while pods wait for GPUs.

A window is measured from the recommendations, as HPA does: a scale-down to N happens only when
every recommendation of the last scaleDown.stabilizationWindow was N or less. The recommendations
are recorded inside the bounds and ceilings, so a spike that wanted more than the ceiling holds the
ceiling no longer than any other recommendation would; and a count held only while a backlog
drains is recorded as what the load asked for (Proposal.load_asks), since the hold ends with its cause
(the backlog of a first burst, drained on six replicas where the load asked for four, held the six
for a window after it was gone); and a plan is recorded as the count the tolerance band keeps for
its load, not its rounding up (policy/plan.py), unless the plan scales up: so the window runs
from the last decision whose load passed the band (HPA's records today's count inside the band,
the plan's beyond it). A recommendation stands until the next one:
the newest made before the scale-down window began still counts, so a gap in the decisions (the API
server or the operator down, a restart) is not time the load was seen to stay low. Without this, a
recommendation of 3 aged out of a 60 s window during an outage and the first decision after it
scaled 3 -> 2 (CI). With steady decisions it lengthens the window by one gap between decisions (an
interval, or a 5 s timer tick for shorter intervals).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration

from .ceilings import within_bounds
from .reasons import Code, Reason
from .types import History, Proposal, Workload


def stabilize(
    desired: int,
    current: int,
    recommendations: tuple[tuple[float, int], ...],
    now: float,
    up_window_s: float,
    down_window_s: float,
) -> tuple[int, str | None]:
    """Scale up to the lowest recommendation of the up window, down to the highest of the down window
    and of the newest recommendation before it (it stands until the next): "carried" when that one
    alone holds the scale-down."""
    if desired > current and up_window_s > 0:
        # Recommendations dated after now (a clock that stepped back) hold nothing up: a scale-up
        # held by them would wait as long as the step. (In the down window they hold, the safe side.)
        window = [r for t, r in recommendations if 0 <= now - t <= up_window_s] + [desired]
        held = max(current, min(window))
        if held < desired:
            return held, "up"
    if desired < current and down_window_s > 0:
        window = [r for t, r in recommendations if now - t <= down_window_s] + [desired]
        before = standing_before(recommendations, now, down_window_s)
        held = min(current, max(window + ([before[1]] if before else [])))
        if held > desired:
            return held, ("down" if held <= max(window) else "carried")
    return desired, None


def standing_before(recommendations: tuple[tuple[float, int], ...], now: float, window_s: float) -> tuple[float, int] | None:
    """The newest recommendation made before the window began (it stood into the window)."""
    older = [(t, r) for t, r in recommendations if now - t > window_s]
    return max(older, key=lambda x: x[0]) if older else None


def limit_step(desired: int, current: int, max_up: int, max_down: int) -> tuple[int, str | None]:
    if desired > current + max_up:
        return current + max_up, "up"
    if desired < current - max_down:
        return current - max_down, "down"
    return desired, None


@dataclass(frozen=True)
class Stabilized:
    proposal: Proposal
    history: History
    # The count the panic hold or the scale-down window keep (before scaleDown.maxStep), None when
    # neither holds: what a switch for a saving waits on (the step limit is no reason to wait).
    held_down: int | None = None


def stabilization(spec: LLMDeploymentSpec, variant: Variant, workload: Workload, proposal: Proposal, to_zero: bool,
                  history: History, now: float, rising: tuple[float, float] | None = None) -> Stabilized:
    """`rising`: the load rose since the decision before (forecast.rising_since), (from, to) req/s:
    no scale-down then (a plan that shrinks while the load climbs read a lull's mix or a held peak's
    end, never the load to come)."""
    sc = spec.scaling
    current = workload.replicas
    interval = parse_duration(sc.interval)
    up_w = parse_duration(sc.scale_up.stabilization_window)
    down_w = parse_duration(sc.scale_down.stabilization_window)
    span = max(up_w, down_w)
    before = standing_before(history.recommendations, now, span)
    recs = ((before,) if before else ()) + tuple((t, r) for t, r in history.recommendations if now - t <= span)
    # A scale-up is recorded as the count it goes to: the plan's rounding past the tolerance band
    # is what the load asked for then, and a scale-up not held for the window would be undone by
    # the next noisy decision, pods still loading (the band's count is recorded at today's count
    # or below only).
    recommendation = within_bounds(spec, variant, proposal.replicas if proposal.replicas > current
                                   else proposal.recommendation, to_zero)
    out = proposal
    held_down: int | None = None
    if history.panic_until is not None and now < history.panic_until and out.replicas < current:
        out = out.to(current, Reason(Code.PANIC, f"scale-down to {out.replicas} suspended until the burst passes"))
        held_down = current
    if rising is not None and out.replicas < current:
        out = out.to(current, Reason(Code.SCALE_DOWN_STABILIZED, f"held at {current}: the load is rising "
                                     f"({rising[0]:.2f} -> {rising[1]:.2f} req/s since the decision before)"))
        held_down = current
    observing_since = history.observing_since if history.observing_since is not None else now
    if to_zero and out.replicas == 0:
        held_to, held = 0, None  # scaleToZero.idleFor is this step's own stabilization
    else:
        held_to, held = stabilize(out.replicas, current, recs, now, up_w, down_w)
        # A window not yet covered by history (a new deployment, a lost status) proves nothing about
        # the recent past: do not scale down until it is.
        if held_to < current and down_w > 0 and observing_since > now - down_w + interval / 2:
            held_to, held = current, "unseen"
    if held == "up":
        out = out.to(held_to, Reason(Code.SCALE_UP_STABILIZED, f"held at {held_to} (lowest recommendation in {sc.scale_up.stabilization_window})"))
    elif held == "unseen":
        out = out.to(held_to, Reason(Code.SCALE_DOWN_STABILIZED, f"held at {held_to}: decisions cover only the last "
                                     f"{now - observing_since:.0f}s of the {sc.scale_down.stabilization_window} window "
                                     "(a new deployment or a lost status)"))
    elif held == "carried":
        last = standing_before(recs, now, down_w)
        t0 = last[0] if last else now
        hole = min((t for t, _ in recs if t > t0), default=now) - t0
        out = out.to(held_to, Reason(Code.SCALE_DOWN_STABILIZED, f"held at {held_to} (the recommendation of {last[1] if last else held_to}, "
                                     f"{now - t0:.0f}s ago, stands until the next, which came {hole:.0f}s after it)"))
    elif held == "down":
        out = out.to(held_to, Reason(Code.SCALE_DOWN_STABILIZED, f"held at {held_to} (highest recommendation in {sc.scale_down.stabilization_window})"))
    if held in ("unseen", "carried", "down"):
        held_down = held_to
    hist = history.with_(recommendations=recs + ((now, recommendation),), observing_since=observing_since)
    if current > 0 or out.replicas > 1:
        stepped, lim = limit_step(out.replicas, current, sc.scale_up.max_step, sc.scale_down.max_step)
        if lim == "up":
            out = out.to(stepped, Reason(Code.RATE_LIMITED_UP, f"{out.replicas} capped at {stepped} by scaleUp.maxStep {sc.scale_up.max_step}"))
        elif lim == "down" and not (out.replicas == 0 and to_zero):
            out = out.to(stepped, Reason(Code.RATE_LIMITED_DOWN, f"{out.replicas} capped at {stepped} by scaleDown.maxStep {sc.scale_down.max_step}"))
    if workload.pending_unschedulable > 0 and out.replicas >= current:
        # Say so whenever pods wait for GPUs, and add none while they do.
        more = ": not adding more" if out.replicas > current else ""
        out = out.to(current, Reason(Code.GPUS_UNAVAILABLE, f"{workload.pending_unschedulable} pods Pending without free GPUs{more}"))
    return Stabilized(out, hist, held_down)
