"""Acoustic echo cancellation for the capture chain: WebRTC's audio processing module.

:class:`EchoCanceller` removes from the microphone signal what the speaker played. The
work is done by WebRTC's AudioProcessingModule (AEC3 echo canceller, optional noise
suppression, high-pass filter), the one browsers use, through the ``livekit`` package
(``livekit.rtc.AudioProcessingModule``; installed by ``pip install "elevenconv[audio]"``).
Nothing here is hand-written signal processing: this module only feeds that engine.

The engine wants 10 ms frames, the far end ("reverse stream": what the speaker plays)
before the near end (the microphone) that contains its echo, and both roughly in step.
Our capture chain runs on a thread, not in the device callbacks, so the two streams
arrive with different, varying delays (a microphone chunk is 250 ms long and handed over
after it was recorded; speaker buffers are handed over ahead of play-out). They are put
back in step by their timestamps, all on the ``time.monotonic()`` clock:

* :meth:`EchoCanceller.process_reverse` takes ``(pcm, played_at)``: the samples and when
  the first of them reaches the speaker. Any thread (a PortAudio callback included): it
  only appends to a bounded deque, O(1).
* :meth:`EchoCanceller.process_capture` takes ``(pcm, captured_at)``: microphone samples
  and when the first was recorded. It cuts them into 10 ms frames; before each frame it
  hands the engine the reference frames played up to that frame's time plus
  :attr:`lead_s` (the slack that keeps the reference ahead of its echo despite timestamp
  errors), silence where nothing was played. The engine's own delay estimator finds the
  rest (the room, the device buffers: up to about half a second).

Memory is bounded: at most :attr:`MAX_PENDING` reference chunks wait for the capture
thread, and at most ``max_reference_s`` (30 s) of reference audio is kept: what the
capture has passed goes first, then the far end of a reply handed over ahead (an
``output()`` that returns at once), so what plays next is never lost;
:meth:`discard_reference` forgets audio that will not play (an interruption). The
engine adds about 2.8 % of one core to a voice conversation on a small VM (~0.28 ms per
10 ms frame; ``benchmarks/echo.py``). With
``idle_skip_s`` it is skipped while the speaker has been silent that long (the
microphone then passes unchanged): cheaper, but off by default, because on a real device
the engine sometimes needed a second to cancel again after such a pause (measured: one
resume in five).

Threading: one thread (the capture chain's) calls :meth:`process_capture`;
:meth:`process_reverse` may be called from any thread at the same time.
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
from typing import Any, Final

from elevenconv._audio import SAMPLE_RATE
from elevenconv.errors import ConfigurationError

__all__ = ["EchoCanceller"]

_INSTALL_HINT: Final = (
    'echo cancellation needs the "livekit" package (WebRTC audio processing): '
    'pip install "elevenconv[audio]"'
)
_FRAME_MS: Final = 10


@functools.cache
def _import_rtc() -> Any:
    """Import ``livekit.rtc`` once (it loads a native library: about 0.3 s)."""
    from livekit import rtc

    return rtc


def _livekit_version() -> str:
    try:
        return importlib.metadata.version("livekit")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copy
        return "?"


class EchoCanceller:
    """Echo cancellation (and optionally noise suppression) for PCM16 mono audio.

    ``EchoCanceller(sample_rate=16000, echo_cancellation=True, noise_suppression=False)``.
    Feed what the speaker plays to :meth:`process_reverse` and the microphone to
    :meth:`process_capture`, which returns the microphone audio with the echo removed:
    as many bytes as it was given, 10 ms later (the engine works on whole 10 ms frames).

    Raises :class:`ImportError` naming the extra to install when ``livekit`` is missing
    (check with :meth:`available` first) and
    :class:`~elevenconv.errors.ConfigurationError` for bad arguments.
    """

    #: Reference chunks that may wait for the capture thread; beyond, the oldest go.
    MAX_PENDING: Final = 256
    #: Timestamp differences up to this are jitter: the reference is taken as contiguous.
    JITTER_S: Final = 0.03
    #: The timeline follows the timestamps when they disagree with it by more than
    #: JITTER_S for three chunks in a row, or by this much at once (a real gap).
    JUMP_S: Final = 0.25

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        echo_cancellation: bool = True,
        noise_suppression: bool = False,
        *,
        high_pass_filter: bool = True,
        lead_s: float = 0.04,
        max_reference_s: float = 30.0,
        idle_skip_s: float | None = None,
    ) -> None:
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ConfigurationError(
                f"sample_rate must be 8000, 16000, 32000 or 48000 Hz, got {sample_rate!r}"
            )
        if not echo_cancellation and not noise_suppression:
            raise ConfigurationError(
                "EchoCanceller needs echo_cancellation=True or noise_suppression=True"
            )
        if not 0.0 <= lead_s <= 0.2:
            raise ConfigurationError(f"lead_s must be from 0.0 to 0.2 s, got {lead_s!r}")
        if idle_skip_s is not None and not 0.5 <= idle_skip_s <= 60.0:
            raise ConfigurationError(
                f"idle_skip_s must be None or from 0.5 to 60 s, got {idle_skip_s!r}"
            )
        if not 0.5 <= max_reference_s <= 300.0:
            raise ConfigurationError(
                f"max_reference_s must be from 0.5 to 300 s, got {max_reference_s!r}"
            )
        try:
            rtc = _import_rtc()
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._rtc = rtc
        self.sample_rate = sample_rate
        self.echo_cancellation = bool(echo_cancellation)
        self.noise_suppression = bool(noise_suppression)
        self.lead_s = float(lead_s)
        self._apm: Any = rtc.AudioProcessingModule(
            echo_cancellation=self.echo_cancellation,
            noise_suppression=self.noise_suppression,
            high_pass_filter=high_pass_filter,
            auto_gain_control=False,
        )
        self._frame = sample_rate * _FRAME_MS // 1000  # samples per 10 ms frame
        self._frame_bytes = 2 * self._frame
        self._silence = bytes(self._frame_bytes)
        self._lead = round(self.lead_s * sample_rate)  # samples
        self._jitter = round(self.JITTER_S * sample_rate)
        self._jump = round(self.JUMP_S * sample_rate)
        self._off_timeline = 0  # consecutive reference chunks off the timeline by > JITTER_S
        self._max_ref = round(max_reference_s * sample_rate)
        self._idle_skip = idle_skip_s is not None
        self._tail = round((idle_skip_s or 0.0) * sample_rate)
        if self.echo_cancellation:
            # Our feeding emulates a device whose reference is rendered ``lead_s`` after it
            # is analysed and whose capture is processed as it is recorded. The value is
            # kept by the engine (AEC3 estimates the true delay itself); setting it per
            # frame would cost an FFI round trip each time.
            self._apm.set_stream_delay_ms(round(self.lead_s * 1000))
            # Measured: AEC3 converges deeper (about 60 dB instead of 46 in the test room)
            # when it has run on silence before the first echo: give it half a second now.
            for _ in range(50):
                for process in (self._apm.process_reverse_stream, self._apm.process_stream):
                    process(rtc.AudioFrame(self._silence, sample_rate, 1, self._frame))
        # Written by any thread (append is atomic), drained by the capture thread.
        self._pending: collections.deque[tuple[float, bytes | None]] = collections.deque(
            maxlen=self.MAX_PENDING
        )
        # Capture thread only. Times are sample positions: round(monotonic * rate).
        self._ref = bytearray()  # reference samples not yet fed, contiguous
        self._ref_pos: int | None = None  # position of self._ref[0]
        self._render_pos: int | None = None  # start of the next frame to feed the engine
        self._cap_carry = b""  # capture samples short of a whole frame
        self._out = bytearray(self._silence)  # processed audio not yet returned
        # The engine runs for capture/reference positions before this one (idle_skip_s).
        self._active_until: int | None = None
        #: Counters (capture thread): 10 ms frames processed, reference frames fed,
        #: reference frames fed as silence, reference frames skipped to catch up, capture
        #: frames passed unprocessed because the speaker was idle.
        self.capture_frames = 0
        self.reference_frames = 0
        self.silent_reference_frames = 0
        self.skipped_reference_frames = 0
        self.idle_frames = 0
        #: Reference chunks whose time disagreed with the timeline by more than JITTER_S.
        self.reference_resyncs = 0
        #: Reference samples dropped because they lay more than ``max_reference_s``
        #: ahead of what the speaker plays next (their echo is not cancelled).
        self.dropped_reference_samples = 0
        #: :meth:`discard_reference` calls applied.
        self.reference_discards = 0

    # -- introspection ---------------------------------------------------------------------

    @classmethod
    def available(cls) -> bool:
        """``True`` if the engine (``livekit``) can be imported (a successful import is
        cached; a missing one is tried again on each call)."""
        try:
            _import_rtc()
        except ImportError:
            return False
        return True

    @property
    def description(self) -> str:
        """What runs, for the INFO log, e.g. ``WebRTC AEC3 echo cancellation (livekit 1.2.1)``."""
        parts = []
        if self.echo_cancellation:
            parts.append("AEC3 echo cancellation")
        if self.noise_suppression:
            parts.append("noise suppression")
        return f"WebRTC {' + '.join(parts)} (livekit {_livekit_version()})"

    # -- the far end -----------------------------------------------------------------------

    def process_reverse(self, pcm: bytes, played_at: float) -> None:
        """Note ``pcm`` (PCM16 mono at :attr:`sample_rate`) as played from ``played_at`` on.

        ``played_at`` is the ``time.monotonic()`` instant its first sample reaches the
        speaker. Any thread, O(1): the chunk waits for the next :meth:`process_capture`.
        Silence that was played may be passed too, or left out (gaps count as silence).
        """
        if self.echo_cancellation and pcm:
            self._pending.append((played_at, pcm))

    def discard_reference(self, after: float) -> None:
        """Forget the reference from ``after`` (a ``time.monotonic()`` instant) on.

        For audio that was handed over ahead but will not play (an interruption cleared
        the player's buffer): left in place it would make the engine expect an echo that
        never comes and damp the user's speech. Any thread, O(1); applies in order with
        :meth:`process_reverse`, so audio handed over afterwards is kept.
        """
        if self.echo_cancellation:
            self._pending.append((after, None))

    def _take_pending(self) -> None:
        """Move waiting reference chunks onto the contiguous reference timeline."""
        pending = self._pending
        rate = self.sample_rate
        while pending:
            try:
                played_at, item = pending.popleft()
            except IndexError:  # pragma: no cover - only this thread pops
                break
            pos = round(played_at * rate)
            if item is None:  # discard_reference(): nothing plays from ``pos`` on
                if self._ref_pos is not None:
                    del self._ref[2 * max(0, pos - self._ref_pos) :]
                self.reference_discards += 1
                continue
            pcm = item[: len(item) - len(item) % 2]
            if self._ref_pos is None:
                self._ref_pos = pos
                self._ref[:] = pcm
                continue
            if not self._ref:
                # Nothing pending (all played, or a custom interface's tap that starts
                # anew): place it by its time; a part already in the past is dropped.
                late = self._ref_pos - pos
                if late >= 0:
                    self._ref[:] = pcm[2 * late :]
                else:  # frames before ``pos`` read as silence
                    self._ref[:] = pcm
                    self._ref_pos = pos
                continue
            end = self._ref_pos + len(self._ref) // 2
            gap = pos - end
            if abs(gap) <= self._jitter:
                self._off_timeline = 0
                self._ref += pcm  # contiguous: trust the sample count, not the clock
            elif abs(gap) < self._jump and self._off_timeline < 2:
                # A late callback or a jittery clock estimate, as long as it is not
                # confirmed by the next chunks: moving the timeline for it would make the
                # engine re-estimate the echo delay (a dip of seconds, measured).
                self._off_timeline += 1
                self._ref += pcm
            elif gap > 0:
                self._off_timeline = 0
                self.reference_resyncs += 1
                if gap + len(pcm) // 2 <= self._max_ref:
                    self._ref += bytes(2 * gap) + pcm  # silence between
                else:  # too far ahead to hold both: what plays first is kept
                    self.dropped_reference_samples += len(pcm) // 2
            else:
                self._off_timeline = 0
                self.reference_resyncs += 1
                # Starts earlier than the timeline's end (the player restarted or the
                # clock estimate moved back): the newer report wins from ``pos`` on.
                keep = pos - self._ref_pos
                if keep >= 0:
                    del self._ref[2 * keep :]
                    self._ref += pcm
                else:
                    self._ref[:] = pcm
                    self._ref_pos = pos
        excess = len(self._ref) // 2 - self._max_ref
        if excess > 0 and self._ref_pos is not None:
            # Samples the capture has passed go first: they will never be fed.
            if self._render_pos is not None:
                past = min(excess, max(0, self._render_pos - self._ref_pos))
                del self._ref[: 2 * past]
                self._ref_pos += past
                excess -= past
            # The rest lies ahead of the speaker (an output() that returns at once hands
            # over a whole reply): keep what plays next, drop the far end.
            if excess > 0:
                del self._ref[len(self._ref) - 2 * excess :]
                self.dropped_reference_samples += excess

    def _reference_frame(self, start: int) -> bytes:
        """The reference samples ``[start, start + frame)``; silence where there are none."""
        size = self._frame
        if self._ref_pos is None:
            return self._silence
        offset = start - self._ref_pos
        if offset >= len(self._ref) // 2 or offset + size <= 0:
            if offset > 0:  # all before ``start`` is in the past now
                self._ref.clear()
                self._ref_pos = start
            return self._silence
        head = b""
        if offset < 0:
            head, offset = bytes(-2 * offset), 0
        if offset:
            del self._ref[: 2 * offset]
            self._ref_pos += offset
        take = size - len(head) // 2
        frame = head + bytes(self._ref[: 2 * take])
        del self._ref[: 2 * take]
        self._ref_pos += take
        if len(frame) < self._frame_bytes:
            frame += bytes(self._frame_bytes - len(frame))
        return frame

    def _take_reference(self, until: int) -> list[bytes]:
        """The reference frames that start before ``until`` (a position), in order.

        Notes the last sound in :attr:`_active_until`.
        """
        if self._render_pos is None:
            self._render_pos = until - self._frame
        behind = (until - self._render_pos) // self._frame
        if behind > 8:  # the capture clock jumped ahead: do not flood the engine
            skip = (behind - 1) * self._frame
            self._render_pos += skip
            self.skipped_reference_frames += behind - 1
        size = self._frame
        frames = []
        while self._render_pos < until:
            pos = self._render_pos
            data = self._reference_frame(pos)
            if data is self._silence or data == self._silence:
                self.silent_reference_frames += 1
            else:
                self._active_until = pos + size + self._tail
            frames.append(data)
            self._render_pos = pos + size
            self.reference_frames += 1
        return frames

    # -- the near end ----------------------------------------------------------------------

    def process_capture(self, pcm: bytes, captured_at: float) -> bytes:
        """Return ``pcm`` (microphone, PCM16 mono) with the echo removed, 10 ms later.

        ``captured_at`` is the ``time.monotonic()`` instant its first sample was recorded.
        Returns exactly ``len(pcm)`` bytes (rounded down to whole samples): the
        processed audio lags the input by one 10 ms frame. The capture thread only.
        """
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        if not pcm or self._apm is None:
            return pcm  # closed: pass through rather than fail a late chunk
        if self.echo_cancellation:
            self._take_pending()
        rate = self.sample_rate
        size = self._frame
        frame_bytes = self._frame_bytes
        carry = self._cap_carry
        data = carry + pcm if carry else pcm
        # Position of data[0]: the carry was recorded just before this chunk.
        start = round(captured_at * rate) - len(carry) // 2
        rtc = self._rtc
        apm = self._apm
        full = len(data) - len(data) % frame_bytes
        for offset in range(0, full, frame_bytes):
            frame_pos = start + offset // 2
            self.capture_frames += 1
            if self.echo_cancellation:
                # Both streams skip the same steps, so the engine sees them in step.
                references = self._take_reference(frame_pos + size + self._lead)
                idle = self._idle_skip and (
                    self._active_until is None or frame_pos >= self._active_until
                )
                if idle and not self.noise_suppression:
                    self._out += data[offset : offset + frame_bytes]
                    self.idle_frames += 1
                    continue
                for reference in references:
                    apm.process_reverse_stream(rtc.AudioFrame(reference, rate, 1, size))
            frame = rtc.AudioFrame(data[offset : offset + frame_bytes], rate, 1, size)
            apm.process_stream(frame)
            self._out += frame.data.cast("B")
        self._cap_carry = data[full:]
        out = bytes(self._out[: len(pcm)])
        del self._out[: len(pcm)]
        return out

    def close(self) -> None:
        """Free the engine's state now rather than at garbage collection. Idempotent."""
        self._pending.clear()
        self._ref.clear()
        self._apm = None
