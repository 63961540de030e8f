"""The watch cache: its store (each object filed under the LLMDeployment its label names, moved when
the label changes, forgotten when the label goes or the object is deleted), the operator's reads
after its own writes, and the Reflector's list-and-watch against scripted streams (pages, events,
bookmarks, a 410, backoff, a kind not served). The stream against the real API server is
e2e/test_watch_cache.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

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


# ---- the Reflector against scripted streams ---------------------------------------------------------
# The real list-and-watch runs against the API server in e2e/test_watch_cache.py; these script what
# a bed cannot produce on demand: a relist in pages, a 410 in the middle of a watch, objects deleted
# while the watch was down, a watch that ends at once again and again, a kind the server does not serve.


class _Response:
    """What the client returns with _preload_content=False: a body for a list, a stream for a watch."""

    def __init__(self, body: Any = None, events: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(body).encode() if body is not None else b""
        self._lines = [json.dumps(e).encode() + b"\n" for e in events or []]
        self.released = False

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        # One event split across two chunks, as a chunked HTTP body may deliver it.
        for line in self._lines:
            yield line[:7]
            yield line[7:]

    def release_conn(self) -> None:
        self.released = True

    def shutdown(self) -> None:
        pass


def _pod(name: str, owner: str, version: str, ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": version,
                         "labels": {"llmscale.io/deployment": owner} if owner else {}}}


class _Server:
    """A scripted API server: lists answer from `objects` in pages of two; each watch plays the next
    script (a list of events, or an exception to raise). Records every call."""

    def __init__(self, objects: list[dict[str, Any]], version: str, watches: list[Any]) -> None:
        self.objects, self.version, self.watches = objects, version, list(watches)
        self.calls: list[dict[str, Any]] = []
        self.responses: list[_Response] = []

    def list(self, **kw: Any) -> _Response:
        self.calls.append(kw)
        if kw.get("watch"):
            script = self.watches.pop(0) if self.watches else []
            if isinstance(script, Exception):
                raise script
            r = _Response(events=script)
        else:
            start = int(kw.get("_continue") or 0)
            page = self.objects[start:start + 2]
            more = start + 2 < len(self.objects)
            r = _Response({"items": page, "metadata": {"resourceVersion": self.version,
                                                       **({"continue": str(start + 2)} if more else {})}})
        self.responses.append(r)
        return r


def _reflector(server: _Server, optional: bool = False) -> Any:
    from llmscale.controller.informer import Kind, Reflector

    kind = Kind("pods", PodView.from_json, server.list, lambda ns, **kw: server.list(namespace=ns, **kw), optional=optional)
    return Reflector(kind, None)


def test_a_relist_reads_every_page_and_replaces_the_store() -> None:
    server = _Server([_pod(f"p{i}", "chat", str(i)) for i in range(5)] + [_pod("stray", "", "6")], "10", [])
    r = _reflector(server)
    assert r.get("ns", "chat") is None  # not in sync yet: readers go to the API server
    r.relist()
    assert sorted(p.name for p in r.get("ns", "chat")) == ["p0", "p1", "p2", "p3", "p4"]
    assert r.resource_version == "10" and r.synced
    lists = [c for c in server.calls if not c.get("watch")]
    assert [c.get("_continue") for c in lists] == [None, "2", "4"] and all(c["limit"] == 250 for c in lists)
    assert all(c["label_selector"] == "llmscale.io/deployment" and c["_preload_content"] is False for c in lists)
    assert all(resp.released for resp in server.responses)  # every page's connection back to the pool
    # Deleted while nobody watched: the next list replaces the store, nothing lingers.
    server.objects, server.version = [_pod("p4", "chat", "11")], "12"
    r.relist()
    assert [p.name for p in r.get("ns", "chat")] == ["p4"] and r.resource_version == "12"


def test_a_watch_applies_its_events_and_resumes_from_the_last_version() -> None:
    events = [
        {"type": "ADDED", "object": _pod("p2", "chat", "21")},
        {"type": "MODIFIED", "object": {**_pod("p1", "chat", "22"), "metadata": {**_pod("p1", "chat", "22")["metadata"],
                                                                                 "deletionTimestamp": "2026-12-06T00:00:00Z"}}},
        {"type": "MODIFIED", "object": _pod("p0", "other", "23")},  # relabelled: moves
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "30"}}},
    ]
    server = _Server([_pod("p0", "chat", "1"), _pod("p1", "chat", "2")], "20", [events, [{"type": "DELETED", "object": _pod("p2", "chat", "31")}]])
    r = _reflector(server)
    r.relist()
    assert r.watch_once() == 4
    chat = {p.name: p for p in r.get("ns", "chat")}
    assert sorted(chat) == ["p1", "p2"] and chat["p1"].terminating and [p.name for p in r.get("ns", "other")] == ["p0"]
    assert r.resource_version == "30"  # the bookmark: a quiet watch resumes from here, not from the list
    watch = server.calls[-1]
    assert watch["watch"] and watch["resource_version"] == "20" and watch["allow_watch_bookmarks"]
    r.watch_once()
    assert server.calls[-1]["resource_version"] == "30" and [p.name for p in r.get("ns", "chat")] == ["p1"]
    assert all(resp.released for resp in server.responses)


def test_a_410_in_the_middle_of_a_watch_lists_again_and_drops_what_was_deleted_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from llmscale.controller import informer

    gone = [{"type": "ADDED", "object": _pod("p9", "chat", "41")},
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}},
            {"type": "ADDED", "object": _pod("never", "chat", "42")}]  # after the error: never applied
    server = _Server([_pod("p0", "chat", "1"), _pod("p1", "chat", "2")], "40", [gone])
    r = _reflector(server)
    r.relist()
    with pytest.raises(informer.Gone):
        r.watch_once()
    assert sorted(p.name for p in r.get("ns", "chat")) == ["p0", "p1", "p9"]
    # run() on the same break: out of sync at once (readers go to the API server), a backoff, then a
    # fresh list that drops what was deleted meanwhile, and the watch resumes from that list.
    server.objects, server.version = [_pod("p9", "chat", "50")], "50"  # p0 and p1 deleted meanwhile
    server.watches = [gone, []]
    at_backoff: list[Any] = []

    def wait(seconds: float | None = None) -> bool:
        at_backoff.append((seconds, r.get("ns", "chat")))
        if len(at_backoff) >= 2:
            r._stop.set()
        return r._stop.is_set()

    monkeypatch.setattr(r._stop, "wait", wait)
    r.run()
    assert at_backoff[0] == (0.5, None), at_backoff  # after the 410: out of sync while waiting
    assert [p.name for p in r.get("ns", "chat")] == ["p9"] and r.resource_version == "50"
    assert server.calls[-1]["watch"] and server.calls[-1]["resource_version"] == "50"


def test_watches_that_end_at_once_back_off_instead_of_looping(monkeypatch: pytest.MonkeyPatch) -> None:
    """An API server going away answers each watch with nothing: the stream waits between tries,
    longer each time (0.5, 1, 2, 5 s), and keeps the store (nothing says it is wrong)."""
    from llmscale.controller import informer

    server = _Server([_pod("p0", "chat", "1")], "1", [[] for _ in range(50)])
    r = _reflector(server)
    waits: list[float] = []

    def wait(seconds: float | None = None) -> bool:
        waits.append(float(seconds or 0))
        if len(waits) >= 6:
            r._stop.set()
        return r._stop.is_set()

    monkeypatch.setattr(r._stop, "wait", wait)
    r.run()
    watches = [c for c in server.calls if c.get("watch")]
    assert waits == [0.5, 1.0, 2.0, 5.0, 5.0, 5.0] and len(watches) == 6, (waits, len(watches))
    assert [c for c in server.calls if not c.get("watch")] == server.calls[:1]  # one list, no relist storm
    assert [p.name for p in r.get("ns", "chat")] == ["p0"]
    assert informer.BACKOFF_S[-1] == 5.0


def test_a_kind_the_server_does_not_serve_counts_as_none_and_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """KEDA not installed (404) or not ours to list (403): no ScaledObjects, in sync, asked again
    after ABSENT_RETRY_S; a required kind's 403 is a break, listed again after a backoff."""
    from kubernetes import client

    from llmscale.controller import informer

    for optional, expect_synced in ((True, True), (False, False)):
        server = _Server([], "1", [])
        calls = {"n": 0}

        def refuse(calls: dict[str, int] = calls, optional: bool = optional, **kw: Any) -> Any:
            calls["n"] += 1
            raise client.ApiException(status=404 if optional else 403)

        server.list = refuse  # type: ignore[method-assign]
        r = _reflector(server, optional=optional)
        seen: list[tuple[float, bool, Any]] = []

        def wait(seconds: float | None = None, r: Any = r, seen: list[tuple[float, bool, Any]] = seen) -> bool:
            seen.append((float(seconds or 0), r._synced, r.get("ns", "chat")))
            if len(seen) >= 2:
                r._stop.set()
            return r._stop.is_set()

        monkeypatch.setattr(r._stop, "wait", wait)
        r.run()
        if expect_synced:
            assert seen[0] == (informer.ABSENT_RETRY_S, True, []), seen  # none there, and readers are told so
        else:
            assert seen[0] == (0.5, False, None) and seen[1][0] == 1.0, seen  # a break: backoff, readers to the API
        assert calls["n"] == 2
