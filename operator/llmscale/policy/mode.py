"""Step 12: the mode. Auto applies; Recommend reports what it would do and applies nothing."""

from __future__ import annotations

from llmscale.api.models import LLMDeploymentSpec, ScalingMode, Variant

from .ceilings import hourly_cost
from .reasons import Code, Reason
from .types import Action, Condition, Decision, Estimate, History, Proposal


def action(current: int, target: int, switch: bool) -> Action:
    if switch:
        return Action.SWITCH_VARIANT
    return Action.SCALE_UP if target > current else Action.SCALE_DOWN if target < current else Action.NO_CHANGE


def mode(spec: LLMDeploymentSpec, current: int, running: Variant, target: Variant, proposal: Proposal, apply: bool,
         history: History, estimate: Estimate, conditions: dict[str, Condition], now: float) -> Decision:
    act = action(current, proposal.replicas, target.name != running.name)
    reasons = proposal.reasons or (Reason(Code.NO_CHANGE, f"{current} replicas are what the policy wants"),)
    if spec.scaling.mode == ScalingMode.RECOMMEND and act != Action.NO_CHANGE:
        reasons += (Reason(Code.RECOMMEND_ONLY, f"would {act.value} {current} -> {proposal.replicas}; not applied"),)
        apply = False
    if act != Action.NO_CHANGE and apply:
        history = history.with_(last_scale_at=now)
    cost = hourly_cost(spec, target, proposal.replicas)
    return Decision(
        action=act,
        from_replicas=current,
        to_replicas=proposal.replicas,
        variant=target.name,
        reasons=reasons,
        history=history,
        estimate=estimate,
        conditions=conditions,
        apply=apply,
        gpus=proposal.replicas * target.gpus_per_replica,
        hourly_cost=float(cost) if cost is not None else None,
        replicas_by_variant={target.name: proposal.replicas},
    )
