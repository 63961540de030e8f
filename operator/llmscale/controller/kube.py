"""Kubernetes reads and writes of the operator (kubernetes client): apply owned objects with
server-side apply, observe the serving workload, find competing autoscalers."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Collection
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmscale.policy.types import PodCounts, Workload

from .render import FIELD_MANAGER, LABEL_DEPLOYMENT, LABEL_VARIANT

log = logging.getLogger("llmscale.kube")
APPLY = "application/apply-patch+yaml"


class Kube:
    def __init__(self) -> None:
        self.apps = client.AppsV1Api()
        self.core = client.CoreV1Api()
        self.autoscaling = client.AutoscalingV2Api()
        self.custom = client.CustomObjectsApi()

    # ---- writes --------------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> None:
        md = obj["metadata"]
        kind = obj["kind"]
        if kind == "Deployment":
            self.apps.patch_namespaced_deployment(md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER,
                                                  force=True, _content_type=APPLY)
        elif kind == "Service":
            self.core.patch_namespaced_service(md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER,
                                               force=True, _content_type=APPLY)
        else:  # pragma: no cover - only the two kinds above are owned
            raise ValueError(f"cannot apply {kind}")

    def set_deletion_cost(self, namespace: str, pod: str, cost: int) -> None:
        """Mark a pod cheap (or dear) to delete: the ReplicaSet removes the lowest cost first."""
        body = {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": str(cost)}}}
        try:
            self.core.patch_namespaced_pod(pod, namespace, body)
        except ApiException as e:
            if e.status != 404:
                raise

    # ---- reads ---------------------------------------------------------------------------------
    def deployment(self, namespace: str, name: str) -> Any | None:
        try:
            return self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def pods(self, namespace: str, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_DEPLOYMENT}={name}").items

    def competing_autoscaler(self, namespace: str, name: str) -> str | None:
        """An HPA or KEDA ScaledObject that targets our Deployment or the LLMDeployment itself."""
        try:
            for h in self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items:
                ref = h.spec.scale_target_ref
                if ref.name == name and ref.kind in ("Deployment", "LLMDeployment"):
                    return f"HorizontalPodAutoscaler {h.metadata.name if h.metadata else name}"
        except ApiException as e:
            if e.status not in (403, 404):
                raise
        try:
            objs: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                "keda.sh", "v1alpha1", namespace, "scaledobjects")
            for o in objs.get("items", []):
                ref = o.get("spec", {}).get("scaleTargetRef", {})
                if ref.get("name") == name and ref.get("kind", "Deployment") in ("Deployment", "LLMDeployment"):
                    return f"KEDA ScaledObject {o['metadata']['name']}"
        except ApiException as e:
            if e.status not in (403, 404):
                raise
        return None


def _ready_time(pod: Any) -> dt.datetime | None:
    for c in pod.status.conditions or []:
        if c.type == "Ready" and c.status == "True":
            return c.last_transition_time
    return None


def _unschedulable(pod: Any) -> bool:
    return any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable" for c in (pod.status.conditions or []))


def fold_cold_start(previous: float | None, seconds: float) -> float:
    """Exponentially weighted, leaning to the slow side: the forecast horizon should cover most starts."""
    return round(seconds if previous is None else max(0.8 * previous + 0.2 * seconds, min(previous, seconds)), 1)


def observe_workload(dep: Any | None, pods: list[Any], cold_start: dict[str, float], competing: str | None,
                     seen_ready: Collection[str] = (), last_look: float | None = None,
                     startup_timeout_s: float = math.inf) -> tuple[Workload, list[str]]:
    """The Workload the policy sees, and the live pods the operator has seen Ready (to be passed back
    as `seen_ready` at the next decision, with `last_look` the time of this one).

    The cold start is measured once per pod, from creation to its first Ready: only a pod never
    seen Ready before whose Ready condition turned True since the last look, within the startup
    timeout, is measured. A readiness blip of a pod seen Ready before is not a start.
    """
    if dep is None:
        return Workload(variant=None, replicas=0, ready=0, cold_start_s=cold_start, competing_autoscaler=competing), []
    measured = dict(cold_start)
    by_variant: dict[str, list[int]] = {}  # variant -> [starting, ready, terminating, unschedulable]
    live = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}
    seen = {n for n in seen_ready if n in live}
    for p in pods:
        variant = (p.metadata.labels or {}).get(LABEL_VARIANT) or ""
        counts = by_variant.setdefault(variant, [0, 0, 0, 0])
        if p.metadata.deletion_timestamp is not None:
            counts[2] += 1
            continue
        t_ready = _ready_time(p)
        if t_ready is not None:
            counts[1] += 1
            created = p.metadata.creation_timestamp
            name = p.metadata.name
            if name not in seen and last_look is not None and created and variant and t_ready.timestamp() >= last_look:
                secs = (t_ready - created).total_seconds()
                if 0 <= secs <= startup_timeout_s:
                    measured[variant] = fold_cold_start(measured.get(variant), secs)
            seen.add(name)
        elif _unschedulable(p):
            counts[3] += 1
        else:
            counts[0] += 1
    variant = (dep.spec.template.metadata.labels or {}).get(LABEL_VARIANT)
    pods_by_variant = {v: PodCounts(*c) for v, c in by_variant.items()}
    mine = pods_by_variant.get(variant or "", PodCounts())
    return Workload(
        variant=variant,
        replicas=dep.spec.replicas or 0,
        ready=mine.ready,
        starting=mine.starting,
        pending_unschedulable=mine.unschedulable,
        cold_start_s=measured,
        competing_autoscaler=competing,
        terminating=sum(c.terminating for c in pods_by_variant.values()),
        pods=pods_by_variant,
    ), sorted(seen)
