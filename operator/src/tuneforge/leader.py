"""Leader election: exactly one operator replica reconciles, chosen by a ``coordination.k8s.io/v1``
Lease, and a replica that can no longer prove it holds the Lease stops acting before any other
replica may take it.

Why not Kopf's peering: it is a keep-alive, not a lock. Replicas post their liveness into a
KopfPeering object and pause while a peer of higher priority is alive; Kopf's own docs (and
``kopf._core.engines.peering``) say there are no locks between operators and only one should run.
Why not ``kubernetes.leaderelection`` / ``kubernetes_asyncio.leaderelection``: the first is a
thread-based ConfigMap lock; both measure deadlines with the wall clock (``time.time()``), start
each renew deadline at the start of a renew round rather than at the last successful renewal,
write naive local times labelled UTC, never increment ``leaseTransitions``, and only cancel the
leader's work when the deadline passes (cancellation runs cleanup code that may write) — and they
would bring a second, heavy API client next to lightkube. This module follows client-go's
``tools/leaderelection`` instead (leaseDurationSeconds, renewDeadline, retryPeriod, holderIdentity,
acquireTime/renewTime, leaseTransitions, optimistic concurrency on resourceVersion) with two
stricter rules:

* The leader's right to write ends ``renew_deadline`` after it *sent* its last successful renewal,
  by its own monotonic clock. A follower may take the Lease only ``lease_duration`` after it
  *observed* that renewal (also monotonic, read after the apiserver answered), so the leader has
  stopped at least ``lease_duration - renew_deadline`` seconds before anyone else can start.
* Stopping is leaving: the process exits (``os._exit``, no cleanup code that could write) and the
  Deployment restarts it as a follower. Every write is fenced: ``FENCE.check()`` runs before each
  API request of the operator's client (``kube.Kube``), of Kopf's client (the session its login
  handler returns) and of the election itself, and the event loop checks the
  fence each time its selector returns, before any callback runs — so a process frozen past its
  deadline (SIGSTOP, a stalled node) and thawed exits before its first callback. The one window
  left is a freeze between a check and the bytes leaving the socket within the same step of a
  coroutine; the ``lease_duration - renew_deadline`` margin exists for it, as in client-go.

The election logic is pure over a ``LeaseStore`` (kube.LeaseLock on the cluster, a fake in the
tests) and an injected clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import math
import os
import selectors
import signal
import socket
import sys
import time
import uuid
from typing import Any, Awaitable, Callable, Protocol

log = logging.getLogger(__name__)

EXIT_LOST = 3
"""Exit status of a replica that lost (or could not renew) the Lease."""


class Conflict(Exception):
    """The Lease changed since it was read (409 on update) or already exists (409 on create)."""


class LeadershipLost(Exception):
    """This replica may no longer act as the leader."""


class NotLeading(Exception):
    """A write was attempted by a replica that does not lead."""


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """What the election reads and writes of a Lease (spec plus the resourceVersion it was read at)."""

    holder: str
    """``spec.holderIdentity``; empty when the last leader released it."""
    duration_s: int
    """``spec.leaseDurationSeconds``."""
    acquire_time: datetime.datetime | None
    renew_time: datetime.datetime | None
    transitions: int
    """``spec.leaseTransitions``: how many times the holder changed."""
    resource_version: str = ""
    """The version it was read at; an update with it fails with Conflict if the Lease changed since."""


class LeaseStore(Protocol):
    """The Lease on the apiserver (``kube.LeaseLock``)."""

    async def get(self) -> LeaseRecord | None: ...
    async def create(self, record: LeaseRecord) -> LeaseRecord: ...
    async def update(self, record: LeaseRecord) -> LeaseRecord: ...


@dataclasses.dataclass(frozen=True)
class ElectionConfig:
    """The three client-go durations, in seconds."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period * 1.2 < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"leader election needs 1.2 x retry period < renew deadline < lease duration, got retry period "
                f"{self.retry_period} s, renew deadline {self.renew_deadline} s, lease duration {self.lease_duration} s "
                "(TUNEFORGE_LEADER_ELECTION_RETRY_PERIOD, _RENEW_DEADLINE, _LEASE_DURATION)")


def default_identity() -> str:
    """The pod's name (its hostname) and a random suffix, as client-go's callers do."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def _die(reason: str) -> None:
    log.critical("Exiting: %s", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_LOST)


class Fence:
    """Whether this process may write to the API now. Without leader election it always may; with
    it, a follower may not (``NotLeading``), and a leader may until its deadline, after which the
    process ends (``on_expired``, ``os._exit`` outside tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 on_expired: Callable[[str], None] = _die) -> None:
        self.clock, self.on_expired = clock, on_expired
        self.enabled = False
        self.deadline: float | None = None

    def follow(self) -> None:
        self.enabled, self.deadline = True, None

    def lead_until(self, deadline: float) -> None:
        self.enabled, self.deadline = True, deadline

    def check(self) -> None:
        """Before every API write (and every request of a leader): raise or exit unless allowed."""
        if not self.enabled:
            return
        if self.deadline is None:
            raise NotLeading("this operator replica does not hold the leader Lease")
        self.check_expiry()

    def check_expiry(self) -> None:
        """End the process if it led and its deadline has passed (a follower is left alone)."""
        if self.deadline is not None and self.clock() >= self.deadline:
            late = self.clock() - self.deadline
            self.on_expired(f"the leader Lease was not renewed in time ({late:.1f} s past the renew deadline); "
                            "another replica may hold it now")


FENCE = Fence()
"""The process's fence: ``kube.Kube`` and Kopf's session (the login handler's) check it before each
request, the event loop (``FencedSelector``) each time it wakes."""


class FencedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The event loop's selector; checks the fence whenever the loop wakes, so after a freeze the
    process ends before running any callback that could write."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        FENCE.check_expiry()
        return ready


def fenced_event_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.Runner(loop_factory=fenced_event_loop)``."""
    return asyncio.SelectorEventLoop(FencedSelector())


class LeaderElector:
    """client-go's ``tryAcquireOrRenew`` over a LeaseStore, with a monotonic clock."""

    def __init__(self, store: LeaseStore, identity: str, config: ElectionConfig,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
                 fence: Fence | None = None) -> None:
        self.store, self.identity, self.config, self.clock, self.wall = store, identity, config, clock, wall
        self.fence = fence if fence is not None else Fence(clock)
        self.observed: LeaseRecord | None = None
        self.observed_at = 0.0
        self.valid_until: float | None = None
        """While leading: the monotonic time until which this replica may act."""

    @property
    def leading(self) -> bool:
        return self.valid_until is not None

    @property
    def holder(self) -> str:
        return self.observed.holder if self.observed else ""

    def _check_deadline(self) -> None:
        if self.valid_until is not None and self.clock() >= self.valid_until:
            raise LeadershipLost(f"the renew deadline ({self.config.renew_deadline:g} s) passed without a renewal")

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards. Raises LeadershipLost when
        a leader's deadline passed or the Lease names another holder."""
        self._check_deadline()
        started = self.clock()  # before the request is sent: the renewal is valid from here
        current = await self.store.get()
        now = self.clock()  # after the answer: the observed record is at least this fresh
        if current is None:
            return await self._write(self.store.create, LeaseRecord(
                self.identity, math.ceil(self.config.lease_duration), self.wall(), self.wall(), 0), started)
        if current != self.observed:
            if self.observed is not None and current.holder != self.observed.holder:
                log.info("Leader Lease now held by %s", current.holder or "nobody (released)")
            self.observed, self.observed_at = current, now
        ours = current.holder == self.identity
        if self.leading and not ours:
            raise LeadershipLost(f"the Lease is now held by {current.holder or 'nobody'}")
        if current.holder and not ours and now < self.observed_at + self.config.lease_duration:
            return False  # held by a live leader, as far as this replica's clock can tell
        self._check_deadline()
        wall = self.wall()
        record = dataclasses.replace(
            current, holder=self.identity, duration_s=math.ceil(self.config.lease_duration), renew_time=wall,
            acquire_time=current.acquire_time if ours else wall,
            transitions=current.transitions if ours else current.transitions + 1)
        return await self._write(self.store.update, record, started)

    async def _write(self, write: Callable[[LeaseRecord], Awaitable[LeaseRecord]], record: LeaseRecord,
                     started: float) -> bool:
        self._check_deadline()
        try:
            written = await write(record)
        except Conflict:
            return False  # someone else wrote first: read again next round
        was_leading = self.leading
        self.observed, self.observed_at = written, self.clock()
        self.valid_until = started + self.config.renew_deadline
        self.fence.lead_until(self.valid_until)
        if not was_leading:
            log.info("Leader Lease acquired by %s (transitions: %d)", self.identity, written.transitions)
        return True

    async def acquire(self) -> None:
        """Follow until this replica holds the Lease."""
        self.fence.follow()
        announced = ""
        while True:
            try:
                if await asyncio.wait_for(self.try_acquire_or_renew(), self.config.lease_duration):
                    return
            except LeadershipLost:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure (timeouts included): try again
                log.warning("Leader Lease not read: %s", str(exc) or type(exc).__name__)
            if self.holder and self.holder != announced:
                log.info("Following: the leader Lease is held by %s", self.holder)
                announced = self.holder
            await asyncio.sleep(self.config.retry_period)

    async def keep(self) -> None:
        """Renew every retry period; raise LeadershipLost once this replica may no longer lead."""
        while True:
            await asyncio.sleep(self.config.retry_period)
            while True:
                self._check_deadline()
                remaining = max(0.001, (self.valid_until or 0.0) - self.clock())
                try:
                    if await asyncio.wait_for(self.try_acquire_or_renew(), remaining):
                        break
                except LeadershipLost:
                    raise
                except Exception as exc:  # noqa: BLE001 - timeouts included: retry until the deadline
                    log.warning("Leader Lease not renewed: %s", str(exc) or type(exc).__name__)
                await asyncio.sleep(min(self.config.retry_period, max(0.0, (self.valid_until or 0.0) - self.clock())))

    async def release(self) -> bool:
        """Hand the Lease over on a clean shutdown (holder emptied, as client-go's ReleaseOnCancel),
        so a follower takes over within a retry period. Only while still within the deadline, and
        only the version this replica wrote (a Conflict means it is no longer ours)."""
        if not self.leading or self.observed is None or self.clock() >= (self.valid_until or 0.0):
            return False
        record = dataclasses.replace(self.observed, holder="", duration_s=1, renew_time=self.wall())
        try:
            await self.store.update(record)
        except Conflict:
            return False
        self.valid_until = None
        self.fence.follow()
        log.info("Leader Lease released by %s", self.identity)
        return True


async def _serve_follower_health(port: int, elector: LeaderElector) -> Callable[[], Awaitable[None]]:
    """/healthz of a follower (Kopf's liveness endpoint takes the port over once it leads): a
    follower is alive and Ready, so a PodDisruptionBudget counts it and a rollout proceeds."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False, "holder": elector.holder})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner.cleanup


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _acquire_unless_stopped(elector: LeaderElector) -> bool:
    """Wait for the Lease, or for SIGTERM/SIGINT while following. Kopf installs its own signal
    handlers only once it runs; until then a follower (PID 1 in its container, where the default
    action of SIGTERM is to ignore it) would sit out the pod's whole grace period on every scale
    down, rolling update and uninstall. A follower holds nothing, so it just leaves."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread's loop: the embedding program handles signals
    acquiring = asyncio.create_task(elector.acquire(), name="leader lease acquisition")
    stopping = asyncio.create_task(stop.wait(), name="follower stop signal")
    try:
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        stopping.cancel()
    if not stop.is_set():
        acquiring.result()  # re-raise what ended the acquisition
        return True
    if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
        await elector.release()  # won in the same step as the signal: hand it straight back
    else:
        acquiring.cancel()
        await asyncio.gather(acquiring, return_exceptions=True)
    log.info("Stopped while following (signal); the Lease stays with %s", elector.holder or "nobody")
    return False


async def run_elected(elector: LeaderElector, work: Callable[[], Awaitable[Any]], health_port: int,
                      on_leading: Callable[[bool], None] = lambda _: None) -> None:
    """Follow until elected, then run ``work`` (Kopf) while renewing; a lost Lease ends the process
    at once. When ``work`` returns (SIGTERM), release the Lease so a follower takes over at once;
    SIGTERM while following ends the follower at once (it holds nothing)."""
    on_leading(False)
    stop_health = await _serve_follower_health(health_port, elector) if health_port else None
    try:
        elected = await _acquire_unless_stopped(elector)
    finally:
        if stop_health:
            await stop_health()
    if not elected:
        return
    on_leading(True)

    async def renew() -> None:
        try:
            await elector.keep()
        except LeadershipLost as exc:
            elector.fence.on_expired(str(exc))

    # Created before Kopf starts: Kopf cancels every task created after its own start when it stops.
    renewing = asyncio.create_task(renew(), name="leader lease renewal")
    try:
        await work()
    finally:
        renewing.cancel()
        try:
            await elector.release()
        except Exception as exc:  # noqa: BLE001 - the Lease then expires on its own
            log.warning("Leader Lease not released: %s", exc)
        on_leading(False)
