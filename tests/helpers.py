"""Small test doubles shared by several test modules."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any, get_args

from elevenconv import AudioInterface, Conversation, ConversationEvent
from tests.conftest import scaled


class EventLog:
    """Records every listed event of a Conversation; tests wait on it (no sleeps)."""

    NAMES = get_args(ConversationEvent)

    def __init__(self, conv: Conversation) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.threads: dict[str, set[str]] = {}
        self._cond = threading.Condition()
        for name in self.NAMES:
            conv.add_listener(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            with self._cond:
                self.calls.append((name, args))
                self.threads.setdefault(name, set()).add(threading.current_thread().name)
                self._cond.notify_all()

        return record

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [args for n, args in self.calls if n == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len([1 for n, _ in self.calls if n == name]) >= count, scaled(timeout)
            )
            found = [args for n, args in self.calls if n == name]
        assert ok, f"expected {count} {name!r} event(s), got {len(found)}: {self.calls[-10:]}"
        return found


class RecordingAudioInterface(AudioInterface):
    """An AudioInterface that records what it is asked to do (no device)."""

    acoustic_echo = False  # no speaker, no microphone: nothing to cancel

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []
        self.input_callback: Callable[[bytes], None] | None = None
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.gains: list[float] = []
        self._cond = threading.Condition()

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        self.input_callback = input_callback
        self.started.set()

    def stop(self) -> None:
        with self._cond:
            self.log.append(("stop", b""))
            self._cond.notify_all()
        self.stopped.set()

    def output(self, audio: bytes) -> None:
        with self._cond:
            self.log.append(("output", audio))
            self._cond.notify_all()

    def interrupt(self) -> None:
        with self._cond:
            self.log.append(("interrupt", b""))
            self._cond.notify_all()

    def outputs(self) -> list[bytes]:
        with self._cond:
            return [data for kind, data in self.log if kind == "output"]

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 5.0
    ) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.log), scaled(timeout))
        assert ok, f"audio interface never got there: {[k for k, _ in self.log]}"


def audio_message(event_id: int, pcm: bytes) -> dict[str, Any]:
    return {
        "type": "audio",
        "audio_event": {"audio_base_64": base64.b64encode(pcm).decode(), "event_id": event_id},
    }


def agent_response(text: str, event_id: int = 1) -> dict[str, Any]:
    return {
        "type": "agent_response",
        "agent_response_event": {"agent_response": text, "event_id": event_id},
    }


def tool_call(name: str, call_id: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": name,
            "tool_call_id": call_id,
            "parameters": params,
            "event_id": 2,
            **extra,
        },
    }


def ping(event_id: int, ping_ms: int | None = None) -> dict[str, Any]:
    return {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}}
