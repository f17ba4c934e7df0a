"""The benchmark's server process: an :class:`AgentSimulator` whose agents are scenarios.

    python benchmarks/server.py --config '{"audio": {...}, ...}'

Prints ``PORT <n>`` once it listens, then serves until its stdin is closed (the driver
closes it), and prints ``REPORT {json}`` (contract violations and simulator errors) on
the way out. Both client libraries connect to the same agents:

* ``bench-stream``: waits for the user message ``go <n> <interval_s> <chunk_bytes>``,
  then sends ``n`` ``audio`` messages paced ``interval_s`` apart. The first 8 bytes of
  each chunk's PCM are ``time.monotonic_ns()`` taken just before the frame is written
  (CLOCK_MONOTONIC is system-wide on Linux, so the client process can subtract it).
* ``bench-pong``: ``go <blocks> <block_s>``; per block an ``agent_response`` (the client's
  callback then blocks ``block_s``) and, while it blocks, pings one after the other;
  ping -> pong delays are measured here and sent back in ``bench-done {json}``.
* ``bench-tool``: ``go <n> <gap_s>``; ``n`` sequential ``client_tool_call`` s, the
  ``client_tool_call`` -> ``client_tool_result`` round trip measured here.
* ``bench-bargein``: ``go``; a 1 kHz tone in 250 ms chunks at twice real time, then an
  ``interruption`` at a random phase; ``bench-done {"t_interrupt_ns": ...}``.
* ``bench-idle``: the handshake, then nothing.

Hot-path messages are written with ``conn.send`` directly (their shape is validated once,
against the contract, before the loop); everything else goes through ``SimSession.send``
and is validated every time.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elevenconv.testing import AgentSimulator, Step
from elevenconv.testing._contract import client_message_kind, validate_server_message
from elevenconv.testing._sim_session import SessionOver, SimSession

SCENARIOS = ("stream", "pong", "tool", "bargein", "idle")
RATE = 16000
STAMP = struct.Struct("<qB")  # 9 bytes: a multiple of 3, so base64 pieces concatenate


def _wait_go(session: SimSession, timeout: float = 60.0) -> list[str]:
    """Skip client messages until ``user_message`` ``go ...``; return its words."""
    deadline = time.monotonic() + timeout
    while True:
        msg = session.receive(max(0.001, deadline - time.monotonic()))
        if client_message_kind(msg) == "user_message" and str(msg.get("text", "")).startswith("go"):
            return str(msg["text"]).split()[1:]


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _say(session: SimSession, text: str) -> None:
    session.send(
        {
            "type": "agent_response",
            "agent_response_event": {"agent_response": text, "event_id": session.next_event_id()},
        }
    )


def _audio_template(session: SimSession, event_id: int) -> tuple[str, str]:
    head = '{"type": "audio", "audio_event": {"event_id": ' + str(event_id) + ', "audio_base_64": "'
    tail = '"}}'
    return head, tail


def _check_shape(session: SimSession, wire: str) -> None:
    problems = validate_server_message(json.loads(wire))
    if problems:
        raise AssertionError(f"benchmark server builds invalid messages: {problems}")


def stream(session: SimSession) -> None:
    words = _wait_go(session)
    n, interval, size = int(words[0]), float(words[1]), int(words[2])
    phase = float(words[3]) if len(words) > 3 else 0.0
    body = base64.b64encode(bytes(size - STAMP.size)).decode()
    head, tail = _audio_template(session, session.next_event_id())
    conn = session.conn
    _check_shape(session, head + base64.b64encode(STAMP.pack(0, 0)).decode() + body + tail)
    next_t = time.monotonic() + random.uniform(0.0, phase)
    for _ in range(n):
        _sleep_until(next_t)
        stamp = base64.b64encode(STAMP.pack(time.monotonic_ns(), 0)).decode()
        conn.send(head + stamp + body + tail)
        next_t += interval


def pong(session: SimSession) -> None:
    words = _wait_go(session)
    blocks, block_s = int(words[0]), float(words[1])
    spacing = 0.1
    delays: list[float] = []
    conn = session.conn
    for _ in range(blocks):
        t_block = time.monotonic()
        _say(session, "block")
        next_ping = t_block + 0.02
        while next_ping < t_block + block_s - 0.05:
            _sleep_until(next_ping)
            event_id = session.next_event_id()
            wire = json.dumps({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": 0}})
            if not delays:
                _check_shape(session, wire)
            t_sent = time.monotonic()
            conn.send(wire)
            while True:
                msg = session.receive(30.0)
                if client_message_kind(msg) == "pong" and msg.get("event_id") == event_id:
                    break
            delays.append((time.monotonic() - t_sent) * 1000.0)
            next_ping = max(next_ping + spacing, time.monotonic() + 0.001)
        _sleep_until(t_block + block_s + 0.1)
    _say(session, "bench-done " + json.dumps({"pong_ms": delays}))


def tool(session: SimSession) -> None:
    words = _wait_go(session)
    n, gap = int(words[0]), float(words[1])
    conn = session.conn
    rtts: list[float] = []
    for i in range(n):
        call_id = f"bench_{i}"
        wire = json.dumps(
            {
                "type": "client_tool_call",
                "client_tool_call": {
                    "tool_name": "bench_tool",
                    "tool_call_id": call_id,
                    "event_id": session.next_event_id(),
                    "parameters": {"i": i},
                    "expects_response": True,
                },
            }
        )
        if i == 0:
            _check_shape(session, wire)
        t_sent = time.monotonic()
        conn.send(wire)
        while True:
            msg = session.receive(30.0)
            if client_message_kind(msg) == "client_tool_result" and msg.get("tool_call_id") == (
                call_id
            ):
                break
        rtts.append((time.monotonic() - t_sent) * 1000.0)
        time.sleep(gap)
    _say(session, "bench-done " + json.dumps({"tool_ms": rtts}))


def bargein(session: SimSession) -> None:
    words = _wait_go(session)
    settle = float(words[0]) if words else 0.5
    time.sleep(settle)  # the client's audio device is open and running by now
    chunk_s, freq = 0.25, 1000.0
    n = int(4.0 / chunk_s)
    samples = int(chunk_s * RATE)
    event_id = session.next_event_id()
    head, tail = _audio_template(session, event_id)
    chunks = []
    for c in range(n):
        pcm = b"".join(
            struct.pack(
                "<h", int(0.5 * 32767 * math.sin(2 * math.pi * freq * (c * samples + k) / RATE))
            )
            for k in range(samples)
        )
        chunks.append(head + base64.b64encode(pcm).decode() + tail)
    _check_shape(session, chunks[0])
    t0 = time.monotonic()
    t_interrupt = t0 + 1.2 + random.uniform(0.0, chunk_s)
    for c in range(n):
        t_next = t0 + c * chunk_s / 2  # twice real time: the client's queue grows
        if t_next >= t_interrupt:
            break
        _sleep_until(t_next)
        session.conn.send(chunks[c])
    _sleep_until(t_interrupt)
    wire = json.dumps({"type": "interruption", "interruption_event": {"event_id": event_id}})
    _check_shape(session, wire)
    t_int_ns = time.monotonic_ns()
    session.conn.send(wire)
    time.sleep(1.0)
    _say(session, "bench-done " + json.dumps({"t_interrupt_ns": t_int_ns}))


def idle(session: SimSession) -> None:
    pass


def dispatch(session: SimSession) -> None:
    scenario = session.agent_id.removeprefix("bench-")
    try:
        {"stream": stream, "pong": pong, "tool": tool, "bargein": bargein, "idle": idle}[scenario](
            session
        )
    except TimeoutError as exc:
        raise SessionOver(f"{scenario}: {exc}") from exc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sim = AgentSimulator(
        script=[Step.call(dispatch)],
        port=args.port,
        ping_interval=None,
        audio_realtime_factor=None,
        record_audio=False,
        close_timeout=2.0,
        shutdown_timeout=20.0,
    )
    for name in SCENARIOS:
        sim.add_agent(f"bench-{name}", first_message=None, output_format="pcm_16000")
    sim.start()
    print(f"PORT {sim.port}", flush=True)
    # Serve until the driver closes our stdin.
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, name="bench-stdin", daemon=True).start()
    done.wait()
    error = ""
    try:
        sim.close(raise_errors=False)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    report = {
        "sessions": len(sim.sessions),
        "violations": [f"{v}"[:300] for v in sim.violations],
        "errors": [e[:300] for e in sim.errors],
        "contract_errors": sim.contract_errors[:20],
        "close_error": error,
    }
    print("REPORT " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
