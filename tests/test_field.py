"""Field behaviour end to end, on real sockets with the server in another process.

``end_session()`` is the fast way out whatever user code does (a blocked handler, a hung
tool, a 10,000-event backlog); after it returns no new handler starts; a hung tool does not
hold the interpreter at exit. ``start_session()`` can be cancelled at every stage (TCP
connect, WebSocket handshake, waiting for metadata) by ``end_session()`` from another
thread, and by Ctrl+C, leaving no thread and no socket.

Bounds are generous (the targets, 100 ms and 50 ms p99, are measured by
``benchmarks/field.py``); what is asserted is that nothing waits for user code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from elevenconv import ClientTools, Conversation, ElevenLabsClient, errors
from tests.conftest import library_threads, scaled
from tests.fixtures_netns import NetLab, NetServer

pytestmark = pytest.mark.timeout(60)

#: end_session() must not wait for user code; generous against the 100 ms contract.
PROMPT_S = 0.5
LEAK_STATES = {psutil.CONN_ESTABLISHED, psutil.CONN_SYN_SENT, psutil.CONN_CLOSE_WAIT}


def agent_response(text: str) -> dict[str, Any]:
    return {
        "type": "agent_response",
        "agent_response_event": {"agent_response": text, "event_id": 1},
    }


def marker_ping(event_id: int) -> dict[str, Any]:
    """A ping the reader answers itself: once its pong is back, all before it was read."""
    return {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": None}}


def open_sockets_to(port: int) -> list[Any]:
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status in LEAK_STATES
    ]


def _text_conversation(base_url: str, **kwargs: Any) -> Conversation:
    kwargs.setdefault("start_timeout", scaled(10))
    return Conversation(
        ElevenLabsClient(base_url=base_url), "field-agent", requires_auth=False, text_only=True,
        **kwargs,
    )  # fmt: skip


def _timed_end(conv: Conversation) -> float:
    t0 = time.monotonic()
    conv.end_session()
    return time.monotonic() - t0


# ======================================================================================
# end_session() does not wait for user code
# ======================================================================================


def test_end_session_does_not_wait_for_a_blocked_handler(
    local_server: Callable[..., NetServer],
) -> None:
    server = local_server()
    before = set(library_threads())
    entered, release = threading.Event(), threading.Event()
    ended: list[tuple[Any, ...]] = []
    conv = _text_conversation(server.base_url)
    conv.on("agent_response", lambda text: (entered.set(), release.wait(scaled(20))))
    conv.on("session_ended", lambda *args: ended.append(args))
    conv.start_session()
    try:
        server.send(agent_response("block"))
        assert entered.wait(scaled(5))
        took = _timed_end(conv)
        assert took <= scaled(PROMPT_S), f"end_session() waited {took:.2f} s for a handler"
        assert not conv.is_session_active()
        with pytest.raises(TimeoutError):
            conv.wait_for_session_end(0.2)  # the barrier includes the running handler
    finally:
        release.set()
    conv.wait_for_session_end(scaled(5))
    assert len(ended) == 1
    assert [t.name for t in library_threads() if t not in before] == []


def test_end_session_discards_a_backlog_and_starts_no_handler_after_it(
    local_server: Callable[..., NetServer],
) -> None:
    server = local_server()
    entered, release = threading.Event(), threading.Event()
    calls: list[float] = []

    def slow(text: str) -> None:
        calls.append(time.monotonic())
        entered.set()
        release.wait(scaled(20))

    conv = _text_conversation(server.base_url)
    conv.on("agent_response", slow)
    conv.start_session()
    try:
        server.send(agent_response("backlog"), repeat=10_000)
        server.send(marker_ping(424242))
        # The reader answered the ping after the burst: all 10,000 are queued behind `slow`.
        server.wait_for(lambda r: r.get("type") == "pong" and r["event_id"] == 424242, scaled(20))
        assert entered.wait(scaled(5))
        took = _timed_end(conv)
        ended_at = time.monotonic()
        assert took <= scaled(PROMPT_S), f"end_session() took {took:.2f} s with a backlog"
    finally:
        release.set()
    conv.wait_for_session_end(scaled(5))
    late = [c for c in calls if c > ended_at]
    assert late == [], f"{len(late)} handlers started after end_session() returned"
    assert conv.stats["discarded_events"] >= 9_000, conv.stats


def test_end_session_does_not_wait_for_a_hung_tool(
    local_server: Callable[..., NetServer],
) -> None:
    server = local_server()
    entered, release = threading.Event(), threading.Event()

    def hung(params: dict[str, Any]) -> str:
        entered.set()
        release.wait(scaled(20))
        return "too late"

    tools = ClientTools()
    tools.register("net_tool", hung)
    conv = _text_conversation(server.base_url, client_tools=tools)
    conv.start_session()
    try:
        server.send_tool_call("hung-1")
        assert entered.wait(scaled(5))
        took = _timed_end(conv)
        assert took <= scaled(PROMPT_S), f"end_session() waited {took:.2f} s for a tool"
    finally:
        release.set()
    conv.wait_for_session_end(scaled(5))
    tools.close()


def test_a_hung_tool_does_not_hold_the_interpreter_at_exit(
    local_server: Callable[..., NetServer],
) -> None:
    server = local_server()
    script = textwrap.dedent(
        f"""
        import threading
        from elevenconv import ClientTools, Conversation, ElevenLabsClient
        entered = threading.Event()
        def hung(params):
            entered.set()
            threading.Event().wait(120)  # never returns in time
        tools = ClientTools()
        tools.register("net_tool", hung)
        conv = Conversation(ElevenLabsClient(base_url={server.base_url!r}), "a",
                            requires_auth=False, text_only=True, client_tools=tools)
        conv.start_session()
        print("started", flush=True)
        assert entered.wait(10)
        conv.end_session()
        print("ended", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        server.send_tool_call("hung-1")
        assert proc.stdout.readline().strip() == "ended"
        t0 = time.monotonic()
        try:
            proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            pytest.fail("the interpreter did not exit: a running tool holds it")
        took = time.monotonic() - t0
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0
    assert took <= scaled(3.0), f"exit took {took:.1f} s after end_session()"


# ======================================================================================
# start_session() can be cancelled at every stage
# ======================================================================================


class _StartInThread:
    """start_session() on a thread; records what it raised and when."""

    def __init__(self, conv: Conversation) -> None:
        self.conv = conv
        self.error: BaseException | None = None
        self.raised_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="test-start")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conv.start_session()
        except BaseException as exc:
            self.error = exc
        self.raised_at = time.monotonic()


def _assert_cancelled(start: _StartInThread, cancelled_at: float, port: int) -> None:
    start.thread.join(scaled(10))
    assert not start.thread.is_alive(), "start_session() still running after end_session()"
    cancelled = getattr(errors, "SessionCancelledError", None)
    assert cancelled is not None, "elevenconv.errors.SessionCancelledError does not exist"
    assert isinstance(start.error, cancelled), f"start_session() raised {start.error!r}"
    assert isinstance(start.error, errors.ConnectionFailedError)
    assert start.raised_at is not None
    took = start.raised_at - cancelled_at
    assert took <= scaled(PROMPT_S), f"start_session() raised {took:.2f} s after end_session()"
    assert not start.conv.is_session_active()
    assert open_sockets_to(port) == []


class _SignalingClient(ElevenLabsClient):
    """Sets ``resolved`` when the Conversation asks for its URL: the connect is next."""

    resolved = threading.Event()

    def conversation_url(self, agent_id: str, environment: str | None = None) -> str:
        url = super().conversation_url(agent_id, environment)
        self.resolved.set()
        return url


def test_end_session_cancels_a_start_stuck_in_tcp_connect(netlab: Callable[..., NetLab]) -> None:
    lab = netlab()
    server = lab.spawn_server(ping_interval=None)
    lab.blackhole()  # SYNs vanish: connect() hangs until its timeout
    client = _SignalingClient(base_url=server.base_url)
    client.resolved = threading.Event()
    conv = Conversation(client, "a", requires_auth=False, text_only=True, start_timeout=30)
    start = _StartInThread(conv)
    assert client.resolved.wait(scaled(5))
    cancelled_at = time.monotonic()
    conv.end_session()
    _assert_cancelled(start, cancelled_at, server.port)


def test_end_session_cancels_a_start_stuck_in_the_handshake() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        listener.settimeout(scaled(5))
        conv = Conversation(
            ElevenLabsClient(base_url=f"http://127.0.0.1:{port}"),
            "a",
            requires_auth=False,
            text_only=True,
            start_timeout=30,
        )
        start = _StartInThread(conv)
        peer, _ = listener.accept()  # connected; the HTTP upgrade is never answered
        with peer:
            cancelled_at = time.monotonic()
            conv.end_session()
            _assert_cancelled(start, cancelled_at, port)


def test_end_session_cancels_a_start_waiting_for_metadata(
    local_server: Callable[..., NetServer],
) -> None:
    server = local_server(metadata=False)
    before = set(library_threads())
    conv = _text_conversation(server.base_url, start_timeout=30)
    start = _StartInThread(conv)
    server.wait_for(lambda r: r["ev"] == "recv", scaled(5))  # the initiation arrived
    cancelled_at = time.monotonic()
    conv.end_session()
    _assert_cancelled(start, cancelled_at, server.port)
    assert [t.name for t in library_threads() if t not in before] == []


@pytest.mark.parametrize("form", ["start_session", "with"])
def test_ctrl_c_during_start_tears_the_session_down(
    local_server: Callable[..., NetServer], form: str
) -> None:
    server = local_server(metadata=False)
    # Indented for the try block of the script below (dedented by 8).
    call = "conv.start_session()" if form == "start_session" else "with conv:\n" + " " * 16 + "pass"
    script = textwrap.dedent(
        f"""
        import json, threading, psutil
        from elevenconv import Conversation, ElevenLabsClient
        conv = Conversation(ElevenLabsClient(base_url={server.base_url!r}), "a",
                            requires_auth=False, text_only=True, start_timeout=30)
        try:
            {call}
            outcome = "returned"
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        except BaseException as exc:
            outcome = repr(exc)
        threads = [t.name for t in threading.enumerate() if t.name.startswith("elevenconv-")]
        socks = [c.status for c in psutil.Process().net_connections(kind="tcp")
                 if c.raddr and c.raddr.port == {server.port} and c.status in
                 ("ESTABLISHED", "CLOSE_WAIT", "SYN_SENT")]
        print(json.dumps({{"outcome": outcome, "threads": threads, "sockets": socks,
                          "active": conv.is_session_active()}}), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        server.wait_for(lambda r: r["ev"] == "recv", scaled(10))  # waiting for metadata now
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=scaled(10))
    finally:
        proc.kill()
    assert out.strip(), err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "KeyboardInterrupt", (report, err[-2000:])
    assert report["threads"] == [], "threads left after Ctrl+C in start_session()"
    assert report["sockets"] == [], "socket left open after Ctrl+C in start_session()"
    assert report["active"] is False
