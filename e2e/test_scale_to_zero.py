"""Scale to zero and back on the bed: at zero replicas the gateway holds the requests and reports
them as the Gateway API Inference Extension's Endpoint Picker does (flow-control queue size per
InferencePool); the operator reads that from Prometheus and starts a replica."""

from __future__ import annotations

from typing import Any

from .conftest import Bed, wait_for
from .test_autoscaling import _doc, _replicas, _status


def _events(bed: Bed, ns: str) -> list[Any]:
    return bed.core.list_namespaced_event(ns).items


def test_scale_to_zero_and_back_on_the_gateways_demand(bed: Bed, operator: object, namespace: str) -> None:
    bed.kubectl("apply", "-f", "-", input=_doc(
        namespace, replicas={"min": 0, "max": 2},
        scaling={"interval": "3s", "scaleDown": {"stabilizationWindow": "10s", "maxStep": 1},
                 "scaleToZero": {"enabled": True, "idleFor": "15s", "demand": {"inferencePool": "chat"}}}))
    wait_for("the Deployment at zero", lambda: bed.apps.read_namespaced_deployment("chat-h100x1", namespace).spec.replicas == 0, 60)
    wait_for("a decision at zero", lambda: _status(bed, namespace).get("lastDecision"), 60)
    assert _replicas(bed, namespace) == 0

    # Requests arrive with no replica: the gateway holds them, the operator sees the queue.
    bed.traffic(namespace, "chat", rate=2, meanInput=500, meanOutput=100)
    wait_for("one Ready replica", lambda: _status(bed, namespace).get("readyReplicas") == 1, 120)
    assert any(e.reason == "ScaleUp" and "ScaleFromZero" in (e.message or "") for e in _events(bed, namespace))
    wait_for("the held requests served", lambda: (bed.prom(
        f'sum(vllm:request_success_total{{namespace="{namespace}"}})') or 0) > 0, 90)

    # Idle for idleFor, with the demand signal proven: back to zero.
    bed.traffic(namespace, "chat", rate=0)
    wait_for("scaled to zero", lambda: _replicas(bed, namespace) == 0, 180, 2)
    assert any("ScaleToZero" in r for r in _status(bed, namespace)["lastDecision"]["reasons"])


def test_scale_to_zero_without_a_demand_signal_is_refused(bed: Bed, crd: None, namespace: str) -> None:
    r = bed.kubectl("apply", "-f", "-", input=_doc(
        namespace, replicas={"min": 0, "max": 2}, scaling={"scaleToZero": {"enabled": True}}), check=False)
    assert r.returncode != 0 and "scaleToZero.enabled needs scaleToZero.demand" in r.stderr, r.stderr
