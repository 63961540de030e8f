"""The watch cache's store: each object filed under the LLMDeployment its label names, moved when
the label changes, forgotten when the label goes or the object is deleted. (The list-and-watch
stream itself runs against the real API server in e2e/test_watch_cache.py.)"""

from __future__ import annotations

import threading
import time

import pytest

from llmscale.controller.informer import Store
from llmscale.controller.objects import DeploymentView, PodView


def _names(store: Store[PodView], namespace: str, owner: str) -> list[str]:
    return sorted(p.name for p in store.get(namespace, owner))


def test_objects_are_filed_moved_and_forgotten_by_their_label() -> None:
    s: Store[PodView] = Store()
    s.put("ns", "a", "alpha", PodView("a"))
    s.put("ns", "b", "alpha", PodView("b"))
    s.put("other", "a", "alpha", PodView("a", variant="l4x1"))  # same name, another namespace
    assert (_names(s, "ns", "alpha"), _names(s, "other", "alpha"), len(s)) == (["a", "b"], ["a"], 3)
    s.put("ns", "b", "beta", PodView("b"))  # relabelled
    assert (_names(s, "ns", "alpha"), _names(s, "ns", "beta")) == (["a"], ["b"])
    s.put("ns", "a", "alpha", PodView("a", terminating=True))  # modified in place
    assert s.get("ns", "alpha") == [PodView("a", terminating=True)]
    s.put("ns", "a", "", None)  # deleted (or its label removed)
    assert (_names(s, "ns", "alpha"), _names(s, "other", "alpha"), len(s)) == ([], ["a"], 2)
    s.put("ns", "zz", "", None)  # never seen: nothing to forget
    assert s.get("nowhere", "alpha") == [] and len(s) == 2


class _Cache:
    """The watch cache as Kube reads it: in sync, showing `views`."""

    def __init__(self) -> None:
        self.views: list[DeploymentView] = []

    def deployments(self, namespace: str, owner: str) -> list[DeploymentView] | None:
        return [v for v in self.views if v.controller == owner]


def test_after_its_own_write_the_operator_reads_the_api_server_until_the_cache_shows_the_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A decision must not start from the count before its own write, however late the watch
    event comes; once the cache shows the write (or a minute passed: someone changed it since),
    the cache is read again."""
    from types import SimpleNamespace as NS

    from llmscale.controller import kube as kube_module
    from llmscale.controller.kube import Kube

    writes: list[str] = []
    kube = Kube.__new__(Kube)
    kube._lock, kube._wrote, kube.cache = threading.Lock(), {}, _Cache()  # type: ignore[assignment]
    kube.apps = NS(patch_namespaced_deployment=lambda name, ns, body, **kw: writes.append(name),  # type: ignore[assignment]
                   patch_namespaced_deployment_scale=lambda name, ns, body, **kw: writes.append(name),
                   delete_namespaced_deployment=lambda name, ns, **kw: writes.append(name))
    cache: _Cache = kube.cache  # type: ignore[assignment]
    mark = {"llmscale.io/target-since": "1000"}
    cache.views = [DeploymentView("chat-h100x1", "h100x1", 2, 2, controller="chat")]
    assert kube._cache_current("ns", "chat")  # nothing written: the cache

    kube.apply({"kind": "Deployment", "metadata": {"name": "chat-h100x1", "namespace": "ns", "annotations": mark,
                                                   "labels": {"llmscale.io/deployment": "chat"}},
                "spec": {"replicas": 3}})
    assert writes == ["chat-h100x1"] and not kube._cache_current("ns", "chat")  # still 2 there
    assert kube._cache_current("ns", "other")  # another LLMDeployment of the namespace is not held back
    cache.views = [DeploymentView("chat-h100x1", "h100x1", 3, 2, controller="chat")]
    assert not kube._cache_current("ns", "chat")  # the count, but not yet the mark
    cache.views = [DeploymentView("chat-h100x1", "h100x1", 3, 2, annotations=mark, controller="chat")]
    assert kube._cache_current("ns", "chat") and kube._wrote == {}  # caught up: forgotten

    kube.scale("ns", "chat-h100x1", 0, "chat")
    kube.delete_deployment("ns", "chat-l4x1", "chat")
    cache.views = [DeploymentView("chat-h100x1", "h100x1", 0, 0, controller="chat"),
                   DeploymentView("chat-l4x1", "l4x1", 0, 0, controller="chat")]
    assert not kube._cache_current("ns", "chat")  # the deleted one still shows
    later = time.monotonic() + kube_module.CATCH_UP_S + 1
    monkeypatch.setattr(kube_module.time, "monotonic", lambda: later)
    assert kube._cache_current("ns", "chat")  # never shown within a minute: someone changed it since
