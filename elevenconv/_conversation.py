r"""The blocking, threaded Conversation: the I/O shell around :mod:`elevenconv.protocol`.

Thread model (one screen)::

    socket -> [reader] -pong-------------------------> writer_q -> [writer] -> socket
                  |-agent audio-> audio_q -> [audio] -output()-> AudioInterface
                  |                            '-audio, mode_change-.
                  |-user-facing events----------------> events_q -> [events] -> handlers
                  '-client_tool_call -> ClientTools pool -result-> writer_q
    AudioInterface -input_callback-> mic deque (drops oldest) + token -> writer_q

* ``elevenconv-reader-N`` owns ``recv()``. It decodes, updates protocol state, answers
  pings and routes. It never runs user code and never blocks on a queue, so a slow
  handler cannot delay a pong or a barge-in.
* ``elevenconv-writer-N`` is the single write path: everything sent after the initiation
  message goes through ``writer_q`` (bounded: senders get back-pressure).
* ``elevenconv-audio-N`` (voice only) decodes and converts agent audio and feeds the
  device; it owns the audio interface from start to stop.
* ``elevenconv-events-N`` runs every event handler and callback, in order.

Stop has one path: the reader's exit (server close, network loss, or the reply to our
close frame) runs :meth:`Conversation._finish`, which stops the other threads with
sentinels; ``end_session()`` only asks the writer to send the close frame, then waits,
aborting the socket if the server does not answer in ``close_timeout``.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from pyee import EventEmitter

from elevenconv._audio import AudioInterface
from elevenconv._client import ElevenLabsClient, add_source_params
from elevenconv._tools import ClientTools
from elevenconv._transport import (
    WebSocketFactory,
    WebSocketLike,
    closed_exception,
    create_websocket,
    redact_url,
)
from elevenconv.errors import (
    AudioError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionFailedError,
    ElevenConvError,
    RemoteProtocolError,
    ServerError,
    SessionAlreadyStartedError,
    SessionNotActiveError,
    StartTimeoutError,
    ToolError,
)
from elevenconv.protocol import (
    AgentChatResponsePartEvent,
    AgentResponseCorrectionEvent,
    AgentResponseEvent,
    AgentToolResponseEvent,
    AudioEvent,
    ClientToolCallEvent,
    ConversationInitiationData,
    ConversationInitiationMetadataEvent,
    ConversationProtocol,
    ErrorEvent,
    InterruptionEvent,
    PingEvent,
    ServerEvent,
    TentativeUserTranscriptEvent,
    UserTranscriptEvent,
    VadScoreEvent,
    encode_message,
)

__all__ = ["Conversation", "ConversationEvent"]

log = logging.getLogger("elevenconv")

ConversationEvent = Literal[
    "session_started",
    "conversation_started",
    "session_ended",
    "error",
    "agent_response",
    "agent_response_correction",
    "user_transcript",
    "tentative_user_transcript",
    "agent_chat_response_part",
    "audio",
    "audio_alignment",
    "interruption",
    "latency_measurement",
    "vad_score",
    "client_tool_call",
    "unhandled_client_tool_call",
    "mode_change",
    "message",
]

_STOP = object()  # sentinel: the consumer thread exits
_MIC = object()  # writer token: microphone audio is waiting in the mic deque
_RESET = object()  # audio token: forget decoder state (after an interruption)

_ids = itertools.count(1)

#: Queue sizes (see the class docstring for what happens when they are full).
WRITER_QUEUE_SIZE = 1024
AUDIO_QUEUE_SIZE = 4096
EVENTS_QUEUE_SIZE = 10000
MIC_QUEUE_CHUNKS = 50
#: How long the agent's last words may play after it ends the call.
AGENT_END_DRAIN_S = 5.0
#: A resampler holds back ~20-70 ms; flush it when the agent's audio pauses this long.
RESAMPLER_TAIL_FLUSH_S = 0.15


@dataclass(frozen=True)
class _Close:
    """Writer item: send the close frame, then exit."""

    code: int = 1000


@dataclass(frozen=True)
class _AudioStop:
    drain: bool


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


class Conversation(EventEmitter):
    """A conversation with an ElevenLabs agent, driven by background threads.

    Blocking API, no asyncio: :meth:`start_session` returns when the agent is ready,
    the ``send_*`` methods may be called from any thread, :meth:`end_session` is
    idempotent and safe from any thread (an event handler and a tool included).

    Events (pyee): register with ``conversation.on("agent_response", handler)`` or as
    a decorator. Every handler runs on the ``elevenconv-events`` thread, in order; a
    handler that raises is logged and reported as ``error``, and the session goes on.
    Marshal to your GUI thread from there (``root.after``, a Qt signal).

    ====================================  ================================================
    ``session_started()``                 connected, agent ready
    ``conversation_started(id)``          with the conversation id
    ``session_ended(id, code, reason)``   exactly once; ``code`` of the WebSocket close
    ``error(exc)``                        an :class:`~elevenconv.errors.ElevenConvError`
                                          (server error, bad message, tool or handler
                                          failure, abnormal close); logged if unhandled
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
    ``message(dict)``                     every decoded server message, raw
    ====================================  ================================================

    Queues and overflow: the writer queue is bounded (a sender waits up to
    ``send_timeout`` and then gets an error); the microphone queue drops its oldest
    chunk when full; the audio and events queues drop new items when full (4,096 audio
    chunks / 10,000 events behind: a stuck handler), counted in :attr:`stats` and
    logged, so the reader never blocks.
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
        echo_guard: bool = False,
        echo_guard_tail_s: float = 0.3,
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not agent_id or not isinstance(agent_id, str):
            raise ConfigurationError("agent_id is required: the id of the agent to talk to")
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
        self._transport_options = dict(transport_options or {})

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
        self._playback_lock = threading.Lock()  # watermark check + output() are atomic
        self._protocol = ConversationProtocol()
        self._state: Literal["new", "starting", "active", "closing", "ended"] = "new"
        self._sock: WebSocketLike | None = None
        self._writer_q: queue.Queue[object] = queue.Queue(WRITER_QUEUE_SIZE)
        # SimpleQueue (C, one futex per wake-up) for the per-message hand-offs; their bound
        # is checked with qsize() by the one producer, the reader. queue.Queue's Python
        # Condition cost more CPU than the rest of an audio message's handling.
        self._audio_q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._events_q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._mic: deque[bytes] = deque(maxlen=MIC_QUEUE_CHUNKS)
        self._threads: dict[str, threading.Thread] = {}
        self._start_done = threading.Event()
        self._threads_started = threading.Event()
        self._ended = threading.Event()
        self._start_failed = False
        self._initiator: Literal["user", "agent", "error"] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._last_server_error: ServerError | None = None
        self._agent_ending = False
        self._tools_acquired = False
        self._tool_threads: list[threading.Thread] = []
        self._iface_started = False
        self._encoder: Any = None
        self._events_decoder: Any = None
        # Voice controls (read by the writer/audio threads; plain attribute reads).
        self._mic_muted = False
        self._output_muted = False
        self._volume = 1.0
        self._gain_in_thread = 1.0  # applied by the audio thread when the device can't
        self._echo_guard = echo_guard
        self._echo_tail = echo_guard_tail_s
        self._playing = False
        self._playing_until = 0.0
        self._mode_lock = threading.Lock()
        self._mode: Literal["speaking", "listening"] = "listening"
        self._device_reports_playback = False
        self._error_tls = threading.local()
        #: Counters: ``dropped_mic_chunks``, ``dropped_events``, ``dropped_audio``,
        #: ``stale_audio`` (dropped after an interruption), ``bad_messages``.
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "dropped_mic_chunks",
                "dropped_events",
                "dropped_audio",
                "stale_audio",
                "bad_messages",
            ),
            0,
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
        within ``start_timeout``), :class:`AudioError` (the sound device failed), or
        :class:`SessionAlreadyStartedError` if called twice. After a failure no thread
        is left running.
        """
        with self._lock:
            if self._state != "new":
                raise SessionAlreadyStartedError(
                    "start_session() was already called; a Conversation runs one session, "
                    "create a new one"
                )
            self._state = "starting"
        try:
            sock = self._connect()
        except BaseException:
            with self._lock:
                self._state = "ended"
            self._ended.set()
            raise
        self._sock = sock
        message = self._protocol.initiation_message(self.config, text_only=self._text_only_flag())
        try:
            # The initiation message goes first, from this thread, before any thread exists.
            sock.send(encode_message(message))
        except Exception as exc:
            self._abort_socket()
            with self._lock:
                self._state = "ended"
            self._ended.set()
            raise ConnectionFailedError(f"could not send the initiation message: {exc}") from None
        self.client_tools._acquire()
        self._tools_acquired = True
        self._start_threads()

        if not self._start_done.wait(self.start_timeout):
            self._fail_start(
                StartTimeoutError(
                    f"no conversation_initiation_metadata within {self.start_timeout:g} s; "
                    "raise start_timeout for slow networks, or check the agent"
                )
            )
        if self._protocol.conversation_id is None:
            detail = f" ({self._last_server_error})" if self._last_server_error else ""
            reason = f": {self._close_reason}" if self._close_reason else ""
            self._fail_start(
                ConnectionFailedError(
                    f"the server closed the connection (code {self._close_code}{reason}) before "
                    f"the conversation started{detail}",
                    None,
                )
            )
        try:
            self._start_audio()
        except BaseException as exc:
            self._fail_start(exc if isinstance(exc, ElevenConvError) else AudioError(str(exc)))
        with self._lock:
            if self._state == "starting":
                self._state = "active"
        self._log.info("conversation %s started", self._protocol.conversation_id)

    def end_session(self) -> None:
        """End the conversation and wait (bounded) until every library thread has exited.

        Idempotent and thread-safe: call it from any thread, several at once, from an
        event handler or a tool, or while the server is closing. Queued messages are
        sent first, then a close frame (1000); if the server does not answer within
        ``close_timeout`` the socket is aborted. Called from a handler, it does not
        wait for the handler's own thread (``session_ended`` follows when it returns).
        """
        with self._lock:
            if self._state == "new":
                self._state = "ended"
                self._ended.set()
                return
            first = self._state in ("starting", "active")
            if first:
                self._state = "closing"
                self._initiator = "user"
        if first:
            # Silence the speaker now, not when the close handshake is over (a round trip,
            # or close_timeout if the server does not answer): the user hung up.
            self._silence_for_end()
            try:
                self._writer_q.put(_Close(1000), timeout=self.close_timeout)
            except queue.Full:
                self._abort_socket()
        self._join(_Deadline(self.close_timeout + AGENT_END_DRAIN_S + 1.0))

    def wait_for_session_end(self, timeout: float | None = None) -> str | None:
        """Block until the session ends (you ended it, or the agent/server did).

        Returns the conversation id. Raises :class:`TimeoutError` if ``timeout``
        seconds pass first. Ctrl+C (KeyboardInterrupt) gets through the wait.
        """
        if self._state == "new":
            raise SessionNotActiveError("start_session() first")
        if not self._ended.wait(timeout):
            raise TimeoutError(f"the session did not end within {timeout} s")
        self._join(_Deadline(self.close_timeout))
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

    def send_user_message(self, text: str) -> None:
        """Send text as if the user had said it. Raises :class:`SessionNotActiveError`."""
        self._send(self._protocol.user_message(text))

    def send_contextual_update(self, text: str) -> None:
        """Tell the agent something in the background, without interrupting it."""
        self._send(self._protocol.contextual_update(text))

    def register_user_activity(self) -> None:
        """Signal that the user is active (typing), so the agent does not talk over."""
        self._send(self._protocol.user_activity())

    def send_feedback(self, like: bool) -> bool:
        """Rate the agent's latest response. ``False`` (and a warning) if there is none
        yet or it was rated already; ``True`` when sent."""
        self._require_active()
        with self._proto_lock:
            message = self._protocol.feedback(like)
        if message is None:
            self._log.warning("no new agent response to give feedback on; feedback not sent")
            return False
        self._send(message)
        return True

    def send_multimodal_message(self, text: str | None = None, file_id: str | None = None) -> None:
        """Send text and/or the id of an uploaded file together."""
        self._send(self._protocol.multimodal_message(text, file_id))

    def send_mcp_tool_approval(self, tool_call_id: str, approved: bool) -> None:
        """Approve or refuse an MCP tool call that is ``awaiting_approval``."""
        self._send(self._protocol.mcp_tool_approval_result(tool_call_id, approved))

    # -- voice controls -----------------------------------------------------------------

    def set_mic_muted(self, muted: bool) -> None:
        """Mute the microphone: the stream keeps running and silence is sent instead."""
        self._mic_muted = bool(muted)

    def set_output_muted(self, muted: bool) -> None:
        """Mute the speaker at once (the agent keeps talking, unheard)."""
        self._output_muted = bool(muted)
        self._apply_gain()

    def set_volume(self, volume: float) -> None:
        """Speaker volume, 0.0 (silent) to 1.0 (as sent); effective at once."""
        if not 0.0 <= volume <= 1.0:
            raise ConfigurationError(f"volume must be between 0.0 and 1.0, not {volume!r}")
        self._volume = float(volume)
        self._apply_gain()

    def set_echo_guard(self, enabled: bool, tail_s: float | None = None) -> None:
        """Half-duplex mode for speakers without headphones: while agent audio plays
        (and ``tail_s`` after), silence is sent instead of the microphone."""
        self._echo_guard = bool(enabled)
        if tail_s is not None:
            self._echo_tail = tail_s

    def interrupt_playback(self) -> None:
        """Stop the agent's current speech on this side: queued and arriving audio of
        the current response is dropped and the speaker goes silent."""
        with self._playback_lock:
            with self._proto_lock:
                self._protocol.interrupt_locally()
            if self.audio_interface is not None and self._iface_started:
                self.audio_interface.interrupt()
        self._audio_put(_RESET)
        self._set_playing(False)

    @property
    def mode(self) -> Literal["speaking", "listening"]:
        """``"speaking"`` while agent audio plays, else ``"listening"``."""
        return self._mode

    # ==================================================================================
    # Events: every handler runs on the events thread, isolated from the others.
    # ==================================================================================

    def _emit_run(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        # pyee's extension point: it calls this for each handler, on a copy of the list.
        try:
            f(*args, **kwargs)
        except Exception as exc:
            if getattr(self._error_tls, "active", False):
                self._log.error("an 'error' handler raised", exc_info=True)
                return
            self._log.error("event handler %r raised", getattr(f, "__name__", f), exc_info=True)
            self._error_tls.active = True
            try:
                self.emit("error", exc)
            finally:
                self._error_tls.active = False

    def _emit_handle_potential_error(self, event: str, error: Any) -> None:
        # pyee raises on an "error" with no listener; that would kill the events thread.
        # Log it instead: briefly for our own errors, with the traceback for anything else.
        if event == "error":
            ours = isinstance(error, ElevenConvError)
            exc_info = error if isinstance(error, BaseException) and not ours else None
            self._log.warning("unhandled error event: %s", error, exc_info=exc_info)

    def _has_listeners(self, event: str) -> bool:
        """Does ``event`` have a listener now? O(1), no copy (``listeners()`` copies the
        list under pyee's lock). Events are posted only when someone listens, so a
        listener added later sees later events only."""
        return bool(self._events.get(event))

    def _post(self, event: str, *args: Any) -> None:
        """Queue an event for the events thread (never blocks)."""
        q = self._events_q
        if q.qsize() < EVENTS_QUEUE_SIZE:
            q.put((event, args))
        else:
            self.stats["dropped_events"] += 1
            if self.stats["dropped_events"] == 1 or self.stats["dropped_events"] % 1000 == 0:
                self._log.error(
                    "event handlers are %d events behind; dropping %r (a handler is stuck?)",
                    EVENTS_QUEUE_SIZE,
                    event,
                )

    def _dispatch(self, event: str, args: tuple[Any, ...]) -> None:
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

    def _events_loop(self) -> None:
        q = self._events_q
        while True:
            item = q.get()
            if item is _STOP:
                break
            event: str
            args: tuple[Any, ...]
            event, args = item  # type: ignore[misc]
            self._dispatch(event, args)
        if self._mode == "speaking":
            self._mode = "listening"
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

    def _connect(self) -> WebSocketLike:
        url = self._resolve_url()
        self._log.debug("connecting to %s", redact_url(url))
        if self._factory is not None:
            try:
                return self._factory(url, {})
            except ElevenConvError:
                raise
            except Exception as exc:
                raise ConnectionFailedError(
                    f"websocket_factory failed for {redact_url(url)}: {type(exc).__name__}: {exc}"
                ) from None
        return create_websocket(
            url, {}, connect_timeout=self.start_timeout, **self._transport_options
        )

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
        targets: list[tuple[str, Callable[[], None]]] = [
            ("reader", self._reader_loop),
            ("writer", self._writer_loop),
            ("events", self._events_loop),
        ]
        if self.audio_interface is not None:
            targets.append(("audio", self._audio_loop))
        for role, target in targets:
            thread = threading.Thread(
                target=target, name=f"elevenconv-{role}-{self._n}", daemon=True
            )
            self._threads[role] = thread
        for thread in self._threads.values():
            thread.start()
        self._threads_started.set()

    def _start_audio(self) -> None:
        iface = self.audio_interface
        if iface is None:
            return
        from elevenconv._audioformat import UserAudioEncoder

        self._encoder = UserAudioEncoder(self._protocol.user_input_audio_format)
        self._device_reports_playback = bool(iface.set_playback_callback(self._on_device_playback))
        self._apply_gain()
        iface.start(self._on_mic_chunk)
        self._iface_started = True

    def _fail_start(self, exc: BaseException) -> None:
        """Tear down a half-started session and raise ``exc`` from start_session()."""
        self._start_failed = True
        with self._lock:
            self._state = "closing"
            self._initiator = self._initiator or "error"
        self._abort_socket()
        self._join(_Deadline(self.close_timeout + 1.0))
        raise exc

    def _finish(self, code: int | None, reason: str, error: BaseException | None) -> None:
        """Runs once, on the reader thread, when the socket is done: stop everything."""
        # The reader may finish before _start_threads() has started its siblings.
        self._threads_started.wait()
        with self._lock:
            initiator = self._initiator
            if initiator is None:
                initiator = "agent" if code in (1000, 1001) else "error"
                self._initiator = initiator
            self._state = "closing"
        self._close_code = 1000 if (initiator == "user" and code is None) else code
        self._close_reason = reason
        self._start_done.set()
        self._log.info(
            "connection closed (code %s%s, by %s)", code, f": {reason}" if reason else "", initiator
        )

        # The writer may be blocked sending on a dead socket: abort wakes it.
        drain = (initiator == "agent" and code in (1000, 1001)) or self._agent_ending
        self._abort_socket()
        self._put_sentinel(self._writer_q, _STOP)
        deadline = _Deadline(self.close_timeout + (AGENT_END_DRAIN_S if drain else 0.0) + 1.0)
        if "audio" in self._threads:
            self._put_sentinel(self._audio_q, _AudioStop(drain=drain))
        for role in ("audio", "writer"):
            thread = self._threads.get(role)
            if thread is not None:
                thread.join(deadline.remaining())
                if thread.is_alive():
                    self._log.error("thread %s did not stop in time", thread.name)
        if self._tools_acquired:
            self._tools_acquired = False
            self._tool_threads = self.client_tools._release()
        if initiator == "error" and not self._start_failed:
            exc = closed_exception(code, reason)
            if error is not None:
                exc.__cause__ = error
            self._post("error", exc)
        with self._lock:
            self._state = "ended"
        self._put_sentinel(self._events_q, _STOP)

    def _join(self, deadline: _Deadline) -> None:
        """Wait for the library's threads (not the calling one) to exit."""
        me = threading.current_thread()
        reader = self._threads.get("reader")
        if reader is not None and reader is not me:
            reader.join(min(self.close_timeout, deadline.remaining() or self.close_timeout))
            if reader.is_alive():
                # The server did not answer our close frame in time: cut the connection.
                self._log.warning(
                    "no close reply within %g s; aborting the connection", self.close_timeout
                )
                self._abort_socket()
                reader.join(deadline.remaining())
        for thread in list(self._threads.values()):
            if thread is not me:
                thread.join(deadline.remaining())
                if thread.is_alive():
                    self._log.error("thread %s did not stop in time", thread.name)
        # Tool workers exit once their tool returns; one may be running end_session().
        for thread in self._tool_threads:
            if thread is not me:
                thread.join(deadline.remaining())
                if thread.is_alive():
                    self._log.warning(
                        "client tool still running in %s after the session ended", thread.name
                    )

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

    @staticmethod
    def _put_sentinel(q: queue.Queue[object] | queue.SimpleQueue[object], item: object) -> None:
        # Sentinels must get in even if the queue is full of work nobody will do.
        if isinstance(q, queue.SimpleQueue):
            q.put(item)  # unbounded: the bound is the producer's check
            return
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass

    # ==================================================================================
    # Reader: recv -> parse -> route. Never runs user code, never blocks on a queue.
    # ==================================================================================

    def _reader_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        code: int | None = None
        reason = ""
        error: BaseException | None = None
        try:
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
                try:
                    self._handle_frame(frame)
                except Exception as exc:  # a bug; report it, keep the session
                    self._log.exception("internal error while handling a server message")
                    self._post("error", exc)
        finally:
            self._finish(code, reason, error)

    def _handle_frame(self, frame: str | bytes) -> None:
        try:
            with self._proto_lock:
                if isinstance(frame, (bytes, bytearray, memoryview)):
                    events = self._protocol.receive_bytes(bytes(frame))
                else:
                    events = self._protocol.receive_text(frame)
        except RemoteProtocolError as exc:
            self.stats["bad_messages"] += 1
            self._log.debug("ignored a bad server message: %s", exc)
            self._post("error", exc)
            return
        for event in events:
            self._route(event)

    def _route(self, event: ServerEvent) -> None:
        post = self._post
        if isinstance(event, PingEvent):
            # Answer first, before anything else can get in the way.
            self._enqueue(encode_message(self._protocol.pong_message(event.event_id)))
        # Only what someone listens to goes to the events thread: an idle wake-up of that
        # thread per audio message was a third of the client's CPU on audio.
        has_listeners = self._has_listeners
        if has_listeners("message"):
            post("message", dict(event.raw))
        if isinstance(event, AudioEvent):
            if self.audio_interface is not None:
                self._audio_put(event)
            elif has_listeners("audio") or has_listeners("audio_alignment"):
                post("_audio", event)
        elif isinstance(event, PingEvent):
            if event.ping_ms is not None:
                post("latency_measurement", event.ping_ms)
        elif isinstance(event, InterruptionEvent):
            if self.audio_interface is not None and self._iface_started:
                with self._playback_lock:
                    self.audio_interface.interrupt()
                self._audio_put(_RESET)
            self._set_playing(False)
            post("interruption", event.event_id)
        elif isinstance(event, AgentResponseEvent):
            post("agent_response", event.text)
        elif isinstance(event, AgentChatResponsePartEvent):
            post("agent_chat_response_part", event.text, event.part_type)
        elif isinstance(event, UserTranscriptEvent):
            post("user_transcript", event.text)
        elif isinstance(event, TentativeUserTranscriptEvent):
            post("tentative_user_transcript", event.text)
        elif isinstance(event, AgentResponseCorrectionEvent):
            post("agent_response_correction", event.original, event.corrected)
        elif isinstance(event, VadScoreEvent):
            post("vad_score", event.score)
        elif isinstance(event, ClientToolCallEvent):
            post("client_tool_call", event.tool_name, dict(event.parameters))
            self._run_tool(event)
        elif isinstance(event, ConversationInitiationMetadataEvent):
            self._log.extra = {"conv": event.conversation_id}
            post("session_started")
            post("conversation_started", event.conversation_id)
            self._start_done.set()
        elif isinstance(event, ErrorEvent):
            exc = event.to_exception()
            self._last_server_error = exc
            self._log.error("server error: %s", exc)
            post("error", exc)
        elif isinstance(event, AgentToolResponseEvent) and event.tool_name == "end_call":
            self._agent_ending = True  # play its last words before stopping

    # ==================================================================================
    # Writer: the single write path.
    # ==================================================================================

    def _enqueue(self, text: str) -> None:
        """Queue a message from a library thread (never blocks the reader)."""
        try:
            self._writer_q.put_nowait(text)
        except queue.Full:
            self._log.warning("send queue full; dropped an outgoing message")

    def _require_active(self) -> None:
        if self._state != "active":
            raise SessionNotActiveError(
                f"the session is {self._state}; call start_session() first (a Conversation "
                "runs one session)"
            )

    def _send(self, message: Mapping[str, Any]) -> None:
        text = encode_message(message)
        self._require_active()
        try:
            self._writer_q.put(text, timeout=self.send_timeout)
        except queue.Full:
            raise ElevenConvError(
                f"the send queue stayed full for {self.send_timeout:g} s (the connection is "
                "stalled); message not sent"
            ) from None

    def _writer_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        q = self._writer_q
        broken = False
        while True:
            item = q.get()
            if item is _STOP:
                break
            if isinstance(item, _Close):
                if not broken:
                    try:
                        sock.close()
                    except Exception:
                        self._abort_socket()
                break
            if broken:
                continue  # drain until told to stop, so senders never block
            try:
                if item is _MIC:
                    self._send_mic(sock)
                else:
                    sock.send(item)  # type: ignore[arg-type]
            except Exception as exc:
                broken = True
                self._log.warning("send failed (%s); closing the connection", type(exc).__name__)
                self._abort_socket()  # the reader sees it and ends the session
        self._mic.clear()

    def _send_mic(self, sock: WebSocketLike) -> None:
        mic = self._mic
        while mic:
            try:
                pcm = mic.popleft()
            except IndexError:
                return
            if self._mic_muted or self._echo_guard_active():
                pcm = bytes(len(pcm))
            data = self._encoder.encode(pcm) if self._encoder is not None else pcm
            if data:
                sock.send(encode_message(self._protocol.user_audio_chunk(data)))

    def _echo_guard_active(self) -> bool:
        return self._echo_guard and (
            self._playing or time.monotonic() < self._playing_until + self._echo_tail
        )

    def _on_mic_chunk(self, pcm: bytes) -> None:
        """``input_callback`` given to the audio interface: O(1), never blocks."""
        # "starting" too: the interface is started last in start_session(), after the
        # metadata, with the writer running; its first chunks may come before the state
        # turns "active" (a WAV file with realtime=False delivers all of them) and must
        # not be lost.
        if self._state not in ("starting", "active"):
            return
        mic = self._mic
        if len(mic) == mic.maxlen:
            self.stats["dropped_mic_chunks"] += 1  # the deque drops the oldest
        mic.append(bytes(pcm))
        try:
            self._writer_q.put_nowait(_MIC)
        except queue.Full:
            pass  # the chunk waits in the deque; the next token sends it

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

        self.client_tools._submit(name, params, event.tool_call_id, on_done)

    def _send_tool_result(self, tool_call_id: str, result: str, is_error: bool) -> None:
        if self._state not in ("starting", "active"):
            self._log.debug("session over; tool result for %s not sent", tool_call_id)
            return
        with self._proto_lock:
            message = self._protocol.client_tool_result(tool_call_id, result, is_error=is_error)
        self._enqueue(encode_message(message))

    # ==================================================================================
    # Audio: decode/convert agent audio off the reader; feed the device.
    # ==================================================================================

    def _audio_put(self, item: object) -> None:
        if "audio" not in self._threads:
            return
        q = self._audio_q
        if q.qsize() < AUDIO_QUEUE_SIZE or not isinstance(item, AudioEvent):
            q.put(item)  # control items (_RESET) always get in
        else:
            self.stats["dropped_audio"] += 1
            self._log.error("audio queue full; dropped an agent audio chunk")

    def _audio_loop(self) -> None:
        iface = self.audio_interface
        assert iface is not None
        q = self._audio_q
        decoder: Any = None
        last_event_id = 0
        tail_due: float | None = None  # when to flush the resampler's held-back tail
        stop = _AudioStop(drain=False)
        while True:
            # Block for the next item, or until a deadline: the resampler tail is due
            # (the stream paused), or the audio handed out should have played (devices
            # that do not report playback). Deadlines, not polling.
            deadlines = [d for d in (tail_due, self._inferred_play_end()) if d is not None]
            try:
                if deadlines:
                    item = q.get(timeout=max(0.0, min(deadlines) - time.monotonic()))
                else:
                    item = q.get()
            except queue.Empty:
                now = time.monotonic()
                if tail_due is not None and now >= tail_due:
                    tail_due = None
                    self._output(iface, decoder.flush(), last_event_id)
                play_end = self._inferred_play_end()
                if play_end is not None and now >= play_end:
                    self._set_playing(False)
                continue
            if isinstance(item, _AudioStop):
                stop = item
                break
            if item is _RESET:
                tail_due = None
                if decoder is not None:
                    decoder.reset()
                continue
            if not isinstance(item, AudioEvent):
                continue
            if decoder is None:
                from elevenconv._audioformat import AgentAudioDecoder

                decoder = AgentAudioDecoder(self._protocol.agent_output_audio_format)
            if self._play(iface, decoder, item):
                last_event_id = item.event_id
                if not decoder.passthrough:
                    tail_due = time.monotonic() + RESAMPLER_TAIL_FLUSH_S
        # Exit: the one place the device is stopped.
        if self._iface_started:
            try:
                if stop.drain:
                    if decoder is not None and tail_due is not None:
                        self._output(iface, decoder.flush(), last_event_id)
                    iface.wait_until_drained(AGENT_END_DRAIN_S)
                else:
                    iface.interrupt()
            except Exception:
                self._log.exception("audio interface failed while stopping")
            try:
                iface.stop()
            except Exception:
                self._log.exception("audio interface stop() failed")
            self._iface_started = False
        self._set_playing(False)

    def _inferred_play_end(self) -> float | None:
        if self._playing and not self._device_reports_playback:
            return self._playing_until
        return None

    def _play(self, iface: AudioInterface, decoder: Any, event: AudioEvent) -> bool:
        """Decode, convert and hand one chunk to the device; ``False`` if dropped."""
        if not self._protocol.is_audio_current(event.event_id):
            self.stats["stale_audio"] += 1
            return False
        try:
            pcm = decoder.decode(event.audio)
        except RemoteProtocolError as exc:
            self._post("error", exc)
            return False
        except Exception as exc:  # a conversion failure must not kill audio
            self._log.exception("could not convert agent audio")
            self._post("error", AudioError(f"could not convert agent audio: {exc}"))
            return False
        played = self._output(iface, pcm, event.event_id)
        if event.alignment is not None:
            self._post("audio_alignment", event.alignment, event.event_id)
        return played

    def _output(self, iface: AudioInterface, pcm: bytes, event_id: int) -> bool:
        if not pcm:
            return True
        out = pcm
        gain = self._gain_in_thread
        if gain != 1.0:
            from elevenconv._audioformat import scale_pcm16

            out = scale_pcm16(pcm, gain)
        with self._playback_lock:
            # Checked again under the lock: an interruption may have come in meanwhile.
            if not self._protocol.is_audio_current(event_id):
                self.stats["stale_audio"] += 1
                return False
            if self._initiator == "user":
                return False  # end_session() was called: nothing more is played
            iface.output(out)
        if not self._device_reports_playback:
            now = time.monotonic()
            self._playing_until = max(now, self._playing_until) + len(pcm) / 32000.0
            self._set_playing(True)
        if self._has_listeners("audio"):
            self._post("audio", pcm, event_id)
        return True

    def _silence_for_end(self) -> None:
        """end_session(): drop queued audio at once (caller's thread; _initiator is set)."""
        iface = self.audio_interface
        if iface is None or not self._iface_started:
            return
        try:
            with self._playback_lock:
                iface.interrupt()
        except Exception:
            self._log.exception("audio interface interrupt() failed")

    def _on_device_playback(self, playing: bool) -> None:
        """The device's playback callback (its own thread): O(1)."""
        if not playing:
            self._playing_until = time.monotonic()
        self._set_playing(playing)

    def _set_playing(self, playing: bool) -> None:
        mode: Literal["speaking", "listening"] = "speaking" if playing else "listening"
        with self._mode_lock:
            self._playing = playing
            if self._mode == mode:
                return
            self._mode = mode
        self._post("mode_change", mode)

    def _apply_gain(self) -> None:
        gain = 0.0 if self._output_muted else self._volume
        iface = self.audio_interface
        handled = iface is not None and iface.set_output_gain(gain)
        self._gain_in_thread = 1.0 if handled else gain
