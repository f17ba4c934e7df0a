"""The official ElevenLabs clients, unmodified, against ``AgentSimulator`` (issue 11.3).

* the Python SDK (``elevenlabs``): its ``Conversation`` in this process;
* the Node SDK (``@elevenlabs/elevenlabs-js``): ``tests/js/node_sdk.mjs`` in node;
* the browser client (``@elevenlabs/client``): ``tests/js/page`` bundled by esbuild, in
  Debian's headless Chromium driven by ``tests/js/browser.mjs`` (playwright-core), text
  mode and voice over WebSocket with Chromium's fake microphone playing a WAV of speech.

Versions are pinned in ``tests/js/package.json`` / ``package-lock.json`` and in setup.cfg.
After every scenario, every message either side sent is validated against the YAML
contract and the simulator must have recorded no violation (:func:`assert_clean`).
Every wait is on an event/queue/message with a deadline; no sleeps.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from elevenconv.testing import AgentSimulator
from elevenconv.testing._simulator import DEFAULT_FIRST_MESSAGE, GOODBYE
from tests.conftest import IN_CI, scaled
from tests.fixtures_contract import SPEC_PATH, ContractChecks, load_contract
from tests.fixtures_official import (
    PRIVATE_AGENT,
    VOICE_AGENT,
    VOICE_GREETING,
    NodeWorker,
    assert_clean,
    kinds,
    run_node,
    serve_page,
    simulate_command,
    speech_seconds,
    wav_pcm,
)

pytestmark = pytest.mark.timeout(120)

SPOKEN_RE = re.compile(r"^\(spoken (\d+\.\d) s\)$")


# ==========================================================================================
# The Python SDK (elevenlabs)
# ==========================================================================================


class PySdk:
    """One official ``elevenlabs`` Conversation, its callbacks turned into queues."""

    def __init__(
        self,
        sim: AgentSimulator,
        agent_id: str = "sim-agent",
        *,
        requires_auth: bool = False,
        api_key: str | None = None,
        audio_interface: Any = None,
    ) -> None:
        from elevenlabs import ElevenLabs
        from elevenlabs.conversational_ai.conversation import (
            ClientTools,
            Conversation,
            ConversationInitiationData,
        )

        self.responses: queue.Queue[str] = queue.Queue()
        self.transcripts: queue.Queue[str] = queue.Queue()
        self.corrections: queue.Queue[tuple[str, str]] = queue.Queue()
        self.tool_calls: queue.Queue[dict[str, Any]] = queue.Queue()
        self.disconnected = threading.Event()
        self.disconnect_details: Any = None
        tools = ClientTools()
        tools.register("get_current_time", self._tool)
        client = ElevenLabs(api_key=api_key or sim.api_key, base_url=sim.base_url)
        # Without an audio interface the SDK sets a top-level ``text_only`` override, which
        # the contract does not define (the service ignores it): ask as documented too.
        text_only = {"conversation": {"text_only": True}}
        config = ConversationInitiationData(
            conversation_config_override=text_only if audio_interface is None else {}
        )
        self.conv = Conversation(
            client,
            agent_id,
            requires_auth=requires_auth,
            audio_interface=audio_interface,
            config=config,
            client_tools=tools,
            callback_agent_response=self.responses.put,
            callback_user_transcript=self.transcripts.put,
            callback_agent_response_correction=lambda o, c: self.corrections.put((o, c)),
            callback_disconnect=self._on_disconnect,
        )

    def _tool(self, params: dict[str, Any]) -> str:
        self.tool_calls.put(params)
        return "12:34"

    def _on_disconnect(self, details: Any) -> None:
        self.disconnect_details = details
        self.disconnected.set()

    def response(self, timeout: float = 10.0) -> str:
        return self.responses.get(timeout=scaled(timeout))

    def end(self) -> None:
        self.conv.end_session()
        self.join()

    def join(self) -> None:
        thread = self.conv._thread  # the SDK's session thread (its wait has no timeout)
        if thread is not None:
            thread.join(scaled(10))
            assert not thread.is_alive(), "the official Conversation did not stop"


def test_python_sdk_text_scenarios(official_sim: AgentSimulator, contract: ContractChecks) -> None:
    """Greeting, reply, client tool round trip, contextual update, user activity,
    multimodal message, pings, then ``bye``: the agent's ``end_call`` closes with 1000."""
    sim = official_sim
    sdk = PySdk(sim)
    sdk.conv.start_session()
    try:
        assert sdk.response() == DEFAULT_FIRST_MESSAGE
        session = sim.wait_for_session(scaled(5))
        assert session.text_only
        assert session.source == "python_sdk"

        sdk.conv.send_user_message("hello")
        assert sdk.response().startswith("Hello there!")

        sdk.conv.send_user_message("what time is it?")
        params = sdk.tool_calls.get(timeout=scaled(10))
        assert params["tool_call_id"].startswith("sim_tool_")
        assert "12:34" in sdk.response()
        result = sim.wait_for_client_message("client_tool_result", scaled(5))
        assert (result["result"], result["is_error"]) == ("12:34", False)

        sdk.conv.send_contextual_update("The user opened the pricing page.")
        sdk.conv.register_user_activity()
        sim.wait_for_client_message("user_activity", scaled(5))
        assert session.contextual_updates == ["The user opened the pricing page."]
        assert session.user_activity_count == 1

        sdk.conv.send_multimodal_message(text="look at these", file_ids=["file_a", "file_b"])
        msg = sim.wait_for_client_message("multimodal_message", scaled(5))
        assert msg["files"] == [
            {"type": "file_input", "file_id": "file_a"},
            {"type": "file_input", "file_id": "file_b"},
        ]
        assert "look at these" in sdk.response()

        sim.wait_for_client_message("pong", scaled(5))

        sdk.conv.send_user_message("bye")
        assert sdk.response() == GOODBYE
        assert sdk.disconnected.wait(scaled(10)), "no callback_disconnect after end_call"
        sdk.join()
    finally:
        sdk.end()
    ended = sim.wait_for_session_end(scaled(5))
    assert (ended.close_code, ended.closed_by) == (1000, "server")
    assert "agent_tool_response" in kinds(sim, "out")
    assert_clean(sim, contract)


def test_python_sdk_signed_url_for_a_private_agent(
    official_sim: AgentSimulator, contract: ContractChecks
) -> None:
    sim = official_sim
    sdk = PySdk(sim, PRIVATE_AGENT, requires_auth=True)
    sdk.conv.start_session()
    try:
        assert sdk.response() == DEFAULT_FIRST_MESSAGE
        session = sim.wait_for_session(scaled(5))
        assert (session.agent_id, session.signed) == (PRIVATE_AGENT, True)
        sdk.conv.send_user_message("hello")
        assert sdk.response().startswith("Hello there!")
    finally:
        sdk.end()
    ended = sim.wait_for_session_end(scaled(5))
    assert ended.closed_by == "client"
    assert [r.status for r in sim.http_requests] == [200, 101]
    assert_clean(sim, contract)


def test_python_sdk_bad_api_key_gets_401(official_sim: AgentSimulator) -> None:
    from elevenlabs.core.api_error import ApiError

    sim = official_sim
    sdk = PySdk(sim, PRIVATE_AGENT, requires_auth=True, api_key="wrong-key")
    with pytest.raises(ApiError) as info:
        sdk.conv.start_session()  # fetches the signed URL first, on this thread
    sdk.conv.client_tools.stop()
    assert info.value.status_code == 401
    assert info.value.body["detail"]["status"] == "invalid_api_key"
    assert not sim.sessions
    assert [r.status for r in sim.http_requests] == [401]


def test_python_sdk_private_agent_without_signature_is_refused(
    official_sim: AgentSimulator,
) -> None:
    sim = official_sim
    sdk = PySdk(sim, PRIVATE_AGENT, requires_auth=False)
    sdk.conv.start_session()
    assert sdk.disconnected.wait(scaled(10)), "the refused handshake did not end the session"
    sdk.join()
    assert sdk.disconnect_details.reason == "error"
    assert not sim.sessions
    assert [r.status for r in sim.http_requests] == [403]


def test_python_sdk_async_conversation(
    official_sim: AgentSimulator, contract: ContractChecks
) -> None:
    """The SDK's ``AsyncConversation`` (asyncio, websockets' asyncio client): greeting,
    reply, client tool, contextual update, user activity, then the agent's ``end_call``."""
    from elevenlabs import ElevenLabs
    from elevenlabs.conversational_ai.conversation import (
        AsyncConversation,
        ClientTools,
        ConversationInitiationData,
    )

    sim = official_sim

    async def scenario() -> list[str]:
        responses: asyncio.Queue[str] = asyncio.Queue()
        disconnected = asyncio.Event()

        async def on_response(text: str) -> None:
            await responses.put(text)

        async def on_disconnect(details: Any) -> None:
            disconnected.set()

        async def next_response() -> str:
            return await asyncio.wait_for(responses.get(), scaled(10))

        tools = ClientTools()
        tools.register("get_current_time", lambda params: "12:34")
        conv = AsyncConversation(
            ElevenLabs(api_key=sim.api_key, base_url=sim.base_url),
            "sim-agent",
            requires_auth=False,
            config=ConversationInitiationData(
                conversation_config_override={"conversation": {"text_only": True}}
            ),
            client_tools=tools,
            callback_agent_response=on_response,
            callback_disconnect=on_disconnect,
        )
        await conv.start_session()
        seen = []
        try:
            seen.append(await next_response())
            await conv.send_user_message("hello")
            seen.append(await next_response())
            await conv.send_user_message("what time is it?")
            seen.append(await next_response())
            await conv.send_contextual_update("The user opened the pricing page.")
            await conv.register_user_activity()
            await conv.send_user_message("bye")
            seen.append(await next_response())
            await asyncio.wait_for(disconnected.wait(), scaled(10))
        finally:
            await conv.end_session()
            assert conv._task is not None
            await asyncio.wait_for(conv._task, scaled(10))
        return seen

    greeting, reply, tool_reply, goodbye = asyncio.run(scenario())
    assert greeting == DEFAULT_FIRST_MESSAGE
    assert reply.startswith("Hello there!")
    assert "12:34" in tool_reply
    assert goodbye == GOODBYE
    session = sim.wait_for_session_end(scaled(5))
    assert (session.close_code, session.closed_by) == (1000, "server")
    assert session.contextual_updates == ["The user opened the pricing page."]
    assert session.user_activity_count == 1
    assert_clean(sim, contract)


class SpeakingMic:
    """An ``elevenlabs`` AudioInterface: the "microphone" says ``speech`` (PCM16 16 kHz)
    once the agent's voice is heard, then stays silent; it records what it plays."""

    def __init__(self, speech: bytes) -> None:
        self.speech = speech + bytes(32000)  # 1 s of silence ends the utterance
        self.played = bytearray()
        self._played_cond = threading.Condition()
        self.heard_agent = threading.Event()
        self.interrupted = threading.Event()
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, input_callback: Any) -> None:
        def speak() -> None:
            # Wait until the agent talks (or the session stops), then barge in.
            if not self.heard_agent.wait(scaled(20)) or self.stopped.is_set():
                return
            for i in range(0, len(self.speech), 3200):  # 100 ms chunks
                if self.stopped.is_set():
                    return
                input_callback(self.speech[i : i + 3200])

        self._thread = threading.Thread(target=speak, name="official-test-mic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.heard_agent.set()
        if self._thread is not None:
            self._thread.join(scaled(5))

    def output(self, audio: bytes) -> None:
        with self._played_cond:
            self.played += audio
            self._played_cond.notify_all()
        self.heard_agent.set()

    def wait_played(self, nbytes: int, timeout: float) -> bool:
        """Block until at least ``nbytes`` of agent audio were played."""
        with self._played_cond:
            return self._played_cond.wait_for(lambda: len(self.played) >= nbytes, timeout)

    def interrupt(self) -> None:
        self.interrupted.set()


def test_python_sdk_voice_barge_in(
    official_sim: AgentSimulator, contract: ContractChecks, speech_wav: Path
) -> None:
    """The agent greets by voice; the user's speech (real espeak-ng audio) arrives while it
    talks: the simulator hears it, interrupts, corrects the greeting, transcribes
    "(spoken N s)" and answers -- and the SDK plays the agent's audio."""
    from elevenlabs.conversational_ai.conversation import AudioInterface

    sim = official_sim
    pcm = wav_pcm(speech_wav)
    mic_cls = type("Mic", (SpeakingMic, AudioInterface), {})
    mic = mic_cls(pcm)
    sdk = PySdk(sim, VOICE_AGENT, audio_interface=mic)
    sdk.conv.start_session()
    try:
        assert sdk.response() == VOICE_GREETING
        assert mic.interrupted.wait(scaled(20)), "the agent was not interrupted"
        original, corrected = sdk.corrections.get(timeout=scaled(10))
        assert original == VOICE_GREETING
        assert corrected != original and corrected.endswith("...")
        transcript = sdk.transcripts.get(timeout=scaled(10))
        match = SPOKEN_RE.match(transcript)
        assert match, transcript
        assert float(match[1]) == pytest.approx(speech_seconds(pcm), abs=0.3)
        played_before_reply = len(mic.played)
        assert played_before_reply > 0
        assert sdk.response().startswith(f"You said: {transcript}")
        # The answer is spoken too: a second of it reaches the SDK's audio output.
        assert mic.wait_played(played_before_reply + 32000, scaled(10))
    finally:
        sdk.end()
    sim.wait_for_session_end(scaled(5))
    session = sim.sessions[0]
    assert not session.text_only
    assert session.responses[0].interrupted
    # One interruption, carrying the user's new turn id (above the interrupted response's).
    assert len(session.interruptions) == 1
    assert session.interruptions[0] > session.responses[0].event_id
    assert_clean(sim, contract)


# ==========================================================================================
# The Node SDK (@elevenlabs/elevenlabs-js)
# ==========================================================================================


def node_sdk(
    worker: NodeWorker, sim: AgentSimulator, scenario: str, **params: Any
) -> dict[str, Any]:
    return worker.run(
        {"scenario": scenario, "baseUrl": sim.base_url, "apiKey": sim.api_key, **params}
    )


def test_node_sdk_text_scenarios(
    official_sim: AgentSimulator, contract: ContractChecks, node_sdk_worker: NodeWorker
) -> None:
    sim = official_sim
    out = node_sdk(node_sdk_worker, sim, "text", agentId="sim-agent")
    assert out["greeting"] == DEFAULT_FIRST_MESSAGE
    assert out["reply"].startswith("Hello there!")
    assert out["toolParams"]["tool_call_id"].startswith("sim_tool_")
    assert "12:34" in out["toolReply"]
    assert "look at these" in out["multimodalReply"]
    assert out["goodbye"] == GOODBYE
    assert out["ended"]["code"] == 1000
    assert out["errors"] == []
    ended = sim.wait_for_session_end(scaled(5))
    assert ended.conversation_id == out["conversationId"]
    assert (ended.close_code, ended.closed_by, ended.source) == (1000, "server", "js_sdk")
    assert ended.text_only
    assert ended.contextual_updates == ["The user opened the pricing page."]
    assert ended.user_activity_count == 1
    assert sim.messages_from_client("multimodal_message")[0]["files"] == [
        {"type": "file_input", "file_id": "file_a"},
        {"type": "file_input", "file_id": "file_b"},
    ]
    assert [m["result"] for m in sim.messages_from_client("client_tool_result")] == ["12:34"]
    assert "pong" in kinds(sim, "in")
    assert_clean(sim, contract)


def test_node_sdk_voice_barge_in(
    official_sim: AgentSimulator,
    contract: ContractChecks,
    node_sdk_worker: NodeWorker,
    speech_wav: Path,
) -> None:
    sim = official_sim
    out = node_sdk(node_sdk_worker, sim, "voice", agentId=VOICE_AGENT, speechWav=str(speech_wav))
    assert out["greeting"] == VOICE_GREETING
    assert out["correction"]["original"] == VOICE_GREETING
    assert out["correction"]["corrected"].endswith("...")
    match = SPOKEN_RE.match(out["transcript"])
    assert match, out["transcript"]
    assert float(match[1]) == pytest.approx(speech_seconds(wav_pcm(speech_wav)), abs=0.3)
    assert out["reply"].startswith(f"You said: {out['transcript']}")
    assert out["playedBeforeReply"] > 0
    assert out["played"] >= out["playedBeforeReply"] + 32000
    session = sim.wait_for_session_end(scaled(5))
    assert not session.text_only
    assert session.responses[0].interrupted
    assert session.closed_by == "client"
    assert_clean(sim, contract)


def test_node_sdk_signed_url_for_a_private_agent(
    official_sim: AgentSimulator, contract: ContractChecks, node_sdk_worker: NodeWorker
) -> None:
    sim = official_sim
    out = node_sdk(node_sdk_worker, sim, "signed", agentId=PRIVATE_AGENT)
    assert out["greeting"] == DEFAULT_FIRST_MESSAGE
    assert out["reply"].startswith("Hello there!")
    session = sim.wait_for_session_end(scaled(5))
    assert (session.agent_id, session.signed, session.closed_by) == (PRIVATE_AGENT, True, "client")
    assert [r.status for r in sim.http_requests] == [200, 101]
    assert_clean(sim, contract)


def test_node_sdk_bad_api_key_gets_401(
    official_sim: AgentSimulator, node_sdk_worker: NodeWorker
) -> None:
    sim = official_sim
    out = node_sdk(node_sdk_worker, sim, "bad_key", agentId=PRIVATE_AGENT)
    assert out["statusCode"] == 401
    assert out["body"]["detail"]["status"] == "invalid_api_key"
    assert not sim.sessions


# ==========================================================================================
# The browser client (@elevenlabs/client) in headless Chromium
# ==========================================================================================


def browser(
    js_dir: Path,
    chromium: str,
    page_url: str,
    sim: AgentSimulator,
    scenario: str,
    *,
    fake_audio: Path | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run one page scenario in a fresh headless Chromium; return what the page saw."""
    out = run_node(
        js_dir,
        "browser.mjs",
        {
            "chromium": chromium,
            "pageUrl": page_url,
            "scenario": scenario,
            "fakeAudio": str(fake_audio) if fake_audio else None,
            "params": {
                "wsOrigin": sim.base_url.replace("http://", "ws://"),
                "apiOrigin": sim.base_url,
                **params,
            },
        },
        timeout=90,
    )
    assert out["pageErrors"] == [], out
    result: dict[str, Any] = out["result"]
    result["console"] = out["console"]
    return result


def test_browser_text_scenarios(
    official_sim: AgentSimulator,
    contract: ContractChecks,
    js_dir: Path,
    chromium: str,
    page_url: str,
) -> None:
    """Text mode over WebSocket: connect (the ``convai`` subprotocol), greeting, reply,
    client tool, feedback, contextual update, user activity, multimodal message, and the
    agent's ``end_call``. The page is served from another origin than the simulator."""
    sim = official_sim
    out = browser(js_dir, chromium, page_url, sim, "text", agentId="sim-agent")
    assert out["greeting"] == DEFAULT_FIRST_MESSAGE
    assert out["reply"].startswith("Hello there!")
    assert out["toolParams"] == {}
    assert "12:34" in out["toolReply"]
    assert "look at these" in out["multimodalReply"]
    assert out["goodbye"] == GOODBYE
    assert out["disconnect"]["reason"] == "agent"
    assert out["pings"] > 0
    assert out["errors"] == []
    session = sim.wait_for_session_end(scaled(5))
    assert session.conversation_id == out["conversationId"]
    assert session.subprotocol == "convai"
    assert "pong" in kinds(sim, "in")
    assert session.source == "js_sdk"
    assert (session.close_code, session.closed_by) == (1000, "server")
    assert session.text_only
    assert [f["score"] for f in sim.messages_from_client("feedback")] == ["like"]
    assert session.contextual_updates == ["The user opened the pricing page."]
    assert session.user_activity_count == 1
    first, files_only = sim.messages_from_client("multimodal_message")
    assert first["files"] == [
        {"type": "file_input", "file_id": "file_a"},
        {"type": "file_input", "file_id": "file_b"},
    ]
    assert files_only == {
        "type": "multimodal_message",
        "file": {"type": "file_input", "file_id": "file_c"},
        "files": [{"type": "file_input", "file_id": "file_c"}],
    }
    assert [m["result"] for m in sim.messages_from_client("client_tool_result")] == ["12:34"]
    handshake = next(r for r in sim.http_requests if r.status == 101)
    assert handshake.headers["origin"] == page_url.rsplit("/", 1)[0]  # another origin
    assert_clean(sim, contract)


def test_browser_signed_url_from_the_back_end(
    official_sim: AgentSimulator,
    contract: ContractChecks,
    js_dir: Path,
    chromium: str,
    page_url: str,
) -> None:
    """A private agent: the page gets a signed URL from its own back end (which holds the
    API key), connects with it, and the user ends the session."""
    sim = official_sim
    out = browser(js_dir, chromium, page_url, sim, "signed", agentId=PRIVATE_AGENT)
    assert out["greeting"] == DEFAULT_FIRST_MESSAGE
    assert out["reply"].startswith("Hello there!")
    assert out["disconnect"]["reason"] == "user"
    session = sim.wait_for_session_end(scaled(5))
    assert (session.agent_id, session.signed, session.subprotocol) == (
        PRIVATE_AGENT,
        True,
        "convai",
    )
    assert (session.close_code, session.closed_by) == (1000, "client")
    assert_clean(sim, contract)


def test_browser_conversation_token_as_bearer_subprotocol(
    official_sim: AgentSimulator,
    contract: ContractChecks,
    js_dir: Path,
    chromium: str,
    page_url: str,
) -> None:
    """The page fetches a conversation token cross-origin (CORS) and passes it as
    ``authorization``: the client offers ``bearer.<token>`` next to ``convai``."""
    sim = official_sim
    out = browser(js_dir, chromium, page_url, sim, "token", agentId="sim-agent")
    assert not out["refused"], out
    assert out["greeting"] == DEFAULT_FIRST_MESSAGE
    session = sim.wait_for_session_end(scaled(5))
    assert (session.bearer, session.subprotocol) == (True, "convai")
    assert_clean(sim, contract)


def test_browser_invalid_token_is_refused(
    official_sim: AgentSimulator, js_dir: Path, chromium: str, page_url: str
) -> None:
    sim = official_sim
    out = browser(js_dir, chromium, page_url, sim, "token", agentId="sim-agent", token="bogus")
    assert out["refused"], out
    assert not sim.sessions
    assert [r.status for r in sim.http_requests] == [403]


def test_browser_voice_over_websocket(
    official_sim: AgentSimulator,
    contract: ContractChecks,
    js_dir: Path,
    chromium: str,
    page_url: str,
    browser_speech_wav: Path,
) -> None:
    """Voice over WebSocket: Chromium's fake microphone plays a WAV of speech; the
    simulator hears it, barges in, transcribes "(spoken N s)" and answers; the page gets
    and plays the agent's audio."""
    sim = official_sim
    out = browser(
        js_dir, chromium, page_url, sim, "voice", fake_audio=browser_speech_wav, agentId=VOICE_AGENT
    )
    assert out["greeting"] == VOICE_GREETING
    assert out["correction"]["original_agent_response"] == VOICE_GREETING
    assert out["correction"]["corrected_agent_response"].endswith("...")
    match = SPOKEN_RE.match(out["transcript"])
    assert match, out["transcript"]
    # Chromium's audio processing (AGC, noise suppression) may move the edges a little.
    assert float(match[1]) == pytest.approx(speech_seconds(wav_pcm(browser_speech_wav)), abs=0.5)
    assert out["reply"].startswith(f"You said: {out['transcript']}")
    assert out["audioAfterReply"] >= 32000
    assert out["maxOutputVolume"] > 0, "the agent's audio was not played"
    assert out["vadScores"] > 0
    assert out["asrMetadata"][0]["user_input_audio_format"] == "pcm_16000"
    # What the client itself leaves to onDebug (it has no callback for these): nothing else.
    assert set(out["debugTypes"]) <= {"tentative_agent_response", "tentative_user_transcript"}
    assert out["disconnect"]["reason"] == "user"
    session = sim.wait_for_session_end(scaled(5))
    assert not session.text_only
    assert session.subprotocol == "convai"
    assert session.responses[0].interrupted
    assert session.interruptions == [out["interruption"]["event_id"]]
    assert_clean(sim, contract)


def test_browser_against_the_simulate_command(
    contract: ContractChecks, js_dir: Path, chromium: str, page_dir: Path, tmp_path: Path
) -> None:
    """What the README shows a front-end team: ``elevenconv simulate --agent ID:private
    --api-key KEY --record FILE`` in another process; the page (another origin) fetches a
    signed URL from it with the key, talks, ends; SIGTERM stops it with exit 0 and the
    recorded transcript of both directions validates against the contract."""
    record = tmp_path / "transcript.json"
    with (
        simulate_command(
            "--agent", "support:private", "--api-key", "dev-key", "--record", str(record)
        ) as base_url,
        serve_page(page_dir, base_url, "dev-key") as page_url,
    ):
        out = run_node(
            js_dir,
            "browser.mjs",
            {
                "chromium": chromium,
                "pageUrl": page_url,
                "scenario": "frontend",
                "params": {"apiOrigin": base_url, "agentId": "support", "apiKey": "dev-key"},
            },
            timeout=90,
        )
    assert out["pageErrors"] == []
    result = out["result"]
    assert result["greeting"] == DEFAULT_FIRST_MESSAGE
    assert "12:34" in result["toolReply"]
    assert result["disconnect"]["reason"] == "user"
    data = json.loads(record.read_text())
    assert data["violations"] == [] and data["errors"] == []
    (session,) = data["sessions"]
    assert (session["agent_id"], session["signed"], session["subprotocol"]) == (
        "support",
        True,
        "convai",
    )
    assert session["closed_by"] == "client"
    checks = [contract, *([load_contract()] if SPEC_PATH.is_file() or IN_CI else [])]
    for entry in data["transcript"]:
        for c in checks:
            check = c.client_errors if entry["direction"] == "in" else c.server_errors
            assert check(entry["message"]) == [], entry
    sent = [e["message"] for e in data["transcript"] if e["direction"] == "in"]
    assert [m["score"] for m in sent if m.get("type") == "feedback"] == ["dislike"]
    statuses = [r["status"] for r in data["http_requests"]]
    assert statuses == [204, 200, 101]  # CORS preflight (xi-api-key header), signed URL, WS
    assert "conversation_signature=<redacted>" in json.dumps(data["http_requests"])


def test_browser_named_callbacks_for_every_server_message(
    official_sim: AgentSimulator,
    contract: ContractChecks,
    js_dir: Path,
    chromium: str,
    page_url: str,
) -> None:
    """The default agent's rules for the messages beyond chat reach the browser client's
    named callbacks: guardrail, MCP tool call approved through onMCPToolApprovalRequest
    (the client answers mcp_tool_approval_result), context usage, rich content answered by
    id, attachments, a human operator typing, reasoning parts, MCP connection status."""
    from elevenconv.testing._sim_agent import ATTACHMENT, MCP_RESULT, MCP_TOOL_NAME, RICH_OPTIONS
    from elevenconv.testing._sim_session import SIM_CLIENT_EVENTS

    sim = official_sim
    sim.add_agent("sim-events", client_events=SIM_CLIENT_EVENTS | {"mcp_connection_status"})
    out = browser(js_dir, chromium, page_url, sim, "events", agentId="sim-events")
    assert out["greeting"] == DEFAULT_FIRST_MESSAGE
    assert out["mcpStatus"]["integrations"]
    assert out["guardrailReply"] == "Sorry, I can't help with that."
    assert out["toolRequest"]["tool_name"] == MCP_TOOL_NAME
    assert out["approvalRequest"]["state"] == "awaiting_approval"
    assert out["mcpStates"] == ["awaiting_approval", "loading", "success"]
    assert (out["toolResponse"]["tool_name"], out["toolResponse"]["is_error"]) == (
        MCP_TOOL_NAME,
        False,
    )
    assert out["mcpReply"] == MCP_RESULT
    assert out["contextUsage"]["context_tokens"] > 0
    assert out["richContent"]["props"]["options"] == list(RICH_OPTIONS)
    assert out["choiceReply"] == f"You chose {RICH_OPTIONS[1]}."
    assert out["attachments"] == [ATTACHMENT]
    assert [t["is_typing"] for t in out["typing"]] == [True, False]
    assert [p["type"] for p in out["reasoning"]] == ["start", "delta", "stop"]
    assert out["chatParts"] > 0  # text mode streams agent_chat_response_part
    assert out["unhandled"] == []  # no simulator message fell through to onDebug
    assert out["errors"] == []
    approval = sim.wait_for_client_message("mcp_tool_approval_result", scaled(5))
    assert approval["is_approved"] is True
    rich = sim.messages_from_client(lambda m: "rich_content_id" in m)
    assert [m["text"] for m in rich] == [RICH_OPTIONS[1]]
    sim.wait_for_session_end(scaled(5))
    assert_clean(sim, contract)
