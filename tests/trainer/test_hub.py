"""hf:// downloads without the internet: a local stand-in for the Hub's HTTP API (HF_ENDPOINT).

The stand-in answers the calls huggingface_hub's snapshot_download makes (revision info, file
tree, HEAD and GET of each file) for one dataset repo laid out as the Hub lays out parquet
datasets. The trainer's resolver runs in a subprocess, as in a pod, because huggingface_hub reads
HF_ENDPOINT and HF_HUB_OFFLINE once at import. What this cannot show: the real Hub's redirects to
its CDN and Xet storage, gated-repo errors, and rate limits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from trainer_helpers import ROOT, SRC_PATH
from tuneforge_trainer.config import parse_config
from tuneforge_trainer.pipeline import prepare

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "org/intents"


def parquet(rows: list[dict[str, str]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def repo_files() -> dict[str, bytes]:
    train = [{"text": f"{lab} text {i}", "label": lab} for lab in ("card", "fx") for i in range(8)]
    test = [{"text": f"{lab} held {i}", "label": lab} for lab in ("card", "fx") for i in range(3)]
    return {
        "README.md": b"---\nlicense: cc-by-4.0\n---\n# intents\n",
        "data/train-00000-of-00001.parquet": parquet(train),
        "data/test-00000-of-00001.parquet": parquet(test),
    }


class HubStandin(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    seen: list[tuple[str, str, str | None]] = []

    def _answer(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        HubStandin.seen.append((self.command, path, self.headers.get("Authorization")))
        api = f"/api/datasets/{REPO}"
        if path.startswith(f"{api}/revision/"):
            info = {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self.files]}
            return self._send(200, json.dumps(info).encode(), "application/json", head)
        if path.startswith(f"{api}/tree/"):
            tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()} for f, d in self.files.items()]
            return self._send(200, json.dumps(tree).encode(), "application/json", head)
        prefix = f"/datasets/{REPO}/resolve/"
        if path.startswith(prefix):
            _, _, name = path[len(prefix) :].partition("/")
            if name in self.files:
                data = self.files[name]
                extra = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                return self._send(200, data, "application/octet-stream", head, extra)
        self._send(404, b'{"error": "not found"}', "application/json", head, {"X-Error-Code": "EntryNotFound"})

    def _send(self, code: int, body: bytes, ctype: str, head: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(True)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub_endpoint() -> Iterator[str]:
    HubStandin.files = repo_files()
    HubStandin.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubStandin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


SCRIPT = """
import json, sys
from tuneforge_trainer.config import parse_config
from tuneforge_trainer.pipeline import prepare
cfg = parse_config(json.loads(sys.argv[1]))
data = prepare(cfg)
print(json.dumps({"train": len(data.train), "validation": len(data.validation), "eval": len(data.eval),
                  "labels": data.labels, "format": data.report.format}))
"""


def run_trainer_side(cfg: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    full |= {"PYTHONPATH": SRC_PATH, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": env.pop("HF_HOME")} | env
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=300)


def hub_config(cache: Path, **hub: Any) -> dict[str, Any]:
    return {
        "model": {"source": "/m", "token_env": "MY_HF_TOKEN"},
        "dataset": {"source": f"hf://datasets/{REPO}", "eval_source": f"hf://datasets/{REPO}"},
        "data": {"validation_fraction": 0.25},
        "output": {"dir": "/tmp/unused"},
        "hub": {"cache_dir": str(cache), **hub},
    }


def test_a_hub_dataset_repo_downloads_online_into_the_configured_cache(hub_endpoint: str, tmp_path: Path) -> None:
    cache = tmp_path / "pvc" / "hub"  # e.g. a mounted model-cache PVC
    env = {"HF_ENDPOINT": hub_endpoint, "MY_HF_TOKEN": "hf_secret", "HF_HOME": str(tmp_path / "home")}
    r = run_trainer_side(hub_config(cache), dict(env))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    # A normal parquet repo (train and test splits by file name), read as load_dataset reads it.
    assert got == {"train": 12, "validation": 4, "eval": 6, "labels": ["card", "fx"], "format": "hf_dataset"}
    snap = cache / f"datasets--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snap / "data" / "train-00000-of-00001.parquet").is_file()
    assert not (tmp_path / "home" / "hub").exists()  # nothing went to the pod-local default cache
    downloads = [p for m, p, _ in HubStandin.seen if m == "GET" and "/resolve/" in p]
    assert len(downloads) == 3
    assert {auth for _, p, auth in HubStandin.seen if p.startswith("/api/datasets/")} == {"Bearer hf_secret"}

    # Offline when asked: served from that cache without a single request.
    HubStandin.seen.clear()
    r = run_trainer_side(hub_config(cache, offline=True), dict(env))
    assert r.returncode == 0, r.stderr[-3000:]
    assert HubStandin.seen == []


def test_offline_with_an_empty_cache_names_the_setting(tmp_path: Path) -> None:
    # In-process: offline never imports huggingface_hub.
    cfg = parse_config(hub_config(tmp_path / "empty", offline=True))
    with pytest.raises(Exception, match="hub.offline"):
        prepare(cfg)


def test_the_trainer_image_is_online_by_default() -> None:
    env_lines = (ROOT / "trainer-image" / "Dockerfile").read_text()
    assert "HF_HUB_OFFLINE" not in env_lines.split("ENV ", 1)[1].split("\n\n", 1)[0]


def test_the_model_resolves_through_the_configured_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge_trainer.modeling import resolve_model_path

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = tmp_path / "pvc" / "models--org--m"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    cfg = parse_config({"model": {"source": "hf://org/m"}, "dataset": {"source": "/d.csv"}, "output": {"dir": "/o"},
                        "hub": {"cache_dir": str(tmp_path / "pvc"), "offline": True}})
    assert resolve_model_path(cfg, "/unused") == str(folder / "snapshots" / COMMIT)
    # Online, a cached commit pin is immutable: no request either (huggingface_hub is not imported).
    cfg = parse_config({"model": {"source": "hf://org/m", "revision": COMMIT}, "dataset": {"source": "/d.csv"},
                        "output": {"dir": "/o"}, "hub": {"cache_dir": str(tmp_path / "pvc")}})
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # any import would fail
    assert resolve_model_path(cfg, "/unused") == str(folder / "snapshots" / COMMIT)


def test_a_hub_model_downloads_only_the_files_that_define_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SRV-3: no README, original/*.pth or onnx/ (Llama's original/ is 16 GB): allow_patterns
    names the model's files; a repo without safetensors is fetched again for its PyTorch weights."""
    import types

    from tuneforge_trainer.storage import resolve_hf

    calls: list[dict[str, Any]] = []

    def snapshot_download(**kw: Any) -> str:
        calls.append(kw)
        snap = Path(kw["cache_dir"]) / "snap"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text("{}")
        if has_safetensors:
            (snap / "model.safetensors").write_bytes(b"x")
        return str(snap)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    has_safetensors = True
    resolve_hf("hf://org/m", cache_dir=str(tmp_path / "cache"))
    [call] = calls
    assert "*.safetensors" in call["allow_patterns"] and "config.json" in call["allow_patterns"]
    assert not any(p in call["allow_patterns"] for p in ("*", "*.pth", "*.bin", "original/*"))
    calls.clear()
    has_safetensors = False
    resolve_hf("hf://org/m", cache_dir=str(tmp_path / "cache2"))
    assert len(calls) == 2 and "pytorch_model*.bin" in calls[1]["allow_patterns"]
    calls.clear()
    resolve_hf(f"hf://datasets/{REPO}", kind="dataset", cache_dir=str(tmp_path / "cache3"))
    assert calls[0].get("allow_patterns") is None  # a dataset repo is all data
