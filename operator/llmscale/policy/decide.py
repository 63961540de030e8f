"""The decision core: (spec, workload, signals, history, now) -> Decision, with reasons.

Pure and deterministic: no I/O, no clock, no randomness. The operator, the twin and the tests
all call `decide`. The pipeline, in order:

  1. mode and metric availability      (Paused; Prometheus unreachable -> hold)
  2. capacity                          (per-replica requests/s at the SLO, corrected online)
  3. forecast                          (rate + upward trend over the cold-start horizon)
  4. plan                              (replicas for the forecast at target utilization)
  5. feedback                          (SLO breach or queue -> correct now; panic on bursts)
  6. idleness                          (scale to / from zero on evidence)
  7. tolerance band
  8. unknown metrics                   (never scale down on missing data)
  9. stabilization windows, step limits
 10. bounds and ceilings               (min/max, maxGPUs, maxHourlyCost: always win)
 11. variant choice                    (vertical, with hysteresis)
 12. mode                              (Recommend reports, Auto applies)
"""

from __future__ import annotations

import math

from llmscale.api.models import LLMDeploymentSpec, ScalingMode
from llmscale.api.units import parse_duration

from .capacity import (
    misses_beyond_chance,
    observed_mix,
    refine_correction,
    replicas_for,
    variant_capacity,
    with_defaults,
)
from .ceilings import ceiling_replicas, hourly_cost
from .forecast import DEFAULT_COLD_START_S, recent_peak, trend_forecast
from .reasons import Code, Reason
from .stabilization import limit_step, stabilize
from .types import Decision, Estimate, History, Signals, Workload
from .variant import SAVING_TO_SWITCH, best_variant, plan_for

PANIC_RATIO = 2.0  # latency at twice the target (or demand at twice capacity) is a burst
PANIC_HOLD_S = 60.0
CRITICAL_SIGNALS = ("requestRate", "requestsWaiting")
MAX_RATE_SAMPLES = 64


def _fmt(x: float | None, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    return "unknown" if x is None else f"{x * scale:.{digits}f}{unit}"


def decide(spec: LLMDeploymentSpec, workload: Workload, signals: Signals, history: History, now: float) -> Decision:
    sc = spec.scaling
    current = workload.replicas
    variant = spec.variant(workload.variant)
    reasons: list[Reason] = []
    conditions: dict[str, tuple[str, str, str]] = {}
    interval = parse_duration(sc.interval)

    def finish(target: int, hist: History, est: Estimate, variant_name: str | None = None, apply: bool = True) -> Decision:
        vname = variant_name or variant.name
        v = spec.variant(vname)
        action = "NoChange"
        if target > current:
            action = "ScaleUp"
        elif target < current:
            action = "ScaleDown"
        if vname != variant.name:
            action = "SwitchVariant"
        if not reasons:
            reasons.append(Reason(Code.NO_CHANGE, f"{current} replicas are what the policy wants"))
        if sc.mode == ScalingMode.RECOMMEND and action != "NoChange":
            reasons.append(Reason(Code.RECOMMEND_ONLY, f"would {action} {current} -> {target}; not applied"))
            apply = False
        cost = hourly_cost(spec, v, target)
        if target != current or vname != variant.name:
            hist = History(**{**hist.__dict__, "last_scale_at": now if apply else hist.last_scale_at})
        return Decision(
            action=action,
            from_replicas=current,
            to_replicas=target,
            variant=vname,
            reasons=tuple(reasons),
            history=hist,
            estimate=est,
            conditions=conditions,
            apply=apply,
            gpus=target * v.gpus_per_replica,
            hourly_cost=float(cost) if cost is not None else None,
        )

    # 1. mode and metric availability ---------------------------------------------------------
    if sc.mode == ScalingMode.PAUSED:
        target = current
        if sc.manual_replicas is not None:
            limit, why = ceiling_replicas(spec, variant)
            target = min(sc.manual_replicas, limit)
            if target < sc.manual_replicas:
                reasons.append(Reason(Code.BUDGET_GPUS if why == "cost.maxGPUs" else Code.BUDGET_COST if why == "cost.maxHourlyCost" else Code.AT_MAX,
                                      f"manualReplicas {sc.manual_replicas} capped at {target} by {why}"))
        reasons.append(Reason(Code.PAUSED, "scaling.mode is Paused" + (f"; manualReplicas {target}" if sc.manual_replicas is not None else "")))
        return finish(target, history, Estimate(), apply=sc.manual_replicas is not None)

    if signals.unavailable is not None:
        conditions["MetricsAvailable"] = ("False", Code.METRICS_UNAVAILABLE.value, signals.unavailable)
        reasons.append(Reason(Code.METRICS_UNAVAILABLE, f"holding at {current} replicas: {signals.unavailable}"))
        return finish(current, history, Estimate(), apply=False)

    unknown_critical = sorted(k for k in signals.unknown if k in CRITICAL_SIGNALS)
    if signals.unknown:
        conditions["MetricsAvailable"] = (
            "False" if unknown_critical else "True",
            Code.METRICS_UNKNOWN.value,
            "; ".join(f"{k}: {v}" for k, v in sorted(signals.unknown.items())),
        )
    else:
        conditions["MetricsAvailable"] = ("True", "MetricsRead", "all signals read")
    if unknown_critical:
        reasons.append(Reason(Code.METRICS_UNKNOWN, f"{', '.join(unknown_critical)} unknown ({'; '.join(signals.unknown[k] for k in unknown_critical)}): scale-down disabled"))

    # 2. capacity -----------------------------------------------------------------------------
    hist = history
    ttft_t = spec.slo.ttft.seconds if spec.slo.ttft else None
    itl = spec.slo.itl_target()
    itl_t = itl.seconds if itl else None
    ratios = []
    if ttft_t and signals.ttft_quantile is not None:
        ratios.append(signals.ttft_quantile / ttft_t)
    if itl_t and signals.itl_quantile is not None:
        ratios.append(signals.itl_quantile / itl_t)
    breach_ratio = max(ratios) if ratios else None
    rate = signals.request_rate
    ready = workload.ready
    per_ready = rate / ready if rate is not None and ready > 0 else None

    # Latency in a window that began before the Ready set last grew includes the backlog the new
    # replicas were started for: it says nothing about what today's replicas sustain.
    grew_at = now if hist.ready_seen is not None and ready > hist.ready_seen else hist.ready_grew_at
    hist = History(**{**hist.__dict__, "ready_seen": ready, "ready_grew_at": grew_at})
    window_s = parse_duration(spec.metrics.rate_window)
    settled = grew_at is None or now - grew_at > window_s
    target_share = spec.slo.ttft.percentile / 100 if spec.slo.ttft else 0.95
    observed_in, observed_out = observed_mix(signals, hist.mean_input, hist.mean_output)
    mix = with_defaults(observed_in, observed_out)
    seed = variant_capacity(spec, variant, signals, 1.0, mix, max(ready, 1))
    correction = refine_correction(hist.capacity_correction, signals.ttft_attainment, target_share, breach_ratio, settled,
                                   per_ready, seed.per_replica,
                                   rate * window_s if rate is not None else None)
    hist = History(**{**hist.__dict__, "mean_input": observed_in, "mean_output": observed_out})
    # Capacity per replica in today's fleet (pooling makes it depend on the fleet's size).
    cap = variant_capacity(spec, variant, signals, correction, mix, max(current, 1))
    if not cap.feasible:
        conditions["SLOFeasible"] = ("False", Code.SLO_INFEASIBLE.value, f"variant {variant.name}: {cap.limited_by}")
    else:
        conditions["SLOFeasible"] = ("True", "SLOFeasible", f"variant {variant.name} sustains {cap.per_replica:.2f} req/s per replica ({cap.limited_by}-bound)")

    # 3. forecast -----------------------------------------------------------------------------
    horizon = workload.cold_start_s.get(variant.name) or (
        parse_duration(variant.cold_start) if variant.cold_start else DEFAULT_COLD_START_S
    )
    horizon += interval
    samples = hist.rate_samples
    if rate is not None:
        samples = tuple([(t, v) for t, v in samples if now - t <= max(600.0, 2 * horizon)][-MAX_RATE_SAMPLES + 1 :] + [(now, rate)])
    forecast = trend_forecast(samples, now, horizon)
    peak = recent_peak(samples, now, horizon)
    if forecast is not None and peak is not None and peak > forecast:
        forecast = peak
    if forecast is not None and signals.requests_waiting:
        # Drain today's queue within the horizon, but never plan on draining faster than in two
        # minutes: a burst's backlog is transient and would otherwise overshoot to the ceiling.
        forecast += signals.requests_waiting / max(horizon, 120.0)

    # 4. plan ---------------------------------------------------------------------------------
    planned: int | None = None
    if forecast is not None and cap.feasible:
        planned, plan_cap = replicas_for(spec, variant, signals, correction, mix, forecast, sc.target_utilization)
        reasons.append(Reason(Code.CAPACITY_PLAN, f"forecast {forecast:.2f} req/s over {horizon:.0f}s / {plan_cap.per_replica:.2f} req/s per replica (in a fleet of {planned}) at {sc.target_utilization:.0%} -> {planned}"))
    desired = planned if planned is not None else current

    # 5. feedback -----------------------------------------------------------------------------
    feedback: int | None = None
    # A window's p99 is its second-worst request at 200 requests a minute: a quantile over target
    # is acted on only when more requests missed than the SLO allows, beyond chance.
    ttft_missed = bool(ttft_t and signals.ttft_quantile is not None and signals.ttft_quantile > ttft_t and (
        signals.ttft_attainment is None or misses_beyond_chance(signals.ttft_attainment, target_share, None if rate is None else rate * window_s)))
    itl_missed = bool(itl_t and itl and signals.itl_quantile is not None and signals.itl_quantile > itl_t and (
        signals.itl_attainment is None or misses_beyond_chance(
            signals.itl_attainment, itl.percentile / 100,
            None if signals.generation_tokens_rate is None else signals.generation_tokens_rate * window_s)))
    breached = breach_ratio is not None and breach_ratio > 1.0 and (ttft_missed or itl_missed)
    base = max(ready, 1)
    # An SLO no replica can meet even unloaded is reported (SLOFeasible=False), not chased with replicas.
    if breached and breach_ratio is not None and cap.feasible and not settled:
        reasons.append(Reason(Code.COLD_START, f"latency at {breach_ratio:.2f}x target, but the window still holds the backlog from before the Ready replicas last grew"))
    elif breached and breach_ratio is not None and cap.feasible:
        feedback = math.ceil(base * min(breach_ratio, PANIC_RATIO) - 1e-9)
        feedback = max(feedback, base + 1)
        if ttft_missed and ttft_t and spec.slo.ttft:
            reasons.append(Reason(Code.SLO_BREACH_TTFT, f"TTFT p{spec.slo.ttft.percentile:g} {_fmt(signals.ttft_quantile, 'ms', 1000, 0)} > target {ttft_t * 1000:.0f}ms"))
        if itl_missed and itl_t and itl:
            reasons.append(Reason(Code.SLO_BREACH_ITL, f"inter-token p{itl.percentile:g} {_fmt(signals.itl_quantile, 'ms', 1000, 0)} > target {itl_t * 1000:.0f}ms"))
    waiting = signals.requests_waiting or 0.0
    running = signals.requests_running or 0.0
    # A sustained queue of about one request per replica means vLLM is out of KV cache or sequence
    # slots; one or two waiting requests between steps are normal with long prompts.
    # Little's law: the queue costs about waiting / rate seconds of TTFT; well within the target it
    # is the normal wait behind long prefills, not missing capacity. The gauge is one scrape, so a
    # queue is acted on when the previous decision saw one too, or when it is a backlog no blip
    # explains (twice the TTFT target).
    queue_delay = waiting / rate if rate else math.inf
    queued = ready > 0 and waiting > max(1.0, float(ready), 0.25 * running) and (ttft_t is None or queue_delay > 0.5 * ttft_t)
    persistent = hist.queued_at is not None and now - hist.queued_at <= 1.5 * interval
    hist = History(**{**hist.__dict__, "queued_at": now if queued else None})
    if queued and (persistent or ttft_t is None or queue_delay > 2 * ttft_t):
        q = math.ceil(base * (running + waiting) / max(running, 1.0) - 1e-9)
        q = max(q, base + 1)
        feedback = max(feedback or 0, q)
        reasons.append(Reason(Code.QUEUE_GROWING, f"{waiting:.0f} requests waiting, {running:.0f} running on {ready} ready replicas"))
    if feedback is not None:
        if feedback > desired:
            desired = feedback
        if workload.starting > 0 and desired <= current:
            reasons.append(Reason(Code.COLD_START, f"{workload.starting} replicas still loading count as capacity on its way"))
        if (breached and (breach_ratio or 0) >= PANIC_RATIO) or feedback >= 2 * base:
            hist = History(**{**hist.__dict__, "panic_until": now + max(PANIC_HOLD_S, 2 * interval)})
            reasons.append(Reason(Code.PANIC, f"burst: scale-down suspended for {max(PANIC_HOLD_S, 2 * interval):.0f}s"))

    # SLO status for the conditions.
    if breach_ratio is None:
        conditions["SLOMet"] = ("Unknown", "NoLatencyData", "no latency observations in the rate window")
    elif breached:
        conditions["SLOMet"] = ("False", "SLOBreached", f"latency at {breach_ratio:.2f}x target")
    elif breach_ratio > 1.0:
        conditions["SLOMet"] = ("True", "SLOMet", f"latency at {breach_ratio:.2f}x target, but no more misses than the SLO allows plus chance")
    else:
        conditions["SLOMet"] = ("True", "SLOMet", f"latency at {breach_ratio:.2f}x target")

    # 6. idleness -----------------------------------------------------------------------------
    idle = rate is not None and rate == 0.0 and waiting == 0.0 and "requestRate" not in signals.unknown
    hist = History(**{**hist.__dict__, "idle_since": (hist.idle_since or now) if idle else None, "rate_samples": samples, "capacity_correction": correction})
    if idle:
        desired = spec.replicas.min
        reasons.append(Reason(Code.IDLE, "request counters at zero"))
        stz = sc.scale_to_zero
        if stz.enabled and spec.replicas.min == 0 and hist.idle_since is not None:
            idle_for = now - hist.idle_since
            if idle_for >= parse_duration(stz.idle_for):
                desired = 0
                reasons.append(Reason(Code.SCALE_TO_ZERO, f"idle for {idle_for:.0f}s >= {stz.idle_for}"))
            else:
                desired = max(desired, min(current, 1))
    if current == 0 and ((rate or 0) > 0 or waiting > 0):
        desired = max(desired, 1)
        reasons.append(Reason(Code.SCALE_FROM_ZERO, f"demand while at zero: {rate or 0:.2f} req/s, {waiting:.0f} waiting"))

    # 7. tolerance ----------------------------------------------------------------------------
    # HPA-style dead band on the usage ratio: demand within +-tolerance of what the current
    # replicas are planned to carry changes nothing (rounding at a boundary must not flap).
    if current > 0 and desired != current and not breached and feedback is None and not idle:
        if forecast is not None and cap.feasible:
            ratio = forecast / (current * cap.per_replica * sc.target_utilization)
            if abs(ratio - 1) <= sc.tolerance:
                reasons.append(Reason(Code.WITHIN_TOLERANCE, f"demand at {ratio:.2f}x the plan for {current} replicas (tolerance {sc.tolerance:.0%})"))
                desired = current
        elif abs(desired - current) / current <= sc.tolerance:
            reasons.append(Reason(Code.WITHIN_TOLERANCE, f"{desired} is within {sc.tolerance:.0%} of {current}"))
            desired = current

    # 8. unknown metrics never scale down -------------------------------------------------------
    if desired < current and (unknown_critical or rate is None):
        missing = ", ".join(unknown_critical) or "requestRate"
        if not unknown_critical:
            reasons.append(Reason(Code.METRICS_UNKNOWN, f"not scaling down to {desired}: {missing} unknown"))
        desired = current

    # 9. stabilization and step limits --------------------------------------------------------
    up_w = parse_duration(sc.scale_up.stabilization_window)
    down_w = parse_duration(sc.scale_down.stabilization_window)
    recs = tuple((t, r) for t, r in hist.recommendations if now - t <= max(up_w, down_w))
    raw_desired = desired
    if hist.panic_until is not None and now < hist.panic_until and desired < current:
        reasons.append(Reason(Code.PANIC, f"scale-down to {desired} suspended until the burst passes"))
        desired = current
    desired_st, held = stabilize(desired, current, recs, now, up_w, down_w)
    # A window not yet covered by history (a new deployment, a lost status) proves nothing about
    # the recent past: do not scale down until it is.
    observing_since = hist.observing_since if hist.observing_since is not None else now
    if desired_st < current and down_w > 0 and observing_since > now - down_w + interval / 2:
        desired_st, held = current, "down"
    if held == "up":
        reasons.append(Reason(Code.SCALE_UP_STABILIZED, f"held at {desired_st} (lowest recommendation in {sc.scale_up.stabilization_window})"))
    elif held == "down":
        reasons.append(Reason(Code.SCALE_DOWN_STABILIZED, f"held at {desired_st} (highest recommendation in {sc.scale_down.stabilization_window})"))
    desired = desired_st
    hist = History(**{**hist.__dict__, "recommendations": recs + ((now, raw_desired),), "observing_since": observing_since})
    if current > 0 or desired > 1:
        stepped, lim = limit_step(desired, current, sc.scale_up.max_step, sc.scale_down.max_step)
        if lim == "up":
            reasons.append(Reason(Code.RATE_LIMITED_UP, f"{desired} capped at {stepped} by scaleUp.maxStep {sc.scale_up.max_step}"))
        elif lim == "down" and desired > 0:
            reasons.append(Reason(Code.RATE_LIMITED_DOWN, f"{desired} capped at {stepped} by scaleDown.maxStep {sc.scale_down.max_step}"))
        if not (lim == "down" and desired == 0 and Code.SCALE_TO_ZERO in [r.code for r in reasons]):
            desired = stepped

    if desired > current and workload.pending_unschedulable > 0:
        reasons.append(Reason(Code.GPUS_UNAVAILABLE, f"{workload.pending_unschedulable} pods Pending without free GPUs: not adding more"))
        desired = current

    # 10. bounds and ceilings -----------------------------------------------------------------
    target_variant = variant
    limit, why = ceiling_replicas(spec, variant)
    floor = spec.replicas.min if not (desired == 0 and sc.scale_to_zero.enabled) else 0
    if desired < floor:
        reasons.append(Reason(Code.AT_MIN, f"raised to replicas.min {floor}"))
        desired = floor
    budget_limited = False
    if desired > limit:
        code = {"cost.maxGPUs": Code.BUDGET_GPUS, "cost.maxHourlyCost": Code.BUDGET_COST}.get(why or "", Code.AT_MAX)
        reasons.append(Reason(code, f"{desired} capped at {limit} by {why}"))
        budget_limited = code != Code.AT_MAX
        desired = limit
    if budget_limited:
        conditions["BudgetLimited"] = ("True", "BudgetLimited", f"the SLO needs more than {limit} replicas of {variant.name}; capped by {why}")
    else:
        conditions["BudgetLimited"] = ("False", "WithinBudget", "")

    # 11. variant choice (vertical) -----------------------------------------------------------
    if len(spec.variants) > 1 and forecast is not None and forecast > 0:
        plans = []
        for v in spec.variants:
            n, c = replicas_for(spec, v, signals, correction if v.name == variant.name else 1.0, mix, forecast, sc.target_utilization)
            p = plan_for(spec, c, n)
            if p is not None:
                plans.append(p)
        best = best_variant(plans)
        cur = next((p for p in plans if p.capacity.variant.name == variant.name), None)
        switch = False
        if best is not None and best.capacity.variant.name != variant.name:
            if cur is None or (not cur.fits_ceiling and best.fits_ceiling):
                switch = True  # the current shape cannot do the job at all: switch now
            elif best.fits_ceiling and best.cost <= (1 - SAVING_TO_SWITCH) * cur.cost:
                since = hist.variant_candidate_since if hist.variant_candidate == best.capacity.variant.name else None
                since = since if since is not None else now
                hist = History(**{**hist.__dict__, "variant_candidate": best.capacity.variant.name, "variant_candidate_since": since})
                switch = now - since >= max(down_w, interval)
        else:
            hist = History(**{**hist.__dict__, "variant_candidate": None, "variant_candidate_since": None})
        if switch and best is not None:
            target_variant = best.capacity.variant
            new_limit, _ = ceiling_replicas(spec, target_variant)
            desired = max(spec.replicas.min, min(best.replicas, new_limit))
            reasons.append(Reason(Code.VARIANT_SWITCH, f"{variant.name} -> {target_variant.name}: {best.replicas} x {target_variant.gpus_per_replica} GPU serve {forecast:.2f} req/s for {best.cost:.2f}/h" + (f" vs {cur.cost:.2f}/h" if cur else " (current shape cannot meet the SLO)")))
            hist = History(**{**hist.__dict__, "variant_candidate": None, "variant_candidate_since": None})

    est = Estimate(
        capacity_per_replica=cap.per_replica if cap.feasible else 0.0,
        capacity_limited_by=cap.limited_by,
        forecast_rate=forecast,
        horizon_s=horizon,
        planned_replicas=planned,
        feedback_replicas=feedback,
        ceiling_replicas=limit,
    )
    return finish(desired, hist, est, target_variant.name)
