"""The performance model against published vLLM measurements.

Tolerance, stated: over the 39 finite-rate points of the vLLM v0.6.0 blog (Llama-3-8B/70B on
H100/A100, the benchmark's own protocol of 500 Poisson requests), the modelled mean TPOT is
within 20% of the published value at the median and within 40% at the 80th percentile; where
the chart shows TTFT near zero (< 100 ms), the model's median TTFT is under 150 ms for at least
85% of the points (it misses A100 decode-heavy at 16 req/s for 8B and 4 req/s for 70B, where
the model reaches the knee earlier than the measurement). Chart
values themselves are read by eye (+-10%). Where it is rough: the knee (points just past
saturation) and prefill-heavy mixes, where the model misses by up to ~80%.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from llmscale.perf import Engine, Request, server_profile

POINTS = json.loads((Path(__file__).parent / "calibration_points.json").read_text())["points"]


def _run(p: dict) -> tuple[float, float]:
    gpu = "nvidia-h100" if "H100" in p["gpu"] else "nvidia-a100"
    e = Engine(server_profile(p["model"], gpu, p["tp"]))
    rng = random.Random(1)
    t = 0.0
    for i in range(p["num_prompts"]):
        t += rng.expovariate(p["request_rate_qps"])
        e.advance(t)
        e.submit(Request(i, t, p["input_tokens_mean"], p["output_tokens_mean"]))
    e.advance(1e6)
    done = e.drain_finished()
    return statistics.median(f.ttft_s for f in done) * 1000, statistics.mean(f.itl_s for f in done) * 1000


def test_tpot_within_the_stated_tolerance() -> None:
    errors = []
    for p in POINTS:
        _, tpot = _run(p)
        errors.append(abs(tpot - p["tpot_ms"]) / p["tpot_ms"])
    errors.sort()
    median = statistics.median(errors)
    p80 = errors[int(0.8 * len(errors))]
    assert len(errors) >= 30
    assert median <= 0.20, f"median TPOT error {median:.0%}"
    assert p80 <= 0.40, f"80th percentile TPOT error {p80:.0%}"


def test_light_load_ttft_is_near_zero() -> None:
    light = [p for p in POINTS if p["ttft_ms"] is None]
    near_zero = [p for p in light if _run(p)[0] < 150]
    assert len(light) >= 20
    assert len(near_zero) / len(light) >= 0.85, [(p["model"], p["gpu"], p["dataset"], p["request_rate_qps"]) for p in light if p not in near_zero]


def test_saturation_makes_ttft_explode() -> None:
    """Past the knee TTFT grows by seconds (queueing), as every source shows."""
    p = next(p for p in POINTS if p["model"] == "Llama-3-70B" and "A100" in p["gpu"] and p["dataset"] == "decode_heavy"
             and p["request_rate_qps"] == 32)
    ttft, _ = _run(p)
    assert ttft > 5000
