"""Shared fixtures.

* ``timeout(seconds)`` scales every wait by ``ELEVENCONV_TESTS_TIMEOUT_FACTOR`` (slow CI).
* ``no_thread_leaks`` (autouse) fails a test that leaves an ``elevenconv-*`` thread alive.
* Fixture modules are listed in ``pytest_plugins`` so each area keeps its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures_contract",
    "tests.fixtures_gui",
    "tests.fixtures_loopback",
    "tests.fixtures_netns",
    "tests.fixtures_official",
    "tests.fixtures_sound",
]

TIMEOUT_FACTOR = float(os.environ.get("ELEVENCONV_TESTS_TIMEOUT_FACTOR", "1"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def scaled(seconds: float) -> float:
    """A wait of ``seconds``, scaled for slow machines."""
    return seconds * TIMEOUT_FACTOR


def library_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("elevenconv-") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """After each test, every thread the library started must have exited."""
    before = set(library_threads())
    yield
    # Threads are joined by end_session(); give ones still unwinding a bounded grace.
    for t in library_threads():
        if t not in before:
            t.join(scaled(5))
    leaked = [t.name for t in library_threads() if t not in before]
    assert not leaked, f"library threads left running: {leaked}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Real-audio tests get one rerun (reported as "R" and in the summary): PulseAudio on
    a loaded 2-core machine underruns now and then. A second failure fails the test."""
    if not config.pluginmanager.hasplugin("rerunfailures"):
        return
    for item in items:
        if item.get_closest_marker("audio") and not item.get_closest_marker("flaky"):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=1))
