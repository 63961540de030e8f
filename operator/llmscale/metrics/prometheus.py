"""The only module that talks to Prometheus (through prometheus-api-client).

One `read()` per control cycle fetches every batched query once for all deployments and returns
typed Signals per deployment; a failed read yields Signals.unreachable(reason) for each, so the
policy holds instead of guessing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from prometheus_client import Counter
from urllib3.util.retry import Retry

from llmscale.api.models import LLMDeploymentSpec
from llmscale.api.units import parse_duration
from llmscale.policy.types import Signals

from . import queries
from .endpoints import (
    CredentialAuth,
    Endpoints,
    NamespaceCredentialError,
    NamespaceCredentials,
    SecretSource,
    Target,
    describe_failure,
    session_for,
)
from .snapshot import Key, Sample, build_signals, index_by_deployment, index_by_pool, to_sample

log = logging.getLogger("llmscale.metrics")

QUERY_ERRORS = Counter("llmscale_prometheus_query_errors", "Prometheus queries that failed.", ["signal"])
QUERIES = Counter("llmscale_prometheus_queries", "Prometheus queries sent.", ["signal"])


def _pool(spec: LLMDeploymentSpec) -> str | None:
    demand = spec.scaling.scale_to_zero.demand
    return demand.inference_pool if demand is not None else None


def _refused_queries(spec: LLMDeploymentSpec) -> dict[str, str]:
    """Per-CR PromQL runs with the operator's credential, so it runs only where the platform team
    allows it (allowQueryOverrides): otherwise the signals it would give are unknown, with why."""
    why = "per-CR PromQL is not allowed by the operator's configuration (prometheus.allowQueryOverrides)"
    refused = {name: why for name in spec.metrics.queries}
    demand = spec.scaling.scale_to_zero.demand
    if demand is not None and demand.query:
        refused["gatewayDemand"] = why
    return refused


@dataclass(frozen=True)
class _Answers:
    """A group's last successful batch read: the answers indexed by deployment, and the gateway's
    raw answer (indexed by the asking deployments' pools each time)."""

    at: float
    indexed: dict[str, dict[Key, list[Sample]]]
    pending: list[dict[str, Any]] | None
    asked: frozenset[str]  # the latency histograms asked for


# The batch's latency histograms, and the target of a deployment's SLO that needs each.
HISTOGRAMS: dict[str, Callable[[LLMDeploymentSpec], object]] = {
    "ttftBuckets": lambda spec: spec.slo.ttft,
    "itlBuckets": lambda spec: spec.slo.itl_target(),
    "e2eBuckets": lambda spec: spec.slo.e2e_latency,
}


def stale_after_s(spec: LLMDeploymentSpec) -> float:
    """A deployment's gauges whose newest sample is older than this are stale (unknown)."""
    return 2 * max(parse_duration(spec.scaling.interval), 15.0)


class PrometheusReader:
    """Reads every deployment's signals, batched per (endpoint, rate window), through the endpoints
    the platform team configured (see `endpoints`): a credential goes only to its own endpoint."""

    def __init__(self, endpoints: Endpoints, secrets: SecretSource | None = None):
        self.endpoints = endpoints
        self.credentials = NamespaceCredentials(secrets)  # namespaceSecret endpoints: each namespace's own
        self._clients: dict[tuple[str, str | None, str | None], PrometheusConnect] = {}
        self.pod_load: dict[Key, dict[str, float]] = {}
        self._answers: dict[tuple[tuple[str, str | None, str | None], str], _Answers] = {}

    def _client(self, target: Target) -> PrometheusConnect:
        key = target.identity
        if key not in self._clients:
            auth = CredentialAuth(self.credentials, target) if target.namespace else None
            timeout = target.endpoint.timeout_seconds if target.endpoint else 5.0
            # One quick retry on a gateway error, none on anything else, no redirects: a slow
            # endpoint costs at most two timeouts of the deployments that use it.
            retry = Retry(total=1, connect=1, read=0, redirect=0, status=1, backoff_factor=0.2,
                          status_forcelist=[502, 503, 504], raise_on_status=False)
            self._clients[key] = PrometheusConnect(url=target.url, session=session_for(target.endpoint, auth), retry=retry,
                                                   timeout=timeout)  # type: ignore[arg-type]
        return self._clients[key]

    def _query(self, target: Target, promql: str, signal: str) -> list[dict[str, Any]]:
        QUERIES.labels(signal).inc()
        c = self._client(target)
        params = {"timeout": f"{c._timeout:g}s"}
        if target.namespace is not None:
            # What a tenancy proxy in front of a shared Prometheus (prom-label-proxy, OpenShift's
            # Thanos querier) restricts the answer by; the token it checks is the namespace's own.
            params["namespace"] = target.namespace
        return c.custom_query(promql, params=params)

    def read(self, deployments: dict[Key, LLMDeploymentSpec], now: float | None = None,
             reuse_s: float = 0.0) -> dict[Key, Signals]:
        """Signals for every deployment, with a fixed number of queries per Prometheus and rate window.

        The batch queries answer for every deployment on the endpoint, asked for or not, so a group
        read successfully within `reuse_s` is answered from that read without a query: a deployment
        the last read did not include (new, or just taken over) costs no read of the whole batch
        (at a thousand, each joining one re-read everyone's: the take-over took minutes)."""
        now = time.time() if now is None else now
        # By where the reads go and with what: URL, endpoint, the namespace whose credential they carry.
        groups: dict[tuple[tuple[str, str | None, str | None], str], tuple[Target, list[Key]]] = {}
        out: dict[Key, Signals] = {}
        for key, spec in deployments.items():
            target = self.endpoints.resolve(spec.metrics.prometheus, spec.metrics.prometheus_url, key[0])
            if isinstance(target, str):
                out[key] = Signals.unreachable(target)  # never contacted: not an endpoint the operator may read
                continue
            groups.setdefault((target.identity, spec.metrics.rate_window), (target, []))[1].append(key)
        for group, (target, keys) in groups.items():
            window = group[1]
            results: dict[str, dict[Key, list[Sample]]] = {}
            failure: str | None = None
            pools: dict[tuple[str, str], list[Key]] = {}
            for key in keys:
                if pool := _pool(deployments[key]):
                    pools.setdefault((key[0], pool), []).append(key)
            # Only the latency histograms some deployment of the group has a target for: each is ~25
            # series per deployment, most of the answer's bytes and of the operator's CPU at scale.
            asked = frozenset(name for name, histogram_of in HISTOGRAMS.items()
                              if any(histogram_of(deployments[k]) is not None for k in keys))
            answered = self._answers.get(group)
            fresh = answered is not None and 0.0 <= now - answered.at <= reuse_s  # a clock stepping back: not fresh
            if fresh and answered is not None:
                asked |= answered.asked  # a read for one joiner never narrows what the group's answer holds
            reuse = fresh and answered is not None and asked <= answered.asked and (not pools or answered.pending is not None)
            answer_at = answered.at if reuse and answered is not None else now  # when the answer's read began
            if reuse and answered is not None:
                results = dict(answered.indexed)
                if pools and answered.pending is not None:
                    results["gatewayPending"] = index_by_pool(answered.pending, pools)
            elif target.namespace is not None:
                try:
                    self.credentials.get(target)  # before any request: none goes out without its credential
                except NamespaceCredentialError as e:
                    failure = str(e)
            pending: list[dict[str, Any]] | None = None
            for name, template in queries.BATCH.items() if failure is None and not reuse else ():
                if name == "gatewayPending" and not pools:
                    continue  # nobody scales to zero behind an InferencePool here
                if name in HISTOGRAMS and name not in asked:
                    continue  # nobody here has a target on it
                try:
                    raw = self._query(target, queries.render(template, window), name)
                    if name == "gatewayPending":
                        pending = raw
                    results[name] = index_by_pool(raw, pools) if name == "gatewayPending" else index_by_deployment(raw)
                except NamespaceCredentialError as e:  # the Secret went away between two requests
                    failure = str(e)
                    break
                except (PrometheusApiClientException, requests.RequestException, OSError, ValueError) as e:
                    QUERY_ERRORS.labels(name).inc()
                    failure = f"{target.label} could not be read ({describe_failure(e)})"
                    break
                except Exception as e:  # an answer that is not Prometheus' shape: this endpoint only
                    QUERY_ERRORS.labels(name).inc()
                    log.warning("%s: unexpected answer to %s (%s)", target.label, name, type(e).__name__)
                    failure = f"{target.label} gave an answer that is not a Prometheus query result ({type(e).__name__})"
                    break
            if failure is None and not reuse:
                self._answers[group] = _Answers(now, {k: v for k, v in results.items() if k != "gatewayPending"}, pending, asked)
            elif failure is not None:
                self._answers.pop(group, None)
            batch = set(keys)
            for key in keys:
                self.pod_load.pop(key, None)  # this read's answer or nothing: never last cycle's
            for key, samples in results.get("podLoad", {}).items():
                if key not in batch:
                    continue  # an answer about another batch's deployment (whoever shaped it) steers nothing
                # A pod whose load cannot be read is left out: the scale-down treats it as busy.
                self.pod_load[key] = {s.pod: s.value for s in samples if isinstance(s.pod, str) and s.value is not None}
            for key in keys:
                spec = deployments[key]
                if failure:
                    out[key] = Signals.unreachable(failure)
                    continue
                demand = spec.scaling.scale_to_zero.demand
                if demand is not None and demand.query and self.endpoints.allow_query_overrides:
                    results.setdefault("gatewayPending", {})[key] = self._demand(target, demand.query, key)
                stale_after = stale_after_s(spec)
                allowed = self.endpoints.allow_query_overrides
                overrides = self._overrides(target, spec, key) if spec.metrics.queries and allowed else None
                try:
                    signals = build_signals(spec, key, results, now, stale_after, overrides, read_at=answer_at)
                except Exception as e:  # a malformed series (e.g. a non-numeric le) holds its own deployment only
                    log.warning("%s/%s: malformed series from %s (%s)", *key, target.label, type(e).__name__)
                    out[key] = Signals.unreachable(f"{target.label} returned a malformed series for this deployment "
                                                   f"({type(e).__name__})")
                    continue
                refused = _refused_queries(spec) if not allowed else {}
                if refused:
                    signals = replace(signals, unknown={**signals.unknown, **refused})
                out[key] = signals
        return out

    def _demand(self, target: Target, promql: str, key: Key) -> list[Sample]:
        """A deployment's own demand query (scaleToZero.demand.query), as samples of the batch."""
        q = promql.replace("{namespace}", key[0]).replace("{name}", key[1])
        try:
            return [to_sample(s) for s in self._query(target, q, "demand")]
        except Exception as e:
            QUERY_ERRORS.labels("demand").inc()
            log.warning("demand query for %s/%s failed: %s", *key, type(e).__name__)
            return []

    def _overrides(self, target: Target, spec: LLMDeploymentSpec, key: Key) -> dict[str, float | None]:
        """Per-CR query overrides: one query each, the first sample's value."""
        vals: dict[str, float | None] = {}
        for name, promql in spec.metrics.queries.items():
            q = promql.replace("{namespace}", key[0]).replace("{name}", key[1])
            try:
                res = self._query(target, q, f"override:{name}")
                v = float(res[0]["value"][1]) if res else None
                vals[name] = v if v is not None and v == v and v not in (float("inf"), float("-inf")) and v >= 0 else None
            except Exception as e:
                QUERY_ERRORS.labels(f"override:{name}").inc()
                log.warning("override query %s for %s/%s failed: %s", name, *key, describe_failure(e))
                vals[name] = None
        return vals
