"""PromQL templates. One query per signal per control cycle for all deployments, grouped by
(namespace, llmd); `llmd` is the target label the chart's PodMonitor copies from the pod label
llmscale.io/deployment. Per-CR overrides (spec.metrics.queries) use {namespace} and {name}."""

from __future__ import annotations

from llmscale.api.models import QUERY_SIGNALS

GROUP = "namespace, llmd"

# Each takes the rate window, e.g. "1m". Bucket queries keep `le` so that any percentile and any
# attainment target can be computed from one result.
BATCH: dict[str, str] = {
    "ttftBuckets": f"sum by ({GROUP}, le) (rate(vllm:time_to_first_token_seconds_bucket[{{w}}]))",
    "itlBuckets": f"sum by ({GROUP}, le) (rate(vllm:inter_token_latency_seconds_bucket[{{w}}]))",
    "e2eBuckets": f"sum by ({GROUP}, le) (rate(vllm:e2e_request_latency_seconds_bucket[{{w}}]))",
    "requestRate": f"sum by ({GROUP}) (rate(vllm:request_success_total[{{w}}]))",
    "promptTokensRate": f"sum by ({GROUP}) (rate(vllm:prompt_tokens_total[{{w}}]))",
    "generationTokensRate": f"sum by ({GROUP}) (rate(vllm:generation_tokens_total[{{w}}]))",
    # The inter-token latency's _sum and _count: its mean, and the sequences decoding on average
    # (the rate of the sum), which tell the pods' engine speed against the model (policy.speed).
    "itlSum": f"sum by ({GROUP}) (rate(vllm:inter_token_latency_seconds_sum[{{w}}]))",
    "itlCount": f"sum by ({GROUP}) (rate(vllm:inter_token_latency_seconds_count[{{w}}]))",
    # Preemptions over the window: a preempted sequence's wait lands in the inter-token mean.
    "preemptions": f"sum by ({GROUP}) (increase(vllm:num_preemptions_total[{{w}}]))",
    "requestsWaiting": f"sum by ({GROUP}) (vllm:num_requests_waiting)",
    "requestsRunning": f"sum by ({GROUP}) (vllm:num_requests_running)",
    "kvCacheUsage": f"avg by ({GROUP}) (vllm:kv_cache_usage_perc)",
    "gpuUtilization": f"avg by ({GROUP}) (DCGM_FI_DEV_GPU_UTIL) / 100",
    # Requests the Gateway API Inference Extension's Endpoint Picker holds (flow control), per pool:
    # the demand that brings a deployment back from zero (scaling.scaleToZero.demand.inferencePool).
    # llm-d's router exports the same gauge under a second name too: take either, never their sum.
    "gatewayPending": "max by (namespace, inference_pool) (sum by (namespace, inference_pool, __name__) "
                      '({__name__=~"inference_extension_flow_control_queue_size|llm_d_epp_flow_control_queue_size"}))',
    # In-flight work per pod, for choosing which replicas to remove (pod-deletion-cost).
    "podLoad": f"sum by ({GROUP}, pod) (vllm:num_requests_running) + sum by ({GROUP}, pod) (vllm:num_requests_waiting)",
    # The newest sample time per deployment: older than two intervals means stale.
    "freshness": f"max by ({GROUP}) (timestamp(vllm:num_requests_running))",
}

# Signals a per-CR override may replace (value queries returning one number): the API model's list.
OVERRIDABLE = QUERY_SIGNALS


def render(template: str, window: str) -> str:
    return template.replace("{w}", window)
