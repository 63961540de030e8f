"""From recorded Prometheus responses (taken from the test bed) to typed Signals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llmscale.api import parse_spec
from llmscale.metrics.snapshot import build_signals, index_by_deployment
from tests.conftest import spec_dict

RECORDED = json.loads((Path(__file__).parent / "recorded/batch-llama-8b.json").read_text())
KEY = ("default", "llama-8b")


def _results(raw: dict) -> dict:
    return {k: index_by_deployment(v) for k, v in raw.items() if isinstance(v, list)}


def test_recorded_batch_gives_every_signal() -> None:
    spec = parse_spec(spec_dict(slo={"ttft": {"target": "250ms"}, "interTokenLatency": {"target": "75ms"}}))
    s = build_signals(spec, KEY, _results(RECORDED), RECORDED["_recorded_at"], 60.0)
    assert not s.unknown, s.unknown
    for v in (s.ttft_quantile, s.itl_quantile, s.request_rate, s.requests_running, s.kv_cache_usage, s.gpu_utilization):
        assert v is not None and v >= 0
    assert 0 <= s.ttft_attainment <= 1  # type: ignore[operator]
    assert s.mean_input_tokens is not None and 100 < s.mean_input_tokens < 10_000
    assert not s.warnings  # 250 ms is a bucket edge


def test_target_between_buckets_warns() -> None:
    spec = parse_spec(spec_dict(slo={"ttft": {"target": "150ms"}}))
    s = build_signals(spec, KEY, _results(RECORDED), RECORDED["_recorded_at"], 60.0)
    assert any("between histogram buckets 100ms and 250ms" in w for w in s.warnings)


@pytest.mark.parametrize("bad", ["NaN", "+Inf", "-Inf", "-3", "garbage"])
def test_bad_values_are_ignored_with_a_reason(bad: str) -> None:
    raw = copy.deepcopy(RECORDED)
    raw["requestRate"][0]["value"][1] = bad
    spec = parse_spec(spec_dict())
    s = build_signals(spec, KEY, _results(raw), RECORDED["_recorded_at"], 60.0)
    assert s.request_rate is None
    assert s.unknown["requestRate"].startswith("ignored:")


def test_stale_series_are_unknown() -> None:
    spec = parse_spec(spec_dict())
    s = build_signals(spec, KEY, _results(RECORDED), RECORDED["_recorded_at"] + 600, 60.0)
    assert s.request_rate is None and "stale" in s.unknown["requestRate"]
    assert s.ttft_quantile is None


def test_absent_series_are_unknown_not_zero() -> None:
    spec = parse_spec(spec_dict())
    s = build_signals(spec, ("default", "other"), _results(RECORDED), RECORDED["_recorded_at"], 60.0)
    assert s.request_rate is None and s.unknown["requestRate"] == "no series for this deployment"


def test_zero_traffic_is_evidence_of_idleness() -> None:
    raw = copy.deepcopy(RECORDED)
    raw["requestRate"][0]["value"][1] = "0"
    spec = parse_spec(spec_dict())
    s = build_signals(spec, KEY, _results(raw), RECORDED["_recorded_at"], 60.0)
    assert s.request_rate == 0.0 and "requestRate" not in s.unknown


def test_sampled_at_is_the_scrape_of_the_gauges_not_the_read() -> None:
    """The arrival estimate measures the queue's growth between scrapes: a read 3 s after a scrape
    and one 12 s later see the same sample, which is 0 s of growth, not 9."""
    spec = parse_spec(spec_dict())
    scraped = float(RECORDED["freshness"][0]["value"][1])
    for read_at in (scraped + 3, scraped + 12):
        assert build_signals(spec, KEY, _results(RECORDED), read_at, 60.0).sampled_at == scraped
    raw = copy.deepcopy(RECORDED)
    raw["freshness"] = []  # no timestamp: the read's time stands in
    assert build_signals(spec, KEY, _results(raw), scraped + 3, 60.0).sampled_at == scraped + 3


def test_a_sample_keeps_its_bucket_edge_pod_and_value_or_why_not() -> None:
    """The batch answer is kept as Sample tuples (a thousand deployments' histogram was 15.7 MiB
    of decoded JSON): what the signals read survives, garbage becomes a reason, and a bucket edge
    is one string for every deployment."""
    from llmscale.metrics.snapshot import Sample, to_sample

    a = to_sample({"metric": {"namespace": "n", "llmd": "a", "le": "".join(["0.", "25"])}, "value": [1.0, "3"]})
    b = to_sample({"metric": {"namespace": "n", "llmd": "b", "le": "".join(["0.2", "5"])}, "value": [1.0, "NaN"]})
    assert a == Sample("0.25", None, 3.0, None) and b == Sample("0.25", None, None, "NaN")
    assert a.le is b.le  # interned
    assert to_sample({"metric": {"pod": "p-1"}, "value": [1.0, "-2"]}) == Sample(None, "p-1", None, "negative value -2")
    assert to_sample({"metric": {}, "value": "x"}) == Sample(None, None, None, "malformed sample")


def _with_itl(total: str, count: str) -> dict:
    raw = copy.deepcopy(RECORDED)
    for name, value in (("itlSum", total), ("itlCount", count)):
        sample = copy.deepcopy(raw["requestRate"][0])
        sample["value"][1] = value
        raw[name] = [sample]
    return raw


@pytest.mark.parametrize(("total", "count", "mean", "decoding", "unknown"), [
    ("12.5", "1000", 0.0125, 12.5, {}),  # 12.5 sequences decoding on average, 12.5 ms a token
    ("0", "0", None, 0.0, {}),  # nothing decoded in the window: no mean, and none decoding
    ("NaN", "1000", None, None, {"itlSum": "ignored: NaN"}),
    ("12.5", "garbage", None, None, {"itlCount": "ignored: malformed sample"}),
])
def test_the_inter_token_sum_and_count_give_its_mean_and_the_sequences_decoding(
        total: str, count: str, mean: float | None, decoding: float | None, unknown: dict) -> None:
    spec = parse_spec(spec_dict())
    s = build_signals(spec, KEY, _results(_with_itl(total, count)), RECORDED["_recorded_at"], 60.0)
    assert (s.itl_mean, s.sequences_decoding) == (pytest.approx(mean) if mean else None, decoding)
    assert {k: v for k, v in s.unknown.items() if k.startswith("itl")} == unknown


def test_a_vllm_without_the_inter_token_histogram_loses_only_the_engine_speed() -> None:
    spec = parse_spec(spec_dict())
    s = build_signals(spec, KEY, _results(RECORDED), RECORDED["_recorded_at"], 60.0)
    assert s.itl_mean is None and s.sequences_decoding is None and not s.unknown
