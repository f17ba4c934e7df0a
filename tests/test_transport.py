"""The websocket-client transport against a real loopback WebSocket server."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import queue
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection

from elevenconv._transport import (
    DEFAULT_MAX_FRAME_SIZE,
    WebSocketClientSocket,
    WebSocketLike,
    closed_exception,
    create_websocket,
    redact_url,
)
from elevenconv.errors import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionFailedError,
    ElevenConvError,
)
from tests.conftest import scaled
from tests.fixtures_loopback import AgentPeer, LoopbackServer

pytestmark = pytest.mark.timeout(30)

WAIT = scaled(5)
MiB = 1024 * 1024
SECRET = "s3cr3tSIGNATUREvalue"

Make = Callable[..., LoopbackServer]


def free_port() -> int:
    """A port that was free a moment ago: nothing listens on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def connected(url: str, **kwargs: Any) -> Iterator[WebSocketClientSocket]:
    """A client socket that is always torn down (abort) at the end."""
    ws = create_websocket(url, {}, connect_timeout=WAIT, **kwargs)
    try:
        yield ws
    finally:
        ws.abort()


def library_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything elevenconv logged (the test server's own logs may show the URL)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("elevenconv"))


def recv_in_thread(ws: WebSocketClientSocket) -> tuple[threading.Event, list[Any]]:
    """Call ``ws.recv()`` on a helper thread; the Event is set when it returns or raises."""
    done = threading.Event()
    outcome: list[Any] = []

    def reader() -> None:
        try:
            outcome.append(ws.recv())
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=reader, name="test-reader", daemon=True).start()
    return done, outcome


# -- redact_url ------------------------------------------------------------------------------


def test_redact_url_hides_secrets_and_keeps_the_rest() -> None:
    url = (
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_7"
        f"&conversation_signature={SECRET}&token=tok123&api_key=key456&source=elevenconv"
    )
    redacted = redact_url(url)
    for secret in (SECRET, "tok123", "key456"):
        assert secret not in redacted
    assert redacted == (
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_7"
        "&conversation_signature=***&token=***&api_key=***&source=elevenconv"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://h/p?conversation_signature=abc", "wss://h/p?conversation_signature=***"),
        ("wss://h/p?CONVERSATION_SIGNATURE=abc&x=1", "wss://h/p?CONVERSATION_SIGNATURE=***&x=1"),
        ("wss://h/p?token=abc#frag", "wss://h/p?token=***#frag"),
        ("wss://h/p?xi-api-key=abc", "wss://h/p?xi-api-key=***"),
        ("wss://h/p?signature=abc&agent_id=a", "wss://h/p?signature=***&agent_id=a"),
        ("wss://h/p?token=", "wss://h/p?token=***"),
        ("wss://h/p?agent_id=a&environment=prod", "wss://h/p?agent_id=a&environment=prod"),
        ("no url at all", "no url at all"),
        (
            "error at wss://h/p?conversation_signature=abc refused",
            "error at wss://h/p?conversation_signature=*** refused",
        ),
    ],
)
def test_redact_url_cases(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_is_idempotent() -> None:
    once = redact_url(f"wss://h/p?conversation_signature={SECRET}")
    assert redact_url(once) == once


# -- closed_exception ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (1000, ConnectionClosedOK),
        (1001, ConnectionClosedOK),
        (1002, ConnectionClosedError),
        (1009, ConnectionClosedError),
        (3000, ConnectionClosedError),
        (None, ConnectionClosedError),
    ],
)
def test_closed_exception_classes(code: int | None, cls: type[ConnectionClosed]) -> None:
    exc = closed_exception(code, "why")
    assert type(exc) is cls
    assert exc.code == code
    assert exc.reason == "why"
    assert isinstance(exc, ElevenConvError)


# -- messages and close codes ----------------------------------------------------------------


def test_text_binary_and_close_with_a_code(loopback_server: Make) -> None:
    def script(peer: AgentPeer) -> None:
        peer.send("héllo")
        peer.send(b"\x00\x01\xff")
        peer.send("")
        peer.close(3000, "bye")

    server = loopback_server(script)
    with connected(server.url()) as ws:
        assert isinstance(ws, WebSocketLike)
        first = ws.recv()
        assert first == "héllo"
        assert type(first) is str
        second = ws.recv()
        assert second == b"\x00\x01\xff"
        assert type(second) is bytes
        assert ws.recv() == ""
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv()
    assert info.value.code == 3000
    assert info.value.reason == "bye"
    assert server.close_codes.get(timeout=WAIT) is not None


def test_normal_close_is_connection_closed_ok(loopback_server: Make) -> None:
    server = loopback_server(lambda peer: peer.close(1000, "done"))
    with connected(server.url()) as ws, pytest.raises(ConnectionClosedOK) as info:
        ws.recv()
    assert info.value.code == 1000
    assert info.value.reason == "done"


def test_going_away_is_connection_closed_ok(loopback_server: Make) -> None:
    server = loopback_server(lambda peer: peer.close(1001))
    with connected(server.url()) as ws, pytest.raises(ConnectionClosedOK) as info:
        ws.recv()
    assert info.value.code == 1001


def test_dropped_connection_is_connection_closed_error_without_code(
    loopback_server: Make,
) -> None:
    server = loopback_server(lambda peer: peer.drop())
    with connected(server.url()) as ws, pytest.raises(ConnectionClosedError) as info:
        ws.recv()
    assert info.value.code is None


def test_headers_are_sent_in_the_handshake(loopback_server: Make) -> None:
    seen: queue.Queue[Request] = queue.Queue()

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        seen.put(request)
        return None

    server = loopback_server(lambda peer: peer.wait_closed(), process_request=process_request)
    ws = create_websocket(server.url(), {"X-Custom": "value1"}, connect_timeout=WAIT)
    try:
        request = seen.get(timeout=WAIT)
        assert request.headers["X-Custom"] == "value1"
        assert request.path == "/v1/convai/conversation?agent_id=agent"
    finally:
        ws.close()
        ws.abort()


def test_send_reaches_the_server(loopback_server: Make) -> None:
    got: queue.Queue[Any] = queue.Queue()

    def script(peer: AgentPeer) -> None:
        got.put(peer.ws.recv(timeout=WAIT))
        peer.close()

    server = loopback_server(script)
    with connected(server.url()) as ws:
        ws.send('{"type": "ping"}')
        assert got.get(timeout=WAIT) == '{"type": "ping"}'
        with pytest.raises(ConnectionClosedOK):
            ws.recv()


def test_close_sends_code_1000_that_the_server_sees(loopback_server: Make) -> None:
    server = loopback_server(lambda peer: peer.wait_closed())
    with connected(server.url()) as ws:
        ws.close()
        # The server answers the close; the client reads the echo.
        with pytest.raises(ConnectionClosedOK) as info:
            ws.recv()
        assert info.value.code == 1000
    assert server.close_codes.get(timeout=WAIT) == 1000


def test_close_twice_does_not_raise(loopback_server: Make) -> None:
    server = loopback_server(lambda peer: peer.wait_closed())
    with connected(server.url()) as ws:
        ws.close()
        ws.close()
    assert server.close_codes.get(timeout=WAIT) == 1000


def test_connect_timeout_does_not_become_a_read_timeout(loopback_server: Make) -> None:
    go = threading.Event()

    def script(peer: AgentPeer) -> None:
        assert go.wait(WAIT)
        peer.send("late")
        peer.wait_closed()

    server = loopback_server(script)
    ws = create_websocket(server.url(), {}, connect_timeout=0.05)
    try:
        done, outcome = recv_in_thread(ws)
        # Well past the 0.05 s connect timeout, recv() is still waiting, not timed out.
        assert not done.wait(0.3), f"recv() returned early: {outcome}"
        go.set()
        assert done.wait(WAIT)
        assert outcome == ["late"]
    finally:
        go.set()
        ws.close()
        ws.abort()


# -- frame size limit ------------------------------------------------------------------------


def test_default_frame_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


def test_oversized_frame_from_the_server_closes_with_1009(loopback_server: Make) -> None:
    def script(peer: AgentPeer) -> None:
        # The client stops reading after the frame header, so this send blocks until the
        # client aborts the connection; any send error is expected here.
        with contextlib.suppress(Exception):
            peer.send(b"\x00" * (17 * MiB))

    server = loopback_server(script)
    ws = create_websocket(server.url(), {}, connect_timeout=WAIT)
    try:
        done, outcome = recv_in_thread(ws)
        assert done.wait(WAIT), "recv() hung on an oversized frame"
        assert isinstance(outcome[0], ConnectionClosedError), outcome
        assert outcome[0].code == 1009
    finally:
        ws.abort()


def test_fifteen_mib_frame_is_received(loopback_server: Make) -> None:
    payload = bytes(range(256)) * (15 * MiB // 256)

    def script(peer: AgentPeer) -> None:
        peer.send(payload)
        peer.wait_closed()

    server = loopback_server(script)
    with connected(server.url()) as ws:
        data = ws.recv()
        assert type(data) is bytes
        assert len(data) == 15 * MiB
        assert data == payload
        ws.close()


def test_smaller_max_frame_size_is_honoured(loopback_server: Make) -> None:
    def script(peer: AgentPeer) -> None:
        peer.send(b"x" * 100)
        peer.send(b"y" * 101)
        with contextlib.suppress(Exception):
            peer.wait_closed()

    server = loopback_server(script)
    with connected(server.url(), max_frame_size=100) as ws:
        assert ws.recv() == b"x" * 100
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1009
    assert server.close_codes.get(timeout=WAIT) == 1009


class RawServer:
    """A hand-written WebSocket server that sends one frame *header* announcing a huge
    payload and then nothing: a client that tried to read the payload would hang."""

    def __init__(self, length: int, frame: bytes | None = None) -> None:
        self.length = length
        self.frame = frame
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.client_close: queue.Queue[bytes] = queue.Queue()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="test-raw-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(WAIT)
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(WAIT)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                accept = base64.b64encode(
                    hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                )
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                # FIN + binary, 64-bit length, and only a few payload bytes.
                if self.frame is not None:
                    conn.sendall(self.frame)
                else:
                    conn.sendall(b"\x82\x7f" + struct.pack("!Q", self.length) + b"abc")
                # Read the client's (masked) close frame.
                data = b""
                while len(data) < 6:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if len(data) >= 6:
                    n = data[1] & 0x7F
                    while len(data) < 6 + n:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    mask = data[2:6]
                    self.client_close.put(
                        bytes(b ^ mask[i % 4] for i, b in enumerate(data[6 : 6 + n]))
                    )
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.listener.close()


def test_oversized_frame_is_refused_from_its_header_without_reading_the_payload() -> None:
    server = RawServer(17 * MiB)
    ws = create_websocket(f"ws://127.0.0.1:{server.port}/x", {}, connect_timeout=WAIT)
    try:
        done, outcome = recv_in_thread(ws)
        assert done.wait(WAIT), "recv() waited for a 17 MiB payload instead of refusing it"
        assert isinstance(outcome[0], ConnectionClosedError), outcome
        assert outcome[0].code == 1009
        close_payload = server.client_close.get(timeout=WAIT)
        assert struct.unpack("!H", close_payload[:2])[0] == 1009
    finally:
        ws.abort()
        server.thread.join(WAIT)
    assert not server.errors


def test_invalid_utf8_text_frame_closes_with_1007() -> None:
    server = RawServer(0, frame=b"\x81\x02\xff\xfe")  # FIN text, 2 bytes, not UTF-8
    ws = create_websocket(f"ws://127.0.0.1:{server.port}/x", {}, connect_timeout=WAIT)
    try:
        done, outcome = recv_in_thread(ws)
        assert done.wait(WAIT)
        assert isinstance(outcome[0], ConnectionClosedError), outcome
        assert outcome[0].code == 1007
        close_payload = server.client_close.get(timeout=WAIT)
        assert struct.unpack("!H", close_payload[:2])[0] == 1007
    finally:
        ws.abort()
        server.thread.join(WAIT)
    assert not server.errors


def test_absurd_frame_length_is_refused_too() -> None:
    server = RawServer(2**63 - 1)
    ws = create_websocket(f"ws://127.0.0.1:{server.port}/x", {}, connect_timeout=WAIT)
    try:
        done, outcome = recv_in_thread(ws)
        assert done.wait(WAIT)
        assert isinstance(outcome[0], ConnectionClosedError), outcome
        assert outcome[0].code == 1009
    finally:
        ws.abort()
        server.thread.join(WAIT)


# -- handshake failures ----------------------------------------------------------------------


def refuse(status: int) -> Callable[[ServerConnection, Request], Response]:
    def process_request(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(status, "no")

    return process_request


def never_called(peer: AgentPeer) -> None:
    raise AssertionError("the handshake was refused; no connection handler should run")


def signed(server: LoopbackServer) -> str:
    return server.url() + f"&conversation_signature={SECRET}&token=tok{SECRET}"


@pytest.mark.parametrize("status", [401, 403])
def test_handshake_refused_with_auth_status_is_an_authentication_error(
    loopback_server: Make, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server = loopback_server(never_called, process_request=refuse(status))
    with (
        caplog.at_level(logging.DEBUG, logger="elevenconv"),
        pytest.raises(AuthenticationError) as info,
    ):
        create_websocket(signed(server), {}, connect_timeout=WAIT)
    exc = info.value
    assert exc.status_code == status
    assert f"HTTP {status}" in str(exc)
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    assert "conversation_signature=***" in str(exc)
    assert exc.__cause__ is None
    assert SECRET not in library_log(caplog)


@pytest.mark.parametrize("status", [500, 404, 503])
def test_handshake_refused_otherwise_is_a_connection_failed_error(
    loopback_server: Make, status: int
) -> None:
    server = loopback_server(never_called, process_request=refuse(status))
    with pytest.raises(ConnectionFailedError) as info:
        create_websocket(signed(server), {}, connect_timeout=WAIT)
    assert info.value.status_code == status
    assert not isinstance(info.value, AuthenticationError)
    assert f"HTTP {status}" in str(info.value)
    assert SECRET not in str(info.value)


def test_nothing_listening_is_a_connection_failed_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/convai/conversation?conversation_signature={SECRET}"
    with (
        caplog.at_level(logging.DEBUG, logger="elevenconv"),
        pytest.raises(ConnectionFailedError) as info,
    ):
        create_websocket(url, {}, connect_timeout=WAIT)
    assert "could not connect" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert info.value.__cause__ is None
    assert SECRET not in library_log(caplog)


def test_not_a_websocket_server_is_a_connection_failed_error() -> None:
    # A TCP server that answers the upgrade request with garbage and closes.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        listener.settimeout(WAIT)
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(WAIT)
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
        listener.close()

    thread = threading.Thread(target=serve, name="test-garbage-server", daemon=True)
    thread.start()
    try:
        with pytest.raises(ConnectionFailedError) as info:
            create_websocket(
                f"ws://127.0.0.1:{port}/?conversation_signature={SECRET}", {}, connect_timeout=WAIT
            )
        assert SECRET not in str(info.value)
    finally:
        thread.join(WAIT)


# -- abort -----------------------------------------------------------------------------------


def test_abort_from_another_thread_wakes_a_blocked_recv(loopback_server: Make) -> None:
    server = loopback_server(lambda peer: peer.wait_closed())
    ws = create_websocket(server.url(), {}, connect_timeout=WAIT)
    try:
        done, outcome = recv_in_thread(ws)
        assert not done.wait(0.05), "recv() should be blocked: the server sends nothing"
        aborter = threading.Thread(target=ws.abort, name="test-aborter")
        aborter.start()
        aborter.join(WAIT)
        assert done.wait(scaled(2)), "abort() did not wake recv()"
        assert isinstance(outcome[0], ConnectionClosed), outcome
        assert outcome[0].code is None
    finally:
        ws.abort()
    # No close frame was sent: the server sees an abnormal closure.
    assert server.close_codes.get(timeout=WAIT) == 1006


def test_abort_is_idempotent_and_safe_after_close(loopback_server: Make) -> None:
    server = loopback_server(lambda peer: peer.wait_closed())
    ws = create_websocket(server.url(), {}, connect_timeout=WAIT)
    ws.close()
    ws.abort()
    ws.abort()
    with pytest.raises(ConnectionClosed):
        ws.recv()
    ws.close()  # no-op on a dead socket, no exception
    server.close_codes.get(timeout=WAIT)


# -- TLS -------------------------------------------------------------------------------------


def test_disabling_certificate_checks_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    url = f"wss://127.0.0.1:{free_port()}/v1/convai/conversation?conversation_signature={SECRET}"
    with (
        caplog.at_level(logging.WARNING, logger="elevenconv"),
        pytest.raises(ConnectionFailedError),
    ):
        create_websocket(url, {}, connect_timeout=WAIT, sslopt={"cert_reqs": ssl.CERT_NONE})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DISABLED" in r.getMessage() for r in warnings), caplog.text
    assert SECRET not in library_log(caplog)


def test_certificate_checks_on_by_default_log_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    url = f"wss://127.0.0.1:{free_port()}/v1/convai/conversation"
    with (
        caplog.at_level(logging.WARNING, logger="elevenconv"),
        pytest.raises(ConnectionFailedError),
    ):
        create_websocket(url, {}, connect_timeout=WAIT)
    assert "DISABLED" not in caplog.text
