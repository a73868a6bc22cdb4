"""tuneforge.workqueue: per-key serialisation, coalescing, timers, backoff and failures — the
queue both rooms reconcile through, run on a real event loop with fake work."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Callable

import pytest

from tuneforge.workqueue import Backoff, Outcome, WorkQueue, backoff_delay

Key = tuple[str, str]
A, B = ("ns", "a"), ("ns", "b")


class Work:
    """Fake work: records each pass (start and end), waits on a gate, answers from a script."""

    def __init__(self, answers: dict[Key, list[Any]] | None = None) -> None:
        self.log: list[tuple[str, Key]] = []
        self.answers = answers or {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.most = 0

    async def __call__(self, key: Key) -> Outcome:
        self.log.append(("start", key))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
            script = self.answers.get(key) or [None]
            answer = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[no-any-return]
        finally:
            self.running -= 1
            self.log.append(("end", key))

    def passes(self, key: Key) -> int:
        return self.log.count(("start", key))


def queue(work: Work, on_failure: Callable[[Key, str], None] | None = None, delay: float = 0.01) -> WorkQueue[Key]:
    return WorkQueue("Thing", work, retry_delay=delay, retry_max_delay=4 * delay, on_failure=on_failure)


async def settle(q: WorkQueue[Key], seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    while q.tasks:
        await asyncio.gather(*q.tasks)


def test_triggers_during_a_pass_coalesce_into_one_more_pass() -> None:
    async def main() -> None:
        work = Work()
        q = queue(work)
        work.gate.clear()
        q.kick(A)
        await asyncio.sleep(0)
        for _ in range(10):  # a burst while the first pass waits
            q.kick(A)
        await asyncio.sleep(0)
        work.gate.set()
        await settle(q)
        assert work.passes(A) == 2  # the first one, and one for the whole burst
        assert not q.busy and not q.dirty

    asyncio.run(main())


def test_one_key_is_never_reconciled_twice_at_once_but_different_keys_are() -> None:
    async def main() -> None:
        work = Work()
        q = queue(work)
        work.gate.clear()
        for key in (A, A, B, B):
            q.kick(key)
        await asyncio.sleep(0)
        assert work.running == 2 and {k for _, k in work.log} == {A, B}  # A and B concurrently
        work.gate.set()
        await settle(q)
        assert work.most == 2
        # Each key's passes never overlap: every start is followed by its own end.
        for key in (A, B):
            mine = [e for e, k in work.log if k == key]
            assert mine == ["start", "end"] * (len(mine) // 2)

    asyncio.run(main())


@pytest.mark.parametrize("answer,passes,attempts", [
    (None, 1, 0),          # done: nothing more, the backoff resets
    (0.02, 2, 0),          # a timer: looked at again after it, the backoff resets
    (Backoff(None), 2, 1),  # not yet: looked at again with backoff, which grows
])
def test_what_a_pass_returns_decides_the_next_look(answer: Outcome, passes: int, attempts: int) -> None:
    async def main() -> None:
        work = Work({A: [answer, None]})
        q = queue(work)
        q.attempts[A] = 0 if attempts else 3  # a success resets a count left from failures
        await q.run(A)
        assert (A in q.timers) == (answer is not None)
        assert q.attempts.get(A, 0) == attempts
        await settle(q, 0.1)
        assert work.passes(A) == passes and not q.timers

    asyncio.run(main())


def test_the_earliest_timer_wins_and_forget_cancels_it() -> None:
    async def main() -> None:
        work = Work()
        q = queue(work)
        assert q.later(A, 10) == 10
        assert q.later(A, 30) == pytest.approx(10, abs=0.1)  # a later one leaves the earlier
        assert q.later(A, 0.01) == 0.01                      # an earlier one replaces it
        assert len(q.timers) == 1
        await settle(q, 0.05)
        assert work.passes(A) == 1 and not q.timers
        q.later(B, 0.01)
        q.attempts[B] = 2
        q.forget(B)
        await settle(q, 0.05)
        assert work.passes(B) == 0 and B not in q.attempts

    asyncio.run(main())


def test_a_backoff_wait_ends_no_later_than_asked() -> None:
    async def main() -> None:
        q = queue(Work(), delay=100)
        q.attempts[A] = 5
        assert q.retry(A, at_most=0.5) <= 1.5
        q.forget(A)

    asyncio.run(main())


def test_a_failing_pass_is_retried_with_backoff_and_the_worker_survives() -> None:
    async def main() -> None:
        failures: list[tuple[Key, str]] = []
        work = Work({A: [ValueError("a bug"), ValueError("a bug"), None]})
        q = queue(work, on_failure=lambda k, text: failures.append((k, text)))
        await q.run(A)
        assert A not in q.busy and q.attempts[A] == 1 and A in q.timers
        assert failures[0][0] == A and "a bug" in failures[0][1] and "retrying in" in failures[0][1]
        await settle(q, 0.2)
        assert work.passes(A) == 3 and A not in q.attempts and not q.timers  # recovered, reset
        await q.run(A)  # the key is still served after failures
        assert work.passes(A) == 4

    asyncio.run(main())


def test_a_failed_pass_is_not_rerun_for_triggers_during_it_its_retry_is() -> None:
    async def main() -> None:
        work = Work({A: [ValueError("a bug"), None]})
        q = queue(work, delay=0.05)
        work.gate.clear()
        q.kick(A)
        await asyncio.sleep(0)
        q.kick(A)
        await asyncio.sleep(0)
        work.gate.set()
        await settle(q)
        assert work.passes(A) == 1 and A in q.timers
        await settle(q, 0.2)
        assert work.passes(A) == 2

    asyncio.run(main())


def test_background_passes_run_in_the_context_of_the_first_handler() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")
    seen: list[str] = []

    async def work(key: Key) -> Outcome:
        seen.append(var.get())
        return None

    async def main() -> None:
        q = WorkQueue("Thing", work, retry_delay=1, retry_max_delay=1)
        var.set("poller")
        q.kick(A, take_context=False)  # a non-handler caller does not set the context
        await settle(q)
        var.set("handler")
        q.kick(A)
        var.set("later")
        q.kick(B)
        await settle(q)
        assert seen == ["poller", "handler", "handler"]

    asyncio.run(main())


def test_backoff_grows_is_capped_and_jittered() -> None:
    assert [backoff_delay(a, 1, 8, rand=lambda: 1.0) for a in range(6)] == [1, 2, 4, 8, 8, 8]
    assert backoff_delay(2, 1, 8, rand=lambda: 0.0) == 2
