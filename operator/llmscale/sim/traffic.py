"""Traffic for the twin and the fleet simulator: real traces and synthetic scenarios.

Formats (see shared/traces/README.md): the Azure LLM inference CSV (TIMESTAMP, ContextTokens,
GeneratedTokens), the Mooncake JSONL (timestamp in ms, input_length, output_length) and
ServeGen's aggregate 10-minute rate series, a load shape from which arrivals are drawn.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

_FRACTION = re.compile(r"\.(\d+)")  # the fractional seconds of a timestamp


class TraceError(ValueError):
    """A trace file that cannot be read at all (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Arrival:
    t: float
    input_tokens: int
    output_tokens: int


@dataclass
class Trace:
    name: str
    arrivals: list[Arrival]
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.arrivals[-1].t if self.arrivals else 0.0

    @property
    def mean_rate(self) -> float:
        return len(self.arrivals) / self.duration if self.duration > 0 else 0.0

    def peak_rate(self, window_s: float = 60.0) -> float:
        if not self.arrivals:
            return 0.0
        counts: dict[int, int] = {}
        for a in self.arrivals:
            k = int(a.t // window_s)
            counts[k] = counts.get(k, 0) + 1
        return max(counts.values()) / window_s

    def window(self, start: float, end: float) -> Trace:
        """The arrivals in [start, end), re-based to start at 0."""
        sel = [Arrival(a.t - start, a.input_tokens, a.output_tokens) for a in self.arrivals if start <= a.t < end]
        return Trace(f"{self.name}[{start:g}s:{end:g}s]", sel, self.bad_rows, self.bad_examples)

    def scaled(self, rate_scale: float = 1.0, speedup: float = 1.0, seed: int = 0) -> Trace:
        """Multiply the arrival rate by rate_scale (superposed, jittered copies keep the shape and the
        token mix) and compress time by speedup."""
        if not (rate_scale > 0 and speedup > 0 and math.isfinite(rate_scale) and math.isfinite(speedup)):
            raise TraceError("--rate-scale and --speedup must be positive and finite")
        rng = random.Random(seed)
        out: list[Arrival] = []
        whole = int(math.floor(rate_scale))
        frac = rate_scale - whole
        for a in self.arrivals:
            copies = whole + (1 if rng.random() < frac else 0)
            for c in range(copies):
                jitter = 0.0 if c == 0 else rng.uniform(0, 1.0)
                out.append(Arrival((a.t + jitter) / speedup, a.input_tokens, a.output_tokens))
        out.sort(key=lambda a: a.t)
        name = self.name + (f" x{rate_scale:g}" if rate_scale != 1 else "") + (f" /{speedup:g}t" if speedup != 1 else "")
        return Trace(name, out, self.bad_rows, self.bad_examples)


def _bad(trace_bad: list[str], line_no: int, why: str) -> None:
    if len(trace_bad) < 5:
        trace_bad.append(f"line {line_no}: {why}")


def load_azure_csv(path: Path) -> Trace:
    arrivals: list[Arrival] = []
    bad = 0
    examples: list[str] = []
    t0: datetime | None = None
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or [h.strip() for h in header[:3]] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
                raise TraceError(f"{path}: not an Azure LLM inference trace (expected header TIMESTAMP,ContextTokens,GeneratedTokens)")
            for n, row in enumerate(reader, start=2):
                try:
                    ts = row[0].strip()
                    if frac := _FRACTION.search(ts):  # 7 fractional digits in the published file; datetime takes 6
                        ts = ts[:frac.start(1)] + frac.group(1)[:6] + ts[frac.end(1):]  # (a zone after it stays)
                    when = datetime.fromisoformat(ts)
                    if when.tzinfo is not None:  # one clock for every row: a zone-less row reads as UTC
                        when = when.astimezone(UTC).replace(tzinfo=None)
                    inp, out = int(row[1]), int(row[2])
                    if inp < 0 or out < 0:
                        raise ValueError("negative token count")
                except (ValueError, IndexError) as e:
                    bad += 1
                    _bad(examples, n, str(e))
                    continue
                t0 = t0 or when
                arrivals.append(Arrival((when - t0).total_seconds(), max(1, inp), max(1, out)))
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a text file ({e.reason})") from None
    arrivals.sort(key=lambda a: a.t)
    return Trace(path.stem, arrivals, bad, examples)


def load_mooncake_jsonl(path: Path) -> Trace:
    arrivals: list[Arrival] = []
    bad = 0
    examples: list[str] = []
    try:
        with path.open() as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    t = float(d["timestamp"]) / 1000.0
                    inp, out = int(d["input_length"]), int(d["output_length"])
                    if not math.isfinite(t) or t < 0 or inp < 0 or out < 0:
                        raise ValueError("negative or not finite")
                except (ValueError, KeyError, TypeError, OverflowError) as e:
                    bad += 1
                    _bad(examples, n, f"{type(e).__name__}: {e}")
                    continue
                arrivals.append(Arrival(t, max(1, inp), max(1, out)))
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a text file ({e.reason})") from None
    if not arrivals and bad:
        raise TraceError(f"{path}: no readable Mooncake rows (timestamp, input_length, output_length); {bad} bad rows")
    arrivals.sort(key=lambda a: a.t)
    t0 = arrivals[0].t if arrivals else 0.0
    return Trace(path.stem, [Arrival(a.t - t0, a.input_tokens, a.output_tokens) for a in arrivals], bad, examples)


def load_servegen_rates(path: Path, model: str = "m-large", days: float = 1.0, mean_rate: float = 4.0,
                        token_source: Trace | None = None, seed: int = 0) -> Trace:
    """Arrivals drawn (Poisson within each 10-minute window) from ServeGen's aggregate rate shape.

    Absolute ServeGen rates are unverified, so the shape is rescaled to mean_rate req/s; token
    lengths are sampled from token_source (a real trace) or a chat-like default.
    """
    rates: list[tuple[float, float]] = []
    bad = 0
    examples: list[str] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "total_rate_rps" not in reader.fieldnames:
            raise TraceError(f"{path}: not a ServeGen rate file (expected a total_rate_rps column)")
        for n, row in enumerate(reader, start=2):
            if row.get("model") != model:
                continue
            try:
                start, r = float(row["window_start_s"]), float(row["total_rate_rps"])
                if r < 0 or not math.isfinite(r):
                    raise ValueError("rate not finite and non-negative")
            except (ValueError, TypeError) as e:
                bad += 1
                _bad(examples, n, str(e))
                continue
            if start < days * 86400:
                rates.append((start, r))
    if not rates:
        raise TraceError(f"{path}: no rows for model {model!r}")
    rates.sort()
    avg = sum(r for _, r in rates) / len(rates)
    scale = mean_rate / avg if avg > 0 else 0.0
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    for i, (start, r) in enumerate(rates):
        end = rates[i + 1][0] if i + 1 < len(rates) else start + 600.0
        lam = r * scale
        t = start
        while lam > 0:
            t += rng.expovariate(lam)
            if t >= end:
                break
            inp, out = _sample_tokens(rng, token_source)
            arrivals.append(Arrival(t, inp, out))
    return Trace(f"servegen-{model}", arrivals, bad, examples)


def _sample_tokens(rng: random.Random, source: Trace | None) -> tuple[int, int]:
    if source is not None and source.arrivals:
        a = source.arrivals[rng.randrange(len(source.arrivals))]
        return a.input_tokens, a.output_tokens
    return max(1, int(rng.lognormvariate(math.log(800), 0.8))), max(1, int(rng.lognormvariate(math.log(200), 0.7)))


def load_trace(path: str | Path, **servegen: object) -> Trace:
    """Load any supported trace by its content; raises TraceError with a one-line message."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such file")
    with p.open("rb") as f:
        head = f.read(512)
    try:
        text = head.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
    except UnicodeDecodeError:
        raise TraceError(f"{p}: not a text trace (binary content)") from None
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if first.startswith("{"):
        trace = load_mooncake_jsonl(p)
    elif first.startswith("TIMESTAMP"):
        trace = load_azure_csv(p)
    elif "total_rate_rps" in first:
        trace = load_servegen_rates(p, **servegen)  # type: ignore[arg-type]
    else:
        raise TraceError(f"{p}: unknown trace format (expected Azure CSV, Mooncake JSONL or ServeGen rates)")
    if trace.arrivals and trace.arrivals[-1].t > MAX_TRACE_S:
        # One row in other units (epoch milliseconds in a file of offsets) made a replay of decades.
        raise TraceError(f"{p}: spans {trace.arrivals[-1].t / 86400:.0f} days; traces of up to "
                         f"{MAX_TRACE_S / 86400:.0f} days are replayed (a timestamp in other units?)")
    return trace


MAX_TRACE_S = 7 * 86400.0


# ---- scenarios ----------------------------------------------------------------------------------

RateFn = Callable[[float], float]


def _poisson(rate: RateFn, duration: float, peak: float, mean_in: int, mean_out: int, seed: int, name: str) -> Trace:
    """Non-homogeneous Poisson arrivals by thinning; lognormal token lengths around the means."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while peak > 0:
        t += rng.expovariate(peak)
        if t >= duration:
            break
        if rng.random() * peak <= rate(t):
            inp = max(1, int(rng.lognormvariate(math.log(mean_in) - 0.18, 0.6)))
            out = max(1, int(rng.lognormvariate(math.log(mean_out) - 0.18, 0.6)))
            arrivals.append(Arrival(t, inp, out))
    return Trace(name, arrivals)


SCENARIOS = ("constant", "step", "ramp", "diurnal", "burst", "onoff")


@dataclass(frozen=True)
class OnOff:
    """A seeded on/off load: bursts of random height and length between lulls of random length."""

    seed: int
    base: float  # req/s between bursts
    bursts: tuple[tuple[float, float, float], ...]  # (start s, length s, req/s)
    cold_start_s: float  # drawn too: the same burst pattern is harder with slower starts

    def rate(self, t: float) -> float:
        for start, length, r in self.bursts:
            if start <= t < start + length:
                return r
        return self.base


def on_off(seed: int, duration: float = 2400.0, scale: float = 1.0) -> OnOff:
    """Burst heights 8-48 req/s, lengths 30-240 s, lulls 30-900 s (log-uniform: many short, some
    long), a base of 0-2 req/s and a cold start of 30-180 s, all drawn from `seed`."""
    rng = random.Random(seed)
    base = rng.uniform(0.0, 2.0) * scale
    bursts, t = [], rng.uniform(0.0, 120.0)
    while t < duration:
        length = rng.uniform(30.0, 240.0)
        bursts.append((t, length, rng.uniform(8.0, 48.0) * scale))
        t += length + math.exp(rng.uniform(math.log(30.0), math.log(900.0)))
    return OnOff(seed, base, tuple(bursts), rng.choice((30.0, 60.0, 90.0, 120.0, 180.0)))


def scenario(name: str, rate: float = 10.0, duration: float = 1800.0, mean_in: int = 1024, mean_out: int = 256,
             seed: int = 0) -> Trace:
    """Synthetic load shapes: constant, step (x3 at a third), ramp (0.2x -> 2x), diurnal, burst (x5 for 60s),
    onoff (seeded random bursts and lulls, `rate` scaling heights of about 8-48 req/s at rate 10)."""
    if name == "onoff":
        shape = on_off(seed, duration, rate / 10.0)
        peak = max([r for _, _, r in shape.bursts] + [shape.base, 1e-9])
        return _poisson(shape.rate, duration, peak, mean_in, mean_out, seed, f"scenario-onoff-{seed}")
    shapes: dict[str, tuple[RateFn, float]] = {
        "constant": (lambda t: rate, rate),
        "step": (lambda t: rate * (3.0 if duration / 3 <= t < 2 * duration / 3 else 1.0), 3 * rate),
        "ramp": (lambda t: rate * (0.2 + 1.8 * t / duration), 2 * rate),
        "diurnal": (lambda t: rate * (1 + 0.8 * math.sin(2 * math.pi * t / duration - math.pi / 2)), 1.8 * rate),
        "burst": (lambda t: rate * (5.0 if duration / 2 <= t < duration / 2 + 60 else 1.0), 5 * rate),
    }
    if name not in shapes:
        raise TraceError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    fn, peak = shapes[name]
    return _poisson(fn, duration, peak, mean_in, mean_out, seed, f"scenario-{name}")
