"""The apiserver validates like a real one: structural schemas, CEL rules, field paths."""

from __future__ import annotations

import json
import uuid

from tuneforge_localcluster.testing import Cluster, wait_for


def _widget_crd(group: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": "minReplicas must not exceed maxReplicas",
                                            "fieldPath": ".minReplicas",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_invalid_object_rejected_with_field_path(cluster: Cluster, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.tuneforge.dev"
    cluster.apply(_widget_crd(group))
    try:
        wait_for(
            "CRD established",
            lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in cluster.get("crd", f"widgets.{group}")["status"].get("conditions", [])
            ),
            30,
        )

        def widget(lo: int, hi: int) -> dict:
            return {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{lo}{hi}", "namespace": namespace},
                "spec": {"minReplicas": lo, "maxReplicas": hi},
            }

        # Discovery of a new CRD takes a moment to reach kubectl.
        wait_for("a valid Widget is accepted", lambda: cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(1, 2)), check=False).returncode == 0, 30)

        res = cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(3, 2)), check=False)
        assert res.returncode != 0
        assert "spec.minReplicas" in res.stderr
        assert "minReplicas must not exceed maxReplicas" in res.stderr

        res = cluster.kubectl("apply", "-f", "-", input=json.dumps(widget(-1, 2)), check=False)
        assert res.returncode != 0
        assert "spec.minReplicas" in res.stderr and "greater than or equal to 0" in res.stderr
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_components_report_pinned_version(cluster: Cluster) -> None:
    version = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.36.3"' in version
    node = cluster.get("node", cluster.settings.node_name)
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(cluster.settings.gpus)
    assert node["metadata"]["labels"]["tuneforge.dev/gpu-standin"] == "cpu"
