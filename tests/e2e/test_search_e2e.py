"""End to end on the real node: examples/finetunejob-banking77-search.yaml as a user applies it —
spec.search over both heads, a trial of the real trainer image per point of its grid, scored on
validation rows only, the winner chosen by the one-standard-error rule, trained again on the
training + validation rows, scored once on the test rows against TF-IDF, gated, and its model card
saying which head won and by how much. The trial table is written to
test-output/search-trials.md (the example's comment quotes it)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared_demo import load_demo
from tuneforge_localcluster.testing import Cluster

pytestmark = pytest.mark.slow

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def _row(t: dict[str, Any]) -> str:
    params = ", ".join(f"{k} {v}" for k, v in t["params"].items())
    acc = t.get("validationAccuracy")
    return (f"| {t['index']} | {params} | {t['phase']} | {'–' if acc is None else f'{100 * acc:.1f} %'} | "
            f"{t.get('validationRows', '–')} | {t.get('gpuSeconds', 0):.0f} |")


# The trials' CPU trainings and the refit on the real node: ~7 min on 2 idle cores; allow for a busy machine.
@pytest.mark.timeout(5400)
def test_search_example_chooses_a_head_on_validation_rows_and_serves_the_winner(
        cluster: Cluster, demo_finetunejob: dict[str, Any]) -> None:
    demo = load_demo()
    manifest = demo.ROOT / "examples" / "finetunejob-banking77-search.yaml"
    spec = yaml.safe_load(manifest.read_text())["spec"]
    # demo_finetunejob staged the inputs and installed the release (serving=True keeps its values).
    ftj = demo.run(cluster, manifest=manifest, timeout=5000, serving=True)
    st, name = ftj["status"], ftj["metadata"]["name"]
    search = st["search"]
    trials = search["trials"]
    table = ["| trial | settings | phase | validation accuracy | validation rows | GPU-seconds |",
             "|---|---|---|---|---|---|", *map(_row, trials)]
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "search-trials.md").write_text("\n".join(table) + f"\n\nwinner: {json.dumps(search.get('winner'))}\n"
                                             f"test accuracy: {st.get('evaluation', {}).get('accuracy')}\n"
                                             f"baselines: {json.dumps(st.get('baselines'))}\n")
    assert st["phase"] == "Succeeded", json.dumps(st)[:4000]

    # Every combination of the example's grid ran once, on the validation rows only.
    space = spec["search"]["space"]
    combos = set(itertools.product(*([(k, v) for v in values] for k, values in sorted(space.items()))))
    assert {tuple(sorted(t["params"].items())) for t in trials} == combos, trials
    assert {t["params"]["head"] for t in trials} == {"lm", "classifier"}, trials
    assert all(t["phase"] == "Succeeded" and t["validationRows"] > 0 and t["gpuSeconds"] > 0 for t in trials), trials
    assert (search["done"], search["total"], search["failed"]) == (len(combos), len(combos), 0), search

    # The one-standard-error rule, checked from the status alone: the winner is within one binomial
    # SE of the best validation accuracy, and no cheaper trial (fewer GPU-seconds) is.
    best = max(trials, key=lambda t: t["validationAccuracy"])
    p, n = best["validationAccuracy"], best["validationRows"]
    threshold = p - (p * (1 - p) / n) ** 0.5 - 1e-9
    winner = trials[search["winner"]["index"]]
    assert winner["validationAccuracy"] >= threshold, (winner, best)
    assert not [t for t in trials if t["validationAccuracy"] >= threshold and t["gpuSeconds"] < winner["gpuSeconds"]], trials

    # The winner was trained again and scored once on the test rows; it beats zero and passes the gate.
    assert st["gate"]["outcome"] == "Passed", st["gate"]
    tfidf = {b["name"]: b["accuracy"] for b in st["baselines"]}["tfidf-logreg"]
    assert st["evaluation"]["accuracy"] >= spec["evaluation"]["gate"]["minAccuracy"], st["evaluation"]
    row = cluster.kubectl("get", "ftj", name, "-n", demo.NAMESPACE, "--no-headers").stdout.split()
    assert f"{len(combos)}/{len(combos)}" in row, row
    card = demo.read_s3(cluster.settings, st["artifacts"]["modelCard"])
    head = winner["params"]["head"]
    assert "## How the settings were chosen" in card and f"**Head: `{head}`**" in card, card
    assert f"| {winner['index']} (winner) |" in card, card
    assert "| tfidf_lr |" in card and tfidf > 0
