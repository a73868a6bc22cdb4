"""train_main end to end on a tiny random model, in seconds: the wiring between the pieces.

A 2-layer Llama with a word-level tokenizer and a ChatML template, built here from nothing (no
download, no conversion), trains 2 steps on 24 rows and goes through everything train_main does
after: validation-only eval loss, test-row scoring, the base-model baselines through the LoRA
adapter switched off, TF-IDF, metrics.json, the model card, summary.json and the progress events.
The numbers mean nothing (random weights); what the model learns is the slow tests' business
(test_training_slow.py, SmolLM2 on BANKING77).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge_trainer.config import parse_config
from tuneforge_trainer.events import check_event
from tuneforge_trainer.lineage import base_model_digest, content_digest, manifest_files
from tuneforge_trainer.summary import parse_summary

SPECIAL = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "classify the message into one of these categories card fx category my is lost euro exchange rate "
    "system user assistant : . ,"
).split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny") / "model"
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(WORDS + [str(i) for i in range(20)])))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<|im_end|>"], tie_word_embeddings=True,
    )).save_pretrained(folder)
    return folder


def run(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], **sections: Any) -> tuple[int, list[dict[str, Any]]]:
    from tuneforge_trainer.train import train_main

    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(12):
            w.writerows([(f"my card is lost {i}", "card"), (f"euro exchange rate {i}", "fx")])
    raw: dict[str, Any] = {
        "model": {"source": str(tiny_model)},
        "dataset": {"source": str(tmp_path / "train.csv")},
        "data": {"eval_fraction": 0.25, "validation_fraction": 0.25},
        "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "max_seq_length": 128},
        "eval": {"loss_max_rows": 4},
        "output": {"dir": str(tmp_path / "out"), "termination_message_path": str(tmp_path / "term")},
    }
    for name, value in sections.items():
        raw.setdefault(name, {}).update(value)
    rc = train_main(parse_config(raw))
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return rc, events


def test_train_main_end_to_end(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, events = run(tiny_model, tmp_path, capsys, eval={"baselines": {"zero_shot": True, "few_shot": 2, "tfidf_lr": True}})
    assert rc == 0
    assert [e for e in events if check_event(e)] == []
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.index("eval_start") < kinds.index("eval") < kinds.index("baseline")
    assert [e["name"] for e in events if e["event"] == "baseline"] == ["zero_shot", "few_shot_2", "tfidf_lr"]
    data = next(e for e in events if e["event"] == "data")
    assert (data["train_rows"], data["validation_rows"], data["eval_rows"]) == (14, 4, 6)

    out = tmp_path / "out"
    saved = parse_summary((out / "summary.json").read_text())
    assert saved == parse_summary((tmp_path / "term").read_text())
    assert saved.status == "succeeded" and saved.steps == 2 and (saved.n_train, saved.n_validation, saved.n_eval) == (14, 4, 6)
    # The base-model baselines ran through the adapter switched off, not as errors.
    assert {b.name: b.error for b in saved.baselines} == {"zero_shot": None, "few_shot_2": None, "tfidf_lr": None}
    assert saved.baselines[0].accuracy_norm is not None and saved.accuracy_norm is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["validation_counts"] == {"card": 2, "fx": 2}
    assert metrics["training"]["eval_loss"] is not None  # measured on the 4 validation rows
    assert "**the gate uses this accuracy**" in (out / "README.md").read_text()
    # The adapter version: the manifest's digest is the files' digest, the summary carries it,
    # and the lineage names the base (by digest), the data and the evaluation.
    manifest = json.loads((out / "adapter" / "tuneforge.json").read_text())
    assert saved.adapter is not None and saved.adapter.digest == manifest["digest"]
    assert manifest["digest"] == content_digest(manifest_files(str(out / "adapter")))
    assert saved.adapter.base_model.digest == base_model_digest(str(tiny_model))
    assert manifest["lineage"]["baseModel"]["digest"] == saved.adapter.base_model.digest
    assert manifest["lineage"]["evaluation"]["accuracy"] == saved.accuracy
    assert saved.adapter.dataset is not None and saved.adapter.dataset.digest.startswith("sha256:")
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and predictions[0]["messages"][-1]["role"] == "user"
    assert sum(p["prediction"] == p["target"] for p in predictions) / 6 == pytest.approx(saved.accuracy)


def test_full_fine_tune_has_no_base_model_baseline(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, events = run(tiny_model, tmp_path, capsys, lora={"enabled": False})
    assert rc == 0
    assert [e["name"] for e in events if e["event"] == "baseline"] == ["tfidf_lr"]
    assert [b.name for b in parse_summary((tmp_path / "out" / "summary.json").read_text()).baselines] == ["tfidf_lr"]


def test_evaluate_main_with_an_eval_file(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuneforge_trainer.train import evaluate_main

    rc, _ = run(tiny_model, tmp_path, capsys, eval={"baselines": {"zero_shot": False, "tfidf_lr": True}})
    assert rc == 0
    # Sorted by label, with a duplicate and a row that occurs in training (below the threshold).
    held = [(f"my card is lost {i} {i}", "card") for i in range(10)] + [(f"euro rate {i} {i}", "fx") for i in range(10)]
    held += [("my card is lost 3 3", "card"), ("my card is lost 0", "card")]
    with open(tmp_path / "held.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *held])
    cfg = parse_config({
        "model": {"source": str(tiny_model)}, "dataset": {"source": str(tmp_path / "train.csv")},
        "data": {"eval_fraction": 0.25, "validation_fraction": 0.25, "leak_threshold": 0.1},
        "eval": {"max_rows": 6, "baselines": {"zero_shot": True, "tfidf_lr": True}},
        "output": {"dir": str(tmp_path / "out"), "termination_message_path": str(tmp_path / "term-eval")},
    })
    assert evaluate_main(cfg, eval_file=str(tmp_path / "held.csv")) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e for e in events if check_event(e)] == []
    s = parse_summary((tmp_path / "out" / "evaluation" / "summary.json").read_text())
    assert s.command == "evaluate" and s.n_eval == 6
    metrics = json.loads((tmp_path / "out" / "evaluation" / "metrics.json").read_text())
    prep = metrics["eval_file_data"]
    assert prep["eval_counts"] == {"card": 3, "fx": 3}  # a stratified sample, not the first 6 rows
    assert prep["leaked"] == 1 and prep["dropped_by_reason"] == {"duplicate": 1, "also in training": 1}


def test_a_replacement_pod_resumes_from_the_checkpoint_store(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3:// output: the first pod's checkpoints are uploaded as they are saved; a second pod with
    an empty work folder (a new emptyDir) fetches the newest and continues from its step."""
    from trainer_helpers import FakeS3
    from tuneforge_trainer import storage

    s3 = FakeS3({})
    monkeypatch.setattr(storage, "_s3_client", lambda: s3)
    out = {"dir": "s3://b/runs/r1", "termination_message_path": str(tmp_path / "term"), "run_id": "uid-1/r1"}
    quiet = {"baselines": {"zero_shot": False, "tfidf_lr": True}}
    rc, _ = run(tiny_model, tmp_path, capsys, training={"save_steps": 1}, eval=quiet,
                output=out | {"work_dir": str(tmp_path / "pod-1")})
    assert rc == 0
    assert {"runs/r1/checkpoints/checkpoint-1/.complete", "runs/r1/checkpoints/checkpoint-2/.complete",
            "runs/r1/summary.json", "runs/r1/adapter/adapter_model.safetensors"} <= set(s3.objects)
    rc, events = run(tiny_model, tmp_path, capsys, training={"save_steps": 1, "max_steps": 3}, eval=quiet,
                     output=out | {"work_dir": str(tmp_path / "pod-2")})
    assert rc == 0
    assert next(e for e in events if e["event"] == "resume")["step"] == 2
    s = parse_summary((tmp_path / "term").read_text())
    assert s.resumed_from_step == 2 and s.steps == 3
    steps = sorted(k.split("/")[3] for k in s3.objects if k.endswith("/.complete"))
    assert steps == ["checkpoint-2", "checkpoint-3"]  # save_total_limit 2 holds in the store too
    assert s3.objects["runs/r1/checkpoints/checkpoint-3/tuneforge-run.json"] == b'{"run_id": "uid-1/r1"}'

    # A FineTuneJob deleted and re-created under the same name is another run: it must not
    # continue this one's training.
    from tuneforge_trainer.config import ConfigError

    with pytest.raises(ConfigError, match="belongs to run 'uid-1/r1'"):
        run(tiny_model, tmp_path, capsys, training={"max_steps": 4}, eval=quiet,
            output=out | {"work_dir": str(tmp_path / "pod-3"), "run_id": "uid-2/r1"})
