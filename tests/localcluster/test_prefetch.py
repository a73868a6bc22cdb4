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
    assert sorted(passes) == sorted(["slow and not cluster", "not cluster and not slow",
                                     "cluster and not slow and not exclusive", "cluster and (slow or exclusive)"]), passes
    # Every (cluster, slow, exclusive) combination is selected by exactly one pass.
    for cluster in (False, True):
        for slow in (False, True):
            for exclusive in (False, True):
                env = {"cluster": cluster, "slow": slow, "exclusive": exclusive}
                assert sum(bool(eval(p, {}, env)) for p in passes) == 1, (env, passes)  # noqa: S307 - marker expressions
    # The two cluster groups run at once, so neither may stop the cluster under the other.
    assert recipe.count("TUNEFORGE_KEEP_CLUSTER=1 $$py -m pytest tests -m \"cluster") == 2, recipe
    # The prefetch starts first, in the background, on the machine's own Python: before the host
    # venv is created (that takes minutes on a fresh machine, and the Go builds need no venv).
    assert recipe.index("python3 hack/prefetch.py") < recipe.index("hack/venv.sh"), recipe
    assert "&" in recipe.split("hack/prefetch.py", 1)[1].split(";", 1)[0]
    # On an empty cache the slow tier's training would take the cores from the control plane's
    # compilation: it starts once the cluster is up (or did not come up).
    assert recipe.index("$$lc up") < recipe.index('"slow and not cluster"'), recipe


def test_prefetch_imports_only_the_standard_library() -> None:
    # make test runs it with the machine's python3, where no project requirement is installed:
    # importing it (and so every lane's module) must pull in nothing outside the standard library
    # (-S: no site hooks, which may import packages of their own).
    import subprocess
    import sys

    probe = (
        "import sys; sys.path.insert(0, 'hack'); import prefetch; "
        "std = set(sys.stdlib_module_names); "
        "print(sorted({m.split('.')[0] for m in sys.modules} - std - {'__main__', 'prefetch', 'tuneforge_localcluster'}))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout


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


def test_junit_reports_of_the_passes_merge_into_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    merge = load_hack("junit_merge.py", "tuneforge_junit_merge")
    a = tmp_path / "a.xml"
    a.write_text('<testsuites><testsuite name="pytest" tests="2" failures="1" errors="0" skipped="0" time="1.5">'
                 '<testcase classname="tests.x" name="t1" time="1.0"/><testcase classname="tests.x" name="t2" time="0.5">'
                 '<failure message="boom"/></testcase></testsuite></testsuites>')
    b = tmp_path / "b.xml"
    b.write_text('<testsuite name="pytest" tests="1" failures="0" errors="1" skipped="0" time="2.0">'
                 '<testcase classname="tests.y" name="t3" time="2.0"><error message="e"/></testcase></testsuite>')
    out = tmp_path / "junit.xml"
    assert merge.main([str(out), str(a), str(b), str(tmp_path / "missing.xml")]) == 0
    import xml.etree.ElementTree as ET

    root = ET.parse(out).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("time")) == ("3", "1", "1", "3.500")
    assert [c.get("name") for c in root.iter("testcase")] == ["t1", "t2", "t3"]
    # the failed tests are the last lines printed: a CI log's tail names them
    assert capsys.readouterr().out.splitlines()[-4:] == [
        "a.xml: 2 tests, 1 failed, 0 errors, 0 skipped",
        "b.xml: 1 tests, 0 failed, 1 errors, 0 skipped",
        "FAILURE tests.x::t2 - boom",
        "ERROR tests.y::t3 - e",
    ]


def test_each_lane_and_what_it_starts_runs_at_its_niceness() -> None:
    # The Go lane (the cluster's critical path on an empty cache) keeps this process's priority;
    # the image and model lanes, and every process they start, yield to it.
    import os
    import subprocess
    import sys

    prefetch = load_hack("prefetch.py", "tuneforge_prefetch")
    child = [sys.executable, "-c", "import os; print(os.nice(0))"]
    lane = lambda: int(subprocess.run(child, check=True, capture_output=True, text=True).stdout)  # noqa: E731
    report = prefetch.run({"go binaries": lane, "images": lane, "model and venvs": lane})
    base = os.nice(0)
    assert {name: r["result"] for name, r in report.items() if name != "total"} == {
        "go binaries": base, "images": base + 5, "model and venvs": base + 5}
    assert os.nice(0) == base  # the caller's own priority is untouched


def test_optional_go_builds_yield_to_the_images(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cluster's binaries at the Go lane's niceness (0: the cluster waits for them), then the
    # optional ones (KEDA, Kueue) below the images' (5), which the foreground's e2e tests wait for.
    import os
    import threading

    prefetch = load_hack("prefetch.py", "tuneforge_prefetch")
    seen: list[tuple[object, int]] = []

    def ensure(s: object, names: list[str] | None = None) -> dict[str, Path]:
        seen.append((names, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return {n: Path(n) for n in names or ["kube-apiserver"]}

    monkeypatch.setattr(prefetch.binaries, "ensure_binaries", ensure)
    report = prefetch.run({"go binaries": lambda: prefetch._go_binaries(None), "images": lambda: os.nice(0)})
    base = os.nice(0)
    optional = sorted(b.name for b in prefetch.binaries.OPTIONAL)
    assert [(sorted(n) if n else n, nice) for n, nice in seen] == [(None, base), (optional, base + 10)]
    assert report["images"]["result"] == base + 5 < base + prefetch.OPTIONAL_GO_NICE
    assert report["go binaries"]["result"] == sorted(["kube-apiserver", *optional])
