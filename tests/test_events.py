"""A typed Conversation event for every server message, the MCP approval flow, feedback
state, and the optional ids of the send_* methods, end to end against the simulator."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, get_args

from elevenconv import Conversation, ConversationEvent, ElevenLabsClient
from elevenconv import protocol as p
from elevenconv.testing import AgentSimulator
from elevenconv.testing._sim_agent import MCP_RESULT, MCP_TOOL_NAME
from tests.conftest import scaled
from tests.helpers import EventLog

FAST = {"ping_interval": None, "audio_realtime_factor": None, "tts": "tone"}


def test_every_server_event_has_a_conversation_event_name() -> None:
    names = set(get_args(ConversationEvent))
    classes = [
        cls
        for _, cls in inspect.getmembers(p, inspect.isclass)
        if issubclass(cls, p.ServerEvent) and dataclasses.is_dataclass(cls)
    ]
    assert len(classes) > 25
    missing = {cls.EVENT for cls in classes if cls.EVENT is not None} - names
    assert not missing, f"events not in ConversationEvent: {missing}"
    assert "agent_response_attachments" in names and "can_send_feedback_change" in names


@contextmanager
def session(**kwargs: Any) -> Iterator[tuple[AgentSimulator, Conversation, EventLog]]:
    with AgentSimulator(**FAST) as sim:
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url), "sim-agent", requires_auth=False, **kwargs
        )
        events = EventLog(conv)
        conv.start_session()
        try:
            yield sim, conv, events
        finally:
            conv.end_session()
            conv.wait_for_session_end(scaled(10))


def test_mcp_approval_callback_decides_and_the_call_completes() -> None:
    asked: list[p.McpToolCallEvent] = []
    on_thread: list[str] = []

    def approve(call: p.McpToolCallEvent) -> bool:
        asked.append(call)
        on_thread.append(threading.current_thread().name)
        return True

    with session(on_mcp_tool_approval_request=approve) as (sim, conv, events):
        events.wait_for("agent_response")
        conv.send_user_message("I want a refund")
        states = [call.state for (call,) in events.wait_for("mcp_tool_call", count=3, timeout=10)]
        sim.wait_for_client_message("mcp_tool_approval_result", timeout=scaled(5))
    assert states[0] == "awaiting_approval" and states[-1] == "success", states
    assert [c.tool_name for c in asked] == [MCP_TOOL_NAME]
    assert on_thread[0].startswith("elevenconv-events-")
    (answer,) = sim.messages_from_client(lambda m: m.get("type") == "mcp_tool_approval_result")
    assert answer["is_approved"] is True and answer["tool_call_id"] == asked[0].tool_call_id
    final = events.of("mcp_tool_call")[-1][0]
    assert MCP_RESULT in str(final.result)


def test_mcp_approval_callback_that_raises_refuses_the_call() -> None:
    def broken(call: p.McpToolCallEvent) -> bool:
        raise RuntimeError("approval UI crashed")

    with session(on_mcp_tool_approval_request=broken) as (sim, conv, events):
        events.wait_for("agent_response")
        conv.send_user_message("refund please")
        sim.wait_for_client_message("mcp_tool_approval_result", timeout=scaled(5))
        errors = events.wait_for("error")
    (answer,) = sim.messages_from_client(lambda m: m.get("type") == "mcp_tool_approval_result")
    assert answer["is_approved"] is False
    assert any("approval UI crashed" in str(e) for (e,) in errors)


def test_manual_mcp_approval() -> None:
    with session() as (sim, conv, events):
        events.wait_for("agent_response")
        conv.send_user_message("refund")
        (call,) = events.wait_for("mcp_tool_call")[0]
        assert call.awaiting_approval
        conv.send_mcp_tool_approval(call.tool_call_id, False)
        sim.wait_for_client_message("mcp_tool_approval_result", timeout=scaled(5))
    (answer,) = sim.messages_from_client(lambda m: m.get("type") == "mcp_tool_approval_result")
    assert answer["is_approved"] is False


def test_can_send_feedback_changes_as_an_event() -> None:
    with session() as (sim, conv, events):
        events.wait_for("agent_response")
        assert events.wait_for("can_send_feedback_change")[0] == (True,)
        assert conv.send_feedback(True)
        changes = events.wait_for("can_send_feedback_change", count=2)
        sim.wait_for_client_message("feedback", timeout=scaled(5))
    assert changes == [(True,), (False,)]


def test_optional_ids_and_files_reach_the_server() -> None:
    with session() as (sim, conv, events):
        events.wait_for("agent_response")
        conv.send_user_message("the blue one", rich_content_id="rc_1")
        conv.send_contextual_update("page: checkout", context_id="page")
        conv.send_multimodal_message("look", file_ids=["file_a", "file_b"])
        sim.wait_for_client_message("multimodal_message", timeout=scaled(5))
        assert sim.violations == []
    (user,) = sim.messages_from_client(
        lambda m: m.get("type") == "user_message" and m.get("text") == "the blue one"
    )
    assert user["rich_content_id"] == "rc_1"
    (update,) = sim.messages_from_client(lambda m: m.get("type") == "contextual_update")
    assert update["context_id"] == "page"
    (multi,) = sim.messages_from_client(lambda m: m.get("type") == "multimodal_message")
    assert multi["files"] == [
        {"type": "file_input", "file_id": "file_a"},
        {"type": "file_input", "file_id": "file_b"},
    ]
    assert multi["file"] == {"type": "file_input", "file_id": "file_a"}
