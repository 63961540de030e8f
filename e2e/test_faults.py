"""Faults on the test bed (issue 11), each with an operator of its own (run in a pytest session of
their own, see scripts/test.sh): the operator SIGKILLed between applying a decision and writing its status
(a deterministic failpoint, not a lucky timing) resumes from the Deployments as applied, scales
nothing down for want of what it had learnt, and keeps what it had learnt."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .conftest import (
    OPERATOR_TOKEN,
    STATE,
    Bed,
    CeilingWatcher,
    chat_doc,
    instant_query,
    last_decided,
    wait_for,
)

METRICS_PORT = 18089  # the operator these tests start: its own metrics (when it last decided)


def _operator(bed: Bed, namespace: str, failpoint: str = "") -> subprocess.Popen[bytes]:
    log = open(STATE / "logs" / f"operator-{namespace}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(STATE / "operator.kubeconfig"), "--prometheus-url", bed.prom_url,
         "--metrics-port", str(METRICS_PORT), "--health-port", "18091", "--namespace", namespace],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "LLMSCALE_FAILPOINT": failpoint, "LLMSCALE_PROMETHEUS_BEARER_TOKEN_FILE": str(OPERATOR_TOKEN)})
    log.close()
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _doc(namespace: str, scale_down_window: str = "60s") -> str:
    return chat_doc(namespace, scaling={"interval": "3s", "scaleUp": {"maxStep": 4},
                                        "scaleDown": {"stabilizationWindow": scale_down_window, "maxStep": 1}})


def _status(bed: Bed, ns: str) -> dict[str, Any]:
    return bed.llmd(ns, "chat").get("status", {})


def _replicas(bed: Bed, ns: str) -> int:
    return int(bed.apps.read_namespaced_deployment("chat-h100x1", ns).spec.replicas or 0)


def test_killed_between_its_apply_and_its_status_the_operator_resumes_and_loses_nothing(
        bed: Bed, solo: str, ceilings: CeilingWatcher) -> None:
    op = _operator(bed, solo)
    try:
        bed.kubectl("apply", "-f", "-", input=_doc(solo))
        bed.traffic(solo, "chat", rate=2, meanInput=1000, meanOutput=200)
        learnt = wait_for("one Ready replica and a token mix learnt", lambda: (h := _status(bed, solo).get("history") or {})
                          .get("meanInput") and _status(bed, solo).get("readyReplicas") == 1 and h, 120)
        _stop(op)
        op = _operator(bed, solo, failpoint="after-apply")
        bed.traffic(solo, "chat", rate=30, meanInput=1000, meanOutput=200)
        wait_for("the operator killed by its failpoint after applying a scale-up", lambda: op.poll() is not None, 120)
        assert op.returncode == -9, op.returncode
        applied = _replicas(bed, solo)
        st = _status(bed, solo)
        assert applied > 1, applied
        assert st.get("desiredReplicas", 1) < applied, st.get("desiredReplicas")  # the status write never happened

        op = _operator(bed, solo)
        seen: list[int] = []

        def resumed() -> bool:
            seen.append(_replicas(bed, solo))
            s = _status(bed, solo)
            return bool(s.get("desiredReplicas", 0) >= applied and s.get("lastDecision", {}).get("time", "") > st.get("lastDecision", {}).get("time", ""))

        wait_for("the restarted operator's decision over the replicas it had applied", resumed, 60)
        for _ in range(20):  # and no scale-down for want of what it knew, under the load that asked for them
            seen.append(_replicas(bed, solo))
            time.sleep(1)
        assert min(seen) >= applied, (applied, seen)
        history = _status(bed, solo)["history"]
        assert history.get("observingSince") == learnt.get("observingSince"), (learnt, history)
        assert history.get("meanInput") is not None
        assert not ceilings.violations, ceilings.violations
    finally:
        _stop(op)


class PrometheusProxy:
    """A small proxy in front of the bed's Prometheus that passes answers through, mangles them
    (NaN, Inf, non-numeric values and `le` labels, bucket counts going backwards, series for only
    some pods), answers too
    slowly, or is not there at all (connections refused); loopback only."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import urllib.request

        self.mode = "pass"
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                import json as _json

                proxy.requests += 1
                if proxy.mode == "slow":
                    time.sleep(12)  # past the reader's 5 s timeout
                with urllib.request.urlopen(upstream + self.path, timeout=10) as r:
                    body = r.read()
                if proxy.mode == "garbage":
                    doc = _json.loads(body)
                    result = (doc.get("data") or {}).get("result") or []
                    bad = ["NaN", "+Inf", "-Inf", "abc", "-1", "1e999"]
                    kept = []
                    for i, series in enumerate(result):
                        if i % 3 == 2:
                            continue  # series for only some pods
                        if "value" in series:
                            series["value"] = [series["value"][0], bad[i % len(bad)]]
                        if "le" in series.get("metric", {}) and i % 2:
                            series["metric"]["le"] = "not-a-number"
                        elif "le" in series.get("metric", {}) and "value" in series and i % 4 == 0:
                            series["value"] = [series["value"][0], "0"]  # a bucket below the ones under it: counts going backwards
                        kept.append(series)
                    if result:
                        doc["data"]["result"] = kept
                    body = _json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._handler = Handler
        self._start(0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _start(self, port: int) -> None:
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Not at all: nothing listens, every connection is refused."""
        self.close()

    def up(self) -> None:
        self._start(int(self.url.rsplit(":", 1)[1]))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_sick_prometheus_holds_the_replicas_and_the_operator_recovers_by_itself(
        bed: Bed, solo: str, ceilings: CeilingWatcher) -> None:
    """Garbage answers make the signals unknown with a reason; slow ones, and none at all
    (connection refused), make them unavailable:
    either way no replica is released (the load fell to zero meanwhile, so a scale-down is what a
    policy that trusted them would do), nothing is logged as a crash, and once Prometheus answers
    well again the operator goes on by itself."""
    proxy = PrometheusProxy(bed.prom_url)
    log = STATE / "logs" / f"operator-{solo}.log"
    op = subprocess.Popen(
        [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(STATE / "operator.kubeconfig"), "--prometheus-url", proxy.url,
         "--metrics-port", "0", "--health-port", "18091", "--namespace", solo],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, "LLMSCALE_FAILPOINT": ""})

    def cond(ctype: str) -> dict[str, Any]:
        return next((c for c in _status(bed, solo).get("conditions", []) if c["type"] == ctype), {})

    try:
        # A 10 s scale-down window: with good data, zero load scales down within the phases below.
        bed.kubectl("apply", "-f", "-", input=_doc(solo, "10s"))
        bed.traffic(solo, "chat", rate=30, meanInput=1000, meanOutput=200)
        wait_for("a scale-up through the proxy", lambda: _replicas(bed, solo) >= 2 and _status(bed, solo).get("readyReplicas", 0) >= 2, 120)
        held = _replicas(bed, solo)
        learnt = wait_for("learnt state in status", lambda: (h := _status(bed, solo).get("history", {}))
                          and h.get("plannedMix") and h.get("observingSince") and h, 60)
        bed.traffic(solo, "chat", rate=0, meanInput=1000, meanOutput=200)
        for mode, expect in (("garbage", None), ("slow", "False"), ("refused", "False")):
            proxy.mode = mode
            if mode == "refused":
                proxy.down()
            before = proxy.requests
            seen: list[int] = []
            deadline = time.time() + 40
            while time.time() < deadline:  # longer than the 60 s window's share the decisions see, bounded
                seen.append(_replicas(bed, solo))
                time.sleep(1)
            assert proxy.requests > before or mode == "refused", f"{mode}: the operator read nothing through the proxy"
            assert min(seen) >= held, (mode, held, seen)
            if expect is not None:
                wait_for(f"MetricsAvailable={expect} while Prometheus is {mode}",
                         lambda e=expect: cond("MetricsAvailable").get("status") == e, 60)
            else:
                # Garbage: the signals it spoilt are unknown, each named with its reason; or, when a
                # series cannot be read at all (a non-numeric le), the deployment's read is.
                said = {"MetricsUnknown": r"\b[a-zA-Z]+: (ignored: |no series|stale|incomplete histogram)",
                        "MetricsUnavailable": "returned a malformed series for this deployment"}
                try:
                    m = wait_for("MetricsAvailable says what is unknown while Prometheus answers garbage",
                                 lambda said=said: (c := cond("MetricsAvailable")).get("reason") in said and c, 30)
                except AssertionError as e:
                    raise AssertionError(f"{e}; MetricsAvailable: {cond('MetricsAvailable')}") from None
                assert re.search(said[m["reason"]], m.get("message", "")), m  # a signal named, with why
            assert op.poll() is None, f"the operator exited while Prometheus was {mode}"
            if mode == "refused":
                proxy.up()
        proxy.mode = "pass"
        wait_for("MetricsAvailable=True again", lambda: cond("MetricsAvailable").get("status") == "True"
                 and cond("MetricsAvailable").get("reason") == "MetricsRead", 90)
        # What it had learnt came through the sick phases (no load since: nothing new to learn).
        after = _status(bed, solo).get("history", {})
        assert (after.get("observingSince"), after.get("plannedMix")) == (learnt["observingSince"], learnt["plannedMix"]), after
        # The control: with good answers the same zero load does scale down, within the time each
        # sick phase lasted; so holding there was the metrics' doing, not the windows'.
        wait_for("a scale-down once the answers are good", lambda: _replicas(bed, solo) < held, 40)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert not ceilings.violations, ceilings.violations
    finally:
        _stop(op)
        proxy.close()


def test_the_api_server_and_etcd_restarted_in_a_scale_up_the_operator_carries_on(
        bed: Bed, solo: str, ceilings: CeilingWatcher) -> None:
    """kube-apiserver and etcd killed while new replicas start, and started again: the operator
    rides out the outage (no exit, no scale-down for want of data), and afterwards finishes the
    scale-up and decides again from what it had."""
    from .conftest import CLUSTER

    op = _operator(bed, solo)
    try:
        bed.kubectl("apply", "-f", "-", input=_doc(solo))
        bed.traffic(solo, "chat", rate=2, meanInput=1000, meanOutput=200)
        wait_for("one Ready replica", lambda: _status(bed, solo).get("readyReplicas") == 1, 120)
        learnt = wait_for("learnt state in status", lambda: (h := _status(bed, solo).get("history", {}))
                          and h.get("observingSince") and h, 60)
        bed.traffic(solo, "chat", rate=30, meanInput=1000, meanOutput=200)

        def starting() -> Any:
            d = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
            return (d.spec.replicas or 0) >= 2 and (d.status.ready_replicas or 0) < (d.spec.replicas or 0) and d
        # Killed while the new replicas start (ordered, not yet Ready): the scale-up is under way.
        at_kill = wait_for("a scale-up under way, its new replicas starting", starting, 90, 0.1)
        pids = [int((STATE / "pids" / f"{name}.pid").read_text()) for name in ("kube-apiserver", "etcd")]
        for pid in pids:  # a crash, not a shutdown: a graceful one waits on etcd going away beside it
            subprocess.run(["kill", "-KILL", str(pid)], check=True)
        during = at_kill.spec.replicas
        assert (at_kill.status.ready_replicas or 0) < during, "no replica was starting when the API server went"
        try:
            # Both gone, then down a while longer.
            wait_for("kube-apiserver and etcd stopped", lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 60, 0.2)
            time.sleep(8)
            assert op.poll() is None, "the operator exited while the API server was down"
        finally:
            r = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        restarted = time.time()
        # From the restart on, every replica count the Deployment shows: never below the scale-up's.
        seen: list[int] = []

        def sampled(check: Any) -> Any:
            seen.append(_replicas(bed, solo))
            return check()
        # The same operator process decides on (status keeps only decisions that changed something).
        wait_for("a decision after the restart", lambda: sampled(lambda: (last_decided(solo, "chat", METRICS_PORT) or 0.0)
                 > restarted), 90, 0.5)
        wait_for("the scale-up finished", lambda: sampled(lambda: _replicas(bed, solo) >= during
                 and _status(bed, solo).get("readyReplicas", 0) >= during), 120, 0.5)
        assert min(seen) >= during, (during, seen)
        assert _status(bed, solo).get("history", {}).get("observingSince") == learnt["observingSince"], "the learnt state was reset"
        assert op.poll() is None
        assert not ceilings.violations, ceilings.violations
    finally:
        _stop(op)


def test_killed_in_the_middle_of_a_shape_switch_the_operator_finishes_it_once(
        bed: Bed, solo: str, ceilings: CeilingWatcher) -> None:
    """Issue 12: the operator SIGKILLed right after applying the first step of a switch from L4 to
    H100 pods (before its status says so) finishes that switch after a restart, from the owned
    Deployments as applied: the H100 Deployment keeps the target mark it got then, the L4 pods go
    only once H100 pods serve, and nothing crosses a ceiling."""
    from .test_variants import LOAD
    from .test_variants import _doc as variants_doc

    def status() -> dict[str, Any]:
        return _status(bed, solo)

    def shape_replicas(variant: str) -> int | None:
        try:
            return int(bed.apps.read_namespaced_deployment(f"chat-{variant}", solo).spec.replicas or 0)
        except Exception:
            return None

    created = ceilings.created
    op = _operator(bed, solo)
    try:
        bed.kubectl("apply", "-f", "-", input=variants_doc(solo))
        bed.traffic(solo, "chat", rate=1, meanInput=200, meanOutput=100)
        wait_for("the L4 shape serving", lambda: status().get("shape") == "l4x1" and status().get("readyReplicas"), 90)
        _stop(op)
        op = _operator(bed, solo, failpoint="after-switch-apply")
        bed.traffic(solo, "chat", rate=LOAD, meanInput=200, meanOutput=100)
        wait_for("the operator killed by its failpoint after the switch's first apply", lambda: op.poll() is not None, 120)
        assert op.returncode == -9, op.returncode
        h100 = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
        mark = (h100.metadata.annotations or {}).get("llmscale.io/target-since")
        assert h100.spec.replicas and mark, h100.metadata.annotations
        assert status().get("variant") == "l4x1"  # the status write never happened
        l4_before = shape_replicas("l4x1")
        assert l4_before, l4_before  # make before break: the L4 pods still serve

        op = _operator(bed, solo)
        broke: list[tuple[int | None, int]] = []

        def finished() -> bool:
            l4 = shape_replicas("l4x1")  # read first: H100 pods Ready after it make a cut since then fair
            if l4 is None:
                return False  # an API hiccup is not a cut
            h100_ready = int(bed.apps.read_namespaced_deployment("chat-h100x1", solo).status.ready_replicas or 0)
            if h100_ready == 0 and l4 < l4_before:
                broke.append((l4, h100_ready))  # L4 pods cut before any H100 pod served
            return status().get("variant") == "h100x1" and status().get("shape") == "h100x1" and l4 == 0

        wait_for("the switch finished: H100 pods serving, the L4 Deployment at zero", finished, 120, every=0.5)
        assert not broke, broke
        h100 = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
        assert (h100.metadata.annotations or {}).get("llmscale.io/target-since") == mark  # the same switch, not a new one
        for _ in range(10):  # and it stays finished under the load that asked for it
            assert status().get("variant") == "h100x1" and shape_replicas("l4x1") == 0
            time.sleep(1)
        assert ceilings.created > created and not ceilings.violations, ceilings.violations
    finally:
        _stop(op)


class Federator:
    """A second, real Prometheus that federates the bed's (as a global Prometheus, or Thanos and
    Mimir in front of per-cluster ones, do): a series that leaves the bed's Prometheus lingers here
    with its last sample's timestamp for the lookback (five minutes), stale."""

    def __init__(self, upstream: str, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        up = urllib.parse.urlsplit(upstream)
        config = {"global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                  "scrape_configs": [{"job_name": "federate", "honor_labels": True, "metrics_path": "/federate",
                                      "scheme": up.scheme,
                                      "params": {"match[]": ['{__name__=~"vllm:.*|inference_extension_.*"}']},
                                      "static_configs": [{"targets": [up.netloc]}]}]}
        (directory / "federate.yml").write_text(yaml.safe_dump(config))
        self.log = open(STATE / "logs" / "prometheus-federate.log", "ab")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={directory / 'federate.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for("the federating Prometheus ready", lambda: self._ready(), 30)
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the federating Prometheus exited: {STATE / 'logs' / 'prometheus-federate.log'}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> float | None:
        return instant_query(self.url, promql)

    def close(self) -> None:
        _stop(self.proc)
        self.log.close()


def test_killed_right_after_a_spill_over_the_restarted_operator_keeps_it_a_spill_not_a_switch_to_roll_back(
        bed: Bed, solo: str, ceilings: CeilingWatcher) -> None:
    """Issue 12 (review): SIGKILLed right after applying a spill-over (before its status says so),
    the restarted operator reads the spill from the L4 Deployment's mark (llmscale.io/spill-for):
    with the H100 pods Pending past unschedulableTimeout the L4 pods are still spill-over, not a
    switch's old shape to roll back to, and the H100 shape is not marked failed."""
    from .test_variants import SPILL_LOAD, _spill_doc, take_h100s

    def status() -> dict[str, Any]:
        return _status(bed, solo)

    op = _operator(bed, solo)
    try:
        take_h100s(bed, solo, 31, 1)  # every H100 GPU but one
        bed.kubectl("apply", "-f", "-", input=_spill_doc(solo))
        bed.traffic(solo, "chat", rate=1, meanInput=200, meanOutput=100, routing="LoadAware")
        wait_for("one H100 pod serving", lambda: status().get("shape") == "h100x1" and status().get("readyReplicas"), 90)
        _stop(op)
        op = _operator(bed, solo, failpoint="after-spill-apply")
        bed.traffic(solo, "chat", rate=SPILL_LOAD, meanInput=200, meanOutput=100, routing="LoadAware")
        wait_for("the operator killed by its failpoint after the spill's first apply", lambda: op.poll() is not None, 150)
        assert op.returncode == -9, op.returncode
        l4 = bed.apps.read_namespaced_deployment("chat-l4x1", solo)
        assert l4.spec.replicas and (l4.metadata.annotations or {}).get("llmscale.io/spill-for") == "h100x1", l4.metadata.annotations
        assert "spillShape" not in status().get("history", {})  # the status write never happened

        op = _operator(bed, solo)
        wait_for("the restarted operator's spill in status", lambda: status().get("history", {}).get("spillShape") == "l4x1", 90)
        # The H100 pods have waited past unschedulableTimeout (20 s): a switch would be rolled back by now.
        pending = [p for p in bed.core.list_namespaced_pod(solo, label_selector="llmscale.io/deployment=chat").items
                   if p.status.phase == "Pending" and not p.spec.node_name]
        assert pending, "no H100 pod waits"
        for _ in range(25):
            st = status()
            assert st.get("variant") == "h100x1" and st.get("shape", "").endswith("+l4x1"), st.get("shape")
            time.sleep(1)
        failed = next((c for c in status().get("conditions", []) if c["type"] == "VariantSwitchFailed"), {})
        assert failed.get("status") != "True", failed
        assert "llmscale.io/switch-failed" not in (bed.apps.read_namespaced_deployment("chat-h100x1", solo).metadata.annotations or {})
        assert op.poll() is None
        assert not ceilings.violations, ceilings.violations
    finally:
        _stop(op)


def test_through_federation_the_deleted_pods_stale_series_do_not_hold_a_deployment_at_zero(
        bed: Bed, solo: str, ceilings: CeilingWatcher, tmp_path: Path) -> None:
    """Scaled to zero, a deployment read through a federating Prometheus still sees its deleted
    pods' last vLLM samples (stale, with their old timestamps) for five minutes: its vLLM queue is
    unknown, and the requests the gateway holds were not counted, so it stayed at zero with requests
    waiting until the stale series aged out. With no pod left, the gateway's queue is the demand."""
    log = STATE / "logs" / f"operator-{solo}.log"
    fed: Federator | None = None
    op: subprocess.Popen[bytes] | None = None
    try:
        fed = Federator(bed.prom_url, tmp_path)
        with open(log, "ab") as out:
            op = subprocess.Popen(
                [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(STATE / "operator.kubeconfig"),
                 "--prometheus-url", fed.url, "--metrics-port", "0", "--health-port", "18091", "--namespace", solo],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LLMSCALE_FAILPOINT": ""})
        bed.kubectl("apply", "-f", "-", input=chat_doc(
            solo, replicas={"min": 0, "max": 2},
            scaling={"interval": "3s", "scaleDown": {"stabilizationWindow": "10s", "maxStep": 1},
                     "scaleToZero": {"enabled": True, "idleFor": "15s", "demand": {"inferencePool": "chat"}}}))
        # Serve once from zero, so that the deployment's pods have had series, then idle back to zero.
        bed.traffic(solo, "chat", rate=2, meanInput=500, meanOutput=100)
        try:
            wait_for("one Ready replica", lambda: _status(bed, solo).get("readyReplicas") == 1, 120)
        except AssertionError as e:
            st = _status(bed, solo)
            raise AssertionError(f"{e}; lastDecision {st.get('lastDecision')}; conditions {st.get('conditions')}") from None
        wait_for("its series federated", lambda: fed.query(f'sum(vllm:num_requests_running{{namespace="{solo}"}})')
                 is not None, 60)
        bed.traffic(solo, "chat", rate=0)
        wait_for("scaled to zero", lambda: _replicas(bed, solo) == 0, 180, 2)
        wait_for("no pod left", lambda: not bed.core.list_namespaced_pod(solo).items, 120, 2)
        gone = time.time()
        # The premise: the bed's Prometheus has dropped the deleted pod's series, the federating one
        # still answers with its last sample, older than the operator's staleness bound (two
        # intervals, at least 30 s: metrics.prometheus.stale_after_s), with a margin.
        age = f'time() - max(timestamp(vllm:num_requests_running{{namespace="{solo}"}}))'
        wait_for("the federated series stale", lambda: (fed.query(age) or 0) > 45, 90, 2)
        assert bed.prom(f'sum(vllm:num_requests_running{{namespace="{solo}"}})') is None
        before = _from_zero_events(bed, solo)
        bed.traffic(solo, "chat", rate=2, meanInput=500, meanOutput=100)
        wait_for("a replica started from zero on the gateway's queue", lambda: _replicas(bed, solo) == 1, 90, 2)
        assert time.time() - gone < 240, "the stale series had nearly aged out: the test did not test them"
        assert fed.query(age) is not None, "the stale series were gone when the operator decided"
        # This scale-up's own Event (the first one from zero, before the scale-down, counts in `before`).
        wait_for("a second ScaleFromZero event", lambda: _from_zero_events(bed, solo) > before, 30)
        assert op.poll() is None, f"the operator exited; log: {log}"
        assert not ceilings.violations, ceilings.violations
    finally:
        if op is not None:
            _stop(op)
        if fed is not None:
            fed.close()


def _from_zero_events(bed: Bed, ns: str) -> int:
    """ScaleUp Events from zero so far (kopf posts each anew; `count` covers a client that folds repeats)."""
    return sum(e.count or 1 for e in bed.core.list_namespaced_event(ns).items
               if e.reason == "ScaleUp" and "ScaleFromZero" in (e.message or ""))
