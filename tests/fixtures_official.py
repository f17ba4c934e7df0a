"""Fixtures: the official ElevenLabs clients, unmodified, against ``AgentSimulator``.

* ``official_sim`` -- a started simulator with a private agent (``PRIVATE_AGENT``) and a
  voice agent whose greeting is long enough to be interrupted (``VOICE_AGENT``); pings
  every 0.3 s so that every client answers some. Closed (and checked) after the test.
* :func:`assert_clean` -- every message either side sent validates against the YAML
  contract, and the simulator recorded no violation, no contract error, no error.
* ``speech_wav`` -- a WAV of real speech (espeak-ng, converted by sox to 16 kHz mono
  PCM16), made at test time: the "user" that barges in.
* ``js_dir`` -- ``tests/js`` with its ``node_modules`` (``npm ci`` in ``scripts/test``);
  :func:`run_node` runs one of its scripts with a deadline and returns the JSON it prints.
* ``page_url`` -- the browser page (``tests/js/page``) bundled by esbuild and served by a
  loopback HTTP server on its own port (another origin than the simulator, as a real
  front end). It also plays the app's back end: ``GET /api/signed-url?agent_id=X`` fetches
  a signed URL from the simulator with the API key (which never reaches the page).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from elevenconv.testing import AgentSimulator
from elevenconv.testing._sim_session import SIM_CLIENT_EVENTS
from tests.conftest import IN_CI, scaled
from tests.fixtures_contract import SPEC_PATH, ContractChecks, load_contract

JS_DIR = Path(__file__).resolve().parent / "js"
PRIVATE_AGENT = "sim-private"
VOICE_AGENT = "sim-voice"
#: Long enough (about 9 s of espeak-ng speech at real time) that the user's speech always
#: arrives while the agent is still talking, even on a slow machine.
VOICE_GREETING = (
    "Hello! I am the simulated voice agent. I will keep talking for a while, so that you "
    "can interrupt me whenever you like. Go ahead and say something, I am listening."
)
VOICE_EVENTS = SIM_CLIENT_EVENTS | {
    "vad_score",
    "asr_initiation_metadata",
    "mcp_connection_status",
    "internal_tentative_agent_response",
}
SPEECH_TEXT = "Excuse me, could you tell me what time it is?"


def missing(what: str) -> None:
    """Skip outside CI, fail in CI (where everything must be installed)."""
    if IN_CI:
        pytest.fail(f"{what} (CI must have it: see scripts/test)", pytrace=False)
    pytest.skip(what)


# -- simulator -------------------------------------------------------------------------------


@pytest.fixture
def official_sim() -> Iterator[AgentSimulator]:
    """A started simulator for the official clients (see the module docstring)."""
    sim = AgentSimulator(ping_interval=0.3, tts="espeak" if shutil.which("espeak-ng") else "tone")
    sim.add_agent(PRIVATE_AGENT, private=True)
    # The voice agent sends everything, the optional start-up and VAD messages included:
    # every client must cope with them.
    sim.add_agent(VOICE_AGENT, first_message=VOICE_GREETING, client_events=VOICE_EVENTS)
    with sim:
        yield sim


def assert_clean(sim: AgentSimulator, contract: ContractChecks) -> None:
    """Every message of both directions validates against the contract -- the project's
    code (``contract``) and, where it is present (always in CI), the official YAML -- and
    the simulator recorded no client violation, no invalid outgoing message, no error."""
    checks = [contract]
    if SPEC_PATH.is_file() or IN_CI:
        checks.append(load_contract())
    problems: list[str] = []
    for entry in sim.transcript:
        for check in checks:
            if entry.direction == "in":
                errors = check.client_errors(entry.message)
            else:
                errors = check.server_errors(entry.message)
            if errors:
                excerpt = json.dumps(entry.message)[:300] if isinstance(entry.message, dict) else ""
                problems.append(
                    f"{type(check).__name__}: {entry.direction} {entry.kind}: {errors} {excerpt}"
                )
    assert not problems, "messages that break the contract:\n" + "\n".join(problems)
    assert not sim.violations, f"simulator violations: {sim.violations}"
    assert not sim.contract_errors, f"simulator contract errors: {sim.contract_errors}"
    assert not sim.errors, f"simulator errors: {sim.errors}"


def kinds(sim: AgentSimulator, direction: str) -> list[str]:
    """The message kinds of one direction, in order."""
    return [e.kind or "?" for e in sim.transcript if e.direction == direction]


# -- audio -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``SPEECH_TEXT`` spoken by espeak-ng, as a 16 kHz mono PCM16 WAV."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        missing("espeak-ng and sox are needed to make the speech WAV")
    assert espeak is not None and sox is not None
    folder = tmp_path_factory.mktemp("speech")
    raw, wav = folder / "espeak.wav", folder / "speech.wav"
    subprocess.run([espeak, "-w", str(raw), SPEECH_TEXT], check=True, timeout=30)
    subprocess.run(
        [sox, str(raw), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", str(wav)],
        check=True,
        timeout=30,
    )
    return wav


@pytest.fixture(scope="session")
def browser_speech_wav(speech_wav: Path) -> Path:
    """``speech_wav`` after 5 s of silence, for Chromium's fake microphone: that device
    starts with ``getUserMedia``, before the session is connected; the user speaks once
    the agent's (9 s) greeting is well under way."""
    sox = shutil.which("sox")
    assert sox is not None
    out = speech_wav.with_name("browser-speech.wav")
    subprocess.run([sox, str(speech_wav), str(out), "pad", "5", "0"], check=True, timeout=30)
    return out


def wav_pcm(path: Path) -> bytes:
    """The frames of a PCM16 mono WAV."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2), "expected PCM16 mono"
        return w.readframes(w.getnframes())


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def speech_seconds(pcm: bytes, rate: int = 16000, threshold_db: float = -40.0) -> float:
    """Seconds from the first to the last 20 ms frame louder than ``threshold_db`` dBFS
    (what the simulator's energy VAD will call the utterance, give or take a frame)."""
    from array import array

    frame = rate // 50
    samples = array("h")
    samples.frombytes(pcm)
    loud = []
    for i in range(0, len(samples) - frame + 1, frame):
        chunk = samples[i : i + frame]
        rms = (sum(s * s for s in chunk) / frame) ** 0.5
        loud.append(rms > 32768 * 10 ** (threshold_db / 20))
    voiced = [i for i, v in enumerate(loud) if v]
    return (voiced[-1] - voiced[0] + 1) * 0.02 if voiced else 0.0


# -- node ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def js_dir() -> Path:
    """``tests/js`` with its dependencies installed (``npm ci``), and ``node`` on PATH."""
    if shutil.which("node") is None:
        missing("node is not installed (apt-get install nodejs npm)")
    if not (JS_DIR / "node_modules" / ".package-lock.json").is_file():
        missing("tests/js/node_modules is missing: run `npm ci` in tests/js")
    return JS_DIR


def run_node(
    js_dir: Path, script: str, params: dict[str, Any], *, timeout: float = 60.0
) -> dict[str, Any]:
    """Run ``node tests/js/<script> '<params as JSON>'`` and return the JSON object it
    prints on its last stdout line. Fails with its output if it exits non-zero, prints
    no JSON or overruns ``timeout`` (the script also has its own, shorter deadlines)."""
    env = {**os.environ, "NODE_OPTIONS": "--unhandled-rejections=strict"}
    try:
        done = subprocess.run(
            # The script's own deadline comes first, so that it can say where it stood.
            [
                "node",
                str(js_dir / script),
                json.dumps({"deadlineMs": (timeout - 5) * 1000, **params}),
            ],
            cwd=js_dir,
            capture_output=True,
            text=True,
            timeout=scaled(timeout),
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} did not finish within {timeout} s:\n{exc.stdout}\n{exc.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        pytest.fail(
            f"{script} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n"
            f"{done.stderr}",
            pytrace=False,
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result.setdefault("stderr", done.stderr)
    return result


class NodeWorker:
    """``node tests/js/<script> --serve``: one scenario per request, node and the SDK loaded
    once for a whole module (loading @elevenlabs/elevenlabs-js alone takes seconds). A
    request that fails or overruns kills the worker; the next one starts a new one."""

    def __init__(self, js_dir: Path, script: str) -> None:
        self.js_dir, self.script = js_dir, script
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._threads: list[threading.Thread] = []

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["node", str(self.js_dir / self.script), "--serve"],
            cwd=self.js_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = lines = queue.Queue()
        self.stderr = stderr = []

        def pump(stream: Any, sink: Any) -> None:
            for line in stream:
                sink(line)
            if sink is lines.put:
                lines.put(None)

        assert proc.stdout is not None and proc.stderr is not None
        self._threads = [
            threading.Thread(target=pump, args=(proc.stdout, lines.put), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, stderr.append), daemon=True),
        ]
        for t in self._threads:
            t.start()
        return proc

    def run(self, params: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
        """Run one scenario; return its JSON answer (fail the test with the output if it
        fails, answers nothing or overruns ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"deadlineMs": (timeout - 5) * 1000, **params}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + scaled(timeout) + 10  # the first one loads the SDK
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.close()
                pytest.fail(
                    f"{self.script} gave no answer within {timeout} s:\n{''.join(self.stderr)}",
                    pytrace=False,
                )
            if line.startswith("{"):
                break
        result: dict[str, Any] = json.loads(line)
        if not result.get("ok"):
            self.close()
            pytest.fail(
                f"{self.script}: {result.get('error')}\n--- stderr\n{''.join(self.stderr)}",
                pytrace=False,
            )
        return result

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the worker exits at the end of its input
        try:
            proc.wait(scaled(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(scaled(5))
        for t in self._threads:
            t.join(scaled(5))
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def node_sdk_worker(js_dir: Path) -> Iterator[NodeWorker]:
    """A :class:`NodeWorker` for ``node_sdk.mjs`` shared by the module's tests."""
    worker = NodeWorker(js_dir, "node_sdk.mjs")
    try:
        yield worker
    finally:
        worker.close()


# -- the browser page ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (``apt-get install chromium``); no browser downloads."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        missing("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def page_dir(js_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/js/page`` with ``app.js`` bundled (esbuild) from the npm packages."""
    out = tmp_path_factory.mktemp("page")
    shutil.copy(js_dir / "page" / "index.html", out / "index.html")
    subprocess.run(
        [
            str(js_dir / "node_modules" / ".bin" / "esbuild"),
            str(js_dir / "page" / "app.js"),
            "--bundle",
            "--format=esm",
            "--target=chrome120",
            "--log-level=warning",
            f"--outfile={out / 'app.bundle.js'}",
        ],
        check=True,
        timeout=60,
        cwd=js_dir,
    )
    return out


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the page, plus the app's back end (``/api/signed-url``)."""

    sim_base_url = ""
    api_key = ""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/api/signed-url":
            agent_id = parse_qs(url.query).get("agent_id", [""])[0]
            # What a back end does: ask the API for a signed URL with its secret key.
            answer = requests.get(
                f"{self.sim_base_url}/v1/convai/conversation/get-signed-url",
                params={"agent_id": agent_id},
                headers={"xi-api-key": self.api_key},
                timeout=10,
            )
            body = answer.content
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@contextlib.contextmanager
def serve_page(page_dir: Path, sim_base_url: str, api_key: str) -> Iterator[str]:
    """Serve ``page_dir`` (and the back end) on a loopback port of its own; yield the
    page's URL."""
    handler = type(
        "PageHandler", (_PageHandler,), {"sim_base_url": sim_base_url, "api_key": api_key}
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(page_dir))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="official-page-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(scaled(5))


@pytest.fixture
def page_url(page_dir: Path, official_sim: AgentSimulator) -> Iterator[str]:
    """``http://127.0.0.1:<another port>/index.html`` serving the bundled page."""
    with serve_page(page_dir, official_sim.base_url, official_sim.api_key) as url:
        yield url


# -- the simulate command --------------------------------------------------------------------


@contextlib.contextmanager
def simulate_command(*args: str) -> Iterator[str]:
    """Run ``elevenconv simulate --port 0 ... ARGS`` in a subprocess; yield its base URL
    (read from its banner). On exit: SIGTERM, which must stop it with status 0."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "elevenconv",
            "simulate",
            "--port",
            "0",
            "--ping-interval",
            "0.3",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, name="official-simulate-stdout", daemon=True)
    reader.start()
    try:
        base_url = None
        banner: list[str] = []
        while base_url is None:
            try:
                line = lines.get(timeout=scaled(30))
            except queue.Empty:
                line = None
            if line is None:
                proc.kill()
                pytest.fail(f"elevenconv simulate printed no address: {banner}", pytrace=False)
            banner.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            base_url = found[1] if found else None
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(scaled(20))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(scaled(5))
            pytest.fail("elevenconv simulate did not stop on SIGTERM", pytrace=False)
        reader.join(scaled(5))
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        assert status == 0, f"elevenconv simulate exited {status}: {stderr}"
