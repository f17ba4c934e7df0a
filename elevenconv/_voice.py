r"""The voice pipeline: everything between the WebSocket's audio and the sound device.

A :class:`VoicePipeline` owns one :class:`~elevenconv._audio.AudioInterface` from
:meth:`~VoicePipeline.start_device` to its ``stop()``. The Conversation keeps the session,
starts and joins the pipeline's threads (:meth:`~VoicePipeline.threads`) and routes to
it; the pipeline talks back only through :class:`VoiceHooks`. Both chains (one screen)::

  PLAYBACK  reader: feed(AudioEvent) -> audio_q (AUDIO_QUEUE_BYTES; drop new when full)
            [elevenconv-audio]  is_audio_current? -> AgentAudioDecoder (any format -> 16 kHz)
                -> gain (volume / mute, when the device cannot) -> iface.output()
                |-> echo reference (what we handed over, when the device cannot report it)
                |-> mode: device playback callback, or inferred from the duration handed out
                '-> post("audio", pcm, id), post("audio_alignment", alignment, id)
            pause > RESAMPLER_TAIL_FLUSH_S -> decoder.flush() -> output()
            on_interruption()/interrupt_playback()/silence(): flag + wake -> iface.interrupt()
                (tapped reference not yet played: EchoCanceller.discard_reference(now))
            stop(drain=True): tail, iface.wait_until_drained(AGENT_END_DRAIN_S); finally stop()

  CAPTURE   device thread: input_callback(pcm) -> ring (MIC_RING_BYTES; drop oldest), O(1)
            (DefaultAudioInterface: PortAudio callback -> its queue -> [elevenconv-mic],
            which first hands over the speaker reference its output callback recorded)
            [elevenconv-capture]  split to MAX_MIC_CHUNK_BYTES
                -> EchoCanceller.process_capture (reference: device capability or the tap)
                -> mute / echo guard (silence of the same length: the stream keeps going)
                -> UserAudioEncoder (16 kHz -> user_input_audio_format)
                -> hooks.send_audio(encoded, captured_at)   (the writer bounds the lag)

Rules this module keeps (issue 8, point 5):

* Only the ``elevenconv-audio`` thread calls ``output()``, ``interrupt()``,
  ``wait_until_drained()`` and ``stop()`` (exceptions: ``silence()`` calls ``interrupt()``
  itself while that thread waits in ``wait_until_drained()``; ``start_device()`` calls
  ``stop()`` when ``start()`` failed or ``stop()`` came meanwhile; and a failing
  ``interrupt()`` in ``silence()`` that reaches the give-up count stops the device on the
  caller's thread). So no lock
  is ever held across a device call, and the reader's :meth:`~VoicePipeline.feed` and
  :meth:`~VoicePipeline.on_interruption` only set flags and put on a queue: they never wait
  for the device.
* ``output()`` is called only after ``start()`` returned; audio fed before waits.
  An interruption is always passed to ``interrupt()`` once the device started.
* Every device call is guarded: an exception becomes an ``error`` event with an
  :class:`~elevenconv.errors.AudioError`, the chunk is dropped and playback goes on; after
  :data:`MAX_CONSECUTIVE_DEVICE_FAILURES` in a row audio is given up (one more error; the
  text side of the conversation continues). The device is stopped in a ``finally``.
* Microphone chunks delivered after :meth:`~VoicePipeline.stop` or
  :meth:`~VoicePipeline.silence` are ignored. All buffers are bounded in bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from elevenconv import _audioformat
from elevenconv._audio import AudioInterface
from elevenconv._audioformat import AgentAudioDecoder, AudioFormat, UserAudioEncoder, scale_pcm16
from elevenconv.errors import AudioError, ConfigurationError, ElevenConvError, RemoteProtocolError
from elevenconv.protocol import AudioEvent

__all__ = [
    "AGENT_END_DRAIN_S",
    "AUDIO_QUEUE_BYTES",
    "MAX_CONSECUTIVE_DEVICE_FAILURES",
    "MAX_MIC_CHUNK_BYTES",
    "MIC_RING_BYTES",
    "RESAMPLER_TAIL_FLUSH_S",
    "VoiceHooks",
    "VoicePipeline",
    "check_audio_format",
    "echo_canceller_available",
    "has_acoustic_echo",
]

#: Agent audio waiting for the ``elevenconv-audio`` thread, in bytes of base64 text
#: (about 3 minutes of ``pcm_16000``). The agent's audio arrives faster than real time
#: but the thread hands it to the device at once, so this only fills when ``output()``
#: blocks; then new chunks are dropped (``stats["dropped_audio"]``) and the reader goes on.
AUDIO_QUEUE_BYTES: Final = 8 * 1024 * 1024
#: Microphone audio (PCM16 16 kHz) waiting for the ``elevenconv-capture`` thread: 2 s.
#: When full the oldest is dropped (``stats["dropped_capture_chunks"]``); a chunk longer
#: than this keeps only its newest 2 s.
MIC_RING_BYTES: Final = 2 * 16000 * 2
#: The largest microphone chunk sent as one message: 250 ms of PCM16 16 kHz, the chunk
#: size of the official SDKs and of DefaultAudioInterface. Longer chunks are split.
MAX_MIC_CHUNK_BYTES: Final = 16000 * 2 // 4
#: Device calls that may fail in a row before audio is given up.
MAX_CONSECUTIVE_DEVICE_FAILURES: Final = 5
#: How long the agent's last words may play after it ends the call.
AGENT_END_DRAIN_S: Final = 5.0
#: A resampler holds back ~20-70 ms; flush it when the agent's audio pauses this long.
RESAMPLER_TAIL_FLUSH_S: Final = 0.15

_DEVICE_BYTES_PER_S: Final = 16000 * 2
_AUDIO_EXTRA_HINT: Final = 'pip install "elevenconv[audio]"'

_WAKE: Final = object()  # audio_q: look at the flags (interrupt requested, stop now)
_STARTED: Final = object()  # audio_q: start() returned; output() may be called


@dataclass(frozen=True)
class _Stop:
    """audio_q sentinel: the playback loop exits (after the queue if ``drain``)."""

    drain: bool


class VoiceHooks(Protocol):
    """What the pipeline needs from its Conversation. Every method returns at once."""

    def post(self, event: str, *args: Any) -> None:
        """Queue a user-facing event for the events thread; never blocks."""

    def has_listeners(self, event: str) -> bool:
        """Whether ``event`` has a listener now (events nobody hears are not posted)."""

    def send_audio(self, chunk: bytes, captured_at: float) -> None:
        """Send one microphone chunk, already in ``user_input_audio_format`` (raw bytes).

        ``captured_at`` is the ``time.monotonic()`` instant its first sample was
        recorded. Never blocks: the writer encodes, prioritises and drops what is late.
        """

    def is_audio_current(self, event_id: int) -> bool:
        """The protocol's interruption watermark: ``False`` if the audio is stale."""


def check_audio_format(name: str) -> AudioFormat:
    """The :class:`AudioFormat` for a format the server announced, or ConfigurationError.

    ``ulaw_8000`` and ``pcm_<rate>`` for any rate from 8 to 192 kHz are supported
    (resampled to and from the device's 16 kHz); the rule lives in
    :func:`elevenconv._audioformat.check_audio_format`. Pure; any thread.
    """
    try:
        return _audioformat.check_audio_format(name)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"the server announced an audio format elevenconv cannot play or record: {exc}; "
            "change the agent's audio format, or use text_only=True"
        ) from None


def has_acoustic_echo(iface: AudioInterface) -> bool:
    """Whether what ``iface`` plays can come back into its microphone.

    ``iface.acoustic_echo`` when the interface says (``False`` for files and loopbacks),
    else ``True``, except for :class:`~elevenconv._fileaudio.WavFileAudioInterface`.
    """
    declared = getattr(iface, "acoustic_echo", None)
    if isinstance(declared, bool):
        return declared
    from elevenconv._fileaudio import WavFileAudioInterface

    return not isinstance(iface, WavFileAudioInterface)


def echo_canceller_available() -> bool:
    """``True`` if :mod:`elevenconv._echo` and its engine (``livekit``) can be imported."""
    try:
        from elevenconv._echo import EchoCanceller
    except ImportError:
        return False
    return bool(EchoCanceller.available())


class VoicePipeline:
    """Agent audio to the speaker and the microphone to the server, for one session.

    Create it, optionally :meth:`set_formats`, start the :meth:`threads`, then call
    :meth:`start_device`; end with :meth:`stop` and join the threads. Thread contracts are
    on each method. Raises :class:`ImportError` naming the ``audio`` extra at once when
    ``echo_cancellation=True`` (or ``noise_suppression=True``) and the engine is missing,
    and :class:`~elevenconv.errors.ConfigurationError` for an unsupported audio format.
    """

    def __init__(
        self,
        iface: AudioInterface,
        hooks: VoiceHooks,
        *,
        input_format: str = "pcm_16000",
        output_format: str = "pcm_16000",
        echo_cancellation: bool | None = None,
        noise_suppression: bool = False,
        echo_guard: bool = False,
        echo_guard_tail_s: float = 0.3,
        stats: dict[str, int] | None = None,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        name: str = "voice",
    ) -> None:
        self.iface = iface
        self.name = name
        self._hooks = hooks
        self._log: logging.Logger | logging.LoggerAdapter[Any] = log or logging.getLogger(__name__)
        self._input_format = check_audio_format(input_format)
        self._output_format = check_audio_format(output_format)
        #: Counters, shared with the Conversation's ``stats``: ``dropped_audio`` (agent
        #: audio over AUDIO_QUEUE_BYTES), ``stale_audio`` (dropped after an interruption),
        #: ``dropped_capture_chunks`` (microphone chunks over MIC_RING_BYTES),
        #: ``audio_errors`` (failed device calls and conversions).
        self.stats: dict[str, int] = stats if stats is not None else {}
        for key in ("dropped_audio", "stale_audio", "dropped_capture_chunks", "audio_errors"):
            self.stats.setdefault(key, 0)

        # -- echo cancellation: decided now, so a missing dependency fails at once --------
        self._echo_requested = echo_cancellation
        self._noise_suppression = bool(noise_suppression)
        # The default is on only where there can be an echo: a speaker and a microphone
        # in one room (not a WAV file). Asked for explicitly, it runs regardless.
        wanted = (
            echo_cancellation is True
            or (echo_cancellation is None and has_acoustic_echo(iface))
            or self._noise_suppression
        )
        required = echo_cancellation is True or self._noise_suppression
        available = wanted and echo_canceller_available()
        if required and not available:
            what = "echo_cancellation=True" if echo_cancellation else "noise_suppression=True"
            instead = "echo_cancellation=None" if echo_cancellation else "noise_suppression=False"
            raise ImportError(
                f"{what} needs WebRTC audio processing (the livekit package): "
                f"{_AUDIO_EXTRA_HINT}, or pass {instead}"
            )
        self._use_canceller = available
        #: Why echo cancellation is off (for the INFO log), ``None`` when it is on.
        self._echo_off_reason: str | None = None
        if echo_cancellation is False and not available:
            self._echo_off_reason = "echo_cancellation=False"
        elif not wanted:
            self._echo_off_reason = f"{type(iface).__name__} has no acoustic echo path"
        elif not available:
            self._echo_off_reason = (
                f"the WebRTC audio processing module is not installed ({_AUDIO_EXTRA_HINT}); "
                "use headphones, or echo_guard=True on speakers"
            )
        self._aec = available and echo_cancellation is not False
        self._canceller: Any = None  # EchoCanceller, built by start_device()

        # -- controls (plain attributes read by the threads) ------------------------------
        self._mic_muted = False
        self._output_muted = False
        self._volume = 1.0
        self._gain_in_thread = 1.0  # applied before output() when the device cannot
        self._echo_guard = bool(echo_guard)
        self._echo_tail = float(echo_guard_tail_s)

        # -- playback state ---------------------------------------------------------------
        self._audio_q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._q_lock = threading.Lock()  # guards _q_bytes only (never held across calls)
        self._q_bytes = 0
        self._dropping_audio = False
        self._interrupt_requested = False
        self._stop_now = False  # stop(drain=False): skip the backlog
        self._stopped = False  # stop() was called: feed() drops
        self._silenced = False  # silence(): nothing more is played
        self._given_up = False
        self._failures = 0  # consecutive failed device calls
        self._decoder: AgentAudioDecoder | None = None
        self._draining = False  # in wait_until_drained(): silence() interrupts directly
        self._device_reports_playback = False
        self._device_reports_reference = False
        self._tap_until = 0.0  # when the audio handed to output() will have played
        self._mode_lock = threading.Lock()
        self._mode: Literal["speaking", "listening"] = "listening"
        self._playing = False
        self._playing_until = 0.0

        # -- device lifecycle -------------------------------------------------------------
        self._dev_lock = threading.Lock()
        self._dev_state: Literal["new", "starting", "started", "stopped"] = "new"
        self._stop_after_start = False

        # -- capture state ----------------------------------------------------------------
        self._encoder: UserAudioEncoder | None = None
        self._capture_open = False
        self._ring_cond = threading.Condition(threading.Lock())
        self._ring: deque[tuple[bytes, float]] = deque()  # (pcm, first sample's time)
        self._ring_bytes = 0
        self._ring_dropped = 0  # written under _ring_cond; logged by the capture thread
        self._capture_stop = False

    def __repr__(self) -> str:
        return (
            f"<VoicePipeline {self.name} device={self._dev_state} mode={self._mode} "
            f"echo_cancellation={self.echo_cancellation_active}>"
        )

    # ==================================================================================
    # Lifecycle (the Conversation's threads)
    # ==================================================================================

    def set_formats(self, input_format: str, output_format: str) -> None:
        """Set the server's formats (from ``conversation_initiation_metadata``).

        Call before :meth:`start_device`, from any thread. Raises
        :class:`~elevenconv.errors.ConfigurationError` naming an unsupported format.
        """
        fmt_in, fmt_out = check_audio_format(input_format), check_audio_format(output_format)
        self._input_format, self._output_format = fmt_in, fmt_out

    def threads(self) -> list[tuple[str, Callable[[], None]]]:
        """``(role, target)`` of the pipeline's threads, for the Conversation to start
        (before :meth:`start_device`) and join after :meth:`stop`."""
        return [("audio", self._playback_loop), ("capture", self._capture_loop)]

    def start_device(self) -> None:
        """Build the converters and the echo canceller, then ``iface.start()``.

        Caller's thread (``start_session()``), once, after :meth:`threads` are running.
        Raises :class:`~elevenconv.errors.AudioError` saying what failed (the device is
        stopped again then); a KeyboardInterrupt stops the device and propagates. Does
        nothing if :meth:`stop` came first.
        """
        with self._dev_lock:
            if self._dev_state != "new" or self._stop_after_start:
                return
            self._dev_state = "starting"
        iface = self.iface
        try:
            self._decoder = AgentAudioDecoder(self._output_format)
            self._encoder = UserAudioEncoder(self._input_format)
            self._canceller = self._make_canceller()
            self._device_reports_playback = self._optional(
                "set_playback_callback", iface.set_playback_callback, self._on_device_playback
            )
            if self._canceller is not None:
                set_reference = getattr(iface, "set_playback_reference_callback", None)
                if set_reference is not None:
                    self._device_reports_reference = self._optional(
                        "set_playback_reference_callback", set_reference, self._on_reference
                    )
                self._log.info(
                    "%s on: %s; reference from %s",
                    "echo cancellation" if self._aec else "noise suppression",
                    self._canceller.description,
                    "the device's playback" if self._device_reports_reference else "output()",
                )
            self._apply_gain()
            self._capture_open = True
            iface.start(self._on_mic_chunk)
        except BaseException as exc:
            self._capture_open = False
            with self._dev_lock:
                self._dev_state = "stopped"
            self._call_stop()
            if isinstance(exc, ElevenConvError) or not isinstance(exc, Exception):
                raise
            raise AudioError(
                f"the audio device failed to start: {type(exc).__name__}: {exc}; check that "
                "a microphone and a speaker are available (elevenconv devices), or pass "
                "another audio_interface"
            ) from exc
        with self._dev_lock:
            stop_now = self._stop_after_start
            self._dev_state = "stopped" if stop_now else "started"
        if stop_now:  # stop() came while start() ran and the audio thread is gone
            self._capture_open = False
            self._call_stop()
            return
        self._audio_q.put(_STARTED)

    def stop(self, drain: bool) -> None:
        """End both loops; the audio thread stops the device (in a ``finally``).

        ``drain=True`` (the agent ended the call): what is queued still plays, for at most
        :data:`AGENT_END_DRAIN_S`. ``drain=False``: the queue is dropped. Any thread;
        returns at once. Microphone chunks are ignored from now on.
        """
        self._capture_open = False
        self._stopped = True
        with self._dev_lock:
            if self._dev_state == "new":
                self._stop_after_start = True  # a later start_device() does nothing
        if not drain:
            self._stop_now = True
        self._audio_q.put(_Stop(drain))
        with self._ring_cond:
            self._capture_stop = True
            self._ring.clear()
            self._ring_bytes = 0
            self._ring_cond.notify_all()

    def silence(self) -> None:
        """``end_session()``: nothing more is played, from now on. Any thread, at once.

        The audio thread passes it to ``interrupt()`` (or, while it waits for the device
        to drain, this thread does). Microphone chunks are ignored from now on.
        """
        self._silenced = True
        self._capture_open = False
        if self._draining:
            self._guarded("interrupt", self.iface.interrupt)
        self._request_interrupt()

    # ==================================================================================
    # The reader's and the user's calls
    # ==================================================================================

    def feed(self, event: AudioEvent) -> None:
        """Queue one ``audio`` message. The reader thread; O(1), never blocks.

        Over :data:`AUDIO_QUEUE_BYTES` the chunk is dropped (counted, logged once).
        """
        if self._given_up or self._silenced or self._stopped:
            return
        size = len(event.audio_base_64)
        with self._q_lock:
            accepted = self._q_bytes + size <= AUDIO_QUEUE_BYTES
            if accepted:
                self._q_bytes += size
            else:
                self.stats["dropped_audio"] += 1
            first_drop = not accepted and not self._dropping_audio
            self._dropping_audio = not accepted
        if accepted:
            self._audio_q.put(event)
        elif first_drop:
            self._log.error(
                "agent audio queue over %d MB (the audio device is not taking audio); "
                "dropping agent audio",
                AUDIO_QUEUE_BYTES // (1024 * 1024),
            )

    def on_interruption(self) -> None:
        """The server's ``interruption`` (its watermark already raised). The reader thread.

        Marks the speaker for ``interrupt()`` and switches the mode to listening; never
        waits for the device.
        """
        self._request_interrupt()
        self._playing_until = time.monotonic()
        self._set_playing(False)

    def interrupt_playback(self) -> None:
        """The user stopped the agent (call after ``protocol.interrupt_locally()``).

        Any thread; returns at once.
        """
        self.on_interruption()

    def set_mic_muted(self, muted: bool) -> None:
        """Send silence instead of the microphone (the stream keeps going). Any thread."""
        self._mic_muted = bool(muted)

    def set_output_muted(self, muted: bool) -> None:
        """Mute the speaker at once. Any thread."""
        self._output_muted = bool(muted)
        self._apply_gain()

    def set_volume(self, volume: float) -> None:
        """Speaker volume from 0.0 to 1.0. Any thread. ConfigurationError outside."""
        if isinstance(volume, bool) or not isinstance(volume, (int, float)):
            raise ConfigurationError(f"volume must be a number from 0.0 to 1.0, not {volume!r}")
        if not 0.0 <= volume <= 1.0:
            raise ConfigurationError(f"volume must be between 0.0 and 1.0, not {volume!r}")
        self._volume = float(volume)
        self._apply_gain()

    def set_echo_guard(self, enabled: bool, tail_s: float | None = None) -> None:
        """Half duplex: send silence while the agent is heard and ``tail_s`` after."""
        self._echo_guard = bool(enabled)
        if tail_s is not None:
            self._echo_tail = float(tail_s)

    @property
    def mode(self) -> Literal["speaking", "listening"]:
        """``"speaking"`` while agent audio plays, else ``"listening"``."""
        return self._mode

    @property
    def echo_cancellation_active(self) -> bool:
        """Whether the capture chain cancels echo (before the start: whether it will)."""
        if self._dev_state == "new":
            return self._aec
        return self._canceller is not None and self._aec and not self._given_up

    # ==================================================================================
    # Playback: the elevenconv-audio thread
    # ==================================================================================

    def _request_interrupt(self) -> None:
        self._interrupt_requested = True
        self._audio_q.put(_WAKE)

    def _playback_loop(self) -> None:
        q = self._audio_q
        waiting: deque[AudioEvent] = deque()  # fed before start() returned
        started = False
        last_event_id = 0
        tail_due: float | None = None  # when to flush the resampler's held-back tail
        drain = False
        try:
            while True:
                if self._interrupt_requested:
                    self._interrupt_requested = False
                    tail_due = None
                    if started:
                        self._interrupt_device()
                if self._stop_now:
                    break
                # Block for the next item, or until a deadline: the resampler tail is
                # due (the stream paused), or the audio handed out should have played
                # (devices that do not report playback). Deadlines, not polling.
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
                        self._flush_tail(last_event_id)
                    play_end = self._inferred_play_end()
                    if play_end is not None and now >= play_end:
                        self._set_playing(False)
                    continue
                if isinstance(item, _Stop):
                    drain = item.drain
                    break
                if item is _STARTED:
                    started = True
                    while waiting and not self._stop_now:
                        event = waiting.popleft()
                        if self._play(event):
                            last_event_id = event.event_id
                            tail_due = self._tail_deadline()
                    continue
                if not isinstance(item, AudioEvent):
                    continue  # _WAKE: the flags are read at the top
                if not started:
                    waiting.append(item)
                    continue
                if self._play(item):
                    last_event_id = item.event_id
                    tail_due = self._tail_deadline()
        finally:
            self._close_device(drain and not self._stop_now, tail_due is not None, last_event_id)

    def _tail_deadline(self) -> float | None:
        decoder = self._decoder
        if decoder is None or decoder.passthrough:
            return None
        return time.monotonic() + RESAMPLER_TAIL_FLUSH_S

    def _interrupt_device(self) -> None:
        if self._decoder is not None:
            self._decoder.reset()
        canceller = self._canceller
        if canceller is not None and not self._device_reports_reference and self._tap_until:
            # The tap handed the reply over ahead of its playing; the rest will not play.
            canceller.discard_reference(time.monotonic())
        self._tap_until = 0.0
        self._guarded("interrupt", self.iface.interrupt)

    def _flush_tail(self, event_id: int) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            tail = decoder.flush()
        except Exception as exc:
            self._conversion_failed(exc)
            return
        self._output(tail, event_id)

    def _inferred_play_end(self) -> float | None:
        if self._playing and not self._device_reports_playback:
            return self._playing_until
        return None

    def _release(self, event: AudioEvent) -> None:
        with self._q_lock:
            self._q_bytes -= len(event.audio_base_64)

    def _play(self, event: AudioEvent) -> bool:
        """Decode, convert and hand one chunk to the device; ``False`` if dropped."""
        self._release(event)
        if self._given_up or self._silenced:
            return False
        if not self._hooks.is_audio_current(event.event_id):
            self.stats["stale_audio"] += 1
            return False
        decoder = self._decoder
        assert decoder is not None  # built by start_device() before _STARTED
        try:
            pcm = decoder.decode(event.audio)
        except RemoteProtocolError as exc:  # bad base64 from the server
            self._hooks.post("error", exc)
            return False
        except Exception as exc:  # a conversion failure must not kill audio
            self._conversion_failed(exc)
            return False
        played = self._output(pcm, event.event_id)
        if event.alignment is not None and self._hooks.has_listeners("audio_alignment"):
            self._hooks.post("audio_alignment", event.alignment, event.event_id)
        return played

    def _conversion_failed(self, exc: Exception) -> None:
        self.stats["audio_errors"] += 1
        self._log.warning("could not convert agent audio: %s", exc, exc_info=True)
        error = AudioError(
            f"could not convert agent audio ({self._output_format.name}): "
            f"{type(exc).__name__}: {exc}; the chunk was dropped"
        )
        error.__cause__ = exc
        self._hooks.post("error", error)

    def _output(self, pcm: bytes, event_id: int) -> bool:
        if not pcm:
            return True
        # Checked again just before the device: an interruption may have come meanwhile
        # (its interrupt() then runs next, on this thread, and clears what slipped in).
        if self._silenced or self._given_up or self._stop_now:
            return False
        if not self._hooks.is_audio_current(event_id):
            self.stats["stale_audio"] += 1
            return False
        out = pcm
        gain = self._gain_in_thread
        if gain != 1.0:
            out = scale_pcm16(pcm, gain)
        if not self._guarded("output", self.iface.output, out):
            return False
        now = time.monotonic()
        duration = len(pcm) / _DEVICE_BYTES_PER_S
        canceller = self._canceller
        if canceller is not None and not self._device_reports_reference:
            start = max(now, self._tap_until)
            self._tap_until = start + duration
            canceller.process_reverse(out, start)
        if not self._device_reports_playback:
            self._playing_until = max(now, self._playing_until) + duration
            self._set_playing(True)
        if self._hooks.has_listeners("audio"):
            self._hooks.post("audio", pcm, event_id)
        return True

    def _close_device(self, drain: bool, tail_pending: bool, last_event_id: int) -> None:
        """Exit of the playback loop: the one place the device is stopped."""
        with self._dev_lock:
            state = self._dev_state
            if state == "starting":
                self._stop_after_start = True  # start_device() stops it when start() returns
            elif state == "new":
                self._stop_after_start = True
                self._dev_state = "stopped"
            elif state == "started":
                self._dev_state = "stopped"
        self._capture_open = False
        try:
            if state == "started" and not self._given_up:
                if drain and not self._silenced:
                    if tail_pending:
                        self._flush_tail(last_event_id)
                    self._draining = True
                    try:
                        if not self._silenced:
                            self._guarded(
                                "wait_until_drained",
                                self.iface.wait_until_drained,
                                AGENT_END_DRAIN_S,
                            )
                    finally:
                        self._draining = False
                else:
                    self._guarded("interrupt", self.iface.interrupt)
        finally:
            if state == "started" and not self._given_up:
                self._call_stop()
            self._set_playing(False)

    def _call_stop(self) -> None:
        try:
            self.iface.stop()
        except Exception as exc:
            self.stats["audio_errors"] += 1
            self._log.warning("the audio device's stop() failed: %s", exc, exc_info=True)
            error = AudioError(
                f"the audio device's stop() failed: {type(exc).__name__}: {exc}; the device "
                "may still be open (restart the program if it stays busy)"
            )
            error.__cause__ = exc
            self._hooks.post("error", error)

    # -- device calls: guarded -----------------------------------------------------------

    def _guarded(self, op: str, call: Callable[..., object], *args: Any) -> bool:
        """Call the device; on an exception post an AudioError and return ``False``.

        The audio thread (and silence()). After MAX_CONSECUTIVE_DEVICE_FAILURES in a
        row, audio is given up: one more error, the device is stopped, the text goes on.
        """
        try:
            call(*args)
        except Exception as exc:
            self._device_failed(op, exc)
            return False
        self._failures = 0
        return True

    def _device_failed(self, op: str, exc: Exception) -> None:
        self._failures += 1
        self.stats["audio_errors"] += 1
        give_up = self._failures >= MAX_CONSECUTIVE_DEVICE_FAILURES and not self._given_up
        self._log.warning("the audio device's %s() failed: %s", op, exc, exc_info=True)
        if give_up:
            self._given_up = True
            self._capture_open = False
            self._log.error(
                "gave up the audio device after %d failures in a row; the conversation "
                "goes on without audio",
                self._failures,
            )
            error = AudioError(
                f"the audio device failed {self._failures} times in a row (last: {op}(): "
                f"{type(exc).__name__}: {exc}); audio is off for the rest of the "
                "conversation, text still works. Check the device (elevenconv devices) or "
                "the AudioInterface, then start a new conversation"
            )
        else:
            error = AudioError(
                f"the audio device's {op}() failed: {type(exc).__name__}: {exc}; that audio "
                "was dropped and playback goes on"
            )
        error.__cause__ = exc
        self._hooks.post("error", error)
        if give_up:
            with self._dev_lock:
                was_started = self._dev_state == "started"
                if was_started:
                    self._dev_state = "stopped"
            if was_started:
                self._call_stop()

    def _optional(self, op: str, call: Callable[..., object], *args: Any) -> bool:
        """An optional capability: ``True`` if the device took it; failures are logged."""
        try:
            return bool(call(*args))
        except Exception as exc:
            self._log.warning("the audio device's %s() failed: %s", op, exc, exc_info=True)
            return False

    def _apply_gain(self) -> None:
        gain = 0.0 if self._output_muted else self._volume
        handled = self._optional("set_output_gain", self.iface.set_output_gain, gain)
        self._gain_in_thread = 1.0 if handled else gain

    # -- mode ----------------------------------------------------------------------------

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
        self._hooks.post("mode_change", mode)

    # ==================================================================================
    # Capture: device callback -> ring -> the elevenconv-capture thread
    # ==================================================================================

    def _on_reference(self, pcm: bytes, played_at: float) -> None:
        """The device's played-audio capability (DefaultAudioInterface: its
        ``elevenconv-mic`` thread, before each microphone chunk): O(1)."""
        canceller = self._canceller
        if canceller is not None:
            canceller.process_reverse(pcm, played_at)

    def _on_mic_chunk(self, pcm: bytes) -> None:
        """``input_callback`` given to ``iface.start()``: O(1) for normal chunks, never
        blocks (the lock only guards a deque append)."""
        if not self._capture_open:
            return
        size = len(pcm)
        # When its first sample was recorded: the device's own figure (exact stream
        # times), or else it was complete when it arrived.
        first_at: float | None = None
        try:
            first_at = self.iface.capture_time()
        except Exception:
            first_at = None
        if first_at is None:
            first_at = time.monotonic() - size / _DEVICE_BYTES_PER_S
        dropped = 0
        if size > MIC_RING_BYTES:  # keep the newest MIC_RING_BYTES (whole samples)
            keep = MIC_RING_BYTES - (size - MIC_RING_BYTES) % 2
            chunk = bytes(memoryview(pcm)[size - keep :])
            first_at += (size - keep) / _DEVICE_BYTES_PER_S
            dropped = 1
        else:
            chunk = bytes(pcm)
        with self._ring_cond:
            if self._capture_stop:
                return
            ring = self._ring
            ring.append((chunk, first_at))
            self._ring_bytes += len(chunk)
            while self._ring_bytes > MIC_RING_BYTES:
                old, _ = ring.popleft()
                self._ring_bytes -= len(old)
                dropped += 1
            if dropped:
                self._ring_dropped += dropped
                self.stats["dropped_capture_chunks"] += dropped
            self._ring_cond.notify()

    def _capture_loop(self) -> None:
        cond = self._ring_cond
        ring = self._ring
        logged_drops = 0
        carry = b""  # an odd byte: half a sample, joined to the next chunk
        failures = 0
        while True:
            with cond:
                while not ring and not self._capture_stop:
                    cond.wait()
                if self._capture_stop:
                    break
                chunk, first_at = ring.popleft()
                self._ring_bytes -= len(chunk)
                drops = self._ring_dropped
            if drops != logged_drops:
                if logged_drops == 0 or drops - logged_drops > 1:
                    self._log.warning(
                        "the microphone capture fell behind; dropped %d chunk(s) so far",
                        drops,
                    )
                logged_drops = drops
            if not self._capture_open:
                continue
            data = carry + chunk if carry else chunk
            usable = len(data) - len(data) % 2
            first_at -= len(carry) / _DEVICE_BYTES_PER_S
            carry = data[usable:]
            for offset in range(0, usable, MAX_MIC_CHUNK_BYTES):
                piece = data[offset : min(usable, offset + MAX_MIC_CHUNK_BYTES)]
                at = first_at + offset / _DEVICE_BYTES_PER_S
                try:
                    self._capture(piece, at)
                except Exception as exc:
                    failures += 1
                    self.stats["audio_errors"] += 1
                    self._log.warning("microphone audio failed: %s", exc, exc_info=True)
                    if failures <= MAX_CONSECUTIVE_DEVICE_FAILURES:
                        error = AudioError(
                            f"could not convert microphone audio for "
                            f"{self._input_format.name}: {type(exc).__name__}: {exc}; the "
                            "chunk was dropped"
                        )
                        error.__cause__ = exc
                        self._hooks.post("error", error)
                else:
                    failures = 0
        canceller = self._canceller
        if canceller is not None:  # the engine's memory goes now, not at collection
            try:
                canceller.close()
            except Exception:
                self._log.debug("closing the echo canceller failed", exc_info=True)

    def _capture(self, pcm: bytes, captured_at: float) -> None:
        """One piece (<= MAX_MIC_CHUNK_BYTES): cancel echo, mute/guard, encode, send."""
        canceller = self._canceller
        if canceller is not None:
            try:
                pcm = canceller.process_capture(pcm, captured_at)
            except Exception as exc:
                self._canceller = None
                self.stats["audio_errors"] += 1
                self._log.error("echo cancellation failed; it is off now: %s", exc, exc_info=True)
                error = AudioError(
                    f"echo cancellation failed ({type(exc).__name__}: {exc}) and was turned "
                    "off for this conversation; use headphones or echo_guard=True"
                )
                error.__cause__ = exc
                self._hooks.post("error", error)
        if self._mic_muted or self._echo_guard_active():
            pcm = bytes(len(pcm))
        encoder = self._encoder
        assert encoder is not None  # built by start_device() before iface.start()
        data = encoder.encode(pcm)
        if data and self._capture_open:
            self._hooks.send_audio(data, captured_at)

    def _echo_guard_active(self) -> bool:
        return self._echo_guard and (
            self._playing or time.monotonic() < self._playing_until + self._echo_tail
        )

    def _make_canceller(self) -> Any:
        """The EchoCanceller, or ``None`` (off, or unavailable with the default)."""
        if not self._use_canceller:
            self._log.info("echo cancellation off: %s", self._echo_off_reason)
            return None
        from elevenconv._echo import EchoCanceller

        try:
            return EchoCanceller(
                sample_rate=16000,
                echo_cancellation=self._aec,
                noise_suppression=self._noise_suppression,
            )
        except Exception as exc:
            if self._echo_requested or self._noise_suppression:
                raise AudioError(f"echo cancellation could not be started: {exc}") from exc
            self._log.warning("echo cancellation off: it could not be started: %s", exc)
            self._aec = False
            return None
