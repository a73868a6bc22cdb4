"""Operator throughput: N FineTuneJobs applied at once vs a raw client doing the same work.

Both runs use the same apiserver in the same process run, on kwok fake nodes (validation pods
on the fake CPU node, training pods on the fake 8-GPU nodes), and create the *same* objects —
the baseline calls the operator's own pure builders: ConfigMap + validation Job at once, the
training Job as soon as its validation Job completes. Printed: time until every training Job
exists (and, for the operator, every status is set), their ratio (baseline / operator; goal
>= 0.9), p50/p99 apply -> training-Job latency, and the operator's peak RSS (goal < 400 MB at
N = 10,000). The operator runs from its own venv (``hack/venv.sh operator``: exactly its image's
requirements), so the RSS is the shipped process's.

A fair pair: each run starts on a quiet cluster (the previous run's namespace deleted and gone,
so the raw run's training Jobs no longer cycle through the fake GPUs, and their garbage
collection no longer loads the apiserver), the operator's clock starts when it answers its
liveness probe (start-up — imports, first lists — is not counted, however cold the venv), and
``--rounds`` alternates which run goes first. The figure is the median of the rounds' ratios.

Both rooms loaded: ``--serves M`` (default N/10) ModelServes, each following one of the N
FineTuneJobs, exist in both runs' namespaces before the clock starts (the same objects for the
raw client, which does nothing with them). In the operator's run the serve room reconciles each
of them at start and again on each status change of the job it follows (its
``modelserves_by_finetunejob`` index), beside the FineTuneJob room, in the same process and
through the same API client; the operator's clock stops only when every FineTuneJob *and*
every ModelServe has a status phase.

    python bench/operator_throughput.py [--n 10000] [--serves 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("operator/src", "localcluster/src"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from kubernetes import client, watch  # noqa: E402

from tuneforge.endpoint_secrets import ANNOTATION_ALLOWED_ENDPOINTS  # noqa: E402
from tuneforge.finetune.builders.configmap import build_config_map  # noqa: E402
from tuneforge.finetune.builders.job import build_trainer_job, build_validate_job  # noqa: E402
from tuneforge.finetune.builders.names import Owner  # noqa: E402
from tuneforge.settings import Settings  # noqa: E402
from tuneforge.finetune.spec import parse_spec  # noqa: E402
from tuneforge_localcluster import settings as lc_settings  # noqa: E402
from tuneforge_localcluster.testing import Cluster, operator_python, start_or_reuse, wait_for  # noqa: E402

SPEC: dict[str, Any] = {
    "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "dataset": {"uri": "s3://data/banking77/train.csv", "format": "csv", "textColumn": "text", "labelColumn": "category"},
    "output": {"uri": "s3://artifacts/runs"},
    "s3": {"endpoint": "http://127.0.0.1:9000", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
           "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}},
    "resources": {"gpus": 1, "cpu": "1", "memory": "4Gi"},
    "scheduling": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
    "evaluation": {"gate": {"minAccuracy": 0.9}},
}
SUMMARY = json.dumps({"status": "succeeded", "command": "train", "accuracy": 0.93, "macro_f1": 0.92})
DEADLINE = 900.0  # seconds per run at N <= 1000; more in proportion above (see deadline())
ENV = {
    "TUNEFORGE_TRAINER_IMAGE": "tuneforge/trainer:bench",
    "TUNEFORGE_VALIDATE_NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": "kwok-cpu-0"}),
    "TUNEFORGE_VALIDATE_TOLERATIONS": json.dumps([{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]),
    "TUNEFORGE_POD_ANNOTATIONS": json.dumps({"kwok.tuneforge.dev/termination-message": SUMMARY}),
    "TUNEFORGE_PROGRESS_INTERVAL": "30",
}


def deadline(n: int) -> float:
    """A run's time limit: 900 s up to N = 1000, in proportion above (the apiserver's work is)."""
    return DEADLINE * max(1.0, n / 1000)


def modelserve(name: str, job: str) -> dict[str, Any]:
    """A ModelServe following ``job``: the serve room's load in the bench (nothing is served: the
    fake training Jobs write no adapter, so each waits for a passing revision)."""
    return {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "ModelServe", "metadata": {"name": name},
            "spec": {"adapter": {"fineTuneJob": job}, "gpus": 0, "replicas": 1}}


def create_modelserves(api: client.ApiClient, ns: str, m: int, pool: concurrent.futures.Executor) -> None:
    custom = client.CustomObjectsApi(api)
    list(pool.map(lambda i: custom.create_namespaced_custom_object(
        "tuneforge.dev", "v1alpha1", ns, "modelserves", modelserve(f"ms-{i}", f"ftj-{i}")), range(m)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def watch_train_jobs(batch: client.BatchV1Api, ns: str, seen: dict[str, float], completed: set[str],
                     stop: threading.Event, on_validate_complete: Any = None) -> None:
    """Record when each training Job is first seen; report completed validation Jobs."""
    while not stop.is_set():
        w = watch.Watch()
        try:
            for ev in w.stream(batch.list_namespaced_job, ns, timeout_seconds=5):
                job = ev["object"]
                name = job.metadata.name
                role = (job.metadata.labels or {}).get("tuneforge.dev/role")
                if role == "train" and name not in seen:
                    seen[name] = time.monotonic()
                if role == "validate" and name not in completed:
                    if any(c.type == "Complete" and c.status == "True" for c in (job.status.conditions or ())):
                        completed.add(name)
                        if on_validate_complete:
                            on_validate_complete(name)
                if stop.is_set():
                    break
        except Exception:  # noqa: BLE001 - a watch hiccup: start again
            time.sleep(0.2)


def s3_secret(api: client.ApiClient, ns: str) -> None:
    """The Secret SPEC's s3 refs name, opted in for SPEC's endpoint: without it the operator holds
    every job Pending (SecretNotFound, then SecretNotAllowed) and never creates a Job. Both runs get
    it, so both namespaces hold the same objects."""
    endpoint = SPEC["s3"]["endpoint"].split("://", 1)[1]
    client.CoreV1Api(api).create_namespaced_secret(ns, {
        "metadata": {"name": SPEC["s3"]["accessKeyIdSecretRef"]["name"],
                     "annotations": {ANNOTATION_ALLOWED_ENDPOINTS: endpoint}},
        "stringData": {SPEC["s3"]["accessKeyIdSecretRef"]["key"]: "bench-id",
                       SPEC["s3"]["secretAccessKeySecretRef"]["key"]: "bench-secret"}})


def run_raw(api: client.ApiClient, ns: str, n: int, settings: Settings, pool: concurrent.futures.Executor) -> tuple[float, list[float]]:
    """The baseline: the operator's objects, created by a plain client with no framework."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    spec = parse_spec(json.loads(json.dumps(SPEC)) | {"suspend": False})
    owners = {f"ftj-{i}": Owner(f"ftj-{i}", ns, f"00000000-0000-0000-0000-{i:012d}") for i in range(n)}
    applied: dict[str, float] = {}
    seen: dict[str, float] = {}
    completed: set[str] = set()
    stop = threading.Event()

    def create_train(validate_name: str) -> None:
        owner = owners[validate_name.rsplit("-validate-", 1)[0]]
        pool.submit(batch.create_namespaced_job, ns, _no_owner(build_trainer_job(owner, spec, 1, settings)))

    t = threading.Thread(target=watch_train_jobs, args=(batch, ns, seen, completed, stop, create_train), daemon=True)
    t.start()
    start = time.monotonic()

    def apply(name: str) -> None:
        applied[name] = time.monotonic()
        owner = owners[name]
        core.create_namespaced_config_map(ns, _no_owner(build_config_map(owner, spec, 1)))
        batch.create_namespaced_job(ns, _no_owner(build_validate_job(owner, spec, 1, settings)))

    list(pool.map(apply, owners))
    while len(seen) < n:
        if time.monotonic() - start > deadline(n):
            raise SystemExit(f"raw client: only {len(seen)}/{n} training Jobs after {deadline(n):.0f} s")
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    stop.set()
    return elapsed, [seen[f"{name}-train-1"] - applied[name] for name in owners]


def _no_owner(obj: dict[str, Any]) -> dict[str, Any]:
    # The baseline has no FineTuneJob to own its objects (a fake uid would be garbage-collected).
    obj["metadata"].pop("ownerReferences", None)
    return obj


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    """Kopf serves its liveness probe once its start-up handlers have run."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process: on a shared machine a steadier measure of the operator's
    own cost than the wall time."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_operator(cluster: Any, api: client.ApiClient, ns: str, n: int, m: int, pool: concurrent.futures.Executor,
                 info: dict[str, float]) -> tuple[float, list[float], float]:
    """The operator's run (``m`` ModelServes in ``ns``); ``info`` gets its start-up time and the
    CPU seconds it used in the run."""
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    port = _free_port()
    env = dict(os.environ, **ENV, TUNEFORGE_NAMESPACES=ns, TUNEFORGE_METRICS_PORT="0", TUNEFORGE_LIVENESS_PORT=str(port),
               PYTHONPATH=str(ROOT / "operator" / "src"))
    log = open(ROOT / "test-output" / "bench-operator.log", "wb")
    launched = time.monotonic()
    proc = subprocess.Popen([operator_python(), "-m", "tuneforge", "--kubeconfig", str(cluster.kubeconfig)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    peak = [0.0]
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set() and proc.poll() is None:
            try:
                for line in open(f"/proc/{proc.pid}/status"):
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                pass
            time.sleep(0.5)

    threading.Thread(target=sample_rss, daemon=True).start()
    try:
        wait_for("the operator's liveness probe", lambda: proc.poll() is None and _answers(port), timeout=120, interval=0.2)
        info["startup"] = time.monotonic() - launched
        cpu_at_start = _cpu_seconds(proc.pid)
        seen: dict[str, float] = {}
        threading.Thread(target=watch_train_jobs, args=(batch, ns, seen, set(), stop), daemon=True).start()
        applied: dict[str, float] = {}
        start = time.monotonic()

        def apply(name: str) -> None:
            applied[name] = time.monotonic()
            body = {"apiVersion": "tuneforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": SPEC}
            custom.create_namespaced_custom_object("tuneforge.dev", "v1alpha1", ns, "finetunejobs", body)

        names = [f"ftj-{i}" for i in range(n)]
        list(pool.map(apply, names))
        while len(seen) < n:
            if proc.poll() is not None:
                raise SystemExit(f"operator exited with {proc.returncode}; see test-output/bench-operator.log")
            if time.monotonic() - start > deadline(n):
                raise SystemExit(f"operator: only {len(seen)}/{n} training Jobs after {deadline(n):.0f} s")
            time.sleep(0.1)
        for plural, want in (("finetunejobs", n), ("modelserves", m)):  # every status set, both rooms
            while True:
                items = custom.list_namespaced_custom_object("tuneforge.dev", "v1alpha1", ns, plural)["items"]
                phased = sum(1 for i in items if (i.get("status") or {}).get("phase"))
                if phased >= want:
                    break
                if time.monotonic() - start > deadline(n):
                    raise SystemExit(f"operator: {phased}/{want} {plural} with a status phase after {deadline(n):.0f} s")
                time.sleep(0.5)
        elapsed = time.monotonic() - start
        info["cpu"] = _cpu_seconds(proc.pid) - cpu_at_start
        time.sleep(2)
        return elapsed, [seen[f"{name}-train-1"] - applied[name] for name in names], peak[0]
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def drain(cluster: Cluster, ns: str, n: int) -> float:
    """Delete a run's namespace and wait until it is gone: its Jobs stop cycling through the fake
    nodes and their garbage collection is over before the next run starts. Returns the wait."""
    start = time.monotonic()
    cluster.delete_namespace(ns)
    wait_for(f"namespace {ns} gone", lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0,
             timeout=deadline(n), interval=1.0)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="FineTuneJobs applied at once")
    parser.add_argument("--serves", type=int, default=None,
                        help="ModelServes following the first of them, in both runs (default: N/10; 0: one room only)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent creating threads, both runs")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs; the first run of a pair alternates")
    parser.add_argument("--order", choices=("alternate", "raw-first", "operator-first"), default="alternate",
                        help="which run of a pair goes first")
    parser.add_argument("--no-drain", action="store_true",
                        help="start a run while the previous one's Jobs still run (the bench before 2026-12-06)")
    args = parser.parse_args()
    serves = args.n // 10 if args.serves is None else args.serves
    if not 0 <= serves <= args.n:
        parser.error(f"--serves must be between 0 and --n ({args.n}), not {serves}")
    cluster, _ = start_or_reuse(lc_settings.load())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.tuneforge.dev",
                    "crd/modelserves.tuneforge.dev", "--timeout=60s")
    (ROOT / "test-output").mkdir(exist_ok=True)
    api = cluster.api_client()
    api.configuration.connection_pool_maxsize = args.clients * 2
    client.Configuration.set_default(api.configuration)
    settings = Settings.from_env(ENV)
    print(f"operator_throughput: N={args.n} FineTuneJobs, {args.clients} creating clients, kwok fake nodes, "
          f"{serves} ModelServes following them, {args.rounds} round(s), order {args.order}, {'no drain' if args.no_drain else 'drained between runs'}", flush=True)
    ratios, rss_peak = [], 0.0
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        for r in range(args.rounds):
            raw_first = args.order == "raw-first" or (args.order == "alternate" and r % 2 == 0)
            results: dict[str, Any] = {}
            pending: list[str] = []
            try:
                for kind in (("raw", "operator") if raw_first else ("operator", "raw")):
                    ns = cluster.new_namespace(f"bench-{kind}")
                    pending.append(ns)
                    s3_secret(api, ns)
                    create_modelserves(api, ns, serves, pool)
                    if kind == "raw":
                        results["raw"] = run_raw(api, ns, args.n, settings, pool)
                    else:
                        info: dict[str, float] = {}
                        results["operator"] = (*run_operator(cluster, api, ns, args.n, serves, pool, info), info)
                    if not args.no_drain:
                        results[f"{kind} drain"] = drain(cluster, pending.pop(), args.n)
            finally:
                for ns in pending:
                    cluster.delete_namespace(ns)
            (raw_s, raw_lat), (op_s, op_lat, rss, info) = results["raw"], results["operator"]
            ratios.append(raw_s / op_s)
            rss_peak = max(rss_peak, rss)
            drains = "".join(f", {k} {v:.0f} s" for k, v in results.items() if k.endswith("drain"))
            print(f"round {r + 1} ({'raw' if raw_first else 'operator'} first; operator start-up {info['startup']:.1f} s{drains})")
            print(f"  raw client : every training Job exists after {raw_s:7.1f} s   apply->Job p50 {statistics.median(raw_lat):6.2f} s  p99 {percentile(raw_lat, 0.99):6.2f} s")
            print(f"  operator   : every training Job + status after {op_s:7.1f} s   apply->Job p50 {statistics.median(op_lat):6.2f} s  p99 {percentile(op_lat, 0.99):6.2f} s")
            print(f"  ratio (raw / operator) {raw_s / op_s:.2f}   operator peak RSS {rss:.0f} MB, CPU {info['cpu']:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"ratio (raw / operator), median of {len(ratios)}: {statistics.median(ratios):.2f} (goal >= 0.9)   "
          f"operator peak RSS {rss_peak:.0f} MB (goal < 400 MB at N=10,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
