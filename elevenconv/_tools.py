"""Client tools: functions the agent calls on the client, run on a thread pool."""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from elevenconv.errors import ConfigurationError, LocalProtocolError, ToolError, ToolTimeoutError
from elevenconv.protocol import client_tool_result_text

__all__ = ["ClientTools", "ToolHandler"]

log = logging.getLogger("elevenconv")

ToolHandler = Callable[[dict[str, Any]], Any] | Callable[[dict[str, Any]], Awaitable[Any]]
#: ``on_done(result_text, is_error, exception_or_None)``, called once per call.
_DoneCallback = Callable[[str, bool, BaseException | None], None]


@dataclass(frozen=True)
class _Tool:
    handler: Callable[..., Any]
    is_async: bool


def _run_coroutine(awaitable: Awaitable[Any]) -> Any:
    # An ``async def`` tool runs to completion on the worker thread, in an event loop of
    # its own. This is the only asyncio in the library, and only for users' coroutines.
    import asyncio

    async def _await() -> Any:
        return await awaitable

    return asyncio.run(_await())


class _Watchdog:
    """One thread that fires tool timeouts at their deadlines (no polling)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="elevenconv-tool-watchdog", daemon=True
        )
        self._thread.start()

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), action))
            self._cond.notify()

    def stop(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    # Sleep until the next deadline, or until one is added or we stop.
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:  # pragma: no cover -- actions only put on queues
                log.exception("tool timeout action failed")


class _Call:
    """One tool call: its result is reported once, by the first of completion or timeout."""

    __slots__ = ("_done", "_lock", "on_done", "tool_call_id", "tool_name")

    def __init__(self, tool_name: str, tool_call_id: str, on_done: _DoneCallback) -> None:
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id
        self.on_done = on_done
        self._lock = threading.Lock()
        self._done = False

    def finish(self, result: str, is_error: bool, exc: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.on_done(result, is_error, exc)


class ClientTools:
    """A registry of client tools, executed on a ``ThreadPoolExecutor``.

    Same interface as the official SDK's ``ClientTools``. A handler takes one argument,
    the dict of parameters the agent sent plus ``tool_call_id`` (a real parameter of that
    name wins), and returns the result: a ``str`` is sent as is, ``None`` as a success
    note, anything else JSON-encoded. ``async def`` handlers run to completion on a
    worker. A handler that raises sends ``is_error: true`` with the exception's text.

    ``max_workers`` bounds the pool (default 8). ``timeout`` (seconds)
    answers a call that runs longer with an error result (the handler keeps running
    to its end; its late result is dropped). ``max_pending`` bounds the calls queued or
    running at once, so a server cannot make the client pile up unbounded work: calls
    beyond it are answered with an error at once.

    The pool is created on the first call and shut down when the last conversation
    using this object ends (or on :meth:`close`); a ``ClientTools`` can serve several
    conversations, in a row or at once.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        timeout: float | None = None,
        max_pending: int = 64,
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ConfigurationError("max_workers must be at least 1")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("timeout must be positive (or None for no timeout)")
        self.max_workers = max_workers or 8
        self.timeout = timeout
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._tools: dict[str, _Tool] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._watchdog: _Watchdog | None = None
        self._users = 0
        self._pending = 0

    # -- registry -------------------------------------------------------------------------

    def register(self, tool_name: str, handler: ToolHandler, is_async: bool | None = None) -> None:
        """Register ``handler`` under ``tool_name`` (the name configured on the agent).

        ``is_async=None`` detects ``async def`` handlers. Raises ``ValueError``
        (:class:`ConfigurationError`) if the name is taken or the handler not callable.
        """
        if not callable(handler):
            raise ConfigurationError(f"handler for tool {tool_name!r} must be callable")
        if is_async is None:
            is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                getattr(handler, "__call__", None)  # noqa: B004 -- async __call__ objects
            )
        with self._lock:
            if tool_name in self._tools:
                raise ConfigurationError(
                    f"tool {tool_name!r} is already registered; unregister() it first"
                )
            self._tools[tool_name] = _Tool(handler, bool(is_async))

    def unregister(self, tool_name: str) -> bool:
        """Remove a tool; ``True`` if it was registered."""
        with self._lock:
            return self._tools.pop(tool_name, None) is not None

    def clear(self) -> None:
        """Remove every tool."""
        with self._lock:
            self._tools.clear()

    def get_registered_tools(self) -> list[str]:
        """The registered tool names."""
        with self._lock:
            return list(self._tools)

    def is_tool_registered(self, tool_name: str) -> bool:
        """Whether ``tool_name`` is registered."""
        with self._lock:
            return tool_name in self._tools

    # -- execution ------------------------------------------------------------------------

    def handle(self, tool_name: str, parameters: Mapping[str, Any]) -> Any:
        """Run a tool in the calling thread and return its raw result (blocking).

        Raises :class:`ToolError` if it is not registered; the handler's own exceptions
        propagate.
        """
        with self._lock:
            tool = self._tools.get(tool_name)
        if tool is None:
            raise ToolError(f"tool {tool_name!r} is not registered", tool_name)
        params = dict(parameters)
        if tool.is_async:
            return _run_coroutine(tool.handler(params))
        result = tool.handler(params)
        if inspect.isawaitable(result):
            return _run_coroutine(result)
        return result

    def execute_tool_async(
        self,
        tool_name: str,
        parameters: Mapping[str, Any],
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> Future[Any]:
        """Run a tool on the pool; return a ``Future`` of the handler's raw result.

        ``callback``, if given, receives the ``client_tool_result`` message (a dict with
        ``tool_call_id`` taken from ``parameters``), on a worker thread, exactly once.
        """
        tool_call_id = str(parameters.get("tool_call_id", ""))

        def on_done(result: str, is_error: bool, exc: BaseException | None) -> None:
            if callback is not None:
                callback(
                    {
                        "type": "client_tool_result",
                        "tool_call_id": tool_call_id,
                        "result": result,
                        "is_error": is_error,
                    }
                )

        return self._submit(tool_name, dict(parameters), tool_call_id, on_done)

    #: The official SDK's name for :meth:`execute_tool_async`.
    execute_tool = execute_tool_async

    def _submit(
        self, tool_name: str, params: dict[str, Any], tool_call_id: str, on_done: _DoneCallback
    ) -> Future[Any]:
        call = _Call(tool_name, tool_call_id, on_done)
        with self._lock:
            if self._pending >= self.max_pending:
                overloaded = True
            else:
                overloaded = False
                self._pending += 1
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix="elevenconv-tool"
                    )
                executor = self._executor
                if self.timeout is not None and self._watchdog is None:
                    self._watchdog = _Watchdog()
                watchdog = self._watchdog
        if overloaded:
            exc = ToolError(
                f"too many client tool calls at once (max_pending={self.max_pending}); "
                f"{tool_name!r} was not run",
                tool_name,
                tool_call_id,
            )
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            call.finish(str(exc), True, exc)
            return failed
        def run() -> Any:
            # Runs on a worker: the result is reported from here, so callbacks always run
            # on a worker thread (add_done_callback would run them on the submitting
            # thread if the tool finished first).
            try:
                result = self.handle(tool_name, params)
            except BaseException as exc:
                self._report(call, None, exc)
                raise
            self._report(call, result, None)
            return result

        future = executor.submit(run)
        # Only for calls cancelled before they ran (the pool was shut down).
        future.add_done_callback(lambda f: self._report_cancelled(call) if f.cancelled() else None)
        if watchdog is not None and self.timeout is not None:
            timeout = self.timeout

            def expire() -> None:
                if not future.done():
                    exc = ToolTimeoutError(
                        f"client tool {tool_name!r} did not finish within {timeout:g} s",
                        tool_name,
                        tool_call_id,
                    )
                    call.finish(str(exc), True, exc)

            watchdog.schedule(timeout, expire)
        return future

    def _report(self, call: _Call, result: Any, error: BaseException | None) -> None:
        with self._lock:
            self._pending -= 1
        if error is not None:
            call.finish(str(error) or type(error).__name__, True, error)
            return
        try:
            text = client_tool_result_text(call.tool_name, result)
        except LocalProtocolError as exc:
            call.finish(str(exc), True, exc)
            return
        call.finish(text, False, None)

    def _report_cancelled(self, call: _Call) -> None:
        with self._lock:
            self._pending -= 1
        exc = ToolError("tool call cancelled: the conversation ended", call.tool_name)
        call.finish(str(exc), True, exc)

    # -- lifetime -------------------------------------------------------------------------

    def _acquire(self) -> None:
        """A conversation starts using these tools."""
        with self._lock:
            self._users += 1

    def _release(self) -> list[threading.Thread]:
        """A conversation is done; the last one out shuts the pool down.

        Returns the pool's threads, for the caller to join (they exit once their
        running tool returns); joining here could deadlock with a tool that is itself
        ending the conversation.
        """
        with self._lock:
            self._users = max(0, self._users - 1)
            last = self._users == 0
        return self._shutdown() if last else []

    def _shutdown(self) -> list[threading.Thread]:
        with self._lock:
            executor, self._executor = self._executor, None
            watchdog, self._watchdog = self._watchdog, None
        threads: list[threading.Thread] = []
        if executor is not None:
            # ThreadPoolExecutor keeps its workers in ``_threads`` (CPython 3.8+).
            threads = list(getattr(executor, "_threads", ()))
            executor.shutdown(wait=False, cancel_futures=True)
        if watchdog is not None:
            watchdog.stop()
        return threads

    def close(self, timeout: float | None = 5.0) -> None:
        """Shut the pool down: queued calls are cancelled (and answered with an error),
        and idle workers exit. Waits up to ``timeout`` s for running tools to return.
        A later call starts a new pool."""
        me = threading.current_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._shutdown():
            if thread is not me:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ClientTools:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClientTools(tools={self.get_registered_tools()!r})"
