"""Operator-wide settings: flags override environment (LLMSCALE_*), which overrides defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSCALE_", extra="ignore")

    prometheus_url: str | None = Field(None, description="Default Prometheus base URL for LLMDeployments that set none.")
    prometheus_bearer_token_file: str | None = Field(None, description="File with a bearer token for Prometheus.")
    prometheus_ca_bundle: str | None = Field(None, description="CA bundle to verify Prometheus' TLS certificate.")
    prometheus_insecure_skip_verify: bool = Field(False, description="Skip TLS verification (not recommended).")
    prometheus_timeout_s: float = Field(5.0, gt=0, description="Timeout of one Prometheus query, seconds.")
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of the operator's own /metrics; 0 disables.")
    health_port: int = Field(8081, ge=0, le=65535, description="Port of the liveness endpoint /healthz; 0 disables.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty watches the cluster.")
    peering: str | None = Field(None, description="kopf peering name for HA (one active replica); None runs standalone.")
