r"""The ``elevenconv`` command: chat with an agent, run the simulator, list sound devices.

::

    elevenconv chat                         # the built-in simulator, offline
    elevenconv chat --agent-id AGENT_ID     # a real agent (ELEVENLABS_API_KEY if private)
    elevenconv chat --say "what time is it?" --say bye
    elevenconv chat --script turns.txt      # one user turn per line, /commands allowed
    elevenconv simulate --port 8765         # the simulator, for other programs
    elevenconv devices                      # PortAudio devices
    python -m elevenconv ...                # the same

``chat`` talks by voice when a sound device is there (``--no-voice`` forces text,
``--voice`` insists on voice) and always accepts typed text; echo cancellation is on in
voice mode when its dependency is installed (``--no-echo-cancellation`` turns it off).
In a chat, lines starting with ``/`` are commands (:data:`COMMANDS`); everything else
is said to the agent.

Exit status: 0 when the chat ends normally (``/quit``, end of input, end of the script,
or the agent ended the call); 1 on an error (connection refused or dropped, a
``/expect`` or a turn that timed out, a protocol violation seen by the embedded
simulator); 2 for bad usage; 130 when interrupted with Ctrl+C (the session is still
ended cleanly). ``simulate`` exits 0 on Ctrl+C: that is how it is stopped.

Interactive chats have line editing and history through the standard library's
:mod:`readline` where it exists (history in ``$XDG_STATE_HOME/elevenconv/chat_history``,
``--no-history`` to keep none), and a live status (connected, agent speaking or listening,
mic, echo cancellation, latency) in the terminal's title, so it never fights the prompt;
``/status`` prints it. Missing optional dependencies are reported in one line that says
what to install, never as a traceback.

Threads: the main thread runs the commands; everything the agent says is printed from
the Conversation's events thread (and tool lines from its tool workers). One
:class:`_Console` lock keeps their lines whole and redraws the prompt (with what was typed
so far) under them. When stdin is read interactively, a daemon thread
``elevenconv-cli-stdin`` reads it (through readline when available, one line per request
of the main thread), so the end of the session can wake the main thread; it blocks on a
queue, never polls. Secrets are never printed: the API key is only read from
``ELEVENLABS_API_KEY``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, TextIO

from elevenconv._audio import AudioInterface, PlaybackCallback, PlaybackReferenceCallback
from elevenconv._client import DEFAULT_BASE_URL, ElevenLabsClient
from elevenconv._conversation import Conversation
from elevenconv._fileaudio import WavFileAudioInterface, write_wav_pcm16
from elevenconv._tools import ClientTools
from elevenconv._version import __version__
from elevenconv._voice import has_acoustic_echo
from elevenconv.errors import AudioError, ElevenConvError

__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The chat commands, with their help text (``/help`` prints this).
COMMANDS: dict[str, str] = {
    "/feedback like|dislike": "rate the agent's latest response",
    "/context TEXT": "tell the agent something in the background (contextual update)",
    "/mute": "mute or unmute the microphone (voice)",
    "/send TEXT": "send TEXT without waiting for the answer (in scripts)",
    "/speak TEXT": "say TEXT into the microphone with a synthetic voice (voice)",
    "/wait-speaking": "wait until the agent is speaking (voice; e.g. before /speak)",
    "/expect TEXT": "wait until an agent response contains TEXT (--expect-timeout)",
    "/wait SECONDS": "pause",
    "/wait-end": "wait until the agent ends the call (--turn-timeout)",
    "/status": "show the connection status",
    "/help": "this list",
    "/quit": "end the conversation",
}

_NAMES = frozenset(c.split()[0] for c in COMMANDS)
#: In a script, how long to wait for the agent's first message before the first line.
FIRST_MESSAGE_WAIT_S = 5.0
#: In voice mode, a response whose audio has not started after this long has none.
NO_AUDIO_GRACE_S = 3.0

_EOF = object()  # stdin reader: end of input
_ENDED = object()  # the session ended: wake the main thread


class UsageError(Exception):
    """Bad command-line usage or a bad script line (exit status 2)."""


class ChatError(Exception):
    """The chat failed: a timeout or a connection problem (exit status 1)."""


# ======================================================================================
# Output
# ======================================================================================


class _LineEditor:
    """Line editing and history for the interactive prompt, through stdlib :mod:`readline`.

    :meth:`read` runs on the stdin thread (``input()`` uses readline there too). Other
    threads print through :class:`_Console`, which holds its lock, erases the prompt line,
    prints, and calls :meth:`redraw`: readline is told the cursor is on a new line
    (``rl_on_new_line``) and redisplays the prompt with what was typed so far. Both calls
    keep the GIL, as readline's own key handling does, so they never run in the middle of
    a keystroke. :meth:`close` saves the history and restores the terminal.
    """

    HISTORY_LENGTH = 1000

    def __init__(self, readline: Any, history: str | None, console: _Console) -> None:
        self._rl = readline
        self._history = history
        self._console = console
        self._tty: list[Any] | None = None
        self._on_new_line: Callable[[], int] | None = None
        try:
            import termios

            self._tty = termios.tcgetattr(sys.stdin.fileno())
        except (ImportError, OSError, ValueError):
            pass
        try:
            import ctypes

            self._on_new_line = ctypes.PyDLL(readline.__file__).rl_on_new_line
        except (ImportError, OSError, AttributeError, TypeError):
            pass  # the prompt is then redrawn by hand (prompt + line buffer)
        readline.set_history_length(self.HISTORY_LENGTH)
        if history:
            with contextlib.suppress(OSError):
                readline.read_history_file(history)
        readline.set_completer(self._complete)
        readline.set_completer_delims(" \t\n")
        libedit = "libedit" in (readline.__doc__ or "") or (
            getattr(readline, "backend", "") == "editline"
        )
        readline.parse_and_bind("bind ^I rl_complete" if libedit else "tab: complete")
        hooks = hasattr(readline, "set_startup_hook") and hasattr(readline, "set_pre_input_hook")
        self._hooks = hooks
        if hooks:
            # From just before readline draws the prompt until it has: no other output.
            readline.set_startup_hook(console.prompt_drawing)
            readline.set_pre_input_hook(console.prompt_drawn)

    @staticmethod
    def create(history: str | None, console: _Console) -> _LineEditor | None:
        """A line editor, or ``None`` when this Python has no readline."""
        try:
            import readline
        except ImportError:
            return None
        return _LineEditor(readline, history, console)

    def _complete(self, text: str, state: int) -> str | None:
        matches = [n for n in sorted(_NAMES) if n.startswith(text)] if text.startswith("/") else []
        return matches[state] if state < len(matches) else None

    def read(self, prompt: str) -> str:
        """Read one line (stdin thread); ``EOFError`` at the end of input."""
        if not self._hooks:
            self._console.prompt_drawn()
        try:
            return input(prompt)
        finally:
            self._console.prompt_gone()

    def redraw(self, prompt: str) -> None:
        """Draw the prompt and the typed text again on a fresh line (console lock held)."""
        if self._on_new_line is not None:
            self._on_new_line()
            self._rl.redisplay()
        else:
            sys.stdout.write(prompt + self._rl.get_line_buffer())

    def close(self) -> None:
        """Save the history; put the terminal back as it was (the stdin thread may still
        be inside readline, which would leave it in raw mode)."""
        if self._history:
            try:
                os.makedirs(os.path.dirname(self._history) or ".", exist_ok=True)
                self._rl.write_history_file(self._history)
                os.chmod(self._history, 0o600)  # what you typed is yours only
            except OSError as exc:
                log.warning("could not save the chat history to %s: %s", self._history, exc)
        if self._tty is not None:
            try:
                import termios

                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._tty)
            except (ImportError, OSError, ValueError):
                pass


def default_history_file() -> str:
    """``$XDG_STATE_HOME/elevenconv/chat_history`` (``~/.local/state/...`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "elevenconv", "chat_history")


class _Console:
    """Line-safe output shared by the main, events and tool threads.

    Agent text may stream in while a prompt is shown: a line printed from another thread
    first moves to a fresh line (``\\r`` + erase on an ANSI terminal, a newline on a dumb
    one), and the prompt is drawn again under it (by readline, with what you typed so
    far, when a :class:`_LineEditor` is in use). Prompts are only shown when both stdin
    and stdout are terminals, and never after the session ended. On an ANSI terminal the
    live status goes to the window title (:meth:`status`).
    """

    PROMPT = "you> "

    def __init__(self, out: TextIO, err: TextIO, *, prompt: bool) -> None:
        self._out = out
        self._err = err
        self._lock = threading.Lock()
        self._stream_done = threading.Condition(self._lock)  # a streaming line ended
        self._use_prompt = prompt
        term = os.environ.get("TERM", "dumb")
        self._ansi = prompt and term not in ("dumb", "")
        # Window titles: every terminal emulator (xterm, VTE, tmux, ...); not the Linux
        # console or hardware terminals, which have no title.
        self._titles = self._ansi and term != "linux" and not term.startswith("vt")
        self._prompt_shown = False
        self._waiting = False  # the main thread waits for a line: keep the prompt up
        self._streaming = False
        self._closed = False  # the session ended: no more prompts
        self._title = False
        self._redraw = False  # readline's prompt was erased by a line: draw it again
        self._hook_locked = False
        self.editor: _LineEditor | None = None

    def _break(self) -> None:
        # Lock held. Get to the start of an empty line.
        if self._streaming:
            self._out.write("\n")
            self._streaming = False
            self._stream_done.notify_all()
        elif self._prompt_shown:
            self._out.write("\r\x1b[K" if self._ansi else "\n")
            self._prompt_shown = False
            self._redraw = True

    def _reprompt(self) -> None:
        # Lock held.
        if not self._use_prompt or self._closed or self._streaming or self._prompt_shown:
            return
        if self.editor is not None:
            # readline owns the prompt: redraw it only if it was up (erased by _break).
            if self._redraw:
                self._redraw = False
                self._out.flush()
                self.editor.redraw(self.PROMPT)
                self._prompt_shown = True
        elif self._waiting:
            self._out.write(self.PROMPT)
            self._prompt_shown = True

    # -- the stdin thread, through _LineEditor (readline draws the prompt) ----------------

    STREAM_WAIT_S = 5.0  # at most this long for a streaming line to end before a prompt

    def _wait_stream_end(self) -> None:
        # Lock held. Never draw a prompt in the middle of the agent's streaming line.
        deadline = time.monotonic() + self.STREAM_WAIT_S
        while self._streaming and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                self._break()
                return
            self._stream_done.wait(left)

    def prompt_drawing(self) -> None:
        """readline's startup hook: it is about to draw the prompt."""
        self._lock.acquire()  # released by prompt_drawn(), on this thread, inside input()
        self._hook_locked = True
        self._redraw = False
        self._wait_stream_end()

    def prompt_drawn(self) -> None:
        """readline's pre-input hook (or just before ``input()``): the prompt is up."""
        if self._hook_locked:  # only ever True while this thread holds the lock
            self._hook_locked = False
            self._prompt_shown = True
            self._lock.release()
        else:
            with self._lock:
                self._wait_stream_end()
                self._prompt_shown = True

    def prompt_gone(self) -> None:
        """The line was entered (readline moved to a new line) or input ended."""
        with self._lock:
            self._prompt_shown = False
            self._redraw = False

    # -- any thread ----------------------------------------------------------------------

    def line(self, text: str) -> None:
        """Print one whole line (any thread)."""
        with self._lock:
            self._break()
            self._out.write(text + "\n")
            self._reprompt()
            self._out.flush()

    def error(self, text: str) -> None:
        """Print a line to stderr (any thread)."""
        with self._lock:
            self._break()
            self._out.flush()
            self._err.write(text + "\n")
            self._err.flush()
            self._reprompt()
            self._out.flush()

    def stream_start(self, prefix: str) -> None:
        """Begin a line whose text arrives in pieces (:meth:`stream`)."""
        with self._lock:
            self._break()
            self._out.write(prefix)
            self._streaming = True
            self._out.flush()

    def stream(self, text: str) -> None:
        """Append to the streaming line."""
        with self._lock:
            if self._prompt_shown:
                self._break()
            self._out.write(text)
            self._streaming = True
            self._out.flush()

    def stream_end(self) -> None:
        """End the streaming line."""
        with self._lock:
            if self._streaming:
                self._out.write("\n")
                self._streaming = False
                self._stream_done.notify_all()
            self._reprompt()
            self._out.flush()

    def status(self, text: str) -> None:
        """Show the live status in the terminal's title (terminal emulators; else nothing)."""
        if not self._titles:
            return
        with self._lock:
            if not self._title:
                self._title = True
                self._out.write("\x1b[22;0t")  # push the current title (xterm, VTE, ...)
            self._out.write(f"\x1b]0;elevenconv: {text}\x07")
            self._out.flush()

    def waiting_for_input(self, waiting: bool) -> None:
        """Main thread: show the prompt while waiting for a line, drop it after."""
        with self._lock:
            self._waiting = waiting
            if self.editor is None:
                if waiting:
                    self._reprompt()
                else:
                    self._prompt_shown = False  # the terminal echoed the newline
            self._out.flush()

    def close(self) -> None:
        """The session ended: erase a prompt that is up, and show no more."""
        with self._lock:
            self._closed = True
            self._stream_done.notify_all()
            if self._prompt_shown:
                self._out.write("\r\x1b[K" if self._ansi else "\n")
                self._prompt_shown = False
            self._out.flush()

    def restore(self) -> None:
        """At exit: the terminal's title back, the line editor closed."""
        with self._lock:
            self._closed = True
            if self._title:
                self._out.write("\x1b[23;0t")  # pop the title pushed by status()
                self._title = False
            if self.editor is not None and self._ansi:
                self._out.write("\x1b[?2004l")  # bracketed paste off, as readline would
            self._out.flush()
        if self.editor is not None:
            self.editor.close()


# ======================================================================================
# Conversation state the main thread waits on
# ======================================================================================


class _Tracker:
    """Agent responses and playback state, updated from the events thread.

    The main thread waits on :attr:`cond` (with deadlines) for ``/expect``, for the
    end of an agent turn in scripts, and for the end of the session.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.responses: list[str] = []
        self.response_marks: list[tuple[float, int, int]] = []  # (time, speak#, listen#)
        self.speaking = False
        self.speak_count = 0
        self.listen_count = 0
        self.latency_ms: int | None = None
        self.ended = False
        self.end_code: int | None = None
        self.end_reason = ""
        self.expect_cursor = 0

    def add_response(self, text: str) -> None:
        with self.cond:
            self.responses.append(text)
            self.response_marks.append((time.monotonic(), self.speak_count, self.listen_count))
            self.cond.notify_all()

    def set_mode(self, mode: str) -> bool:
        """Record a mode change; ``True`` if it is a change."""
        with self.cond:
            speaking = mode == "speaking"
            if speaking == self.speaking:
                return False
            self.speaking = speaking
            if speaking:
                self.speak_count += 1
            else:
                self.listen_count += 1
            self.cond.notify_all()
            return True

    def set_ended(self, code: int | None, reason: str) -> None:
        with self.cond:
            self.ended = True
            self.end_code = code
            self.end_reason = reason
            self.cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], deadline: float) -> bool:
        # Lock held. Condition.wait with the time left: woken by every update, no polling.
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.cond.wait(remaining)
        return True

    def wait_turn(self, after: int, *, voice: bool, timeout: float) -> bool:
        """Wait until response number ``after`` has arrived (and, in voice mode, has been
        played out) or the session ended. ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            if not self._wait(lambda: self.ended or len(self.responses) > after, deadline):
                return False
            if self.ended or not voice:
                return True
            t0, speak0, listen0 = self.response_marks[after]

            def played() -> bool:
                if self.ended or (self.listen_count > listen0 and not self.speaking):
                    return True
                # No audio at all for this response (or none after the grace time).
                silent = not self.speaking and self.speak_count == speak0
                return silent and time.monotonic() >= t0 + NO_AUDIO_GRACE_S

            while not played():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                grace_left = t0 + NO_AUDIO_GRACE_S - time.monotonic()
                self.cond.wait(min(remaining, grace_left) if grace_left > 0 else remaining)
            return True

    def wait_text(self, text: str, timeout: float) -> str | None:
        """Wait for a response (after the previous match) containing ``text``."""
        needle = text.casefold()
        found: list[str] = []

        def match() -> bool:
            for i in range(self.expect_cursor, len(self.responses)):
                if needle in self.responses[i].casefold():
                    self.expect_cursor = i + 1
                    found.append(self.responses[i])
                    return True
            return False

        with self.cond:
            self._wait(lambda: match() or self.ended, time.monotonic() + timeout)
            if not found and not self.ended:
                return None
            if not found:
                match()  # a last look after the end
        return found[0] if found else None

    def wait_speaking(self, timeout: float) -> bool:
        with self.cond:
            return self._wait(lambda: self.speaking or self.ended, time.monotonic() + timeout)

    def wait_end(self, timeout: float) -> bool:
        with self.cond:
            return self._wait(lambda: self.ended, time.monotonic() + timeout)


# ======================================================================================
# Audio: the microphone tap (for /speak and --record-mic)
# ======================================================================================


class _MicTap(AudioInterface):
    """Wraps a device: can add given speech to the microphone audio (``/speak``) and
    keep a copy of what the microphone sent (``--record-mic``).

    The speech rides on the device's own chunk cadence (real time) and is mixed into
    what the microphone hears (a voice adds to the room's sound, it does not replace
    it), so the agent hears it exactly as it would hear a voice, echo included.
    ``input_callback`` is called on the device's input thread; the work here is one
    slice under a lock and one vector add.

    Every capability of the wrapped device is passed through, the echo canceller's
    above all (``set_playback_reference_callback``, ``capture_time``,
    ``acoustic_echo``): without them the canceller falls back to the audio handed to
    ``output()`` and to arrival times, which on PulseAudio drift by ~30 ms a chunk
    (measured), and the echo of open speakers leaks (issue 9).
    """

    def __init__(self, inner: AudioInterface, *, keep_mic: bool) -> None:
        self.inner = inner
        #: The wrapped device's (a WAV file has no echo path, speakers in a room have).
        self.acoustic_echo = has_acoustic_echo(inner)
        self._lock = threading.Lock()
        self._inject = bytearray()
        self._injected = threading.Event()
        self._injected.set()
        self._callback: Callable[[bytes], None] | None = None
        self.mic: bytearray | None = bytearray() if keep_mic else None

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        """Start the wrapped device, routing its microphone through the tap."""
        self._callback = input_callback
        self.inner.start(self._on_mic)

    def _on_mic(self, chunk: bytes) -> None:
        with self._lock:
            if self._inject:
                take = bytes(self._inject[: len(chunk)])
                del self._inject[: len(take)]
                chunk = _mix_pcm16(chunk, take)
                if not self._inject:
                    self._injected.set()
            if self.mic is not None:
                self.mic += chunk
        assert self._callback is not None
        self._callback(chunk)

    def inject(self, pcm: bytes) -> None:
        """Queue ``pcm`` (PCM16 mono 16 kHz) to be added to the next microphone audio."""
        with self._lock:
            self._inject += pcm[: len(pcm) - len(pcm) % 2]
            if self._inject:
                self._injected.clear()

    def wait_injected(self, timeout: float) -> bool:
        """Block until the injected audio has gone to the agent."""
        return self._injected.wait(timeout)

    def stop(self) -> None:
        """Stop the wrapped device."""
        self.inner.stop()
        self._injected.set()

    def output(self, audio: bytes) -> None:
        """Play agent audio on the wrapped device."""
        self.inner.output(audio)

    def interrupt(self) -> None:
        """Interrupt the wrapped device's playback."""
        self.inner.interrupt()

    def set_playback_callback(self, callback: PlaybackCallback | None) -> bool:
        """Delegated to the wrapped device."""
        return self.inner.set_playback_callback(callback)

    def set_output_gain(self, gain: float) -> bool:
        """Delegated to the wrapped device."""
        return self.inner.set_output_gain(gain)

    def wait_until_drained(self, timeout: float) -> bool:
        """Delegated to the wrapped device."""
        return self.inner.wait_until_drained(timeout)

    def set_playback_reference_callback(self, callback: PlaybackReferenceCallback | None) -> bool:
        """Delegated to the wrapped device (the echo canceller's exact reference)."""
        return self.inner.set_playback_reference_callback(callback)

    def capture_time(self) -> float | None:
        """Delegated to the wrapped device: ``input_callback`` runs inside its own."""
        return self.inner.capture_time()


def _mix_pcm16(mic: bytes, speech: bytes) -> bytes:
    """``speech`` added to the start of ``mic`` (PCM16), clipped to the 16-bit range.

    With numpy (the audio extra) one vector add; without it, a plain loop (/speak is a
    testing aid; a WAV-file device without numpy still works).
    """
    n = min(len(mic), len(speech)) // 2 * 2
    if not n:
        return mic
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - the audio extra brings numpy
        from array import array

        a, b = array("h", mic[:n]), array("h", speech[:n])
        mixed = array("h", (max(-32768, min(32767, x + y)) for x, y in zip(a, b, strict=True)))
        return mixed.tobytes() + mic[n:]
    total = np.frombuffer(mic, dtype="<i2", count=n // 2).astype(np.int32)
    total += np.frombuffer(speech, dtype="<i2", count=n // 2)
    return np.clip(total, -32768, 32767).astype("<i2").tobytes() + mic[n:]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (PortAudio/ALSA print probe noise there). Only used
    before any thread of ours runs."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _missing_dependency(exc: BaseException, what: str) -> str:
    """One line saying what ``what`` needs and how to install it, from an ImportError
    (or an error caused by one): a pip extra, or the system package of a shared library."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain)
    if "libportaudio" in text or ("portaudio" in text.lower() and "cannot open" in text):
        return (
            f"{what} needs the PortAudio library: apt-get install libportaudio2 "
            "(Debian/Ubuntu), dnf install portaudio (Fedora), brew install portaudio (macOS)"
        )
    names = [x.name for x in chain if isinstance(x, ImportError) and x.name]
    module = (names[0] if names else "").partition(".")[0]
    if not module:
        return f"{what}: {exc}"
    package, fix = _PIP_FIXES.get(module, (module, f"pip install {module}"))
    return f"{what} needs {package}: {fix}"


#: Optional modules: the package that brings each and the pip command that installs it.
_PIP_FIXES: dict[str, tuple[str, str]] = {
    "pyaudio": ("PyAudio", 'pip install "elevenconv[audio]"'),
    "numpy": ("numpy", 'pip install "elevenconv[audio]"'),
    "soxr": ("soxr", 'pip install "elevenconv[audio]"'),
    "livekit": ("livekit (echo cancellation)", 'pip install "elevenconv[audio]"'),
    "websockets": ("websockets", 'pip install "elevenconv[testing]"'),
}


def _open_voice(args: argparse.Namespace) -> tuple[AudioInterface | None, str]:
    """The sound device for a voice chat, or ``(None, why not)``."""
    if args.input_wav:
        return WavFileAudioInterface(args.input_wav, realtime=True, trailing_silence_s=1.0), ""
    if args.no_voice:
        return None, ""
    try:
        from elevenconv._pyaudio_interface import create_default_audio_interface, list_devices

        with _quiet_stderr():
            devices = list_devices()
    except ImportError as exc:
        return None, _missing_dependency(exc, "voice")
    except AudioError as exc:
        return None, f"no sound system ({exc})"
    has_in = args.input_device is not None or any(d["is_default_input"] for d in devices)
    has_out = args.output_device is not None or any(d["is_default_output"] for d in devices)
    if not (has_in and has_out):
        return None, "no default microphone and speaker found (elevenconv devices)"
    iface = create_default_audio_interface(
        input_device_index=args.input_device, output_device_index=args.output_device
    )
    return iface, ""


# ======================================================================================
# The chat
# ======================================================================================


@dataclass
class _Line:
    """One input line: its number in the script (0: interactive) and its text."""

    number: int
    text: str


def _check_command(line: _Line) -> None:
    """Raise :class:`UsageError` for a malformed ``/command`` (checked before connecting)."""
    text = line.text.strip()
    if not text.startswith("/"):
        return
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    where = f"line {line.number}: " if line.number else ""
    if name not in _NAMES:
        raise UsageError(f"{where}unknown command {name!r} (try /help)")
    if name == "/feedback" and arg not in ("like", "dislike"):
        raise UsageError(f"{where}use /feedback like or /feedback dislike")
    if name in ("/context", "/expect", "/speak", "/send") and not arg:
        raise UsageError(f"{where}{name} needs a text")
    if name == "/wait":
        try:
            if float(arg) < 0:
                raise ValueError(arg)
        except ValueError:
            raise UsageError(f"{where}/wait needs a number of seconds, not {arg!r}") from None


def _script_lines(args: argparse.Namespace) -> list[_Line] | None:
    """The non-interactive turns (``--script`` / ``--say``), or ``None``."""
    lines: list[_Line] = []
    if args.script:
        try:
            with open(args.script, encoding="utf-8") as f:
                raw = f.read().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read the script {args.script!r}: {exc.strerror}") from None
        lines = [_Line(i, t) for i, t in enumerate(raw, 1)]
    elif args.say:
        lines = [_Line(i, t) for i, t in enumerate(args.say, 1)]
    else:
        return None
    lines = [ln for ln in lines if ln.text.strip() and not ln.text.lstrip().startswith("#")]
    for ln in lines:
        _check_command(ln)
    return lines


class _Chat:
    """One ``elevenconv chat`` run: the Conversation, its handlers, and the input loop."""

    def __init__(self, args: argparse.Namespace, console: _Console, *, interactive: bool) -> None:
        self.args = args
        self.console = console
        # Interactive: the status lives in the title (and /status); scripts and logs get
        # it as lines ("[agent speaking]", "[listening, ...]").
        self.interactive = interactive
        self.tracker = _Tracker()
        self.conv: Conversation | None = None
        self.tap: _MicTap | None = None
        self.voice = False
        self.agent_audio = bytearray()
        self.audio_lock = threading.Lock()
        self.stream_state: str | None = None  # None, "open", "closed"
        self.muted = False
        self.conversation_id: str | None = None
        self.error_exit = False
        self.wake: queue.Queue[object] = queue.Queue()
        self.verbose = bool(getattr(args, "verbose", 0) or getattr(args, "log_level", None))

    # -- setting up ----------------------------------------------------------------------

    def tools(self) -> ClientTools:
        tools = ClientTools(timeout=10)

        def get_current_time(params: dict[str, Any]) -> str:
            # Both lines from the tool's thread, in order (the client_tool_call event
            # runs on the events thread and could come second).
            args = {k: v for k, v in params.items() if k != "tool_call_id"}
            self.console.line(f"[tool call] get_current_time {args}")
            now = datetime.datetime.now().strftime("%H:%M")
            self.console.line(f"[tool] get_current_time() -> {now}")
            return now

        tools.register("get_current_time", get_current_time)
        return tools

    def connect(self, client: ElevenLabsClient, agent_id: str, requires_auth: bool) -> None:
        """Create and start the Conversation (voice if possible, else text)."""
        iface, why = _open_voice(self.args)
        if iface is None and why:
            if self.args.voice:
                raise ChatError(f"--voice: {why}")
            self.console.line(f"[text mode: {why}]")
        while True:
            self.tap = _MicTap(iface, keep_mic=bool(self.args.record_mic)) if iface else None
            conv = Conversation(
                client,
                agent_id,
                requires_auth=requires_auth,
                audio_interface=self.tap,
                client_tools=self.tools(),
                # --record in text mode: ask for the agent's voice too, to record it.
                text_only=None if iface else not self.args.record,
                start_timeout=self.args.timeout,
                echo_guard=self.args.echo_guard,
                # None: on in voice mode when installed (the library logs which).
                echo_cancellation=False if self.args.no_echo_cancellation else None,
            )
            self.voice = iface is not None
            self.attach(conv)
            # Opening PortAudio prints ALSA/JACK probe noise on fd 2; hide it unless
            # logging was asked for (our own errors arrive as exceptions, not on fd 2).
            quiet = iface is not None and not self.args.input_wav and not self.verbose
            try:
                with _quiet_stderr() if quiet else contextlib.nullcontext():
                    conv.start_session()
            except AudioError as exc:
                if self.args.input_wav or iface is None:
                    raise
                if self.args.voice:
                    raise ChatError(f"--voice: the sound device failed: {exc}") from None
                self.console.line(f"[text mode: the sound device failed: {exc}]")
                iface = None
                continue
            self.conv = conv
            return

    def attach(self, conv: Conversation) -> None:
        """Register the display and bookkeeping handlers (all run on the events thread)."""
        c = self.console
        conv.on("conversation_started", self.on_started)
        conv.on("agent_chat_response_part", self.on_part)
        conv.on("agent_response", self.on_agent_response)
        conv.on(
            "agent_response_correction", lambda _o, new: c.line(f"[agent interrupted after] {new}")
        )
        conv.on("user_transcript", lambda text: c.line(f"you (voice): {text}"))
        conv.on("interruption", lambda _id: c.line("[you interrupted the agent]"))
        conv.on("mode_change", self.on_mode)
        conv.on("latency_measurement", self.on_latency)
        conv.on("unhandled_client_tool_call", self.on_unhandled_tool)
        conv.on("error", lambda exc: c.error(f"[error] {exc}"))
        conv.on("session_ended", self.on_ended)
        if self.args.record:
            conv.on("audio", self.on_audio)

    # -- event handlers (events thread) --------------------------------------------------

    def on_started(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        mode = "voice + text" if self.audio_interface_present() else "text"
        self.console.line(
            f"[connected: {mode}, conversation {conversation_id}; /help for commands]"
        )
        self.show_status()

    def on_unhandled_tool(self, name: str, params: dict[str, Any]) -> None:
        args = {k: v for k, v in params.items() if k != "tool_call_id"}
        self.console.line(f"[tool call] {name} {args}")
        self.console.line(f"[tool] {name!r} is not registered here: answered an error")

    def audio_interface_present(self) -> bool:
        return self.tap is not None

    def on_part(self, text: str, part_type: str) -> None:
        if part_type == "start":
            self.stream_state = "open"
            self.console.stream_start("agent: ")
            if text:
                self.console.stream(text)
        elif part_type == "delta":
            if self.stream_state != "open":
                self.stream_state = "open"
                self.console.stream_start("agent: ")
            self.console.stream(text)
        elif part_type == "stop":
            if text and self.stream_state == "open":
                self.console.stream(text)
            self.stream_state = "closed"
            self.console.stream_end()

    def on_agent_response(self, text: str) -> None:
        if self.stream_state is not None:
            if self.stream_state == "open":
                self.console.stream_end()
            self.stream_state = None  # already shown as it streamed
        else:
            self.console.line(f"agent: {text}")
        self.tracker.add_response(text)

    def on_mode(self, mode: str) -> None:
        if self.tracker.set_mode(mode):
            if not self.interactive:
                self.console.line("[agent speaking]" if mode == "speaking" else self.status_text())
            self.show_status()

    def on_latency(self, ms: int) -> None:
        self.tracker.latency_ms = ms
        self.show_status()

    def on_audio(self, pcm: bytes, _event_id: int) -> None:
        with self.audio_lock:
            self.agent_audio += pcm

    def on_ended(self, _conversation_id: str | None, code: int | None, reason: str) -> None:
        self.console.close()  # no prompt after the end
        self.tracker.set_ended(code, reason)
        self.console.status("ended")
        self.wake.put(_ENDED)

    def echo_cancellation_text(self) -> str | None:
        """``echo cancellation on/off`` in voice mode (``None`` in text mode)."""
        if not self.voice:
            return None
        active = getattr(self.conv, "echo_cancellation_active", None)
        if active is None:  # a library without echo cancellation: say what was asked
            return "echo cancellation off" if self.args.no_echo_cancellation else None
        return "echo cancellation on" if active else "echo cancellation off"

    def status_parts(self) -> list[str]:
        parts = ["agent speaking" if self.tracker.speaking else "listening"]
        if self.voice:
            parts.append("mic muted" if self.muted else "mic on")
            ec = self.echo_cancellation_text()
            if ec:
                parts.append(ec)
        if self.tracker.latency_ms is not None:
            parts.append(f"latency {self.tracker.latency_ms} ms")
        return parts

    def status_text(self) -> str:
        return "[" + ", ".join(self.status_parts()) + "]"

    def show_status(self) -> None:
        """The live status line (the terminal's title, interactive only)."""
        if self.tracker.ended:
            return
        self.console.status(" | ".join(["connected", *self.status_parts()]))

    # -- commands (main thread) ----------------------------------------------------------

    def say(self, text: str, *, wait: bool) -> None:
        """Send a user message; in scripts, wait for the agent's answer."""
        assert self.conv is not None
        after = len(self.tracker.responses)
        self.conv.send_user_message(text)
        if wait:
            self.wait_turn(after)

    def wait_turn(self, after: int) -> None:
        timeout = self.args.turn_timeout
        if not self.tracker.wait_turn(after, voice=self.voice, timeout=timeout):
            raise ChatError(f"the agent did not answer within {timeout:g} s (--turn-timeout)")

    def command(self, text: str, *, scripted: bool) -> bool:
        """Run one ``/command``; ``False`` means quit."""
        assert self.conv is not None
        conv, c = self.conv, self.console
        name, _, arg = text.strip().partition(" ")
        arg = arg.strip()
        if name == "/quit":
            return False
        if name == "/help":
            width = max(map(len, COMMANDS))
            for usage, help_text in COMMANDS.items():
                c.line(f"  {usage:<{width}}  {help_text}")
        elif name == "/status":
            conv_id = self.conversation_id or "?"
            c.line(f"[conversation {conv_id}] {self.status_text()}")
        elif name == "/feedback":
            if conv.send_feedback(arg == "like"):
                c.line(f"[feedback sent: {arg}]")
            else:
                c.line("[no new agent response to rate]")
        elif name == "/context":
            conv.send_contextual_update(arg)
            c.line("[context sent]")
        elif name == "/mute":
            if not self.voice:
                c.line("[/mute: no microphone in text mode]")
            else:
                self.muted = not self.muted
                conv.set_mic_muted(self.muted)
                c.line("[mic muted]" if self.muted else "[mic on]")
                self.show_status()
        elif name == "/speak":
            self.speak(arg, wait=scripted)
        elif name == "/send":
            c.line(f"you: {arg}")
            self.say(arg, wait=False)
        elif name == "/wait-speaking":
            if not self.tracker.wait_speaking(self.args.turn_timeout):
                raise ChatError(f"the agent did not speak within {self.args.turn_timeout:g} s")
        elif name == "/wait":
            with self.tracker.cond:
                self.tracker._wait(lambda: self.tracker.ended, time.monotonic() + float(arg))
        elif name == "/wait-end":
            if not self.tracker.wait_end(self.args.turn_timeout):
                raise ChatError(
                    f"the agent did not end the call within {self.args.turn_timeout:g} s"
                )
        elif name == "/expect":
            timeout = self.args.expect_timeout
            found = self.tracker.wait_text(arg, timeout)
            if found is None:
                why = "the session ended" if self.tracker.ended else f"{timeout:g} s passed"
                recent = " | ".join(self.tracker.responses[-3:]) or "none"
                raise ChatError(
                    f"/expect {arg!r}: no agent response contained it ({why}); "
                    f"latest responses: {recent}"
                )
        return True

    def speak(self, text: str, *, wait: bool) -> None:
        """``/speak``: synthetic speech into the microphone stream."""
        if self.tap is None:
            self.console.line("[/speak: needs voice mode]")
            return
        try:
            from elevenconv.testing._sim_audio import speech_pcm16k
        except ImportError:
            self.console.line('[/speak needs the testing extra: pip install "elevenconv[testing]"]')
            return
        pcm = speech_pcm16k(text)
        after = len(self.tracker.responses)
        self.console.line(f"you (speaking): {text}")
        self.tap.inject(pcm + bytes(16000))  # then 0.5 s of silence: the end of the utterance
        if wait:
            seconds = len(pcm) / 32000 + 0.5
            if not self.tap.wait_injected(seconds + self.args.turn_timeout):
                raise ChatError("the microphone stopped before /speak was said")
            self.wait_turn(after)

    # -- input loops ---------------------------------------------------------------------

    def run_script(self, lines: Sequence[_Line]) -> None:
        """Run script lines: each user line waits for the agent's answer."""
        # The agent usually speaks first; let its greeting through before our first line.
        self.tracker.wait_turn(0, voice=self.voice, timeout=FIRST_MESSAGE_WAIT_S)
        for line in lines:
            if self.tracker.ended:
                self.console.line(f"[the session ended before line {line.number}]")
                return
            self.run_line(line.text, scripted=True)
            if line.text.strip() == "/quit":
                return

    def run_line(self, text: str, *, scripted: bool) -> bool:
        if text.strip().startswith("/"):
            _check_command(_Line(0, text))
            return self.command(text, scripted=scripted)
        if scripted:
            self.console.line(f"you: {text}")
        self.say(text, wait=scripted)
        return True

    def run_interactive(self, stdin: IO[str], scripted: bool) -> None:
        """Read lines from stdin until /quit, EOF, or the end of the session.

        With a line editor the stdin thread reads one line per request (so readline shows
        the prompt only while a line is wanted); without, it reads ahead."""
        lines = self.wake
        editor = self.console.editor
        requests: queue.Queue[None] = queue.Queue()

        def read() -> None:
            try:
                if editor is not None:
                    while True:
                        requests.get()
                        lines.put(editor.read(self.console.PROMPT))
                else:
                    for line in stdin:
                        lines.put(line.rstrip("\r\n"))
            except (EOFError, OSError, ValueError):
                pass
            lines.put(_EOF)

        threading.Thread(target=read, name="elevenconv-cli-stdin", daemon=True).start()
        if scripted:
            self.tracker.wait_turn(0, voice=self.voice, timeout=FIRST_MESSAGE_WAIT_S)
        while not self.tracker.ended:
            self.console.waiting_for_input(True)
            requests.put(None)
            item = lines.get()
            self.console.waiting_for_input(False)
            if item is _ENDED or self.tracker.ended:
                return
            if item is _EOF:
                self.console.line("[end of input]")
                return
            assert isinstance(item, str)
            if not item.strip():
                continue
            try:
                if not self.run_line(item, scripted=scripted):
                    return
            except UsageError as exc:
                if scripted:
                    raise
                self.console.line(f"[{exc}]")
            except ChatError as exc:
                if scripted:
                    raise
                self.console.error(f"[{exc}]")
            except ElevenConvError as exc:
                if self.tracker.ended:
                    return
                self.console.error(f"[error] {exc}")

    # -- the end -------------------------------------------------------------------------

    def end_message(self) -> str:
        t = self.tracker
        if not t.ended or (t.end_code == 1000 and not t.end_reason):
            return "[conversation ended]"
        if t.end_code == 1000 and t.end_reason:
            return f"[the agent ended the call: {t.end_reason}]"
        return (
            f"[conversation ended: code {t.end_code}{': ' + t.end_reason if t.end_reason else ''}]"
        )

    def save_recordings(self) -> None:
        if self.args.record:
            with self.audio_lock:
                pcm = bytes(self.agent_audio)
            write_wav_pcm16(self.args.record, pcm)
            self.console.line(
                f"[recorded {len(pcm) / 32000:.1f} s of agent audio to {self.args.record}]"
            )
        if self.args.record_mic and self.tap is not None and self.tap.mic is not None:
            mic = bytes(self.tap.mic)
            write_wav_pcm16(self.args.record_mic, mic)
            self.console.line(
                f"[recorded {len(mic) / 32000:.1f} s of microphone to {self.args.record_mic}]"
            )


def _run_chat(args: argparse.Namespace) -> int:
    lines = _script_lines(args)
    interactive = lines is None and sys.stdin.isatty()
    tty = interactive and sys.stdout.isatty()
    console = _Console(sys.stdout, sys.stderr, prompt=tty)
    if args.private and not args.agent_id:
        raise UsageError("--private needs --agent-id (the built-in simulator's agent is public)")
    if args.record_mic and args.no_voice and not args.input_wav:
        raise UsageError("--record-mic needs voice mode")
    if args.voice and args.input_wav:
        raise UsageError("--voice and --input-wav: choose one (--input-wav is voice already)")
    if tty:
        history = None if args.no_history else (args.history_file or default_history_file())
        console.editor = _LineEditor.create(history, console)
    chat = _Chat(args, console, interactive=tty)
    sim: Any = None
    code = EXIT_OK
    try:
        if args.agent_id:
            api_key_set = bool(os.environ.get("ELEVENLABS_API_KEY"))
            requires_auth = bool(args.private or api_key_set)
            if requires_auth and not api_key_set:
                raise UsageError("--private needs the ELEVENLABS_API_KEY environment variable")
            client = ElevenLabsClient(base_url=args.base_url)
            agent_id = args.agent_id
            where = "private agent, signed URL" if requires_auth else "public agent"
            console.line(f"[connecting to {agent_id} at {args.base_url} ({where})]")
        else:
            try:
                from elevenconv.testing._simulator import DEFAULT_AGENT_ID, AgentSimulator
            except ImportError as exc:
                raise ChatError(
                    _missing_dependency(exc, "the built-in simulator (no --agent-id)")
                ) from None
            sim = AgentSimulator(
                audio_realtime_factor=args.sim_realtime_factor or None,
                tts=args.sim_tts,
                shutdown_timeout=5.0,
            ).start()
            client = ElevenLabsClient(base_url=sim.base_url)
            agent_id, requires_auth = DEFAULT_AGENT_ID, False
            console.line(
                f"[built-in simulator at {sim.base_url} (no --agent-id): say hello, "
                "ask what time it is, say bye]"
            )
        chat.connect(client, agent_id, requires_auth)
        if lines is not None:
            chat.run_script(lines)
        else:
            chat.run_interactive(sys.stdin, scripted=not interactive)
    except KeyboardInterrupt:
        console.close()
        console.line("[interrupted]")
        code = EXIT_INTERRUPTED
    except (ChatError, ElevenConvError) as exc:
        console.close()
        console.error(f"elevenconv: {exc}")
        code = EXIT_ERROR
    finally:
        console.close()
        try:
            if chat.conv is not None:
                chat.conv.end_session()
                console.line(chat.end_message())
                if chat.tracker.ended and chat.tracker.end_code not in (1000, None):
                    code = code or EXIT_ERROR
            chat.save_recordings()
            if sim is not None:
                violations = list(sim.violations)
                sim.close(raise_errors=False)
                errors = [*sim.errors, *sim.contract_errors, *map(str, violations)]
                if errors:
                    console.error(
                        "elevenconv: the simulator saw problems:\n  " + "\n  ".join(errors)
                    )
                    code = code or EXIT_ERROR
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except ElevenConvError as exc:
            console.error(f"elevenconv: {exc}")
            code = code or EXIT_ERROR
        finally:
            console.restore()
    return code


# ======================================================================================
# simulate, devices
# ======================================================================================


def _run_simulate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``elevenconv simulate``: its options and its code live in
    :mod:`elevenconv.testing._cli`, imported only now (it needs the simulator's
    dependencies, which ``chat --agent-id`` and ``devices`` do not)."""
    try:
        simulate_cli: Any = importlib.import_module("elevenconv.testing._cli")
    except ImportError as exc:
        print(f"elevenconv simulate: {_missing_dependency(exc, 'the simulator')}", file=sys.stderr)
        return EXIT_ERROR
    parser = argparse.ArgumentParser(
        prog="elevenconv simulate",
        description=_SIMULATE_DESCRIPTION,
        parents=[_common_options()],
    )
    simulate_cli.add_simulate_arguments(parser)
    sim_args = parser.parse_args(argv)
    for name in ("log_level", "verbose"):  # given before "simulate": keep them
        if not hasattr(sim_args, name) and hasattr(args, name):
            setattr(sim_args, name, getattr(args, name))
    _configure_logging(sim_args)
    code: int = simulate_cli.run_simulate(sim_args)
    return code


def _run_devices(_args: argparse.Namespace) -> int:
    try:
        from elevenconv._pyaudio_interface import list_devices

        with _quiet_stderr():  # PortAudio's probing prints ALSA/JACK noise there
            devices = list_devices()
    except ImportError as exc:
        print(
            f"elevenconv devices: {_missing_dependency(exc, 'listing sound devices')}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except AudioError as exc:
        print(f"elevenconv: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not devices:
        print("no sound devices (PortAudio found none)")
        return EXIT_OK
    print(f"{'index':>5}  {'in':>3}  {'out':>3}  {'rate':>6}  name")
    for d in devices:
        marks = [
            m
            for m, on in (
                ("default input", d["is_default_input"]),
                ("default output", d["is_default_output"]),
            )
            if on
        ]
        suffix = f"  ({', '.join(marks)})" if marks else ""
        print(
            f"{d['index']:>5}  {d['max_input_channels']:>3}  {d['max_output_channels']:>3}  "
            f"{d['default_sample_rate']:>6.0f}  {d['name']}{suffix}"
        )
    return EXIT_OK


# ======================================================================================
# Parsing
# ======================================================================================


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


_SIMULATE_DESCRIPTION = (
    "Run the built-in agent simulator until Ctrl+C or SIGTERM, for other programs (your "
    "tests, a web front end) to connect to. Connect with ElevenLabsClient(base_url=...)."
)


def _common_options() -> argparse.ArgumentParser:
    """--log-level and -v, accepted before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: accepted before or after the subcommand without one overwriting the other.
    common.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        default=argparse.SUPPRESS,
        help="library log level (default WARNING); logs go to stderr",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more logging: -v INFO, -vv DEBUG",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``elevenconv`` command (``simulate`` takes its own
    options, parsed by :func:`_run_simulate`)."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="elevenconv",
        description="Talk to ElevenLabs agents (or the built-in simulator) from the terminal.",
        epilog="Exit status: 0 done, 1 error, 2 usage, 130 interrupted (Ctrl+C).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"elevenconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="a conversation in the terminal (default agent: the built-in simulator)",
        description=(
            "A conversation with an agent: type to talk; by voice too when a sound device "
            "is present. Lines starting with / are commands: "
            + ", ".join(c.split()[0] for c in COMMANDS)
            + ". Without --agent-id the built-in simulator is started in-process."
        ),
        epilog="Exit status: 0 done, 1 error or timeout, 2 usage, 130 interrupted (Ctrl+C).",
    )
    agent = chat.add_argument_group("agent")
    agent.add_argument("--agent-id", help="the agent to talk to (default: built-in simulator)")
    agent.add_argument(
        "--private",
        action="store_true",
        help="the agent is private: fetch a signed URL with ELEVENLABS_API_KEY "
        "(default: private when ELEVENLABS_API_KEY is set)",
    )
    agent.add_argument(
        "--base-url",
        default=os.environ.get("ELEVENLABS_BASE_URL") or DEFAULT_BASE_URL,
        help="API base URL, for the region or a simulator (default $ELEVENLABS_BASE_URL, "
        f"else {DEFAULT_BASE_URL})",
    )
    agent.add_argument(
        "--timeout", type=_positive, default=15.0, help="seconds to connect (default 15)"
    )
    audio = chat.add_argument_group("audio")
    voice = audio.add_mutually_exclusive_group()
    voice.add_argument(
        "--no-voice", action="store_true", help="text only, even with a sound device"
    )
    voice.add_argument(
        "--voice",
        action="store_true",
        help="voice, or an error saying why not (default: voice when a sound device is there)",
    )
    audio.add_argument(
        "--no-echo-cancellation",
        action="store_true",
        help="turn off echo cancellation (default: on in voice mode when installed); "
        "use it with headphones: with no echo to learn from, the canceller cuts your "
        "speech over the agent's by over 8 dB until it has heard ~15 s of the agent",
    )
    audio.add_argument("--input-device", type=int, help="PortAudio input device index")
    audio.add_argument("--output-device", type=int, help="PortAudio output device index")
    audio.add_argument(
        "--input-wav",
        metavar="FILE.wav",
        help="voice mode without a sound card: FILE is the microphone (real time), the "
        "agent's audio is not played (use --record)",
    )
    audio.add_argument(
        "--echo-guard",
        action="store_true",
        help="mute the mic while the agent speaks (laptop speakers without headphones)",
    )
    audio.add_argument(
        "--record",
        metavar="FILE.wav",
        help="save the agent's audio to a WAV file (in text mode the agent is asked to "
        "speak too, so there is audio to save)",
    )
    audio.add_argument("--record-mic", metavar="FILE.wav", help="save the microphone to a WAV file")
    typing = chat.add_argument_group("interactive")
    typing.add_argument(
        "--history-file",
        metavar="FILE",
        help="where the typed lines are kept (default: $XDG_STATE_HOME/elevenconv/chat_history)",
    )
    typing.add_argument(
        "--no-history", action="store_true", help="keep no history of what you type"
    )
    run = chat.add_argument_group("non-interactive")
    turns = run.add_mutually_exclusive_group()
    turns.add_argument(
        "--script",
        metavar="FILE",
        help="one user turn per line; lines starting with / are commands (/expect TEXT, "
        "/wait-end, ...); # starts a comment; each turn waits for the agent's answer",
    )
    turns.add_argument(
        "--say", action="append", metavar="TEXT", help="a user turn (repeatable), like --script"
    )
    run.add_argument(
        "--turn-timeout",
        type=_positive,
        default=30.0,
        help="seconds to wait for the agent's answer in a script (default 30)",
    )
    run.add_argument(
        "--expect-timeout", type=_positive, default=20.0, help="seconds for /expect (default 20)"
    )
    simg = chat.add_argument_group("built-in simulator")
    simg.add_argument(
        "--sim-realtime-factor",
        type=float,
        default=1.0,
        help="pace of its audio, 1.0 = real time (default); 0 = as fast as possible",
    )
    simg.add_argument(
        "--sim-tts",
        choices=("auto", "espeak", "tone"),
        default="auto",
        help="its voice: espeak-ng when installed (auto), or a synthetic tone voice",
    )
    chat.set_defaults(handler=_run_chat)

    simulate = sub.add_parser(
        "simulate",
        add_help=False,  # its options, --help included, are parsed by _run_simulate
        help="run the agent simulator for other programs to connect to (simulate --help)",
        description=_SIMULATE_DESCRIPTION,
    )
    simulate.set_defaults(handler=_run_simulate)

    devices = sub.add_parser(
        "devices",
        parents=[common],
        help="list sound devices (PortAudio)",
        description="List the PortAudio sound devices: index, channels, default rate.",
    )
    devices.set_defaults(handler=_run_devices)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = getattr(args, "log_level", None)
    if level is None:
        verbose = getattr(args, "verbose", 0) or 0
        level = "DEBUG" if verbose >= 2 else "INFO" if verbose == 1 else "WARNING"
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``elevenconv`` command with ``argv`` (default ``sys.argv[1:]``); return
    the exit status (see the module docstring)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "simulate":
            return _run_simulate(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        _configure_logging(args)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as exc:
        print(f"elevenconv {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:  # a missing optional dependency: one line, no traceback
        print(f"elevenconv {args.command}: {_missing_dependency(exc, 'this')}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
