"""A WAV-file "microphone" and "speaker", for scripts, tests and the CLI.

:class:`WavFileAudioInterface` feeds a WAV file to the Conversation as if it were spoken
into a microphone, and records the agent's audio to a WAV file. No sound hardware needed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import wave
from collections.abc import Callable

from elevenconv._audio import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH, AudioInterface
from elevenconv._audioformat import PcmResampler
from elevenconv.errors import AudioError, ConfigurationError

__all__ = ["WavFileAudioInterface", "read_wav_pcm16_16k", "write_wav_pcm16"]

logger = logging.getLogger("elevenconv")

#: How long :meth:`WavFileAudioInterface.stop` waits for the input thread.
_JOIN_TIMEOUT = 5.0

_BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_WIDTH * CHANNELS


def read_wav_pcm16_16k(path: str | os.PathLike[str]) -> bytes:
    """Read a 16-bit PCM WAV file (any rate, any channel count) as PCM16 mono 16 kHz.

    Channels are averaged; other rates are resampled with :class:`PcmResampler` (needs
    numpy and soxr unless the file is already 16 kHz mono). Any thread.

    Raises :class:`~elevenconv.errors.AudioError` if the file cannot be read, is not a
    WAV file or is not 16-bit PCM, or the conversion needs packages that are missing.
    """
    try:
        with wave.open(os.fspath(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise AudioError(f"cannot read WAV file {os.fspath(path)!r}: {exc}") from exc
    if width != 2:
        raise AudioError(
            f"{os.fspath(path)!r} has {8 * width}-bit samples; only 16-bit PCM WAV is "
            "supported (convert it, e.g. with: sox in.wav -b 16 out.wav)"
        )
    if channels > 1:
        frames = _downmix(frames, channels)
    if rate == SAMPLE_RATE:
        return frames
    resampler = PcmResampler(rate, SAMPLE_RATE)
    return resampler.process(frames) + resampler.flush()


def _downmix(frames: bytes, channels: int) -> bytes:
    """Average interleaved PCM16 channels to mono."""
    try:
        import numpy as np
    except ImportError as exc:
        raise AudioError(
            'down-mixing a multi-channel WAV needs numpy: pip install "elevenconv[resample]"'
        ) from exc
    usable = len(frames) - len(frames) % (2 * channels)
    samples = np.frombuffer(frames, dtype="<i2", count=usable // 2).reshape(-1, channels)
    mono = samples.mean(axis=1, dtype=np.float64)
    result: bytes = np.rint(mono).astype("<i2").tobytes()
    return result


def write_wav_pcm16(path: str | os.PathLike[str], pcm: bytes, rate: int = SAMPLE_RATE) -> None:
    """Write PCM16 little-endian mono ``pcm`` to a WAV file at ``rate`` Hz (overwrites).

    Any thread. Raises :class:`~elevenconv.errors.AudioError` if the file cannot be
    written and :class:`~elevenconv.errors.ConfigurationError` for a non-positive rate.
    """
    if rate <= 0:
        raise ConfigurationError(f"rate must be positive, got {rate!r}")
    try:
        with wave.open(os.fspath(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm[: len(pcm) - len(pcm) % 2])
    except (OSError, wave.Error) as exc:
        raise AudioError(f"cannot write WAV file {os.fspath(path)!r}: {exc}") from exc


class WavFileAudioInterface(AudioInterface):
    """An :class:`~elevenconv._audio.AudioInterface` backed by WAV files.

    Input: the file at ``input_path`` (16-bit PCM, any rate, mono or stereo) is converted
    to 16 kHz mono when the object is created (so a bad file fails here, not mid-call).
    :meth:`start` starts one thread, ``elevenconv-wavfile-input``, which calls
    ``input_callback`` with ``chunk_ms`` chunks: paced like a real microphone when
    ``realtime`` is true (each chunk is delivered when it would have finished recording),
    as fast as the callback returns otherwise. After the file come ``trailing_silence_s``
    seconds of silence (useful so the agent's voice activity detection sees the user stop
    talking); then the thread ends, or starts the file again if ``loop`` is true.
    :attr:`input_finished` is set once the whole file has been fed the first time.

    Output: :meth:`output` appends the agent's audio to the WAV at ``output_path``, which
    is created in :meth:`start` and finalised in :meth:`stop`. Audio arriving before
    :meth:`start` or after :meth:`stop` is dropped.

    With neither path it is a silent device that records nothing. One instance runs once:
    :meth:`start` after :meth:`stop` raises.
    """

    def __init__(
        self,
        input_path: str | os.PathLike[str] | None = None,
        output_path: str | os.PathLike[str] | None = None,
        *,
        realtime: bool = True,
        chunk_ms: int = 100,
        loop: bool = False,
        trailing_silence_s: float = 0.0,
    ) -> None:
        """Read and convert ``input_path`` now; open nothing yet.

        Raises :class:`~elevenconv.errors.ConfigurationError` for a bad ``chunk_ms`` or
        ``trailing_silence_s`` and :class:`~elevenconv.errors.AudioError` if the input
        file cannot be read or converted (see :func:`read_wav_pcm16_16k`).
        """
        if isinstance(chunk_ms, bool) or not isinstance(chunk_ms, int) or chunk_ms <= 0:
            raise ConfigurationError(f"chunk_ms must be a positive int, got {chunk_ms!r}")
        if not trailing_silence_s >= 0.0:  # also rejects NaN
            raise ConfigurationError(f"trailing_silence_s must be >= 0, got {trailing_silence_s!r}")
        self.input_path = None if input_path is None else os.fspath(input_path)
        self.output_path = None if output_path is None else os.fspath(output_path)
        self.realtime = realtime
        self.chunk_ms = chunk_ms
        self.loop = loop
        self.trailing_silence_s = trailing_silence_s

        self._input_pcm = b"" if input_path is None else read_wav_pcm16_16k(input_path)
        # Whole samples per chunk, so a chunk never splits a sample.
        self._chunk_bytes = max(1, SAMPLE_RATE * chunk_ms // 1000) * SAMPLE_WIDTH
        self._silence = bytes(round(trailing_silence_s * SAMPLE_RATE) * SAMPLE_WIDTH)

        #: Set once the whole input file has been passed to ``input_callback`` (the first
        #: pass when looping). Set at once by :meth:`start` if there is no input file.
        self.input_finished = threading.Event()

        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = 0.0  # monotonic time the next input chunk is due (realtime)
        self._started = False
        # Guards the output file and the odd byte of a split sample.
        self._output_lock = threading.Lock()
        self._writer: wave.Wave_write | None = None
        self._output_carry = b""

    # -- AudioInterface ---------------------------------------------------------------

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        """Create the output WAV (if any) and start feeding the input file (if any).

        Called once, from the Conversation's thread. Raises
        :class:`~elevenconv.errors.AudioError` if called twice or if the output file
        cannot be created.
        """
        if self._started:
            raise AudioError("WavFileAudioInterface.start() called twice; create a new one")
        self._started = True
        if self.output_path is not None:
            try:
                # Not a context manager: the file stays open until stop().
                writer = wave.open(self.output_path, "wb")  # noqa: SIM115
            except (OSError, wave.Error) as exc:
                raise AudioError(f"cannot create WAV file {self.output_path!r}: {exc}") from exc
            writer.setnchannels(CHANNELS)
            writer.setsampwidth(SAMPLE_WIDTH)
            writer.setframerate(SAMPLE_RATE)
            with self._output_lock:
                self._writer = writer
        if self.input_path is None:
            self.input_finished.set()
            return
        self._thread = threading.Thread(
            target=self._feed,
            args=(input_callback,),
            name="elevenconv-wavfile-input",
            # Daemon: a callback stuck forever must not keep the interpreter alive;
            # stop() still joins it in the normal case.
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding input, join the input thread, and finalise the output WAV.

        Idempotent; returns within about 5 s even if ``input_callback`` is stuck (that is
        logged as an error and the daemon thread is abandoned). Safe to call from inside
        ``input_callback`` (the thread does not join itself). Raises
        :class:`~elevenconv.errors.AudioError` if the output file cannot be finalised.
        """
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                logger.error(
                    "%s still running %.1f s after stop(): input_callback is blocking",
                    thread.name,
                    _JOIN_TIMEOUT,
                )
        with self._output_lock:
            writer, self._writer = self._writer, None
            self._output_carry = b""
        if writer is not None:
            try:
                writer.close()  # patches the RIFF and data sizes into the header
            except (OSError, wave.Error) as exc:
                raise AudioError(f"cannot finalise WAV file {self.output_path!r}: {exc}") from exc

    def output(self, audio: bytes) -> None:
        """Append ``audio`` (PCM16 mono 16 kHz) to the output WAV and return.

        Any thread. A sample split across two calls is joined. Without ``output_path``,
        or outside start()..stop(), the audio is dropped. Raises
        :class:`~elevenconv.errors.AudioError` if the write fails (disk full, ...).
        """
        with self._output_lock:
            if self._writer is None:
                return
            if self._output_carry:
                audio = self._output_carry + audio
                self._output_carry = b""
            if len(audio) % 2:
                self._output_carry = audio[-1:]
                audio = audio[:-1]
            try:
                # writeframesraw: no header rewrite per chunk; close() fixes the sizes.
                self._writer.writeframesraw(audio)
            except (OSError, wave.Error) as exc:
                raise AudioError(f"cannot write WAV file {self.output_path!r}: {exc}") from exc

    def interrupt(self) -> None:
        """Do nothing: there is no playback queue, every chunk is already in the file.

        The recording therefore keeps audio the Conversation later interrupted, as a
        record of what the server sent. Any thread.
        """

    def wait_until_drained(self, timeout: float) -> bool:
        """Return ``True`` at once: writes are synchronous, nothing is ever queued."""
        return True

    # -- input thread -----------------------------------------------------------------

    def _feed(self, input_callback: Callable[[bytes], None]) -> None:
        """Body of ``elevenconv-wavfile-input``: file, silence, then end or loop."""
        try:
            # Pacing: one deadline on the monotonic clock for the whole feed, advanced by
            # each chunk's duration, so callback time and wake-up jitter do not add up.
            # stop_event.wait() is the only wait, so stop() interrupts it at once.
            self._deadline = time.monotonic()
            while not self._stop_event.is_set():
                if not self._feed_bytes(input_callback, self._input_pcm):
                    return
                self.input_finished.set()
                if not self._feed_bytes(input_callback, self._silence):
                    return
                if not self.loop or not (self._input_pcm or self._silence):
                    return  # an empty file and no silence would spin forever
        except Exception:
            # The contract says input_callback never raises; if it does, the feed ends
            # and the traceback goes to the log instead of vanishing with the thread.
            logger.exception("input_callback raised; stopped feeding %s", self.input_path)

    def _feed_bytes(self, input_callback: Callable[[bytes], None], pcm: bytes) -> bool:
        """Feed ``pcm`` in ``chunk_ms`` chunks; ``False`` if stop() interrupted it."""
        view = memoryview(pcm)
        for offset in range(0, len(pcm), self._chunk_bytes):
            chunk = bytes(view[offset : offset + self._chunk_bytes])
            if self.realtime:
                self._deadline += len(chunk) / _BYTES_PER_SECOND
                remaining = self._deadline - time.monotonic()
                if remaining > 0 and self._stop_event.wait(remaining):
                    return False
            if self._stop_event.is_set():
                return False
            input_callback(chunk)
        return True
