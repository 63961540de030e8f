"""The operator's own metrics: a deleted LLMDeployment, or one this replica no longer decides for, leaves no
series behind."""

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


def test_a_deployment_not_decided_for_in_four_intervals_loses_its_series_the_others_keep_theirs() -> None:
    """A replica that kopf's peering froze (another took over) exports its last values no longer than
    four of each deployment's intervals: an alert on them (SLOMet == 0) must not fire from the standby."""
    for name, interval in (("fast", 15.0), ("slow", 60.0)):
        m.CONDITION.labels("ns-s", name, "SLOMet").set(0)
        m.DESIRED.labels("ns-s", name).set(3)
        m.decided("ns-s", name, 1000.0, interval)
    m.DESIRED.labels("ns-s", "undecided").set(1)  # never decided here: not this sweep's to drop
    def sweep(now: float) -> list[tuple[str, str]]:  # other tests' deployments are not this test's
        return [key for key in m.forget_stale(now) if key[0] == "ns-s"]

    assert sweep(1060.0) == []  # exactly four intervals of "fast": still fresh
    assert len(_series("fast")) == 3 and len(_series("slow")) == 3
    assert sweep(1060.5) == [("ns-s", "fast")]
    assert _series("fast") == [] and len(_series("slow")) == 3 and len(_series("undecided")) == 1
    m.decided("ns-s", "slow", 1100.0, 60.0)  # decided again: fresh from then on
    assert sweep(1300.0) == []
    assert sweep(1340.5) == [("ns-s", "slow")] and _series("slow") == []
    assert sweep(5000.0) == []  # each is dropped once
    m.forget("ns-s", "undecided")
