"""Microphone and speaker through PortAudio (PyAudio), on callback streams.

:class:`DefaultAudioInterface` is the :class:`~elevenconv._audio.AudioInterface` the
Conversation uses when you ask for real audio. It needs the ``audio`` extra
(``pip install "elevenconv[audio]"``) and the PortAudio library.

Threads and who calls what:

* **PortAudio's input callback** (a real-time thread owned by PortAudio) only copies the
  chunk, with the time its first sample was recorded, onto a bounded queue; when the
  queue is full the oldest chunk is dropped and :attr:`DefaultAudioInterface.input_dropped`
  counts it.
* **``elevenconv-mic``** (one named thread) blocks on that queue, converts the chunk to
  16 kHz mono if the device could not be opened that way, and calls ``input_callback``.
  Just before, it hands the echo canceller's reference callback (if set) what the speaker
  played meanwhile. A sentinel stops it; it never polls.
* **PortAudio's output callback** pops the next ready buffer (exactly one device buffer)
  from a deque, or returns pre-made silence. With a reference callback set it also appends
  what it returns, and when that will be heard, to a bounded deque (O(1)). On a
  playing/not playing transition it calls the playback callback, which must return at
  once (the Conversation's takes two short locks and puts ``mode_change`` on its events
  queue). It never waits on the caller, logs itself or tears anything down.
* **The caller's thread** (the Conversation's) calls :meth:`~DefaultAudioInterface.output`,
  :meth:`~DefaultAudioInterface.interrupt` and the setters; they return at once.

Nothing here imports PyAudio at module import time: ``import elevenconv`` works without it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from elevenconv._audio import AudioInterface, PlaybackCallback, PlaybackReferenceCallback
from elevenconv._audioformat import PcmResampler, scale_pcm16
from elevenconv.errors import AudioError, ConfigurationError

__all__ = ["DefaultAudioInterface", "create_default_audio_interface", "list_devices"]

logger = logging.getLogger(__name__)

_INSTALL_HINT: Final = (
    'Real microphone/speaker audio needs PyAudio: pip install "elevenconv[audio]". '
    "Building PyAudio needs the PortAudio headers: apt-get install portaudio19-dev "
    "(Debian/Ubuntu) or brew install portaudio (macOS)."
)
_LIBRARY_HINT: Final = (
    "PyAudio is installed but the PortAudio shared library it needs could not be loaded "
    "({error}). Install it: apt-get install libportaudio2 (Debian/Ubuntu) or "
    "brew install portaudio (macOS)."
)

# PortAudio error codes (portaudio.h), as PyAudio reports them in OSError.errno.
_PA_INVALID_CHANNEL_COUNT: Final = -9998
_PA_INVALID_SAMPLE_RATE: Final = -9997
_PA_SAMPLE_FORMAT_NOT_SUPPORTED: Final = -9994
_PA_CONTINUE: Final = 0  # pyaudio.paContinue
_FORMAT_ERRORS: Final = frozenset(
    {_PA_INVALID_CHANNEL_COUNT, _PA_INVALID_SAMPLE_RATE, _PA_SAMPLE_FORMAT_NOT_SUPPORTED}
)

_STOP: Final = object()  # sentinel for the elevenconv-mic thread
_JOIN_TIMEOUT_S: Final = 5.0
#: Speaker buffers (62.5 ms each) kept for the reference callback: 4 s.
_MAX_REFERENCE_BUFFERS: Final = 64


def _stream_delay(time_info: Any, first: str, second: str) -> float | None:
    """``time_info[first] - time_info[second]`` (PortAudio stream times, seconds), if sane.

    PortAudio's ALSA host API reports these on its own clock, and some hosts report 0:
    only the difference is used, and only when it is between 0 and 2 s.
    """
    try:
        a = float(time_info[first])
        b = float(time_info[second])
    except (KeyError, TypeError, ValueError):
        return None
    if a <= 0.0 or b <= 0.0:
        return None
    delay = a - b
    return delay if 0.0 <= delay < 2.0 else None


def _import_pyaudio() -> Any:
    """Import PyAudio on first use; raise ImportError saying what to install."""
    try:
        import pyaudio
    except ImportError as exc:
        raise ImportError(_missing_pyaudio_hint(exc)) from exc
    return pyaudio


def _missing_pyaudio_hint(exc: ImportError) -> str:
    """The fix for a failed ``import pyaudio``: the package, or only its shared library.

    PyAudio's extension module links to ``libportaudio``; when only that library is
    missing, the package is there and the loader's message names the library (Linux:
    ``libportaudio.so.2: cannot open shared object file``; macOS: ``Library not loaded:
    ...libportaudio.2.dylib``), or the failing module is ``pyaudio._portaudio``.
    """
    text = str(exc)
    if "portaudio" in text.lower() or (exc.name or "").startswith("pyaudio."):
        return _LIBRARY_HINT.format(error=text)
    return _INSTALL_HINT


def _pa_error_code(exc: BaseException) -> int | None:
    """The PortAudio error code of a PyAudio ``OSError`` (``None`` if there is none)."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return code
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _to_mono(pcm: bytes, channels: int) -> bytes:
    """Interleaved PCM16 with ``channels`` channels -> mono (first channel). mic thread."""
    if channels == 1:
        return pcm
    import numpy as np

    frames = len(pcm) // (2 * channels)
    samples = np.frombuffer(pcm, dtype="<i2", count=frames * channels)
    return samples.reshape(frames, channels)[:, 0].tobytes()


def _from_mono(pcm: bytes, channels: int) -> bytes:
    """Mono PCM16 -> the same signal on ``channels`` interleaved channels. Caller's thread."""
    if channels == 1:
        return pcm
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)
    return np.repeat(samples, channels).tobytes()


class _DeviceConfig:
    """How a stream was actually opened: its rate and channel count."""

    __slots__ = ("channels", "device_index", "rate")

    def __init__(self, device_index: int, rate: int, channels: int) -> None:
        self.device_index = device_index
        self.rate = rate
        self.channels = channels

    def __repr__(self) -> str:
        return f"<device {self.device_index}: {self.rate} Hz, {self.channels} ch>"


class DefaultAudioInterface(AudioInterface):
    """The default microphone and speaker, through PortAudio callback streams.

    Both directions speak PCM16 mono 16 kHz to the Conversation. If a device refuses
    16 kHz (or mono), it is opened at its own default rate (or two channels) and the
    audio is converted outside the PortAudio callbacks: the speaker side in
    :meth:`output` (caller's thread), the microphone side in the ``elevenconv-mic`` thread.

    Buffering and overflow policy:

    * Microphone: at most ``max_input_queue`` chunks of :attr:`INPUT_FRAMES_PER_BUFFER`
      frames (250 ms each) wait for ``input_callback``; when full, the **oldest** is
      dropped and :attr:`input_dropped` is incremented. The PortAudio callback never blocks.
    * Speaker: at most ``max_output_buffer_s`` seconds of audio are queued; when
      :meth:`output` would exceed that, the **oldest** queued audio is dropped (the speaker
      skips ahead, so latency stays bounded) and :attr:`output_dropped` counts the
      dropped buffers. The Conversation normally stays far below the limit.

    Gain (:meth:`set_output_gain`) is applied by the output callback to the buffer it is
    about to return, so it also reaches audio that is already queued (agent audio often
    arrives many seconds ahead of playback). That is one vector multiply of
    :attr:`OUTPUT_FRAMES_PER_BUFFER` samples: bounded work, no locks, no I/O. Gain 1.0
    returns the buffer untouched and gain 0.0 (mute) returns pre-made silence; both are
    chosen by a flag read once per callback. Muted audio keeps being consumed in real
    time, so unmuting resumes where the agent is, not where it was.
    """

    INPUT_FRAMES_PER_BUFFER: Final = 4000
    OUTPUT_FRAMES_PER_BUFFER: Final = 1000
    SAMPLE_RATE: Final = 16000
    CHANNELS: Final = 1

    def __init__(
        self,
        *,
        input_device_index: int | None = None,
        output_device_index: int | None = None,
        input: bool = True,
        output: bool = True,
        max_output_buffer_s: float = 60.0,
        max_input_queue: int = 50,
    ) -> None:
        """Configure the interface; devices are opened by :meth:`start`.

        ``input_device_index`` / ``output_device_index`` select PortAudio devices
        (:func:`list_devices`); ``None`` means the system default. ``input=False`` or
        ``output=False`` leaves that direction closed (``output()`` then discards audio).
        Raises :class:`ImportError` (with install instructions) if PyAudio is missing and
        :class:`~elevenconv.errors.ConfigurationError` for invalid limits.
        """
        if not input and not output:
            raise ConfigurationError("DefaultAudioInterface needs input=True or output=True")
        if not (isinstance(max_output_buffer_s, (int, float)) and max_output_buffer_s > 0):
            raise ConfigurationError(
                f"max_output_buffer_s must be a positive number, got {max_output_buffer_s!r}"
            )
        if isinstance(max_input_queue, bool) or not isinstance(max_input_queue, int):
            raise ConfigurationError(f"max_input_queue must be an int, got {max_input_queue!r}")
        if max_input_queue < 1:
            raise ConfigurationError(f"max_input_queue must be >= 1, got {max_input_queue}")
        self._pyaudio_module = _import_pyaudio()
        self.input_device_index = input_device_index
        self.output_device_index = output_device_index
        self.input_enabled = bool(input)
        self.output_enabled = bool(output)
        self.max_output_buffer_s = float(max_output_buffer_s)
        self.max_input_queue = max_input_queue

        self._state_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._pa: Any = None
        self._in_stream: Any = None
        self._out_stream: Any = None
        self._mic_thread: threading.Thread | None = None
        self._input_callback: Callable[[bytes], None] | None = None
        #: How the devices were opened (``None`` until :meth:`start`).
        self.input_config: _DeviceConfig | None = None
        self.output_config: _DeviceConfig | None = None

        # -- microphone ------------------------------------------------------------------
        # Items: (captured_at, chunk), or _STOP.
        self._in_queue: queue.Queue[object] = queue.Queue(maxsize=max_input_queue + 1)
        self._in_resampler: PcmResampler | None = None
        self._in_latency_s = 0.0  # PortAudio's input latency, read when the stream opens
        self._capture_time: float | None = None  # of the chunk input_callback is handling
        #: Microphone chunks dropped because ``input_callback`` fell behind.
        self.input_dropped = 0

        # -- speaker ---------------------------------------------------------------------
        # Serialises output() and interrupt() (callers' threads). The output callback only
        # ever try-acquires it, to take a trailing partial buffer on underrun.
        self._out_lock = threading.Lock()
        self._out_queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._out_carry = b""  # the tail of the last output(), shorter than one buffer
        self._out_resampler: PcmResampler | None = None
        self._out_bytes = self.OUTPUT_FRAMES_PER_BUFFER * 2  # one device buffer, in bytes
        self._max_out_buffers = 1  # set from max_output_buffer_s when the device is opened
        self._silence = bytes(self._out_bytes)
        self._generation = 0  # bumped by interrupt(); stale buffers are never played
        self._gain = 1.0
        self._gain_mode = 1  # 1: unity, 0: muted, -1: scale by self._gain
        self._playback_callback: PlaybackCallback | None = None
        self._out_latency_s = 0.0  # PortAudio's output latency, read when the stream opens
        # Echo reference: the output callback appends (played_at, buffer); the mic thread
        # converts and delivers. Bounded: the oldest go when the mic thread lags.
        self._reference_callback: PlaybackReferenceCallback | None = None
        self._reference: collections.deque[tuple[float, bytes]] = collections.deque(
            maxlen=_MAX_REFERENCE_BUFFERS
        )
        self._ref_resampler: PcmResampler | None = None
        # Written by the output callback only.
        self._playing = False
        self._playing_generation = 0
        self._drained = threading.Event()
        self._stopping = threading.Event()  # set by stop(): ends play-out waits
        self._drained.set()
        #: Speaker buffers dropped by the ``max_output_buffer_s`` limit.
        self.output_dropped = 0
        #: Output buffers replaced by silence because playback ran dry mid-audio.
        self.output_underruns = 0
        #: Exceptions swallowed inside PortAudio callbacks (should stay 0).
        self.callback_errors = 0
        self._last_callback_error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        """Open the devices and start the streams; call from the Conversation's thread.

        ``input_callback(pcm)`` is called from the ``elevenconv-mic`` thread with PCM16
        mono 16 kHz chunks. Raises :class:`RuntimeError` if called twice (even after
        :meth:`stop`; create a new interface) and :class:`~elevenconv.errors.AudioError`
        if a device cannot be opened (nothing is left open then).
        """
        with self._state_lock:
            if self._started:
                raise RuntimeError(
                    "DefaultAudioInterface.start() was already called; create a new interface"
                )
            self._started = True
        self._input_callback = input_callback
        pyaudio = self._pyaudio_module
        try:
            self._pa = pyaudio.PyAudio()
        except Exception as exc:
            raise AudioError(f"PortAudio could not be initialised: {exc}") from exc
        try:
            if self.output_enabled:
                self._open_output(pyaudio)
            if self.input_enabled:
                self._open_input(pyaudio)
                self._mic_thread = threading.Thread(
                    target=self._mic_loop, name="elevenconv-mic", daemon=True
                )
                self._mic_thread.start()
        except BaseException:
            with self._state_lock:
                self._stopped = True
            self._teardown()
            raise

    def stop(self) -> None:
        """Stop and close both streams, free the devices and end ``elevenconv-mic``.

        Idempotent; safe before :meth:`start`. Call from the Conversation's thread (calling
        it from ``input_callback`` also works: the mic thread is then not joined).
        """
        with self._state_lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        self._teardown()

    def _teardown(self) -> None:
        self._stopping.set()  # ends a wait_until_drained() play-out wait early
        for stream in (self._in_stream, self._out_stream):
            if stream is None:
                continue
            # close() without stop_stream() aborts (Pa_CloseStream discards pending
            # buffers): stop_stream() would wait for up to a whole buffer (250 ms for the
            # microphone). What the speaker still had to play was waited for already by
            # wait_until_drained() when the agent ended the call; otherwise the call was
            # interrupted and nothing more should be heard.
            try:
                stream.close()
            except Exception:
                logger.debug("closing a PortAudio stream failed", exc_info=True)
        self._in_stream = self._out_stream = None
        if self._pa is not None:
            try:
                self._pa.terminate()
            except Exception:
                logger.debug("PyAudio.terminate() failed", exc_info=True)
            self._pa = None
        # No producer is left: deliver the sentinel, making room for it if needed.
        while True:
            try:
                self._in_queue.put_nowait(_STOP)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._in_queue.get_nowait()
        thread = self._mic_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                logger.warning(
                    "elevenconv-mic did not exit within %.0f s: input_callback is blocking",
                    _JOIN_TIMEOUT_S,
                )
        with self._out_lock:
            self._generation += 1
            self._out_queue.clear()
            self._out_carry = b""
        self._drained.set()
        if self.callback_errors:
            logger.warning(
                "%d exception(s) in PortAudio callbacks, last: %r",
                self.callback_errors,
                self._last_callback_error,
            )

    # -- opening devices -----------------------------------------------------------------

    def _candidates(self, info: dict[str, Any], max_channels: int) -> list[tuple[int, int]]:
        """(rate, channels) to try, best first: 16 kHz mono, then the device's own."""
        device_rate = round(float(info.get("defaultSampleRate") or self.SAMPLE_RATE))
        rates = [self.SAMPLE_RATE] + ([device_rate] if device_rate != self.SAMPLE_RATE else [])
        channel_options = [1] + ([2] if max_channels >= 2 else [])
        return [(r, c) for c in channel_options for r in rates]

    def _open(self, pyaudio: Any, *, is_input: bool) -> tuple[Any, _DeviceConfig]:
        pa = self._pa
        kind = "input" if is_input else "output"
        index = self.input_device_index if is_input else self.output_device_index
        try:
            if index is None:
                info = (
                    pa.get_default_input_device_info()
                    if is_input
                    else pa.get_default_output_device_info()
                )
            else:
                info = pa.get_device_info_by_index(index)
        except (OSError, ValueError) as exc:
            raise AudioError(
                f"no {kind} device{'' if index is None else f' with index {index}'}: {exc}. "
                "List devices with `elevenconv devices` (elevenconv.list_devices())."
            ) from exc
        device_index = int(info["index"])
        max_channels = int(info["maxInputChannels" if is_input else "maxOutputChannels"])
        if max_channels < 1:
            raise AudioError(f"device {device_index} ({info.get('name')!r}) has no {kind}s")
        errors: list[str] = []
        for rate, channels in self._candidates(info, max_channels):
            fmt_kwargs: dict[str, Any] = (
                {
                    "input_device": device_index,
                    "input_channels": channels,
                    "input_format": pyaudio.paInt16,
                }
                if is_input
                else {
                    "output_device": device_index,
                    "output_channels": channels,
                    "output_format": pyaudio.paInt16,
                }
            )
            try:
                pa.is_format_supported(rate, **fmt_kwargs)
            except ValueError as exc:
                errors.append(f"{rate} Hz/{channels} ch: {exc}")
                continue
            frames = (
                (self.INPUT_FRAMES_PER_BUFFER if is_input else self.OUTPUT_FRAMES_PER_BUFFER)
                * rate
                // self.SAMPLE_RATE
            )
            config = _DeviceConfig(device_index, rate, channels)
            if not is_input:
                # Everything the callback needs must exist before the stream starts.
                self._prepare_output(config, frames)
            open_kwargs: dict[str, Any] = {
                "format": pyaudio.paInt16,
                "channels": channels,
                "rate": rate,
                "frames_per_buffer": frames,
                "stream_callback": self._on_input if is_input else self._on_output,
            }
            if is_input:
                open_kwargs.update(input=True, input_device_index=device_index)
            else:
                open_kwargs.update(output=True, output_device_index=device_index)
            try:
                stream = pa.open(**open_kwargs)
            except (OSError, ValueError) as exc:
                if _pa_error_code(exc) in _FORMAT_ERRORS:
                    errors.append(f"{rate} Hz/{channels} ch: {exc}")
                    continue
                raise AudioError(
                    f"could not open {kind} device {device_index} ({info.get('name')!r}): {exc}"
                ) from exc
            if rate != self.SAMPLE_RATE or channels != self.CHANNELS:
                logger.info("%s device opened at %d Hz, %d ch; converting", kind, rate, channels)
            return stream, config
        raise AudioError(
            f"{kind} device {device_index} ({info.get('name')!r}) supports neither 16 kHz "
            f"nor its default rate with 16-bit samples: {'; '.join(errors)}"
        )

    def _prepare_output(self, config: _DeviceConfig, frames: int) -> None:
        self.output_config = config
        self._out_bytes = frames * 2 * config.channels
        self._silence = bytes(self._out_bytes)
        self._out_resampler = (
            PcmResampler(self.SAMPLE_RATE, config.rate) if config.rate != self.SAMPLE_RATE else None
        )
        self._max_out_buffers = max(1, math.ceil(self.max_output_buffer_s * config.rate / frames))

    def _open_output(self, pyaudio: Any) -> None:
        self._out_stream, config = self._open(pyaudio, is_input=False)
        self.output_config = config
        self._out_latency_s = self._latency(self._out_stream, "get_output_latency")
        self._ref_resampler = (
            PcmResampler(config.rate, self.SAMPLE_RATE) if config.rate != self.SAMPLE_RATE else None
        )

    def _open_input(self, pyaudio: Any) -> None:
        self._in_stream, config = self._open(pyaudio, is_input=True)
        self.input_config = config
        self._in_latency_s = self._latency(self._in_stream, "get_input_latency")
        self._in_resampler = (
            PcmResampler(config.rate, self.SAMPLE_RATE) if config.rate != self.SAMPLE_RATE else None
        )

    @staticmethod
    def _latency(stream: Any, getter: str) -> float:
        try:
            value = float(getattr(stream, getter)())
        except Exception:
            return 0.0
        return value if 0.0 <= value < 2.0 else 0.0

    # -- microphone ----------------------------------------------------------------------

    def _on_input(
        self, in_data: bytes | None, frame_count: int, time_info: Any, status: int
    ) -> tuple[None, int]:
        """PortAudio input callback (PortAudio's thread): copy onto the queue, never block.

        The chunk goes with the ``time.monotonic()`` instant its first sample was recorded:
        PortAudio's ADC time relative to now, else the stream latency plus the chunk.
        """
        if in_data:
            now = time.monotonic()
            delay = _stream_delay(time_info, "current_time", "input_buffer_adc_time")
            if delay is None:
                config = self.input_config
                rate = config.rate if config is not None else self.SAMPLE_RATE
                delay = self._in_latency_s + frame_count / rate
            chunk = (now - delay, bytes(in_data))
            q = self._in_queue
            # Only this callback produces while the stream runs, and the queue has one
            # slot more than the limit (for stop()'s sentinel), so put_nowait cannot fail.
            if q.qsize() >= self.max_input_queue:
                # Drop the oldest: the freshest audio matters most in a live conversation.
                try:
                    q.get_nowait()
                    self.input_dropped += 1
                except queue.Empty:
                    pass
            try:
                q.put_nowait(chunk)
            except queue.Full:
                self.input_dropped += 1
        return None, _PA_CONTINUE

    def _mic_loop(self) -> None:
        """The ``elevenconv-mic`` thread: convert each chunk and hand it to input_callback."""
        callback = self._input_callback
        config = self.input_config
        channels = config.channels if config is not None else 1
        resampler = self._in_resampler
        carry = b""
        frame_bytes = 2 * channels
        while True:
            item = self._in_queue.get()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            captured_at, data = item
            try:
                self._deliver_reference()
                pcm = carry + data
                usable = len(pcm) - len(pcm) % frame_bytes
                pcm, carry = pcm[:usable], pcm[usable:]
                pcm = _to_mono(pcm, channels)
                if resampler is not None:
                    pcm = resampler.process(pcm)
                if pcm and callback is not None:
                    self._capture_time = captured_at
                    callback(pcm)
            except Exception:
                logger.exception("input_callback raised; the microphone chunk was dropped")
            finally:
                self._capture_time = None

    def _deliver_reference(self) -> None:
        """Hand the reference callback what was played since the last mic chunk (mic thread).

        Converted to 16 kHz mono here, outside the PortAudio callback.
        """
        callback = self._reference_callback
        ring = self._reference
        config = self.output_config
        channels = config.channels if config is not None else 1
        while ring:
            try:
                played_at, buffer = ring.popleft()
            except IndexError:  # pragma: no cover - only this thread pops
                return
            if callback is None:
                continue
            pcm = _to_mono(buffer, channels)
            if self._ref_resampler is not None:
                pcm = self._ref_resampler.process(pcm)
            if pcm:
                try:
                    callback(pcm, played_at)
                except Exception:
                    logger.exception("the playback reference callback raised")

    def capture_time(self) -> float | None:
        """The ``time.monotonic()`` instant the first sample of the chunk being delivered
        was recorded (from PortAudio's stream times); ``None`` outside ``input_callback``.

        Call it from inside ``input_callback`` (the ``elevenconv-mic`` thread).
        """
        return self._capture_time

    # -- speaker -------------------------------------------------------------------------

    def output(self, audio: bytes) -> None:
        """Queue PCM16 mono 16 kHz ``audio`` for playback and return at once.

        Any thread (the Conversation's). The audio is converted to the device format if
        needed and cut into device-sized buffers; a tail shorter than one buffer waits for
        the next call, or is played (padded with silence) when the queue runs dry. Over
        ``max_output_buffer_s`` the oldest queued audio is dropped (see the class doc).
        Discards the audio when the speaker is not open.
        """
        if not audio or not self.output_enabled or self._out_stream is None:
            return
        with self._out_lock:
            pcm = bytes(audio)
            if self._out_resampler is not None:
                pcm = self._out_resampler.process(pcm)
            self._enqueue_locked(pcm)

    def _enqueue_locked(self, pcm: bytes) -> None:
        """Cut device-rate mono ``pcm`` into device buffers and queue them (lock held)."""
        config = self.output_config
        if config is not None and config.channels != 1:
            pcm = _from_mono(pcm[: len(pcm) - len(pcm) % 2], config.channels)
        data = self._out_carry + pcm if self._out_carry else pcm
        size = self._out_bytes
        full = len(data) - len(data) % size
        generation = self._generation
        out_queue = self._out_queue
        limit = self._max_out_buffers
        dropped = 0
        if full:
            self._drained.clear()
        for start in range(0, full, size):
            if len(out_queue) >= limit:
                try:
                    out_queue.popleft()
                    dropped += 1
                except IndexError:
                    pass
            out_queue.append((generation, data[start : start + size]))
        self._out_carry = data[full:]
        if self._out_carry:
            self._drained.clear()
        if dropped:
            self.output_dropped += dropped
            logger.warning(
                "speaker queue over max_output_buffer_s=%.1f s: dropped the oldest %.2f s",
                self.max_output_buffer_s,
                dropped * self.OUTPUT_FRAMES_PER_BUFFER / self.SAMPLE_RATE,
            )

    def interrupt(self) -> None:
        """Drop all queued audio; the speaker is silent from the next output callback on.

        Any thread. At most one device buffer (:attr:`OUTPUT_FRAMES_PER_BUFFER` frames,
        62.5 ms) plus what PortAudio/the OS already hold is still heard. The generation
        counter makes sure a buffer the callback popped just before this call is not
        played either. The playback callback gets ``False`` from the next output callback.
        """
        with self._out_lock:
            self._generation += 1
            self._out_queue.clear()
            self._out_carry = b""
            if self._out_resampler is not None:
                self._out_resampler.reset()

    def set_output_gain(self, gain: float) -> bool:
        """Set playback gain (0.0 mute .. 1.0 unchanged); effective from the next buffer.

        Any thread. Applies to audio already queued too (see the class doc). Raises
        :class:`~elevenconv.errors.ConfigurationError` outside 0..1. Returns ``True``.
        """
        if (
            isinstance(gain, bool)
            or not isinstance(gain, (int, float))
            or math.isnan(gain)
            or not 0.0 <= gain <= 1.0
        ):
            raise ConfigurationError(f"gain must be a number from 0.0 to 1.0, got {gain!r}")
        self._gain = float(gain)
        # One attribute the callback reads: set after _gain so it never scales by a stale one.
        self._gain_mode = 1 if gain == 1.0 else 0 if gain == 0.0 else -1
        return True

    def set_playback_callback(self, callback: PlaybackCallback | None) -> bool:
        """Call ``callback(True)`` when audio starts coming out and ``callback(False)``
        when the queue has drained or playback was interrupted.

        The callback is called from PortAudio's output thread and must return at once
        (the Conversation's only puts on a queue); exceptions from it are swallowed and
        counted in :attr:`callback_errors`. Any thread. Returns ``True``.
        """
        self._playback_callback = callback
        return True

    def set_playback_reference_callback(self, callback: PlaybackReferenceCallback | None) -> bool:
        """Call ``callback(pcm, played_at)`` with exactly what the speaker plays.

        ``pcm`` is PCM16 mono 16 kHz as the output callback wrote it (after gain,
        silence included) and ``played_at`` the ``time.monotonic()`` instant its first
        sample is heard (PortAudio's DAC time, else the stream's output latency). The
        output callback only appends to a bounded deque (4 s); the callback itself runs on
        the ``elevenconv-mic`` thread, just before each ``input_callback``, so capture
        and reference arrive in order. Needs ``input=True``. Any thread; returns ``True``
        (``False`` when the microphone or the speaker is disabled).
        """
        if not (self.input_enabled and self.output_enabled):
            return False
        self._reference_callback = callback
        if callback is None:
            self._reference.clear()
        return True

    def wait_until_drained(self, timeout: float) -> bool:
        """Block until all queued audio was handed to the device, at most ``timeout`` s.

        Any thread but PortAudio's. Returns ``True`` if drained. The device itself still
        plays what it holds (its output latency, typically a few tens of ms) afterwards.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        self._flush_resampler()
        while True:
            if self._is_drained():
                # Handed over; now let the device play out what it holds, so that a
                # stop() right after does not cut the last words (bounded by timeout).
                playout = min(self.output_latency_s, max(0.0, deadline - time.monotonic()))
                if playout > 0:
                    self._stopping.wait(playout)
                return True
            # The callback sets the event when it runs dry; clear it and check again so a
            # set() from a run-dry that has since been refilled is not mistaken for ours.
            self._drained.clear()
            if self._is_drained():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._drained.wait(remaining):
                return self._is_drained()

    def _flush_resampler(self) -> None:
        """Queue what the speaker resampler still holds back (device-rate fallback only).

        The resampler delays its output by a few ms (about 20 ms for 16 -> 48 kHz), so the
        end of an utterance stays inside it until more audio comes; that tail is usually
        the TTS's trailing silence and plays, in order, before the next utterance. At the
        end of a call it is flushed here so the last words are heard in full.
        """
        if self._out_resampler is None or self._out_resampler.passthrough:
            return
        with self._out_lock:
            tail = self._out_resampler.flush()
            if tail:
                self._enqueue_locked(tail)

    def _is_drained(self) -> bool:
        if self._out_stream is None:
            return True
        return not self._out_queue and not self._out_carry and not self._playing

    @property
    def output_latency_s(self) -> float:
        """PortAudio's estimate of the speaker stream's latency (0.0 when not open).

        Audio handed over by the output callback is heard about this much later; it is
        also what is still heard after :meth:`interrupt`, beyond the next callback.
        """
        stream = self._out_stream
        if stream is None:
            return 0.0
        try:
            return float(stream.get_output_latency())
        except Exception:
            return 0.0

    @property
    def output_queued_s(self) -> float:
        """Seconds of audio queued for the speaker (approximate; any thread)."""
        config = self.output_config
        if config is None:
            return 0.0
        frames = len(self._out_queue) * self._out_bytes // (2 * config.channels)
        return frames / config.rate

    def _on_output(
        self, in_data: bytes | None, frame_count: int, time_info: Any, status: int
    ) -> tuple[bytes, int]:
        """PortAudio output callback (PortAudio's thread): next buffer or silence. O(1).

        Pops from a deque (atomic), compares the buffer's generation with the current one,
        applies gain per the precomputed mode and reports playing/not playing transitions.
        Never raises: any error yields silence and bumps :attr:`callback_errors`.
        """
        try:
            data = self._next_output(frame_count)
            if self._reference_callback is not None:
                delay = _stream_delay(time_info, "output_buffer_dac_time", "current_time")
                played_at = time.monotonic() + (self._out_latency_s if delay is None else delay)
                self._reference.append((played_at, data))
            return data, _PA_CONTINUE
        except BaseException as exc:  # never let an exception stop the stream
            self.callback_errors += 1
            self._last_callback_error = exc
            return self._silence_for(frame_count), _PA_CONTINUE

    def _silence_for(self, frame_count: int) -> bytes:
        config = self.output_config
        needed = frame_count * 2 * (config.channels if config is not None else 1)
        return self._silence if needed == len(self._silence) else bytes(max(0, needed))

    def _next_output(self, frame_count: int) -> bytes:
        generation = self._generation
        if self._playing and self._playing_generation != generation:
            # interrupt() since the last real buffer: report it even if new audio follows.
            self._set_playing(False)
        buffer: bytes | None = None
        try:
            while buffer is None:
                item_generation, data = self._out_queue.popleft()
                # Re-read the counter after popping: a buffer popped just before an
                # interrupt() is stale and is dropped here rather than played.
                generation = self._generation
                if item_generation == generation:
                    buffer = data
        except IndexError:
            buffer = self._take_carry()
        if buffer is None:
            if self._playing:
                self.output_underruns += 1
                self._set_playing(False)
            return self._silence_for(frame_count)
        if not self._playing:
            self._playing_generation = generation
            self._set_playing(True)
        needed = frame_count * 2 * (self.output_config.channels if self.output_config else 1)
        if len(buffer) != needed:  # PortAudio asked for an odd size: never raise, fit it
            buffer = (buffer + bytes(max(0, needed - len(buffer))))[:needed]
        mode = self._gain_mode
        if mode == 1:
            return buffer
        if mode == 0:
            return self._silence_for(frame_count)
        return scale_pcm16(buffer, self._gain)

    def _take_carry(self) -> bytes | None:
        """On underrun: play the tail shorter than a buffer, padded with silence.

        Only try-acquires the lock; if output() holds it, silence now and the tail later.
        """
        if not self._out_carry or not self._out_lock.acquire(blocking=False):
            return None
        try:
            if self._out_queue or not self._out_carry:
                return None  # output() just refilled: the next callback takes it in order
            carry = self._out_carry
            usable = len(carry) - len(carry) % 2
            self._out_carry = carry[usable:]
            tail = carry[:usable]
            return tail + self._silence[len(tail) :] if tail else None
        finally:
            self._out_lock.release()

    def _set_playing(self, playing: bool) -> None:
        self._playing = playing
        if not playing:
            self._drained.set()
        callback = self._playback_callback
        if callback is not None:
            try:
                callback(playing)
            except Exception as exc:
                self.callback_errors += 1
                self._last_callback_error = exc


def create_default_audio_interface(**kwargs: Any) -> DefaultAudioInterface:
    """Return a :class:`DefaultAudioInterface` (the same keyword arguments).

    Raises :class:`ImportError` with install instructions if PyAudio is missing.
    """
    return DefaultAudioInterface(**kwargs)


def list_devices() -> list[dict[str, Any]]:
    """Describe the PortAudio devices, for ``elevenconv devices`` and device selection.

    Each entry has ``index``, ``name``, ``max_input_channels``, ``max_output_channels``,
    ``default_sample_rate``, ``is_default_input`` and ``is_default_output``. Any thread.
    Raises :class:`ImportError` if PyAudio is missing and
    :class:`~elevenconv.errors.AudioError` if PortAudio cannot be initialised.
    """
    pyaudio = _import_pyaudio()
    try:
        pa = pyaudio.PyAudio()
    except Exception as exc:
        raise AudioError(f"PortAudio could not be initialised: {exc}") from exc
    try:
        defaults: dict[str, int | None] = {}
        for key, getter in (
            ("input", pa.get_default_input_device_info),
            ("output", pa.get_default_output_device_info),
        ):
            try:
                defaults[key] = int(getter()["index"])
            except (OSError, ValueError):
                defaults[key] = None
        devices = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            devices.append(
                {
                    "index": int(info["index"]),
                    "name": str(info["name"]),
                    "max_input_channels": int(info["maxInputChannels"]),
                    "max_output_channels": int(info["maxOutputChannels"]),
                    "default_sample_rate": float(info["defaultSampleRate"]),
                    "is_default_input": int(info["index"]) == defaults["input"],
                    "is_default_output": int(info["index"]) == defaults["output"],
                }
            )
        return devices
    finally:
        pa.terminate()
