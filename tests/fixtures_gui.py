"""GUI test fixtures: a private X server (Xvfb) and screenshots of X windows.

``x_display`` starts ``Xvfb -displayfd`` (it picks a free display number and writes it to
a pipe, so there is nothing to guess or wait for but that line) and sets ``DISPLAY`` for the
session. ``grab_window(window_id, path)`` saves a PNG of an X window through Qt (PySide6,
from the dev extra) in a subprocess, so it works for Tk windows too.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, scaled

REPO = Path(__file__).resolve().parent.parent
#: Set to 1 to refresh the screenshots in docs/img/ from the GUI tests.
UPDATE_SCREENSHOTS = os.environ.get("ELEVENCONV_UPDATE_SCREENSHOTS") == "1"
SCREEN = "1280x800x24"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason + " (GUI tests are never skipped in CI)", pytrace=False)
    pytest.skip(reason + " (apt-get install xvfb; bash scripts/test installs it)")


@pytest.fixture(scope="session")
def x_display() -> Iterator[str]:
    """A private Xvfb server for this test session; ``DISPLAY`` points at it."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        _unavailable("Xvfb not found")
        raise AssertionError("unreachable")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", SCREEN, "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    saved = os.environ.get("DISPLAY")
    try:
        number = b""
        deadline = time.monotonic() + scaled(20)
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(0.0, left))
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                _unavailable(f"Xvfb did not start (exit status {proc.poll()})")
            number += chunk
        display = f":{int(number)}"
        os.environ["DISPLAY"] = display
        yield display
    finally:
        os.close(read_fd)
        if saved is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = saved
        proc.terminate()
        try:
            proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_GRAB = """
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication(["grab", "-platform", "xcb"])
image = app.primaryScreen().grabWindow(int(sys.argv[1])).toImage()
if image.isNull() or not image.save(sys.argv[2], "PNG"):
    sys.exit("could not grab window " + sys.argv[1])
"""


def grab_window(window_id: int, path: Path) -> Path:
    """Save a PNG of the X window ``window_id`` (on ``$DISPLAY``) to ``path``."""
    done = subprocess.run(
        [sys.executable, "-c", _GRAB, str(window_id), str(path)],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert done.returncode == 0, done.stderr
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def keep_screenshot(shot: Path, name: str) -> None:
    """Copy ``shot`` to docs/img/``name`` when ELEVENCONV_UPDATE_SCREENSHOTS=1."""
    if UPDATE_SCREENSHOTS:
        target = REPO / "docs" / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


# -- voice in the GUI tests (the PulseAudio test server) -----------------------------


def tone(seconds: float, freq: float = 440.0) -> bytes:
    """A sine tone, PCM16 mono 16 kHz: "speech" for the simulator's voice detector."""
    peak = int(32767 * 0.5)
    return b"".join(
        int(peak * math.sin(2 * math.pi * freq * i / 16000)).to_bytes(2, "little", signed=True)
        for i in range(int(16000 * seconds))
    )


def speak_into_the_mic(sound_server: Any, pcm: bytes) -> None:
    """Play PCM16 mono 16 kHz into the test server's microphone bus (returns when played)."""
    subprocess.run(
        ["pacat", "--playback", f"--device={sound_server.mic_sink}", "--format=s16le",
         "--rate=16000", "--channels=1", "--latency-msec=20"],
        input=pcm, env=sound_server.env, check=True, timeout=scaled(30),
    )  # fmt: skip
