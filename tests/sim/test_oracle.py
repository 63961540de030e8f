"""The oracle's plan is the exact optimum of its model (checked by brute force where a replica's
capacity does not grow with the fleet); it is not a proven bound of the twin (see sim/oracle.py)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from llmscale.api import parse_spec
from llmscale.sim.oracle import Problem, lookahead_plan, misses, optimal_plan, orders, plan_cost
from llmscale.sim.policies import make_policy
from llmscale.sim.traffic import scenario
from llmscale.sim.twin import Twin
from tests.conftest import spec_dict


def ready_of(p: Problem, plan: list[int]) -> list[int]:
    """Ready replicas per step for a plan of orders: pods ordered `lead` steps back are Ready; the
    pre-warmed first orders count from step 0."""
    out = []
    for k in range(len(plan)):
        window = plan[max(0, k - p.lead): k + 1]
        out.append(min(window) if k >= p.lead else min(plan[: k + 1]))
    return out


def objective(p: Problem, plan: list[int], price: float, h: float) -> float:
    ready = ready_of(p, plan)
    return plan_cost(plan) + price * sum(misses(p, k, r, h) for k, r in enumerate(ready))


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    lead=st.integers(0, 2),
    price=st.sampled_from([0.05, 0.2, 1.0, 5.0, 1e6]),
)
def test_optimal_plan_is_the_brute_force_optimum(arrivals: list[int], lead: int, price: float) -> None:
    # Linear fleet capacity (marginal capacity constant): the decomposition by level is exact.
    p = Problem(1.0, lead, tuple(arrivals), (0.0, 10.0, 20.0, 30.0, 40.0))
    best = min(objective(p, orders(p, list(r)), price, 1.0)
               for r in itertools.product(range(1, p.levels + 1), repeat=len(arrivals)))
    got = objective(p, optimal_plan(p, 1.0, price), price, 1.0)
    assert got <= best + 1e-9


def test_lookahead_orders_one_cold_start_ahead_with_no_miss() -> None:
    p = Problem(1.0, 2, (0, 0, 25, 0, 0, 0), (0.0, 10.0, 20.0, 30.0))
    plan = lookahead_plan(p, 1.0)
    assert plan == [3, 3, 3, 1, 1, 1]  # ordered 2 steps before the 25 arrive (min 1 replica)
    assert all(misses(p, k, r, 1.0) == 0 for k, r in enumerate(ready_of(p, plan)))


def test_a_cheap_miss_is_taken_and_an_expensive_one_is_not() -> None:
    # One step of 11 requests: the second replica for one request costs 1 + lead GPU-steps.
    p = Problem(1.0, 1, (0, 11, 0), (0.0, 10.0, 20.0))
    assert optimal_plan(p, 1.0, 0.5) == [1, 1, 1]    # a miss is worth 0.5: skip it
    assert optimal_plan(p, 1.0, 10.0) == [2, 2, 1]   # a miss is worth 10: pay 2 GPU-steps


def test_the_oracle_is_no_dearer_than_the_lookahead_and_meets_the_slo() -> None:
    spec = parse_spec(spec_dict(
        replicas={"min": 1, "max": 16},
        variants=[{"name": "h100x1", "accelerator": "nvidia-h100", "coldStart": "60s"}],
        slo={"ttft": {"target": "1s", "percentile": 99}, "interTokenLatency": {"target": "100ms"}},
        cost={"maxGPUs": 16, "prices": {"nvidia-h100": "4.00"}},
    ))
    trace = scenario("step", rate=8, duration=900, seed=5)
    oracle = Twin(spec, trace, make_policy("oracle")).run()
    ahead = Twin(spec, trace, make_policy("oracle-lookahead")).run()
    assert oracle.ttft_attainment >= 0.99 and ahead.ttft_attainment >= 0.99
    assert oracle.gpu_hours <= ahead.gpu_hours * 1.001
