from __future__ import annotations

import copy
from typing import Any

import pytest

BASE_SPEC: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "replicas": {"min": 1, "max": 8},
    "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1, "coldStart": "90s"}],
    "slo": {"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "100ms", "percentile": 95}},
    "cost": {"maxGPUs": 8, "maxHourlyCost": "32.00", "prices": {"nvidia-h100": "4.00", "nvidia-l4": "0.80"}},
    "scaling": {"interval": "15s"},
}


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """BASE_SPEC with top-level keys replaced (deep-copied)."""
    d = copy.deepcopy(BASE_SPEC)
    d.update(copy.deepcopy(overrides))
    return d


@pytest.fixture
def base_spec() -> dict[str, Any]:
    return spec_dict()
