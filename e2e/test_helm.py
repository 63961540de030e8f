"""`helm install` end to end (issue 13): the chart installed onto the bed runs the operator image on
the bed's real node (a kubelet with containerd and runc, e2e/cluster), under the chart's own
ServiceAccount and RBAC, with the kubelet's service-account token, probes and security context;
the closed loop scales through it; `helm upgrade` rolls it without losing what any LLMDeployment
has learnt; `helm uninstall` leaves the CRD and the LLMDeployments in place, as NOTES.txt says.

The real node has no pod network (see README, "The test bed's real node"), so the operator runs
with hostNetwork and reaches the API server through `apiServer.host` (no kube-proxy): the
restricted Pod Security Standard, which forbids the host network, is checked on the chart's
default pod in e2e/test_image.py instead. It runs an operator of its own: fault session."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import HELM, ROOT, Bed, CeilingWatcher, chat_doc, epoch, project_version, wait_for

NODE = "llmscale-system-node"
RELEASE = "llmscale-helm"
NAMESPACE = "llmscale-helm"


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(HELM), f"--kubeconfig={ROOT / 'e2e/.state/kubeconfig'}", *args], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}: {r.stderr}"
    return r




def _loaded_in_node(image: str) -> bool:
    r = subprocess.run(["ctr", "-a", str(ROOT / "e2e/.state/node/run/containerd.sock"), "-n", "k8s.io", "images", "ls", "-q"],
                       capture_output=True, text=True, timeout=60)
    return image in r.stdout.split()


@pytest.fixture(scope="module")
def node_image(bed: Bed) -> str:
    """The operator image of this checkout, in the real node's runtime (no registry)."""
    if not bed.core.list_node(field_selector=f"metadata.name={NODE}").items:
        pytest.fail(f"the bed has no real node {NODE}: e2e/cluster up with LLMSCALE_REAL_NODE=1 (the default)")
    r = subprocess.run([str(ROOT / "scripts/build-image.sh"), "--print"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    archive = r.stdout.strip().splitlines()[-1]
    image = f"localhost/llmscale:{project_version()}"
    loaded = ROOT / "e2e/.state/node/loaded"
    if not (loaded.exists() and loaded.read_text().strip() == Path(archive).name and _loaded_in_node(image)):
        subprocess.run(["ctr", "-a", str(ROOT / "e2e/.state/node/run/containerd.sock"), "-n", "k8s.io", "images", "import", archive],
                       capture_output=True, timeout=600, check=True)
        loaded.write_text(Path(archive).name + "\n")
    return image


def _values(solo: str, bed: Bed) -> list[str]:
    host, port = yaml.safe_load(bed.kubeconfig.read_text())["clusters"][0]["cluster"]["server"].removeprefix("https://").rsplit(":", 1)
    return ["--set", "image.repository=localhost/llmscale", "--set", "image.pullPolicy=Never", "--set", "replicaCount=1",
            "--set", "hostNetwork=true", "--set", f"apiServer.host={host}", "--set-string", f"apiServer.port={port}",
            "--set", f"prometheus.url={bed.prom_url}", "--set", "metrics.port=18085", "--set", "health.port=18086",
            "--set", "logFormat=json",
            "--set", f"watchNamespaces={{{solo}}}", "--set", "nodeSelector.llmscale\\.io/role=system",
            "--set", "tolerations[0].key=llmscale.io/system", "--set", "tolerations[0].operator=Exists"]


def _operator_pod(bed: Bed) -> Any:
    pods = [p for p in bed.core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
            if not p.metadata.deletion_timestamp]
    return pods[0] if len(pods) == 1 else None


def _log_lines(pod: Any) -> list[str]:
    """The container's log as the kubelet wrote it (CRI format: time, stream, tag, line)."""
    folder = ROOT / "e2e/.state/node/pod-logs" / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}" / "operator"
    return [line.split(" ", 3)[3] for f in sorted(folder.glob("*.log")) for line in f.read_text().splitlines() if line.count(" ") >= 3]


def _ready(pod: Any) -> bool:
    return pod is not None and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])






def test_helm_install_upgrade_and_uninstall_on_the_real_node(
        bed: Bed, node_image: str, solo: str, ceilings: CeilingWatcher) -> None:
    _helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
    try:
        out = _helm("install", RELEASE, str(ROOT / "charts/llmscale"), "-n", NAMESPACE, "--create-namespace",
                    *_values(solo, bed), "--wait", "--timeout", "3m")
        assert "leaves the\nLLMDeployment CRD and every LLMDeployment in place" in out.stdout, out.stdout
        pod = wait_for("the operator pod Ready", lambda: (p := _operator_pod(bed)) and _ready(p) and p, 120)
        assert pod.spec.node_name == NODE
        assert pod.spec.service_account_name == RELEASE
        assert pod.spec.containers[0].image == node_image
        # The kubelet ran it as the chart asks: the container's own view of its user and root filesystem.
        status = pod.status.container_statuses[0]
        assert status.ready and status.restart_count == 0, status
        # Namespaced mode: the operator's rights end at the namespaces it watches.
        account = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
        for verb, where, allowed in (("patch", solo, "yes"), ("patch", "default", "no"), ("create", solo, "yes")):
            r = bed.kubectl("auth", "can-i", verb, "deployments", "-n", where, f"--as={account}", check=False)
            assert r.stdout.strip() == allowed, (verb, where, r.stdout, r.stderr)
        assert bed.kubectl("auth", "can-i", "get", "secrets", "-n", solo, f"--as={account}", check=False).stdout.strip() == "no"

        # The closed loop, through the installed operator.
        bed.kubectl("apply", "-f", "-", input=chat_doc(solo))
        bed.traffic(solo, "chat", rate=40, meanInput=1000, meanOutput=200)

        def scaled() -> bool:
            d = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
            return (d.spec.replicas or 0) >= 3 and (d.status.ready_replicas or 0) >= 3
        wait_for("a scale-up to >= 3 Ready replicas by the installed operator", scaled, 180)
        # logFormat=json: every line the operator wrote is one JSON object, its decisions among them.
        import json
        lines = _log_lines(pod)
        records = [json.loads(line) for line in lines]
        assert any("ScaleUp" in r.get("message", "") for r in records), lines[-20:]
        learnt = wait_for("learnt state in status", lambda: (h := bed.llmd(solo, "chat").get("status", {}).get("history", {}))
                          and h.get("plannedMix") and h.get("observingSince") and h, 90)

        # helm upgrade with a changed value rolls the operator; what was learnt stays.
        upgraded = time.time()
        _helm("upgrade", RELEASE, str(ROOT / "charts/llmscale"), "-n", NAMESPACE, "--reuse-values",
              "--set", "prometheus.timeout=6", "--wait", "--timeout", "3m")
        new = wait_for("a new operator pod Ready", lambda: (p := _operator_pod(bed)) and _ready(p) and p.metadata.uid != pod.metadata.uid
                       and p, 120)
        assert any(e.value == "6" for e in new.spec.containers[0].env if e.name == "LLMSCALE_PROMETHEUS_TIMEOUT_S")
        after = wait_for("a decision by the new pod", lambda: (s := bed.llmd(solo, "chat").get("status", {}))
                         and epoch(s.get("lastDecision", {}).get("time", "")) > upgraded + 1 and s, 90)
        assert after["history"]["observingSince"] == learnt["observingSince"], "the learnt state was reset"
        assert after["history"].get("plannedMix"), after["history"]
        assert (after.get("replicas") or 0) >= 3, after  # no scale-down for what a restart forgot
    finally:
        bed.traffic(solo, "chat", rate=0)
        _helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)

    # helm uninstall: the CRD, the LLMDeployment and the Deployment it owns are all still there.
    bed.kubectl("get", "crd", "llmdeployments.llmscale.io")
    assert bed.llmd(solo, "chat")["metadata"]["name"] == "chat"
    assert bed.apps.read_namespaced_deployment("chat-h100x1", solo).spec.replicas >= 3
    wait_for("the operator pod gone", lambda: _operator_pod(bed) is None, 60)
