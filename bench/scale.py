"""One operator, many LLMDeployments: what it costs and whether it keeps up (issue 11, item 6).

    python -m bench.scale [--deployments 100,1000] [--cycles 8] [--changing 0.1] [--keep-bed]

Brings up a test bed of its own (`e2e/cluster up` with LLMSCALE_STATE=e2e/.state-scale): one kwok
H100 node per LLMDeployment, no real node, Prometheus scraping every 15 s, the fleet simulator
listing pods every 10 s (at a thousand pods, the e2e bed's 2 s scrapes and 1 s lists would spend
the two cores on the bed, not on the operator). It uses the e2e bed's ports, so that bed must be
down. For each size, smallest first (the first is the baseline of the ratios):

1. the LLMDeployments (15 s decisions, a 1 m rate window, one H100 shape, 1-3 replicas) exist, each
   with Poisson traffic of its own at 0.1-1 req/s;
2. a fresh operator starts (admin kubeconfig; the e2e suite checks the chart's RBAC) and the
   time until it has decided for every one of them is measured (take over);
3. over `--cycles` decision intervals, a share of the deployments (`--changing`) gets a new rate
   at the start of each, so that not every decision is NoChange, and the benchmark reads the
   operator's own /metrics every 5 s and Prometheus's scrape times at the end.

Reported per size: take-over time; decisions per cycle; the age of each deployment's last
decision (p50/p99, sampled every 5 s: it stays under one interval while the operator keeps up);
the lag from the first scrape that carries a traffic change to the next decision for that
deployment (p50/p99; up to one interval by design; a change with no decision by the end counts
with its lag up to the end); how old the Prometheus read each decision used was (read age,
p50/p99 as histogram bucket edges: a decision that comes while its endpoint's batch is read again
uses the last read, up to two intervals old, rather than wait; add it to the lag for when a change
reaches a decision) and how many decisions were put off a tick instead (put off); actions per cycle (changes of a deployment's desired replicas seen
on the operator's gauge); Prometheus queries, Kubernetes requests of
the operator's client, and status writes per cycle (by why); CPU per decision; the operator's
peak RSS. Ratios are against the first size, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_api_client import PrometheusConnect

from llmscale.controller.status import needs_write

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "e2e" / ".state-scale"
CLUSTER = ROOT / "e2e" / "cluster"
KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.36.3")
KUBECTL = Path(os.environ.get("LLMSCALE_CACHE", Path.home() / ".cache/llmscale")) / f"kubernetes-{KUBE_VERSION}" / "kubectl"
PROM = "http://127.0.0.1:19090"
FLEET = "http://127.0.0.1:18000"
API_PORT = 16443  # e2e/cluster's
METRICS_PORT, HEALTH_PORT = 18093, 18094
OPERATOR_METRICS = f"http://127.0.0.1:{METRICS_PORT}/metrics"
INTERVAL_S = 15.0
SCRAPE_S = 15.0
PER_NAMESPACE = 100  # LLMDeployments per namespace
# Reading the operator's /metrics costs it CPU (a thousand deployments: ~0.3 s per read, by a py-spy
# profile; read every 3 s it took 15 % of the operator's samples), so the bench reads it no more
# often than it must to see every decision (they come at least 10 s apart).
POLL_S = 5.0
BED_ENV = {
    "LLMSCALE_STATE": str(STATE),
    "LLMSCALE_L4_NODES": "0",
    "LLMSCALE_REAL_NODE": "0",
    "LLMSCALE_SCRAPE_INTERVAL": f"{SCRAPE_S:g}s",
    "LLMSCALE_NODE_LEASE_S": "600",  # a thousand node leases renewed every 10 s would load the API server more than the operator
    "LLMSCALE_FLEET_LIST_EVERY": "10",
}


def say(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def kubectl(*args: str, stdin: str | None = None, timeout: float = 300) -> str:
    r = subprocess.run([str(KUBECTL), f"--kubeconfig={STATE / 'kubeconfig'}", *args], input=stdin, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"bench.scale: kubectl {' '.join(args[:3])}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return r.stdout


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def name_of(i: int) -> tuple[str, str]:
    return f"scale-{i // PER_NAMESPACE}", f"d{i:04d}"


def deployment_doc(i: int) -> dict[str, Any]:
    ns, name = name_of(i)
    return {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"model": "meta-llama/Llama-3.1-8B-Instruct",
                     "replicas": {"min": 1, "max": 3},
                     "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "5s"}],
                     "slo": {"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
                     "cost": {"maxGPUs": 3, "prices": {"nvidia-h100": "4.00"}},
                     "scaling": {"interval": f"{INTERVAL_S:g}s"},
                     "metrics": {"rateWindow": "1m"}}}


def set_traffic(i: int, rate: float) -> None:
    ns, name = name_of(i)
    body = json.dumps({"rate": round(rate, 3), "meanInput": 512, "meanOutput": 64}).encode()
    req = urllib.request.Request(f"{FLEET}/traffic/{ns}/{name}", data=body, method="PUT")
    with urllib.request.urlopen(req, timeout=10):
        pass


# ---- the operator's own /metrics, read without a full parse (a thousand deployments: ~30k lines) ----
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Scrape:
    at: float
    last_decision: dict[tuple[str, str], float] = field(default_factory=dict)
    desired: dict[tuple[str, str], float] = field(default_factory=dict)  # llmscale_desired_replicas
    totals: dict[str, float] = field(default_factory=dict)  # summed counters, keyed by name (and a label)
    read_age: dict[float, float] = field(default_factory=dict)  # llmscale_decision_signals_age_seconds, cumulative by le


def read_operator() -> Scrape | None:
    try:
        with urllib.request.urlopen(OPERATOR_METRICS, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out = Scrape(time.time())
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        metric, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if metric == "llmscale_last_decision_timestamp_seconds":
            lab = dict(_LABEL.findall(labels))
            out.last_decision[(lab.get("namespace", ""), lab.get("llmdeployment", ""))] = value
        elif metric == "llmscale_desired_replicas":
            lab = dict(_LABEL.findall(labels))
            out.desired[(lab.get("namespace", ""), lab.get("llmdeployment", ""))] = value
        elif metric == "llmscale_decision_signals_age_seconds_bucket":
            le = dict(_LABEL.findall(labels)).get("le", "+Inf")
            out.read_age[math.inf if le == "+Inf" else float(le)] = value
        elif metric in ("llmscale_prometheus_queries_total", "process_cpu_seconds_total", "process_resident_memory_bytes",
                        "llmscale_prometheus_read_waits_abandoned_total"):
            out.totals[metric] = out.totals.get(metric, 0.0) + value
        elif metric == "llmscale_kube_requests_total":
            verb = dict(_LABEL.findall(labels)).get("verb", "?")
            out.totals[f"kube {verb}"] = out.totals.get(f"kube {verb}", 0.0) + value
            out.totals["kube"] = out.totals.get("kube", 0.0) + value
        elif metric == "llmscale_status_writes_total":
            why = dict(_LABEL.findall(labels)).get("why", "?")
            out.totals[f"writes {why}"] = out.totals.get(f"writes {why}", 0.0) + value
            out.totals["writes"] = out.totals.get("writes", 0.0) + value
    return out


def bucket_quantile(first: dict[float, float], last: dict[float, float], q: float) -> float:
    """The upper edge of the histogram bucket holding quantile q of the observations between two
    scrapes (nan without any)."""
    counts = sorted((le, n - first.get(le, 0.0)) for le, n in last.items())
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return float("nan")
    return next(le for le, n in counts if n >= q * total)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Result:
    deployments: int
    take_over_s: float
    cycles: int
    decisions_per_cycle: float
    age_p50: float
    age_p99: float
    lag_p50: float
    lag_p99: float
    lag_missed: int  # changes with no decision after their scrape before the run ended (their lag counted up to the end)
    lag_unjudged: int  # changes whose scrape came less than an interval before the end: too recent to judge
    read_age_p50: float  # how old the Prometheus read a decision used was (upper bucket edge)
    read_age_p99: float
    put_off_per_cycle: float  # decisions put off a tick: their endpoint's read in flight and their last one too old
    watched_writes: float  # MODIFIED events per cycle on the LLMDeployments (every writer)
    unchanged_writes: float  # of them, writes that changed nothing a user reads
    moved: dict[str, float]  # per cycle: the writes that changed each field a user reads
    changes: int
    actions_per_cycle: float  # changes of a deployment's desired replicas seen (scale-ups and -downs decided)
    queries_per_cycle: float
    kube_per_cycle: float
    kube_verbs: dict[str, float]
    writes_per_cycle: float
    writes_why: dict[str, float]
    cpu_ms_per_decision: float
    rss_mib: float


class Operator:
    def __init__(self) -> None:
        self.log = open(STATE / "logs" / "operator-scale.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmscale.cli", "run", "--kubeconfig", str(STATE / "kubeconfig"), "--prometheus-url", PROM,
             "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.time()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _decided_at(obj: dict[str, Any]) -> float:
    """The time of the decision a status write carries (0: none)."""
    import datetime as dt

    t = ((obj.get("status") or {}).get("lastDecision") or {}).get("time")
    try:
        return dt.datetime.strptime(str(t), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0.0


class StatusWatch:
    """Every write to an LLMDeployment, through a watch (what a GitOps tool sees): each MODIFIED
    event, and whether what a user reads (controller.status.user_view) differs from the object's
    previous version. A write that changes nothing a user reads is one the operator should not have
    made; the goal is none."""

    def __init__(self) -> None:
        import threading

        from kubernetes import client, config

        from llmscale.controller.status import user_view

        self._view = user_view
        self.api = client.CustomObjectsApi(config.new_client_from_config(str(STATE / "kubeconfig")))
        self.views: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = ""
        self._list()
        self.writes = self.unchanged = 0
        self.moved: dict[str, int] = {}  # what a user reads that each counted write changed, by field
        self.since, self.until = float("inf"), float("inf")  # the decisions whose writes count
        self.latest = 0.0  # the newest decision time seen in the stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _list(self) -> None:
        """Every LLMDeployment as it is now: where the watch starts (again, after a break)."""
        listed = self.api.list_cluster_custom_object("llmscale.io", "v1alpha1", "llmdeployments")
        self.views = {self._key(o): self._view(o.get("status") or {}) for o in listed["items"]}
        self.version = listed["metadata"]["resourceVersion"]

    @staticmethod
    def _moved(before: dict[str, Any], view: dict[str, Any]) -> list[str]:
        """The fields a write changed; a condition by its type; the burst memory only when nothing
        else moved (its samples differ at every write)."""
        out = [k for k in view if k not in ("samples", "conditions", "learnt") and before.get(k) != view[k]]
        was, learnt = before.get("learnt") or {}, view.get("learnt") or {}
        out += [f"learnt {k}" for k in learnt if was.get(k) != learnt[k]]
        old, new = set(before.get("conditions") or ()), set(view.get("conditions") or ())
        out += sorted({f"condition {c[0]}" for c in old ^ new})
        return out or (["burst memory"] if before.get("samples") != view.get("samples") else [])

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str]:
        md = obj.get("metadata") or {}
        return md.get("namespace", ""), md.get("name", "")

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.api.list_cluster_custom_object, "llmscale.io", "v1alpha1", "llmdeployments",
                                   resource_version=self.version, timeout_seconds=30):
                    obj = ev["object"]
                    self.version = (obj.get("metadata") or {}).get("resourceVersion", self.version)
                    view = self._view(obj.get("status") or {})
                    before = self.views.get(self._key(obj))
                    self.views[self._key(obj)] = view
                    # Counted by the write's own decision time: the watch may lag (at a thousand it
                    # was still reading the take-over's writes minutes later).
                    at = _decided_at(obj)
                    self.latest = max(self.latest, at)
                    if ev["type"] == "MODIFIED" and self.since <= at <= self.until:
                        self.writes += 1
                        self.unchanged += before is not None and needs_write(before, view) is None
                        for k in self._moved(before or {}, view):
                            self.moved[k] = self.moved.get(k, 0) + 1
                    if self._stop.is_set():
                        return
            except Exception as e:  # a broken watch (410 Gone, a dropped connection): list again
                if self._stop.is_set():
                    return
                say(f"status watch broke ({type(e).__name__}); listing again (writes meanwhile are not counted)")
                time.sleep(1)
                try:
                    self._list()
                except Exception:
                    pass

    def stop(self) -> None:
        self._stop.set()


def measure(n: int, cycles: int, changing: float, rng: random.Random, rates: dict[int, float]) -> Result:
    if port_open(METRICS_PORT):
        raise SystemExit(f"bench.scale: port {METRICS_PORT} is in use (another operator of this benchmark?)")
    status_watch = StatusWatch()
    op = Operator()
    try:
        want = {name_of(i) for i in range(n)}
        deadline = op.started + 900
        next_say = 0.0
        while True:
            if not op.alive():
                raise SystemExit(f"bench.scale: the operator exited; log: {STATE / 'logs' / 'operator-scale.log'}")
            seen = read_operator()
            done = len(want & set(seen.last_decision)) if seen else 0
            if seen is not None and done == n:
                take_over = seen.at - op.started
                break
            if time.time() > deadline:
                raise SystemExit(f"bench.scale: the operator decided for {done} of {n} LLMDeployments in 900 s")
            if time.time() >= next_say:
                say(f"{n} deployments: operator up {time.time() - op.started:4.0f} s, decided for {done}/{n}")
                next_say = time.time() + 15
            time.sleep(POLL_S)
        say(f"{n} deployments: taken over in {take_over:.0f} s; measuring {cycles} cycles of {INTERVAL_S:g} s")
        # One full interval more, so the decisions of the take-over burst are behind us.
        time.sleep(INTERVAL_S)
        first = read_operator()
        assert first is not None
        decisions: dict[tuple[str, str], set[float]] = {k: {v} for k, v in first.last_decision.items()}
        ages: list[float] = []
        changes: list[tuple[tuple[str, str], float]] = []
        rss = first.totals.get("process_resident_memory_bytes", 0.0)
        desired = {k: v for k, v in first.desired.items() if k in want}
        actions = 0
        status_watch.since = time.time()
        start = time.time()
        for c in range(cycles):
            cycle_start = start + c * INTERVAL_S
            for i in rng.sample(range(n), max(1, round(changing * n))):
                rates[i] = rng.uniform(0.1, 1.0)
                set_traffic(i, rates[i])
                changes.append((name_of(i), time.time()))
            while time.time() < cycle_start + INTERVAL_S:
                time.sleep(POLL_S)
                s = read_operator()
                if s is None:
                    continue
                rss = max(rss, s.totals.get("process_resident_memory_bytes", 0.0))
                for k, v in s.last_decision.items():
                    if k in want:
                        decisions.setdefault(k, set()).add(v)
                        ages.append(s.at - v)
                for k, v in s.desired.items():
                    if k in want:
                        actions += k in desired and desired[k] != v
                        desired[k] = v
            say(f"{n} deployments: cycle {c + 1}/{cycles}, decision age p99 so far {quantile(ages, 0.99):.1f} s")
        last = read_operator()
        assert last is not None
        status_watch.until = last.at
        caught_up = time.time() + 180
        # A write lands after its decision began (lookups, up to half a tick's wait for the read,
        # kopf's patch): wait for decisions an interval past the span.
        while status_watch.latest <= last.at + INTERVAL_S and time.time() < caught_up:
            time.sleep(1)  # the watch reads the span's last writes (it may lag minutes at a thousand)
        if status_watch.latest <= last.at + INTERVAL_S:
            say("the status watch did not catch up within 180 s: its counts are partial")
        span_cycles = (last.at - first.at) / INTERVAL_S
        for k, v in last.last_decision.items():
            if k in want:
                decisions.setdefault(k, set()).add(v)
        scrapes = fleet_scrape_times(last.at - first.at + 60)
        # A change with no decision after its scrape counts with its lag up to the end (at least
        # that late) once the end is an interval and a poll past that scrape; a later one is too
        # recent to judge (the next decision may still be on time).
        lags, missed, unjudged = [], 0, 0
        for key, t_change in changes:
            after = [t for t in scrapes if t > t_change]
            d = [t for t in decisions.get(key, ()) if after and t > after[0]]
            if d:
                lags.append(min(d) - after[0])
            elif after and last.at - after[0] >= INTERVAL_S + POLL_S:
                lags.append(last.at - after[0])
                missed += 1
            else:
                unjudged += 1

        def per_cycle(name: str) -> float:
            return (last.totals.get(name, 0.0) - first.totals.get(name, 0.0)) / span_cycles

        # Decisions made in the span: each deployment's distinct decision times (read every 5 s, a
        # third of an interval, so none is missed; llmscale_decisions_total counts reasons, not decisions).
        made = sum(sum(1 for t in times if first.at < t <= last.at) for times in decisions.values())
        cpu = last.totals.get("process_cpu_seconds_total", 0.0) - first.totals.get("process_cpu_seconds_total", 0.0)
        verbs = {k.split(" ", 1)[1]: per_cycle(k) for k in last.totals if k.startswith("kube ")}
        whys = {k.split(" ", 1)[1]: per_cycle(k) for k in last.totals if k.startswith("writes ")}
        return Result(n, take_over, cycles, made / span_cycles, quantile(ages, 0.5), quantile(ages, 0.99),
                      quantile(lags, 0.5), quantile(lags, 0.99), missed, unjudged,
                      bucket_quantile(first.read_age, last.read_age, 0.5), bucket_quantile(first.read_age, last.read_age, 0.99),
                      per_cycle("llmscale_prometheus_read_waits_abandoned_total"),
                      status_watch.writes / span_cycles, status_watch.unchanged / span_cycles,
                      {k: v / span_cycles for k, v in status_watch.moved.items()}, len(changes), actions / span_cycles,
                      per_cycle("llmscale_prometheus_queries_total"), per_cycle("kube"), verbs, per_cycle("writes"), whys,
                      1000 * cpu / made if made else float("nan"), rss / 2**20)
    finally:
        op.stop()
        status_watch.stop()


def fleet_scrape_times(span_s: float) -> list[float]:
    """When Prometheus scraped the fleet simulator: the raw samples of `up` (a range vector, asked
    at an instant, comes back with each scrape's own timestamp)."""
    prom = PrometheusConnect(url=PROM, disable_ssl=True)
    r = prom.custom_query(f'up{{job="vllm-fleet"}}[{int(span_s)}s]')
    return sorted(float(t) for series in r for t, _ in series.get("values", []))


def ensure_deployments(n: int, have: int, rng: random.Random, rates: dict[int, float]) -> None:
    namespaces = sorted({name_of(i)[0] for i in range(have, n)})
    if namespaces:
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]))
    for lo in range(have, n, 100):
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([deployment_doc(i) for i in range(lo, min(n, lo + 100))]))
        say(f"LLMDeployments applied: {min(n, lo + 100)}/{n}")
    for i in range(have, n):
        rates[i] = rng.uniform(0.1, 1.0)
        set_traffic(i, rates[i])


def table(results: list[Result]) -> str:
    base = results[0]
    head = ("deployments", "take over", "decisions/cycle", "actions/cycle", "decision age p50/p99", "change->decision p50/p99",
            "read age p50/p99", "put off/cycle", "Prom queries/cycle", "kube requests/cycle", "status writes/cycle", "CPU/decision", "vs first", "RSS")
    rows = [head]
    for r in results:
        rows.append((str(r.deployments), f"{r.take_over_s:.0f} s", f"{r.decisions_per_cycle:.0f}", f"{r.actions_per_cycle:.1f}",
                     f"{r.age_p50:.1f} / {r.age_p99:.1f} s", f"{r.lag_p50:.1f} / {r.lag_p99:.1f} s",
                     f"<={r.read_age_p50:g} / <={r.read_age_p99:g} s", f"{r.put_off_per_cycle:.1f}",
                     f"{r.queries_per_cycle:.1f}", f"{r.kube_per_cycle:.0f}", f"{r.writes_per_cycle:.0f}",
                     f"{r.cpu_ms_per_decision:.1f} ms", f"{r.cpu_ms_per_decision / base.cpu_ms_per_decision:.2f}x",
                     f"{r.rss_mib:.0f} MiB"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    detail = []
    for r in results:
        verbs = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.kube_verbs.items()))
        whys = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.writes_why.items()))
        detail.append(f"{r.deployments}: kube requests per cycle by method: {verbs or '-'}; status writes by why: {whys or '-'}; "
                      f"{r.changes} traffic changes, {r.lag_missed} with no decision after their scrape before the end (lag "
                      f"counted to the end), {r.lag_unjudged} too recent to judge; writes seen by a watch on the "
                      f"LLMDeployments: {r.watched_writes:.0f} per cycle, {r.unchanged_writes:.1f} of them changing nothing a user reads; "
                      "what they changed, per cycle: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.moved.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines + [""] + detail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployments", default="100,1000", help="sizes, smallest first (default 100,1000)")
    ap.add_argument("--cycles", type=int, default=8, help="decision intervals measured per size (default 8)")
    ap.add_argument("--changing", type=float, default=0.1, help="share of deployments whose traffic changes each cycle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-bed", action="store_true", help="leave the scale bed up (e2e/cluster down with "
                    f"LLMSCALE_STATE={STATE} stops it)")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in args.deployments.split(",")]
    except ValueError:
        ap.error(f"--deployments {args.deployments!r}: give sizes like 100,1000")
    if not sizes or any(n < 1 for n in sizes) or sizes != sorted(sizes):
        ap.error("--deployments: positive sizes, smallest first")
    if args.cycles < 2 or not 0 < args.changing <= 1:
        ap.error("--cycles is at least 2 and --changing a share in (0, 1]")
    if port_open(API_PORT) and not (STATE / "pids" / "kube-apiserver.pid").exists():
        raise SystemExit("bench.scale: the e2e test bed is up on the same ports; stop it first (e2e/cluster down)")
    env = {**os.environ, **BED_ENV, "LLMSCALE_H100_NODES": str(max(sizes)), "PYTHON": sys.executable}
    say(f"bringing up the scale bed ({max(sizes)} kwok H100 nodes) in {STATE}")
    t0 = time.time()
    up = subprocess.run([str(CLUSTER), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"bench.scale: e2e/cluster up failed: {up.stderr.strip().splitlines()[-1] if up.stderr.strip() else ''}")
    say(f"bed up in {time.time() - t0:.0f} s")
    results: list[Result] = []
    try:
        kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmscale.io", "--timeout=60s")
        rng = random.Random(args.seed)
        rates: dict[int, float] = {}
        have = 0
        for n in sizes:
            ensure_deployments(n, have, rng, rates)
            have = n
            results.append(measure(n, args.cycles, args.changing, rng, rates))
            say(f"{n} deployments measured")
        print(table(results), flush=True)
    finally:
        if not args.keep_bed:
            say("taking the scale bed down")
            subprocess.run([str(CLUSTER), "down"], env=env, capture_output=True, text=True)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
