"""Trainer test fixtures: the real base model (converted once by hack/prepare_model.py) and the
BANKING77 data used by the acceptance tests. Helpers live in trainer_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import BANKING77, prepare_model_module


@pytest.fixture(scope="session")
def model_path() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (converted once, cached)."""
    return prepare_model_module().prepare_model()


@pytest.fixture(scope="session")
def banking77() -> Path:
    if not (BANKING77 / "train.csv").is_file():
        pytest.fail(f"BANKING77 not found at {BANKING77} (set TUNEFORGE_BANKING77)")
    return BANKING77


