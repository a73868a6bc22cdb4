"""Sources into the pod (path, pvc://, the S3 prefix rules) and the readiness probe against a
stand-in of vLLM's HTTP API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tuneforge_server.cli import main
from tuneforge_server.config import parse_config
from tuneforge_server.fetch import FetchError, fetch, local_path, s3_destination
from tuneforge_server.probe import check_health, check_ready


def test_local_sources(tmp_path: Path) -> None:
    cfg = parse_config({"model": {"uri": "/m", "name": "m"}, "pvc_root": str(tmp_path)})
    assert local_path("pvc://models/smollm2", cfg) == tmp_path / "models" / "smollm2"
    assert local_path("file:///data/x", cfg) == Path("/data/x")
    assert local_path("s3://b/k", cfg) is None
    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    assert fetch("pvc://models/smollm2", cfg) == tmp_path / "models" / "smollm2"
    with pytest.raises(FetchError, match="pvc://models/nope: no such folder"):
        fetch("pvc://models/nope", cfg)


@pytest.mark.parametrize(
    ("prefix", "key", "want"),
    [
        ("models/smollm2", "models/smollm2/config.json", "config.json"),
        ("models/smollm2/", "models/smollm2/sub/w.bin", "sub/w.bin"),
        ("models/smollm2", "models/smollm2-1.7b/config.json", None),  # another folder: a '/' boundary
        ("models/smollm2", "models/smollm2/", None),  # a folder marker
    ],
)
def test_s3_keys_stay_in_their_folder(tmp_path: Path, prefix: str, key: str, want: str | None) -> None:
    got = s3_destination(tmp_path, prefix, key)
    assert got == (tmp_path / want if want else None)


@pytest.mark.parametrize("key", ["models/m/../../etc/passwd", "models/m/a/../../../x"])
def test_s3_keys_never_write_outside_the_destination(tmp_path: Path, key: str) -> None:
    with pytest.raises(FetchError, match="outside"):
        s3_destination(tmp_path, "models/m", key)


class _StandIn(BaseHTTPRequestHandler):
    models: list[str] = []
    key = "k1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/v1/models":
            if self.headers.get("Authorization") != f"Bearer {self.key}":
                self._send(401, b'{"error": "unauthorized"}')
            else:
                self._send(200, json.dumps({"data": [{"id": m} for m in self.models]}).encode())
        else:
            self._send(404, b"")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def standin() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_readiness_waits_for_every_adapter(standin: int) -> None:
    _StandIn.models = ["smollm2"]
    assert check_ready(standin, ["smollm2", "intents"], "k1") == (False, "not served yet: intents (listed: smollm2)")
    _StandIn.models = ["smollm2", "intents"]
    assert check_ready(standin, ["smollm2", "intents"], "k1")[0]
    assert not check_ready(standin, ["smollm2"], "wrong")[0]  # 401 is not ready
    assert check_health(standin)[0]
    assert not check_ready(1, ["x"], None, timeout=0.5)[0]  # nothing listening


def test_probe_command_exit_codes(standin: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "server.yaml"
    conf.write_text(
        f"model: {{uri: /m, name: smollm2}}\nadapters: [{{name: intents, uri: /a, digest: 'sha256:{'a' * 64}'}}]\n"
        f"mode: lora\nport: {standin}\napi_key_env: TF_KEY\n"
    )
    monkeypatch.setenv("TF_KEY", "k1")
    _StandIn.models = ["smollm2"]
    assert main(["probe", "--config", str(conf)]) == 1
    _StandIn.models = ["smollm2", "intents"]
    assert main(["probe", "--config", str(conf)]) == 0
    assert main(["probe", "--config", str(conf), "--liveness"]) == 0


def test_launch_with_a_corrupt_adapter_exits_with_the_preflight_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from server_helpers import make_adapter, make_base

    base = make_base(tmp_path / "base")
    digest = make_adapter(tmp_path / "a", base)
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"corrupt")
    term = tmp_path / "termination-log"
    term.write_text("")
    monkeypatch.setenv("TUNEFORGE_TERMINATION_LOG", str(term))
    conf = tmp_path / "server.yaml"
    conf.write_text(json.dumps({"model": {"uri": str(base), "name": "smollm2"}, "adapters": [{"name": "intents", "uri": str(tmp_path / "a"), "digest": digest}], "cache_dir": str(tmp_path / "cache")}))
    assert main(["launch", "--config", str(conf)]) == 3
    err = capsys.readouterr().err
    assert "pre-flight failed: adapter intents (adapters[0].uri" in err and "does not match its digest" in err
    assert term.read_text().startswith("pre-flight failed: adapter intents")
    assert main(["launch", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_readiness_probe_command_is_stdlib_only_and_checks_every_adapter(standin: int, tmp_path: Path) -> None:
    """SRV-4: the pod's readiness command (as the operator renders it) runs without pydantic or
    PyYAML, reads what the launcher wrote at start, and passes only when every name is listed."""
    import os
    import subprocess
    import sys

    from tuneforge.serve.server import ServerPlan, pod_spec
    from tuneforge_server.cli import write_ready_file

    probe = pod_spec(ServerPlan(name="s", namespace="n", image="i", base_uri="/m", base_name="smollm2"))["containers"][0]["readinessProbe"]
    command = probe["exec"]["command"]
    assert command[0] == "python"
    cfg = parse_config({"model": {"uri": "/m", "name": "smollm2"}, "adapters": [{"name": "intents", "uri": "/a", "digest": "sha256:" + "a" * 64}],
                        "mode": "lora", "port": standin, "api_key_env": "TF_KEY"})
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parents[2] / "server-image" / "src"), "TMPDIR": str(tmp_path), "TF_KEY": "k1"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-X", "importtime", *command[1:]], env=env, capture_output=True, text=True, timeout=30)

    missing = run()
    assert missing.returncode == 1 and "not started" in missing.stdout  # the launcher has not written its file yet
    write_ready_file(cfg, "lora", tmp_path)
    _StandIn.models = ["smollm2"]
    partial = run()
    assert partial.returncode == 1 and "not served yet: intents" in partial.stdout
    _StandIn.models = ["smollm2", "intents"]
    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in ok.stderr.splitlines() if "|" in line}
    assert not imported & {"pydantic", "yaml", "pydantic_core", "typing_extensions"}, imported & {"pydantic", "yaml"}
    # The probe's own HTTP timeout ends before the kubelet's, so a slow answer is a clean failure.
    assert float(command[command.index("--timeout") + 1]) < probe["timeoutSeconds"]


def test_s3_files_download_in_parallel_and_a_restart_skips_fetched_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SRV-2: a sharded base's files come down several at a time (not one after another), and
    files already in the cache (a restarted container) are not fetched again."""
    import time

    from tuneforge_server import fetch as fetch_mod

    keys = {f"models/big/model-0000{i}-of-00008.safetensors": 1000 + i for i in range(8)} | {"models/big/config.json": 2}
    state = {"now": 0, "peak": 0, "calls": 0}
    lock = threading.Lock()

    class Client:
        def get_paginator(self, name: str) -> Any:
            return self

        def paginate(self, **kw: Any) -> list[dict[str, Any]]:
            return [{"Contents": [{"Key": k, "Size": n} for k, n in keys.items()]}]

        def download_file(self, bucket: str, key: str, dest: str) -> None:
            with lock:
                state["now"] += 1
                state["calls"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.05)
            Path(dest).write_bytes(b"w" * keys[key])
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(fetch_mod, "_s3_client", Client)
    cfg = parse_config({"model": {"uri": "s3://bucket/models/big", "name": "big"}, "cache_dir": str(tmp_path)})
    folder = fetch("s3://bucket/models/big", cfg)
    assert sorted(p.name for p in folder.iterdir()) == sorted(k.rsplit("/", 1)[1] for k in keys)
    assert state["peak"] > 1 and state["calls"] == len(keys)
    fetch("s3://bucket/models/big", cfg)
    assert state["calls"] == len(keys)  # nothing fetched twice
