"""A Qt (PySide6) voice and text chat window. No asyncio.

    pip install PySide6-Essentials                   # or PySide6
    python samples/qt_gui.py --simulate              # offline, the built-in simulator
    python samples/qt_gui.py --agent-id ID           # a public agent
    ELEVENLABS_API_KEY=... python samples/qt_gui.py --agent-id ID --private
    python samples/qt_gui.py --simulate --no-voice   # text only

The same window as ``samples/tk_gui.py``: "Start call" (voice when PyAudio and a sound
device are there), "Mute mic", a volume slider, a speaking/listening indicator, a text
line; connection errors in a dialog; the controls are disabled after the call ended.

Threading: Qt widgets may only be touched from the GUI thread.

* ``start_session()`` blocks until the agent is ready, so it runs on a thread of its own
  (``qt-gui-connect``); "End call" meanwhile cancels it (``end_session()`` makes
  ``start_session()`` raise ``SessionCancelledError``).
* The Conversation's handlers run on its ``elevenconv-events`` thread: they only emit the
  :class:`CallBridge`'s ``item`` signal. The bridge lives in the GUI thread and its signal
  is connected with ``Qt.QueuedConnection``, so Qt copies each emission into the GUI
  thread's event queue and the slot runs there: no polling, no lock.
* The Conversation's methods (``send_user_message``, ``set_mic_muted``, ``set_volume``,
  ``end_session``) may be called from any thread: the widgets call them directly.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

try:
    from PySide6.QtCore import QObject, Qt, Signal, Slot
    from PySide6.QtWidgets import (
        QApplication,
        QCheckBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QMessageBox,
        QPlainTextEdit,
        QPushButton,
        QSlider,
        QVBoxLayout,
        QWidget,
    )
except ImportError as exc:  # one line saying what to install, not a traceback
    sys.exit(f"samples/qt_gui.py needs PySide6 ({exc}): pip install PySide6-Essentials")

from elevenconv import Conversation, ElevenConvError, ElevenLabsClient
from elevenconv.errors import SessionCancelledError

INDICATOR = {  # state -> (text, colour)
    "idle": ("● not in a call", "#737373"),
    "connecting": ("● connecting…", "#d97706"),
    "listening": ("● listening", "#15803d"),
    "speaking": ("● agent speaking", "#1d4ed8"),
    "ended": ("● call ended", "#737373"),
}


class CallBridge(QObject):
    """Conversation events (any thread) -> the ``item(kind, value)`` signal (GUI thread)."""

    item = Signal(str, object)

    def attach(self, conv: Conversation) -> None:
        emit = self.item.emit  # thread-safe; delivery is queued to the GUI thread
        conv.on("conversation_started", lambda conversation_id: emit("connected", conv))
        conv.on("agent_response", lambda text: emit("agent", text))
        conv.on("user_transcript", lambda text: emit("you (voice)", text))
        conv.on("client_tool_call", lambda name, _params: emit("tool", name))
        conv.on("mode_change", lambda mode: emit("mode", mode))
        conv.on("error", lambda exc: emit("error", str(exc)))
        conv.on("session_ended", lambda _id, _code, reason: emit("ended", (conv, reason)))

    def connect_call(self, conv: Conversation) -> threading.Thread:
        """Start the session on a thread of its own; a failure becomes a ``failed`` item."""

        def run() -> None:
            try:
                conv.start_session()
            except SessionCancelledError:
                self.item.emit("cancelled", conv)
            except ElevenConvError as exc:
                self.item.emit("failed", (conv, exc))

        thread = threading.Thread(target=run, name="qt-gui-connect", daemon=True)
        thread.start()
        return thread


def open_audio(voice: bool) -> tuple[Any, str]:
    """The default microphone and speaker, or ``(None, why)`` for a text-only call."""
    if not voice:
        return None, ""
    try:
        from elevenconv import create_default_audio_interface

        return create_default_audio_interface(), ""
    except ImportError as exc:  # PyAudio or PortAudio missing: the message says which
        return None, str(exc)


class ChatWindow(QWidget):
    """The window. Every method runs on the GUI thread.

    ``new_conversation(audio_interface)`` makes the Conversation for each call.
    ``updated`` is emitted after each item is shown (for tests and hooks).
    """

    updated = Signal()

    def __init__(
        self, new_conversation: Callable[[Any], Conversation], *, voice: bool = True
    ) -> None:
        super().__init__()
        self.new_conversation = new_conversation
        self.voice = voice
        self.conv: Conversation | None = None
        self.connect_thread: threading.Thread | None = None
        self.dialog: QMessageBox | None = None
        self.state = "idle"
        self.bridge = CallBridge(self)
        self.bridge.item.connect(self.show_item, Qt.ConnectionType.QueuedConnection)
        self.setWindowTitle("elevenconv chat")
        self.resize(620, 420)

        self.call_button = QPushButton("Start call")
        self.call_button.clicked.connect(self.toggle_call)
        self.mute_box = QCheckBox("Mute mic")
        self.mute_box.toggled.connect(self.on_mute)
        self.volume = QSlider(Qt.Orientation.Horizontal)
        self.volume.setRange(0, 100)
        self.volume.setValue(100)
        self.volume.setFixedWidth(120)
        self.volume.valueChanged.connect(self.on_volume)
        self.indicator = QLabel()
        bar = QHBoxLayout()
        bar.addWidget(self.call_button)
        bar.addSpacing(12)
        bar.addWidget(self.mute_box)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Volume"))
        bar.addWidget(self.volume)
        bar.addStretch(1)
        bar.addWidget(self.indicator)

        self.text = QPlainTextEdit(readOnly=True)
        self.entry = QLineEdit(placeholderText="Type a message")
        self.entry.returnPressed.connect(self.on_enter)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(self.on_enter)
        line = QHBoxLayout()
        line.addWidget(self.entry)
        line.addWidget(self.send_button)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.text)
        layout.addLayout(line)
        self.set_state("idle")

    # -- display -----------------------------------------------------------------------

    def append(self, who: str, text: str) -> None:
        self.text.appendPlainText(f"{who}: {text}")

    def transcript(self) -> str:
        return self.text.toPlainText()

    def set_state(self, state: str) -> None:
        self.state = state
        label, colour = INDICATOR[state]
        self.indicator.setText(label)
        self.indicator.setStyleSheet(f"color: {colour}")
        in_call = state in ("listening", "speaking")
        self.entry.setEnabled(in_call)
        self.send_button.setEnabled(in_call)
        voice = in_call and self.conv is not None and self.conv.audio_interface is not None
        self.mute_box.setEnabled(voice)
        active = state in ("connecting", "listening", "speaking")
        self.call_button.setText("End call" if active else "Start call")
        if in_call:
            self.entry.setFocus()

    # -- user actions ------------------------------------------------------------------

    @Slot()
    def toggle_call(self) -> None:
        if self.state in ("connecting", "listening", "speaking"):
            self.end_call()
        else:
            self.start_call()

    def start_call(self) -> None:
        audio, why = open_audio(self.voice)
        if why:
            self.append("note", f"text only: {why}")
        conv = self.new_conversation(audio)
        self.conv = conv
        self.bridge.attach(conv)
        if self.mute_box.isChecked():
            conv.set_mic_muted(True)
        conv.set_volume(self.volume.value() / 100)
        self.set_state("connecting")
        self.connect_thread = self.bridge.connect_call(conv)

    def end_call(self) -> None:
        if self.conv is not None:
            self.conv.end_session()  # returns at once; session_ended follows

    @Slot()
    def on_enter(self) -> None:
        text = self.entry.text().strip()
        self.entry.clear()
        if text and self.conv is not None and self.conv.is_session_active():
            self.append("you", text)
            self.conv.send_user_message(text)

    @Slot(bool)
    def on_mute(self, muted: bool) -> None:
        if self.conv is not None:
            self.conv.set_mic_muted(muted)

    @Slot(int)
    def on_volume(self, value: int) -> None:
        if self.conv is not None:
            self.conv.set_volume(value / 100)

    # -- items from the bridge (queued: always on the GUI thread) ------------------------

    @Slot(str, object)
    def show_item(self, kind: str, value: Any) -> None:
        if kind in ("connected", "failed", "cancelled", "ended"):
            conv = value[0] if isinstance(value, tuple) else value
            if conv is not self.conv:
                return  # a previous call's last words
        if kind == "connected":
            mode = "voice + text" if value.audio_interface is not None else "text"
            self.append("connected", f"{mode}, conversation {value.get_conversation_id()}")
            self.set_state("listening")
        elif kind == "mode":
            if self.state in ("listening", "speaking"):
                self.set_state("speaking" if value == "speaking" else "listening")
        elif kind == "failed":
            self.set_state("ended")
            self.append("error", str(value[1]))
            # open(), not exec(): window-modal, and the event loop (transcript) keeps going.
            self.dialog = QMessageBox(
                QMessageBox.Icon.Critical, "Could not connect", str(value[1]), parent=self
            )
            self.dialog.open()
        elif kind == "cancelled":
            self.set_state("ended")
        elif kind == "ended":
            self.set_state("ended")
            self.append("ended", value[1] or "conversation over")
        else:
            self.append(kind, str(value))
        self.updated.emit()

    def closeEvent(self, event: Any) -> None:
        if self.conv is not None:
            self.conv.end_session()
        if self.connect_thread is not None:
            self.connect_thread.join(5)
        super().closeEvent(event)


@contextlib.contextmanager
def agent_service(args: argparse.Namespace) -> Iterator[tuple[ElevenLabsClient, str, bool]]:
    """Yield (client, agent id, requires_auth): the real service or the simulator."""
    if args.simulate:
        from elevenconv.testing import AgentSimulator

        with AgentSimulator() as sim:
            yield ElevenLabsClient(base_url=sim.base_url), args.agent_id or "sim-agent", False
        return
    yield ElevenLabsClient(), args.agent_id, args.private


def main() -> int:
    parser = argparse.ArgumentParser(description="Qt (PySide6) voice and text chat window.")
    parser.add_argument("--agent-id", help="the agent (with --simulate: sim-agent)")
    parser.add_argument("--private", action="store_true", help="signed URL (ELEVENLABS_API_KEY)")
    parser.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    parser.add_argument("--no-voice", action="store_true", help="text only")
    args = parser.parse_args()
    if not (args.agent_id or args.simulate):
        parser.error("give --agent-id or --simulate")

    app = QApplication(sys.argv[:1])
    with agent_service(args) as (client, agent_id, requires_auth):

        def new_conversation(audio_interface: Any) -> Conversation:
            conv = Conversation(
                client, agent_id, requires_auth=requires_auth, audio_interface=audio_interface
            )
            conv.client_tools.register("get_current_time", lambda _p: time.strftime("%H:%M"))
            return conv

        window = ChatWindow(new_conversation, voice=not args.no_voice)
        window.show()
        return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
