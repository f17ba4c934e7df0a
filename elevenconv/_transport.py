"""The socket: websocket-client behind a three-method interface.

A :data:`WebSocketFactory` is ``factory(url, headers) -> socket`` where the socket has
``send(text)``, ``recv() -> str | bytes`` and ``close()`` (and optionally ``abort()``).
``recv()`` raises :class:`~elevenconv.errors.ConnectionClosed` when the peer closed
(any other exception means the connection was lost). The default factory wraps
``websocket.create_connection``; tests pass :class:`elevenconv.testing.FakeWebSocket`.

Optional socket capabilities the Conversation uses when present: ``ping(payload)``
(a WebSocket ping frame, for the keepalive), ``last_activity`` (monotonic time of the
last bytes received, any frame included) and ``unsent() -> int | None`` (bytes the
kernel has not sent yet, to keep microphone audio from hiding in its send buffer).

Threads: one reader calls ``recv()``; one writer calls ``send()``, ``ping()`` and
``close()``; ``abort()`` may be called from any thread to unblock the reader.

websocket-client's own ``websocket`` logger (``websocket.enableTrace(True)``) gets a
filter, installed on import, that redacts signatures, tokens and API keys.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import websocket

from elevenconv.errors import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionFailedError,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "WebSocketFactory",
    "WebSocketLike",
    "closed_exception",
    "create_websocket",
    "redact_url",
]

log = logging.getLogger(__name__)

#: Largest frame accepted from the server (16 MiB); a larger one closes with 1009.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

_SECRET_PARAMS = re.compile(
    r"((?:conversation_signature|signature|token|api_key|xi-api-key|xi_api_key)=)[^&#\s]*",
    re.IGNORECASE,
)


_SECRET_HEADERS = re.compile(
    r"((?:xi-api-key|authorization|cookie|sec-websocket-protocol)\s*:\s*)[^\r\n]*",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with signature/token/key query values replaced by ``***``; safe to log."""
    return _SECRET_PARAMS.sub(r"\1***", url)


def redact(text: str) -> str:
    """``text`` with URL secrets and secret HTTP header values replaced by ``***``."""
    return _SECRET_HEADERS.sub(r"\1***", _SECRET_PARAMS.sub(r"\1***", text))


class RedactingFilter(logging.Filter):
    """Redacts secrets in every record of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_WEBSOCKET_FILTER = RedactingFilter()
logging.getLogger("websocket").addFilter(_WEBSOCKET_FILTER)

# Linux: bytes in the socket's send queue not yet sent (SIOCOUTQNSD), else not sent or
# not acknowledged (SIOCOUTQ, = TIOCOUTQ).
_SIOCOUTQNSD = 0x894B
_SIOCOUTQ = 0x5411


@runtime_checkable
class WebSocketLike(Protocol):
    """What the Conversation needs of a socket (see the module docstring)."""

    def send(self, data: str) -> Any: ...

    def recv(self) -> str | bytes: ...

    def close(self) -> Any: ...


WebSocketFactory = Callable[[str, Mapping[str, str]], WebSocketLike]


def closed_exception(code: int | None, reason: str = "") -> ConnectionClosed:
    """The :class:`ConnectionClosed` subclass for a close ``code`` (``None``: no frame)."""
    if code in (1000, 1001):
        return ConnectionClosedOK(code, reason)
    return ConnectionClosedError(code, reason)


class _FrameTooLarge(websocket.WebSocketProtocolException):
    pass


#: recv() size of the frame reader: what the socket has, up to this much, in one call.
_READ_SIZE = 64 * 1024
_MAX_READ = 1024 * 1024


class _LimitedFrameBuffer(websocket._abnf.frame_buffer):
    """websocket-client's frame reader with a size limit checked before the payload is read,
    and a read buffer."""

    max_size = DEFAULT_MAX_FRAME_SIZE

    def __init__(self, recv_fn: Callable[[int], bytes], skip_utf8_validation: bool) -> None:
        super().__init__(recv_fn, skip_utf8_validation)
        self._rbuf = bytearray()
        #: Monotonic time of the last bytes read (frames of any kind: the keepalive).
        self.last_activity = time.monotonic()

    def recv_strict(self, bufsize: int) -> bytes:
        """Exactly ``bufsize`` bytes. websocket-client's version asks the socket for exactly
        what is missing: three recv() calls per frame (header, length, payload). This one
        reads what is there (up to 64 KiB), so a frame costs one call or less. Only this
        reader consumes the socket after the handshake, so reading ahead is safe."""
        buf = self._rbuf
        while len(buf) < bufsize:
            buf += self.recv(min(max(_READ_SIZE, bufsize - len(buf)), _MAX_READ))
            self.last_activity = time.monotonic()
        if len(buf) == bufsize:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:bufsize])
            del buf[:bufsize]
        return data

    def recv_length(self) -> None:
        super().recv_length()
        if self.length is not None and self.length > self.max_size:
            raise _FrameTooLarge(
                f"frame of {self.length} bytes exceeds the {self.max_size} byte limit"
            )


class _LimitedWebSocket(websocket.WebSocket):
    def __init__(
        self, *args: Any, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        buffer = _LimitedFrameBuffer(self._recv, kwargs.get("skip_utf8_validation", False))
        buffer.max_size = max_frame_size
        self.frame_buffer = buffer


class WebSocketClientSocket:
    """A connected websocket-client ``WebSocket`` adapted to :class:`WebSocketLike`."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._unsent_op: int | None = _SIOCOUTQNSD
        self._raw: socket.socket | None = None  # the connection being opened
        self._aborted = False

    def _set_raw(self, sock: socket.socket) -> None:
        if self._aborted:  # abort() came first: open nothing more
            sock.close()
            raise ConnectionAbortedError("the connection was aborted while opening")
        self._raw = sock

    def send(self, data: str) -> None:
        self._ws.send(data)

    def ping(self, payload: bytes = b"") -> None:
        """Send a WebSocket ping frame (the keepalive)."""
        self._ws.ping(payload)

    @property
    def last_activity(self) -> float:
        """Monotonic time of the last bytes received from the server."""
        buffer = self._ws.frame_buffer
        return float(getattr(buffer, "last_activity", time.monotonic()))

    def in_flight(self) -> int | None:
        """Bytes written that the peer has not acknowledged yet (Linux ``SIOCOUTQ``), or
        ``None`` where that cannot be known."""
        sock = getattr(self._ws, "sock", None)
        if sock is None:
            return None
        try:
            buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return None
        return int(struct.unpack("i", buf)[0])

    def unsent(self) -> int | None:
        """Bytes written to the socket that the kernel has not sent yet (Linux), or
        ``None`` where that cannot be known."""
        op = self._unsent_op
        sock = getattr(self._ws, "sock", None)
        if op is None or sock is None:
            return None
        try:
            buf = fcntl.ioctl(sock.fileno(), op, b"\0\0\0\0")
        except (OSError, ValueError):
            # Older kernels: fall back to unsent + unacknowledged; elsewhere: unknown.
            self._unsent_op = _SIOCOUTQ if op == _SIOCOUTQNSD else None
            return None
        return int(struct.unpack("i", buf)[0])

    def recv(self) -> str | bytes:
        """The next text (str) or binary (bytes) message. Pings are answered inside.

        Raises :class:`ConnectionClosed` with the peer's code and reason on a close
        frame, :class:`ConnectionClosedError` (code 1009) on an oversized frame and
        (code ``None``) when the connection dropped.
        """
        try:
            opcode, data = self._ws.recv_data()
        except _FrameTooLarge as exc:
            self._close_quietly(1009, "message too big")
            raise ConnectionClosedError(1009, str(exc)) from exc
        except websocket.WebSocketProtocolException as exc:
            self._close_quietly(1002, "protocol error")
            raise ConnectionClosedError(1002, f"WebSocket protocol error: {exc}") from exc
        except (websocket.WebSocketConnectionClosedException, OSError, ValueError) as exc:
            raise ConnectionClosedError(None, "connection lost") from exc
        if opcode == websocket.ABNF.OPCODE_TEXT:
            if isinstance(data, bytes):
                # Strict decoding in C is the UTF-8 check (websocket-client's own is a
                # pure-Python loop over every byte; it is switched off in create_websocket).
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self._close_quietly(1007, "invalid UTF-8")
                    raise ConnectionClosedError(1007, "text frame is not valid UTF-8") from exc
            return str(data)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return bytes(data)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            payload = bytes(data.data if hasattr(data, "data") else data)
            code: int | None = 1005  # "no status received"
            reason = ""
            if len(payload) >= 2:
                code = struct.unpack("!H", payload[:2])[0]
                reason = payload[2:].decode("utf-8", "replace")
            raise closed_exception(code, reason)
        raise ConnectionClosedError(None, f"unexpected opcode {opcode}")

    def close(self) -> None:
        """Send a close frame (1000) without waiting; the reader sees the reply."""
        self._close_quietly(1000, "")

    def _close_quietly(self, code: int, reason: str) -> None:
        try:
            self._ws.send_close(code, reason.encode())
        except Exception:
            log.debug("close frame not sent: socket already closed")

    def abort(self) -> None:
        """Shut the TCP socket down at once; wakes a reader blocked in ``recv()``, or a
        connection being opened (TCP connect, TLS or WebSocket handshake)."""
        self._aborted = True
        sock = getattr(self._ws, "sock", None) or self._raw
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._ws.shutdown()
        except Exception:
            log.debug("socket already closed")


def create_websocket(
    url: str,
    headers: Mapping[str, str],
    *,
    connect_timeout: float = 10.0,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    sslopt: Mapping[str, Any] | None = None,
    on_socket: Callable[[WebSocketClientSocket], None] | None = None,
    **options: Any,
) -> WebSocketClientSocket:
    """Open a WebSocket with websocket-client (the default factory).

    TLS certificates are verified unless ``sslopt`` says otherwise
    (``{"cert_reqs": ssl.CERT_NONE}``, which logs a warning). ``options`` go to
    ``websocket.create_connection`` as they are (``http_proxy_host``,
    ``http_proxy_port``, ``proxy_type``, ``http_proxy_auth``, ...).

    ``on_socket(sock)`` is called with the not yet connected socket, so another thread
    can :meth:`~WebSocketClientSocket.abort` the opening handshake.

    Raises :class:`AuthenticationError` on HTTP 401/403 and
    :class:`ConnectionFailedError` on any other failure; messages never contain
    the URL's secrets.
    """
    sslopt = dict(sslopt or {})
    if sslopt.get("cert_reqs") == ssl.CERT_NONE:
        log.warning("TLS certificate verification is DISABLED for %s: insecure", redact_url(url))
    safe_url = redact_url(url)
    options = {"skip_utf8_validation": True, **options}
    sockopt = options.pop("sockopt", [])
    # Without the optional wsaccel, websocket-client checks UTF-8 byte by byte in
    # Python: 70% of the reader's CPU on audio. recv() decodes strictly instead.
    skip_utf8 = options.pop("skip_utf8_validation")
    # websocket.create_connection() in two steps, so on_socket() can see the socket.
    ws = _LimitedWebSocket(
        sockopt=sockopt,
        sslopt=sslopt,
        enable_multithread=True,
        skip_utf8_validation=skip_utf8,
        max_frame_size=max_frame_size,
        **options,
    )
    wrapped = WebSocketClientSocket(ws)
    if on_socket is not None:
        on_socket(wrapped)
    ws.settimeout(connect_timeout)
    try:
        stream = _open_stream(url, sslopt, options, connect_timeout, wrapped._set_raw)
        if stream is not None:
            options["socket"] = stream
        ws.connect(url, header=[f"{k}: {v}" for k, v in headers.items()], **options)  # type: ignore[no-untyped-call]
    except websocket.WebSocketBadStatusException as exc:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            raise AuthenticationError(
                f"the server refused the conversation (HTTP {status}) at {safe_url}: check the "
                "API key, that the agent exists, and use a fresh signed URL",
                status,
            ) from None
        raise ConnectionFailedError(
            f"WebSocket handshake refused (HTTP {status}) at {safe_url}", status
        ) from None
    except (OSError, websocket.WebSocketException, ValueError) as exc:
        raise ConnectionFailedError(
            f"could not connect to {safe_url}: {type(exc).__name__}: {redact_url(str(exc))}"
        ) from None
    # The connect timeout must not become a read timeout: the reader blocks until data
    # or close, and shutdown() is what wakes it.
    ws.settimeout(None)
    return wrapped


_PROXY_OPTIONS = ("http_proxy_host", "proxy_type", "http_proxy_port")
_PROXY_ENV = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _open_stream(
    url: str,
    sslopt: Mapping[str, Any],
    options: Mapping[str, Any],
    timeout: float,
    register: Callable[[socket.socket], None],
) -> socket.socket | None:
    """The TCP connection (and TLS) for websocket-client, opened here so that another
    thread can interrupt it: ``register(sock)`` is called before each blocking step, and
    ``shutdown()`` on that socket wakes a ``connect()`` in SYN_SENT or a TLS handshake.

    Returns ``None`` where websocket-client must open the connection itself: a proxy
    (options or environment), or TLS options other than a ready ``context`` (its own
    ``sslopt`` handling applies then, and only the WebSocket handshake is abortable).
    Default TLS is ``ssl.create_default_context()``: certificates and host name checked,
    as websocket-client does by default.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return None
    if any(options.get(k) for k in _PROXY_OPTIONS) or any(os.environ.get(k) for k in _PROXY_ENV):
        return None
    if set(sslopt) - {"context"}:
        return None
    host, port = parts.hostname, parts.port or (443 if secure else 80)
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        register(sock)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as websocket-client
        if not secure:
            return sock
        context = sslopt.get("context") or ssl.create_default_context()
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        register(tls)
        try:
            tls.do_handshake()
        except OSError:
            tls.close()
            raise
        return tls
    raise error or OSError(f"no address for {host}")
