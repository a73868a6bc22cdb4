"""The per-object work queue both rooms reconcile through: passes run in the background,
serialised per key and coalesced, with timers for "look again later" and backoff for failures.

No Kopf timers or daemons: they would put a finalizer on every object. A trigger that arrives
while its key is being reconciled only marks the key dirty; the key is reconciled once more when
the pass ends (a pass reads the latest state anyway), so a burst of child events costs one or two
passes, not one each.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from typing import Any, Awaitable, Callable, Generic, Hashable, Mapping, NamedTuple, TypeVar

from . import metrics
from .kube import api_error_message, is_transient

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class Backoff(NamedTuple):
    """A pass's answer "not yet, for no known time" (a missing dependency): look again with
    exponential backoff, at the latest ``at_most`` seconds (plus one) from now."""

    at_most: float | None = None


Outcome = float | Backoff | None
"""What a pass returns: None (done; the backoff resets), seconds (look again after exactly that
long, a timer of the object's own; the backoff resets) or ``Backoff`` (the backoff grows)."""


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: base x 2^attempt capped at ``cap``, then a random 50-100 %
    of that, so objects that failed together (an apiserver outage) do not retry in lockstep."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 30)))
    return ceiling * (0.5 + 0.5 * rand())


class WorkQueue(Generic[K]):
    """Runs ``work(key)`` in the background, one pass per key at a time.

    A pass that raises is retried with backoff (counted per key until a pass succeeds): a
    transient API error is logged as a warning, anything else (a bug, a forbidden call) as an
    error and handed to ``on_failure(key, text)``, which posts it where a user sees it. A failed
    pass is not run again for triggers that came during it; its retry is the next look.
    """

    def __init__(self, kind: str, work: Callable[[K], Awaitable[Outcome]], *, retry_delay: float,
                 retry_max_delay: float, on_failure: Callable[[K, str], None] | None = None,
                 log_extra: Callable[[K], Mapping[str, Any]] | None = None) -> None:
        self.kind, self.work, self.on_failure, self.log_extra = kind, work, on_failure, log_extra
        self.retry_delay, self.retry_max_delay = retry_delay, retry_max_delay
        self.busy: set[K] = set()
        self.dirty: set[K] = set()
        self.timers: dict[K, asyncio.TimerHandle] = {}
        self.attempts: dict[K, int] = {}
        """Consecutive failed or still-waiting passes per key, for the backoff."""
        self.tasks: set[asyncio.Task[None]] = set()
        """Background passes (strong references: the event loop keeps only weak ones)."""
        self.context: contextvars.Context | None = None
        """The context variables background passes run with, taken by ``kick`` from the first
        event handler: it holds Kopf's Event-posting queue (``kopf.event`` needs it). One shared
        context also keeps a task from holding its creator's Kopf cause (the raw event body)."""

    def kick(self, key: K, *, take_context: bool = True) -> None:
        """Reconcile ``key`` in the background, so an event handler returns at once (Kopf then
        drops the event's body and frees its worker). A caller that is not a Kopf handler (a
        poller started at startup) passes ``take_context=False``."""
        if take_context and self.context is None:
            self.context = contextvars.copy_context()
        context = self.context.copy() if self.context is not None else None
        task = asyncio.get_running_loop().create_task(self.run(key), context=context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def later(self, key: K, delay: float) -> float:
        """Kick ``key`` after ``delay`` seconds; one timer per key, the earliest wins. The seconds
        until the key's pending timer fires."""
        loop = asyncio.get_running_loop()
        old = self.timers.get(key)
        if old is not None and old.when() <= loop.time() + delay:
            return max(0.0, old.when() - loop.time())
        if old is not None:
            old.cancel()
        self.timers[key] = loop.call_later(delay, self._fire, key)
        return delay

    def retry(self, key: K, at_most: float | None = None) -> float:
        """Look at ``key`` again with exponential backoff and jitter (no later than ``at_most``
        seconds, plus one); the seconds until the next look."""
        attempt = self.attempts.get(key, 0)
        self.attempts[key] = attempt + 1
        delay = backoff_delay(attempt, self.retry_delay, self.retry_max_delay)
        if at_most is not None:
            delay = min(delay, at_most + 1.0)
        return self.later(key, delay)

    def forget(self, key: K) -> None:
        """The object is gone: drop its timer and backoff."""
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.attempts.pop(key, None)

    def _fire(self, key: K) -> None:
        self.timers.pop(key, None)
        self.kick(key, take_context=False)

    async def run(self, key: K) -> None:
        """One pass of ``key`` now, or, while one is in progress, one more after it."""
        if key in self.busy:
            self.dirty.add(key)
            return
        self.busy.add(key)
        try:
            while True:
                self.dirty.discard(key)
                try:
                    outcome = await self.work(key)
                except Exception as exc:  # noqa: BLE001 - a background pass has no retries of its own
                    self._failed(key, exc)
                    return
                if key in self.dirty:
                    continue  # superseded: the next pass decides what comes after it
                if isinstance(outcome, Backoff):
                    self.retry(key, outcome.at_most)
                else:
                    self.attempts.pop(key, None)
                    if outcome is not None:
                        self.later(key, outcome)
                return
        finally:
            self.busy.discard(key)

    def _failed(self, key: K, exc: Exception) -> None:
        metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        message = api_error_message(exc)
        delay = self.retry(key)
        name = "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
        # The object's reference on the line (runtime.log_extra), where the room gives one.
        extra = dict(self.log_extra(key)) if self.log_extra is not None else None
        if is_transient(exc):
            log.warning("Reconcile of %s %s failed, retrying in %.0f s: %s", self.kind, name, delay, message, extra=extra)
            return
        log.error("Reconcile of %s %s failed, retrying in %.0f s: %s", self.kind, name, delay, message, exc_info=exc,
                  extra=extra)
        if self.on_failure is not None:
            self.on_failure(key, f"{message[:900]} (retrying in {delay:.0f} s)")


__all__ = ["Backoff", "Outcome", "WorkQueue", "backoff_delay"]
