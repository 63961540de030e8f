"""kopf handlers: thin shells that gather inputs, call the policy, apply the result, write status.

- create / update / resume: validate, render and apply the owned Deployment and Service.
- a timer per LLMDeployment: at spec.scaling.interval, read metrics (batched for all), decide,
  act (Auto), report (status, Events, operator metrics).
The operator never writes the LLMDeployment's spec.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import kopf
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from llmscale import GROUP, VERSION
from llmscale.api.crd import PLURAL
from llmscale.api.models import (
    LLMDeploymentSpec,
    ScalingMode,
    explain_errors,
    parse_spec,
    resource_name_problem,
)
from llmscale.api.units import parse_duration
from llmscale.metrics.prometheus import PrometheusReader, stale_after_s
from llmscale.policy import History, decide
from llmscale.policy.ceilings import ceiling_replicas
from llmscale.policy.idleness import DECISION_TICK_S
from llmscale.policy.rollout import gpus_held
from llmscale.policy.types import Decision, PodCounts, Signals, Workload

from . import opmetrics as m
from .kube import Kube, observe_workload
from .objects import DeploymentView, PodView
from .render import (
    ANNOTATION_SPILL_FOR,
    ANNOTATION_SWITCH_FAILED,
    ANNOTATION_TARGET_SINCE,
    deployment_name,
    engine_arg_conflicts,
    host_paths_not_allowed,
    render_deployment,
    render_disruption_budget,
    render_service,
)
from .status import (
    decision_status,
    iso,
    merge_conditions,
    needs_write,
    ready_pods_seen,
    shape_status,
    user_view,
)

log = logging.getLogger("llmscale.controller")

# A deterministic crash for the fault-injection tests: LLMSCALE_FAILPOINT=after-apply makes the
# process SIGKILL itself after applying a decision and before writing its status (a restart must
# resume from the Deployments as applied, with nothing learnt lost); after-switch-apply, after
# applying the first step of a change of pod shape (the switch must finish once).
FAILPOINT = os.environ.get("LLMSCALE_FAILPOINT", "")
READ_SHARE = 0.1  # an endpoint's batch reads may take about this share of the time (see Runtime.signals)
# A batch is read again at most this share of an interval after the last read: decisions that
# come while it is read use the last one (see Runtime.signals), up to USABLE_INTERVALS old.
REFRESH_SHARE = 0.8
USABLE_INTERVALS = 2.0


def failpoint(name: str) -> None:
    if FAILPOINT == name:
        log.warning("failpoint %s: killing the operator", name)
        os.kill(os.getpid(), signal.SIGKILL)


class Runtime:
    """Process-wide state of the shell: clients, the metrics reader and the batched snapshot cache.

    One batched read serves every LLMDeployment on the same Prometheus endpoint, and each endpoint
    has its own lock: a slow or dead Prometheus holds up only the deployments that read from it
    (the reader's timeout and single retry bound how long), never those on another endpoint.
    """

    kube: Kube
    reader: PrometheusReader | None = None
    disruption_budget: bool = True  # own a PodDisruptionBudget per LLMDeployment (--no-disruption-budget)
    allowed_host_paths: list[str] = []  # hostPath prefixes LLMDeployments may mount (settings.allowed_host_paths)
    tick_s: float = DECISION_TICK_S
    max_waiters: int = 8  # handler threads that may wait on one endpoint's read at once (half the workers)
    _guard = threading.Lock()  # the dicts below; never held during a read
    _waiting: dict[str, int] = {}  # per endpoint: threads waiting on its read in flight
    _locks: dict[str, threading.Lock] = {}  # one per endpoint: one read in flight each
    _specs: dict[tuple[str, str], LLMDeploymentSpec] = {}
    _signals: dict[tuple[str, str], Signals] = {}
    _read_at: dict[str, float] = {}
    _read_took: dict[str, float] = {}  # seconds the endpoint's last batch read took
    _sick: set[str] = set()  # endpoints whose last batch read answered for nobody (failed, or refused)
    _source: dict[tuple[str, str], str] = {}  # the endpoint each deployment's signals came from
    _read_for: dict[tuple[str, str], LLMDeploymentSpec] = {}  # the spec each deployment's signals were read for
    _objects: dict[tuple[str, str], threading.Lock] = {}  # one per LLMDeployment: reconcile and the timer in turn

    @classmethod
    def object_lock(cls, key: tuple[str, str]) -> threading.Lock:
        """kopf runs an object's timer and its change handlers concurrently: both read the owned
        Deployments and apply replicas and marks from that read, so they take turns."""
        with cls._guard:
            return cls._objects.setdefault(key, threading.Lock())

    @classmethod
    def endpoint_of(cls, key: tuple[str, str], spec: LLMDeploymentSpec) -> str:
        """Which batch a deployment's read belongs to: its endpoint's URL (or the refusal, read
        without any request)."""
        assert cls.reader is not None
        target = cls.reader.endpoints.resolve(spec.metrics.prometheus, spec.metrics.prometheus_url, key[0])
        return f"refused: {target}" if isinstance(target, str) else target.batch

    @classmethod
    def signals(cls, key: tuple[str, str], spec: LLMDeploymentSpec, max_age_s: float,
                wait_s: float | None = None, usable_s: float | None = None) -> Signals | None:
        """The deployment's signals from its endpoint's batched read, read again when older than
        max_age_s. While another thread reads the endpoint again, signals no older than usable_s
        answer at once. None: that read was in flight for longer than wait_s (the caller decides
        at its next tick)."""
        if cls.reader is None:
            return Signals.unreachable("no Prometheus URL configured (--prometheus-url or spec.metrics.prometheusURL)")
        endpoint = cls.endpoint_of(key, spec)
        with cls._guard:
            cls._specs[key] = spec
            lock = cls._locks.setdefault(endpoint, threading.Lock())
            sick = endpoint in cls._sick
            last = cls._signals.get(key) if cls._source.get(key) == endpoint else None
            now = time.time()
            # Judged stale or not when read: reused later, it is judged again (unknown means hold).
            # A read for an older spec (another SLO target, rate window, queries) is not reused.
            recent = (last is not None and usable_s is not None and not sick and last.unavailable is None
                      and cls._read_for.get(key) == spec
                      and last.read_at is not None and 0.0 <= now - last.read_at <= usable_s
                      and (last.sampled_at is None or now - last.sampled_at <= stale_after_s(spec)))
        if not lock.acquire(blocking=False):
            answer = cls._answer_meanwhile(key, endpoint, last, recent, sick)
            if answer is not None:
                return answer
            if not cls._wait_for_read(endpoint, lock, wait_s):
                return None
        with _held(lock):
            now = time.time()
            with cls._guard:
                # A batch that takes long to read (a thousand deployments: ~1.5 s of JSON, with every
                # decision of the endpoint waiting) is read again only once it is older than its own
                # read time / READ_SHARE, and never older than REFRESH_SHARE of an interval.
                took = cls._read_took.get(endpoint, 0.0)
                max_age_s = max(max_age_s, min(took / READ_SHARE, REFRESH_SHARE * parse_duration(spec.scaling.interval)))
                old = now - cls._read_at.get(endpoint, 0.0) > max_age_s
                missing = key not in cls._signals or cls._source.get(key) != endpoint or cls._read_for.get(key) != spec
                # An old read: everyone's again. A fresh one without this deployment (new, just
                # taken over, or its spec changed since): its answer is in that read's, so no query
                # goes out for it alone.
                batch = {k: s for k, s in cls._specs.items() if cls.endpoint_of(k, s) == endpoint} if old else (
                    {key: spec} if missing else {})
            if batch:
                started = time.monotonic()
                got = cls.reader.read(batch, now, reuse_s=0.0 if old else max_age_s)
                with cls._guard:
                    # Not for a deployment forgotten (deleted) while the read was in flight.
                    got = {k: v for k, v in got.items() if k in cls._specs}
                    for k in batch.keys() - cls._specs.keys():
                        cls.reader.pod_load.pop(k, None)
                    cls._signals.update(got)
                    # Each answer carries when its read began (Signals.read_at): a deployment that
                    # joins is answered from an earlier read, whose age its reuse and the read-age
                    # histogram must see.
                    cls._source.update(dict.fromkeys(got, endpoint))
                    cls._read_for.update({k: batch[k] for k in got})
                    if old:
                        cls._read_at[endpoint] = now
                        cls._read_took[endpoint] = time.monotonic() - started
                        if got and all(s.unavailable is not None for s in got.values()):
                            cls._sick.add(endpoint)
                        else:
                            cls._sick.discard(endpoint)
            with cls._guard:
                return cls._signals.get(key) or Signals.unreachable("no snapshot")

    @classmethod
    def _answer_meanwhile(cls, key: tuple[str, str], endpoint: str, last: Signals | None, recent: bool,
                          sick: bool) -> Signals | None:
        """Another thread reads the endpoint: signals this deployment decides on meanwhile without
        waiting for that read, or None (it waits, see _wait_for_read)."""
        # The endpoint's batch grew older than max_age_s and another thread reads it again: a read
        # of a thousand deployments takes seconds, and every decision that came meanwhile waited
        # for it, or, past the waiter cap, was put off a whole tick (a sixth of the decisions at a
        # thousand): it came 5 s late for data a few seconds fresher. Signals from the last read
        # within usable_s (two intervals: a read slow but within its timeouts, not a dead
        # endpoint, which the sick rule below answers) answer at once instead.
        # Two decisions may then see the same read, as they see the same scrape whenever
        # Prometheus scrapes less often than they come: the policy dates what a rate window
        # teaches by the read (Signals.read_at) and measures the queue between distinct scrapes,
        # so nothing counts twice.
        if recent:
            with cls._guard:  # the newest, should a read have ended since
                return cls._signals.get(key, last) if cls._source.get(key) == endpoint else last
        # While a read of an endpoint whose last read failed is in flight, the others on it do not
        # wait: each waiter holds one of kopf's handler threads for up to the read's two timeouts,
        # and enough of them hold every thread, stalling deployments on healthy endpoints too. They
        # get the failure (unknown: the policy holds).
        if sick:
            if last is not None and last.unavailable is not None:
                return last
            return Signals.unreachable("Prometheus could not be read: its last read failed and the next one is in flight")
        return None

    @classmethod
    def _wait_for_read(cls, endpoint: str, lock: threading.Lock, wait_s: float | None) -> bool:
        """Wait for the endpoint's read in flight to end; True with its lock then held, False when
        it did not end within wait_s or too many threads wait already (the decision is put off)."""
        # A healthy endpoint's read is waited for, up to wait_s: one that answers slowly but within
        # its timeout would otherwise hold as many threads as it has deployments deciding, and with
        # them every other endpoint's decisions. At most max_waiters threads wait on one endpoint
        # at a time: a slow endpoint with many deployments deciding would otherwise hold every
        # thread for 2.5 s each.
        with cls._guard:
            crowded = wait_s is not None and cls._waiting.get(endpoint, 0) >= cls.max_waiters
            if not crowded:
                cls._waiting[endpoint] = cls._waiting.get(endpoint, 0) + 1
        acquired = False
        if not crowded:
            try:
                acquired = lock.acquire(timeout=-1 if wait_s is None else wait_s)
            finally:
                with cls._guard:
                    cls._waiting[endpoint] -= 1
        if not acquired:
            m.READ_WAITS_ABANDONED.inc()
        return acquired

    @classmethod
    def forget(cls, key: tuple[str, str]) -> None:
        with cls._guard:
            cls._specs.pop(key, None)
            cls._signals.pop(key, None)
            cls._source.pop(key, None)
            cls._read_for.pop(key, None)
            cls._objects.pop(key, None)
            if cls.reader is not None:
                cls.reader.pod_load.pop(key, None)


@contextlib.contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """A lock already acquired, released on the way out."""
    try:
        yield
    finally:
        lock.release()


def _fail(body: Any, patch: kopf.Patch, status: dict, reason: str, message: str) -> None:
    conds, _changes = merge_conditions(status.get("conditions"), {"Ready": ("False", reason, message)}, time.time(),
                                       body["metadata"].get("generation"))
    patch.status["conditions"] = conds
    patch.status["observedGeneration"] = body["metadata"].get("generation")
    kopf.warn(body, reason=reason, message=message)


def _parse(body: Any, patch: kopf.Patch, status: dict) -> LLMDeploymentSpec | None:
    bad_name = resource_name_problem(str(body["metadata"].get("name") or ""))
    if bad_name:
        # Earlier builds created such a CR's Deployments (only its Service failed): they are left
        # as they are, and go with the CR when it is deleted (owner references).
        _fail(body, patch, status, "InvalidName", bad_name + "; nothing is applied: delete it (its Deployments go "
                                                             "with it) and create it again under a valid name")
        return None
    try:
        spec = parse_spec(dict(body["spec"]))
    except ValidationError as e:
        _fail(body, patch, status, "InvalidSpec", explain_errors(e))
        return None
    bad = engine_arg_conflicts(spec)
    if bad:
        _fail(body, patch, status, "EngineArgConflict",
              f"engineArgs {bad} set flags the operator owns (--model, --port, --tensor-parallel-size, --host); remove them")
        return None
    paths = host_paths_not_allowed(spec, Runtime.allowed_host_paths)
    if paths:
        _fail(body, patch, status, "HostPathNotAllowed",
              f"serving.volumes hostPath {paths} outside the paths the platform team allows "
              f"({', '.join(Runtime.allowed_host_paths) or 'none'}; chart value servingHostPaths); use a PersistentVolumeClaim")
        return None
    return spec


def _marks(dep: DeploymentView | None) -> dict[str, str]:
    """The operator's annotations on a shape's Deployment, carried over when it is applied again
    (server-side apply would drop a field its manager stops sending)."""
    ann = dep.annotations if dep is not None else {}
    return {k: v for k, v in ann.items() if k in (ANNOTATION_TARGET_SINCE, ANNOTATION_SWITCH_FAILED, ANNOTATION_SPILL_FOR)}


def _room_for_one(spec: LLMDeploymentSpec, workload: Workload, desired: dict[str, int], variant: str) -> bool:
    """Would one more pod of `variant` (a rolling update's surge) stay within both ceilings?"""
    gpus, cost = gpus_held(spec, workload, {**desired, variant: desired.get(variant, 0) + 1})
    ceiling = spec.cost.hourly_ceiling
    return (spec.cost.max_gpus is None or gpus <= spec.cost.max_gpus) and (ceiling is None or cost <= float(ceiling) + 1e-9)


def _apply_shape(body: Any, spec: LLMDeploymentSpec, workload: Workload, desired: dict[str, int], variant: str,
                 replicas: int, marks: dict[str, str], target: str, include_replicas: bool = True) -> int | None:
    """Apply one shape's Deployment; its metadata.generation after the apply (None when not known,
    or when the shape, gone from the spec, was only scaled or deleted)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if not any(v.name == variant for v in spec.variants):
        # A shape gone from the spec: only its replicas move (to zero), then it is deleted.
        if replicas == 0 and not workload.pods.get(variant):
            Runtime.kube.delete_deployment(namespace, deployment_name(name, variant), name)
        elif include_replicas:
            Runtime.kube.scale(namespace, deployment_name(name, variant), replicas, name)
        return None
    # Only the target shape may surge on a template change (one pod at a time over all shapes).
    dep = render_deployment(body, spec, spec.variant(variant), replicas, marks,
                            surge=variant == target and _room_for_one(spec, workload, desired, variant))
    if not include_replicas:
        # A competing autoscaler owns replicas: do not fight it, and do not let go of the field in
        # a way that resets the count to 1.
        Runtime.kube.hand_over_replicas(namespace, deployment_name(name, variant), name)
        dep["spec"].pop("replicas")
    return Runtime.kube.apply(dep)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # LLMDeployment is namespaced
    with Runtime.object_lock((namespace, name)), _api_errors_in_our_words():
        _reconcile(body, status, patch, name, namespace)


def _reconcile(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, name: str, namespace: str) -> None:
    """Render every shape's Deployment from the spec, keeping the replicas the timer set (a restart
    or a spec change never undoes a scale or a switch), and create the first shape's when none exists."""
    assert namespace is not None  # LLMDeployment is namespaced
    started = time.monotonic()
    st = dict(status or {})
    spec = _parse(body, patch, st)
    if spec is None:
        return
    now = time.time()
    # Listed, not from the watch cache: a spec change right after a scale keeps the count just set.
    deps = Runtime.kube.deployments(namespace, name, fresh=True)
    if _legacy(body, patch, st, name, [d.name for d in deps]):
        return
    competing = Runtime.kube.competing_autoscaler(namespace, name, {d.name for d in deps})
    workload, _seen = observe_workload(deps, Runtime.kube.pods(namespace, name) if deps else [], {}, competing)
    desired = dict(workload.desired)
    by_variant = {d.variant: d for d in deps}
    # Whether this apply rolls anything out: a Deployment created, or one whose spec it changed (its
    # generation rose). A resume that finds everything as the spec says changes nothing.
    rolled = False
    try:
        if not deps:
            rolled = True
            v = spec.variants[0]
            limit, why = ceiling_replicas(spec, v)
            if spec.scaling.mode == ScalingMode.PAUSED and spec.scaling.manual_replicas is not None:
                replicas = spec.scaling.manual_replicas
            else:
                replicas = spec.replicas.min
            if replicas > limit:
                kopf.warn(body, reason="BudgetLimited", message=f"replicas capped at {limit} by {why} (was {replicas})")
                replicas = limit
            desired = {v.name: replicas}
            _apply_shape(body, spec, workload, desired, v.name, replicas, {ANNOTATION_TARGET_SINCE: f"{now:.0f}"},
                         v.name, include_replicas=competing is None)
        else:
            for variant, dep in by_variant.items():
                if not any(x.name == variant for x in spec.variants):
                    continue  # the timer retires a shape gone from the spec
                replicas = dep.replicas
                if variant == workload.variant:
                    limit, why = ceiling_replicas(spec, spec.variant(variant))
                    if replicas > limit:
                        kopf.warn(body, reason="BudgetLimited", message=f"replicas capped at {limit} by {why} (was {replicas})")
                        replicas = desired[variant] = limit
                # A count someone set by hand (kubectl scale) is left to its owner here, unless a ceiling
                # cuts it: taking the field over would hide it from the timer, which reports it (an
                # Event and ReplicasSetOutside) and takes it back at its next change.
                hand_set = dep.replicas_set_by is not None and replicas == dep.replicas
                generation = _apply_shape(body, spec, workload, desired, variant, replicas, _marks(dep),
                                          workload.variant or variant, include_replicas=competing is None and not hand_set)
                rolled = rolled or generation is None or generation != dep.generation
        Runtime.kube.apply(render_service(dict(body), spec))
    except Exception as e:
        m.APPLY_ERRORS.labels(namespace, name).inc()
        _fail(body, patch, st, "ApplyFailed", f"applying the owned Deployments/Service failed: {_api_error(e)}")
        raise kopf.TemporaryError(f"apply failed: {_api_error(e)}", delay=15) from e
    _disruption_budget(body, namespace, name)
    conds = {"Ready": ("True", "Applied", "Deployments and Service applied: " + ", ".join(f"{n} x {v}" for v, n in desired.items())),
             "Progressing": _progressing(workload, rolled, deps=deps)}
    if competing:
        conds["CompetingAutoscaler"] = ("True", "CompetingAutoscaler", f"{competing} also scales this workload; llmscale reports but does not set replicas")
    new, _changes = merge_conditions(st.get("conditions"), conds, now, body["metadata"].get("generation"))
    target = workload.variant or spec.variants[0].name
    patch.status.update({
        "observedGeneration": body["metadata"].get("generation"),
        "variant": target,
        "selector": f"llmscale.io/deployment={name}",
        "conditions": new,
        **shape_status(spec, workload if deps else Workload(variant=target, replicas=desired[target], ready=0), desired,
                       spill=_spill_shape(st) or workload.spill),
    })
    kopf.info(body, reason="Applied", message="Deployments " + ", ".join(
        f"{deployment_name(name, v)}: {n} x {v}" for v, n in desired.items()))
    m.RECONCILE.labels("apply").observe(time.monotonic() - started)


def shown_spill(applied: bool, decided: str | None, remembered: str | None, marked: str | None) -> str | None:
    """The spill shape status shows: the decision's when it was applied (a spill just started or
    ended); otherwise the one the policy read, from status or, after a restart that lost it, from
    the Deployment's llmscale.io/spill-for mark (an unapplied decision changed nothing on the
    cluster, so what it would have decided is not what runs)."""
    return decided if applied else remembered or marked


def _spill_shape(st: Mapping[str, Any]) -> str | None:
    """The spill shape in status (history.spillShape), when it is a name."""
    hist = st.get("history")
    v = hist.get("spillShape") if isinstance(hist, Mapping) else None
    return v if isinstance(v, str) else None


def _progressing(workload: Workload, changed: bool, reason: str = "ReplicaSetUpdated",
                 deps: list[DeploymentView] | None = None) -> tuple[str, str, str]:
    """The Progressing condition: True while pods of any shape start or wait for GPUs, while a
    Deployment has fewer Ready pods than it asks for (`deps`, as listed), or when this handler just
    changed the Deployments (`reason` says how); False ("all replicas settled") otherwise: a
    restart that finds every shape as the spec says, and settled, rolls nothing out."""
    starting = sum(c.starting for c in workload.pods.values())
    unschedulable = sum(c.unschedulable for c in workload.pods.values())
    if starting or unschedulable:
        return ("True", "PodsUnschedulable" if unschedulable else reason,
                f"{starting} starting, {unschedulable} unschedulable (no free GPUs)")
    if changed or any(d.ready_replicas < d.replicas for d in deps or []):
        return ("True", reason, "rolling out the serving pods" if reason == "ReplicaSetUpdated"
                else "0 starting, 0 unschedulable (no free GPUs)")
    return ("False", "Stable", "all replicas settled")


def _disruption_budget(body: Any, namespace: str, name: str) -> None:
    """The owned PodDisruptionBudget, best effort: never where the platform turned it off
    (--no-disruption-budget), never over a budget someone else has on these pods (two budgets over
    one pod make every eviction fail), and a refusal is said in an Event, not a failed apply."""
    if not Runtime.disruption_budget:
        return
    try:
        other = Runtime.kube.other_disruption_budget(namespace, name)
        if other is not None:
            kopf.info(body, reason="DisruptionBudgetSkipped",
                      message=f"PodDisruptionBudget {other} already covers these pods; llmscale adds none")
            return
        Runtime.kube.apply(render_disruption_budget(dict(body)))
    except Exception as e:
        kopf.warn(body, reason="DisruptionBudgetFailed", message=f"the PodDisruptionBudget was not applied: {_api_error(e)}")


def _legacy(body: Any, patch: kopf.Patch, status: dict, name: str, deployments: list[str]) -> bool:
    """A Deployment named like the LLMDeployment itself is the single Deployment of an earlier
    version (before one Deployment per shape). Both would serve the same shape and the ceilings
    would count neither right: nothing is applied until it is gone, and the condition says so."""
    if name not in deployments:
        return False
    ready = next((c for c in status.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), {})
    if ready.get("reason") == "LegacyDeployment":
        return True  # said once (condition and Event); not again at every tick
    _fail(body, patch, status, "LegacyDeployment",
          f"Deployment {name} is from an earlier llmscale version (one Deployment for all shapes); this version runs "
          f"one per shape ({name}-<variant>). Scale traffic away or accept a restart, then delete deployment/{name}.")
    return True


@contextlib.contextmanager
def _api_errors_in_our_words() -> Iterator[None]:
    """An API call that fails anywhere in a handler is retried by kopf, which logs the exception's
    text and posts that log line as an Event: an ApiException's text carries the server's
    response headers and body, so it becomes a TemporaryError in our words first. So does an API
    server that cannot be reached (the client's urllib3 error: refused, reset, timed out), which
    would otherwise reach kopf as a traceback at every tick of an outage."""
    try:
        yield
    except ApiException as e:
        raise kopf.TemporaryError(f"a Kubernetes API call failed: {_api_error(e)}", delay=10) from None
    except urllib3.exceptions.HTTPError as e:
        raise kopf.TemporaryError(f"the Kubernetes API server could not be reached ({_unreachable(e)})", delay=10) from None


def _unreachable(e: urllib3.exceptions.HTTPError) -> str:
    """The kind of failure (the retries' last cause when there were retries), not its text."""
    cause = getattr(e, "reason", None)
    return type(cause if isinstance(cause, Exception) else e).__name__


def _api_error(e: Exception) -> str:
    """What failed, without the server's response body (it is not ours to copy into status)."""
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    if status is not None:
        return f"HTTP {status} {str(reason or '')[:60]}".strip()
    return type(e).__name__


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    Runtime.forget((namespace, name))  # owned objects go by ownerReference garbage collection
    m.forget(namespace, name)


# Sharp: ticks every 5 s from the start of the last, not 5 s after it ended. Unsharp, the time a
# tick spends reading metrics and writing status pushed the ticks apart, and a 15 s interval
# became a decision every 15-20 s (measured on the test bed), slower than the twin assumes.
def decision_due_s(interval: float, tick: float) -> float:
    """Seconds after the last decision that the tick deciding the next one may come: decisions fall
    on ticks, every interval rounded up to whole ticks (12 s and 15 s on 5 s ticks: every 15 s), and
    a tick that comes a little early (the thread pool, the API) still decides rather than push the
    decision a whole tick late."""
    return max(1, math.ceil(interval / tick - 1e-6)) * tick - tick / 2


def decision_due(since_s: float, ticks_since: int, interval: float, tick: float) -> bool:
    """Whether a tick decides, since_s and ticks_since (this one included) after the last decision.
    A handler thread that starts late (a thousand deployments on 16 threads) moves when its
    decision began, not the ticks (kopf's sharp timer keeps its grid): the tick a whole interval of
    ticks on decides even when the last decision began up to a tick late. By time alone, a decision
    more than half a tick late put the next one off a whole tick (20 s apart, not 15)."""
    per_decision = max(1, math.ceil(interval / tick - 1e-6))
    return since_s >= decision_due_s(interval, tick) or (ticks_since >= per_decision and since_s > (per_decision - 1) * tick)


@kopf.timer(GROUP, VERSION, PLURAL, interval=Runtime.tick_s, initial_delay=1.0, sharp=True)
def autoscale(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, name: str, namespace: str | None,
              memo: Any, **_: Any) -> None:
    assert namespace is not None
    with Runtime.object_lock((namespace, name)), _api_errors_in_our_words():
        _autoscale(body, status, patch, name, namespace, memo)


@dataclass(frozen=True)
class OwnStatus:
    """What the operator last computed for one LLMDeployment's status, and what it last wrote.

    Status is written only when a decision changes something a user reads (`needs_write`); in
    between, the next decision continues from this memory, as long as status
    still holds what the operator wrote (a restart, or anyone else's write, and status is read
    again)."""

    fresh: dict[str, Any]  # the status fields the next decision reads, as last computed
    history: History  # the policy's memory, as last computed
    written: tuple[int, ...]  # hashes of the histories of the last writes, as status gives them back
    written_view: dict[str, Any] | None  # user_view() of the last write
    # Hashes of the histories of statuses read again and written over (a predecessor's at take-over,
    # someone else's write): kopf handing one of them over again is its watch lagging, not news,
    # until the newest write comes back or SUPERSEDED_FOR_S have passed since the last was added
    # (a write that failed would otherwise leave the copy it meant to replace unread for good).
    superseded: tuple[int, ...] = ()
    superseded_until: float = 0.0

    def recognises(self, history_hash: int, now: float) -> bool:
        return history_hash in self.written or (history_hash in self.superseded and now < self.superseded_until)


WRITES_RECOGNISED = 8  # a status holding one of this operator's last this-many writes is its own (see continue_from_memory)
SUPERSEDED_FOR_S = 600.0  # a watch lagging longer than this at take-over costs one reread per copy again
# What the next decision reads from status besides the history, taken from memory while status holds
# one of this operator's writes: kopf's copy may lag several writes (a condition flip seen twice
# would post its Event twice and move its lastTransitionTime).
FRESH_KEYS = ("lastDecision", "conditions", "warnings", "readyPods", "coldStartSeconds")


def continue_from_memory(st: dict[str, Any], own: OwnStatus | None, now: float | None = None
                         ) -> tuple[dict[str, Any], History, tuple[str, ...], OwnStatus | None]:
    """(status to decide from, history, history fields that did not parse, memory to write against).

    While status holds a history this operator wrote (one of its last WRITES_RECOGNISED writes:
    the body kopf hands over lags the writes when its watch falls behind, several at a thousand
    deployments, and each lag read as someone else's write cost one more write), the operator's
    memory carries on from there. Anything else (a
    restart, someone else's write, a corrupt field) and status is read again, and the memory is
    dropped, so that this decision's status is written whatever it holds. A status read again once
    and written over is recognised too when kopf hands it over again: at take-over its watch lags
    the new operator's first writes, and each lagging copy read as news was decided from again
    (the predecessor's history, its observation window restarted) and written once more, which
    lagged the watch further (the scale bench's second mode: 156 such writes a cycle at 1,000)."""
    history, dropped = History.parse(st.get("history"))
    if own is not None and not dropped and own.recognises(hash(history), time.time() if now is None else now):
        if own.superseded and hash(history) == own.written[-1]:
            # The newest write came back: the watch has passed everything it wrote over, which
            # from now on is news again. (An older write coming back says less: a copy written
            # over after it may still come.)
            own = replace(own, superseded=(), superseded_until=0.0)
        return {**st, **own.fresh}, own.history, (), own
    return st, history, dropped, None


def _autoscale(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, name: str, namespace: str, memo: Any) -> None:
    if body["metadata"].get("deletionTimestamp"):
        # Being deleted: its Deployments go by garbage collection (or with its namespace); creating
        # them again would fight the deletion and keep the timer, and so the finalizer, busy.
        return
    started = time.monotonic()
    st = dict(status or {})
    st, history, dropped, own = continue_from_memory(st, memo.get("own_status"))
    try:
        spec = parse_spec(dict(body["spec"]))
    except ValidationError:
        return  # reconcile() reports it
    if (engine_arg_conflicts(spec) or host_paths_not_allowed(spec, Runtime.allowed_host_paths)
            or resource_name_problem(name)):
        return  # reconcile() reports it
    interval = parse_duration(spec.scaling.interval)
    last = st.get("lastDecision", {}).get("time") if isinstance(st.get("lastDecision"), dict) else None
    last_ts = memo.get("last_decision", 0.0)
    now = time.time()
    kube = Runtime.kube
    ticks = memo.get("ticks", 0) + 1
    memo["ticks"] = ticks
    deciding = last is None or decision_due(now - last_ts, ticks, interval, Runtime.tick_s)
    if not deciding:
        # Between decisions nothing is written (status moves only with a decision, issue 11): the
        # tick puts a Deployment someone deleted back at once and keeps the operator's replica
        # gauges live, from the Deployments' names and counts in the watch cache (not the client's
        # model objects), no pod list, no autoscaler lookup; and not even that while the last
        # decision found every shape settled and changed nothing (a pod lost meanwhile shows at
        # the next decision, within an interval).
        if memo.get("settled"):
            return
        counts = kube.deployment_counts(namespace, name)
        if not counts and not kube.deployments(namespace, name, fresh=True):
            _reconcile(body, status, patch, name, namespace)
            return
        if _legacy(body, patch, dict(status or {}), name, [c.name for c in counts]):
            return
        m.CURRENT.labels(namespace, name).set(sum(c.replicas for c in counts))
        m.READY.labels(namespace, name).set(sum(c.ready for c in counts))
        return
    deps = kube.deployments(namespace, name) or kube.deployments(namespace, name, fresh=True)
    if not deps:
        # None yet (reconcile creates the first on create and resume), or the Deployment of an
        # earlier version was just deleted: create the first shape's now.
        _reconcile(body, status, patch, name, namespace)
        return
    if _legacy(body, patch, dict(status or {}), name, [d.name for d in deps]):  # status as written: its Ready says it once
        return  # the single Deployment of an earlier version is still there
    memo["last_decision"], memo["ticks"] = now, 0
    pods = kube.pods(namespace, name)
    cold = {k: float(v) for k, v in (st.get("coldStartSeconds") or {}).items()}
    competing = kube.competing_autoscaler(namespace, name, {x.name for x in deps})
    workload, ready_pods = observe_workload(deps, pods, cold, competing, ready_pods_seen(st), _epoch(last),
                                            parse_duration(spec.serving.startup_timeout))
    patch.status.update({
        "startingReplicas": workload.starting,
        "coldStartSeconds": dict(workload.cold_start_s) or None,
        "readyPods": ready_pods or None,
    })

    signals = Runtime.signals((namespace, name), spec, max_age_s=min(interval, Runtime.tick_s) * 0.9,
                              wait_s=Runtime.tick_s / 2, usable_s=USABLE_INTERVALS * interval)
    if signals is None:
        # Its endpoint's read is still in flight: this decision waits for the next tick (nothing
        # written, the handler thread free for deployments on other endpoints).
        memo["last_decision"], memo["ticks"] = last_ts, ticks
        patch.pop("status", None)
        return
    if signals.read_at is not None and signals.unavailable is None:  # the read this decision uses
        m.SIGNALS_AGE.observe(max(0.0, now - signals.read_at))
    if dropped:
        # Only our own field names: the values may be anything someone wrote into status.
        kopf.warn(body, reason="HistoryFieldsReset",
                  message=f"status.history fields unreadable, reset to their defaults: {', '.join(dropped)}"[:1000])
        log.warning("%s/%s: status.history fields reset: %s", namespace, name, ", ".join(dropped))
    d = decide(spec, workload, signals, history, now)

    if competing:
        d = d.with_(apply=False)
    applied = False
    moves = (any(n != workload.desired.get(v, 0) for v, n in d.replicas_by_variant.items())
             or d.variant != workload.variant or d.failed_variant is not None)
    if d.apply and moves:
        try:
            _apply_decision(body, spec, workload, d, pods, deps, now)
            applied = True
            failpoint("after-apply")
            if d.variant != workload.variant:
                failpoint("after-switch-apply")
            if d.history.spill_shape is not None and d.history.spill_shape != history.spill_shape:
                failpoint("after-spill-apply")
        except Exception as e:
            m.APPLY_ERRORS.labels(namespace, name).inc()
            kopf.warn(body, reason="ScaleFailed", message=f"setting {d.replicas_by_variant} failed: {_api_error(e)}")
            raise kopf.TemporaryError(f"scale failed: {_api_error(e)}", delay=10) from e
    # A shape gone from the spec whose pods are all gone: its Deployment goes too.
    known = {v.name for v in spec.variants}
    for dep in deps:
        if dep.variant not in known and not dep.replicas and not workload.pods.get(dep.variant):
            kube.delete_deployment(namespace, dep.name, name)
    shown = d.replicas_by_variant if applied else dict(workload.desired)
    patch.status.update(shape_status(spec, workload, shown, d.variant if applied else None,
                                     shown_spill(applied, d.history.spill_shape, history.spill_shape, workload.spill)))
    m.CURRENT.labels(namespace, name).set(sum(shown.values()))
    m.READY.labels(namespace, name).set(sum(p.ready for p in workload.pods.values()))
    if d.failed_variant is not None and applied:
        if d.failed_variant[0] == d.variant or d.failed_variant[0] not in (history.spill_shape, workload.spill):
            kopf.warn(body, reason="VariantSwitchFailed", message=f"switch to {d.failed_variant[0]} rolled back: {d.failed_variant[1]}"[:1000])
        else:
            kopf.warn(body, reason="SpillFailed", message=f"spill-over to {d.failed_variant[0]} stopped: {d.failed_variant[1]}"[:1000])

    # Report.
    conds: dict[str, tuple[str, str, str]] = dict(d.conditions)
    serving = sum(p.ready for p in workload.pods.values())
    conds["Ready"] = ("True" if serving > 0 or d.to_replicas == 0 else "False",
                      "ReplicasReady" if serving > 0 else ("ScaledToZero" if d.to_replicas == 0 else "NoReadyReplicas"),
                      f"{serving}/{sum(workload.desired.values())} replicas Ready")
    conds["Progressing"] = _progressing(workload, applied, "Scaling", deps)
    conds["CompetingAutoscaler"] = (("True", "CompetingAutoscaler", f"{competing} also scales this workload; llmscale only recommends")
                                    if competing else ("False", "NoCompetingAutoscaler", ""))
    # Replicas someone set by hand (kubectl scale, an edit), in Auto where llmscale sets them: said
    # once in a Warning Event when first seen (even when this decision sets them again at once),
    # and in a condition while the hand-set count stands. Not fought at every tick: the policy
    # decides from the count it finds, and its next change takes the field back.
    auto = spec.scaling.mode == ScalingMode.AUTO and not competing
    seen_outside = {x.name: who for x in deps if auto and (who := x.replicas_set_by)}
    said = memo.get("outside") or {}
    for dep_name, who in seen_outside.items():
        if said.get(dep_name) != who:
            now_set = d.replicas_by_variant.get(next((v for v in workload.desired if f"{name}-{v}" == dep_name), ""), None)
            kopf.warn(body, reason="ReplicasSetOutside",
                      message=(f"replicas of {dep_name} set by {who}, outside llmscale"
                               + (f"; llmscale sets {now_set} now" if applied and now_set is not None else
                                  "; llmscale decides from that count and sets its own at its next change"))[:1000])
    memo["outside"] = seen_outside
    memo["settled"] = settled(workload, applied)
    standing = [f"{k} by {v}" for k, v in seen_outside.items() if not applied]
    if not auto:
        conds["ReplicasSetOutside"] = ("False", "NotAuto", "llmscale does not set replicas in this mode"
                                       + (f" ({competing} does)" if competing else ""))
    else:
        conds["ReplicasSetOutside"] = (
            ("True", "ReplicasSetOutside", f"replicas of {', '.join(standing)} set outside llmscale; it decides from "
                                           "the count it finds and sets its own at its next change") if standing
            else ("False", "ReplicasOwned", "llmscale sets the replicas of its Deployments"))
    new_conds, changes = merge_conditions(st.get("conditions"), conds, now, body["metadata"].get("generation"))
    patch.status.update(decision_status(d, signals, workload, now, spec))
    patch.status["conditions"] = new_conds
    patch.status["observedGeneration"] = body["metadata"].get("generation")
    reasons = "; ".join(str(r) for r in d.reasons)
    if applied:
        kopf.info(body, reason=d.action, message=f"{d.from_replicas} -> {d.to_replicas} ({d.variant}): {reasons}"[:1000])
    elif d.action != "NoChange" and not d.apply and spec.scaling.mode == ScalingMode.RECOMMEND:
        if st.get("lastDecision", {}).get("to") != d.to_replicas:
            kopf.info(body, reason="Recommendation", message=f"would scale {d.from_replicas} -> {d.to_replicas}: {reasons}"[:1000])
    for ctype, old, new, reason in changes:
        if ctype in ("Ready", "Progressing", "ReplicasSetOutside"):  # the last has its own Event
            continue
        bad = (ctype in ("SLOMet", "MetricsAvailable", "SLOFeasible") and new == "False") or (
            ctype in ("BudgetLimited", "CompetingAutoscaler") and new == "True")
        text = f"{ctype} {old or 'unset'} -> {new}: {dict(d.conditions).get(ctype, conds.get(ctype, ('', '', '')))[2]}"
        (kopf.warn if bad else kopf.info)(body, reason=reason, message=text[:1000])
    for w in signals.warnings:
        if w not in (st.get("warnings") or []):
            kopf.warn(body, reason="SLOBetweenBuckets", message=w)
    for r in d.reasons:
        m.DECISIONS.labels(namespace, name, d.action, r.code.value).inc()
    m.decided(namespace, name, now, interval)  # first: a sweep after it finds the series below fresh
    m.DESIRED.labels(namespace, name).set(d.to_replicas)
    m.BUDGET_LIMITED.labels(namespace, name).set(1 if conds.get("BudgetLimited", ("False",))[0] == "True" else 0)
    for c in new_conds:
        if c.get("type") not in m.SHOWN_CONDITIONS:
            continue
        if c.get("status") in ("True", "False"):
            m.CONDITION.labels(namespace, name, c["type"]).set(1 if c["status"] == "True" else 0)
        else:  # Unknown (no latency data, say): no series, so no alert stays on a stale 0
            m.forget_condition(namespace, name, c["type"])
    if d.hourly_cost is not None:
        m.HOURLY_COST.labels(namespace, name).set(d.hourly_cost)
    else:  # a shape on nodes has no price: no figure, rather than a stale or partial one
        with contextlib.suppress(KeyError):
            m.HOURLY_COST.remove(namespace, name)
    _write_or_keep(patch, memo, own, st, d.history, (namespace, name),
                   "reread" if memo.get("own_status") is not None else "first")
    m.RECONCILE.labels("decide").observe(time.monotonic() - started)
    # A change at INFO, a decision that changes nothing at DEBUG (sixty lines a second at a thousand).
    log.log(logging.DEBUG if d.action == "NoChange" else logging.INFO, "%s/%s %s %d->%d at %s", namespace, name, d.action,
            d.from_replicas, d.to_replicas, iso(now))


def _write_or_keep(patch: kopf.Patch, memo: Any, own: OwnStatus | None, st: dict[str, Any], history: History,
                   key: tuple[str, str], unknown: str = "first") -> None:
    """Write this decision's status only when it changes something a user reads; remember what was
    computed either way. `unknown`: why it is written when status was read again (no memory).
    When it was (`own` None), the hashes of this operator's earlier writes are kept, and the status
    read is remembered as written over (see continue_from_memory)."""
    before: OwnStatus | None = memo.get("own_status") if own is None else None
    new = {**st, **dict(patch.get("status") or {})}
    view = user_view(new)
    why = needs_write(own.written_view if own else None, view)
    if why is not None and own is not None and log.isEnabledFor(logging.DEBUG):
        log.debug("%s/%s status written: %s moved", *key, ", ".join(
            k for k in view if k not in own.written_view or view[k] != own.written_view[k]) if own.written_view else "all")
    if why is None and own is not None:
        patch.pop("status", None)
        m.STATUS_SKIPPED.labels(*key).inc()
        written, written_view = own.written, own.written_view
    else:
        m.STATUS_WRITES.labels(*key, unknown if why == "first" else why or unknown).inc()
        # As status will give it back (rounded), so the next decision recognises its own write.
        earlier = own or before
        written = (earlier.written[1 - WRITES_RECOGNISED:] if earlier else ()) + (hash(History.parse(history.to_dict())[0]),)
        written_view = view
    superseded, until = (own.superseded, own.superseded_until) if own else ((), 0.0)
    if own is None:
        read, dropped = History.parse(st.get("history"))
        # A status with fields that did not parse is always read again; and so is one with no
        # history (a new object's, or a status someone cleared): it is written over at once.
        if not dropped and read != History():
            superseded = ((before.superseded if before else ())[1 - WRITES_RECOGNISED:]) + (hash(read),)
            until = time.time() + SUPERSEDED_FOR_S
    memo["own_status"] = OwnStatus({k: new.get(k) for k in FRESH_KEYS}, history, written, written_view, superseded,
                                   until)


def settled(workload: Workload, applied: bool) -> bool:
    """Nothing to look at between decisions: no change applied, and every shape's pods Ready, none
    starting, waiting for GPUs or draining."""
    return not applied and all(
        p.starting == 0 and p.unschedulable == 0 and p.terminating == 0 and p.ready == workload.desired.get(v, 0)
        for v, p in workload.pods.items()) and all(
        n == workload.pods.get(v, PodCounts()).ready for v, n in workload.desired.items())


def _epoch(iso_time: Any) -> float | None:
    """The time of the last decision from status (None when absent or unreadable)."""
    try:
        return dt.datetime.strptime(str(iso_time), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _apply_decision(body: Any, spec: LLMDeploymentSpec, workload: Workload, d: Decision, pods: list[PodView],
                    deps: list[DeploymentView],
                    now: float) -> None:
    """Set each shape's replicas: the target's first (make before break), then the others'. The
    target and a failed switch are marked on the Deployments themselves, so a restart resumes."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    by_variant = {x.variant: x for x in deps}
    order = [d.variant] + [v for v in d.replicas_by_variant if v != d.variant]
    load = signals_pod_load(namespace, name)
    for variant in order:
        n = d.replicas_by_variant.get(variant, 0)
        marks = _marks(by_variant.get(variant))
        if variant == d.variant and (d.variant != workload.variant or ANNOTATION_TARGET_SINCE not in marks):
            marks[ANNOTATION_TARGET_SINCE] = f"{now:.0f}"
        if d.failed_variant is not None and variant == d.failed_variant[0]:
            marks[ANNOTATION_SWITCH_FAILED] = f"{now:.0f} {d.failed_variant[1]}"[:500]
        if variant == d.history.spill_shape and variant != d.variant and n > 0:
            marks[ANNOTATION_SPILL_FOR] = d.variant  # with its replicas: gone with the last of them
        else:
            marks.pop(ANNOTATION_SPILL_FOR, None)
        if n == workload.desired.get(variant, 0) and marks == _marks(by_variant.get(variant)) and (variant in by_variant or n == 0):
            continue
        if n < workload.desired.get(variant, 0):
            _mark_cheapest_victims(namespace, name, [p for p in pods if p.variant == variant], load)
        _apply_shape(body, spec, workload, d.replicas_by_variant, variant, n, marks, d.variant)


def signals_pod_load(namespace: str, name: str) -> dict[str, float]:
    reader = Runtime.reader
    return reader.pod_load.get((namespace, name), {}) if reader is not None else {}


def _mark_cheapest_victims(namespace: str, name: str, pods: list[PodView], load: dict[str, float]) -> None:
    """Graceful scale-down: the pods with the least in-flight work get the lowest deletion cost,
    so the ReplicaSet removes them; their pre-stop drain lets streaming responses finish."""
    for p in pods:
        if p.terminating:
            continue
        inflight = load.get(p.name)
        cost = 1_000_000 if inflight is None else int(inflight)  # unknown load: treat as busy
        if p.deletion_cost != str(cost):
            try:
                Runtime.kube.set_deletion_cost(namespace, p.name, cost)
            except Exception as e:  # best effort: the scale-down proceeds either way
                log.warning("pod-deletion-cost on %s/%s failed: %s", namespace, p.name, e)
