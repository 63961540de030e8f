"""Step 3: the load to plan for over the cold-start horizon (pods take minutes to load weights).

Four things are planned for, whichever is highest:
- the current rate plus a damped upward trend;
- the recent peak (the burst memory), held for one cold start (a burst that came may come again
  before new capacity could be Ready); once bursts have been seen to come back, for half an hour
  when a returning burst would spend more than the SLO's error budget (with a p99 target and any
  realistic cold start, nearly always), else for as long as the quiet spells between bursts
  usually last (capacity released in a lull would be needed again before it could be Ready), or
  one cold start when lulls are usually longer than 15 minutes; a peak counts for what it exceeds
  the chance maximum of the windows held (see chance_excess), since the highest of many noisy
  windows of steady traffic is no burst;
- the long memory (a day of hourly records): once big rises of the load within one cold start have
  come back and would spend more than the error budget, today's load plus the largest rise, up to
  the day's highest rate (see long_memory): bursts of random heights are not forgotten after half
  an hour;
- today's queue, drained within the horizon, unless the replicas already drain it.
A held load is planned with targetUtilization's headroom until nine returning bursts are
remembered none of which came back higher than that headroom allows; then with the headroom they
showed (see burst_headroom): a held peak already is the load a returning burst brings.
The load is what arrives, not only what vLLM counts as completed: while a queue builds, the replicas
complete fewer requests than arrive (at a burst's onset the completion rate says 4 req/s of a
36 req/s burst), and the difference is what the requests in flight (waiting + running) grew by
between two scrapes. While a backlog drains the completions exceed the arrivals by what the
requests in flight shrank by over the same rate window (completions over the window less the
shrink over the last interval mixed two windows, and at onoff-13's first burst said 9 req/s of 40,
so the drain's pace itself, 50 req/s, was held as the peak for half an hour); the same holds for
the window after a drain ended, while its completions still count the backlog served.
An unknown request rate is not replaced by a stored sample: unknown means hold.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from llmscale.api.models import LLMDeploymentSpec, Variant
from llmscale.api.units import parse_duration

from .reasons import Code, Reason
from .types import History, Signals, Workload

DEFAULT_COLD_START_S = 120.0
_TIME, _RATE = operator.itemgetter(0), operator.itemgetter(1)  # of a (time, rate) sample
SAMPLES_KEPT_S = 1800.0  # the burst memory looks back this far
MAX_SAMPLES = 120
QUIET_SHARE = 0.5  # a lull: load under half the held peak
MAX_GAPS = 12  # quiet spells remembered
GAP_QUANTILE = 0.9  # hold through nine lulls in ten
LONG_GAP_S = 900.0  # lulls usually (median) longer than this release capacity after one cold start
MAX_QUEUE_AGE_INTERVALS = 3  # the queue gauges are compared with a scrape at most this many intervals older
SAME_SCRAPE_S = 0.01  # status keeps times to the millisecond
SCRAPES_PER_WINDOW = 12  # queue scrapes kept per rate window (see thin_scrapes)


@dataclass(frozen=True)
class Forecast:
    rate: float | None  # requests/s to plan for; None when the current rate is unknown
    horizon_s: float  # cold start + one interval: the time a decision taken now needs to take effect
    hold_s: float  # how long a peak is held
    history: History
    reasons: tuple[Reason, ...] = ()
    arrivals: float | None = None  # requests/s arriving between the last two scrapes of the queue; None when unknown
    draining: bool = False  # a backlog is draining (see arrival_rate): the Ready replicas carry the load
    # The utilisation to plan `rate` at, when the burst memory sets the plan with a headroom learnt
    # from returning bursts (see burst_headroom); None: the spec's targetUtilization.
    utilization: float | None = None
    # The load rose since the decision before, beyond chance: (from, to) req/s; None otherwise.
    rising: tuple[float, float] | None = None

    def plan_utilization(self, spec: LLMDeploymentSpec) -> float:
        return spec.scaling.target_utilization if self.utilization is None else self.utilization


def cold_start_s(spec: LLMDeploymentSpec, variant: Variant, workload: Workload) -> float:
    measured = workload.cold_start_s.get(variant.name)
    if measured:
        return measured
    return parse_duration(variant.cold_start) if variant.cold_start else DEFAULT_COLD_START_S


def arrival_rate(completions: float, signals: Signals, seen: tuple[float, float, float] | None, at: float,
                 max_age_s: float, ready: int, horizon_s: float) -> tuple[float | None, bool]:
    """Requests arriving per second between two scrapes of the queue gauges (completions plus the
    growth of the requests in flight), and whether a backlog is draining. `at` is when the gauges
    were scraped now, `seen` (time, waiting, running) what an earlier decision saw. (None, False)
    without both gauges now and a different scrape at most `max_age_s` earlier.

    A growth within chance is no evidence: arrivals and completions are each Poisson-like, so over
    dt the count in flight moves by about sqrt(2 x rate x dt) with a steady load; a change counts
    for what it exceeds twice that by (the burst memory keeps the highest sample for half an hour,
    and would keep the noise). A hard threshold kept the whole change once past it: on mooncake,
    clumps of arrivals the fleet absorbed by the next scrape (13 -> 34 -> 10 in flight) were planned
    and held as 5 req/s peaks on 3.5 steady, 5-7 replicas where 4 meet the SLO (5.77 -> 4.69 GPU-h);
    a real rise loses its two spreads too (36 -> 32.6 req/s at onoff-11's first burst). A backlog
    drains when there was one (more waiting than one per Ready replica), it shrank beyond chance,
    and at that pace it is gone within the horizon: a queue that dips by a few requests, or would
    take longer than new replicas to clear, is still a shortage.
    """
    waiting, running = signals.requests_waiting, signals.requests_running
    if waiting is None or running is None or seen is None or not 0 < at - seen[0] <= max_age_s:
        return None, False
    t0, waiting0, running0 = seen
    dt = at - t0
    change = waiting + running - waiting0 - running0
    shrink = waiting0 - waiting
    draining = (waiting0 > max(1.0, float(ready)) and shrink > 2 * math.sqrt(waiting0 + 1)
                and waiting / (shrink / dt) <= horizon_s)
    noise = 2 * math.sqrt(2 * max(0.0, completions) * dt + 1)
    if abs(change) <= noise:
        return completions, draining
    return max(0.0, completions + math.copysign(abs(change) - noise, change) / dt), draining


def window_arrivals(completions: float, scrapes: tuple[tuple[float, float, float], ...], window_s: float,
                    interval_s: float) -> float | None:
    """Requests arriving per second over the rate window: the completions over the window plus what
    the requests in flight grew by between the scrape nearest the window's start and the newest,
    per second of the span they really cover. Both terms span about the same window, so a drain's
    completions and its shrinking queue cancel and what is left is the load. None unless a scrape
    lies within one interval (or one spacing of the scrapes kept, see thin_scrapes) of the
    window's start: after a restart, two scrapes 15 s apart against 60 s of completions would mix
    windows again; scrapes that jitter a little past the window still count."""
    if len(scrapes) < 2:
        return None
    newest = scrapes[-1]
    # Within an interval of the window's start, but never half a window off (an interval at least as
    # long as the window would pair 30 s of completions with 60 s of growth).
    slack = min(max(interval_s, scrape_spacing_s(window_s)), window_s / 2) + SAME_SCRAPE_S
    start = min(scrapes[:-1], key=lambda q: abs(newest[0] - q[0] - window_s))
    span = newest[0] - start[0]
    if abs(span - window_s) > slack or span <= 0:
        return None
    return max(0.0, completions + (newest[1] + newest[2] - start[1] - start[2]) / span)


def scrape_spacing_s(window_s: float) -> float:
    """The queue scrapes kept are at least this far apart (bar the last two): enough to find the
    window's start to a twelfth of it, and a short interval keeps a dozen, not hundreds."""
    return window_s / SCRAPES_PER_WINDOW


def thin_scrapes(scrapes: tuple[tuple[float, float, float], ...], window_s: float) -> tuple[tuple[float, float, float], ...]:
    """Drop scrapes closer than scrape_spacing_s to the one kept before them, bar the last two
    (arrival_rate compares those): status stays small with a 1 s interval and a 10 min window."""
    if len(scrapes) <= 2:
        return scrapes
    spacing = scrape_spacing_s(window_s) - SAME_SCRAPE_S
    kept: list[tuple[float, float, float]] = []
    for q in scrapes[:-2]:
        if not kept or q[0] - kept[-1][0] >= spacing:
            kept.append(q)
    return (*kept, *scrapes[-2:])


def _slope(points: list[tuple[float, float]]) -> float | None:
    n = len(points)
    if n < 3:
        return None
    ts, vs = list(map(_TIME, points)), list(map(_RATE, points))
    mt = sum(ts) / n
    mv = sum(vs) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / var


def last_window_slope(samples: list[tuple[float, float]], now: float, window_s: float) -> float | None:
    """The slope over the last rate window: least squares over its samples, or, with fewer than
    three in it (decisions a third of a window apart or more, or one a little late), from the sample
    nearest one window back to the newest; then None when no sample lies at least half a window
    back (nothing to measure a window's change by). No slack past the window: an older sample comes
    from the rise itself and would lift the slope of a load that levelled off."""
    within = [s for s in samples if now - s[0] <= window_s]
    if len(within) >= 3:
        return _slope(within)
    back = [s for s in samples[:-1] if now - s[0] >= window_s / 2]
    if not back:
        return None
    t0, v0 = min(back, key=lambda s: abs(now - s[0] - window_s))
    t1, v1 = samples[-1]
    return (v1 - v0) / (t1 - t0) if t1 > t0 else None


def trend_forecast(samples: tuple[tuple[float, float], ...], now: float, horizon_s: float, window_s: float) -> float | None:
    """Current rate plus the upward trend over the horizon (least squares over recent samples).

    Only upward trends are extrapolated: a falling trend is left to the burst memory and the
    scale-down window, since under-forecasting costs SLO and over-forecasting costs money.
    Nor is a rise that has stopped: the slope is the lesser of the one over the reach and the one
    over the last rate window. Each sample is a window's rate, so a step shows in full one window
    after it came; past that, the slope over the reach still carried the step and extrapolated a
    load that had levelled off (onoff-14's first burst, flat at 45 req/s, was planned as 86 for two
    minutes: six replicas where three carried it, held for the scale-down window). A ramp still
    under way rises within the last window too. (A rate window as long as the reach changes
    nothing: its rates lag a step for that long, and the rise they show is still arriving.)
    """
    if not samples:
        return None
    current = samples[-1][1]
    reach = max(120.0, horizon_s)
    recent = [s for s in samples if now - s[0] <= reach]
    slope = _slope(recent)
    if slope is None:
        return current
    if slope > 0:
        last = last_window_slope(recent, now, window_s)
        slope = slope if last is None else min(slope, last)
    if slope <= 0:
        return current
    # Damp the extrapolation: a trend seen over a short window is weak evidence.
    return current + 0.5 * slope * horizon_s


def recent_peak(samples: tuple[tuple[float, float], ...], now: float, hold_s: float) -> float | None:
    """The highest rate seen within `hold_s`."""
    return max((v for t, v in samples if now - t <= hold_s), default=None)


def chance_excess(peak: float, hold_s: float, window_s: float) -> float:
    """How far the highest of the rate windows within `hold_s` may lie above the load by chance.

    A window's rate is a Poisson count over `window_s`, spread sqrt(rate / window); the largest of
    k independent windows lies about sqrt(2 ln k) spreads above the rest, so on steady traffic the
    burst memory held that chance maximum as a peak (mooncake, servegen-day, the quiet parts of
    azure-code). The spread is taken at the peak, the multiplier from the windows the hold spans
    (1.8 for five minutes of one-minute windows, 2.6 for half an hour). `peak` is the highest window
    held."""
    if window_s <= 0:
        return 0.0
    k = max(2.0, hold_s / window_s)
    return math.sqrt(2 * math.log(k)) * math.sqrt(max(peak, 0.0) / window_s)


def quantile(values: tuple[float, ...], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def error_budget(samples: tuple[tuple[float, float], ...], miss_share: float) -> float:
    """Requests the SLO allows to miss over the burst memory: `miss_share` of the requests it holds
    (the mean of the samples kept, over the whole span; thinning keeps peaks, so this errs high)."""
    return miss_share * sum(map(_RATE, samples)) / len(samples) * SAMPLES_KEPT_S if samples else 0.0


def over_budget(budget: float, peak: float, horizon_s: float) -> bool:
    """Would one returning burst spend more than the SLO's error budget (see error_budget)?

    Capacity released in a lull is back a horizon after the burst returns; until then the queue
    grows and nearly every request misses: about peak x horizon misses.
    """
    return peak > 0 and peak * horizon_s > budget


def held_share(peak: float, horizon_s: float, ttft_target_s: float, budget: float) -> float:
    """The share of a peak to hold so that a returning burst's misses fit the error budget.

    With capacity C < peak P the queue grows at P - C and its delay at (P - C) / C per second: it
    passes the TTFT target after ttft x C / (P - C) seconds, and from then until new replicas are
    Ready (the horizon) about every request misses. Holding C = P x h / (ttft + h), where
    h = horizon - budget / P, keeps those misses within the budget: nearly the whole peak for a
    1 s target (0.99 at a 105 s horizon), less where the target itself absorbs a queue (0.90 for a
    10 s target).
    """
    if peak <= 0:
        return 1.0
    h = horizon_s - budget / peak
    if h <= 0:
        return 0.0
    return h / (ttft_target_s + h)


def hold_time(gaps: tuple[float, ...], horizon_s: float, first_hold_s: float, overspent: bool = False) -> float:
    """How long to hold a peak. Once bursts have been seen to come back (a lull ended), and a
    returning burst would spend more than the error budget (`overspent`), for the whole burst
    memory: capacity is released only once the peak is half an hour old. Otherwise one horizon,
    plus the lull that bursts usually come back within; before two lulls have ended,
    `first_hold_s` (the scale-down window); when lulls are usually long, one horizon only."""
    if overspent and gaps:
        return SAMPLES_KEPT_S
    if len(gaps) < 2:
        return max(horizon_s, first_hold_s)
    if quantile(gaps, 0.5) > LONG_GAP_S:
        return horizon_s
    return horizon_s + min(quantile(gaps, GAP_QUANTILE), LONG_GAP_S)


MIN_RETURNS = 9  # returning bursts seen before their growth replaces targetUtilization's headroom


def burst_headroom(growth: tuple[float, ...], utilization: float) -> float:
    """How far above a held peak to plan (at full capacity): targetUtilization's headroom
    (1 / utilization), or less once MIN_RETURNS bursts have come back and none of those remembered
    came back higher than that above the peak held for it: as high as the highest did (never below
    the peak itself)."""
    if len(growth) < MIN_RETURNS:
        return 1 / utilization
    return min(1 / utilization, max(1.0, max(growth)))


RECORD_BUCKET_S = 3600.0  # the long memory keeps one record per hour
RECORD_KEPT_S = 86400.0  # for a day
BIG_RISE_SHARE = 0.5  # an hour whose largest rise is at least half the day's brought a big rise
MIN_BIG_RISES = 2  # a big rise held only once one has come back (a single load test is no pattern)


RISING_FACTOR = 1.25


def rising_since(samples: tuple[tuple[float, float], ...], now: float, rate: float, interval_s: float,
                 window_s: float) -> tuple[float, float] | None:
    """(the rate at the decision before, the rate now) when the load rose between them by more
    than RISING_FACTOR and beyond chance (two windows' Poisson counts: twice the spread of their
    difference); None otherwise, or when the decision before is more than two intervals old. (The
    rate planned for moves by a tenth between decisions on a steady load as a queue's arrivals are
    estimated; a burst's onset moves it by half or more.)"""
    if not samples or not 0 < now - samples[-1][0] <= 2 * interval_s or window_s <= 0:
        return None
    before = samples[-1][1]
    return (before, rate) if rate - RISING_FACTOR * before > 2 * math.sqrt(2 * max(rate, 0.0) / window_s) else None


def rise_within(samples: tuple[tuple[float, float], ...], now: float, rate: float, horizon_s: float,
                window_s: float) -> tuple[float, float]:
    """(how far the load rose within one horizon (cold start + interval) to `rate`, when the rise
    began): what capacity ordered at its start could not have met. Each window's rate is a Poisson
    count, so the difference of two windows spreads by sqrt(2) of one window's spread, and the lowest
    of the k windows within the horizon lies about sqrt(2 ln k) spreads below the load by chance:
    both count as no rise (on a steady 1 req/s a rise of 0.4 req/s is chance). (0, now) when
    nothing within the horizon is lower."""
    before = [s for s in samples if 0 < now - s[0] <= horizon_s]
    if not before:
        return 0.0, now
    t_low, low = min(before, key=_RATE)
    spread = math.sqrt(max(rate, 0.0) / window_s) if window_s > 0 else 0.0
    rise = rate - low - (math.sqrt(2.0) + math.sqrt(2 * math.log(max(2, len(before))))) * spread
    return (rise, t_low) if rise > 0 else (0.0, now)


def _hour(t: float) -> float:
    return math.floor(t / RECORD_BUCKET_S) * RECORD_BUCKET_S


def record_load(record: tuple[tuple[float, float, float, float], ...], now: float, rate: float, rise: float,
                rise_at: float, requests: float) -> tuple[tuple[float, float, float, float], ...]:
    """The long memory with one decision added: the hour's highest rate and requests since the
    previous decision (each decision adds its own span once), and the largest rise in the hour it
    began (`rise_at`), so that a burst at a turn of the hour counts in one hour, not in two (a
    maximum: seeing a rise again changes nothing). Records older than a day, or from "after" now (a
    clock that stepped back), are dropped."""
    hour = _hour(now)
    kept = [r for r in record if now - (r[0] + RECORD_BUCKET_S) < RECORD_KEPT_S and r[0] <= hour]
    if not kept or kept[-1][0] != hour:
        kept.append((hour, 0.0, 0.0, 0.0))
    h, top, jump, n = kept[-1]
    kept[-1] = (h, max(top, rate), jump, n + requests)
    began = _hour(rise_at)
    at = next((i for i, r in enumerate(kept) if r[0] == began), len(kept) - 1)
    r = kept[at]
    kept[at] = (r[0], r[1], max(r[2], rise), r[3])
    return tuple(kept)


def long_memory(record: tuple[tuple[float, float, float, float], ...], rate: float, horizon_s: float,
                miss_share: float) -> tuple[float, float] | None:
    """(load to hold, largest rise) from the last day's records, or None when holding is not worth it.

    A rise of J req/s within one cold start, met by capacity for today's load alone, costs about
    J x horizon missed requests. Once MIN_BIG_RISES hours of the day brought one of at least half of
    J (a big rise came back), and those hours' misses (J x horizon each) would spend more than the
    SLO's error budget over the day's requests (its miss share of them), capacity for today's load
    plus J is held, never above the day's highest rate. On/off traffic whose bursts come at random
    heights so keeps what its biggest burst needs (with the half-hour burst memory alone, a 45 req/s
    burst after two hours of smaller ones met two replicas where three were needed); a single burst
    in a day (a load test) holds nothing beyond the burst memory, and a load that moves slowly (a
    daily cycle) rises little within a cold start and keeps little more than it needs.
    """
    if not record:
        return None
    jump = max(r[2] for r in record)
    if jump <= 0:
        return None
    big = sum(1 for r in record if r[2] >= BIG_RISE_SHARE * jump)
    if big < MIN_BIG_RISES or big * jump * horizon_s <= miss_share * sum(r[3] for r in record):
        return None
    return min(rate + jump, max(r[1] for r in record)), jump


def _keep(samples: tuple[tuple[float, float], ...], now: float) -> tuple[tuple[float, float], ...]:
    recent = [s for s in samples if now - s[0] <= SAMPLES_KEPT_S]
    while len(recent) > MAX_SAMPLES:
        # Thin the older half by pairs, keeping each pair's peak (at the later time, so a held peak
        # is never forgotten early): the burst memory lives on peaks.
        half = len(recent) // 2 // 2 * 2
        old = [(recent[i + 1][0], max(recent[i][1], recent[i + 1][1])) for i in range(0, half, 2)]
        recent = old + recent[half:]
    return tuple(recent)


def forecast(spec: LLMDeploymentSpec, variant: Variant, workload: Workload, signals: Signals, history: History,
             now: float) -> Forecast:
    interval = parse_duration(spec.scaling.interval)
    horizon = cold_start_s(spec, variant, workload) + interval
    completions = signals.request_rate
    waiting, running = signals.requests_waiting, signals.requests_running
    # The gauges change only when scraped: growth is measured between the last two distinct scrapes,
    # not between decisions. A decision that sees the same scrape again (Prometheus scraping less
    # often than the operator decides) measures between the same two, and reaches the same verdict.
    at = signals.sampled_at if signals.sampled_at is not None else now
    window = parse_duration(spec.metrics.rate_window)
    # A window and a little more (a scrape that jitters past the window's start still marks it).
    kept_s = max(window + max(interval, scrape_spacing_s(window)), MAX_QUEUE_AGE_INTERVALS * interval) + SAME_SCRAPE_S
    # Oldest first, none later than the scrape now: a scrape time that steps back (Prometheus's
    # clock, a hand-edited status) restarts the window rather than leaving the scrapes out of order.
    scrapes = tuple(q for q in history.queue_scrapes if -SAME_SCRAPE_S <= at - q[0] <= kept_s)
    if waiting is not None and running is not None and (not scrapes or at - scrapes[-1][0] > SAME_SCRAPE_S):
        scrapes = thin_scrapes(scrapes + ((at, waiting, running),), window)
    before = scrapes[-2] if len(scrapes) >= 2 else None
    first_hold = parse_duration(spec.scaling.scale_down.stabilization_window)
    if completions is None:
        return Forecast(None, horizon, hold_time(history.burst_gaps, horizon, first_hold),
                        history.with_(queue_scrapes=scrapes))
    arrivals, draining = arrival_rate(completions, signals, before, at, MAX_QUEUE_AGE_INTERVALS * interval,
                                      workload.ready, horizon)
    rate = completions if arrivals is None else max(completions, arrivals)
    windowed = window_arrivals(completions, scrapes, window, interval)
    if windowed is not None and (draining or completions - windowed > 2 * math.sqrt(2 * completions * window + 1) / window):
        # A backlog drains, or the window still holds one that drained (the requests in flight
        # shrank beyond chance over it): the completions count the backlog served, so the window's
        # arrivals stand, and not the higher of them and the two-scrape estimate, which adds the last
        # interval's small change to those completions (onoff-20: 56.5 req/s recorded, and held for
        # half an hour, the minute after a drain, for 42.7 arriving).
        rate = windowed
    history = history.with_(queue_scrapes=scrapes)
    last = history.rate_samples[-1][0] if history.rate_samples else None
    span = interval if last is None else min(max(0.0, now - last), 2 * interval)
    rise, rise_at = rise_within(history.rate_samples, now, rate, horizon, window)
    rising = rising_since(history.rate_samples, now, rate, interval, window)
    # A rise goes on while the load keeps rising within a horizon: it began when the first decision
    # saw it, not at the lowest window in reach of each later one (which slides past the turn of an
    # hour and would count one burst in two hours).
    going_on = (history.rise_since is not None and history.rise_since <= now and last is not None
                and now - last <= 2 * interval)  # a rise seen at the decision before (not one a restart left)
    rise_since = ((history.rise_since if going_on else rise_at) if rise > 0 else None)
    record = record_load(history.load_record, now, rate, rise, rise_since if rise_since is not None else now, rate * span)
    samples = _keep(history.rate_samples + ((now, rate),), now)
    miss_share = 1 - (spec.slo.ttft.percentile / 100 if spec.slo.ttft else 0.95)
    budget = error_budget(samples, miss_share)
    longest = max(map(_RATE, samples))  # every sample kept is within the burst memory
    overspent = over_budget(budget, longest, horizon)
    hold = hold_time(history.burst_gaps, horizon, first_hold, overspent)
    trend = trend_forecast(samples, now, horizon, window) or rate
    held = longest if hold >= SAMPLES_KEPT_S else recent_peak(samples, now, hold)
    peak = held or rate
    if held is not None:
        peak = max(rate, peak - chance_excess(held, hold, window))
    if overspent and history.burst_gaps and spec.slo.ttft:
        # Held for the error budget: as much of the peak as keeps a returning burst's misses in it.
        peak = max(rate, peak * held_share(peak, horizon, spec.slo.ttft.seconds, budget))
    # The burst memory: the length of each lull, counted once, when the load comes back to the
    # peak the lull fell from (not when that peak drops out of the hold: a lull outlasts it); and
    # each returning burst's height over the load held for it (that peak, or the long memory's),
    # counted once, when the next lull begins.
    hist = history.with_(rate_samples=samples, load_record=record)
    # The long memory's load to hold, as the burst memory's peak: less what the highest of the burst
    # memory's windows lies above the load by chance, and the share that keeps a returning burst's
    # misses in the error budget.
    kept = long_memory(record, rate, horizon, miss_share)
    long_level: float | None = None
    if kept is not None:
        top = max(r[1] for r in record)
        long_level = max(rate, min(kept[0], top - chance_excess(top, SAMPLES_KEPT_S, window)))
        if spec.slo.ttft:
            long_level = max(rate, long_level * held_share(long_level, horizon, spec.slo.ttft.seconds, budget))
    from_long = long_level is not None and long_level > peak
    # The load held above today's (None when nothing is: a hold that ran out holds only the load).
    level_held = long_level if from_long and long_level is not None else peak
    held_above = level_held if level_held > 1.05 * rate and level_held > 0 else None
    hist = hist.with_(rise_since=rise_since, held_level=held_above)
    if history.burst_from is not None:
        hist = hist.with_(burst_top=max(history.burst_top or 0.0, rate))
    if history.quiet_since is None:
        if rate < QUIET_SHARE * peak:
            hist = hist.with_(quiet_since=now, lull_peak=peak, burst_from=None, burst_since=None, burst_top=None)
            if history.burst_from and history.burst_since is not None:
                # The burst's height: the highest rate seen since it came back (the running top, and
                # the rate samples since, kept in status: a restart mid-burst loses none of it).
                top = max([history.burst_top or 0.0] + [v for t, v in history.rate_samples if t >= history.burst_since])
                if top > 0:
                    hist = hist.with_(burst_growth=(history.burst_growth + (top / history.burst_from,))[-MAX_GAPS:])
    elif history.lull_peak is None:
        hist = hist.with_(quiet_since=None)  # a lull whose peak was lost (a malformed status): no gap to learn
    elif rate >= QUIET_SHARE * history.lull_peak:
        gap = now - history.quiet_since
        # Measured against the load held at the decision before it came back (the burst's own rate
        # lifts what the long memory would hold now); a burst that came back to released capacity
        # (nothing held above the load) teaches no headroom.
        hist = hist.with_(quiet_since=None, lull_peak=None, burst_gaps=(history.burst_gaps + (gap,))[-MAX_GAPS:],
                          burst_from=history.held_level, burst_since=now if history.held_level else None,
                          burst_top=rate if history.held_level else None)
    util = spec.scaling.target_utilization
    headroom = burst_headroom(hist.burst_growth, util)
    reasons: tuple[Reason, ...] = ()
    if kept is not None and long_level is not None and from_long:
        held, peak = long_level, long_level
        reasons = (Reason(Code.BURST_MEMORY, f"holding capacity for {peak:.2f} req/s: the load rose by {kept[1]:.2f} req/s "
                          f"within one cold start in {sum(1 for r in record if r[2] >= BIG_RISE_SHARE * kept[1])} hours "
                          f"of the last day (now {rate:.2f} req/s)"),)
    elif peak > max(trend, rate) * 1.05 and peak > 0:
        reasons = (Reason(Code.BURST_MEMORY, f"holding capacity for the {peak:.2f} req/s peak of the last {hold:.0f}s "
                          f"(now {rate:.2f} req/s)"),)
    if held is not None and not from_long and headroom < 1 / util and peak > 1.05 * rate:
        # Bursts have come back no higher than the peak held for them: a rise toward it is a burst
        # returning, not a ramp to extrapolate past it (onoff-14: each return's onset planned 4
        # replicas, held for the scale-down window, where the 3 kept for the peak carried it). A
        # load at or past the peak held is extrapolated as ever, and so is any load under the long
        # memory's level (today's load plus the day's largest rise: a ramp there is no return).
        trend = min(trend, max(rate, peak * headroom * util))
    # Drain today's queue within the horizon, but never plan on draining faster than in two
    # minutes: a burst's backlog is transient and would otherwise overshoot to the ceiling.
    # A queue that already shrinks needs nothing more: vLLM's queue is per pod, so replicas
    # added now would serve only new arrivals, which the plan already counts.
    queue = waiting / max(horizon, 120.0) if waiting and not draining else 0.0
    value = max(trend, peak)
    utilization: float | None = None
    if held is not None and peak > 1.05 * trend and headroom < 1 / util:
        # The held peak already is the load a returning burst brings: plan over it for how much
        # higher bursts came back, not for targetUtilization's margin over a forecast (onoff-20:
        # 42.7 req/s held at 85 % planned 4 replicas where 3 carried 48 req/s all along).
        full = max((trend + queue) / util, (peak + queue) * headroom)
        utilization = (value + queue) / full if full > 0 else None
        reasons += (Reason(Code.BURST_MEMORY, f"the last {len(hist.burst_growth)} returning bursts came back at most "
                           f"{headroom:.2f}x the load held for them: it is planned with that headroom, not "
                           f"targetUtilization's"),)
    return Forecast(value + queue, horizon, hold, hist, reasons, arrivals, draining, utilization, rising)
