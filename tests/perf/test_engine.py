"""The engine simulator against hand-computed cases."""

from __future__ import annotations

import math
import random

import pytest

from llmscale.perf import Engine, Request, buckets, server_profile
from llmscale.perf.capacity import (
    DEFAULT_SIGMA_IN,
    DEFAULT_SIGMA_OUT,
    _simulated,
    _snap,
    replica_capacity,
    simulated_capacity,
)
from llmscale.perf.histogram import histogram_quantile

PROFILE = server_profile("Llama-3.1-8B", "nvidia-h100", 1)


def test_one_request_on_an_idle_replica() -> None:
    e = Engine(PROFILE)
    e.submit(Request(0, 0.0, 100, 10))
    e.advance(100.0)
    (f,) = e.drain_finished()
    prefill = PROFILE.step_seconds(0, 0, 100, 50)
    assert f.ttft_s == pytest.approx(prefill)
    # Nine decode steps at batch 1 follow the first token, advanced as one macro step whose
    # context is taken at its mid-point (100 prompt tokens + 4.5 generated).
    assert f.e2e_s == pytest.approx(prefill + 9 * PROFILE.step_seconds(1, 104.5, 0), rel=1e-9)
    assert f.itl_s == pytest.approx((f.e2e_s - f.ttft_s) / 9)
    assert e.counters.success == 1 and e.counters.prompt_tokens == 100 and e.counters.generation_tokens == 10
    assert e.counters.ttft.count == 1 and e.counters.itl.count == 9


@pytest.mark.parametrize("busy", [False, True])
def test_a_request_submitted_ahead_of_the_clock_starts_when_it_arrives(busy: bool) -> None:
    # The fleet simulator submits a tick's arrivals at once: a step must not start on a request
    # before it arrives (its TTFT came out under one prefill step, even negative, before the fix).
    e = Engine(PROFILE)
    if busy:
        e.submit(Request(0, 0.0, 100, 2000))  # decoding while the next request arrives
    e.submit(Request(1, 0.07, 100, 10))
    e.advance(100.0)
    f = next(x for x in e.drain_finished() if x.id == 1)
    prefill = PROFILE.step_seconds(0, 0, 100, 50)
    if busy:
        # It joins at the first step boundary after it arrives: within one decode step of it.
        assert prefill <= f.ttft_s <= 2 * PROFILE.step_seconds(1, 3000, 100, 50)
    else:
        assert f.ttft_s == pytest.approx(prefill)


def test_two_simultaneous_requests_share_the_prefill_step() -> None:
    e = Engine(PROFILE)
    e.submit(Request(0, 0.0, 100, 1))
    e.submit(Request(1, 0.0, 100, 1))
    e.advance(10.0)
    a, b = e.drain_finished()
    assert a.ttft_s == pytest.approx(b.ttft_s) == pytest.approx(PROFILE.step_seconds(0, 0, 200, 50))


def test_a_prompt_larger_than_the_kv_cache_is_rejected() -> None:
    e = Engine(server_profile("Llama-3.1-8B", "nvidia-l4", 1))
    e.submit(Request(0, 0.0, 10_000_000, 10))
    e.advance(1.0)
    (f,) = e.drain_finished()
    assert f.rejected and e.counters.aborted == 1


def test_a_request_past_max_model_len_is_rejected_and_the_others_are_served() -> None:
    """vLLM answers 400 when prompt and output pass --max-model-len, however much KV cache is free."""
    e = Engine(PROFILE, max_model_len=8192)
    e.submit(Request(0, 0.0, 8000, 193))  # 8,193 tokens
    e.submit(Request(1, 0.0, 8000, 192))  # exactly 8,192: served
    e.advance(100.0)
    done = {f.id: f for f in e.drain_finished()}
    assert done[0].rejected and math.isinf(done[0].ttft_s) and not done[1].rejected
    assert e.counters.aborted == 1 and e.counters.success == 1


def test_queueing_beyond_max_num_seqs() -> None:
    e = Engine(PROFILE)
    for i in range(PROFILE.max_num_seqs + 10):
        e.submit(Request(i, 0.0, 10, 1000))
    e.advance(0.01)
    assert e.num_waiting == 10 and e.num_running == PROFILE.max_num_seqs


def test_capacity_orders_gpus_sensibly() -> None:
    h100 = simulated_capacity(PROFILE, 1000, 200, 0.1, 1.0)
    a100 = simulated_capacity(server_profile("Llama-3.1-8B", "nvidia-a100", 1), 1000, 200, 0.1, 1.0)
    assert h100.requests_per_s > a100.requests_per_s > 0
    l4 = replica_capacity(server_profile("Llama-3.1-8B", "nvidia-l4", 1), 1000, 200, 0.03, None)
    assert l4.requests_per_s == 0 and l4.limited_by.startswith("infeasible")
    assert not server_profile("Llama-3.1-70B", "nvidia-h100", 1).fits


def test_a_fleet_pools_long_prompts() -> None:
    """Behind a least-outstanding router a replica busy with a long prefill is passed over, so with
    long, spread prompts a replica in a fleet sustains more than it does alone; never less."""
    alone = simulated_capacity(PROFILE, 12000, 350, 0.1, 10.0, ttft_pct=99)
    in_four = simulated_capacity(PROFILE, 12000, 350, 0.1, 10.0, ttft_pct=99, replicas=4)
    assert in_four.requests_per_s > 1.2 * alone.requests_per_s > 0
    # Fleet sizes between the simulated ones are read between them, close to a direct simulation.
    in_eight = simulated_capacity(PROFILE, 12000, 350, 0.1, 10.0, ttft_pct=99, replicas=8)
    in_sixteen = simulated_capacity(PROFILE, 12000, 350, 0.1, 10.0, ttft_pct=99, replicas=16)
    assert in_four.requests_per_s <= in_eight.requests_per_s <= in_sixteen.requests_per_s
    closed = replica_capacity(PROFILE, _snap(12000), _snap(350), 0.1, 10.0)
    direct = _simulated(PROFILE, closed, _snap(12000), _snap(350), 0.1, 10.0, 95.0, 99.0, DEFAULT_SIGMA_IN, DEFAULT_SIGMA_OUT,
                        None, 8, 0.0)
    assert abs(in_eight.requests_per_s - direct.requests_per_s) <= 0.12 * direct.requests_per_s, (in_eight, direct)


def test_planned_capacity_holds_every_target_as_vllm_measures_it() -> None:
    """At the load the plan puts on a fleet (targetUtilization of its capacity), an independent run of the fleet meets the TTFT target and the
    inter-token target as vLLM's histogram counts it (one observation per gap, prefill steps included)."""
    cap = simulated_capacity(PROFILE, 1000, 200, 0.1, 0.25, itl_pct=95, ttft_pct=95, replicas=2)
    rng = random.Random(7)
    fleet = [Engine(PROFILE) for _ in range(2)]
    t, done = 0.0, []
    for i in range(4000):
        t += rng.expovariate(2 * cap.requests_per_s * 0.85)  # the default targetUtilization
        for e in fleet:
            e.advance(t)
        inp = max(1, int(rng.lognormvariate(math.log(1000) - 0.245, 0.7)))
        out = max(1, int(rng.lognormvariate(math.log(200) - 0.5, 1.0)))
        min(fleet, key=lambda e: e.outstanding).submit(Request(i, t, inp, out))
    for e in fleet:
        e.advance(t + 600)
        done += e.drain_finished()
    total = [sum(c) for c in zip(*(e.counters.itl.cumulative() for e in fleet), strict=True)]
    assert histogram_quantile(0.95, buckets.ITL, total) <= 0.1 * 1.1
    ttfts = sorted(f.ttft_s for f in done)
    assert ttfts[int(0.95 * len(ttfts))] <= 0.25 * 1.1


def test_a_pooled_fleet_never_beats_what_a_replica_pushes_through() -> None:
    """A simulated fleet of 16 runs for seconds of arrivals only; it claimed 32 req/s per replica
    where a replica pushes through 20 at most."""
    bound = replica_capacity(PROFILE, _snap(1024), _snap(256), None, None)  # the mix as the cache snaps it
    for n in (1, 4, 16):
        assert simulated_capacity(PROFILE, 1024, 256, 0.1, 1.0, 95, 99, replicas=n).requests_per_s <= bound.requests_per_s


@pytest.mark.parametrize(("model", "accelerator", "gpus", "max_model_len", "util", "refused"), [
    # Llama-3.1's own context is 131,072 tokens: one 24 GB L4 holds 27,465 of them after the weights.
    ("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", 1, None, None,
     "its KV cache holds 27,465 tokens, less than the model's 131,072-token context (set --max-model-len)"),
    ("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", 1, 8192, None, None),
    ("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", 1, 32768, None, "its KV cache holds 27,465 tokens, less than --max-model-len 32,768"),
    ("meta-llama/Llama-3.1-8B-Instruct", "nvidia-l4", 1, 32768, 0.98, None),  # 2 GB more for the cache: 42,112 tokens
    ("meta-llama/Llama-3.1-8B-Instruct", "nvidia-h100", 1, None, None, None),
    ("Qwen/Qwen2.5-7B-Instruct", "nvidia-l4", 1, None, None, None),  # 32,768 tokens: they fit
    ("acme/house-model-8b", "nvidia-l4", 1, None, None, None),  # context unknown: nothing to check
    ("meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100", 2, 8192, None, "the model does not fit in GPU memory"),
    ("meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100", 4, None, None, None),
])
def test_vllm_refuses_to_start_when_the_kv_cache_cannot_hold_the_longest_sequence(
        model: str, accelerator: str, gpus: int, max_model_len: int | None, util: float | None, refused: str | None) -> None:
    assert server_profile(model, accelerator, gpus).refuses_to_start(max_model_len, util) == refused
