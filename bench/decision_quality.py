"""Decision quality: every policy on every trace, in the twin. Prints one table; writes plots.

    python -m bench.decision_quality [--trace NAME ...] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from llmscale.api import parse_spec
from llmscale.sim.oracle import beat_oracle, oracle_run, yardstick, yardstick_plans
from llmscale.sim.policies import POLICIES, make_policy
from llmscale.sim.report import plot
from llmscale.sim.traffic import Trace, load_trace, on_off, scenario
from llmscale.sim.twin import SETTLE_S, RunResult, Twin, has_settled_view

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces"
HOLDOUT = ROOT.parent / "holdout" / "traces"
# Seeds 11-14 were in the bench when the forecast was first tuned; 15-22 were added later, to accept
# or reject changes on traffic the earlier tuning never saw (see bench/README.md).
ONOFF_SEEDS = tuple(range(11, 23))
ONOFF_DURATION_S = 2400.0
# What spreads requests over the pods (spec.routing), for every policy alike. The tables assume a
# load-aware gateway, as LLM serving stacks put in front of vLLM (llm-d's endpoint picker, the vLLM
# production-stack router, AIBrix, KServe with the Inference Extension) and as llm-d's autoscaler
# is built for; --routing Service gives the tables for pods reached through a plain Service.
ROUTING = "LoadAware"


def deployment(ttft: str, ttft_pct: float, itl: str, max_replicas: int, cold: str = "90s") -> dict[str, Any]:
    return {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "replicas": {"min": 1, "max": max_replicas},
        "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": cold}],
        "slo": {"ttft": {"target": ttft, "percentile": ttft_pct}, "interTokenLatency": {"target": itl, "percentile": 95}},
        "cost": {"maxGPUs": max_replicas, "prices": {"nvidia-h100": "4.00"}},
        "scaling": {"interval": "15s"},
        "routing": ROUTING,
    }


@dataclass
class Case:
    name: str
    file: Path
    rate_scale: float
    spec: dict[str, Any]
    note: str
    load: dict[str, Any] | None = None
    speedup: float = 1.0


def cases() -> list[Case]:
    out = [
        Case("azure-code", SHARED / "AzureLLMInferenceTrace_code.csv", 4.0, deployment("1s", 99, "100ms", 32),
             "Azure 2023 code service, bursty, long prompts / short outputs; x4 rate"),
        Case("mooncake", SHARED / "mooncake_conversation_trace.jsonl", 1.0, deployment("10s", 99, "100ms", 48),
             "Mooncake conversation, ~12k-token prompts (p99 85k, whose prefill alone takes ~5 s): TTFT target 10 s"),
        Case("servegen-day", SHARED / "servegen_aggregate_rate_10min.csv", 1.0, deployment("1s", 99, "100ms", 32),
             "ServeGen m-large day shape, 24 h compressed 12x, chat token mix from the Azure trace",
             load={"model": "m-large", "days": 1.0, "mean_rate": 0.5}, speedup=12.0),
    ]
    # A seeded family of on/off traffic, never tuned on: burst heights, lengths, lulls and cold
    # starts drawn at random (llmscale.sim.traffic.on_off).
    for seed in ONOFF_SEEDS:
        shape = on_off(seed, ONOFF_DURATION_S)
        length = "" if ONOFF_DURATION_S == 2400.0 else f"-{ONOFF_DURATION_S / 60:g}m"  # its own JSON and PNG
        out.append(Case(f"onoff-{seed}{length}", Path(f"scenario:onoff:{seed}"), 1.0,
                        deployment("1s", 99, "100ms", 32, f"{shape.cold_start_s:.0f}s"),
                        f"synthetic on/off, seed {seed}: {len(shape.bursts)} bursts, cold start {shape.cold_start_s:.0f}s"))
    if HOLDOUT.is_dir():
        for f in sorted(HOLDOUT.iterdir()):
            if f.suffix in (".csv", ".jsonl"):
                out.append(Case(f"holdout-{f.stem}", f, 1.0, deployment("1s", 99, "100ms", 32), "held-out trace (not used for tuning)"))
    return out


def load(case: Case) -> Trace:
    if str(case.file).startswith("scenario:onoff:"):
        return scenario("onoff", rate=10.0, duration=ONOFF_DURATION_S, seed=int(str(case.file).rsplit(":", 1)[1]))
    if case.load:
        tokens = load_trace(SHARED / "AzureLLMInferenceTrace_code.csv") if (SHARED / "AzureLLMInferenceTrace_code.csv").exists() else None
        trace = load_trace(case.file, token_source=tokens, **case.load)
    else:
        trace = load_trace(case.file)
    return trace.scaled(case.rate_scale, case.speedup, seed=1)


@cache
def case_and_trace(name: str) -> tuple[Case, Trace]:
    """A case and its loaded trace, once per process (the workers run many policies per trace)."""
    case = next(c for c in cases() if c.name == name)
    return case, load(case)


def _run(task: tuple[str, str]) -> tuple[tuple[str, str], RunResult]:
    name, policy = task
    case, trace = case_and_trace(name)
    return task, Twin(parse_spec(case.spec), trace, make_policy(policy)).run()


def fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i < 2 or i == len(cols) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trace", action="append", help="run only these cases (azure-code, mooncake, servegen-day, holdout-...)")
    ap.add_argument("--policy", action="append", help="run only these policies")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--onoff-seeds", metavar="FIRST-LAST",
                    help="run these seeds of the on/off family instead of 11-22 (e.g. 23-42, held out from tuning)")
    ap.add_argument("--onoff-minutes", type=float, metavar="M",
                    help="length of each on/off trace (default 40; e.g. 240 for the long memory's test)")
    ap.add_argument("--only-onoff", action="store_true", help="leave out the real traces")
    ap.add_argument("--routing", choices=["LoadAware", "Service"], default="LoadAware",
                    help="what spreads requests over the pods, for every policy (default LoadAware: a gateway that picks "
                         "the least-loaded pod; Service: kube-proxy, equal shares); Service writes to <out>/service")
    ap.add_argument("--pod-slowdown", type=float, default=1.0, metavar="F",
                    help="the twin's pods take F times the performance model's step time (default 1: the model llmscale "
                         "plans with is exact); 1.1-1.3 measures what a model error costs; writes to <out>/slowdown-F")
    args = ap.parse_args(argv)
    if not 0.2 <= args.pod_slowdown <= 5:  # also refuses NaN
        print(f"bench: --pod-slowdown {args.pod_slowdown:g}: give 0.2 to 5", file=sys.stderr)
        return 2
    Twin.pod_slowdown = args.pod_slowdown  # the workers are forked: they see it
    global ROUTING
    ROUTING = args.routing  # the workers are forked: they see it
    if args.onoff_minutes is not None:
        global ONOFF_DURATION_S
        if not 1 <= args.onoff_minutes <= 7 * 24 * 60:
            print(f"bench: --onoff-minutes {args.onoff_minutes:g}: give 1 to 10080", file=sys.stderr)
            return 2
        ONOFF_DURATION_S = args.onoff_minutes * 60.0  # the workers are forked: they see it
    if args.onoff_seeds:
        global ONOFF_SEEDS
        try:
            first, last = (int(x) for x in args.onoff_seeds.split("-", 1))
        except ValueError:
            print(f"bench: --onoff-seeds {args.onoff_seeds!r}: give FIRST-LAST, e.g. 23-42", file=sys.stderr)
            return 2
        if last < first:
            print(f"bench: --onoff-seeds {args.onoff_seeds!r}: the first seed is after the last", file=sys.stderr)
            return 2
        ONOFF_SEEDS = tuple(range(first, last + 1))  # the workers are forked: they see it
    if not SHARED.is_dir():
        print(f"bench: {SHARED} not found (the shared traces sit beside the checkout)", file=sys.stderr)
        return 2
    out = Path(args.out) / ("service" if ROUTING == "Service" else "")
    if args.pod_slowdown != 1.0:
        out = out / f"slowdown-{args.pod_slowdown:g}"
        print(f"pods {args.pod_slowdown:g}x the performance model's step time (llmscale plans with the model)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    policies = args.policy or list(POLICIES)
    all_rows: list[tuple[Case, RunResult]] = []
    chosen = [c for c in cases() if (not args.trace or c.name in args.trace)
              and not (args.only_onoff and not str(c.file).startswith("scenario:onoff:"))]
    unknown = [t for t in args.trace or [] if t not in {c.name for c in cases()}]
    if unknown:
        print(f"bench: unknown trace {unknown[0]!r}; choose from {', '.join(c.name for c in cases())}", file=sys.stderr)
        return 2
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        print(f"bench: unknown policy {bad[0]!r}; choose from {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    for case in chosen:
        trace = load(case)
        print(f"{case.name}: {len(trace.arrivals)} requests, {trace.duration / 60:.0f} min, mean {trace.mean_rate:.2f} req/s, "
              f"peak minute {trace.peak_rate():.2f} req/s; {case.note}", file=sys.stderr)
    print(f"routing: {ROUTING} (spec.routing of every case, for every policy)", file=sys.stderr)
    tasks = [(case.name, p) for case in chosen for p in policies]
    t0 = time.monotonic()
    done: dict[tuple[str, str], RunResult] = {}
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        for i, (key, r) in enumerate(pool.imap_unordered(_run, tasks), 1):
            done[key] = r
            print(f"  [{i}/{len(tasks)}] {key[0]}/{key[1]} done ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    for case in chosen:
        results = [done[(case.name, p)] for p in policies]
        all_rows.extend((case, r) for r in results)
        spec = parse_spec(case.spec)
        plot(results, spec.slo.ttft.seconds if spec.slo.ttft else None, out / f"{case.name}.png", f"{case.name}: {case.note}",
             SETTLE_S if has_settled_view(case_and_trace(case.name)[1]) else None)
        (out / f"{case.name}.json").write_text(json.dumps([r.as_json() for r in results], indent=1))

    heads = ["trace", "policy", "TTFT ok", "ITL ok", "joint ok", "TTFT ok >=10m", "joint >=10m", "vs static >=10m", "TTFT p99", "GPU-h", "vs static", "vs oracle",
             "vs lookahead", "cost", "actions", "goal", "goal >=10m"]
    rows = []
    # The oracle is the cheapest plan its search found that replays within the SLO (sim/oracle.py),
    # not a proven bound: a replayed plan (a baseline, oracle-lookahead) that meets the SLO as the
    # search tests it (slo_met) for fewer GPU-hours is a plan it missed, and the ratios are taken
    # against the cheapest such plan instead (the best known), so that a search that misses never flatters them (review,
    # session 27: a constant 5 replicas, static-peak's plan, beat it on mooncake behind a Service).
    # llmscale, the policy judged, is never its own yardstick; the whole run and the view from
    # minute ten each take their own cheapest among the plans that meet it over the whole run.
    best_known: dict[str, tuple[float, float]] = {}
    late_yardsticks: list[str] = []  # from minute ten, whose plan is the yardstick where it is not the oracle's
    for case in {c.name: c for c, _ in all_rows}.values():
        runs, case_spec = [r for c, r in all_rows if c is case], parse_spec(case.spec)
        known = yardstick(case_spec, runs)
        if known is not None:
            best_known[case.name] = known
        late_plan = yardstick_plans(case_spec, runs)[1]
        late_oracle = oracle_run(runs)
        if late_plan is not None and late_oracle is not None:
            late_yardsticks.append(f"{case.name}: {late_plan.policy} {late_plan.settled_gpu_hours:.2f} GPU-h "
                                   f"< {late_oracle.settled_gpu_hours:.2f}")
    for case, r in all_rows:
        known = best_known.get(case.name)
        oracle_gpu_h, oracle_settled_gpu_h = known if known is not None else (float("nan"), float("nan"))
        static = next((x for c, x in all_rows if c is case and x.policy == "static-peak"), None)
        ahead = next((x for c, x in all_rows if c is case and x.policy == "oracle-lookahead"), None)
        ratio = r.gpu_hours / oracle_gpu_h if oracle_gpu_h > 0 else float("nan")
        vs_ahead = r.gpu_hours / ahead.gpu_hours if ahead and ahead.gpu_hours > 0 else float("nan")
        vs_static = r.gpu_hours / static.gpu_hours if static and static.gpu_hours > 0 else float("nan")
        # From minute ten on (SETTLE_S): the requests arriving then and the GPU time held then.
        late_static = (r.settled_gpu_hours / static.settled_gpu_hours
                       if static and static.settled_gpu_hours > 0 else float("nan"))
        goal = late_goal = "-"
        if r.policy == "llmscale":
            # Issue 9's goal: >= 99% TTFT and joint attainment, no more GPU-hours than static-peak,
            # at most 1.15x the oracle's; over the whole run, and the same from minute ten on.
            late_oracle = r.settled_gpu_hours / oracle_settled_gpu_h if oracle_settled_gpu_h > 0 else float("nan")
            goal = _goal(r.ttft_attainment, r.joint_attainment, vs_static, ratio, static, known is not None)
            late_goal = _goal(r.settled_ttft_attainment, r.settled_joint_attainment, late_static, late_oracle, static,
                              known is not None)
        rows.append([case.name, r.policy, f"{r.ttft_attainment:.2%}", f"{r.itl_attainment:.2%}", f"{r.joint_attainment:.2%}",
                     f"{r.settled_ttft_attainment:.2%}", f"{r.settled_joint_attainment:.2%}", f"{late_static:.2f}x",
                     f"{r.ttft_p99_s:.2f}s", f"{r.gpu_hours:.2f}", f"{vs_static:.2f}x", f"{ratio:.2f}x", f"{vs_ahead:.2f}x",
                     f"{r.cost:.2f}" if r.cost is not None else "-", str(r.scale_actions), goal, late_goal])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    print()
    print(fmt_row(heads, widths))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt_row(row, widths))
    # Fewer GPU-hours than every baseline that reaches the same attainment?
    print()
    for case in {c.name: c for c, _ in all_rows}.values():
        rs = {r.policy: r for c, r in all_rows if c is case}
        ours = rs.get("llmscale")
        if not ours:
            continue
        rivals = [r for p, r in rs.items() if p not in ("llmscale", "oracle", "oracle-lookahead")
                  and r.ttft_attainment >= ours.ttft_attainment]
        cheaper = [r.policy for r in rivals if r.gpu_hours < ours.gpu_hours]
        print(f"{case.name}: baselines at or above llmscale's attainment: {', '.join(r.policy for r in rivals) or 'none'}; "
              f"cheaper than llmscale among them: {', '.join(cheaper) or 'none'}")
    # The oracle is the cheapest plan its search found that replays within the SLO, not a proven
    # bound of the twin (sim/oracle.py): a policy at or above its attainment for fewer GPU-hours
    # means the search missed a cheaper plan.
    beaten = []
    for case in {c.name: c for c, _ in all_rows}.values():
        rs = [r for c, r in all_rows if c is case]
        oracle = oracle_run(rs)
        beaten += [f"{case.name}: {p} {r.gpu_hours:.2f} GPU-h < {oracle.gpu_hours:.2f}"
                   for p in beat_oracle(parse_spec(case.spec), rs) for r in rs if r.policy == p and oracle is not None]
    print(f"\npolicies that meet the SLO for fewer GPU-hours than the oracle (plans its search missed; the "
          f"'vs oracle' ratios use the cheapest baseline among them, never llmscale): {', '.join(beaten) or 'none'}")
    print(f"from minute ten, the plan 'goal >=10m' judges llmscale against where it is not the oracle's (the "
          f"cheapest that meets the SLO over the whole run and holds less than the oracle's from then): "
          f"{', '.join(late_yardsticks) or 'none'}")
    print(f"\nplots and JSON: {out}/")
    return 0


def _goal(ttft: float, joint: float, vs_static: float, vs_oracle: float, static: RunResult | None,
          has_oracle: bool) -> str:
    missed = [why for why, bad in (("TTFT", ttft < 0.99), ("joint", joint < 0.99), ("vs static", vs_static > 1.0),
                                   ("vs oracle", vs_oracle > 1.15)) if bad]
    if not missed and (static is None or not has_oracle):
        return "n/a (needs static-peak and oracle in the run)"
    return "met" if not missed else "MISSED: " + ", ".join(missed)


if __name__ == "__main__":
    sys.exit(main())
