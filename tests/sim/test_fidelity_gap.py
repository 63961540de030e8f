"""The replica-timeline comparison of bench/fidelity.py (bed sampled at each twin point)."""

from __future__ import annotations

import math

from bench.fidelity import replica_gap


def test_replica_gap_samples_the_bed_at_each_twin_point() -> None:
    bed = [(0.0, 1), (10.0, 3), (31.0, 2)]
    twin = [(0.0, 1), (15.0, 2), (30.0, 2), (45.0, 2)]
    # bed at 0, 15, 30, 45: 1, 3, 3, 2 -> |diff| 0, 1, 1, 0
    assert replica_gap(bed, twin) == (0.5, 1)
    assert replica_gap(bed, bed) == (0.0, 0)


def test_replica_gap_without_samples_is_unknown() -> None:
    assert all(math.isnan(x) for x in replica_gap([], [(0.0, 1)]))
