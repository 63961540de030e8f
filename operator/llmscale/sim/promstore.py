"""A tiny emulation of what Prometheus gives the policy: scraped cumulative series, then rate()
and histogram_quantile() over a window. It lets the twin see metrics with the same lag and the
same bucket arithmetic as the operator does in a cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmscale.perf import buckets
from llmscale.perf.histogram import attainment, histogram_quantile
from llmscale.policy.types import Signals


@dataclass
class Sample:
    t: float
    requests: float
    prompt_tokens: float
    generation_tokens: float
    busy_gpu_s: float  # GPU-seconds busy (sum over replicas x GPUs)
    gpu_s: float  # GPU-seconds of ready replicas
    ttft: list[float]
    itl: list[float]
    waiting: float
    running: float
    kv_usage: float | None
    itl_sum: float = 0.0  # the inter-token latency histogram's _sum and _count
    itl_count: float = 0.0


@dataclass
class PromStore:
    samples: list[Sample] = field(default_factory=list)

    def add(self, s: Sample) -> None:
        self.samples.append(s)
        if len(self.samples) > 400:
            del self.samples[:200]

    def signals(self, now: float, window_s: float, ttft_target: tuple[float, float] | None,
                itl_target: tuple[float, float] | None) -> Signals:
        """Signals as the operator's PromQL would compute them at `now` (target = (seconds, percentile))."""
        recent = [s for s in self.samples if now - window_s <= s.t <= now]
        if not recent:
            return Signals(unknown={"requestRate": "no samples in the rate window"})
        last = recent[-1]
        if len(recent) < 2:
            return Signals(requests_waiting=last.waiting, requests_running=last.running, kv_cache_usage=last.kv_usage,
                           sampled_at=last.t, unknown={"requestRate": "fewer than two samples in the rate window"})
        first = recent[0]
        dt = last.t - first.t
        ttft_c, itl_c = _bucket_increase(first, last)
        ttft_q = ttft_att = itl_q = itl_att = None
        if ttft_target:
            ttft_q = histogram_quantile(ttft_target[1] / 100, buckets.TTFT, ttft_c)
            ttft_att, _ = attainment(ttft_target[0], buckets.TTFT, ttft_c)
        if itl_target:
            itl_q = histogram_quantile(itl_target[1] / 100, buckets.ITL, itl_c)
            itl_att, _ = attainment(itl_target[0], buckets.ITL, itl_c)
        gpu_s = last.gpu_s - first.gpu_s
        util = (last.busy_gpu_s - first.busy_gpu_s) / gpu_s if gpu_s > 0 else None
        tokens = last.itl_count - first.itl_count
        return Signals(
            ttft_quantile=ttft_q,
            itl_quantile=itl_q,
            ttft_attainment=ttft_att,
            itl_attainment=itl_att,
            requests_waiting=last.waiting,
            requests_running=last.running,
            kv_cache_usage=last.kv_usage,
            gpu_utilization=None if util is None else min(1.0, util),
            request_rate=(last.requests - first.requests) / dt,
            prompt_tokens_rate=(last.prompt_tokens - first.prompt_tokens) / dt,
            generation_tokens_rate=(last.generation_tokens - first.generation_tokens) / dt,
            itl_mean=(last.itl_sum - first.itl_sum) / tokens if tokens > 0 else None,
            sequences_decoding=(last.itl_sum - first.itl_sum) / dt,
            preemptions=0.0,  # the twin's engine never preempts (it reserves a request's KV cache whole)
            sampled_at=last.t,
        )


    def quantiles(self, now: float, window_s: float, q: float) -> tuple[float | None, float | None]:
        """histogram_quantile(q) of TTFT and of inter-token latency over the window, None without
        requests in it."""
        span = self._span(now, window_s)
        if span is None:
            return None, None
        ttft_c, itl_c = _bucket_increase(*span)
        return histogram_quantile(q, buckets.TTFT, ttft_c), histogram_quantile(q, buckets.ITL, itl_c)

    def _span(self, now: float, window_s: float) -> tuple[Sample, Sample] | None:
        """The first and last scrape in the window, None with fewer than two."""
        recent = [s for s in self.samples if now - window_s <= s.t <= now]
        return (recent[0], recent[-1]) if len(recent) >= 2 else None


def _bucket_increase(first: Sample, last: Sample) -> tuple[list[float], list[float]]:
    """increase() of every TTFT and inter-token bucket between two scrapes."""
    return ([b - a for a, b in zip(first.ttft, last.ttft, strict=True)],
            [b - a for a, b in zip(first.itl, last.itl, strict=True)])


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
