"""The operator image (issue 13), on the test bed: built from Debian packages and the project's
wheel by scripts/build-image.sh, run by podman the way the chart's pod runs it (user 65532, a
read-only root filesystem with nothing writable mounted, every capability dropped, no privilege
escalation) and with in-cluster credentials: a TokenRequest token of the chart's ServiceAccount,
the cluster CA and KUBERNETES_SERVICE_HOST, mounted where a kubelet mounts them.

Here podman runs it on the host's network, with a token podman mounts; e2e/test_helm.py runs it as
the chart's two pods under the bed's real kubelet, on the pod network. What this adds: the image
apart from a kubelet (its entry point, user and read-only root filesystem as podman enforces them),
its in-cluster login from the files alone, the chart's RBAC probed request by request, the
restricted Pod Security Standard's admission of the chart's default pod (and refusal of a changed
one), and HA between two containers (e2e/test_helm.py kills one of the chart's pods too). The tests
run operators of their own, so this file runs in the fault session (scripts/test.sh)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import (
    HELM,
    KUBECTL,
    OPERATOR_NAMESPACE,
    OPERATOR_TOKEN,
    ROOT,
    Bed,
    CeilingWatcher,
    chat_doc,
    epoch,
    established,
    project_version,
    wait_for,
)

PODMAN = ["podman", "--runtime", "/usr/sbin/runc"]
# The chart's securityContext, as podman says it; no tmpfs on /tmp either (a pod has none), and no
# passwd entry added for the user (a kubelet adds none).
AS_THE_CHART = ["--read-only", "--read-only-tmpfs=false", "--passwd=false", "--user", "65532:65532", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]




@pytest.fixture(scope="module")
def image() -> str:
    """The image of this checkout (built once, then loaded from ~/.cache/llmscale)."""
    r = subprocess.run([str(ROOT / "scripts/build-image.sh"), "--print"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    return f"localhost/llmscale:{project_version()}"


def _service_account(bed: Bed) -> tuple[str, str]:
    """(ServiceAccount name, a fresh token for it) as `helm install` creates the account."""
    r = subprocess.run([str(HELM), "template", "llmscale", str(ROOT / "charts/llmscale"), "-n", OPERATOR_NAMESPACE,
                        "--show-only", "templates/serviceaccount.yaml"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    account = yaml.safe_load(r.stdout)["metadata"]["name"]
    token = bed.kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=1h").stdout.strip()
    return account, token


def _api(bed: Bed) -> tuple[str, str, Path]:
    cluster = yaml.safe_load(bed.kubeconfig.read_text())["clusters"][0]["cluster"]
    host, port = cluster["server"].removeprefix("https://").rsplit(":", 1)
    return host, port, Path(cluster["certificate-authority"])


def test_the_image_runs_as_the_chart_runs_it(image: str) -> None:
    out = subprocess.run([*PODMAN, "run", "--rm", "--network", "none", *AS_THE_CHART, image, "--version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"llmscale {project_version()}"
    meta = json.loads(subprocess.run([*PODMAN, "image", "inspect", image], capture_output=True, text=True, check=True).stdout)[0]
    assert meta["Config"]["User"] == "65532:65532"  # not root even without the chart's securityContext
    assert meta["Config"]["Entrypoint"] == ["llmscale"]


@pytest.fixture
def pod_files(bed: Bed) -> Iterator[Path]:
    """What a kubelet mounts for the chart's ServiceAccount (a TokenRequest token, the cluster CA,
    the namespace), plus a Prometheus token file as the chart's credentials Secret would give."""
    _account, token = _service_account(bed)
    _host, _port, ca = _api(bed)
    files = Path(tempfile.mkdtemp(prefix="llmscale-sa-"))
    files.chmod(0o755)
    prometheus_token = OPERATOR_TOKEN.read_text() if OPERATOR_TOKEN.exists() else "e2e-image-prometheus-token\n"
    for name, text in (("token", token), ("ca.crt", ca.read_text()), ("namespace", OPERATOR_NAMESPACE),
                       ("prometheus-token", prometheus_token)):
        (files / name).write_text(text)
        (files / name).chmod(0o644)
    yield files
    for f in files.iterdir():
        f.unlink()
    files.rmdir()


def _start(bed: Bed, image: str, files: Path, container: str, namespace: str, metrics_port: int, health_port: int,
           *args: str) -> None:
    """The image as an operator of `namespace`, logged in the way a pod is; healthy on return."""
    host, port, _ca = _api(bed)
    r = subprocess.run([*PODMAN, "run", "-d", "--name", container, "--network", "host", *AS_THE_CHART,
                        "-v", f"{files}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                        "-e", f"KUBERNETES_SERVICE_HOST={host}", "-e", f"KUBERNETES_SERVICE_PORT={port}",
                        "-e", "LLMSCALE_PROMETHEUS_BEARER_TOKEN_FILE=/var/run/secrets/kubernetes.io/serviceaccount/prometheus-token",
                        image, "run", "--prometheus-url", bed.prom_url, "--metrics-port", str(metrics_port),
                        "--health-port", str(health_port), "--namespace", namespace, *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as h:
                return h.status == 200
        except OSError:
            state = subprocess.run([*PODMAN, "inspect", "-f", "{{.State.Running}}", container], capture_output=True, text=True)
            assert state.stdout.strip() == "true", _logs(container)
            return False

    wait_for(f"{container} to be healthy", healthy, 90)


def _remove(container: str) -> None:
    (ROOT / "e2e/.state/logs" / f"{container}.log").write_text(_logs(container))
    subprocess.run([*PODMAN, "rm", "-f", "-t", "5", container], capture_output=True, timeout=60)


@pytest.fixture
def image_operator(bed: Bed, image: str, solo: str, pod_files: Path) -> Iterator[str]:
    container = f"llmscale-e2e-{solo}"
    try:
        _start(bed, image, pod_files, container, solo, 18095, 18096)
        yield container
    finally:
        _remove(container)


def _logs(container: str) -> str:
    r = subprocess.run([*PODMAN, "logs", container], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr




def test_the_image_scales_a_deployment_under_the_charts_service_account(
        bed: Bed, image_operator: str, solo: str, pod_files: Path, ceilings: CeilingWatcher) -> None:
    bed.kubectl("apply", "-f", "-", input=chat_doc(solo))
    wait_for("the first replica Ready", lambda: (d := bed.apps.read_namespaced_deployment("chat-h100x1", solo)).status
             and (d.status.ready_replicas or 0) >= 1, 90)
    bed.traffic(solo, "chat", rate=40, meanInput=1000, meanOutput=200)
    try:
        def scaled() -> bool:
            d = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
            return (d.spec.replicas or 0) >= 3 and (d.status.ready_replicas or 0) >= 3
        wait_for("a scale-up to >= 3 Ready replicas by the operator in the image", scaled, 180)
    finally:
        bed.traffic(solo, "chat", rate=0)
    status = bed.llmd(solo, "chat")["status"]
    assert status["lastDecision"]["applied"] is True
    assert status["lastDecision"]["action"] == "ScaleUp" or status["lastDecision"]["to"] >= 3
    # Its own metrics answer from inside the container.
    with urllib.request.urlopen("http://127.0.0.1:18095/metrics", timeout=5) as r:
        assert b"llmscale_decisions_total" in r.read()
    logs = _logs(image_operator)
    assert "Traceback" not in logs, logs[-3000:]
    for secret in ("token", "prometheus-token"):
        assert (pod_files / secret).read_text().strip() not in logs


def test_the_charts_service_account_is_refused_outside_its_rbac(bed: Bed, operator_kubeconfig: Path) -> None:
    """What the chart never grants is refused to the identity the image runs as."""
    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KUBECTL), f"--kubeconfig={operator_kubeconfig}", *args], capture_output=True, text=True, timeout=60)

    assert as_operator("auth", "can-i", "patch", "deployments", "-n", "default").stdout.strip() == "yes"
    for verb_and_what in (["delete", "nodes"], ["get", "secrets", "-n", "kube-system"], ["create", "clusterrolebindings"],
                          ["create", "pods", "-n", "default"], ["delete", "namespaces"]):
        r = as_operator("auth", "can-i", *verb_and_what)
        assert r.stdout.strip() == "no", (verb_and_what, r.stdout, r.stderr)
    r = as_operator("get", "secrets", "-n", "kube-system")
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr


def test_the_charts_operator_pod_is_admitted_under_the_restricted_pod_security_standard(bed: Bed) -> None:
    """The chart's pod template, as a Pod, in a namespace that enforces `restricted`: the API
    server's PodSecurity admission admits it (a dry run: no node runs it)."""
    r = subprocess.run([str(HELM), "template", "llmscale", str(ROOT / "charts/llmscale"), "-n", "llmscale-restricted",
                        "--show-only", "templates/deployment.yaml"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    template = yaml.safe_load(r.stdout)["spec"]["template"]
    bed.kubectl("create", "namespace", "llmscale-restricted", check=False)
    bed.kubectl("label", "--overwrite", "namespace", "llmscale-restricted", "pod-security.kubernetes.io/enforce=restricted")
    bed.kubectl("create", "serviceaccount", template["spec"]["serviceAccountName"], "-n", "llmscale-restricted", check=False)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "llmscale-operator", "namespace": "llmscale-restricted",
                                                          "labels": template["metadata"]["labels"]}, "spec": template["spec"]}
    ok = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert ok.returncode == 0, ok.stderr
    # The check can fail: the same pod with a privilege escalation allowed is refused.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert refused.returncode != 0 and "restricted" in refused.stderr, refused.stderr


def _deployment_replicas(bed: Bed, namespace: str) -> int | None:
    try:
        return int(bed.apps.read_namespaced_deployment("chat-h100x1", namespace).spec.replicas or 0)
    except Exception:  # not created yet
        return None


def test_a_standby_takes_over_when_the_active_operator_is_killed_mid_scale_up(
        bed: Bed, image: str, solo: str, pod_files: Path, ceilings: CeilingWatcher) -> None:
    """HA (issue 13): two replicas of the image in one peering, as the chart runs them; the active
    one SIGKILLed (no polite handover) right after it started a scale-up. The standby resumes
    within 30 s, the scale-up finishes, and the Deployment's replica count, sampled throughout,
    never goes back nor past what the policy last decided: the action is neither lost nor doubled."""
    bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "charts/llmscale/crds/kopf-peering.yaml"))
    established(bed, "kopfpeerings.kopf.dev")
    bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "llmscale", "namespace": solo}}))
    first, second = f"llmscale-e2e-{solo}-a", f"llmscale-e2e-{solo}-b"
    history: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            n = _deployment_replicas(bed, solo)
            if n is not None and (not history or history[-1][1] != n):
                history.append((time.time(), n))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        # Started the same way, as the chart's two pods are: each draws its own priority.
        _start(bed, image, pod_files, first, solo, 18095, 18096, "--peering", "llmscale")
        _start(bed, image, pod_files, second, solo, 18097, 18098, "--peering", "llmscale")
        # kopf starts paused and resumes only as the highest live priority: once both are in the
        # peering object, exactly one has resumed.
        wait_for("both operators in the peering", lambda: len(bed.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", solo, "kopfpeerings", "llmscale").get("status") or {}) == 2, 60)
        running = wait_for("exactly one operator to act",
                           lambda: len(r := [c for c in (first, second) if _acting(c)]) == 1 and r, 60)
        active, standby = (first, second) if running == [first] else (second, first)
        bed.kubectl("apply", "-f", "-", input=chat_doc(solo))
        wait_for("the first replica Ready", lambda: (d := bed.apps.read_namespaced_deployment("chat-h100x1", solo)).status
                 and (d.status.ready_replicas or 0) >= 1, 90)
        assert not _acting(standby) and _acting(active)  # the standby still stands by
        sampler.start()
        bed.traffic(solo, "chat", rate=40, meanInput=1000, meanOutput=200)
        wait_for("the active operator to start a scale-up", lambda: (_deployment_replicas(bed, solo) or 0) >= 2, 120, every=0.25)
        subprocess.run([*PODMAN, "kill", "-s", "KILL", active], capture_output=True, timeout=30, check=True)
        killed = time.time()
        wait_for("the standby to take over", lambda: _acting(standby), 45, every=0.5)
        took_over = time.time() - killed
        assert took_over <= 30, f"the standby resumed {took_over:.0f} s after the kill"

        def finished() -> bool:
            d = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
            return (d.spec.replicas or 0) >= 3 and (d.status.ready_replicas or 0) >= 3
        wait_for("the scale-up to finish under the standby", finished, 120)
        decided = wait_for("a decision by the standby", lambda: (s := bed.llmd(solo, "chat").get("status", {}).get("lastDecision", {}))
                           and epoch(s.get("time", "")) > killed and s, 60)
    finally:
        bed.traffic(solo, "chat", rate=0)
        sampling.set()
        for c in (first, second):
            _remove(c)
    counts = [n for _, n in history]
    assert counts == sorted(counts), f"the replica count went back: {history}"
    assert counts[-1] <= decided["to"] and max(counts) == counts[-1], f"past the decision {decided}: {history}"


def _acting(container: str) -> bool:
    """Whether kopf's last word on peering in this container's log was to resume (it starts paused,
    resumes as the highest live priority, and pauses again when a higher one appears)."""
    said = [line for line in _logs(container).splitlines() if "Resuming operations" in line or "Pausing operations" in line]
    return bool(said) and "Resuming operations" in said[-1]

