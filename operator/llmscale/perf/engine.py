"""A deterministic, event-driven simulator of one vLLM server (V1 scheduler, continuous batching).

Each engine step decodes one token for every running sequence and spends the rest of the
token budget (max_num_batched_tokens) on chunked prefill of admitted requests, FIFO. Runs of
pure-decode steps between two events are advanced in one go (a "macro step"), so an hour of
a busy replica costs milliseconds, not a loop per token.

Simplifications, stated: KV space for prompt + output is reserved at admission (vLLM allocates
incrementally and preempts; we never preempt), prefix caching is off, and all sequences of a
step see the same step time.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from . import buckets
from .hardware import ServerProfile


@dataclass(slots=True)
class Request:
    id: int
    arrival: float
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Finished:
    """What happened to one request: the twin's request-level accounting."""

    id: int
    arrival: float
    queue_s: float
    ttft_s: float
    itl_s: float  # mean gap between output tokens (TPOT); 0 for one-token outputs
    e2e_s: float
    input_tokens: int
    output_tokens: int
    rejected: bool = False


class Histogram:
    """Cumulative bucket counts with Prometheus semantics (le = upper bound, +Inf last)."""

    __slots__ = ("edges", "counts", "sum", "count")

    def __init__(self, edges: tuple[float, ...]):
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[int]:
        out, acc = [], 0
        for c in self.counts:
            acc += c
            out.append(acc)
        return out


@dataclass
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: int = 0
    aborted: int = 0
    busy_s: float = 0.0
    ttft: Histogram = field(default_factory=lambda: Histogram(buckets.TTFT))
    itl: Histogram = field(default_factory=lambda: Histogram(buckets.ITL))
    e2e: Histogram = field(default_factory=lambda: Histogram(buckets.REQUEST_LATENCY))
    queue: Histogram = field(default_factory=lambda: Histogram(buckets.REQUEST_LATENCY))
    # Tokens of each finished request, observed when it finishes (vLLM's request-level histograms).
    request_prompt: Histogram = field(default_factory=lambda: Histogram(buckets.REQUEST_TOKENS))
    request_generation: Histogram = field(default_factory=lambda: Histogram(buckets.REQUEST_TOKENS))


class Engine:
    def __init__(self, profile: ServerProfile, start: float = 0.0, record: bool = True, max_model_len: int | None = None):
        self.profile = profile
        # vLLM answers 400 to a request whose prompt and output pass --max-model-len: never served.
        self.max_model_len = max_model_len or math.inf
        self.clock = start
        self.record = record
        self.kv_capacity = profile.kv_capacity_tokens
        self.waiting: deque[Request] = deque()
        self.prefilling: list[list] = []  # [request, tokens_done, admitted_at]
        self.running: list[tuple[int, int]] = []  # heap of (finish_counter, request id)
        self.meta: dict[int, tuple[Request, float, float, int]] = {}  # id -> (req, admitted, first_token, start_counter)
        self.counter = 0  # decode tokens emitted per running sequence so far
        self.sum_input_running = 0
        self.sum_start_running = 0
        self.kv_reserved = 0
        self.counters = EngineCounters()
        self.finished: list[Finished] = []

    # ---- observable state -------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running) + len(self.prefilling)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    @property
    def kv_usage(self) -> float:
        if self.kv_capacity <= 0:
            return 1.0
        used = self._context_tokens() + sum(p[1] for p in self.prefilling)
        return min(1.0, used / self.kv_capacity)

    def _context_tokens(self) -> int:
        b = len(self.running)
        return self.sum_input_running + b * self.counter - self.sum_start_running

    # ---- input ------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        self.waiting.append(req)

    def drain_finished(self) -> list[Finished]:
        out, self.finished = self.finished, []
        return out

    # ---- simulation -------------------------------------------------------------------------
    def _admit(self) -> None:
        p = self.profile
        while self.waiting and len(self.running) + len(self.prefilling) < p.max_num_seqs:
            req = self.waiting[0]
            if req.arrival > self.clock:
                # Not here yet: a caller may submit ahead of the engine's clock (the fleet simulator
                # submits a tick's arrivals at once), and a step must not start on it early.
                break
            need = req.input_tokens + req.output_tokens
            if need > self.kv_capacity or need > self.max_model_len:  # can never fit: vLLM rejects it at the API
                self.waiting.popleft()
                self._reject(req)
                continue
            if self.kv_reserved + need > self.kv_capacity:
                break
            self.waiting.popleft()
            self.kv_reserved += need
            self.prefilling.append([req, 0, max(self.clock, req.arrival)])

    def _reject(self, req: Request) -> None:
        self.counters.aborted += 1
        self.finished.append(
            Finished(req.id, req.arrival, 0.0, math.inf, math.inf, math.inf, req.input_tokens, req.output_tokens, True)
        )

    def _finish_due(self) -> None:
        while self.running and self.running[0][0] <= self.counter:
            _, rid = heapq.heappop(self.running)
            req, admitted, first, start = self.meta.pop(rid)
            self.sum_input_running -= req.input_tokens
            self.sum_start_running -= start
            self.kv_reserved -= req.input_tokens + req.output_tokens
            self._complete(req, admitted, first)

    def _complete(self, req: Request, admitted: float, first: float) -> None:
        c = self.counters
        e2e = self.clock - req.arrival
        ttft = first - req.arrival
        itl = (self.clock - first) / (req.output_tokens - 1) if req.output_tokens > 1 else 0.0
        c.success += 1
        c.generation_tokens += req.output_tokens
        c.prompt_tokens += req.input_tokens
        c.e2e.observe(e2e)
        c.queue.observe(admitted - req.arrival)
        c.request_prompt.observe(req.input_tokens)
        c.request_generation.observe(req.output_tokens)
        if self.record:
            self.finished.append(
                Finished(req.id, req.arrival, admitted - req.arrival, ttft, itl, e2e, req.input_tokens, req.output_tokens)
            )

    def advance(self, until: float) -> None:
        """Run engine steps until the clock reaches `until` (it may pass it by less than one step)."""
        p = self.profile
        c = self.counters
        while self.clock < until:
            self._admit()
            b = len(self.running)
            if self.prefilling:
                budget = max(0, p.max_batched_tokens - b)
                chunk_total, ctx_weighted = 0, 0.0
                plan = []
                for entry in self.prefilling:
                    if budget <= 0:
                        break
                    req, done, _ = entry
                    take = min(budget, req.input_tokens - done)
                    plan.append((entry, take))
                    chunk_total += take
                    ctx_weighted += take * (done + take / 2)
                    budget -= take
                dt = p.step_seconds(b, self._context_tokens(), chunk_total, ctx_weighted / max(1, chunk_total))
                self.clock += dt
                c.busy_s += dt
                if b:
                    self.counter += 1
                    c.itl.observe(dt, b)
                still = []
                done_ids = set()
                for entry, take in plan:
                    entry[1] += take
                    if entry[1] >= entry[0].input_tokens:
                        done_ids.add(id(entry))
                        self._first_token(entry[0], entry[2])
                for entry in self.prefilling:
                    if id(entry) not in done_ids:
                        still.append(entry)
                self.prefilling = still
                self._finish_due()
            elif b:
                dt = p.step_seconds(b, self._context_tokens() + b * 0.5, 0)
                to_finish = self.running[0][0] - self.counter
                k = max(1, min(to_finish, math.ceil((until - self.clock) / dt)))
                if self.waiting and len(self.running) < p.max_num_seqs:
                    # A blocked queue may unblock at the next completion; until then decode only.
                    k = max(1, min(k, to_finish))
                    if self.waiting[0].arrival > self.clock:  # and a request yet to arrive joins at its arrival
                        k = max(1, min(k, math.ceil((self.waiting[0].arrival - self.clock) / dt)))
                if k > 1:
                    dt = p.step_seconds(b, self._context_tokens() + b * k / 2, 0)
                self.clock += k * dt
                c.busy_s += k * dt
                self.counter += k
                c.itl.observe(dt, b * k)
                self._finish_due()
            else:
                if self.waiting and self.waiting[0].arrival > self.clock:  # idle until the next arrival
                    self.clock = min(until, self.waiting[0].arrival)
                    continue
                if self.waiting:  # nothing runs and the head cannot be admitted: reject it
                    self._reject(self.waiting.popleft())
                    continue
                self.clock = until

    def _first_token(self, req: Request, admitted: float) -> None:
        c = self.counters
        c.ttft.observe(self.clock - req.arrival)
        if req.output_tokens <= 1:
            self.kv_reserved -= req.input_tokens + req.output_tokens
            self._complete(req, admitted, self.clock)
            return
        # The prefill step produced the first token; output_tokens - 1 decode steps remain.
        finish = self.counter + req.output_tokens - 1
        heapq.heappush(self.running, (finish, req.id))
        self.meta[req.id] = (req, admitted, self.clock, self.counter)
        self.sum_input_running += req.input_tokens
        self.sum_start_running += self.counter
