"""What a ModelServe should serve: a :class:`ServedVersion`, resolved from the spec and, when it
follows a FineTuneJob, from that job's status read as plain data (this room never imports the
FineTuneJob code; the shape read here is crds/finetunejob.yaml's ``status``).

A FineTuneJob's status carries the current revision's adapter in full (``status.adapter``: URI,
digest, base model; ``status.gate.outcome``; ``status.evaluation.accuracy``;
``status.artifacts.predictions``, its scored held-out rows) and earlier revisions as
``status.history`` entries (revision, phase, gate, accuracy, adapterDigest, and — written by
current operators — adapterUri, baseModel with its digest, evalRowsUri). So:

- the candidate is the highest revision that Succeeded with gate ``Passed`` and has a digest; a
  revision whose gate Failed (or was not evaluated) is never a candidate, whatever its number;
- an earlier revision's URI, base and rows come from its history entry, else from a version this
  ModelServe served before (its own revision history, passed in as ``known``). A latest passing
  revision whose URI cannot be found yields no version (reason ``AdapterUnresolved``): the
  ModelServe keeps serving what it serves rather than falling back to an older revision, which
  would be a silent rollback;
- a version the pods could not read or the gate could not judge yields no version either, with
  the reason in status before any pod starts (``NotServable``: an adapter or lineage base that is
  not ``s3://`` or ``pvc://`` — a path inside the trainer pod, a hub id; ``NoGateRows``: a gate
  with neither ``gate.datasetUri`` nor the revision's scored rows). Such a resolution is
  ``blocked``: no wait fixes it, the spec or the FineTuneJob has to change.

A version's ``digest`` is the adapter's content digest for one adapter, or a digest over the
sorted ``name=digest`` lines for several (so the same set in another order is the same version);
it is what users name in promote/abort/retry. A rollout's identity is the digest **plus**
``template_hash``, a short hash of the rendered launcher config and pod template (Argo's
pod-template-hash; builders.template_hash, set by the reconcile): an edit that changes how a
color is shaped (apiKey, mode, gpus, dtype, base, adapter name or URI, resources, scheduling,
server image) is a new rollout of the same digest (:meth:`ServedVersion.same`).

A version's ``head`` says how it is served and gated: ``lm`` (chat completions) or
``classifier`` (vLLM's pooling runner and ``/classify``; the gate compares label names):
``spec.head`` for explicit adapters; a followed FineTuneJob's head is its ``spec.task.head``, read as data beside its status; the
server's pre-flight refuses an adapter whose lineage says otherwise, so a revision trained
before the head was changed fails to start instead of answering wrongly.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Mapping

from .spec import AdapterSource, ModelServeSpec

# One adapter of a served version: the name clients ask for, where it is, its digest (the
# room's one adapter shape: an explicit adapter of the spec, and what the server builders take).
ServedAdapter = AdapterSource

__all__ = ["HEADS", "Lineage", "Resolution", "ServedAdapter", "ServedVersion", "job_head", "resolve", "short_digest"]

HEADS = ("lm", "classifier")

Obj = Mapping[str, Any]


def short_digest(digest: str) -> str:
    """The 12 hex digits kubectl shows (also the version label's value: labels stop at 63 characters)."""
    return digest.removeprefix("sha256:")[:12]


def digest_matches(pin: str, digest: str) -> bool:
    """A pin (full digest or its 12-digit short form) names ``digest``."""
    return pin == digest or (len(pin) == 12 and short_digest(digest) == pin)


@dataclasses.dataclass(frozen=True)
class Lineage:
    """Where a FineTuneJob's adapter came from (absent for explicit adapters)."""

    job: str
    revision: int
    accuracy: float | None = None


@dataclasses.dataclass(frozen=True)
class ServedVersion:
    """Exactly what one color serves: base, adapters (with digests) and where they came from."""

    base_uri: str
    adapters: tuple[ServedAdapter, ...]
    base_digest: str | None = None
    lineage: Lineage | None = None
    eval_rows_uri: str | None = None
    """The FineTuneJob's scored held-out rows (``messages`` + ``target``), the gate's default data."""
    template_hash: str | None = None
    """Hash of the rendered launcher config and pod template (None until the reconcile renders it)."""
    head: str = "lm"
    """lm (chat completions) or classifier (pooling runner, /classify)."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"a served version's head must be one of {', '.join(HEADS)}, not {self.head!r}")
        # A version is identified by its adapters' digests, and the server pre-flights each one.
        missing = [a.name for a in self.adapters if not a.digest]
        if missing:
            raise ValueError(f"a served version's adapters need digests, {', '.join(missing)} has none")

    @property
    def digest(self) -> str:
        if len(self.adapters) == 1:
            return str(self.adapters[0].digest)
        lines = "".join(f"{a.name}={a.digest}\n" for a in sorted(self.adapters, key=lambda a: a.name))
        return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()

    @property
    def short(self) -> str:
        return short_digest(self.digest)

    def same(self, other: "ServedVersion | None") -> bool:
        """The same rollout: the same adapters' bytes rendered into the same color template."""
        return other is not None and other.digest == self.digest and other.template_hash == self.template_hash

    @property
    def display(self) -> str:
        """The short digest, with the template hash beside it when there is one."""
        return f"{self.short}/{self.template_hash}" if self.template_hash else self.short

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "digest": self.digest, "shortDigest": self.short,
            "baseModel": {k: v for k, v in {"uri": self.base_uri, "digest": self.base_digest}.items() if v},
            "adapters": [dataclasses.asdict(a) for a in self.adapters],
        }
        if self.lineage:
            out["lineage"] = {k: v for k, v in {"fineTuneJob": self.lineage.job, "revision": self.lineage.revision,
                                                "accuracy": self.lineage.accuracy}.items() if v is not None}
        if self.eval_rows_uri:
            out["evalRowsUri"] = self.eval_rows_uri
        if self.template_hash:
            out["templateHash"] = self.template_hash
        if self.head != "lm":
            out["head"] = self.head
        return out

    @classmethod
    def from_status(cls, raw: Obj) -> "ServedVersion":
        lin = raw.get("lineage")
        base = raw.get("baseModel") or {}
        return cls(
            base_uri=base.get("uri", ""), base_digest=base.get("digest"),
            adapters=tuple(ServedAdapter(a["name"], a["uri"], a["digest"]) for a in raw.get("adapters") or ()),
            lineage=Lineage(lin["fineTuneJob"], int(lin["revision"]), lin.get("accuracy")) if lin else None,
            eval_rows_uri=raw.get("evalRowsUri"), template_hash=raw.get("templateHash"),
            head=raw.get("head") or "lm",
        )


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The version to serve, or why there is none (``reason`` is a condition reason)."""

    version: ServedVersion | None
    reason: str
    message: str
    blocked: bool = False
    """No version, and none comes by waiting: the spec (or the FineTuneJob) has to change."""


def _explicit(spec: ModelServeSpec) -> Resolution:
    assert spec.base_model_uri is not None
    version = ServedVersion(spec.base_model_uri, spec.adapters,
                            spec.base_model_digest, head=spec.head or "lm")
    return Resolution(version, "Explicit", f"Serving {len(spec.adapters)} adapter(s) given in the spec, version {version.short}")


# What a server or gate pod can open that means the same there as where it was written: a
# FineTuneJob's paths are the trainer pod's, and nothing downloads from a hub at start.
READABLE = ("s3://", "pvc://")


def _unservable(spec: ModelServeSpec, job: str, best: Obj, version: ServedVersion) -> Resolution | None:
    """Why the pods could not serve, or the gate could not judge, ``version`` (None: they can)."""
    what = f"FineTuneJob {job} revision {best['revision']}"
    field = "status.adapter.uri" if best.get("current") else f"status.history[revision={best['revision']}].adapterUri"
    uri = version.adapters[0].uri
    if not uri.startswith(READABLE):
        return Resolution(None, "NotServable", (
            f"{what}: {field} {uri!r} is not s3:// or pvc://, so a server pod cannot read it (a path inside the "
            "trainer pod, written by an older operator, or a hub id); run the revision again or name the adapter "
            "in spec.adapters"), blocked=True)
    if not spec.base_model_uri and not version.base_uri.startswith(READABLE):
        return Resolution(None, "NotServable", (
            f"{what} was trained on base {version.base_uri!r}, which a server pod cannot read (nothing downloads "
            "from a hub at start); mirror it to s3:// or pvc:// and name it in spec.baseModel.uri"), blocked=True)
    gate = spec.rollout.gate
    if gate is not None and not gate.dataset_uri:
        rows = version.eval_rows_uri
        if not rows:
            return Resolution(None, "NoGateRows", (
                f"{what} records no scored held-out rows (status.artifacts.predictions) for the gate; "
                "set spec.rollout.gate.datasetUri"), blocked=True)
        if not rows.startswith(READABLE):
            return Resolution(None, "NoGateRows", (
                f"{what}: its scored rows {rows!r} are not s3:// or pvc://, so the gate pod cannot read them; "
                "set spec.rollout.gate.datasetUri"), blocked=True)
    return None


def _passed(entry: Obj) -> bool:
    return entry.get("phase") == "Succeeded" and entry.get("gate") == "Passed" and bool(entry.get("adapterDigest"))


def _candidates(ftj_status: Obj) -> list[dict[str, Any]]:
    """Every revision of the FineTuneJob that may be served, as flat entries, newest first."""
    out: list[dict[str, Any]] = []
    adapter = ftj_status.get("adapter") or {}
    current: dict[str, Any] = {
        "revision": adapter.get("revision") or ftj_status.get("revision"), "phase": ftj_status.get("phase"),
        "gate": (ftj_status.get("gate") or {}).get("outcome"), "adapterDigest": adapter.get("digest"),
        "adapterUri": adapter.get("uri"), "baseModel": adapter.get("baseModel") or {},
        "accuracy": (ftj_status.get("evaluation") or {}).get("accuracy"),
        "evalRowsUri": (ftj_status.get("artifacts") or {}).get("predictions"), "current": True,
    }
    if _passed(current) and current["revision"] is not None:
        out.append(current)
    for entry in ftj_status.get("history") or ():
        if _passed(entry) and entry.get("revision") is not None:
            out.append(dict(entry))
    # A revision number appears once; the current entry wins over a stale history copy.
    seen: set[int] = set()
    unique = []
    for e in sorted(out, key=lambda e: -int(e["revision"])):
        if int(e["revision"]) not in seen:
            seen.add(int(e["revision"]))
            unique.append(e)
    return unique


def job_head(ftj: Obj | None) -> str:
    """The head a FineTuneJob trains (``spec.task.head``; lm when unset or not a FineTuneJob)."""
    head = (((ftj or {}).get("spec") or {}).get("task") or {}).get("head") or "lm"
    return str(head) if head in HEADS else "lm"


def _from_job(spec: ModelServeSpec, ftj_status: Obj | None, known: Iterable[ServedVersion], head: str) -> Resolution:
    job = spec.fine_tune_job
    assert job is not None
    if ftj_status is None:
        return Resolution(None, "FineTuneJobNotFound", f"FineTuneJob {job} does not exist in this namespace")
    candidates = _candidates(ftj_status)
    if spec.pin_digest:
        candidates = [c for c in candidates if digest_matches(spec.pin_digest, c["adapterDigest"])]
        if not candidates:
            return Resolution(None, "PinnedDigestNotFound",
                              f"No revision of FineTuneJob {job} that passed its gate wrote adapter {spec.pin_digest}")
    if not candidates:
        return Resolution(None, "NoPassingRevision", f"FineTuneJob {job} has no revision that passed its gate yet")
    best = candidates[0]
    digest = best["adapterDigest"]
    seen = {v.digest: v for v in known}
    uri = best.get("adapterUri") or (seen[digest].adapters[0].uri if digest in seen and len(seen[digest].adapters) == 1 else None)
    if not uri:
        return Resolution(None, "AdapterUnresolved",
                          f"FineTuneJob {job} revision {best['revision']} passed its gate but its status no longer names the adapter's URI")
    # A history entry names no base: the version served for this digest knows it, else the newest
    # version of the same job does (safe: the server's pre-flight refuses an adapter trained on
    # another base, so a wrong guess never becomes ready and is rolled back).
    same_job = [v for v in seen.values() if v.lineage and v.lineage.job == job]
    prior = seen.get(digest) or (max(same_job, key=lambda v: v.lineage.revision if v.lineage else 0) if same_job else None)
    base = best.get("baseModel") or {}
    base_uri = spec.base_model_uri or base.get("uri") or (prior.base_uri if prior else None)
    if not base_uri:
        return Resolution(None, "BaseModelUnknown", f"FineTuneJob {job} revision {best['revision']} names no base model; set spec.baseModel.uri")
    version = ServedVersion(
        base_uri=base_uri, base_digest=spec.base_model_digest or base.get("digest") or (prior.base_digest if prior else None),
        adapters=(ServedAdapter(spec.served_name, uri, digest),),
        lineage=Lineage(job, int(best["revision"]), best.get("accuracy")),
        eval_rows_uri=best.get("evalRowsUri") or (seen[digest].eval_rows_uri if digest in seen else None),
        head=head,
    )
    refused = _unservable(spec, job, best, version)
    if refused is not None:
        return refused
    how = "pinned" if spec.pin_digest else "latest passing"
    return Resolution(version, "FineTuneJobRevision", f"FineTuneJob {job} revision {best['revision']} ({how}), adapter {version.short}")


def resolve(spec: ModelServeSpec, ftj_status: Obj | None = None, known: Iterable[ServedVersion] = (),
            head: str = "lm") -> Resolution:
    """The version the spec asks for. ``ftj_status``: the followed FineTuneJob's ``status`` (None
    when it does not exist); ``known``: versions this ModelServe has served (its history);
    ``head``: the FineTuneJob's head (:func:`job_head`)."""
    if spec.fine_tune_job is None:
        return _explicit(spec)
    return _from_job(spec, ftj_status, known, head)
