"""The operator's Prometheus credential goes only where the platform team configured it: a tenant's
LLMDeployment that names its own server gets nothing, and no secret shows anywhere."""

from __future__ import annotations

import json
import urllib.request

from tests.metrics.test_credentials import Recorder

from .conftest import OPERATOR_LOG, OPERATOR_TOKEN, Bed, wait_for
from .test_autoscaling import _cond, _doc, _status


def test_a_tenant_cannot_send_the_operators_token_to_its_own_server(bed: Bed, operator: object, namespace: str) -> None:
    rec = Recorder()
    try:
        bed.kubectl("apply", "-f", "-", input=_doc(namespace, metrics={"rateWindow": "20s", "prometheusURL": rec.url}))
        cond = wait_for("MetricsAvailable=False", lambda: (c := _cond(bed, namespace, "MetricsAvailable")).get("status") == "False" and c, 90)
        assert "allow-list" in cond["message"]
        wait_for("a decision", lambda: _status(bed, namespace).get("lastDecision"), 30)
        assert rec.requests == []  # never contacted, so no token could reach it
    finally:
        rec.close()
    token = OPERATOR_TOKEN.read_text().strip()
    events = [e.to_dict() for e in bed.core.list_namespaced_event(namespace).items]
    with urllib.request.urlopen("http://127.0.0.1:18080/metrics", timeout=10) as r:  # the session operator's own metrics
        metrics = r.read().decode(errors="replace")
    assert "llmscale_" in metrics  # the page is the operator's (so the check below can fail)
    for where, text in (("status", json.dumps(_status(bed, namespace))), ("events", json.dumps(events, default=str)),
                        ("operator log", OPERATOR_LOG.read_text(errors="replace")), ("operator's /metrics", metrics)):
        assert token not in text, f"the operator's token appears in the {where}"
