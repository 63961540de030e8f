"""The `llmscale` command: run | simulate | explain | crds | fleet-sim."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import __version__


class CLIError(Exception):
    """A bad flag or file: printed as one line, exit code 2."""


def _load_deployment(path: str | None) -> tuple[dict[str, Any], Any]:
    from pydantic import ValidationError

    from .api.models import explain_errors, parse_spec

    if path is None:
        text = resources.files("llmscale").joinpath("data/default-deployment.yaml").read_text()
        where = "the bundled example"
    else:
        p = Path(path)
        if not p.is_file():
            raise CLIError(f"{path}: no such file")
        text, where = p.read_text(), path
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CLIError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "LLMDeployment" or "spec" not in doc:
        raise CLIError(f"{where}: not an LLMDeployment (expected kind: LLMDeployment with a spec)")
    try:
        return doc, parse_spec(doc["spec"])
    except ValidationError as e:
        raise CLIError(f"{where}: {explain_errors(e)}") from None


def _emit(text: str, output: str | None) -> int:
    """Write a generated document to --output, or to stdout."""
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    from .api.crd import crd_yaml

    return _emit(crd_yaml(), args.output)


def cmd_api_reference(args: argparse.Namespace) -> int:
    from .api.reference import reference_markdown

    return _emit(reference_markdown(), args.output)


def cmd_simulate(args: argparse.Namespace) -> int:
    from .api.models import Routing
    from .policy.capacity import refused_start
    from .sim.oracle import beat_oracle, oracle_run, yardstick, yardstick_plans
    from .sim.policies import POLICIES, make_policy
    from .sim.report import Progress, plot, settled_table, table
    from .sim.traffic import TraceError, load_trace, scenario
    from .sim.twin import SETTLE_S, Twin, has_settled_view

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out}: a file, not a directory")  # said before the run, not after it
    doc, spec = _load_deployment(args.deployment)
    if args.routing:
        spec = spec.model_copy(update={"routing": Routing(args.routing)})
    try:
        if args.trace and args.scenario:
            raise CLIError("give --trace or --scenario, not both")
        for flag, v in (("--duration", args.duration), ("--scenario-rate", args.scenario_rate)):
            if not (v > 0 and math.isfinite(v)):  # NaN ran a scenario for ever
                raise CLIError(f"{flag} must be positive and finite")
        if args.trace:
            trace = load_trace(args.trace)
        elif args.scenario:
            trace = scenario(args.scenario, rate=args.scenario_rate, duration=args.duration, seed=args.seed)
        else:
            trace = load_trace(str(resources.files("llmscale").joinpath("data/azure-code.csv")))
            if args.rate_scale is None:
                args.rate_scale = 4.0
        trace = trace.scaled(args.rate_scale or 1.0, args.speedup, seed=args.seed)
    except TraceError as e:
        raise CLIError(str(e)) from None
    if not trace.arrivals:
        raise CLIError(f"{trace.name}: no requests to simulate")
    policies = args.policy or list(POLICIES)
    names = {v.name for v in spec.variants}
    for p in policies:
        if p.startswith("fixed:"):
            if p.split(":", 1)[1] not in names:
                raise CLIError(f"policy {p!r}: the deployment has no variant {p.split(':', 1)[1]!r} (it has {', '.join(sorted(names))})")
            why = refused_start(spec, spec.variant(p.split(":", 1)[1]))
            if why is not None:
                raise CLIError(f"policy {p!r}: vLLM would not start on {p.split(':', 1)[1]}: {why}")
        elif p not in POLICIES:
            raise CLIError(f"unknown policy {p!r}; choose from {', '.join(POLICIES)}, fixed:<variant>")
    show = not args.json and (sys.stderr.isatty() or args.progress)
    if not args.json:
        bad = f", {trace.bad_rows} bad rows skipped" if trace.bad_rows else ""
        print(f"trace {trace.name}: {len(trace.arrivals)} requests over {trace.duration / 60:.1f} min, "
              f"mean {trace.mean_rate:.2f} req/s, peak minute {trace.peak_rate():.2f} req/s{bad}", file=sys.stderr)
        for ex in trace.bad_examples:
            print(f"  bad row: {ex}", file=sys.stderr)
    results = []
    for name in policies:
        t0 = time.monotonic()
        r = Twin(spec, trace, make_policy(name), progress=Progress(name, show)).run()
        results.append(r)
        if not args.json and not show:
            print(f"  {name}: simulated in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    if args.json:
        print(json.dumps({"trace": trace.name, "deployment": doc.get("metadata", {}).get("name"),
                          "routing": spec.routing.value, "results": [r.as_json() for r in results]}))
        return 0
    ttft = spec.slo.ttft
    itl = spec.slo.itl_target()
    print(f"\nSLO: TTFT p{ttft.percentile:g} <= {ttft.target}" if ttft else "\nSLO: none on TTFT", end="")
    print(f", inter-token p{itl.percentile:g} <= {itl.target}" if itl else "", end="")
    print(f"; routing {spec.routing.value} ({spec.routing.says})")
    print("attainment = share of requests within the target\n")
    baselines = [b for b in ("static-peak", "oracle") if b in policies]
    # The oracle is the cheapest plan its search found, not a proven bound: a policy that meets the
    # SLO for less is a plan it missed, and the ratios are taken against that (never llmscale's own).
    known = yardstick(spec, results)
    whole, settled = ({"oracle": known[0]}, {"oracle": known[1]}) if known is not None else (None, None)
    print(table(results, baselines, whole))
    beaten = beat_oracle(spec, results)
    others = [p for p in beaten if p != "llmscale"]
    if others:
        print(f"\n{', '.join(others)} meet{'s' if len(others) == 1 else ''} the SLO for fewer GPU-hours than the oracle's "
              f"plan (a plan its search missed): 'GPU-h / oracle' is taken against the cheapest of them, "
              f"{known[0] if known else float('nan'):.2f} GPU-h")
    if "llmscale" in beaten:
        print("\nllmscale meets the SLO for fewer GPU-hours than the oracle's plan (a plan its search missed; "
              "llmscale is never its own yardstick)")
    if has_settled_view(trace):
        print(f"\nafter minute {SETTLE_S / 60:.0f} (every policy has seen the traffic that far): the requests arriving "
              "from then, the GPU time held from then\n")
        print(settled_table(results, baselines, settled))
        late = yardstick_plans(spec, results)[1]
        oracle = oracle_run(results)
        if late is not None and oracle is not None:
            print(f"\nfrom minute ten 'GPU-h / oracle' is taken against {late.policy}'s {late.settled_gpu_hours:.2f} GPU-h: it "
                  f"meets the SLO over the whole run and holds less than the oracle's plan ({oracle.settled_gpu_hours:.2f}) "
                  "from minute ten")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"trace": trace.name, "routing": spec.routing.value,
                                                           "results": [r.as_json() for r in results]}, indent=2))
        png = plot(results, ttft.seconds if ttft else None, out / "simulate.png", f"{trace.name}: {spec.model}",
                   SETTLE_S if has_settled_view(trace) else None)
        if png:
            print(f"\nplot: {png}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .controller.operator import run
    from .settings import OperatorSettings

    overrides = {k: v for k, v in {
        "prometheus_url": args.prometheus_url,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "namespaces": args.namespace or None,
        "peering": args.peering,
        "peering_priority": args.peering_priority,
        "log_format": args.log_format,
        "disruption_budget": args.disruption_budget,
    }.items() if v is not None}
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        settings = OperatorSettings(**overrides)
    except SettingsError as e:
        # A variable that is not even of its type's form, e.g. LLMSCALE_NAMESPACES=team-a (a list takes JSON).
        print(f"llmscale run: {e} (a list setting takes JSON, e.g. LLMSCALE_NAMESPACES='[\"team-a\"]')", file=sys.stderr)
        return 2
    except ValidationError as e:
        # A bad LLMSCALE_* variable or flag: one line naming it, not a traceback.
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "settings"
        print(f"llmscale run: {where} (LLMSCALE_{where.upper()}): {err.get('msg', 'invalid')}", file=sys.stderr)
        return 2
    run(settings, kubeconfig=args.kubeconfig, verbose=args.verbose)
    return 0


def _where(endpoints: Any, spec: Any, namespace: str) -> str:
    target = endpoints.resolve(spec.metrics.prometheus, spec.metrics.prometheus_url, namespace)
    return target if isinstance(target, str) else f"{target.label} ({target.url})"


def cmd_explain(args: argparse.Namespace) -> int:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from pydantic import ValidationError

    from .api.crd import PLURAL
    from .api.models import explain_errors, parse_spec
    from .api.units import parse_duration
    from .controller.kube import Kube, observe_workload
    from .controller.status import ready_pods_seen
    from .metrics.endpoints import EndpointError
    from .metrics.prometheus import PrometheusReader
    from .policy import History, decide
    from .settings import OperatorSettings

    try:
        config.load_kube_config(config_file=args.kubeconfig)
    except Exception as e:
        raise CLIError(f"cannot load a kubeconfig: {e}") from None
    from urllib3.exceptions import HTTPError

    api = client.CustomObjectsApi()
    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
            "llmscale.io", "v1alpha1", args.namespace, PLURAL, args.name)
    except ApiException as e:
        raise CLIError(f"LLMDeployment {args.namespace}/{args.name}: {e.reason} ({e.status})") from None
    except HTTPError as e:  # no API server there (refused, timed out)
        raise CLIError(f"cannot reach the Kubernetes API server ({type(e).__name__})") from None
    try:
        spec = parse_spec(obj["spec"])
    except ValidationError as e:
        raise CLIError(f"LLMDeployment {args.namespace}/{args.name} is invalid: {explain_errors(e)}") from None
    kube = Kube()
    status = obj.get("status") or {}
    deps = kube.deployments(args.namespace, args.name)
    pods = kube.pods(args.namespace, args.name)
    # The pods the operator has seen Ready, as it reads them back: a readiness blip is no start.
    workload, _ = observe_workload(deps, pods, {k: float(v) for k, v in (status.get("coldStartSeconds") or {}).items()},
                                kube.competing_autoscaler(args.namespace, args.name, {d.name for d in deps}),
                                ready_pods_seen(status))
    # The same endpoints and allow-list as the operator: explain sends no credential anywhere else.
    settings = OperatorSettings(**({"prometheus_url": args.prometheus_url} if args.prometheus_url else {}))
    try:
        endpoints = settings.endpoints()
    except EndpointError as e:
        raise CLIError(str(e)) from None
    now = time.time()
    key = (args.namespace, args.name)
    signals = PrometheusReader(endpoints, kube.secret_data).read({key: spec}, now)[key]  # under your own RBAC
    d = decide(spec, workload, signals, History.from_dict(status.get("history")), now)
    fmt = lambda v, scale=1.0, unit="": "unknown" if v is None else f"{v * scale:.3g}{unit}"  # noqa: E731
    print(f"LLMDeployment {args.namespace}/{args.name}  model {spec.model}  mode {spec.scaling.mode.value}")
    print(f"\nworkload: variant {workload.variant or '-'}, {workload.replicas} replicas, {workload.ready} ready, "
          f"{workload.starting} starting, {workload.pending_unschedulable} unschedulable"
          + (f"; competing autoscaler: {workload.competing_autoscaler}" if workload.competing_autoscaler else ""))
    if workload.cold_start_s:
        print("cold start measured: " + ", ".join(f"{k} {v:.0f}s" for k, v in workload.cold_start_s.items()))
    print("\nsignals" + (f" (UNAVAILABLE: {signals.unavailable})" if signals.unavailable else f" from {_where(endpoints, spec, args.namespace)}:"))
    if not signals.unavailable:
        ttft, itl = spec.slo.ttft, spec.slo.itl_target()
        print(f"  TTFT p{ttft.percentile:g}: {fmt(signals.ttft_quantile, 1000, 'ms')} (target {ttft.target}), "
              f"attainment {fmt(signals.ttft_attainment, 100, '%')}" if ttft else "  TTFT: no target")
        if itl:
            print(f"  inter-token p{itl.percentile:g}: {fmt(signals.itl_quantile, 1000, 'ms')} (target {itl.target}), "
                  f"attainment {fmt(signals.itl_attainment, 100, '%')}")
        print(f"  requests/s {fmt(signals.request_rate)}, waiting {fmt(signals.requests_waiting)}, running "
              f"{fmt(signals.requests_running)}, KV cache {fmt(signals.kv_cache_usage, 100, '%')}, GPU util "
              f"{fmt(signals.gpu_utilization, 100, '%')}")
        for k, why in sorted(signals.unknown.items()):
            print(f"  unknown {k}: {why}")
        for w in signals.warnings:
            print(f"  warning: {w}")
    est = d.estimate
    print(f"\nestimate: {fmt(est.capacity_per_replica)} req/s per replica ({est.capacity_limited_by or '-'}), forecast "
          f"{fmt(est.forecast_rate)} req/s over {fmt(est.horizon_s, 1, 's')}, ceiling {est.ceiling_replicas} replicas")
    factor = "the performance model's own" if est.step_time_factor is None else f"{est.step_time_factor:.3f}x the model's"
    print(f"engine speed: steps planned at {factor} (from the pods' inter-token latency; explain's own look at the "
          f"window now: {est.speed_note or '-'})")
    print(f"routing: {spec.routing.value} ({spec.routing.says}: " + ("the fleet pools its capacity)" if spec.routing.pools else
                                                                    "each replica planned alone; set spec.routing: LoadAware "
                                                                    "where a load-aware gateway routes every request)"))
    if est.shapes:
        print("\npod shapes for the forecast (the cheapest that fits the ceilings, else the one that carries the most "
              "within them; a switch made for a saving needs 20 %):")
        for o in est.shapes:
            need = f"{o.replicas} x {o.variant}" if o.replicas is not None else f"{o.variant}: cannot meet the SLO"
            cost = f"{o.hourly_cost:.2f}/h" if o.hourly_cost is not None else "-"
            print(f"  {need:28s} {cost:>10s}  {o.capacity_per_replica:.3g} req/s per replica ({o.limited_by})"
                  + (f"  [{o.note}]" if o.note else ""))
    print(f"\ndecision now: {d.action} {d.from_replicas} -> {d.to_replicas} ({d.variant})"
          + ("" if d.apply else "  [not applied: " + ("mode " + spec.scaling.mode.value if spec.scaling.mode.value != "Auto" else "hold") + "]"))
    for r in d.reasons:
        print(f"  - {r.code.value}: {r.message}")
    last = status.get("lastDecision")
    if last:
        print(f"\nlast decision by the operator at {last.get('time')}: {last.get('action')} {last.get('from')} -> {last.get('to')}")
        written = _epoch(last.get("time"))
        interval = parse_duration(spec.scaling.interval)
        if written is not None and now - written > 2 * interval:
            # The operator writes status only when something a user reads changes and decides from its
            # own memory in between: this replay starts from the last write, whose history stops there.
            print(f"  status was written {now - written:.0f}s ago (only changes are written); this replay starts from "
                  "that write, so a window or a hold may read differently from the operator's own decision, whose live "
                  "view is its metrics (llmscale_desired_replicas, llmscale_decisions_total)")
    return 0


def _epoch(stamp: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time as status writes it, or None."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def cmd_fleet_sim(args: argparse.Namespace) -> int:
    import logging

    from kubernetes.config import ConfigException

    from .sim.fleet import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args.kubeconfig, args.port, list_every_s=args.list_every)
    except ConfigException as e:
        raise CLIError(f"no usable Kubernetes configuration ({str(e).splitlines()[0][:200]})") from None
    return 0


def _positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmscale", description="Autoscale vLLM-style GPU inference servers on Kubernetes.")
    p.add_argument("--version", action="version", version=f"llmscale {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the operator (kopf)")
    r.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    r.add_argument("--prometheus-url", help="default Prometheus URL (env LLMSCALE_PROMETHEUS_URL)")
    r.add_argument("--metrics-port", type=int, help="port of the operator's /metrics (default 8080, 0 disables)")
    r.add_argument("--health-port", type=int, help="port of /healthz (default 8081, 0 disables)")
    r.add_argument("--namespace", "-n", action="append", help="watch only this namespace (repeatable)")
    r.add_argument("--peering", help="kopf peering name: run several replicas, one active")
    r.add_argument("--peering-priority", type=int, help="this replica's peering priority, 1..2^31-1 (default: random, "
                   "so that replicas never tie; env LLMSCALE_PEERING_PRIORITY)")
    r.add_argument("--no-disruption-budget", dest="disruption_budget", action="store_false", default=None,
                   help="own no PodDisruptionBudget per LLMDeployment (env LLMSCALE_DISRUPTION_BUDGET=false)")
    r.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON (env LLMSCALE_LOG_FORMAT)")
    r.add_argument("--verbose", "-v", action="store_true")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("simulate", help="replay a trace through the policy and baselines in virtual time (the twin)")
    s.add_argument("--trace", help="Azure CSV, Mooncake JSONL or ServeGen rate CSV (default: the bundled 57-min Azure code trace, x4)")
    s.add_argument("--scenario", help="synthetic load: constant, step, ramp, diurnal, burst")
    s.add_argument("--scenario-rate", type=float, default=5.0, help="base request rate of the scenario (req/s)")
    s.add_argument("--duration", type=float, default=1800.0, help="scenario length in seconds")
    s.add_argument("--deployment", help="LLMDeployment YAML to simulate (default: bundled example)")
    s.add_argument("--policy", action="append",
                   help="policy to run (repeatable; default all); fixed:<variant> is llmscale pinned to one pod shape")
    s.add_argument("--rate-scale", type=float, default=None, help="multiply the arrival rate, keeping shape and token mix")
    s.add_argument("--speedup", type=float, default=1.0, help="compress the trace's time by this factor")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="directory for results.json and simulate.png")
    s.add_argument("--routing", choices=["Service", "LoadAware"],  # llmscale.api.models.Routing (not imported here: startup)
                   help="what spreads requests over the pods, overriding the deployment's spec.routing (the bundled one "
                        "says LoadAware)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    s.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    s.set_defaults(func=cmd_simulate)

    e = sub.add_parser("explain", help="print the inputs, the decision the policy would make now, and why")
    e.add_argument("name")
    e.add_argument("--namespace", "-n", default="default")
    e.add_argument("--kubeconfig")
    e.add_argument("--prometheus-url")
    e.set_defaults(func=cmd_explain)

    c = sub.add_parser("crds", help="print the LLMDeployment CustomResourceDefinition")
    c.add_argument("--output", "-o", help="write to this file instead of stdout")
    c.set_defaults(func=cmd_crds)

    a = sub.add_parser("api-reference", help="print the API reference (Markdown) generated from the models")
    a.add_argument("--output", "-o", help="write to this file instead of stdout")
    a.set_defaults(func=cmd_api_reference)

    f = sub.add_parser("fleet-sim", help="serve simulated vLLM/DCGM metrics for the pods of a (test) cluster")
    f.add_argument("--kubeconfig")
    f.add_argument("--port", type=int, default=18000)
    f.add_argument("--list-every", type=_positive_seconds, default=1.0, metavar="SECONDS",
                   help="how often to list the pods (default 1; a scale bed of a thousand pods lists less often)")
    f.set_defaults(func=cmd_fleet_sim)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"llmscale: {e}", file=sys.stderr)
        return 2
    except (UnicodeDecodeError, OSError) as e:
        # A file given that is not UTF-8, a path that is a directory, a missing directory: a file's
        # error, said in one line. Past its start, the operator's own failures keep their traceback.
        if args.func is cmd_run and not (isinstance(e, UnicodeDecodeError) or e.filename):
            raise
        if isinstance(e, UnicodeDecodeError):
            print("llmscale: a file given is not UTF-8 text", file=sys.stderr)
        else:
            where = f"{e.filename}: " if e.filename else ""
            print(f"llmscale: {where}{e.strerror or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
