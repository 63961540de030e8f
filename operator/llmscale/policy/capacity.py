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


MIX_SMOOTHING = 0.2  # weight of the newest token mix in the moving average


def token_mix(signals: Signals, prev_in: float | None = None, prev_out: float | None = None) -> tuple[float, float]:
    """The token mix to plan for: an exponential moving average of what the counters show, so one
    window of long prompts does not swing the capacity estimate."""
    def ewma(prev: float | None, new: float | None, default: float) -> float:
        if new is None:
            return prev if prev is not None else default
        return new if prev is None else prev + MIX_SMOOTHING * (new - prev)

    return (ewma(prev_in, signals.mean_input_tokens, DEFAULT_MEAN_INPUT),
            ewma(prev_out, signals.mean_output_tokens, DEFAULT_MEAN_OUTPUT))


def variant_capacity(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, correction: float,
                     mix: tuple[float, float] | None = None) -> VariantCapacity:
    profile = server_profile(spec.model, variant.accelerator, variant.gpus_per_replica)
    mean_in, mean_out = mix or token_mix(signals)
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


def refine_correction(correction: float, attainment: float | None, target_share: float, breach_ratio: float | None,
                      settled: bool = True, per_ready_rate: float | None = None, seed_capacity: float = 0.0) -> float:
    """Learn how far the seeded capacity is from what the replicas really do, from the SLO itself.

    An integral controller on the error budget: while fewer requests than the SLO's percentile
    meet the target, each decision trims the capacity estimate by 20% (so more replicas are
    planned). It grows back by 2% per decision only on evidence gathered at load: the SLO met with
    room to spare while each Ready replica carries at least 70% of what the estimate says it can
    (meeting the SLO at light load proves nothing about capacity). Nothing is learnt while replicas
    are starting (their backlog says nothing about capacity).
    """
    if attainment is None or not settled:
        return correction
    if attainment < target_share:
        correction *= 0.8
    elif (breach_ratio is not None and breach_ratio < 0.8 and per_ready_rate is not None and seed_capacity > 0
          and per_ready_rate >= 0.7 * seed_capacity * correction):
        correction *= 1.02
    return min(CORRECTION_MAX, max(CORRECTION_MIN, correction))
