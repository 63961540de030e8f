"""The operator's own metrics: a deleted LLMDeployment, or one this replica no longer decides for, leaves no
series behind."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from llmscale.controller import kube as kube_module
from llmscale.controller import opmetrics as m
from llmscale.controller.kube import CountingApiClient, Kube


def _series(name: str) -> list[str]:
    return [line for line in generate_latest().decode().splitlines() if f'llmdeployment="{name}"' in line]


def test_forget_drops_every_series_of_one_deployment_and_no_other() -> None:
    m.DECISIONS.labels("ns-f", "gone", "ScaleUp", "QueueGrowing").inc()
    m.STATUS_WRITES.labels("ns-f", "gone", "changed").inc()
    m.CONDITION.labels("ns-f", "gone", "SLOMet").set(1)
    for gauge in (m.DESIRED, m.CURRENT, m.READY, m.BUDGET_LIMITED, m.HOURLY_COST, m.LAST_DECISION):
        gauge.labels("ns-f", "gone").set(2)
    m.DESIRED.labels("ns-f", "kept").set(1)
    m.CONDITION.labels("ns-f", "kept", "SLOMet").set(0)
    assert len(_series("gone")) >= 8
    m.forget("ns-f", "gone")
    assert _series("gone") == []
    assert len(_series("kept")) == 2
    m.forget("ns-f", "never-seen")  # nothing to drop is fine


def test_a_deployment_not_decided_for_in_four_intervals_loses_its_series_the_others_keep_theirs() -> None:
    """A replica that kopf's peering froze (another took over) exports its last values no longer than
    four of each deployment's intervals: an alert on them (SLOMet == 0) must not fire from the standby."""
    for name, interval in (("fast", 15.0), ("slow", 60.0)):
        m.CONDITION.labels("ns-s", name, "SLOMet").set(0)
        m.DESIRED.labels("ns-s", name).set(3)
        m.decided("ns-s", name, 1000.0, interval)
    m.DESIRED.labels("ns-s", "undecided").set(1)  # never decided here: not this sweep's to drop
    def sweep(now: float) -> list[tuple[str, str]]:  # other tests' deployments are not this test's
        return [key for key in m.forget_stale(now) if key[0] == "ns-s"]

    assert sweep(1060.0) == []  # exactly four intervals of "fast": still fresh
    assert len(_series("fast")) == 3 and len(_series("slow")) == 3
    assert sweep(1060.5) == [("ns-s", "fast")]
    assert _series("fast") == [] and len(_series("slow")) == 3 and len(_series("undecided")) == 1
    m.decided("ns-s", "slow", 1100.0, 60.0)  # decided again: fresh from then on
    assert sweep(1300.0) == []
    assert sweep(1340.5) == [("ns-s", "slow")] and _series("slow") == []
    assert sweep(5000.0) == []  # each is dropped once
    m.forget("ns-s", "undecided")


class _ApiServer:
    """A local HTTP server standing in for the API server: answers every GET and PATCH with the
    list that `answers` maps the path's last segment to (an empty list otherwise)."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]] | None = None) -> None:
        answers = answers or {}

        class Answer(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _ok(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                last = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                body = json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": answers.get(last, [])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PATCH = _ok  # noqa: N815

        self.server = HTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kube(self) -> Kube:
        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{self.server.server_port}"
        return Kube(CountingApiClient(conf))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _count(verb: str) -> float:
    return m.KUBE_REQUESTS.labels(verb)._value.get()


def test_the_operators_kubernetes_requests_are_counted_by_method() -> None:
    api = _ApiServer()
    try:
        kube = api.kube()
        gets, patches = _count("GET"), _count("PATCH")
        assert kube.pods("ns", "chat") == []
        assert kube.deployments("ns", "chat") == []
        kube.set_deletion_cost("ns", "chat-0", 5)
        assert (_count("GET") - gets, _count("PATCH") - patches) == (2, 1)
    finally:
        api.close()


def test_a_namespaces_autoscalers_are_listed_once_for_all_its_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    hpa = {"metadata": {"name": "chat-hpa"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "chat-h100x1"},
                                                     "maxReplicas": 3}}
    so = {"metadata": {"name": "code-so"}, "spec": {"scaleTargetRef": {"kind": "LLMDeployment", "name": "code"}}}
    api = _ApiServer({"horizontalpodautoscalers": [hpa], "scaledobjects": [so]})
    try:
        kube = api.kube()
        gets = _count("GET")
        assert kube.competing_autoscaler("ns", "chat", {"chat-h100x1"}) == "HorizontalPodAutoscaler chat-hpa"
        assert kube.competing_autoscaler("ns", "code", {"code-h100x1"}) == "KEDA ScaledObject code-so"
        assert kube.competing_autoscaler("ns", "other", {"other-h100x1"}) is None
        assert _count("GET") - gets == 2  # one HPA list and one ScaledObject list for the three
        assert kube.competing_autoscaler("ns2", "chat", {"chat-h100x1"}) == "HorizontalPodAutoscaler chat-hpa"
        assert _count("GET") - gets == 4  # another namespace lists its own
        later = time.monotonic() + kube_module.AUTOSCALERS_TTL_S + 1
        monkeypatch.setattr(kube_module.time, "monotonic", lambda: later)
        assert kube.competing_autoscaler("ns", "code", {"code-h100x1"}) == "KEDA ScaledObject code-so"
        assert _count("GET") - gets == 6  # listed again once the lists are older than the TTL
    finally:
        api.close()


def test_a_tick_between_decisions_reads_only_the_names_and_counts_of_its_own_deployments() -> None:
    def dep(name: str, owner: str | None, replicas: int, ready: int | None) -> dict[str, Any]:
        refs = [{"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment", "name": owner, "uid": "u", "controller": True}]
        return {"metadata": {"name": name, "ownerReferences": refs if owner else []},
                "spec": {"replicas": replicas}, "status": {"readyReplicas": ready} if ready is not None else {}}

    api = _ApiServer({"deployments": [dep("chat-h100x1", "chat", 3, 2), dep("chat-l4x1", "chat", 1, None),
                                      dep("chat-copy", None, 5, 5), dep("other-h100x1", "other", 2, 2)]})
    try:
        got = api.kube().deployment_counts("ns", "chat")
        assert [(c.name, c.replicas, c.ready) for c in got] == [("chat-h100x1", 3, 2), ("chat-l4x1", 1, 0)]
    finally:
        api.close()


def test_only_kopfs_per_tick_success_line_is_dropped_from_its_log() -> None:
    import logging

    from llmscale.controller.operator import _quiet_ticks

    def rec(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)

    assert not _quiet_ticks(rec(logging.INFO, "Timer 'autoscale' succeeded."))
    assert _quiet_ticks(rec(logging.INFO, "Handler 'reconcile' succeeded."))
    assert _quiet_ticks(rec(logging.ERROR, "Timer 'autoscale' failed with an exception. Will retry."))


def test_the_api_client_pools_a_connection_per_handler_thread() -> None:
    """The scale bed: 16 handler threads over the client's default pool of ten logged "Connection
    pool is full, discarding connection" and opened a new TLS connection on most calls."""
    from kubernetes import client

    from llmscale.controller.kube import Kube
    from llmscale.controller.operator import size_connection_pool

    before = client.Configuration.get_default_copy()
    try:
        before.connection_pool_maxsize = 10  # the client's default on a 2-CPU machine (five per CPU)
        client.Configuration.set_default(before)
        size_connection_pool(16)
        kube = Kube()
        assert kube.apps.api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] == 20
        size_connection_pool(2)  # never lowers a larger pool
        assert client.Configuration.get_default_copy().connection_pool_maxsize == 20
    finally:
        client.Configuration.set_default(before)


def test_kopfs_session_bounds_its_connections_and_carries_the_credentials() -> None:
    """kopf's own session sets no bound: at a thousand deployments its status patches held
    hundreds of TLS connections (256 KiB of buffer each)."""
    import asyncio

    import kopf

    from llmscale.controller.operator import kopf_session

    info = kopf.ConnectionInfo(server="https://127.0.0.1:6443", scheme="Bearer", token="t0ken", insecure=True,
                               default_namespace="ns")

    async def make() -> tuple[int, str, str, str | None]:
        got = kopf_session(info, 36)
        try:
            assert got.aiohttp_session.connector is not None
            return (got.aiohttp_session.connector.limit, got.server, got.aiohttp_session.headers["Authorization"],
                    got.default_namespace)
        finally:
            await got.aiohttp_session.close()

    assert asyncio.run(make()) == (36, "https://127.0.0.1:6443", "Bearer t0ken", "ns")


def test_malloc_arenas_are_limited_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from llmscale.controller.operator import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the environment's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
