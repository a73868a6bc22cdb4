"""The local apiserver's audit log: a Metadata-level policy for ServiceAccounts outside
``kube-system`` (the operator's in-cluster identity and the least-privilege identities the tests
give operator processes), nothing for anyone else, so the control plane's own traffic never
reaches the file. Tests read it to learn which (verb, resource, namespace) an identity used
(``events``) and which source address sent each request.

Kept off the hot path: one JSON line per event, written by the apiserver's log backend in batch
mode (buffered, flushed on its own goroutine), the request-received stage left out, the file
rotated at 200 MB with one backup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tuneforge_localcluster.settings import Settings

POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # The controllers' own ServiceAccounts (--use-service-account-credentials) are the
        # bulk of the traffic and never what a test asks about.
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def policy_path(s: Settings) -> Path:
    return s.runtime / "audit" / "policy.yaml"


def log_path(s: Settings) -> Path:
    """Outside ``s.logs`` on purpose: the component logs are copied to test-output after every
    run, and this file grows with every test."""
    return s.runtime / "audit" / "audit.log"


def write_policy(s: Settings) -> None:
    path = policy_path(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(POLICY))


def apiserver_args(s: Settings) -> list[str]:
    """The kube-apiserver flags that turn the audit log on (``write_policy`` first)."""
    return [
        f"--audit-policy-file={policy_path(s)}",
        f"--audit-log-path={log_path(s)}",
        "--audit-log-format=json",
        "--audit-log-mode=batch",
        "--audit-log-batch-max-wait=1s",
        "--audit-log-maxsize=200",
        "--audit-log-maxbackup=1",
    ]


def events(s: Settings, user: str | None = None) -> Iterator[dict[str, Any]]:
    """Every audit event in the log (the rotated backup first), optionally only ``user``'s."""
    folder = log_path(s).parent
    files = sorted(folder.glob("audit-*.log")) + [log_path(s)]
    for path in files:
        if not path.exists():
            continue
        with path.open(errors="replace") as lines:
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # a line the batch writer has not finished
                    continue
                if user is None or event.get("user", {}).get("username") == user:
                    yield event
