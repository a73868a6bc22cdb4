"""Pure builders of every component's command line and configuration files.

Nothing here starts a process or touches the disk: ``cluster.py`` writes what these
functions return. Flags that exist because of this machine (cgroup v1, no registry,
a sandbox that refuses negative oom_score_adj) say so where they are set.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge_localcluster import audit
from tuneforge_localcluster import pki as pki_mod
from tuneforge_localcluster.settings import Settings

CNI_BIN_DIR = "/usr/lib/cni"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
REAL_NODE_LABELS = {
    "tuneforge.dev/node-kind": "real",
    # The node advertises nvidia.com/gpu without having a GPU: containers run on the CPU.
    "tuneforge.dev/gpu-standin": "cpu",
}


def etcd_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [
        str(bins["etcd"]),
        "--name=tuneforge",
        f"--data-dir={s.runtime / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{s.etcd_port}",
        f"--advertise-client-urls=http://127.0.0.1:{s.etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{s.etcd_port + 1}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{s.etcd_port + 1}",
        f"--initial-cluster=tuneforge=http://127.0.0.1:{s.etcd_port + 1}",
        "--listen-metrics-urls=",
        "--quota-backend-bytes=4294967296",
        # A throw-away test cluster: fsync on every write would make the 1,000-object
        # benches measure the disk, not the apiserver and the operator.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    pki = s.pki
    return [
        str(bins["kube-apiserver"]),
        f"--etcd-servers=http://127.0.0.1:{s.etcd_port}",
        f"--secure-port={s.apiserver_port}",
        "--bind-address=0.0.0.0",
        f"--advertise-address={s.node_ip}",
        f"--service-cluster-ip-range={s.service_cidr}",
        "--service-node-port-range=30000-32767",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--authorization-mode=Node,RBAC",
        "--anonymous-auth=false",
        # As OpenShift and hardened clusters: setting blockOwnerDeletion needs update on the
        # owner's finalizers, so a missing RBAC rule for it shows here, not only in production.
        "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        # Node names do not resolve on this machine; kubelets are reached by their IP.
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        "--profiling=false",
        "--max-requests-inflight=800",
        "--max-mutating-requests-inflight=400",
        # The aggregation layer (APIService objects, as KEDA's external metrics API): requests
        # are proxied with the front-proxy client certificate, the user in X-Remote-* headers,
        # straight to the Service's endpoints (the extension servers run on the host).
        f"--requestheader-client-ca-file={pki / 'ca.crt'}",
        f"--requestheader-allowed-names={pki_mod.FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / (pki_mod.FRONT_PROXY_CLIENT + '.crt')}",
        f"--proxy-client-key-file={pki / (pki_mod.FRONT_PROXY_CLIENT + '.key')}",
        "--enable-aggregator-routing=true",
        "--v=1",
        *audit.apiserver_args(s),
    ]


def _component_auth(kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
    ]


def controller_manager_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    pki = s.pki
    return [
        str(bins["kube-controller-manager"]),
        *_component_auth(pki / "controller-manager.kubeconfig"),
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--use-service-account-credentials=true",
        # Pod IPs come from the bridge CNI's host-local range, not from node podCIDRs.
        "--allocate-node-cidrs=false",
        f"--service-cluster-ip-range={s.service_cidr}",
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        "--concurrent-job-syncs=20",
        "--v=1",
    ]


def scheduler_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [
        str(bins["kube-scheduler"]),
        *_component_auth(s.pki / "scheduler.kubeconfig"),
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        "--v=1",
    ]


def containerd_config(s: Settings, pause_image: str) -> str:
    rt = s.runtime
    return f"""version = 2
root = "{rt / 'containerd' / 'root'}"
state = "{rt / 'containerd' / 'state'}"
oom_score = 0

[grpc]
  address = "{s.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: the sandbox image is built locally and imported.
  sandbox_image = "{pause_image}"
  # This sandbox refuses negative oom_score_adj writes; without this every pod
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{rt / 'cni' / 'net.d'}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{rt / 'containerd' / 'certs.d'}"
"""


def registry_hosts_toml(s: Settings) -> str:
    """containerd's view of the loopback registry: plain HTTP, pull and resolve."""
    return f"""server = "http://{s.registry}"

[host."http://{s.registry}"]
  capabilities = ["pull", "resolve"]
"""


def cni_conflist(s: Settings) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "tuneforge",
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": True,
                # Pods need no way out of this machine.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": s.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(s.runtime / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(s: Settings) -> dict:
    pki = s.pki
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The host is cgroup v1, which 1.35+ refuses unless told; containerd 1.6 lacks the
        # RuntimeConfig RPC, so the cgroup driver comes from here (1.36 still reads it).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{s.containerd_socket}",
        "address": s.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [s.dns_service_ip],
        "clusterDomain": "cluster.local",
        # Pods with dnsPolicy Default get this file: cluster DNS only, nothing off-machine.
        "resolvConf": str(s.runtime / "resolv.conf"),
        "enforceNodeAllocatable": [],
        # Multi-GB images on a shared disk must not be evicted or garbage-collected.
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 250,
        "kubeAPIQPS": 50,
        "kubeAPIBurst": 100,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def kubelet_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in REAL_NODE_LABELS.items())
    return [
        str(bins["kubelet"]),
        f"--config={s.runtime / 'kubelet-config.yaml'}",
        f"--kubeconfig={s.pki / 'kubelet.kubeconfig'}",
        f"--hostname-override={s.node_name}",
        f"--node-ip={s.node_ip}",
        f"--root-dir={s.runtime / 'kubelet'}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def kube_proxy_config(s: Settings) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(s.pki / "kube-proxy.kubeconfig")},
        "hostnameOverride": s.node_name,
        "mode": "iptables",
        "clusterCIDR": s.pod_cidr,
        # 0 leaves the host's conntrack sysctls alone (this sandbox may refuse writes).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    }


def kube_proxy_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [str(bins["kube-proxy"]), f"--config={s.runtime / 'kube-proxy.yaml'}", "--v=1"]


def corefile(s: Settings) -> str:
    # Only the cluster's zones are served; other names get REFUSED instead of being
    # forwarded off the machine.
    return f""".:53 {{
    bind {s.node_ip}
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {s.pki / 'coredns.kubeconfig'} tuneforge-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


def coredns_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [str(bins["coredns"]), "-conf", str(s.runtime / "Corefile")]


def kwok_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [
        str(bins["kwok"]),
        f"--kubeconfig={s.pki / 'kwok.kubeconfig'}",
        # kwokctl's default (--manage-all-nodes) would fake the real node's pods too.
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
        "--node-ip=10.245.0.1",
        "--cidr=10.245.0.0/16",
        "--server-address=127.0.0.1:10247",
        "--node-lease-duration-seconds=40",
        f"--config={s.runtime / 'kwok.yaml'}",
    ]


KWOK_MODULE = "sigs.k8s.io/kwok@v0.8.0"
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/general/pod-create.yaml",
    "pod/general/pod-init-container-running.yaml",
    "pod/general/pod-init-container-completed.yaml",
    "pod/general/pod-ready.yaml",
    "pod/general/pod-delete.yaml",
)


def kwok_config(kwok_source: Path, own_stages: list[Path]) -> str:
    """kwok's stages: its "general" pod lifecycle (delays settable per pod through annotations)
    with our pod-complete stage, which can end a pod with a termination message and exit code."""
    docs = [(kwok_source / "kustomize" / "stage" / rel).read_text() for rel in KWOK_STAGES]
    docs += [p.read_text() for p in own_stages]
    return "\n---\n".join(docs)


def registry_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [
        str(bins["crane"]),
        "registry",
        "serve",
        f"--address={s.registry}",
        f"--disk={s.cache / 'registry'}",
    ]


S3_ACCESS_KEY = "tuneforge"
S3_SECRET_KEY = "tuneforge-local-secret"


def s3_args(s: Settings, bins: dict[str, Path]) -> list[str]:
    return [
        str(bins["versitygw"]),
        "--access",
        S3_ACCESS_KEY,
        "--secret",
        S3_SECRET_KEY,
        "--port",
        f":{s.s3_port}",
        "--health",
        "/healthz",
        "--quiet",
        "posix",
        str(s.runtime / "s3"),
    ]


LOCAL_PATH_NAMESPACE = "local-path-storage"


def local_path_config(s: Settings) -> dict:
    return {
        "nodePathMap": [
            {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(s.runtime / "local-path")]}
        ]
    }


def local_path_args(s: Settings, bins: dict[str, Path], helper_image: str) -> list[str]:
    return [
        str(bins["local-path-provisioner"]),
        "start",
        f"--config={s.runtime / 'local-path' / 'config.json'}",
        f"--helper-pod-file={s.runtime / 'local-path-helper-pod.yaml'}",
        "--provisioner-name=rancher.io/local-path",
        f"--namespace={LOCAL_PATH_NAMESPACE}",
        f"--helper-image={helper_image}",
        "--service-account-name=local-path-provisioner",
        f"--kubeconfig={s.pki / 'local-path-provisioner.kubeconfig'}",
    ]


def local_path_configmap(s: Settings) -> dict:
    """The provisioner's helper-pod scripts (upstream's defaults): a 0777 folder per volume."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "local-path-config", "namespace": LOCAL_PATH_NAMESPACE},
        "data": {
            "config.json": to_json(local_path_config(s)),
            "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
            "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
        },
    }


def local_path_helper_pod(helper_image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {
            "priorityClassName": "system-node-critical",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "helper-pod", "image": helper_image, "imagePullPolicy": "IfNotPresent"}],
        },
    }


def fake_nodes(s: Settings) -> list[dict]:
    """kwok nodes: ``s.fake_gpu_nodes`` 8-GPU nodes with NVIDIA product labels and taint, one CPU node."""
    nodes = []
    for i in range(s.fake_gpu_nodes):
        nodes.append(
            _fake_node(
                f"kwok-gpu-{i}",
                {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                    "nvidia.com/gpu.count": "8",
                    "nvidia.com/gpu.memory": "81559",
                    "node.kubernetes.io/instance-type": "p5.48xlarge",
                },
                {"cpu": "192", "memory": "2048Gi", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "4Ti"},
                [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            )
        )
    nodes.append(
        _fake_node(
            "kwok-cpu-0",
            {"node.kubernetes.io/instance-type": "m7i.8xlarge"},
            {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "1Ti"},
            [{"key": FAKE_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}],
        )
    )
    return nodes


def _fake_node(name: str, labels: dict[str, str], resources: dict[str, str], taints: list[dict]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "tuneforge.dev/node-kind": "fake",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
            "phase": "Running",
        },
    }


def host_service(name: str, namespace: str, ip: str | None, address: str, ports: list[tuple[str, int, str]]) -> list[dict]:
    """A selector-less Service plus EndpointSlice that route to a process on the host."""
    svc_ports = [{"name": n, "port": p, "targetPort": p, "protocol": proto} for n, p, proto in ports]
    svc: dict = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": svc_ports},
    }
    if ip:
        svc["spec"]["clusterIP"] = ip
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-host",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "localcluster.tuneforge.dev",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }
    return [svc, eps]


def to_json(obj: object) -> str:
    return json.dumps(obj, indent=2)
