"""Security checks, end to end: secrets, TLS, bounded queues, bounded tool work.

* **Secrets.** A whole private-agent session against the AgentSimulator (API key, signed
  URL with ``conversation_signature=``), plus the ways it can fail, with every log record
  at DEBUG captured: the key and every signature token must be absent from each log line,
  each exception raised or emitted (message, repr, traceback, cause chain) and each
  ``repr``. Log records of the *server* side are left out on purpose: the simulator
  (``elevenconv.testing.*``) and the ``websockets`` library it runs on are the service,
  which legitimately knows both secrets (the test checks that they do show up there, so
  that the capture is known to work). Everything else in the process is the client:
  ``elevenconv``, ``websocket`` (websocket-client), ``urllib3``/``requests``, root.
  (``tests/test_security.py`` does the same against a minimal loopback server.)
* **TLS.** Verification is on by default (what reaches ``websocket.create_connection``,
  and a real TLS server with a self-signed certificate that must be refused); the
  explicit opt-outs log a WARNING containing "DISABLED".
* **Bounded queues.** Each of the Conversation's queues has a bound and its documented
  overflow policy holds under a flood.
* **Bounded tool work.** A server that sends 500 tool calls cannot make the client run
  more than ``max_workers`` at once nor hold more than ``max_pending``.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

import elevenconv._conversation as conversation_module
import elevenconv._outbox as outbox_module
import elevenconv._voice as voice_module
from elevenconv import ClientTools, Conversation, ElevenLabsClient
from elevenconv.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionFailedError,
    ElevenConvError,
    RemoteProtocolError,
)
from elevenconv.testing import AgentSimulator, FakeWebSocket, Faults, Step
from tests.conftest import IN_CI, library_threads, scaled
from tests.helpers import EventLog, RecordingAudioInterface, agent_response, audio_message, ping

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk_SECRET_key_5f3a9c1e7b2d4068"
PRIVATE_AGENT = "private-agent"

#: Loggers of the simulated *server* (not the client): see the module docstring.
SERVER_LOGGERS = ("elevenconv.testing", "websockets")


def client_threads() -> list[threading.Thread]:
    return [t for t in library_threads() if not t.name.startswith("elevenconv-sim-")]


def exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception can show: message, repr, args, the formatted traceback,
    and the same for every exception in its cause/context chain (even suppressed ones)."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts += [repr(v) for v in vars(current).values()] if hasattr(current, "__dict__") else []
        current = current.__cause__ or current.__context__
    return texts


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def capture_all_logs() -> Iterator[_Capture]:
    """Every record of every logger at DEBUG (root at DEBUG, and no logger quieter)."""
    handler = _Capture()
    root = logging.getLogger()
    touched = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG
    }
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for name in touched:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, level in touched.items():
            logging.getLogger(name).setLevel(level)


class ReplayingClient(ElevenLabsClient):
    """Hands out one fixed signed URL: a reused one, or one to nowhere."""

    def __init__(self, signed_url: str) -> None:
        super().__init__(API_KEY, base_url="http://127.0.0.1:1")
        self.fixed = signed_url

    def get_signed_url(self, agent_id: str, environment: str | None = None) -> str:
        return self.fixed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------
# Secrets


def test_api_key_and_signatures_never_leak(contract: Any) -> None:
    tools = ClientTools()
    tools.register("get_current_time", lambda params: "noon")
    texts: list[str] = []
    raised: list[BaseException] = []
    with (
        AgentSimulator(
            api_key=API_KEY, ping_interval=0.05, audio_realtime_factor=None, tts="tone"
        ) as sim,
        capture_all_logs() as logs,
    ):
        sim.add_agent(
            PRIVATE_AGENT,
            private=True,
            # Unreadable frames make the client log what arrived (at DEBUG).
            faults=Faults(after_first_message=(Step.malformed(), Step.binary())),
        )
        client = ElevenLabsClient(API_KEY, base_url=sim.base_url)
        conv = Conversation(client, PRIVATE_AGENT, requires_auth=True, client_tools=tools)
        events = EventLog(conv)
        texts += [repr(client), repr(conv), repr(tools)]
        conv.start_session()
        texts.append(repr(conv))
        events.wait_for("error", 2)  # the two unreadable frames
        conv.send_user_message("what time is it?")
        assert "noon" in events.wait_for("agent_response", 2)[1][0]
        events.wait_for("latency_measurement")
        conv.send_user_message("bye")
        conv.wait_for_session_end(timeout=scaled(10))
        texts += [repr(conv), repr(tools)]
        session = sim.wait_for_session_end(timeout=scaled(5))
        assert session.signed
        used_url = sim.ws_url(
            PRIVATE_AGENT, conversation_signature=session.query["conversation_signature"]
        )

        # The ways it can fail: a wrong key, a reused signed URL, no signature at all,
        # a signed URL to a port where nothing listens.
        dead_token = "sigDEADportSECRET0123456789"
        dead_url = f"ws://127.0.0.1:{free_port()}/v1/convai/conversation?agent_id=x&conversation_signature={dead_token}"
        attempts = [
            Conversation(
                ElevenLabsClient(API_KEY + "x", base_url=sim.base_url),
                PRIVATE_AGENT,
                requires_auth=True,
            ),
            Conversation(ReplayingClient(used_url), PRIVATE_AGENT, requires_auth=True),
            Conversation(
                ElevenLabsClient(API_KEY, base_url=sim.base_url), PRIVATE_AGENT, requires_auth=False
            ),
            Conversation(ReplayingClient(dead_url), PRIVATE_AGENT, requires_auth=True),
        ]
        for attempt in attempts:
            with pytest.raises(ElevenConvError) as info:
                attempt.start_session()
            raised.append(info.value)
            texts.append(repr(attempt))
        assert [type(e) for e in raised] == [
            AuthenticationError,
            AuthenticationError,
            AuthenticationError,
            ConnectionFailedError,
        ]
    tokens = {dead_token}
    for request in sim.http_requests:
        query = request.path.partition("?")[2]
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if name == "conversation_signature":
                tokens.add(value)
    assert len(tokens) >= 2  # the session's and the dead port's

    client_records = [r for r in logs.records if not r.name.startswith(SERVER_LOGGERS)]
    server_records = [r for r in logs.records if r.name.startswith(SERVER_LOGGERS)]
    assert {r.name.split(".")[0] for r in client_records} >= {"elevenconv", "urllib3"}
    assert any(
        r.levelno == logging.DEBUG and r.name.startswith("elevenconv") for r in client_records
    )
    for record in client_records:
        texts.append(logs.format(record))  # message, and a traceback if it has one
    for args in events.of("error"):
        texts += exception_texts(args[0])
    for exc in raised:
        texts += exception_texts(exc)

    # The capture works: the server side's own view does contain the secrets.
    server_view = [logs.format(r) for r in server_records] + [
        f"{r.path} {json.dumps(dict(r.headers))}" for r in sim.http_requests
    ]
    assert any(API_KEY in t for t in server_view)
    assert any(any(token in t for token in tokens) for t in server_view)

    leaks = [
        text[:300] for text in texts if API_KEY in text or any(token in text for token in tokens)
    ]
    assert leaks == []
    assert any("conversation_signature=***" in t for t in texts)  # logged, redacted
    assert sim.violations == []
    for message in sim.messages_from_client():
        contract.validate_client(message)


# ----------------------------------------------------------------------------------------
# TLS


def test_default_transport_asks_for_certificate_verification(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    contexts: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def spy(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = real(*args, **kwargs)
        contexts.append(context)
        raise OSError("stop here")  # the TLS handshake is not the point

    monkeypatch.setattr(ssl, "create_default_context", spy)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        conv = Conversation(
            ElevenLabsClient(base_url=f"https://127.0.0.1:{port}"), "a", requires_auth=False
        )
        with caplog.at_level(logging.WARNING), pytest.raises(ConnectionFailedError):
            conv.start_session()
    (context,) = contexts
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert "DISABLED" not in caplog.text


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key) that no system CA trusts."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if IN_CI:
            pytest.fail("the openssl command is needed to make a test certificate")
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@contextmanager
def tls_agent(cert: Path, key: Path) -> Iterator[int]:
    """A minimal agent over TLS (wss) on 127.0.0.1; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handler(ws: ServerConnection) -> None:
        try:
            json.loads(ws.recv(timeout=scaled(5)))
            ws.send(
                json.dumps(
                    {
                        "type": "conversation_initiation_metadata",
                        "conversation_initiation_metadata_event": {
                            "conversation_id": "conv_tls",
                            "agent_output_audio_format": "pcm_16000",
                            "user_input_audio_format": "pcm_16000",
                        },
                    }
                )
            )
            while True:
                ws.recv(timeout=scaled(10))
        except (ConnectionClosed, TimeoutError):
            pass

    server = serve(handler, "127.0.0.1", 0, ssl=context, logger=logging.getLogger("websockets.tls"))
    thread = threading.Thread(target=server.serve_forever, name="test-tls-server", daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(scaled(5))


def tls_conversation(port: int, **kwargs: Any) -> Conversation:
    return Conversation(
        ElevenLabsClient(base_url=f"https://127.0.0.1:{port}"),
        "a",
        requires_auth=False,
        start_timeout=scaled(5),
        **kwargs,
    )


def test_untrusted_certificate_is_refused_by_default(
    self_signed: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with tls_agent(*self_signed) as port, caplog.at_level(logging.WARNING, logger="elevenconv"):
        with pytest.raises(ConnectionFailedError, match=r"(?i)certificate"):
            tls_conversation(port).start_session()
        # Trusting that certificate explicitly works: the refusal above was the check.
        conv = tls_conversation(
            port, transport_options={"sslopt": {"ca_certs": str(self_signed[0])}}
        )
        conv.start_session()
        assert conv.get_conversation_id() == "conv_tls"
        conv.end_session()
    assert "DISABLED" not in caplog.text
    assert not client_threads()


def test_disabling_verification_is_explicit_and_loud(
    self_signed: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with tls_agent(*self_signed) as port, caplog.at_level(logging.WARNING, logger="elevenconv"):
        conv = tls_conversation(port, transport_options={"sslopt": {"cert_reqs": ssl.CERT_NONE}})
        conv.start_session()
        assert conv.get_conversation_id() == "conv_tls"
        conv.end_session()
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "DISABLED" in r.getMessage()
    ]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()


def test_client_verify_false_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="elevenconv"):
        ElevenLabsClient(API_KEY, base_url="https://api.example.invalid")
        assert "DISABLED" not in caplog.text
        client = ElevenLabsClient(API_KEY, base_url="https://api.example.invalid", verify=False)
    (record,) = [r for r in caplog.records if "DISABLED" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert API_KEY not in record.getMessage() and API_KEY not in repr(client)


# ----------------------------------------------------------------------------------------
# Bounded queues


def test_every_queue_is_bounded() -> None:
    """The stated bounds exist and are sane; the flood tests below check each one holds
    (the audio and events hand-offs enforce theirs in the producer, not in the queue)."""
    assert 0 < outbox_module.CONTROL_MAX_ITEMS <= 10_000
    assert 0 < outbox_module.CONTROL_MAX_BYTES <= 64 * 1024 * 1024
    assert 0 < voice_module.AUDIO_QUEUE_BYTES <= 16 * 1024 * 1024
    assert 0 < voice_module.MIC_RING_BYTES <= 1024 * 1024
    assert 0 < conversation_module.EVENTS_QUEUE_SIZE <= 10_000
    assert 0 < conversation_module.EVENTS_QUEUE_BYTES <= 16 * 1024 * 1024
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=FakeWebSocket())
    assert conv.max_mic_lag == 1.0  # microphone audio: bounded by age and bytes
    tools = ClientTools()
    assert 0 < tools.max_workers <= 64 and 0 < tools.max_pending <= 1024


def test_events_flood_drops_new_events_and_the_reader_keeps_answering(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    size, flood = 100, 1000
    monkeypatch.setattr(conversation_module, "EVENTS_QUEUE_SIZE", size)
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    events = EventLog(conv)
    gate, stuck = threading.Event(), threading.Event()

    def blocked(text: str) -> None:
        stuck.set()
        gate.wait(scaled(20))

    conv.on("agent_response", blocked)
    conv.start_session()
    try:
        with caplog.at_level(logging.ERROR, logger="elevenconv"):
            fake.push(agent_response("first", 1))
            assert stuck.wait(scaled(5))
            with events._cond:
                before = len(events.calls)  # delivered before the handler got stuck
            for i in range(flood):
                fake.push(agent_response(f"flood {i}", i + 2))
            fake.push(ping(424242))  # the reader still answers, at once
            assert fake.wait_for_sent("pong", timeout=scaled(5)) == [
                {"type": "pong", "event_id": 424242}
            ]
            assert conv._events_q.qsize() <= size
            assert conv.stats["dropped_events"] >= 2 * flood - size
        assert "events behind" in caplog.text
        queued = conv._events_q.qsize()  # the reader is idle: nothing more comes in
    finally:
        gate.set()
    # Let the events thread work through what was kept, so that the marker finds room.
    with events._cond:
        assert events._cond.wait_for(lambda: len(events.calls) == before + queued, scaled(10))
    marker = threading.Event()
    conv.on("agent_response", lambda text: marker.set() if text == "marker" else None)
    fake.push(agent_response("marker", flood + 10))
    assert marker.wait(scaled(5))
    assert conv.is_session_active()
    conv.end_session()
    # Every event posted was either delivered or counted as dropped, none lost unseen:
    # metadata (message, conversation_metadata, session_started, conversation_started),
    # 2 per agent_response (message + agent_response), 1 for the ping (message), and one
    # can_send_feedback_change (the first response made feedback possible).
    delivered = len([n for n, _ in events.calls if n != "session_ended"])
    posted = 4 + 2 * (flood + 2) + 1 + 1
    assert delivered + conv.stats["dropped_events"] == posted


def _pcm_chunk(index: int) -> bytes:
    return struct.pack("<h", index) * 160  # 10 ms of PCM16 carrying its index


def test_mic_overflow_drops_the_oldest_chunks() -> None:
    sending, gate = threading.Event(), threading.Event()

    def on_send(fake: FakeWebSocket, message: Any) -> None:
        if isinstance(message, dict) and "user_audio_chunk" in message:
            sending.set()
            gate.wait(scaled(10))  # the network stalls: the writer is stuck here

    fake = FakeWebSocket(on_send=on_send)
    audio = RecordingAudioInterface()
    lag = 1.0
    conv = Conversation(
        agent_id="a",
        requires_auth=False,
        websocket_factory=fake,
        audio_interface=audio,
        max_mic_lag=lag,
        echo_cancellation=False,  # the canceller's 10 ms framing would hold the last chunk
    )
    events = EventLog(conv)
    conv.start_session()
    mic = audio.input_callback
    assert mic is not None
    total = 800
    keep = int(32000 * lag + 3200) // 320  # max_mic_lag of audio (+ one piece), 10 ms chunks
    try:
        mic(_pcm_chunk(0))
        assert sending.wait(scaled(5))
        for i in range(1, total):  # the PortAudio callback: must never block
            mic(_pcm_chunk(i))
    finally:
        gate.set()
    import base64

    def sent_indexes(count: int) -> list[int]:
        # Messages may carry several 10 ms chunks (the capture chain and the outbox cut
        # audio their own way): read the index of every 10 ms of audio sent.
        messages = fake.wait_for_sent("user_audio_chunk", count=count, timeout=scaled(5))
        audio = b"".join(base64.b64decode(m["user_audio_chunk"]) for m in messages)
        return [struct.unpack_from("<h", audio, at)[0] for at in range(0, len(audio), 320)]

    messages = 1
    sent = sent_indexes(messages)
    while sent[-1] != total - 1:  # until the newest chunk went out
        messages += 1
        sent = sent_indexes(messages)
    assert sent[0] == 0 and sent == sorted(set(sent))  # in order, none twice
    assert len(sent) <= 1 + keep + 200  # what the outbox holds (+ the capture ring's 2 s)
    dropped = conv.stats["dropped_mic_chunks"] + conv.stats["dropped_capture_chunks"]
    assert dropped == total - len(sent)  # every chunk is sent or counted: the oldest go
    assert conv.stats["dropped_mic_chunks"] > 0
    reports = events.wait_for("mic_audio_dropped")
    assert 0 < sum(chunks for chunks, _ in reports) <= conv.stats["dropped_mic_chunks"]
    conv.end_session()


def test_control_messages_go_ahead_of_queued_microphone_audio() -> None:
    sending, gate = threading.Event(), threading.Event()
    order: list[str] = []

    def on_send(fake: FakeWebSocket, message: Any) -> None:
        if isinstance(message, dict):
            order.append(str(message.get("type", "user_audio_chunk")))
            if "user_audio_chunk" in message and not sending.is_set():
                sending.set()
                gate.wait(scaled(10))  # a slow uplink: the first audio message is stuck

    fake = FakeWebSocket(on_send=on_send)
    audio = RecordingAudioInterface()
    conv = Conversation(
        agent_id="a", requires_auth=False, websocket_factory=fake, audio_interface=audio
    )
    conv.start_session()
    mic = audio.input_callback
    assert mic is not None
    try:
        mic(_pcm_chunk(0))
        assert sending.wait(scaled(5))
        for i in range(1, 20):
            mic(_pcm_chunk(i))
        fake.push(ping(5))
        outbox = conv._outbox
        with outbox._cond:  # the reader has queued its pong (put_control notifies)
            assert outbox._cond.wait_for(
                lambda: any("pong" in str(item) for item in outbox._control), scaled(5)
            )
        conv.send_user_message("urgent")
    finally:
        gate.set()
    fake.wait_for_sent("user_audio_chunk", count=20, timeout=scaled(5))
    fake.wait_for_sent("pong", timeout=scaled(5))
    audio_at = [i for i, kind in enumerate(order) if kind == "user_audio_chunk"]
    first_audio_after = audio_at[1]  # the first one queued behind the stuck send
    assert order.index("user_message") < first_audio_after, order
    assert order.index("pong") < first_audio_after, order
    conv.end_session()


def test_writer_queue_full_gives_senders_back_pressure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    size = 10
    monkeypatch.setattr(outbox_module, "CONTROL_MAX_ITEMS", size)
    sending, gate = threading.Event(), threading.Event()

    def on_send(fake: FakeWebSocket, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "user_message":
            sending.set()
            gate.wait(scaled(10))

    class SlowLink(FakeWebSocket):
        """A slow link that still moves: the kernel's unsent bytes keep going down, so
        the keepalive does not take the held send for a dead one."""

        left = 10**9

        def unsent(self) -> int:
            self.left -= 1
            return self.left

    fake = SlowLink(on_send=on_send)
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake, send_timeout=0.2)
    events = EventLog(conv)
    conv.start_session()
    try:
        conv.send_user_message("m0")
        assert sending.wait(scaled(5))
        for i in range(1, size + 1):
            conv.send_user_message(f"m{i}")
        with pytest.raises(ElevenConvError, match="send queue stayed full"):
            conv.send_user_message("one too many")
        assert len(conv._outbox._control) == size
        # A library thread never waits: the reader's pong is dropped (logged), and the
        # reader goes on to the next frame.
        with caplog.at_level(logging.WARNING, logger="elevenconv"):
            fake.push(ping(7))
            fake.push(agent_response("reader alive", 1))
            events.wait_for("agent_response")
        assert "send queue full" in caplog.text
    finally:
        gate.set()
    texts = [
        m["text"] for m in fake.wait_for_sent("user_message", count=size + 1, timeout=scaled(5))
    ]
    assert texts == [f"m{i}" for i in range(size + 1)]  # in order, the refused one absent
    assert conv.is_session_active()
    conv.end_session()


def test_audio_queue_full_drops_new_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    size = 5
    chunk = len(base64.b64encode(_pcm_chunk(0)))  # the bound counts base64 bytes
    monkeypatch.setattr(voice_module, "AUDIO_QUEUE_BYTES", size * chunk)
    playing, gate = threading.Event(), threading.Event()

    class StuckDevice(RecordingAudioInterface):
        def output(self, audio: bytes) -> None:
            playing.set()
            gate.wait(scaled(10))
            super().output(audio)

    fake = FakeWebSocket()
    device = StuckDevice()
    conv = Conversation(
        agent_id="a", requires_auth=False, websocket_factory=fake, audio_interface=device
    )
    conv.start_session()
    try:
        fake.push(audio_message(1, _pcm_chunk(0)))
        assert playing.wait(scaled(5))
        for i in range(1, 50):
            fake.push(audio_message(1, _pcm_chunk(i)))
        fake.push(ping(9))
        fake.wait_for_sent("pong", timeout=scaled(5))  # the reader is not blocked
        assert conv.stats["dropped_audio"] == 49 - size
    finally:
        gate.set()
    device.wait_for(lambda log: len([k for k, _ in log if k == "output"]) == 1 + size)
    conv.end_session()


# ----------------------------------------------------------------------------------------
# Bounded tool work


def tool_call_message(i: int) -> dict[str, Any]:
    return {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": "slow_lookup",
            "tool_call_id": f"call_{i:03d}",
            "parameters": {"i": i},
            "event_id": i + 1,
        },
    }


def test_a_server_cannot_make_the_client_pile_up_tool_work(contract: Any) -> None:
    calls, max_workers, max_pending = 500, 4, 16
    gate = threading.Event()
    lock = threading.Lock()
    running = 0
    peak = 0
    all_running = threading.Barrier(max_workers + 1, timeout=scaled(10))

    def slow_lookup(params: dict[str, Any]) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            first_wave = params["i"] < max_workers
        if first_wave:
            all_running.wait()
        gate.wait(scaled(20))
        with lock:
            running -= 1
        return f"done {params['i']}"

    tools = ClientTools(max_workers=max_workers, max_pending=max_pending)
    tools.register("slow_lookup", slow_lookup)
    script = [Step.send(tool_call_message(i)) for i in range(calls)]
    try:
        with AgentSimulator(
            script=script, ping_interval=None, audio_realtime_factor=None, tts="tone"
        ) as sim:
            conv = Conversation(
                ElevenLabsClient(base_url=sim.base_url),
                "sim-agent",
                requires_auth=False,
                client_tools=tools,
            )
            conv.start_session()
            all_running.wait()  # max_workers handlers are running (and blocked)
            refused = calls - max_pending
            sim.wait_for_client_message("client_tool_result", count=refused, timeout=scaled(10))
            # While the handlers are blocked: at most max_workers run, max_pending wait
            # or run, every other call was answered at once with an error result.
            pool = [t for t in client_threads() if t.name.startswith("elevenconv-tool")]
            assert len(pool) <= max_workers
            assert peak == max_workers
            assert tools._pending == max_pending
            early = sim.messages_from_client("client_tool_result")
            assert len(early) == refused
            assert all(m["is_error"] and "max_pending=16" in m["result"] for m in early)
            assert {m["tool_call_id"] for m in early} == {
                f"call_{i:03d}" for i in range(max_pending, calls)
            }
            gate.set()
            sim.wait_for_client_message("client_tool_result", count=calls, timeout=scaled(10))
            assert peak == max_workers
            conv.end_session()
    finally:
        gate.set()
    results = sim.messages_from_client("client_tool_result")
    assert len(results) == calls
    assert len({m["tool_call_id"] for m in results}) == calls  # each answered once
    done = [m for m in results if not m["is_error"]]
    assert sorted(m["result"] for m in done) == sorted(f"done {i}" for i in range(max_pending))
    assert sim.violations == []
    for message in sim.messages_from_client():
        contract.validate_client(message)


def test_remote_protocol_errors_do_not_carry_unbounded_text() -> None:
    # A 20 MB-class junk frame is reported with a bounded excerpt, not copied whole into
    # every log line and exception.
    fake = FakeWebSocket()
    conv = Conversation(agent_id="a", requires_auth=False, websocket_factory=fake)
    events = EventLog(conv)
    conv.start_session()
    fake.push_raw("x" * 5_000_000)
    ((error,),) = events.wait_for("error")
    assert isinstance(error, RemoteProtocolError)
    assert len(str(error)) < 1000
    conv.end_session()
    assert not isinstance(error, ConnectionClosedError)
