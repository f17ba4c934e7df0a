"""Session lifecycle in bad conditions (issue 8): keepalive, stalled sends, cancellable
start, Ctrl+C, the end_session() rule, byte-bounded events, pyee's public API.

Real sockets on 127.0.0.1 where the behaviour depends on them (TCP connect, WebSocket
handshake, SIGINT); a FakeWebSocket with a silent ``ping()`` where a peer must stay mute.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import elevenconv._conversation as conversation_module
from elevenconv import Conversation, ElevenLabsClient
from elevenconv.errors import ConnectionClosedError, SessionCancelledError
from elevenconv.testing import FakeWebSocket
from tests.conftest import library_threads, scaled
from tests.helpers import EventLog, agent_response, ping


class MuteFake(FakeWebSocket):
    """A FakeWebSocket that can ping but whose peer never answers (a dead link)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pings = 0
        self.last_activity = time.monotonic()

    def ping(self, payload: bytes = b"") -> None:
        self.pings += 1


def test_keepalive_ends_a_dead_link_with_1011() -> None:
    fake = MuteFake()
    conv = Conversation(
        agent_id="a",
        requires_auth=False,
        websocket_factory=fake,
        ping_interval=0.2,
        ping_timeout=0.3,
    )
    events = EventLog(conv)
    conv.start_session()
    # Nothing arrives after the metadata: a ping goes out, nothing answers it.
    assert conv.wait_for_session_end(timeout=scaled(5)) == "conv_fake"
    assert fake.pings >= 1
    assert events.of("session_ended") == [("conv_fake", 1011, "keepalive ping timeout")]
    errors = [args[0] for args in events.of("error")]
    assert any(isinstance(e, ConnectionClosedError) and e.code == 1011 for e in errors), errors
    assert not conv.is_session_active()


def test_any_frame_answers_the_keepalive(loopback_server: Any) -> None:
    # Over a real websocket-client socket: pings when quiet, the server's pong (any
    # frame) keeps the session. Ten intervals pass without an end.
    def agent(peer: Any) -> None:
        peer.handshake()
        peer.wait_closed(timeout=10)

    server = loopback_server(agent)
    conv = Conversation(
        ElevenLabsClient(base_url=server.base_url),
        "a",
        requires_auth=False,
        ping_interval=0.1,
        ping_timeout=0.5,
    )
    ended = threading.Event()
    conv.on("session_ended", lambda *args: ended.set())
    conv.start_session()
    assert not ended.wait(1.0)  # a negative: nothing may end it within 10 pings
    assert conv.is_session_active()
    conv.end_session()


def test_keepalive_none_disables_pings() -> None:
    fake = MuteFake()
    conv = Conversation(
        agent_id="a", requires_auth=False, websocket_factory=fake, ping_interval=None
    )
    conv.start_session()
    assert not conv._ended.wait(0.3)
    assert fake.pings == 0 and conv.is_session_active()
    conv.end_session()


class StallFake(FakeWebSocket):
    """Its send() of a user message blocks until the socket is aborted, as a real send
    into a full kernel buffer does (shutdown() is what unblocks it)."""

    def __init__(self) -> None:
        super().__init__(on_send=self._stall)
        self.stuck = threading.Event()
        self.aborted = threading.Event()

    def _stall(self, fake: FakeWebSocket, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "user_message":
            self.stuck.set()
            self.aborted.wait(scaled(30))
            raise ConnectionError("socket aborted")

    def abort(self) -> None:
        self.aborted.set()
        super().abort()


def _assert_stall_ends_the_session(conv: Conversation, fake: StallFake, events: EventLog) -> None:
    assert fake.stuck.wait(scaled(5))
    events.wait_for("session_ended", timeout=5)
    ((_, code, reason),) = events.of("session_ended")
    assert code == 1011 and "no progress" in reason
    conv.end_session()


def test_a_send_that_makes_no_progress_ends_the_session() -> None:
    fake = StallFake()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake, send_timeout=0.3)
    events = EventLog(conv)
    conv.start_session()
    conv.send_user_message("into the void")
    _assert_stall_ends_the_session(conv, fake, events)


def _wakeups(thread: threading.Thread) -> int:
    """How often ``thread`` has gone to sleep and been woken (Linux: voluntary context
    switches of the task)."""
    status = f"/proc/self/task/{thread.native_id}/status"
    with open(status, encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in {status}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_an_idle_session_keepalive_sleeps_until_a_send_wakes_it() -> None:
    # No send, no ping due: the keepalive thread must not wake on a send-watch tick
    # (tick = send_timeout / 4 = 0.1 s here, 10 per second on the old code). A send
    # that then stalls still ends the session: the writer wakes the keepalive.
    fake = StallFake()
    conv = Conversation(
        agent_id="a", requires_auth=False, websocket_factory=fake,
        ping_interval=None, send_timeout=0.4,
    )  # fmt: skip
    events = EventLog(conv)
    conv.start_session()
    keepalive = conv._threads["keepalive"]
    before = _wakeups(keepalive)
    assert not conv._ended.wait(1.0)  # a negative: one quiet second
    assert _wakeups(keepalive) - before <= 2, "the keepalive woke up while nothing happened"
    conv.send_user_message("into the void")
    _assert_stall_ends_the_session(conv, fake, events)


# -- cancellable start ----------------------------------------------------------------------


@contextmanager
def tcp_server(mode: str) -> Iterator[tuple[int, threading.Event]]:
    """A TCP listener on 127.0.0.1 that never lets a WebSocket session start.

    ``silent-upgrade``: accepts and reads the HTTP upgrade, never answers.
    ``full-backlog``: never accepts; one connection fills the backlog, so the next
    connect() hangs in SYN_SENT. Yields (port, got-a-request event).
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    got = threading.Event()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        held.append(conn)
        conn.recv(4096)
        got.set()
        stop.wait(scaled(30))

    thread = None
    if mode == "silent-upgrade":
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
    else:  # fill the accept queue (backlog 0 still admits one, plus one SYN in flight)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            held.append(filler)
        got.set()
    try:
        yield port, got
    finally:
        stop.set()
        for s in held:
            s.close()
        server.close()
        if thread is not None:
            thread.join(scaled(5))


@pytest.mark.parametrize("mode", ["silent-upgrade", "full-backlog"])
def test_end_session_cancels_start_while_connecting(mode: str) -> None:
    with tcp_server(mode) as (port, got):
        client = ElevenLabsClient(base_url=f"http://127.0.0.1:{port}")
        conv = Conversation(client, "a", requires_auth=False, start_timeout=2.0)
        outcome: list[BaseException] = []
        took: list[float] = []

        def start() -> None:
            t0 = time.monotonic()
            try:
                conv.start_session()
            except BaseException as exc:
                outcome.append(exc)
            took.append(time.monotonic() - t0)

        starter = threading.Thread(target=start, name="test-starter")
        starter.start()
        assert got.wait(scaled(5))
        assert not starter.is_alive() or conv._state == "starting"
        conv.end_session()
        starter.join(scaled(2))
        assert not starter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SessionCancelledError), outcome
    assert took[0] < scaled(2.0)  # well before start_timeout: cancelled, not timed out
    assert not conv.is_session_active()


class SilentAgent:
    """Reads the initiation message and never answers: start_session() waits."""

    def __init__(self) -> None:
        self.got_initiation = threading.Event()

    def __call__(self, peer: Any) -> None:
        peer.recv()
        self.got_initiation.set()
        peer.wait_closed(timeout=10)


def test_end_session_cancels_start_while_waiting_for_metadata(loopback_server: Any) -> None:
    agent = SilentAgent()
    server = loopback_server(agent)
    conv = Conversation(ElevenLabsClient(base_url=server.base_url), "a", requires_auth=False)
    errors: list[BaseException] = []
    starter = threading.Thread(
        target=lambda: _capture(conv.start_session, errors), name="test-starter"
    )
    starter.start()
    assert agent.got_initiation.wait(scaled(5))
    conv.end_session()
    starter.join(scaled(2))
    assert not starter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SessionCancelledError)
    assert "end_session()" in str(errors[0])
    # A cancelled start never starts a session later.
    assert not conv.is_session_active()
    with pytest.raises(Exception, match="already called"):
        conv.start_session()
    server.close_codes.get(timeout=scaled(5))  # the server saw the connection end


def _capture(fn: Any, into: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        into.append(exc)


def test_ctrl_c_during_start_leaves_nothing_running(loopback_server: Any) -> None:
    agent = SilentAgent()
    server = loopback_server(agent)
    conv = Conversation(ElevenLabsClient(base_url=server.base_url), "a", requires_auth=False)
    main = threading.main_thread().ident
    assert main == threading.get_ident(), "pytest runs tests on the main thread"

    def press_ctrl_c() -> None:
        if agent.got_initiation.wait(scaled(5)):
            signal.pthread_kill(main, signal.SIGINT)  # type: ignore[arg-type]

    presser = threading.Thread(target=press_ctrl_c, name="test-ctrl-c")
    presser.start()
    with pytest.raises(KeyboardInterrupt), conv:
        pytest.fail("the with-body must not run")
    presser.join(scaled(5))
    assert not library_threads()  # torn down before the KeyboardInterrupt got out
    assert not conv.is_session_active()
    server.close_codes.get(timeout=scaled(5))  # the server saw the connection end


# -- end_session() is the fast way out --------------------------------------------------------


def test_end_session_returns_while_a_handler_blocks_and_nothing_starts_after() -> None:
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    gate, blocked = threading.Event(), threading.Event()
    handled: list[str] = []
    ended: list[tuple[Any, ...]] = []

    def slow(text: str) -> None:
        handled.append(text)
        blocked.set()
        gate.wait(scaled(20))

    conv.on("agent_response", slow)
    conv.on("agent_response", lambda text: handled.append(f"second:{text}"))
    conv.on("session_ended", lambda *args: ended.append(args))
    conv.start_session()
    fake.push(agent_response("first", 1))
    assert blocked.wait(scaled(5))
    for i in range(2, 1002):
        fake.push(agent_response(f"queued {i}", i))
    fake.push(agent_response("last", 2000))
    conv.end_session()  # returns now: the handler is still blocked
    assert not gate.is_set() and handled == ["first"]
    assert not conv.is_session_active()
    gate.set()
    assert conv.wait_for_session_end(timeout=scaled(5)) == "conv_fake"
    # The second listener of the running event and the whole backlog never ran.
    assert handled == ["first"]
    assert len(ended) == 1
    assert conv.stats["discarded_events"] >= 1
    assert not library_threads()


def test_end_session_from_a_handler_then_no_more_handlers() -> None:
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    seen: list[str] = []

    def handler(text: str) -> None:
        seen.append(text)
        conv.end_session()

    conv.on("agent_response", handler)
    conv.start_session()
    fake.push(agent_response("one", 1))
    fake.push(agent_response("two", 2))
    assert conv.wait_for_session_end(timeout=scaled(5)) == "conv_fake"
    assert seen == ["one"]


def test_events_backlog_is_bounded_in_bytes() -> None:
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    gate, blocked = threading.Event(), threading.Event()
    conv.on("agent_response", lambda text: (blocked.set(), gate.wait(scaled(20))))
    conv.on("message", lambda message: None)
    conv.start_session()
    big = "x" * 100_000
    try:
        fake.push(agent_response("first", 1))
        assert blocked.wait(scaled(5))
        peak = 0
        for i in range(300):  # 30 MB of text behind a stuck handler
            fake.push(agent_response(big, i + 2))
            peak = max(peak, conv._ev_bytes)
        fake.push(ping(99))
        fake.wait_for_sent("pong", timeout=scaled(5))  # the reader is past the flood
        assert conv.stats["dropped_events"] > 0
        assert conv._ev_bytes <= conversation_module.EVENTS_QUEUE_BYTES
        assert peak <= conversation_module.EVENTS_QUEUE_BYTES
    finally:
        gate.set()
    conv.end_session()


# -- events through pyee's public API ---------------------------------------------------------


def test_once_remove_listener_and_a_raising_handler(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    once: list[str] = []
    removed: list[str] = []
    after: list[str] = []

    @conv.once("agent_response")
    def first_only(text: str) -> None:
        once.append(text)

    def boom(text: str) -> None:
        raise RuntimeError("handler bug")

    def gone(text: str) -> None:
        removed.append(text)

    conv.on("agent_response", boom)
    conv.on("agent_response", gone)
    conv.remove_listener("agent_response", gone)
    conv.on("agent_response", after.append)
    events = EventLog(conv)  # registered last: runs after the others
    conv.start_session()
    with caplog.at_level(logging.ERROR):
        fake.push(agent_response("a", 1))
        fake.push(agent_response("b", 2))
        events.wait_for("agent_response", 2)
    conv.end_session()
    assert once == ["a"] and removed == [] and after == ["a", "b"]
    # Logged once per failure, with one traceback each (no second copy via "error").
    tracebacks = [r for r in caplog.records if r.exc_info and "handler bug" in str(r.exc_info[1])]
    assert len(tracebacks) == 2


def test_no_private_pyee_api_is_overridden() -> None:
    for name in ("_emit_run", "_emit_handle_potential_error", "_add_event_handler"):
        assert name not in Conversation.__dict__, name


def test_message_is_posted_once_per_frame() -> None:
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    messages: list[dict[str, Any]] = []
    conv.on("message", messages.append)
    events = EventLog(conv)
    conv.start_session()
    fake.push(agent_response("hello", 1))  # also makes feedback possible: two events
    fake.push(agent_response("<end>", 2))
    events.wait_for("agent_response", 2)
    conv.end_session()
    messages = [m for m in messages if m.get("type") == "agent_response"]
    assert [json.dumps(m) for m in messages] == [
        json.dumps(agent_response("hello", 1)),
        json.dumps(agent_response("<end>", 2)),
    ]
