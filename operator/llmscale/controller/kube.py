"""Kubernetes reads and writes of the operator (kubernetes client): apply owned objects with
server-side apply, observe the serving workload, find competing autoscalers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmscale.metrics.endpoints import CREDENTIAL_KEYS, NamespaceCredentialError
from llmscale.policy.types import PodCounts, Workload

from .opmetrics import KUBE_REQUESTS
from .render import (
    ANNOTATION_SWITCH_FAILED,
    ANNOTATION_TARGET_SINCE,
    FIELD_MANAGER,
    LABEL_DEPLOYMENT,
    LABEL_VARIANT,
)

log = logging.getLogger("llmscale.kube")
APPLY = "application/apply-patch+yaml"
HANDOVER_MANAGER = "llmscale-handover"  # holds `replicas` while a competing autoscaler takes them
AUTOSCALERS_TTL_S = 15.0  # a new HPA or ScaledObject is seen within this (and the next decision)


@dataclass(frozen=True)
class DeploymentCounts:
    name: str
    replicas: int  # spec.replicas
    ready: int  # status.readyReplicas


class CountingApiClient(client.ApiClient):
    """The kubernetes client, counting each request by method (llmscale_kube_requests_total): what
    one operator costs the API server is measured per cycle at scale (bench/scale.py)."""

    def call_api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        KUBE_REQUESTS.labels(str(method).upper()).inc()
        return super().call_api(method, *args, **kwargs)


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        api = api or CountingApiClient()
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.policy = client.PolicyV1Api(api)
        self._lock = threading.Lock()
        self._autoscalers_seen: dict[str, tuple[float, list[tuple[str, str, str]]]] = {}

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
        elif kind == "PodDisruptionBudget":
            self.policy.patch_namespaced_pod_disruption_budget(md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER,
                                                               force=True, _content_type=APPLY)
        else:  # pragma: no cover - only the kinds above are owned
            raise ValueError(f"cannot apply {kind}")

    def hand_over_replicas(self, namespace: str, deployment: str) -> None:
        """Leave a Deployment's replicas to another autoscaler without resetting them. Server-side
        apply removes a field its only manager stops sending, and a Deployment without `replicas`
        has 1; so a second manager first claims the live count (shared ownership), as the
        Kubernetes docs' "transferring ownership" recipe does, and only then does llmscale apply
        without the field. Without force: a conflict means someone else already owns it."""
        try:
            live = self.apps.read_namespaced_deployment(deployment, namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        if not _owns_replicas(live, FIELD_MANAGER) or live.spec.replicas is None:
            return
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment, "namespace": namespace},
                "spec": {"replicas": live.spec.replicas}}
        try:
            self.apps.patch_namespaced_deployment(deployment, namespace, body, field_manager=HANDOVER_MANAGER,
                                                  _content_type=APPLY)
        except ApiException as e:
            if e.status != 409:
                raise

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        """Set replicas alone (a shape gone from the spec: nothing to render it from)."""
        self.apps.patch_namespaced_deployment_scale(deployment, namespace, {"spec": {"replicas": replicas}},
                                                    field_manager=FIELD_MANAGER)

    def delete_deployment(self, namespace: str, deployment: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(deployment, namespace)
        except ApiException as e:
            if e.status != 404:
                raise

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

    def deployments(self, namespace: str, name: str) -> list[Any]:
        """The LLMDeployment's Deployments, one per pod shape (only those it controls)."""
        items = self.apps.list_namespaced_deployment(namespace, label_selector=f"{LABEL_DEPLOYMENT}={name}").items
        return [d for d in items if d.metadata is not None and any(
            o.kind == "LLMDeployment" and o.name == name and o.controller for o in (d.metadata.owner_references or []))]

    def deployment_counts(self, namespace: str, name: str) -> list[DeploymentCounts]:
        """`deployments`, as names and replica counts only, read from the API's JSON: a tick
        between decisions needs no more, and the client's model objects (managed fields and all)
        cost about a millisecond each to build, a third of the operator's CPU at a thousand."""
        resp: Any = self.apps.list_namespaced_deployment(namespace, label_selector=f"{LABEL_DEPLOYMENT}={name}",
                                                         _preload_content=False)
        out = []
        for d in json.loads(resp.data).get("items") or []:
            md = d.get("metadata") or {}
            if not any(o.get("kind") == "LLMDeployment" and o.get("name") == name and o.get("controller")
                       for o in md.get("ownerReferences") or []):
                continue
            out.append(DeploymentCounts(str(md.get("name", "")), int((d.get("spec") or {}).get("replicas") or 0),
                                        int((d.get("status") or {}).get("readyReplicas") or 0)))
        return out

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded; None when it does not exist. For namespaceSecret endpoints:
        the chart grants `get` on Secrets of that one name only."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=(3, 5))
        except ApiException as e:
            if e.status == 404:
                return None
            raise NamespaceCredentialError(f"the Secret {name!r} of this namespace could not be read (HTTP {e.status})") from None
        except Exception as e:  # the API unreachable: a failed read of this namespace only
            raise NamespaceCredentialError(f"the Secret {name!r} of this namespace could not be read ({type(e).__name__})") from None
        out = {}
        for key, value in (secret.data or {}).items():
            if key not in CREDENTIAL_KEYS:
                continue  # other keys (a CA, notes) are none of our business
            try:
                out[key] = base64.b64decode(value).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise NamespaceCredentialError(f"the Secret {name!r} of this namespace has a {key!r} that is not "
                                               "UTF-8 text") from None
        return out

    def pods(self, namespace: str, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_DEPLOYMENT}={name}").items

    def other_disruption_budget(self, namespace: str, name: str) -> str | None:
        """A PodDisruptionBudget not owned by this LLMDeployment that selects its pods (or holds its
        name), or None."""
        pod_labels = {LABEL_DEPLOYMENT: name, "app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name,
                      "app.kubernetes.io/managed-by": "llmscale"}
        for pdb in self.policy.list_namespaced_pod_disruption_budget(namespace).items:
            meta, spec = pdb.metadata, pdb.spec
            if meta is None:
                continue
            if any(o.kind == "LLMDeployment" and o.name == name for o in meta.owner_references or []):
                continue
            if meta.name == name:
                return str(meta.name)
            sel = spec.selector if spec is not None else None
            if sel is None or sel.match_expressions:
                continue  # expressions: not judged here (rare); an empty selector selects nothing in policy/v1
            labels = sel.match_labels or {}
            if labels and all(k == LABEL_VARIANT or pod_labels.get(k) == v for k, v in labels.items()):
                return str(meta.name)
        return None

    def competing_autoscaler(self, namespace: str, name: str, owned: Collection[str] = ()) -> str | None:
        """An HPA or KEDA ScaledObject that targets our Deployment or the LLMDeployment itself."""
        for kind, target, what in self._autoscalers(namespace):
            if (kind == "LLMDeployment" and target == name) or (kind == "Deployment" and (target == name or target in owned)):
                return what
        return None

    def _autoscalers(self, namespace: str) -> list[tuple[str, str, str]]:
        """(target kind, target name, "HorizontalPodAutoscaler x") of every HPA and KEDA ScaledObject
        in the namespace, listed at most once per AUTOSCALERS_TTL_S for all its LLMDeployments (two
        lists per decision were a third of the operator's requests at a thousand deployments)."""
        now = time.monotonic()
        with self._lock:
            hit = self._autoscalers_seen.get(namespace)
            if hit is not None and now - hit[0] < AUTOSCALERS_TTL_S:
                return hit[1]
        found: list[tuple[str, str, str]] = []
        try:
            for h in self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items:
                ref = h.spec.scale_target_ref
                found.append((ref.kind, ref.name, f"HorizontalPodAutoscaler {h.metadata.name if h.metadata else '?'}"))
        except ApiException as e:
            if e.status not in (403, 404):
                raise
        try:
            objs: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                "keda.sh", "v1alpha1", namespace, "scaledobjects")
            for o in objs.get("items", []):
                ref = o.get("spec", {}).get("scaleTargetRef", {})
                found.append((str(ref.get("kind", "Deployment")), str(ref.get("name", "")),
                              f"KEDA ScaledObject {o.get('metadata', {}).get('name', '?')}"))
        except ApiException as e:
            if e.status not in (403, 404):
                raise
        with self._lock:
            self._autoscalers_seen[namespace] = (now, found)
        return found


def _owns_replicas(deployment: Any, manager: str) -> bool:
    return any(entry.manager == manager and "f:replicas" in ((entry.fields_v1 or {}).get("f:spec") or {})
               for entry in (deployment.metadata.managed_fields or []) if deployment.metadata)


def replicas_set_outside(deployment: Any) -> str | None:
    """Who other than llmscale last set this Deployment's replicas (`kubectl scale`, an edit, a
    GitOps tool), from its managed fields; None while llmscale owns them. Applying with force
    takes them back, so this names a change made since llmscale's last apply."""
    for entry in (deployment.metadata.managed_fields or []) if deployment.metadata else []:
        fields = entry.fields_v1 or {}
        if entry.manager not in (FIELD_MANAGER, HANDOVER_MANAGER) and "f:replicas" in (fields.get("f:spec") or {}):
            how = f" ({entry.subresource} subresource)" if entry.subresource else ""
            return f"{entry.manager or 'an unnamed client'}{how}"
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


def _annotation(obj: Any, key: str) -> str | None:
    return (obj.metadata.annotations or {}).get(key)


def _epoch_of(text: str | None) -> float | None:
    try:
        v = float((text or "").split(" ", 1)[0])
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def observe_workload(deps: list[Any], pods: list[Any], cold_start: dict[str, float], competing: str | None,
                     seen_ready: Collection[str] = (), last_look: float | None = None,
                     startup_timeout_s: float = math.inf) -> tuple[Workload, list[str]]:
    """The Workload the policy sees, and the live pods the operator has seen Ready (to be passed back
    as `seen_ready` at the next decision, with `last_look` the time of this one).

    `deps` are the LLMDeployment's Deployments, one per shape. The target shape is the one marked
    target most recently (`llmscale.io/target-since`); a switch that failed is marked on its
    Deployment (`llmscale.io/switch-failed`). Both live on the owned objects, so a restarted
    operator resumes a switch where it was.

    The cold start is measured once per pod, from creation to its first Ready: only a pod never
    seen Ready before whose Ready condition turned True since the last look, within the startup
    timeout, is measured. A readiness blip of a pod seen Ready before is not a start.
    """
    if not deps:
        return Workload(variant=None, replicas=0, ready=0, cold_start_s=cold_start, competing_autoscaler=competing), []
    desired: dict[str, int] = {}
    shapes: dict[str, tuple[str, int]] = {}
    failed: dict[str, tuple[float, str]] = {}
    marks: dict[str, float] = {}
    for d in deps:
        v = (d.metadata.labels or {}).get(LABEL_VARIANT) or ""
        desired[v] = desired.get(v, 0) + (d.spec.replicas or 0)
        try:
            gpus = max(1, int(_annotation(d, "llmscale.io/gpus") or 1))
        except ValueError:
            gpus = 1
        shapes[v] = (_annotation(d, "llmscale.io/accelerator") or "", gpus)
        since = _epoch_of(_annotation(d, ANNOTATION_TARGET_SINCE))
        marks[v] = max(marks.get(v, -1.0), since if since is not None else -1.0)
        bad = _annotation(d, ANNOTATION_SWITCH_FAILED)
        at = _epoch_of(bad)
        if bad and at is not None:
            failed[v] = (at, bad.split(" ", 1)[1] if " " in bad else "")
    # The target: the newest mark; without marks, the shape with the most replicas.
    target = max(desired, key=lambda v: (marks[v], desired[v], v))
    measured = dict(cold_start)
    by_variant: dict[str, list[int]] = {}  # variant -> [starting, ready, terminating, unschedulable]
    first: dict[str, list[float | None]] = {}  # variant -> [oldest starting, oldest unschedulable] creation times
    live = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}
    seen = {n for n in seen_ready if n in live}
    for p in pods:
        variant = (p.metadata.labels or {}).get(LABEL_VARIANT) or ""
        counts = by_variant.setdefault(variant, [0, 0, 0, 0])
        oldest = first.setdefault(variant, [None, None])
        created = p.metadata.creation_timestamp
        if p.metadata.deletion_timestamp is not None:
            counts[2] += 1
            continue
        t_ready = _ready_time(p)
        if t_ready is not None:
            counts[1] += 1
            name = p.metadata.name
            if name not in seen and last_look is not None and created and variant and t_ready.timestamp() >= last_look:
                secs = (t_ready - created).total_seconds()
                if 0 <= secs <= startup_timeout_s:
                    measured[variant] = fold_cold_start(measured.get(variant), secs)
            seen.add(name)
            continue
        slot = 1 if _unschedulable(p) else 0
        counts[3 if slot else 0] += 1
        if created is not None:
            t = created.timestamp()
            oldest[slot] = t if oldest[slot] is None else min(oldest[slot], t)  # type: ignore[type-var]
    pods_by_variant = {v: PodCounts(c[0], c[1], c[2], c[3], starting_since=first[v][0], waiting_since=first[v][1]) for v, c in by_variant.items()}
    mine = pods_by_variant.get(target, PodCounts())
    return Workload(
        variant=target,
        replicas=desired.get(target, 0),
        ready=mine.ready,
        starting=mine.starting,
        pending_unschedulable=mine.unschedulable,
        cold_start_s=measured,
        competing_autoscaler=competing,
        terminating=sum(c.terminating for c in pods_by_variant.values()),
        pods=pods_by_variant,
        desired=desired,
        shapes=shapes,
        target_since=marks[target] if marks[target] >= 0 else None,
        failed=failed,
    ), sorted(seen)
