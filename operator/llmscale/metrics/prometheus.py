"""The only module that talks to Prometheus (through prometheus-api-client).

One `read()` per control cycle fetches every batched query once for all deployments and returns
typed Signals per deployment; a failed read yields Signals.unreachable(reason) for each, so the
policy holds instead of guessing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from prometheus_client import Counter

from llmscale.api.models import LLMDeploymentSpec
from llmscale.api.units import parse_duration
from llmscale.policy.types import Signals

from . import queries
from .snapshot import Key, build_signals, index_by_deployment, index_by_pool

log = logging.getLogger("llmscale.metrics")

QUERY_ERRORS = Counter("llmscale_prometheus_query_errors", "Prometheus queries that failed.", ["signal"])
QUERIES = Counter("llmscale_prometheus_queries", "Prometheus queries sent.", ["signal"])


@dataclass(frozen=True)
class PrometheusSettings:
    url: str
    bearer_token_file: str | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    timeout_s: float = 5.0


def _pool(spec: LLMDeploymentSpec) -> str | None:
    demand = spec.scaling.scale_to_zero.demand
    return demand.inference_pool if demand is not None else None


class PrometheusReader:
    def __init__(self, settings: PrometheusSettings):
        self.settings = settings
        self._clients: dict[str, PrometheusConnect] = {}
        self.pod_load: dict[Key, dict[str, float]] = {}

    def _client(self, url: str) -> PrometheusConnect:
        if url not in self._clients:
            s = self.settings
            headers = {}
            if s.bearer_token_file:
                with open(s.bearer_token_file) as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            c = PrometheusConnect(url=url, headers=headers or None, disable_ssl=not s.verify_tls)
            if s.ca_bundle and s.verify_tls:
                c._session.verify = s.ca_bundle  # prometheus-api-client has no CA option; requests honours this
            self._clients[url] = c
        return self._clients[url]

    def _query(self, url: str, promql: str, signal: str) -> list[dict[str, Any]]:
        QUERIES.labels(signal).inc()
        return self._client(url).custom_query(promql, params={"timeout": f"{self.settings.timeout_s:g}s"},
                                              timeout=self.settings.timeout_s)

    def read(self, deployments: dict[Key, LLMDeploymentSpec], now: float | None = None) -> dict[Key, Signals]:
        """Signals for every deployment, with a fixed number of queries per Prometheus and rate window."""
        now = time.time() if now is None else now
        groups: dict[tuple[str, str], list[Key]] = {}
        for key, spec in deployments.items():
            url = spec.metrics.prometheus_url or self.settings.url
            groups.setdefault((url, spec.metrics.rate_window), []).append(key)
        out: dict[Key, Signals] = {}
        for (url, window), keys in groups.items():
            results: dict[str, dict[Key, list[dict[str, Any]]]] = {}
            failure: str | None = None
            pools = {(key[0], pool): key for key in keys if (pool := _pool(deployments[key]))}
            for name, template in queries.BATCH.items():
                if name == "gatewayPending" and not pools:
                    continue  # nobody scales to zero behind an InferencePool here
                try:
                    raw = self._query(url, queries.render(template, window), name)
                    results[name] = (index_by_pool(raw, pools) if name == "gatewayPending" else index_by_deployment(raw))
                except (PrometheusApiClientException, OSError, ValueError) as e:
                    QUERY_ERRORS.labels(name).inc()
                    failure = f"Prometheus at {url} could not be read ({type(e).__name__}: {str(e)[:160]})"
                    break
                except Exception as e:  # requests' exceptions and the like: any failure means "hold"
                    QUERY_ERRORS.labels(name).inc()
                    failure = f"Prometheus at {url} could not be read ({type(e).__name__}: {str(e)[:160]})"
                    break
            for key, samples in results.get("podLoad", {}).items():
                self.pod_load[key] = {
                    s["metric"]["pod"]: float(s["value"][1]) for s in samples if "pod" in s.get("metric", {})
                }
            for key in keys:
                spec = deployments[key]
                if failure:
                    out[key] = Signals.unreachable(failure)
                    continue
                demand = spec.scaling.scale_to_zero.demand
                if demand is not None and demand.query:
                    results.setdefault("gatewayPending", {})[key] = self._demand(url, demand.query, key)
                stale_after = 2 * max(parse_duration(spec.scaling.interval), 15.0)
                overrides = self._overrides(url, spec, key) if spec.metrics.queries else None
                out[key] = build_signals(spec, key, results, now, stale_after, overrides)
        return out

    def _demand(self, url: str, promql: str, key: Key) -> list[dict[str, Any]]:
        """A deployment's own demand query (scaleToZero.demand.query), as samples of the batch."""
        q = promql.replace("{namespace}", key[0]).replace("{name}", key[1])
        try:
            return self._query(url, q, "demand")
        except Exception as e:
            QUERY_ERRORS.labels("demand").inc()
            log.warning("demand query for %s/%s failed: %s", *key, type(e).__name__)
            return []

    def _overrides(self, url: str, spec: LLMDeploymentSpec, key: Key) -> dict[str, float | None]:
        """Per-CR query overrides: one query each, the first sample's value."""
        vals: dict[str, float | None] = {}
        for name, promql in spec.metrics.queries.items():
            q = promql.replace("{namespace}", key[0]).replace("{name}", key[1])
            try:
                res = self._query(url, q, f"override:{name}")
                v = float(res[0]["value"][1]) if res else None
                vals[name] = v if v is not None and v == v and v not in (float("inf"), float("-inf")) and v >= 0 else None
            except Exception as e:
                QUERY_ERRORS.labels(f"override:{name}").inc()
                log.warning("override query %s for %s/%s failed: %s", name, *key, e)
                vals[name] = None
        return vals
