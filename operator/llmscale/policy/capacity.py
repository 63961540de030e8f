"""Step: what one replica of a variant sustains at the SLO, seeded by the performance model and
corrected online from observed load versus observed latency."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration
from llmscale.perf.capacity import Capacity, _snap, at_fleet_size
from llmscale.perf.hardware import ServerProfile, server_profile
from llmscale.perf.queueing import modelled_curve

from .reasons import Code, Reason
from .speed import READINGS_KEPT, learnt_speed, planning_speed, speed_reading
from .types import Condition, History, Signals, Workload

# Token mix assumed before any traffic has been seen (chat-like).
DEFAULT_MEAN_INPUT = 1024.0
DEFAULT_MEAN_OUTPUT = 256.0
CORRECTION_MIN, CORRECTION_MAX = 0.1, 4.0


@dataclass(frozen=True)
class VariantCapacity:
    variant: Variant
    per_replica: float  # requests/s at the SLO after correction
    limited_by: str
    unloaded_itl_s: float

    @property
    def feasible(self) -> bool:
        return self.per_replica > 0


def arg_value(args: Sequence[str], name: str) -> str | None:
    """The value of a vLLM flag in a command line, as vLLM's parser reads it: every `_` in a flag
    is a `-`, `=value` or the next argument, the last occurrence winning; None when absent."""
    value: str | None = None
    for i, arg in enumerate(args):
        flag, eq, rest = arg.partition("=")
        if flag.strip().replace("_", "-") == f"--{name}":
            value = rest.strip() if eq else (args[i + 1].strip() if i + 1 < len(args) else "")
    return value


_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_int(text: str) -> int | None:
    """vLLM's human-readable integers: '8192', '8k' (8,000), '8K' (8,192), '25.6k' (decimals only with
    decimal suffixes); None for anything else (a sign, spaces, '1.5K')."""
    m = _HUMAN_INT.fullmatch(text.strip())
    if m is None or len(m.group(1)) > 30 or ("." in m.group(1) and m.group(2) not in ("k", "m", "g", "t")):
        return None
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def max_model_len(spec: LLMDeploymentSpec) -> int | None:
    """--max-model-len from the engine args: vLLM refuses longer prompts, which bounds the tail.
    None when absent, unreadable, or left to vLLM ('auto', -1: it fits the length to memory)."""
    return _max_len(tuple(spec.engine_args))


def _max_len(args: Sequence[str]) -> int | None:
    raw = arg_value(args, "max-model-len")
    n = human_int(raw) if raw is not None else None
    return n if n is not None and n > 0 else None


def memory_utilization(args: Sequence[str]) -> float | None:
    """--gpu-memory-utilization from engine args: the share of each GPU's memory vLLM takes for the
    weights, activations and KV cache. None when absent or unreadable (vLLM's default, 0.9, then)."""
    raw = arg_value(args, "gpu-memory-utilization")
    try:
        util = float(raw) if raw is not None else None
    except ValueError:
        return None
    return util if util is not None and 0 < util <= 1 else None


def replica_profile(spec: LLMDeploymentSpec, variant: Variant, speed: float = 1.0) -> ServerProfile:
    """The performance model of one replica of `variant`, with the memory share its engine args give,
    its steps taking `speed` times the fitted model's (policy.speed)."""
    return _profile(spec.model, tuple(spec.engine_args), variant.accelerator, variant.gpus_per_replica, speed)


def _profile(model: str, args: Sequence[str], accelerator: str, gpus: int, speed: float = 1.0) -> ServerProfile:
    util = memory_utilization(args)
    if util is None:
        return server_profile(model, accelerator, gpus, step_scale=speed)
    return server_profile(model, accelerator, gpus, util, speed)


# Engine args that change what a token or the weights take in GPU memory (or where they live), and
# checkpoint names that say the weights are quantized: the memory model assumes bf16 weights and
# cache, so with any of these it refuses nothing.
MEMORY_ARGS = ("kv-cache-dtype", "quantization", "num-gpu-blocks-override", "kv-cache-memory-bytes", "cpu-offload-gb",
               "hf-overrides", "kv-offloading-size")
QUANTIZED_NAME = re.compile(r"awq|gptq|int4|int8|fp8|w4a16|w8a8|bnb|gguf|4bit|8bit|nvfp4|mxfp4", re.IGNORECASE)


def shape_key(spec: LLMDeploymentSpec, variant: str) -> str:
    """A shape as run: its name, and a hash of the model and the engine args (a proof that vLLM
    starts on it holds for these only)."""
    return _shape_key(variant, spec.model, tuple(spec.engine_args))


@functools.lru_cache(maxsize=8192)
def _shape_key(variant: str, model: str, args: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\0".join((model, *args)).encode()).hexdigest()[:10]
    return f"{variant}@{digest}"


def speed_key(spec: LLMDeploymentSpec, variant: Variant) -> str:
    """What the engine speed is read on: the shape as run (shape_key), its GPU type and count, and
    the server image (another vLLM is another engine)."""
    return _speed_key(variant.name, variant.accelerator, variant.gpus_per_replica, spec.model, spec.image,
                      tuple(spec.engine_args))


@functools.lru_cache(maxsize=8192)
def _speed_key(variant: str, accelerator: str, gpus: int, model: str, image: str, args: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\0".join((accelerator, str(gpus), model, image, *args)).encode()).hexdigest()[:10]
    return f"{variant}@{digest}"


def has_started(spec: LLMDeploymentSpec, workload: Workload, history: History, variant: str) -> bool:
    """Have pods of this shape been Ready, now or before (with today's model and engine args)?"""
    return workload.started(variant) or shape_key(spec, variant) in history.started_shapes


def seen_started(spec: LLMDeploymentSpec, workload: Workload, history: History) -> History:
    """History with every shape whose pods are Ready now remembered as started."""
    now_ready = [shape_key(spec, v.name) for v in spec.variants if workload.started(v.name)]
    new = [k for k in now_ready if k not in history.started_shapes]
    return history.with_(started_shapes=(history.started_shapes + tuple(new))[-16:]) if new else history


def refused_start(spec: LLMDeploymentSpec, variant: Variant) -> str | None:
    """Why vLLM would exit at startup on this shape (ServerProfile.refuses_to_start), or None. Only
    what the engine args say for certain counts: an unreadable or automatic --max-model-len, an
    argument or a checkpoint that changes the memory a token or the weights take (MEMORY_ARGS,
    QUANTIZED_NAME), or an unreadable --gpu-memory-utilization checks nothing."""
    return _refusal(spec.model, tuple(spec.engine_args), variant.accelerator, variant.gpus_per_replica)


@functools.lru_cache(maxsize=8192)
def _refusal(model: str, args: tuple[str, ...], accelerator: str, gpus: int) -> str | None:
    # Cached: every decision asks, and the answer depends on these alone.
    limit = _max_len(args)
    if arg_value(args, "max-model-len") is not None and limit is None:
        return None
    for name in MEMORY_ARGS:
        value = arg_value(args, name)
        if value is not None and not (name == "kv-cache-dtype" and value.lower() == "auto"):
            return None
    if QUANTIZED_NAME.search(model):
        return None
    if arg_value(args, "gpu-memory-utilization") is not None and memory_utilization(args) is None:
        return None
    return _profile(model, args, accelerator, gpus).refuses_to_start(limit)


# The token mix is a mean over requests, weighted by how many each rate window saw, and planned for
# only once it stands for MIX_MIN_REQUESTS: before that the chat-like default is planned for (one
# 3,418-token request in a quiet first minute set the mix, and the 46 req/s burst of 1,000-token
# requests that followed planned 4.7x the replicas it needed). The memory holds MIX_MEMORY_REQUESTS:
# beyond that a window moves the mean by its share of memory and window together, so a busy window
# (the most reliable evidence) weighs most, and the mix still follows a lasting change.
MIX_MIN_REQUESTS = 20.0
MIX_MEMORY_REQUESTS = 500.0


def with_defaults(mean_in: float | None, mean_out: float | None) -> tuple[float, float]:
    """The mix to plan for: what was observed, the chat-like default where nothing was yet."""
    return (DEFAULT_MEAN_INPUT if mean_in is None else mean_in, DEFAULT_MEAN_OUTPUT if mean_out is None else mean_out)


@dataclass(frozen=True)
class ObservedMix:
    mean_input: float | None
    mean_output: float | None
    requests: float  # how many requests the means stand for (capped at MIX_MEMORY_REQUESTS)

    @property
    def known(self) -> bool:
        """Enough requests behind the means to plan for them rather than for the default."""
        return self.requests >= MIX_MIN_REQUESTS and (self.mean_input is not None or self.mean_output is not None)


def seen_mix(history: History) -> ObservedMix:
    """The token mix the history holds. A history written before the count was kept holds a
    settled average: it stands for a full memory."""
    requests = history.mix_requests
    if requests is None:
        requests = MIX_MEMORY_REQUESTS if history.mean_input is not None or history.mean_output is not None else 0.0
    return ObservedMix(history.mean_input, history.mean_output, requests)


def observed_mix(signals: Signals, window_s: float, prev: ObservedMix | None = None) -> ObservedMix:
    """The request-weighted mean of the token mix seen so far, with one rate window's requests
    added. Call it once per rate window (evidence counts once)."""
    prev = prev or ObservedMix(None, None, 0.0)
    n = (signals.request_rate or 0.0) * window_s
    w_in, w_out = signals.mean_input_tokens, signals.mean_output_tokens
    if n <= 0 or (w_in is None and w_out is None):
        return prev
    weight = prev.requests
    share = n / (min(weight, MIX_MEMORY_REQUESTS) + n)

    def mean(old: float | None, new: float | None) -> float | None:
        if new is None:
            return old
        return new if old is None else old + share * (new - old)

    return ObservedMix(mean(prev.mean_input, w_in), mean(prev.mean_output, w_out), min(weight + n, MIX_MEMORY_REQUESTS))


@dataclass(frozen=True)
class CapacityCurve:
    """What one replica of a variant sustains at the SLO for one token mix, by fleet size, before
    the correction: looked up once per decision, read at as many fleet sizes as the plan asks."""

    variant: Variant
    anchors: tuple[tuple[int, Capacity], ...]  # (fleet size, capacity); () when vLLM would not start
    refused: str | None  # why vLLM would not start on this shape
    unloaded_itl_s: float
    pooled: bool  # a load-aware gateway routes (spec.routing): the fleet pools its capacity

    def at(self, replicas: int, correction: float) -> VariantCapacity:
        """One replica's capacity in a fleet of `replicas`, times `correction`. Pooling helps only
        behind a load-aware gateway: with equal shares (a Service) each replica is a queue of its own,
        fed a Poisson share of the load, and carries what a lone replica does at any fleet size."""
        if self.refused is not None:
            return VariantCapacity(self.variant, 0.0, f"infeasible: vLLM would not start: {self.refused}", 0.0)
        cap = at_fleet_size(self.anchors, replicas if self.pooled else 1)
        return VariantCapacity(self.variant, cap.requests_per_s * correction, cap.limited_by, self.unloaded_itl_s)


def capacity_curve(spec: LLMDeploymentSpec, variant: Variant, signals: Signals,
                   mix: tuple[float, float] | None = None, started: bool = False, speed: float = 1.0) -> CapacityCurve:
    """The capacity of `variant` by fleet size for this mix (the observed one when `mix` is None),
    with engine steps `speed` times the fitted model's. A shape vLLM would not start on sustains
    nothing, unless its pods have started (`started`: Ready pods prove the rule wrong for them,
    whatever the engine args seemed to say)."""
    mean_in, mean_out = mix or with_defaults(signals.mean_input_tokens, signals.mean_output_tokens)
    itl = spec.slo.itl_target()
    ttft = spec.slo.ttft
    args = tuple(spec.engine_args)
    refused = None if started else _refusal(spec.model, args, variant.accelerator, variant.gpus_per_replica)
    if refused is not None:
        return CapacityCurve(variant, (), refused, 0.0, spec.routing.pools)
    profile = _profile(spec.model, args, variant.accelerator, variant.gpus_per_replica, speed)
    # The model reads the mix on its 8 % grid: the cache is keyed by the cell, so a mix that drifts
    # within it is answered from the cache (the idle inter-token floor is read at the mix itself).
    anchors = _curve(profile, args, itl.seconds if itl else None, itl.percentile if itl else 95.0,
                     ttft.seconds if ttft else None, ttft.percentile if ttft else 95.0, _snap(mean_in), _snap(mean_out))
    return CapacityCurve(variant, anchors, None, profile.unloaded_itl(mean_in + mean_out / 2),
                         spec.routing.pools)


@functools.lru_cache(maxsize=16384)
def _curve(profile: ServerProfile, args: tuple[str, ...], itl_s: float | None, itl_pct: float, ttft_s: float | None,
           ttft_pct: float, cell_in: float, cell_out: float) -> tuple[tuple[int, Capacity], ...]:
    # Cached: a decision asks two or three times, and the mix to plan for rarely leaves its cell.
    # (The model snaps the mix to its cell itself, and snapping a cell gives the cell.)
    return modelled_curve(profile, cell_in, cell_out, itl_s, ttft_s, itl_pct=itl_pct, ttft_pct=ttft_pct,
                          max_prompt=_max_len(args))


def variant_capacity(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, correction: float,
                     mix: tuple[float, float] | None = None, replicas: int = 1, started: bool = False,
                     speed: float = 1.0) -> VariantCapacity:
    """What one replica of `variant` sustains at the SLO in a fleet of `replicas` (capacity_curve)."""
    return capacity_curve(spec, variant, signals, mix, started, speed).at(replicas, correction)


def replicas_for(spec: LLMDeploymentSpec, variant: Variant, signals: Signals, correction: float,
                 mix: tuple[float, float], demand: float, utilization: float, started: bool = False,
                 speed: float = 1.0) -> tuple[int, VariantCapacity]:
    """The fewest replicas whose capacity, at `utilization`, carries `demand` req/s, and the
    per-replica capacity at that fleet size. Pooled capacity (a load-aware gateway) grows with the
    fleet, so the count a lone replica's capacity gives is an upper bound; bisect below it."""
    curve = capacity_curve(spec, variant, signals, mix, started, speed)
    single = curve.at(1, correction)
    if not single.feasible or demand <= 0:
        return 0, single
    hi = max(1, math.ceil(demand / (single.per_replica * utilization) - 1e-9))
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        cap = curve.at(mid, correction)
        if cap.feasible and mid * cap.per_replica * utilization >= demand - 1e-9:
            hi = mid
        else:
            lo = mid + 1
    return hi, curve.at(hi, correction)


def misses_beyond_chance(attainment: float, target_share: float, observed: float | None) -> bool:
    """Did more requests miss the target than the SLO allows, beyond what chance explains?

    With n requests in the window and an allowance of (1 - share) * n misses, a count within two
    standard deviations (Poisson) of the allowance is noise: at a p99 target and 200 requests a
    minute, three misses instead of two say nothing about capacity. Without a count, any excess
    counts.
    """
    if attainment >= target_share:
        return False
    if observed is None or observed <= 0:
        return True
    allowed = (1 - target_share) * observed
    return (1 - attainment) * observed > allowed + 2 * math.sqrt(allowed) + 1


def refine_correction(correction: float, attainment: float | None, target_share: float, breach_ratio: float | None,
                      settled: bool = True, per_ready_rate: float | None = None, seed_capacity: float = 0.0,
                      observed: float | None = None) -> float:
    """Learn how far the seeded capacity is from what the replicas really do, from the SLO itself.

    An integral controller on the error budget. While more requests miss the target than the SLO
    allows (beyond chance, given `observed` requests in the window) although each Ready replica
    carried no more than the estimate says it can, the estimate was optimistic: the window trims
    it in proportion to the shortfall (twice the missing share, at most by half), so more replicas
    are planned. Misses at a load above the estimate are the plan's
    lateness, not the model's error, and teach nothing. It grows back by 2% per window only on
    evidence gathered at load: the SLO met with room to spare while each Ready replica carries at
    least 70% of the estimate (meeting the SLO at light load proves nothing about capacity); and
    the load they carried so is a lower bound the estimate is raised to at once.
    `settled` is False while the window still holds a backlog from before the Ready set last grew:
    then nothing is learnt.
    """
    if attainment is None or not settled:
        return correction
    estimate = seed_capacity * correction
    if misses_beyond_chance(attainment, target_share, observed):
        if per_ready_rate is None or seed_capacity <= 0 or per_ready_rate <= estimate:
            correction *= max(0.5, 1 - 2 * (target_share - attainment))
    elif (breach_ratio is not None and breach_ratio < 0.8 and per_ready_rate is not None and seed_capacity > 0
          and per_ready_rate >= 0.7 * estimate):
        # Replicas that carried this load with room to spare sustain at least this load.
        correction = max(correction * 1.02, per_ready_rate / seed_capacity)
    return min(CORRECTION_MAX, max(CORRECTION_MIN, correction))


MIX_MOVE = 1.1  # the mix capacity is planned for moves only when the observed mix moved this factor


def planning_mix(observed: tuple[float, float], planned: tuple[float, float] | None) -> tuple[float, float]:
    """The token mix to plan capacity for: the observed (smoothed) mix, but kept where it was until
    it moves by more than 10%. Capacity hardly changes within that, and each new mix costs a fleet
    simulation."""
    if planned is None:
        return observed
    if all(1 / MIX_MOVE <= o / p <= MIX_MOVE for o, p in zip(observed, planned, strict=True)):
        return planned
    return observed


RAMP_FACTOR = 2.0  # a load that more than doubled within the window is a ramp


def steady_load(samples: tuple[tuple[float, float], ...], rate: float | None, now: float, window_s: float) -> bool:
    """Was the load not climbing steeply over the rate window? Misses in a window where the load
    ramped up are the plan being late (the window's average hides the load at its end, which may
    be twice the average), not the estimate's error."""
    if rate is None:
        return False
    seen = [v for t, v in samples if now - t < window_s]
    return not seen or rate <= RAMP_FACTOR * min(seen)


@dataclass(frozen=True)
class SpeedStep:
    history: History
    speed: float  # the step time over the model's to plan for (1.0: the model's own)
    reason: Reason | None  # why it moved, when it did
    note: str  # what this decision's window showed of it, for `llmscale explain`


def learn_speed(spec: LLMDeploymentSpec, variant: Variant, workload: Workload, signals: Signals, history: History,
                read_at: float, window_s: float, clean: bool, mix: tuple[float, float], started: bool) -> SpeedStep:
    """The pods' speed against the model (policy.speed): a rate window not read yet is read when
    `clean` (one shape serves, no backlog, and the window began after the Ready set last changed)
    and no pod of the shape drains; the speed to plan for, and why it moved. When it moves, the
    part of the capacity correction it explains (a correction below 1 for pods found slower, above 1
    for pods found faster) moves into it, so that one error is not counted twice."""
    hist = history
    shape = speed_key(spec, variant)
    reset = hist.speed_shape != shape
    if reset:
        # Readings belong to the shape they were read on; pods found slower keep a new shape
        # planned as slow (as the variant step weighs other shapes), faster ones speak for theirs.
        kept = hist.planned_speed if hist.planned_speed is not None and hist.planned_speed > 1 else None
        hist = hist.with_(speed_shape=shape, speed_readings=(), planned_speed=kept)
    last = hist.speed_readings[-1][0] if hist.speed_readings else None
    counts = workload.pods.get(variant.name)
    ready = counts.ready if counts is not None else workload.ready
    draining = counts.terminating if counts is not None else workload.terminating
    note = ""
    if not clean:
        note = "not read: another shape serves, requests queued, or the Ready pods changed within the window"
    elif draining:
        note = "not read: a pod drains"
    elif last is not None and read_at - last < window_s:
        note = "this window was read already"
    if not note and ready > 0:
        at = signals.sampled_at if signals.sampled_at is not None else read_at
        # A scrape a little before the window's start still shows how it began.
        scrapes = [(w, r) for t, w, r in hist.queue_scrapes if at - window_s * 1.25 <= t < at - 1.0]
        if signals.requests_running is not None:
            scrapes.append((signals.requests_waiting or 0.0, signals.requests_running))
        window_mix = (signals.mean_input_tokens or mix[0], signals.mean_output_tokens or mix[1])
        reading = speed_reading(replica_profile(spec, variant), signals, ready, window_mix, scrapes, window_s)
        if reading.factor is not None:
            hist = hist.with_(speed_readings=(hist.speed_readings + ((read_at, round(reading.factor, 4)),))[-READINGS_KEPT:])
            note = f"read x{reading.factor:.3f}"
        else:
            note = f"not read: {reading.why}"
    before = history.planned_speed or 1.0
    if hist is history:  # nothing new was read: the plan stands (and costs nothing to keep)
        return SpeedStep(hist, before, None, note)
    planned = planning_speed(learnt_speed(hist.speed_readings), hist.planned_speed)
    speed = planned or 1.0
    hist = hist.with_(planned_speed=planned)
    if speed == before:
        return SpeedStep(hist, speed, None, note)
    if reset:
        # A new shape: nothing was read on it, so nothing of the correction is explained.
        return SpeedStep(hist, speed, Reason(Code.CAPACITY_LEARNED, f"engine step time x{before:.3f} -> x{speed:.3f} of "
                                             "the model's: a new pod shape is read again"), note)
    fleet = max(ready, 1)
    old = variant_capacity(spec, variant, signals, 1.0, mix, fleet, started, before).per_replica
    new = variant_capacity(spec, variant, signals, 1.0, mix, fleet, started, speed).per_replica
    correction = hist.capacity_correction
    if old > 0 and new > 0:
        ratio = old / new
        if correction < 1 < ratio:
            correction = min(1.0, correction * ratio)
        elif correction > 1 > ratio:
            correction = max(1.0, correction * ratio)
    why = (f"engine step time x{before:.3f} -> x{speed:.3f} of the model's, from the median of "
           f"{len(hist.speed_readings)} steady windows' inter-token latency")
    if correction != hist.capacity_correction:
        why += f"; capacity estimate x{hist.capacity_correction:.2f} -> x{correction:.2f} (the speed explains it)"
        hist = hist.with_(capacity_correction=correction)
    return SpeedStep(hist, speed, Reason(Code.CAPACITY_LEARNED, why), note)


@dataclass(frozen=True)
class CapacityStep:
    """Step 2's output: what one replica sustains at the SLO in today's fleet, and what was learnt."""

    current: VariantCapacity  # per replica, in a fleet of today's size, after correction
    correction: float
    mix: tuple[float, float]  # token mix to plan for (mean prompt, mean output)
    settled: bool  # False while the window still holds the backlog from before the Ready set grew
    backlog_in_window: bool  # a decision within the rate window saw requests waiting: its latency holds them
    feasible: Condition
    history: History
    reasons: tuple[Reason, ...] = ()
    started: bool = False  # the running shape's pods have become Ready (vLLM does start on it)
    speed: float = 1.0  # the pods' step time over the model's, as planned for (policy.speed)
    speed_note: str = ""  # what this decision's window showed of the speed


def capacity(spec: LLMDeploymentSpec, variant: Variant, workload: Workload, signals: Signals, history: History,
             now: float, breach_ratio: float | None) -> CapacityStep:
    """Step 2: capacity per replica at the SLO, seeded by the performance model and corrected by what
    the replicas really do. A rate window teaches the correction and the token mix once: a later
    decision whose window overlaps it learns nothing new from it."""
    window_s = parse_duration(spec.metrics.rate_window)
    ready = workload.ready
    rate = signals.request_rate
    # Latency in a window that began before the Ready set last grew includes the backlog the new
    # replicas were started for: it says nothing about what today's replicas sustain.
    grew_at = now if history.ready_seen is not None and ready > history.ready_seen else history.ready_grew_at
    changed_at = now if history.ready_seen is not None and ready != history.ready_seen else history.ready_changed_at
    # The window is the read's (the operator may decide on a read made before this decision).
    read_at = signals.read_at if signals.read_at is not None else now
    settled = grew_at is None or read_at - grew_at > window_s
    same_pods = changed_at is None or read_at - changed_at > window_s
    hist = seen_started(spec, workload, history.with_(ready_seen=ready, ready_grew_at=grew_at, ready_changed_at=changed_at))

    # With requests queued, the counters show what the replicas completed, not what arrived: the
    # load was above what they carry, so misses say the plan was late, not that the estimate is
    # wrong; and the latency of the windows that still hold those requests says the same.
    backlog = (signals.requests_waiting or 0.0) > max(1.0, float(ready))
    if backlog:
        hist = hist.with_(backlog_at=now)
    # Requests of that backlog complete until the next decision: the window holds them one interval longer.
    backlog_in_window = hist.backlog_at is not None and now - hist.backlog_at <= window_s + parse_duration(spec.scaling.interval)

    # A window is dated by the read that measured it: the operator may decide twice on one read
    # (while its endpoint's batch is read again), and that read teaches once.
    seen = seen_mix(hist)
    if hist.mix_at is None or read_at - hist.mix_at >= window_s:
        seen = observed_mix(signals, window_s, seen)
        if seen != seen_mix(hist):
            hist = hist.with_(mean_input=seen.mean_input, mean_output=seen.mean_output,
                              mix_requests=round(seen.requests, 3), mix_at=read_at)
    mix = planning_mix(with_defaults(seen.mean_input, seen.mean_output) if seen.known else with_defaults(None, None),
                       hist.planned_mix)
    hist = hist.with_(planned_mix=mix)

    correction = hist.capacity_correction
    reasons: tuple[Reason, ...] = ()
    fresh = hist.learned_at is None or read_at - hist.learned_at >= window_s
    # During a switch the rate and the latency are the whole fleet's, both shapes, while `ready`
    # counts this shape's pods only: one new pod would seem to have carried the old pods' load
    # (a correction of x4 from one window). Nothing is learnt about a shape while pods of another
    # serve or drain, nor from a window that still holds the time they did.
    if any(c.ready or c.terminating for v, c in workload.pods.items() if v != variant.name):
        hist = hist.with_(mixed_at=now)
    # (One interval more: the pods last seen then may have served until just before this decision.)
    mixed = hist.mixed_at is not None and read_at - hist.mixed_at <= window_s + parse_duration(spec.scaling.interval)

    # The pods' speed against the model, from the inter-token latency they report at any load.
    started = has_started(spec, workload, hist, variant.name)
    sp = learn_speed(spec, variant, workload, signals, hist, read_at, window_s,
                     same_pods and not mixed and not backlog_in_window, mix, started)
    hist, speed = sp.history, sp.speed
    correction = hist.capacity_correction  # the speed may explain part of it (learn_speed)
    if sp.reason is not None:
        reasons = (sp.reason,)
    if (fresh and settled and not backlog_in_window and not mixed and signals.ttft_attainment is not None
            and steady_load(hist.rate_samples, rate, now, window_s)):
        share = spec.slo.ttft.percentile / 100 if spec.slo.ttft else 0.95
        seed = variant_capacity(spec, variant, signals, 1.0, mix, max(ready, 1), started, speed)
        per_ready = rate / ready if rate is not None and ready > 0 else None
        learned = refine_correction(correction, signals.ttft_attainment, share, breach_ratio, True, per_ready,
                                    seed.per_replica, rate * window_s if rate is not None else None)
        if learned != correction:
            reasons += (Reason(Code.CAPACITY_LEARNED, f"capacity estimate x{correction:.2f} -> x{learned:.2f} from the last "
                              f"{spec.metrics.rate_window} (TTFT attainment {signals.ttft_attainment:.1%})"),)
        correction = learned
        hist = hist.with_(capacity_correction=correction, learned_at=read_at)

    cap = variant_capacity(spec, variant, signals, correction, mix, max(workload.replicas, 1), started, speed)
    if cap.feasible:
        feasible = Condition("True", "SLOFeasible", f"variant {variant.name} sustains {cap.per_replica:.2f} req/s per replica "
                                                   f"({cap.limited_by}-bound)")
    else:
        feasible = Condition("False", Code.SLO_INFEASIBLE.value, f"variant {variant.name}: {cap.limited_by}")
    return CapacityStep(cap, correction, mix, settled, backlog_in_window, feasible, hist, reasons, started, speed, sp.note)
