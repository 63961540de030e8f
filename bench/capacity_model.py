"""Capacity model against the engine simulator: how far the queueing model that the policy plans
with (`llmscale.perf.queueing`) is from what a simulated fleet sustains in steady state, and from
the short fleet simulation the policy used before (`llmscale.perf.capacity.simulated_capacity`).

    python -m bench.capacity_model [--quick] [--profile MODEL,ACCELERATOR,GPUS ...] [--fleets 1,4,16]
    python -m bench.capacity_model --trace mooncake [--fleets 1,4]     # on one bench case's own token mix

The reference (`llmscale.perf.capacity.steady_state_meets`) runs the engine simulator long enough
for the running batch and the KV cache to settle (thousands of requests per replica, the first
quarter discarded) and bisects the largest
Poisson rate per replica whose TTFT and inter-token percentiles meet the targets, behind the same
least-outstanding-requests router as the twin. It is slow by design (seconds per point); the model
answers the same question in milliseconds. Errors are log ratios (0.10 = 10 % too high).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.decision_quality import case_and_trace, cases
from llmscale.api.units import parse_duration
from llmscale.perf import capacity as simulation
from llmscale.perf import queueing
from llmscale.perf.capacity import DEFAULT_SIGMA_IN, DEFAULT_SIGMA_OUT, steady_state_meets
from llmscale.perf.hardware import ServerProfile, server_profile
from llmscale.sim.traffic import TraceError

FLEETS = (1, 4, 16)


@dataclass(frozen=True)
class Slo:
    itl_s: float
    itl_pct: float
    ttft_s: float
    ttft_pct: float

    def __str__(self) -> str:
        return f"TTFT p{self.ttft_pct:g} <= {self.ttft_s:g}s, ITL p{self.itl_pct:g} <= {self.itl_s * 1000:g}ms"


SLOS = (Slo(0.1, 95, 1.0, 99), Slo(0.05, 95, 0.25, 95))
MIXES = ((300, 100), (1000, 30), (1000, 250), (2000, 30), (2000, 250), (4000, 100), (1024, 800), (8000, 300))
QUICK_MIXES = ((1000, 250), (2000, 30), (4000, 100))


def meets_in_steady_state(profile: ServerProfile, mean_in: float, mean_out: float, lam: float, replicas: int,
                          slo: Slo, lengths: Sequence[tuple[int, int]] | None = None) -> bool:
    return steady_state_meets(profile, mean_in, mean_out, lam, replicas, slo.itl_s, slo.itl_pct, slo.ttft_s, slo.ttft_pct,
                              lengths=lengths)


def steady_capacity(profile: ServerProfile, mean_in: float, mean_out: float, replicas: int, slo: Slo,
                    start: float, lengths: Sequence[tuple[int, int]] | None = None) -> float:
    """Largest rate per replica (to 2 %) that meets the SLO in a long simulated run (token lengths
    drawn from `lengths` when given, else lognormal with these means)."""
    lo, hi = 0.0, max(start, 0.05)
    while meets_in_steady_state(profile, mean_in, mean_out, hi, replicas, slo, lengths):
        lo, hi = hi, hi * 1.5
    while hi - lo > 0.02 * hi:
        mid = (lo + hi) / 2 if lo > 0 else hi / 3
        if meets_in_steady_state(profile, mean_in, mean_out, mid, replicas, slo, lengths):
            lo = mid
        else:
            hi = mid
            if lo <= 0 and hi < 1e-3:
                break
    return lo


def log_error(x: float, ref: float) -> float | None:
    if ref <= 0 and x <= 0:
        return 0.0
    if ref <= 0 or x <= 0:
        return None
    return math.log(x / ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three mixes, one SLO (about a minute)")
    ap.add_argument("--profile", action="append", metavar="MODEL,ACCELERATOR,GPUS",
                    help="server profile(s); default Llama-3.1-8B on one H100")
    ap.add_argument("--trace", metavar="CASE",
                    help="instead: the model against the steady state on one bench case's own token mix "
                         "(bench.decision_quality's cases: its SLO, its trace's prompt and output lengths)")
    ap.add_argument("--fleets", default=None, metavar="N,N", help="fleet sizes (default 1,4,16; 1,4 with --trace)")
    args = ap.parse_args()
    try:
        fleets = tuple(int(x) for x in args.fleets.split(",")) if args.fleets else None
    except ValueError:
        raise SystemExit(f"capacity_model: --fleets {args.fleets!r}: give sizes like 1,4") from None
    if fleets is not None and (not fleets or min(fleets) < 1):
        raise SystemExit(f"capacity_model: --fleets {args.fleets!r}: sizes are at least 1")
    profiles = []
    for text in args.profile or ["meta-llama/Llama-3.1-8B-Instruct,nvidia-h100,1"]:
        parts = text.split(",")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise SystemExit(f"capacity_model: --profile {text!r}: give MODEL,ACCELERATOR,GPUS")
        try:
            profiles.append(server_profile(parts[0], parts[1], int(parts[2])))
        except (KeyError, ValueError) as e:
            raise SystemExit(f"capacity_model: --profile {text!r}: {e}") from None
    if args.trace is not None:
        if args.quick:
            raise SystemExit("capacity_model: --quick is for the grid of mixes, not --trace")
        trace_mix(args.trace, profiles, fleets or (1, 4))
        return
    fleet_sizes = fleets or FLEETS
    mixes = QUICK_MIXES if args.quick else MIXES
    slos = SLOS[:1] if args.quick else SLOS
    errors: dict[str, list[float]] = {"model": [], "short simulation": []}
    misses = {"model": 0, "short simulation": 0}
    cost = {"model": 0.0, "short simulation": 0.0}
    for profile in profiles:
        for slo in slos:
            print(f"\n{profile.model.name} on {profile.tp}x {profile.gpu.name}, {slo}")
            print(f"{'prompt':>6} {'output':>6} {'fleet':>5} | {'steady':>7} | {'model':>7} {'err':>6} | {'short sim':>9} {'err':>6}")
            for mean_in, mean_out in mixes:
                a, b = simulation._snap(mean_in), simulation._snap(mean_out)
                c0 = time.process_time()
                short = simulation._pool_curve(profile, a, b, slo.itl_s, slo.ttft_s, slo.itl_pct, slo.ttft_pct,
                                               DEFAULT_SIGMA_IN, DEFAULT_SIGMA_OUT, None)
                c1 = time.process_time()
                model = queueing._model_curve(profile, a, b, slo.itl_s, slo.ttft_s, slo.itl_pct, slo.ttft_pct,
                                              DEFAULT_SIGMA_IN, DEFAULT_SIGMA_OUT, None)
                c2 = time.process_time()
                cost["short simulation"] += c1 - c0
                cost["model"] += c2 - c1
                for n in fleet_sizes:
                    m = simulation.at_fleet_size(model, n).requests_per_s
                    s = simulation.at_fleet_size(short, n).requests_per_s
                    ref = steady_capacity(profile, a, b, n, slo, max(m, s, 0.05))
                    cells = []
                    for name, x in (("model", m), ("short simulation", s)):
                        e = log_error(x, ref)
                        if e is None:
                            misses[name] += 1
                            cells.append(f"{x:7.2f} {'feas!':>6}")
                        else:
                            errors[name].append(e)
                            cells.append(f"{x:7.2f} {e:+6.2f}")
                    print(f"{a:6.0f} {b:6.0f} {n:5d} | {ref:7.2f} | {cells[0]} | {cells[1]:>16}", flush=True)
    print("\nagainst the steady-state simulation (log error; + means the method promises more than the fleet sustains)")
    print(f"{'method':<17} {'points':>6} {'mean':>6} {'mean |.|':>8} {'worst':>6} {'> +0.15':>7} {'feasibility wrong':>17} {'CPU per mix':>11}")
    n_mixes = len(profiles) * len(slos) * len(mixes)
    for name, errs in errors.items():
        if not errs:
            continue
        worst = max(errs, key=abs)
        over = sum(1 for e in errs if e > 0.15)
        print(f"{name:<17} {len(errs):6d} {sum(errs) / len(errs):+6.3f} {sum(map(abs, errs)) / len(errs):8.3f} "
              f"{worst:+6.2f} {over:7d} {misses[name]:17d} {cost[name] / n_mixes * 1000:9.1f}ms")
    if cost["model"] > 0:
        print(f"model CPU / short simulation CPU: 1/{cost['short simulation'] / cost['model']:.0f}")
    sys.stdout.flush()


def trace_mix(name: str, profiles: list[ServerProfile], fleets: tuple[int, ...]) -> None:
    """The model, and the steady state on the lognormal mix it assumes, against the steady state
    on the trace's own token lengths (a heavy-tailed mix the lognormal misses), at the case's SLO."""
    names = [c.name for c in cases()]
    if name not in names:
        raise SystemExit(f"capacity_model: --trace {name!r}: not a case (one of {', '.join(names[:4])}, ...)")
    try:
        case, trace = case_and_trace(name)
    except TraceError as e:
        raise SystemExit(f"capacity_model: --trace {name}: {e}") from None
    lengths = [(a.input_tokens, a.output_tokens) for a in trace.arrivals]
    mean_in = sum(a for a, _ in lengths) / len(lengths)
    mean_out = sum(b for _, b in lengths) / len(lengths)
    slo_spec = case.spec["slo"]
    slo = Slo(parse_duration(slo_spec["interTokenLatency"]["target"]), float(slo_spec["interTokenLatency"].get("percentile", 95)),
              parse_duration(slo_spec["ttft"]["target"]), float(slo_spec["ttft"]["percentile"]))
    for profile in profiles:
        print(f"\n{name}: {len(lengths)} requests, mean {mean_in:.0f} prompt / {mean_out:.0f} output tokens; "
              f"{profile.model.name} on {profile.tp}x {profile.gpu.name}, {slo}")
        curve = queueing.modelled_curve(profile, mean_in, mean_out, slo.itl_s, slo.ttft_s, slo.itl_pct, slo.ttft_pct)
        print(f"{'fleet':>5} | {'model':>7} {'limit':>8} | {'steady, lognormal':>17} | {'steady, trace mix':>17} "
              f"{'limit':>6} | {'model / trace mix':>17}")
        for n in fleets:
            cap = simulation.at_fleet_size(curve, n)
            logn = steady_capacity(profile, mean_in, mean_out, n, slo, max(cap.requests_per_s, 0.05))
            own = steady_capacity(profile, mean_in, mean_out, n, slo, max(cap.requests_per_s, 0.05), lengths)
            why = "" if own <= 0 else _first_miss(profile, mean_in, mean_out, own * 1.04, n, slo, lengths)
            ratio = f"{cap.requests_per_s / own:17.2f}" if own > 0 else f"{'-':>17}"
            print(f"{n:5d} | {cap.requests_per_s:7.2f} {cap.limited_by:>8} | {logn:17.2f} | {own:17.2f} {why:>6} | {ratio}",
                  flush=True)


def _first_miss(profile: ServerProfile, mean_in: float, mean_out: float, lam: float, replicas: int, slo: Slo,
                lengths: Sequence[tuple[int, int]]) -> str:
    """Which target the trace-mix fleet misses first just above its capacity ("ttft", "itl")."""
    for only in ("ttft", "itl"):
        if not steady_state_meets(profile, mean_in, mean_out, lam, replicas, slo.itl_s if only == "itl" else None, slo.itl_pct,
                                  slo.ttft_s if only == "ttft" else None, slo.ttft_pct, lengths=lengths):
            return only
    return "-"


if __name__ == "__main__":
    main()
