"""Pre-flight: a wrong or corrupt adapter is refused before vLLM starts, with a message that
names the adapter and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge_server.config import parse_config
from tuneforge_server.digest import MANIFEST_NAME, base_digest, folder_digest
from tuneforge_server.preflight import PreflightError, adapter_rank, preflight

from server_helpers import add_hub_extras, make_adapter, make_base


def setup(tmp_path: Path, **over: Any) -> tuple[Any, Path, Path, str]:
    base = make_base(tmp_path / "base")
    digest = make_adapter(tmp_path / "a", base, rank=over.pop("rank", 16))
    adapter = {"name": "intents", "uri": str(tmp_path / "a"), "digest": digest, **over.pop("adapter", {})}
    cfg = parse_config({"cache_dir": str(tmp_path / "cache"), "model": {"uri": str(base), "name": "smollm2"}, "adapters": [adapter], **over})
    return cfg, base, tmp_path / "a", digest


def test_a_good_adapter_passes_with_its_rank_digest_and_lineage(tmp_path: Path) -> None:
    cfg, base, folder, digest = setup(tmp_path)
    [checked] = preflight(cfg, base, [folder])
    assert (checked.name, checked.rank, checked.digest) == ("intents", 16, digest)
    assert checked.lineage["baseModel"]["digest"] == base_digest(base)


def test_an_adapter_trained_on_the_full_snapshot_passes_on_a_filtered_mirror(tmp_path: Path) -> None:
    """SRV-3: the trainer had the Hub snapshot (README, original/*.pth); the server has a mirror
    with only the model's files. Same base: served."""
    snapshot = add_hub_extras(make_base(tmp_path / "snapshot"))
    digest = make_adapter(tmp_path / "a", snapshot)
    mirror = make_base(tmp_path / "mirror")
    cfg = parse_config({"cache_dir": str(tmp_path / "cache"), "model": {"uri": str(mirror), "name": "smollm2"}, "adapters": [{"name": "intents", "uri": str(tmp_path / "a"), "digest": digest}]})
    assert preflight(cfg, mirror, [tmp_path / "a"])[0].digest == digest


def test_adapters_written_before_the_model_file_digest_still_pass(tmp_path: Path) -> None:
    """Earlier trainers put the digest of every file of the base in the lineage (and the
    ModelServe may pin that in model.digest): the served folder is checked against it too."""
    base = add_hub_extras(make_base(tmp_path / "base"))
    old = folder_digest(base)
    digest = make_adapter(tmp_path / "a", None, lineage={"baseModel": {"uri": "s3://models/base", "digest": old}})
    cfg = parse_config({"cache_dir": str(tmp_path / "cache"), "model": {"uri": str(base), "name": "smollm2", "digest": old},
                        "adapters": [{"name": "intents", "uri": str(tmp_path / "a"), "digest": digest}]})
    assert preflight(cfg, base, [tmp_path / "a"])[0].digest == digest


def test_accept_lineage_mismatch_serves_an_adapter_of_another_base_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, base, folder, _ = setup(tmp_path)
    other_base(tmp_path, folder)
    digest = folder_digest(folder)
    cfg = cfg.model_copy(update={"adapters": [cfg.adapters[0].model_copy(update={"digest": digest})]})
    with pytest.raises(PreflightError, match="accept_lineage_mismatch"):  # the refusal names the way out
        preflight(cfg, base, [folder])
    accepting = parse_config({**cfg.model_dump(), "model": {**cfg.model.model_dump(), "accept_lineage_mismatch": True}})
    with caplog.at_level("WARNING"):
        assert preflight(accepting, base, [folder])[0].digest == digest
    assert "trained on base s3://models/base" in caplog.text and "accept_lineage_mismatch" in caplog.text


def flip_byte(folder: Path) -> None:
    p = folder / "adapter_model.safetensors"
    data = bytearray(p.read_bytes())
    data[7] ^= 0xFF
    p.write_bytes(bytes(data))


def other_base(tmp_path: Path, folder: Path) -> None:
    other = make_base(tmp_path / "other")
    (other / "model.safetensors").write_bytes(b"\x02" * 4096)
    make_adapter(folder, other)  # re-written: trained on another base


@pytest.mark.parametrize(
    ("break_it", "over", "message"),
    [
        (lambda t, f: flip_byte(f), {}, r"adapter intents \(adapters\[0\]\.uri .*\): file adapter_model.safetensors does not match its digest"),
        (lambda t, f: (f / "adapter_model.safetensors").unlink(), {}, r"adapters\[0\].*file adapter_model.safetensors is missing"),
        (lambda t, f: (f / "adapter_config.json").unlink(), {}, r"adapters\[0\].*adapter_config.json is missing"),
        (lambda t, f: (f / MANIFEST_NAME).write_text("{not json"), {}, rf"adapters\[0\].*{MANIFEST_NAME} is unreadable"),
        (other_base, {}, r"adapter intents \(adapters\[0\]\): trained on base s3://models/base .* but model.uri"),
        (lambda t, f: None, {"max_lora_rank": 8}, r"adapter intents \(adapters\[0\]\): LoRA rank 16 is above max_lora_rank 8"),
        (lambda t, f: None, {"adapter": {"digest": "sha256:" + "0" * 64}}, r"content digest sha256:.* differs from adapters\[0\]\.digest"),
        (lambda t, f: None, {"model": {"uri": "/nowhere", "name": "smollm2", "digest": "sha256:" + "1" * 64}}, r"model\.digest"),
    ],
)
def test_a_bad_adapter_is_refused_naming_adapter_and_field(tmp_path: Path, break_it: Any, over: dict[str, Any], message: str) -> None:
    model_over = over.pop("model", None)
    cfg, base, folder, _ = setup(tmp_path, **over)
    if model_over:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"digest": model_over["digest"]})})
    break_it(tmp_path, folder)
    with pytest.raises(PreflightError, match=message):
        preflight(cfg, base, [folder])


def test_a_swapped_manifest_is_caught_by_the_expected_digest(tmp_path: Path) -> None:
    cfg, base, folder, _ = setup(tmp_path)
    flip_byte(folder)
    make_adapter(folder, base)  # an attacker (or a stale copy) rewrites the manifest to match
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "adapter_model.safetensors"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PreflightError, match=r"differs from adapters\[0\]\.digest"):
        preflight(cfg, base, [folder])


def test_an_adapter_without_any_digest_is_refused(tmp_path: Path) -> None:
    cfg, base, folder, _ = setup(tmp_path, adapter={"digest": None})
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(PreflightError, match=r"no content digest to check it against; set adapters\[0\]\.digest"):
        preflight(cfg, base, [folder])


def test_foreign_adapter_is_matched_by_peft_base_name(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    good = make_adapter(tmp_path / "good", None, peft_base="HuggingFaceTB/SmolLM2-135M-Instruct", lineage={})
    bad = make_adapter(tmp_path / "bad", None, peft_base="meta-llama/Llama-3-8B", lineage={})
    model = {"uri": "pvc://models/HuggingFaceTB/SmolLM2-135M-Instruct", "name": "smollm2"}
    ok = parse_config({"cache_dir": str(tmp_path / "cache"), "model": model, "adapters": [{"name": "g", "uri": str(tmp_path / "good"), "digest": good}]})
    assert preflight(ok, base, [tmp_path / "good"])[0].digest == good
    no = parse_config({"cache_dir": str(tmp_path / "cache"), "model": model, "adapters": [{"name": "b", "uri": str(tmp_path / "bad"), "digest": bad}]})
    with pytest.raises(PreflightError, match=r"base_model_name_or_path 'meta-llama/Llama-3-8B' is not the served base"):
        preflight(no, base, [tmp_path / "bad"])


def test_base_folder_must_be_a_model(tmp_path: Path) -> None:
    cfg, base, folder, _ = setup(tmp_path)
    (base / "config.json").unlink()
    with pytest.raises(PreflightError, match=r"base model smollm2 \(model.uri .*\): no config.json"):
        preflight(cfg, base, [folder])


@pytest.mark.parametrize(("cfg", "rank"), [({"r": 8}, 8), ({"r": 8, "rank_pattern": {"q_proj": 32}}, 32), ({"r": 64, "rank_pattern": {}}, 64)])
def test_adapter_rank(cfg: dict[str, Any], rank: int) -> None:
    assert adapter_rank(cfg) == rank
