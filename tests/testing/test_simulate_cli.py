"""``elevenconv simulate`` (elevenconv.testing._cli) as a subprocess: agents and key from the
command line, signed URLs and tokens across origins, scripts, SIGTERM/SIGINT, --record."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from elevenconv.errors import ConfigurationError
from elevenconv.testing._cli import load_script
from tests.conftest import scaled

pytestmark = pytest.mark.timeout(90)

TEXT_ONLY_INIT = {
    "type": "conversation_initiation_client_data",
    "conversation_config_override": {"conversation": {"text_only": True}},
}
FAST = ["--tts", "tone", "--realtime-factor", "0", "--ping-interval", "0"]


class Simulate:
    """A running ``simulate`` subprocess whose output lines are read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, name="test-simulate-stdout")
        self._reader.start()
        self.base_url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self) -> str:
        deadline = time.monotonic() + scaled(30)
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, f"simulate exited early: {self.stderr()}"
            if "listening on " in line:
                self.base_url = line.split("listening on ", 1)[1].strip()
                return self.base_url

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        code = self.proc.wait(scaled(30))
        self._reader.join(scaled(5))
        return code

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()


@contextmanager
def simulate(*args: str) -> Iterator[Simulate]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "elevenconv.testing._cli", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    sim = Simulate(proc)
    try:
        yield sim
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(10))
        sim._reader.join(scaled(5))
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def recv(ws: websocket.WebSocket, type_: str) -> dict[str, Any]:
    """Read until a message of ``type_`` (pings are answered)."""
    deadline = time.monotonic() + scaled(10)
    while True:
        ws.settimeout(max(0.01, deadline - time.monotonic()))
        msg: dict[str, Any] = json.loads(ws.recv())
        if msg["type"] == type_:
            return msg


def read_until_closed(ws: websocket.WebSocket) -> None:
    """Read until the server has closed (a timeout fails the test)."""
    ws.settimeout(scaled(10))
    try:
        while True:
            ws.recv()
    except websocket.WebSocketConnectionClosedException:
        return


def test_private_agent_signed_url_across_origins_then_sigterm_records(tmp_path: Path) -> None:
    record = tmp_path / "transcript.json"
    with simulate(
        "--agent", "support:private", "--agent", "sales", "--api-key", "dev-key",
        "--record", str(record), *FAST,
    ) as sim:  # fmt: skip
        base = sim.wait_ready()
        banner = "".join(sim.stdout)
        assert "support (private)" in banner and "sales (public)" in banner
        assert "dev-key" not in banner  # a key given on the command line is not echoed
        origin = {"Origin": "http://localhost:5173"}
        preflight = requests.options(
            base + "/v1/convai/conversation/get-signed-url",
            headers={**origin, "Access-Control-Request-Headers": "xi-api-key"},
            timeout=scaled(5),
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        wrong = requests.get(
            base + "/v1/convai/conversation/get-signed-url",
            params={"agent_id": "support"},
            headers={**origin, "xi-api-key": "sim-api-key"},
            timeout=scaled(5),
        )
        assert wrong.status_code == 401
        response = requests.get(
            base + "/v1/convai/conversation/get-signed-url",
            params={"agent_id": "support"},
            headers={**origin, "xi-api-key": "dev-key"},
            timeout=scaled(5),
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        signed_url = response.json()["signed_url"]
        ws = websocket.create_connection(signed_url, timeout=scaled(5), subprotocols=["convai"])
        assert ws.getsubprotocol() == "convai"
        ws.send(json.dumps(TEXT_ONLY_INIT))
        conversation_id = recv(ws, "conversation_initiation_metadata")[
            "conversation_initiation_metadata_event"
        ]["conversation_id"]
        recv(ws, "agent_response")  # the first message
        ws.send(json.dumps({"type": "user_message", "text": "hello there"}))
        reply = recv(ws, "agent_response")
        # SIGTERM with the client still connected: it gets a 1001 close, the process exits 0.
        assert sim.stop(signal.SIGTERM) == 0
        read_until_closed(ws)
        ws.close()
        assert "[simulator stopped: 1 session(s), 0 contract violation(s)]" in "".join(sim.stdout)
    data = json.loads(record.read_text())
    (session,) = data["sessions"]
    assert session["agent_id"] == "support"
    assert session["conversation_id"] == conversation_id
    assert session["signed"] and session["subprotocol"] == "convai"
    assert session["close_code"] == 1001
    kinds = [(e["direction"], e["kind"]) for e in data["transcript"]]
    assert kinds[0] == ("in", "conversation_initiation_client_data")
    assert ("out", "conversation_initiation_metadata") in kinds
    assert ("in", "user_message") in kinds
    outgoing = [e["message"] for e in data["transcript"] if e["direction"] == "out"]
    assert reply in outgoing
    assert [e["t"] for e in data["transcript"]] == sorted(e["t"] for e in data["transcript"])
    # The signature never reaches the file.
    text = record.read_text()
    assert signed_url.split("conversation_signature=")[1] not in text
    assert any("conversation_signature=<redacted>" in r["path"] for r in data["http_requests"])
    assert data["violations"] == [] and data["errors"] == []


def test_script_file_and_sigint(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"expect": {"match": "user_message", "timeout": 20}},
                {"say": {"text": "scripted hello", "audio": False}},
                {"send": {"type": "guardrail_triggered"}},
                {"close": {"code": 1000, "reason": "script done"}},
            ]
        )
    )
    record = tmp_path / "out.json"
    with simulate("--script", str(script), "--record", str(record), *FAST) as sim:
        base = sim.wait_ready()
        token = requests.get(
            base + "/v1/convai/conversation/token",
            params={"agent_id": "sim-agent"},
            timeout=scaled(5),
        ).json()["token"]
        ws_url = base.replace("http://", "ws://") + "/v1/convai/conversation?agent_id=sim-agent"
        ws = websocket.create_connection(
            ws_url, timeout=scaled(5), subprotocols=["convai", f"bearer.{token}"]
        )
        ws.send(json.dumps(TEXT_ONLY_INIT))
        recv(ws, "conversation_initiation_metadata")
        ws.send(json.dumps({"type": "user_message", "text": "hi"}))
        assert recv(ws, "agent_response")["agent_response_event"]["agent_response"] == (
            "scripted hello"
        )
        recv(ws, "guardrail_triggered")
        read_until_closed(ws)
        ws.close()
        assert sim.stop(signal.SIGINT) == 0
    data = json.loads(record.read_text())
    assert data["sessions"][0]["bearer"] is True
    assert data["sessions"][0]["close_code"] == 1000
    assert data["sessions"][0]["close_reason"] == "script done"
    assert token not in record.read_text()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc tasks")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_taken_by_another_thread_still_stops_it(signum: int) -> None:
    # The kernel gives a process's signal to any thread that does not block it. The old
    # code waited on an Event its Python handler set, and that handler runs only in the
    # main thread at its next bytecode: a signal taken by the server thread (or landing
    # as the main thread began to block) was never seen, and `simulate` ran on (CI saw
    # it hang 30 s after SIGINT). kill() aimed at a non-main thread's id makes that
    # thread take the signal, every time.
    with simulate(*FAST) as sim:
        sim.wait_ready()
        assert _signal_another_thread(sim.proc, signum) == 0, sim.stderr()


def _signal_another_thread(proc: subprocess.Popen[str], signum: int) -> int:
    others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    assert others, "the simulator runs a server thread"
    os.kill(others[0], signum)
    try:
        return proc.wait(scaled(15))
    except subprocess.TimeoutExpired:
        pytest.fail(f"signal {signum} taken by thread {others[0]} did not stop the simulator")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc tasks")
def test_serve_forever_stops_on_a_signal_another_thread_took() -> None:
    code = "from elevenconv.testing._simulator import serve_forever; serve_forever(port=0)"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "simulator on http://" in proc.stdout.readline()
            assert _signal_another_thread(proc, signal.SIGINT) == 0
        finally:
            proc.kill()


def test_fail_on_violations_exit_status(tmp_path: Path) -> None:
    with simulate("--fail-on-violations", *FAST) as sim:
        base = sim.wait_ready()
        ws = websocket.create_connection(
            base.replace("http://", "ws://") + "/v1/convai/conversation?agent_id=sim-agent",
            timeout=scaled(5),
        )
        ws.send(json.dumps(TEXT_ONLY_INIT))
        recv(ws, "conversation_initiation_metadata")
        ws.send(json.dumps({"type": "user_message", "text": 42}))  # text must be a string
        recv(ws, "error")
        ws.close()
        assert sim.stop() == 1
        assert "broke the contract" in sim.stderr()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"say": "x"}', "expected a JSON list"),
        ('[{"fly": 1}]', "unknown step 'fly'"),
        ('[{"say": "a", "ping": null}]', "step 1"),
        ('[{"close": {"colour": 1}}]', "step 1 (close)"),
    ],
)
def test_bad_script_is_a_usage_error(tmp_path: Path, content: str, problem: str) -> None:
    script = tmp_path / "bad.json"
    script.write_text(content)
    with pytest.raises(ConfigurationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_script(script)
    done = subprocess.run(
        [sys.executable, "-m", "elevenconv.testing._cli", "--port", "0", "--script", str(script)],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert done.returncode == 2
    assert "elevenconv simulate:" in done.stderr and "Traceback" not in done.stderr


def test_script_steps_map_to_step_methods(tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(
        json.dumps(
            [
                {"metadata": None},
                {"ping": None},
                {"sleep": 0.01},
                {"send": {"message": {"type": "ping", "ping_event": {"event_id": 9}}}},
                {"binary": "raw"},
                {"wait_for": {"match": "pong", "timeout": 3}},
                {"emit": "guardrail_triggered"},
                {"emit": {"message_type": "context_usage", "context_tokens": 5}},
                {"say": {"text": "f", "attachments": [{"url": "u", "name": "n"}]}},
                {"drop": {"reset": True}},
            ]
        )
    )
    steps = load_script(script)
    assert [s.kind for s in steps] == [
        "metadata", "ping", "sleep", "send", "send", "wait_for", "emit", "emit", "say", "drop",
    ]  # fmt: skip
    assert steps[7].args["fields"] == {"context_tokens": 5}
    assert steps[3].args["message"] == {"type": "ping", "ping_event": {"event_id": 9}}
    assert steps[4].args["message"] == b"raw"


def test_bad_arguments_and_port_in_use() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "elevenconv.testing._cli", *args],
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )

    bad = run("--agent", "x:secret")
    assert bad.returncode == 2 and "ID:private" in bad.stderr
    assert run("--port", "70000").returncode == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = run("--port", str(busy.getsockname()[1]))
    assert taken.returncode == 2
    assert "choose another --port" in taken.stderr and "Traceback" not in taken.stderr
