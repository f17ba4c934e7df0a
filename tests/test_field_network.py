"""Field networks on real sockets: slow uplinks with delay, black holes, a frozen server.

Each test builds its own network lab (tests/fixtures_netns.py): the client runs here, the
server in a network namespace behind a ``tc tbf`` rate limit and a +150 ms each-way delay
relay; faults come from ``iptables`` and ``SIGSTOP``. The microphone streams stamped
PCM at real time, so the server measures how far behind the audio it gets arrives.

Bounds here are behaviour (control messages overtake audio, stale audio is dropped, a
dead peer is noticed), set well above the targets; the figures themselves are measured
by ``benchmarks/field.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from elevenconv import ClientTools, Conversation, ElevenLabsClient
from elevenconv.errors import ConnectionClosedError
from tests.conftest import library_threads, scaled
from tests.fixtures_netns import NetLab, NetServer, RealtimeMic, conversation_kwargs

pytestmark = pytest.mark.timeout(90)

PING_INTERVAL = 1.0
PING_TIMEOUT = 2.0
DELAY_S = 0.150
MAX_MIC_LAG = 1.0


class Client:
    """A Conversation with a real-time microphone and a recorder of its events."""

    def __init__(
        self, server: NetServer, *, ping_interval: float, ping_timeout: float, **kwargs: Any
    ) -> None:
        self.mic = RealtimeMic(chunk_s=0.1)
        self.tools = ClientTools()
        self.tools.register("net_tool", lambda params: f"done {params['tool_call_id']}")
        self.ended: list[tuple[Any, ...]] = []
        self.ended_at: float | None = None
        self.errors: list[BaseException] = []
        self.drops: list[tuple[Any, ...]] = []
        self._ended = threading.Event()
        self.conv = Conversation(
            ElevenLabsClient(base_url=server.base_url),
            "net-agent",
            requires_auth=False,
            audio_interface=self.mic,
            client_tools=self.tools,
            start_timeout=scaled(10),
            **conversation_kwargs(
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                max_mic_lag=MAX_MIC_LAG,
                echo_cancellation=False,
                **kwargs,
            ),
        )
        self.conv.on("session_ended", self._on_ended)
        self.conv.on("error", self.errors.append)
        self.conv.on("mic_audio_dropped", lambda *args: self.drops.append(args))

    def _on_ended(self, *args: Any) -> None:
        self.ended_at = time.monotonic()
        self.ended.append(args)
        self._ended.set()

    def close(self) -> None:
        self.conv.end_session()
        self.tools.close()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(server: NetServer, **kwargs: Any) -> Client:
        client = Client(server, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _assert_no_library_threads(before: set[threading.Thread]) -> None:
    left = [t.name for t in library_threads() if t not in before]
    assert not left, f"library threads still running after wait_for_session_end(): {left}"


# ======================================================================================
# The lab itself: the impairment is real
# ======================================================================================


def test_lab_adds_delay_and_limits_rate(netlab: Callable[..., NetLab]) -> None:
    lab = netlab(uplink_kbit=64, delay_s=DELAY_S)
    server = lab.spawn_server(ping_interval=None)
    # A plain TCP connection to the server's port: the SYN/SYN-ACK round trip crosses
    # the relay twice.
    t0 = time.monotonic()
    with socket.create_connection((lab.server_ip, server.port), timeout=scaled(10)) as sock:
        rtt = time.monotonic() - t0
        # 16 KB of headers (128 kbit: 2 s at 64 kbit/s), in lines websockets accepts.
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"x" * 3980) for i in range(4))
        sock.settimeout(scaled(10))
        t1 = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n" + pad + b"\r\n")
        reply = sock.recv(4096)  # websockets answers once the whole request is in
        transfer = time.monotonic() - t1
    assert 2 * DELAY_S <= rtt < 2 * DELAY_S + scaled(2.0), rtt  # ARP + SYN both crossed
    assert reply.startswith(b"HTTP/1.1 "), reply[:40]
    assert transfer >= 16000 * 8 / 64000 * 0.9, f"{transfer:.2f} s: the rate limit is not applied"


# ======================================================================================
# Slow uplink with delay while the microphone streams at real time
# ======================================================================================


@pytest.mark.parametrize("kbit", [64, 256])
def test_slow_uplink_control_messages_overtake_microphone(
    netlab: Callable[..., NetLab], make_client: Callable[..., Client], kbit: int
) -> None:
    lab = netlab(uplink_kbit=kbit, delay_s=DELAY_S)
    server = lab.spawn_server(ping_interval=1.0)
    before = set(library_threads())
    client = make_client(server, ping_interval=PING_INTERVAL, ping_timeout=5.0)
    conv = client.conv
    conv.start_session()

    # Driven by the server's pings (one a second): a user message after pings 2, 5, 8,
    # a tool call after 3, 6, 9; twelve pings in all, then wait for the last pong.
    texts, tool_ids = [], []
    for n in range(1, 13):
        server.wait_for(lambda r, n=n: r["ev"] == "ping_sent" and r["event_id"] == n, scaled(5))
        if n in (2, 5, 8):
            texts.append(f"net message {n}")
            conv.send_user_message(texts[-1])
        if n in (3, 6, 9):
            tool_ids.append(f"call-{n}")
            server.send_tool_call(tool_ids[-1])
    try:
        server.wait_for(lambda r: r.get("type") == "pong" and r["event_id"] == 12, scaled(4))
    except TimeoutError:
        pass  # counted below
    conv.end_session()
    conv.wait_for_session_end(scaled(10))

    sent, delays = server.pong_delays()
    assert sent >= 12
    assert len(delays) >= 0.95 * 12, f"only {len(delays)} of 12 pongs reached the server"
    assert max(delays) <= scaled(3.0), f"pong delays {sorted(delays)[-3:]} s"
    assert [r["text"] for r in server.received("user_message")] == texts
    results = {r["tool_call_id"] for r in server.received("client_tool_result")}
    assert results == set(tool_ids), f"tool results that arrived: {results}"

    # Microphone: what arrives is recent (stale audio was dropped, not queued) ...
    lags = server.mic_lags()
    assert lags, "no microphone audio reached the server"
    first = lags[0][0]
    late = [lag for captured, lag in lags if captured > first + 3.0]
    assert late, "the microphone stopped reaching the server"
    assert max(late) <= MAX_MIC_LAG + scaled(1.5), f"mic lag up to {max(late):.1f} s"
    # ... and the drops are visible: stats, one event per burst.
    assert conv.stats["dropped_mic_chunks"] > 0
    assert conv.stats.get("dropped_mic_ms", 0) > 0
    assert client.drops, "no mic_audio_dropped event"
    chunks, seconds = client.drops[0]
    assert chunks > 0
    assert seconds > 0
    assert len(client.drops) < client.mic.delivered, "one event per burst, not per chunk"

    assert len(client.ended) == 1
    assert client.ended[0][1] == 1000, client.ended
    assert not [e for e in client.errors if isinstance(e, ConnectionClosedError)]
    _assert_no_library_threads(before)


# ======================================================================================
# Dead peers: black hole, frozen server
# ======================================================================================


def _start_streaming(
    lab: NetLab, make_client: Callable[..., Client]
) -> tuple[NetServer, Client, set[threading.Thread]]:
    server = lab.spawn_server(ping_interval=1.0)
    before = set(library_threads())
    client = make_client(server, ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
    client.conv.start_session()
    # The link works: pongs come back and microphone audio arrives.
    server.wait_for(lambda r: r.get("type") == "pong", scaled(5), count=2)
    server.wait_for(lambda r: r.get("type") == "user_audio_chunk", scaled(5))
    return server, client, before


def _assert_keepalive_ended(client: Client, fault_at: float, before: set[threading.Thread]) -> None:
    conv = client.conv
    bound = PING_INTERVAL + PING_TIMEOUT + 1.0
    try:
        conv.wait_for_session_end(timeout=bound + scaled(3.0))
    except TimeoutError:
        pytest.fail(
            f"the dead peer was not noticed: session still {conv!r} "
            f"{bound + scaled(3.0):.1f} s after the fault"
        )
    assert client.ended_at is not None
    took = client.ended_at - fault_at
    assert took <= PING_INTERVAL + PING_TIMEOUT + scaled(1.0), f"noticed after {took:.2f} s"
    assert not conv.is_session_active()
    assert len(client.ended) == 1
    _, code, reason = client.ended[0]
    assert code == 1011, client.ended
    assert "keepalive" in reason
    closed = [e for e in client.errors if isinstance(e, ConnectionClosedError)]
    assert closed, f"no ConnectionClosedError among the error events: {client.errors}"
    assert closed[0].code == 1011
    _assert_no_library_threads(before)


def test_blackholed_link_ends_the_session_by_keepalive(
    netlab: Callable[..., NetLab], make_client: Callable[..., Client]
) -> None:
    lab = netlab(delay_s=DELAY_S)
    _server, client, before = _start_streaming(lab, make_client)
    fault_at = time.monotonic()
    lab.blackhole()
    _assert_keepalive_ended(client, fault_at, before)


def test_frozen_server_ends_the_session_by_keepalive(
    netlab: Callable[..., NetLab], make_client: Callable[..., Client]
) -> None:
    lab = netlab(delay_s=DELAY_S)
    server, client, before = _start_streaming(lab, make_client)
    fault_at = time.monotonic()
    server.freeze()  # its kernel still ACKs: writes succeed, nothing comes back
    _assert_keepalive_ended(client, fault_at, before)


def test_end_session_on_a_blackholed_link_is_prompt(
    netlab: Callable[..., NetLab], make_client: Callable[..., Client]
) -> None:
    lab = netlab(delay_s=DELAY_S)
    _server, client, before = _start_streaming(lab, make_client)
    lab.blackhole()
    t0 = time.monotonic()
    client.conv.end_session()  # no close reply will ever come
    took = time.monotonic() - t0
    assert took <= scaled(1.0), f"end_session() took {took:.2f} s on a dead link"
    client.conv.wait_for_session_end(scaled(10))
    assert len(client.ended) == 1
    _assert_no_library_threads(before)
