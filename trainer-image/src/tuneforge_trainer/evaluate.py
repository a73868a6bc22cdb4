"""Held-out evaluation and baselines.

Classification rows are scored by the log-likelihood of every label's completion, batched: the
prompts of a batch run once (left-padded, KV cache kept) and the cache is repeated for each
label, so a row costs one prompt pass plus ``len(labels)`` short label passes instead of
``len(labels)`` full passes. Generation rows use batched greedy generation. Baselines (the base
model zero/few-shot, TF-IDF + logistic regression, an OpenAI-compatible endpoint) are scored on
the same rows. Log-likelihood scoring reports ``accuracy`` (summed over the label's tokens: the
number the gate uses, for the adapter and the baselines alike) and ``accuracy_norm`` beside it
(per character of the label, as lm-eval-harness's acc_norm). torch is imported inside the
functions.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from tuneforge_trainer.config import TrainerConfig
from tuneforge_trainer.data import Example, render_prompt
from tuneforge_trainer.metrics import Timings, classification_metrics, generation_metrics, latency_summary, normalize_answer

__all__ = [
    "few_shot_messages",
    "length_normalized_predictions",
    "openai_baseline",
    "predict_generate",
    "predict_loglik",
    "score_model",
    "tfidf_baseline",
]

log = logging.getLogger(__name__)

# Sequences (rows x labels) per scoring forward pass: bounds memory of the label pass.
SEQ_BUDGET = 128


def _template_text(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def completion_text(tokenizer: Any, target: str) -> str:
    """The text the chat template puts after the generation prompt for an answer ``target``."""
    probe = [{"role": "user", "content": "x"}]
    prompt = _template_text(tokenizer, probe, True)
    full = _template_text(tokenizer, probe + [{"role": "assistant", "content": target}], False)
    return full[len(prompt) :] if full.startswith(prompt) else target


def _label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[list[int]]:
    stops = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        stops.add(im_end)
    out = []
    for lab in labels:
        ids = tokenizer(completion_text(tokenizer, lab), add_special_tokens=False).input_ids
        # Score up to and including the end-of-turn token so a label that prefixes another loses.
        for i, t in enumerate(ids):
            if t in stops:
                ids = ids[: i + 1]
                break
        out.append(ids)
    return out


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    n = min(len(x) for x in seqs) - 1  # every row keeps at least one token of its own
    first = seqs[0]
    for i in range(max(0, n)):
        t = first[i]
        if any(x[i] != t for x in seqs):
            return i
    return max(0, n)


def predict_loglik(
    model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str], batch_rows: int = 16,
    timings: Timings | None = None,
) -> tuple[list[str], list[list[float]], list[int]]:
    """Best label per prompt by summed log-likelihood; also the score matrix and label lengths.
    ``timings`` gets (rows, seconds) per batch (the shared prefix's one pass is not in them).

    The token prefix shared by every prompt (system prompt, instructions, label list, few-shot
    turns) runs once; each batch runs only its rows' own tokens on a copy of that cache, then
    the cache is repeated per label for one short label pass.
    """
    import copy

    import torch

    lab_ids = _label_token_ids(tokenizer, labels)
    n_lab = len(labels)
    lmax = max(len(x) for x in lab_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lab = torch.full((n_lab, lmax), pad, dtype=torch.long)
    lab_mask = torch.zeros((n_lab, lmax), dtype=torch.long)
    for i, ids in enumerate(lab_ids):
        lab[i, : len(ids)] = torch.tensor(ids)
        lab_mask[i, : len(ids)] = 1
    device = next(model.parameters()).device
    lab, lab_mask = lab.to(device), lab_mask.to(device)
    rows = max(1, min(batch_rows, SEQ_BUDGET // n_lab))
    scores: list[list[float]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            enc_all = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
            n_prefix = _common_prefix(enc_all)
            prefix_cache = None
            if n_prefix:
                prefix = torch.tensor([enc_all[0][:n_prefix]], device=device)
                prefix_cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
            for start in range(0, len(prompts), rows):
                t_batch = time.perf_counter()
                chunk = [x[n_prefix:] for x in enc_all[start : start + rows]]
                b = len(chunk)
                s_len = max(len(x) for x in chunk)
                suf = torch.full((b, s_len), pad, dtype=torch.long)
                suf_mask = torch.zeros((b, s_len), dtype=torch.long)
                for i, x in enumerate(chunk):  # left padding: the last position is real
                    suf[i, s_len - len(x) :] = torch.tensor(x)
                    suf_mask[i, s_len - len(x) :] = 1
                suf, suf_mask = suf.to(device), suf_mask.to(device)
                am = torch.cat([torch.ones((b, n_prefix), dtype=torch.long, device=device), suf_mask], dim=1)
                pos = (n_prefix + suf_mask.cumsum(-1) - 1).clamp(min=0)
                cache = None
                if prefix_cache is not None:
                    cache = copy.deepcopy(prefix_cache)
                    cache.batch_repeat_interleave(b)
                out = model(
                    input_ids=suf, attention_mask=am, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1,
                )
                first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
                cache = out.past_key_values
                cache.batch_repeat_interleave(n_lab)
                lab_b = lab.repeat(b, 1)  # (B*L, lmax), row-major like repeat_interleave
                mask_b = lab_mask.repeat(b, 1)
                total = first.repeat_interleave(n_lab, 0).gather(1, lab_b[:, :1]).squeeze(1)
                if lmax > 1:
                    am2 = torch.cat([am.repeat_interleave(n_lab, 0), mask_b[:, :-1]], dim=1)
                    pos2 = pos[:, -1:].repeat_interleave(n_lab, 0) + 1 + torch.arange(lmax - 1, device=device)
                    out2 = model(
                        input_ids=lab_b[:, :-1], attention_mask=am2, position_ids=pos2,
                        past_key_values=cache, use_cache=False,
                    )
                    logits = out2.logits.float()  # (B*L, lmax-1, V)
                    picked = logits.gather(2, lab_b[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                    total = total + (picked * mask_b[:, 1:]).sum(1)
                scores.extend(total.view(b, n_lab).tolist())
                if timings is not None:
                    timings.append((b, time.perf_counter() - t_batch))
    finally:
        if was_training:
            model.train()
    preds = [labels[max(range(n_lab), key=lambda j: s[j])] for s in scores]
    return preds, scores, [len(x) for x in lab_ids]


def length_normalized_predictions(scores: Sequence[Sequence[float]], labels: Sequence[str]) -> list[str]:
    """Best label per row by log-likelihood per character of the label (lm-eval-harness acc_norm).

    Summed log-likelihood favours labels of few tokens, which biases an untrained base model
    against multi-token labels; dividing by the label's length removes most of that bias.
    """
    lens = [max(1, len(lab)) for lab in labels]
    return [labels[max(range(len(labels)), key=lambda j: s[j] / lens[j])] for s in scores]


def predict_generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_rows: int = 16,
    timings: Timings | None = None,
) -> list[str]:
    """Greedy completions for chat-formatted prompts (left-padded batches); ``timings`` gets
    (rows, seconds) per batch."""
    import torch

    device = next(model.parameters()).device
    out_texts: list[str] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_rows):
                t_batch = time.perf_counter()
                enc = tokenizer(list(prompts[start : start + batch_rows]), add_special_tokens=False, padding=True, return_tensors="pt").to(device)
                gen = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                )
                new = gen[:, enc.input_ids.size(1) :]
                out_texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
                if timings is not None:
                    timings.append((len(new), time.perf_counter() - t_batch))
    finally:
        tokenizer.padding_side = old_side
    return out_texts


def match_label(text: str, labels: Sequence[str]) -> str:
    """Map a generated answer to a label (exact, then case-insensitive), else the raw answer."""
    ans = normalize_answer(text)
    if ans in labels:
        return ans
    low = {lab.lower(): lab for lab in labels}
    return low.get(ans.lower(), ans)


def few_shot_messages(
    shots: Sequence[Example], cfg: TrainerConfig, labels: Sequence[str]
) -> list[dict[str, str]]:
    """Prior user/assistant turns built from training rows (same prompt as the real rows)."""
    msgs: list[dict[str, str]] = []
    for ex in shots:
        for m in render_prompt(ex, cfg.dataset.prompt_template, labels, None):
            if m["role"] != "system":
                msgs.append(m)
        msgs.append({"role": "assistant", "content": ex.target})
    return msgs


def pick_shots(train: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k training rows, round-robin over labels so the shots cover as many labels as possible."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in train:
        by_label[ex.target].append(ex)
    rng = random.Random(seed)
    groups = [rng.sample(g, len(g)) for _, g in sorted(by_label.items())]
    rng.shuffle(groups)
    shots: list[Example] = []
    i = 0
    while len(shots) < k and any(groups):
        g = groups[i % len(groups)]
        if g:
            shots.append(g.pop())
        i += 1
    rng.shuffle(shots)
    return shots


def prompt_texts(
    tokenizer: Any, rows: Sequence[Example], cfg: TrainerConfig, labels: Sequence[str], prefix: list[dict[str, str]] | None = None
) -> list[str]:
    out = []
    for ex in rows:
        msgs = render_prompt(ex, cfg.dataset.prompt_template, labels, cfg.dataset.system_prompt)
        if prefix:
            sys_msgs = [m for m in msgs if m["role"] == "system"]
            msgs = sys_msgs + prefix + [m for m in msgs if m["role"] != "system"]
        out.append(_template_text(tokenizer, msgs, True))
    return out


def score_model(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Example],
    cfg: TrainerConfig,
    labels: Sequence[str],
    prefix: list[dict[str, str]] | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """Predict and score ``rows``; returns metrics plus ``predictions``, ``seconds`` and
    ``latency`` (p50/p99 per row, see ``latency_summary``)."""
    if cfg.task.head == "classifier":
        from tuneforge_trainer.classifier import score_classifier

        return score_classifier(model, tokenizer, rows, cfg, labels)
    t0 = time.monotonic()
    classification = cfg.task.type == "classification"
    method = method or cfg.eval.method
    if method == "auto":
        method = "loglik" if classification else "generate"
    prompts = prompt_texts(tokenizer, rows, cfg, labels, prefix)
    truth = [ex.target for ex in rows]
    res: dict[str, Any]
    timings: Timings = []
    if classification and method == "loglik":
        preds, scores, lens = predict_loglik(model, tokenizer, prompts, labels, cfg.eval.batch_size, timings)
        idx = {lab: j for j, lab in enumerate(labels)}
        nll = -sum(s[idx[t]] for s, t in zip(scores, truth))
        ntok = sum(lens[idx[t]] for t in truth)
        res = classification_metrics(truth, preds, labels)
        res["label_nll"] = nll / max(1, ntok)
        norm = length_normalized_predictions(scores, labels)
        res["accuracy_norm"] = sum(p == t for p, t in zip(norm, truth)) / max(1, len(truth))
    else:
        max_new = cfg.eval.max_new_tokens or (max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in truth + list(labels)) + 8)
        texts = predict_generate(model, tokenizer, prompts, max_new, cfg.eval.batch_size, timings)
        if classification:
            preds = [match_label(t, labels) for t in texts]
            res = classification_metrics(truth, preds, labels)
        else:
            preds = texts
            res = generation_metrics(truth, preds)
    res["method"] = method
    res["predictions"] = preds
    res["seconds"] = round(time.monotonic() - t0, 2)
    res["latency"] = latency_summary(timings)
    return res


def tfidf_baseline(train: Sequence[Example], rows: Sequence[Example], labels: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """TF-IDF (word 1-2 grams) + logistic regression trained on the training rows; its latency
    is each row predicted alone (a request of one row), after the fit."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.monotonic()
    clf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=10.0, random_state=seed),
    )
    clf.fit([f"{e.instruction or ''} {e.text}" for e in train], [e.target for e in train])
    preds, timings = [], []
    for e in rows:
        t_row = time.perf_counter()
        preds.append(str(clf.predict([f"{e.instruction or ''} {e.text}"])[0]))
        timings.append((1, time.perf_counter() - t_row))
    res = classification_metrics([e.target for e in rows], preds, labels)
    res["seconds"] = round(time.monotonic() - t0, 2)
    res["latency"] = latency_summary(timings)
    res["hardware"] = "cpu"  # no GPU: its latency is its cost
    return res


def openai_baseline(rows: Sequence[Example], cfg: TrainerConfig, labels: Sequence[str]) -> dict[str, Any]:
    """Score an OpenAI-compatible chat endpoint (temperature 0) on the same rows.

    The official client retries 429s, 5xx and connection errors with exponential backoff and
    jitter (honouring Retry-After), so one rate-limited request does not fail a gate; at most
    ``concurrency`` requests are in flight. A row that still fails after the retries fails the
    baseline (recorded as its error), never a silently shorter score. Each request's latency
    (retries included) and the tokens the endpoint reports in ``usage`` are kept: with the
    config's token prices they give the endpoint's cost per 1,000 predictions.
    """
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    oc = cfg.eval.baselines.openai
    assert oc is not None
    t0 = time.monotonic()
    use = list(rows)[: oc.max_rows] if oc.max_rows else list(rows)
    max_tokens = cfg.eval.max_new_tokens or 64
    # Endpoints without auth (a vLLM in the cluster) need no key; the client insists on one.
    client = OpenAI(
        base_url=oc.base_url, api_key=os.environ.get(oc.api_key_env) or "EMPTY",
        max_retries=oc.max_retries, timeout=oc.timeout_s,
    )

    timings: Timings = []
    usages: list[Any] = []  # each row's reported usage (None when absent); list.append is atomic

    def ask(ex: Example) -> str:
        t_row = time.perf_counter()
        resp = client.chat.completions.create(
            model=oc.model,
            messages=render_prompt(ex, cfg.dataset.prompt_template, labels, cfg.dataset.system_prompt),  # type: ignore[arg-type]
            temperature=0,
            max_tokens=max_tokens,
        )
        timings.append((1, time.perf_counter() - t_row))
        usages.append(resp.usage)
        return resp.choices[0].message.content or ""

    try:
        with ThreadPoolExecutor(max_workers=oc.concurrency, thread_name_prefix="openai-baseline") as pool:
            preds = list(pool.map(ask, use))
    finally:
        client.close()
    truth = [e.target for e in use]
    if cfg.task.type == "classification":
        res = classification_metrics(truth, [match_label(p, labels) for p in preds], labels)
    else:
        res = generation_metrics(truth, preds)
    res["seconds"] = round(time.monotonic() - t0, 2)
    res["latency"] = latency_summary(timings)
    reported = [u for u in usages if u is not None]
    res["usage"] = {"prompt_tokens": sum(u.prompt_tokens for u in reported),
                    "completion_tokens": sum(u.completion_tokens for u in reported),
                    "rows_without_usage": len(usages) - len(reported)}
    return res
