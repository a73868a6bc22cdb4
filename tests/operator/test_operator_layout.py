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


# --- one runtime, two rooms of one shape (issue 18, deliverable 1) ------------------------------

def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"))


def _calls(module: str) -> list[ast.Call]:
    return [n for n in ast.walk(_tree(module)) if isinstance(n, ast.Call)]


def _func_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _decorators(module: str) -> set[str]:
    """``kopf.on.startup`` and friends, as written on the module's functions."""
    out = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                out.add(ast.unparse(d.func if isinstance(d, ast.Call) else d))
    return out


@pytest.mark.parametrize("room", ROOMS)
def test_both_rooms_have_the_same_rooms_modules(room: str) -> None:
    for part in ("handlers", "reconcile", "plan", "status", "spec", "builders", "gate"):
        assert f"{room}.{part}" in MODULES, f"{room} has no {part}"


def test_one_start_up_builds_the_one_api_client() -> None:
    """``kube.Kube`` (one client, one request limiter) is constructed in one place: the start-up."""
    sites = {m for m in MODULES if any(_func_name(c) == "Kube" for c in _calls(m))}
    assert sites == {STARTUP}
    # Kopf's start-up, clean-up and login exist once, in the start-up module, not in a room.
    for m in MODULES:
        kopf_lifecycle = {d for d in _decorators(m) if d in ("kopf.on.startup", "kopf.on.cleanup", "kopf.on.login")}
        assert kopf_lifecycle == ({"kopf.on.startup", "kopf.on.cleanup", "kopf.on.login"} if m == STARTUP else set()), m


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_plugs_into_the_start_up_with_the_same_start(room: str) -> None:
    handlers = f"{room}.handlers"
    plugs = [c for c in _calls(handlers) if ast.unparse(c.func) == "startup.plug"]
    assert [ast.unparse(a) for p in plugs for a in p.args] == ["start", "stop"], handlers
    start = next(n for n in _tree(handlers).body if isinstance(n, ast.AsyncFunctionDef) and n.name == "start")
    assert ast.unparse(start.args) == "rt: Runtime, indexes: Mapping[str, Any]"


def _function(module: str, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef:
    return next(n for n in _tree(module).body if isinstance(n, (ast.AsyncFunctionDef, ast.FunctionDef)) and n.name == name)


def test_both_rooms_reconcile_with_one_signature_over_one_room_state() -> None:
    signatures = set()
    for room in ROOMS:
        fn = _function(f"{room}.reconcile", "reconcile")
        assert isinstance(fn, ast.AsyncFunctionDef)
        signatures.add((ast.unparse(fn.args), ast.unparse(fn.returns) if fn.returns else ""))
        state = next(n for n in _tree(f"{room}.reconcile").body if isinstance(n, ast.ClassDef) and n.name == "Room")
        assert [ast.unparse(b) for b in state.bases] == ["RoomState"], room
        assert "tuneforge.runtime" in IMPORTS[f"{room}.reconcile"]
    assert signatures == {("room: Room, key: Key, now: dt.datetime | None=None", "Outcome")}


@pytest.mark.parametrize("room", ROOMS)
def test_typed_plan_actions_in_both_rooms(room: str) -> None:
    """``Action`` is a union of frozen dataclasses of the plan module (no verbs as strings)."""
    tree = _tree(f"{room}.plan")
    action = next(n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "Action")
    names = {n.id for n in ast.walk(action.value) if isinstance(n, ast.Name)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert len(names) >= 5 and names <= set(classes), sorted(names - set(classes))
    for name in names:
        assert [ast.unparse(d) for d in classes[name].decorator_list] == ["dataclasses.dataclass(frozen=True)"], name


def test_one_status_write_strategy() -> None:
    """Both rooms write a status through ``RoomState.write_status`` (runtime.py), the one caller
    of the API door's ``write_status``; each room's status.py computes the whole status."""
    callers = {m for m in MODULES for c in _calls(m) if _func_name(c) == "write_status" and ast.unparse(c.func).startswith("self.kube")}
    assert callers == {"tuneforge.runtime"}
    for room in ROOMS:
        writes = {ast.unparse(c.func) for c in _calls(f"{room}.reconcile") if _func_name(c) == "write_status"}
        assert writes == {"room.write_status"}, (room, writes)
        assert _function(f"{room}.status", "compute_status")
    door = {n.name for n in ast.walk(_tree(API_DOOR)) if isinstance(n, ast.AsyncFunctionDef) and "status" in n.name}
    assert door == {"write_status"}, door


@pytest.mark.parametrize("room", ROOMS)
def test_both_rooms_export_metrics(room: str) -> None:
    assert "tuneforge.metrics" in IMPORTS[f"{room}.reconcile"]
