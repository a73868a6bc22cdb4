"""Progress reporting: JSON lines on stdout and in a small progress file.

Each event is one JSON object per line with at least ``event`` and ``ts`` (unix seconds). The
events, their fields and the stage each means are defined once in :mod:`tuneforge_trainer.events`
(shared with the operator and the test stand-in); :meth:`ProgressReporter.emit` refuses any other
name. When stdout is a terminal a one-line progress bar goes to stderr instead of the JSON lines
(the file still gets them). Only rank 0 reports. No torch import.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO

from tuneforge_trainer.events import EVENTS

__all__ = ["ProgressReporter", "is_rank_zero", "read_progress"]


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank under torchrun."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 6)
    return value


class ProgressReporter:
    """Writes progress events; a no-op on non-zero ranks."""

    def __init__(self, path: str | None, stream: TextIO | None = None, enabled: bool | None = None):
        self.enabled = is_rank_zero() if enabled is None else enabled
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if self.enabled and path:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Report one event; returns the record written.

        Raises ``ValueError`` for a name :mod:`tuneforge_trainer.events` does not define: an event
        the operator does not know would be shown to users as a stage of its own.
        """
        if event not in EVENTS:
            raise ValueError(f"progress event {event!r} is not defined in tuneforge_trainer.events")
        record: dict[str, Any] = {"event": event, "ts": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in fields.items() if v is not None})
        if not self.enabled:
            return record
        line = json.dumps(record, separators=(",", ":"), default=str)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        if self.tty:
            self._bar(record)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
        return record

    def _bar(self, r: dict[str, Any]) -> None:
        if r["event"] != "progress" or not r.get("max_steps"):
            sys.stderr.write(f"\r{r['event']}: " + ", ".join(
                f"{k}={v}" for k, v in r.items() if k not in ("event", "ts")
            )[:150] + "\n")
            return
        done = r.get("step", 0) / r["max_steps"]
        width = 30
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        eta = r.get("eta_seconds")
        loss = r.get("loss")
        sys.stderr.write(
            f"\r[{bar}] {r.get('step')}/{r['max_steps']}"
            + (f" loss {loss:.4f}" if isinstance(loss, float) else "")
            + (f" eta {int(eta)}s" if isinstance(eta, (int, float)) else "")
            + "   "
        )
        sys.stderr.flush()


def read_progress(path: str) -> list[dict[str, Any]]:
    """All events in a progress file (skipping torn lines)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out
