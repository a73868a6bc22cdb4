"""Every pod template the operator builds, in both rooms, meets Pod Security ``restricted``.

The check below is the Pod Security Standards' ``restricted`` profile (baseline's controls plus
restricted's, as kubernetes v1.36 ``k8s.io/pod-security-admission/policy`` checks them) over the
pod spec only; the cluster tier (test_pod_security_cluster.py) puts the same templates through
the real admission plugin. Here every shape a builder can produce is covered: single and gang
training (with its init container), CPU and GPU servers with emptyDir and ephemeral caches, PVC
and ConfigMap sources, the gate with S3 and PVC rows.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from tuneforge.finetune.builders.job import build_summary_job, build_trainer_job, build_validate_job
from tuneforge.finetune.builders.names import Owner
from tuneforge.finetune.spec import parse_spec as parse_ftj
from tuneforge.pod_security import RUN_AS, container_security_context, pod_security_context
from tuneforge.serve.builders import GatePod, ServeContext, build_color_deployment, build_gate_job, color_plan
from tuneforge.serve.server import pod_spec as server_pod_spec
from tuneforge.serve.source import Lineage, ServedAdapter, ServedVersion
from tuneforge.serve.spec import SecretKeyRef
from tuneforge.serve.spec import parse_spec as parse_ms
from tuneforge.settings import Settings

# --- the restricted profile --------------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security ``restricted`` refuses in ``pod`` (a pod spec), one line per finding."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"pod: {key}")
    for v in pod.get("volumes", []):
        kind = next((k for k in v if k != "name"), None)
        if kind not in RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: type {kind}")
    for s in psc.get("sysctls", []):
        if s["name"] not in SAFE_SYSCTLS:
            out.append(f"pod: sysctl {s['name']}")
    for where, ctx in [("pod", psc), *((c["name"], c.get("securityContext") or {}) for c in containers)]:
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: hostProcess")
        se = ctx.get("seLinuxOptions") or {}
        if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{where}: seLinuxOptions {se}")
        if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: appArmorProfile Unconfined")
        if ctx.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser 0")
    pod_nonroot = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod: seccompProfile {pod_seccomp}")
    for c in containers:
        ctx, name = c.get("securityContext") or {}, c["name"]
        if ctx.get("privileged"):
            out.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation != false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities.add {caps['add']}")
        if ctx.get("runAsNonRoot") is False or not (pod_nonroot or ctx.get("runAsNonRoot") is True):
            out.append(f"{name}: runAsNonRoot != true")
        seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if ctx.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount {ctx['procMount']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


# --- every pod template the operator builds -----------------------------------------------------

OWNER = Owner("intent", "team-a", "uid-7")
SETTINGS = Settings(trainer_image="reg/trainer:1")
S3 = {"s3": {"endpoint": "http://minio.storage.svc:9000", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
             "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}}, "output": {"uri": "s3://runs/out"}}


def ftj(**overrides: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(overrides)
    return parse_ftj(defaulted_spec(raw))


D1 = "sha256:" + "1" * 64
VERSION = ServedVersion("s3://models/base", (ServedAdapter("intents", "s3://runs/r1/adapter", D1),), "sha256:" + "b" * 64,
                        Lineage("intents", 1, 0.9), eval_rows_uri="s3://runs/r1/predictions.jsonl")
PVC_VERSION = ServedVersion("pvc://models/base", (ServedAdapter("intents", "pvc://runs/r1/adapter", D1),), None,
                            eval_rows_uri="pvc://runs/r1/predictions.jsonl")
CTX = ServeContext("intents", "team-a", "reg/server:1", s3_endpoint="http://minio.storage.svc:9000",
                   s3_access_key=SecretKeyRef("s3", "id"), s3_secret_key=SecretKeyRef("s3", "secret"))
GATED = {"adapter": {"fineTuneJob": "intents"}, "apiKey": {"secretRef": {"name": "key", "key": "k"}},
         "rollout": {"gate": {"minAccuracy": 0.8}}}


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"])


POD_TEMPLATES: dict[str, Callable[[], dict[str, Any]]] = {
    "validate": lambda: _template(build_validate_job(OWNER, ftj(), 1, SETTINGS)),
    "validate-configmap-data": lambda: _template(build_validate_job(
        OWNER, ftj(dataset={"uri": "configmap://rows/train.csv"}), 1, SETTINGS)),
    "train-1-gpu-pvc": lambda: _template(build_trainer_job(OWNER, ftj(), 1, SETTINGS)),
    "train-cpu-s3-hub-token": lambda: _template(build_trainer_job(OWNER, ftj(
        resources={"gpus": 0}, baseModel={"uri": "hf://org/m", "tokenSecretRef": {"name": "hf", "key": "t"}}, **S3), 1, SETTINGS)),
    "train-4-gpus-torchrun": lambda: _template(build_trainer_job(OWNER, ftj(resources={"gpus": 4}), 1, SETTINGS)),
    "train-gang-2x8": lambda: _template(build_trainer_job(OWNER, ftj(resources={"gpus": 8, "nodes": 2}, **S3), 1, SETTINGS, 1)),
    "summary-reader-pvc": lambda: _template(build_summary_job(OWNER, ftj(), 1, SETTINGS)),
    "summary-reader-s3": lambda: _template(build_summary_job(OWNER, ftj(**S3), 1, SETTINGS)),
    "server-gpu-emptydir": lambda: _template(build_color_deployment(CTX, parse_ms(GATED), "blue", VERSION, 1)),
    "server-cpu-ephemeral-cache": lambda: _template(build_color_deployment(CTX, parse_ms({
        **GATED, "gpus": 0, "cache": {"volume": "ephemeral", "size": "20Gi"}}), "green", VERSION, 1)),
    "server-pvc-sources": lambda: _template(build_color_deployment(CTX, parse_ms(GATED), "blue", PVC_VERSION, 1)),
    "server-preflight-pod": lambda: server_pod_spec(color_plan(CTX, parse_ms(GATED), "blue", VERSION, 1), "Never"),
    "gate-s3-rows": lambda: _template(build_gate_job(CTX, parse_ms(GATED), VERSION, GatePod("reg/operator:1"))),
    "gate-pvc-rows": lambda: _template(build_gate_job(CTX, parse_ms(GATED), PVC_VERSION, GatePod("reg/operator:1"), 2)),
}


@pytest.mark.parametrize("name", sorted(POD_TEMPLATES))
def test_every_pod_template_meets_restricted(name: str) -> None:
    pod = POD_TEMPLATES[name]()
    assert restricted_violations(pod) == []
    # Beyond the profile: a numeric non-root UID on the pod (the kubelet can then verify
    # runAsNonRoot whatever the image's USER says), a read-only root filesystem everywhere, and
    # the API credentials these pods never need left out.
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == RUN_AS
    assert pod["automountServiceAccountToken"] is False
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        assert c["securityContext"] == container_security_context(), c["name"]
        # Every path the containers write is a volume: /tmp (HOME, caches) in each of them.
        assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])) or c["name"] == "wait-for-gang", c["name"]


def test_the_gang_init_container_is_covered() -> None:
    pod = POD_TEMPLATES["train-gang-2x8"]()
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-gang"]


def test_writable_volumes_are_group_owned_except_the_gates() -> None:
    """fsGroup where a pod writes to a claim (outputs, the server's ephemeral cache); the gate
    only reads its rows' claim, which a group change would only slow down."""
    for name, build in POD_TEMPLATES.items():
        fs_group = build()["securityContext"].get("fsGroup")
        assert fs_group == (None if name.startswith("gate") else RUN_AS), name
    assert pod_security_context(fs_group=False) == {k: v for k, v in pod_security_context().items() if k != "fsGroup"}


@pytest.mark.parametrize("mutate,finding", [
    (lambda p: p["securityContext"].pop("runAsNonRoot"), "trainer: runAsNonRoot != true"),
    (lambda p: p["securityContext"].update(runAsUser=0), "pod: runAsUser 0"),
    (lambda p: p["securityContext"].pop("seccompProfile"), "trainer: seccompProfile None"),
    (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
     "trainer: allowPrivilegeEscalation != false"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
     "trainer: capabilities.drop lacks ALL"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
     "trainer: capabilities.add ['SYS_ADMIN']"),
    (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/var"}}), "volume host: type hostPath"),
    (lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "trainer: hostPort"),
    (lambda p: p.update(hostNetwork=True), "pod: hostNetwork"),
])
def test_the_check_itself_finds_each_violation(mutate: Callable[[dict[str, Any]], Any], finding: str) -> None:
    """The checker is not vacuous: one change away from a built pod, it names the change."""
    pod = POD_TEMPLATES["train-1-gpu-pvc"]()
    mutate(pod)
    assert finding in restricted_violations(pod)


# --- the real admission plugin -------------------------------------------------------------------

@pytest.mark.pod_security("restricted")
def test_the_apiserver_admits_every_template_in_a_restricted_namespace(cluster: Any, namespace: str) -> None:
    """Each template above as a Pod, created (server-side dry run: admission runs in full, nothing
    is stored) in a namespace that enforces ``restricted``; a pod without the contexts is refused
    there, so the admission plugin is on. The operator's cluster tests (test_operator_cluster.py,
    test_serve_cluster.py) run in such namespaces too, where these pods are really created and run."""
    import json

    for name, build in sorted(POD_TEMPLATES.items()):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": build()}
        res = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
        assert res.returncode == 0 and "Warning" not in res.stderr, f"{name}: {res.stderr}"
    bare = POD_TEMPLATES["validate"]()
    bare.pop("securityContext")
    for c in bare["containers"]:
        c.pop("securityContext")
    res = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": bare}))
    assert res.returncode != 0 and 'violates PodSecurity "restricted:latest"' in res.stderr, res.stderr
