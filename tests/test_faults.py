"""Fault injection: the real Conversation against the AgentSimulator's fault hooks.

Each case runs ``Conversation(ElevenLabsClient(base_url=sim.base_url), ...)`` against an
:class:`~elevenconv.testing.AgentSimulator` (a real WebSocket server on loopback) that
misbehaves in one way, and asserts that the session survives where it should, or ends with
the right close code and reason and a typed error where it must. After every case the
autouse ``no_thread_leaks`` fixture checks that no library thread is left, and
:func:`client_kept_the_contract` that the client never broke the contract: no simulator
violation, and every message the simulator received validates against the YAML.

Where the same behaviour is already covered against FakeWebSocket / the loopback peer
(``tests/test_conversation.py``: malformed frames, raising/blocked handlers, end_session()
from a handler or a tool, server close 3000, drop; ``tests/test_tools.py``: timeout and
max_pending on ClientTools alone; ``tests/test_transport.py``: the 16 MiB limit at the
frame header), the cases here are the end-to-end version against the simulator.

Two cases use :class:`~elevenconv.testing.FakeWebSocket` for speed instead: 1,000 sessions
in a row, and the property-based test (hypothesis) over random server messages.
"""

from __future__ import annotations

import base64
import copy
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elevenconv import ClientTools, Conversation, ElevenLabsClient
from elevenconv.errors import (
    ConnectionClosedError,
    ElevenConvError,
    RemoteProtocolError,
    ServerError,
    StartTimeoutError,
    ToolError,
    ToolTimeoutError,
)
from elevenconv.testing import AgentSimulator, FakeWebSocket, Faults, Step
from elevenconv.testing._contract import SERVER_MESSAGE_EXAMPLES, validate_server_message
from elevenconv.testing._sim_steps import MIB
from tests.conftest import library_threads, scaled
from tests.helpers import EventLog, RecordingAudioInterface, agent_response, ping

pytestmark = pytest.mark.timeout(60)

AGENT = "sim-agent"


# ----------------------------------------------------------------------------------------
# Helpers


@contextmanager
def simulator(
    script: list[Step] | None = None, **options: Any
) -> Iterator[AgentSimulator]:
    """A simulator for fast tests: no pacing, no keepalive pings, the synthetic voice."""
    options = {"ping_interval": None, "audio_realtime_factor": None, "tts": "tone", **options}
    with AgentSimulator(script=script, **options) as sim:
        yield sim


def conversation(sim: AgentSimulator, **kwargs: Any) -> tuple[Conversation, EventLog]:
    conv = Conversation(
        ElevenLabsClient(base_url=sim.base_url), AGENT, requires_auth=False, **kwargs
    )
    return conv, EventLog(conv)


def client_kept_the_contract(sim: AgentSimulator, contract: Any) -> int:
    """No violation recorded, every client message contract-valid; returns how many."""
    assert sim.violations == []
    messages = sim.messages_from_client()
    assert messages, "the simulator recorded no client message"
    for message in messages:
        assert isinstance(message, dict), f"not a JSON object: {message!r:.200}"
        contract.validate_client(message)
    return len(messages)


def client_threads() -> list[threading.Thread]:
    """The client library's live threads (the simulator's ``elevenconv-sim-*`` excluded)."""
    return [t for t in library_threads() if not t.name.startswith("elevenconv-sim-")]


def errors_of(events: EventLog, cls: type[BaseException]) -> list[Any]:
    return [args[0] for args in events.of("error") if isinstance(args[0], cls)]


def said(text: str) -> Step:
    """The agent says ``text`` (text mode: chat parts, then agent_response)."""
    return Step.say(text, audio=False)


def tone_pcm(seconds: float) -> bytes:
    return b"\x10\x00\xf0\xff" * int(8000 * seconds)


# ----------------------------------------------------------------------------------------
# Frames the protocol cannot read


@pytest.mark.parametrize(
    ("step", "protocol_errors"),
    [
        pytest.param(Step.malformed(), 1, id="non-json-text"),
        pytest.param(Step.malformed("[1, 2, 3]"), 1, id="json-not-an-object"),
        pytest.param(Step.binary(), 1, id="binary-frame"),
        pytest.param(Step.unknown_type(), 0, id="unknown-type"),
        pytest.param(Step.bad_message("missing_fields"), 1, id="missing-fields"),
        pytest.param(Step.bad_message("wrong_types"), 1, id="wrong-types"),
    ],
)
def test_unreadable_frame_is_reported_and_the_session_goes_on(
    step: Step, protocol_errors: int, contract: Any
) -> None:
    with simulator([step, said("still here"), Step.ping()]) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        assert events.wait_for("agent_response")[0] == ("still here",)
        sim.wait_for_client_message("pong", timeout=scaled(5))
        assert conv.is_session_active()
        bad = errors_of(events, RemoteProtocolError)
        assert len(bad) == protocol_errors
        assert conv.stats["bad_messages"] == protocol_errors
        assert all(e.raw for e in bad)  # carries an excerpt of what arrived
        if step.kind == "send" and isinstance(step.args["message"], dict) and not bad:
            # Unknown type: not dropped silently, it reaches "message" listeners.
            assert step.args["message"] in [args[0] for args in events.of("message")]
        conv.end_session()
        session = sim.wait_for_session_end(timeout=scaled(5))
    assert (session.closed_by, session.close_code) == ("client", 1000)
    assert events.of("session_ended") == [(conv.get_conversation_id(), 1000, "")]
    client_kept_the_contract(sim, contract)


# -- missing / wrongly typed fields, in every server message type -------------------------


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "one"
    if isinstance(value, str):
        return 12345
    if isinstance(value, dict):
        return "not an object"
    if isinstance(value, list):
        return "not a list"
    return ["was", "null"]


def _field_paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in obj.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _field_paths(value, (*prefix, key))


def broken_messages() -> list[tuple[str, dict[str, Any]]]:
    """Every example server message with each field (at any depth) dropped, and each
    field replaced by a value of the wrong type: ``(label, message)`` pairs."""
    out = []
    for type_, example in SERVER_MESSAGE_EXAMPLES.items():
        for path in _field_paths(example):
            for how in ("drop", "wrong"):
                message = copy.deepcopy(example)
                parent = message
                for key in path[:-1]:
                    parent = parent[key]
                if how == "drop":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = _wrong_type(parent[path[-1]])
                out.append((f"{type_}:{'.'.join(path)}:{how}", message))
    return out


#: Contract violations the client reads anyway, on purpose (see elevenconv/protocol.py):
#: a message is never lost over a field it does not need.
TOLERATED = {
    # Start/stop parts carry no text: it defaults to "".
    "agent_chat_response_part:text_response_part.text:drop",
    "agent_reasoning_response_part:reasoning_response_part.text:drop",
    # The contract says a string event id here (unlike everywhere else); an int is accepted.
    "agent_reasoning_response_part:reasoning_response_part.event_id:wrong",
    # A tool call without parameters is a call with none.
    "client_tool_call:client_tool_call.parameters:drop",
    # mcp_tool_call keeps the raw object; only the fields the client acts on are checked.
    "mcp_tool_call:mcp_tool_call.tool_description:wrong",
    "mcp_tool_call:mcp_tool_call.parameters:drop",
    "mcp_tool_call:mcp_tool_call.timestamp:drop",
    "mcp_tool_call:mcp_tool_call.timestamp:wrong",
    "mcp_tool_call:mcp_tool_call.approval_timeout_secs:drop",
    "mcp_tool_call:mcp_tool_call.approval_timeout_secs:wrong",
    # The optional body of these carries nothing the client reads.
    "external_agent_connected:external_agent_connected_event:wrong",
    "external_agent_disconnected:external_agent_disconnected_event:wrong",
    # An error is never lost because of its shape (older servers send it flat).
    *(
        f"{t}:{field}"
        for t in ("error", "client_error")
        for field in (
            "error_event:drop",
            "error_event:wrong",
            "error_event.code:drop",
            "error_event.details:wrong",
        )
    ),
}


def expected_outcome(label: str, message: dict[str, Any]) -> str:
    """``"error"`` (a RemoteProtocolError) or ``"accepted"`` (a ``message`` event)."""
    if message.get("type") == "conversation_initiation_metadata":
        return "error"  # the metadata came already: a second one is always refused
    if validate_server_message(message) and label not in TOLERATED:
        return "error"
    return "accepted"


BROKEN = broken_messages()
BEGIN = agent_response("<begin>", 1)
END = agent_response("<end>", 2)


def test_every_broken_field_of_every_message_type_in_one_session(contract: Any) -> None:
    assert len(BROKEN) > 250
    # A mutation the client accepts must be valid, or listed in TOLERATED (and the other
    # way round: nothing listed there may be refused).
    assert TOLERATED <= {label for label, _ in BROKEN}
    script = [Step.send(BEGIN)]
    script += [Step.send(message, validate=False) for _, message in BROKEN]
    script += [Step.send(END), Step.ping()]
    with simulator(script) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        events.wait_for("agent_response", 2, timeout=30)
        sim.wait_for_client_message("pong", timeout=scaled(5))
        assert conv.is_session_active()
        # One outcome per injected frame, in order: a "message" event (accepted) or a
        # RemoteProtocolError (refused). The events thread delivers both in arrival order.
        with events._cond:
            calls = list(events.calls)
        outcomes: list[tuple[str, Any]] = []
        recording = False
        for name, args in calls:
            if name == "message" and args[0] == BEGIN:
                recording = True
            elif name == "message" and args[0] == END:
                break
            elif recording and name == "message":
                outcomes.append(("accepted", args[0]))
            elif recording and name == "error" and isinstance(args[0], RemoteProtocolError):
                outcomes.append(("error", args[0]))
        assert len(outcomes) == len(BROKEN)
        wrong = []
        for (label, message), (outcome, detail) in zip(BROKEN, outcomes, strict=True):
            wire = json.dumps(message)
            if outcome == "accepted":
                assert detail == message, label  # the frame it belongs to
            else:
                assert isinstance(detail.raw, str) and wire.startswith(detail.raw.rstrip("…"))
            if outcome != expected_outcome(label, message):
                wrong.append(f"{label}: {outcome}")
        assert wrong == []
        refused = sum(1 for outcome, _ in outcomes if outcome == "error")
        assert conv.stats["bad_messages"] == refused
        # Server errors that were read still reach "error" listeners as ServerError.
        read_errors = [
            label
            for (label, _), (outcome, _) in zip(BROKEN, outcomes, strict=True)
            if outcome == "accepted" and label.startswith(("error:", "client_error:"))
        ]
        assert len(errors_of(events, ServerError)) == len(read_errors) > 0
        print(f"\n{len(BROKEN)} broken messages: {refused} refused, {len(BROKEN) - refused} read")
        conv.end_session()
    assert events.of("session_ended")[0][1] == 1000
    assert sim.errors == []
    client_kept_the_contract(sim, contract)


# -- size limits ----------------------------------------------------------------------------


def test_two_mib_audio_frame_is_played_whole(contract: Any) -> None:
    with simulator([Step.huge_audio(2 * MIB), said("after the big one")]) as sim:
        audio = RecordingAudioInterface()
        conv, events = conversation(sim, audio_interface=audio)
        conv.start_session()
        audio.wait_for(lambda log: sum(len(d) for k, d in log if k == "output") >= 2 * MIB, 15)
        assert events.wait_for("agent_response")[0] == ("after the big one",)
        assert sum(len(d) for d in audio.outputs()) == 2 * MIB  # pcm_16000: as sent
        assert conv.is_session_active()
        assert events.of("error") == []
        conv.end_session()
    assert audio.stopped.is_set()
    client_kept_the_contract(sim, contract)


def test_twenty_mb_frame_is_refused_with_1009(contract: Any) -> None:
    with simulator([Step.huge_text(20_000_000)]) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        assert conv.wait_for_session_end(timeout=scaled(15)) == conv.get_conversation_id()
        ((_, code, reason),) = events.of("session_ended")
        assert code == 1009 and "exceeds" in reason
        (closed,) = errors_of(events, ConnectionClosedError)
        assert closed.code == 1009
        assert events.of("agent_response") == []
        session = sim.wait_for_session_end(timeout=scaled(10))
    # (That the payload is refused from the frame header, unread, is tested against a
    # raw frame server in tests/test_transport.py; here the simulator shares our RSS.)
    assert session.close_code in (1009, None), session
    client_kept_the_contract(sim, contract)


# -- start ----------------------------------------------------------------------------------


def test_metadata_never_sent_times_out_the_start(contract: Any) -> None:
    with simulator(faults=Faults(send_metadata=False)) as sim:
        conv, events = conversation(sim, start_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StartTimeoutError, match="conversation_initiation_metadata"):
            conv.start_session()
        assert time.monotonic() - started < scaled(0.5 + 3)
        assert not client_threads()
        assert not conv.is_session_active()
        session = sim.wait_for_session_end(timeout=scaled(5))
    # The client hung up (no close frame: the start was aborted).
    assert session.closed_by in ("client", None)
    assert events.of("session_ended") == []  # the session never started
    (init,) = sim.messages_from_client()
    assert init["type"] == "conversation_initiation_client_data"
    client_kept_the_contract(sim, contract)


# -- the connection ends --------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_tcp_drop_mid_audio_ends_the_session_with_an_error(reset: bool, contract: Any) -> None:
    playing = threading.Event()
    script = [
        Step.say("a long answer that is still being spoken " * 4, audio=True),
        Step.call(lambda session: None if playing.wait(scaled(10)) else None),
        Step.drop(reset=reset),
    ]
    with simulator(script) as sim:
        audio = RecordingAudioInterface()
        conv, events = conversation(sim, audio_interface=audio)
        conv.on("audio", lambda pcm, event_id: playing.set())
        conv.start_session()
        assert conv.wait_for_session_end(timeout=scaled(10)) == conv.get_conversation_id()
        ((_, code, _),) = events.of("session_ended")
        assert code in (None, 1006)
        closed = errors_of(events, ConnectionClosedError)
        assert len(closed) == 1 and closed[0].code in (None, 1006)
        assert audio.outputs()  # it was mid-audio
        assert audio.stopped.is_set()
        assert not conv.is_session_active()
    assert sim.sessions[0].dropped
    client_kept_the_contract(sim, contract)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, "agent ended the call"),
        (1002, "protocol error"),
        (1008, "policy violation: quota exceeded"),
        (3000, "unauthorised — clé invalide"),
    ],
)
def test_server_close_reports_code_and_reason(code: int, reason: str, contract: Any) -> None:
    with simulator([said("about to close"), Step.close(code, reason)]) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        assert conv.wait_for_session_end(timeout=scaled(5)) == conv.get_conversation_id()
        assert events.of("session_ended") == [(conv.get_conversation_id(), code, reason)]
        assert events.of("agent_response") == [("about to close",)]
        closed = errors_of(events, ConnectionClosedError)
        if code == 1000:
            assert events.of("error") == []  # a normal end is not an error
        else:
            assert [(e.code, e.reason) for e in closed] == [(code, reason)]
        conv.end_session()  # idempotent after the end
        session = sim.wait_for_session_end(timeout=scaled(5))
    assert (session.closed_by, session.close_code) == ("server", code)
    client_kept_the_contract(sim, contract)


def error_message(type_: str, code: int = 1011) -> dict[str, Any]:
    return {
        "type": type_,
        "error_event": {
            "code": code,
            "message": "The LLM did not answer in time",
            "error_type": "llm_timeout",
            "reason": "timeout",
        },
    }


@pytest.mark.parametrize("type_", ["error", "client_error"])
@pytest.mark.parametrize("then_close", [False, True], ids=["then-go-on", "then-close-1011"])
def test_server_error_message_is_a_typed_error(
    type_: str, then_close: bool, contract: Any
) -> None:
    tail = [Step.close(1011, "internal error")] if then_close else [said("recovered")]
    with simulator([Step.send(error_message(type_)), *tail]) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        ((server_error,),) = events.wait_for("error")
        assert isinstance(server_error, ServerError)
        assert (server_error.code, server_error.error_type, server_error.message) == (
            1011,
            "llm_timeout",
            "The LLM did not answer in time",
        )
        assert server_error.raw == error_message(type_)
        if then_close:
            conv.wait_for_session_end(timeout=scaled(5))
            assert events.of("session_ended")[0][1:] == (1011, "internal error")
            errors = [args[0] for args in events.of("error")]
            assert [type(e) for e in errors] == [ServerError, ConnectionClosedError]
        else:
            assert events.wait_for("agent_response")[0] == ("recovered",)
            assert conv.is_session_active()
            conv.end_session()
            assert events.of("session_ended")[0][1] == 1000
    client_kept_the_contract(sim, contract)
