"""A Prometheus read with each namespace's own credential (issue 11): the platform team sets
`namespaceSecret` on an endpoint; the operator, under the RBAC the chart renders for that (get on
Secrets of that one name), reads a tenant's metrics with the Secret of the tenant's own namespace
and no other, and says so in our words when the Secret is missing. A recording HTTP server stands
in for the tenancy proxy (kube-rbac-proxy + prom-label-proxy) that would check the token.

Runs an operator of its own: in the pytest session of the fault tests (scripts/test.sh)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.metrics.test_credentials import Recorder, namespace_of

from .conftest import (
    OPERATOR_NAMESPACE,
    SESSION_OPERATOR,
    STATE,
    Bed,
    chart_kubeconfig,
    chat_doc,
    solo_namespace,
    wait_for,
)

SECRET = "llmscale-prometheus"
RELEASE = "llmscale-tenants"


def _condition(bed: Bed, ns: str, ctype: str) -> dict[str, Any]:
    conds = bed.llmd(ns, "chat").get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == ctype), {})


def _can(bed: Bed, ns: str, *what: str) -> bool:
    r = bed.kubectl("auth", "can-i", *what, "-n", ns, "--as", f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}",
                    check=False)
    return r.stdout.strip() == "yes"


def test_each_namespace_reads_prometheus_with_its_own_secret(bed: Bed, crd: None, tmp_path: Path) -> None:
    if any(p.poll() is None for p in SESSION_OPERATOR):
        pytest.skip("the session's operator would serve this test's objects too: run in a pytest session of its own")
    tenants, own = Recorder(), Recorder()  # the tenancy proxy, and the operator's own Prometheus
    proc: subprocess.Popen[bytes] | None = None
    log = STATE / "logs" / "operator-tenants.log"
    try:
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(json.dumps({"endpoints": [{"name": "tenants", "url": tenants.url, "namespaceSecret": SECRET}]}))
        own_token = tmp_path / "own-token"
        own_token.write_text(f"operator-own-{uuid.uuid4().hex}\n")
        kubeconfig = chart_kubeconfig(bed, RELEASE, RELEASE, "--set", "prometheus.endpoints[0].name=tenants",
                                      "--set", f"prometheus.endpoints[0].url={tenants.url}",
                                      "--set", f"prometheus.endpoints[0].namespaceSecret={SECRET}")
        token_a = f"tenant-a-{uuid.uuid4().hex}"
        with solo_namespace(bed) as ns_a, solo_namespace(bed) as ns_b:
            # The chart's RBAC: get on Secrets of that name, nothing else about Secrets.
            assert _can(bed, ns_a, "get", f"secret/{SECRET}")
            assert not _can(bed, ns_a, "get", "secret/another") and not _can(bed, ns_a, "list", "secrets")
            bed.kubectl("create", "secret", "generic", SECRET, "-n", ns_a, f"--from-literal=token={token_a}")
            bed.kubectl("create", "secret", "generic", "another", "-n", ns_b, "--from-literal=token=not-for-prometheus")
            env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSCALE_")}
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(kubeconfig), "--prometheus-url", own.url,
                     "--metrics-port", "18088", "--health-port", "0", "--namespace", ns_a, "--namespace", ns_b],
                    stdout=out, stderr=subprocess.STDOUT,
                    env={**env, "LLMSCALE_PROMETHEUS_ENDPOINTS_FILE": str(endpoints),
                         "LLMSCALE_PROMETHEUS_BEARER_TOKEN_FILE": str(own_token)})

            def alive(found: Any) -> Any:
                if proc is None or proc.poll() is not None:
                    pytest.fail(f"the operator exited; log: {log}")  # not an Exception: wait_for lets it through
                return found

            # ns_b's Secret of that name first holds a token that is not text.
            binary = tmp_path / "binary-token"
            binary.write_bytes(b"\xff\xfe\x00token")
            bed.kubectl("create", "secret", "generic", SECRET, "-n", ns_b, f"--from-file=token={binary}")
            for ns in (ns_a, ns_b):
                bed.kubectl("apply", "-f", "-", input=chat_doc(ns, metrics={"rateWindow": "20s", "prometheus": "tenants"}))
            # One deployment on the operator's own endpoint: read there with the operator's own token.
            base = yaml.safe_load(chat_doc(ns_a, metrics={"rateWindow": "20s"}))
            base["metadata"]["name"] = "base"
            bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(base))
            wait_for(f"reads for {ns_a}", lambda: alive([r for r in tenants.requests if namespace_of(r) == ns_a]), 90)
            # ns_b's Secret is not usable, then gone: it is not read, and says why in our words.
            cond = wait_for("MetricsAvailable=False for a Secret whose token is not text",
                            lambda: alive((c := _condition(bed, ns_b, "MetricsAvailable")).get("status") == "False"
                                          and "UTF-8" in c.get("message", "") and c), 60)
            assert f"the Secret '{SECRET}' of this namespace has a 'token' that is not UTF-8 text" in cond["message"], cond
            bed.kubectl("delete", "secret", SECRET, "-n", ns_b)
            cond = wait_for("MetricsAvailable=False in the namespace without the Secret",
                            lambda: alive((c := _condition(bed, ns_b, "MetricsAvailable")).get("status") == "False"
                                          and "does not exist" in c.get("message", "") and c), 60)
            assert f"Secret '{SECRET}' of this namespace, which does not exist" in cond["message"], cond
            assert {namespace_of(r) for r in tenants.requests} == {ns_a}
            assert {r.get("authorization") for r in tenants.requests} == {f"Bearer {token_a}"}
            # Its own Secret appears (basic auth this time): read with it from the next cycle on.
            bed.kubectl("create", "secret", "generic", SECRET, "-n", ns_b, "--from-literal=username=team-b",
                        "--from-literal=password=pw-b")
            wait_for(f"reads for {ns_b}", lambda: alive([r for r in tenants.requests if namespace_of(r) == ns_b]), 60)
            basic_b = "Basic " + base64.b64encode(b"team-b:pw-b").decode()
            for r in list(tenants.requests):
                assert r.get("authorization") == {ns_a: f"Bearer {token_a}", ns_b: basic_b}[namespace_of(r) or ""], r
            # The operator's own endpoint is read with its own token, for every namespace at once; its
            # token went nowhere near the tenants' endpoint (above), nor theirs to its own.
            wait_for("reads of the operator's own endpoint", lambda: alive(own.requests), 60)
            assert {r.get("authorization") for r in own.requests} == {f"Bearer {own_token.read_text().strip()}"}
            assert {namespace_of(r) for r in own.requests} == {None}
            # No credential shows in status or Events.
            for ns in (ns_a, ns_b):
                seen = json.dumps(bed.llmd(ns, "chat").get("status", {})) + json.dumps(
                    [e.to_dict() for e in bed.core.list_namespaced_event(ns).items], default=str)
                assert token_a not in seen and "pw-b" not in seen
            # Nor in the operator's own metrics (labels carry endpoints' names, never their credentials).
            with urllib.request.urlopen("http://127.0.0.1:18088/metrics", timeout=10) as r:
                exported = r.read().decode()
            assert "llmscale_decisions_total" in exported
            assert not any(t in exported for t in (token_a, "pw-b", own_token.read_text().strip()))
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            # Nor in anything the operator logged (its work on both namespaces is in it).
            written = log.read_text(errors="replace")
            assert "Handler 'reconcile' succeeded" in written and token_a not in written and "pw-b" not in written
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        tenants.close()
        own.close()
        bed.kubectl("delete", "clusterrolebinding,clusterrole", RELEASE, f"{RELEASE}-cluster", check=False)
        bed.kubectl("delete", "serviceaccount", RELEASE, "-n", OPERATOR_NAMESPACE, check=False)
