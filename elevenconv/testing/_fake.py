"""An in-memory WebSocket for fast tests: no network, no server."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from elevenconv._transport import closed_exception
from elevenconv.errors import ConnectionClosed

__all__ = ["FakeWebSocket", "SentLog"]

_CLOSED = object()


class SentLog:
    """What the client sent, as the server side of a test sees it (thread-safe).

    Subclasses call :meth:`_record` for each message and say when the connection is
    closed (:meth:`_is_closed`, with ``self._cond`` notified on change).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sent: list[Any] = []

    def _record(self, message: Any) -> None:
        with self._cond:
            self._sent.append(message)
            self._cond.notify_all()

    def _is_closed(self) -> bool:
        raise NotImplementedError

    # The server side's settings and its answer to the handshake, shared by subclasses.
    auto_metadata: bool = True
    conversation_id: str = "conv_fake"
    agent_output_audio_format: str = "pcm_16000"
    user_input_audio_format: str = "pcm_16000"
    on_send: Callable[[Any, Any], None] | None = None

    def push(self, message: Mapping[str, Any]) -> None:
        """Send ``message`` to the client (JSON-encoded)."""
        raise NotImplementedError

    def _on_client_message(self, message: Any) -> None:
        """Record a client message, answer the initiation (``auto_metadata``), call
        ``on_send``."""
        self._record(message)
        if (
            self.auto_metadata
            and isinstance(message, dict)
            and message.get("type") == "conversation_initiation_client_data"
        ):
            self.push_metadata()
        if self.on_send is not None:
            self.on_send(self, message)

    def push_metadata(self, conversation_id: str | None = None) -> None:
        """Queue a ``conversation_initiation_metadata`` message."""
        self.push(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": conversation_id or self.conversation_id,
                    "agent_output_audio_format": self.agent_output_audio_format,
                    "user_input_audio_format": self.user_input_audio_format,
                },
            }
        )

    def sent(self, type: str | None = None) -> list[Any]:
        """Messages the client sent so far (decoded), optionally only of ``type``
        (``"user_audio_chunk"`` selects audio)."""
        with self._cond:
            return [m for m in self._sent if _matches(m, type)]

    def wait_for_sent(
        self, type: str | None = None, *, count: int = 1, timeout: float = 5.0
    ) -> list[Any]:
        """Block until the client has sent ``count`` messages of ``type``; return them.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len([m for m in self._sent if _matches(m, type)]) >= count, timeout
            )
            found = [m for m in self._sent if _matches(m, type)]
        if not ok:
            raise TimeoutError(f"client sent {len(found)} {type or 'message'}(s), expected {count}")
        return found

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Block until the connection is closed; ``True`` if it is."""
        with self._cond:
            return self._cond.wait_for(self._is_closed, timeout)


class FakeWebSocket(SentLog):
    """A scriptable in-memory socket; pass it as ``websocket_factory``.

    The test plays the server: :meth:`push` (a dict is JSON-encoded) or
    :meth:`push_raw` (text or bytes, sent as is) queue server messages;
    :meth:`sent` / :meth:`wait_for_sent` read what the client sent (decoded JSON);
    :meth:`server_close` closes from the server side with a code and reason;
    :meth:`drop` cuts the connection without a close frame.

    ``auto_metadata=True`` answers the client's initiation message with a
    ``conversation_initiation_metadata`` (``conversation_id``, audio formats settable),
    which is what most tests want::

        fake = FakeWebSocket(auto_metadata=True)
        conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
        conv.start_session()
        fake.push({"type": "agent_response", "agent_response_event": {...}})

    One FakeWebSocket serves one connection; calling it (as a factory) returns itself
    and records ``url`` and ``headers``.
    """

    def __init__(
        self,
        *,
        auto_metadata: bool = True,
        conversation_id: str = "conv_fake",
        agent_output_audio_format: str = "pcm_16000",
        user_input_audio_format: str = "pcm_16000",
        on_send: Callable[[FakeWebSocket, Any], None] | None = None,
    ) -> None:
        self.auto_metadata = auto_metadata
        self.conversation_id = conversation_id
        self.agent_output_audio_format = agent_output_audio_format
        self.user_input_audio_format = user_input_audio_format
        super().__init__()
        self.on_send = on_send
        self.url: str | None = None
        self.headers: Mapping[str, str] = {}
        self.connected = False
        #: ``None`` until the client closes; then the close code it sent (1000).
        self.client_close_code: int | None = None
        self._inbox: queue.Queue[object] = queue.Queue()
        self._closed: ConnectionClosed | None = None

    # -- the factory and the socket interface (used by the library) ---------------------

    def __call__(self, url: str, headers: Mapping[str, str]) -> FakeWebSocket:
        self.url = url
        self.headers = dict(headers)
        self.connected = True
        return self

    def send(self, data: str) -> None:
        with self._cond:
            if self._closed is not None or self.client_close_code is not None:
                raise ConnectionError("socket is closed")
        try:
            message: Any = json.loads(data)
        except ValueError:
            message = data
        self._on_client_message(message)

    def recv(self) -> str | bytes:
        item = self._inbox.get()
        if item is _CLOSED:
            self._inbox.put(_CLOSED)  # stay closed for any later recv()
            assert self._closed is not None
            raise self._closed
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """The client's close: like a server that answers the close frame at once."""
        with self._cond:
            if self.client_close_code is None:
                self.client_close_code = 1000
            self._cond.notify_all()
        self._close_with(closed_exception(1000, ""))

    def abort(self) -> None:
        self._close_with(closed_exception(None, "connection aborted"))

    # -- the test's side -----------------------------------------------------------------

    def push(self, message: Mapping[str, Any]) -> None:
        """Queue a server message (JSON-encoded)."""
        self._inbox.put(json.dumps(message))

    def push_raw(self, data: str | bytes) -> None:
        """Queue a raw text or binary frame, as is."""
        self._inbox.put(data)

    def server_close(self, code: int = 1000, reason: str = "") -> None:
        """Close from the server side with ``code`` and ``reason``."""
        self._close_with(closed_exception(code, reason))

    def drop(self) -> None:
        """Cut the connection with no close frame (the client sees code ``None``)."""
        self._close_with(closed_exception(None, "connection lost"))

    def _close_with(self, exc: ConnectionClosed) -> None:
        with self._cond:
            if self._closed is not None:
                return
            self._closed = exc
            self._cond.notify_all()
        self._inbox.put(_CLOSED)

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by either side)."""
        return self._closed is not None

    def _is_closed(self) -> bool:
        return self._closed is not None


def _matches(message: Any, type: str | None) -> bool:
    if type is None:
        return True
    if not isinstance(message, dict):
        return False
    if type == "user_audio_chunk":
        return "user_audio_chunk" in message
    return message.get("type") == type
