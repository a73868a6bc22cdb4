"""The operator's rooms and doors (STYLE.md), read from the sources alone: pure, no imports run.

One room per kind (``tuneforge.finetune``, ``tuneforge.serve``) that never imports the other;
shared modules at the top level that import no room (the entry point imports the rooms' Kopf
handlers so they register); one module that talks to the Kubernetes client; Kopf only in the
handlers, the one start-up and the entry point; one start-up builds the one API door, and both
rooms plug into it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "operator" / "src"
PACKAGE = SRC / "tuneforge"
ROOMS = ("tuneforge.finetune", "tuneforge.serve")
ENTRY_POINTS = {"tuneforge.main", "tuneforge.__main__"}
STARTUP = "tuneforge.startup"
API_DOOR = "tuneforge.kube"
CLIENTS = ("lightkube", "kubernetes", "kubernetes_asyncio")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    found = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}
    assert "tuneforge.kube" in found and "tuneforge.finetune.reconcile" in found, sorted(found)
    return found


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Absolute names of everything ``name`` imports, anywhere in the file (function-local
    imports too). ``from X import y`` counts as ``X.y`` where that is a module of the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _room_of(module: str) -> str | None:
    return next((room for room in ROOMS if _under(module, room)), None)


def test_relative_imports_resolve_inside_the_package() -> None:
    """The resolver itself: what it reads for a few known lines."""
    assert "tuneforge.kube" in IMPORTS["tuneforge.finetune.reconcile"]
    assert "tuneforge.metrics" in IMPORTS["tuneforge.finetune.reconcile"]
    assert "tuneforge.finetune.builders.job" in IMPORTS["tuneforge.finetune.reconcile"]
    assert "tuneforge.settings" in IMPORTS["tuneforge.finetune.builders.job"]
    assert "tuneforge.finetune.handlers" in IMPORTS["tuneforge.main"]


@pytest.mark.parametrize("room,other", [(a, b) for a in ROOMS for b in ROOMS if a != b])
def test_rooms_never_import_each_other(room: str, other: str) -> None:
    bad = {m: sorted(i for i in IMPORTS[m] if _under(i, other)) for m in IMPORTS if _under(m, room)}
    assert not {m: v for m, v in bad.items() if v}, f"{room} imports {other}"


def test_shared_modules_import_no_room_and_the_entry_point_only_handlers() -> None:
    bad = {}
    for module, imported in IMPORTS.items():
        if _room_of(module):
            continue
        rooms = sorted(i for i in imported if _room_of(i))
        if module in ENTRY_POINTS:
            rooms = [i for i in rooms if i.rpartition(".")[2] != "handlers"]
        if rooms:
            bad[module] = rooms
    assert not bad


def test_only_the_api_door_imports_a_kubernetes_client() -> None:
    users = {m for m, imported in IMPORTS.items() if any(_under(i, c) for i in imported for c in CLIENTS)}
    assert users == {API_DOOR}


def test_only_handlers_and_the_entry_point_import_kopf() -> None:
    users = {m for m, imported in IMPORTS.items() if any(_under(i, "kopf") for i in imported)}
    assert users, "nothing imports kopf: the resolver is broken"
    assert all(m in ENTRY_POINTS or m == STARTUP or m.rpartition(".")[2] == "handlers" for m in users), sorted(users)


def test_product_code_never_imports_the_local_cluster_tooling() -> None:
    assert not {m for m, imported in IMPORTS.items() if any(_under(i, "tuneforge_localcluster") for i in imported)}


def test_trainer_events_is_a_symlink_to_the_trainers_definitions() -> None:
    link = PACKAGE / "finetune" / "trainer_events.py"
    assert link.is_symlink()
    root = SRC.parents[1]
    assert link.resolve() == root / "trainer-image" / "src" / "tuneforge_trainer" / "events.py"


@pytest.mark.parametrize("room", ROOMS)
def test_both_rooms_reconcile_through_the_shared_work_queue(room: str) -> None:
    assert "tuneforge.workqueue" in IMPORTS[f"{room}.handlers"]
