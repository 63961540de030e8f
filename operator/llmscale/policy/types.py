"""The inputs and output of the decision core. Plain data, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .reasons import Code, Reason

# Signal names (also the keys of metrics.queries overrides).
SIGNALS = (
    "ttftQuantile",
    "interTokenLatencyQuantile",
    "e2eLatencyQuantile",
    "ttftAttainment",
    "itlAttainment",
    "requestsWaiting",
    "requestsRunning",
    "kvCacheUsage",
    "gpuUtilization",
    "requestRate",
    "promptTokensRate",
    "generationTokensRate",
)


@dataclass(frozen=True)
class Signals:
    """One deployment's metrics at one instant, each None when unknown (with the reason in `unknown`)."""

    ttft_quantile: float | None = None
    itl_quantile: float | None = None
    e2e_quantile: float | None = None
    ttft_attainment: float | None = None
    itl_attainment: float | None = None
    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None
    gpu_utilization: float | None = None
    request_rate: float | None = None
    prompt_tokens_rate: float | None = None
    generation_tokens_rate: float | None = None
    sampled_at: float | None = None
    unavailable: str | None = None  # Prometheus could not be read at all
    unknown: dict[str, str] = field(default_factory=dict)  # signal -> why it is unknown
    warnings: tuple[str, ...] = ()  # e.g. target between histogram bucket edges

    @staticmethod
    def unreachable(why: str) -> Signals:
        return Signals(unavailable=why)

    @property
    def mean_input_tokens(self) -> float | None:
        return _per_request(self.prompt_tokens_rate, self.request_rate)

    @property
    def mean_output_tokens(self) -> float | None:
        return _per_request(self.generation_tokens_rate, self.request_rate)


def _per_request(tokens_rate: float | None, request_rate: float | None) -> float | None:
    """Tokens per request from two rates; None when the ratio is not meaningful (too few requests,
    or a value no model context could hold)."""
    if tokens_rate is None or request_rate is None or request_rate < 1e-3:
        return None
    v = tokens_rate / request_rate
    return v if 1.0 <= v <= 2_000_000 and math.isfinite(v) else None


def finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


@dataclass(frozen=True)
class Workload:
    """The serving workload as the API server reports it."""

    variant: str | None
    replicas: int  # desired replicas of the owned Deployment (what is being paid for)
    ready: int
    starting: int = 0  # created, not yet Ready (cold start in flight)
    pending_unschedulable: int = 0
    cold_start_s: dict[str, float] = field(default_factory=dict)  # measured creation->Ready per variant
    competing_autoscaler: str | None = None


@dataclass(frozen=True)
class History:
    """What the policy remembers between decisions; persisted in status so restarts resume exactly."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, replicas) within the longest window
    rate_samples: tuple[tuple[float, float], ...] = ()  # (time, request rate) for the trend
    last_scale_at: float | None = None
    idle_since: float | None = None
    panic_until: float | None = None
    capacity_correction: float = 1.0
    variant_candidate: str | None = None
    variant_candidate_since: float | None = None
    observing_since: float | None = None  # first decision: the windows are covered only after this
    mean_input: float | None = None  # smoothed token mix (EWMA): capacity is sensitive to it
    mean_output: float | None = None
    queued_at: float | None = None  # the last decision that saw a queue: one sample may be a blip
    ready_seen: int | None = None  # Ready replicas at the last decision
    ready_grew_at: float | None = None  # when the Ready count last grew: older windows hold backlog

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [[round(t, 3), r] for t, r in self.recommendations],
            "rateSamples": [[round(t, 3), round(v, 6)] for t, v in self.rate_samples],
            "lastScaleAt": self.last_scale_at,
            "idleSince": self.idle_since,
            "panicUntil": self.panic_until,
            "capacityCorrection": round(self.capacity_correction, 6),
            "variantCandidate": self.variant_candidate,
            "variantCandidateSince": self.variant_candidate_since,
            "observingSince": self.observing_since,
            "meanInput": None if self.mean_input is None else round(self.mean_input, 2),
            "meanOutput": None if self.mean_output is None else round(self.mean_output, 2),
            "queuedAt": self.queued_at,
            "readySeen": self.ready_seen,
            "readyGrewAt": self.ready_grew_at,
        }

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> History:
        if not d:
            return History()
        try:
            return History(
                recommendations=tuple((float(t), int(r)) for t, r in d.get("recommendations", [])),
                rate_samples=tuple((float(t), float(v)) for t, v in d.get("rateSamples", [])),
                last_scale_at=d.get("lastScaleAt"),
                idle_since=d.get("idleSince"),
                panic_until=d.get("panicUntil"),
                capacity_correction=float(d.get("capacityCorrection", 1.0)),
                variant_candidate=d.get("variantCandidate"),
                variant_candidate_since=d.get("variantCandidateSince"),
                observing_since=d.get("observingSince"),
                mean_input=d.get("meanInput"),
                mean_output=d.get("meanOutput"),
                queued_at=d.get("queuedAt"),
                ready_seen=d.get("readySeen"),
                ready_grew_at=d.get("readyGrewAt"),
            )
        except (TypeError, ValueError):
            return History()  # a hand-edited or corrupt status must not crash the operator


@dataclass(frozen=True)
class Estimate:
    """What the policy believes, shown by `llmscale explain`."""

    capacity_per_replica: float | None = None  # requests/s at the SLO, after online correction
    capacity_limited_by: str | None = None
    forecast_rate: float | None = None
    horizon_s: float | None = None
    planned_replicas: int | None = None
    feedback_replicas: int | None = None
    ceiling_replicas: int | None = None


@dataclass(frozen=True)
class Decision:
    action: str  # ScaleUp | ScaleDown | Hold | NoChange
    from_replicas: int
    to_replicas: int
    variant: str
    reasons: tuple[Reason, ...]
    history: History
    estimate: Estimate
    conditions: dict[str, tuple[str, str, str]]  # type -> ("True"|"False"|"Unknown", reason, message)
    apply: bool  # False in Recommend/Paused (apart from manual replicas) and on hold
    gpus: int = 0
    hourly_cost: float | None = None

    @property
    def codes(self) -> list[Code]:
        return [r.code for r in self.reasons]

    def with_(self, **kw: Any) -> Decision:
        return replace(self, **kw)
