"""samples/tk_gui.py under Xvfb against the AgentSimulator: text, errors, voice.

The window runs in this process on a private X server (``x_display``). Waits are on the
window's ``<<ChatUpdated>>`` virtual event (generated after each batch it displays) with
a deadline, through ``wait_variable``, so Tk keeps running its event loop meanwhile.
"""

from __future__ import annotations

import gc
import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from elevenconv import Conversation, ElevenLabsClient
from elevenconv.testing import AgentSimulator
from tests.conftest import scaled
from tests.fixtures_gui import grab_window, keep_screenshot, png_size, speak_into_the_mic, tone

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tk_gui.py"
tk = pytest.importorskip("tkinter")


def _load_sample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tk_gui_sample", SAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tk_gui = _load_sample()


def wait_until(root: Any, predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Run Tk's event loop until ``predicate()`` holds, re-checking after each update."""
    ticks = tk.IntVar(root, 0)
    expired: list[bool] = []

    def bump(_event: object = None) -> None:
        ticks.set(ticks.get() + 1)

    def expire() -> None:
        expired.append(True)
        bump()

    root.bind("<<ChatUpdated>>", bump, add="+")
    timer = root.after(int(scaled(timeout) * 1000), expire)
    try:
        while not predicate():
            if expired:
                raise AssertionError(f"timed out waiting for {what}")
            root.wait_variable(ticks)
    finally:
        root.after_cancel(timer)
        root.unbind("<<ChatUpdated>>")


@pytest.fixture
def sim() -> Iterator[AgentSimulator]:
    with AgentSimulator(tts="tone") as simulator:
        yield simulator


@pytest.fixture
def root(x_display: str) -> Iterator[Any]:
    window = tk.Tk()
    yield window
    try:
        window.destroy()
    except tk.TclError:
        pass  # ChatWindow.close() destroyed it
    # Tk objects live in reference cycles; collect them here, on the main thread. Left to
    # a later collection they may be freed on another thread (a library thread of the
    # next test), where Variable.__del__ raises "main thread is not in main loop".
    del window
    gc.collect()


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


@pytest.mark.timeout(60)
def test_text_call_connects_off_the_gui_thread_and_disables_input_after_the_end(
    sim: AgentSimulator, root: Any, tmp_path: Path
) -> None:
    window = tk_gui.ChatWindow(root, factory(sim), voice=False)
    assert str(window.entry.cget("state")) == "disabled"
    assert window.indicator.cget("text") == "● not in a call"

    window.call_button.invoke()
    # start_session() runs on its own thread: the click returned at once, "connecting".
    assert window.connect_thread is not None
    assert window.connect_thread.name == "tk-gui-connect"
    assert window.state == "connecting"
    assert window.call_button.cget("text") == "End call"
    wait_until(root, lambda: "agent: Hello!" in window.transcript(), "the greeting")
    assert window.state == "listening"
    assert str(window.entry.cget("state")) == "normal"
    assert str(window.mute_box.cget("state")) == "disabled"  # text only: no microphone

    window.entry.insert(0, "what time is it?")
    window.send_button.invoke()
    wait_until(root, lambda: "agent: The time is 12:34." in window.transcript(), "the answer")
    text = window.transcript()
    assert text.index("you: what time is it?") < text.index("tool: get_current_time")
    assert text.index("tool: get_current_time") < text.index("agent: The time is 12:34.")

    root.update()
    shot = grab_window(int(root.wm_frame(), 16), tmp_path / "tk_gui.png")
    width, height = png_size(shot)
    assert width >= 400 and height >= 250
    keep_screenshot(shot, "tk_gui.png")

    window.entry.insert(0, "bye")
    window.send_button.invoke()
    wait_until(root, lambda: window.state == "ended", "the end of the call")
    assert "agent: Goodbye!" in window.transcript()
    assert str(window.entry.cget("state")) == "disabled"
    assert str(window.send_button.cget("state")) == "disabled"
    assert window.call_button.cget("text") == "Start call"
    assert window.indicator.cget("text") == "● call ended"
    window.close()
    assert window.connect_thread is not None and not window.connect_thread.is_alive()


@pytest.mark.timeout(60)
def test_a_bad_agent_id_shows_a_dialog_not_a_traceback(sim: AgentSimulator, root: Any) -> None:
    window = tk_gui.ChatWindow(root, factory(sim, "no-such-agent"), voice=False)
    window.call_button.invoke()
    wait_until(root, lambda: window.dialog is not None, "the error dialog")
    dialog = window.dialog
    assert "404" in dialog.message
    assert dialog.top.winfo_ismapped()
    assert dialog.top.title() == "Could not connect"
    assert window.state == "ended"
    assert str(window.entry.cget("state")) == "disabled"
    assert window.call_button.cget("text") == "Start call"  # try again
    dialog.ok.invoke()
    assert not dialog.top.winfo_exists()
    window.close()


@pytest.mark.timeout(60)
def test_end_call_while_connecting_cancels_without_a_dialog(sim: AgentSimulator, root: Any) -> None:
    window = tk_gui.ChatWindow(root, factory(sim), voice=False)
    window.call_button.invoke()  # Start call
    window.call_button.invoke()  # End call, before or just after the agent is ready
    wait_until(root, lambda: window.state == "ended", "the end of the call")
    assert window.dialog is None
    assert window.connect_thread is not None
    window.connect_thread.join(scaled(5))
    assert not window.connect_thread.is_alive()
    window.close()


@pytest.mark.audio
@pytest.mark.timeout(120)
def test_voice_call_indicator_mute_and_volume_on_the_sound_server(
    sound_server: Any, sim: AgentSimulator, root: Any, tmp_path: Path
) -> None:
    window = tk_gui.ChatWindow(root, factory(sim), voice=True)
    states: list[str] = []
    set_state = window.set_state
    window.set_state = lambda state: (states.append(state), set_state(state))
    window.call_button.invoke()
    wait_until(root, lambda: "connected: voice + text" in window.transcript(), "voice")
    conv = window.conv
    assert conv is not None and conv.audio_interface is not None
    assert str(window.mute_box.cget("state")) == "normal"
    # The greeting is played through the speaker: the indicator follows it.
    wait_until(root, lambda: "speaking" in states and window.state == "listening", "greeting")

    volumes: list[float] = []
    set_volume = conv.set_volume
    conv.set_volume = lambda v: (volumes.append(v), set_volume(v))  # type: ignore[method-assign]
    window.volume_scale.set(40)
    root.update()
    assert volumes and volumes[-1] == pytest.approx(0.4)

    # Muted, 2 s of "speech" reaches nobody; unmuted, 1 s is heard (and transcribed).
    window.mute_box.invoke()
    assert window.muted.get()
    speak_into_the_mic(sound_server, tone(2.0) + bytes(48000))  # + 1.5 s: capture lag
    window.mute_box.invoke()
    assert not window.muted.get()
    speak_into_the_mic(sound_server, tone(1.0) + bytes(16000))
    wait_until(root, lambda: "you (voice):" in window.transcript(), "the user's speech")
    heard = re.findall(r"you \(voice\): \(spoken (\d+\.\d) s\)", window.transcript())
    assert len(heard) == 1 and 0.6 <= float(heard[0]) <= 1.5, window.transcript()
    # Typing works in a voice call too (the answer is spoken and shown).
    window.entry.insert(0, "what time is it?")
    window.send_button.invoke()
    wait_until(root, lambda: "agent: The time is" in window.transcript(), "the answer")
    root.update()
    keep_screenshot(grab_window(int(root.wm_frame(), 16), tmp_path / "voice.png"), "tk_gui.png")
    window.call_button.invoke()  # End call
    wait_until(root, lambda: window.state == "ended", "the end of the call")
    window.close()
