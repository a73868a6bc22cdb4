"""The CRD's CEL rules for spec.search, evaluated with cel-python on defaulted specs (as
tests/operator/test_classifier_head_crd.py does for task.head): every rule at the spec, search,
search.space and item level. The grid's message cannot name the count: a messageExpression
building it was refused by the apiserver's cost estimate (over 100x the budget). The cluster test
(tests/operator/test_search_cluster.py) sends searches through the real apiserver."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ftj_helpers import MINIMAL_SPEC, defaulted_spec, ftj_schema


def _rules() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path of self from the spec, rule) for every rule that can fire on a search spec."""
    spec = ftj_schema()["properties"]["spec"]
    search = spec["properties"]["search"]
    space = search["properties"]["space"]
    out = [((), r) for r in spec["x-kubernetes-validations"]]
    out += [(("task",), r) for r in spec["properties"]["task"]["x-kubernetes-validations"]]
    out += [(("search",), r) for r in search["x-kubernetes-validations"]]
    out += [(("search", "space"), r) for r in space["x-kubernetes-validations"]]
    out += [(("search", "space", "epochs", "[]"), r) for r in space["properties"]["epochs"]["items"]["x-kubernetes-validations"]]
    return out


def _nodes(spec: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
    nodes = [spec]
    for part in path:
        nodes = [x for n in nodes for x in (n if part == "[]" else [n[part]] if isinstance(n, dict) and part in n else [])]
    return nodes


def failed_rules(raw: dict[str, Any]) -> list[str]:
    import celpy

    spec = defaulted_spec(raw)
    env = celpy.Environment()
    failed = []
    for path, rule in _rules():
        program = env.program(env.compile(rule["rule"]))
        for node in _nodes(spec, path):
            activation = {"self": celpy.json_to_cel(node)}
            if not program.evaluate(activation):
                failed.append(rule["message"])
    return failed


# Numbers are written as floats: the apiserver types a `type: number` field as a CEL double
# whatever its JSON spelling, where cel-python would read 1 as an int.
def spec_with(**parts: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec.update(parts)
    return spec


HEADS = {"space": {"head": ["lm", "classifier"]}}


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"search": HEADS}, None),
        ({"search": {"space": {"learningRate": [5e-4, 1e-3, 2e-3], "maxSteps": [50, 100]}, "maxTrials": 6, "parallelism": 3}}, None),
        ({"search": {"strategy": "random", "maxTrials": 3, "space": {"learningRate": [1e-4, 5e-4, 1e-3], "loraRank": [8, 16]}}}, None),
        ({"search": {"space": {"epochs": [1.0, 2.5]}}}, None),
        ({"search": {"space": {}}}, "search.space needs at least one of head, learningRate, maxSteps, epochs, loraRank"),
        ({"search": {"space": {"maxSteps": [50], "epochs": [2.0]}}}, "search.space takes maxSteps or epochs, not both"),
        ({"search": {"space": {"epochs": [0.0]}}}, "must be at least 0.01"),
        ({"search": {**HEADS, "parallelism": 3, "maxTrials": 2}}, "search.parallelism must be at most search.maxTrials"),
        ({"search": {"space": {"learningRate": [1e-4, 5e-4, 1e-3], "loraRank": [8, 16]}, "maxTrials": 4}},
         "search.strategy grid runs every combination of space (the product of the lists' sizes): that must be at most search.maxTrials"),
        ({"search": HEADS, "task": {"type": "generation"}}, "search.space.head classifier applies to classification tasks only"),
        ({"search": HEADS, "lora": {"enabled": False}, "quantization": "none"}, "search.space.head classifier saves its score layer"),
        ({"search": HEADS, "evaluation": {"method": "loglik"}}, "search.space.head classifier is scored by its score layer"),
        # The classifier scores the base-model baselines through the base's own LM head: accepted.
        ({"search": HEADS, "evaluation": {"baselines": [{"type": "zero-shot"}]}}, None),
        ({"search": HEADS, "evaluation": {"baselines": [{"type": "tfidf-logreg"}]}}, None),
        ({"search": {"space": {"head": ["lm"]}}, "evaluation": {"baselines": [{"type": "zero-shot"}]}}, None),
        ({"search": {"space": {"loraRank": [8, 16]}}, "lora": {"enabled": False}, "quantization": "none"},
         "search.space.loraRank sets lora.r"),
        ({"search": {"space": {"epochs": [1.0, 2.0]}}, "training": {"maxSteps": 100}}, "search.space.epochs has no effect while training.maxSteps is set"),
        ({"search": HEADS, "dataPrep": {"validationFraction": 0}}, "search trials are scored on the validation rows"),
        ({"search": HEADS, "resources": {"nodes": 2, "gpus": 1}}, "search trials run as one pod each"),
        # A refit trains on the validation rows: nothing may select on them afterwards.
        ({"dataPrep": {"trainOnValidation": True}}, None),
        ({"dataPrep": {"trainOnValidation": True}, "training": {"loadBestModel": True}},
         "dataPrep.trainOnValidation trains on the validation rows that training.loadBestModel selects on"),
        ({"dataPrep": {"trainOnValidation": False}, "training": {"loadBestModel": True}}, None),
        ({"task": {"type": "classification", "head": "classifier"}, "training": {"labelSmoothing": 0.1}}, None),
        ({"training": {"labelSmoothing": 0.1}}, "training.labelSmoothing applies to task.head classifier"),
        ({"training": {"labelSmoothing": 0.0}}, None),
    ],
)
def test_search_cel_rules(parts: dict[str, Any], message: str | None) -> None:
    failed = failed_rules(spec_with(**parts))
    if message is None:
        assert failed == []
    else:
        assert len(failed) == 1 and failed[0].startswith(message), failed


def test_search_defaults() -> None:
    search = defaulted_spec(spec_with(search=HEADS))["search"]
    assert {k: search[k] for k in ("strategy", "maxTrials", "parallelism", "seed")} == {
        "strategy": "grid", "maxTrials": 8, "parallelism": 1, "seed": 0}


def test_the_search_example_is_valid_and_makes_four_trials_over_both_heads() -> None:
    import pathlib

    import yaml

    from tuneforge.finetune.search import apply_params, trial_params
    from tuneforge.finetune.spec import parse_spec
    from tuneforge.finetune.trainer_config import render_trainer_config
    from tuneforge_trainer.config import parse_config

    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "finetunejob-banking77-search.yaml"
    raw = yaml.safe_load(example.read_text())["spec"]
    assert failed_rules(raw) == []
    spec = parse_spec(defaulted_spec(raw))
    trials = trial_params(spec.search)
    assert trials == [{"head": "lm"}, {"head": "classifier"}]
    for i, params in enumerate(trials):
        cfg = parse_config(render_trainer_config(apply_params(spec, params), "demo", "banking77-search", "u", 1, trial=i))
        assert (cfg.task.head, cfg.training.max_steps, cfg.eval.split) == (params["head"], 100, "validation")
