"""elevenconv._fileaudio: WAV files as microphone and speaker."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from elevenconv._audio import AudioInterface
from elevenconv._fileaudio import WavFileAudioInterface, read_wav_pcm16_16k, write_wav_pcm16
from elevenconv.errors import AudioError, ConfigurationError
from tests.conftest import scaled


def sine(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


def write_wav(path: Path, frames: np.ndarray, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames.astype("<i2").tobytes())


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


class Recorder:
    """An input_callback that records chunks and signals after ``wake_after`` calls."""

    def __init__(self, wake_after: int = 1) -> None:
        self.chunks: list[bytes] = []
        self.wake_after = wake_after
        self.woken = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.threads.add(threading.current_thread().name)
        if len(self.chunks) >= self.wake_after:
            self.woken.set()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@pytest.fixture
def stereo_44k(tmp_path: Path) -> Path:
    """1 s of 440 Hz at 44.1 kHz, left channel only (so the mono mix has half amplitude)."""
    left = sine(440, 44100, 1.0, amplitude=16000)
    frames = np.stack([left, np.zeros_like(left)], axis=1)
    path = tmp_path / "stereo_44k.wav"
    write_wav(path, frames, 44100, 2)
    return path


def test_is_an_audio_interface() -> None:
    assert isinstance(WavFileAudioInterface(), AudioInterface)


def test_read_wav_converts_44k_stereo_to_16k_mono(stereo_44k: Path) -> None:
    x = np.frombuffer(read_wav_pcm16_16k(stereo_44k), dtype="<i2")
    assert abs(len(x) - 16000) <= 2
    assert dominant_frequency(x, 16000) == pytest.approx(440, abs=2)
    mid = x[4000:12000].astype(np.float64)
    assert np.sqrt(np.mean(mid**2)) * np.sqrt(2) == pytest.approx(8000, rel=0.03)


def test_read_wav_16k_mono_is_unchanged(tmp_path: Path) -> None:
    pcm = sine(300, 16000, 0.3).tobytes()
    write_wav_pcm16(tmp_path / "a.wav", pcm)
    assert read_wav_pcm16_16k(tmp_path / "a.wav") == pcm


def test_write_wav_pcm16_at_other_rate(tmp_path: Path) -> None:
    pcm = sine(300, 8000, 0.1).tobytes()
    write_wav_pcm16(str(tmp_path / "b.wav"), pcm, rate=8000)
    with wave.open(str(tmp_path / "b.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert wav.readframes(wav.getnframes()) == pcm


def test_bad_input_files(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot read"):
        WavFileAudioInterface(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError):
        read_wav_pcm16_16k(tmp_path / "junk.wav")
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes(800))
    with pytest.raises(AudioError, match="16-bit"):
        read_wav_pcm16_16k(tmp_path / "8bit.wav")


@pytest.mark.parametrize(
    "kwargs", [{"chunk_ms": 0}, {"chunk_ms": -5}, {"trailing_silence_s": -1.0}]
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        WavFileAudioInterface(**kwargs)  # type: ignore[arg-type]


def test_input_feeds_16k_mono_chunks(stereo_44k: Path) -> None:
    device = WavFileAudioInterface(stereo_44k, realtime=False, chunk_ms=100)
    recorder = Recorder()
    device.start(recorder)
    try:
        assert device.input_finished.wait(scaled(10))
    finally:
        device.stop()
    assert abs(len(recorder.data) - 32000) <= 4
    assert all(len(c) == 3200 for c in recorder.chunks[:-1])
    assert 0 < len(recorder.chunks[-1]) <= 3200
    assert all(len(c) % 2 == 0 for c in recorder.chunks)
    assert recorder.threads == {"elevenconv-wavfile-input"}
    assert recorder.data == read_wav_pcm16_16k(stereo_44k)


def test_trailing_silence_follows_the_file(tmp_path: Path) -> None:
    pcm = sine(440, 16000, 0.25).tobytes()
    write_wav_pcm16(tmp_path / "in.wav", pcm)
    device = WavFileAudioInterface(
        tmp_path / "in.wav", realtime=False, chunk_ms=20, trailing_silence_s=0.5
    )
    done = threading.Event()
    recorder = Recorder(wake_after=10**9)
    expected_len = len(pcm) + 16000

    def callback(chunk: bytes) -> None:
        recorder(chunk)
        if len(recorder.data) >= expected_len:
            done.set()

    device.start(callback)
    try:
        assert done.wait(scaled(10))
    finally:
        device.stop()
    assert recorder.data == pcm + bytes(16000)
    assert device.input_finished.is_set()


def test_loop_repeats_the_file_until_stopped(tmp_path: Path) -> None:
    pcm = sine(440, 16000, 0.1).tobytes()
    write_wav_pcm16(tmp_path / "in.wav", pcm)
    device = WavFileAudioInterface(tmp_path / "in.wav", realtime=False, chunk_ms=50, loop=True)
    recorder = Recorder(wake_after=7)  # 2 chunks per pass: past the third pass
    device.start(recorder)
    try:
        assert recorder.woken.wait(scaled(10))
    finally:
        device.stop()
    data = recorder.data
    assert len(data) >= 3 * len(pcm)
    whole = len(data) // len(pcm) * len(pcm)
    assert data[:whole] == pcm * (whole // len(pcm))
    assert device.input_finished.is_set()


def test_stop_during_realtime_feed_returns_promptly(tmp_path: Path) -> None:
    write_wav_pcm16(tmp_path / "long.wav", sine(440, 16000, 30.0).tobytes())
    device = WavFileAudioInterface(tmp_path / "long.wav", realtime=True, chunk_ms=100)
    recorder = Recorder(wake_after=1)
    device.start(recorder)
    assert recorder.woken.wait(scaled(10))
    threads = [t for t in threading.enumerate() if t.name == "elevenconv-wavfile-input"]
    assert len(threads) == 1
    began = time.monotonic()
    device.stop()
    assert time.monotonic() - began < scaled(1.0)
    assert not threads[0].is_alive()
    assert not device.input_finished.is_set()
    device.stop()  # idempotent


def test_stop_from_inside_the_callback(tmp_path: Path) -> None:
    write_wav_pcm16(tmp_path / "in.wav", sine(440, 16000, 1.0).tobytes())
    device = WavFileAudioInterface(tmp_path / "in.wav", realtime=False, chunk_ms=100)
    stopped = threading.Event()
    chunks: list[bytes] = []

    def callback(chunk: bytes) -> None:
        chunks.append(chunk)
        device.stop()  # must not join its own thread
        stopped.set()

    device.start(callback)
    assert stopped.wait(scaled(10))
    device.stop()  # joins the thread from here
    assert len(chunks) == 1


def test_callback_exception_is_logged_and_ends_the_feed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_wav_pcm16(tmp_path / "in.wav", sine(440, 16000, 1.0).tobytes())
    device = WavFileAudioInterface(tmp_path / "in.wav", realtime=False)
    raised = threading.Event()

    def callback(chunk: bytes) -> None:
        raised.set()
        raise RuntimeError("boom")

    device.start(callback)
    assert raised.wait(scaled(10))
    device.stop()
    assert "input_callback raised" in caplog.text
    assert "boom" in caplog.text


def test_start_twice_raises(tmp_path: Path) -> None:
    device = WavFileAudioInterface()
    device.start(Recorder())
    with pytest.raises(AudioError, match="twice"):
        device.start(Recorder())
    device.stop()


def test_output_wav_contains_exactly_what_was_output(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    device = WavFileAudioInterface(output_path=out)
    pcm = sine(660, 16000, 0.5).tobytes()
    device.output(b"\x01\x02")  # before start(): dropped
    device.start(Recorder())
    assert device.input_finished.is_set()  # no input file: nothing to feed
    # Split at odd offsets: the half sample is carried to the next call.
    for a, b in [(0, 1001), (1001, 1002), (1002, 5555), (5555, len(pcm))]:
        device.output(pcm[a:b])
    device.interrupt()  # nothing queued, nothing dropped
    assert device.wait_until_drained(0.0) is True
    device.stop()
    device.output(b"\x03\x04")  # after stop(): dropped
    with wave.open(str(out), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.getnframes() == len(pcm) // 2
        assert wav.readframes(wav.getnframes()) == pcm
    assert read_wav_pcm16_16k(out) == pcm


def test_output_from_several_threads_is_not_torn(tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    device = WavFileAudioInterface(output_path=out)
    device.start(Recorder())
    chunk_a, chunk_b = b"\x11\x11" * 160, b"\x22\x22" * 160

    def writer(chunk: bytes) -> None:
        for _ in range(200):
            device.output(chunk)

    workers = [threading.Thread(target=writer, args=(c,)) for c in (chunk_a, chunk_b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(scaled(10))
    device.stop()
    data = read_wav_pcm16_16k(out)
    assert len(data) == 2 * 200 * 320
    assert sorted(data[i : i + 320] for i in range(0, len(data), 320)) == sorted(
        [chunk_a] * 200 + [chunk_b] * 200
    )


def test_silent_device_without_paths() -> None:
    device = WavFileAudioInterface()
    recorder = Recorder()
    device.start(recorder)
    device.output(b"\x00\x00" * 100)
    device.interrupt()
    assert device.wait_until_drained(1.0)
    device.stop()
    assert recorder.chunks == []
    assert not [t for t in threading.enumerate() if t.name == "elevenconv-wavfile-input"]


def test_input_and_output_together(tmp_path: Path) -> None:
    pcm = sine(440, 16000, 0.3).tobytes()
    write_wav_pcm16(tmp_path / "in.wav", pcm)
    out = tmp_path / "out.wav"
    device = WavFileAudioInterface(tmp_path / "in.wav", out, realtime=False)
    # Echo the microphone into the speaker, from the input thread.
    device.start(device.output)
    try:
        assert device.input_finished.wait(scaled(10))
    finally:
        device.stop()
    assert read_wav_pcm16_16k(out) == pcm


# -- write errors ----------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, mounted for the test (as root: CI runs as root), to fill up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        check=True,
        timeout=30,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True, timeout=30)


def valid_wav_frames(path: Path) -> bytes:
    """The frames of a WAV whose header matches the file size exactly."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        frames = wav.readframes(wav.getnframes())
        assert len(frames) == 2 * wav.getnframes()
    assert path.stat().st_size == 44 + len(frames), "the header matches the data on disk"
    return frames


@pytest.mark.timeout(30)
def test_disk_full_raises_audio_error_and_leaves_a_valid_wav(tiny_fs: Path) -> None:
    out = tiny_fs / "out.wav"
    device = WavFileAudioInterface(output_path=out)
    device.start(Recorder())
    assert valid_wav_frames(out) == b"", "the header is on disk from start()"
    pcm = sine(440, 16000, 5.0).tobytes()  # 160 KB: more than the file system holds
    chunk = 3333  # odd: samples split across chunks too
    written = b""

    def fill() -> None:
        nonlocal written
        for offset in range(0, len(pcm), chunk):
            device.output(pcm[offset : offset + chunk])
            written = pcm[: offset + chunk - (offset + chunk) % 2]

    with pytest.raises(AudioError) as info:
        fill()
    message = str(info.value)
    assert "No space left on device" in message
    assert str(out) in message
    assert "finalised, valid WAV" in message
    assert device.write_error is info.value
    # The recording is over: later audio is dropped quietly, stop() still works.
    device.output(pcm[:3200])
    device.stop()
    device.stop()
    frames = valid_wav_frames(out)
    assert len(frames) > 32_000, "most of the space was used"
    assert frames == written, "exactly the chunks before the failed one"


def test_an_output_file_that_cannot_take_its_header_fails_start() -> None:
    # /dev/full: every write fails with ENOSPC.
    device = WavFileAudioInterface(output_path="/dev/full")
    with pytest.raises(AudioError, match=r"cannot create WAV file '/dev/full'.*No space left"):
        device.start(Recorder())
    device.output(b"\x00\x00")  # nothing open: dropped
    device.stop()


def test_an_output_path_that_cannot_be_created_fails_start(tmp_path: Path) -> None:
    device = WavFileAudioInterface(output_path=tmp_path / "missing-dir" / "out.wav")
    with pytest.raises(AudioError, match="cannot create WAV file"):
        device.start(Recorder())
    device.stop()


def test_stop_closes_the_file_even_if_finalising_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elevenconv import _fileaudio

    device = WavFileAudioInterface(output_path=tmp_path / "out.wav")
    device.start(Recorder())
    device.output(b"\x01\x00" * 100)
    opened = device._file
    assert opened is not None

    def broken_seek(self: Any, *args: Any) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_fileaudio._WholeWriteFile, "seek", broken_seek)
    with pytest.raises(AudioError, match=r"cannot finalise WAV file.*Input/output error"):
        device.stop()
    assert opened.closed
    device.stop()  # idempotent, nothing left to finalise


def test_stop_finalises_the_wav_even_when_the_input_callback_is_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elevenconv import _fileaudio

    monkeypatch.setattr(_fileaudio, "_JOIN_TIMEOUT", 0.2)
    write_wav_pcm16(tmp_path / "in.wav", sine(440, 16000, 1.0).tobytes())
    out = tmp_path / "out.wav"
    device = WavFileAudioInterface(tmp_path / "in.wav", out, realtime=False)
    entered, release = threading.Event(), threading.Event()

    def stuck(chunk: bytes) -> None:
        entered.set()
        release.wait(scaled(10))

    device.start(stuck)
    try:
        assert entered.wait(scaled(10))
        device.output(b"\x02\x00" * 50)
        device.stop()
        assert valid_wav_frames(out) == b"\x02\x00" * 50
        assert "input_callback is blocking" in caplog.text
    finally:
        release.set()
        thread = device._thread
        assert thread is not None
        thread.join(scaled(10))
