"""The Agents WebSocket protocol, without I/O.

This module turns server JSON text into typed, frozen events and builds every client
message. It has no sockets, threads, queues or clocks, so it is tested with plain data
(the pattern of h11's ``Connection`` and websockets' ``Protocol``)::

    proto = ConversationProtocol()
    send(proto.initiation_message(config))           # first message on the socket
    for event in proto.receive_text(frame):           # each text frame from the server
        ...                                           # dispatch on type(event)

Everything that affects the protocol's state lives in :class:`ConversationProtocol`:
the conversation id and audio formats (from ``conversation_initiation_metadata``), the
interruption watermark (audio older than the last ``interruption`` is stale), the last
agent event that feedback applies to, and the client tool calls awaiting a result.

The message shapes follow the AsyncAPI contract ``agent.asyncapi.yaml`` of the
ElevenLabs Agents platform; the test-suite cross-checks them against it.

Events. Each server message class names the :class:`~elevenconv.Conversation` event it
becomes (``EVENT``) and that event's arguments (``event_args()``); ``message`` (the raw
dict) is posted for every message as well, known or not. Callback names of the browser
client ``@elevenlabs/client`` in snake_case:

Event(arguments): when.

* ``user_transcript(text: str)``: the final transcription of what the user said.
* ``tentative_user_transcript(text: str)``: an in-progress transcription.
* ``agent_response(text: str)``: the agent's full reply for a turn.
* ``agent_response_attachments(attachments: tuple[AgentResponseAttachment, ...],
  event_id: int)``: after ``agent_response``, when the agent attached files (0.22+).
* ``agent_response_correction(original: str, corrected: str)``: what was really said
  before a barge-in.
* ``agent_chat_response_part(text: str, part_type: str)``: streamed text in text-only
  mode (``start``/``delta``/``stop``).
* ``agent_reasoning_response_part(text: str, part_type: str)``: streamed reasoning.
* ``interruption(event_id: int)``: the user barged in.
* ``conversation_metadata(metadata: ConversationInitiationMetadataEvent)``: the server's
  metadata (conversation id, audio formats), before ``session_started``.
* ``asr_initiation_metadata(metadata: Mapping[str, Any])``: speech-recognition set-up.
* ``client_tool_call(tool_name: str, parameters: dict)``: the agent calls a client tool.
* ``agent_tool_request(event: AgentToolRequestEvent)``: the agent starts a tool call of
  any type (client, webhook, system, MCP).
* ``agent_tool_response(event: AgentToolResponseEvent | AgentToolResponseFullPayloadEvent)``:
  a tool call finished (``tool_name == "end_call"``: the agent ends the call).
* ``mcp_tool_call(event: McpToolCallEvent)``: progress of an MCP tool call; in state
  ``awaiting_approval`` the server waits ``approval_timeout_secs`` for
  ``mcp_tool_approval_result``.
* ``mcp_connection_status(integrations: tuple[McpIntegrationStatus, ...])``: the state of
  the agent's MCP integrations.
* ``guardrail_triggered()``: a guardrail blocked the agent's output.
* ``context_usage(event: ContextUsageEvent)``: LLM context-window use after a turn.
* ``rich_content(event: RichContentEvent)``: a UI component for the client to show.
* ``agent_typing(is_typing: bool, duration_ms: int | None)``: an external agent types.
* ``external_agent_connected()`` / ``external_agent_disconnected()``: a human or external
  agent took over / handed back.
* ``vad_score(score: float)``: voice activity of the user's audio, 0..1 (when enabled).
* ``latency_measurement(ping_ms: int | None)``: the server's round-trip estimate, per ping.
* ``internal_turn_probability(probability: float)``,
  ``internal_tentative_agent_response(text: str)``: internal, when enabled.
* ``can_send_feedback_change(can_send_feedback: bool)``: from
  :meth:`ConversationProtocol.take_feedback_change` (a new unrated agent response, or
  feedback sent).
* ``error(exc: ServerError)``: an ``error`` / ``client_error`` message.
* ``message(message: dict)``: every message, raw, known or not.

``audio`` messages have no ``EVENT``: the Conversation posts ``audio`` with decoded PCM.
Unknown message types (:class:`UnknownEvent`) reach ``message`` listeners only.

Thread-safety: one :class:`ConversationProtocol` is not locked. The I/O shell
(:class:`elevenconv.Conversation`) serialises calls that change state.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from elevenconv.errors import LocalProtocolError, RemoteProtocolError, ServerError

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_FORMATS",
    "AgentChatResponsePartEvent",
    "AgentReasoningResponsePartEvent",
    "AgentResponseAttachment",
    "AgentResponseCorrectionEvent",
    "AgentResponseEvent",
    "AgentToolRequestEvent",
    "AgentToolResponseEvent",
    "AgentToolResponseFullPayloadEvent",
    "AgentTypingEvent",
    "AsrInitiationMetadataEvent",
    "AudioAlignment",
    "AudioEvent",
    "ClientToolCallEvent",
    "ContextUsageEvent",
    "ConversationInitiationData",
    "ConversationInitiationMetadataEvent",
    "ConversationProtocol",
    "ErrorEvent",
    "ExternalAgentConnectedEvent",
    "ExternalAgentDisconnectedEvent",
    "GuardrailTriggeredEvent",
    "InternalTentativeAgentResponseEvent",
    "InternalTurnProbabilityEvent",
    "InterruptionEvent",
    "McpConnectionStatusEvent",
    "McpIntegrationStatus",
    "McpToolCallEvent",
    "PingEvent",
    "RichContentEvent",
    "ServerEvent",
    "TentativeUserTranscriptEvent",
    "UnknownEvent",
    "UserTranscriptEvent",
    "VadScoreEvent",
    "client_tool_result_text",
    "encode_message",
]

#: Audio encodings the contract allows for agent output and user input.
AUDIO_FORMATS: Final = (
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
)
DEFAULT_AUDIO_FORMAT: Final = "pcm_16000"

PartType = Literal["start", "delta", "stop"]

# --------------------------------------------------------------------------------------
# Events (server -> client). One frozen dataclass per message type of the contract.
# Every event keeps the decoded message as ``raw`` (excluded from repr and equality).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerEvent:
    """Base class of every decoded server message.

    ``raw`` is the whole decoded JSON object, for fields this version does not model.

    ``EVENT`` is the name of the :class:`~elevenconv.Conversation` event the message is
    posted as (``None``: internal, such as ``audio`` before decoding, or ``UnknownEvent``,
    which only reaches ``message`` listeners) and :meth:`event_args` its arguments, so a
    router can do ``post(ev.EVENT, *ev.event_args())``. See the module's events table.
    """

    EVENT: ClassVar[str | None] = None

    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def event_args(self) -> tuple[Any, ...]:
        """The arguments of the ``EVENT`` event (empty for events without any)."""
        return ()

    def conversation_events(self) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        """Every ``(event, args)`` this message produces, in order: usually just
        ``(EVENT, event_args())``; ``agent_response`` with attachments adds
        ``agent_response_attachments``. Empty when ``EVENT`` is ``None``."""
        if self.EVENT is None:
            return ()
        return ((self.EVENT, self.event_args()),)


@dataclass(frozen=True)
class AudioAlignment:
    """Character timings of an audio chunk: ``chars``, ``char_start_times_ms``,
    ``char_durations_ms`` (equal lengths)."""

    chars: tuple[str, ...]
    char_start_times_ms: tuple[int, ...]
    char_durations_ms: tuple[int, ...]


@dataclass(frozen=True)
class AudioEvent(ServerEvent):
    """``audio``: a chunk of agent speech.

    ``audio_base_64`` is kept encoded so that decoding happens on the audio thread,
    not the reader; :attr:`audio` decodes it. ``event_id`` ties the chunk to an agent
    response (see :meth:`ConversationProtocol.is_audio_current`). The encoding is the
    conversation's ``agent_output_audio_format``.
    """

    audio_base_64: str
    event_id: int
    alignment: AudioAlignment | None = None

    @property
    def audio(self) -> bytes:
        """The raw audio bytes (raises :class:`RemoteProtocolError` on bad base64)."""
        try:
            return base64.b64decode(self.audio_base_64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RemoteProtocolError(
                "audio_base_64 is not valid base64", self.audio_base_64
            ) from exc


@dataclass(frozen=True)
class UserTranscriptEvent(ServerEvent):
    """``user_transcript``: the final transcription of what the user said."""

    EVENT: ClassVar[str | None] = "user_transcript"

    text: str
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self.text,)


@dataclass(frozen=True)
class TentativeUserTranscriptEvent(ServerEvent):
    """``tentative_user_transcript``: an in-progress transcription (may still change)."""

    EVENT: ClassVar[str | None] = "tentative_user_transcript"

    text: str
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self.text,)


@dataclass(frozen=True)
class AgentResponseAttachment:
    """A file the agent attached to a reply (``agent_response_event.attachments``).

    ``url`` is where to fetch it, ``name`` its file name, ``mime_type`` its media type
    when the server says (``None`` otherwise).
    """

    url: str
    name: str
    mime_type: str | None = None


@dataclass(frozen=True)
class AgentResponseEvent(ServerEvent):
    """``agent_response``: the agent's full text reply for one turn.

    ``attachments`` are the files the agent attached (contract 0.22+; empty if none).
    The ``agent_response`` event carries the text only, so existing handlers keep their
    signature; attachments come as ``agent_response_attachments(attachments, event_id)``
    (see :meth:`conversation_events`).
    """

    EVENT: ClassVar[str | None] = "agent_response"

    text: str
    event_id: int
    attachments: tuple[AgentResponseAttachment, ...] = ()

    def event_args(self) -> tuple[Any, ...]:
        return (self.text,)

    def conversation_events(self) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        events: tuple[tuple[str, tuple[Any, ...]], ...] = (("agent_response", (self.text,)),)
        if self.attachments:
            events += (("agent_response_attachments", (self.attachments, self.event_id)),)
        return events


@dataclass(frozen=True)
class AgentResponseCorrectionEvent(ServerEvent):
    """``agent_response_correction``: after an interruption, what was actually said."""

    EVENT: ClassVar[str | None] = "agent_response_correction"

    original: str
    corrected: str
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self.original, self.corrected)


@dataclass(frozen=True)
class AgentChatResponsePartEvent(ServerEvent):
    """``agent_chat_response_part``: a streamed text chunk (text-only mode).

    ``part_type`` is ``"start"``, ``"delta"`` or ``"stop"``; ``text`` is empty for the
    first and last.
    """

    EVENT: ClassVar[str | None] = "agent_chat_response_part"

    text: str
    part_type: PartType
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self.text, self.part_type)


@dataclass(frozen=True)
class AgentReasoningResponsePartEvent(ServerEvent):
    """``agent_reasoning_response_part`` (experimental): streamed reasoning text.

    Note: the contract types this ``event_id`` as a string, unlike every other one.
    """

    EVENT: ClassVar[str | None] = "agent_reasoning_response_part"

    text: str
    part_type: PartType
    event_id: str

    def event_args(self) -> tuple[Any, ...]:
        return (self.text, self.part_type)


@dataclass(frozen=True)
class InterruptionEvent(ServerEvent):
    """``interruption``: the user barged in; agent audio before ``event_id`` is stale."""

    EVENT: ClassVar[str | None] = "interruption"

    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self.event_id,)


@dataclass(frozen=True)
class ConversationInitiationMetadataEvent(ServerEvent):
    """``conversation_initiation_metadata``: the conversation id and audio formats."""

    EVENT: ClassVar[str | None] = "conversation_metadata"

    conversation_id: str
    agent_output_audio_format: str
    user_input_audio_format: str

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class ClientToolCallEvent(ServerEvent):
    """``client_tool_call``: the agent asks the client to run ``tool_name``.

    ``expects_response`` is ``False`` when the agent does not wait for a result (the
    field is optional on the wire and defaults to ``True``).
    """

    EVENT: ClassVar[str | None] = "client_tool_call"

    tool_name: str
    tool_call_id: str
    parameters: Mapping[str, Any]
    event_id: int
    expects_response: bool = True

    def event_args(self) -> tuple[Any, ...]:
        return (self.tool_name, dict(self.parameters))


@dataclass(frozen=True)
class RichContentEvent(ServerEvent):
    """``rich_content`` (experimental): a UI component for the client to display."""

    EVENT: ClassVar[str | None] = "rich_content"

    rich_content_id: str
    component: str
    props: Mapping[str, Any]
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class AgentToolRequestEvent(ServerEvent):
    """``agent_tool_request``: the agent started a tool call (client, webhook or MCP)."""

    EVENT: ClassVar[str | None] = "agent_tool_request"

    tool_name: str
    tool_call_id: str
    tool_type: str
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class AgentToolResponseEvent(ServerEvent):
    """``agent_tool_response``: a tool call finished. ``tool_name == "end_call"`` means
    the agent is ending the conversation."""

    EVENT: ClassVar[str | None] = "agent_tool_response"

    tool_name: str
    tool_call_id: str
    tool_type: str
    is_error: bool
    is_called: bool
    event_id: int

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class AgentToolResponseFullPayloadEvent(ServerEvent):
    """``agent_tool_response_full_payload``: as :class:`AgentToolResponseEvent`, plus the
    tool's whole result (``truncated`` if it was cut to fit)."""

    EVENT: ClassVar[str | None] = "agent_tool_response"

    tool_name: str
    tool_call_id: str
    tool_type: str
    is_error: bool
    is_called: bool
    event_id: int
    full_tool_result: str
    is_blocked: bool = False
    truncated: bool = False

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class McpToolCallEvent(ServerEvent):
    """``mcp_tool_call``: progress of a Model Context Protocol tool call.

    ``state`` is ``loading``, ``awaiting_approval``, ``success`` or ``failure``. Fields of
    each state: ``approval_timeout_secs`` (awaiting approval: answer within it with
    ``mcp_tool_approval_result``, see :attr:`awaiting_approval`), ``result`` (success: the
    MCP content blocks), ``error_message`` (failure); ``None`` in the other states.
    ``data`` is the whole ``mcp_tool_call`` object.
    """

    EVENT: ClassVar[str | None] = "mcp_tool_call"

    service_id: str
    tool_call_id: str
    tool_name: str
    state: str
    parameters: Mapping[str, Any]
    data: Mapping[str, Any]
    timestamp: str = ""
    tool_description: str | None = None
    approval_timeout_secs: int | None = None
    result: tuple[Mapping[str, Any], ...] | None = None
    error_message: str | None = None

    @property
    def awaiting_approval(self) -> bool:
        """``True`` if the call waits for the client's approval."""
        return self.state == "awaiting_approval"

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class McpIntegrationStatus:
    """One MCP integration of ``mcp_connection_status``.

    ``integration_type`` is ``"mcp_server"`` or ``"mcp_integration"``.
    """

    integration_id: str
    integration_type: str
    is_connected: bool
    tool_count: int = 0


@dataclass(frozen=True)
class McpConnectionStatusEvent(ServerEvent):
    """``mcp_connection_status``: the state of each MCP integration of the agent."""

    EVENT: ClassVar[str | None] = "mcp_connection_status"

    integrations: tuple[McpIntegrationStatus, ...]

    def event_args(self) -> tuple[Any, ...]:
        return (self.integrations,)


@dataclass(frozen=True)
class VadScoreEvent(ServerEvent):
    """``vad_score``: voice activity probability of the user's audio, 0..1."""

    EVENT: ClassVar[str | None] = "vad_score"

    score: float

    def event_args(self) -> tuple[Any, ...]:
        return (self.score,)


@dataclass(frozen=True)
class PingEvent(ServerEvent):
    """``ping``: keep-alive. The client answers ``pong`` at once (the library does).

    ``ping_ms`` is the server's estimate of the round trip, ``None`` at first.
    """

    EVENT: ClassVar[str | None] = "latency_measurement"

    event_id: int
    ping_ms: int | None = None

    def event_args(self) -> tuple[Any, ...]:
        return (self.ping_ms,)


@dataclass(frozen=True)
class ContextUsageEvent(ServerEvent):
    """``context_usage``: LLM context-window usage after an agent turn."""

    EVENT: ClassVar[str | None] = "context_usage"

    event_id: int
    model: str
    context_tokens: int
    context_limit_tokens: int

    def event_args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class AsrInitiationMetadataEvent(ServerEvent):
    """``asr_initiation_metadata``: speech-recognition set-up details."""

    EVENT: ClassVar[str | None] = "asr_initiation_metadata"

    metadata: Mapping[str, Any]

    def event_args(self) -> tuple[Any, ...]:
        return (self.metadata,)


@dataclass(frozen=True)
class GuardrailTriggeredEvent(ServerEvent):
    """``guardrail_triggered``: a guardrail fired on the agent's output."""

    EVENT: ClassVar[str | None] = "guardrail_triggered"


@dataclass(frozen=True)
class InternalTurnProbabilityEvent(ServerEvent):
    """``internal_turn_probability`` (internal): turn-taking probability, 0..1."""

    EVENT: ClassVar[str | None] = "internal_turn_probability"

    probability: float

    def event_args(self) -> tuple[Any, ...]:
        return (self.probability,)


@dataclass(frozen=True)
class InternalTentativeAgentResponseEvent(ServerEvent):
    """``internal_tentative_agent_response`` (internal): a draft agent reply."""

    EVENT: ClassVar[str | None] = "internal_tentative_agent_response"

    text: str

    def event_args(self) -> tuple[Any, ...]:
        return (self.text,)


@dataclass(frozen=True)
class AgentTypingEvent(ServerEvent):
    """``agent_typing``: an external agent is (or stopped) typing."""

    EVENT: ClassVar[str | None] = "agent_typing"

    is_typing: bool
    duration_ms: int | None = None

    def event_args(self) -> tuple[Any, ...]:
        return (self.is_typing, self.duration_ms)


@dataclass(frozen=True)
class ExternalAgentConnectedEvent(ServerEvent):
    """``external_agent_connected``: a human/external agent took over."""

    EVENT: ClassVar[str | None] = "external_agent_connected"


@dataclass(frozen=True)
class ExternalAgentDisconnectedEvent(ServerEvent):
    """``external_agent_disconnected``: the AI agent resumed control."""

    EVENT: ClassVar[str | None] = "external_agent_disconnected"


@dataclass(frozen=True)
class ErrorEvent(ServerEvent):
    """``error`` (or its newer name ``client_error``): the server reports an error and
    usually closes the connection with ``code``.

    :meth:`to_exception` gives the :class:`~elevenconv.errors.ServerError` delivered to
    ``error`` listeners; ``message`` is the server's text, verbatim.
    """

    EVENT: ClassVar[str | None] = "error"

    code: int | None
    message: str
    error_type: str | None = None
    reason: str | None = None
    debug_message: str | None = None
    details: Mapping[str, Any] | None = None

    def to_exception(self) -> ServerError:
        text = self.message or self.reason or self.debug_message or ""
        return ServerError(
            text,
            code=self.code,
            error_type=self.error_type,
            reason=self.reason,
            raw=dict(self.raw),
        )

    def event_args(self) -> tuple[Any, ...]:
        return (self.to_exception(),)


@dataclass(frozen=True)
class UnknownEvent(ServerEvent):
    """A message whose ``type`` this version does not know. Never dropped: it is
    delivered to ``message`` listeners with ``raw`` intact."""

    type: str


# --------------------------------------------------------------------------------------
# Field readers: strict on what the contract requires, so that a malformed message is
# reported as a RemoteProtocolError instead of a KeyError deep in a thread.
# --------------------------------------------------------------------------------------


class _Reader:
    """Reads typed fields out of one message; raises RemoteProtocolError naming the path."""

    __slots__ = ("obj", "path", "text")

    def __init__(self, obj: Any, path: str, text: str) -> None:
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"{path} must be an object", text)
        self.obj: dict[str, Any] = obj
        self.path = path
        self.text = text

    def _fail(self, key: str, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.path}.{key} {what}", self.text)

    def sub(self, key: str) -> _Reader:
        if key not in self.obj:
            raise self._fail(key, "is missing")
        return _Reader(self.obj[key], f"{self.path}.{key}", self.text)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.obj.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "is missing" if key not in self.obj else "must be a string")
        return value

    def opt_string(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "must be a string or null")
        return value

    def integer(self, key: str) -> int:
        value = self.obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "is missing" if key not in self.obj else "must be an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "must be an integer or null")
        return value

    def number(self, key: str) -> float:
        value = self.obj.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self._fail(key, "is missing" if key not in self.obj else "must be a number")
        return float(value)

    def boolean(self, key: str, default: bool | None = None) -> bool:
        value = self.obj.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "is missing" if key not in self.obj else "must be a boolean")
        return value

    def mapping(self, key: str, default: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        value = self.obj.get(key, default)
        if not isinstance(value, dict):
            raise self._fail(key, "is missing" if key not in self.obj else "must be an object")
        return value

    def part_type(self, key: str) -> PartType:
        value = self.obj.get(key)
        if value == "start":
            return "start"
        if value == "delta":
            return "delta"
        if value == "stop":
            return "stop"
        raise self._fail(key, "must be 'start', 'delta' or 'stop'")

    def audio_format(self, key: str) -> str:
        # Any non-empty name: the voice layer checks the codec (and fails the start with a
        # clear error); a text-only session is not affected by a codec it never decodes.
        value = self.string(key)
        if not value.strip():
            raise self._fail(key, "must be a non-empty audio format name")
        return value


def _parse_alignment(r: _Reader) -> AudioAlignment | None:
    if r.obj.get("alignment") is None:
        return None
    a = r.sub("alignment")
    chars, starts, durs = (
        a.obj.get("chars"),
        a.obj.get("char_start_times_ms"),
        a.obj.get("char_durations_ms"),
    )
    if not (isinstance(chars, list) and isinstance(starts, list) and isinstance(durs, list)):
        raise RemoteProtocolError(
            f"{a.path} needs chars, char_start_times_ms and char_durations_ms lists", a.text
        )
    if not all(isinstance(c, str) for c in chars) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in (*starts, *durs)
    ):
        raise RemoteProtocolError(f"{a.path} lists have wrongly typed items", a.text)
    return AudioAlignment(tuple(chars), tuple(starts), tuple(durs))


def _parse_attachments(r: _Reader) -> tuple[AgentResponseAttachment, ...]:
    items = r.obj.get("attachments")
    if items is None:
        return ()
    if not isinstance(items, list):
        raise RemoteProtocolError(f"{r.path}.attachments must be a list", r.text)
    out = []
    for index, item in enumerate(items):
        a = _Reader(item, f"{r.path}.attachments[{index}]", r.text)
        out.append(
            AgentResponseAttachment(a.string("url"), a.string("name"), a.opt_string("mime_type"))
        )
    return tuple(out)


def _parse_error(r: _Reader) -> ErrorEvent:
    # ``error_event`` per the contract; tolerate older servers that put the fields at
    # the top level (an error must never be lost because of its shape).
    e = r.sub("error_event") if isinstance(r.obj.get("error_event"), dict) else r
    details = e.obj.get("details")
    return ErrorEvent(
        code=e.opt_integer("code"),
        message=e.opt_string("message") or "",
        error_type=e.opt_string("error_type"),
        reason=e.opt_string("reason"),
        debug_message=e.opt_string("debug_message"),
        details=details if isinstance(details, dict) else None,
        raw=r.obj,
    )


def _parse(msg_type: str, r: _Reader) -> ServerEvent:
    raw = r.obj
    if msg_type == "audio":
        e = r.sub("audio_event")
        return AudioEvent(
            e.string("audio_base_64"), e.integer("event_id"), _parse_alignment(e), raw=raw
        )
    if msg_type == "user_transcript":
        e = r.sub("user_transcription_event")
        return UserTranscriptEvent(e.string("user_transcript"), e.integer("event_id"), raw=raw)
    if msg_type == "tentative_user_transcript":
        e = r.sub("tentative_user_transcription_event")
        return TentativeUserTranscriptEvent(
            e.string("user_transcript"), e.integer("event_id"), raw=raw
        )
    if msg_type == "agent_response":
        e = r.sub("agent_response_event")
        return AgentResponseEvent(
            e.string("agent_response"), e.integer("event_id"), _parse_attachments(e), raw=raw
        )
    if msg_type == "agent_response_correction":
        e = r.sub("agent_response_correction_event")
        return AgentResponseCorrectionEvent(
            e.string("original_agent_response"),
            e.string("corrected_agent_response"),
            e.integer("event_id"),
            raw=raw,
        )
    if msg_type == "agent_chat_response_part":
        e = r.sub("text_response_part")
        return AgentChatResponsePartEvent(
            e.string("text", ""), e.part_type("type"), e.integer("event_id"), raw=raw
        )
    if msg_type == "agent_reasoning_response_part":
        e = r.sub("reasoning_response_part")
        event_id = e.obj.get("event_id")
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)  # the contract says string; accept an integer too
        if not isinstance(event_id, str):
            raise RemoteProtocolError(f"{e.path}.event_id must be a string", r.text)
        return AgentReasoningResponsePartEvent(
            e.string("text", ""), e.part_type("type"), event_id, raw=raw
        )
    if msg_type == "interruption":
        return InterruptionEvent(r.sub("interruption_event").integer("event_id"), raw=raw)
    if msg_type == "conversation_initiation_metadata":
        e = r.sub("conversation_initiation_metadata_event")
        return ConversationInitiationMetadataEvent(
            e.string("conversation_id"),
            e.audio_format("agent_output_audio_format"),
            e.audio_format("user_input_audio_format"),
            raw=raw,
        )
    if msg_type == "client_tool_call":
        e = r.sub("client_tool_call")
        return ClientToolCallEvent(
            e.string("tool_name"),
            e.string("tool_call_id"),
            e.mapping("parameters", {}),
            e.integer("event_id"),
            e.boolean("expects_response", True),
            raw=raw,
        )
    if msg_type == "rich_content":
        e = r.sub("rich_content")
        return RichContentEvent(
            e.string("rich_content_id"),
            e.string("component"),
            e.mapping("props"),
            e.integer("event_id"),
            raw=raw,
        )
    if msg_type == "agent_tool_request":
        e = r.sub("agent_tool_request")
        return AgentToolRequestEvent(
            e.string("tool_name"),
            e.string("tool_call_id"),
            e.string("tool_type"),
            e.integer("event_id"),
            raw=raw,
        )
    if msg_type == "agent_tool_response":
        e = r.sub("agent_tool_response")
        return AgentToolResponseEvent(
            e.string("tool_name"),
            e.string("tool_call_id"),
            e.string("tool_type"),
            e.boolean("is_error"),
            e.boolean("is_called"),
            e.integer("event_id"),
            raw=raw,
        )
    if msg_type == "agent_tool_response_full_payload":
        e = r.sub("agent_tool_response_full_payload")
        return AgentToolResponseFullPayloadEvent(
            e.string("tool_name"),
            e.string("tool_call_id"),
            e.string("tool_type"),
            e.boolean("is_error"),
            e.boolean("is_called"),
            e.integer("event_id"),
            e.string("full_tool_result"),
            e.boolean("is_blocked", False),
            e.boolean("truncated", False),
            raw=raw,
        )
    if msg_type == "mcp_tool_call":
        e = r.sub("mcp_tool_call")
        state = e.string("state")
        timeout = e.opt_integer("approval_timeout_secs")
        result = e.obj.get("result")
        if state == "awaiting_approval" and timeout is None:
            timeout = 300  # the contract's default
        if result is not None and (
            not isinstance(result, list) or not all(isinstance(b, dict) for b in result)
        ):
            raise RemoteProtocolError(f"{e.path}.result must be a list of objects", r.text)
        return McpToolCallEvent(
            e.string("service_id"),
            e.string("tool_call_id"),
            e.string("tool_name"),
            state,
            e.mapping("parameters", {}),
            e.obj,
            e.string("timestamp", ""),
            e.opt_string("tool_description"),
            timeout,
            tuple(result) if result is not None else None,
            e.opt_string("error_message"),
            raw=raw,
        )
    if msg_type == "mcp_connection_status":
        e = r.sub("mcp_connection_status")
        integrations = e.obj.get("integrations")
        if not isinstance(integrations, list):
            raise RemoteProtocolError(f"{e.path}.integrations must be a list", r.text)
        statuses = []
        for index, item in enumerate(integrations):
            i = _Reader(item, f"{e.path}.integrations[{index}]", r.text)
            statuses.append(
                McpIntegrationStatus(
                    i.string("integration_id"),
                    i.string("integration_type"),
                    i.boolean("is_connected"),
                    i.integer("tool_count") if "tool_count" in i.obj else 0,
                )
            )
        return McpConnectionStatusEvent(tuple(statuses), raw=raw)
    if msg_type == "vad_score":
        return VadScoreEvent(r.sub("vad_score_event").number("vad_score"), raw=raw)
    if msg_type == "ping":
        e = r.sub("ping_event")
        return PingEvent(e.integer("event_id"), e.opt_integer("ping_ms"), raw=raw)
    if msg_type == "context_usage":
        e = r.sub("context_usage_event")
        return ContextUsageEvent(
            e.integer("event_id"),
            e.string("model"),
            e.integer("context_tokens"),
            e.integer("context_limit_tokens"),
            raw=raw,
        )
    if msg_type == "asr_initiation_metadata":
        return AsrInitiationMetadataEvent(r.mapping("asr_initiation_metadata_event"), raw=raw)
    if msg_type == "guardrail_triggered":
        return GuardrailTriggeredEvent(raw=raw)
    if msg_type == "internal_turn_probability":
        return InternalTurnProbabilityEvent(
            r.sub("turn_probability_internal_event").number("turn_probability"), raw=raw
        )
    if msg_type == "internal_tentative_agent_response":
        e = r.sub("tentative_agent_response_internal_event")
        return InternalTentativeAgentResponseEvent(e.string("tentative_agent_response"), raw=raw)
    if msg_type == "agent_typing":
        e = r.sub("agent_typing_event")
        return AgentTypingEvent(e.boolean("is_typing"), e.opt_integer("duration_ms"), raw=raw)
    if msg_type == "external_agent_connected":
        return ExternalAgentConnectedEvent(raw=raw)
    if msg_type == "external_agent_disconnected":
        return ExternalAgentDisconnectedEvent(raw=raw)
    if msg_type in ("error", "client_error"):
        return _parse_error(r)
    return UnknownEvent(msg_type, raw=raw)


#: Server message types this version decodes into their own event class.
KNOWN_SERVER_TYPES: Final = frozenset(
    {
        "audio",
        "user_transcript",
        "tentative_user_transcript",
        "agent_response",
        "agent_response_correction",
        "agent_chat_response_part",
        "agent_reasoning_response_part",
        "interruption",
        "conversation_initiation_metadata",
        "client_tool_call",
        "rich_content",
        "agent_tool_request",
        "agent_tool_response",
        "agent_tool_response_full_payload",
        "mcp_tool_call",
        "mcp_connection_status",
        "vad_score",
        "ping",
        "context_usage",
        "asr_initiation_metadata",
        "guardrail_triggered",
        "internal_turn_probability",
        "internal_tentative_agent_response",
        "agent_typing",
        "external_agent_connected",
        "external_agent_disconnected",
        "error",
        "client_error",
    }
)


# --------------------------------------------------------------------------------------
# Client messages
# --------------------------------------------------------------------------------------


@dataclass
class ConversationInitiationData:
    """What the first client message carries (same fields as the official SDK's class).

    ``extra_body`` is sent as ``custom_llm_extra_body``; ``conversation_config_override``
    overrides agent settings (``{"agent": {"first_message": ...}, "tts": {...}}``);
    ``dynamic_variables`` fill ``{{name}}`` placeholders in the agent's prompt.
    """

    extra_body: dict[str, Any] = field(default_factory=dict)
    conversation_config_override: dict[str, Any] = field(default_factory=dict)
    dynamic_variables: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None

    def __post_init__(self) -> None:
        # The official SDK accepts None for each dict; so do we.
        self.extra_body = dict(self.extra_body or {})
        self.conversation_config_override = dict(self.conversation_config_override or {})
        self.dynamic_variables = dict(self.dynamic_variables or {})


def encode_message(message: Mapping[str, Any]) -> str:
    """Serialise a client message to the compact JSON text sent on the socket."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"message is not JSON-serialisable: {exc}") from exc


def client_tool_result_text(tool_name: str, result: Any) -> str:
    """The ``result`` string of a ``client_tool_result`` for a handler's return value.

    ``str`` is sent as is, ``None`` as ``"Client tool: NAME called successfully."``,
    anything else JSON-encoded (so ``0``, ``False`` and ``[]`` are kept, not replaced).
    Raises :class:`LocalProtocolError` if the value cannot be JSON-encoded.
    """
    if result is None:
        return f"Client tool: {tool_name} called successfully."
    if isinstance(result, str):
        return result
    if isinstance(result, (bytes, bytearray)):
        return bytes(result).decode("utf-8", "replace")
    try:
        return json.dumps(result, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(
            f"client tool {tool_name!r} returned a {type(result).__name__} that is not "
            f"JSON-serialisable; return a str, None or JSON data"
        ) from exc


def _require_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class ConversationProtocol:
    """Protocol state of one conversation, plus the message builders.

    State (read-only attributes, changed only by :meth:`receive_text` and the builders):

    * ``conversation_id`` -- ``None`` until ``conversation_initiation_metadata``.
    * ``agent_output_audio_format`` / ``user_input_audio_format`` -- from the metadata,
      ``"pcm_16000"`` before it.
    * ``interrupt_watermark`` -- the highest ``interruption`` event id seen; audio with a
      lower ``event_id`` is stale (:meth:`is_audio_current`). Never decreases.
    * ``last_agent_event_id`` -- the newest agent response, which feedback applies to.
    * ``pending_tool_calls`` -- ``tool_call_id -> tool_name`` awaiting a result.
    """

    def __init__(self, *, source: str = "elevenconv", version: str | None = None) -> None:
        from elevenconv._version import __version__

        self.source = source
        self.version = version or __version__
        self.conversation_id: str | None = None
        self.agent_output_audio_format: str = DEFAULT_AUDIO_FORMAT
        self.user_input_audio_format: str = DEFAULT_AUDIO_FORMAT
        self.interrupt_watermark: int = 0
        self.last_agent_event_id: int = 0
        self.last_feedback_event_id: int = 0
        self.last_audio_event_id: int = 0
        self.pending_tool_calls: dict[str, str] = {}
        self._reported_can_send_feedback = False

    # -- receiving ----------------------------------------------------------------------

    def receive_text(self, text: str) -> list[ServerEvent]:
        """Decode one text frame from the server and update the state.

        Returns the events it carries (one, today). Raises :class:`RemoteProtocolError`
        -- carrying a truncated copy of ``text`` -- if it is not a message this module
        can read: not JSON, not an object, no ``type``, or a known type with missing or
        wrongly typed fields. State is unchanged then, and the caller should go on. Any
        other exception is a bug.
        """
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise RemoteProtocolError("server message is not valid JSON", text) from exc
        return [self.receive_message(obj, text)]

    def receive_message(self, obj: Any, text: str = "") -> ServerEvent:
        """Like :meth:`receive_text`, for an already-decoded JSON value."""
        if not isinstance(obj, dict):
            raise RemoteProtocolError("server message is not a JSON object", text or repr(obj))
        msg_type = obj.get("type")
        if not isinstance(msg_type, str):
            raise RemoteProtocolError("server message has no string 'type'", text or repr(obj))
        event = _parse(msg_type, _Reader(obj, msg_type, text or repr(obj)))
        self._update_state(event, text or repr(obj))
        return event

    def receive_bytes(self, data: bytes) -> list[ServerEvent]:
        """A binary frame: the protocol has none. Always raises :class:`RemoteProtocolError`."""
        raise RemoteProtocolError("unexpected binary frame from server", data)

    def _update_state(self, event: ServerEvent, text: str) -> None:
        if isinstance(event, ConversationInitiationMetadataEvent):
            if self.conversation_id is not None:
                raise RemoteProtocolError(
                    "second conversation_initiation_metadata ignored (conversation id already set)",
                    text,
                )
            self.conversation_id = event.conversation_id
            self.agent_output_audio_format = event.agent_output_audio_format
            self.user_input_audio_format = event.user_input_audio_format
        elif isinstance(event, InterruptionEvent):
            # An older (reordered) interruption must never lower the watermark.
            self.interrupt_watermark = max(self.interrupt_watermark, event.event_id)
        elif isinstance(event, (AgentResponseEvent, AgentChatResponsePartEvent)):
            self.last_agent_event_id = max(self.last_agent_event_id, event.event_id)
        elif isinstance(event, AudioEvent):
            self.last_audio_event_id = max(self.last_audio_event_id, event.event_id)
        elif isinstance(event, ClientToolCallEvent):
            self.pending_tool_calls[event.tool_call_id] = event.tool_name

    @property
    def can_send_feedback(self) -> bool:
        """``True`` while the newest agent response is not rated yet (:meth:`feedback`
        would build a message): turns ``True`` with each new agent response and
        ``False`` when :meth:`feedback` builds one. See :meth:`take_feedback_change`."""
        return self.last_agent_event_id > self.last_feedback_event_id

    def take_feedback_change(self) -> bool | None:
        """The new :attr:`can_send_feedback` if it changed since the last call, else
        ``None``. Call it after :meth:`receive_text` and :meth:`feedback` and post
        ``can_send_feedback_change(value)`` when it is not ``None``."""
        now = self.can_send_feedback
        if now == self._reported_can_send_feedback:
            return None
        self._reported_can_send_feedback = now
        return now

    def is_audio_current(self, event_id: int) -> bool:
        """``False`` if audio of ``event_id`` predates the last interruption (drop it).

        The reference browser client's rule: ids lower than the watermark are stale,
        an equal id is the new response and plays.
        """
        return event_id >= self.interrupt_watermark

    def interrupt_locally(self) -> None:
        """Treat all audio received so far as stale (the user stopped playback here).

        Raises the watermark past the newest audio ``event_id``; a later response,
        which has a higher id, plays normally.
        """
        self.interrupt_watermark = max(self.interrupt_watermark, self.last_audio_event_id + 1)

    # -- sending ------------------------------------------------------------------------

    def initiation_message(
        self, config: ConversationInitiationData | None = None, *, text_only: bool | None = None
    ) -> dict[str, Any]:
        """``conversation_initiation_client_data``: must be the first message sent.

        ``text_only=True`` sets ``conversation_config_override.conversation.text_only``
        (nested, as the contract says), without changing ``config``; ``None`` leaves the
        override as given.
        """
        config = config or ConversationInitiationData()
        override = dict(config.conversation_config_override)
        if text_only is not None:
            override = _deep_merge(override, {"conversation": {"text_only": text_only}})
        message: dict[str, Any] = {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": override,
            "custom_llm_extra_body": dict(config.extra_body),
            "dynamic_variables": dict(config.dynamic_variables),
            "source_info": {"source": self.source, "version": self.version},
        }
        if config.user_id is not None:
            message["user_id"] = _require_str("user_id", config.user_id)
        return message

    @staticmethod
    def pong_message(event_id: int) -> dict[str, Any]:
        """``pong`` echoing a ping's integer ``event_id``."""
        if isinstance(event_id, bool) or not isinstance(event_id, int):
            raise LocalProtocolError("pong event_id must be an int")
        return {"type": "pong", "event_id": event_id}

    @staticmethod
    def user_message(text: str, *, rich_content_id: str | None = None) -> dict[str, Any]:
        """``user_message``: text the user typed.

        ``rich_content_id``: the ``rich_content`` row whose button the user tapped, when
        the text comes from such a tap (the text says which button).
        """
        message: dict[str, Any] = {"type": "user_message", "text": _require_str("text", text)}
        if rich_content_id is not None:
            message["rich_content_id"] = _require_str("rich_content_id", rich_content_id)
        return message

    @staticmethod
    def contextual_update(text: str, *, context_id: str | None = None) -> dict[str, Any]:
        """``contextual_update``: background information that does not interrupt the agent.

        ``context_id``: updates with the same id replace each other in the agent's
        context (only the newest is kept).
        """
        message: dict[str, Any] = {
            "type": "contextual_update",
            "text": _require_str("text", text),
        }
        if context_id is not None:
            message["context_id"] = _require_str("context_id", context_id)
        return message

    @staticmethod
    def user_activity() -> dict[str, Any]:
        """``user_activity``: the user is active (typing); keeps the agent from talking over."""
        return {"type": "user_activity"}

    @staticmethod
    def user_audio_chunk(audio: bytes) -> dict[str, Any]:
        """The typeless user-audio message (``user_input_audio_format`` bytes)."""
        return {"user_audio_chunk": base64.b64encode(audio).decode("ascii")}

    def feedback(self, like: bool) -> dict[str, Any] | None:
        """``feedback`` on the newest agent response, or ``None`` if there is nothing to
        rate (no agent response yet, or this one was rated already)."""
        if not isinstance(like, bool):
            raise LocalProtocolError("like must be a bool")
        if self.last_agent_event_id <= self.last_feedback_event_id:
            return None
        self.last_feedback_event_id = self.last_agent_event_id
        return {
            "type": "feedback",
            "score": "like" if like else "dislike",
            "event_id": self.last_agent_event_id,
        }

    def client_tool_result(
        self, tool_call_id: str, result: str, *, is_error: bool
    ) -> dict[str, Any]:
        """``client_tool_result`` for a tool call; ``result`` must already be a str
        (see :func:`client_tool_result_text`)."""
        _require_str("tool_call_id", tool_call_id)
        _require_str("result", result)
        self.pending_tool_calls.pop(tool_call_id, None)
        return {
            "type": "client_tool_result",
            "tool_call_id": tool_call_id,
            "result": result,
            "is_error": bool(is_error),
        }

    @staticmethod
    def mcp_tool_approval_result(tool_call_id: str, approved: bool) -> dict[str, Any]:
        """``mcp_tool_approval_result``: allow or refuse an MCP tool call awaiting approval."""
        return {
            "type": "mcp_tool_approval_result",
            "tool_call_id": _require_str("tool_call_id", tool_call_id),
            "is_approved": bool(approved),
        }

    @staticmethod
    def multimodal_message(
        text: str | None = None,
        file_id: str | None = None,
        file_ids: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """``multimodal_message``: text and/or uploaded files' ids.

        The contract nests the text as a ``user_message`` object and each file as a
        ``file_input`` object. Like the official clients, ``files`` lists every file and
        ``file`` repeats the first (for servers older than contract 0.22). ``file_ids``
        lists the files; ``file_id`` alone means one file (given both, ``file_id`` comes
        first unless ``file_ids`` already has it).
        """
        if isinstance(file_ids, str):
            raise LocalProtocolError("file_ids must be a list of str, not a str")
        ids = [_require_str("file_ids item", i) for i in (file_ids or ())]
        if file_id is not None:
            _require_str("file_id", file_id)
            if file_id not in ids:
                ids.insert(0, file_id)
        if text is None and not ids:
            raise LocalProtocolError("a multimodal message needs text, a file id or both")
        message: dict[str, Any] = {"type": "multimodal_message"}
        if text is not None:
            message["text"] = {"type": "user_message", "text": _require_str("text", text)}
        if ids:
            files = [{"type": "file_input", "file_id": i} for i in ids]
            message["file"] = dict(files[0])
            message["files"] = files
        return message
