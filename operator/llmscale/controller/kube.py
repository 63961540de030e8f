"""Kubernetes reads and writes of the operator (kubernetes client): apply owned objects with
server-side apply, observe the serving workload, find competing autoscalers."""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmscale.metrics.endpoints import CREDENTIAL_KEYS, NamespaceCredentialError
from llmscale.policy.types import PodCounts, Workload

from .informer import OwnedObjects
from .objects import HANDOVER_MANAGER, KEPT_ANNOTATIONS, DeploymentView, PodView
from .opmetrics import KUBE_REQUESTS
from .render import (
    ANNOTATION_SPILL_FOR,
    ANNOTATION_SWITCH_FAILED,
    ANNOTATION_TARGET_SINCE,
    FIELD_MANAGER,
    LABEL_DEPLOYMENT,
    LABEL_VARIANT,
)

log = logging.getLogger("llmscale.kube")
APPLY = "application/apply-patch+yaml"
CATCH_UP_S = 60.0  # the longest that reads after the operator's own write wait for the cache to show it
AUTOSCALERS_TTL_S = 15.0  # without the watch cache, a new HPA or ScaledObject is seen within this


@dataclass(frozen=True)
class DeploymentCounts:
    name: str
    replicas: int  # spec.replicas
    ready: int  # status.readyReplicas


@dataclass(frozen=True)
class Written:
    """What the operator wrote to one Deployment: replicas (None: not set), its marks, or gone."""

    replicas: int | None = None
    marks: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    def shown_by(self, view: DeploymentView | None) -> bool:
        """Does the cache's view of the Deployment include this write?"""
        if self.deleted:
            return view is None
        return view is not None and (self.replicas is None or view.replicas == self.replicas) and all(
            view.annotations.get(k) == v for k, v in self.marks.items())


class CountingApiClient(client.ApiClient):
    """The kubernetes client, counting each request by method (llmscale_kube_requests_total): what
    one operator costs the API server is measured per cycle at scale (bench/scale.py)."""

    def call_api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        KUBE_REQUESTS.labels(str(method).upper()).inc()
        return super().call_api(method, *args, **kwargs)


class Kube:
    def __init__(self, api: client.ApiClient | None = None, cache: OwnedObjects | None = None) -> None:
        api = api or CountingApiClient()
        self.cache = cache  # the watch cache (owned pods and Deployments, autoscalers); None: every read lists
        # (namespace, LLMDeployment) -> (until when, {Deployment: what the operator wrote to it})
        self._wrote: dict[tuple[str, str], tuple[float, dict[str, Written]]] = {}
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.policy = client.PolicyV1Api(api)
        self._lock = threading.Lock()
        self._autoscalers_seen: dict[str, tuple[float, list[tuple[str, str, str]]]] = {}

    # ---- writes --------------------------------------------------------------------------------
    def _written(self, namespace: str, owner: str, deployment: str, replicas: int | None = None,
                 marks: dict[str, str] | None = None, deleted: bool = False) -> None:
        """Remember what the operator just wrote to one of `owner`'s Deployments: until the cache
        shows it, that LLMDeployment's reads go to the API server."""
        with self._lock:
            _, expected = self._wrote.get((namespace, owner), (0.0, {}))
            expected[deployment] = Written(replicas, dict(marks or {}), deleted)
            self._wrote[(namespace, owner)] = (time.monotonic() + CATCH_UP_S, expected)

    def _cache_current(self, namespace: str, owner: str) -> bool:
        """The cache may be used for this LLMDeployment: it is in sync, and it shows every write the
        operator made to its Deployments (a decision must not start from the count before its own
        write, however late the watch event is). A write the cache never shows within CATCH_UP_S
        (someone changed the object since) stops holding reads back."""
        if self.cache is None:
            return False
        with self._lock:
            pending = self._wrote.get((namespace, owner))
        if pending is None:
            return True
        deadline, expected = pending
        cached = self.cache.deployments(namespace, owner)
        if cached is None:
            return False
        by_name = {d.name: d for d in cached}
        caught_up = all(w.shown_by(by_name.get(name)) for name, w in expected.items())
        if caught_up or time.monotonic() > deadline:
            with self._lock:
                if self._wrote.get((namespace, owner)) is pending:
                    del self._wrote[(namespace, owner)]
            return True
        return False

    def apply(self, obj: dict[str, Any]) -> int | None:
        """Server-side apply of an owned object; for a Deployment, its metadata.generation after the
        apply (raised only when the apply changed its spec), else None."""
        md = obj["metadata"]
        kind = obj["kind"]
        if kind == "Deployment":
            owner = (md.get("labels") or {}).get(LABEL_DEPLOYMENT, "")
            replicas = (obj.get("spec") or {}).get("replicas")
            marks = {k: v for k, v in (md.get("annotations") or {}).items() if k in KEPT_ANNOTATIONS}
            self._written(md["namespace"], owner, md["name"], replicas, marks)
            out = self.apps.patch_namespaced_deployment(md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER,
                                                        force=True, _content_type=APPLY)
            self._written(md["namespace"], owner, md["name"], replicas, marks)  # the wait counts from the answer
            generation = getattr(getattr(out, "metadata", None), "generation", None)
            return generation if isinstance(generation, int) else None
        elif kind == "Service":
            self.core.patch_namespaced_service(md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER,
                                               force=True, _content_type=APPLY)
        elif kind == "PodDisruptionBudget":
            self.policy.patch_namespaced_pod_disruption_budget(md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER,
                                                               force=True, _content_type=APPLY)
        else:  # pragma: no cover - only the kinds above are owned
            raise ValueError(f"cannot apply {kind}")
        return None

    def hand_over_replicas(self, namespace: str, deployment: str, owner: str) -> None:
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
        self._written(namespace, owner, deployment)
        try:
            self.apps.patch_namespaced_deployment(deployment, namespace, body, field_manager=HANDOVER_MANAGER,
                                                  _content_type=APPLY)
        except ApiException as e:
            if e.status != 409:
                raise

    def scale(self, namespace: str, deployment: str, replicas: int, owner: str) -> None:
        """Set replicas alone (a shape gone from the spec: nothing to render it from)."""
        self._written(namespace, owner, deployment, replicas)
        self.apps.patch_namespaced_deployment_scale(deployment, namespace, {"spec": {"replicas": replicas}},
                                                    field_manager=FIELD_MANAGER)

    def delete_deployment(self, namespace: str, deployment: str, owner: str) -> None:
        self._written(namespace, owner, deployment, deleted=True)
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
    def deployments(self, namespace: str, name: str, fresh: bool = False) -> list[DeploymentView]:
        """The LLMDeployment's Deployments, one per shape (only those it controls): from the watch
        cache when it is in sync, else (or when `fresh`) listed from the API server."""
        if self.cache is not None and not fresh and self._cache_current(namespace, name):
            cached = self.cache.deployments(namespace, name)
            if cached is not None:
                return sorted(cached, key=lambda d: d.name)
        resp: Any = self.apps.list_namespaced_deployment(namespace, label_selector=f"{LABEL_DEPLOYMENT}={name}",
                                                         _preload_content=False)
        views = [DeploymentView.from_json(d) for d in json.loads(resp.data).get("items") or []]
        return sorted((d for d in views if d.controller == name), key=lambda d: d.name)

    def deployment_counts(self, namespace: str, name: str) -> list[DeploymentCounts]:
        """`deployments`, as names and replica counts only: a tick between decisions needs no more."""
        return [DeploymentCounts(d.name, d.replicas, d.ready_replicas) for d in self.deployments(namespace, name)]

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

    def pods(self, namespace: str, name: str) -> list[PodView]:
        """The LLMDeployment's pods: from the watch cache when it is in sync, else listed."""
        if self.cache is not None and self._cache_current(namespace, name):
            cached = self.cache.pods(namespace, name)
            if cached is not None:
                return sorted(cached, key=lambda p: p.name)
        resp: Any = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_DEPLOYMENT}={name}",
                                                  _preload_content=False)
        return sorted((PodView.from_json(p) for p in json.loads(resp.data).get("items") or []), key=lambda p: p.name)

    def other_disruption_budget(self, namespace: str, name: str) -> str | None:
        """A PodDisruptionBudget not owned by this LLMDeployment that selects its pods (or holds its
        name), or None."""
        pod_labels = {LABEL_DEPLOYMENT: name, "app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name,
                      "app.kubernetes.io/managed-by": "llmscale"}
        # Read from the API's JSON: the client's model objects of a namespace's budgets (managed
        # fields and all) were tens of megabytes at a thousand deployments' take-over.
        resp: Any = self.policy.list_namespaced_pod_disruption_budget(namespace, _preload_content=False)
        for pdb in json.loads(resp.data).get("items") or []:
            meta, spec = pdb.get("metadata") or {}, pdb.get("spec") or {}
            if any(o.get("kind") == "LLMDeployment" and o.get("name") == name for o in meta.get("ownerReferences") or []):
                continue
            if meta.get("name") == name:
                return name
            sel = spec.get("selector")
            if not isinstance(sel, dict) or sel.get("matchExpressions"):
                continue  # expressions: not judged here (rare); an empty selector selects nothing in policy/v1
            labels = sel.get("matchLabels") or {}
            if labels and all(k == LABEL_VARIANT or pod_labels.get(k) == v for k, v in labels.items()):
                return str(meta.get("name"))
        return None

    def competing_autoscaler(self, namespace: str, name: str, owned: Collection[str] = ()) -> str | None:
        """An HPA or KEDA ScaledObject that targets our Deployment or the LLMDeployment itself."""
        for kind, target, what in self._autoscalers(namespace):
            if (kind == "LLMDeployment" and target == name) or (kind == "Deployment" and (target == name or target in owned)):
                return what
        return None

    def _autoscalers(self, namespace: str) -> list[tuple[str, str, str]]:
        """(target kind, target name, "HorizontalPodAutoscaler x") of every HPA and KEDA ScaledObject
        in the namespace: from the watch cache, else listed at most once per AUTOSCALERS_TTL_S for
        all its LLMDeployments (two lists per decision were a third of the operator's requests at a
        thousand deployments)."""
        if self.cache is not None:
            watched = self.cache.autoscalers(namespace)
            if watched is not None:
                return [(a.target_kind, a.target_name, a.what) for a in watched]
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


def fold_cold_start(previous: float | None, seconds: float) -> float:
    """Exponentially weighted, leaning to the slow side: the forecast horizon should cover most starts."""
    return round(seconds if previous is None else max(0.8 * previous + 0.2 * seconds, min(previous, seconds)), 1)


def _epoch_of(text: str | None) -> float | None:
    try:
        v = float((text or "").split(" ", 1)[0])
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def observe_workload(deps: list[DeploymentView], pods: list[PodView], cold_start: dict[str, float], competing: str | None,
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
    timeout, is measured. A readiness blip of a pod seen Ready before is not a start: it counts as
    starting (no Ready, GPUs held), its startup clock running from when it lost Ready.
    """
    if not deps:
        return Workload(variant=None, replicas=0, ready=0, cold_start_s=cold_start, competing_autoscaler=competing), []
    desired: dict[str, int] = {}
    shapes: dict[str, tuple[str, int]] = {}
    failed: dict[str, tuple[float, str]] = {}
    marks: dict[str, float] = {}
    for d in deps:
        v = d.variant
        desired[v] = desired.get(v, 0) + d.replicas
        try:
            gpus = max(1, int(d.annotations.get("llmscale.io/gpus") or 1))
        except ValueError:
            gpus = 1
        shapes[v] = (d.annotations.get("llmscale.io/accelerator") or "", gpus)
        since = _epoch_of(d.annotations.get(ANNOTATION_TARGET_SINCE))
        marks[v] = max(marks.get(v, -1.0), since if since is not None else -1.0)
        bad = d.annotations.get(ANNOTATION_SWITCH_FAILED)
        at = _epoch_of(bad)
        if bad and at is not None:
            failed[v] = (at, bad.split(" ", 1)[1] if " " in bad else "")
    # The target: the newest mark; without marks, the shape with the most replicas.
    target = max(desired, key=lambda v: (marks[v], desired[v], v))
    spill = next((d.variant for d in deps if d.variant != target and d.annotations.get(ANNOTATION_SPILL_FOR) == target), None)
    measured = dict(cold_start)
    by_variant: dict[str, list[int]] = {}  # variant -> [starting, ready, terminating, unschedulable]
    # variant -> [since when the oldest starting pod is on a node, when the oldest unschedulable one was
    # created, when the newest starting pod never seen Ready went on a node]
    first: dict[str, list[float | None]] = {}
    live = {p.name for p in pods if not p.terminating}
    seen = {n for n in seen_ready if n in live}
    for p in pods:
        variant = p.variant
        counts = by_variant.setdefault(variant, [0, 0, 0, 0])
        oldest = first.setdefault(variant, [None, None, None])
        created = p.created
        if p.terminating:
            counts[2] += 1
            continue
        t_ready = p.ready_since
        if t_ready is not None:
            counts[1] += 1
            name = p.name
            if name not in seen and last_look is not None and created and variant and t_ready.timestamp() >= last_look:
                secs = (t_ready - created).total_seconds()
                if 0 <= secs <= startup_timeout_s:
                    measured[variant] = fold_cold_start(measured.get(variant), secs)
            seen.add(name)
            continue
        slot = 1 if p.unschedulable else 0
        counts[3 if slot else 0] += 1
        # serving.startupTimeout counts from the pod's binding to a node: a pod that waited for a
        # free GPU first (up to unschedulableTimeout, which judges that wait) is not rolled back
        # for loading within its own startup time. (The kubelet's startup probe counts from the
        # container's start, after the image pull: this clock starts a little earlier.) A pod seen
        # Ready before counts from when it lost Ready: a blip is no failed start, a crash loop that
        # outlasts startupTimeout is (without a Ready=False time it starts no clock).
        if slot == 0 and p.name in seen:
            clock = p.not_ready_since
        else:
            clock = p.scheduled if slot == 0 and p.scheduled is not None else created
            if slot == 0 and p.scheduled is not None:  # bound to a node: GPUs were free (not a gated or unseen pod)
                t_on = p.scheduled.timestamp()
                oldest[2] = t_on if oldest[2] is None else max(oldest[2], t_on)  # type: ignore[type-var]
        if clock is not None:
            t = clock.timestamp()
            oldest[slot] = t if oldest[slot] is None else min(oldest[slot], t)  # type: ignore[type-var]
    pods_by_variant = {v: PodCounts(c[0], c[1], c[2], c[3], starting_since=first[v][0], waiting_since=first[v][1],
                                    scheduled_last=first[v][2]) for v, c in by_variant.items()}
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
        spill=spill,
    ), sorted(seen)
