"""Defects a fresh-eyes review of the core found in session 26, one test each; every test here failed
before its fix (the values main produced are in the docstrings)."""

from __future__ import annotations

from typing import Any

from llmscale.api import parse_spec
from llmscale.metrics.snapshot import build_signals, to_sample
from llmscale.policy import Code, History, Signals, Workload, decide
from llmscale.policy.capacity import CapacityCurve
from llmscale.policy.types import PodCounts
from tests.conftest import spec_dict

NOW = 10_000.0

H100 = {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1, "coldStart": "90s"}
A100 = {"name": "a100x1", "accelerator": "nvidia-a100", "gpusPerReplica": 1, "coldStart": "60s"}
H100X2 = {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2, "coldStart": "90s"}
L4 = {"name": "l4x1", "accelerator": "nvidia-l4", "gpusPerReplica": 1, "coldStart": "60s"}


def codes(d: Any) -> list[str]:
    return [r.code.value for r in d.reasons]


def test_a_shape_switch_in_flight_teaches_the_capacity_estimate_nothing() -> None:
    """The rate is the whole fleet's (both shapes) while `ready` counts the new shape's pods: one new
    pod seemed to carry five old pods' load (main: correction 1.0 -> 4.0 from one window)."""
    spec = parse_spec(spec_dict(variants=[H100, A100], replicas={"min": 1, "max": 16},
                                cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00", "nvidia-a100": "2.50"}}))
    s = Signals(ttft_quantile=0.15, itl_quantile=0.02, ttft_attainment=1.0, itl_attainment=1.0, request_rate=40.0,
                prompt_tokens_rate=40000.0, generation_tokens_rate=8000.0, requests_waiting=0.0, requests_running=30.0,
                sampled_at=NOW, read_at=NOW)
    h = History(observing_since=0.0, mean_input=1000.0, mean_output=200.0, mix_requests=500.0, mix_at=NOW - 120)
    alone = Workload("a100x1", 6, 6, pods={"a100x1": PodCounts(ready=6)})
    d = decide(spec, alone, s, h.with_(ready_seen=6), NOW)
    assert d.history.capacity_correction > 1.0  # one shape at this load does teach (the control)
    mid = Workload("a100x1", 1, 1, pods={"a100x1": PodCounts(ready=1), "h100x1": PodCounts(ready=5)},
                   desired={"a100x1": 1, "h100x1": 5}, target_since=NOW - 600)
    d = decide(spec, mid, s, h.with_(ready_seen=1), NOW)
    assert d.history.capacity_correction == 1.0
    assert d.history.learned_at is None
    assert Code.CAPACITY_LEARNED.value not in codes(d)
    # Nor while the old pods drain, nor from a window that still holds the time they served (the
    # first fix looked at Ready pods only: x4 again a decision after they began to drain).
    draining = Workload("a100x1", 1, 1, pods={"a100x1": PodCounts(ready=1), "h100x1": PodCounts(terminating=5)},
                        desired={"a100x1": 1}, target_since=NOW - 600)
    d = decide(spec, draining, s, h.with_(ready_seen=1), NOW)
    assert (d.history.capacity_correction, d.history.mixed_at) == (1.0, NOW)
    gone = Workload("a100x1", 1, 1, pods={"a100x1": PodCounts(ready=1)})
    # The window (60 s) and one interval (15 s: they may have served until just before the next decision).
    later = s.__class__(**{**s.__dict__, "sampled_at": NOW + 70, "read_at": NOW + 70})
    assert decide(spec, gone, later, d.history, NOW + 70).history.capacity_correction == 1.0
    after = s.__class__(**{**s.__dict__, "sampled_at": NOW + 80, "read_at": NOW + 80})
    assert decide(spec, gone, after, d.history, NOW + 80).history.capacity_correction > 1.0


def _saving_switch() -> tuple[Any, History, Workload]:
    spec = parse_spec(spec_dict(
        variants=[H100X2, L4], replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"], routing="LoadAware",
        slo={"ttft": {"target": "3s", "percentile": 95}, "interTokenLatency": {"target": "150ms", "percentile": 95}},
        cost={"maxGPUs": 20, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}))
    hist = History(observing_since=0.0, mean_input=1000.0, mean_output=200.0, mix_requests=500.0, mix_at=NOW - 30,
                   variant_candidate="l4x1", variant_candidate_since=NOW - 3600,
                   recommendations=((NOW - 400, 1), (NOW - 200, 1), (NOW - 15, 1)))
    return spec, hist, Workload("h100x2", 6, 6, pods={"h100x2": PodCounts(ready=6)})


def _light(waiting: float | None = 0.0, unknown: dict[str, str] | None = None) -> Signals:
    return Signals(ttft_quantile=0.1, itl_quantile=0.02, request_rate=1.0, prompt_tokens_rate=1000.0,
                   generation_tokens_rate=200.0, requests_waiting=waiting, requests_running=2.0, sampled_at=NOW,
                   unknown=unknown or {})


def test_a_saving_switch_waits_while_metrics_are_unknown() -> None:
    """main: 6 x h100x2 -> 3 x l4x1 with 1 x h100x2 kept (five serving pods released in one applied
    decision) while its own reasons said "scale-down disabled"."""
    spec, hist, w = _saving_switch()
    d = decide(spec, w, _light(None, {"requestsWaiting": "ignored: NaN"}), hist, NOW)
    assert (d.action, d.to_replicas, d.variant, d.replicas_by_variant) == ("NoChange", 6, "h100x2", {"h100x2": 6})
    assert codes(d) == ["CapacityPlan", "MetricsUnknown", "VariantSwitchHeld"]
    assert d.reasons[-1].message.endswith("the switch waits: signals unknown")
    assert d.history.variant_candidate == "l4x1" and d.history.variant_candidate_since == NOW - 3600


def test_a_saving_switch_waits_out_the_panic_hold_and_the_scale_down_window() -> None:
    """main: the switch released five of six pods under the panic hold, and inside the window."""
    spec, hist, w = _saving_switch()
    d = decide(spec, w, _light(), hist.with_(panic_until=NOW + 60), NOW)
    assert (d.action, d.replicas_by_variant) == ("NoChange", {"h100x2": 6})
    assert codes(d) == ["CapacityPlan", "PanicMode", "VariantSwitchHeld"]
    window = hist.with_(recommendations=((NOW - 200, 6), (NOW - 15, 6)))
    d = decide(spec, w, _light(), window, NOW)
    assert (d.action, d.replicas_by_variant) == ("NoChange", {"h100x2": 6})
    assert codes(d) == ["CapacityPlan", "ScaleDownStabilized", "VariantSwitchHeld"]
    assert d.reasons[-1].message.endswith("the switch waits: the scale-down to 1 is held at 6")


def test_what_never_ends_holds_no_saving_switch() -> None:
    """Review of the fix: replicas.min holds the plan's count at the floor for ever, and in
    Recommend scaleDown.maxStep holds it one below today's for ever; neither is a reason to wait
    (the first version of the hold never switched in either). The switch releases old pods only as
    the new ones carry the load."""
    spec, hist, w = _saving_switch()
    floor = parse_spec({**spec.model_dump(by_alias=True, exclude_none=True), "replicas": {"min": 2, "max": 16}})
    # At replicas.min 2 the window holds what the operator records there: 2 (the second version of
    # the hold read that as a scale-down held, and waited on the step limit behind it).
    at_floor = hist.with_(recommendations=((NOW - 400, 2), (NOW - 200, 2), (NOW - 15, 2)))
    for s_, h_, why in ((floor, at_floor, "replicas.min 2"), (spec, hist, "scaleDown.maxStep 1")):
        d = decide(s_, w, _light(), h_, NOW)
        assert d.variant == "l4x1" and d.replicas_by_variant == {"h100x2": 1, "l4x1": 3}, why
        assert "VariantSwitchHeld" not in codes(d), why
    recommend = parse_spec({**spec.model_dump(by_alias=True, exclude_none=True),
                            "scaling": {**spec.scaling.model_dump(by_alias=True, exclude_none=True), "mode": "Recommend"}})
    d = decide(recommend, w, _light(), hist, NOW)
    assert (d.variant, d.apply, codes(d)[-1]) == ("l4x1", False, "RecommendOnly")


def _read(waiting: str | None, pending: str | None, fresh_s: float = 5) -> Signals:
    spec = parse_spec(spec_dict(replicas={"min": 0, "max": 8}, scaling={
        "interval": "15s", "scaleToZero": {"enabled": True, "demand": {"inferencePool": "chat"}}}))
    key = ("ns", "llm")

    def one(v: str) -> list[Any]:
        return [to_sample({"metric": {"namespace": "ns", "llmd": "llm"}, "value": [NOW, v]})]

    results: dict[str, Any] = {"freshness": {key: one(str(NOW - fresh_s))}, "requestRate": {key: one("2.0")},
                               "requestsRunning": {key: one("4")}}
    if waiting is not None:
        results["requestsWaiting"] = {key: one(waiting)}
    if pending is not None:
        results["gatewayPending"] = {key: one(pending)}
    return build_signals(spec, key, results, NOW, 30.0)


def test_an_unusable_vllm_queue_stays_unknown_beside_the_gateways() -> None:
    """main: vLLM's NaN queue became 0 + the gateway's 0, 'all signals read', and 6 -> 1."""
    s = _read("NaN", "0")
    assert s.requests_waiting is None
    assert s.unknown["requestsWaiting"] == "ignored: NaN"
    assert "gatewayDemand" not in s.unknown
    # Read, the two queues add up; with no vLLM series (no pods) the gateway's queue is the queue.
    assert _read("3", "2").requests_waiting == 5.0 and "requestsWaiting" not in _read("3", "2").unknown
    s = _read(None, "7")
    assert s.requests_waiting == 7.0 and "requestsWaiting" not in s.unknown
    # A stale vLLM queue stays unknown too: with pods serving, the gateway's count is not the queue.
    s = _read("40", "0", fresh_s=90)
    assert s.requests_waiting is None and s.unknown["requestsWaiting"].startswith("stale")


def test_stale_series_of_deleted_pods_do_not_hold_a_deployment_at_zero() -> None:
    """Behind federation (or Thanos, Mimir) the last samples of pods deleted at the scale to zero
    linger for the lookback, up to five minutes, with their old timestamps: vLLM's queue read as
    stale, the gateway's 7 waiting were not added to it, and the deployment stayed at zero while
    they waited. With no pod left, the gateway's queue is the whole demand; with one draining, its
    stale series keep the queue unknown, as before."""
    spec = parse_spec(spec_dict(replicas={"min": 0, "max": 8}, scaling={
        "interval": "15s", "scaleToZero": {"enabled": True, "demand": {"inferencePool": "chat"}}}))
    s = _read("40", "7", fresh_s=240)
    assert s.requests_waiting is None and s.unknown["requestsWaiting"].startswith("stale")
    assert s.gateway_pending == 7.0
    d = decide(spec, Workload("h100x1", 0, 0), s, History(observing_since=0.0), NOW)
    assert (d.action, d.to_replicas, codes(d)[-1]) == ("ScaleUp", 1, "ScaleFromZero")
    held = decide(spec, Workload("h100x1", 0, 0, terminating=1), s, History(observing_since=0.0), NOW)
    assert (held.action, held.to_replicas) == ("NoChange", 0)


def test_a_plan_of_millions_costs_a_few_capacity_lookups(monkeypatch: Any) -> None:
    """A finite but absurd rate (a counter glitch, a hand-edited rate sample) planned 66 million
    replicas and the tolerance band stepped down from there one replica at a time (main: 12 s for
    one decision at 1e9 req/s, over a minute at 1e12)."""
    spec = parse_spec(spec_dict())
    calls = 0
    real = CapacityCurve.at

    def counted(self: CapacityCurve, replicas: int, correction: float) -> Any:
        nonlocal calls
        calls += 1
        return real(self, replicas, correction)

    monkeypatch.setattr(CapacityCurve, "at", counted)
    s = Signals(ttft_quantile=0.2, itl_quantile=0.03, request_rate=1e9, prompt_tokens_rate=1e12,
                generation_tokens_rate=2e11, requests_waiting=0.0, requests_running=5.0, sampled_at=NOW)
    d = decide(spec, Workload("h100x1", 2, 2), s, History(), NOW)
    assert d.estimate.planned_replicas is not None and d.estimate.planned_replicas > 10**7
    assert (d.action, d.to_replicas) == ("ScaleUp", 6)  # scaleUp.maxStep 4
    assert calls < 200


def test_a_malformed_history_field_is_dropped_alone() -> None:
    """main: plannedMix as an object raised KeyError out of the parse (every tick failed); the
    string "12" was read as the mix (1, 2), and ["15", "95"] as two rate samples."""
    h, dropped = History.parse({"capacityCorrection": 0.7, "plannedMix": {"1": 1000, "2": 200}})
    assert (h.capacity_correction, h.planned_mix, dropped) == (0.7, None, ("plannedMix",))
    h, dropped = History.parse({"capacityCorrection": 0.7, "plannedMix": "12", "rateSamples": ["15", "95"]})
    assert (h.capacity_correction, h.planned_mix, h.rate_samples) == (0.7, None, ())
    assert set(dropped) == {"plannedMix", "rateSamples"}
    h, dropped = History.parse({"capacityCorrection": 0.7, "lastScaleAt": 10**400})
    assert (h.capacity_correction, h.last_scale_at, dropped) == (0.7, None, ("lastScaleAt",))


def test_a_retiring_shape_without_a_price_leaves_no_room_under_the_cost_ceiling() -> None:
    """Its variant and price removed from the spec while 3 of its pods serve: main counted them as
    free and started 3 H100 pods (25.00/h at the A100's real price against a 16.00/h ceiling)."""
    spec = parse_spec(spec_dict(variants=[H100], replicas={"min": 1, "max": 8},
                                cost={"maxHourlyCost": "16.00", "prices": {"nvidia-h100": "4.00"}}))
    w = Workload("h100x1", 1, 1, pods={"h100x1": PodCounts(ready=1), "a100x1": PodCounts(ready=3)},
                 desired={"h100x1": 1, "a100x1": 3}, shapes={"a100x1": ("nvidia-a100", 1), "h100x1": ("nvidia-h100", 1)})
    s = Signals(ttft_quantile=0.2, itl_quantile=0.03, request_rate=60.0, prompt_tokens_rate=60000.0,
                generation_tokens_rate=12000.0, requests_waiting=0.0, requests_running=20.0, sampled_at=NOW)
    d = decide(spec, w, s, History(observing_since=0.0), NOW)
    assert d.replicas_by_variant == {"h100x1": 1, "a100x1": 3}
    assert codes(d) == ["CapacityPlan", "VariantSwitch", "WaitingForRoom"]
    assert d.reasons[-1].message.endswith("a100x1 has no price in cost.prices: its pods count as all of maxHourlyCost")


def test_recommendations_dated_after_now_hold_no_scale_up() -> None:
    """The clock stepped back five minutes: main kept 2 replicas through a 4x TTFT breach, the
    'future' recommendations inside the scale-up window until the clock caught up."""
    spec = parse_spec(spec_dict(scaling={"interval": "15s", "scaleUp": {"stabilizationWindow": "30s", "maxStep": 4}}))
    s = Signals(ttft_quantile=2.0, itl_quantile=0.03, ttft_attainment=0.5, request_rate=60.0, prompt_tokens_rate=60000.0,
                generation_tokens_rate=12000.0, requests_waiting=30.0, requests_running=40.0, sampled_at=0.0)
    recs = tuple((t, 2) for t in (9_700.0, 9_715.0, 9_730.0))
    d = decide(spec, Workload("h100x1", 2, 2), s, History(observing_since=0.0, recommendations=recs), 9_445.0)
    d = decide(spec, Workload("h100x1", 2, 2), s, d.history, 9_480.0)
    assert (d.action, d.to_replicas) == ("ScaleUp", 5)
    assert "ScaleUpStabilized" not in codes(d)
