"""Per-connection state of the simulator, and what it records.

:class:`SimSession` wraps one accepted WebSocket (``websockets.sync.server``): it reads and
checks client messages (:meth:`SimSession.receive`, handler thread only), sends server
messages through one lock after checking them against the contract
(:meth:`SimSession.send`, any thread), and records both directions in the simulator's
:class:`Recorder`. :class:`AgentConfig` and :class:`ToolRule` describe simulated agents.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from elevenconv.errors import ConfigurationError
from elevenconv.testing._contract import _CLIENT_EVENTS as _CONTRACT_CLIENT_EVENTS
from elevenconv.testing._contract import (
    AUDIO_FORMATS,
    client_message_kind,
    validate_client_message,
    validate_server_message,
)
from elevenconv.testing._sim_steps import Faults

if TYPE_CHECKING:
    from elevenconv.testing._sim_audio import TtsEngine

__all__ = [
    "DEFAULT_FIRST_MESSAGE",
    "DEFAULT_TOOLS",
    "AgentConfig",
    "Recorder",
    "ResponseRecord",
    "SessionOver",
    "SimSession",
    "SimulatorError",
    "ToolRule",
    "TranscriptEntry",
    "Violation",
]

logger = logging.getLogger(__name__)

DEFAULT_FIRST_MESSAGE = "Hello! I'm the simulated agent. How can I help you today?"

#: The longest close reason a close frame can carry (RFC 6455: 125 bytes minus the code).
_MAX_REASON = 123

_VAR_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class SimulatorError(AssertionError):
    """The simulator itself misbehaved (it built a message the contract rejects), or its
    threads did not stop. An ``AssertionError`` so that it fails a test plainly."""


class SessionOver(Exception):
    """Internal: the session ended (closed or dropped by the simulator); stop handling it."""


@dataclass(frozen=True)
class ToolRule:
    """A client tool the default agent calls when a user message contains ``keyword``.

    Fields:
        keyword: word (case-insensitive, whole word) that triggers the call.
        tool_name: the ``client_tool_call.tool_name``.
        parameters: the ``client_tool_call.parameters``.
        reply: what the agent says with the result; ``{result}`` and ``{tool_name}`` are
            substituted.
        timeout: seconds to wait for the ``client_tool_result`` before apologising.
    """

    keyword: str
    tool_name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reply: str = "The {tool_name} tool says: {result}"
    timeout: float = 10.0

    @staticmethod
    def coerce(keyword: str, value: ToolRule | tuple[str, Mapping[str, Any]] | str) -> ToolRule:
        """Accept a :class:`ToolRule`, a ``(tool_name, parameters)`` pair or a tool name."""
        if isinstance(value, ToolRule):
            return value
        if isinstance(value, str):
            return ToolRule(keyword, value)
        name, params = value
        return ToolRule(keyword, name, MappingProxyType(dict(params)))


#: Tools of the default agent: "what time is it?" calls the client tool ``get_current_time``.
DEFAULT_TOOLS: Mapping[str, ToolRule] = MappingProxyType(
    {"time": ToolRule("time", "get_current_time", reply="The time is {result}.")}
)


#: What the service sends when an agent's configuration names no ``client_events`` (the
#: contract's documented default): no ``client_tool_call``, no text parts, no ``vad_score``.
#: Give an agent ``client_events=CONTRACT_DEFAULT_CLIENT_EVENTS`` to reproduce it.
CONTRACT_DEFAULT_CLIENT_EVENTS: frozenset[str] = frozenset(
    {
        "audio",
        "interruption",
        "agent_response",
        "user_transcript",
        "tentative_user_transcript",
        "conversation_initiation_metadata",
        "ping",
    }
)

#: The simulator's agents' ``client_events`` unless given: every server event, like an
#: agent with the usual boxes ticked, except ``vad_score``, the ``internal_*`` ones and the
#: start-up messages ``asr_initiation_metadata`` and ``mcp_connection_status`` (enable them
#: to receive them).
SIM_CLIENT_EVENTS: frozenset[str] = frozenset(_CONTRACT_CLIENT_EVENTS) - {
    "vad_score",
    "internal_turn_probability",
    "internal_tentative_agent_response",
    "asr_initiation_metadata",
    "mcp_connection_status",
}

#: Sent whatever ``client_events`` says (a client cannot start, or learn why it ended).
ALWAYS_SENT: frozenset[str] = frozenset(
    {"conversation_initiation_metadata", "error", "client_error"}
)


def _client_events(value: Iterable[str] | None, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigurationError(f"{where}: client_events must be a list of event names")
    events = frozenset(value)
    unknown = sorted(events - set(_CONTRACT_CLIENT_EVENTS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown client_events {unknown}; use names of server messages "
            f"({', '.join(_CONTRACT_CLIENT_EVENTS)})"
        )
    return events


@dataclass(frozen=True)
class AgentConfig:
    """A simulated agent. Create with :meth:`AgentSimulator.add_agent` (or directly).

    Fields:
        agent_id: the ``agent_id`` query parameter that selects it.
        private: a private agent needs a signed URL (or the ``xi-api-key`` header).
        first_message: said when the conversation starts (``{{var}}`` dynamic variables
            are substituted); ``None`` or ``""``: wait for the user.
        output_format / input_format: the audio formats announced in the metadata.
        tools: keyword -> :class:`ToolRule` (the default agent's client tools). Passing
            ``tools`` replaces :data:`DEFAULT_TOOLS`.
        text_only: text mode unless the client overrides ``conversation.text_only``.
        language: recorded default language.
        user_transcript: the text of a ``user_transcript`` after detected speech;
            ``{duration}`` (seconds, float) is substituted.
        respond: optional ``fn(user_text) -> reply | None``: a custom brain consulted
            before the built-in rules (``None`` falls through to them).
        allow_overrides: ``False`` answers any ``conversation_config_override`` with an
            ``override_error`` and close 1008, as a locked-down real agent does.
        faults: :class:`Faults` for this agent's conversations.
        client_events: the server events the agent sends (others are not sent: they are
            counted in ``SimSession.suppressed``); ``None``: ``SIM_CLIENT_EVENTS``.
            ``CONTRACT_DEFAULT_CLIENT_EVENTS`` is what the service sends for an agent
            that names none. A client's ``conversation.client_events`` override replaces it.
        mcp_approval_timeout: seconds the default agent's MCP tool call waits for
            ``mcp_tool_approval_result`` (its ``approval_timeout_secs``) before failing.
    """

    agent_id: str
    private: bool = False
    first_message: str | None = DEFAULT_FIRST_MESSAGE
    output_format: str = "pcm_16000"
    input_format: str = "pcm_16000"
    tools: Mapping[str, ToolRule] = field(default_factory=lambda: DEFAULT_TOOLS)
    text_only: bool = False
    language: str = "en"
    user_transcript: str = "(spoken {duration:.1f} s)"
    respond: Callable[[str], str | None] | None = None
    allow_overrides: bool = True
    faults: Faults = field(default_factory=Faults)
    client_events: frozenset[str] | None = None
    mcp_approval_timeout: int = 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_events", _client_events(self.client_events, "AgentConfig"))
        if isinstance(self.mcp_approval_timeout, bool) or not (
            isinstance(self.mcp_approval_timeout, int) and self.mcp_approval_timeout > 0
        ):
            raise ConfigurationError("AgentConfig.mcp_approval_timeout must be an int > 0")
        for name in ("output_format", "input_format"):
            if getattr(self, name) not in AUDIO_FORMATS:
                raise ConfigurationError(
                    f"AgentConfig.{name}={getattr(self, name)!r}: expected one of "
                    + ", ".join(AUDIO_FORMATS)
                )
        if not self.agent_id:
            raise ConfigurationError("AgentConfig.agent_id must not be empty")
        tools = {kw: ToolRule.coerce(kw, rule) for kw, rule in dict(self.tools).items()}
        object.__setattr__(self, "tools", MappingProxyType(tools))


@dataclass(frozen=True)
class TranscriptEntry:
    """One WebSocket message, as recorded by the simulator.

    Fields:
        t: ``time.monotonic()`` when it was sent or received.
        direction: ``"in"`` (client -> simulator) or ``"out"`` (simulator -> client).
        message: the decoded JSON object; for a frame that is not a JSON object, the raw
            ``str`` (text frame) or ``bytes`` (binary frame).
        conversation_id: the session's conversation id.
        session: index of the session (connection) in ``AgentSimulator.sessions``.
    """

    t: float
    direction: Literal["in", "out"]
    message: dict[str, Any] | str | bytes
    conversation_id: str
    session: int = 0

    @property
    def kind(self) -> str | None:
        """The message kind (``type``, or ``"user_audio_chunk"``); ``None`` if not a message."""
        if not isinstance(self.message, dict):
            return None
        if self.direction == "out":
            kind = self.message.get("type")
            return kind if isinstance(kind, str) else None
        try:
            return client_message_kind(self.message)
        except ValueError:
            return None


@dataclass(frozen=True)
class Violation:
    """A client message that broke the contract (the simulator answered with error + 1008).

    Fields:
        conversation_id: the session's conversation id.
        message: the offending message (decoded, or the raw frame).
        problems: one line per problem.
    """

    conversation_id: str
    message: dict[str, Any] | str | bytes
    problems: tuple[str, ...]


@dataclass
class ResponseRecord:
    """One agent utterance of the default agent.

    Fields:
        event_id: its event id (shared by its ``agent_response``, parts and audio).
        text: the full text.
        audio_seconds: duration of its audio (0 in text-only mode).
        chunks_sent / chunks_total: audio chunks sent so far / in all.
        interrupted: the user barged in before all audio was sent.
        truncated_text: the text as corrected after an interruption.
    """

    event_id: int
    text: str
    audio_seconds: float = 0.0
    chunks_sent: int = 0
    chunks_total: int = 0
    interrupted: bool = False
    truncated_text: str | None = None


class Recorder:
    """What the simulator recorded across all sessions, guarded by one Condition.

    Writers are the handler and agent threads; readers (tests) block on the Condition
    until what they wait for is recorded -- no polling.
    """

    def __init__(self, *, record_audio: bool = True) -> None:
        """Create an empty recorder. ``record_audio=False`` leaves audio out of the transcript."""
        self.cond = threading.Condition()
        self.record_audio = record_audio
        self.transcript: list[TranscriptEntry] = []
        self.violations: list[Violation] = []
        self.errors: list[str] = []
        self.contract_errors: list[str] = []

    def add(self, entry: TranscriptEntry) -> None:
        """Append a transcript entry and wake waiters."""
        with self.cond:
            self.transcript.append(entry)
            self.cond.notify_all()

    def add_violation(self, violation: Violation) -> None:
        """Record a client contract violation and wake waiters."""
        with self.cond:
            self.violations.append(violation)
            self.cond.notify_all()

    def add_error(self, text: str, *, contract: bool = False) -> None:
        """Record a script failure or internal error (``contract``: an invalid outgoing
        message, a simulator bug) and wake waiters."""
        with self.cond:
            (self.contract_errors if contract else self.errors).append(text)
            self.cond.notify_all()

    def notify(self) -> None:
        """Wake waiters (a session changed state)."""
        with self.cond:
            self.cond.notify_all()


ClientMessageHook = Callable[["SimSession", Any], None]


class SimSession:
    """One client connection to the simulator: its settings, what it did, how it ended.

    Attributes are written by the connection's handler and agent threads and are meant
    to be read by tests (after waiting on the simulator, e.g. ``wait_for_session_end``).

    Settings: ``index``, ``agent`` (:class:`AgentConfig`), ``agent_id``,
    ``conversation_id``, ``query`` (all query parameters), ``source``, ``version``,
    ``signed`` (came with a valid signature), ``bearer`` (came with a valid conversation
    token as the ``bearer.<token>`` subprotocol), ``subprotocol`` (the one selected:
    ``"convai"`` or ``None``).

    From ``conversation_initiation_client_data``: ``initiation`` (the raw message or
    ``None``), ``overrides`` (``conversation_config_override``), ``first_message``,
    ``text_only``, ``language``, ``tts``, ``dynamic_variables``, ``custom_llm_extra_body``,
    ``user_id``, ``source_info``.

    Activity: ``feedback``, ``contextual_updates`` (texts), ``user_activity_count``,
    ``multimodal_messages``, ``tool_results``, ``mcp_approvals``, ``user_texts``, ``responses``
    (:class:`ResponseRecord`), ``interruptions`` (the event ids of the ``interruption``
    messages: the user's turn, higher than the interrupted response's; see
    ``ResponseRecord.interrupted``), ``pong_delays`` (seconds),
    ``metadata_sent``, ``client_events`` (what this conversation sends, after any override)
    and ``suppressed`` (types not sent because ``client_events`` leave them out).

    End: ``ended`` (bool), ``close_code`` / ``close_reason`` (the first close frame,
    ``None`` if the TCP connection dropped without one), ``closed_by``
    (``"client"``/``"server"``/``None``), ``dropped``.
    """

    def __init__(
        self,
        index: int,
        conn: ServerConnection,
        agent: AgentConfig,
        query: Mapping[str, str],
        *,
        signed: bool,
        bearer: bool = False,
        subprotocol: str | None = None,
        recorder: Recorder,
        strict: bool,
        hooks: list[ClientMessageHook],
        tts: TtsEngine,
        audio_chunk_seconds: float,
    ) -> None:
        """Wrap an accepted connection. Handler thread only; it does not send anything."""
        self.index = index
        self.conn = conn
        self.agent = agent
        self.agent_id = agent.agent_id
        self.query = dict(query)
        self.source = self.query.get("source")
        self.version = self.query.get("version")
        self.signed = signed
        self.bearer = bearer
        self.subprotocol = subprotocol
        self.conversation_id = f"conv_sim_{secrets.token_hex(8)}"
        self.started_at = time.monotonic()
        self.tts: TtsEngine = tts
        self.audio_chunk_seconds = audio_chunk_seconds
        self._recorder = recorder
        self._strict = strict
        self._hooks = hooks
        self._send_lock = threading.Lock()
        self._id_lock = threading.Lock()
        self._next_id = 1
        self._pings: dict[int, float] = {}
        self._last_ping_ms: int | None = None
        # Initiation (defaults until the client's init message says otherwise).
        self.initiation: dict[str, Any] | None = None
        self.overrides: dict[str, Any] = {}
        self.first_message: str | None = agent.first_message
        self.text_only = agent.text_only
        self.client_events: frozenset[str] = (
            agent.client_events if agent.client_events is not None else SIM_CLIENT_EVENTS
        )
        self.language = agent.language
        self.tts_override: dict[str, Any] | None = None
        self.dynamic_variables: dict[str, Any] = {}
        self.custom_llm_extra_body: dict[str, Any] | None = None
        self.user_id: str | None = None
        self.source_info: dict[str, Any] | None = None
        # Activity.
        self.metadata_sent = False
        self.feedback: list[dict[str, Any]] = []
        self.contextual_updates: list[str] = []
        self.user_activity_count = 0
        self.multimodal_messages: list[dict[str, Any]] = []
        self.tool_results: list[dict[str, Any]] = []
        self.user_texts: list[str] = []
        self.responses: list[ResponseRecord] = []
        self.interruptions: list[int] = []
        self.pong_delays: list[float] = []
        self.mcp_approvals: list[dict[str, Any]] = []
        self.suppressed: list[str] = []
        # End.
        self.ended = False
        self.ended_at: float | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: Literal["client", "server"] | None = None
        self.dropped = False

    def __repr__(self) -> str:
        return (
            f"<SimSession #{self.index} {self.conversation_id} agent={self.agent_id!r}"
            f" ended={self.ended} close_code={self.close_code}>"
        )

    # -- ids -----------------------------------------------------------------------------

    def next_event_id(self) -> int:
        """The next event id of this conversation (increasing integers, thread-safe)."""
        with self._id_lock:
            value = self._next_id
            self._next_id += 1
            return value

    # -- sending (any thread) ------------------------------------------------------------

    def sends(self, message_type: str) -> bool:
        """Whether this conversation's ``client_events`` let a ``message_type`` through."""
        return message_type in ALWAYS_SENT or message_type in self.client_events

    def send(
        self,
        message: Mapping[str, Any] | str | bytes,
        *,
        validate: bool = True,
        filtered: bool = True,
    ) -> None:
        """Send one message: a dict as JSON text, ``str`` verbatim, ``bytes`` as binary.

        A dict whose ``type`` the conversation's ``client_events`` do not enable is not
        sent (``filtered=False`` sends it anyway): its type is appended to
        :attr:`suppressed`, as the service silently drops it.

        Any thread; sends are serialised by a lock, so messages never interleave and the
        transcript order is the wire order. A dict is checked against the contract first
        unless ``validate=False`` (fault injection): an invalid message is recorded in
        ``contract_errors`` and, in strict mode, not sent -- :class:`SimulatorError` is
        raised instead. Raises ``websockets.exceptions.ConnectionClosed`` if the
        connection is closed.
        """
        if isinstance(message, Mapping):
            payload: dict[str, Any] | str | bytes = dict(message)
            kind = message.get("type")
            if filtered and isinstance(kind, str) and not self.sends(kind):
                with self._send_lock:
                    self.suppressed.append(kind)
                logger.debug("session %d: %s not sent (not in client_events)", self.index, kind)
                return
            if validate:
                problems = validate_server_message(payload)
                if problems:
                    text = f"session {self.index}: invalid server message {_excerpt(payload)}: "
                    text += "; ".join(problems)
                    self._recorder.add_error(text, contract=True)
                    if self._strict:
                        raise SimulatorError(text)
            wire: str | bytes = json.dumps(payload)
        else:
            payload = message
            wire = message
        with self._send_lock:
            self._record("out", payload)
            self.conn.send(wire)

    def send_error(
        self, message: str, *, code: int = 1008, error_type: str = "invalid_message"
    ) -> None:
        """Send an ``error`` message, as the service does just before it closes."""
        self.send(
            {
                "type": "error",
                "error_event": {"code": code, "message": message, "error_type": error_type},
            }
        )

    def fail(
        self, message: str, *, code: int = 1008, error_type: str = "invalid_message"
    ) -> NoReturn:
        """Send an ``error`` then close with ``code``; raises :class:`SessionOver`."""
        try:
            self.send_error(message, code=code, error_type=error_type)
            self.close(code, message)
        except ConnectionClosed:
            pass
        raise SessionOver(message)

    def send_metadata(
        self,
        *,
        conversation_id: str | None = None,
        output_format: str | None = None,
        input_format: str | None = None,
    ) -> None:
        """Send ``conversation_initiation_metadata`` (defaults: this session's values)."""
        if conversation_id is not None:
            self.conversation_id = conversation_id
        self.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": self.conversation_id,
                    "agent_output_audio_format": output_format or self.agent.output_format,
                    "user_input_audio_format": input_format or self.agent.input_format,
                },
            }
        )
        self.metadata_sent = True

    def send_ping(self) -> int:
        """Send a ``ping``; ``ping_ms`` is the previous ping's measured delay. Returns its id."""
        event_id = self.next_event_id()
        with self._id_lock:
            self._pings[event_id] = time.monotonic()
            ping_ms = self._last_ping_ms
        self.send({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}})
        return event_id

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code``/``reason`` and wait (up to the close timeout) for the client."""
        self.conn.close(code, _truncate_reason(reason))

    def drop(self, *, reset: bool = False) -> None:
        """Cut the TCP connection without a close frame; ``reset=True`` sends a RST."""
        self.dropped = True
        sock = self.conn.socket
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # close_socket() also ends the connection's reader thread.
        self.conn.close_socket()

    # -- receiving (handler thread only) ---------------------------------------------------

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """Read, record and check the next client message; handler thread only.

        Returns the decoded message. A frame that breaks the contract (binary, not JSON,
        unknown type, bad fields, bad base64 audio) is recorded as a :class:`Violation`,
        answered with ``error`` (1008, ``invalid_message``) and a close 1008, and raises
        :class:`SessionOver`. Raises ``TimeoutError`` after ``timeout`` seconds and
        ``websockets.exceptions.ConnectionClosed`` when the connection ends.
        """
        raw = self.conn.recv(timeout)
        if isinstance(raw, bytes):
            self._record("in", raw)
            self._violate(raw, ["binary frames are not part of the protocol; send JSON text"])
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            self._record("in", raw)
            self._violate(raw, [f"invalid JSON: {exc}"])
        if not isinstance(msg, dict):
            self._record("in", raw)
            self._violate(raw, ["message: expected a JSON object"])
        self._record("in", msg)
        problems = validate_client_message(msg)
        if not problems and "user_audio_chunk" in msg and "type" not in msg:
            try:
                base64.b64decode(msg["user_audio_chunk"], validate=True)
            except (binascii.Error, ValueError) as exc:
                problems = [f"user_audio_chunk: invalid base64 ({exc})"]
        if problems:
            self._violate(msg, problems)
        self._bookkeep(msg)
        for hook in list(self._hooks):
            try:
                hook(self, msg)
            except Exception:
                self._recorder.add_error(
                    f"session {self.index}: on_client_message hook failed:\n"
                    + traceback.format_exc()
                )
        return msg

    def _violate(self, message: dict[str, Any] | str | bytes, problems: list[str]) -> NoReturn:
        logger.info(
            "session %d: a client message broke the contract: %s", self.index, "; ".join(problems)
        )
        self._recorder.add_violation(Violation(self.conversation_id, message, tuple(problems)))
        self.fail("Invalid message received: " + "; ".join(problems))

    def _bookkeep(self, msg: dict[str, Any]) -> None:
        kind = client_message_kind(msg)
        if kind == "conversation_initiation_client_data":
            if self.initiation is None:
                self.apply_initiation(msg)
        elif kind == "pong":
            with self._id_lock:
                sent = self._pings.pop(msg["event_id"], None)
                if sent is not None:
                    delay = time.monotonic() - sent
                    self.pong_delays.append(delay)
                    self._last_ping_ms = round(delay * 1000)
        elif kind == "feedback":
            self.feedback.append(msg)
        elif kind == "contextual_update":
            self.contextual_updates.append(msg["text"])
        elif kind == "user_activity":
            self.user_activity_count += 1
        elif kind == "multimodal_message":
            self.multimodal_messages.append(msg)
        elif kind == "client_tool_result":
            self.tool_results.append(msg)
        elif kind == "mcp_tool_approval_result":
            self.mcp_approvals.append(msg)
        elif kind == "user_message" and isinstance(msg.get("text"), str):
            self.user_texts.append(msg["text"])

    def apply_initiation(self, msg: dict[str, Any]) -> None:
        """Honour ``conversation_initiation_client_data``; handler thread, before metadata.

        Refuses (error + close 1008, raising :class:`SessionOver`) overrides when the agent
        forbids them, and a first message naming a dynamic variable that was not given.
        """
        self.initiation = msg
        overrides = msg.get("conversation_config_override") or {}
        self.overrides = dict(overrides)
        if overrides and not self.agent.allow_overrides:
            self.fail(
                "Overrides are not enabled for this agent",
                error_type="override_error",
            )
        agent_ov = overrides.get("agent") or {}
        if "first_message" in agent_ov:
            self.first_message = agent_ov["first_message"]
        if agent_ov.get("language"):
            self.language = agent_ov["language"]
        self.tts_override = overrides.get("tts")
        conversation = overrides.get("conversation") or {}
        if conversation.get("text_only") is not None:
            self.text_only = bool(conversation["text_only"])
        if conversation.get("client_events") is not None:
            self.client_events = frozenset(conversation["client_events"])
        self.dynamic_variables = dict(msg.get("dynamic_variables") or {})
        self.custom_llm_extra_body = msg.get("custom_llm_extra_body")
        self.user_id = msg.get("user_id")
        self.source_info = msg.get("source_info")
        if self.first_message:
            self.first_message = self.substitute(self.first_message)

    def substitute(self, text: str) -> str:
        """Replace ``{{name}}`` with dynamic variables (and ``system__*`` built-ins).

        A missing variable ends the session like the service does: error
        ``missing_dynamic_variable`` and close 1008 (raises :class:`SessionOver`).
        """
        values: dict[str, Any] = {
            "system__conversation_id": self.conversation_id,
            "system__agent_id": self.agent_id,
            "system__time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        values.update(self.dynamic_variables)
        missing = [name for name in _VAR_RE.findall(text) if name not in values]
        if missing:
            self.fail(
                f"Missing required dynamic variables: {', '.join(sorted(set(missing)))}",
                error_type="missing_dynamic_variable",
            )
        return _VAR_RE.sub(lambda m: str(values[m.group(1)]), text)

    # -- end ------------------------------------------------------------------------------

    def finish(self) -> None:
        """Record how the connection ended; handler thread, once it is closed."""
        protocol = self.conn.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
            self.closed_by, self.close_code, self.close_reason = "client", rcvd.code, rcvd.reason
        elif sent is not None:
            self.closed_by, self.close_code, self.close_reason = "server", sent.code, sent.reason
        elif self.dropped:
            self.closed_by = "server"
        self.ended_at = time.monotonic()
        self.ended = True
        self._recorder.notify()

    def record_error(self, text: str) -> None:
        """Record a script failure or internal error for this session."""
        self._recorder.add_error(f"session {self.index} ({self.conversation_id}): {text}")

    def _record(
        self, direction: Literal["in", "out"], message: dict[str, Any] | str | bytes
    ) -> None:
        if (
            not self._recorder.record_audio
            and isinstance(message, dict)
            and ("user_audio_chunk" in message or message.get("type") == "audio")
        ):
            return
        self._recorder.add(
            TranscriptEntry(time.monotonic(), direction, message, self.conversation_id, self.index)
        )


def _truncate_reason(reason: str) -> str:
    data = reason.encode()
    if len(data) <= _MAX_REASON:
        return reason
    return data[: _MAX_REASON - 3].decode(errors="ignore") + "..."


def _excerpt(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
