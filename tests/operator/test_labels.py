"""tuneforge.labels: the common labels of every child, and the full label sets each room's
builders put on their children (pinned: selectors, watches and users' queries read them)."""

from __future__ import annotations

from typing import Any

import pytest

from test_operator_builders import OWNER, SETTINGS, spec_of
from test_serve_builders import CTX, SPEC, V1
from tuneforge.finetune.builders.configmap import build_config_map
from tuneforge.finetune.builders.job import build_trainer_job
from tuneforge.labels import child_labels
from tuneforge.serve.builders import build_active_service, build_color_deployment, build_gate_job, build_version_config_map
from tuneforge.serve.builders import GatePod
from tuneforge.serve.spec import parse_spec

COMMON = {"app.kubernetes.io/managed-by": "tuneforge"}


@pytest.mark.parametrize("app,owner,role,want", [
    ("tuneforge-trainer", {"tuneforge.dev/finetunejob": "a"}, None,
     {**COMMON, "app.kubernetes.io/name": "tuneforge-trainer", "tuneforge.dev/finetunejob": "a"}),
    ("tuneforge-server", {"tuneforge.dev/modelserve": "m"}, "gate",
     {**COMMON, "app.kubernetes.io/name": "tuneforge-server", "tuneforge.dev/modelserve": "m", "tuneforge.dev/role": "gate"}),
    ("x", {"app.kubernetes.io/name": "y"}, "", {**COMMON, "app.kubernetes.io/name": "y"}),  # the owner's win; no empty role
])
def test_child_labels(app: str, owner: dict[str, str], role: str | None, want: dict[str, str]) -> None:
    assert child_labels(app, owner, role) == want


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"]["labels"]  # type: ignore[no-any-return]


GATED = parse_spec({"adapter": {"fineTuneJob": "intents"}, "rollout": {"gate": {"minAccuracy": 0.8, "datasetUri": "pvc://d/r.jsonl"}}})
SERVER = {**COMMON, "app.kubernetes.io/name": "tuneforge-server", "tuneforge.dev/modelserve": "intents"}
TRAINER = {**COMMON, "app.kubernetes.io/name": "tuneforge-trainer", "tuneforge.dev/finetunejob": "intent", "tuneforge.dev/revision": "4"}


@pytest.mark.parametrize("build,want", [
    (lambda: _labels(build_trainer_job(OWNER, spec_of(), 4, SETTINGS)), {**TRAINER, "tuneforge.dev/role": "train"}),
    (lambda: _labels(build_config_map(OWNER, spec_of(), 4)), TRAINER),
    (lambda: _labels(build_color_deployment(CTX, SPEC, "green", V1, 1)),
     {**SERVER, "app.kubernetes.io/instance": "intents-green", "tuneforge.dev/color": "green", "tuneforge.dev/version": V1.short}),
    (lambda: _labels(build_version_config_map(CTX, SPEC, V1)), {**SERVER, "tuneforge.dev/version": V1.short}),
    (lambda: _labels(build_active_service(CTX, "blue")), {**SERVER, "tuneforge.dev/role": "active"}),
    (lambda: _labels(build_gate_job(CTX, GATED, V1, GatePod("op:1"))),
     {**SERVER, "app.kubernetes.io/name": "tuneforge-gate", "tuneforge.dev/role": "gate", "tuneforge.dev/version": V1.short}),
], ids=["train-job", "ftj-configmap", "color-deployment", "version-configmap", "active-service", "gate-job"])
def test_every_child_keeps_its_labels(build: Any, want: dict[str, str]) -> None:
    assert build() == want
