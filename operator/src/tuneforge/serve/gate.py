"""The pre-promotion gate: held-out rows asked through the preview Service, scored for accuracy
and latency, judged against ``spec.rollout.gate``.

Where it runs: a short Job per candidate (``<name>-gate-<short digest>``), not the operator.

- Reach: the Job runs in the ModelServe's namespace and calls the preview Service like any
  client; the operator may run outside the cluster network (the tests run it on the host) or be
  fenced off by a namespace's NetworkPolicy.
- Least privilege: the API key Secret is mounted into the Job; the operator never reads Secrets.
- Memory and fairness: minutes of HTTP through the ``openai`` client stay out of the operator
  (its < 200 MB at 1,000 objects goal), and one slow gate never holds the operator's event loop.
- Restarts: the Job is the durable record — a deterministic name (AlreadyExists is success) and
  its measures in the termination message — so an operator killed mid-gate neither loses the
  gate nor runs it twice.

Rows: ``--rows-uri`` names them as the ModelServe does (``s3://bucket/key``, ``pvc://claim/path``
mounted under ``/mnt/pvc``, or a path); s3:// through boto3, which the operator process never imports.

Heads: an lm version is asked through chat completions (``messages``, answer budget from the
targets); a classifier version (``--head classifier``) through vLLM's ``/classify`` at the
server's root (``text`` of each row, one forward pass), its answer the label name the server
maps the top class to. Either way the answer is compared with ``target`` and every request's
latency counts, so one gate judges both heads the same way.

The Job reports only measures (:class:`GateMeasures`); the operator judges them (:func:`judge`)
against the spec it holds at that moment. Everything here but :func:`run_gate` and :func:`main`
is pure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from .spec import GateSpec

__all__ = [
    "Answer", "GateMeasures", "GateRow", "GateVerdict", "answer_budget", "judge", "main", "measure", "classify_label", "classify_url", "normalize_answer",
    "parse_rows", "percentile", "read_rows_text", "run_gate", "sample_rows",
]

WARMUP_REQUESTS = 3
"""Unscored requests sent one by one before the measured ones: the first requests to a fresh
server pay for loading the LoRA slot and capturing CUDA graphs, which no user sees twice."""
ANSWER_MARGIN_TOKENS = 8
"""As the trainer's generation budget: the longest target plus this many tokens."""
MAX_ANSWER_TOKENS = 1024
"""The budget's cap, so a long target never asks past the context window."""


HEADS = ("lm", "classifier")


@dataclasses.dataclass(frozen=True)
class GateRow:
    """One held-out row: what the model is asked (chat ``messages`` for an lm head, the bare
    ``text`` for a classifier) and the answer it must give."""

    messages: tuple[Mapping[str, str], ...]
    target: str
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the server answered one row, how long it took; ``error`` when the request failed."""

    text: str | None
    latency_ms: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class GateMeasures:
    rows: int
    correct: int
    errors: int
    accuracy: float
    p50_ms: float | None
    p99_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "correct": self.correct, "errors": self.errors, "accuracy": self.accuracy,
                "p50Ms": self.p50_ms, "p99Ms": self.p99_ms}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "GateMeasures":
        return cls(rows=int(raw["rows"]), correct=int(raw["correct"]), errors=int(raw.get("errors", 0)),
                   accuracy=float(raw["accuracy"]), p50_ms=raw.get("p50Ms"), p99_ms=raw.get("p99Ms"))


@dataclasses.dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: tuple[str, ...]


def normalize_answer(text: str) -> str:
    """Trim whitespace, surrounding quotes and a trailing period; the first line only (the
    trainer's ``metrics.normalize_answer``: the served adapter is scored as it was evaluated)."""
    t = text.strip()
    t = t.split("\n")[0].strip() if "\n" in t and not t.lstrip().startswith(("{", "[")) else t
    return t.strip().strip("\"'`").rstrip(".").strip()


def _correct(answer: Answer, target: str) -> bool:
    if answer.error is not None or answer.text is None:
        return False
    got, want = normalize_answer(answer.text), normalize_answer(target)
    return got == want or got.lower() == want.lower()


def parse_rows(lines: Iterable[str], head: str = "lm") -> list[GateRow]:
    """JSONL rows with ``target`` and what the head reads: ``messages`` (lm) or ``text``
    (classifier; a chat row's last user turn also serves, as the trainer's classifier reads it).
    The trainer's predictions.jsonl has both for its head. A bad line raises ValueError naming
    its number."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            target = raw["target"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {n}: needs a JSON object with target and {'text' if head == 'classifier' else 'messages'} ({exc})") from None
        messages = raw.get("messages")
        if messages is not None and (not isinstance(messages, list) or not messages
                                     or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise ValueError(f"line {n}: messages must be a non-empty list of {{role, content}}")
        text = raw.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"line {n}: text must be a string")
        if head == "classifier" and text is None:
            users = [m["content"] for m in messages or () if m.get("role") == "user"]
            if not users:
                raise ValueError(f"line {n}: a classifier is asked a row's text: needs text (or messages with a user turn)")
            text = str(users[-1])
        if head == "lm" and messages is None:
            raise ValueError(f"line {n}: needs messages (rows with text only are a classifier's: its ModelServe gates with head classifier)")
        rows.append(GateRow(tuple(messages or ()), str(target), text))
    return rows


def sample_rows(rows: Sequence[GateRow], n: int, seed: int = 0) -> list[GateRow]:
    """Up to ``n`` rows, each target keeping its share (largest remainder, ties by target),
    seeded, in file order: the trainer's ``data.stratified_sample``, so the ModelServe's gate
    scores the same kind of sample as the FineTuneJob's evaluation (the gate may not import the
    trainer; a test checks both pick the same rows)."""
    if not n or len(rows) <= n:
        return list(rows)
    by_target: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_target[r.target].append(i)
    quota = {t: len(ix) * n / len(rows) for t, ix in by_target.items()}
    take = {t: int(q) for t, q in quota.items()}
    for t in sorted(quota, key=lambda t: (-(quota[t] - take[t]), t))[: n - sum(take.values())]:
        take[t] += 1
    rng = random.Random(seed)
    keep: set[int] = set()
    for t in sorted(by_target):
        keep.update(rng.sample(by_target[t], take[t]))
    return [r for i, r in enumerate(rows) if i in keep]


def answer_budget(rows: Sequence[GateRow]) -> int:
    """``max_tokens`` for the rows: the longest target in UTF-8 bytes (a token is at least one
    byte, so never fewer tokens than the trainer's tokenizer count) plus the trainer's margin,
    capped at ``MAX_ANSWER_TOKENS``."""
    longest = max((len(r.target.encode("utf-8")) for r in rows), default=0)
    return min(MAX_ANSWER_TOKENS, longest + ANSWER_MARGIN_TOKENS)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linearly interpolated percentile (q in 0..100; numpy's default method); None for no
    values. Unlike nearest rank, p99 of fewer than 101 values is not simply the maximum: the
    slowest value weighs (101 - n)% of it, and nothing from 101 values on."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q / 100 * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def measure(rows: Sequence[GateRow], answers: Sequence[Answer]) -> GateMeasures:
    """Accuracy over every row (a failed request is a wrong answer) and latency percentiles over
    every request (a timeout is latency a user would have seen)."""
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} rows but {len(answers)} answers")
    correct = sum(_correct(a, r.target) for r, a in zip(rows, answers))
    latencies = [a.latency_ms for a in answers]
    return GateMeasures(
        rows=len(rows), correct=correct, errors=sum(a.error is not None for a in answers),
        accuracy=correct / len(rows) if rows else 0.0,
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
    )


def judge(m: GateMeasures, gate: GateSpec) -> GateVerdict:
    """Pass only when every set threshold holds; no rows never passes."""
    reasons: list[str] = []
    ok = True
    if m.rows == 0:
        return GateVerdict(False, ("no rows were asked",))
    if gate.min_accuracy is not None:
        met = m.accuracy >= gate.min_accuracy
        ok &= met
        reasons.append(f"accuracy {m.accuracy:.3f} {'>=' if met else '<'} {gate.min_accuracy} ({m.correct}/{m.rows}, {m.errors} errors)")
    if gate.max_p99_ms is not None:
        met = m.p99_ms is not None and m.p99_ms <= gate.max_p99_ms
        ok &= met
        reasons.append(f"p99 {m.p99_ms:.0f} ms {'<=' if met else '>'} {gate.max_p99_ms} ms" if m.p99_ms is not None else "no latency measured")
    return GateVerdict(ok, tuple(reasons))


def classify_url(base_url: str) -> str:
    """vLLM's ``/classify`` for an OpenAI base URL (it sits at the server's root, not under /v1)."""
    return base_url.rstrip("/").removesuffix("/v1") + "/classify"


def classify_label(body: Mapping[str, Any]) -> str:
    """The label of a ``/classify`` response's one result (ValueError when it names none: a
    server without id2label would answer class indices nobody can compare with a target)."""
    data = body.get("data") or []
    if len(data) != 1 or not isinstance(data[0], Mapping):
        raise ValueError(f"/classify answered {len(data)} results for one input")
    label = data[0].get("label")
    if not isinstance(label, str) or not label:
        raise ValueError(f"/classify answered class {data[0].get('index')} without a label name")
    return label


async def run_gate(base_url: str, model: str, rows: Sequence[GateRow], api_key: str | None = None,
                   concurrency: int = 8, timeout_s: float = 60.0, max_tokens: int | None = None,
                   warmup: int = WARMUP_REQUESTS, head: str = "lm") -> list[Answer]:
    """Ask every row with at most ``concurrency`` requests in flight; answers come back in row
    order. An lm head is asked through the official ``openai`` client's chat completions
    (``max_tokens`` defaults to :func:`answer_budget`); a classifier through ``/classify`` (one
    row's text per request, the answer its label name). First the first ``warmup`` rows are
    asked one by one and their answers dropped. No retries: a measured request that fails counts."""
    budget = answer_budget(rows) if max_tokens is None else max_tokens
    # /classify is not an OpenAI endpoint: aiohttp (Kopf's HTTP library, so already in the image).
    import aiohttp
    from openai import AsyncOpenAI  # the operator process never imports it

    client = AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    url = classify_url(base_url)
    slots = asyncio.Semaphore(concurrency)

    async def answer(row: GateRow) -> str:
        if head == "classifier":
            async with http.post(url, json={"model": model, "input": row.text}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/classify answered HTTP {resp.status}: {(await resp.text())[:150]}")
                return classify_label(await resp.json())
        chat = await client.chat.completions.create(
            model=model, messages=[dict(m) for m in row.messages],  # type: ignore[misc]
            temperature=0, max_tokens=budget)
        return chat.choices[0].message.content or ""

    async def ask(row: GateRow) -> Answer:
        async with slots:
            start = time.perf_counter()
            try:
                text = await answer(row)
                return Answer(text, (time.perf_counter() - start) * 1000)
            except Exception as exc:  # noqa: BLE001 - any failure is a wrong answer, recorded
                return Answer(None, (time.perf_counter() - start) * 1000, f"{type(exc).__name__}: {exc}"[:200])

    try:
        for r in rows[:warmup]:
            await ask(r)
        return list(await asyncio.gather(*(ask(r) for r in rows)))
    finally:
        await client.close()
        await http.close()


PVC_ROOT = "/mnt/pvc"


def read_rows_text(uri: str, timeout: float = 60.0) -> str:
    """The JSONL text at ``uri`` (s3://, pvc:// mounted under /mnt/pvc, or a path).

    s3:// goes through boto3 (imported here, never by the operator process), which takes the
    endpoint, region and keys from the ``AWS_*`` variables the Job gets from ``spec.s3``."""
    if uri.startswith("s3://"):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ValueError(f"{uri}: needs s3://bucket/key")
        config = Config(s3={"addressing_style": "path"}, connect_timeout=timeout, read_timeout=timeout,
                        retries={"max_attempts": 5, "mode": "standard"})
        try:
            body = boto3.client("s3", config=config).get_object(Bucket=bucket, Key=key)["Body"]
            return str(body.read().decode("utf-8"))
        except (BotoCoreError, ClientError) as exc:
            raise OSError(f"{uri}: {exc}") from None
    path = f"{PVC_ROOT}/{uri.removeprefix('pvc://')}" if uri.startswith("pvc://") else uri.removeprefix("file://")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _fail(message: str, termination_log: str) -> int:
    print(message, file=sys.stderr)
    try:
        with open(termination_log, "w", encoding="utf-8") as f:
            f.write(message[:1000])
    except OSError:
        pass  # outside a pod
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The gate Job's entry point: rows from a local JSONL file, measures as one JSON line on
    stdout and in the termination message. Exit 0 whenever it measured (pass/fail is the
    operator's call), 2 on unusable rows."""
    import os

    p = argparse.ArgumentParser(prog="tuneforge-gate")
    p.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://<name>-preview:8000/v1")
    p.add_argument("--model", required=True, help="Served model name to ask")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rows-file", help="JSONL with target and messages (lm) or text (classifier)")
    src.add_argument("--rows-uri", help="The same as s3://bucket/key, pvc://claim/path or a path ('' when there is none)")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0, help="Seconds per request")
    p.add_argument("--warmup", type=int, default=WARMUP_REQUESTS, help="Unscored requests sent first")
    p.add_argument("--max-tokens", type=int, default=None, help="Answer budget (default: the longest target + 8)")
    p.add_argument("--api-key-env", default="TUNEFORGE_API_KEY")
    p.add_argument("--head", choices=HEADS, default="lm", help="lm: chat completions; classifier: /classify")
    p.add_argument("--termination-log", default="/dev/termination-log")
    args = p.parse_args(argv)
    where = args.rows_file if args.rows_file is not None else args.rows_uri
    if not where:
        return _fail("No held-out rows to ask: set spec.rollout.gate.datasetUri (the FineTuneJob's status names no "
                     "artifacts.predictions)", args.termination_log)
    try:
        text = read_rows_text(where if args.rows_uri is not None else f"file://{where}")
        rows = sample_rows(parse_rows(text.splitlines(), args.head), args.rows)
    except (OSError, ValueError) as exc:
        return _fail(f"Gate rows {where}: {exc}", args.termination_log)
    if not rows:
        return _fail(f"Gate rows {where}: no rows", args.termination_log)
    answers = asyncio.run(run_gate(args.base_url, args.model, rows, os.environ.get(args.api_key_env),
                                   args.concurrency, args.timeout, args.max_tokens, args.warmup, args.head))
    line = json.dumps(measure(rows, answers).to_json())
    print(line)
    try:
        with open(args.termination_log, "w", encoding="utf-8") as f:
            f.write(line)
    except OSError:
        pass  # outside a pod
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
