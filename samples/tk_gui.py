"""A Tkinter voice and text chat window. No asyncio.

    python samples/tk_gui.py --simulate              # offline, the built-in simulator
    python samples/tk_gui.py --agent-id ID           # a public agent
    ELEVENLABS_API_KEY=... python samples/tk_gui.py --agent-id ID --private
    python samples/tk_gui.py --simulate --no-voice   # text only

"Start call" connects (voice when PyAudio and a sound device are there, else text);
"Mute mic", the volume slider and a speaking/listening indicator control and show the
voice; the entry line sends text. Connection errors (a bad agent id, no network) appear
in a dialog; after the call ends the controls are disabled until the next "Start call".

Threading: Tk may only be touched from the thread running ``mainloop()``.

* ``start_session()`` blocks until the agent is ready, so it runs on a thread of its own
  (``tk-gui-connect``); the window stays responsive, and "End call" during the connection
  cancels it (``end_session()`` makes ``start_session()`` raise ``SessionCancelledError``).
* The Conversation's handlers run on its ``elevenconv-events`` thread, so they never touch
  a widget: :class:`CallBridge` puts ``(kind, value)`` items on a ``queue.Queue``, and the
  Tk thread drains it from an ``after()`` callback every 50 ms (Tk's own way to hear from
  other threads) and updates the widgets.
* The Conversation's methods (``send_user_message``, ``set_mic_muted``, ``set_volume``,
  ``end_session``) may be called from any thread: the widgets call them directly.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from elevenconv import Conversation, ElevenConvError, ElevenLabsClient
from elevenconv.errors import SessionCancelledError

POLL_MS = 50
INDICATOR = {  # state -> (text, colour)
    "idle": ("● not in a call", "grey45"),
    "connecting": ("● connecting…", "dark orange"),
    "listening": ("● listening", "forest green"),
    "speaking": ("● agent speaking", "royal blue"),
    "ended": ("● call ended", "grey45"),
}


class CallBridge:
    """The GUI-independent part: Conversation events in, ``(kind, value)`` items out.

    ``attach`` registers handlers that only enqueue (events thread); ``drain`` is called
    on the GUI thread and hands each item to ``show``. Testable without a display.
    """

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def attach(self, conv: Conversation) -> None:
        put = self.items.put
        conv.on("conversation_started", lambda conversation_id: put(("connected", conv)))
        conv.on("agent_response", lambda text: put(("agent", text)))
        conv.on("user_transcript", lambda text: put(("you (voice)", text)))
        conv.on("client_tool_call", lambda name, _params: put(("tool", name)))
        conv.on("mode_change", lambda mode: put(("mode", mode)))
        conv.on("error", lambda exc: put(("error", str(exc))))
        conv.on("session_ended", lambda _id, _code, reason: put(("ended", (conv, reason))))

    def connect(self, conv: Conversation) -> threading.Thread:
        """Start the session on a thread of its own; a failure becomes a ``failed`` item."""

        def run() -> None:
            try:
                conv.start_session()
            except SessionCancelledError:
                self.items.put(("cancelled", conv))
            except ElevenConvError as exc:
                self.items.put(("failed", (conv, exc)))

        thread = threading.Thread(target=run, name="tk-gui-connect", daemon=True)
        thread.start()
        return thread

    def drain(self, show: Callable[[str, Any], None]) -> int:
        """Hand every queued item to ``show`` (GUI thread); return how many."""
        n = 0
        while True:
            try:
                kind, value = self.items.get_nowait()
            except queue.Empty:
                return n
            show(kind, value)
            n += 1


def open_audio(voice: bool) -> tuple[Any, str]:
    """The default microphone and speaker, or ``(None, why)`` for a text-only call."""
    if not voice:
        return None, ""
    try:
        from elevenconv import create_default_audio_interface

        return create_default_audio_interface(), ""
    except ImportError as exc:  # PyAudio or PortAudio missing: the message says which
        return None, str(exc)


class ErrorDialog:
    """A small modal dialog with the error and an OK button (``tkinter.messagebox`` would
    block the window's event loop, and with it the transcript, until it is closed)."""

    def __init__(self, root: Any, title: str, message: str) -> None:
        import tkinter as tk
        from tkinter import ttk

        self.message = message
        self.top = tk.Toplevel(root)
        self.top.title(title)
        self.top.transient(root)
        ttk.Label(self.top, text=message, wraplength=380, padding=12).pack()
        self.ok = ttk.Button(self.top, text="OK", command=self.close)
        self.ok.pack(pady=(0, 10))
        self.top.bind("<Return>", lambda _e: self.close())
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.top.wait_visibility()
        self.top.grab_set()
        self.ok.focus_set()

    def close(self) -> None:
        self.top.grab_release()
        self.top.destroy()


class ChatWindow:
    """The Tk widgets. Every method runs on the Tk thread.

    ``new_conversation(audio_interface)`` makes the Conversation for each call (so the
    window does not care which agent, simulator or key it talks to).
    """

    def __init__(
        self,
        root: Any,
        new_conversation: Callable[[Any], Conversation],
        *,
        voice: bool = True,
    ) -> None:
        import tkinter as tk
        from tkinter import ttk

        self.root = root
        self.new_conversation = new_conversation
        self.voice = voice
        self.bridge = CallBridge()
        self.conv: Conversation | None = None
        self.connect_thread: threading.Thread | None = None
        self.dialog: ErrorDialog | None = None
        self.closed = False
        self.state = "idle"
        root.title("elevenconv chat")
        if "clam" in ttk.Style(root).theme_names():
            ttk.Style(root).theme_use("clam")

        bar = ttk.Frame(root, padding=(8, 8, 8, 4))
        bar.pack(fill="x")
        self.call_button = ttk.Button(bar, text="Start call", width=10, command=self.toggle_call)
        self.call_button.pack(side="left")
        self.muted = tk.BooleanVar(value=False)
        self.mute_box = ttk.Checkbutton(
            bar, text="Mute mic", variable=self.muted, command=self.on_mute, state="disabled"
        )
        self.mute_box.pack(side="left", padx=(12, 0))
        ttk.Label(bar, text="Volume").pack(side="left", padx=(12, 4))
        self.volume = tk.DoubleVar(value=100.0)
        self.volume_scale = ttk.Scale(
            bar, from_=0, to=100, variable=self.volume, command=self.on_volume, length=120
        )
        self.volume_scale.pack(side="left")
        self.indicator = tk.Label(bar, anchor="e")
        self.indicator.pack(side="right")

        self.text = tk.Text(root, width=72, height=18, state="disabled", wrap="word")
        self.text.pack(fill="both", expand=True, padx=8)
        line = ttk.Frame(root, padding=8)
        line.pack(fill="x")
        self.entry = ttk.Entry(line, state="disabled")
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", self.on_enter)
        self.send_button = ttk.Button(line, text="Send", command=self.on_enter, state="disabled")
        self.send_button.pack(side="left", padx=(8, 0))

        root.protocol("WM_DELETE_WINDOW", self.close)
        self.set_state("idle")
        root.after(POLL_MS, self.poll)

    # -- display -----------------------------------------------------------------------

    def append(self, who: str, text: str) -> None:
        self.text.configure(state="normal")
        self.text.insert("end", f"{who}: {text}\n")
        self.text.configure(state="disabled")
        self.text.see("end")

    def transcript(self) -> str:
        return str(self.text.get("1.0", "end"))

    def set_state(self, state: str) -> None:
        self.state = state
        label, colour = INDICATOR[state]
        self.indicator.configure(text=label, foreground=colour)
        in_call = state in ("listening", "speaking")
        entry_state = "normal" if in_call else "disabled"
        self.entry.configure(state=entry_state)
        self.send_button.configure(state=entry_state)
        voice = in_call and self.conv is not None and self.conv.audio_interface is not None
        self.mute_box.configure(state="normal" if voice else "disabled")
        active = state in ("connecting", "listening", "speaking")
        self.call_button.configure(text="End call" if active else "Start call")
        if in_call:
            self.entry.focus_set()

    # -- user actions ------------------------------------------------------------------

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
        if self.muted.get():
            conv.set_mic_muted(True)
        conv.set_volume(self.volume.get() / 100)
        self.set_state("connecting")
        self.connect_thread = self.bridge.connect(conv)

    def end_call(self) -> None:
        if self.conv is not None:
            self.conv.end_session()  # returns at once; session_ended follows

    def on_enter(self, _event: object = None) -> None:
        text = self.entry.get().strip()
        self.entry.delete(0, "end")
        if text and self.conv is not None and self.conv.is_session_active():
            self.append("you", text)
            self.conv.send_user_message(text)

    def on_mute(self) -> None:
        if self.conv is not None:
            self.conv.set_mic_muted(self.muted.get())

    def on_volume(self, _value: str) -> None:
        if self.conv is not None:
            self.conv.set_volume(self.volume.get() / 100)

    # -- items from the bridge ---------------------------------------------------------

    def show(self, kind: str, value: Any) -> None:
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
            self.dialog = ErrorDialog(self.root, "Could not connect", str(value[1]))
        elif kind == "cancelled":
            self.set_state("ended")
        elif kind == "ended":
            self.set_state("ended")
            self.append("ended", value[1] or "conversation over")
        else:
            self.append(kind, str(value))

    def poll(self) -> None:
        if self.closed:
            return
        if self.bridge.drain(self.show):
            self.root.event_generate("<<ChatUpdated>>", when="tail")  # for tests and hooks
        self.root.after(POLL_MS, self.poll)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.conv is not None:
            self.conv.end_session()
        if self.connect_thread is not None:
            self.connect_thread.join(5)
        self.root.destroy()


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
    parser = argparse.ArgumentParser(description="Tkinter voice and text chat window.")
    parser.add_argument("--agent-id", help="the agent (with --simulate: sim-agent)")
    parser.add_argument("--private", action="store_true", help="signed URL (ELEVENLABS_API_KEY)")
    parser.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    parser.add_argument("--no-voice", action="store_true", help="text only")
    args = parser.parse_args()
    if not (args.agent_id or args.simulate):
        parser.error("give --agent-id or --simulate")

    import tkinter as tk

    with agent_service(args) as (client, agent_id, requires_auth):

        def new_conversation(audio_interface: Any) -> Conversation:
            conv = Conversation(
                client, agent_id, requires_auth=requires_auth, audio_interface=audio_interface
            )
            conv.client_tools.register("get_current_time", lambda _p: time.strftime("%H:%M"))
            return conv

        root = tk.Tk()
        ChatWindow(root, new_conversation, voice=not args.no_voice)
        root.mainloop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
