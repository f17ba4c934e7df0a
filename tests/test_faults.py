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

import copy
import gc
import json
import threading
import time
from collections.abc import Iterator
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
def simulator(script: list[Step] | None = None, **options: Any) -> Iterator[AgentSimulator]:
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
    # mcp_tool_call: optional fields may be missing (a wrong type is refused: the typed
    # McpToolCallEvent carries them).
    "mcp_tool_call:mcp_tool_call.parameters:drop",
    "mcp_tool_call:mcp_tool_call.timestamp:drop",
    "mcp_tool_call:mcp_tool_call.approval_timeout_secs:drop",
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
    assert {label for label, _ in BROKEN} >= TOLERATED
    script = [Step.send(BEGIN)]
    script += [Step.send(message, validate=False) for _, message in BROKEN]
    script += [Step.send(END), Step.ping()]
    with simulator(script) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        sim.wait_for_client_message("pong", timeout=scaled(30))
        with events._cond:  # the events thread has delivered everything up to <end>
            assert events._cond.wait_for(
                lambda: any(n == "message" and a[0] == END for n, a in events.calls), scaled(30)
            )
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
        assert wrong == [], "\n".join(wrong)
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
        Step.call(lambda session: playing.wait(scaled(10))),  # until it is mid-audio
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
def test_server_error_message_is_a_typed_error(type_: str, then_close: bool, contract: Any) -> None:
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


# ----------------------------------------------------------------------------------------
# Callbacks


def test_a_raising_callback_is_reported_and_the_session_goes_on(contract: Any) -> None:
    with simulator() as sim:  # the default agent: a greeting, then replies

        def broken(text: str) -> None:
            raise ValueError(f"callback bug on {text!r}")

        conv, events = conversation(sim, callback_agent_response=broken)
        conv.start_session()
        events.wait_for("agent_response")
        conv.send_user_message("hello")
        replies = events.wait_for("agent_response", 2)
        failures = [
            e
            for e in (a[0] for a in events.wait_for("error", 2))
            if not isinstance(e, ElevenConvError)
        ]
        assert [type(e) for e in failures] == [ValueError, ValueError]
        assert [str(e) for e in failures] == [f"callback bug on {r[0]!r}" for r in replies]
        assert conv.is_session_active()
        conv.send_user_message("bye")  # the agent ends the call
        conv.wait_for_session_end(timeout=scaled(10))
    assert events.of("session_ended")[0][1] == 1000
    client_kept_the_contract(sim, contract)


def test_a_blocked_callback_delays_nothing_but_other_callbacks(contract: Any) -> None:
    gate = threading.Event()
    blocked = threading.Event()
    with simulator([said("block here"), Step.ping(), Step.ping(), said("after")]) as sim:
        conv, events = conversation(sim)

        def stuck(text: str) -> None:
            blocked.set()
            gate.wait(scaled(20))

        conv.on("agent_response", stuck)
        conv.start_session()
        try:
            assert blocked.wait(scaled(5))
            # The events thread is stuck; the reader still answers both pings at once.
            assert sim.wait_for_client_message("pong", count=2, timeout=scaled(2))
            # EventLog's listener ran before the stuck one; "after" is queued behind it.
            assert events.of("agent_response") == [("block here",)]
            # end_session() from another thread returns at once and the close handshake
            # happens now, not when the handler returns.
            ender = threading.Thread(target=conv.end_session, name="test-ender")
            ender.start()
            ender.join(scaled(1))
            assert not ender.is_alive()
            session = sim.wait_for_session_end(timeout=scaled(5))
            assert (session.closed_by, session.close_code) == ("client", 1000)
            assert not events.of("session_ended")  # the handler's thread is still busy
        finally:
            gate.set()
        # The barrier: the stuck handler returned, its thread delivered session_ended.
        assert conv.wait_for_session_end(timeout=scaled(5)) == conv.get_conversation_id()
    # What was queued behind the stuck handler was discarded, never run after the end.
    assert [a[0] for a in events.of("agent_response")] == ["block here"]
    assert conv.stats["discarded_events"] >= 1
    assert len(events.of("session_ended")) == 1
    client_kept_the_contract(sim, contract)


@pytest.mark.parametrize("event", ["agent_response", "conversation_started", "message"])
def test_a_callback_that_ends_the_session(event: str, contract: Any) -> None:
    with simulator() as sim:
        conv, events = conversation(sim)
        conv.on(event, lambda *args: conv.end_session())
        conv.start_session()
        assert conv.wait_for_session_end(timeout=scaled(5)) == conv.get_conversation_id()
        assert events.of("session_ended") == [(conv.get_conversation_id(), 1000, "")]
        conv.end_session()  # idempotent
        session = sim.wait_for_session_end(timeout=scaled(5))
    assert (session.closed_by, session.close_code) == ("client", 1000)
    assert not errors_of(events, ElevenConvError)
    client_kept_the_contract(sim, contract)


# ----------------------------------------------------------------------------------------
# Client tools (the default agent calls get_current_time on "what time is it?")


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable>"


async def async_tool(params: dict[str, Any]) -> str:
    import asyncio

    await asyncio.sleep(0)
    return "async noon"


def raising_tool(params: dict[str, Any]) -> str:
    raise RuntimeError("clock is broken")


TOOL_CASES = [
    # (handler, is_error, text in the result, error class emitted or None)
    pytest.param(raising_tool, True, "clock is broken", ToolError, id="raises"),
    pytest.param(
        lambda p: Unserialisable(), True, "not JSON-serialisable", ToolError, id="unserialisable"
    ),
    pytest.param(async_tool, False, "async noon", None, id="async"),
    pytest.param(lambda p: {"hour": 12}, False, '{"hour": 12}', None, id="json"),
]


@pytest.mark.parametrize(("handler", "is_error", "text", "error_cls"), TOOL_CASES)
def test_tool_outcomes_reach_the_agent(
    handler: Any, is_error: bool, text: str, error_cls: type[Exception] | None, contract: Any
) -> None:
    tools = ClientTools()
    tools.register("get_current_time", handler)
    with simulator() as sim:
        conv, events = conversation(sim, client_tools=tools)
        conv.start_session()
        conv.send_user_message("what time is it?")
        result = sim.wait_for_client_message("client_tool_result", timeout=scaled(5))
        assert result["is_error"] is is_error
        assert text in result["result"]
        reply = events.wait_for("agent_response", 2)[1][0]
        assert ("failed" in reply) is is_error and text in reply
        tool_errors = errors_of(events, ToolError)
        if error_cls is None:
            assert tool_errors == []
        else:
            (error,) = tool_errors
            assert error.tool_name == "get_current_time"
            assert error.tool_call_id == result["tool_call_id"]
        assert conv.is_session_active()
        conv.end_session()
    assert sim.errors == []
    client_kept_the_contract(sim, contract)


def test_tool_hanging_past_its_timeout_gets_an_error_result(contract: Any) -> None:
    release = threading.Event()
    finished = threading.Event()

    def hangs(params: dict[str, Any]) -> str:
        release.wait(scaled(20))
        finished.set()
        return "too late"

    tools = ClientTools(timeout=0.3)
    tools.register("get_current_time", hangs)
    try:
        with simulator() as sim:
            conv, events = conversation(sim, client_tools=tools)
            conv.start_session()
            started = time.monotonic()
            conv.send_user_message("what time is it?")
            result = sim.wait_for_client_message("client_tool_result", timeout=scaled(5))
            assert time.monotonic() - started < scaled(0.3 + 2)
            assert result["is_error"] is True and "did not finish within 0.3 s" in result["result"]
            (timeout_error,) = errors_of(events, ToolTimeoutError)
            assert timeout_error.tool_call_id == result["tool_call_id"]
            assert "failed" in events.wait_for("agent_response", 2)[1][0]
            release.set()
            assert finished.wait(scaled(5))
            assert conv.is_session_active()
            conv.end_session()
    finally:
        release.set()
    # The late result was dropped: the agent got exactly one answer (a second one would
    # also be in sim.errors as "unknown tool_call_id").
    assert len(sim.messages_from_client("client_tool_result")) == 1
    assert sim.errors == []
    client_kept_the_contract(sim, contract)


# ----------------------------------------------------------------------------------------
# Concurrency and the graceful end


def test_fifty_threads_sending_at_once_lose_and_interleave_nothing(contract: Any) -> None:
    threads_n, per_thread = 50, 20
    with simulator([]) as sim:  # an empty script: the simulator only listens
        conv, events = conversation(sim)
        conv.start_session()
        barrier = threading.Barrier(threads_n, timeout=scaled(10))
        failures: list[BaseException] = []

        def sender(i: int) -> None:
            try:
                barrier.wait()
                for j in range(per_thread):
                    # Non-ASCII and long enough that interleaved frames could not parse.
                    conv.send_user_message(f"t{i:02d} m{j:02d} " + "ünïcødé " * 40)
            except BaseException as exc:  # reported below
                failures.append(exc)

        senders = [
            threading.Thread(target=sender, args=(i,), name=f"test-sender-{i}")
            for i in range(threads_n)
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join(scaled(20))
        assert failures == []
        total = threads_n * per_thread
        sim.wait_for_client_message("user_message", count=total, timeout=scaled(20))
        conv.end_session()
    texts = [m["text"] for m in sim.messages_from_client("user_message")]
    assert len(texts) == total
    assert all(t.endswith("ünïcødé " * 40) for t in texts)  # every frame whole
    by_thread: dict[str, list[str]] = {}
    for text in texts:
        by_thread.setdefault(text[:3], []).append(text[4:7])
    assert len(by_thread) == threads_n
    for order in by_thread.values():  # each thread's messages in the order it sent them
        assert order == [f"m{j:02d}" for j in range(per_thread)]
    assert events.of("error") == []
    client_kept_the_contract(sim, contract)


def test_nothing_queued_is_lost_on_a_graceful_end(contract: Any) -> None:
    count = 200
    with simulator([]) as sim:
        conv, events = conversation(sim)
        conv.start_session()
        # Hold the writer on its first send, so that everything below really is queued
        # when end_session() is called (loopback would drain it too fast otherwise).
        sock = conv._sock
        assert sock is not None
        real_send = sock.send
        gate = threading.Event()
        close_queued = threading.Event()

        def held_send(data: str) -> None:
            gate.wait(scaled(10))
            real_send(data)

        sock.send = held_send  # type: ignore[method-assign]
        outbox = conv._outbox
        real_close = outbox.close

        def close(final: object | None = None) -> None:
            real_close(final)
            if type(final).__name__ == "_Close":
                close_queued.set()

        outbox.close = close  # type: ignore[method-assign]
        kinds = ("user_message", "contextual_update", "user_activity")
        for i in range(count):
            kind = kinds[i % 3]
            if kind == "user_message":
                conv.send_user_message(f"message {i}")
            elif kind == "contextual_update":
                conv.send_contextual_update(f"update {i}")
            else:
                conv.register_user_activity()
        ender = threading.Thread(target=conv.end_session, name="test-ender")
        ender.start()
        try:
            assert close_queued.wait(scaled(5))
            assert len(outbox._control) >= count  # all but the one held, plus the close
        finally:
            gate.set()
        ender.join(scaled(10))
        assert not ender.is_alive()
        session = sim.wait_for_session_end(timeout=scaled(5))
    assert (session.closed_by, session.close_code) == ("client", 1000)
    received = sim.messages_from_client(lambda m: m.get("type") in kinds)
    assert len(received) == count
    for i, message in enumerate(received):  # all of them, in order, before the close
        assert message["type"] == kinds[i % 3]
        if i % 3 == 0:
            assert message["text"] == f"message {i}"
        elif i % 3 == 1:
            assert message["text"] == f"update {i}"
    assert events.of("session_ended") == [(conv.get_conversation_id(), 1000, "")]
    client_kept_the_contract(sim, contract)


@pytest.mark.parametrize("server_code", [1000, 1011])
def test_end_session_racing_a_server_close(server_code: int, contract: Any) -> None:
    rounds = 15
    go = threading.Barrier(2, timeout=scaled(10))
    script = [Step.call(lambda session: go.wait()), Step.close(server_code, "server hangs up")]
    with simulator(script) as sim:
        for _ in range(rounds):
            conv, events = conversation(sim)
            conv.start_session()
            go.wait()  # the server closes now...
            conv.end_session()  # ...and so do we
            assert conv.wait_for_session_end(timeout=scaled(5)) == conv.get_conversation_id()
            ((_, code, _),) = events.of("session_ended")  # exactly once
            assert code in (1000, server_code)
            assert not client_threads()
            closed = errors_of(events, ConnectionClosedError)
            assert len(closed) <= 1 and all(e.code == server_code for e in closed)
        sim.wait_for_session_end(timeout=scaled(5))
    assert len(sim.sessions) == rounds
    assert all(s.close_code in (1000, server_code) for s in sim.sessions)
    assert sim.errors == []
    client_kept_the_contract(sim, contract)


# ----------------------------------------------------------------------------------------
# Endurance: 1,000 sessions in a row (FakeWebSocket: no network, so it stays fast)


def _rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MIB


def one_session(i: int, tools: ClientTools) -> None:
    fake = FakeWebSocket(conversation_id=f"conv_{i}")
    conv = Conversation(
        agent_id="a", requires_auth=False, websocket_factory=fake, client_tools=tools
    )
    conv.start_session()
    conv.send_user_message(f"hello {i}")
    fake.push(agent_response(f"reply {i}", 1))
    fake.push(ping(i, 5))
    fake.wait_for_sent("pong", timeout=scaled(5))
    conv.end_session()
    assert fake.client_close_code == 1000
    assert not conv.is_session_active()


@pytest.mark.timeout(120)
def test_a_thousand_sessions_in_a_row_keep_threads_and_memory_flat() -> None:
    tools = ClientTools()  # shared, like an application would: pool per session
    tools.register("unused", lambda params: None)
    for i in range(20):  # warm up caches, imports, allocator pools
        one_session(i, tools)
    threads_base = threading.active_count()
    started = time.monotonic()
    figures: dict[int, tuple[int, float]] = {}
    for i in range(1, 1001):
        one_session(i, tools)
        if i in (100, 1000):
            figures[i] = (threading.active_count(), _rss_mib())
    elapsed = time.monotonic() - started
    (threads_100, rss_100), (threads_1000, rss_1000) = figures[100], figures[1000]
    print(
        f"\n1,000 sessions in {elapsed:.1f} s: threads {threads_base} -> {threads_100} (100) "
        f"-> {threads_1000} (1000); RSS {rss_100:.1f} MiB (100) -> {rss_1000:.1f} MiB (1000), "
        f"+{rss_1000 - rss_100:.1f} MiB"
    )
    assert threads_100 == threads_1000 == threads_base
    assert not client_threads()
    assert rss_1000 - rss_100 < 20


# ----------------------------------------------------------------------------------------
# Property-based: random JSON shaped like the server's messages


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: huge ints too
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),  # any unicode, surrogates excluded
    st.sampled_from(["", "AAAAAA==", "not base64!", "\u202e", "\x00", "start", "end_call"]),
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def server_like_messages(draw: st.DrawFn) -> str:
    """A server example with random edits: values replaced (any JSON), keys dropped or
    added, at any depth; sometimes the type swapped; sometimes raw junk text."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(st.text(), st.just("{"), st.just("[]"), st.just("null")))
    message = copy.deepcopy(draw(st.sampled_from(list(SERVER_MESSAGE_EXAMPLES.values()))))
    for _ in range(draw(st.integers(1, 4))):
        paths = [(), *_field_paths(message)]
        path = draw(st.sampled_from(paths))
        parent: Any = message
        for key in path[:-1]:
            parent = parent[key]
        target = parent[path[-1]] if path else message
        action = draw(st.sampled_from(["replace", "drop", "add", "retype"]))
        if action == "replace" and path:
            parent[path[-1]] = draw(json_value)
        elif action == "drop" and path:
            del parent[path[-1]]
        elif action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=12))] = draw(json_value)
        elif action == "retype":
            message["type"] = draw(
                st.sampled_from(list(SERVER_MESSAGE_EXAMPLES)) | st.text(max_size=12)
            )
    return json.dumps(message, allow_nan=True)


def test_random_server_messages_never_break_the_session(contract: Any) -> None:
    pongs: dict[int, threading.Event] = {}

    def on_send(fake: FakeWebSocket, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "pong":
            event = pongs.get(message.get("event_id"))  # type: ignore[arg-type]
            if event is not None:
                event.set()

    fake = FakeWebSocket(on_send=on_send)
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    errors: list[BaseException] = []
    conv.on("error", errors.append)
    conv.on("audio", lambda pcm, event_id: None)  # so agent audio is decoded too
    conv.start_session()
    threads = {t.name: t for t in client_threads()}
    assert {n.split("-")[1] for n in threads} == {"reader", "writer", "events", "keepalive"}
    sync_ids = iter(range(10**15, 10**16))

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(frame=server_like_messages())
    def feed(frame: str) -> None:
        fake.push_raw(frame)
        # A ping after each frame: its pong proves the reader took the frame and lives.
        sync = next(sync_ids)
        pongs[sync] = threading.Event()
        fake.push(ping(sync))
        assert pongs[sync].wait(scaled(5)), f"no pong after {frame!r:.300}"
        assert conv.is_session_active()

    try:
        feed()
        assert all(t.is_alive() for t in threads.values())
        final = next(sync_ids)
        pongs[final] = threading.Event()
        fake.push(ping(final))
        assert pongs[final].wait(scaled(5))
        # Flush the events thread: everything before the marker has been handled.
        marker = threading.Event()
        conv.on("agent_response", lambda text: marker.set() if text == "<marker>" else None)
        fake.push(agent_response("<marker>", 10**17))
        assert marker.wait(scaled(10))
    finally:
        conv.end_session()
    # Only our own typed errors: anything else would be a bug inside the library.
    assert [e for e in errors if not isinstance(e, ElevenConvError)] == []
    assert 0 < conv.stats["bad_messages"] < 200  # some refused, some read
    for message in fake.sent():  # pongs for odd ids, tool results for odd calls, ...
        contract.validate_client(message)
