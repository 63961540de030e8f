"""The command line: bad flags and files give one line, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmscale.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmscale.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--trace", "/nope.csv"], "no such file"),
        (["simulate", "--scenario", "tsunami"], "unknown scenario"),
        (["simulate", "--policy", "magic"], "unknown policy"),
        (["simulate", "--deployment", "/nope.yaml"], "no such file"),
        (["simulate", "--scenario", "step", "--rate-scale", "-1"], "must be positive"),
        # Review (session 26): NaN passed every check and a scenario ran for ever, growing memory.
        (["simulate", "--scenario", "step", "--duration", "nan"], "--duration must be positive and finite"),
        (["simulate", "--scenario", "step", "--rate-scale", "nan"], "must be positive and finite"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("env", "args", "message"), [
    ({}, ["run", "--kubeconfig", "/nope/kubeconfig"], "no usable Kubernetes configuration"),
    ({"LLMSCALE_PROMETHEUS_ENDPOINTS_FILE": "/nope/endpoints.yaml"}, ["run", "--kubeconfig", "KUBECONFIG"], "No such file"),
    ({"LLMSCALE_PROMETHEUS_BEARER_TOKEN_FILE": "/dev/null"},
     ["run", "--kubeconfig", "KUBECONFIG", "--prometheus-url", "http://prometheus.monitoring:9090"],
     "'default' would send its credential over plain http:// to prometheus.monitoring"),
    # Review (session 26): the refusal of a URL with a password printed the URL, password and all.
    ({}, ["run", "--kubeconfig", "KUBECONFIG", "--prometheus-url", "https://user:s3cr3t@prom:9090"],
     "--prometheus-url (LLMSCALE_PROMETHEUS_URL): an endpoint URL carries a user"),
    ({"LLMSCALE_PROMETHEUS_ENDPOINTS_FILE": "ALLOWED"}, ["run", "--kubeconfig", "KUBECONFIG"],
     "allowedURLs entry 1 (host prom.example) carries a user"),
    ({"LLMSCALE_NAMESPACES": "team-a"}, ["run", "--kubeconfig", "KUBECONFIG"], "a list setting takes JSON"),
])
def test_run_refuses_bad_configuration_in_one_line(env: dict[str, str], args: list[str], message: str, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                          "current-context: x\n")
    allowed = tmp_path / "endpoints.yaml"
    allowed.write_text('allowedURLs:\n  - "https://admin:hunter2@prom.example:9090"\n')
    env = {k: str(allowed) if v == "ALLOWED" else v for k, v in env.items()}
    r = subprocess.run([sys.executable, "-m", "llmscale.cli", *[str(kubeconfig) if a == "KUBECONFIG" else a for a in args]],
                       capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "s3cr3t" not in r.stderr and "hunter2" not in r.stderr


def test_invalid_deployment_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("kind: LLMDeployment\nspec:\n  model: m\n  variants: []\n")
    assert main(["simulate", "--deployment", str(f)]) == 2
    assert "spec.variants" in capsys.readouterr().err
    f.write_text("kind: [unclosed\n")
    assert main(["simulate", "--deployment", str(f)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_a_fixed_shape_vllm_would_not_start_on_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d.yaml"
    doc = ("kind: LLMDeployment\nspec:\n  model: meta-llama/Llama-3.1-8B-Instruct\n  variants:\n"
           "  - {name: h100x1, accelerator: nvidia-h100}\n  - {name: l4x1, accelerator: nvidia-l4}\n")
    f.write_text(doc)
    assert main(["simulate", "--deployment", str(f), "--scenario", "step", "--duration", "60", "--policy", "fixed:l4x1"]) == 2
    err = capsys.readouterr().err
    assert "vLLM would not start on l4x1: its KV cache holds 27,465 tokens" in err and len(err.strip().splitlines()) == 1, err


def test_crds_prints_the_crd() -> None:
    r = run("crds")
    assert r.returncode == 0 and "kind: CustomResourceDefinition" in r.stdout


def test_simulate_json_schema() -> None:
    r = run("simulate", "--scenario", "step", "--duration", "300", "--scenario-rate", "3", "--json",
            "--policy", "llmscale", "--policy", "static-peak")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["trace"] == "scenario-step"
    assert [x["policy"] for x in out["results"]] == ["llmscale", "static-peak"]
    for x in out["results"]:
        assert {"requests", "ttft_attainment", "itl_attainment", "ttft_p95_s", "gpu_hours", "cost", "scale_actions"} <= set(x)
        assert 0 <= x["ttft_attainment"] <= 1


def test_simulate_writes_a_plot(tmp_path: Path) -> None:
    r = run("simulate", "--scenario", "burst", "--duration", "300", "--out", str(tmp_path), "--policy", "llmscale")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "simulate.png").stat().st_size > 10_000
    assert "TTFT ok" in r.stdout


def test_simulate_shows_the_view_from_minute_ten_only_on_a_run_that_long(capsys: pytest.CaptureFixture[str]) -> None:
    """A 20-minute run gets the second table (each policy's GPU-hours against static-peak's from
    minute ten on); a 5-minute run has no minute ten to count from."""
    assert main(["simulate", "--scenario", "constant", "--duration", "1200", "--scenario-rate", "2",
                 "--policy", "llmscale", "--policy", "static-peak"]) == 0
    out = capsys.readouterr().out
    settled = out[out.index("after minute 10"):].splitlines()
    assert settled[2].split() == ["policy", "requests", "TTFT", "ok", "joint", "ok", "GPU-h", "GPU-h", "/", "static-peak"]
    rows = {line.split()[0]: line.split() for line in settled[4:6]}
    assert set(rows) == {"llmscale", "static-peak"} and rows["static-peak"][-1] == "1.00x"
    assert 1000 < int(rows["llmscale"][1]) < 1400  # ~2 req/s over the last ten minutes
    assert main(["simulate", "--scenario", "constant", "--duration", "300", "--scenario-rate", "2",
                 "--policy", "static-peak"]) == 0
    assert "after minute" not in capsys.readouterr().out


def test_a_bad_operator_setting_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLMSCALE_WORKERS", "0")
    assert main(["run", "--kubeconfig", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "llmscale run: workers (LLMSCALE_WORKERS): Input should be greater than or equal to 1"


def test_simulate_routing_overrides_the_deployment_and_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled deployment routes through a load-aware gateway; --routing Service runs the same
    trace behind a Service, says so, and records it in the JSON. A fixed pool misses more there."""
    args = ["simulate", "--scenario", "constant", "--duration", "300", "--scenario-rate", "30", "--policy", "static-peak"]
    got = {}
    for routing in ("LoadAware", "Service"):
        assert main([*args, "--json", "--routing", routing]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["routing"] == routing
        got[routing] = out["results"][0]["ttft_p99_s"]
    assert got["Service"] > got["LoadAware"]
    assert main([*args, "--routing", "Service"]) == 0
    assert "; routing Service (a Service: every pod an equal share)" in capsys.readouterr().out
    assert main([*args]) == 0
    assert "; routing LoadAware (a gateway picks the least-loaded pod)" in capsys.readouterr().out
    r = run("simulate", "--routing", "RoundRobin")
    assert r.returncode == 2 and "invalid choice: 'RoundRobin'" in r.stderr


def test_explain_reads_the_time_status_was_written() -> None:
    """explain says when the status it replays from is older than two intervals (the operator writes
    only changes): it needs the write's time, as status gives it."""
    from llmscale.cli import _epoch

    assert _epoch("2026-12-07T02:23:51Z") == 1796610231.0
    assert _epoch("2026-12-07T02:23:51.500000+00:00") == 1796610231.5
    assert _epoch("yesterday") is None and _epoch(None) is None


def test_a_path_of_the_wrong_kind_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review (session 26): a directory, a missing directory, a file where a directory goes, and a
    file that is not UTF-8 each ended in a traceback."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "latin1.yaml").write_bytes(b"\xff\xfe kind: x")
    for args, says in ((["crds", "-o", str(tmp_path)], "Is a directory"),
                       (["crds", "-o", str(tmp_path / "no" / "x.yaml")], "No such file or directory"),
                       (["simulate", "--scenario", "step", "--duration", "60", "--policy", "static-peak",
                         "--out", str(tmp_path / "afile")], "a file, not a directory"),
                       (["simulate", "--deployment", str(tmp_path / "latin1.yaml")], "not UTF-8 text")):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_simulate_names_the_plan_that_sets_the_oracle_yardstick_from_minute_ten(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The view from minute ten divides by the cheapest plan that meets the SLO over the whole run
    from then (sim.oracle.yardstick_plans): when that is not the oracle's, simulate says whose, and
    it never takes llmscale's own."""
    from llmscale.sim.twin import RunResult, Twin

    def fixed(gpu_h: dict[str, tuple[float, float]]) -> None:
        def run(self: Twin) -> RunResult:
            whole, late = gpu_h[self.policy.name]
            return RunResult(self.policy.name, "t", 1000, 0.995, 0.99, 0.99, 0.995, 0.99, 800, late, 0.1, 0.2, 0.3,
                             0.05, whole, None, 0, 0.0, 0)
        monkeypatch.setattr(Twin, "run", run)

    args = ["simulate", "--scenario", "constant", "--duration", "1200", "--scenario-rate", "2",
            "--policy", "llmscale", "--policy", "static-peak", "--policy", "oracle"]
    fixed({"llmscale": (2.0, 1.0), "static-peak": (7.0, 3.0), "oracle": (6.0, 4.0)})
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ("from minute ten 'GPU-h / oracle' is taken against static-peak's 3.00 GPU-h: it meets the SLO over "
            "the whole run and holds less than the oracle's plan (4.00) from minute ten") in out
    fixed({"llmscale": (2.0, 1.0), "static-peak": (7.0, 5.0), "oracle": (6.0, 4.0)})
    assert main(args) == 0
    assert "from minute ten 'GPU-h / oracle' is taken against" not in capsys.readouterr().out
