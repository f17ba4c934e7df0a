"""Client tools: functions the agent calls on the client, run on an executor of daemon threads.

Threads: ``elevenconv-tool-N`` workers (at most ``max_workers``, started on demand) and one
``elevenconv-tool-watchdog`` that fires timeouts. All are daemon threads, so a tool that
never returns cannot keep the interpreter alive (see :class:`_DaemonThreadExecutor`).
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from elevenconv.errors import ConfigurationError, LocalProtocolError, ToolError, ToolTimeoutError
from elevenconv.protocol import client_tool_result_text

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "ClientTools", "ToolHandler", "ToolScope"]

log = logging.getLogger(__name__)

ToolHandler = Callable[[dict[str, Any]], Any] | Callable[[dict[str, Any]], Awaitable[Any]]
#: ``on_done(result_text, is_error, exception_or_None)``, called at most once per call.
_DoneCallback = Callable[[str, bool, BaseException | None], None]

#: Default bound on one result's ``result`` text, in UTF-8 bytes. The AsyncAPI contract
#: sets no limit; 256 KiB is far above what an agent's LLM can use in a turn and keeps one
#: hostile or buggy tool from putting megabytes on the socket.
DEFAULT_MAX_RESULT_BYTES = 256 * 1024


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


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or its type's name if that is empty or itself fails."""
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not stop the call being answered
        text = ""
    return text or type(exc).__name__


# -- the executor --------------------------------------------------------------------------


@dataclass
class _WorkItem:
    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _DaemonThreadExecutor(Executor):
    """``ThreadPoolExecutor``'s behaviour on *daemon* worker threads.

    Why not ``ThreadPoolExecutor``: its workers are registered with
    ``threading._register_atexit`` and every one of them is joined when the interpreter
    exits (``concurrent.futures.thread._python_exit``), whether or not ``shutdown(wait=False)``
    was called; a tool that hangs therefore hangs the program's exit, and nothing public
    changes that. ``concurrent.futures.Executor`` is a documented base class, so this is a
    small subclass on public APIs only (``Future.set_running_or_notify_cancel`` and friends,
    as the standard executors use them): workers start on demand up to ``max_workers``,
    block on a queue (no polling), and exit on a ``None`` sentinel from :meth:`shutdown`.
    A daemon thread still running at exit is simply abandoned, which is what a hung user
    tool deserves; a library shutdown path still joins workers with a deadline.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        # Released by a worker each time it becomes free: submit() starts a new worker
        # only when none is idle (the same policy as ThreadPoolExecutor).
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shut_down = False
        self._names = itertools.count(1)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; ``RuntimeError`` after :meth:`shutdown` (or when
        the interpreter can no longer start threads)."""
        future: Future[Any] = Future()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._worker, name=f"{self._prefix}-{next(self._names)}", daemon=True
                )
                thread.start()  # before queueing: if it raises, nothing is left behind
                self._threads.append(thread)
            self._work.put(_WorkItem(future, fn, args, kwargs))
        return future

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            if item.future.set_running_or_notify_cancel():
                try:
                    result = item.fn(*item.args, **item.kwargs)
                except BaseException as exc:
                    item.future.set_exception(exc)
                else:
                    item.future.set_result(result)
                    del result
            del item
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let workers exit once the queue is done (``cancel_futures``: cancel what is
        queued). ``wait`` joins them, without a deadline; the library joins with one."""
        cancelled: list[Future[Any]] = []
        with self._lock:
            first = not self._shut_down
            self._shut_down = True
            if cancel_futures:
                sentinels = 0
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        sentinels += 1
                    else:
                        cancelled.append(item.future)
                for _ in range(sentinels):
                    self._work.put(None)
            if first:
                for _ in self._threads:
                    self._work.put(None)
            threads = list(self._threads)
        # Cancel outside the lock: done-callbacks run here, in this thread.
        for future in cancelled:
            future.cancel()
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me:
                    thread.join()

    def threads(self) -> list[threading.Thread]:
        """The worker threads started so far (alive or not)."""
        with self._lock:
            return list(self._threads)


class _Watchdog:
    """One daemon thread that fires tool timeouts at their deadlines (no polling)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self.thread = threading.Thread(
            target=self._run, name="elevenconv-tool-watchdog", daemon=True
        )
        self.thread.start()

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), action))
            self._cond.notify()

    def stop(self) -> None:
        """Drop every pending timeout and let the thread exit (does not join)."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()

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
            except Exception:  # pragma: no cover -- actions never raise (finish() logs)
                log.exception("tool timeout action failed")


@dataclass
class _Pool:
    """One generation of workers (+ watchdog): created on demand, shut down when idle."""

    executor: _DaemonThreadExecutor
    watchdog: _Watchdog | None = None

    def threads(self) -> list[threading.Thread]:
        threads = self.executor.threads()
        if self.watchdog is not None:
            threads.append(self.watchdog.thread)
        return threads


def _join_all(threads: list[threading.Thread], deadline: float | None) -> bool:
    me = threading.current_thread()
    for thread in threads:
        if thread is not me:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads if t is not me)


# -- one call ------------------------------------------------------------------------------


class _Call:
    """One tool call: answered at most once, by the first of completion, timeout or
    cancellation; never answered once its scope is closed."""

    __slots__ = (
        "_answered",
        "_lock",
        "_retired",
        "future",
        "on_done",
        "scope",
        "thread_id",
        "tool_call_id",
        "tool_name",
    )

    def __init__(
        self, tool_name: str, tool_call_id: str, on_done: _DoneCallback, scope: ToolScope | None
    ) -> None:
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id
        self.on_done = on_done
        self.scope = scope
        self.future: Future[Any] | None = None
        self.thread_id: int | None = None  # the worker running it, once it runs
        self._lock = threading.Lock()
        self._answered = False
        self._retired = False

    def finish(self, result: str, is_error: bool, exc: BaseException | None) -> bool:
        """Answer the call unless it was answered or silenced; ``True`` if this did."""
        with self._lock:
            if self._answered:
                return False
            self._answered = True
        try:
            self.on_done(result, is_error, exc)
        except Exception:
            log.exception("the result callback of client tool %r raised", self.tool_name)
        return True

    def silence(self) -> None:
        """Never answer this call (its conversation is over)."""
        with self._lock:
            self._answered = True

    def retire(self) -> bool:
        """Mark the call as no longer queued or running; ``True`` the first time only."""
        with self._lock:
            if self._retired:
                return False
            self._retired = True
            return True


class ToolScope:
    """The tool calls of one conversation on a (possibly shared) :class:`ClientTools`.

    Created by :meth:`ClientTools._open_scope`. :meth:`submit` runs a call on the pool;
    :meth:`close` ends the scope at once, without blocking; :meth:`join` waits, with a
    deadline, for the calls still running. Thread-safe.
    """

    def __init__(self, tools: ClientTools, name: str) -> None:
        self._tools = tools
        self.name = name
        self._cond = threading.Condition()
        self._calls: set[_Call] = set()  # submitted and not retired: queued or running
        self._closed = False
        self._cancelled = 0
        self._pool: _Pool | None = None  # the pool close() shut down, for join()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def cancelled(self) -> int:
        """Calls of this scope that never started: queued at :meth:`close`, or submitted
        after it."""
        with self._cond:
            return self._cancelled

    @property
    def running(self) -> int:
        """Calls of this scope whose handler is running now."""
        with self._cond:
            return sum(1 for c in self._calls if c.thread_id is not None)

    def submit(
        self, tool_name: str, params: dict[str, Any], tool_call_id: str, on_done: _DoneCallback
    ) -> Future[Any]:
        """Run ``tool_name(params)`` on the pool; ``on_done(text, is_error, exc)`` gets the
        answer once, on a worker or the watchdog thread (or, for a call refused at once
        because of ``max_pending``, on the calling thread), never after :meth:`close`.

        Returns a ``Future`` of the handler's raw result. After :meth:`close` the call is
        not run: it is counted in :attr:`cancelled` and the future is cancelled.
        """
        return self._tools._start_call(tool_name, params, tool_call_id, on_done, self)

    def close(self) -> int:
        """End the scope, at once and without blocking (e.g. from ``end_session()``).

        Calls queued but not started never start (counted in :attr:`cancelled`); calls
        running go on to their end on their own threads, but nothing of this scope is
        answered any more (``on_done`` is not called again) and its timeouts are dropped.
        The last scope of a :class:`ClientTools` to close shuts its pool down (workers
        exit once idle). Idempotent; returns the number of calls cancelled by this call.
        """
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            call.silence()
        cancelled = sum(1 for c in calls if c.future is not None and c.future.cancel())
        self._tools._close_scope(self)
        return cancelled

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s (``None``: no limit) for this scope's running calls to
        return, and, if :meth:`close` shut the pool down, for its threads to exit.

        A call running on the calling thread (a tool that ends its own conversation) is
        not waited for. ``True`` if nothing is left; ``False`` at the deadline (the rest
        are daemon threads: they cannot delay interpreter exit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        with self._cond:
            while any(c.thread_id is not None and c.thread_id != me for c in self._calls):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            pool = self._pool
        return True if pool is None else _join_all(pool.threads(), deadline)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ToolScope {self.name!r} {state} running={self.running}>"

    # -- used by ClientTools ---------------------------------------------------------------

    def _add(self, call: _Call) -> bool:
        with self._cond:
            if self._closed:
                self._cancelled += 1
                return False
            self._calls.add(call)
            return True

    def _started(self, call: _Call) -> bool:
        """On the worker, just before the handler: ``False`` if the scope closed meanwhile."""
        with self._cond:
            if self._closed:
                return False
            call.thread_id = threading.get_ident()
            return True

    def _remove(self, call: _Call, *, cancelled: bool) -> None:
        with self._cond:
            self._calls.discard(call)
            if cancelled:
                self._cancelled += 1
            self._cond.notify_all()


# -- the registry --------------------------------------------------------------------------


class ClientTools:
    """A registry of client tools, executed on a pool of daemon worker threads.

    Same interface as the official SDK's ``ClientTools``. A handler takes one argument,
    the dict of parameters the agent sent plus ``tool_call_id`` (a real parameter of that
    name wins), and returns the result: a ``str`` is sent as is, ``None`` as a success
    note, anything else JSON-encoded. ``async def`` handlers run to completion on a
    worker. A handler that raises sends ``is_error: true`` with the exception's text, and
    so does a result that cannot be encoded (any exception while encoding, e.g. a
    self-referencing structure) or whose text is longer than ``max_result_bytes`` UTF-8
    bytes (default 256 KiB): every call is answered exactly once.

    ``max_workers`` bounds the pool (default 8). ``timeout`` (seconds)
    answers a call that runs longer with an error result (the handler keeps running
    to its end; its late result is dropped; a call still queued at its timeout never
    starts). ``max_pending`` bounds the calls queued or running at once, so a server
    cannot make the client pile up unbounded work: calls beyond it are answered with an
    error at once.

    Workers are daemon threads: a tool that never returns does not delay interpreter
    exit. The pool is created on the first call and shut down when the last conversation
    using this object ends (or on :meth:`close`); a ``ClientTools`` can serve several
    conversations, in a row or at once. When a conversation ends, its calls that have
    not started yet never start.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        timeout: float | None = None,
        max_pending: int = 64,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ConfigurationError("max_workers must be at least 1")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError("timeout must be positive (or None for no timeout)")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending must be a positive int, got {max_pending!r}")
        if (
            isinstance(max_result_bytes, bool)
            or not isinstance(max_result_bytes, int)
            or max_result_bytes < 1
        ):
            raise ConfigurationError(
                f"max_result_bytes must be a positive int, got {max_result_bytes!r}"
            )
        self.max_workers = max_workers or 8
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_result_bytes = max_result_bytes
        self._lock = threading.Lock()
        self._tools: dict[str, _Tool] = {}
        self._pool: _Pool | None = None
        self._users = 0
        self._pending = 0
        # Calls queued or running, for close() to cancel the queued ones.
        self._calls: set[_Call] = set()

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

        return self._start_call(tool_name, dict(parameters), tool_call_id, on_done, None)

    #: The official SDK's name for :meth:`execute_tool_async`.
    execute_tool = execute_tool_async

    def _encode_result(self, tool_name: str, result: Any) -> tuple[str, bool, BaseException | None]:
        """The ``(result text, is_error, error)`` sent for a handler's return value.

        Never raises: a value that cannot be encoded (whatever the exception, including
        ``RecursionError``) or whose text exceeds ``max_result_bytes`` UTF-8 bytes gives an
        error text and a :class:`ToolError` that names the reason. Any thread.
        """
        try:
            text = client_tool_result_text(tool_name, result)
        except LocalProtocolError as exc:
            return str(exc), True, exc
        except Exception as exc:
            error = ToolError(
                f"client tool {tool_name!r} returned a {type(result).__name__} that could not "
                f"be encoded ({type(exc).__name__}: {_describe(exc)}); return a str, None or "
                "JSON data",
                tool_name,
            )
            error.__cause__ = exc
            return str(error), True, error
        limit = self.max_result_bytes
        # Each character is 1 to 4 UTF-8 bytes: encode only when that decides it (the
        # encoding also finds lone surrogates, which could not be sent at all).
        size = len(text)
        try:
            if size <= limit:
                size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            error = ToolError(
                f"client tool {tool_name!r} returned text that is not valid Unicode "
                f"({exc.reason} at index {exc.start}); return well-formed text",
                tool_name,
            )
            error.__cause__ = exc
            return str(error), True, error
        if size > limit:
            error = ToolError(
                f"client tool {tool_name!r} returned a result of "
                f"{'at least ' if len(text) > limit else ''}{size} bytes, over the "
                f"max_result_bytes limit of {limit} bytes; return less data (or raise "
                "ClientTools(max_result_bytes=...))",
                tool_name,
            )
            return str(error), True, error
        return text, False, None

    def _start_call(
        self,
        tool_name: str,
        params: dict[str, Any],
        tool_call_id: str,
        on_done: _DoneCallback,
        scope: ToolScope | None,
    ) -> Future[Any]:
        call = _Call(tool_name, tool_call_id, on_done, scope)

        def run() -> Any:
            # Runs on a worker: the answer is given from here, so callbacks always run on
            # a worker thread (add_done_callback would run them on the submitting thread
            # if the tool finished first).
            if scope is not None and not scope._started(call):
                self._retire(call, cancelled=True)  # closed between submit and now
                return None
            try:
                result = self.handle(tool_name, params)
            except BaseException as exc:
                self._answer(call, _describe(exc), True, exc)
                raise
            self._answer(call, *self._encode_result(tool_name, result))
            return result

        future: Future[Any] | None = None
        start_error: RuntimeError | None = None
        with self._lock:
            # Checked and submitted under this lock, so a call can neither create a pool
            # after its scope's close() shut the last one down (its threads would leak)
            # nor be submitted to a pool that a close() is shutting down.
            if scope is not None and not scope._add(call):
                refused: Future[Any] = Future()
                refused.cancel()
                log.debug("client tool %r not run: its conversation has ended", tool_name)
                return refused
            overloaded = self._pending >= self.max_pending
            if not overloaded:
                if self._pool is None:
                    self._pool = _Pool(_DaemonThreadExecutor(self.max_workers, "elevenconv-tool"))
                pool = self._pool
                try:
                    if self.timeout is not None and pool.watchdog is None:
                        pool.watchdog = _Watchdog()
                    future = call.future = pool.executor.submit(run)
                except RuntimeError as exc:  # at interpreter exit: no new threads
                    start_error = exc
                else:
                    self._pending += 1
                    self._calls.add(call)
        if overloaded or future is None:
            refusal = ToolError(
                f"too many client tool calls at once (max_pending={self.max_pending}); "
                f"{tool_name!r} was not run"
                if overloaded
                else f"client tool {tool_name!r} could not be started: {start_error}",
                tool_name,
                tool_call_id,
            )
            return self._refuse(call, refusal)
        # Only for calls cancelled before they ran (close(), a timeout, ClientTools.close()).
        future.add_done_callback(lambda f: self._on_cancelled(call) if f.cancelled() else None)
        if pool.watchdog is not None and self.timeout is not None:
            pool.watchdog.schedule(self.timeout, lambda: self._expire(call))
        return future

    def _refuse(self, call: _Call, exc: ToolError) -> Future[Any]:
        if call.scope is not None:
            call.scope._remove(call, cancelled=False)
        failed: Future[Any] = Future()
        failed.set_exception(exc)
        call.finish(str(exc), True, exc)
        return failed

    def _answer(self, call: _Call, text: str, is_error: bool, exc: BaseException | None) -> None:
        # The max_pending slot is freed before the answer goes out, so a caller that got
        # its answer can submit again at once; the scope forgets the call after it, so
        # ToolScope.join() covers the answer too.
        if call.retire():
            with self._lock:
                self._pending -= 1
                self._calls.discard(call)
        call.finish(text, is_error, exc)
        if call.scope is not None:
            call.scope._remove(call, cancelled=False)

    def _retire(self, call: _Call, *, cancelled: bool) -> None:
        if not call.retire():
            return
        with self._lock:
            self._pending -= 1
            self._calls.discard(call)
        if call.scope is not None:
            call.scope._remove(call, cancelled=cancelled)

    def _on_cancelled(self, call: _Call) -> None:
        self._retire(call, cancelled=True)
        exc = ToolError(
            f"client tool {call.tool_name!r} was cancelled before it started: "
            "its conversation ended or ClientTools.close() was called",
            call.tool_name,
            call.tool_call_id,
        )
        call.finish(str(exc), True, exc)  # a no-op for a closed scope or a timed-out call

    def _expire(self, call: _Call) -> None:
        timeout = self.timeout
        exc = ToolTimeoutError(
            f"client tool {call.tool_name!r} did not finish within {timeout:g} s",
            call.tool_name,
            call.tool_call_id,
        )
        if call.finish(str(exc), True, exc) and call.future is not None:
            call.future.cancel()  # still queued: it never starts

    # -- lifetime -------------------------------------------------------------------------

    def _open_scope(self, name: str = "") -> ToolScope:
        """A conversation starts using these tools: its calls go through the scope."""
        with self._lock:
            self._users += 1
        return ToolScope(self, name)

    def _close_scope(self, scope: ToolScope) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            pool = self._detach_pool() if self._users == 0 else None
        if pool is not None:
            scope._pool = pool
            self._shutdown_pool(pool)

    def _acquire(self) -> None:
        """Transitional (unscoped) form of :meth:`_open_scope`; remove once unused."""
        with self._lock:
            self._users += 1

    def _submit(
        self, tool_name: str, params: dict[str, Any], tool_call_id: str, on_done: _DoneCallback
    ) -> Future[Any]:
        """Transitional (unscoped) form of :meth:`ToolScope.submit`; remove once unused."""
        return self._start_call(tool_name, params, tool_call_id, on_done, None)

    def _release(self) -> list[threading.Thread]:
        """Transitional form of :meth:`ToolScope.close`: the last user shuts the pool down
        and gets its threads to join (with a deadline); remove once unused."""
        with self._lock:
            self._users = max(0, self._users - 1)
            pool = self._detach_pool() if self._users == 0 else None
        if pool is None:
            return []
        self._shutdown_pool(pool)
        return pool.threads()

    def _detach_pool(self) -> _Pool | None:
        # Under self._lock.
        pool, self._pool = self._pool, None
        return pool

    @staticmethod
    def _shutdown_pool(pool: _Pool, cancel_futures: bool = False) -> None:
        # Never blocks: workers exit once what is queued is done (or cancelled).
        pool.executor.shutdown(wait=False, cancel_futures=cancel_futures)
        if pool.watchdog is not None:
            pool.watchdog.stop()

    def close(self, timeout: float | None = 5.0) -> None:
        """Shut the pool down: queued calls are cancelled (and answered with an error),
        and idle workers exit. Waits up to ``timeout`` s for running tools to return.
        A later call starts a new pool."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            pool = self._detach_pool()
            calls = list(self._calls)
        for call in calls:
            if call.future is not None:
                call.future.cancel()  # answered by _on_cancelled
        if pool is not None:
            self._shutdown_pool(pool, cancel_futures=True)
            _join_all(pool.threads(), deadline)

    def __enter__(self) -> ClientTools:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClientTools(tools={self.get_registered_tools()!r})"
