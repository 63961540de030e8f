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
