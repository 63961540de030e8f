"""Part of step 2: how fast the pods' engines run against the performance model, learnt from the
mean inter-token latency they report at whatever load they carry.

The capacity correction learns only from SLO misses at a load near the estimate, which traffic
that comes and goes within a cold start rarely gives: with pods 20 % slower than the model every
burst was planned at the model's capacity and missed at its start (bench/README, "Home field").
The inter-token latency says how long an engine step takes at every load, light or heavy. vLLM's
histogram gives its mean over a rate window (_sum over _count) and, from the same _sum, how many
sequences decoded on average (each step adds its length once per sequence in it), so the model
predicts that mean for the load the pods carried, and the ratio is their speed against it.

A window is read only where that prediction is sound: one shape served with the same Ready pods
throughout and none draining (gone pods' tokens are in the window, the count in it is today's);
the load held steady over it (a window with a burst in half of it hides the batch its tokens
saw); no more requests waited than pods at any scrape (a queue feeds the engines in lumps, not at
random), vLLM preempted nothing over it and the KV cache is not nearly full (a preempted
sequence's wait lands in the mean); and prefill is a small part of the
predicted mean (with long or varied prompts the mean is mostly prefill, which the mix's mean
prompt cannot predict). The speed is the median of the last readings (each window read once), from three on; the
plan moves with it in steps of 2.5 %, and only once it moved by more than 4 %. It scales the whole
step, prefill too: the capacity correction still learns what it leaves. It belongs to the shape it
was read on (variant, model and engine args): a new shape starts from the model again, except
that pods found slower keep the new shape planned as slow (policy.variant says why).

Known biases on a real vLLM, none in the twin: prefix caching makes prefill cheaper than the model
predicts, so pods read faster by up to the prefill share (under a tenth); a router that loads pods
unevenly weighs the busy ones more in the mean; --max-num-batched-tokens is taken as 8,192.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from llmscale.perf.hardware import ServerProfile

from .types import SPEED_RANGE, SPEED_READINGS_KEPT, Signals

SPEED_MIN, SPEED_MAX = SPEED_RANGE  # a reading outside is another engine or another unit, not a speed
MAX_PREFILL_SHARE = 0.1  # of the predicted mean inter-token latency
MIN_TOKENS = 200.0  # output tokens in the window
MIN_SCRAPES = 3  # scrapes of the requests in flight within the window, to call its load steady
MIN_READINGS = 3  # the plan leaves the model's speed on the median of this many readings, not on one window
FULL_CACHE = 0.9  # KV cache use at which vLLM may preempt (a preempted sequence's wait lands in the histogram)
READINGS_KEPT = SPEED_READINGS_KEPT
SPEED_GRID = 1.025  # the speed planned for is a power of this
SPEED_MOVE = 1.04  # and moves only when the learnt speed left it by more than this factor


@dataclass(frozen=True)
class SpeedReading:
    """One rate window's reading: the pods' step time over the model's, or None with why not."""

    factor: float | None
    why: str = ""


def steady(running: list[float]) -> bool:
    """Did the requests running hold steady over the window: their spread over the scrapes within
    half their mean, or within chance (four Poisson spreads and two)? At a light load the count
    jumps by chance, and the batch hardly moves the step time there."""
    if len(running) < MIN_SCRAPES:
        return False
    mean = sum(running) / len(running)
    return max(running) - min(running) <= max(0.5 * mean, 4 * math.sqrt(mean) + 2)


def speed_reading(profile: ServerProfile, signals: Signals, serving: int, mix: tuple[float, float],
                  scrapes: list[tuple[float, float]], window_s: float) -> SpeedReading:
    """The speed one rate window shows, from `serving` Ready pods of one shape (`profile` at the
    model's own speed), whose requests (waiting, running) were scraped as `scrapes` over the window."""
    itl, decoding, rate = signals.itl_mean, signals.sequences_decoding, signals.request_rate
    if itl is None or decoding is None or rate is None or itl <= 0 or serving <= 0:
        return SpeedReading(None, "the inter-token latency's mean or the request rate is unknown")
    if decoding / itl * window_s < MIN_TOKENS:
        return SpeedReading(None, f"fewer than {MIN_TOKENS:.0f} output tokens in the window")
    if any(waiting > serving for waiting, _ in scrapes):
        return SpeedReading(None, "requests waited within the window")
    if signals.preemptions is not None and signals.preemptions > 0:
        return SpeedReading(None, "vLLM preempted sequences within the window")
    if signals.kv_cache_usage is not None and signals.kv_cache_usage >= FULL_CACHE:
        return SpeedReading(None, "the KV cache is nearly full (vLLM may preempt)")
    if not steady([running for _, running in scrapes]):
        return SpeedReading(None, "the load did not hold steady over the window")
    mean_in, mean_out = mix
    context = mean_in + mean_out / 2
    predicted = profile.mean_itl(decoding / serving, context, rate / serving, mean_in)
    decode_only = profile.mean_itl(decoding / serving, context, 0.0, mean_in)
    if predicted is None or decode_only is None or predicted <= 0:
        return SpeedReading(None, "prefill takes nearly all of the engines' time")
    if (predicted - decode_only) / predicted > MAX_PREFILL_SHARE:
        return SpeedReading(None, "prefill is too large a part of the inter-token latency")
    factor = itl / predicted
    if not SPEED_MIN <= factor <= SPEED_MAX:
        return SpeedReading(None, f"a mean inter-token latency {factor:.2f}x the model's is not a speed")
    return SpeedReading(factor)


def learnt_speed(readings: tuple[tuple[float, float], ...]) -> float | None:
    """The median of the readings kept, from MIN_READINGS on (one odd window moves nothing, nor
    does the first window after a restart that kept the plan but not the readings); None before."""
    return statistics.median(f for _, f in readings) if len(readings) >= MIN_READINGS else None


def planning_speed(learnt: float | None, planned: float | None) -> float | None:
    """The speed to plan for: the learnt one on a 2.5 % grid, kept where it was (the model's own
    while None) until the learnt one moves by more than 4 % (each new speed costs a fleet
    simulation, and the reading itself is good to a few per cent). None: the model's own."""
    if learnt is None or 1 / SPEED_MOVE <= learnt / (planned or 1.0) <= SPEED_MOVE:
        return planned
    step = round(math.log(learnt) / math.log(SPEED_GRID))
    return None if step == 0 else SPEED_GRID ** step
