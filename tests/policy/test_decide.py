"""The decision core, table-driven with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from llmscale.api import parse_spec
from llmscale.policy import Code, History, PodCounts, Signals, Workload, decide
from llmscale.policy.capacity import shape_key
from tests.conftest import spec_dict


# A healthy 8B-on-H100 deployment carrying `rate` req/s of a chat-like mix.
def healthy(rate: float, ttft: float = 0.2, itl: float = 0.03, waiting: float = 0.0, running: float = 20.0) -> Signals:
    return Signals(
        ttft_quantile=ttft, itl_quantile=itl, request_rate=rate, prompt_tokens_rate=rate * 1000,
        generation_tokens_rate=rate * 200, requests_waiting=waiting, requests_running=running,
        kv_cache_usage=0.2, gpu_utilization=0.9, sampled_at=0.0,
    )


@dataclass
class Case:
    name: str
    workload: Workload
    signals: Signals
    expect_to: int | str  # a number, or "<", ">", "=" relative to current
    expect_codes: tuple[Code, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=History)
    expect_apply: bool | None = None
    now: float = 10_000.0


CASES = [
    Case("steady load keeps replicas", Workload("h100x1", 2, 2), healthy(20.0), 2),
    Case("no history yet: no scale-down", Workload("h100x1", 4, 4), healthy(2.0), 4, (Code.SCALE_DOWN_STABILIZED,)),
    Case("TTFT breach scales up now", Workload("h100x1", 2, 2), healthy(12.0, ttft=1.2), ">", (Code.SLO_BREACH_TTFT,)),
    Case("ITL breach scales up now", Workload("h100x1", 2, 2), healthy(12.0, itl=0.25), ">", (Code.SLO_BREACH_ITL,)),
    Case("queue growing scales up", Workload("h100x1", 2, 2), healthy(12.0, waiting=40, running=40), ">", (Code.QUEUE_GROWING,)),
    Case("more load than capacity plans up", Workload("h100x1", 1, 1), healthy(60.0), ">", (Code.CAPACITY_PLAN,)),
    Case("big burst: rate limited to maxStep", Workload("h100x1", 1, 1), healthy(200.0, ttft=5.0), 5, (Code.RATE_LIMITED_UP,)),
    Case("low load: scale-down held by the window", Workload("h100x1", 6, 6), healthy(2.0), 6, (Code.SCALE_DOWN_STABILIZED,),
         history=History(recommendations=((9_900.0, 6),))),
    Case("low load after the window: one step down", Workload("h100x1", 6, 6), healthy(2.0), 5, (Code.RATE_LIMITED_DOWN,),
         history=History(recommendations=((9_000.0, 6), (9_690.0, 2), (9_985.0, 2)), observing_since=1_000.0)),
    Case("Prometheus down: hold", Workload("h100x1", 3, 3), Signals.unreachable("connection refused"), 3,
         (Code.METRICS_UNAVAILABLE,), expect_apply=False),
    Case("unknown request rate: no scale-down", Workload("h100x1", 6, 6),
         Signals(ttft_quantile=0.1, unknown={"requestRate": "no series"}), 6, (Code.METRICS_UNKNOWN,)),
    Case("maxGPUs caps the scale-up", Workload("h100x1", 4, 4), healthy(500.0, ttft=3.0), 8, (Code.BUDGET_GPUS,),
         spec={"replicas": {"min": 1, "max": 16}, "scaling": {"scaleUp": {"maxStep": 100}}, "cost": {"maxGPUs": 8, "prices": {"nvidia-h100": "4"}}}),
    Case("maxHourlyCost caps the scale-up", Workload("h100x1", 4, 4), healthy(500.0, ttft=3.0), 5, (Code.BUDGET_COST,),
         spec={"scaling": {"scaleUp": {"maxStep": 100}}, "cost": {"maxHourlyCost": "20", "prices": {"nvidia-h100": "4"}}}),
    Case("cost ceiling lowered below spend: down to the ceiling", Workload("h100x1", 6, 6), healthy(120.0), 3, (Code.BUDGET_COST,),
         spec={"scaling": {"scaleDown": {"maxStep": 10, "stabilizationWindow": "0s"}}, "cost": {"maxHourlyCost": "12", "prices": {"nvidia-h100": "4"}}}),
    Case("below min is raised", Workload("h100x1", 1, 1), healthy(0.5), 2, (Code.AT_MIN,), spec={"replicas": {"min": 2, "max": 8}}),
    Case("idle, scale to zero enabled, idle long enough", Workload("h100x1", 1, 1), healthy(0.0, running=0), 0, (Code.SCALE_TO_ZERO,),
         spec={"replicas": {"min": 0, "max": 4}, "scaling": {"scaleToZero": {"enabled": True, "idleFor": "10m", "demand": {"inferencePool": "chat"}}}},
         history=History(idle_since=9_000.0, recommendations=((9_000.0, 0), (9_985.0, 1)), observing_since=1_000.0)),
    Case("idle, not for long enough: keep one", Workload("h100x1", 1, 1), healthy(0.0, running=0), 1, (Code.IDLE,),
         spec={"replicas": {"min": 0, "max": 4}, "scaling": {"scaleToZero": {"enabled": True, "idleFor": "10m", "demand": {"inferencePool": "chat"}}}},
         history=History(idle_since=9_900.0)),
    Case("missing series at zero traffic is not idleness", Workload("h100x1", 1, 1),
         Signals(unknown={"requestRate": "no series", "requestsWaiting": "no series"}), 1, (Code.METRICS_UNKNOWN,),
         spec={"replicas": {"min": 0, "max": 4}, "scaling": {"scaleToZero": {"enabled": True, "idleFor": "1m", "demand": {"inferencePool": "chat"}}}},
         history=History(idle_since=1_000.0)),
    Case("demand at zero starts one", Workload("h100x1", 0, 0), Signals(requests_waiting=3.0, unknown={"requestRate": "no series"}), 1,
         (Code.SCALE_FROM_ZERO,), spec={"replicas": {"min": 0, "max": 4}, "scaling": {"scaleToZero": {"enabled": True, "demand": {"inferencePool": "chat"}}}}),
    Case("Recommend mode reports, does not apply", Workload("h100x1", 2, 2), healthy(12.0, ttft=1.5), ">", (Code.RECOMMEND_ONLY,),
         spec={"scaling": {"mode": "Recommend"}}, expect_apply=False),
    Case("Paused changes nothing", Workload("h100x1", 2, 2), healthy(50.0, ttft=3.0), 2, (Code.PAUSED,),
         spec={"scaling": {"mode": "Paused"}}, expect_apply=False),
    Case("Paused applies manualReplicas inside the ceilings", Workload("h100x1", 2, 2), healthy(5.0), 8, (Code.PAUSED, Code.BUDGET_GPUS),
         spec={"replicas": {"min": 1, "max": 16}, "scaling": {"mode": "Paused", "manualReplicas": 12}}, expect_apply=True),
    Case("infeasible SLO is reported, not chased", Workload("l4x1", 2, 2), healthy(1.0, itl=0.09), "=", (),
         spec={"variants": [{"name": "l4x1", "accelerator": "nvidia-l4"}], "slo": {"interTokenLatency": {"target": "20ms"}}}),
    Case("replicas still loading count as capacity", Workload("h100x1", 4, 2, starting=2), healthy(12.0, ttft=0.6), 4,
         (Code.COLD_START,)),
    Case("a queue seen once is a blip: look again", Workload("h100x1", 2, 2), healthy(12.0, waiting=5, running=8), "="),
    Case("a queue seen twice scales up", Workload("h100x1", 2, 2), healthy(12.0, waiting=5, running=8), ">", (Code.QUEUE_GROWING,),
         history=History(queued_at=10_000.0 - 15.0)),
    Case("a queue far beyond the TTFT target acts at once", Workload("h100x1", 2, 2), healthy(12.0, waiting=30, running=8), ">",
         (Code.QUEUE_GROWING,)),
    Case("a p95 over target by chance is not a breach", Workload("h100x1", 2, 2),
         Signals(ttft_quantile=0.6, ttft_attainment=0.93, itl_quantile=0.03, request_rate=3.33, prompt_tokens_rate=3330,
                 generation_tokens_rate=666, requests_waiting=0, requests_running=4, sampled_at=0.0), "="),
    Case("a breach from the backlog before replicas became Ready waits", Workload("h100x1", 4, 4), healthy(12.0, ttft=0.8), "=",
         (Code.COLD_START,), history=History(ready_seen=2)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    spec = parse_spec(spec_dict(**case.spec))
    d = decide(spec, case.workload, case.signals, case.history, case.now)
    cur = case.workload.replicas
    if case.expect_to == ">":
        assert d.to_replicas > cur, d.reasons
    elif case.expect_to == "<":
        assert d.to_replicas < cur, d.reasons
    elif case.expect_to == "=":
        assert d.to_replicas == cur, d.reasons
    else:
        assert d.to_replicas == case.expect_to, d.reasons
    for code in case.expect_codes:
        assert code in d.codes, (code, d.reasons)
    if case.expect_apply is not None:
        assert d.apply is case.expect_apply
    assert d.reasons, "every decision carries its reasons"


def test_infeasible_slo_sets_the_condition() -> None:
    spec = parse_spec(spec_dict(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}], engineArgs=["--max-model-len=8192"],
                                slo={"interTokenLatency": {"target": "20ms"}}))
    d = decide(spec, Workload("l4x1", 2, 2), healthy(1.0, itl=0.09), History(), 0.0)
    status, reason, message = d.conditions["SLOFeasible"]
    assert status == "False" and reason == "SLOInfeasible" and "inter-token" in message


def test_budget_limited_condition() -> None:
    spec = parse_spec(spec_dict(cost={"maxGPUs": 3, "prices": {"nvidia-h100": "4"}}, scaling={"scaleUp": {"maxStep": 10}}))
    d = decide(spec, Workload("h100x1", 3, 3), healthy(200.0, ttft=4.0), History(), 0.0)
    assert d.to_replicas == 3
    assert d.conditions["BudgetLimited"][0] == "True"


def test_metrics_unavailable_condition_and_history_kept() -> None:
    spec = parse_spec(spec_dict())
    h = History(recommendations=((1.0, 3),), capacity_correction=0.8)
    d = decide(spec, Workload("h100x1", 3, 3), Signals.unreachable("timeout"), h, 5.0)
    assert d.conditions["MetricsAvailable"][0] == "False"
    assert d.history == h


def test_scale_down_waits_for_the_stabilization_window_with_a_fake_clock() -> None:
    """Load drops at t=300; no replica is released below the busy recommendation until 300 s later."""
    spec = parse_spec(spec_dict(scaling={"interval": "15s"}))
    h, replicas = History(), 6
    busy_recs = []
    for t in range(0, 300, 15):
        d = decide(spec, Workload("h100x1", replicas, replicas), healthy(60.0), h, float(t))
        h, replicas = d.history, d.to_replicas
        busy_recs.append(h.recommendations[-1][1])
    busy = max(busy_recs)
    during, after = [], []
    for t in range(300, 1500, 15):
        d = decide(spec, Workload("h100x1", replicas, replicas), healthy(2.0), h, float(t))
        h, replicas = d.history, d.to_replicas
        (during if t < 300 + 300 - 15 else after).append(replicas)
    assert min(during) >= busy, (during, busy)
    assert after[-1] < busy and after[-1] >= 1


def test_history_round_trips_through_status() -> None:
    h = History(recommendations=((1.5, 2), (3.0, 4)), rate_samples=((1.0, 2.5),), last_scale_at=3.0, idle_since=None,
                panic_until=9.0, capacity_correction=0.9, variant_candidate="l4", variant_candidate_since=2.0,
                observing_since=1.0, backlog_at=4.0, mean_input=900.0, mix_requests=240.0, queue_scrapes=((3.0, 10.0, 20.0), (5.0, 12.0, 30.0)),
                started_shapes=("l4x1@0123456789",), burst_growth=(0.8, 1.05), burst_from=40.0, burst_since=2.0,
                held_level=41.5, rise_since=3.0, spill_shape="l4x1", gpus_short="h100x2", gpus_short_since=-30.0,
                load_record=((0.0, 45.5, 44.25, 30000.0), (3600.0, 20.0, 18.5, 21000.0)))
    assert History.from_dict(h.to_dict()) == h
    # A long-memory record that does not parse (out of order, negative, the wrong shape) is dropped alone.
    for bad in ([[3600.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]], [[0.0, -1.0, 1.0, 1.0]], [[0.0, 1.0, 1.0]], "x",
                [[10.0, 1.0, 1.0, 1.0]], [[3600.0 * i, 1.0, 1.0, 1.0] for i in range(26)]):
        assert History.parse({**h.to_dict(), "loadRecord": bad}) == (h.with_(load_record=()), ("loadRecord",))
    # Nine hand-edited zeros would plan a held peak with no headroom: a growth must be positive, twelve at most.
    for bad_growth in ([0.0] * 9, [1.0] * 13, [-1.0]):
        assert History.parse({**h.to_dict(), "burstGrowth": bad_growth}) == (h.with_(burst_growth=()), ("burstGrowth",))
    assert History.parse({**h.to_dict(), "burstFrom": -3.0}) == (h.with_(burst_from=None), ("burstFrom",))
    assert History.parse({**h.to_dict(), "startedShapes": [3]}) == (h.with_(started_shapes=()), ("startedShapes",))
    assert History.from_dict({"recommendations": "garbage"}) == History()
    # A field that does not parse falls back alone: the rest is kept.
    assert History.from_dict({**h.to_dict(), "queueScrapes": [[1.0, "x"]]}) == h.with_(queue_scrapes=())
    assert History.parse({**h.to_dict(), "mixRequests": -1}) == (h.with_(mix_requests=None), ("mixRequests",))
    assert History.from_dict({**h.to_dict(), "queueScrapes": [[1.0, -2.0, 3.0]]}) == h.with_(queue_scrapes=())
    assert History.from_dict({**h.to_dict(), "queueScrapes": [[5.0, 1.0, 1.0], [3.0, 1.0, 1.0]]}) == h.with_(queue_scrapes=())
    # The fields dropped are named, so the operator can report them (an Event, HistoryFieldsReset).
    assert History.parse({**h.to_dict(), "queueScrapes": "x", "capacityCorrection": "NaN"}) == (
        h.with_(queue_scrapes=(), capacity_correction=1.0), ("capacityCorrection", "queueScrapes"))
    assert History.parse(h.to_dict()) == (h, ())
    assert History.parse(None) == (History(), ())
    assert History.parse(["not", "a", "dict"]) == (History(), ("history",))
    assert History.from_dict(None) == History()


def test_variant_switch_to_the_cheaper_shape_after_hysteresis() -> None:
    """At low load an L4 serves the SLO for a fifth of the price: switch, but only after holding a while."""
    spec = parse_spec(spec_dict(
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100"}, {"name": "l4x1", "accelerator": "nvidia-l4"}],
        engineArgs=["--max-model-len=8192"],  # else vLLM does not start on an L4 (see the next test)
        slo={"ttft": {"target": "2s"}, "interTokenLatency": {"target": "150ms"}},
        cost={"maxGPUs": 8, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"scaleDown": {"stabilizationWindow": "120s"}},
    ))
    # 0.5 req/s: 30 requests in the 60 s window, enough to know the token mix the shapes are compared on.
    sig = Signals(ttft_quantile=0.1, itl_quantile=0.02, request_rate=0.5, prompt_tokens_rate=0.5 * 300,
                  generation_tokens_rate=0.5 * 100, requests_waiting=0, requests_running=1)
    h = History()
    d = decide(spec, Workload("h100x1", 1, 1), sig, h, 0.0)
    assert d.variant == "h100x1"  # candidate noted, not yet switched
    assert d.history.variant_candidate == "l4x1"
    d2 = decide(spec, Workload("h100x1", 1, 1), sig, d.history, 200.0)
    assert d2.variant == "l4x1" and Code.VARIANT_SWITCH in d2.codes


def test_a_backlog_the_ready_replicas_drain_does_not_escalate_through_decide() -> None:
    """The queue seen at the last decision reaches the feedback step: a backlog that shrank from 400
    to 100 on 4 Ready replicas in 15 s is theirs to finish; the same breach with the queue not
    seen before (nothing to tell a drain from a build-up) doubles the fleet."""
    spec = parse_spec(spec_dict(scaling={"interval": "15s"}))
    t = 10_000.0
    breach = Signals(ttft_quantile=1.0, ttft_attainment=0.5, itl_quantile=0.03, request_rate=20.0,
                     prompt_tokens_rate=20_000.0, generation_tokens_rate=4_000.0, requests_waiting=100.0,
                     requests_running=100.0, sampled_at=t)
    base = History(observing_since=t - 1_000)
    drained = decide(spec, Workload("h100x1", 4, 4), breach, base.with_(queue_scrapes=((t - 15, 400.0, 100.0),)), t)
    assert Code.SLO_BREACH_TTFT not in drained.codes and Code.COLD_START in drained.codes
    assert drained.history.queue_scrapes == ((t - 15, 400.0, 100.0), (t, 100.0, 100.0))
    assert drained.to_replicas < 8
    # The next decision 15 s later reads the same scrape (Prometheus scraping every 30 s): the
    # same verdict, not a breach with nothing to tell a drain from a build-up.
    again = decide(spec, Workload("h100x1", 4, 4), breach, drained.history, t + 15)
    assert Code.SLO_BREACH_TTFT not in again.codes and again.to_replicas == drained.to_replicas
    unseen = decide(spec, Workload("h100x1", 4, 4), breach, base, t)
    assert Code.SLO_BREACH_TTFT in unseen.codes and unseen.to_replicas == 8


def test_a_drained_backlog_is_not_held_for_the_scale_down_window() -> None:
    """Six Ready replicas drain a backlog (300 -> 60 waiting, 60 fewer each 15 s) while 30 req/s
    arrive, which two replicas carry: the queue holds the six while it lasts, and once it is gone
    they go down at once, one per interval (scaleDown.maxStep), not five minutes later (the window
    had recorded the hold, 6, at every decision of the drain)."""
    spec = parse_spec(spec_dict(scaling={"interval": "15s"}, routing="LoadAware"))  # pooled: two carry 30 req/s with room
    h, n = History(observing_since=-1_000.0, queue_scrapes=((-15.0, 360.0, 120.0),)), 6
    seen = []
    for k, t in enumerate(range(0, 135, 15)):
        waiting = [300.0, 240.0, 180.0, 120.0, 60.0][k] if k < 5 else 0.0
        signals = healthy(30.0, waiting=waiting, running=120.0)
        d = decide(spec, Workload("h100x1", n, n), Signals(**{**signals.__dict__, "sampled_at": float(t)}), h, float(t))
        seen.append((n, d.to_replicas, d.history.recommendations[-1][1]))
        if waiting:
            assert Code.QUEUE_GROWING in d.codes and Code.SLO_BREACH_TTFT not in d.codes, d.reasons
        h, n = d.history, d.to_replicas
    assert seen == [(6, 6, 2)] * 5 + [(6, 5, 2), (5, 4, 2), (4, 3, 2), (3, 2, 2)]


def test_a_shape_vllm_would_not_start_on_is_never_chosen_and_explain_says_why() -> None:
    """Without --max-model-len, vLLM starts Llama-3.1-8B only where the KV cache holds its
    131,072-token context: not on an L4 (27,465 tokens), however cheap."""
    spec = parse_spec(spec_dict(
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100"}, {"name": "l4x1", "accelerator": "nvidia-l4"}],
        slo={"ttft": {"target": "2s"}, "interTokenLatency": {"target": "150ms"}},
        cost={"maxGPUs": 8, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"scaleDown": {"stabilizationWindow": "120s"}},
    ))
    sig = Signals(ttft_quantile=0.1, itl_quantile=0.02, request_rate=0.5, prompt_tokens_rate=0.5 * 300,
                  generation_tokens_rate=0.5 * 100, requests_waiting=0, requests_running=1)
    d = decide(spec, Workload("h100x1", 1, 1), sig, History(), 0.0)
    d2 = decide(spec, Workload("h100x1", 1, 1), sig, d.history, 200.0)
    assert d.variant == d2.variant == "h100x1" and d2.history.variant_candidate is None
    l4 = next(o for o in d2.estimate.shapes if o.variant == "l4x1")
    assert l4.replicas is None and l4.capacity_per_replica == 0
    assert l4.limited_by == ("infeasible: vLLM would not start: its KV cache holds 27,465 tokens, less than the model's "
                             "131,072-token context (set --max-model-len)")


def test_a_running_shape_whose_pods_are_ready_is_never_judged_unable_to_start() -> None:
    """Ready pods prove vLLM starts on the shape, whatever the engine args seemed to say (review:
    a running L4 fleet was switched away from at once as 'cannot meet the SLO')."""
    spec = parse_spec(spec_dict(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}],
                                slo={"ttft": {"target": "2s"}, "interTokenLatency": {"target": "150ms"}}))
    d = decide(spec, Workload("l4x1", 2, 2), healthy(1.0, itl=0.03), History(), 0.0)
    assert d.conditions["SLOFeasible"][0] == "True", d.conditions["SLOFeasible"]
    new = decide(spec, Workload("l4x1", 1, 0, starting=1), healthy(1.0, itl=0.03), History(), 0.0)
    assert new.conditions["SLOFeasible"][0] == "False" and "vLLM would not start" in new.conditions["SLOFeasible"][2]


L4_FIRST = {"variants": [{"name": "l4x1", "accelerator": "nvidia-l4"}, {"name": "h100x1", "accelerator": "nvidia-h100"}],
            "slo": {"ttft": {"target": "2s"}, "interTokenLatency": {"target": "150ms"}},
            "cost": {"maxGPUs": 8, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}}
LIGHT = Signals(ttft_quantile=0.1, itl_quantile=0.02, request_rate=0.5, prompt_tokens_rate=0.5 * 300,
                generation_tokens_rate=0.5 * 100, requests_waiting=0, requests_running=1)


def test_a_new_deployment_on_a_shape_vllm_would_not_start_on_moves_to_the_first_that_it_starts_on() -> None:
    """Review: with [l4x1, h100x1] and no --max-model-len, the first L4 pod never becomes Ready, and
    with no traffic yet (no token mix to compare shapes on) the deployment stayed on L4 for good."""
    spec = parse_spec(spec_dict(**L4_FIRST))
    d = decide(spec, Workload("l4x1", 1, 0, starting=1), Signals(unknown={"requestRate": "no series"}), History(), 0.0)
    assert d.variant == "h100x1" and d.to_replicas == 1, d.reasons
    assert any(r.code == Code.VARIANT_SWITCH and r.message.startswith("l4x1 -> h100x1: vLLM would not start on l4x1 (its KV cache")
               for r in d.reasons), d.reasons
    # With --max-model-len the L4 starts: nothing moves.
    ok = parse_spec(spec_dict(**L4_FIRST, engineArgs=["--max-model-len=8192"]))
    assert decide(ok, Workload("l4x1", 1, 0, starting=1), Signals(unknown={"requestRate": "no series"}), History(), 0.0).variant == "l4x1"


def test_ready_pods_keep_their_shape_in_the_plan_and_the_shape_choice() -> None:
    """Review: with `started` dropped from the plan or the shape step, a Ready L4 fleet planned 0
    replicas or was switched away from at once as 'cannot meet the SLO'. Ready pods prove vLLM
    starts on the shape whatever the rule says."""
    spec = parse_spec(spec_dict(**L4_FIRST))
    seen = History(mean_input=300.0, mean_output=100.0, mix_requests=500.0, observing_since=-1_000.0)
    w = Workload("l4x1", 2, 2, pods={"l4x1": PodCounts(ready=2)})
    d = decide(spec, w, LIGHT, seen, 0.0)
    assert d.variant == "l4x1" and d.to_replicas >= 1 and d.estimate.planned_replicas, d.reasons
    l4 = next(o for o in d.estimate.shapes if o.variant == "l4x1")
    assert l4.replicas and l4.capacity_per_replica > 0 and not l4.limited_by.startswith("infeasible"), l4


def test_a_shape_seen_started_is_not_refused_once_its_pods_are_gone() -> None:
    """Review: the proof that vLLM starts on a shape was lost with its pods (after scale-to-zero or
    a fleet restart), and the rule refused it again. It is kept in history, for the model and the
    engine args it was seen with."""
    spec = parse_spec(spec_dict(**L4_FIRST))
    seen = History(mean_input=300.0, mean_output=100.0, mix_requests=500.0, observing_since=-1_000.0)
    ran = decide(spec, Workload("l4x1", 2, 2, pods={"l4x1": PodCounts(ready=2)}), LIGHT, seen, 0.0)
    assert ran.history.started_shapes == (shape_key(spec, "l4x1"),)
    restarting = Workload("l4x1", 2, 0, starting=2, pods={"l4x1": PodCounts(starting=2)})
    d = decide(spec, restarting, LIGHT, ran.history, 15.0)
    assert d.variant == "l4x1", d.reasons
    # Other engine args are another shape as run: the proof does not carry over.
    other = parse_spec(spec_dict(**L4_FIRST, engineArgs=["--enable-prefix-caching"]))
    assert decide(other, restarting, LIGHT, ran.history, 15.0).variant == "h100x1"


def test_a_learnt_burst_headroom_reaches_the_plan_and_every_shape_weighed() -> None:
    """Nine bursts came back no higher than the peak held for them: the held peak is planned at full
    capacity (not targetUtilization's 85 %) by the plan, and each pod shape is weighed the same way;
    with one burst that came back higher, both use targetUtilization again."""
    from llmscale.policy.capacity import replicas_for, variant_capacity

    spec = parse_spec(spec_dict(
        engineArgs=["--max-model-len=8192"], replicas={"min": 1, "max": 16}, cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "90s"},
                  {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2, "coldStart": "90s"}],
        routing="LoadAware"))  # pooled: the two utilizations plan different counts at this load
    samples = tuple((NOW_D - 300.0 + 15.0 * i, 60.0 if i < 2 else 3.0) for i in range(20))
    h = History(rate_samples=samples, observing_since=0.0, recommendations=((NOW_D - 15.0, 6),), mean_input=1000.0,
                mean_output=200.0, mix_requests=500.0, mix_at=NOW_D - 5.0, planned_mix=(1000.0, 200.0),
                burst_gaps=(120.0, 200.0), burst_growth=(0.95,) * 9)
    signals = healthy(3.0)
    learnt = decide(spec, Workload("h100x1", 6, 6), signals, h, NOW_D)
    default = decide(spec, Workload("h100x1", 6, 6), signals, h.with_(burst_growth=(0.95,) * 8 + (1.3,)), NOW_D)
    rate = learnt.estimate.forecast_rate
    assert rate is not None and rate == default.estimate.forecast_rate and rate > 30.0
    for d, util in ((learnt, 1.0), (default, 0.85)):
        want, at = replicas_for(spec, spec.variants[0], signals, 1.0, (1000.0, 200.0), rate, util)
        assert d.estimate.planned_replicas == want
        plan_reason = next(r for r in d.reasons if r.code == Code.CAPACITY_PLAN)
        assert plan_reason.message == (f"forecast {rate:.2f} req/s over 105s / {at.per_replica:.2f} req/s per replica "
                                       f"(in a fleet of {want}) at {util:.0%} -> {want}")
        for option in d.estimate.shapes:
            v = spec.variant(option.variant)
            n, _ = replicas_for(spec, v, signals, 1.0, (1000.0, 200.0), rate, util)
            assert option.replicas == n and n > 0, (option, util)
            assert variant_capacity(spec, v, signals, 1.0, (1000.0, 200.0), n).feasible
    assert learnt.estimate.planned_replicas < default.estimate.planned_replicas  # type: ignore[operator]


NOW_D = 100_000.0


def test_steady_load_at_a_replica_boundary_is_not_held_at_the_upper_count() -> None:
    """A steady load whose noisy windows straddle the plan's boundary between 3 and 4 replicas, all
    within the 10 % tolerance band of 3 and within chance of each other (the burst memory holds
    none of them as a peak): the scale-down window remembers the 3 the band keeps, not the 4 the
    plan rounds the higher windows to, so the fleet settles at 3 and stays (a scale-up from 3
    needs the load past the band). Before, every 4 in the window held 4 for good (mooncake: five
    replicas for forty minutes where four met the SLO)."""
    from llmscale.policy.capacity import variant_capacity

    spec = parse_spec(spec_dict(scaling={"interval": "15s"}))
    v = spec.variants[0]
    util = spec.scaling.target_utilization
    cap3 = 3 * variant_capacity(spec, v, healthy(30.0), 1.0, (1000.0, 200.0), 3).per_replica * util
    spread = (cap3 / 60) ** 0.5  # a 60 s window's Poisson spread
    high, low = cap3 + 0.5 * spread, cap3 - 0.5 * spread
    assert high <= cap3 * (1 + spec.scaling.tolerance)
    h, n = History(observing_since=-1_000.0), 4
    seen = []
    for k, t in enumerate(range(0, 1200, 15)):
        rate = high if k % 2 == 0 else low
        signals = Signals(**{**healthy(rate).__dict__, "sampled_at": float(t)})
        d = decide(spec, Workload("h100x1", n, n), signals, h, float(t))
        if rate == high:
            assert d.estimate.planned_replicas == 4, d.reasons  # the plan rounds the high windows up
        h, n = d.history, d.to_replicas
        seen.append(n)
    assert seen[-40:] == [3] * 40, seen


def test_a_scale_up_past_the_band_is_held_for_the_window_against_a_plan_one_lower() -> None:
    """Review: from 2 replicas, a load the plan rounds to 4 but the tolerance band keeps at 3
    scaled to 4 and recorded 3, and the next decision planning 3 undid the scale-up at once, pods
    still loading. A scale-up is remembered as its count: the 4 holds for the window."""
    from llmscale.policy.capacity import variant_capacity

    spec = parse_spec(spec_dict(scaling={"interval": "15s"}))
    v = spec.variants[0]
    util = spec.scaling.target_utilization
    cap3 = 3 * variant_capacity(spec, v, healthy(30.0), 1.0, (1000.0, 200.0), 3).per_replica * util
    spread = (cap3 / 60) ** 0.5
    h = History(observing_since=-1_000.0, mean_input=1000.0, mean_output=200.0, mix_requests=500.0,
                planned_mix=(1000.0, 200.0))
    d = decide(spec, Workload("h100x1", 2, 2), Signals(**{**healthy(cap3 + 0.5 * spread).__dict__, "sampled_at": 0.0}), h, 0.0)
    assert (d.estimate.planned_replicas, d.to_replicas, d.history.recommendations[-1][1]) == (4, 4, 4), d.reasons
    seen = []
    h, n = d.history, 4
    for t in range(15, 300, 15):  # the load a hair under 3's plan, pods loading then Ready
        signals = Signals(**{**healthy(cap3 - 0.5 * spread).__dict__, "sampled_at": float(t)})
        d = decide(spec, Workload("h100x1", n, n), signals, h, float(t))
        h, n = d.history, d.to_replicas
        seen.append(n)
    assert seen == [4] * len(seen), seen
    assert Code.SCALE_DOWN_STABILIZED in d.codes
