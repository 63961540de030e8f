"""The policies the twin runs, by the names `llmscale simulate --policy` and the benchmarks use.

- llmscale          the operator's decision core (llmscale.policy.decide), history carried between calls
- hpa-gpu-util      Kubernetes HPA on DCGM GPU utilisation, target 70 %      (llmscale.sim.baselines)
- keda-queue        KEDA on vllm:num_requests_waiting, 5 per replica
- kpa               Knative's KPA, target concurrency 70, 60 s stable / 6 s panic windows
- llmd-slo          llm-d's SLO-aware KEDA path, p90 latency / target, up > 0.55, down < 0.40
- dynamo-load       NVIDIA Dynamo's load-based planner, online latency regression every 5 s
- static-peak       the fewest constant replicas that meet the SLO, found offline
- oracle-lookahead  sees one cold start ahead, never trades a miss for money  (llmscale.sim.oracle)
- oracle            sees the whole trace, spends the miss allowance where it saves the most
- fixed:<variant>   llmscale pinned to one pod shape (the spec's other variants removed)
"""

from __future__ import annotations

from llmscale.api.models import LLMDeploymentSpec
from llmscale.policy import History, decide
from llmscale.policy.capacity import refused_start

from .baselines import (
    DynamoLoadPolicy,
    HPAGPUUtilPolicy,
    KEDAQueuePolicy,
    KPAPolicy,
    LLMDSLOPolicy,
    StaticPeakPolicy,
)
from .oracle import OracleLookaheadPolicy, OraclePolicy
from .traffic import Trace
from .twin import Policy, Target, View


class LLMScalePolicy(Policy):
    """The operator's own core. Knob: `scaling.targetUtilization` (default: the spec's)."""

    name = "llmscale"
    knob_name = "targetUtilization"
    default_knob: float | None = None

    def __init__(self, knob: float | None = None) -> None:
        self.knob = knob
        self.history = History()
        self.variant: str | None = None
        self.spec: LLMDeploymentSpec | None = None

    def _spec(self, spec: LLMDeploymentSpec) -> LLMDeploymentSpec:
        if self.knob is None:
            return spec
        if self.spec is None:
            self.spec = spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"target_utilization": self.knob})})
        return self.spec

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        self.variant = self.initial_variant or spec.variants[0].name
        return Target(max(1, spec.replicas.min, self.initial or 1), self.variant)

    def decide(self, view: View) -> Target:
        spec = self._spec(view.spec)
        d = decide(spec, view.workload, view.signals, self.history, view.now)
        self.history = d.history
        capped = any(r.code.value.startswith("BudgetLimited") for r in d.reasons)
        if not d.apply:
            return Target(view.workload.replicas, view.workload.variant or view.spec.variants[0].name, capped,
                          dict(view.workload.desired))
        return Target(d.to_replicas, d.variant, capped, d.replicas_by_variant, d.failed_variant)


class FixedShapePolicy(LLMScalePolicy):
    """llmscale pinned to one pod shape: the spec with only that variant. The baseline a
    multi-shape spec is compared with (is choosing shapes worth it?)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.pinned = variant
        self.name = f"fixed:{variant}"

    def _spec(self, spec: LLMDeploymentSpec) -> LLMDeploymentSpec:
        if self.spec is None:
            if not any(v.name == self.pinned for v in spec.variants):
                raise ValueError(f"fixed:{self.pinned}: the deployment has no variant {self.pinned!r} "
                                 f"(it has {', '.join(v.name for v in spec.variants)})")
            why = refused_start(spec, spec.variant(self.pinned))  # the twin itself would serve any shape
            if why is not None:
                raise ValueError(f"fixed:{self.pinned}: vLLM would not start on {self.pinned}: {why}")
            self.spec = spec.model_copy(update={"variants": [spec.variant(self.pinned)]})
        return self.spec

    def start(self, spec: LLMDeploymentSpec, trace: Trace, cold_start: dict[str, float]) -> Target:
        from .twin import warm_fleet

        pinned = self._spec(spec)
        self.variant = self.pinned
        return Target(max(1, pinned.replicas.min, warm_fleet(pinned, trace)[1]), self.pinned)


POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (LLMScalePolicy, HPAGPUUtilPolicy, KEDAQueuePolicy, KPAPolicy, LLMDSLOPolicy, DynamoLoadPolicy,
              StaticPeakPolicy, OracleLookaheadPolicy, OraclePolicy)
}


def make_policy(name: str, knob: float | None = None) -> Policy:
    if name.startswith("fixed:") and len(name) > len("fixed:"):
        if knob is not None:
            raise ValueError("fixed:<variant> takes no knob")
        return FixedShapePolicy(name.split(":", 1)[1])
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}, fixed:<variant>")
    cls = POLICIES[name]
    if knob is None:
        return cls()
    if not hasattr(cls, "knob_name"):
        raise ValueError(f"policy {name!r} has no headroom knob")
    return cls(knob)  # type: ignore[call-arg]
