"""The sans-I/O protocol: plain data in, typed events out; builders checked against the contract."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from elevenconv import protocol as p
from elevenconv.errors import LocalProtocolError, RemoteProtocolError, ServerError
from elevenconv.testing._contract import MCP_TOOL_CALL_EXAMPLES, SERVER_MESSAGE_EXAMPLES

EXPECTED_CLASS = {
    "audio": p.AudioEvent,
    "user_transcript": p.UserTranscriptEvent,
    "tentative_user_transcript": p.TentativeUserTranscriptEvent,
    "agent_response": p.AgentResponseEvent,
    "agent_response_correction": p.AgentResponseCorrectionEvent,
    "agent_chat_response_part": p.AgentChatResponsePartEvent,
    "agent_reasoning_response_part": p.AgentReasoningResponsePartEvent,
    "interruption": p.InterruptionEvent,
    "conversation_initiation_metadata": p.ConversationInitiationMetadataEvent,
    "client_tool_call": p.ClientToolCallEvent,
    "rich_content": p.RichContentEvent,
    "agent_tool_request": p.AgentToolRequestEvent,
    "agent_tool_response": p.AgentToolResponseEvent,
    "agent_tool_response_full_payload": p.AgentToolResponseFullPayloadEvent,
    "mcp_tool_call": p.McpToolCallEvent,
    "mcp_connection_status": p.McpConnectionStatusEvent,
    "vad_score": p.VadScoreEvent,
    "ping": p.PingEvent,
    "context_usage": p.ContextUsageEvent,
    "asr_initiation_metadata": p.AsrInitiationMetadataEvent,
    "guardrail_triggered": p.GuardrailTriggeredEvent,
    "internal_turn_probability": p.InternalTurnProbabilityEvent,
    "internal_tentative_agent_response": p.InternalTentativeAgentResponseEvent,
    "agent_typing": p.AgentTypingEvent,
    "external_agent_connected": p.ExternalAgentConnectedEvent,
    "external_agent_disconnected": p.ExternalAgentDisconnectedEvent,
    "error": p.ErrorEvent,
    "client_error": p.ErrorEvent,
}


def receive(proto: p.ConversationProtocol, message: Any) -> p.ServerEvent:
    events = proto.receive_text(json.dumps(message))
    assert len(events) == 1
    return events[0]


def metadata(conv_id: str = "c1", out: str = "pcm_16000", inp: str = "pcm_16000") -> dict[str, Any]:
    return {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conv_id,
            "agent_output_audio_format": out,
            "user_input_audio_format": inp,
        },
    }


def audio(event_id: int, data: bytes = b"\x01\x02") -> dict[str, Any]:
    return {
        "type": "audio",
        "audio_event": {"audio_base_64": base64.b64encode(data).decode(), "event_id": event_id},
    }


# -- decoding ---------------------------------------------------------------------------


def test_every_contract_server_type_has_an_event_class(contract: Any) -> None:
    assert set(contract.server_types()) | {"client_error"} == set(EXPECTED_CLASS)
    assert set(EXPECTED_CLASS) == p.KNOWN_SERVER_TYPES


@pytest.mark.parametrize("msg_type", sorted(SERVER_MESSAGE_EXAMPLES))
def test_each_server_example_decodes_to_its_class(msg_type: str) -> None:
    message = SERVER_MESSAGE_EXAMPLES[msg_type]
    event = receive(p.ConversationProtocol(), message)
    assert type(event) is EXPECTED_CLASS[msg_type]
    assert event.raw == message  # nothing lost
    assert "raw" not in repr(event)


def test_event_fields_are_typed_and_frozen() -> None:
    proto = p.ConversationProtocol()
    event = receive(
        proto,
        {
            "type": "client_tool_call",
            "client_tool_call": {
                "tool_name": "t",
                "tool_call_id": "x",
                "parameters": {"a": 1},
                "event_id": 4,
            },
        },
    )
    assert isinstance(event, p.ClientToolCallEvent)
    assert (event.tool_name, event.tool_call_id, dict(event.parameters), event.event_id) == (
        "t",
        "x",
        {"a": 1},
        4,
    )
    assert event.expects_response is True
    with pytest.raises(AttributeError):
        event.tool_name = "other"  # type: ignore[misc]
    assert proto.pending_tool_calls == {"x": "t"}


def test_expects_response_false_is_read() -> None:
    event = receive(
        p.ConversationProtocol(),
        {
            "type": "client_tool_call",
            "client_tool_call": {
                "tool_name": "t",
                "tool_call_id": "x",
                "parameters": {},
                "event_id": 1,
                "expects_response": False,
            },
        },
    )
    assert isinstance(event, p.ClientToolCallEvent) and event.expects_response is False


def test_audio_stays_encoded_until_asked() -> None:
    event = receive(p.ConversationProtocol(), audio(3, b"\x00\x01\x02\x03"))
    assert isinstance(event, p.AudioEvent)
    assert event.audio == b"\x00\x01\x02\x03"
    bad = p.AudioEvent("***not base64***", 1)
    with pytest.raises(RemoteProtocolError):
        _ = bad.audio


def test_error_and_client_error_become_server_errors() -> None:
    for msg_type in ("error", "client_error"):
        event = receive(
            p.ConversationProtocol(),
            {
                "type": msg_type,
                "error_event": {
                    "code": 1008,
                    "message": "Missing field 'text'",
                    "error_type": "missing_fields",
                },
            },
        )
        assert isinstance(event, p.ErrorEvent)
        exc = event.to_exception()
        assert isinstance(exc, ServerError)
        assert exc.message == "Missing field 'text'"  # the server's text, verbatim
        assert (exc.code, exc.error_type) == (1008, "missing_fields")
        assert "Missing field 'text'" in str(exc)


def test_error_with_fields_at_top_level_is_not_lost() -> None:
    event = receive(p.ConversationProtocol(), {"type": "error", "message": "boom", "code": 1011})
    assert isinstance(event, p.ErrorEvent) and event.message == "boom" and event.code == 1011


def test_unknown_type_is_kept_raw() -> None:
    message = {"type": "brand_new_event", "brand_new_event": {"x": [1, 2]}}
    event = receive(p.ConversationProtocol(), message)
    assert isinstance(event, p.UnknownEvent)
    assert event.type == "brand_new_event" and event.raw == message


def test_ping_without_ping_ms_is_fine() -> None:
    event = receive(p.ConversationProtocol(), {"type": "ping", "ping_event": {"event_id": 7}})
    assert isinstance(event, p.PingEvent) and event.ping_ms is None and event.event_id == 7


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '"a string"',
        "{}",
        '{"type": 5}',
        '{"type": "audio"}',
        '{"type": "audio", "audio_event": {"event_id": 1}}',
        '{"type": "audio", "audio_event": {"audio_base_64": "AA==", "event_id": "1"}}',
        '{"type": "audio", "audio_event": {"audio_base_64": "AA==", "event_id": true}}',
        '{"type": "agent_response", "agent_response_event": {"agent_response": 5, "event_id": 1}}',
        '{"type": "agent_response", "agent_response_event": "text"}',
        '{"type": "ping", "ping_event": {}}',
        '{"type": "ping", "ping_event": {"event_id": 1, "ping_ms": "fast"}}',
        '{"type": "vad_score", "vad_score_event": {"vad_score": "high"}}',
        '{"type": "interruption", "interruption_event": {"event_id": 1.5}}',
        '{"type": "client_tool_call", "client_tool_call": {"tool_name": "t", "event_id": 1}}',
        '{"type": "client_tool_call", "client_tool_call": {"tool_name": "t", "tool_call_id": "x", '
        '"parameters": [], "event_id": 1}}',
        '{"type": "agent_chat_response_part", "text_response_part": '
        '{"text": "", "type": "middle", "event_id": 1}}',
        '{"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": '
        '{"conversation_id": "c", "agent_output_audio_format": "", '
        '"user_input_audio_format": "pcm_16000"}}',
    ],
)
def test_malformed_input_raises_remote_protocol_error_and_keeps_state(text: str) -> None:
    proto = p.ConversationProtocol()
    before = vars(proto).copy()
    with pytest.raises(RemoteProtocolError) as info:
        proto.receive_text(text)
    assert vars(proto) == before
    assert info.value.raw == text  # short inputs are kept whole


def test_remote_protocol_error_truncates_raw() -> None:
    text = "x" * 10_000
    with pytest.raises(RemoteProtocolError) as info:
        p.ConversationProtocol().receive_text(text)
    assert isinstance(info.value.raw, str)
    assert len(info.value.raw) < 300 and len(str(info.value)) < 400


def test_binary_frames_are_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="binary"):
        p.ConversationProtocol().receive_bytes(b"\x00\x01")


def test_metadata_sets_state_and_a_second_one_is_refused() -> None:
    proto = p.ConversationProtocol()
    assert proto.conversation_id is None
    assert (proto.agent_output_audio_format, proto.user_input_audio_format) == (
        "pcm_16000",
        "pcm_16000",
    )
    receive(proto, metadata("c1", "ulaw_8000", "pcm_44100"))
    assert (
        proto.conversation_id,
        proto.agent_output_audio_format,
        proto.user_input_audio_format,
    ) == (
        "c1",
        "ulaw_8000",
        "pcm_44100",
    )
    with pytest.raises(RemoteProtocolError, match="second"):
        receive(proto, metadata("c2", "pcm_24000", "pcm_24000"))
    assert proto.conversation_id == "c1" and proto.agent_output_audio_format == "ulaw_8000"


# -- interruption gating -----------------------------------------------------------------


def test_interruption_watermark_rules() -> None:
    proto = p.ConversationProtocol()
    assert proto.is_audio_current(0) and proto.is_audio_current(1)
    receive(proto, {"type": "interruption", "interruption_event": {"event_id": 5}})
    assert not proto.is_audio_current(4)  # lower: stale
    assert proto.is_audio_current(5)  # equal: the new response, plays
    assert proto.is_audio_current(6)
    receive(proto, {"type": "interruption", "interruption_event": {"event_id": 2}})
    assert proto.interrupt_watermark == 5  # an older interruption never lowers it
    assert not proto.is_audio_current(4)


def test_local_interruption_drops_audio_received_so_far() -> None:
    proto = p.ConversationProtocol()
    receive(proto, audio(3))
    proto.interrupt_locally()
    assert not proto.is_audio_current(3)
    assert proto.is_audio_current(4)


# -- builders -----------------------------------------------------------------------------


def test_initiation_message_nests_text_only_and_keeps_config(contract: Any) -> None:
    config = p.ConversationInitiationData(
        extra_body={"temperature": 0.2},
        conversation_config_override={
            "agent": {"first_message": "Hi"},
            "conversation": {"client_events": ["audio"]},
        },
        dynamic_variables={"name": "Ada"},
        user_id="u1",
    )
    original = copy.deepcopy(config)
    message = p.ConversationProtocol().initiation_message(config, text_only=True)
    contract.validate_client(message)
    assert message["conversation_config_override"] == {
        "agent": {"first_message": "Hi"},
        "conversation": {"client_events": ["audio"], "text_only": True},
    }
    assert "text_only" not in message  # the official SDK's top-level mistake
    assert message["custom_llm_extra_body"] == {"temperature": 0.2}
    assert message["dynamic_variables"] == {"name": "Ada"}
    assert message["user_id"] == "u1"
    assert message["source_info"]["source"] == "elevenconv"
    assert config == original


def test_initiation_message_without_text_only_leaves_override_alone(contract: Any) -> None:
    message = p.ConversationProtocol().initiation_message(None, text_only=None)
    contract.validate_client(message)
    assert message["conversation_config_override"] == {}
    assert "user_id" not in message


def test_initiation_data_accepts_none_like_the_official_sdk() -> None:
    data = p.ConversationInitiationData(None, None, None)  # type: ignore[arg-type]
    assert (data.extra_body, data.conversation_config_override, data.dynamic_variables) == (
        {},
        {},
        {},
    )


def test_every_builder_output_validates(contract: Any) -> None:
    proto = p.ConversationProtocol()
    receive(
        proto,
        {"type": "agent_response", "agent_response_event": {"agent_response": "hi", "event_id": 9}},
    )
    messages = [
        proto.pong_message(12),
        proto.user_message("hello"),
        proto.contextual_update("the user opened the cart"),
        proto.user_activity(),
        proto.user_audio_chunk(b"\x00\x01" * 10),
        proto.feedback(True),
        proto.client_tool_result("call_1", "42", is_error=False),
        proto.client_tool_result("call_2", "boom", is_error=True),
        proto.mcp_tool_approval_result("call_3", approved=True),
        proto.multimodal_message("look", "file_1"),
        proto.multimodal_message(text="only text"),
        proto.multimodal_message(file_id="only_file"),
    ]
    for message in messages:
        assert message is not None
        contract.validate_client(message)
        json.loads(p.encode_message(message))


def test_pong_echoes_integer_event_id() -> None:
    assert p.ConversationProtocol.pong_message(41) == {"type": "pong", "event_id": 41}
    with pytest.raises(LocalProtocolError):
        p.ConversationProtocol.pong_message("41")  # type: ignore[arg-type]


def test_feedback_rates_each_agent_response_once() -> None:
    proto = p.ConversationProtocol()
    assert proto.feedback(True) is None  # nothing to rate yet
    receive(
        proto,
        {"type": "agent_response", "agent_response_event": {"agent_response": "a", "event_id": 3}},
    )
    assert proto.feedback(False) == {"type": "feedback", "score": "dislike", "event_id": 3}
    assert proto.feedback(True) is None
    receive(
        proto,
        {"type": "agent_response", "agent_response_event": {"agent_response": "b", "event_id": 8}},
    )
    assert proto.feedback(True) == {"type": "feedback", "score": "like", "event_id": 8}


def test_builders_refuse_wrong_types() -> None:
    proto = p.ConversationProtocol()
    with pytest.raises(LocalProtocolError):
        proto.user_message(5)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        proto.client_tool_result("id", {"not": "a str"}, is_error=False)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        proto.multimodal_message()
    with pytest.raises(LocalProtocolError):
        p.encode_message({"x": object()})


def test_client_tool_result_removes_pending_call() -> None:
    proto = p.ConversationProtocol()
    receive(
        proto,
        {
            "type": "client_tool_call",
            "client_tool_call": {
                "tool_name": "t",
                "tool_call_id": "x",
                "parameters": {},
                "event_id": 1,
            },
        },
    )
    proto.client_tool_result("x", "ok", is_error=False)
    assert proto.pending_tool_calls == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "Client tool: clock called successfully."),
        ("12:00", "12:00"),
        ("", ""),
        (0, "0"),
        (False, "false"),
        ([], "[]"),
        ({"h": 12}, '{"h": 12}'),
        (1.5, "1.5"),
        (b"bytes", "bytes"),
    ],
)
def test_client_tool_result_text(value: Any, expected: str) -> None:
    assert p.client_tool_result_text("clock", value) == expected


def test_client_tool_result_text_unserialisable() -> None:
    with pytest.raises(LocalProtocolError, match="not JSON-serialisable"):
        p.client_tool_result_text("clock", object())
    with pytest.raises(LocalProtocolError):
        p.client_tool_result_text("clock", float("nan"))


def test_protocol_module_is_pure() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(p))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {
        "socket",
        "threading",
        "queue",
        "time",
        "asyncio",
        "websocket",
        "requests",
        "select",
    }


# -- Conversation events: every server message has a named, typed event -----------------

#: message type -> (Conversation event name, argument types); None: not posted as such.
EXPECTED_EVENTS: dict[str, tuple[str | None, tuple[type, ...]]] = {
    "audio": (None, ()),
    "user_transcript": ("user_transcript", (str,)),
    "tentative_user_transcript": ("tentative_user_transcript", (str,)),
    "agent_response": ("agent_response", (str,)),
    "agent_response_correction": ("agent_response_correction", (str, str)),
    "agent_chat_response_part": ("agent_chat_response_part", (str, str)),
    "agent_reasoning_response_part": ("agent_reasoning_response_part", (str, str)),
    "interruption": ("interruption", (int,)),
    "conversation_initiation_metadata": (
        "conversation_metadata",
        (p.ConversationInitiationMetadataEvent,),
    ),
    "client_tool_call": ("client_tool_call", (str, dict)),
    "rich_content": ("rich_content", (p.RichContentEvent,)),
    "agent_tool_request": ("agent_tool_request", (p.AgentToolRequestEvent,)),
    "agent_tool_response": ("agent_tool_response", (p.AgentToolResponseEvent,)),
    "agent_tool_response_full_payload": (
        "agent_tool_response",
        (p.AgentToolResponseFullPayloadEvent,),
    ),
    "mcp_tool_call": ("mcp_tool_call", (p.McpToolCallEvent,)),
    "mcp_connection_status": ("mcp_connection_status", (tuple,)),
    "vad_score": ("vad_score", (float,)),
    "ping": ("latency_measurement", (int,)),
    "context_usage": ("context_usage", (p.ContextUsageEvent,)),
    "asr_initiation_metadata": ("asr_initiation_metadata", (dict,)),
    "guardrail_triggered": ("guardrail_triggered", ()),
    "internal_turn_probability": ("internal_turn_probability", (float,)),
    "internal_tentative_agent_response": ("internal_tentative_agent_response", (str,)),
    "agent_typing": ("agent_typing", (bool, int)),
    "external_agent_connected": ("external_agent_connected", ()),
    "external_agent_disconnected": ("external_agent_disconnected", ()),
    "error": ("error", (ServerError,)),
    "client_error": ("error", (ServerError,)),
}


@pytest.mark.parametrize("msg_type", sorted(SERVER_MESSAGE_EXAMPLES))
def test_each_server_message_has_a_typed_conversation_event(msg_type: str) -> None:
    event = receive(p.ConversationProtocol(), SERVER_MESSAGE_EXAMPLES[msg_type])
    name, types = EXPECTED_EVENTS[msg_type]
    assert name == type(event).EVENT
    args = event.event_args()
    assert len(args) == len(types), args
    for arg, expected in zip(args, types, strict=True):
        assert isinstance(arg, expected), (msg_type, arg)
    produced = event.conversation_events()
    if name is None:
        assert produced == ()
    else:
        assert produced[0][0] == name
        assert len(produced[0][1]) == len(args)
        if msg_type not in ("error", "client_error"):  # a new exception each call
            assert produced[0][1] == args


def test_events_table_documents_every_event() -> None:
    doc = p.__doc__ or ""
    names = {name for name, _ in EXPECTED_EVENTS.values() if name is not None}
    names |= {"agent_response_attachments", "can_send_feedback_change", "message"}
    for name in names:
        assert f"* ``{name}(" in doc or f"``{name}(" in doc, f"{name} is not in the table"
    assert set(EXPECTED_EVENTS) == set(SERVER_MESSAGE_EXAMPLES)


def test_unknown_message_has_no_event_of_its_own() -> None:
    event = receive(p.ConversationProtocol(), {"type": "brand_new", "brand_new_event": {}})
    assert isinstance(event, p.UnknownEvent)
    assert event.EVENT is None and event.conversation_events() == ()


def test_agent_response_attachments_are_typed_and_get_their_own_event() -> None:
    event = receive(p.ConversationProtocol(), SERVER_MESSAGE_EXAMPLES["agent_response"])
    assert isinstance(event, p.AgentResponseEvent)
    assert event.attachments == (
        p.AgentResponseAttachment(
            "https://example.com/files/report.pdf", "report.pdf", "application/pdf"
        ),
    )
    assert event.event_args() == ("Hi! How can I help?",)  # the old signature is kept
    assert event.conversation_events() == (
        ("agent_response", ("Hi! How can I help?",)),
        ("agent_response_attachments", (event.attachments, 3)),
    )
    plain = receive(
        p.ConversationProtocol(),
        {"type": "agent_response", "agent_response_event": {"agent_response": "x", "event_id": 1}},
    )
    assert isinstance(plain, p.AgentResponseEvent)
    assert plain.attachments == ()
    assert plain.conversation_events() == (("agent_response", ("x",)),)
    no_mime = receive(
        p.ConversationProtocol(),
        {
            "type": "agent_response",
            "agent_response_event": {
                "agent_response": "x",
                "event_id": 1,
                "attachments": [{"url": "u", "name": "n", "mime_type": None}],
            },
        },
    )
    assert isinstance(no_mime, p.AgentResponseEvent)
    assert no_mime.attachments == (p.AgentResponseAttachment("u", "n", None),)


@pytest.mark.parametrize(
    "attachments",
    [
        None,
        "file",
        [1],
        [{"url": "u"}],
        [{"url": "u", "name": 3}],
        [{"url": "u", "name": "n", "mime_type": 1}],
    ],
)
def test_malformed_attachments_are_a_remote_protocol_error(attachments: Any) -> None:
    proto = p.ConversationProtocol()
    message = {
        "type": "agent_response",
        "agent_response_event": {"agent_response": "x", "event_id": 1, "attachments": attachments},
    }
    if attachments is None:  # null is read as "no attachments"
        event = receive(proto, message)
        assert isinstance(event, p.AgentResponseEvent) and event.attachments == ()
        return
    with pytest.raises(RemoteProtocolError, match="attachments"):
        proto.receive_text(json.dumps(message))
    assert proto.last_agent_event_id == 0  # state unchanged


def test_mcp_tool_call_states_are_typed() -> None:
    events = {
        state: receive(p.ConversationProtocol(), message)
        for state, message in MCP_TOOL_CALL_EXAMPLES.items()
    }
    for state, event in events.items():
        assert isinstance(event, p.McpToolCallEvent)
        assert event.state == state
        assert event.awaiting_approval == (state == "awaiting_approval")
        assert event.timestamp  # the contract requires it
    assert events["awaiting_approval"].approval_timeout_secs == 300  # type: ignore[union-attr]
    assert events["loading"].approval_timeout_secs is None  # type: ignore[union-attr]
    assert events["success"].result == (  # type: ignore[union-attr]
        {"type": "text", "text": "Refunds within 30 days."},
    )
    assert events["failure"].error_message == "timed out"  # type: ignore[union-attr]
    bad = copy.deepcopy(MCP_TOOL_CALL_EXAMPLES["success"])
    bad["mcp_tool_call"]["result"] = "not a list"
    with pytest.raises(RemoteProtocolError, match="result"):
        p.ConversationProtocol().receive_text(json.dumps(bad))


def test_mcp_connection_status_is_typed() -> None:
    event = receive(p.ConversationProtocol(), SERVER_MESSAGE_EXAMPLES["mcp_connection_status"])
    assert isinstance(event, p.McpConnectionStatusEvent)
    assert event.integrations == (p.McpIntegrationStatus("int_1", "mcp_server", True, 3),)
    bad = copy.deepcopy(SERVER_MESSAGE_EXAMPLES["mcp_connection_status"])
    bad["mcp_connection_status"]["integrations"][0]["is_connected"] = "yes"
    with pytest.raises(RemoteProtocolError, match=r"integrations\[0\]\.is_connected"):
        p.ConversationProtocol().receive_text(json.dumps(bad))


def test_optional_ids_of_user_message_and_contextual_update(contract: Any) -> None:
    proto = p.ConversationProtocol()
    assert proto.user_message("Yes") == {"type": "user_message", "text": "Yes"}
    tapped = proto.user_message("Yes", rich_content_id="rc_1")
    assert tapped == {"type": "user_message", "text": "Yes", "rich_content_id": "rc_1"}
    update = proto.contextual_update("cart: 2 items", context_id="cart")
    assert update == {"type": "contextual_update", "text": "cart: 2 items", "context_id": "cart"}
    assert "context_id" not in proto.contextual_update("x")
    for message in (tapped, update):
        contract.validate_client(message)
    with pytest.raises(LocalProtocolError):
        proto.user_message("x", rich_content_id=5)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        proto.contextual_update("x", context_id=5)  # type: ignore[arg-type]


def test_multimodal_message_sends_files_and_file_like_the_official_clients(
    contract: Any,
) -> None:
    build = p.ConversationProtocol.multimodal_message
    one = build("look", "f1")
    assert one == {
        "type": "multimodal_message",
        "text": {"type": "user_message", "text": "look"},
        "file": {"type": "file_input", "file_id": "f1"},
        "files": [{"type": "file_input", "file_id": "f1"}],
    }
    many = build(file_ids=["f1", "f2"])
    assert many["file"] == {"type": "file_input", "file_id": "f1"}
    assert [f["file_id"] for f in many["files"]] == ["f1", "f2"]
    assert "text" not in many
    both = build(file_id="f0", file_ids=["f1", "f2"])
    assert [f["file_id"] for f in both["files"]] == ["f0", "f1", "f2"]
    assert [f["file_id"] for f in build(file_id="f2", file_ids=["f1", "f2"])["files"]] == [
        "f1",
        "f2",
    ]
    text_only = build("just text")
    assert "file" not in text_only and "files" not in text_only
    for message in (one, many, both, text_only):
        contract.validate_client(message)
    for bad in ({"file_ids": "f1"}, {"file_ids": [1]}, {"file_ids": []}, {}):
        with pytest.raises(LocalProtocolError):
            build(**bad)


def test_can_send_feedback_changes_are_reported_once() -> None:
    proto = p.ConversationProtocol()
    assert not proto.can_send_feedback
    assert proto.take_feedback_change() is None
    receive(proto, metadata())
    assert proto.take_feedback_change() is None
    receive(
        proto,
        {"type": "agent_response", "agent_response_event": {"agent_response": "a", "event_id": 3}},
    )
    assert proto.can_send_feedback
    assert proto.take_feedback_change() is True
    assert proto.take_feedback_change() is None
    # A streamed part of the same response changes nothing.
    receive(
        proto,
        {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": "", "type": "stop", "event_id": 3},
        },
    )
    assert proto.take_feedback_change() is None
    assert proto.feedback(True) is not None
    assert not proto.can_send_feedback
    assert proto.take_feedback_change() is False
    assert proto.take_feedback_change() is None


@pytest.mark.parametrize("fmt", ["pcm_32000", "opus_48000", "pcm_16000"])
def test_metadata_accepts_any_audio_format_name(fmt: str) -> None:
    # The voice layer rejects a codec it cannot play; the protocol must not lose the
    # metadata over it (start_session() would wait for nothing).
    proto = p.ConversationProtocol()
    event = receive(proto, metadata(out=fmt, inp=fmt))
    assert isinstance(event, p.ConversationInitiationMetadataEvent)
    assert proto.agent_output_audio_format == fmt == proto.user_input_audio_format


@pytest.mark.parametrize("fmt", ["", "  ", 16000, None])
def test_metadata_needs_an_audio_format_name(fmt: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="audio_format"):
        p.ConversationProtocol().receive_text(json.dumps(metadata(out=fmt)))
