"""A WAV-file "microphone" and "speaker", for scripts, tests and the CLI.

:class:`WavFileAudioInterface` feeds a WAV file to the Conversation as if it were spoken
into a microphone, and records the agent's audio to a WAV file. No sound hardware needed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import threading
import time
import wave
from collections.abc import Callable
from typing import TYPE_CHECKING

from elevenconv._audio import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH, AudioInterface
from elevenconv._audioformat import PcmResampler
from elevenconv.errors import AudioError, ConfigurationError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["WavFileAudioInterface", "read_wav_pcm16_16k", "write_wav_pcm16"]

log = logging.getLogger(__name__)

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


class _WholeWriteFile(io.FileIO):
    """The unbuffered file under the recording's ``wave.Wave_write``: each write lands
    whole or not at all.

    A failed write (disk full, quota, I/O error) is truncated away before the error is
    re-raised, so the file always holds exactly the header plus the frames the writer
    counted, and ``Wave_write.close()`` can patch a header that matches the bytes on disk.
    Unbuffered, so an error surfaces in the ``output()`` call that caused it, not at some
    later flush.
    """

    def write(self, b: ReadableBuffer, /) -> int:
        view = memoryview(b).cast("B")
        start = self.tell()
        done = 0
        try:
            while done < len(view):
                n = super().write(view[done:])
                if not n:  # a regular file never does this; do not spin if one does
                    raise OSError(errno.EIO, "write made no progress")
                done += n
        except BaseException:
            if done:
                try:
                    self.truncate(start)
                    self.seek(start)
                except OSError:  # pragma: no cover -- shrinking a file needs no space
                    log.debug("could not truncate a partial write", exc_info=True)
            raise
        return done


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
    is created (with its header) in :meth:`start` and finalised in :meth:`stop`. Audio
    arriving before :meth:`start` or after :meth:`stop` is dropped. A write error (disk
    full, ...) raises :class:`~elevenconv.errors.AudioError` from that :meth:`output` call
    and ends the recording at once: the WAV is finalised and stays a valid file of
    everything written before the failed chunk; later audio is dropped and
    :attr:`write_error` keeps the error.

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
        self._file: _WholeWriteFile | None = None
        self._output_carry = b""
        self._write_error: AudioError | None = None

    @property
    def write_error(self) -> AudioError | None:
        """The error that ended the recording early, or ``None``."""
        return self._write_error

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
            self._open_output(self.output_path)
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
        """Stop feeding input, finalise the output WAV, and join the input thread.

        Idempotent. The WAV is finalised first and always (its file closed even if that
        fails); the input thread is then joined for at most about 5 s, so ``stop()``
        returns even if ``input_callback`` is stuck (logged as an error; the daemon thread
        is abandoned). Safe to call from inside ``input_callback`` (the thread does not
        join itself). Raises :class:`~elevenconv.errors.AudioError` if the output file
        cannot be finalised.
        """
        self._stop_event.set()
        with self._output_lock:
            error = self._close_output()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.error(
                    "%s still running %.1f s after stop(): input_callback is blocking",
                    thread.name,
                    _JOIN_TIMEOUT,
                )
        if error is not None:
            raise AudioError(f"cannot finalise WAV file {self.output_path!r}: {error}") from error

    def output(self, audio: bytes) -> None:
        """Append ``audio`` (PCM16 mono 16 kHz) to the output WAV and return.

        Any thread. A sample split across two calls is joined. Without ``output_path``,
        outside start()..stop(), or after a write error, the audio is dropped. Raises
        :class:`~elevenconv.errors.AudioError` if the write fails (disk full, ...): the
        recording then ends, its WAV finalised with everything written before this chunk.
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
                written = self._writer.getnframes() / SAMPLE_RATE
                close_error = self._close_output()
                message = (
                    f"cannot write WAV file {self.output_path!r}: {exc}; the recording "
                    f"stopped and the file keeps the {written:.2f} s written before"
                )
                if close_error is not None:
                    message += f" (but finalising it failed too: {close_error})"
                else:
                    message += " (finalised, valid WAV)"
                self._write_error = AudioError(message + "; free some space or choose another path")
                raise self._write_error from exc

    # -- output file --------------------------------------------------------------------

    def _open_output(self, path: str) -> None:
        """Create the WAV and write its header now, so a full disk or a bad path fails
        start(), and a file exists (empty but valid) from the first moment."""
        try:
            file = _WholeWriteFile(path, "w")
        except OSError as exc:
            raise AudioError(f"cannot create WAV file {path!r}: {exc}") from exc
        writer = wave.open(file, "wb")  # noqa: SIM115 -- open until stop()
        try:
            writer.setnchannels(CHANNELS)
            writer.setsampwidth(SAMPLE_WIDTH)
            writer.setframerate(SAMPLE_RATE)
            writer.writeframesraw(b"")  # writes the header
        except (OSError, wave.Error) as exc:
            # close() the writer too, or its __del__ would try the header again later.
            with contextlib.suppress(OSError, wave.Error):
                writer.close()
            with contextlib.suppress(OSError):
                file.truncate(0)  # no half header (fails harmlessly on a device)
            file.close()
            raise AudioError(f"cannot create WAV file {path!r}: {exc}") from exc
        with self._output_lock:
            self._writer, self._file = writer, file

    def _close_output(self) -> BaseException | None:
        """Finalise the header and close the file (under the output lock); the error of
        finalising, if any. The file is closed whatever happens."""
        writer, self._writer = self._writer, None
        file, self._file = self._file, None
        self._output_carry = b""
        error: BaseException | None = None
        if writer is not None:
            try:
                writer.close()  # patches the RIFF and data sizes into the header
            except (OSError, wave.Error) as exc:
                error = exc
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                error = error or exc
        return error

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
            log.exception("input_callback raised; stopped feeding %s", self.input_path)

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
