"""Kueue objects for the operator's cluster tests (ResourceFlavor, ClusterQueue, LocalQueue,
PriorityClass) and a recorder of the queueing timeline the tests report."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from tuneforge_localcluster import kueue as lc_kueue
from tuneforge_localcluster.testing import wait_for

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "kueue"
KWOK_H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
REAL_NODE = {"tuneforge.dev/node-kind": "real"}


def resource_flavor(name: str, node_labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": lc_kueue.API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": name},
            "spec": {"nodeLabels": node_labels}}


def cluster_queue(name: str, flavor: str, namespace: str, gpus: int) -> dict[str, Any]:
    """A ClusterQueue for one namespace: ``gpus`` nvidia.com/gpu of ``flavor`` (CPU and memory
    ample); a workload of higher priority preempts lower ones in the queue."""
    quotas = [("cpu", "1000"), ("memory", "16Ti"), ("nvidia.com/gpu", str(gpus))]
    return {
        "apiVersion": lc_kueue.API_VERSION, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": [r for r, _ in quotas], "flavors": [
                {"name": flavor, "resources": [{"name": r, "nominalQuota": q} for r, q in quotas]}]}],
        },
    }


def local_queue(name: str, cluster_queue_name: str) -> dict[str, Any]:
    return {"apiVersion": lc_kueue.API_VERSION, "kind": "LocalQueue", "metadata": {"name": name},
            "spec": {"clusterQueue": cluster_queue_name}}


class KueueQueues:
    """Queues of one test namespace (put under Kueue by its label); cluster-scoped objects carry
    the namespace's (unique) name and are deleted by ``delete``."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.cluster_objects: list[tuple[str, str]] = []
        labels = [f"{k}={v}" for k, v in lc_kueue.managed_namespace_labels().items()]
        cluster.kubectl("label", "namespace", namespace, *labels)

    def queue(self, name: str, gpus: int, node_labels: dict[str, str]) -> str:
        """A LocalQueue ``name`` over a ClusterQueue of ``gpus`` GPUs of a flavor on ``node_labels``."""
        cq = f"{self.namespace}-{name}"
        self.cluster.apply(resource_flavor(cq, node_labels))
        self.cluster_objects.append(("resourceflavor", cq))
        self.cluster.apply(cluster_queue(cq, cq, self.namespace, gpus))
        self.cluster_objects.append(("clusterqueue", cq))
        self.cluster.apply(local_queue(name, cq), self.namespace)
        wait_for(f"ClusterQueue {cq} active", lambda: any(
            c["type"] == "Active" and c["status"] == "True"
            for c in (self.cluster.get("clusterqueue", cq).get("status") or {}).get("conditions") or ()), 30, 0.5)
        return name

    def set_gpus(self, name: str, gpus: int) -> None:
        cq = f"{self.namespace}-{name}"
        self.cluster.apply(cluster_queue(cq, cq, self.namespace, gpus))

    def priority_class(self, name: str, value: int) -> str:
        """A PriorityClass: Kueue takes a workload's priority from its pods' priorityClassName
        (spec.scheduling.priorityClassName of a FineTuneJob) when no WorkloadPriorityClass is set."""
        full = f"{self.namespace}-{name}"
        self.cluster.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": full},
                            "value": value, "preemptionPolicy": "PreemptLowerPriority"})
        self.cluster_objects.append(("priorityclass", full))
        return full

    def workloads(self) -> list[dict[str, Any]]:
        return list(self.cluster.list("workloads.kueue.x-k8s.io", self.namespace))

    def delete(self) -> None:
        # The namespace goes after the test (its Workloads with it); a ClusterQueue keeps its
        # in-use finalizer until then, so nothing here waits.
        for kind, name in reversed(self.cluster_objects):
            self.cluster.kubectl("delete", kind, name, "--wait=false", "--ignore-not-found", check=False)


class Timeline:
    """Each change of a FineTuneJob's (phase, reason) and of its Workload's Kueue state, stamped
    in seconds since the start and UTC; written to test-output/kueue/<test>.txt."""

    def __init__(self, test: str) -> None:
        self.test, self.t0 = test, time.monotonic()
        self.rows: list[str] = []
        self.last: dict[str, Any] = {}

    def note(self, what: str, state: Any) -> None:
        if self.last.get(what) == state:
            return
        self.last[what] = state
        now = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        self.rows.append(f"{time.monotonic() - self.t0:7.1f} s  {now}Z  {what}: {json.dumps(state)}")

    def observe(self, cluster: Any, namespace: str, names: list[str], queues: KueueQueues | None = None) -> None:
        for name in names:
            st = cluster.get("finetunejob", name, namespace).get("status") or {}
            self.note(f"ftj/{name}", [st.get("phase"), st.get("reason"), (st.get("message") or "")[:160]])
        for wl in queues.workloads() if queues else ():
            conds = {c["type"]: c for c in (wl.get("status") or {}).get("conditions") or ()}
            state = {t: conds[t]["reason"] for t in ("QuotaReserved", "Admitted", "Evicted", "Preempted", "Finished")
                     if t in conds and conds[t]["status"] == "True"}
            self.note(f"workload/{wl['metadata']['name']}", state or "pending")

    def write(self) -> str:
        text = "\n".join(self.rows)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / f"{self.test}.txt").write_text(text + "\n")
        print(f"\nKueue timeline of {self.test}:\n{text}")
        return text
