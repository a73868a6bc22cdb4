"""Argo CD's resource-customization Lua, run as Argo CD runs it, on a real Lua 5.1 (lupa).

Mirrors ``util/lua/lua.go`` of argoproj/argo-cd:
- the script sees the live object as the global ``obj`` (``actionParams`` too for an action),
  lists as 1-based arrays, numbers as Lua numbers;
- argocd-cm customizations run without ``useOpenLibs``: only the base, table, package and a safe
  ``os`` (time, date, clock) library are open — no ``string`` library, and no string methods
  (``s:sub``), which gopher-lua only has once the string library is open;
- a health script returns ``{status, message}`` with status one of Argo CD's codes;
- an action returns the modified object; it is encoded as gopher-json does (an empty table is
  ``[]``) and an empty array where the live object had a map goes back to ``{}``
  (``cleanReturnedObj``); the patch Argo CD sends is the JSON merge patch from the live object to
  the returned one;
- discovery returns ``{name = {disabled = bool, ...}}``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from lupa.lua51 import LuaError, LuaRuntime

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "charts" / "tuneforge" / "files" / "argocd"
HEALTH_CODES = ("Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing")
Obj = dict[str, Any]

# The sandbox: what Argo CD opens (lua.go runLuaWithResourceActionParameters, OpenSafeOs).
_SANDBOX = """
local base = {"assert", "error", "ipairs", "next", "pairs", "pcall", "print", "select", "tonumber",
              "tostring", "type", "unpack", "xpcall", "getmetatable", "setmetatable", "rawequal",
              "rawget", "rawset", "_VERSION", "require", "module"}
local os_ = os
local env = {table = table, package = package, os = {time = os_.time, date = os_.date, clock = os_.clock}}
for _, k in ipairs(base) do env[k] = _G[k] end
env._G = env
-- gopher-lua has no string methods until the string library is opened; Lua 5.1 always has them.
getmetatable("").__index = nil
return function(source, name, object, params)
  local fn, err = loadstring(source, name)
  if fn == nil then error(err, 0) end
  local scope = {}
  for k, v in pairs(env) do scope[k] = v end
  scope._G = scope
  scope.obj = object
  scope.actionParams = params
  setfenv(fn, scope)
  return fn()
end
"""


class ScriptError(Exception):
    """The Lua script raised (its message as Argo CD would show it)."""


class ArgoLua:
    """One Lua 5.1 state per call, as Argo CD makes one per script run."""

    def _run(self, source: str, name: str, obj: Obj, params: dict[str, str] | None = None) -> Any:
        lua = LuaRuntime(unpack_returned_tuples=False, register_eval=False, register_builtins=False)
        runner = lua.execute(_SANDBOX)
        try:
            return lua, runner(source, name, _to_lua(lua, obj), _to_lua(lua, params or {}))
        except LuaError as e:
            raise ScriptError(str(e).split("\nstack traceback:")[0]) from None

    def health(self, script: Path, obj: Obj) -> dict[str, str]:
        lua, out = self._run(script.read_text(), str(script), obj)
        if out is None:
            return {}
        result = _from_lua(out)
        if not isinstance(result, dict):
            raise ScriptError(f"{script}: health returned {result!r}, not a table")
        status = result.get("status", "")
        if status not in HEALTH_CODES:
            return {"status": "Unknown", "message": "Lua returned an invalid health status"}
        return {"status": status, "message": str(result.get("message", ""))}

    def discovery(self, script: Path, obj: Obj) -> list[dict[str, Any]]:
        lua, out = self._run(script.read_text(), str(script), obj)
        result = _from_lua(out)
        if result == []:
            return []
        if not isinstance(result, dict):
            raise ScriptError(f"{script}: discovery returned {result!r}, not a table")
        actions = []
        for name, value in result.items():
            action: dict[str, Any] = {"name": name, "disabled": False}
            if isinstance(value, dict):
                action.update(value)
                action["disabled"] = value.get("disabled") is True
            actions.append(action)
        return sorted(actions, key=lambda a: a["name"])

    def action(self, script: Path, obj: Obj, params: dict[str, str] | None = None) -> Obj:
        lua, out = self._run(script.read_text(), str(script), obj, params)
        result = _from_lua(out)
        if not isinstance(result, dict):
            raise ScriptError(f"{script}: action returned {result!r}, not the object")
        return _clean_returned(result, obj)


def _to_lua(lua: LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        t = lua.table()
        for k, v in value.items():
            t[k] = _to_lua(lua, v)
        return t
    if isinstance(value, list):
        t = lua.table()
        for i, v in enumerate(value, 1):
            t[i] = _to_lua(lua, v)
        return t
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"cannot hand {type(value).__name__} to Lua")


def _from_lua(value: Any) -> Any:
    """gopher-json's encoding: an empty table is [], numeric keys an array, else an object;
    integral numbers come back as ints."""
    if hasattr(value, "items") and not isinstance(value, (dict, str)):
        items = list(value.items())
        if not items:
            return []
        if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k, _ in items):
            return [_from_lua(v) for _, v in sorted(items)]
        return {str(k): _from_lua(v) for k, v in items}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _clean_returned(new: Any, old: Any) -> Any:
    """cleanReturnedObj / cleanReturnedArray: an empty array where a map was is a map."""
    if isinstance(new, dict) and isinstance(old, dict):
        out = dict(new)
        for k, v in new.items():
            if k in old:
                if v == [] and isinstance(old[k], dict):
                    out[k] = {}
                else:
                    out[k] = _clean_returned(v, old[k])
        return out
    if isinstance(new, list) and isinstance(old, list):
        return [_clean_returned(v, old[i]) if i < len(old) else v for i, v in enumerate(new)]
    return new


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) from ``old`` to ``new``, as Argo CD sends for an action."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {}
    for k in old:
        if k not in new:
            patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_patch(old[k], v)
            if sub:
                patch[k] = sub
        elif v != old[k]:
            patch[k] = copy.deepcopy(v)
    return patch


def kind_dir(obj: Obj) -> Path:
    """``<group>/<Kind>`` as Argo CD keys a customization."""
    group = str(obj["apiVersion"]).split("/")[0]
    return CUSTOMIZATIONS / group / str(obj["kind"])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``patch`` applied to ``target`` (null removes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge_patch(out.get(k), v)
    return out
