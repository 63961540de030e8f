"""Tuned, not defaults only: every policy's attainment-vs-GPU-hours frontier on every trace.

Each policy's headroom knob (HPA's utilisation target, KEDA's threshold, KPA's target
concurrency, llm-d's thresholds, Dynamo's load factor, llmscale's targetUtilization, replicas
added to static-peak) is swept over the same grid of factors around its documented default; the
oracle's frontier comes from its price of a miss. Prints, per trace, every point and which are on
the policy's frontier, and the cheapest setting of each policy that meets the SLO; one PNG per
trace (defaults marked).

    python -m bench.frontier [--trace NAME ...] [--policy NAME ...] [--jobs 2] [--out bench/out/frontier]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.decision_quality import SHARED, case_and_trace, cases
from llmscale.api import parse_spec
from llmscale.api.models import Scaling
from llmscale.sim.baselines import slo_met
from llmscale.sim.oracle import frontier as oracle_frontier
from llmscale.sim.policies import POLICIES, make_policy
from llmscale.sim.twin import RunResult, Twin

ROOT = Path(__file__).resolve().parents[1]
FACTORS = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)  # the same grid for every policy: knob = default x factor
STATIC_STEPS = (-1, 0, 1, 2)  # static-peak: replicas over the offline sizing
AT_MOST_ONE = {"hpa-gpu-util", "llmscale"}  # utilisation targets: capped at 100 %
LLMSCALE_DEFAULT = Scaling().target_utilization
TUNED = ("llmscale", "hpa-gpu-util", "keda-queue", "kpa", "llmd-slo", "dynamo-load", "static-peak")


def knob_values(policy: str) -> list[tuple[float, bool]]:
    """(knob, is the default) for the grid."""
    if policy == "static-peak":
        return [(float(s), s == 0) for s in STATIC_STEPS]
    cls = POLICIES[policy]
    default = LLMSCALE_DEFAULT if policy == "llmscale" else float(cls.default_knob)  # type: ignore[attr-defined]
    out: list[tuple[float, bool]] = []
    for f in FACTORS:
        v = default * f
        if policy in AT_MOST_ONE:
            v = min(1.0, v)
        if all(abs(v - x) > 1e-9 for x, _ in out):
            out.append((round(v, 4), f == 1.0))
    return out


@dataclass
class Point:
    trace: str
    policy: str
    knob: float | None
    default: bool
    ttft: float
    joint: float
    gpu_hours: float
    meets_slo: bool

    def as_json(self) -> dict[str, Any]:
        return self.__dict__


def run_point(task: tuple[str, str, float, bool]) -> Point:
    trace_name, policy, knob, default = task
    case, trace = case_and_trace(trace_name)
    spec = parse_spec(case.spec)
    r = Twin(spec, trace, make_policy(policy, knob)).run()
    return Point(trace_name, policy, knob, default, r.ttft_attainment, r.joint_attainment, r.gpu_hours, slo_met(spec, r))


def run_oracle(trace_name: str) -> list[Point]:
    case, trace = case_and_trace(trace_name)
    spec = parse_spec(case.spec)
    out: list[RunResult] = oracle_frontier(spec, trace)
    return [Point(trace_name, "oracle", float(r.policy.split("@")[1]), False, r.ttft_attainment, r.joint_attainment,
                  r.gpu_hours, slo_met(spec, r)) for r in out]


def pareto(points: list[Point], metric: str = "ttft") -> list[Point]:
    """The points no other point beats on both attainment (TTFT, or joint) and GPU-hours."""
    def a(p: Point) -> float:
        return attainment(p, metric)

    return [p for p in points
            if not any(q is not p and a(q) >= a(p) and q.gpu_hours <= p.gpu_hours
                       and (a(q) > a(p) or q.gpu_hours < p.gpu_hours) for q in points)]


LEVELS = (0.95, 0.96, 0.97, 0.98, 0.99)


def attainment(p: Point, metric: str) -> float:
    """TTFT attainment, or joint (every SLO target met at once)."""
    if metric not in ("ttft", "joint"):
        raise ValueError(f"unknown attainment {metric!r}: ttft or joint")
    return p.joint if metric == "joint" else p.ttft


def levels_report(names: list[str], points: list[Point], metric: str = "ttft") -> list[str]:
    """Issue 10's test: at every attainment level >= 95 %, does llmscale's frontier need fewer
    GPU-hours than every baseline's? One line per trace and level: llmscale's cheapest setting at
    or above the level, and the cheapest baseline's (the oracles excluded). `metric`: the levels
    are of TTFT attainment or of joint attainment."""
    out = [f"  {'trace':<13} {'level':>5}  {'llmscale GPU-h':>14}  {'best baseline':<26}  {'best adaptive (no hindsight)':<28}  verdict"]
    for n in names:
        pts = [p for p in points if p.trace == n]
        for level in LEVELS:
            ours = [p.gpu_hours for p in pts if p.policy == "llmscale" and attainment(p, metric) >= level]
            theirs = [(p.gpu_hours, p.policy) for p in pts
                      if p.policy not in ("llmscale", "oracle") and attainment(p, metric) >= level]
            mine = min(ours) if ours else None
            best = min(theirs) if theirs else None
            adaptive = min((x for x in theirs if x[1] != "static-peak"), default=None)
            if mine is None and best is None:
                verdict = "nobody reaches it"
            elif mine is None:
                verdict = "llmscale does not reach it"
            elif best is None or mine < best[0]:
                verdict = "llmscale cheapest"
            else:
                verdict = f"llmscale {mine / best[0]:.2f}x the best"
            out.append(f"  {n:<13} {level:>5.0%}  {'-' if mine is None else f'{mine:.2f}':>14}  "
                       f"{'-' if best is None else f'{best[1]} {best[0]:.2f}':<26}  "
                       f"{'-' if adaptive is None else f'{adaptive[1]} {adaptive[0]:.2f}':<28}  {verdict}")
    return out


def below_the_oracle(points: list[Point], metric: str = "ttft") -> list[str]:
    """Points of any policy at or above one of the oracle's points in attainment for fewer GPU-hours.
    The oracle is the cheapest plan its search found whose replay meets each level, not a proven
    bound of the twin (see sim/oracle.py): a point here says the search missed a cheaper plan."""
    out = []
    for p in points:
        if p.policy == "oracle":
            continue
        for o in points:
            if (o.policy == "oracle" and o.trace == p.trace and attainment(p, metric) >= attainment(o, metric)
                    and p.gpu_hours < 0.999 * o.gpu_hours):
                out.append(f"{p.trace}: {p.policy} knob {p.knob:g} ({attainment(p, metric):.2%}, {p.gpu_hours:.2f} GPU-h) "
                           f"under oracle {o.knob:g} ({attainment(o, metric):.2%}, {o.gpu_hours:.2f})")
                break
    return out


def report(names: list[str], points: list[Point]) -> list[str]:
    """The levels report for TTFT and for joint attainment, and the points below the oracle's."""
    lines = []
    for metric, label in (("ttft", "TTFT"), ("joint", "joint (TTFT and inter-token)")):
        lines.append(f"\nAt each level of {label} attainment, llmscale's cheapest setting against the cheapest baseline's:")
        lines += levels_report(names, points, metric)
    for metric in ("ttft", "joint"):
        beaten = below_the_oracle(points, metric)
        lines.append(f"\npoints under the oracle's frontier ({metric}; a search the oracle missed, if any): "
                     + ("none" if not beaten else ""))
        lines += [f"  {b}" for b in beaten]
    return lines


def plot(trace: str, points: list[Point], path: Path) -> None:
    """Two panels: TTFT attainment and joint attainment (TTFT and inter-token) against GPU-hours,
    each policy's points, its frontier for that measure, and its default setting starred."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:  # pragma: no cover - plotting is optional
        return
    # Plain numbers on the log axis (2, 3, 5, 10, 20 ...): matplotlib's 3x10^0 labels run together.
    plain = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "1235" else "")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    for ax, metric, label in ((axes[0], "ttft", "TTFT attainment (%)"),
                              (axes[1], "joint", "joint attainment: TTFT and inter-token (%)")):
        for policy in [*TUNED, "oracle"]:
            pts = [p for p in points if p.policy == policy]
            if not pts:
                continue
            front = sorted(pareto(pts, metric), key=lambda p: p.gpu_hours)
            line = ax.plot([p.gpu_hours for p in front], [100 * getattr(p, metric) for p in front], marker="o", ms=4,
                           lw=1.2, label=policy)[0]
            ax.scatter([p.gpu_hours for p in pts], [100 * getattr(p, metric) for p in pts], s=10, color=line.get_color(),
                       alpha=0.5)
            for p in pts:
                if p.default:
                    ax.plot([p.gpu_hours], [100 * getattr(p, metric)], marker="*", ms=14, color=line.get_color(), mec="black")
        ax.axhline(99, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.set_xlabel("GPU-hours (log)")
        ax.set_ylabel(label)
        ax.set_ylim(max(0, min(100 * getattr(p, metric) for p in points) - 2), 100.5)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{trace}: each policy over its knob (line = its frontier for that measure, star = default)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", action="append", help="only these traces")
    ap.add_argument("--policy", action="append", help=f"only these policies (from {', '.join(TUNED)}, oracle)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "frontier"))
    ap.add_argument("--report", action="store_true", help="print the levels report (and draw the PNGs again) from the last run's points.json")
    args = ap.parse_args(argv)
    if args.report:
        saved_file = Path(args.out) / "points.json"
        if not saved_file.is_file():
            print(f"bench: {saved_file} not found: run python -m bench.frontier first", file=sys.stderr)
            return 2
        saved = [Point(**d) for d in json.loads(saved_file.read_text())]
        names = list(dict.fromkeys(p.trace for p in saved))
        print("\n".join(report(names, saved)))
        for n in names:  # and the plots again, from the same points
            plot(n, [p for p in saved if p.trace == n], Path(args.out) / f"{n}.png")
        return 0
    if not SHARED.is_dir():
        print(f"bench: {SHARED} not found (the shared traces sit beside the checkout)", file=sys.stderr)
        return 2
    names = [c.name for c in cases() if not args.trace or c.name in args.trace]
    unknown = [t for t in args.trace or [] if t not in {c.name for c in cases()}]
    if unknown:
        print(f"bench: unknown trace {unknown[0]!r}; choose from {', '.join(c.name for c in cases())}", file=sys.stderr)
        return 2
    policies = args.policy or [*TUNED, "oracle"]
    bad = [p for p in policies if p not in TUNED and p != "oracle"]
    if bad:
        print(f"bench: unknown policy {bad[0]!r}; choose from {', '.join(TUNED)}, oracle", file=sys.stderr)
        return 2
    tasks = [(n, p, k, d) for n in names for p in policies if p != "oracle" for k, d in knob_values(p)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    points: list[Point] = []
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        oracle_jobs = [pool.apply_async(run_oracle, (n,)) for n in names] if "oracle" in policies else []
        for i, pt in enumerate(pool.imap_unordered(run_point, tasks), 1):
            points.append(pt)
            print(f"\r[{i}/{len(tasks)}] {pt.trace} {pt.policy} {pt.knob:g}  ({time.monotonic() - t0:.0f}s)".ljust(70),
                  end="", file=sys.stderr, flush=True)
        for job in oracle_jobs:
            points.extend(job.get())
    print(file=sys.stderr)

    summary = []
    for n in names:
        pts = [p for p in points if p.trace == n]
        print(f"\n{n}")
        print(f"  {'policy':<13} {'knob':>8}  {'TTFT ok':>8}  {'joint ok':>8}  {'GPU-h':>6}  {'SLO':>4}  frontier")
        front = {id(p) for pol in policies for p in pareto([q for q in pts if q.policy == pol])}
        for p in sorted(pts, key=lambda p: (policies.index(p.policy) if p.policy in policies else 99, p.gpu_hours)):
            mark = ("*" if p.default else "") + ("F" if id(p) in front else "")
            print(f"  {p.policy:<13} {p.knob if p.knob is not None else 0:>8.4g}  {p.ttft:>8.2%}  {p.joint:>8.2%}  "
                  f"{p.gpu_hours:>6.2f}  {'yes' if p.meets_slo else 'no':>4}  {mark}")
        print("  cheapest setting that meets the SLO (TTFT and inter-token percentiles as written):")
        for pol in policies:
            ok = [p for p in pts if p.policy == pol and p.meets_slo]
            best = min(ok, key=lambda p: p.gpu_hours) if ok else None
            summary.append({"trace": n, "policy": pol, "best": best.as_json() if best else None})
            print(f"    {pol:<13} " + (f"knob {best.knob:g}: {best.gpu_hours:.2f} GPU-h at {best.ttft:.2%} TTFT" if best
                                        else "no setting on the grid meets it"))
        plot(n, pts, out / f"{n}.png")
    print("\n".join(report(names, points)))
    (out / "points.json").write_text(json.dumps([p.as_json() for p in points], indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n* = default setting, F = on that policy's frontier. Plots and JSON: {out}/ ({time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
