"""A minimal real WebSocket server on 127.0.0.1 for the core's integration tests.

Each test scripts the server's side as a function of an :class:`AgentPeer` (run on the
server's connection thread), in the style of paho's ``FakeBroker.expect_packet``::

    def agent(peer):
        peer.handshake()                      # read the initiation, send metadata
        peer.expect("user_message")
        peer.send_agent_response("hi", 1)

    with loopback_server(agent) as server:
        conv = Conversation(ElevenLabsClient(base_url=server.base_url), "a", requires_auth=False)
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from elevenconv.testing._fake import SentLog
from tests.conftest import scaled


class AgentPeer:
    """The server's side of one connection, for test scripts."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.received: list[Any] = []

    def recv(self, timeout: float = 5.0) -> Any:
        data = self.ws.recv(timeout=scaled(timeout))
        message = json.loads(data) if isinstance(data, str) else data
        self.received.append(message)
        return message

    def expect(self, type: str, timeout: float = 5.0) -> dict[str, Any]:
        """Receive until a message of ``type`` arrives (``user_audio_chunk`` for audio)."""
        while True:
            message = self.recv(timeout)
            if isinstance(message, dict) and (
                message.get("type") == type
                or (type == "user_audio_chunk" and "user_audio_chunk" in message)
            ):
                return message

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def handshake(
        self,
        conversation_id: str = "conv_loop",
        output_format: str = "pcm_16000",
        input_format: str = "pcm_16000",
    ) -> dict[str, Any]:
        init = self.recv()
        assert init["type"] == "conversation_initiation_client_data", init
        self.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": conversation_id,
                    "agent_output_audio_format": output_format,
                    "user_input_audio_format": input_format,
                },
            }
        )
        return init

    def send_agent_response(self, text: str, event_id: int) -> None:
        self.send(
            {
                "type": "agent_response",
                "agent_response_event": {"agent_response": text, "event_id": event_id},
            }
        )

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.ws.close(code, reason)

    def drop(self) -> None:
        """Cut the TCP connection without a close frame."""
        import socket

        with contextlib.suppress(OSError):
            self.ws.socket.shutdown(socket.SHUT_RDWR)
        self.ws.socket.close()

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Read until the client closes; everything read is in ``received``."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                self.recv(timeout)


class LoopbackServer:
    """A websockets threaded server running ``script(peer)`` for each connection."""

    def __init__(
        self,
        script: Callable[[AgentPeer], None],
        process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    ) -> None:
        self.script = script
        self.peers: queue.Queue[AgentPeer] = queue.Queue()
        self.errors: list[BaseException] = []
        self.close_codes: queue.Queue[int | None] = queue.Queue()
        self._server = serve(
            self._handler, "127.0.0.1", 0, process_request=process_request, max_size=None
        )
        self.port = self._server.socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-loopback-server"
        )

    def _handler(self, ws: ServerConnection) -> None:
        peer = AgentPeer(ws)
        self.peers.put(peer)
        try:
            self.script(peer)
        except ConnectionClosed:
            pass
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                ws.close()
            self.close_codes.put(ws.close_code)

    def url(self, agent_id: str = "agent") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/convai/conversation?agent_id={agent_id}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(scaled(10))


@pytest.fixture
def loopback_server() -> Iterator[Callable[..., LoopbackServer]]:
    """``loopback_server(script, process_request=None)`` -> a started LoopbackServer."""
    servers: list[LoopbackServer] = []

    def make(script: Callable[[AgentPeer], None], **kwargs: Any) -> LoopbackServer:
        server = LoopbackServer(script, **kwargs).__enter__()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.__exit__(None, None, None)
    for server in servers:
        if server.errors:
            raise server.errors[0]


class LoopbackControl(SentLog):
    """The test-side API of :class:`elevenconv.testing.FakeWebSocket`, on a real server.

    Lets one test body run against both the in-memory fake and a real WebSocket
    connection on 127.0.0.1: ``push``, ``push_raw``, ``push_metadata``,
    ``server_close``, ``drop``, ``sent``, ``wait_for_sent``, ``wait_closed``,
    ``client_close_code``, ``on_send``.
    """

    def __init__(
        self,
        *,
        auto_metadata: bool = True,
        conversation_id: str = "conv_loop",
        agent_output_audio_format: str = "pcm_16000",
        user_input_audio_format: str = "pcm_16000",
        on_send: Callable[[LoopbackControl, Any], None] | None = None,
        process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    ) -> None:
        self.auto_metadata = auto_metadata
        self.conversation_id = conversation_id
        self.agent_output_audio_format = agent_output_audio_format
        self.user_input_audio_format = user_input_audio_format
        self.on_send = on_send
        self.client_close_code: int | None = None
        super().__init__()
        self._ws: ServerConnection | None = None
        self._closed = False
        self.server = LoopbackServer(self._script, process_request=process_request)

    def _script(self, peer: AgentPeer) -> None:
        with self._cond:
            self._ws = peer.ws
            self._cond.notify_all()
        try:
            for data in peer.ws:
                message: Any = data
                if isinstance(data, str):
                    with contextlib.suppress(ValueError):
                        message = json.loads(data)
                self._on_client_message(message)
        finally:
            with self._cond:
                self._closed = True
                rcvd = peer.ws.protocol.close_rcvd
                self.client_close_code = rcvd.code if rcvd is not None else None
                self._cond.notify_all()

    def _connection(self) -> ServerConnection:
        with self._cond:
            self._cond.wait_for(lambda: self._ws is not None, scaled(5))
            assert self._ws is not None, "the client never connected"
            return self._ws

    def push(self, message: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            self._connection().send(json.dumps(message))

    def push_raw(self, data: str | bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            self._connection().send(data)

    def server_close(self, code: int = 1000, reason: str = "") -> None:
        ws = self._connection()
        # From another thread: close() waits for the client's answer, which is the point.
        threading.Thread(target=ws.close, args=(code, reason), name="test-server-close").start()

    def drop(self) -> None:
        import socket

        ws = self._connection()
        with contextlib.suppress(OSError):
            ws.socket.shutdown(socket.SHUT_RDWR)

    @property
    def closed(self) -> bool:
        return self._closed

    def _is_closed(self) -> bool:
        return self._closed


class Harness:
    """One test body, two transports: ``kind`` is ``"fake"`` or ``"loopback"``."""

    def __init__(self, kind: str, **control_kwargs: Any) -> None:
        from elevenconv.testing import FakeWebSocket

        self.kind = kind
        self.control: Any
        if kind == "fake":
            control_kwargs.pop("process_request", None)
            self.control = FakeWebSocket(**control_kwargs)
        else:
            self.control = LoopbackControl(**control_kwargs)
            self.control.server.__enter__()
        self.conversations: list[Any] = []

    def conversation(self, **kwargs: Any) -> Any:
        from elevenconv import Conversation, ElevenLabsClient

        if self.kind == "fake":
            kwargs.setdefault("websocket_factory", self.control)
        else:
            kwargs.setdefault("client", ElevenLabsClient(base_url=self.control.server.base_url))
        kwargs.setdefault("requires_auth", False)
        kwargs.setdefault("agent_id", "agent")
        conv = Conversation(**kwargs)
        self.conversations.append(conv)
        return conv

    def close(self) -> None:
        for conv in self.conversations:
            conv.end_session()
        if self.kind == "loopback":
            self.control.server.__exit__(None, None, None)


@pytest.fixture(params=["fake", "loopback"])
def make_harness(request: pytest.FixtureRequest) -> Iterator[Callable[..., Harness]]:
    """``make_harness(**control_kwargs)``: a Harness on the fake, then on a real server."""
    harnesses: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        harness = Harness(request.param, **kwargs)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.close()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    """A Harness with default settings (auto metadata, pcm_16000)."""
    return make_harness()
