"""samples/qt_gui.py under Xvfb (pytest-qt) against the AgentSimulator: text, errors, voice.

Waits are on the window's ``updated`` signal (emitted after each item it shows) with a
deadline, through ``qtbot.waitSignal``, so Qt's event loop runs meanwhile.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from elevenconv import Conversation, ElevenLabsClient
from elevenconv.testing import AgentSimulator
from tests.conftest import scaled
from tests.fixtures_gui import keep_screenshot, png_size, speak_into_the_mic, tone

pytest.importorskip("PySide6.QtWidgets")
pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "qt_gui.py"


def _load_sample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qt_gui_sample", SAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


qt_gui = _load_sample()


def wait_until(qtbot: Any, window: Any, predicate: Callable[[], bool], what: str) -> None:
    """Run Qt's event loop until ``predicate()`` holds, re-checking after each update."""
    deadline = time.monotonic() + scaled(15)
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}:\n{window.transcript()}")
        # Queued items are only delivered inside this wait: nothing is missed in between.
        with qtbot.waitSignal(window.updated, timeout=int(left * 1000), raising=False):
            pass


@pytest.fixture
def sim() -> Iterator[AgentSimulator]:
    with AgentSimulator(tts="tone") as simulator:
        yield simulator


def factory(sim: AgentSimulator, agent_id: str = "sim-agent") -> Callable[[Any], Conversation]:
    def new_conversation(audio_interface: Any) -> Conversation:
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url),
            agent_id,
            requires_auth=False,
            audio_interface=audio_interface,
            text_only=audio_interface is None,
        )
        conv.client_tools.register("get_current_time", lambda _p: "12:34")
        return conv

    return new_conversation


@pytest.fixture
def window_for(x_display: str, qtbot: Any) -> Iterator[Callable[..., Any]]:
    windows: list[Any] = []

    def make(new_conversation: Callable[[Any], Conversation], *, voice: bool) -> Any:
        window = qt_gui.ChatWindow(new_conversation, voice=voice)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()  # ends the call, joins the connect thread


@pytest.mark.timeout(60)
def test_text_call_with_queued_signals_and_input_disabled_after_the_end(
    sim: AgentSimulator, window_for: Callable[..., Any], qtbot: Any, tmp_path: Path
) -> None:
    window = window_for(factory(sim), voice=False)
    shown_on: set[str] = set()
    window.updated.connect(lambda: shown_on.add(threading.current_thread().name))
    assert not window.entry.isEnabled()
    assert window.indicator.text() == "● not in a call"

    qtbot.mouseClick(window.call_button, Qt.MouseButton.LeftButton)
    assert window.connect_thread is not None
    assert window.connect_thread.name == "qt-gui-connect"
    assert window.state == "connecting"
    assert window.call_button.text() == "End call"
    wait_until(qtbot, window, lambda: "agent: Hello!" in window.transcript(), "the greeting")
    assert window.state == "listening"
    assert window.entry.isEnabled()
    assert not window.mute_box.isEnabled()  # text only: no microphone

    qtbot.keyClicks(window.entry, "what time is it?")
    qtbot.keyClick(window.entry, Qt.Key.Key_Return)
    wait_until(qtbot, window, lambda: "agent: The time is 12:34." in window.transcript(), "answer")
    text = window.transcript()
    assert text.index("you: what time is it?") < text.index("tool: get_current_time")
    assert text.index("tool: get_current_time") < text.index("agent: The time is 12:34.")
    # Every item was shown on the GUI thread, though emitted on the events thread.
    assert shown_on == {threading.main_thread().name}

    shot = tmp_path / "qt_gui.png"
    assert window.grab().save(str(shot), "PNG")
    width, height = png_size(shot)
    assert width >= 400 and height >= 250
    keep_screenshot(shot, "qt_gui.png")

    qtbot.keyClicks(window.entry, "bye")
    qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, window, lambda: window.state == "ended", "the end of the call")
    assert "agent: Goodbye!" in window.transcript()
    assert not window.entry.isEnabled()
    assert not window.send_button.isEnabled()
    assert window.call_button.text() == "Start call"
    assert window.indicator.text() == "● call ended"


@pytest.mark.timeout(60)
def test_a_bad_agent_id_shows_a_dialog_not_a_traceback(
    sim: AgentSimulator, window_for: Callable[..., Any], qtbot: Any
) -> None:
    window = window_for(factory(sim, "no-such-agent"), voice=False)
    qtbot.mouseClick(window.call_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, window, lambda: window.dialog is not None, "the error dialog")
    dialog = window.dialog
    qtbot.waitExposed(dialog)
    assert dialog.isVisible()
    assert dialog.windowTitle() == "Could not connect"
    assert "404" in dialog.text()
    assert window.state == "ended"
    assert not window.entry.isEnabled()
    assert window.call_button.text() == "Start call"
    qtbot.mouseClick(dialog.button(QMessageBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()


@pytest.mark.timeout(60)
def test_end_call_while_connecting_cancels_without_a_dialog(
    sim: AgentSimulator, window_for: Callable[..., Any], qtbot: Any
) -> None:
    window = window_for(factory(sim), voice=False)
    qtbot.mouseClick(window.call_button, Qt.MouseButton.LeftButton)  # Start call
    qtbot.mouseClick(window.call_button, Qt.MouseButton.LeftButton)  # End call
    wait_until(qtbot, window, lambda: window.state == "ended", "the end of the call")
    assert window.dialog is None
    window.connect_thread.join(scaled(5))
    assert not window.connect_thread.is_alive()


@pytest.mark.audio
@pytest.mark.timeout(120)
def test_voice_call_indicator_mute_and_volume_on_the_sound_server(
    sound_server: Any,
    sim: AgentSimulator,
    window_for: Callable[..., Any],
    qtbot: Any,
    tmp_path: Path,
) -> None:
    window = window_for(factory(sim), voice=True)
    states: list[str] = []
    window.indicator.setText = lambda text, _set=window.indicator.setText: (
        states.append(text),
        _set(text),
    )
    qtbot.mouseClick(window.call_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, window, lambda: "connected: voice + text" in window.transcript(), "voice")
    conv = window.conv
    assert conv is not None and conv.audio_interface is not None
    assert window.mute_box.isEnabled()
    wait_until(
        qtbot,
        window,
        lambda: "● agent speaking" in states and window.state == "listening",
        "the greeting, spoken",
    )

    volumes: list[float] = []
    set_volume = conv.set_volume
    conv.set_volume = lambda v: (volumes.append(v), set_volume(v))
    window.volume.setValue(40)
    assert volumes[-1] == pytest.approx(0.4)

    # Muted, 2 s of "speech" reaches nobody; unmuted, 1 s is heard (and transcribed).
    qtbot.mouseClick(window.mute_box, Qt.MouseButton.LeftButton)
    assert window.mute_box.isChecked()
    speak_into_the_mic(sound_server, tone(2.0) + bytes(48000))  # + 1.5 s: capture lag
    qtbot.mouseClick(window.mute_box, Qt.MouseButton.LeftButton)
    assert not window.mute_box.isChecked()
    speak_into_the_mic(sound_server, tone(1.0) + bytes(16000))
    wait_until(qtbot, window, lambda: "you (voice):" in window.transcript(), "the user's speech")
    heard = re.findall(r"you \(voice\): \(spoken (\d+\.\d) s\)", window.transcript())
    assert len(heard) == 1 and 0.6 <= float(heard[0]) <= 1.5, window.transcript()
    # Typing works in a voice call too (the answer is spoken and shown).
    qtbot.keyClicks(window.entry, "what time is it?")
    qtbot.keyClick(window.entry, Qt.Key.Key_Return)
    wait_until(qtbot, window, lambda: "agent: The time is" in window.transcript(), "answer")
    shot = tmp_path / "voice.png"
    assert window.grab().save(str(shot), "PNG")
    keep_screenshot(shot, "qt_gui.png")
    qtbot.mouseClick(window.call_button, Qt.MouseButton.LeftButton)  # End call
    wait_until(qtbot, window, lambda: window.state == "ended", "the end of the call")
