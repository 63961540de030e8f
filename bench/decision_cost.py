"""Decision cost: CPU per `decide()` call, this checkout against a baseline commit, in the same run.

    python -m bench.decision_cost [--baseline REF] [--deployments 40] [--decisions 20]

The workload is what one operator sees: N LLMDeployments with distinct token mixes (prompts of
300-8,000 tokens, outputs of 50-800), each decided every 15 s while its load drifts and, now and
then, bursts. Both versions run the same workload in a fresh process (cold caches, as after an
operator restart), one after the other; the table gives CPU seconds per decision and the ratio.
The baseline is checked out with `git worktree` into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "fcf954c"  # main before the decision core was rebuilt (issue 9)

# Runs inside the measured checkout: only APIs both versions share (decide, History, Workload, Signals).
WORKLOAD = r"""
import json, math, sys, time
from llmscale.api import parse_spec
from llmscale.policy import History, Signals, Workload, decide
n, k = int(sys.argv[1]), int(sys.argv[2])
specs, mixes = [], []
for i in range(n):
    specs.append(parse_spec({
        "model": "meta-llama/Llama-3.1-8B-Instruct", "replicas": {"min": 1, "max": 32},
        "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "90s"}],
        "slo": {"ttft": {"target": "1s", "percentile": 99}, "interTokenLatency": {"target": "100ms"}},
        "cost": {"maxGPUs": 32, "prices": {"nvidia-h100": "4.00"}}, "scaling": {"interval": "15s"}}))
    mixes.append((300 * (8000 / 300) ** (i / max(1, n - 1)), 50 * (800 / 50) ** (((i * 7) % n) / max(1, n - 1))))
hist = [History() for _ in range(n)]
reps = [2] * n
cpu = []
t0 = time.process_time()
for step in range(k):
    now = 1000.0 + 15.0 * step
    for i in range(n):
        m_in, m_out = mixes[i]
        rate = 4.0 * (1 + 0.5 * math.sin(step / 5 + i)) * (3.0 if (step + i) % 13 == 0 else 1.0)
        s = Signals(ttft_quantile=0.3, itl_quantile=0.04, ttft_attainment=0.995, itl_attainment=0.99,
                    request_rate=rate, prompt_tokens_rate=rate * m_in * (1 + 0.1 * math.sin(step + i)),
                    generation_tokens_rate=rate * m_out, requests_waiting=0.0, requests_running=rate * 2,
                    kv_cache_usage=0.3, gpu_utilization=0.8, sampled_at=now)
        c0 = time.process_time()
        d = decide(specs[i], Workload("h100x1", reps[i], reps[i]), s, hist[i], now)
        cpu.append(time.process_time() - c0)
        hist[i], reps[i] = d.history, d.to_replicas
print(json.dumps({"cpu": cpu, "total": time.process_time() - t0}))
"""


def run(tree: Path, deployments: int, decisions: int) -> dict[str, float]:
    env = {"PYTHONPATH": str(tree / "operator"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(deployments), str(decisions)], capture_output=True,
                         text=True, env=env, cwd=tree, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"decision_cost: the workload failed in {tree}: {out.stderr.strip().splitlines()[-1:]}")
    data = json.loads(out.stdout)
    cpu = sorted(data["cpu"])
    return {"decisions": len(cpu), "total": sum(cpu), "mean": sum(cpu) / len(cpu), "p50": cpu[len(cpu) // 2],
            "p99": cpu[min(len(cpu) - 1, math.ceil(0.99 * len(cpu)) - 1)], "max": cpu[-1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=BASELINE, help=f"git ref to compare with (default {BASELINE})")
    ap.add_argument("--deployments", type=int, default=40)
    ap.add_argument("--decisions", type=int, default=20, help="decisions per deployment")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmscale-baseline-") as tmp:
        base = Path(tmp) / "baseline"
        r = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"decision_cost: cannot check out {args.baseline}: {r.stderr.strip()}", file=sys.stderr)
            return 2
        try:
            for label, tree in ((f"baseline {args.baseline}", base), ("this checkout", ROOT)):
                t0 = time.monotonic()
                print(f"  {label}: {args.deployments} deployments x {args.decisions} decisions ...", file=sys.stderr, flush=True)
                res = run(tree, args.deployments, args.decisions)
                print(f"  {label}: done in {time.monotonic() - t0:.0f}s", file=sys.stderr)
                rows.append((label, res))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    base_mean = rows[0][1]["mean"]
    print(f"\n{'version':<22} {'decisions':>9} {'CPU total':>10} {'per decision':>13} {'p50':>9} {'p99':>9} {'vs baseline':>12}")
    for label, r in rows:
        print(f"{label:<22} {r['decisions']:>9.0f} {r['total']:>9.2f}s {r['mean'] * 1000:>11.2f}ms {r['p50'] * 1000:>7.2f}ms "
              f"{r['p99'] * 1000:>7.1f}ms {base_mean / r['mean']:>11.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
