"""Kueue (``sigs.k8s.io/kueue``) as an optional component of the local cluster.

The manager runs on the host like the control plane, from a binary built and cached like the
cluster's other Go components (``binaries.OPTIONAL``); tests that need it ask for it (the
``kueue`` fixture) and only they pay for its build and start. Its CRDs are upstream's own
(``config/components/crd`` of the module), and its webhooks are upstream's
``config/components/webhook`` with each ``service`` reference replaced by a URL on loopback and
a ``caBundle`` from the cluster's CA: the apiserver runs on the host too, so
``https://127.0.0.1:<port>`` reaches the manager with no Service, EndpointSlice or kube-proxy
in between, and the serving certificate is signed by the CA the apiserver already trusts (no
cert-manager, no Kueue internal certificate rotation).

Only the frameworks enabled here (``batch/job``) keep their webhooks: a webhook of a framework
the manager does not serve would fail every Deployment or Pod in the shared cluster. The Job
webhooks are further limited to namespaces labelled ``MANAGED_LABEL`` (and Kueue manages only
those), so a Kueue that is stopped can never block another test's Jobs.

The builders here are pure; ``ensure`` writes, applies and starts what they return.
"""

from __future__ import annotations

import base64
import copy
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge_localcluster import binaries, cluster, manifests, pki
from tuneforge_localcluster.settings import Settings

VERSION = binaries.KUEUE_VERSION
MODULE = f"sigs.k8s.io/kueue@{VERSION}"
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"
NAMESPACE = "kueue-system"
FRAMEWORKS = ("batch/job",)
MANAGED_LABEL = "tuneforge.dev/kueue"
"""Namespaces labelled ``tuneforge.dev/kueue: managed`` have their queued Jobs managed by Kueue."""
MANAGED_VALUE = "managed"
WEBHOOK_PORT = 9443
HEALTH_PORT = 18083
METRICS_PORT = 18084
IDENTITY = pki.Identity("kueue", "system:kueue-controller-manager")
# Webhook paths of Kueue's own kinds and of the enabled frameworks (see FRAMEWORKS).
_SERVED_GROUPS = (GROUP, "batch")


def managed_namespace_labels() -> dict[str, str]:
    """Labels that put a namespace under Kueue (its Job webhooks and its job controller)."""
    return {MANAGED_LABEL: MANAGED_VALUE}


def _namespace_selector() -> dict[str, Any]:
    return {"matchLabels": managed_namespace_labels()}


def configuration(s: Settings) -> dict[str, Any]:
    """Kueue's Configuration (``config.kueue.x-k8s.io/v1beta2``) for a host-run manager."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{HEALTH_PORT}"},
        "metrics": {"bindAddress": f"127.0.0.1:{METRICS_PORT}"},
        "webhook": {"port": WEBHOOK_PORT, "host": "127.0.0.1", "certDir": str(cert_dir(s))},
        # One manager, started and stopped with the tests that ask for it.
        "leaderElection": {"leaderElect": False},
        # The serving certificate comes from the cluster's CA (see the module docstring).
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": _namespace_selector(),
        "integrations": {"frameworks": list(FRAMEWORKS)},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def args(s: Settings, binary: Path) -> list[str]:
    return [
        str(binary),
        f"--config={s.runtime / 'kueue' / 'config.yaml'}",
        f"--kubeconfig={s.pki / 'kueue.kubeconfig'}",
        # The visibility API server would need an APIService and binds a port on every address.
        "--feature-gates=VisibilityOnDemand=false",
        "--zap-log-level=info",
    ]


def cert_dir(s: Settings) -> Path:
    return s.runtime / "kueue" / "certs"


METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
"""Where the manager reads its metrics serving certificate when Kueue's internal certificate
management is off: a fixed path in v0.17.0 (cmd/kueue/main.go), so the host gets it."""


def _url(path: str) -> str:
    return f"https://127.0.0.1:{WEBHOOK_PORT}{path}"


def crds(source: Path, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Upstream's CRDs (``config/components/crd/bases``) with the conversion webhooks its
    kustomization enables (``patches/webhook_in_*``) pointed at the host-run manager."""
    crd_dir = source / "config" / "components" / "crd"
    kustomization = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
    converted = set()
    for patch in kustomization.get("patches") or ():
        doc = yaml.safe_load((crd_dir / patch["path"]).read_text())
        if (doc.get("spec") or {}).get("conversion", {}).get("strategy") == "Webhook":
            converted.add(doc["metadata"]["name"])
    out = []
    for rel in kustomization["resources"]:
        crd = yaml.safe_load((crd_dir / rel).read_text())
        if crd["metadata"]["name"] in converted:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": _url("/convert"), "caBundle": base64.b64encode(ca_bundle).decode()},
                    "conversionReviewVersions": ["v1"],
                },
            }
        out.append(crd)
    return out


def webhook_configurations(source: Path, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Upstream's webhook configurations, kept to what this manager serves and reached by URL."""
    text = (source / "config" / "components" / "webhook" / "manifests.yaml").read_text()
    out = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        kept = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            if not groups <= set(_SERVED_GROUPS):
                continue
            service = hook["clientConfig"]["service"]
            hook["clientConfig"] = {"url": _url(service["path"]), "caBundle": base64.b64encode(ca_bundle).decode()}
            if "batch" in groups:
                hook["namespaceSelector"] = _namespace_selector()
            kept.append(hook)
        doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
        doc["webhooks"] = kept
        out.append(doc)
    return out


def bootstrap() -> list[dict[str, Any]]:
    """Kueue's namespace and cluster-admin for its host identity."""
    return manifests.host_addon("kueue", NAMESPACE, IDENTITY.user)


# ------------------------------------------------------------------ side effects


def build(s: Settings) -> Path:
    """The manager binary (built on first use, ~minutes cold; cached by its inputs)."""
    return binaries.ensure_binaries(s, ["kueue"])["kueue"]


def running(s: Settings) -> bool:
    return cluster.component_pid(s, "kueue") is not None and _ready(s)


def _ready(s: Settings) -> bool:
    try:
        return cluster._http_ok(f"http://127.0.0.1:{HEALTH_PORT}/readyz")
    except OSError:
        return False


def ensure(s: Settings) -> float:
    """Install Kueue's CRDs and webhooks and start its manager unless it already runs; return
    the seconds it took (0 when it was running)."""
    binary = build(s)
    with cluster.locked(s):
        if running(s):
            return 0.0
        started = time.monotonic()
        source = binaries.module_dir(MODULE)
        ca = (s.pki / "ca.crt").read_bytes()
        # A stale manager (its health port gone) goes before a fresh one starts.
        pid = cluster.component_pid(s, "kueue")
        if pid:
            cluster._stop_pid(pid)
        pki.issue_client(s.pki, IDENTITY, s.apiserver_url)
        pki.issue_server(s.pki, "kueue-webhook", "kueue-webhook", dns=("localhost",), ips=("127.0.0.1",))
        certs = cert_dir(s)
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "tls.crt").write_bytes((s.pki / "kueue-webhook.crt").read_bytes())
        (certs / "tls.key").write_bytes((s.pki / "kueue-webhook.key").read_bytes())
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (METRICS_CERT_DIR / name).write_bytes((certs / name).read_bytes())
        (s.runtime / "kueue" / "config.yaml").write_text(yaml.safe_dump(configuration(s)))
        cluster._apply(s, bootstrap())
        cluster._apply(s, crds(source, ca))
        cluster.kubectl(s, "wait", "--for=condition=Established", "--timeout=60s",
                        *[f"crd/{c['metadata']['name']}" for c in crds(source, ca)])
        cluster._start(s, "kueue", args(s, binary))
        log = s.logs / "kueue.log"
        cluster._wait("Kueue manager ready", lambda: _ready(s) or cluster.component_pid(s, "kueue") is None, 90, log)
        if not _ready(s):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise RuntimeError(f"Kueue's manager exited at start ({log}):\n{tail}")
        # Webhooks last: registered before the manager serves them, they would fail its own
        # start-up writes (and everyone's Kueue objects) for nothing.
        cluster._apply(s, webhook_configurations(source, ca))
        return time.monotonic() - started
