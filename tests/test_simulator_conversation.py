"""Whole conversations between Conversation and the AgentSimulator, checked both ways
against the contract, and barge-in end to end on the PulseAudio stack."""

from __future__ import annotations

import time
from typing import Any

import pytest

from elevenconv import ClientTools, Conversation, ElevenLabsClient
from elevenconv.testing import AgentSimulator
from tests.conftest import library_threads, scaled
from tests.helpers import EventLog

pytestmark = pytest.mark.timeout(60)


def check_transcript(sim: AgentSimulator, contract: Any) -> int:
    """Every message of both directions validates against the YAML contract."""
    checked = 0
    for entry in sim.transcript:
        if not isinstance(entry.message, dict):
            continue
        if entry.direction == "in":
            contract.validate_client(entry.message)
        else:
            contract.validate_server(entry.message)
        checked += 1
    assert sim.violations == []
    return checked


def test_full_text_conversation_is_contract_valid_both_ways(contract: Any) -> None:
    tools = ClientTools()
    tools.register("get_current_time", lambda params: "twelve o'clock")
    with AgentSimulator(ping_interval=0.05, audio_realtime_factor=None) as sim:
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url),
            "sim-agent",
            requires_auth=False,
            client_tools=tools,
        )
        events = EventLog(conv)
        conv.start_session()
        greeting = events.wait_for("agent_response")[0][0]
        assert greeting
        assert {args[1] for args in events.of("agent_chat_response_part")} >= {
            "start",
            "delta",
            "stop",
        }
        conv.send_user_message("What time is it?")
        assert events.wait_for("client_tool_call")[0][0] == "get_current_time"
        replies = events.wait_for("agent_response", 2)
        assert "twelve o'clock" in replies[1][0]
        assert conv.send_feedback(True)
        conv.send_contextual_update("The user is on the pricing page.")
        conv.register_user_activity()
        events.wait_for("latency_measurement", timeout=scaled(5))
        conv.send_user_message("Thanks, bye!")
        assert conv.wait_for_session_end(timeout=scaled(15)) == conv.get_conversation_id()
        assert events.of("session_ended")[0][1] == 1000
        session = sim.wait_for_session_end(timeout=scaled(5))
    assert session.feedback and session.contextual_updates
    assert check_transcript(sim, contract) > 10
    assert events.of("error") == []
    assert not library_threads()


def test_voice_conversation_with_files_is_contract_valid(contract: Any, tmp_path: Any) -> None:
    import numpy as np

    from elevenconv import WavFileAudioInterface
    from elevenconv._fileaudio import read_wav_pcm16_16k, write_wav_pcm16

    rate = 16000
    t = np.arange(int(1.2 * rate)) / rate
    speech = (
        0.5 * 32767 * np.sin(2 * np.pi * 300 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    ).astype("<i2")
    mic = tmp_path / "mic.wav"
    write_wav_pcm16(
        mic, bytes(np.zeros(rate // 2, "<i2")) + speech.tobytes() + bytes(np.zeros(rate, "<i2"))
    )
    out = tmp_path / "agent.wav"
    with AgentSimulator(audio_realtime_factor=None, ping_interval=None, tts="tone") as sim:
        sim.add_agent("voice", output_format="ulaw_8000", input_format="pcm_44100")
        device = WavFileAudioInterface(mic, out, realtime=True, chunk_ms=100)
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url),
            "voice",
            requires_auth=False,
            audio_interface=device,
        )
        events = EventLog(conv)
        conv.start_session()
        assert events.wait_for("user_transcript", timeout=scaled(10))[0][0].startswith("(spoken")
        events.wait_for("agent_response", 2, timeout=scaled(10))
        conv.end_session()
    chunks = sim.messages_from_client("user_audio_chunk")
    assert chunks
    assert check_transcript(sim, contract) > 5
    played = read_wav_pcm16_16k(out)
    assert len(played) > rate  # the agent's speech was converted from ulaw_8000 and recorded


@pytest.mark.audio
@pytest.mark.timeout(90)
def test_barge_in_end_to_end_on_the_sound_server(sound_server: Any, contract: Any) -> None:
    """Voice into the mic bus while the agent speaks -> interruption -> speaker silent."""
    from elevenconv import DefaultAudioInterface
    from tests.fixtures_sound import SpeakerCapture, as_array, play_into_mic, rms, tone

    long_reply = "This is a long answer. " * 12
    with AgentSimulator(audio_realtime_factor=1.0, ping_interval=None, tts="tone") as sim:
        # Its answer to the user's words is held back: under load a late interruption could
        # otherwise let the reply's audio fall into the window that must be silent.
        sim.add_agent("talker", first_message=long_reply, faults={"response_delay": 60.0})
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url),
            "talker",
            requires_auth=False,
            audio_interface=DefaultAudioInterface(),
        )
        events = EventLog(conv)
        with SpeakerCapture() as capture:
            conv.start_session()
            assert events.wait_for("mode_change", timeout=scaled(10))[0] == ("speaking",)
            # The agent is audible; now the user talks over it.
            assert capture.wait_for(lambda: rms(as_array(capture.pcm[-3200:])) > 500, scaled(10))
            with play_into_mic(tone(440, 1.5, amplitude=0.6)):
                interrupted = events.wait_for("interruption", timeout=scaled(10))
                t_interrupt = time.monotonic()
                assert events.wait_for("mode_change", 2, timeout=scaled(5))[1] == ("listening",)
                # After one output buffer plus the device's own latency, the speaker is silent.
                settle = t_interrupt + 0.0625 + 0.25
                assert capture.wait_until(settle + 0.5, scaled(5))
        conv.end_session()
    assert interrupted
    samples = as_array(capture.pcm)

    def index_at(t: float) -> int:
        # time_of(index) maps samples to monotonic time: the first sample played at t.
        lo, hi = 0, len(samples) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if capture.time_of(mid) < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    start = index_at(settle)
    after = samples[start : start + 8000]
    # The 200 ms before the interruption arrived: the agent was talking (it was audible
    # before the user spoke, and the VAD needs longer than this to fire).
    i_interrupt = index_at(t_interrupt)
    before = samples[max(0, i_interrupt - 3200) : i_interrupt]
    print(f"speaker RMS before barge-in {rms(before):.0f}, after {rms(after):.0f}")
    assert rms(before) > 500
    assert rms(after) < 50
    assert any(r.interrupted for r in sim.sessions[0].responses)
    check_transcript(sim, contract)


class Recorder:
    """Listens to the given Conversation events; waits on a Condition (no sleeps)."""

    def __init__(self, conv: Conversation, names: list[str]) -> None:
        import threading

        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._cond = threading.Condition()
        for name in names:
            conv.add_listener(name, self._make(name))

    def _make(self, name: str) -> Any:
        def record(*args: Any) -> None:
            with self._cond:
                self.calls.append((name, args))
                self._cond.notify_all()

        return record

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [args for n, args in self.calls if n == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for n, _ in self.calls if n == name) >= count, scaled(timeout)
            )
            found = [args for n, args in self.calls if n == name]
        assert ok, f"{name}: {len(found)} of {count} within {timeout} s; got {self.calls[-10:]}"
        return found


TYPED_EVENTS = [
    "conversation_metadata",
    "agent_response",
    "agent_response_attachments",
    "agent_reasoning_response_part",
    "agent_tool_request",
    "agent_tool_response",
    "mcp_tool_call",
    "mcp_connection_status",
    "guardrail_triggered",
    "context_usage",
    "rich_content",
    "agent_typing",
    "external_agent_connected",
    "external_agent_disconnected",
    "asr_initiation_metadata",
    "internal_turn_probability",
    "internal_tentative_agent_response",
    "can_send_feedback_change",
    "error",
]


def test_typed_events_of_the_default_agents_rules(contract: Any) -> None:
    from elevenconv import protocol as p
    from elevenconv.testing._contract import _CLIENT_EVENTS

    approvals: list[p.McpToolCallEvent] = []

    def approve(call: p.McpToolCallEvent) -> bool:
        approvals.append(call)
        return True

    with AgentSimulator(ping_interval=None, audio_realtime_factor=None, tts="tone") as sim:
        sim.add_agent("all", client_events=_CLIENT_EVENTS)
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url),
            "all",
            requires_auth=False,
            text_only=True,
            on_mcp_tool_approval_request=approve,
        )
        events = Recorder(conv, TYPED_EVENTS)
        conv.start_session()
        (meta,) = events.wait_for("conversation_metadata")[0]
        assert isinstance(meta, p.ConversationInitiationMetadataEvent)
        assert meta.conversation_id == conv.get_conversation_id()
        (integrations,) = events.wait_for("mcp_connection_status")[0]
        assert all(isinstance(i, p.McpIntegrationStatus) for i in integrations)
        events.wait_for("agent_response")
        assert events.wait_for("can_send_feedback_change")[0] == (True,)
        assert conv.send_feedback(True)
        assert events.wait_for("can_send_feedback_change", 2)[1] == (False,)

        conv.send_user_message("trigger the guardrail")
        assert events.wait_for("guardrail_triggered")[0] == ()
        conv.send_user_message("can I get a refund?")
        states = [
            a[0].state
            for a in events.wait_for("mcp_tool_call", 3)  # awaiting, loading, success
        ]
        assert states == ["awaiting_approval", "loading", "success"]
        assert [c.tool_call_id for c in approvals] == [
            events.of("mcp_tool_call")[0][0].tool_call_id
        ]
        (request,) = events.wait_for("agent_tool_request")[0]
        assert isinstance(request, p.AgentToolRequestEvent) and request.tool_type == "mcp"
        (response,) = events.wait_for("agent_tool_response")[0]
        assert isinstance(response, p.AgentToolResponseEvent) and not response.is_error
        conv.send_user_message("how many tokens?")
        (usage,) = events.wait_for("context_usage")[0]
        assert isinstance(usage, p.ContextUsageEvent) and usage.context_tokens > 0
        conv.send_user_message("show me the options")
        (rich,) = events.wait_for("rich_content")[0]
        assert isinstance(rich, p.RichContentEvent)
        conv.send_user_message("Billing", rich_content_id=rich.rich_content_id)
        conv.send_user_message("attach the document")
        attachments, event_id = events.wait_for("agent_response_attachments")[0]
        assert attachments[0].name == "report.pdf" and isinstance(event_id, int)
        conv.send_user_message("get me a human")
        events.wait_for("external_agent_disconnected")
        assert events.of("external_agent_connected") == [()]
        assert [a[0] for a in events.of("agent_typing")] == [True, False]
        conv.send_user_message("think first")
        parts = events.wait_for("agent_reasoning_response_part", 3)
        assert [a[1] for a in parts] == ["start", "delta", "stop"]
        assert events.of("internal_tentative_agent_response")
        conv.send_contextual_update("cart: 2 items", context_id="cart")
        conv.send_multimodal_message("what is this?", file_ids=["f1", "f2"])
        conv.send_user_message("bye")
        conv.wait_for_session_end(timeout=scaled(15))
        session = sim.wait_for_session_end(timeout=scaled(5))
    replies = [r.text for r in session.responses]
    assert "You chose Billing." in replies
    assert session.mcp_approvals[0]["is_approved"] is True
    assert session.multimodal_messages[0]["files"][1]["file_id"] == "f2"
    assert check_transcript(sim, contract) > 30
    assert events.of("error") == []


def test_every_server_message_reaches_its_named_event(contract: Any) -> None:
    """A script emits one message of every server type; each reaches the Conversation event
    its class names (``EVENT``), with the arguments of ``event_args()``."""
    from elevenconv import protocol as p
    from elevenconv.testing import Step
    from elevenconv.testing._contract import _CLIENT_EVENTS, SERVER_MESSAGE_EXAMPLES

    skip = {"conversation_initiation_metadata", "error", "client_error", "audio", "ping"}
    types = sorted(set(SERVER_MESSAGE_EXAMPLES) - skip)
    script = [Step.emit(t) for t in types]
    script += [Step.wait_for("user_message", timeout=20)]  # (a tool result comes first)
    expected: dict[str, type] = {}
    for t in types:
        (event,) = p.ConversationProtocol().receive_text(
            __import__("json").dumps(SERVER_MESSAGE_EXAMPLES[t])
        )
        expected[t] = type(event)
    names = sorted({cls.EVENT for cls in expected.values() if cls.EVENT} | {"message"})
    with AgentSimulator(script=script, ping_interval=None, audio_realtime_factor=None) as sim:
        sim.add_agent("all", client_events=_CLIENT_EVENTS)
        conv = Conversation(
            ElevenLabsClient(base_url=sim.base_url), "all", requires_auth=False, text_only=True
        )
        events = Recorder(conv, names)
        conv.start_session()
        raw = events.wait_for("message", len(types) + 1)  # + the metadata
        assert [m[0]["type"] for m in raw[-len(types) :]] == types
        for t in types:
            name = expected[t].EVENT
            assert name is not None, t
            assert events.of(name), f"{t}: no {name!r} event"
        # Typed arguments, not dicts: a few spot checks of each shape.
        assert isinstance(events.of("mcp_tool_call")[0][0], p.McpToolCallEvent)
        assert isinstance(events.of("context_usage")[0][0], p.ContextUsageEvent)
        assert isinstance(events.of("rich_content")[0][0], p.RichContentEvent)
        assert isinstance(events.of("agent_tool_request")[0][0], p.AgentToolRequestEvent)
        assert len(events.of("agent_tool_response")) == 2  # plain and full payload
        assert events.of("guardrail_triggered") == [()]
        assert events.of("agent_typing")[0] == (True, 1500)
        conv.send_user_message("done")
        sim.wait_for_client_message("user_message")
        conv.end_session()
        conv.wait_for_session_end(timeout=scaled(10))
    assert check_transcript(sim, contract) > len(types)
