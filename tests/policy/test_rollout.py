"""The rollout (step 13): replicas per variant now, make-before-break, never a pod over a ceiling;
and the switch through the whole decision core against pods that take time to start and drain."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmscale.api import parse_spec
from llmscale.policy import Code, History, Reason, Signals, Workload, decide
from llmscale.policy.rollout import Rollout, Spill, back_under, gpus_held, rollout
from llmscale.policy.types import Action, Condition, PodCounts
from llmscale.policy.variant import gpus_short_since, remember_gpus_short, spill_candidates, stuck
from tests.conftest import spec_dict

L4 = {"name": "l4x1", "accelerator": "nvidia-l4", "gpusPerReplica": 1, "coldStart": "60s"}
H100 = {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2, "coldStart": "90s"}
# --max-model-len: an L4 holds 27k tokens of Llama-3.1's KV cache, and vLLM starts there only with it.
# Behind a load-aware gateway (capacities add up across shapes); SERVICE is the same behind a Service.
SPEC = parse_spec(spec_dict(variants=[L4, H100], replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],
                            cost={"maxGPUs": 10, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}, routing="LoadAware"))
SERVICE = parse_spec({**SPEC.model_dump(by_alias=True, exclude_none=True), "routing": "Service"})
L, H = SPEC.variants
CAP = {"l4x1": 1.0, "h100x2": 4.0}  # one h100x2 pod carries what four l4x1 pods do


def wl(target: str, desired: dict[str, int], pods: dict[str, PodCounts]) -> Workload:
    return Workload(variant=target, replicas=desired.get(target, 0), ready=pods.get(target, PodCounts()).ready,
                    desired=desired, pods=pods)


CASES: list[tuple[str, Workload, Any, int, Rollout]] = [
    ("one shape: scale up within the ceiling",
     wl("l4x1", {"l4x1": 4}, {"l4x1": PodCounts(ready=4)}), L, 6,
     Rollout({"l4x1": 6}, (), 0, {})),
    ("draining pods hold their GPUs: new ones wait for the room",
     wl("l4x1", {"l4x1": 6}, {"l4x1": PodCounts(ready=6, terminating=3)}), L, 10,
     Rollout({"l4x1": 7}, (Reason(Code.WAITING_FOR_ROOM, "3 x l4x1 wait for room under the ceilings (pods still holding GPUs: "
                                                         "0 of other shapes, 3 x l4x1 draining)"),), 3, {})),
    ("switch starts: old pods all serve, new ones fill the room",
     wl("h100x2", {"l4x1": 8, "h100x2": 0}, {"l4x1": PodCounts(ready=8)}), H, 2,
     Rollout({"l4x1": 8, "h100x2": 1}, (
         Reason(Code.VARIANT_SWITCH, "to h100x2: 0/2 Ready; 8 x l4x1 kept serving until the new shape carries the load"),
         Reason(Code.WAITING_FOR_ROOM, "1 x h100x2 wait for room under the ceilings (pods still holding GPUs: 8 of other "
                                       "shapes, 0 x h100x2 draining)")), 1, {"l4x1": 8})),
    ("one new pod Ready: four old pods retire, but their GPUs count until drained",
     wl("h100x2", {"l4x1": 8, "h100x2": 1}, {"l4x1": PodCounts(ready=8), "h100x2": PodCounts(ready=1)}), H, 2,
     Rollout({"l4x1": 4, "h100x2": 1}, (
         Reason(Code.VARIANT_SWITCH, "to h100x2: 1/2 Ready; 4 x l4x1 kept serving until the new shape carries the load"),
         Reason(Code.WAITING_FOR_ROOM, "1 x h100x2 wait for room under the ceilings (pods still holding GPUs: 8 of other "
                                       "shapes, 0 x h100x2 draining)")), 1, {"l4x1": 4})),
    ("drained: the second new pod starts",
     wl("h100x2", {"l4x1": 4, "h100x2": 1}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(ready=1)}), H, 2,
     Rollout({"l4x1": 4, "h100x2": 2}, (
         Reason(Code.VARIANT_SWITCH, "to h100x2: 1/2 Ready; 4 x l4x1 kept serving until the new shape carries the load"),),
         0, {"l4x1": 4})),
    ("the target fully Ready: the old shape goes to zero",
     wl("h100x2", {"l4x1": 4, "h100x2": 2}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(ready=2)}), H, 2,
     Rollout({"l4x1": 0, "h100x2": 2}, (), 0, {})),
    ("old pods that are not Ready are never kept",
     wl("h100x2", {"l4x1": 6, "h100x2": 2}, {"l4x1": PodCounts(ready=2, starting=2, unschedulable=2),
                                             "h100x2": PodCounts(starting=2)}), H, 2,
     Rollout({"l4x1": 2, "h100x2": 2}, (
         Reason(Code.VARIANT_SWITCH, "to h100x2: 0/2 Ready; 2 x l4x1 kept serving until the new shape carries the load"),),
         0, {"l4x1": 2})),
]


@pytest.mark.parametrize(("workload", "target", "replicas", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rollout(workload: Workload, target: Any, replicas: int, expect: Rollout) -> None:
    assert rollout(SPEC, workload, target, replicas, CAP) == expect


def test_without_a_capacity_ratio_every_ready_old_pod_stays_until_the_target_is_ready() -> None:
    w = wl("h100x2", {"l4x1": 3, "h100x2": 2}, {"l4x1": PodCounts(ready=3), "h100x2": PodCounts(ready=1, starting=1)})
    assert rollout(SPEC, w, H, 2, {}).replicas_by_variant == {"l4x1": 3, "h100x2": 2}
    w = wl("h100x2", {"l4x1": 3, "h100x2": 2}, {"l4x1": PodCounts(ready=3), "h100x2": PodCounts(ready=2)})
    assert rollout(SPEC, w, H, 2, {}).replicas_by_variant == {"l4x1": 0, "h100x2": 2}


# Behind a Service every Ready pod gets an equal share: a mix carries its weakest pod's capacity
# times its pods, so old pods retire only as the pods left, at that share, still carry the need.
SERVICE_CASES = [
    ("an L4 beside an H100 carries an L4's share: seven stay with one of two H100 pods Ready (four when pooled)",
     wl("h100x2", {"l4x1": 8, "h100x2": 1}, {"l4x1": PodCounts(ready=8), "h100x2": PodCounts(ready=1)}), H, 2, None,
     {"l4x1": 7, "h100x2": 1}, {"l4x1": 4, "h100x2": 1}),
    ("a demand of 6 with one H100 Ready: every L4 stays (two when pooled)",
     wl("h100x2", {"l4x1": 4, "h100x2": 2}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(ready=1, starting=1)}), H, 2, 6.0,
     {"l4x1": 4, "h100x2": 2}, {"l4x1": 2, "h100x2": 2}),
    ("one Ready H100 carries a demand of 2 alone: the L4 pods go either way",
     wl("h100x2", {"l4x1": 4, "h100x2": 2}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(ready=1, starting=1)}), H, 2, 2.0,
     {"l4x1": 0, "h100x2": 2}, {"l4x1": 0, "h100x2": 2}),
    ("down to L4 with half of them Ready: an H100 takes an L4's share, both would stay (one when pooled); but 8 + 4 GPUs"
     " are over maxGPUs 10 (lowered), so two starting L4 pods go (what serves now goes last)",
     wl("l4x1", {"l4x1": 8, "h100x2": 2}, {"l4x1": PodCounts(ready=4, starting=4), "h100x2": PodCounts(ready=2)}), L, 8, 8.0,
     {"l4x1": 6, "h100x2": 2}, {"l4x1": 8, "h100x2": 1}),
    ("review: no number of L4 pods reaches the need beside three Ready H100s, and any L4 lowers what all carry: none kept",
     wl("h100x2", {"l4x1": 2, "h100x2": 4}, {"l4x1": PodCounts(ready=2), "h100x2": PodCounts(ready=3, starting=1)}), H, 4, None,
     {"l4x1": 0, "h100x2": 4}, {"l4x1": 2, "h100x2": 4}),
    ("down to L4 with seven Ready: one H100 at an L4's share makes the eighth",
     wl("l4x1", {"l4x1": 8, "h100x2": 2}, {"l4x1": PodCounts(ready=7, starting=1), "h100x2": PodCounts(ready=2)}), L, 8, 8.0,
     {"l4x1": 8, "h100x2": 1}, {"l4x1": 8, "h100x2": 1}),
]


@pytest.mark.parametrize(("workload", "target", "replicas", "demand", "service", "pooled"), [c[1:] for c in SERVICE_CASES],
                         ids=[c[0] for c in SERVICE_CASES])
def test_old_pods_retire_as_the_routing_lets_the_new_ones_carry(workload: Workload, target: Any, replicas: int,
                                                                 demand: float | None, service: dict[str, int],
                                                                 pooled: dict[str, int]) -> None:
    got = rollout(SERVICE, workload, target, replicas, CAP, demand=demand)
    assert got.replicas_by_variant == service
    assert got.retiring == {v: n for v, n in service.items() if v != target.name and n}
    assert rollout(SPEC, workload, target, replicas, CAP, demand=demand).replicas_by_variant == pooled


def test_a_forecast_of_zero_never_retires_old_pods_before_the_new_ones_are_ready() -> None:
    """Review: with demand 0 every L4 pod went to 0 while the H100 pods were still starting."""
    w = wl("h100x2", {"l4x1": 4, "h100x2": 2}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(starting=2)})
    assert rollout(SPEC, w, H, 2, CAP, demand=0.0).replicas_by_variant == {"l4x1": 4, "h100x2": 2}
    # One Ready H100 pod already carries a demand of 2 req/s (4 per pod): the L4 pods go.
    w = wl("h100x2", {"l4x1": 4, "h100x2": 2}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(ready=1, starting=1)})
    assert rollout(SPEC, w, H, 2, CAP, demand=2.0).replicas_by_variant == {"l4x1": 0, "h100x2": 2}
    assert rollout(SPEC, w, H, 2, CAP, demand=6.0).replicas_by_variant == {"l4x1": 2, "h100x2": 2}


def test_smaller_steps_when_the_old_shape_cannot_carry_the_load_and_fills_the_ceiling() -> None:
    """10 L4 pods fill maxGPUs 10 and carry 10 of the 30 req/s needed: two are released so that one
    H100 pod (which carries four L4 pods' load) can start; nothing more while they drain."""
    w = wl("h100x2", {"l4x1": 10, "h100x2": 0}, {"l4x1": PodCounts(ready=10)})
    got = rollout(SPEC, w, H, 4, CAP, demand=30.0)
    assert got.replicas_by_variant == {"l4x1": 8, "h100x2": 0}
    assert got.reasons[0] == Reason(Code.VARIANT_SWITCH, "2 x l4x1 released to make room for one h100x2 pod: the pods "
                                                         "serving carry 10.0 of the 30.0 req/s needed and the ceilings "
                                                         "leave no other room")
    draining = wl("h100x2", {"l4x1": 8, "h100x2": 0}, {"l4x1": PodCounts(ready=8, terminating=2)})
    assert rollout(SPEC, draining, H, 4, CAP, demand=30.0).replicas_by_variant == {"l4x1": 8, "h100x2": 0}
    drained = wl("h100x2", {"l4x1": 8, "h100x2": 0}, {"l4x1": PodCounts(ready=8)})
    assert rollout(SPEC, drained, H, 4, CAP, demand=30.0).replicas_by_variant == {"l4x1": 8, "h100x2": 1}
    # When the L4 pods carry the load with headroom, only the headroom is given up: 9 req/s needed at
    # 85 % utilization is a load of 7.65; the surplus L4 pod goes (what step 1 keeps) and one more
    # (8 still carry the load) so that an H100 pod fits; never a pod that would leave less than the load.
    got = rollout(SPEC, w, H, 4, CAP, demand=9.0)
    assert got.replicas_by_variant == {"l4x1": 8, "h100x2": 0}
    assert got.reasons[0] == Reason(Code.VARIANT_SWITCH, "1 x l4x1 released to make room for one h100x2 pod: the pods "
                                                         "serving carry 9.0 of the 9.0 req/s needed and the ceilings "
                                                         "leave no other room")
    assert rollout(SPEC, w, H, 4, CAP, demand=9.5 / 0.85 + 0.2).replicas_by_variant == {"l4x1": 10, "h100x2": 0}
    # A held peak planned at full capacity (the headroom returning bursts showed): the 9 req/s are the
    # load itself, with no headroom to give up, so only the surplus pod goes and 9 keep serving.
    assert rollout(SPEC, w, H, 4, CAP, demand=9.0, utilization=1.0).replicas_by_variant == {"l4x1": 9, "h100x2": 0}


def test_a_switch_to_save_at_the_gpu_ceiling_goes_in_small_steps_instead_of_waiting_for_ever() -> None:
    """Issue 12 (seen in CI): ten L4 pods at maxGPUs 10 carry 6 req/s with headroom (demand 8 at
    75 %); the cheaper H100 shape needs a GPU that they never leave. Before: WaitingForRoom for
    ever. Now each step releases what keeps the load served, and every new pod starts in the room."""
    sp = parse_spec(spec_dict(variants=[L4, {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1}],
                              scaling={"targetUtilization": 0.75}, engineArgs=["--max-model-len=8192"],
                              cost={"maxGPUs": 10, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    caps = {"l4x1": 1.0, "h100x1": 4.0}
    w = wl("h100x1", {"l4x1": 10, "h100x1": 0}, {"l4x1": PodCounts(ready=10)})
    got = rollout(sp, w, sp.variants[1], 2, caps, demand=8.0)
    assert got.replicas_by_variant == {"l4x1": 8, "h100x1": 0}  # 2 surplus over the demand; 8 carry it
    assert got.waiting_for_room == 2
    # Drained: the first H100 pod starts in the room, the L4 pods keep serving until it is Ready.
    w = wl("h100x1", {"l4x1": 8, "h100x1": 0}, {"l4x1": PodCounts(ready=8)})
    assert rollout(sp, w, sp.variants[1], 2, caps, demand=8.0).replicas_by_variant == {"l4x1": 8, "h100x1": 2}
    # maxGPUs 8, the demand exactly (no surplus): one L4 pod goes, 7 still carry the load of 6.
    w = wl("h100x1", {"l4x1": 8, "h100x1": 0}, {"l4x1": PodCounts(ready=8)})
    sp8 = parse_spec(spec_dict(variants=[L4, {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1}],
                               scaling={"targetUtilization": 0.75},
                               cost={"maxGPUs": 8, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    got = rollout(sp8, w, sp8.variants[1], 2, caps, demand=8.0)
    assert got.replicas_by_variant == {"l4x1": 7, "h100x1": 0}
    assert got.reasons[0].message.startswith("1 x l4x1 released to make room for one h100x1 pod")


def test_making_room_never_releases_every_pod_that_answers_requests() -> None:
    """Review: four L4 pods that cannot meet the SLO (capacity 0) were all released to make room for
    one 4-GPU pod, leaving nothing serving for a cold start."""
    sp = parse_spec(spec_dict(variants=[L4, {"name": "h100x4", "accelerator": "nvidia-h100", "gpusPerReplica": 4}],
                              cost={"maxGPUs": 4, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = wl("h100x4", {"l4x1": 4, "h100x4": 0}, {"l4x1": PodCounts(ready=4)})
    got = rollout(sp, w, sp.variants[1], 1, {"l4x1": 0.0, "h100x4": 5.0}, demand=3.0 / 0.85)
    assert got.replicas_by_variant == {"l4x1": 4, "h100x4": 0} and got.waiting_for_room == 1


def test_making_room_compares_the_load_itself_not_the_planned_headroom() -> None:
    """Review: 8 L4 pods carrying 8 req/s against a load of 7 (demand 10 at 70 % utilization) were
    cut to 4. Short of the headroom but carrying the load, at most the tolerance (10 %) of the load
    is given up for one cold start; ten L4 pods at a load of 9.5 give up one for an H100 pod."""
    sp = parse_spec(spec_dict(variants=[L4, H100], scaling={"targetUtilization": 0.7},
                              cost={"maxGPUs": 8, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = wl("h100x2", {"l4x1": 8, "h100x2": 0}, {"l4x1": PodCounts(ready=8)})
    assert rollout(sp, w, sp.variants[1], 3, CAP, demand=7.0 / 0.7).replicas_by_variant == {"l4x1": 8, "h100x2": 0}
    one = {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1}
    sp = parse_spec(spec_dict(variants=[L4, one], scaling={"targetUtilization": 0.7},
                              cost={"maxGPUs": 10, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = wl("h100x1", {"l4x1": 10, "h100x1": 0}, {"l4x1": PodCounts(ready=10)})
    caps = {"l4x1": 1.0, "h100x1": 10.0}
    assert rollout(sp, w, sp.variants[1], 2, caps, demand=9.5 / 0.7).replicas_by_variant == {"l4x1": 9, "h100x1": 0}


def test_a_cost_ceiling_counts_each_pod_at_its_own_price() -> None:
    """Old L4 pods at 0.80/h, new H100 pods at 8.00/h (2 GPUs): 4 x L4 + 1 x H100 = 11.20 <= 12."""
    sp = parse_spec(spec_dict(variants=[L4, H100], cost={"maxHourlyCost": "12.00", "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = wl("h100x2", {"l4x1": 4}, {"l4x1": PodCounts(ready=4)})
    got = rollout(sp, w, sp.variants[1], 2, CAP)
    assert got.replicas_by_variant == {"l4x1": 4, "h100x2": 1}
    assert gpus_held(sp, w, got.replicas_by_variant) == (6, pytest.approx(11.2))


def test_stuck_names_the_cause_only_after_the_timeout_and_only_mid_switch() -> None:
    pods = {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(unschedulable=1, waiting_since=1000.0)}
    w = wl("h100x2", {"l4x1": 4, "h100x2": 1}, pods)
    assert stuck(SPEC, w, 1000.0 + 299) is None
    assert stuck(SPEC, w, 1000.0 + 301) == "Unschedulable: 1 x h100x2 Pending for lack of free nvidia-h100 GPUs for over 5m"
    alone = wl("h100x2", {"h100x2": 1}, {"h100x2": PodCounts(unschedulable=1, waiting_since=1000.0)})
    assert stuck(SPEC, alone, 1000.0 + 301) is None  # nothing to go back to: pods wait for GPUs (GPUsUnavailable)
    slow = wl("h100x2", {"l4x1": 4, "h100x2": 1}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(starting=1, starting_since=0.0)})
    assert stuck(SPEC, slow, 1801.0) == "NotReady: 1 x h100x2 not Ready within serving.startupTimeout (30m)"
    # Earlier Pending pods let go under a lowered ceiling (History.gpus_short): the wait runs from
    # the first of them, not from the pod created after.
    young = wl("h100x2", {"l4x1": 4, "h100x2": 1}, {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(unschedulable=1, waiting_since=1200.0)})
    assert stuck(SPEC, young, 1000.0 + 301) is None
    assert stuck(SPEC, young, 1000.0 + 301, short_since=1000.0) == \
        "Unschedulable: 1 x h100x2 Pending for lack of free nvidia-h100 GPUs for over 5m"
    assert stuck(SPEC, young, 1000.0 + 301, short_since=1250.0) is None  # the older of the two counts


def test_a_shape_remembered_short_of_gpus_is_no_spill_candidate_while_remembered() -> None:
    w = wl("h100x2", {"h100x2": 2}, {"h100x2": PodCounts(ready=1, unschedulable=1, waiting_since=900.0)})
    short = History(gpus_short="l4x1", gpus_short_since=1000.0)
    assert spill_candidates(SPEC, w, History(), 1100.0) == ("l4x1", "h100x2")
    assert spill_candidates(SPEC, w, short, 1100.0) == ("h100x2",)
    assert spill_candidates(SPEC, w, short, 1000.0 + 1201.0) == ("l4x1", "h100x2")  # 5m + 15m later: expired


def _short(pods: dict[str, PodCounts], target: str = "h100x2") -> Workload:
    return wl(target, {v: p.live for v, p in pods.items()}, pods)


PENDING = PodCounts(unschedulable=2, waiting_since=970.0)
# (why, workload, counts applied, applied, a cut, history before, now, (gpus_short, gpus_short_since) after)
GPUS_SHORT: list[tuple[str, Workload, dict[str, int], bool, bool, History, float, tuple[str | None, float | None]]] = [
    ("a cut lets the target's Pending pods go: remembered from then",
     _short({"l4x1": PodCounts(ready=8), "h100x2": PENDING}), {"l4x1": 4, "h100x2": 0}, True, True, History(), 1000.0,
     ("h100x2", 1000.0)),
    ("review: pods of the shape scheduled before the cut (while others waited) prove nothing",
     _short({"l4x1": PodCounts(ready=6), "h100x2": PodCounts(starting=2, starting_since=980.0, scheduled_last=985.0)}),
     {"l4x1": 6, "h100x2": 2},
     True, False, History(gpus_short="h100x2", gpus_short_since=1000.0), 1015.0, ("h100x2", 1000.0)),
    ("a cut that keeps them all: nothing learnt",
     _short({"l4x1": PodCounts(ready=8), "h100x2": PENDING}), {"l4x1": 4, "h100x2": 2}, True, True, History(), 1000.0,
     (None, None)),
    ("not applied (Recommend): no pod went, the Pending ones still say it",
     _short({"l4x1": PodCounts(ready=8), "h100x2": PENDING}), {"l4x1": 4, "h100x2": 0}, False, True, History(), 1000.0,
     (None, None)),
    ("fewer target pods without a cut (a scale-down): no shortage learnt",
     _short({"l4x1": PodCounts(ready=8), "h100x2": PENDING}), {"l4x1": 4, "h100x2": 1}, True, False, History(), 1000.0,
     (None, None)),
    ("a second cut of younger Pending pods keeps the older start",
     _short({"l4x1": PodCounts(ready=4), "h100x2": PodCounts(unschedulable=1, waiting_since=1100.0)}), {"l4x1": 4, "h100x2": 0},
     True, True, History(gpus_short="h100x2", gpus_short_since=970.0), 1200.0, ("h100x2", 970.0)),
    ("kept while the target changes (a stalled switch went back): no pod of it was scheduled",
     _short({"l4x1": PodCounts(ready=4)}, target="l4x1"), {"l4x1": 4}, True, False,
     History(gpus_short="h100x2", gpus_short_since=970.0), 1300.0, ("h100x2", 970.0)),
    ("a pod of that shape scheduled after the cut: GPUs came, forgotten (review: the newest one, not the oldest)",
     _short({"l4x1": PodCounts(ready=4), "h100x2": PodCounts(starting=2, starting_since=900.0, scheduled_last=1250.0)}),
     {"l4x1": 4, "h100x2": 2},
     True, False, History(gpus_short="h100x2", gpus_short_since=970.0), 1300.0, (None, None)),
    ("one starting since before the cut proves nothing, nor one that lost Ready since (review: a blip)",
     _short({"l4x1": PodCounts(ready=4), "h100x2": PodCounts(starting=2, starting_since=1250.0, scheduled_last=900.0)}),
     {"l4x1": 4, "h100x2": 2},
     True, False, History(gpus_short="h100x2", gpus_short_since=970.0), 1300.0, ("h100x2", 970.0)),
    ("expired: unschedulableTimeout (5m) and the dwell (15m) after it began",
     _short({"l4x1": PodCounts(ready=4)}, target="l4x1"), {"l4x1": 4}, True, False,
     History(gpus_short="h100x2", gpus_short_since=970.0), 970.0 + 1201.0, (None, None)),
]


@pytest.mark.parametrize(("why", "w", "counts", "applied", "cut", "before", "now", "after"), GPUS_SHORT, ids=[c[0] for c in GPUS_SHORT])
def test_the_memory_of_a_shape_short_of_gpus(why: str, w: Workload, counts: dict[str, int], applied: bool, cut: bool,
                                             before: History, now: float, after: tuple[str | None, float | None]) -> None:
    got = remember_gpus_short(SPEC, w, w.variant or "", counts, applied, cut, before, now)
    assert (got.gpus_short, got.gpus_short_since) == after
    assert got.with_(gpus_short=None, gpus_short_since=None) == before.with_(gpus_short=None, gpus_short_since=None)
    assert gpus_short_since(SPEC, got, "h100x2", now) == after[1]


# ---- properties ---------------------------------------------------------------------------------------

counts = st.builds(PodCounts, starting=st.integers(0, 4), ready=st.integers(0, 8), terminating=st.integers(0, 4),
                   unschedulable=st.integers(0, 2), waiting_since=st.one_of(st.none(), st.floats(0, 200)))
SHAPES = [L4, H100, {"name": "a100x4", "accelerator": "nvidia-a100", "gpusPerReplica": 4, "coldStart": "120s"}]
PRICES = {"nvidia-h100": "4.00", "nvidia-l4": "0.80", "nvidia-a100": "2.50"}


@st.composite
def fleets(draw: Any) -> tuple[Any, Workload, Any, int, dict[str, float], float | None]:
    k = draw(st.integers(2, 3))
    sp = parse_spec(spec_dict(variants=SHAPES[:k], replicas={"min": 1, "max": 16},
                              cost={"maxGPUs": draw(st.integers(4, 24)), "maxHourlyCost": f"{draw(st.floats(5, 60)):.2f}",
                                    "prices": PRICES}, routing=draw(st.sampled_from(["Service", "LoadAware"]))))
    pods = {v.name: draw(counts) for v in sp.variants if draw(st.booleans())}
    desired = {v: max(0, p.live + draw(st.integers(-2, 2))) for v, p in pods.items()}
    target = draw(st.sampled_from(sp.variants))
    desired.setdefault(target.name, 0)
    caps = {v.name: draw(st.floats(0.1, 10)) for v in sp.variants if draw(st.booleans())}
    demand = draw(st.one_of(st.none(), st.floats(0, 100)))
    # Spill-over on or off, at any time after the target's pods began to wait, from any shape in use.
    names = [v.name for v in sp.variants]
    spill = draw(st.one_of(st.none(), st.builds(Spill, st.floats(0, 400), st.sampled_from([None, 0.0, 60.0]),
                                                st.one_of(st.none(), st.sampled_from(names)),
                                                st.lists(st.sampled_from(names), unique=True).map(tuple), st.booleans())))
    if draw(st.booleans()):
        # A spill scene: target pods wait for GPUs past spillAfter, no switch under way, spill pods
        # of one other shape (or none yet) in any phase.
        other = draw(st.sampled_from([n for n in names if n != target.name]))
        pods = {target.name: draw(counts).__class__(**{**vars(draw(counts)), "unschedulable": draw(st.integers(1, 3)),
                                                        "waiting_since": 0.0})}
        if draw(st.booleans()):
            pods[other] = draw(counts)
        desired = {v: max(0, p.live + draw(st.integers(-1, 1))) for v, p in pods.items()}
        desired[target.name] = pods[target.name].live
        caps = {v.name: draw(st.floats(0.1, 10)) for v in sp.variants}
        spill = Spill(draw(st.floats(60, 400)), 60.0, draw(st.sampled_from([None, other])), tuple(names),
                      draw(st.sampled_from([False, False, False, True])))
        replicas = desired[target.name]
    else:
        replicas = draw(st.integers(0, 16))
    return sp, Workload(variant=target.name, replicas=desired[target.name], ready=pods.get(target.name, PodCounts()).ready,
                        desired=desired, pods=pods), target, replicas, caps, demand, spill


@settings(max_examples=500, deadline=None)
@given(fleets())
def test_no_pod_is_created_over_a_ceiling_and_ready_capacity_is_kept(case: tuple[Any, Workload, Any, int, dict[str, float],
                                                                                  float | None, Spill | None]) -> None:
    sp, w, target, replicas, caps, demand, spill = case
    moved = rollout(sp, w, target, replicas, caps, demand, spill=spill)
    out = moved.replicas_by_variant
    creates = any(out.get(v, 0) > w.pods.get(v, PodCounts()).live for v in out)
    if creates:
        gpus, cost = gpus_held(sp, w, out)
        assert gpus <= sp.cost.max_gpus  # type: ignore[operator]
        assert cost <= float(sp.cost.max_hourly_cost) + 1e-6  # type: ignore[arg-type]
    # Once the pods let go have drained, what is kept fits under the ceilings, however far over
    # them the fleet started (a user lowered them); and pods are let go for a ceiling only then.
    max_cost = float(sp.cost.max_hourly_cost)  # type: ignore[arg-type]
    kept = [(n * sp.variant(v).gpus_per_replica, n * sp.variant(v).gpus_per_replica * float(sp.cost.price(sp.variant(v).accelerator)))
            for v, n in out.items()]
    assert sum(g for g, _ in kept) <= sp.cost.max_gpus and sum(c for _, c in kept) <= max_cost + 1e-6, (out, moved.reasons)  # type: ignore[operator]
    lowered = any(r.code in (Code.BUDGET_GPUS, Code.BUDGET_COST) for r in moved.reasons)
    held_before = gpus_held(sp, w, w.desired)
    fits_before = (held_before[0] <= sp.cost.max_gpus and held_before[1] <= max_cost + 1e-6  # type: ignore[operator]
                   and replicas * target.gpus_per_replica <= sp.cost.max_gpus  # type: ignore[operator]
                   and replicas * target.gpus_per_replica * float(sp.cost.price(target.accelerator)) <= max_cost + 1e-6)  # type: ignore[arg-type]
    assert not (lowered and fits_before), (out, moved.reasons, w)
    mine = w.pods.get(target.name, PodCounts())
    for v, n in out.items():
        if v == moved.spill and spill is not None:
            pods = w.pods.get(v, PodCounts())
            if n > pods.live:
                # Spill pods are created only for target pods that wait for GPUs past spillAfter,
                # on another GPU type, with the metrics known, but for the floor's (replicas.min, at
                # least one) that wait, which need no metric.
                floor = min(max(sp.replicas.min, 1 if replicas > 0 else 0), mine.live) - mine.ready - mine.starting
                assert (not spill.hold or n <= max(floor, pods.live)) and spill.after_s is not None
                assert mine.unschedulable and mine.waiting_since is not None
                assert spill.now - mine.waiting_since >= spill.after_s and v in spill.candidates
                assert sp.variant(v).accelerator != target.accelerator
            elif n > pods.ready:
                assert spill.hold or mine.unschedulable  # starting spill pods kept only while held or while target pods wait
            if v == spill.shape and spill.hold and (pods.ready or not pods.starting):
                # None on a node goes on unknown metrics (Pending ones only where the ceilings leave no
                # room), unless behind a Service a weaker pod at an equal share lowers what all carry.
                weaker = sp.routing == "Service" and caps.get(v, 0.0) < caps.get(target.name, 0.0)
                assert n >= min(w.desired.get(v, 0), pods.ready + pods.starting) or weaker or lowered
        elif v != target.name:
            assert n <= w.pods.get(v, PodCounts()).ready  # a retiring shape keeps Ready pods only

    def carries(ready: dict[str, int]) -> float:
        # Behind a load-aware gateway capacities add up; behind a Service every pod takes an equal share.
        present = {v: n for v, n in ready.items() if n > 0}
        if not present:
            return 0.0
        if sp.routing == "LoadAware":
            return sum(n * caps[v] for v, n in present.items())
        return sum(present.values()) * min(caps[v] for v in present)

    if all(caps.get(v, 0) > 0 for v in set(w.pods) | {target.name}):
        before = carries({v: p.ready for v, p in w.pods.items()})
        after = carries({v: min(n, w.pods.get(v, PodCounts()).ready) for v, n in out.items()})
        floor = max(1, sp.replicas.min) * caps[target.name]
        need = replicas * caps[target.name] if demand is None or demand <= 0 else min(replicas * caps[target.name], max(demand, floor))
        if after < min(before, need) - 1e-6 and not lowered:  # the ceiling is the user's word: it wins
            # Break before make only in a small step, with no new-shape pod on its way, giving up less
            # capacity than one new pod brings: never below the load when what serves carries it with
            # headroom (only the headroom goes), never more than the tolerance of the load when it
            # carries the load without headroom.
            # (Old pods beyond what the plan will serve may go too: that is no break.)
            assert demand is not None and not mine.starting and not mine.unschedulable
            assert min(before, need) - after < caps[target.name], (out, w)
            planned = min(demand, replicas * caps[target.name])  # what the plan will serve (a ceiling may hold it under the demand)
            load = demand * sp.scaling.target_utilization
            if before >= load and planned >= load:
                assert after >= load - 1e-6, (out, w, load)  # the old pods and the plan carry the load: only headroom goes


_LOWERED_SPEC = parse_spec(spec_dict(variants=SHAPES[:3], replicas={"min": 1, "max": 16}, cost={"maxGPUs": 10, "prices": PRICES},
                                     routing="LoadAware"))
_LOWERED_CAPS = {"l4x1": 1.0, "h100x2": 4.0, "a100x4": 2.0}


@settings(max_examples=500, deadline=None)
@given(fleets(), st.integers(1, 24), st.floats(1, 40))
# Review (third round): drawn fleets seldom hold these, where putting back the least valued pods
# first, or other shapes' starting pods in the Ready band, went unseen.
@example(case=(_LOWERED_SPEC, wl("h100x2", {"l4x1": 1, "h100x2": 2, "a100x4": 1}, {
    "l4x1": PodCounts(unschedulable=1), "h100x2": PodCounts(ready=1, starting=1), "a100x4": PodCounts(ready=1)}),
    _LOWERED_SPEC.variant("h100x2"), 0, _LOWERED_CAPS, None, None), max_gpus=4, max_cost=100.0)
@example(case=(_LOWERED_SPEC, wl("h100x2", {"l4x1": 2, "h100x2": 1, "a100x4": 1}, {
    "l4x1": PodCounts(starting=2), "h100x2": PodCounts(starting=1), "a100x4": PodCounts(ready=1)}),
    _LOWERED_SPEC.variant("h100x2"), 0, _LOWERED_CAPS, None, None), max_gpus=2, max_cost=100.0)
@example(case=(_LOWERED_SPEC, wl("l4x1", {"l4x1": 2, "h100x2": 2}, {
    "l4x1": PodCounts(ready=1, unschedulable=1), "h100x2": PodCounts(ready=1, starting=1)}),
    _LOWERED_SPEC.variant("l4x1"), 0, _LOWERED_CAPS, None, None), max_gpus=5, max_cost=100.0)
def test_a_lowered_ceiling_lets_go_what_serves_nothing_first_and_no_more_than_it_must(
        case: tuple[Any, Workload, Any, int, dict[str, float], float | None, Spill | None], max_gpus: int,
        max_cost: float) -> None:
    sp, w, target, _, caps, _, _ = case
    sp = parse_spec({**sp.model_dump(by_alias=True, exclude_none=True),
                     "cost": {"maxGPUs": max_gpus, "maxHourlyCost": f"{max_cost:.2f}", "prices": PRICES}})
    t = target.name
    asked = {v: max(0, n) for v, n in w.desired.items()}  # what the rollout would keep, the target's count included
    out = dict(asked)
    why = back_under(sp, w, t, out, caps)

    def cost(counts: dict[str, int]) -> tuple[int, float]:
        return (sum(n * sp.variant(v).gpus_per_replica for v, n in counts.items()),
                sum(n * sp.variant(v).gpus_per_replica * float(PRICES[sp.variant(v).accelerator]) for v, n in counts.items()))

    def fits(counts: dict[str, int]) -> bool:
        g, c = cost(counts)
        return g <= max_gpus and c <= float(f"{max_cost:.2f}") + 1e-9

    assert fits(out) and all(out[v] <= asked[v] for v in asked)
    assert (why is None) == (out == asked) == fits(asked)

    def pods(v: str) -> PodCounts:
        return w.pods.get(v, PodCounts())

    for v in asked:  # no pod let go that the ceilings would hold (a Pending one: beside what drains too)
        if out[v] < asked[v]:
            held_g, held_c = gpus_held(sp, w, {**out, v: out[v] + 1})
            pending = out[v] + 1 > pods(v).ready + pods(v).starting
            assert not fits({**out, v: out[v] + 1}) or (
                pending and (held_g > max_gpus or held_c > float(f"{max_cost:.2f}") + 1e-9)), (v, asked, out)

    # Less valued pods go first: a pod of a band is let go only once every pod of the bands below
    # it is (those kept then are put back into room the bigger pod left, and no more of it fits
    # without them). Bands, least valued first: Pending (or not created), others' starting, the
    # target's starting, others' Ready (weakest per GPU first), the target's Ready.
    def band(v: str, k: int) -> int:
        """The band of the k-th pod (from 1) of shape v that the count keeps."""
        p = pods(v)
        if k > p.ready + p.starting:
            return 0
        if k > p.ready:
            return 1 if v != t else 2
        return 3 if v != t else 10

    others = sorted((v for v in asked if v != t), key=lambda v: (caps.get(v, 0.0) / sp.variant(v).gpus_per_replica, v))
    rank = {v: 3 + i / (len(others) + 1) for i, v in enumerate(others)}

    def value(v: str, k: int) -> float:
        b = band(v, k)
        return rank[v] if b == 3 else b

    for v in asked:
        for k in range(out[v] + 1, asked[v] + 1):  # a pod let go
            lost = value(v, k)
            if lost == 0:
                # A Pending pod is put back only where it fits beside what holds GPUs until the
                # pods let go have drained (it may be scheduled before they are gone).
                g, c = gpus_held(sp, w, {**out, v: out[v] + 1})
                if g > max_gpus or c > float(f"{max_cost:.2f}") + 1e-9:
                    break
            below = {u: sum(1 for j in range(1, out[u] + 1) if value(u, j) < lost) for u in asked}
            without = {u: out[u] - below[u] for u in asked}
            assert not fits({**without, v: without[v] + 1}), (v, k, asked, out, w.pods, caps)
            break  # the first pod let go of each shape is the most valued of them


# ---- the whole core, over time, against pods that start and drain --------------------------------


@dataclass
class Pod:
    variant: str
    created: float
    ready_at: float | None  # None: Pending, no free GPU of its type
    gone_at: float | None = None  # set when deleted: draining until then


@dataclass
class Cluster:
    """Deployments per variant, pods with cold starts and drains, a finite pool of GPUs per type."""

    spec: Any
    pool: dict[str, int]
    pods: list[Pod] = field(default_factory=list)
    desired: dict[str, int] = field(default_factory=dict)
    target: str = ""
    since: float | None = None
    failed: dict[str, tuple[float, str]] = field(default_factory=dict)

    def shape(self, name: str) -> Any:
        return self.spec.variant(name)

    def step(self, now: float) -> None:
        self.pods = [p for p in self.pods if p.gone_at is None or p.gone_at > now]
        for p in self.pods:
            v = self.shape(p.variant)
            if p.ready_at is None and p.gone_at is None:
                used = sum(self.shape(q.variant).gpus_per_replica for q in self.pods
                           if q.ready_at is not None and self.shape(q.variant).accelerator == v.accelerator)
                if used + v.gpus_per_replica <= self.pool[v.accelerator]:
                    p.ready_at = now + float(v.cold_start[:-1])

    def workload(self, now: float) -> Workload:
        pods: dict[str, PodCounts] = {}
        for name in {p.variant for p in self.pods} | set(self.desired):
            mine = [p for p in self.pods if p.variant == name]
            live = [p for p in mine if p.gone_at is None]
            starting = [p for p in live if p.ready_at is not None and p.ready_at > now]
            waiting = [p for p in live if p.ready_at is None]
            pods[name] = PodCounts(
                starting=len(starting), ready=sum(1 for p in live if p.ready_at is not None and p.ready_at <= now),
                terminating=len(mine) - len(live), unschedulable=len(waiting),
                starting_since=min((p.created for p in starting), default=None),
                waiting_since=min((p.created for p in waiting), default=None),
                scheduled_last=max((p.created for p in starting), default=None))
        t = pods.get(self.target, PodCounts())
        return Workload(variant=self.target, replicas=self.desired.get(self.target, 0), ready=t.ready, starting=t.starting,
                        pending_unschedulable=t.unschedulable, pods=pods, desired=dict(self.desired),
                        target_since=self.since, failed=dict(self.failed), terminating=sum(p.terminating for p in pods.values()))

    def apply(self, by_variant: dict[str, int], target: str, failed: tuple[str, str] | None, now: float) -> None:
        if target != self.target:
            self.target, self.since = target, now
        if failed:
            self.failed[failed[0]] = (now, failed[1])
        for name, n in by_variant.items():
            self.desired[name] = n
            live = [p for p in self.pods if p.variant == name and p.gone_at is None]
            for _ in range(n - len(live)):
                self.pods.append(Pod(name, now, None))
            # The ReplicaSet deletes Pending pods first, then starting ones, then Ready ones.
            for p in sorted(live, key=lambda p: (p.ready_at is not None, p.ready_at is not None and p.ready_at <= now))[: max(0, len(live) - n)]:
                p.gone_at = now if p.ready_at is None else now + 45.0  # a Ready pod drains
        self.step(now)

    def held(self) -> tuple[int, float]:
        gpus, cost = 0, 0.0
        for p in self.pods:
            if p.ready_at is not None or p.gone_at is not None:
                v = self.shape(p.variant)
                gpus += v.gpus_per_replica
                cost += v.gpus_per_replica * float(self.spec.cost.price(v.accelerator) or 0)
        return gpus, cost


def _by_shape(w: Workload, load: float, now: float) -> Signals:
    """Within the SLO while the Ready pods carry the load (an h100x2 pod some 30 req/s, an L4 pod 6)."""
    ok = load <= 30.0 * w.pods.get("h100x2", PodCounts()).ready + 6.0 * w.pods.get("l4x1", PodCounts()).ready
    ready = sum(p.ready for p in w.pods.values())
    return Signals(ttft_quantile=0.2 if ok else 3.0, itl_quantile=0.03 if ok else 0.3, request_rate=load,
                   prompt_tokens_rate=load * 1000, generation_tokens_rate=load * 200,
                   requests_waiting=0.0 if ok else load * 5, requests_running=min(load, 8.0 * ready),
                   ttft_attainment=0.99 if ok else 0.5, itl_attainment=0.99 if ok else 0.5, kv_cache_usage=0.3,
                   gpu_utilization=0.5, sampled_at=now)


def _signals(spec: Any, w: Workload, load: float, now: float) -> Signals:
    """Latency over target when the Ready pods cannot carry the load (a crude, monotone stand-in)."""
    ready = sum(p.ready for p in w.pods.values())
    ok = ready > 0 and load <= ready * 2.0
    return Signals(ttft_quantile=0.2 if ok else 3.0, itl_quantile=0.03 if ok else 0.3, request_rate=load,
                   prompt_tokens_rate=load * 1000, generation_tokens_rate=load * 200,
                   requests_waiting=0.0 if ok else load * 5, requests_running=min(load, 8.0 * ready),
                   ttft_attainment=0.99 if ok else 0.5, itl_attainment=0.99 if ok else 0.5, kv_cache_usage=0.3,
                   gpu_utilization=0.5, sampled_at=now)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found by this test: four L4 pods at the GPU ceiling carry 2.2 of a 28 req/s forecast and one
# 2 x H100 pod (all the cost ceiling allows) 27; neither "fits", so the cheaper-at-the-load L4 stayed
# for a quarter of an hour after H100s came free. Now the shape that carries the most within the
# ceilings wins when none carries it all.
@example(k=2, max_gpus=4, max_cost=9.0, loads=[30.0] + [0.0] * 7 + [13.0], start={}, h100_nodes=0, ttft="1s",
         routing="Service")
@given(st.integers(2, 3), st.integers(4, 24), st.floats(6, 60), st.lists(st.floats(0.0, 40.0), min_size=4, max_size=12),
       st.dictionaries(st.sampled_from(["l4x1", "h100x2", "a100x4"]), st.integers(0, 6)), st.integers(0, 2),
       st.sampled_from(["1s", "300ms"]), st.sampled_from(["Service", "LoadAware"]))
def test_the_core_never_takes_a_gpu_over_a_ceiling_through_switches(k: int, max_gpus: int, max_cost: float, loads: list[float],
                                                                    start: dict[str, int], h100_nodes: int, ttft: str,
                                                                    routing: str) -> None:
    shapes = SHAPES[:k]
    spec = parse_spec(spec_dict(
        variants=shapes, replicas={"min": 1, "max": 16},
        slo={"ttft": {"target": ttft, "percentile": 95}, "interTokenLatency": {"target": "100ms", "percentile": 95}},
        cost={"maxGPUs": max_gpus, "maxHourlyCost": f"{max_cost:.2f}", "prices": PRICES},
        scaling={"interval": "15s", "scaleDown": {"stabilizationWindow": "60s", "maxStep": 2},
                 "variantSwitch": {"dwell": "2m", "unschedulableTimeout": "1m"}}, routing=routing))
    cluster = Cluster(spec, {"nvidia-l4": 64, "nvidia-h100": 8 * h100_nodes, "nvidia-a100": 32})
    # Start anywhere: one shape running, or a switch already under way (pods of several shapes).
    names = {v.name for v in spec.variants}
    start = {v: n for v, n in start.items() if v in names} or {spec.variants[0].name: 1}
    cluster.target = max(start, key=lambda v: (start[v], v))
    for name, n in start.items():
        cluster.desired[name] = n
        cluster.pods += [Pod(name, -200.0, -100.0) for _ in range(n)]
    # The start may be over the ceilings (a user lowered them): then back under them within the
    # drain time plus one interval (the first decision at 15 s, a 45 s drain), and never over again.
    history, now = History(), 0.0
    for load in loads:
        for _ in range(8):  # two minutes per load level
            now += 15.0
            cluster.step(now)
            if now >= 15.0 + 45.0:  # the first decision, then its pods' drain
                gpus, cost = cluster.held()
                assert gpus <= max_gpus and cost <= float(spec.cost.max_hourly_cost) + 1e-6, (now, cluster.desired, start)  # type: ignore[arg-type]
            w = cluster.workload(now)
            d = decide(spec, w, _signals(spec, w, load, now), history, now)
            history = d.history
            before = cluster.held()
            if d.apply:
                creates = any(d.replicas_by_variant.get(v, 0) > w.pods.get(v, PodCounts()).live for v in d.replicas_by_variant)
                cluster.apply(d.replicas_by_variant, d.variant, d.failed_variant, now)
                gpus, cost = cluster.held()
                if creates:
                    assert gpus <= max_gpus, (now, d.reasons, before, cluster.desired)
                    assert cost <= float(spec.cost.max_hourly_cost) + 1e-6, (now, d.reasons, before)  # type: ignore[arg-type]
                else:  # nothing created now; Pending pods created earlier, within the room, may be scheduled
                    assert gpus <= max(before[0], max_gpus)
                    assert cost <= max(before[1], float(spec.cost.max_hourly_cost)) + 1e-6  # type: ignore[arg-type]
    # Then GPUs of every type become available (a cluster autoscaler added nodes) and the load stays
    # put for long enough: the switch in progress finishes, one shape is left.
    # (Half an hour: a switch for a saving may start only once the burst memory has let go of a
    # peak, up to 30 minutes after it, and then takes a cold start; found at 15 minutes with a
    # 33 req/s peak whose switch began in the last decision.)
    cluster.pool = {k: 1000 for k in cluster.pool}
    for _ in range(150):
        now += 15.0
        cluster.step(now)
        w = cluster.workload(now)
        d = decide(spec, w, _signals(spec, w, loads[-1], now), history, now)
        history = d.history
        if d.apply:
            cluster.apply(d.replicas_by_variant, d.variant, d.failed_variant, now)
    # One shape is left, or a stable mix the ceilings hold in place, said in the reasons (the new
    # shape waits for room while the old pods still carry part of the load).
    left = {v for v, n in cluster.desired.items() if n}
    assert len(left) <= 1 or Code.WAITING_FOR_ROOM in d.codes, (cluster.desired, d.reasons)


def _lowered_scene(max_gpus: int, h100_pool: int, start: list[Pod], target: str, desired: dict[str, int],
                   spill: str | None = None, decisions: int = 12
                   ) -> tuple[Any, Cluster, list[tuple[float, dict[str, int], tuple[str, ...], int, tuple[str, ...]]], list[Pod]]:
    """maxGPUs lowered under what runs, then decisions at 100 req/s: the cluster, each decision's
    counts, reasons and Ready pods, and every pod ever created. Held under the ceiling from the
    first decision's drain on, and no pod created over it."""
    spec = parse_spec(spec_dict(
        variants=[L4, H100], replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],
        slo={"ttft": {"target": "1s", "percentile": 95}, "interTokenLatency": {"target": "100ms", "percentile": 95}},
        cost={"maxGPUs": max_gpus, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"interval": "15s", "scaleDown": {"stabilizationWindow": "60s", "maxStep": 2},
                 "variantSwitch": {"dwell": "1h", "unschedulableTimeout": "5m", "spillAfter": "45s"}}, routing="LoadAware"))
    cluster = Cluster(spec, {"nvidia-l4": 64, "nvidia-h100": h100_pool})
    cluster.target, cluster.since, cluster.desired = target, -300.0, dict(desired)
    cluster.pods = list(start)
    created = list(start)
    history, now = History(spill_shape=spill), 0.0
    seen: list[tuple[float, dict[str, int], tuple[str, ...], int, tuple[str, ...]]] = []

    for _ in range(decisions):
        now += 15.0
        cluster.step(now)
        if now >= 60.0:
            assert cluster.held()[0] <= max_gpus, (now, cluster.desired, seen)
        w = cluster.workload(now)
        d = decide(spec, w, _by_shape(w, 100.0, now), history, now)  # four h100x2 pods at 85 %
        history = d.history
        if d.apply:
            creates = any(d.replicas_by_variant.get(v, 0) > w.pods.get(v, PodCounts()).live for v in d.replicas_by_variant)
            cluster.apply(d.replicas_by_variant, d.variant, d.failed_variant, now)
            created += [p for p in cluster.pods if p not in created]
            if creates:
                assert cluster.held()[0] <= max_gpus, (now, d.reasons)
        seen.append((now, dict(cluster.desired), tuple(r.code.value for r in d.reasons), sum(p.ready for p in w.pods.values()),
                     tuple(r.message for r in d.reasons)))
    return spec, cluster, seen, created


@pytest.mark.parametrize(("max_gpus", "h100_pool", "where"), [
    (10, 64, "switch"), (8, 64, "switch"), (4, 0, "switch"),  # H100 GPUs free, or none (the switch rolls back)
    (10, 4, "spill"), (8, 4, "spill"),  # two H100 pods serve, two wait for GPUs, L4 pods carry their share
])
def test_a_ceiling_lowered_mid_switch_or_spill_is_held_once_drained_and_something_always_serves(
        max_gpus: int, h100_pool: int, where: str) -> None:
    """Reviews: letting the old shape's Ready pods go before the new shape's starting or Pending
    ones left nothing serving (for good when the new shape's GPUs never came); letting the new
    shape's starting pods go cost their cold start. What serves now goes last; back under the
    ceiling within the drain plus one interval; the switch then finishes (or rolls back) in small
    steps, and no pod is created over the ceiling."""
    if where == "switch":  # from eight Ready L4 pods to four h100x2 pods, starting (or Pending without H100s)
        start = [Pod("l4x1", -300.0, -200.0) for _ in range(8)] + [Pod("h100x2", -30.0, 30.0 if h100_pool else None)
                                                                     for _ in range(min(4, max(2, h100_pool)))]
        desired = {"l4x1": 8, "h100x2": len(start) - 8}
    else:
        start = ([Pod("h100x2", -300.0, -200.0) for _ in range(2)] + [Pod("h100x2", -100.0, None) for _ in range(2)]
                 + [Pod("l4x1", -90.0, -30.0) for _ in range(8)])
        desired = {"h100x2": 4, "l4x1": 8}
    spec, cluster, seen, _ = _lowered_scene(max_gpus, h100_pool, start, "h100x2", desired,
                                            spill="l4x1" if where == "spill" else None, decisions=60)
    assert any("lowered under what runs" in r for r in seen[0][4]), seen[0]
    assert all(ready > 0 for _, _, _, ready, _ in seen), seen
    if where == "switch" and h100_pool:
        assert cluster.desired.get("l4x1", 0) == 0 and cluster.desired["h100x2"] >= 1, seen[-1]


def test_pending_pods_let_go_under_a_lowered_ceiling_are_not_made_room_for_again() -> None:
    """Review: a switch to H100 pods Pending for lack of H100 GPUs, maxGPUs lowered to 4: the cut
    let the Pending pods go and kept four L4 pods, then the next decision released two of those to
    make room for an H100 pod that went Pending as the others had, and two L4 pods served until the
    rollback six minutes later. The shortage is remembered: what the cut kept keeps serving, and no
    pod of the short shape is created while it lasts."""
    start = [Pod("l4x1", -300.0, -200.0) for _ in range(8)] + [Pod("h100x2", -30.0, None) for _ in range(2)]
    _, cluster, seen, created = _lowered_scene(4, 0, start, "h100x2", {"l4x1": 8, "h100x2": 2}, decisions=40)
    assert seen[0][1] == {"l4x1": 4, "h100x2": 0}, seen[0]
    assert all(ready >= 4 for _, _, _, ready, _ in seen), [(t, ready) for t, _, _, ready, _ in seen]
    assert [p for p in created if p.variant == "h100x2" and p not in start] == []
    assert cluster.desired == {"l4x1": 4, "h100x2": 0}
    # The stalled switch went back to the L4 pods once, and the short shape is not switched to
    # again while it is remembered (review: without that, the target flipped at every decision).
    assert cluster.target == "l4x1"
    switches = [m for _, _, _, _, msgs in seen for m in msgs if m.startswith(("l4x1 -> h100x2", "h100x2 -> l4x1"))]
    assert len(switches) == 1 and switches[0].startswith("h100x2 -> l4x1: the switch to h100x2 stalled"), switches


def test_a_switch_to_a_shape_remembered_short_of_gpus_rolls_back_on_the_wait_since_the_cut() -> None:
    """Review: the Pending pods let go under a lowered ceiling were waiting already; a pod created
    after them in the room left is as short of GPUs, and the switch's wait counts from the cut."""
    spec = parse_spec(spec_dict(
        variants=[L4, H100], replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],
        cost={"maxGPUs": 6, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"variantSwitch": {"dwell": "1h", "unschedulableTimeout": "5m"}}, routing="LoadAware"))
    now = 5000.0
    pods = {"l4x1": PodCounts(ready=4), "h100x2": PodCounts(unschedulable=1, waiting_since=now - 60.0)}
    w = Workload(variant="h100x2", replicas=1, ready=0, pending_unschedulable=1, pods=pods, desired={"l4x1": 4, "h100x2": 1},
                 target_since=now - 400.0)
    remembered = History(gpus_short="h100x2", gpus_short_since=now - 301.0)
    d = decide(spec, w, _by_shape(w, 20.0, now), remembered, now)
    assert d.failed_variant == ("h100x2", "Unschedulable: 1 x h100x2 Pending for lack of free nvidia-h100 GPUs for over 5m")
    assert d.variant == "l4x1"
    fresh = decide(spec, w, _by_shape(w, 20.0, now), History(), now)  # its own pod waited a minute only
    assert fresh.failed_variant is None and fresh.variant == "h100x2"


def test_a_new_deployment_whose_gpu_type_is_taken_is_served_by_spill_pods_before_any_metric() -> None:
    """Review: a new LLMDeployment whose first shape's GPUs are all taken had no pod to read metrics
    or a token mix from, so unknown meant hold and spill-over never started: nothing served, for
    good. The floor (replicas.min) is known without metrics: a spill pod stands in for the floor's
    pod that waits, one for one, and once it serves, the metrics it gives plan as ever."""
    spec = parse_spec(spec_dict(
        variants=[H100, L4], replicas={"min": 1, "max": 8}, engineArgs=["--max-model-len=8192"],
        cost={"maxGPUs": 8, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"variantSwitch": {"dwell": "1h", "unschedulableTimeout": "5m", "spillAfter": "45s"}}, routing="LoadAware"))
    cluster = Cluster(spec, {"nvidia-l4": 8, "nvidia-h100": 0})
    cluster.target, cluster.since, cluster.desired = "h100x2", 0.0, {"h100x2": 1}
    cluster.pods = [Pod("h100x2", 0.0, None)]
    created = list(cluster.pods)
    history, now, served_at = History(), 0.0, None
    for _ in range(40):
        now += 15.0
        cluster.step(now)
        w = cluster.workload(now)
        ready = sum(p.ready for p in w.pods.values())
        if ready and served_at is None:
            served_at = now
        # No pod has run: no series at all. Then a light load (an L4 pod carries 6 req/s).
        sig = (_by_shape(w, 2.0, now) if ready else
               Signals(unknown={"request_rate": "no series", "ttft": "no series"}, sampled_at=now))
        d = decide(spec, w, sig, history, now)
        history = d.history
        if d.apply:
            cluster.apply(d.replicas_by_variant, d.variant, d.failed_variant, now)
            created += [p for p in cluster.pods if p not in created]
        if now == 45.0:  # the H100 pod has waited spillAfter: one L4 pod for the floor
            assert d.replicas_by_variant == {"h100x2": 1, "l4x1": 1}, d.reasons
            assert "1 x l4x1 serve the floor (1) meanwhile" in d.reasons[-1].message, d.reasons
    assert served_at is not None and served_at <= 45.0 + 60.0 + 15.0, served_at  # spill, the L4 cold start, a decision
    assert [p.variant for p in created] == ["h100x2", "l4x1"]  # one spill pod, kept: no flapping
    assert cluster.desired == {"h100x2": 1, "l4x1": 1} and cluster.target == "h100x2"


FLOOR_SPEC = parse_spec(spec_dict(variants=[H100, L4, SHAPES[2]], replicas={"min": 1, "max": 8}, engineArgs=["--max-model-len=8192"],
                                  cost={"maxGPUs": 16, "prices": PRICES}, routing="LoadAware"))
FLOOR_T = 1000.0
WAITS = PodCounts(unschedulable=1, waiting_since=FLOOR_T - 120)
# (why, spec, workload, target replicas, spill shape in use, candidates, expected counts, expected spill shape)
FLOOR_CASES: list[tuple[str, Any, Workload, int, str | None, tuple[str, ...], dict[str, int], str | None]] = [
    ("a new deployment, its H100 pod waiting, no metric: one L4 pod",
     FLOOR_SPEC, wl("h100x2", {"h100x2": 1}, {"h100x2": WAITS}), 1, None, ("l4x1", "a100x4"),
     {"h100x2": 1, "l4x1": 1}, "l4x1"),
    ("review: a spill shape that failed lately is not asked for again by the floor",
     FLOOR_SPEC, wl("h100x2", {"h100x2": 1, "l4x1": 0}, {"h100x2": WAITS, "l4x1": PodCounts(terminating=1)}), 1, "l4x1",
     ("a100x4",), {"h100x2": 1, "l4x1": 0}, "l4x1"),
    ("review: the spill shape's own pod waits for GPUs too: kept, not traded for another (that flapped)",
     FLOOR_SPEC, wl("h100x2", {"h100x2": 1, "l4x1": 1}, {"h100x2": WAITS, "l4x1": PodCounts(unschedulable=1, waiting_since=FLOOR_T - 90)}),
     1, "l4x1", ("l4x1", "a100x4"), {"h100x2": 1, "l4x1": 1}, "l4x1"),
    ("review: replicas.min 0 without scale-to-zero still serves one",
     parse_spec({**FLOOR_SPEC.model_dump(by_alias=True, exclude_none=True), "replicas": {"min": 0, "max": 8}}),
     wl("h100x2", {"h100x2": 1}, {"h100x2": WAITS}), 1, None, ("l4x1",), {"h100x2": 1, "l4x1": 1}, "l4x1"),
    ("review: behind a Service, with an H100 pod Ready, no weaker pod at an equal share",
     parse_spec({**FLOOR_SPEC.model_dump(by_alias=True, exclude_none=True), "replicas": {"min": 2, "max": 8}, "routing": "Service"}),
     wl("h100x2", {"h100x2": 2}, {"h100x2": PodCounts(ready=1, unschedulable=1, waiting_since=FLOOR_T - 120)}), 2, None, ("l4x1",),
     {"h100x2": 2}, None),
    ("behind a Service with nothing on a node, any pod serves more than none",
     parse_spec({**FLOOR_SPEC.model_dump(by_alias=True, exclude_none=True), "routing": "Service"}),
     wl("h100x2", {"h100x2": 1}, {"h100x2": WAITS}), 1, None, ("l4x1",), {"h100x2": 1, "l4x1": 1}, "l4x1"),
    ("within the ceilings: no room beside the waiting pod (it counts from creation), no floor pod",
     parse_spec({**FLOOR_SPEC.model_dump(by_alias=True, exclude_none=True), "cost": {"maxGPUs": 2, "prices": PRICES}}),
     wl("h100x2", {"h100x2": 1}, {"h100x2": WAITS}), 1, None, ("l4x1",), {"h100x2": 1}, None),
    ("not before spillAfter (60s)",
     FLOOR_SPEC, wl("h100x2", {"h100x2": 1}, {"h100x2": PodCounts(unschedulable=1, waiting_since=FLOOR_T - 30)}), 1, None, ("l4x1",),
     {"h100x2": 1}, None),
]


@pytest.mark.parametrize(("why", "sp", "w", "replicas", "shape", "candidates", "counts", "spilled"), FLOOR_CASES,
                         ids=[c[0] for c in FLOOR_CASES])
def test_the_floor_while_the_target_waits_for_gpus(why: str, sp: Any, w: Workload, replicas: int, shape: str | None,
                                                   candidates: tuple[str, ...], counts: dict[str, int], spilled: str | None) -> None:
    """The metrics unknown (hold) and no capacity known: only the floor can add spill pods."""
    got = rollout(sp, w, sp.variant(w.variant), replicas, {},
                  spill=Spill(FLOOR_T, 60.0, shape, candidates, hold=True))
    assert {v: n for v, n in got.replicas_by_variant.items() if n or v in w.desired} == counts, got.reasons
    assert got.spill == spilled, got.reasons


def test_make_room_never_releases_spill_pods() -> None:
    """Review: at a tight maxGPUs, two L4 spill pods were released to make room for one more H100
    pod, which waited for H100 GPUs as the pods the spill stands in for do."""
    w = wl("h100x2", {"h100x2": 2, "l4x1": 6}, {"h100x2": PodCounts(ready=2), "l4x1": PodCounts(ready=6)})
    got = rollout(SPEC, w, H, 4, CAP, demand=20.0, spill=Spill(1000.0, 45.0, "l4x1", ("l4x1",)))
    assert got.replicas_by_variant == {"l4x1": 6, "h100x2": 2}
    assert [r.message for r in got.reasons] == [
        "6 x l4x1 keep serving until h100x2's pods carry the load (2/4 Ready)",
        "2 x h100x2 wait for room under the ceilings (pods still holding GPUs: 6 of other shapes, 0 x h100x2 draining)"]
    # The same pods as a switch's old shape (no spill): one H100 pod is made room for.
    assert rollout(SPEC, w, H, 4, CAP, demand=20.0).replicas_by_variant == {"l4x1": 4, "h100x2": 2}


def test_spill_pods_are_never_released_to_make_room_for_a_pod_of_the_shape_short_of_gpus() -> None:
    """Review: two H100 pods Ready, two Pending for lack of H100 GPUs and carried by eight L4 spill
    pods, maxGPUs lowered to 10: the cut lets the Pending pods go and two L4 pods; then spill pods
    were released to make room for an H100 pod that waited for good (the spill has no switch to roll
    back), leaving two L4 pods fewer serving for the rest of the run. What the cut kept serves."""
    start = ([Pod("h100x2", -300.0, -200.0) for _ in range(2)] + [Pod("h100x2", -100.0, None) for _ in range(2)]
             + [Pod("l4x1", -90.0, -30.0) for _ in range(8)])
    _, cluster, seen, created = _lowered_scene(10, 4, start, "h100x2", {"h100x2": 4, "l4x1": 8}, spill="l4x1",
                                               decisions=120)
    assert seen[0][1] == {"h100x2": 2, "l4x1": 6}, seen[0]
    assert all(ready >= 8 for t, _, _, ready, _ in seen if t >= 60.0), [(t, ready) for t, _, _, ready, _ in seen]
    assert [p for p in created if p.variant == "h100x2" and p not in start] == []


def test_a_ceiling_held_plan_never_takes_the_switch_below_the_load() -> None:
    """Review: ten L4 pods (1 req/s each) and a cost ceiling of 10.00 that holds the H100 plan to
    two pods (8 req/s) against a demand of 10 at 75 % (a load of 7.5): judged against the plan's
    own 8 x 75 % = 6, three L4 pods went and 7 req/s served a load of 7.5. The load is the floor."""
    one = {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1}
    sp = parse_spec(spec_dict(variants=[L4, one], scaling={"targetUtilization": 0.75},
                              cost={"maxHourlyCost": "10.00", "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = wl("h100x1", {"l4x1": 10, "h100x1": 0}, {"l4x1": PodCounts(ready=10)})
    got = rollout(sp, w, sp.variants[1], 2, {"l4x1": 1.0, "h100x1": 4.0}, demand=10.0)
    assert sum(n for v, n in got.replicas_by_variant.items() if v == "l4x1") >= 8  # 8 x 1 req/s >= 7.5
    assert got.replicas_by_variant == {"l4x1": 8, "h100x1": 0}


def test_when_no_shape_carries_the_load_within_the_ceilings_the_one_that_carries_most_wins() -> None:
    from llmscale.policy.capacity import VariantCapacity
    from llmscale.policy.variant import VariantPlan, best_variant

    l4 = VariantPlan(VariantCapacity(L, 0.56, "ttft", 0.02), 59, 47.2, False, 4 * 0.56)
    h100 = VariantPlan(VariantCapacity(H, 32.0, "ttft", 0.02), 2, 16.0, False, 32.0)
    dear = VariantPlan(VariantCapacity(H, 32.0, "ttft", 0.02), 1, 60.0, True, 32.0)
    assert best_variant([l4, h100]) is h100  # neither fits: the one that carries the most
    # the cheapest at the load is not the one that carries most (before: the cheapest won)
    few_l4 = VariantPlan(VariantCapacity(L, 0.56, "ttft", 0.02), 12, 9.6, False, 2.24)
    assert best_variant([few_l4, h100]) is h100
    assert best_variant([h100, l4]) is h100
    assert best_variant([l4, h100, dear]) is dear  # one that fits beats any that does not
    assert best_variant([]) is None


def test_behind_a_service_the_strongest_old_pods_serve_first_and_a_hopeless_shape_is_not_kept() -> None:
    """Review: old shapes were weighed by Ready count, so seven L4 pods were kept where one A100 pod
    carries the same; and an L4 that cannot meet the SLO (capacity 0) was kept beside H100 pods that
    already carry the need, which at equal shares makes the whole mix carry nothing."""
    spec = parse_spec(spec_dict(variants=SHAPES, replicas={"min": 1, "max": 16}, cost={"maxGPUs": 64, "prices": PRICES}))
    caps = {"l4x1": 1.0, "h100x2": 4.0, "a100x4": 6.0}
    w = wl("h100x2", {"l4x1": 8, "a100x4": 2, "h100x2": 2},
           {"l4x1": PodCounts(ready=8), "a100x4": PodCounts(ready=2), "h100x2": PodCounts(ready=1, starting=1)})
    assert rollout(spec, w, spec.variant("h100x2"), 2, caps).replicas_by_variant == {"a100x4": 1, "l4x1": 0, "h100x2": 2}
    # (five L4 pods: by Ready count they were weighed first, and all five were kept)
    caps = {"l4x1": 0.0, "h100x2": 10.0, "a100x4": 12.0}
    w = wl("a100x4", {"l4x1": 5, "h100x2": 3, "a100x4": 3},
           {"l4x1": PodCounts(ready=5), "h100x2": PodCounts(ready=3), "a100x4": PodCounts(starting=3)})
    assert rollout(spec, w, spec.variant("a100x4"), 3, caps, demand=25.0).replicas_by_variant == {"h100x2": 3, "l4x1": 0,
                                                                                                 "a100x4": 3}


def test_behind_a_service_a_small_step_gives_up_nothing_the_new_pod_does_not_bring_back() -> None:
    """Review: with no room for a third h100x2 pod at maxGPUs 10, releasing one of two Ready a100x4
    pods (6 req/s each) beside one Ready h100x2 (4) costs nothing at equal shares: the three pods
    carry 3 x 4 = 12 before and after the new one is Ready. Releasing four of eight L4 pods for one
    a100x4 (4 req/s) is a loss: at equal shares the A100 takes an L4's share (8 -> 5)."""
    spec = parse_spec(spec_dict(variants=SHAPES, replicas={"min": 1, "max": 16}, cost={"maxGPUs": 10, "prices": PRICES}))
    w = wl("h100x2", {"a100x4": 2, "h100x2": 1}, {"a100x4": PodCounts(ready=2), "h100x2": PodCounts(ready=1)})
    got = rollout(spec, w, spec.variant("h100x2"), 3, {"h100x2": 4.0, "a100x4": 6.0}, demand=9.0)
    assert got.replicas_by_variant == {"a100x4": 1, "h100x2": 1}
    w = wl("a100x4", {"l4x1": 8, "a100x4": 0}, {"l4x1": PodCounts(ready=8)})
    spec8 = parse_spec(spec_dict(variants=SHAPES, replicas={"min": 1, "max": 16}, cost={"maxGPUs": 8, "prices": PRICES}))
    got = rollout(spec8, w, spec8.variant("a100x4"), 5, {"l4x1": 1.0, "a100x4": 4.0}, demand=20.0)
    assert got.replicas_by_variant == {"l4x1": 8, "a100x4": 0}


@pytest.mark.parametrize(("routing", "ceiling", "fits"), [
    # Review: 2 x h100x2 -> 8 x l4x1 under 16.80/h. With one L4 Ready the rollout keeps both H100 pods
    # (two L4 pods would not replace them), so a second L4 finds no room: the old check looked only at
    # the first and the last stage.
    ("LoadAware", "16.80", False),
    ("Service", "16.80", False),
    # With room for every stage: fine behind a gateway; behind a Service one L4 Ready beside two H100
    # pods takes a third of the requests and all carry 3 req/s of the 8 the H100 pods carry now.
    ("LoadAware", "40.00", True),
    ("Service", "40.00", False),
])
def test_a_switch_for_a_saving_goes_only_where_every_stage_fits(routing: str, ceiling: str, fits: bool) -> None:
    from llmscale.policy.capacity import VariantCapacity
    from llmscale.policy.variant import fits_make_before_break, plan_for

    spec = parse_spec(spec_dict(variants=[L4, H100], replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],
                                cost={"maxHourlyCost": ceiling, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
                                routing=routing))
    l4, h100 = spec.variants
    old, new = plan_for(spec, VariantCapacity(h100, 4.0, "ttft", 0.02), 2), plan_for(spec, VariantCapacity(l4, 1.0, "ttft", 0.02), 8)
    assert old is not None and new is not None
    assert fits_make_before_break(spec, old, new, 2) is fits


def test_behind_a_service_the_old_pods_kept_are_chosen_together() -> None:
    """Review: weighed one shape at a time, the one A100-class pod (4 req/s) was dropped because on
    its own it lowered the mix (3 H100 at 6 and it: 4 x 4 = 16 < 18), and then all six L4 pods (2)
    were kept anyway: 18, no more than keeping nothing. Together, all of them carry 10 x 2 = 20."""
    spec = parse_spec(spec_dict(variants=SHAPES, replicas={"min": 1, "max": 16}, cost={"maxGPUs": 64, "prices": PRICES}))
    w = wl("h100x2", {"l4x1": 6, "a100x4": 1, "h100x2": 10},
           {"l4x1": PodCounts(ready=6), "a100x4": PodCounts(ready=1), "h100x2": PodCounts(ready=3, starting=7)})
    got = rollout(spec, w, spec.variant("h100x2"), 10, {"h100x2": 6.0, "a100x4": 4.0, "l4x1": 2.0})
    assert got.replicas_by_variant == {"a100x4": 1, "l4x1": 6, "h100x2": 10}
    # Enough without the weak ones: three Ready H100 pods (6) and an A100-class one at 5.5 carry a
    # demand of 20 (4 x 5.5 = 22); no L4 is kept.
    got = rollout(spec, w, spec.variant("h100x2"), 10, {"h100x2": 6.0, "a100x4": 5.5, "l4x1": 2.0}, demand=20.0)
    assert got.replicas_by_variant == {"a100x4": 1, "l4x1": 0, "h100x2": 10}


def test_what_a_shape_carries_at_the_ceiling_is_read_at_the_ceilings_fleet_size() -> None:
    """Behind a gateway per-replica capacity grows with the fleet: a plan for 40 replicas that the
    ceiling holds to 2 carries 2 replicas' worth at a fleet of 2, not at 40 (12.5 vs 10.9 each)."""
    from llmscale.policy.capacity import variant_capacity
    from llmscale.policy.variant import plan_for

    spec = parse_spec(spec_dict(routing="LoadAware", cost={"maxGPUs": 2, "prices": {"nvidia-h100": "4.00"}}))
    v, mix = spec.variants[0], (2048.0, 28.0)
    big, at2 = variant_capacity(spec, v, Signals(), 1.0, mix, 40), variant_capacity(spec, v, Signals(), 1.0, mix, 2)
    assert big.per_replica > 1.1 * at2.per_replica
    p = plan_for(spec, big, 40, at2)
    assert p is not None and not p.fits_ceiling and p.at_ceiling == 2 * at2.per_replica


# ---- spill-over: another shape carries the share of target pods that wait for GPUs -------------------

WIDE = parse_spec({**SPEC.model_dump(by_alias=True, exclude_none=True), "cost": {"maxGPUs": 20, "prices": {
    "nvidia-h100": "4.00", "nvidia-l4": "0.80"}}})
WIDE_SERVICE = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True), "routing": "Service"})
T0 = 1000.0


def waiting(ready: int = 2, starting: int = 0, unschedulable: int = 2, since: float = T0) -> PodCounts:
    return PodCounts(ready=ready, starting=starting, unschedulable=unschedulable,
                     waiting_since=since if unschedulable else None)


SPILL_CASES: list[tuple[str, Any, Workload, int, Spill, float | None, Rollout]] = [
    ("two h100x2 Pending past spillAfter: eight L4 pods carry their 8 req/s (16 with the two Ready)",
     WIDE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4, Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4, "l4x1": 8}, (Reason(Code.SPILL_OVER, "2 x h100x2 Pending for lack of free nvidia-h100 GPUs for "
                                                                "61s (spillAfter 60s): 8 x l4x1 carry their share meanwhile "
                                                                "(16.00 of 16.00 req/s)"),), 0, {}, "l4x1")),
    ("one H100 pod waits: four L4 pods carry its share",
     WIDE, wl("h100x2", {"h100x2": 3}, {"h100x2": waiting(unschedulable=1)}), 3, Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")),
     None, Rollout({"h100x2": 3, "l4x1": 4}, (Reason(Code.SPILL_OVER, "1 x h100x2 Pending for lack of free nvidia-h100 GPUs for "
                                                                     "61s (spillAfter 60s): 4 x l4x1 carry their share meanwhile "
                                                                     "(12.00 of 12.00 req/s)"),), 0, {}, "l4x1")),
    ("within the ceiling: the Pending pods count against maxGPUs, two L4 pods fit beside them",
     SPEC, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4, Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4, "l4x1": 2}, (Reason(Code.SPILL_OVER, "2 x h100x2 Pending for lack of free nvidia-h100 GPUs for "
                                                                "61s (spillAfter 60s): 2 x l4x1 carry their share meanwhile "
                                                                "(10.00 of 16.00 req/s)"),), 0, {}, "l4x1")),
    ("before spillAfter: the Pending pods may yet be scheduled",
     WIDE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4, Spill(T0 + 59, 60.0, None, ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4}, (), 0, {})),
    ("spillAfter: never",
     WIDE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4, Spill(T0 + 600, None, None, ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4}, (), 0, {})),
    ("the target's count came down to the pods on nodes (the Pending ones not yet gone): nothing to spill",
     WIDE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting(ready=1, starting=1)}), 2,
     Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")), None, Rollout({"h100x2": 2}, (), 0, {})),

    ("a shape that failed to start lately (not a candidate) is not spilled onto",
     WIDE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4, Spill(T0 + 61, 60.0, None, ("h100x2",)), None,
     Rollout({"h100x2": 4}, (), 0, {})),
    ("during a switch the rollback (unschedulableTimeout) decides, not a spill",
     WIDE, wl("h100x2", {"l4x1": 8, "h100x2": 2}, {"l4x1": PodCounts(ready=8), "h100x2": waiting(ready=0)}), 2,
     Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")), None,
     Rollout({"l4x1": 8, "h100x2": 2}, (Reason(Code.VARIANT_SWITCH, "to h100x2: 0/2 Ready; 8 x l4x1 kept serving until "
                                                                    "the new shape carries the load"),), 0, {"l4x1": 8})),
    ("spill pods on their way count: the same eight, no more",
     WIDE, wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(ready=3, starting=5)}), 4,
     Spill(T0 + 90, 60.0, "l4x1", ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4, "l4x1": 8}, (Reason(Code.SPILL_OVER, "2 x h100x2 Pending for lack of free nvidia-h100 GPUs for "
                                                                "90s (spillAfter 60s): 8 x l4x1 carry their share meanwhile "
                                                                "(16.00 of 16.00 req/s)"),), 0, {}, "l4x1")),
    ("the H100s come free: while the target's pods start, Ready spill pods serve and those still starting go",
     WIDE, wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": PodCounts(ready=2, starting=2), "l4x1": PodCounts(ready=6, starting=2)}), 4,
     Spill(T0 + 120, 60.0, "l4x1", ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4, "l4x1": 6}, (Reason(Code.SPILL_OVER, "6 x l4x1 keep serving until h100x2's pods carry the load "
                                                                "(2/4 Ready)"),), 0, {}, "l4x1")),
    ("the target's pods all Ready: the spill pods retire (and stay the spill shape until drained)",
     WIDE, wl("h100x2", {"h100x2": 4, "l4x1": 6}, {"h100x2": PodCounts(ready=4), "l4x1": PodCounts(ready=6)}), 4,
     Spill(T0 + 180, 60.0, "l4x1", ("l4x1", "h100x2")), None, Rollout({"h100x2": 4, "l4x1": 0}, (), 0, {}, "l4x1")),
    ("drained: no spill shape left",
     WIDE, wl("h100x2", {"h100x2": 4, "l4x1": 0}, {"h100x2": PodCounts(ready=4)}), 4,
     Spill(T0 + 240, 60.0, "l4x1", ("l4x1", "h100x2")), None, Rollout({"h100x2": 4, "l4x1": 0}, (), 0, {}, None)),
    ("metrics unknown: the spill pods stay as they are",
     WIDE, wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(ready=3, starting=5)}), 4,
     Spill(T0 + 90, None, "l4x1", hold=True), None,
     Rollout({"h100x2": 4, "l4x1": 8}, (Reason(Code.SPILL_OVER, "8 x l4x1 keep serving until h100x2's pods carry the load "
                                                                "(2/4 Ready)"),), 0, {}, "l4x1")),
    ("behind a Service two L4 pods (all maxGPUs leaves) at an H100's share would carry 4 of what two H100s carry alone (8):"
     " none added", SERVICE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4,
     Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")), None, Rollout({"h100x2": 4}, (), 0, {})),
    ("behind a Service with room: fourteen L4 pods and two H100s carry 16 req/s at equal shares",
     WIDE_SERVICE, wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()}), 4,
     Spill(T0 + 61, 60.0, None, ("l4x1", "h100x2")), None,
     Rollout({"h100x2": 4, "l4x1": 12}, (Reason(Code.SPILL_OVER, "2 x h100x2 Pending for lack of free nvidia-h100 GPUs for "
                                                                 "61s (spillAfter 60s): 12 x l4x1 carry their share meanwhile "
                                                                 "(14.00 of 16.00 req/s)"),), 0, {}, "l4x1")),
]


@pytest.mark.parametrize(("spec", "workload", "replicas", "spill", "demand", "expect"), [c[1:] for c in SPILL_CASES],
                         ids=[c[0] for c in SPILL_CASES])
def test_spill_over(spec: Any, workload: Workload, replicas: int, spill: Spill, demand: float | None, expect: Rollout) -> None:
    assert rollout(spec, workload, spec.variant("h100x2"), replicas, CAP, demand=demand, spill=spill) == expect


def test_a_spill_shape_of_the_same_gpu_type_waits_too_and_is_not_used() -> None:
    one = {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1}
    sp = parse_spec(spec_dict(variants=[one, H100], cost={"maxGPUs": 20, "prices": {"nvidia-h100": "4.00"}}, routing="LoadAware"))
    w = wl("h100x2", {"h100x2": 4}, {"h100x2": waiting()})
    got = rollout(sp, w, sp.variant("h100x2"), 4, {"h100x1": 2.0, "h100x2": 4.0}, spill=Spill(T0 + 61, 60.0, None, ("h100x1", "h100x2")))
    assert got == Rollout({"h100x2": 4}, (), 0, {})


def test_spill_pods_are_no_switch_to_roll_back() -> None:
    w = wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(ready=8)})
    assert stuck(SPEC, w, T0 + 400) is not None  # without the spill shape known, it looks like a stuck switch
    assert stuck(SPEC, w, T0 + 400, spill="l4x1") is None


def test_through_the_core_spill_pods_carry_the_h100_pods_that_wait_and_retire_when_h100s_free_up() -> None:
    """The whole core against pods that start and drain: H100 pods serve, the load outgrows them and
    one H100 node is all there is. After spillAfter, L4 pods carry the share of the Pending H100 pods
    (never over a ceiling, no rollback: the H100 pods serving are no switch to undo); when H100s free
    up, the Pending pods start and the L4 pods retire once they are Ready."""
    spec = parse_spec(spec_dict(
        variants=[H100, L4], replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],
        slo={"ttft": {"target": "1s", "percentile": 95}, "interTokenLatency": {"target": "100ms", "percentile": 95}},
        cost={"maxGPUs": 24, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"interval": "15s", "scaleDown": {"stabilizationWindow": "60s", "maxStep": 2},
                 "variantSwitch": {"dwell": "1h", "unschedulableTimeout": "1m", "spillAfter": "45s"}}, routing="LoadAware"))
    cluster = Cluster(spec, {"nvidia-l4": 64, "nvidia-h100": 4})  # two h100x2 pods at most
    cluster.target, cluster.since = "h100x2", 0.0  # on H100 for good: the dwell keeps a switch for a saving away
    cluster.desired["h100x2"] = 1
    cluster.pods.append(Pod("h100x2", -200.0, -100.0))

    history, now = History(), 0.0
    seen: list[tuple[float, dict[str, int], tuple[str, ...]]] = []

    def run(load: float, steps: int) -> None:
        nonlocal history, now
        for _ in range(steps):
            now += 15.0
            cluster.step(now)
            w = cluster.workload(now)
            d = decide(spec, w, _by_shape(w, load, now), history, now)
            history = d.history
            if d.apply:
                creates = any(d.replicas_by_variant.get(v, 0) > w.pods.get(v, PodCounts()).live for v in d.replicas_by_variant)
                cluster.apply(d.replicas_by_variant, d.variant, d.failed_variant, now)
                if creates:
                    assert cluster.held()[0] <= 24, (now, d.reasons)
            assert d.failed_variant is None and cluster.target == "h100x2", (now, d.reasons)
            seen.append((now, dict(cluster.desired), tuple(r.code.value for r in d.reasons)))

    run(2.0, 8)  # learn the token mix at a load one pod carries
    run(100.0, 24)  # six minutes past what two H100 pods carry
    spilled = [s for s in seen if s[1].get("l4x1", 0) > 0]
    assert spilled and "SpillOver" in spilled[0][2], seen[-6:]
    first = spilled[0][0]
    waiting_since = min(p.created for p in cluster.pods if p.variant == "h100x2" and p.ready_at is None)
    assert first - waiting_since >= 45, (first, waiting_since)
    assert history.spill_shape == "l4x1"
    l4_ready = sum(1 for p in cluster.pods if p.variant == "l4x1" and p.ready_at is not None and p.ready_at <= now)
    assert l4_ready > 0
    # H100s free up: the waiting pods start; the L4 pods retire once the H100 pods are Ready.
    cluster.pool["nvidia-h100"] = 64
    run(100.0, 24)
    assert cluster.desired.get("l4x1", 0) == 0 and history.spill_shape is None, seen[-4:]
    assert cluster.desired["h100x2"] >= 3


def test_while_target_pods_wait_and_their_share_cannot_be_judged_the_spill_pods_stay() -> None:
    """Review: a precondition that lapsed for one decision (capacity unknown, a Pending pod re-created
    so that it has not waited spillAfter yet) cut the starting spill pods, re-created at the next."""
    w = wl("h100x2", {"h100x2": 4, "l4x1": 6}, {"h100x2": waiting(), "l4x1": PodCounts(ready=2, starting=4)})
    for caps, now in (({"l4x1": 1.0}, T0 + 90), (CAP, T0 + 30)):
        got = rollout(WIDE, w, H, 4, caps, spill=Spill(now, 60.0, "l4x1", ("l4x1", "h100x2")))
        assert got.replicas_by_variant == {"h100x2": 4, "l4x1": 6} and got.spill == "l4x1", (caps, got)
    # Nothing waits any more: the starting spill pods go, the Ready ones serve until the target's are Ready.
    w = wl("h100x2", {"h100x2": 4, "l4x1": 6}, {"h100x2": PodCounts(ready=2, starting=2), "l4x1": PodCounts(ready=2, starting=4)})
    assert rollout(WIDE, w, H, 4, CAP, spill=Spill(T0 + 90, 60.0, "l4x1", ("l4x1", "h100x2"))).replicas_by_variant == {
        "h100x2": 4, "l4x1": 2}


def test_one_spill_shape_at_a_time() -> None:
    """Review: when the spill shape's own pods came to wait for GPUs, a second shape was started and
    the first looked like a switch's old shape (rolled back to, at the next decision)."""
    sp = parse_spec(spec_dict(variants=SHAPES, replicas={"min": 1, "max": 16}, routing="LoadAware",
                              cost={"maxGPUs": 40, "prices": PRICES}))
    caps = {"l4x1": 1.0, "h100x2": 4.0, "a100x4": 3.0}
    w = wl("h100x2", {"h100x2": 4, "l4x1": 6}, {"h100x2": waiting(), "l4x1": PodCounts(ready=3, unschedulable=3, waiting_since=T0)})
    got = rollout(sp, w, sp.variant("h100x2"), 4, caps, spill=Spill(T0 + 90, 60.0, "l4x1", ("l4x1", "h100x2", "a100x4")))
    # Its own pods wait for GPUs too: no second shape; the L4 pods on nodes serve, the rest go a step at a time.
    assert got.replicas_by_variant == {"h100x2": 4, "l4x1": 5} and got.spill == "l4x1", got
    # Without spill pods left, another shape may take over.
    w = wl("h100x2", {"h100x2": 4, "l4x1": 0}, {"h100x2": waiting()})
    got = rollout(sp, w, sp.variant("h100x2"), 4, caps, spill=Spill(T0 + 90, 60.0, "l4x1", ("h100x2", "a100x4")))
    assert got.replicas_by_variant == {"h100x2": 4, "l4x1": 0, "a100x4": 3} and got.spill == "a100x4", got


def test_spill_pods_none_of_which_became_ready_within_the_startup_timeout_fail_their_shape() -> None:
    w = wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(starting=8, starting_since=T0 + 60)})
    spill = Spill(T0 + 60 + 1801, 60.0, "l4x1", ("l4x1", "h100x2"), startup_timeout_s=1800.0)
    got = rollout(WIDE, w, H, 4, CAP, spill=spill)
    assert got.spill_failed == ("l4x1", "NotReady: 8 x l4x1 (spill-over) not Ready within serving.startupTimeout (30m)")
    assert got.replicas_by_variant == {"h100x2": 4, "l4x1": 0}
    assert rollout(WIDE, w, H, 4, CAP, spill=replace(spill, hold=True)).spill_failed is not None  # pods that serve nothing go anyway
    assert rollout(WIDE, w, H, 4, CAP, spill=replace(spill, now=T0 + 60 + 1799)).spill_failed is None
    # Review: one Ready pod proves the shape starts (a pod that blips is its own trouble): no failure.
    some = wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(ready=2, starting=6, starting_since=T0 + 60)})
    assert rollout(WIDE, some, H, 4, CAP, spill=spill).spill_failed is None
    # Failed (kept out of the candidates for the dwell time): its Ready pods go a step at a time, none is started.
    failed = rollout(WIDE, some, H, 4, CAP, spill=replace(spill, candidates=("h100x2",)))
    assert failed.replicas_by_variant == {"h100x2": 4, "l4x1": 2} and failed.spill_failed is None, failed


def test_spill_pods_follow_the_forecast_down_a_step_at_a_time_while_target_pods_wait() -> None:
    """Review: one decision's dip in the forecast retired every spill pod beyond it at once (they came
    back at the next decision): now at most scaleDown.maxStep (1 here) a decision."""
    w = wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(ready=8)})
    got = rollout(WIDE, w, H, 4, CAP, demand=10.0, spill=Spill(T0 + 90, 60.0, "l4x1", ("l4x1", "h100x2")))
    assert got.replicas_by_variant == {"h100x2": 4, "l4x1": 7} and got.spill == "l4x1"
    got = rollout(WIDE, w, H, 4, CAP, demand=6.0, spill=Spill(T0 + 90, 60.0, "l4x1", ("l4x1", "h100x2")))
    assert got.replicas_by_variant == {"h100x2": 4, "l4x1": 7}  # the H100 pods on nodes carry it: still one at a time


def _spill_scene(l4: PodCounts, spill: str | None = None, h100: PodCounts | None = None) -> Workload:
    pods = {"h100x2": h100 or PodCounts(ready=2, unschedulable=2, waiting_since=T0), "l4x1": l4}
    return Workload(variant="h100x2", replicas=4, ready=2, pending_unschedulable=pods["h100x2"].unschedulable,
                    desired={"h100x2": 4, "l4x1": 8}, pods=pods, target_since=T0 - 3600, spill=spill)


def _busy(now: float, rate: float | None = 12.0) -> Signals:
    return Signals(ttft_quantile=0.2, itl_quantile=0.03, request_rate=rate, prompt_tokens_rate=12000.0,
                   generation_tokens_rate=2400.0, requests_waiting=0.0, requests_running=8.0, ttft_attainment=0.99,
                   itl_attainment=0.99, kv_cache_usage=0.3, gpu_utilization=0.5, sampled_at=now,
                   unknown={} if rate is not None else {"requestRate": "no samples in the rate window"})


def test_after_a_restart_that_lost_status_the_spill_deployments_mark_keeps_it_a_spill_not_a_switch_to_roll_back() -> None:
    """Review: killed between applying a spill and writing status, the operator read the spill pods
    as a switch's old shape and, the H100 pods Pending past unschedulableTimeout, rolled back to
    L4 and marked the H100 shape failed. The mark on the spill Deployment (llmscale.io/spill-for)
    comes back as Workload.spill."""
    now = T0 + 400  # past unschedulableTimeout (5m)
    lost = decide(WIDE, _spill_scene(PodCounts(ready=8)), _busy(now), History(), now)
    assert lost.failed_variant is not None and lost.variant == "l4x1"  # what a restart without the mark does
    d = decide(WIDE, _spill_scene(PodCounts(ready=8), spill="l4x1"), _busy(now), History(), now)
    assert d.failed_variant is None and d.variant == "h100x2", d.reasons
    assert d.replicas_by_variant["h100x2"] == 4 and d.replicas_by_variant["l4x1"] >= 1, d.replicas_by_variant
    assert d.history.spill_shape == "l4x1"


def test_with_the_request_rate_unknown_no_spill_pod_goes() -> None:
    """Review: only Paused and an unreachable Prometheus held the spill pods; with requestRate
    unknown the decision cut five starting L4 pods ("ScaleDown") beside "scale-down disabled"."""
    now = T0 + 90
    # The H100s came free: their pods start, and spill pods still on their way would go were the metrics known.
    scene = _spill_scene(PodCounts(ready=3, starting=5), h100=PodCounts(ready=2, starting=2, starting_since=T0 + 80))
    d = decide(WIDE, scene, _busy(now, rate=None), History(spill_shape="l4x1"), now)
    assert d.replicas_by_variant == {"h100x2": 4, "l4x1": 8}, (d.replicas_by_variant, d.reasons)
    assert d.history.spill_shape == "l4x1"
    known = decide(WIDE, scene, _busy(now), History(spill_shape="l4x1"), now)
    assert known.replicas_by_variant == {"h100x2": 4, "l4x1": 0}, known.replicas_by_variant  # two H100 pods carry 12 req/s


def test_a_decision_reports_the_gpus_and_cost_of_every_pod_holding_gpus_each_at_its_own_price() -> None:
    """The llmscale_hourly_cost gauge priced the target's replicas alone (4 x h100x2: 8 GPUs,
    32.00/h) while eight L4 spill pods also held GPUs; and a pod let go holds its GPU until it drains."""
    now = T0 + 90
    scene = _spill_scene(PodCounts(ready=3, starting=5), h100=PodCounts(ready=2, starting=2, starting_since=T0 + 80))
    d = decide(WIDE, scene, _busy(now), History(spill_shape="l4x1"), now)
    assert d.replicas_by_variant == {"h100x2": 4, "l4x1": 0}, d.replicas_by_variant
    assert (d.gpus, d.hourly_cost) == (16, 38.4)  # 4 x 2 x 4.00 + 8 x 0.80: the L4 pods drain
    drained = replace(scene, pods={"h100x2": scene.pods["h100x2"]}, desired={"h100x2": 4})
    d = decide(WIDE, drained, _busy(now), History(), now)
    assert (d.replicas_by_variant, d.gpus, d.hourly_cost) == ({"h100x2": 4}, 8, 32.0)
    # Pending pods hold no GPU: two H100 pods on nodes and eight L4 ones are what is paid for.
    d = decide(WIDE, _spill_scene(PodCounts(ready=8)), _busy(now), History(spill_shape="l4x1"), now)
    assert (d.gpus, d.hourly_cost) == (12, 22.4)
    unpriced = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True),
                           "cost": {"maxGPUs": 20, "prices": {"nvidia-h100": "4.00"}}})
    d = decide(unpriced, scene, _busy(now, rate=None), History(spill_shape="l4x1"), now)
    assert (d.gpus, d.hourly_cost) == (16, None)  # no price for L4: no cost, not a partial one
    # A shape gone from the spec with its price, whose pods still serve: no cost either.
    gone = replace(drained, pods={**drained.pods, "a100x4": PodCounts(ready=1)}, shapes={"a100x4": ("nvidia-a100", 4)})
    d = decide(WIDE, gone, _busy(now), History(), now)
    assert (d.gpus, d.hourly_cost) == (12, None)
    # A shape of the spec with no price but no pods does not hide the cost of those that run.
    spare = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True), "variants": [L4, H100, {
        "name": "a100x1", "accelerator": "nvidia-a100", "gpusPerReplica": 1}]})
    d = decide(spare, drained, _busy(now), History(), now)
    assert (d.gpus, d.hourly_cost) == (8, 32.0)


def test_a_lowered_ceiling_is_held_while_prometheus_is_unreachable_and_budget_limited_says_so_until_drained() -> None:
    """Review: the cut was computed but not applied while Prometheus was unreachable; and the
    BudgetLimited condition went back to WithinBudget while the pods let go still drained over it."""
    now = T0 + 90
    tight = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True), "cost": {"maxGPUs": 8, "prices": {
        "nvidia-h100": "4.00", "nvidia-l4": "0.80"}}})
    scene = _spill_scene(PodCounts(ready=2, starting=4), spill="l4x1")  # 2 Ready + 2 Pending H100 pods, 6 L4 on nodes
    scene = replace(scene, desired={"h100x2": 4, "l4x1": 6})
    # Unreachable: every pod held (14 GPUs asked); known metrics: the spill steps down one L4 pod first (13).
    for signals, asked, l4_let_go in ((Signals.unreachable("connection refused"), 14, 2), (_busy(now), 13, 1)):
        d = decide(tight, scene, signals, History(spill_shape="l4x1"), now)
        assert d.apply and d.replicas_by_variant == {"h100x2": 2, "l4x1": 4}, (d.replicas_by_variant, d.reasons)
        assert d.action == Action.SCALE_DOWN and d.to_replicas == 2
        assert d.conditions["BudgetLimited"] == Condition(
            "True", "BudgetLimitedGPUs", f"{asked} GPUs over maxGPUs 8 (lowered under what runs): 2 x h100x2, {l4_let_go} x "
                                         "l4x1 let go, to be under it once they drain"), d.conditions
    # Paused without manualReplicas touches nothing, and says nothing of a cut.
    paused = parse_spec({**tight.model_dump(by_alias=True, exclude_none=True), "scaling": {"mode": "Paused"}})
    d = decide(paused, scene, _busy(now), History(spill_shape="l4x1"), now)
    assert not d.apply and "BudgetLimited" not in d.conditions
    assert (d.action, d.to_replicas, d.replicas_by_variant) == (Action.NO_CHANGE, 4, {"h100x2": 4, "l4x1": 6}), d.reasons
    assert not any("lowered" in r.message for r in d.reasons)
    # Review (third round): unreachable, the rollout's own counts fit (old starting pods dropped) while
    # the Deployments still ask for 8 GPUs over maxGPUs 5: the cut is of what they ask for, and
    # nothing else moves.
    mid_switch = Workload(variant="h100x2", replicas=2, ready=2, desired={"h100x2": 2, "l4x1": 4},
                          pods={"h100x2": PodCounts(ready=2), "l4x1": PodCounts(ready=2, starting=2)}, target_since=T0)
    five = parse_spec({**tight.model_dump(by_alias=True, exclude_none=True), "cost": {"maxGPUs": 5, "prices": {
        "nvidia-h100": "4.00", "nvidia-l4": "0.80"}}})
    d = decide(five, mid_switch, Signals.unreachable("connection refused"), History(), now)
    assert d.apply and d.replicas_by_variant == {"h100x2": 2, "l4x1": 1}, (d.replicas_by_variant, d.reasons)
    assert d.conditions["BudgetLimited"].status == "True"
    # Under the ceilings while unreachable: BudgetLimited is not left True from an earlier cut.
    d = decide(WIDE, mid_switch, Signals.unreachable("connection refused"), History(), now)
    assert not d.apply and d.conditions["BudgetLimited"] == Condition(
        "False", "WithinBudget", "the pods on nodes are within the ceilings")
    # The next decision: the pods let go drain (two L4 pods, 2 GPUs), 2 x 2 + 4 + 2 = 10 GPUs on nodes over 8.
    draining = replace(scene, desired={"h100x2": 2, "l4x1": 4}, pods={"h100x2": PodCounts(ready=2),
                                                                       "l4x1": PodCounts(ready=2, starting=2, terminating=2)})
    d = decide(tight, draining, _busy(now + 15), History(spill_shape="l4x1"), now + 15)
    assert d.conditions["BudgetLimited"] == Condition(
        "True", "BudgetLimitedGPUs", "10 GPUs on nodes over maxGPUs 8: pods let go are draining"), d.conditions


def test_paused_the_spill_is_held_and_still_named_so_its_mark_stays() -> None:
    """Review: on the Paused path the decision's history did not name the spill shape, so the apply
    of a manualReplicas change dropped its Deployment's mark (llmscale.io/spill-for)."""
    paused = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True),
                         "scaling": {"mode": "Paused", "manualReplicas": 5}})
    now = T0 + 90
    d = decide(paused, _spill_scene(PodCounts(ready=3, starting=5), spill="l4x1"), _busy(now), History(), now)
    assert d.replicas_by_variant == {"h100x2": 5, "l4x1": 8} and d.history.spill_shape == "l4x1", d


def test_spill_holds_keep_what_is_on_nodes_within_the_ceilings() -> None:
    """Review (third round): each of these reverted left every other test green."""
    spill = Spill(T0 + 90, 60.0, "l4x1", ("l4x1", "h100x2"), hold=True)
    # Metrics unknown, maxGPUs 10 lowered under what is asked: the L4 pods on nodes stay, Pending ones
    # only in the room left (4 x 2 H100 GPUs, Pending included, + 2 L4 on nodes: no room for more).
    w = wl("h100x2", {"h100x2": 4, "l4x1": 6}, {"h100x2": waiting(), "l4x1": PodCounts(ready=1, starting=1, unschedulable=4,
                                                                                         waiting_since=T0 + 80)})
    assert rollout(SPEC, w, H, 4, CAP, spill=spill).replicas_by_variant == {"h100x2": 4, "l4x1": 2}
    assert rollout(WIDE, w, H, 4, CAP, spill=spill).replicas_by_variant == {"h100x2": 4, "l4x1": 6}  # room for all
    # Behind a Service a weak L4 pod beside the H100 ones lowers what every pod carries: not held.
    wide_service = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True), "routing": "Service"})
    w = wl("h100x2", {"h100x2": 4, "l4x1": 2}, {"h100x2": waiting(), "l4x1": PodCounts(ready=2)})
    assert rollout(wide_service, w, H, 4, CAP, spill=spill).replicas_by_variant == {"h100x2": 4, "l4x1": 0}
    assert rollout(WIDE, w, H, 4, CAP, spill=spill).replicas_by_variant == {"h100x2": 4, "l4x1": 2}
    # No room left for the spill shape (maxGPUs lowered to what the H100 pods ask for, the Pending
    # ones included: they take GPUs once scheduled): nothing is started, and what is kept fits under
    # the lowered ceiling once the pods let go drain. What serves now goes last: first the two H100
    # pods that wait (they hold no GPU and serve nothing), then a starting L4 pod.
    tight = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True), "cost": {"maxGPUs": 8, "prices": {
        "nvidia-h100": "4.00", "nvidia-l4": "0.80"}}})
    w = wl("h100x2", {"h100x2": 4, "l4x1": 6}, {"h100x2": waiting(), "l4x1": PodCounts(ready=2, starting=4)})
    moved = rollout(tight, w, H, 4, CAP, spill=replace(spill, hold=False))
    assert moved.replicas_by_variant == {"h100x2": 2, "l4x1": 4}
    assert moved.lowered == Reason(Code.BUDGET_GPUS, "13 GPUs over maxGPUs 8 (lowered under what runs): 2 x h100x2, 1 x l4x1 "
                                                     "let go, to be under it once they drain")
    assert moved.lowered in moved.reasons


def test_a_spill_shape_whose_pods_were_ready_before_is_not_failed_by_a_blip_and_paused_fails_nothing() -> None:
    """Review (third round): a pod that drops out of Ready counts as starting since it was scheduled
    (hours ago): every spill pod blipping at once failed the shape and cut them all."""
    w = wl("h100x2", {"h100x2": 4, "l4x1": 8}, {"h100x2": waiting(), "l4x1": PodCounts(starting=8, starting_since=T0)})
    spill = Spill(T0 + 4000, 60.0, "l4x1", ("l4x1", "h100x2"), startup_timeout_s=1800.0)
    failed = rollout(WIDE, w, H, 4, CAP, spill=spill)
    assert failed.spill_failed is not None and Code.VARIANT_SWITCH_FAILED in {r.code for r in failed.reasons}
    assert rollout(WIDE, w, H, 4, CAP, spill=replace(spill, started=True)).spill_failed is None
    paused = parse_spec({**WIDE.model_dump(by_alias=True, exclude_none=True), "scaling": {"mode": "Paused"}})
    scene = _spill_scene(PodCounts(starting=8, starting_since=T0), spill="l4x1")
    d = decide(paused, scene, _busy(T0 + 4000), History(), T0 + 4000)
    assert d.failed_variant is None and d.replicas_by_variant.get("l4x1") == 8, d
