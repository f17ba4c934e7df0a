"""Echo cancellation in a real (simulated) room: ERLE, self-interruptions, barge-in, CPU.

    python benchmarks/echo.py            # the full run (about 5 minutes)
    python benchmarks/echo.py --quick    # a smoke run: tiny sizes, same code paths

The room is the PulseAudio test stack (``scripts/sound-server``: an exported one is used,
otherwise one is started in a private directory and stopped at the end) with an
``EchoPath``: ``module-loopback`` from the speaker sink's monitor into the microphone bus,
with a delay (``latency_msec``) and a lowered level. A real ``DefaultAudioInterface``
plays the agent's voice (espeak-ng speech from the simulator's TTS) and records the
microphone; the capture chain's ``EchoCanceller`` gets the device's exact playback
reference (``set_playback_reference_callback``) and capture times (``capture_time()``),
exactly as the voice pipeline wires them.

Figures:

* **ERLE** (dB) per room setting: raw microphone level over the level after cancellation,
  while the agent speaks, after the first 2 s (convergence), and in the first 2 s.
* **Self-interruptions** in 10 long replies: the simulator's own ``EnergyVad`` (the
  agent's ear; default -40 dBFS threshold) run over what would be sent to the server,
  without and with cancellation; every speech start while the agent talks would make
  the simulated agent interrupt itself.
* **Barge-in delay**: user speech played into the microphone bus during replies; time
  from its onset (located in the raw capture by correlation, mapped to the clock by the
  capture times) until the VAD, fed the cancelled audio as the capture chain produces
  it, detects speech. Includes the device's 250 ms capture buffer.
* **Added CPU**: process CPU over a 60 s voice conversation (device playing and recording,
  echo path on) with cancellation vs without, in alternating rounds; in % of one core.
  Also the canceller's own thread CPU per second of audio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from elevenconv._echo import EchoCanceller  # noqa: E402
from elevenconv._pyaudio_interface import DefaultAudioInterface  # noqa: E402
from elevenconv.testing._sim_audio import EnergyVad, speech_pcm16k  # noqa: E402
from tests.fixtures_sound import EchoPath, play_into_mic  # noqa: E402

RATE = 16000
REPLIES = [
    "Let me tell you about the weather in the mountains, where it rains every afternoon "
    "and the clouds come down into the valley before the sun sets behind the ridge.",
    "There are three trains to the city every morning: the first leaves at six, the "
    "second at half past seven, and the last one just before nine o'clock.",
    "Your order has been shipped and should arrive on Thursday; if nobody is at home, "
    "the courier will leave a note and try again the next working day.",
    "To reset the router, hold the small button on the back for ten seconds, wait until "
    "the lights blink twice, and then connect again with the password on the label.",
    "The museum is open from ten until six, except on Mondays, and the guided tours in "
    "English start every hour at the main entrance next to the bookshop.",
]
USER = "Wait, wait, stop please, I have a question about that."


def level(x: Any) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def db(ratio: float) -> float:
    return 20.0 * float(np.log10(max(ratio, 1e-12)))


def samples(pcm: bytes) -> Any:
    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)


@contextlib.contextmanager
def sound_server() -> Iterator[None]:
    """The exported test server, or a private one for this run."""
    if os.environ.get("PULSE_SERVER") and os.environ.get("ELEVENCONV_TEST_MIC_SINK"):
        yield
        return
    script = ROOT / "scripts" / "sound-server"
    directory = tempfile.mkdtemp(prefix="elevenconv-sound-bench-echo-")
    env = dict(os.environ, ELEVENCONV_SOUND_DIR=directory)
    out = subprocess.run(
        ["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise SystemExit(f"could not start the sound server: {out.stderr.strip()}")
    saved = dict(os.environ)
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            os.environ[key] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=30)


@dataclass
class Session:
    """A DefaultAudioInterface in the room, the canceller wired like the voice pipeline.

    The ``elevenconv-mic`` thread only queues (chunk, capture time); :meth:`take` (this
    thread: the capture chain's role) runs the canceller and keeps both signals.
    """

    cancel: bool
    iface: DefaultAudioInterface = field(init=False)
    canceller: EchoCanceller | None = field(init=False)
    chunks: queue.Queue[tuple[bytes, float]] = field(default_factory=queue.Queue)
    raw: list[tuple[bytes, float]] = field(default_factory=list)
    processed: list[tuple[bytes, float]] = field(default_factory=list)  # (pcm, done at)
    canceller_cpu_s: float = 0.0

    def __post_init__(self) -> None:
        self.iface = DefaultAudioInterface()
        self.canceller = EchoCanceller() if self.cancel else None
        if self.canceller is not None:
            assert self.iface.set_playback_reference_callback(self.canceller.process_reverse)

    def _on_mic(self, pcm: bytes) -> None:
        at = self.iface.capture_time()
        self.chunks.put((pcm, time.monotonic() - len(pcm) / 2 / RATE if at is None else at))

    def __enter__(self) -> Session:
        self.iface.start(self._on_mic)
        return self

    def __exit__(self, *exc: object) -> None:
        self.iface.stop()
        if self.canceller is not None:
            self.canceller.close()

    def take(self, seconds: float) -> None:
        need = int(seconds * RATE * 2)
        got = 0
        while got < need:
            pcm, at = self.chunks.get(timeout=10)
            self.raw.append((pcm, at))
            out = pcm
            if self.canceller is not None:
                c0 = time.thread_time()
                out = self.canceller.process_capture(pcm, at)
                self.canceller_cpu_s += time.thread_time() - c0
            self.processed.append((out, time.monotonic()))
            got += len(pcm)

    def signals(self) -> tuple[Any, Any]:
        raw = samples(b"".join(p for p, _ in self.raw))
        out = samples(b"".join(p for p, _ in self.processed))
        return raw, out


def speech(i: int) -> bytes:
    return speech_pcm16k(REPLIES[i % len(REPLIES)], "auto")


# -- 1. ERLE per room setting --------------------------------------------------------------


def bench_erle(settings: list[tuple[int, float]], seconds: float) -> list[dict[str, Any]]:
    rows = []
    voice = b"".join(speech(i) for i in range(3))[: int(seconds * RATE) * 2]
    for latency_ms, gain_db in settings:
        with EchoPath(latency_ms, gain_db), Session(cancel=True) as session:
            session.iface.output(voice)
            session.take(seconds + 0.5)
        raw, out = session.signals()
        # Only where the agent's echo is present (speech, not the pauses between words).
        frames = min(len(raw), len(out)) // 160
        r = raw[: frames * 160].reshape(frames, 160)
        o = out[: frames * 160].reshape(frames, 160)
        active = np.sqrt(np.mean(r**2, axis=1)) > 30
        t = np.arange(frames) / 100.0
        late = active & (t >= 2.0) & (t < seconds)
        early = active & (t < 2.0)
        rows.append(
            {
                "latency_ms": latency_ms,
                "gain_db": gain_db,
                "echo_dbfs": db(level(r[late]) / 32768),
                "erle_db": db(level(r[late]) / max(level(o[late]), 0.5)),
                "erle_first_2s_db": db(level(r[early]) / max(level(o[early]), 0.5)),
            }
        )
        row = rows[-1]
        print(
            f"  room {latency_ms:3d} ms, {gain_db:+.0f} dB: echo {row['echo_dbfs']:.1f} dBFS, "
            f"ERLE {row['erle_db']:.1f} dB (first 2 s: {row['erle_first_2s_db']:.1f} dB)",
            flush=True,
        )
    return rows


# -- 2+3. self-interruptions over long replies, and barge-in -------------------------------


def vad_starts(pcm: bytes) -> list[float]:
    """Audio times (s) at which the simulator's VAD detects speech start."""
    vad = EnergyVad()
    starts = []
    frame = 320
    for offset in range(0, len(pcm) - 2 * frame + 1, 2 * frame):
        for event in vad.process(pcm[offset : offset + 2 * frame]):
            if event.kind == "start":
                starts.append((offset + 2 * frame) / 2 / RATE)
    return starts


def bench_replies(n: int, barge_every: int, latency_ms: int, gain_db: float) -> dict[str, Any]:
    """``n`` long replies, each followed by 1.5 s of silence; user speech during some."""
    user = speech_pcm16k(USER, "auto")
    onsets: list[float] = []  # capture-time of each user speech onset (monotonic)
    spans: list[tuple[float, float]] = []  # (start, end) of each reply, monotonic
    with EchoPath(latency_ms, gain_db), Session(cancel=True) as session:
        session.take(0.5)
        for i in range(n):
            voice = speech(i)
            played_from = time.monotonic() + session.iface.output_latency_s
            session.iface.output(voice)
            duration = len(voice) / 2 / RATE
            spans.append((played_from, played_from + duration))
            if barge_every and i % barge_every == barge_every - 1:
                session.take(duration / 2)
                with play_into_mic(user) as playback:
                    session.take(duration / 2 + 1.5)
                    playback.wait(10)
            else:
                session.take(duration + 1.5)
        raw_pcm = b"".join(p for p, _ in session.raw)
        out_pcm = b"".join(p for p, _ in session.processed)
        t0 = session.raw[0][1]
        done = [
            (at, sum(len(p) for p, _ in session.processed[: k + 1]) / 2 / RATE)
            for k, (_, at) in enumerate(session.processed)
        ]
    # User speech onsets: correlate the user's voice with the raw capture.
    raw = samples(raw_pcm)
    u = samples(user)
    corr_len = len(raw) + len(u)
    corr = np.fft.irfft(np.fft.rfft(raw, corr_len) * np.conj(np.fft.rfft(u, corr_len)), corr_len)
    corr = corr[: len(raw)]
    first_voiced = int(np.argmax(np.abs(u) > 0.05 * np.max(np.abs(u))))
    for i in range(n):
        if not (barge_every and i % barge_every == barge_every - 1):
            continue
        a, b = spans[i]
        lo = max(0, int((a - t0) * RATE))
        hi = min(len(corr), int((b + 1.5 - t0) * RATE))
        if hi > lo:
            onsets.append(t0 + (lo + int(np.argmax(corr[lo:hi])) + first_voiced) / RATE)

    def during_agent(t_audio: float) -> bool:
        t = t0 + t_audio
        return any(a <= t <= b + 0.3 for a, b in spans) and not any(
            o - 0.2 <= t <= o + len(u) / RATE + 0.8 for o in onsets
        )

    raw_starts = [s for s in vad_starts(raw_pcm) if during_agent(s)]
    aec_starts_all = vad_starts(out_pcm)
    aec_starts = [s for s in aec_starts_all if during_agent(s)]
    for s in aec_starts:
        t = t0 + s
        reply = next(i for i, (a, b) in enumerate(spans) if a <= t <= b + 0.3)
        print(
            f"  self-interruption with AEC: reply {reply}, {t - spans[reply][0]:.2f} s in",
            flush=True,
        )
    delays = []
    for onset in onsets:
        later = [s for s in aec_starts_all if t0 + s >= onset - 0.05]
        if not later:
            delays.append(float("inf"))
            continue
        start_audio = later[0]
        # Wall clock: when the chunk holding that audio left the canceller.
        at = next(d for d, end in done if end >= start_audio)
        delays.append(at - onset)
    return {
        "replies": n,
        "agent_speech_s": sum(b - a for a, b in spans),
        "self_interruptions_without": len(raw_starts),
        "self_interruptions_with": len(aec_starts),
        "barge_ins": len(onsets),
        "barge_in_delay_s": delays,
    }


# -- 4. CPU ---------------------------------------------------------------------------------


def conversation(session: Session, seconds: float) -> float:
    """Turn-taking for ``seconds``: an agent reply, then the user speaks; agent share back."""
    user = speech_pcm16k(USER, "auto")
    agent = 0.0
    elapsed = 0.0
    i = 0
    while elapsed < seconds:
        voice = speech(i)
        duration = min(len(voice) / 2 / RATE, seconds - elapsed)
        session.iface.output(voice[: int(duration * RATE) * 2])
        session.take(duration + 0.3)
        agent += duration
        elapsed += duration + 0.3
        if elapsed >= seconds:
            break
        turn = min(len(user) / 2 / RATE + 0.7, seconds - elapsed)
        with play_into_mic(user) as playback:
            session.take(turn)
            playback.wait(10)
        elapsed += turn
        i += 1
    return agent


def bench_cpu(seconds: float, rounds: int) -> dict[str, Any]:
    """Process CPU over a turn-taking conversation, without and with cancellation."""
    per_round = seconds / rounds
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}
    own = 0.0
    agent = 0.0
    with EchoPath(120, -9.0):
        for r in range(2 * rounds):
            cancel = (r % 2 == 0) == (r // 2 % 2 == 0)  # A B B A A B ...
            with Session(cancel=cancel) as session:
                session.take(0.5)
                c0 = time.process_time()
                share = conversation(session, per_round)
                cpu[cancel] += time.process_time() - c0
                own += session.canceller_cpu_s
                if cancel:
                    agent += share
    return {
        "seconds": seconds,
        "agent_share": agent / seconds,
        "cpu_without_pct": 100 * cpu[False] / seconds,
        "cpu_with_pct": 100 * cpu[True] / seconds,
        "added_pct": 100 * (cpu[True] - cpu[False]) / seconds,
        "canceller_thread_pct": 100 * own / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    args = parser.parse_args(argv)
    quick = args.quick
    settings = (
        [(120, -9.0)]
        if quick
        else [
            (40, -6.0),
            (40, -12.0),
            (120, -6.0),
            (120, -9.0),
            (120, -12.0),
            (250, -6.0),
            (250, -12.0),
        ]
    )
    print(
        f"elevenconv echo benchmark ({'quick' if quick else 'full'}), "
        f"{EchoCanceller().description}",
        flush=True,
    )
    with sound_server():
        print("ERLE (room: module-loopback speaker monitor -> mic bus):", flush=True)
        erle = bench_erle(settings, 3.0 if quick else 8.0)
        print("Long replies (room 120 ms, -9 dB):", flush=True)
        replies = bench_replies(2 if quick else 10, 2 if quick else 3, 120, -9.0)
        print("Added CPU (room 120 ms, -9 dB; turn-taking conversation):", flush=True)
        cpu = bench_cpu(4.0 if quick else 60.0, 1 if quick else 2)
    print()
    print("| figure | without AEC | with AEC | target | verdict |")
    print("|---|---|---|---|---|")
    worst = min(r["erle_db"] for r in erle)
    for r in erle:
        print(
            f"| ERLE, room {r['latency_ms']} ms / {r['gain_db']:+.0f} dB "
            f"(echo {r['echo_dbfs']:.0f} dBFS) | 0 dB | {r['erle_db']:.1f} dB "
            f"(first 2 s {r['erle_first_2s_db']:.1f}) | >= 25 dB | "
            f"{'ok' if r['erle_db'] >= 25 else 'MISSED'} |"
        )
    si_w, si_a = replies["self_interruptions_without"], replies["self_interruptions_with"]
    print(
        f"| self-interruptions, {replies['replies']} long replies "
        f"({replies['agent_speech_s']:.0f} s of agent speech) | {si_w} | {si_a} | 0 | "
        f"{'ok' if si_a == 0 else 'MISSED'} |"
    )
    delays = replies["barge_in_delay_s"]
    worst_delay = max(delays) if delays else float("nan")
    shown = ", ".join(f"{d:.2f}" for d in delays)
    print(
        f"| barge-in detected after speech onset ({len(delays)} trials, s) | - | "
        f"max {worst_delay:.2f} ({shown}) | <= 1.0 s | "
        f"{'ok' if delays and worst_delay <= 1.0 else 'MISSED'} |"
    )
    print(
        f"| CPU of a {cpu['seconds']:.0f} s voice conversation, agent speaking "
        f"{100 * cpu['agent_share']:.0f} % of it (% of one core) | "
        f"{cpu['cpu_without_pct']:.2f} % | {cpu['cpu_with_pct']:.2f} % "
        f"(added {cpu['added_pct']:.2f} %; canceller thread {cpu['canceller_thread_pct']:.2f} %)"
        f" | added <= 3 % | {'ok' if cpu['added_pct'] <= 3.0 else 'MISSED'} |"
    )
    ok = worst >= 25 and si_a == 0 and si_w > 0 and bool(delays) and worst_delay <= 1.0
    return 0 if ok or quick else 1


if __name__ == "__main__":
    sys.exit(main())
