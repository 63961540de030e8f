"""Reaction on the test bed: time from a traffic step to the scale decision and to SLO recovery,
for llmscale and for an HPA-style rule at its defaults (15 s sync, 10 % tolerance, GPU
utilisation target 70 %), both driven from the same Prometheus in the same run.

    e2e/cluster up && python -m bench.reaction [--step-from 3 --step-to 30]

Two LLMDeployments get the same traffic step. `llmscale-ls` runs in Auto mode under the operator;
`llmscale-hpa` is Paused and its replicas are set through the scale subresource by the HPA rule
below, reading DCGM_FI_DEV_GPU_UTIL as prometheus-adapter would serve it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_api_client import PrometheusConnect

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "e2e" / ".state"
KUBECTL = Path.home() / ".cache/llmscale/kubernetes-v1.36.3/kubectl"
PROM = "http://127.0.0.1:19090"
FLEET = "http://127.0.0.1:18000"
NS = "bench-reaction"
TTFT_TARGET = 0.25


def crd_established(crd: str = "llmdeployments.llmscale.io", timeout_s: float = 60) -> None:
    """Wait until the CRD is served (`kubectl wait` fails at once while a new CRD has no condition)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        jsonpath = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        if kubectl("get", "crd", crd, "-o", jsonpath).strip() == "True":
            return
        time.sleep(0.3)
    raise SystemExit(f"bench: the CRD {crd} was not Established within {timeout_s:.0f} s")


def kubectl(*args: str, input: str | None = None) -> str:
    r = subprocess.run([str(KUBECTL), f"--kubeconfig={STATE / 'kubeconfig'}", *args], input=input, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench: kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def doc(name: str, mode: str) -> dict[str, Any]:
    scaling: dict[str, Any] = {"mode": mode, "interval": "5s", "scaleUp": {"maxStep": 8},
                               "scaleDown": {"stabilizationWindow": "300s"}}
    if mode == "Paused":
        scaling["manualReplicas"] = 1
    return {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": "meta-llama/Llama-3.1-8B-Instruct", "replicas": {"min": 1, "max": 12},
                     "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "10s"}],
                     "slo": {"ttft": {"target": "250ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
                     "cost": {"maxGPUs": 12, "prices": {"nvidia-h100": "4.00"}}, "scaling": scaling,
                     "metrics": {"rateWindow": "20s"}}}


def traffic(name: str, rate: float) -> None:
    body = json.dumps({"rate": rate, "meanInput": 1000, "meanOutput": 200}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{FLEET}/traffic/{NS}/{name}", data=body, method="PUT"), timeout=10)


def replicas(name: str) -> int:
    return int(kubectl("get", "deploy", name, "-n", NS, "-o", "jsonpath={.spec.replicas}") or 0)


def ready(name: str) -> int:
    return int(kubectl("get", "deploy", name, "-n", NS, "-o", "jsonpath={.status.readyReplicas}") or 0)


def ttft_p95(prom: PrometheusConnect, name: str) -> float | None:
    q = f'histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{namespace="{NS}", llmd="{name}"}}[20s])))'
    r = prom.custom_query(q)
    v = float(r[0]["value"][1]) if r else math.nan
    return v if math.isfinite(v) else None


def hpa_step(prom: PrometheusConnect, name: str, recs: list[tuple[float, int]]) -> int | None:
    """One sync of the HPA algorithm on average GPU utilisation (target 70 %, tolerance 10 %)."""
    r = prom.custom_query(f'avg(DCGM_FI_DEV_GPU_UTIL{{namespace="{NS}", llmd="{name}"}})')
    if not r:
        return None
    util = float(r[0]["value"][1]) / 100
    current, n_ready = replicas(name), max(1, ready(name))
    ratio = util / 0.70
    desired = current if abs(ratio - 1) <= 0.10 else math.ceil(n_ready * ratio)
    now = time.time()
    recs[:] = [(t, x) for t, x in recs if now - t <= 300] + [(now, desired)]
    if desired < current:
        desired = min(current, max(x for _, x in recs))
    desired = min(12, max(1, min(desired, max(current + 4, 2 * current))))
    if desired != current:
        kubectl("scale", "llmd", name, "-n", NS, f"--replicas={desired}")
    return desired


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--step-from", type=float, default=3.0)
    ap.add_argument("--step-to", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args(argv)
    if subprocess.run([str(ROOT / "e2e/cluster"), "status"], capture_output=True).returncode != 0:
        print("bench: the test bed is not up; run `e2e/cluster up` first", file=sys.stderr)
        return 2
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds/llmdeployments.llmscale.io.yaml"))
    crd_established()
    subprocess.run([str(KUBECTL), f"--kubeconfig={STATE / 'kubeconfig'}", "delete", "ns", NS, "--wait=true", "--timeout=60s"],
                   capture_output=True)
    kubectl("create", "ns", NS)
    log = open(STATE / "logs" / "operator-bench.log", "wb")
    op = subprocess.Popen([sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(STATE / "kubeconfig"),
                           "--prometheus-url", PROM, "--metrics-port", "18090", "--health-port", "18091"], stdout=log, stderr=log)
    prom = PrometheusConnect(url=PROM, disable_ssl=True)
    try:
        for name, mode in (("llmscale-ls", "Auto"), ("llmscale-hpa", "Paused")):
            kubectl("apply", "-f", "-", input=yaml.safe_dump(doc(name, mode)))
        t0 = time.time()
        while min(ready("llmscale-ls") if _exists("llmscale-ls") else 0, ready("llmscale-hpa") if _exists("llmscale-hpa") else 0) < 1:
            if time.time() - t0 > 120:
                raise SystemExit("bench: the deployments did not become Ready")
            time.sleep(1)
        for name in ("llmscale-ls", "llmscale-hpa"):
            traffic(name, args.step_from)
        print(f"warming up at {args.step_from:g} req/s for 60 s ...", file=sys.stderr)
        # Both start from the same single warm replica: the HPA rule runs from the step on (on
        # DCGM duty cycle it would otherwise climb during the warm-up, since one request keeps a
        # GPU "100% utilised").
        recs: list[tuple[float, int]] = []
        time.sleep(60)
        start = {n: replicas(n) for n in ("llmscale-ls", "llmscale-hpa")}
        step_at = time.time()
        for name in start:
            traffic(name, args.step_to)
        print(f"step {args.step_from:g} -> {args.step_to:g} req/s; watching for {args.timeout:.0f} s ...", file=sys.stderr)
        decided: dict[str, float | None] = dict.fromkeys(start)
        breached: dict[str, bool] = dict.fromkeys(start, False)
        recovered: dict[str, float | None] = dict.fromkeys(start)
        peak: dict[str, float] = dict.fromkeys(start, 0.0)
        next_hpa = step_at
        while time.time() - step_at < args.timeout:
            now = time.time()
            if now >= next_hpa:
                hpa_step(prom, "llmscale-hpa", recs)
                next_hpa += 15
            for name in start:
                if decided[name] is None and replicas(name) > start[name]:
                    decided[name] = now - step_at
                t = ttft_p95(prom, name)
                if t is not None:
                    peak[name] = max(peak[name], t)
                    if t > TTFT_TARGET:
                        breached[name] = True
                    elif breached[name] and recovered[name] is None and ready(name) > start[name]:
                        recovered[name] = now - step_at
            if all(recovered[n] is not None or (not breached[n] and decided[n] is not None and now - step_at > 60) for n in start):
                break
            time.sleep(1)
        print()
        print(f"traffic step {args.step_from:g} -> {args.step_to:g} req/s (Llama-3.1-8B on H100, mean 1000 in / 200 out), "
              f"TTFT p95 target {TTFT_TARGET * 1000:.0f} ms, model-load delay of the bed")
        heads = ["policy", "replicas before", "decision after", "SLO recovered after", "peak TTFT p95", "replicas after"]
        print("  ".join(f"{h:>20}" for h in heads))
        for name, label in (("llmscale-ls", "llmscale"), ("llmscale-hpa", "hpa-gpu-util (70%)")):
            d, r = decided[name], recovered[name]
            rec = f"{r:.0f} s" if r is not None else ("never breached" if not breached[name] else f"> {args.timeout:.0f} s")
            row = [label, str(start[name]), f"{d:.0f} s" if d is not None else "none", rec, f"{peak[name] * 1000:.0f} ms", str(replicas(name))]
            print("  ".join(f"{c:>20}" for c in row))
        d_ls, d_hpa = decided["llmscale-ls"], decided["llmscale-hpa"]
        if d_ls and d_hpa:
            print(f"\ndecision time, llmscale / hpa: {d_ls / d_hpa:.2f}x")
        r_ls, r_hpa = recovered["llmscale-ls"], recovered["llmscale-hpa"]
        if r_ls and r_hpa:
            print(f"recovery time, llmscale / hpa: {r_ls / r_hpa:.2f}x")
    finally:
        for name in ("llmscale-ls", "llmscale-hpa"):
            try:
                traffic(name, 0)
            except OSError:
                pass
        # Delete while the operator still runs: it releases its finalizers on the way out.
        subprocess.run([str(KUBECTL), f"--kubeconfig={STATE / 'kubeconfig'}", "delete", "ns", NS, "--wait=true", "--timeout=60s"],
                       capture_output=True)
        op.terminate()
        op.wait(20)
    return 0


def _exists(name: str) -> bool:
    r = subprocess.run([str(KUBECTL), f"--kubeconfig={STATE / 'kubeconfig'}", "get", "deploy", name, "-n", NS], capture_output=True)
    return r.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
