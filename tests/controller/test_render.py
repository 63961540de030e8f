"""Rendering the owned Deployment and Service: table-driven."""

from __future__ import annotations

import pytest

from llmscale.api import parse_spec
from llmscale.controller.handlers import shown_spill
from llmscale.controller.render import (
    engine_arg_conflicts,
    host_paths_not_allowed,
    render_deployment,
    render_disruption_budget,
    render_service,
)
from llmscale.controller.status import merge_conditions, shape_status
from llmscale.policy.types import PodCounts, Workload
from tests.conftest import spec_dict

BODY = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "1234-5678", "generation": 3}}


@pytest.mark.parametrize(
    ("variant", "gpus", "product"),
    [
        ({"name": "h100x1", "accelerator": "nvidia-h100"}, "1", "NVIDIA-H100-80GB-HBM3"),
        ({"name": "h100x4", "accelerator": "nvidia-h100", "gpusPerReplica": 4}, "4", "NVIDIA-H100-80GB-HBM3"),
        ({"name": "l4x1", "accelerator": "nvidia-l4"}, "1", "NVIDIA-L4"),
        ({"name": "custom", "accelerator": "nvidia-h100", "gpuProduct": "NVIDIA-H100-NVL"}, "1", "NVIDIA-H100-NVL"),
    ],
)
def test_deployment_shape(variant: dict, gpus: str, product: str) -> None:
    spec = parse_spec(spec_dict(variants=[variant], engineArgs=["--max-model-len=8192"]))
    d = render_deployment(BODY, spec, spec.variants[0], 3)
    assert d["spec"]["replicas"] == 3
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert f"--tensor-parallel-size={gpus}" in c["args"]
    assert "--model=meta-llama/Llama-3.1-8B-Instruct" in c["args"] and "--max-model-len=8192" in c["args"]
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == product
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 30 * 60  # minutes of loading
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert pod["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"]
    ref = d["metadata"]["ownerReferences"][0]
    assert ref["uid"] == "1234-5678" and ref["controller"] is True
    assert d["spec"]["selector"]["matchLabels"] == {"llmscale.io/deployment": "chat", "llmscale.io/variant": spec.variants[0].name}
    assert d["spec"]["template"]["metadata"]["labels"]["llmscale.io/variant"] == variant["name"]


def test_tolerations_and_node_selector_are_copied() -> None:
    spec = parse_spec(spec_dict(variants=[{"name": "a", "accelerator": "nvidia-h100", "nodeSelector": {"pool": "gpu"},
                                           "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]}]))
    pod = render_deployment(BODY, spec, spec.variants[0], 1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["pool"] == "gpu"
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in pod["tolerations"]


def test_secrets_volumes_and_pull_secrets_reach_the_server_pod() -> None:
    """Issue 13: gated models need a token from a Secret, private registries a pull secret, and a
    model cache a volume; the token is referenced, never copied into the Deployment."""
    spec = parse_spec(spec_dict(serving={
        "env": {"VLLM_LOGGING_LEVEL": "INFO"},
        "secretEnv": [{"name": "HF_TOKEN", "secret": "hf-token", "key": "token"}],
        "imagePullSecrets": ["regcred"],
        "volumes": [{"name": "hf-cache", "mountPath": "/root/.cache/huggingface", "persistentVolumeClaim": {"claimName": "hf-cache"}},
                    {"name": "local", "mountPath": "/models", "readOnly": True, "hostPath": {"path": "/mnt/models", "type": "Directory"}}],
    }))
    pod = render_deployment(BODY, spec, spec.variants[0], 1)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["env"] == [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
                        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": False}}}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                              {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache", "readOnly": False}},
                              {"name": "local", "hostPath": {"path": "/mnt/models", "type": "Directory"}}]
    assert c["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"},
                                 {"name": "hf-cache", "mountPath": "/root/.cache/huggingface", "readOnly": False},
                                 {"name": "local", "mountPath": "/models", "readOnly": True}]
    plain = render_deployment(BODY, parse_spec(spec_dict()), parse_spec(spec_dict()).variants[0], 1)["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in plain and len(plain["volumes"]) == 1


@pytest.mark.parametrize(("path", "allowed", "refused"), [
    ("/var/lib/llmscale/hf", [], True),                      # none allowed unless the platform team lists it
    ("/var/lib/llmscale/hf", ["/var/lib/llmscale"], False),
    ("/var/lib/llmscale", ["/var/lib/llmscale/"], False),
    ("/var/lib/llmscale-other", ["/var/lib/llmscale"], True),  # a prefix of the name is not the directory
    ("/var/lib/llmscale/../../etc", ["/var/lib/llmscale"], True),
    ("/", ["/var/lib/llmscale"], True),
    ("/etc", ["/"], True),                                   # "/" in the list allows nothing
])
def test_a_host_path_mounts_only_under_what_the_platform_team_allows(path: str, allowed: list[str], refused: bool) -> None:
    spec = parse_spec(spec_dict(serving={"volumes": [{"name": "c", "mountPath": "/c", "hostPath": {"path": path}}]}))
    assert host_paths_not_allowed(spec, allowed) == ([path] if refused else [])


def test_service() -> None:
    spec = parse_spec(spec_dict())
    s = render_service(BODY, spec)
    assert s["spec"]["selector"] == {"llmscale.io/deployment": "chat"}
    assert s["spec"]["ports"][0]["port"] == 8000


@pytest.mark.parametrize(
    ("args", "bad"),
    [(["--max-model-len=8192"], []), (["--model=other"], ["--model=other"]), (["--port=9000"], ["--port=9000"]),
     (["--tensor-parallel-size=2", "--enforce-eager"], ["--tensor-parallel-size=2"])],
)
def test_engine_arg_conflicts(args: list[str], bad: list[str]) -> None:
    assert engine_arg_conflicts(parse_spec(spec_dict(engineArgs=args))) == bad


def test_one_deployment_per_shape_whose_selector_never_overlaps_another() -> None:
    spec = parse_spec(spec_dict(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"},
                                          {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2}]))
    a = render_deployment(BODY, spec, spec.variants[0], 2, {"llmscale.io/target-since": "1000"})
    b = render_deployment(BODY, spec, spec.variants[1], 1, surge=False)
    assert (a["metadata"]["name"], b["metadata"]["name"]) == ("chat-l4x1", "chat-h100x2")
    assert a["spec"]["selector"]["matchLabels"] == {"llmscale.io/deployment": "chat", "llmscale.io/variant": "l4x1"}
    assert b["spec"]["selector"]["matchLabels"] == {"llmscale.io/deployment": "chat", "llmscale.io/variant": "h100x2"}
    assert a["metadata"]["annotations"] == {"llmscale.io/accelerator": "nvidia-l4", "llmscale.io/gpus": "1",
                                            "llmscale.io/target-since": "1000"}
    # A template change surges one pod only where the ceilings leave room for it.
    assert a["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert b["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # The Service selects every shape's pods.
    assert render_service(BODY, spec)["spec"]["selector"] == {"llmscale.io/deployment": "chat"}


def test_status_counts_every_pod_holding_gpus_at_its_own_price() -> None:
    spec = parse_spec(spec_dict(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"},
                                          {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2}],
                                cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = Workload(variant="h100x2", replicas=2, ready=1, desired={"l4x1": 4, "h100x2": 2},
                 pods={"l4x1": PodCounts(ready=4, terminating=1), "h100x2": PodCounts(ready=1, starting=1)})
    assert shape_status(spec, w, {"l4x1": 2, "h100x2": 2}) == {
        "variant": "h100x2", "replicas": 4, "readyReplicas": 5, "gpus": 9, "hourlyCost": "20.00",
        "shape": "l4x1->h100x2",
        "variants": [{"name": "h100x2", "replicas": 2, "readyReplicas": 1, "gpus": 4, "role": "Target"},
                     {"name": "l4x1", "replicas": 2, "readyReplicas": 4, "gpus": 5, "role": "Retiring"}],
        "switch": {"from": "l4x1", "to": "h100x2", "ready": 1, "target": 2},
    }


def test_status_shows_spill_pods_beside_the_target_not_as_a_switch() -> None:
    spec = parse_spec(spec_dict(variants=[{"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2},
                                          {"name": "l4x1", "accelerator": "nvidia-l4"}],
                                cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    w = Workload(variant="h100x2", replicas=4, ready=2, desired={"h100x2": 4, "l4x1": 3},
                 pods={"h100x2": PodCounts(ready=2, unschedulable=2), "l4x1": PodCounts(ready=1, starting=2)})
    assert shape_status(spec, w, {"h100x2": 4, "l4x1": 3}, spill="l4x1") == {
        "variant": "h100x2", "replicas": 7, "readyReplicas": 3, "gpus": 11, "hourlyCost": "34.40",
        "shape": "h100x2+l4x1",
        "variants": [{"name": "h100x2", "replicas": 4, "readyReplicas": 2, "gpus": 8, "role": "Target"},
                     {"name": "l4x1", "replicas": 3, "readyReplicas": 1, "gpus": 3, "role": "Spill"}],
        "switch": None,
    }


@pytest.mark.parametrize(("applied", "decided", "remembered", "marked", "shown"), [
    ("applied", "l4x1", None, None, "l4x1"),          # a spill just started
    ("applied", None, "l4x1", "l4x1", None),          # a spill just ended: its pods retire
    # Nothing applied: the spill the policy read. After a restart that lost status (CI, stop 41:
    # "l4x1->h100x1" shown as a switch while status.history said spillShape l4x1), the mark.
    ("unapplied", "l4x1", None, "l4x1", "l4x1"),
    ("unapplied", "l4x1", "l4x1", None, "l4x1"),
    ("unapplied", "l4x1", None, None, None),          # recommend-only: what it would do is not what runs
    ("unapplied", None, None, None, None),
])
def test_status_shows_the_spill_that_runs(applied: str, decided: str | None, remembered: str | None,
                                          marked: str | None, shown: str | None) -> None:
    assert shown_spill(applied == "applied", decided, remembered, marked) == shown


def test_conditions_keep_transition_time_until_status_flips() -> None:
    c1, ch1 = merge_conditions([], {"SLOMet": ("True", "SLOMet", "ok")}, 1000.0, 1)
    assert ch1 == [("SLOMet", "", "True", "SLOMet")]
    c2, ch2 = merge_conditions(c1, {"SLOMet": ("True", "SLOMet", "still ok")}, 2000.0, 1)
    assert ch2 == [] and c2[0]["lastTransitionTime"] == c1[0]["lastTransitionTime"] and c2[0]["message"] == "still ok"
    c3, ch3 = merge_conditions(c2, {"SLOMet": ("False", "SLOBreached", "slow")}, 3000.0, 2)
    assert ch3 == [("SLOMet", "True", "False", "SLOBreached")] and c3[0]["lastTransitionTime"] != c1[0]["lastTransitionTime"]


def test_a_disruption_budget_lets_a_drain_take_one_serving_pod_at_a_time() -> None:
    pdb = render_disruption_budget(BODY)
    assert pdb == {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "chat", "namespace": BODY["metadata"]["namespace"],
                     "labels": {"app.kubernetes.io/managed-by": "llmscale", "llmscale.io/deployment": "chat"},
                     "ownerReferences": [pdb["metadata"]["ownerReferences"][0]]},
        "spec": {"selector": {"matchLabels": {"llmscale.io/deployment": "chat"}}, "maxUnavailable": 1,
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }
    owner = pdb["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "LLMDeployment" and owner["uid"] == BODY["metadata"]["uid"] and owner["controller"] is True


def test_no_budget_over_pods_that_another_budget_already_covers() -> None:
    """Two budgets over one pod make every eviction of it fail: llmscale adds none where the
    platform's (or the user's) already selects its pods, or holds its name."""
    import json
    from types import SimpleNamespace as NS
    from typing import Any

    from llmscale.controller.kube import Kube

    def pdb(name: str, labels: dict | None, owner: str | None = None, exprs: list | None = None) -> dict[str, Any]:
        """A budget as the API server's JSON gives it."""
        selector: dict[str, Any] = {}
        if labels is not None:
            selector["matchLabels"] = labels
        if exprs is not None:
            selector["matchExpressions"] = exprs
        return {"metadata": {"name": name, "ownerReferences": [{"kind": "LLMDeployment", "name": owner}] if owner else []},
                "spec": {"selector": selector}}

    def other(*items: dict[str, Any]) -> str | None:
        kube = Kube.__new__(Kube)
        body = json.dumps({"items": list(items)}).encode()
        kube.policy = NS(list_namespaced_pod_disruption_budget=lambda ns, **kw: NS(data=body))  # type: ignore[assignment]
        return kube.other_disruption_budget("ns", "chat")

    assert other() is None
    assert other(pdb("chat", {"llmscale.io/deployment": "chat"}, owner="chat")) is None  # ours
    assert other(pdb("platform-vllm", {"app.kubernetes.io/name": "vllm"})) == "platform-vllm"
    assert other(pdb("chat", {"app": "other"})) == "chat"  # someone else's under our name: not taken over
    assert other(pdb("other-app", {"app.kubernetes.io/name": "redis"})) is None
    assert other(pdb("by-variant", {"llmscale.io/deployment": "chat", "llmscale.io/variant": "h100x1"})) == "by-variant"
    assert other(pdb("exprs", None, exprs=[{"key": "app", "operator": "Exists"}])) is None
