"""The decision core: (spec, workload, signals, history, now) -> Decision, with reasons.

Pure and deterministic: no I/O, no clock, no randomness. The operator, the twin and the tests all
call `decide`, which is the list of steps below, one module each, in the order they apply.
"""

from __future__ import annotations

from dataclasses import replace

from llmscale.api.models import LLMDeploymentSpec, ScalingMode
from llmscale.api.units import parse_duration

from .availability import availability
from .capacity import capacity, has_started
from .ceilings import ceilings, within_bounds
from .feedback import breach_ratio, feedback
from .forecast import forecast
from .idleness import idleness
from .mode import mode
from .plan import plan
from .reasons import Code
from .rollout import Rollout, Spill, back_under, on_nodes, rollout
from .stabilization import stabilization
from .tolerance import tolerance
from .types import Condition, Decision, Estimate, History, Signals, Workload
from .unknowns import unknowns
from .variant import gpus_short_since, remember_gpus_short, spill_candidates, switch_failed
from .variant import variant as choose_variant


def decide(spec: LLMDeploymentSpec, workload: Workload, signals: Signals, history: History, now: float) -> Decision:
    running = spec.variant(workload.variant)
    current = workload.replicas
    # 1. Paused, or Prometheus unreachable: the answer is final.
    gate = availability(spec, running, workload, signals)
    if gate.final is not None:
        conditions = {"MetricsAvailable": gate.metrics} if gate.metrics else {}
        # A ceiling lowered under what runs is the user's word, known without metrics: while
        # Prometheus is unreachable, what the Deployments ask for is cut to it and nothing else
        # moves. Paused touches nothing but manualReplicas (whose rollout holds the ceilings).
        paused = spec.scaling.mode == ScalingMode.PAUSED
        moved = rollout(spec, workload, running, gate.final.replicas, {},
                        spill=Spill(now, None, history.spill_shape or workload.spill, hold=True,
                                    # Paused decides nothing but manualReplicas: no spill pod fails then.
                                    startup_timeout_s=None if paused else parse_duration(spec.serving.startup_timeout),
                                    started=_started(spec, workload, history, history.spill_shape or workload.spill)),
                        enforce=gate.apply)
        if moved.spill != history.spill_shape:
            history = history.with_(spill_shape=moved.spill)  # what is applied is marked on the Deployments as it is
        if not paused and not gate.apply:
            asked = {**workload.desired, running.name: gate.final.replicas}
            cut = back_under(spec, workload, running.name, asked, {})
            if cut is not None:
                moved = replace(moved, replicas_by_variant=asked, lowered=cut, reasons=(*moved.reasons, cut))
        if not paused or gate.apply:
            over = over_ceiling(spec, workload, moved)
            if not over and not gate.apply:  # a cut's condition is not left standing once the pods are under
                over = {"BudgetLimited": Condition("False", "WithinBudget", "the pods on nodes are within the ceilings")}
            conditions.update(over)
        d = mode(spec, workload, running, running, gate.final, gate.apply or moved.lowered is not None, history,
                 Estimate(step_time_factor=history.planned_speed), conditions, now, moved, moved.spill_failed)
        return _short_of_gpus(spec, workload, d, moved, now)
    # 2. Capacity per replica at the SLO, learnt from each rate window once.
    cap = capacity(spec, running, workload, signals, history, now, breach_ratio(spec, signals))
    # 3. The load to plan for over the cold start (trend, burst memory, queue).
    fc = forecast(spec, running, workload, signals, cap.history, now)
    # 4. The fewest replicas that carry it at targetUtilization.
    planned = plan(spec, running, signals, cap, fc, current)
    # 5. SLO misses beyond chance and a lasting queue correct now.
    fb = feedback(spec, running, workload, signals, cap, planned.proposal.note(*gate.reasons, *cap.reasons, *fc.reasons),
                  fc.history, now, fc.draining)
    # 6. Idle: down to the floor, to zero only when enabled and idle for long enough.
    idle = idleness(spec, workload, signals, fb.proposal, fb.history, now)
    # 7. Within tolerance of the plan for today's replicas: no change.
    steady = tolerance(spec, current, cap, fc, idle.proposal, fb.breached or fb.replicas is not None or idle.idle)
    # 8. Unknown metrics never scale down.
    safe = unknowns(current, signals, gate.unknown_critical, steady)
    # 9. Stabilization windows, the panic hold, step limits, pods waiting for GPUs.
    stable = stabilization(spec, running, workload, safe, idle.to_zero, idle.history, now, fc.rising)
    # 10. Bounds and ceilings: they always win.
    bounded = ceilings(spec, running, stable.proposal, idle.to_zero)
    # 11. The pod shape (vertical), with hysteresis, a dwell time and rollback.
    # A switch for a saving retires pods: it waits while a scale-down may not happen (unknown
    # metrics, the panic hold, the scale-down window). Not for replicas.min (the plan's count is
    # held at the floor for ever) nor for scaleDown.maxStep (in Recommend the count never steps down;
    # the switch releases old pods only as the new ones carry the load, make before break).
    floor = within_bounds(spec, running, steady.replicas, idle.to_zero)
    held = "signals unknown" if gate.unknown_critical else (
        f"the scale-down to {floor} is held at {stable.held_down}"
        if stable.held_down is not None and stable.held_down > floor else None)
    shape = choose_variant(spec, workload, running, signals, cap, fc, bounded.proposal, stable.history, now, held)
    # 12. Replicas per shape now: make before break, no pod created over a ceiling; spill-over
    # while the target's pods wait for GPUs.
    demand = fc.rate / fc.plan_utilization(spec) if fc.rate is not None else None
    # The spill shape in use (from history, or from its Deployment's mark after a restart that lost
    # status); none once a switch starts: its pods are then an old shape like any other.
    in_use = None if shape.variant.name != running.name else shape.history.spill_shape or workload.spill
    spill = Spill(now, spec.scaling.variant_switch.spill_after_s, in_use, spill_candidates(spec, workload, shape.history, now),
                  hold=bool(gate.unknown_critical), startup_timeout_s=parse_duration(spec.serving.startup_timeout),
                  started=_started(spec, workload, shape.history, in_use))
    moved = rollout(spec, workload, shape.variant, shape.proposal.replicas, shape.per_replica, demand, fc.plan_utilization(spec),
                    spill, gpus_short=gpus_short_since(spec, shape.history, shape.variant.name, now) is not None)
    if moved.spill != shape.history.spill_shape:
        shape = replace(shape, history=shape.history.with_(spill_shape=moved.spill))
    # 13. Recommend reports; Auto applies.
    estimate = Estimate(cap.current.per_replica if cap.current.feasible else 0.0, cap.current.limited_by, fc.rate,
                        fc.horizon_s, planned.planned, fb.replicas, bounded.limit, shape.options,
                        cap.history.planned_speed, cap.speed_note)
    conditions = {"MetricsAvailable": gate.metrics, "SLOFeasible": cap.feasible, "SLOMet": fb.slo_met,
                  "BudgetLimited": bounded.budget_limited} if gate.metrics else {}
    if over := over_ceiling(spec, workload, moved):
        conditions.update(over)
    elif moved.waiting_for_room and (shape.variant.name != running.name or moved.retiring or moved.spill is not None):
        waiting = next(r for r in reversed(moved.reasons) if r.code == Code.WAITING_FOR_ROOM)
        conditions["BudgetLimited"] = Condition("True", "WaitingForRoom", waiting.message)
    failed = shape.failed or moved.spill_failed
    if len(spec.variants) > 1 or len(workload.desired) > 1:
        conditions["VariantSwitchFailed"] = switch_failed(spec, workload, failed, now)
    d = mode(spec, workload, running, shape.variant, shape.proposal, True, shape.history, estimate, conditions, now,
             moved, failed)
    return _short_of_gpus(spec, workload, d, moved, now)


def _short_of_gpus(spec: LLMDeploymentSpec, workload: Workload, d: Decision, moved: Rollout, now: float) -> Decision:
    """The decision with History.gpus_short kept up to date for its target (see variant.remember_gpus_short)."""
    kept = remember_gpus_short(spec, workload, d.variant, moved.replicas_by_variant, d.apply, moved.lowered is not None,
                               d.history, now)
    return d if kept is d.history else replace(d, history=kept)


def over_ceiling(spec: LLMDeploymentSpec, workload: Workload, moved: Rollout) -> dict[str, Condition]:
    """BudgetLimited while a ceiling lowered under what runs is not held yet: at the decision that
    lets pods go, and after it while the pods on nodes are still over it (they drain)."""
    if moved.lowered is not None:
        return {"BudgetLimited": Condition("True", moved.lowered.code.value, moved.lowered.message)}
    gpus, cost = on_nodes(spec, workload, priced_part=True)  # the priced pods alone may be over
    if spec.cost.max_gpus is not None and gpus > spec.cost.max_gpus:
        return {"BudgetLimited": Condition("True", Code.BUDGET_GPUS.value, f"{gpus} GPUs on nodes over maxGPUs "
                                                                          f"{spec.cost.max_gpus}: pods let go are draining")}
    ceiling = spec.cost.hourly_ceiling
    if ceiling is not None and cost is not None and cost > float(ceiling) + 1e-9:
        return {"BudgetLimited": Condition("True", Code.BUDGET_COST.value, f"{cost:.2f}/h on nodes over maxHourlyCost "
                                                                           f"{spec.cost.max_hourly_cost}: pods let go are draining")}
    return {}


def _started(spec: LLMDeploymentSpec, workload: Workload, history: History, shape: str | None) -> bool:
    """Have pods of this shape been Ready, now or before (vLLM starts there)?"""
    return shape is not None and has_started(spec, workload, history, shape)
