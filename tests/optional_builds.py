"""Optional cluster components (Kueue, KEDA) built in the background for the tests that ask for
them, and waited for *outside* a test's time limit.

Collection starts the build of each optional component some collected test asks for (its fixture
named after it) while the cluster and images come up; ``make test``'s prefetch builds them too, and
a per-binary lock makes either wait for the other. Cold, such a build takes longer than a test's
own limit (KEDA's operator: 858 s on 2 busy cores, 2026-12-07), and pytest-timeout's clock covers
a test's setup too, so a fixture that waited for it errored the test
(``test_keda_scales_the_active_color_on_waiting_requests_and_follows_the_switch``, cold run of
2026-12-07). :func:`pytest_runtest_protocol` waits first, around pytest-timeout's own wrapper of
that hook, then the test runs under its usual limit; the wait is recorded in the test's
``user_properties`` (JUnit report). A failed build is not raised here: the fixture's
``future.result()`` raises it, as the test's error.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

BUILDS: dict[str, concurrent.futures.Future[Any]] = {}
"""Component name (= its fixture's name) -> its background build."""


def start(session: pytest.Session, builders: Mapping[str, Callable[[], Any]]) -> None:
    """Starts, in a thread of its own, the build of each component a collected test asks for."""
    for name, build in builders.items():
        if name in BUILDS or not any(name in getattr(item, "fixturenames", ()) for item in session.items):
            continue
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-build")
        BUILDS[name] = pool.submit(build)
        pool.shutdown(wait=False)


def wait_for(item: pytest.Item) -> float:
    """Waits until the builds of what ``item`` uses are over (done or failed); the seconds waited."""
    start = time.monotonic()
    wanted = [f for name, f in BUILDS.items() if name in getattr(item, "fixturenames", ())]
    concurrent.futures.wait(wanted)
    return time.monotonic() - start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Import into a conftest.py: a test's optional builds are waited for before its timer starts."""
    waited = wait_for(item)
    if waited >= 1:
        item.user_properties.append(("optional build wait (s)", round(waited)))
    return (yield)
