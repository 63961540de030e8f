"""The inputs and output of the decision core. Plain data, no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, NamedTuple

from .reasons import Code, Reason

# Signal names (also the keys of metrics.queries overrides).
SIGNALS = (
    "ttftQuantile",
    "interTokenLatencyQuantile",
    "e2eLatencyQuantile",
    "ttftAttainment",
    "itlAttainment",
    "requestsWaiting",
    "requestsRunning",
    "kvCacheUsage",
    "gpuUtilization",
    "requestRate",
    "promptTokensRate",
    "generationTokensRate",
)


@dataclass(frozen=True)
class Signals:
    """One deployment's metrics at one instant, each None when unknown (with the reason in `unknown`)."""

    ttft_quantile: float | None = None
    itl_quantile: float | None = None
    e2e_quantile: float | None = None
    ttft_attainment: float | None = None
    itl_attainment: float | None = None
    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None
    gpu_utilization: float | None = None
    request_rate: float | None = None
    prompt_tokens_rate: float | None = None
    generation_tokens_rate: float | None = None
    # From the inter-token latency histogram's _sum and _count over the rate window: the mean gap
    # between output tokens, and the mean number of sequences decoding (all pods; the rate of the
    # sum: each step adds its length once per sequence in it).
    itl_mean: float | None = None
    sequences_decoding: float | None = None
    preemptions: float | None = None  # sequences vLLM preempted over the rate window (all pods)
    # Requests the gateway holds for the deployment (scaleToZero.demand), as read, whatever vLLM's
    # series say; None when not read. requests_waiting already includes it where vLLM's queue is known.
    gateway_pending: float | None = None
    sampled_at: float | None = None
    read_at: float | None = None  # when the Prometheus read these came from began (None: at the decision)
    unavailable: str | None = None  # Prometheus could not be read at all
    unknown: dict[str, str] = field(default_factory=dict)  # signal -> why it is unknown
    warnings: tuple[str, ...] = ()  # e.g. target between histogram bucket edges

    @staticmethod
    def unreachable(why: str) -> Signals:
        return Signals(unavailable=why)

    @property
    def mean_input_tokens(self) -> float | None:
        return _per_request(self.prompt_tokens_rate, self.request_rate)

    @property
    def mean_output_tokens(self) -> float | None:
        return _per_request(self.generation_tokens_rate, self.request_rate)


def _per_request(tokens_rate: float | None, request_rate: float | None) -> float | None:
    """Tokens per request from two rates; None when the ratio is not meaningful (too few requests,
    or a value no model context could hold)."""
    if tokens_rate is None or request_rate is None or request_rate < 1e-3:
        return None
    v = tokens_rate / request_rate
    return v if 1.0 <= v <= 2_000_000 and math.isfinite(v) else None


def finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


@dataclass(frozen=True)
class PodCounts:
    """The pods of one variant by phase. Every phase but `unschedulable` holds GPUs (and costs)."""

    starting: int = 0  # scheduled, not yet Ready (loading the model)
    ready: int = 0
    terminating: int = 0  # draining after a scale-down: still holds its GPUs
    unschedulable: int = 0  # Pending for lack of free GPUs: holds none until scheduled
    starting_since: float | None = None  # when the oldest starting pod was scheduled on a node (else created)
    waiting_since: float | None = None  # creation time of the oldest unschedulable pod
    # When the newest starting pod that was never Ready was bound to a node (else created): GPUs of
    # its type were free then (a pod that lost Ready is not new evidence of that).
    scheduled_last: float | None = None

    @property
    def holding_gpus(self) -> int:
        return self.starting + self.ready + self.terminating

    @property
    def live(self) -> int:
        """Pods not being deleted (what the Deployment's replicas count)."""
        return self.starting + self.ready + self.unschedulable


@dataclass(frozen=True)
class Workload:
    """The serving workload as the API server reports it.

    Every variant runs as its own Deployment. `variant` is the target shape (the one switched to
    last), and `replicas`, `ready`, `starting` and `pending_unschedulable` describe it; `desired`
    and `pods` give every variant's Deployment replicas and pods by phase (a switch runs two shapes
    at once), so that ceilings are held over everything that holds a GPU.
    """

    variant: str | None
    replicas: int  # desired replicas of the owned Deployment (what is being paid for)
    ready: int
    starting: int = 0  # created, not yet Ready (cold start in flight)
    pending_unschedulable: int = 0
    cold_start_s: Mapping[str, float] = field(default_factory=dict)  # measured creation->first Ready per variant
    competing_autoscaler: str | None = None
    terminating: int = 0
    pods: Mapping[str, PodCounts] = field(default_factory=dict)
    desired: Mapping[str, int] = field(default_factory=dict)  # replicas of each variant's Deployment
    shapes: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # variant -> (accelerator, GPUs) as rendered
    target_since: float | None = None  # when the target shape became the target (the dwell runs from here)
    failed: Mapping[str, tuple[float, str]] = field(default_factory=dict)  # variant -> (when, why) its switch failed
    spill: str | None = None  # the shape marked on its Deployment as spill-over for the target (llmscale.io/spill-for)

    def __post_init__(self) -> None:
        if not self.desired and self.variant is not None:
            object.__setattr__(self, "desired", {self.variant: self.replicas})  # one shape, one Deployment

    def started(self, variant: str) -> bool:
        """Have pods of this shape become Ready (so vLLM does start on it)?"""
        counts = self.pods.get(variant)
        if counts is not None and counts.ready > 0:
            return True
        return variant == self.variant and self.ready > 0


class Action(StrEnum):
    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    SWITCH_VARIANT = "SwitchVariant"
    NO_CHANGE = "NoChange"


class Condition(NamedTuple):
    """A status condition the decision sets: ("True" | "False" | "Unknown", reason, message)."""

    status: str
    reason: str
    message: str


# ---- history ------------------------------------------------------------------------------------


def _opt_float(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    if not math.isfinite(f):
        raise ValueError("not finite")
    return f


def _opt_int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v or v < 0:
        raise ValueError("not a count")
    return int(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v or v < 0:
        raise ValueError("not a count")
    return int(v)


def _opt_positive(v: Any) -> float | None:
    f = _opt_float(v)
    if f is not None and f <= 0:
        raise ValueError("not positive")
    return f


def _opt_count_float(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError("not a count")
    return f


def _opt_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise ValueError("not a string")


def _pairs(kind: Callable[[Any], Any]) -> Callable[[Any], tuple[tuple[float, Any], ...]]:
    def parse(v: Any) -> tuple[tuple[float, Any], ...]:
        if not isinstance(v, list | tuple):
            raise ValueError("not a list")
        out = []
        for item in v:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise ValueError("not a pair")
            t, x = item
            t = float(t)
            x = kind(x)
            if not math.isfinite(t) or (isinstance(x, float) and not math.isfinite(x)):
                raise ValueError("not finite")
            out.append((t, x))
        return tuple(out)

    return parse


def _invalid() -> Any:
    raise ValueError("invalid")


def _correction(v: Any) -> float:
    f = float(v)
    if not math.isfinite(f) or f <= 0:
        raise ValueError("not a positive number")
    return f


def _names(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or len(v) > 64 or not all(isinstance(x, str) and 0 < len(x) <= 128 for x in v):
        raise ValueError("not a list of names")
    return tuple(v)


def _gaps(v: Any) -> tuple[float, ...]:
    if not isinstance(v, list | tuple):
        raise ValueError("not a list")
    out = tuple(float(x) for x in v)
    if any(not math.isfinite(x) or x < 0 for x in out):
        raise ValueError("not a duration")
    return out


@dataclass(frozen=True)
class History:
    """What the policy remembers between decisions; persisted in status, so a restart resumes from
    the last write (what was learnt is written when it changes, and the burst memory when a
    restart would otherwise forget a burst; nothing else moves status).

    Evidence counts once: `learned_at` and `mix_at` mark the last rate window that taught the
    capacity estimate and the token mix, so the overlapping windows of later decisions teach nothing
    until the window has moved past them.
    """

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, replicas within bounds) in the longest window
    rate_samples: tuple[tuple[float, float], ...] = ()  # (time, request rate) for the trend and the burst memory
    last_scale_at: float | None = None
    idle_since: float | None = None
    panic_until: float | None = None
    capacity_correction: float = 1.0
    learned_at: float | None = None  # when a rate window last taught the capacity estimate
    variant_candidate: str | None = None
    variant_candidate_since: float | None = None
    observing_since: float | None = None  # first decision: the windows are covered only after this
    mean_input: float | None = None  # smoothed token mix: capacity is sensitive to it
    mean_output: float | None = None
    mix_at: float | None = None  # when a rate window last taught the token mix
    mix_requests: float | None = None  # how many requests the token mix stands for (weights the next window)
    planned_mix: tuple[float, float] | None = None  # the mix capacity is planned for (moves in 10% steps)
    queued_at: float | None = None  # the last decision that saw a queue: one sample may be a blip
    ready_seen: int | None = None  # Ready replicas at the last decision
    ready_grew_at: float | None = None  # when the Ready count last grew: older windows hold backlog
    burst_gaps: tuple[float, ...] = ()  # lengths (s) of the quiet spells between bursts, newest last
    quiet_since: float | None = None  # the load fell well below the recent peak at this time
    lull_peak: float | None = None  # the peak it fell from: the lull ends when the load comes back to it
    # Each returning burst's highest rate over the load held for it when it came back, newest last;
    # the burst under way: that load, when it came back, and its highest rate so far (with the rate
    # samples since, its height); and the load held above the load at the last decision (None:
    # nothing held above it).
    burst_growth: tuple[float, ...] = ()
    burst_from: float | None = None
    burst_since: float | None = None
    burst_top: float | None = None
    held_level: float | None = None
    # The long memory, one record per hour of the last day: (hour start, highest rate, largest rise
    # of the rate within one cold start, requests), oldest first (see forecast.long_memory); and
    # when the rise under way began (a rise counts once, in the hour it began).
    load_record: tuple[tuple[float, float, float, float], ...] = ()
    rise_since: float | None = None
    backlog_at: float | None = None  # the last decision that saw requests waiting (more than one per Ready replica)
    mixed_at: float | None = None  # the last decision that saw pods of another shape serving or draining (a switch)
    # (scrape time, requests waiting, running) of each distinct scrape seen within the rate window
    # (at least the last few intervals), oldest first: what the requests in flight grew or shrank by.
    queue_scrapes: tuple[tuple[float, float, float], ...] = ()
    # Shapes whose pods have been Ready, as "<variant>@<hash of model and engine args>": vLLM does
    # start on them, whatever the memory model says, also once their pods are gone (scale to zero).
    started_shapes: tuple[str, ...] = ()
    # The pods' engine speed against the performance model (policy.speed): (read time, step time
    # over the model's) of the last rate windows that showed it, oldest first; and the speed capacity
    # is planned for (None: the model's own, nothing learnt yet).
    speed_readings: tuple[tuple[float, float], ...] = ()
    planned_speed: float | None = None
    speed_shape: str | None = None  # the shape (policy.capacity.shape_key) the readings were taken on
    ready_changed_at: float | None = None  # when the Ready count last changed, up or down
    # The shape whose pods carry the share of the target's pods that wait for GPUs (spill-over, see
    # policy.rollout): its pods are not a switch's old shape, so no rollback goes to it.
    spill_shape: str | None = None
    # The target shape whose Pending pods (no free GPUs of its type) were let go under a lowered
    # ceiling, and when: no pod shows it any more, so a pod made room for would wait as they did
    # (policy.rollout), and the switch's wait for GPUs counts from there (policy.variant).
    gpus_short: str | None = None
    gpus_short_since: float | None = None

    def with_(self, **changes: Any) -> History:
        """A copy with `changes` (History has no __post_init__: a field-by-field copy is what
        dataclasses.replace would build, at a tenth of its cost; a decision makes a dozen)."""
        if not _FIELDS.issuperset(changes):
            raise TypeError(f"History has no field(s) {', '.join(sorted(changes.keys() - _FIELDS))}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            key = _KEYS[f.name]
            if f.name == "recommendations":
                out[key] = [[round(t, 3), r] for t, r in v]
            elif f.name == "rate_samples":
                out[key] = [[round(t, 3), round(x, 4)] for t, x in v]
            elif f.name == "queue_scrapes":
                out[key] = [[round(q[0], 3), round(q[1], 1), round(q[2], 1)] for q in v]
            elif f.name == "planned_mix":
                out[key] = None if v is None else [round(v[0], 1), round(v[1], 1)]
            elif f.name == "burst_gaps":
                out[key] = [round(x, 1) for x in v]
            elif f.name == "burst_growth":
                out[key] = [round(x, 3) for x in v]
            elif f.name == "load_record":
                out[key] = [[round(r[0], 3), round(r[1], 4), round(r[2], 4), round(r[3], 1)] for r in v]
            elif f.name == "started_shapes":
                out[key] = list(v)
            elif f.name == "speed_readings":
                out[key] = [[round(t, 3), round(x, 4)] for t, x in v]
            elif isinstance(v, float):
                out[key] = round(v, 6)
            else:
                out[key] = v
        return out

    @staticmethod
    def from_dict(d: Any) -> History:
        """The history kept in status, field by field (see `parse`)."""
        return History.parse(d)[0]

    @staticmethod
    def parse(d: Any) -> tuple[History, tuple[str, ...]]:
        """The history kept in status, field by field: a field that does not parse (hand-edited,
        corrupt, from another version) falls back to its default alone, and is named in the second
        value so the operator can say so; the rest, above all the learned capacity, is kept."""
        if d is None:
            return History(), ()
        if not isinstance(d, dict):
            return History(), ("history",)
        kept: dict[str, Any] = {}
        dropped: list[str] = []
        for name, parse in _PARSERS.items():
            key = _KEYS[name]
            if key not in d:
                continue
            try:
                kept[name] = parse(d[key])
            except (TypeError, ValueError, LookupError, ArithmeticError):
                # Anything a hand-edited or foreign status can hold there (an object where a pair
                # was, digits past a float's range): that field is dropped, the others are kept.
                dropped.append(key)
        if "recommendations" in dropped:
            # The scale-down window's evidence is gone: it must be covered again, as for a new
            # deployment, not judged from the decisions after the loss alone.
            kept.pop("observing_since", None)
        return History(**kept), tuple(dropped)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _scrapes(v: Any) -> tuple[tuple[float, float, float], ...]:
    if not isinstance(v, list | tuple):
        return _invalid()
    out = []
    for q in v:
        if not (isinstance(q, list | tuple) and len(q) == 3 and all(math.isfinite(float(x)) and float(x) >= 0 for x in q)):
            return _invalid()
        out.append((float(q[0]), float(q[1]), float(q[2])))
    if any(b[0] <= a[0] for a, b in zip(out, out[1:], strict=False)):
        return _invalid()  # oldest first, one entry per scrape
    return tuple(out)


def _record(v: Any) -> tuple[tuple[float, float, float, float], ...]:
    if not isinstance(v, list | tuple) or len(v) > RECORD_HOURS_KEPT:
        return _invalid()
    out = []
    for r in v:
        if not (isinstance(r, list | tuple) and len(r) == 4 and all(math.isfinite(float(x)) and float(x) >= 0 for x in r)):
            return _invalid()
        out.append((float(r[0]), float(r[1]), float(r[2]), float(r[3])))
    if any(b[0] <= a[0] for a, b in zip(out, out[1:], strict=False)) or any(r[0] % 3600.0 for r in out):
        return _invalid()  # oldest first, one record per hour, each at the start of an hour
    return tuple(out)


def _growth(v: Any) -> tuple[float, ...]:
    out = _gaps(v)
    if len(out) > GROWTH_KEPT or any(x <= 0 for x in out):
        raise ValueError("not a burst growth")
    return out


def _speeds(v: Any) -> tuple[tuple[float, float], ...]:
    out = _pairs(float)(v)
    if len(out) > SPEED_READINGS_KEPT or any(not SPEED_RANGE[0] <= x <= SPEED_RANGE[1] for _, x in out) or any(
            b[0] <= a[0] for a, b in zip(out, out[1:], strict=False)):
        raise ValueError("not speed readings")
    return out


def _opt_speed(v: Any) -> float | None:
    f = _opt_float(v)
    if f is not None and not SPEED_RANGE[0] <= f <= SPEED_RANGE[1]:
        raise ValueError("not a speed")
    return f


SPEED_READINGS_KEPT = 8  # policy.speed.READINGS_KEPT
SPEED_RANGE = (0.5, 3.0)  # policy.speed.SPEED_MIN, SPEED_MAX
RECORD_HOURS_KEPT = 25  # a day of hourly records and the hour under way
GROWTH_KEPT = 12  # returning bursts remembered


_KEYS = {f.name: _camel(f.name) for f in fields(History)}
_FIELDS = frozenset(_KEYS)
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "recommendations": _pairs(_count),
    "rate_samples": _pairs(lambda x: float(x)),
    "last_scale_at": _opt_float,
    "idle_since": _opt_float,
    "panic_until": _opt_float,
    "capacity_correction": _correction,
    "learned_at": _opt_float,
    "variant_candidate": _opt_str,
    "variant_candidate_since": _opt_float,
    "observing_since": _opt_float,
    "mean_input": _opt_float,
    "mean_output": _opt_float,
    "mix_at": _opt_float,
    "mix_requests": _opt_count_float,
    "planned_mix": lambda v: None if v is None else (float(v[0]), float(v[1])) if isinstance(v, list | tuple) and len(v) == 2
        and all(math.isfinite(float(x)) and float(x) > 0 for x in v) else _invalid(),
    "queued_at": _opt_float,
    "ready_seen": _opt_int,
    "ready_grew_at": _opt_float,
    "burst_gaps": _gaps,
    "quiet_since": _opt_float,
    "lull_peak": _opt_float,
    "burst_growth": _growth,
    "burst_from": _opt_positive,
    "burst_since": _opt_float,
    "burst_top": _opt_positive,
    "held_level": _opt_positive,
    "load_record": _record,
    "rise_since": _opt_float,
    "backlog_at": _opt_float,
    "mixed_at": _opt_float,
    "queue_scrapes": _scrapes,
    "started_shapes": _names,
    "speed_readings": _speeds,
    "planned_speed": _opt_speed,
    "speed_shape": _opt_str,
    "ready_changed_at": _opt_float,
    "spill_shape": _opt_str,
    "gpus_short": _opt_str,
    "gpus_short_since": _opt_float,
}
assert set(_PARSERS) == set(_KEYS), "every History field has a parser"


# ---- output -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeOption:
    """One pod shape as the variant step weighed it, for `llmscale explain` and status."""

    variant: str
    replicas: int | None  # for the forecast at the SLO; None when the shape cannot meet it
    hourly_cost: float | None  # of those replicas (GPU count when unpriced)
    fits_ceiling: bool
    capacity_per_replica: float
    limited_by: str
    note: str = ""  # running / chosen / failed recently / over the ceilings


@dataclass(frozen=True)
class Estimate:
    """What the policy believes, shown by `llmscale explain`."""

    capacity_per_replica: float | None = None  # requests/s at the SLO, after online correction
    capacity_limited_by: str | None = None
    forecast_rate: float | None = None
    horizon_s: float | None = None
    planned_replicas: int | None = None
    feedback_replicas: int | None = None
    ceiling_replicas: int | None = None
    shapes: tuple[ShapeOption, ...] = ()  # every pod shape weighed at this decision (several variants only)
    # The pods' engine step time over the performance model's, as planned for (policy.speed);
    # None while nothing showed it off the model's own.
    step_time_factor: float | None = None
    speed_note: str = ""  # what this decision's rate window showed of the speed (read, or why not)


@dataclass(frozen=True)
class Decision:
    action: Action
    from_replicas: int
    to_replicas: int
    variant: str
    reasons: tuple[Reason, ...]
    history: History
    estimate: Estimate
    conditions: dict[str, Condition]
    apply: bool  # False in Recommend/Paused (apart from manual replicas) and on hold
    # GPUs and hourly cost of the pods on nodes (starting, Ready, draining; Pending ones hold none),
    # every shape at its own price: what is paid now. Cost None while a shape there has no price.
    gpus: int = 0
    hourly_cost: float | None = None
    # Desired replicas of every variant's Deployment now: the target's, and during a
    # make-before-break switch the old shape's pods still serving.
    replicas_by_variant: dict[str, int] = field(default_factory=dict)
    failed_variant: tuple[str, str] | None = None  # (variant, why): a switch rolled back at this decision

    @property
    def codes(self) -> list[Code]:
        return [r.code for r in self.reasons]

    def with_(self, **kw: Any) -> Decision:
        return replace(self, **kw)


@dataclass(frozen=True)
class Proposal:
    """The replica count a step proposes, with the reasons given so far (steps return new ones)."""

    replicas: int
    reasons: tuple[Reason, ...] = ()
    # What the scale-down window remembers when it is fewer than `replicas`: the count the tolerance
    # band keeps for the load where the plan rounds up (plan.tolerated; recorded only at or below
    # today's count, a scale-up is recorded as its count), or what the load itself asks for while a
    # hold that lasts only as long as its cause (a backlog draining) keeps more. None: `replicas`.
    # A step that changes `replicas` drops it.
    load_asks: int | None = None

    def to(self, replicas: int, *reasons: Reason) -> Proposal:
        return Proposal(replicas, self.reasons + reasons, self.load_asks if replicas == self.replicas else None)

    def held(self, replicas: int, *reasons: Reason) -> Proposal:
        """Hold `replicas` for a transient cause: the load still asks for what this proposal said."""
        return Proposal(replicas, self.reasons + reasons, self.recommendation)

    def note(self, *reasons: Reason) -> Proposal:
        return Proposal(self.replicas, self.reasons + reasons, self.load_asks)

    @property
    def recommendation(self) -> int:
        """The replicas the scale-down window records for this proposal."""
        return self.replicas if self.load_asks is None else self.load_asks
