"""Step 12: the mode. Auto applies; Recommend reports what it would do and applies nothing."""

from __future__ import annotations

from llmscale.api.models import LLMDeploymentSpec, ScalingMode, Variant

from .reasons import Code, Reason
from .rollout import Rollout, on_nodes
from .types import Action, Condition, Decision, Estimate, History, Proposal, Workload


def action(current: int, target: int, switch: bool) -> Action:
    if switch:
        return Action.SWITCH_VARIANT
    return Action.SCALE_UP if target > current else Action.SCALE_DOWN if target < current else Action.NO_CHANGE


def mode(spec: LLMDeploymentSpec, workload: Workload, running: Variant, target: Variant, proposal: Proposal, apply: bool,
         history: History, estimate: Estimate, conditions: dict[str, Condition], now: float, moved: Rollout,
         failed: tuple[str, str] | None = None) -> Decision:
    current = workload.replicas
    act = action(current, proposal.replicas, target.name != running.name)
    # A switch in progress moves on (old-shape pods retire, or new ones start as room frees up): an
    # action to apply, but not a new scaling decision for the stabilization windows.
    moving = act == Action.NO_CHANGE and any(workload.desired.get(v, 0) != n for v, n in moved.replicas_by_variant.items())
    reasons = proposal.reasons + tuple(r for r in moved.reasons if r not in proposal.reasons)
    reasons = reasons or (Reason(Code.NO_CHANGE, f"{current} replicas are what the policy wants"),)
    scaling = act != Action.NO_CHANGE
    to = proposal.replicas
    lowered = moved.lowered is not None and target.name == running.name
    if lowered:
        # Pods let go for a ceiling lowered under what runs (no pod is created beside them): a
        # scale-down, though the target's count may stay; a change of shape is no new scaling
        # decision for the windows.
        to = min(to, moved.replicas_by_variant.get(target.name, to))
        act = Action.SCALE_DOWN
    elif moving:
        spilled = [v for v, n in moved.replicas_by_variant.items() if workload.desired.get(v, 0) != n]
        if moved.spill is not None and spilled == [moved.spill]:
            # Only the spill pods change: more or fewer pods, no change of shape.
            grew = moved.replicas_by_variant[moved.spill] > workload.desired.get(moved.spill, 0)
            act = Action.SCALE_UP if grew else Action.SCALE_DOWN
        else:
            act = Action.SWITCH_VARIANT
    if spec.scaling.mode == ScalingMode.RECOMMEND and act != Action.NO_CHANGE:
        what = f"{current} -> {to}" if not lowered else "the pods let go above"
        reasons += (Reason(Code.RECOMMEND_ONLY, f"would {act.value} {what}; not applied"),)
        apply = False
    if scaling and apply:
        history = history.with_(last_scale_at=now)
    # What is being paid: every pod on a node, of every shape (a switch's old pods, spill pods,
    # draining ones), at its own price.
    gpus, cost = on_nodes(spec, workload)
    return Decision(
        action=act,
        from_replicas=current,
        to_replicas=to,
        variant=target.name,
        reasons=reasons,
        history=history,
        estimate=estimate,
        conditions=conditions,
        apply=apply,
        gpus=gpus,
        hourly_cost=cost,
        replicas_by_variant=dict(moved.replicas_by_variant),
        failed_variant=failed,
    )
