"""Render the trainer's config (``tuneforge_trainer.config.TrainerConfig``) from a FineTuneJob.

Pure: spec in, plain dict out. The operator does not import the trainer's config at run time
(its image carries only the trainer's event definitions, ``trainer_events``);
tests/operator/test_operator_trainer_config.py feeds this output through the trainer's own
parser, which is the contract check. Paths here must agree with the pod layout
built in ``builders/job.py`` (PVC mounts under PVC_ROOT, ConfigMap sources under CONFIG_MAP_ROOT,
the config file at CONFIG_PATH).
"""

from __future__ import annotations

from typing import Any, Mapping

from .spec import FineTuneJobSpec

API_VERSION = "tuneforge.dev/trainer-config/v1"
CONFIG_DIR = "/etc/tuneforge"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
PVC_ROOT = "/mnt/pvc"
CONFIG_MAP_ROOT = "/mnt/configmap"
TERMINATION_LOG = "/dev/termination-log"

# Environment variables the trainer reads its secrets from (filled by secretKeyRef only).
ENV_HF_TOKEN = "HF_TOKEN"
ENV_OPENAI_KEY = "OPENAI_API_KEY"

_FORMATS = {"auto": "auto", "jsonl": "instruction_jsonl", "csv": "csv", "chat": "chat_jsonl", "hf": "hf_dataset"}


def resolve_uri(uri: str) -> str:
    """Map a spec URI to what the trainer opens: pvc://claim/path and configmap://name/key become
    their mount paths (the key is a file of the mounted ConfigMap; its extension tells the format)."""
    if uri.startswith("configmap://"):
        name, _, key = uri[len("configmap://"):].partition("/")
        return f"{CONFIG_MAP_ROOT}/{name}/{key}"
    if uri.startswith("pvc://"):
        claim, _, rest = uri[len("pvc://"):].partition("/")
        return f"{PVC_ROOT}/{claim}" + (f"/{rest.strip('/')}" if rest.strip("/") else "")
    return uri


def user_uri(path: str) -> str:
    """The inverse of :func:`resolve_uri`: a path the trainer reports under a mount root becomes
    the URI the user wrote (``/mnt/pvc/<claim>/rest`` -> ``pvc://<claim>/rest``,
    ``/mnt/configmap/<name>/<key>`` -> ``configmap://<name>/<key>``); anything else (s3://, hf://,
    a path of the image) is already in the user's terms. The trainer only ever sees mount paths,
    so status — which ModelServes and people read, outside the trainer pod — is mapped back here,
    next to the one definition of the mount layout."""
    for root, scheme in ((PVC_ROOT, "pvc://"), (CONFIG_MAP_ROOT, "configmap://")):
        if path.startswith(f"{root}/") and path[len(root) + 1:].strip("/"):
            return scheme + path[len(root) + 1:].rstrip("/")
    return path


def run_path(namespace: str, name: str, uid: str, revision: int) -> str:
    """``<namespace>/<name>/<uid>/r<revision>``: the uid keeps a re-created namesake (a GitOps
    replace: delete, then create with the same name) from resuming the old run's checkpoints or
    overwriting its artifacts — both live under this path."""
    return f"{namespace}/{name}/{uid}/r{revision}"


def output_location(spec: FineTuneJobSpec, namespace: str, name: str, uid: str, revision: int) -> str:
    """Where a revision's artifacts (and checkpoints) go, as the trainer sees it."""
    return f"{resolve_uri(spec.output_uri).rstrip('/')}/{run_path(namespace, name, uid, revision)}"


def artifact_uri(spec: FineTuneJobSpec, namespace: str, name: str, uid: str, revision: int) -> str:
    """The same location in the user's terms (pvc:// or s3://), for status."""
    return f"{spec.output_uri.rstrip('/')}/{run_path(namespace, name, uid, revision)}"


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _baselines(spec: FineTuneJobSpec) -> dict[str, Any] | None:
    if spec.baselines is None:
        return None  # the trainer's defaults
    out: dict[str, Any] = {"zero_shot": False, "few_shot": 0, "tfidf_lr": False}
    for b in spec.baselines:
        if b.type == "zero-shot":
            out["zero_shot"] = True
        elif b.type == "few-shot":
            out["few_shot"] = b.shots or 8
        elif b.type == "tfidf-logreg":
            out["tfidf_lr"] = True
        elif b.type == "openai":
            out["openai"] = _drop_none({
                "base_url": b.url, "model": b.model, "api_key_env": ENV_OPENAI_KEY,
                "max_retries": b.max_retries, "concurrency": b.concurrency,
                "timeout_s": float(b.timeout_seconds) if b.timeout_seconds is not None else None,
                "max_rows": b.max_rows,
                "input_token_price": b.input_token_price, "output_token_price": b.output_token_price,
            })
    return out


# spec.training key -> trainer training key. No defaults here: the CRD defaults the spec, and a
# key it lacks leaves the trainer's default (tests/operator/test_operator_trainer_config.py checks
# the two agree).
_TRAINING = {
    "epochs": "epochs", "maxSteps": "max_steps", "learningRate": "learning_rate", "lrScheduler": "lr_scheduler",
    "warmupRatio": "warmup_ratio", "weightDecay": "weight_decay", "labelSmoothing": "label_smoothing", "maxGradNorm": "max_grad_norm",
    "batchSize": "batch_size", "gradientAccumulationSteps": "gradient_accumulation_steps",
    "maxSeqLength": "max_seq_length", "paddingFree": "padding_free", "completionOnlyLoss": "completion_only_loss",
    "sharedPrefix": "shared_prefix", "gradientCheckpointing": "gradient_checkpointing", "precision": "precision",
    "evalSteps": "eval_steps", "saveSteps": "save_steps", "saveTotalLimit": "save_total_limit",
    "loggingSteps": "logging_steps", "earlyStoppingPatience": "early_stopping_patience",
    "loadBestModel": "load_best_model", "seed": "seed", "strategy": "strategy",
}


def trial_location(spec: FineTuneJobSpec, namespace: str, name: str, uid: str, revision: int, trial: int) -> str:
    """Where a search trial's artifacts and checkpoints go (as the trainer sees it): beside the
    revision's own, under ``trials/<index>``, so no trial resumes or overwrites another's."""
    return f"{output_location(spec, namespace, name, uid, revision)}/trials/{trial}"


def render_trainer_config(spec: FineTuneJobSpec, namespace: str, name: str, uid: str, revision: int,
                          trial: int | None = None, selection: Mapping[str, Any] | None = None,
                          gpu_hour_price: float | None = None, currency: str = "USD") -> dict[str, Any]:
    """The trainer config for one revision of a FineTuneJob, or for one trial of its search
    (``trial``; ``spec`` then has the trial's settings applied, ``search.apply_params``): a trial
    is scored on the validation rows only (``eval.split: validation``), without baselines, and
    writes under its own folder. ``selection``: a searched revision's winner retrain
    (``search.winner_selection``): it is refit on the training and validation rows — the
    standard step after model selection; the test rows stay untouched — unless the spec selects
    on validation rows itself (loadBestModel, early stopping), and the model card lists the
    trials. ``gpu_hour_price`` (the operator's price of the job's GPU resource) puts the run's
    cost on the model card."""
    t = spec.training
    training = _drop_none({ours: t.get(theirs) for theirs, ours in _TRAINING.items()})
    config: dict[str, Any] = {
        "api_version": API_VERSION,
        "run_name": f"{namespace}/{name}/r{revision}",
        "owner": {"kind": "FineTuneJob", "namespace": namespace, "name": name, "uid": uid, "revision": revision},
        "model": _drop_none({
            "source": resolve_uri(spec.base_model_uri),
            "revision": spec.base_model_revision,
            "token_env": ENV_HF_TOKEN,
        }),
        "dataset": _drop_none({
            "source": resolve_uri(spec.dataset_uri),
            "format": _FORMATS[spec.dataset_format],
            "eval_source": resolve_uri(spec.eval_uri) if spec.eval_uri else None,
            "text_column": spec.text_column,
            "label_column": spec.label_column,
            "csv_bad_rows": spec.csv_bad_rows,
            "prompt_template": spec.prompt_template,
            "system_prompt": spec.system_prompt,
            "include_labels": list(spec.include_labels) if spec.include_labels else None,
            "max_rows_per_label": spec.max_rows_per_label,
            "max_eval_rows_per_label": spec.max_eval_rows_per_label,
        }),
        "task": _drop_none({
            "type": spec.task_type,
            "labels": list(spec.labels) if spec.labels else None,
            "head": spec.task_head,
        }),
        "data": _drop_none({
            "dedup": spec.dedup,
            "eval_fraction": spec.eval_fraction,
            "validation_fraction": spec.validation_fraction,
            "train_on_validation": spec.train_on_validation or None,
            "balance": spec.balance,
            "balance_cap": spec.balance_cap,
            "leak_threshold": spec.leak_threshold,
            "seed": t.get("seed"),
        }),
        "lora": {
            "enabled": spec.lora_enabled,
            "r": spec.lora_r,
            "alpha": spec.lora_alpha,
            "dropout": spec.lora_dropout,
            "target_modules": (
                "all-linear" if list(spec.lora_target_modules) == ["all-linear"] else list(spec.lora_target_modules)
            ),
        },
        "quantization": {"mode": spec.quantization},
        "training": training,
        "eval": _drop_none({
            "method": spec.eval_method,
            "max_new_tokens": spec.max_new_tokens,
            "max_rows": spec.max_eval_rows,
            "batch_size": spec.eval_batch_size,
            "baselines": _baselines(spec),
        }),
        "output": {
            "dir": output_location(spec, namespace, name, uid, revision),
            # Checkpoints carry it: a resume never continues another run's (or namesake's) checkpoint.
            "run_id": f"{uid}/r{revision}",
            "merge": spec.merge_adapter,
            "termination_message_path": TERMINATION_LOG,
        },
        "hub": _drop_none({
            "cache_dir": resolve_uri(spec.hub_cache_uri) if spec.hub_cache_uri else None,
            "offline": spec.hub_offline,
        }),
    }
    if selection is not None:
        config["selection"] = dict(selection)
        if not (t.get("loadBestModel") or t.get("earlyStoppingPatience")):
            config["data"]["train_on_validation"] = True
    if gpu_hour_price is not None and spec.gpus:
        config["cost"] = {"gpus": spec.gpus * spec.nodes, "gpu_hour_price": gpu_hour_price, "currency": currency}
    if trial is not None:
        # A trial is scored on the validation rows, so it never trains on them (the refit is the winner's).
        config["data"].pop("train_on_validation", None)
        config["run_name"] = f"{namespace}/{name}/r{revision}/trial-{trial}"
        config["eval"].update(split="validation", baselines={"zero_shot": False, "few_shot": 0, "tfidf_lr": False})
        config["output"].update(dir=trial_location(spec, namespace, name, uid, revision, trial),
                                run_id=f"{uid}/r{revision}/trial-{trial}", merge=False)
    return config
