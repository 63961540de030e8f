"""What the operator reads from the owned Deployments and pods: the target shape is the one marked
most recently, a failed switch is read back from its Deployment, pods are counted per shape and
phase with the age of the oldest waiting one. A restarted operator sees exactly this."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from llmscale.controller.kube import observe_workload
from llmscale.policy.types import PodCounts, Workload

T0 = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)


def _dep(variant: str, replicas: int, **annotations: str) -> Any:
    gpus = "2" if variant.endswith("x2") else "1"
    acc = "nvidia-h100" if variant.startswith("h100") else "nvidia-l4"
    return SimpleNamespace(
        metadata=SimpleNamespace(name=f"chat-{variant}", labels={"llmscale.io/variant": variant},
                                 annotations={"llmscale.io/gpus": gpus, "llmscale.io/accelerator": acc, **annotations}),
        spec=SimpleNamespace(replicas=replicas))


def _pod(name: str, variant: str, created: dt.datetime, phase: str) -> Any:
    conds = []
    if phase == "ready":
        conds.append(SimpleNamespace(type="Ready", status="True", reason=None, last_transition_time=created + dt.timedelta(seconds=60)))
    elif phase == "unschedulable":
        conds.append(SimpleNamespace(type="PodScheduled", status="False", reason="Unschedulable", last_transition_time=created))
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, labels={"llmscale.io/variant": variant}, creation_timestamp=created,
                                 deletion_timestamp=T0 if phase == "terminating" else None, annotations={}),
        status=SimpleNamespace(conditions=conds))


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


def test_replicas_set_outside_llmscale_are_named_from_the_managed_fields() -> None:
    from types import SimpleNamespace as NS

    from llmscale.controller.kube import replicas_set_outside

    def dep(*entries: NS) -> NS:
        return NS(metadata=NS(managed_fields=list(entries)))

    ours = NS(manager="llmscale", operation="Apply", subresource=None,
              fields_v1={"f:spec": {"f:replicas": {}, "f:template": {}}})
    status = NS(manager="kube-controller-manager", operation="Update", subresource="status", fields_v1={"f:status": {}})
    scaled = NS(manager="kubectl", operation="Update", subresource="scale", fields_v1={"f:spec": {"f:replicas": {}}})
    labels = NS(manager="kubectl-label", operation="Update", subresource=None, fields_v1={"f:metadata": {"f:labels": {}}})
    assert replicas_set_outside(dep(ours, status, labels)) is None
    assert replicas_set_outside(dep(NS(manager="llmscale", operation="Apply", subresource=None,
                                       fields_v1={"f:spec": {"f:template": {}}}), status, scaled)) == "kubectl (scale subresource)"
    assert replicas_set_outside(dep()) is None and replicas_set_outside(NS(metadata=None)) is None


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
