"""The pods' engine speed against the performance model, learnt from the inter-token latency they
report (policy/speed.py, the capacity step's learn_speed), and the no-scale-down-while-rising hold."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from llmscale.api import parse_spec
from llmscale.perf.engine import Engine, Request
from llmscale.perf.hardware import server_profile
from llmscale.policy import Code, History, Proposal, Reason, Signals, Workload
from llmscale.policy.capacity import capacity, speed_key, variant_capacity
from llmscale.policy.forecast import rising_since
from llmscale.policy.speed import (
    SPEED_GRID,
    SpeedReading,
    learnt_speed,
    planning_speed,
    speed_reading,
)
from llmscale.policy.stabilization import Stabilized, stabilization
from llmscale.policy.types import PodCounts
from llmscale.sim.policies import LLMScalePolicy
from llmscale.sim.traffic import scenario
from llmscale.sim.twin import Twin
from tests.conftest import spec_dict

MODEL, GPU = "meta-llama/Llama-3.1-8B-Instruct", "nvidia-h100"


def spec(**kw: Any) -> Any:
    return parse_spec(spec_dict(**kw))


# ---- the model's mean inter-token latency ---------------------------------------------------------


def test_a_step_scale_multiplies_every_step_and_keys_the_caches() -> None:
    base, slow = server_profile(MODEL, GPU, 1), server_profile(MODEL, GPU, 1, step_scale=1.3)
    for args in ((1, 1024.0, 0), (64, 64 * 1500.0, 0), (8, 8000.0, 2048, 1024.0), (0, 0.0, 8192, 4096.0)):
        assert slow.step_seconds(*args) == pytest.approx(1.3 * base.step_seconds(*args), rel=1e-12)
    assert base != slow and hash(base) != hash(slow)
    assert dataclasses.replace(base, step_scale=1.0) == base


def engine_run(scale: float, rate: float, prompt: int, output: int, seconds: float = 400.0) -> tuple[float, float, float]:
    """(mean inter-token latency, sequences decoding on average, requests/s) of one engine fed
    Poisson arrivals, as vLLM's histogram _sum/_count would give them."""
    rnd = random.Random(7)
    engine = Engine(server_profile(MODEL, GPU, 1, step_scale=scale), record=False)
    t, i = 0.0, 0
    while True:
        t += rnd.expovariate(rate)
        if t >= seconds:
            break
        engine.submit(Request(i, t, prompt, output))
        i += 1
    engine.advance(seconds + 60)
    c = engine.counters
    return c.itl.sum / c.itl.count, c.itl.sum / (seconds + 60), c.success / (seconds + 60)


@pytest.mark.parametrize("scale", [1.0, 1.3])
@pytest.mark.parametrize(("rate", "prompt", "output"), [(1.0, 1000, 200), (4.0, 500, 300), (2.0, 200, 800), (6.0, 500, 300)])
def test_the_model_predicts_the_mean_inter_token_latency_of_its_engine_where_decode_dominates(
        scale: float, rate: float, prompt: int, output: int) -> None:
    itl, decoding, served = engine_run(scale, rate, prompt, output)
    model = server_profile(MODEL, GPU, 1)
    predicted = model.mean_itl(decoding, prompt + output / 2, served, prompt)
    decode_only = model.mean_itl(decoding, prompt + output / 2, 0.0, prompt)
    assert predicted is not None and decode_only is not None
    assert (predicted - decode_only) / predicted < 0.1  # the regime the speed is read in
    # Good to a few per cent, and never fast: the predictor's batch and prefill terms run short of
    # the engine's, so pods read up to 5-6 % slower than they are (more at heavier loads).
    assert scale <= itl / predicted <= 1.06 * scale


def test_the_model_gives_no_mean_when_prefill_would_take_nearly_all_the_time() -> None:
    model = server_profile(MODEL, GPU, 1)
    assert model.mean_itl(10.0, 13000.0, 5.0, 12000.0) is None


# ---- one window's reading ------------------------------------------------------------------------

PROFILE = server_profile(MODEL, GPU, 1)
MIX = (1000.0, 200.0)
STEADY = [(0.0, 8.0), (1.0, 9.0), (0.0, 8.0), (0.0, 9.0)]  # (waiting, running) at each scrape


def window(decoding: float, rate: float, scale: float = 1.2, pods: int = 1, **kw: Any) -> Signals:
    """Signals of a window on `pods` pods, each decoding `decoding` at `rate`, whose steps take
    `scale` times the model's."""
    itl = scale * (PROFILE.mean_itl(decoding, MIX[0] + MIX[1] / 2, rate, MIX[0]) or math.nan)
    fields: dict[str, Any] = {"itl_mean": itl, "sequences_decoding": pods * decoding, "request_rate": pods * rate,
                              "prompt_tokens_rate": pods * rate * MIX[0], "generation_tokens_rate": pods * rate * MIX[1]}
    return Signals(**{**fields, **kw})


@pytest.mark.parametrize(("signals", "serving", "scrapes", "expect"), [
    (window(8.0, 0.5), 1, STEADY, SpeedReading(1.2)),
    (window(8.0, 0.5, pods=2), 2, STEADY, SpeedReading(1.2)),
    (window(8.0, 0.5, 0.8), 1, STEADY, SpeedReading(0.8)),
    (window(8.0, 0.5, itl_mean=None), 1, STEADY,
     SpeedReading(None, "the inter-token latency's mean or the request rate is unknown")),
    (window(8.0, 0.5), 0, STEADY, SpeedReading(None, "the inter-token latency's mean or the request rate is unknown")),
    (window(0.01, 0.01), 1, STEADY, SpeedReading(None, "fewer than 200 output tokens in the window")),
    (window(8.0, 0.5), 1, [(0.0, 2.0), (0.0, 9.0), (0.0, 30.0)],
     SpeedReading(None, "the load did not hold steady over the window")),
    (window(8.0, 0.5), 1, [(0.0, 8.0), (0.0, 9.0)], SpeedReading(None, "the load did not hold steady over the window")),
    (window(2.0, 0.2), 1, [(0.0, 1.0), (0.0, 1.0), (0.0, 5.0)], SpeedReading(1.2)),  # a light load jumps by chance
    (window(8.0, 0.5), 1, [(0.0, 8.0), (3.0, 9.0), (0.0, 8.0)], SpeedReading(None, "requests waited within the window")),
    (window(8.0, 0.5, kv_cache_usage=0.95), 1, STEADY, SpeedReading(None, "the KV cache is nearly full (vLLM may preempt)")),
    (window(8.0, 0.5, preemptions=2.0), 1, STEADY, SpeedReading(None, "vLLM preempted sequences within the window")),
    (window(8.0, 6.0), 1, STEADY, SpeedReading(None, "prefill is too large a part of the inter-token latency")),
    (window(8.0, 0.5, 4.0), 1, STEADY, SpeedReading(None, "a mean inter-token latency 4.00x the model's is not a speed")),
])
def test_speed_reading(signals: Signals, serving: int, scrapes: list[tuple[float, float]], expect: SpeedReading) -> None:
    got = speed_reading(PROFILE, signals, serving, MIX, scrapes, 60.0)
    assert got.why == expect.why
    if expect.factor is None:
        assert got.factor is None
    else:
        assert got.factor == pytest.approx(expect.factor, rel=1e-9)


@pytest.mark.parametrize(("readings", "expect"), [
    ((), None),
    (((0.0, 1.3),), None),  # one window moves nothing
    (((0.0, 1.3), (60.0, 1.3)), None),
    (((0.0, 2.6), (60.0, 1.2), (120.0, 1.22)), 1.22),  # from three on: the median
    (((0.0, 1.1), (60.0, 1.2), (120.0, 1.3), (180.0, 1.4)), 1.25),
])
def test_learnt_speed(readings: tuple[tuple[float, float], ...], expect: float | None) -> None:
    assert learnt_speed(readings) == (None if expect is None else pytest.approx(expect))


@pytest.mark.parametrize(("learnt", "planned", "expect"), [
    (None, None, None),  # nothing learnt: the model's own
    (None, 1.2, 1.2),  # unknown holds what was planned
    (1.0, None, None),
    (1.03, None, None),  # within 4 % of the model: the model's own
    (1.05, None, SPEED_GRID ** 2),
    (1.2, None, SPEED_GRID ** 7),  # 1.189: the nearest grid step
    (1.22, SPEED_GRID ** 7, SPEED_GRID ** 7),  # within 4 %: kept
    (1.25, SPEED_GRID ** 7, SPEED_GRID ** 9),
    (0.8, 1.0, SPEED_GRID ** -9),
    (1.0, SPEED_GRID ** 7, None),  # back at the model: its own, not a factor of 1
])
def test_planning_speed(learnt: float | None, planned: float | None, expect: float | None) -> None:
    got = planning_speed(learnt, planned)
    assert got == (None if expect is None else pytest.approx(expect, rel=1e-12))


# ---- the capacity step learns it -----------------------------------------------------------------


def one_pod(ready: int = 1, **counts: Any) -> Workload:
    return Workload(replicas=ready, ready=ready, variant="h100x1", pods={"h100x1": PodCounts(ready=ready, **counts)})


def steady_history(read_at: float, **kw: Any) -> History:
    """A history whose scrapes show a steady load over the window before `read_at`, with two
    readings of 1.2 from earlier windows."""
    scrapes = tuple((read_at - 45.0 + 15.0 * i, 0.0, 8.0 + i % 2) for i in range(3))
    fields: dict[str, Any] = {"queue_scrapes": scrapes, "speed_readings": ((read_at - 180.0, 1.2), (read_at - 120.0, 1.21)),
                              "speed_shape": speed_key(spec(), spec().variants[0]), "ready_seen": 1}
    return History(**{**fields, **kw})


def read(t: float = 1000.0, scale: float = 1.2, **kw: Any) -> Signals:
    return dataclasses.replace(window(8.0, 0.5, scale), **{"requests_running": 9.0, "requests_waiting": 0.0,
                                                            "read_at": t, "sampled_at": t, **kw})


def test_a_window_teaches_the_speed_once_and_capacity_is_planned_with_it() -> None:
    s = spec()
    v = s.variants[0]
    sig = read()
    step = capacity(s, v, one_pod(), sig, steady_history(1000.0), 1000.0, None)
    speed = SPEED_GRID ** 7  # the median, 1.2, on the grid
    assert step.history.speed_readings == ((820.0, 1.2), (880.0, 1.21), (1000.0, pytest.approx(1.2, abs=1e-4)))
    assert step.history.planned_speed == pytest.approx(speed)
    assert step.speed == pytest.approx(speed)
    assert step.current == variant_capacity(s, v, sig, 1.0, step.mix, 1, False, speed)
    assert step.current.per_replica < variant_capacity(s, v, sig, 1.0, step.mix, 1).per_replica
    assert step.reasons == (Reason(Code.CAPACITY_LEARNED, "engine step time x1.000 -> x1.189 of the model's, from the "
                                                          "median of 3 steady windows' inter-token latency"),)
    assert step.speed_note == "read x1.200"
    # The next decision on the same read (or a window overlapping it) learns nothing more.
    again = capacity(s, v, one_pod(), sig, step.history, 1015.0, None)
    assert again.history.speed_readings == step.history.speed_readings and again.reasons == ()
    assert again.speed_note == "this window was read already"
    later = read(1030.0)
    assert capacity(s, v, one_pod(), later, step.history, 1030.0, None).history.speed_readings == step.history.speed_readings


def test_two_windows_move_nothing() -> None:
    s = spec()
    h = steady_history(1000.0, speed_readings=((880.0, 1.2),))
    step = capacity(s, s.variants[0], one_pod(), read(), h, 1000.0, None)
    assert len(step.history.speed_readings) == 2 and step.history.planned_speed is None and step.speed == 1.0


@pytest.mark.parametrize(("why", "workload", "history_kw", "signals_kw"), [
    ("requests waited", one_pod(), {}, {"requests_waiting": 5.0}),
    ("another shape serves", Workload(replicas=2, ready=1, variant="h100x1",
                                      pods={"h100x1": PodCounts(ready=1), "l4": PodCounts(ready=1)}), {}, {}),
    ("the Ready set changed within the window", one_pod(), {"ready_changed_at": 980.0}, {}),
    ("the Ready set shrank at this decision", one_pod(), {"ready_seen": 2}, {}),
    ("a pod drains", one_pod(terminating=1), {}, {}),
])
def test_no_speed_is_read_from_a_window_that_cannot_show_it(why: str, workload: Workload, history_kw: dict,
                                                            signals_kw: dict) -> None:
    s = spec(variants=[{"name": "h100x1", "accelerator": "nvidia-h100"}, {"name": "l4", "accelerator": "nvidia-l4"}])
    h = steady_history(1000.0, **history_kw)
    step = capacity(s, s.variants[0], workload, read(**signals_kw), h, 1000.0, None)
    assert step.history.speed_readings == h.speed_readings, why
    assert step.speed == 1.0 and step.history.planned_speed is None
    assert step.speed_note.startswith("not read: "), step.speed_note


@pytest.mark.parametrize(("scale", "correction", "transfer"), [
    (1.2, 0.7, True),  # pods found slower explain a correction below 1
    (1.2, 1.3, False),  # a correction above 1 is not what slower pods explain
    (0.8, 1.3, True),  # pods found faster explain a correction above 1
    (0.8, 0.7, False),
])
def test_the_correction_the_speed_explains_moves_into_it(scale: float, correction: float, transfer: bool) -> None:
    s = spec()
    v = s.variants[0]
    sig = read(scale=scale)
    h = steady_history(1000.0, capacity_correction=correction, speed_readings=((820.0, scale), (880.0, scale)))
    step = capacity(s, v, one_pod(), sig, h, 1000.0, None)
    assert step.speed == pytest.approx(SPEED_GRID ** round(math.log(scale) / math.log(SPEED_GRID)))
    ratio = (variant_capacity(s, v, sig, 1.0, step.mix, 1).per_replica
             / variant_capacity(s, v, sig, 1.0, step.mix, 1, False, step.speed).per_replica)
    assert (ratio > 1.1) if scale > 1 else (ratio < 0.9)
    expect = (min(1.0, correction * ratio) if correction < 1 else max(1.0, correction * ratio)) if transfer else correction
    assert step.correction == pytest.approx(expect) == step.history.capacity_correction
    assert ("(the speed explains it)" in step.reasons[0].message) == transfer


@pytest.mark.parametrize("change", [{"engineArgs": ["--max-num-seqs=128"]}, {"image": "vllm/vllm-openai:v0.12.0"},
                                    {"variants": [{"name": "h100x1", "accelerator": "nvidia-h200"}],
                                     "cost": {"maxGPUs": 8, "prices": {"nvidia-h200": "5.00"}}},
                                    {"variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 2}]}])
@pytest.mark.parametrize(("planned", "correction", "kept"), [(1.2, 0.7, 1.2), (0.8, 0.7, None), (0.8, 1.3, None)])
def test_a_new_shape_is_read_again_and_its_correction_stays(change: dict, planned: float, correction: float,
                                                             kept: float | None) -> None:
    """Readings belong to the shape they were read on (variant, GPU type and count, model, image,
    engine args): another is read again. Pods found slower keep the new shape planned as slow;
    faster ones do not speak for it; and the capacity correction is left as it was (nothing read on
    the new shape explains any of it)."""
    s = spec(**change)
    h = steady_history(1000.0, planned_speed=planned, capacity_correction=correction)  # read on the bed's spec
    step = capacity(s, s.variants[0], one_pod(), read(itl_mean=None), h, 1000.0, None)
    assert step.history.speed_readings == () and step.history.planned_speed == kept
    assert step.history.speed_shape == speed_key(s, s.variants[0]) != h.speed_shape
    assert step.correction == correction == step.history.capacity_correction
    if kept is None:
        assert step.reasons == (Reason(Code.CAPACITY_LEARNED, f"engine step time x{planned:.3f} -> x1.000 of the model's: "
                                                              "a new pod shape is read again"),)


def test_a_history_without_a_shape_is_read_as_a_new_one() -> None:
    """A status written before the shape was kept: its speed is not known to be this shape's."""
    s = spec()
    h = steady_history(1000.0, planned_speed=0.8, speed_shape=None)
    step = capacity(s, s.variants[0], one_pod(), read(itl_mean=None), h, 1000.0, None)
    assert step.history.planned_speed is None and step.history.speed_readings == ()


def test_a_scrape_just_before_the_window_still_shows_how_it_began() -> None:
    """30 s scrapes under a 60 s window: the oldest falls a little before the window's start."""
    s = spec()
    scrapes = ((930.0, 0.0, 8.0), (970.0, 0.0, 9.0))
    h = steady_history(1000.0, queue_scrapes=scrapes)
    step = capacity(s, s.variants[0], one_pod(), read(), h, 1000.0, None)
    assert len(step.history.speed_readings) == 3 and step.speed_note == "read x1.200"


def test_speed_fields_in_status_are_kept_field_by_field() -> None:
    h = History(speed_readings=((1.0, 1.2), (61.0, 1.21)), planned_speed=SPEED_GRID ** 7)
    assert History.parse(h.to_dict()) == (dataclasses.replace(h, planned_speed=round(SPEED_GRID ** 7, 6)), ())
    for bad in ({"speedReadings": [[1.0, 7.0]]}, {"speedReadings": [[61.0, 1.2], [1.0, 1.2]]},
                {"speedReadings": [[1.0, "x"]]}, {"plannedSpeed": "fast"}, {"plannedSpeed": float("nan")}):
        kept, dropped = History.parse({**bad, "capacityCorrection": 0.9})
        assert kept.capacity_correction == 0.9 and dropped == tuple(bad)


def test_pods_slower_than_the_model_are_found_from_their_latency_in_the_twin() -> None:
    """A steady load on pods 1.2x slower than the model: the plan learns it within a few windows,
    and plans the pods the slower engines need."""
    s = spec(replicas={"min": 1, "max": 8}, scaling={"interval": "15s"})
    trace = scenario("constant", rate=3.0, duration=600.0, mean_in=500, mean_out=300, seed=3)
    runs = {}
    for slowdown in (1.0, 1.2):
        policy = LLMScalePolicy()
        try:
            Twin.pod_slowdown = slowdown
            Twin(s, trace, policy).run()
        finally:
            Twin.pod_slowdown = 1.0
        runs[slowdown] = policy.history
    assert runs[1.0].planned_speed is None and runs[1.0].speed_readings
    # Within the plan's hysteresis (the reading is good to a few per cent), from its first minutes.
    assert runs[1.2].planned_speed == pytest.approx(1.2, rel=0.04)
    assert len(runs[1.2].speed_readings) >= 3 and runs[1.2].speed_readings[0][0] <= 300.0


# ---- no scale-down while the load rises ----------------------------------------------------------


@pytest.mark.parametrize(("samples", "now", "rate", "expect"), [
    (((985.0, 13.6),), 1000.0, 25.0, (13.6, 25.0)),
    (((985.0, 24.0),), 1000.0, 25.0, None),  # within chance
    (((985.0, 1.0),), 1000.0, 1.3, None),  # 0.3 req/s on 1 req/s: chance
    (((985.0, 1.0),), 1000.0, 2.5, (1.0, 2.5)),
    (((985.0, 27.0),), 1000.0, 30.0, None),  # a tenth: the planned rate moves so on a steady load
    (((985.0, 20.0),), 1000.0, 27.0, (20.0, 27.0)),
    (((950.0, 13.6),), 1000.0, 25.0, None),  # the decision before is too old to compare with
    ((), 1000.0, 25.0, None),
    (((985.0, 30.0),), 1000.0, 20.0, None),  # falling
])
def test_rising_since(samples: tuple[tuple[float, float], ...], now: float, rate: float,
                      expect: tuple[float, float] | None) -> None:
    assert rising_since(samples, now, rate, 15.0, 60.0) == expect


def test_no_scale_down_while_the_load_rises() -> None:
    s = spec(replicas={"min": 1, "max": 8})
    v = s.variants[0]
    w = Workload(replicas=4, ready=4, variant="h100x1", pods={"h100x1": PodCounts(ready=4)})
    recs = tuple((700.0 + 15 * i, 3) for i in range(21))
    history = History(recommendations=recs, observing_since=0.0)
    down = Proposal(3, (Reason(Code.CAPACITY_PLAN, "plan 3"),))
    free = stabilization(s, v, w, down, False, history, 1000.0)
    assert free.proposal.replicas == 3  # every recommendation of the window was 3
    held = stabilization(s, v, w, down, False, history, 1000.0, (13.6, 25.0))
    assert held == Stabilized(down.to(4, Reason(Code.SCALE_DOWN_STABILIZED, "held at 4: the load is rising "
                                                "(13.60 -> 25.00 req/s since the decision before)")),
                              free.history, 4)
    up = Proposal(6, (Reason(Code.CAPACITY_PLAN, "plan 6"),))
    assert stabilization(s, v, w, up, False, history, 1000.0, (13.6, 25.0)).proposal.replicas == 6
