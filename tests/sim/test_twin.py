"""The twin: deterministic, its accounting checked by hand, and the oracle is never beaten."""

from __future__ import annotations

import pytest

from llmscale.api import parse_spec
from llmscale.api.models import LLMDeploymentSpec
from llmscale.perf import server_profile
from llmscale.sim.policies import make_policy
from llmscale.sim.traffic import Arrival, Trace, scenario
from llmscale.sim.twin import Policy, RunResult, Target, Twin, View
from tests.conftest import spec_dict

SPEC_OVERRIDES = dict(
    replicas={"min": 1, "max": 16},
    variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"}],
    slo={"ttft": {"target": "1s", "percentile": 99}, "interTokenLatency": {"target": "100ms"}},
    cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00"}},
)
SPEC = parse_spec(spec_dict(**SPEC_OVERRIDES))


class Fixed(Policy):
    name = "fixed"

    def __init__(self, n: int):
        self.n = n

    def start(self, spec, trace, cold_start):  # type: ignore[no-untyped-def]
        return Target(self.n, spec.variants[0].name)

    def decide(self, view: View) -> Target:
        return Target(self.n, view.spec.variants[0].name)


def test_one_request_one_replica_by_hand() -> None:
    trace = Trace("one", [Arrival(0.0, 100, 10), Arrival(100.0, 100, 10)])
    r = Twin(SPEC, trace, Fixed(1)).run()
    prof = server_profile(SPEC.model, "nvidia-h100", 1)
    assert r.requests == 2 and r.ttft_attainment == 1.0
    assert r.ttft_p50_s == pytest.approx(prof.step_seconds(0, 0, 100, 50))
    # One replica, pre-warmed, for the length of the trace (plus the last request's few ms).
    assert r.gpu_hours == pytest.approx(100.0 / 3600, rel=0.01)
    assert r.cost == pytest.approx(4.0 * r.gpu_hours)
    assert r.scale_actions == 0


def test_a_request_past_max_model_len_is_never_served() -> None:
    """The twin serves what vLLM would: with --max-model-len=4096 a 5,000-token prompt is refused
    (a miss for every policy alike), the others are served."""
    spec = parse_spec(spec_dict(
        engineArgs=["--max-model-len=4096"],
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"}],
        slo={"ttft": {"target": "1s", "percentile": 99}, "interTokenLatency": {"target": "100ms"}},
    ))
    trace = Trace("long", [Arrival(0.0, 100, 10), Arrival(10.0, 5000, 10), Arrival(20.0, 4000, 96)])
    r = Twin(spec, trace, Fixed(1)).run()
    assert (r.requests, r.rejected) == (3, 1) and r.ttft_attainment == pytest.approx(2 / 3)


def test_gpu_hours_count_every_replica() -> None:
    trace = Trace("two", [Arrival(0.0, 100, 10), Arrival(360.0, 100, 10)])
    r = Twin(SPEC, trace, Fixed(3)).run()
    assert r.gpu_hours == pytest.approx(3 * 360.0 / 3600, rel=0.01)


def test_the_settled_view_counts_only_what_comes_after_the_first_ten_minutes() -> None:
    """Requests arriving from minute ten on and the GPU time held from then: 3 replicas over a
    900 s trace hold 0.75 GPU-h in all and 0.25 after minute ten; a request at 300 s that misses
    (a prompt past --max-model-len) counts in the whole run only, one at 700 s in both."""
    spec = parse_spec(spec_dict(
        engineArgs=["--max-model-len=4096"],
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"}],
        slo={"ttft": {"target": "1s", "percentile": 99}, "interTokenLatency": {"target": "100ms"}},
    ))
    trace = Trace("late", [Arrival(0.0, 100, 10), Arrival(300.0, 5000, 10), Arrival(650.0, 100, 10),
                           Arrival(700.0, 5000, 10), Arrival(900.0, 100, 10)])
    r = Twin(spec, trace, Fixed(3)).run()
    assert r.gpu_hours == pytest.approx(3 * 900.0 / 3600, rel=0.01)
    assert r.settled_gpu_hours == pytest.approx(3 * 300.0 / 3600, rel=0.01)
    assert r.ttft_attainment == pytest.approx(3 / 5)
    assert r.settled_ttft_attainment == pytest.approx(2 / 3)
    assert r.settled_joint_attainment == pytest.approx(2 / 3) and r.settled_requests == 3


def test_overload_misses_the_slo() -> None:
    trace = scenario("constant", rate=60, duration=120, seed=1)
    r = Twin(SPEC, trace, Fixed(1)).run()
    assert r.ttft_attainment < 0.5


def test_deterministic_for_a_seed() -> None:
    trace = scenario("burst", rate=8, duration=600, seed=3)
    a = Twin(SPEC, trace, make_policy("llmscale")).run().as_json()
    b = Twin(SPEC, trace, make_policy("llmscale")).run().as_json()
    assert a == b


def test_oracle_is_never_beaten_on_cost_at_equal_attainment() -> None:
    trace = scenario("step", rate=8, duration=900, seed=5)
    results = {p: Twin(SPEC, trace, make_policy(p)).run() for p in ("oracle", "llmscale", "hpa-gpu-util", "keda-queue", "static-peak")}
    oracle = results["oracle"]
    assert oracle.ttft_attainment >= 0.99
    for name, r in results.items():
        if name != "oracle" and r.ttft_attainment >= oracle.ttft_attainment:
            assert r.gpu_hours >= oracle.gpu_hours * 0.999, (name, r.gpu_hours, oracle.gpu_hours)


def test_ceilings_hold_in_the_twin() -> None:
    spec = parse_spec(spec_dict(
        replicas={"min": 1, "max": 16},
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "30s"}],
        cost={"maxGPUs": 3, "prices": {"nvidia-h100": "4.00"}},
    ))
    trace = scenario("constant", rate=80, duration=300, seed=1)
    r = Twin(spec, trace, make_policy("llmscale")).run()
    assert max(row["gpus"] for row in r.timeline) <= 3
    assert r.ceiling_s > 0


def test_the_twin_switches_shapes_make_before_break_inside_both_ceilings() -> None:
    """A load that ramps past what L4 pods can carry within maxGPUs: llmscale moves to H100 pods
    through the rollout (the same code as the operator), and the GPUs and money held at any
    instant, counting starting and draining pods at their own prices, stay under the ceilings."""
    spec = parse_spec(spec_dict(
        replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],  # an L4 holds 27k tokens, not 128k
        variants=[{"name": "l4x1", "accelerator": "nvidia-l4", "coldStart": "30s"},
                  {"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"}],
        slo={"ttft": {"target": "1s", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
        cost={"maxGPUs": 6, "maxHourlyCost": "10.00", "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
        scaling={"interval": "15s", "variantSwitch": {"dwell": "5m"}},
    ))
    trace = scenario("ramp", rate=20, duration=900, mean_in=200, mean_out=100, seed=3)
    r = Twin(spec, trace, make_policy("llmscale")).run()
    assert set(r.variants) == {"l4x1", "h100x1"} and r.variants["h100x1"] > 0, r.variants
    assert r.peak_gpus <= 6 and r.peak_hourly_cost is not None and r.peak_hourly_cost <= 10.0 + 1e-9, (r.peak_gpus, r.peak_hourly_cost)
    assert r.ttft_attainment > 0.9, r.ttft_attainment


def test_fixed_shape_pins_llmscale_to_one_variant_and_the_warm_fleet_takes_the_cheapest_shape() -> None:
    from llmscale.sim.twin import warm_fleet

    spec = parse_spec(spec_dict(
        replicas={"min": 1, "max": 16}, engineArgs=["--max-model-len=8192"],  # an L4 holds 27k tokens, not 128k
        variants=[{"name": "l4x1", "accelerator": "nvidia-l4", "coldStart": "30s"},
                  {"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"}],
        slo={"ttft": {"target": "1s", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
        cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
    ))
    trace = scenario("constant", rate=10, duration=300, mean_in=1000, mean_out=200, seed=2)
    assert warm_fleet(spec, trace) == ("h100x1", 1)  # one H100 (4.00/h) against many L4 pods at 0.80/h each
    light = scenario("constant", rate=0.5, duration=300, mean_in=200, mean_out=100, seed=2)
    assert warm_fleet(spec, light) == ("l4x1", 1)
    r = Twin(spec, trace, make_policy("fixed:l4x1")).run()
    assert set(r.variants) == {"l4x1"} and r.policy == "fixed:l4x1"
    with pytest.raises(ValueError, match="no variant 'a100x1'"):
        Twin(spec, trace, make_policy("fixed:a100x1")).run()


class Clock(Policy):
    """Records when it is asked to decide."""

    name = "clock"

    def __init__(self) -> None:
        self.at: list[float] = []

    def start(self, spec, trace, cold_start):  # type: ignore[no-untyped-def]
        return Target(1, spec.variants[0].name)

    def decide(self, view: View) -> Target:
        self.at.append(view.now)
        return Target(1, view.spec.variants[0].name)


@pytest.mark.parametrize(("phase", "first"), [(0.0, 15.0), (6.0, 21.0), (14.5, 29.5)])
def test_the_decision_phase_shifts_every_decision_against_the_trace(phase: float, first: float) -> None:
    trace = Trace("steady", [Arrival(float(t), 100, 10) for t in range(0, 61, 2)])
    clock = Clock()
    Twin(SPEC, trace, clock, decision_phase_s=phase).run()
    assert clock.at == [first + 15.0 * i for i in range(len(clock.at))] and clock.at[-1] <= 60.0 < clock.at[-1] + 15.0


def test_a_negative_decision_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="decision_phase_s"):
        Twin(SPEC, Trace("one", [Arrival(0.0, 100, 10)]), Fixed(1), decision_phase_s=-1.0)


def test_requests_take_the_path_spec_routing_names() -> None:
    """A Service spreads requests at random (seeded: a run repeats), so queues form by chance where a
    load-aware gateway would have evened them out: the same four replicas at the same load have a
    longer TTFT tail behind a Service, on every seed (1.05-1.20x at p99 over these four)."""
    ratios = []
    for seed in (1, 2, 3, 4):
        trace = scenario("constant", rate=30, duration=300, seed=seed)
        runs = {r: Twin(parse_spec({**spec_dict(**SPEC_OVERRIDES), "routing": r}), trace, Fixed(4)).run()
                for r in ("Service", "LoadAware")}
        ratios.append(runs["Service"].ttft_p99_s / runs["LoadAware"].ttft_p99_s)
    assert min(ratios) > 1.0 and sum(ratios) / len(ratios) > 1.1, ratios
    again = Twin(parse_spec({**spec_dict(**SPEC_OVERRIDES), "routing": "Service"}), trace, Fixed(4)).run()
    assert again.as_json() == runs["Service"].as_json()


def test_pods_slower_than_the_model_take_that_much_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench --pod-slowdown: the twin's pods run the model's step times times the factor; the
    first token of a lone request on an idle pod is one prefill step, so it scales exactly."""
    trace = Trace("one", [Arrival(0.0, 100, 10), Arrival(100.0, 100, 10)])
    prof = server_profile(SPEC.model, "nvidia-h100", 1)
    monkeypatch.setattr(Twin, "pod_slowdown", 1.5)
    r = Twin(SPEC, trace, Fixed(1)).run()
    assert r.ttft_p50_s == pytest.approx(1.5 * prof.step_seconds(0, 0, 100, 50))
    monkeypatch.setattr(Twin, "pod_slowdown", 1.0)
    assert Twin(SPEC, trace, Fixed(1)).run().ttft_p50_s == pytest.approx(prof.step_seconds(0, 0, 100, 50))


def test_the_warm_fleet_is_sized_for_the_routing_that_serves_it() -> None:
    """Behind a load-aware gateway a fleet pools its capacity: the warm fleet is the fewest replicas
    whose pooled capacity carries the first minute (long prompts: a lone replica's tail sizes a
    fleet twice too large), and behind a Service each replica carries what a lone one does."""
    from llmscale.sim.twin import warm_fleet

    def spec(routing: str) -> LLMDeploymentSpec:
        return parse_spec(spec_dict(slo={"ttft": {"target": "10s", "percentile": 99},
                                         "interTokenLatency": {"target": "100ms", "percentile": 95}},
                                    replicas={"min": 1, "max": 32}, cost={"maxGPUs": 32}, routing=routing))

    trace = scenario("constant", rate=2.5, duration=120, mean_in=18000, mean_out=300, seed=4)
    pooled, alone = warm_fleet(spec("LoadAware"), trace)[1], warm_fleet(spec("Service"), trace)[1]
    assert 1 < pooled < alone, (pooled, alone)
    # A ceiling between the two: the pooled count still (a lone replica's count above the ceiling
    # skipped the search and gave the ceiling; review).
    capped = parse_spec({**spec_dict(slo={"ttft": {"target": "10s", "percentile": 99},
                                          "interTokenLatency": {"target": "100ms", "percentile": 95}},
                                     routing="LoadAware"), "replicas": {"min": 1, "max": alone - 1},
                         "cost": {"maxGPUs": alone - 1}})
    assert warm_fleet(capped, trace)[1] == pooled


@pytest.mark.parametrize("routing", ["LoadAware", "Service"])
def test_with_h100s_run_out_l4_pods_carry_the_share_of_those_pending_behind_a_load_aware_gateway(routing: str) -> None:
    """A finite H100 pool (two GPUs) and a step to 60 req/s that needs four H100 pods: the two that
    cannot be scheduled wait, and after spillAfter L4 pods carry their share, within maxGPUs
    (counting the Pending H100 pods). Behind a load-aware gateway that recovers much of the SLO the
    H100s alone miss; behind a Service an L4 beside an H100 gets an H100's share, so L4 pods would
    lower what every pod carries, and none is added."""
    def run(spill_after: str) -> RunResult:
        spec = parse_spec(spec_dict(
            replicas={"min": 1, "max": 24}, engineArgs=["--max-model-len=8192"], routing=routing,
            variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"},
                      {"name": "l4x1", "accelerator": "nvidia-l4", "coldStart": "30s"}],
            slo={"ttft": {"target": "1s", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
            cost={"maxGPUs": 24, "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
            scaling={"interval": "15s", "variantSwitch": {"dwell": "30m", "spillAfter": spill_after}}))
        trace = scenario("step", rate=20, duration=2400, mean_in=1000, mean_out=200, seed=2)
        return Twin(spec, trace, make_policy("llmscale"), gpu_pool={"nvidia-h100": 2}).run()

    spill, never = run("60s"), run("never")
    assert set(never.variants) == {"h100x1"}
    if routing == "Service":
        assert spill.variants == never.variants and spill.ttft_attainment == never.ttft_attainment
        return
    assert spill.variants.get("l4x1", 0) > 0 and spill.peak_gpus <= 24, (spill.variants, spill.peak_gpus)
    assert spill.ttft_attainment > never.ttft_attainment + 0.3, (spill.ttft_attainment, never.ttft_attainment)
    # The L4 pods are gone once the step is over (the H100 pods left carry the load).
    assert not any(row["ready"].get("l4x1") for row in spill.timeline[-10:]), spill.timeline[-1]
