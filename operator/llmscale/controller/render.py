"""Render the objects an LLMDeployment owns: one Deployment of vLLM server pods per pod shape
(variant), `<name>-<variant>`, and one Service over all of them.

One Deployment per shape keeps every pod at its own GPU count and price: a change of shape is
the operator moving replicas from one Deployment to another, step by step (policy/rollout.py),
never a rolling update that Kubernetes paces in pod counts.

Pure: spec + decision in, manifests out. Applied with server-side apply under the operator's
own field manager, so fields that others own (an admission webhook's, a user's labels) are kept.
"""

from __future__ import annotations

import math
from typing import Any

from llmscale.api.models import OPERATOR_OWNED_ENGINE_FLAGS, LLMDeploymentSpec, ModelVolume, Variant
from llmscale.api.units import parse_duration
from llmscale.perf.hardware import gpu_for

FIELD_MANAGER = "llmscale"
LABEL_DEPLOYMENT = "llmscale.io/deployment"
LABEL_VARIANT = "llmscale.io/variant"
# On a variant's Deployment: when it became the target shape (the newest is the target), and
# when and why a switch to it failed. Kept on the owned objects so that a restart resumes a switch.
ANNOTATION_TARGET_SINCE = "llmscale.io/target-since"
ANNOTATION_SWITCH_FAILED = "llmscale.io/switch-failed"
# On a spill shape's Deployment, naming the target whose Pending pods it stands in for: written with
# its replicas, so that a restart that lost status still knows spill pods from a switch's old shape.
ANNOTATION_SPILL_FOR = "llmscale.io/spill-for"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


class RenderError(ValueError):
    """The spec is valid for the schema but cannot be turned into a workload (e.g. conflicting engine args)."""


def host_paths_not_allowed(spec: LLMDeploymentSpec, allowed: list[str]) -> list[str]:
    """The spec's hostPath volumes outside the platform team's allow-list (directory prefixes).
    The operator creates the pods, so a hostPath a tenant names would mount with the operator's
    rights, not the tenant's: none is allowed unless the platform team lists it."""
    def inside(path: str) -> bool:
        p = path.rstrip("/") or "/"
        return any(p == a.rstrip("/") or p.startswith(a.rstrip("/") + "/") for a in allowed if a.startswith("/") and a != "/")
    return [v.host_path.path for v in spec.serving.volumes if v.host_path is not None and (".." in v.host_path.path.split("/")
                                                                                             or not inside(v.host_path.path))]


def engine_arg_conflicts(spec: LLMDeploymentSpec) -> list[str]:
    """Engine args that set a flag the operator owns (--model, --port, --tensor-parallel-size, --host)."""
    bad = []
    for arg in spec.engine_args:
        flag = arg.split("=", 1)[0].strip()
        if flag in OPERATOR_OWNED_ENGINE_FLAGS or flag == "-tp":
            bad.append(arg)
    return bad


def selector_labels(name: str) -> dict[str, str]:
    """The Service's selector: every shape's pods."""
    return {LABEL_DEPLOYMENT: name}


def deployment_name(name: str, variant: str) -> str:
    return f"{name}-{variant}"


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    md = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", "llmscale.io/v1alpha1"),
        "kind": body.get("kind", "LLMDeployment"),
        "name": md["name"],
        "uid": md["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _volume(v: ModelVolume) -> dict[str, Any]:
    if v.persistent_volume_claim is not None:
        return {"name": v.name, "persistentVolumeClaim": {"claimName": v.persistent_volume_claim.claim_name, "readOnly": v.read_only}}
    assert v.host_path is not None  # the model allows exactly one source
    return {"name": v.name, "hostPath": {"path": v.host_path.path, **({"type": v.host_path.type} if v.host_path.type else {})}}


def _container(spec: LLMDeploymentSpec, variant: Variant) -> dict[str, Any]:
    port = spec.serving.port
    args = [
        f"--model={spec.model}",
        f"--port={port}",
        "--host=0.0.0.0",
        f"--tensor-parallel-size={variant.gpus_per_replica}",
    ]
    if spec.serving.served_model_name:
        args.append(f"--served-model-name={spec.serving.served_model_name}")
    args += list(spec.engine_args)
    startup_s = parse_duration(spec.serving.startup_timeout)
    drain_s = parse_duration(spec.serving.drain_timeout)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.serving.env.items())]
    env += [{"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret, "key": e.key, "optional": e.optional}}}
            for e in spec.serving.secret_env]
    return {
        "name": "vllm",
        "image": spec.image,
        "command": ["vllm", "serve"],
        "args": args,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "resources": {
            "requests": {"cpu": variant.cpu, "memory": variant.memory, "nvidia.com/gpu": str(variant.gpus_per_replica)},
            "limits": {"memory": variant.memory, "nvidia.com/gpu": str(variant.gpus_per_replica)},
        },
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Model loading takes minutes: the startup probe holds liveness off until /health answers.
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": max(1, math.ceil(startup_s / 10)),
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
        # Stop taking new work, then let streaming responses finish before SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": int(min(drain_s, 600))}}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         *({"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only} for v in spec.serving.volumes)],
    }


def render_deployment(body: dict[str, Any], spec: LLMDeploymentSpec, variant: Variant, replicas: int,
                      annotations: dict[str, str] | None = None, surge: bool = True) -> dict[str, Any]:
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    product = variant.gpu_product or gpu_for(variant.accelerator).product_label
    labels = {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "llmscale",
        LABEL_DEPLOYMENT: name,
        LABEL_VARIANT: variant.name,
    }
    drain_s = parse_duration(spec.serving.drain_timeout)
    node_selector = {GPU_PRODUCT_LABEL: product, **variant.node_selector}
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in variant.tolerations]
    tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, variant)],
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "terminationGracePeriodSeconds": int(drain_s) + 30,
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}, *map(_volume, spec.serving.volumes)],
    }
    if spec.serving.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.serving.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name, variant.name),
            "namespace": namespace,
            "labels": labels,
            "annotations": {"llmscale.io/accelerator": variant.accelerator, "llmscale.io/gpus": str(variant.gpus_per_replica),
                            **(annotations or {})},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {**selector_labels(name), LABEL_VARIANT: variant.name}},
            # A template change (image, engine args) replaces pods of the same shape: one new pod
            # before an old one stops when the ceilings leave room for one more (`surge`), else
            # one old pod stops first. Never a pod over a ceiling.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1 if surge else 0, "maxUnavailable": 0 if surge else 1},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "llmscale.io/model": spec.model,
                        "llmscale.io/accelerator": variant.accelerator,
                        "llmscale.io/gpus": str(variant.gpus_per_replica),
                        "llmscale.io/served-model-name": spec.serving.served_model_name or spec.model,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.serving.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _named_like_it(body: dict[str, Any]) -> dict[str, Any]:
    """Metadata of an owned object named like the LLMDeployment (its Service, its disruption budget)."""
    name = body["metadata"]["name"]
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": {"app.kubernetes.io/managed-by": "llmscale", LABEL_DEPLOYMENT: name},
        "ownerReferences": [owner_reference(body)],
    }


def render_service(body: dict[str, Any], spec: LLMDeploymentSpec) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _named_like_it(body),
        "spec": {
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_disruption_budget(body: dict[str, Any]) -> dict[str, Any]:
    """A PodDisruptionBudget over every shape's pods: a node drain (or any voluntary eviction)
    takes one serving pod at a time, and the next only once its replacement is Ready, so a drain
    costs at most one replica for one cold start instead of every replica on the node at once (with a
    single replica, that one: set replicas.min to 2 where a drain must not interrupt serving)."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _named_like_it(body),
        # A pod that is not Ready (waiting for GPUs, a bad rollout) may always go: it serves nothing,
        # and holding it would block every drain.
        "spec": {"selector": {"matchLabels": selector_labels(name)}, "maxUnavailable": 1,
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }
