"""Stand-in server: `serve.py launch --config FILE` answers GET on :8000 with the pod's name
(200 on every path, /health included) until SIGTERM."""

import http.server
import signal
import socket
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    if sys.argv[1:2] != ["launch"]:
        sys.exit(f"usage: serve.py launch --config FILE (got {sys.argv[1:]})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http.server.ThreadingHTTPServer(("", 8000), Handler).serve_forever()
