"""Bad LLMDeployments against the real API server (issue 11): hypothesis draws valid and broken
specs; each is refused with a message naming the field, or admitted and handled (a condition for
its generation) without a traceback in the operator's log; the operator never exits, and a
deployment beside them keeps being served."""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import OPERATOR_LOG, Bed, last_decided, wait_for

VALID: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "engineArgs": ["--max-model-len=8192"],
    "replicas": {"min": 1, "max": 3},
    "variants": [{"name": "h100x1", "accelerator": "nvidia-h100", "gpusPerReplica": 1, "coldStart": "5s"}],
    "slo": {"ttft": {"target": "500ms", "percentile": 95}, "interTokenLatency": {"target": "100ms"}},
    "cost": {"maxGPUs": 3, "maxHourlyCost": "12.00", "prices": {"nvidia-h100": "4.00"}},
    "scaling": {"interval": "3s", "scaleUp": {"maxStep": 2}, "scaleDown": {"stabilizationWindow": "20s"}},
    "metrics": {"rateWindow": "20s"},
}
PATHS = [("model",), ("engineArgs",), ("replicas", "min"), ("replicas", "max"), ("variants",), ("variants", 0, "name"),
         ("variants", 0, "accelerator"), ("variants", 0, "gpusPerReplica"), ("variants", 0, "coldStart"),
         ("slo", "ttft", "target"), ("slo", "ttft", "percentile"), ("slo", "interTokenLatency", "target"),
         ("cost", "maxGPUs"), ("cost", "maxHourlyCost"), ("cost", "prices", "nvidia-h100"), ("scaling", "interval"),
         ("scaling", "mode"), ("scaling", "scaleUp", "maxStep"), ("scaling", "scaleDown", "stabilizationWindow"),
         ("metrics", "rateWindow"), ("slo",), ("cost",), ("replicas",)]
NASTY = st.one_of(
    st.sampled_from([None, -1, 0, 1, 2, 10**12, -0.5, 1.5, True, "", "abc", "-5s", "10zz", "0s", "1e400", "NaN",
                     "\u221e", "x" * 300, [], {}, ["--tensor-parallel-size=2"], {"unexpected": 1}, "Auto", "Paused",
                     "nvidia-l4", "4.00", "90s", "250ms"]),
    st.integers(min_value=-5, max_value=40),
    st.text(max_size=12),
)


def _mutate(spec: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1], None) if isinstance(node, dict) else None
    else:
        node[path[-1]] = value
    return out


def _names_the_field(message: str, path: tuple[Any, ...]) -> bool:
    """Whether a refusal names the field: the API server's path of it or of an object above it
    ("spec.variants[0].name: Required value", "spec.replicas: Invalid value: ...: replicas.min must
    be ..."), or, for a rule over the whole spec, the field's own name as a word in the rule's text
    ("spec: Invalid value: ...: ... every variant's accelerator needs a price")."""
    dotted = "spec"
    for k in path:
        dotted += f"[{k}]" if isinstance(k, int) else f".{k}"
        if re.search(re.escape(dotted) + r"(?![\w-])", message):
            return True
    # Only a distinctive name counts there: "name", "min" or "target" would match most rules' text.
    leaf = next(str(k) for k in reversed(path) if isinstance(k, str))
    return ("spec: Invalid value" in message and len(leaf) >= 6
            and re.search(rf"(?<![\w-]){re.escape(leaf)}(?![\w-])", message) is not None)


def _operator_log_from(offset: int) -> str:
    with OPERATOR_LOG.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _handled(bed: Bed, namespace: str, name: str) -> dict[str, Any] | None:
    """The LLMDeployment's status once the operator has handled its generation (a condition for it)."""
    obj = bed.llmd(namespace, name)
    status = obj.get("status") or {}
    if status.get("observedGeneration") == obj["metadata"]["generation"] and status.get("conditions"):
        return status
    return None


def test_bad_llmdeployments_are_refused_or_handled_and_harm_nothing_else(
        bed: Bed, operator: Any, namespace: str) -> None:
    canary = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
              "metadata": {"name": "canary", "namespace": namespace}, "spec": VALID}
    bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(canary))
    bed.traffic(namespace, "canary", rate=2, meanInput=200, meanOutput=100)
    wait_for("the canary serving", lambda: (bed.llmd(namespace, "canary").get("status") or {}).get("readyReplicas"), 90)
    log_start = OPERATOR_LOG.stat().st_size
    seen = {"refused": 0, "handled": 0}
    canary_gaps: list[float] = []  # at each example: seconds since the canary's last decision

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(PATHS), value=NASTY, delete=st.booleans())
    def one(path: tuple[Any, ...], value: Any, delete: bool) -> None:
        spec = _mutate(VALID, path, value, delete)
        name = f"fuzz-{seen['refused'] + seen['handled']}"
        doc = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        r = bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
        canary_gaps.append(time.time() - (last_decided(namespace, "canary") or 0.0))
        names = [str(k) for k in path if isinstance(k, str)]
        if r.returncode != 0:
            seen["refused"] += 1
            # Refused by the schema or the CEL rules: the message names where.
            assert _names_the_field(r.stderr, path), (path, value, delete, r.stderr)
            assert "Traceback" not in r.stderr
            return
        seen["handled"] += 1
        status = wait_for(f"{name} handled ({path}={value!r}, delete={delete})", lambda: _handled(bed, namespace, name), 30)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        if ready.get("reason") in ("InvalidSpec", "EngineArgConflict"):
            assert any(n in ready["message"] for n in names), (path, value, ready)
        assert operator.poll() is None, "the operator exited"
        bed.kubectl("delete", "llmd", name, "-n", namespace, "--wait=false")

    one()
    assert seen["refused"] and seen["handled"], seen  # both sides of the admission were exercised
    log = _operator_log_from(log_start)
    assert "Traceback" not in log, log[-4000:]
    assert operator.poll() is None, "the operator exited"
    # The canary was decided all along (the operator's own gauge, read at every example: status
    # keeps only decisions that changed something): never more than a few 3 s intervals behind.
    assert canary_gaps and max(canary_gaps) < 20, canary_gaps


def test_the_old_spelling_of_the_e2e_latency_target_is_kept_and_both_are_refused(
        bed: Bed, operator: Any, namespace: str) -> None:
    """0.1 spelt the whole-request target slo.e2ELatency; now slo.e2eLatency. The API server keeps a
    manifest in the old spelling (not pruned: the target would be lost without a word) and the
    operator reads it; both spellings at once are refused by the CRD's rule."""
    old = copy.deepcopy(VALID)
    old["slo"]["e2ELatency"] = {"target": "20s", "percentile": 99}
    doc = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
           "metadata": {"name": "old-e2e", "namespace": namespace}, "spec": old}
    bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    assert bed.llmd(namespace, "old-e2e")["spec"]["slo"]["e2ELatency"] == {"target": "20s", "percentile": 99}
    status = wait_for("the old spelling handled", lambda: _handled(bed, namespace, "old-e2e"), 30)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready.get("reason") != "InvalidSpec", ready
    both = copy.deepcopy(old)
    both["slo"]["e2eLatency"] = {"target": "30s"}
    doc = {**doc, "metadata": {"name": "both-e2e", "namespace": namespace}, "spec": both}
    r = bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert r.returncode != 0 and "set slo.e2eLatency (e2ELatency is its deprecated spelling), not both" in r.stderr, r.stderr
    bed.kubectl("delete", "llmd", "old-e2e", "-n", namespace, "--wait=false")


def test_names_and_scheduling_fields_the_rendered_pods_could_not_have_are_refused(bed: Bed, namespace: str) -> None:
    """Review (session 26): a CR name with a dot or past 63 characters, and tolerations or node labels
    Kubernetes refuses on a pod, were admitted, then every apply failed (ApplyFailed). The CRD
    refuses them now, naming the field."""
    scheduling = [
        ({"tolerations": [{"value": "x"}]}, "spec.variants[0].tolerations[0]", "needs operator Exists"),
        ({"tolerations": [{"key": "k", "tolerationSeconds": 5}]}, "spec.variants[0].tolerations[0]", "needs effect NoExecute"),
        ({"tolerations": [{"key": "bad key"}]}, "spec.variants[0].tolerations[0].key", "should match"),
        ({"nodeSelector": {"a/b/c": "x"}}, "spec.variants[0].nodeSelector", "must be a label key"),
    ]
    cases = [("a" * 64, {}, "metadata.name must be at most 63"), ("chat.prod", {}, "metadata.name must be at most 63")]
    cases += [(f"sched-{i}", fields, f"{path}: Invalid value") for i, (fields, path, _) in enumerate(scheduling)]
    for i, (name, fields, expected) in enumerate(cases):
        spec = copy.deepcopy(VALID)
        spec["variants"][0].update(fields)
        doc = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        r = bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
        assert r.returncode != 0 and expected in r.stderr, (name, r.stderr)
        if i >= 2:
            assert scheduling[i - 2][2] in r.stderr, r.stderr
    # The same fields, as Kubernetes allows them, are admitted.
    spec = copy.deepcopy(VALID)
    spec["variants"][0].update({"nodeSelector": {"example.com/pool": "llm"},
                                "tolerations": [{"key": "dedicated", "value": "llm", "effect": "NoExecute", "tolerationSeconds": 30}]})
    doc = {"apiVersion": "llmscale.io/v1alpha1", "kind": "LLMDeployment",
           "metadata": {"name": "sched-ok", "namespace": namespace}, "spec": spec}
    bed.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
    # So is a toleration of every taint written with an empty key, and a name with a leading digit.
    spec["variants"][0]["tolerations"] = [{"key": "", "operator": "Exists"}]
    doc = {**doc, "metadata": {"name": "1chat", "namespace": namespace}, "spec": spec}
    bed.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
