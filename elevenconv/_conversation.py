r"""The blocking, threaded Conversation: the I/O shell around :mod:`elevenconv.protocol`.

Thread model (one screen)::

    start_session() starts every thread at once, then waits (cancellable) for the metadata.

    [reader]  connect -> initiation message -> recv() -> protocol -> route:
                 |-pong, tool results ---------> Outbox.control -.
                 |-agent audio -> voice pipeline: audio_q -> [audio] -> decode, gain ->
                 |                AudioInterface.output()  (played audio = echo reference)
                 |-user-facing events -> events_q -> [events] -> handlers, one by one
                 '-client_tool_call -> ClientTools pool -result-> Outbox.control
    mic (device thread) -> voice pipeline: ring -> [capture] -> echo canceller ->
                 mute / echo guard -> encoder -> Outbox.mic (real time: dropped when late)
    Outbox -> [writer] -> socket          control first, then microphone audio
    [keepalive] pings a quiet link, ends a dead one (1011), bounds stalled sends and
                the close handshake

* ``elevenconv-reader-N`` owns the socket's receive side. It decodes, updates protocol
  state, answers pings and routes. It never runs user code and never blocks on a queue,
  so a slow handler cannot delay a pong or a barge-in.
* ``elevenconv-writer-N`` is the single write path, fed by the :class:`Outbox`
  (control: ``CONTROL_MAX_ITEMS`` / ``CONTROL_MAX_BYTES``; microphone: ``max_mic_lag``).
* ``elevenconv-events-N`` runs every event handler and callback, in order
  (``events_q``: ``EVENTS_QUEUE_SIZE`` events / ``EVENTS_QUEUE_BYTES``; beyond, dropped).
* ``elevenconv-keepalive-N`` owns the deadlines: ping interval, ping timeout, send
  timeout and close timeout (``Event.wait`` until the next one; no polling).
* ``elevenconv-audio-N`` and ``elevenconv-capture-N`` (voice mode) belong to the voice
  pipeline (:mod:`elevenconv._voice`, whose docstring draws both chains); the device's
  own threads (PortAudio's, ``elevenconv-mic`` of DefaultAudioInterface) belong to it.

Stop has one path: the reader's exit (server close, network loss, an abort by the
keepalive or by ``end_session()``) runs :meth:`Conversation._finish`, which closes the
Outbox, stops the voice pipeline (a sentinel for audio, a flag and a notify for
capture), joins audio, capture and writer within ``close_timeout`` (+ the 5 s drain when
the agent ended the call) + 1 s, then puts the events thread's sentinel and wakes the
keepalive. ``end_session()`` only queues the close frame, stops handlers and audio, and
returns; :meth:`Conversation.wait_for_session_end` is the barrier that waits for every
thread.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pyee import EventEmitter

from elevenconv._audio import AudioInterface
from elevenconv._client import ElevenLabsClient, add_source_params
from elevenconv._outbox import STOP, MicDrops, MicPiece, Outbox
from elevenconv._tools import ClientTools, ToolScope
from elevenconv._transport import (
    WebSocketFactory,
    WebSocketLike,
    closed_exception,
    create_websocket,
    redact_url,
)
from elevenconv._voice import AGENT_END_DRAIN_S, VoicePipeline
from elevenconv.errors import (
    AudioError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionFailedError,
    ElevenConvError,
    RemoteProtocolError,
    ServerError,
    SessionAlreadyStartedError,
    SessionCancelledError,
    SessionNotActiveError,
    StartTimeoutError,
    ToolError,
)
from elevenconv.protocol import (
    AgentToolResponseEvent,
    AudioEvent,
    ClientToolCallEvent,
    ConversationInitiationData,
    ConversationInitiationMetadataEvent,
    ConversationProtocol,
    ErrorEvent,
    InterruptionEvent,
    McpToolCallEvent,
    PingEvent,
    ServerEvent,
    encode_message,
)

__all__ = ["Conversation", "ConversationEvent"]

log = logging.getLogger(__name__)

ConversationEvent = Literal[
    "session_started",
    "conversation_started",
    "session_ended",
    "error",
    "conversation_metadata",
    "agent_response",
    "agent_response_attachments",
    "agent_response_correction",
    "user_transcript",
    "tentative_user_transcript",
    "agent_chat_response_part",
    "agent_reasoning_response_part",
    "audio",
    "audio_alignment",
    "interruption",
    "latency_measurement",
    "vad_score",
    "client_tool_call",
    "unhandled_client_tool_call",
    "agent_tool_request",
    "agent_tool_response",
    "mcp_tool_call",
    "mcp_connection_status",
    "guardrail_triggered",
    "context_usage",
    "rich_content",
    "agent_typing",
    "external_agent_connected",
    "external_agent_disconnected",
    "asr_initiation_metadata",
    "internal_turn_probability",
    "internal_tentative_agent_response",
    "can_send_feedback_change",
    "mode_change",
    "mic_audio_dropped",
    "message",
]

_STOP = object()  # sentinel: the consumer thread exits
_PING = object()  # writer item: a WebSocket ping frame

_ids = itertools.count(1)

#: Events waiting for the handlers: at most this many, and this many bytes (message
#: payloads counted); beyond either, new events are dropped (counted, logged).
EVENTS_QUEUE_SIZE = 10000
EVENTS_QUEUE_BYTES = 8 * 1024 * 1024
#: How long end_session() waits for a tidy teardown before it returns (the rest goes on
#: in the background, bounded by close_timeout; wait_for_session_end() waits for it).
END_SESSION_WAIT_S = 0.03
#: How long a cancelled start_session() waits for the threads before it raises.
CANCEL_WAIT_S = 0.05
#: ``mic_audio_dropped`` is posted at most this often during a burst of drops; a burst
#: ends after this long without a drop.
MIC_DROP_REPORT_S = 1.0

_EVENT_OVERHEAD = 64


@dataclass(frozen=True)
class _Close:
    """Writer item: send the close frame, then exit."""

    code: int = 1000


class _Deadline:
    """A monotonic deadline spanning several waits (websockets' sync.utils.Deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


class _ConvLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        conv = self.extra.get("conv") if self.extra else None
        return f"[{conv}] {msg}", kwargs


#: The longest untimed wait in a user's thread (wait_for_session_end), so that Ctrl+C
#: gets through on CPython versions whose untimed lock waits ignore it (3.13.0).
_INTERRUPT_SLICE_S = 0.25


def _interrupt_slice(deadline: _Deadline) -> float:
    remaining = deadline.remaining()
    return _INTERRUPT_SLICE_S if remaining is None else min(remaining, _INTERRUPT_SLICE_S)


def _wait_interruptibly(event: threading.Event, deadline: _Deadline) -> bool:
    """``event.wait()`` until ``deadline``, in slices a KeyboardInterrupt can break."""
    while not event.wait(_interrupt_slice(deadline)):
        if deadline.deadline is not None and not deadline.remaining():
            return event.is_set()
    return True


def _bytes_per_second(fmt: str) -> int:
    codec, _, rate = fmt.partition("_")
    try:
        hz = int(rate)
    except ValueError:
        return 32000
    return hz if codec == "ulaw" else 2 * hz


class Conversation(EventEmitter):
    """A conversation with an ElevenLabs agent, driven by background threads.

    Blocking API, no asyncio: :meth:`start_session` returns when the agent is ready,
    the ``send_*`` methods may be called from any thread, :meth:`end_session` is
    idempotent, safe from any thread (an event handler and a tool included) and returns
    within ~50 ms whatever handlers, tools, devices or the network are doing.

    Events (pyee): register with ``conversation.on("agent_response", handler)`` or as
    a decorator. Every handler runs on the ``elevenconv-events`` thread, in order; a
    handler that raises is logged once and reported as ``error``, and the session goes
    on. Marshal to your GUI thread from there (``root.after``, a Qt signal).

    ====================================  ================================================
    ``session_started()``                 connected, agent ready
    ``conversation_started(id)``          with the conversation id
    ``session_ended(id, code, reason)``   exactly once; ``code`` of the WebSocket close
                                          (1011 "keepalive ping timeout": dead link)
    ``error(exc)``                        an :class:`~elevenconv.errors.ElevenConvError`
                                          (server error, bad message, tool, handler or
                                          device failure, abnormal close); logged if
                                          unhandled
    ``agent_response(text)``              the agent's reply
    ``agent_response_correction(o, c)``   what was really said before an interruption
    ``user_transcript(text)``             what the user said (final)
    ``tentative_user_transcript(text)``   what the user is saying (may change)
    ``agent_chat_response_part(t, kind)`` streamed text, ``kind`` start/delta/stop
    ``audio(pcm, event_id)``              agent audio, PCM16 mono 16 kHz, as played
    ``audio_alignment(alignment, id)``    character timings of an audio chunk
    ``interruption(event_id)``            the user barged in; stale audio is dropped
    ``latency_measurement(ms)``           the server's ping round-trip estimate
    ``vad_score(score)``                  voice activity of the user's audio, 0..1
    ``client_tool_call(name, params)``    the agent called a client tool
    ``unhandled_client_tool_call(n, p)``  ... one that is not registered
    ``mode_change(mode)``                 ``"speaking"`` / ``"listening"``, from playback
    ``mic_audio_dropped(chunks, s)``      microphone audio was dropped because the link
                                          is too slow (at most once a second)
    ``message(dict)``                     every decoded server message, raw
    ====================================  ================================================

    Queues and their bounds: user sends wait up to ``send_timeout`` for room in the
    control queue (1,024 messages / 16 MiB), then raise. Microphone audio is real time:
    what is more than ``max_mic_lag`` seconds old when its turn comes is dropped oldest
    first. Events wait for the handlers up to 10,000 events / 8 MiB; beyond that new
    ones are dropped. Every drop is counted in :attr:`stats` and logged.

    Shutdown rule: after :meth:`end_session` returns, no handler, callback or tool
    starts any more, except the one ``session_ended`` (and ``callback_end_session``);
    handlers already running finish on their own thread; the queued backlog is
    discarded (``stats["discarded_events"]``). :meth:`wait_for_session_end` waits until
    every library thread, the handlers' included, has exited.

    Args:
        client: an :class:`ElevenLabsClient` (or the official SDK's client) for signed
            URLs; ``None`` builds one from ``ELEVENLABS_API_KEY`` / ``ELEVENLABS_BASE_URL``.
        agent_id: the agent to talk to.
        requires_auth: ``True`` for a private agent (a signed URL is fetched first).
        audio_interface: voice mode: the microphone and speaker (e.g.
            :class:`DefaultAudioInterface`); ``None`` for a text-only conversation.
        config: overrides, dynamic variables and the user id sent when the session starts.
        client_tools: tools the agent may call; may be shared by conversations.
        user_id: shorthand for ``config.user_id``.
        websocket_factory: ``factory(url, headers)`` returning a connected socket
            (tests, custom transports); default: websocket-client.
        text_only: the initiation flag; ``None`` = ``True`` exactly when there is no
            ``audio_interface``.
        callback_agent_response: ``callback(text)``: the official SDKs' callbacks (this
            one and the seven below) run on the events thread like handlers.
        callback_agent_response_correction: ``callback(original, corrected)``.
        callback_user_transcript: ``callback(text)``.
        callback_latency_measurement: ``callback(ms)``.
        callback_message_received: ``callback(message)``: every server message, raw.
        callback_agent_chat_response_part: ``callback(text, kind)``.
        callback_audio_alignment: ``callback(alignment)``.
        callback_end_session: ``callback()``, once, when the session has ended.
        environment: the agent environment for the URL (``None``: the default one).
        start_timeout: seconds for connecting and for the agent's metadata.
        close_timeout: seconds for the close handshake at the end.
        send_timeout: seconds a user send waits for room in the control queue, and a
            write may make no progress before the link is declared dead (1011).
        ping_interval: seconds of quiet after which the link is pinged (``None``: never).
        ping_timeout: seconds a ping may go unanswered before the link is declared
            dead (1011; ``None``: never).
        max_mic_lag: microphone audio older than this (seconds) when its turn to be
            sent comes is dropped.
        on_mcp_tool_approval_request: ``callback(event) -> bool`` answering MCP tool
            calls that await approval (one that raises refuses); ``None``: answer them
            with :meth:`send_mcp_tool_approval`.
        echo_cancellation: voice mode: ``None`` = on when the audio interface has an
            acoustic path and the ``audio`` extra (livekit) is installed, INFO log saying
            which; ``True`` = required (:class:`ImportError` naming the extra when
            missing); ``False`` = off (headphones).
        noise_suppression: voice mode: WebRTC noise suppression (needs the ``audio``
            extra too).
        echo_guard: half-duplex fallback: send silence while the agent speaks (you
            cannot barge in then).
        echo_guard_tail_s: seconds of silence after the agent stops, with ``echo_guard``.
        transport_options: keyword arguments for the default transport
            (``sslopt``, ``max_frame_size``, ``http_proxy_host``, ... of
            ``websocket.create_connection``).
    """

    def __init__(
        self,
        client: Any = None,
        agent_id: str | None = None,
        *,
        requires_auth: bool,
        audio_interface: AudioInterface | None = None,
        config: ConversationInitiationData | None = None,
        client_tools: ClientTools | None = None,
        user_id: str | None = None,
        websocket_factory: WebSocketFactory | None = None,
        text_only: bool | None = None,
        callback_agent_response: Callable[[str], Any] | None = None,
        callback_agent_response_correction: Callable[[str, str], Any] | None = None,
        callback_user_transcript: Callable[[str], Any] | None = None,
        callback_latency_measurement: Callable[[int], Any] | None = None,
        callback_message_received: Callable[[dict[str, Any]], Any] | None = None,
        callback_agent_chat_response_part: Callable[[str, str], Any] | None = None,
        callback_audio_alignment: Callable[[Any], Any] | None = None,
        callback_end_session: Callable[[], Any] | None = None,
        environment: str | None = None,
        start_timeout: float = 10.0,
        close_timeout: float = 2.0,
        send_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_mic_lag: float = 1.0,
        on_mcp_tool_approval_request: Callable[[McpToolCallEvent], bool] | None = None,
        echo_cancellation: bool | None = None,
        noise_suppression: bool = False,
        echo_guard: bool = False,
        echo_guard_tail_s: float = 0.3,
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not agent_id or not isinstance(agent_id, str):
            raise ConfigurationError("agent_id is required: the id of the agent to talk to")
        for name, value in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout)):
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, or None to disable it")
        if max_mic_lag <= 0:
            raise ConfigurationError("max_mic_lag must be > 0 seconds")
        self.client = client
        self.agent_id = agent_id
        self.requires_auth = requires_auth
        self.audio_interface = audio_interface
        self.config = config or ConversationInitiationData()
        if user_id is not None and self.config.user_id is None:
            self.config.user_id = user_id
        self._own_tools = client_tools is None
        self.client_tools = client_tools or ClientTools()
        self._factory = websocket_factory
        self.text_only = text_only
        self.environment = environment
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self.send_timeout = send_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_mic_lag = max_mic_lag
        self.echo_cancellation = echo_cancellation
        self.noise_suppression = noise_suppression
        self.on_mcp_tool_approval_request = on_mcp_tool_approval_request
        self._transport_options = dict(transport_options or {})
        self._once_handlers: dict[str, set[Callable[..., Any]]] = {}
        self._listening: dict[str, bool] = {}  # _has_listeners()' cache

        for event, callback in (
            ("agent_response", callback_agent_response),
            ("agent_response_correction", callback_agent_response_correction),
            ("user_transcript", callback_user_transcript),
            ("latency_measurement", callback_latency_measurement),
            ("message", callback_message_received),
            ("agent_chat_response_part", callback_agent_chat_response_part),
        ):
            if callback is not None:
                self.add_listener(event, callback)
        if callback_audio_alignment is not None:
            align_cb = callback_audio_alignment
            self.add_listener("audio_alignment", lambda alignment, _event_id: align_cb(alignment))
        if callback_end_session is not None:
            end_cb = callback_end_session
            self.add_listener("session_ended", lambda *_: end_cb())

        self._n = next(_ids)
        self._log = _ConvLog(log, {"conv": f"#{self._n}"})
        self._lock = threading.Lock()  # guards _state and the close bookkeeping
        self._proto_lock = threading.Lock()  # guards the (unlocked) protocol object
        self._protocol = ConversationProtocol()
        self._state: Literal["new", "starting", "active", "closing", "ended"] = "new"
        self._sock: WebSocketLike | None = None
        self._outbox = Outbox(max_lag=max_mic_lag)
        # SimpleQueue (C, one futex per wake-up) for the per-message hand-offs; their
        # bounds are kept by the producers (_post, _audio_put).
        self._events_q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._ev_lock = threading.Lock()
        self._ev_count = 0
        self._ev_bytes = 0
        self._frame_len = 0
        self._threads: dict[str, threading.Thread] = {}
        self._start_done = threading.Event()
        self._ended = threading.Event()
        self._wake_keepalive = threading.Event()
        # The keepalive sleeps past send ticks while no send happens; the writer's next
        # send then wakes it (see _keepalive_loop).
        self._keepalive_idle = False
        self._sends = 0
        self._connected = False
        self._cancelled = False  # end_session() or Ctrl+C during start_session()
        self._discard = False  # end_session() was called: no more handlers
        self._start_failed = False
        self._start_error: BaseException | None = None
        self._abort_reason: tuple[int, str] | None = None  # set by the keepalive
        self._close_requested_at: float | None = None
        self._initiator: Literal["user", "agent", "error"] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._last_server_error: ServerError | None = None
        self._last_rx = time.monotonic()
        self._mic_burst_last: float | None = None
        self._mic_pending = MicDrops()
        self._mic_reported_at = 0.0
        self._agent_ending = False
        self._tools: ToolScope | None = None  # this conversation's tool calls
        self._events_decoder: Any = None
        #: Counters: ``dropped_mic_chunks`` and ``dropped_mic_ms`` (microphone audio too
        #: late for the link), ``dropped_events`` (handlers too far behind),
        #: ``discarded_events`` (backlog left when end_session() was called),
        #: ``dropped_audio``, ``stale_audio`` (dropped after an interruption),
        #: ``bad_messages``.
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "dropped_mic_chunks",
                "dropped_mic_ms",
                "dropped_events",
                "discarded_events",
                "dropped_audio",
                "stale_audio",
                "bad_messages",
            ),
            0,
        )

        self._voice: VoicePipeline | None = None
        if audio_interface is not None:
            # Raises at once: ImportError (echo_cancellation=True without the extra).
            self._voice = VoicePipeline(
                audio_interface,
                _VoiceHooks(self),
                echo_cancellation=echo_cancellation,
                noise_suppression=noise_suppression,
                echo_guard=echo_guard,
                echo_guard_tail_s=echo_guard_tail_s,
                stats=self.stats,
                log=self._log,
                name=f"#{self._n}",
            )

    def __repr__(self) -> str:
        return (
            f"<Conversation agent_id={self.agent_id!r} state={self._state} "
            f"conversation_id={self._protocol.conversation_id!r}>"
        )

    # ==================================================================================
    # Public API
    # ==================================================================================

    def start_session(self) -> None:
        """Connect and start the conversation; return when the agent is ready.

        On return the socket is open, the initiation message went first and
        ``conversation_initiation_metadata`` has arrived (:meth:`get_conversation_id`
        is set), so a send right after works. Raises :class:`AuthenticationError`
        (401/403), :class:`ConnectionFailedError` (refused, unreachable, or closed
        before the conversation started), :class:`StartTimeoutError` (no metadata
        within ``start_timeout``), :class:`SessionCancelledError` (``end_session()``
        was called meanwhile), :class:`AudioError` (the sound device failed),
        :class:`ConfigurationError` (the server chose an audio codec this client cannot
        play), or :class:`SessionAlreadyStartedError` if called twice.

        Cancellable: ``end_session()`` from another thread makes it raise within
        ~100 ms, and Ctrl+C (KeyboardInterrupt) tears the half-started session down
        and re-raises. After any failure no session is left running.
        """
        with self._lock:
            if self._state != "new":
                raise SessionAlreadyStartedError(
                    "start_session() was already called; a Conversation runs one session, "
                    "create a new one"
                )
            self._state = "starting"
        self._tools = self.client_tools._open_scope(f"#{self._n}")
        self._start_threads()
        try:
            self._await_start()
        except BaseException as exc:
            self._abandon_start()
            if isinstance(exc, ElevenConvError) or not isinstance(exc, Exception):
                raise
            raise ElevenConvError(f"start_session() failed: {type(exc).__name__}: {exc}") from exc
        self._log.info("conversation %s started", self._protocol.conversation_id)

    def _await_start(self) -> None:
        if not self._start_done.wait(self.start_timeout):
            raise StartTimeoutError(
                f"no conversation_initiation_metadata within {self.start_timeout:g} s; "
                "raise start_timeout for slow networks, or check the agent"
            )
        self._raise_if_start_failed()
        try:
            self._start_audio()
        except ElevenConvError:
            raise
        except Exception as exc:
            raise AudioError(f"the audio device failed to start: {exc}") from exc
        with self._lock:
            if self._state == "starting":
                self._state = "active"
        # Otherwise the session started and has ended already (the server closed, or a
        # handler called end_session()): start_session() succeeded all the same.

    def _raise_if_start_failed(self) -> None:
        if self._cancelled:
            raise SessionCancelledError(
                "end_session() was called while start_session() was connecting; "
                "no session was started"
            )
        if self._start_error is not None:
            raise self._start_error
        if self._protocol.conversation_id is None:
            detail = f" ({self._last_server_error})" if self._last_server_error else ""
            reason = f": {self._close_reason}" if self._close_reason else ""
            raise ConnectionFailedError(
                f"the server closed the connection (code {self._close_code}{reason}) before "
                f"the conversation started{detail}",
                None,
            )

    def _abandon_start(self) -> None:
        """Tear a half-started session down (start failed, was cancelled or Ctrl+C)."""
        self._start_failed = True
        with self._lock:
            if self._state in ("starting", "active"):
                self._state = "closing"
            self._initiator = self._initiator or "error"
            user = self._cancelled
            self._cancelled = True  # a reader still connecting gives up when it can
        self._discard = True
        self._outbox.close()
        if self._voice is not None:
            self._voice.stop(drain=False)  # the voice threads exit now, whatever the reader does
        self._abort_socket()
        self._wake_keepalive.set()
        if self._join(_Deadline(CANCEL_WAIT_S if user else 1.0)):
            return
        # The reader is in a TCP connect (or TLS handshake), which nothing can interrupt:
        # stop the others now; the reader closes its socket and exits when the connect
        # returns or times out (start_timeout).
        self._log.debug("start abandoned while connecting; the reader exits after connect()")
        self._events_q.put(_STOP)

    def end_session(self) -> None:
        """End the conversation; return at once (within ~50 ms).

        Idempotent and thread-safe: call it from any thread, several at once, from an
        event handler or a tool, or while the server is closing. The speaker goes
        silent, no further handler, callback or tool starts (except ``session_ended``),
        queued events are discarded, messages already sent with ``send_*`` go out, then
        the close frame (1000). The close handshake finishes in the background (the
        socket is aborted if the server does not answer within ``close_timeout``); use
        :meth:`wait_for_session_end` to wait until every thread has exited. Called
        during :meth:`start_session`, it makes that raise :class:`SessionCancelledError`.
        """
        with self._lock:
            if self._state == "new":
                self._state = "ended"
                self._ended.set()
                return
            first = self._state in ("starting", "active")
            # Before the metadata: cancel start_session(). After it, a normal end.
            starting = self._state == "starting" and self._protocol.conversation_id is None
            if first:
                self._state = "closing"
                self._initiator = "user"
                self._cancelled = starting
        if first:
            self._discard = True
            # Silence the speaker now, not when the close handshake is over: the user
            # hung up.
            if self._voice is not None:
                self._voice.silence()
            self._close_requested_at = time.monotonic()
            self._outbox.close(_Close(1000))
            self._cancel_tools()
            if starting:
                self._abort_socket()
                self._start_done.set()
            self._wake_keepalive.set()
        self._join(_Deadline(END_SESSION_WAIT_S))

    def wait_for_session_end(self, timeout: float | None = None) -> str | None:
        """Block until the session has ended and every library thread has exited.

        The session ends when you end it, or the agent, the server or the network does.
        This is the barrier after :meth:`end_session`: running handlers and tools of
        this conversation have returned when it does. Returns the conversation id.
        Raises :class:`TimeoutError` if ``timeout`` seconds pass first. Ctrl+C
        (KeyboardInterrupt) gets through the wait.
        """
        if self._state == "new":
            raise SessionNotActiveError("start_session() first")
        deadline = _Deadline(timeout)
        if not _wait_interruptibly(self._ended, deadline):
            raise TimeoutError(f"the session did not end within {timeout} s")
        if not self._join(deadline):
            raise TimeoutError(
                f"the session ended but a handler or tool was still running after {timeout} s"
            )
        return self._protocol.conversation_id

    def __enter__(self) -> Conversation:
        self.start_session()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end_session()

    def get_conversation_id(self) -> str | None:
        """The conversation id, known once :meth:`start_session` has returned."""
        return self._protocol.conversation_id

    def is_session_active(self) -> bool:
        """``True`` between a successful :meth:`start_session` and the session's end."""
        return self._state == "active"

    def send_user_message(self, text: str, *, rich_content_id: str | None = None) -> None:
        """Send text as if the user had said it. ``rich_content_id``: the
        ``rich_content`` whose button the user tapped, when the text comes from a tap.
        Raises :class:`SessionNotActiveError`."""
        self._send(self._protocol.user_message(text, rich_content_id=rich_content_id))

    def send_contextual_update(self, text: str, *, context_id: str | None = None) -> None:
        """Tell the agent something in the background, without interrupting it. Updates
        with the same ``context_id`` replace each other in the agent's context."""
        self._send(self._protocol.contextual_update(text, context_id=context_id))

    def register_user_activity(self) -> None:
        """Signal that the user is active (typing), so the agent does not talk over."""
        self._send(self._protocol.user_activity())

    def send_feedback(self, like: bool) -> bool:
        """Rate the agent's latest response. ``False`` (and a warning) if there is none
        yet or it was rated already; ``True`` when sent."""
        self._require_active()
        with self._proto_lock:
            message = self._protocol.feedback(like)
            change = self._protocol.take_feedback_change()
        if message is None:
            self._log.warning("no new agent response to give feedback on; feedback not sent")
            return False
        self._send(message)
        if change is not None:
            self._post_if_listened("can_send_feedback_change", change)
        return True

    def send_multimodal_message(
        self,
        text: str | None = None,
        file_id: str | None = None,
        file_ids: Sequence[str] | None = None,
    ) -> None:
        """Send text and/or uploaded files together: ``files`` lists every file (and
        ``file`` the first, as the official clients send it)."""
        self._send(self._protocol.multimodal_message(text, file_id, file_ids))

    def send_mcp_tool_approval(self, tool_call_id: str, approved: bool) -> None:
        """Approve or refuse an MCP tool call that is ``awaiting_approval`` (an
        ``mcp_tool_call`` event with ``state == "awaiting_approval"``). Or pass
        ``on_mcp_tool_approval_request`` to the constructor to decide automatically."""
        self._send(self._protocol.mcp_tool_approval_result(tool_call_id, approved))

    # -- voice controls (the voice pipeline's; no-ops in a text-only conversation) --------

    def set_mic_muted(self, muted: bool) -> None:
        """Mute the microphone: the stream keeps running and silence is sent instead."""
        if self._voice is not None:
            self._voice.set_mic_muted(muted)

    def set_output_muted(self, muted: bool) -> None:
        """Mute the speaker at once (the agent keeps talking, unheard)."""
        if self._voice is not None:
            self._voice.set_output_muted(muted)

    def set_volume(self, volume: float) -> None:
        """Speaker volume, 0.0 (silent) to 1.0 (as sent); effective at once."""
        if not isinstance(volume, (int, float)) or not 0.0 <= volume <= 1.0:
            raise ConfigurationError(f"volume must be between 0.0 and 1.0, not {volume!r}")
        if self._voice is not None:
            self._voice.set_volume(volume)

    def set_echo_guard(self, enabled: bool, tail_s: float | None = None) -> None:
        """Half-duplex mode for speakers without echo cancellation: while agent audio
        plays (and ``tail_s`` after), silence is sent instead of the microphone."""
        if self._voice is not None:
            self._voice.set_echo_guard(enabled, tail_s)

    def interrupt_playback(self) -> None:
        """Stop the agent's current speech on this side: queued and arriving audio of
        the current response is dropped and the speaker goes silent."""
        with self._proto_lock:
            self._protocol.interrupt_locally()
        if self._voice is not None:
            self._voice.interrupt_playback()

    @property
    def mode(self) -> Literal["speaking", "listening"]:
        """``"speaking"`` while agent audio plays, else ``"listening"``."""
        return self._voice.mode if self._voice is not None else "listening"

    @property
    def echo_cancellation_active(self) -> bool:
        """Whether the microphone's echo of the speaker is cancelled (voice mode with
        ``echo_cancellation`` on and its dependency installed); ``False`` in text mode."""
        return self._voice is not None and self._voice.echo_cancellation_active

    # ==================================================================================
    # Events: every handler runs on the events thread, isolated from the others.
    # pyee's public API only: handlers are called one by one from listeners(event).
    # ==================================================================================

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        """Call ``event``'s handlers now, on this thread, one by one (pyee's ``emit``).

        A handler that raises is logged with its traceback and reported as an
        ``error`` event; the other handlers still run. An ``error`` nobody listens to
        is logged. After :meth:`end_session` only ``session_ended`` handlers run.
        """
        if event == "new_listener":  # pyee's own, on every add: the cache is stale
            self._listening.clear()
        handlers = self.listeners(event)
        if not handlers:
            if event == "error":
                error = args[0] if args else None
                self._log.warning("unhandled error event: %s", error)
            return False
        once = self._once_handlers.get(event)
        for handler in handlers:
            if self._discard and event != "session_ended":
                break
            if once and handler in once:
                once.discard(handler)
                self.remove_listener(event, handler)
            try:
                handler(*args, **kwargs)
            except Exception as exc:
                self._handler_failed(event, handler, exc)
        return True

    def once(self, event: str, f: Callable[..., Any] | None = None) -> Callable[..., Any]:
        """Register ``f`` to run for the next ``event`` only (also as a decorator)."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self._once_handlers.setdefault(event, set()).add(handler)
            self.add_listener(event, handler)
            return handler

        return register if f is None else register(f)

    def remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        """Remove ``f`` from ``event``'s handlers."""
        once = self._once_handlers.get(event)
        if once:
            once.discard(f)
        super().remove_listener(event, f)
        self._listening.clear()

    def _handler_failed(self, event: str, handler: Callable[..., Any], exc: Exception) -> None:
        name = getattr(handler, "__qualname__", None) or repr(handler)
        if event == "error":
            self._log.error("an 'error' handler (%s) raised", name, exc_info=exc)
            return
        # Logged once, with the traceback; then an "error" for whoever listens.
        self._log.error("handler %s for %r raised", name, event, exc_info=exc)
        if self.listeners("error"):
            self.emit("error", exc)

    def _has_listeners(self, event: str) -> bool:
        """Does ``event`` have a listener now? Events are posted only when someone
        listens, so a listener added later sees later events only.

        Cached per event (``listeners()`` copies the list under pyee's lock, several
        times per audio message otherwise); every add (pyee emits ``new_listener``) and
        removal clears the cache.
        """
        known = self._listening.get(event)
        if known is None:
            known = self._listening[event] = bool(self.listeners(event))
        return known

    def remove_all_listeners(self, event: str | None = None) -> None:
        """Remove every handler of ``event`` (of every event if ``None``)."""
        if event is None:
            self._once_handlers.clear()
        else:
            self._once_handlers.pop(event, None)
        super().remove_all_listeners(event)
        self._listening.clear()

    def _post(self, event: str, *args: Any) -> None:
        """Queue an event for the events thread (never blocks; bounded in count and bytes)."""
        if self._discard:
            self.stats["discarded_events"] += 1
            return
        size = _EVENT_OVERHEAD
        for arg in args:
            if isinstance(arg, (str, bytes, bytearray)):
                size += len(arg)
            elif isinstance(arg, AudioEvent):
                size += len(arg.audio)
            elif isinstance(arg, dict):
                size += self._frame_len
        with self._ev_lock:
            if self._ev_count >= EVENTS_QUEUE_SIZE or self._ev_bytes + size > EVENTS_QUEUE_BYTES:
                dropped = True
            else:
                dropped = False
                self._ev_count += 1
                self._ev_bytes += size
        if dropped:
            self.stats["dropped_events"] += 1
            if self.stats["dropped_events"] == 1 or self.stats["dropped_events"] % 1000 == 0:
                self._log.error(
                    "event handlers are %d events behind (%d KiB); dropping %r (a handler is "
                    "stuck or too slow?)",
                    self._ev_count,
                    self._ev_bytes // 1024,
                    event,
                )
            return
        self._events_q.put((event, args, size))

    def _dispatch(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "_mcp_approval":
            self._decide_mcp_approval(args[0])
            return
        if event != "_audio":
            self.emit(event, *args)
            return
        # Agent audio with no audio interface: decoded here for "audio" listeners only.
        audio_event: AudioEvent = args[0]
        try:
            if self._events_decoder is None:
                from elevenconv._audioformat import AgentAudioDecoder

                self._events_decoder = AgentAudioDecoder(self._protocol.agent_output_audio_format)
            pcm = self._events_decoder.decode(audio_event.audio)
        except ElevenConvError as exc:
            self.emit("error", exc)
            return
        if pcm:
            self.emit("audio", pcm, audio_event.event_id)
        if audio_event.alignment is not None:
            self.emit("audio_alignment", audio_event.alignment, audio_event.event_id)

    def _decide_mcp_approval(self, call: McpToolCallEvent) -> None:
        """Events thread: ask ``on_mcp_tool_approval_request`` and answer the server. A
        callback that raises refuses the call (and is reported as ``error``)."""
        decide = self.on_mcp_tool_approval_request
        assert decide is not None
        try:
            approved = bool(decide(call))
        except Exception as exc:
            approved = False
            self._handler_failed("mcp_tool_call", decide, exc)
        if self._state == "active":
            message = self._protocol.mcp_tool_approval_result(call.tool_call_id, approved)
            self._enqueue(encode_message(message))

    def _post_if_listened(self, event: str, *args: Any) -> None:
        if self._has_listeners(event):
            self._post(event, *args)

    def _events_loop(self) -> None:
        q = self._events_q
        while True:
            item = q.get()
            if item is _STOP:
                break
            event: str
            args: tuple[Any, ...]
            size: int
            event, args, size = item  # type: ignore[misc]
            with self._ev_lock:
                self._ev_count -= 1
                self._ev_bytes -= size
            if self._discard:
                self.stats["discarded_events"] += 1
                continue
            self._dispatch(event, args)
        if self.mode == "speaking" and not self._discard:
            self.emit("mode_change", "listening")
        if not self._start_failed:
            self.emit(
                "session_ended",
                self._protocol.conversation_id,
                self._close_code,
                self._close_reason,
            )
        self._ended.set()

    # ==================================================================================
    # Start and stop
    # ==================================================================================

    def _text_only_flag(self) -> bool | None:
        if self.text_only is not None:
            return self.text_only
        return True if self.audio_interface is None else None

    def _open(self) -> WebSocketLike:
        """Reader thread: resolve the URL, connect, send the initiation message."""
        url = self._resolve_url()
        if self._cancelled:
            raise SessionCancelledError("cancelled before connecting")
        self._log.debug("connecting to %s", redact_url(url))
        if self._factory is not None:
            try:
                sock = self._factory(url, {})
            except ElevenConvError:
                raise
            except Exception as exc:
                raise ConnectionFailedError(
                    f"websocket_factory failed for {redact_url(url)}: {type(exc).__name__}: {exc}"
                ) from None
            self._sock = sock
        else:
            sock = create_websocket(
                url,
                {},
                connect_timeout=self.start_timeout,
                on_socket=self._set_socket,
                **self._transport_options,
            )
        if self._cancelled:
            raise SessionCancelledError("cancelled while connecting")
        message = self._protocol.initiation_message(self.config, text_only=self._text_only_flag())
        try:
            # The initiation message goes first: nothing else is queued before it.
            sock.send(encode_message(message))
        except Exception as exc:
            raise ConnectionFailedError(f"could not send the initiation message: {exc}") from None
        unsent = getattr(sock, "unsent", None)
        if unsent is not None:
            self._outbox.unsent = unsent  # the kernel's backlog holds the microphone back
        in_flight = getattr(sock, "in_flight", None)
        if in_flight is not None:
            self._outbox.in_flight = in_flight  # and the link's measured rate
        self._last_rx = time.monotonic()
        self._connected = True
        self._wake_keepalive.set()
        return sock

    def _set_socket(self, sock: WebSocketLike) -> None:
        self._sock = sock
        if self._cancelled:  # end_session() came first: abort the handshake
            self._abort_socket()

    def _resolve_url(self) -> str:
        client = self.client
        if client is None:
            client = ElevenLabsClient()
        if self.requires_auth:
            if hasattr(client, "get_signed_url"):
                signed = client.get_signed_url(self.agent_id, environment=self.environment)
            else:  # the official SDK's client, for easy porting
                signed = client.conversational_ai.conversations.get_signed_url(
                    agent_id=self.agent_id
                ).signed_url
            return add_source_params(str(signed))
        if hasattr(client, "conversation_url"):
            return str(client.conversation_url(self.agent_id, self.environment))
        raise ConfigurationError("client must be an ElevenLabsClient (or None)")

    def _start_threads(self) -> None:
        # All threads start here, and only here.
        # The reader starts last: its _finish() joins the others.
        targets: list[tuple[str, Callable[[], None]]] = [
            ("writer", self._writer_loop),
            ("events", self._events_loop),
            ("keepalive", self._keepalive_loop),
        ]
        if self._voice is not None:
            targets.extend(self._voice.threads())
        targets.append(("reader", self._reader_loop))
        for role, target in targets:
            thread = threading.Thread(
                target=target, name=f"elevenconv-{role}-{self._n}", daemon=True
            )
            thread.start()
            self._threads[role] = thread  # only started threads: _join() may run meanwhile

    def _start_audio(self) -> None:
        voice = self._voice
        if voice is None:
            return
        fmt_in = self._protocol.user_input_audio_format
        voice.set_formats(fmt_in, self._protocol.agent_output_audio_format)
        self._outbox.bytes_per_second = _bytes_per_second(fmt_in)
        voice.start_device()

    def _finish(self, code: int | None, reason: str, error: BaseException | None) -> None:
        """Runs once, on the reader thread, when the socket is done: stop everything."""
        with self._lock:
            if self._abort_reason is not None and self._initiator != "user":
                code, reason = self._abort_reason
                self._initiator = "error"
            initiator = self._initiator
            if initiator is None:
                initiator = "agent" if code in (1000, 1001) else "error"
                self._initiator = initiator
            self._state = "closing"
        self._close_code = 1000 if (initiator == "user" and code is None) else code
        self._close_reason = reason
        self._start_done.set()
        if self._connected:
            self._log.info(
                "connection closed (code %s%s, by %s)",
                code,
                f": {reason}" if reason else "",
                initiator,
            )

        # The writer may be blocked sending on a dead socket: abort wakes it.
        drain = (initiator == "agent" and code in (1000, 1001)) or self._agent_ending
        self._abort_socket()
        self._outbox.close()
        deadline = _Deadline(self.close_timeout + (AGENT_END_DRAIN_S if drain else 0.0) + 1.0)
        if self._voice is not None:
            self._voice.stop(drain)
        for role in ("audio", "capture", "writer"):
            thread = self._threads.get(role)
            if thread is not None and thread is not threading.current_thread():
                thread.join(deadline.remaining())
                if thread.is_alive():
                    self._log.error("thread %s did not stop in time", thread.name)
        self._report_mic_drops(final=True)
        if self._tools is not None:
            self._tools.close()  # calls not started never start; running ones are not answered
        if (
            initiator == "error"
            and not self._start_failed
            and self._protocol.conversation_id is not None
        ):
            exc = closed_exception(code, reason)
            if error is not None:
                exc.__cause__ = error
            self._post("error", exc)
        with self._lock:
            self._state = "ended"
        self._events_q.put(_STOP)
        self._wake_keepalive.set()

    def _join(self, deadline: _Deadline) -> bool:
        """Wait for the library's threads (not the calling one) until ``deadline``;
        ``True`` if all of them have exited."""
        me = threading.current_thread()
        done = True
        for thread in list(self._threads.values()):
            if thread is not me:
                while thread.is_alive() and (deadline.deadline is None or deadline.remaining()):
                    # Slices, not one join(None): CPython 3.13.0 does not let Ctrl+C
                    # interrupt an untimed wait on a lock.
                    thread.join(_interrupt_slice(deadline))
                done = done and not thread.is_alive()
        # Tool calls still running (a tool that ends its own session is not waited for).
        if self._tools is not None and self._tools.closed:
            done = self._tools.join(deadline.remaining()) and done
        return done

    def _cancel_tools(self) -> None:
        """end_session(): tool calls of this conversation that have not started never will."""
        if self._tools is not None:
            cancelled = self._tools.close()
            if cancelled:
                self._log.info("%d queued tool call(s) cancelled by end_session()", cancelled)

    def _abort_socket(self) -> None:
        sock = self._sock
        if sock is None:
            return
        abort = getattr(sock, "abort", None)
        try:
            if abort is not None:
                abort()
            else:
                sock.close()
        except Exception:
            self._log.debug("socket abort failed", exc_info=True)

    # ==================================================================================
    # Keepalive: the deadlines of a live connection. Event.wait() until the next one.
    # ==================================================================================

    def _keepalive_loop(self) -> None:
        ping_sent: float | None = None  # our unanswered ping
        progress: tuple[float | None, int | None] = (None, None)  # (send, unsent bytes seen)
        progress_at = 0.0
        sends_seen = -1
        wake = self._wake_keepalive
        while self._state != "ended" and not (self._cancelled and not self._connected):
            now = time.monotonic()
            deadlines: list[float] = []
            sock = self._sock
            if self._connected and sock is not None and self._state in ("starting", "active"):
                last_rx = getattr(sock, "last_activity", None)
                if not isinstance(last_rx, float):
                    last_rx = self._last_rx
                can_ping = self.ping_interval is not None and hasattr(sock, "ping")
                if ping_sent is not None and last_rx >= ping_sent:
                    ping_sent = None  # answered (anything received counts)
                if can_ping and ping_sent is None and self.ping_interval is not None:
                    due = last_rx + self.ping_interval
                    if now >= due:
                        self._outbox.put_control(_PING)
                        ping_sent = now
                    else:
                        deadlines.append(due)
                if ping_sent is not None and self.ping_timeout is not None:
                    if now >= ping_sent + self.ping_timeout:
                        self._kill(1011, "keepalive ping timeout")
                        ping_sent = None
                    else:
                        deadlines.append(ping_sent + self.ping_timeout)
            # A send that makes no progress (no bytes leave the kernel) for send_timeout.
            # Checked every `tick` while sends happen; after a tick without any send the
            # loop sleeps until its other deadlines and the writer's next send wakes it
            # (an idle session costs no wake-ups).
            tick = min(1.0, self.send_timeout / 4)
            started = self._outbox.send_started
            if started is not None and sock is not None:
                unsent = self._unsent(sock)
                if progress[0] != started or (
                    unsent is not None and progress[1] is not None and unsent < progress[1]
                ):
                    progress_at = now
                progress = (started, unsent)
                if now - max(started, progress_at) >= self.send_timeout:
                    self._kill(1011, f"send made no progress for {self.send_timeout:g} s")
                else:
                    deadlines.append(now + tick)
            elif self._connected:
                if self._sends != sends_seen:
                    deadlines.append(now + tick)
                else:
                    self._keepalive_idle = True
                    # Re-check after publishing the flag: a send that started meanwhile
                    # saw the flag unset and did not wake us.
                    if self._sends != sends_seen or self._outbox.send_started is not None:
                        self._keepalive_idle = False
                        deadlines.append(now)
            sends_seen = self._sends
            # The close handshake after end_session(): bounded by close_timeout.
            requested = self._close_requested_at
            if requested is not None:
                if now >= requested + self.close_timeout:
                    self._log.warning(
                        "no close reply within %g s; aborting the connection", self.close_timeout
                    )
                    self._close_requested_at = None
                    self._abort_socket()
                else:
                    deadlines.append(requested + self.close_timeout)
            wake.wait(max(0.0, min(deadlines) - now) if deadlines else None)
            wake.clear()
            self._keepalive_idle = False

    @staticmethod
    def _unsent(sock: WebSocketLike) -> int | None:
        unsent = getattr(sock, "unsent", None)
        return unsent() if unsent is not None else None

    def _kill(self, code: int, reason: str) -> None:
        """End a dead or stalled connection: the reader sees the abort, _finish reports
        ``code``/``reason``."""
        with self._lock:
            if self._abort_reason is not None or self._state not in ("starting", "active"):
                return
            self._abort_reason = (code, reason)
        self._log.warning("%s; ending the session (%d)", reason, code)
        self._abort_socket()

    # ==================================================================================
    # Reader: connect, then recv -> parse -> route. Never runs user code, never blocks.
    # ==================================================================================

    def _reader_loop(self) -> None:
        code: int | None = None
        reason = ""
        error: BaseException | None = None
        try:
            try:
                sock = self._open()
            except BaseException as exc:
                if not self._cancelled:
                    self._start_error = (
                        exc
                        if isinstance(exc, ElevenConvError)
                        else ConnectionFailedError(f"could not connect: {type(exc).__name__}")
                    )
                code, reason = None, "connection failed"
                return
            while True:
                try:
                    frame = sock.recv()
                except ConnectionClosed as exc:
                    code, reason = exc.code, exc.reason
                    break
                except Exception as exc:
                    code, reason, error = None, f"connection lost: {type(exc).__name__}", exc
                    break
                if frame is None:  # some sockets signal EOF this way
                    code, reason = None, "connection lost"
                    break
                self._last_rx = time.monotonic()
                try:
                    self._handle_frame(frame)
                except Exception as exc:  # a bug; report it, keep the session
                    self._log.exception("internal error while handling a server message")
                    self._post("error", exc)
        finally:
            self._finish(code, reason, error)

    def _handle_frame(self, frame: str | bytes) -> None:
        self._frame_len = len(frame)
        try:
            with self._proto_lock:
                if isinstance(frame, (bytes, bytearray, memoryview)):
                    events = self._protocol.receive_bytes(bytes(frame))
                else:
                    events = self._protocol.receive_text(frame)
                change = self._protocol.take_feedback_change()
        except RemoteProtocolError as exc:
            self.stats["bad_messages"] += 1
            self._log.debug("ignored a bad server message: %s", exc)
            self._post("error", exc)
            return
        if events and self._has_listeners("message") and events[0].raw:
            self._post("message", dict(events[0].raw))  # once per frame
        for event in events:
            self._route(event)
        if change is not None:
            self._post_if_listened("can_send_feedback_change", change)

    def _route(self, event: ServerEvent) -> None:
        """Reader thread: act on one event, then post its user-facing events.

        Only what someone listens to goes to the events thread: an idle wake-up of that
        thread per audio message was a third of the client's CPU on audio.
        """
        if isinstance(event, AudioEvent):
            if self._voice is not None:
                self._voice.feed(event)
            elif self._has_listeners("audio") or self._has_listeners("audio_alignment"):
                self._post("_audio", event)
            return
        if isinstance(event, PingEvent):
            # Answer first, before anything else can get in the way.
            self._enqueue(encode_message(self._protocol.pong_message(event.event_id)))
            if event.ping_ms is None:
                return
        elif isinstance(event, InterruptionEvent):
            if self._voice is not None:
                self._voice.on_interruption()
        elif isinstance(event, ConversationInitiationMetadataEvent):
            self._log.extra = {"conv": event.conversation_id}
        elif isinstance(event, ErrorEvent):
            self._last_server_error = event.to_exception()
            self._log.error("server error: %s", self._last_server_error)
        elif isinstance(event, AgentToolResponseEvent) and event.tool_name == "end_call":
            self._agent_ending = True  # play its last words before stopping
        for name, args in event.conversation_events():
            if self._has_listeners(name):
                self._post(name, *args)
        if isinstance(event, ConversationInitiationMetadataEvent):
            self._post("session_started")  # after conversation_metadata
            self._post("conversation_started", event.conversation_id)
        if isinstance(event, ClientToolCallEvent):
            self._run_tool(event)
        elif (
            isinstance(event, McpToolCallEvent)
            and event.awaiting_approval
            and self.on_mcp_tool_approval_request is not None
        ):
            self._post("_mcp_approval", event)
        elif isinstance(event, ConversationInitiationMetadataEvent):
            self._start_done.set()

    # ==================================================================================

    # ==================================================================================
    # Writer: the single write path, fed by the Outbox (control first, then audio).
    # ==================================================================================

    def _enqueue(self, text: str) -> None:
        """Queue a message from a library thread (never blocks the caller)."""
        if not self._outbox.put_control(text):
            self._log.warning("send queue full or closed; dropped an outgoing message")

    def _require_active(self) -> None:
        if self._state != "active":
            raise SessionNotActiveError(
                f"the session is {self._state}; call start_session() first (a Conversation "
                "runs one session)"
            )

    def _send(self, message: Mapping[str, Any]) -> None:
        text = encode_message(message)
        self._require_active()
        if not self._outbox.put_control(text, timeout=self.send_timeout):
            self._require_active()
            raise ElevenConvError(
                f"the send queue stayed full for {self.send_timeout:g} s (the connection is "
                "stalled); message not sent"
            )

    def _writer_loop(self) -> None:
        outbox = self._outbox
        broken = False
        while True:
            item = outbox.get()
            if item is STOP:
                break
            sock = self._sock
            if isinstance(item, _Close):
                if not broken and sock is not None:
                    try:
                        sock.close()
                    except Exception:
                        self._abort_socket()
                break
            if broken or sock is None:
                continue  # drain until told to stop, so senders never block
            outbox.send_started = time.monotonic()
            self._sends += 1
            if self._keepalive_idle:  # it sleeps past send ticks: watch this send
                self._keepalive_idle = False
                self._wake_keepalive.set()
            try:
                if isinstance(item, MicPiece):
                    text = encode_message(self._protocol.user_audio_chunk(item.data))
                    sock.send(text)
                    outbox.note_sent(len(text) + 8)  # + the frame header
                elif item is _PING:
                    sock.ping()  # type: ignore[attr-defined]
                else:
                    sock.send(item)  # type: ignore[arg-type]
                    outbox.note_sent(len(item) + 8)  # type: ignore[arg-type]
            except Exception as exc:
                broken = True
                self._log.warning("send failed (%s); closing the connection", type(exc).__name__)
                self._abort_socket()  # the reader sees it and ends the session
            finally:
                outbox.send_started = None
            if outbox.drops.chunks or self._mic_burst_last is not None:
                self._report_mic_drops()

    def _report_mic_drops(self, *, final: bool = False) -> None:
        """Writer thread: microphone drops -> stats, one WARNING per burst, and a
        ``mic_audio_dropped`` event at most once a second."""
        now = time.monotonic()
        drops = self._outbox.take_drops()
        pending = self._mic_pending
        burst_start = False
        if drops is not None:
            self.stats["dropped_mic_chunks"] += drops.chunks
            self.stats["dropped_mic_ms"] += round(drops.seconds * 1000)
            if self._mic_burst_last is None:
                burst_start = True
                self._log.warning(
                    "the connection cannot keep up with the microphone: dropping audio more "
                    "than %g s old (a slow or congested uplink?)",
                    self.max_mic_lag,
                )
            self._mic_burst_last = now
            pending.chunks += drops.chunks
            pending.seconds += drops.seconds
        last = self._mic_burst_last
        if last is None:
            return
        burst_over = final or now - last >= MIC_DROP_REPORT_S
        if pending.chunks and (
            burst_start or burst_over or now - self._mic_reported_at >= MIC_DROP_REPORT_S
        ):
            self._post("mic_audio_dropped", pending.chunks, round(pending.seconds, 3))
            self._mic_pending = MicDrops()
            self._mic_reported_at = now
        if burst_over:
            self._mic_burst_last = None

    # ==================================================================================
    # Tools
    # ==================================================================================

    def _run_tool(self, event: ClientToolCallEvent) -> None:
        name = event.tool_name
        params = {"tool_call_id": event.tool_call_id, **event.parameters}
        if not self.client_tools.is_tool_registered(name):
            self._log.warning("the agent called client tool %r, which is not registered", name)
            self._post("unhandled_client_tool_call", name, dict(event.parameters))
            if event.expects_response:
                self._send_tool_result(
                    event.tool_call_id,
                    f"Client tool {name!r} is not registered on this client",
                    True,
                )
            return

        def on_done(result: str, is_error: bool, exc: BaseException | None) -> None:
            # On a pool worker (or the watchdog, for a timeout).
            if exc is not None:
                error = (
                    exc
                    if isinstance(exc, ToolError)
                    else ToolError(
                        f"client tool {name!r} failed: {type(exc).__name__}: {exc}",
                        name,
                        event.tool_call_id,
                    )
                )
                if error is not exc:
                    error.__cause__ = exc
                self._log.warning("client tool %r failed: %s", name, result, exc_info=exc)
                self._post("error", error)
            if event.expects_response:
                self._send_tool_result(event.tool_call_id, result, is_error)

        assert self._tools is not None  # opened by start_session() before any thread
        self._tools.submit(name, params, event.tool_call_id, on_done)

    def _send_tool_result(self, tool_call_id: str, result: str, is_error: bool) -> None:
        if self._state not in ("starting", "active"):
            self._log.debug("session over; tool result for %s not sent", tool_call_id)
            return
        with self._proto_lock:
            message = self._protocol.client_tool_result(tool_call_id, result, is_error=is_error)
        self._enqueue(encode_message(message))

    # ==================================================================================


class _VoiceHooks:
    """The Conversation's side of :class:`~elevenconv._voice.VoiceHooks`."""

    def __init__(self, conv: Conversation) -> None:
        self._conv = conv
        self.post = conv._post
        self.has_listeners = conv._has_listeners

    def send_audio(self, chunk: bytes, captured_at: float) -> None:
        conv = self._conv
        if conv._state in ("starting", "active") and not conv._discard:
            conv._outbox.put_mic(chunk, captured_at)

    def is_audio_current(self, event_id: int) -> bool:
        return self._conv._protocol.is_audio_current(event_id)
