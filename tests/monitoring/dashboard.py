"""The chart's Grafana dashboard (charts/tuneforge/files/grafana/) as data for the tests: every
PromQL expression of its panels, and the metric names an expression reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "tuneforge" / "files" / "grafana" / "tuneforge-dashboard.json"

# Grafana's built-in interval variables, replaced by a value Prometheus accepts before a query
# is sent to it (Grafana does the same at render time).
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
             "inf", "nan", "atan2"}


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out += _panels(p.get("panels") or [])  # a collapsed row holds its panels
    return out


def exprs(doc: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables substituted) for every query target."""
    out = []
    for p in _panels((doc or load())["panels"]):
        for t in p.get("targets") or ():
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((p["title"], expr))
    return out


def metric_names(expr: str) -> set[str]:
    """Names of the metrics an expression selects: identifiers that are not functions (followed by
    ``(``), keywords, or label names (inside ``{...}`` or a grouping clause)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries' steps
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
