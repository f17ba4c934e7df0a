"""Soak: voice conversations with audio both ways and random faults, for a long time.

    python benchmarks/soak.py --minutes 30 [--conversations 4]

The simulator (the default agent: speech, VAD, barge-in, pings every second, client tool
calls, ``end_call``) runs in its own process (``soak.py --serve``) with one agent per
fault kind. This process runs ``--conversations`` workers; each loops: pick an agent at
random, start a voice Conversation whose audio interface "speaks" a tone burst into the
microphone every few seconds (real time, 250 ms chunks) and swallows the agent's audio,
type now and then (including "what time is it?", which makes the agent call a client
tool, and "bye", which makes it end the call), and end after 5-25 s unless the agent or
a fault ended it first.

Every 10 s it samples sessions, messages, errors (by kind), threads and RSS. Checks:
``start_session`` fails only where a fault explains it, ``end_session`` returns and
leaves no thread of its conversation behind, and RSS / threads do not grow. Writes
``benchmarks/results/soak-<date>.json``, ``soak-latest.json`` and ``soak-latest.svg``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

#: agent id -> (weight, Faults fields). Faults run on the simulator's agent thread.
AGENTS: dict[str, tuple[int, dict[str, Any]]] = {
    "soak-clean": (6, {}),
    "soak-slow": (1, {"response_delay": 1.5, "metadata_delay": 0.5}),
    "soak-drop": (1, {"after_first_message": [("sleep", 2.0), ("drop", None)]}),
    "soak-reset": (1, {"after_first_message": [("sleep", 1.0), ("drop_reset", None)]}),
    "soak-garbage": (
        1,
        {
            "after_first_message": [
                ("malformed", None),
                ("bad_message", "missing_fields"),
                ("bad_message", "wrong_types"),
                ("unknown_type", None),
                ("binary", None),
            ]
        },
    ),
    "soak-close1011": (1, {"after_first_message": [("sleep", 3.0), ("close", 1011)]}),
    "soak-no-metadata": (1, {"send_metadata": False}),
}
#: Faults that make a failed start_session() expected.
START_MAY_FAIL = {"soak-no-metadata", "soak-drop", "soak-reset", "soak-close1011"}


# ======================================================================================
# Server process
# ======================================================================================


def serve(port: int) -> int:
    from elevenconv.testing import AgentSimulator, Faults, Step

    def steps(spec: list[tuple[str, Any]]) -> tuple[Step, ...]:
        out = []
        for kind, arg in spec:
            if kind == "sleep":
                out.append(Step.sleep(arg))
            elif kind == "drop":
                out.append(Step.drop())
            elif kind == "drop_reset":
                out.append(Step.drop(reset=True))
            elif kind == "close":
                out.append(Step.close(arg, "soak fault"))
            elif kind == "bad_message":
                out.append(Step.bad_message(arg))
            else:
                out.append(getattr(Step, kind)())
        return tuple(out)

    sim = AgentSimulator(
        port=port,
        ping_interval=1.0,
        audio_realtime_factor=1.0,
        tts="tone",
        record_audio=False,
        shutdown_timeout=30.0,
    )
    for agent_id, (_, spec) in AGENTS.items():
        fields = {k: steps(v) if k.startswith(("after_", "on_")) else v for k, v in spec.items()}
        sim.add_agent(agent_id, faults=Faults(**fields))
    sim.start()
    print(f"PORT {sim.port}", flush=True)
    sys.stdin.read()  # until the soak closes our stdin
    try:
        sim.close(raise_errors=False)
    finally:
        report = {
            "sessions": len(sim.sessions),
            "violations": [str(v)[:300] for v in sim.violations][:20],
            "violation_count": len(sim.violations),
            "errors": [e[:300] for e in sim.errors][:20],
            "error_count": len(sim.errors),
            "contract_errors": sim.contract_errors[:20],
        }
        print("REPORT " + json.dumps(report), flush=True)
    return 0


# ======================================================================================
# Client side
# ======================================================================================


def _tone(freq: float, seconds: float, amplitude: float = 0.4) -> bytes:
    n = int(seconds * 16000)
    return b"".join(
        struct.pack("<h", int(amplitude * 32767 * math.sin(2 * math.pi * freq * k / 16000)))
        for k in range(n)
    )


CHUNK = 4000 * 2  # 250 ms of PCM16 16 kHz
SPEECH = _tone(440.0, 1.0)
SILENCE = bytes(CHUNK)


class Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.problems: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(f"{time.strftime('%H:%M:%S')} {text}")
        print(f"PROBLEM: {text}", flush=True)


def make_audio_interface(totals: Totals, rng: random.Random) -> Any:
    from elevenconv import AudioInterface

    class SoakAudio(AudioInterface):
        """Microphone: silence, with a 1 s tone burst every 3-8 s (the simulator's VAD
        hears speech); speaker: counts what it is given. Real-time pacing."""

        def __init__(self) -> None:
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        def start(self, input_callback: Callable[[bytes], None]) -> None:
            self._thread = threading.Thread(
                target=self._mic, args=(input_callback,), name="soak-mic", daemon=True
            )
            self._thread.start()

        def _mic(self, input_callback: Callable[[bytes], None]) -> None:
            next_t = time.monotonic()
            speak_at = next_t + rng.uniform(3, 8)
            pos = -1
            while not self._stop.is_set():
                now = time.monotonic()
                if pos < 0 and now >= speak_at:
                    pos = 0
                if pos >= 0:
                    chunk = SPEECH[pos : pos + CHUNK]
                    pos += CHUNK
                    if pos >= len(SPEECH):
                        pos = -1
                        speak_at = now + rng.uniform(3, 8)
                else:
                    chunk = SILENCE
                input_callback(chunk)
                totals.add("mic_chunks")
                next_t += 0.25
                self._stop.wait(max(0.0, next_t - time.monotonic()))

        def stop(self) -> None:
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(2)

        def output(self, audio: bytes) -> None:
            totals.add("audio_out_bytes", len(audio))

        def interrupt(self) -> None:
            totals.add("interrupts")

    return SoakAudio()


def worker(idx: int, base_url: str, deadline: float, totals: Totals, stop: threading.Event) -> None:
    from elevenconv import ClientTools, Conversation, ElevenLabsClient

    rng = random.Random(idx * 7919 + int(time.time()))
    client = ElevenLabsClient(api_key="sim-api-key", base_url=base_url)
    names = list(AGENTS)
    weights = [AGENTS[n][0] for n in names]
    while time.monotonic() < deadline and not stop.is_set():
        agent = rng.choices(names, weights)[0]
        tools = ClientTools()
        tools.register("get_current_time", lambda params: time.strftime("%H:%M:%S"))
        conv = Conversation(
            client,
            agent,
            requires_auth=False,
            audio_interface=make_audio_interface(totals, rng),
            client_tools=tools,
            start_timeout=3.0,
            close_timeout=2.0,
        )
        ended = threading.Event()
        conv.on("message", lambda msg: totals.add("messages_in"))
        conv.on("error", lambda exc: totals.error(type(exc).__name__))
        conv.on("session_ended", lambda *a, ended=ended: ended.set())
        before = {t for t in threading.enumerate() if t.name.startswith("elevenconv-")}
        totals.add("sessions_started")
        try:
            conv.start_session()
        except Exception as exc:
            totals.error(f"start:{type(exc).__name__}")
            if agent not in START_MAY_FAIL:
                totals.problem(f"{agent}: start_session failed: {exc!r}")
            _check_threads(conv, before, totals, agent)
            continue
        totals.add("sessions_active")
        stop_at = time.monotonic() + rng.uniform(5, 25)
        while time.monotonic() < stop_at and not ended.is_set() and not stop.is_set():
            ended.wait(rng.uniform(1.0, 4.0))
            if ended.is_set():
                break
            text = rng.choice(
                ["hello", "what time is it?", "tell me something", "what time is it?", "bye"]
            )
            try:
                conv.send_user_message(text)
                totals.add("messages_out")
                if rng.random() < 0.2:
                    conv.send_contextual_update("the user is in a soak test")
                    totals.add("messages_out")
            except Exception as exc:
                totals.error(f"send:{type(exc).__name__}")
        t0 = time.monotonic()
        conv.end_session()
        took = time.monotonic() - t0
        if took > 9.0:
            totals.problem(f"{agent}: end_session() took {took:.1f} s")
        totals.add("sessions_ended")
        _check_threads(conv, before, totals, agent)


def _check_threads(conv: Any, before: set[threading.Thread], totals: Totals, agent: str) -> None:
    mine = [
        t
        for t in threading.enumerate()
        if t.name.startswith("elevenconv-") and t not in before and t.name.endswith(f"-{conv._n}")
    ]
    if mine:
        totals.problem(f"{agent}: threads left after end_session: {[t.name for t in mine]}")


# ======================================================================================
# Plot (SVG, no dependencies)
# ======================================================================================


def svg_plot(samples: list[dict[str, Any]], title: str) -> str:
    panels = [
        ("RSS (MB)", [("rss_mb", "#1f77b4")]),
        ("threads", [("threads", "#d62728"), ("library_threads", "#ff7f0e")]),
        ("sessions (cumulative)", [("sessions_started", "#2ca02c"), ("errors", "#9467bd")]),
        ("messages in / 10 s", [("messages_in_rate", "#8c564b")]),
    ]
    width, ph, left, top = 900, 150, 70, 40
    height = top + len(panels) * (ph + 40) + 20
    t = [s["t_min"] for s in samples] or [0.0]
    tmax = max(t[-1], 1e-9)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{title}</text>',
    ]
    for i, (label, series) in enumerate(panels):
        y0 = top + i * (ph + 40)
        vals = [s.get(k, 0) for k, _ in series for s in samples] or [0]
        vmax = max(vals) * 1.1 or 1.0
        out.append(
            f'<rect x="{left}" y="{y0}" width="{width - left - 20}" height="{ph}" '
            'fill="none" stroke="#999"/>'
        )
        out.append(f'<text x="5" y="{y0 + 12}">{label}</text>')
        out.append(f'<text x="5" y="{y0 + 26}" fill="#666">max {max(vals):,.0f}</text>')
        out.append(f'<text x="{left - 5}" y="{y0 + ph}" text-anchor="end">0</text>')
        out.append(f'<text x="{left - 5}" y="{y0 + 10}" text-anchor="end">{vmax:,.0f}</text>')
        for key, color in series:
            pts = " ".join(
                f"{left + (s['t_min'] / tmax) * (width - left - 20):.1f},"
                f"{y0 + ph - (s.get(key, 0) / vmax) * ph:.1f}"
                for s in samples
            )
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>'
            )
        legend = ", ".join(k for k, _ in series)
        out.append(f'<text x="{left + 5}" y="{y0 + ph + 14}" fill="#333">{legend}</text>')
    out.append(
        f'<text x="{width - 20}" y="{height - 5}" text-anchor="end">minutes ({tmax:.1f})</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


# ======================================================================================
# Main
# ======================================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--interval", type=float, default=10.0, help="sampling period (s)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.port)

    import logging

    import psutil

    logging.basicConfig(level=logging.CRITICAL)  # faults are expected; counted, not logged
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert server.stdout is not None
    assert server.stdin is not None
    line = server.stdout.readline()
    if not line.startswith("PORT "):
        print(f"soak server failed to start: {line!r}", file=sys.stderr)
        return 2
    base_url = f"http://127.0.0.1:{int(line.split()[1])}"
    totals = Totals()
    stop = threading.Event()
    start = time.monotonic()
    deadline = start + args.minutes * 60
    threads = [
        threading.Thread(
            target=worker, args=(i, base_url, deadline, totals, stop), name=f"soak-worker-{i}"
        )
        for i in range(args.conversations)
    ]
    for t in threads:
        t.start()
    proc = psutil.Process()
    samples: list[dict[str, Any]] = []
    last_in = 0
    print(f"soak: {args.conversations} conversations for {args.minutes:g} min on {base_url}")
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(max(0.0, args.interval / len(threads)))
            with totals.lock:
                c = dict(totals.c)
                n_errors = sum(totals.errors.values())
            sample = {
                "t_min": (time.monotonic() - start) / 60,
                "rss_mb": proc.memory_info().rss / 2**20,
                "threads": threading.active_count(),
                "library_threads": sum(
                    1 for t in threading.enumerate() if t.name.startswith("elevenconv-")
                ),
                "cpu_s": sum(proc.cpu_times()[:2]),
                "errors": n_errors,
                **{
                    k: c.get(k, 0)
                    for k in (
                        "sessions_started",
                        "sessions_ended",
                        "messages_in",
                        "messages_out",
                        "mic_chunks",
                        "interrupts",
                        "audio_out_bytes",
                    )
                },
            }
            sample["messages_in_rate"] = sample["messages_in"] - last_in
            last_in = sample["messages_in"]
            samples.append(sample)
            print(
                f"[{sample['t_min']:5.1f} min] sessions {sample['sessions_started']}, "
                f"msgs in {sample['messages_in']}, out {sample['messages_out']}, "
                f"errors {n_errors}, threads {sample['threads']}, "
                f"RSS {sample['rss_mb']:.1f} MB",
                flush=True,
            )
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(30)
    server.stdin.close()
    report: dict[str, Any] = {}
    out = server.stdout.read()  # until the server exits (EOF)
    server.wait(120)
    for line in out.splitlines():
        if line.startswith("REPORT "):
            report = json.loads(line[len("REPORT ") :])

    # Verdicts: no problems; RSS and threads flat (last fifth vs second fifth).
    def span(key: str, a: float, b: float) -> float:
        vals = [s[key] for s in samples if a <= s["t_min"] / max(samples[-1]["t_min"], 1e-9) < b]
        return sum(vals) / len(vals) if vals else math.nan

    rss_growth = span("rss_mb", 0.8, 1.01) - span("rss_mb", 0.2, 0.4)
    end_lib_threads = sum(1 for t in threading.enumerate() if t.name.startswith("elevenconv-"))
    ok = not totals.problems and end_lib_threads == 0 and not report.get("violation_count")
    now = dt.datetime.now(dt.timezone.utc)
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "conversations": args.conversations,
        "agents": {k: {"weight": w, "faults": repr(f)} for k, (w, f) in AGENTS.items()},
        "totals": dict(totals.c),
        "errors_by_kind": dict(totals.errors),
        "problems": totals.problems,
        "rss_growth_mb_second_to_last_fifth": rss_growth,
        "library_threads_at_end": end_lib_threads,
        "server_report": report,
        "ok": ok,
        "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    for name in (f"soak-{stamp}.json", "soak-latest.json"):
        (args.out / name).write_text(json.dumps(doc, indent=1) + "\n")
    title = (
        f"elevenconv soak: {args.conversations} voice conversations, {args.minutes:g} min, "
        f"{totals.c.get('sessions_started', 0)} sessions, "
        f"{sum(totals.errors.values())} errors (faults injected)"
    )
    (args.out / "soak-latest.svg").write_text(svg_plot(samples, title) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "samples"}, indent=1))
    print(f"wrote {args.out / 'soak-latest.json'} and soak-latest.svg: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
