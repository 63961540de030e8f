"""Step: what one replica of a variant sustains at the SLO, seeded by the performance model and
corrected online from observed load versus observed latency."""

from __future__ import annotations

from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.perf.capacity import simulated_capacity
from llmscale.perf.hardware import server_profile

from .types import Signals

# Token mix assumed before any traffic has been seen (chat-like).
DEFAULT_MEAN_INPUT = 1024.0
DEFAULT_MEAN_OUTPUT = 256.0
CORRECTION_MIN, CORRECTION_MAX = 0.25, 4.0


@dataclass(frozen=True)
class VariantCapacity:
    variant: Variant
    per_replica: float  # requests/s at the SLO after correction
    limited_by: str
    unloaded_itl_s: float

    @property
    def feasible(self) -> bool:
        return self.per_replica > 0


def max_model_len(spec: LLMDeploymentSpec) -> int | None:
    """--max-model-len from the engine args: vLLM refuses longer prompts, which bounds the tail."""
    for i, arg in enumerate(spec.engine_args):
        flag, _, value = arg.partition("=")
        if flag.strip() == "--max-model-len":
            if not value and i + 1 < len(spec.engine_args):
                value = spec.engine_args[i + 1]
            try:
                return int(value)
            except ValueError:
                return None
    return None


def token_mix(signals: Signals) -> tuple[float, float]:
    return (signals.mean_input_tokens or DEFAULT_MEAN_INPUT, signals.mean_output_tokens or DEFAULT_MEAN_OUTPUT)


def variant_capacity(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, correction: float) -> VariantCapacity:
    profile = server_profile(spec.model, variant.accelerator, variant.gpus_per_replica)
    mean_in, mean_out = token_mix(signals)
    itl = spec.slo.itl_target()
    ttft = spec.slo.ttft
    cap = simulated_capacity(
        profile,
        mean_in,
        mean_out,
        itl.seconds if itl else None,
        ttft.seconds if ttft else None,
        itl_pct=itl.percentile if itl else 95.0,
        ttft_pct=ttft.percentile if ttft else 95.0,
        max_prompt=max_model_len(spec),
    )
    return VariantCapacity(variant, cap.requests_per_s * correction, cap.limited_by, profile.unloaded_itl(mean_in + mean_out / 2))


def refine_correction(correction: float, per_ready_rate: float | None, seed_capacity: float, breach_ratio: float | None) -> float:
    """Nudge the capacity correction towards what the replicas demonstrably do.

    Over target at a load below the estimate: the estimate was too generous, so shrink it to
    the load actually carried. Comfortably under target above the estimate: grow it slowly.
    """
    if per_ready_rate is None or seed_capacity <= 0 or breach_ratio is None:
        return correction
    est = seed_capacity * correction
    if breach_ratio > 1.0 and per_ready_rate < est:
        correction = max(correction * 0.7, per_ready_rate / seed_capacity * 0.95)
    elif breach_ratio < 0.7 and per_ready_rate > est:
        correction = min(correction * 1.1, per_ready_rate / seed_capacity)
    return min(CORRECTION_MAX, max(CORRECTION_MIN, correction))
