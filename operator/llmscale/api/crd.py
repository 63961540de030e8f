"""Generate the LLMDeployment CustomResourceDefinition from the pydantic models.

The models are the single source: field descriptions become `kubectl explain` text, defaults
become API-server defaults, and model-level `x-kubernetes-validations` become CEL rules.
JSON Schema from pydantic is turned into a Kubernetes structural schema (OpenAPI v3.0 subset):
$refs inlined, Optional unwrapped, titles dropped, exclusive bounds rewritten, defaults of
nested objects filled in so that defaulting reaches every level.
"""

from __future__ import annotations

import copy
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from llmscale import GROUP, VERSION

from .models import RESOURCE_NAME_MESSAGE, RESOURCE_NAME_RULE, LLMDeploymentSpec, LLMDeploymentStatus

PLURAL = "llmdeployments"
KIND = "LLMDeployment"
SHORT_NAMES = ["llmd"]
CRD_NAME = f"{PLURAL}.{GROUP}"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Shape", "type": "string", "jsonPath": ".status.shape", "description": "The pod shape (variant), or old->new during a switch."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "TTFT", "type": "string", "jsonPath": ".status.ttftDisplay", "description": "Observed TTFT at the SLO's percentile (shown after the value)."},
    {"name": "Cost/h", "type": "string", "jsonPath": ".status.hourlyCost"},
    {"name": "SLO", "type": "string", "jsonPath": ".status.sloMet"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _models_by_name(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from root, by class name (pydantic's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for f in tp.model_fields.values():
                visit(f.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


def _dump_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list):
        return [_dump_default(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_default(v) for k, v in value.items()}
    return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        ref = node.pop("$ref").split("/")[-1]
        merged = copy.deepcopy(defs[ref])
        merged.update(node)  # description/default at the use site win
        node = merged
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            inner = _structural(options[0], defs)
            inner.update({k: v for k, v in rest.items() if k != "default" or v is not None})
            node = inner
    for drop in ("title", "$defs"):
        node.pop(drop, None)
    if node.get("default", 0) is None:
        node.pop("default")
    if node.get("additionalProperties") is False or (node.get("additionalProperties") is True and "properties" in node):
        node.pop("additionalProperties")  # structural schemas forbid properties beside additionalProperties
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(key), int | float) and not isinstance(node.get(key), bool):
            node[bound] = node[key]
            node[key] = True
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        node.setdefault("maxProperties", 64)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {pk: _structural(pv, defs) for pk, pv in v.items()}
        elif k in ("items", "additionalProperties"):
            out[k] = _structural(v, defs)
        else:
            out[k] = v
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.get("$defs", {})
    # Fill the defaults pydantic leaves out (default_factory), so the API server defaults nested objects.
    models = _models_by_name(model)
    for name, cls in models.items():
        target = raw if cls is model else defs.get(name)
        if target is None:
            continue
        for fname, field in cls.model_fields.items():
            alias = field.alias or fname
            if field.default_factory is not None and alias in target.get("properties", {}):
                target["properties"][alias]["default"] = _dump_default(field.default_factory())  # type: ignore[call-arg]
    return _structural(raw, defs)


def spec_schema() -> dict[str, Any]:
    return _schema_of(LLMDeploymentSpec)


def status_schema() -> dict[str, Any]:
    s = _schema_of(LLMDeploymentStatus)
    # The operator may add fields in newer versions; an older CRD must not prune them away.
    s["x-kubernetes-preserve-unknown-fields"] = True
    s["properties"]["ttftDisplay"] = {"type": "string", "description": "TTFT at the SLO's percentile with that percentile, e.g. '226ms@p99', for kubectl get."}
    # Free-form objects the operator owns: the policy's memory (so a restart resumes exactly), its
    # estimates, and kopf's handler bookkeeping. Their subtrees must survive pruning.
    for key, text in (("history", "The policy's memory between decisions: recommendations, rate samples, marks."),
                      ("estimate", "What the policy believed at the last decision: capacity, forecast, ceiling."),
                      ("kopf", "Handler bookkeeping of the operator framework.")):
        s["properties"][key] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "description": text}
    s["properties"]["warnings"] = {"type": "array", "items": {"type": "string"},
                                   "description": "Measurement caveats, e.g. an SLO target between histogram buckets."}
    for c in s["properties"]["conditions"].get("items", {}).get("properties", {}).values():
        c.pop("default", None)
    s["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    s["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    s["properties"]["conditions"].pop("default", None)
    return s


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "llmscale"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": "llmdeployment",
                "shortNames": SHORT_NAMES,
                "categories": ["llmscale"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.scaling.manualReplicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "LLMDeployment runs an LLM inference server (vLLM OpenAI-compatible) and autoscales it to hold latency SLOs inside GPU and cost ceilings.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [{"rule": RESOURCE_NAME_RULE, "message": RESOURCE_NAME_MESSAGE,
                                                          "optionalOldSelf": True}],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `llmscale crds` from operator/llmscale/api/models.py. Do not edit by hand.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)
