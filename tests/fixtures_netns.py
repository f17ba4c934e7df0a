"""Network impairment on real sockets: namespaces, veth, ``tc``, ``iptables``, SIGSTOP.

The client runs in the test process (root namespace); the server runs in a process in a
namespace of its own. Between them (this kernel has no ``sch_netem``) a middle namespace
with a packet-level delay relay::

    test process (root ns)         ns elevenconv-net-P-N-mid        ns elevenconv-net-P-N-srv
    client socket -> veth C ==tbf==> M0 [relay: +delay] M1 <==tbf== veth S <- server process
        10.X.Y.1/24                     (L2, no address)                  10.X.Y.2/24

* **rate**: ``tc qdisc ... tbf`` on C's egress (uplink) and/or S's egress (downlink).
* **delay**: the relay process (``python fixtures_netns.py relay M0 M1 DELAY``) bridges M0
  and M1 with ``AF_PACKET`` raw sockets and holds every Ethernet frame ``delay`` seconds
  each way, so TCP sees the real round trip (ARP crosses too; offloads are switched off with
  ``ethtool`` so frames are MTU-sized with real checksums). With
  ``ELEVENCONV_NETNS_DELAY=netem`` and a kernel that has ``sch_netem``, netem on C and S
  is used instead and there is no middle namespace.
* **black hole**: ``iptables -j DROP`` on INPUT and OUTPUT in the server's namespace.
* **frozen server**: ``SIGSTOP`` to the server process (:meth:`NetServer.freeze`).

The server (``python fixtures_netns.py server ...``, see :func:`_server_main`) speaks just
enough of the Agents protocol: it answers the initiation with metadata, sends a ``ping``
every ``ping_interval`` seconds, sends whatever the test asks (a JSON line on its stdin)
and reports every message it receives as a JSON line on its stdout with the arrival time
(``time.monotonic()``, system-wide on Linux, so comparable with the test's clock). Mic
audio from :class:`RealtimeMic` carries its capture time in the PCM, so the server measures
the microphone lag of every chunk.

Everything is torn down in ``finally`` (processes killed, namespaces deleted, which removes
the veths); stale namespaces of dead test processes are removed on the next start. All
commands have timeouts. Only addresses inside the lab's own subnet are used.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from elevenconv import AudioInterface

#: Marks a capture timestamp in the PCM of a :class:`RealtimeMic` chunk.
MAGIC = b"ECNTS\x00\x01\x02"
_STAMP = struct.Struct("<8sq")

_CMD_TIMEOUT = 10.0
_counter = iter(range(1, 1_000_000))
_NS_PREFIX = "elevenconv-net-"
REQUIRED_TOOLS = ("ip", "tc", "iptables", "ethtool")


class NetLabError(RuntimeError):
    """A namespace/veth/tc/iptables command failed (the message has its stderr)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise NetLabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (``None`` if they can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return (
            f"missing tools {missing}: apt-get install iproute2 iptables ethtool "
            "(scripts/test installs them)"
        )
    return None


def netem_available(netns: str) -> bool:
    """Does the kernel have sch_netem? Probed on ``netns``'s loopback, never the host's."""
    probe = _run("ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root",
                 "netem", "delay", "1ms", check=False)  # fmt: skip
    if probe.returncode == 0:
        _run("ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", "lo", "root", check=False)
        return True
    return False


def _remove_stale_namespaces() -> None:
    """Namespaces left by test processes that died (kill -9) before their teardown."""
    listing = _run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(_NS_PREFIX):
            continue
        try:
            pid = int(name[len(_NS_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _run("ip", "netns", "del", name, check=False)


def _free_subnet(n: int) -> str:
    """A /24 ``10.X.Y`` prefix no address of the root namespace is in."""
    used = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    start = (os.getpid() * 7 + n * 13) % 12000
    for i in range(12000):
        k = (start + i) % 12000
        prefix = f"10.{200 + k // 250}.{k % 250}"
        if f" {prefix}." not in used:
            return prefix
    raise NetLabError("no free 10.x.y.0/24 subnet for the network lab")


def _boost_priority() -> None:
    """In a lab process: real-time scheduling (root), else a higher nice; best effort."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(-10)


def _pdeathsig() -> None:
    """In a child: die with the test process (prctl PR_SET_PDEATHSIG, SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


class NetLab:
    """Two (or three) network namespaces joined by veth, with rate, delay and black hole.

    Use as a context manager; ``client_ip`` is in the root namespace (the test process),
    ``server_ip`` in the server namespace. :meth:`spawn_server` starts a
    :class:`NetServer` there.
    """

    def __init__(
        self,
        *,
        uplink_kbit: int | None = None,
        downlink_kbit: int | None = None,
        delay_s: float = 0.0,
        python: str = sys.executable,
    ) -> None:
        self.uplink_kbit = uplink_kbit
        self.downlink_kbit = downlink_kbit
        self.delay_s = delay_s
        self.python = python
        n = next(_counter)
        self.name = f"{_NS_PREFIX}{os.getpid()}-{n}"
        self.srv_ns = f"{self.name}-srv"
        self.mid_ns = f"{self.name}-mid"
        tag = f"{os.getpid() % 100000}{n}"
        self.veth_client = f"ecn{tag}c"
        self.veth_server = f"ecn{tag}s"
        self.veth_mid_c = f"ecn{tag}a"
        self.veth_mid_s = f"ecn{tag}b"
        self._n = n
        self.client_ip = ""
        self.server_ip = ""
        self.delay_mode: str = "none"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[str]] = []
        self._servers: list[NetServer] = []
        self._relay: subprocess.Popen[str] | None = None
        self._blackholed = False

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        _remove_stale_namespaces()
        prefix = _free_subnet(self._n)
        self.client_ip, self.server_ip = f"{prefix}.1", f"{prefix}.2"
        self._add_ns(self.srv_ns)
        srv = ("ip", "-n", self.srv_ns)
        _run(*srv, "link", "set", "lo", "up")
        use_netem = (
            self.delay_s > 0
            and os.environ.get("ELEVENCONV_NETNS_DELAY") == "netem"
            and netem_available(self.srv_ns)
        )
        if self.delay_s > 0 and not use_netem:
            self.delay_mode = "relay"
            self._add_ns(self.mid_ns)
            mid = ("ip", "-n", self.mid_ns)
            _run("ip", "link", "add", self.veth_client, "type", "veth",
                 "peer", "name", self.veth_mid_c, "netns", self.mid_ns)  # fmt: skip
            _run(*srv, "link", "add", self.veth_server, "type", "veth",
                 "peer", "name", self.veth_mid_s, "netns", self.mid_ns)  # fmt: skip
            for dev in (self.veth_mid_c, self.veth_mid_s):
                self._no_offloads(self.mid_ns, dev)
                _run("ip", "netns", "exec", self.mid_ns, "sysctl", "-q", "-w",
                     f"net.ipv6.conf.{dev}.disable_ipv6=1", check=False)  # fmt: skip
                _run(*mid, "link", "set", dev, "up")
        else:
            self.delay_mode = "netem" if use_netem else "none"
            _run("ip", "link", "add", self.veth_client, "type", "veth",
                 "peer", "name", self.veth_server, "netns", self.srv_ns)  # fmt: skip
        # Addresses, IPv6 off (no router solicitations in the captures), offloads off.
        _run("sysctl", "-q", "-w", f"net.ipv6.conf.{self.veth_client}.disable_ipv6=1", check=False)
        _run("ip", "netns", "exec", self.srv_ns, "sysctl", "-q", "-w",
             f"net.ipv6.conf.{self.veth_server}.disable_ipv6=1", check=False)  # fmt: skip
        self._no_offloads(None, self.veth_client)
        self._no_offloads(self.srv_ns, self.veth_server)
        _run("ip", "addr", "add", f"{self.client_ip}/24", "dev", self.veth_client)
        _run(*srv, "addr", "add", f"{self.server_ip}/24", "dev", self.veth_server)
        _run("ip", "link", "set", self.veth_client, "up")
        _run(*srv, "link", "set", self.veth_server, "up")
        self._shape(None, self.veth_client, self.uplink_kbit, use_netem)
        self._shape(self.srv_ns, self.veth_server, self.downlink_kbit, use_netem)
        if self.delay_mode == "relay":
            self._start_relay()

    def close(self) -> None:
        """Kill every process, delete the namespaces (and so the veths). Idempotent."""
        for server in self._servers:
            server.kill()
        for proc in self._procs:
            _kill(proc)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        # Deleting the peer's namespace removes the root end of the veth; make sure.
        if _run("ip", "link", "show", self.veth_client, check=False).returncode == 0:
            _run("ip", "link", "del", self.veth_client, check=False)

    # -- impairments -------------------------------------------------------------------------

    def blackhole(self, on: bool = True) -> None:
        """Drop every packet to and from the server (iptables in its namespace)."""
        if on == self._blackholed:
            return
        action = "-I" if on else "-D"
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", self.srv_ns, "iptables", action, chain, "-j", "DROP")
        self._blackholed = on

    def set_uplink(self, kbit: int | None) -> None:
        """Change (or remove, ``None``) the uplink rate limit mid-session."""
        self.uplink_kbit = kbit
        _run("tc", "qdisc", "del", "dev", self.veth_client, "root", check=False)
        self._shape(None, self.veth_client, kbit, self.delay_mode == "netem")

    def spawn_server(self, *, ping_interval: float | None = 1.0, port: int = 8765) -> NetServer:
        """Start a :class:`NetServer` in the server namespace; return once it listens."""
        argv = ["ip", "netns", "exec", self.srv_ns, self.python, "-u", os.path.abspath(__file__),
                "server", self.server_ip, str(port), str(ping_interval or 0)]  # fmt: skip
        server = NetServer(argv, self.server_ip)
        self._servers.append(server)
        return server

    # -- helpers -------------------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)

    @staticmethod
    def _no_offloads(ns: str | None, dev: str) -> None:
        prefix = ("ip", "netns", "exec", ns) if ns else ()
        _run(*prefix, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
             "gro", "off", check=False)  # fmt: skip

    def _shape(self, ns: str | None, dev: str, kbit: int | None, netem: bool) -> None:
        tc = ("ip", "netns", "exec", ns, "tc") if ns else ("tc",)
        parent = ("root",)
        if netem:
            _run(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                 "delay", f"{self.delay_s * 1000:g}ms")  # fmt: skip
            parent = ("parent", "1:1")
        if kbit is not None:
            # Queue up to 300 ms at the bottleneck, as a congested uplink does; the rest
            # waits in the sender's socket buffer.
            _run(*tc, "qdisc", "add", "dev", dev, *parent, "handle", "10:", "tbf",
                 "rate", f"{kbit}kbit", "burst", "3000", "latency", "300ms")  # fmt: skip

    def _start_relay(self) -> None:
        argv = ["ip", "netns", "exec", self.mid_ns, self.python, "-u", os.path.abspath(__file__),
                "relay", self.veth_mid_c, self.veth_mid_s, f"{self.delay_s}"]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_pdeathsig,
        )
        self._procs.append(proc)
        line = _readline(proc, _CMD_TIMEOUT)
        if line.strip() != "READY":
            err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            raise NetLabError(f"delay relay did not start: {line!r} {err[-1000:]}")
        self._relay = proc


def spawn_local_server(
    *, ping_interval: float | None = None, metadata: bool = True, python: str = sys.executable
) -> NetServer:
    """A :class:`NetServer` on 127.0.0.1 (any free port), no namespace: for measurements
    that need the server in another process but no impairment. ``metadata=False``: it never
    answers the initiation."""
    argv = [python, "-u", os.path.abspath(__file__), "server", "127.0.0.1", "0",
            str(ping_interval or 0)] + ([] if metadata else ["--no-metadata"])  # fmt: skip
    return NetServer(argv, "127.0.0.1")


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of ``proc``'s stdout within ``timeout`` (``""`` on EOF or timeout)."""
    assert proc.stdout is not None
    result: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: result.put(proc.stdout.readline() if proc.stdout else ""),
        name="test-netns-readline",
        daemon=True,
    )
    reader.start()
    try:
        return result.get(timeout=timeout)
    except queue.Empty:
        _kill(proc)
        return ""


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # SIGKILL works on a stopped process too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(_CMD_TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class NetServer:
    """The server process in the lab's server namespace and what it reported.

    :attr:`records` holds every JSON line it printed (dicts with ``ev``: ``listening``,
    ``connected``, ``recv`` (``type``, ``t``, and ``event_id`` / ``text`` /
    ``tool_call_id`` / ``captured``), ``ping_sent`` (``event_id``, ``t``), ``sent``,
    ``closed`` (``code``)). :meth:`wait_for` blocks on a Condition.
    """

    def __init__(self, argv: list[str], host: str) -> None:
        self.host = host
        self.port = 0
        self.records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.frozen = False
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=_pdeathsig,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, name="test-netns-server-out", daemon=True),
            threading.Thread(target=self._read_stderr, name="test-netns-server-err", daemon=True),
        ]
        for t in self._threads:
            t.start()
        try:
            self.port = self.wait_for(lambda r: r["ev"] == "listening", _CMD_TIMEOUT)["port"]
        except TimeoutError:
            self.kill()
            err = "".join(self.stderr)[-2000:]
            raise NetLabError(f"the lab server did not start: {err}") from None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"ev": "garbage", "line": line}
            with self._cond:
                self.records.append(record)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, count: int = 1
    ) -> dict[str, Any]:
        """Block until ``count`` records match ``pred``; return the ``count``-th."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.records if pred(r)]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise TimeoutError(
                        f"server reported {len(found)} of {count} matching records in "
                        f"{timeout} s; last: {self.records[-3:]}"
                    )
                self._cond.wait(remaining)

    def received(self, type: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r["ev"] == "recv" and r.get("type") == type]

    def select(self, ev: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r["ev"] == ev]

    def send(self, message: dict[str, Any], repeat: int = 1) -> None:
        """Ask the server to send ``message`` (``repeat`` times) on the open connection;
        a ``sent`` record follows once it has."""
        assert self.proc.stdin is not None
        line = json.dumps({"cmd": "send", "message": message, "repeat": repeat})
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def send_tool_call(self, tool_call_id: str, tool_name: str = "net_tool") -> None:
        self.send(
            {
                "type": "client_tool_call",
                "client_tool_call": {
                    "tool_name": tool_name,
                    "tool_call_id": tool_call_id,
                    "parameters": {},
                    "event_id": 1,
                },
            }
        )

    def freeze(self) -> None:
        """SIGSTOP: the process stops reading, writing and answering (its kernel still ACKs)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        _kill(self.proc)
        for t in self._threads:
            t.join(_CMD_TIMEOUT)

    # -- figures -------------------------------------------------------------------------------

    def pong_delays(self) -> tuple[int, list[float]]:
        """(pings sent, ping-sent -> pong-received delays in seconds)."""
        sent = {r["event_id"]: r["t"] for r in self.select("ping_sent")}
        delays = [
            r["t"] - sent[r["event_id"]] for r in self.received("pong") if r["event_id"] in sent
        ]
        return len(sent), delays

    def mic_lags(self) -> list[tuple[float, float]]:
        """(capture time, arrival - capture) for every stamped mic chunk received."""
        out = []
        for r in self.received("user_audio_chunk"):
            for captured in r.get("captured", ()):
                out.append((captured, r["t"] - captured))
        return out


# ======================================================================================
# Client side helpers
# ======================================================================================


def stamped_chunk(nbytes: int, captured_ns: int | None = None) -> bytes:
    """PCM16 of ``nbytes`` that starts with :data:`MAGIC` and the capture time (ns)."""
    stamp = _STAMP.pack(MAGIC, time.monotonic_ns() if captured_ns is None else captured_ns)
    return stamp + bytes(max(0, nbytes - len(stamp)))


class RealtimeMic(AudioInterface):
    """An AudioInterface whose microphone delivers stamped chunks at real time.

    ``chunk_s`` seconds per chunk (PCM16 mono 16 kHz, or ``chunk_bytes``), paced against a
    monotonic schedule from its own thread (``test-netns-mic``); the speaker discards.
    """

    def __init__(self, chunk_s: float = 0.1, chunk_bytes: int | None = None) -> None:
        self.chunk_s = chunk_s
        self.chunk_bytes = chunk_bytes or int(16000 * 2 * chunk_s)
        self.delivered = 0
        self.output_bytes = 0
        self.started = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        def run() -> None:
            due = time.monotonic()
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                input_callback(stamped_chunk(self.chunk_bytes))
                self.delivered += 1
                due += self.chunk_s

        self._thread = threading.Thread(target=run, name="test-netns-mic", daemon=True)
        self._thread.start()
        self.started.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def output(self, audio: bytes) -> None:
        self.output_bytes += len(audio)

    def interrupt(self) -> None:
        pass


def conversation_kwargs(**wanted: Any) -> dict[str, Any]:
    """``wanted`` minus the keywords this version of Conversation does not have (so the
    same harness also runs against an older elevenconv, to show what it fixed)."""
    from elevenconv import Conversation

    params = inspect.signature(Conversation.__init__).parameters
    return {k: v for k, v in wanted.items() if k in params}


# ======================================================================================
# pytest fixture
# ======================================================================================

try:
    import pytest
except ImportError:  # the relay/server entry points run without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def netlab() -> Iterator[Callable[..., NetLab]]:
        """``netlab(uplink_kbit=None, downlink_kbit=None, delay_s=0.0)`` -> a started
        :class:`NetLab`; all are torn down after the test. Skips only without root
        (never in CI: there it fails)."""
        from tests.conftest import IN_CI

        reason = unavailable_reason()
        if reason is not None:
            if IN_CI:
                pytest.fail(f"network namespaces unavailable in CI: {reason}")
            pytest.skip(reason)
        labs: list[NetLab] = []

        def make(**kwargs: Any) -> NetLab:
            lab = NetLab(**kwargs)
            labs.append(lab)
            lab.__enter__()
            return lab

        try:
            yield make
        finally:
            for lab in labs:
                lab.close()

    @pytest.fixture
    def local_server() -> Iterator[Callable[..., NetServer]]:
        """``local_server(ping_interval=None, metadata=True)`` -> a :class:`NetServer`
        process on 127.0.0.1 (no namespace, no root needed); killed after the test."""
        servers: list[NetServer] = []

        def make(**kwargs: Any) -> NetServer:
            server = spawn_local_server(**kwargs)
            servers.append(server)
            return server

        try:
            yield make
        finally:
            for server in servers:
                server.kill()


# ======================================================================================
# Processes inside the namespaces
# ======================================================================================


def _relay_main(if_a: str, if_b: str, delay: float) -> None:
    """Bridge two interfaces at layer 2, holding each frame ``delay`` s (FIFO per way).

    Each frame's hold starts at its kernel receive time (SO_TIMESTAMPNS), and the relay
    runs at real-time priority, so a loaded machine (2 cores, other test runs) does not add
    its scheduling delay to the emulated link. Exits when stdin closes (or with the test
    process: PR_SET_PDEATHSIG).
    """
    import select
    from collections import deque

    _pdeathsig()
    _boost_priority()
    eth_p_all, packet_outgoing = 0x0003, 4
    so_timestampns = getattr(socket, "SO_TIMESTAMPNS", 35)
    ts = struct.Struct("qq")
    socks = []
    for name in (if_a, if_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, so_timestampns, 1)
        s.bind((name, 0))
        s.setblocking(False)
        socks.append(s)
    a, b = socks
    peer = {a: b, b: a}
    pending: dict[socket.socket, deque[tuple[float, bytes]]] = {a: deque(), b: deque()}
    print("READY", flush=True)
    stdin = sys.stdin.fileno()
    while True:
        dues = [q[0][0] for q in pending.values() if q]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        ready, _, _ = select.select([a, b, stdin], [], [], timeout)
        if stdin in ready and not os.read(stdin, 4096):
            return
        for s in (a, b):
            if s not in ready:
                continue
            while True:
                try:
                    frame, anc, _flags, addr = s.recvmsg(65535, 64)
                except BlockingIOError:
                    break
                if addr[2] == packet_outgoing:
                    continue  # our own transmission, seen by our own socket
                due = time.monotonic() + delay
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == so_timestampns:
                        sec, nsec = ts.unpack_from(data)
                        due -= max(0.0, time.time() - (sec + nsec / 1e9))  # time it waited
                pending[peer[s]].append((due, frame))
        now = time.monotonic()
        for s, q in pending.items():
            while q and q[0][0] <= now:
                _, frame = q.popleft()
                with contextlib.suppress(OSError):
                    s.send(frame)


def _server_main(host: str, port: int, ping_interval: float, metadata: bool = True) -> None:
    """A minimal Agents endpoint reporting every message as a JSON line (see NetServer).
    ``metadata=False``: never answer the initiation (a start that hangs)."""
    import base64

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.server import ServerConnection, serve

    _pdeathsig()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -5)  # the far end is not on the client's machine
    out_lock = threading.Lock()

    def emit(**fields: Any) -> None:
        line = json.dumps(fields)
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    conns: list[ServerConnection] = []

    def record(data: str | bytes) -> None:
        t = time.monotonic()
        try:
            msg = json.loads(data)
        except ValueError:
            emit(ev="recv", type="garbage", t=t)
            return
        if "user_audio_chunk" in msg:
            pcm = base64.b64decode(msg["user_audio_chunk"])
            captured = []
            at = pcm.find(MAGIC)
            while at >= 0 and at + _STAMP.size <= len(pcm):
                captured.append(_STAMP.unpack_from(pcm, at)[1] / 1e9)
                at = pcm.find(MAGIC, at + 1)
            emit(ev="recv", type="user_audio_chunk", t=t, bytes=len(pcm), captured=captured)
            return
        kind = msg.get("type")
        extra = {k: msg[k] for k in ("event_id", "text", "tool_call_id") if k in msg}
        emit(ev="recv", type=kind, t=t, **extra)

    def pinger(ws: ServerConnection, stop: threading.Event) -> None:
        n = 0
        while not stop.wait(ping_interval):
            n += 1
            try:
                ping = {"type": "ping", "ping_event": {"event_id": n, "ping_ms": None}}
                ws.send(json.dumps(ping))
            except ConnectionClosed:
                return
            emit(ev="ping_sent", event_id=n, t=time.monotonic())

    def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        emit(ev="connected", t=time.monotonic())
        stop = threading.Event()
        try:
            record(ws.recv())
            if not metadata:
                for data in ws:
                    record(data)
            ws.send(
                json.dumps(
                    {
                        "type": "conversation_initiation_metadata",
                        "conversation_initiation_metadata_event": {
                            "conversation_id": "conv_netlab",
                            "agent_output_audio_format": "pcm_16000",
                            "user_input_audio_format": "pcm_16000",
                        },
                    }
                )
            )
            if ping_interval > 0:
                threading.Thread(target=pinger, args=(ws, stop), daemon=True).start()
            for data in ws:
                record(data)
        except ConnectionClosed:
            pass
        finally:
            stop.set()
            rcvd = ws.protocol.close_rcvd
            emit(ev="closed", t=time.monotonic(), code=rcvd.code if rcvd else None)

    with serve(handler, host, port, ping_interval=None, max_size=None, compression=None) as server:

        def commands() -> None:
            for line in sys.stdin:
                cmd = json.loads(line)
                if cmd.get("cmd") == "send" and conns:
                    data = json.dumps(cmd["message"])
                    with contextlib.suppress(ConnectionClosed):
                        for _ in range(cmd.get("repeat", 1)):
                            conns[-1].send(data)
                    call = cmd["message"].get("client_tool_call") or {}
                    emit(ev="sent", t=time.monotonic(), type=cmd["message"].get("type"),
                         tool_call_id=call.get("tool_call_id"))  # fmt: skip
            server.shutdown()  # stdin closed: the test is done

        threading.Thread(target=commands, daemon=True).start()
        emit(ev="listening", port=server.socket.getsockname()[1])
        server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "relay":
        _relay_main(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "server":
        _server_main(
            sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "--no-metadata" not in sys.argv
        )
    else:
        raise SystemExit(f"usage: {sys.argv[0]} relay IF_A IF_B DELAY | server HOST PORT PING_S")
