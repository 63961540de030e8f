"""Step 6: idleness. Zero on the request counters is evidence (missing series are not): after
scaling.scaleToZero.idleFor of it, and only when scale-to-zero is enabled, release every replica.
Demand while at zero starts one replica."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec
from llmscale.api.units import parse_duration

from .reasons import Code, Reason
from .types import History, Proposal, Signals, Workload

# Decisions run on the operator's 5 s timer whatever the interval (controller.handlers uses this
# tick). Status, which carries the recommendations across a restart, is written only when a user
# reads a change (controller.status): after a restart the last recommendation may be hours old, and
# that time counts as unseen (the operator cannot tell a quiet hour from an hour it was down).
DECISION_TICK_S = 5.0
LATE_STEPS = 2  # decisions a busy operator may run late (a slow tick, a failed apply retried) before a gap counts


def unseen_gap_s(spec: LLMDeploymentSpec, history: History, now: float) -> float | None:
    """How long before now no decision saw the load, beyond what consecutive decisions cover, or
    None when they cover it all. Each decision's zero rate covers the rate window before it; the
    gap since the previous decision is allowed that window (or one decision step, when longer) plus
    LATE_STEPS more for decisions run late. No previous decision: all of it unseen."""
    if not history.recommendations:
        return float("inf")
    window = parse_duration(spec.metrics.rate_window)
    step = max(parse_duration(spec.scaling.interval), DECISION_TICK_S)
    gap = now - history.recommendations[-1][0]
    return gap if gap > max(window, step) + LATE_STEPS * step else None


@dataclass(frozen=True)
class Idleness:
    proposal: Proposal
    idle: bool
    to_zero: bool  # scale-to-zero decided: the floor may be 0
    history: History


def no_pods(workload: Workload) -> bool:
    """No pod of any shape that vLLM could queue requests in: none starting, Ready or draining
    (pods Pending for want of a GPU have no engine, and no series)."""
    return (workload.ready == 0 and workload.starting == 0 and workload.terminating == 0
            and all(c.holding_gpus == 0 for c in workload.pods.values()))


def idleness(spec: LLMDeploymentSpec, workload: Workload, signals: Signals, proposal: Proposal, history: History,
             now: float) -> Idleness:
    rate, waiting = signals.request_rate, signals.requests_waiting or 0.0
    idle = rate is not None and rate == 0.0 and waiting == 0.0 and "requestRate" not in signals.unknown
    since = (history.idle_since if history.idle_since is not None else now) if idle else None
    stz = spec.scaling.scale_to_zero
    may_zero = stz.enabled and spec.replicas.min == 0
    restarted: Reason | None = None
    gap = unseen_gap_s(spec, history, now) if idle and since is not None and since < now else None
    if gap is not None:
        # Zero over one rate window says nothing of the time before it: a gap between decisions
        # longer than that (the API server or the operator down) is time nobody saw, so the idle
        # clock starts again (an idleSince from before a two-hour outage released every replica
        # at the first decision after it).
        if may_zero:
            last = (f"the last decision seen was {gap:.0f}s ago, longer than a rate window covers"
                    if gap < float("inf")
                    else "no earlier decision is recorded")
            restarted = Reason(Code.IDLE, f"idle clock restarted: {last}")
        since = now
    hist = history.with_(idle_since=since)
    # The door back from zero is the gateway's demand signal: it must have been read to close it.
    demand_known = "gatewayDemand" not in signals.unknown and "requestsWaiting" not in signals.unknown
    out, to_zero = proposal, False
    if (workload.replicas == 0 and may_zero and "requestsWaiting" in signals.unknown and no_pods(workload)
            and signals.gateway_pending is not None):
        # No pod is left to serve or queue anything: whatever vLLM's series still say (behind
        # federation or remote storage the last samples of deleted pods linger, stale, for the
        # lookback, up to five minutes), the requests the gateway holds are the whole demand. The
        # stale series made the queue unknown and held the deployment at zero with requests waiting.
        # (A queue that was read, vLLM's or a query override, already counts the gateway's.)
        waiting, demand_known = signals.gateway_pending, "gatewayDemand" not in signals.unknown
    if workload.replicas == 0 and may_zero:
        if (rate or 0) > 0 or waiting > 0:
            return Idleness(Proposal(1, (Reason(Code.SCALE_FROM_ZERO, f"demand while at zero: {rate or 0:.2f} req/s, "
                                                                      f"{waiting:.0f} waiting at the gateway"),)), False, False, hist)
        if demand_known:
            why = Reason(Code.IDLE, "at zero, no request waiting at the gateway")
        elif "gatewayDemand" in signals.unknown:
            why = Reason(Code.METRICS_UNKNOWN, "at zero and the gateway's demand signal is unknown: holding at zero")
        else:
            why = Reason(Code.METRICS_UNKNOWN, "at zero and the requests waiting in vLLM are unknown "
                                               f"({signals.unknown['requestsWaiting']}): holding at zero")
        return Idleness(Proposal(0, (*proposal.reasons, why)), idle, True, hist)
    if idle:
        # The plan already sizes for zero load (and for what the burst memory holds): idleness
        # itself only opens the door to zero.
        out = out.note(Reason(Code.IDLE, "request counters at zero"), *((restarted,) if restarted else ()))
        if may_zero and since is not None and now - since >= parse_duration(stz.idle_for):
            if demand_known:
                out, to_zero = out.to(0, Reason(Code.SCALE_TO_ZERO, f"idle for {now - since:.0f}s >= {stz.idle_for}")), True
            elif "gatewayDemand" in signals.unknown or "requestsWaiting" not in signals.unknown:
                out = out.note(Reason(Code.METRICS_UNKNOWN, "not scaling to zero: the gateway's demand signal is unknown "
                                                            f"({signals.unknown.get('gatewayDemand', 'no series')})"))
            else:
                out = out.note(Reason(Code.METRICS_UNKNOWN, "not scaling to zero: the requests waiting in vLLM are unknown "
                                                            f"({signals.unknown['requestsWaiting']})"))
    if workload.replicas == 0 and ((rate or 0) > 0 or waiting > 0):
        out = out.to(max(out.replicas, 1),
                     Reason(Code.SCALE_FROM_ZERO, f"demand while at zero: {rate or 0:.2f} req/s, {waiting:.0f} waiting"))
    return Idleness(out, idle, to_zero, hist)
