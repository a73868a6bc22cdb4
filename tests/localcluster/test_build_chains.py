"""The cluster's Go binaries are built in two chains of about equal length (cold: the longest
chain is the cluster's start-up time on a fresh machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge_localcluster import binaries
from tuneforge_localcluster.binaries import BINARIES, GoBinary, build_chains


def length(chain: list[GoBinary]) -> float:
    return sum(b.cold_seconds for b in chain)


def test_chains_hold_every_missing_binary_once_and_keep_the_kubernetes_module_together() -> None:
    chains = build_chains(list(BINARIES))
    assert len(chains) == 2
    assert sorted(b.name for c in chains for b in c) == sorted(b.name for b in BINARIES)
    module = [b for b in BINARIES if b.module_dir]
    # One chain builds the wrapper modules' binaries, in their order, one after another.
    assert [c for c in chains if [b for b in c if b.module_dir] == module]


def test_chains_are_balanced_better_than_modules_vs_add_ons() -> None:
    chains = build_chains(list(BINARIES))
    by_kind = max(length([b for b in BINARIES if b.module_dir]), length([b for b in BINARIES if not b.module_dir]))
    assert max(map(length, chains)) < by_kind
    assert max(map(length, chains)) - min(map(length, chains)) <= max(b.cold_seconds for b in BINARIES if not b.module_dir)


def test_only_what_is_missing_is_built() -> None:
    helm = next(b for b in BINARIES if b.name == "helm")
    assert build_chains([helm]) == [[helm]]
    assert build_chains([]) == []


def test_the_go_toolchain_builds_with_a_larger_gc_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GOGC reaches the compiler and linker processes (the go command passes its environment on),
    # static binaries as before; the binary's cache key does not depend on it (same output).
    import subprocess

    seen: list[dict[str, str]] = []

    def run(cmd: list[str], cwd: object = None, env: dict[str, str] | None = None, check: bool = False) -> None:
        seen.append(env or {})
        gobin = Path(env["GOBIN"]) if env and "GOBIN" in env else None
        if gobin:
            gobin.mkdir(parents=True)
            (gobin / "kwok").write_text("")

    monkeypatch.setattr(subprocess, "run", run)
    binaries._build(binaries.GoBinary("kwok", "sigs.k8s.io/kwok/cmd/kwok@v0.8.0"), tmp_path / "kwok")
    assert (tmp_path / "kwok").exists()
    assert seen[0]["GOGC"] == "400" and seen[0]["CGO_ENABLED"] == "0"
