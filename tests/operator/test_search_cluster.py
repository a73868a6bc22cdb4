"""spec.search against the real local cluster: the apiserver's CEL on a search, and a search of
three trials run by the stand-in trainer on the real node — one trial fails, the operator is
killed (SIGKILL) mid-search and a second one resumes without running a finished trial again (the
trial that completed meanwhile, its pod deleted, is read from its summary.json), the winner
follows the one-standard-error rule and is trained again as the revision's Job."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from operator_helpers import OperatorProcess, ftj_manifest, pvc_manifest
from tuneforge_localcluster.testing import Cluster, wait_for

pytestmark = pytest.mark.cluster


def _status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("finetunejob", name, ns).get("status") or {}


def test_search_cel_rules_through_the_apiserver(cluster: Cluster, crds: None) -> None:
    ok = ftj_manifest("s", search={"space": {"head": ["lm", "classifier"], "maxSteps": [20, 40]}, "parallelism": 2},
                      evaluation={"baselines": [{"type": "tfidf-logreg"}]})
    out = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-o", "json", "-f", "-", input=json.dumps(ok))
    assert json.loads(out.stdout)["spec"]["search"]["maxTrials"] == 8
    bad = [
        (ftj_manifest("s", search={"space": {"learningRate": [1e-4, 5e-4, 1e-3], "loraRank": [8, 16]}, "maxTrials": 4}),
         "search.strategy grid runs every combination of space (the product of the lists' sizes): that must be at most search.maxTrials"),
        (ftj_manifest("s", search={"space": {"head": ["lm", "classifier"]}}, dataPrep={"validationFraction": 0}),
         "search trials are scored on the validation rows"),
        (ftj_manifest("s", search={"space": {}}), "search.space needs at least one of"),
        (ftj_manifest("s", search={"space": {"maxSteps": [5, 5]}}), "spec.search.space.maxSteps[1]: Duplicate value"),
    ]
    for manifest, expected in bad:
        res = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(manifest), check=False)
        assert res.returncode != 0 and expected in res.stderr, res.stderr


@pytest.mark.exclusive  # three stand-in trials on the real node within 300 s: starved beside a training run
def test_search_with_a_failed_trial_and_an_operator_restart(cluster: Cluster, namespace: str, run_operator: Any,
                                                            standin_image: str) -> None:
    first: OperatorProcess = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image)
    cluster.apply(pvc_manifest(), namespace)
    # Trials of 2, 4 and 8 steps (one second each); the 4-step one fails. 40 validation rows:
    # 0.93 (8 steps) is the best, 0.90 (2 steps) is within one SE (0.040) and cheaper: it wins.
    source = "/standin/steps=config/step_s=1/eval_s=1/fail_max_steps=4/accuracy_2=0.90/accuracy_8=0.93/train.jsonl"
    cluster.apply(ftj_manifest("srch", dataset={"uri": source},
                               search={"space": {"maxSteps": [2, 4, 8]}, "parallelism": 2},
                               evaluation={"baselines": [{"type": "tfidf-logreg"}], "gate": {"minAccuracy": 0.85}}),
                  namespace)

    def one_done_and_last_started() -> bool:
        first.check_alive()
        done = int((_status(cluster, namespace, "srch").get("search") or {}).get("done") or 0)
        return done >= 1 and any(j["metadata"]["name"] == "srch-trial-1-2" for j in cluster.list("jobs", namespace))
    wait_for("a first trial ended and the last started", one_done_and_last_started, 180, 0.5, first.log)
    before = {j["metadata"]["name"]: j["metadata"]["uid"] for j in cluster.list("jobs", namespace)}
    finished = [t["job"] for t in _status(cluster, namespace, "srch")["search"]["trials"] if t["phase"] in ("Succeeded", "Failed")]
    first.kill(signal.SIGKILL)
    # While no operator runs, the last trial completes and its pod goes (as PodGC would take it):
    # its result must come from the summary.json it wrote beside its artifacts.
    wait_for("the last trial completed", lambda: any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (cluster.get("job", "srch-trial-1-2", namespace).get("status") or {}).get("conditions") or ()), 120, 0.5)
    cluster.kubectl("delete", "pods", "-n", namespace, "-l", "job-name=srch-trial-1-2", "--wait=true")

    second: OperatorProcess = run_operator(TUNEFORGE_TRAINER_IMAGE=standin_image)

    def ended() -> bool:
        second.check_alive()
        return _status(cluster, namespace, "srch").get("phase") in ("Succeeded", "Failed")
    wait_for("srch finished", ended, 300, 0.5, lambda: json.dumps(_status(cluster, namespace, "srch"))[:3000] + second.log())
    st = _status(cluster, namespace, "srch")
    assert st["phase"] == "Succeeded", st
    search = st["search"]
    table = [(t["params"]["maxSteps"], t["phase"], t.get("validationAccuracy")) for t in search["trials"]]
    assert table == [(2, "Succeeded", 0.90), (4, "Failed", None), (8, "Succeeded", 0.93)], table
    assert "CUDA out of memory" in search["trials"][1]["message"]
    assert (search["done"], search["total"], search["failed"], search["display"]) == (3, 3, 1, "3/3")
    assert search["winner"]["index"] == 0 and search["winner"]["params"] == {"maxSteps": 2}
    assert all(t["gpuSeconds"] > 0 for t in search["trials"])
    # The winner, trained again and scored once on the test rows, is the job's result.
    assert st["evaluation"]["accuracy"] == 0.90 and st["gate"]["outcome"] == "Passed"
    assert "max_steps: 2" in cluster.get("configmap", "srch-config-1-winner", namespace)["data"]["config.yaml"]
    trial_cfg = cluster.get("configmap", "srch-trial-1-2", namespace)["data"]["config.yaml"]
    assert "split: validation" in trial_cfg and "max_steps: 8" in trial_cfg
    # No Job made twice: the finished trials' Jobs are the ones from before the restart.
    jobs = {j["metadata"]["name"]: j["metadata"]["uid"] for j in cluster.list("jobs", namespace)}
    assert sorted(jobs) == ["srch-train-1", "srch-trial-1-0", "srch-trial-1-1", "srch-trial-1-2",
                            "srch-trial-1-2-summary", "srch-validate-1"]
    assert search["trials"][2]["summaryJob"] == "srch-trial-1-2-summary"
    assert all(jobs[n] == before[n] for n in finished), (finished, before, jobs)
    row = cluster.kubectl("get", "ftj", "srch", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:6] == ["Succeeded", "0.9", "Passed", "100%", "3/3"], row
