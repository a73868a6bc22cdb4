"""The leader election's state machine (operator/src/tuneforge/leader.py) over an in-memory Lease
with the apiserver's optimistic concurrency, and a fake monotonic clock: acquire, renew, lose on
conflict, expiry, a foreign holder's expired Lease taken, a missed renew deadline ends leadership,
the fence, and release. Pure: no cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import selectors
from typing import Any

import pytest

from tuneforge import leader
from tuneforge.leader import (Conflict, ElectionConfig, Fence, LeaderElector, LeadershipLost, LeaseRecord,
                              NotLeading)
from tuneforge.settings import Settings

CONFIG = ElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2)
T0 = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLease:
    """One Lease with the apiserver's rules: create fails when it exists, an update fails unless
    it carries the current resourceVersion; every write bumps the version."""

    def __init__(self, clock: Clock, record: LeaseRecord | None = None) -> None:
        self.clock, self.record, self.version = clock, record, 1
        self.writes: list[tuple[str, LeaseRecord]] = []
        self.advance_on_get = 0.0  # seconds the clock moves while a get is "in flight"
        if record is not None:
            self.record = dataclasses.replace(record, resource_version="1")

    def _bump(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.record = dataclasses.replace(record, resource_version=str(self.version))
        return self.record

    async def get(self) -> LeaseRecord | None:
        self.clock.now += self.advance_on_get
        return self.record

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        if self.record is not None:
            raise Conflict("already exists")
        self.writes.append(("create", record))
        return self._bump(record)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        assert self.record is not None
        if record.resource_version != self.record.resource_version:
            raise Conflict("the object has been modified")
        self.writes.append(("update", record))
        return self._bump(record)

    def foreign_write(self, **changes: Any) -> None:
        """Another replica (or a person) writes the Lease."""
        assert self.record is not None
        self._bump(dataclasses.replace(self.record, **changes))


def held_by(holder: str, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, 15, T0, T0, transitions)


def elector(store: FakeLease, clock: Clock, identity: str = "me") -> LeaderElector:
    return LeaderElector(store, identity, CONFIG, clock=clock, wall=lambda: T0 + datetime.timedelta(seconds=clock.now),
                         fence=Fence(clock, on_expired=lambda reason: None))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# (case, Lease before, seconds between a first look and the attempt, foreign holder renews meanwhile,
#  expected: acquired?, holder after, transitions after)
ACQUIRE = [
    ("no Lease: created", None, 0.0, False, True, "me", 0),
    ("released Lease (holder empty): taken at once", held_by("", 3), 0.0, False, True, "me", 4),
    ("live foreign holder: wait", held_by("other"), 0.0, False, False, "other", 0),
    ("foreign holder, not yet a lease duration unchanged: wait", held_by("other"), 14.9, False, False, "other", 0),
    ("foreign holder unchanged a full lease duration: taken", held_by("other", 2), 15.0, False, True, "me", 3),
    ("foreign holder that keeps renewing is never taken", held_by("other"), 15.0, True, False, "other", 0),
]


@pytest.mark.parametrize(("case", "before", "wait", "renewed", "acquired", "holder", "transitions"), ACQUIRE,
                         ids=[c[0] for c in ACQUIRE])
def test_acquire(case: str, before: LeaseRecord | None, wait: float, renewed: bool, acquired: bool, holder: str,
                 transitions: int) -> None:
    clock = Clock()
    store = FakeLease(clock, before)
    e = elector(store, clock)
    first = run(e.try_acquire_or_renew())  # the first look starts this replica's observation
    if not first:
        clock.now += wait
        if renewed:
            store.foreign_write(renew_time=T0 + datetime.timedelta(seconds=wait))
        first = run(e.try_acquire_or_renew())
    assert first is acquired and e.leading is acquired
    assert store.record is not None and store.record.holder == holder and store.record.transitions == transitions
    if acquired:
        assert store.record.duration_s == 15 and store.record.acquire_time == store.record.renew_time


def test_expiry_is_measured_from_observation_not_from_renew_time() -> None:
    """A Lease whose renewTime is long past (another machine's clock, or just an old object) is
    not taken until this replica has itself seen it unchanged for a lease duration: clocks of
    different machines are never compared."""
    clock = Clock()
    stale = LeaseRecord("other", 15, T0 - datetime.timedelta(days=1), T0 - datetime.timedelta(days=1), 0)
    store = FakeLease(clock, stale)
    e = elector(store, clock)
    assert not run(e.try_acquire_or_renew())
    clock.now += 14
    assert not run(e.try_acquire_or_renew())
    clock.now += 1
    assert run(e.try_acquire_or_renew())


def test_renew_keeps_acquire_time_and_transitions() -> None:
    clock = Clock()
    store = FakeLease(clock, held_by("old", 5))
    e = elector(store, clock)
    run(e.try_acquire_or_renew())
    clock.now += 15
    assert run(e.try_acquire_or_renew())
    acquired = store.record
    assert acquired is not None and acquired.transitions == 6
    for _ in range(3):
        clock.now += CONFIG.retry_period
        assert run(e.try_acquire_or_renew())
    assert store.record is not None
    assert store.record.acquire_time == acquired.acquire_time and store.record.transitions == 6
    assert store.record.renew_time is not None and acquired.renew_time is not None
    assert store.record.renew_time > acquired.renew_time
    assert e.valid_until == clock.now + CONFIG.renew_deadline


def test_deadline_counts_from_before_the_request() -> None:
    """The renewal's validity starts when it was sent, not when the answer came: a slow answer
    shortens the leader's time, never a follower's wait."""
    clock = Clock()
    store = FakeLease(clock, None)
    store.advance_on_get = 3.0
    e = elector(store, clock)
    sent = clock.now
    assert run(e.try_acquire_or_renew())
    assert e.valid_until == sent + CONFIG.renew_deadline


def test_lost_on_conflict_with_a_new_holder() -> None:
    """A leader whose Lease was taken (its update gets 409, the re-read names another holder)
    stops at once, without waiting for its deadline and without writing."""
    clock = Clock()
    store = FakeLease(clock, None)
    e = elector(store, clock)
    assert run(e.try_acquire_or_renew())
    store.foreign_write(holder="thief", transitions=1)
    writes = len(store.writes)
    clock.now += CONFIG.retry_period
    with pytest.raises(LeadershipLost, match="thief"):
        run(e.try_acquire_or_renew())
    assert len(store.writes) == writes and store.record is not None and store.record.holder == "thief"


def test_conflict_from_an_unrelated_change_is_retried() -> None:
    """A 409 because someone touched the Lease but left this replica the holder: the next round
    reads the new version and renews."""
    clock = Clock()
    store = FakeLease(clock, None)
    e = elector(store, clock)
    assert run(e.try_acquire_or_renew())

    original_get = store.get

    async def get_then_race() -> LeaseRecord | None:
        rec = await original_get()
        store.foreign_write(duration_s=15)  # lands between our read and our write
        return rec

    store.get = get_then_race  # type: ignore[method-assign]
    clock.now += CONFIG.retry_period
    assert not run(e.try_acquire_or_renew())  # conflict: not renewed this round
    assert e.leading
    store.get = original_get  # type: ignore[method-assign]
    clock.now += CONFIG.retry_period
    assert run(e.try_acquire_or_renew())
    assert store.record is not None and store.record.holder == "me"


def test_two_candidates_race_for_a_free_lease_one_wins() -> None:
    clock = Clock()
    store = FakeLease(clock, held_by("", 0))
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    rec = run(store.get())

    async def both() -> list[bool]:
        # Both read the same version; the second update carries a stale resourceVersion.
        real_get = store.get

        async def same() -> LeaseRecord | None:
            return rec

        store.get = same  # type: ignore[method-assign]
        results = [await a.try_acquire_or_renew(), await b.try_acquire_or_renew()]
        store.get = real_get  # type: ignore[method-assign]
        return results

    assert run(both()) == [True, False]
    assert store.record is not None and store.record.holder == "a" and not b.leading


def test_missed_renew_deadline_stops_without_writing() -> None:
    """A leader that could not renew (apiserver unreachable) for renew_deadline stops; and one
    frozen past its deadline (SIGSTOP) raises before it sends anything, even the renewal."""
    clock = Clock()
    store = FakeLease(clock, None)
    e = elector(store, clock)
    assert run(e.try_acquire_or_renew())
    writes = len(store.writes)
    clock.now += CONFIG.renew_deadline  # frozen (or failing) that long
    with pytest.raises(LeadershipLost, match="renew deadline"):
        run(e.try_acquire_or_renew())
    assert len(store.writes) == writes


def test_leader_stops_before_a_follower_may_take_over() -> None:
    """The fencing invariant, stepped through time: a leader frozen right after a renewal has
    stopped (deadline) at least lease_duration - renew_deadline before the follower takes the Lease."""
    clock = Clock()
    store = FakeLease(clock, None)
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert run(a.try_acquire_or_renew())
    assert not run(b.try_acquire_or_renew())  # b observes a's renewal now
    a_stops = a.valid_until
    taken_at = None
    for _ in range(200):  # a is frozen: only b runs, every 0.1 s
        clock.now += 0.1
        if run(b.try_acquire_or_renew()):
            taken_at = clock.now
            break
    assert a_stops is not None and taken_at is not None
    assert taken_at - a_stops >= CONFIG.lease_duration - CONFIG.renew_deadline - 1e-6
    with pytest.raises(LeadershipLost):
        run(a.try_acquire_or_renew())  # thawed: it stops without a write
    assert [w[1].holder for w in store.writes] == ["a", "b"]


def test_keep_raises_once_renewals_fail_past_the_deadline() -> None:
    """The renew loop on a real event loop (short durations): the apiserver stops answering,
    the loop gives up at the renew deadline."""

    class Failing(FakeLease):
        fail = False

        async def get(self) -> LeaseRecord | None:
            if self.fail:
                raise OSError("connection refused")
            return await super().get()

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        config = ElectionConfig(lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
        store = Failing(Clock())
        e = LeaderElector(store, "me", config, clock=loop.time, fence=Fence(loop.time, on_expired=lambda r: None))
        assert await e.try_acquire_or_renew()
        store.fail = True
        start = loop.time()
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(e.keep(), 5)
        return loop.time() - start

    elapsed = run(scenario())
    assert 0.35 <= elapsed < 3.0  # the deadline (0.4 s), not a lease duration or a hang


def test_release_hands_over_only_its_own_version() -> None:
    clock = Clock()
    store = FakeLease(clock, None)
    e = elector(store, clock)
    assert run(e.try_acquire_or_renew())
    assert run(e.release())
    assert store.record is not None and store.record.holder == "" and store.record.duration_s == 1
    assert not e.leading
    # A successor takes a released Lease at its first look.
    assert run(elector(store, clock, "next").try_acquire_or_renew())
    # A leader whose Lease moved on releases nothing.
    other = elector(FakeLease(clock, None), clock)
    assert run(other.try_acquire_or_renew())
    other.store.foreign_write(holder="thief")  # type: ignore[attr-defined]
    assert not run(other.release())


def test_release_after_the_deadline_writes_nothing() -> None:
    clock = Clock()
    store = FakeLease(clock, None)
    e = elector(store, clock)
    assert run(e.try_acquire_or_renew())
    clock.now += CONFIG.renew_deadline
    writes = len(store.writes)
    assert not run(e.release())
    assert len(store.writes) == writes


# --- the fence ---------------------------------------------------------------------------------

def test_fence_states() -> None:
    clock = Clock()
    expired: list[str] = []
    fence = Fence(clock, on_expired=expired.append)
    fence.check()  # leader election off: always allowed
    fence.follow()
    with pytest.raises(NotLeading):
        fence.check()
    fence.check_expiry()  # a follower's event loop runs on
    fence.lead_until(clock.now + 10)
    fence.check()
    clock.now += 10
    fence.check()
    assert expired and "not renewed in time" in expired[0]


def test_fenced_selector_ends_a_thawed_process_before_any_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop checks the fence when its selector returns: a callback due after a freeze
    past the deadline never runs."""
    clock = Clock()
    expired: list[str] = []

    def on_expired(reason: str) -> None:
        expired.append(reason)
        raise SystemExit(leader.EXIT_LOST)

    monkeypatch.setattr(leader, "FENCE", Fence(clock, on_expired=on_expired))
    leader.FENCE.lead_until(clock.now + 10)
    ran: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, ran.append, "write")
        clock.now += 30  # "frozen" for 30 s before the timer is due
        await asyncio.sleep(0.05)

    loop = leader.fenced_event_loop()
    try:
        assert isinstance(loop._selector, selectors.BaseSelector)  # type: ignore[attr-defined]
        with pytest.raises(SystemExit):
            loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert expired and ran == []


def test_kube_requests_are_fenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's API door checks the fence before each request it sends."""
    from tuneforge import kube as kube_module

    clock = Clock()
    fence = Fence(clock, on_expired=lambda reason: (_ for _ in ()).throw(LeadershipLost(reason)))
    monkeypatch.setattr(kube_module, "FENCE", fence)
    sent: list[str] = []

    async def request() -> str:
        sent.append("sent")
        return "ok"

    k = kube_module.Kube.__new__(kube_module.Kube)
    k._slots = asyncio.Semaphore(1)
    fence.lead_until(clock.now + 10)
    assert run(k._call(request)) == "ok"
    clock.now += 11
    with pytest.raises(LeadershipLost):
        run(k._call(request))
    fence.follow()
    with pytest.raises(NotLeading):
        run(k._call(request))
    assert sent == ["sent"]


# --- settings ------------------------------------------------------------------------------------

def test_settings_defaults_meet_the_takeover_goal() -> None:
    """Defaults: lease 15 s, renew deadline 10 s, retry 2 s: a dead leader is replaced within
    lease + 2 x retry = 19 s; a leader stops 5 s before anyone may take over."""
    s = Settings()
    c = s.election_config()
    assert (c.lease_duration, c.renew_deadline, c.retry_period) == (15.0, 10.0, 2.0)
    assert c.lease_duration + 2 * c.retry_period <= 20
    assert s.leader_elect is False and s.leader_election_lease == "tuneforge-operator"


@pytest.mark.parametrize(("env", "message"), [
    ({"TUNEFORGE_LEADER_ELECTION_RENEW_DEADLINE": "15"}, "renew deadline < lease duration"),
    ({"TUNEFORGE_LEADER_ELECTION_RETRY_PERIOD": "9"}, "TUNEFORGE_LEADER_ELECTION_RETRY_PERIOD"),
    ({"TUNEFORGE_LEADER_ELECT": "maybe"}, "TUNEFORGE_LEADER_ELECT='maybe'"),
])
def test_settings_refuse_unsafe_durations(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("1", True), ("false", False), ("0", False)])
def test_settings_leader_elect_parses_booleans(raw: str, value: bool) -> None:
    assert Settings.from_env({"TUNEFORGE_LEADER_ELECT": raw}).leader_elect is value


def test_kopf_session_is_fenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf's own client (from the login handler) checks the fence before each request: with
    leader election off requests pass; a replica that does not lead sends nothing."""
    import kopf
    from aiohttp import web

    from tuneforge import startup as handlers

    clock = Clock()
    fence = Fence(clock, on_expired=lambda reason: None)
    monkeypatch.setattr(handlers, "FENCE", fence)
    hits: list[str] = []

    async def scenario() -> None:
        async def ok(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/api", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ctx = await handlers.fenced_session(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="t"))
        assert isinstance(ctx, kopf.AiohttpSession) and ctx.server.endswith(str(port))
        session = ctx.aiohttp_session
        try:
            async with session.get(f"http://127.0.0.1:{port}/api") as resp:
                assert resp.status == 200 and resp.request_info.headers["Authorization"] == "Bearer t"
            fence.follow()
            with pytest.raises(NotLeading):
                await session.get(f"http://127.0.0.1:{port}/api")
        finally:
            await session.close()
            await runner.cleanup()

    run(scenario())
    assert hits == ["/api"]
    assert run(handlers.fenced_session(None)) is None


def test_run_elected_follows_then_leads_renews_and_releases() -> None:
    """The start-up path on a real event loop with short durations: a follower serves /healthz
    naming the holder and runs no work; once the foreign Lease expires it takes it, closes its
    /healthz (Kopf's takes the port), runs the work while renewing, and releases on the way out."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Deadlines a loaded machine (a pure tier beside image builds) can keep: at 0.5 s a stalled loop
    # missed the renew deadline and the Lease was, rightly, not released on the way out.
    config = ElectionConfig(lease_duration=1.6, renew_deadline=1.0, retry_period=0.05)
    events: list[Any] = []

    def get_health() -> Any:
        import json
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read())

    async def scenario() -> FakeLease:
        loop = asyncio.get_running_loop()
        store = FakeLease(Clock(), held_by("other"))
        e = LeaderElector(store, "me", config, clock=loop.time, fence=Fence(loop.time, on_expired=events.append))

        async def work() -> None:
            events.append("work")
            with pytest.raises(OSError):
                await loop.run_in_executor(None, get_health)  # the follower's server is gone
            writes = len(store.writes)
            await asyncio.sleep(0.5)
            events.append(("renewals", len(store.writes) - writes))

        task = asyncio.create_task(leader.run_elected(e, work, port, lambda on: events.append(("leading", on))))
        await asyncio.sleep(0.2)
        events.append(("health", await loop.run_in_executor(None, get_health)))
        await asyncio.wait_for(task, 10)
        return store

    store = run(scenario())
    assert events[0] == ("leading", False)
    assert events[1] == ("health", {"leader": False, "holder": "other"})
    assert events[2:4] == [("leading", True), "work"]
    assert events[4][0] == "renewals" and events[4][1] >= 3  # renewed every retry period while working
    assert events[5] == ("leading", False) and len(events) == 6  # never expired
    assert store.record is not None and store.record.holder == "" and store.record.transitions == 1


def test_a_follower_leaves_at_once_on_sigterm() -> None:
    """A follower is PID 1 in its pod and Kopf's signal handlers are not installed yet: without
    its own it would ignore SIGTERM and sit out the pod's grace period (~30 s per scale-down,
    rolling update and uninstall). It leaves at once, runs no work and writes nothing."""
    import os
    import signal

    config = ElectionConfig(lease_duration=30, renew_deadline=20, retry_period=0.05)
    ran: list[str] = []

    async def scenario() -> tuple[FakeLease, float]:
        loop = asyncio.get_running_loop()
        store = FakeLease(Clock(), held_by("other"))
        e = LeaderElector(store, "me", config, clock=loop.time, fence=Fence(loop.time, on_expired=ran.append))

        async def work() -> None:
            ran.append("work")

        task = asyncio.create_task(leader.run_elected(e, work, 0))
        await asyncio.sleep(0.2)
        writes = len(store.writes)
        start = loop.time()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 5)
        assert len(store.writes) == writes
        return store, loop.time() - start

    store, took = run(scenario())
    assert ran == [] and took < 1.0
    assert store.record is not None and store.record.holder == "other"
    # The handlers are gone with the follower: Kopf (or the default action) owns the signal again.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)
