"""Test helpers: the FineTuneJob schema's defaults applied the way the apiserver applies them."""

from __future__ import annotations

import copy
import functools
import pathlib
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"


def load_crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((CRD_DIR / name).read_text())


def ftj_schema() -> dict[str, Any]:
    return copy.deepcopy(_ftj_schema())


@functools.lru_cache(maxsize=1)
def _ftj_schema() -> dict[str, Any]:
    # Parsed once per test process (PyYAML is slow on the whole CRD); callers get a copy.
    return load_crd("finetunejob.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill missing properties that have a default, then recurse."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, sub in schema["properties"].items():
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def defaulted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return apply_defaults(_ftj_schema()["properties"]["spec"], copy.deepcopy(spec))


MINIMAL_SPEC: dict[str, Any] = {
    "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "dataset": {"uri": "pvc://data/banking77/train.csv", "format": "csv", "textColumn": "text", "labelColumn": "category"},
    "output": {"uri": "pvc://artifacts/runs"},
}


def ftj_body(spec: dict[str, Any] | None = None, name: str = "intent", namespace: str = "team-a",
             status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "tuneforge.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": generation},
        "spec": defaulted_spec(spec if spec is not None else MINIMAL_SPEC),
        "status": status or {},
    }
