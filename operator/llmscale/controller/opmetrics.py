"""The operator's own Prometheus metrics (prometheus-client), served on --metrics-port."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("llmscale_decisions", "Scaling decisions by action and reason code.",
                    ["namespace", "llmdeployment", "action", "reason"])
DESIRED = Gauge("llmscale_desired_replicas", "Replicas the policy wants.", ["namespace", "llmdeployment"])
CURRENT = Gauge("llmscale_current_replicas", "Replicas of the owned Deployment.", ["namespace", "llmdeployment"])
READY = Gauge("llmscale_ready_replicas", "Ready replicas.", ["namespace", "llmdeployment"])
BUDGET_LIMITED = Gauge("llmscale_budget_limited", "1 when a cost or GPU ceiling caps the replicas.", ["namespace", "llmdeployment"])
HOURLY_COST = Gauge("llmscale_hourly_cost", "Hourly cost of every pod holding GPUs (starting, Ready, terminating; "
                    "every shape at its own price), in the price table's currency.",
                    ["namespace", "llmdeployment"])
RECONCILE = Histogram("llmscale_reconcile_duration_seconds", "Time to reconcile one LLMDeployment.", ["kind"],
                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SIGNALS_AGE = Histogram("llmscale_decision_signals_age_seconds", "How long before a decision began the Prometheus "
                        "read it decided on began (a batch read serves every deployment of its endpoint).",
                        buckets=(1, 2.5, 5, 7.5, 10, 12.5, 15, 20, 30, 60))
APPLY_ERRORS = Counter("llmscale_apply_errors", "Failed applies of owned objects.", ["namespace", "llmdeployment"])
STATUS_WRITES = Counter("llmscale_status_writes", "Status writes by why: first (this process's first decision), changed "
                        "(something a user reads), reread (status did not hold this process's last writes: someone "
                        "else wrote it, or the object it was handed lagged them). Nothing is written between decisions.",
                        ["namespace", "llmdeployment", "why"])
STATUS_SKIPPED = Counter("llmscale_status_writes_skipped", "Decisions whose status was not written: nothing a user "
                         "reads changed since the last write.", ["namespace", "llmdeployment"])
LAST_DECISION = Gauge("llmscale_last_decision_timestamp_seconds", "When the operator last decided for the "
                      "LLMDeployment (Unix time): a decision older than a few intervals means the operator fell behind.",
                      ["namespace", "llmdeployment"])
CONDITION = Gauge("llmscale_condition", "1 when the LLMDeployment's condition is True, 0 when False (as in its status).",
                  ["namespace", "llmdeployment", "type"])
KUBE_REQUESTS = Counter("llmscale_kube_requests", "Kubernetes API requests of the operator's own client, by HTTP "
                        "method (kopf's watches, status patches and Events go through kopf and are not counted).", ["verb"])
READ_WAITS_ABANDONED = Counter("llmscale_prometheus_read_waits_abandoned", "Decisions put off to the next tick because "
                               "their endpoint's batch read was in flight for longer than half a tick.")
WATCH_RELISTS = Counter("llmscale_watch_relists", "Full lists by the operator's watch cache (owned pods and "
                        "Deployments, HPAs, ScaledObjects): one at start, then one after each broken watch (410 Gone, "
                        "the API server away).",
                        ["kind"])
SHOWN_CONDITIONS = ("SLOMet", "MetricsAvailable", "BudgetLimited", "SLOFeasible", "CompetingAutoscaler", "Ready")

PER_DEPLOYMENT = (DESIRED, CURRENT, READY, BUDGET_LIMITED, HOURLY_COST, APPLY_ERRORS, STATUS_SKIPPED, LAST_DECISION)
PER_DEPLOYMENT_MORE = (DECISIONS, STATUS_WRITES, CONDITION)  # with more labels after namespace, llmdeployment


# A replica speaks for an LLMDeployment while it decides for it. One that stops (another replica
# took over the peering, or the deployment left the namespaces it watches) would otherwise export
# its last values for ever, and an alert on them (SLOMet == 0) would fire from the standby.
STALE_INTERVALS = 4
_decided: dict[tuple[str, str], tuple[float, float]] = {}  # (namespace, name) -> (last decision, interval s)
_lock = threading.Lock()


def decided(namespace: str, name: str, now: float, interval_s: float) -> None:
    """Record a decision (before its other series are set: a sweep from here on finds them fresh)."""
    with _lock:
        LAST_DECISION.labels(namespace, name).set(now)
        _decided[(namespace, name)] = (now, interval_s)


def forget_stale(now: float) -> list[tuple[str, str]]:
    """Drop every series of the LLMDeployments this replica has not decided for in STALE_INTERVALS
    of their intervals; returns them."""
    with _lock:
        stale = [key for key, (at, interval) in _decided.items() if now - at > STALE_INTERVALS * interval]
        for namespace, name in stale:
            _forget(namespace, name)
        return stale


def forget_condition(namespace: str, name: str, ctype: str) -> None:
    try:
        CONDITION.remove(namespace, name, ctype)
    except KeyError:
        pass


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted LLMDeployment: a fleet that churns must not grow /metrics."""
    with _lock:
        _forget(namespace, name)


def _forget(namespace: str, name: str) -> None:
    _decided.pop((namespace, name), None)
    for metric in PER_DEPLOYMENT:
        try:
            metric.remove(namespace, name)
        except KeyError:
            pass
    for metric in PER_DEPLOYMENT_MORE:
        for labels in [k for k in list(metric._metrics) if k[:2] == (namespace, name)]:  # noqa: SLF001 - no public listing
            metric.remove(*labels)
