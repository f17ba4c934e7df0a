"""Fixtures for the real-audio tests: a PulseAudio server with two null sinks.

* ``sound_server`` (session): the server ``scripts/sound-server`` runs. ``scripts/test``
  starts it and exports its environment; when pytest is run directly, the fixture starts
  it itself (and stops it at the end of the session). If it cannot be started, audio
  tests fail in CI and are skipped elsewhere, with the reason.
* :func:`play_into_mic` plays PCM into the microphone bus (``elevenconv_mic``; its
  monitor is the default source, i.e. what a DefaultAudioInterface records).
* :class:`SpeakerCapture` records ``elevenconv_speaker.monitor`` (everything played to the
  default sink) and keeps, for each chunk read, the monotonic time it arrived, so a wall
  clock instant can be located in the captured signal.
* :class:`EchoPath` (and the ``echo_path`` fixture) turns the two sinks into a room: a
  ``module-loopback`` from ``elevenconv_speaker.monitor`` into ``elevenconv_mic`` with a
  delay and a lowered level, so what an app plays comes back into its microphone.
  The fixture also watches the server (:class:`ForeignStreams`): audio that another run
  on the same server plays during a room test is sound the echo canceller has no
  reference for (measured: echo rms 267-637 instead of < 3); such a test fails saying so.
* When pytest starts the server itself, it does so in a private directory (a fresh
  ``ELEVENCONV_SOUND_DIR``), never in the shared default one, and stops it at the end.
* Small signal helpers: :func:`tone`, :func:`chirp`, :func:`rms`,
  :func:`dominant_frequency`, :func:`envelope`, :func:`speech_like`.

Mark tests that use these with ``@pytest.mark.audio``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "sound-server"
RATE = 16000
_ENV_VARS_NEEDED = ("PULSE_SERVER", "ELEVENCONV_TEST_SPEAKER_SINK", "ELEVENCONV_TEST_MIC_SINK")


@dataclass
class SoundServer:
    """The running test sound server: its environment and sink names."""

    env: dict[str, str]
    started_here: bool = False
    speaker_sink: str = field(init=False)
    speaker_monitor: str = field(init=False)
    mic_sink: str = field(init=False)

    def __post_init__(self) -> None:
        self.speaker_sink = self.env.get("ELEVENCONV_TEST_SPEAKER_SINK", "elevenconv_speaker")
        self.speaker_monitor = self.env.get(
            "ELEVENCONV_TEST_SPEAKER_MONITOR", self.speaker_sink + ".monitor"
        )
        self.mic_sink = self.env.get("ELEVENCONV_TEST_MIC_SINK", "elevenconv_mic")

    def pactl(self, *args: str) -> str:
        """Run ``pactl`` against the server and return its stdout."""
        return subprocess.run(
            ["pactl", *args], check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def sink_inputs(self) -> list[str]:
        """Playback streams currently connected (``pactl list short sink-inputs``)."""
        return [line for line in self.pactl("list", "short", "sink-inputs").splitlines() if line]


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def _server_answers() -> bool:
    if not shutil.which("pactl"):
        return False
    try:
        subprocess.run(["pactl", "info"], check=True, capture_output=True, timeout=5)
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def _unavailable(reason: str) -> None:
    from tests.conftest import IN_CI

    message = f"PulseAudio test server unavailable: {reason}"
    if IN_CI:
        pytest.fail(message + " (audio tests are never skipped in CI)", pytrace=False)
    pytest.skip(message + " (run `bash scripts/test`, or scripts/sound-server start)")


@pytest.fixture(scope="session")
def sound_server() -> Iterator[SoundServer]:
    """The PulseAudio test server, from the exported environment or started here."""
    if all(os.environ.get(v) for v in _ENV_VARS_NEEDED) and _server_answers():
        yield SoundServer(
            env={
                k: v
                for k, v in os.environ.items()
                if k.startswith(("PULSE_", "ALSA_", "ELEVENCONV_", "XDG_RUNTIME_DIR"))
            }
        )
        return
    if not SCRIPT.exists():
        _unavailable(f"{SCRIPT} not found")
    # A directory of our own unless one was chosen: the default one is shared by every run
    # of this user on the machine, and another run's audio in our room is echo we cannot
    # cancel (and its `stop` would end our server mid-run).
    script_env = dict(os.environ)
    if not script_env.get("ELEVENCONV_SOUND_DIR"):
        script_env["ELEVENCONV_SOUND_DIR"] = tempfile.mkdtemp(prefix="elevenconv-sound-")
    # Already running for someone else in the same directory? Then do not stop it after.
    already = (
        subprocess.run(
            ["bash", str(SCRIPT), "status"], capture_output=True, timeout=30, env=script_env
        ).returncode
        == 0
    )
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start"],
            capture_output=True,
            text=True,
            timeout=60,
            env=script_env,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        _unavailable(f"scripts/sound-server start failed: {exc}")
        raise  # unreachable: _unavailable raises
    if proc.returncode != 0:
        _unavailable(f"scripts/sound-server start exited {proc.returncode}: {proc.stderr.strip()}")
    env = _parse_exports(proc.stdout)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if not _server_answers():
            _unavailable("started, but `pactl info` does not answer")
        yield SoundServer(env=env, started_here=not already)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not already:
            subprocess.run(
                ["bash", str(SCRIPT), "stop"], capture_output=True, timeout=30, env=script_env
            )


# -- a room: the speaker heard by the microphone -------------------------------------------


class EchoPath:
    """An acoustic echo path on the test server: speaker -> delay, gain -> microphone.

    ``with EchoPath(latency_ms=120, gain_db=-9): ...`` loads ``module-loopback
    source=<speaker sink>.monitor sink=<mic bus> latency_msec=<latency_ms>`` and sets its
    stream's volume to ``gain_db``; leaving unloads it. Everything played to the default
    sink is then also heard, ``latency_ms`` later and ``gain_db`` quieter, by whatever
    records the default source, just as in a room with open speakers.
    """

    def __init__(
        self,
        latency_ms: int = 120,
        gain_db: float = -9.0,
        *,
        speaker_monitor: str | None = None,
        mic_sink: str | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self.gain_db = gain_db
        self.source = speaker_monitor or os.environ.get(
            "ELEVENCONV_TEST_SPEAKER_MONITOR", "elevenconv_speaker.monitor"
        )
        self.sink = mic_sink or os.environ.get("ELEVENCONV_TEST_MIC_SINK", "elevenconv_mic")
        self.module: str | None = None

    #: Modules loaded by EchoPaths of this process (their streams are ours); ``lock`` is
    #: held from loading one until it is in ``loaded``, so a watcher never mistakes it.
    loaded: set[str] = set()
    lock = threading.Lock()

    @staticmethod
    def _pactl(*args: str) -> str:
        return subprocess.run(
            ["pactl", *args], check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def __enter__(self) -> EchoPath:
        with EchoPath.lock:
            self.module = self._pactl(
                "load-module",
                "module-loopback",
                f"source={self.source}",
                f"sink={self.sink}",
                f"latency_msec={self.latency_ms}",
                "source_dont_move=true",
                "sink_dont_move=true",
                "remix=false",
            ).strip()
            EchoPath.loaded.add(self.module)
        try:
            inputs = json.loads(self._pactl("-f", "json", "list", "sink-inputs"))
            index = next(str(i["index"]) for i in inputs if str(i["owner_module"]) == self.module)
            self._pactl("set-sink-input-volume", index, f"{self.gain_db}dB")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Unload the loopback (idempotent)."""
        if self.module is not None:
            module, self.module = self.module, None
            subprocess.run(["pactl", "unload-module", module], capture_output=True, timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def echo_path(sound_server: SoundServer) -> Iterator[Callable[..., EchoPath]]:
    """Factory: ``echo_path(latency_ms=120, gain_db=-9)`` -> an entered :class:`EchoPath`.

    Every path made is unloaded when the test ends.
    """
    made: list[EchoPath] = []
    with ForeignStreams() as foreign:
        if foreign.found:
            pytest.fail(foreign.explain("before the test"), pytrace=False)

        def make(latency_ms: int = 120, gain_db: float = -9.0) -> EchoPath:
            path = EchoPath(latency_ms, gain_db).__enter__()
            made.append(path)
            return path

        try:
            yield make
        finally:
            for path in made:
                path.close()
    if foreign.found:
        pytest.fail(foreign.explain("during the test"), pytrace=False)


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its descendants (the CLI, pacat)."""
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        if pid <= 1:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rpartition(")")[2].split()[1])  # the field after the name: ppid
    return False


def _stop_piped(proc: subprocess.Popen[Any] | None, reader: threading.Thread | None) -> None:
    """Stop a child whose stdout a thread reads (terminate, then kill), join that thread
    and close the pipe. Idempotent."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if reader is not None:
        reader.join(10)
    if proc is not None and proc.stdout is not None:
        proc.stdout.close()


class ForeignStreams:
    """Watch the test server for playback streams that are not this test's.

    ``with ForeignStreams() as w: ...``; :attr:`found` lists (at entry and whenever a
    stream appears; ``pactl subscribe`` on a thread) every sink input that neither this
    process (or a child: the CLI, pacat) nor one of our :class:`EchoPath` loopbacks owns:
    another run sharing the server, whose audio lands in our room.
    """

    def __init__(self) -> None:
        self.found: list[str] = []
        self._seen: set[str] = set()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> ForeignStreams:
        self._proc = subprocess.Popen(
            ["pactl", "subscribe"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._thread = threading.Thread(target=self._read, name="test-foreign-streams")
        self._thread.start()
        self.check()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if "'new' on sink-input" in line:
                self.check()

    def check(self) -> None:
        """Look at the sink inputs now; note the foreign ones."""
        try:
            out = subprocess.run(
                ["pactl", "-f", "json", "list", "sink-inputs"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            inputs = json.loads(out or "[]")
        except (subprocess.SubprocessError, OSError, ValueError):
            return
        for item in inputs:
            props = item.get("properties", {})
            module = str(item.get("owner_module"))
            pid_text = props.get("application.process.id")
            if item.get("client") in (None, "", -1):  # a module's stream (a loopback)
                with EchoPath.lock:
                    ours = module in EchoPath.loaded
            else:
                ours = pid_text is not None and _is_ours(int(pid_text))
            key = str(item.get("index"))
            with self._lock:
                if ours or key in self._seen:
                    continue
                self._seen.add(key)
                name = props.get("application.name") or props.get("media.name") or "?"
                self.found.append(f"sink-input #{key} ({name}, pid {pid_text}, module {module})")

    def explain(self, when: str) -> str:
        return (
            f"another client played into the test sound server {when}: "
            f"{'; '.join(self.found)}. Its audio is echo without a reference: run with a "
            "private server (export ELEVENCONV_SOUND_DIR=$(mktemp -d), then "
            "scripts/sound-server start)"
        )

    def __exit__(self, *exc: object) -> None:
        _stop_piped(self._proc, self._thread)


# -- playing into the microphone bus -------------------------------------------------------


class MicPlayback:
    """A running ``pacat`` playing into the mic bus. Wait on it, or it is killed on exit."""

    def __init__(self, proc: subprocess.Popen[bytes], source: IO[bytes], started_at: float):
        self.proc = proc
        self._source = source
        #: ``time.monotonic()`` just before pacat was started.
        self.started_at = started_at

    def wait(self, timeout: float) -> int:
        """Wait until everything was played; return pacat's exit status."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._source.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._source.close()

    def __enter__(self) -> MicPlayback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def play_into_mic(pcm16_16k: bytes, sink: str | None = None) -> MicPlayback:
    """Play PCM16 mono 16 kHz into the microphone bus; return a handle to wait on.

    The data goes through an unlinked temporary file (pacat's stdin), so nothing blocks
    on a pipe and no helper thread is needed.
    """
    sink = sink or os.environ.get("ELEVENCONV_TEST_MIC_SINK", "elevenconv_mic")
    source = tempfile.TemporaryFile()  # noqa: SIM115 - closed by MicPlayback
    source.write(pcm16_16k)
    source.flush()
    source.seek(0)
    started_at = time.monotonic()
    proc = subprocess.Popen(
        [
            "pacat",
            "--playback",
            "--raw",
            "--format=s16le",
            f"--rate={RATE}",
            "--channels=1",
            f"--device={sink}",
            "--latency-msec=20",
        ],
        stdin=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return MicPlayback(proc, source, started_at)


# -- recording the speaker -----------------------------------------------------------------


class SpeakerCapture:
    """Record the speaker sink's monitor (PCM16 mono 16 kHz) into memory.

    ``with SpeakerCapture() as cap: ...``. A reader thread (``test-speaker-capture``)
    appends what ``parecord`` writes and notes when each chunk arrived, so
    :meth:`time_of` maps a sample position to ``time.monotonic()``: the monitor delivers
    samples as the null sink plays them, so a chunk's last sample was played just before
    it arrived (within parecord's 10 ms latency). Waiting is on a Condition, never sleep.
    """

    def __init__(self, source: str | None = None, latency_ms: int = 10) -> None:
        self.source = source or os.environ.get(
            "ELEVENCONV_TEST_SPEAKER_MONITOR", "elevenconv_speaker.monitor"
        )
        self.latency_ms = latency_ms
        self._buf = bytearray()
        self._arrivals: list[tuple[float, int]] = []  # (monotonic, total bytes so far)
        self._cond = threading.Condition()
        self._eof = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        #: ``time.monotonic()`` just before parecord was started.
        self.started_at = 0.0

    def __enter__(self) -> SpeakerCapture:
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            [
                "parecord",
                "--raw",
                "--format=s16le",
                f"--rate={RATE}",
                "--channels=1",
                f"--device={self.source}",
                f"--latency-msec={self.latency_ms}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, name="test-speaker-capture")
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 4096)
            now = time.monotonic()
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buf += chunk
                self._arrivals.append((now, len(self._buf)))
                self._cond.notify_all()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop recording (idempotent); the data stays available."""
        _stop_piped(self._proc, self._thread)

    # -- waiting ----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (on the reader's Condition) until ``predicate()`` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate() or self._eof, timeout) and (predicate())

    def wait_recording(self, timeout: float) -> bool:
        """Wait until parecord delivers data (the stream is connected and running)."""
        return self.wait_for(lambda: len(self._buf) > 0, timeout)

    def wait_until(self, t_monotonic: float, timeout: float) -> bool:
        """Wait until the capture holds what was played up to ``t_monotonic``."""
        return self.wait_for(
            lambda: bool(self._arrivals) and self._arrivals[-1][0] >= t_monotonic, timeout
        )

    # -- data -------------------------------------------------------------------------

    @property
    def pcm(self) -> bytes:
        """Everything recorded so far (an even number of bytes)."""
        with self._cond:
            data = bytes(self._buf)
        return data[: len(data) - len(data) % 2]

    def samples(self) -> Any:
        """The recording as a numpy int16 array."""
        import numpy as np

        return np.frombuffer(self.pcm, dtype="<i2")

    def time_of(self, sample_index: int) -> float:
        """Estimated ``time.monotonic()`` at which sample ``sample_index`` was played.

        Taken from the arrival time of the first chunk containing it, minus the samples
        after it in that chunk.
        """
        byte_pos = sample_index * 2
        with self._cond:
            arrivals = list(self._arrivals)
        for arrived, total in arrivals:
            if total > byte_pos:
                return arrived - (total - byte_pos) / 2 / RATE
        raise IndexError(f"sample {sample_index} not captured yet")


# -- signal helpers ------------------------------------------------------------------------


def tone(freq: float, seconds: float, amplitude: float = 0.5, rate: int = RATE) -> bytes:
    """A sine tone as PCM16 mono bytes."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def chirp(f0: float, f1: float, seconds: float, amplitude: float = 0.5, rate: int = RATE) -> bytes:
    """A linear chirp from ``f0`` to ``f1`` Hz as PCM16 mono bytes."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return (amplitude * 32767 * np.sin(phase)).astype("<i2").tobytes()


def speech_like(seconds: float, seed: int = 0, amplitude: float = 0.4, rate: int = RATE) -> bytes:
    """Noise shaped like speech (syllable-rate bursts, voiced band) as PCM16 mono bytes.

    Broadband, so an echo canceller has to model the whole echo path, and bursty, so an
    energy VAD sees onsets. Reproducible for a given ``seed``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    syllables = np.clip(np.sin(2 * np.pi * (3.0 + seed % 3 * 0.4) * t), 0.0, None) ** 0.5
    noise = np.convolve(rng.standard_normal(n), np.hanning(9), "same")
    voiced = np.sin(2 * np.pi * (140 + 20 * (seed % 4)) * t) * 0.5
    x = (noise + voiced) * syllables
    x /= max(1e-9, float(np.max(np.abs(x))))
    return (amplitude * 32767 * x).astype("<i2").tobytes()


def as_array(pcm: bytes) -> Any:
    import numpy as np

    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)


def rms(x: Any) -> float:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def dominant_frequency(x: Any, rate: int = RATE) -> float:
    """The frequency (Hz) of the largest FFT bin of ``x`` (Hann-windowed)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / len(x))


def envelope(x: Any, window: int = 16) -> Any:
    """Max |x| over a sliding window of ``window`` samples (centred)."""
    import numpy as np

    a = np.abs(np.asarray(x, dtype=np.float64))
    if len(a) < window:
        return a
    from numpy.lib.stride_tricks import sliding_window_view

    m = sliding_window_view(a, window).max(axis=1)
    pad_left = window // 2
    return np.concatenate([np.full(pad_left, m[0]), m, np.full(len(a) - len(m) - pad_left, m[-1])])
