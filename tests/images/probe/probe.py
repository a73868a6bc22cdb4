"""Test probe: serve | get | api | put | record-sigterm | exit (stdlib only)."""

import argparse
import http.server
import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def serve(port: int, ready_file: str) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/ready":
                code = 200 if os.path.exists(ready_file) else 503
            else:
                code = 200
            body = socket.gethostname().encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http.server.ThreadingHTTPServer(("", port), Handler).serve_forever()


def get(url: str, times: int, interval: float) -> None:
    seen = []
    for _ in range(times):
        time.sleep(interval)
        with urllib.request.urlopen(url, timeout=5) as resp:
            seen.append(resp.read().decode())
    print(json.dumps({"responses": seen}))


def api(path: str) -> None:
    token = open(f"{SA}/token").read()
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ["KUBERNETES_SERVICE_PORT"]
    req = urllib.request.Request(f"https://{host}:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            code, body = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        code, body = err.code, json.loads(err.read())
    print(json.dumps({"path": path, "code": code, "items": len(body.get("items", []))}))


def put(url: str, data: str) -> None:
    req = urllib.request.Request(url, data=data.encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(json.dumps({"code": resp.status}))


def record_sigterm(marker: str) -> None:
    def on_term(*_: object) -> None:
        with open(marker, "a") as f:
            f.write(f"sigterm {time.time()}\n")
        # Ignore it afterwards: the kubelet must kill us when the grace period ends.

    signal.signal(signal.SIGTERM, on_term)
    print("waiting for SIGTERM", flush=True)
    while True:
        time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--ready-file", default="/tmp/ready")
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("--times", type=int, default=1)
    g.add_argument("--interval", type=float, default=0.0)
    a = sub.add_parser("api")
    a.add_argument("path")
    u = sub.add_parser("put")
    u.add_argument("url")
    u.add_argument("data")
    r = sub.add_parser("record-sigterm")
    r.add_argument("marker")
    e = sub.add_parser("exit")
    e.add_argument("code", type=int)
    e.add_argument("--message", default="")
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args.port, args.ready_file)
    elif args.cmd == "get":
        get(args.url, args.times, args.interval)
    elif args.cmd == "api":
        api(args.path)
    elif args.cmd == "put":
        put(args.url, args.data)
    elif args.cmd == "record-sigterm":
        record_sigterm(args.marker)
    elif args.cmd == "exit":
        print(args.message or f"exiting with {args.code}", flush=True)
        sys.exit(args.code)


if __name__ == "__main__":
    main()
