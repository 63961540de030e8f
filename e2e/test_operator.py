"""The operator against a real API server: owned objects, columns, cascade, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .conftest import ROOT, Bed, wait_for

EXAMPLE = yaml.safe_load((ROOT / "examples/llama-8b-h100.yaml").read_text())


def _apply(bed: Bed, namespace: str, doc: dict, check: bool = True):  # type: ignore[no-untyped-def]
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    return bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=check)


def test_example_creates_deployment_and_service_then_cascades(bed: Bed, operator: object, namespace: str) -> None:
    _apply(bed, namespace, EXAMPLE)
    dep = wait_for("the owned Deployment", lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace), 60)
    c = dep.spec.template.spec.containers[0]
    assert c.resources.limits["nvidia.com/gpu"] == "1"
    assert "--tensor-parallel-size=1" in c.args and "--model=meta-llama/Llama-3.1-8B-Instruct" in c.args
    assert c.readiness_probe.http_get.path == "/health" and c.startup_probe.failure_threshold >= 180
    assert dep.spec.template.spec.node_selector["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert dep.metadata.owner_references[0].kind == "LLMDeployment"
    token = next(e for e in c.env if e.name == "HF_TOKEN")
    assert token.value is None and token.value_from.secret_key_ref.name == "hf-token"  # referenced, never copied
    svc = wait_for("the owned Service", lambda: bed.core.read_namespaced_service("llama-8b", namespace), 30)
    assert svc.spec.ports[0].port == 8000
    # Status fills in; kubectl get shows the columns.
    wait_for("readyReplicas 1", lambda: bed.llmd(namespace, "llama-8b").get("status", {}).get("readyReplicas") == 1, 90)
    out = bed.kubectl("get", "llmd", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "SHAPE", "REPLICAS", "READY", "TTFT", "COST/H", "SLO", "AGE"], out
    assert "h100x1" in out and "4.00" in out
    spec_before = EXAMPLE["spec"]
    assert bed.llmd(namespace, "llama-8b")["spec"]["model"] == spec_before["model"]  # the spec is the user's
    # Deleting the LLMDeployment removes what it owns.
    bed.kubectl("delete", "llmd", "llama-8b", "-n", namespace)

    def gone() -> bool:
        try:
            bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace)
            return False
        except Exception as e:
            return getattr(e, "status", None) == 404

    wait_for("the Deployment to be garbage-collected", gone, 60)


def test_malformed_cr_is_refused_with_a_message(bed: Bed, crd: None, namespace: str) -> None:
    bad = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "replicas": {"min": 5, "max": 2}}}
    r = _apply(bed, namespace, bad, check=False)
    assert r.returncode != 0 and "replicas.min must be less than or equal to replicas.max" in r.stderr
    bad = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "variants": [{"name": "a", "accelerator": "nvidia-h100"},
                                                               {"name": "a", "accelerator": "nvidia-h100"}]}}
    r = _apply(bed, namespace, bad, check=False)
    assert r.returncode != 0 and "variant names must be unique" in r.stderr
    bad = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "variants": [{"name": "a", "accelerator": "nvidia-a10g"}]}}
    r = _apply(bed, namespace, bad, check=False)
    assert r.returncode != 0 and "every variant's accelerator needs a price" in r.stderr
    bad = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "serving": {"volumes": [
        {"name": "c", "mountPath": "/c", "hostPath": {"path": "/c"}, "persistentVolumeClaim": {"claimName": "c"}}]}}}
    r = _apply(bed, namespace, bad, check=False)
    assert r.returncode != 0 and "set exactly one of persistentVolumeClaim and hostPath" in r.stderr, r.stderr
    bad = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "serving": {"volumes": [{"name": "dshm", "mountPath": "/c", "hostPath": {"path": "/c"}}]}}}
    r = _apply(bed, namespace, bad, check=False)
    assert r.returncode != 0 and "volume name 'dshm' is the operator's" in r.stderr, r.stderr
    bad = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "replicaz": 3}}
    r = _apply(bed, namespace, bad, check=False)
    assert r.returncode != 0 and 'unknown field "spec.replicaz"' in r.stderr


def test_a_host_path_mounts_only_where_the_platform_team_allows(bed: Bed, operator: object, namespace: str) -> None:
    """The operator creates the pods, so a tenant's hostPath would mount with the operator's rights:
    only directories under the operator's allowed_host_paths (the session operator allows
    /var/lib/llmscale) are rendered; any other is a condition and an Event, and nothing is applied."""
    def with_volume(path: str) -> dict:
        volume = {"name": "hf-cache", "mountPath": "/root/.cache/huggingface", "hostPath": {"path": path}}
        return {**EXAMPLE, "spec": {**EXAMPLE["spec"], "serving": {**EXAMPLE["spec"]["serving"], "volumes": [volume]}}}

    _apply(bed, namespace, with_volume("/var/lib/llmscale/hf-cache"))
    dep = wait_for("the owned Deployment", lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace), 60)
    cache = next(v for v in dep.spec.template.spec.volumes if v.name == "hf-cache")
    assert cache.host_path.path == "/var/lib/llmscale/hf-cache"
    assert any(m.name == "hf-cache" and m.mount_path == "/root/.cache/huggingface" for m in dep.spec.template.spec.containers[0].volume_mounts)
    _apply(bed, namespace, with_volume("/var/lib/llmscale/../../etc"))
    cond = wait_for("HostPathNotAllowed", lambda: next((c for c in bed.llmd(namespace, "llama-8b").get("status", {}).get("conditions", [])
                                                       if c.get("reason") == "HostPathNotAllowed"), None), 60)
    assert "/var/lib/llmscale/../../etc" in cond["message"], cond
    _apply(bed, namespace, with_volume("/"))
    wait_for("HostPathNotAllowed for /", lambda: "['/']" in next((c.get("message", "") for c in bed.llmd(namespace, "llama-8b")
                                                                  .get("status", {}).get("conditions", []) if c.get("reason") == "HostPathNotAllowed"), ""), 60)
    dep = bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace)
    assert all(v.host_path is None or v.host_path.path == "/var/lib/llmscale/hf-cache" for v in dep.spec.template.spec.volumes)
    reasons = [e.reason for e in bed.core.list_namespaced_event(namespace).items]
    assert "HostPathNotAllowed" in reasons, reasons


def test_engine_arg_conflict_is_a_condition_and_an_event(bed: Bed, operator: object, namespace: str) -> None:
    doc = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "engineArgs": ["--tensor-parallel-size=2"]}}
    _apply(bed, namespace, doc)

    def ready_false() -> dict | None:
        conds = bed.llmd(namespace, "llama-8b").get("status", {}).get("conditions", [])
        return next((c for c in conds if c["type"] == "Ready" and c["status"] == "False"), None)

    cond = wait_for("Ready=False", ready_false, 60)
    assert cond["reason"] == "EngineArgConflict" and "--tensor-parallel-size=2" in cond["message"]
    events = wait_for("a Warning Event", lambda: [e for e in bed.core.list_namespaced_event(namespace).items
                                                  if e.reason == "EngineArgConflict" and e.type == "Warning"], 30)
    assert events
    # Nothing half-applied.
    assert not bed.apps.list_namespaced_deployment(namespace).items


def test_kubectl_scale_sets_manual_replicas_in_paused_mode(bed: Bed, operator: object, namespace: str) -> None:
    doc = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "scaling": {"mode": "Paused", "interval": "2s"}}}
    _apply(bed, namespace, doc)
    wait_for("the Deployment", lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace), 60)
    bed.kubectl("scale", "llmd", "llama-8b", "-n", namespace, "--replicas=3")
    wait_for("3 replicas", lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace).spec.replicas == 3, 60)
    assert bed.llmd(namespace, "llama-8b")["spec"]["scaling"]["manualReplicas"] == 3


def test_chart_renders(bed: Bed) -> None:
    helm = Path.home() / ".cache/llmscale/helm-v3.21.4/helm"
    import subprocess

    r = subprocess.run([str(helm), "template", "llmscale", str(ROOT / "charts/llmscale"), "--include-crds", "--kube-version", "1.36.3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    for kind in ("CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"):
        assert kind in kinds, kinds
    # values.schema.json refuses a typo and a bad value with the path.
    for bad, says in ((["--set", "replicacount=2"], "additional properties 'replicacount' not allowed"),
                      (["--set", "logFormat=xml"], "/logFormat"),
                      (["--set", "prometheus.credentialsSecret=c", "--set", "prometheus.endpoints[0].name=t", "--set",
                        "prometheus.endpoints[0].url=https://p:9090", "--set", "prometheus.endpoints[0].namespaceSecret=c"],
                       "the operator's own credentialsSecret"),
                      # A credential over plain http:// off the operator's host, refused at template time
                      # as the operator refuses it at start.
                      (["--set", "prometheus.bearerTokenFile=/etc/llmscale/credentials/token"],
                       "is plain http:// and prometheus.bearerTokenFile is set"),
                      (["--set", "prometheus.endpoints[0].name=t", "--set", "prometheus.endpoints[0].url=http://p:9090",
                        "--set", "prometheus.endpoints[0].namespaceSecret=tok"],
                       "prometheus.endpoints t: http://p:9090 is plain http://"),
                      (["--set", "prometheus.endpoints[0].name=t", "--set", "prometheus.endpoints[0].url=https://p:9090",
                        "--set", "prometheus.endpoints[0].allowPlainHttp=true"], "additional properties 'allowPlainHttp'")):
        r = subprocess.run([str(helm), "template", "llmscale", str(ROOT / "charts/llmscale"), *bad], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and says in r.stderr, r.stderr
    # The chart's alerts are valid PromQL and alerting rules (promtool, from the Prometheus package).
    r = subprocess.run([str(helm), "template", "llmscale", str(ROOT / "charts/llmscale"), "--api-versions", "monitoring.coreos.com/v1",
                        "--show-only", "templates/monitoring.yaml"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rule = next(d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "PrometheusRule")
    rules = Path(bed.kubeconfig).parent / "chart-alerts.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS: 4 rules found" in check.stdout, check.stdout + check.stderr


def test_an_unreadable_history_field_resets_alone_and_is_reported(bed: Bed, operator: object, namespace: str) -> None:
    """Faults lose nothing: a field of status.history that does not parse (hand-edited, corrupt,
    another version) falls back to its default alone; what was learnt (the capacity correction)
    is kept, and a Warning Event names the field, never its value."""
    doc = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "scaling": {"interval": "2s"}}}
    _apply(bed, namespace, doc)
    wait_for("a history in status", lambda: bed.llmd(namespace, "llama-8b").get("status", {}).get("history"), 90)

    def reported() -> list:
        return [e for e in bed.core.list_namespaced_event(namespace).items
                if e.reason == "HistoryFieldsReset" and e.type == "Warning"]

    # Corrupt it again until a decision has read it (bounded: a few intervals; the operator may
    # have written over it first).
    for _ in range(10):
        patch = {"status": {"history": {"capacityCorrection": 0.42, "queueScrapes": "<script>garbage</script>"}}}
        bed.kubectl("patch", "llmd", "llama-8b", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(patch))
        try:
            events = wait_for("a HistoryFieldsReset Event", reported, 6)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no HistoryFieldsReset Event after 10 corruptions")
    assert "queueScrapes" in events[0].message and "garbage" not in events[0].message
    def rewritten() -> dict | None:
        h = bed.llmd(namespace, "llama-8b")["status"]["history"]
        return h if h.get("queueScrapes") != "<script>garbage</script>" else None

    history = wait_for("the history rewritten", rewritten, 30)
    assert history["capacityCorrection"] == 0.42  # the learned capacity survived its neighbour's corruption


def test_a_deployment_from_an_earlier_version_holds_the_operator_and_says_so(bed: Bed, operator: object, namespace: str) -> None:
    """An earlier build ran one Deployment named like the LLMDeployment: with it present, nothing is
    applied (two Deployments of one shape would double the fleet past the ceilings) and Ready=False
    says what to do; once it is deleted, the operator goes on."""
    _apply(bed, namespace, EXAMPLE)
    wait_for("the shape's Deployment", lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace), 60)
    uid = bed.llmd(namespace, "llama-8b")["metadata"]["uid"]
    labels = {"llmscale.io/deployment": "llama-8b", "llmscale.io/variant": "h100x1", "legacy": "yes"}
    bed.apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "llama-8b", "labels": labels, "ownerReferences": [
            {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment", "name": "llama-8b", "uid": uid, "controller": True}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "x", "image": "busybox"}]}}}})

    def ready() -> dict:
        return next((c for c in bed.llmd(namespace, "llama-8b").get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})

    cond = wait_for("Ready=False LegacyDeployment", lambda: ready().get("reason") == "LegacyDeployment" and ready(), 60)
    assert cond["status"] == "False" and "delete deployment/llama-8b" in cond["message"], cond
    events = [e for e in bed.core.list_namespaced_event(namespace).items if e.reason == "LegacyDeployment"]
    # Said once, not at every 5 s tick (a handler running on a status read just before the first
    # report landed may say it a second time).
    assert 1 <= len(events) <= 2, events
    # Nothing is applied while it exists: the shape's Deployment, deleted now, is not re-created.
    bed.apps.delete_namespaced_deployment("llama-8b-h100x1", namespace)
    import time

    time.sleep(12)
    assert [d.metadata.name for d in bed.apps.list_namespaced_deployment(namespace).items] == ["llama-8b"]
    bed.apps.delete_namespaced_deployment("llama-8b", namespace)
    wait_for("the shape's Deployment created again", lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace), 60)
    wait_for("Ready again", lambda: ready().get("status") == "True", 90)


def test_a_node_drain_takes_one_serving_pod_at_a_time(bed: Bed, operator: object, namespace: str) -> None:
    """Issue 11: `kubectl drain` of the node holding every replica. The owned PodDisruptionBudget lets
    the drain evict one serving pod at a time, the next only once its replacement is Ready
    elsewhere: Ready replicas never drop below all but one (without it all three go at once)."""
    import threading
    import time

    h100 = sorted(n.metadata.name for n in bed.core.list_node(label_selector="nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3").items)
    assert len(h100) >= 2, h100
    keep, others = h100[0], h100[1:]
    selector = "llmscale.io/deployment=llama-8b"

    def ready_pods() -> list:
        return [p for p in bed.core.list_namespaced_pod(namespace, label_selector=selector).items
                if not p.metadata.deletion_timestamp and any(c.type == "Ready" and c.status == "True"
                                                             for c in p.status.conditions or [])]

    try:
        for n in others:  # every replica on one node, so that the drain has three to evict
            bed.kubectl("cordon", n)
        doc = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "replicas": {"min": 3, "max": 3},
                                   "variants": [{**EXAMPLE["spec"]["variants"][0], "coldStart": "5s"}],
                                   "scaling": {**EXAMPLE["spec"]["scaling"], "interval": "3s"}}}
        _apply(bed, namespace, doc)
        wait_for("three Ready replicas on one node", lambda: len(ready_pods()) == 3
                 and {p.spec.node_name for p in ready_pods()} == {keep}, 120)
        pdb = bed.kubectl("get", "pdb", "llama-8b", "-n", namespace, "-o", "json").stdout
        assert '"maxUnavailable": 1' in pdb and '"kind": "LLMDeployment"' in pdb, pdb
        wait_for("the budget computed (one disruption allowed)",
                 lambda: '"disruptionsAllowed": 1' in bed.kubectl("get", "pdb", "llama-8b", "-n", namespace, "-o", "json").stdout, 60)
        for n in others:
            bed.kubectl("uncordon", n)
        lowest = [3]
        stop = threading.Event()

        def watch_ready() -> None:
            while not stop.is_set():
                try:
                    lowest[0] = min(lowest[0], len(ready_pods()))
                except Exception:  # a transient API error is no observation
                    pass
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_ready, daemon=True)
        watcher.start()
        r = bed.kubectl("drain", keep, f"--pod-selector={selector}", "--ignore-daemonsets", "--delete-emptydir-data",
                        "--timeout=150s", check=False)
        stop.set()
        watcher.join(5)
        assert r.returncode == 0, r.stderr
        assert lowest[0] >= 2, f"Ready replicas fell to {lowest[0]} during the drain"
        wait_for("three Ready replicas on other nodes", lambda: len(ready_pods()) == 3
                 and keep not in {p.spec.node_name for p in ready_pods()}, 120)
    finally:
        for n in h100:
            bed.kubectl("uncordon", n, check=False)


def test_replicas_set_by_hand_are_reported_once_and_not_fought_every_tick(bed: Bed, operator: object, namespace: str) -> None:
    """Issue 11: `kubectl scale` on an owned Deployment is detected from the Deployment's managed
    fields and said once in a Warning Event naming who set it, and in ReplicasSetOutside=True while
    the hand-set count stands (here the scale-down window, not yet covered by a minute of decisions,
    keeps it); the policy decides from the count it finds (too many for the load, so down to one),
    and its change takes the field back (ReplicasSetOutside=False)."""
    doc = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "replicas": {"min": 1, "max": 4},
                               "variants": [{**EXAMPLE["spec"]["variants"][0], "coldStart": "5s"}],
                               "scaling": {**EXAMPLE["spec"]["scaling"], "interval": "3s",
                                           "scaleDown": {"stabilizationWindow": "60s", "maxStep": 1}}}}
    _apply(bed, namespace, doc)
    bed.traffic(namespace, "llama-8b", rate=1, meanInput=200, meanOutput=100)
    wait_for("one Ready replica", lambda: bed.llmd(namespace, "llama-8b").get("status", {}).get("readyReplicas") == 1, 90)

    def cond() -> dict:
        return next((c for c in bed.llmd(namespace, "llama-8b").get("status", {}).get("conditions", [])
                     if c["type"] == "ReplicasSetOutside"), {})

    def said() -> list:
        return [e for e in bed.core.list_namespaced_event(namespace).items if e.reason == "ReplicasSetOutside"]

    wait_for("ReplicasSetOutside=False while llmscale sets the replicas", lambda: cond().get("status") == "False", 30)
    assert not said()
    bed.kubectl("scale", "deployment", "llama-8b-h100x1", "-n", namespace, "--replicas=3")
    events = wait_for("a Warning Event naming kubectl", said, 30)
    assert events[0].type == "Warning" and "llama-8b-h100x1 set by kubectl" in (events[0].message or ""), events[0].message
    standing = wait_for("ReplicasSetOutside=True while the hand-set count stands", lambda: (c := cond()).get("status") == "True" and c, 30)
    assert "llama-8b-h100x1 by kubectl" in standing.get("message", ""), standing
    assert bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace).spec.replicas == 3  # not fought at once
    wait_for("back to one replica by llmscale's own decisions",
             lambda: bed.apps.read_namespaced_deployment("llama-8b-h100x1", namespace).spec.replicas == 1, 150)
    wait_for("ReplicasSetOutside=False once llmscale set the count", lambda: cond().get("status") == "False", 30)
    again = said()
    assert len(again) == 1 and (again[0].count or 1) == 1, again  # said once, not at every tick


def test_deleting_the_namespace_of_a_serving_deployment_completes(bed: Bed, operator: object) -> None:
    """The operator's finalizer (kopf's, for the timer) is released when the namespace goes: the
    timer neither re-creates the Deployments the namespace controller deleted nor holds the
    LLMDeployment, and the namespace is gone within a minute."""
    import uuid

    from kubernetes import client

    ns = f"e2e-gone-{uuid.uuid4().hex[:6]}"
    bed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    doc = {**EXAMPLE, "spec": {**EXAMPLE["spec"], "variants": [{**EXAMPLE["spec"]["variants"][0], "coldStart": "5s"}],
                               "scaling": {**EXAMPLE["spec"]["scaling"], "interval": "2s"}}}
    _apply(bed, ns, doc)
    wait_for("one Ready replica", lambda: bed.llmd(ns, "llama-8b").get("status", {}).get("readyReplicas") == 1, 90)
    bed.core.delete_namespace(ns)

    def gone() -> bool:
        try:
            bed.core.read_namespace(ns)
            return False
        except Exception as e:
            return getattr(e, "status", None) == 404

    wait_for("the namespace deleted", gone, 60)
