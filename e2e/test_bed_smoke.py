"""The test bed itself: GPU scheduling on fake nodes, model-load delay, Pending when GPUs run out,
and simulated vLLM metrics read back from Prometheus with PromQL."""

from __future__ import annotations

import time
from typing import Any

from prometheus_api_client import PrometheusConnect

from .conftest import Bed, wait_for


def _deployment(name: str, replicas: int, gpus: int, product: str) -> dict[str, Any]:
    labels = {"llmscale.io/deployment": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"llmscale.io/model": "meta-llama/Llama-3.1-8B-Instruct",
                                                               "llmscale.io/accelerator": "nvidia-h100" if "H100" in product else "nvidia-l4",
                                                               "llmscale.io/gpus": str(gpus)}},
                "spec": {"nodeSelector": {"nvidia.com/gpu.product": product},
                         "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0",
                                         "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            },
        },
    }


def _pods(bed: Bed, ns: str, name: str) -> list[Any]:
    return bed.core.list_namespaced_pod(ns, label_selector=f"llmscale.io/deployment={name}").items


def _ready(p: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))


def test_gpu_pods_schedule_on_gpu_nodes_and_become_ready_after_the_load_delay(bed: Bed, namespace: str) -> None:
    bed.apps.create_namespaced_deployment(namespace, _deployment("smoke", 2, 4, "NVIDIA-H100-80GB-HBM3"))
    created = time.time()
    pods = wait_for("2 scheduled pods", lambda: [p for p in _pods(bed, namespace, "smoke") if p.spec.node_name] if len(
        [p for p in _pods(bed, namespace, "smoke") if p.spec.node_name]) == 2 else None, 60, 0.3)
    for p in pods:
        assert p.spec.node_name.startswith("gpu-h100-"), p.spec.node_name
    # Running but not Ready while the model loads.
    assert not any(_ready(p) for p in _pods(bed, namespace, "smoke"))
    wait_for("both pods Ready", lambda: sum(_ready(p) for p in _pods(bed, namespace, "smoke")) == 2, 60, 0.3)
    assert time.time() - created >= 4.0  # the bed's default model-load delay is 5 s


def test_pods_stay_pending_when_gpus_run_out(bed: Bed, namespace: str) -> None:
    # 4 L4 nodes x 8 GPUs: four 8-GPU pods fit, the fifth cannot.
    bed.apps.create_namespaced_deployment(namespace, _deployment("hog", 5, 8, "NVIDIA-L4"))

    def settled() -> tuple[int, int] | None:
        pods = _pods(bed, namespace, "hog")
        scheduled = sum(1 for p in pods if p.spec.node_name)
        unschedulable = sum(1 for p in pods for c in (p.status.conditions or [])
                            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable")
        return (scheduled, unschedulable) if len(pods) == 5 and scheduled + unschedulable == 5 else None

    scheduled, pending = wait_for("4 scheduled and 1 unschedulable pod", settled, 60)
    assert (scheduled, pending) == (4, 1)
    nodes = {p.spec.node_name for p in _pods(bed, namespace, "hog") if p.spec.node_name}
    assert len(nodes) == 4 and all(n.startswith("gpu-l4-") for n in nodes)


def test_simulated_vllm_metrics_reach_prometheus(bed: Bed, namespace: str) -> None:
    bed.apps.create_namespaced_deployment(namespace, _deployment("served", 1, 1, "NVIDIA-H100-80GB-HBM3"))
    wait_for("a Ready pod", lambda: any(_ready(p) for p in _pods(bed, namespace, "served")), 60, 0.3)
    bed.traffic(namespace, "served", rate=8, meanInput=512, meanOutput=128)
    prom = PrometheusConnect(url=bed.prom_url, disable_ssl=True)
    sel = f'namespace="{namespace}", llmd="served"'

    def rate() -> float | None:
        res = prom.custom_query(f"sum(rate(vllm:request_success_total{{{sel}}}[20s]))")
        return float(res[0]["value"][1]) if res and float(res[0]["value"][1]) > 4 else None

    r = wait_for("the request rate in Prometheus to reach the offered 8/s", rate, 90, 2)
    assert r < 16
    ttft = prom.custom_query(f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[20s])))")
    assert ttft and 0 < float(ttft[0]["value"][1]) < 1.0
    kv = prom.custom_query(f"vllm:kv_cache_usage_perc{{{sel}}}")
    assert kv and 0 <= float(kv[0]["value"][1]) <= 1
    util = prom.custom_query(f"DCGM_FI_DEV_GPU_UTIL{{{sel}}}")
    assert util and util[0]["metric"]["modelName"] == "NVIDIA-H100-80GB-HBM3"
    bed.traffic(namespace, "served", rate=0)
