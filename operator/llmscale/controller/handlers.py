"""kopf handlers: thin shells that gather inputs, call the policy, apply the result, write status.

- create / update / resume: validate, render and apply the owned Deployment and Service.
- a timer per LLMDeployment: at spec.scaling.interval, read metrics (batched for all), decide,
  act (Auto), report (status, Events, operator metrics).
The operator never writes the LLMDeployment's spec.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

import kopf
from pydantic import ValidationError

from llmscale import GROUP, VERSION
from llmscale.api.crd import PLURAL
from llmscale.api.models import LLMDeploymentSpec, ScalingMode, explain_errors, parse_spec
from llmscale.api.units import parse_duration
from llmscale.metrics.prometheus import PrometheusReader
from llmscale.policy import History, decide
from llmscale.policy.ceilings import ceiling_replicas, hourly_cost
from llmscale.policy.types import Signals

from . import opmetrics as m
from .kube import Kube, observe_workload
from .render import engine_arg_conflicts, render_deployment, render_service, surge_within_ceilings
from .status import decision_status, iso, merge_conditions

log = logging.getLogger("llmscale.controller")


class Runtime:
    """Process-wide state of the shell: clients, the metrics reader and the batched snapshot cache.

    One batched read serves every LLMDeployment on the same Prometheus endpoint, and each endpoint
    has its own lock: a slow or dead Prometheus holds up only the deployments that read from it
    (the reader's timeout and single retry bound how long), never those on another endpoint.
    """

    kube: Kube
    reader: PrometheusReader | None = None
    tick_s: float = 5.0
    _guard = threading.Lock()  # the dicts below; never held during a read
    _locks: dict[str, threading.Lock] = {}  # one per endpoint: one read in flight each
    _specs: dict[tuple[str, str], LLMDeploymentSpec] = {}
    _signals: dict[tuple[str, str], Signals] = {}
    _read_at: dict[str, float] = {}
    _source: dict[tuple[str, str], str] = {}  # the endpoint each deployment's signals came from

    @classmethod
    def endpoint_of(cls, key: tuple[str, str], spec: LLMDeploymentSpec) -> str:
        """Which batch a deployment's read belongs to: its endpoint's URL (or the refusal, read
        without any request)."""
        assert cls.reader is not None
        target = cls.reader.endpoints.resolve(spec.metrics.prometheus, spec.metrics.prometheus_url, key[0])
        return f"refused: {target}" if isinstance(target, str) else target.url

    @classmethod
    def signals(cls, key: tuple[str, str], spec: LLMDeploymentSpec, max_age_s: float) -> Signals:
        """The deployment's signals from its endpoint's batched read, read again when older than max_age_s."""
        if cls.reader is None:
            return Signals.unreachable("no Prometheus URL configured (--prometheus-url or spec.metrics.prometheusURL)")
        endpoint = cls.endpoint_of(key, spec)
        with cls._guard:
            cls._specs[key] = spec
            lock = cls._locks.setdefault(endpoint, threading.Lock())
        with lock:
            now = time.time()
            with cls._guard:
                stale = (now - cls._read_at.get(endpoint, 0.0) > max_age_s or key not in cls._signals
                         or cls._source.get(key) != endpoint)
                batch = {k: s for k, s in cls._specs.items() if cls.endpoint_of(k, s) == endpoint} if stale else {}
            if batch:
                got = cls.reader.read(batch, now)
                with cls._guard:
                    cls._signals.update(got)
                    cls._source.update(dict.fromkeys(got, endpoint))
                    cls._read_at[endpoint] = now
            with cls._guard:
                return cls._signals.get(key) or Signals.unreachable("no snapshot")

    @classmethod
    def forget(cls, key: tuple[str, str]) -> None:
        with cls._guard:
            cls._specs.pop(key, None)
            cls._signals.pop(key, None)
            cls._source.pop(key, None)


def _fail(body: Any, patch: kopf.Patch, status: dict, reason: str, message: str) -> None:
    conds, _changes = merge_conditions(status.get("conditions"), {"Ready": ("False", reason, message)}, time.time(),
                                       body["metadata"].get("generation"))
    patch.status["conditions"] = conds
    patch.status["observedGeneration"] = body["metadata"].get("generation")
    kopf.warn(body, reason=reason, message=message)


def _parse(body: Any, patch: kopf.Patch, status: dict) -> LLMDeploymentSpec | None:
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
    return spec


def _apply_workload(body: Any, spec: LLMDeploymentSpec, variant_name: str, replicas: int, include_replicas: bool = True) -> None:
    variant = spec.variant(variant_name)
    dep = render_deployment(body, spec, variant, replicas, surge_within_ceilings(spec, variant, replicas))
    if not include_replicas:
        dep["spec"].pop("replicas")  # a competing autoscaler owns replicas: do not fight it
    Runtime.kube.apply(dep)
    Runtime.kube.apply(render_service(body, spec))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # LLMDeployment is namespaced
    started = time.monotonic()
    st = dict(status or {})
    spec = _parse(body, patch, st)
    if spec is None:
        return
    dep = Runtime.kube.deployment(namespace, name)
    running_variant = (dep.spec.template.metadata.labels or {}).get("llmscale.io/variant") if dep else None
    variant = spec.variant(st.get("variant") or running_variant).name
    limit, _why = ceiling_replicas(spec, spec.variant(variant))
    if dep is not None and dep.spec.replicas is not None:
        replicas = dep.spec.replicas  # the timer owns the count once the workload exists
    elif spec.scaling.mode == ScalingMode.PAUSED and spec.scaling.manual_replicas is not None:
        replicas = spec.scaling.manual_replicas
    else:
        replicas = spec.replicas.min
    if replicas > limit:
        kopf.warn(body, reason="BudgetLimited", message=f"replicas capped at {limit} by {_why} (was {replicas})")
        replicas = limit
    competing = Runtime.kube.competing_autoscaler(namespace, name)
    try:
        _apply_workload(body, spec, variant, replicas, include_replicas=competing is None)
    except Exception as e:
        m.APPLY_ERRORS.labels(namespace, name).inc()
        _fail(body, patch, st, "ApplyFailed", f"applying the owned Deployment/Service failed: {str(e)[:300]}")
        raise kopf.TemporaryError(f"apply failed: {e}", delay=15) from e
    v = spec.variant(variant)
    cost = hourly_cost(spec, v, replicas)
    conds = {"Ready": ("True", "Applied", f"Deployment and Service applied: {replicas} x {v.name}"),
             "Progressing": ("True", "ReplicaSetUpdated", "rolling out the serving pods")}
    if competing:
        conds["CompetingAutoscaler"] = ("True", "CompetingAutoscaler", f"{competing} also scales this workload; llmscale reports but does not set replicas")
    new, _changes = merge_conditions(st.get("conditions"), conds, time.time(), body["metadata"].get("generation"))
    patch.status.update({
        "observedGeneration": body["metadata"].get("generation"),
        "variant": v.name,
        "gpus": replicas * v.gpus_per_replica,
        "hourlyCost": f"{cost:.2f}" if cost is not None else None,
        "selector": f"llmscale.io/deployment={name}",
        "conditions": new,
    })
    kopf.info(body, reason="Applied", message=f"Deployment {name}: {replicas} x {v.name} ({v.gpus_per_replica} x {v.accelerator})")
    m.RECONCILE.labels("apply").observe(time.monotonic() - started)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    Runtime.forget((namespace, name))  # owned objects go by ownerReference garbage collection


@kopf.timer(GROUP, VERSION, PLURAL, interval=5.0, initial_delay=1.0, sharp=False)
def autoscale(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, name: str, namespace: str | None,
              memo: Any, **_: Any) -> None:
    assert namespace is not None
    started = time.monotonic()
    st = dict(status or {})
    try:
        spec = parse_spec(dict(body["spec"]))
    except ValidationError:
        return  # reconcile() reports it
    if engine_arg_conflicts(spec):
        return
    interval = parse_duration(spec.scaling.interval)
    last = st.get("lastDecision", {}).get("time") if isinstance(st.get("lastDecision"), dict) else None
    last_ts = memo.get("last_decision", 0.0)
    now = time.time()
    kube = Runtime.kube
    dep = kube.deployment(namespace, name)
    if dep is None:
        return  # reconcile() creates it
    deciding = last is None or now - last_ts >= interval - 0.5
    if not deciding:
        # Between decisions only the replica counts are refreshed (for kubectl get), from the
        # Deployment already read: no pod list, no autoscaler lookup on this hot path.
        v = spec.variant((dep.spec.template.metadata.labels or {}).get("llmscale.io/variant"))
        replicas, ready = dep.spec.replicas or 0, (dep.status.ready_replicas if dep.status else 0) or 0
        _refresh_counts(patch, spec, v, replicas, ready, namespace, name)
        return
    memo["last_decision"] = now
    pods = kube.pods(namespace, name)
    cold = {k: float(v) for k, v in (st.get("coldStartSeconds") or {}).items()}
    competing = kube.competing_autoscaler(namespace, name)
    seen = [n for n in st.get("readyPods") or [] if isinstance(n, str)] if isinstance(st.get("readyPods"), list) else []
    workload, ready_pods = observe_workload(dep, pods, cold, competing, seen, _epoch(last),
                                            parse_duration(spec.serving.startup_timeout))
    v = spec.variant(workload.variant)
    _refresh_counts(patch, spec, v, workload.replicas, workload.ready, namespace, name)
    patch.status.update({
        "startingReplicas": workload.starting,
        "coldStartSeconds": dict(workload.cold_start_s) or None,
        "readyPods": ready_pods or None,
    })

    signals = Runtime.signals((namespace, name), spec, max_age_s=min(interval, Runtime.tick_s) * 0.9)
    history, dropped = History.parse(st.get("history"))
    if dropped:
        # Only our own field names: the values may be anything someone wrote into status.
        kopf.warn(body, reason="HistoryFieldsReset",
                  message=f"status.history fields unreadable, reset to their defaults: {', '.join(dropped)}"[:1000])
        log.warning("%s/%s: status.history fields reset: %s", namespace, name, ", ".join(dropped))
    d = decide(spec, workload, signals, history, now)

    if competing:
        d = d.with_(apply=False)
    applied = False
    if d.apply and (d.to_replicas != workload.replicas or d.variant != v.name):
        if d.to_replicas < workload.replicas and d.variant == v.name:
            _mark_cheapest_victims(namespace, name, pods, signals_pod_load(namespace, name))
        try:
            _apply_workload(body, spec, d.variant, d.to_replicas)
            applied = True
        except Exception as e:
            m.APPLY_ERRORS.labels(namespace, name).inc()
            kopf.warn(body, reason="ScaleFailed", message=f"setting {d.to_replicas} replicas failed: {str(e)[:300]}")
            raise kopf.TemporaryError(f"scale failed: {e}", delay=10) from e

    # Report.
    conds: dict[str, tuple[str, str, str]] = dict(d.conditions)
    conds["Ready"] = ("True" if workload.ready > 0 or d.to_replicas == 0 else "False",
                      "ReplicasReady" if workload.ready > 0 else ("ScaledToZero" if d.to_replicas == 0 else "NoReadyReplicas"),
                      f"{workload.ready}/{workload.replicas} replicas Ready")
    progressing = workload.starting > 0 or workload.pending_unschedulable > 0 or applied
    conds["Progressing"] = ("True" if progressing else "False",
                            "PodsUnschedulable" if workload.pending_unschedulable else ("Scaling" if progressing else "Stable"),
                            f"{workload.starting} starting, {workload.pending_unschedulable} unschedulable (no free GPUs)"
                            if progressing else "all replicas settled")
    conds["CompetingAutoscaler"] = (("True", "CompetingAutoscaler", f"{competing} also scales this workload; llmscale only recommends")
                                    if competing else ("False", "NoCompetingAutoscaler", ""))
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
        if ctype in ("Ready", "Progressing"):
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
    m.DESIRED.labels(namespace, name).set(d.to_replicas)
    m.BUDGET_LIMITED.labels(namespace, name).set(1 if conds.get("BudgetLimited", ("False",))[0] == "True" else 0)
    if d.hourly_cost is not None:
        m.HOURLY_COST.labels(namespace, name).set(d.hourly_cost)
    m.RECONCILE.labels("decide").observe(time.monotonic() - started)
    log.info("%s/%s %s %d->%d at %s", namespace, name, d.action, d.from_replicas, d.to_replicas, iso(now))


def _epoch(iso_time: Any) -> float | None:
    """The time of the last decision from status (None when absent or unreadable)."""
    try:
        return dt.datetime.strptime(str(iso_time), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _refresh_counts(patch: kopf.Patch, spec: LLMDeploymentSpec, v: Any, replicas: int, ready: int,
                    namespace: str, name: str) -> None:
    cost = hourly_cost(spec, v, replicas)
    patch.status.update({
        "replicas": replicas,
        "readyReplicas": ready,
        "variant": v.name,
        "gpus": replicas * v.gpus_per_replica,
        "hourlyCost": f"{cost:.2f}" if cost is not None else None,
        "selector": f"llmscale.io/deployment={name}",
    })
    m.CURRENT.labels(namespace, name).set(replicas)
    m.READY.labels(namespace, name).set(ready)


def signals_pod_load(namespace: str, name: str) -> dict[str, float]:
    reader = Runtime.reader
    return reader.pod_load.get((namespace, name), {}) if reader is not None else {}


def _mark_cheapest_victims(namespace: str, name: str, pods: list[Any], load: dict[str, float]) -> None:
    """Graceful scale-down: the pods with the least in-flight work get the lowest deletion cost,
    so the ReplicaSet removes them; their pre-stop drain lets streaming responses finish."""
    for p in pods:
        if p.metadata.deletion_timestamp is not None:
            continue
        inflight = load.get(p.metadata.name)
        cost = 1_000_000 if inflight is None else int(inflight)  # unknown load: treat as busy
        current = (p.metadata.annotations or {}).get("controller.kubernetes.io/pod-deletion-cost")
        if current != str(cost):
            try:
                Runtime.kube.set_deletion_cost(namespace, p.metadata.name, cost)
            except Exception as e:  # best effort: the scale-down proceeds either way
                log.warning("pod-deletion-cost on %s/%s failed: %s", namespace, p.metadata.name, e)
