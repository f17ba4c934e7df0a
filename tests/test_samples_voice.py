"""samples/voice_chat.py: ``--help`` works with no sound device; a voice chat on the test
sound server against the simulator."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import scaled
from tests.fixtures_gui import speak_into_the_mic, tone

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "voice_chat.py"


@pytest.mark.timeout(60)
def test_voice_chat_help_runs_without_a_sound_device() -> None:
    # No sound server: PULSE_SERVER points nowhere, so any device access would fail.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_"))}
    env["PULSE_SERVER"] = "unix:/nonexistent/elevenconv-no-sound"
    proc = subprocess.run(
        [sys.executable, str(SAMPLE), "--help"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=env,
        cwd=SAMPLE.parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--agent-id",
        "--base-url",
        "--echo-guard",
        "--no-echo-cancellation",
        "--simulate",
    ):
        assert option in proc.stdout
    assert "pyaudio" not in proc.stderr.lower()


@pytest.mark.timeout(60)
def test_voice_chat_without_an_agent_id_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ELEVENLABS_AGENT_ID"}
    proc = subprocess.run(
        [sys.executable, str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=env,
    )
    assert proc.returncode == 2  # argparse usage error, before any device is touched
    assert "ELEVENLABS_AGENT_ID" in proc.stderr


@pytest.mark.audio
@pytest.mark.timeout(90)
def test_voice_chat_against_the_simulator_on_the_sound_server(sound_server: Any) -> None:
    """The whole sample by voice: the agent's greeting is played, speech in the microphone
    is heard and answered, Ctrl+C ends the call cleanly."""
    env = {k: v for k, v in os.environ.items() if k != "ELEVENLABS_API_KEY"}
    env.update(sound_server.env, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(SAMPLE), "--simulate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=SAMPLE.parent.parent,
    )
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    try:
        # The greeting may be printed before or after start_session() returned.
        lines.expect(r"^Connected \(echo cancellation (on|off)\)", anywhere=True)
        lines.expect(r"^Agent: Hello!", anywhere=True)
        lines.expect(r"^  \[listening\]")  # the greeting has been played
        speak_into_the_mic(sound_server, tone(1.0) + bytes(16000))
        lines.expect(r"^You: +\(spoken \d\.\d s\)")
        lines.expect(r"^Agent: You said")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(scaled(15)) == 0
        lines.expect(r"^Conversation conv_\w+ ended")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


class LineReader:
    """A child's output lines on a thread of its own; ``expect`` waits with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 20, *, anywhere: bool = False) -> str:
        """The next line matching ``pattern`` (``anywhere``: or one already read)."""
        if anywhere:
            for line in self.seen:
                if re.search(pattern, line):
                    return line
        deadline = time.monotonic() + scaled(timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if re.search(pattern, line):
                return line
