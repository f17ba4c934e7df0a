"""Exceptions raised by elevenconv.

Every exception the library raises on purpose derives from :class:`ElevenConvError`::

    ElevenConvError
    ├── ConfigurationError (also ValueError)     -- bad arguments, missing API key
    ├── AuthenticationError                      -- API key or signed URL refused (401/403)
    ├── ConnectionFailedError (also ConnectionError) -- handshake refused, server unreachable
    │   ├── StartTimeoutError (also TimeoutError) -- no conversation metadata in time
    │   └── SessionCancelledError                -- end_session() during start_session()
    ├── ConnectionClosed                         -- the socket closed; ``code`` and ``reason``
    │   ├── ConnectionClosedOK                   -- 1000 / 1001
    │   └── ConnectionClosedError                -- any other code, or no close frame at all
    ├── ServerError                              -- an ``error`` / ``client_error`` message
    ├── ProtocolError
    │   ├── LocalProtocolError                   -- we were asked to send something invalid
    │   └── RemoteProtocolError                  -- the server sent something we cannot read
    ├── ToolError                                -- a client tool failed
    │   └── ToolTimeoutError (also TimeoutError)
    ├── AudioError                               -- the sound device or a format conversion
    └── SessionStateError (also RuntimeError)
        ├── SessionNotActiveError                -- send before start / after end
        └── SessionAlreadyStartedError           -- start_session() twice

Messages say what to do next. No exception message ever contains an API key or a
signed-URL token.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AudioError",
    "AuthenticationError",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionFailedError",
    "ElevenConvError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ServerError",
    "SessionAlreadyStartedError",
    "SessionCancelledError",
    "SessionNotActiveError",
    "SessionStateError",
    "StartTimeoutError",
    "ToolError",
    "ToolTimeoutError",
]

#: How much of an offending server message a RemoteProtocolError keeps.
RAW_EXCERPT_LIMIT = 200


class ElevenConvError(Exception):
    """Base class of every exception elevenconv raises on purpose."""


class ConfigurationError(ElevenConvError, ValueError):
    """An argument or setting is missing or invalid; the message says which."""


class AuthenticationError(ElevenConvError):
    """The service refused the API key or the signed URL (HTTP 401/403).

    Check ``ELEVENLABS_API_KEY`` (or the ``api_key`` you passed) and that the agent
    belongs to that account; a signed URL is valid for one conversation, fetch a new one.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConnectionFailedError(ElevenConvError, ConnectionError):
    """The conversation could not be opened: network error or handshake refused."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class StartTimeoutError(ConnectionFailedError, TimeoutError):
    """The socket opened but the server sent no ``conversation_initiation_metadata`` in time.

    Raise ``start_timeout`` if the network is slow; otherwise the agent may be misconfigured.
    """


class SessionCancelledError(ConnectionFailedError):
    """:meth:`~elevenconv.Conversation.end_session` was called while
    :meth:`~elevenconv.Conversation.start_session` was still connecting; no session was
    started and nothing is left running."""


class ConnectionClosed(ElevenConvError):
    """The WebSocket closed. ``code`` is the close code (``None``: no close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        text = f"connection closed with code {code}" if code is not None else "connection lost"
        super().__init__(f"{text}: {reason}" if reason else text)


class ConnectionClosedOK(ConnectionClosed):
    """Normal closure (1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """Abnormal closure: an error close code, or the connection dropped without one."""


class ServerError(ElevenConvError):
    """The server reported an error (an ``error`` or ``client_error`` message).

    ``code`` is the WebSocket close code the server announces (1002, 1008, 1011, ...),
    ``error_type`` its machine-readable kind (e.g. ``"missing_fields"``) and ``message``
    its human-readable text, kept verbatim. ``raw`` is the whole decoded message.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        error_type: str | None = None,
        reason: str | None = None,
        raw: dict[str, Any] | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.error_type = error_type
        self.reason = reason
        self.raw = raw if raw is not None else {}
        parts = [message or "server error"]
        if error_type:
            parts.append(f"type={error_type}")
        if code is not None:
            parts.append(f"code={code}")
        super().__init__(
            " ".join(parts) if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"
        )


class ProtocolError(ElevenConvError):
    """A message broke the Agents WebSocket contract."""


class LocalProtocolError(ProtocolError):
    """We were asked to build a message the contract does not allow (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The server sent a message we cannot decode. ``raw`` keeps a truncated copy of it.

    The session goes on: the message is reported to ``error`` listeners and skipped.
    """

    def __init__(self, message: str, raw: str | bytes = "") -> None:
        excerpt: str | bytes
        if isinstance(raw, str):
            excerpt = raw if len(raw) <= RAW_EXCERPT_LIMIT else raw[:RAW_EXCERPT_LIMIT] + "…"
        else:
            excerpt = raw if len(raw) <= RAW_EXCERPT_LIMIT else raw[:RAW_EXCERPT_LIMIT] + b"..."
        self.raw = excerpt
        super().__init__(f"{message}: {excerpt!r}")


class ToolError(ElevenConvError):
    """A client tool raised or could not be run; ``tool_name`` and ``tool_call_id`` say which."""

    def __init__(self, message: str, tool_name: str = "", tool_call_id: str = "") -> None:
        super().__init__(message)
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id


class ToolTimeoutError(ToolError, TimeoutError):
    """A client tool ran past ``ClientTools(timeout=...)``; the agent got an error result."""


class AudioError(ElevenConvError):
    """The sound device failed or an audio format cannot be converted."""


class SessionStateError(ElevenConvError, RuntimeError):
    """The call does not fit the session's state."""


class SessionNotActiveError(SessionStateError):
    """No session is running: call ``start_session()`` first (or start a new Conversation)."""


class SessionAlreadyStartedError(SessionStateError):
    """``start_session()`` was called twice; a Conversation runs one session. Create a new one."""
