"""The operator's watch cache of its pods and Deployments, and of HPAs and ScaledObjects
(controller/informer.py), against the real
API server: it agrees with a fresh list through creations, label changes and deletions, and a watch
that breaks lists again, and a list forgets what was deleted while no watch ran."""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client

from llmscale.controller import opmetrics
from llmscale.controller.informer import OwnedObjects, Reflector, pod_kind
from llmscale.controller.kube import Kube
from llmscale.controller.objects import PodView

from .conftest import Bed, wait_for


def _pod(bed: Bed, namespace: str, name: str, owner: str) -> None:
    """A pod of `owner` that stays Pending (no node matches): the cache keeps what the API says."""
    bed.core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"llmscale.io/deployment": owner, "llmscale.io/variant": "h100x1"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="none")],
                              node_selector={"llmscale.io/no-such-node": "true"})))


def _relabel(bed: Bed, namespace: str, name: str, owner: str | None) -> None:
    bed.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"llmscale.io/deployment": owner}}})


def _names(views: list[PodView] | None) -> set[str] | None:
    return None if views is None else {p.name for p in views}


def _relists() -> float:
    return float(opmetrics.WATCH_RELISTS.labels("pods")._value.get())


def test_the_cache_agrees_with_the_api_server_through_changes(bed: Bed, namespace: str) -> None:
    direct = Kube(client.ApiClient())  # no cache: every read lists
    cache = OwnedObjects(client.ApiClient(), [namespace]).start()
    try:
        assert cache.wait_synced(30), "the watch cache did not list within 30 s"
        assert cache.pods(namespace, "alpha") == [] and cache.deployments(namespace, "alpha") == []
        for name, owner in (("a", "alpha"), ("b", "alpha"), ("c", "beta")):
            _pod(bed, namespace, name, owner)

        def agree(owners: dict[str, set[str]]) -> bool:
            for owner, names in owners.items():
                got, listed = cache.pods(namespace, owner), direct.pods(namespace, owner)
                if got is None or sorted(got, key=lambda p: p.name) != listed or _names(got) != names:
                    return False
            return True

        wait_for("the cache to hold a, b of alpha and c of beta", lambda: agree({"alpha": {"a", "b"}, "beta": {"c"}}), 30, 0.2)
        # The scheduler's verdict (Unschedulable) reaches the cache as it reaches a list.
        wait_for("c seen unschedulable", lambda: [p.unschedulable for p in cache.pods(namespace, "beta") or []] == [True], 30, 0.2)
        _relabel(bed, namespace, "b", "beta")
        wait_for("b filed under beta", lambda: agree({"alpha": {"a"}, "beta": {"b", "c"}}), 30, 0.2)
        _relabel(bed, namespace, "c", None)
        wait_for("c forgotten once its label is gone", lambda: agree({"alpha": {"a"}, "beta": {"b"}}), 30, 0.2)
        bed.core.delete_namespaced_pod("a", namespace, grace_period_seconds=0)
        wait_for("a forgotten once deleted", lambda: agree({"alpha": set(), "beta": {"b"}}), 60, 0.2)

        # A competing autoscaler comes and goes (HPAs watched; KEDA's ScaledObjects too where served).
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "rival"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "alpha-h100x1"},
                        "minReplicas": 1, "maxReplicas": 3}}
        client.AutoscalingV2Api().create_namespaced_horizontal_pod_autoscaler(namespace, hpa)
        seen = ("Deployment", "alpha-h100x1", "HorizontalPodAutoscaler rival")
        wait_for("the HPA in the cache", lambda: [(a.target_kind, a.target_name, a.what)
                                                  for a in cache.autoscalers(namespace) or []] == [seen], 30, 0.2)
        assert direct.competing_autoscaler(namespace, "alpha", {"alpha-h100x1"}) == seen[2]  # as a list says
        client.AutoscalingV2Api().delete_namespaced_horizontal_pod_autoscaler("rival", namespace)
        wait_for("the HPA gone from the cache", lambda: cache.autoscalers(namespace) == [], 30, 0.2)
    finally:
        cache.stop()


def test_a_broken_watch_lists_again_and_a_list_forgets_what_went_meanwhile(bed: Bed, namespace: str) -> None:
    for name in ("a", "b"):
        _pod(bed, namespace, name, "alpha")
    direct = Kube(client.ApiClient())
    reflector: Reflector[Any] = Reflector(pod_kind(client.ApiClient()), namespace)
    reflector.relist()
    assert _names(reflector.get(namespace, "alpha")) == {"a", "b"}
    # A pod goes while no watch runs: the next list replaces the store. (An informer that only
    # added what a relist returned would keep `a`: kopf's indices do.)
    bed.core.delete_namespaced_pod("a", namespace, grace_period_seconds=0)
    wait_for("a deleted", lambda: [p.name for p in direct.pods(namespace, "alpha")] == ["b"], 60, 0.2)
    reflector.relist()
    assert _names(reflector.get(namespace, "alpha")) == {"b"}
    thread = threading.Thread(target=reflector.run, daemon=True)
    thread.start()
    try:
        _pod(bed, namespace, "c", "alpha")
        wait_for("c seen through the watch", lambda: _names(reflector.get(namespace, "alpha")) == {"b", "c"}, 30, 0.1)
        # The connection drops (as when the API server goes away): the stream lists again and
        # watches on from there.
        before = _relists()
        wait_for("a watch connection to drop", lambda: reflector._response is not None, 10, 0.05)
        reflector._response.shutdown()
        wait_for("a list after the break", lambda: _relists() > before, 30, 0.1)
        _pod(bed, namespace, "d", "alpha")
        wait_for("the watch resumed after the list (d seen)",
                 lambda: sorted(reflector.get(namespace, "alpha") or [], key=lambda p: p.name) == direct.pods(namespace, "alpha")
                 and _names(reflector.get(namespace, "alpha")) == {"b", "c", "d"}, 30, 0.1)
    finally:
        reflector.stop()
        thread.join(10)
