"""A Tkinter chat window: an entry line and a transcript. No asyncio.

    python samples/tk_gui.py --simulate            # offline, built-in simulator
    python samples/tk_gui.py --agent-id ID         # a public agent

Threading: Tk may only be touched from the thread running ``mainloop()``. The
Conversation's handlers run on its ``elevenconv-events`` thread, so they never touch a
widget: they put ``(kind, text)`` on a ``queue.Queue``. The Tk thread drains that queue
from an ``after()`` callback (every 50 ms, only while the window is open) and updates the
widgets. Sending (``send_user_message``) is allowed from any thread, so the Entry's
handler calls it directly.

``--say TEXT`` (repeatable) types the lines for you, one after each answer, and
``--quit-when-done`` closes the window after the last answer: used by the tests, which
run this under Xvfb.
"""

from __future__ import annotations

import argparse
import queue
import time
from collections.abc import Callable
from typing import Any

from elevenconv import Conversation, ElevenLabsClient

POLL_MS = 50


class ChatBridge:
    """The GUI-independent part: Conversation events in, ``(kind, text)`` items out.

    ``attach`` registers handlers that only enqueue (events thread); ``drain`` is called
    on the GUI thread and hands each item to ``show``. Testable without a display.
    """

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, str]] = queue.Queue()

    def attach(self, conv: Conversation) -> None:
        conv.on("agent_response", lambda text: self.items.put(("agent", text)))
        conv.on("user_transcript", lambda text: self.items.put(("you (voice)", text)))
        conv.on("client_tool_call", lambda name, _p: self.items.put(("tool", name)))
        conv.on("error", lambda exc: self.items.put(("error", str(exc))))
        conv.on("session_ended", lambda *_: self.items.put(("ended", "conversation over")))

    def drain(self, show: Callable[[str, str], None]) -> int:
        """Hand every queued item to ``show`` (GUI thread); return how many."""
        n = 0
        while True:
            try:
                kind, text = self.items.get_nowait()
            except queue.Empty:
                return n
            show(kind, text)
            n += 1


class ChatWindow:
    """The Tk widgets. Every method runs on the Tk thread."""

    def __init__(
        self,
        root: Any,
        conv: Conversation,
        bridge: ChatBridge,
        say: list[str],
        quit_when_done: bool,
    ) -> None:
        import tkinter as tk

        self.root, self.conv, self.bridge = root, conv, bridge
        self.say, self.quit_when_done = list(say), quit_when_done
        root.title("elevenconv chat")
        self.text = tk.Text(root, width=70, height=20, state="disabled", wrap="word")
        self.text.pack(fill="both", expand=True)
        self.entry = tk.Entry(root)
        self.entry.pack(fill="x")
        self.entry.bind("<Return>", self.on_enter)
        self.entry.focus_set()
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.closed = False
        root.after(POLL_MS, self.poll)

    def append(self, who: str, text: str) -> None:
        self.text.configure(state="normal")
        self.text.insert("end", f"{who}: {text}\n")
        self.text.configure(state="disabled")
        self.text.see("end")
        print(f"{who}: {text}", flush=True)  # also on stdout, for logs and tests

    def send(self, text: str) -> None:
        self.append("you", text)
        if self.conv.is_session_active():
            self.conv.send_user_message(text)

    def on_enter(self, _event: object = None) -> None:
        text = self.entry.get().strip()
        self.entry.delete(0, "end")
        if text:
            self.send(text)

    def show(self, kind: str, text: str) -> None:
        self.append(kind, text)
        if kind == "agent" and self.say:
            self.send(self.say.pop(0))  # scripted typing: the next line after each answer
        elif kind == "ended" and self.quit_when_done:
            self.close()

    def poll(self) -> None:
        if self.closed:
            return
        self.bridge.drain(self.show)
        if not self.closed:
            self.root.after(POLL_MS, self.poll)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.root.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description="Tkinter chat window.")
    parser.add_argument("--agent-id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    parser.add_argument("--say", action="append", default=[], help="type these lines")
    parser.add_argument("--quit-when-done", action="store_true")
    args = parser.parse_args()
    if not (args.agent_id or args.simulate):
        parser.error("give --agent-id or --simulate")

    import tkinter as tk

    sim = None
    client, agent_id = ElevenLabsClient(), args.agent_id
    if args.simulate:
        from elevenconv.testing import AgentSimulator

        sim = AgentSimulator().start()
        client, agent_id = ElevenLabsClient(base_url=sim.base_url), "sim-agent"

    conv = Conversation(client, agent_id, requires_auth=args.private)
    conv.client_tools.register("get_current_time", lambda _params: time.strftime("%H:%M"))
    bridge = ChatBridge()
    bridge.attach(conv)
    root = tk.Tk()
    ChatWindow(root, conv, bridge, args.say, args.quit_when_done)
    try:
        conv.start_session()  # blocks briefly; the window appears right after
        root.mainloop()
    finally:
        conv.end_session()
        if sim is not None:
            sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
