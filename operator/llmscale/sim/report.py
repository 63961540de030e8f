"""People-facing output of the twin: a table and a PNG plot."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .twin import RunResult

COLUMNS = [
    ("policy", "policy", "{}"),
    ("requests", "requests", "{:d}"),
    ("TTFT ok", "ttft_attainment", "{:.2%}"),
    ("ITL ok", "itl_attainment", "{:.2%}"),
    ("joint ok", "joint_attainment", "{:.2%}"),
    ("TTFT p50", "ttft_p50_s", "{:.3f}s"),
    ("TTFT p95", "ttft_p95_s", "{:.3f}s"),
    ("TTFT p99", "ttft_p99_s", "{:.3f}s"),
    ("GPU-h", "gpu_hours", "{:.2f}"),
    ("cost", "cost", "{:.2f}"),
    ("actions", "scale_actions", "{:d}"),
    ("at ceiling", "ceiling_s", "{:.0f}s"),
]


def _cell(fmt: str, v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def table(results: list[RunResult], baselines: Sequence[str] = (), yardsticks: Mapping[str, float] | None = None) -> str:
    """One row per run; one `GPU-h / <baseline>` column per baseline in the run, over that
    baseline's GPU-hours or over `yardsticks[baseline]` when given (the oracle's: the cheapest
    replayed plan known to meet the SLO, see sim.oracle.yardstick)."""
    return _table(results, COLUMNS, baselines, "gpu_hours", yardsticks)


SETTLED_COLUMNS = [
    ("policy", "policy", "{}"),
    ("requests", "settled_requests", "{:d}"),
    ("TTFT ok", "settled_ttft_attainment", "{:.2%}"),
    ("joint ok", "settled_joint_attainment", "{:.2%}"),
    ("GPU-h", "settled_gpu_hours", "{:.2f}"),
]


def settled_table(results: list[RunResult], baselines: Sequence[str] = (),
                  yardsticks: Mapping[str, float] | None = None) -> str:
    """The same runs from minute ten on (SETTLE_S): the requests arriving from then and the GPU time
    held from then, so that the first minutes, when no policy has history yet, do not decide."""
    return _table(results, SETTLED_COLUMNS, baselines, "settled_gpu_hours", yardsticks)


def _table(results: list[RunResult], columns: list[tuple[str, str, str]], baselines: Sequence[str], attr: str,
           yardsticks: Mapping[str, float] | None = None) -> str:
    """`columns` (heading, RunResult field, format) and one column per baseline in the run: each
    policy's GPU-hours (`attr`) over the baseline's, or over its yardstick."""
    heads = [c[0] for c in columns]
    rows = [[_cell(fmt, getattr(r, field)) for _, field, fmt in columns] for r in results]
    for name in baselines:
        base = next((r for r in results if r.policy == name), None)
        if base is None:
            continue
        heads.append(f"GPU-h / {name}")
        b = (yardsticks or {}).get(name, getattr(base, attr))
        for r, row in zip(results, rows, strict=True):
            row.append(f"{getattr(r, attr) / b:.2f}x" if b > 0 else "-")
    return _render(heads, rows)


def _render(heads: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True)))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(out)


def plot(results: list[RunResult], ttft_target: float | None, path: Path, title: str,
         settled_from_s: float | None = None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'llmscale[plot]')", file=sys.stderr)
        return None
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    first = results[0].timeline
    t = [row["t"] / 60 for row in first]
    axes[0].plot(t, [row["rate"] for row in first], color="black", lw=1)
    axes[0].set_ylabel("requests/s")
    axes[0].set_title(title)
    for r in results:
        tl = r.timeline
        axes[1].step([row["t"] / 60 for row in tl], [sum(row["ready"].values()) for row in tl], where="post", label=r.policy, lw=1.2)
        axes[2].plot([row["t"] / 60 for row in tl], [row["ttft_p95"] if row["ttft_p95"] is not None else math.nan for row in tl],
                     label=r.policy, lw=1)
    axes[1].set_ylabel("ready replicas")
    axes[1].legend(loc="upper left", fontsize=8, ncol=3)
    if ttft_target:
        axes[2].axhline(ttft_target, color="red", ls="--", lw=1, label="TTFT target")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("TTFT p95 (s), per 15 s")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="upper left", fontsize=8, ncol=3)
    if settled_from_s is not None:
        for ax in axes:  # where the table "after minute ten" starts counting
            ax.axvline(settled_from_s / 60, color="grey", ls=":", lw=1)
        axes[0].annotate(f"the table after minute {settled_from_s / 60:.0f} counts from here", (settled_from_s / 60, 1.0),
                         xycoords=("data", "axes fraction"), xytext=(4, -12), textcoords="offset points",
                         fontsize=8, color="grey")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class Progress:
    """A one-line progress bar on stderr (only on a terminal or when forced)."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.last = -1
        # Redrawn in place on a terminal; elsewhere (a log, a pipe) a line per quarter done, not a
        # hundred carriage returns run together on one line.
        self.tty = sys.stderr.isatty()

    def __call__(self, frac: float) -> None:
        if not self.enabled:
            return
        pct = int(frac * 100)
        if pct == self.last:
            return
        if not self.tty:
            if pct < 25 or (pct // 25 == self.last // 25 and frac < 1):
                return
            self.last = pct
            sys.stderr.write(f"  {self.label:<28} {pct // 25 * 25 if frac < 1 else 100:3d}%\n")
            sys.stderr.flush()
            return
        self.last = pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        sys.stderr.write(f"\r  {self.label:<28} [{bar}] {pct:3d}%")
        if frac >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()
