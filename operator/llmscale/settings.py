"""Operator-wide settings: flags override environment (LLMSCALE_*), which overrides defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmscale.metrics.endpoints import DEFAULT, Endpoint, EndpointError, Endpoints, load_config


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSCALE_", extra="ignore")

    prometheus_url: str | None = Field(None, description="Default Prometheus base URL for LLMDeployments that set none.")
    prometheus_bearer_token_file: str | None = Field(None, description="File with a bearer token for Prometheus.")
    prometheus_ca_bundle: str | None = Field(None, description="CA bundle to verify Prometheus' TLS certificate.")
    prometheus_insecure_skip_verify: bool = Field(False, description="Skip TLS verification (not recommended).")
    prometheus_allow_plain_http: bool = Field(
        False, description="Send the bearer token over plain http:// to a Prometheus off the operator's host "
                           "(refused at start otherwise).")
    prometheus_timeout_s: float = Field(5.0, gt=0, le=60, description="Timeout of one Prometheus query, seconds.")
    prometheus_endpoints_file: str | None = Field(
        None, description="YAML file of further named Prometheus endpoints with their credentials, allowedURLs and "
                          "allowQueryOverrides (the chart renders it); see metrics/endpoints.py.")

    def endpoints(self) -> Endpoints:
        """The endpoints the operator may read: `default` from the prometheus_* settings, the rest
        from the endpoints file. Raises EndpointError on a file that cannot be used."""
        default = None
        if self.prometheus_url:
            try:
                default = Endpoint(name=DEFAULT, url=self.prometheus_url, bearer_token_file=self.prometheus_bearer_token_file,
                                   ca_file=self.prometheus_ca_bundle, insecure_skip_verify=self.prometheus_insecure_skip_verify,
                                   allow_plain_http=self.prometheus_allow_plain_http,
                                   timeout_seconds=self.prometheus_timeout_s)
            except ValidationError as e:
                # The message only: pydantic's text repeats the input, and a URL may carry a password.
                msg = e.errors()[0].get("msg", "invalid").removeprefix("Value error, ")
                raise EndpointError(f"--prometheus-url (LLMSCALE_PROMETHEUS_URL): {msg}") from None
        config = load_config(self.prometheus_endpoints_file) if self.prometheus_endpoints_file else None
        return Endpoints.build(default, config)
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of the operator's own /metrics; 0 disables.")
    health_port: int = Field(8081, ge=0, le=65535, description="Port of the liveness endpoint /healthz; 0 disables.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty watches the cluster.")
    peering: str | None = Field(None, description="kopf peering name for HA (one active replica); None runs standalone.")
    peering_priority: int | None = Field(
        None, ge=1, le=2**31 - 1,
        description="kopf peering priority of this replica: the highest live one acts. None draws one at random at start: "
                    "kopf freezes every replica when two share a priority, so identical pods must not.")
    peering_lifetime_s: int = Field(
        20, ge=10, le=600,
        description="Seconds a replica's peering record stays valid without a keepalive: a standby takes over within "
                    "about this long after the active replica dies.")
    allowed_host_paths: list[str] = Field(
        default_factory=list,
        description="Node directories (prefixes) an LLMDeployment may mount as serving.volumes hostPath; empty allows none. "
                    "The operator creates the pods, so a tenant's hostPath would mount with the operator's rights.")
    workers: int = Field(16, ge=1, le=256, description="Threads that run the handlers. A decision mostly waits on the "
                         "API server and Prometheus, so a thousand LLMDeployments want more than a few (bench/scale.py).")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text, or as JSON objects (one per line).")
    disruption_budget: bool = Field(True, description="Own a PodDisruptionBudget (maxUnavailable 1) per LLMDeployment, "
                                                      "unless another budget already covers its pods.")
