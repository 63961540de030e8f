"""Rendering the owned Deployment and Service: table-driven."""

from __future__ import annotations

import pytest

from llmscale.api import parse_spec
from llmscale.controller.render import (
    engine_arg_conflicts,
    render_deployment,
    render_service,
    surge_within_ceilings,
)
from llmscale.controller.status import merge_conditions
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
    assert d["spec"]["selector"]["matchLabels"] == {"llmscale.io/deployment": "chat"}
    assert d["spec"]["template"]["metadata"]["labels"]["llmscale.io/variant"] == variant["name"]


def test_tolerations_and_node_selector_are_copied() -> None:
    spec = parse_spec(spec_dict(variants=[{"name": "a", "accelerator": "nvidia-h100", "nodeSelector": {"pool": "gpu"},
                                           "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]}]))
    pod = render_deployment(BODY, spec, spec.variants[0], 1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["pool"] == "gpu"
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in pod["tolerations"]


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


def test_surge_never_crosses_the_ceilings() -> None:
    spec = parse_spec(spec_dict(cost={"maxGPUs": 8, "maxHourlyCost": "30", "prices": {"nvidia-h100": "4"}}))
    v = spec.variants[0]
    assert surge_within_ceilings(spec, v, 7) == 0  # 7 x 4 = 28; one more would be 32 > 30
    assert surge_within_ceilings(spec, v, 4) == 1


def test_conditions_keep_transition_time_until_status_flips() -> None:
    c1, ch1 = merge_conditions([], {"SLOMet": ("True", "SLOMet", "ok")}, 1000.0, 1)
    assert ch1 == [("SLOMet", "", "True", "SLOMet")]
    c2, ch2 = merge_conditions(c1, {"SLOMet": ("True", "SLOMet", "still ok")}, 2000.0, 1)
    assert ch2 == [] and c2[0]["lastTransitionTime"] == c1[0]["lastTransitionTime"] and c2[0]["message"] == "still ok"
    c3, ch3 = merge_conditions(c2, {"SLOMet": ("False", "SLOBreached", "slow")}, 3000.0, 2)
    assert ch3 == [("SLOMet", "True", "False", "SLOBreached")] and c3[0]["lastTransitionTime"] != c1[0]["lastTransitionTime"]
