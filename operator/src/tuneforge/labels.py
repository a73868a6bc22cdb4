"""The labels every child of either kind carries, built in one place: managed by Tuneforge, the
app it runs, the labels that tie it to its owner, and optionally its role. Each room adds its
own owner labels (names in its ``names`` module)."""

from __future__ import annotations

from typing import Mapping

from . import GROUP

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_ROLE = f"{GROUP}/role"
MANAGED_BY = "tuneforge"


def child_labels(app: str, owner: Mapping[str, str], role: str | None = None) -> dict[str, str]:
    """``app`` is the ``app.kubernetes.io/name`` value (``tuneforge-trainer``, ``tuneforge-server``);
    ``owner`` the labels tying the child to its object (they win over the common ones)."""
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: app, **owner}
    if role:
        labels[LABEL_ROLE] = role
    return labels
