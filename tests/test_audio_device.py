"""DefaultAudioInterface against a real PulseAudio server (null sinks, real-time clock).

Needs the ``sound_server`` fixture (scripts/sound-server). The speaker is recorded from
``elevenconv_speaker.monitor`` with :class:`SpeakerCapture`; the microphone is fed by
playing into ``elevenconv_mic``. Waiting is on events, queues and the capture's Condition.
Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import library_threads, scaled
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

pytestmark = [pytest.mark.audio, pytest.mark.timeout(60)]

BUFFER_S = 1000 / RATE  # one output buffer: 62.5 ms
MEASUREMENT_TOLERANCE_S = 0.002
#: Envelope level (of full scale 32767) above which the captured signal counts as sound.
THRESHOLD = 500


@pytest.fixture
def make_iface(sound_server: SoundServer) -> Iterator[Any]:
    from elevenconv._pyaudio_interface import DefaultAudioInterface

    made: list[DefaultAudioInterface] = []

    def make(**kwargs: Any) -> DefaultAudioInterface:
        iface = DefaultAudioInterface(**kwargs)
        made.append(iface)
        return iface

    yield make
    for iface in made:
        iface.stop()


def active_span(x: Any, threshold: float = THRESHOLD) -> tuple[int, int]:
    """[first, last) sample indices where the envelope exceeds ``threshold``."""
    loud = np.nonzero(envelope(x) > threshold)[0]
    assert len(loud), "no sound captured"
    return int(loud[0]), int(loud[-1]) + 1


def best_alignment(captured: Any, sent: Any) -> tuple[int, float]:
    """(lag, normalised correlation) of ``sent`` inside ``captured`` (FFT correlation)."""
    n = len(captured) + len(sent)
    corr = np.fft.irfft(np.fft.rfft(captured, n) * np.conj(np.fft.rfft(sent, n)), n)
    corr = corr[: len(captured) - len(sent) + 1]
    lag = int(np.argmax(corr))
    segment = captured[lag : lag + len(sent)]
    ncc = float(np.dot(segment, sent) / (np.linalg.norm(segment) * np.linalg.norm(sent)))
    return lag, ncc


def play_and_capture(iface: Any, pcm: bytes) -> Any:
    """Play ``pcm`` through ``iface`` (already started) and return the captured samples."""
    with SpeakerCapture() as cap:
        assert cap.wait_recording(scaled(5)), "parecord delivered nothing"
        iface.output(pcm)
        assert iface.wait_until_drained(scaled(len(pcm) / 2 / RATE + 5))
        # The device still holds its output latency (~0.2 s): wait until that was captured.
        assert cap.wait_until(time.monotonic() + 0.4, scaled(5))
    return as_array(cap.pcm)


def test_output_reaches_the_speaker_intact(make_iface: Any) -> None:
    iface = make_iface(input=False)
    iface.start(lambda pcm: None)
    sent = chirp(200, 4000, 1.0, amplitude=0.5)
    captured = play_and_capture(iface, sent)

    reference = as_array(sent)
    lag, ncc = best_alignment(captured, reference)
    first, last = active_span(captured)
    duration = (last - first) / RATE
    print(
        f"\n[speaker] correlation peak {ncc:.5f} at {lag / RATE:.3f} s, duration {duration:.4f} s"
    )
    assert ncc > 0.99
    assert abs(first - lag) <= 16  # the loud part starts where the chirp aligns
    assert duration == pytest.approx(1.0, abs=0.005)
    assert iface.output_underruns == 1  # only the final run-dry, no gap in the middle


def test_tone_into_the_mic_reaches_input_callback(make_iface: Any) -> None:
    chunks: queue.Queue[bytes] = queue.Queue()
    iface = make_iface(output=False)
    iface.start(chunks.put)
    received = np.zeros(0)
    deadline = time.monotonic() + scaled(10)
    with play_into_mic(tone(1000, 1.0, amplitude=0.5)) as playback:
        # Collect until half a second of the tone has come through input_callback.
        while np.count_nonzero(envelope(received) > THRESHOLD) < RATE // 2:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(received) / RATE:.2f} s received, tone not found"
            received = np.concatenate([received, as_array(chunks.get(timeout=remaining))])
        assert playback.wait(scaled(10)) == 0
    first, last = active_span(received)
    freq = dominant_frequency(received[first:last])
    level = rms(received[first:last])
    print(f"\n[mic] dominant {freq:.1f} Hz, rms {level:.0f} (sent {0.5 * 32767 / 2**0.5:.0f})")
    assert freq == pytest.approx(1000, abs=5)
    assert level == pytest.approx(0.5 * 32767 / 2**0.5, rel=0.05)
    assert iface.input_dropped == 0


def test_interrupt_silences_the_speaker_within_one_buffer(make_iface: Any) -> None:
    events: queue.Queue[tuple[bool, float]] = queue.Queue()
    iface = make_iface(input=False)
    iface.set_playback_callback(lambda playing: events.put((playing, time.monotonic())))
    iface.start(lambda pcm: None)
    with SpeakerCapture() as cap:
        assert cap.wait_recording(scaled(5))
        iface.output(tone(1000, 3.0, amplitude=0.5))
        playing, t_play = events.get(timeout=scaled(5))  # first tone buffer handed over
        assert playing
        # Mid-way: wait (on the capture's Condition) until ~1 s of tone has been played.
        assert cap.wait_until(t_play + 1.0, scaled(5))
        t_interrupt = time.monotonic()
        iface.interrupt()
        t_returned = time.monotonic()
        playing, t_stopped = events.get(timeout=scaled(5))
        assert not playing
        assert cap.wait_until(t_interrupt + 0.5, scaled(5))
    captured = as_array(cap.pcm)
    onset, silence = active_span(captured)
    assert not np.any(envelope(captured[silence:]) > THRESHOLD)

    # The tone's onset in the capture is the sound of the buffer handed over at t_play:
    # anchoring there cancels the fixed latency of PortAudio + PulseAudio (the same for
    # the first and the last buffer), leaving what the interface adds.
    played_s = (silence - onset) / RATE
    anchored = played_s - (t_interrupt - t_play)
    # Absolute figure, from the capture's arrival clock: includes the device latency.
    absolute = cap.time_of(silence) - t_interrupt
    device_latency = iface.output_latency_s
    print(
        f"\n[interrupt] interrupt() -> silence: {anchored * 1000:.1f} ms after the device "
        f"latency (limit {BUFFER_S * 1000:.1f} ms); absolute incl. PortAudio/PulseAudio "
        f"buffering {absolute * 1000:.1f} ms; interrupt() took "
        f"{(t_returned - t_interrupt) * 1e6:.0f} us; playback callback False after "
        f"{(t_stopped - t_interrupt) * 1000:.1f} ms; PortAudio output latency "
        f"{device_latency * 1000:.1f} ms -> absolute minus it "
        f"{(absolute - device_latency) * 1000:.1f} ms"
    )
    # The interface's share is the wait for the next output callback: 0 .. one buffer,
    # depending on the phase (a sweep over phases measured 0.7 .. 61.8 ms). 2 ms is the
    # measurement's own resolution (1 ms envelope window at each edge, clock reads).
    assert anchored <= BUFFER_S + MEASUREMENT_TOLERANCE_S
    assert t_stopped - t_interrupt <= BUFFER_S + 0.05  # the next callback reported it
    assert 0.9 <= played_s <= 1.3


def test_gain_half_halves_rms_and_mute_is_silent(make_iface: Any) -> None:
    iface = make_iface(input=False)
    iface.start(lambda pcm: None)
    sent = tone(700, 1.0, amplitude=0.6)
    assert iface.set_output_gain(0.5)
    captured = play_and_capture(iface, sent)
    first, last = active_span(captured)
    ratio = rms(captured[first:last]) / rms(as_array(sent))
    print(f"\n[gain] 0.5 -> rms ratio {ratio:.4f}")
    assert ratio == pytest.approx(0.5, abs=0.01)

    assert iface.set_output_gain(0.0)
    captured = play_and_capture(iface, sent)
    print(f"[gain] muted -> peak {np.max(np.abs(captured)):.0f}")
    assert np.max(np.abs(captured)) == 0


def test_stop_frees_the_device_and_leaves_no_thread(sound_server: SoundServer) -> None:
    from elevenconv._pyaudio_interface import DefaultAudioInterface

    streams_before = sound_server.sink_inputs()
    for _ in range(2):
        iface = DefaultAudioInterface()
        events: queue.Queue[bool] = queue.Queue()
        chunks: queue.Queue[bytes] = queue.Queue()
        iface.set_playback_callback(events.put)
        iface.start(chunks.put)
        try:
            iface.output(tone(440, 0.2))
            assert events.get(timeout=scaled(5)) is True
            assert chunks.get(timeout=scaled(5))  # the microphone runs too
            assert iface.wait_until_drained(scaled(5))
        finally:
            iface.stop()
        assert not library_threads()
        assert sound_server.sink_inputs() == streams_before  # our stream is gone
    iface.stop()  # still idempotent
