"""Start the operator: configure kopf once, connect the clients, serve metrics, run."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import random
import threading
import time
from typing import Any

import kopf
from prometheus_client import start_http_server

from llmscale.metrics.endpoints import DEFAULT, EndpointError
from llmscale.metrics.prometheus import PrometheusReader
from llmscale.settings import OperatorSettings

from . import (
    handlers,  # noqa: F401  (registers the handlers)
    opmetrics,
)
from .handlers import Runtime
from .informer import OwnedObjects
from .kube import CountingApiClient, Kube

log = logging.getLogger("llmscale")


def _configure(settings: kopf.OperatorSettings, opts: OperatorSettings) -> None:
    # Handler progress and the diff base live in status, under our own key: the CR's metadata and
    # spec stay exactly as the user (or GitOps) wrote them.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.finalizer = "llmscale.io/finalizer"
    # Events for every handler failure, with the operator's name as the source.
    settings.posting.level = logging.INFO
    # Reconnect watches regularly so a silently dropped stream cannot stall scaling.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Peering (HA): one active replica; the others stand by.
    settings.peering.standalone = opts.peering is None
    if opts.peering:
        settings.peering.name = opts.peering
        settings.peering.mandatory = True
        # kopf pauses every replica that shares the highest priority ("possibly conflicting
        # operators"): pods of one Deployment are identical, so each draws its own.
        settings.peering.priority = opts.peering_priority or random.SystemRandom().randint(1, 2**31 - 1)
        settings.peering.lifetime = opts.peering_lifetime_s
        log.info("peering %r at priority %d (lifetime %d s)", opts.peering, settings.peering.priority, settings.peering.lifetime)
    settings.execution.max_workers = opts.workers


def _connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    scheme = token = None
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    if auth:
        scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def size_connection_pool(workers: int) -> None:
    """One pooled connection to the API server per handler thread, and a few for the sweeps: the
    client's default pool (five per CPU, ten here) made 16 workers open and discard a connection
    (a TCP and TLS handshake) on most calls at scale ("Connection pool is full, discarding
    connection" on the scale bed)."""
    from kubernetes import client

    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, workers + 4)
    client.Configuration.set_default(cfg)


def _watch_cache(namespaces: list[str]) -> OwnedObjects | None:
    """The watch cache of owned pods and Deployments and of HPAs and ScaledObjects, one stream per
    kind (per namespace when namespaces are listed). Namespace patterns (kopf accepts globs) cannot be watched one by one:
    then every decision lists them, as before."""
    from kubernetes import client

    if any(ch in ns for ns in namespaces for ch in "*?[!"):
        log.info("watch cache off: --namespaces has patterns (%s); pods and Deployments are listed at each decision",
                 ", ".join(namespaces))
        return None
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 4 * max(1, len(namespaces)) + 2  # each watch holds its connection
    cfg.retries = False  # urllib3's retries (and their log lines) not: a broken stream lists again after a backoff
    return OwnedObjects(CountingApiClient(cfg), namespaces).start()


MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """glibc gives threads that allocate at once arenas of their own, up to eight per core, and
    keeps what each freed: the batch reads' large JSON, decoded by a different handler thread each
    time, grew the operator's RSS by a fifth at a thousand deployments. Set before any thread
    starts, as MALLOC_ARENA_MAX would (which, when set, wins). False where it does not apply (not
    glibc)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


KOPF_CONNECTIONS = 32  # kopf's concurrent requests to the API server (besides a few per watched namespace)


def kopf_session(info: kopf.ConnectionInfo, connections: int) -> kopf.AiohttpSession:
    """An aiohttp session for kopf as kopf would build it from `info`, with at most `connections`
    connections (kopf's own sets no limit). Called inside kopf's event loop."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
    )
    return kopf.AiohttpSession(server=info.server, aiohttp_session=session, default_namespace=info.default_namespace)


STALE_SWEEP_S = 10.0


def _sweep_stale_series() -> None:
    """Drop, every few seconds, the series of the LLMDeployments this replica no longer decides for."""
    while True:
        time.sleep(STALE_SWEEP_S)
        for namespace, name in opmetrics.forget_stale(time.time()):
            log.info("%s/%s: no decision here for %d intervals, its metrics series dropped", namespace, name,
                     opmetrics.STALE_INTERVALS)


def _quiet_ticks(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.INFO and record.getMessage() == "Timer 'autoscale' succeeded.")


def run(opts: OperatorSettings, kubeconfig: str | None = None, verbose: bool = False) -> None:
    limit_malloc_arenas()
    from kubernetes import config

    if opts.log_format == "json":
        # kopf's JSON formatter (python-json-logger): one object per line with the object's
        # namespace and name under "object", for log pipelines.
        kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_refkey="object")
        logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    else:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # kopf says "Timer 'autoscale' succeeded." at every tick of every LLMDeployment (two hundred
        # lines a second at a thousand): that line alone is dropped, every other kopf line stays.
        logging.getLogger("kopf.objects").addFilter(_quiet_ticks)
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except (config.ConfigException, OSError) as e:
        raise SystemExit(f"llmscale: no usable Kubernetes configuration ({str(e).splitlines()[0][:200]})") from None
    size_connection_pool(opts.workers)
    Runtime.kube = Kube()
    try:
        endpoints = opts.endpoints()
    except EndpointError as e:
        raise SystemExit(f"llmscale: {e}") from None
    if DEFAULT not in endpoints.by_name:
        log.warning("no --prometheus-url: LLMDeployments that select no endpoint will hold with MetricsAvailable=False")
    # A namespace's own credential Secret is read only for endpoints that the platform team set up so.
    secrets = Runtime.kube.secret_data if any(ep.namespace_secret for ep in endpoints.by_name.values()) else None
    Runtime.reader = PrometheusReader(endpoints, secrets)
    Runtime.disruption_budget = opts.disruption_budget
    Runtime.max_waiters = max(1, opts.workers // 2)
    Runtime.allowed_host_paths = [p for p in opts.allowed_host_paths if p.startswith("/") and p != "/"]
    if opts.metrics_port:
        try:
            start_http_server(opts.metrics_port)
        except OSError as e:
            raise SystemExit(f"llmscale: cannot serve metrics on port {opts.metrics_port}: {e.strerror} (use --metrics-port)") from None
        log.info("operator metrics on :%d/metrics", opts.metrics_port)
        # A thread, not a kopf timer: a replica that kopf's peering froze runs no handlers, and it
        # is exactly that replica whose series must go.
        threading.Thread(target=_sweep_stale_series, name="stale-series", daemon=True).start()

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings, opts)

    patterns = any(ch in ns for ns in opts.namespaces for ch in "*?[!")
    last: list[tuple[kopf.ConnectionInfo, kopf.AiohttpSession]] = []

    @kopf.on.login()
    async def login(**_: Any) -> kopf.AiohttpSession | kopf.ConnectionInfo:
        # kopf talks to the same cluster as our client, with the same credentials, through a
        # session of our own: kopf's own has no bound on connections, and at a thousand
        # LLMDeployments its status patches held hundreds of TLS connections, each with a 256 KiB
        # buffer (a quarter of the operator's memory at its peak). Watches hold a connection each:
        # with namespace patterns their number is unknown, and kopf's own session is used.
        info = await asyncio.to_thread(_connection_info, kubeconfig)  # file reads, maybe an exec plugin
        if patterns:
            return info
        if last and last[0][0] == info:
            # The same credentials again: the same session, so that kopf sees that a login after
            # a 401 brought nothing new and stops (rather than log in again for ever).
            return last[0][1]
        session = kopf_session(info, KOPF_CONNECTIONS + 4 * len(opts.namespaces))
        last[:] = [(info, session)]
        return session
    Runtime.kube.cache = _watch_cache(opts.namespaces)  # once the configuration is known good
    asyncio.run(kopf.operator(
        clusterwide=not opts.namespaces,
        namespaces=opts.namespaces,
        standalone=opts.peering is None,
        peering_name=opts.peering,
        liveness_endpoint=f"http://0.0.0.0:{opts.health_port}/healthz" if opts.health_port else None,
    ))
