"""Turn raw PromQL results into one Signals per deployment: pure, with staleness and NaN handling."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

from llmscale.api.models import LLMDeploymentSpec
from llmscale.perf import buckets
from llmscale.perf.histogram import attainment, between_edges, histogram_quantile
from llmscale.policy.types import Signals

Key = tuple[str, str]  # (namespace, name)

NO_SERIES = "no series for this deployment"


def sample_value(sample: dict[str, Any]) -> tuple[float | None, str | None]:
    """A Prometheus instant-vector sample's value, or None with the reason it is unusable."""
    try:
        raw = sample["value"][1]
        v = float(raw)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):  # 1e999 as an integer overflows
        return None, "malformed sample"
    if math.isnan(v):
        return None, "NaN"
    if math.isinf(v):
        return None, "Inf"
    if v < 0:
        return None, f"negative value {v:g}"
    return v, None


class Sample(NamedTuple):
    """One series of an instant-vector answer, as much of it as the signals read: its `le` (a
    histogram bucket's) and `pod` labels, when it has them, and its value, or None with why it is
    unusable. The reader keeps a batch's answer for the deployments that join it; as decoded JSON,
    a thousand deployments' latency histograms were ~16 MiB each, held next to the read that
    replaced them."""

    le: Any
    pod: Any
    value: float | None
    why: str | None


def to_sample(raw: dict[str, Any]) -> Sample:
    m = raw.get("metric", {})
    le = m.get("le")
    v, why = sample_value(raw)
    # Bucket edges repeat across every deployment: one string each.
    return Sample(sys.intern(le) if isinstance(le, str) else le, m.get("pod"), v, why)


def index_by_deployment(result: Iterable[dict[str, Any]]) -> dict[Key, list[Sample]]:
    out: dict[Key, list[Sample]] = defaultdict(list)
    for s in result:
        m = s.get("metric") if isinstance(s, dict) else None
        # A series of another shape is nobody's: it must not fail the read for everyone.
        if isinstance(m, dict) and isinstance(m.get("namespace"), str) and isinstance(m.get("llmd"), str):
            out[(m["namespace"], m["llmd"])].append(to_sample(s))
    return out


def index_by_pool(result: Iterable[dict[str, Any]], pools: dict[tuple[str, str], list[Key]]) -> dict[Key, list[Sample]]:
    """Samples grouped by (namespace, inference_pool), handed to every deployment that names the pool."""
    out: dict[Key, list[Sample]] = defaultdict(list)
    for s in result:
        m = s.get("metric") if isinstance(s, dict) else None
        if not isinstance(m, dict) or not isinstance(m.get("namespace"), str) or not isinstance(m.get("inference_pool"), str):
            continue  # nobody's (see index_by_deployment)
        for key in pools.get((m["namespace"], m["inference_pool"]), []):
            out[key].append(to_sample(s))
    return out


def _le(le: Any) -> float:
    """A bucket's upper edge. ValueError when it is none (not a number, NaN, negative, -Inf): the
    reader then holds that deployment as a malformed series, never reads a NaN quantile."""
    if le == "+Inf":
        return math.inf
    x = float(le)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError("a bucket edge that is not a number")
    return x


def _buckets(samples: list[Sample]) -> list[float] | None:
    """Cumulative per-second bucket rates ordered by le, +Inf last; None if incomplete."""
    by_le: dict[float, float] = {}
    for s in samples:
        if s.le is None or s.value is None:
            continue
        by_le[_le(s.le)] = s.value
    if math.inf not in by_le:
        return None
    les = sorted(k for k in by_le if k != math.inf)
    if not les:
        return None
    # Tolerate exporters with other edges: use what the series say.
    return [by_le[le] for le in les] + [by_le[math.inf]]


def _edges(samples: list[Sample]) -> tuple[float, ...]:
    les = sorted({_le(s.le) for s in samples if s.le not in (None, "+Inf")})
    return tuple(les)


def build_signals(
    spec: LLMDeploymentSpec,
    key: Key,
    results: dict[str, dict[Key, list[Sample]]],
    now: float,
    stale_after_s: float,
    overrides: dict[str, float | None] | None = None,
    read_at: float | None = None,
) -> Signals:
    """Signals for one deployment from the batched results (signal -> deployment -> samples),
    answered at `now` from a read that began at `read_at` (default: now)."""
    read_at = now if read_at is None else read_at
    unknown: dict[str, str] = {}
    warnings: list[str] = []
    vals: dict[str, float | None] = {}

    fresh = results.get("freshness", {}).get(key)
    stale = False
    scraped_at: float | None = None
    if fresh:
        ts, why = fresh[0].value, fresh[0].why
        if ts is None:
            unknown["freshness"] = why or "unusable"
        elif now - ts > stale_after_s:
            stale = True
        else:
            # Prometheus's clock, even if a little ahead of ours: only differences between scrapes
            # are used (the growth of the queue), never the gap to our clock.
            scraped_at = ts
    for name in ("requestRate", "promptTokensRate", "generationTokensRate", "requestsWaiting", "requestsRunning",
                 "kvCacheUsage", "gpuUtilization", "gatewayPending", "itlSum", "itlCount", "preemptions"):
        samples = results.get(name, {}).get(key)
        if not samples:
            vals[name] = None
            # Optional: the engine speed is read where vLLM exports the inter-token histogram.
            if name not in ("gatewayPending", "gpuUtilization", "itlSum", "itlCount", "preemptions"):
                unknown[name] = NO_SERIES
            continue
        v, why = samples[0].value, samples[0].why
        if v is None:
            unknown[name] = f"ignored: {why}"
        elif stale and name != "gatewayPending":
            unknown[name] = f"stale: newest sample older than {stale_after_s:.0f}s"
            v = None
        vals[name] = v
    if overrides:
        for name, v in overrides.items():
            vals[name] = v
            if v is None:
                unknown[name] = "override query returned no usable value"
            else:
                unknown.pop(name, None)

    def latency(bucket_key: str, target: float | None, pct: float | None, label: str) -> tuple[float | None, float | None]:
        samples = results.get(bucket_key, {}).get(key)
        if not samples or target is None or pct is None:
            return None, None
        if stale:
            unknown[label] = "stale"
            return None, None
        cum = _buckets(samples)
        edges = _edges(samples)
        if cum is None or len(cum) != len(edges) + 1:
            unknown[label] = "incomplete histogram"
            return None, None
        if cum[-1] <= 0:
            return None, None  # no requests finished in the window: no latency evidence either way
        q = histogram_quantile(pct / 100, edges, cum)
        att, interpolated = attainment(target, edges, cum)
        if interpolated:
            around = between_edges(target, edges)
            if around:
                warnings.append(
                    f"{label} target {target * 1000:g}ms falls between histogram buckets "
                    f"{around[0] * 1000:g}ms and {around[1] * 1000:g}ms: attainment and percentile are interpolated"
                )
        return q, att

    ttft = spec.slo.ttft
    itl = spec.slo.itl_target()
    ttft_q, ttft_att = latency("ttftBuckets", ttft.seconds if ttft else None, ttft.percentile if ttft else None, "ttft")
    itl_q, itl_att = latency("itlBuckets", itl.seconds if itl else None, itl.percentile if itl else None, "interTokenLatency")
    e2e = spec.slo.e2e_latency
    e2e_q, _ = latency("e2eBuckets", e2e.seconds if e2e else None, e2e.percentile if e2e else None, "e2eLatency")
    if overrides:
        ttft_q = overrides.get("ttftQuantile", ttft_q)
        itl_q = overrides.get("interTokenLatencyQuantile", itl_q)

    waiting = vals.get("requestsWaiting")
    pending = vals.get("gatewayPending")
    if pending is not None and (waiting is not None or unknown.get("requestsWaiting") == NO_SERIES):
        # The gateway's queue adds to vLLM's, and stands for it where vLLM has no series (no pods:
        # the requests wait at the gateway). A vLLM queue that was read and is unusable (NaN, a
        # malformed sample) or stale stays unknown: the gateway's count is not the whole queue then
        # (with a requestRate override nothing else would hold a scale-down on pods whose series
        # went stale).
        waiting = (waiting or 0.0) + pending
        unknown.pop("requestsWaiting", None)
    elif pending is None and spec.scaling.scale_to_zero.demand is not None and "gatewayDemand" not in unknown:
        unknown["gatewayDemand"] = "no series for the gateway's demand signal (scaleToZero.demand)"
    itl_sum, itl_count = vals.get("itlSum"), vals.get("itlCount")
    if itl_sum is None or itl_count is None:
        itl_sum = None
    return Signals(
        ttft_quantile=ttft_q,
        itl_quantile=itl_q,
        e2e_quantile=e2e_q,
        ttft_attainment=ttft_att,
        itl_attainment=itl_att,
        requests_waiting=waiting,
        requests_running=vals.get("requestsRunning"),
        kv_cache_usage=vals.get("kvCacheUsage"),
        gpu_utilization=vals.get("gpuUtilization"),
        request_rate=vals.get("requestRate"),
        prompt_tokens_rate=vals.get("promptTokensRate"),
        generation_tokens_rate=vals.get("generationTokensRate"),
        itl_mean=itl_sum / itl_count if itl_sum is not None and itl_count else None,
        sequences_decoding=itl_sum,
        preemptions=vals.get("preemptions"),
        gateway_pending=pending,
        sampled_at=scraped_at if scraped_at is not None else read_at,  # the gauges' scrape, which growth is measured between
        read_at=read_at,
        unknown=unknown,
        warnings=tuple(dict.fromkeys(warnings)),
    )


__all__ = ["Key", "Sample", "build_signals", "buckets", "index_by_deployment", "index_by_pool", "to_sample"]
