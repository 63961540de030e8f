"""The reconcile handler (create, resume, spec change) against a recording stand-in for the API."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
import pytest

from llmscale.controller import handlers as h
from llmscale.controller.objects import DeploymentView


class RecordingKube:
    """What reconcile reads (one Deployment) and what it writes."""

    def __init__(self, replicas: int, set_by: str | None, generation_after: int | None = 3) -> None:
        self.dep = DeploymentView(name="llm-a", variant="a", replicas=replicas, ready_replicas=2, controller="llm",
                                  annotations={"llmscale.io/target-since": "1700000000"}, replicas_set_by=set_by,
                                  owner="llm", namespace="ns", generation=3)
        self.generation_after = generation_after  # what the API server answers the apply with
        self.applied: list[dict[str, Any]] = []
        self.handed_over: list[str] = []

    def deployments(self, ns: str, name: str, fresh: bool = False) -> list[DeploymentView]:
        return [self.dep]

    def pods(self, ns: str, name: str) -> list[Any]:
        return []

    def competing_autoscaler(self, *a: Any) -> None:
        return None

    def apply(self, obj: dict[str, Any]) -> int | None:
        self.applied.append(obj)
        return self.generation_after if obj["kind"] == "Deployment" else None

    def hand_over_replicas(self, namespace: str, deployment: str, owner: str) -> None:
        self.handed_over.append(deployment)

    def other_disruption_budget(self, *a: Any) -> None:
        return None


def _reconcile(kube: RecordingKube, monkeypatch: pytest.MonkeyPatch, max_replicas: int = 8,
               patch: kopf.Patch | None = None) -> list[tuple[str, str, str]]:
    events: list[tuple[str, str, str]] = []
    monkeypatch.setattr(kopf, "info", lambda body, reason, message: events.append(("Normal", reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: events.append(("Warning", reason, message)))
    monkeypatch.setattr(h.Runtime, "kube", kube, raising=False)
    body = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "llm", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"model": "m", "replicas": {"min": 1, "max": max_replicas},
                     "variants": [{"name": "a", "accelerator": "nvidia-l4"}]}}
    h._reconcile(body, {}, kopf.Patch() if patch is None else patch, "llm", "ns")  # type: ignore[arg-type]
    return events


def _deployment(kube: RecordingKube) -> dict[str, Any]:
    return next(o for o in kube.applied if o["kind"] == "Deployment")


def test_a_count_set_by_hand_is_left_to_its_owner_for_the_timer_to_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review (session 26): on resume or a spec change, reconcile applied the hand-set count as
    llmscale's own (server-side apply, force), so the timer's managed-fields check never saw the
    `kubectl scale` and nothing reported it."""
    kube = RecordingKube(6, "kubectl (scale subresource)")
    _reconcile(kube, monkeypatch)
    assert "replicas" not in _deployment(kube)["spec"]
    assert kube.handed_over == ["llm-a"]


def test_a_count_llmscale_owns_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = RecordingKube(6, None)
    _reconcile(kube, monkeypatch)
    assert _deployment(kube)["spec"]["replicas"] == 6 and kube.handed_over == []


def test_a_hand_set_count_over_the_ceiling_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ceilings win over whoever set the count."""
    kube = RecordingKube(6, "kubectl (scale subresource)")
    events = _reconcile(kube, monkeypatch, max_replicas=4)
    assert _deployment(kube)["spec"]["replicas"] == 4 and kube.handed_over == []
    assert ("Warning", "BudgetLimited", "replicas capped at 4 by replicas.max (was 6)") in events


def _condition(patch: kopf.Patch, kind: str) -> tuple[str, str, str]:
    c = next(c for c in patch.status["conditions"] if c["type"] == kind)
    return c["status"], c["reason"], c["message"]


@pytest.mark.parametrize(("generation_after", "expected"), [
    # A resume that finds the Deployment as the spec says: the apply changes nothing (the API server
    # keeps its generation), so nothing rolls out (session 26 found "rolling out" at every resume).
    (3, ("False", "Stable", "all replicas settled")),
    # A spec change that reaches the pod template or the count: the generation rises.
    (4, ("True", "ReplicaSetUpdated", "rolling out the serving pods")),
    # An answer without a generation: not known, so not said to be settled.
    (None, ("True", "ReplicaSetUpdated", "rolling out the serving pods")),
])
def test_progressing_says_a_rollout_only_when_the_apply_changed_a_deployment(
        monkeypatch: pytest.MonkeyPatch, generation_after: int | None, expected: tuple[str, str, str]) -> None:
    kube = RecordingKube(2, None, generation_after)
    patch = kopf.Patch()
    _reconcile(kube, monkeypatch, patch=patch)
    assert _condition(patch, "Progressing") == expected
    assert _condition(patch, "Ready") == ("True", "Applied", "Deployments and Service applied: 2 x a")


def test_a_created_deployment_is_rolling_out(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = RecordingKube(2, None)
    monkeypatch.setattr(kube, "deployments", lambda ns, name, fresh=False: [])
    patch = kopf.Patch()
    _reconcile(kube, monkeypatch, patch=patch)
    assert _deployment(kube)["spec"]["replicas"] == 1  # replicas.min
    assert _condition(patch, "Progressing") == ("True", "ReplicaSetUpdated", "rolling out the serving pods")


def test_a_stored_name_that_cannot_name_the_service_is_reported_not_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRD refuses such names now; one stored before it did is said in a condition and an Event."""
    kube = RecordingKube(2, None)
    events: list[tuple[str, str, str]] = []
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: events.append(("Warning", reason, message)))
    monkeypatch.setattr(h.Runtime, "kube", kube, raising=False)
    body = {"metadata": {"name": "chat.prod", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"model": "m", "variants": [{"name": "a", "accelerator": "nvidia-l4"}]}}
    patch = kopf.Patch()
    h._reconcile(body, {}, patch, "chat.prod", "ns")  # type: ignore[arg-type]
    assert kube.applied == []
    status, reason, message = _condition(patch, "Ready")
    assert (status, reason) == ("False", "InvalidName") and "labels its pods ('chat.prod'); nothing is applied" in message
    assert message.endswith("create it again under a valid name")
    assert events == [("Warning", "InvalidName", message)]


def test_a_resume_mid_rollout_is_progressing_though_its_apply_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: a resume after the timer applied a new shape (or a restart between an apply and the
    status patch) changes nothing, yet pods of a shape still start; and a Deployment may still ask
    for more Ready pods than it has."""
    from llmscale.controller.objects import PodView

    kube = RecordingKube(2, None)  # the apply answers the generation it had: nothing changed
    starting = [PodView(name=f"llm-b-{i}", variant="b", created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), owner="llm", namespace="ns") for i in range(2)]
    other = DeploymentView(name="llm-b", variant="b", replicas=2, ready_replicas=0, controller="llm", owner="llm",
                           namespace="ns", generation=1)
    monkeypatch.setattr(kube, "deployments", lambda ns, name, fresh=False: [kube.dep, other])
    monkeypatch.setattr(kube, "pods", lambda ns, name: starting)
    patch = kopf.Patch()
    _reconcile(kube, monkeypatch, patch=patch)
    status, reason, message = _condition(patch, "Progressing")
    assert (status, message) == ("True", "2 starting, 0 unschedulable (no free GPUs)"), message
    # Fewer Ready than asked for, no pod seen starting yet (the ReplicaSet has not made them).
    kube = RecordingKube(2, None)
    kube.dep = DeploymentView(name="llm-a", variant="a", replicas=3, ready_replicas=2, controller="llm", owner="llm",
                              namespace="ns", generation=3)
    patch = kopf.Patch()
    _reconcile(kube, monkeypatch, patch=patch)
    assert _condition(patch, "Progressing") == ("True", "ReplicaSetUpdated", "rolling out the serving pods")
