"""pytest wiring for the local test bed: bring it up once per session (or reuse one that is up),
hand tests Kubernetes clients, the Prometheus URL, the fleet simulator and a running operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "e2e" / "cluster"
STATE = Path(os.environ.get("LLMSCALE_STATE", ROOT / "e2e" / ".state"))
PROM_URL = f"http://127.0.0.1:{os.environ.get('LLMSCALE_PROM_PORT', '19090')}"
FLEET_URL = f"http://127.0.0.1:{os.environ.get('LLMSCALE_FLEET_PORT', '18000')}"
OPERATOR_TOKEN = STATE / "operator-prometheus-token"
OPERATOR_LOG = STATE / "logs" / "operator-e2e.log"
KUBECTL = Path(os.environ.get("LLMSCALE_CACHE", Path.home() / ".cache/llmscale")) / f"kubernetes-{os.environ.get('KUBE_VERSION', 'v1.36.3')}" / "kubectl"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).startswith(str(ROOT / "e2e")):
            item.add_marker(pytest.mark.e2e)


@dataclass
class Bed:
    kubeconfig: Path
    prom_url: str
    fleet_url: str
    core: Any
    apps: Any
    custom: Any

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(KUBECTL), f"--kubeconfig={self.kubeconfig}", *args], input=input, capture_output=True,
                           text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def traffic(self, namespace: str, name: str, **body: Any) -> None:
        req = urllib.request.Request(f"{self.fleet_url}/traffic/{namespace}/{name}", data=json.dumps(body).encode(), method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def llmd(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("llmscale.io", "v1alpha1", namespace, "llmdeployments", name)


def _bed_is_up() -> bool:
    return subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def bed() -> Bed:
    if not _bed_is_up():
        if os.environ.get("LLMSCALE_E2E") != "1":
            pytest.skip("the test bed is not up: run `e2e/cluster up` (or set LLMSCALE_E2E=1 to start it)")
        r = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            pytest.fail(f"e2e/cluster up failed:\n{r.stderr[-3000:]}")
    from kubernetes import client, config

    kubeconfig = STATE / "kubeconfig"
    config.load_kube_config(config_file=str(kubeconfig))
    return Bed(kubeconfig, PROM_URL, FLEET_URL, client.CoreV1Api(), client.AppsV1Api(), client.CustomObjectsApi())


@pytest.fixture(scope="session")
def crd(bed: Bed) -> None:
    bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds/llmdeployments.llmscale.io.yaml"))
    bed.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmscale.io", "--timeout=60s")


@pytest.fixture(scope="session")
def operator(bed: Bed, crd: None) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a normal process against the bed, with a bearer token for its Prometheus (the
    bed's Prometheus ignores it; the security tests check that it goes nowhere else)."""
    log = open(STATE / "logs" / "operator-e2e.log", "wb")
    OPERATOR_TOKEN.write_text(f"e2e-operator-token-{uuid.uuid4().hex}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(bed.kubeconfig), "--prometheus-url", bed.prom_url,
         "--metrics-port", "18080", "--health-port", "18081"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LLMSCALE_PROMETHEUS_BEARER_TOKEN_FILE": str(OPERATOR_TOKEN)},
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:18081/healthz", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the operator exited; log: {STATE / 'logs' / 'operator-e2e.log'}")
            time.sleep(0.5)
    else:
        pytest.fail("the operator did not become healthy in 60 s")
    yield proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def namespace(bed: Bed, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    name = f"e2e-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    bed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    bed.core.delete_namespace(name)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 1.0) -> Any:
    """Poll until check() returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        try:
            last = check()
        except Exception as e:  # transient API errors while objects appear
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
