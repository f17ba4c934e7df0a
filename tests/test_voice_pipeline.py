"""The voice pipeline (elevenconv/_voice.py) on its own: fast tests with a small fake
:class:`AudioInterface` and fake hooks (device faults, the acceptance race, byte bounds,
mute / echo guard, drain), then a few with the real DefaultAudioInterface on the
PulseAudio test server where the real device matters.

Every wait is on a Condition or an Event with a timeout; no sleeps.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from elevenconv import _voice
from elevenconv._audio import AudioInterface
from elevenconv._audioformat import AgentAudioDecoder, UserAudioEncoder
from elevenconv._voice import (
    AGENT_END_DRAIN_S,
    AUDIO_QUEUE_BYTES,
    MAX_CONSECUTIVE_DEVICE_FAILURES,
    MAX_MIC_CHUNK_BYTES,
    MIC_RING_BYTES,
    VoicePipeline,
    check_audio_format,
)
from elevenconv.errors import AudioError, ConfigurationError
from elevenconv.protocol import AudioEvent
from tests.conftest import scaled

# ======================================================================================
# Fakes
# ======================================================================================


class Recorder:
    """A Condition-guarded log with ``wait_for``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(predicate, scaled(timeout))
        assert ok, f"timed out waiting; state: {self!r}"


class FakeHooks(Recorder):
    """The Conversation's side: events, sent microphone audio, the watermark."""

    def __init__(self, listeners: tuple[str, ...] = ("audio", "audio_alignment")) -> None:
        super().__init__()
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.sent: list[tuple[bytes, float]] = []
        self.listeners = set(listeners)
        self.watermark = 0
        self.send_gate: threading.Event | None = None  # set: send_audio blocks until set

    def __repr__(self) -> str:
        return f"<FakeHooks events={[e for e, _ in self.events]} sent={len(self.sent)}>"

    def post(self, event: str, *args: Any) -> None:
        with self.cond:
            self.events.append((event, args))
            self.cond.notify_all()

    def has_listeners(self, event: str) -> bool:
        return event in self.listeners

    def send_audio(self, chunk: bytes, captured_at: float) -> None:
        gate = self.send_gate
        if gate is not None:
            gate.wait(scaled(10))
        with self.cond:
            self.sent.append((chunk, captured_at))
            self.cond.notify_all()

    def is_audio_current(self, event_id: int) -> bool:
        return event_id >= self.watermark

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self.cond:
            return [args for event, args in self.events if event == name]

    def errors(self) -> list[AudioError]:
        return [args[0] for args in self.of("error")]

    def sent_bytes(self) -> bytes:
        with self.cond:
            return b"".join(chunk for chunk, _ in self.sent)


class FakeDevice(AudioInterface, Recorder):
    """An AudioInterface that records every call and can fail or block on demand."""

    def __init__(
        self,
        *,
        output_errors: Callable[[int], bool] = lambda n: False,
        start_error: BaseException | None = None,
        stop_error: BaseException | None = None,
        reports_playback: bool = False,
        handles_gain: bool = False,
    ) -> None:
        Recorder.__init__(self)
        self.calls: list[str] = []
        self.outputs: list[bytes] = []
        self.output_errors = output_errors
        self.start_error = start_error
        self.stop_error = stop_error
        self.reports_playback = reports_playback
        self.handles_gain = handles_gain
        self.gain = 1.0
        self.playback_callback: Any = None
        self.input_callback: Callable[[bytes], None] | None = None
        self.start_gate: threading.Event | None = None  # start() waits for it
        self.start_entered = threading.Event()
        self.output_gate: threading.Event | None = None  # output() waits for it
        self.output_entered = threading.Event()
        self.start_returned = False
        self.outputs_before_start = 0

    def __repr__(self) -> str:
        return f"<FakeDevice calls={self.calls}>"

    def _note(self, call: str) -> None:
        with self.cond:
            self.calls.append(call)
            self.cond.notify_all()

    def count(self, call: str) -> int:
        with self.cond:
            return self.calls.count(call)

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        self._note("start")
        self.input_callback = input_callback
        self.start_entered.set()
        if self.start_gate is not None:
            assert self.start_gate.wait(scaled(10))
        if self.start_error is not None:
            raise self.start_error
        self.start_returned = True

    def stop(self) -> None:
        self._note("stop")
        if self.stop_error is not None:
            raise self.stop_error

    def output(self, audio: bytes) -> None:
        if not self.start_returned:
            self.outputs_before_start += 1
        n = self.count("output")
        self._note("output")
        self.output_entered.set()
        if self.output_gate is not None:
            assert self.output_gate.wait(scaled(10))
        if self.output_errors(n):
            raise OSError(f"device unplugged (output #{n})")
        with self.cond:
            self.outputs.append(bytes(audio))
            self.cond.notify_all()

    def interrupt(self) -> None:
        self._note("interrupt")

    def wait_until_drained(self, timeout: float) -> bool:
        self._note(f"wait_until_drained({timeout:g})")
        return True

    def set_playback_callback(self, callback: Any) -> bool:
        self.playback_callback = callback
        return self.reports_playback

    def set_output_gain(self, gain: float) -> bool:
        self.gain = gain
        return self.handles_gain

    def mic(self, pcm: bytes) -> None:
        """Deliver a microphone chunk as the device would."""
        assert self.input_callback is not None
        self.input_callback(pcm)


def audio_event(pcm: bytes, event_id: int = 1) -> AudioEvent:
    return AudioEvent(audio_base_64=base64.b64encode(pcm).decode(), event_id=event_id)


def pcm_of(value: int, seconds: float) -> bytes:
    """A constant PCM16 signal (easy to recognise after the chain)."""
    return value.to_bytes(2, "little", signed=True) * round(seconds * 16000)


def make(
    device: FakeDevice | None = None,
    hooks: FakeHooks | None = None,
    **kwargs: Any,
) -> tuple[VoicePipeline, FakeDevice, FakeHooks]:
    device = device or FakeDevice()
    hooks = hooks or FakeHooks()
    kwargs.setdefault("echo_cancellation", False)
    pipeline = VoicePipeline(device, hooks, stats={}, name="test", **kwargs)
    return pipeline, device, hooks


@contextmanager
def running(pipeline: VoicePipeline, start: bool = True, drain: bool = False) -> Iterator[None]:
    """Run the pipeline's threads as the Conversation does; stop and join them after."""
    threads = [
        threading.Thread(target=target, name=f"elevenconv-{role}-test", daemon=True)
        for role, target in pipeline.threads()
    ]
    for thread in threads:
        thread.start()
    try:
        if start:
            pipeline.start_device()
        yield
    finally:
        pipeline.stop(drain=drain)
        for thread in threads:
            thread.join(scaled(10))
        assert not [t.name for t in threads if t.is_alive()]


# ======================================================================================
# Playback
# ======================================================================================


@pytest.mark.timeout(30)
def test_playback_outputs_in_order_posts_audio_and_infers_the_mode() -> None:
    pipeline, device, hooks = make()
    chunks = [pcm_of(v, 0.05) for v in (100, 200, 300)]
    with running(pipeline):
        for chunk in chunks:
            pipeline.feed(audio_event(chunk))
        device.wait_for(lambda: len(device.outputs) == 3)
        # No playback callback: "listening" once the 0.15 s handed out should have played.
        hooks.wait_for(lambda: len(hooks.of("mode_change")) == 2)
    assert device.outputs == chunks
    assert [args[0] for args in hooks.of("audio")] == chunks
    assert hooks.of("mode_change") == [("speaking",), ("listening",)]
    assert device.calls[0] == "start"
    assert device.calls[-2:] == ["interrupt", "stop"]  # stop(drain=False)


@pytest.mark.timeout(30)
def test_output_only_after_start_returned_and_interruption_in_the_window() -> None:
    # The acceptance race: audio (and an interruption) arrive while start() runs.
    pipeline, device, hooks = make()
    device.start_gate = threading.Event()
    with running(pipeline, start=False):
        starter = threading.Thread(target=pipeline.start_device, name="test-start")
        starter.start()
        assert device.start_entered.wait(scaled(5))
        pipeline.feed(audio_event(pcm_of(1, 0.05), event_id=1))
        hooks.watermark = 2  # the protocol saw interruption 2
        pipeline.on_interruption()
        pipeline.feed(audio_event(pcm_of(2, 0.05), event_id=2))
        device.start_gate.set()
        starter.join(scaled(5))
        device.wait_for(lambda: len(device.outputs) == 1)
        # Something has been played now: the next interruption reaches the device.
        hooks.watermark = 3
        pipeline.on_interruption()
        device.wait_for(lambda: device.count("interrupt") == 1)
    assert device.outputs_before_start == 0
    assert device.outputs == [pcm_of(2, 0.05)]  # stale audio of response 1 never played
    assert pipeline.stats["stale_audio"] == 1


@pytest.mark.timeout(30)
def test_interruption_after_playback_reaches_interrupt_and_resets_the_mode() -> None:
    pipeline, device, hooks = make(device=FakeDevice(reports_playback=True))
    with running(pipeline):
        pipeline.feed(audio_event(pcm_of(5, 0.1)))
        device.wait_for(lambda: len(device.outputs) == 1)
        device.playback_callback(True)  # the device reports sound
        hooks.watermark = 2
        pipeline.on_interruption()
        device.wait_for(lambda: device.count("interrupt") == 1)
        pipeline.feed(audio_event(pcm_of(6, 0.1), event_id=1))  # stale
        pipeline.feed(audio_event(pcm_of(7, 0.1), event_id=2))
        device.wait_for(lambda: len(device.outputs) == 2)
    assert device.outputs[1] == pcm_of(7, 0.1)
    assert hooks.of("mode_change")[:2] == [("speaking",), ("listening",)]
    assert pipeline.mode == "listening"


@pytest.mark.timeout(30)
def test_reader_calls_never_block_on_a_blocked_output_and_the_queue_is_bounded() -> None:
    pipeline, device, hooks = make()
    device.output_gate = threading.Event()
    # Exact bound: 8 chunks of AUDIO_QUEUE_BYTES / 8 of base64 fit, the 9th does not.
    raw = bytes(AUDIO_QUEUE_BYTES // 8 * 3 // 4)
    big = audio_event(raw)
    assert len(big.audio_base_64) == AUDIO_QUEUE_BYTES // 8
    with running(pipeline):
        pipeline.feed(audio_event(pcm_of(1, 0.05)))
        assert device.output_entered.wait(scaled(5))  # the audio thread is stuck in output()
        done = threading.Event()

        def reader() -> None:
            for _ in range(9):
                pipeline.feed(big)
            hooks.watermark = 2
            pipeline.on_interruption()
            done.set()

        thread = threading.Thread(target=reader, name="test-reader")
        thread.start()
        assert done.wait(scaled(2)), "feed()/on_interruption() blocked on the device"
        thread.join()
        assert pipeline.stats["dropped_audio"] == 1
        device.output_gate.set()
        device.wait_for(lambda: device.count("interrupt") == 1)
    assert pipeline.stats["stale_audio"] == 8  # the backlog of response 1 was dropped
    assert device.calls.count("output") == 1


@pytest.mark.timeout(30)
def test_an_output_error_is_reported_the_chunk_dropped_and_playback_goes_on() -> None:
    pipeline, device, hooks = make(device=FakeDevice(output_errors=lambda n: n == 1))
    with running(pipeline):
        for value in (1, 2, 3):
            pipeline.feed(audio_event(pcm_of(value, 0.02)))
        device.wait_for(lambda: device.count("output") == 3)
        hooks.wait_for(lambda: bool(hooks.errors()))
    (error,) = hooks.errors()
    assert isinstance(error, AudioError)
    assert "output() failed" in str(error) and "playback goes on" in str(error)
    assert isinstance(error.__cause__, OSError)
    assert device.outputs == [pcm_of(1, 0.02), pcm_of(3, 0.02)]
    assert pipeline.stats["audio_errors"] == 1


@pytest.mark.timeout(30)
def test_repeated_failures_give_audio_up_with_one_error_and_stop_the_device() -> None:
    pipeline, device, hooks = make(device=FakeDevice(output_errors=lambda n: True))
    with running(pipeline):
        for value in range(MAX_CONSECUTIVE_DEVICE_FAILURES + 5):
            pipeline.feed(audio_event(pcm_of(value, 0.02)))
        device.wait_for(lambda: device.count("stop") == 1)
        device.mic(pcm_of(9, 0.1))  # the microphone is off too
        pipeline.feed(audio_event(pcm_of(1, 0.02)))
    errors = hooks.errors()
    assert len(errors) == MAX_CONSECUTIVE_DEVICE_FAILURES
    assert "audio is off for the rest of the conversation, text still works" in str(errors[-1])
    assert all("playback goes on" in str(e) for e in errors[:-1])
    assert device.count("output") == MAX_CONSECUTIVE_DEVICE_FAILURES
    assert device.count("stop") == 1  # once, not again when the loop ends
    assert hooks.sent == []


@pytest.mark.timeout(30)
def test_start_failure_raises_audio_error_and_stops_the_device() -> None:
    pipeline, device, _ = make(device=FakeDevice(start_error=OSError("no such device")))
    with running(pipeline, start=False):
        with pytest.raises(AudioError, match="failed to start: OSError: no such device") as info:
            pipeline.start_device()
        assert isinstance(info.value.__cause__, OSError)
    assert device.calls == ["start", "stop"]


@pytest.mark.timeout(30)
def test_keyboard_interrupt_in_start_stops_the_device_and_propagates() -> None:
    pipeline, device, _ = make(device=FakeDevice(start_error=KeyboardInterrupt()))
    with running(pipeline, start=False), pytest.raises(KeyboardInterrupt):
        pipeline.start_device()
    assert device.calls == ["start", "stop"]


@pytest.mark.timeout(30)
def test_stop_failure_is_reported_and_the_threads_still_exit() -> None:
    pipeline, device, hooks = make(device=FakeDevice(stop_error=OSError("stuck")))
    with running(pipeline):
        pass
    (error,) = hooks.errors()
    assert "stop() failed" in str(error)
    assert device.count("stop") == 1


@pytest.mark.timeout(30)
def test_stop_while_start_runs_stops_the_device_when_start_returns() -> None:
    pipeline, device, _ = make()
    device.start_gate = threading.Event()
    starter = threading.Thread(target=pipeline.start_device, name="test-start")
    with running(pipeline, start=False):
        starter.start()
        assert device.start_entered.wait(scaled(5))
    # The loops are gone (stop() came); start() returns now and must not leak the device.
    device.start_gate.set()
    starter.join(scaled(5))
    assert device.calls == ["start", "stop"]


@pytest.mark.timeout(30)
def test_start_device_after_stop_does_nothing() -> None:
    pipeline, device, _ = make()
    with running(pipeline, start=False):
        pass
    pipeline.start_device()
    assert device.calls == []


@pytest.mark.timeout(30)
def test_agent_end_drains_the_queue_and_the_resampler_tail_before_stopping() -> None:
    pipeline, device, _ = make(output_format="pcm_24000")
    wire = (3000).to_bytes(2, "little", signed=True) * 12000  # 0.5 s at 24 kHz
    reference = AgentAudioDecoder("pcm_24000")
    expected = reference.decode(wire[:12000]) + reference.decode(wire[12000:])
    expected += reference.flush()
    with running(pipeline, drain=True):
        pipeline.feed(audio_event(wire[:12000]))
        pipeline.feed(audio_event(wire[12000:]))
    assert b"".join(device.outputs) == expected  # every sample, the held-back tail too
    assert device.calls[-2:] == [f"wait_until_drained({AGENT_END_DRAIN_S:g})", "stop"]
    assert "interrupt" not in device.calls


@pytest.mark.timeout(30)
def test_the_resampler_tail_is_flushed_when_the_agent_pauses() -> None:
    pipeline, device, _ = make(output_format="pcm_44100")
    wire = (1000).to_bytes(2, "little", signed=True) * 4410  # 0.1 s
    reference = AgentAudioDecoder("pcm_44100")
    head = reference.decode(wire)
    tail = reference.flush()
    assert tail  # the resampler does hold samples back
    with running(pipeline):
        pipeline.feed(audio_event(wire))
        device.wait_for(lambda: len(device.outputs) == 2)
    assert device.outputs == [head, tail]


@pytest.mark.timeout(30)
def test_silence_stops_playback_at_once_and_ignores_the_microphone() -> None:
    pipeline, device, hooks = make()
    with running(pipeline):
        pipeline.feed(audio_event(pcm_of(1, 0.05)))
        device.wait_for(lambda: len(device.outputs) == 1)
        pipeline.silence()
        device.wait_for(lambda: device.count("interrupt") == 1)
        pipeline.feed(audio_event(pcm_of(2, 0.05)))
        device.mic(pcm_of(3, 0.1))
    assert len(device.outputs) == 1
    assert hooks.sent == []


@pytest.mark.timeout(30)
def test_volume_and_mute_scale_in_the_thread_when_the_device_cannot() -> None:
    pipeline, device, _ = make()
    with running(pipeline):
        pipeline.set_volume(0.5)
        pipeline.feed(audio_event(pcm_of(1000, 0.01)))
        device.wait_for(lambda: len(device.outputs) == 1)
        pipeline.set_output_muted(True)
        pipeline.feed(audio_event(pcm_of(1000, 0.01)))
        device.wait_for(lambda: len(device.outputs) == 2)
    assert device.outputs == [pcm_of(500, 0.01), bytes(320)]
    with pytest.raises(ConfigurationError):
        pipeline.set_volume(1.5)


@pytest.mark.timeout(30)
def test_a_device_with_gain_gets_it_and_unscaled_audio() -> None:
    pipeline, device, _ = make(device=FakeDevice(handles_gain=True))
    pipeline.set_volume(0.25)  # before the start: applied to the device at once
    assert device.gain == 0.25
    with running(pipeline):
        pipeline.feed(audio_event(pcm_of(1000, 0.01)))
        device.wait_for(lambda: len(device.outputs) == 1)
    assert device.outputs == [pcm_of(1000, 0.01)]


@pytest.mark.timeout(30)
def test_bad_base64_is_an_error_event_and_playback_goes_on() -> None:
    pipeline, device, hooks = make()
    with running(pipeline):
        pipeline.feed(AudioEvent(audio_base_64="%%%", event_id=1))
        pipeline.feed(audio_event(pcm_of(1, 0.01)))
        device.wait_for(lambda: len(device.outputs) == 1)
    assert len(hooks.of("error")) == 1


# ======================================================================================
# Capture
# ======================================================================================


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt", ["pcm_16000", "ulaw_8000", "pcm_44100"])
def test_mic_audio_is_encoded_in_the_announced_format(fmt: str) -> None:
    pipeline, device, hooks = make(input_format=fmt)
    chunks = [pcm_of(v, 0.1) for v in (1000, -2000, 3000)]
    reference = UserAudioEncoder(fmt)
    expected = b"".join(reference.encode(c) for c in chunks)
    with running(pipeline):
        for chunk in chunks:
            device.mic(chunk)
        hooks.wait_for(lambda: len(hooks.sent_bytes()) == len(expected))
    assert hooks.sent_bytes() == expected


@pytest.mark.timeout(30)
def test_an_oversized_mic_chunk_is_split_and_bounded_in_bytes() -> None:
    pipeline, device, hooks = make()
    one_second = b"".join(pcm_of(v, 0.25) for v in (1, 2, 3, 4))
    huge = bytes(10 * 1024 * 1024) + one_second  # 10 MB: only the newest 2 s are kept
    with running(pipeline):
        t0 = time.monotonic()
        device.mic(one_second)
        hooks.wait_for(lambda: len(hooks.sent) == 4)
        device.mic(huge)
        hooks.wait_for(lambda: len(hooks.sent) == 4 + MIC_RING_BYTES // MAX_MIC_CHUNK_BYTES)
    sizes = {len(chunk) for chunk, _ in hooks.sent}
    assert sizes == {MAX_MIC_CHUNK_BYTES}
    assert [chunk for chunk, _ in hooks.sent[:4]] == [pcm_of(v, 0.25) for v in (1, 2, 3, 4)]
    assert hooks.sent_bytes()[-len(one_second) :] == one_second
    times = [t for _, t in hooks.sent[:4]]
    # captured_at is the first sample's time: 250 ms apart, the first 1 s before arrival.
    assert times == sorted(times)
    assert times[1] - times[0] == pytest.approx(0.25)
    assert times[0] <= t0 + 0.1
    assert pipeline.stats["dropped_capture_chunks"] == 1


@pytest.mark.timeout(30)
def test_a_stalled_capture_thread_drops_the_oldest_mic_audio() -> None:
    hooks = FakeHooks()
    hooks.send_gate = threading.Event()
    pipeline, device, _ = make(hooks=hooks)
    chunk_s = MAX_MIC_CHUNK_BYTES / 32000
    n_ring = MIC_RING_BYTES // MAX_MIC_CHUNK_BYTES
    with running(pipeline):
        device.mic(pcm_of(0, chunk_s))  # taken by the thread, which then blocks
        hooks.wait_for(lambda: not pipeline._ring)
        for value in range(1, n_ring + 3):
            device.mic(pcm_of(value, chunk_s))
        assert pipeline.stats["dropped_capture_chunks"] == 2
        hooks.send_gate.set()
        hooks.wait_for(lambda: len(hooks.sent) == 1 + n_ring)
    values = [int.from_bytes(chunk[:2], "little") for chunk, _ in hooks.sent]
    assert values == [0, *range(3, n_ring + 3)]  # the oldest two went


@pytest.mark.timeout(30)
def test_mic_mute_and_echo_guard_send_silence_of_the_same_length() -> None:
    pipeline, device, hooks = make(echo_guard=True, echo_guard_tail_s=0.2)
    with running(pipeline):
        pipeline.set_mic_muted(True)
        device.mic(pcm_of(100, 0.1))
        hooks.wait_for(lambda: len(hooks.sent) == 1)
        pipeline.set_mic_muted(False)
        pipeline.feed(audio_event(pcm_of(5, 0.3)))
        hooks.wait_for(lambda: hooks.of("mode_change") == [("speaking",)])
        device.mic(pcm_of(200, 0.1))  # the agent is speaking: guarded
        hooks.wait_for(lambda: len(hooks.sent) == 2)
        hooks.wait_for(lambda: len(hooks.of("mode_change")) == 2)
        t_listening = time.monotonic()
        device.mic(pcm_of(300, 0.1))  # within the tail: still guarded
        hooks.wait_for(lambda: len(hooks.sent) == 3)
        assert t_listening < pipeline._playing_until + 0.2
        # After the tail: move the end of playback back rather than waiting it out.
        pipeline._playing_until = time.monotonic() - 0.2
        device.mic(pcm_of(400, 0.1))
        hooks.wait_for(lambda: len(hooks.sent) == 4)
    sent = [chunk for chunk, _ in hooks.sent]
    assert sent[:3] == [bytes(3200)] * 3
    assert sent[3] == pcm_of(400, 0.1)


@pytest.mark.timeout(30)
def test_mic_chunks_after_stop_are_ignored() -> None:
    pipeline, device, hooks = make()
    with running(pipeline):
        device.mic(pcm_of(1, 0.1))
        hooks.wait_for(lambda: len(hooks.sent) == 1)
    device.mic(pcm_of(2, 0.1))  # the device's thread may still deliver one
    assert len(hooks.sent) == 1
    assert pipeline._ring_bytes == 0


# ======================================================================================
# Formats and echo cancellation settings
# ======================================================================================


def test_unknown_codecs_fail_at_once_and_any_pcm_rate_is_accepted() -> None:
    assert check_audio_format("pcm_32000").sample_rate == 32000
    assert check_audio_format("ulaw_8000").encoding == "ulaw"
    for bad in ("opus_48000", "pcm_", "pcm_1", "ulaw_16000", "pcm_999999"):
        with pytest.raises(ConfigurationError, match="cannot play or record"):
            check_audio_format(bad)
    with pytest.raises(ConfigurationError, match="'mp3_44100'"):
        make(output_format="mp3_44100")
    pipeline, _, _ = make()
    with pytest.raises(ConfigurationError):
        pipeline.set_formats("pcm_16000", "aac")


@pytest.mark.timeout(30)
def test_pcm_32000_plays_and_records() -> None:
    pipeline, device, hooks = make(input_format="pcm_32000", output_format="pcm_32000")
    with running(pipeline, drain=True):
        pipeline.feed(audio_event(bytes(6400)))  # 0.1 s at 32 kHz
        device.mic(pcm_of(1, 0.1))
        hooks.wait_for(lambda: bool(hooks.sent))
    assert len(b"".join(device.outputs)) == 3200  # 0.1 s at 16 kHz


def test_echo_cancellation_required_without_the_engine_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_voice, "echo_canceller_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "elevenconv\[audio\]"'):
        make(echo_cancellation=True)
    with pytest.raises(ImportError, match="noise_suppression=True"):
        make(echo_cancellation=False, noise_suppression=True)
    pipeline, _, _ = make(echo_cancellation=None)
    assert not pipeline.echo_cancellation_active


@pytest.mark.timeout(30)
def test_default_without_the_engine_logs_that_echo_cancellation_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_voice, "echo_canceller_available", lambda: False)
    pipeline, _, _ = make(echo_cancellation=None)
    with caplog.at_level(logging.INFO), running(pipeline):
        pass
    assert any("echo cancellation off" in r.getMessage() for r in caplog.records)


def test_echo_cancellation_defaults_to_on_only_where_there_can_be_an_echo(
    fake_canceller: type[FakeCanceller], tmp_path: Any
) -> None:
    from elevenconv import WavFileAudioInterface

    class NoEchoDevice(FakeDevice):
        acoustic_echo = False

    wav = WavFileAudioInterface(output_path=tmp_path / "out.wav")
    assert not VoicePipeline(wav, FakeHooks(), echo_cancellation=None).echo_cancellation_active
    assert VoicePipeline(wav, FakeHooks(), echo_cancellation=True).echo_cancellation_active
    quiet = NoEchoDevice()
    assert not VoicePipeline(quiet, FakeHooks(), echo_cancellation=None).echo_cancellation_active
    assert VoicePipeline(FakeDevice(), FakeHooks()).echo_cancellation_active  # a real room
    assert not VoicePipeline(
        FakeDevice(), FakeHooks(), echo_cancellation=False
    ).echo_cancellation_active


class FakeCanceller:
    """Stands in for elevenconv._echo.EchoCanceller: records, and marks its output."""

    instances: list[FakeCanceller] = []

    def __init__(self, sample_rate: int, echo_cancellation: bool, noise_suppression: bool):
        self.args = (sample_rate, echo_cancellation, noise_suppression)
        self.reverse: list[tuple[bytes, float]] = []
        self.capture: list[tuple[bytes, float]] = []
        self.discards: list[float] = []
        self.closed = 0
        self.description = "fake canceller"
        FakeCanceller.instances.append(self)

    @classmethod
    def available(cls) -> bool:
        return True

    def process_reverse(self, pcm: bytes, played_at: float) -> None:
        self.reverse.append((pcm, played_at))

    def process_capture(self, pcm: bytes, captured_at: float) -> bytes:
        self.capture.append((pcm, captured_at))
        return pcm_of(7, len(pcm) / 32000)

    def discard_reference(self, after: float) -> None:
        self.discards.append(after)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_canceller(monkeypatch: pytest.MonkeyPatch) -> type[FakeCanceller]:
    import elevenconv._echo

    FakeCanceller.instances = []
    monkeypatch.setattr(elevenconv._echo, "EchoCanceller", FakeCanceller)
    return FakeCanceller


@pytest.mark.timeout(30)
def test_the_canceller_gets_what_output_was_given_after_gain_and_cleans_the_mic(
    fake_canceller: type[FakeCanceller], caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, device, hooks = make(echo_cancellation=None)
    assert pipeline.echo_cancellation_active
    with caplog.at_level(logging.INFO), running(pipeline):
        pipeline.set_volume(0.5)
        pipeline.feed(audio_event(pcm_of(1000, 0.05)))
        pipeline.feed(audio_event(pcm_of(1000, 0.05)))
        device.wait_for(lambda: len(device.outputs) == 2)
        pipeline.set_mic_muted(True)
        device.mic(pcm_of(3, 0.1))
        hooks.wait_for(lambda: len(hooks.sent) == 1)
        pipeline.set_mic_muted(False)
        device.mic(pcm_of(3, 0.1))
        hooks.wait_for(lambda: len(hooks.sent) == 2)
    (canceller,) = fake_canceller.instances
    assert canceller.args == (16000, True, False)
    assert [pcm for pcm, _ in canceller.reverse] == device.outputs == [pcm_of(500, 0.05)] * 2
    # Scheduled back to back: the second chunk plays when the first has ended.
    assert canceller.reverse[1][1] == pytest.approx(canceller.reverse[0][1] + 0.05)
    assert [pcm for pcm, _ in canceller.capture] == [pcm_of(3, 0.1)] * 2  # muted ones too
    assert [chunk for chunk, _ in hooks.sent] == [bytes(3200), pcm_of(7, 0.1)]
    assert any("echo cancellation on: fake canceller" in r.getMessage() for r in caplog.records)
    assert canceller.closed == 1  # by the capture thread as it exits


@pytest.mark.timeout(30)
def test_an_interruption_discards_the_tapped_reference_that_will_not_play(
    fake_canceller: type[FakeCanceller],
) -> None:
    pipeline, device, hooks = make(echo_cancellation=True)
    with running(pipeline):
        pipeline.on_interruption()  # nothing handed over yet: nothing to discard
        device.wait_for(lambda: device.count("interrupt") == 1)
        pipeline.feed(audio_event(pcm_of(1000, 1.0)))  # output() returns at once
        device.wait_for(lambda: len(device.outputs) == 1)
        before = time.monotonic()
        hooks.watermark = 2
        pipeline.on_interruption()
        device.wait_for(lambda: device.count("interrupt") == 2)
        pipeline.feed(audio_event(pcm_of(1000, 0.05), event_id=2))
        device.wait_for(lambda: len(device.outputs) == 2)
    (canceller,) = fake_canceller.instances
    (discarded_after,) = canceller.discards
    assert before <= discarded_after < canceller.reverse[0][1] + 1.0  # the unplayed rest
    # The next reply's reference starts anew, from the time it was handed over.
    assert canceller.reverse[1][1] >= discarded_after


class ReferenceDevice(FakeDevice):
    """A device with the played-audio capability (like DefaultAudioInterface)."""

    reference_callback: Any = None

    def set_playback_reference_callback(self, callback: Any) -> bool:
        self.reference_callback = callback
        return True


@pytest.mark.timeout(30)
def test_a_device_that_reports_played_audio_is_the_reference(
    fake_canceller: type[FakeCanceller],
) -> None:
    pipeline, device, _ = make(device=ReferenceDevice(), echo_cancellation=True)
    assert isinstance(device, ReferenceDevice)
    with running(pipeline):
        pipeline.feed(audio_event(pcm_of(1000, 0.05)))
        device.wait_for(lambda: len(device.outputs) == 1)
        device.reference_callback(b"\x01\x00" * 160, 123.0)
    (canceller,) = fake_canceller.instances
    assert canceller.reverse == [(b"\x01\x00" * 160, 123.0)]  # not the output() tap


@pytest.mark.timeout(30)
def test_a_failing_canceller_is_turned_off_with_one_error(
    fake_canceller: type[FakeCanceller], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: FakeCanceller, pcm: bytes, captured_at: float) -> bytes:
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(FakeCanceller, "process_capture", boom)
    pipeline, device, hooks = make(echo_cancellation=True)
    with running(pipeline):
        device.mic(pcm_of(3, 0.1))
        device.mic(pcm_of(4, 0.1))
        hooks.wait_for(lambda: len(hooks.sent) == 2)
    (error,) = hooks.errors()
    assert "echo cancellation failed" in str(error)
    assert [chunk for chunk, _ in hooks.sent] == [pcm_of(3, 0.1), pcm_of(4, 0.1)]
    assert not pipeline.echo_cancellation_active


@pytest.mark.timeout(60)
def test_the_real_canceller_is_used_by_default_and_keeps_the_stream_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The real engine (livekit, from the audio extra): on by default, logged, and the
    # microphone stream keeps its length through it (the room tests measure the ERLE).
    from elevenconv._echo import EchoCanceller

    assert EchoCanceller.available()  # the audio extra is installed for the tests
    pipeline, device, hooks = make(echo_cancellation=None)
    with caplog.at_level(logging.INFO), running(pipeline):
        pipeline.feed(audio_event(pcm_of(1000, 0.2)))
        for value in (100, 200, 300):
            device.mic(pcm_of(value, 0.25))
        hooks.wait_for(lambda: len(hooks.sent_bytes()) == 3 * 8000)
    assert pipeline.echo_cancellation_active
    assert isinstance(pipeline._canceller, EchoCanceller)
    messages = [r.getMessage() for r in caplog.records]
    assert any("echo cancellation on: WebRTC AEC3" in m for m in messages), messages


# ======================================================================================
# The real device: DefaultAudioInterface on the PulseAudio test server
# ======================================================================================


class TimedHooks(FakeHooks):
    """FakeHooks that also note when each event was posted (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def post(self, event: str, *args: Any) -> None:
        with self.cond:
            self.times.append(time.monotonic())
        super().post(event, *args)

    def time_of(self, event: str, args: tuple[Any, ...]) -> float:
        with self.cond:
            for (name, a), t in zip(self.events, self.times, strict=True):
                if name == event and a == args:
                    return t
        raise LookupError(event)


@pytest.fixture
def real_pipeline(sound_server: Any) -> Iterator[Callable[..., tuple[VoicePipeline, TimedHooks]]]:
    """``make(**kwargs)`` -> (pipeline, hooks) on a fresh DefaultAudioInterface, running."""
    from elevenconv import DefaultAudioInterface

    stack: list[Any] = []

    def make_real(**kwargs: Any) -> tuple[VoicePipeline, TimedHooks]:
        hooks = TimedHooks()
        kwargs.setdefault("echo_cancellation", False)
        pipeline = VoicePipeline(DefaultAudioInterface(), hooks, stats={}, **kwargs)
        ctx = running(pipeline, drain=kwargs.pop("drain", False))
        ctx.__enter__()
        stack.append(ctx)
        return pipeline, hooks

    yield make_real
    for ctx in stack:
        ctx.__exit__(None, None, None)


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_real_device_plays_resampled_audio_intact_with_the_device_mode(
    real_pipeline: Callable[..., tuple[VoicePipeline, TimedHooks]],
) -> None:
    from tests.fixtures_sound import SpeakerCapture, as_array, chirp
    from tests.test_voice_conversation import DEVICE_TAIL_S, best_alignment, spans

    with SpeakerCapture() as cap:
        assert cap.wait_recording(scaled(5))
        pipeline, hooks = real_pipeline(output_format="pcm_24000")
        wire = chirp(200, 3000, 1.0, amplitude=0.5, rate=24000)
        for offset in range(0, len(wire), 9600):  # 0.2 s chunks
            pipeline.feed(audio_event(wire[offset : offset + 9600]))
        hooks.wait_for(lambda: len(hooks.of("mode_change")) == 2, timeout=10)
        assert cap.wait_until(time.monotonic() + DEVICE_TAIL_S, scaled(5))
    captured = as_array(cap.pcm)
    _, ncc = best_alignment(captured, as_array(chirp(200, 3000, 1.0, amplitude=0.5)))
    found = spans(captured)
    print(f"\n[pipeline, real device] correlation {ncc:.5f}, spans {found}")
    assert len(found) == 1
    assert (found[0][1] - found[0][0]) / 16000 == pytest.approx(1.0, rel=0.02)
    assert ncc > 0.98
    assert hooks.of("mode_change") == [("speaking",), ("listening",)]


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_real_device_interruption_silences_within_one_buffer(
    real_pipeline: Callable[..., tuple[VoicePipeline, TimedHooks]],
) -> None:
    from tests.fixtures_sound import SpeakerCapture, as_array, tone
    from tests.test_voice_conversation import BUFFER_S, DEVICE_TAIL_S, SLACK_S, spans

    with SpeakerCapture() as cap:
        assert cap.wait_recording(scaled(5))
        pipeline, hooks = real_pipeline()
        wire = tone(1000, 3.0, amplitude=0.5)
        for offset in range(0, len(wire), 8000):
            pipeline.feed(audio_event(wire[offset : offset + 8000]))
        hooks.wait_for(lambda: hooks.of("mode_change") == [("speaking",)])
        t_play = hooks.time_of("mode_change", ("speaking",))  # first buffer handed over
        assert cap.wait_until(t_play + 1.0, scaled(5))
        t_interrupt = time.monotonic()
        hooks.watermark = 2
        pipeline.on_interruption()  # as the reader does: returns at once
        returned = time.monotonic() - t_interrupt
        assert cap.wait_until(time.monotonic() + DEVICE_TAIL_S, scaled(5))
    found = spans(as_array(cap.pcm))
    assert len(found) == 1, found
    onset, silence = found[0]
    anchored = (silence - onset) / 16000 - (t_interrupt - t_play)
    print(
        f"\n[pipeline, real device] on_interruption() returned in {returned * 1e6:.0f} us; "
        f"speaker silent {anchored * 1000:.1f} ms after it (beyond the device latency)"
    )
    assert anchored <= BUFFER_S + SLACK_S
    assert pipeline.iface.output_queued_s == 0.0  # type: ignore[attr-defined]


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_real_microphone_reaches_send_audio_encoded_and_timed(
    real_pipeline: Callable[..., tuple[VoicePipeline, TimedHooks]],
) -> None:
    import numpy as np

    from tests.fixtures_sound import dominant_frequency, play_into_mic, tone

    pipeline, hooks = real_pipeline(input_format="pcm_8000")
    hooks.wait_for(lambda: bool(hooks.sent))  # the microphone stream runs
    n_before = len(hooks.sent)
    with play_into_mic(tone(1000, 1.0, amplitude=0.5)) as playback:
        assert playback.wait(scaled(10)) == 0
    hooks.wait_for(lambda: len(hooks.sent) >= n_before + 8)
    with hooks.cond:
        sent = list(hooks.sent)
    samples = np.frombuffer(b"".join(c for c, _ in sent), dtype="<i2").astype(np.float64)
    loud = samples[np.abs(samples) > 3000]
    times = [t for _, t in sent]
    gaps = np.diff(times)
    print(
        f"\n[pipeline, real mic] {len(sent)} chunks of {sorted({len(c) for c, _ in sent})} B, "
        f"captured_at steps {gaps.min() * 1000:.1f}..{gaps.max() * 1000:.1f} ms, "
        f"{len(loud) / 8000:.2f} s loud"
    )
    # 250 ms at 8 kHz is 4000 B; the resampler's output varies a little chunk to chunk.
    assert np.mean([len(c) for c, _ in sent[1:]]) == pytest.approx(4000, rel=0.15)
    assert all(t < time.monotonic() for t in times)
    assert gaps.min() == pytest.approx(0.25, abs=0.02)  # the stream times, in step
    assert dominant_frequency(samples, rate=8000) == pytest.approx(1000, abs=10)
    assert pipeline.stats["dropped_capture_chunks"] == 0


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_real_device_is_freed_by_stop_and_late_mic_chunks_are_ignored(sound_server: Any) -> None:
    from elevenconv import DefaultAudioInterface

    def streams() -> tuple[str, str]:
        return (
            sound_server.pactl("list", "short", "sink-inputs"),
            sound_server.pactl("list", "short", "source-outputs"),
        )

    before = streams()
    hooks = FakeHooks()
    iface = DefaultAudioInterface()
    pipeline = VoicePipeline(iface, hooks, stats={}, echo_cancellation=None)
    with running(pipeline):
        assert streams() != before
        hooks.wait_for(lambda: bool(hooks.sent))
        assert pipeline.echo_cancellation_active  # the real engine, on by default
    n_sent = len(hooks.sent)
    pipeline._on_mic_chunk(bytes(8000))  # a chunk delivered after stop()
    assert len(hooks.sent) == n_sent
    assert streams() == before
