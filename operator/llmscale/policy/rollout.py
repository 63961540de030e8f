"""Step 13: the rollout. The replicas each variant's Deployment gets now, so that the target shape
takes over make-before-break and no pod is created over `maxGPUs` or `maxHourlyCost`.

Each variant runs as its own Deployment, so every pod keeps its own GPU count and price and the
arithmetic stays simple:
- a pod holds GPUs from creation until it is gone: starting, Ready, terminating (draining), and
  Pending ones too, which take GPUs the moment they are scheduled. Each is priced at its own
  variant. Lowering a Deployment frees nothing until its pods have drained;
- pods of the target shape are created only in the room the ceilings leave over everything held;
- pods of a retiring shape are kept, Ready ones only, while the target's Ready pods fall short of
  the target: they retire as Ready new-shape capacity replaces theirs (capacity ratio from the
  per-replica capacity at the SLO; when unknown, all of them until the target is fully Ready).
  What a mix of shapes carries depends on the routing (`carried`): behind a Service every pod gets
  an equal share, so an old pod kept beside stronger new ones carries only its own share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant

from .reasons import Code, Reason
from .types import PodCounts, Workload


@dataclass(frozen=True)
class Rollout:
    replicas_by_variant: dict[str, int]  # desired replicas of each variant's Deployment, to apply now
    reasons: tuple[Reason, ...]
    waiting_for_room: int  # target pods wanted but not created yet: no room under the ceilings
    retiring: dict[str, int]  # old-shape replicas kept serving until the target's are Ready
    spill: str | None = None  # the shape carrying the share of target pods that wait for GPUs, while it has pods
    spill_failed: tuple[str, str] | None = None  # (spill shape, why) when its pods did not become Ready in time
    lowered: Reason | None = None  # pods let go because a ceiling was lowered under what runs (see back_under)


@dataclass(frozen=True)
class Spill:
    """What the spill-over needs beside the pods: the clock, spillAfter, the spill shape in use
    (from history) and the shapes it may use (vLLM starts on them, none failed lately), in order of
    preference."""

    now: float
    after_s: float | None  # None: never spill
    shape: str | None = None
    candidates: tuple[str, ...] = ()
    hold: bool = False  # the metrics are unknown or scaling is paused: the spill pods stay as they are (the floor aside)
    startup_timeout_s: float | None = None  # serving.startupTimeout: spill pods not Ready by then fail their shape
    started: bool = False  # pods of the spill shape in use have been Ready (vLLM starts there): no startup failure


def held(desired: int, pods: PodCounts) -> int:
    """Pods of one variant that hold (or will at once hold) GPUs with this desired count."""
    return max(desired, pods.live) + pods.terminating


def _rendered(spec: LLMDeploymentSpec, workload: Workload, name: str) -> tuple[str, int]:
    """(accelerator, GPUs per pod) of a variant: the spec's, or for one gone from the spec the
    shape its Deployment was rendered with ("" when unknown)."""
    v = next((x for x in spec.variants if x.name == name), None)
    return (v.accelerator, v.gpus_per_replica) if v is not None else workload.shapes.get(name, ("", 1))


def shape_of(spec: LLMDeploymentSpec, workload: Workload, name: str, room: bool = False) -> tuple[int, float]:
    """(GPUs per pod, hourly price per pod) of a variant; a variant gone from the spec keeps the
    shape its Deployment was rendered with. With `room` (the arithmetic of what fits under the
    ceilings), a pod whose price is unknown (its shape and its price removed from the spec while
    its pods still serve) counts as costing all of maxHourlyCost: nothing is started beside it
    that the ceiling might not allow."""
    accelerator, gpus = _rendered(spec, workload, name)
    price = spec.cost.price(accelerator) if accelerator else None
    if price is None and room and spec.cost.hourly_ceiling is not None:
        return gpus, float(spec.cost.hourly_ceiling)
    return gpus, float(price) * gpus if price is not None else 0.0


def carried(spec: LLMDeploymentSpec, ready: Mapping[str, int], per_replica: Mapping[str, float]) -> float:
    """Requests/s at the SLO that these Ready pods (by variant) carry together. Behind a load-aware
    gateway each pod takes what it has room for: the capacities add up. Behind a Service each takes
    an equal share, so the fleet carries its weakest pod's capacity times its pods (an L4 beside
    H100s gets an H100's share and is the first to miss)."""
    present = [(n, per_replica.get(v, 0.0)) for v, n in ready.items() if n > 0]
    if not present:
        return 0.0
    if spec.routing.pools:
        return sum(n * c for n, c in present)
    return sum(n for n, _ in present) * min(c for _, c in present)


def keep_beside(spec: LLMDeploymentSpec, serving: Mapping[str, int], old: Mapping[str, int],
                per_replica: Mapping[str, float], need: float) -> dict[str, int]:
    """Which Ready old pods (`old`: Ready pods by shape, strongest first) to keep serving beside
    `serving` behind a Service, chosen together: at equal shares a mix carries its weakest pod's
    capacity times its pods, so the options are the strongest shapes kept whole and some pods of the
    next one. The fewest pods with which all carry `need`; where none do, the option that carries
    the most (ties keep more): weak pods go once the stronger ones carry more without them."""
    options: list[dict[str, int]] = [{}]
    whole: dict[str, int] = {}
    for o, n in old.items():
        options += [{**whole, o: j} for j in range(1, n + 1)]
        whole[o] = n
    scored = [(carried(spec, {**serving, **opt}, per_replica), opt) for opt in options]  # pods only grow
    enough = next((opt for c, opt in scored if c >= need - 1e-9), None)
    if enough is not None:
        return enough
    most = max(c for c, _ in scored)
    return [opt for c, opt in scored if c >= most - 1e-9][-1]


def room_for(spec: LLMDeploymentSpec, workload: Workload, target: Variant, others_gpus: int, others_cost: float) -> int:
    """The most non-terminating pods of the target that the ceilings allow beside what others hold."""
    gpus, price = shape_of(spec, workload, target.name, room=True)
    term = workload.pods.get(target.name, PodCounts()).terminating
    allowed = 1 << 30
    if spec.cost.max_gpus is not None:
        allowed = min(allowed, (spec.cost.max_gpus - others_gpus) // gpus - term)
    ceiling = spec.cost.hourly_ceiling
    if ceiling is not None and price > 0:
        allowed = min(allowed, math.floor((float(ceiling) - others_cost) / price + 1e-9) - term)
    return allowed


def rollout(spec: LLMDeploymentSpec, workload: Workload, target: Variant, replicas: int,
            per_replica: Mapping[str, float], demand: float | None = None, utilization: float | None = None,
            spill: Spill | None = None, enforce: bool = True, gpus_short: bool = False) -> Rollout:
    """Desired replicas per variant now, for `replicas` of `target` in the end.

    `enforce`: let pods go where the counts ask for more than a lowered ceiling allows
    (`back_under`); off where nothing may be touched (Paused) or only that cut is (see decide).
    `per_replica` is each variant's capacity at the SLO (requests/s per replica), for how many
    old-shape pods one new-shape pod replaces; `demand` the capacity the forecast needs (requests/s
    at the planned `utilization`, targetUtilization when None): old pods beyond it are not needed even
    while the target is short. With `spill`, target pods Pending for lack of GPUs for longer than
    spillAfter have their share carried by pods of another shape (see `_spill_over`). `gpus_short`:
    the target's Pending pods were let go under a lowered ceiling (History.gpus_short), so no old
    pod is released to make room for one: it would wait for GPUs as they did while the old pod
    served.
    """
    t = target.name
    mine = workload.pods.get(t, PodCounts())
    equal_shares = not spec.routing.pools
    # Behind a Service the strongest old pods are weighed first: at equal shares they carry the most
    # beside the new ones (seven L4 pods kept where one A100 pod would do hold seven pods' GPUs).
    others = sorted((v for v in set(workload.desired) | set(workload.pods) if v != t),
                    key=lambda v: ((-per_replica.get(v, 0.0) if equal_shares else 0.0),
                                   -workload.pods.get(v, PodCounts()).ready, v))
    # 1. Retiring shapes: their Ready pods serve while the target's Ready pods fall short (of the
    # target, or of the demand when it is smaller), in target pods.
    short = float(max(0, replicas - mine.ready))
    cap_target = per_replica.get(t, 0.0)
    if demand is not None and demand > 0 and cap_target > 0:
        # Never below what replicas.min of the target would serve: a forecast of zero is no reason
        # to stop the old pods before the new ones are Ready.
        floor = float(max(1, spec.replicas.min) - mine.ready)
        short = min(short, max(0.0, demand / cap_target - mine.ready, floor))
    out: dict[str, int] = {}
    retiring: dict[str, int] = {}
    others_gpus, others_cost = 0, 0.0
    need = (mine.ready + short) * cap_target  # what the target's pods would carry once Ready
    kept_together: dict[str, int] = {}
    if equal_shares and short > 0 and cap_target > 0:
        # Shapes whose capacity is unknown are kept whole below and left out of the choice.
        known = {o: workload.pods.get(o, PodCounts()).ready for o in others if o in per_replica}
        kept_together = keep_beside(spec, {t: mine.ready}, known, per_replica, need)
    for o in others:
        pods = workload.pods.get(o, PodCounts())
        cap_t, cap_o = per_replica.get(t, 0.0), per_replica.get(o, 0.0)
        if short <= 0:
            keep = 0
        elif equal_shares and cap_t > 0 and o in per_replica:
            keep = kept_together.get(o, 0)
        elif cap_t > 0 and cap_o > 0:
            ratio = cap_t / cap_o  # old pods one new pod replaces
            keep = min(pods.ready, math.ceil(short * ratio - 1e-9))
            short = max(0.0, short - keep / ratio)
        else:
            keep = pods.ready  # no capacity ratio: every Ready old pod stays until the target is Ready
        out[o] = keep
        if keep:
            retiring[o] = keep
        gpus, price = shape_of(spec, workload, o, room=True)
        n = held(keep, pods)  # lowering frees nothing until the pods have drained
        others_gpus += n * gpus
        others_cost += n * price
    # 2. The target: pods are created only in the room under the ceilings.
    live = mine.live
    if replicas <= live:
        want = replicas
    else:
        want = max(live, min(replicas, room_for(spec, workload, target, others_gpus, others_cost)))
    out[t] = want
    reasons: list[Reason] = []
    released = None if gpus_short else _make_room(spec, workload, target, replicas, per_replica, demand, out, retiring,
                                                   utilization, spill.shape if spill is not None else None)
    if released:
        reasons.append(released)
    spilled, spill_why, spill_failed = _spill_over(spec, workload, target, replicas, per_replica, demand, out, spill)
    if spill_failed is None:
        spilled, floor_why = _spill_floor(spec, workload, target, replicas, out, spill, spilled)
        spill_why = floor_why or spill_why  # the floor's count is the one applied
    if spill_why is not None:
        reasons.append(spill_why)
    lowered = back_under(spec, workload, t, out, per_replica) if enforce else None
    if lowered is not None:
        reasons.append(lowered)
        for o in list(retiring):
            if out.get(o, 0) < retiring[o]:
                retiring[o] = out.get(o, 0)
                if not retiring[o]:
                    del retiring[o]
    if spilled is not None:
        retiring.pop(spilled, None)  # spill pods are no switch's old shape
        if spill_why is None and out.get(spilled, 0):
            reasons.append(Reason(Code.SPILL_OVER, f"{out[spilled]} x {spilled} keep serving until {t}'s pods carry the "
                                                   f"load ({mine.ready}/{replicas} Ready)"))
    if retiring:
        kept = ", ".join(f"{n} x {o}" for o, n in retiring.items())
        reasons.append(Reason(Code.VARIANT_SWITCH, f"to {t}: {mine.ready}/{replicas} Ready; {kept} kept serving until "
                                                   "the new shape carries the load"))
    if want < replicas:
        unpriced = [o for o in others if held(out.get(o, 0), workload.pods.get(o, PodCounts()))
                    and shape_of(spec, workload, o)[1] != shape_of(spec, workload, o, room=True)[1]]
        why_unpriced = (f"; {', '.join(unpriced)} has no price in cost.prices: its pods count as all of maxHourlyCost"
                        if unpriced else "")
        reasons.append(Reason(Code.WAITING_FOR_ROOM, f"{replicas - want} x {t} wait for room under the ceilings "
                                                     f"(pods still holding GPUs: {others_gpus} of other shapes, "
                                                     f"{mine.terminating} x {t} draining){why_unpriced}"))
    waiting = replicas - want if lowered is None else max(0, replicas - out[t])
    return Rollout(out, tuple(reasons), waiting, retiring, spilled, spill_failed, lowered)


def back_under(spec: LLMDeploymentSpec, workload: Workload, t: str, out: dict[str, int],
               per_replica: Mapping[str, float]) -> Reason | None:
    """A ceiling lowered below what the counts kept ask for (a user's edit mid-switch or mid-spill,
    where make-before-break keeps old or spill pods beside the target's, or old pods scaled up by
    hand): the counts applied now fit under it once the pods let go have drained, one interval and
    a drain later. The ceiling is the user's word and wins over keeping capacity; what serves now
    goes last. First the pods not serving: Pending ones (they hold no GPU yet; other shapes'
    before the target's), then starting ones (other shapes' before the target's); then Ready pods
    of other shapes, those that carry least per GPU first; the target's Ready pods last (the
    ceilings step holds the target alone under the ceilings, so those go only when a caller asks
    for more). Serving goes to zero only where not one serving pod fits. The switch then goes on
    in the smaller steps `_make_room` takes under a tight ceiling. A price that is unknown counts
    nothing here: it cannot show a cost over the ceiling (creating beside it is what `room_for`
    refuses)."""
    max_gpus, max_cost = spec.cost.max_gpus, spec.cost.hourly_ceiling
    if max_gpus is None and max_cost is None:
        return None
    shapes = {v: shape_of(spec, workload, v) for v in out}

    def asked() -> tuple[int, float]:
        return sum(n * shapes[v][0] for v, n in out.items()), sum(n * shapes[v][1] for v, n in out.items())

    def over() -> bool:
        gpus, cost = asked()
        return (max_gpus is not None and gpus > max_gpus) or (max_cost is not None and cost > float(max_cost) + 1e-9)

    if not over():
        return None
    gpus, cost = asked()
    by_gpus = max_gpus is not None and gpus > max_gpus
    before = dict(out)

    def pods(v: str) -> PodCounts:
        return workload.pods.get(v, PodCounts())

    others = sorted((v for v in out if v != t), key=lambda v: (per_replica.get(v, 0.0) / max(1, shapes[v][0]), v))
    mine = [t] if t in out else []

    def on_node(v: str) -> int:
        return pods(v).ready + pods(v).starting

    def serving(v: str) -> int:
        return pods(v).ready

    def none(v: str) -> int:
        return 0

    def every(v: str) -> int:
        return before[v]

    # Bands of pods, least valued first: (shapes, down to, up from).
    stages: list[tuple[list[str], Callable[[str], int], Callable[[str], int]]] = [
        (others + mine, on_node, every),  # Pending pods and pods not created yet
        (others, serving, on_node), (mine, serving, on_node),  # starting pods
        (others, none, serving),  # Ready pods of other shapes, weakest per GPU first
        (mine, none, serving)]
    for names, low, _ in stages:
        for v in names:
            while out[v] > low(v) and over():
                out[v] -= 1

    def over_now() -> bool:
        """Over a ceiling with what holds GPUs until the pods let go have drained: a Pending pod put
        back may be scheduled before they are gone."""
        gpus, cost = gpus_held(spec, workload, out)
        return (max_gpus is not None and gpus > max_gpus) or (max_cost is not None and cost > float(max_cost) + 1e-9)

    # A big pod let go may leave room for smaller ones let go before it: back, most valued first.
    for names, _, high in reversed(stages):
        for v in reversed(names):
            while out[v] < min(before[v], high(v)):
                out[v] += 1
                if over() or (high is every and over_now()):
                    out[v] -= 1
                    break
    let_go = ", ".join(f"{before[v] - n} x {v}" for v, n in sorted(out.items()) if n < before[v])
    which = (f"{gpus} GPUs over maxGPUs {max_gpus}" if by_gpus
             else f"{cost:.2f}/h over maxHourlyCost {spec.cost.max_hourly_cost}")
    return Reason(Code.BUDGET_GPUS if by_gpus else Code.BUDGET_COST,
                  f"{which} (lowered under what runs): {let_go} let go, to be under it once they drain")


def _room_of(spec: LLMDeploymentSpec, workload: Workload, out: Mapping[str, int], v: str) -> int:
    """The most non-terminating pods of `v` the ceilings allow beside everything else held."""
    g_o, c_o = 0, 0.0
    for o in set(out) | set(workload.pods):
        if o != v:
            g, p = shape_of(spec, workload, o, room=True)
            n = held(out.get(o, 0), workload.pods.get(o, PodCounts()))
            g_o, c_o = g_o + n * g, c_o + n * p
    shape = next((x for x in spec.variants if x.name == v), None)
    return room_for(spec, workload, shape, g_o, c_o) if shape is not None else 0


def _switching(workload: Workload, t: str, spill: str | None) -> bool:
    """Pods or replicas of a shape other than the target and the spill shape: a switch is under way."""
    return any(workload.desired.get(v, 0) or workload.pods.get(v, PodCounts()).live
               for v in set(workload.desired) | set(workload.pods) if v not in (t, spill))


def _spill_floor(spec: LLMDeploymentSpec, workload: Workload, target: Variant, replicas: int, out: dict[str, int],
                 ctx: Spill | None, current: str | None) -> tuple[str | None, Reason | None]:
    """The floor while the target's pods wait for GPUs: spill pods stand in for the pods of
    replicas.min (at least one while the target asks for any) that wait past spillAfter, one for
    one, whatever the metrics say. The floor is the user's word, known without metrics or a token
    mix, and a new deployment whose GPU type is taken has no pod to read them from: without this it
    never served. The spill shape in use while it is a candidate (even while its own pods wait for
    GPUs: a new shape each time would restart the wait), else the first candidate (in order of
    preference) of another GPU type with room under the ceilings. Behind a Service only
    while no target pod is on a node: at an equal share a weaker pod lowers what every pod carries.
    Returns the spill shape (`current` when nothing changes) and why pods were added."""
    t = target.name
    mine = workload.pods.get(t, PodCounts())
    on_nodes = mine.ready + mine.starting
    if (ctx is None or ctx.after_s is None or not mine.unschedulable or mine.waiting_since is None
            or ctx.now - mine.waiting_since < ctx.after_s or _switching(workload, t, current)
            or (not spec.routing.pools and on_nodes)):
        return current, None
    floor = max(spec.replicas.min, 1 if replicas > 0 else 0)
    missing = min(floor, mine.live) - on_nodes
    if missing <= 0:
        return current, None

    if current is not None:
        if current not in ctx.candidates:
            return current, None  # failed lately: its Ready pods go a step at a time, no other is started
        # The spill shape in use, even while its own pods wait for GPUs: dropping it for the next
        # candidate made a fresh wait each time (and flapped between two shapes whose GPUs are taken).
        options = [current]
    else:
        options = [v for v in ctx.candidates
                   if v != t and (x := next((s for s in spec.variants if s.name == v), None)) is not None
                   and x.accelerator != target.accelerator and not workload.pods.get(v, PodCounts()).unschedulable]
    for v in options:
        have = out.get(v, 0)
        n = min(missing, max(have, _room_of(spec, workload, out, v)))
        if n <= have:
            if v == current:
                return current, None  # as many as the floor asks, or no room for more
            continue
        out[v] = n
        return v, Reason(Code.SPILL_OVER, f"{mine.unschedulable} x {t} Pending for lack of free {target.accelerator} GPUs "
                                          f"for {ctx.now - mine.waiting_since:.0f}s (spillAfter "
                                          f"{spec.scaling.variant_switch.spill_after}): {n} x {v} serve the floor "
                                          f"({floor}) meanwhile")
    return current, None


def _spill_over(spec: LLMDeploymentSpec, workload: Workload, target: Variant, replicas: int,
                per_replica: Mapping[str, float], demand: float | None, out: dict[str, int],
                ctx: Spill | None) -> tuple[str | None, Reason | None, tuple[str, str] | None]:
    """Spill-over: target pods Pending for lack of GPUs of their type for longer than spillAfter
    (the cluster has none free) serve nothing; pods of another shape, on another GPU type, carry
    their share meanwhile. The target keeps asking for its count (its Pending pods take GPUs as
    they free up, and count against the ceilings from creation), so spill pods go only in the room
    left beside them.

    Chosen: the fewest pods of the shape that covers the share for the least hourly cost (behind a
    Service at equal shares, where a weak pod beside strong ones lowers what each carries, only a
    count that carries more than the target's pods alone). One spill shape at a time: while its
    pods are there no other is started (a second would make the first look like a switch's old
    shape). The spill pods stand in for the waiting pods as far as the forecast needs them, and
    go at most scaleDown.maxStep a decision while target pods wait; while that cannot be judged
    (capacity unknown, a Pending pod re-created), they stay. Once none waits, spill pods are an
    old shape to the rule above: Ready ones serve until the target's Ready pods carry the need,
    then retire. Spill pods
    not Ready within serving.startupTimeout fail the shape (kept out for the dwell time). Not during
    a switch: there the new shape's Pending pods are rolled back instead (unschedulableTimeout).

    Returns the spill shape while it has pods, why pods were added, and a failed spill shape."""
    if ctx is None:
        return None, None, None
    t = target.name
    mine = workload.pods.get(t, PodCounts())
    current = ctx.shape if ctx.shape is not None and ctx.shape != t else None
    cur_pods = workload.pods.get(current, PodCounts()) if current is not None else PodCounts()

    def has_pods(v: str) -> bool:
        return out.get(v, 0) > 0 or workload.pods.get(v, PodCounts()).holding_gpus > 0

    def room_of(v: str) -> int:
        return _room_of(spec, workload, out, v)

    def keep(n: int) -> str | None:
        """Keep `n` of the spill pods there (none asked for anew): those on nodes (they hold their
        GPUs already), and Pending ones only in the room the ceilings leave (a user may have lowered
        them). The spill shape while it has pods."""
        if current is None:
            return None
        on_nodes = cur_pods.ready + cur_pods.starting
        n = min(n, workload.desired.get(current, 0), cur_pods.live)
        if n > on_nodes:
            n = max(on_nodes, min(n, room_of(current)))
        kept = out.get(current, 0)
        if (n > kept and not spec.routing.pools and per_replica.get(t, 0.0) > 0 and current in per_replica
                and carried(spec, {t: mine.ready, current: min(n, cur_pods.ready)}, per_replica)
                < carried(spec, {t: mine.ready, current: min(kept, cur_pods.ready)}, per_replica) - 1e-9):
            n = kept  # behind a Service these pods, at an equal share, would lower what every pod carries
        out[current] = max(kept, n)
        return current if has_pods(current) else None

    def hold() -> str | None:
        return keep(cur_pods.live)

    if (current is not None and cur_pods.starting and not cur_pods.ready and not ctx.started
            and cur_pods.starting_since is not None and ctx.startup_timeout_s is not None
            and ctx.now - cur_pods.starting_since > ctx.startup_timeout_s):
        # No pod of the spill shape has ever been Ready (one that was proves the shape starts: a pod
        # that drops out of Ready later is its own trouble, no reason to fail the shape). Cutting
        # pods that never served gives up no capacity, so this goes even while the metrics are unknown.
        out[current] = 0
        failure = f"NotReady: {cur_pods.starting} x {current} (spill-over) not Ready within serving.startupTimeout " \
                  f"({spec.serving.startup_timeout})"
        return (current if has_pods(current) else None), Reason(Code.VARIANT_SWITCH_FAILED, failure), (current, failure)
    if ctx.hold:  # the metrics are unknown or scaling is paused: unknown means hold
        return hold(), None, None
    switching = _switching(workload, t, current)
    cap_t = per_replica.get(t, 0.0)
    if switching:
        return (current if current is not None and has_pods(current) else None), None, None
    still = current if current is not None and has_pods(current) else None
    if not mine.unschedulable or ctx.after_s is None:
        return still, None, None  # nothing waits (or spill-over turned off): spill pods are an old shape to the rule above
    # While target pods wait, spill pods go at most scaleDown.maxStep a decision.
    step_down = max(0, min(workload.desired.get(current, 0), cur_pods.live) - spec.scaling.scale_down.max_step) \
        if current is not None else 0
    if t in per_replica and cap_t <= 0:
        # The running shape is known to carry nothing at the SLO: its waiting pods have no share to
        # stand in for; the spill pods go a step at a time.
        return keep(step_down), None, None
    if mine.waiting_since is None or ctx.now - mine.waiting_since < ctx.after_s or cap_t <= 0:
        return hold(), None, None  # target pods still wait but their share cannot be judged now (a pod re-created, capacity unknown)
    # The share of the target's pods that wait, as far as the forecast needs it (a count held up by
    # the scale-down window is no reason for spill pods); spill pods go at most scaleDown.maxStep a
    # decision while target pods wait (a forecast that dips for one decision takes few of them).
    soon = mine.ready + mine.starting  # target pods on nodes: Ready, or Ready within a cold start
    need = min(replicas, mine.live) * cap_t
    if demand is not None and demand > 0:
        need = min(need, demand)
    alone = carried(spec, {t: soon}, per_replica)
    if need <= alone + 1e-9:
        return keep(step_down), None, None  # nothing to spill: the spill pods go a step at a time
    # One spill shape at a time: the one in use while it has pods (never one failed lately: its
    # Ready pods stay a step at a time, none is started), else any candidate.
    if still is not None and still not in ctx.candidates:
        return keep(min(step_down, cur_pods.ready)), None, None
    candidates: tuple[str, ...] = (still,) if still is not None else ctx.candidates
    best: tuple[tuple[float, ...], str, int, float] | None = None
    for v in candidates:
        pods = workload.pods.get(v, PodCounts())
        shape = next((x for x in spec.variants if x.name == v), None)
        if (shape is None or v == t or shape.accelerator == target.accelerator or per_replica.get(v, 0.0) <= 0
                or (pods.unschedulable and pods.waiting_since is not None and ctx.now - pods.waiting_since >= ctx.after_s)):
            continue  # the same GPU type waits too; no capacity known; its own pods wait for GPUs
        room = min(room_of(v), spec.replicas.max)
        if room <= 0:
            continue
        scored = [(carried(spec, {t: soon, v: k}, per_replica), k) for k in range(1, room + 1)]
        enough = next(((c, k) for c, k in scored if c >= need - 1e-9), None)
        if enough is None:
            most = max(c for c, _ in scored)
            enough = next((c, k) for c, k in scored if c >= most - 1e-9)
        c, k = enough
        if c <= alone + 1e-9:
            continue  # at equal shares these pods beside the target's would carry no more than they do alone
        gpus, price = shape_of(spec, workload, v)
        # Covering the need first, for the least cost (an unpriced shape after every priced one,
        # by its GPUs); then the most carried.
        cost = k * price if price > 0 else 1e9 * k * gpus
        key = (0.0 if c >= need - 1e-9 else 1.0, cost if c >= need - 1e-9 else -c)
        if best is None or key < best[0]:
            best = (key, v, k, c)
    if best is None:
        # No room left (a ceiling lowered), or the spill shape's own pods wait for GPUs too: those on
        # nodes keep serving within the ceilings; the rest go a step at a time.
        on_nodes = min(cur_pods.ready + cur_pods.starting, max(0, room_of(current))) if current is not None else 0
        return keep(max(step_down, on_nodes)), None, None
    _, v, k, c = best
    out[v] = max(out.get(v, 0), k)
    if v == current:
        keep(step_down)
    why = Reason(Code.SPILL_OVER, f"{mine.unschedulable} x {t} Pending for lack of free {target.accelerator} GPUs for "
                                  f"{ctx.now - mine.waiting_since:.0f}s (spillAfter {spec.scaling.variant_switch.spill_after}): "
                                  f"{out[v]} x {v} carry their share meanwhile ({c:.2f} of {need:.2f} req/s)")
    return v, why, None


def _make_room(spec: LLMDeploymentSpec, workload: Workload, target: Variant, replicas: int,
               per_replica: Mapping[str, float], demand: float | None, out: dict[str, int],
               retiring: dict[str, int], utilization: float | None = None, spilled: str | None = None) -> Reason | None:
    """Smaller steps: when no new-shape pod fits under the ceilings and nothing that drains will
    make room for one, release the fewest old pods that make room for one new pod (they drain
    first: the new pod starts at a later decision), for a pod that carries more than is given up.
    What stays serving meanwhile: the load, when the old pods carry it with headroom (only the
    headroom is given up); the load less the tolerance, when they carry it without; nothing
    promised when they cannot carry it anyway. Otherwise the switch waits. Never the spill pods
    (`spilled`): they serve because the target's GPUs are short, and a target pod made room for
    would wait for GPUs as the pods they stand in for did."""
    t = target.name
    mine = workload.pods.get(t, PodCounts())
    cap_t = per_replica.get(t, 0.0)
    equal_shares = not spec.routing.pools
    if (out[t] > mine.live or replicas <= mine.live or not retiring or demand is None or demand <= 0 or cap_t <= 0
            or mine.starting or mine.unschedulable or any(o not in per_replica for o in retiring)):
        return None
    # What the plan will serve (a ceiling may hold it under the demand) and the load itself.
    planned = min(demand, replicas * cap_t)
    # A shape that cannot meet the SLO at all (capacity 0) serves nothing within it.
    serving = (carried(spec, {t: mine.ready, **retiring}, per_replica) if equal_shares
               else mine.ready * cap_t + sum(n * per_replica[o] for o, n in retiring.items()))
    load = demand * (spec.scaling.target_utilization if utilization is None else utilization)
    if serving >= load and serving >= planned:
        # Carrying the load with the headroom the plan gives (a switch to save, at a ceiling the old
        # shape fills): give up headroom, never the load, for one cold start. Waiting for room
        # instead waits for ever: pods that carry the load at the ceiling never leave any.
        keep_serving = load
    elif serving >= load:
        # Carrying the load without that headroom: give up at most the tolerance of it.
        keep_serving = load * (1 - spec.scaling.tolerance)
    else:
        keep_serving = 0.0  # short of the load itself: the SLO is missed either way, the new pod helps most
    # What will be held once the pods being released and those draining are gone.
    g_t, p_t = shape_of(spec, workload, t, room=True)
    held_g, held_c = mine.live * g_t, mine.live * p_t
    for o, n in out.items():
        if o != t:
            g, p = shape_of(spec, workload, o, room=True)
            held_g += n * g
            held_c += n * p
    need_g = held_g + g_t - spec.cost.max_gpus if spec.cost.max_gpus is not None else 0
    ceiling = spec.cost.hourly_ceiling
    need_c = held_c + p_t - float(ceiling) if ceiling is not None and p_t > 0 else 0.0
    if need_g <= 0 and need_c <= 1e-9:
        return None  # pods draining or being released will make the room
    # The least capacity per GPU first; never more capacity than the one new pod brings.
    freed: dict[str, int] = {}
    lost = 0.0

    def left_after(o: str) -> dict[str, int]:  # the old pods left once one more pod of `o` is released
        return {x: n - freed.get(x, 0) - (x == o) for x, n in retiring.items()}

    def pays(o: str) -> bool:
        """Never more capacity given up than the one new pod brings: behind a gateway the pods
        released carry less than it; behind a Service the mix with the new pod Ready carries at least
        what serves now (at equal shares a weak old pod released beside another weak one is a loss the
        new pod does not make up, whatever it carries alone)."""
        if not equal_shares:
            return lost + per_replica[o] < cap_t
        return carried(spec, {t: mine.ready + 1, **left_after(o)}, per_replica) >= serving - 1e-9

    def still_serving(o: str) -> float:
        if not equal_shares:
            return serving - lost - per_replica[o]
        return carried(spec, {t: mine.ready, **left_after(o)}, per_replica)

    for o in sorted(retiring, key=lambda v: per_replica[v] / max(1, shape_of(spec, workload, v)[0])):
        if o == spilled:
            continue
        g, p = shape_of(spec, workload, o, room=True)
        while (out[o] - freed.get(o, 0) > 0 and (need_g > 0 or need_c > 1e-9) and pays(o)
               and still_serving(o) >= keep_serving):
            freed[o] = freed.get(o, 0) + 1
            lost += per_replica[o]
            need_g -= g
            need_c -= p
    if need_g > 0 or need_c > 1e-9:
        return None  # no small step makes room for a pod that carries more than it costs in capacity
    if not mine.ready and sum(freed.values()) >= sum(retiring.values()):
        return None  # never every pod that answers requests, even slowly, before a new one is Ready
    for o, n in freed.items():
        out[o] -= n
        retiring[o] -= n
        if not retiring[o]:
            del retiring[o]
    what = ", ".join(f"{n} x {o}" for o, n in freed.items())
    return Reason(Code.VARIANT_SWITCH, f"{what} released to make room for one {t} pod: the pods serving carry "
                                       f"{serving:.1f} of the {demand:.1f} req/s needed and the ceilings leave no other room")


def on_nodes(spec: LLMDeploymentSpec, workload: Workload, priced_part: bool = False) -> tuple[int, float | None]:
    """GPUs and hourly cost of the pods on nodes now (starting, Ready, draining), every shape at its
    own price: what is being paid. Cost None while a shape with pods there has no price (with
    `priced_part`, the cost of the priced pods: a lower bound)."""
    gpus, cost, priced = 0, 0.0, True
    for v, pods in workload.pods.items():
        if pods.holding_gpus:
            g, p = shape_of(spec, workload, v)
            gpus += pods.holding_gpus * g
            cost += pods.holding_gpus * p
            accelerator = _rendered(spec, workload, v)[0]
            priced = priced and bool(accelerator) and spec.cost.price(accelerator) is not None
    return gpus, (round(cost, 6) if priced or priced_part else None)


def gpus_held(spec: LLMDeploymentSpec, workload: Workload, desired: Mapping[str, int]) -> tuple[int, float]:
    """GPUs and hourly cost held once `desired` is applied, counting every pod that holds GPUs."""
    gpus, cost = 0, 0.0
    for v in set(desired) | set(workload.pods):
        n = held(desired.get(v, 0), workload.pods.get(v, PodCounts()))
        g, p = shape_of(spec, workload, v)
        gpus += n * g
        cost += n * p
    return gpus, cost
