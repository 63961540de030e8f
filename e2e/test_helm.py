"""`helm install` end to end (issue 13): the chart installed onto the bed runs the operator image on
the bed's real node (a kubelet with containerd, runc, a CNI bridge and kube-proxy; e2e/cluster), two
pods on the pod network under the chart's own ServiceAccount and RBAC, in a namespace that enforces
the `restricted` Pod Security Standard. They reach the API server through the `kubernetes` Service
and Prometheus through a Service (monitoring/prometheus). The closed loop scales through them; the
active one is SIGKILLed in the middle of a scale-up and the standby finishes it, neither losing nor
doubling it; `helm upgrade` rolls them without losing what any LLMDeployment has learnt; `helm
uninstall` leaves the CRD and the LLMDeployments in place, as NOTES.txt says. It runs operators of
its own: fault session."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import watch

from .conftest import HELM, KUBECTL, ROOT, Bed, CeilingWatcher, chat_doc, epoch, project_version, wait_for
from .test_image import _deployment_replicas

NODE = "llmscale-system-node"
RELEASE = "llmscale-helm"
NAMESPACE = "llmscale-helm"
POD_CIDR = ipaddress.ip_network("10.245.0.0/24")  # the real node's pod network (e2e/cluster)
CONTAINERD = str(ROOT / "e2e/.state/node/run/containerd.sock")


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(HELM), f"--kubeconfig={ROOT / 'e2e/.state/kubeconfig'}", *args], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}: {r.stderr}"
    return r




def _loaded_in_node(image: str) -> bool:
    r = subprocess.run(["ctr", "-a", CONTAINERD, "-n", "k8s.io", "images", "ls", "-q"],
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
        subprocess.run(["ctr", "-a", CONTAINERD, "-n", "k8s.io", "images", "import", archive],
                       capture_output=True, timeout=600, check=True)
        loaded.write_text(Path(archive).name + "\n")
    return image


def _values(solo: str, bed: Bed) -> list[str]:
    """What the bed needs beyond the defaults: the image loaded into the node (no registry), and the
    bed's Prometheus, through its Service (no cluster DNS on the bed, hence its ClusterIP)."""
    prometheus = bed.core.read_namespaced_service("prometheus", "monitoring").spec.cluster_ip
    return ["--set", "image.repository=localhost/llmscale", "--set", "image.pullPolicy=Never",
            "--set", f"prometheus.url=http://{prometheus}:9090", "--set", "logFormat=json",
            "--set", f"watchNamespaces={{{solo}}}", "--set", "nodeSelector.llmscale\\.io/role=system",
            "--set", "tolerations[0].key=llmscale.io/system", "--set", "tolerations[0].operator=Exists"]


def _operator_pods(bed: Bed) -> list[Any]:
    return [p for p in bed.core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
            if not p.metadata.deletion_timestamp]


def _log_files(pod: Any) -> list[Path]:
    """The container's log files as the kubelet wrote them, one per start of the container, in order."""
    folder = ROOT / "e2e/.state/node/pod-logs" / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}" / "operator"
    return sorted(folder.glob("*.log"), key=lambda f: int(f.stem) if f.stem.isdigit() else -1)


def _log_lines(*files: Path) -> list[str]:
    """The lines the operator wrote. CRI format: time, stream, tag (F: a full line, P: part of one
    the kubelet split), text."""
    out: list[str] = []
    for f in files:
        part = ""
        for line in f.read_text().splitlines():
            fields = line.split(" ", 3)
            if len(fields) < 4:
                continue
            if fields[2] == "P":
                part += fields[3]
            else:
                out.append(part + fields[3])
                part = ""
    return out


def _acting(pod: Any, not_before: Path | None = None) -> bool:
    """Whether kopf's last word on peering in the pod's current container was to resume (it starts
    paused, resumes as the highest live priority, and pauses when a higher one appears); with
    not_before, only a container started after the one that wrote that file counts."""
    files = _log_files(pod)
    if not files or (not_before is not None and files[-1] == not_before):
        return False
    said = [line for line in _log_lines(files[-1]) if "Resuming operations" in line or "Pausing operations" in line]
    return bool(said) and "Resuming operations" in said[-1]


def _ready(pod: Any) -> bool:
    return pod is not None and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _both_ready(bed: Bed, exclude: frozenset[str] = frozenset()) -> list[Any] | None:
    pods = [p for p in _operator_pods(bed) if p.metadata.uid not in exclude]
    return pods if len(pods) == 2 and all(_ready(p) for p in pods) else None


def test_helm_install_upgrade_and_uninstall_on_the_real_node(
        bed: Bed, node_image: str, solo: str, ceilings: CeilingWatcher) -> None:
    _helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
    # The namespace enforces the restricted Pod Security Standard before the chart's pods arrive (one
    # a run before left is let go first).
    wait_for("the namespace of a run before gone", lambda: not any(
        n.metadata.deletion_timestamp for n in bed.core.list_namespace(field_selector=f"metadata.name={NAMESPACE}").items), 180)
    bed.kubectl("create", "namespace", NAMESPACE, check=False)
    bed.kubectl("label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    # Every replica count the owned Deployment had, from a watch (a sample could miss a short dip).
    history: list[tuple[float, int]] = []
    replicas_watch, stopping = watch.Watch(), threading.Event()

    def record() -> None:
        try:
            for event in replicas_watch.stream(bed.apps.list_namespaced_deployment, solo,
                                               field_selector="metadata.name=chat-h100x1", timeout_seconds=900):
                n = int(event["object"].spec.replicas or 0)
                if not history or history[-1][1] != n:
                    history.append((time.time(), n))
            if not stopping.is_set():  # the server ended the watch: what came after is not recorded
                history.append((time.time(), -1))
        except Exception as e:  # the watch broke: the history would have a hole, so the test must not pass on it
            if stopping.is_set():  # stopping closes the stream under it
                return
            history.append((time.time(), -1))
            raise AssertionError(f"the replica watch broke: {type(e).__name__}") from e

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    try:
        out = _helm("install", RELEASE, str(ROOT / "charts/llmscale"), "-n", NAMESPACE,
                    *_values(solo, bed), "--wait", "--timeout", "3m")
        assert "leaves the\nLLMDeployment CRD and every LLMDeployment in place" in out.stdout, out.stdout
        pods = wait_for("both operator pods Ready", lambda: _both_ready(bed), 120)
        for pod in pods:
            assert pod.spec.node_name == NODE
            assert pod.spec.service_account_name == RELEASE
            assert pod.spec.containers[0].image == node_image
            assert not pod.spec.host_network and ipaddress.ip_address(pod.status.pod_ip) in POD_CIDR, pod.status.pod_ip
            status = pod.status.container_statuses[0]
            assert status.ready and status.restart_count == 0, status
        # kopf's peering: once both are in the peering object, exactly one acts (each drew its own
        # priority; kopf starts paused and resumes only as the highest live one).
        wait_for("both operators in the peering", lambda: len(bed.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", solo, "kopfpeerings", "llmscale").get("status") or {}) == 2, 60)
        acting = wait_for("exactly one operator pod to act", lambda: len(a := [p for p in pods if _acting(p)]) == 1 and a, 60)
        active = acting[0]
        standby = next(p for p in pods if p.metadata.uid != active.metadata.uid)

        # Namespaced mode: the operator's rights end at the namespaces it watches; and a request the
        # chart never grants, made with the ServiceAccount's own token, is refused.
        account = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
        for verb, where, allowed in (("patch", solo, "yes"), ("patch", "default", "no"), ("create", solo, "yes")):
            r = bed.kubectl("auth", "can-i", verb, "deployments", "-n", where, f"--as={account}", check=False)
            assert r.stdout.strip() == allowed, (verb, where, r.stdout, r.stderr)
        token = bed.kubectl("create", "token", RELEASE, "-n", NAMESPACE, "--duration=10m").stdout.strip()
        cluster = yaml.safe_load(bed.kubeconfig.read_text())["clusters"][0]["cluster"]
        as_operator = [str(KUBECTL), "--kubeconfig=/dev/null", f"--server={cluster['server']}",
                       f"--certificate-authority={cluster['certificate-authority']}", f"--token={token}"]
        assert subprocess.run([*as_operator, "get", "deployments", "-n", solo], capture_output=True, timeout=60).returncode == 0
        for request in (("delete", "node", NODE, "--dry-run=server"), ("get", "secrets", "-n", "kube-system"),
                        ("get", "secrets", "-n", solo)):  # a dry run is authorised as the real request would be
            r = subprocess.run([*as_operator, *request], capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "forbidden" in r.stderr.lower(), (request, r.stdout, r.stderr)
        assert bed.core.read_node(NODE).metadata.name == NODE

        # The closed loop, through the installed operator, one replica per decision: the active pod
        # SIGKILLed (no polite handover) right after its first step; the rest is the next one's.
        bed.kubectl("apply", "-f", "-", input=chat_doc(solo, scaling={"interval": "3s", "scaleUp": {"maxStep": 1}}))
        wait_for("the first replica Ready", lambda: (d := bed.apps.read_namespaced_deployment("chat-h100x1", solo)).status
                 and (d.status.ready_replicas or 0) >= 1, 90)
        bed.traffic(solo, "chat", rate=60, meanInput=1000, meanOutput=200)
        wait_for("the active operator's first step", lambda: (_deployment_replicas(bed, solo) or 0) >= 2, 120, every=0.1)
        assert not _acting(standby) and _acting(active), "the standby acted before the kill"
        container = active.status.container_statuses[0].container_id.removeprefix("containerd://")
        killed_run = _log_files(active)[-1]
        subprocess.run(["ctr", "-a", CONTAINERD, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container],
                       capture_output=True, timeout=30, check=True)
        killed = time.time()
        at_kill = _deployment_replicas(bed, solo) or 0
        # The kubelet restarts the killed container, which draws a new priority: the one that takes
        # over is the standby, or the restarted container if it drew the higher one.
        wait_for("an operator to take over", lambda: _acting(standby) or _acting(active, not_before=killed_run), 45, every=0.5)
        took_over = time.time() - killed
        assert took_over <= 30, f"an operator resumed {took_over:.0f} s after the kill"
        print(f"taken over {took_over:.1f} s after the kill by the {'standby' if _acting(standby) else 'restarted pod'}")

        def scaled() -> bool:
            d = bed.apps.read_namespaced_deployment("chat-h100x1", solo)
            return (d.spec.replicas or 0) >= at_kill + 1 and (d.spec.replicas or 0) >= 3 and (d.status.ready_replicas or 0) >= 3
        wait_for("the scale-up finished by the operator that took over", scaled, 180)
        wait_for("a decision after the kill", lambda: epoch(bed.llmd(solo, "chat").get("status", {}).get("lastDecision", {})
                                                            .get("time", "")) > killed, 60)
        stopping.set()
        replicas_watch.stop()
        assert all(n >= 0 for _, n in history), f"the replica watch broke: {history}"
        # The operator applies, then writes status: the decision behind the last count recorded.
        decided = wait_for("status to show the decision behind the last count", lambda: (
            d := bed.llmd(solo, "chat").get("status", {}).get("lastDecision", {})) and d.get("to", 0) >= history[-1][1] and d, 30)
        print(f"replica history (s from the kill, replicas): {[(round(t - killed, 1), n) for t, n in history]}; last decision {decided}")
        counts = [n for _, n in history]
        # Neither lost (never back, and steps after the kill) nor doubled (one replica per decision,
        # never past what was decided).
        assert counts == sorted(counts), f"the replica count went back: {history}"
        assert all(b - a == 1 for a, b in zip(counts, counts[1:], strict=False)), f"a step of more than one replica: {history}"
        assert any(t > killed and n > at_kill for t, n in history), f"no step after the kill: {history}"
        assert counts[-1] <= decided["to"], f"past the decision {decided}: {history}"
        # Each step is one applied decision, said in its ScaleUp Event ("a -> b"), and no step was
        # applied twice (two Events from the same count: the operator that took over redoing one).

        def steps() -> list[tuple[int, int]]:
            said = [e.message.split(" ", 3) for e in bed.core.list_namespaced_event(solo).items
                    if e.reason == "ScaleUp" and e.involved_object.kind == "LLMDeployment"]
            return sorted((int(w[0]), int(w[2])) for w in said if len(w) >= 3 and w[1] == "->")
        # (The killed operator may have died before posting its step's Event: the steps after the kill.)
        moves = [(a, b) for (_, a), (t, b) in zip(history, history[1:], strict=False) if t > killed]
        said = wait_for("an Event for every step after the kill", lambda: set(moves) <= set(s := steps()) and s, 30)
        froms = [a for a, _ in said]
        assert len(froms) == len(set(froms)), f"a step applied twice: {said}"
        # The kubelet restarted the killed container: both pods Ready again.
        wait_for("the killed pod back", lambda: _both_ready(bed), 120)
        # logFormat=json: every line the operators wrote is one JSON object (but the last one the
        # SIGKILL may have cut), their decisions among them.
        records = []
        for pod in pods:
            for f in _log_files(pod):
                lines = _log_lines(f)
                for i, line in enumerate(lines):
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        assert f == killed_run and i == len(lines) - 1, f"not JSON: {line!r} ({f})"
        assert any("ScaleUp" in r.get("message", "") for r in records), records[-20:]
        learnt = wait_for("learnt state in status", lambda: (h := bed.llmd(solo, "chat").get("status", {}).get("history", {}))
                          and h.get("plannedMix") and h.get("observingSince") and h, 90)

        # helm upgrade with a changed value rolls the operator; what was learnt stays.
        old = frozenset(p.metadata.uid for p in _operator_pods(bed))
        _helm("upgrade", RELEASE, str(ROOT / "charts/llmscale"), "-n", NAMESPACE, "--reuse-values",
              "--set", "prometheus.timeout=6", "--wait", "--timeout", "3m")
        new = wait_for("two new operator pods Ready, the old ones gone",
                       lambda: (p := _both_ready(bed)) and not {q.metadata.uid for q in p} & old and p, 120)
        rolled = time.time()
        assert all(any(e.value == "6" for e in p.spec.containers[0].env if e.name == "LLMSCALE_PROMETHEUS_TIMEOUT_S") for p in new)
        after = wait_for("a decision by a new pod", lambda: (s := bed.llmd(solo, "chat").get("status", {}))
                         and epoch(s.get("lastDecision", {}).get("time", "")) > rolled + 1 and s, 90)
        assert after["history"]["observingSince"] == learnt["observingSince"], "the learnt state was reset"
        assert after["history"].get("plannedMix"), after["history"]
        assert (after.get("replicas") or 0) >= 3, after  # no scale-down for what a restart forgot
    finally:
        stopping.set()
        replicas_watch.stop()
        bed.traffic(solo, "chat", rate=0)
        _helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)

    # helm uninstall: the LLMDeployment and the Deployment it owns are still there, and the CRD
    # (which the session's fixture applied before the install, so Helm did not own it here: Helm
    # never deletes a CRD of crds/ in any case).
    bed.kubectl("get", "crd", "llmdeployments.llmscale.io")
    assert bed.llmd(solo, "chat")["metadata"]["name"] == "chat"
    assert bed.apps.read_namespaced_deployment("chat-h100x1", solo).spec.replicas >= 3
    wait_for("the operator pods gone", lambda: not _operator_pods(bed), 60)
    bed.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
