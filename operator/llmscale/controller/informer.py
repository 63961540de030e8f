"""A watch-fed cache of the pods and Deployments the operator owns (label `llmscale.io/deployment`)
and of every HPA and KEDA ScaledObject (competing autoscalers), so that a decision reads them from
memory instead of listing them from the API server at every interval (the lists were nearly all of
the operator's API requests and a third of its CPU at a thousand LLMDeployments).

It works as client-go's reflector does: list, then watch from the list's resourceVersion (with
bookmarks, so that a quiet watch stays resumable); on 410 Gone, a dropped connection or the API
server restarting, list again and replace the whole store, so that an object deleted while the
watch was down does not linger. While a stream is not in sync (before its first list, after a
break until the next list) its readers get None and read the API server directly, exactly as
without the cache. kopf's in-memory indices would hold the same data, but a relist after a break
only adds to them: what was deleted meanwhile stays."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from .objects import AutoscalerView, DeploymentView, PodView
from .opmetrics import WATCH_RELISTS
from .render import LABEL_DEPLOYMENT

log = logging.getLogger("llmscale.informer")
SELECTOR = LABEL_DEPLOYMENT  # every object that carries the label, whatever its value
# The API server ends a watch after this and it is resumed from the last version; with the read
# timeout half a minute later, a connection that died silently is found within 90 s.
WATCH_TIMEOUT_S = 60
HEALTHY_WATCH_S = 10.0  # a watch that lasted this long (or brought an event) resets the backoff
SHORT_WATCH_S = 1.0  # a watch that ends sooner with nothing in it counts as a failure
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # between tries after failures in a row
LIST_PAGE = 250  # objects per page of a list

View = TypeVar("View", PodView, DeploymentView, AutoscalerView)


def owner_label(obj: Mapping[str, Any]) -> str:
    """The LLMDeployment an object belongs to: its llmscale.io/deployment label ("" when none)."""
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_DEPLOYMENT) or "")


def everyone(obj: Mapping[str, Any]) -> str:
    """Objects filed per namespace only (a competing autoscaler may target any of its deployments)."""
    return ANY


ANY = "*"
ABSENT_RETRY_S = 15.0  # (as the lists of autoscalers were cached before) a kind the API server does not serve (KEDA not installed) or we may not list


@dataclass(frozen=True)
class Kind(Generic[View]):
    name: str  # "pods", "deployments", ...: for logs and metrics
    view: Callable[[Mapping[str, Any]], View]
    list_all: Callable[..., Any]  # the client's list call across namespaces
    list_namespaced: Callable[..., Any]  # and in one namespace
    selector: str | None = SELECTOR  # a label selector, or every object of the kind
    owner: Callable[[Mapping[str, Any]], str] = owner_label  # where an object is filed
    optional: bool = False  # 404/403 on the list: none there (checked again every ABSENT_RETRY_S)


class Store(Generic[View]):
    """(namespace, LLMDeployment) -> {object name: view}, and where each object is filed (its
    label's value may change, or go)."""

    def __init__(self) -> None:
        self._by_owner: dict[tuple[str, str], dict[str, View]] = {}
        self._owner: dict[tuple[str, str], str] = {}

    def put(self, namespace: str, name: str, owner: str, view: View | None) -> None:
        """File `view` under its owner; no owner (the label gone) or no view (deleted): forget it."""
        before = self._owner.pop((namespace, name), None)
        if before is not None:
            objs = self._by_owner.get((namespace, before), {})
            objs.pop(name, None)
            if not objs:
                self._by_owner.pop((namespace, before), None)
        if owner and view is not None:
            self._by_owner.setdefault((namespace, owner), {})[name] = view
            self._owner[(namespace, name)] = owner

    def get(self, namespace: str, owner: str) -> list[View]:
        return list(self._by_owner.get((namespace, owner), {}).values())

    def __len__(self) -> int:
        return len(self._owner)


class Reflector(Generic[View]):
    """One list-and-watch stream (one kind, the cluster or one namespace) and its store:
    (namespace, LLMDeployment) -> {object name: view}."""

    def __init__(self, kind: Kind[View], namespace: str | None) -> None:
        self.kind: Kind[View] = kind
        self.namespace = namespace
        self._lock = threading.Lock()
        self._store: Store[View] = Store()
        self._synced = False
        self._stop = threading.Event()
        self._response: Any = None
        self.resource_version: str | None = None

    # ---- readers --------------------------------------------------------------------------------
    def get(self, namespace: str, owner: str) -> list[View] | None:
        """The views of one LLMDeployment's objects; None while the stream is not in sync."""
        with self._lock:
            if not self._synced:
                return None
            return self._store.get(namespace, owner)

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._synced

    # ---- the stream ------------------------------------------------------------------------------
    def _call(self, **kwargs: Any) -> Any:
        kwargs["_preload_content"] = False
        if self.kind.selector is not None:
            kwargs["label_selector"] = self.kind.selector
        if self.namespace is None:
            return self.kind.list_all(**kwargs)
        return self.kind.list_namespaced(self.namespace, **kwargs)

    def relist(self) -> None:
        """List everything and replace the store with it (what was deleted meanwhile goes). In pages
        of LIST_PAGE objects, each turned into views and let go before the next is read: a
        thousand pods' JSON at once was tens of megabytes at the operator's peak."""
        store: Store[View] = Store()
        cont: str | None = None
        while True:
            resp = self._call(limit=LIST_PAGE, _continue=cont, _request_timeout=(5, 60))
            try:
                data = json.loads(resp.data)
            finally:
                resp.release_conn()
            for obj in data.get("items") or []:
                self._put(store, obj)
            meta = data.get("metadata") or {}
            cont = meta.get("continue") or None
            if cont is None:
                break
        with self._lock:
            self._store, self._synced = store, True
            self.resource_version = str(meta.get("resourceVersion") or "") or None
        WATCH_RELISTS.labels(self.kind.name).inc()

    def _put(self, store: Store[View], obj: Mapping[str, Any], delete: bool = False) -> None:
        md = obj.get("metadata") or {}
        owner = self.kind.owner(obj)
        ns, name = str(md.get("namespace") or ""), str(md.get("name") or "")
        store.put(ns, name, owner if not delete else "", self.kind.view(obj) if owner and not delete else None)

    def watch_once(self) -> int:
        """Watch from the last version until the server ends the watch; raise on a break. Returns
        how many events came."""
        resp = self._call(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=WATCH_TIMEOUT_S, _request_timeout=(5, WATCH_TIMEOUT_S + 30))
        self._response = resp
        if self._stop.is_set():  # stopped while the request went out
            resp.release_conn()
            self._response = None
            return 0
        seen = 0
        try:
            for event in _events(resp):
                seen += 1
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise Gone(obj.get("code"), obj.get("reason"))
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    with self._lock:
                        self._put(self._store, obj, delete=kind == "DELETED")
                if version:
                    with self._lock:
                        self.resource_version = str(version)
                if self._stop.is_set():
                    return seen
        finally:
            self._response = None
            resp.release_conn()
        return seen

    def run(self) -> None:
        failures = 0  # in a row: a relist does not end a run of them, a healthy watch does
        while not self._stop.is_set():
            try:
                if not self.synced:
                    self.relist()
                if self._stop.is_set():
                    break
                started = time.monotonic()
                events = self.watch_once()
                lasted = time.monotonic() - started
                if events or lasted >= HEALTHY_WATCH_S:
                    failures = 0
                elif lasted < SHORT_WATCH_S and not self._stop.is_set():
                    # Ended at once with nothing in it (an API server going down, a proxy): not a
                    # loop of requests; the store stays (nothing says it is wrong), the watch resumes.
                    self._stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                    failures += 1
            except client.ApiException as e:
                if not (self.kind.optional and e.status in (403, 404)):
                    self._broke(e, failures)
                    failures += 1
                    continue
                with self._lock:  # not served, or not ours to list: there are none (for now)
                    self._store, self._synced, self.resource_version = Store(), True, None
                self._stop.wait(ABSENT_RETRY_S)
                with self._lock:
                    self._synced = False
            except Exception as e:  # 410 Gone, a reset connection, the API server away: list again
                self._broke(e, failures)
                failures += 1

    def _broke(self, e: Exception, failures: int) -> None:
        """Out of sync until the next list, after a backoff that grows with failures in a row."""
        with self._lock:
            self._synced = False
        wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        log.log(logging.DEBUG if isinstance(e, Gone) else logging.INFO,
                "%s watch%s broke (%s); listing again in %.1f s", self.kind.name,
                f" in {self.namespace}" if self.namespace else "", _why(e), wait)
        self._stop.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        resp = self._response
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:  # already closed
                pass


class Gone(Exception):
    """An ERROR event in a watch (410: the version is too old): list again."""

    def __init__(self, code: Any, reason: Any) -> None:
        super().__init__(f"HTTP {code} {reason}")


def _why(e: Exception) -> str:
    # Our words only: a server's text does not reach the log verbatim.
    if isinstance(e, Gone):
        return str(e)
    if isinstance(e, client.ApiException):
        return f"HTTP {e.status}"
    return type(e).__name__


def _events(resp: Any) -> Iterator[dict[str, Any]]:
    for line in iter_resp_lines(resp):
        if line and not line.isspace():
            event = json.loads(line)
            if isinstance(event, dict):
                yield event


def pod_kind(api: client.ApiClient) -> Kind[PodView]:
    core = client.CoreV1Api(api)
    return Kind("pods", PodView.from_json, core.list_pod_for_all_namespaces, core.list_namespaced_pod)


def deployment_kind(api: client.ApiClient) -> Kind[DeploymentView]:
    apps = client.AppsV1Api(api)
    return Kind("deployments", DeploymentView.from_json, apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment)


def hpa_kind(api: client.ApiClient) -> Kind[AutoscalerView]:
    hpa = client.AutoscalingV2Api(api)
    return Kind("horizontalpodautoscalers", AutoscalerView.from_hpa, hpa.list_horizontal_pod_autoscaler_for_all_namespaces,
                hpa.list_namespaced_horizontal_pod_autoscaler, selector=None, owner=everyone, optional=True)


def scaled_object_kind(api: client.ApiClient) -> Kind[AutoscalerView]:
    custom = client.CustomObjectsApi(api)
    group = ("keda.sh", "v1alpha1")
    return Kind("scaledobjects", AutoscalerView.from_scaled_object,
                lambda **kw: custom.list_cluster_custom_object(*group, "scaledobjects", **kw),
                lambda ns, **kw: custom.list_namespaced_custom_object(*group, ns, "scaledobjects", **kw),
                selector=None, owner=everyone, optional=True)


class OwnedObjects:
    """The pods and Deployments of every LLMDeployment, and the HPAs and KEDA ScaledObjects that
    might compete with it, cluster-wide or in the watched namespaces."""

    def __init__(self, api: client.ApiClient, namespaces: Sequence[str] = ()) -> None:
        pods, deps, hpas, scaled = pod_kind(api), deployment_kind(api), hpa_kind(api), scaled_object_kind(api)
        scopes: list[str | None] = list(namespaces) or [None]
        self._pods = {ns: Reflector(pods, ns) for ns in scopes}
        self._deps = {ns: Reflector(deps, ns) for ns in scopes}
        self._hpas = {ns: Reflector(hpas, ns) for ns in scopes}
        self._scaled = {ns: Reflector(scaled, ns) for ns in scopes}
        self._threads: list[threading.Thread] = []

    def _reflectors(self) -> list[Reflector[Any]]:
        return [*self._pods.values(), *self._deps.values(), *self._hpas.values(), *self._scaled.values()]

    def start(self) -> OwnedObjects:
        for r in self._reflectors():
            t = threading.Thread(target=r.run, name=f"watch-{r.kind.name}-{r.namespace or 'all'}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for r in self._reflectors():
            r.stop()

    def wait_synced(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(r.synced for r in self._reflectors()):
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _scope(reflectors: Mapping[str | None, Reflector[View]], namespace: str) -> Reflector[View] | None:
        return reflectors.get(None) or reflectors.get(namespace)

    def pods(self, namespace: str, owner: str) -> list[PodView] | None:
        r = self._scope(self._pods, namespace)
        return r.get(namespace, owner) if r is not None else None

    def deployments(self, namespace: str, owner: str) -> list[DeploymentView] | None:
        """Its Deployments (those it controls); None while not in sync."""
        r = self._scope(self._deps, namespace)
        got = r.get(namespace, owner) if r is not None else None
        return None if got is None else [d for d in got if d.controller == owner]

    def autoscalers(self, namespace: str) -> list[AutoscalerView] | None:
        """Every HPA and KEDA ScaledObject of the namespace; None while either stream is not in sync."""
        out: list[AutoscalerView] = []
        for reflectors in (self._hpas, self._scaled):
            r = self._scope(reflectors, namespace)
            got = r.get(namespace, ANY) if r is not None else None
            if got is None:
                return None
            out += got
        return out
