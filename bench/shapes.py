"""Pod shapes: llmscale choosing among shapes against llmscale pinned to each one (`fixed:<variant>`),
per trace, in the twin. Is choosing shapes worth it, and does every switch stay inside the ceilings?

    python -m bench.shapes [--trace NAME ...] [--jobs 2] [--h100-pool GPUS]

The shared traces run an 8B model on L4, H100 and 2 x H100 (tensor parallel) pods; Mooncake's long
prompts also run `examples/llama-70b-variants.yaml` (4 or 8 H100s per pod) under the Mooncake
case's SLO (TTFT p99 <= 10 s). Prices are the spec's
(L4 0.80/h, H100 4.00/h per GPU). "best fixed" is the cheapest pinned shape whose TTFT attainment
is at least llmscale's; the verdict says whether choosing shapes cost less at equal or better
attainment. peak GPUs and peak cost count every pod holding GPUs (starting, Ready, draining) at
its own price, at every instant.

With `--h100-pool GPUS` the cluster has only that many H100 GPUs (L4s without limit): pods past it
stay Pending, and llmscale runs twice, with spill-over (the default spillAfter, 60 s: L4 pods carry
the share of H100 pods that wait) and without (`spillAfter: never`: the pods wait).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.decision_quality import SHARED, cases, load
from llmscale.api import parse_spec
from llmscale.sim.policies import make_policy
from llmscale.sim.traffic import Trace
from llmscale.sim.twin import RunResult, Twin

ROOT = Path(__file__).resolve().parents[1]
SHAPES_8B = [
    {"name": "l4x1", "accelerator": "nvidia-l4", "gpusPerReplica": 1, "coldStart": "60s"},
    {"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1, "coldStart": "90s"},
    {"name": "h100x2", "accelerator": "nvidia-h100", "gpusPerReplica": 2, "coldStart": "90s"},
]


def shaped(spec: dict[str, Any], max_model_len: int | None = None) -> dict[str, Any]:
    """A decision-quality case's spec with the 8B shapes to choose from, priced, GPU ceiling kept.
    `max_model_len`: what a platform team would pass to vLLM where every request of the trace fits
    (an L4 holds some 27,000 tokens of KV cache, and vLLM does not start there with Llama-3.1's
    own 131,072-token context)."""
    out = dict(spec)
    if max_model_len:
        out["engineArgs"] = [*spec.get("engineArgs", []), f"--max-model-len={max_model_len}"]
    out["variants"] = SHAPES_8B
    out["cost"] = {**spec["cost"], "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}}
    return out


def specs() -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (spec, trace case name)."""
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for c in cases():
        if c.name in ("azure-code", "servegen-day"):  # requests of at most 7,841 tokens
            out[f"{c.name}/8b"] = (shaped(c.spec, 8192), c.name)
        elif c.name == "mooncake":  # up to 126,527 tokens: the model's own context, no L4
            out[f"{c.name}/8b"] = (shaped(c.spec), c.name)
    # The 70B example under the Mooncake case's SLO (a 500 ms TTFT cannot hold for ~12k-token
    # prompts on any shape), where tensor parallelism shortens the prefill; with the model's own
    # context, as Mooncake needs (the example's --max-model-len=16384 would refuse 23 % of its
    # requests: vLLM answers 400 to a prompt and output longer than that).
    seventy = yaml.safe_load((ROOT / "examples" / "llama-70b-variants.yaml").read_text())["spec"]
    moon = next(c for c in cases() if c.name == "mooncake")
    out["mooncake/70b"] = ({**seventy, "slo": moon.spec["slo"], "routing": moon.spec["routing"],  # as every case routes
                            "engineArgs": [*seventy.get("engineArgs", []), "--max-model-len=131072"]}, "mooncake")
    return out


_TRACES: dict[str, Trace] = {}
_POOL: dict[str, int] = {}  # GPUs per type in the cluster (none: without limit); set before the workers fork
NO_SPILL = "llmscale (no spill)"


def _run(task: tuple[str, str]) -> tuple[tuple[str, str], RunResult | str]:
    name, policy = task
    spec, case_name = specs()[name]
    if policy == NO_SPILL:
        scaling = spec.get("scaling", {})
        spec = {**spec, "scaling": {**scaling, "variantSwitch": {**scaling.get("variantSwitch", {}), "spillAfter": "never"}}}
        policy = "llmscale"
    if case_name not in _TRACES:
        _TRACES[case_name] = load(next(c for c in cases() if c.name == case_name))
    try:
        return task, Twin(parse_spec(spec), _TRACES[case_name], make_policy(policy), gpu_pool=_POOL or None).run()
    except ValueError as e:  # a shape vLLM would not start on (its KV cache cannot hold the longest sequence)
        return task, str(e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", action="append", help="run only these (azure-code/8b, mooncake/8b, servegen-day/8b, mooncake/70b)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--h100-pool", type=int, metavar="GPUS",
                    help="only this many H100 GPUs in the cluster; llmscale runs with and without spill-over")
    args = ap.parse_args(argv)
    if args.h100_pool is not None and args.h100_pool < 0:
        print("bench: --h100-pool must be >= 0", file=sys.stderr)
        return 2
    _POOL.clear()
    if args.h100_pool is not None:
        _POOL["nvidia-h100"] = args.h100_pool
    if not SHARED.is_dir():
        print(f"bench: {SHARED} not found (the shared traces sit beside the checkout)", file=sys.stderr)
        return 2
    all_specs = specs()
    chosen = args.trace or list(all_specs)
    bad = [t for t in chosen if t not in all_specs]
    if bad:
        print(f"bench: unknown trace {bad[0]!r}; choose from {', '.join(all_specs)}", file=sys.stderr)
        return 2
    mine_first = ["llmscale"] + ([NO_SPILL] if _POOL else [])
    tasks = [(n, p) for n in chosen for p in mine_first + [f"fixed:{v['name']}" for v in all_specs[n][0]["variants"]]]
    done: dict[tuple[str, str], RunResult | str] = {}
    t0 = time.monotonic()
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        for i, (key, r) in enumerate(pool.imap_unordered(_run, tasks), 1):
            done[key] = r
            print(f"  [{i}/{len(tasks)}] {key[0]} {key[1]} ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    head = ["trace", "policy", "TTFT ok", "joint ok", "GPU-h", "cost", "peak GPUs", "peak cost/h", "shapes used (GPU-h)"]
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for n in chosen:
        spec = all_specs[n][0]
        mine = done[(n, "llmscale")]
        for p in mine_first + [f"fixed:{v['name']}" for v in spec["variants"]]:
            r = done[(n, p)]
            if isinstance(r, str):
                rows.append([n, p, "-", "-", "-", "-", "-", "-", r[:200]])
                continue
            rows.append([n, p, f"{r.ttft_attainment:.2%}", f"{r.joint_attainment:.2%}", f"{r.gpu_hours:.2f}",
                         f"{r.cost:.2f}" if r.cost is not None else "-", str(r.peak_gpus),
                         f"{r.peak_hourly_cost:.2f}" if r.peak_hourly_cost is not None else "-",
                         ", ".join(f"{v} {h:.2f}" for v, h in r.variants.items() if h > 0)])
        if isinstance(mine, str):
            verdicts.append(f"{n}: llmscale did not run ({mine})")
            continue
        waited = done.get((n, NO_SPILL))
        if isinstance(waited, RunResult):
            verdicts.append(f"{n}: with {_POOL['nvidia-h100']} H100 GPUs, spill-over {mine.ttft_attainment:.2%} TTFT / "
                            f"{mine.joint_attainment:.2%} joint for {mine.gpu_hours:.2f} GPU-h"
                            + (f" ({mine.cost:.2f})" if mine.cost is not None else "")
                            + f"; waiting for H100s {waited.ttft_attainment:.2%} / {waited.joint_attainment:.2%} for "
                            f"{waited.gpu_hours:.2f} GPU-h" + (f" ({waited.cost:.2f})" if waited.cost is not None else ""))
        fixed = [(p, r) for (t, p), r in done.items() if t == n and p.startswith("fixed:") and isinstance(r, RunResult)]
        ok = [(p, r) for p, r in fixed if r.ttft_attainment >= mine.ttft_attainment - 1e-9]
        if not ok:
            verdicts.append(f"{n}: no fixed shape reaches llmscale's {mine.ttft_attainment:.2%} TTFT attainment")
            continue
        p, best = min(ok, key=lambda x: x[1].cost if x[1].cost is not None else x[1].gpu_hours)
        ratio = (mine.cost / best.cost) if mine.cost and best.cost else mine.gpu_hours / best.gpu_hours
        word = "cheaper" if ratio < 1 - 1e-3 else ("equal" if ratio <= 1 + 1e-3 else "DEARER")
        verdicts.append(f"{n}: best fixed shape at >= llmscale's attainment is {p} ({best.ttft_attainment:.2%}); "
                        f"llmscale costs {ratio:.2f}x its cost ({word})")
        ceiling = parse_spec(spec).cost
        if ceiling.max_gpus is not None and mine.peak_gpus > ceiling.max_gpus:
            verdicts.append(f"{n}: CEILING CROSSED: {mine.peak_gpus} GPUs > maxGPUs {ceiling.max_gpus}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
