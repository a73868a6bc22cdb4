"""The operator's rendered config goes through the trainer's own parser (the contract)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from ftj_helpers import MINIMAL_SPEC, defaulted_spec
from tuneforge.finetune.builders.configmap import build_config_map
from tuneforge.finetune.builders.names import Owner
from tuneforge.finetune.spec import parse_spec
from tuneforge.finetune.trainer_config import render_trainer_config, resolve_uri

import tuneforge_trainer.config as trainer_config  # noqa: E402


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    for path, value in changes.items():
        node = spec
        parts = path.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return spec


CASES = {
    "minimal": MINIMAL_SPEC,
    "banking77-8": _with(
        dataset__includeLabels=["card_arrival", "lost_or_stolen_card"], dataset__maxRowsPerLabel=50,
        dataset__promptTemplate="Classify: {text}\nLabels: {labels}\nCategory:",
        training__maxSteps=50, training__learningRate=0.001,
        evaluation__baselines=[{"type": "zero-shot"}, {"type": "tfidf-logreg"}, {"type": "few-shot", "shots": 4}],
        evaluation__gate={"minAccuracy": 0.9, "mustBeatBaseline": "zero-shot"},
    ),
    "qlora-all-linear": _with(quantization="4bit", lora__targetModules=["all-linear"], output__mergeAdapter=True),
    "generation-chat-s3": _with(
        task={"type": "generation"}, dataset={"uri": "s3://data-bucket/chat.jsonl", "format": "chat"},
        output={"uri": "s3://artifacts/runs"},
        s3={"endpoint": "http://10.0.0.1:9000", "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
            "secretAccessKeySecretRef": {"name": "s3", "key": "secret"}},
        evaluation__baselines=[{"type": "openai", "url": "https://api.example.com/v1", "model": "m",
                                "apiKeySecretRef": {"name": "oa", "key": "k"}}],
    ),
    "best-model": _with(training__evalSteps=10, training__saveSteps=20, training__loadBestModel=True,
                        training__earlyStoppingPatience=3),
    "full-finetune": _with(lora__enabled=False, quantization="none", resources__gpus=0),
    "classifier-head": _with(task={"head": "classifier"}, evaluation__baselines=[{"type": "tfidf-logreg"}],
                             evaluation__gate={"mustBeatBaseline": "tfidf-logreg"}),
    "hf-pinned": _with(baseModel={"uri": "hf://org/model", "revision": "abc123", "tokenSecretRef": {"name": "hf", "key": "token"}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainer_parser_accepts_rendered_config(case: str) -> None:
    spec = parse_spec(defaulted_spec(CASES[case]))
    rendered = render_trainer_config(spec, "team-a", "intent", "uid-1", 3)
    cfg = trainer_config.parse_config(rendered)
    assert cfg.output.dir.endswith("/team-a/intent/uid-1/r3")  # the uid: a namesake never resumes it
    assert cfg.output.termination_message_path == "/dev/termination-log"


def test_config_map_round_trips_through_trainer_loader(tmp_path: Any) -> None:
    spec = parse_spec(defaulted_spec(CASES["banking77-8"]))
    cm = build_config_map(Owner("intent", "team-a", "u1"), spec, 2)
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = trainer_config.load_config(path)
    assert cfg.dataset.source == "/mnt/pvc/data/banking77/train.csv"
    assert cfg.dataset.format == "csv" and cfg.dataset.label_column == "category"
    assert cfg.dataset.include_labels == ["card_arrival", "lost_or_stolen_card"]
    assert cfg.training.max_steps == 50 and cfg.training.learning_rate == 0.001
    assert cfg.eval.baselines.zero_shot and cfg.eval.baselines.tfidf_lr and cfg.eval.baselines.few_shot == 4
    assert cfg.output.dir == "/mnt/pvc/artifacts/runs/team-a/intent/u1/r2"
    assert cm["immutable"] is True


def test_mapping_details() -> None:
    spec = parse_spec(defaulted_spec(CASES["generation-chat-s3"]))
    out = render_trainer_config(spec, "ns", "gen", "uid-1", 1)
    assert out["dataset"]["format"] == "chat_jsonl"
    assert out["output"]["dir"] == "s3://artifacts/runs/ns/gen/uid-1/r1"
    assert out["eval"]["baselines"] == {
        "zero_shot": False, "few_shot": 0, "tfidf_lr": False,
        "openai": {"base_url": "https://api.example.com/v1", "model": "m", "api_key_env": "OPENAI_API_KEY"},
    }
    # Unset baselines leave the trainer's defaults in force.
    assert "baselines" not in render_trainer_config(parse_spec(defaulted_spec(MINIMAL_SPEC)), "n", "m", "uid-1", 1)["eval"]
    assert yaml.safe_load(yaml.safe_dump(out)) == out


def test_classifier_head_reaches_the_trainer_with_its_learning_rate() -> None:
    """task.head classifier arrives as the trainer's head; the learning rate left unset is the
    classifier's (1e-3), and one set in the spec wins."""
    cfg = trainer_config.parse_config(
        render_trainer_config(parse_spec(defaulted_spec(CASES["classifier-head"])), "ns", "c", "uid-1", 1))
    assert cfg.task.head == "classifier" and cfg.training.learning_rate == 1e-3
    assert not cfg.eval.baselines.zero_shot and cfg.eval.baselines.tfidf_lr
    spec = _with(task={"head": "classifier"}, training__learningRate=0.0005)
    cfg = trainer_config.parse_config(render_trainer_config(parse_spec(defaulted_spec(spec)), "ns", "c", "uid-1", 1))
    assert cfg.training.learning_rate == 0.0005


@pytest.mark.parametrize("uri,expected", [
    ("pvc://data/x/y.csv", "/mnt/pvc/data/x/y.csv"),
    ("pvc://data", "/mnt/pvc/data"),
    ("pvc://data/", "/mnt/pvc/data"),
    ("s3://b/k", "s3://b/k"),
    ("hf://o/n", "hf://o/n"),
    ("/models/m", "/models/m"),
])
def test_resolve_uri(uri: str, expected: str) -> None:
    assert resolve_uri(uri) == expected


# --- §6 one contract: every CRD spec leaf that reaches the trainer, mapped and defaulted alike ---

import dataclasses  # noqa: E402
import functools  # noqa: E402
import typing  # noqa: E402

from pydantic import BaseModel  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

from ftj_helpers import ftj_schema  # noqa: E402

# The barest valid spec: nothing set that has a trainer default of its own.
BARE: dict[str, Any] = {
    "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "dataset": {"uri": "pvc://data/train.csv"},
    "output": {"uri": "pvc://artifacts/runs"},
}
OPENAI = {"type": "openai", "url": "https://api.example.com/v1", "model": "m"}


@dataclasses.dataclass(frozen=True)
class Maps:
    """The CRD leaf ``crd`` (set to ``value``, with ``companions`` set first so the spec is valid)
    reaches the trainer config as ``trainer`` == ``expected``. ``[]`` in ``crd`` sets the key in
    every item of the list the companions give."""

    crd: str
    value: Any
    trainer: str
    expected: Any
    companions: tuple[tuple[str, Any], ...] = ()


def _m(crd: str, value: Any, trainer: str, expected: Any = None, **companions: Any) -> Maps:
    return Maps(crd, value, trainer, value if expected is None else expected,
                tuple((k.replace("__", "."), v) for k, v in companions.items()))


MAPPED: list[Maps] = [
    _m("baseModel.uri", "pvc://models/smollm2", "model.source", "/mnt/pvc/models/smollm2"),
    _m("baseModel.revision", "abc123", "model.revision"),
    _m("hub.cacheUri", "pvc://hf-cache/hub", "hub.cache_dir", "/mnt/pvc/hf-cache/hub"),
    _m("hub.offline", True, "hub.offline"),
    _m("dataset.uri", "configmap://small/train.csv", "dataset.source", "/mnt/configmap/small/train.csv"),
    _m("dataset.format", "chat", "dataset.format", "chat_jsonl"),
    _m("dataset.evalUri", "pvc://data/test.csv", "dataset.eval_source", "/mnt/pvc/data/test.csv"),
    _m("dataset.textColumn", "utterance", "dataset.text_column"),
    _m("dataset.labelColumn", "category", "dataset.label_column"),
    _m("dataset.csvBadRows", "drop", "dataset.csv_bad_rows"),
    _m("dataset.promptTemplate", "Intent of: {text}\nAnswer:", "dataset.prompt_template"),
    _m("dataset.systemPrompt", "You label banking messages.", "dataset.system_prompt"),
    _m("dataset.includeLabels", ["a", "b"], "dataset.include_labels"),
    _m("dataset.maxRowsPerLabel", 50, "dataset.max_rows_per_label"),
    _m("dataset.maxEvalRowsPerLabel", 20, "dataset.max_eval_rows_per_label"),
    _m("task.type", "generation", "task.type"),
    _m("task.labels", ["a", "b", "c"], "task.labels"),
    _m("task.head", "classifier", "task.head"),
    _m("dataPrep.evalFraction", 0.2, "data.eval_fraction"),
    _m("dataPrep.validationFraction", 0.25, "data.validation_fraction"),
    _m("dataPrep.trainOnValidation", True, "data.train_on_validation"),
    _m("dataPrep.dedup", "exact", "data.dedup"),
    _m("dataPrep.balance", "undersample", "data.balance"),
    _m("dataPrep.balanceCap", 5, "data.balance_cap", dataPrep__balance="oversample"),
    _m("dataPrep.leakThreshold", 0.2, "data.leak_threshold"),
    _m("lora.enabled", False, "lora.enabled", quantization="none"),
    _m("lora.r", 8, "lora.r"),
    _m("lora.alpha", 64, "lora.alpha"),
    _m("lora.dropout", 0.1, "lora.dropout"),
    _m("lora.targetModules", ["q_proj", "v_proj"], "lora.target_modules"),
    _m("lora.targetModules", ["all-linear"], "lora.target_modules", "all-linear"),
    _m("quantization", "4bit", "quantization.mode"),
    _m("training.epochs", 1.5, "training.epochs"),
    _m("training.maxSteps", 50, "training.max_steps"),
    _m("training.learningRate", 0.001, "training.learning_rate"),
    _m("training.lrScheduler", "linear", "training.lr_scheduler"),
    _m("training.warmupRatio", 0.1, "training.warmup_ratio"),
    _m("training.weightDecay", 0.01, "training.weight_decay"),
    _m("training.labelSmoothing", 0.1, "training.label_smoothing", task__head="classifier"),
    _m("training.maxGradNorm", 0.5, "training.max_grad_norm"),
    _m("training.batchSize", 4, "training.batch_size"),
    _m("training.gradientAccumulationSteps", 4, "training.gradient_accumulation_steps"),
    _m("training.maxSeqLength", 256, "training.max_seq_length"),
    _m("training.paddingFree", True, "training.padding_free"),
    _m("training.completionOnlyLoss", False, "training.completion_only_loss"),
    _m("training.sharedPrefix", False, "training.shared_prefix"),
    _m("training.gradientCheckpointing", True, "training.gradient_checkpointing"),
    _m("training.precision", "bf16", "training.precision"),
    _m("training.strategy", "fsdp", "training.strategy", resources__gpus=2),
    _m("training.evalSteps", 10, "training.eval_steps"),
    _m("training.saveSteps", 20, "training.save_steps"),
    _m("training.saveTotalLimit", 3, "training.save_total_limit"),
    _m("training.loggingSteps", 1, "training.logging_steps"),
    _m("training.earlyStoppingPatience", 3, "training.early_stopping_patience", training__loadBestModel=True),
    _m("training.loadBestModel", True, "training.load_best_model"),
    _m("training.seed", 7, "training.seed"),
    _m("training.seed", 7, "data.seed"),
    _m("evaluation.method", "generate", "eval.method"),
    _m("evaluation.maxNewTokens", 32, "eval.max_new_tokens"),
    _m("evaluation.maxRows", 100, "eval.max_rows"),
    _m("evaluation.batchSize", 8, "eval.batch_size"),
    _m("evaluation.baselines[].type", "few-shot", "eval.baselines.few_shot", 8, evaluation__baselines=[{}]),
    _m("evaluation.baselines[].type", "tfidf-logreg", "eval.baselines.zero_shot", False, evaluation__baselines=[{}]),
    _m("evaluation.baselines[].type", "zero-shot", "eval.baselines.tfidf_lr", False, evaluation__baselines=[{}]),
    _m("evaluation.baselines[].type", "openai", "eval.baselines.openai.model", "m",
       evaluation__baselines=[{k: v for k, v in OPENAI.items() if k != "type"}]),
    _m("evaluation.baselines[].shots", 4, "eval.baselines.few_shot", evaluation__baselines=[{"type": "few-shot"}]),
    _m("evaluation.baselines[].url", "http://llm.internal:8000/v1", "eval.baselines.openai.base_url",
       evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].model", "gpt-x", "eval.baselines.openai.model", evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].maxRetries", 2, "eval.baselines.openai.max_retries", evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].concurrency", 2, "eval.baselines.openai.concurrency", evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].timeoutSeconds", 90, "eval.baselines.openai.timeout_s", 90.0,
       evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].maxRows", 50, "eval.baselines.openai.max_rows", evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].inputTokenPrice", 2.5, "eval.baselines.openai.input_token_price",
       evaluation__baselines=[OPENAI]),
    _m("evaluation.baselines[].outputTokenPrice", 10, "eval.baselines.openai.output_token_price",
       evaluation__baselines=[OPENAI]),
    _m("output.uri", "pvc://runs/tuning", "output.dir", "/mnt/pvc/runs/tuning/team-a/intent/uid-1/r3"),
    _m("output.mergeAdapter", True, "output.merge"),
]

# CRD spec leaves that never reach the trainer config, and where they go instead.
OPERATOR_ONLY: dict[str, str] = {
    "suspend": "the training Job's spec.suspend",
    "baseModel.tokenSecretRef.name": "env HF_TOKEN (secretKeyRef); the config names only the variable",
    "baseModel.tokenSecretRef.key": "env HF_TOKEN (secretKeyRef)",
    "evaluation.baselines[].apiKeySecretRef.name": "env OPENAI_API_KEY (secretKeyRef)",
    "evaluation.baselines[].apiKeySecretRef.key": "env OPENAI_API_KEY (secretKeyRef)",
    "evaluation.gate.minAccuracy": "the operator's gate (gate.py)",
    "evaluation.gate.minClassF1": "the operator's gate",
    "evaluation.gate.mustBeatBaseline": "the operator's gate",
    "evaluation.gate.baselineMargin": "the operator's gate",
    "resources.gpus": "the training pod's resources",
    "resources.gpuResourceName": "the training pod's resources",
    "resources.nodes": "the training Job's pods (Indexed Job) and torchrun's --nnodes",
    "resources.cpu": "the training pod's resources",
    "resources.memory": "the training pod's resources",
    "resources.sharedMemory": "the /dev/shm emptyDir",
    "scheduling.queueName": "the Kueue label on the training Job",
    "scheduling.priorityClassName": "the training pod",
    "scheduling.nodeSelector": "the training pod",
    "scheduling.tolerations[].key": "the training pod",
    "scheduling.tolerations[].operator": "the training pod",
    "scheduling.tolerations[].value": "the training pod",
    "scheduling.tolerations[].effect": "the training pod",
    "scheduling.tolerations[].tolerationSeconds": "the training pod",
    "scheduling.activeDeadlineSeconds": "the training Job",
    "scheduling.backoffLimit": "the training Job",
    "scheduling.maxRestarts": "the operator (gang restarts after a disruption)",
    "s3.endpoint": "env AWS_ENDPOINT_URL",
    "s3.region": "env AWS_DEFAULT_REGION",
    "s3.accessKeyIdSecretRef.name": "env AWS_ACCESS_KEY_ID (secretKeyRef)",
    "s3.accessKeyIdSecretRef.key": "env AWS_ACCESS_KEY_ID (secretKeyRef)",
    "s3.secretAccessKeySecretRef.name": "env AWS_SECRET_ACCESS_KEY (secretKeyRef)",
    "s3.secretAccessKeySecretRef.key": "env AWS_SECRET_ACCESS_KEY (secretKeyRef)",
    # spec.search: the operator's trials (search.py); each trial's config is this renderer's
    # output for the spec with the trial's settings applied (tests/operator/test_search.py).
    "search.strategy": "the operator's search (which trials)",
    "search.maxTrials": "the operator's search (how many trials)",
    "search.parallelism": "the operator's search (trials at once)",
    "search.seed": "the operator's search (strategy random's draw)",
    "search.space.head": "task.head of a trial's config",
    "search.space.learningRate": "training.learning_rate of a trial's config",
    "search.space.maxSteps": "training.max_steps of a trial's config",
    "search.space.epochs": "training.epochs of a trial's config",
    "search.space.loraRank": "lora.r of a trial's config",
}

# Mapped leaves whose unset value is not the trainer's default, on purpose.
DEFAULT_EXCEPTIONS = {
    # Listing few-shot without shots means 8 examples (the CRD says so; a schema default would be
    # set on every baseline of the list); the trainer's few_shot 0 means "no few-shot baseline".
    "evaluation.baselines[].shots": 8,
    # Unset in the CRD and the trainer alike: the trainer resolves it by task.head at load
    # (config.DEFAULT_LEARNING_RATE), 2e-4 for the default head lm.
    "training.learningRate": 2e-4,
    # Likewise (config.DEFAULT_EPOCHS): 3 for the default head lm, 2 for the classifier.
    "training.epochs": 3.0,
}


@functools.lru_cache(maxsize=1)
def _spec_schema() -> dict[str, Any]:
    return ftj_schema()["properties"]["spec"]


@functools.lru_cache(maxsize=None)
def crd_leaves() -> dict[str, dict[str, Any]]:
    return _leaves(_spec_schema(), "")


def _leaves(node: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """Every leaf of the spec schema by dotted path ('[]' for list items); maps of strings are leaves."""
    out: dict[str, dict[str, Any]] = {}
    if node.get("properties"):
        for key, sub in node["properties"].items():
            out.update(_leaves(sub, f"{path}.{key}" if path else key))
    elif node.get("type") == "array" and (node.get("items") or {}).get("properties"):
        out.update(_leaves(node["items"], f"{path}[]"))
    else:
        out[path] = node
    return out


def _required(path: str) -> bool:
    node, parts = _spec_schema(), path.replace("[]", ".[]").split(".")
    for i, part in enumerate(parts):
        if part == "[]":
            node = node["items"]
            continue
        if i == len(parts) - 1:
            return part in (node.get("required") or ())
        node = node["properties"][part]
    return False


def _set(spec: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition("[].")
    parts = head.split(".")
    node = spec
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if rest:
        for item in node[parts[-1]]:
            _set(item, rest, value)
    else:
        node[parts[-1]] = copy.deepcopy(value)


def _spec_for(case: Maps, with_leaf: bool = True) -> dict[str, Any]:
    spec = copy.deepcopy(BARE)
    for path, value in case.companions:
        _set(spec, path, value)
    if with_leaf:
        _set(spec, case.crd, case.value)
    return spec


def _rendered(raw: dict[str, Any], defaulted: bool = True) -> trainer_config.TrainerConfig:
    spec = parse_spec(defaulted_spec(raw) if defaulted else copy.deepcopy(raw))
    return trainer_config.parse_config(render_trainer_config(spec, "team-a", "intent", "uid-1", 3))


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def trainer_default(path: str) -> Any:
    """The trainer's own default of a config field (PydanticUndefined when it is required)."""
    model: type[BaseModel] = trainer_config.TrainerConfig
    *parents, last = path.split(".")
    for part in parents:
        annotation = model.model_fields[part].annotation
        model = next(a for a in (typing.get_args(annotation) or (annotation,))
                     if isinstance(a, type) and issubclass(a, BaseModel))
    return model.model_fields[last].get_default(call_default_factory=True)


def test_every_crd_spec_leaf_is_mapped_or_operator_only() -> None:
    leaves = set(crd_leaves())
    mapped = {c.crd for c in MAPPED}
    assert not mapped & set(OPERATOR_ONLY), "a leaf is either mapped or operator-only"
    unknown = leaves - mapped - set(OPERATOR_ONLY)
    assert not unknown, f"CRD spec fields neither mapped to the trainer config nor listed as operator-only: {sorted(unknown)}"
    stale = (mapped | set(OPERATOR_ONLY)) - leaves
    assert not stale, f"table entries for fields the CRD does not have: {sorted(stale)}"


@pytest.mark.parametrize("case", MAPPED, ids=[f"{c.crd}->{c.trainer}" for c in MAPPED])
def test_crd_leaf_reaches_the_trainer(case: Maps) -> None:
    """A non-default value in the CRD field arrives in the trainer's parsed config."""
    default = trainer_default(case.trainer)
    if default is not PydanticUndefined:
        assert case.expected != default, f"{case.crd}: pick a value the trainer does not default to"
    node = crd_leaves()[case.crd]
    if "default" in node:
        assert case.value != node["default"], f"{case.crd}: pick a value the CRD does not default to"
    assert _get(_rendered(_spec_for(case)), case.trainer) == case.expected


def _has_default(c: Maps) -> bool:
    """Whether the field may be left unset and the trainer has a default to compare with (openai's
    url and model are required where they apply, by the CRD's CEL and the trainer alike)."""
    return not _required(c.crd) and trainer_default(c.trainer) is not PydanticUndefined


@pytest.mark.parametrize("case", [c for c in MAPPED if _has_default(c)], ids=[c.crd for c in MAPPED if _has_default(c)])
def test_crd_default_is_the_trainers_default(case: Maps) -> None:
    """Left unset, a field gets the CRD's default (or none), and the trainer sees its own default:
    the CRD and the trainer config never disagree, and the operator adds no default of its own."""
    got = _get(_rendered(_spec_for(case, with_leaf=False)), case.trainer)
    want = DEFAULT_EXCEPTIONS.get(case.crd, trainer_default(case.trainer))
    assert got == want, f"{case.crd} unset -> {case.trainer} = {got!r}, trainer default {want!r}"


@pytest.mark.parametrize("case", [c for c in MAPPED if "enum" in crd_leaves()[c.crd] and "[]" not in c.crd],
                         ids=lambda c: c.crd)
def test_every_enum_value_of_a_mapped_field_parses(case: Maps) -> None:
    for value in crd_leaves()[case.crd]["enum"]:
        _rendered(_spec_for(dataclasses.replace(case, value=value)))


@pytest.mark.parametrize("raw", [BARE, MINIMAL_SPEC] + [CASES[k] for k in sorted(CASES)])
def test_operator_fallbacks_agree_with_the_crd(raw: dict[str, Any]) -> None:
    """A spec the apiserver has not defaulted renders the same trainer config: whatever fallback
    parse_spec keeps is the CRD's default, not a second opinion (it once said jsonl, the CRD auto)."""
    assert _rendered(raw, defaulted=False) == _rendered(raw)


def _example(name: str) -> tuple[str, dict[str, Any]]:
    from ftj_helpers import ROOT
    text = (ROOT / "examples" / name).read_text()
    return text, yaml.safe_load(text)["spec"]


def _comments(text: str) -> str:
    return " ".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)


@pytest.mark.parametrize("name", ["finetunejob-banking77.yaml", "finetunejob-banking77-lm.yaml"])
def test_examples_hold_validation_rows_apart_from_the_test_rows(name: str) -> None:
    """The demo's example and its lm-head variant: settings are to be chosen on validation rows,
    so each holds validation rows out of the training pool explicitly, keeps the test rows
    (evalUri) apart, and says how its settings were chosen - not by the test accuracy."""
    text, raw = _example(name)
    assert raw["dataPrep"]["validationFraction"] > 0
    cfg = _rendered(raw)
    assert cfg.data.validation_fraction == raw["dataPrep"]["validationFraction"]
    assert cfg.dataset.eval_source and cfg.dataset.eval_source != cfg.dataset.source
    assert not cfg.training.load_best_model and not cfg.training.early_stopping_patience
    comments = _comments(text)
    assert "validation" in comments and "one standard error" in comments and "test rows" in comments
    assert "lands at" not in comments  # an old justification quoted test accuracy


def test_the_demo_trains_the_classifier_head_on_every_row_with_its_defaults() -> None:
    """examples/finetunejob-banking77.yaml (`make demo`): the classifier head with the epochs and
    learning rate chosen per head on validation rows (bench/head_defaults.py), every training row
    of its intents, and the measurement against TF-IDF on held-out intent sets quoted."""
    text, raw = _example("finetunejob-banking77.yaml")
    cfg = _rendered(raw)
    assert cfg.task.head == "classifier" and cfg.dataset.max_rows_per_label is None
    assert "maxSteps" not in raw["training"] and "learningRate" not in raw["training"]
    assert (cfg.training.epochs, cfg.training.learning_rate) == (2.0, 1e-3)
    comments = _comments(text)
    assert "bench/head_defaults.py" in comments and "bench/accuracy.py" in comments and "--intent-seed" in comments
    # The baselines the e2e test compares against stay on.
    assert {b["type"] for b in raw["evaluation"]["baselines"]} == {"zero-shot", "tfidf-logreg"}


def test_the_lm_example_takes_the_sweeps_steps_and_learning_rate() -> None:
    """examples/finetunejob-banking77-lm.yaml: the lm head's maxSteps and learningRate are
    bench/hparam_sweep.py's choice (the one-standard-error rule on validation rows)."""
    text, raw = _example("finetunejob-banking77-lm.yaml")
    cfg = _rendered(raw)
    assert "bench/hparam_sweep.py" in _comments(text) and "validation accuracy" in _comments(text)
    assert cfg.task.head == "lm" and cfg.training.max_steps == raw["training"]["maxSteps"] == 100
    assert cfg.training.learning_rate == 1e-3


@pytest.mark.parametrize(("head", "epochs", "lr"), [("lm", 3.0, 2e-4), ("classifier", 2.0, 1e-3)])
def test_unset_epochs_and_learning_rate_are_the_heads_defaults(head: str, epochs: float, lr: float) -> None:
    """The CRD leaves training.epochs and learningRate unset, so the trainer's per-head defaults
    (chosen on validation rows) apply to what the operator renders."""
    cfg = _rendered(_with(task__head=head))
    assert (cfg.training.epochs, cfg.training.learning_rate) == (epochs, lr)


def test_the_price_reaches_the_trainer_for_its_model_card(tmp_path: Any) -> None:
    """The operator's price of the job's GPU resource, with the run's GPUs (all nodes), goes into
    the trainer config; without a price (or GPUs) there is no cost section and the trainer's
    defaults (no cost on the card) hold."""
    raw = copy.deepcopy(MINIMAL_SPEC)
    raw["resources"] = {"gpus": 4, "nodes": 2}
    spec = parse_spec(defaulted_spec(raw))
    cm = build_config_map(Owner("intent", "team-a", "u1"), spec, 1, gpu_hour_price=2.5, currency="EUR")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    cfg = trainer_config.load_config(path)
    assert (cfg.cost.gpus, cfg.cost.gpu_hour_price, cfg.cost.currency) == (8, 2.5, "EUR")
    plain = trainer_config.parse_config(render_trainer_config(parse_spec(defaulted_spec(MINIMAL_SPEC)), "n", "m", "u", 1))
    assert (plain.cost.gpus, plain.cost.gpu_hour_price) == (0, None)
    cpu = copy.deepcopy(MINIMAL_SPEC)
    cpu["resources"] = {"gpus": 0}
    assert "cost" not in render_trainer_config(parse_spec(defaulted_spec(cpu)), "n", "m", "u", 1, gpu_hour_price=2.5)
