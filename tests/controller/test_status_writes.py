"""Status writes (issue 11): a decision writes status only when it changes something a user reads
or a restart needs, and never otherwise (no periodic refresh: a steady deployment's status stays
as it is)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmscale.controller.status import needs_write, user_view

BASE: dict[str, Any] = {
    "desiredReplicas": 3, "startingReplicas": 0, "sloMet": "Met", "warnings": [], "variant": "h100x1", "replicas": 3,
    "readyReplicas": 3, "gpus": 3, "hourlyCost": "12.00", "shape": "h100x1", "observedGeneration": 2,
    "variants": [{"name": "h100x1", "replicas": 3, "readyReplicas": 3, "gpus": 3, "role": "Target"}], "switch": None,
    "coldStartSeconds": {"h100x1": 92.0}, "readyPods": ["a", "b", "c"],
    "conditions": [{"type": "SLOMet", "status": "True", "reason": "SLOMet", "message": "TTFT p99 226ms <= 1s",
                    "lastTransitionTime": "2026-12-04T10:00:00Z"}],
    "lastDecision": {"time": "2026-12-04T10:00:00Z", "action": "NoChange", "from": 3, "to": 3, "variant": "h100x1",
                     "applied": True, "reasons": ["CapacityPlan: forecast 30.10 req/s over 105s -> 3"]},
    "observed": {"ttftQuantile": 0.226, "requestRate": 30.1}, "ttftDisplay": "226ms@p99",
    "estimate": {"capacityPerReplica": 12.3, "forecastRate": 30.1, "ceilingReplicas": 8},
    "history": {"capacityCorrection": 1.0, "rateSamples": [[1.0, 30.1]], "recommendations": [[1.0, 3]], "burstGaps": []},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(leaf) if leaf.isdigit() else leaf] = value
    return out


@pytest.mark.parametrize(("path", "value", "user_reads"), [
    # Readings that move at every decision: not written (status keeps those of the last write).
    ("observed.ttftQuantile", 0.231, False),
    ("ttftDisplay", "231ms@p99", False),
    ("estimate.forecastRate", 31.7, False),
    ("lastDecision.time", "2026-12-04T10:00:15Z", False),
    ("lastDecision.reasons", ["CapacityPlan: forecast 31.70 req/s over 105s -> 3"], False),
    ("conditions.0.message", "TTFT p99 231ms <= 1s", False),
    ("history.rateSamples", [[1.0, 30.1], [16.0, 30.3]], False),
    ("history.recommendations", [[1.0, 3], [16.0, 3]], False),
    # Why nothing changed moves with the readings (seen on the bed: a steady load's burst memory
    # held at every other decision, and each wrote); why a change was made is read.
    ("lastDecision.reasons", ["CapacityPlan: forecast 31.70 req/s", "BurstMemory: holding"], False),
    # What a user reads, or a restart must not lose: written at once.
    ("desiredReplicas", 4, True),
    ("readyReplicas", 2, True),
    ("sloMet", "Breached", True),
    ("conditions.0.status", "False", True),
    ("conditions.0.reason", "SLOBreachTTFT", True),
    ("lastDecision.action", "ScaleUp", True),
    ("estimate.ceilingReplicas", 6, True),
    ("warnings", ["TTFT target between bucket edges"], True),
    ("shape", "l4x1->h100x1", True),
    ("coldStartSeconds", {"h100x1": 95.0}, True),
    ("history.capacityCorrection", 0.9, True),
    ("history.burstGaps", [120.0], True),
    ("history.burstGrowth", [0.9], True),
    # The long memory moves at every decision (its requests): not written alone; a big rise shows in the peak.
    ("history.loadRecord", [[0.0, 30.0, 28.0, 450.0]], False),
    ("history.burstFrom", 40.0, True),
    ("history.heldLevel", 31.0, False),
    ("history.riseSince", 1000.0, False),
])
def test_a_decision_writes_status_only_when_it_changes_what_a_user_reads(path: str, value: Any, user_reads: bool) -> None:
    view = user_view(BASE)
    new = user_view(changed(path, value))
    assert needs_write(view, new) == ("changed" if user_reads else None)
    assert needs_write(view, view) is None


def test_a_steady_deployment_is_never_written_however_long_it_runs() -> None:
    """No periodic refresh: a day of decisions whose readings move but whose user view does not
    writes nothing after the first (the readings in status are those of the last write)."""
    writes = 0
    written = None
    for i in range(24 * 60 * 4):  # a day of 15 s decisions
        st = changed("observed.ttftQuantile", 0.2 + (i % 7) / 100)
        st["lastDecision"]["time"] = f"t{i}"
        st["history"]["rateSamples"] = [[float(i), 30.0 + (i % 5) / 10]]
        st["history"]["recommendations"] = [[float(i), 3]]
        now_view = user_view(st)
        if needs_write(written, now_view):
            writes, written = writes + 1, now_view
    assert writes == 1


def test_the_first_decision_writes_and_a_malformed_status_has_a_view() -> None:
    assert needs_write(None, user_view(BASE)) == "first"
    odd = {"lastDecision": "x", "history": 3, "conditions": ["y", {"type": "Ready"}], "estimate": None}
    assert user_view(odd)["conditions"] == [("Ready", "None", "None")]


def test_the_operator_recognises_its_own_write_after_the_round_trip_through_the_api() -> None:
    """Between writes the next decision continues from the operator's memory only while status holds
    the history it wrote: that history, as status gives it back (JSON, integers for whole floats),
    must compare equal to what the operator kept."""
    import json

    from llmscale.policy import History

    h = History(recommendations=((1000.123456, 3), (1015.5, 4)), rate_samples=((1000.123456, 30.123456789), (1015.0, 1.0)),
                capacity_correction=1.0, mean_input=1234.5678901, mean_output=200.0, mix_requests=240.0,
                planned_mix=(1234.5678, 200.0), burst_gaps=(120.04,), queue_scrapes=((1000.5, 2.0, 3.0), (1015.0, 0.0, 4.0)), ready_seen=3)
    kept = History.parse(h.to_dict())[0]
    returned = json.loads(json.dumps(h.to_dict()).replace(".0,", ",").replace(".0]", "]"))  # whole floats as integers
    assert History.parse(returned) == (kept, ())


def test_the_reasons_of_a_change_are_read_those_of_no_change_are_not() -> None:
    up = changed("lastDecision.action", "ScaleUp")
    more = copy.deepcopy(up)
    more["lastDecision"]["reasons"] = ["CapacityPlan: forecast 31.70 req/s", "BurstMemory: holding"]
    assert user_view(more) != user_view(up)


def test_a_new_burst_peak_is_written_at_once() -> None:
    """A restart must not forget a burst: the burst memory's peak is something a restart reads. A
    steady load's peak that creeps up by chance (2.0 -> 2.3 req/s: the highest of more windows; in
    CI 2 req/s wrote at four decisions of a steady minute) is not written; a peak 50 % above what a
    restart would find (the written samples still in the memory's span) is written at once, and so
    is a first peak. A falling peak is not (a restart drops old samples by their age too)."""
    def write(written: list[list[float]], now: list[list[float]]) -> str | None:
        return needs_write(user_view(changed("history.rateSamples", written)),
                           user_view(changed("history.rateSamples", now)))

    assert write([[1.0, 30.1]], [[1.0, 30.1], [16.0, 30.4]]) is None
    assert write([[1.0, 30.1]], [[1.0, 30.1], [16.0, 46.0]]) == "changed"
    assert write([[1.0, 2.0]], [[1.0, 2.0], [16.0, 2.3]]) is None
    assert write([[1.0, 2.4]], [[1.0, 2.4], [16.0, 2.5]]) is None  # across the old 25 % grid's step: no write
    assert write([[1.0, 2.4]], [[1.0, 2.4], [16.0, 3.6]]) == "changed"
    assert write([[1.0, 0.0]], [[1.0, 0.0], [16.0, 1.0]]) == "changed"  # the first load after none
    # The burst leaves the memory (its sample ages out): nothing a restart needs.
    assert write([[1.0, 2.0], [16.0, 9.0]], [[20.0, 2.0], [31.0, 2.1]]) is None
    assert write([[1.0, 9.0]], [[1.0, 9.0], [16.0, 0.0]]) is None  # the load gone: the burst is kept, and written
    # Every written sample aged out: the memory's lowest stands for them. A steady load, varying
    # under half, writes nothing; a burst over it is written.
    assert write([[1.0, 2.0]], [[100.0, 2.0], [115.0, 2.6]]) is None
    assert write([[1.0, 2.0]], [[100.0, 2.0], [115.0, 3.1]]) == "changed"
    assert write([[1.0, 9.0]], [[100.0, 0.0]]) is None  # no load now, nothing to keep
    # A sample that cannot be read is no peak.
    assert write([[1.0, 2.0]], [[1.0, 2.0], [16.0, "NaN"], [17.0, "x"], [18.0, -5.0]]) is None


def _decision(memo: dict, status: dict, history: Any, now: float, fields: dict) -> tuple[dict, Any]:
    """What the timer does around a decision: continue from memory or status, compute, write or keep."""
    import kopf

    from llmscale.controller.handlers import _write_or_keep, continue_from_memory

    st, _hist, dropped, own = continue_from_memory(dict(status), memo.get("own_status"))
    patch = kopf.Patch()
    patch.status.update({**fields, "history": history.to_dict(), "lastDecision": {"time": str(now), "action": "NoChange"}})
    _write_or_keep(patch, memo, own, st, history, ("ns", "chat"))
    return dict(patch.get("status") or {}), dropped


def test_the_timer_writes_what_changed_keeps_the_rest_and_reads_status_again_when_someone_else_wrote() -> None:
    from llmscale.controller.handlers import continue_from_memory
    from llmscale.policy import History

    memo: dict = {}
    h1 = History(rate_samples=((1.0, 10.0),))
    out, _ = _decision(memo, {}, h1, 100.0, {"desiredReplicas": 2})
    assert out["desiredReplicas"] == 2  # the first decision writes
    status = {**out}
    h2 = History(rate_samples=((1.0, 10.0), (16.0, 10.1)))
    out, _ = _decision(memo, status, h2, 115.0, {"desiredReplicas": 2})
    assert out == {}  # nothing a user reads changed: no write
    assert memo["own_status"].history == h2  # but the next decision continues from h2
    _, hist, _, own = continue_from_memory(status, memo["own_status"])
    assert hist == h2 and own is not None
    out, _ = _decision(memo, status, h2, 130.0, {"desiredReplicas": 3})
    assert out["desiredReplicas"] == 3  # a change a user reads: written at once
    status = {**out}
    # Someone else writes status (or a restart): read again, and this decision writes whatever it holds.
    foreign = {**status, "history": {**status["history"], "capacityCorrection": 0.42}}
    out, dropped = _decision(memo, foreign, h2, 145.0, {"desiredReplicas": 3})
    assert out["desiredReplicas"] == 3 and dropped == ()
    corrupt = {**status, "history": {**status["history"], "queueScrapes": "garbage"}}
    out, dropped = _decision(memo, corrupt, h2, 160.0, {"desiredReplicas": 3})
    assert dropped == ("queueScrapes",) and out  # reported once, and written over


def test_an_api_error_in_a_handler_reaches_kopf_in_our_words() -> None:
    """kopf logs a failed handler's exception and posts the line as an Event: an ApiException's
    text carries the API server's response headers and body, so it never gets there as such."""
    import kopf
    import pytest
    from kubernetes.client.exceptions import ApiException

    from llmscale.controller.handlers import _api_errors_in_our_words

    e = ApiException(status=500, reason="Internal Server Error")
    e.body = '{"message": "etcd at 10.0.0.7:2379 said SECRET-DETAIL"}'
    e.headers = {"Audit-Id": "SECRET-HEADER"}
    with pytest.raises(kopf.TemporaryError) as got, _api_errors_in_our_words():
        raise e
    assert str(got.value) == "a Kubernetes API call failed: HTTP 500 Internal Server Error"
    assert got.value.__cause__ is None and got.value.__suppress_context__


def test_an_unreachable_api_server_reaches_kopf_in_our_words() -> None:
    """CI (fault e2e): while the API server was down a handler raised the client's raw urllib3
    MaxRetryError, whose text kopf logged and posted at every tick."""
    import kopf
    import pytest
    import urllib3.exceptions

    from llmscale.controller.handlers import _api_errors_in_our_words

    refused = urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")
    e = urllib3.exceptions.MaxRetryError(None, "/apis/llmscale.io/v1alpha1/SECRET-PATH", refused)  # type: ignore[arg-type]
    with pytest.raises(kopf.TemporaryError) as got, _api_errors_in_our_words():
        raise e
    assert str(got.value) == "the Kubernetes API server could not be reached (NewConnectionError)"
    assert got.value.__cause__ is None and got.value.__suppress_context__
    with pytest.raises(kopf.TemporaryError) as got, _api_errors_in_our_words():
        raise urllib3.exceptions.ProtocolError("Connection aborted.")
    assert str(got.value) == "the Kubernetes API server could not be reached (ProtocolError)"


@pytest.mark.parametrize(("interval", "due", "every"), [
    (15.0, 12.5, 15.0),  # a multiple of the 5 s tick: every interval, a tick up to 2.5 s early still decides
    (12.0, 12.5, 15.0),  # between ticks: rounded up to the next tick, never sooner than asked
    (10.0, 7.5, 10.0),
    (2.0, 2.5, 5.0),     # under a tick: at every tick
])
def test_decisions_fall_on_ticks_at_the_interval_rounded_up(interval: float, due: float, every: float) -> None:
    from llmscale.controller.handlers import decision_due_s

    assert decision_due_s(interval, 5.0) == due
    # On sharp 5 s ticks, the first tick at or past `due` after a decision is `every` later.
    assert next(t for t in range(5, 100, 5) if t >= due) == every


@pytest.mark.parametrize(("since", "ticks", "interval", "due"), [
    (12.5, 1, 15.0, True),    # by time: half a tick early still decides
    (12.0, 2, 15.0, False),   # neither: too early, and not yet the third tick
    (11.0, 3, 15.0, True),    # the third tick since a decision that began 4 s late: decides on the grid
    (10.0, 3, 15.0, False),   # a tick (or a retry) a whole tick early: not on the grid, waits
    (4.0, 3, 15.0, False),    # three quick retries after a failure are not three ticks of time
    (0.5, 1, 5.0, True),      # an interval of one tick: every tick
    (3.0, 2, 10.0, False),
    (6.0, 2, 10.0, True),
])
def test_a_decision_that_began_late_does_not_put_the_next_off_a_tick(since: float, ticks: int, interval: float,
                                                                     due: bool) -> None:
    """At a thousand deployments a handler thread may start its tick seconds late; the next
    decision, judged by time alone, then came a whole tick late (decision age p99 20 s at 15 s)."""
    from llmscale.controller.handlers import decision_due

    assert decision_due(since, ticks, interval, 5.0) is due


def test_a_status_that_lags_several_writes_is_still_recognised_as_this_operators_own() -> None:
    """kopf hands the timer the object as its watch last saw it: at a thousand deployments the
    watch fell several writes behind, each such lag was read as someone else's write, and each cost
    one more write (86 a cycle in the scale bench). The last WRITES_RECOGNISED writes are the
    operator's own; one older than that, or anyone else's, is read again."""
    from llmscale.controller.handlers import WRITES_RECOGNISED, continue_from_memory
    from llmscale.policy import History

    memo: dict = {}
    statuses = []
    status: dict = {}
    for i in range(WRITES_RECOGNISED + 2):
        out, _ = _decision(memo, status, History(rate_samples=((float(i), 10.0 + i),)), 100.0 + 15 * i,
                           {"desiredReplicas": 1 + i})  # a change at every decision: each one written
        assert out, i
        status = {**out}
        statuses.append(status)
    own = memo["own_status"]
    for back, recognised in ((1, True), (3, True), (WRITES_RECOGNISED, True), (WRITES_RECOGNISED + 1, False)):
        _, hist, _, mine = continue_from_memory(statuses[-back], own)
        assert (mine is not None) == recognised, back
        assert hist == (own.history if recognised else History.parse(statuses[-back]["history"])[0])


def test_a_lagging_status_gives_the_next_decision_the_conditions_it_last_computed() -> None:
    """While kopf's copy lags the operator's writes, the conditions (and warnings, Ready pods, cold
    starts) come from memory: read from the lagging copy, a condition flip already written would
    be seen again, its Event posted twice and its lastTransitionTime moved."""
    from llmscale.controller.handlers import FRESH_KEYS, continue_from_memory
    from llmscale.policy import History

    memo: dict = {}
    old_conds = [{"type": "SLOMet", "status": "False", "reason": "SLOBreachTTFT"}]
    new_conds = [{"type": "SLOMet", "status": "True", "reason": "SLOMet"}]
    out1, _ = _decision(memo, {}, History(rate_samples=((1.0, 10.0),)), 100.0, {"conditions": old_conds, "warnings": ["w"]})
    lagging = {**out1}
    _decision(memo, lagging, History(rate_samples=((16.0, 20.0),)), 115.0, {"conditions": new_conds, "warnings": []})
    st, _, _, own = continue_from_memory(lagging, memo["own_status"])  # kopf still hands over the first write
    assert own is not None and {"conditions", "warnings", "readyPods", "coldStartSeconds"} <= set(FRESH_KEYS)
    assert st["conditions"] == new_conds and st["warnings"] == []


def test_at_take_over_a_lagging_copy_of_the_predecessors_status_is_not_read_again() -> None:
    """The scale bench's second mode: a new operator's watch lagged its first writes at 1,000
    deployments, so the timer was handed the predecessor's status again and again; each time it was
    read as someone else's write, decided from again (the predecessor's history: the window it had
    observed since restarted) and written once more, 156 writes a cycle, which lagged the watch
    further. A status read again once and written over is recognised when handed over again; a new
    foreign write, or a corrupt one, is still read again, and the operator's own writes from before
    a reread stay recognised."""
    from llmscale.controller.handlers import continue_from_memory
    from llmscale.policy import History

    predecessor = {"desiredReplicas": 2, "history": History(rate_samples=((1.0, 10.0),), observing_since=1.0).to_dict()}
    memo: dict = {}
    mine = History(rate_samples=((1.0, 10.0), (16.0, 11.0)), observing_since=1.0)
    out, _ = _decision(memo, predecessor, mine, 100.0, {"desiredReplicas": 2})
    assert out  # read again and written: a new operator writes what it decided
    first = {**predecessor, **out}
    for _ in range(3):  # kopf keeps handing over the predecessor's copy
        st, hist, dropped, own = continue_from_memory(dict(predecessor), memo["own_status"])
        assert own is not None and hist == mine and dropped == ()
    # Someone else's new write is news: read again, written over; and our first write, handed over
    # late after it, is still ours.
    foreign = {**first, "history": {**first["history"], "capacityCorrection": 0.5}}
    _, hist, _, own = continue_from_memory(foreign, memo["own_status"])
    assert own is None and hist.capacity_correction == 0.5
    later = History(rate_samples=((1.0, 10.0), (31.0, 12.0)), capacity_correction=0.5, observing_since=1.0)
    out, _ = _decision(memo, foreign, later, 115.0, {"desiredReplicas": 3})
    assert out
    for lagging in (first, foreign, predecessor):
        _, hist, _, own = continue_from_memory(dict(lagging), memo["own_status"])
        assert own is not None and hist == later
    corrupt = {**first, "history": {**first["history"], "queueScrapes": "garbage"}}
    _, _, dropped, own = continue_from_memory(corrupt, memo["own_status"])
    assert own is None and dropped == ("queueScrapes",)
    # An older write of its own coming back (first) says the watch may still hand over a copy
    # written over after it (foreign): still recognised, the memory carried on in order.
    own = memo["own_status"]
    for lagging in (first, foreign, predecessor):
        _, hist, _, own = continue_from_memory(dict(lagging), own)
        assert own is not None and hist == later, lagging
    # Once the newest write comes back, the watch has passed everything it wrote over: those
    # copies are news again.
    latest = {**foreign, **out}
    _, _, _, own = continue_from_memory(dict(latest), own)
    assert own is not None and own.superseded == ()
    _, _, _, own = continue_from_memory(dict(predecessor), own)
    assert own is None
    # And a write that never came back (it failed) masks them for SUPERSEDED_FOR_S at most.
    until = memo["own_status"].superseded_until
    assert continue_from_memory(dict(predecessor), memo["own_status"], now=until - 1.0)[3] is not None
    assert continue_from_memory(dict(predecessor), memo["own_status"], now=until)[3] is None


def test_a_status_with_no_history_is_never_taken_for_a_lagging_copy() -> None:
    """Review: the first decision of a new object reads an empty status; remembered as written
    over, a status someone later cleared was taken for a lagging copy and never written again, and
    a restart then found nothing of what the operator had learnt."""
    from llmscale.controller.handlers import continue_from_memory
    from llmscale.policy import History

    memo: dict = {}
    out, _ = _decision(memo, {}, History(rate_samples=((1.0, 10.0),)), 100.0, {"desiredReplicas": 2})
    assert out and memo["own_status"].superseded == ()
    for cleared in ({}, {"history": None}, {"desiredReplicas": 2, "history": {}}):
        _, hist, _, own = continue_from_memory(dict(cleared), memo["own_status"])
        assert own is None and hist == History(), cleared
