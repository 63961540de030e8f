"""The capacity step: chance-aware misses, online correction, pooled fleet sizing."""

from __future__ import annotations

import math

import pytest

from llmscale.api import parse_spec
from llmscale.perf.capacity import at_fleet_size
from llmscale.perf.queueing import modelled_curve
from llmscale.policy import Signals
from llmscale.policy.capacity import (
    capacity_curve,
    max_model_len,
    misses_beyond_chance,
    refine_correction,
    refused_start,
    replica_profile,
    replicas_for,
    variant_capacity,
)
from tests.conftest import spec_dict


@pytest.mark.parametrize(("attainment", "share", "observed", "beyond"), [
    (0.995, 0.99, 200.0, False),   # within the SLO
    (0.985, 0.99, 200.0, False),   # 3 misses where 2 are allowed: chance
    (0.95, 0.99, 200.0, True),     # 10 misses where 2 are allowed
    (0.985, 0.99, 20000.0, True),  # the same share over many requests is real
    (0.985, 0.99, None, True),     # no count: any excess counts
    (0.90, 0.95, 10.0, False),     # one miss in ten requests at p95
])
def test_misses_beyond_chance(attainment: float, share: float, observed: float | None, beyond: bool) -> None:
    assert misses_beyond_chance(attainment, share, observed) is beyond


@pytest.mark.parametrize(("name", "kwargs", "expect"), [
    ("misses at a load the estimate claimed: trim in proportion", dict(attainment=0.90, per_ready_rate=5.0), 0.82),
    ("deep misses trim by half at most", dict(attainment=0.30, per_ready_rate=5.0), 0.5),
    ("misses above the estimate are the plan's lateness", dict(attainment=0.90, per_ready_rate=15.0), 1.0),
    ("backlog from before the Ready set grew teaches nothing", dict(attainment=0.5, per_ready_rate=5.0, settled=False), 1.0),
    ("met at light load proves nothing", dict(attainment=1.0, breach_ratio=0.3, per_ready_rate=2.0), 1.0),
    ("met at load grows by 2%", dict(attainment=1.0, breach_ratio=0.5, per_ready_rate=8.0), 1.02),
    ("met well above the estimate: raised to what was carried", dict(attainment=1.0, breach_ratio=0.5, per_ready_rate=14.0), 1.4),
    ("near the target is no evidence either way", dict(attainment=1.0, breach_ratio=0.9, per_ready_rate=14.0), 1.0),
])
def test_refine_correction(name: str, kwargs: dict, expect: float) -> None:
    args = dict(correction=1.0, attainment=1.0, target_share=0.99, breach_ratio=1.2, settled=True, seed_capacity=10.0,
                observed=None)
    args.update(kwargs)
    assert refine_correction(**args) == pytest.approx(expect)  # type: ignore[arg-type]


def test_replicas_for_is_the_fewest_pooled_replicas() -> None:
    spec = parse_spec(spec_dict(slo={"ttft": {"target": "10s", "percentile": 99}, "interTokenLatency": {"target": "100ms"}},
                                routing="LoadAware"))
    v, mix, u = spec.variants[0], (12000.0, 350.0), 0.85
    for demand in (0.5, 3.0, 9.0):
        n, cap = replicas_for(spec, v, Signals(), 1.0, mix, demand, u)
        assert n * cap.per_replica * u >= demand
        if n > 1:
            fewer = variant_capacity(spec, v, Signals(), 1.0, mix, n - 1)
            assert (n - 1) * fewer.per_replica * u < demand
        alone = variant_capacity(spec, v, Signals(), 1.0, mix, 1)
        assert n <= -(-demand // (alone.per_replica * u))  # never more than lone replicas would need
    assert replicas_for(spec, v, Signals(), 1.0, mix, 0.0, u)[0] == 0


def test_the_capacity_curve_read_at_a_fleet_size_is_the_model_at_that_size() -> None:
    # A decision looks the mix up once and reads the curve at every fleet size the plan asks about.
    spec = parse_spec(spec_dict(engineArgs=["--max-model-len=16384"], routing="LoadAware"))
    v, mix = spec.variants[0], (2500.0, 180.0)
    curve = capacity_curve(spec, v, Signals(), mix)
    itl, ttft = spec.slo.itl_target(), spec.slo.ttft
    assert itl is not None and ttft is not None
    for n in (1, 2, 3, 4, 7, 16, 40):
        model = at_fleet_size(modelled_curve(replica_profile(spec, v), *mix, itl.seconds, ttft.seconds, itl.percentile,
                                             ttft.percentile, max_prompt=16384), n)
        at = curve.at(n, 0.8)
        assert (at.per_replica, at.limited_by) == (model.requests_per_s * 0.8, model.limited_by)
        assert at == variant_capacity(spec, v, Signals(), 0.8, mix, n)
    # a shape vLLM would refuse sustains nothing at any size, unless its pods have started
    l4 = parse_spec(spec_dict(variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}]))
    refused = capacity_curve(l4, l4.variants[0], Signals(), mix)
    assert refused.refused and all(refused.at(n, 1.0).per_replica == 0 for n in (1, 4, 16))
    assert refused.at(4, 1.0).limited_by.startswith("infeasible: vLLM would not start")
    assert capacity_curve(l4, l4.variants[0], Signals(), (800.0, 150.0), started=True).at(4, 1.0).per_replica > 0


@pytest.mark.parametrize("args", [["--gpu-memory-utilization=0.5"], ["--max-model-len=2048"]])
def test_the_cached_capacity_follows_every_engine_arg_that_changes_it(args: list[str]) -> None:
    # The curve is cached by what it depends on: a spec that differs only in an engine arg that sizes
    # the KV cache or bounds the prompts gets its own answer, not the last one asked for.
    mix = (1500.0, 600.0)
    plain = parse_spec(spec_dict())
    changed = parse_spec(spec_dict(engineArgs=args))
    a = capacity_curve(plain, plain.variants[0], Signals(), mix).at(4, 1.0)
    b = capacity_curve(changed, changed.variants[0], Signals(), mix).at(4, 1.0)
    assert a.per_replica != b.per_replica


@pytest.mark.parametrize("mix", [(0.5, 0.2), (1019.0, 30.0), (1033.7, 29.1), (12345.6, 800.0), (3.0e5, 7.0)])
def test_the_capacity_cached_by_mix_cell_is_the_model_at_the_mix_itself(mix: tuple[float, float]) -> None:
    # The cache is keyed by the 8 % cell the model snaps a mix to: the answer for any mix in the
    # cell must be the model's for that exact mix (snapping a cell gives the cell).
    from llmscale.perf.capacity import _snap

    for x in mix:
        assert _snap(_snap(x)) == _snap(x)
    spec = parse_spec(spec_dict(engineArgs=["--max-model-len=65536"]))
    v = spec.variants[0]
    itl, ttft = spec.slo.itl_target(), spec.slo.ttft
    assert itl is not None and ttft is not None
    curve = capacity_curve(spec, v, Signals(), mix)
    assert curve.anchors == modelled_curve(replica_profile(spec, v), *mix, itl.seconds, ttft.seconds, itl.percentile,
                                           ttft.percentile, max_prompt=65536)
    assert curve.unloaded_itl_s == replica_profile(spec, v).unloaded_itl(mix[0] + mix[1] / 2)


@pytest.mark.parametrize(("args", "limit", "refused"), [
    ([], None, True),  # Llama-3.1's own 131,072 tokens on an L4
    (["--max-model-len=8192"], 8192, False),
    (["--max-model-len", "8192"], 8192, False),
    (["--max_model_len=8192"], 8192, False),  # vLLM's parser takes underscores
    (["--max-model-len=8k"], 8000, False),
    (["--max-model-len=8K"], 8192, False),
    (["--max-model-len=65536", "--max-model-len=8192"], 8192, False),  # the last one wins
    (["--max-model-len=32768"], 32768, True),
    (["--max-model-len=32768", "--gpu-memory-utilization=0.98"], 32768, False),
    (["--max-model-len=32768", "--kv-cache-dtype=fp8"], 32768, False),  # not modelled: nothing refused
    (["--max-model-len=auto"], None, False),  # vLLM fits the length to memory
    (["--max-model-len=-1"], None, False),
    (["--max-model-len=lots"], None, False),  # unreadable: unknown, not absent
    (["--max-model-len=1.5K"], None, False),  # vLLM takes decimals with decimal suffixes only
    (["--max-model-len=1e400k"], None, False),
    (["--max_model-len=32768"], 32768, True),  # every _ in a flag is a -
    (["--max-model-len=32768", "--quantization=awq"], 32768, False),  # the memory model assumes bf16
    (["--max-model-len=32768", "--kv-cache-dtype=auto"], 32768, True),
])
def test_engine_args_are_read_as_vllm_reads_them(args: list[str], limit: int | None, refused: bool) -> None:
    spec = parse_spec(spec_dict(engineArgs=args, variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}]))
    assert max_model_len(spec) == limit
    assert (refused_start(spec, spec.variants[0]) is not None) is refused


def test_a_quantized_checkpoint_is_not_refused_by_the_bf16_memory_model() -> None:
    spec = parse_spec(spec_dict(model="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", engineArgs=["--max-model-len=32768"],
                                variants=[{"name": "l4x1", "accelerator": "nvidia-l4"}]))
    assert refused_start(spec, spec.variants[0]) is None


@pytest.mark.parametrize(("args", "feasible", "refused"), [
    ([], False, True),  # 70B weights (141 GB) leave no cache in 90 % of 2 x 80 GB: vLLM exits
    (["--gpu-memory-utilization=0.98"], True, False),  # ~11.8 GB of cache: a 16,384-token sequence fits
    (["--gpu_memory_utilization", "0.98"], True, False),
    (["--gpu-memory-utilization=1.5"], False, False),  # not a share: planned at vLLM's default, nothing refused
    (["--gpu-memory-utilization=most"], False, False),
])
def test_the_memory_share_in_the_engine_args_sizes_the_kv_cache_and_the_fit(args: list[str], feasible: bool,
                                                                             refused: bool) -> None:
    """A 70B model on 2 x H100 started with --gpu-memory-utilization=0.98 serves; the capacity
    model checked the fit at vLLM's default 0.9 and called it infeasible."""
    spec = parse_spec(spec_dict(model="meta-llama/Llama-3.1-70B-Instruct", engineArgs=["--max-model-len=16384", *args],
                                slo={"ttft": {"target": "2s", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
                                variants=[{"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2}]))
    v = spec.variants[0]
    kv = replica_profile(spec, v).kv_capacity_tokens
    assert (kv > 16384) if feasible else kv == 0, kv
    cap = variant_capacity(spec, v, Signals(), 1.0, (2000.0, 200.0), 1, started=True)
    assert cap.feasible is feasible, cap
    assert (refused_start(spec, v) is not None) is refused


@pytest.mark.parametrize("routing", ["Service", "LoadAware"])
def test_only_a_load_aware_gateway_pools_the_fleet(routing: str) -> None:
    """Behind a Service every replica gets an equal share and is a queue of its own: per-replica
    capacity is a lone replica's at every fleet size, and the plan needs demand / that. Behind a
    load-aware gateway the fleet pools its capacity and fewer replicas carry the same load."""
    spec = parse_spec(spec_dict(routing=routing))
    v, mix, u = spec.variants[0], (1000.0, 200.0), 0.85
    curve = capacity_curve(spec, v, Signals(), mix)
    alone = curve.at(1, 1.0).per_replica
    per = [curve.at(n, 1.0).per_replica for n in (1, 2, 4, 8, 16)]
    n, cap = replicas_for(spec, v, Signals(), 1.0, mix, 150.0, u)
    if routing == "Service":
        assert per == [alone] * 5
        assert (n, cap.per_replica) == (math.ceil(150.0 / (alone * u)), alone)
    else:
        assert per == sorted(per) and per[-1] > 1.1 * alone
        assert n < math.ceil(150.0 / (alone * u)) and cap.per_replica == curve.at(n, 1.0).per_replica
