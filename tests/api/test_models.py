"""Validation of LLMDeployment specs: table-driven, with the message a user would read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmscale.api import explain_errors, parse_spec
from llmscale.api.units import format_duration, parse_duration, parse_money, parse_quantity
from tests.conftest import spec_dict


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("150ms", 0.15), ("15s", 15), ("5m", 300), ("1h30m", 5400), ("0.5s", 0.5), ("2h", 7200)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "5 minutes", "-1s", "1d", "s"])
def test_bad_durations_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration: write a number with a unit"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.15, "150ms"), (15, "15s"), (300, "5m"), (7200, "2h"), (90, "90s")])
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "value"), [("64Gi", 64 * 2**30), ("500m", 0.5), ("8", 8), ("1.5k", 1500)])
def test_quantities(text: str, value: float) -> None:
    assert float(parse_quantity(text)) == pytest.approx(value)


@pytest.mark.parametrize("text", ["64GB", "lots", "-1", "1e3"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


def test_money() -> None:
    assert str(parse_money("40.00")) == "40.00"
    with pytest.raises(ValueError, match="is not an amount"):
        parse_money("$40")


def test_defaults_are_filled() -> None:
    s = parse_spec({"model": "m", "variants": [{"name": "a", "accelerator": "nvidia-h100"}]})
    assert s.replicas.min == 1 and s.replicas.max == 8
    assert s.scaling.mode.value == "Auto" and s.scaling.interval == "15s"
    assert s.scaling.scale_down.stabilization_window == "300s" and s.scaling.scale_down.max_step == 1
    assert s.slo.ttft is not None and s.slo.ttft.seconds == pytest.approx(0.15)
    assert s.variants[0].gpus_per_replica == 1


def test_stream_speed_translates_to_inter_token_target() -> None:
    s = parse_spec(spec_dict(slo={"streamSpeed": {"wordsPerMinute": 600}}))
    itl = s.slo.itl_target()
    assert itl is not None
    # 600 words/min = 10 words/s = 13.3 tokens/s at 0.75 words/token -> 75 ms between tokens
    assert itl.seconds == pytest.approx(0.075, rel=1e-3)
    s2 = parse_spec(spec_dict(slo={"streamSpeed": {"tokensPerSecond": 20}}))
    assert s2.slo.itl_target().seconds == pytest.approx(0.05)  # type: ignore[union-attr]


BAD = [
    ("min above max", {"replicas": {"min": 5, "max": 2}}, "replicas.min (5) must be less than or equal to replicas.max (2)"),
    ("duplicate variants", {"variants": [{"name": "a", "accelerator": "nvidia-h100"}, {"name": "a", "accelerator": "nvidia-l4"}]},
     "variant names must be unique; repeated: a"),
    ("unpriced variant", {"variants": [{"name": "a", "accelerator": "nvidia-a10g"}]},
     "every variant's accelerator needs a price in cost.prices; missing: nvidia-a10g"),
    ("percentile 100", {"slo": {"ttft": {"target": "150ms", "percentile": 100}}}, "spec.slo.ttft.percentile"),
    ("percentile 0", {"slo": {"ttft": {"target": "150ms", "percentile": 0}}}, "spec.slo.ttft.percentile"),
    ("unknown mode", {"scaling": {"mode": "Sometimes"}}, "spec.scaling.mode"),
    ("bad interval", {"scaling": {"interval": "5 minutes"}}, "spec.scaling.interval"),
    ("interval too short", {"scaling": {"interval": "500ms"}}, "shorter than 1s"),
    ("unknown field", {"bogus": 1}, "spec.bogus: Extra inputs are not permitted"),
    ("no variants", {"variants": []}, "spec.variants"),
    ("both speed units", {"slo": {"streamSpeed": {"tokensPerSecond": 10, "wordsPerMinute": 600}}}, "set exactly one"),
    ("itl twice", {"slo": {"interTokenLatency": {"target": "50ms"}, "streamSpeed": {"tokensPerSecond": 10}}}, "not both"),
    # Review (session 26): these gave an inter-token target of '0.0ms', or one too long for its own
    # field, which raised at every read of the endpoint's batch (every deployment on it held).
    ("speed past 1000 tokens/s", {"slo": {"streamSpeed": {"wordsPerMinute": 60000, "wordsPerToken": 1e-6}}},
     "0.01 to 1000 tokens per second"),
    ("speed under 0.01 tokens/s", {"slo": {"streamSpeed": {"wordsPerMinute": 1e-30}}}, "0.01 to 1000 tokens per second"),
    ("tokens/s near zero", {"slo": {"streamSpeed": {"tokensPerSecond": 1e-30}}}, "spec.slo.streamSpeed.tokensPerSecond"),
    # Review (session 26): a misspelt signal ran its query with the operator's credential, its answer unread.
    ("query for no signal", {"metrics": {"queries": {"requestWaiting": "sum(x)"}}}, "'requestWaiting': not a signal"),
    ("gpus too many", {"variants": [{"name": "a", "accelerator": "nvidia-h100", "gpusPerReplica": 16}]}, "gpusPerReplica"),
    ("maxGPUs below every variant", {"cost": {"maxGPUs": 2}, "variants": [{"name": "a", "accelerator": "nvidia-h100", "gpusPerReplica": 4}]},
     "no replica could ever run"),
    ("bad memory", {"variants": [{"name": "a", "accelerator": "nvidia-h100", "memory": "64GB"}]}, "memory"),
    ("bad price", {"cost": {"prices": {"nvidia-h100": "four"}}}, "prices"),
    ("volume with two sources", {"serving": {"volumes": [{"name": "cache", "mountPath": "/cache", "hostPath": {"path": "/m"},
                                                          "persistentVolumeClaim": {"claimName": "c"}}]}},
     "set exactly one of persistentVolumeClaim and hostPath"),
    ("volume with no source", {"serving": {"volumes": [{"name": "cache", "mountPath": "/cache"}]}},
     "set exactly one of persistentVolumeClaim and hostPath"),
    ("the operator's volume name", {"serving": {"volumes": [{"name": "dshm", "mountPath": "/x", "hostPath": {"path": "/m"}}]}},
     "volume name 'dshm' is the operator's"),
    ("one mount path twice", {"serving": {"volumes": [{"name": "a", "mountPath": "/x", "hostPath": {"path": "/a"}},
                                                      {"name": "b", "mountPath": "/x", "hostPath": {"path": "/b"}}]}},
     "mount paths must be unique"),
    ("relative mount path", {"serving": {"volumes": [{"name": "a", "mountPath": "x", "hostPath": {"path": "/a"}}]}},
     "spec.serving.volumes.0.mountPath"),
    ("a variable in env and secretEnv", {"serving": {"env": {"HF_TOKEN": "x"},
                                                     "secretEnv": [{"name": "HF_TOKEN", "secret": "hf", "key": "token"}]}},
     "a variable is set either in env or in secretEnv: HF_TOKEN"),
    ("bad env name", {"serving": {"secretEnv": [{"name": "HF-TOKEN", "secret": "hf", "key": "token"}]}},
     "spec.serving.secretEnv.0.name"),
    # Review (session 26): admitted, then the API server refused the rendered pods (ApplyFailed).
    ("toleration without key or Exists", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                         "tolerations": [{"value": "x"}]}]},
     "a toleration without a key needs operator Exists"),
    ("toleration Exists with a value", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                       "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}]},
     "a toleration with operator Exists takes no value"),
    ("tolerationSeconds without NoExecute", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                            "tolerations": [{"key": "k", "tolerationSeconds": 5}]}]},
     "tolerationSeconds needs effect NoExecute"),
    ("toleration key not a label key", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                      "tolerations": [{"key": "bad key"}]}]},
     "spec.variants.0.tolerations.0.key"),
    ("toleration value not a label value", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                          "tolerations": [{"key": "k", "value": "x" * 64}]}]},
     "spec.variants.0.tolerations.0.value"),
    ("nodeSelector key not a label key", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                        "nodeSelector": {"a/b/c": "x"}}]},
     "nodeSelector keys ['a/b/c'] are not label keys"),
    ("nodeSelector key prefix past 253", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                       "nodeSelector": {"a" * 254 + "/b": "x"}}]},
     "are not label keys"),
    ("gpuProduct not a label value", {"variants": [{"name": "a", "accelerator": "nvidia-h100", "gpuProduct": "NVIDIA H100"}]},
     "spec.variants.0.gpuProduct"),
    ("nodeSelector value not a label value", {"variants": [{"name": "a", "accelerator": "nvidia-h100",
                                                            "nodeSelector": {"example.com/gpu": "bad value!"}}]},
     "spec.variants.0.nodeSelector.example.com/gpu"),
]


@pytest.mark.parametrize(("case", "override", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_specs_are_refused_with_a_message_that_says_what_to_fix(case: str, override: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec(spec_dict(**override))
    assert message in explain_errors(err.value), explain_errors(err.value)


def test_examples_parse() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "examples").glob("*.yaml")) + [root / "operator/llmscale/data/default-deployment.yaml"]
    assert len(files) >= 3
    for f in files:
        doc = yaml.safe_load(f.read_text())
        parse_spec(doc["spec"])


def test_the_e2e_latency_target_is_spelt_e2eLatency_and_the_old_spelling_still_reads() -> None:
    """0.1 spelt it e2ELatency (pydantic's camel case of e2e_latency); status says
    e2eLatencyQuantile. The old spelling stays in the schema (the API server would otherwise prune
    it and the target be lost without a word) and is read as the new one."""
    new = parse_spec(spec_dict(slo={"e2eLatency": {"target": "20s", "percentile": 99}}))
    old = parse_spec(spec_dict(slo={"e2ELatency": {"target": "20s", "percentile": 99}}))
    assert new.slo.e2e_latency == old.slo.e2e_latency and new.slo.e2e_latency is not None
    assert new.slo.e2e_latency.seconds == 20.0 and new.slo.e2e_latency.percentile == 99
    assert old == new
    dumped = old.model_dump(by_alias=True, exclude_none=True)["slo"]
    assert dumped["e2eLatency"]["target"] == "20s" and "e2ELatency" not in dumped
    with pytest.raises(ValidationError) as e:
        parse_spec(spec_dict(slo={"e2eLatency": {"target": "20s"}, "e2ELatency": {"target": "30s"}}))
    assert "set slo.e2eLatency (e2ELatency is its deprecated spelling), not both" in explain_errors(e.value)


def test_the_crd_refuses_both_spellings_of_the_e2e_latency_target() -> None:
    from llmscale.api.crd import spec_schema

    rules = spec_schema()["properties"]["slo"]["x-kubernetes-validations"]
    assert {"rule": "!(has(self.e2eLatency) && has(self.e2ELatency))",
            "message": "set slo.e2eLatency (e2ELatency is its deprecated spelling), not both"} in rules
    assert set(spec_schema()["properties"]["slo"]["properties"]) >= {"e2eLatency", "e2ELatency"}


GOOD_SCHEDULING = [
    {"nodeSelector": {"example.com/gpu": "a100", "kubernetes.io/hostname": "n-1", "plain": ""}},
    {"tolerations": [{"operator": "Exists"}]},  # every taint
    {"tolerations": [{"key": "", "operator": "Exists"}]},  # the same, as charts often write it
    {"tolerations": [{"key": "k", "operator": "", "value": "v", "effect": ""}]},  # empty: Equal, every effect
    {"nodeSelector": {"a" * 253 + "/" + "b" * 63: "x"}},  # the longest label key
    {"gpuProduct": "NVIDIA-H100-80GB-HBM3"},
    {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    {"tolerations": [{"key": "dedicated", "value": "llm", "effect": "NoExecute", "tolerationSeconds": 30}]},
]


@pytest.mark.parametrize("fields", GOOD_SCHEDULING)
def test_what_kubernetes_accepts_for_scheduling_is_accepted(fields: dict) -> None:
    parse_spec(spec_dict(variants=[{"name": "a", "accelerator": "nvidia-h100", **fields}]))


@pytest.mark.parametrize(("name", "ok"), [
    ("chat", True), ("llama-8b", True), ("a" * 63, True), ("a1", True), ("1chat", True),
    ("chat.prod", False), ("Chat", False), ("chat-", False), ("-chat", False), ("a" * 64, False), ("", False),
])
def test_a_name_that_cannot_name_a_service_is_reported(name: str, ok: bool) -> None:
    from llmscale.api.models import resource_name_problem

    problem = resource_name_problem(name)
    assert (problem is None) == ok, problem
    if not ok:
        assert problem is not None and problem.startswith("metadata.name must be at most 63 lower-case letters")
