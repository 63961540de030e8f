"""The closed vocabulary of decision reasons.

The same codes appear in status.lastDecision.reasons, condition reasons, Event reasons, the
`llmscale_decisions_total{reason=...}` metric and `llmscale explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    CAPACITY_PLAN = "CapacityPlan"
    """Replicas sized from the forecast load and the per-replica capacity at the SLO."""
    SLO_BREACH_TTFT = "SLOBreachTTFT"
    """Observed TTFT at the SLO percentile is over target: scale up now, whatever the plan says."""
    SLO_BREACH_ITL = "SLOBreachITL"
    """Observed inter-token latency at the SLO percentile is over target."""
    QUEUE_GROWING = "QueueGrowing"
    """Requests are waiting in vLLM's queue beyond what the running replicas drain quickly."""
    PANIC = "PanicMode"
    """A burst: demand is far above capacity; scale-down is suspended for a while."""
    WITHIN_TOLERANCE = "WithinTolerance"
    """Desired replicas within the tolerance band of the current count: no change."""
    SCALE_UP_STABILIZED = "ScaleUpStabilized"
    """Scale-up held to the lowest recommendation of the scale-up stabilization window."""
    SCALE_DOWN_STABILIZED = "ScaleDownStabilized"
    """Scale-down held to the highest recommendation of the scale-down stabilization window."""
    RATE_LIMITED_UP = "RateLimitedUp"
    """Scale-up capped by scaling.scaleUp.maxStep."""
    RATE_LIMITED_DOWN = "RateLimitedDown"
    """Scale-down capped by scaling.scaleDown.maxStep."""
    AT_MIN = "AtMinReplicas"
    """Raised to replicas.min."""
    AT_MAX = "AtMaxReplicas"
    """Capped at replicas.max."""
    BUDGET_GPUS = "BudgetLimitedGPUs"
    """Capped by cost.maxGPUs."""
    BUDGET_COST = "BudgetLimitedCost"
    """Capped by cost.maxHourlyCost."""
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    """Prometheus could not be read: hold the current replicas."""
    METRICS_UNKNOWN = "MetricsUnknown"
    """Some signals are missing, stale or not finite: scale-down is not allowed."""
    IDLE = "Idle"
    """Request counters show zero traffic (evidence of idleness, not missing data)."""
    SCALE_TO_ZERO = "ScaleToZero"
    """Idle for scaling.scaleToZero.idleFor: release every GPU."""
    SCALE_FROM_ZERO = "ScaleFromZero"
    """Demand seen while at zero replicas: start one."""
    COLD_START = "ColdStartInFlight"
    """Replicas are still loading the model; counted as capacity on its way."""
    GPUS_UNAVAILABLE = "GPUsUnavailable"
    """Pods are Pending for lack of free GPUs: adding more would not add capacity, so scale-up holds."""
    SLO_INFEASIBLE = "SLOInfeasible"
    """No replica of the variant can meet the SLO even unloaded; scaling out would not help."""
    CAPACITY_LEARNED = "CapacityLearned"
    """A rate window of evidence moved the capacity estimate (each window teaches it once)."""
    BURST_MEMORY = "BurstMemory"
    """Capacity for a recent peak is held: bursts have come back within this lull before."""
    VARIANT_SWITCH = "VariantSwitch"
    """A cheaper (or feasible) pod shape serves the forecast load within the SLO."""
    WAITING_FOR_ROOM = "WaitingForRoom"
    """New pods wait until pods that still hold GPUs (draining, or of the old shape) leave room under the ceilings."""
    VARIANT_SWITCH_HELD = "VariantSwitchHeld"
    """A switch for a saving waits while today's pods may not go down (unknown metrics, the panic
    hold, the scale-down window or scaleDown.maxStep)."""
    VARIANT_SWITCH_FAILED = "VariantSwitchFailed"
    """The new shape's pods could not be scheduled or did not become Ready in time: the old shape is kept."""
    SPILL_OVER = "SpillOver"
    """Pods of the running shape wait for GPUs of their type: pods of another shape carry their share meanwhile."""
    PAUSED = "Paused"
    """scaling.mode is Paused: nothing changes."""
    RECOMMEND_ONLY = "RecommendOnly"
    """scaling.mode is Recommend: the decision is reported, not applied."""
    NO_CHANGE = "NoChange"
    """The current replica count is what the policy wants."""


@dataclass(frozen=True)
class Reason:
    code: Code
    message: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
