"""The test bed's fleet simulator: its request tally against SLO targets (what bench.fidelity reads
for the joint attainment), its validation, and its HTTP face."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from llmscale.sim.fleet import Fleet, serve
from llmscale.sim.traffic import TraceError

KEY = ("ns", "chat")


def pod(uid: str, ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"chat-{uid}", "namespace": KEY[0], "labels": {"llmscale.io/deployment": KEY[1]},
                         "annotations": {"llmscale.io/model": "meta-llama/Llama-3.1-8B-Instruct"}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}, "spec": {"containers": []}}


class Clock:
    def __init__(self, fleet: Fleet) -> None:
        self.t = 0.0
        fleet.now = lambda: self.t  # type: ignore[method-assign]

    def run(self, fleet: Fleet, seconds: float, tick: float = 0.1) -> None:
        for _ in range(round(seconds / tick)):
            self.t += tick
            fleet.tick()


def tally(fleet: Fleet) -> dict[str, Any]:
    one = fleet.traffic_of(*KEY)
    assert one is not None
    return one["requests"]


def test_light_load_every_request_counted_and_within_every_target() -> None:
    fleet = Fleet(seed=3)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a")])
    fleet.set_traffic(*KEY, {"rate": 4, "meanInput": 300, "meanOutput": 30, "slo": {"ttft": 1.0, "itl": 0.1}})
    clock.run(fleet, 20)
    fleet.set_traffic(*KEY, {"rate": 0})  # stopping the traffic keeps the count
    clock.run(fleet, 10)
    got = tally(fleet)
    assert got["arrived"] == fleet.arrived[KEY] and got["arrived"] > 40
    assert got == {"targets": {"ttft": 1.0, "itl": 0.1}, "arrived": got["arrived"], "finished": got["arrived"], "rejected": 0,
                   "withinTTFT": got["arrived"], "withinITL": got["arrived"], "withinAll": got["arrived"]}


def test_targets_no_request_meets_count_against_each_target_and_the_joint() -> None:
    fleet = Fleet(seed=3)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a")])
    # A first token within 1 ms is out of reach; the inter-token target is not.
    fleet.set_traffic(*KEY, {"rate": 4, "meanInput": 300, "meanOutput": 30, "slo": {"ttft": 0.001, "itl": 0.1}})
    clock.run(fleet, 10)
    fleet.set_traffic(*KEY, {"rate": 0})
    clock.run(fleet, 10)
    got = tally(fleet)
    assert got["finished"] == got["arrived"] > 0
    assert (got["withinTTFT"], got["withinITL"], got["withinAll"]) == (0, got["finished"], 0)


def test_requests_never_served_are_arrivals_without_a_finish() -> None:
    fleet = Fleet(seed=3)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a", ready=False)])  # nothing Ready: the gateway holds every request
    fleet.set_traffic(*KEY, {"rate": 4, "slo": {"ttft": 1.0}})
    clock.run(fleet, 10)
    got = tally(fleet)
    assert got["arrived"] > 0 and (got["finished"], got["withinAll"]) == (0, 0)
    assert got["targets"] == {"ttft": 1.0, "itl": None}


def test_a_new_slo_starts_a_new_count_and_requests_before_it_are_left_out() -> None:
    fleet = Fleet(seed=3)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a")])
    fleet.set_traffic(*KEY, {"rate": 8, "meanInput": 300, "meanOutput": 200, "slo": {"ttft": 1.0}})
    clock.run(fleet, 10)
    before = fleet.arrived[KEY]
    # Requests still in flight arrived before the new count: they finish, and are not counted.
    fleet.set_traffic(*KEY, {"rate": 0, "slo": {"ttft": 2.0}})
    clock.run(fleet, 30)
    assert fleet.arrived[KEY] == before
    assert tally(fleet) == {"targets": {"ttft": 2.0, "itl": None}, "arrived": 0, "finished": 0, "rejected": 0,
                            "withinTTFT": 0, "withinITL": 0, "withinAll": 0}


def test_without_targets_there_is_no_tally_and_nothing_is_kept() -> None:
    fleet = Fleet(seed=3)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a")])
    fleet.set_traffic(*KEY, {"rate": 4})
    clock.run(fleet, 10)
    assert fleet.traffic_of(*KEY) == {"traffic": "poisson 4 req/s"}
    assert all(not p.engine.finished for p in fleet.pods.values())


@pytest.mark.parametrize("slo", [{"ttft": -1}, {"ttft": 0}, {"itl": "100ms"}, {"ttft": True}, {"ttft": float("nan")},
                                 {"latency": 1.0}, [1.0], "1s"])
def test_bad_targets_are_refused_and_change_nothing(slo: Any) -> None:
    fleet = Fleet()
    fleet.set_traffic(*KEY, {"rate": 1, "slo": {"ttft": 1.0}})
    with pytest.raises(TraceError, match="slo"):
        fleet.set_traffic(*KEY, {"rate": 5, "slo": slo})
    assert fleet.traffic_of(*KEY) is not None and fleet.traffic[KEY].rate == 1
    assert tally(fleet)["targets"] == {"ttft": 1.0, "itl": None}


def test_http_get_one_deployment() -> None:
    fleet = Fleet()
    server = serve(fleet, 0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        req = urllib.request.Request(f"{base}/traffic/ns/chat", data=json.dumps({"rate": 2, "slo": {"itl": 0.05}}).encode(),
                                     method="PUT")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read()) == {"traffic": "poisson 2 req/s"}
        with urllib.request.urlopen(f"{base}/traffic/ns/chat", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["traffic"] == "poisson 2 req/s" and body["requests"]["targets"] == {"ttft": None, "itl": 0.05}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/traffic/ns/other", timeout=5)
        assert e.value.code == 404
        bad = urllib.request.Request(f"{base}/traffic/ns/chat", data=b'{"rate": 1, "slo": {"ttft": -1}}', method="PUT")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=5)
        assert e.value.code == 400
    finally:
        server.shutdown()


@pytest.mark.parametrize(("routing", "share_to_busy"), [(None, (0.35, 0.65)), ("Service", (0.35, 0.65)),
                                                         ("LoadAware", (0.0, 0.0))])
def test_requests_take_the_path_the_traffic_names(routing: str | None, share_to_busy: tuple[float, float]) -> None:
    """A Service (the default) sends each request to a Ready pod at random, whatever its queue; a
    load-aware gateway sends none to a pod with a backlog while another has room."""
    from llmscale.perf import Request

    fleet = Fleet(seed=5)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a"), pod("b")])
    busy = fleet.pods["a"].engine
    for i in range(200):  # a backlog of long requests that outlasts the run
        busy.submit(Request(10_000 + i, 0.0, 4000, 2000))
    body: dict[str, Any] = {"rate": 20, "meanInput": 200, "meanOutput": 20}
    if routing is not None:
        body["routing"] = routing
    fleet.set_traffic(*KEY, body)
    clock.run(fleet, 10)
    to_busy = busy.outstanding - 200 + busy.counters.success
    share = to_busy / fleet.arrived[KEY]
    assert fleet.arrived[KEY] > 150 and share_to_busy[0] <= share <= share_to_busy[1]


def test_an_unknown_routing_is_refused_and_changes_nothing() -> None:
    fleet = Fleet()
    fleet.set_traffic(*KEY, {"rate": 1})
    with pytest.raises(TraceError, match="routing"):
        fleet.set_traffic(*KEY, {"rate": 5, "routing": "RoundRobin"})
    assert fleet.traffic[KEY].rate == 1


def test_the_tokens_of_each_finished_request_are_exported_as_vllm_does() -> None:
    """vllm:request_prompt_tokens and vllm:request_generation_tokens, as vLLM exports them: each
    request once, when it finishes, with its own tokens, in vLLM's 1-2-5 buckets. (The simulator's
    token counters also count at completion, where vLLM's count tokens as they are processed.)"""
    fleet = Fleet(seed=5)
    clock = Clock(fleet)
    fleet.sync_pods([pod("a")])
    fleet.set_traffic(*KEY, {"rate": 4, "meanInput": 300, "meanOutput": 30})
    clock.run(fleet, 20)
    fleet.set_traffic(*KEY, {"rate": 0})
    clock.run(fleet, 10)
    fams = {f.name: f for f in fleet.collect()}
    done = {s.name: s.value for s in fams["vllm:request_success"].samples}["vllm:request_success_total"]
    engine = next(iter(fleet.pods.values())).engine
    assert done == engine.counters.success == fleet.arrived[KEY] > 40  # every request finished
    for name, tokens in (("vllm:request_prompt_tokens", engine.counters.prompt_tokens),
                         ("vllm:request_generation_tokens", engine.counters.generation_tokens)):
        got = {s.name: s.value for s in fams[name].samples if s.name != f"{name}_bucket"}
        assert got == {f"{name}_count": done, f"{name}_sum": tokens}, name
        buckets = [s for s in fams[name].samples if s.name == f"{name}_bucket"]
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == done
        assert [b.value for b in buckets] == sorted(b.value for b in buckets)  # cumulative
    assert 150 < engine.counters.prompt_tokens / done < 600  # the mean prompt, about the traffic's 300
