"""A credential goes only to the endpoint it was configured for (issue 11), checked against real
HTTP servers on loopback that record what reaches them."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmscale.api import parse_spec
from llmscale.metrics.endpoints import (
    SECRET_TTL_S,
    Endpoint,
    EndpointError,
    Endpoints,
    EndpointsConfig,
    NamespaceCredentials,
    Target,
    load_config,
)
from llmscale.metrics.prometheus import PrometheusReader
from llmscale.policy.types import Signals
from llmscale.settings import OperatorSettings
from tests.conftest import spec_dict

EMPTY = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
SECRET_BODY = "internal-hostname-and-stack-trace-SECRET"


class Recorder:
    """A tiny HTTP server: answers like Prometheus (or fails, or redirects) and records every request."""

    def __init__(self, mode: str = "prom", location: str = ""):
        self.mode, self.location, self.body = mode, location, EMPTY
        self.requests: list[dict[str, str]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                rec.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                if rec.mode == "error":
                    body = SECRET_BODY.encode()
                    self.send_response(500)
                elif rec.mode == "redirect":
                    body = b""
                    self.send_response(302)
                    self.send_header("Location", rec.location + self.path)
                else:
                    body = rec.body
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def tokens(self) -> list[str | None]:
        return [r.get("authorization") for r in self.requests]


class HangingRecorder(Recorder):
    """A Recorder whose requests hang (until `release`, at most 30 s) while `hang` is set; `entered`
    says a request is hanging."""

    def __init__(self, mode: str = "prom") -> None:
        super().__init__(mode=mode)
        self.hang = False
        self.release, self.entered = threading.Event(), threading.Event()
        inner, rec = self.server.RequestHandlerClass, self

        class Handler(inner):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:  # noqa: N802
                if rec.hang:
                    rec.entered.set()
                    rec.release.wait(30)
                super().do_GET()

        self.server.RequestHandlerClass = Handler


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    good, evil = Recorder(), Recorder()
    yield good, evil
    good.close()
    evil.close()


def _clear_reads() -> None:
    """The operator's per-process read state (Runtime's class attributes), as at start."""
    from llmscale.controller.handlers import Runtime

    for d in (Runtime._specs, Runtime._signals, Runtime._read_at, Runtime._read_took, Runtime._source, Runtime._read_for,
              Runtime._sick):
        d.clear()


def _token(tmp_path: Path, value: str = "s3cret-token") -> str:
    p = tmp_path / "token"
    p.write_text(value + "\n")
    return str(p)


def _read(endpoints: Endpoints, **metrics: Any) -> Any:
    spec = parse_spec(spec_dict(metrics=metrics))
    key = ("team-a", "chat")
    return PrometheusReader(endpoints).read({key: spec}, 1000.0)[key]


def test_a_cr_pointing_at_its_own_server_gets_no_credential(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, evil = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url, bearer_token_file=_token(tmp_path)))
    s = _read(eps, prometheusURL=evil.url)
    assert evil.requests == []  # never contacted at all
    assert s.unavailable and "allow-list" in s.unavailable
    s = _read(eps)  # the configured endpoint gets its token
    assert good.tokens and all(t == "Bearer s3cret-token" for t in good.tokens)
    assert s.unavailable is None


def test_an_allowed_url_is_read_without_the_credential(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, evil = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url, bearer_token_file=_token(tmp_path)),
                          EndpointsConfig(allowed_urls=[evil.url + "/"]))
    s = _read(eps, prometheusURL=evil.url)
    assert s.unavailable is None
    assert evil.requests and all(t is None for t in evil.tokens)
    assert good.requests == []


def test_the_allow_list_compares_scheme_host_and_port_exactly(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, evil = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url, bearer_token_file=_token(tmp_path)))
    port = good.url.rsplit(":", 1)[1]
    for near in (f"https://127.0.0.1:{port}", f"http://localhost:{port}", evil.url, good.url + "/other"):
        assert isinstance(eps.resolve(None, near), str), near


def test_urls_that_parsers_read_differently_are_refused(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    """A backslash or userinfo can make the allow-list see one host and the HTTP client another."""
    good, evil = servers
    allowed = "http://thanos.monitoring.svc:10902"
    eps = Endpoints.build(Endpoint(name="default", url=good.url, bearer_token_file=_token(tmp_path)),
                          EndpointsConfig(allowed_urls=[allowed]))
    evil_hostport = evil.url.removeprefix("http://")
    for trick in (f"http://{evil_hostport}\\@thanos.monitoring.svc:10902", f"http://{evil_hostport}@thanos.monitoring.svc:10902",
                  f"{allowed}#@{evil_hostport}", f"{allowed}?x=@{evil_hostport}", f"http://user:pw@{good.url.removeprefix('http://')}"):
        assert isinstance(eps.resolve(None, trick), str), trick
        try:
            s = _read(eps, prometheusURL=trick)
        except ValidationError:
            continue  # refused by the schema already (kubectl apply says so)
        assert s.unavailable is not None
    assert evil.requests == [] and good.requests == []  # the reader sent nothing anywhere
    # What is allowed is requested as the platform team wrote it, not as the CR spelt it.
    target = eps.resolve(None, "HTTP://Thanos.Monitoring.SVC:10902/")
    assert not isinstance(target, str) and target.url == allowed and target.endpoint is None


def test_an_endpoint_serves_only_its_namespaces(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, _ = servers
    eps = Endpoints.build(None, EndpointsConfig(endpoints=[Endpoint(name="team-a", url=good.url, namespaces=["team-a"],
                                                                    bearer_token_file=_token(tmp_path))]))
    assert not isinstance(eps.resolve("team-a", None, "team-a"), str)
    assert isinstance(eps.resolve("team-a", None, "team-b"), str)
    assert isinstance(eps.resolve(None, good.url, "team-b"), str)  # its URL is no back door either


def test_a_named_endpoint_is_selected_and_an_unknown_name_refused(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, evil = servers
    eps = Endpoints.build(None, EndpointsConfig(endpoints=[Endpoint(name="team-a", url=good.url, bearer_token_file=_token(tmp_path))]))
    assert _read(eps, prometheus="team-a").unavailable is None and good.tokens[0] == "Bearer s3cret-token"
    s = _read(eps, prometheus="team-b")
    assert s.unavailable and "team-b" in s.unavailable and evil.requests == []


def test_a_redirect_is_not_followed(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, evil = servers
    good.mode, good.location = "redirect", evil.url
    eps = Endpoints.build(Endpoint(name="default", url=good.url, bearer_token_file=_token(tmp_path)))
    s = _read(eps)
    assert evil.requests == []
    assert s.unavailable == "Prometheus 'default' could not be read (redirected (redirects are not followed))"


def test_remote_error_text_never_reaches_the_status(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, _ = servers
    good.mode = "error"
    eps = Endpoints.build(Endpoint(name="default", url=good.url))
    s = _read(eps)
    assert s.unavailable == "Prometheus 'default' could not be read (HTTP 500)"
    assert SECRET_BODY not in repr(s)


def test_a_rotated_token_is_used_without_a_restart(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    good, _ = servers
    path = _token(tmp_path, "first")
    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url, bearer_token_file=path)))
    spec = parse_spec(spec_dict())
    reader.read({("a", "b"): spec}, 1.0)
    Path(path).write_text("second-and-longer\n")
    reader.read({("a", "b"): spec}, 2.0)
    assert good.tokens[0] == "Bearer first" and good.tokens[-1] == "Bearer second-and-longer"


def test_per_cr_promql_runs_only_where_the_platform_allows_it(servers: tuple[Recorder, Recorder]) -> None:
    good, _ = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url))
    s = _read(eps, queries={"requestRate": 'sum(rate(vllm:request_success_total{namespace="team-b"}[1m]))'})
    assert "team-b" not in json.dumps(good.requests)  # the other tenant's query never ran
    assert "allowQueryOverrides" in s.unknown["requestRate"]
    allowed = Endpoints.build(Endpoint(name="default", url=good.url), EndpointsConfig(allow_query_overrides=True))
    _read(allowed, queries={"requestRate": 'sum(rate(vllm:request_success_total{namespace="team-b"}[1m]))'})
    assert "team-b" in json.dumps(good.requests)


def test_a_demand_query_runs_only_where_the_platform_allows_it(servers: tuple[Recorder, Recorder]) -> None:
    good, _ = servers
    spec = parse_spec(spec_dict(replicas={"min": 0, "max": 2}, scaling={"scaleToZero": {
        "enabled": True, "demand": {"query": 'sum(interceptor_request_concurrency{route_namespace="team-b"})'}}}))
    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
    s = reader.read({("team-a", "chat"): spec}, 1.0)[("team-a", "chat")]
    assert "team-b" not in json.dumps(good.requests) and "allowQueryOverrides" in s.unknown["gatewayDemand"]


def test_an_answer_that_is_not_prometheus_fails_only_its_endpoint(servers: tuple[Recorder, Recorder]) -> None:
    good, evil = servers
    evil.body = b'{"data": {}}'
    eps = Endpoints.build(Endpoint(name="default", url=good.url),
                          EndpointsConfig(endpoints=[Endpoint(name="odd", url=evil.url)]))
    spec_odd = parse_spec(spec_dict(metrics={"prometheus": "odd"}))
    out = PrometheusReader(eps).read({("a", "odd"): spec_odd, ("b", "fine"): parse_spec(spec_dict())}, 1.0)
    assert out[("a", "odd")].unavailable == "Prometheus 'odd' gave an answer that is not a Prometheus query result (KeyError)"
    assert out[("b", "fine")].unavailable is None


def test_an_endpoints_file_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "endpoints.yaml"
    bad.write_text("endpoints:\n- {name: a, url: ftp://x}\n")
    with pytest.raises(EndpointError, match=r"endpoints\.0\.url"):
        load_config(str(bad))
    bad.write_text("endpoints:\n- {name: a, url: 'http://user:pw@x:9090'}\n")
    with pytest.raises(EndpointError, match="carries a user"):
        load_config(str(bad))
    with pytest.raises(EndpointError, match="configured twice"):
        Endpoints.build(Endpoint(name="default", url="http://a"), EndpointsConfig(endpoints=[Endpoint(name="default", url="http://b")]))


@pytest.mark.parametrize("le", ["fast", "NaN", "-1", "-Inf"])
def test_a_malformed_series_holds_only_its_own_deployment(servers: tuple[Recorder, Recorder], le: str) -> None:
    """A non-numeric `le` in one deployment's TTFT buckets: that deployment holds, its neighbour is read.
    (Review, session 26: "NaN" passed float() and came out as a NaN quantile, 'SLO met' and a status
    patch that is not JSON.)"""
    good, _ = servers
    bad = {"metric": {"namespace": "a", "llmd": "bad", "le": le}, "value": [1.0, "3"]}
    inf = {"metric": {"namespace": "a", "llmd": "bad", "le": "+Inf"}, "value": [1.0, "3"]}
    rate = {"metric": {"namespace": "a", "llmd": "fine"}, "value": [1.0, "2.5"]}
    good.body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [bad, inf, rate]}}).encode()
    out = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url))).read(
        {("a", "bad"): parse_spec(spec_dict()), ("a", "fine"): parse_spec(spec_dict())}, 1.0)
    assert out[("a", "bad")].unavailable == "Prometheus 'default' returned a malformed series for this deployment (ValueError)"
    assert out[("a", "fine")].unavailable is None and out[("a", "fine")].request_rate == 2.5


@pytest.mark.parametrize("odd", [
    {"metric": "not a label set", "value": [1.0, "3"]},
    {"metric": {"namespace": ["a"], "llmd": "bad"}, "value": [1.0, "3"]},
    {"metric": {"namespace": "a", "llmd": {"x": 1}}, "value": [1.0, "3"]},
    "not a series",
])
def test_a_series_of_another_shape_is_nobody_s_and_fails_no_read(servers: tuple[Recorder, Recorder], odd: Any) -> None:
    """Review: a series whose labels are not strings (or that is not a series) failed the batched
    read for every deployment on the endpoint; it is skipped, and a value too large for a float is
    its own deployment's unknown signal."""
    good, _ = servers
    huge = '{"metric": {"namespace": "a", "llmd": "huge"}, "value": [1.0, ' + "9" * 400 + "]}"
    rate = {"metric": {"namespace": "a", "llmd": "fine"}, "value": [1.0, "2.5"]}
    pool = {"metric": {"namespace": ["a"], "inference_pool": "p"}, "value": [1.0, "1"]}
    result = "[" + ", ".join([json.dumps(odd), huge, json.dumps(rate), json.dumps(pool)]) + "]"
    good.body = ('{"status": "success", "data": {"resultType": "vector", "result": ' + result + "}}").encode()
    zero = parse_spec(spec_dict(scaling={"scaleToZero": {"enabled": True, "demand": {"inferencePool": "p"}}}))
    out = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url))).read(
        {("a", "huge"): parse_spec(spec_dict()), ("a", "fine"): parse_spec(spec_dict()), ("a", "zero"): zero}, 1.0)
    assert out[("a", "fine")].unavailable is None and out[("a", "fine")].request_rate == 2.5
    assert out[("a", "huge")].unavailable is None and out[("a", "huge")].request_rate is None
    assert out[("a", "huge")].unknown["requestRate"] == "ignored: malformed sample"
    assert out[("a", "zero")].unavailable is None


def test_a_deployment_answered_from_an_earlier_read_is_dated_by_that_read(servers: tuple[Recorder, Recorder]) -> None:
    """Review: a deployment joining a fresh batch was answered from the cached answer but dated by
    the join, so its reuse window and the read-age histogram started late."""
    from llmscale.controller.handlers import Runtime

    good, _ = servers
    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
    spec = parse_spec(spec_dict())
    first = reader.read({("a", "one"): spec}, 100.0)
    joined = reader.read({("a", "two"): spec}, 105.0, reuse_s=10.0)
    assert first[("a", "one")].read_at == 100.0 and joined[("a", "two")].read_at == 100.0
    assert joined[("a", "two")].sampled_at == 100.0  # no freshness series: the read's time, not the join's
    try:
        Runtime.reader = reader
        _clear_reads()
        Runtime.signals(("a", "one"), spec, 60.0)
        at = Runtime._signals[("a", "one")].read_at
        assert at is not None
        time.sleep(0.05)
        Runtime.signals(("a", "two"), spec, 60.0)  # a joiner: answered from that read, no query
        assert Runtime._signals[("a", "two")].read_at == at
        # Its spec changed since (another TTFT target): answered again, for the new spec, from the
        # same read (no query), not with the signals built for the old one.
        before, asked = Runtime._signals[("a", "two")], len(good.requests)
        retargeted = parse_spec(spec_dict(slo={**spec_dict()["slo"], "ttft": {"target": "2s", "percentile": 99}}))
        again = Runtime.signals(("a", "two"), retargeted, 60.0)
        assert again is not None and again is not before and again.read_at == at and len(good.requests) == asked
        assert Runtime._read_for[("a", "two")] == retargeted
    finally:
        Runtime.reader = None
        _clear_reads()


def test_a_hanging_prometheus_holds_up_only_its_own_deployments(tmp_path: Path) -> None:
    """Issue 11: reads ran under one process-wide lock, so one slow Prometheus stalled every
    deployment's timer. Now each endpoint has its own batch and lock: while `slow` hangs in a read,
    a deployment on `fast` is answered."""
    from llmscale.controller.handlers import Runtime

    release = threading.Event()
    entered = threading.Event()

    class Hanging(Recorder):
        def __init__(self) -> None:
            super().__init__()
            inner = self.server.RequestHandlerClass

            class Handler(inner):  # type: ignore[misc, valid-type]
                def do_GET(self) -> None:  # noqa: N802
                    entered.set()
                    release.wait(30)
                    super().do_GET()

            self.server.RequestHandlerClass = Handler

    slow, fast = Hanging(), Recorder()
    try:
        eps = Endpoints.build(Endpoint(name="default", url=slow.url),
                              EndpointsConfig(endpoints=[Endpoint(name="fast", url=fast.url)]))
        Runtime.reader = PrometheusReader(eps)
        _clear_reads()
        a, b = ("team-a", "slow-chat"), ("team-b", "fast-chat")
        spec_a = parse_spec(spec_dict())
        spec_b = parse_spec(spec_dict(metrics={"prometheus": "fast"}))
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(a=Runtime.signals(a, spec_a, 0.0)), daemon=True)
        t.start()
        assert entered.wait(10), "the slow endpoint was never asked"
        got = Runtime.signals(b, spec_b, 0.0)  # answered while the slow read is still in flight
        assert got.unavailable is None and fast.requests
        assert not release.is_set() and t.is_alive()
        assert all(r["path"].startswith("/api/v1/query") for r in fast.requests)
        release.set()
        t.join(30)
        assert "a" in result
    finally:
        release.set()
        Runtime.reader = None
        slow.close()
        fast.close()


def test_while_a_failing_endpoint_is_read_again_its_other_deployments_do_not_wait() -> None:
    """Each deployment waiting for a hanging read held one of kopf's handler threads; enough of
    them held all and stalled every endpoint. Once an endpoint's read has failed, the others on it
    get the failure at once while the next read is in flight; on an endpoint whose last read
    worked they still wait for the read in flight (and get its answer)."""
    from llmscale.controller.handlers import Runtime


    def fresh_runtime(url: str) -> None:
        Runtime.reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=url)))
        _clear_reads()

    server = HangingRecorder(mode="error")
    release, entered = server.release, server.entered
    spec = parse_spec(spec_dict())
    a, b, new = ("team-a", "one"), ("team-a", "two"), ("team-a", "three")
    try:
        for first_read_fails in (True, False):
            entered.clear()
            release.clear()
            fresh_runtime(server.url)
            server.mode, server.hang = ("error" if first_read_fails else "prom"), False
            first = Runtime.signals(a, spec, 0.0)
            first_b = Runtime.signals(b, spec, 0.0)
            assert (first.unavailable is not None) == (first_b.unavailable is not None) == first_read_fails
            assert bool(Runtime._sick) == first_read_fails
            server.mode, server.hang = "prom", True
            Runtime._read_at.clear()  # the first read is old now: the next one reads again
            result: dict[str, Any] = {}
            def ask(key: tuple[str, str], name: str, into: dict[str, Any] = result) -> None:
                into[name] = Runtime.signals(key, spec, 0.0)

            t = threading.Thread(target=ask, args=(a, "a"), daemon=True)
            t.start()
            assert entered.wait(10), "the second read never reached the server"
            waiter = threading.Thread(target=ask, args=(b, "b"), daemon=True)
            waiter.start()
            waiter.join(2)
            if first_read_fails:
                assert not waiter.is_alive(), "a deployment waited for the failing endpoint's read"
                assert result["b"] == first_b  # its own last failure, as that read said it
                # One the endpoint never answered for: the failure in general words.
                assert Runtime.signals(new, spec, 0.0).unavailable == (
                    "Prometheus could not be read: its last read failed and the next one is in flight")
                assert t.is_alive()  # the read itself is still in flight
            else:
                assert waiter.is_alive() and "b" not in result  # a healthy endpoint's read is waited for
            release.set()
            t.join(30)
            waiter.join(30)
            assert result["a"].unavailable is None  # the read in flight answered
            if not first_read_fails:
                assert result["b"].unavailable is None  # and its waiter got that answer
            assert Runtime._sick == set()  # the read that worked cleared it
    finally:
        release.set()
        Runtime.reader = None
        server.close()


# ---- a namespace's own credential (namespaceSecret endpoints) -----------------------------------

def namespace_of(request: dict[str, str]) -> str | None:
    """The `namespace` query parameter a recorded request carried (what a tenancy proxy reads)."""
    from urllib.parse import parse_qs, urlsplit

    return (parse_qs(urlsplit(request["path"]).query).get("namespace") or [None])[0]


def test_each_namespace_is_read_with_its_own_secret_and_no_other(servers: tuple[Recorder, Recorder]) -> None:
    good, evil = servers
    eps = Endpoints.build(None, EndpointsConfig(endpoints=[Endpoint(name="tenant", url=good.url, namespace_secret="prom-cred")],
                                                allowed_urls=[evil.url]))
    secrets = {("team-a", "prom-cred"): {"token": "tok-a\n"}, ("team-b", "prom-cred"): {"username": "bob", "password": "pw"},
               ("team-c", "other"): {"token": "not-for-prometheus"}}
    asked: list[tuple[str, str]] = []

    def source(ns: str, name: str) -> dict[str, str] | None:
        asked.append((ns, name))
        return secrets.get((ns, name))

    spec = parse_spec(spec_dict(metrics={"prometheus": "tenant"}))
    evil_spec = parse_spec(spec_dict(metrics={"prometheusURL": evil.url}))
    got = PrometheusReader(eps, source).read({("team-a", "chat"): spec, ("team-b", "chat"): spec, ("team-c", "chat"): spec,
                                              ("team-a", "leak"): evil_spec}, 1000.0)
    assert got[("team-a", "chat")].unavailable is None and got[("team-b", "chat")].unavailable is None
    by_ns: dict[str | None, set[str | None]] = {}
    for r in good.requests:
        by_ns.setdefault(namespace_of(r), set()).add(r.get("authorization"))
    assert by_ns == {"team-a": {"Bearer tok-a"}, "team-b": {"Basic Ym9iOnB3"}}  # base64("bob:pw")
    # team-c has no Secret of that name: nothing is sent for it, and it says why in our words.
    assert got[("team-c", "chat")].unavailable == ("Prometheus 'tenant' is read with the Secret 'prom-cred' of this "
                                                   "namespace, which does not exist")
    # An allowed URL a CR names is read without any credential, its namespace's included.
    assert evil.requests and all(t is None for t in evil.tokens)
    assert set(asked) == {("team-a", "prom-cred"), ("team-b", "prom-cred"), ("team-c", "prom-cred")}


def test_a_secret_without_a_credential_key_is_reported_and_nothing_sent(servers: tuple[Recorder, Recorder]) -> None:
    good, _ = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url, namespace_secret="prom-cred"))
    reader = PrometheusReader(eps, lambda ns, name: {"username": "only-a-user"})
    s = reader.read({("team-a", "chat"): parse_spec(spec_dict())}, 1000.0)[("team-a", "chat")]
    assert s.unavailable == ("Prometheus 'default' is read with the Secret 'prom-cred' of this namespace, which has "
                             "neither a 'token' key nor 'username' and 'password' keys")
    assert good.requests == []


def test_a_namespace_secret_is_read_again_after_a_minute() -> None:
    now = [0.0]
    value = ["first"]
    calls: list[str] = []

    def source(ns: str, name: str) -> dict[str, str]:
        calls.append(ns)
        return {"token": value[0]}

    creds = NamespaceCredentials(source, clock=lambda: now[0])
    target = Target("http://p", Endpoint(name="t", url="http://p", namespace_secret="s"), "Prometheus 't'", "team-a")
    assert creds.get(target).token == "first"
    value[0] = "rotated"
    now[0] = SECRET_TTL_S - 1
    assert creds.get(target).token == "first" and calls == ["team-a"]  # cached within the minute
    now[0] = SECRET_TTL_S + 1
    assert creds.get(target).token == "rotated"


def test_without_an_api_to_read_secrets_a_namespace_endpoint_says_so(servers: tuple[Recorder, Recorder]) -> None:
    good, _ = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url, namespace_secret="prom-cred"))
    s = PrometheusReader(eps).read({("team-a", "chat"): parse_spec(spec_dict())}, 1000.0)[("team-a", "chat")]
    assert s.unavailable and "no Kubernetes API" in s.unavailable and good.requests == []


def test_an_endpoint_takes_one_kind_of_credential(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="namespaceSecret or from files"):
        Endpoint(name="t", url="http://p", namespace_secret="s", bearer_token_file=_token(tmp_path))
    with pytest.raises(ValidationError):
        Endpoint(name="t", url="http://p", namespace_secret="Not_A_Name")
    f = tmp_path / "endpoints.yaml"
    f.write_text("endpoints: [{name: t, url: 'http://p', namespaceSecret: s, bearerTokenFile: /x}]\n")
    with pytest.raises(EndpointError) as e:
        load_config(str(f))
    assert "\n" not in str(e.value) and "namespaceSecret" in str(e.value)


def test_an_endpoint_for_some_namespaces_with_their_own_secrets_is_read(servers: tuple[Recorder, Recorder]) -> None:
    """Issue 11 review: an endpoint with `namespaces:` could not be read at all (its target, used as
    a batch key, hashed a list). Limited to team-a and read with team-a's own Secret; a CR of
    team-a naming its URL (not its name) gets the same, team-b gets nothing."""
    good, _ = servers
    ep = Endpoint.model_validate({"name": "tenant", "url": good.url, "namespaces": ["team-a"], "namespaceSecret": "prom-cred"})
    reader = PrometheusReader(Endpoints.build(None, EndpointsConfig(endpoints=[ep])),
                              lambda ns, name: {"token": f"tok-{ns}"})
    by_name, by_url = parse_spec(spec_dict(metrics={"prometheus": "tenant"})), parse_spec(spec_dict(metrics={"prometheusURL": good.url}))
    got = reader.read({("team-a", "chat"): by_name, ("team-a", "code"): by_url, ("team-b", "chat"): by_name}, 1000.0)
    assert got[("team-a", "chat")].unavailable is None and got[("team-a", "code")].unavailable is None
    assert got[("team-b", "chat")].unavailable and "not an endpoint configured for this namespace" in got[("team-b", "chat")].unavailable
    assert {r.get("authorization") for r in good.requests} == {"Bearer tok-team-a"}
    assert {namespace_of(r) for r in good.requests} == {"team-a"}


def test_an_answer_about_another_batchs_pods_steers_nothing(servers: tuple[Recorder, Recorder]) -> None:
    """Issue 11 review: the pods' load (which pods a scale-down removes first) was taken for every
    deployment an answer named, so one endpoint's answer could mark another namespace's pods."""
    good, _ = servers
    mine = {"metric": {"namespace": "team-a", "llmd": "chat", "pod": "chat-a-1"}, "value": [1.0, "3"]}
    theirs = {"metric": {"namespace": "team-b", "llmd": "chat", "pod": "chat-b-1"}, "value": [1.0, "999"]}
    good.body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [mine, theirs]}}).encode()
    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
    reader.read({("team-a", "chat"): parse_spec(spec_dict())}, 1.0)
    assert reader.pod_load == {("team-a", "chat"): {"chat-a-1": 3.0}}


def test_a_secret_whose_credential_cannot_be_sent_is_reported_and_nothing_sent(servers: tuple[Recorder, Recorder]) -> None:
    good, _ = servers
    eps = Endpoints.build(Endpoint(name="default", url=good.url, namespace_secret="prom-cred"))
    for data, why in (({"token": "two\nlines"}, "whose token is not printable ASCII without whitespace"),
                      ({"token": "a b"}, "whose token is not printable ASCII without whitespace"),
                      ({"token": "caf\u00e9"}, "whose token is not printable ASCII without whitespace"),
                      ({"username": "a:b", "password": "pw"}, "whose username contains ':'"),
                      ({"username": "bob", "password": "caf\u00e9"}, "whose username or password is not printable ASCII")):
        s = PrometheusReader(eps, lambda ns, name, d=data: d).read({("team-a", "chat"): parse_spec(spec_dict())}, 1.0)
        assert s[("team-a", "chat")].unavailable == f"Prometheus 'default' is read with the Secret 'prom-cred' of this namespace, {why}", data
    assert good.requests == []
    # A password with a space is fine for basic auth (it is base64-encoded), and so is a token
    # beside a stray field.
    for data in ({"username": "bob", "password": "a b:c"}, {"token": "tok", "password": "a\nb"}):
        s = PrometheusReader(eps, lambda ns, name, d=data: d).read({("team-a", "chat"): parse_spec(spec_dict())}, 1.0)
        assert s[("team-a", "chat")].unavailable is None, data
    from llmscale.metrics.endpoints import Credential

    assert "s3cret" not in repr(Credential(token="s3cret")) + repr(Credential(username="u", password="s3cret"))


def test_a_deployment_missing_from_a_fresh_read_is_answered_from_it_without_a_query(servers: tuple[Recorder, Recorder]) -> None:
    """At a thousand deployments each one joining re-read the whole batch (the take-over took
    minutes): a fresh read's answers hold every deployment of the endpoint, so one it did not
    include is answered from them; an old read, or another namespace's credential, asks again."""
    good, _ = servers
    chat = {"metric": {"namespace": "team-a", "llmd": "chat", "pod": "chat-1"}, "value": [1.0, "3"]}
    code = {"metric": {"namespace": "team-a", "llmd": "code", "pod": "code-1"}, "value": [1.0, "5"]}
    good.body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [chat, code]}}).encode()
    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
    spec = parse_spec(spec_dict())
    reader.read({("team-a", "chat"): spec}, 1.0)
    asked = len(good.requests)
    assert asked > 0
    got = reader.read({("team-a", "code"): spec}, 3.0, reuse_s=4.5)
    assert len(good.requests) == asked  # nothing asked for "code": the read at 1.0 answered it
    assert got[("team-a", "code")].unavailable is None
    assert reader.pod_load == {("team-a", "chat"): {"chat-1": 3.0}, ("team-a", "code"): {"code-1": 5.0}}
    reader.read({("team-a", "code"): spec}, 6.0, reuse_s=4.5)
    assert len(good.requests) == 2 * asked  # 5 s old: asked again

    # A namespace's own credential: team-b's deployment is never answered from team-a's read.
    eps = Endpoints.build(Endpoint(name="default", url=good.url, namespace_secret="prom-cred"))
    tenant = PrometheusReader(eps, lambda ns, name: {"token": f"tok-{ns}"})
    tenant.read({("team-a", "chat"): spec}, 1.0)
    before = len(good.requests)
    tenant.read({("team-b", "chat"): spec}, 2.0, reuse_s=4.5)
    assert len(good.requests) > before
    assert {r.get("authorization") for r in good.requests[before:]} == {"Bearer tok-team-b"}


def test_deployments_joining_a_fresh_read_add_no_queries(servers: tuple[Recorder, Recorder]) -> None:
    """The operator's side of the above: while its endpoint's read is fresh, a deployment taken over
    (not in that read) sends nothing; once the read is older than max_age_s, one read for all."""
    from llmscale.controller.handlers import Runtime

    good, _ = servers
    try:
        Runtime.reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
        _clear_reads()
        spec = parse_spec(spec_dict())
        assert Runtime.signals(("team-a", "d1"), spec, 60.0).unavailable is None
        one_read = len(good.requests)
        for name in ("d2", "d3", "d4"):
            assert Runtime.signals(("team-a", name), spec, 60.0).unavailable is None
        assert len(good.requests) == one_read
        endpoint = Runtime.endpoint_of(("team-a", "d1"), spec)
        # A read that took long (100 s here) is read again only once older than ten times that,
        # capped at 0.9 interval (13.5 s): not now, though max_age_s says 0.
        Runtime._read_took[endpoint] = 100.0
        Runtime.signals(("team-a", "d1"), spec, 0.0)
        assert len(good.requests) == one_read
        Runtime._read_took[endpoint] = 0.0
        Runtime.signals(("team-a", "d5"), spec, 0.0)  # a quick read: now too old, everyone's again
        assert len(good.requests) == 2 * one_read
        assert set(Runtime._signals) == {("team-a", f"d{i}") for i in range(1, 6)}
    finally:
        Runtime.reader = None
        _clear_reads()


def test_only_the_latency_histograms_some_deployment_has_a_target_on_are_asked(servers: tuple[Recorder, Recorder]) -> None:
    """Each histogram is ~25 series per deployment, most of the answer: a batch without an e2e
    target asks no e2e histogram, and a deployment with one joining a fresh read is not answered
    from a read that lacks it."""
    import urllib.parse

    good, _ = servers

    def asked(since: int) -> set[str]:
        out = set()
        for r in good.requests[since:]:
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(r["path"]).query).get("query", [""])[0]
            out |= {h for h in ("time_to_first_token", "inter_token_latency", "e2e_request_latency") if f"vllm:{h}_seconds_bucket" in q}
        return out

    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
    ttft_only = parse_spec(spec_dict(slo={"ttft": {"target": "500ms", "percentile": 95}}))
    reader.read({("team-a", "chat"): ttft_only}, 1.0)
    assert asked(0) == {"time_to_first_token"}
    n = len(good.requests)
    with_e2e = parse_spec(spec_dict(slo={"ttft": {"target": "500ms", "percentile": 95}, "e2eLatency": {"target": "20s"}}))
    reader.read({("team-a", "batch"): with_e2e}, 2.0, reuse_s=4.5)
    assert asked(n) == {"time_to_first_token", "e2e_request_latency"}  # read, not answered from the TTFT-only read
    n = len(good.requests)
    reader.read({("team-a", "chat"): ttft_only}, 3.0, reuse_s=4.5)
    assert len(good.requests) == n  # the read at 2.0 asked more than this one needs: it answers


def test_joiners_with_different_targets_widen_the_groups_answer_and_do_not_read_again_and_again(
        servers: tuple[Recorder, Recorder]) -> None:
    """Review: a joiner's read asked only its own histograms and replaced the group's answer, so
    joiners with other targets re-read the batch in turn. The answer now only widens."""
    good, _ = servers
    reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=good.url)))
    itl = parse_spec(spec_dict())
    e2e = parse_spec(spec_dict(slo={"ttft": {"target": "500ms", "percentile": 95}, "e2eLatency": {"target": "20s"}}))
    reader.read({("team-a", "a0"): itl}, 1.0)
    reader.read({("team-a", "b0"): e2e}, 1.5, reuse_s=4.5)  # asks what b0 needs beside the group's answer
    n = len(good.requests)
    for i in range(1, 7):
        reader.read({("team-a", f"x{i}"): itl if i % 2 else e2e}, 1.5 + i / 2, reuse_s=4.5)
    assert len(good.requests) == n
    # A clock that steps back makes no answer fresh.
    reader.read({("team-a", "late"): itl}, 0.5, reuse_s=4.5)
    assert len(good.requests) > n


@pytest.mark.parametrize(("endpoint", "refused"), [
    ({"name": "default", "url": "http://prom:9090", "bearer_token_file": "TOKEN"}, "'default' would send its credential "
     "over plain http:// to prom; use https://, or set allowPlainHTTP on it where the network path is trusted"),
    ({"name": "tenants", "url": "http://proxy:8080", "namespace_secret": "prom-token"}, "'tenants' would send"),
    ({"name": "basic", "url": "http://10.0.0.7:9090",
      "basic_auth": {"username_file": "TOKEN", "password_file": "TOKEN"}}, "'basic' would send"),
    ({"name": "open", "url": "http://prom-open:9090"}, None),  # no credential to leak
    ({"name": "tls", "url": "https://prom-tls:9090", "bearer_token_file": "TOKEN"}, None),
    ({"name": "sidecar", "url": "http://127.0.0.1:9091", "bearer_token_file": "TOKEN"}, None),  # the operator's own host
    ({"name": "sidecar6", "url": "http://[::1]:9091", "bearer_token_file": "TOKEN"}, None),
    ({"name": "local", "url": "http://localhost:9091", "bearer_token_file": "TOKEN"}, None),
])
def test_a_credential_goes_over_plain_http_only_to_the_operators_own_host(
        endpoint: dict[str, Any], refused: str | None, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """TLS by default: an endpoint that would send its credential over http:// off the operator's
    host is refused at start with one line (it was only warned about), whether it is the default
    endpoint or one in the endpoints file; one without a credential, on https://, or on loopback (a
    sidecar proxy) starts."""
    token = tmp_path / "token"
    token.write_text("t0ken")
    raw = json.loads(json.dumps(endpoint).replace('"TOKEN"', json.dumps(str(token))))
    ep = Endpoint(**raw)
    with caplog.at_level(logging.WARNING, logger="llmscale.metrics"):
        for build in (lambda: Endpoints.build(ep), lambda: Endpoints.build(None, EndpointsConfig(endpoints=[ep]))):
            if refused:
                with pytest.raises(EndpointError, match=re.escape(refused)):
                    build()
            else:
                assert ep.name in build().by_name
    assert "t0ken" not in caplog.text and "plain http://" not in caplog.text


def test_a_credential_sent_without_checking_the_certificate_is_said_at_start(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken")
    with caplog.at_level(logging.WARNING, logger="llmscale.metrics"):
        Endpoints.build(Endpoint(name="default", url="https://prom:9090", bearer_token_file=str(token),
                                 insecure_skip_verify=True),
                        EndpointsConfig(endpoints=[Endpoint(name="open", url="https://prom-open:9090", insecure_skip_verify=True)]))
    assert [r.getMessage() for r in caplog.records] == [
        "Prometheus endpoint 'default' sends its credential without checking the server's certificate "
        "(insecureSkipVerify): whoever can intercept the connection can take it"]
    assert "t0ken" not in caplog.text


def test_a_trusted_plain_http_path_is_allowed_and_said_at_start(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """allowPlainHTTP (the chart's prometheus.allowPlainHTTP, or the key on an endpoint of the file)
    lets the credential go over http:// where the platform team trusts the path, and says so once."""
    token = tmp_path / "token"
    token.write_text("t0ken")
    file = tmp_path / "endpoints.yaml"  # as the chart renders it
    file.write_text(f"endpoints:\n- {{name: mesh, url: 'http://prom.monitoring.svc:9090', bearerTokenFile: '{token}', "
                    f"allowPlainHTTP: true}}\n")
    settings = OperatorSettings(prometheus_url="http://prom:9090", prometheus_bearer_token_file=str(token),
                                prometheus_allow_plain_http=True, prometheus_endpoints_file=str(file))
    with caplog.at_level(logging.WARNING, logger="llmscale.metrics"):
        eps = settings.endpoints()
    assert set(eps.by_name) == {"default", "mesh"}
    assert [r.getMessage() for r in caplog.records if "plain http://" in r.getMessage()] == [
        "Prometheus endpoint 'default' sends its credential over plain http:// (allowPlainHTTP)",
        "Prometheus endpoint 'mesh' sends its credential over plain http:// (allowPlainHTTP)"]
    with pytest.raises(EndpointError, match="'default' would send its credential"):
        OperatorSettings(prometheus_url="http://prom:9090", prometheus_bearer_token_file=str(token)).endpoints()


def test_a_slow_healthy_endpoint_holds_a_waiter_only_for_its_wait_bound() -> None:
    """An endpoint whose last read worked but whose next one is slow (within its timeout) held
    every deployment on it that came to decide, one handler thread each, for the whole read: with
    as many deployments as threads, every other endpoint stalled. A waiter now waits at most
    wait_s and is told to decide at its next tick (None), without a read of its own."""
    from llmscale.controller import opmetrics
    from llmscale.controller.handlers import Runtime

    server = HangingRecorder()
    release, entered = server.release, server.entered
    try:
        Runtime.reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=server.url, timeout_seconds=30)))
        _clear_reads()
        spec = parse_spec(spec_dict())
        a, b = ("team-a", "one"), ("team-a", "two")
        assert Runtime.signals(a, spec, 0.0) is not None and not Runtime._sick  # a healthy first read
        server.hang = True
        Runtime._read_at.clear()
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(a=Runtime.signals(a, spec, 0.0)), daemon=True)
        t.start()
        assert entered.wait(10), "the second read never reached the server"
        asked = len(server.requests)
        abandoned = opmetrics.READ_WAITS_ABANDONED._value.get()
        started = time.monotonic()
        assert Runtime.signals(b, spec, 0.0, wait_s=0.3) is None  # put off, not answered "unknown"
        waited = time.monotonic() - started
        assert 0.25 <= waited < 5, waited
        assert opmetrics.READ_WAITS_ABANDONED._value.get() == abandoned + 1
        assert len(server.requests) == asked and t.is_alive()  # no read of its own; the slow one goes on
        # No more than max_waiters threads wait on one endpoint: the next is put off at once.
        Runtime.max_waiters = 1
        waiter = threading.Thread(target=lambda: result.update(w=Runtime.signals(b, spec, 0.0, wait_s=5.0)), daemon=True)
        waiter.start()
        deadline = time.monotonic() + 5
        while Runtime._waiting.get(Runtime.endpoint_of(b, spec), 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert Runtime.signals(("team-a", "three"), spec, 0.0, wait_s=5.0) is None
        assert time.monotonic() - started < 1.0  # crowded: not a wait of its own
        release.set()
        waiter.join(30)
        t.join(30)
        got = Runtime.signals(b, spec, 60.0, wait_s=0.3)  # the next tick: the read that came back answers
        assert result["a"] is not None and result["a"].unavailable is None
        assert got is not None and got.unavailable is None
    finally:
        release.set()
        Runtime.reader = None
        server.close()
        Runtime.max_waiters = 8


def test_while_the_batch_is_read_again_a_recent_answer_serves_at_once() -> None:
    """At a thousand deployments a batch read takes seconds, and each decision that came meanwhile
    waited for it or, past the waiter cap, was put off a tick (a sixth of them on the scale bed).
    Signals from the last read within usable_s now answer at once; older ones wait as before."""
    from llmscale.controller.handlers import Runtime

    server = HangingRecorder()
    release, entered = server.release, server.entered
    try:
        Runtime.reader = PrometheusReader(Endpoints.build(Endpoint(name="default", url=server.url, timeout_seconds=30)))
        _clear_reads()
        spec = parse_spec(spec_dict())
        a, b, c = ("team-a", "one"), ("team-a", "two"), ("team-a", "three")
        Runtime._specs[b] = Runtime._specs[c] = spec  # deciding already: in the batch's read
        first = Runtime.signals(a, spec, 0.0)
        assert first is not None and first.unavailable is None and set(Runtime._signals) == {a, b, c}
        server.hang = True
        Runtime._read_at.clear()  # the batch is old: a's next decision reads it again, and hangs
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(a=Runtime.signals(a, spec, 0.0, usable_s=60.0)), daemon=True)
        t.start()
        assert entered.wait(10), "the second read never reached the server"
        asked = len(server.requests)
        started = time.monotonic()
        got = Runtime.signals(b, spec, 0.0, wait_s=5.0, usable_s=60.0)
        assert got is Runtime._signals[b] and got.unavailable is None  # the last read's answer, at once
        assert time.monotonic() - started < 1.0 and len(server.requests) == asked and t.is_alive()
        # Older than usable_s: waited for too, not answered.
        read_c = Runtime._signals[c]
        assert read_c.read_at is not None
        Runtime._signals[c] = dataclasses.replace(read_c, read_at=read_c.read_at - 120.0)
        assert Runtime.signals(c, spec, 0.0, wait_s=0.3, usable_s=60.0) is None
        # Read recently, but its newest scrape is now stale: judged again, waited for (unknown holds).
        Runtime._signals[c] = dataclasses.replace(read_c, sampled_at=time.time() - 1000.0)
        assert Runtime.signals(c, spec, 0.0, wait_s=0.3, usable_s=60.0) is None
        # Read for a spec that changed since (another TTFT target): waited for, not answered from it.
        Runtime._signals[c] = read_c
        retargeted = parse_spec(spec_dict(slo={**spec_dict()["slo"], "ttft": {"target": "2s", "percentile": 99}}))
        assert Runtime.signals(c, retargeted, 0.0, wait_s=0.3, usable_s=60.0) is None
        assert Runtime.signals(c, spec, 0.0, wait_s=0.3, usable_s=60.0) is read_c  # the spec it was read for: at once
        # Without usable_s (the old contract) a caller waits, b with a recent read too.
        assert Runtime.signals(b, spec, 0.0, wait_s=0.3) is None
        # A last read that failed is never "recent": the failure answers (the sick rule), not old data.
        Runtime._signals[b] = Signals.unreachable("Prometheus 'default' could not be read (HTTP 503)")
        assert Runtime.signals(b, spec, 0.0, wait_s=0.3, usable_s=60.0) is None
        Runtime._sick.add(Runtime.endpoint_of(b, spec))
        Runtime._signals[b] = got
        sick = Runtime.signals(b, spec, 0.0, wait_s=0.3, usable_s=60.0)
        assert sick is not None and sick.unavailable is not None  # an endpoint that failed: unknown, held
        Runtime._sick.clear()
        release.set()
        t.join(30)
        assert result["a"] is not None and result["a"].unavailable is None
        again = Runtime.signals(b, spec, 60.0, wait_s=0.3, usable_s=60.0)  # the read that came back answers
        assert again is not None and again.unavailable is None and again is not got
    finally:
        release.set()
        Runtime.reader = None
        server.close()
        _clear_reads()
