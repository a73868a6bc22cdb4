"""What the trainer benches share: paths, the 8-intent BANKING77 subset and the cached model."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer-image" / "src"))

INTENTS8 = [
    "card_arrival", "exchange_rate", "lost_or_stolen_card", "pin_blocked",
    "age_limit", "cancel_transfer", "top_up_limits", "card_not_working",
]
BANKING77 = Path(os.environ.get("TUNEFORGE_BANKING77", ROOT.parent / "shared" / "datasets" / "banking77"))


def model_folder() -> Path:
    """The converted SmolLM2 folder from hack/prepare_model.py (converting once when missing)."""
    spec = importlib.util.spec_from_file_location("prepare_model", ROOT / "hack" / "prepare_model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return Path(mod.prepare_model())


def training_only_config(model: Path, out: Path, steps: int, batch: int = 8) -> dict[str, object]:
    """The trainer config of the training-speed benches: the 8 intents x 50 rows, no evaluation,
    no checkpoints, plots or model card (what they time is the steps)."""
    return {
        "model": {"source": str(model)},
        "dataset": {
            "source": str(BANKING77 / "train.csv"), "label_column": "category",
            "include_labels": INTENTS8, "max_rows_per_label": 50,
        },
        "data": {"eval_fraction": 0.0},
        "eval": {"enabled": False},
        "training": {"max_steps": steps, "batch_size": batch, "learning_rate": 1e-3, "logging_steps": steps, "save_steps": 10_000},
        "output": {"dir": str(out), "termination_message_path": None, "plots": False, "model_card": False},
    }
