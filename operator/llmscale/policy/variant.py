"""Step 11: which pod shape to run (the vertical axis). GPUs cannot be resized in place, so a switch
replaces pods; it is made only with hysteresis: a clear saving held for a while, or when the
current shape cannot meet the SLO at all."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration

from .capacity import (
    CapacityStep,
    VariantCapacity,
    has_started,
    refused_start,
    replicas_for,
    seen_mix,
    variant_capacity,
)
from .ceilings import ceiling_replicas, within_bounds
from .forecast import Forecast
from .reasons import Code, Reason
from .rollout import carried, held, keep_beside, room_for, shape_of
from .types import Condition, History, PodCounts, Proposal, ShapeOption, Signals, Workload

SAVING_TO_SWITCH = 0.2  # a switch must save at least this share of the hourly cost


@dataclass(frozen=True)
class VariantPlan:
    capacity: VariantCapacity
    replicas: int
    cost: float  # per hour, or GPU count when unpriced
    fits_ceiling: bool
    at_ceiling: float = 0.0  # req/s at the SLO that the most replicas the ceilings allow carry (at most `replicas`)


def plan_for(spec: LLMDeploymentSpec, cap: VariantCapacity, replicas: int,
             at_limit: VariantCapacity | None = None) -> VariantPlan | None:
    """What running `replicas` of a variant (the count its capacity needs) costs, and what the
    most replicas the ceilings allow of it carry."""
    if not cap.feasible:
        return None
    n = max(spec.replicas.min, 1, replicas)
    limit, _ = ceiling_replicas(spec, cap.variant)
    price = spec.cost.price(cap.variant.accelerator)
    unit = float(price) if price is not None else 1.0
    # What the most replicas the ceilings allow carry: each at its capacity in a fleet that size
    # (`at_limit`; pooled capacity grows with the fleet, so the plan's size would overstate it).
    most = cap if n <= limit or at_limit is None else at_limit
    return VariantPlan(cap, n, n * cap.variant.gpus_per_replica * unit, n <= limit, min(n, limit) * most.per_replica)


def best_variant(plans: list[VariantPlan]) -> VariantPlan | None:
    """The cheapest shape that carries the load within the ceilings; when none does, the one that
    carries the most within them (four L4 pods at a GPU ceiling carry a tenth of what one 2 x H100
    pod does, and the cheapest at the load, which the ceiling cuts anyway, says nothing)."""
    fitting = [p for p in plans if p.fits_ceiling]
    if fitting:
        # Cheapest; ties go to the earlier (preferred) variant, since sorted() is stable.
        return sorted(fitting, key=lambda p: p.cost)[0]
    return sorted(plans, key=lambda p: (-p.at_ceiling, p.cost))[0] if plans else None


@dataclass(frozen=True)
class Shape:
    variant: Variant
    proposal: Proposal
    history: History
    per_replica: dict[str, float]  # capacity at the SLO per replica, by variant (for the rollout)
    failed: tuple[str, str] | None = None  # (variant, why) when a switch is rolled back now
    options: tuple[ShapeOption, ...] = ()  # every shape as weighed (for explain and status)


def gpus_short_since(spec: LLMDeploymentSpec, history: History, target: str, now: float) -> float | None:
    """When `target`'s Pending pods were let go under a lowered ceiling for lack of GPUs of its type
    (History.gpus_short); None when not. Remembered as long as a switch whose pods stayed Pending
    is kept from the shape: unschedulableTimeout, then the dwell before a shape that failed is
    tried again."""
    since = history.gpus_short_since
    if history.gpus_short != target or since is None:
        return None
    switch = spec.scaling.variant_switch
    return since if now - since <= parse_duration(switch.unschedulable_timeout) + parse_duration(switch.dwell) else None


def remember_gpus_short(spec: LLMDeploymentSpec, workload: Workload, target: str, by_variant: Mapping[str, int],
                        applied: bool, cut: bool, history: History, now: float) -> History:
    """History.gpus_short after a decision: set when it lets the target's Pending pods go (a lowered
    ceiling's cut, `cut`, applied), at that time (a later cut keeps the first); kept, whatever the
    target becomes, until it expires (gpus_short_since) or a pod of that shape is scheduled after
    it (pods scheduled before the cut, while others waited, prove nothing)."""
    name = history.gpus_short
    since = gpus_short_since(spec, history, name, now) if name is not None else None
    if name is not None and since is not None:
        pods = workload.pods.get(name, PodCounts())
        if pods.starting and pods.scheduled_last is not None and pods.scheduled_last >= since:
            since = None  # a pod of that shape found GPUs after the cut
    mine = workload.pods.get(target, PodCounts())
    if applied and cut and mine.unschedulable and by_variant.get(target, mine.live) < mine.live:
        since = since if name == target and since is not None else now
        name = target
    if since is None:
        name = None
    if (name, since) == (history.gpus_short, history.gpus_short_since):
        return history
    return history.with_(gpus_short=name, gpus_short_since=since)


def stuck(spec: LLMDeploymentSpec, workload: Workload, now: float, spill: str | None = None,
          short_since: float | None = None) -> str | None:
    """Why the target shape's new pods cannot start, once they have waited too long; None otherwise.
    Only during a switch: with no other shape serving there is nothing to go back to (and spill pods,
    `spill`, carry the share of pods that wait, beside the target's own: no switch to undo). The
    wait runs from `short_since` when earlier Pending pods were let go under a lowered ceiling (their
    successors are younger, the shortage is not)."""
    name = workload.variant
    if name is None or not any(n for v, n in workload.desired.items() if v not in (name, spill)):
        return None
    pods = workload.pods.get(name, PodCounts())
    waiting = pods.waiting_since if short_since is None or pods.waiting_since is None else min(pods.waiting_since,
                                                                                             short_since)
    if pods.unschedulable and waiting is not None and \
            now - waiting > parse_duration(spec.scaling.variant_switch.unschedulable_timeout):
        v = spec.variant(name)
        return f"Unschedulable: {pods.unschedulable} x {name} Pending for lack of free {v.accelerator} GPUs " \
               f"for over {spec.scaling.variant_switch.unschedulable_timeout}"
    if pods.starting and pods.starting_since is not None and now - pods.starting_since > parse_duration(spec.serving.startup_timeout):
        return f"NotReady: {pods.starting} x {name} not Ready within serving.startupTimeout ({spec.serving.startup_timeout})"
    return None


def spill_candidates(spec: LLMDeploymentSpec, workload: Workload, history: History, now: float) -> tuple[str, ...]:
    """Shapes that may carry the share of target pods waiting for GPUs (spill-over), in order of
    preference: vLLM starts on them, none failed to start within the dwell time, and none is
    remembered short of GPUs (History.gpus_short)."""
    dwell = parse_duration(spec.scaling.variant_switch.dwell)
    return tuple(v.name for v in spec.variants
                 if not (v.name in workload.failed and now - workload.failed[v.name][0] < dwell)
                 and gpus_short_since(spec, history, v.name, now) is None  # its GPUs are short too
                 and (refused_start(spec, v) is None or has_started(spec, workload, history, v.name)))


def no_room(spec: LLMDeploymentSpec, workload: Workload, target: Variant) -> bool:
    """No room under the ceilings for one more pod of `target` beside every pod held now."""
    others_g, others_c = 0, 0.0
    for v in set(workload.desired) | set(workload.pods):
        if v != target.name:
            g, p = shape_of(spec, workload, v, room=True)
            n = held(workload.desired.get(v, 0), workload.pods.get(v, PodCounts()))
            others_g += n * g
            others_c += n * p
    return room_for(spec, workload, target, others_g, others_c) <= workload.pods.get(target.name, PodCounts()).live


def switch_failed(spec: LLMDeploymentSpec, workload: Workload, now_failed: tuple[str, str] | None, now: float) -> Condition:
    """True while a shape that failed to start is kept out (the dwell time), naming it and why."""
    dwell = parse_duration(spec.scaling.variant_switch.dwell)
    if now_failed is not None:
        return Condition("True", "VariantSwitchFailed", f"{now_failed[0]}: {now_failed[1]}")
    recent = sorted((at, v, why) for v, (at, why) in workload.failed.items() if now - at < dwell)
    if recent:
        at, v, why = recent[-1]
        return Condition("True", "VariantSwitchFailed", f"{v}: {why} (not tried again for {spec.scaling.variant_switch.dwell})")
    return Condition("False", "NoFailedSwitch", "")


def fits_make_before_break(spec: LLMDeploymentSpec, old: VariantPlan, new: VariantPlan, old_live: int) -> bool:
    """Can the switch go pod by pod without a gap: at every stage, k Ready new pods plus one starting
    and the old pods the rollout keeps beside them (`old.replicas` carry all of the load), within both
    ceilings? Behind a Service, also: do the Ready pods at every stage carry what the old ones carry
    now (within the tolerance)? At equal shares a weaker new pod beside stronger old ones lowers what
    every pod carries, so a switch to many small pods from a few large ones dips until most are Ready."""
    g_new, g_old = new.capacity.variant.gpus_per_replica, old.capacity.variant.gpus_per_replica
    p_new = float(spec.cost.price(new.capacity.variant.accelerator) or 0) * g_new
    p_old = float(spec.cost.price(old.capacity.variant.accelerator) or 0) * g_old
    cap_new, cap_old = new.capacity.per_replica, old.capacity.per_replica
    a, b = new.capacity.variant.name, old.capacity.variant.name
    caps = {a: cap_new, b: cap_old}
    equal_shares = not spec.routing.pools
    most = min(old_live, old.replicas)
    now = carried(spec, {b: most}, caps)
    ratio = cap_new / cap_old if cap_old > 0 else math.inf
    for k in range(max(1, new.replicas)):
        if math.isinf(ratio):
            keep = old_live
        elif equal_shares:
            keep = keep_beside(spec, {a: k}, {b: most}, caps, new.replicas * cap_new).get(b, 0)
            if k and carried(spec, {a: k, b: keep}, caps) < (1 - spec.scaling.tolerance) * min(now, new.replicas * cap_new):
                return False
        else:
            keep = min(most, math.ceil((new.replicas - k) * ratio - 1e-9))
        if spec.cost.max_gpus is not None and (k + 1) * g_new + keep * g_old > spec.cost.max_gpus:
            return False
        ceiling = spec.cost.hourly_ceiling
        if ceiling is not None and (k + 1) * p_new + keep * p_old > float(ceiling) + 1e-9:
            return False
    return True


def variant(spec: LLMDeploymentSpec, workload: Workload, current: Variant, signals: Signals, cap: CapacityStep,
            fc: Forecast, proposal: Proposal, history: History, now: float, held: str | None = None) -> Shape:
    """Step 11, with every shape as weighed attached for `llmscale explain`. `held`: why today's pods
    may not go down now (a switch for a saving then waits; one the running shape needs goes)."""
    caps: dict[str, VariantCapacity] = {}
    plans: list[VariantPlan] = []
    shape = _variant(spec, workload, current, signals, cap, fc, proposal, history, now, caps, plans, held)
    if len(spec.variants) < 2 or not caps:
        return shape
    dwell = parse_duration(spec.scaling.variant_switch.dwell)
    options = []
    for v in spec.variants:
        c = caps.get(v.name)
        if c is None:
            continue
        p = next((x for x in plans if x.capacity.variant.name == v.name), None)
        at = workload.failed.get(v.name)
        note = ("chosen" if v.name == shape.variant.name else "running" if v.name == current.name else "")
        if at is not None and now - at[0] < dwell:
            note = (note + "; " if note else "") + f"failed to start {now - at[0]:.0f}s ago: {at[1]}"
        short = gpus_short_since(spec, history, v.name, now)
        if short is not None:
            note = (note + "; " if note else "") + (f"short of {v.accelerator} GPUs: its Pending pods were let go under a "
                                                    f"lowered ceiling {now - short:.0f}s ago")
        if p is not None and not p.fits_ceiling:
            note = (note + "; " if note else "") + "over the ceilings"
        options.append(ShapeOption(v.name, p.replicas if p else None, round(p.cost, 4) if p else None,
                                   bool(p and p.fits_ceiling), round(c.per_replica, 4), c.limited_by, note))
    return replace(shape, options=tuple(options))


def _variant(spec: LLMDeploymentSpec, workload: Workload, current: Variant, signals: Signals, cap: CapacityStep,
             fc: Forecast, proposal: Proposal, history: History, now: float, caps: dict[str, VariantCapacity],
             plans: list[VariantPlan], held: str | None = None) -> Shape:
    """The shape to run; fills `caps` and `plans` with every shape as weighed."""
    sc = spec.scaling
    dwell = parse_duration(sc.variant_switch.dwell)
    per_replica: dict[str, float] = {}
    # Shapes are compared only on a token mix seen in traffic: the default mix is a guess, and a
    # switch on a guess costs two cold starts.
    if len(spec.variants) >= 2 and fc.rate is not None and fc.rate > 0 and seen_mix(history).known:
        for v in spec.variants:
            # A correction below 1 is mostly about the traffic (bursts, the token spread), not the
            # shape: other shapes are compared under it too, or the corrected shape loses to
            # uncorrected ones. One above 1 was learnt on this shape's pods and stays with them.
            correction = cap.correction if v.name == current.name else min(1.0, cap.correction)
            # Likewise the engine speed: pods found slower than the model say more about the model
            # (and the engine) than about the GPU, so every shape is planned as slow; faster pods
            # speak for their own shape only.
            speed = cap.speed if v.name == current.name else max(1.0, cap.speed)
            started = has_started(spec, workload, history, v.name)
            n, c = replicas_for(spec, v, signals, correction, cap.mix, fc.rate, fc.plan_utilization(spec), started, speed)
            per_replica[v.name] = c.per_replica
            caps[v.name] = c
            limit, _ = ceiling_replicas(spec, v)
            at_limit = variant_capacity(spec, v, signals, correction, cap.mix, limit, started, speed) if 0 < limit < n else None
            p = plan_for(spec, c, n, at_limit)
            if p is not None:
                plans.append(p)
    # Rollback: the new shape cannot start. Go back to the shape still serving most.
    spill = history.spill_shape or workload.spill  # spill pods are no switch's old shape: no rollback to them
    why = stuck(spec, workload, now, spill, gpus_short_since(spec, history, current.name, now))
    if why is not None:
        failed_lately = {v for v, (at, _) in workload.failed.items() if now - at < dwell}
        back = max((v for v in workload.desired if v not in (current.name, spill) and v not in failed_lately
                    and any(x.name == v for x in spec.variants)),
                   key=lambda v: (workload.pods.get(v, PodCounts()).ready, workload.desired.get(v, 0)), default=None)
        if back is not None:
            old = spec.variant(back)
            plan = next((p for p in plans if p.capacity.variant.name == back), None)
            n = plan.replicas if plan is not None else max(workload.desired.get(back, 0), workload.pods.get(back, PodCounts()).ready)
            n = within_bounds(spec, old, n)
            reason = Reason(Code.VARIANT_SWITCH_FAILED, f"{current.name} -> {back}: {why}; keeping {n} x {back}")
            return Shape(old, proposal.to(n, reason), history.with_(variant_candidate=None, variant_candidate_since=None),
                         per_replica, (current.name, why))
    refused = None if has_started(spec, workload, history, current.name) else refused_start(spec, current)
    if refused is not None and not plans:
        # vLLM would not start on the running shape and none of its pods ever became Ready (a new
        # deployment on a shape that cannot hold the context): the first shape in order of
        # preference that it starts on, at once, the token mix aside. (With a mix seen, the
        # comparison below finds it cannot meet the SLO and switches to the cheapest instead.)
        to = next((v for v in spec.variants if v.name != current.name
                   and (refused_start(spec, v) is None or has_started(spec, workload, history, v.name))), None)
        if to is not None:
            n = within_bounds(spec, to, max(1, proposal.replicas))
            return Shape(to, proposal.to(n, Reason(Code.VARIANT_SWITCH, f"{current.name} -> {to.name}: vLLM would not start "
                                                                        f"on {current.name} ({refused})")),
                         history.with_(variant_candidate=None, variant_candidate_since=None), per_replica)
    if not plans:
        return Shape(current, proposal, history, per_replica)
    recently_failed = {v for v, (at, _) in workload.failed.items() if now - at < dwell}
    if history.gpus_short is not None and gpus_short_since(spec, history, history.gpus_short, now) is not None:
        recently_failed.add(history.gpus_short)  # its Pending pods were let go: its GPUs are short, as if it failed
    candidates = [p for p in plans if p.capacity.variant.name not in recently_failed or p.capacity.variant.name == current.name]
    best = best_variant(candidates)
    cur = next((p for p in plans if p.capacity.variant.name == current.name), None)
    hist = history
    switch = False
    settled = workload.target_since is None or now - workload.target_since >= dwell
    mid_switch = any(n for v, n in workload.desired.items() if v not in (current.name, spill))
    # A switch stalls when nothing moves (no pod starting, waiting or draining) while old-shape pods
    # still serve: the ceilings leave no room for the rest of the new shape and the old pods are all
    # needed. Then the shapes already running are weighed again, the dwell aside: going back to a
    # shape that is Ready costs nothing.
    mine = workload.pods.get(current.name, PodCounts())
    still_short = mine.ready < proposal.replicas and workload.desired.get(current.name, 0) <= mine.live
    stalled = mid_switch and still_short and no_room(spec, workload, current) and all(
        not (p.starting or p.unschedulable or p.terminating) for p in workload.pods.values())
    if stalled:
        running_now = [p for p in candidates if workload.desired.get(p.capacity.variant.name, 0) > 0]
        going_back = best_variant(running_now)
        if going_back is not None and going_back.capacity.variant.name != current.name and (
                cur is None or not cur.fits_ceiling or going_back.cost < cur.cost):
            target = going_back.capacity.variant
            n = within_bounds(spec, target, going_back.replicas)
            return Shape(target, proposal.to(n, Reason(
                Code.VARIANT_SWITCH, f"{current.name} -> {target.name}: the switch to {current.name} stalled (no room "
                                     f"under the ceilings while {target.name} pods serve); {going_back.replicas} x {target.name} "
                                     f"carry {fc.rate:.2f} req/s for {going_back.cost:.2f}/h")),
                hist.with_(variant_candidate=None, variant_candidate_since=None), per_replica)
    if best is not None and best.capacity.variant.name != current.name and not mid_switch:
        # The current shape cannot carry the load within the ceilings and another can, or carries
        # clearly more of it (beyond the tolerance: two shapes that both fall short do not flap).
        cannot = cur is None or (not cur.fits_ceiling and (
            best.fits_ceiling or best.at_ceiling > (1 + sc.tolerance) * cur.at_ceiling))
        if cannot:
            # Switch now, in smaller steps when it must (the rollout releases old pods one new pod
            # at a time).
            switch = True
        elif cur is not None and best.fits_ceiling and best.cost <= (1 - SAVING_TO_SWITCH) * cur.cost and settled:
            if held is not None:
                # It would retire pods a scale-down may not retire now; the candidate keeps its time.
                return Shape(current, proposal.note(Reason(
                    Code.VARIANT_SWITCH_HELD, f"{best.capacity.variant.name} would cost {best.cost:.2f}/h against "
                                              f"{cur.cost:.2f}/h; the switch waits: {held}")), hist, per_replica)
            if not fits_make_before_break(spec, cur, best, workload.pods.get(current.name, PodCounts()).live):
                # A switch for a saving goes without a gap or not at all.
                return Shape(current, proposal.note(Reason(
                    Code.WAITING_FOR_ROOM, f"{best.capacity.variant.name} would cost {best.cost:.2f}/h against "
                                           f"{cur.cost:.2f}/h, but the ceilings leave no room to start it while "
                                           f"{current.name} serves" + (
                                               "" if spec.routing.pools else
                                               ", or its pods beside them would carry less at equal shares "
                                               "(spec.routing: Service)"))), hist.with_(variant_candidate=None,
                                                                                   variant_candidate_since=None), per_replica)
            name = best.capacity.variant.name
            since = hist.variant_candidate_since if hist.variant_candidate == name else None
            since = since if since is not None else now
            hist = hist.with_(variant_candidate=name, variant_candidate_since=since)
            # Cheaper because the load grew past what the running pods carry: a scale-up in another
            # shape, held like one. Cheaper at the load they carry: held like a scale-down.
            growing = cur.replicas > max(workload.replicas, 1)
            hold = sc.scale_up.stabilization_window if growing else sc.scale_down.stabilization_window
            switch = now - since >= max(parse_duration(hold), parse_duration(sc.interval))
    else:
        hist = hist.with_(variant_candidate=None, variant_candidate_since=None)
    if not switch or best is None:
        return Shape(current, proposal, hist, per_replica)
    target = best.capacity.variant
    n = within_bounds(spec, target, best.replicas)  # the ceiling wins over replicas.min
    if best.fits_ceiling or cur is None:
        why_ = Reason(Code.VARIANT_SWITCH, f"{current.name} -> {target.name}: {best.replicas} x {target.gpus_per_replica} GPU serve "
                                           f"{fc.rate:.2f} req/s for {best.cost:.2f}/h"
                                           + (f" vs {cur.cost:.2f}/h" if cur else " (current shape cannot meet the SLO)"))
    else:  # neither carries the load within the ceilings: the one that carries more of it
        why_ = Reason(Code.VARIANT_SWITCH, f"{current.name} -> {target.name}: neither carries {fc.rate:.2f} req/s with the "
                                           f"plan's headroom within the ceilings; {target.name} carries up to "
                                           f"{best.at_ceiling:.2f} req/s there, {current.name} {cur.at_ceiling:.2f}")
    return Shape(target, proposal.to(n, why_), hist.with_(variant_candidate=None, variant_candidate_since=None), per_replica)
