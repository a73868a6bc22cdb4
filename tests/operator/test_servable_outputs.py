"""Any FineTuneJob output can be served (review MS-3, MS-5; issue 17 deliverable 4).

The FineTuneJob's status names its outputs in the user's terms (``pvc://claim/path``,
``s3://...``), never the trainer pod's mount paths; a history entry keeps what serving a
superseded revision needs (adapter, base with digest, the scored held-out rows); and a
ModelServe that still cannot serve or gate what it resolves to says why in its status before any
pod starts. These tests cross the two rooms on purpose: they feed the FineTuneJob status the
operator writes to the ModelServe resolver and builders, as the cluster does.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec, load_crd
from k8s_objects import finished, job, pod, summary
from tuneforge.finetune.spec import parse_spec as parse_ftj_spec
from tuneforge.finetune.status import Observed, Revision, compute_status, decide_revision
from tuneforge.finetune.trainer_config import artifact_uri, render_trainer_config, resolve_uri
from tuneforge.serve.builders import GatePod, ServeContext, build_color_deployment, build_gate_job
from tuneforge.serve.plan import Observed as ServeObserved, Requests, Scale, plan
from tuneforge.serve.source import resolve
from tuneforge.serve.spec import parse_spec as parse_serve_spec

NOW = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
NS, NAME, UID = "team-a", "intents", "uid-1"
DIGEST, BASE_DIGEST = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
GATE = {"gate": {"minAccuracy": 0.8}}
CTX = ServeContext(NAME, NS, "reg/server:1")


def _ftj_spec(**overrides: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(overrides)
    return parse_ftj_spec(defaulted_spec(raw))


PVC_SPEC = _ftj_spec(baseModel={"uri": "pvc://models/smollm2"},
                     dataset={"uri": "configmap://small/train.csv", "textColumn": "text", "labelColumn": "category"},
                     output={"uri": "pvc://artifacts/runs"})


def _trainer_summary(spec: Any, revision: int) -> str:
    """The summary the trainer writes for this revision: it joins its outputs onto the
    ``output.dir`` it was given and names its sources as its config names them (the trainer's
    ``join_uri`` / ``AdapterVersion`` / ``SourceRef``, train.py)."""
    cfg = render_trainer_config(spec, NS, NAME, UID, revision)
    out = cfg["output"]["dir"]
    return summary(
        artifacts={"adapter": f"{out}/adapter", "predictions": f"{out}/predictions.jsonl", "metrics": f"{out}/metrics.json",
                   "model_card": f"{out}/README.md"},
        adapter={"uri": f"{out}/adapter", "digest": DIGEST,
                 "base_model": {"uri": cfg["model"]["source"], "digest": BASE_DIGEST},
                 "dataset": {"uri": cfg["dataset"]["source"], "digest": "sha256:" + "ef" * 32}})


def _succeeded(spec: Any, revision: int = 1, history: tuple[Any, ...] = ()) -> dict[str, Any]:
    train = f"{NAME}-train-{revision}"
    observed = Observed(validate_job=job(f"{NAME}-validate-{revision}", complete=True), train_job=job(train, complete=True),
                        train_pods=[pod(train, phase="Succeeded", terminated=finished(0, _trainer_summary(spec, revision)))])
    return compute_status(spec, revision, {}, Revision(revision, f"h{revision}", True, history), observed, NOW,
                          {"trainJob": train}, artifact_uri(spec, NS, NAME, UID, revision))


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


# --- MS-3: the FineTuneJob's status speaks the user's URIs -----------------------------------

def test_status_names_a_pvc_run_in_pvc_terms_not_trainer_mount_paths() -> None:
    st = _succeeded(PVC_SPEC)
    run = f"pvc://artifacts/runs/{NS}/{NAME}/{UID}/r1"
    assert st["phase"] == "Succeeded"
    assert st["adapter"]["uri"] == f"{run}/adapter"
    assert st["adapter"]["baseModel"] == {"uri": "pvc://models/smollm2", "digest": BASE_DIGEST}
    assert st["adapter"]["dataset"]["uri"] == "configmap://small/train.csv"
    assert st["artifacts"] == {"output": run, "adapter": f"{run}/adapter", "predictions": f"{run}/predictions.jsonl",
                               "metrics": f"{run}/metrics.json", "modelCard": f"{run}/README.md"}
    assert not [s for s in _strings(st) if s.startswith("/mnt/")], "a trainer mount path leaked into status"


@pytest.mark.parametrize("uri,want", [
    ("pvc://artifacts/runs/a/b", "pvc://artifacts/runs/a/b"),
    ("pvc://artifacts", "pvc://artifacts"),
    ("pvc://artifacts/", "pvc://artifacts"),
    ("configmap://small/train.csv", "configmap://small/train.csv"),
    ("s3://bucket/runs/x", "s3://bucket/runs/x"),
    ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "hf://HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("/models/in-image", "/models/in-image"),  # a path of the trainer image is no mount: kept
])
def test_user_uri_inverts_resolve_uri(uri: str, want: str) -> None:
    from tuneforge.finetune.trainer_config import user_uri
    assert user_uri(resolve_uri(uri)) == want
    assert user_uri(resolve_uri(uri) + "/adapter") == want.rstrip("/") + "/adapter"


def test_a_pvc_finetunejob_is_served_and_gated_from_its_pvc() -> None:
    """The review's driven case: the server pods and the gate pod mount the claims they read."""
    ms = parse_serve_spec({"adapter": {"fineTuneJob": NAME}, "rollout": GATE})
    r = resolve(ms, _succeeded(PVC_SPEC))
    assert r.version is not None, r.message
    dep = build_color_deployment(CTX, ms, "blue", r.version, 1)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"artifacts", "models"}
    gate = build_gate_job(CTX, ms, r.version, GatePod("reg/operator:1"))
    pod_spec = gate["spec"]["template"]["spec"]
    args = pod_spec["containers"][0]["command"]
    assert args[args.index("--rows-uri") + 1] == f"pvc://artifacts/runs/{NS}/{NAME}/{UID}/r1/predictions.jsonl"
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v} == {"artifacts"}


# --- the serve room refuses what it cannot serve, before any pod starts ----------------------

def _ftj_status(adapter_uri: str, base_uri: str, predictions: str | None = "s3://runs/x/r1/predictions.jsonl") -> dict[str, Any]:
    artifacts = {"output": "s3://runs/x/r1", **({"predictions": predictions} if predictions else {})}
    return {"phase": "Succeeded", "revision": 1, "gate": {"outcome": "Passed", "reasons": []}, "evaluation": {"accuracy": 0.9},
            "artifacts": artifacts,
            "adapter": {"uri": adapter_uri, "digest": DIGEST, "revision": 1, "baseModel": {"uri": base_uri, "digest": BASE_DIGEST}}}


def _first_pass(ms: Any, ftj_status: dict[str, Any]) -> Any:
    return plan(ms, 1, resolve(ms, ftj_status), ServeObserved({}, None, None, {}), {}, Requests(), NOW)


@pytest.mark.parametrize("adapter_uri,base_uri,override,field", [
    # a status written by an operator that reported the trainer's mount paths
    ("/mnt/pvc/artifacts/runs/x/r1/adapter", "s3://models/smollm2", None, "status.adapter.uri"),
    ("s3://runs/x/r1/adapter", "/mnt/pvc/models/smollm2", None, "spec.baseModel.uri"),
    # a hub base: nothing downloads from a hub when a server starts; it must be mirrored
    ("s3://runs/x/r1/adapter", "hf://HuggingFaceTB/SmolLM2-135M-Instruct", None, "spec.baseModel.uri"),
    ("hf://someone/adapter", "s3://models/smollm2", None, "status.adapter.uri"),
    # the override names where the mirrored base is, but the adapter is still unreachable
    ("/mnt/pvc/artifacts/runs/x/r1/adapter", "hf://o/m", "s3://models/smollm2", "status.adapter.uri"),
])
def test_a_version_the_servers_cannot_read_is_refused_before_any_pod(
        adapter_uri: str, base_uri: str, override: str | None, field: str) -> None:
    raw: dict[str, Any] = {"adapter": {"fineTuneJob": NAME}, "rollout": GATE}
    if override:
        raw["baseModel"] = {"uri": override}
    ms = parse_serve_spec(raw)
    r = resolve(ms, _ftj_status(adapter_uri, base_uri))
    assert r.version is None and r.reason == "NotServable", r
    assert field in r.message and (adapter_uri if field == "status.adapter.uri" else base_uri) in r.message
    p = _first_pass(ms, _ftj_status(adapter_uri, base_uri))
    assert not [a for a in p.actions if isinstance(a, Scale)], "a pod would start"
    assert (p.status["phase"], p.status["reason"]) == ("Failed", "NotServable")
    assert field in p.status["message"]


def test_a_mirrored_base_named_in_the_spec_makes_a_hub_lineage_servable() -> None:
    ms = parse_serve_spec({"adapter": {"fineTuneJob": NAME}, "baseModel": {"uri": "pvc://models/smollm2"}, "rollout": GATE})
    r = resolve(ms, _ftj_status("s3://runs/x/r1/adapter", "hf://HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert r.version is not None and r.version.base_uri == "pvc://models/smollm2"
    assert [type(a) for a in _first_pass(ms, _ftj_status("s3://runs/x/r1/adapter", "hf://o/m")).actions][:1] == [Scale]


# --- MS-5: a history revision keeps what serving and gating it need --------------------------

def test_a_superseded_revision_is_gated_on_its_own_rows() -> None:
    r1 = _succeeded(PVC_SPEC)
    # The user edits the spec: r2 starts, r1 moves to the history.
    rev = decide_revision("h2", 2, {**r1, "observedGeneration": 1})
    entry = rev.history[-1]
    rows = f"pvc://artifacts/runs/{NS}/{NAME}/{UID}/r1/predictions.jsonl"
    assert entry["evalRowsUri"] == rows
    assert entry["baseModel"] == {"uri": "pvc://models/smollm2", "digest": BASE_DIGEST}
    item = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["history"]["items"]
    assert set(entry) <= set(item["properties"]), "the apiserver would prune it"
    running = compute_status(PVC_SPEC, 2, r1, rev, Observed(validate_job=job(f"{NAME}-validate-2")), NOW,
                             {"trainJob": f"{NAME}-train-2"}, artifact_uri(PVC_SPEC, NS, NAME, UID, 2))
    # A ModelServe created now (it never served r1) resolves r1 from the history alone.
    ms = parse_serve_spec({"adapter": {"fineTuneJob": NAME}, "rollout": GATE})
    r = resolve(ms, running)
    assert r.version is not None and r.version.lineage is not None and r.version.lineage.revision == 1, r.message
    assert r.version.eval_rows_uri == rows and r.version.base_digest == BASE_DIGEST
    args = build_gate_job(CTX, ms, r.version, GatePod("reg/operator:1"))["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args[args.index("--rows-uri") + 1] == rows


def _history_only(entry_extra: dict[str, Any]) -> dict[str, Any]:
    """r2 training; r1 passed and sits in the history as an older operator wrote it (no rows)."""
    return {"phase": "Running", "revision": 2, "gate": {"outcome": "Pending", "reasons": []}, "artifacts": {"output": "s3://runs/x/r2"},
            "history": [{"revision": 1, "specHash": "h1", "phase": "Succeeded", "gate": "Passed", "accuracy": 0.9,
                         "adapterDigest": DIGEST, "adapterUri": "s3://runs/x/r1/adapter",
                         "baseModel": {"uri": "s3://models/smollm2", "digest": BASE_DIGEST}, **entry_extra}]}


def test_a_version_without_gate_rows_says_so_before_any_pod() -> None:
    ms = parse_serve_spec({"adapter": {"fineTuneJob": NAME}, "rollout": GATE})
    r = resolve(ms, _history_only({}))
    assert r.version is None and r.reason == "NoGateRows", r
    assert "spec.rollout.gate.datasetUri" in r.message
    p = _first_pass(ms, _history_only({}))
    assert not [a for a in p.actions if isinstance(a, Scale)]
    assert (p.status["phase"], p.status["reason"]) == ("Failed", "NoGateRows")
    # Rows named in the spec, rows in the entry, or no gate at all: it is served.
    for spec_raw, extra in (({"adapter": {"fineTuneJob": NAME}, "rollout": {"gate": {**GATE["gate"], "datasetUri": "s3://rows/held-out.jsonl"}}}, {}),
                            ({"adapter": {"fineTuneJob": NAME}, "rollout": GATE}, {"evalRowsUri": "s3://runs/x/r1/predictions.jsonl"}),
                            ({"adapter": {"fineTuneJob": NAME}}, {})):
        r = resolve(parse_serve_spec(spec_raw), _history_only(extra))
        assert r.version is not None and r.version.lineage is not None and r.version.lineage.revision == 1, r.message


def test_gate_rows_only_a_gate_pod_can_read_are_refused() -> None:
    ms = parse_serve_spec({"adapter": {"fineTuneJob": NAME}, "rollout": GATE})
    r = resolve(ms, _ftj_status("s3://runs/x/r1/adapter", "s3://models/smollm2",
                                predictions="/mnt/pvc/artifacts/runs/x/r1/predictions.jsonl"))
    assert r.version is None and r.reason == "NoGateRows" and "/mnt/pvc/artifacts/runs/x/r1/predictions.jsonl" in r.message
