"""Training and evaluation runs: data → SFT with LoRA/QLoRA → held-out scores → artifacts.

``train_main(cfg)`` resumes from the latest checkpoint in the work folder, turns SIGTERM into
"save a checkpoint and stop" (exit 143), and on rank 0 only writes the adapter, metrics.json,
the model card, plots and the termination summary. ``evaluate_main`` scores an existing
adapter. Heavy libraries are imported here, never by the light modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Mapping, MutableMapping

from tuneforge_trainer import classifier
from tuneforge_trainer.classifier import classifier_text
from tuneforge_trainer.config import DEFAULT_EPOCHS, TrainerConfig
from tuneforge_trainer.data import (
    DataError,
    Example,
    PreparedData,
    format_example,
    prepare_eval_rows,
    render_prompt,
    stratified_sample,
)
from tuneforge_trainer.lineage import base_model_digest, digest_rows, write_manifest
from tuneforge_trainer.progress import ProgressReporter, is_rank_zero
from tuneforge_trainer.storage import StorageError, join_uri, upload_dir
from tuneforge_trainer.summary import (
    AdapterVersion,
    BaselineScore,
    ClassScore,
    SourceRef,
    TrainerSummary,
    remove_saved_summary,
    save_summary,
    write_summary,
)

__all__ = ["evaluate_main", "train_main"]

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143


class _Preemption:
    """Remembers a SIGTERM so the training loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            log.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _seed_all(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _artifact_dir(cfg: TrainerConfig) -> str:
    """Local folder where artifacts are assembled (output.dir itself when it is local)."""
    if cfg.output.dir.startswith("s3://"):
        return os.path.join(cfg.work_dir(), "artifacts")
    return cfg.output.dir


def _make_readable(path: str) -> None:
    # Non-root pods (the server) read these through volumes; save_pretrained writes 600.
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    if os.path.isdir(path):
        os.chmod(path, 0o755)


def _token_length_fn(tokenizer: Any, cfg: TrainerConfig, labels: list[str]):  # type: ignore[no-untyped-def]
    if cfg.task.head == "classifier":
        from tuneforge_trainer.classifier import token_length_fn

        return token_length_fn(tokenizer)

    def n_tokens(ex: Example) -> int:
        msgs = render_prompt(ex, cfg.dataset.prompt_template, labels, cfg.dataset.system_prompt)
        msgs = msgs + [{"role": "assistant", "content": ex.target}]
        return len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    return n_tokens


def _progress_callback(  # type: ignore[no-untyped-def]
    progress: ProgressReporter, preempt: _Preemption, store: str | None = None, keep: int = 2,
    run_id: str | None = None,
):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]
        """Turns the Trainer's logs into progress events; turns SIGTERM into save-and-stop."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.start_step = 0
            self.tok0 = 0
            self.last_eval_loss: float | None = None

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.t0 = time.monotonic()
            self.start_step = state.global_step
            self.tok0 = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if args.world_size > 1:
                # Every rank must stop at the same step, or the others hang in the next all-reduce.
                import torch
                import torch.distributed as dist

                flag = torch.tensor([1.0 if preempt.requested else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                preempt.requested = bool(flag.item())
            if preempt.requested:
                # Save now and stop; an evaluation here could outlast the grace period.
                control.should_save = True
                control.should_training_stop = True
                control.should_evaluate = False
            return control

        def on_epoch_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if preempt.requested:  # the step end already saved this step's checkpoint
                control.should_evaluate = False
                control.should_save = False
            return control

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logs = logs or {}
            if "eval_loss" in logs:
                self.last_eval_loss = logs["eval_loss"]
            if "loss" not in logs and "eval_loss" not in logs:
                return
            elapsed = time.monotonic() - self.t0
            done = state.global_step - self.start_step
            tps = (state.num_input_tokens_seen - self.tok0) / elapsed if elapsed > 0 else None
            eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
            progress.emit(
                "progress",
                step=state.global_step,
                max_steps=state.max_steps,
                epoch=state.epoch,
                loss=logs.get("loss"),
                eval_loss=logs.get("eval_loss", self.last_eval_loss),
                learning_rate=logs.get("learning_rate"),
                tokens_per_second=tps,
                eta_seconds=eta,
            )

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            local = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if state.is_world_process_zero:
                from tuneforge_trainer.checkpoints import record_run

                record_run(local, run_id)
            if store and state.is_world_process_zero:
                from tuneforge_trainer.checkpoints import upload_checkpoint

                try:
                    upload_checkpoint(local, store, keep)
                except Exception as e:  # noqa: BLE001 - losing a resume point must not fail the run
                    log.warning("Checkpoint %s not uploaded to %s: %s", local, store, e)
            if state.is_world_process_zero:
                from tuneforge_trainer.checkpoints import mark_complete

                # Last, and after the upload (whose own marker must come last in the store).
                mark_complete(local)
            progress.emit("checkpoint", step=state.global_step)

    return ProgressCallback()


def _fetch_checkpoint(store: str, ckpt_dir: str, wait_s: float = 1800.0) -> None:
    """A replacement pod resumes from the store: without a local checkpoint, local rank 0 fetches
    the newest one; the other ranks of the pod wait until it is done."""
    from tuneforge_trainer.checkpoints import last_complete

    done = os.path.join(ckpt_dir, ".fetched")
    if os.environ.get("LOCAL_RANK", "0") in ("0", ""):
        os.makedirs(ckpt_dir, exist_ok=True)
        if last_complete(ckpt_dir) is None:
            from tuneforge_trainer.checkpoints import fetch_latest

            fetch_latest(store, ckpt_dir)
        with open(done, "w"):
            pass
        return
    deadline = time.monotonic() + wait_s
    while not os.path.exists(done):
        if time.monotonic() > deadline:
            raise RuntimeError(f"local rank 0 did not fetch the checkpoint from {store} within {wait_s:.0f} s")
        time.sleep(1)


def _training_args(cfg: TrainerConfig, ds: Any, out_dir: str, has_eval: bool, cuda: bool) -> Any:
    from trl import SFTConfig

    t = cfg.training
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if t.eval_steps else "epoch"
    save_strategy = "steps" if t.save_steps else "epoch"
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return SFTConfig(
        output_dir=out_dir,
        num_train_epochs=t.epochs if t.epochs is not None else DEFAULT_EPOCHS[cfg.task.head],
        max_steps=t.max_steps or -1,
        learning_rate=cfg.learning_rate(),
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a fraction of the steps
        weight_decay=t.weight_decay,
        # The classifier's cross-entropy over classes (the config refuses it for the lm head).
        label_smoothing_factor=t.label_smoothing if cfg.task.head == "classifier" else 0.0,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        # Padding-free batches need max_length=None; over-length rows were dropped beforehand.
        max_length=None if t.padding_free else t.max_seq_length,
        padding_free=t.padding_free,
        completion_only_loss=t.completion_only_loss,
        gradient_checkpointing=ds.gradient_checkpointing,
        bf16=ds.bf16,
        fp16=ds.fp16,
        use_cpu=not cuda,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=save_strategy,
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        load_best_model_at_end=t.load_best_model,
        metric_for_best_model="eval_loss" if t.load_best_model else None,
        greater_is_better=False if t.load_best_model else None,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all" if t.padding_free else "non_padding",
        ddp_backend=("nccl" if cuda else "gloo") if multi else None,
        ddp_find_unused_parameters=False if multi else None,
        **_fsdp_args(ds),
        save_only_model=False,
    )


def _fsdp_args(ds: Any) -> dict[str, Any]:
    """The Trainer's FSDP settings under training.strategy fsdp (peft's FSDP + (Q)LoRA recipe:
    full shard, one wrap unit per decoder layer, the original parameters not kept, the base
    weights loaded once on rank 0 and broadcast)."""
    if not ds.sharded:
        return {}
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "use_orig_params": False,
            "cpu_ram_efficient_loading": True,
            "sync_module_states": True,
            "activation_checkpointing": False,
        },
    }


def fsdp_load_env(ds: Any) -> dict[str, str]:
    """What transformers needs in the environment at load time to load a model FSDP-style (rank 0
    reads the weights, the other ranks allocate on the meta device, sync_module_states broadcasts):
    ``transformers.distributed.fsdp.is_fsdp_enabled`` also needs the process group to exist."""
    return {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"} if ds.sharded else {}


def _init_distributed(args: Any) -> None:
    """Initialise the process group under torchrun: the Trainer's arguments do it when their
    device is first asked for (``TrainingArguments._setup_devices``)."""
    _ = args.device


def _ready_for_load(torch: Any, args: Any, ds: Any, env: MutableMapping[str, str] = os.environ) -> None:
    """Before the model loads: this process's GPU, the FSDP environment and the process group.
    Otherwise bitsandbytes places every rank's 4-bit copy on ``torch.cuda.current_device()``,
    cuda:0 for all of them, and each rank loads the whole model into CPU RAM."""
    if ds.cuda and "LOCAL_RANK" in env:
        torch.cuda.set_device(int(env["LOCAL_RANK"]))
    env.update(fsdp_load_env(ds))
    if int(env.get("WORLD_SIZE", "1")) > 1:
        _init_distributed(args)


def _summary_from(
    cfg: TrainerConfig, command: str, ev: dict[str, Any] | None, baselines: dict[str, dict[str, Any]], **extra: Any
) -> TrainerSummary:
    ev = ev or {}
    from tuneforge_trainer.metrics import worst_classes

    worst = [ClassScore(**w) for w in worst_classes(ev.get("per_class") or {}, cfg.eval.worst_classes)]
    bl = [
        BaselineScore(
            name=k, accuracy=v.get("accuracy"), macro_f1=v.get("macro_f1"), accuracy_norm=v.get("accuracy_norm"),
            error=v.get("error"),
        )
        for k, v in baselines.items()
    ]
    return TrainerSummary(
        command=command,  # type: ignore[arg-type]
        task=cfg.task.type,
        accuracy=ev.get("accuracy"),
        macro_f1=ev.get("macro_f1"),
        accuracy_norm=ev.get("accuracy_norm"),
        exact_match=ev.get("exact_match"),
        field_f1=ev.get("field_f1"),
        worst_classes=worst,
        baselines=bl,
        n_eval=ev.get("n"),
        eval_seconds=ev.get("seconds"),
        **extra,
    )


def _write_predictions(path: str, rows: list[Example], preds: list[str], cfg: TrainerConfig, labels: list[str]) -> None:
    """The scored held-out rows, one JSON line each: the chat messages the model saw, the truth
    and the adapter's prediction (error analysis; the serving tests replay these prompts)."""
    with open(path, "w", encoding="utf-8") as f:
        for ex, pred in zip(rows, preds, strict=True):
            seen: dict[str, Any] = (
                {"text": classifier_text(ex)} if cfg.task.head == "classifier"  # no prompt: the bare text
                else {"messages": render_prompt(ex, cfg.dataset.prompt_template, labels, cfg.dataset.system_prompt)}
            )
            f.write(json.dumps({"row": ex.row, "source": ex.source, **seen, "target": ex.target, "prediction": pred}, ensure_ascii=False) + "\n")
    os.chmod(path, 0o644)


def _write_lineage(
    cfg: TrainerConfig, adapter_dir: str, model_path: str, data: PreparedData,
    ev: dict[str, Any] | None, baselines: dict[str, dict[str, Any]],
) -> AdapterVersion:
    """Write the adapter's manifest (files, content digest, lineage); return its version."""
    base = SourceRef(uri=cfg.model.source, digest=base_model_digest(model_path) if os.path.isdir(model_path) else None)
    rows = [{"text": e.text, "target": e.target} for e in (*data.train, *data.validation, *data.eval)]
    dataset = SourceRef(uri=cfg.dataset.source, digest=digest_rows(rows))
    evaluation = {
        k: ev.get(k) for k in ("accuracy", "macro_f1", "exact_match", "n", "method") if ev and ev.get(k) is not None
    }
    lineage = {
        "baseModel": base.model_dump(),
        "dataset": dataset.model_dump(),
        "fineTuneJob": cfg.owner.model_dump(exclude_none=True, exclude={"kind"}) if cfg.owner else None,
        "runName": cfg.run_name,
        "head": cfg.task.head,
        "evaluation": evaluation or None,
        "baselines": {k: v.get("accuracy") for k, v in baselines.items()} or None,
        "labels": data.labels or None,
        "promptTemplate": cfg.dataset.prompt_template,
        "systemPrompt": cfg.dataset.system_prompt,
    }
    digest = write_manifest(adapter_dir, {k: v for k, v in lineage.items() if v is not None})
    log.info("Adapter content digest %s", digest)
    return AdapterVersion(uri=join_uri(cfg.output.dir, "adapter"), digest=digest, base_model=base, dataset=dataset)


def run_baselines(
    cfg: TrainerConfig, model: Any, tokenizer: Any, data: PreparedData, rows: list[Example], method: str | None,
    progress: ProgressReporter | None = None, base_lm: Any = None,
) -> dict[str, dict[str, Any]]:
    """Zero/few-shot base model (adapter disabled), TF-IDF + LR and an optional endpoint.

    With ``task.head: classifier`` the trained model with its adapter off has an untrained score
    layer, so the base model's own answer comes from its language-model head: ``base_lm()``
    loads it (once, beside the classifier, when a zero/few-shot baseline is asked) and it is
    scored as the lm head scores (the prompt with the label list, label log-likelihood).
    A ``baseline`` progress event follows each one (minutes each on a CPU).
    """
    import contextlib

    from tuneforge_trainer.evaluate import few_shot_messages, openai_baseline, pick_shots, score_model, tfidf_baseline

    bc = cfg.eval.baselines
    out: dict[str, dict[str, Any]] = {}
    lm_cfg, lm_method = cfg, method
    loaded: list[Any] = []
    if cfg.task.head == "classifier":
        lm_cfg, lm_method = _lm_head(cfg), "loglik"

    def base_ctx() -> Any:
        if cfg.task.head == "classifier":
            if base_lm is None:
                raise RuntimeError("no language-model head to score the base model with")
            if not loaded:
                loaded.append(base_lm())
            return contextlib.nullcontext(loaded[0])
        # Without an adapter to switch off, "the base model" would be the fine-tuned model itself
        # (config load rejects that combination; this guards against a model without adapters).
        if not hasattr(model, "disable_adapter"):
            raise RuntimeError("the model has no LoRA adapter to switch off; cannot score the base model")
        return _adapter_off(model)

    def guarded(name: str, fn: Any) -> None:
        try:
            r = fn()
            out[name] = {k: v for k, v in r.items() if k != "predictions"}
            log.info("Baseline %s: accuracy %s (%.1f s)", name, r.get("accuracy"), r.get("seconds", 0))
        except Exception as e:  # noqa: BLE001 - a baseline failing must not fail the run
            log.warning("Baseline %s failed: %s", name, e)
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        if progress is not None:
            r = out[name]
            progress.emit(
                "baseline", name=name, accuracy=r.get("accuracy"), accuracy_norm=r.get("accuracy_norm"),
                error=r.get("error"), seconds=r.get("seconds"),
            )

    if bc.zero_shot:
        def zero() -> dict[str, Any]:
            with base_ctx() as base:
                return score_model(base, tokenizer, rows, lm_cfg, data.labels, method=lm_method)

        guarded("zero_shot", zero)
    if bc.few_shot:
        def few() -> dict[str, Any]:
            shots = pick_shots(data.train, bc.few_shot, cfg.data.seed)
            prefix = few_shot_messages(shots, cfg, data.labels)
            with base_ctx() as base:
                return score_model(base, tokenizer, rows, lm_cfg, data.labels, prefix=prefix, method=lm_method)

        guarded(f"few_shot_{bc.few_shot}", few)
    if bc.tfidf_lr and cfg.task.type == "classification":
        guarded("tfidf_lr", lambda: tfidf_baseline(data.train, rows, data.labels, cfg.data.seed))
    if bc.openai is not None:
        guarded(f"openai:{bc.openai.model}", lambda: openai_baseline(rows, cfg, data.labels))
    return out


@contextlib.contextmanager
def _adapter_off(model: Any) -> Any:
    """``model`` with its LoRA adapter switched off for the block (the base model's answers)."""
    with model.disable_adapter():
        yield model


def _score_validation(cfg: TrainerConfig, model: Any, tokenizer: Any, data: PreparedData) -> dict[str, Any] | None:
    """The classifier's accuracy on the validation rows (the rows its settings are chosen on):
    one forward pass per batch, so it is cheap enough to report always; the lm head's label
    scoring is not, and reports the validation loss only."""
    if cfg.task.head != "classifier" or not data.validation:
        return None
    from tuneforge_trainer.evaluate import score_model

    r = score_model(model, tokenizer, data.validation, cfg, data.labels)
    return {k: r[k] for k in ("accuracy", "macro_f1", "label_nll", "n", "seconds")}


def _lm_head(cfg: TrainerConfig) -> TrainerConfig:
    """``cfg`` with ``task.head: lm`` (how the base model is loaded for its own answers)."""
    return cfg.model_copy(update={"task": cfg.task.model_copy(update={"head": "lm"})})


def _sample(rows: list[Example], k: int | None, seed: int) -> list[Example]:
    """At most k rows, a seeded stratified sample in file order (files are often sorted by label)."""
    return stratified_sample(rows, k, seed)


def _eval_rows(cfg: TrainerConfig, data: PreparedData) -> list[Example]:
    """The rows scored after training: the test rows, or the validation rows (eval.split)."""
    pool = data.validation if cfg.eval.split == "validation" else data.eval
    return _sample(pool, cfg.eval.max_rows, cfg.data.seed)


def cpu_threads(env: Mapping[str, str] = os.environ, cpus: int | None = None) -> int:
    """Compute threads of this process on a CPU: TUNEFORGE_THREADS (or every CPU) shared by
    the processes torchrun started in this pod, so two processes on two cores do not run four."""
    total = int(env.get("TUNEFORGE_THREADS") or cpus or os.cpu_count() or 1)
    return max(1, total // max(1, int(env.get("LOCAL_WORLD_SIZE") or 1)))


def use_cpu_threads(torch: Any, env: MutableMapping[str, str] = os.environ) -> int:
    """Set this process's compute threads (``cpu_threads``) and say so in OMP_NUM_THREADS: under
    torchrun on CPUs accelerate otherwise resets a process whose OMP_NUM_THREADS is unset to all
    the machine's cores (`accelerate/state.py`), so two gang pods on one node ran four threads on
    two cores, four times slower."""
    n = cpu_threads(env)
    env["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n


def train_main(cfg: TrainerConfig) -> int:
    """The ``train`` subcommand; returns the exit code."""
    import torch

    from tuneforge_trainer.evaluate import score_model
    from tuneforge_trainer.modeling import device_settings, get_lora_config, load_model, load_tokenizer, resolve_model_path
    from tuneforge_trainer.pipeline import cache_dir, prepare, report_data
    from tuneforge_trainer.report import cost_estimate, plot_confusion, plot_loss, render_model_card, write_json

    rank0 = is_rank_zero()
    work = cfg.work_dir()
    os.makedirs(work, exist_ok=True)
    progress = ProgressReporter(cfg.progress_path())
    preempt = _Preemption()
    preempt.install()
    t_start = time.monotonic()
    progress.emit("start", command="train", run_name=cfg.run_name)

    cuda = torch.cuda.is_available()
    ds = device_settings(cfg, cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported(),
                         world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if not cuda:
        use_cpu_threads(torch)
    _seed_all(cfg.training.seed)

    model_path = resolve_model_path(cfg, cache_dir())
    tokenizer = load_tokenizer(model_path, cfg)
    # Labels are needed to format rows; infer them first so token lengths can be measured.
    data = prepare(cfg)
    data = prepare(cfg, token_length=_token_length_fn(tokenizer, cfg, data.labels))
    report_data(data, progress)

    from datasets import Dataset

    def to_ds(rows: list[Example]) -> Any:
        if cfg.task.head == "classifier":
            return classifier.to_dataset(rows, tokenizer, data.labels, cfg.training.max_seq_length)
        return Dataset.from_list(
            [format_example(e, cfg.dataset.prompt_template, data.labels, cfg.dataset.system_prompt) for e in rows]
        )

    train_ds = to_ds(data.train)
    # The eval loss, the best checkpoint and early stopping see the validation rows only; the
    # test rows (data.eval) are scored once, after training.
    eval_ds = None
    if data.validation:
        loss_rows = _sample(data.validation, cfg.eval.loss_max_rows, cfg.data.seed)
        eval_ds = to_ds(loss_rows)

    ckpt_dir = os.path.join(work, "checkpoints")
    if rank0:
        # A rerun must not leave an earlier run's result looking like this one's.
        remove_saved_summary(_artifact_dir(cfg))
    store = cfg.checkpoint_store()
    if store and cfg.training.resume:
        _fetch_checkpoint(store, ckpt_dir)
    # The arguments (and with them the process group and FSDP settings) before the model.
    args = _training_args(cfg, ds, ckpt_dir, eval_ds is not None, cuda)
    _ready_for_load(torch, args, ds)
    model: Any = load_model(model_path, cfg, ds, data.labels)
    from peft import prepare_model_for_kbit_training
    from transformers import EarlyStoppingCallback, PrinterCallback
    from tuneforge_trainer.batching import SharedPrefixCollator
    from tuneforge_trainer.checkpoints import last_complete
    from tuneforge_trainer.sft import build_trainer

    if ds.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ds.gradient_checkpointing)
    callbacks: list[Any] = [
        _progress_callback(progress, preempt, store, cfg.training.save_total_limit, cfg.output.run_id)
    ]
    if cfg.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience))
    trainer = (classifier.build_trainer if cfg.task.head == "classifier" else build_trainer)(
        cfg, model, tokenizer, args, train_ds, eval_ds, peft_config=get_lora_config(cfg), callbacks=callbacks
    )
    # Our progress events replace the Trainer's printed dicts on stdout.
    trainer.remove_callback(PrinterCallback)
    # Only a checkpoint marked whole: one cut mid-write (on a PVC, it stays) is never resumed.
    resume = last_complete(ckpt_dir) if cfg.training.resume else None
    if resume:
        from tuneforge_trainer.checkpoints import check_run

        check_run(resume, cfg.output.run_id)
    resumed_step = int(resume.rsplit("-", 1)[-1]) if resume else None
    if resume:
        log.info("Resuming from checkpoint %s", resume)
        progress.emit("resume", checkpoint=resume, step=resumed_step)
    t_train = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.monotonic() - t_train
    state = trainer.state
    tokens_per_s = None
    if train_seconds > 0:
        tokens_per_s = (state.num_input_tokens_seen - (trainer._initial_num_input_tokens_seen or 0)) / train_seconds

    if preempt.requested:
        progress.emit("preempted", step=state.global_step)
        if rank0:
            write_summary(
                TrainerSummary(
                    status="preempted", command="train", task=cfg.task.type, steps=state.global_step,
                    resumed_from_step=resumed_step, train_seconds=round(train_seconds, 1),
                    message=f"SIGTERM: checkpoint saved at step {state.global_step}; rerun to resume",
                    artifacts={"checkpoint": last_complete(ckpt_dir) or ckpt_dir},
                ),
                cfg.output.termination_message_path,
            )
        return EXIT_PREEMPTED
    preempt.restore()

    test_rows = _eval_rows(cfg, data) if cfg.eval.enabled else []
    if test_rows:
        # From here on the run evaluates: the final validation loss, then the test rows and baselines.
        progress.emit("eval_start", rows=len(test_rows))
    eval_loss = None
    if eval_ds is not None:
        # The schedule often evaluated at the last step already; a second pass costs minutes on a CPU.
        last = [h for h in state.log_history if "eval_loss" in h]
        if last and last[-1].get("step") == state.global_step and not cfg.training.load_best_model:
            eval_loss = last[-1]["eval_loss"]
        else:
            eval_loss = trainer.evaluate().get("eval_loss")
    art = _artifact_dir(cfg)
    adapter_dir = os.path.join(art, "adapter")
    if ds.sharded:
        # Every rank takes part in gathering the sharded weights into one state dict; rank 0 writes.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(adapter_dir)
    if not trainer.is_world_process_zero():
        return 0

    os.makedirs(art, exist_ok=True)
    if ds.sharded:
        # A forward pass of the FSDP-wrapped model needs every rank: rank 0 scores its own copy,
        # the base model with the adapter just written.
        from peft import PeftModel

        one = dataclasses.replace(ds, sharded=False)
        if cfg.lora.enabled:
            model = PeftModel.from_pretrained(load_model(model_path, cfg, one, data.labels), adapter_dir)
        else:  # a full fine-tune: save_model wrote the whole model
            model = load_model(adapter_dir, cfg, one)
    else:
        model = trainer.model  # the PeftModel (unwrapped from DDP)
        model.save_pretrained(adapter_dir)
    if cfg.task.head == "classifier":
        classifier.save_label_config(model, adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    _make_readable(adapter_dir)
    artifacts = {"adapter": join_uri(cfg.output.dir, "adapter")}

    ev: dict[str, Any] | None = None
    baselines: dict[str, dict[str, Any]] = {}
    if test_rows:
        rows = test_rows
        ev = score_model(model, tokenizer, rows, cfg, data.labels)
        log.info("Adapter held-out accuracy %s (%d rows, %.1f s)", ev.get("accuracy"), len(rows), ev["seconds"])
        progress.emit(
            "eval", accuracy=ev.get("accuracy"), macro_f1=ev.get("macro_f1"), accuracy_norm=ev.get("accuracy_norm"),
            rows=len(rows), seconds=ev["seconds"],
        )
        baselines = run_baselines(
            cfg, model, tokenizer, data, rows, ev["method"], progress,
            base_lm=lambda: load_model(model_path, _lm_head(cfg), dataclasses.replace(ds, sharded=False)),
        )
        _write_predictions(os.path.join(art, "predictions.jsonl"), rows, ev["predictions"], cfg, data.labels)
        artifacts["predictions"] = join_uri(cfg.output.dir, "predictions.jsonl")

    if cfg.output.merge and cfg.lora.enabled:
        merged_dir = os.path.join(art, "merged")
        if ds.quantization != "none":
            log.warning("Output merge: skipped, the base model is quantized (merge into the unquantized base offline)")
        else:
            merged = model.merge_and_unload()
            merged.save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
            _make_readable(merged_dir)
            artifacts["merged"] = join_uri(cfg.output.dir, "merged")

    train_loss = getattr(result, "training_loss", None)
    collator = trainer.data_collator
    # Batches collated in this process (training and eval loss): shared-prefix, and in all.
    shared, batches = (
        (collator.shared_batches, collator.shared_batches + collator.fallback_batches)
        if isinstance(collator, SharedPrefixCollator) else (0, None)
    )
    training = {
        "shared_prefix_batches": shared,
        "batches": batches,
        "steps": state.global_step,
        "resumed_from_step": resumed_step,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(tokens_per_s, 1) if tokens_per_s else None,
        "device": f"cuda:{torch.cuda.get_device_name(0)}" if cuda else "cpu",
        "quantization": ds.quantization,
        "quantized_modules": sum(1 for m in model.modules() if "4bit" in type(m).__name__ or "8bit" in type(m).__name__),
        "precision": "bf16" if ds.bf16 else ("fp16" if ds.fp16 else "fp32"),
        "log_history": state.log_history,
    }
    if cfg.output.plots:
        if plot_loss(state.log_history, os.path.join(art, "plots", "loss.png")):
            artifacts["loss_plot"] = join_uri(cfg.output.dir, "plots", "loss.png")
        if ev and ev.get("confusion_matrix") and plot_confusion(ev["confusion_matrix"], ev["labels"], os.path.join(art, "plots", "confusion.png")):
            artifacts["confusion_plot"] = join_uri(cfg.output.dir, "plots", "confusion.png")
    artifacts["metrics"] = join_uri(cfg.output.dir, "metrics.json")
    if cfg.output.model_card:
        artifacts["model_card"] = join_uri(cfg.output.dir, "README.md")
    validation = _score_validation(cfg, model, tokenizer, data)
    wall = time.monotonic() - t_start
    report = {
        "config": cfg.model_dump(mode="json"),
        "data": data.report.to_dict(),
        "training": training,
        "validation": validation,
        "eval": ev,
        "baselines": baselines,
        "artifacts": artifacts,
        "wall_seconds": round(wall, 1),
        "cost": cost_estimate(wall, cfg.cost.gpus, cfg.cost.gpu_hour_price, cfg.cost.currency),
    }
    write_json(os.path.join(art, "metrics.json"), report)
    if cfg.output.model_card:
        with open(os.path.join(art, "README.md"), "w", encoding="utf-8") as f:
            f.write(render_model_card(report))
        os.chmod(os.path.join(art, "README.md"), 0o644)
    adapter = _write_lineage(cfg, adapter_dir, model_path, data, ev, baselines)
    summary = _summary_from(
        cfg, "train", ev, baselines,
        status="succeeded",
        message=f"trained {state.global_step} steps; held-out accuracy {ev.get('accuracy') if ev else None}",
        eval_loss=eval_loss,
        train_loss=train_loss,
        n_train=len(data.train),
        n_validation=len(data.validation),
        n_dropped=len(data.report.dropped),
        steps=state.global_step,
        resumed_from_step=resumed_step,
        train_seconds=round(train_seconds, 1),
        tokens_per_second=training["tokens_per_second"],
        device=training["device"],
        quantization=ds.quantization,
        adapter=adapter,
        artifacts=artifacts,
    )
    # Beside the artifacts too: the operator reads it there when the pod (and its termination
    # message) is gone.
    save_summary(summary, art)
    if cfg.output.dir.startswith("s3://"):
        upload_dir(art, cfg.output.dir)
    write_summary(summary, cfg.output.termination_message_path)
    progress.emit(
        "done", adapter_digest=adapter.digest, accuracy=summary.accuracy, macro_f1=summary.macro_f1, eval_loss=eval_loss,
        steps=state.global_step, train_seconds=round(train_seconds, 1), wall_seconds=report["wall_seconds"],
    )
    return 0


def evaluate_main(cfg: TrainerConfig, adapter: str | None = None, eval_file: str | None = None) -> int:
    """The ``evaluate`` subcommand: score an existing adapter (and the baselines) on held-out rows."""
    import torch
    from peft import PeftModel

    from tuneforge_trainer.evaluate import score_model
    from tuneforge_trainer.modeling import device_settings, load_model, load_tokenizer, resolve_model_path
    from tuneforge_trainer.pipeline import cache_dir, prepare, report_data
    from tuneforge_trainer.report import plot_confusion, write_json
    from tuneforge_trainer.storage import resolve_source

    if not is_rank_zero():
        return 0
    progress = ProgressReporter(cfg.progress_path())
    progress.emit("start", command="evaluate", run_name=cfg.run_name)
    cuda = torch.cuda.is_available()
    ds = device_settings(cfg, cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    data = prepare(cfg)
    report_data(data, progress)
    rows = _eval_rows(cfg, data)
    eval_report = None
    if eval_file:
        try:
            path = resolve_source(
                eval_file, cache_dir(), token_env=cfg.model.token_env, kind="dataset",
                hf_cache=cfg.hub.cache_dir, offline=cfg.hub.offline,
            )
        except StorageError as e:
            raise DataError(f"--eval-file: {e}") from None
        # The same hygiene as the train path: dedup, bad rows, leak check, stratified sample.
        rows, eval_report = prepare_eval_rows(cfg, path, data.train + data.validation, data.labels)
        for d in eval_report.dropped[:50]:
            print(f"dropped eval row {d.row}: {d.reason}", file=sys.stderr)
        for w in eval_report.warnings:
            log.warning("Data: %s", w)
    if not rows:
        raise DataError("evaluate: no held-out rows")
    adapter_path = adapter or os.path.join(_artifact_dir(cfg), "adapter")
    if adapter_path.startswith("s3://"):
        adapter_path = resolve_source(adapter_path, cache_dir())
    if not os.path.isdir(adapter_path):
        raise DataError(f"evaluate: no adapter folder at {adapter_path}")
    model_path = resolve_model_path(cfg, cache_dir())
    tokenizer = load_tokenizer(model_path, cfg)
    if cfg.task.head == "classifier":
        classifier.check_adapter_labels(adapter_path, data.labels)  # class i must mean data.labels[i]
    model = PeftModel.from_pretrained(load_model(model_path, cfg, ds, data.labels), adapter_path)
    progress.emit("eval_start", rows=len(rows))
    ev = score_model(model, tokenizer, rows, cfg, data.labels)
    progress.emit(
        "eval", accuracy=ev.get("accuracy"), macro_f1=ev.get("macro_f1"), accuracy_norm=ev.get("accuracy_norm"),
        rows=len(rows), seconds=ev["seconds"],
    )
    baselines = run_baselines(
        cfg, model, tokenizer, data, rows, ev["method"], progress,
        base_lm=lambda: load_model(model_path, _lm_head(cfg), ds),
    )
    art = _artifact_dir(cfg)
    out = os.path.join(art, "evaluation")
    artifacts = {"adapter": adapter or join_uri(cfg.output.dir, "adapter"), "metrics": join_uri(cfg.output.dir, "evaluation", "metrics.json")}
    write_json(os.path.join(out, "metrics.json"), {
        "eval": ev, "baselines": baselines, "adapter": adapter_path, "eval_file": eval_file,
        "eval_file_data": eval_report.to_dict() if eval_report else None,
    })
    if cfg.output.plots and ev.get("confusion_matrix"):
        plot_confusion(ev["confusion_matrix"], ev["labels"], os.path.join(out, "confusion.png"))
    summary = _summary_from(
        cfg, "evaluate", ev, baselines, status="succeeded", eval_loss=ev.get("label_nll"),
        message=f"held-out accuracy {ev.get('accuracy')} on {len(rows)} rows", artifacts=artifacts,
        device="cuda" if cuda else "cpu", quantization=ds.quantization,
    )
    save_summary(summary, out)
    if cfg.output.dir.startswith("s3://"):
        upload_dir(out, join_uri(cfg.output.dir, "evaluation"))
    write_summary(summary, cfg.output.termination_message_path)
    progress.emit("done", accuracy=summary.accuracy, macro_f1=summary.macro_f1)
    return 0
