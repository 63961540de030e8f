"""Changing the pod shape on the heterogeneous test bed (kwok H100 and L4 nodes): a switch from L4 to
H100 pods when the load grows, made before the L4 pods break, and back after the dwell time when
it falls; a rollback when no H100 is free. The ceiling watcher (conftest) judges every pod created."""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import Bed, CeilingWatcher, wait_for

# 60 req/s: L4 pods at 0.80/h carry 4-6 each at this SLO, so more of them than maxGPUs allows
# unless the planned mix is some 20 % short of the real one; one or two H100 pods at 4.00/h carry
# it all. (At 40 req/s a planned mix 5 % short, learnt from the few requests of the 1 req/s warm-up
# and kept by the 10 % planning hysteresis, let ten L4 pods carry it: the H100 was then a saving,
# and a saving waits for room that ten L4 pods at maxGPUs never leave; see issue 12's notes.)
LOAD = 60

SHAPES = [{"name": "l4x1", "accelerator": "nvidia-l4", "coldStart": "5s"},
          {"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "5s"}]


def _doc(namespace: str) -> str:
    spec: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        # An L4 holds 27k tokens of KV cache, not Llama-3.1's 128k: vLLM starts there only with this.
        "engineArgs": ["--max-model-len=8192"],
        "replicas": {"min": 1, "max": 10},
        "variants": SHAPES,
        "slo": {"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
        "cost": {"maxGPUs": 10, "maxHourlyCost": "12.00", "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        "scaling": {"interval": "3s", "scaleUp": {"maxStep": 4}, "scaleDown": {"stabilizationWindow": "20s", "maxStep": 2},
                    "variantSwitch": {"dwell": "60s", "unschedulableTimeout": "20s"}},
        "metrics": {"rateWindow": "20s"},
    }
    return yaml.safe_dump({"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
                           "metadata": {"name": "chat", "namespace": namespace}, "spec": spec})


def _status(bed: Bed, ns: str) -> dict[str, Any]:
    return bed.llmd(ns, "chat").get("status", {})


def _cond(bed: Bed, ns: str, ctype: str) -> dict[str, Any]:
    return next((c for c in _status(bed, ns).get("conditions", []) if c["type"] == ctype), {})


def _replicas(bed: Bed, ns: str, variant: str) -> int | None:
    try:
        return int(bed.apps.read_namespaced_deployment(f"chat-{variant}", ns).spec.replicas or 0)
    except Exception:
        return None


def _on_l4(bed: Bed, ns: str) -> None:
    bed.kubectl("apply", "-f", "-", input=_doc(ns))
    bed.traffic(ns, "chat", rate=1, meanInput=200, meanOutput=100)
    wait_for("the L4 shape serving", lambda: _status(bed, ns).get("shape") == "l4x1" and _status(bed, ns).get("readyReplicas"), 90)


def test_load_outgrows_l4_so_h100_takes_over_before_l4_stops_and_l4_comes_back_after_the_dwell(
        bed: Bed, operator: object, namespace: str, ceilings: CeilingWatcher) -> None:
    _on_l4(bed, namespace)
    bed.traffic(namespace, "chat", rate=LOAD, meanInput=200, meanOutput=100)
    wait_for("the switch to h100x1", lambda: _status(bed, namespace).get("variant") == "h100x1", 120)
    wait_for("the L4 Deployment at zero once H100 pods are Ready",
             lambda: _replicas(bed, namespace, "l4x1") == 0 and _status(bed, namespace).get("shape") == "h100x1", 120)
    st = _status(bed, namespace)
    assert st["variants"][0]["name"] == "h100x1" and st["variants"][0]["readyReplicas"] >= 1, st["variants"]
    reasons = [e.reason for e in bed.core.list_namespaced_event(namespace).items]
    assert "SwitchVariant" in reasons, reasons
    # The load falls: back to the cheaper shape, not before the dwell time.
    switched_at = _status(bed, namespace)["lastDecision"]["time"]
    bed.traffic(namespace, "chat", rate=0.5, meanInput=200, meanOutput=100)
    wait_for("back on l4x1", lambda: _status(bed, namespace).get("shape") == "l4x1" and _replicas(bed, namespace, "h100x1") == 0, 240)
    back = bed.apps.read_namespaced_deployment("chat-l4x1", namespace).metadata.annotations["llmscale.io/target-since"]
    h100 = bed.apps.read_namespaced_deployment("chat-h100x1", namespace).metadata.annotations["llmscale.io/target-since"]
    assert float(back) - float(h100) >= 60, (switched_at, back, h100)
    assert ceilings.created > 0 and not ceilings.violations, ceilings.violations


def take_h100s(bed: Bed, ns: str, pods: int, gpus_each: int) -> None:
    """Take H100 GPUs with other pods (the bed has four nodes of eight): `pods` pods of `gpus_each`."""
    labels = {"app": "h100-hog"}
    hog = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "h100-hog", "labels": labels},
           "spec": {"replicas": pods, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                                          "containers": [{"name": "hog", "image": "busybox",
                                                          "resources": {"limits": {"nvidia.com/gpu": str(gpus_each)}}}]}}}}
    bed.apps.create_namespaced_deployment(ns, hog)

    def scheduled() -> bool:
        got = bed.core.list_namespaced_pod(ns, label_selector="app=h100-hog").items
        return len(got) == pods and all(p.spec.node_name for p in got)

    wait_for(f"{pods * gpus_each} H100 GPUs taken by other pods", scheduled, 90)


def test_no_free_h100_rolls_the_switch_back_with_a_condition_and_keeps_l4_serving(
        bed: Bed, operator: object, namespace: str, ceilings: CeilingWatcher) -> None:
    take_h100s(bed, namespace, 4, 8)  # every one
    _on_l4(bed, namespace)
    bed.traffic(namespace, "chat", rate=LOAD, meanInput=200, meanOutput=100)
    wait_for("the switch to h100x1 started", lambda: _replicas(bed, namespace, "h100x1"), 120)
    failed = wait_for("VariantSwitchFailed", lambda: _cond(bed, namespace, "VariantSwitchFailed").get("status") == "True"
                      and _cond(bed, namespace, "VariantSwitchFailed"), 90)
    assert "Unschedulable" in failed["message"] and "nvidia-h100" in failed["message"], failed
    wait_for("the H100 Deployment back at zero", lambda: _replicas(bed, namespace, "h100x1") == 0, 30)
    st = _status(bed, namespace)
    assert st["variant"] == "l4x1" and st["readyReplicas"] >= 1, st
    events = [e for e in bed.core.list_namespaced_event(namespace).items if e.reason == "VariantSwitchFailed"]
    assert events and "Unschedulable" in (events[0].message or ""), events
    ann = bed.apps.read_namespaced_deployment("chat-h100x1", namespace).metadata.annotations
    assert ann.get("llmscale.io/switch-failed", "").split(" ", 1)[1].startswith("Unschedulable"), ann
    # Not retried before the dwell time: the shape stays L4 for the next 20 s.
    for _ in range(20):
        assert _replicas(bed, namespace, "h100x1") == 0 and _status(bed, namespace).get("variant") == "l4x1"
        __import__("time").sleep(1)
    assert not ceilings.violations, ceilings.violations


# Past what one H100 pod carries at this SLO and mix (some 78 req/s; an L4 pod about 4): two H100 pods
# are planned, and one H100 GPU is free.
SPILL_LOAD = 100


def _spill_doc(namespace: str) -> str:
    # H100 first, and a dwell that keeps it: a platform team that prefers H100 pods. Behind a
    # load-aware gateway (the fleet simulator routes to the least-loaded pod), so L4 pods beside an
    # H100 carry their own capacity.
    spec: dict[str, Any] = yaml.safe_load(_doc(namespace))["spec"]
    spec["variants"] = [SHAPES[1], SHAPES[0]]
    spec["routing"] = "LoadAware"
    spec["cost"]["maxGPUs"] = 12
    spec["cost"].pop("maxHourlyCost")
    spec["scaling"]["variantSwitch"] = {"dwell": "30m", "unschedulableTimeout": "20s", "spillAfter": "10s"}
    return yaml.safe_dump({"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
                           "metadata": {"name": "chat", "namespace": namespace}, "spec": spec})


def test_h100s_run_out_so_l4_pods_carry_the_pending_share_and_retire_once_h100s_free_up(
        bed: Bed, operator: object, namespace: str, ceilings: CeilingWatcher) -> None:
    take_h100s(bed, namespace, 31, 1)  # every one but one
    bed.kubectl("apply", "-f", "-", input=_spill_doc(namespace))
    bed.traffic(namespace, "chat", rate=1, meanInput=200, meanOutput=100, routing="LoadAware")
    wait_for("one H100 pod serving", lambda: _status(bed, namespace).get("shape") == "h100x1"
             and _status(bed, namespace).get("readyReplicas"), 90)
    # The load outgrows the one H100 pod: the next ones wait for GPUs, and after spillAfter L4 pods carry their share.
    bed.traffic(namespace, "chat", rate=SPILL_LOAD, meanInput=200, meanOutput=100, routing="LoadAware")
    wait_for("L4 pods beside the H100 one", lambda: (_replicas(bed, namespace, "l4x1") or 0) > 0
             and _status(bed, namespace).get("shape", "").endswith("+l4x1"), 120)
    st = _status(bed, namespace)
    assert st["variant"] == "h100x1" and st["history"].get("spillShape") == "l4x1", st
    assert any(v["name"] == "l4x1" and v["role"] == "Spill" for v in st["variants"]), st["variants"]
    # Marked on its Deployment too: a restart that lost status still knows spill pods from a switch.
    ann = bed.apps.read_namespaced_deployment("chat-l4x1", namespace).metadata.annotations
    assert ann.get("llmscale.io/spill-for") == "h100x1", ann
    assert _cond(bed, namespace, "VariantSwitchFailed").get("status") != "True"
    wait_for("L4 pods Ready", lambda: any(v["name"] == "l4x1" and v["readyReplicas"] for v in _status(bed, namespace)["variants"]), 60)
    # No rollback while the L4 pods serve beside the H100 one (unschedulableTimeout is 20 s).
    for _ in range(25):
        st = _status(bed, namespace)
        assert st["variant"] == "h100x1" and (_replicas(bed, namespace, "h100x1") or 0) >= 2, st
        __import__("time").sleep(1)
    assert _cond(bed, namespace, "VariantSwitchFailed").get("status") != "True"
    # H100s free up: the waiting pods start, and the L4 pods retire once the H100 pods carry the load.
    bed.apps.delete_namespaced_deployment("h100-hog", namespace)
    wait_for("the L4 pods retired", lambda: _replicas(bed, namespace, "l4x1") == 0 and _status(bed, namespace).get("shape") == "h100x1", 180)
    st = _status(bed, namespace)
    assert st["variants"][0]["name"] == "h100x1" and st["variants"][0]["readyReplicas"] >= 2, st["variants"]
    wait_for("the spill mark gone", lambda: "llmscale.io/spill-for" not in (
        bed.apps.read_namespaced_deployment("chat-l4x1", namespace).metadata.annotations or {}), 60)
    reasons = {e.reason for e in bed.core.list_namespaced_event(namespace).items}
    assert "VariantSwitchFailed" not in reasons, reasons
    assert ceilings.created > 0 and not ceilings.violations, ceilings.violations


def test_a_new_deployment_with_every_h100_taken_is_served_by_an_l4_pod_before_any_traffic(
        bed: Bed, operator: object, namespace: str, ceilings: CeilingWatcher) -> None:
    """Review: with no pod ever Ready there are no metrics and no token mix, unknown meant hold, and
    the spill never started: a new deployment whose GPU type was taken never served. The floor
    (replicas.min) is known without them: one L4 pod stands in for the H100 pod that waits."""
    take_h100s(bed, namespace, 4, 8)  # every one
    bed.kubectl("apply", "-f", "-", input=_spill_doc(namespace))
    wait_for("an L4 pod Ready in the H100 pod's stead", lambda: any(
        v["name"] == "l4x1" and v["readyReplicas"] >= 1 for v in _status(bed, namespace).get("variants", [])), 120)
    st = _status(bed, namespace)
    assert st["variant"] == "h100x1" and st["history"].get("spillShape") == "l4x1", st
    assert any(v["name"] == "l4x1" and v["role"] == "Spill" for v in st["variants"]), st["variants"]
    assert _replicas(bed, namespace, "h100x1") == 1 and _replicas(bed, namespace, "l4x1") == 1
    ann = bed.apps.read_namespaced_deployment("chat-l4x1", namespace).metadata.annotations
    assert ann.get("llmscale.io/spill-for") == "h100x1", ann
    # It serves: traffic now gets answered by the L4 pod, and the floor is not a flap (one L4 pod).
    bed.traffic(namespace, "chat", rate=1, meanInput=200, meanOutput=100, routing="LoadAware")
    wait_for("requests served", lambda: (_status(bed, namespace).get("observed") or {}).get("requestRate") or None, 90)
    assert _replicas(bed, namespace, "l4x1") == 1 and _cond(bed, namespace, "VariantSwitchFailed").get("status") != "True"
    assert ceilings.created > 0 and not ceilings.violations, ceilings.violations


def _held_gpus(bed: Bed, ns: str) -> int:
    """GPUs the LLMDeployment's pods hold on nodes (scheduled, terminating included: one GPU each)."""
    return sum(1 for p in bed.core.list_namespaced_pod(ns, label_selector="llmscale.io/deployment=chat").items
               if p.spec.node_name)


def test_a_ceiling_lowered_mid_spill_is_held_once_the_spill_pods_drain(
        bed: Bed, operator: object, namespace: str, ceilings: CeilingWatcher) -> None:
    """Issue 12's goal: after a user lowers a ceiling, back under it within the drain time plus one
    interval. What serves goes last: the H100 pods waiting for GPUs first (they serve nothing),
    then L4 spill pods, down to what fits beside the H100 pod that serves; no pod is created over
    the lowered ceiling (the watcher)."""
    take_h100s(bed, namespace, 31, 1)
    bed.kubectl("apply", "-f", "-", input=_spill_doc(namespace))
    bed.traffic(namespace, "chat", rate=1, meanInput=200, meanOutput=100, routing="LoadAware")
    wait_for("one H100 pod serving", lambda: _status(bed, namespace).get("shape") == "h100x1"
             and _status(bed, namespace).get("readyReplicas"), 90)
    bed.traffic(namespace, "chat", rate=SPILL_LOAD, meanInput=200, meanOutput=100, routing="LoadAware")
    wait_for("L4 spill pods Ready", lambda: _status(bed, namespace).get("shape", "").endswith("+l4x1") and any(
        v["name"] == "l4x1" and v["readyReplicas"] >= 2 for v in _status(bed, namespace)["variants"]), 150)
    assert (_replicas(bed, namespace, "h100x1") or 0) >= 2  # one H100 pod serves, the others wait for GPUs
    lowered = 3  # the serving H100 pod and two L4 pods
    bed.kubectl("patch", "llmd", "chat", "-n", namespace, "--type=merge", "-p", f'{{"spec": {{"cost": {{"maxGPUs": {lowered}}}}}}}')
    # Within one interval (3 s) or two, the Deployments ask for no more than the ceiling: the
    # waiting H100 pods go, and L4 pods down to what fits.
    def counts() -> tuple[int, int] | None:
        got = (_replicas(bed, namespace, "h100x1") or 0, _replicas(bed, namespace, "l4x1") or 0)
        return got if sum(got) <= lowered else None

    got = wait_for("the Deployments under the lowered ceiling", counts, 20)
    assert got[1] >= 1, got  # L4 pods still serve beside the H100 one (the next decisions may trade one for an H100 pod)
    events = [e for e in bed.core.list_namespaced_event(namespace).items if e.reason == "ScaleDown"]
    assert any("BudgetLimitedGPUs" in (e.message or "") and "lowered under what runs" in (e.message or "") for e in events), \
        [e.message for e in events]
    # The pods let go drain (serving.drainTimeout 120 s at most); then the pods on nodes hold no more.
    wait_for("the pods on nodes under the lowered ceiling", lambda: _held_gpus(bed, namespace) <= lowered, 150)
    assert ceilings.created > 0 and not ceilings.violations, ceilings.violations
