"""The vLLM fleet simulator of the e2e test bed.

One process that watches the pods of every LLMDeployment through the API server and, for each
Ready pod, runs the performance model (llmscale.perf.Engine) in wall-clock time and serves its
metrics in vLLM's and dcgm-exporter's formats, labelled as Prometheus would label a scraped pod
(namespace, pod) plus `llmd`, the LLMDeployment name that the chart's PodMonitor relabels from
the pod label llmscale.io/deployment. A gateway queues each deployment's traffic while none of
its pods is Ready and routes it to them as its traffic's "routing" says, which should be the
LLMDeployment's spec.routing: "Service" (the default, as the operator's Service spreads requests:
each to a Ready pod at random) or "LoadAware" (to the pod with the fewest outstanding requests).

Control API (JSON):
  PUT  /traffic/<namespace>/<name>  {"rate": 5, "meanInput": 1024, "meanOutput": 256}
                                    or {"scenario": "step", "rate": 5, "duration": 600, "seed": 0}
                                    or {"trace": "/path/file.csv", "rateScale": 1, "speedup": 10}
                                    any of them with "routing": "Service" (default) or "LoadAware"
                                    any of them with "slo": {"ttft": 1.0, "itl": 0.1} (seconds)
                                    starts counting that deployment's requests against those
                                    targets, one by one (see Tally), until the next "slo"
  GET  /traffic                     current traffic per deployment
  GET  /traffic/<namespace>/<name>  its traffic and, once an "slo" was given, its Tally
  GET  /healthz                     ok
  GET  /metrics                     Prometheus exposition
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from llmscale.api.models import Routing
from llmscale.perf import Engine, Request, buckets, server_profile
from llmscale.perf.engine import Finished
from llmscale.policy.capacity import arg_value, human_int, memory_utilization

from .traffic import SCENARIOS, Trace, TraceError, load_trace, scenario

log = logging.getLogger("llmscale.fleet")
DEPLOYMENT_LABEL = "llmscale.io/deployment"


@dataclass
class SimPod:
    namespace: str
    name: str
    uid: str
    deployment: str
    model: str
    accelerator: str
    gpus: int
    engine: Engine
    draining: bool = False
    gpu_uuids: list[str] = field(default_factory=list)


@dataclass
class Traffic:
    """Arrivals of one deployment: Poisson at `rate` or a replayed trace (wall-clock, looped)."""

    rate: float = 0.0
    mean_input: int = 1024
    mean_output: int = 256
    trace: Trace | None = None
    trace_start: float = 0.0
    trace_index: int = 0
    description: str = "idle"
    load_aware: bool = False  # routed to the least-loaded pod, not at random (a Service)

    def arrivals(self, rng: random.Random, t0: float, t1: float) -> list[tuple[float, int, int]]:
        out = []
        if self.trace is not None and self.trace.arrivals:
            arr = self.trace.arrivals
            while True:
                if self.trace_index >= len(arr):
                    self.trace_index = 0
                    self.trace_start += arr[-1].t + 1.0
                a = arr[self.trace_index]
                t = self.trace_start + a.t
                if t >= t1:
                    break
                out.append((t, a.input_tokens, a.output_tokens))
                self.trace_index += 1
            return out
        if self.rate <= 0:
            return out
        n = _poisson(rng, self.rate * (t1 - t0))
        for _ in range(n):
            inp = max(1, int(rng.lognormvariate(math.log(self.mean_input) - 0.18, 0.6)))
            outp = max(1, int(rng.lognormvariate(math.log(self.mean_output) - 0.18, 0.6)))
            out.append((rng.uniform(t0, t1), inp, outp))
        out.sort()
        return out


@dataclass
class Tally:
    """Request-level accounting of one deployment against SLO targets, as the twin does it (a
    request meets the inter-token target when its mean gap between output tokens does), for
    benchmarks that compare the test bed with the twin: vLLM's histograms count gaps, not
    requests, so the joint attainment (every target met by the same request) cannot be read from
    Prometheus. Requests that arrived since the targets were set and were never served (still
    queued, rejected) count against `arrived` only."""

    ttft_s: float | None
    itl_s: float | None
    since: float
    arrived: int = 0
    finished: int = 0
    rejected: int = 0
    within_ttft: int = 0
    within_itl: int = 0
    within_all: int = 0

    def add(self, f: Finished) -> None:
        if f.arrival < self.since:
            return
        if f.rejected:
            self.rejected += 1
            return
        self.finished += 1
        ttft_ok = self.ttft_s is None or f.ttft_s <= self.ttft_s
        itl_ok = self.itl_s is None or f.output_tokens <= 1 or f.itl_s <= self.itl_s
        self.within_ttft += ttft_ok
        self.within_itl += itl_ok
        self.within_all += ttft_ok and itl_ok

    def as_json(self) -> dict[str, Any]:
        return {"targets": {"ttft": self.ttft_s, "itl": self.itl_s}, "arrived": self.arrived, "finished": self.finished,
                "rejected": self.rejected, "withinTTFT": self.within_ttft, "withinITL": self.within_itl,
                "withinAll": self.within_all}


def slo_targets(body: Any) -> tuple[float | None, float | None]:
    """(TTFT, inter-token) targets in seconds from a traffic body's "slo" object."""
    if not isinstance(body, dict) or not body.keys() <= {"ttft", "itl"}:
        raise TraceError('slo must be an object with "ttft" and/or "itl" targets in seconds')
    out: list[float | None] = []
    for k in ("ttft", "itl"):
        v = body.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise TraceError(f"slo.{k} must be a positive number of seconds")
        out.append(None if v is None else float(v))
    return out[0], out[1]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class Fleet:
    def __init__(self, seed: int = 0):
        self.lock = threading.Lock()
        self.pods: dict[str, SimPod] = {}
        self.traffic: dict[tuple[str, str], Traffic] = {}
        self.gateway: dict[tuple[str, str], deque[Request]] = {}
        self.arrived: dict[tuple[str, str], int] = {}
        self.tallies: dict[tuple[str, str], Tally] = {}
        self.rng = random.Random(seed)
        self.pick = random.Random(seed + 1)  # the Service's choice of pod (apart, so arrivals do not move with it)
        self.t0 = time.monotonic()
        self.last = 0.0
        self.next_id = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---- pods from the API server -----------------------------------------------------------
    def sync_pods(self, pods: list[dict[str, Any]]) -> None:
        """Reconcile with the listed pods (as the API server's JSON: at a thousand pods, building
        the client's model objects took a second of CPU per list): start engines for newly Ready
        pods, drain removed ones."""
        now = self.now()
        seen = set()
        with self.lock:
            for p in pods:
                md = p.get("metadata") or {}
                labels = md.get("labels") or {}
                dep = labels.get(DEPLOYMENT_LABEL)
                if not dep:
                    continue
                conditions = (p.get("status") or {}).get("conditions") or []
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
                uid = md.get("uid", "")
                if md.get("deletionTimestamp") is not None or not ready:
                    if uid in self.pods:
                        self.pods[uid].draining = True
                    continue
                seen.add(uid)
                if uid in self.pods:
                    self.pods[uid].draining = False
                    continue
                ann = md.get("annotations") or {}
                gpus = int(ann.get("llmscale.io/gpus", "1"))
                model = ann.get("llmscale.io/model", "model-8B")
                acc = ann.get("llmscale.io/accelerator", "nvidia-h100")
                # The memory share vLLM takes (--gpu-memory-utilization in its args) sizes its KV cache.
                args = next((c.get("args") or [] for c in (p.get("spec") or {}).get("containers") or []
                             if c.get("name") == "vllm"), [])
                util = memory_utilization([str(x) for x in args])
                prof = server_profile(model, acc, gpus) if util is None else server_profile(model, acc, gpus, util)
                limit = arg_value([str(x) for x in args], "max-model-len")
                longest = human_int(limit) if limit is not None else None
                ns, name = md.get("namespace", ""), md.get("name", "")
                self.pods[uid] = SimPod(ns, name, uid, dep, ann.get("llmscale.io/served-model-name", model),
                                        acc, gpus, Engine(prof, start=now, record=False, max_model_len=longest),
                                        gpu_uuids=[f"GPU-{uid[:8]}-{i}" for i in range(gpus)])
                log.info("pod %s/%s Ready: simulating %s on %d x %s", ns, name, model, gpus, acc)
            for uid, sp in self.pods.items():
                if uid not in seen:
                    sp.draining = True

    # ---- time ------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.now()
        with self.lock:
            t_prev = self.last
            self.last = now
            for key, tr in self.traffic.items():
                for t, inp, outp in tr.arrivals(self.rng, t_prev, now):
                    self.gateway.setdefault(key, deque()).append(Request(self.next_id, t, inp, outp))
                    self.arrived[key] = self.arrived.get(key, 0) + 1
                    self.next_id += 1
                    tally = self.tallies.get(key)
                    if tally is not None and t >= tally.since:
                        tally.arrived += 1
            serving: dict[tuple[str, str], list[SimPod]] = {}
            for p in self.pods.values():
                if not p.draining:
                    serving.setdefault((p.namespace, p.deployment), []).append(p)
            for key, q in self.gateway.items():
                ready = serving.get(key, [])
                routed = self.traffic.get(key)
                load_aware = routed is not None and routed.load_aware
                while q and ready:
                    if load_aware:
                        best = min(ready, key=lambda p: (p.engine.outstanding, p.name))
                    else:
                        best = ready[self.pick.randrange(len(ready))]
                    best.engine.submit(q.popleft())
            gone = []
            for uid, p in self.pods.items():
                tally = self.tallies.get((p.namespace, p.deployment))
                p.engine.record = tally is not None  # per-request records only where they are counted
                p.engine.advance(now)
                for f in p.engine.drain_finished():  # drained even where not counted: rejections are always recorded
                    if tally is not None:
                        tally.add(f)
                if p.draining and p.engine.outstanding == 0:
                    gone.append(uid)
            for uid in gone:
                del self.pods[uid]

    # ---- traffic control --------------------------------------------------------------------
    def set_traffic(self, namespace: str, name: str, body: dict[str, Any]) -> Traffic:
        targets = slo_targets(body["slo"]) if "slo" in body else None
        try:
            routing = Routing(body.get("routing", Routing.SERVICE))
        except ValueError:
            raise TraceError(f"routing must be one of {', '.join(r.value for r in Routing)}") from None
        now = self.now()  # one instant for the trace's start and the count's: an arrival at 0 counts
        if "trace" in body:
            trace = load_trace(body["trace"]).scaled(float(body.get("rateScale", 1)), float(body.get("speedup", 1)))
            tr = Traffic(trace=trace, trace_start=now, description=f"trace {trace.name}")
        elif "scenario" in body:
            name_ = str(body["scenario"])
            if name_ not in SCENARIOS:
                raise TraceError(f"unknown scenario {name_!r}; choose one of {', '.join(SCENARIOS)}")
            trace = scenario(name_, float(body.get("rate", 5)), float(body.get("duration", 600)),
                             int(body.get("meanInput", 1024)), int(body.get("meanOutput", 256)), int(body.get("seed", 0)))
            tr = Traffic(trace=trace, trace_start=now, description=f"scenario {name_}")
        else:
            rate = float(body.get("rate", 0))
            if not math.isfinite(rate) or rate < 0:
                raise TraceError("rate must be a non-negative number of requests per second")
            tr = Traffic(rate=rate, mean_input=int(body.get("meanInput", 1024)), mean_output=int(body.get("meanOutput", 256)),
                         description=f"poisson {rate:g} req/s")
        tr.load_aware = routing.pools
        with self.lock:
            self.traffic[(namespace, name)] = tr
            if targets is not None:
                self.tallies[(namespace, name)] = Tally(*targets, since=now)
        return tr

    def traffic_of(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One deployment's traffic and, once targets were set, its request tally; None if unknown."""
        with self.lock:
            tr = self.traffic.get((namespace, name))
            tally = self.tallies.get((namespace, name))
            if tr is None and tally is None:
                return None
            return {"traffic": tr.description if tr else "idle", **({"requests": tally.as_json()} if tally else {})}

    # ---- metrics -----------------------------------------------------------------------------
    def collect(self) -> list[Any]:
        with self.lock:
            return _families(list(self.pods.values()), self.gateway, self.arrived)


def _hist(fam: HistogramMetricFamily, labels: list[str], edges: tuple[float, ...], h: Any) -> None:
    cum = h.cumulative()
    b = [(repr(float(e)), float(c)) for e, c in zip(edges, cum[:-1], strict=True)] + [("+Inf", float(cum[-1]))]
    fam.add_metric(labels, b, float(h.sum))


def _families(pods: list[SimPod], gateway: dict, arrived: dict) -> list[Any]:
    lab = ["model_name", "engine", "namespace", "pod", "llmd"]
    g_run = GaugeMetricFamily("vllm:num_requests_running", "Number of requests in model execution batches.", labels=lab)
    g_wait = GaugeMetricFamily("vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=lab)
    g_kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=lab)
    c_prompt = CounterMetricFamily("vllm:prompt_tokens", "Number of prefill tokens processed.", labels=lab)
    c_gen = CounterMetricFamily("vllm:generation_tokens", "Number of generation tokens processed.", labels=lab)
    c_succ = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.", labels=lab + ["finished_reason"])
    c_pre = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels=lab)
    h_ttft = HistogramMetricFamily("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels=lab)
    h_itl = HistogramMetricFamily("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", labels=lab)
    h_e2e = HistogramMetricFamily("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels=lab)
    h_q = HistogramMetricFamily("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", labels=lab)
    h_prompt = HistogramMetricFamily("vllm:request_prompt_tokens", "Number of prefill tokens processed.", labels=lab)
    h_gen = HistogramMetricFamily("vllm:request_generation_tokens", "Number of generation tokens processed.", labels=lab)
    dlab = ["gpu", "UUID", "device", "modelName", "Hostname", "namespace", "pod", "container", "llmd"]
    d_util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=dlab)
    d_fb = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=dlab)
    d_active = GaugeMetricFamily("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.", labels=dlab)
    for p in pods:
        e = p.engine
        c = e.counters
        lv = [p.model, "0", p.namespace, p.name, p.deployment]
        g_run.add_metric(lv, e.num_running)
        g_wait.add_metric(lv, e.num_waiting)
        g_kv.add_metric(lv, e.kv_usage)
        c_prompt.add_metric(lv, c.prompt_tokens)
        c_gen.add_metric(lv, c.generation_tokens)
        c_succ.add_metric(lv + ["stop"], c.success)
        c_pre.add_metric(lv, 0)
        _hist(h_ttft, lv, buckets.TTFT, c.ttft)
        _hist(h_itl, lv, buckets.ITL, c.itl)
        _hist(h_e2e, lv, buckets.REQUEST_LATENCY, c.e2e)
        _hist(h_q, lv, buckets.REQUEST_LATENCY, c.queue)
        _hist(h_prompt, lv, buckets.REQUEST_TOKENS, c.request_prompt)
        _hist(h_gen, lv, buckets.REQUEST_TOKENS, c.request_generation)
        # dcgm-exporter samples a duty cycle: busy whenever any request is in flight.
        util = 100.0 if e.outstanding > 0 else 0.0
        prof = e.profile
        fb = prof.gpu.memory_gb * 1024 * 0.9
        for i, uuid in enumerate(p.gpu_uuids):
            dv = [str(i), uuid, f"nvidia{i}", prof.gpu.product_label, "kwok", p.namespace, p.name, "vllm", p.deployment]
            d_util.add_metric(dv, util)
            d_fb.add_metric(dv, fb)
            d_active.add_metric(dv, min(1.0, e.num_running / max(1, prof.max_num_seqs) * 4))
    # The gateway holds requests while a deployment has no Ready replica, and reports them as the
    # Gateway API Inference Extension's Endpoint Picker does with flow control on (one pool per
    # LLMDeployment, named after it; the namespace label is what a scrape of the EPP adds).
    g_pending = GaugeMetricFamily("inference_extension_flow_control_queue_size",
                                  "Requests held in the flow-control queue (no endpoint yet).",
                                  labels=["namespace", "inference_pool", "model_name", "target_model_name", "fairness_id", "priority"])
    c_arr = CounterMetricFamily("llmscale_gateway_requests", "Requests that arrived at the gateway.", labels=["namespace", "llmd"])
    for (ns, dep), q in gateway.items():
        g_pending.add_metric([ns, dep, "", "", "default", "0"], len(q))
    for (ns, dep), n in arrived.items():
        c_arr.add_metric([ns, dep], n)
    return [g_run, g_wait, g_kv, c_prompt, c_gen, c_succ, c_pre, h_ttft, h_itl, h_e2e, h_q, h_prompt, h_gen, d_util, d_fb, d_active, g_pending, c_arr]


class _Collector(Collector):
    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def collect(self):  # type: ignore[override]
        yield from self.fleet.collect()


def serve(fleet: Fleet, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(_Collector(fleet))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: Prometheus scrapes every 2 s
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                self._send(200, b"ok", "text/plain")
            elif self.path == "/traffic":
                with fleet.lock:
                    body = {f"{k[0]}/{k[1]}": v.description for k, v in fleet.traffic.items()}
                self._send(200, json.dumps(body).encode())
            elif self.path.startswith("/traffic/") and len(parts := self.path.strip("/").split("/")) == 3:
                one = fleet.traffic_of(parts[1], parts[2])
                if one is None:
                    self._send(404, b'{"error": "no traffic was set for this deployment"}')
                else:
                    self._send(200, json.dumps(one).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_PUT(self) -> None:  # noqa: N802
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "traffic":
                self._send(404, b'{"error": "use PUT /traffic/<namespace>/<name>"}')
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                tr = fleet.set_traffic(parts[1], parts[2], body)
            except (ValueError, TraceError, TypeError) as e:
                self._send(400, json.dumps({"error": str(e)}).encode())
                return
            self._send(200, json.dumps({"traffic": tr.description}).encode())

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="fleet-http", daemon=True).start()
    return server


def run(kubeconfig: str | None, port: int, tick_s: float = 0.1, list_every_s: float = 1.0) -> None:
    """Run the simulator until interrupted."""
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    core = client.CoreV1Api()
    fleet = Fleet()
    serve(fleet, port)
    log.info("fleet simulator serving on 127.0.0.1:%d", port)
    next_list = 0.0
    while True:
        t = time.monotonic()
        if t >= next_list:
            try:
                resp: Any = core.list_pod_for_all_namespaces(label_selector=DEPLOYMENT_LABEL, _request_timeout=30,
                                                             _preload_content=False)  # raw JSON, not model objects
                fleet.sync_pods(json.loads(resp.data).get("items") or [])
            except Exception as e:  # the API server restarting must not kill the simulator
                log.warning("listing pods failed: %s", e)
            next_list = t + list_every_s
        fleet.tick()
        time.sleep(max(0.0, tick_s - (time.monotonic() - t)))
