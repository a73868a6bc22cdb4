"""Helpers for the trainer tests: paths, the 8-intent BANKING77 config, running the CLI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = Path(os.environ.get("TUNEFORGE_BANKING77", ROOT.parent / "shared" / "datasets" / "banking77"))
INTENTS8 = [
    "card_arrival", "exchange_rate", "lost_or_stolen_card", "pin_blocked",
    "age_limit", "cancel_transfer", "top_up_limits", "card_not_working",
]
SRC_PATH = os.pathsep.join(str(ROOT / p) for p in ("trainer-image/src", "operator/src", "localcluster/src"))


def prepare_model_module() -> Any:
    spec = importlib.util.spec_from_file_location("prepare_model", ROOT / "hack" / "prepare_model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def banking_config(model: Path | str, out: Path, **sections: Any) -> dict[str, Any]:
    """The 8-intent BANKING77 config: 50 training rows per intent (two epochs), 20 held-out rows per intent from test.csv."""
    cfg: dict[str, Any] = {
        "run_name": "banking77-8",
        "model": {"source": str(model)},
        "dataset": {
            "source": str(BANKING77 / "train.csv"),
            "eval_source": str(BANKING77 / "test.csv"),
            "label_column": "category",
            "include_labels": INTENTS8,
            "max_rows_per_label": 50,
            "max_eval_rows_per_label": 20,
        },
        "training": {
            # Two epochs of the 400 rows: one epoch (50 steps) lands at 89-91 %, too close to the bar.
            "max_steps": 100, "learning_rate": 1.0e-3, "batch_size": 8, "warmup_ratio": 0.05,
            "logging_steps": 5, "eval_steps": 50, "save_steps": 20,
        },
        "eval": {"loss_max_rows": 48, "baselines": {"zero_shot": True, "few_shot": 0, "tfidf_lr": True}},
        "output": {"dir": str(out), "termination_message_path": str(out.parent / f"{out.name}.termination-log")},
    }
    for name, value in sections.items():
        cfg.setdefault(name, {}).update(value)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_PATH + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_cli(
    *args: str, timeout: float = 1200, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m tuneforge_trainer ARGS`` in a subprocess (as the container runs it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge_trainer", *args],
        capture_output=True, text=True, env=cli_env() | (env or {}), timeout=timeout, cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tuneforge-train {args} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def hub_cache_standin(root: Path, repo: str, model: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A Hugging Face hub cache holding ``model`` as ``repo`` at ``commit`` (refs/main points to it)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for f in model.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (snap / f.name).symlink_to(f)
    return root


class FakeS3:
    """The subset of boto3's S3 client that storage.py calls, over a dict of key -> bytes."""

    def __init__(self, objects: dict[str, bytes], page_size: int = 2) -> None:
        self.objects = objects
        self.page_size = page_size
        self.downloaded: list[str] = []
        self.listed: list[tuple[str, str]] = []

    def _keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        fake = self

        class Paginator:
            def paginate(self, Bucket: str, Prefix: str = "", Delimiter: str = "") -> Any:  # noqa: N803
                keys = fake._keys(Prefix)
                fake.listed.append((Prefix, Delimiter))
                if Delimiter:  # keys below a further delimiter collapse into common prefixes
                    keys = [k for k in keys if Delimiter not in k[len(Prefix) :]]
                for i in range(0, len(keys), fake.page_size):
                    yield {"Contents": [{"Key": k} for k in keys[i : i + fake.page_size]]}

        return Paginator()

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloaded.append(key)
        Path(filename).write_bytes(self.objects[key])

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.objects[key] = Path(filename).read_bytes()

    def put_object(self, Bucket: str, Key: str, Body: bytes = b"") -> None:  # noqa: N803
        self.objects[Key] = Body

    def delete_object(self, Bucket: str, Key: str) -> None:  # noqa: N803
        self.objects.pop(Key, None)

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:  # noqa: N803
        for o in Delete["Objects"]:
            self.objects.pop(o["Key"], None)
