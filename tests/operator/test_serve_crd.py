"""crds/modelserve.yaml, pure checks: known JSONSchemaProps keys (shared walker and key list with
test_operator_crds), `..` refused in every URI, printer columns, CEL rules that name their
field, and the invalid-manifest table the apiserver test will apply: each one is also refused
by the operator's parser with the same field path."""

from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftj_helpers import load_crd
from test_operator_crds import SCHEMA_KEYS, walk
from tuneforge.serve.spec import SpecError, parse_spec

INVALID = yaml.safe_load((Path(__file__).parent / "data" / "modelserve_invalid.yaml").read_text())
DOT_DOT_RULE = "!self.matches('(^|/)[.][.](/|$)')"


def schema() -> dict[str, Any]:
    return load_crd("modelserve.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_only_known_schema_keys() -> None:
    stray = {p: sorted(set(n) - SCHEMA_KEYS) for p, n in walk(schema()) if set(n) - SCHEMA_KEYS}
    assert not stray, stray


def test_every_uri_rejects_dot_dot_segments() -> None:
    uris = [(p, n) for p, n in walk(schema()["properties"]["spec"], ".spec")
            if n.get("type") == "string" and (p.endswith(".uri") or p.endswith("Uri"))]
    assert {p for p, _ in uris} == {".spec.baseModel.uri", ".spec.adapters[].uri", ".spec.rollout.gate.datasetUri"}
    for path, node in uris:
        assert DOT_DOT_RULE in [r["rule"] for r in node.get("x-kubernetes-validations") or ()], path
        assert node.get("maxLength"), f"{path}: CEL cost needs a bounded string"


def test_no_positive_fractional_minimum_without_a_rule() -> None:
    """As in finetunejob.yaml: the apiserver truncates a fractional minimum for integer values."""
    for path, node in walk(schema()):
        low = node.get("minimum")
        if node.get("type") == "number" and low is not None and low > 0 and low != int(low):
            assert f"self >= {low}" in [r["rule"] for r in node.get("x-kubernetes-validations") or ()], path
    gate = schema()["properties"]["spec"]["properties"]["rollout"]["properties"]["gate"]["properties"]
    assert (gate["minAccuracy"]["type"], gate["minAccuracy"]["minimum"], gate["minAccuracy"]["maximum"]) == ("number", 0, 1)
    assert gate["maxP99Ms"]["type"] == "integer" and schema()["properties"]["spec"]["properties"]["replicas"]["type"] == "integer"


def test_printer_columns() -> None:
    version = load_crd("modelserve.yaml")["spec"]["versions"][0]
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert cols == {"Phase": ".status.phase", "Active": ".status.active.display", "Preview": ".status.preview.display",
                    "Ready": ".status.readyReplicas", "Gate": ".status.gate.outcome", "Reason": ".status.reason",
                    "Requests": ".status.usage.requests", "Cost/1k": ".status.cost.per1kRequestsDisplay",
                    "Age": ".metadata.creationTimestamp"}


def test_cross_field_rules_name_their_field() -> None:
    spec = schema()["properties"]["spec"]
    for rule in spec["x-kubernetes-validations"]:
        assert rule["message"]
        if "has(self.adapter) != has(self.adapters)" not in rule["rule"]:
            assert rule.get("fieldPath"), rule


def test_status_fields_the_plan_writes_are_in_the_schema() -> None:
    """The apiserver prunes unknown status fields: every key plan.py writes must be declared."""
    import dataclasses

    from test_serve_plan import PASS, World, spec
    from test_serve_plan import V1 as P1, V2 as P2
    # A classifier version writes its head too (an lm version leaves it out).
    V1 = dataclasses.replace(P1, template_hash="a1b2c3d4e5", head="classifier")
    V2 = dataclasses.replace(P2, template_hash="f6a7b8c9d0", head="classifier")
    w = World(spec(scaleDownDelaySeconds=300))
    w.step(V1)
    w.ready("blue")
    w.step(V1)
    w.gate_done(V1, PASS)
    w.step(V1)
    w.step(V2)
    w.ready("green")
    w.step(V2)
    w.gate_done(V2, PASS)
    w.step(V2)
    status = w.step(V1).status
    status["rejected"] = {"digest": "d", "shortDigest": "s", "reason": "r", "message": "m", "at": "t", "templateHash": "h",
                          "retriedBy": "r"}
    status["abortNotApplied"] = {"value": "v", "message": "m", "at": "t"}
    status["rollout"].update(attempt=2, notReadySince="t", retriedBy="r")
    assert status["gate"]["attempt"] and status["active"]["templateHash"] and status["active"]["head"] == "classifier"
    status["endpoints"] = {"active": "a", "preview": "p"}
    # Usage and cost, as a reconcile with a price and a Prometheus writes them.
    from tuneforge.serve.status import Metering, Observed, cost_status, usage_status
    status["usage"] = usage_status({"since": "2026-01-01T00:00:00Z", "countedAt": "2026-01-01T00:00:00Z", "gpus": 1,
                                    "gpuSeconds": 0.0}, Observed(w.observed().colors, requests_served=12.0),
                                   w.now + dt.timedelta(days=400), Metering(2.5))
    status["cost"] = cost_status(status["usage"], Metering(2.5))
    assert status["usage"]["requests"] and status["cost"]["per1kRequests"]
    status["preview"] = status["active"]
    status["previewColor"] = "blue"
    props = schema()["properties"]["status"]

    def undeclared(value: Any, node: dict[str, Any], path: str) -> list[str]:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return []
        if isinstance(value, dict):
            out = []
            for k, v in value.items():
                sub = (node.get("properties") or {}).get(k)
                out += [f"{path}.{k}"] if sub is None else undeclared(v, sub, f"{path}.{k}")
            return out
        if isinstance(value, list):
            return [p for item in value for p in undeclared(item, node.get("items") or {}, f"{path}[]")]
        return []

    assert not undeclared(status, props, "status")
    assert {"active", "rollout", "history", "gate", "conditions"} <= set(status)


def test_at_least_ten_invalid_manifests() -> None:
    assert len(INVALID) >= 10 and len({c["name"] for c in INVALID}) == len(INVALID)
    for case in INVALID:
        assert re.match(r"^(spec|metadata)(\.[A-Za-z]+(\[\d+\])?)*$", case["field"]), case["name"]


@pytest.mark.parametrize("case", [c for c in INVALID if c.get("parser")], ids=lambda c: c["name"])
def test_invalid_manifest_is_refused_by_the_parser_at_the_same_field(case: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(copy.deepcopy(case["spec"]))
    assert err.value.path == case["parser"], str(err.value)


NAME_RULE = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"


@pytest.mark.parametrize("name, ok", [("intents", True), ("chat-v2", True), ("7b-chat", False), ("chat.v2", False),
                                      ("-x", False)])
def test_name_must_be_a_dns_1035_label(name: str, ok: bool) -> None:
    """The active and preview Services are named <name> and <name>-preview: a name the apiserver
    takes (a DNS-1123 subdomain: a leading digit, dots) but a Service refuses is refused here."""
    rules = [r for r in schema()["x-kubernetes-validations"] if "metadata.name.matches" in r["rule"]]
    assert [r["rule"] for r in rules] == [NAME_RULE] and "metadata.name" in rules[0]["message"]
    pattern = re.search(r"matches\('(.*)'\)", NAME_RULE)
    assert pattern is not None and bool(re.match(pattern.group(1), name)) is ok
