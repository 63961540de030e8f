"""Trace loading: every shared format, bad rows counted, bad files refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmscale.sim.traffic import SCENARIOS, TraceError, load_trace, scenario


def test_azure_csv(tmp_path: Path) -> None:
    f = tmp_path / "azure.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:17:03.9799600,4808,10\n"
                 "2023-11-16 18:17:04.0319600,3180,8\n"
                 "not a time,1,1\n"
                 "2023-11-16 18:17:05.0000000,-5,8\n"
                 "2023-11-16 18:17:06.5000000,100,20\n")
    t = load_trace(f)
    assert [a.input_tokens for a in t.arrivals] == [4808, 3180, 100]
    assert t.arrivals[1].t == pytest.approx(0.052)
    assert t.bad_rows == 2 and "line 4" in t.bad_examples[0]


def test_mooncake_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0]}\n'
                 '{"timestamp": 1500, "input_length": 100, "output_length": 5}\n'
                 '{"timestamp": "x"}\n')
    t = load_trace(f)
    assert [(a.t, a.input_tokens) for a in t.arrivals] == [(0.0, 6758), (1.5, 100)]
    assert t.bad_rows == 1


def test_servegen_rates(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    rows = ["category,model,window_start_s,day,hour_of_day,total_rate_rps,active_clients,clients_in_release"]
    rows += [f"language,m-large,{i * 600},0,0,{100 if i % 2 else 300},1,1" for i in range(6)]
    f.write_text("\n".join(rows) + "\n")
    t = load_trace(f, mean_rate=2.0)
    assert 0.8 * 2.0 < t.mean_rate < 1.2 * 2.0
    assert t.duration <= 3600


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x00\x01\x02binary", "not a text trace"), (b"a,b,c\n1,2,3\n", "unknown trace format"), (b"", "unknown trace format")],
)
def test_bad_files_give_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "bad"
    f.write_bytes(content)
    with pytest.raises(TraceError, match=message) as e:
        load_trace(f)
    assert "\n" not in str(e.value)


def test_odd_rows_are_bad_rows_or_one_line(tmp_path: Path) -> None:
    """Review (session 26): each of these ended in a traceback, or a replay of decades."""
    az = tmp_path / "az.csv"  # a row with a zone beside rows without (its zone was cut with the 7th digit)
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,1\n"
                  "2023-11-16 18:17:04.9799600+00:00,10,1\n2023-11-16 19:17:05.9799600+01:00,10,1\n")
    assert [round(a.t, 3) for a in load_trace(az).arrivals] == [0.0, 1.0, 2.0]
    mc = tmp_path / "mc.jsonl"  # Infinity and NaN are bad rows
    mc.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1}\n'
                  '{"timestamp": 5, "input_length": Infinity, "output_length": 1}\n'
                  '{"timestamp": NaN, "input_length": 10, "output_length": 1}\n')
    t = load_trace(mc)
    assert len(t.arrivals) == 1 and t.bad_rows == 2
    far = tmp_path / "far.jsonl"  # one row in epoch milliseconds among offsets
    far.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1}\n'
                   '{"timestamp": 1700000000000, "input_length": 10, "output_length": 1}\n')
    with pytest.raises(TraceError, match="spans 19676 days; traces of up to 7 days are replayed"):
        load_trace(far)


def test_missing_file() -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace("/nonexistent/trace.csv")


def test_rate_scale_keeps_shape_and_tokens() -> None:
    base = scenario("step", rate=2.0, duration=600, seed=1)
    x3 = base.scaled(3.0, seed=1)
    assert len(x3.arrivals) == 3 * len(base.arrivals)
    assert sorted(a.input_tokens for a in x3.arrivals)[::3] == sorted(a.input_tokens for a in base.arrivals)
    half = base.scaled(0.5, seed=1)
    assert 0.4 < len(half.arrivals) / len(base.arrivals) < 0.6
    fast = base.scaled(1.0, speedup=10.0)
    assert fast.duration == pytest.approx(base.duration / 10)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenarios_are_deterministic(name: str) -> None:
    a, b = scenario(name, rate=3, duration=300, seed=7), scenario(name, rate=3, duration=300, seed=7)
    assert a.arrivals == b.arrivals and len(a.arrivals) > 100


def test_shared_traces_load_when_present() -> None:
    shared = Path(__file__).resolve().parents[3] / "shared" / "traces"
    if not shared.is_dir():
        pytest.skip("shared/traces is not beside the checkout")
    sizes = {p.name: len(load_trace(p).arrivals) for p in shared.iterdir() if p.suffix in (".csv", ".jsonl")}
    assert sizes["AzureLLMInferenceTrace_code.csv"] == 8819
    assert sizes["mooncake_conversation_trace.jsonl"] == 12031
