"""Runs :class:`~elevenconv.testing._sim_steps.Step` lists against a :class:`SimSession`,
and builds the agent's utterances (shared with the default agent).

Scripts run on the connection's handler thread (the only reader); fault step lists of the
default agent run on its agent thread and never read.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from elevenconv.errors import ConfigurationError
from elevenconv.testing._contract import client_message_kind
from elevenconv.testing._sim_audio import encode_chunks, speech_pcm16k
from elevenconv.testing._sim_messages import server_message
from elevenconv.testing._sim_session import SessionOver, SimSession, SimulatorError
from elevenconv.testing._sim_steps import MessageMatch, Step

__all__ = ["ScriptFailure", "audio_message", "chat_part_messages", "run_steps", "say_now"]

logger = logging.getLogger(__name__)


class ScriptFailure(Exception):
    """A script step failed; the runner's caller records it and closes with 1011."""


def chat_part_messages(text: str, event_id: int) -> list[dict[str, Any]]:
    """``agent_chat_response_part`` start, deltas (a few words each) and stop for ``text``."""
    words = text.split(" ")
    deltas = [" ".join(words[i : i + 3]) for i in range(0, len(words), 3)]
    # Keep the spaces between deltas so that joining them gives the text back.
    deltas = [d + (" " if i < len(deltas) - 1 else "") for i, d in enumerate(deltas)]

    def part(kind: str, chunk: str) -> dict[str, Any]:
        return {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": chunk, "type": kind, "event_id": event_id},
        }

    return [part("start", ""), *(part("delta", d) for d in deltas), part("stop", "")]


def agent_response_message(
    text: str, event_id: int, attachments: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """An ``agent_response`` message (with ``attachments`` if given)."""
    event: dict[str, Any] = {"agent_response": text, "event_id": event_id}
    if attachments is not None:
        event["attachments"] = [dict(a) for a in attachments]
    return {"type": "agent_response", "agent_response_event": event}


def audio_message(chunk: bytes, event_id: int) -> dict[str, Any]:
    """An ``audio`` message carrying ``chunk`` (already in the agent's output format)."""
    return {
        "type": "audio",
        "audio_event": {"audio_base_64": base64.b64encode(chunk).decode(), "event_id": event_id},
    }


def say_now(
    session: SimSession,
    text: str,
    *,
    audio: bool | None = None,
    attachments: Iterable[Mapping[str, Any]] | None = None,
) -> int:
    """Speak ``text`` at once (no pacing); returns the event id used."""
    event_id = session.next_event_id()
    voice = (not session.text_only) if audio is None else audio
    if not voice:
        for msg in chat_part_messages(text, event_id):
            session.send(msg)
        session.send(agent_response_message(text, event_id, attachments))
        return event_id
    session.send(agent_response_message(text, event_id, attachments))
    pcm = speech_pcm16k(text, session.tts)
    for chunk in encode_chunks(pcm, session.agent.output_format, session.audio_chunk_seconds):
        session.send(audio_message(chunk, event_id))
    return event_id


def _matches(match: MessageMatch, msg: dict[str, Any]) -> bool:
    if isinstance(match, str):
        return client_message_kind(msg) == match
    try:
        return bool(match(msg))
    except Exception as exc:
        raise ScriptFailure(f"predicate raised {exc!r} on {msg!r:.200}") from exc


def _describe(match: MessageMatch) -> str:
    return repr(match) if isinstance(match, str) else getattr(match, "__name__", repr(match))


def run_steps(session: SimSession, steps: Iterable[Step], *, stopping: threading.Event) -> None:
    """Run ``steps`` in order against ``session``.

    Raises :class:`ScriptFailure` (with the step's index and repr) when a step fails,
    :class:`SessionOver` after ``close``/``drop`` or when the simulator stops, and
    ``websockets.exceptions.ConnectionClosed`` when the client goes away.
    """
    for index, step in enumerate(steps):
        try:
            _run_step(session, step, stopping)
        except ScriptFailure as exc:
            raise ScriptFailure(f"step {index} {step!r}: {exc}") from exc
        except SimulatorError as exc:
            raise ScriptFailure(f"step {index} {step!r}: {exc}") from exc


def _run_step(session: SimSession, step: Step, stopping: threading.Event) -> None:
    kind, args = step.kind, step.args
    logger.debug("session %d: %r", session.index, step)
    if kind == "send":
        session.send(args["message"], validate=args["validate"], filtered=False)
    elif kind == "emit":
        try:
            message = server_message(args["message_type"], session.next_event_id, **args["fields"])
        except ConfigurationError as exc:
            raise ScriptFailure(str(exc)) from exc
        session.send(message)
    elif kind == "metadata":
        session.send_metadata(
            conversation_id=args["conversation_id"],
            output_format=args["output_format"],
            input_format=args["input_format"],
        )
    elif kind == "say":
        say_now(session, args["text"], audio=args["audio"], attachments=args.get("attachments"))
    elif kind == "ping":
        session.send_ping()
    elif kind in ("expect", "wait_for"):
        _receive_matching(session, step)
    elif kind == "close":
        session.close(args["code"], args["reason"])
        raise SessionOver(f"script closed with {args['code']}")
    elif kind == "drop":
        session.drop(reset=args["reset"])
        raise SessionOver("script dropped the connection")
    elif kind == "sleep":
        if stopping.wait(args["seconds"]):
            raise SessionOver("simulator stopping")
    elif kind == "call":
        try:
            args["fn"](session)
        except (SessionOver, ScriptFailure):
            raise
        except Exception as exc:
            raise ScriptFailure(f"callable raised {exc!r}") from exc
    elif kind == "huge_audio":
        size = int(args["size"])
        tone = speech_pcm16k("huge audio", "tone")
        data = (tone * (size // max(1, len(tone)) + 1))[:size]
        session.send(audio_message(data, session.next_event_id()))
    elif kind == "huge_text":
        size = int(args["size"])
        text = ("simulated huge text " * (size // 20 + 1))[:size]
        session.send(agent_response_message(text, session.next_event_id()))
    else:  # pragma: no cover - Step's constructors only make the kinds above
        raise ScriptFailure(f"unknown step kind {kind!r}")


def _receive_matching(session: SimSession, step: Step) -> dict[str, Any]:
    match: MessageMatch = step.args["match"]
    timeout: float = step.args["timeout"]
    ignore: tuple[str, ...] = step.args.get("ignore", ())
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ScriptFailure(f"no client message matching {_describe(match)} in {timeout} s")
        try:
            msg = session.receive(remaining)
        except TimeoutError:
            raise ScriptFailure(
                f"no client message matching {_describe(match)} in {timeout} s"
            ) from None
        if _matches(match, msg):
            return msg
        if step.kind == "expect" and client_message_kind(msg) not in ignore:
            raise ScriptFailure(
                f"expected {_describe(match)}, got {client_message_kind(msg)!r}: {msg!r:.200}"
            )
