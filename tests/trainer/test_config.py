"""Config validation: defaults, cross-field rules (messages name the field), overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneforge_trainer.config import (
    ConfigError,
    TrainerConfig,
    apply_overrides,
    config_json_schema,
    load_config,
    parse_config,
)

MINIMAL: dict[str, Any] = {
    "model": {"source": "/models/smollm2"},
    "dataset": {"source": "/data/train.csv"},
    "output": {"dir": "/out"},
}


def with_(**changes: Any) -> dict[str, Any]:
    """MINIMAL with dotted-path changes (``training__max_steps=3``)."""
    return apply_overrides(MINIMAL, {k.replace("__", "."): v for k, v in changes.items()})


def test_minimal_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.quantization.mode == "auto"
    assert cfg.training.shared_prefix and cfg.training.completion_only_loss and not cfg.training.padding_free
    assert cfg.data.eval_fraction == 0.1
    assert cfg.output.termination_message_path == "/dev/termination-log"
    assert cfg.effective_quantization(cuda=False) == "none"
    assert cfg.effective_quantization(cuda=True) == "4bit"
    assert cfg.work_dir() == "/out"
    assert cfg.progress_path() == "/out/progress.jsonl"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model__source": "http://x/y"}, "model.source"),
        ({"model__source": "hf://justname"}, "model.source"),
        ({"model__revision": "abc"}, "model.revision"),
        ({"dataset__source": "ftp://a/b"}, "dataset.source"),
        ({"dataset__prompt_template": "no placeholder"}, "dataset.prompt_template"),
        ({"dataset__prompt_template": "{text} {other}"}, "dataset.prompt_template"),
        ({"task__labels": ["a"]}, "task.labels"),
        ({"task__labels": ["a", "a"]}, "task.labels"),
        ({"data__eval_fraction": 0.7}, "data.eval_fraction"),
        ({"data__balance": "smote"}, "data.balance"),
        ({"lora__r": 0}, "lora.r"),
        ({"lora__target_modules": []}, "lora.target_modules"),
        ({"quantization__mode": "3bit"}, "quantization.mode"),
        ({"quantization": "4bit", "lora__enabled": False}, "quantization.mode"),
        ({"output__merge": True, "lora__enabled": False}, "output.merge"),
        ({"lora__enabled": False, "eval__baselines__zero_shot": True}, "eval.baselines.zero_shot"),
        ({"lora__enabled": False, "eval__baselines__few_shot": 8}, "eval.baselines.few_shot"),
        ({"training__learning_rate": -1}, "training.learning_rate"),
        ({"training__early_stopping_patience": 2}, "training.early_stopping_patience"),
        ({"training__load_best_model": True, "training__eval_steps": 10}, "training.load_best_model"),
        ({"training__load_best_model": True, "training__eval_steps": 10, "training__save_steps": 15}, "training.load_best_model"),
        ({"task__type": "generation", "eval__method": "loglik"}, "eval.method"),
        ({"data__eval_fraction": 0}, "data.eval_fraction"),
        ({"task__labels": ["a", "b"], "dataset__include_labels": ["c"]}, "dataset.include_labels"),
        ({"output__dir": "gs://bucket"}, "output.dir"),
        ({"training__lr": 1}, "training.lr"),
        ({"extra_top": 1}, "extra_top"),
        ({"training__label_smoothing": 0.1}, "training.label_smoothing"),  # the lm head's loss is the LM's
        ({"training__label_smoothing": 1.0, "task__head": "classifier"}, "training.label_smoothing"),
    ],
)
def test_invalid_configs_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(with_(**changes))
    msg = str(e.value)
    assert field in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "changes",
    [
        {"model__source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "model__revision": "main"},
        {"model__source": "s3://models/smollm2"},
        {"dataset__source": "s3://data/train.jsonl", "dataset__eval_source": "hf://datasets/org/name"},
        {"quantization": "8bit"},
        {"lora__target_modules": "all-linear"},
        {"task__type": "generation", "eval__method": "generate"},
        {"data__eval_fraction": 0, "dataset__eval_source": "/data/test.csv"},
        {"training__load_best_model": True, "training__eval_steps": 10, "training__save_steps": 20,
         "training__early_stopping_patience": 3},
        {"eval__baselines__openai": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        {"output__dir": "s3://bucket/run1"},
    ],
)
def test_valid_configs(changes: dict[str, Any]) -> None:
    TrainerConfig.model_validate(with_(**changes))


def test_quantization_shorthand_and_s3_work_dir() -> None:
    cfg = parse_config(with_(quantization="4bit", output__dir="s3://b/p"))
    assert cfg.quantization.mode == "4bit" and cfg.quantization.quant_type == "nf4"
    assert cfg.quantization.double_quant
    assert cfg.work_dir() == "/tmp/tuneforge-work"


@pytest.mark.parametrize(
    ("overrides", "path", "expected"),
    [
        (["training.max_steps=50"], ("training", "max_steps"), 50),
        (["training.learning_rate=1e-3"], ("training", "learning_rate"), 1e-3),
        (["training.padding_free=true"], ("training", "padding_free"), True),
        (["lora.target_modules=[q_proj, v_proj]"], ("lora", "target_modules"), ["q_proj", "v_proj"]),
        (["model.revision=null", "model.source=/m"], ("model", "revision"), None),
        ({"eval.baselines.few_shot": 4}, ("eval", "baselines", "few_shot"), 4),
        (["quantization.mode=8bit"], ("quantization", "mode"), "8bit"),
    ],
)
def test_overrides(overrides: Any, path: tuple[str, ...], expected: Any) -> None:
    cfg = parse_config(MINIMAL, overrides)
    node: Any = cfg
    for p in path:
        node = getattr(node, p)
    assert node == expected


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_config(MINIMAL, ["training.max_steps"])
    with pytest.raises(ConfigError, match="not a section"):
        parse_config(MINIMAL, ["model.source.x=1"])


def test_override_quantization_shorthand_section() -> None:
    cfg = parse_config(with_(quantization="4bit"), ["quantization.double_quant=false"])
    assert cfg.quantization.mode == "4bit" and not cfg.quantization.double_quant


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="model: Field required"):
        load_config(empty)


def test_load_config_with_overrides(tmp_path: Path) -> None:
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(p, ["training.max_steps=7"])
    assert cfg.training.max_steps == 7
    # The dump round-trips through the parser (what the operator renders).
    assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_every_field_has_a_description() -> None:
    schema = config_json_schema()
    missing = []
    for name, model in schema["$defs"].items():
        for field, spec in model.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{field}")
    for field, spec in schema["properties"].items():
        if not spec.get("description"):
            missing.append(field)
    assert not missing


def test_config_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tuneforge_trainer.config, tuneforge_trainer.summary, tuneforge_trainer.progress, "
        "tuneforge_trainer.data, tuneforge_trainer.cli, tuneforge_trainer.pipeline; "
        "bad = [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    from trainer_helpers import cli_env

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert r.returncode == 0, r.stdout + r.stderr


def test_full_fine_tune_turns_the_default_base_baseline_off() -> None:
    # zero_shot is on by default; with no adapter to switch off it would score the fine-tuned
    # model against itself, so without an explicit request it is simply off.
    cfg = parse_config(with_(lora__enabled=False))
    assert not cfg.eval.baselines.zero_shot and cfg.eval.baselines.few_shot == 0
    assert cfg.eval.baselines.tfidf_lr
    # and a config the trainer wrote back out parses to the same thing
    assert parse_config(cfg.model_dump(mode="json")) == cfg
    assert parse_config(with_(lora__enabled=False, eval__baselines__zero_shot=False)) == cfg


def test_label_smoothing_reaches_the_classifiers_training_arguments(tmp_path: Path) -> None:
    from tuneforge_trainer.modeling import device_settings
    from tuneforge_trainer.train import _training_args

    for head, smoothing, expected in (("classifier", 0.1, 0.1), ("classifier", None, 0.0), ("lm", None, 0.0)):
        training = {} if smoothing is None else {"label_smoothing": smoothing}
        cfg = parse_config(with_(task__head=head, **{f"training__{k}": v for k, v in training.items()}))
        args = _training_args(cfg, device_settings(cfg, cuda=False), str(tmp_path / head), has_eval=False, cuda=False)
        assert args.label_smoothing_factor == expected, (head, smoothing)


def test_epochs_and_learning_rate_default_by_head() -> None:
    assert (parse_config(MINIMAL).training.epochs, parse_config(MINIMAL).training.learning_rate) == (3.0, 2e-4)
    cls = parse_config(with_(task__head="classifier"))
    assert (cls.training.epochs, cls.training.learning_rate) == (2.0, 1e-3)
    assert parse_config(with_(task__head="classifier", training__epochs=4)).training.epochs == 4
