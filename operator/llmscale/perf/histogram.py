"""Pure arithmetic on Prometheus histograms: quantiles and SLO attainment from bucket counts.

Used on the operator's PromQL results and by the twin's emulated Prometheus, so both read
latency the same way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def monotonic(cumulative: Sequence[float]) -> list[float]:
    """Bucket counts made non-decreasing, as Prometheus does before a quantile: rates of buckets
    scraped a moment apart, or across a counter reset, can leave a bucket below the one before it,
    which would put a rank in no bucket at all. A dip is raised to the count before it."""
    out: list[float] = []
    top = 0.0
    for c in cumulative:
        top = max(top, c)
        out.append(top)
    return out


def histogram_quantile(q: float, edges: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """Prometheus histogram_quantile: linear interpolation inside the bucket holding rank q.

    edges are the finite upper bounds; cumulative has one more entry (+Inf). None when empty.
    """
    cumulative = monotonic(cumulative)
    if not cumulative or cumulative[-1] <= 0 or not 0 <= q <= 1:
        return None
    total = cumulative[-1]
    rank = q * total
    i = bisect.bisect_left(cumulative, rank)
    if i >= len(edges):  # in the +Inf bucket: Prometheus returns the highest finite bound
        return edges[-1]
    lo_edge = edges[i - 1] if i > 0 else 0.0
    lo_count = cumulative[i - 1] if i > 0 else 0.0
    in_bucket = cumulative[i] - lo_count
    if in_bucket <= 0:
        return edges[i]
    return lo_edge + (edges[i] - lo_edge) * (rank - lo_count) / in_bucket


def attainment(target: float, edges: Sequence[float], cumulative: Sequence[float]) -> tuple[float | None, bool]:
    """Share of observations at or under target, and whether target falls between bucket edges
    (then the share inside that bucket is interpolated linearly, and is an estimate)."""
    cumulative = monotonic(cumulative)
    if not cumulative or cumulative[-1] <= 0:
        return None, False
    total = cumulative[-1]
    i = bisect.bisect_left(edges, target)
    if i < len(edges) and math.isclose(edges[i], target, rel_tol=1e-9):
        return cumulative[i] / total, False
    if i >= len(edges):
        return cumulative[len(edges) - 1] / total, True
    lo_edge = edges[i - 1] if i > 0 else 0.0
    lo_count = cumulative[i - 1] if i > 0 else 0.0
    frac = (target - lo_edge) / (edges[i] - lo_edge)
    return (lo_count + frac * (cumulative[i] - lo_count)) / total, True


def between_edges(target: float, edges: Sequence[float]) -> tuple[float, float] | None:
    """The bucket edges around target when it is not itself an edge."""
    i = bisect.bisect_left(edges, target)
    if i < len(edges) and math.isclose(edges[i], target, rel_tol=1e-9):
        return None
    lo = edges[i - 1] if i > 0 else 0.0
    hi = edges[i] if i < len(edges) else math.inf
    return lo, hi
