"""The ConfigMap holding one revision's rendered trainer config."""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from ..spec import FineTuneJobSpec
from ..trainer_config import CONFIG_FILE, render_trainer_config
from .names import Owner, child_labels, config_map_name, owner_references


def build_config_map(owner: Owner, spec: FineTuneJobSpec, revision: int, name: str | None = None,
                     trial: int | None = None, selection: Mapping[str, Any] | None = None,
                     gpu_hour_price: float | None = None, currency: str = "USD") -> dict[str, Any]:
    """An immutable ConfigMap: a revision's config never changes, a spec edit makes a new one.
    ``name``/``trial``: a search trial's config (``trial_job_name``) or the winner's
    (``winner_config_map_name``, with the search's ``selection``), ``spec`` then carrying those
    settings. ``gpu_hour_price``/``currency``: the run's cost on the model card."""
    config = render_trainer_config(spec, owner.namespace, owner.name, owner.uid, revision, trial, selection,
                                   gpu_hour_price=gpu_hour_price, currency=currency)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name or config_map_name(owner.name, revision),
            "namespace": owner.namespace,
            "labels": child_labels(owner, revision),
            "ownerReferences": owner_references(owner),
        },
        "immutable": True,
        "data": {CONFIG_FILE: yaml.safe_dump(config, sort_keys=False)},
    }
