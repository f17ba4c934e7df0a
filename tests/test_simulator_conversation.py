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
        sim.add_agent("talker", first_message=long_reply)
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
