"""The ``elevenconv`` command, run as a real subprocess (a pty for the interactive chat).

Every wait is a deadline on output (``select`` + ``os.read``), never a sleep.
"""

from __future__ import annotations

import contextlib
import math
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elevenconv import Conversation, ElevenLabsClient
from elevenconv._fileaudio import read_wav_pcm16_16k, write_wav_pcm16
from tests.conftest import scaled

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "elevenconv"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
TITLE = re.compile(r"\x1b\]0;([^\x07]*)\x07")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ELEVENLABS_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Output:
    """Reads a child's output fd with deadlines; ``expect`` returns the match."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""
        self.raw = ""  # as written, escape sequences included
        self._pos = 0
        self._title_pos = 0

    @property
    def titles(self) -> list[str]:
        """The terminal titles set so far (the CLI's live status line)."""
        return TITLE.findall(self.raw)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the pty's other side is closed
            return False
        if not data:
            return False
        decoded = data.decode("utf-8", "replace")
        self.raw += decoded
        self.text += ANSI.sub("", decoded.replace("\r", ""))
        return True

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = _now() + scaled(timeout)
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.text, self._pos)
            if m:
                self._pos = m.end()
                return m
            left = deadline - _now()
            if left <= 0 or not self._read(left):
                m = regex.search(self.text, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                raise AssertionError(f"no {pattern!r} in the output:\n{self.text}")

    def expect_title(self, pattern: str, timeout: float = 20.0) -> str:
        """Wait until a terminal title set after the last one matched matches ``pattern``."""
        deadline = _now() + scaled(timeout)
        regex = re.compile(pattern)
        while True:
            for i in range(self._title_pos, len(self.titles)):
                if regex.search(self.titles[i]):
                    self._title_pos = i + 1
                    return self.titles[i]
            left = deadline - _now()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no title {pattern!r} in {self.titles}")

    def drain(self, timeout: float = 5.0) -> str:
        deadline = _now() + scaled(timeout)
        while _now() < deadline and self._read(deadline - _now()):
            pass
        return self.text


def _now() -> float:
    import time

    return time.monotonic()


def _no_processes_left(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def run_cli(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        cwd=REPO,
        env=kw.pop("env", _env()),
        **kw,
    )


@contextlib.contextmanager
def spawn_cli(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """Start the CLI in its own process group; kill the group if the test leaves it running."""
    proc = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=_env(),
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        yield proc, Output(proc.stdout.fileno())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


@contextlib.contextmanager
def pty_cli(*args: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], Output, int]]:
    """The CLI on a pseudo-terminal (TERM=xterm): yields the process, its output, the master fd."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env=_env(TERM="xterm", **env),
        start_new_session=True,
    )
    os.close(slave)
    try:
        yield proc, Output(master), master
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


UP = b"\x1b[A"  # the up-arrow key


@pytest.mark.timeout(60)
def test_interactive_text_chat_in_a_pty(tmp_path: Path) -> None:
    """Greeting, a typed question, the time tool, /feedback, /quit -> exit 0, nothing left;
    the live status is in the terminal title."""
    with pty_cli("chat", "--no-voice", XDG_STATE_HOME=str(tmp_path)) as (proc, out, master):
        out.expect(r"agent: Hello! I'm the simulated agent")
        out.expect(r"you> ")
        os.write(master, b"hello, who are you?\n")
        out.expect(r"agent: Hello there! You can ask me about time")
        os.write(master, b"what time is it?\n")
        call = out.expect(r"\[tool call\] get_current_time \{\}")
        result = out.expect(r"\[tool\] get_current_time\(\) -> (\d\d:\d\d)")
        assert call.start() < result.start()  # ordered: the call, then its result
        out.expect(rf"agent: The time is {result.group(1)}\.")
        os.write(master, b"/feedback like\n")
        out.expect(r"\[feedback sent: like\]")
        os.write(master, b"/status\n")
        out.expect(r"\[conversation conv_\w+\] \[listening\]")
        assert out.titles[0] == "elevenconv: connected | listening"
        os.write(master, b"/quit\n")
        out.expect(r"\[conversation ended\]")
        assert proc.wait(scaled(15)) == 0
        out.drain(1)
        assert "Traceback" not in out.text
        assert out.titles[-1] == "elevenconv: ended"
        assert "\x1b[23;0t" in out.raw[-40:]  # the user's own title is restored
        _no_processes_left(proc.pid)


@pytest.mark.timeout(60)
def test_line_editing_and_history_across_sessions(tmp_path: Path) -> None:
    """Arrow keys recall earlier lines (readline), also from the previous session's
    history file; the file is private to the user; --no-history keeps none."""
    history = tmp_path / "elevenconv" / "chat_history"
    history.parent.mkdir()
    history.write_text("what time is it?\n")
    with pty_cli("chat", "--no-voice", XDG_STATE_HOME=str(tmp_path)) as (proc, out, master):
        out.expect(r"agent: Hello! I'm the simulated agent")
        out.expect(r"you> ")
        os.write(master, UP)  # the previous session's last line
        out.expect(r"what time is it\?")
        os.write(master, b"\n")
        out.expect(r"\[tool\] get_current_time\(\) -> \d\d:\d\d")
        out.expect(r"agent: The time is")
        out.expect(r"you> ")
        # Edit the recalled line: up, erase "it?" with three backspaces, type "now?".
        os.write(master, UP + b"\x7f\x7f\x7fnow?\n")
        out.expect(r"agent: The time is")  # "what time is now?" still asks for the time
        os.write(master, b"bye\n")
        out.expect(r"\[the agent ended the call")
        assert proc.wait(scaled(15)) == 0
        out.drain(1)
        # No prompt after the end: the last prompt was erased, none drawn again.
        tail = out.raw[out.raw.rindex("[the agent ended the call") :]
        assert "you> " not in tail
    kept = history.read_text().splitlines()
    assert kept[0] == "what time is it?"
    assert kept[-2:] == ["what time is now?", "bye"]
    assert history.stat().st_mode & 0o077 == 0

    with pty_cli("chat", "--no-voice", "--no-history", XDG_STATE_HOME=str(tmp_path / "none")) as (
        proc,
        out,
        master,
    ):
        out.expect(r"you> ")
        os.write(master, b"bye\n")
        out.expect(r"\[the agent ended the call")
        assert proc.wait(scaled(15)) == 0
    assert not (tmp_path / "none").exists()


@pytest.mark.timeout(60)
def test_ctrl_c_at_the_prompt_gives_the_terminal_back(tmp_path: Path) -> None:
    """readline puts the terminal in raw mode while it reads; Ctrl+C in the middle of a
    line still ends with the terminal as it was (echo, line mode), exit status 130."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [*CLI, "chat", "--no-voice"],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
        env=_env(TERM="xterm", XDG_STATE_HOME=str(tmp_path)),
    )  # fmt: skip
    out = Output(master)
    try:
        out.expect(r"agent: Hello!")
        out.expect(r"you> ")
        os.write(master, b"half a li")
        out.expect(r"half a li")
        raw = termios.tcgetattr(slave)
        assert not raw[3] & (termios.ECHO | termios.ICANON)  # readline is reading
        proc.send_signal(signal.SIGINT)
        assert proc.wait(scaled(15)) == 130
        out.drain(1)
        assert "[interrupted]" in out.text and "Traceback" not in out.text
        after = termios.tcgetattr(slave)
        assert after[3] & (termios.ECHO | termios.ICANON) == before[3] & (
            termios.ECHO | termios.ICANON
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(slave)
        os.close(master)


@pytest.mark.timeout(60)
def test_say_mode_runs_turns_in_order_and_the_agent_ends_the_call() -> None:
    done = run_cli(
        "chat", "--no-voice", "--say", "hello", "--say", "what time is it?", "--say", "bye"
    )
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("you:", "agent:", "[tool]"))]
    assert lines[0] == "agent: Hello! I'm the simulated agent. How can I help you today?"
    assert lines[1:3] == [
        "you: hello",
        "agent: Hello there! You can ask me about time, or say bye to end the call.",
    ]
    assert lines[3] == "you: what time is it?"
    assert re.fullmatch(r"\[tool\] get_current_time\(\) -> \d\d:\d\d", lines[4])
    assert re.fullmatch(r"agent: The time is \d\d:\d\d\.", lines[5])
    assert lines[6:] == ["you: bye", "agent: Goodbye! It was nice talking to you."]
    assert "[the agent ended the call" in done.stdout


@pytest.mark.timeout(60)
def test_script_with_commands(tmp_path: Path) -> None:
    script = tmp_path / "turns.txt"
    script.write_text(
        "# a comment\n"
        "/context the user prefers short answers\n"
        "what time is it?\n"
        "/expect the time is\n"
        "/feedback dislike\n"
        "\n"
        "bye\n"
        "/wait-end\n"
    )
    done = run_cli("chat", "--no-voice", "--script", str(script))
    assert done.returncode == 0, done.stderr
    assert "[context sent]" in done.stdout
    assert "[feedback sent: dislike]" in done.stdout
    assert "[the agent ended the call: Agent ended the call]" in done.stdout


@pytest.mark.timeout(60)
def test_script_expect_timeout_is_an_error_with_a_clear_message(tmp_path: Path) -> None:
    script = tmp_path / "turns.txt"
    script.write_text("hello\n/expect bananas\n")
    done = run_cli("chat", "--no-voice", "--expect-timeout", "0.5", "--script", str(script))
    assert done.returncode == 1
    assert "/expect 'bananas': no agent response contained it" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(30)
def test_bad_script_line_is_a_usage_error_before_connecting(tmp_path: Path) -> None:
    script = tmp_path / "turns.txt"
    script.write_text("hello\n/feedback maybe\n")
    done = run_cli("chat", "--no-voice", "--script", str(script))
    assert done.returncode == 2
    assert "line 2: use /feedback like or /feedback dislike" in done.stderr
    assert "simulator" not in done.stdout  # nothing was started


@pytest.mark.timeout(30)
def test_usage_help_and_version() -> None:
    assert run_cli().returncode == 2
    helped = run_cli("chat", "--help")
    assert helped.returncode == 0
    assert "--script" in helped.stdout and "130" in helped.stdout
    for option in ("--voice", "--no-voice", "--no-echo-cancellation", "--no-history"):
        assert option in helped.stdout
    simulate = run_cli("simulate", "--help")  # its options come from elevenconv.testing._cli
    assert simulate.returncode == 0, simulate.stderr
    assert "elevenconv simulate" in simulate.stdout and "--agent" in simulate.stdout
    assert run_cli("chat", "--no-such-option").returncode == 2
    assert run_cli("--version").stdout.startswith("elevenconv ")
    assert run_cli("chat", "--say", "a", "--script", "x").returncode == 2


@pytest.mark.timeout(60)
def test_ctrl_c_ends_the_chat_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "turns.txt"
    script.write_text("hello\n/wait 120\n")
    with spawn_cli("chat", "--no-voice", "--script", str(script)) as (proc, out):
        out.expect(r"agent: Hello there!")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(scaled(15)) == 130
        text = out.drain(2)
        assert "[interrupted]" in text
        assert "[conversation ended]" in text
        assert "Traceback" not in text
        _no_processes_left(proc.pid)


@pytest.mark.timeout(60)
def test_simulate_prints_its_url_serves_clients_and_stops_on_sigint() -> None:
    with spawn_cli("simulate", "--port", "0", "--realtime-factor", "0", "--tts", "tone") as (
        proc,
        out,
    ):
        base_url = out.expect(r"simulator .*?(http://127\.0\.0\.1:\d+)").group(1)
        out.expect(r"websocket: ws://127\.0\.0\.1:\d+/v1/convai/conversation\?agent_id=sim-agent")

        # A Conversation in this process connects to it.
        answered = threading.Event()
        texts: list[str] = []
        conv = Conversation(
            ElevenLabsClient(base_url=base_url),
            "sim-agent",
            requires_auth=False,
            callback_agent_response=lambda t: (texts.append(t), answered.set()),
        )
        conv.start_session()
        try:
            conv.send_user_message("hello")
            assert answered.wait(scaled(10))
        finally:
            conv.end_session()

        # And the CLI, as a private agent through a signed URL (the key from the env).
        done = run_cli(
            "chat", "--agent-id", "sim-agent", "--base-url", base_url, "--no-voice",
            "--say", "bye",
            env=_env(ELEVENLABS_API_KEY="sim-api-key"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "private agent, signed URL" in done.stdout
        assert "sim-api-key" not in done.stdout + done.stderr
        assert "agent: Goodbye!" in done.stdout

        proc.send_signal(signal.SIGINT)
        assert proc.wait(scaled(15)) == 0
        assert "[simulator stopped" in out.drain(2)
        _no_processes_left(proc.pid)


@pytest.mark.timeout(60)
def test_record_in_text_mode_saves_the_agents_voice(tmp_path: Path) -> None:
    out = tmp_path / "agent.wav"
    done = run_cli(
        "chat", "--no-voice", "--record", str(out), "--sim-tts", "tone",
        "--sim-realtime-factor", "0", "--say", "hello", "--say", "bye", "--say", "/wait-end",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "agent audio to" in done.stdout
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.getnframes() > 16000 * 2  # greeting + answer + goodbye
    pcm = read_wav_pcm16_16k(out)
    assert _rms(pcm) > 300


@pytest.mark.timeout(90)
def test_voice_without_a_sound_card_through_input_wav(tmp_path: Path) -> None:
    """--input-wav: a tone is the user's voice; the simulator's VAD hears it."""
    voice = tmp_path / "voice.wav"
    write_wav_pcm16(voice, _tone(440, 1.0))
    agent, mic = tmp_path / "agent.wav", tmp_path / "mic.wav"
    script = tmp_path / "turns.txt"
    script.write_text("/expect You said: (spoken\n/status\nbye\n/wait-end\n")
    done = run_cli(
        "chat", "--input-wav", str(voice), "--record", str(agent), "--record-mic", str(mic),
        "--no-echo-cancellation",
        "--sim-tts", "tone", "--sim-realtime-factor", "0", "--script", str(script),
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[connected: voice + text" in done.stdout
    assert re.search(r"you \(voice\): \(spoken \d\.\d s\)", done.stdout)
    assert "[agent speaking]" in done.stdout
    assert re.search(
        r"\[conversation \w+\] \[(listening|agent speaking), mic on, echo cancellation off\b",
        done.stdout,
    )
    assert _rms(read_wav_pcm16_16k(agent)) > 300
    recorded_mic = read_wav_pcm16_16k(mic)
    assert len(recorded_mic) >= 32000  # the whole second of tone went to the agent
    assert _rms(recorded_mic[:32000]) > 1000


class _RoomDevice:
    """A stand-in device with every echo-canceller capability (and records its calls)."""

    acoustic_echo = True

    def __init__(self) -> None:
        self.reference: Any = None
        self.delivering = False
        self.started: Any = None

    def start(self, input_callback: Any) -> None:
        self.started = input_callback

    def deliver(self, chunk: bytes) -> None:
        self.delivering = True
        try:
            self.started(chunk)
        finally:
            self.delivering = False

    def set_playback_reference_callback(self, callback: Any) -> bool:
        self.reference = callback
        return True

    def capture_time(self) -> float | None:
        return 123.25 if self.delivering else None


@pytest.mark.timeout(10)
def test_the_microphone_tap_passes_the_echo_cancellers_capabilities_through() -> None:
    """The CLI wraps the device in a tap (/speak, --record-mic). The echo canceller needs
    the device's exact playback reference and capture times: a tap that hid them made
    the canceller fall back to output() and arrival times (the echo of open speakers
    leaked, and speech over the agent was cut; issue 9)."""
    from elevenconv._fileaudio import WavFileAudioInterface
    from elevenconv.cli import _MicTap

    device = _RoomDevice()
    tap = _MicTap(device, keep_mic=True)  # type: ignore[arg-type]
    seen: list[tuple[bytes, float | None]] = []
    tap.start(lambda pcm: seen.append((pcm, tap.capture_time())))

    def reference(pcm: bytes, played_at: float) -> None:
        pass

    assert tap.set_playback_reference_callback(reference) is True
    assert device.reference is reference
    assert tap.acoustic_echo is True
    assert tap.capture_time() is None
    # /speak adds the voice to what the microphone hears (the room's echo stays in).
    room = (1000).to_bytes(2, "little", signed=True) * 4
    tap.inject((500).to_bytes(2, "little", signed=True) * 2 + (32000).to_bytes(2, "little") * 1)
    device.deliver(room)
    pcm, captured_at = seen[0]
    assert captured_at == 123.25
    assert [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, 8, 2)] == [
        1500,
        1500,
        32767,  # clipped, not wrapped
        1000,
    ]
    assert tap.wait_injected(0) is True
    wav = WavFileAudioInterface.__new__(WavFileAudioInterface)
    assert _MicTap(wav, keep_mic=False).acoustic_echo is False  # no echo path, no canceller


AUDIO_EXTRA = 'pip install "elevenconv[audio]"'


def run_cli_without(
    missing: str, *args: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a Python where importing ``missing`` fails (comma-separated module
    names; "" = nothing blocked)."""
    block = "".join(f"sys.modules[{m!r}] = None; " for m in missing.split(",") if m)
    code = f"import sys; {block}from elevenconv.cli import main; raise SystemExit(main({args!r}))"
    env = _env(PULSE_SERVER="unix:/nonexistent/elevenconv-no-sound")
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{REPO}"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        cwd=REPO,
        env=env,
    )


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("missing", "args", "code", "expected"),
    [
        ("pyaudio", ["devices"], 1, f"listing sound devices needs PyAudio: {AUDIO_EXTRA}"),
        ("pyaudio", ["chat", "--voice", "--say", "bye"], 1, f"voice needs PyAudio: {AUDIO_EXTRA}"),
        ("websockets", ["chat", "--no-voice", "--say", "bye"], 1,
         'simulator (no --agent-id) needs websockets: pip install "elevenconv[testing]"'),
        ("websockets", ["simulate", "--port", "0"], 2, "elevenconv[testing]"),
    ],
)  # fmt: skip
def test_a_missing_dependency_is_one_line_naming_the_fix(
    missing: str, args: list[str], code: int, expected: str
) -> None:
    done = run_cli_without(missing, *args)
    assert done.returncode == code, done.stdout + done.stderr
    assert expected in _one_line(done.stderr)


@pytest.mark.timeout(60)
def test_without_pyaudio_the_chat_falls_back_to_text_and_says_why() -> None:
    done = run_cli_without("pyaudio", "chat", "--say", "bye")
    assert done.returncode == 0, done.stderr
    assert '[text mode: voice needs PyAudio: pip install "elevenconv[audio]"]' in done.stdout
    assert "agent: Goodbye!" in done.stdout


@pytest.mark.timeout(60)
def test_the_offline_chat_needs_no_optional_dependency() -> None:
    """What a plain `pip install elevenconv` has: no numpy, soxr, PyAudio or livekit."""
    done = run_cli_without("numpy,soxr,pyaudio,livekit", "chat", "--say", "hello", "--say", "bye")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "agent: Hello there!" in done.stdout and "agent: Goodbye!" in done.stdout


@pytest.mark.timeout(60)
def test_portaudio_library_missing_at_run_time_names_the_system_package(tmp_path: Path) -> None:
    """PyAudio installed, libportaudio.so.2 not: what `import pyaudio` then raises."""
    fake = tmp_path / "pyaudio"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ImportError('libportaudio.so.2: cannot open shared object file: "
        "No such file or directory', name='pyaudio._portaudio')\n"
    )
    for args in (["devices"], ["chat", "--voice", "--say", "bye"]):
        done = run_cli_without("", *args, pythonpath=tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "apt-get install libportaudio2" in _one_line(done.stderr)
    text = run_cli_without("", "chat", "--say", "bye", pythonpath=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "[text mode: voice needs the PortAudio library: apt-get install libportaudio2" in (
        text.stdout
    )


@pytest.mark.timeout(60)
def test_voice_insists_on_voice() -> None:
    """--voice with no sound system: an error saying why, not a text chat."""
    done = run_cli_without("", "chat", "--voice", "--say", "bye")
    assert done.returncode == 1
    assert "--voice: no " in _one_line(done.stderr)
    assert "agent:" not in done.stdout
    assert run_cli("chat", "--voice", "--no-voice").returncode == 2


@pytest.mark.audio
@pytest.mark.timeout(60)
def test_devices_lists_the_sound_servers_default_device(sound_server: Any) -> None:
    done = run_cli("devices", env=_env(**sound_server.env))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s*\d+\s+\d+\s+\d+\s+\d+\s+(pulse|default)", done.stdout, re.M)
    assert "(default input, default output)" in done.stdout
    assert "ALSA lib" not in done.stderr


def _barge_in_script(tmp_path: Path) -> Path:
    script = tmp_path / "turns.txt"
    script.write_text(
        "/status\n"
        "/send tell me a story about the sea\n"
        "/wait-speaking\n"
        "/speak wait, stop please\n"
        "/expect You said: (spoken\n"
        "bye\n"
        "/wait-end\n"
    )
    return script


def _spoken_seconds(stdout: str) -> float:
    """How much of the /speak utterance the agent heard (its "You said: (spoken N s)")."""
    found = re.search(r"You said: \(spoken (\d+\.\d) s\)", stdout)
    assert found, stdout
    return float(found.group(1))


@pytest.mark.audio
@pytest.mark.timeout(120)
def test_voice_chat_with_barge_in_on_open_speakers(
    sound_server: Any, echo_path: Any, tmp_path: Path
) -> None:
    """Open speakers (a room: the speaker is heard by the microphone, 120 ms, -9 dB) and
    the echo canceller on by default: the agent does not interrupt itself, /speak
    interrupts it and the whole utterance becomes the user's turn."""
    echo_path(120, -9.0)
    done = run_cli(
        "chat", "--sim-tts", "tone", "--script", str(_barge_in_script(tmp_path)),
        env=_env(**sound_server.env), timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\[conversation \w+\] \[.*, echo cancellation on\b", done.stdout)
    assert "[you interrupted the agent]" in done.stdout
    assert "[agent interrupted after]" in done.stdout
    # "wait, stop please" (espeak-ng or the tone voice) is about 1.2 s long; before the
    # tap gave the canceller the device's reference and capture times and mixed the
    # speech into the room's sound, only a fraction of it (or none) got through.
    assert _spoken_seconds(done.stdout) >= 0.8, done.stdout
    assert "[the agent ended the call" in done.stdout


@pytest.mark.audio
@pytest.mark.timeout(120)
def test_voice_chat_with_barge_in_on_headphones(sound_server: Any, tmp_path: Path) -> None:
    """No echo path (headphones: the microphone never hears the speaker), the canceller
    off as the CLI advises there: the agent speaks through PulseAudio, /speak interrupts it.

    With the canceller on and no echo at all, WebRTC's AEC3 takes the unknown echo path
    for a loud one until its own no-echo detector decides (10-15 s of agent speech) and
    suppresses speech over the agent's (tests/test_echo.py pins that).
    """
    done = run_cli(
        "chat", "--sim-tts", "tone", "--script", str(_barge_in_script(tmp_path)),
        "--record", str(tmp_path / "a.wav"), "--no-echo-cancellation",
        env=_env(**sound_server.env), timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[connected: voice + text" in done.stdout
    assert re.search(r"\[conversation \w+\] \[.*, echo cancellation off\b", done.stdout)
    assert "[you interrupted the agent]" in done.stdout
    assert "[agent interrupted after]" in done.stdout
    assert _spoken_seconds(done.stdout) >= 0.8, done.stdout
    assert "[the agent ended the call" in done.stdout


def _tone(freq: float, seconds: float, amplitude: float = 0.5) -> bytes:
    n = int(16000 * seconds)
    peak = int(32767 * amplitude)
    return b"".join(
        int(peak * math.sin(2 * math.pi * freq * i / 16000)).to_bytes(2, "little", signed=True)
        for i in range(n)
    )


def _rms(pcm: bytes) -> float:
    import array

    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 2])
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


@pytest.mark.audio
@pytest.mark.timeout(90)
def test_live_status_line_in_an_interactive_voice_chat(sound_server: Any, tmp_path: Path) -> None:
    """In a terminal the status is the window title, updated live (speaking, listening,
    mute, latency), not lines scrolling through the conversation."""
    with pty_cli("chat", "--sim-tts", "tone", XDG_STATE_HOME=str(tmp_path), **sound_server.env) as (
        proc,
        out,
        master,
    ):
        out.expect(r"\[connected: voice \+ text")
        out.expect(r"agent: Hello!")
        out.expect(r"you> ")

        out.expect_title(r"^elevenconv: connected \| agent speaking \| mic on")
        out.expect_title(r"^elevenconv: connected \| listening \| mic on")
        os.write(master, b"/mute\n")
        out.expect(r"\[mic muted\]")
        out.expect_title(r"\| mic muted")
        os.write(master, b"/quit\n")
        out.expect(r"\[conversation ended\]")
        assert proc.wait(scaled(15)) == 0
        out.drain(1)
    assert "[agent speaking]" not in out.text  # that is for scripts and logs
