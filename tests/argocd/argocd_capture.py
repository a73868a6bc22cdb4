"""Drive real FineTuneJobs and ModelServes through their phases on the local cluster and capture
each live object, with the verdict of the Argo CD health script on it and the actions applied as
Argo CD applies them (the script's object → JSON merge patch from the live object → patch).

Used by the cluster test (``test_argocd_cluster.py``: verdicts and action effects checked on live
objects) and by ``hack/capture_argocd_testdata.py`` (the same run, written into the chart's
``testdata/`` for the pure tests). Stand-ins are the operator tests' own: the stand-in trainer on
the real node, kwok GPU nodes whose pods end with a trainer summary or the gate's measures.
"""

from __future__ import annotations

import copy
import json
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "operator"))  # the operator tests' helpers (OperatorProcess, manifests)

from argocd_lua import ArgoLua, Obj, kind_dir, merge_patch  # noqa: E402
from operator_helpers import ROOT, STANDIN_DIR, OperatorProcess, ftj_manifest, pvc_manifest  # noqa: E402
from tuneforge_localcluster.testing import kwok_serve_env, wait_for  # noqa: E402

GROUP = "tuneforge.dev"
# Namespaces are per run; captured files name this one instead.
CAPTURED_NAMESPACE = "ml-team"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
S3_SECRET = {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "s3", "annotations": {"tuneforge.dev/allowed-endpoints": "127.0.0.1:9000"}},
             "stringData": {"id": "test", "secret": "test"}}
SUMMARY = {"version": "tuneforge.dev/trainer-summary/v1", "status": "succeeded", "command": "train",
           "accuracy": 0.95, "macro_f1": 0.94, "eval_loss": 0.2, "n_eval": 80,
           "worst_classes": [{"label": "card_arrival", "f1": 0.8}],
           "baselines": [{"name": "zero_shot", "accuracy": 0.0}, {"name": "tfidf_lr", "accuracy": 0.9}],
           "artifacts": {"adapter": "/mnt/pvc/artifacts/runs/adapter"}}
# kwok training pods run 25 s (long enough to see Running and to suspend one), then end with SUMMARY.
KWOK_POD_ANNOTATIONS = json.dumps({"kwok.tuneforge.dev/termination-message": json.dumps(SUMMARY),
                                   # kwok draws the run time between the two (the jitter bound defaults to 2 s).
                                   "pod-complete.stage.kwok.x-k8s.io/delay": "25s",
                                   "pod-complete.stage.kwok.x-k8s.io/jitter-delay": "30s"})
NOISE = ("managedFields", "uid", "resourceVersion", "selfLink")


@dataclass
class Capture:
    """One live object in one phase and what Argo CD must say about it."""
    kind: str
    file: str          # testdata/<file>.yaml
    expect: str        # the Argo CD health status the phase means
    obj: Obj
    verdict: dict[str, str] = field(default_factory=dict)
    enabled: tuple[str, ...] | None = None  # actions discovery must enable (None: not a discovery case)


@dataclass
class ActionRun:
    """An action applied to a live object: its input, the patch, the expected patch."""
    kind: str
    action: str
    input_file: str
    obj: Obj
    patch: Obj
    expected_patch: Obj


@dataclass
class Run:
    captures: list[Capture] = field(default_factory=list)
    actions: list[ActionRun] = field(default_factory=list)
    namespace: str = ""
    metrics: str = ""  # the operator's /metrics after the run (every phase seen)


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def ms_manifest(name: str, version: int, *, min_accuracy: float = 0.8, **rollout: Any) -> Obj:
    spec_rollout: dict[str, Any] = {"progressDeadlineSeconds": 60, "scaleDownDelaySeconds": 600,
                                    "gate": {"minAccuracy": min_accuracy, "rows": 20, "datasetUri": "s3://gate/rows.jsonl"}}
    spec_rollout.update(rollout)
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelServe", "metadata": {"name": name}, "spec": {
        "baseModel": {"uri": "/models/base"},
        "adapters": [{"name": "intents", "uri": f"/adapters/v{version}", "digest": digest(version)}],
        "resources": {"cpu": "1", "memory": "1Gi"},
        "scheduling": {"nodeSelector": H100},
        "rollout": spec_rollout,
    }}


def kwok_ftj(name: str, secret: str = "s3", **spec: Any) -> Obj:
    spec.setdefault("scheduling", {"nodeSelector": H100})
    return ftj_manifest(name, output={"uri": "s3://artifacts/runs"}, s3={
        "endpoint": "http://127.0.0.1:9000",
        "accessKeyIdSecretRef": {"name": secret, "key": "id"},
        "secretAccessKeySecretRef": {"name": secret, "key": "secret"},
    }, **spec)


def clean(obj: Obj, namespace: str) -> Obj:
    """The object without per-run noise (managedFields, uid, resourceVersion, the run's namespace)."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for k in NOISE:
        meta.pop(k, None)
    ann = meta.get("annotations") or {}
    ann.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not ann:
        meta.pop("annotations", None)
    text = json.dumps(out).replace(namespace, CAPTURED_NAMESPACE)
    return json.loads(text)  # type: ignore[no-any-return]


class Observer:
    """Lists the namespace's FineTuneJobs and ModelServes every 0.4 s and keeps every distinct
    (kind, name, phase, reason, generation, observedGeneration, progress, candidate) it saw, so short phases
    (Validating, Evaluating) are caught without a race."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.seen: list[Obj] = []
        self._keys: set[tuple[Any, ...]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> "Observer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                out = self.cluster.kubectl("get", "finetunejobs,modelserves", "-n", self.namespace, "-o", "json", check=False)
                for item in json.loads(out.stdout or "{}").get("items", []):
                    st = item.get("status") or {}
                    key = (item["kind"], item["metadata"]["name"], st.get("phase"), st.get("reason"),
                           item["metadata"].get("generation"), st.get("observedGeneration"),
                           (st.get("progress") or {}).get("display"), (st.get("preview") or {}).get("digest"))
                    if key not in self._keys:
                        self._keys.add(key)
                        self.seen.append(item)
            except Exception as e:  # noqa: BLE001 - a failed poll is retried; kept for the report
                self.errors.append(repr(e))
            self._stop.wait(0.4)

    def first(self, kind: str, name: str, ok: Callable[[Obj], bool]) -> Obj | None:
        return next((o for o in self.seen if o["kind"] == kind and o["metadata"]["name"] == name and ok(o.get("status") or {})), None)


def _phase(phase: str, reason: str | None = None, **more: Any) -> Callable[[Obj], bool]:
    def ok(st: Obj) -> bool:
        if st.get("phase") != phase or (reason is not None and st.get("reason") != reason):
            return False
        return all(bool(st.get(k)) == v for k, v in more.items())
    return ok


class Driver:
    """The objects, the operator and the Lua, on one namespace."""

    def __init__(self, cluster: Any, namespace: str, standin_image: str) -> None:
        self.cluster, self.ns, self.standin = cluster, namespace, standin_image
        self.lua = ArgoLua()
        self.run = Run(namespace=namespace)
        self.op: OperatorProcess | None = None
        self.observer = Observer(cluster, namespace)

    # --- cluster -------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Obj:
        return self.cluster.get(kind.lower(), name, self.ns)  # type: ignore[no-any-return]

    def status(self, kind: str, name: str) -> Obj:
        return dict(self.get(kind, name).get("status") or {})

    def wait(self, kind: str, name: str, what: str, ok: Callable[[Obj], bool], timeout: float = 180) -> Obj:
        def probe() -> bool:
            if self.op is not None:
                self.op.check_alive()
            return ok(self.status(kind, name))
        wait_for(f"{kind} {name}: {what}", probe, timeout, 0.5,
                 lambda: json.dumps(self.status(kind, name), indent=1)[:3000] + ("\n" + self.op.log() if self.op else ""))
        return self.get(kind, name)

    def start_operator(self) -> None:
        env = {**kwok_serve_env(), "TUNEFORGE_TRAINER_IMAGE": self.standin, "TUNEFORGE_POD_ANNOTATIONS": KWOK_POD_ANNOTATIONS,
               "TUNEFORGE_RETRY_DELAY": "1", "TUNEFORGE_RETRY_MAX_DELAY": "5"}
        self.op = OperatorProcess(self.cluster, self.ns, env, f"argocd-capture-{self.ns}").start()

    def stop_operator(self) -> None:
        if self.op is not None:
            self.op.kill(signal.SIGTERM)
            self.op = None

    # --- Argo CD -------------------------------------------------------------------------------
    def capture(self, obj: Obj | None, file: str, expect: str, enabled: tuple[str, ...] | None = None) -> Capture:
        """Record ``obj`` (a live object) as ``file`` and check the health script's verdict on it."""
        assert obj is not None, f"{file}: the phase was never observed"
        verdict = self.lua.health(kind_dir(obj) / "health.lua", obj)
        cap = Capture(obj["kind"], file, expect, obj, verdict, enabled)
        self.run.captures.append(cap)
        assert verdict["status"] == expect, f"{file}: health says {verdict}, the phase means {expect}: {json.dumps(obj.get('status'))[:2000]}"
        if enabled is not None:
            got = tuple(a["name"] for a in self.lua.discovery(kind_dir(obj) / "actions" / "discovery.lua", obj) if not a["disabled"])
            assert got == tuple(sorted(enabled)), f"{file}: discovery enables {got}, expected {enabled}"
        return cap

    def act(self, cap: Capture, action: str, expected_patch: Obj) -> None:
        """Run ``action`` on the live object as Argo CD does (its merge patch), after checking the
        patch is the one the operator's API asks for (``expected_patch``)."""
        live = self.get(cap.kind, cap.obj["metadata"]["name"])
        new = self.lua.action(kind_dir(live) / "actions" / action / "action.lua", live)
        patch = merge_patch(live, new)
        assert patch == expected_patch, f"{action} on {cap.file}: patch {patch}, expected {expected_patch}"
        self.run.actions.append(ActionRun(cap.kind, action, cap.file, cap.obj, patch, expected_patch))
        self.cluster.kubectl("patch", cap.kind.lower(), live["metadata"]["name"], "-n", self.ns, "--type=merge",
                             "-p", json.dumps(patch))


def annotation(key: str, value: str | None) -> Obj:
    return {"metadata": {"annotations": {f"{GROUP}/{key}": value}}}


def drive(cluster: Any, namespace: str, standin_image: str) -> Run:
    """Every phase of both kinds, captured live; the health verdicts and action effects checked."""
    d = Driver(cluster, namespace, standin_image)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunejobs.tuneforge.dev", "crd/modelserves.tuneforge.dev")
    cluster.apply([pvc_manifest(), S3_SECRET], namespace)
    try:
        _drive(d)
    finally:
        d.observer.__exit__()
        d.stop_operator()
    return d.run


def _drive(d: Driver) -> None:
    c, ns = d.cluster, d.ns
    # Created before any operator runs: no status yet.
    c.apply(ftj_manifest("intent", dataset={"uri": "/standin/accuracy=0.93/steps=6/step_s=1.5/eval_s=6/train.jsonl"},
                         evaluation={"gate": {"minAccuracy": 0.9}}), ns)
    c.apply(ms_manifest("intents", 1), ns)
    d.capture(d.get("FineTuneJob", "intent"), "progressing_noStatus", "Progressing", enabled=("suspend",))
    d.capture(d.get("ModelServe", "intents"), "progressing_noStatus", "Progressing", enabled=())
    d.observer.__enter__()
    d.start_operator()
    c.apply([
        ftj_manifest("bad-data", dataset={"uri": "/standin/invalid=1/train.jsonl"}),
        kwok_ftj("no-secret", secret="s3-missing"),
        kwok_ftj("too-big", resources={"gpus": 16}),
        kwok_ftj("paused", resources={"gpus": 1, "cpu": "1", "memory": "1Gi"}),
        kwok_ftj("strict", resources={"gpus": 1, "cpu": "1", "memory": "1Gi"}, evaluation={"gate": {"minAccuracy": 0.99}}),
        ms_manifest("stuck", 1, progressDeadlineSeconds=30),
        ms_manifest("held", 1),
        ms_manifest("strict", 1, min_accuracy=0.95),  # the gate measures 0.9: a first deploy that fails
    ], ns)

    # A kwok training pod runs 25-30 s: suspended while it runs, then resumed.
    running = d.wait("FineTuneJob", "paused", "runs", _phase("Running", "Training"), 120)
    cap = d.capture(running, "progressing_runningKwok", "Progressing", enabled=("suspend",))
    d.act(cap, "suspend", {"spec": {"suspend": True}})
    suspended = d.wait("FineTuneJob", "paused", "suspended", _phase("Suspended"), 60)
    cap = d.capture(suspended, "suspended_specSuspend", "Suspended", enabled=("resume",))
    d.act(cap, "resume", {"spec": {"suspend": False}})
    d.wait("FineTuneJob", "paused", "resumed", lambda st: st.get("phase") in ("Queued", "Running", "Evaluating", "Succeeded"), 60)

    # --- ModelServes: first deploys, then the second versions -------------------------------
    serving = _phase("Healthy")
    ms = d.wait("ModelServe", "intents", "serves v1", serving)
    d.capture(ms, "healthy_serving", "Healthy", enabled=())
    d.wait("ModelServe", "held", "serves v1", serving)
    d.wait("ModelServe", "stuck", "serves v1", serving)
    c.apply([ms_manifest("intents", 2, autoPromotion=False), ms_manifest("held", 2, autoPromotion=False)], ns)
    stuck = ms_manifest("stuck", 2, progressDeadlineSeconds=30)
    stuck["spec"]["gpus"] = 16  # no node has 16 GPUs: the candidate never gets ready
    c.apply(stuck, ns)

    # --- FineTuneJobs ------------------------------------------------------------------------
    d.wait("FineTuneJob", "no-secret", "waits for its Secret", _phase("Pending", "SecretNotFound"), 120)
    d.capture(d.get("FineTuneJob", "no-secret"), "progressing_pendingSecretNotFound", "Progressing", enabled=("suspend",))
    d.wait("FineTuneJob", "too-big", "waits for a GPU", _phase("Queued", "WaitingForGPU"), 120)
    d.capture(d.get("FineTuneJob", "too-big"), "progressing_queuedWaitingForGPU", "Progressing", enabled=("suspend",))

    # --- ModelServe rollouts -----------------------------------------------------------------
    paused = d.wait("ModelServe", "intents", "waits for a promote", _phase("Paused"), 120)
    cap = d.capture(paused, "suspended_waitingForPromotion", "Suspended", enabled=("abort", "promote"))
    d.act(cap, "promote", annotation("promote", paused["status"]["preview"]["shortDigest"]))
    promoted = d.wait("ModelServe", "intents", "green serves v2", lambda st: st.get("phase") == "Healthy"
                      and (st.get("active") or {}).get("digest") == digest(2), 120)
    cap = d.capture(promoted, "healthy_promotedPreviousWarm", "Healthy", enabled=("rollback",))
    d.act(cap, "rollback", annotation("abort", promoted["status"]["active"]["shortDigest"]))
    back = d.wait("ModelServe", "intents", "blue serves v1 again", lambda st: st.get("phase") == "Degraded"
                  and (st.get("active") or {}).get("digest") == digest(1), 60)
    # The rolled-back green stays warm: rollback (back to it) is offered as well as retry.
    cap = d.capture(back, "degraded_rolledBackByAbort", "Degraded", enabled=("retry", "rollback"))
    d.act(cap, "retry", {"metadata": {"annotations": {f"{GROUP}/abort": None,
                                                      f"{GROUP}/retry": back["status"]["rejected"]["shortDigest"]}}})
    # Retried while green still serves v2 warm: a selector switch back to it, no new rollout.
    d.wait("ModelServe", "intents", "green serves v2 again", lambda st: st.get("phase") == "Healthy"
           and (st.get("active") or {}).get("digest") == digest(2) and not st.get("rejected"), 60)

    held = d.wait("ModelServe", "held", "waits for a promote", _phase("Paused"), 120)
    cap = d.capture(held, "suspended_heldForAbort", "Suspended", enabled=("abort", "promote"))
    d.act(cap, "abort", annotation("abort", held["status"]["preview"]["shortDigest"]))
    aborted = d.wait("ModelServe", "held", "aborted", _phase("Degraded", "Aborted"), 60)
    d.capture(aborted, "degraded_aborted", "Degraded", enabled=("retry",))

    d.capture(d.observer.first("ModelServe", "stuck", lambda st: st.get("phase") == "Progressing"
                               and (st.get("preview") or {}).get("digest") == digest(2)),
              "progressing_candidateDeploying", "Progressing", enabled=("abort",))
    stuck_st = d.wait("ModelServe", "stuck", "rolled back at its deadline", _phase("Degraded", "ProgressDeadlineExceeded"), 120)
    d.capture(stuck_st, "degraded_progressDeadlineExceeded", "Degraded", enabled=("retry",))
    failed = d.wait("ModelServe", "strict", "first deploy failed its gate", _phase("Failed"), 120)
    d.capture(failed, "degraded_firstDeployGateFailed", "Degraded", enabled=("retry",))

    # --- FineTuneJobs that finish ------------------------------------------------------------
    d.wait("FineTuneJob", "intent", "succeeds", _phase("Succeeded"), 300)
    for phase, file, reason in (("Validating", "progressing_validating", None), ("Running", "progressing_running", "Training"),
                                ("Evaluating", "progressing_evaluating", None)):
        seen = d.observer.first("FineTuneJob", "intent", (lambda st: _phase("Running", "Training")(st)
                                and (st.get("progress") or {}).get("percent") is not None) if phase == "Running"
                                else _phase(phase, reason))
        d.capture(seen, file, "Progressing", enabled=("suspend",))
    d.capture(d.get("FineTuneJob", "intent"), "healthy_succeeded", "Healthy", enabled=())
    cap = d.capture(d.wait("FineTuneJob", "bad-data", "fails validation", _phase("Failed", "DataValidationFailed"), 180),
                    "degraded_dataValidationFailed", "Degraded", enabled=("retry",))
    # Retried: revision 2 runs the same spec (new Jobs) and fails the same way; revision 1 is history.
    d.act(cap, "retry", annotation("retry", "1"))
    d.wait("FineTuneJob", "bad-data", "revision 2 fails validation too", lambda st: st.get("revision") == 2
           and st.get("phase") == "Failed" and st.get("retryRequest") == "1"
           and [h.get("phase") for h in st.get("history") or ()] == ["Failed"], 180)
    d.capture(d.wait("FineTuneJob", "strict", "fails its gate", _phase("Failed", "GateFailed"), 180),
              "degraded_gateFailed", "Degraded", enabled=("retry",))

    # --- a spec newer than the status: the operator is stopped, then Git changes the specs ---
    assert d.op is not None
    d.run.metrics = urllib.request.urlopen(f"http://127.0.0.1:{d.op.metrics_port}/metrics", timeout=10).read().decode()
    d.stop_operator()
    c.kubectl("patch", "ftj", "intent", "-n", ns, "--type=merge", "-p", '{"spec":{"lora":{"r":8}}}')
    d.capture(d.get("FineTuneJob", "intent"), "progressing_staleGeneration", "Progressing", enabled=())
    c.apply(ms_manifest("held", 3, autoPromotion=False), ns)
    d.capture(d.get("ModelServe", "held"), "progressing_staleGeneration", "Progressing", enabled=("retry",))
