"""README "Install on a cluster": its RBAC table is the chart's rendering, row for row.

The table is built here from ``helm template`` in both modes (cluster-wide and
``watchNamespaces``); the README must contain it verbatim, so a rule added to the chart without the
README (or the other way round) fails. On failure the message holds the table to paste.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_chart_render import OWN_NS, ROOT, by_kind, helm, render  # noqa: F401 - helm is a fixture

MODES = (("cluster-wide (`watchNamespaces: []`)", None), ("namespaced (`watchNamespaces: [team-a, team-b]`)", ["team-a", "team-b"]))


def _where(doc: dict[str, Any], watched: list[str] | None) -> str:
    if doc["kind"] == "ClusterRole":
        return "cluster-wide"
    ns = doc["metadata"]["namespace"]
    if ns == OWN_NS:
        return "release namespace"
    assert watched and ns in watched, ns
    return "each watched namespace"


def rbac_table(helm: str, tmp: Path) -> str:
    rows: dict[tuple[str, str, str], list[str]] = {}
    for i, (_, watched) in enumerate(MODES):
        values = {"watchNamespaces": watched} if watched else None
        docs = render(helm, values, tmp)
        seen: dict[tuple[str, str, str], set[str]] = {}
        for doc in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in doc.get("rules") or ():
                names = rule.get("resourceNames")
                groups = ", ".join(g or "core" for g in rule["apiGroups"])
                resources = ", ".join(rule["resources"]) + (" (only the leader Lease, by name)" if names else "")
                key = (groups, resources, ", ".join(rule["verbs"]))
                seen.setdefault(key, set()).add(_where(doc, watched))
        for key, where in seen.items():
            rows.setdefault(key, ["—"] * len(MODES))[i] = ", ".join(sorted(where))
    head = "| API group | resources | verbs | " + " | ".join(m for m, _ in MODES) + " |"
    lines = [head, "|" + "---|" * (3 + len(MODES))]
    lines += [f"| {g} | {r} | {v} | " + " | ".join(w) + " |" for (g, r, v), w in rows.items()]
    return "\n".join(lines)


def test_readme_rbac_table_is_the_charts(helm: str, tmp_path: Path) -> None:  # noqa: F811
    table = rbac_table(helm, tmp_path)
    assert table in (ROOT / "README.md").read_text(), "README.md's RBAC table differs from the chart's; expected:\n" + table
