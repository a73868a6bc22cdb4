"""Pre-flight: every adapter is checked against the served base and its content digest before
vLLM starts, so a wrong or corrupt adapter never takes traffic.

For each adapter: ``adapter_config.json`` is there and readable; every file the manifest
(``tuneforge.json``) lists is present with its size and sha256; the recomputed content digest
equals the expected one (``adapters[i].digest``, else the manifest's own); its rank fits
``max_lora_rank``; and it was trained on this base (the manifest's lineage base digest against
the served base's digest, or, for adapters without lineage, PEFT's ``base_model_name_or_path``
against the base's URI and name). Each failure is one line naming the adapter and the field.

The base's digest covers the files that define the model (``digest.base_digest``), so a mirror
without the Hub snapshot's extras is the same base. Adapters from earlier trainers recorded the
digest of every file of the base; a lineage (or ``model.digest``) that matches that instead is
accepted too (computed only then). ``model.accept_lineage_mismatch`` turns a lineage mismatch
into a warning, for a platform engineer who knows the base was only re-saved.

A classifier adapter (``head: classifier``) also carries its label order: class index i is
``config.json``'s ``id2label[i]``, which must number the classes 0..n-1 and equal the lineage's
``labels`` in the manifest when both are there; the label names the server answers with come
from it. Its lineage must say it was trained with the classifier head (and an lm-head server
refuses a classifier adapter): a score layer served as a chat model, or LoRA weights of a
generative adapter served through a random score layer, would answer without any error.
Adapters served together on one classifier base share one label order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge_server.config import AdapterSpec, BaseModelSpec, ServerConfig
from tuneforge_server.digest import MANIFEST_NAME, base_digest, digest_of, file_entries, folder_digest, read_manifest

__all__ = [
    "BaseDigest", "CheckedAdapter", "PreflightError", "adapter_labels", "adapter_rank", "check_adapter", "check_base", "preflight",
]

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """An adapter or base model that must not be served; the message names it and the field."""


@dataclass(frozen=True)
class CheckedAdapter:
    """An adapter that passed pre-flight."""

    name: str
    path: Path
    rank: int
    digest: str
    lineage: dict[str, Any] = field(default_factory=dict)
    peft_base: str | None = None
    labels: tuple[str, ...] = ()
    """The label order of a classifier adapter (class index i is ``labels[i]``); empty for lm."""


def adapter_rank(adapter_config: dict[str, Any]) -> int:
    """The largest LoRA rank in a PEFT ``adapter_config.json`` (``r`` and any ``rank_pattern``)."""
    ranks = [int(adapter_config.get("r") or 0), *(int(v) for v in (adapter_config.get("rank_pattern") or {}).values())]
    return max(ranks)


def adapter_labels(folder: Path, lineage: dict[str, Any], who: str) -> tuple[str, ...]:
    """A classifier adapter's label order: ``config.json``'s id2label (classes 0..n-1), equal to
    the lineage's ``labels`` when both are there. ``who`` names the adapter in the error."""
    found: dict[str, list[str]] = {}
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            id2label = json.loads(cfg_path.read_text(encoding="utf-8")).get("id2label") or {}
            idx = sorted(int(k) for k in id2label)
        except (OSError, ValueError, AttributeError) as e:
            raise PreflightError(f"{who}: config.json id2label is unreadable: {e}") from None
        if idx != list(range(len(idx))):
            raise PreflightError(f"{who}: config.json id2label must number the classes 0..n-1, got {idx}")
        if idx:
            found["config.json id2label"] = [str(id2label[str(i)]) for i in idx]
    if lineage.get("labels"):
        found[f"{MANIFEST_NAME} lineage.labels"] = [str(x) for x in lineage["labels"]]
    if "config.json id2label" not in found:
        raise PreflightError(
            f"{who}: config.json with id2label is missing, so its class indices have no names "
            "(a classifier adapter written by tuneforge-train task.head classifier has one)"
        )
    (first, a), *rest = found.items()
    for other, b in rest:
        if a != b:
            raise PreflightError(f"{who}: {first} {a} differs from {other} {b}")
    if len(set(a)) != len(a):
        raise PreflightError(f"{who}: {first} repeats a label: {a}")
    return tuple(a)


def _check_head(spec: AdapterSpec, where: str, folder: Path, lineage: dict[str, Any], head: str) -> tuple[str, ...]:
    who = f"adapter {spec.name} ({where}.uri {spec.uri})"
    trained = lineage.get("head")
    if head == "lm":
        if trained == "classifier":
            raise PreflightError(f"{who} was trained with task.head classifier: serve it with head classifier (it has a score layer, not a language-model head)")
        return ()
    if trained is not None and trained != "classifier":
        raise PreflightError(f"{who} was trained with task.head {trained}: head classifier serves only classifier adapters")
    return adapter_labels(folder, lineage, who)


def _short(digest: str | None) -> str:
    return (digest or "none")[:19]


class BaseDigest:
    """The served base's digest (over the files that define the model) and, computed only when a
    digest does not match it, the whole-folder digest earlier trainers recorded."""

    def __init__(self, folder: Path, memo_dir: Path | None = None) -> None:
        self.folder = folder
        self.digest = base_digest(folder, memo_dir)
        self._whole: str | None = None

    def matches(self, expected: str) -> bool:
        if expected == self.digest:
            return True
        if self._whole is None:
            self._whole = folder_digest(self.folder)
        return expected == self._whole


def check_base(spec: BaseModelSpec, folder: Path, need_digest: bool, memo_dir: Path | None = None) -> BaseDigest | None:
    """The served base's digest (computed when it is to be compared; remembered in ``memo_dir``
    across container restarts), checked against ``model.digest`` when set."""
    if not (folder / "config.json").is_file():
        raise PreflightError(f"base model {spec.name} (model.uri {spec.uri}): no config.json in {folder}, not a Hugging Face model folder")
    if not (need_digest or spec.digest):
        return None
    digest = BaseDigest(folder, memo_dir)
    if spec.digest and not digest.matches(spec.digest):
        raise PreflightError(f"base model {spec.name}: content digest {_short(digest.digest)} differs from model.digest {_short(spec.digest)}")
    return digest


def _check_files(spec: AdapterSpec, where: str, manifest: dict[str, Any] | None, actual: list[dict[str, Any]]) -> None:
    if manifest is None:
        return
    have = {e["path"]: e for e in actual}
    for listed in manifest.get("files", []):
        got = have.get(listed["path"])
        if got is None:
            raise PreflightError(f"adapter {spec.name} ({where}.uri {spec.uri}): file {listed['path']} is missing")
        if got["size"] != listed.get("size") or got["sha256"] != listed.get("sha256"):
            raise PreflightError(
                f"adapter {spec.name} ({where}.uri {spec.uri}): file {listed['path']} does not match its digest "
                f"(sha256 {got['sha256'][:12]}, {got['size']} bytes; {MANIFEST_NAME} says {str(listed.get('sha256'))[:12]}, {listed.get('size')} bytes)"
            )


def _check_base_match(spec: AdapterSpec, where: str, base: BaseModelSpec, served: BaseDigest | None, lineage: dict[str, Any], peft_base: str | None) -> None:
    trained_on = lineage.get("baseModel") or {}
    problem = None
    if trained_on.get("digest") and served is not None:
        if not served.matches(trained_on["digest"]):
            problem = (f"adapter {spec.name} ({where}): trained on base {trained_on.get('uri')} ({_short(trained_on['digest'])}), "
                       f"but model.uri {base.uri} is {_short(served.digest)}")
    elif peft_base:
        known = {base.uri, base.name, base.uri.removeprefix("hf://")}
        if peft_base not in known and Path(peft_base).name not in {Path(k).name for k in known}:
            problem = (f"adapter {spec.name} ({where}): adapter_config.json base_model_name_or_path {peft_base!r} "
                       f"is not the served base (model.uri {base.uri}, model.name {base.name})")
    if problem is None:
        return
    if base.accept_lineage_mismatch:
        log.warning("Serving %s anyway: model.accept_lineage_mismatch is set (the adapter runs on weights it was not trained on)", problem)
        return
    raise PreflightError(f"{problem}; if this base is the same model re-saved, set model.accept_lineage_mismatch (ModelServe spec.baseModel.acceptLineageMismatch)")


def check_adapter(spec: AdapterSpec, index: int, folder: Path, max_rank: int | None, head: str = "lm") -> CheckedAdapter:
    """Check one fetched adapter folder on its own: files, digest, rank (see the module docstring)."""
    where = f"adapters[{index}]"
    try:
        peft_cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreflightError(f"adapter {spec.name} ({where}.uri {spec.uri}): adapter_config.json is missing, not a PEFT adapter folder") from None
    except (OSError, ValueError) as e:
        raise PreflightError(f"adapter {spec.name} ({where}.uri {spec.uri}): adapter_config.json is unreadable: {e}") from None
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as e:
        raise PreflightError(f"adapter {spec.name} ({where}.uri {spec.uri}): {MANIFEST_NAME} is unreadable: {e}") from None
    actual = file_entries(folder)
    _check_files(spec, where, manifest, actual)
    digest = digest_of(actual)
    expected, source = (spec.digest, f"{where}.digest") if spec.digest else ((manifest or {}).get("digest"), MANIFEST_NAME)
    if expected is None:
        raise PreflightError(
            f"adapter {spec.name} ({where}): no content digest to check it against; set {where}.digest "
            f"(the FineTuneJob's status.adapter.digest) or serve an adapter with {MANIFEST_NAME}"
        )
    if digest != expected:
        raise PreflightError(f"adapter {spec.name} ({where}.uri {spec.uri}): content digest {_short(digest)} differs from {source} {_short(expected)}")
    rank = adapter_rank(peft_cfg)
    if max_rank is not None and rank > max_rank:
        raise PreflightError(f"adapter {spec.name} ({where}): LoRA rank {rank} is above max_lora_rank {max_rank}")
    lineage = (manifest or {}).get("lineage") or {}
    labels = _check_head(spec, where, folder, lineage, head)
    return CheckedAdapter(name=spec.name, path=folder, rank=rank, digest=digest, lineage=lineage,
                          peft_base=peft_cfg.get("base_model_name_or_path"), labels=labels)


def preflight(cfg: ServerConfig, base_folder: Path, adapter_folders: list[Path]) -> list[CheckedAdapter]:
    """Check every adapter, then the base and that each adapter was trained on it; raises
    ``PreflightError`` at the first problem. The adapters' own checks come first: they are
    cheap, while the base's digest reads every byte of its weights."""
    checked = [
        check_adapter(spec, i, folder, cfg.max_lora_rank, cfg.head)
        for i, (spec, folder) in enumerate(zip(cfg.adapters, adapter_folders, strict=True))
    ]
    orders = {a.labels for a in checked}
    if len(orders) > 1:
        shown = "; ".join(f"{a.name}: {list(a.labels)}" for a in checked)
        raise PreflightError(f"adapters: classifier adapters served together must share one label order (the served base names the classes), got {shown}")
    need_base_digest = any((a.lineage.get("baseModel") or {}).get("digest") for a in checked)
    served = check_base(cfg.model, base_folder, need_base_digest, Path(cfg.cache_dir))
    for i, (spec, a) in enumerate(zip(cfg.adapters, checked, strict=True)):
        _check_base_match(spec, f"adapters[{i}]", cfg.model, served, a.lineage, a.peft_base)
    return checked
