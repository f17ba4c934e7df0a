"""Conversation behaviour, each test run against the in-memory FakeWebSocket and a real
WebSocket server on 127.0.0.1 (the ``make_harness`` fixture is parametrised on both)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from elevenconv import ClientTools, Conversation, ConversationInitiationData
from elevenconv.errors import (
    ConnectionClosedError,
    ConnectionFailedError,
    RemoteProtocolError,
    ServerError,
    SessionAlreadyStartedError,
    SessionNotActiveError,
    StartTimeoutError,
    ToolError,
)
from tests.conftest import library_threads, scaled
from tests.fixtures_loopback import Harness
from tests.helpers import (
    EventLog,
    RecordingAudioInterface,
    agent_response,
    audio_message,
    ping,
    tool_call,
)

pytestmark = pytest.mark.timeout(30)


def started(harness: Harness, **kwargs: Any) -> tuple[Conversation, EventLog]:
    conv = harness.conversation(**kwargs)
    events = EventLog(conv)
    conv.start_session()
    return conv, events


# -- start ---------------------------------------------------------------------------------


def test_start_returns_ready_and_initiation_went_first(harness: Harness) -> None:
    conv, events = started(harness)
    assert conv.get_conversation_id() == harness.control.conversation_id
    assert conv.is_session_active()
    conv.send_user_message("hello")  # straight after start: must work
    sent = harness.control.wait_for_sent(count=2, timeout=scaled(5))
    assert sent[0]["type"] == "conversation_initiation_client_data"
    assert sent[0]["conversation_config_override"] == {"conversation": {"text_only": True}}
    assert sent[1] == {"type": "user_message", "text": "hello"}
    assert events.wait_for("conversation_started")[0] == (harness.control.conversation_id,)
    assert events.of("session_started") == [()]


def test_start_twice_raises(harness: Harness) -> None:
    conv, _ = started(harness)
    with pytest.raises(SessionAlreadyStartedError) as info:
        conv.start_session()
    assert isinstance(info.value, RuntimeError)


def test_close_before_metadata_raises_from_start(make_harness: Any) -> None:
    def refuse(control: Any, message: Any) -> None:
        if (
            isinstance(message, dict)
            and message.get("type") == "conversation_initiation_client_data"
        ):
            control.server_close(1008, "agent not found")

    harness = make_harness(auto_metadata=False, on_send=refuse)
    conv = harness.conversation()
    with pytest.raises(ConnectionFailedError, match="1008"):
        conv.start_session()
    assert not conv.is_session_active()
    assert not library_threads()


def test_no_metadata_times_out(make_harness: Any) -> None:
    harness = make_harness(auto_metadata=False)
    conv = harness.conversation(start_timeout=0.3)
    with pytest.raises(StartTimeoutError) as info:
        conv.start_session()
    assert isinstance(info.value, TimeoutError)
    assert not library_threads()


def test_send_before_start_and_after_end(harness: Harness) -> None:
    conv = harness.conversation()
    with pytest.raises(SessionNotActiveError):
        conv.send_user_message("too early")
    conv.start_session()
    conv.end_session()
    with pytest.raises(RuntimeError):
        conv.send_contextual_update("too late")


def test_context_manager_starts_and_ends(harness: Harness) -> None:
    with harness.conversation() as conv:
        assert conv.is_session_active()
    assert not conv.is_session_active()
    assert harness.control.wait_closed(scaled(5))


# -- end -----------------------------------------------------------------------------------


def test_end_session_is_idempotent_and_sends_1000(harness: Harness) -> None:
    ended: list[int] = []
    conv, events = started(harness, callback_end_session=lambda: ended.append(1))
    conv.end_session()
    conv.end_session()
    conv.wait_for_session_end(scaled(5))  # the barrier: every thread has exited
    assert not library_threads()
    assert harness.control.wait_closed(scaled(5))
    assert harness.control.client_close_code == 1000
    assert ended == [1]
    assert events.of("session_ended") == [(harness.control.conversation_id, 1000, "")]
    assert conv.wait_for_session_end(timeout=1) == harness.control.conversation_id


def test_end_session_from_many_threads_at_once(harness: Harness) -> None:
    conv, events = started(harness)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def end() -> None:
        try:
            barrier.wait(scaled(5))
            conv.end_session()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=end) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(10))
    assert not errors
    assert len(events.of("session_ended")) == 1
    assert not library_threads()


def test_end_session_from_an_event_handler(harness: Harness) -> None:
    conv = harness.conversation()
    events = EventLog(conv)
    conv.on("agent_response", lambda text: conv.end_session())
    conv.start_session()
    harness.control.push(agent_response("bye"))
    assert conv.wait_for_session_end(timeout=scaled(5)) == harness.control.conversation_id
    assert len(events.of("session_ended")) == 1
    assert events.of("error") == []
    assert not library_threads()


def test_end_session_from_a_tool(harness: Harness) -> None:
    tools = ClientTools()
    conv = harness.conversation(client_tools=tools)
    tools.register("hang_up", lambda params: conv.end_session())
    events = EventLog(conv)
    conv.start_session()
    harness.control.push(tool_call("hang_up", "c1", {}))
    assert conv.wait_for_session_end(timeout=scaled(5))
    assert len(events.of("session_ended")) == 1


def test_end_session_racing_a_server_close(harness: Harness) -> None:
    conv, events = started(harness)
    harness.control.server_close(1000, "agent hung up")
    conv.end_session()
    assert len(events.wait_for("session_ended")) == 1
    assert not library_threads()


def test_server_close_reports_code_and_reason(harness: Harness) -> None:
    conv, events = started(harness)
    harness.control.server_close(3000, "custom reason")
    assert conv.wait_for_session_end(timeout=scaled(5)) == harness.control.conversation_id
    assert events.of("session_ended") == [(harness.control.conversation_id, 3000, "custom reason")]
    errors = [args[0] for args in events.of("error")]
    assert any(isinstance(e, ConnectionClosedError) and e.code == 3000 for e in errors)
    assert not conv.is_session_active()


def test_normal_server_close_is_not_an_error(harness: Harness) -> None:
    conv, events = started(harness)
    harness.control.server_close(1000, "")
    conv.wait_for_session_end(timeout=scaled(5))
    assert events.of("session_ended")[0][1] == 1000
    assert events.of("error") == []


def test_connection_drop_ends_session_with_an_error(harness: Harness) -> None:
    conv, events = started(harness)
    harness.control.drop()
    conv.wait_for_session_end(timeout=scaled(5))
    ((_conv_id, code, _reason),) = events.of("session_ended")
    assert code is None or code == 1006
    assert any(isinstance(args[0], ConnectionClosedError) for args in events.of("error"))


def test_wait_for_session_end_times_out(harness: Harness) -> None:
    conv, _ = started(harness)
    with pytest.raises(TimeoutError):
        conv.wait_for_session_end(timeout=0.05)


# -- server errors and bad input -----------------------------------------------------------


@pytest.mark.parametrize("msg_type", ["error", "client_error"])
def test_server_error_message_reaches_error_listeners(harness: Harness, msg_type: str) -> None:
    conv, events = started(harness)
    harness.control.push(
        {
            "type": msg_type,
            "error_event": {"code": 1002, "message": "LLM timed out", "error_type": "llm_timeout"},
        }
    )
    ((exc,),) = events.wait_for("error")
    assert isinstance(exc, ServerError)
    assert exc.message == "LLM timed out" and exc.error_type == "llm_timeout" and exc.code == 1002
    assert conv.is_session_active()


BAD_FRAMES: list[Any] = [
    "not json",
    b"\x00\x01binary",
    '{"no_type": 1}',
    '{"type": "from_the_future", "x": 1}',
    '{"type": "agent_response"}',
    '{"type": "agent_response", "agent_response_event": {"agent_response": 7, "event_id": 1}}',
    '{"type": "audio", "audio_event": {"audio_base_64": 5, "event_id": 1}}',
    '{"type": "ping", "ping_event": {"event_id": 5}}',
    '{"type": "client_tool_call", "client_tool_call": {"tool_name": 1}}',
    "[]",
]


def test_malformed_input_never_ends_the_session(harness: Harness) -> None:
    conv, events = started(harness)
    for frame in BAD_FRAMES:
        harness.control.push_raw(frame)
    harness.control.push_metadata("second_metadata")  # must be ignored
    harness.control.push(agent_response("still here"))
    assert events.wait_for("agent_response")[0] == ("still here",)
    assert conv.is_session_active()
    assert conv.get_conversation_id() == harness.control.conversation_id
    protocol_errors = [
        args[0] for args in events.of("error") if isinstance(args[0], RemoteProtocolError)
    ]
    assert len(protocol_errors) == 9  # all but the unknown type and the valid ping, + metadata
    unknown = [args[0] for args in events.of("message") if args[0].get("type") == "from_the_future"]
    assert unknown == [{"type": "from_the_future", "x": 1}]
    assert harness.control.wait_for_sent("pong")[0] == {"type": "pong", "event_id": 5}


# -- handlers --------------------------------------------------------------------------------


def test_a_raising_handler_is_logged_and_reported(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    conv, events = started(harness)

    def broken(text: str) -> None:
        raise ValueError("handler bug")

    conv.on("agent_response", broken)
    with caplog.at_level(logging.ERROR, logger="elevenconv"):
        harness.control.push(agent_response("one", 1))
        harness.control.push(agent_response("two", 2))
        assert [a[0] for a in events.wait_for("agent_response", 2)] == ["one", "two"]
        errors = events.wait_for("error", 2)
    assert all(isinstance(e[0], ValueError) for e in errors)
    assert "handler bug" in caplog.text and "Traceback" in caplog.text
    assert conv.is_session_active()


def test_unhandled_error_event_does_not_kill_any_thread(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    conv = harness.conversation()
    got: list[str] = []
    done = threading.Event()
    conv.on("agent_response", lambda text: (_ for _ in ()).throw(RuntimeError("no error listener")))
    conv.on("user_transcript", lambda text: (got.append(text), done.set()))
    conv.start_session()
    with caplog.at_level(logging.WARNING, logger="elevenconv"):
        harness.control.push(agent_response("x"))
        harness.control.push_raw("garbage")
        harness.control.push(
            {
                "type": "user_transcript",
                "user_transcription_event": {"user_transcript": "hi", "event_id": 3},
            }
        )
        assert done.wait(scaled(5))
    assert got == ["hi"]
    assert "unhandled error event" in caplog.text
    assert {t.name.split("-")[1] for t in library_threads()} >= {"reader", "writer", "events"}


def test_a_blocked_handler_does_not_delay_pong_or_routing(harness: Harness) -> None:
    conv, events = started(harness)
    gate = threading.Event()
    conv.on("agent_response", lambda text: gate.wait(scaled(10)))
    try:
        harness.control.push(agent_response("slow handler"))
        harness.control.push(ping(77, 20))
        # The handler is blocked; the pong must still go out at once.
        assert harness.control.wait_for_sent("pong", timeout=scaled(1))[0] == {
            "type": "pong",
            "event_id": 77,
        }
        assert events.of("latency_measurement") == []  # queued behind the blocked handler
    finally:
        gate.set()
    assert events.wait_for("latency_measurement")[0] == (20,)


def test_handlers_run_on_the_events_thread(harness: Harness) -> None:
    _conv, events = started(harness)
    harness.control.push(agent_response("hi"))
    events.wait_for("agent_response")
    assert all(name.startswith("elevenconv-events-") for name in events.threads["agent_response"])


def test_official_callback_names(harness: Harness) -> None:
    calls: list[tuple[str, Any]] = []
    done = threading.Event()
    conv = harness.conversation(
        callback_agent_response=lambda t: calls.append(("response", t)),
        callback_agent_response_correction=lambda o, c: calls.append(("correction", (o, c))),
        callback_user_transcript=lambda t: calls.append(("transcript", t)),
        callback_latency_measurement=lambda ms: calls.append(("latency", ms)),
        callback_agent_chat_response_part=lambda t, kind: calls.append(("part", (t, kind))),
        callback_audio_alignment=lambda a: calls.append(("alignment", a.chars)),
        callback_message_received=lambda m: calls.append(("message", m["type"])),
        callback_end_session=lambda: done.set(),
    )
    conv.on("audio", lambda pcm, event_id: None)  # text-only: alignment still delivered
    conv.start_session()
    c = harness.control
    c.push(agent_response("a"))
    c.push(
        {
            "type": "agent_response_correction",
            "agent_response_correction_event": {
                "original_agent_response": "long",
                "corrected_agent_response": "lo",
                "event_id": 1,
            },
        }
    )
    c.push(
        {
            "type": "user_transcript",
            "user_transcription_event": {"user_transcript": "u", "event_id": 2},
        }
    )
    c.push(ping(1, 33))
    c.push(
        {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": "d", "type": "delta", "event_id": 3},
        }
    )
    c.push(
        {
            "type": "audio",
            "audio_event": {
                "audio_base_64": "AAAA",
                "event_id": 4,
                "alignment": {
                    "chars": ["h", "i"],
                    "char_start_times_ms": [0, 10],
                    "char_durations_ms": [10, 10],
                },
            },
        }
    )
    c.server_close(1000, "")
    assert done.wait(scaled(5))
    kinds = [k for k, _ in calls if k != "message"]
    assert kinds == ["response", "correction", "transcript", "latency", "part", "alignment"]
    assert ("correction", ("long", "lo")) in calls and ("part", ("d", "delta")) in calls
    assert ("alignment", ("h", "i")) in calls
    assert [v for k, v in calls if k == "message"][:2] == [
        "conversation_initiation_metadata",
        "agent_response",
    ]


# -- tools -----------------------------------------------------------------------------------


def test_tool_results_are_strings_and_run_on_the_pool(harness: Harness) -> None:
    tools = ClientTools()
    seen: dict[str, Any] = {}

    def record(name: str, value: Any) -> Any:
        def handler(params: dict[str, Any]) -> Any:
            seen[name] = (params, threading.current_thread().name)
            return value

        return handler

    tools.register("none", record("none", None))
    tools.register("zero", record("zero", 0))
    tools.register("dict", record("dict", {"temp": 21}))
    tools.register("text", record("text", "sunny"))
    _conv, events = started(harness, client_tools=tools)
    for i, name in enumerate(["none", "zero", "dict", "text"]):
        harness.control.push(tool_call(name, f"id{i}", {"city": "Paris"}))
    results = {
        m["tool_call_id"]: m for m in harness.control.wait_for_sent("client_tool_result", count=4)
    }
    assert results["id0"]["result"] == "Client tool: none called successfully."
    assert results["id1"]["result"] == "0"
    assert results["id2"]["result"] == '{"temp": 21}'
    assert results["id3"]["result"] == "sunny"
    assert not any(m["is_error"] for m in results.values())
    assert seen["text"][0] == {"tool_call_id": "id3", "city": "Paris"}
    assert all(thread.startswith("elevenconv-tool") for _, thread in seen.values())
    assert [a[0] for a in events.wait_for("client_tool_call", 4)] == [
        "none",
        "zero",
        "dict",
        "text",
    ]


def test_tool_call_id_never_overwrites_a_real_parameter(harness: Harness) -> None:
    tools = ClientTools()
    got: list[dict[str, Any]] = []
    tools.register("t", lambda params: got.append(params))
    started(harness, client_tools=tools)
    harness.control.push(tool_call("t", "real-id", {"tool_call_id": "user-param"}))
    result = harness.control.wait_for_sent("client_tool_result")[0]
    assert result["tool_call_id"] == "real-id"
    assert got == [{"tool_call_id": "user-param"}]


def test_failing_tool_sends_an_error_result_and_an_error_event(harness: Harness) -> None:
    tools = ClientTools()

    def broken(params: dict[str, Any]) -> str:
        raise LookupError("no such city")

    tools.register("weather", broken)
    conv, events = started(harness, client_tools=tools)
    harness.control.push(tool_call("weather", "w1", {}))
    result = harness.control.wait_for_sent("client_tool_result")[0]
    assert result == {
        "type": "client_tool_result",
        "tool_call_id": "w1",
        "result": "no such city",
        "is_error": True,
    }
    ((exc,),) = events.wait_for("error")
    assert isinstance(exc, ToolError) and isinstance(exc.__cause__, LookupError)
    assert conv.is_session_active()


def test_unregistered_tool(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="elevenconv"):
        _conv, events = started(harness)
        harness.control.push(tool_call("missing_tool", "m1", {"a": 1}))
        result = harness.control.wait_for_sent("client_tool_result")[0]
        assert events.wait_for("unhandled_client_tool_call")[0] == ("missing_tool", {"a": 1})
    assert result["is_error"] is True and "missing_tool" in result["result"]
    assert "missing_tool" in caplog.text


def test_tool_that_expects_no_response_runs_silently(harness: Harness) -> None:
    tools = ClientTools()
    ran = threading.Event()
    tools.register("notify", lambda params: ran.set())
    tools.register("echo", lambda params: "done")
    started(harness, client_tools=tools)
    harness.control.push(tool_call("notify", "n1", {}, expects_response=False))
    harness.control.push(tool_call("echo", "e1", {}))
    assert ran.wait(scaled(5))
    results = harness.control.wait_for_sent("client_tool_result")
    assert [r["tool_call_id"] for r in results] == ["e1"]


def test_async_tool_runs_to_completion(harness: Harness) -> None:
    tools = ClientTools()

    async def lookup(params: dict[str, Any]) -> dict[str, Any]:
        import asyncio

        await asyncio.sleep(0)
        return {"city": params["city"], "ok": True}

    tools.register("lookup", lookup)
    started(harness, client_tools=tools)
    harness.control.push(tool_call("lookup", "a1", {"city": "Oslo"}))
    result = harness.control.wait_for_sent("client_tool_result")[0]
    assert result["result"] == '{"city": "Oslo", "ok": true}' and result["is_error"] is False


def test_client_tools_serve_several_conversations_in_a_row(make_harness: Any) -> None:
    tools = ClientTools()
    tools.register("t", lambda params: "ok")
    for _ in range(3):
        harness = make_harness()
        conv = harness.conversation(client_tools=tools)
        conv.start_session()
        harness.control.push(tool_call("t", "x", {}))
        assert harness.control.wait_for_sent("client_tool_result")[0]["result"] == "ok"
        conv.end_session()
        assert not library_threads()


# -- audio routing and interruption -------------------------------------------------------------


def pcm_of(event_id: int, n: int = 320) -> bytes:
    return bytes([event_id]) * n


def test_interruption_gates_stale_audio(harness: Harness) -> None:
    device = RecordingAudioInterface()
    conv, events = started(harness, audio_interface=device)
    c = harness.control
    c.push(audio_message(1, pcm_of(1)))
    c.push(audio_message(1, pcm_of(1)))
    c.push({"type": "interruption", "interruption_event": {"event_id": 3}})
    c.push(audio_message(2, pcm_of(2)))  # lower than the watermark: never delivered
    c.push(audio_message(3, pcm_of(3)))  # equal: plays
    c.push({"type": "interruption", "interruption_event": {"event_id": 1}})  # older: ignored
    c.push(audio_message(2, pcm_of(2)))
    c.push(audio_message(4, pcm_of(4)))
    device.wait_for(lambda log: sum(1 for k, d in log if k == "output" and d[:1] == b"\x04") == 1)
    outputs = [d[0] for d in device.outputs()]
    assert 2 not in outputs
    assert outputs[-2:] == [3, 4]
    # Nothing queued before the interruption comes out after it.
    kinds = [(k, d[:1]) for k, d in device.log]
    first_interrupt = kinds.index(("interrupt", b""))
    assert all(d != b"\x01" for k, d in kinds[first_interrupt:] if k == "output")
    assert events.wait_for("interruption", 2)[0] == (3,)
    assert conv.stats["stale_audio"] >= 2


def test_interrupt_playback_drops_the_current_response(harness: Harness) -> None:
    device = RecordingAudioInterface()
    conv, _ = started(harness, audio_interface=device)
    harness.control.push(audio_message(5, pcm_of(5)))
    device.wait_for(lambda log: any(k == "output" for k, _ in log))
    conv.interrupt_playback()
    harness.control.push(audio_message(5, pcm_of(5)))  # rest of the interrupted response
    harness.control.push(audio_message(6, pcm_of(6)))  # the next response
    device.wait_for(lambda log: any(k == "output" and d[:1] == b"\x06" for k, d in log))
    assert [d[0] for d in device.outputs()] == [5, 6]


def test_audio_device_lifecycle_and_mic_path(harness: Harness) -> None:
    device = RecordingAudioInterface()
    conv, _ = started(harness, audio_interface=device)
    assert device.started.is_set()
    init = harness.control.sent("conversation_initiation_client_data")[0]
    assert init["conversation_config_override"] == {}  # voice: no text_only flag
    assert device.input_callback is not None
    device.input_callback(b"\x10\x00" * 160)
    chunk = harness.control.wait_for_sent("user_audio_chunk")[0]
    import base64

    assert base64.b64decode(chunk["user_audio_chunk"]) == b"\x10\x00" * 160
    conv.set_mic_muted(True)
    device.input_callback(b"\x10\x00" * 160)
    muted = harness.control.wait_for_sent("user_audio_chunk", count=2)[1]
    assert base64.b64decode(muted["user_audio_chunk"]) == bytes(320)
    conv.end_session()
    assert device.stopped.is_set()
    assert device.log[-1][0] == "stop"


def test_mode_change_follows_playback(harness: Harness) -> None:
    device = RecordingAudioInterface()
    conv, events = started(harness, audio_interface=device)
    harness.control.push(audio_message(1, pcm_of(1, 640)))  # 20 ms of audio
    assert events.wait_for("mode_change", 2) == [("speaking",), ("listening",)]
    assert conv.mode == "listening"


def test_volume_is_applied_when_the_device_cannot(harness: Harness) -> None:
    device = RecordingAudioInterface()
    conv, _ = started(harness, audio_interface=device)
    conv.set_volume(0.5)
    harness.control.push(audio_message(1, (1000).to_bytes(2, "little", signed=True) * 160))
    device.wait_for(lambda log: any(k == "output" for k, _ in log))
    sample = int.from_bytes(device.outputs()[0][:2], "little", signed=True)
    assert sample == 500
    with pytest.raises(ValueError, match="volume"):
        conv.set_volume(1.5)


# -- contract and feedback ------------------------------------------------------------------------


def test_everything_sent_validates_against_the_contract(harness: Harness, contract: Any) -> None:
    tools = ClientTools()
    tools.register("t", lambda params: {"n": 0})
    device = RecordingAudioInterface()
    conv, events = started(
        harness,
        client_tools=tools,
        audio_interface=device,
        config=ConversationInitiationData(
            conversation_config_override={"agent": {"first_message": "hey"}, "tts": {"speed": 1.1}},
            dynamic_variables={"name": "Ada"},
        ),
        user_id="user-1",
    )
    c = harness.control
    c.push(agent_response("hi", 4))
    events.wait_for("agent_response")
    conv.send_user_message("text")
    conv.send_contextual_update("context")
    conv.register_user_activity()
    assert conv.send_feedback(True) is True
    assert conv.send_feedback(True) is False  # already rated
    conv.send_multimodal_message("look", "file-1")
    conv.send_mcp_tool_approval("mcp-1", True)
    c.push(ping(9))
    c.push(tool_call("t", "t1", {}))
    c.push(tool_call("nope", "t2", {}))
    assert device.input_callback is not None
    device.input_callback(bytes(3200))
    c.wait_for_sent("client_tool_result", count=2)
    c.wait_for_sent("user_audio_chunk")
    c.wait_for_sent("pong")
    conv.end_session()
    sent = c.sent()
    assert len(sent) >= 11
    for message in sent:
        contract.validate_client(message)


def test_feedback_before_any_response_is_not_sent(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    conv, _ = started(harness)
    with caplog.at_level(logging.WARNING, logger="elevenconv"):
        assert conv.send_feedback(False) is False
    assert "feedback" in caplog.text
    assert harness.control.sent("feedback") == []


# -- interrupting the wait -----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX-only")
def test_ctrl_c_gets_through_wait_for_session_end() -> None:
    script = textwrap.dedent(
        """
        import sys
        from elevenconv import Conversation
        from elevenconv.testing import FakeWebSocket
        conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=FakeWebSocket())
        conv.start_session()
        try:
            print("waiting", flush=True)
            conv.wait_for_session_end()
        except KeyboardInterrupt:
            conv.end_session()
            print("interrupted", flush=True)
            sys.exit(0)
        sys.exit(3)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=scaled(10))
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted" in out
