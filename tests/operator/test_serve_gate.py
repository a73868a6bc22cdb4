"""The pre-promotion gate: scoring, percentiles, the verdict, stratified sampling, and the
runner through the official openai client against a tiny local stand-in server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tuneforge.serve.gate import (
    Answer, GateMeasures, GateRow, answer_budget, classify_label, classify_url, judge, main, measure, normalize_answer, parse_rows,
    percentile, run_gate,
    sample_rows,
)
from tuneforge.serve.spec import GateSpec


def row(target: str, text: str = "q") -> GateRow:
    return GateRow(({"role": "user", "content": text},), target)


@pytest.mark.parametrize("text,want", [(" card_lost.\n", "card_lost"), ('"refund"', "refund"), ("a\nb", "a"), ('{"a": 1}', '{"a": 1}')])
def test_normalize_answer_as_the_trainer_does(text: str, want: str) -> None:
    assert normalize_answer(text) == want


def test_measure_counts_errors_as_wrong_and_their_latency() -> None:
    rows = [row("a"), row("b"), row("c"), row("d")]
    answers = [Answer("a", 10), Answer("B.", 20), Answer("x", 30), Answer(None, 1000, "Timeout")]
    m = measure(rows, answers)
    assert (m.rows, m.correct, m.errors, m.accuracy) == (4, 2, 1, 0.5)
    assert m.p50_ms == 25 and m.p99_ms == pytest.approx(30 + 0.97 * 970)
    assert GateMeasures.from_json(m.to_json()) == m
    with pytest.raises(ValueError):
        measure(rows, answers[:3])


def test_percentile_is_interpolated_so_p99_is_not_the_slowest_request() -> None:
    """With the example's 80 rows nearest-rank p99 was the maximum: one slow request failed
    maxP99Ms. Interpolated (linear, as numpy's default), the slowest request weighs (101 - n)%
    of p99 for n <= 101 rows and nothing from 101 rows on (MS-8)."""
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.5, 99.01, 100)
    assert percentile([], 99) is None and percentile([7], 99) == 7
    eighty = [100.0] * 79 + [5000.0]
    p99 = percentile(eighty, 99)
    assert p99 is not None and abs(p99 - (100 + 0.21 * 4900)) < 1e-6
    assert percentile([100.0] * 100 + [5000.0], 99) == 100.0


M = GateMeasures(rows=100, correct=85, errors=0, accuracy=0.85, p50_ms=200, p99_ms=900)


@pytest.mark.parametrize("gate,passed", [
    (GateSpec(min_accuracy=0.8), True),
    (GateSpec(min_accuracy=0.85), True),
    (GateSpec(min_accuracy=0.9), False),
    (GateSpec(max_p99_ms=1000), True),
    (GateSpec(max_p99_ms=800), False),
    (GateSpec(min_accuracy=0.8, max_p99_ms=800), False),
    (GateSpec(min_accuracy=0.8, max_p99_ms=900), True),
])
def test_judge(gate: GateSpec, passed: bool) -> None:
    verdict = judge(M, gate)
    assert verdict.passed is passed and verdict.reasons
    assert not judge(GateMeasures(0, 0, 0, 0.0, None, None), GateSpec(min_accuracy=0.0)).passed


def test_sample_rows_proportional_as_the_fine_tune_jobs_evaluation() -> None:
    """Each target keeps its share (largest remainder), the trainer's stratified_sample, so the
    same minAccuracy means the same thing at the FineTuneJob's gate and at the ModelServe's (MS-8)."""
    from tuneforge_trainer.data import stratified_sample
    rows = [row("a", str(i)) for i in range(50)] + [row("b", str(i)) for i in range(3)] + [row("c", "0")]
    picked = sample_rows(rows, 7, seed=1)
    # 50/54 of 7 rows is 6.48: "a" takes 6 and the largest remainder; b (0.39) and c (0.13) none.
    assert len(picked) == 7 and {r.target for r in picked} == {"a"}, picked
    assert [r.target for r in sample_rows(rows, 27, seed=1)].count("b") == 2
    assert picked == sample_rows(rows, 7, seed=1)
    assert len(sample_rows(rows, 1000)) == len(rows)
    for n, seed in [(7, 1), (20, 3), (53, 0)]:
        assert sample_rows(rows, n, seed) == stratified_sample(rows, n, seed)  # type: ignore[arg-type]


def test_answer_budget_follows_the_longest_target() -> None:
    """At least the trainer's "longest target + 8 tokens" (a token is at least one byte), so a
    long generation target is never cut at a fixed 32 tokens; capped for the context window."""
    assert answer_budget([row("card_lost"), row("refund")]) == 9 + 8
    long = "x" * 300
    assert answer_budget([row(long)]) == 308 and answer_budget([row("é" * 10)]) == 28
    assert answer_budget([row("x" * 5000)]) == 1024


def test_parse_rows_reads_predictions_jsonl_and_names_bad_lines() -> None:
    good = json.dumps({"row": 1, "messages": [{"role": "user", "content": "hi"}], "target": "greet", "prediction": "greet"})
    assert parse_rows([good, ""]) == [GateRow(({"role": "user", "content": "hi"},), "greet")]
    with pytest.raises(ValueError, match="line 2"):
        parse_rows([good, json.dumps({"messages": []})])


def _send_json(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """A 200 with a JSON body, as vLLM's OpenAI-compatible endpoints answer."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Standin(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers the last user message's upper-cased text,
    slowly for one row, with a 500 for another."""

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer sekret"
        text = body["messages"][-1]["content"]
        type(self).seen.append((text, body.get("max_tokens")))
        if text == "boom":
            self.send_response(500)
            self.end_headers()
            return
        if text == "slow":
            time.sleep(0.3)
        type(self).in_flight += 1
        type(self).peak = max(type(self).peak, type(self).in_flight)
        time.sleep(0.02)
        type(self).in_flight -= 1
        out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text.upper()}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        _send_json(self, out)

    def log_message(self, *args: Any) -> None:
        pass

    in_flight = 0
    peak = 0
    seen: list[tuple[str, int | None]] = []


@pytest.fixture
def standin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Standin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Standin.peak = 0
    _Standin.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_runner_through_the_openai_client_bounded(standin: str) -> None:
    rows = [row(t.upper(), t) for t in ["a", "b", "c", "d", "e", "f", "slow"]] + [row("X", "boom"), row("WRONG", "g")]
    answers = asyncio.run(run_gate(standin, "intents", rows, api_key="sekret", concurrency=3, timeout_s=5))
    assert [a.text for a in answers[:7]] == ["A", "B", "C", "D", "E", "F", "SLOW"]
    assert answers[7].error and "500" in answers[7].error
    assert _Standin.peak <= 3
    m = measure(rows, answers)
    assert (m.correct, m.errors) == (7, 1) and m.p99_ms is not None and m.p99_ms >= 300
    assert judge(m, GateSpec(min_accuracy=0.75, max_p99_ms=5000)).passed


def test_warm_up_requests_are_sent_first_and_not_scored(standin: str) -> None:
    """The first requests (a LoRA slot loaded, CUDA graphs captured) are asked and dropped (MS-8)."""
    rows = [row("SLOW", "slow")] + [row(t.upper(), t) for t in "abc"]
    answers = asyncio.run(run_gate(standin, "intents", rows, api_key="sekret", concurrency=2, timeout_s=5,
                                   max_tokens=17, warmup=2))
    assert [t for t, _ in _Standin.seen[:2]] == ["slow", "a"] and len(_Standin.seen) == 6
    assert {mt for _, mt in _Standin.seen} == {17}
    assert len(answers) == 4 and [a.text for a in answers] == ["SLOW", "A", "B", "C"]


def test_main_writes_measures_to_the_termination_log(standin: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": t}], "target": t.upper()}) for t in "abcd"))
    term = tmp_path / "termination-log"
    monkeypatch.setenv("TUNEFORGE_API_KEY", "sekret")
    assert main(["--base-url", standin, "--model", "m", "--rows-file", str(rows), "--termination-log", str(term)]) == 0
    out = json.loads(term.read_text())
    assert out["rows"] == 4 and out["accuracy"] == 1.0
    assert len(_Standin.seen) == 4 + 3 and {mt for _, mt in _Standin.seen} == {1 + 8}  # 3 warm-ups, budget from "A"
    assert json.loads(capsys.readouterr().out) == out
    assert main(["--base-url", standin, "--model", "m", "--rows-file", str(tmp_path / "missing.jsonl")]) == 2


def test_rows_are_read_from_s3_with_the_jobs_aws_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """s3:// rows go through boto3 with the endpoint and keys of the Job's AWS_* variables (path
    style, as self-hosted stores need); a missing object is an OSError naming the URI."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tuneforge.serve.gate import read_rows_text

    seen: list[tuple[str, str]] = []

    class Store(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append((self.path, self.headers.get("Authorization", "")))
            body = b'{"messages": [], "target": "x"}\n' if self.path == "/runs/team%20a/p.jsonl" else b"<Error><Code>NoSuchKey</Code></Error>"
            self.send_response(200 if b"messages" in body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}", "AWS_REGION": "eu-west-1",
                     "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"}.items():
            monkeypatch.setenv(k, v)
        assert read_rows_text("s3://runs/team a/p.jsonl") == '{"messages": [], "target": "x"}\n'
        assert seen[0][0] == "/runs/team%20a/p.jsonl" and seen[0][1].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
        with pytest.raises(OSError, match="s3://runs/missing.jsonl"):
            read_rows_text("s3://runs/missing.jsonl")
    finally:
        server.shutdown()




# --- head classifier: rows with text, asked through /classify, scored by label name ---------------

@pytest.mark.parametrize(("line", "head", "want"), [
    # the trainer's classifier predictions.jsonl: the bare text
    ({"row": 1, "text": "lost my card", "target": "lost_or_stolen_card", "prediction": "pin_blocked"}, "classifier",
     GateRow((), "lost_or_stolen_card", "lost my card")),
    # chat rows serve a classifier too: the last user turn (as the trainer's classifier reads them)
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "target": "greet"}, "classifier",
     GateRow(({"role": "system", "content": "s"}, {"role": "user", "content": "hi"}), "greet", "hi")),
])
def test_parse_rows_for_a_classifier(line: dict[str, Any], head: str, want: GateRow) -> None:
    assert parse_rows([json.dumps(line)], head) == [want]


@pytest.mark.parametrize(("line", "head", "message"), [
    ({"text": "hi", "target": "greet"}, "lm", "line 1: needs messages .*head classifier"),
    ({"messages": [{"role": "system", "content": "s"}], "target": "greet"}, "classifier", "line 1: a classifier is asked a row's text"),
    ({"text": 3, "target": "greet"}, "classifier", "line 1: text must be a string"),
    ({"text": "hi"}, "classifier", "line 1: needs a JSON object with target and text"),
])
def test_parse_rows_for_a_head_names_the_bad_line(line: dict[str, Any], head: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rows([json.dumps(line)], head)


@pytest.mark.parametrize(("base_url", "want"), [
    ("http://ms-preview.ns.svc:8000/v1", "http://ms-preview.ns.svc:8000/classify"),
    ("http://127.0.0.1:9/v1/", "http://127.0.0.1:9/classify"),
    ("http://h:1", "http://h:1/classify"),
])
def test_classify_url_is_at_the_servers_root(base_url: str, want: str) -> None:
    assert classify_url(base_url) == want


@pytest.mark.parametrize(("body", "want"), [
    ({"data": [{"index": 0, "label": "card_arrival", "probs": [0.9, 0.1], "num_classes": 2}]}, "card_arrival"),
    ({"data": [{"index": 1, "label": None, "probs": [0.1, 0.9], "num_classes": 2}]}, "class 1 without a label name"),
    ({"data": []}, "answered 0 results"),
])
def test_classify_label(body: dict[str, Any], want: str) -> None:
    if want.startswith(("class", "answered")):
        with pytest.raises(ValueError, match=want):
            classify_label(body)
    else:
        assert classify_label(body) == want


class _ClassifyStandin(BaseHTTPRequestHandler):
    """vLLM's /classify: the label is the input's first word; 'boom' answers 500."""

    seen: list[tuple[str, str, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body["model"], body["input"]))
        if body["input"] == "boom":
            self.send_response(500)
            self.end_headers()
            return
        label = body["input"].split()[0]
        out = json.dumps({"id": "c", "object": "list", "created": 0, "model": body["model"],
                          "data": [{"index": 0, "label": label, "probs": [1.0], "num_classes": 1}],
                          "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
        _send_json(self, out)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_classifier_is_gated_through_classify_by_label_name(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClassifyStandin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _ClassifyStandin.seen = []
    try:
        rows = tmp_path / "predictions.jsonl"
        rows.write_text("\n".join(json.dumps({"text": t, "target": want, "prediction": "x"}) for t, want in [
            ("card_arrival where is it", "card_arrival"), ("pin_blocked help", "pin_blocked"),
            ("exchange_rate today", "top_up_limits"), ("boom", "card_arrival")]))
        term = tmp_path / "termination-log"
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert main(["--base-url", url, "--model", "intents", "--rows-file", str(rows), "--termination-log", str(term),
                     "--head", "classifier", "--warmup", "1"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    out = json.loads(term.read_text())
    # 2 of 4 right: a wrong label and a failed request both count against accuracy
    assert (out["rows"], out["correct"], out["errors"], out["accuracy"]) == (4, 2, 1, 0.5)
    assert out["p50Ms"] is not None and out["p99Ms"] is not None
    assert {p for p, _, _ in _ClassifyStandin.seen} == {"/classify"} and {m for _, m, _ in _ClassifyStandin.seen} == {"intents"}
    assert len(_ClassifyStandin.seen) == 4 + 1  # one warm-up, unscored
