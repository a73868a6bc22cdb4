"""Read the trainer's result summary from a terminated container's termination message.

The trainer writes one compact JSON object (schema ``tuneforge.dev/trainer-summary/v1``, see
``tuneforge_trainer.summary``) to /dev/termination-log. The operator reads it as plain data —
it does not import the trainer — and tolerates unknown keys so a newer trainer still parses.

Parsing also translates the trainer's Python spelling into the API's: artifact keys become
camelCase (``model_card`` -> ``modelCard``) and baselines are named by the spec's type
(``zero_shot`` -> ``zero-shot``, ``few_shot_8`` -> ``few-shot`` with ``shots: 8``,
``openai:<model>`` -> ``openai`` with ``model``), so status and spec join on one name. The
trainer names its outputs and sources by the mount paths it opened (``/mnt/pvc/<claim>/...``);
they become the URIs the user wrote (``pvc://<claim>/...``, see ``trainer_config.user_uri``),
which is what a ModelServe or a person outside the trainer pod can open.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from .trainer_config import user_uri


@dataclasses.dataclass(frozen=True)
class ClassScore:
    label: str
    f1: float


@dataclasses.dataclass(frozen=True)
class BaselineScore:
    name: str  # the spec's baseline type: zero-shot, few-shot, tfidf-logreg, openai
    accuracy: float | None
    macro_f1: float | None
    error: str | None
    shots: int | None = None  # few-shot
    model: str | None = None  # openai


@dataclasses.dataclass(frozen=True)
class AdapterVersion:
    """Which bytes a run produced (the trainer's ``adapter`` block)."""

    uri: str
    digest: str
    base_model_uri: str | None = None
    base_model_digest: str | None = None
    dataset_uri: str | None = None
    dataset_digest: str | None = None


@dataclasses.dataclass(frozen=True)
class Summary:
    """The fields of the trainer's summary that the operator uses."""

    status: str
    command: str
    message: str = ""
    accuracy: float | None = None
    macro_f1: float | None = None
    exact_match: float | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    n_eval: int | None = None
    steps: int | None = None
    worst_classes: tuple[ClassScore, ...] = ()
    baselines: tuple[BaselineScore, ...] = ()
    artifacts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    adapter: AdapterVersion | None = None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_summary(text: str | None) -> Summary | None:
    """The summary in a termination message, or None when the message is not one."""
    if not text or not text.strip().startswith("{"):
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or "status" not in raw:
        return None
    return Summary(
        status=str(raw["status"]),
        command=str(raw.get("command", "")),
        message=str(raw.get("message", "")),
        accuracy=_num(raw.get("accuracy")),
        macro_f1=_num(raw.get("macro_f1")),
        exact_match=_num(raw.get("exact_match")),
        eval_loss=_num(raw.get("eval_loss")),
        train_loss=_num(raw.get("train_loss")),
        n_eval=raw.get("n_eval") if isinstance(raw.get("n_eval"), int) else None,
        steps=raw.get("steps") if isinstance(raw.get("steps"), int) else None,
        worst_classes=tuple(
            ClassScore(label=str(c["label"]), f1=float(c["f1"]))
            for c in raw.get("worst_classes") or () if isinstance(c, dict) and _num(c.get("f1")) is not None
        ),
        baselines=tuple(_baseline(b) for b in raw.get("baselines") or () if isinstance(b, dict)),
        artifacts={camel_case(str(k)): user_uri(str(v)) for k, v in (raw.get("artifacts") or {}).items()},
        adapter=_adapter(raw.get("adapter")),
    )


def _adapter(raw: Any) -> AdapterVersion | None:
    if not isinstance(raw, dict) or not raw.get("uri") or not str(raw.get("digest", "")).startswith("sha256:"):
        return None
    base: dict[str, Any] = raw["base_model"] if isinstance(raw.get("base_model"), dict) else {}
    data: dict[str, Any] = raw["dataset"] if isinstance(raw.get("dataset"), dict) else {}
    return AdapterVersion(
        uri=user_uri(str(raw["uri"])), digest=str(raw["digest"]),
        base_model_uri=_user_uri(base.get("uri")), base_model_digest=base.get("digest"),
        dataset_uri=_user_uri(data.get("uri")), dataset_digest=data.get("digest"),
    )


def _user_uri(value: Any) -> str | None:
    return user_uri(str(value)) if value else None


def camel_case(key: str) -> str:
    """``model_card`` -> ``modelCard`` (Kubernetes API conventions); camelCase stays as it is."""
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# The trainer names baselines zero_shot, few_shot_<k>, tfidf_lr, openai:<model>; the spec by type.
_BASELINE_TYPE = {"zero_shot": "zero-shot", "few_shot": "few-shot", "tfidf_lr": "tfidf-logreg", "openai": "openai"}


def _baseline(raw: Mapping[str, Any]) -> BaselineScore:
    name = str(raw.get("name", ""))
    shots: int | None = None
    model: str | None = None
    kind = name
    if name.startswith("openai:"):
        kind, model = "openai", name[len("openai:"):]
    elif name.startswith("few_shot_") and name[len("few_shot_"):].isdigit():
        kind, shots = "few_shot", int(name[len("few_shot_"):])
    return BaselineScore(name=_BASELINE_TYPE.get(kind, name), accuracy=_num(raw.get("accuracy")),
                         macro_f1=_num(raw.get("macro_f1")), error=raw.get("error"), shots=shots, model=model)


def find_baseline(summary: Summary, baseline_type: str) -> BaselineScore | None:
    """The summary's score of the spec's baseline type, if it was scored."""
    return next((b for b in summary.baselines if b.name == baseline_type), None)
