"""The CRD YAML: structural, described field by field, printer columns, names."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from ftj_helpers import load_crd

CRDS = ["finetunejob.yaml", "modelserve.yaml"]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", CRDS)
def test_crd_identity(name: str) -> None:
    crd = load_crd(name)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["spec"]["group"] == "tuneforge.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert "tuneforge" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Age"} <= columns


def test_ftj_printer_columns() -> None:
    version = load_crd("finetunejob.yaml")["spec"]["versions"][0]
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert cols["Phase"] == ".status.phase"
    assert cols["Accuracy"] == ".status.evaluation.accuracy"
    assert cols["Progress"] == ".status.progress.display"
    assert cols["Gate"] == ".status.gate.outcome"


@pytest.mark.parametrize("name", CRDS)
def test_every_field_is_described_and_typed(name: str) -> None:
    schema = load_crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing, untyped = [], []
    for path, node in walk(schema):
        if path == ".metadata":
            continue
        if not node.get("description") and path.count(".") >= 1 and not path.endswith("[]") and not path.endswith("{}"):
            missing.append(path)
        if "type" not in node and not node.get("x-kubernetes-int-or-string") and not node.get("x-kubernetes-preserve-unknown-fields"):
            untyped.append(path)
    assert not missing, f"fields without a description (kubectl explain): {missing}"
    assert not untyped, f"non-structural nodes: {untyped}"


# JSONSchemaProps keys the apiserver knows (a stray key, e.g. from a comma in a YAML flow
# mapping, is refused by the apiserver at apply time).
SCHEMA_KEYS = {
    "type", "description", "properties", "items", "additionalProperties", "required", "default", "enum",
    "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "uniqueItems", "pattern", "nullable", "minProperties", "maxProperties",
    "oneOf", "anyOf", "allOf", "not", "multipleOf", "example", "title",
    "x-kubernetes-validations", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-embedded-resource",
}


@pytest.mark.parametrize("name", CRDS)
def test_schema_nodes_have_only_known_keys(name: str) -> None:
    schema = load_crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    stray = {path: sorted(set(node) - SCHEMA_KEYS) for path, node in walk(schema) if set(node) - SCHEMA_KEYS}
    assert not stray, stray


@pytest.mark.parametrize("name", CRDS)
def test_cel_rules_have_messages(name: str) -> None:
    schema = load_crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r for _, node in walk(schema) for r in node.get("x-kubernetes-validations") or ()]
    assert rules
    for rule in rules:
        assert rule.get("message"), rule


def test_spec_defaults_reach_nested_fields() -> None:
    from ftj_helpers import MINIMAL_SPEC, defaulted_spec
    spec = defaulted_spec(MINIMAL_SPEC)
    assert spec["lora"] == {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.05,
                            "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert spec["resources"]["gpus"] == 1
    assert spec["evaluation"]["gate"]["baselineMargin"] == 0
    assert spec["scheduling"]["backoffLimit"] == 2


def _rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations") or ()]


def test_fractional_minimum_is_enforced_for_integer_values() -> None:
    """The apiserver checks an integer value against ``minimum`` truncated to an integer, so
    ``epochs: 0`` passes ``minimum: 0.01``; every positive fractional minimum needs a CEL rule."""
    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found = []
    for path, node in walk(schema):
        low = node.get("minimum")
        if node.get("type") == "number" and low is not None and low > 0 and low != int(low):
            found.append(path)
            assert f"self >= {low}" in _rules(node), f"{path}: minimum {low} without a CEL rule"
    assert {".spec.training.epochs", ".spec.dataPrep.evalFraction"} <= set(found)


def test_every_uri_rejects_dot_dot_segments() -> None:
    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    uris = [(p, n) for p, n in walk(schema["properties"]["spec"], ".spec")
            if n.get("type") == "string" and (p.endswith(".uri") or p.endswith("Uri") or p.lower().endswith("path"))]
    assert {p for p, _ in uris} == {".spec.baseModel.uri", ".spec.dataset.uri", ".spec.dataset.evalUri", ".spec.output.uri",
                                  ".spec.hub.cacheUri"}
    for path, node in uris:
        assert "!self.matches('(^|/)[.][.](/|$)')" in _rules(node), path


@pytest.mark.parametrize("uri,ok", [
    ("pvc://data/../../etc/passwd", False), ("/../etc", False), ("s3://bucket/runs/..", False),
    ("hf://datasets/../x", False), ("pvc://data/a..b/c", True), ("pvc://data/..hidden", True),
    ("s3://bucket/runs/v1.2/", True),
])
def test_dot_dot_rule_matches_segments_only(uri: str, ok: bool) -> None:
    """The rule's regex, run here with Python's re (RE2 and re agree on this pattern)."""
    import re
    assert (re.search("(^|/)[.][.](/|$)", uri) is None) == ok


def test_status_children_schema_keeps_every_child_the_operator_lists() -> None:
    """The apiserver prunes status keys the schema lacks: every child name the operator writes
    must be a property of status.children (the summary reader was pruned once)."""
    import datetime as dt

    from ftj_helpers import MINIMAL_SPEC, defaulted_spec
    from k8s_objects import job
    from tuneforge.finetune.spec import parse_spec
    from tuneforge.finetune.status import Observed, Revision, compute_status

    done = Observed(validate_job=job("v", complete=True), train_job=job("t", complete=True), summary_job=job("s"))
    children = {"configMap": "c", "validateJob": "v", "trainJob": "t"}
    st = compute_status(parse_spec(defaulted_spec(MINIMAL_SPEC)), 1, {}, Revision(1, "h", True, ()), done,
                        dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), children, "x", summary_job="s")
    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    listed = set(schema["properties"]["status"]["properties"]["children"]["properties"])
    assert set(st["children"]) == {"configMap", "validateJob", "trainJob", "summaryJob"}
    assert set(st["children"]) <= listed


def _cel_string_rule(rule: str, value: str) -> bool:
    """Evaluate one of the CRD's CEL rules on a string ``self`` with cel-python (Google's CEL
    in Python; the apiserver's cel-go agrees with it on these standard string functions)."""
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(rule))
    return bool(program.evaluate({"self": celpy.celtypes.StringType(value)}))


@pytest.mark.parametrize("uri,message", [
    ("configmap://intents/train.csv", None),
    ("configmap://intents.v2/train-rows_1.jsonl", None),
    ("configmap://a/b", None),
    ("configmap://intents", "configmap://<name>/<key>"),
    ("configmap://intents/", "configmap://<name>/<key>"),
    ("configmap://intents/rows/train.csv", "configmap://<name>/<key>"),
    ("configmap:///train.csv", "configmap://<name>/<key>"),
    ("configmap://Intents/train.csv", "DNS-1123"),
    ("configmap://-intents/train.csv", "DNS-1123"),
    ("configmap://intents_small/train.csv", "DNS-1123"),
    ("configmap://intents..v2/train.csv", "DNS-1123"),
    ("configmap://" + "a" * 254 + "/train.csv", "DNS-1123"),
    ("configmap://intents/train data.csv", "valid key"),
    ("configmap://intents/.", "valid key"),
    ("configmap://intents/" + "k" * 254, "valid key"),
    ("configmap://intents/..", ".. path segment"),
])
def test_config_map_uri_rules_name_what_is_wrong(uri: str, message: str | None) -> None:
    """dataset.uri and evalUri admit configmap://<name>/<key> with a DNS-1123 name and a valid
    ConfigMap key; each mistake gets the rule whose message says what is wrong."""
    import re
    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    dataset = schema["properties"]["spec"]["properties"]["dataset"]["properties"]
    for field in ("uri", "evalUri"):
        node = dataset[field]
        assert re.search(node["pattern"], uri), f"{field}: the pattern must admit the scheme"
        failed = [r["message"] for r in node["x-kubernetes-validations"] if not _cel_string_rule(r["rule"], uri)]
        if message is None:
            assert failed == [], (field, failed)
        else:
            assert failed and any(message in m for m in failed), (field, failed)
    # Other URIs never trip the ConfigMap rules.
    for other in ("pvc://data/train.csv", "s3://bucket/k.csv", "/data/x.jsonl"):
        assert all(_cel_string_rule(r["rule"], other) for r in dataset["uri"]["x-kubernetes-validations"])


def test_config_map_sources_only_for_data() -> None:
    """A model or an output in a ConfigMap makes no sense (1 MiB, read-only): those patterns refuse it."""
    import re
    spec = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert not re.search(spec["properties"]["baseModel"]["properties"]["uri"]["pattern"], "configmap://m/model.bin")
    assert not re.search(spec["properties"]["output"]["properties"]["uri"]["pattern"], "configmap://out/x")


@pytest.mark.parametrize("baseline,message", [
    ({"type": "openai", "url": "https://api.example.com/v1", "model": "m", "inputTokenPrice": 2.5, "outputTokenPrice": 10}, None),
    ({"type": "openai", "url": "https://api.example.com/v1", "model": "m"}, None),
    ({"type": "tfidf-logreg"}, None),
    ({"type": "tfidf-logreg", "inputTokenPrice": 2.5}, "apply to the openai baseline only"),
    ({"type": "zero-shot", "outputTokenPrice": 10}, "apply to the openai baseline only"),
    ({"type": "openai", "inputTokenPrice": 2.5}, "needs url and model"),
])
def test_baseline_rules_keep_endpoint_fields_on_the_openai_baseline(baseline: dict[str, Any], message: str | None) -> None:
    """The token prices (the model card's cost per 1,000 of the endpoint's predictions) are the
    openai baseline's, like its url and model; another baseline with one is refused by name."""
    import celpy

    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    items = schema["properties"]["spec"]["properties"]["evaluation"]["properties"]["baselines"]["items"]
    assert {"inputTokenPrice", "outputTokenPrice"} <= set(items["properties"])
    env = celpy.Environment()
    failed = [r["message"] for r in items["x-kubernetes-validations"]
              if not env.program(env.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(baseline)})]
    if message is None:
        assert failed == []
    else:
        assert len(failed) == 1 and message in failed[0] and ("inputTokenPrice" in failed[0] or "url" in failed[0]), failed
