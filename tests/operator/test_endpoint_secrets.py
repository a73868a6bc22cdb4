"""Review OP-2: a Secret is sent to an endpoint the user chose (an openai baseline's url, an
s3.endpoint) only when the Secret opts in for that host (tuneforge.dev/allowed-endpoints);
otherwise the FineTuneJob waits (then fails) and the ModelServe fails its pass, naming the field
and the Secret, before any pod exists."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from test_serve_reconcile import T0, FakeKube, body, runtime, step
from tuneforge.endpoint_secrets import ANNOTATION_ALLOWED_ENDPOINTS as ALLOWED, allows
from tuneforge.finetune.reconcile import preflight
from tuneforge.finetune.spec import parse_spec
from tuneforge.finetune.status import Observed, Revision, compute_status


@pytest.mark.parametrize(("annotation", "url", "ok"), [
    (None, "https://api.example.com/v1", False),                       # no opt-in at all
    ("", "https://api.example.com/v1", False),
    ("api.example.com", "https://api.example.com/v1", True),
    ("API.example.com", "https://api.Example.com:8443/v1", True),      # host entry: any port
    ("api.example.com:8443", "https://api.example.com:8443/v1", True),
    ("api.example.com:8443", "https://api.example.com/v1", False),     # port entry: that port only
    ("minio.storage.svc, api.example.com", "http://minio.storage.svc:9000", True),
    ("api.example.com", "https://api.example.com.attacker.io/v1", False),
    ("api.example.com", "https://attacker.io/?api.example.com", False),
    ("api.example.com", "https://api.example.com@attacker.io/v1", False),  # userinfo is not the host
    ("*", "https://anywhere.io", True),                                # the owner gives up the check
])
def test_allows(annotation: str | None, url: str, ok: bool) -> None:
    assert allows(None if annotation is None else {ALLOWED: annotation}, url) is ok


class SecretsKube:
    """The preflight's view: every PVC exists; Secrets by name with their annotations."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    async def pvc_exists(self, namespace: str, name: str) -> bool:
        return True

    async def config_map_keys(self, namespace: str, name: str) -> set[str] | None:
        return set()

    async def priority_class_exists(self, name: str) -> bool:
        return True

    async def secret_annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)


def ftj_spec(**overrides: Any) -> Any:
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw.update(overrides)
    return parse_spec(defaulted_spec(raw))


OPENAI = {"baselines": [{"type": "openai", "url": "https://attacker.io/v1", "model": "m",
                         "apiKeySecretRef": {"name": "db-password", "key": "password"}}]}
S3 = {"endpoint": "http://attacker.io:9000", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
      "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}}


@pytest.mark.parametrize(("name", "overrides", "secrets", "expected"), [
    ("openai key not opted in", {"evaluation": OPENAI}, {"db-password": {}},
     ("SecretNotAllowed", "spec.evaluation.baselines[openai].apiKeySecretRef: Secret 'db-password' has not opted in to "
                          "being sent to attacker.io (spec.evaluation.baselines[openai].url): its owner adds attacker.io "
                          "to its annotation tuneforge.dev/allowed-endpoints")),
    ("openai key opted in for another host", {"evaluation": OPENAI}, {"db-password": {ALLOWED: "api.openai.com"}},
     "SecretNotAllowed"),
    ("openai key opted in", {"evaluation": OPENAI}, {"db-password": {ALLOWED: "attacker.io"}}, None),
    ("openai key Secret missing", {"evaluation": OPENAI}, {},
     ("SecretNotFound", "spec.evaluation.baselines[openai].apiKeySecretRef: Secret 'db-password' not found in namespace team-a")),
    ("s3 endpoint, keys not opted in", {"s3": S3}, {"s3": {}}, "SecretNotAllowed"),
    ("s3 endpoint, port entry", {"s3": S3}, {"s3": {ALLOWED: "attacker.io:9000"}}, None),
    ("s3 without endpoint (AWS): no opt-in", {"s3": {k: v for k, v in S3.items() if k != "endpoint"}}, {"s3": {}}, None),
])
def test_finetunejob_preflight_refuses_secrets_not_opted_in(name: str, overrides: dict[str, Any],
                                                            secrets: dict[str, dict[str, str]], expected: Any) -> None:
    got = asyncio.run(preflight(SecretsKube(secrets), "team-a", ftj_spec(**overrides)))  # type: ignore[arg-type]
    if isinstance(expected, str):
        assert got is not None and got[0] == expected, name
        assert got[1].startswith("spec.") and "Secret " in got[1], got
    else:
        assert got == expected, name


def test_finetunejob_refused_secret_waits_then_fails_with_dependencies_condition() -> None:
    """The refusal is a condition (kubectl describe) and, after the bounded wait, Failed."""
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    refused = asyncio.run(preflight(SecretsKube({"db-password": {}}), "team-a", ftj_spec(evaluation=OPENAI)))  # type: ignore[arg-type]
    obs = Observed(preflight_error=refused)
    spec = ftj_spec(evaluation=OPENAI)
    first = compute_status(spec, 1, {}, Revision(1, "h1", True, ()), obs, now, {}, "x", wait_limit=600)
    assert (first["phase"], first["reason"]) == ("Pending", "SecretNotAllowed")
    found = {c["type"]: c for c in first["conditions"]}["DependenciesFound"]
    assert found["status"] == "False" and "db-password" in found["message"]
    done = compute_status(spec, 1, first, Revision(1, "h1", False, ()), obs, now + dt.timedelta(seconds=600), {}, "x",
                          wait_limit=600)
    assert (done["phase"], done["reason"]) == ("Failed", "SecretNotAllowed")
    assert {c["type"]: c for c in done["conditions"]}["DependenciesFound"]["status"] == "False"


class ServeSecretsKube(FakeKube):
    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.secrets = secrets

    async def secret_annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)


def test_modelserve_refuses_s3_keys_not_opted_in_before_any_child() -> None:
    kube = ServeSecretsKube({"s3": {}})
    rt, events = runtime(kube)
    b = body(s3=S3)
    status, requeue = step(rt, b, T0)
    assert (status["phase"], status["reason"]) == ("Failed", "SecretNotAllowed")
    assert status["message"].startswith("spec.s3.accessKeyIdSecretRef: Secret 's3' has not opted in"), status["message"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotAllowed")
    assert kube.objs == {}, "no child (and so no pod) before the Secret opts in"
    assert events == [("Warning", "SecretNotAllowed")] and requeue is not None
    # The owner opts the Secret in: the next pass deploys.
    kube.secrets["s3"] = {ALLOWED: "attacker.io"}
    step(rt, b, T0 + dt.timedelta(seconds=30))
    assert ("Deployment", "intents-blue") in kube.objs
