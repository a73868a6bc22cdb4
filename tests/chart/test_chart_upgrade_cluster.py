"""``helm upgrade`` to a new chart version (a new operator image tag, a FineTuneJob CRD with a new
defaulted field, made from a copy of the chart) while a FineTuneJob is Running and a ModelServe is
Healthy with real stand-in server pods (tests/images/server-standin) on the real node: no
retraining (the same Job), no rollout (the same Deployments and Services at the same generation, no
new gate Job), not one dropped request in a bounded loop through the active Service, and the
operator's rolling update hands the Lease to a new pod. ``helm uninstall`` keeps the CRDs, the
user's objects and their children; installing again adopts the CRDs and touches nothing.

Its own module: the cluster-wide release of test_ha_cluster.py would otherwise still be watching
every namespace while this runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from test_ha_cluster import (CHART, OUTPUT, ROOT, Release, _ftj_done, _ftj_running, _serving, _source, _status, _ts,
                             _wait, chart_values, ftj_manifests, ms_manifest)
from tuneforge_localcluster.testing import Cluster, pod_security_labels, wait_for

pytestmark = pytest.mark.exclusive  # see pyproject.toml

NEW_FIELD = "upgradeCheck"


def upgraded_chart(dest: Path, version: str) -> Path:
    """A copy of the chart at ``version`` whose FineTuneJob CRD has one more defaulted field
    (spec.upgradeCheck, default "v2"), as a new chart release adding a field would."""
    chart = dest / "tuneforge"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = meta["appVersion"] = version
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    (path,) = [p for p in (chart / "files" / "crds").glob("*.yaml") if "finetunejobs" in p.read_text()[:400]]
    crd = yaml.safe_load(path.read_text())
    for v in crd["spec"]["versions"]:
        v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][NEW_FIELD] = {
            "type": "string", "default": "v2", "description": "A field the upgrade test adds."}
    path.write_text(yaml.safe_dump(crd))
    return chart


def retag(ref: str, tag: str) -> str:
    """The same image under a new tag in the local registry (a new operator release's image)."""
    new = f"{ref.rsplit(':', 1)[0]}:{tag}"
    for cmd in (["buildah", "tag", ref, new],
                ["buildah", "push", "--tls-verify=false", "--disable-compression", new, f"docker://{new}"]):
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return new


class RequestLoop(threading.Thread):
    """GETs through a Service's ClusterIP every 50 ms until stopped (at most ``limit``), counting
    answers and failures; a failure is any error or a non-200 answer."""

    def __init__(self, url: str, limit: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.ok + len(self.failed) < self.limit:
            try:
                with urllib.request.urlopen(self.url, timeout=3) as resp:
                    resp.read()
                    self.ok += 1
            except OSError as err:  # URLError, HTTPError, timeouts
                self.failed.append(f"{time.strftime('%H:%M:%S')} {err}")
            self.stop.wait(0.05)


def _uids(c: Cluster, ns: str) -> dict[str, tuple[str, int]]:
    """uid and generation of every Job, Deployment and Service in ``ns``."""
    return {f'{o["kind"]}/{o["metadata"]["name"]}': (o["metadata"]["uid"], o["metadata"].get("generation", 0))
            for o in c.list("jobs,deployments,services", ns)}


def _stable(now: dict[str, tuple[str, int]], before: dict[str, tuple[str, int]]) -> bool:
    """Every Job, Deployment and Service is the one that was there (same uid and generation),
    except that a finished gate Job may have been cleaned up; no new gate Job (no rollout began)."""
    def gates(d: dict[str, tuple[str, int]]) -> set[str]:
        return {k for k in d if k.startswith("Job/") and "-gate-" in k}
    return ({k: v for k, v in now.items() if k not in gates(now)} == {k: v for k, v in before.items() if k not in gates(before)}
            and gates(now) <= gates(before))


@pytest.mark.timeout(900)
def test_helm_upgrade_restarts_nothing_and_reinstall_adopts(cluster: Cluster, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    c = cluster
    name = f"up-{uuid.uuid4().hex[:5]}"
    ns = c.new_namespace("t-ha-upgrade", pod_security_labels("restricted"))
    watched = c.new_namespace("t-ha-upgrade-work", pod_security_labels("restricted"))
    request.addfinalizer(lambda: [c.delete_namespace(n) for n in (ns, watched)])
    server = c.image(ROOT / "tests" / "images" / "server-standin", "server-standin")
    values = chart_values(c, [watched], gate_delay="2s", server=server)
    rel = Release(c, name, ns, watched, "namespaced", values)
    vfile = tmp_path / "values.json"
    vfile.write_text(json.dumps(values))
    common = ["--namespace", ns, "--wait", "--timeout", "5m"]
    c.helm("install", name, str(CHART), "-f", str(vfile), *common, "--take-ownership", "--force-conflicts")
    try:
        wait_for("2 Ready operator pods", rel.ready_pods, 120, 1)
        c.apply(ms_manifest("upgrade-serve", 1, real_node=True), watched)
        _wait(rel, "the ModelServe Healthy on blue", lambda: _serving(_status(rel, "modelserve", "upgrade-serve"), "blue", 1), 240)
        c.apply(ftj_manifests("upgrade-run", 90), watched)
        before = _wait(rel, "the FineTuneJob Running", lambda: _ftj_running(rel, "upgrade-run", 2))
        children = _uids(c, watched)
        assert "Job/upgrade-run-train-1" in children and "Deployment/upgrade-serve-blue" in children, children
        old_pods = {p["metadata"]["name"] for p in rel.pods()}
        transitions = c.get("lease", rel.fullname, ns)["spec"].get("leaseTransitions", 0)

        # A new chart version: a new operator image tag and a CRD with a new defaulted field.
        values["images"]["operator"]["tag"] += "-next"
        retag(f'{values["images"]["operator"]["repository"]}:{values["images"]["operator"]["tag"][:-5]}',
              values["images"]["operator"]["tag"])
        vfile.write_text(json.dumps(values))
        chart = upgraded_chart(tmp_path, "0.2.0")
        ip = c.get("service", "upgrade-serve", watched)["spec"]["clusterIP"]
        loop = RequestLoop(f"http://{ip}:8000/v1/models")
        loop.start()
        upgrade_started = time.monotonic()
        try:
            time.sleep(2)
            # --force-conflicts: on the shared cluster other tests apply crds/ with kubectl between runs.
            c.helm("upgrade", name, str(chart), "-f", str(vfile), *common, "--force-conflicts")
            new = wait_for("2 Ready operator pods of the new version", lambda: (pods := rel.ready_pods()) and all(
                p["spec"]["containers"][0]["image"].endswith("-next") for p in pods) and pods, 180, 1, rel.logs)
            wait_for("a new pod to hold the Lease", lambda: rel.leader_pod()["metadata"]["name"] not in old_pods, 60, 0.5)
            time.sleep(5)  # the new leader has reconciled both objects by now
        finally:
            loop.stop.set()
            loop.join(10)
        upgrade_s = time.monotonic() - upgrade_started
        lease = c.get("lease", rel.fullname, ns)["spec"]
        assert lease["leaseTransitions"] > transitions and all(p["metadata"]["name"] not in old_pods for p in new)

        # Nothing restarted: the same Job (no retraining), the same Deployments and Services at the
        # same generation (no rollout), not one request dropped, progress still counting.
        assert loop.failed == [] and loop.ok > 100, (loop.ok, loop.failed[:5])
        assert _stable(_uids(c, watched), children), (children, _uids(c, watched))
        st = _status(rel, "modelserve", "upgrade-serve")
        assert _serving(st, "blue", 1) and st.get("previewColor") in (None, "", "blue"), st
        ftj = c.get("finetunejob", "upgrade-run", watched)
        assert ftj["spec"][NEW_FIELD] == "v2"  # the new CRD's default, on an object made before it
        assert _wait(rel, "the FineTuneJob to end", lambda: _ftj_done(rel, "upgrade-run"), 300) == "Succeeded"
        pods = c.list("pods", watched, "tuneforge.dev/finetunejob=upgrade-run,tuneforge.dev/role=train")
        assert len(pods) == 1 and _uids(c, watched)["Job/upgrade-run-train-1"] == children["Job/upgrade-run-train-1"]
        (listed,) = json.loads(c.helm("list", "--namespace", ns, "-o", "json").stdout)
        assert listed["chart"] == "tuneforge-0.2.0" and listed["revision"] in (2, "2"), listed
        result = {"requests_ok": loop.ok, "requests_failed": len(loop.failed), "upgrade_window_s": round(upgrade_s, 1),
                  "ftj_step_before": before["progress"]["step"], "lease_transitions": lease["leaseTransitions"]}
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "ha-upgrade.json").write_text(json.dumps(result, indent=1))
        print("helm upgrade:", result)
    except BaseException:
        c.helm("uninstall", name, "--namespace", ns, "--wait", check=False)
        raise

    # uninstall: CRDs, the user's objects and their children stay.
    kept = _uids(c, watched)
    out = c.helm("uninstall", name, "--namespace", ns, "--wait", "--timeout", "3m")
    assert "kept due to the resource policy" in out.stdout + out.stderr
    wait_for("the operator pods to go", lambda: rel.pods() == [], 120, 1)
    for crd in ("finetunejobs.tuneforge.dev", "modelserves.tuneforge.dev"):
        assert c.get("crd", crd)["metadata"]["annotations"]["meta.helm.sh/release-name"] == name
    assert _stable(_uids(c, watched), kept)
    assert _ftj_done(rel, "upgrade-run") == "Succeeded" and _serving(_status(rel, "modelserve", "upgrade-serve"), "blue", 1)

    # reinstall (the original chart): it adopts the kept CRDs; the operator takes the objects up
    # again without touching what exists.
    c.helm("install", name, str(CHART), "-f", str(vfile), *common)
    try:
        wait_for("2 Ready operator pods", rel.ready_pods, 120, 1)
        # The Lease outlived the release (Helm never made it) and names an old pod until a new one takes it.
        pod = wait_for("a new pod to lead", lambda: next((p for p in rel.pods()
                                                         if rel.holder().startswith(p["metadata"]["name"] + "_")), None), 60, 0.5)
        acquired = _ts(c.get("lease", rel.fullname, ns)["spec"]["acquireTime"])
        ip = pod["status"]["podIP"]
        wait_for("the new leader to list the ModelServes", lambda: any(
            _source(e) == ip and (e.get("objectRef") or {}).get("resource") == "modelserves"
            and _ts(e["requestReceivedTimestamp"]) >= acquired for e in rel.events()), 60, 1)
        time.sleep(5)
        assert _stable(_uids(c, watched), kept)
        assert _ftj_done(rel, "upgrade-run") == "Succeeded" and _serving(_status(rel, "modelserve", "upgrade-serve"), "blue", 1)
        meta = c.get("crd", "finetunejobs.tuneforge.dev")["metadata"]
        assert meta["labels"]["helm.sh/chart"] == "tuneforge-0.1.0" and meta["annotations"]["helm.sh/resource-policy"] == "keep"
    finally:
        c.helm("uninstall", name, "--namespace", ns, "--wait", "--timeout", "3m", check=False)
