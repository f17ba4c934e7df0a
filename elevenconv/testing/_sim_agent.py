"""The default simulated agent: rule-based replies, a voice, an ear, pings, faults.

Threads (per connection): the handler thread reads and calls :meth:`AgentWorker.feed`
(audio is decoded and run through the VAD right there, ``vad_score`` is sent from there);
everything else -- speaking, paced audio, tool calls, pings, fault steps -- happens on
one agent thread, ``elevenconv-sim-agent-<n>``. It waits on its inbox with a timeout that
is the next scheduled action (a paced audio chunk, a ping, a tool timeout), so it never
polls. Sends from both threads go through :meth:`SimSession.send` (one lock).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import math
import queue
import re
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from elevenconv._audioformat import AgentAudioDecoder
from elevenconv.testing._contract import client_message_kind
from elevenconv.testing._sim_audio import EnergyVad, encode_chunks, format_seconds, speech_pcm16k
from elevenconv.testing._sim_messages import server_message
from elevenconv.testing._sim_script import (
    ScriptFailure,
    agent_response_message,
    audio_message,
    chat_part_messages,
    run_steps,
)
from elevenconv.testing._sim_session import (
    ResponseRecord,
    SessionOver,
    SimSession,
    SimulatorError,
    ToolRule,
)
from elevenconv.testing._sim_steps import Faults, Step

__all__ = ["GOODBYE", "AgentWorker"]

logger = logging.getLogger(__name__)

GOODBYE = "Goodbye! It was nice talking to you."

_END_RE = re.compile(r"\b(bye|goodbye|end the call|hang up)\b")
# Rules that show the server messages beyond a plain reply (see AgentWorker docstring).
_GUARDRAIL_RE = re.compile(r"\bguardrail\b")
_MCP_RE = re.compile(r"\b(refund|mcp)\b")
_CONTEXT_RE = re.compile(r"\b(context|tokens)\b")
_RICH_RE = re.compile(r"\b(options|menu)\b")
_ATTACH_RE = re.compile(r"\b(attach\w*|document)\b")
_HUMAN_RE = re.compile(r"\b(human|operator)\b")
_REASON_RE = re.compile(r"\b(think|reasoning)\b")

#: The MCP tool the default agent calls (after the user's approval) for "refund".
MCP_SERVICE_ID = "sim-mcp"
MCP_TOOL_NAME = "lookup_refund_policy"
MCP_RESULT = "Refunds are possible within 30 days."
#: The rich content the default agent shows for "options" / "menu".
RICH_OPTIONS = ("Billing", "Shipping", "Something else")
#: The file the default agent attaches for "attach" / "document".
ATTACHMENT = {
    "url": "https://files.sim.invalid/report.pdf",
    "name": "report.pdf",
    "mime_type": "application/pdf",
}
CONTEXT_LIMIT = 128000
_GREETING_RE = re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b")

_STOP = object()


@dataclass
class _Utterance:
    record: ResponseRecord
    chunks: list[bytes]
    then: Callable[[], None] | None
    started: float = 0.0
    attachments: list[dict[str, Any]] | None = None


class AgentWorker:
    """The default agent of one connection. Create, :meth:`start`, :meth:`feed` every
    client message (handler thread), then :meth:`stop` and :meth:`join`.

    Rules, on words of what the user says or types (first match wins; every message goes
    through the agent's ``client_events``):

    * "bye", "goodbye", "hang up": goodbye, ``agent_tool_response`` ``end_call``, close 1000.
    * a tool keyword (default "time"): ``client_tool_call``, then the result is spoken.
    * "guardrail": ``guardrail_triggered``, then a refusal.
    * "refund" / "mcp": an MCP tool call that needs approval: ``agent_tool_request``,
      ``mcp_tool_call`` ``awaiting_approval`` (``approval_timeout_secs``: the agent's
      ``mcp_approval_timeout``); after
      ``mcp_tool_approval_result``: ``loading`` and ``success`` (or ``failure`` when
      refused or after the timeout), ``agent_tool_response``, then the answer.
    * "context" / "tokens": ``context_usage``, then the figures are spoken.
    * "options" / "menu": ``rich_content`` (a ``buttons`` component with
      :data:`RICH_OPTIONS`), then "Pick one."; a ``user_message`` with the
      ``rich_content_id`` is answered with the choice.
    * "attach" / "document": a reply whose ``agent_response`` carries :data:`ATTACHMENT`.
    * "human" / "operator": ``external_agent_connected``, ``agent_typing`` (on, off), a
      reply from the operator, ``external_agent_disconnected``.
    * "think" / "reasoning": ``agent_reasoning_response_part`` start/delta/stop first.
    * otherwise a greeting or an echo.

    At the start, when enabled: ``mcp_connection_status`` and (voice)
    ``asr_initiation_metadata``. With ``internal_tentative_agent_response`` enabled each
    reply is previewed by one; ``vad_score`` is sent only when enabled.
    """

    def __init__(
        self,
        session: SimSession,
        *,
        faults: Faults,
        ping_interval: float | None,
        realtime_factor: float | None,
        stopping: threading.Event,
        vad: EnergyVad | None = None,
    ) -> None:
        """Prepare the worker; nothing runs until :meth:`start`."""
        self.session = session
        self.faults = faults
        self.ping_interval = ping_interval
        self.realtime_factor = realtime_factor
        self._stopping = stopping
        self._inbox: queue.Queue[object] = queue.Queue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._current: _Utterance | None = None
        self._queued: deque[_Utterance] = deque()
        self._pending_tools: dict[str, ToolRule] = {}
        self._pending_mcp: dict[str, dict[str, Any]] = {}
        self._rich_ids: set[str] = set()
        self._user_fault_used = False
        self._ended = False
        # Handler-thread state (audio in).
        self._vad = vad or EnergyVad()
        self._decoder: AgentAudioDecoder | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"elevenconv-sim-agent-{session.index}", daemon=True
        )

    @property
    def thread(self) -> threading.Thread:
        """The agent thread."""
        return self._thread

    def start(self) -> None:
        """Start the agent thread (it sends the first message)."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the agent thread to finish; any thread, idempotent."""
        self._inbox.put(_STOP)

    def join(self, timeout: float) -> bool:
        """Wait for the agent thread; ``True`` if it ended. Not from the agent thread."""
        if self._thread.ident is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- handler thread --------------------------------------------------------------------

    def feed(self, msg: dict[str, Any]) -> None:
        """Hand over one (valid) client message; handler thread only."""
        kind = client_message_kind(msg)
        if kind == "user_audio_chunk":
            self._hear(msg["user_audio_chunk"])
        elif kind == "user_message" and isinstance(msg.get("text"), str):
            if isinstance(msg.get("rich_content_id"), str):
                self._inbox.put(("rich_choice", msg))
            else:
                self._inbox.put(("text", msg["text"]))
        elif kind == "client_tool_result":
            self._inbox.put(("tool_result", msg))
        elif kind == "mcp_tool_approval_result":
            self._inbox.put(("mcp_approval", msg))
        elif kind == "multimodal_message":
            text = msg.get("text") or {}
            if isinstance(text.get("text"), str):
                self._inbox.put(("text", text["text"]))

    def _hear(self, audio_b64: str) -> None:
        if self.session.text_only:
            return  # a text-only conversation has no ears
        if self._decoder is None:
            self._decoder = AgentAudioDecoder(self.session.agent.input_format)
        pcm = self._decoder.decode(base64.b64decode(audio_b64))
        for event in self._vad.process(pcm):
            if event.kind == "score":
                if not self.session.sends("vad_score"):
                    continue  # disabled: not even counted as suppressed (one per chunk)
                self.session.send(
                    {"type": "vad_score", "vad_score_event": {"vad_score": event.value}}
                )
            else:
                self._inbox.put((event.kind, event.value))

    # -- agent thread ----------------------------------------------------------------------

    def _run(self) -> None:
        session = self.session
        try:
            self._loop()
        except (ConnectionClosed, SessionOver):
            pass
        except SimulatorError:
            # Already recorded in contract_errors; end the conversation visibly.
            self._close_quietly(1011, "simulator sent an invalid message")
        except Exception:
            logger.exception("simulated agent of session %d failed", session.index)
            session.record_error("agent thread failed:\n" + traceback.format_exc())
            self._close_quietly(1011, "simulator agent failed")

    def _close_quietly(self, code: int, reason: str) -> None:
        try:
            self.session.close(code, reason)
        except Exception:  # noqa: S110 - best effort on the way out
            pass

    def _startup_messages(self) -> None:
        session = self.session
        if session.sends("mcp_connection_status"):
            session.send(self._message("mcp_connection_status"))
        if not session.text_only and session.sends("asr_initiation_metadata"):
            session.send(
                {
                    "type": "asr_initiation_metadata",
                    "asr_initiation_metadata_event": {
                        "asr_provider": "simulator",
                        "user_input_audio_format": session.agent.input_format,
                        "language": session.language,
                    },
                }
            )

    def _message(self, message_type: str, **fields: Any) -> dict[str, Any]:
        return server_message(message_type, self.session.next_event_id, **fields)

    def _loop(self) -> None:
        self._startup_messages()
        if self.ping_interval:
            self._schedule(self.ping_interval, self._ping)
        self._run_fault_steps(self.faults.after_metadata)
        if self.session.first_message:
            self._speak(self.session.first_message, then=self._after_first_message)
        else:
            self._after_first_message()
        while True:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP or self._stopping.is_set():
                return
            if item is not None:
                self._handle(item)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, action = heapq.heappop(self._timers)
                action()

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), action))

    def _handle(self, item: object) -> None:
        assert isinstance(item, tuple)
        kind, value = item
        if kind == "text":
            self._on_user_text(value)
        elif kind == "tool_result":
            self._on_tool_result(value)
        elif kind == "mcp_approval":
            self._on_mcp_approval(value)
        elif kind == "rich_choice":
            self._on_rich_choice(value)
        elif kind == "start":
            self._on_speech_start()
        elif kind == "end":
            self._on_speech_end(value)

    def _run_fault_steps(self, steps: Iterable[Step]) -> None:
        steps = tuple(steps)
        if not steps:
            return
        try:
            run_steps(self.session, steps, stopping=self._stopping)
        except ScriptFailure as exc:
            self.session.record_error(f"fault step failed: {exc}")

    def _after_first_message(self) -> None:
        self._run_fault_steps(self.faults.after_first_message)

    def _ping(self) -> None:
        self.session.send_ping()
        assert self.ping_interval
        self._schedule(self.ping_interval, self._ping)

    # -- talking ---------------------------------------------------------------------------

    def _on_user_text(self, text: str) -> None:
        if self.faults.on_user_message and not self._user_fault_used:
            self._user_fault_used = True
            self._run_fault_steps(self.faults.on_user_message)
            return
        if self.faults.response_delay > 0:
            self._schedule(self.faults.response_delay, lambda: self._reply(text))
        else:
            self._reply(text)

    def _reply(self, text: str) -> None:
        if self._ended:
            return
        agent = self.session.agent
        if agent.respond is not None:
            custom = agent.respond(text)
            if custom is not None:
                self._speak(custom)
                return
        lower = text.lower()
        if _END_RE.search(lower):
            self._ended = True
            self._speak(GOODBYE, then=self._end_call)
            return
        for keyword, rule in agent.tools.items():
            if re.search(rf"\b{re.escape(keyword.lower())}\b", lower):
                self._call_tool(rule)
                return
        if self._special_reply(lower):
            return
        hint = "say bye to end the call"
        if agent.tools:
            hint = f"ask me about {' or '.join(agent.tools)}, or {hint}"
        if _GREETING_RE.search(lower):
            self._speak(f"Hello there! You can {hint}.")
        else:
            self._speak(f"You said: {text.strip()}. You can {hint}.")

    # -- the rules beyond plain replies ----------------------------------------------------

    def _special_reply(self, lower: str) -> bool:
        session = self.session
        if _GUARDRAIL_RE.search(lower):
            session.send({"type": "guardrail_triggered"})
            self._speak("Sorry, I can't help with that.")
        elif _MCP_RE.search(lower):
            self._start_mcp_call()
        elif _CONTEXT_RE.search(lower):
            used = 1200 + 150 * len(session.responses)
            session.send(
                self._message(
                    "context_usage",
                    model="sim-llm",
                    context_tokens=used,
                    context_limit_tokens=CONTEXT_LIMIT,
                )
            )
            self._speak(f"I have used {used} of {CONTEXT_LIMIT} context tokens.")
        elif _RICH_RE.search(lower):
            rich_id = f"rc_sim_{secrets.token_hex(4)}"
            self._rich_ids.add(rich_id)
            session.send(
                self._message(
                    "rich_content",
                    rich_content_id=rich_id,
                    component="buttons",
                    props={"title": "How can I help?", "options": list(RICH_OPTIONS)},
                )
            )
            self._speak("Pick one.")
        elif _ATTACH_RE.search(lower):
            self._speak("Here is the document you asked for.", attachments=[ATTACHMENT])
        elif _HUMAN_RE.search(lower):
            session.send({"type": "external_agent_connected"})
            session.send(self._message("agent_typing", is_typing=True, duration_ms=None))
            session.send(self._message("agent_typing", is_typing=False, duration_ms=300))
            self._speak("Hi, this is a human operator. I will hand you back to the agent.")
            session.send({"type": "external_agent_disconnected"})
        elif _REASON_RE.search(lower):
            reasoning = "The user wants me to think first."
            for part, text in (("start", ""), ("delta", reasoning), ("stop", "")):
                session.send(
                    {
                        "type": "agent_reasoning_response_part",
                        "reasoning_response_part": {
                            "text": text,
                            "type": part,
                            "event_id": f"reason_{len(session.responses)}",
                        },
                    }
                )
            self._speak("I thought about it: yes.")
        else:
            return False
        return True

    def _start_mcp_call(self) -> None:
        session = self.session
        call_id = f"sim_mcp_{secrets.token_hex(6)}"
        base = {
            "service_id": MCP_SERVICE_ID,
            "tool_call_id": call_id,
            "tool_name": MCP_TOOL_NAME,
            "tool_description": "Look up the refund policy",
            "parameters": {"topic": "refund"},
        }
        self._pending_mcp[call_id] = base
        session.send(
            self._message(
                "agent_tool_request", tool_name=MCP_TOOL_NAME, tool_call_id=call_id, tool_type="mcp"
            )
        )
        timeout = session.agent.mcp_approval_timeout
        session.send(
            self._message(
                "mcp_tool_call", state="awaiting_approval", approval_timeout_secs=timeout, **base
            )
        )
        self._schedule(timeout, lambda: self._finish_mcp(call_id, None))

    def _on_mcp_approval(self, msg: dict[str, Any]) -> None:
        if msg["tool_call_id"] not in self._pending_mcp:
            self.session.record_error(
                f"mcp_tool_approval_result for unknown tool_call_id {msg['tool_call_id']!r}"
            )
            return
        self._finish_mcp(msg["tool_call_id"], bool(msg["is_approved"]))

    def _finish_mcp(self, call_id: str, approved: bool | None) -> None:
        base = self._pending_mcp.pop(call_id, None)
        if base is None:
            return  # answered already (or the timeout after an answer)
        session = self.session
        if approved:
            session.send(self._message("mcp_tool_call", state="loading", **base))
            session.send(
                self._message(
                    "mcp_tool_call",
                    state="success",
                    result=[{"type": "text", "text": MCP_RESULT}],
                    **base,
                )
            )
            text = MCP_RESULT
        else:
            why = "refused by the user" if approved is False else "approval timed out"
            session.send(self._message("mcp_tool_call", state="failure", error_message=why, **base))
            text = f"I could not look that up: the tool call was {why}."
        session.send(
            self._message(
                "agent_tool_response",
                tool_name=MCP_TOOL_NAME,
                tool_call_id=call_id,
                tool_type="mcp",
                is_error=not approved,
                is_called=bool(approved),
            )
        )
        self._speak(text)

    def _on_rich_choice(self, msg: dict[str, Any]) -> None:
        if msg["rich_content_id"] not in self._rich_ids:
            self._on_user_text(msg["text"])
            return
        self._speak(f"You chose {msg['text'].strip()}.")

    def _speak(
        self,
        text: str,
        then: Callable[[], None] | None = None,
        *,
        attachments: list[dict[str, Any]] | None = None,
    ) -> None:
        session = self.session
        record = ResponseRecord(session.next_event_id(), text)
        if session.sends("internal_tentative_agent_response"):
            session.send(
                {
                    "type": "internal_tentative_agent_response",
                    "tentative_agent_response_internal_event": {"tentative_agent_response": text},
                }
            )
        if session.text_only:
            session.responses.append(record)
            for msg in chat_part_messages(text, record.event_id):
                session.send(msg)
            session.send(agent_response_message(text, record.event_id, attachments))
            if then is not None:
                then()
            return
        chunks = encode_chunks(
            speech_pcm16k(text, session.tts),
            session.agent.output_format,
            session.audio_chunk_seconds,
        )
        record.chunks_total = len(chunks)
        record.audio_seconds = format_seconds(sum(map(len, chunks)), session.agent.output_format)
        session.responses.append(record)  # complete before anyone can see it
        utterance = _Utterance(record, chunks, then, attachments=attachments)
        if self._current is None:
            self._begin(utterance)
        else:
            self._queued.append(utterance)

    def _begin(self, utterance: _Utterance) -> None:
        self._current = utterance
        utterance.started = time.monotonic()
        self.session.send(
            agent_response_message(
                utterance.record.text, utterance.record.event_id, utterance.attachments
            )
        )
        self._send_chunk(utterance)

    def _send_chunk(self, utterance: _Utterance) -> None:
        if utterance is not self._current:
            return  # interrupted meanwhile
        record = utterance.record
        if record.chunks_sent < record.chunks_total:
            chunk = utterance.chunks[record.chunks_sent]
            self.session.send(audio_message(chunk, record.event_id))
            record.chunks_sent += 1
        if record.chunks_sent < record.chunks_total:
            due = utterance.started
            if self.realtime_factor:
                due += record.chunks_sent * self.session.audio_chunk_seconds / self.realtime_factor
            self._schedule(max(0.0, due - time.monotonic()), lambda: self._send_chunk(utterance))
            return
        self._finish(utterance)

    def _finish(self, utterance: _Utterance) -> None:
        self._current = None
        if utterance.then is not None:
            utterance.then()
        if self._queued and self._current is None:
            self._begin(self._queued.popleft())

    def _on_speech_start(self) -> None:
        session = self.session
        # The user's turn gets a new, higher event id; the interruption carries it, so every
        # audio chunk of the interrupted response (a lower id) is stale for both official
        # clients' rules (the browser drops ids below it, the Python SDK ids up to it).
        turn_id = session.next_event_id()
        session.send(
            {
                "type": "tentative_user_transcript",
                "tentative_user_transcription_event": {
                    "user_transcript": "...",
                    "event_id": turn_id,
                },
            }
        )
        utterance = self._current
        if utterance is None:
            return
        # Barge-in: stop this response's audio, drop queued ones, correct the text.
        self._current = None
        self._queued.clear()
        record = utterance.record
        record.interrupted = True
        session.interruptions.append(turn_id)
        session.send({"type": "interruption", "interruption_event": {"event_id": turn_id}})
        words = record.text.split()
        kept = math.floor(len(words) * record.chunks_sent / max(1, record.chunks_total))
        record.truncated_text = " ".join(words[:kept]) + "..." if kept < len(words) else record.text
        session.send(
            {
                "type": "agent_response_correction",
                "agent_response_correction_event": {
                    "original_agent_response": record.text,
                    "corrected_agent_response": record.truncated_text,
                    "event_id": record.event_id,
                },
            }
        )
        if utterance.then is not None:
            utterance.then()

    def _on_speech_end(self, duration: float) -> None:
        session = self.session
        template = session.agent.user_transcript
        try:
            text = template.format(duration=duration)
        except (KeyError, IndexError, ValueError):
            text = template  # other braces in it: use it verbatim
        session.send(
            {
                "type": "user_transcript",
                "user_transcription_event": {
                    "user_transcript": text,
                    "event_id": session.next_event_id(),
                },
            }
        )
        session.user_texts.append(text)
        self._on_user_text(text)

    # -- tools -----------------------------------------------------------------------------

    def _call_tool(self, rule: ToolRule) -> None:
        call_id = f"sim_tool_{secrets.token_hex(6)}"
        self._pending_tools[call_id] = rule
        self.session.send(
            {
                "type": "client_tool_call",
                "client_tool_call": {
                    "tool_name": rule.tool_name,
                    "tool_call_id": call_id,
                    "parameters": dict(rule.parameters),
                    "event_id": self.session.next_event_id(),
                },
            }
        )
        self._schedule(rule.timeout, lambda: self._tool_timeout(call_id))

    def _tool_timeout(self, call_id: str) -> None:
        rule = self._pending_tools.pop(call_id, None)
        if rule is not None:
            self._speak(f"Sorry, the {rule.tool_name} tool did not answer in time.")

    def _on_tool_result(self, msg: dict[str, Any]) -> None:
        rule = self._pending_tools.pop(msg["tool_call_id"], None)
        if rule is None:
            self.session.record_error(
                f"client_tool_result for unknown or expired tool_call_id {msg['tool_call_id']!r}"
            )
            return
        result = str(msg["result"])
        if msg["is_error"]:
            text = f"Sorry, the {rule.tool_name} tool failed: {result}"
        else:
            text = rule.reply.replace("{result}", result).replace("{tool_name}", rule.tool_name)
        self._speak(text)

    def _end_call(self) -> None:
        session = self.session
        session.send(
            {
                "type": "agent_tool_response",
                "agent_tool_response": {
                    "tool_name": "end_call",
                    "tool_call_id": f"sim_end_call_{secrets.token_hex(6)}",
                    "tool_type": "system",
                    "is_error": False,
                    "is_called": True,
                    "event_id": session.next_event_id(),
                },
            }
        )
        session.close(1000, "Agent ended the call")
        raise SessionOver("agent ended the call")
