"""``AgentSimulator``: a protocol-faithful ElevenLabs Agents server on loopback.

A real WebSocket server (``websockets.sync.server``, threads only) that speaks the Agents
contract, for tests and for offline development (``elevenconv simulate --port N``)::

    with AgentSimulator(ping_interval=None, audio_realtime_factor=None) as sim:
        client = ElevenLabsClient(api_key=sim.api_key, base_url=sim.base_url)
        conv = Conversation(client, "sim-agent", requires_auth=False, text_only=True)
        conv.start_session()
        conv.send_user_message("what time is it?")     # the agent calls get_current_time
        sim.wait_for_client_message("client_tool_result", timeout=5)
        conv.send_user_message("bye")                  # goodbye, end_call, close 1000
        conv.wait_for_session_end(5)
        assert not sim.violations

What it serves:

* ``GET /v1/convai/conversation/get-signed-url?agent_id=X`` (header ``xi-api-key``): 200
  ``{"signed_url": ...}`` with a single-use, expiring ``conversation_signature``; 401 for a
  wrong key, 404 for an unknown agent, with JSON ``{"detail": {...}}`` bodies.
  (``get_signed_url``, the older spelling, too).
* ``GET /v1/convai/conversation/token?agent_id=X``: 200 ``{"token": ...}``, a single-use,
  expiring conversation token (a private agent's needs the ``xi-api-key`` header, else 401).
* ``/v1/convai/conversation?agent_id=X`` (WebSocket): refused at the handshake with 404
  (unknown agent) or 403 (bad, expired or reused signature or token; private agent without
  either). Like the service, the ``convai`` subprotocol is selected when the client offers
  it (the browser client always does), and a ``bearer.<token>`` subprotocol offer (the
  browser client's ``authorization`` option) must carry a valid conversation token.
  Clients that offer no subprotocol get none.
* ``POST /v1/convai/conversations/{id}/files`` (multipart, a ``file`` part; the browser
  client's ``uploadFile``): 200 ``{"file_id": ...}``, recorded in :attr:`uploads`;
  ``POST /v1/convai/conversations/{id}/feedback`` (``{"feedback": "like"}`` or
  ``{"rating": 1..5, "comment": ...}``; ``postOverallFeedback``): 200, recorded in
  :attr:`conversation_feedback`. 404 for an unknown conversation id.
* Every HTTP answer carries CORS headers (``Access-Control-Allow-Origin: *``) and
  ``OPTIONS`` preflights get 204, so a page served from another origin can fetch them.
* Each agent sends only the server events its ``client_events`` enable (default
  ``SIM_CLIENT_EVENTS``: no ``vad_score``, no ``internal_*``;
  ``CONTRACT_DEFAULT_CLIENT_EVENTS`` is the service's default), as the client's
  ``conversation.client_events`` override may change; the rest is counted in
  ``SimSession.suppressed``.
* Per connection either the default agent (:mod:`elevenconv.testing._sim_agent`: first
  message, rule-based replies, client tool calls, ``end_call``, pings, speech and VAD,
  barge-in) or a script of :class:`Step` s, plus :class:`Faults`.

Every message the simulator sends is checked with ``validate_server_message`` first
(``strict=True``: an invalid one is a :class:`SimulatorError`, raised again by
:meth:`AgentSimulator.close`). Every client message is checked with
``validate_client_message``; a violation is recorded in :attr:`AgentSimulator.violations`
and answered like the service does: an ``error`` (1008, ``invalid_message``), then close 1008.

Threads, all named ``elevenconv-sim-*``: one server (accept) thread; per connection the
handler thread (``-conn-N``, the only reader; it runs scripts), websockets' reader
(``-recv-N``) and, for the default agent, one agent thread (``-agent-N``). :meth:`close`
shuts the server down (open connections get 1001), joins all of them within
``shutdown_timeout`` and raises :class:`SimulatorError` naming any that did not stop.
"""

from __future__ import annotations

import email.policy
import http
import http.server
import json
import logging
import re
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from elevenconv.errors import ConfigurationError, SessionStateError
from elevenconv.testing._contract import client_message_kind
from elevenconv.testing._sim_agent import GOODBYE, AgentWorker
from elevenconv.testing._sim_audio import EnergyVad, TtsEngine
from elevenconv.testing._sim_script import ScriptFailure, run_steps
from elevenconv.testing._sim_session import (
    CONTRACT_DEFAULT_CLIENT_EVENTS,
    DEFAULT_FIRST_MESSAGE,
    DEFAULT_TOOLS,
    SIM_CLIENT_EVENTS,
    AgentConfig,
    Recorder,
    ResponseRecord,
    SessionOver,
    SimSession,
    SimulatorError,
    ToolRule,
    TranscriptEntry,
    Violation,
)
from elevenconv.testing._sim_steps import MIB, Faults, MessageMatch, Step, script_takes_handshake

__all__ = [
    "CONTRACT_DEFAULT_CLIENT_EVENTS",
    "DEFAULT_AGENT_ID",
    "DEFAULT_FIRST_MESSAGE",
    "DEFAULT_TOOLS",
    "GOODBYE",
    "SIM_CLIENT_EVENTS",
    "AgentConfig",
    "AgentSimulator",
    "Faults",
    "HttpRecord",
    "ResponseRecord",
    "SimSession",
    "SimulatorError",
    "Step",
    "ToolRule",
    "TranscriptEntry",
    "UploadRecord",
    "Violation",
    "main",
    "serve_forever",
]

logger = logging.getLogger(__name__)

#: The agent every simulator has: public, voice, default tools.
DEFAULT_AGENT_ID = "sim-agent"

SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
#: The older spelling the first SDKs used; the service still answers it.
SIGNED_URL_PATH_OLD = "/v1/convai/conversation/get_signed_url"
TOKEN_PATH = "/v1/convai/conversation/token"  # noqa: S105 - a path, not a secret
CONVERSATION_PATH = "/v1/convai/conversation"
#: The WebSocket subprotocol the browser client always offers (selected when offered).
MAIN_SUBPROTOCOL = "convai"
#: Prefix of the subprotocol that carries a conversation token: ``bearer.<token>``.
BEARER_PREFIX = "bearer."

#: ``POST /v1/convai/conversations/{id}/files`` (browser client ``uploadFile``) and
#: ``.../feedback`` (``postOverallFeedback``).
_POST_PATH = re.compile(r"^/v1/convai/conversations/(?P<id>[^/?#]+)/(?P<what>files|feedback)$")
#: Largest POST body accepted (an upload).
MAX_POST_BODY = 32 * MIB

#: Headers on every HTTP answer so that a page on another origin can call the API.
CORS_HEADERS: tuple[tuple[str, str], ...] = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "xi-api-key, authorization, content-type"),
    ("Access-Control-Max-Age", "600"),
)

_UNSET: Any = object()


@dataclass(frozen=True)
class HttpRecord:
    """One HTTP request the simulator answered (signed URL, or a WebSocket handshake).

    Fields:
        t: ``time.monotonic()`` when it arrived.
        path: request path with query.
        status: the status answered (101 for an accepted WebSocket handshake).
        headers: the request headers (names lower-cased).
    """

    t: float
    path: str
    status: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class _Admission:
    """What the handshake decided about an accepted connection."""

    agent: AgentConfig
    query: dict[str, str]
    signed: bool
    bearer: bool


@dataclass(frozen=True)
class UploadRecord:
    """A file a client uploaded (``POST /v1/convai/conversations/{id}/files``).

    Fields: ``conversation_id``, ``file_id`` (what the simulator answered), ``filename``,
    ``mime_type`` and ``data`` (the file's bytes).
    """

    conversation_id: str
    file_id: str
    filename: str | None
    mime_type: str
    data: bytes = field(repr=False)


class _HandledOutside(Exception):
    """The TCP connection carried a plain HTTP POST, answered already: not a WebSocket."""


class _SimConnection(ServerConnection):
    """A ServerConnection that carries what the handshake decided about it."""

    sim_index: int = -1
    sim_request: _Admission | None = None


class AgentSimulator:
    """A simulated ElevenLabs Agents service on a loopback port.

    Use as a context manager (or :meth:`start` / :meth:`close`). Any thread may call its
    methods; the ``wait_for_*`` methods block on a Condition, never poll.

    Args:
        agents: extra :class:`AgentConfig` s; the public agent ``"sim-agent"`` always exists
            (pass an AgentConfig with that id to change it).
        api_key: the key ``get-signed-url`` accepts in the ``xi-api-key`` header.
        host: the address to listen on.
        port: the TCP port (``0``: any free port, see :attr:`port`).
        script: run these :class:`Step` s on every connection instead of the default agent
            (after the init/metadata exchange, unless the script does it itself).
        faults: :class:`Faults` (or a dict of its fields) for every agent, replacing their own.
        ping_interval: seconds between ``ping`` messages of the default agent (``None``: none).
        audio_realtime_factor: pace of agent audio, 1.0 = real time (barge-in works as with
            the service); ``None`` sends it as fast as possible.
        audio_chunk_seconds: duration of one ``audio`` message.
        tts: ``"auto"`` (espeak-ng when installed, else a synthetic voice), ``"espeak"``
            or ``"tone"`` (deterministic synthetic voice).
        vad: keyword arguments for :class:`~elevenconv.testing._sim_audio.EnergyVad`
            (``threshold_db``, ``start_seconds``, ``end_silence``, ``min_utterance``,
            ``score_interval``).
        strict: raise :class:`SimulatorError` for an outgoing message that breaks the
            contract (a simulator bug) instead of only recording it.
        signed_url_ttl: seconds a signature stays valid.
        close_timeout: seconds to wait for the client's close frame after closing.
        shutdown_timeout: seconds :meth:`close` may take in all.
        max_size: largest client message accepted (bytes; the simulator itself may send
            anything, e.g. :meth:`Step.huge_text`).
        record_audio: ``False`` keeps audio messages out of the transcript.
    """

    def __init__(
        self,
        agents: Iterable[AgentConfig] | None = None,
        *,
        api_key: str = "sim-api-key",
        host: str = "127.0.0.1",
        port: int = 0,
        script: Sequence[Step] | None = None,
        faults: Faults | Mapping[str, Any] | None = None,
        ping_interval: float | None = 5.0,
        audio_realtime_factor: float | None = 1.0,
        audio_chunk_seconds: float = 0.25,
        tts: TtsEngine = "auto",
        vad: Mapping[str, float] | None = None,
        strict: bool = True,
        signed_url_ttl: float = 900.0,
        close_timeout: float = 2.0,
        shutdown_timeout: float = 10.0,
        max_size: int | None = 64 * MIB,
        record_audio: bool = True,
    ) -> None:
        """Configure the simulator; nothing listens until :meth:`start`."""
        if script is not None and not all(isinstance(s, Step) for s in script):
            raise ConfigurationError("script must be a sequence of Step objects")
        if audio_chunk_seconds <= 0:
            raise ConfigurationError("audio_chunk_seconds must be > 0")
        self.api_key = api_key
        self.host = host
        self._requested_port = port
        self.script: tuple[Step, ...] | None = tuple(script) if script is not None else None
        self.faults = Faults.coerce(faults)
        self.ping_interval = ping_interval
        self.audio_realtime_factor = audio_realtime_factor
        self.audio_chunk_seconds = audio_chunk_seconds
        self.tts: TtsEngine = tts
        self.vad_options = dict(vad or {})
        EnergyVad(**self.vad_options)  # fail early on a bad option
        self.strict = strict
        self.signed_url_ttl = signed_url_ttl
        self.close_timeout = close_timeout
        self.shutdown_timeout = shutdown_timeout
        self.max_size = max_size
        self.http_requests: list[HttpRecord] = []
        #: Files uploaded through ``POST /v1/convai/conversations/{id}/files``.
        self.uploads: list[UploadRecord] = []
        #: Bodies of ``POST /v1/convai/conversations/{id}/feedback`` (overall rating), with
        #: the ``conversation_id`` added.
        self.conversation_feedback: list[dict[str, Any]] = []
        self._peeking: set[socket.socket] = set()

        self._recorder = Recorder(record_audio=record_audio)
        self._agents: dict[str, AgentConfig] = {DEFAULT_AGENT_ID: AgentConfig(DEFAULT_AGENT_ID)}
        for agent in agents or ():
            if not isinstance(agent, AgentConfig):
                raise ConfigurationError(f"agents must be AgentConfig objects, got {agent!r}")
            self._agents[agent.agent_id] = agent
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._used_tokens: set[tuple[str, str]] = set()
        self._sessions: list[SimSession] = []
        self._workers: list[AgentWorker] = []
        self._threads: list[threading.Thread] = []
        self._connect_hooks: list[Callable[[SimSession], None]] = []
        self._message_hooks: list[Callable[[SimSession, Any], None]] = []
        self._lock = threading.Lock()
        self._conn_count = 0
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._server_thread: threading.Thread | None = None
        self._port: int | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> AgentSimulator:
        """Bind the port and start serving (the server thread). Raises
        :class:`~elevenconv.errors.SessionStateError` if started twice."""
        with self._lock:
            if self._server is not None or self._closed:
                raise SessionStateError("AgentSimulator.start() called twice; create a new one")
            self._server = serve(
                self._handle,
                self.host,
                self._requested_port,
                process_request=self._process_request,
                select_subprotocol=_select_subprotocol,
                # websockets types this as a class; any factory with its signature works.
                create_connection=cast("type[ServerConnection]", self._create_connection),
                compression=None,
                ping_interval=None,  # the protocol's own ping/pong is simulated instead
                close_timeout=self.close_timeout,
                max_size=self.max_size,
                logger=logger,
            )
            self._port = self._server.socket.getsockname()[1]
            self._server_thread = threading.Thread(
                target=self._server.serve_forever,
                name=f"elevenconv-sim-server-{self._port}",
                daemon=True,
            )
            self._server_thread.start()
        return self

    def close(self, *, raise_errors: bool = True) -> None:
        """Stop: close open connections (1001), stop and join every thread. Idempotent.

        Any thread except the simulator's own. Raises :class:`SimulatorError` if a thread
        is still alive after ``shutdown_timeout`` seconds, or (``strict`` and
        ``raise_errors``) if the simulator sent or tried to send a message that breaks
        the contract.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, server_thread = self._server, self._server_thread
        self._stopping.set()
        with self._recorder.cond:
            self._recorder.cond.notify_all()
        if server is None:
            return
        deadline = time.monotonic() + self.shutdown_timeout
        with self._lock:
            peeking = list(self._peeking)
        for sock in peeking:  # connections still deciding whether they are a POST
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for worker in list(self._workers):
            worker.stop()
        # Clients in tests often sit idle while the simulator stops: a short wait for
        # their close frame is enough on loopback, a long one only slows every test down.
        with server.lock:
            for conn in server.all_connections:
                conn.close_timeout = min(self.close_timeout, 0.5)
        shutdown = threading.Thread(
            target=server.shutdown, name="elevenconv-sim-shutdown", daemon=True
        )
        shutdown.start()
        # Most of the budget for a polite shutdown; then cut the sockets of connections
        # whose close handshake hangs (a client that stopped reading blocks our sendall).
        shutdown.join(max(0.0, (deadline - time.monotonic()) * 0.7))
        if shutdown.is_alive():
            self._abort_connections(server)
            shutdown.join(max(0.0, deadline - time.monotonic()))
        threads = [shutdown]
        if server_thread is not None:
            threads.append(server_thread)
        with self._lock:
            threads += self._threads
        threads += [w.thread for w in self._workers]
        for thread in threads:
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise SimulatorError(
                f"simulator threads still running {self.shutdown_timeout} s after close(): "
                f"{alive}; a client that neither reads nor closes can cause this"
            )
        if raise_errors and self.strict and self.contract_errors:
            raise SimulatorError(
                "the simulator sent messages that break the contract (a simulator bug):\n"
                + "\n".join(self.contract_errors)
            )

    @staticmethod
    def _abort_connections(server: Server) -> None:
        with server.lock:
            connections = list(server.all_connections)
        for conn in connections:
            try:
                conn.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close_socket()

    def __enter__(self) -> AgentSimulator:
        """Start (if not started) and return the simulator."""
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`close`; contract errors are raised only if the block itself succeeded."""
        self.close(raise_errors=exc_type is None)

    def serve_forever(self) -> None:
        """Block until :meth:`close` is called from another thread (or Ctrl-C)."""
        if self._server is None:
            self.start()
        self._stopping.wait()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (after :meth:`start`)."""
        if self._port is None:
            raise SessionStateError("the simulator is not started: call start() or use `with`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``: the API base URL to give a client."""
        return f"http://{self.host}:{self.port}"

    def ws_url(self, agent_id: str = DEFAULT_AGENT_ID, **params: str) -> str:
        """The conversation WebSocket URL for ``agent_id`` (extra query ``params`` appended)."""
        query = urlencode({"agent_id": agent_id, **params})
        return f"ws://{self.host}:{self.port}{CONVERSATION_PATH}?{query}"

    def signed_url(self, agent_id: str = DEFAULT_AGENT_ID) -> str:
        """Mint a signed URL directly (what ``get-signed-url`` returns)."""
        if agent_id not in self._agents:
            raise ConfigurationError(f"unknown agent {agent_id!r}")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[("signature", token)] = (agent_id, time.monotonic() + self.signed_url_ttl)
        return self.ws_url(agent_id, conversation_signature=token)

    def conversation_token(self, agent_id: str = DEFAULT_AGENT_ID) -> str:
        """Mint a conversation token directly (what ``GET /v1/convai/conversation/token``
        returns): single use, valid for ``signed_url_ttl`` seconds, for ``agent_id`` only.

        The browser client sends it as the ``bearer.<token>`` WebSocket subprotocol
        (its ``authorization`` option) next to ``convai``.
        """
        if agent_id not in self._agents:
            raise ConfigurationError(f"unknown agent {agent_id!r}")
        # token_urlsafe has only characters valid in a subprotocol name (an HTTP token).
        token = "sim_" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[("token", token)] = (agent_id, time.monotonic() + self.signed_url_ttl)
        return token

    # -- configuration -------------------------------------------------------------------------

    @property
    def agents(self) -> Mapping[str, AgentConfig]:
        """The agents by id (a copy)."""
        with self._lock:
            return dict(self._agents)

    def add_agent(
        self,
        agent_id: str,
        *,
        private: bool = False,
        first_message: str | None = DEFAULT_FIRST_MESSAGE,
        output_format: str = "pcm_16000",
        input_format: str = "pcm_16000",
        tools: Mapping[str, ToolRule | tuple[str, Mapping[str, Any]] | str] | None = None,
        text_only: bool = False,
        language: str = "en",
        user_transcript: str = "(spoken {duration:.1f} s)",
        respond: Callable[[str], str | None] | None = None,
        allow_overrides: bool = True,
        faults: Faults | Mapping[str, Any] | None = None,
        client_events: Iterable[str] | None = None,
        mcp_approval_timeout: int = 30,
    ) -> AgentConfig:
        """Add (or replace) an agent and return its :class:`AgentConfig`.

        ``tools`` maps a keyword to a :class:`ToolRule`, a ``(tool_name, parameters)``
        pair or a tool name: ``{"weather": ("get_weather", {"city": "Paris"})}`` makes
        "what's the weather?" call the client tool ``get_weather``. ``None`` keeps the
        default (``"time"`` -> ``get_current_time``). See :class:`AgentConfig` for the rest.
        ``client_events``: the server events this agent sends (default
        ``SIM_CLIENT_EVENTS``; ``CONTRACT_DEFAULT_CLIENT_EVENTS`` is the service's
        default for an agent that names none). Takes effect for connections opened
        afterwards.
        """
        config = AgentConfig(
            agent_id,
            private=private,
            first_message=first_message,
            output_format=output_format,
            input_format=input_format,
            tools=DEFAULT_TOOLS if tools is None else tools,  # type: ignore[arg-type]
            text_only=text_only,
            language=language,
            user_transcript=user_transcript,
            respond=respond,
            allow_overrides=allow_overrides,
            faults=Faults.coerce(faults) or Faults(),
            client_events=None if client_events is None else frozenset(client_events),
            mcp_approval_timeout=mcp_approval_timeout,
        )
        with self._lock:
            self._agents[agent_id] = config
        return config

    def on_connect(self, callback: Callable[[SimSession], None]) -> Callable[[SimSession], None]:
        """Call ``callback(session)`` on each new connection (handler thread, before the
        handshake messages). Usable as a decorator. Exceptions are recorded in :attr:`errors`."""
        self._connect_hooks.append(callback)
        return callback

    def on_client_message(
        self, callback: Callable[[SimSession, Any], None]
    ) -> Callable[[SimSession, Any], None]:
        """Call ``callback(session, message)`` for each valid client message (handler
        thread, after recording it). ``session.send(...)`` may be used to answer.
        Usable as a decorator. Exceptions are recorded in :attr:`errors`."""
        self._message_hooks.append(callback)
        return callback

    # -- recorded data -------------------------------------------------------------------------

    @property
    def transcript(self) -> list[TranscriptEntry]:
        """Every message in both directions, in order (a copy)."""
        with self._recorder.cond:
            return list(self._recorder.transcript)

    @property
    def violations(self) -> list[Violation]:
        """Client messages that broke the contract (a copy)."""
        with self._recorder.cond:
            return list(self._recorder.violations)

    @property
    def errors(self) -> list[str]:
        """Script failures, hook exceptions, internal errors (a copy)."""
        with self._recorder.cond:
            return list(self._recorder.errors)

    @property
    def contract_errors(self) -> list[str]:
        """Outgoing messages that broke the contract: simulator bugs (a copy)."""
        with self._recorder.cond:
            return list(self._recorder.contract_errors)

    @property
    def sessions(self) -> list[SimSession]:
        """One :class:`SimSession` per accepted WebSocket connection, in order (a copy)."""
        with self._recorder.cond:
            return list(self._sessions)

    def messages_from_client(
        self, type: MessageMatch | None = None, *, session: int | None = None
    ) -> list[Any]:
        """Decoded client messages, optionally of one kind (or matching a predicate)."""
        return self._messages("in", type, session)

    def messages_to_client(
        self, type: MessageMatch | None = None, *, session: int | None = None
    ) -> list[Any]:
        """Messages the simulator sent (dicts only), optionally of one ``type``."""
        return self._messages("out", type, session)

    def _messages(
        self, direction: str, match: MessageMatch | None, session: int | None
    ) -> list[Any]:
        return [
            e.message
            for e in self.transcript
            if e.direction == direction and _entry_matches(e, match, session)
        ]

    def wait_for_client_message(
        self,
        type: MessageMatch,
        timeout: float = 5.0,
        *,
        count: int = 1,
        session: int | None = None,
    ) -> Any:
        """Block until the client has sent ``count`` messages of kind ``type`` (or matching
        a predicate); return the ``count``-th. Raises ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        found = 0
        scanned = 0
        with self._recorder.cond:
            while True:
                entries = self._recorder.transcript
                for entry in entries[scanned:]:
                    if entry.direction == "in" and _entry_matches(entry, type, session):
                        found += 1
                        if found == count:
                            return entry.message
                scanned = len(entries)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    kinds = [e.kind for e in entries if e.direction == "in"][-20:]
                    raise TimeoutError(
                        f"the client sent {found} of {count} {_describe(type)} message(s) "
                        f"within {timeout} s; its last messages: {kinds}"
                    )
                self._recorder.cond.wait(remaining)

    def wait_for_session(self, timeout: float = 5.0, index: int = 0) -> SimSession:
        """Block until connection number ``index`` (0-based) is accepted; return it."""
        return self._wait(
            lambda: self._sessions[index] if len(self._sessions) > index else None,
            timeout,
            f"connection #{index}",
        )

    def wait_for_session_end(self, timeout: float = 5.0, index: int | None = None) -> SimSession:
        """Block until session ``index`` has ended (default: until there is a session and
        all sessions so far have ended; returns the last). Raises ``TimeoutError``."""

        def check() -> SimSession | None:
            if index is not None:
                if len(self._sessions) > index and self._sessions[index].ended:
                    return self._sessions[index]
                return None
            if self._sessions and all(s.ended for s in self._sessions):
                return self._sessions[-1]
            return None

        return self._wait(check, timeout, "the end of the session")

    def _wait(
        self, check: Callable[[], SimSession | None], timeout: float, what: str
    ) -> SimSession:
        deadline = time.monotonic() + timeout
        with self._recorder.cond:
            while True:
                result = check()
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout} s")
                self._recorder.cond.wait(remaining)

    # -- HTTP ----------------------------------------------------------------------------------

    def _create_connection(
        self, sock: socket.socket, protocol: ServerProtocol, server: Server, **kwargs: Any
    ) -> ServerConnection:
        # Runs on websockets' handler thread for the new TCP connection: name it and the
        # reader thread the connection starts, so leaks are visible and close() joins them.
        with self._lock:
            self._conn_count += 1
            index = self._conn_count
            self._threads = [t for t in self._threads if t.is_alive()]
        handler_thread = threading.current_thread()
        if self._is_post(sock):
            # websockets' HTTP parser refuses request bodies: answer the POST here, then
            # make websockets drop the (already answered) connection.
            handler_thread.name = f"elevenconv-sim-http-{index}"
            with self._lock:
                self._threads.append(handler_thread)
            self._serve_post(sock)
            raise _HandledOutside
        handler_thread.name = f"elevenconv-sim-conn-{index}"
        conn = _SimConnection(sock, protocol, server, **kwargs)
        conn.sim_index = index
        conn.recv_events_thread.name = f"elevenconv-sim-recv-{index}"
        with self._lock:
            self._threads += [handler_thread, conn.recv_events_thread]
        return conn

    def _is_post(self, sock: socket.socket) -> bool:
        """Peek at the request line (nothing is consumed)."""
        with self._lock:
            if self._closed:
                return False
            self._peeking.add(sock)
        try:
            sock.settimeout(self.close_timeout + 8.0)
            seen = b""
            while len(seen) < 5 and b"POST "[: len(seen)] == seen:
                seen = sock.recv(5, socket.MSG_PEEK)
                if not seen:
                    return False
            return seen == b"POST "
        except OSError:
            return False  # websockets sees the same socket and ends it
        finally:
            with self._lock:
                self._peeking.discard(sock)
            try:
                sock.settimeout(None)
            except OSError:
                pass

    def _serve_post(self, sock: socket.socket) -> None:
        handler = type("_BoundPostHandler", (_PostHandler,), {"sim": self})
        try:
            handler(sock, sock.getpeername(), None)
        except OSError as exc:
            logger.debug("POST connection failed: %s", exc)

    def _post(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """Answer a POST: ``(status, JSON body)``."""
        url = urlsplit(path)
        match = _POST_PATH.match(url.path)
        if url.path in (SIGNED_URL_PATH, SIGNED_URL_PATH_OLD, TOKEN_PATH, CONVERSATION_PATH):
            return 405, {"detail": {"status": "method_not_allowed", "message": "Use GET"}}
        if match is None:
            return 404, {"detail": {"status": "not_found", "message": "Not Found"}}
        conversation_id = match.group("id")
        if not any(s.conversation_id == conversation_id for s in self.sessions):
            return 404, {
                "detail": {
                    "status": "conversation_not_found",
                    "message": f"Conversation {conversation_id!r} not found",
                }
            }
        if match.group("what") == "files":
            return self._upload(conversation_id, headers, body)
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return 400, _invalid_body("the body is not JSON")
        if not isinstance(data, dict):
            return 400, _invalid_body("expected a JSON object")
        like = data.get("feedback")
        rating = data.get("rating")
        if like is not None and like not in ("like", "dislike"):
            return 422, _invalid_body("feedback must be 'like' or 'dislike'")
        if rating is not None and (
            isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5
        ):
            return 422, _invalid_body("rating must be an integer from 1 to 5")
        if like is None and rating is None:
            return 422, _invalid_body("give feedback ('like'/'dislike') or a rating")
        if data.get("comment") is not None and not isinstance(data["comment"], str):
            return 422, _invalid_body("comment must be a string")
        with self._recorder.cond:
            self.conversation_feedback.append({"conversation_id": conversation_id, **data})
            self._recorder.cond.notify_all()
        return 200, {}

    def _upload(
        self, conversation_id: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        content_type = headers.get("content-type", "")
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            return 400, _invalid_body("expected multipart/form-data with a 'file' part")
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") != "file":
                continue
            payload = part.get_payload(decode=True)
            record = UploadRecord(
                conversation_id,
                f"file_sim_{secrets.token_hex(8)}",
                part.get_filename(),
                part.get_content_type(),
                payload if isinstance(payload, bytes) else b"",
            )
            with self._recorder.cond:
                self.uploads.append(record)
                self._recorder.cond.notify_all()
            return 200, {"file_id": record.file_id}
        return 400, _invalid_body("the form has no 'file' part")

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        response = self._route(conn, request, url.path, query)
        status = 101 if response is None else response.status_code
        with self._lock:
            self.http_requests.append(HttpRecord(time.monotonic(), request.path, status, headers))
        return response

    def _route(
        self, conn: ServerConnection, request: Request, path: str, query: dict[str, str]
    ) -> Response | None:
        headers = request.headers
        if request.method == "OPTIONS":  # CORS preflight, for any path
            return _cors_preflight()
        if request.method != "GET":
            return _json_response(
                405, {"detail": {"status": "method_not_allowed", "message": "Use GET"}}
            )
        agent = self._agents.get(query.get("agent_id", ""))
        if path in (SIGNED_URL_PATH, SIGNED_URL_PATH_OLD):
            if headers.get("xi-api-key") != self.api_key:
                return _invalid_api_key()
            if agent is None:
                return _not_found_agent(query.get("agent_id"))
            return _json_response(200, {"signed_url": self.signed_url(agent.agent_id)})
        if path == TOKEN_PATH:
            # Public agents hand out tokens to anyone (the browser client fetches one with
            # no key); a private agent's token needs the API key, like a signed URL.
            if agent is None:
                return _not_found_agent(query.get("agent_id"))
            key = headers.get("xi-api-key")
            if (agent.private or key is not None) and key != self.api_key:
                return _invalid_api_key()
            return _json_response(200, {"token": self.conversation_token(agent.agent_id)})
        if path != CONVERSATION_PATH:
            return _json_response(404, {"detail": {"status": "not_found", "message": "Not Found"}})
        if agent is None:
            return _not_found_agent(query.get("agent_id"))
        signature = query.get("conversation_signature")
        bearer = _bearer_token(headers)
        signed = False
        if signature is not None:
            problem = self._consume_token(signature, agent.agent_id)
            if problem:
                return _invalid_signature(problem)
            signed = True
        if bearer is not None:
            problem = self._consume_token(bearer, agent.agent_id, kind="token")
            if problem:
                return _invalid_signature(problem)
        elif not signed and agent.private and headers.get("xi-api-key") != self.api_key:
            return _json_response(
                403,
                {
                    "detail": {
                        "status": "authentication_required",
                        "message": "This agent is private: use a signed URL, a conversation "
                        "token or an API key",
                    }
                },
            )
        if isinstance(conn, _SimConnection):
            conn.sim_request = _Admission(agent, query, signed, bearer is not None)
        return None

    def _consume_token(self, token: str, agent_id: str, *, kind: str = "signature") -> str | None:
        what = "conversation token" if kind == "token" else "signed URL"
        with self._lock:
            if (kind, token) in self._used_tokens:
                return f"This {what} was already used: fetch a new one"
            entry = self._tokens.pop((kind, token), None)
            if entry is None:
                return (
                    "Invalid conversation token"
                    if kind == "token"
                    else ("Invalid conversation signature")
                )
            self._used_tokens.add((kind, token))
        owner, expires = entry
        if owner != agent_id:
            return f"The {what} was issued for another agent"
        if time.monotonic() > expires:
            return f"This {what} has expired: fetch a new one"
        return None

    # -- connections -------------------------------------------------------------------------

    def _handle(self, conn: ServerConnection) -> None:
        assert isinstance(conn, _SimConnection)
        assert conn.sim_request is not None
        admission = conn.sim_request
        with self._recorder.cond:
            session = SimSession(
                len(self._sessions),
                conn,
                admission.agent,
                admission.query,
                signed=admission.signed,
                bearer=admission.bearer,
                subprotocol=conn.subprotocol,
                recorder=self._recorder,
                strict=self.strict,
                hooks=self._message_hooks,
                tts=self.tts,
                audio_chunk_seconds=self.audio_chunk_seconds,
            )
            self._sessions.append(session)
            self._recorder.cond.notify_all()
        for hook in list(self._connect_hooks):
            try:
                hook(session)
            except Exception:
                session.record_error("on_connect hook failed:\n" + traceback.format_exc())
        try:
            if self.script is not None:
                self._run_script(session, self.script)
            else:
                self._run_default(session)
        except (ConnectionClosed, SessionOver):
            pass
        except SimulatorError:
            _close_quietly(session, 1011, "simulator sent an invalid message")
        except Exception:
            session.record_error("handler failed:\n" + traceback.format_exc())
            _close_quietly(session, 1011, "simulator failed")
        finally:
            # Wait for websockets' reader so that the close frames are known.
            conn.recv_events_thread.join(self.close_timeout + 1.0)
            session.finish()

    def _run_script(self, session: SimSession, steps: tuple[Step, ...]) -> None:
        if not script_takes_handshake(steps):
            session.receive(None)  # the client's initiation (applied by receive())
            session.send_metadata()
        try:
            run_steps(session, steps, stopping=self._stopping)
        except ScriptFailure as exc:
            session.record_error(f"script failed: {exc}")
            _close_quietly(session, 1011, "simulator script failed")
            return
        while True:  # the script is done: keep recording until the client leaves
            session.receive(None)

    def _run_default(self, session: SimSession) -> None:
        faults = self.faults or session.agent.faults
        first = session.receive(None)
        pending = (
            None if client_message_kind(first) == "conversation_initiation_client_data" else first
        )
        if faults.metadata_delay and self._stopping.wait(faults.metadata_delay):
            return
        if not faults.send_metadata:
            while True:  # never answer; record until the client gives up
                session.receive(None)
        session.send_metadata()
        worker = AgentWorker(
            session,
            faults=faults,
            ping_interval=self.ping_interval,
            realtime_factor=self.audio_realtime_factor,
            stopping=self._stopping,
            vad=EnergyVad(**self.vad_options),
        )
        with self._lock:
            self._workers = [w for w in self._workers if w.thread.is_alive()]
            self._workers.append(worker)
        worker.start()
        try:
            if pending is not None:
                worker.feed(pending)
            while True:
                worker.feed(session.receive(None))
        finally:
            worker.stop()
            if not worker.join(self.close_timeout + 2.0):
                session.record_error("agent thread did not stop in time")


def _close_quietly(session: SimSession, code: int, reason: str) -> None:
    try:
        session.close(code, reason)
    except Exception:  # noqa: S110 - best effort on the way out
        pass


class _PostHandler(http.server.BaseHTTPRequestHandler):
    """One POST on a connection the simulator took over from websockets (stdlib parsing)."""

    sim: AgentSimulator
    protocol_version = "HTTP/1.1"
    timeout = 10.0

    def do_POST(self) -> None:
        """Read the body (Content-Length only), answer JSON, close."""
        self.close_connection = True
        status: int
        body: Any
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            status, body = 411, _invalid_body("send a Content-Length, not chunked encoding")
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_POST_BODY:
                status, body = 413, _invalid_body(f"the body must be 0 to {MAX_POST_BODY} bytes")
            else:
                data = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body = self.sim._post(self.path, headers, data)
        with self.sim._lock:
            self.sim.http_requests.append(
                HttpRecord(
                    time.monotonic(),
                    self.path,
                    status,
                    {k.lower(): v for k, v in self.headers.items()},
                )
            )
        out = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        for name, value in CORS_HEADERS:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        """To the module's logger at DEBUG (never stderr)."""
        logger.debug("POST: " + format, *args)


def _invalid_body(message: str) -> dict[str, Any]:
    return {"detail": {"status": "invalid_request", "message": message}}


def _select_subprotocol(
    conn: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Like the service: ``convai`` when offered (the ``bearer.<token>`` entry only carries
    # the credential and is never selected); a client that offers none gets none.
    return Subprotocol(MAIN_SUBPROTOCOL) if MAIN_SUBPROTOCOL in offered else None


def _bearer_token(headers: Headers) -> str | None:
    """The token of a ``bearer.<token>`` subprotocol offer, if any ("" if empty)."""
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        for item in value.split(","):
            item = item.strip()
            if item.lower().startswith(BEARER_PREFIX):
                return item[len(BEARER_PREFIX) :]
    return None


def _json_response(status: int, body: Any) -> Response:
    data = json.dumps(body).encode()
    phrase = http.HTTPStatus(status).phrase
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            *CORS_HEADERS,
            ("Connection", "close"),
        ]
    )
    return Response(status, phrase, headers, data)


def _cors_preflight() -> Response:
    headers = Headers([("Content-Length", "0"), *CORS_HEADERS, ("Connection", "close")])
    return Response(204, "No Content", headers, b"")


def _invalid_api_key() -> Response:
    return _json_response(
        401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
    )


def _invalid_signature(problem: str) -> Response:
    return _json_response(403, {"detail": {"status": "invalid_signature", "message": problem}})


def _not_found_agent(agent_id: str | None) -> Response:
    return _json_response(
        404,
        {"detail": {"status": "agent_not_found", "message": f"Agent {agent_id!r} not found"}},
    )


def _entry_matches(entry: TranscriptEntry, match: MessageMatch | None, session: int | None) -> bool:
    if session is not None and entry.session != session:
        return False
    if match is None:
        return True
    if isinstance(match, str):
        return entry.kind == match
    if not isinstance(entry.message, dict):
        return False
    try:
        return bool(match(entry.message))
    except Exception:
        return False


def _describe(match: MessageMatch) -> str:
    return repr(match) if isinstance(match, str) else getattr(match, "__name__", "matching")


# -- standalone ------------------------------------------------------------------------------


def serve_forever(port: int = 8765, host: str = "127.0.0.1", **options: Any) -> None:
    """Run a simulator in the main thread until SIGINT (Ctrl-C) or SIGTERM.

    ``options`` are :class:`AgentSimulator` keyword arguments. Prints where it listens.
    ``elevenconv simulate`` is the same with options, a banner and ``--record``.
    """
    from elevenconv.testing._cli import _StopSignals

    with (
        _StopSignals(signal.SIGINT, signal.SIGTERM) as stop,
        AgentSimulator(host=host, port=port, **options) as sim,
    ):
        print(
            f"elevenconv agent simulator on {sim.base_url}\n"
            f"  agent id: {DEFAULT_AGENT_ID}   api key: {sim.api_key}\n"
            f"  websocket: {sim.ws_url()}\n"
            "  Ctrl-C to stop",
            flush=True,
        )
        stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m elevenconv.testing._simulator --port 8765``, the
    same as ``elevenconv simulate`` (see :mod:`elevenconv.testing._cli`)."""
    from elevenconv.testing._cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
