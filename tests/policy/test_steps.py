"""Each step of the decision core on its own, table-driven with a fake clock: every case states the
step's whole output (proposal with its reasons, conditions, the history it hands on)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from llmscale.api import parse_spec
from llmscale.api.units import parse_duration
from llmscale.policy import Code, Condition, History, Proposal, Reason, Signals, Workload
from llmscale.policy.availability import Availability, availability
from llmscale.policy.capacity import (
    CapacityStep,
    VariantCapacity,
    capacity,
    observed_mix,
    seen_mix,
    shape_key,
    speed_key,
    variant_capacity,
)
from llmscale.policy.ceilings import Bounded, ceilings
from llmscale.policy.feedback import Feedback, feedback
from llmscale.policy.forecast import (
    Forecast,
    arrival_rate,
    burst_headroom,
    error_budget,
    forecast,
    held_share,
    hold_time,
    last_window_slope,
    long_memory,
    over_budget,
    record_load,
    rise_within,
    thin_scrapes,
    trend_forecast,
    window_arrivals,
)
from llmscale.policy.idleness import Idleness, idleness
from llmscale.policy.mode import mode
from llmscale.policy.plan import Plan, plan
from llmscale.policy.rollout import rollout
from llmscale.policy.stabilization import Stabilized, stabilization
from llmscale.policy.tolerance import tolerance
from llmscale.policy.types import Action, Decision, Estimate, PodCounts
from llmscale.policy.unknowns import unknowns
from llmscale.policy.variant import Shape, variant
from tests.conftest import spec_dict

NOW = 10_000.0
SPEC = parse_spec(spec_dict())
V = SPEC.variants[0]


def spec(**kw: Any) -> Any:
    return parse_spec(spec_dict(**kw))


def sig(rate: float | None = 10.0, **kw: Any) -> Signals:
    base: dict[str, Any] = {"request_rate": rate, "prompt_tokens_rate": None if rate is None else rate * 1000,
                            "generation_tokens_rate": None if rate is None else rate * 200, "requests_waiting": 0.0,
                            "requests_running": 4.0}
    base.update(kw)
    return Signals(**base)


def cap_step(per_replica: float = 10.0, settled: bool = True, backlog_in_window: bool = False) -> CapacityStep:
    return CapacityStep(VariantCapacity(V, per_replica, "ttft", 0.01), 1.0, (1000.0, 200.0), settled, backlog_in_window,
                        Condition("True", "SLOFeasible", ""), History())


# ---- 1. availability --------------------------------------------------------------------------------

AVAILABILITY = [
    ("all signals read", SPEC, sig(), Availability(None, True, Condition("True", "MetricsRead", "all signals read"))),
    ("Prometheus unreachable: hold, final", SPEC, Signals.unreachable("timeout"),
     Availability(Proposal(3, (Reason(Code.METRICS_UNAVAILABLE, "holding at 3 replicas: timeout"),)), False,
                  Condition("False", "MetricsUnavailable", "timeout"))),
    ("a critical signal unknown", SPEC, sig(None, unknown={"requestRate": "no series"}),
     Availability(None, True, Condition("False", "MetricsUnknown", "requestRate: no series"), ("requestRate",),
                  (Reason(Code.METRICS_UNKNOWN, "requestRate unknown (no series): scale-down disabled"),))),
    ("a secondary signal unknown", SPEC, sig(unknown={"kvCacheUsage": "NaN"}),
     Availability(None, True, Condition("True", "MetricsUnknown", "kvCacheUsage: NaN"))),
    ("Paused", spec(scaling={"mode": "Paused"}), sig(),
     Availability(Proposal(3, (Reason(Code.PAUSED, "scaling.mode is Paused"),)), False, None)),
    ("Paused with manualReplicas over maxGPUs", spec(replicas={"min": 1, "max": 16}, scaling={"mode": "Paused", "manualReplicas": 12}), sig(),
     Availability(Proposal(8, (Reason(Code.BUDGET_GPUS, "manualReplicas 12 capped at 8 by cost.maxGPUs"),
                               Reason(Code.PAUSED, "scaling.mode is Paused; manualReplicas 8"))), True, None)),
]


@pytest.mark.parametrize(("spec_", "signals", "expect"), [c[1:] for c in AVAILABILITY], ids=[c[0] for c in AVAILABILITY])
def test_availability(spec_: Any, signals: Signals, expect: Availability) -> None:
    assert availability(spec_, V, Workload("h100x1", 3, 3), signals) == expect


# ---- 3. forecast ------------------------------------------------------------------------------------

SEEN = (NOW, 0.0, 4.0)  # what sig() shows of the queue: 0 waiting, 4 running


def beyond_chance(peak: float, held: tuple[float, ...], hold_s: float, window_s: float = 60.0) -> float:
    """A held peak counts for what it exceeds the chance maximum of the windows held by: sqrt(2 ln k)
    Poisson spreads at the peak (sqrt(peak / window)), k = hold / window."""
    assert peak == max(held)
    return peak - math.sqrt(2 * math.log(max(2.0, hold_s / window_s))) * math.sqrt(peak / window_s)


P30 = beyond_chance(30.0, (30.0, 20.0, 2.0), 300.0)
P30B = beyond_chance(30.0, (30.0, 2.0, 25.0), 300.0)
P40 = beyond_chance(40.0, (40.0, 2.0, 2.0), 1800.0)
H40 = 105.0 - 1320.0 / P40  # see the last case
A27 = 10.0 + (300.0 - 2 * math.sqrt(301.0)) / 15.0  # see "a queue building"
A3 = 20.0 - (300.0 - 2 * math.sqrt(601.0)) / 15.0  # see "a backlog draining"
SPREADS_20 = 2 * math.sqrt(2 * 20 * 15 + 1)  # two Poisson spreads of the count in flight at 20/s over 15 s (49.03)
# How far the load rose within the horizon (105 s) to 25 and to 5 req/s from 2: less the chance
# spread of two windows' difference and of the lowest within it, (sqrt(2) + sqrt(2 ln 2)) x sqrt(rate / 60).
RISE_25 = 23.0 - (math.sqrt(2.0) + math.sqrt(2 * math.log(2.0))) * math.sqrt(25.0 / 60.0)
RISE_5 = 3.0 - (math.sqrt(2.0) + math.sqrt(2 * math.log(2.0))) * math.sqrt(5.0 / 60.0)


def rec(history: History, rate: float, rise: float = 0.0, held: float | None = None, since: float | None = None) -> History:
    """The history with what every decision adds: the long memory's record (NOW's hour, 10,000 s: the
    hour from 7,200 s; the rate, its rise, the requests of the 15 s since the previous decision),
    the load held above the load (`held`, None when nothing is) and when the rise under way began."""
    return history.with_(load_record=((7200.0, rate, rise, rate * 15.0),), held_level=held, rise_since=since)

FORECAST = [
    ("rate unknown: nothing to plan for, nothing learnt", sig(None), History(rate_samples=((NOW - 30, 50.0),)),
     Forecast(None, 105.0, 300.0, History(rate_samples=((NOW - 30, 50.0),), queue_scrapes=(SEEN,)))),
    ("steady: the current rate", sig(10.0), History(rate_samples=((NOW - 30, 10.0), (NOW - 15, 10.0))),
     Forecast(10.0, 105.0, 300.0, rec(History(rate_samples=((NOW - 30, 10.0), (NOW - 15, 10.0), (NOW, 10.0)), queue_scrapes=(SEEN,)), 10.0))),
    # sqrt(2 ln 5) x sqrt(10.7 / 60) = 0.76: a window at 10.7 req/s among windows at 10 is chance,
    # not a burst to hold.
    ("steady with a noisy window: the peak counts for what it exceeds chance by", sig(10.0),
     History(rate_samples=((NOW - 30, 10.7), (NOW - 15, 10.0))),
     Forecast(10.0, 105.0, 300.0, rec(History(rate_samples=((NOW - 30, 10.7), (NOW - 15, 10.0), (NOW, 10.0)), queue_scrapes=(SEEN,)), 10.0))),
    ("a lull under a recent peak holds the peak and starts the lull", sig(2.0),
     History(rate_samples=((NOW - 60, 30.0), (NOW - 15, 20.0))),
     Forecast(P30, 105.0, 300.0, rec(History(rate_samples=((NOW - 60, 30.0), (NOW - 15, 20.0), (NOW, 2.0)), quiet_since=NOW,
                                         lull_peak=P30, queue_scrapes=(SEEN,)), 2.0, held=P30),
              (Reason(Code.BURST_MEMORY, f"holding capacity for the {P30:.2f} req/s peak of the last 300s (now 2.00 req/s)"),))),
    # The burst under way would be measured against the load held above the load before it came back:
    # none was recorded (the hold had run out, or a status from before it was kept), so it teaches none.
    ("the load comes back: the lull's length is remembered once", sig(25.0),
     History(rate_samples=((NOW - 200, 30.0), (NOW - 15, 2.0)), quiet_since=NOW - 120, lull_peak=30.0),
     Forecast(P30B, 105.0, 300.0, rec(History(rate_samples=((NOW - 200, 30.0), (NOW - 15, 2.0), (NOW, 25.0)), burst_gaps=(120.0,),
                                          queue_scrapes=(SEEN,)), 25.0, RISE_25, P30B, NOW - 15),
              (Reason(Code.BURST_MEMORY, f"holding capacity for the {P30B:.2f} req/s peak of the last 300s (now 25.00 req/s)"),),
              rising=(2.0, 25.0))),
    ("a lull outlasts the hold: it goes on until the load comes back to its peak", sig(5.0),
     History(rate_samples=((NOW - 15, 2.0),), quiet_since=NOW - 1200, lull_peak=30.0),
     Forecast(5.0, 105.0, 300.0, rec(History(rate_samples=((NOW - 15, 2.0), (NOW, 5.0)), quiet_since=NOW - 1200, lull_peak=30.0,
                                         queue_scrapes=(SEEN,)), 5.0, RISE_5, since=NOW - 15), rising=(2.0, 5.0))),
    ("a queue is drained within the horizon (at least two minutes)", sig(10.0, requests_waiting=60.0), History(),
     Forecast(10.5, 105.0, 300.0, rec(History(rate_samples=((NOW, 10.0),), queue_scrapes=((NOW, 60.0, 4.0),)), 10.0))),
    # 4 -> 304 in flight in 15 s at 10 completions/s: 300 more, of which the two spreads of chance
    # (2 x sqrt(2 x 10 x 15 + 1) = 34.7) are no evidence: 10 + 265.3 / 15 = 27.69 arrive per second.
    ("a queue building: the arrivals are the completions plus what the requests in flight grew by beyond chance",
     sig(10.0, requests_waiting=150.0, requests_running=154.0), History(queue_scrapes=((NOW - 15, 0.0, 4.0),)),
     Forecast(A27 + 150.0 / 120.0, 105.0, 300.0, rec(History(rate_samples=((NOW, A27),), queue_scrapes=((NOW - 15, 0.0, 4.0),
                                                        (NOW, 150.0, 154.0))), A27), arrivals=A27)),
    # sqrt(2 x 10 x 15 + 1) = 17.3: a change of 30 in flight is within twice that, so no evidence.
    ("the requests in flight move within chance: the completions stand for the arrivals",
     sig(10.0, requests_running=34.0), History(queue_scrapes=((NOW - 15, 0.0, 4.0),)),
     Forecast(10.0, 105.0, 300.0, rec(History(rate_samples=((NOW, 10.0),), queue_scrapes=((NOW - 15, 0.0, 4.0),
                                         (NOW, 0.0, 34.0))), 10.0), arrivals=10.0)),
    # The queue shrank 400 -> 100 while 20/s completed: 3.3 arrive (300 fewer, less the two spreads of
    # chance, 2 x sqrt(601) = 49.0, over 15 s, under 20); the plan keeps the completions and
    # adds nothing to drain a queue the Ready replicas already drain.
    ("a backlog draining: the completions, nothing added for the queue",
     sig(20.0, requests_waiting=100.0, requests_running=100.0), History(queue_scrapes=((NOW - 15, 400.0, 100.0),)),
     Forecast(20.0, 105.0, 300.0, rec(History(rate_samples=((NOW, 20.0),), queue_scrapes=((NOW - 15, 400.0, 100.0),
                                         (NOW, 100.0, 100.0))), 20.0), arrivals=A3, draining=True)),
    # Prometheus scraped less often than the operator decides: the next decision sees the same
    # scrape, measures between the same two, and reaches the same verdict (not "unknown").
    ("the same scrape again: the same arrivals and the same drain",
     sig(20.0, requests_waiting=100.0, requests_running=100.0),
     History(queue_scrapes=((NOW - 15, 400.0, 100.0), (NOW, 100.0, 100.0))),
     Forecast(20.0, 105.0, 300.0, rec(History(rate_samples=((NOW, 20.0),), queue_scrapes=((NOW - 15, 400.0, 100.0),
                                         (NOW, 100.0, 100.0))), 20.0), arrivals=A3, draining=True)),
    # Prometheus's clock stepped back 30 s (an HA pair's other replica answered): the scrapes
    # from "after" it are dropped, so they stay oldest first and round-trip through status.
    ("a scrape time that steps back restarts the window", sig(10.0),
     History(queue_scrapes=((NOW - 45, 0.0, 4.0), (NOW + 15, 0.0, 4.0), (NOW + 30, 0.0, 4.0))),
     Forecast(10.0, 105.0, 300.0, rec(History(rate_samples=((NOW, 10.0),), queue_scrapes=((NOW - 45, 0.0, 4.0), SEEN)), 10.0),
              arrivals=10.0)),
    ("gauges seen more than a rate window ago: no arrivals, and the old scrape is forgotten",
     sig(10.0, requests_running=400.0), History(queue_scrapes=((NOW - 120, 0.0, 4.0),)),
     Forecast(10.0, 105.0, 300.0, rec(History(rate_samples=((NOW, 10.0),), queue_scrapes=((NOW, 0.0, 400.0),)), 10.0))),
    # The backlog shrank 800 -> 200 in flight over the 45 s the scrapes span while 40/s completed:
    # 40 - 600 / 45 = 26.67 arrived per second over the window. The last interval alone (400 -> 100
    # waiting against 60 s of completions) says 40 - (300 - 2 x sqrt(1201)) / 15 = 24.6.
    ("a backlog draining over the rate window: the arrivals over the window, not the drain's pace",
     sig(40.0, requests_waiting=100.0, requests_running=100.0),
     History(queue_scrapes=((NOW - 45, 700.0, 100.0), (NOW - 30, 600.0, 100.0), (NOW - 15, 400.0, 100.0))),
     Forecast(40.0 - 600.0 / 45.0, 105.0, 300.0,
              rec(History(rate_samples=((NOW, 40.0 - 600.0 / 45.0),),
                      queue_scrapes=((NOW - 45, 700.0, 100.0), (NOW - 30, 600.0, 100.0), (NOW - 15, 400.0, 100.0),
                                     (NOW, 100.0, 100.0))), 40.0 - 600.0 / 45.0),
              arrivals=40.0 - (300.0 - 2 * math.sqrt(1201.0)) / 15.0, draining=True)),
    # The queue nearly gone: 800 -> 70 in flight over the 60 s window while 30/s completed, so
    # 30 - 730 / 60 = 17.83 arrived per second. The last interval's shrink (160 -> 70, less two
    # spreads of chance, 2 x sqrt(901) = 60.0) says 28.0, near the drain's pace: not taken.
    ("a drain's end: the arrivals over the window, not the last interval's",
     sig(30.0, requests_waiting=10.0, requests_running=60.0),
     History(queue_scrapes=((NOW - 60, 700.0, 100.0), (NOW - 45, 400.0, 100.0), (NOW - 30, 200.0, 100.0),
                            (NOW - 15, 60.0, 100.0))),
     Forecast(30.0 - 730.0 / 60.0, 105.0, 300.0,
              rec(History(rate_samples=((NOW, 30.0 - 730.0 / 60.0),),
                      queue_scrapes=((NOW - 60, 700.0, 100.0), (NOW - 45, 400.0, 100.0), (NOW - 30, 200.0, 100.0),
                                     (NOW - 15, 60.0, 100.0), (NOW, 10.0, 60.0))), 30.0 - 730.0 / 60.0),
              arrivals=30.0 - (90.0 - 2 * math.sqrt(901.0)) / 15.0, draining=True)),
    # Scrapes jitter: the one nearest the window's start is 60.5 s old. It still marks the window,
    # and the growth is per second of the span it covers: 30 - 730 / 60.5.
    ("a drain seen by jittered scrapes: the scrape nearest the window's start, over its real span",
     sig(30.0, requests_waiting=10.0, requests_running=60.0),
     History(queue_scrapes=((NOW - 60.5, 700.0, 100.0), (NOW - 45.25, 400.0, 100.0), (NOW - 30.125, 200.0, 100.0),
                            (NOW - 15.25, 60.0, 100.0))),
     Forecast(30.0 - 730.0 / 60.5, 105.0, 300.0,
              rec(History(rate_samples=((NOW, 30.0 - 730.0 / 60.5),),
                      queue_scrapes=((NOW - 60.5, 700.0, 100.0), (NOW - 45.25, 400.0, 100.0), (NOW - 30.125, 200.0, 100.0),
                                     (NOW - 15.25, 60.0, 100.0), (NOW, 10.0, 60.0))), 30.0 - 730.0 / 60.5),
              arrivals=30.0 - (90.0 - 2 * math.sqrt(2 * 30 * 15.25 + 1)) / 15.25, draining=True)),
    # The backlog drained 15 s ago: 1,000 -> 130 in flight over the window while 56/s completed.
    # The last interval moved within chance (128 -> 130: the two-scrape estimate says 56), but the
    # window still holds the drain: 56 - 870 / 60 = 41.5 arrived per second, and that is recorded.
    ("the window after a drain: the arrivals over the window, not the completions that served the backlog",
     sig(56.0, requests_running=130.0),
     History(queue_scrapes=((NOW - 60, 900.0, 100.0), (NOW - 45, 600.0, 100.0), (NOW - 30, 200.0, 100.0),
                            (NOW - 15, 1.0, 127.0))),
     Forecast(56.0 - 870.0 / 60.0, 105.0, 300.0,
              rec(History(rate_samples=((NOW, 56.0 - 870.0 / 60.0),),
                      queue_scrapes=((NOW - 60, 900.0, 100.0), (NOW - 45, 600.0, 100.0), (NOW - 30, 200.0, 100.0),
                                     (NOW - 15, 1.0, 127.0), (NOW, 0.0, 130.0))), 56.0 - 870.0 / 60.0),
              arrivals=56.0)),
    # 160 -> 140 in flight over the window at 10/s: within two spreads of chance
    # (2 x sqrt(2 x 10 x 60 + 1) = 69.3), so no drain is taken from it: the completions stand.
    ("the window's requests in flight moved within chance: the completions, not the window's arrivals",
     sig(10.0, requests_running=140.0),
     History(queue_scrapes=((NOW - 60, 0.0, 160.0), (NOW - 45, 0.0, 150.0), (NOW - 30, 0.0, 145.0),
                            (NOW - 15, 0.0, 142.0))),
     Forecast(10.0, 105.0, 300.0,
              rec(History(rate_samples=((NOW, 10.0),),
                      queue_scrapes=((NOW - 60, 0.0, 160.0), (NOW - 45, 0.0, 150.0), (NOW - 30, 0.0, 145.0),
                                     (NOW - 15, 0.0, 142.0), (NOW, 0.0, 140.0))), 10.0),
              arrivals=10.0)),
    # The same drain seen over 15 s only (after a restart): the windows would mix, so the
    # completions stand, as before.
    ("a backlog draining, scrapes not yet covering the window: the completions",
     sig(40.0, requests_waiting=100.0, requests_running=100.0), History(queue_scrapes=((NOW - 15, 400.0, 100.0),)),
     Forecast(40.0, 105.0, 300.0, rec(History(rate_samples=((NOW, 40.0),), queue_scrapes=((NOW - 15, 400.0, 100.0),
                                                                                       (NOW, 100.0, 100.0))), 40.0),
              arrivals=40.0 - (300.0 - 2 * math.sqrt(1201.0)) / 15.0, draining=True)),
    # 40 req/s x 105 s = 4,200 misses if the burst came back with the capacity gone; the SLO allows
    # 5% of (mean 14.67 req/s over the three samples x 1,800 s) = 1,320: the peak is held for the whole
    # burst memory, as much of it as keeps the misses in the budget: of the peak beyond chance P40,
    # h = 105 - 1,320 / P40 s, P40 x h / (0.5 + h).
    ("bursts came back and one more would overspend the error budget: the peak is held for half an hour",
     sig(2.0), History(rate_samples=((NOW - 1000, 40.0), (NOW - 15, 2.0)), burst_gaps=(200.0,), quiet_since=NOW - 900,
                       lull_peak=40.0),
     Forecast(P40 * H40 / (0.5 + H40), 105.0, 1800.0,
              rec(History(rate_samples=((NOW - 1000, 40.0), (NOW - 15, 2.0), (NOW, 2.0)), burst_gaps=(200.0,),
                      quiet_since=NOW - 900, lull_peak=40.0, queue_scrapes=(SEEN,)), 2.0, held=P40 * H40 / (0.5 + H40)),
              (Reason(Code.BURST_MEMORY, f"holding capacity for the {P40 * H40 / (0.5 + H40):.2f} req/s peak of the last 1800s (now 2.00 req/s)"),))),
]


@pytest.mark.parametrize(("signals", "history", "expect"), [c[1:] for c in FORECAST], ids=[c[0] for c in FORECAST])
def test_forecast(signals: Signals, history: History, expect: Forecast) -> None:
    got = forecast(SPEC, V, Workload("h100x1", 3, 3), signals, history, NOW)
    assert got == expect
    assert History.parse(got.history.to_dict()) == (History.parse(got.history.to_dict())[0], ())  # status takes it back


# The long memory (a day of hourly records) and the headroom learnt from returning bursts.
DAY = 86400.0
CHANCE = math.sqrt(2.0) + math.sqrt(2 * math.log(2.0))  # rise_within's allowance, in spreads, with two windows before
BURST = ((0.0, 45.0, 43.0, 60000.0),)  # a rise of 43 req/s within one cold start, to 45 req/s
AGAIN = ((3600.0, 30.0, 28.0, 30000.0),)  # a big rise came back an hour later (28 >= 43 / 2)
QUIET = ((7200.0, 20.0, 3.0, 30000.0),)  # this hour: small rises only


def hourly(n: int, top: float, rise: float, requests: float, first: float = 0.0) -> tuple[tuple[float, float, float, float], ...]:
    return tuple((first + 3600.0 * i, top, rise, requests) for i in range(n))


@pytest.mark.parametrize(("growth", "expect"), [
    ((), 1 / 0.85),  # nothing learnt: targetUtilization's headroom
    ((0.9,) * 8, 1 / 0.85),  # eight returns: the highest of eight bounds the next one only 8 times in 9
    ((0.9,) * 9, 1.0),  # nine came back lower: plan the held peak itself, never below it
    ((0.7,) * 8 + (1.05,), 1.05),  # as high as the highest came back
    ((0.9,) * 8 + (1.3,), 1 / 0.85),  # one came back higher than targetUtilization allows for: its headroom stays
])
def test_burst_headroom(growth: tuple[float, ...], expect: float) -> None:
    assert burst_headroom(growth, 0.85) == pytest.approx(expect)


@pytest.mark.parametrize(("record", "now", "rate", "rise", "rise_at", "requests", "expect"), [
    ((), 7300.0, 10.0, 2.0, 7300.0, 150.0, ((7200.0, 10.0, 2.0, 150.0),)),
    # Within the hour: maxima (a rise seen again changes nothing) and the requests added once.
    (((7200.0, 30.0, 20.0, 900.0),), 7400.0, 10.0, 25.0, 7350.0, 150.0, ((7200.0, 30.0, 25.0, 1050.0),)),
    # A rise that began in the hour before counts there: a burst at the turn of the hour is one rise.
    (((3600.0, 40.0, 10.0, 900.0),), 7210.0, 45.0, 30.0, 7190.0, 150.0,
     ((3600.0, 40.0, 30.0, 900.0), (7200.0, 45.0, 0.0, 150.0))),
    # A new hour appends; a record that ended more than a day ago is dropped.
    (((0.0, 9.0, 9.0, 9.0), (DAY - 3600.0, 30.0, 20.0, 900.0)), DAY + 3700.0, 10.0, 0.0, DAY + 3700.0, 150.0,
     ((DAY - 3600.0, 30.0, 20.0, 900.0), (DAY + 3600.0, 10.0, 0.0, 150.0))),
    # A record from "after" now (a clock that stepped back, a hand-edited status) is dropped: oldest first.
    (((7200.0, 30.0, 20.0, 900.0), (10800.0, 5.0, 1.0, 10.0)), 7300.0, 10.0, 0.0, 7300.0, 150.0,
     ((7200.0, 30.0, 20.0, 1050.0),)),
])
def test_record_load(record: tuple[tuple[float, float, float, float], ...], now: float, rate: float, rise: float,
                     rise_at: float, requests: float, expect: tuple[tuple[float, float, float, float], ...]) -> None:
    assert record_load(record, now, rate, rise, rise_at, requests) == expect


@pytest.mark.parametrize(("samples", "rate", "expect"), [
    ((), 40.0, (0.0, NOW)),
    (((NOW - 200.0, 1.0),), 40.0, (0.0, NOW)),  # the low window lies beyond the horizon (105 s)
    (((NOW - 90.0, 2.0), (NOW - 15.0, 30.0)), 40.0, (38.0 - CHANCE * math.sqrt(40.0 / 60.0), NOW - 90.0)),
    (((NOW - 30.0, 10.0), (NOW - 15.0, 10.3)), 10.4, (0.0, NOW)),  # within chance: no rise
    (((NOW - 30.0, 1.0), (NOW - 15.0, 1.0)), 1.3, (0.0, NOW)),  # a steady 1 req/s: 0.3 more is chance
    (((NOW - 30.0, 40.0),), 2.0, (0.0, NOW)),  # a fall is no rise
])
def test_rise_within(samples: tuple[tuple[float, float], ...], rate: float, expect: tuple[float, float]) -> None:
    assert rise_within(samples, NOW, rate, 105.0, 60.0) == pytest.approx(expect)


@pytest.mark.parametrize(("record", "rate", "expect"), [
    ((), 2.0, None),
    (hourly(3, 12.0, 0.0, 36000.0), 2.0, None),  # no rise at all
    (BURST + QUIET, 2.0, None),  # one big rise in the day (a load test): nothing held beyond the burst memory
    # It came back: 2 x 43 x 105 s of misses against 1 % of 120,000 requests: held, up to the day's
    # highest rate (2 + 43 > 45), or today's load plus the rise.
    (BURST + AGAIN + QUIET, 2.0, (45.0, 43.0)),
    (BURST + AGAIN + QUIET, 1.0, (44.0, 43.0)),
    # Two big rises in a day of 500,000 requests an hour: their 2 x 43 x 105 = 9,030 misses fit the
    # error budget of 1 % of the day's 11.5 million requests.
    (hourly(1, 45.0, 43.0, 500000.0) + hourly(21, 40.0, 3.0, 500000.0, 3600.0) + ((DAY - 3600.0, 45.0, 40.0, 500000.0),),
     2.0, None),
])
def test_long_memory(record: tuple[tuple[float, float, float, float], ...], rate: float,
                     expect: tuple[float, float] | None) -> None:
    assert long_memory(record, rate, 105.0, 0.01) == expect


P99 = spec(slo={"ttft": {"target": "1s", "percentile": 99}, "interTokenLatency": {"target": "100ms", "percentile": 95}})


def test_a_day_s_record_holds_capacity_for_a_big_rise_the_half_hour_memory_has_forgotten() -> None:
    """Bursts of random heights: 45 req/s two hours ago, 30 an hour ago, smaller ones since. The
    half-hour burst memory holds only this lull's 2 req/s; the long memory holds what the big one
    needs (its peak less the chance spread of the highest of the burst memory's windows, times the
    share the error budget asks for), and says so."""
    record = BURST + AGAIN + QUIET
    h = History(rate_samples=((NOW - 900.0, 20.0), (NOW - 15.0, 2.0)), load_record=record)
    got = forecast(P99, V, Workload("h100x1", 3, 3), sig(2.0), h, NOW)
    top = 45.0 - math.sqrt(2 * math.log(1800.0 / 60.0)) * math.sqrt(45.0 / 60.0)
    budget = 0.01 * (20.0 + 2.0 + 2.0) / 3 * 1800.0  # the burst memory's error budget (its samples' mean over half an hour)
    h_s = 105.0 - budget / top
    level = top * h_s / (1.0 + h_s)
    assert got == Forecast(pytest.approx(level), 105.0, 300.0, History(
        rate_samples=((NOW - 900.0, 20.0), (NOW - 15.0, 2.0), (NOW, 2.0)),
        load_record=BURST + AGAIN + ((7200.0, 20.0, 3.0, 30000.0 + 2.0 * 15.0),), queue_scrapes=(SEEN,),
        held_level=pytest.approx(level)),
        (Reason(Code.BURST_MEMORY, f"holding capacity for {level:.2f} req/s: the load rose by 43.00 req/s within one cold "
                                   "start in 2 hours of the last day (now 2.00 req/s)"),))


def test_bursts_that_came_back_no_higher_plan_the_held_peak_at_their_headroom() -> None:
    """Nine bursts came back to at most 0.95 of the load held for them: the held 30 req/s peak is
    planned at full capacity x 1.0 (not at targetUtilization's 85 %), and a rise toward it is no
    ramp to extrapolate past it."""
    h = History(rate_samples=((NOW - 60.0, 30.0), (NOW - 30.0, 5.0), (NOW - 15.0, 2.0)), burst_growth=(0.95,) * 9)
    got = forecast(SPEC, V, Workload("h100x1", 3, 3), sig(2.0), h, NOW)
    held = beyond_chance(30.0, (30.0, 5.0, 2.0, 2.0), 300.0)
    after = History(rate_samples=((NOW - 60.0, 30.0), (NOW - 30.0, 5.0), (NOW - 15.0, 2.0), (NOW, 2.0)), burst_growth=(0.95,) * 9,
                    load_record=((7200.0, 2.0, 0.0, 30.0),), quiet_since=NOW, lull_peak=held, queue_scrapes=(SEEN,),
                    held_level=held)
    peak_reason = Reason(Code.BURST_MEMORY, f"holding capacity for the {held:.2f} req/s peak of the last 300s (now 2.00 req/s)")
    assert got == Forecast(held, 105.0, 300.0, after, (
        peak_reason,
        Reason(Code.BURST_MEMORY, "the last 9 returning bursts came back at most 1.00x the load held for them: it is "
                                  "planned with that headroom, not targetUtilization's")), utilization=1.0)
    # The same bursts, one of which came back 1.3x: targetUtilization's headroom.
    grew = (0.95,) * 8 + (1.3,)
    again = forecast(SPEC, V, Workload("h100x1", 3, 3), sig(2.0), h.with_(burst_growth=grew), NOW)
    assert again == Forecast(held, 105.0, 300.0, after.with_(burst_growth=grew), (peak_reason,))


def test_a_returning_burst_s_height_is_learnt_once_when_the_next_lull_begins() -> None:
    """The burst that came back (at NOW - 60) to a held 40 req/s reached 36: 0.9 is recorded when the
    load falls into the next lull (its height read from the rate samples since it came back), and
    the burst's marks are cleared; within the burst nothing is learnt yet."""
    h = History(rate_samples=((NOW - 60.0, 36.0), (NOW - 15.0, 30.0)), burst_from=40.0, burst_since=NOW - 60.0)
    got = forecast(SPEC, V, Workload("h100x1", 3, 3), sig(2.0), h, NOW)
    p36 = beyond_chance(36.0, (36.0, 30.0, 2.0), 300.0)
    assert got == Forecast(p36, 105.0, 300.0, History(
        rate_samples=((NOW - 60.0, 36.0), (NOW - 15.0, 30.0), (NOW, 2.0)), load_record=((7200.0, 2.0, 0.0, 30.0),),
        quiet_since=NOW, lull_peak=p36, burst_growth=(0.9,), queue_scrapes=(SEEN,), held_level=p36),
        (Reason(Code.BURST_MEMORY, f"holding capacity for the {p36:.2f} req/s peak of the last 300s (now 2.00 req/s)"),))
    mid = forecast(SPEC, V, Workload("h100x1", 3, 3), sig(38.0), h, NOW)
    rise = 8.0 - CHANCE * math.sqrt(38.0 / 60.0)  # from the 30 req/s window 15 s ago
    assert mid == Forecast(38.0, 105.0, 300.0, History(
        rate_samples=((NOW - 60.0, 36.0), (NOW - 15.0, 30.0), (NOW, 38.0)), load_record=((7200.0, 38.0, rise, 38.0 * 15.0),),
        burst_from=40.0, burst_since=NOW - 60.0, burst_top=38.0, queue_scrapes=(SEEN,), rise_since=NOW - 15.0))


def ols_slope(points: list[tuple[float, float]]) -> float:
    """Least squares slope of (time, rate) points, written out."""
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    return sum((t - mt) * (v - mv) for t, v in points) / sum((t - mt) ** 2 for t, _ in points)


RAMP = [(NOW - 120.0 + 15.0 * i, 10.0 + 1.5 * i) for i in range(9)]  # +0.1 req/s every second, still rising
# A burst from 2 to 40 req/s: the rate windows show it over one window (2 -> 40 from 120 s to 60 s
# ago), then flat for the last window.
STEP = [(NOW - 120.0 + 15.0 * i, r) for i, r in enumerate((2.0, 11.5, 21.0, 30.5, 40.0, 40.0, 40.0, 40.0, 40.0))]
TURNED = STEP[:-2] + [(NOW - 15.0, 38.0), (NOW, 36.0)]  # the burst already falling within the window
SPARSE = [(NOW - 90.0, 10.0), (NOW - 45.0, 16.0), (NOW, 19.0)]  # decisions 45 s apart, the rise slowing
SPARSE_STEP = [(NOW - 90.0, 2.0), (NOW - 45.0, 40.0), (NOW, 40.0)]  # the same spacing, a step that levelled off
# Decisions 30 s apart, the one a window back 0.4 ms late: it still marks the window's start.
JITTER = [(NOW - 120.0, 2.0), (NOW - 90.0, 21.0), (NOW - 60.0004, 40.0), (NOW - 30.0, 40.0), (NOW, 40.0)]

TREND = [
    ("a ramp still rising within the last window: extrapolated, damped, over the horizon",
     RAMP, 22.0 + 0.5 * 0.1 * 105.0),
    # The slope over the 120 s reach (0.317 req/s per s) said 40 + 0.5 x 0.317 x 105 = 56.6 req/s: a
    # levelled-off step planned as a ramp.
    ("a step that levelled off a window ago: the load now, not the step's slope", STEP, 40.0),
    ("a rise that turned down within the last window: the load now", TURNED, 36.0),
    # Two samples in the last window: the change since the one nearest a window back (3 in 45 s), not
    # the reach's slope (0.1).
    ("decisions 45 s apart, a rise slowing: the change since the sample nearest one window back", SPARSE,
     19.0 + 0.5 * (3.0 / 45.0) * 105.0),
    # The reach's slope (0.422) said 62.2; the change over the last 45 s is none.
    ("decisions 45 s apart, a step that levelled off: the load now", SPARSE_STEP, 40.0),
    ("a decision that came a little late still marks the window's start", JITTER, 40.0),
    ("a rise all within the last window: its own slope", [(NOW - 20.0, 30.0), (NOW - 10.0, 35.0), (NOW, 40.0)],
     40.0 + 0.5 * 0.5 * 105.0),
    ("a falling load: not extrapolated", [(t, 22.0 - 1.5 * i) for i, (t, _) in enumerate(RAMP)], 10.0),
    ("no samples: unknown", [], None),
]


@pytest.mark.parametrize(("samples", "expect"), [c[1:] for c in TREND], ids=[c[0] for c in TREND])
def test_trend_forecast(samples: list[tuple[float, float]], expect: float | None) -> None:
    got = trend_forecast(tuple(samples), NOW, 105.0, 60.0)
    assert got == (None if expect is None else pytest.approx(expect))


def test_a_sample_just_past_the_window_does_not_lift_a_levelled_step() -> None:
    """Review: a 1 s slack let the sample 60.5 s back (still rising) into the least squares of a
    step that had levelled off, decisions 20 s apart: 50.7 req/s planned for a flat 40."""
    step = [(NOW - 100.0, 2.0), (NOW - 80.0, 15.0), (NOW - 60.5, 28.0), (NOW - 40.0, 40.0), (NOW - 20.0, 40.0), (NOW, 40.0)]
    assert trend_forecast(tuple(step), NOW, 105.0, 60.0) == pytest.approx(40.0)


def test_the_last_windows_slope_needs_a_sample_half_a_window_back() -> None:
    assert last_window_slope([(NOW - 10.0, 1.0), (NOW, 2.0)], NOW, 60.0) is None
    assert last_window_slope([(NOW - 40.0, 1.0), (NOW, 2.0)], NOW, 60.0) == pytest.approx(1.0 / 40.0)
    assert last_window_slope([], NOW, 60.0) is None


def test_a_rate_window_as_long_as_the_reach_extrapolates_the_step_as_before() -> None:
    """With a two-minute rate window the last window is the reach: the step is extrapolated by the
    reach's slope (what every window did before), since its rates still lag the load."""
    assert trend_forecast(tuple(STEP), NOW, 105.0, 120.0) == pytest.approx(40.0 + 0.5 * ols_slope(STEP) * 105.0)
    assert trend_forecast(tuple(STEP), NOW, 105.0, 120.0) == pytest.approx(56.625)


def run_forecasts(spec_: Any, steps: list[tuple[float, float]], h: History) -> History:
    """The history after a forecast at each (time, rate), each handing its history to the next."""
    for t, rate in steps:
        h = forecast(spec_, V, Workload("h100x1", 3, 3), sig(rate), h, t).history
    return h


def test_a_burst_that_comes_back_higher_than_the_load_held_is_learnt_as_higher() -> None:
    """The load held in the lull was 20 req/s; the burst came back at 30 and rose to 34: 1.7 is
    learnt (measured against what was held before it came back, not against what the long memory
    would hold with the burst's own rate), and it keeps targetUtilization's headroom."""
    lull = [(NOW + 15.0 * i, 2.0) for i in range(4)]
    h = History(rate_samples=((NOW - 60.0, 20.0), (NOW - 15.0, 20.0)), burst_gaps=(100.0,))
    h = run_forecasts(SPEC, lull, h)
    assert h.quiet_since == NOW and h.held_level is not None
    held = h.held_level
    burst = [(NOW + 60.0 + 15.0 * i, r) for i, r in enumerate((30.0, 32.0, 34.0, 33.0))]
    h = run_forecasts(SPEC, burst, h)
    assert (h.burst_from, h.burst_since) == (held, NOW + 60.0)
    h = run_forecasts(SPEC, [(NOW + 120.0, 2.0)], h)
    assert h.burst_growth == (pytest.approx(34.0 / held),) and 34.0 / held > 1.5
    assert burst_headroom(h.burst_growth * 9, 0.85) == pytest.approx(1 / 0.85)


def test_a_burst_at_the_turn_of_an_hour_counts_once_in_the_long_memory() -> None:
    """A lull at 2 req/s until 7,200 s (the turn of an hour), a burst to 45 req/s at 7,215 s: as the
    lowest window within a cold start slides past the hour, the rise stays the one that began in the
    hour before, so one burst is one big rise, not two (which would hold capacity for a day)."""
    steps = [(7080.0 + 15.0 * i, 2.0) for i in range(9)] + [(7215.0 + 15.0 * i, 45.0) for i in range(12)]
    h = run_forecasts(P99, steps, History())
    rises = [r[2] for r in h.load_record]
    assert len(h.load_record) == 2 and rises[0] > 40.0 and rises[1] == 0.0, h.load_record
    assert long_memory(h.load_record, 2.0, 105.0, 0.01) is None


@pytest.mark.parametrize(("seen", "now_waiting", "now_running", "expect"), [
    # (time, waiting, running) seen 15 s before; Ready 3, horizon 105 s, 20 completions/s
    # A change in flight counts for what it exceeds the two spreads of chance by (2 x sqrt(2 x 20 x 15
    # + 1) = 49.03 at 20 completions/s over 15 s).
    ((NOW - 15, 400.0, 100.0), 100.0, 100.0, (20.0 - (300.0 - SPREADS_20) / 15, True)),  # shrank 300 in 15 s: gone in 5 s
    ((NOW - 15, 300.0, 100.0), 300.0, 100.0, (20.0, False)),  # the same queue: no drain
    ((NOW - 15, 300.0, 100.0), 290.0, 100.0, (20.0, False)),  # 10 fewer is within chance (2 x sqrt(301))
    # 50 fewer in 15 s (beyond chance, 2 x sqrt(301)): 75 s to clear 250; 50 fewer in flight is 0.97
    # beyond chance: 20 - 0.97 / 15 arrive
    ((NOW - 15, 300.0, 100.0), 250.0, 100.0, (20.0 - (50.0 - SPREADS_20) / 15, True)),
    ((NOW - 15, 3.0, 100.0), 0.0, 100.0, (20.0, False)),  # 3 waiting on 3 replicas was no backlog
    ((NOW - 15, 2000.0, 100.0), 1900.0, 100.0, (20.0 - (100.0 - SPREADS_20) / 15, False)),  # 100 per 15 s: 285 s to clear, past the horizon
    ((NOW, 300.0, 100.0), 100.0, 100.0, (None, False)),  # the same scrape: nothing measured
    ((NOW - 46, 400.0, 100.0), 100.0, 100.0, (None, False)),  # older than three intervals: unknown, not old evidence
])
def test_arrival_rate_and_draining(seen: tuple[float, float, float], now_waiting: float, now_running: float,
                                   expect: tuple[float | None, bool]) -> None:
    signals = sig(20.0, requests_waiting=now_waiting, requests_running=now_running)
    got = arrival_rate(20.0, signals, seen, NOW, 45.0, 3, 105.0)
    assert got[1] is expect[1]
    assert got[0] == (pytest.approx(expect[0]) if expect[0] is not None else None)


@pytest.mark.parametrize(("gaps", "expect"), [
    ((), 300.0),  # nothing learnt: the scale-down window
    ((120.0,), 300.0),
    ((60.0, 120.0, 180.0), 105.0 + 180.0),  # one horizon plus the lull nine in ten bursts came back within
    ((100.0, 2000.0, 3000.0), 105.0),  # lulls usually (median) long: release after one horizon
    ((100.0, 200.0, 28_800.0), 105.0 + 900.0),  # one very long lull holds no longer than 15 minutes
    ((1000.0, 1200.0, 2000.0), 105.0),  # lulls usually long: release after one horizon
])
def test_hold_time(gaps: tuple[float, ...], expect: float) -> None:
    assert hold_time(gaps, 105.0, 300.0) == expect
    # A returning burst that would overspend the error budget holds the peak for the burst memory,
    # once bursts have been seen to come back at all.
    assert hold_time(gaps, 105.0, 300.0, overspent=True) == (1800.0 if gaps else expect)


@pytest.mark.parametrize(("peak", "ttft", "budget", "expect"), [
    (40.0, 1.0, 180.0, (105.0 - 4.5) / (1.0 + 105.0 - 4.5)),  # a 1 s target: nearly the whole peak (0.99)
    (5.5, 10.0, 61.0, (105.0 - 61.0 / 5.5) / (10.0 + 105.0 - 61.0 / 5.5)),  # a 10 s target absorbs a queue (0.90)
    (10.0, 1.0, 2000.0, 0.0),  # the budget absorbs a whole horizon of misses: nothing need be held
    (0.0, 1.0, 10.0, 1.0),
])
def test_held_share(peak: float, ttft: float, budget: float, expect: float) -> None:
    assert held_share(peak, 105.0, ttft, budget) == pytest.approx(expect)


@pytest.mark.parametrize(("peak", "ttft", "budget"), [(40.0, 1.0, 180.0), (5.5, 10.0, 61.0), (20.0, 0.5, 900.0)])
def test_held_share_spends_exactly_the_budget_on_a_returning_peak(peak: float, ttft: float, budget: float) -> None:
    """What it is for: with C = peak x share held, a returning peak queues until the delay passes the
    target (ttft x C / (P - C) s) and misses every request after that until new replicas are Ready
    (the 105 s horizon): exactly the budget; any less held spends more."""
    def misses(c: float) -> float:
        return peak * max(0.0, 105.0 - ttft * c / (peak - c))

    c = peak * held_share(peak, 105.0, ttft, budget)
    assert misses(c) == pytest.approx(budget)
    assert misses(0.98 * c) > budget


def test_queue_scrapes_kept_at_a_short_interval_are_a_dozen_and_still_mark_the_window() -> None:
    # A 1 s interval and a 60 s window: 75 scrapes of a steady drain (10 fewer in flight a second
    # while 30/s complete: 20 arrive). Kept one per 5 s, bar the last two.
    every = tuple((float(t), 800.0 - 10.0 * t, 100.0) for t in range(75))
    kept = thin_scrapes(every, 60.0)
    assert kept == (*every[:-2:5], *every[-2:])
    assert len(kept) == 17
    # A decision interval as long as the window: no scrape marks its start closely enough.
    assert window_arrivals(30.0, ((0.0, 800.0, 100.0), (60.0, 200.0, 100.0)), 30.0, 60.0) is None
    assert window_arrivals(30.0, kept, 60.0, 1.0) == pytest.approx(20.0)
    # The next decision thins the list it stored: 73 s is within 5 s of 70 s and leaves, the rest stays.
    assert thin_scrapes(kept + ((75.0, 50.0, 100.0),), 60.0) == (*kept[:-2], every[-1], (75.0, 50.0, 100.0))


@pytest.mark.parametrize(("samples", "peak", "share", "expect"), [
    (((0.0, 10.0), (15.0, 10.0)), 10.0, 0.01, True),  # 10 x 105 = 1,050 > 1% of 18,000 = 180
    (((0.0, 10.0), (15.0, 10.0)), 10.0, 0.1, False),  # 1,050 < 10% of 18,000 = 1,800
    (((0.0, 100.0),), 11.0, 0.01, False),  # 1,155 < 1% of 180,000: a small peak on a large volume
    (((0.0, 10.0),), 0.0, 0.01, False),  # no load: nothing to hold
])
def test_over_budget(samples: tuple[tuple[float, float], ...], peak: float, share: float, expect: bool) -> None:
    assert over_budget(error_budget(samples, share), peak, 105.0) is expect


# ---- 5. feedback ------------------------------------------------------------------------------------

EMPTY = History()


def _fb(signals: Signals, workload: Workload, history: History = EMPTY, settled: bool = True, proposal: int = 2,
        draining: bool = False, backlog_in_window: bool = False) -> Feedback:
    return feedback(SPEC, V, workload, signals, cap_step(settled=settled, backlog_in_window=backlog_in_window),
                    Proposal(proposal), history, NOW, draining)


def test_feedback_on_a_ttft_breach_beyond_chance() -> None:
    got = _fb(sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03), Workload("h100x1", 2, 2))
    assert got == Feedback(
        Proposal(4, (Reason(Code.SLO_BREACH_TTFT, "TTFT p95 1000ms > target 500ms"), Reason(Code.PANIC, "burst: scale-down suspended for 60s"))),
        4, True, Condition("False", "SLOBreached", "latency at 2.00x target"), History(panic_until=NOW + 60))


@pytest.mark.parametrize("ttft_s, ready, plan, want", [
    # The plan finds today's Ready replicas enough, yet TTFT misses: the rate does not show the load
    # (a spike inside the rate window), and the latency says by how much.
    (1.5, 1, 1, 3),    # 3x the 500 ms target on one replica: it carried ~1/3 of the load -> 3
    (1.5, 2, 2, 6),    # 3x on two -> 6
    (10.0, 2, 2, 8),   # 20x on two: a queue's latency outruns the load, the step stops at 4x -> 8
    # The plan already scales up for a load the rate shows: the breach is that rise, which the plan
    # sizes; the queue's latency would overshoot it, so the breach at most doubles.
    (10.0, 2, 3, 4),
])
def test_feedback_corrects_a_ttft_breach_the_plan_does_not_explain_in_proportion(ttft_s: float, ready: int, plan: int,
                                                                                  want: int) -> None:
    got = _fb(sig(10.0, ttft_quantile=ttft_s, ttft_attainment=0.2, itl_quantile=0.03), Workload("h100x1", ready, ready),
              proposal=plan)
    ratio = ttft_s / 0.5
    assert got == Feedback(
        Proposal(want, (Reason(Code.SLO_BREACH_TTFT, f"TTFT p95 {ttft_s * 1000:.0f}ms > target 500ms"),
                        Reason(Code.PANIC, "burst: scale-down suspended for 60s"))),
        want, True, Condition("False", "SLOBreached", f"latency at {ratio:.2f}x target"), History(panic_until=NOW + 60))


@pytest.mark.parametrize(("quantile", "within", "ready", "want", "panic"), [
    # 9 % late at a p95 (beyond chance with 600 requests, within 10 %), TTFT at 1.6x: mild, one band more.
    (0.8, 0.91, 4, 5, False),
    (0.8, 0.91, 40, 44, False),  # a band of a big fleet: 10 % of it, not one replica
    # Few late but TTFT at 2.4x its target, or many late: in proportion, as before.
    (1.2, 0.91, 4, 10, True),
    (0.8, 0.85, 4, 7, False),
    (0.8, None, 4, 7, False),  # the share within target unknown: never mild
])
def test_feedback_a_breach_with_few_requests_late_asks_for_one_tolerance_band_more(
        quantile: float, within: float | None, ready: int, want: int, panic: bool) -> None:
    got = _fb(sig(10.0, ttft_quantile=quantile, ttft_attainment=within, itl_quantile=0.03), Workload("h100x1", ready, ready),
              proposal=ready)
    reasons = (Reason(Code.SLO_BREACH_TTFT, f"TTFT p95 {quantile * 1000:.0f}ms > target 500ms"),) + (
        (Reason(Code.PANIC, "burst: scale-down suspended for 60s"),) if panic else ())
    assert got == Feedback(Proposal(want, reasons), want, True,
                           Condition("False", "SLOBreached", f"latency at {quantile / 0.5:.2f}x target"),
                           History(panic_until=NOW + 60) if panic else History())


def test_feedback_the_window_remembers_what_a_breach_asked_for_not_the_bands_count() -> None:
    """Review: a breach that asked for exactly the plan's 4 left the plan's load_asks (3, the count
    the tolerance band keeps) in place, so the window recorded 3 right after 3 proved too few."""
    breach = sig(10.0, ttft_quantile=0.8, ttft_attainment=0.91, itl_quantile=0.03)
    why = (Reason(Code.SLO_BREACH_TTFT, "TTFT p95 800ms > target 500ms"),)
    met = Condition("False", "SLOBreached", "latency at 1.60x target")
    got = feedback(SPEC, V, Workload("h100x1", 3, 3), breach, cap_step(), Proposal(4, (), 3), History(), NOW)
    assert got == Feedback(Proposal(4, why), 4, True, met, History())
    # A breach asking for fewer than the plan: the window keeps at least what it asked for.
    got = feedback(SPEC, V, Workload("h100x1", 3, 3), breach, cap_step(), Proposal(6, (), 3), History(), NOW)
    assert got == Feedback(Proposal(6, why, 4), 4, True, met, History())


def test_feedback_a_queue_at_todays_plan_is_remembered_as_the_plan() -> None:
    """Review: a queue seen once while the plan equals today's count kept the band's fewer
    replicas for the window."""
    queue = sig(10.0, ttft_quantile=0.3, ttft_attainment=1.0, itl_quantile=0.03, requests_waiting=6.0, requests_running=20.0)
    got = feedback(SPEC, V, Workload("h100x1", 4, 4), queue, cap_step(), Proposal(4, (), 3), History(), NOW)
    assert got == Feedback(Proposal(4), None, False, Condition("True", "SLOMet", "latency at 0.60x target"),
                           History(queued_at=NOW))


def test_feedback_an_inter_token_breach_at_most_doubles() -> None:
    # Inter-token latency falls with the batch, not in proportion to the load: 3x on two -> 4.
    got = _fb(sig(10.0, ttft_quantile=0.3, itl_quantile=0.3, itl_attainment=0.2), Workload("h100x1", 2, 2), proposal=2)
    assert got == Feedback(
        Proposal(4, (Reason(Code.SLO_BREACH_ITL, "inter-token p95 300ms > target 100ms"),
                     Reason(Code.PANIC, "burst: scale-down suspended for 60s"))),
        4, True, Condition("False", "SLOBreached", "latency at 3.00x target"), History(panic_until=NOW + 60))


def test_feedback_steps_only_by_the_latency_that_missed_beyond_chance() -> None:
    # TTFT p95 at 3.6x but within chance (93 % within target of a few requests); inter-token 1.2x
    # beyond it: the step is the inter-token's, 2 x 1.2 -> 3, not 2 x 3.6 -> 8.
    got = _fb(sig(3.0, ttft_quantile=1.8, ttft_attainment=0.93, itl_quantile=0.12, itl_attainment=0.5),
              Workload("h100x1", 2, 2), proposal=2)
    assert got == Feedback(
        Proposal(3, (Reason(Code.SLO_BREACH_ITL, "inter-token p95 120ms > target 100ms"),
                     Reason(Code.PANIC, "burst: scale-down suspended for 60s"))),
        3, True, Condition("False", "SLOBreached", "latency at 3.60x target"), History(panic_until=NOW + 60))


def test_feedback_ignores_a_quantile_over_target_by_chance() -> None:
    got = _fb(sig(3.0, ttft_quantile=0.6, ttft_attainment=0.93, itl_quantile=0.03), Workload("h100x1", 2, 2))
    assert got == Feedback(Proposal(2), None, False,
                           Condition("True", "SLOMet", "latency at 1.20x target, but no more misses than the SLO allows plus chance"),
                           History())


def test_feedback_waits_while_the_window_holds_the_old_backlog() -> None:
    got = _fb(sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03), Workload("h100x1", 4, 4), settled=False)
    assert got.replicas is None and got.proposal.replicas == 2 and got.breached
    assert [r.code for r in got.proposal.reasons] == [Code.COLD_START]


BREACH = sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03)


def test_feedback_does_not_escalate_on_a_backlog_the_ready_replicas_drain() -> None:
    # A backlog stuck in one pod while replicas were added: its requests miss for minutes after
    # the fleet carries the load. Escalating on them ran onoff-14 from 16 Ready replicas to 20.
    draining = _fb(sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03, requests_waiting=300.0),
                   Workload("h100x1", 4, 4), draining=True, proposal=4)
    gone = _fb(BREACH, Workload("h100x1", 4, 4), backlog_in_window=True, proposal=4)
    for got, hist in ((draining, History(queued_at=NOW)), (gone, History())):  # a queue is still noted as seen
        assert got == Feedback(
            Proposal(4, (Reason(Code.COLD_START, "latency at 2.00x target from a backlog the Ready replicas drained or are draining"),)),
            None, True, Condition("False", "SLOBreached", "latency at 2.00x target"), hist)
    # A queue that is still there and not shrinking is evidence again, backlog in the window or not.
    building = _fb(sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03, requests_waiting=300.0,
                       requests_running=40.0), Workload("h100x1", 4, 4), backlog_in_window=True, proposal=4)
    assert building.replicas == 8 and building.proposal.replicas == 8


def test_feedback_adds_no_replica_for_a_queue_that_shrinks() -> None:
    seen = History(queued_at=NOW - 15)
    got = _fb(sig(12.0, requests_waiting=5.0, requests_running=8.0, itl_quantile=0.03, ttft_quantile=0.2),
              Workload("h100x1", 2, 2), seen, draining=True)
    assert got == Feedback(Proposal(2), None, False, Condition("True", "SLOMet", "latency at 0.40x target"),
                           History(queued_at=NOW))


def test_feedback_does_not_escalate_a_breach_while_replicas_load() -> None:
    # The latency of requests that queued while replicas load is no new evidence: doubling the
    # Ready count at every interval of the cold start ran 16 Ready replicas up to 29 for a burst
    # that needed 5 (onoff-14 in the twin).
    scaled = History(last_scale_at=NOW - 30)
    got = _fb(sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03), Workload("h100x1", 4, 2, starting=2),
              scaled, proposal=4)
    assert got == Feedback(
        Proposal(4, (Reason(Code.COLD_START, "latency at 2.00x target while 2 replicas load"),)),
        None, True, Condition("False", "SLOBreached", "latency at 2.00x target"), scaled)


def test_feedback_escalates_again_when_a_starting_pod_is_not_on_its_way() -> None:
    # Scaled 10 minutes ago, cold start 90 s: a pod still not Ready is stuck (crash loop, image
    # pull), so the breach counts: twice the Ready replicas.
    scaled = History(last_scale_at=NOW - 600)
    got = _fb(sig(10.0, ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03), Workload("h100x1", 4, 2, starting=2),
              scaled, proposal=4)
    assert got.replicas == 4 and got.proposal.replicas == 4
    assert [r.code for r in got.proposal.reasons] == [Code.SLO_BREACH_TTFT, Code.COLD_START, Code.PANIC]


def test_feedback_a_queue_seen_twice_adds_one_replica_past_the_ready_ones() -> None:
    seen = History(queued_at=NOW - 15)
    got = _fb(sig(12.0, requests_waiting=5.0, requests_running=8.0, itl_quantile=0.03, ttft_quantile=0.2), Workload("h100x1", 2, 2), seen)
    assert got == Feedback(
        Proposal(3, (Reason(Code.QUEUE_GROWING, "5 requests waiting (0.42s of TTFT), 8 running on 2 ready replicas"),)),
        3, False, Condition("True", "SLOMet", "latency at 0.40x target"), History(queued_at=NOW))


def test_feedback_a_queue_while_replicas_load_counts_them() -> None:
    seen = History(queued_at=NOW - 15)
    got = _fb(sig(12.0, requests_waiting=5.0, requests_running=8.0, itl_quantile=0.03, ttft_quantile=0.2),
              Workload("h100x1", 4, 2, starting=2), seen)
    assert got.proposal.replicas == 4 and got.replicas == 3  # held (a queue), nothing added (two are loading)
    assert [r.code for r in got.proposal.reasons] == [Code.QUEUE_GROWING, Code.QUEUE_GROWING, Code.COLD_START]


def test_feedback_a_queue_seen_once_is_looked_at_again() -> None:
    got = _fb(sig(12.0, requests_waiting=5.0, requests_running=8.0, itl_quantile=0.03, ttft_quantile=0.2), Workload("h100x1", 2, 2))
    assert got == Feedback(Proposal(2), None, False, Condition("True", "SLOMet", "latency at 0.40x target"), History(queued_at=NOW))


def test_feedback_a_costly_queue_holds_the_count() -> None:
    queue = sig(12.0, requests_waiting=5.0, requests_running=8.0, itl_quantile=0.03, ttft_quantile=0.2)
    held = (Reason(Code.QUEUE_GROWING, "5 requests waiting: not scaling down"),)
    # A queue that does not shrink is a shortage: the hold is what the scale-down window records
    # (review: a costly queue seen at every third scrape stepped 6 -> 2 while it kept coming back).
    got = _fb(queue, Workload("h100x1", 3, 3), proposal=1)
    assert got.proposal == Proposal(3, held) and got.proposal.recommendation == 3
    # A backlog that drains ends with its cause: the window records what the load asks for (1).
    got = _fb(queue, Workload("h100x1", 3, 3), proposal=1, draining=True)
    assert got.proposal == Proposal(3, held, load_asks=1) and got.proposal.recommendation == 1
    # Requests waiting with no rate to read the load from: the hold is recorded.
    got = _fb(sig(0.0, requests_waiting=5.0, requests_running=8.0), Workload("h100x1", 3, 3), proposal=1, draining=True)
    assert got.proposal.replicas == 3 and got.proposal.recommendation == 3


# ---- 6. idleness ------------------------------------------------------------------------------------

STZ = spec(replicas={"min": 0, "max": 4}, scaling={"scaleToZero": {"enabled": True, "idleFor": "10m", "demand": {"inferencePool": "chat"}}})
IDLE = sig(0.0, requests_running=0.0)
SEEN_IDLE = History(idle_since=NOW - 600, recommendations=((NOW - 15, 1),))  # idle for 10 minutes, decided 15 s ago
IDLENESS = [
    ("busy: nothing changes", SPEC, Workload("h100x1", 2, 2), sig(), History(), Idleness(Proposal(2), False, False, History())),
    ("idle: the plan stands, the clock starts", SPEC, Workload("h100x1", 2, 2), IDLE, History(),
     Idleness(Proposal(2, (Reason(Code.IDLE, "request counters at zero"),)), True, False, History(idle_since=NOW))),
    ("idle long enough with scale-to-zero", STZ, Workload("h100x1", 1, 1), IDLE, SEEN_IDLE,
     Idleness(Proposal(0, (Reason(Code.IDLE, "request counters at zero"), Reason(Code.SCALE_TO_ZERO, "idle for 600s >= 10m"))),
              True, True, SEEN_IDLE)),
    # Idle since two hours ago, but nothing was decided in the last hour (the API server down): zero
    # over the last minute says nothing of that hour, so the idle clock starts again.
    ("idle since before an outage: the clock starts again", STZ, Workload("h100x1", 1, 1), IDLE,
     History(idle_since=NOW - 7200, recommendations=((NOW - 3600, 1),)),
     Idleness(Proposal(1, (Reason(Code.IDLE, "request counters at zero"),
                           Reason(Code.IDLE, "idle clock restarted: the last decision seen was 3600s ago, longer than a rate window covers"))),
              True, False, History(idle_since=NOW, recommendations=((NOW - 3600, 1),)))),
    # Decisions run late on a busy operator: one rate window (60 s) plus two 15 s intervals is still
    # seen; a second more is not. (A restart continues from the last status write, which may be hours
    # old on a steady deployment: the cases above and below.)
    ("idle, the last decision a window and two intervals ago: still seen", STZ, Workload("h100x1", 1, 1), IDLE,
     History(idle_since=NOW - 600, recommendations=((NOW - 90, 1),)),
     Idleness(Proposal(0, (Reason(Code.IDLE, "request counters at zero"), Reason(Code.SCALE_TO_ZERO, "idle for 600s >= 10m"))),
              True, True, History(idle_since=NOW - 600, recommendations=((NOW - 90, 1),)))),
    ("idle, the last decision just past that: the clock starts again", STZ, Workload("h100x1", 1, 1), IDLE,
     History(idle_since=NOW - 600, recommendations=((NOW - 91, 1),)),
     Idleness(Proposal(1, (Reason(Code.IDLE, "request counters at zero"),
                           Reason(Code.IDLE, "idle clock restarted: the last decision seen was 91s ago, longer than a rate window covers"))),
              True, False, History(idle_since=NOW, recommendations=((NOW - 91, 1),)))),
    # idleSince with no decision behind it (a lost status): nothing seen, the clock starts again.
    ("idle since, but no decision recorded: the clock starts again", STZ, Workload("h100x1", 1, 1), IDLE,
     History(idle_since=NOW - 600),
     Idleness(Proposal(1, (Reason(Code.IDLE, "request counters at zero"),
                           Reason(Code.IDLE, "idle clock restarted: no earlier decision is recorded"))),
              True, False, History(idle_since=NOW))),
    # Scale-to-zero off: the clock restarts silently (it only opens the door to zero).
    ("idle after a gap without scale-to-zero: no word of the clock", SPEC, Workload("h100x1", 1, 1), IDLE,
     History(idle_since=NOW - 600, recommendations=((NOW - 3600, 1),)),
     Idleness(Proposal(1, (Reason(Code.IDLE, "request counters at zero"),)), True, False,
              History(idle_since=NOW, recommendations=((NOW - 3600, 1),)))),
    ("at zero, no demand at the gateway: stay", STZ, Workload("h100x1", 0, 0), sig(None, requests_waiting=0.0, unknown={"requestRate": "no series"}),
     History(), Idleness(Proposal(0, (Reason(Code.IDLE, "at zero, no request waiting at the gateway"),)), False, True, History())),
    ("at zero, the demand signal unknown: hold at zero", STZ, Workload("h100x1", 0, 0),
     sig(None, requests_waiting=None, unknown={"requestRate": "no series", "gatewayDemand": "no series"}), History(),
     Idleness(Proposal(0, (Reason(Code.METRICS_UNKNOWN, "at zero and the gateway's demand signal is unknown: holding at zero"),)),
              False, True, History())),
    ("demand at zero starts one", STZ, Workload("h100x1", 0, 0), sig(None, requests_waiting=3.0, unknown={"requestRate": "no series"}),
     History(), Idleness(Proposal(1, (Reason(Code.SCALE_FROM_ZERO, "demand while at zero: 0.00 req/s, 3 waiting at the gateway"),)),
                         False, False, History())),
    # Behind federation (or remote storage) the deleted pods' last samples linger for the lookback:
    # vLLM's series read stale, so its queue is unknown, and the gateway's 4 were not added to it.
    # With no pod left, the gateway's count is the whole demand.
    ("at zero with no pod left, vLLM's series stale: the gateway's queue starts one", STZ, Workload("h100x1", 0, 0),
     sig(None, requests_waiting=None, requests_running=None, gateway_pending=4.0,
         unknown={"requestRate": "stale: newest sample older than 30s", "requestsWaiting": "stale: newest sample older than 30s"}),
     History(), Idleness(Proposal(1, (Reason(Code.SCALE_FROM_ZERO, "demand while at zero: 0.00 req/s, 4 waiting at the gateway"),)),
                         False, False, History())),
    ("at zero with no pod left, vLLM's series stale, nothing at the gateway: stay", STZ, Workload("h100x1", 0, 0),
     sig(None, requests_waiting=None, requests_running=None, gateway_pending=0.0,
         unknown={"requestRate": "stale: newest sample older than 30s", "requestsWaiting": "stale: newest sample older than 30s"}),
     History(), Idleness(Proposal(0, (Reason(Code.IDLE, "at zero, no request waiting at the gateway"),)), False, True, History())),
    # A pod still draining at zero: its queue is vLLM's to report, and unknown stays unknown.
    ("at zero with a pod draining and its series stale: hold at zero", STZ, Workload("h100x1", 0, 0, terminating=1),
     sig(None, requests_waiting=None, requests_running=None, gateway_pending=4.0,
         unknown={"requestRate": "stale: newest sample older than 30s", "requestsWaiting": "stale: newest sample older than 30s"}),
     History(), Idleness(Proposal(0, (Reason(Code.METRICS_UNKNOWN, "at zero and the requests waiting in vLLM are unknown "
                                                                   "(stale: newest sample older than 30s): holding at zero"),)),
                         False, True, History())),
    # A queue that was read (here a requestsWaiting query override) already counts the gateway's:
    # its 3 start a replica though the gateway's own count says 0 (review: the first version of the
    # stale-series fix put the gateway's 0 in its place).
    ("at zero with no pod left, a queue read by an override: it stands", STZ, Workload("h100x1", 0, 0),
     sig(None, requests_waiting=3.0, requests_running=None, gateway_pending=0.0, unknown={"requestRate": "no series"}),
     History(), Idleness(Proposal(1, (Reason(Code.SCALE_FROM_ZERO, "demand while at zero: 0.00 req/s, 3 waiting at the gateway"),)),
                         False, False, History())),
    ("idle long enough, vLLM's queue unusable: stay at one, and say which", STZ, Workload("h100x1", 1, 1),
     sig(0.0, requests_waiting=None, requests_running=0.0, gateway_pending=0.0, unknown={"requestsWaiting": "ignored: NaN"}),
     SEEN_IDLE,
     Idleness(Proposal(1, (Reason(Code.IDLE, "request counters at zero"), Reason(
         Code.METRICS_UNKNOWN, "not scaling to zero: the requests waiting in vLLM are unknown (ignored: NaN)"))),
              True, False, SEEN_IDLE)),
    ("idle long enough, but the door back is not proven: stay at one", STZ, Workload("h100x1", 1, 1),
     sig(0.0, requests_running=0.0, unknown={"gatewayDemand": "no series"}), SEEN_IDLE,
     Idleness(Proposal(1, (Reason(Code.IDLE, "request counters at zero"), Reason(
         Code.METRICS_UNKNOWN, "not scaling to zero: the gateway's demand signal is unknown (no series)"))),
              True, False, SEEN_IDLE)),
]


@pytest.mark.parametrize(("spec_", "workload", "signals", "history", "expect"), [c[1:] for c in IDLENESS], ids=[c[0] for c in IDLENESS])
def test_idleness(spec_: Any, workload: Workload, signals: Signals, history: History, expect: Idleness) -> None:
    proposal = Proposal(workload.replicas if workload.replicas else 0)
    assert idleness(spec_, workload, signals, proposal, history, NOW) == expect


# ---- 7. tolerance, 8. unknowns --------------------------------------------------------------------------

def test_tolerance_holds_within_the_band_only() -> None:
    fc = Forecast(42.0, 105.0, 300.0, History())  # 42 / (5 x 10 x 0.85) = 0.99
    assert tolerance(SPEC, 5, cap_step(), fc, Proposal(6), False) == Proposal(
        5, (Reason(Code.WITHIN_TOLERANCE, "demand at 0.99x the plan for 5 replicas (tolerance 10%)"),))
    far = Forecast(60.0, 105.0, 300.0, History())
    assert tolerance(SPEC, 5, cap_step(), far, Proposal(8), False) == Proposal(8)
    assert tolerance(SPEC, 5, cap_step(), fc, Proposal(6), True) == Proposal(6)  # feedback is never damped
    # A held peak planned at full capacity (learnt headroom): 52 req/s is within 10 % of 5 x 10, but
    # 5 replicas cannot carry it at all, so the plan's 6 stand; 49 they can carry, and 5 are kept.
    full = Forecast(52.0, 105.0, 300.0, History(), utilization=1.0)
    assert tolerance(SPEC, 5, cap_step(), full, Proposal(6), False) == Proposal(6)
    assert tolerance(SPEC, 5, cap_step(), Forecast(49.0, 105.0, 300.0, History(), utilization=1.0), Proposal(6), False) == Proposal(
        5, (Reason(Code.WITHIN_TOLERANCE, "demand at 0.98x the plan for 5 replicas (tolerance 10%)"),))


def test_unknowns_never_scale_down() -> None:
    assert unknowns(4, sig(None), (), Proposal(2)) == Proposal(4, (Reason(Code.METRICS_UNKNOWN, "not scaling down to 2: requestRate unknown"),))
    assert unknowns(4, sig(None, unknown={"requestRate": "x"}), ("requestRate",), Proposal(2)) == Proposal(4)
    assert unknowns(4, sig(None), (), Proposal(6)) == Proposal(6)
    assert unknowns(4, sig(3.0), (), Proposal(2)) == Proposal(2)
    # The count the tolerance band keeps is not remembered from unknown data (review): the plan is.
    assert unknowns(4, sig(None), (), Proposal(4, (), 3)) == Proposal(4)
    assert unknowns(4, sig(None, unknown={"requestRate": "x"}), ("requestRate",), Proposal(5, (), 4)) == Proposal(5)
    assert unknowns(4, sig(3.0), (), Proposal(4, (), 3)) == Proposal(4, (), 3)  # known: it stands


# ---- 9. stabilization -------------------------------------------------------------------------------

def _stab(proposal: int, current: int, history: History, sp: Any = SPEC, pending: int = 0) -> Stabilized:
    return stabilization(sp, V, Workload("h100x1", current, current, pending_unschedulable=pending), Proposal(proposal), False, history, NOW)


def test_stabilization_holds_a_scale_down_to_the_window_high() -> None:
    h = History(recommendations=((NOW - 100, 6), (NOW - 15, 3)), observing_since=0.0)
    assert _stab(2, 6, h) == Stabilized(
        Proposal(6, (Reason(Code.SCALE_DOWN_STABILIZED, "held at 6 (highest recommendation in 300s)"),)),
        History(recommendations=((NOW - 100, 6), (NOW - 15, 3), (NOW, 2)), observing_since=0.0), held_down=6)


def test_stabilization_steps_down_one_after_the_window() -> None:
    h = History(recommendations=((NOW - 400, 6), (NOW - 310, 2), (NOW - 15, 2)), observing_since=0.0)
    assert _stab(2, 6, h) == Stabilized(
        Proposal(5, (Reason(Code.RATE_LIMITED_DOWN, "2 capped at 5 by scaleDown.maxStep 1"),)),
        History(recommendations=((NOW - 310, 2), (NOW - 15, 2), (NOW, 2)), observing_since=0.0))


def test_a_recommendation_stands_until_the_next_so_a_gap_in_the_decisions_holds_a_scale_down() -> None:
    """CI (fault e2e): nothing was decided while the API server was down, and the first decision
    after it scaled 3 -> 2 because the last recommendation of 3 had aged out of the window meanwhile.
    A recommendation stands until the next one: an outage is not time the load was seen to fall."""
    h = History(recommendations=((NOW - 400, 6),), observing_since=0.0)
    assert _stab(2, 6, h) == Stabilized(
        Proposal(6, (Reason(Code.SCALE_DOWN_STABILIZED,
                            "held at 6 (the recommendation of 6, 400s ago, stands until the next, which came 400s after it)"),)),
        History(recommendations=((NOW - 400, 6), (NOW, 2)), observing_since=0.0), held_down=6)
    # The 6 stood until 290 s ago, inside the window: still held.
    h = History(recommendations=((NOW - 400, 6), (NOW - 290, 2), (NOW - 15, 2)), observing_since=0.0)
    assert _stab(2, 6, h).proposal == Proposal(6, (Reason(
        Code.SCALE_DOWN_STABILIZED, "held at 6 (the recommendation of 6, 400s ago, stands until the next, which came 110s after it)"),))
    # Once the decisions after the gap cover the window, the scale-down goes on.
    h = History(recommendations=((NOW - 400, 6), (NOW - 305, 2), (NOW - 15, 2)), observing_since=0.0)
    assert _stab(2, 6, h).proposal.replicas == 5


def test_a_restart_whose_status_still_covers_the_window_scales_down() -> None:
    """Review: status keeps the history of the last write; a restart whose persisted
    recommendations cover the window must not hold a scale-down for another window."""
    h = History(recommendations=((NOW - 200, 2), (NOW - 65, 2)), observing_since=0.0)
    assert _stab(2, 3, h).proposal == Proposal(2)
    # and one whose persisted window still holds a 3 (standing until 200 s ago) holds.
    h = History(recommendations=((NOW - 310, 3), (NOW - 200, 2), (NOW - 65, 2)), observing_since=0.0)
    assert _stab(2, 3, h).proposal.replicas == 3


def test_lost_recommendations_cover_the_window_again() -> None:
    """Review: a status whose recommendations did not parse kept observingSince, so the decisions
    after the loss alone allowed a scale-down at once."""
    h, dropped = History.parse({"recommendations": "garbage", "observingSince": 1.0})
    assert dropped == ("recommendations",) and h.observing_since is None
    assert _stab(2, 6, h).proposal.replicas == 6


@pytest.mark.parametrize(("interval", "window", "every"), [
    ("1s", "30s", 5.0),    # decisions fall on 5 s ticks whatever the interval: no gap in that
    ("15s", "30s", 15.0),  # a window of two intervals
    ("2m", "5m", 120.0),   # a long interval
])
def test_steady_decisions_at_any_interval_scale_down_after_the_window(interval: str, window: str, every: float) -> None:
    sp = parse_spec(spec_dict(scaling={"interval": interval, "scaleDown": {"stabilizationWindow": window, "maxStep": 4}}))
    w = parse_duration(window)
    recs = tuple((NOW - k * every, 3 if NOW - k * every < NOW - w - every else 2) for k in range(int(3 * w / every), 0, -1))
    assert _stab(2, 3, History(recommendations=recs, observing_since=0.0), sp).proposal == Proposal(2)


def test_an_outage_longer_than_the_window_holds_at_a_long_interval() -> None:
    """Review: with a 2 m interval and a 5 m window, a 400 s outage scaled 3 -> 2 at once under a
    rule of 'four intervals without a decision'."""
    sp = parse_spec(spec_dict(scaling={"interval": "2m", "scaleDown": {"stabilizationWindow": "5m"}}))
    got = _stab(2, 3, History(recommendations=((NOW - 520, 2), (NOW - 400, 3)), observing_since=0.0), sp)
    assert got.proposal.replicas == 3 and got.proposal.reasons[0].code == Code.SCALE_DOWN_STABILIZED


def test_a_hold_for_a_queue_records_what_the_load_asks_not_the_hold() -> None:
    """onoff-14: six replicas that drained a first burst's backlog were held five minutes after
    the queue was gone, because each decision during the drain recorded the hold (6) and not the
    plan (4)."""
    held = Proposal(6, (Reason(Code.QUEUE_GROWING, "40 requests waiting: not scaling down"),), load_asks=4)
    got = stabilization(SPEC, V, Workload("h100x1", 6, 6), held, False, History(observing_since=0.0), NOW)
    assert got == Stabilized(held, History(recommendations=((NOW, 4),), observing_since=0.0))
    # A later step that changes the count drops it: the count it sets is what is recorded.
    assert held.to(7).recommendation == 7 and held.to(6).recommendation == 4 and held.note().recommendation == 4


def test_a_scale_up_is_remembered_as_the_count_it_goes_to_not_the_bands() -> None:
    """Review: from 3, a plan of 5 whose load the band keeps at 4 recorded 4, and the next noisy
    decision planning 4 scaled 5 -> 4 at once, pods still loading. A scale-up records its count;
    the band's count is recorded at today's count or below."""
    up = Proposal(5, (Reason(Code.CAPACITY_PLAN, "plan"),), load_asks=4)
    got = stabilization(SPEC, V, Workload("h100x1", 3, 3), up, False, History(observing_since=0.0), NOW)
    assert got == Stabilized(up, History(recommendations=((NOW, 5),), observing_since=0.0))
    at = Proposal(5, (Reason(Code.CAPACITY_PLAN, "plan"),), load_asks=4)
    got = stabilization(SPEC, V, Workload("h100x1", 5, 5), at, False, History(observing_since=0.0), NOW)
    assert got == Stabilized(at, History(recommendations=((NOW, 4),), observing_since=0.0))
    # The scale-up to 5 holds for the window against later decisions that plan 4.
    h = History(recommendations=((NOW - 60, 5), (NOW - 15, 4)), observing_since=0.0)
    assert _stab(4, 5, h).proposal == Proposal(5, (Reason(Code.SCALE_DOWN_STABILIZED, "held at 5 (highest recommendation in 300s)"),))


def test_stabilization_records_within_the_ceiling_and_limits_the_step_up() -> None:
    got = _stab(40, 2, History(observing_since=0.0))
    assert got == Stabilized(Proposal(6, (Reason(Code.RATE_LIMITED_UP, "40 capped at 6 by scaleUp.maxStep 4"),)),
                             History(recommendations=((NOW, 8),), observing_since=0.0))


def test_stabilization_adds_nothing_while_pods_wait_for_gpus() -> None:
    got = _stab(5, 3, History(observing_since=0.0), pending=1)
    assert got.proposal == Proposal(3, (Reason(Code.GPUS_UNAVAILABLE, "1 pods Pending without free GPUs: not adding more"),))


def test_stabilization_says_so_while_pods_wait_for_gpus_even_when_holding() -> None:
    got = _stab(3, 3, History(observing_since=0.0), pending=2)
    assert got.proposal == Proposal(3, (Reason(Code.GPUS_UNAVAILABLE, "2 pods Pending without free GPUs"),))


def test_scale_to_zero_is_not_held_by_the_scale_down_window() -> None:
    """idleFor is the stabilization of a scale to zero: recommendations of 1 a minute ago do not hold it."""
    h = History(recommendations=((NOW - 60, 1),), observing_since=NOW - 100)
    got = stabilization(STZ, V, Workload("h100x1", 1, 1), Proposal(0), True, h, NOW)
    assert got == Stabilized(Proposal(0), History(recommendations=((NOW - 60, 1), (NOW, 0)), observing_since=NOW - 100))


def test_stabilization_panic_suspends_scale_down() -> None:
    got = _stab(2, 6, History(panic_until=NOW + 30, observing_since=0.0, recommendations=((NOW - 400, 2),)))
    assert got.proposal == Proposal(6, (Reason(Code.PANIC, "scale-down to 2 suspended until the burst passes"),))


# ---- 10. ceilings -----------------------------------------------------------------------------------

CEILINGS = [
    ("within bounds", SPEC, 3, Bounded(Proposal(3), 8, Condition("False", "WithinBudget", ""))),
    ("over maxGPUs", spec(replicas={"min": 1, "max": 16}), 12,
     Bounded(Proposal(8, (Reason(Code.BUDGET_GPUS, "12 capped at 8 by cost.maxGPUs"),)), 8,
             Condition("True", "BudgetLimited", "the SLO needs more than 8 replicas of h100x1; capped by cost.maxGPUs"))),
    ("over maxHourlyCost", spec(cost={"maxHourlyCost": "20", "prices": {"nvidia-h100": "4"}}), 7,
     Bounded(Proposal(5, (Reason(Code.BUDGET_COST, "7 capped at 5 by cost.maxHourlyCost"),)), 5,
             Condition("True", "BudgetLimited", "the SLO needs more than 5 replicas of h100x1; capped by cost.maxHourlyCost"))),
    ("over replicas.max is not a budget limit", spec(replicas={"min": 1, "max": 4}), 6,
     Bounded(Proposal(4, (Reason(Code.AT_MAX, "6 capped at 4 by replicas.max"),)), 4, Condition("False", "WithinBudget", ""))),
    ("min 0 without scale-to-zero keeps one", spec(replicas={"min": 0, "max": 4}), 0,
     Bounded(Proposal(1, (Reason(Code.AT_MIN, "raised to 1 (replicas.min is 0 but scaling.scaleToZero is not enabled)"),)), 4,
             Condition("False", "WithinBudget", ""))),
    ("the ceiling beats replicas.min", spec(replicas={"min": 6, "max": 8}, cost={"maxGPUs": 4, "prices": {"nvidia-h100": "4"}}), 6,
     Bounded(Proposal(4, (Reason(Code.BUDGET_GPUS, "6 capped at 4 by cost.maxGPUs"),)), 4,
             Condition("True", "BudgetLimited", "the SLO needs more than 4 replicas of h100x1; capped by cost.maxGPUs"))),
]


@pytest.mark.parametrize(("spec_", "replicas", "expect"), [c[1:] for c in CEILINGS], ids=[c[0] for c in CEILINGS])
def test_ceilings(spec_: Any, replicas: int, expect: Bounded) -> None:
    assert ceilings(spec_, spec_.variants[0], Proposal(replicas), False) == expect


# ---- 13. mode ---------------------------------------------------------------------------------------

W2 = Workload(variant="h100x1", replicas=2, ready=2, pods={"h100x1": PodCounts(ready=2)})


def test_mode_recommend_reports_and_does_not_apply() -> None:
    sp = spec(scaling={"mode": "Recommend"})
    d = mode(sp, W2, V, V, Proposal(4, (Reason(Code.CAPACITY_PLAN, "x"),)), True, History(), Estimate(), {}, NOW,
             rollout(sp, W2, V, 4, {}))
    assert d == Decision(Action.SCALE_UP, 2, 4, "h100x1",
                         (Reason(Code.CAPACITY_PLAN, "x"), Reason(Code.RECOMMEND_ONLY, "would ScaleUp 2 -> 4; not applied")),
                         History(), Estimate(), {}, False, 2, 8.0, {"h100x1": 4})  # GPUs and cost as they are: nothing applied


def test_mode_auto_applies_and_remembers_when() -> None:
    d = mode(SPEC, W2, V, V, Proposal(2), True, History(), Estimate(), {}, NOW, rollout(SPEC, W2, V, 2, {}))
    assert d == Decision(Action.NO_CHANGE, 2, 2, "h100x1", (Reason(Code.NO_CHANGE, "2 replicas are what the policy wants"),),
                         History(), Estimate(), {}, True, 2, 8.0, {"h100x1": 2})
    d = mode(SPEC, W2, V, V, Proposal(3), True, History(), Estimate(), {}, NOW, rollout(SPEC, W2, V, 3, {}))
    assert d.action == Action.SCALE_UP and d.history == History(last_scale_at=NOW) and d.apply


# ---- 2. capacity ------------------------------------------------------------------------------------

def _cap(workload: Workload, signals: Signals, history: History, breach: float | None = 1.8) -> CapacityStep:
    return capacity(SPEC, V, workload, signals, history, NOW, breach)


MISSING = sig(4.0, ttft_quantile=0.9, ttft_attainment=0.8, itl_quantile=0.03)


def test_capacity_learns_from_a_steady_window_once() -> None:
    h = History(rate_samples=((NOW - 30, 4.0), (NOW - 15, 4.0)))
    got = _cap(Workload("h100x1", 2, 2), MISSING, h)
    mix = (1000.0, 200.0)  # the window's 240 requests: enough to plan for
    corr = max(0.5, 1 - 2 * (0.95 - 0.8))  # twice the missing share
    expect_hist = h.with_(ready_seen=2, mean_input=1000.0, mean_output=200.0, mix_requests=240.0, mix_at=NOW, planned_mix=mix,
                          capacity_correction=corr, learned_at=NOW, started_shapes=(shape_key(SPEC, "h100x1"),),
                          speed_shape=speed_key(SPEC, V))
    cap = variant_capacity(SPEC, V, MISSING, corr, mix, 2)
    feasible = Condition("True", "SLOFeasible", f"variant h100x1 sustains {cap.per_replica:.2f} req/s per replica ({cap.limited_by}-bound)")
    assert got == CapacityStep(cap, corr, mix, True, False, feasible, expect_hist,
                               (Reason(Code.CAPACITY_LEARNED, "capacity estimate x1.00 -> x0.70 from the last 1m (TTFT attainment 80.0%)"),),
                               True,  # two Ready pods: vLLM does start on this shape
                               speed_note="not read: the inter-token latency's mean or the request rate is unknown")
    again = capacity(SPEC, V, Workload("h100x1", 2, 2), MISSING, got.history, NOW + 15, 1.8)
    assert again.correction == corr and again.reasons == () and again.history.learned_at == NOW


def test_capacity_learns_nothing_from_a_ramp_or_an_old_backlog() -> None:
    ramp = History(rate_samples=((NOW - 30, 1.0), (NOW - 15, 2.0)))
    got = _cap(Workload("h100x1", 2, 2), MISSING, ramp)
    assert got.correction == 1.0 and got.history.learned_at is None and got.reasons == ()
    grew = History(ready_seen=1, rate_samples=((NOW - 15, 4.0),))
    got = _cap(Workload("h100x1", 2, 2), MISSING, grew)
    assert not got.settled and got.correction == 1.0 and got.history.ready_grew_at == NOW


@pytest.mark.parametrize(("backlog_at", "learns"), [
    (NOW - 15, False),  # the window holds requests that waited in the backlog
    (NOW - 75, False),  # 60 s window + one 15 s interval: its last requests completed after that decision
    (NOW - 76, True),  # the window has moved past the backlog
    (None, True),
])
def test_capacity_learns_nothing_while_the_window_holds_a_backlog(backlog_at: float | None, learns: bool) -> None:
    """Misses of requests that waited in a backlog (stuck in one pod while others were added) say the
    plan was late, not that the estimate is wrong; a window holds them until it has moved past the
    last decision that saw the queue, one interval later."""
    h = History(rate_samples=((NOW - 30, 4.0), (NOW - 15, 4.0)), backlog_at=backlog_at)
    got = _cap(Workload("h100x1", 2, 2), MISSING, h)
    assert got.backlog_in_window is not learns
    assert (got.correction < 1.0) is learns and (got.history.learned_at == NOW) is learns
    queued = _cap(Workload("h100x1", 2, 2), sig(4.0, ttft_quantile=0.9, ttft_attainment=0.8, requests_waiting=3.0), h)
    assert queued.history.backlog_at == NOW and queued.backlog_in_window and queued.correction == 1.0


@pytest.mark.parametrize(("prev", "rate", "expect"), [
    # (mean_input, requests it stands for), req/s over the 60 s window (1,000-token prompts) -> the same after
    ((None, 0.0), 1 / 60, (1000.0, 1.0, False)),  # one request: a mean, too few to plan for
    ((3418.0, 1.0), 4.0, (3418.0 - 2418.0 * 240 / 241, 241.0, True)),  # a busy window outweighs it
    ((3000.0, 100.0), 1.0, (3000.0 - 2000.0 * 60 / 160, 160.0, True)),  # filling the memory: a plain mean
    ((3000.0, 500.0), 1.0, (3000.0 - 2000.0 * 60 / 560, 500.0, True)),  # a full memory: the window's share of it
    ((3000.0, 500.0), 40.0, (3000.0 - 2000.0 * 2400 / 2900, 500.0, True)),  # a busy window weighs most
    ((3000.0, 500.0), 0.0, (3000.0, 500.0, True)),  # no request, nothing learnt
    ((3000.0, None), 1.0, (3000.0 - 2000.0 * 60 / 560, 500.0, True)),  # a status from before the count: settled
])
def test_the_token_mix_weighs_each_window_by_its_requests(prev: tuple[float | None, float | None], rate: float,
                                                           expect: tuple[float, float, bool]) -> None:
    h = History(mean_input=prev[0], mean_output=None if prev[0] is None else 200.0, mix_requests=prev[1])
    got = observed_mix(sig(rate), 60.0, seen_mix(h))
    assert (got.mean_input, got.requests, got.known) == (pytest.approx(expect[0]), pytest.approx(expect[1]), expect[2])


def test_capacity_plans_for_a_mix_that_moves_in_steps() -> None:
    h = History(mean_input=1000.0, mean_output=200.0, mix_requests=500.0, mix_at=NOW - 120, planned_mix=(1000.0, 200.0))
    near = sig(4.0, prompt_tokens_rate=4.0 * 1200)  # 240 of 740 requests: to 1065, within 10%: the plan keeps 1000
    assert _cap(Workload("h100x1", 2, 2), near, h, None).mix == (1000.0, 200.0)
    far = sig(4.0, prompt_tokens_rate=4.0 * 3000)  # 240 of 740 requests: to 1649, past 10%: planned for
    assert _cap(Workload("h100x1", 2, 2), far, h, None).mix == (pytest.approx(1000.0 + 2000.0 * 240 / 740), 200.0)


# ---- 4. plan ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("demand", [5.0, 40.0, 120.0])
def test_plan_is_the_fewest_replicas_that_carry_the_forecast(demand: float) -> None:
    got = plan(SPEC, V, sig(demand), cap_step(), Forecast(demand, 105.0, 300.0, History()), 3)
    n = got.planned
    assert n is not None and got.proposal.replicas == n
    util = SPEC.scaling.target_utilization
    assert n * variant_capacity(SPEC, V, sig(demand), 1.0, (1000.0, 200.0), n).per_replica * util >= demand
    assert n == 1 or (n - 1) * variant_capacity(SPEC, V, sig(demand), 1.0, (1000.0, 200.0), n - 1).per_replica * util < demand
    assert [r.code for r in got.proposal.reasons] == [Code.CAPACITY_PLAN]


@pytest.mark.parametrize(("util", "over", "planned", "kept"), [
    (0.85, 0.95, 3, None),  # under 3's plan: 3, and 3 is what the window remembers
    (0.85, 1.05, 4, 3),     # past 3's plan by 5 %, within the 10 % band: 4 planned, the window keeps 3
    (0.85, 1.15, 4, None),  # past the band: 4 is what the load asks for
    (0.95, 1.06, 4, 4),     # within the band of 3's plan but past 3's full capacity: the band keeps 4
])
def test_plan_remembers_the_fewest_replicas_the_tolerance_band_keeps(util: float, over: float, planned: int,
                                                                     kept: int | None) -> None:
    spec = SPEC.model_copy(update={"scaling": SPEC.scaling.model_copy(update={"target_utilization": util})})
    per3 = variant_capacity(spec, V, sig(30.0), 1.0, (1000.0, 200.0), 3).per_replica
    demand = 3 * per3 * util * over
    got = plan(spec, V, sig(demand), cap_step(), Forecast(demand, 105.0, 300.0, History()), 4)
    per = variant_capacity(spec, V, sig(demand), 1.0, (1000.0, 200.0), planned).per_replica
    why = Reason(Code.CAPACITY_PLAN, f"forecast {demand:.2f} req/s over 105s / {per:.2f} req/s per replica (equal shares "
                                     f"behind a Service) at {util:.0%} -> {planned}")
    # load_asks None: the window remembers the plan itself (4 == 4 is said as None too).
    assert got == Plan(Proposal(planned, (why,), kept if kept is not None and kept < planned else None), planned)
    assert got.proposal.recommendation == (kept or planned)


def test_plan_holds_when_there_is_nothing_to_plan_for() -> None:
    assert plan(SPEC, V, sig(None), cap_step(), Forecast(None, 105.0, 300.0, History()), 3) == Plan(Proposal(3), None)
    assert plan(SPEC, V, sig(5.0), cap_step(per_replica=0.0), Forecast(5.0, 105.0, 300.0, History()), 3) == Plan(Proposal(3), None)


# ---- 11. variant ------------------------------------------------------------------------------------

def test_a_switch_from_a_shape_that_cannot_meet_the_slo_keeps_the_gpu_ceiling_over_replicas_min() -> None:
    """main decided 4 x h100x2 = 8 GPUs under maxGPUs 6 (replicas.min beat the ceiling)."""
    sp = spec(replicas={"min": 4, "max": 8},
              variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}, {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2}],
              slo={"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "30ms"}},
              cost={"maxGPUs": 6, "prices": {"nvidia-h100": "4", "nvidia-l4": "0.8"}})
    l4 = sp.variants[0]
    w = Workload(variant="l4x1", replicas=4, ready=4, pods={"l4x1": PodCounts(ready=4)})
    seen = History(mean_input=1000.0, mean_output=200.0)  # a token mix seen in traffic
    got = variant(sp, w, l4, sig(5.0), cap_step(), Forecast(5.0, 105.0, 300.0, History()), Proposal(4), seen, NOW)
    assert got.variant.name == "h100x2" and got.proposal.replicas == 3
    assert [r.code for r in got.proposal.reasons] == [Code.VARIANT_SWITCH]


def test_no_switch_with_a_single_shape_or_no_forecast() -> None:
    assert variant(SPEC, W2, V, sig(5.0), cap_step(), Forecast(5.0, 105.0, 300.0, History()), Proposal(2), History(), NOW) == \
        Shape(V, Proposal(2), History(), {})
    two = spec(variants=[{"name": "h100x1", "accelerator": "nvidia-h100"}, {"name": "l4x1", "accelerator": "nvidia-l4"}])
    assert variant(two, W2, two.variants[0], sig(None), cap_step(), Forecast(None, 105.0, 300.0, History()), Proposal(2), History(),
                   NOW) == Shape(two.variants[0], Proposal(2), History(), {})


def test_no_switch_on_the_default_token_mix_before_any_traffic_taught_one() -> None:
    """On the bed, the first decision switched L4 -> H100 on the default 1,000-token mix (where L4
    cannot meet a 500 ms TTFT) although the traffic had 200-token prompts."""
    sp = spec(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}, {"name": "h100x1", "accelerator": "nvidia-h100"}],
              slo={"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}})
    w = Workload(variant="l4x1", replicas=1, ready=1, pods={"l4x1": PodCounts(ready=1)})
    fc = Forecast(1.0, 105.0, 300.0, History())
    assert variant(sp, w, sp.variants[0], sig(1.0), cap_step(), fc, Proposal(1), History(), NOW).variant.name == "l4x1"
    seen = History(mean_input=1000.0, mean_output=200.0)
    assert variant(sp, w, sp.variants[0], sig(1.0), cap_step(), fc, Proposal(1), seen, NOW).variant.name == "h100x1"


def test_every_shape_is_reported_with_its_replicas_cost_and_why() -> None:
    sp = spec(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}, {"name": "h100x1", "accelerator": "nvidia-h100"}],
              slo={"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}})
    w = Workload(variant="l4x1", replicas=1, ready=1, pods={"l4x1": PodCounts(ready=1)})
    seen = History(mean_input=1000.0, mean_output=200.0)
    got = variant(sp, w, sp.variants[0], sig(1.0), cap_step(), Forecast(1.0, 105.0, 300.0, History()), Proposal(1), seen, NOW)
    l4, h100 = got.options
    assert (l4.variant, l4.replicas, l4.hourly_cost, l4.fits_ceiling, l4.note) == ("l4x1", None, None, False, "running")
    assert l4.limited_by.startswith("infeasible")
    assert (h100.variant, h100.replicas, h100.hourly_cost, h100.fits_ceiling, h100.note) == ("h100x1", 1, 4.0, True, "chosen")


def test_the_end_of_a_normal_switch_is_not_a_stall_to_reverse() -> None:
    """Review: with the new pods Ready and the old ones about to retire, a load wobble reversed the
    switch at once (dwell and the 20 % rule bypassed). A stall needs a short target and no room."""
    sp = spec(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}, {"name": "h100x1", "accelerator": "nvidia-h100"}],
              slo={"ttft": {"target": "1s", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
              cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
              scaling={"variantSwitch": {"dwell": "15m"}})
    w = Workload(variant="h100x1", replicas=1, ready=1, desired={"h100x1": 1, "l4x1": 5}, target_since=NOW - 60,
                 pods={"h100x1": PodCounts(ready=1), "l4x1": PodCounts(ready=5)})
    seen = History(mean_input=200.0, mean_output=100.0)
    got = variant(sp, w, sp.variants[1], sig(2.0), cap_step(), Forecast(2.0, 105.0, 300.0, History()), Proposal(1), seen, NOW)
    assert got.variant.name == "h100x1" and got.proposal == Proposal(1)


def test_a_burst_that_returns_after_the_hold_ran_out_teaches_no_headroom() -> None:
    """A 30 req/s burst, a 15-minute lull at 2 (the scale-down window's hold long over: nothing held
    above the load), and the burst back at 30: it came back to released capacity, which says nothing
    of how far above a held peak bursts return (review: 15.0 was learnt, and blocked the headroom
    for the next twelve returns)."""
    h = History(rate_samples=((NOW - 960.0, 30.0), (NOW - 945.0, 30.0)))
    lull = [(NOW - 930.0 + 15.0 * i, 2.0) for i in range(62)]
    h = run_forecasts(SPEC, lull, h)
    assert h.quiet_since == NOW - 930.0 and h.held_level is None
    h = run_forecasts(SPEC, [(NOW + 15.0, 30.0), (NOW + 30.0, 31.0), (NOW + 45.0, 2.0)], h)
    assert (h.burst_growth, h.burst_from, h.burst_since, h.burst_top) == ((), None, None, None)
    assert len(h.burst_gaps) == 1  # the lull itself still counts


def test_a_long_burst_s_height_outlives_the_rate_samples() -> None:
    """The burst's running top is kept beside the rate samples: a burst whose highest window has
    aged out of the half-hour samples is still measured by it."""
    h = History(rate_samples=((NOW - 15.0, 30.0),), burst_from=40.0, burst_since=NOW - 3000.0, burst_top=44.0)
    got = forecast(SPEC, V, Workload("h100x1", 3, 3), sig(2.0), h, NOW).history
    assert got.burst_growth == (pytest.approx(44.0 / 40.0),) and got.burst_top is None


def test_a_lull_whose_peak_was_lost_ends_without_a_gap() -> None:
    h = History(rate_samples=((NOW - 15.0, 2.0),), quiet_since=NOW - 600.0)
    got = forecast(SPEC, V, Workload("h100x1", 3, 3), sig(2.0), h, NOW).history
    assert (got.quiet_since, got.burst_gaps, got.burst_from) == (None, (), None)
