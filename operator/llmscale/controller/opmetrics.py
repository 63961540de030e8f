"""The operator's own Prometheus metrics (prometheus-client), served on --metrics-port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("llmscale_decisions", "Scaling decisions by action and reason code.",
                    ["namespace", "llmdeployment", "action", "reason"])
DESIRED = Gauge("llmscale_desired_replicas", "Replicas the policy wants.", ["namespace", "llmdeployment"])
CURRENT = Gauge("llmscale_current_replicas", "Replicas of the owned Deployment.", ["namespace", "llmdeployment"])
READY = Gauge("llmscale_ready_replicas", "Ready replicas.", ["namespace", "llmdeployment"])
BUDGET_LIMITED = Gauge("llmscale_budget_limited", "1 when a cost or GPU ceiling caps the replicas.", ["namespace", "llmdeployment"])
HOURLY_COST = Gauge("llmscale_hourly_cost", "Hourly cost of the current replicas, in the price table's currency.",
                    ["namespace", "llmdeployment"])
RECONCILE = Histogram("llmscale_reconcile_duration_seconds", "Time to reconcile one LLMDeployment.", ["kind"],
                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
APPLY_ERRORS = Counter("llmscale_apply_errors", "Failed applies of owned objects.", ["namespace", "llmdeployment"])
STATUS_WRITES = Counter("llmscale_status_writes", "Status writes by why: first, changed (something a user reads), "
                        "refresh (readings only, every few intervals), counts (replica counts between decisions).",
                        ["namespace", "llmdeployment", "why"])
STATUS_SKIPPED = Counter("llmscale_status_writes_skipped", "Decisions whose status was not written: nothing a user "
                         "reads changed and the last write is recent.", ["namespace", "llmdeployment"])
LAST_DECISION = Gauge("llmscale_last_decision_timestamp_seconds", "When the operator last decided for the "
                      "LLMDeployment (Unix time): a decision older than a few intervals means the operator fell behind.",
                      ["namespace", "llmdeployment"])
CONDITION = Gauge("llmscale_condition", "1 when the LLMDeployment's condition is True, 0 when False (as in its status).",
                  ["namespace", "llmdeployment", "type"])
SHOWN_CONDITIONS = ("SLOMet", "MetricsAvailable", "BudgetLimited", "SLOFeasible", "CompetingAutoscaler", "Ready")

PER_DEPLOYMENT = (DESIRED, CURRENT, READY, BUDGET_LIMITED, HOURLY_COST, APPLY_ERRORS, STATUS_SKIPPED, LAST_DECISION)
PER_DEPLOYMENT_MORE = (DECISIONS, STATUS_WRITES, CONDITION)  # with more labels after namespace, llmdeployment


def forget_condition(namespace: str, name: str, ctype: str) -> None:
    try:
        CONDITION.remove(namespace, name, ctype)
    except KeyError:
        pass


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted LLMDeployment: a fleet that churns must not grow /metrics."""
    for metric in PER_DEPLOYMENT:
        try:
            metric.remove(namespace, name)
        except KeyError:
            pass
    for metric in PER_DEPLOYMENT_MORE:
        for labels in [k for k in list(metric._metrics) if k[:2] == (namespace, name)]:  # noqa: SLF001 - no public listing
            metric.remove(*labels)
