"""Step 6: idleness. Zero on the request counters is evidence (missing series are not): after
scaling.scaleToZero.idleFor of it, and only when scale-to-zero is enabled, release every replica.
Demand while at zero starts one replica."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec
from llmscale.api.units import parse_duration

from .reasons import Code, Reason
from .types import History, Proposal, Signals, Workload


def last_decision(history: History, default: float) -> float:
    """When the previous decision was taken (its recommendation's time)."""
    return history.recommendations[-1][0] if history.recommendations else default


def idleness_seen(spec: LLMDeploymentSpec, history: History, now: float) -> bool:
    """Did the previous decision see the load up to one rate window before now? Each decision's
    zero rate covers the window before it, so consecutive decisions at most a window apart (or an
    interval, when that is longer; one more interval for a late tick) leave no time unseen."""
    if not history.recommendations:
        return False
    window = parse_duration(spec.metrics.rate_window)
    interval = parse_duration(spec.scaling.interval)
    return now - history.recommendations[-1][0] <= max(window, interval) + interval


@dataclass(frozen=True)
class Idleness:
    proposal: Proposal
    idle: bool
    to_zero: bool  # scale-to-zero decided: the floor may be 0
    history: History


def idleness(spec: LLMDeploymentSpec, workload: Workload, signals: Signals, proposal: Proposal, history: History,
             now: float) -> Idleness:
    rate, waiting = signals.request_rate, signals.requests_waiting or 0.0
    idle = rate is not None and rate == 0.0 and waiting == 0.0 and "requestRate" not in signals.unknown
    since = (history.idle_since if history.idle_since is not None else now) if idle else None
    restarted: Reason | None = None
    if idle and since is not None and since < now and not idleness_seen(spec, history, now):
        # Zero over one rate window says nothing of the time before it: a gap between decisions
        # longer than a window (the API server or the operator down) is time nobody saw, so the
        # idle clock starts again (an idleSince from before a two-hour outage released every
        # replica at the first decision after it).
        restarted = Reason(Code.IDLE, f"idle clock restarted: no decision saw the {now - last_decision(history, since):.0f}s "
                                      "before this one")
        since = now
    hist = history.with_(idle_since=since)
    stz = spec.scaling.scale_to_zero
    may_zero = stz.enabled and spec.replicas.min == 0
    # The door back from zero is the gateway's demand signal: it must have been read to close it.
    demand_known = "gatewayDemand" not in signals.unknown and "requestsWaiting" not in signals.unknown
    out, to_zero = proposal, False
    if workload.replicas == 0 and may_zero:
        if (rate or 0) > 0 or waiting > 0:
            return Idleness(Proposal(1, (Reason(Code.SCALE_FROM_ZERO, f"demand while at zero: {rate or 0:.2f} req/s, "
                                                                      f"{waiting:.0f} waiting at the gateway"),)), False, False, hist)
        why = (Reason(Code.IDLE, "at zero, no request waiting at the gateway") if demand_known else
               Reason(Code.METRICS_UNKNOWN, "at zero and the gateway's demand signal is unknown: holding at zero"))
        return Idleness(Proposal(0, (*proposal.reasons, why)), idle, True, hist)
    if idle:
        # The plan already sizes for zero load (and for what the burst memory holds): idleness
        # itself only opens the door to zero.
        out = out.note(Reason(Code.IDLE, "request counters at zero"), *((restarted,) if restarted else ()))
        if may_zero and since is not None and now - since >= parse_duration(stz.idle_for):
            if demand_known:
                out, to_zero = out.to(0, Reason(Code.SCALE_TO_ZERO, f"idle for {now - since:.0f}s >= {stz.idle_for}")), True
            else:
                out = out.note(Reason(Code.METRICS_UNKNOWN, "not scaling to zero: the gateway's demand signal is unknown "
                                                            f"({signals.unknown.get('gatewayDemand', 'no series')})"))
    if workload.replicas == 0 and ((rate or 0) > 0 or waiting > 0):
        out = out.to(max(out.replicas, 1),
                     Reason(Code.SCALE_FROM_ZERO, f"demand while at zero: {rate or 0:.2f} req/s, {waiting:.0f} waiting"))
    return Idleness(out, idle, to_zero, hist)
