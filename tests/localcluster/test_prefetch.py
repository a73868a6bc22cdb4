"""``make test``'s background prefetch (hack/prefetch.py) builds what the cluster tier would
otherwise build in the foreground: every image with a wheelhouse (the slow ones), and the
Makefile's passes together select every test exactly once."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from shared_demo import load_hack

ROOT = Path(__file__).resolve().parents[2]


def test_every_image_with_requirements_is_prefetched() -> None:
    prefetch = load_hack("prefetch.py", "tuneforge_prefetch")
    prefetched = {context.resolve() for context, _, _ in prefetch.IMAGES}
    slow = {d.parent.resolve() for d in ROOT.glob("*/Dockerfile") if (d.parent / "requirements.txt").is_file()}
    assert slow and slow <= prefetched, slow - prefetched
    # make demo builds the same (name, target) as the tests, so one build serves both.
    assert {(c.name, n, t) for c, n, t in prefetch.DEMO_IMAGES} == {
        ("operator", "operator", None), ("trainer-image", "trainer", None), ("server-image", "server", "cpu")}


def test_make_test_passes_are_a_partition() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\ntest:\n", 1)[1].split("\n\n", 1)[0]
    passes = re.findall(r'pytest tests -m "([^"]+)"', recipe)
    assert sorted(passes) == sorted(["slow and not cluster", "not cluster and not slow", "cluster"]), passes
    # Every (cluster, slow) combination is selected by exactly one pass.
    for cluster in (False, True):
        for slow in (False, True):
            env = {"cluster": cluster, "slow": slow}
            assert sum(bool(eval(p, {}, env)) for p in passes) == 1, (env, passes)  # noqa: S307 - marker expressions
    assert "hack/prefetch.py" in recipe and "&" in recipe.split("hack/prefetch.py", 1)[1].split(";", 1)[0]


def test_image_store_gc_waits_for_no_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A build in progress (here: holding its locks) makes gc skip: its untagged intermediate
    # layers would otherwise be pruned under it. With no build, gc runs.
    from tuneforge_localcluster import images

    calls: list[object] = []
    monkeypatch.setattr(images, "_gc", lambda s, sock: calls.append(sock))
    s = types.SimpleNamespace(cache=tmp_path)
    with images._building(s, "127.0.0.1:5000/tuneforge/x:1"):  # type: ignore[arg-type]
        images.gc(s)  # type: ignore[arg-type]
    assert calls == []
    images.gc(s)  # type: ignore[arg-type]
    assert calls == [None]
