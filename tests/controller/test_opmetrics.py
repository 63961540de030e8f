"""The operator's own metrics: a deleted LLMDeployment leaves no series behind."""

from __future__ import annotations

from prometheus_client import generate_latest

from llmscale.controller import opmetrics as m


def _series(name: str) -> list[str]:
    return [line for line in generate_latest().decode().splitlines() if f'llmdeployment="{name}"' in line]


def test_forget_drops_every_series_of_one_deployment_and_no_other() -> None:
    m.DECISIONS.labels("ns-f", "gone", "ScaleUp", "QueueGrowing").inc()
    m.STATUS_WRITES.labels("ns-f", "gone", "changed").inc()
    m.CONDITION.labels("ns-f", "gone", "SLOMet").set(1)
    for gauge in (m.DESIRED, m.CURRENT, m.READY, m.BUDGET_LIMITED, m.HOURLY_COST, m.LAST_DECISION):
        gauge.labels("ns-f", "gone").set(2)
    m.DESIRED.labels("ns-f", "kept").set(1)
    m.CONDITION.labels("ns-f", "kept", "SLOMet").set(0)
    assert len(_series("gone")) >= 8
    m.forget("ns-f", "gone")
    assert _series("gone") == []
    assert len(_series("kept")) == 2
    m.forget("ns-f", "never-seen")  # nothing to drop is fine
