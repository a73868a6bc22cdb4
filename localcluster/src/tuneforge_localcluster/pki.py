"""Certificates and kubeconfigs for the local cluster, signed by one throw-away CA.

Every component gets the identity it has on a real cluster (``system:kube-scheduler``,
``system:node:<name>`` in ``system:nodes`` …) so that the RBAC and Node authorizers decide
exactly as they would there.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)
FRONT_PROXY_CLIENT = "front-proxy-client"
"""The CN the apiserver's --requestheader-allowed-names accepts."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """A client identity: the certificate's CN is the user, each O a group."""

    file: str
    user: str
    groups: tuple[str, ...] = ()


def client_identities(node_name: str) -> tuple[Identity, ...]:
    return (
        Identity("admin", "kubernetes-admin", ("system:masters",)),
        Identity("controller-manager", "system:kube-controller-manager"),
        Identity("scheduler", "system:kube-scheduler"),
        Identity("kubelet", f"system:node:{node_name}", ("system:nodes",)),
        Identity("kube-proxy", "system:kube-proxy"),
        # The apiserver's client identity towards kubelets (logs, exec, port-forward).
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client"),
        Identity("coredns", "system:coredns"),
        Identity("kwok", "system:kwok-controller"),
        Identity("local-path-provisioner", "system:local-path-provisioner"),
        # The aggregation layer's identity towards extension API servers (KEDA's metrics API):
        # the apiserver proxies a request with this certificate and the user in X-Remote-* headers.
        Identity(FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT),
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _issue(
    pki: Path,
    name: str,
    cn: str,
    orgs: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool = False,
    client: bool | None = None,
) -> None:
    """A certificate for ``name`` signed by the CA: serving (``server``), client (``client``,
    by default when not serving) or both (mutual TLS between two servers, as KEDA's gRPC)."""
    ca_cert, ca_key = _load_ca(pki)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client if client is not None else not server:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(usages),
            critical=False,
        )
    )
    if dns or ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pki / f"{name}.key", key)
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _make_ca(pki: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tuneforge-localcluster-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY * 10)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", key)
    (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def kubeconfig(server: str, pki: Path, identity: str) -> dict:
    """A kubeconfig dict for ``identity`` (a cert/key pair in ``pki``), certs embedded by path."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tuneforge-local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
        ],
        "users": [
            {
                "name": identity,
                "user": {
                    "client-certificate": str(pki / f"{identity}.crt"),
                    "client-key": str(pki / f"{identity}.key"),
                },
            }
        ],
        "contexts": [{"name": "tuneforge-local", "context": {"cluster": "tuneforge-local", "user": identity}}],
        "current-context": "tuneforge-local",
    }


def issue_client(pki: Path, ident: Identity, server: str) -> None:
    """A client certificate and kubeconfig for ``ident`` signed by the existing CA (an optional
    component added to a running cluster)."""
    _issue(pki, ident.file, ident.user, ident.groups)
    (pki / f"{ident.file}.kubeconfig").write_text(yaml.safe_dump(kubeconfig(server, pki, ident.file)))


def issue_server(pki: Path, name: str, cn: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
                 client: bool = False) -> None:
    """A serving certificate ``<name>.crt``/``.key`` signed by the existing CA (a webhook's);
    ``client``: valid as a client certificate too."""
    _issue(pki, name, cn, dns=dns, ips=ips, server=True, client=client)


def generate(pki: Path, node_name: str, node_ip: str, service_ip: str, server: str) -> None:
    """Write a fresh CA, serving and client certificates, the service-account key and kubeconfigs."""
    pki.mkdir(parents=True, exist_ok=True)
    _make_ca(pki)
    _issue(
        pki,
        "apiserver",
        "kube-apiserver",
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=("127.0.0.1", node_ip, service_ip),
        server=True,
    )
    _issue(pki, "kubelet-serving", f"system:node:{node_name}", ("system:nodes",), (node_name,), (node_ip, "127.0.0.1"), server=True)
    _issue(pki, "registry", "registry", dns=("localhost",), ips=("127.0.0.1",), server=True)
    for ident in client_identities(node_name):
        _issue(pki, ident.file, ident.user, ident.groups)
        (pki / f"{ident.file}.kubeconfig").write_text(yaml.safe_dump(kubeconfig(server, pki, ident.file)))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
