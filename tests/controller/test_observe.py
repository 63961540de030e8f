"""What the operator reads from the owned Deployments and pods: the target shape is the one marked
most recently, a failed switch is read back from its Deployment, pods are counted per shape and
phase with the age of the oldest waiting one. A restarted operator sees exactly this."""

from __future__ import annotations

import datetime as dt

import pytest

from llmscale.controller.kube import observe_workload
from llmscale.controller.objects import DeploymentView, PodView, replicas_set_outside
from llmscale.controller.status import ready_pods_seen
from llmscale.policy.types import PodCounts, Workload

T0 = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)


def _dep(variant: str, replicas: int, **annotations: str) -> DeploymentView:
    gpus = "2" if variant.endswith("x2") else "1"
    acc = "nvidia-h100" if variant.startswith("h100") else "nvidia-l4"
    return DeploymentView(name=f"chat-{variant}", variant=variant, replicas=replicas, controller="chat",
                          annotations={"llmscale.io/gpus": gpus, "llmscale.io/accelerator": acc, **annotations})


def _pod(name: str, variant: str, created: dt.datetime, phase: str) -> PodView:
    return PodView(name=name, variant=variant, created=created, terminating=phase == "terminating",
                   ready_since=created + dt.timedelta(seconds=60) if phase == "ready" else None,
                   unschedulable=phase == "unschedulable")


def test_mid_switch_the_newest_mark_is_the_target_and_every_shape_is_counted() -> None:
    deps = [_dep("l4x1", 3, **{"llmscale.io/target-since": "1000"}),
            _dep("h100x2", 2, **{"llmscale.io/target-since": "2000"})]
    pods = [_pod("a", "l4x1", T0, "ready"), _pod("b", "l4x1", T0, "ready"), _pod("c", "l4x1", T0, "terminating"),
            _pod("d", "h100x2", T0 + dt.timedelta(seconds=30), "starting"), _pod("e", "h100x2", T0 + dt.timedelta(seconds=10), "unschedulable")]
    w, _ = observe_workload(deps, pods, {}, None)
    assert (w.variant, w.replicas, w.ready, w.starting, w.pending_unschedulable, w.target_since) == ("h100x2", 2, 0, 1, 1, 2000.0)
    assert w.desired == {"l4x1": 3, "h100x2": 2}
    assert w.shapes == {"l4x1": ("nvidia-l4", 1), "h100x2": ("nvidia-h100", 2)}
    assert w.pods == {"l4x1": PodCounts(ready=2, terminating=1),
                      "h100x2": PodCounts(starting=1, unschedulable=1, starting_since=(T0 + dt.timedelta(seconds=30)).timestamp(),
                                          waiting_since=(T0 + dt.timedelta(seconds=10)).timestamp())}
    assert w.failed == {}


def test_a_failed_switch_is_read_back_and_without_marks_the_biggest_shape_is_the_target() -> None:
    deps = [_dep("l4x1", 4), _dep("h100x2", 0, **{"llmscale.io/switch-failed": "1500 Unschedulable: 1 x h100x2 Pending"}),
            _dep("a100x4", 0, **{"llmscale.io/switch-failed": "not-a-time garbage"})]
    w, _ = observe_workload(deps, [], {}, None)
    assert w.variant == "l4x1" and w.target_since is None
    assert w.failed == {"h100x2": (1500.0, "Unschedulable: 1 x h100x2 Pending")}  # an unreadable mark is ignored


def test_a_spill_shape_is_read_back_from_its_deployments_mark_only_for_the_target_it_names() -> None:
    deps = [_dep("h100x2", 4, **{"llmscale.io/target-since": "2000"}), _dep("l4x1", 8, **{"llmscale.io/spill-for": "h100x2"})]
    w, _ = observe_workload(deps, [], {}, None)
    assert (w.variant, w.spill) == ("h100x2", "l4x1")
    # A mark left from an older target is no spill of today's (a switch has happened since).
    deps = [_dep("a100x4", 2, **{"llmscale.io/target-since": "3000"}), _dep("l4x1", 8, **{"llmscale.io/spill-for": "h100x2"})]
    assert observe_workload(deps, [], {}, None)[0].spill is None


def test_replicas_set_outside_llmscale_are_named_from_the_managed_fields() -> None:
    ours = {"manager": "llmscale", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}
    status = {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
              "fieldsV1": {"f:status": {}}}
    scaled = {"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    labels = {"manager": "kubectl-label", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {}}}}
    handover = {"manager": "llmscale-handover", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    unnamed = {"operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    assert replicas_set_outside([ours, status, labels, handover]) is None
    assert replicas_set_outside([{**ours, "fieldsV1": {"f:spec": {"f:template": {}}}}, status, scaled]) == "kubectl (scale subresource)"
    assert replicas_set_outside([unnamed]) == "an unnamed client"
    assert replicas_set_outside([]) is None and replicas_set_outside(["garbage", {"fieldsV1": "x"}]) is None


def test_the_views_keep_what_a_decision_reads_from_the_apis_json() -> None:
    """What the operator reads from the API server's JSON (lists, watch events): nothing else kept."""
    pod = PodView.from_json({
        "metadata": {"name": "chat-h100x1-a", "namespace": "ns", "creationTimestamp": "2026-11-28T10:00:00Z",
                     "labels": {"llmscale.io/deployment": "chat", "llmscale.io/variant": "h100x1"},
                     "annotations": {"controller.kubernetes.io/pod-deletion-cost": "7", "other": "x"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"},
                                  {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T10:01:30Z"}]}})
    assert pod == PodView(name="chat-h100x1-a", variant="h100x1", created=T0, terminating=False,
                          ready_since=T0 + dt.timedelta(seconds=90), unschedulable=False, deletion_cost="7", owner="chat",
                          namespace="ns")
    waiting = PodView.from_json({"metadata": {"name": "p", "deletionTimestamp": None, "creationTimestamp": "garbage"},
                                 "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"},
                                                           {"type": "Ready", "status": "False"}]}})
    assert (waiting.created, waiting.terminating, waiting.ready_since, waiting.unschedulable) == (None, False, None, True)
    assert PodView.from_json({"metadata": {"name": "p", "deletionTimestamp": "2026-11-28T10:00:00Z"}}).terminating

    dep = DeploymentView.from_json({
        "metadata": {"name": "chat-h100x1", "namespace": "ns",
                     "labels": {"llmscale.io/deployment": "chat", "llmscale.io/variant": "h100x1"},
                     "annotations": {"llmscale.io/gpus": "1", "llmscale.io/target-since": "1000",
                                     "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                     "ownerReferences": [{"kind": "LLMDeployment", "name": "other", "controller": False},
                                         {"kind": "LLMDeployment", "name": "chat", "controller": True}],
                     "managedFields": [{"manager": "kubectl", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": 3}, "status": {"readyReplicas": 2}})
    assert dep == DeploymentView(name="chat-h100x1", variant="h100x1", replicas=3, ready_replicas=2,
                                 annotations={"llmscale.io/gpus": "1", "llmscale.io/target-since": "1000"}, controller="chat",
                                 replicas_set_by="kubectl (scale subresource)", owner="chat", namespace="ns")
    bare = DeploymentView.from_json({"metadata": {"name": "x"}, "spec": {}, "status": {"readyReplicas": "2"}})
    assert (bare.replicas, bare.ready_replicas, bare.controller, bare.variant) == (1, 0, None, "")


@pytest.mark.parametrize(("pods", "desired", "applied", "expected"), [
    ({"h100x1": PodCounts(ready=3)}, {"h100x1": 3}, False, True),      # steady: nothing to refresh between decisions
    ({"h100x1": PodCounts(ready=3)}, {"h100x1": 3}, True, False),      # a change just applied: counts will move
    ({"h100x1": PodCounts(ready=2, starting=1)}, {"h100x1": 3}, False, False),  # a cold start in flight
    ({"h100x1": PodCounts(ready=3, terminating=1)}, {"h100x1": 3}, False, False),  # a pod draining
    ({"h100x1": PodCounts(ready=2, unschedulable=1)}, {"h100x1": 3}, False, False),  # waiting for GPUs
    ({"h100x1": PodCounts(ready=2)}, {"h100x1": 3}, False, False),     # a pod lost, its replacement not yet seen
    ({}, {"h100x1": 1}, False, False),                                 # no pod yet
    ({"h100x1": PodCounts(ready=2), "l4x1": PodCounts(ready=1)}, {"h100x1": 2, "l4x1": 1}, False, True),
    ({"h100x1": PodCounts(ready=2)}, {"h100x1": 2, "l4x1": 1}, False, False),  # a second shape's pod missing
    ({"l4x1": PodCounts(ready=1)}, {"h100x1": 0, "l4x1": 1}, False, True),     # a shape at zero with no pods
])
def test_a_settled_fleet_is_not_read_between_decisions(pods: dict[str, PodCounts], desired: dict[str, int],
                                                       applied: bool, expected: bool) -> None:
    from llmscale.controller.handlers import settled

    assert settled(Workload("h100x1", sum(desired.values()), 0, pods=pods, desired=desired), applied) is expected


def test_competing_autoscalers_are_read_for_what_they_scale() -> None:
    from llmscale.controller.objects import AutoscalerView

    hpa = AutoscalerView.from_hpa({"metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "chat-h100x1"}}})
    so = AutoscalerView.from_scaled_object({"metadata": {"name": "s"}, "spec": {"scaleTargetRef": {"name": "chat"}}})
    assert hpa == AutoscalerView("Deployment", "chat-h100x1", "HorizontalPodAutoscaler h")
    assert so == AutoscalerView("Deployment", "chat", "KEDA ScaledObject s")  # KEDA's default kind
    assert AutoscalerView.from_hpa({"spec": None}) == AutoscalerView("", "", "HorizontalPodAutoscaler ?")


def test_the_startup_timeout_counts_from_the_pods_start_on_a_node_not_from_its_wait_for_a_gpu() -> None:
    """A pod that waited 4 minutes for a free GPU and then loads for 9 is within a 10-minute
    serving.startupTimeout (the kubelet's startup probe counts from the start, too); it was rolled
    back at minute 10 after its creation. A pod with no PodScheduled time falls back to creation."""
    deps = [_dep("l4x1", 3, **{"llmscale.io/target-since": "1000"}), _dep("h100x2", 1, **{"llmscale.io/target-since": "2000"})]
    waited = PodView(name="w", variant="h100x2", created=T0, scheduled=T0 + dt.timedelta(minutes=4))
    w, _ = observe_workload(deps, [_pod("a", "l4x1", T0, "ready"), waited], {}, None)
    four = (T0 + dt.timedelta(minutes=4)).timestamp()
    assert w.pods["h100x2"] == PodCounts(starting=1, starting_since=four, scheduled_last=four)
    w, _ = observe_workload(deps, [_pod("a", "l4x1", T0, "ready"), PodView(name="w", variant="h100x2", created=T0)], {}, None)
    # Not bound yet (no PodScheduled: unseen by the scheduler, or gated): no evidence of free GPUs.
    assert w.pods["h100x2"] == PodCounts(starting=1, starting_since=T0.timestamp(), scheduled_last=None)
    # Review: a pod that served and lost its Ready condition (a blip, a restarted container) is not a
    # start: with its old scheduling time as the clock, a switch was rolled back at once for NotReady.
    # Its clock runs from when it lost Ready: a crash loop that lasts is still a failed start.
    blip = PodView(name="b", variant="h100x2", created=T0, scheduled=T0 + dt.timedelta(seconds=5),
                   not_ready_since=T0 + dt.timedelta(hours=2))
    # (It is no new evidence of free GPUs: `scheduled_last` is for pods never seen Ready.)
    w, _ = observe_workload(deps, [_pod("a", "l4x1", T0, "ready"), blip], {}, None, seen_ready={"a", "b"})
    assert w.pods["h100x2"] == PodCounts(starting=1, starting_since=(T0 + dt.timedelta(hours=2)).timestamp())
    w, _ = observe_workload(deps, [_pod("a", "l4x1", T0, "ready"), blip, waited], {}, None, seen_ready={"a", "b"})
    assert w.pods["h100x2"] == PodCounts(starting=2, starting_since=four, scheduled_last=four)
    no_time = PodView(name="b", variant="h100x2", created=T0, scheduled=T0 + dt.timedelta(seconds=5))
    w, _ = observe_workload(deps, [_pod("a", "l4x1", T0, "ready"), no_time], {}, None, seen_ready={"a", "b"})
    assert w.pods["h100x2"] == PodCounts(starting=1, starting_since=None)
    lost = PodView.from_json({"metadata": {"name": "b", "creationTimestamp": "2026-11-28T10:00:00Z"},
                              "status": {"conditions": [{"type": "Ready", "status": "False",
                                                         "lastTransitionTime": "2026-11-28T12:00:00Z"}]}})
    assert lost.not_ready_since == T0 + dt.timedelta(hours=2) and lost.ready_since is None
    scheduled = PodView.from_json({"metadata": {"name": "p", "creationTimestamp": "2026-11-28T10:00:00Z"},
                                   "status": {"conditions": [{"type": "PodScheduled", "status": "True",
                                                              "lastTransitionTime": "2026-11-28T10:04:00Z"}]}})
    assert scheduled.scheduled == T0 + dt.timedelta(minutes=4) and scheduled.ready_since is None


def test_the_pods_seen_ready_are_read_back_from_status_and_nothing_else_counts() -> None:
    assert ready_pods_seen({"readyPods": ["a", "b"]}) == ["a", "b"]
    assert ready_pods_seen({"readyPods": ["a", 3, None]}) == ["a"]  # a hand edit: the names alone
    assert ready_pods_seen({"readyPods": "a"}) == [] and ready_pods_seen({}) == []
