"""pytest wiring for the local test bed: bring it up once per session (or reuse one that is up),
hand tests Kubernetes clients, the Prometheus URL, the fleet simulator and a running operator."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "e2e" / "cluster"
STATE = Path(os.environ.get("LLMSCALE_STATE", ROOT / "e2e" / ".state"))
PROM_URL = f"http://127.0.0.1:{os.environ.get('LLMSCALE_PROM_PORT', '19090')}"
FLEET_URL = f"http://127.0.0.1:{os.environ.get('LLMSCALE_FLEET_PORT', '18000')}"
OPERATOR_TOKEN = STATE / "operator-prometheus-token"
OPERATOR_LOG = STATE / "logs" / "operator-e2e.log"
# The fault tests' namespaces, each served by a test's own operator (with no session operator:
# scripts/test.sh runs e2e/test_faults.py in a pytest session of its own).
SOLO_PREFIX = "e2e-solo-"
SESSION_OPERATOR: list[subprocess.Popen[bytes]] = []  # the session's operator, once started
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

    def prom(self, query: str) -> float | None:
        """The bed's Prometheus: the first sample of an instant query (None when it has none)."""
        return instant_query(self.prom_url, query)


def instant_query(prom_url: str, query: str) -> float | None:
    """The first sample of an instant query to the Prometheus at `prom_url` (None when it has none)."""
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        result = json.load(r)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def last_decided(namespace: str, name: str, port: int = 18080) -> float | None:
    """When the operator serving /metrics on `port` last decided for one LLMDeployment (its
    llmscale_last_decision_timestamp_seconds): status keeps only decisions that changed something."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if (line.startswith("llmscale_last_decision_timestamp_seconds{") and f'namespace="{namespace}"' in line
                    and f'llmdeployment="{name}"' in line):
                return float(line.split()[-1])
    return None


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
    established(bed, "llmdeployments.llmscale.io")


def established(bed: Bed, crd: str) -> None:
    """Wait for a CRD to be served. Not `kubectl wait`: it fails at once, instead of waiting, when
    the API server has not yet given the new CRD any condition (seen in CI on a busy machine)."""
    def served() -> bool:
        r = bed.kubectl("get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type==\"Established\")].status}", check=False)
        return r.stdout.strip() == "True"

    wait_for(f"the CRD {crd} Established", served, 60, every=0.3)


HELM = Path(os.environ.get("LLMSCALE_CACHE", Path.home() / ".cache/llmscale")) / "helm-v3.21.4" / "helm"
OPERATOR_NAMESPACE = "llmscale-system"


def chart_kubeconfig(bed: Bed, release: str, name: str, *helm_args: str) -> Path:
    """A kubeconfig (STATE / `name`.kubeconfig) for the ServiceAccount of a release of the chart
    (rendered with `helm_args`) under the RBAC that release grants, as `helm install` creates them."""
    r = subprocess.run([str(HELM), "template", release, str(ROOT / "charts/llmscale"), "-n", OPERATOR_NAMESPACE,
                        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
                        "--kube-version", "1.36.3", *helm_args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    bed.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    bed.kubectl("apply", "-n", OPERATOR_NAMESPACE, "-f", "-", input=r.stdout)
    token = bed.kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=24h").stdout.strip()
    admin = yaml.safe_load(bed.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": account, "user": {"token": token}}],
              "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
              "current-context": account}
    path = STATE / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def operator_kubeconfig(bed: Bed, crd: None) -> Path:
    """A kubeconfig for the chart's ServiceAccount under the chart's ClusterRole, as `helm install`
    grants them: every operator of the e2e suite runs with that, never as cluster-admin, so a verb
    the chart forgot fails a test here before it fails a user."""
    return chart_kubeconfig(bed, "llmscale", "operator")


@pytest.fixture(scope="session")
def operator(bed: Bed, crd: None, ceilings: CeilingWatcher, operator_kubeconfig: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a normal process against the bed, under the chart's ServiceAccount and RBAC,
    with a bearer token for its Prometheus (the bed's Prometheus ignores it; the security tests
    check that it goes nowhere else)."""
    log = open(STATE / "logs" / "operator-e2e.log", "wb")
    OPERATOR_TOKEN.write_text(f"e2e-operator-token-{uuid.uuid4().hex}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(operator_kubeconfig), "--prometheus-url", bed.prom_url,
         "--metrics-port", "18080", "--health-port", "18081"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LLMSCALE_PROMETHEUS_BEARER_TOKEN_FILE": str(OPERATOR_TOKEN),
                                                   "LLMSCALE_ALLOWED_HOST_PATHS": '["/var/lib/llmscale"]'},
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
    SESSION_OPERATOR.append(proc)
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


class CeilingWatcher:
    """Every pod of every LLMDeployment, through a watch, priced at its own shape. A pod created
    when what its LLMDeployment's pods hold (scheduled, Pending or terminating: the operator counts
    them all) passes `maxGPUs` or `maxHourlyCost` is an operator action over a ceiling."""

    def __init__(self, bed: Bed) -> None:
        import threading

        self.bed = bed
        self.pods: dict[tuple[str, str], tuple[str, str, int]] = {}  # (ns, pod) -> (llmd, accelerator, gpus)
        self.violations: list[str] = []
        self.created = 0
        self.listed_once = False
        # Creations whose ceilings could not be read yet: (namespace, pod, LLMDeployment, [(accelerator, GPUs) held then]).
        self.pending: list[tuple[str, str, str, list[tuple[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ceilings(self, ns: str, name: str) -> tuple[int | None, float | None, dict[str, float]] | None:
        """The LLMDeployment's ceilings and prices; none when it is gone (its pods are not the
        operator's doing any more); None when it could not be read (checked again later)."""
        from kubernetes.client.exceptions import ApiException

        try:
            cost = self.bed.llmd(ns, name)["spec"].get("cost", {})
        except ApiException as e:
            if e.status == 404:
                return None, None, {}
            return None
        except Exception:
            return None
        ceiling = cost.get("maxHourlyCost")
        return cost.get("maxGPUs"), float(ceiling) if ceiling else None, {k: float(v) for k, v in (cost.get("prices") or {}).items()}

    def _run(self) -> None:
        from kubernetes import watch

        selector = "llmscale.io/deployment"
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    # (Re)list. A pod this watcher has not seen before, found by a list after a break
                    # (the API server restarted mid scale-up), was created meanwhile: it is checked
                    # as a creation, against everything listed with it. The first list is the
                    # starting point, not a creation.
                    listed = self.bed.core.list_pod_for_all_namespaces(label_selector=selector)
                    known, first = self.pods, not self.listed_once
                    self.pods = {}
                    for p in listed.items:
                        self._on("LISTED", p)
                    for p in listed.items:
                        if not first and (p.metadata.namespace, p.metadata.name) not in known:
                            self._created(p.metadata.namespace, p.metadata.name)
                    self.listed_once = True
                    rv = listed.metadata.resource_version
                w = watch.Watch()
                for ev in w.stream(self.bed.core.list_pod_for_all_namespaces, label_selector=selector,
                                   resource_version=rv, timeout_seconds=10):
                    self._on(ev["type"], ev["object"])
                    rv = w.resource_version
                    if self._stop.is_set():
                        return
                self._check_pending()
            except Exception:  # the watch expired (410) or the API server restarted: list again
                rv = None
                time.sleep(0.5)

    def _on(self, kind: str, pod: Any) -> None:
        md = pod.metadata
        key = (md.namespace, md.name)
        if kind == "DELETED":
            self.pods.pop(key, None)
            return
        ann = md.annotations or {}
        if "llmscale.io/gpus" not in ann or key in self.pods:
            return
        llmd = (md.labels or {}).get("llmscale.io/deployment", "")
        self.pods[key] = (llmd, ann.get("llmscale.io/accelerator", ""), int(ann["llmscale.io/gpus"]))
        if kind == "ADDED":
            self._created(md.namespace, md.name)

    def _created(self, ns: str, pod: str) -> None:
        """Check a new pod against its LLMDeployment's ceilings, with what its pods held then."""
        if (ns, pod) not in self.pods:
            return
        llmd = self.pods[(ns, pod)][0]
        self.created += 1
        held = [(a, g) for (n, _), (d, a, g) in self.pods.items() if n == ns and d == llmd]
        self.pending.append((ns, pod, llmd, held))
        self._check_pending()

    def _check_pending(self) -> None:
        waiting = []
        for ns, pod, llmd, held in self.pending:
            got = self._ceilings(ns, llmd)
            if got is None:  # the API server away: checked at the next event, or reported at the end
                waiting.append((ns, pod, llmd, held))
                continue
            max_gpus, max_cost, prices = got
            gpus = sum(g for _, g in held)
            cost = sum(g * prices.get(a, 0.0) for a, g in held)
            if max_gpus is not None and gpus > max_gpus:
                self.violations.append(f"{ns}/{pod}: {gpus} GPUs held > maxGPUs {max_gpus}")
            if max_cost is not None and cost > max_cost + 1e-6:
                self.violations.append(f"{ns}/{pod}: {cost:.2f}/h held > maxHourlyCost {max_cost:.2f}")
        self.pending = waiting

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)  # its watch ends within 10 s: the checks below do not race it


@pytest.fixture(scope="session", autouse=True)
def ceilings(bed: Bed) -> Iterator[CeilingWatcher]:
    """The ceiling watcher over the whole e2e session: the session fails on any violation."""
    w = CeilingWatcher(bed)
    yield w
    w.stop()
    w._check_pending()
    assert not w.violations, f"operator actions over a ceiling: {w.violations}"
    assert not w.pending, f"pods whose LLMDeployment's ceilings could never be read: {w.pending}"


@contextlib.contextmanager
def solo_namespace(bed: Bed) -> Iterator[str]:
    """A namespace for a test's own operator; on the way out, kopf's finalizers on what that
    operator served are released (it is gone by then, and the namespace would wait for it)."""
    from kubernetes import client

    name = f"{SOLO_PREFIX}{uuid.uuid4().hex[:6]}"
    bed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        for obj in bed.custom.list_namespaced_custom_object("llmscale.io", "v1alpha1", name, "llmdeployments").get("items", []):
            bed.kubectl("patch", "llmd", obj["metadata"]["name"], "-n", name, "--type=merge", "-p",
                        '{"metadata":{"finalizers":null}}', check=False)
        bed.core.delete_namespace(name)


@pytest.fixture
def solo(bed: Bed, operator_kubeconfig: Path) -> Iterator[str]:
    """A namespace the session's operator leaves alone, for a test's own operator (run, like every
    e2e operator, under the chart's ServiceAccount: STATE / "operator.kubeconfig")."""
    if any(p.poll() is None for p in SESSION_OPERATOR):
        pytest.skip("the session's operator would serve this test's objects too: run e2e/test_faults.py in a "
                    "pytest session of its own (scripts/test.sh does)")
    with solo_namespace(bed) as name:
        yield name


def chat_doc(namespace: str, **spec: Any) -> str:
    """A one-shape LLMDeployment `chat` of the bed (H100 pods, 5 s cold start, 3 s decisions), with
    `spec` fields replaced: the deployment the operator tests scale."""
    base: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "replicas": {"min": 1, "max": 6},
        "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "5s"}],
        "slo": {"ttft": {"target": "250ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
        "cost": {"maxGPUs": 6, "prices": {"nvidia-h100": "4.00"}},
        "scaling": {"interval": "3s", "scaleUp": {"maxStep": 4}},
        "metrics": {"rateWindow": "20s"},
        **spec,
    }
    return yaml.safe_dump({"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
                           "metadata": {"name": "chat", "namespace": namespace}, "spec": base})


def epoch(iso: str) -> float:
    """Seconds since the epoch of a status time (0 when there is none yet)."""
    import datetime as dt

    try:
        return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0.0


def project_version() -> str:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])
