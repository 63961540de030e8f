"""What the operator reads of the pods and Deployments it owns, as small typed views built from the
API's JSON. The kubernetes client's model objects (managed fields, the whole pod spec) cost about a
millisecond each to build and tens of kilobytes each to keep; a decision needs a dozen fields."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .render import (
    ANNOTATION_SPILL_FOR,
    ANNOTATION_SWITCH_FAILED,
    ANNOTATION_TARGET_SINCE,
    FIELD_MANAGER,
    LABEL_DEPLOYMENT,
    LABEL_VARIANT,
)

HANDOVER_MANAGER = "llmscale-handover"  # holds `replicas` while a competing autoscaler takes them
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# The Deployment annotations a decision reads: the shape, and the operator's own switch marks.
KEPT_ANNOTATIONS = ("llmscale.io/gpus", "llmscale.io/accelerator", ANNOTATION_TARGET_SINCE, ANNOTATION_SWITCH_FAILED,
                    ANNOTATION_SPILL_FOR)


def parse_time(text: Any) -> dt.datetime | None:
    """An RFC 3339 time from the API (None when absent or unreadable)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


@dataclass(frozen=True)
class PodView:
    name: str
    variant: str = ""
    created: dt.datetime | None = None
    terminating: bool = False  # deletionTimestamp set: draining, its GPUs still held
    ready_since: dt.datetime | None = None  # the Ready condition is True: since its last transition
    unschedulable: bool = False  # PodScheduled False with reason Unschedulable (no free GPUs)
    scheduled: dt.datetime | None = None  # PodScheduled True: since its last transition (bound to a node)
    not_ready_since: dt.datetime | None = None  # the Ready condition is False: since its last transition
    deletion_cost: str | None = None
    owner: str = ""  # the LLMDeployment, from the llmscale.io/deployment label
    namespace: str = ""

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PodView:
        md = _dict(obj.get("metadata"))
        labels, annotations = _dict(md.get("labels")), _dict(md.get("annotations"))
        ready_since = scheduled = not_ready_since = None
        unschedulable = False
        for c in _list(_dict(obj.get("status")).get("conditions")):
            c = _dict(c)
            if c.get("type") == "Ready" and c.get("status") == "True":
                ready_since = parse_time(c.get("lastTransitionTime"))
            elif c.get("type") == "Ready" and c.get("status") == "False":
                not_ready_since = parse_time(c.get("lastTransitionTime"))
            elif c.get("type") == "PodScheduled" and c.get("status") == "True":
                scheduled = parse_time(c.get("lastTransitionTime"))
            elif c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                unschedulable = True
        cost = annotations.get(DELETION_COST)
        return cls(name=str(md.get("name") or ""), variant=str(labels.get(LABEL_VARIANT) or ""),
                   created=parse_time(md.get("creationTimestamp")), terminating=md.get("deletionTimestamp") is not None,
                   ready_since=ready_since, unschedulable=unschedulable, scheduled=scheduled,
                   not_ready_since=not_ready_since, deletion_cost=str(cost) if cost is not None else None,
                   owner=str(labels.get(LABEL_DEPLOYMENT) or ""), namespace=str(md.get("namespace") or ""))


def replicas_set_outside(managed_fields: list[Any]) -> str | None:
    """Who other than llmscale last set a Deployment's replicas (`kubectl scale`, an edit, a GitOps
    tool), from its managed fields; None while llmscale owns them. Applying with force takes them
    back, so this names a change made since llmscale's last apply."""
    for entry in managed_fields:
        entry = _dict(entry)
        manager = entry.get("manager")
        if manager not in (FIELD_MANAGER, HANDOVER_MANAGER) and "f:replicas" in _dict(_dict(entry.get("fieldsV1")).get("f:spec")):
            sub = entry.get("subresource")
            return f"{manager or 'an unnamed client'}" + (f" ({sub} subresource)" if sub else "")
    return None


@dataclass(frozen=True)
class DeploymentView:
    name: str
    variant: str = ""
    replicas: int = 0  # spec.replicas
    ready_replicas: int = 0  # status.readyReplicas
    annotations: Mapping[str, str] = field(default_factory=dict)  # only KEPT_ANNOTATIONS
    controller: str | None = None  # the LLMDeployment that controls it (ownerReferences, controller: true)
    replicas_set_by: str | None = None  # replicas_set_outside() of its managed fields
    owner: str = ""  # the llmscale.io/deployment label
    namespace: str = ""
    generation: int = 0  # metadata.generation: an apply that changes the spec (template or replicas) raises it

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DeploymentView:
        md = _dict(obj.get("metadata"))
        labels, annotations = _dict(md.get("labels")), _dict(md.get("annotations"))
        controller = next((str(o.get("name")) for o in map(_dict, _list(md.get("ownerReferences")))
                           if o.get("kind") == "LLMDeployment" and o.get("controller") is True), None)
        spec_replicas = _dict(obj.get("spec")).get("replicas")
        return cls(name=str(md.get("name") or ""), variant=str(labels.get(LABEL_VARIANT) or ""),
                   # An absent spec.replicas is 1 to Kubernetes (the API server defaults it on write).
                   replicas=1 if spec_replicas is None else _int(spec_replicas),
                   ready_replicas=_int(_dict(obj.get("status")).get("readyReplicas")),
                   annotations={k: str(annotations[k]) for k in KEPT_ANNOTATIONS if k in annotations},
                   controller=controller, replicas_set_by=replicas_set_outside(_list(md.get("managedFields"))),
                   owner=str(labels.get(LABEL_DEPLOYMENT) or ""), namespace=str(md.get("namespace") or ""),
                   generation=_int(md.get("generation")))


@dataclass(frozen=True)
class AutoscalerView:
    """An HPA or a KEDA ScaledObject: what it scales (a competing autoscaler when that is ours)."""

    target_kind: str
    target_name: str
    what: str  # "HorizontalPodAutoscaler <name>" or "KEDA ScaledObject <name>"

    @classmethod
    def from_hpa(cls, obj: Mapping[str, Any]) -> AutoscalerView:
        ref = _dict(_dict(obj.get("spec")).get("scaleTargetRef"))
        name = _dict(obj.get("metadata")).get("name") or "?"
        return cls(str(ref.get("kind") or ""), str(ref.get("name") or ""), f"HorizontalPodAutoscaler {name}")

    @classmethod
    def from_scaled_object(cls, obj: Mapping[str, Any]) -> AutoscalerView:
        ref = _dict(_dict(obj.get("spec")).get("scaleTargetRef"))
        name = _dict(obj.get("metadata")).get("name") or "?"
        return cls(str(ref.get("kind") or "Deployment"), str(ref.get("name") or ""), f"KEDA ScaledObject {name}")
