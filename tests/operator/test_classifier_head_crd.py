"""The CRD's CEL rules for task.head, evaluated with cel-python on defaulted specs (the
apiserver's cel-go agrees on these plain comparisons and list macros): classifier only for
classification tasks, with LoRA and evaluation.method auto; the zero/few-shot baselines are
allowed (the trainer scores the base model's own language-model head). The trainer's config
refuses the same combinations (tests/trainer/test_classifier.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec, ftj_schema


def _rules() -> list[tuple[str, dict[str, Any], str]]:
    """(path of self, rule, message) for the spec-level and task-level rules."""
    spec = ftj_schema()["properties"]["spec"]
    out = [("", r, r["message"]) for r in spec["x-kubernetes-validations"]]
    out += [("task", r, r["message"]) for r in spec["properties"]["task"]["x-kubernetes-validations"]]
    return out


def failed_rules(raw: dict[str, Any]) -> list[str]:
    import celpy

    spec = defaulted_spec(raw)
    env = celpy.Environment()
    failed = []
    for path, rule, message in _rules():
        program = env.program(env.compile(rule["rule"]))
        node = spec[path] if path else spec
        if not program.evaluate({"self": celpy.json_to_cel(node)}):
            failed.append(message)
    return failed


def spec_with(**parts: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec.update(parts)
    return spec


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"task": {"head": "classifier"}}, None),
        ({"task": {"head": "classifier"}, "evaluation": {"baselines": [{"type": "tfidf-logreg"}]}}, None),
        ({"task": {"head": "lm", "type": "generation"}}, None),
        ({"task": {"head": "classifier", "type": "generation"}}, "task.head classifier applies to classification tasks only"),
        ({"task": {"head": "classifier"}, "lora": {"enabled": False}, "quantization": "none"},
         "task.head classifier saves its score layer"),
        ({"task": {"head": "classifier"}, "evaluation": {"method": "loglik"}}, "evaluation.method loglik/generate"),
        # The base-model baselines score the base model's own language-model head, loaded beside
        # the classifier by the trainer: allowed with either head.
        ({"task": {"head": "classifier"}, "evaluation": {"baselines": [{"type": "tfidf-logreg"}, {"type": "zero-shot"}]}},
         None),
        ({"task": {"head": "classifier"}, "evaluation": {"baselines": [{"type": "few-shot", "shots": 4}]}}, None),
        ({"evaluation": {"baselines": [{"type": "zero-shot"}]}}, None),  # the lm head keeps them
    ],
)
def test_task_head_cel_rules(parts: dict[str, Any], message: str | None) -> None:
    failed = failed_rules(spec_with(**parts))
    if message is None:
        assert failed == []
    else:
        assert len(failed) == 1 and failed[0].startswith(message), failed
