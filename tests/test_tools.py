"""ClientTools: the registry, blocking ``handle()``, and the pooled ``execute_tool_async``.

Every test that runs a tool on the pool closes its ``ClientTools`` (the autouse
``no_thread_leaks`` fixture fails a test that leaves an ``elevenconv-*`` thread alive),
and handlers that block wait on an ``Event`` that the test releases before it ends.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elevenconv import ClientTools
from elevenconv.errors import ConfigurationError, ElevenConvError, ToolError, ToolTimeoutError
from tests.conftest import scaled

pytestmark = pytest.mark.timeout(20)

WAIT = scaled(5)


# -- helpers ---------------------------------------------------------------------------------


class Results:
    """A ``callback`` for ``execute_tool_async`` that records every message it gets."""

    def __init__(self) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.threads: list[str] = []
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.count += 1
            self.threads.append(threading.current_thread().name)
        self.messages.put(message)

    def get(self, timeout: float = WAIT) -> dict[str, Any]:
        return self.messages.get(timeout=timeout)


def settled(future: Future[Any]) -> threading.Event:
    """An Event set once every done-callback registered on ``future`` so far has run.

    Done-callbacks run in registration order on one thread, so when ours runs the
    library's (which reports the result) has finished: no race with ``future.result()``,
    which can return before the callbacks run.
    """
    event = threading.Event()
    future.add_done_callback(lambda _f: event.set())
    return event


def run(
    tools: ClientTools, name: str, params: dict[str, Any] | None = None
) -> tuple[Future[Any], dict[str, Any], Results]:
    """Run ``name`` on the pool; return its future, its one result message and the recorder."""
    results = Results()
    future = tools.execute_tool_async(name, params or {"tool_call_id": "call_1"}, results)
    message = results.get()
    assert settled(future).wait(WAIT)
    assert results.count == 1, "the callback must be called exactly once"
    return future, message, results


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("elevenconv-tool")]


def join_pool_threads() -> None:
    """Join every tool-pool and watchdog thread (they exit once the pool is shut down)."""
    for t in pool_threads():
        t.join(WAIT)
    alive = [t.name for t in pool_threads() if t.is_alive()]
    assert not alive, f"tool threads still alive after close(): {alive}"


@pytest.fixture
def tools() -> Iterator[ClientTools]:
    ct = ClientTools()
    yield ct
    ct.close()
    join_pool_threads()


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"max_workers": 0}, {"max_workers": -1}, {"timeout": 0}, {"timeout": -1.0}]
)
def test_invalid_settings_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ClientTools(**kwargs)


def test_creating_client_tools_starts_no_thread() -> None:
    before = set(pool_threads())
    ct = ClientTools(max_workers=2, timeout=1.0)
    ct.register("t", lambda p: None)
    assert set(pool_threads()) == before
    ct.close()  # closing an unused registry is fine


# -- registry --------------------------------------------------------------------------------


def test_register_and_query(tools: ClientTools) -> None:
    assert tools.get_registered_tools() == []
    tools.register("a", lambda p: 1)
    tools.register("b", lambda p: 2)
    assert sorted(tools.get_registered_tools()) == ["a", "b"]
    assert tools.is_tool_registered("a")
    assert not tools.is_tool_registered("c")
    assert "a" in repr(tools)


def test_get_registered_tools_returns_a_copy(tools: ClientTools) -> None:
    tools.register("a", lambda p: 1)
    names = tools.get_registered_tools()
    names.append("x")
    assert tools.get_registered_tools() == ["a"]


def test_duplicate_name_is_rejected_and_keeps_the_first_handler(tools: ClientTools) -> None:
    tools.register("dup", lambda p: "first")
    with pytest.raises(ValueError, match="dup") as info:
        tools.register("dup", lambda p: "second")
    assert isinstance(info.value, ConfigurationError)
    assert tools.handle("dup", {}) == "first"


@pytest.mark.parametrize("handler", [None, 42, "not a function", {"a": 1}])
def test_non_callable_handler_is_rejected(tools: ClientTools, handler: Any) -> None:
    with pytest.raises(ConfigurationError, match="callable"):
        tools.register("bad", handler)
    assert not tools.is_tool_registered("bad")


def test_unregister_returns_whether_it_was_registered(tools: ClientTools) -> None:
    tools.register("a", lambda p: 1)
    assert tools.unregister("a") is True
    assert tools.unregister("a") is False
    assert tools.unregister("never") is False
    assert not tools.is_tool_registered("a")
    tools.register("a", lambda p: "again")  # the name is free again
    assert tools.handle("a", {}) == "again"


def test_clear_removes_every_tool(tools: ClientTools) -> None:
    for name in ("a", "b", "c"):
        tools.register(name, lambda p: None)
    tools.clear()
    assert tools.get_registered_tools() == []
    assert not tools.is_tool_registered("a")


# -- handle(): blocking, in the caller's thread -------------------------------------------


def test_handle_sync_handler_gets_a_copy_of_the_parameters(tools: ClientTools) -> None:
    seen: list[dict[str, Any]] = []

    def handler(params: dict[str, Any]) -> Any:
        seen.append(params)
        params["mutated"] = True
        return {"echo": params["x"], "thread": threading.current_thread().name}

    tools.register("echo", handler)
    original = {"x": 5}
    result = tools.handle("echo", original)
    assert result == {"echo": 5, "thread": threading.current_thread().name}
    assert original == {"x": 5}, "the caller's mapping must not be mutated"
    assert seen[0] is not original


def test_handle_async_def_handler_returns_its_result(tools: ClientTools) -> None:
    async def handler(params: dict[str, Any]) -> str:
        import asyncio

        await asyncio.sleep(0)  # a real suspension point inside the coroutine
        return f"async {params['n']}"

    tools.register("a", handler)
    assert tools.handle("a", {"n": 3}) == "async 3"


def test_handle_async_call_object(tools: ClientTools) -> None:
    class Handler:
        async def __call__(self, params: dict[str, Any]) -> int:
            return int(params["n"]) * 2

    tools.register("obj", Handler())
    assert tools.handle("obj", {"n": 21}) == 42


def test_handle_sync_handler_returning_a_coroutine_is_awaited(tools: ClientTools) -> None:
    async def inner(n: int) -> int:
        return n + 1

    tools.register("wrapped", lambda p: inner(p["n"]), is_async=False)
    assert tools.handle("wrapped", {"n": 1}) == 2


def test_handle_unregistered_tool_raises_tool_error(tools: ClientTools) -> None:
    with pytest.raises(ToolError, match="nope") as info:
        tools.handle("nope", {})
    assert info.value.tool_name == "nope"
    assert isinstance(info.value, ElevenConvError)


def test_handle_propagates_the_handlers_exception(tools: ClientTools) -> None:
    def handler(params: dict[str, Any]) -> None:
        raise KeyError("missing thing")

    tools.register("raises", handler)
    with pytest.raises(KeyError, match="missing thing"):
        tools.handle("raises", {})


# -- execute_tool_async: results -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "Client tool: t called successfully."),
        (0, "0"),
        (False, "false"),
        (True, "true"),
        ([], "[]"),
        ({}, "{}"),
        ("", ""),
        ("plain text", "plain text"),
        ('{"already": "json"}', '{"already": "json"}'),
        (1.5, "1.5"),
        ("héllo", "héllo"),
    ],
)
def test_result_is_always_a_string(tools: ClientTools, value: Any, expected: str) -> None:
    tools.register("t", lambda p: value)
    future, message, _ = run(tools, "t")
    assert message == {
        "type": "client_tool_result",
        "tool_call_id": "call_1",
        "result": expected,
        "is_error": False,
    }
    assert isinstance(message["result"], str)
    assert future.result(0) == value, "the future holds the raw result"


def test_dict_result_is_json(tools: ClientTools) -> None:
    value = {"temp": 21.5, "unit": "C", "tags": ["a", None], "ok": True, "name": "Zürich"}
    tools.register("t", lambda p: value)
    future, message, _ = run(tools, "t")
    assert message["is_error"] is False
    assert json.loads(message["result"]) == value
    assert future.result(0) is value


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), {"x": b"bytes"}])
def test_unserialisable_result_is_an_error(tools: ClientTools, value: Any) -> None:
    tools.register("weird", lambda p: value)
    future, message, _ = run(tools, "weird")
    assert message["is_error"] is True
    assert "not JSON-serialisable" in message["result"]
    assert "weird" in message["result"]
    assert future.result(0) is value, "the raw result is still on the future"


def test_handler_exception_is_an_error_result(tools: ClientTools) -> None:
    def handler(params: dict[str, Any]) -> None:
        raise RuntimeError("the database is down")

    tools.register("fails", handler)
    future, message, _ = run(tools, "fails")
    assert message["is_error"] is True
    assert message["result"] == "the database is down"
    assert message["tool_call_id"] == "call_1"
    with pytest.raises(RuntimeError, match="database"):
        future.result(0)


def test_exception_without_message_reports_its_type(tools: ClientTools) -> None:
    def handler(params: dict[str, Any]) -> None:
        raise LookupError

    tools.register("fails", handler)
    _, message, _ = run(tools, "fails")
    assert message["is_error"] is True
    assert message["result"] == "LookupError"


def test_unregistered_tool_gets_an_error_result(tools: ClientTools) -> None:
    future, message, _ = run(tools, "ghost", {"tool_call_id": "c9"})
    assert message["is_error"] is True
    assert message["tool_call_id"] == "c9"
    assert "ghost" in message["result"]
    assert "not registered" in message["result"]
    with pytest.raises(ToolError):
        future.result(0)


def test_async_handlers_run_on_the_pool(tools: ClientTools) -> None:
    async def coro(params: dict[str, Any]) -> dict[str, Any]:
        return {"got": params["q"]}

    class Obj:
        async def __call__(self, params: dict[str, Any]) -> str:
            return "from object"

    tools.register("coro", coro)
    tools.register("obj", Obj())
    _, message, _ = run(tools, "coro", {"tool_call_id": "1", "q": "x"})
    assert json.loads(message["result"]) == {"got": "x"}
    _, message, _ = run(tools, "obj", {"tool_call_id": "2"})
    assert message["result"] == "from object"


def test_async_handler_exception_is_an_error_result(tools: ClientTools) -> None:
    async def coro(params: dict[str, Any]) -> None:
        raise ValueError("async failure")

    tools.register("coro", coro)
    _, message, _ = run(tools, "coro")
    assert message == {
        "type": "client_tool_result",
        "tool_call_id": "call_1",
        "result": "async failure",
        "is_error": True,
    }


def test_parameters_and_tool_call_id_reach_the_handler(tools: ClientTools) -> None:
    got: list[dict[str, Any]] = []
    tools.register("t", lambda p: got.append(p))
    params = {"tool_call_id": "abc", "city": "Paris", "n": 2}
    _, message, _ = run(tools, "t", params)
    assert got == [params]
    assert got[0] is not params
    assert message["tool_call_id"] == "abc"


def test_missing_tool_call_id_is_an_empty_string(tools: ClientTools) -> None:
    tools.register("t", lambda p: "ok")
    _, message, _ = run(tools, "t", {"x": 1})
    assert message["tool_call_id"] == ""
    assert message["result"] == "ok"


def test_no_callback_still_returns_the_future(tools: ClientTools) -> None:
    tools.register("t", lambda p: 7)
    future = tools.execute_tool_async("t", {})
    assert future.result(WAIT) == 7


def test_execute_tool_is_an_alias() -> None:
    assert ClientTools.execute_tool is ClientTools.execute_tool_async


def test_execute_tool_alias_runs_the_tool(tools: ClientTools) -> None:
    tools.register("t", lambda p: "via alias")
    results = Results()
    future = tools.execute_tool("t", {"tool_call_id": "z"}, results)
    assert future.result(WAIT) == "via alias"
    assert results.get()["result"] == "via alias"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=10)
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=10,
    )
)
def test_json_results_round_trip(tools: ClientTools, value: Any) -> None:
    tools.clear()
    tools.register("t", lambda p: value)
    _, message, _ = run(tools, "t")
    assert message["is_error"] is False
    assert isinstance(message["result"], str)
    if value is None:
        assert message["result"] == "Client tool: t called successfully."
    elif isinstance(value, str):
        assert message["result"] == value
    else:
        assert json.loads(message["result"]) == value


# -- threads ---------------------------------------------------------------------------------


def test_handler_and_callback_run_on_a_pool_thread(tools: ClientTools) -> None:
    names: list[str] = []
    tools.register("where", lambda p: names.append(threading.current_thread().name))
    _, message, _ = run(tools, "where")
    assert message["is_error"] is False
    caller = threading.current_thread().name
    assert len(names) == 1
    assert names[0].startswith("elevenconv-tool")
    assert names[0] != caller


def test_callback_runs_on_a_worker_thread_even_when_the_tool_is_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import elevenconv._tools as tools_module

    class WorkerWinsTheRace(Future[Any]):
        # Reproduces the scheduling where the worker finishes the tool before submit()'s
        # caller gets to register its done-callback (seen in this suite with fast tools).
        def add_done_callback(self, fn: Any) -> None:
            self.exception(WAIT)
            super().add_done_callback(fn)

    monkeypatch.setattr(tools_module, "Future", WorkerWinsTheRace)
    ct = ClientTools()
    ct.register("fast", lambda p: "ok")
    try:
        _, message, results = run(ct, "fast")
        assert message["result"] == "ok"
        assert results.threads[0].startswith("elevenconv-tool"), results.threads
    finally:
        ct.close()
        join_pool_threads()


def test_calls_run_concurrently() -> None:
    # Two handlers that each wait for the other can only both finish on two workers.
    ct = ClientTools(max_workers=2)
    barrier = threading.Barrier(2, timeout=WAIT)
    ct.register("meet", lambda p: barrier.wait())
    try:
        futures = [ct.execute_tool_async("meet", {}) for _ in range(2)]
        assert sorted(f.result(WAIT) for f in futures) == [0, 1]
    finally:
        ct.close()
        join_pool_threads()


# -- timeout ---------------------------------------------------------------------------------


def test_timeout_reports_an_error_once_and_drops_the_late_result() -> None:
    ct = ClientTools(timeout=0.2)
    release = threading.Event()
    started = threading.Event()

    def slow(params: dict[str, Any]) -> str:
        started.set()
        assert release.wait(WAIT)
        return "too late"

    ct.register("slow", slow)
    results = Results()
    try:
        future = ct.execute_tool_async("slow", {"tool_call_id": "t1"}, results)
        message = results.get()
        assert started.is_set()
        assert message["is_error"] is True
        assert message["tool_call_id"] == "t1"
        assert "slow" in message["result"]
        assert "within 0.2 s" in message["result"]
        assert not future.done(), "the handler keeps running after the timeout"
    finally:
        release.set()
    try:
        done = settled(future)
        assert future.result(WAIT) == "too late", "the future still gets the real result"
        assert done.wait(WAIT)
        assert results.count == 1, "the late result must not be delivered a second time"
        assert results.messages.empty()
    finally:
        ct.close()
        join_pool_threads()


def test_fast_call_with_a_timeout_is_not_reported_as_timed_out() -> None:
    ct = ClientTools(timeout=scaled(2))
    ct.register("quick", lambda p: "fast")
    try:
        _, message, _ = run(ct, "quick")
        assert message == {
            "type": "client_tool_result",
            "tool_call_id": "call_1",
            "result": "fast",
            "is_error": False,
        }
        watchdogs = [t for t in pool_threads() if t.name == "elevenconv-tool-watchdog"]
        assert len(watchdogs) == 1
    finally:
        ct.close()
        join_pool_threads()


def test_tool_timeout_error_type() -> None:
    assert issubclass(ToolTimeoutError, ToolError)
    assert issubclass(ToolTimeoutError, TimeoutError)


# -- max_pending -----------------------------------------------------------------------------


def test_calls_beyond_max_pending_get_an_immediate_error() -> None:
    ct = ClientTools(max_workers=4, max_pending=2)
    release = threading.Event()
    both_started = threading.Barrier(3, timeout=WAIT)

    def blocked(params: dict[str, Any]) -> str:
        both_started.wait()
        assert release.wait(WAIT)
        return "done"

    ct.register("blocked", blocked)
    first, second, third = Results(), Results(), Results()
    try:
        f1 = ct.execute_tool_async("blocked", {"tool_call_id": "1"}, first)
        f2 = ct.execute_tool_async("blocked", {"tool_call_id": "2"}, second)
        both_started.wait()  # both handlers are running and blocked
        f3 = ct.execute_tool_async("blocked", {"tool_call_id": "3"}, third)
        # Answered before execute_tool_async returned, in the caller's thread.
        message = third.messages.get_nowait()
        assert message["is_error"] is True
        assert message["tool_call_id"] == "3"
        assert "max_pending=2" in message["result"]
        assert f3.done()
        with pytest.raises(ToolError):
            f3.result(0)
        assert first.messages.empty()
        assert second.messages.empty()
    finally:
        release.set()
    try:
        assert first.get()["result"] == "done"
        assert second.get()["result"] == "done"
        assert f1.result(WAIT) == f2.result(WAIT) == "done"
        assert third.count == 1
        # The slots are free again.
        ct.register("quick", lambda p: "ok")
        _, message, _ = run(ct, "quick")
        assert message["result"] == "ok"
    finally:
        ct.close()
        join_pool_threads()


# -- lifetime --------------------------------------------------------------------------------


def test_close_then_a_new_call_uses_a_new_pool() -> None:
    ct = ClientTools(max_workers=1)
    ct.register("thread", lambda p: threading.current_thread())
    try:
        first = ct.execute_tool_async("thread", {}).result(WAIT)
        ct.close()
        first.join(WAIT)
        assert not first.is_alive(), "close() shut the old pool's worker down"
        second = ct.execute_tool_async("thread", {}).result(WAIT)
        assert second is not first
        assert second.is_alive()
        assert second.name.startswith("elevenconv-tool")
    finally:
        ct.close()
        join_pool_threads()


def test_close_is_idempotent_and_joins_pool_threads() -> None:
    ct = ClientTools(max_workers=3, timeout=scaled(5))
    ct.register("t", lambda p: p["i"])
    futures = [ct.execute_tool_async("t", {"i": i}) for i in range(6)]
    assert [f.result(WAIT) for f in futures] == list(range(6))
    assert pool_threads(), "the pool and watchdog threads exist while open"
    ct.close()
    ct.close()
    join_pool_threads()


def test_context_manager_closes_the_pool() -> None:
    with ClientTools() as ct:
        ct.register("t", lambda p: "x")
        assert ct.execute_tool_async("t", {}).result(WAIT) == "x"
    join_pool_threads()


def test_close_cancels_queued_calls_with_an_error_result() -> None:
    ct = ClientTools(max_workers=1)
    release = threading.Event()
    started = threading.Event()

    def blocker(params: dict[str, Any]) -> str:
        started.set()
        assert release.wait(WAIT)
        return "ran"

    class ReleaseOnCancel(Results):
        # The cancellation is reported before close() waits (if it does) for running
        # tools, so the blocked tool is released from here, whichever close() semantics.
        def __call__(self, message: dict[str, Any]) -> None:
            super().__call__(message)
            release.set()

    ct.register("blocker", blocker)
    ct.register("queued", lambda p: "should not run")
    running, queued = Results(), ReleaseOnCancel()
    try:
        f_running = ct.execute_tool_async("blocker", {"tool_call_id": "r"}, running)
        assert started.wait(WAIT)
        f_queued = ct.execute_tool_async("queued", {"tool_call_id": "q"}, queued)
        ct.close()
        message = queued.get()
        assert f_queued.cancelled()
        assert message["is_error"] is True
        assert message["tool_call_id"] == "q"
        assert "cancelled" in message["result"]
        assert f_running.result(WAIT) == "ran", "a tool already running is not interrupted"
        assert running.get()["result"] == "ran"
        assert queued.count == 1
    finally:
        release.set()
        join_pool_threads()


def executor_of(ct: ClientTools) -> object:
    return ct._pool


def test_acquire_release_refcount_shuts_down_on_last_release() -> None:
    ct = ClientTools()
    ct.register("t", lambda p: "ok")
    try:
        ct._acquire()
        ct._acquire()
        assert ct.execute_tool_async("t", {}).result(WAIT) == "ok"
        pool = executor_of(ct)
        assert pool is not None
        ct._release()  # one user left: the pool stays
        assert executor_of(ct) is pool
        assert ct.execute_tool_async("t", {}).result(WAIT) == "ok"
        assert executor_of(ct) is pool
        ct._release()  # the last user: the pool is shut down
        assert executor_of(ct) is None
        join_pool_threads()
        # Usable again afterwards, with a new pool.
        ct._acquire()
        assert ct.execute_tool_async("t", {}).result(WAIT) == "ok"
        assert executor_of(ct) is not None
        assert executor_of(ct) is not pool
        ct._release()
        assert executor_of(ct) is None
    finally:
        ct.close()
        join_pool_threads()


def test_extra_release_does_not_go_negative() -> None:
    ct = ClientTools()
    ct.register("t", lambda p: "ok")
    try:
        ct._release()  # nobody acquired: harmless
        ct._release()
        ct._acquire()
        assert ct.execute_tool_async("t", {}).result(WAIT) == "ok"
        pool = executor_of(ct)
        ct._acquire()
        ct._release()
        assert executor_of(ct) is pool, "a negative count would have shut the pool early"
        ct._release()
        assert executor_of(ct) is None
    finally:
        ct.close()
        join_pool_threads()


def test_many_concurrent_callers_each_get_exactly_one_result() -> None:
    ct = ClientTools(max_workers=4, max_pending=1000)
    ct.register("sq", lambda p: p["i"] ** 2)
    results = Results()
    callers_done = threading.Barrier(5, timeout=WAIT)

    def caller(base: int) -> None:
        for i in range(base, base + 25):
            ct.execute_tool_async("sq", {"tool_call_id": str(i), "i": i}, results)
        callers_done.wait()

    threads = [
        threading.Thread(target=caller, args=(k * 25,), name=f"test-caller-{k}") for k in range(4)
    ]
    try:
        for t in threads:
            t.start()
        callers_done.wait()
        got = {}
        for _ in range(100):
            message = results.get()
            assert message["tool_call_id"] not in got
            got[message["tool_call_id"]] = message["result"]
        assert got == {str(i): str(i * i) for i in range(100)}
    finally:
        for t in threads:
            t.join(WAIT)
        ct.close()
        join_pool_threads()


# -- interpreter exit ------------------------------------------------------------------------

_HUNG_TOOL_SCRIPT = """
import sys, threading
from elevenconv import ClientTools

tools = ClientTools(timeout={timeout})
started = threading.Event()
tools.register("hang", lambda p: (started.set(), threading.Event().wait()))
tools.execute_tool_async("hang", {{"tool_call_id": "h"}})
assert started.wait(10)
print("tool running", flush=True)
"""


@pytest.mark.parametrize("timeout", [None, 3600])
def test_a_hung_tool_does_not_keep_the_interpreter_alive(timeout: float | None) -> None:
    # A ThreadPoolExecutor joins its workers at exit: this script would never end.
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _HUNG_TOOL_SCRIPT.format(timeout=timeout)],
        capture_output=True,
        text=True,
        timeout=scaled(15),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "tool running\n"


def test_workers_and_watchdog_are_daemon_threads() -> None:
    ct = ClientTools(timeout=scaled(5))
    ct.register("t", lambda p: [t.daemon for t in pool_threads()])
    try:
        assert all(ct.execute_tool_async("t", {}).result(WAIT))
        assert {t.name for t in pool_threads()} == {"elevenconv-tool-1", "elevenconv-tool-watchdog"}
    finally:
        ct.close()
        join_pool_threads()


def test_the_executor_follows_the_executor_contract() -> None:
    from elevenconv._tools import _DaemonThreadExecutor

    pool = _DaemonThreadExecutor(2, "elevenconv-tool-test")
    try:
        assert list(pool.map(lambda x: x * 2, range(10))) == [x * 2 for x in range(10)]
        failing = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(WAIT)
        assert len(pool.threads()) <= 2
    finally:
        pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool.threads())
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)


def test_executor_shutdown_can_cancel_queued_work() -> None:
    from elevenconv._tools import _DaemonThreadExecutor

    pool = _DaemonThreadExecutor(1, "elevenconv-tool-test")
    release = threading.Event()
    started = threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(WAIT)

    running = pool.submit(block)
    assert started.wait(WAIT)
    queued = [pool.submit(lambda: "ran") for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    release.set()
    assert running.result(WAIT) is True
    for t in pool.threads():
        t.join(WAIT)
    assert not any(t.is_alive() for t in pool.threads())


# -- per-conversation scopes -----------------------------------------------------------------


class Answers:
    """An ``on_done`` for ``ToolScope.submit`` that records ``(text, is_error, exc)``."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[str, bool, BaseException | None]] = queue.Queue()

    def __call__(self, text: str, is_error: bool, exc: BaseException | None) -> None:
        self.q.put((text, is_error, exc))

    def get(self) -> tuple[str, bool, BaseException | None]:
        return self.q.get(timeout=WAIT)


class Blocker:
    """A handler that signals it started, then waits until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, params: dict[str, Any]) -> str:
        self.started.set()
        assert self.release.wait(WAIT)
        return "unblocked"


def test_closing_a_scope_cancels_its_queued_calls_without_waiting_for_running_ones() -> None:
    ct = ClientTools(max_workers=1)
    blocker, ran = Blocker(), []
    ct.register("block", blocker)
    ct.register("queued", lambda p: ran.append(p["tool_call_id"]))
    scope = ct._open_scope("conv-1")
    answers = Answers()
    try:
        running = scope.submit("block", {}, "b", answers)
        assert blocker.started.wait(WAIT)
        queued = [
            scope.submit("queued", {"tool_call_id": f"q{i}"}, f"q{i}", answers) for i in range(3)
        ]
        # close() returns while the running tool is still blocked: it does not wait for it.
        assert scope.close() == 3
        assert blocker.release.is_set() is False
        assert all(f.cancelled() for f in queued)
        assert scope.cancelled == 3
        assert scope.running == 1
        assert scope.close() == 0, "idempotent"
        assert scope.join(0.01) is False, "the blocked tool is still running"
    finally:
        blocker.release.set()
    assert scope.join(WAIT) is True
    assert running.result(WAIT) == "unblocked", "a running tool finishes on its own thread"
    assert ran == [], "queued calls never start"
    assert answers.q.empty(), "nothing of a closed scope is answered"
    assert ct._pending == 0
    assert ct._pool is None, "the last scope out shut the pool down"
    assert not pool_threads(), "join() also waited for the pool's threads"


def test_a_call_submitted_after_close_never_runs_and_is_counted() -> None:
    ct = ClientTools()
    ran: list[int] = []
    ct.register("t", lambda p: ran.append(1))
    scope = ct._open_scope()
    scope.close()
    answers = Answers()
    future = scope.submit("t", {}, "late", answers)
    assert future.cancelled()
    assert scope.cancelled == 1
    assert ran == [] and answers.q.empty()
    assert ct._pool is None, "a refused call starts no pool"
    assert scope.join(WAIT) is True
    assert not pool_threads()


def test_closing_one_scope_leaves_the_other_conversations_calls_alone() -> None:
    ct = ClientTools(max_workers=1)
    blocker = Blocker()
    ct.register("block", blocker)
    ct.register("echo", lambda p: p["x"])
    first, second = ct._open_scope("a"), ct._open_scope("b")
    a_answers, b_answers = Answers(), Answers()
    try:
        first.submit("block", {}, "a1", a_answers)
        assert blocker.started.wait(WAIT)
        queued = second.submit("echo", {"x": "from b"}, "b1", b_answers)
        assert first.close() == 0
        assert not queued.cancelled()
        assert ct._pool is not None, "b still uses the pool"
    finally:
        blocker.release.set()
    assert b_answers.get() == ("from b", False, None)
    assert first.join(WAIT) is True
    assert a_answers.q.empty()
    second.close()
    assert second.join(WAIT) is True
    assert not pool_threads()


def test_a_tool_can_close_and_join_its_own_scope() -> None:
    # A tool that ends its conversation runs end_session() + wait_for_session_end() on a
    # pool worker: join() must not wait for the calling thread itself.
    ct = ClientTools()
    holder: dict[str, Any] = {}

    def end_it(params: dict[str, Any]) -> bool:
        scope = holder["scope"]
        scope.close()
        return bool(scope.join(WAIT))

    ct.register("end", end_it)
    holder["scope"] = scope = ct._open_scope()
    future = scope.submit("end", {}, "e", Answers())
    assert future.result(WAIT) is True
    assert scope.join(WAIT) is True
    assert not pool_threads()


@pytest.mark.parametrize("round_", range(10))
def test_close_racing_with_submissions_loses_nothing_and_leaks_nothing(round_: int) -> None:
    ct = ClientTools(max_workers=2, max_pending=10_000)
    ran: list[str] = []
    ct.register("t", lambda p: ran.append(p["tool_call_id"]))
    scope = ct._open_scope()
    answers = Answers()
    submitted = threading.Event()

    def submitter() -> None:
        for i in range(300):
            scope.submit("t", {"tool_call_id": str(i)}, str(i), answers)
            if i == 10 * round_:
                submitted.set()

    thread = threading.Thread(target=submitter, name="test-submitter")
    thread.start()
    assert submitted.wait(WAIT)
    scope.close()
    thread.join(WAIT)
    assert scope.join(WAIT) is True
    answered = answers.q.qsize()
    assert len(ran) + scope.cancelled == 300, "each call either ran or was counted as cancelled"
    assert answered <= len(ran)
    assert ct._pending == 0
    assert ct._pool is None
    assert not pool_threads()


def test_a_call_still_queued_at_its_timeout_never_starts() -> None:
    ct = ClientTools(max_workers=1, timeout=0.2)
    blocker, ran = Blocker(), []
    ct.register("block", blocker)
    ct.register("queued", lambda p: ran.append(1))
    scope = ct._open_scope()
    answers = Answers()
    try:
        scope.submit("block", {}, "b", answers)
        assert blocker.started.wait(WAIT)
        queued = scope.submit("queued", {}, "q", answers)
        first, second = answers.get(), answers.get()
        assert {first[0], second[0]} == {
            "client tool 'block' did not finish within 0.2 s",
            "client tool 'queued' did not finish within 0.2 s",
        }
        assert all(isinstance(a[2], ToolTimeoutError) for a in (first, second))
        assert queued.cancelled()
    finally:
        blocker.release.set()
    scope.close()
    assert scope.join(WAIT) is True
    assert ran == []
    assert answers.q.empty(), "the late result of the blocked tool is dropped"


# -- encoding failures and the size bound ----------------------------------------------------


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class _BrokenDict(dict[str, Any]):
    def items(self) -> Any:  # the JSON encoder calls items() on dict subclasses
        raise RuntimeError("items() exploded")


class _BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


def _self_referencing() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_nested(100_000), "RecursionError"),
        (_self_referencing(), "not JSON-serialisable"),
        (_BrokenDict(a=1), "RuntimeError: items() exploded"),
        ({(1, 2): "tuple key"}, "not JSON-serialisable"),
        ("lone \udc80 surrogate", "not valid Unicode"),
    ],
    ids=["deep", "cycle", "broken-items", "tuple-key", "surrogate"],
)
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_any_encoding_failure_is_an_error_result(
    value: Any, reason: str, timeout: float | None
) -> None:
    ct = ClientTools(timeout=timeout)
    ct.register("weird", lambda p: value)
    try:
        future, message, results = run(ct, "weird")
        assert message["is_error"] is True
        assert reason in message["result"]
        assert "'weird'" in message["result"]
        assert future.result(0) is value
        assert ct._pending == 0
    finally:
        ct.close()
        join_pool_threads()
    assert results.count == 1


def test_an_exception_whose_str_fails_is_reported_by_its_type(tools: ClientTools) -> None:
    def handler(params: dict[str, Any]) -> None:
        raise _BrokenStr

    tools.register("fails", handler)
    _, message, _ = run(tools, "fails")
    assert message["is_error"] is True
    assert message["result"] == "_BrokenStr"


def test_a_result_callback_that_raises_is_logged_and_frees_the_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ct = ClientTools(max_pending=1)
    ct.register("t", lambda p: "ok")

    def bad_callback(message: dict[str, Any]) -> None:
        raise ValueError("callback bug")

    try:
        with caplog.at_level("ERROR", logger="elevenconv._tools"):
            future = ct.execute_tool_async("t", {}, bad_callback)
            assert future.result(WAIT) == "ok"
            assert settled(future).wait(WAIT)
        assert any("result callback" in r.message for r in caplog.records)
        _, message, _ = run(ct, "t")  # max_pending=1: the slot was freed
        assert message["result"] == "ok"
    finally:
        ct.close()
        join_pool_threads()


def test_default_result_bound_is_256_kib() -> None:
    from elevenconv._tools import DEFAULT_MAX_RESULT_BYTES

    assert DEFAULT_MAX_RESULT_BYTES == 256 * 1024
    assert ClientTools().max_result_bytes == DEFAULT_MAX_RESULT_BYTES


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("x" * 100, True),
        ("x" * 101, False),
        ("€" * 33, True),  # 99 bytes
        ("€" * 34, False),  # 102 bytes in 34 characters
        ({"k": "v" * 80}, True),  # {"k": "..."} is 89 bytes
        ({"k": "v" * 100}, False),
        (b"y" * 101, False),
    ],
)
def test_results_over_max_result_bytes_become_an_error_naming_the_limit(
    value: Any, ok: bool
) -> None:
    ct = ClientTools(max_result_bytes=100)
    ct.register("big", lambda p: value)
    try:
        _, message, _ = run(ct, "big")
    finally:
        ct.close()
        join_pool_threads()
    assert message["is_error"] is not ok
    if ok:
        assert len(message["result"].encode()) <= 100
    else:
        assert "max_result_bytes limit of 100 bytes" in message["result"]
        assert "'big'" in message["result"]
        assert len(message["result"].encode()) < 300


def test_a_huge_result_is_refused_by_default(tools: ClientTools) -> None:
    tools.register("huge", lambda p: "z" * (1 << 20))
    _, message, _ = run(tools, "huge")
    assert message["is_error"] is True
    assert "at least 1048576 bytes" in message["result"]
    assert "262144" in message["result"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_result_bytes": 0},
        {"max_result_bytes": True},
        {"max_pending": 0},
        {"timeout": float("nan")},
    ],
)
def test_invalid_bounds_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ClientTools(**kwargs)
