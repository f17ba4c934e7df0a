"""Full duplex on open speakers: a Conversation in a real (simulated) room.

The whole chain: AgentSimulator (its energy VAD barges in on what it hears) ->
Conversation -> voice pipeline -> DefaultAudioInterface -> PulseAudio speaker sink ->
``EchoPath`` (module-loopback, delayed and attenuated: the room) -> microphone bus ->
DefaultAudioInterface -> capture chain (echo canceller) -> server. The agent speaks long
replies; what the server received is measured from the simulator's transcript.
"""

from __future__ import annotations

import base64
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from elevenconv import AudioInterface
from tests.conftest import scaled
from tests.fixtures_sound import EchoPath, as_array, play_into_mic, rms

pytestmark = [pytest.mark.audio, pytest.mark.timeout(90)]

LONG_REPLY = (
    "Let me tell you about the weather in the mountains, where it rains every afternoon "
    "and the clouds come down into the valley before the sun sets behind the ridge, and "
    "then the night is cold and clear until the morning."
)
USER = "Wait, wait, stop please, I have a question about that."
#: The server-received echo without cancellation is at least this loud (measured ~820 rms
#: at 120 ms / -9 dB); with cancellation it must be >= 25 dB below it.
NO_AEC_ECHO_RMS = 500.0


class PlainSpeakers(AudioInterface):
    """A custom interface with the official SDKs' four methods and ``capture_time()``, but
    no played-audio capability: the canceller's reference is what is handed to
    ``output()``, which returns at once, so a reply sent faster than real time is handed
    over well ahead of its playing.

    Without ``capture_time()`` too, the capture chain would stamp each 250 ms chunk by
    its arrival, and PortAudio's 0.5 s input latency on the test server puts the echo
    beyond the ~0.5 s AEC3 can find by itself (measured: the agent interrupts itself).
    """

    acoustic_echo: bool | None = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        self.inner.start(input_callback)

    def stop(self) -> None:
        self.inner.stop()

    def output(self, audio: bytes) -> None:
        self.inner.output(audio)

    def interrupt(self) -> None:
        self.inner.interrupt()

    def capture_time(self) -> float | None:
        return self.inner.capture_time()  # type: ignore[no-any-return]


class Room:
    """One voice conversation with the simulator, in a room with open speakers."""

    def __init__(
        self, echo_cancellation: bool, plain: bool = False, realtime_factor: float = 1.0
    ) -> None:
        from elevenconv import Conversation, DefaultAudioInterface, ElevenLabsClient
        from elevenconv.testing import AgentConfig, AgentSimulator

        agent = AgentConfig("room-agent", first_message=LONG_REPLY, respond=lambda t: LONG_REPLY)
        self.sim = AgentSimulator(
            [agent], tts="auto", ping_interval=None, audio_realtime_factor=realtime_factor
        ).start()
        device = DefaultAudioInterface()
        self.modes: queue.Queue[tuple[str, float]] = queue.Queue()
        self.interruptions: queue.Queue[float] = queue.Queue()
        self.audio: queue.Queue[float] = queue.Queue()
        self.conv = Conversation(
            ElevenLabsClient(base_url=self.sim.base_url),
            "room-agent",
            requires_auth=False,
            audio_interface=PlainSpeakers(device) if plain else device,
            echo_cancellation=echo_cancellation,
        )
        self.conv.on("mode_change", lambda mode: self.modes.put((mode, time.monotonic())))
        self.conv.on("interruption", lambda *a: self.interruptions.put(time.monotonic()))
        self.conv.on("audio", lambda *a: self.audio.put(time.monotonic()))
        self.user_turns: queue.Queue[float] = queue.Queue()
        self.conv.on("user_transcript", lambda text: self.user_turns.put(time.monotonic()))

    def start(self) -> Room:
        self.conv.start_session()
        return self

    def wait_mode(self, mode: str, timeout: float) -> float:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            got, at = self.modes.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == mode:
                return at

    def received(self, since: float, until: float) -> Any:
        """The microphone audio the server received between two instants (PCM16 16 kHz)."""
        chunks = [
            base64.b64decode(e.message["user_audio_chunk"])
            for e in self.sim.transcript
            if e.kind == "user_audio_chunk" and since <= e.t <= until
        ]
        return as_array(b"".join(chunks))

    def barge_in(self) -> tuple[float, float]:
        """Speak :data:`USER` into the microphone bus; wait for the interruption.

        Returns when it reached the Conversation and how long after the speech's onset.
        """
        from elevenconv.testing._sim_audio import speech_pcm16k

        user = speech_pcm16k(USER, "auto")
        samples = np.abs(as_array(user))
        first_voiced = int(np.argmax(samples > 0.05 * samples.max())) / 16000
        with play_into_mic(user) as playback:
            interrupted = self.interruptions.get(timeout=scaled(10))
            playback.wait(scaled(10))
        return interrupted, interrupted - (playback.started_at + first_voiced)

    @property
    def server_interruptions(self) -> list[int]:
        return list(self.sim.sessions[0].interruptions)

    def close(self) -> None:
        try:
            self.conv.end_session()
            self.conv.wait_for_session_end(scaled(10))
        finally:
            self.sim.close(raise_errors=False)


@pytest.fixture
def room(sound_server: Any, echo_path: Callable[..., EchoPath]) -> Iterator[Callable[..., Room]]:
    made: list[Room] = []

    def make(
        echo_cancellation: bool, latency_ms: int = 120, gain_db: float = -9.0, **kwargs: Any
    ) -> Room:
        echo_path(latency_ms, gain_db)
        r = Room(echo_cancellation, **kwargs)
        made.append(r)
        return r.start()

    yield make
    for r in made:
        r.close()


def test_without_echo_cancellation_the_agent_interrupts_itself(room: Callable[..., Room]) -> None:
    r = room(echo_cancellation=False)
    speaking = r.wait_mode("speaking", 15)
    interrupted = r.interruptions.get(timeout=scaled(20))  # the room is sensitive
    assert r.server_interruptions
    # What the server heard from the agent's start until its interruption reached us
    # (the microphone chunks holding the echo arrive up to a chunk later).
    echo = rms(r.received(speaking, interrupted + 0.5))
    print(f"\n[no AEC] self-interruption after {interrupted - speaking:.2f} s; echo rms {echo:.0f}")
    assert echo > NO_AEC_ECHO_RMS


def test_with_echo_cancellation_long_replies_play_out_and_the_echo_is_gone(
    room: Callable[..., Room],
) -> None:
    r = room(echo_cancellation=True)
    assert r.conv.echo_cancellation_active
    for reply in range(2):  # the greeting, then one more long reply
        speaking = r.wait_mode("speaking", 15)
        listening = r.wait_mode("listening", 40)
        assert listening - speaking > 8.0  # a long reply, played to its end
        echo = rms(r.received(speaking + 0.5, listening))
        print(f"\n[AEC] reply {reply}: {listening - speaking:.1f} s, echo rms {echo:.2f}")
        # >= 25 dB below the no-cancellation run (whose echo is > NO_AEC_ECHO_RMS).
        assert echo < NO_AEC_ECHO_RMS * 10 ** (-25 / 20)
        if reply == 0:
            r.conv.send_user_message("Tell me more.")
    assert r.server_interruptions == []


def test_with_echo_cancellation_user_speech_still_barges_in_within_a_second(
    room: Callable[..., Room],
) -> None:
    r = room(echo_cancellation=True)
    r.wait_mode("speaking", 15)
    for _ in range(12):  # 3 s into the reply (0.25 s chunks, paced in real time)
        r.audio.get(timeout=scaled(10))
    _, delay = r.barge_in()
    print(f"\n[AEC] barge-in {delay:.2f} s after speech onset")
    assert len(r.server_interruptions) == 1
    assert 0.0 < delay <= 1.0


def test_a_custom_interface_without_the_played_audio_fed_ahead_still_cancels_the_echo(
    room: Callable[..., Room],
) -> None:
    # The server sends the reply 4x faster than real time, a non-blocking output() takes
    # it at once: the reference (the audio handed over) runs seconds ahead of the speaker.
    r = room(echo_cancellation=True, plain=True, realtime_factor=4.0)
    assert r.conv.echo_cancellation_active
    speaking = r.wait_mode("speaking", 15)
    listening = r.wait_mode("listening", 40)
    assert listening - speaking > 8.0
    echo = rms(r.received(speaking + 1.0, listening))
    print(f"\n[AEC, output() tap, 4x] {listening - speaking:.1f} s, echo rms {echo:.2f}")
    assert echo < NO_AEC_ECHO_RMS * 10 ** (-25 / 20)
    assert r.server_interruptions == []


def test_a_custom_interface_fed_ahead_still_hears_the_user_barge_in(
    room: Callable[..., Room],
) -> None:
    # At 2x the reply (11 s) is sent in 5.6 s: 3 s in, the server still speaks and 3 s
    # more than has played is handed over.
    r = room(echo_cancellation=True, plain=True, realtime_factor=2.0)
    speaking = r.wait_mode("speaking", 15)
    with pytest.raises(queue.Empty):  # no self-interruption in the first 3 s
        r.interruptions.get(timeout=max(0.0, speaking + 3.0 - time.monotonic()))
    interrupted, delay = r.barge_in()
    # The rest of the reply never plays: its reference is forgotten, so the user's
    # words after the interruption reach the server whole and end as a user turn.
    turn = r.user_turns.get(timeout=scaled(10))
    print(
        f"\n[AEC, output() tap, 2x] barge-in {delay:.2f} s, "
        f"user turn {turn - interrupted:.2f} s after"
    )
    assert len(r.server_interruptions) == 1
    assert 0.0 < delay <= 1.0
