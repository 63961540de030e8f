"""Histogram arithmetic, checked against hand-computed cases (Prometheus semantics)."""

from __future__ import annotations

import pytest

from llmscale.perf import buckets
from llmscale.perf.histogram import attainment, between_edges, histogram_quantile

EDGES = (0.1, 0.25, 0.5)


@pytest.mark.parametrize(
    ("q", "cum", "want"),
    [
        (0.5, [50, 100, 100, 100], 0.1),            # rank 50 at the top of the first bucket
        (0.75, [50, 100, 100, 100], 0.175),         # halfway through (0.1, 0.25]
        (0.25, [50, 100, 100, 100], 0.05),          # first bucket interpolates from 0
        (0.99, [0, 0, 0, 10], 0.5),                 # +Inf bucket: the highest finite edge
        (0.5, [0, 0, 0, 0], None),                  # no observations
        # A bucket below the one before it (rates of buckets scraped a moment apart): Prometheus
        # raises it to the count before it. Unrepaired, rank 75 falls between 50 and 40 and the
        # interpolation runs backwards (a quantile under the bucket's lower edge).
        (0.75, [50, 40, 100, 100], 0.375),
    ],
)
def test_histogram_quantile(q: float, cum: list[float], want: float | None) -> None:
    got = histogram_quantile(q, EDGES, cum)
    assert got == (pytest.approx(want) if want is not None else None)


def test_attainment_on_an_edge_is_exact() -> None:
    share, interpolated = attainment(0.25, EDGES, [50, 80, 90, 100])
    assert share == pytest.approx(0.8) and not interpolated


def test_attainment_between_edges_is_interpolated_and_flagged() -> None:
    # vLLM's TTFT buckets jump from 0.1 to 0.25: a 150 ms target sits in between.
    share, interpolated = attainment(0.15, EDGES, [50, 80, 90, 100])
    assert interpolated
    assert share == pytest.approx((50 + (0.05 / 0.15) * 30) / 100)
    assert between_edges(0.15, buckets.TTFT) == (0.1, 0.25)
    assert between_edges(0.1, buckets.TTFT) is None


def test_attainment_repairs_a_dip_too() -> None:
    share, _ = attainment(0.25, EDGES, [50, 40, 90, 100])
    assert share == pytest.approx(0.5)  # the dip to 40 read as 50: never a share below the bucket before
