"""Artifacts for people: ``metrics.json``, the model card (README.md) and PNG plots.

The model card and metrics are built from plain dicts (unit-testable without a model); plots
use matplotlib's Agg backend, imported inside.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["cost_estimate", "cost_per_1k_predictions", "plot_confusion", "plot_loss", "render_model_card", "selection_lines", "write_json"]


def write_json(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.chmod(path, 0o644)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "the spec's settings"


def selection_lines(selection: dict[str, Any] | None, head: str) -> list[str]:
    """The model card's account of how the settings were chosen: the search's trials on the
    validation rows, the winner, and by how much its head beat the best trial of each other
    head (the head is the choice users ask about: a classifier or the generative lm head)."""
    if not selection:
        return [f"Head: `{head}` (task.head; not chosen by a search).", ""]
    trials = selection.get("trials") or []
    win = next((t for t in trials if t.get("index") == selection.get("winner")), None)
    if win is None:
        return []
    scored = [t for t in trials if t.get("validation_accuracy") is not None]
    lines = [
        "## How the settings were chosen",
        "",
        f"spec.search ran {len(trials)} trials, each scored on the validation rows only (never the test "
        f"rows); the winner, trial {win['index']} ({_params(win.get('params') or {})}), was trained "
        f"again for this adapter. Rule: {selection.get('rule') or 'one standard error'}.",
        "",
    ]
    by_head: dict[str, dict[str, Any]] = {}
    for t in scored:
        h = str((t.get("params") or {}).get("head", head))
        if h not in by_head or t["validation_accuracy"] > by_head[h]["validation_accuracy"]:
            by_head[h] = t
    wacc = win.get("validation_accuracy")
    others = {h: t for h, t in by_head.items() if h != head}
    if wacc is not None and others:
        lines += [
            f"**Head: `{head}`**, validation accuracy {_pct(wacc)}; "
            + "; ".join(f"the best `{h}` trial {_pct(t['validation_accuracy'])} "
                        f"({100 * (wacc - t['validation_accuracy']):+.1f} points for `{head}`)"
                        for h, t in sorted(others.items()))
            + ".",
            "",
        ]
    else:
        lines += [f"Head: `{head}` (every trial used it).", ""]
    lines += ["| trial | settings | validation accuracy | validation rows | GPU-seconds |", "|---|---|---|---|---|"]
    for t in trials:
        mark = " (winner)" if t is win else ""
        acc = _pct(t.get("validation_accuracy")) if t.get("phase", "Succeeded") == "Succeeded" else t.get("phase")
        gs = t.get("gpu_seconds")
        lines.append(f"| {t.get('index')}{mark} | {_params(t.get('params') or {})} | {acc} | "
                     f"{t.get('validation_rows') if t.get('validation_rows') is not None else '–'} | "
                     f"{'–' if gs is None else f'{gs:.0f}'} |")
    return lines + [""]


def cost_estimate(seconds: float, gpus: int, gpu_hour_price: float | None, currency: str) -> dict[str, Any] | None:
    """GPU-seconds of the trainer's run (its wall time x the run's GPUs) and their price; None
    when the GPUs or the price are not known."""
    if not gpus or gpu_hour_price is None:
        return None
    gpu_seconds = round(seconds * gpus, 1)
    return {"gpu_seconds": gpu_seconds, "gpus": gpus, "gpu_hour_price": gpu_hour_price, "currency": currency,
            "estimated": round(gpu_seconds / 3600.0 * gpu_hour_price, 4)}


def cost_per_1k_predictions(result: dict[str, Any], *, gpus: int, gpu_hour_price: float | None,
                            token_prices: tuple[float | None, float | None] | None = None) -> float | None:
    """What 1,000 predictions cost as they were made here, or None when no price is known.

    A model on the run's GPUs (the adapter, the base model): its scoring seconds per row (in
    batches, as scored) x the GPUs x the GPU-hour price. An endpoint billed by token (the openai
    baseline, ``token_prices`` = prices per million prompt and completion tokens): the tokens its
    ``usage`` reported per row x those prices; None if a price is missing or a row had no usage.
    A model that needs no GPU (TF-IDF) has none: its latency column says what it costs in time.
    """
    n = result.get("n")
    if not n:
        return None
    if token_prices is not None:
        usage = result.get("usage") or {}
        prompt_price, completion_price = token_prices
        if prompt_price is None or completion_price is None or usage.get("rows_without_usage") or "prompt_tokens" not in usage:
            return None
        total = usage["prompt_tokens"] * prompt_price + usage["completion_tokens"] * completion_price
        return round(total / 1e6 / n * 1000.0, 6)
    if not gpus or gpu_hour_price is None or result.get("seconds") is None:
        return None
    return round(result["seconds"] / n * gpus * gpu_hour_price / 3600.0 * 1000.0, 6)


def _ms(latency: dict[str, Any] | None, key: str) -> str:
    return "–" if not latency else f"{latency[key]:.1f} ms"


def _price(value: float | None, currency: str) -> str:
    return "–" if value is None else f"{value:.4g} {currency}"


def render_model_card(report: dict[str, Any]) -> str:
    """Markdown model card: data summary, hyperparameters, results, per-class table, baselines."""
    cfg = report.get("config", {})
    ev = report.get("eval", {}) or {}
    data = report.get("data", {}) or {}
    tr = report.get("training", {}) or {}
    lines = [
        f"# {cfg.get('run_name', 'tuneforge-run')}",
        "",
        f"LoRA adapter for `{cfg.get('model', {}).get('source')}` trained by Tuneforge "
        f"(task: {cfg.get('task', {}).get('type')}).",
        "",
        "## Results on the test rows",
        "",
        f"Rows: {sum((data.get('train_counts') or {}).values()) or '–'} training; "
        f"{sum((data.get('validation_counts') or {}).values()) or 0} validation (the eval loss, the best "
        f"checkpoint and early stopping: model selection); {ev.get('n') if ev.get('n') is not None else '–'} test "
        "(scored once after training; the results below and the gate). No model was selected on the "
        "test rows.",
        "",
        "| model | accuracy | macro-F1 | accuracy (length-normalised) | p50 latency | p99 latency | rows per request | cost per 1,000 predictions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cost_cfg = cfg.get("cost") or {}
    gpus, gpu_hour_price, currency = cost_cfg.get("gpus") or 0, cost_cfg.get("gpu_hour_price"), cost_cfg.get("currency", "USD")
    openai_cfg = ((cfg.get("eval") or {}).get("baselines") or {}).get("openai") or {}

    def row(name: str, r: dict[str, Any]) -> str:
        lat = r.get("latency")
        prices = (openai_cfg.get("input_token_price"), openai_cfg.get("output_token_price")) if name.startswith("openai:") else None
        if r.get("hardware") == "cpu":  # scored beside the GPUs (TF-IDF): its latency is its cost
            cost = "no GPU"
        else:
            cost = _price(cost_per_1k_predictions(r, gpus=gpus, gpu_hour_price=gpu_hour_price, token_prices=prices), currency)
        return (f"| {name} | {_pct(r.get('accuracy'))} | {_pct(r.get('macro_f1'))} | {_pct(r.get('accuracy_norm'))} | "
                f"{_ms(lat, 'p50_ms')} | {_ms(lat, 'p99_ms')} | {lat['rows_per_request'] if lat else '–'} | {cost} |")

    lines.append(row("fine-tuned adapter", ev))
    for name, b in (report.get("baselines") or {}).items():
        lines.append(f"| {name} | error: {b['error'][:80]} | | | | | | |" if b.get("error") else row(name, b))
    lines += [
        "",
        "Latency is per row as scored here: rows scored in a batch each waited for their whole batch "
        "(rows per request), on this run's hardware; a served model answers single requests and batches "
        "them itself (the ModelServe's gate and metrics measure that). Cost per 1,000 predictions: scoring "
        "GPU-seconds per row x the GPU-hour price for a model on the run's GPUs; prompt and completion "
        "tokens x their prices for a paid endpoint; \"–\" where no price is set.",
        "",
        f"Test rows: {ev.get('n')}; scoring: {ev.get('method')}; eval loss (validation rows): "
        f"{tr.get('eval_loss') if tr.get('eval_loss') is not None else '–'}.",
        "",
    ]
    cost = report.get("cost")
    if cost:
        lines += [
            "## Cost",
            "",
            "| GPUs | GPU-seconds | price per GPU-hour | estimated cost |",
            "|---|---|---|---|",
            f"| {cost['gpus']} | {cost['gpu_seconds']:g} | {cost['gpu_hour_price']:g} {cost['currency']} | "
            f"{cost['estimated']:.2f} {cost['currency']} |",
            "",
            "GPU-seconds of this trainer process (from its start to this card) x the run's GPUs; the "
            "FineTuneJob's status.cost also counts pod start-up and search trials.",
            "",
        ]
    val = report.get("validation") or {}
    if val.get("accuracy") is not None:
        lines += [
            f"Validation rows ({val.get('n')}, split off the training data; what settings are chosen "
            f"on): accuracy {_pct(val.get('accuracy'))}, macro-F1 {_pct(val.get('macro_f1'))}, "
            f"loss {val.get('label_nll'):.4f}.",
            "",
        ]
    lines += selection_lines(cfg.get("selection"), (cfg.get("task") or {}).get("head") or "lm")
    if ev.get("method") == "classifier":
        lines += [
            "Scoring: a sequence-classification score layer (trained with the LoRA adapter and "
            "saved with it) reads the bare text, one forward pass per row; the prediction is its "
            "highest class, in the label order saved with the adapter. **The gate uses this "
            "accuracy.**",
            "",
        ]
    if ev.get("method") == "loglik":
        lines += [
            "Scoring: each row's prediction is the label with the highest summed log-likelihood; "
            "**the gate uses this accuracy** for the adapter and the baselines alike. Summed scores "
            "favour labels of few tokens, which biases an untrained base model against multi-token "
            "labels, so the length-normalised accuracy (log-likelihood per label character, as "
            "lm-eval-harness's acc_norm) is shown beside it; it is not gated.",
            "",
        ]
    per = ev.get("per_class") or {}
    if per:
        lines += ["## Per-class scores", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for lab, v in per.items():
            lines.append(f"| {lab} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
        lines.append("")
    lines += [
        "## Data",
        "",
        f"- source: `{cfg.get('dataset', {}).get('source')}` (format {data.get('format')})",
        f"- eval source: `{cfg.get('dataset', {}).get('eval_source') or 'stratified split'}`",
        f"- rows loaded: {data.get('loaded')} (+{data.get('loaded_eval', 0)} eval); dropped: "
        f"{data.get('dropped')} {data.get('dropped_by_reason') or ''}; leaked eval rows: {data.get('leaked')}",
        f"- training rows per label: {data.get('train_counts')}",
        f"- validation rows per label: {data.get('validation_counts')}",
        f"- test rows per label: {data.get('eval_counts')}",
        "",
        "## Training",
        "",
    ]
    lora = cfg.get("lora", {})
    t = cfg.get("training", {})
    head = cfg.get("task", {}).get("head", "lm")
    lines += [
        f"- head: {head}" + (" (sequence-classification score layer, in the adapter's modules_to_save)" if head == "classifier" else " (the language model writes the label)"),
        f"- LoRA r={lora.get('r')} alpha={lora.get('alpha')} dropout={lora.get('dropout')} "
        f"targets={lora.get('target_modules')}",
        f"- quantization: {tr.get('quantization')}; precision: {tr.get('precision')}; device: {tr.get('device')}",
        f"- learning rate {t.get('learning_rate')} ({t.get('lr_scheduler')}, warmup {t.get('warmup_ratio')}), "
        f"batch {t.get('batch_size')} x accumulation {t.get('gradient_accumulation_steps')}, "
        f"epochs {t.get('epochs')}, max steps {t.get('max_steps')}, padding-free {t.get('padding_free')}, "
        f"completion-only loss {t.get('completion_only_loss')}, shared prefix {t.get('shared_prefix')} "
        f"({tr.get('shared_prefix_batches', 0)} of {tr.get('batches', '?')} batches), seed {t.get('seed')}",
        f"- steps: {tr.get('steps')}; train loss: {tr.get('train_loss')}; training time: "
        f"{tr.get('train_seconds')} s; throughput: {tr.get('tokens_per_second')} tokens/s",
        "",
    ]
    plots = report.get("artifacts", {})
    if plots.get("loss_plot") or plots.get("confusion_plot"):
        lines += ["## Plots", ""]
        if plots.get("loss_plot"):
            lines.append("![loss](plots/loss.png)")
        if plots.get("confusion_plot"):
            lines.append("![confusion matrix](plots/confusion.png)")
        lines.append("")
    return "\n".join(lines)


def plot_loss(log_history: Sequence[dict[str, Any]], path: str) -> bool:
    """Training and eval loss against the step; False when there is nothing to plot."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    ev = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not ev:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if ev:
        ax.plot(*zip(*ev), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    os.chmod(path, 0o644)
    return True


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str) -> bool:
    """Confusion matrix heat map (rows: truth, columns: prediction)."""
    if not matrix:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = max(4.0, min(20.0, 0.35 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=max(4, 10 - n // 10))
    ax.set_yticks(range(n), labels, fontsize=max(4, 10 - n // 10))
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    os.chmod(path, 0o644)
    return True
