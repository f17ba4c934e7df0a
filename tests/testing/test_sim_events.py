"""Simulator fidelity: ``client_events``, ``vad_score`` only when enabled, every server
message type from scripts (``Step.emit``) and from the default agent's rules, attachments
and files. Every message is checked with the contract and decoded by the protocol layer
into its typed event."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from elevenconv import protocol as p
from elevenconv.errors import ConfigurationError
from elevenconv.testing import AgentSimulator, Step
from elevenconv.testing._contract import _CLIENT_EVENTS, SERVER_MESSAGE_EXAMPLES
from elevenconv.testing._sim_agent import ATTACHMENT, MCP_RESULT, MCP_TOOL_NAME, RICH_OPTIONS
from elevenconv.testing._simulator import (
    CONTRACT_DEFAULT_CLIENT_EVENTS,
    SIM_CLIENT_EVENTS,
    AgentConfig,
    SimulatorError,
)
from tests.fixtures_contract import ContractChecks
from tests.testing.test_simulator import TEXT_ONLY_INIT, Client, audio_chunk, tone

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = {"ping_interval": None, "audio_realtime_factor": None, "tts": "tone"}
ALL_EVENTS = frozenset(_CLIENT_EVENTS)


@pytest.fixture
def connect(contract: ContractChecks) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(url: str) -> Client:
        client = Client(url, contract)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def decode(msg: dict[str, Any]) -> p.ServerEvent:
    (event,) = p.ConversationProtocol().receive_text(json.dumps(msg))
    return event


def say(client: Client, text: str) -> list[dict[str, Any]]:
    """Type ``text``; read until the agent's reply (``agent_response``)."""
    client.send({"type": "user_message", "text": text})
    return client.until(lambda m: m["type"] == "agent_response", timeout=10)


def types_of(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in msgs]


# -- client_events ----------------------------------------------------------------------


def test_default_sets() -> None:
    assert {"vad_score", "internal_turn_probability"}.isdisjoint(SIM_CLIENT_EVENTS)
    assert {"client_tool_call", "agent_chat_response_part", "mcp_tool_call"} <= SIM_CLIENT_EVENTS
    assert SIM_CLIENT_EVENTS <= ALL_EVENTS
    assert {
        "audio",
        "interruption",
        "agent_response",
        "user_transcript",
        "tentative_user_transcript",
        "conversation_initiation_metadata",
        "ping",
    } == CONTRACT_DEFAULT_CLIENT_EVENTS
    assert AgentConfig("a").client_events is None
    assert AgentConfig("a", client_events=["audio"]).client_events == {"audio"}  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown client_events"):
        AgentConfig("a", client_events=frozenset({"audio", "made_up"}))
    with pytest.raises(ConfigurationError, match="list of event names"):
        AgentConfig("a", client_events="audio")  # type: ignore[arg-type]


def test_contract_default_events_reproduce_a_tool_call_that_never_arrives(
    connect: Callable[..., Client],
) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent(
            "plain",
            client_events=CONTRACT_DEFAULT_CLIENT_EVENTS,
            tools={"time": ("get_current_time", {})},
        )
        sim.add_agent("plain-tool", client_events=CONTRACT_DEFAULT_CLIENT_EVENTS)
        client = connect(sim.ws_url("plain"))
        client.start(TEXT_ONLY_INIT)
        first = client.expect("agent_response")  # no agent_chat_response_part before it
        assert "agent_chat_response_part" not in types_of(client.received)
        assert first["agent_response_event"]["agent_response"]
        client.send({"type": "user_message", "text": "what time is it?"})
        session = sim.wait_for_session()
        # The tool call is never sent: the client cannot answer it.
        with pytest.raises(websocket.WebSocketTimeoutException):
            client.recv(timeout=0.5)
        assert "client_tool_call" in session.suppressed
        assert "agent_chat_response_part" in session.suppressed
        assert session.client_events == CONTRACT_DEFAULT_CLIENT_EVENTS


def test_client_override_of_client_events_is_honoured(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        client = connect(sim.ws_url())
        init = {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {
                "conversation": {
                    "text_only": True,
                    "client_events": ["agent_response", "mcp_connection_status"],
                }
            },
        }
        client.start(init)
        status = client.expect("mcp_connection_status")
        event = decode(status)
        assert isinstance(event, p.McpConnectionStatusEvent)
        assert all(isinstance(i, p.McpIntegrationStatus) for i in event.integrations)
        client.expect("agent_response")
        session = sim.wait_for_session()
        assert session.client_events == {"agent_response", "mcp_connection_status"}
        assert "agent_chat_response_part" in session.suppressed


def test_vad_score_only_when_enabled(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent("vad", first_message=None, client_events=SIM_CLIENT_EVENTS | {"vad_score"})
        sim.add_agent("novad", first_message=None)
        results = {}
        for agent in ("vad", "novad"):
            client = connect(sim.ws_url(agent))
            client.start()
            for _ in range(5):
                client.send(audio_chunk(tone(0.1)))
            for _ in range(10):
                client.send(audio_chunk(bytes(3200)))
            got = client.until(lambda m: m["type"] == "user_transcript", timeout=10)
            results[agent] = types_of(got)
        assert "vad_score" in results["vad"]
        assert "vad_score" not in results["novad"]
        assert "tentative_user_transcript" in results["novad"]  # the ear still works
        assert "vad_score" not in sim.sessions[1].suppressed  # not even counted per chunk


def test_startup_messages_when_enabled(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent("all", client_events=ALL_EVENTS)
        client = connect(sim.ws_url("all"))
        client.start()
        got = client.until(lambda m: m["type"] == "agent_response")
        kinds = types_of(got)
        assert kinds[:2] == ["mcp_connection_status", "asr_initiation_metadata"]
        assert isinstance(decode(got[1]), p.AsrInitiationMetadataEvent)
        # internal_tentative_agent_response previews the reply.
        assert "internal_tentative_agent_response" in kinds
        assert kinds.index("internal_tentative_agent_response") < kinds.index("agent_response")


# -- the default agent's rules ------------------------------------------------------------


@pytest.fixture
def text_client(connect: Callable[..., Client]) -> Iterator[tuple[AgentSimulator, Client]]:
    with AgentSimulator(**FAST) as sim:
        client = connect(sim.ws_url())
        client.start(TEXT_ONLY_INIT)
        client.expect("agent_response", skip=("agent_chat_response_part",))
        yield sim, client


def test_guardrail_rule(text_client: tuple[AgentSimulator, Client]) -> None:
    _, client = text_client
    got = say(client, "trigger the guardrail please")
    assert "guardrail_triggered" in types_of(got)
    assert isinstance(decode(got[0]), p.GuardrailTriggeredEvent)
    assert "can't help" in got[-1]["agent_response_event"]["agent_response"]


@pytest.mark.parametrize("approve", [True, False])
def test_mcp_call_needs_approval(text_client: tuple[AgentSimulator, Client], approve: bool) -> None:
    sim, client = text_client
    client.send({"type": "user_message", "text": "can I get a refund?"})
    got = client.until(lambda m: m["type"] == "mcp_tool_call")
    request = decode(got[-2])
    assert isinstance(request, p.AgentToolRequestEvent) and request.tool_type == "mcp"
    call = decode(got[-1])
    assert isinstance(call, p.McpToolCallEvent)
    assert call.awaiting_approval and call.approval_timeout_secs == 30
    assert call.tool_name == MCP_TOOL_NAME and call.tool_description
    approval = p.ConversationProtocol.mcp_tool_approval_result(call.tool_call_id, approve)
    client.send(approval)
    rest = client.until(lambda m: m["type"] == "agent_response")
    states = [m["mcp_tool_call"]["state"] for m in rest if m["type"] == "mcp_tool_call"]
    response = next(decode(m) for m in rest if m["type"] == "agent_tool_response")
    assert isinstance(response, p.AgentToolResponseEvent)
    text = rest[-1]["agent_response_event"]["agent_response"]
    if approve:
        assert states == ["loading", "success"]
        success = decode(
            next(m for m in rest if m.get("mcp_tool_call", {}).get("state") == "success")
        )
        assert isinstance(success, p.McpToolCallEvent)
        assert success.result == ({"type": "text", "text": MCP_RESULT},)
        assert not response.is_error and text == MCP_RESULT
    else:
        assert states == ["failure"]
        assert response.is_error and "refused by the user" in text
    assert sim.wait_for_session().mcp_approvals == [approval]


def test_mcp_call_fails_when_nobody_approves(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent("strict", first_message=None, mcp_approval_timeout=1)
        client = connect(sim.ws_url("strict"))
        client.start(TEXT_ONLY_INIT)
        client.send({"type": "user_message", "text": "refund"})
        waiting = client.until(lambda m: m["type"] == "mcp_tool_call")[-1]
        assert waiting["mcp_tool_call"]["approval_timeout_secs"] == 1
        rest = client.until(lambda m: m["type"] == "agent_response", timeout=10)
        failure = next(m for m in rest if m["type"] == "mcp_tool_call")
        assert failure["mcp_tool_call"]["state"] == "failure"
        assert "timed out" in rest[-1]["agent_response_event"]["agent_response"]
        # A late approval is recorded as an error of the client's making, nothing is sent.
        client.send(
            p.ConversationProtocol.mcp_tool_approval_result(
                waiting["mcp_tool_call"]["tool_call_id"], True
            )
        )
        say(client, "hello")  # handled after the approval: the agent has seen it
        assert types_of(client.received).count("mcp_tool_call") == 2  # nothing more
    assert any("unknown tool_call_id" in e for e in sim.errors)
    with pytest.raises(ConfigurationError, match="mcp_approval_timeout"):
        AgentConfig("x", mcp_approval_timeout=0)


def test_context_usage_rule(text_client: tuple[AgentSimulator, Client]) -> None:
    _, client = text_client
    got = say(client, "how many tokens have you used?")
    usage = decode(next(m for m in got if m["type"] == "context_usage"))
    assert isinstance(usage, p.ContextUsageEvent)
    assert 0 < usage.context_tokens < usage.context_limit_tokens
    assert str(usage.context_tokens) in got[-1]["agent_response_event"]["agent_response"]


def test_rich_content_rule_and_the_choice(text_client: tuple[AgentSimulator, Client]) -> None:
    _, client = text_client
    got = say(client, "show me the options")
    rich = decode(next(m for m in got if m["type"] == "rich_content"))
    assert isinstance(rich, p.RichContentEvent)
    assert rich.component == "buttons" and list(rich.props["options"]) == list(RICH_OPTIONS)
    client.send(
        p.ConversationProtocol.user_message("Billing", rich_content_id=rich.rich_content_id)
    )
    reply = client.until(lambda m: m["type"] == "agent_response")[-1]
    assert reply["agent_response_event"]["agent_response"] == "You chose Billing."


def test_attachment_rule(text_client: tuple[AgentSimulator, Client]) -> None:
    _, client = text_client
    got = say(client, "please attach the document")
    event = decode(got[-1])
    assert isinstance(event, p.AgentResponseEvent)
    assert event.attachments == (p.AgentResponseAttachment(**ATTACHMENT),)
    assert event.conversation_events()[1][0] == "agent_response_attachments"


def test_attachment_in_voice_mode(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent("quiet", first_message=None)
        client = connect(sim.ws_url("quiet"))
        client.start()
        got = say(client, "attach it")
        assert got[-1]["agent_response_event"]["attachments"] == [ATTACHMENT]
        client.expect("audio")


def test_external_agent_rule(text_client: tuple[AgentSimulator, Client]) -> None:
    _, client = text_client
    client.send({"type": "user_message", "text": "let me talk to a human"})
    got = client.until(lambda m: m["type"] == "external_agent_disconnected")
    kinds = types_of(got)
    assert kinds[0] == "external_agent_connected"
    typing = [decode(m) for m in got if m["type"] == "agent_typing"]
    assert [(t.is_typing, t.duration_ms) for t in typing] == [(True, None), (False, 300)]  # type: ignore[attr-defined]
    assert "agent_response" in kinds
    assert isinstance(decode(got[-1]), p.ExternalAgentDisconnectedEvent)


def test_reasoning_rule(text_client: tuple[AgentSimulator, Client]) -> None:
    _, client = text_client
    got = say(client, "think about it")
    parts = [decode(m) for m in got if m["type"] == "agent_reasoning_response_part"]
    assert [e.part_type for e in parts] == ["start", "delta", "stop"]  # type: ignore[attr-defined]
    assert all(e.event_args()[1] in ("start", "delta", "stop") for e in parts)


# -- scripts: every server message type -------------------------------------------------


def test_script_can_emit_every_server_message_type(connect: Callable[..., Client]) -> None:
    types = sorted(SERVER_MESSAGE_EXAMPLES)
    script = [Step.emit(t) for t in types]
    script += [
        Step.emit("mcp_tool_call", state=state, tool_name="lookup")
        for state in ("loading", "awaiting_approval", "success", "failure")
    ]
    script += [
        Step.say("with a file", audio=False, attachments=[{"url": "u", "name": "n"}]),
        Step.expect("user_message"),
    ]
    with AgentSimulator(script=script, **FAST) as sim:
        sim.add_agent("all", client_events=ALL_EVENTS)
        client = connect(sim.ws_url("all"))
        client.start()
        received = [client.recv() for _ in range(len(types) + 4)]
        assert types_of(received) == types + ["mcp_tool_call"] * 4
        for msg in received:
            assert not isinstance(decode(msg), p.UnknownEvent)
        states = [decode(m).state for m in received[-4:]]  # type: ignore[attr-defined]
        assert states == ["loading", "awaiting_approval", "success", "failure"]
        reply = client.until(lambda m: m["type"] == "agent_response")[-1]
        assert reply["agent_response_event"]["attachments"] == [{"url": "u", "name": "n"}]
        client.send({"type": "user_message", "text": "done"})
        sim.wait_for_client_message("user_message")
    assert sim.errors == []


def test_emit_honours_client_events_but_send_does_not(connect: Callable[..., Client]) -> None:
    script = [
        Step.emit("vad_score", vad_score=0.9),  # not enabled for sim-agent: not sent
        Step.send({"type": "vad_score", "vad_score_event": {"vad_score": 0.1}}),
        Step.emit("context_usage", context_tokens=7),
    ]
    with AgentSimulator(script=script, **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        first, second = client.recv(), client.recv()
        assert first["vad_score_event"]["vad_score"] == 0.1
        assert second["context_usage_event"]["context_tokens"] == 7
        assert sim.wait_for_session().suppressed == ["vad_score"]


def test_emit_refuses_unknown_types_and_fields() -> None:
    with pytest.raises(ConfigurationError, match="unknown server message type"):
        Step.emit("nope")
    with pytest.raises(ConfigurationError, match="has no field 'colour'"):
        Step.emit("context_usage", colour="red")
    with pytest.raises(ConfigurationError, match="state"):
        Step.emit("mcp_tool_call", state="dancing")
    with pytest.raises(ConfigurationError, match="no fields"):
        Step.emit("guardrail_triggered", why="x")


def test_simulator_refuses_to_send_malformed_attachments(connect: Callable[..., Client]) -> None:
    bad = [Step.say("x", audio=False, attachments=[{"url": "u"}])]  # no name
    sim = AgentSimulator(script=bad, **FAST).start()
    try:
        client = connect(sim.ws_url())
        client.start()
        code, _, received = client.expect_close()
        assert code == 1011  # the script failed; nothing invalid reached the client
        assert "agent_response" not in types_of(received)
    finally:
        with pytest.raises(SimulatorError, match="attachments"):
            sim.close()
    assert any("attachments" in e for e in sim.contract_errors)


@pytest.mark.parametrize(
    "files",
    [
        [{"type": "file_input"}],
        [{"type": "file_input", "file_id": 3}],
        {"type": "file_input", "file_id": "f"},
        ["f1"],
    ],
)
def test_malformed_files_from_a_client_are_a_violation(
    connect: Callable[..., Client], files: Any
) -> None:
    with AgentSimulator(**FAST) as sim:
        client = connect(sim.ws_url())
        client.start(TEXT_ONLY_INIT)
        client.send(
            {
                "type": "multimodal_message",
                "text": {"type": "user_message", "text": "x"},
                "files": files,
            }
        )
        error = client.expect("error", skip=("agent_chat_response_part", "agent_response"))
        assert error["error_event"]["code"] == 1008
        code, _, _ = client.expect_close()
        assert code == 1008
        (violation,) = sim.violations
        assert any("files" in line for line in violation.problems)


def test_valid_files_are_recorded(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        client = connect(sim.ws_url())
        client.start(TEXT_ONLY_INIT)
        message = p.ConversationProtocol.multimodal_message("what is this?", file_ids=["f1", "f2"])
        client.send(message)
        sim.wait_for_client_message("multimodal_message")
        client.until(lambda m: m["type"] == "agent_response" and "what is this" in json.dumps(m))
        assert sim.wait_for_session().multimodal_messages == [message]
        assert sim.violations == []
