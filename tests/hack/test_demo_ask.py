"""hack/demo.py asks the served model the way its head is served: a classifier through vLLM's
/classify (the bare text; the label name the launcher maps the class index to), an lm head
through chat completions. A real HTTP server stands in for the ModelServe's Service."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from shared_demo import load_demo

demo = load_demo()


@pytest.fixture
def classify_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            out = json.dumps({"data": [{"index": 0, "label": "card_arrival", "probs": [0.9, 0.1]}]}).encode()
            self.send_response(200 if self.path == "/classify" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1", seen
    finally:
        srv.shutdown()


def test_a_classifier_is_asked_through_classify(classify_server: tuple[str, list[dict[str, Any]]]) -> None:
    base_url, seen = classify_server
    assert demo.classify(base_url, "Where is my card?") == "card_arrival"
    assert seen == [{"path": "/classify", "auth": f"Bearer {demo.API_KEY}", "model": demo.SERVED_NAME,
                     "input": "Where is my card?"}]
    assert demo.ASK_PATH == {"lm": "/v1/chat/completions", "classifier": "/classify"}


@pytest.mark.parametrize(
    ("row", "text"),
    [
        ({"text": "Where is my card?", "target": "card_arrival"}, "Where is my card?"),  # a classifier's row
        ({"messages": [{"role": "user", "content": "Labels: a, b\n\nHi"}], "target": "a"}, "Labels: a, b\n\nHi"),
    ],
)
def test_the_question_is_the_rows_text_or_its_last_user_turn(row: dict[str, Any], text: str) -> None:
    assert demo.row_text(row) == text


def test_a_row_without_a_question_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"neither text nor a user turn: \['messages', 'target'\]"):
        demo.row_text({"messages": [{"role": "system", "content": "x"}], "target": "a"})


def test_the_demo_asks_the_first_held_out_row_of_each_intent_in_label_order() -> None:
    rows = [{"text": t, "target": label} for t, label in
            [("q1", "b"), ("q2", "a"), ("q3", "b"), ("q4", "c"), ("q5", "a")]]
    assert [r["text"] for r in demo.one_row_per_label(rows)] == ["q2", "q1", "q4"]
    assert demo.one_row_per_label([]) == []
