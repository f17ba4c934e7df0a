"""Voice conversations end to end: a Conversation on a real WebSocket (127.0.0.1) with the
real :class:`DefaultAudioInterface` on the PulseAudio test server (scripts/sound-server).

The loopback server (:class:`LoopbackControl`) plays the agent: it announces the audio
formats, sends ``audio`` messages and ``interruption`` s, and records every
``user_audio_chunk``. The speaker is recorded from ``elevenconv_speaker.monitor``
(:class:`SpeakerCapture`); the microphone is fed by playing into ``elevenconv_mic``.
All waits are on Conditions, queues and events (the capture's, the server's, the
Conversation's ``mode_change``), never on sleeps. Run with ``-s`` to see the figures.

The last test (:func:`test_wav_file_interface_through_a_conversation`) needs no sound
server: it runs the same path with :class:`WavFileAudioInterface`, faster than real time.
"""

from __future__ import annotations

import base64
import queue
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from elevenconv import Conversation, ElevenLabsClient, WavFileAudioInterface
from elevenconv._audioformat import (
    AUDIO_FORMATS,
    AgentAudioDecoder,
    UserAudioEncoder,
    parse_audio_format,
    ulaw_decode,
    ulaw_encode,
)
from elevenconv._fileaudio import write_wav_pcm16
from elevenconv._voice import MAX_CONSECUTIVE_DEVICE_FAILURES
from elevenconv.errors import AudioError
from tests.conftest import library_threads, scaled
from tests.fixtures_loopback import LoopbackControl
from tests.fixtures_sound import (
    RATE,
    SoundServer,
    SpeakerCapture,
    as_array,
    chirp,
    dominant_frequency,
    envelope,
    play_into_mic,
    rms,
    tone,
)
from tests.helpers import agent_response, audio_message, ping
from tests.test_voice_pipeline import FakeDevice

#: One output buffer of DefaultAudioInterface: the most an interruption may still play
#: after it reached the client (the interface's own share; see test_audio_device.py).
BUFFER_S = 1000 / RATE
#: Measurement slack on top of BUFFER_S for the barge-in and end_session figures:
#: 2 ms of measurement resolution (a 1 ms envelope window at each edge, clock reads, as in
#: test_audio_device.py) + 3 ms for the path the interface-level test does not have:
#: loopback TCP (~0.1 ms), the reader thread's recv + JSON parse + routing (~0.3 ms idle,
#: a few ms on a loaded 2-core CI machine).
SLACK_S = 0.005
#: Envelope level (of full scale 32767) above which the captured signal counts as sound.
THRESHOLD = 500
#: The device holds ~0.13-0.2 s (PortAudio + PulseAudio) after the last buffer was handed
#: over; waiting this long past a moment on the capture's clock covers it.
DEVICE_TAIL_S = 0.4


# ======================================================================================
# Helpers
# ======================================================================================


def encode_agent_audio(fmt: str, pcm_at_rate: bytes) -> bytes:
    """PCM16 at the format's own rate -> the wire bytes of ``fmt``."""
    return ulaw_encode(pcm_at_rate) if fmt.startswith("ulaw") else pcm_at_rate


def decode_wire(fmt: str, data: bytes) -> np.ndarray:
    """Wire bytes of ``fmt`` -> float samples at the format's own rate."""
    return as_array(ulaw_decode(data) if fmt.startswith("ulaw") else data)


def chunked(data: bytes, fmt: str, chunk_s: float) -> list[bytes]:
    """Cut wire audio into ``chunk_s`` chunks (whole samples)."""
    spec = parse_audio_format(fmt)
    bytes_per_sample = 1 if spec.encoding == "ulaw" else 2
    size = round(chunk_s * spec.sample_rate) * bytes_per_sample
    return [data[i : i + size] for i in range(0, len(data), size)]


def spans(x: Any, threshold: float = THRESHOLD, gap_s: float = 0.05) -> list[tuple[int, int]]:
    """[first, last) of each loud stretch of ``x``; quieter gaps under ``gap_s`` are joined."""
    loud = np.nonzero(envelope(x) > threshold)[0]
    if not len(loud):
        return []
    breaks = np.nonzero(np.diff(loud) > gap_s * RATE)[0]
    starts = [int(loud[0])] + [int(loud[i + 1]) for i in breaks]
    ends = [int(loud[i]) + 1 for i in breaks] + [int(loud[-1]) + 1]
    return list(zip(starts, ends, strict=True))


def best_alignment(captured: Any, sent: Any) -> tuple[int, float]:
    """(lag, normalised correlation) of ``sent`` inside ``captured`` (FFT correlation)."""
    n = len(captured) + len(sent)
    corr = np.fft.irfft(np.fft.rfft(captured, n) * np.conj(np.fft.rfft(sent, n)), n)
    corr = corr[: len(captured) - len(sent) + 1]
    lag = int(np.argmax(corr))
    segment = captured[lag : lag + len(sent)]
    ncc = float(np.dot(segment, sent) / (np.linalg.norm(segment) * np.linalg.norm(sent)))
    return lag, ncc


class Timeline:
    """Conversation events with the monotonic time their handler ran (events thread)."""

    def __init__(self, conv: Conversation) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], float]] = []
        self._cond = threading.Condition()
        for name in ("mode_change", "interruption", "session_ended", "error"):
            conv.add_listener(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            with self._cond:
                self.calls.append((name, args, time.monotonic()))
                self._cond.notify_all()

        return record

    def of(self, name: str) -> list[tuple[tuple[Any, ...], float]]:
        with self._cond:
            return [(args, t) for n, args, t in self.calls if n == name]

    def modes(self) -> list[str]:
        return [args[0] for args, _ in self.of("mode_change")]

    def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for n, _, _ in self.calls if n == name) >= count, scaled(timeout)
            )
        assert ok, f"expected {count} {name!r} event(s): {[(n, a) for n, a, _ in self.calls]}"


class MicLog:
    """What the server received as ``user_audio_chunk``: arrival time, wire bytes, samples.

    Its :meth:`on_send` is the LoopbackControl's ``on_send`` hook (server thread).
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.rate = parse_audio_format(fmt).sample_rate
        self.chunks: list[tuple[float, int, np.ndarray]] = []
        self._cond = threading.Condition()

    def on_send(self, control: LoopbackControl, message: Any) -> None:
        if isinstance(message, dict) and "user_audio_chunk" in message:
            now = time.monotonic()
            data = base64.b64decode(message["user_audio_chunk"])
            with self._cond:
                self.chunks.append((now, len(data), decode_wire(self.fmt, data)))
                self._cond.notify_all()

    def snapshot(self) -> list[tuple[float, int, np.ndarray]]:
        with self._cond:
            return list(self.chunks)

    def samples(self, after: float = 0.0, before: float = float("inf")) -> np.ndarray:
        got = [s for t, _, s in self.snapshot() if after <= t < before]
        return np.concatenate(got) if got else np.zeros(0)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, scaled(timeout))

    def wait_past(self, t: float, timeout: float = 5.0) -> None:
        """Wait until a chunk that arrived after ``t`` is in."""
        assert self.wait_for(lambda: bool(self.chunks) and self.chunks[-1][0] > t, timeout), (
            f"no microphone audio reached the server after t={t:.3f}"
        )

    def wait_loud(self, seconds: float, timeout: float = 10.0, after: float = 0.0) -> None:
        """Wait until ``seconds`` of loud audio (arrived after ``after``) are in."""

        def enough() -> bool:
            got = [s for t, _, s in self.chunks if t >= after]
            if not got:
                return False
            x = np.concatenate(got)
            return np.count_nonzero(envelope(x) > THRESHOLD) >= seconds * self.rate

        assert self.wait_for(enough, timeout), f"{seconds} s of tone never reached the server"


class TimedAudioInterface:
    """Builds the real DefaultAudioInterface; its playback callback also notes *when*.

    Only used where a figure needs the instant the first buffer was handed to the device
    (the anchor that cancels the fixed device latency, as in test_audio_device.py). The
    Conversation's own callback still runs, first thing after the timestamp; everything
    else is DefaultAudioInterface unchanged.
    """

    @staticmethod
    def create() -> tuple[Any, queue.Queue[tuple[bool, float]]]:
        from elevenconv import DefaultAudioInterface

        transitions: queue.Queue[tuple[bool, float]] = queue.Queue()
        iface = DefaultAudioInterface()
        original = iface.set_playback_callback

        def set_playback_callback(callback: Any) -> bool:
            def timed(playing: bool) -> None:
                transitions.put_nowait((playing, time.monotonic()))
                if callback is not None:
                    callback(playing)

            return original(timed if callback is not None else None)

        iface.set_playback_callback = set_playback_callback  # type: ignore[method-assign]
        return iface, transitions


class Voice:
    """One voice session: loopback agent + Conversation + DefaultAudioInterface."""

    def __init__(
        self,
        output_format: str = "pcm_16000",
        input_format: str = "pcm_16000",
        iface: Any = None,
        **conv_kwargs: Any,
    ) -> None:
        from elevenconv import DefaultAudioInterface

        self.output_format = output_format
        self.mic = MicLog(input_format)
        self.control = LoopbackControl(
            agent_output_audio_format=output_format,
            user_input_audio_format=input_format,
            on_send=self.mic.on_send,
        )
        self.control.server.__enter__()
        self.iface = iface if iface is not None else DefaultAudioInterface()
        # These tests measure the raw chains (bit-exact levels and timings); echo
        # cancellation has its own tests below and in test_room.py.
        conv_kwargs.setdefault("echo_cancellation", False)
        self.conv = Conversation(
            ElevenLabsClient(base_url=self.control.server.base_url),
            "agent",
            requires_auth=False,
            audio_interface=self.iface,
            **conv_kwargs,
        )
        self.timeline = Timeline(self.conv)

    def start(self) -> Voice:
        self.conv.start_session()
        return self

    def send_audio(self, wire: bytes, event_id: int = 1, chunk_s: float = 0.2) -> None:
        """Send agent audio (wire bytes) as ``audio`` messages, as fast as possible."""
        for chunk in chunked(wire, self.output_format, chunk_s):
            self.control.push(audio_message(event_id, chunk))

    def close(self) -> None:
        try:
            self.conv.end_session()
        finally:
            self.control.server.__exit__(None, None, None)


@pytest.fixture
def voice(sound_server: SoundServer) -> Iterator[Callable[..., Voice]]:
    """``voice(output_format, input_format, **conversation_kwargs)`` -> a Voice, not started."""
    made: list[Voice] = []

    def make(*args: Any, **kwargs: Any) -> Voice:
        v = Voice(*args, **kwargs)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()
    for v in made:
        if v.control.server.errors:
            raise v.control.server.errors[0]


@pytest.fixture
def capture(sound_server: SoundServer) -> Iterator[SpeakerCapture]:
    with SpeakerCapture() as cap:
        assert cap.wait_recording(scaled(5)), "parecord delivered nothing"
        yield cap


def wait_played(v: Voice, cap: SpeakerCapture, listening: int = 1, timeout: float = 10) -> None:
    """Wait until the ``listening``-th playback has drained and its sound was captured."""
    v.timeline.wait_for("mode_change", 2 * listening, timeout)
    assert v.timeline.modes()[-1] == "listening"
    assert cap.wait_until(time.monotonic() + DEVICE_TAIL_S, scaled(5))


# ======================================================================================
# Agent audio -> speaker, every announced format
# ======================================================================================


@pytest.mark.audio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_agent_audio_reaches_the_speaker_intact(
    fmt: str, voice: Callable[..., Voice], capture: SpeakerCapture
) -> None:
    rate = parse_audio_format(fmt).sample_rate
    seconds = 1.0
    # 200 Hz -> 3 kHz stays inside every format's band (8 kHz: Nyquist 4 kHz).
    wire = encode_agent_audio(fmt, chirp(200, 3000, seconds, amplitude=0.5, rate=rate))
    reference = as_array(chirp(200, 3000, seconds, amplitude=0.5, rate=RATE))
    v = voice(output_format=fmt).start()
    v.send_audio(wire, chunk_s=0.2)
    wait_played(v, capture)

    captured = as_array(capture.pcm)
    lag, ncc = best_alignment(captured, reference)
    found = spans(captured)
    assert len(found) == 1, f"playback had gaps: {[(a / RATE, b / RATE) for a, b in found]}"
    first, last = found[0]
    duration = (last - first) / RATE
    print(
        f"\n[format {fmt}] correlation with the 16 kHz reference {ncc:.5f}, "
        f"duration {duration:.4f} s (sent {seconds:.1f} s), onset vs alignment "
        f"{(first - lag) / RATE * 1000:+.1f} ms"
    )
    assert ncc > 0.98
    assert abs(first - lag) <= 0.005 * RATE  # the sound starts where the chirp aligns
    assert duration == pytest.approx(seconds, rel=0.02)
    assert v.timeline.modes() == ["speaking", "listening"]


# ======================================================================================
# Microphone -> server, at the announced input format
# ======================================================================================


@pytest.mark.audio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["pcm_16000", "pcm_44100", "ulaw_8000", "pcm_8000"])
def test_mic_tone_reaches_the_server_in_the_announced_format(
    fmt: str, voice: Callable[..., Voice]
) -> None:
    v = voice(input_format=fmt).start()
    mic = v.mic
    mic.wait_past(time.monotonic())  # the microphone stream runs
    with play_into_mic(tone(1000, 1.0, amplitude=0.5)) as playback:
        mic.wait_loud(0.9, timeout=10)
        assert playback.wait(scaled(10)) == 0
    # The whole tone is in once a chunk recorded after pacat finished has arrived.
    mic.wait_past(time.monotonic() + 0.3)

    received = mic.samples()
    found = spans(received, gap_s=0.05 * mic.rate / RATE)
    # (A gap with no drop counted is the test's pacat under load, not the library.)
    assert len(found) == 1, f"the tone arrived in pieces: {found}; stats {v.conv.stats}"
    first, last = found[0]
    tone_s = (last - first) / mic.rate
    freq = dominant_frequency(received[first:last], rate=mic.rate)
    level = rms(received[first:last])
    # Wire bytes per second of wall clock: the slope of bytes received vs arrival time,
    # fitted over all chunks (less sensitive to one chunk's jitter than two end points).
    chunks = mic.snapshot()
    arrivals = np.array([t for t, _, _ in chunks])
    elapsed = arrivals[-1] - arrivals[0]
    byte_rate = float(np.polyfit(arrivals, np.cumsum([n for _, n, _ in chunks]), 1)[0])
    bytes_per_sample = 1 if fmt.startswith("ulaw") else 2
    print(
        f"\n[mic {fmt}] dominant {freq:.1f} Hz, tone {tone_s:.3f} s of 1.0 s at {mic.rate} Hz, "
        f"rms {level:.0f} (played {0.5 * 32767 / 2**0.5:.0f}), {byte_rate:.0f} B/s over "
        f"{elapsed:.2f} s (expected {mic.rate * bytes_per_sample})"
    )
    assert freq == pytest.approx(1000, abs=10)
    # 1.0 s at the announced rate; a wrong rate would stretch or squeeze it.
    assert tone_s == pytest.approx(1.0, abs=0.02)
    assert level == pytest.approx(0.5 * 32767 / 2**0.5, rel=0.05)
    # Coarse (chunks come every 250 ms, with scheduling jitter), but it tells PCM16 from
    # mu-law and 16 kHz from 44.1 kHz; the tone's length above is the precise check.
    assert byte_rate == pytest.approx(mic.rate * bytes_per_sample, rel=0.06)


# ======================================================================================
# Barge-in: interruption -> silence within one device buffer
# ======================================================================================


def interruption(event_id: int) -> dict[str, Any]:
    return {"type": "interruption", "interruption_event": {"event_id": event_id}}


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_interruption_silences_the_speaker_within_one_buffer(
    voice: Callable[..., Voice], capture: SpeakerCapture
) -> None:
    iface, transitions = TimedAudioInterface.create()
    v = voice(iface=iface).start()
    # ~3 s of tone, sent far faster than real time: it is queued in the interface.
    v.send_audio(tone(1000, 3.0, amplitude=0.5), event_id=1, chunk_s=0.25)
    playing, t_play = transitions.get(timeout=scaled(5))  # first buffer handed over
    assert playing
    # Mid-way: wait (on the capture's Condition) until ~1 s of the tone has been played.
    assert capture.wait_until(t_play + 1.0, scaled(5))

    # The clock starts when the server *sends* the interruption. The client receives it
    # later (loopback: ~0.1 ms), so this over-estimates the delay: an upper bound.
    t_sent = time.monotonic()
    v.control.push(interruption(2))
    playing, t_stopped = transitions.get(timeout=scaled(5))
    assert not playing
    # Stale audio of the interrupted response must never play; the next response must.
    v.send_audio(tone(1000, 0.5, amplitude=0.5), event_id=1, chunk_s=0.25)
    v.send_audio(tone(500, 0.4, amplitude=0.5), event_id=2, chunk_s=0.2)
    wait_played(v, capture, listening=2)

    captured = as_array(capture.pcm)
    found = spans(captured)
    assert len(found) == 2, f"expected tone, silence, new response: {found}"
    (onset, silence), (second, second_end) = found
    # The tone's onset in the capture is the sound of the buffer handed over at t_play:
    # anchoring there cancels the fixed PortAudio + PulseAudio latency (the same for the
    # first and the last buffer), leaving what the Conversation + interface add.
    played_s = (silence - onset) / RATE
    anchored = played_s - (t_sent - t_play)
    absolute = capture.time_of(silence) - t_sent
    t_event = v.timeline.of("interruption")[0][1]
    print(
        f"\n[barge-in] interruption sent -> speaker silent: {anchored * 1000:.1f} ms after "
        f"the device latency (limit {BUFFER_S * 1000:.1f} ms + {SLACK_S * 1000:.0f} ms "
        f"slack); absolute incl. PortAudio/PulseAudio buffering {absolute * 1000:.1f} ms; "
        f"playback callback False after {(t_stopped - t_sent) * 1000:.1f} ms; "
        f"'interruption' handler ran after {(t_event - t_sent) * 1000:.1f} ms; "
        f"stale chunks dropped: {v.conv.stats['stale_audio']}"
    )
    # 0 .. one buffer, depending on where in the device's 62.5 ms cycle it arrives.
    assert anchored <= BUFFER_S + SLACK_S
    assert 0.9 <= played_s <= 1.3
    assert t_stopped - t_sent <= BUFFER_S + 0.05  # the next device callback reported it
    # After the silence: only the new response (500 Hz, 0.4 s), no stale 1 kHz tone.
    assert dominant_frequency(captured[onset:silence]) == pytest.approx(1000, abs=5)
    assert dominant_frequency(captured[second:second_end]) == pytest.approx(500, abs=5)
    assert (second_end - second) / RATE == pytest.approx(0.4, abs=0.01)
    assert v.conv.stats["stale_audio"] == 2
    assert v.timeline.modes() == ["speaking", "listening", "speaking", "listening"]


# ======================================================================================
# Voice controls: volume, output mute, microphone mute, half-duplex
# ======================================================================================


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_volume_halves_and_output_mute_silences_at_once(
    voice: Callable[..., Voice], capture: SpeakerCapture
) -> None:
    v = voice().start()
    sent = tone(700, 0.6, amplitude=0.6)
    reference = rms(as_array(sent))
    v.send_audio(sent)
    wait_played(v, capture, listening=1)
    v.conv.set_volume(0.5)
    v.send_audio(sent)
    wait_played(v, capture, listening=2)
    v.conv.set_volume(1.0)

    # Mute mid-utterance, unmute 0.5 s later: silence in between, and the audio goes on
    # where the agent is (muted audio is consumed in real time, not paused).
    v.send_audio(tone(700, 2.0, amplitude=0.6))
    v.timeline.wait_for("mode_change", 5)
    t_speaking = v.timeline.of("mode_change")[-1][1]
    assert capture.wait_until(t_speaking + 0.6, scaled(5))
    t_mute = time.monotonic()
    v.conv.set_output_muted(True)
    assert capture.wait_until(time.monotonic() + 0.5, scaled(5))
    t_unmute = time.monotonic()
    v.conv.set_output_muted(False)
    wait_played(v, capture, listening=3)

    captured = as_array(capture.pcm)
    found = spans(captured)
    assert len(found) == 4, f"expected full, half, before-mute, after-mute: {found}"
    (a, b), (c, d), (e, f), (g, h) = found
    full = rms(captured[a:b]) / reference
    half = rms(captured[c:d]) / reference
    gap = (g - f) / RATE
    total = (h - e) / RATE
    print(
        f"\n[volume] rms ratio at 1.0: {full:.4f}, at 0.5: {half:.4f}; muted "
        f"{(t_unmute - t_mute) * 1000:.0f} ms -> gap {gap * 1000:.0f} ms, utterance "
        f"start to end {total:.3f} s (2.0 s sent); peak in the gap "
        f"{np.max(np.abs(captured[f:g])):.0f}"
    )
    assert full == pytest.approx(1.0, abs=0.01)
    assert half == pytest.approx(0.5, abs=0.01)
    assert np.max(np.abs(captured[f:g])) == 0  # muted: digital silence
    # Each switch takes effect at the next device callback (<= one buffer), so the gap
    # matches the muted time within a buffer.
    assert gap == pytest.approx(t_unmute - t_mute, abs=BUFFER_S + SLACK_S)
    assert total == pytest.approx(2.0, abs=0.02)
    # Muted audio still "plays": the mode stays speaking through the mute.
    assert v.timeline.modes() == ["speaking", "listening"] * 3


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_mic_mute_sends_silence_while_the_mic_has_a_tone(voice: Callable[..., Voice]) -> None:
    v = voice()
    v.conv.set_mic_muted(True)  # before start: no unmuted chunk is ever sent
    v.start()
    mic = v.mic
    with play_into_mic(tone(1000, 1.0, amplitude=0.5)) as playback:
        assert playback.wait(scaled(10)) == 0
    # Everything recorded while the tone played has been sent once a later chunk is in.
    mic.wait_past(time.monotonic() + 0.3)
    t_unmute = time.monotonic()
    v.conv.set_mic_muted(False)
    muted = mic.samples(before=t_unmute)
    with play_into_mic(tone(1000, 1.0, amplitude=0.5)) as playback:
        mic.wait_loud(0.9, after=t_unmute)
        assert playback.wait(scaled(10)) == 0
    unmuted = mic.samples(after=t_unmute)
    print(
        f"\n[mic mute] muted: {len(muted) / RATE:.2f} s sent, peak "
        f"{np.max(np.abs(muted)):.0f}; unmuted: rms of the tone "
        f"{rms(unmuted[envelope(unmuted) > THRESHOLD]):.0f}"
    )
    assert len(muted) >= 1.0 * RATE  # the stream kept running: silence was sent
    assert np.max(np.abs(muted)) == 0
    assert rms(unmuted[envelope(unmuted) > THRESHOLD]) == pytest.approx(
        0.5 * 32767 / 2**0.5, rel=0.05
    )


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_echo_guard_sends_silence_while_the_agent_speaks_and_its_tail(
    voice: Callable[..., Voice],
) -> None:
    tail_s = 0.3
    v = voice().start()
    v.conv.set_echo_guard(True, tail_s=tail_s)
    mic = v.mic
    expected = 0.5 * 32767 / 2**0.5
    with play_into_mic(tone(1000, 5.0, amplitude=0.5)):
        mic.wait_loud(0.5)  # the tone comes through while the agent is quiet
        v.send_audio(tone(700, 1.0, amplitude=0.5))
        v.timeline.wait_for("mode_change", 2)
        (_, t_speaking), (_, t_listening) = v.timeline.of("mode_change")
        t_guard_end = t_listening + tail_s
        mic.wait_loud(0.7, after=t_guard_end + 0.05)  # ... and again after the tail
    chunks = mic.snapshot()
    # The guard is decided when a chunk is sent, which is just before the server gets
    # it; mode_change runs just after the device reported the change. 50 ms of margin
    # at the end covers the events thread's lag.
    guarded = [s for t, _, s in chunks if t_speaking + 0.01 <= t <= t_guard_end - 0.05]
    # The guard is decided per 250 ms chunk when it is captured, and the chunk reaches the
    # server in 100 ms pieces: a chunk silenced just before the tail ended may arrive up
    # to one chunk later, so "after" starts one chunk (+ margin) past the tail.
    after = [s for t, _, s in chunks if t_guard_end + 0.3 < t <= t_guard_end + 0.9]
    before = [s for t, _, s in chunks if t < t_speaking]
    print(
        f"\n[echo guard] agent spoke {t_listening - t_speaking:.2f} s + {tail_s} s tail: "
        f"{len(guarded)} chunks inside, peak {max(np.max(np.abs(s)) for s in guarded):.0f}; "
        f"after: {len(after)} chunks, rms {[round(rms(s)) for s in after]}"
    )
    assert rms(before[-1]) == pytest.approx(expected, rel=0.05)  # tone before the agent
    assert len(guarded) >= 3  # (1.0 s + 0.3 s - margins) of 250 ms chunks
    assert all(np.max(np.abs(s)) == 0 for s in guarded)
    assert len(after) >= 2
    assert all(rms(s) == pytest.approx(expected, rel=0.05) for s in after)


# ======================================================================================
# Ending: the agent's last words play out; the user's end_session() stops at once
# ======================================================================================


def end_call_response() -> dict[str, Any]:
    return {
        "type": "agent_tool_response",
        "agent_tool_response": {
            "tool_name": "end_call",
            "tool_call_id": "end_1",
            "tool_type": "system",
            "is_error": False,
            "is_called": True,
            "event_id": 1,
        },
    }


@pytest.mark.audio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["close-1000", "end_call-then-drop"])
def test_agent_end_plays_the_queued_audio_to_its_end(
    how: str, voice: Callable[..., Voice], capture: SpeakerCapture
) -> None:
    # A resampled format, so the resampler's held-back tail must be flushed too.
    fmt = "pcm_24000"
    seconds = 1.5
    v = voice(output_format=fmt).start()
    t_sent = time.monotonic()
    v.send_audio(chirp(200, 3000, seconds, amplitude=0.5, rate=24000), chunk_s=0.25)
    if how == "close-1000":
        v.control.server_close(1000, "bye")  # right away: 1.5 s are still queued
    else:
        # end_call alone means "play my last words", even if the connection then dies.
        v.control.push(end_call_response())
        v.control.drop()
    v.timeline.wait_for("session_ended", timeout=10)
    (_conv_id, code, _reason), t_ended = v.timeline.of("session_ended")[0]
    assert capture.wait_until(time.monotonic() + DEVICE_TAIL_S, scaled(5))

    captured = as_array(capture.pcm)
    found = spans(captured)
    assert len(found) == 1, f"playback had gaps: {found}"
    first, last = found[0]
    duration = (last - first) / RATE
    _, ncc = best_alignment(captured, as_array(chirp(200, 3000, seconds, 0.5, rate=RATE)))
    last_heard = capture.time_of(last)
    print(
        f"\n[agent end {how}] played {duration:.4f} s of {seconds} s (correlation "
        f"{ncc:.5f}); session_ended {(t_ended - t_sent):.3f} s after the audio was sent, "
        f"{(t_ended - last_heard) * 1000:+.0f} ms after the last sample was heard; "
        f"close code {code}"
    )
    assert duration == pytest.approx(seconds, abs=0.02)
    assert ncc > 0.99
    # The device was stopped only after it had played everything: session_ended comes
    # after the last sound (the capture's clock is good to its 10 ms latency).
    assert t_ended >= last_heard - 0.02
    assert v.timeline.modes() == ["speaking", "listening"]
    assert code == (1000 if how == "close-1000" else None)


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_user_end_session_stops_playback_at_once(
    voice: Callable[..., Voice], capture: SpeakerCapture, sound_server: SoundServer
) -> None:
    streams_before = sound_server.sink_inputs()
    iface, transitions = TimedAudioInterface.create()
    v = voice(iface=iface).start()
    v.send_audio(tone(1000, 5.0, amplitude=0.5), chunk_s=0.25)
    playing, t_play = transitions.get(timeout=scaled(5))
    assert playing
    assert capture.wait_until(t_play + 0.5, scaled(5))
    t_end = time.monotonic()
    v.conv.end_session()
    wall = time.monotonic() - t_end
    assert capture.wait_until(time.monotonic() + DEVICE_TAIL_S, scaled(5))

    captured = as_array(capture.pcm)
    found = spans(captured)
    assert len(found) == 1, f"sound after the end: {found}"
    onset, silence = found[0]
    anchored = (silence - onset) / RATE - (t_end - t_play)
    absolute = capture.time_of(silence) - t_end
    (_, code, _), t_ended = v.timeline.of("session_ended")[0]
    print(
        f"\n[end_session] returned after {wall * 1000:.1f} ms; speaker silent "
        f"{anchored * 1000:.1f} ms after the call (beyond the device latency; absolute "
        f"{absolute * 1000:.1f} ms); session_ended after {(t_ended - t_end) * 1000:.1f} ms"
    )
    # end_session() returns once every thread is joined and the devices are closed:
    # measured 183-254 ms, nearly all of it DefaultAudioInterface.stop() waiting in
    # PortAudio's stop_stream() (the microphone's up to one 250 ms input buffer, the
    # speaker's ~30-60 ms). The speaker is silent long before (asserted below).
    assert wall <= scaled(0.5)
    assert anchored <= BUFFER_S + SLACK_S
    assert code == 1000
    assert not library_threads()
    assert sound_server.sink_inputs() == streams_before  # the device is free


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_user_end_session_is_silent_at_once_even_if_the_close_reply_is_late(
    voice: Callable[..., Voice], capture: SpeakerCapture
) -> None:
    # A slow network or a busy server: the close handshake takes a while (here: the
    # server's connection is frozen for 0.5 s). The speaker must not wait for it.
    iface, transitions = TimedAudioInterface.create()
    v = voice(iface=iface, close_timeout=2.0).start()
    v.send_audio(tone(1000, 5.0, amplitude=0.5), chunk_s=0.25)
    playing, t_play = transitions.get(timeout=scaled(5))
    assert playing
    assert capture.wait_until(t_play + 0.5, scaled(5))
    server_side = v.control._connection()
    ender = threading.Thread(target=v.conv.end_session, name="test-end-session")
    # Holding the server connection's protocol lock stops it from processing (and
    # answering) our close frame until released.
    with server_side.protocol_mutex:
        t_end = time.monotonic()
        ender.start()
        assert capture.wait_until(t_end + 0.5, scaled(5))
    ender.join(scaled(10))
    assert not ender.is_alive()
    assert capture.wait_until(time.monotonic() + DEVICE_TAIL_S, scaled(5))

    captured = as_array(capture.pcm)
    found = spans(captured)
    assert len(found) == 1, f"sound after the end: {found}"
    onset, silence = found[0]
    anchored = (silence - onset) / RATE - (t_end - t_play)
    print(
        f"\n[end_session, late close reply] speaker silent {anchored * 1000:.1f} ms after "
        f"the call (beyond the device latency)"
    )
    assert anchored <= BUFFER_S + SLACK_S


# ======================================================================================
# The devices are freed: a second session opens them again
# ======================================================================================


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_end_session_frees_the_devices_for_a_fresh_interface(
    voice: Callable[..., Voice], sound_server: SoundServer
) -> None:
    def streams() -> tuple[list[str], list[str]]:
        return sound_server.sink_inputs(), [
            line
            for line in sound_server.pactl("list", "short", "source-outputs").splitlines()
            if line
        ]

    before = streams()
    for round_ in range(2):
        v = voice().start()  # a fresh Conversation and DefaultAudioInterface each time
        assert streams() != before  # it holds a playback and a recording stream
        v.send_audio(tone(440, 0.3))
        v.timeline.wait_for("mode_change", 2)  # played, and drained
        v.mic.wait_past(time.monotonic())  # the microphone delivers
        v.conv.end_session()
        v.conv.wait_for_session_end(scaled(5))  # the barrier: every thread has exited
        left = [t.name for t in library_threads()]
        print(f"\n[devices] round {round_ + 1}: threads left {left}, streams {streams()}")
        assert not left
        assert streams() == before  # both devices closed


# ======================================================================================
# WavFileAudioInterface through a Conversation (no sound server, faster than real time)
# ======================================================================================


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("output_format", "input_format"),
    [("pcm_16000", "pcm_16000"), ("ulaw_8000", "ulaw_8000"), ("pcm_44100", "pcm_22050")],
)
def test_wav_file_interface_through_a_conversation(
    output_format: str, input_format: str, tmp_path: Path
) -> None:
    mic_pcm = tone(1000, 0.5, amplitude=0.5)
    mic_wav = tmp_path / "mic.wav"
    out_wav = tmp_path / "agent.wav"
    write_wav_pcm16(mic_wav, mic_pcm)
    iface = WavFileAudioInterface(mic_wav, out_wav, realtime=False, chunk_ms=100)
    mic = MicLog(input_format)
    control = LoopbackControl(
        agent_output_audio_format=output_format,
        user_input_audio_format=input_format,
        on_send=mic.on_send,
    )
    rate = parse_audio_format(output_format).sample_rate
    agent_wire = encode_agent_audio(output_format, chirp(200, 3000, 0.6, 0.5, rate=rate))
    agent_chunks = chunked(agent_wire, output_format, 0.2)
    with control.server:
        conv = Conversation(
            ElevenLabsClient(base_url=control.server.base_url),
            "agent",
            requires_auth=False,
            audio_interface=iface,
        )
        timeline = Timeline(conv)
        conv.start_session()
        try:
            # The mic file reaches the server (as fast as it is sent: realtime=False).
            expected_mic = UserAudioEncoder(input_format).encode(mic_pcm)
            got = mic.wait_for(
                lambda: sum(n for _, n, _ in mic.chunks) >= len(expected_mic), timeout=5
            )
            assert got, f"{sum(n for _, n, _ in mic.snapshot())} of {len(expected_mic)} B"
            for chunk in agent_chunks:
                control.push(audio_message(1, chunk))
            # The agent ends the call: its audio is played (here: written) to the end,
            # the resampler's tail included, before the interface is stopped.
            control.server_close(1000)
            timeline.wait_for("session_ended")
        finally:
            conv.end_session()

    sent_mic = b"".join(
        base64.b64decode(m["user_audio_chunk"]) for m in control.sent("user_audio_chunk")
    )
    reference = AgentAudioDecoder(output_format)
    expected_out = b"".join(reference.decode(c) for c in agent_chunks) + reference.flush()
    with wave.open(str(out_wav), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        recorded = wav.readframes(wav.getnframes())
    print(
        f"\n[wav {output_format}/{input_format}] mic: {len(sent_mic)} B sent "
        f"({len(expected_mic)} B expected from the file); agent: {len(recorded)} B recorded, "
        f"{len(expected_out)} B expected"
    )
    # The WAV mic, encoded chunk by chunk exactly as a reference encoder does it.
    assert sent_mic[: len(expected_mic)] == expected_mic
    # The agent's audio, converted to 16 kHz exactly as a reference decoder does it.
    assert recorded == expected_out


# ======================================================================================
# Echo cancellation: on by default with a real device
# ======================================================================================


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_echo_cancellation_is_on_by_default_and_the_microphone_still_gets_through(
    voice: Callable[..., Voice], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="elevenconv"):
        v = voice(echo_cancellation=None).start()
    assert any("echo cancellation on: WebRTC AEC3" in r.getMessage() for r in caplog.records)
    mic = v.mic
    mic.wait_past(time.monotonic())
    with play_into_mic(tone(1000, 1.0, amplitude=0.5)) as playback:
        mic.wait_loud(0.9, timeout=10)
        assert playback.wait(scaled(10)) == 0
    mic.wait_past(time.monotonic() + 0.3)
    received = mic.samples()
    (first, last), *_ = spans(received)
    level = rms(received[first:last])
    print(f"\n[echo cancellation on, no echo] tone rms {level:.0f} of {0.5 * 32767 / 2**0.5:.0f}")
    # Near-end speech passes (the engine's high-pass filter and gain take a little).
    assert dominant_frequency(received[first:last]) == pytest.approx(1000, abs=10)
    assert level == pytest.approx(0.5 * 32767 / 2**0.5, rel=0.15)


# ======================================================================================
# Device faults never take the session down (issue 8, point 5). No sound server needed.
# ======================================================================================


class FaultySession:
    """A Conversation on the loopback server with a FakeDevice."""

    def __init__(self, device: FakeDevice, **conv_kwargs: Any) -> None:
        self.device = device
        self.control = LoopbackControl()
        self.control.server.__enter__()
        self.errors: queue.Queue[BaseException] = queue.Queue()
        self.responses: queue.Queue[str] = queue.Queue()
        conv_kwargs.setdefault("echo_cancellation", False)
        self.conv = Conversation(
            ElevenLabsClient(base_url=self.control.server.base_url),
            "agent",
            requires_auth=False,
            audio_interface=device,
            **conv_kwargs,
        )
        self.conv.on("error", self.errors.put)
        self.conv.on("agent_response", self.responses.put)

    def close(self) -> None:
        try:
            self.conv.end_session()
        finally:
            self.control.server.__exit__(None, None, None)


@pytest.fixture
def faulty() -> Iterator[Callable[..., FaultySession]]:
    made: list[FaultySession] = []

    def make(device: FakeDevice, **kwargs: Any) -> FaultySession:
        session = FaultySession(device, **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.mark.timeout(30)
def test_a_failing_output_gives_audio_up_and_the_text_side_continues(
    faulty: Callable[..., FaultySession],
) -> None:
    s = faulty(FakeDevice(output_errors=lambda n: True))
    s.conv.start_session()
    for _ in range(MAX_CONSECUTIVE_DEVICE_FAILURES + 3):
        s.control.push(audio_message(1, bytes(3200)))
    errors = [s.errors.get(timeout=scaled(5)) for _ in range(MAX_CONSECUTIVE_DEVICE_FAILURES)]
    assert all(isinstance(e, AudioError) for e in errors)
    assert "text still works" in str(errors[-1])
    s.device.wait_for(lambda: s.device.count("stop") == 1)
    # The conversation goes on as text.
    assert s.conv.is_session_active()
    s.conv.send_user_message("still there?")
    assert s.control.wait_for_sent("user_message")[0]["text"] == "still there?"
    s.control.push(agent_response("yes"))
    assert s.responses.get(timeout=scaled(5)) == "yes"
    assert s.errors.empty()  # one error for giving up, no more
    s.conv.end_session()
    assert s.device.count("stop") == 1


@pytest.mark.timeout(30)
def test_a_blocked_output_delays_neither_pongs_nor_end_session(
    faulty: Callable[..., FaultySession],
) -> None:
    device = FakeDevice()
    device.output_gate = threading.Event()
    s = faulty(device)
    s.conv.start_session()
    s.control.push(audio_message(1, bytes(3200)))
    assert device.output_entered.wait(scaled(5))  # the audio thread is stuck in output()
    s.control.push(interruption(2))
    s.control.push(ping(7))
    pong = s.control.wait_for_sent("pong", timeout=2)[0]
    assert pong["event_id"] == 7
    t0 = time.monotonic()
    device.output_gate.set()  # the device recovers: the interruption reaches it
    device.wait_for(lambda: device.count("interrupt") >= 1)
    s.conv.end_session()
    print(f"\n[blocked output] end_session after recovery: {(time.monotonic() - t0) * 1e3:.0f} ms")
    assert device.count("stop") == 1


@pytest.mark.timeout(30)
def test_a_device_that_fails_to_start_fails_start_session_cleanly(
    faulty: Callable[..., FaultySession],
) -> None:
    s = faulty(FakeDevice(start_error=OSError("device busy")))
    with pytest.raises(AudioError, match="failed to start: OSError: device busy"):
        s.conv.start_session()
    assert s.device.calls == ["start", "stop"]
    assert not s.conv.is_session_active()


@pytest.mark.timeout(30)
def test_microphone_chunks_after_end_session_are_ignored(
    faulty: Callable[..., FaultySession],
) -> None:
    s = faulty(FakeDevice())
    s.conv.start_session()
    s.device.mic(b"\x10\x00" * 1600)
    s.control.wait_for_sent("user_audio_chunk")
    s.conv.end_session()
    sent = len(s.control.sent("user_audio_chunk"))
    s.device.mic(b"\x10\x00" * 1600)  # a device that keeps delivering after stop()
    assert s.errors.empty()
    assert len(s.control.sent("user_audio_chunk")) == sent
    assert s.device.calls[-1] == "stop"
