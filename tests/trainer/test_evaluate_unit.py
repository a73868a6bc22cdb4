"""Evaluation pieces that need no model: baselines, shot picking, prefix sharing, label matching."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tuneforge_trainer.config import parse_config
from tuneforge_trainer.data import Example
from tuneforge_trainer.evaluate import _common_prefix, match_label, openai_baseline, pick_shots, tfidf_baseline


def rows(spec: dict[str, list[str]]) -> list[Example]:
    return [Example(text=t, target=lab, row=i) for lab, texts in spec.items() for i, t in enumerate(texts)]


def test_tfidf_baseline() -> None:
    train = rows({"card": ["my card is lost", "card not arrived", "where is my card"], "fx": ["exchange rate euro", "currency rate", "rate for dollars"]})
    held = rows({"card": ["lost card"], "fx": ["euro exchange rate"]})
    res = tfidf_baseline(train, held, ["card", "fx"])
    assert res["accuracy"] == 1.0
    # each row predicted alone after the fit: a request of one row, well under a second here
    assert res["hardware"] == "cpu"  # priced by its latency on the card, not by GPU-seconds
    lat = res["latency"]
    assert lat["rows_per_request"] == 1 and 0 < lat["p50_ms"] <= lat["p99_ms"] < 1000


def test_pick_shots_cover_labels() -> None:
    train = rows({lab: [f"{lab}{i}" for i in range(5)] for lab in "abcd"})
    shots = pick_shots(train, 8, seed=0)
    assert len(shots) == 8 and Counter(s.target for s in shots) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert [s.text for s in pick_shots(train, 8, seed=0)] == [s.text for s in shots]


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [
        ([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]], 2),
        ([[1, 2, 3], [1, 2, 3]], 2),  # each row keeps one token of its own
        ([[1], [1]], 0),
        ([[5, 6], [7, 8]], 0),
        ([], 0),
    ],
)
def test_common_prefix(seqs: list[list[int]], expected: int) -> None:
    assert _common_prefix(seqs) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("card_arrival", "card_arrival"), (" Card_Arrival.\n", "card_arrival"), ("'fx'", "fx"), ("something", "something")],
)
def test_match_label(text: str, expected: str) -> None:
    assert match_label(text, ["card_arrival", "fx"]) == expected


class _Handler(BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible endpoint: the first request gets a 429, the rest answer."""

    seen: list[dict[str, Any]] = []
    lock = threading.Lock()
    in_flight = 0
    max_in_flight = 0
    throttle_first = True

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = _Handler
        with cls.lock:
            cls.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            throttle, cls.throttle_first = cls.throttle_first, False
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            if throttle:
                reply = (429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}}, {"retry-after-ms": "20"})
            else:
                time.sleep(0.05)  # long enough for requests to overlap
                text = body["messages"][-1]["content"].split("Message: ")[1]
                answer = "card" if "card" in text else "fx."
                reply = (200, {
                    "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42},
                }, None)
        finally:
            # Counted out before the answer leaves: once the client has it, it may send its next
            # request while this thread has not yet run past _send (4 "in flight" with 3 slots).
            with cls.lock:
                cls.in_flight -= 1
        self._send(*reply)

    def _send(self, code: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


def test_openai_baseline_retries_a_429_with_bounded_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TEST_KEY", "sk-test")
        cfg = parse_config({
            "model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"},
            "eval": {"baselines": {"openai": {
                "base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "gpt-x", "api_key_env": "TEST_KEY",
                "concurrency": 3, "max_retries": 2,
            }}},
        })
        held = rows({"card": [f"my card {i}" for i in range(6)], "fx": [f"rate {i}" for i in range(6)]})
        res = openai_baseline(held, cfg, ["card", "fx"])
        assert res["accuracy"] == 1.0 and res["n"] == 12
        assert len(_Handler.seen) == 13  # one 429, retried, then every row once
        first = _Handler.seen[0]
        assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
        assert first["body"]["model"] == "gpt-x" and first["body"]["temperature"] == 0
        assert 1 < _Handler.max_in_flight <= 3
        # every row's latency (the endpoint sleeps 50 ms; the 429's retry is in one of them) and
        # the tokens the endpoint reported, which price the baseline on the model card
        assert res["latency"]["rows_per_request"] == 1 and res["latency"]["p50_ms"] >= 50
        assert res["usage"] == {"prompt_tokens": 12 * 40, "completion_tokens": 12 * 2, "rows_without_usage": 0}
    finally:
        server.shutdown()


def test_openai_baseline_fails_when_retries_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    class Always429(_Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(429, {"error": {"message": "Rate limit reached"}}, {"retry-after-ms": "5"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Always429)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        cfg = parse_config({
            "model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"},
            "eval": {"baselines": {"openai": {"base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "m", "max_retries": 1}}},
        })
        import openai

        with pytest.raises(openai.RateLimitError):
            openai_baseline(rows({"card": ["my card"], "fx": ["rate"]}), cfg, ["card", "fx"])
    finally:
        server.shutdown()


def test_base_model_baselines_never_score_a_model_without_an_adapter() -> None:
    """A model with no adapter to switch off is recorded as an error, not scored as "the base"."""
    from tuneforge_trainer.data import PreparedData, DataReport
    from tuneforge_trainer.train import run_baselines

    cfg = parse_config({
        "model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"},
        "eval": {"baselines": {"zero_shot": True, "few_shot": 2, "tfidf_lr": False}},
    })
    train = rows({"card": ["my card", "card lost"], "fx": ["rate", "euro"]})
    data = PreparedData(train=train, eval=train, labels=["card", "fx"], report=DataReport())
    out = run_baselines(cfg, object(), None, data, train, "loglik")
    assert set(out) == {"zero_shot", "few_shot_2"}
    assert all("no LoRA adapter" in v["error"] for v in out.values())


def test_length_normalised_predictions() -> None:
    # Summed log-likelihood picks the one-token label; per character, the long label wins.
    from tuneforge_trainer.evaluate import length_normalized_predictions

    labels = ["fx", "card_arrival_delayed"]
    scores = [[-3.0, -10.0], [-1.0, -30.0]]
    assert [labels[max(range(2), key=lambda j: s[j])] for s in scores] == ["fx", "fx"]
    assert length_normalized_predictions(scores, labels) == ["card_arrival_delayed", "fx"]


def test_summary_carries_accuracy_norm() -> None:
    from tuneforge_trainer.summary import parse_summary
    from tuneforge_trainer.train import _summary_from

    cfg = parse_config({"model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"}})
    s = _summary_from(
        cfg, "train", {"accuracy": 0.9, "accuracy_norm": 0.91, "n": 10},
        {"zero_shot": {"accuracy": 0.1, "accuracy_norm": 0.35}}, status="succeeded",
    )
    back = parse_summary(s.to_json())
    assert back.accuracy_norm == 0.91 and back.baselines[0].accuracy_norm == 0.35


def test_score_model_reports_accuracy_norm_beside_accuracy(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge_trainer import evaluate

    labels = ["fx", "card_arrival_delayed"]
    held = rows({"card_arrival_delayed": ["late card"], "fx": ["rate"]})
    monkeypatch.setattr(evaluate, "prompt_texts", lambda tok, rs, cfg, labs, prefix=None: [r.text for r in rs])
    monkeypatch.setattr(
        evaluate, "predict_loglik",
        lambda model, tok, prompts, labs, batch, timings: timings.append((2, 0.25))
        or (["fx", "fx"], [[-3.0, -10.0], [-1.0, -30.0]], [1, 5]),
    )
    cfg = parse_config({"model": {"source": "/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"}})
    res = evaluate.score_model(None, None, held, cfg, labels)
    assert res["method"] == "loglik" and res["accuracy"] == 0.5 and res["accuracy_norm"] == 1.0
    # both rows waited for their batch of two
    assert res["latency"] == {"p50_ms": 250.0, "p99_ms": 250.0, "rows_per_request": 2}
