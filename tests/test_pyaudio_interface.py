"""DefaultAudioInterface against a fake ``pyaudio`` module: no sound device needed.

The fake records every ``open()`` and lets a test drive the stream callbacks by hand,
the way PortAudio's thread would (``FakeStream.pull`` / ``FakeStream.push``).
"""

from __future__ import annotations

import queue
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from elevenconv.errors import AudioError, ConfigurationError
from tests.conftest import library_threads, scaled
from tests.fixtures_sound import as_array, dominant_frequency, rms, tone

pytestmark = pytest.mark.timeout(30)

BUF = 1000  # OUTPUT_FRAMES_PER_BUFFER
BUF_BYTES = BUF * 2


class FakeStream:
    def __init__(self, pa: FakePyAudio, kwargs: dict[str, Any]) -> None:
        self.pa = pa
        self.kwargs = kwargs
        self.callback = kwargs["stream_callback"]
        self.active = kwargs.get("start", True)
        self.closed = False

    def is_active(self) -> bool:
        return self.active

    def stop_stream(self) -> None:
        self.active = False

    def close(self) -> None:
        self.active = False
        self.closed = True

    # What PortAudio's thread does.
    def pull(self, frames: int | None = None) -> bytes:
        """Call the output callback once and return what it produced."""
        frames = self.kwargs["frames_per_buffer"] if frames is None else frames
        data, flag = self.callback(None, frames, {}, 0)
        assert flag == FAKE.paContinue
        return data

    def push(self, data: bytes | None, frames: int = 0) -> None:
        """Call the input callback once with ``data``."""
        result, flag = self.callback(data, frames, {}, 0)
        assert result is None
        assert flag == FAKE.paContinue


class FakePyAudio:
    # Test knobs, reset per test by the fixture.
    supported_rates: set[int] = {16000}
    max_channels = 2
    default_rate = 48000.0
    instances: list[FakePyAudio] = []

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.open_calls: list[dict[str, Any]] = []
        self.terminated = False
        FakePyAudio.instances.append(self)

    def _info(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "name": f"fake device {index}",
            "maxInputChannels": self.max_channels,
            "maxOutputChannels": self.max_channels,
            "defaultSampleRate": self.default_rate,
        }

    def get_device_count(self) -> int:
        return 2

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        if index not in (0, 1):
            raise OSError(-9996, "Invalid device")
        return self._info(index)

    def get_default_input_device_info(self) -> dict[str, Any]:
        return self._info(0)

    def get_default_output_device_info(self) -> dict[str, Any]:
        return self._info(1)

    def is_format_supported(self, rate: float, **kwargs: Any) -> bool:
        if int(rate) not in self.supported_rates:
            raise ValueError(("Invalid sample rate", -9997))
        return True

    def open(self, **kwargs: Any) -> FakeStream:
        self.open_calls.append(kwargs)
        if kwargs["rate"] not in self.supported_rates:
            raise OSError(-9997, "Invalid sample rate")
        stream = FakeStream(self, kwargs)
        self.streams.append(stream)
        return stream

    def terminate(self) -> None:
        self.terminated = True

    def stream(self, *, output: bool) -> FakeStream:
        return next(s for s in self.streams if bool(s.kwargs.get("output")) == output)


FAKE = types.ModuleType("pyaudio")
FAKE.PyAudio = FakePyAudio  # type: ignore[attr-defined]
FAKE.paInt16 = 8  # type: ignore[attr-defined]
FAKE.paContinue = 0  # type: ignore[attr-defined]


@pytest.fixture
def fake_pyaudio(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakePyAudio]]:
    monkeypatch.setitem(sys.modules, "pyaudio", FAKE)
    monkeypatch.setattr(FakePyAudio, "supported_rates", {16000, 44100, 48000})
    monkeypatch.setattr(FakePyAudio, "default_rate", 48000.0)
    monkeypatch.setattr(FakePyAudio, "instances", [])
    return FakePyAudio


@pytest.fixture
def make_iface(fake_pyaudio: type[FakePyAudio]) -> Iterator[Any]:
    from elevenconv._pyaudio_interface import DefaultAudioInterface

    made: list[DefaultAudioInterface] = []

    def make(**kwargs: Any) -> DefaultAudioInterface:
        iface = DefaultAudioInterface(**kwargs)
        made.append(iface)
        return iface

    yield make
    for iface in made:
        iface.stop()


def started(make_iface: Any, **kwargs: Any) -> tuple[Any, FakePyAudio, queue.Queue[bytes]]:
    received: queue.Queue[bytes] = queue.Queue()
    iface = make_iface(**kwargs)
    iface.start(received.put)
    return iface, FakePyAudio.instances[-1], received


# -- construction and lifecycle ------------------------------------------------------------


def test_import_error_names_the_extra_and_portaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` fail
    from elevenconv._pyaudio_interface import DefaultAudioInterface, list_devices

    for call in (DefaultAudioInterface, list_devices):
        with pytest.raises(ImportError) as info:
            call()
        message = str(info.value)
        assert 'pip install "elevenconv[audio]"' in message
        assert "portaudio19-dev" in message
        assert "brew install portaudio" in message


def test_module_import_does_not_import_pyaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)
    import importlib

    import elevenconv._pyaudio_interface as module

    importlib.reload(module)  # would raise if it imported pyaudio at module level


def test_opens_callback_streams_at_16k(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface)
    out, mic = pa.stream(output=True), pa.stream(output=False)
    assert out.kwargs["rate"] == 16000
    assert out.kwargs["channels"] == 1
    assert out.kwargs["frames_per_buffer"] == iface.OUTPUT_FRAMES_PER_BUFFER == 1000
    assert out.kwargs["format"] == FAKE.paInt16
    assert callable(out.kwargs["stream_callback"])
    assert mic.kwargs["frames_per_buffer"] == iface.INPUT_FRAMES_PER_BUFFER == 4000
    assert mic.kwargs["input"] is True
    assert callable(mic.kwargs["stream_callback"])
    assert [t.name for t in library_threads()] == ["elevenconv-mic"]


def test_start_twice_raises_and_stop_is_idempotent(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface)
    with pytest.raises(RuntimeError, match="already"):
        iface.start(lambda pcm: None)
    iface.stop()
    iface.stop()
    assert pa.terminated
    assert all(s.closed and not s.active for s in pa.streams)
    assert not library_threads()
    with pytest.raises(RuntimeError):
        iface.start(lambda pcm: None)


def test_stop_before_start_is_harmless(make_iface: Any) -> None:
    make_iface().stop()


def test_device_index_passed_through_and_bad_index_is_audio_error(make_iface: Any) -> None:
    _iface, pa, _ = started(make_iface, input_device_index=0, output_device_index=1)
    assert pa.stream(output=True).kwargs["output_device_index"] == 1
    assert pa.stream(output=False).kwargs["input_device_index"] == 0
    bad = make_iface(output_device_index=7, input=False)
    with pytest.raises(AudioError, match="index 7"):
        bad.start(lambda pcm: None)
    assert FakePyAudio.instances[-1].terminated


def test_invalid_arguments(make_iface: Any) -> None:
    with pytest.raises(ConfigurationError):
        make_iface(input=False, output=False)
    with pytest.raises(ConfigurationError):
        make_iface(max_input_queue=0)
    with pytest.raises(ConfigurationError):
        make_iface(max_output_buffer_s=0)


# -- device-rate fallback ------------------------------------------------------------------


def test_device_refusing_16k_is_opened_at_its_rate_and_output_resampled(
    make_iface: Any, fake_pyaudio: type[FakePyAudio]
) -> None:
    fake_pyaudio.supported_rates = {48000}
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    assert out.kwargs["rate"] == 48000
    assert out.kwargs["frames_per_buffer"] == 3000  # still 62.5 ms
    iface.output(tone(1000, 1.0))
    # The resampler holds back ~20 ms, so 15 full buffers (45000 samples) are queued and
    # the rest waits; wait_until_drained() (the end of a call) flushes it.
    assert len(iface._out_queue) == 15
    produced = b"".join(out.pull() for _ in range(15))
    assert dominant_frequency(as_array(produced)[:32768], rate=48000) == pytest.approx(1000, abs=5)
    assert iface.wait_until_drained(0) is False
    produced += b"".join(out.pull() for _ in range(3))
    x = as_array(produced)
    nonzero = [i for i in range(len(x)) if x[i]]
    active = x[nonzero[0] : nonzero[-1] + 1]
    assert 47950 <= len(active) <= 48050
    assert dominant_frequency(active[:32768], rate=48000) == pytest.approx(1000, abs=5)


def test_open_failing_with_invalid_rate_falls_back(
    make_iface: Any, fake_pyaudio: type[FakePyAudio], monkeypatch: pytest.MonkeyPatch
) -> None:
    # is_format_supported says yes, but open() refuses 16 kHz (seen with some ALSA devices).
    fake_pyaudio.supported_rates = {44100}
    monkeypatch.setattr(FakePyAudio, "is_format_supported", lambda self, rate, **kw: True)
    fake_pyaudio.default_rate = 44100.0
    iface, pa, _ = started(make_iface, input=False)
    assert [c["rate"] for c in pa.open_calls] == [16000, 44100]
    assert iface.output_config.rate == 44100


def test_mic_refusing_16k_is_resampled_in_the_mic_thread(
    make_iface: Any, fake_pyaudio: type[FakePyAudio]
) -> None:
    fake_pyaudio.supported_rates = {48000}
    _iface, pa, received = started(make_iface, output=False)
    mic = pa.stream(output=False)
    assert mic.kwargs["rate"] == 48000
    assert mic.kwargs["frames_per_buffer"] == 12000
    signal = tone(500, 1.0, rate=48000)
    for i in range(0, len(signal), 24000):
        mic.push(signal[i : i + 24000], 12000)
    got = b""
    while len(got) < 15000 * 2:
        got += received.get(timeout=scaled(5))
    assert dominant_frequency(as_array(got)[:8192]) == pytest.approx(500, abs=5)


def test_stereo_only_device_is_opened_with_two_channels(
    make_iface: Any, fake_pyaudio: type[FakePyAudio], monkeypatch: pytest.MonkeyPatch
) -> None:
    def mono_refused(self: FakePyAudio, rate: float, **kwargs: Any) -> bool:
        if kwargs.get("output_channels", kwargs.get("input_channels")) != 2:
            raise ValueError(("Invalid number of channels", -9998))
        return True

    monkeypatch.setattr(FakePyAudio, "is_format_supported", mono_refused)
    iface, pa, received = started(make_iface)
    out, mic = pa.stream(output=True), pa.stream(output=False)
    assert out.kwargs["channels"] == 2
    assert mic.kwargs["channels"] == 2
    iface.output(b"\x01\x00\x02\x00" * 500)  # 1000 mono frames
    frame = as_array(out.pull())
    assert len(frame) == 2000
    assert list(frame[:4]) == [1, 1, 2, 2]
    mic.push(b"\x05\x00\x09\x00" * 10, 10)  # left=5, right=9
    assert set(as_array(received.get(timeout=scaled(5)))) == {5}


# -- microphone queue ----------------------------------------------------------------------


def test_input_queue_overflow_drops_oldest_and_counts(make_iface: Any) -> None:
    entered, release = threading.Event(), threading.Event()
    received: list[bytes] = []

    def slow_consumer(pcm: bytes) -> None:
        received.append(pcm)
        entered.set()
        release.wait(scaled(10))

    iface = make_iface(max_input_queue=3, output=False)
    iface.start(slow_consumer)
    mic = FakePyAudio.instances[-1].stream(output=False)
    mic.push(b"\x00\x00" * 4, 4)
    assert entered.wait(scaled(5))  # the mic thread holds chunk 0 inside the consumer
    chunks = [bytes([i, 0]) * 4 for i in range(1, 11)]
    for chunk in chunks:
        mic.push(chunk, 4)  # never blocks, though nobody is reading
    assert iface.input_dropped == 7
    release.set()
    iface.stop()  # the sentinel goes after the 3 newest chunks
    assert received[1:] == chunks[-3:]


def test_input_callback_copes_with_odd_and_empty_chunks(make_iface: Any) -> None:
    _iface, pa, received = started(make_iface, output=False)
    mic = pa.stream(output=False)
    mic.push(None)
    mic.push(b"")
    mic.push(b"\x01\x00\x02", 1)  # an odd byte count
    mic.push(b"\x00\x03\x00", 1)
    got = received.get(timeout=scaled(5)) + received.get(timeout=scaled(5))
    assert list(as_array(got)) == [1, 2, 3]


def test_input_callback_exception_does_not_kill_the_mic_thread(make_iface: Any) -> None:
    calls: queue.Queue[bytes] = queue.Queue()

    def flaky(pcm: bytes) -> None:
        calls.put(pcm)
        raise ValueError("consumer bug")

    iface = make_iface(output=False)
    iface.start(flaky)
    mic = FakePyAudio.instances[-1].stream(output=False)
    mic.push(b"\x01\x00", 1)
    mic.push(b"\x02\x00", 1)
    assert calls.get(timeout=scaled(5)) == b"\x01\x00"
    assert calls.get(timeout=scaled(5)) == b"\x02\x00"


# -- speaker -------------------------------------------------------------------------------


def test_output_splits_into_buffers_and_plays_the_tail_padded(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    assert out.pull() == bytes(BUF_BYTES)  # nothing queued: pre-made silence
    audio = bytes(range(1, 251)) * 12  # 1500 frames
    iface.output(audio)  # returns at once
    assert out.pull() == audio[:BUF_BYTES]
    assert out.pull() == audio[BUF_BYTES:] + bytes(BUF_BYTES - 1000)  # tail + silence
    assert out.pull() == bytes(BUF_BYTES)


def test_output_carries_the_remainder_across_calls(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    audio = bytes(range(1, 201)) * 30  # 3000 frames, fed in uneven pieces
    for i in range(0, len(audio), 777):
        iface.output(audio[i : i + 777])
    assert out.pull() + out.pull() + out.pull() == audio


def test_output_callback_never_raises_on_odd_sizes(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    assert out.pull(7) == bytes(14)
    assert out.pull(0) == b""
    iface.output(b"\x01\x00" * 3000)
    assert len(out.pull(333)) == 666
    assert len(out.pull(4096)) == 8192
    assert iface.callback_errors == 0


def test_output_over_the_limit_drops_the_oldest(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False, max_output_buffer_s=0.25)  # 4 buffers
    out = pa.stream(output=True)
    for i in range(10):
        iface.output(bytes([i + 1, 0]) * BUF)
    assert iface.output_dropped == 6
    assert [as_array(out.pull())[0] for _ in range(4)] == [7, 8, 9, 10]


def test_interrupt_empties_the_queue_next_callback_is_silence(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    iface.output(b"\x01\x00" * (BUF * 10 + 10))
    assert out.pull() != bytes(BUF_BYTES)
    iface.interrupt()
    assert out.pull() == bytes(BUF_BYTES)
    assert out.pull() == bytes(BUF_BYTES)  # the carried tail went too
    iface.output(b"\x02\x00" * BUF)  # new audio after the interrupt plays normally
    assert out.pull() == b"\x02\x00" * BUF


def test_buffer_from_before_an_interrupt_is_never_played(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    iface.output(b"\x01\x00" * BUF)
    stale = iface._out_queue[0]
    iface.interrupt()
    iface._out_queue.append(stale)  # as if popped and put back around the interrupt
    iface.output(b"\x02\x00" * BUF)
    assert out.pull() == b"\x02\x00" * BUF


def test_gain_half_and_mute(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    signal = tone(440, 0.5, amplitude=0.8)
    iface.output(signal)
    assert iface.set_output_gain(0.5) is True  # reaches audio already queued
    halved = as_array(out.pull())
    assert rms(halved) == pytest.approx(rms(as_array(signal[:BUF_BYTES])) * 0.5, rel=0.01)
    assert iface.set_output_gain(0.0) is True
    assert out.pull() == bytes(BUF_BYTES)  # muted: silence, but the queue moves on
    assert iface.set_output_gain(1.0) is True
    assert out.pull() == signal[2 * BUF_BYTES : 3 * BUF_BYTES]
    for bad in (-0.1, 1.5, float("nan"), "1"):
        with pytest.raises(ConfigurationError):
            iface.set_output_gain(bad)


def test_playback_callback_and_wait_until_drained(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    events: list[bool] = []
    assert iface.set_playback_callback(events.append) is True
    assert iface.wait_until_drained(0) is True
    iface.output(b"\x01\x00" * BUF * 2)
    assert iface.wait_until_drained(0.01) is False
    out.pull()
    assert events == [True]
    out.pull()
    assert events == [True]

    done = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        result.append(iface.wait_until_drained(scaled(5)))
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    out.pull()  # runs dry
    assert done.wait(scaled(5))
    assert result == [True]
    thread.join(scaled(5))
    assert events == [True, False]


def test_playback_callback_false_on_interrupt_even_if_new_audio_follows(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)
    events: list[bool] = []
    iface.set_playback_callback(events.append)
    iface.output(b"\x01\x00" * BUF * 3)
    out.pull()
    iface.interrupt()
    iface.output(b"\x02\x00" * BUF)
    out.pull()
    assert events == [True, False, True]


def test_playback_callback_exception_is_swallowed(make_iface: Any) -> None:
    iface, pa, _ = started(make_iface, input=False)
    out = pa.stream(output=True)

    def broken(playing: bool) -> None:
        raise RuntimeError("boom")

    iface.set_playback_callback(broken)
    iface.output(b"\x01\x00" * BUF)
    assert out.pull() == b"\x01\x00" * BUF
    assert iface.callback_errors == 1


def test_list_devices(fake_pyaudio: type[FakePyAudio]) -> None:
    from elevenconv._pyaudio_interface import create_default_audio_interface, list_devices

    devices = list_devices()
    assert [d["index"] for d in devices] == [0, 1]
    assert devices[0]["is_default_input"]
    assert not devices[0]["is_default_output"]
    assert devices[1]["is_default_output"]
    assert devices[1]["default_sample_rate"] == 48000.0
    assert set(devices[0]) == {
        "index",
        "name",
        "max_input_channels",
        "max_output_channels",
        "default_sample_rate",
        "is_default_input",
        "is_default_output",
    }
    assert FakePyAudio.instances[-1].terminated
    iface = create_default_audio_interface(input=False)
    assert iface.output_enabled
    assert not iface.input_enabled


# -- echo reference and capture times --------------------------------------------------------


def test_reference_is_what_the_output_callback_wrote_delivered_on_the_mic_thread(
    make_iface: Any,
) -> None:
    import time

    refs: list[tuple[bytes, float, str]] = []
    captured: queue.Queue[tuple[bytes, float | None, int]] = queue.Queue()
    iface = make_iface()
    assert iface.set_playback_reference_callback(
        lambda pcm, at: refs.append((pcm, at, threading.current_thread().name))
    )
    iface.start(lambda pcm: captured.put((pcm, iface.capture_time(), len(refs))))
    pa = FakePyAudio.instances[-1]
    out, mic = pa.stream(output=True), pa.stream(output=False)
    iface.set_output_gain(0.5)
    iface.output(tone(440, BUF / 16000))
    before = time.monotonic()
    # PortAudio says: these samples reach the DAC 0.1 s after "now" (its own clock).
    loud, _flag = out.callback(
        None, BUF, {"current_time": 5000.0, "output_buffer_dac_time": 5000.1}, 0
    )
    silent = out.pull()  # nothing queued: silence, which is played too
    after = time.monotonic()
    assert refs == []  # nothing delivered from PortAudio's thread
    # The mic chunk's first sample was recorded 0.3 s before the callback ran.
    mic_time = {"current_time": 7000.0, "input_buffer_adc_time": 6999.7}
    mic.callback(b"\x01\x00" * 4000, 4000, mic_time, 0)
    _pcm, captured_at, refs_before = captured.get(timeout=scaled(5))
    assert refs_before == 2  # the reference came first, then the capture
    assert [r[0] for r in refs] == [loud, silent]
    assert rms(as_array(loud)) == pytest.approx(0.5 * 0.5 * 32767 / 2**0.5, rel=0.02)
    assert silent == bytes(BUF_BYTES)
    assert {r[2] for r in refs} == {"elevenconv-mic"}
    assert before + 0.1 <= refs[0][1] <= after + 0.1
    assert captured_at is not None
    assert before - 0.3 <= captured_at <= time.monotonic() - 0.3
    assert iface.capture_time() is None  # only valid inside input_callback


def test_capture_time_without_portaudio_times_uses_latency_and_chunk_length(
    make_iface: Any,
) -> None:
    import time

    captured: queue.Queue[float | None] = queue.Queue()
    iface = make_iface(output=False)
    iface.start(lambda pcm: captured.put(iface.capture_time()))
    mic = FakePyAudio.instances[-1].stream(output=False)
    before = time.monotonic()
    mic.push(b"\x00\x00" * 4000, 4000)  # time_info {} (some hosts report zeros)
    captured_at = captured.get(timeout=scaled(5))
    assert captured_at is not None
    assert captured_at == pytest.approx(before - 0.25, abs=0.05)


def test_reference_callback_needs_both_directions_and_is_bounded(make_iface: Any) -> None:
    assert make_iface(input=False).set_playback_reference_callback(lambda p, t: None) is False
    assert make_iface(output=False).set_playback_reference_callback(lambda p, t: None) is False
    iface = make_iface()
    assert iface.set_playback_reference_callback(lambda p, t: None) is True
    iface.start(lambda pcm: None)
    out = FakePyAudio.instances[-1].stream(output=True)
    for _ in range(1000):  # no mic chunk comes to take them: the ring keeps the newest
        out.pull()
    assert len(iface._reference) == 64
    assert iface.set_playback_reference_callback(None) is True
    assert len(iface._reference) == 0


def test_missing_portaudio_library_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    # A PyAudio whose extension cannot load libportaudio, the way the loader reports it.
    package = tmp_path / "pyaudio"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('libportaudio.so.2: cannot open shared object file: "
        "No such file or directory', name='pyaudio._portaudio')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyaudio", raising=False)
    from elevenconv._pyaudio_interface import DefaultAudioInterface

    with pytest.raises(ImportError) as info:
        DefaultAudioInterface()
    message = str(info.value)
    assert "apt-get install libportaudio2" in message
    assert "brew install portaudio" in message
    assert "libportaudio.so.2" in message
    assert "elevenconv[audio]" not in message  # the extra is installed already
