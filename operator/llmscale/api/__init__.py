"""The LLMDeployment API: models (schema, defaults, validation) and the CRD generated from them."""

from .models import (
    SLO,
    Cost,
    LatencyTarget,
    LLMDeployment,
    LLMDeploymentSpec,
    LLMDeploymentStatus,
    ReplicaBounds,
    Routing,
    ScalingMode,
    Variant,
    explain_errors,
    parse_spec,
)

__all__ = [
    "SLO",
    "Cost",
    "LLMDeployment",
    "LLMDeploymentSpec",
    "LLMDeploymentStatus",
    "LatencyTarget",
    "ReplicaBounds",
    "Routing",
    "ScalingMode",
    "Variant",
    "explain_errors",
    "parse_spec",
]
