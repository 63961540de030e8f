"""Invariants of the decision core, for any inputs (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmscale.api import parse_spec
from llmscale.policy import History, Signals, Workload, decide
from llmscale.policy.ceilings import ceiling_replicas
from tests.conftest import spec_dict

maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
finite = st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False)

signals = st.builds(
    Signals,
    ttft_quantile=maybe(st.floats(0, 100)),
    itl_quantile=maybe(st.floats(0, 10)),
    request_rate=maybe(finite),
    prompt_tokens_rate=maybe(st.floats(0, 1e6)),
    generation_tokens_rate=maybe(st.floats(0, 1e5)),
    requests_waiting=maybe(st.floats(0, 1e4)),
    requests_running=maybe(st.floats(0, 1e4)),
)

specs = st.builds(
    lambda mn, mx, gpus, max_gpus, max_cost, price, up, down, mode, stz: spec_dict(
        replicas={"min": mn, "max": max(mn, mx, 1)},
        variants=[{"name": "v", "accelerator": "nvidia-h100", "gpusPerReplica": gpus}],
        cost={"maxGPUs": max(max_gpus, gpus), "maxHourlyCost": f"{max_cost:.2f}", "prices": {"nvidia-h100": f"{price:.2f}"}},
        scaling={"mode": mode, "scaleUp": {"maxStep": up}, "scaleDown": {"maxStep": down, "stabilizationWindow": "0s"},
                 "scaleToZero": {"enabled": stz, "demand": {"inferencePool": "chat"}}},
    ),
    st.integers(0, 4), st.integers(1, 20), st.sampled_from([1, 2, 4, 8]), st.integers(1, 64),
    st.floats(0, 200), st.floats(0.5, 10), st.integers(1, 10), st.integers(1, 10),
    st.sampled_from(["Auto", "Recommend", "Paused"]), st.booleans(),
)

workloads = st.builds(lambda r, ready, starting: Workload("v", r, min(r, ready), starting=starting),
                      st.integers(0, 30), st.integers(0, 30), st.integers(0, 5))

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _limits(raw: dict) -> tuple[int, int]:
    spec = parse_spec(raw)
    return ceiling_replicas(spec, spec.variants[0])[0], spec.variants[0].gpus_per_replica


@SETTINGS
@given(specs, workloads, signals)
def test_never_above_any_ceiling(raw: dict, w: Workload, s: Signals) -> None:
    spec = parse_spec(raw)
    d = decide(spec, w, s, History(), 1000.0)
    if d.apply and d.to_replicas != w.replicas:
        limit, gpus = _limits(raw)
        assert d.to_replicas <= limit
        assert d.to_replicas <= spec.replicas.max
        assert d.to_replicas * gpus <= spec.cost.max_gpus  # type: ignore[operator]
        price = float(spec.cost.prices["nvidia-h100"])
        assert d.to_replicas * gpus * price <= float(spec.cost.max_hourly_cost) + 1e-6  # type: ignore[arg-type]


@SETTINGS
@given(specs, workloads, signals)
def test_never_below_min_unless_scaled_to_zero_or_capped(raw: dict, w: Workload, s: Signals) -> None:
    spec = parse_spec(raw)
    d = decide(spec, w, s, History(), 1000.0)
    if d.apply and d.to_replicas != w.replicas and spec.scaling.mode.value == "Auto":
        limit, _ = _limits(raw)
        assert d.to_replicas >= min(spec.replicas.min, limit) or d.to_replicas == 0 and spec.scaling.scale_to_zero.enabled


@SETTINGS
@given(specs, workloads, signals, st.sampled_from(["requestRate", "requestsWaiting"]))
def test_no_scale_down_on_unknown_metrics(raw: dict, w: Workload, s: Signals, missing: str) -> None:
    spec = parse_spec(raw)
    limit, _ = _limits(raw)
    s = Signals(**{**s.__dict__, "unknown": {missing: "no series"},
                   "request_rate": None if missing == "requestRate" else s.request_rate})
    d = decide(spec, w, s, History(), 1000.0)
    # Only a ceiling (which always wins) may lower the count when data is missing.
    if d.to_replicas < w.replicas:
        assert d.to_replicas == limit or spec.scaling.mode.value == "Paused", d.reasons


@SETTINGS
@given(specs, workloads)
def test_unreachable_prometheus_holds(raw: dict, w: Workload) -> None:
    spec = parse_spec(raw)
    d = decide(spec, w, Signals.unreachable("down"), History(), 1000.0)
    if spec.scaling.mode.value != "Paused":
        limit, _ = ceiling_replicas(spec, spec.variants[0])
        if w.replicas > limit:  # a ceiling lowered under what runs is known without metrics: enforced
            assert d.to_replicas == limit and d.replicas_by_variant == {"v": limit}
            assert d.apply == (spec.scaling.mode.value == "Auto")  # Recommend only says so
        else:
            assert d.to_replicas == w.replicas and not d.apply


@SETTINGS
@given(specs, st.integers(1, 20), finite, st.floats(1.0, 10.0))
def test_more_load_never_means_fewer_replicas(raw: dict, current: int, rate: float, factor: float) -> None:
    spec = parse_spec(raw)
    w = Workload("v", current, current)

    def sig(r: float) -> Signals:
        return Signals(ttft_quantile=0.1, itl_quantile=0.01, request_rate=r, prompt_tokens_rate=r * 500,
                       generation_tokens_rate=r * 100, requests_waiting=0.0, requests_running=min(r, 100.0))

    lo = decide(spec, w, sig(rate), History(), 1000.0)
    hi = decide(spec, w, sig(rate * factor), History(), 1000.0)
    assert hi.to_replicas >= lo.to_replicas, (lo.reasons, hi.reasons)


@SETTINGS
@given(specs, workloads, signals)
def test_deterministic(raw: dict, w: Workload, s: Signals) -> None:
    spec = parse_spec(raw)
    a = decide(spec, w, s, History(), 1000.0)
    b = decide(spec, w, s, History(), 1000.0)
    assert a == b
    assert all(math.isfinite(x) for x in (a.to_replicas, a.from_replicas))
