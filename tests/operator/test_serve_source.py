"""What a ModelServe serves, read from a FineTuneJob's status as data: the latest revision whose
gate Passed; a failing revision is never a candidate."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.serve.source import Lineage, ServedAdapter, ServedVersion, resolve
from tuneforge.serve.spec import parse_spec

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
BASE = {"uri": "s3://models/smollm2", "digest": "sha256:" + "b" * 64}


def ftj_status(revision: int, digest: str | None, gate: str, phase: str = "Succeeded", history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The shape compute_status writes (crds/finetunejob.yaml status)."""
    st: dict[str, Any] = {"phase": phase, "revision": revision, "gate": {"outcome": gate, "reasons": []},
                          "evaluation": {"accuracy": 0.9}, "artifacts": {"output": "s3://runs/x", "predictions": f"s3://runs/x/r{revision}/predictions.jsonl"}}
    if digest:
        st["adapter"] = {"uri": f"s3://runs/x/r{revision}/adapter", "digest": digest, "shortDigest": digest[7:19],
                         "revision": revision, "baseModel": BASE}
    if history:
        st["history"] = history
    return st


def hist(revision: int, digest: str, gate: str, phase: str = "Succeeded", **extra: Any) -> dict[str, Any]:
    return {"revision": revision, "specHash": "h", "phase": phase, "gate": gate, "accuracy": 0.8, "adapterDigest": digest, **extra}


SPEC = parse_spec({"adapter": {"fineTuneJob": "intents"}})


def test_current_passing_revision_is_served_with_lineage() -> None:
    r = resolve(SPEC, ftj_status(2, D2, "Passed"))
    v = r.version
    assert v is not None and r.reason == "FineTuneJobRevision"
    assert v.digest == D2 and v.adapters == (ServedAdapter("intents", "s3://runs/x/r2/adapter", D2),)
    assert (v.base_uri, v.base_digest) == (BASE["uri"], BASE["digest"])
    assert v.lineage == Lineage("intents", 2, 0.9) and v.eval_rows_uri == "s3://runs/x/r2/predictions.jsonl"
    assert ServedVersion.from_status(v.to_status()) == v


@pytest.mark.parametrize("status,want_digest,reason", [
    # r3 failed its gate: r2 (history) stays the candidate; its URI comes from what was served.
    (ftj_status(3, D3, "Failed", "Failed", [hist(2, D2, "Passed")]), D2, "FineTuneJobRevision"),
    # r3 is still training (no adapter yet): r2 stays.
    (ftj_status(3, None, "Pending", "Running", [hist(2, D2, "Passed")]), D2, "FineTuneJobRevision"),
    # nothing ever passed
    (ftj_status(2, D2, "Failed", "Failed", [hist(1, D1, "Failed", "Failed")]), None, "NoPassingRevision"),
    # a gate Pending at Succeeded is impossible, but an evaluation not done is never served
    (ftj_status(1, D1, "NotEvaluated", "Failed"), None, "NoPassingRevision"),
])
def test_a_failing_revision_is_never_a_candidate(status: dict[str, Any], want_digest: str | None, reason: str) -> None:
    served_r2 = resolve(SPEC, ftj_status(2, D2, "Passed")).version
    assert served_r2 is not None
    r = resolve(SPEC, status, known=[served_r2])
    assert r.reason == reason
    assert (r.version.digest if r.version else None) == want_digest
    if r.version:
        assert r.version.adapters[0].uri == "s3://runs/x/r2/adapter" and r.version.lineage == Lineage("intents", 2, 0.8)


def test_latest_passing_history_revision_without_uri_is_unresolved_not_an_older_one() -> None:
    status = ftj_status(4, None, "Pending", "Running", [hist(2, D2, "Passed"), hist(3, D3, "Passed")])
    served_r2 = resolve(SPEC, ftj_status(2, D2, "Passed")).version
    assert served_r2 is not None
    r = resolve(SPEC, status, known=[served_r2])
    assert r.version is None and r.reason == "AdapterUnresolved"
    # a FineTuneJob that records adapterUri in history resolves it
    status["history"][1]["adapterUri"] = "s3://runs/x/r3/adapter"
    r = resolve(SPEC, status, known=[served_r2])
    assert r.version is not None and r.version.digest == D3 and r.version.base_uri == BASE["uri"]


def test_pin_selects_an_earlier_passing_revision_by_short_digest() -> None:
    served_r1 = resolve(SPEC, ftj_status(1, D1, "Passed")).version
    assert served_r1 is not None
    status = ftj_status(2, D2, "Passed", history=[hist(1, D1, "Passed")])
    pinned = parse_spec({"adapter": {"fineTuneJob": "intents", "digest": D1[7:19]}})
    r = resolve(pinned, status, known=[served_r1])
    assert r.version is not None and r.version.digest == D1
    failing = ftj_status(2, D2, "Failed", "Failed", history=[hist(1, D1, "Passed")])
    pinned_to_failing = parse_spec({"adapter": {"fineTuneJob": "intents", "digest": D2}})
    assert resolve(pinned_to_failing, failing).reason == "PinnedDigestNotFound"


def test_missing_job_and_base_override() -> None:
    assert resolve(SPEC, None).reason == "FineTuneJobNotFound"
    mirrored = parse_spec({"adapter": {"fineTuneJob": "intents", "name": "intents-v"}, "baseModel": {"uri": "pvc://models/smollm2"}})
    v = resolve(mirrored, ftj_status(1, D1, "Passed")).version
    assert v is not None and v.base_uri == "pvc://models/smollm2" and v.adapters[0].name == "intents-v"


def test_explicit_adapters_version_is_order_independent() -> None:
    a = {"name": "a", "uri": "s3://r/a", "digest": D1}
    b = {"name": "b", "uri": "s3://r/b", "digest": D2}
    one = resolve(parse_spec({"baseModel": {"uri": "s3://m"}, "adapters": [a, b], "mode": "lora"})).version
    two = resolve(parse_spec({"baseModel": {"uri": "s3://m"}, "adapters": [b, a], "mode": "lora"})).version
    single = resolve(parse_spec({"baseModel": {"uri": "s3://m"}, "adapters": [a]})).version
    assert one is not None and two is not None and single is not None
    assert one.digest == two.digest and one.digest not in (D1, D2) and single.digest == D1


def test_one_adapter_shape_and_a_served_version_needs_every_digest() -> None:
    """The spec, a resolved version and a server plan share one adapter type; only a hand-built
    server plan may leave the digest out, never a version (its identity is the digests)."""
    from tuneforge.serve.server import ServerPlan
    from tuneforge.serve.spec import AdapterSource
    assert ServedAdapter is AdapterSource
    ServerPlan("n", "ns", "img", "s3://b", "b", adapters=(AdapterSource("a", "pvc://runs/a"),))
    with pytest.raises(ValueError, match="adapters need digests, b has none"):
        ServedVersion("s3://b", (ServedAdapter("a", "s3://r/a", D1), ServedAdapter("b", "s3://r/b")))
