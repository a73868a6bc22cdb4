"""Beyond one GPU, pure: the training Job's shape for 1x1, 1xN and MxN (nodes x GPUs per node),
the workers' headless Service, the gang's status, and the CRD rules for the strategy."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec, load_crd
from tuneforge.finetune.builders.job import build_trainer_job, build_workers_service
from tuneforge.finetune.builders.names import Owner, train_attempt
from tuneforge.finetune.plan import CreateTrainJob, DeleteJob, DeleteService, plan
from tuneforge.finetune.spec import parse_spec
from tuneforge.finetune.status import Observed, Revision, compute_status, derive_phase, pod_rank, workers
from tuneforge.settings import Settings

OWNER = Owner("intent", "team-a", "uid-7")
SETTINGS = Settings(trainer_image="reg/trainer:1")
NOW = dt.datetime(2026, 12, 5, tzinfo=dt.timezone.utc)
INDEX = "batch.kubernetes.io/job-completion-index"


def spec_of(nodes: int = 1, gpus: int = 1, **training: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw["resources"] = {"nodes": nodes, "gpus": gpus}
    if training:
        raw["training"] = training
    return parse_spec(defaulted_spec(raw))


# (nodes, gpus) -> command, Job shape, what the pods get
SHAPES = [
    pytest.param(1, 1, ["tuneforge-train", "train", "--config", "/etc/tuneforge/config.yaml"], None, id="1x1"),
    pytest.param(1, 0, ["tuneforge-train", "train", "--config", "/etc/tuneforge/config.yaml"], None, id="1x1-cpu"),
    pytest.param(1, 4, ["python3", "-m", "tuneforge_trainer.launch", "--nproc-per-node=4", "--shutdown-timeout=110", "--standalone",
                        "-m", "tuneforge_trainer", "train", "--config", "/etc/tuneforge/config.yaml"], None, id="1x4"),
    pytest.param(2, 8, ["python3", "-m", "tuneforge_trainer.launch", "--nproc-per-node=8", "--shutdown-timeout=110", "--nnodes=2",
                        "--master-addr=intent-train-3-0.intent-train-3", "--master-port=29500", "--rdzv-conf=timeout=86400",
                        "-m", "tuneforge_trainer", "train", "--config", "/etc/tuneforge/config.yaml"], 2, id="2x8"),
    pytest.param(4, 0, ["python3", "-m", "tuneforge_trainer.launch", "--nproc-per-node=1", "--shutdown-timeout=110", "--nnodes=4",
                        "--master-addr=intent-train-3-0.intent-train-3", "--master-port=29500", "--rdzv-conf=timeout=86400",
                        "-m", "tuneforge_trainer", "train", "--config", "/etc/tuneforge/config.yaml"], 4, id="4x1-cpu"),
]


@pytest.mark.parametrize("nodes,gpus,command,indexed", SHAPES)
def test_training_job_shape(nodes: int, gpus: int, command: list[str], indexed: int | None) -> None:
    spec = spec_of(nodes, gpus)
    job = build_trainer_job(OWNER, spec, 3, SETTINGS)
    js, pod = job["spec"], job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == command
    assert spec.world_size == nodes * max(gpus, 1)
    # GPUs are per pod, as resources.gpus says.
    if gpus:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    else:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    rules = js["podFailurePolicy"]["rules"]
    if indexed is None:
        assert "completionMode" not in js and "parallelism" not in js and "subdomain" not in pod
        assert "PET_NODE_RANK" not in env and "TUNEFORGE_THREADS" not in env and "ports" not in c
        assert js["backoffLimit"] == spec.backoff_limit
        # One pod: an eviction is retried from the checkpoint, not counted.
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
        return
    assert js["completionMode"] == "Indexed"
    assert js["completions"] == js["parallelism"] == indexed
    assert pod["subdomain"] == "intent-train-3"
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{INDEX}']"
    assert env["TUNEFORGE_THREADS"]["value"] == "2"  # the default CPU request, shared by the pod's processes
    assert c["ports"] == [{"name": "rendezvous", "containerPort": 29500}]
    # A gang trains whole or not at all: any failure or eviction of a worker fails the Job.
    assert js["backoffLimit"] == 0
    # The disruption rule first: an evicted worker's container also exits non-zero, and the first
    # matching rule is what the Job's Failed condition names (seen on kwok: exit 137 at index 0).
    assert rules == [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}},
    ]


@pytest.mark.parametrize("cpu,cores", [("500m", 1), ("1", 1), ("2", 2), ("2.5", 2), ("1500m", 1), ("16", 16), ("2Ki", None)])
def test_cpu_request_cores(cpu: str, cores: int | None) -> None:
    from tuneforge.finetune.builders.job import cpu_request_cores

    assert cpu_request_cores(cpu) == cores


def test_workers_service_is_headless_and_selects_only_this_revisions_workers() -> None:
    spec = spec_of(2, 8)
    svc = build_workers_service(OWNER, spec, 3)
    job = build_trainer_job(OWNER, spec, 3, SETTINGS)
    assert svc["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"] == "intent-train-3"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500}]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["selector"]["tuneforge.dev/revision"] == "3"
    assert svc["spec"]["selector"]["tuneforge.dev/role"] == "train"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-7"
    # The master address is pod 0's hostname under that subdomain.
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--master-addr=intent-train-3-0.intent-train-3" in command


def test_queue_name_suspends_the_whole_gang() -> None:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw["resources"] = {"nodes": 2, "gpus": 8}
    raw["scheduling"] = {"queueName": "gpu-queue"}
    job = build_trainer_job(OWNER, parse_spec(defaulted_spec(raw)), 1, SETTINGS)
    # Kueue admits the Job (all its pods, one podset of parallelism 2) as one workload.
    assert job["spec"]["suspend"] is True and job["spec"]["parallelism"] == 2
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


# --- status of a gang --------------------------------------------------------------------------

def _pod(rank: int, phase: str = "Running", node: str | None = "gpu-a", exit_code: int | None = None,
         message: str | None = None, scheduled: bool = True, finished: str = "2026-12-05T00:00:10Z") -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}} if phase == "Running" else {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "finishedAt": finished, "reason": "Error" if exit_code else "Completed",
                                **({"message": message} if message else {})}}
    cond = {"type": "PodScheduled", "status": "True" if scheduled else "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
    pod: dict[str, Any] = {
        "metadata": {"name": f"intent-train-1-{rank}-x", "annotations": {INDEX: str(rank)},
                     "labels": {"batch.kubernetes.io/job-name": "intent-train-1"},
                     "creationTimestamp": "2026-12-05T00:00:00Z"},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": [cond],
                   "containerStatuses": [{"name": "trainer", "state": state}]},
    }
    return pod


DONE = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
FAILED_JOB = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                          "message": "Container trainer for pod team-a/intent-train-1-1-x failed"}]}}
SUMMARY = json.dumps({"version": "tuneforge.dev/trainer-summary/v1", "status": "succeeded", "command": "train",
                      "accuracy": 0.93, "macro_f1": 0.92, "n_eval": 80})


def _observed(tjob: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Observed:
    return Observed(validate_job=DONE, train_job=tjob or {"status": {}}, train_pods=pods)


def test_pod_rank_reads_the_completion_index() -> None:
    assert pod_rank(_pod(3)) == 3
    assert pod_rank({"metadata": {"name": "one-pod"}}) == 0


def test_the_result_is_rank_zeros() -> None:
    # Rank 1 exits 0 with no message; rank 0 writes the summary.
    pods = [_pod(1, "Succeeded", exit_code=0), _pod(0, "Succeeded", exit_code=0, message=SUMMARY)]
    info = derive_phase(spec_of(2, 8), _observed(DONE, pods))
    assert info.phase == "Succeeded" and info.summary is not None and info.summary.accuracy == 0.93


def test_one_failed_worker_fails_the_gang_naming_it() -> None:
    pods = [_pod(0, "Failed", exit_code=137, finished="2026-12-05T00:00:20Z"),
            _pod(1, "Failed", node="gpu-b", exit_code=1, message="RuntimeError: NCCL timeout",
                 finished="2026-12-05T00:00:12Z")]
    info = derive_phase(spec_of(2, 8), _observed(FAILED_JOB, pods))
    assert info.phase == "Failed" and info.reason == "WorkerFailed"
    assert info.message.startswith("worker rank 1 of 16 (pod intent-train-1-1-x on node gpu-b) failed: exit code 1")
    assert "NCCL timeout" in info.message


def test_a_gang_is_queued_while_any_worker_waits_for_gpus() -> None:
    pods = [_pod(0), _pod(1, "Pending", node=None, scheduled=False)]
    info = derive_phase(spec_of(2, 8), _observed(None, pods))
    assert info.phase == "Queued" and info.reason == "WaitingForGPU"
    assert info.message.startswith("worker rank 1 of 16: 0/3 nodes are available")


def test_status_world_size_and_workers() -> None:
    spec = spec_of(2, 8)
    pods = [_pod(1, node="gpu-b"), _pod(0)]
    st = compute_status(spec, 1, {}, Revision(1, "h", True, ()), _observed(None, pods), NOW,
                        {"trainJob": "intent-train-1"}, "s3://b/runs")
    assert st["worldSize"] == 16 and st["phase"] == "Running"
    assert st["workers"] == [
        {"rank": 0, "pod": "intent-train-1-0-x", "phase": "Running", "node": "gpu-a"},
        {"rank": 1, "pod": "intent-train-1-1-x", "phase": "Running", "node": "gpu-b"},
    ]
    # GPU-seconds count every pod's GPUs.
    one = compute_status(spec_of(1, 4), 1, {}, Revision(1, "h", True, ()), _observed(None, [_pod(0)]), NOW,
                         {"trainJob": "intent-train-1"}, "s3://b/runs")
    assert one["worldSize"] == 4 and "workers" not in one


def test_workers_keep_the_newest_pod_per_rank() -> None:
    old, new = _pod(0, "Failed", exit_code=1), _pod(0)
    new["metadata"]["name"], new["metadata"]["creationTimestamp"] = "intent-train-1-0-y", "2026-12-05T00:01:00Z"
    assert [w["pod"] for w in workers([new, old])] == ["intent-train-1-0-y"]


def test_status_schema_has_the_gang_fields_and_printer_column() -> None:
    version = load_crd("finetunejob.yaml")["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"worldSize", "workers"} <= set(status)
    assert set(status["workers"]["items"]["properties"]) == {"rank", "pod", "node", "phase", "reason"}
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert cols["World"]["jsonPath"] == ".status.worldSize" and cols["World"]["priority"] == 1


# --- the CRD's rules for the strategy, evaluated with cel-python -------------------------------

def _spec_rules() -> list[dict[str, str]]:
    schema = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return [r for r in schema["properties"]["spec"]["x-kubernetes-validations"] if "strategy" in r["rule"]]


def _failed(raw: dict[str, Any]) -> list[str]:
    import celpy

    env = celpy.Environment()
    spec = celpy.json_to_cel(defaulted_spec(raw))
    return [r["fieldPath"] for r in _spec_rules() if not env.program(env.compile(r["rule"])).evaluate({"self": spec})]


@pytest.mark.parametrize("resources,training,quantization,failed", [
    ({"gpus": 2}, {"strategy": "fsdp"}, "4bit", []),
    ({"gpus": 8, "nodes": 2}, {"strategy": "fsdp", "precision": "bf16"}, "auto", []),
    ({"gpus": 8, "nodes": 2}, {}, "auto", []),
    ({"gpus": 0, "nodes": 2}, {"strategy": "ddp"}, "none", []),
    ({"gpus": 1}, {"strategy": "fsdp"}, "auto", [".training.strategy"]),
    ({"gpus": 0}, {"strategy": "fsdp"}, "none", [".training.strategy", ".training.strategy"]),
    ({"gpus": 0, "nodes": 2}, {"strategy": "fsdp"}, "none", [".training.strategy"]),
    ({"gpus": 2}, {"strategy": "fsdp"}, "8bit", [".training.strategy"]),
    ({"gpus": 2}, {"strategy": "fsdp", "precision": "fp16"}, "4bit", [".training.precision"]),
    ({"gpus": 2}, {"strategy": "fsdp", "precision": "fp16"}, "none", []),
])
def test_strategy_rules(resources: dict[str, Any], training: dict[str, Any], quantization: str, failed: list[str]) -> None:
    raw = copy.deepcopy(MINIMAL_SPEC) | {"resources": resources, "training": training, "quantization": quantization}
    assert _failed(raw) == failed


# --- a disrupted gang restarts whole from its checkpoint (DT-1) ---------------------------------

def _disrupted(pod: dict[str, Any], reason: str = "EvictionByEvictionAPI") -> dict[str, Any]:
    pod["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": reason,
                                        "message": "Eviction API: evicting"})
    return pod


def _gang_observed(pods: list[dict[str, Any]], restarts: int = 0, job: dict[str, Any] | None = None) -> Observed:
    return Observed(validate_job=DONE, train_job=job or FAILED_JOB, train_pods=pods, restarts=restarts)


EVICTED_GANG = [
    # Worker 0 loses its peer first (gloo: connection reset, exit 1); worker 1 was evicted and
    # exits 143 after saving its checkpoint. The cause is the eviction, not worker 0's exit.
    _pod(0, "Failed", exit_code=1, message="RuntimeError: Connection reset by peer", finished="2026-12-05T00:00:11Z"),
    _disrupted(_pod(1, "Failed", node="gpu-b", exit_code=143, finished="2026-12-05T00:00:40Z")),
]


@pytest.mark.parametrize("pods", [
    pytest.param(EVICTED_GANG, id="evicted-worker"),
    pytest.param([_pod(0, "Failed", exit_code=143, finished="2026-12-05T00:00:11Z"),
                  _pod(1, "Failed", exit_code=1, finished="2026-12-05T00:00:12Z")], id="sigterm-143-first"),
    pytest.param([_disrupted(_pod(0, "Failed", exit_code=137), "PreemptionByScheduler"),
                  _pod(1, "Failed", exit_code=143)], id="preempted"),
])
def test_a_disrupted_gang_restarts_instead_of_failing(pods: list[dict[str, Any]]) -> None:
    spec = spec_of(2, 8)
    info = derive_phase(spec, _gang_observed(copy.deepcopy(pods)))
    assert (info.phase, info.reason, info.restart) == ("Running", "GangRestarting", True)
    assert "restart 1 of 3" in info.message and "worker rank" in info.message


def test_the_restart_shows_in_status_and_keeps_the_revision() -> None:
    spec = spec_of(2, 8)
    prior = {"phase": "Running", "revision": 1, "specHash": "h", "restarts": 1, "startTime": "2026-12-05T00:00:00Z"}
    status = compute_status(spec, 1, prior, Revision(1, "h", False, ()), _gang_observed(copy.deepcopy(EVICTED_GANG), restarts=1),
                            NOW, {"trainJob": "intent-train-1-1"}, "s3://b/out/r1")
    assert (status["phase"], status["reason"], status["revision"], status["restarts"]) == ("Running", "GangRestarting", 1, 2)
    assert status["artifacts"]["output"] == "s3://b/out/r1"  # same revision, same output and checkpoints


def test_a_gang_that_spent_its_restart_budget_fails() -> None:
    spec = spec_of(2, 8)
    info = derive_phase(spec, _gang_observed(copy.deepcopy(EVICTED_GANG), restarts=3))
    assert (info.phase, info.reason, info.restart) == ("Failed", "RestartLimitReached", False)
    assert "worker rank 1 of 16" in info.message and "3 restarts" in info.message


@pytest.mark.parametrize("pods,job", [
    # A real error on worker 1; the Job controller then deletes worker 0, whose trainer exits 143.
    pytest.param([_pod(1, "Failed", node="gpu-b", exit_code=1, message="RuntimeError: CUDA error", finished="2026-12-05T00:00:12Z"),
                  _pod(0, "Failed", exit_code=143, finished="2026-12-05T00:00:30Z")], FAILED_JOB, id="error-then-cleanup"),
    # Bad config or data is no better on a second try, even if a peer was disrupted meanwhile.
    pytest.param([_pod(1, "Failed", node="gpu-b", exit_code=3, message="bad data"),
                  _disrupted(_pod(0, "Failed", exit_code=143))], FAILED_JOB, id="fatal-exit"),
    # The deadline is the user's, not a disruption.
    pytest.param(copy.deepcopy(EVICTED_GANG), {"status": {"conditions": [{"type": "Failed", "status": "True",
                                                                          "reason": "DeadlineExceeded"}]}}, id="deadline"),
])
def test_non_retryable_gang_failures_fail_the_revision_naming_the_worker(pods: list[dict[str, Any]], job: dict[str, Any]) -> None:
    info = derive_phase(spec_of(2, 8), _gang_observed(pods, job=job))
    assert info.phase == "Failed" and not info.restart
    if job is FAILED_JOB:
        assert info.reason == "WorkerFailed" and info.message.startswith("worker rank 1 of 16 (pod intent-train-1-1-x on node gpu-b)")


def test_max_restarts_defaults_and_bounds() -> None:
    assert spec_of(2, 8).max_restarts == 3
    sched = load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["scheduling"]["properties"]["maxRestarts"]
    assert (sched["default"], sched["minimum"]) == (3, 0)


def test_restart_attempts_get_their_own_job_and_hostnames() -> None:
    # A new name per attempt: the failed attempt's pods may take their grace period to go, and
    # the new gang's hostnames (and so the rendezvous address) must not be theirs.
    job = build_trainer_job(OWNER, spec_of(2, 8), 3, SETTINGS, attempt=2)
    assert job["metadata"]["name"] == "intent-train-3-2"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "intent-train-3"  # one workers Service per revision
    assert "--master-addr=intent-train-3-2-0.intent-train-3" in pod["containers"][0]["command"]
    assert train_attempt("intent", 3, "intent-train-3") == 0
    assert train_attempt("intent", 3, "intent-train-3-2") == 2
    assert train_attempt("intent", 3, "intent-train-30") is None
    assert train_attempt("intent", 3, "intent-validate-3") is None


def test_plan_restarts_the_gang_then_deletes_the_failed_attempt() -> None:
    spec = spec_of(2, 8)
    failed = {**FAILED_JOB, "metadata": {"name": "intent-train-1"}}
    assert plan(spec, "Running", DONE, failed, [], False, restart=True) == [CreateTrainJob()]
    new = {"metadata": {"name": "intent-train-1-1"}, "spec": {}, "status": {}}
    assert plan(spec, "Running", DONE, new, [], False, earlier_attempts=[failed]) == [DeleteJob("intent-train-1")]


# --- the workers Service goes with its revision (DT-5) ------------------------------------------

def test_status_names_the_workers_service_only_while_the_revision_runs() -> None:
    spec = spec_of(2, 8)
    children = {"trainJob": "intent-train-1", "workersService": "intent-train-1"}
    running = compute_status(spec, 1, {}, Revision(1, "h", True, ()), _observed(None, [_pod(0), _pod(1)]), NOW, children, "s3://o")
    assert running["children"]["workersService"] == "intent-train-1"
    pods = [_pod(1, "Succeeded", exit_code=0), _pod(0, "Succeeded", exit_code=0, message=SUMMARY)]
    done = compute_status(spec, 1, running, Revision(1, "h", False, ()), _observed(DONE, pods), NOW, children, "s3://o")
    assert done["phase"] == "Succeeded" and "workersService" not in done["children"]


@pytest.mark.parametrize("phase,prior,current,deleted", [
    ("Succeeded", "intent-train-1", None, True),       # the revision ended
    ("Pending", "intent-train-1", None, True),         # superseded by a spec edit (a one-node revision)
    ("Pending", "intent-train-1", "intent-train-2", True),  # superseded by another gang
    ("Running", "intent-train-1", "intent-train-1", False),
    ("Running", None, "intent-train-1", False),
])
def test_plan_deletes_the_workers_service_of_a_finished_or_superseded_revision(
        phase: str, prior: str | None, current: str | None, deleted: bool) -> None:
    spec = spec_of(2, 8)
    tjob = {"metadata": {"name": "intent-train-1"}, "spec": {}, "status": DONE["status"] if phase == "Succeeded" else {}}
    actions = plan(spec, phase, DONE, tjob, [], False, services=(prior, current))
    assert (DeleteService(prior or "") in actions) == deleted


# --- rendezvous and shutdown (DT-2, DT-4) --------------------------------------------------------

def test_the_gang_waits_for_all_workers_as_long_as_the_job_may_run() -> None:
    spec = spec_of(2, 8)
    job = build_trainer_job(OWNER, spec, 3, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    # torchrun's static rendezvous gives up after 600 s by default; the Job's deadline bounds it instead.
    assert f"--rdzv-conf=timeout={spec.active_deadline_seconds}" in command
    # The trainer starts only once every worker's name resolves: no GPU idles in a half gang's rendezvous.
    (init,) = pod["initContainers"]
    assert init["name"] == "wait-for-gang" and init["image"] == SETTINGS.trainer_image
    assert init["command"][:2] == ["python3", "-c"]
    assert init["args"] == ["intent-train-3-0.intent-train-3", "intent-train-3-1.intent-train-3"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert "nvidia.com/gpu" not in init["resources"]["limits"]


@pytest.mark.parametrize("nodes,gpus", [(1, 4), (2, 8)])
def test_torchrun_gives_workers_the_pods_grace_period_and_exits_143(nodes: int, gpus: int) -> None:
    job = build_trainer_job(OWNER, spec_of(nodes, gpus), 3, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    # The launcher maps torchrun's SignalException to 128 + signal (143 on SIGTERM).
    assert command[:3] == ["python3", "-m", "tuneforge_trainer.launch"]
    shutdown = next(int(a.split("=")[1]) for a in command if a.startswith("--shutdown-timeout="))
    assert pod["terminationGracePeriodSeconds"] - 15 <= shutdown < pod["terminationGracePeriodSeconds"]


def test_the_pod_index_keeps_what_tells_a_disruption() -> None:
    """The operator's pod index projects pods down to what status.py reads: a disruption must
    survive it, or an evicted gang reads as a worker's own failure (seen on kwok)."""
    from tuneforge.finetune.handlers import _project_child

    pod = _disrupted(_pod(1, "Failed", node="gpu-b", exit_code=137))
    pod["status"]["reason"] = "Evicted"
    pod["metadata"]["ownerReferences"] = [{"controller": True, "uid": "job-uid"}]
    kept = _project_child(pod, is_job=False)  # type: ignore[arg-type]
    assert kept["status"]["reason"] == "Evicted"
    assert [c["type"] for c in kept["status"]["conditions"]] == ["PodScheduled", "DisruptionTarget"]
    info = derive_phase(spec_of(2, 8), _gang_observed([kept, _pod(0, "Failed", exit_code=1)]))
    assert info.reason == "GangRestarting"


@pytest.mark.parametrize("message,restart", [
    ("Pod team-a/intent-train-1-1-x has condition DisruptionTarget matching FailJob rule at index 0", True),
    ("Container trainer for pod team-a/intent-train-1-0-x failed with exit code 143 matching FailJob rule at index 1", True),
    ("Container trainer for pod team-a/intent-train-1-1-x failed with exit code 1 matching FailJob rule at index 1", False),
])
def test_a_gang_whose_pods_are_gone_is_judged_by_the_jobs_record(message: str, restart: bool) -> None:
    """An evicted pod is deleted once it ends; the Job controller then removes the others: the
    operator may see the Job Failed with no pod left (seen on kwok)."""
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": message}]}}
    info = derive_phase(spec_of(2, 8), _gang_observed([], job=job))
    assert (info.reason == "GangRestarting") == restart and (info.phase == "Failed") != restart
    if restart:
        assert message in info.message


def test_a_gang_whose_evicted_worker_is_gone_restarts_though_its_peer_exited_1() -> None:
    """Seen on the real node (2 x 1 gloo, worker 1 evicted): the evicted pod was deleted once it
    ended, and worker 0, stopped by the Job controller, checkpointed and exited 1 (torchrun under
    SIGTERM). The pod left shows no disruption; the Job's record names worker 1's exit 143 as the
    failure that came first, so the gang restarts rather than failing as worker 0's own error."""
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message":
           "Container trainer for pod team-a/intent-train-1-1-x failed with exit code 143 matching FailJob rule at index 1"}]}}
    info = derive_phase(spec_of(2, 1), _gang_observed([_pod(0, "Failed", exit_code=1)], job=job))
    assert info.reason == "GangRestarting", info
    # A worker's own error in the Job's record still fails the gang, naming the worker.
    job["status"]["conditions"][0]["message"] = (
        "Container trainer for pod team-a/intent-train-1-0-x failed with exit code 1 matching FailJob rule at index 1")
    assert derive_phase(spec_of(2, 1), _gang_observed([_pod(0, "Failed", exit_code=1)], job=job)).phase == "Failed"
