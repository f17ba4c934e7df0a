"""AgentSimulator, driven by a raw websocket-client connection and requests.

Everything the simulator sends is checked against the YAML contract (``contract`` fixture);
every wait is on a message with a timeout, never a sleep.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elevenconv.testing import AgentSimulator, Step
from elevenconv.testing._simulator import (
    DEFAULT_FIRST_MESSAGE,
    GOODBYE,
    SIM_CLIENT_EVENTS,
    AgentConfig,
    Faults,
    SimSession,
    SimulatorError,
    ToolRule,
)
from tests.conftest import scaled
from tests.fixtures_contract import Contract

pytestmark = pytest.mark.timeout(60)

AUDIO_FORMATS = [
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
]
INIT = {"type": "conversation_initiation_client_data"}
TEXT_ONLY_INIT = {
    "type": "conversation_initiation_client_data",
    "conversation_config_override": {"conversation": {"text_only": True}},
}
FAST: dict[str, Any] = {"ping_interval": None, "audio_realtime_factor": None, "tts": "tone"}


class Client:
    """A raw websocket-client connection with contract-checked, timeout-bounded reads."""

    def __init__(self, url: str, contract: Contract | None, *, header: list[str] | None = None):
        self.ws = websocket.create_connection(url, timeout=scaled(5), header=header or [])
        self.contract = contract
        self.received: list[Any] = []
        self.close_code: int | None = None
        self.close_reason = ""

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send(json.dumps(msg))

    def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next data frame (opcode, payload); a close frame sets close_code."""
        self.ws.settimeout(scaled(timeout))
        opcode, data = self.ws.recv_data(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            self.close_reason = data[2:].decode()
        return opcode, data

    def recv(self, timeout: float = 5.0, *, check: bool = True) -> dict[str, Any]:
        opcode, data = self.frame(timeout)
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text frame, got opcode {opcode}"
        msg = json.loads(data)
        if check and self.contract is not None:
            self.contract.validate_server(msg)
        self.received.append(msg)
        if msg.get("type") == "ping" and getattr(self, "auto_pong", False):
            self.send({"type": "pong", "event_id": msg["ping_event"]["event_id"]})
        return msg

    def expect(
        self, type_: str, timeout: float = 5.0, *, skip: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Read until a message of ``type_``; only kinds in ``skip`` may come before it."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["type"] == type_:
                return msg
            assert msg["type"] in skip, f"expected {type_}, got {msg}"

    def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Read until ``pred`` holds; return everything read, the match last."""
        deadline = time.monotonic() + scaled(timeout)
        got = []
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            got.append(msg)
            if pred(msg):
                return got

    def expect_close(self, timeout: float = 5.0) -> tuple[int | None, str, list[Any]]:
        """Read (checked) messages until the close frame; return code, reason, messages."""
        msgs = []
        while True:
            opcode, data = self.frame(timeout)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.ws.shutdown()
                return self.close_code, self.close_reason, msgs
            msg = json.loads(data)
            if self.contract is not None:
                self.contract.validate_server(msg)
            msgs.append(msg)

    def start(self, init: dict[str, Any] = INIT) -> dict[str, Any]:
        self.send(init)
        return self.expect("conversation_initiation_metadata")

    def close(self) -> None:
        self.ws.close(timeout=scaled(2))


@pytest.fixture
def connect(contract: Contract) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(url: str, *, check: bool = True, header: list[str] | None = None) -> Client:
        client = Client(url, contract if check else None, header=header)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def tone(seconds: float, *, rate: int = 16000, freq: float = 300.0, amp: float = 12000.0) -> bytes:
    n = int(seconds * rate)
    return array(
        "h", (int(amp * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    ).tobytes()


def audio_chunk(pcm: bytes) -> dict[str, Any]:
    return {"user_audio_chunk": base64.b64encode(pcm).decode()}


def text_of(msg: dict[str, Any]) -> str:
    return str(msg["agent_response_event"]["agent_response"])


# -- HTTP: signed URLs -------------------------------------------------------------------------


def signed_url_request(
    sim: AgentSimulator, agent_id: str, key: str | None = "sim-api-key"
) -> requests.Response:
    headers = {"xi-api-key": key} if key is not None else {}
    return requests.get(
        sim.base_url + "/v1/convai/conversation/get-signed-url",
        params={"agent_id": agent_id},
        headers=headers,
        timeout=scaled(5),
    )


def test_signed_url_happy_path_is_single_use(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent("private-agent", private=True)
        response = signed_url_request(sim, "private-agent")
        assert response.status_code == 200
        url = response.json()["signed_url"]
        assert url.startswith(
            f"ws://127.0.0.1:{sim.port}/v1/convai/conversation?agent_id=private-agent&"
        )
        assert "conversation_signature=" in url
        client = connect(url + "&source=python_sdk&version=9.9")
        meta = client.start()
        session = sim.wait_for_session()
        event = meta["conversation_initiation_metadata_event"]
        assert event["conversation_id"] == session.conversation_id
        assert session.conversation_id.startswith("conv_sim_")
        assert session.signed
        assert (session.source, session.version) == ("python_sdk", "9.9")
        # The same signature again: refused at the handshake.
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(url)
        assert info.value.status_code == 403


@pytest.mark.parametrize(
    ("agent_id", "key", "status"),
    [
        ("sim-agent", "wrong-key", 401),
        ("sim-agent", None, 401),
        ("no-such-agent", "sim-api-key", 404),
    ],
)
def test_signed_url_refusals(agent_id: str, key: str | None, status: int) -> None:
    with AgentSimulator(**FAST) as sim:
        response = signed_url_request(sim, agent_id, key)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert isinstance(response.json()["detail"], dict)
        assert sim.http_requests[-1].status == status


def test_handshake_refusals(connect: Callable[..., Client]) -> None:
    with AgentSimulator(signed_url_ttl=0.0, **FAST) as sim:
        sim.add_agent("private-agent", private=True)
        cases = [
            (sim.ws_url("no-such-agent"), 404),
            (sim.ws_url("sim-agent", conversation_signature="forged"), 403),
            (sim.ws_url("private-agent"), 403),
            (sim.signed_url("private-agent"), 403),  # ttl 0: already expired
            (sim.signed_url("sim-agent").replace("sim-agent", "private-agent", 1), 403),
        ]
        for url, status in cases:
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                connect(url)
            assert info.value.status_code == status, url
        assert sim.sessions == []
        # The API key header opens a private agent without a signature.
        client = connect(sim.ws_url("private-agent"), header=["xi-api-key: sim-api-key"])
        client.start()
        assert not sim.wait_for_session().signed


# -- text-only conversation --------------------------------------------------------------------


def test_text_only_conversation(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        client = connect(sim.ws_url())
        client.start(TEXT_ONLY_INIT)
        # First message: streamed parts, then the whole response.
        parts = client.until(lambda m: m["type"] == "agent_response")
        kinds = [m["text_response_part"]["type"] for m in parts[:-1]]
        assert kinds[0] == "start" and kinds[-1] == "stop" and set(kinds[1:-1]) == {"delta"}
        deltas = "".join(m["text_response_part"]["text"] for m in parts[1:-2])
        assert deltas == text_of(parts[-1]) == DEFAULT_FIRST_MESSAGE
        first_id = parts[-1]["agent_response_event"]["event_id"]
        assert {m["text_response_part"]["event_id"] for m in parts[:-1]} == {first_id}

        client.send({"type": "user_message", "text": "Hello there"})
        reply = client.until(lambda m: m["type"] == "agent_response")[-1]
        assert text_of(reply).startswith("Hello there!")
        assert reply["agent_response_event"]["event_id"] > first_id

        # Tool call round trip.
        client.send({"type": "user_message", "text": "What time is it?"})
        call = client.expect("client_tool_call")["client_tool_call"]
        assert call["tool_name"] == "get_current_time"
        client.send(
            {
                "type": "client_tool_result",
                "tool_call_id": call["tool_call_id"],
                "result": "13:37",
                "is_error": False,
            }
        )
        reply = client.until(lambda m: m["type"] == "agent_response")[-1]
        assert text_of(reply) == "The time is 13:37."

        client.send({"type": "user_message", "text": "something else"})
        assert "You said: something else" in text_of(
            client.until(lambda m: m["type"] == "agent_response")[-1]
        )

        # End of call: goodbye, end_call system tool, close 1000.
        client.send({"type": "user_message", "text": "ok, bye"})
        code, _, msgs = client.expect_close()
        assert code == 1000
        assert [text_of(m) for m in msgs if m["type"] == "agent_response"] == [GOODBYE]
        tool = [m for m in msgs if m["type"] == "agent_tool_response"][-1]["agent_tool_response"]
        assert (tool["tool_name"], tool["tool_type"], tool["is_error"]) == (
            "end_call",
            "system",
            False,
        )
        session = sim.wait_for_session_end(scaled(5))
        assert (session.close_code, session.closed_by) == (1000, "server")
        assert session.text_only
        assert session.user_texts == [
            "Hello there",
            "What time is it?",
            "something else",
            "ok, bye",
        ]
        assert [r["result"] for r in session.tool_results] == ["13:37"]
        assert not sim.violations and not sim.errors


def test_tool_error_and_timeout(connect: Callable[..., Client]) -> None:
    tools = {"weather": ToolRule("weather", "get_weather", {"city": "Paris"}, timeout=0.2)}
    sim = AgentSimulator(
        [AgentConfig("w", tools=tools, text_only=True, first_message=None)], **FAST
    )
    with sim:
        client = connect(sim.ws_url("w"))
        client.start()
        client.send({"type": "user_message", "text": "How is the weather?"})
        call = client.expect("client_tool_call")["client_tool_call"]
        assert (call["tool_name"], call["parameters"]) == ("get_weather", {"city": "Paris"})
        client.send(
            {
                "type": "client_tool_result",
                "tool_call_id": call["tool_call_id"],
                "result": "boom",
                "is_error": True,
            }
        )
        assert "failed: boom" in text_of(client.until(lambda m: m["type"] == "agent_response")[-1])
        client.send({"type": "user_message", "text": "weather again"})
        client.expect("client_tool_call")
        # No result: the agent apologises after the tool's timeout.
        assert "did not answer" in text_of(
            client.until(lambda m: m["type"] == "agent_response")[-1]
        )


def test_add_agent_tool_tuples_and_custom_brain(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent(
            "a",
            text_only=True,
            first_message=None,
            tools={"weather": ("get_weather", {"city": "Paris"})},
            respond=lambda text: "custom!" if "custom" in text else None,
        )
        client = connect(sim.ws_url("a"))
        client.start()
        client.send({"type": "user_message", "text": "custom please"})
        assert text_of(client.until(lambda m: m["type"] == "agent_response")[-1]) == "custom!"
        client.send({"type": "user_message", "text": "what time is it"})  # default tools replaced
        assert "weather" in text_of(client.until(lambda m: m["type"] == "agent_response")[-1])
        client.send({"type": "user_message", "text": "weather?"})
        assert client.expect("client_tool_call")["client_tool_call"]["parameters"] == {
            "city": "Paris"
        }


def test_initiation_overrides_are_honoured_and_recorded(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        client = connect(sim.ws_url())
        client.start(
            {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {
                    "agent": {
                        "first_message": "Hi {{name}}, this is {{system__agent_id}}.",
                        "language": "de",
                    },
                    "tts": {"voice_id": "v1", "speed": 1.1},
                    "conversation": {"text_only": True},
                },
                "dynamic_variables": {"name": "Ada"},
                "custom_llm_extra_body": {"temperature": 0.1},
                "user_id": "user-1",
            }
        )
        assert (
            text_of(client.until(lambda m: m["type"] == "agent_response")[-1])
            == "Hi Ada, this is sim-agent."
        )
        session = sim.wait_for_session()
        assert session.language == "de"
        assert session.tts_override == {"voice_id": "v1", "speed": 1.1}
        assert session.custom_llm_extra_body == {"temperature": 0.1}
        assert session.user_id == "user-1"
        assert session.dynamic_variables == {"name": "Ada"}


def test_missing_dynamic_variable_and_forbidden_override(connect: Callable[..., Client]) -> None:
    with AgentSimulator(**FAST) as sim:
        sim.add_agent("locked", allow_overrides=False)
        client = connect(sim.ws_url())
        client.send(
            {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {"agent": {"first_message": "Hi {{name}}"}},
            }
        )
        code, _, msgs = client.expect_close()
        assert code == 1008
        assert msgs[-1]["error_event"]["error_type"] == "missing_dynamic_variable"

        client = connect(sim.ws_url("locked"))
        client.send({**TEXT_ONLY_INIT})
        code, _, msgs = client.expect_close()
        assert code == 1008
        assert msgs[-1]["error_event"]["error_type"] == "override_error"


# -- voice ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_voice_audio_in_each_format(fmt: str, connect: Callable[..., Client]) -> None:
    with AgentSimulator([AgentConfig("v", output_format=fmt, input_format=fmt)], **FAST) as sim:
        client = connect(sim.ws_url("v"))
        meta = client.start()["conversation_initiation_metadata_event"]
        assert meta["agent_output_audio_format"] == fmt
        assert meta["user_input_audio_format"] == fmt
        response = client.expect("agent_response")
        event_id = response["agent_response_event"]["event_id"]
        session = sim.wait_for_session()
        record = session.responses[0]
        audio = b""
        chunks = 0
        while chunks < record.chunks_total or record.chunks_total == 0:
            event = client.expect("audio")["audio_event"]
            assert event["event_id"] == event_id
            data = base64.b64decode(event["audio_base_64"])
            audio += data
            chunks += 1
        width = 1 if fmt.startswith("ulaw") else 2
        rate = int(fmt.split("_")[1])
        seconds = len(audio) / width / rate
        assert seconds == pytest.approx(record.audio_seconds, abs=1e-6)
        # The synthetic voice of the first message lasts about 6 s; 1 ms tolerance for resampling.
        assert seconds == pytest.approx(len(_tone_pcm(DEFAULT_FIRST_MESSAGE)) / 32000, abs=0.001)
        assert len(audio) % width == 0


def _tone_pcm(text: str) -> bytes:
    from elevenconv.testing._sim_audio import speech_pcm16k

    return speech_pcm16k(text, "tone")


def test_espeak_voice_when_installed(connect: Callable[..., Client]) -> None:
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    with AgentSimulator(ping_interval=None, audio_realtime_factor=None, tts="espeak") as sim:
        client = connect(sim.ws_url())
        client.start()
        client.expect("audio", skip=("agent_response",))
        assert 1.0 < sim.wait_for_session().responses[0].audio_seconds < 10.0


def test_vad_barge_in_interrupts_and_corrects(connect: Callable[..., Client]) -> None:
    # Real-time pacing so that the agent is still speaking when the user starts.
    with AgentSimulator(ping_interval=None, audio_realtime_factor=1.0, tts="tone") as sim:
        # vad_score is sent only to agents that enable it (not the default).
        sim.add_agent("vad-agent", client_events=SIM_CLIENT_EVENTS | {"vad_score"})
        client = connect(sim.ws_url("vad-agent"))
        client.start()
        first_id = client.expect("agent_response")["agent_response_event"]["event_id"]
        client.expect("audio")
        for _ in range(5):  # 0.5 s of loud speech, sent faster than real time
            client.send(audio_chunk(tone(0.1)))
        got = client.until(lambda m: m["type"] == "agent_response_correction", timeout=5)
        if not any(m["type"] == "vad_score" for m in client.received):
            # vad_score comes from the reader thread: it may trail the interruption.
            client.expect("vad_score", skip=("audio",))
        assert "tentative_user_transcript" in [m["type"] for m in got]
        interruption = next(m for m in got if m["type"] == "interruption")
        # The user's turn: a higher id than the interrupted response's, so that its audio
        # is stale for both official clients (browser: id < it; Python SDK: id <= it).
        interrupt_id = interruption["interruption_event"]["event_id"]
        assert interrupt_id > first_id
        correction = got[-1]["agent_response_correction_event"]
        assert correction["original_agent_response"] == DEFAULT_FIRST_MESSAGE
        assert correction["corrected_agent_response"].endswith("...")
        assert len(correction["corrected_agent_response"]) < len(DEFAULT_FIRST_MESSAGE)
        for _ in range(10):  # 1 s of silence ends the utterance
            client.send(audio_chunk(bytes(3200)))
        after = client.until(lambda m: m["type"] == "agent_response", timeout=5)
        transcript = next(m for m in after if m["type"] == "user_transcript")
        assert transcript["user_transcription_event"]["user_transcript"] == "(spoken 0.5 s)"
        assert "You said: (spoken 0.5 s)" in text_of(after[-1])
        # No audio of the interrupted response after the interruption.
        index = client.received.index(interruption)
        assert all(
            m["audio_event"]["event_id"] != first_id
            for m in client.received[index:]
            if m["type"] == "audio"
        )
        session = sim.wait_for_session()
        assert session.interruptions == [interrupt_id]
        # The correction names the response it corrects; the reply comes after the turn.
        assert got[-1]["agent_response_correction_event"]["event_id"] == first_id
        assert after[-1]["agent_response_event"]["event_id"] > interrupt_id
        assert session.responses[0].interrupted
        scores = [
            m["vad_score_event"]["vad_score"] for m in client.received if m["type"] == "vad_score"
        ]
        assert max(scores) > 0.8


def test_voice_goodbye_ends_after_audio(connect: Callable[..., Client]) -> None:
    with AgentSimulator(
        [AgentConfig("v", first_message=None, user_transcript="bye now")], **FAST
    ) as sim:
        client = connect(sim.ws_url("v"))
        client.start()
        client.send(audio_chunk(tone(0.5) + bytes(32000)))
        code, _, msgs = client.expect_close()
        assert code == 1000
        kinds = [m["type"] for m in msgs]
        assert kinds.index("user_transcript") < kinds.index("agent_response")
        assert kinds.index("audio") < kinds.index("agent_tool_response")
        assert sim.wait_for_session_end(scaled(5)).close_code == 1000


# -- ping / pong -------------------------------------------------------------------------------


def test_ping_pong_measures_delay(connect: Callable[..., Client]) -> None:
    with AgentSimulator(
        [AgentConfig("p", first_message=None)], ping_interval=0.05, tts="tone"
    ) as sim:
        client = connect(sim.ws_url("p"))
        client.start()
        pings = []
        for _ in range(4):
            ping = client.expect("ping")["ping_event"]
            pings.append(ping)
            client.send({"type": "pong", "event_id": ping["event_id"]})
        ids = [p["event_id"] for p in pings]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert pings[0]["ping_ms"] is None
        assert all(isinstance(p["ping_ms"], int) for p in pings[2:])
        sim.wait_for_client_message("pong", count=4)
        assert len(sim.wait_for_session().pong_delays) >= 3


# -- contract violations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "user_message", "text": 5},
        {"type": "no_such_message"},
        {"type": "client_tool_result", "tool_call_id": "x"},
        {"user_audio_chunk": "!!! not base64 !!!"},
        "{not json",
        b"\x00binary",
    ],
    ids=["wrong-type", "unknown-type", "missing-fields", "bad-base64", "not-json", "binary"],
)
def test_client_violation_gets_error_and_1008(frame: Any, connect: Callable[..., Client]) -> None:
    with AgentSimulator([AgentConfig("q", first_message=None)], **FAST) as sim:
        client = connect(sim.ws_url("q"))
        client.start()
        if isinstance(frame, bytes):
            client.ws.send_binary(frame)
        elif isinstance(frame, str):
            client.ws.send(frame)
        else:
            client.send(frame)
        code, _, msgs = client.expect_close()
        assert code == 1008
        error = msgs[-1]["error_event"]
        assert (error["code"], error["error_type"]) == (1008, "invalid_message")
        (violation,) = sim.violations
        assert violation.message == frame
        assert violation.problems
        assert sim.wait_for_session_end(scaled(5)).close_code == 1008


# -- scripts and faults ------------------------------------------------------------------------


def test_script_runs_after_handshake(connect: Callable[..., Client]) -> None:
    script = [
        Step.say("scripted hello", audio=False),
        Step.expect("user_message"),
        Step.send(
            {
                "type": "agent_response",
                "agent_response_event": {"agent_response": "ok", "event_id": 99},
            }
        ),
        Step.wait_for(lambda m: m.get("type") == "contextual_update"),
        Step.close(1000, "script done"),
    ]
    with AgentSimulator(script=script, **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        assert (
            text_of(client.until(lambda m: m["type"] == "agent_response")[-1]) == "scripted hello"
        )
        client.send({"type": "user_message", "text": "hi"})
        assert text_of(client.expect("agent_response")) == "ok"
        client.send({"type": "user_activity"})
        client.send({"type": "feedback", "event_id": 99, "score": "like"})
        client.send({"type": "contextual_update", "text": "user scrolled"})
        code, reason, _ = client.expect_close()
        assert (code, reason) == (1000, "script done")
        session = sim.wait_for_session_end(scaled(5))
        assert session.contextual_updates == ["user scrolled"]
        assert session.user_activity_count == 1
        assert session.feedback[0]["score"] == "like"
        assert not sim.errors


def test_script_can_take_over_the_handshake(connect: Callable[..., Client]) -> None:
    script = [
        Step.expect("conversation_initiation_client_data"),
        Step.metadata(conversation_id="conv_custom", output_format="ulaw_8000"),
        Step.ping(),
        Step.expect("pong", ignore=()),
    ]
    with AgentSimulator(script=script, **FAST) as sim:
        client = connect(sim.ws_url())
        meta = client.start()["conversation_initiation_metadata_event"]
        assert meta["conversation_id"] == "conv_custom"
        assert meta["agent_output_audio_format"] == "ulaw_8000"
        ping = client.expect("ping")
        client.send({"type": "pong", "event_id": ping["ping_event"]["event_id"]})
        sim.wait_for_client_message("pong")
        assert sim.sessions[0].conversation_id == "conv_custom"


def test_script_failure_is_recorded_and_closes_1011(connect: Callable[..., Client]) -> None:
    script = [Step.expect("client_tool_result", timeout=0.2)]
    with AgentSimulator(script=script, **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        client.send({"type": "user_message", "text": "not a tool result"})
        code, _, _ = client.expect_close()
        assert code == 1011
        (error,) = sim.errors
        assert "step 0 Step.expect" in error and "user_message" in error


def test_script_timeout_is_recorded(connect: Callable[..., Client]) -> None:
    with AgentSimulator(script=[Step.wait_for("feedback", timeout=0.2)], **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        code, _, _ = client.expect_close()
        assert code == 1011
        assert "no client message matching 'feedback'" in sim.errors[0]


def test_invalid_scripted_send_is_a_simulator_error(connect: Callable[..., Client]) -> None:
    sim = AgentSimulator(script=[Step.send({"type": "agent_response"})], **FAST).start()
    client = connect(sim.ws_url())
    client.start()
    assert client.expect_close()[0] == 1011
    sim.wait_for_session_end(scaled(5))
    with pytest.raises(SimulatorError, match="agent_response"):
        sim.close()
    assert sim.contract_errors


def _fault_frames(client: Client) -> tuple[int, bytes]:
    client.start()
    return client.frame()


def test_fault_malformed_text(connect: Callable[..., Client]) -> None:
    with AgentSimulator(script=[Step.malformed("{oops")], **FAST) as sim:
        client = connect(sim.ws_url())
        assert _fault_frames(client) == (websocket.ABNF.OPCODE_TEXT, b"{oops")
        assert sim.transcript[-1].message == "{oops"


def test_fault_binary_frame(connect: Callable[..., Client]) -> None:
    with AgentSimulator(script=[Step.binary(b"\x01\x02")], **FAST) as sim:
        client = connect(sim.ws_url())
        assert _fault_frames(client) == (websocket.ABNF.OPCODE_BINARY, b"\x01\x02")


@pytest.mark.parametrize(
    "step",
    [Step.unknown_type(), Step.bad_message("missing_fields"), Step.bad_message("wrong_types")],
    ids=["unknown-type", "missing-fields", "wrong-types"],
)
def test_fault_invalid_messages_break_the_contract(
    step: Step, contract: Contract, connect: Callable[..., Client]
) -> None:
    with AgentSimulator(script=[step], **FAST) as sim:
        client = connect(sim.ws_url(), check=False)
        client.start()
        msg = client.recv()
        assert contract.server_errors(msg), msg
        assert not sim.contract_errors  # deliberate faults are not simulator bugs


@pytest.mark.parametrize("reset", [False, True])
def test_fault_drop_without_close_frame(reset: bool, connect: Callable[..., Client]) -> None:
    with AgentSimulator(script=[Step.drop(reset=reset)], **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            client.frame()
        assert client.close_code is None
        session = sim.wait_for_session_end(scaled(5))
        assert session.dropped and session.close_code is None


def test_fault_close_with_code_and_reason(connect: Callable[..., Client]) -> None:
    with AgentSimulator(script=[Step.close(1002, "llm_timeout")], **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        assert client.expect_close()[:2] == (1002, "llm_timeout")
        assert sim.wait_for_session_end(scaled(5)).close_code == 1002


def test_fault_huge_frames(connect: Callable[..., Client]) -> None:
    script = [Step.huge_audio(2 * 1024 * 1024), Step.huge_text(20_000_000)]
    with AgentSimulator(script=script, record_audio=False, **FAST) as sim:
        client = connect(sim.ws_url())
        client.start()
        audio = client.recv(timeout=20)
        assert len(base64.b64decode(audio["audio_event"]["audio_base_64"])) == 2 * 1024 * 1024
        text = client.recv(timeout=30, check=False)
        assert len(text_of(text)) == 20_000_000
        del sim


def test_fault_metadata_delayed(connect: Callable[..., Client]) -> None:
    with AgentSimulator(faults={"metadata_delay": 0.3}, **FAST) as sim:
        client = connect(sim.ws_url())
        client.send(INIT)
        t0 = time.monotonic()
        client.expect("conversation_initiation_metadata")
        assert time.monotonic() - t0 >= 0.29
        del sim


def test_fault_metadata_never_sent(connect: Callable[..., Client]) -> None:
    with AgentSimulator(faults=Faults(send_metadata=False), **FAST) as sim:
        client = connect(sim.ws_url())
        client.send(INIT)
        with pytest.raises(websocket.WebSocketTimeoutException):
            client.frame(timeout=0.3)
        client.send({"type": "user_activity"})
        sim.wait_for_client_message("user_activity")
        assert not sim.sessions[0].metadata_sent


def test_fault_slow_response(connect: Callable[..., Client]) -> None:
    with AgentSimulator(
        [AgentConfig("s", first_message=None, text_only=True)],
        faults=Faults(response_delay=0.3),
        **FAST,
    ) as sim:
        client = connect(sim.ws_url("s"))
        client.start()
        client.send({"type": "user_message", "text": "hello"})
        t0 = time.monotonic()
        client.until(lambda m: m["type"] == "agent_response")
        assert time.monotonic() - t0 >= 0.29
        del sim


def test_faults_at_trigger_points(connect: Callable[..., Client]) -> None:
    faults = Faults(
        after_first_message=(Step.say("after first", audio=False),),
        on_user_message=(Step.malformed("{x"), Step.close(1011, "injected")),
    )
    agent = AgentConfig("f", text_only=True, first_message="first", faults=faults)
    with AgentSimulator([agent], **FAST) as sim:
        client = connect(sim.ws_url("f"))
        client.start()
        texts = [
            text_of(client.until(lambda m: m["type"] == "agent_response")[-1]) for _ in range(2)
        ]
        assert texts == ["first", "after first"]
        client.send({"type": "user_message", "text": "hi"})
        assert client.frame() == (websocket.ABNF.OPCODE_TEXT, b"{x")
        assert client.expect_close()[:2] == (1011, "injected")
        assert sim.wait_for_session_end(scaled(5)).close_code == 1011


def test_faults_reject_reading_steps() -> None:
    with pytest.raises(ValueError, match="cannot run outside a script"):
        Faults(on_user_message=(Step.expect("pong"),))


# -- recording, hooks, lifecycle ---------------------------------------------------------------


def test_transcript_hooks_and_waits(connect: Callable[..., Client]) -> None:
    connected: list[SimSession] = []
    seen: list[str] = []
    with AgentSimulator(**FAST) as sim:
        sim.on_connect(connected.append)

        @sim.on_client_message
        def answer(session: SimSession, msg: Any) -> None:
            seen.append(msg.get("type", "audio"))
            if msg.get("type") == "contextual_update":
                session.send(
                    {
                        "type": "agent_response",
                        "agent_response_event": {"agent_response": "noted", "event_id": 500},
                    }
                )

        client = connect(sim.ws_url())
        client.start(TEXT_ONLY_INIT)
        client.until(lambda m: m["type"] == "agent_response")
        client.send({"type": "contextual_update", "text": "ctx"})
        client.until(lambda m: m["type"] == "agent_response" and text_of(m) == "noted")
        client.send(
            {
                "type": "multimodal_message",
                "text": {"type": "user_message", "text": "pic"},
                "file": {"type": "file_input", "file_id": "f1"},
            }
        )
        client.until(lambda m: m["type"] == "agent_response")
        assert sim.wait_for_client_message("multimodal_message")["file"]["file_id"] == "f1"
        with pytest.raises(TimeoutError, match="feedback"):
            sim.wait_for_client_message("feedback", timeout=0.05)

        session = connected[0]
        assert seen == [
            "conversation_initiation_client_data",
            "contextual_update",
            "multimodal_message",
        ]
        entries = sim.transcript
        assert [e.t for e in entries] == sorted(e.t for e in entries)
        assert {e.conversation_id for e in entries} == {session.conversation_id}
        assert (
            entries[0].direction == "in"
            and entries[0].kind == "conversation_initiation_client_data"
        )
        assert (
            entries[1].direction == "out" and entries[1].kind == "conversation_initiation_metadata"
        )
        out = [e.message for e in entries if e.direction == "out"]
        assert out == client.received
        assert sim.messages_from_client("contextual_update") == [
            {"type": "contextual_update", "text": "ctx"}
        ]
        assert len(sim.messages_to_client("agent_response")) == 3
        assert session.multimodal_messages[0]["file"]["file_id"] == "f1"


def test_several_sessions_and_close_with_open_client(connect: Callable[..., Client]) -> None:
    sim = AgentSimulator(ping_interval=0.05, tts="tone", close_timeout=0.5)
    with sim:
        a = connect(sim.ws_url())
        a.start()
        b = connect(sim.ws_url())
        b.start(TEXT_ONLY_INIT)
        assert (
            len(
                {
                    s.conversation_id
                    for s in (sim.wait_for_session(index=0), sim.wait_for_session(index=1))
                }
            )
            == 2
        )
    # close() ran with both clients still connected and not reading: all threads are gone.
    assert not [t.name for t in threading.enumerate() if t.name.startswith("elevenconv-sim")]
    assert [s.close_code for s in sim.sessions] == [1001, 1001]


def test_serve_forever_until_closed() -> None:
    sim = AgentSimulator(**FAST).start()
    runner = threading.Thread(target=sim.serve_forever, name="test-serve-forever")
    runner.start()
    try:
        ws = websocket.create_connection(sim.ws_url(), timeout=scaled(5))
        ws.send(json.dumps(INIT))
        assert json.loads(ws.recv())["type"] == "conversation_initiation_metadata"
        ws.close()
    finally:
        sim.close()
        runner.join(scaled(5))
    assert not runner.is_alive()


def test_start_twice_and_port_before_start() -> None:
    sim = AgentSimulator(**FAST)
    with pytest.raises(RuntimeError):
        _ = sim.port
    with sim:
        with pytest.raises(RuntimeError):
            sim.start()
        assert sim.base_url == f"http://127.0.0.1:{sim.port}"
    sim.close()  # idempotent


def test_audio_is_paced_in_real_time(connect: Callable[..., Client]) -> None:
    # Factor 4: 250 ms chunks every 62.5 ms. Only a lower bound is strict (a loaded machine
    # may be late, never early).
    with AgentSimulator(ping_interval=None, audio_realtime_factor=4.0, tts="tone") as sim:
        client = connect(sim.ws_url())
        client.start()
        client.expect("agent_response")
        record = sim.wait_for_session().responses[0]
        arrivals = []
        while len(arrivals) < record.chunks_total:
            client.expect("audio")
            arrivals.append(time.monotonic())
        expected = (record.chunks_total - 1) * 0.25 / 4.0
        assert expected * 0.9 <= arrivals[-1] - arrivals[0] <= expected + scaled(2.0)


def test_standalone_main_runs_until_interrupted() -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "elevenconv.testing._simulator", "--port", "0", "--tts", "tone"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("elevenconv agent simulator listening on http://127.0.0.1:")
        port = int(first.rsplit(":", 1)[1])
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id=sim-agent", timeout=scaled(5)
        )
        ws.send(json.dumps(INIT))
        assert json.loads(ws.recv())["type"] == "conversation_initiation_metadata"
        ws.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=scaled(15)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=scaled(5))
        if proc.stdout is not None:
            proc.stdout.close()


def test_close_interrupts_a_sleeping_script(connect: Callable[..., Client]) -> None:
    calls: list[str] = []
    script = [Step.call(lambda s: calls.append(s.conversation_id)), Step.sleep(60)]
    sim = AgentSimulator(script=script, **FAST).start()
    client = connect(sim.ws_url())
    client.start()
    sim.wait_for_session()
    t0 = time.monotonic()
    sim.close()
    assert time.monotonic() - t0 < scaled(3)
    assert calls == [sim.sessions[0].conversation_id]
    assert sim.sessions[0].ended


def test_failing_hook_and_call_step_are_recorded(connect: Callable[..., Client]) -> None:
    def boom(session: SimSession) -> None:
        raise ValueError("hook boom")

    with AgentSimulator(script=[Step.call(boom)], **FAST) as sim:
        sim.on_connect(boom)
        client = connect(sim.ws_url())
        client.start()
        assert client.expect_close()[0] == 1011
        sim.wait_for_session_end(scaled(5))
        assert len(sim.errors) == 2
        assert "on_connect hook failed" in sim.errors[0] and "hook boom" in sim.errors[0]
        assert "Step.call" in sim.errors[1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    speech=st.floats(min_value=0.3, max_value=2.0),
    chunk=st.integers(min_value=1, max_value=4000),
)
def test_vad_measures_utterances_whatever_the_chunking(speech: float, chunk: int) -> None:
    from elevenconv.testing._sim_audio import EnergyVad

    vad = EnergyVad()
    pcm = bytes(6400) + tone(speech) + bytes(32000)
    events = []
    for i in range(0, len(pcm), 2 * chunk):
        events += vad.process(pcm[i : i + 2 * chunk])
    kinds = [e.kind for e in events if e.kind != "score"]
    assert kinds == ["start", "end"]
    end = next(e for e in events if e.kind == "end")
    assert end.value == pytest.approx(speech, abs=0.041)
    assert not vad.in_speech
