"""The reconcile handler (create, resume, spec change) against a recording stand-in for the API."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from llmscale.controller import handlers as h
from llmscale.controller.objects import DeploymentView


class RecordingKube:
    """What reconcile reads (one Deployment) and what it writes."""

    def __init__(self, replicas: int, set_by: str | None) -> None:
        self.dep = DeploymentView(name="llm-a", variant="a", replicas=replicas, ready_replicas=2, controller="llm",
                                  annotations={"llmscale.io/target-since": "1700000000"}, replicas_set_by=set_by,
                                  owner="llm", namespace="ns")
        self.applied: list[dict[str, Any]] = []
        self.handed_over: list[str] = []

    def deployments(self, ns: str, name: str, fresh: bool = False) -> list[DeploymentView]:
        return [self.dep]

    def pods(self, ns: str, name: str) -> list[Any]:
        return []

    def competing_autoscaler(self, *a: Any) -> None:
        return None

    def apply(self, obj: dict[str, Any]) -> None:
        self.applied.append(obj)

    def hand_over_replicas(self, namespace: str, deployment: str, owner: str) -> None:
        self.handed_over.append(deployment)

    def other_disruption_budget(self, *a: Any) -> None:
        return None


def _reconcile(kube: RecordingKube, monkeypatch: pytest.MonkeyPatch, max_replicas: int = 8) -> list[tuple[str, str, str]]:
    events: list[tuple[str, str, str]] = []
    monkeypatch.setattr(kopf, "info", lambda body, reason, message: events.append(("Normal", reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: events.append(("Warning", reason, message)))
    monkeypatch.setattr(h.Runtime, "kube", kube, raising=False)
    body = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "llm", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"model": "m", "replicas": {"min": 1, "max": max_replicas},
                     "variants": [{"name": "a", "accelerator": "nvidia-l4"}]}}
    h._reconcile(body, {}, kopf.Patch(), "llm", "ns")  # type: ignore[arg-type]
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
