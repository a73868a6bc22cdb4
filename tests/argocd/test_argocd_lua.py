"""The Argo CD customizations (charts/tuneforge/files/argocd/<group>/<Kind>/) run as Argo CD's
own tests run them (util/lua/health_test.go, custom_actions_test.go), on a real Lua 5.1 with
Argo CD's sandbox, over the objects hack/capture_argocd_testdata.py captured from the local
cluster in every phase."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from argocd_lua import CUSTOMIZATIONS, HEALTH_CODES, ArgoLua, ScriptError, apply_merge_patch, load_yaml, merge_patch

KINDS = sorted(p.parent for p in CUSTOMIZATIONS.glob("*/*/health.lua"))
CAPTURED = "# Captured from the local cluster by hack/capture_argocd_testdata.py"
LUA = ArgoLua()


def _cases(name: str, key: str) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for kind in KINDS:
        for case in (load_yaml(kind / name) or {}).get(key) or ():
            out.append((kind, case))
    return out


HEALTH = _cases("health_test.yaml", "tests")
DISCOVERY = _cases("actions/action_test.yaml", "discoveryTests")
ACTIONS = _cases("actions/action_test.yaml", "actionTests")


def _id(case: tuple[Path, dict[str, Any]]) -> str:
    kind, c = case
    return f"{kind.name}/{c.get('action', '')}{'/' if 'action' in c else ''}{Path(c['inputPath']).stem}"


def test_layout_is_argo_cds() -> None:
    assert [k.relative_to(CUSTOMIZATIONS).as_posix() for k in KINDS] == ["tuneforge.dev/FineTuneJob", "tuneforge.dev/ModelServe"]
    for kind in KINDS:
        for f in ("health.lua", "health_test.yaml", "actions/discovery.lua", "actions/action_test.yaml"):
            assert (kind / f).is_file(), kind / f
        names = {p.parent.name for p in (kind / "actions").glob("*/action.lua")}
        tested = {c["action"] for k, c in ACTIONS if k == kind}
        assert names and names == tested, f"{kind.name}: actions {names}, tested {tested}"


def test_every_testdata_file_is_captured_and_used() -> None:
    for kind in KINDS:
        used = {(kind / c["inputPath"]).resolve() for k, c in HEALTH if k == kind}
        used |= {(kind / "actions" / c["inputPath"]).resolve() for k, c in DISCOVERY + ACTIONS if k == kind}
        used |= {(kind / "actions" / c["expectedOutputPath"]).resolve() for k, c in ACTIONS if k == kind}
        files = {p.resolve() for p in kind.glob("**/testdata/*.yaml")}
        assert files == used, f"unused {files - used}, missing {used - files}"
        for f in files:
            text = f.read_text()
            assert text.startswith(CAPTURED), f"{f}: not captured"
            meta = load_yaml(f)["metadata"]
            assert meta.get("creationTimestamp") and "managedFields" not in meta and "uid" not in meta, f


def test_every_health_status_of_each_kind_is_covered() -> None:
    for kind in KINDS:
        got = {c["healthStatus"]["status"] for k, c in HEALTH if k == kind}
        assert got == {"Healthy", "Progressing", "Degraded", "Suspended"}, (kind.name, got)


@pytest.mark.parametrize("case", HEALTH, ids=[_id(c) for c in HEALTH])
def test_health(case: tuple[Path, dict[str, Any]]) -> None:
    kind, c = case
    obj = load_yaml(kind / c["inputPath"])
    verdict = LUA.health(kind / "health.lua", obj)
    assert verdict == c["healthStatus"]
    st = obj.get("status") or {}
    stale = st and (st.get("observedGeneration") or 0) < obj["metadata"]["generation"] and all(
        (x.get("observedGeneration") or 0) < obj["metadata"]["generation"] for x in st.get("conditions") or ())
    if stale or not st:
        assert verdict["status"] == "Progressing" and "Waiting for the operator to observe" in verdict["message"]
    else:  # the reason is in the message
        assert st["reason"] in verdict["message"] and st["message"] in verdict["message"], verdict


@pytest.mark.parametrize("case", DISCOVERY, ids=[_id(c) for c in DISCOVERY])
def test_discovery(case: tuple[Path, dict[str, Any]]) -> None:
    kind, c = case
    got = LUA.discovery(kind / "actions" / "discovery.lua", load_yaml(kind / "actions" / c["inputPath"]))
    assert got == sorted(c["result"], key=lambda a: a["name"])


@pytest.mark.parametrize("case", ACTIONS, ids=[_id(c) for c in ACTIONS])
def test_action(case: tuple[Path, dict[str, Any]]) -> None:
    kind, c = case
    obj = load_yaml(kind / "actions" / c["inputPath"])
    out = LUA.action(kind / "actions" / c["action"] / "action.lua", copy.deepcopy(obj))
    assert out == load_yaml(kind / "actions" / c["expectedOutputPath"])
    # Argo CD sends the merge patch from the live object: only what the action means to change.
    patch = merge_patch(obj, out)
    assert set(patch) <= {"metadata", "spec"} and set(patch.get("metadata", {})) <= {"annotations"}, patch
    assert apply_merge_patch(obj, patch) == out


def _nothing_to_act_on(name: str, obj: dict[str, Any]) -> bool:
    """Disabled because there is nothing to act on (not merely unneeded, as a promote under
    autoPromotion or a suspend of a finished job, which the operator tolerates)."""
    st = obj.get("status") or {}
    return {"suspend": (obj.get("spec") or {}).get("suspend") is True,
            "resume": True, "promote": not st.get("preview"), "abort": True, "rollback": True, "retry": True}[name]


@pytest.mark.parametrize("case", DISCOVERY, ids=[_id(c) for c in DISCOVERY])
def test_disabled_actions_refuse_to_run(case: tuple[Path, dict[str, Any]]) -> None:
    """The CLI can run an action discovery disables: with nothing to act on, the script says so
    instead of writing a request the operator would ignore."""
    kind, c = case
    obj = load_yaml(kind / "actions" / c["inputPath"])
    for a in c["result"]:
        if a["disabled"] and _nothing_to_act_on(a["name"], obj):
            with pytest.raises(ScriptError) as e:
                LUA.action(kind / "actions" / a["name"] / "action.lua", copy.deepcopy(obj))
            assert "FineTuneJob" in str(e.value) or "status." in str(e.value) or "in flight" in str(e.value), e.value


def test_scripts_use_only_argo_cds_default_libraries(tmp_path: Path) -> None:
    """argocd-cm customizations run without useOpenLibs: string methods are not there."""
    obj = {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x", "generation": 1}, "spec": {},
           "status": {"phase": "Running", "reason": "Training", "message": "m", "observedGeneration": 1}}
    bad = tmp_path / "probe.lua"
    bad.write_text('return {status = "Healthy", message = obj.status.phase:lower()}')
    with pytest.raises(ScriptError, match="attempt to index"):
        LUA.health(bad, obj)
    bad.write_text('return {status = "Healthy", message = string.lower(obj.status.phase)}')
    with pytest.raises(ScriptError, match="global 'string'"):
        LUA.health(bad, obj)
    assert LUA.health(KINDS[0] / "health.lua", obj)["status"] in HEALTH_CODES
