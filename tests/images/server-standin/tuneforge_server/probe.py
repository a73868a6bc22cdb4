"""Readiness: the stand-in answers /health on :8000 (exit 0), else exit 1."""

import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=float(sys.argv[-1]) if len(sys.argv) > 1 else 5) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:
    sys.exit(1)
