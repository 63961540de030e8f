"""The LLMDeployment API: spec and status as pydantic models.

These models are the single source of the CRD schema (`llmscale crds`), of the defaults, and of
the validation messages. Field descriptions become `kubectl explain` text. CEL rules that span
several fields sit next to the model they constrain (`x-kubernetes-validations`).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict

from .units import (
    DURATION_PATTERN,
    MONEY_PATTERN,
    QUANTITY_PATTERN,
    parse_duration,
    parse_money,
    parse_quantity,
)

# Conversion used for "words per minute": ~0.75 English words per token for Llama-family
# tokenizers. Tokenizer-dependent; override with slo.streamSpeed.wordsPerToken.
DEFAULT_WORDS_PER_TOKEN = 0.75

# Flags that the operator sets itself; a user engine arg that sets them conflicts.
OPERATOR_OWNED_ENGINE_FLAGS = ("--model", "--port", "--tensor-parallel-size", "--host")


# Signals a per-CR query override (spec.metrics.queries) may replace: value queries returning one number.
QUERY_SIGNALS = ("requestRate", "promptTokensRate", "generationTokensRate", "requestsWaiting", "requestsRunning",
                 "kvCacheUsage", "gpuUtilization", "ttftQuantile", "interTokenLatencyQuantile")


def _cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    d: JsonDict = {"rule": rule, "message": message}
    if field_path:
        d["fieldPath"] = field_path
    return d


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
DurationOrNever = Annotated[str, Field(pattern=f"^(never|{DURATION_PATTERN.strip('^$')})$", max_length=32)]
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]
# What the API server requires of the objects the operator renders, checked here so that a CR it
# could not serve is refused when applied (not admitted, then reported as ApplyFailed): a label
# value (node labels, taint values), a qualified name (an optional DNS-subdomain prefix and '/',
# then at most 63 characters: node label keys, taint keys), and the LLMDeployment's own name, which
# names its Service and labels its pods: a DNS-1123 label (a Service name may start with a digit
# where RelaxedServiceNameValidation is on, as in Kubernetes 1.36; elsewhere that one fails at apply).
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
QUALIFIED_NAME_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
QUALIFIED_NAME_MAX = 253 + 1 + 63  # prefix, '/', name
RESOURCE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
RESOURCE_NAME_MAX = 63
# Checked when the object is created only (`optionalOldSelf`: on an update `oldSelf` has a value):
# a CR stored before the rule must still take its status, its finalizer's removal and its deletion.
RESOURCE_NAME_RULE = (f"oldSelf.hasValue() || (self.metadata.name.matches('{RESOURCE_NAME_PATTERN}') "
                      f"&& size(self.metadata.name) <= {RESOURCE_NAME_MAX})")
RESOURCE_NAME_MESSAGE = (f"metadata.name must be at most {RESOURCE_NAME_MAX} lower-case letters, digits and '-', starting "
                         "and ending with a letter or digit (no '.'): it names the LLMDeployment's Service and labels "
                         "its pods")


def resource_name_problem(name: str) -> str | None:
    """Why an LLMDeployment cannot be served under this name (None when it can): the CRD refuses such
    names at creation, but one stored before it did is reported, not applied."""
    if len(name) <= RESOURCE_NAME_MAX and re.fullmatch(RESOURCE_NAME_PATTERN, name):
        return None
    return f"{RESOURCE_NAME_MESSAGE} ({name[:80]!r})"


Money = Annotated[str, Field(pattern=MONEY_PATTERN, max_length=24)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)]


def _check_duration(v: str | None) -> str | None:
    if v is not None:
        parse_duration(v)
    return v


class Toleration(_Model):
    """A Kubernetes toleration, copied to the serving pods of this variant."""

    # The API server's own rules for a toleration (a pod with any other is refused).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                     "a toleration without a key needs operator Exists (it then tolerates every taint)"),
                _cel("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                     "a toleration with operator Exists takes no value"),
                _cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                     "tolerationSeconds needs effect NoExecute"),
            ]
        }
    )
    # Empty with operator Exists: every taint (charts often write it so).
    key: str | None = Field(None, max_length=QUALIFIED_NAME_MAX, pattern=f"^({QUALIFIED_NAME_PATTERN[1:-1]})?$",
                            description="Taint key the toleration applies to (a label key, e.g. nvidia.com/gpu; empty "
                                        "with operator Exists: every taint).")
    operator: str | None = Field(None, pattern=r"^(Exists|Equal)?$", description="Exists or Equal (empty: Equal).")
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE_PATTERN,
                              description="Taint value to match with operator Equal (a label value).")
    effect: str | None = Field(
        None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)?$", description="Taint effect to match (empty: every effect)."
    )
    toleration_seconds: int | None = Field(None, description="For NoExecute: how long the pod stays bound.")

    @model_validator(mode="after")
    def _as_kubernetes_requires(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists (it then tolerates every taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class Variant(_Model):
    """One pod shape the operator may run: GPU type, GPUs per replica (the tensor-parallel size), CPU and memory."""

    name: Name = Field(description="Unique name of the variant, e.g. 'h100x1'.")
    accelerator: str = Field(
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Accelerator type, the key into cost.prices and the performance model: e.g. nvidia-h100, nvidia-l4, nvidia-a100.",
    )
    gpus_per_replica: int = Field(
        1, ge=1, le=8, description="GPUs per serving pod; also the vLLM --tensor-parallel-size."
    )
    gpu_product: str | None = Field(
        None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Value of the node label nvidia.com/gpu.product to schedule on (GPU Feature Discovery), e.g. NVIDIA-H100-80GB-HBM3. Defaults from the accelerator.",
    )
    cpu: Quantity = Field("8", description="CPU request per pod, e.g. '8' or '7500m'.")
    memory: Quantity = Field("64Gi", description="Memory request and limit per pod, e.g. '64Gi'.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra node labels the pods of this variant require (label keys and values).",
        json_schema_extra={"x-kubernetes-validations": [
            _cel(f"self.all(k, size(k) <= {QUALIFIED_NAME_MAX} && k.matches('{QUALIFIED_NAME_PATTERN}'))",
                 "every nodeSelector key must be a label key: an optional DNS prefix and '/', then at most 63 "
                 "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ]},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Tolerations for the pods of this variant."
    )
    cold_start: Duration | None = Field(
        None,
        description="Expected time from pod creation to Ready (model loading). Seeds the forecast horizon until the operator has measured it.",
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, v: dict[str, str]) -> dict[str, str]:
        # (The prefix's own limit, 253, is checked here only; the CRD bounds the whole key.)
        bad = [k for k in v if len(k) > QUALIFIED_NAME_MAX or not re.fullmatch(QUALIFIED_NAME_PATTERN, k)
               or ("/" in k and len(k.split("/", 1)[0]) > 253)]
        if bad:
            raise ValueError(f"nodeSelector keys {[k[:80] for k in bad]} are not label keys: an optional DNS prefix and "
                             "'/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
        return v

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str) -> str:
        parse_quantity(v)
        return v

    @field_validator("cold_start")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        return _check_duration(v)


class ReplicaBounds(_Model):
    """How many serving pods the operator may run."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.min <= self.max", "replicas.min must be less than or equal to replicas.max")
            ]
        }
    )
    min: int = Field(1, ge=0, le=1000, description="Fewest replicas; 0 allows scale to zero when scaling.scaleToZero.enabled.")
    max: int = Field(8, ge=1, le=1000, description="Most replicas.")

    @model_validator(mode="after")
    def _order(self) -> ReplicaBounds:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be less than or equal to replicas.max ({self.max})")
        return self


class LatencyTarget(_Model):
    """A latency objective: the given percentile of requests must be at or under the target."""

    target: Duration = Field(description="Latency target, e.g. '150ms'.")
    percentile: float = Field(
        95.0, gt=0, lt=100, description="Percentile of requests that must meet the target, in (0, 100), e.g. 95 or 99."
    )

    @field_validator("target")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @property
    def seconds(self) -> float:
        return parse_duration(self.target)


class StreamSpeed(_Model):
    """Per-stream output speed, as readers feel it. Translated to an inter-token latency target."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.tokensPerSecond) != has(self.wordsPerMinute)",
                    "set exactly one of streamSpeed.tokensPerSecond and streamSpeed.wordsPerMinute",
                ),
                _cel(
                    "!has(self.wordsPerMinute) || (self.wordsPerMinute / 60.0 / (has(self.wordsPerToken) ? self.wordsPerToken : 0.75)"
                    " >= 0.01 && self.wordsPerMinute / 60.0 / (has(self.wordsPerToken) ? self.wordsPerToken : 0.75) <= 1000.0)",
                    "streamSpeed.wordsPerMinute / 60 / wordsPerToken must give 0.01 to 1000 tokens per second",
                ),
            ]
        }
    )
    tokens_per_second: float | None = Field(None, ge=0.01, le=1000, description="Output tokens per second per stream.")
    words_per_minute: float | None = Field(None, gt=0, le=60000, description="Words per minute per stream, e.g. 250-1000.")
    words_per_token: float = Field(
        DEFAULT_WORDS_PER_TOKEN, gt=0, le=4, description="Words per token of the model's tokenizer (about 0.75 for English)."
    )
    percentile: float = Field(95.0, gt=0, lt=100, description="Percentile of token gaps that must meet the speed.")

    @model_validator(mode="after")
    def _one(self) -> StreamSpeed:
        if (self.tokens_per_second is None) == (self.words_per_minute is None):
            raise ValueError("set exactly one of streamSpeed.tokensPerSecond and streamSpeed.wordsPerMinute")
        if self.words_per_minute is not None and not 0.01 <= self.words_per_minute / 60.0 / self.words_per_token <= 1000:
            # Past these the inter-token target is under a millisecond or over 100 s: no stream speed.
            raise ValueError("streamSpeed.wordsPerMinute / 60 / wordsPerToken must give 0.01 to 1000 tokens per second")
        return self

    @property
    def inter_token_seconds(self) -> float:
        tps = self.tokens_per_second
        if tps is None:
            assert self.words_per_minute is not None
            tps = self.words_per_minute / 60.0 / self.words_per_token
        return 1.0 / tps


class SLO(_Model):
    """Latency objectives. TTFT and inter-token latency are read from vLLM's histograms."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!(has(self.e2eLatency) && has(self.e2ELatency))",
                     "set slo.e2eLatency (e2ELatency is its deprecated spelling), not both"),
            ]
        }
    )

    ttft: LatencyTarget | None = Field(
        default_factory=lambda: LatencyTarget(target="150ms", percentile=95),
        description="Time to first token (vllm:time_to_first_token_seconds).",
    )
    inter_token_latency: LatencyTarget | None = Field(
        None, description="Gap between output tokens (vllm:inter_token_latency_seconds)."
    )
    stream_speed: StreamSpeed | None = Field(
        None, description="Per-stream speed in tokens/s or words/min; an alternative to interTokenLatency."
    )
    e2e_latency: LatencyTarget | None = Field(
        None, alias="e2eLatency", description="Whole-request latency (vllm:e2e_request_latency_seconds)."
    )
    # The spelling of 0.1 (pydantic's camel case of e2e_latency, which users misread). Kept in the
    # schema so that the API server does not prune a manifest written with it (the target would be
    # lost without a word); read as e2eLatency.
    e2e_latency_old: LatencyTarget | None = Field(
        None, alias="e2ELatency", description="Deprecated spelling of e2eLatency; read as e2eLatency.",
        exclude=True,
    )

    @model_validator(mode="after")
    def _itl_once(self) -> SLO:
        if self.inter_token_latency is not None and self.stream_speed is not None:
            raise ValueError("set slo.interTokenLatency or slo.streamSpeed, not both")
        if self.e2e_latency_old is not None:
            if self.e2e_latency is not None:
                raise ValueError("set slo.e2eLatency (e2ELatency is its deprecated spelling), not both")
            object.__setattr__(self, "e2e_latency", self.e2e_latency_old)
            object.__setattr__(self, "e2e_latency_old", None)
        return self

    def itl_target(self) -> LatencyTarget | None:
        """The inter-token objective, whether written as latency or as stream speed."""
        if self.inter_token_latency is not None:
            return self.inter_token_latency
        if self.stream_speed is not None:
            ms = self.stream_speed.inter_token_seconds * 1000
            return LatencyTarget(target=f"{ms:.1f}ms", percentile=self.stream_speed.percentile)
        return None


class Cost(_Model):
    """Hard ceilings on what the deployment may spend. Never exceeded, including during rollouts."""

    max_gpus: int | None = Field(None, ge=1, le=100000, alias="maxGPUs", description="Most GPUs in use at any instant.")
    max_hourly_cost: Money | None = Field(
        None, description="Most spend per hour, in the currency of prices, e.g. '40.00'."
    )
    prices: dict[str, Money] = Field(
        default_factory=dict,
        description="Price per GPU-hour by accelerator, e.g. {nvidia-h100: '4.00'}. Every variant's accelerator must be priced when maxHourlyCost is set.",
    )

    @field_validator("max_hourly_cost")
    @classmethod
    def _money(cls, v: str | None) -> str | None:
        if v is not None:
            parse_money(v)
        return v

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, str]) -> dict[str, str]:
        for k, p in v.items():
            try:
                parse_money(p)
            except ValueError as e:
                raise ValueError(f"prices[{k}]: {e}") from None
        return v

    def price(self, accelerator: str) -> Decimal | None:
        p = self.prices.get(accelerator)
        return parse_money(p) if p is not None else None

    @property
    def hourly_ceiling(self) -> Decimal | None:
        return parse_money(self.max_hourly_cost) if self.max_hourly_cost is not None else None


class ScalingMode(StrEnum):
    AUTO = "Auto"
    RECOMMEND = "Recommend"
    PAUSED = "Paused"


class Routing(StrEnum):
    """What spreads requests over the Ready pods. The plan depends on it: a pod that gets an equal
    share of the requests whatever its queue holds gains nothing from its neighbours' spare room,
    while a gateway that picks the least-loaded pod pools the fleet's capacity (a larger fleet
    carries more per replica), and a mix of shapes carries what its pods carry together only where
    the gateway weighs them by load."""

    SERVICE = "Service"  # the operator's Service (kube-proxy): each request to any Ready pod, equal shares
    LOAD_AWARE = "LoadAware"  # a gateway that sends each request to the least-loaded pod (llm-d's EPP, ...)

    @property
    def pools(self) -> bool:
        """Does the fleet pool its capacity (each request to the pod with room), or does every pod
        take an equal share whatever its queue holds?"""
        return self is Routing.LOAD_AWARE

    @property
    def says(self) -> str:
        """What it means, in a few words, for the CLI."""
        return "a gateway picks the least-loaded pod" if self.pools else "a Service: every pod an equal share"


class ScaleBehavior(_Model):
    """How fast the operator may move in one direction."""

    stabilization_window: Duration = Field(
        "0s", description="Act on the most conservative recommendation seen over this window (HPA semantics)."
    )
    max_step: int = Field(4, ge=1, le=1000, description="Most replicas added or removed in one decision.")

    @field_validator("stabilization_window")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v


class DemandSignal(_Model):
    """Where demand shows while there are no replicas: the gateway in front of the pods holds the
    requests and counts them. Give exactly one of inferencePool and query."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("has(self.inferencePool) != has(self.query)", "give exactly one of inferencePool and query"),
            ]
        }
    )

    inference_pool: str | None = Field(
        None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of the Gateway API Inference Extension InferencePool (llm-d's router) in this namespace whose "
                    "Endpoint Picker holds requests while the pool has no endpoints. Needs the EPP's flow control "
                    "(featureGates: [flowControl], and a request TTL above the cold start); read from "
                    "inference_extension_flow_control_queue_size{namespace, inference_pool}.",
    )
    query: str | None = Field(
        None, max_length=2048,
        description="PromQL returning the number of requests waiting for this deployment at the gateway, for other "
                    "gateways (Knative activator, KEDA HTTP add-on); {namespace} and {name} are replaced. See the README.",
    )

    @model_validator(mode="after")
    def _one(self) -> DemandSignal:
        if (self.inference_pool is None) == (self.query is None):
            raise ValueError("give exactly one of inferencePool and query")
        return self


class ScaleToZero(_Model):
    """Release every GPU after a period of proven idleness (request counters at zero, not missing series).

    Zero replicas is a one-way door unless something reports demand while there are none: a
    gateway that holds requests. So scale-to-zero needs `demand`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("!self.enabled || has(self.demand)",
                     "scaleToZero.enabled needs scaleToZero.demand: the gateway signal that brings the deployment back "
                     "from zero (inferencePool or query)"),
            ]
        }
    )

    enabled: bool = Field(False, description="Allow scaling to zero replicas (needs replicas.min: 0 and demand).")
    idle_for: Duration = Field("15m", description="How long request counters must stay at zero first, as seen by decisions "
                                                  "that follow each other (after an outage or a restart of the operator, the count "
                                                  "starts again).")
    demand: DemandSignal | None = Field(None, description="The gateway's count of requests held while there are no replicas.")

    @field_validator("idle_for")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _needs_demand(self) -> ScaleToZero:
        if self.enabled and self.demand is None:
            raise ValueError("scaleToZero.enabled needs scaleToZero.demand: the gateway signal that brings the deployment "
                             "back from zero (inferencePool or query)")
        return self


class VariantSwitch(_Model):
    """How a change of pod shape (variant) is made: new-shape pods start while the old ones serve,
    within the ceilings, and the old shape comes back when the new one cannot start."""

    dwell: Duration = Field(
        "15m",
        description="Least time on one shape before a switch for a saving, and before a shape that failed to start is tried "
                    "again. A switch away from a shape that cannot carry the load within the ceilings goes at once.",
    )
    unschedulable_timeout: Duration = Field(
        "5m",
        description="How long new-shape pods may stay Pending for lack of GPUs of their type (a cluster autoscaler may add "
                    "nodes within minutes) before the switch is rolled back. Pods that are scheduled but not Ready get "
                    "serving.startupTimeout.",
    )

    spill_after: DurationOrNever = Field(
        "60s",
        description="How long pods of the running shape may stay Pending for lack of GPUs of their type before pods of "
                    "another shape (the cheapest that vLLM starts on, of another GPU type, within the ceilings) are added "
                    "to carry their share of the load (and, whatever the metrics, one for each replicas.min pod that waits); they "
                    "retire as the running shape's pods become Ready. Not during a switch (there unschedulableTimeout "
                    "rolls back). 'never' turns it off.",
    )

    @field_validator("dwell", "unschedulable_timeout", "spill_after")
    @classmethod
    def _duration(cls, v: str) -> str:
        if v != "never":
            parse_duration(v)
        return v

    @property
    def spill_after_s(self) -> float | None:
        """spillAfter in seconds; None: never."""
        return None if self.spill_after == "never" else parse_duration(self.spill_after)


class Scaling(_Model):
    """When and how the operator changes replicas."""

    mode: ScalingMode = Field(
        ScalingMode.AUTO,
        description="Auto: decide and act. Recommend: decide and report in status and Events, change nothing. Paused: change nothing (manualReplicas, if set, is applied).",
    )
    interval: Duration = Field("15s", description="Time between scaling decisions.")
    tolerance: float = Field(
        0.1, ge=0, le=1, description="Relative dead band around the target: no change while demand is within it."
    )
    scale_up: ScaleBehavior = Field(
        default_factory=lambda: ScaleBehavior(stabilization_window="0s", max_step=4),
        description="Behaviour when adding replicas.",
    )
    scale_down: ScaleBehavior = Field(
        default_factory=lambda: ScaleBehavior(stabilization_window="300s", max_step=1),
        description="Behaviour when removing replicas.",
    )
    scale_to_zero: ScaleToZero = Field(default_factory=ScaleToZero, description="Scale to zero when idle.")
    manual_replicas: int | None = Field(
        None, ge=0, le=1000, description="Replica count applied in Paused mode; the target of `kubectl scale`."
    )
    variant_switch: VariantSwitch = Field(
        default_factory=VariantSwitch, description="Changing the pod shape: dwell time and rollback."
    )
    target_utilization: float = Field(
        0.85, gt=0, le=1, description="Share of the fleet's SLO capacity to plan for; the rest absorbs forecast error within a cold start. Capacity is already the load at which the SLO percentile is just met, so this is headroom on top of it. A burst peak held for returning bursts is planned with less once nine bursts have come back no higher than this headroom allows: with the headroom they showed."
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if parse_duration(v) < 1:
            raise ValueError(f"scaling.interval {v!r} is shorter than 1s")
        return v


class MetricsSource(_Model):
    """Where and how the operator reads metrics."""

    prometheus: str | None = Field(
        None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Name of a Prometheus endpoint the platform team configured for the operator (with its credential); "
                    "else the endpoint named 'default'.",
    )
    prometheus_url: str | None = Field(
        None, alias="prometheusURL", max_length=512, pattern=r"^https?://[^@\\\s?#]+$",
        description="A Prometheus base URL; read only if it is on the operator's allow-list (scheme, host, port and path "
                    "compared exactly), and with a credential only if it is a configured endpoint's URL.",
    )
    rate_window: Duration = Field("1m", description="Window of rate() and histogram_quantile() over vLLM counters.")
    queries: dict[str, str] = Field(
        default_factory=dict,
        description="PromQL overrides by signal name (ttftQuantile, interTokenLatencyQuantile, requestsWaiting, requestsRunning, kvCacheUsage, requestRate, promptTokensRate, generationTokensRate, gpuUtilization). Use {namespace} and {name} placeholders.",
        json_schema_extra={"x-kubernetes-validations": [
            _cel("self.all(k, k in " + json.dumps(list(QUERY_SIGNALS)) + ")",
                 "spec.metrics.queries: a key is one of " + ", ".join(QUERY_SIGNALS))]},
    )

    @field_validator("rate_window")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("queries")
    @classmethod
    def _signals(cls, v: dict[str, str]) -> dict[str, str]:
        # A misspelt name ran its query with the operator's credential and its answer went nowhere.
        unknown = sorted(k for k in v if k not in QUERY_SIGNALS)
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))}: not a signal; a key is one of {', '.join(QUERY_SIGNALS)}")
        return v


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a DNS subdomain: Secret, PVC names


class SecretEnv(_Model):
    """An environment variable of the server read from a key of a Secret in the LLMDeployment's
    namespace (e.g. HF_TOKEN for gated models)."""

    name: str = Field(max_length=128, pattern=ENV_NAME, description="Environment variable name.")
    secret: str = Field(max_length=253, pattern=OBJECT_NAME, description="Name of the Secret, in the LLMDeployment's namespace.")
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within the Secret.")
    optional: bool = Field(False, description="Start the pod even when the Secret or key is missing.")


class PersistentVolumeClaimSource(_Model):
    claim_name: str = Field(max_length=253, pattern=OBJECT_NAME, description="A PersistentVolumeClaim in the LLMDeployment's namespace.")


class HostPathSource(_Model):
    path: str = Field(max_length=1024, pattern=r"^/", description="Absolute path on the node, e.g. a local model cache.")
    type: str | None = Field(None, pattern=r"^(DirectoryOrCreate|Directory|FileOrCreate|File)?$",
                             description="Kubernetes hostPath type (check before mounting).")


class ModelVolume(_Model):
    """A volume mounted into the server container, typically a model-weight cache shared across
    restarts so that a new replica does not download the weights again (its cold start shortens,
    which the operator measures)."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            _cel("[has(self.persistentVolumeClaim), has(self.hostPath)].filter(x, x).size() == 1",
                 "set exactly one of persistentVolumeClaim and hostPath")]},
    )

    name: Name = Field(description="Volume name (not 'dshm', which the operator uses for shared memory).")
    mount_path: str = Field(max_length=1024, pattern=r"^/", description="Where the server sees it, e.g. /root/.cache/huggingface.")
    read_only: bool = Field(False, description="Mount read-only.")
    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(None, description="A PersistentVolumeClaim (e.g. ReadOnlyMany shared weights).")
    host_path: HostPathSource | None = Field(None, description="A directory on the node (a node-local cache).")

    @model_validator(mode="after")
    def _one_source(self) -> ModelVolume:
        if (self.persistent_volume_claim is None) == (self.host_path is None):
            raise ValueError("set exactly one of persistentVolumeClaim and hostPath")
        return self


class Serving(_Model):
    """How the vLLM server container runs."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            _cel("!has(self.volumes) || self.volumes.all(v, v.name != 'dshm')", "volume name 'dshm' is the operator's",
                 ".volumes"),
            _cel("!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
                 "volume names must be unique", ".volumes"),
            _cel("!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.mountPath == v.mountPath))",
                 "mount paths must be unique", ".volumes"),
            _cel("!has(self.secretEnv) || !has(self.env) || self.secretEnv.all(e, !(e.name in self.env))",
                 "a variable is set either in env or in secretEnv", ".secretEnv"),
        ]},
    )

    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible server and its /metrics.")
    served_model_name: str | None = Field(None, max_length=253, description="--served-model-name; defaults to model.")
    startup_timeout: Duration = Field(
        "30m", description="How long the startup probe allows for model loading before the pod is restarted."
    )
    drain_timeout: Duration = Field(
        "120s",
        description="Time a removed replica gets to finish streaming responses (pre-stop drain and termination grace).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of the server.")
    secret_env: list[SecretEnv] = Field(
        default_factory=list, max_length=32,
        description="Environment variables from Secrets (e.g. HF_TOKEN for gated models); never copied into status.")
    image_pull_secrets: list[Annotated[str, Field(max_length=253, pattern=OBJECT_NAME)]] = Field(
        default_factory=list, max_length=8, description="Secrets the kubelet uses to pull the server image.")
    volumes: list[ModelVolume] = Field(
        default_factory=list, max_length=8, description="Volumes mounted into the server, e.g. a model-weight cache.")

    @field_validator("startup_timeout", "drain_timeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _distinct(self) -> Serving:
        names = [v.name for v in self.volumes]
        if "dshm" in names:
            raise ValueError("volume name 'dshm' is the operator's")
        if len(set(names)) != len(names):
            raise ValueError("volume names must be unique")
        paths = [v.mount_path for v in self.volumes]
        if len(set(paths)) != len(paths):
            raise ValueError("mount paths must be unique")
        both = sorted({e.name for e in self.secret_env} & set(self.env))
        if both:
            raise ValueError(f"a variable is set either in env or in secretEnv: {', '.join(both)}")
        return self


class LLMDeploymentSpec(_Model):
    """What to serve, on which pod shapes, against which latency objectives and inside which ceilings."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
                    "variant names must be unique",
                    ".variants",
                ),
                _cel(
                    "!has(self.cost) || !has(self.cost.maxHourlyCost) || "
                    "self.variants.all(v, has(self.cost.prices) && v.accelerator in self.cost.prices)",
                    "cost.maxHourlyCost is set, so every variant's accelerator needs a price in cost.prices",
                    ".cost",
                ),
                _cel(
                    "!has(self.cost) || !has(self.cost.maxGPUs) || "
                    "self.variants.exists(v, v.gpusPerReplica <= self.cost.maxGPUs)",
                    "cost.maxGPUs is smaller than the GPUs of every variant: no replica could ever run",
                    ".cost",
                ),
            ]
        }
    )

    model: str = Field(min_length=1, max_length=253, description="Model to serve, e.g. meta-llama/Llama-3.1-8B-Instruct.")
    image: str = Field(
        "vllm/vllm-openai:v0.11.0", min_length=1, max_length=512, description="Server image (vLLM OpenAI-compatible server)."
    )
    engine_args: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra vLLM engine arguments, e.g. ['--max-model-len=8192']. The operator sets --model, --port and --tensor-parallel-size itself. "
                    "--max-model-len bounds the prompts planned for, and a shape whose KV cache cannot hold it (or, without it, the "
                    "model's own context) is one vLLM does not start on: never switched to, and left for the first shape it starts "
                    "on while none of its pods is Ready (--gpu-memory-utilization is read; with --max-model-len auto, a quantized "
                    "checkpoint or an argument such as --kv-cache-dtype or --quantization, nothing is refused).",
    )
    replicas: ReplicaBounds = Field(default_factory=ReplicaBounds, description="Replica bounds.")
    variants: list[Variant] = Field(
        min_length=1, max_length=16, description="Pod shapes, in order of preference. The first is used until the operator chooses."
    )
    slo: SLO = Field(default_factory=SLO, description="Latency objectives.")
    cost: Cost = Field(default_factory=Cost, description="GPU and money ceilings, and prices.")
    scaling: Scaling = Field(default_factory=Scaling, description="Scaling behaviour.")
    metrics: MetricsSource = Field(default_factory=MetricsSource, description="Metric source.")
    serving: Serving = Field(default_factory=Serving, description="Server container settings.")
    routing: Routing = Field(
        Routing.SERVICE,
        description="What spreads requests over the Ready pods, which the plan counts on. Service (the default): requests "
                    "reach the pods through the operator's Service, whose kube-proxy picks any Ready pod, so every pod "
                    "gets an equal share and is planned alone. LoadAware: a gateway in front sends each request to the "
                    "least-loaded pod (the Gateway API Inference Extension with llm-d's endpoint picker, Envoy AI "
                    "Gateway, the vLLM production-stack router), so the fleet pools its capacity and fewer replicas "
                    "carry the same load; declare it only where every request takes that path.",
    )

    @model_validator(mode="after")
    def _cross(self) -> LLMDeploymentSpec:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dup)}")
        if self.cost.max_hourly_cost is not None:
            missing = sorted({v.accelerator for v in self.variants if v.accelerator not in self.cost.prices})
            if missing:
                raise ValueError(
                    f"cost.maxHourlyCost is set, so every variant's accelerator needs a price in cost.prices; missing: {', '.join(missing)}"
                )
        if self.cost.max_gpus is not None and all(v.gpus_per_replica > self.cost.max_gpus for v in self.variants):
            raise ValueError("cost.maxGPUs is smaller than the GPUs of every variant: no replica could ever run")
        return self

    def variant(self, name: str | None) -> Variant:
        """The named variant, or the first (preferred) one."""
        for v in self.variants:
            if v.name == name:
                return v
        return self.variants[0]


# ---- status -------------------------------------------------------------------------------------


class Condition(_Model):
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Observed(_Model):
    """What the operator read from Prometheus (aggregated over the deployment's pods) at the last
    decision that changed something status shows (lastDecision.time): status is not written for
    readings alone. The live values are the vLLM series themselves."""

    ttft_quantile: float | None = Field(None, description="TTFT at the SLO's percentile (ttftPercentile), in seconds.")
    ttft_percentile: float | None = Field(None, description="The percentile ttftQuantile is taken at (the TTFT SLO's).")
    inter_token_latency_quantile: float | None = Field(
        None, description="Inter-token latency at the SLO's percentile (interTokenLatencyPercentile), in seconds.")
    inter_token_latency_percentile: float | None = None
    e2e_latency_quantile: float | None = Field(None, alias="e2eLatencyQuantile", description="End-to-end latency at the e2eLatency SLO's percentile, in seconds.")
    ttft_attainment: float | None = Field(None, description="Share of requests within the TTFT target (0-1).")
    itl_attainment: float | None = None
    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None
    gpu_utilization: float | None = None
    request_rate: float | None = None
    prompt_tokens_rate: float | None = None
    generation_tokens_rate: float | None = None
    sampled_at: str | None = Field(None, description="When Prometheus scraped the queue gauges these values come from "
                                   "(the operator's read time when Prometheus gives no timestamp).")


class DecisionRecord(_Model):
    """The last decision that changed something status shows (a decision that changes nothing is
    not written: llmscale_last_decision_timestamp_seconds says when the operator last decided)."""

    time: str
    action: str
    from_replicas: int = Field(alias="from")
    to_replicas: int = Field(alias="to")
    variant: str | None = None
    applied: bool | None = Field(None, description="False when the decision was only reported (Recommend mode, hold, competing autoscaler).")
    reasons: list[str] = Field(default_factory=list)


class ShapeStatus(_Model):
    """One pod shape (variant) that has a Deployment."""

    name: str = Field(description="The variant.")
    replicas: int = Field(0, description="Desired replicas of its Deployment.")
    ready_replicas: int = Field(0, description="Ready pods.")
    gpus: int = Field(0, description="GPUs held by its pods: starting, Ready and draining.")
    role: str = Field("Target", description="Target (the shape switched to), Retiring (serving until the target's pods are "
                                            "Ready) or Spill (carrying the share of target pods Pending for lack of GPUs).")


class SwitchStatus(_Model):
    """A change of pod shape in progress (make-before-break)."""

    from_variant: str = Field(alias="from", description="The shape being retired.")
    to_variant: str = Field(alias="to", description="The shape switched to.")
    ready: int = Field(description="Ready pods of the new shape.")
    target: int = Field(description="Pods of the new shape it ends with.")


class LLMDeploymentStatus(_Model):
    model_config = ConfigDict(extra="allow")
    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    starting_replicas: int | None = None
    desired_replicas: int | None = None
    variant: str | None = None
    gpus: int | None = None
    hourly_cost: str | None = None
    selector: str | None = None
    slo_met: str | None = Field(None, alias="sloMet")
    observed: Observed | None = None
    last_decision: DecisionRecord | None = Field(None, description="The last decision that changed something status "
                                                 "shows; decisions that change nothing are not written (the operator's "
                                                 "llmscale_last_decision_timestamp_seconds says when it last decided).")
    cold_start_seconds: dict[str, float] | None = Field(None, description="Measured cold start per variant: pod creation to its first Ready.")
    ready_pods: list[str] | None = Field(None, description="Live pods the operator has seen Ready: a pod's cold start is measured once, at its first Ready.")
    shape: str | None = Field(None, description="The pod shape for kubectl get: the variant, 'old->new' during a switch, "
                                                "'<variant>+<spill>' while spill pods serve.")
    variants: list[ShapeStatus] | None = Field(None, description="Every pod shape that has a Deployment, with its replicas and GPUs.")
    switch: SwitchStatus | None = Field(None, description="The change of pod shape in progress, if any.")
    conditions: list[Condition] = Field(default_factory=list)


class LLMDeployment(_Model):
    """An LLM inference server that llmscale runs and autoscales."""

    model_config = ConfigDict(extra="allow")
    api_version: str = "llmscale.io/v1alpha1"
    kind: str = "LLMDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus | None = None


def parse_spec(spec: dict[str, Any]) -> LLMDeploymentSpec:
    """Parse a raw spec (as the API server stores it) into the model; raises pydantic.ValidationError."""
    return LLMDeploymentSpec.model_validate(spec)


def explain_errors(err: Exception) -> str:
    """One readable line per pydantic error: 'spec.cost.maxHourlyCost: <message>'."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"spec.{loc}: {msg}" if loc else f"spec: {msg}")
    return "; ".join(out)
