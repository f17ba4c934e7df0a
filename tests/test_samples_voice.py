"""samples/voice_chat.py: it imports and ``--help`` works with no sound device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import scaled

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
    for option in ("--agent-id", "--base-url", "--echo-guard", "--simulate"):
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
