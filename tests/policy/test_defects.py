"""The defects a review of the decision core found (issue 9), one test each. Every test here failed
on the core before its fix (see the issue's closing note for the values main produced)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from llmscale.api import parse_spec
from llmscale.controller.kube import observe_workload
from llmscale.controller.objects import DeploymentView, PodView
from llmscale.policy import Code, History, Signals, Workload, decide
from tests.conftest import spec_dict

NOW = 10_000.0


def missing(rate: float, attainment: float) -> Signals:
    """A window in which requests missed TTFT at a load far below what the estimate calls safe."""
    return Signals(ttft_quantile=0.9, itl_quantile=0.03, ttft_attainment=attainment, request_rate=rate,
                   prompt_tokens_rate=rate * 1000, generation_tokens_rate=rate * 200, requests_waiting=0,
                   requests_running=8, sampled_at=0)


def test_one_window_of_misses_trims_the_capacity_estimate_once() -> None:
    """15 s decisions over a 60 s rate window see the same misses four times; they count once.
    (main: 1.0 -> 0.7 -> 0.49 -> 0.34 -> 0.24 within one window.)"""
    spec = parse_spec(spec_dict())
    h = History(observing_since=0.0)
    seen = []
    for t in (1000.0, 1015.0, 1030.0, 1045.0):
        d = decide(spec, Workload("h100x1", 2, 2), missing(4.0, 0.80), h, t)
        h = d.history
        seen.append(round(h.capacity_correction, 3))
    assert seen == [0.7, 0.7, 0.7, 0.7]
    assert h.learned_at == 1000.0
    # The next window (60 s later) is new evidence and teaches again.
    d = decide(spec, Workload("h100x1", 2, 2), missing(4.0, 0.80), h, 1060.0)
    assert d.history.capacity_correction < 0.7 and d.history.learned_at == 1060.0
    assert Code.CAPACITY_LEARNED in d.codes


def test_the_token_mix_is_learnt_once_per_window() -> None:
    spec = parse_spec(spec_dict())
    h = History(observing_since=0.0)
    # 4 req/s over the 60 s window: 240 requests of 1,000 tokens.
    d = decide(spec, Workload("h100x1", 2, 2), missing(4.0, 0.99), h, 1000.0)
    assert d.history.mean_input == 1000.0 and d.history.mix_at == 1000.0 and d.history.mix_requests == 240.0
    long = Signals(**{**missing(4.0, 0.99).__dict__, "prompt_tokens_rate": 4.0 * 3000})
    d2 = decide(spec, Workload("h100x1", 2, 2), long, d.history, 1015.0)
    assert d2.history.mean_input == 1000.0 and d2.history.mix_requests == 240.0  # the overlapping window teaches nothing new
    d3 = decide(spec, Workload("h100x1", 2, 2), long, d2.history, 1060.0)
    assert d3.history.mean_input == pytest.approx(1000.0 + 240 / 480 * 2000.0) and d3.history.mix_requests == 480.0


def test_a_read_decided_on_twice_teaches_once() -> None:
    """The operator may decide twice on one Prometheus read (while its endpoint's batch is read
    again, up to two intervals later): what a window teaches is dated by the read, so a decision a
    window later on the same read learns nothing; one on a read a window later does."""
    spec = parse_spec(spec_dict())
    h = History(observing_since=0.0)
    read = Signals(**{**missing(4.0, 0.80).__dict__, "read_at": 995.0})
    d = decide(spec, Workload("h100x1", 2, 2), read, h, 1000.0)
    assert (round(d.history.capacity_correction, 3), d.history.learned_at, d.history.mix_at) == (0.7, 995.0, 995.0)
    longer = Signals(**{**read.__dict__, "prompt_tokens_rate": 4.0 * 3000})  # were it taught again, the mix would move
    d2 = decide(spec, Workload("h100x1", 2, 2), longer, d.history, 1060.0)  # a window later, the same read
    assert (d2.history.capacity_correction, d2.history.learned_at) == (d.history.capacity_correction, 995.0)
    assert (d2.history.mean_input, d2.history.mix_at) == (1000.0, 995.0) and Code.CAPACITY_LEARNED not in d2.codes
    fresh = Signals(**{**missing(4.0, 0.80).__dict__, "read_at": 1058.0})
    d3 = decide(spec, Workload("h100x1", 2, 2), fresh, d2.history, 1075.0)
    assert d3.history.capacity_correction < d.history.capacity_correction and d3.history.learned_at == 1058.0


def test_one_long_prompt_does_not_size_a_burst_of_short_ones() -> None:
    """The token mix was a moving average started from the first window's mean, whatever its size:
    one 3,418-token request in a quiet first minute set the mix, the capacity fell 17.5 -> 3.7 req/s
    per replica, and the 46 req/s burst of 1,000-token requests that followed planned 13 replicas
    where 3-4 carry it (the twin's onoff-14: 4.89 GPU-hours against static-peak's 2.00; 2.91 with
    the fix). A window's mix now weighs as many requests as it saw, and a mix is planned for
    only once it stands for 20 requests."""
    spec = parse_spec(spec_dict())
    one = Signals(ttft_quantile=0.05, itl_quantile=0.02, ttft_attainment=1.0, request_rate=1 / 60,
                  prompt_tokens_rate=3418 / 60, generation_tokens_rate=234 / 60, requests_waiting=0, requests_running=1,
                  sampled_at=0)
    d = decide(spec, Workload("h100x1", 1, 1), one, History(observing_since=0.0), NOW)
    assert d.history.mean_input == 3418.0 and d.history.mix_requests == pytest.approx(1.0)
    assert d.estimate.capacity_per_replica is not None and d.estimate.capacity_per_replica > 12, d.estimate
    burst = Signals(ttft_quantile=0.05, itl_quantile=0.02, ttft_attainment=1.0, request_rate=46.0,
                    prompt_tokens_rate=46.0 * 1000, generation_tokens_rate=46.0 * 256, requests_waiting=0,
                    requests_running=40, sampled_at=15)
    d2 = decide(spec, Workload("h100x1", 1, 1), burst, d.history, NOW + 15)
    assert d2.estimate.capacity_per_replica is not None and d2.estimate.capacity_per_replica > 12, d2.estimate
    assert d2.estimate.planned_replicas is not None and d2.estimate.planned_replicas <= 5, d2.estimate


def _pod(name: str, created: dt.datetime, ready_at: dt.datetime | None, variant: str = "h100x1") -> PodView:
    return PodView(name=name, variant=variant, created=created, ready_since=ready_at)


DEP = DeploymentView(name="chat-h100x1", variant="h100x1", replicas=2, controller="chat")


T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def _look(pods: list[Any], cold: dict[str, float], seen: list[str], last_look: dt.datetime | None) -> tuple[Any, list[str]]:
    return observe_workload([DEP], pods, cold, None, seen, None if last_look is None else last_look.timestamp(), 600)


def test_a_readiness_blip_on_an_old_pod_is_not_a_cold_start() -> None:
    """main folded the Ready condition's last transition on a two-hour-old pod: 90 s -> 1,512 s."""
    # Seen Ready before, blipped and came back just now (after the last look):
    blipped = _pod("old", T0, T0 + dt.timedelta(hours=2))
    w, seen = _look([blipped], {"h100x1": 90.0}, ["old"], T0 + dt.timedelta(hours=2) - dt.timedelta(seconds=5))
    assert w.cold_start_s == {"h100x1": 90.0} and seen == ["old"]
    # Caught not Ready at one look (still remembered as seen Ready), Ready at the next: not a start either.
    young = _pod("young", T0, T0 + dt.timedelta(minutes=25))
    _, seen = _look([_pod("young", T0, None)], {"h100x1": 90.0}, ["young"], T0 + dt.timedelta(minutes=24))
    assert seen == ["young"]
    w, _ = _look([young], {"h100x1": 90.0}, seen, T0 + dt.timedelta(minutes=24, seconds=50))
    assert w.cold_start_s == {"h100x1": 90.0}


def test_the_cold_start_is_measured_once_per_pod_creation_to_first_ready() -> None:
    loading = _pod("new", T0, None)
    w, seen = _look([loading], {"h100x1": 90.0}, [], T0 - dt.timedelta(seconds=10))
    assert seen == [] and w.starting == 1 and w.cold_start_s == {"h100x1": 90.0}
    ready = _pod("new", T0, T0 + dt.timedelta(seconds=140))
    w, seen = _look([ready], w.cold_start_s, seen, T0 + dt.timedelta(seconds=130))
    assert w.cold_start_s == {"h100x1": 100.0} and seen == ["new"]  # 0.8 x 90 + 0.2 x 140
    # The next look sees the same Ready pod: it is not folded again.
    w, _ = _look([ready], w.cold_start_s, seen, T0 + dt.timedelta(seconds=145))
    assert w.cold_start_s == {"h100x1": 100.0}
    # A pod created and Ready between two looks is measured too (fast starts count).
    quick = _pod("quick", T0 + dt.timedelta(seconds=150), T0 + dt.timedelta(seconds=155))
    w, _ = _look([ready, quick], w.cold_start_s, ["new"], T0 + dt.timedelta(seconds=149))
    assert w.cold_start_s == {"h100x1": 81.0}  # max(0.8 x 100 + 0.2 x 5, min(100, 5))
    # After a restart with no memory, nothing is measured at the first look.
    w, _ = _look([ready], {"h100x1": 90.0}, [], None)
    assert w.cold_start_s == {"h100x1": 90.0}


def test_an_unknown_request_rate_is_not_replaced_by_a_stored_sample() -> None:
    """main: planned 4 replicas for a 60 req/s sample stored 500 s earlier."""
    spec = parse_spec(spec_dict())
    h = History(rate_samples=((9_500.0, 60.0), (9_515.0, 60.0)), observing_since=0.0)
    s = Signals(ttft_quantile=0.1, requests_waiting=0, requests_running=2, unknown={"requestRate": "no series"})
    d = decide(spec, Workload("h100x1", 2, 2), s, h, NOW)
    assert d.to_replicas == 2
    assert d.estimate.forecast_rate is None and d.estimate.planned_replicas is None
    assert d.codes == [Code.METRICS_UNKNOWN]
    assert d.history.rate_samples == h.rate_samples  # nothing new learnt, nothing forgotten


def test_a_queue_with_no_completions_neither_panics_nor_releases() -> None:
    """2 Ready, 3 waiting, 0 running, rate 0: main computed an infinite delay and went to 6."""
    spec = parse_spec(spec_dict())
    s = Signals(request_rate=0.0, prompt_tokens_rate=0.0, generation_tokens_rate=0.0, requests_waiting=3.0,
                requests_running=0.0, sampled_at=0)
    d = decide(spec, Workload("h100x1", 2, 2), s, History(observing_since=0.0), NOW)
    assert d.to_replicas == 2
    assert Code.PANIC not in d.codes and d.history.panic_until is None
    assert d.estimate.feedback_replicas is None


def test_the_scale_down_window_remembers_recommendations_within_the_ceilings() -> None:
    """A spike that wanted 40 replicas under maxGPUs 4 is remembered as 4 (main kept 8 = the raw count)."""
    spec = parse_spec(spec_dict(cost={"maxGPUs": 4, "prices": {"nvidia-h100": "4"}}, scaling={"scaleUp": {"maxStep": 100}}))
    s = Signals(ttft_quantile=3.0, itl_quantile=0.03, request_rate=200, prompt_tokens_rate=200_000,
                generation_tokens_rate=40_000, requests_waiting=0, requests_running=50)
    d = decide(spec, Workload("h100x1", 4, 4), s, History(), 1000.0)
    assert d.to_replicas == 4 and d.history.recommendations == ((1000.0, 4),)


def test_min_zero_without_scale_to_zero_keeps_one_replica() -> None:
    """main: replicas.min 0 with scaleToZero disabled released the last replica on idleness."""
    spec = parse_spec(spec_dict(replicas={"min": 0, "max": 4}))
    idle = Signals(request_rate=0.0, prompt_tokens_rate=0.0, generation_tokens_rate=0.0, requests_waiting=0.0,
                   requests_running=0.0)
    h = History(observing_since=0.0, idle_since=0.0, recommendations=((NOW - 15, 1),))
    d = decide(spec, Workload("h100x1", 1, 1), idle, h, NOW)
    assert d.to_replicas == 1 and Code.IDLE in d.codes
    # At 0 (set by hand) with no demand, it comes back to 1: 0 is a one-way door without a demand signal.
    d0 = decide(spec, Workload("h100x1", 0, 0), idle, h, NOW)
    assert d0.to_replicas == 1 and Code.IDLE in d0.codes


def test_a_busy_window_outweighs_a_long_quiet_phase_of_long_prompts() -> None:
    """Past the 500-request memory a window moved the mix by 20 % at most, so a burst window of
    2,760 short requests after 600 long ones left the mix near the long prompts (2,934 tokens after
    the first burst window, 1,634 after six): the defect above again, once a deployment had seen
    500 requests. A window weighs as many requests as it holds against the memory's 500."""
    from llmscale.policy.capacity import ObservedMix, observed_mix

    quiet = ObservedMix(3418.0, 234.0, 500.0)
    burst = Signals(request_rate=46.0, prompt_tokens_rate=46.0 * 1000, generation_tokens_rate=46.0 * 256)
    after = observed_mix(burst, 60.0, quiet)
    assert after.mean_input is not None and after.mean_input < 1400, after
