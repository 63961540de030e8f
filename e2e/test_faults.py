"""Faults on the test bed (issue 11), each with an operator of its own in a namespace the session's
operator leaves alone: the operator SIGKILLed between applying a decision and writing its status
(a deterministic failpoint, not a lucky timing) resumes from the Deployments as applied, scales
nothing down for want of what it had learnt, and keeps what it had learnt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .conftest import OPERATOR_TOKEN, SOLO_PREFIX, STATE, Bed, CeilingWatcher, wait_for


@pytest.fixture
def solo(bed: Bed) -> Iterator[str]:
    from kubernetes import client

    name = f"{SOLO_PREFIX}{uuid.uuid4().hex[:6]}"
    bed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    bed.core.delete_namespace(name)


def _operator(bed: Bed, namespace: str, failpoint: str = "") -> subprocess.Popen[bytes]:
    log = open(STATE / "logs" / f"operator-{namespace}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(bed.kubeconfig), "--prometheus-url", bed.prom_url,
         "--metrics-port", "0", "--health-port", "18091", "--namespace", namespace],
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


def _doc(namespace: str) -> str:
    spec: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "replicas": {"min": 1, "max": 6},
        "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "5s"}],
        "slo": {"ttft": {"target": "250ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
        "cost": {"maxGPUs": 6, "prices": {"nvidia-h100": "4.00"}},
        "scaling": {"interval": "3s", "scaleUp": {"maxStep": 4}, "scaleDown": {"stabilizationWindow": "60s", "maxStep": 1}},
        "metrics": {"rateWindow": "20s"},
    }
    return yaml.safe_dump({"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
                           "metadata": {"name": "chat", "namespace": namespace}, "spec": spec})


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
