"""Field conditions (issue 8): slow and dead networks, slow user code, memory floods.

    python benchmarks/field.py                          # this tree (root: network namespaces)
    python benchmarks/field.py --baseline /tmp/oldmain  # ... side by side with another tree
    python benchmarks/field.py --quick                  # tiny sizes, same code paths

Every measurement runs in a fresh client process (``--worker``) that imports elevenconv
from the tree under test (``PYTHONPATH``); the server is another process: the network
lab's server (``tests/fixtures_netns.py``) inside a network namespace behind ``tc tbf`` and
a +150 ms each-way delay relay, or the same server on 127.0.0.1. With ``--baseline``,
both trees run each scenario back to back. Prints the table and writes
``benchmarks/results/field-<date>.json`` and ``field-latest.json`` (``--quick``:
``field-quick-latest.json``) with every sample.

Scenarios:

* ``uplink-64`` / ``uplink-256``: uplink 64 (256) kbit/s, +150 ms each way, microphone at
  real time (100 ms chunks), server pings every 1 s; a user message every 3 s and a tool
  call every 3 s. Pong delay (ping written -> pong read, server side) and the share of
  pongs delivered, user-message delivery delay (send call -> server read), tool-result
  round trip, microphone lag (capture time stamped in the PCM -> server read).
* ``frozen`` / ``blackhole``: the server is SIGSTOPped (or iptables drops everything)
  mid-session; ``ping_interval=1``, ``ping_timeout=2``: fault -> ``session_ended``.
* ``end-blocked`` / ``end-tool`` / ``end-backlog``: ``end_session()`` latency while a handler
  is blocked 2 s, while a tool hangs, with a 10,000-event backlog behind a slow handler;
  and how long the interpreter takes to exit with the hung tool.
* ``rss-events`` / ``rss-mic``: RSS growth (peak - before) for 3,000 events of 100 KB
  behind a slow handler, and for 60 microphone chunks of 10 MB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from run import git_commit, percentile  # noqa: E402

#: Conversation keywords an older tree may not have (dropped there, see --baseline).
NEW_KEYWORDS = frozenset({"ping_interval", "ping_timeout", "max_mic_lag", "echo_cancellation"})


def load_netns() -> ModuleType:
    """tests/fixtures_netns.py by path (its ``elevenconv`` is whichever is on sys.path)."""
    path = ROOT / "tests" / "fixtures_netns.py"
    spec = importlib.util.spec_from_file_location("fixtures_netns", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def agent_response(text: str, event_id: int = 1) -> dict[str, Any]:
    return {
        "type": "agent_response",
        "agent_response_event": {"agent_response": text, "event_id": event_id},
    }


def tool_call(call_id: str, name: str = "net_tool") -> dict[str, Any]:
    return {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": name,
            "tool_call_id": call_id,
            "parameters": {},
            "event_id": 1,
        },
    }


# ======================================================================================
# Worker side (the client process)
# ======================================================================================


class Control:
    """Lines from the driver on stdin (``GO``, ``MSG text``, ``END``)."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="bench-stdin", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("EOF")

    def get(self, timeout: float = 60.0) -> str:
        return self.lines.get(timeout=timeout)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class RssPeak:
    """Peak RSS of this process, sampled every 5 ms from a thread."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.base) / 1e6


def _library_threads_left(before: set[threading.Thread]) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("elevenconv-") and t.is_alive() and t not in before
    ]


def _conversation(url: str, fx: ModuleType, **kwargs: Any) -> Any:
    from elevenconv import Conversation, ElevenLabsClient

    options = {k: kwargs.pop(k) for k in list(kwargs) if k in NEW_KEYWORDS}
    return Conversation(
        ElevenLabsClient(base_url=url),
        "bench-agent",
        requires_auth=False,
        start_timeout=20,
        **kwargs,
        **fx.conversation_kwargs(**options),
    )


def w_uplink(p: dict[str, Any], ctl: Control, fx: ModuleType) -> dict[str, Any]:
    from elevenconv import ClientTools

    mic = fx.RealtimeMic(chunk_s=0.1)
    tools = ClientTools()
    tools.register("net_tool", lambda params: "ok")
    drops: list[Any] = []
    ended: list[Any] = []
    before = set(threading.enumerate())
    conv = _conversation(
        p["url"], fx, audio_interface=mic, client_tools=tools, ping_interval=p["ping_interval"],
        ping_timeout=p["ping_timeout"], max_mic_lag=1.0, echo_cancellation=False,
    )  # fmt: skip
    conv.on("mic_audio_dropped", lambda *a: drops.append([time.monotonic(), *a]))
    conv.on("session_ended", lambda *a: ended.append(list(a)))
    conv.start_session()
    say("READY")
    sent: dict[str, Any] = {}
    while True:
        line = ctl.get(p["seconds"] + 60)
        if line.startswith("MSG "):
            text = line[4:]
            t = time.monotonic()
            try:
                conv.send_user_message(text)
                sent[text] = t
            except Exception as exc:
                sent[text] = f"{type(exc).__name__}: {exc}"
        elif line in ("END", "EOF"):
            break
    t0 = time.perf_counter()
    conv.end_session()
    end_ms = (time.perf_counter() - t0) * 1000
    try:
        conv.wait_for_session_end(10)
    except TimeoutError:
        pass
    tools.close()
    return {
        "sent": sent,
        "stats": dict(conv.stats),
        "drops": drops,
        "ended": ended,
        "end_ms": end_ms,
        "mic_delivered": mic.delivered,
        "threads_left": _library_threads_left(before),
    }


def w_dead(p: dict[str, Any], ctl: Control, fx: ModuleType) -> dict[str, Any]:
    mic = fx.RealtimeMic(chunk_s=0.1)
    ended: list[Any] = []
    errors: list[str] = []
    before = set(threading.enumerate())
    conv = _conversation(
        p["url"], fx, audio_interface=mic, ping_interval=p["ping_interval"],
        ping_timeout=p["ping_timeout"], echo_cancellation=False,
    )  # fmt: skip
    conv.on("session_ended", lambda *a: ended.append([time.monotonic(), *a]))
    conv.on("error", lambda e: errors.append(f"{type(e).__name__}({getattr(e, 'code', '')})"))
    conv.start_session()
    say("READY")
    noticed = True
    try:
        conv.wait_for_session_end(p["wait"])
    except TimeoutError:
        noticed = False
    result = {
        "noticed": noticed,
        "ended": ended,
        "errors": errors,
        "active_after": conv.is_session_active(),
    }
    t0 = time.perf_counter()
    conv.end_session()
    result["end_ms"] = (time.perf_counter() - t0) * 1000
    result["threads_left"] = _library_threads_left(before)
    return result


def w_end(p: dict[str, Any], ctl: Control, fx: ModuleType) -> dict[str, Any]:
    """end_session() latency with user code in the way (kind: blocked, tool, backlog)."""
    from elevenconv import ClientTools

    kind = p["kind"]
    samples: list[dict[str, Any]] = []
    release = threading.Event()  # never set for the hung tool: it blocks exit, or not
    for _ in range(p["trials"]):
        entered = threading.Event()
        calls: list[float] = []

        def slow(text: str, entered: threading.Event = entered, calls: list[float] = calls) -> None:
            calls.append(time.monotonic())
            entered.set()
            time.sleep(p["handler_s"])

        def hung(params: dict[str, Any], entered: threading.Event = entered) -> str:
            entered.set()
            release.wait(p.get("hang_s", 30))
            return "late"

        tools = ClientTools()
        tools.register("net_tool", hung)
        before = set(threading.enumerate())
        conv = _conversation(p["url"], fx, text_only=True, client_tools=tools)
        conv.on("agent_response", slow)
        conv.start_session()
        say("READY")
        if ctl.get() != "GO":
            break
        entered.wait(10)
        if kind == "backlog":
            time.sleep(1.0)  # let the reader queue the burst behind the slow handler
        t0 = time.perf_counter()
        conv.end_session()
        end_ms = (time.perf_counter() - t0) * 1000
        after_end = time.monotonic()
        t1 = time.perf_counter()
        try:
            conv.wait_for_session_end(p.get("wait", 15))
            waited: float | None = time.perf_counter() - t1
        except TimeoutError:
            waited = None
        late = sum(1 for c in calls if c > after_end)
        samples.append(
            {
                "end_ms": end_ms,
                "wait_s": waited,
                "handlers_after_end": late,
                "handler_calls": len(calls),
                "stats": dict(conv.stats),
                "threads_left": _library_threads_left(before),
            }
        )
        if kind != "tool":
            tools.close()
    return {"samples": samples}


def w_rss_events(p: dict[str, Any], ctl: Control, fx: ModuleType) -> dict[str, Any]:
    conv = _conversation(p["url"], fx, text_only=True)
    handled = [0]

    def slow(text: str) -> None:
        handled[0] += 1
        time.sleep(p["handler_s"])

    conv.on("agent_response", slow)
    conv.start_session()
    rss = RssPeak()
    say("READY")
    ctl.get()  # GO: the server has sent the whole flood
    time.sleep(1.0)  # the last messages are read and queued
    growth = rss.stop()
    conv.end_session()
    return {"rss_growth_mb": growth, "handled": handled[0], "stats": dict(conv.stats)}


def w_rss_mic(p: dict[str, Any], ctl: Control, fx: ModuleType) -> dict[str, Any]:
    from elevenconv import AudioInterface

    chunk = fx.stamped_chunk(p["chunk_mb"] * 1_000_000)
    done = threading.Event()

    class BigMic(AudioInterface):
        def start(self, input_callback: Callable[[bytes], None]) -> None:
            def run() -> None:
                for _ in range(p["chunks"]):
                    input_callback(chunk)
                    time.sleep(p["interval_s"])
                done.set()

            threading.Thread(target=run, name="bench-bigmic", daemon=True).start()

        def stop(self) -> None:
            pass

        def output(self, audio: bytes) -> None:
            pass

        def interrupt(self) -> None:
            pass

    conv = _conversation(p["url"], fx, audio_interface=BigMic(), echo_cancellation=False)
    rss = RssPeak()
    conv.start_session()
    say("READY")
    done.wait(120)
    time.sleep(1.0)
    growth = rss.stop()
    conv.end_session()
    return {"rss_growth_mb": growth, "stats": dict(conv.stats)}


WORKERS = {"uplink": w_uplink, "dead": w_dead, "end": w_end, "rss_events": w_rss_events,
           "rss_mic": w_rss_mic}  # fmt: skip


def worker_main(kind: str, params: dict[str, Any]) -> int:
    import elevenconv

    fx = load_netns()
    ctl = Control()
    result = WORKERS[kind](params, ctl, fx)
    result["library"] = os.path.dirname(os.path.dirname(elevenconv.__file__))
    say("RESULT " + json.dumps(result))
    return 0


# ======================================================================================
# Driver side
# ======================================================================================


class Worker:
    """A client process running one worker against the tree ``lib_root``."""

    def __init__(self, kind: str, params: dict[str, Any], lib_root: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(lib_root))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.result_at: float | None = None
        self.exited_at: float | None = None
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                self.result_at = time.monotonic()
            self.lines.put(line.rstrip("\n"))
        self.proc.wait()
        self.exited_at = time.monotonic()
        self.lines.put("EXIT")

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"worker: no {prefix!r} within {timeout:g} s") from None
            if line.startswith(prefix) or line == "EXIT":
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.expect("RESULT ", timeout)
        except TimeoutError:
            self.kill()
            return {"error": f"timeout after {timeout:g} s", "stderr": "".join(self.stderr)[-1500:]}
        if not line.startswith("RESULT "):
            return {"error": "worker exited", "stderr": "".join(self.stderr)[-1500:]}
        return dict(json.loads(line[len("RESULT ") :]))

    def exit_delay(self, timeout: float) -> float | None:
        """Seconds from the RESULT line to the process's exit (``None``: killed)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        deadline = time.monotonic() + 5
        while self.exited_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.result_at is None or self.exited_at is None:
            return None
        return self.exited_at - self.result_at

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def stats_of(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


def run_uplink(lib: Path, fx: ModuleType, kbit: int, pings: int) -> dict[str, Any]:
    with fx.NetLab(uplink_kbit=kbit, delay_s=0.150) as lab:
        server = lab.spawn_server(ping_interval=1.0)
        params = {"url": server.base_url, "ping_interval": 5.0, "ping_timeout": 10.0,
                  "seconds": pings}  # fmt: skip
        w = Worker("uplink", params, lib)
        try:
            if not w.expect("READY", 40).startswith("READY"):
                return w.result(1)
            texts, calls = [], []
            for n in range(1, pings + 1):
                server.wait_for(lambda r, n=n: r["ev"] == "ping_sent" and r["event_id"] == n, 10)
                if n % 3 == 1:
                    texts.append(f"field message {n}")
                    w.send("MSG " + texts[-1])
                elif n % 3 == 2:
                    calls.append(f"call-{n}")
                    server.send_tool_call(calls[-1])
            # Give what is still in flight a bounded chance to land.
            for pred in (
                lambda r: r.get("type") == "pong" and r["event_id"] == pings,
                lambda r: r.get("type") == "user_message" and r.get("text") == texts[-1],
            ):
                try:
                    server.wait_for(pred, 5)
                except TimeoutError:
                    pass
            w.send("END")
            res = w.result(60)
        finally:
            w.kill()
        sent_t = {r["event_id"]: r["t"] for r in server.select("ping_sent")}
        pong_delays = [
            r["t"] - sent_t[r["event_id"]]
            for r in server.received("pong")
            if r["event_id"] in sent_t and r["event_id"] <= pings
        ]
        arrived = {r["text"]: r["t"] for r in server.received("user_message")}
        sent = res.get("sent", {})
        msg_delays = [
            arrived[t] - s for t, s in sent.items() if isinstance(s, float) and t in arrived
        ]
        tool_sent = {
            r["tool_call_id"]: r["t"] for r in server.select("sent") if r.get("tool_call_id")
        }
        tool_rt = [
            r["t"] - tool_sent[r["tool_call_id"]]
            for r in server.received("client_tool_result")
            if r.get("tool_call_id") in tool_sent
        ]
        lags = server.mic_lags()
        warm = [lag for c, lag in lags if lags and c > lags[0][0] + 3.0]
        return {
            "kbit": kbit,
            "pings": pings,
            "pongs_delivered": len(pong_delays),
            "pong_delay_s": stats_of(pong_delays),
            "user_messages": {"sent": len(texts), "delivered": len(msg_delays)},
            "user_message_delay_s": stats_of(msg_delays),
            "tool_results": {"called": len(calls), "delivered": len(tool_rt)},
            "tool_round_trip_s": stats_of(tool_rt),
            "mic_lag_s": stats_of(warm),
            "mic_chunks_received": len(lags),
            "client": res,
        }


def run_dead(lib: Path, fx: ModuleType, fault: str, trials: int) -> dict[str, Any]:
    samples = []
    for _ in range(trials):
        with fx.NetLab(delay_s=0.150) as lab:
            server = lab.spawn_server(ping_interval=1.0)
            params = {"url": server.base_url, "ping_interval": 1.0, "ping_timeout": 2.0,
                      "wait": 15.0}  # fmt: skip
            w = Worker("dead", params, lib)
            try:
                if not w.expect("READY", 40).startswith("READY"):
                    samples.append(w.result(1))
                    continue
                server.wait_for(lambda r: r.get("type") == "pong", 10, count=2)
                fault_at = time.monotonic()
                if fault == "frozen":
                    server.freeze()
                else:
                    lab.blackhole()
                res = w.result(60)
            finally:
                w.kill()
            ended = res.get("ended") or []
            res["detect_s"] = ended[0][0] - fault_at if ended and res.get("noticed") else None
            samples.append(res)
    detect = [s["detect_s"] for s in samples if s.get("detect_s") is not None]
    return {
        "fault": fault,
        "trials": trials,
        "noticed": len(detect),
        "detect_s": stats_of(detect),
        "codes": [(s.get("ended") or [[None, None, None]])[0][2:4] for s in samples],
        "samples": samples,
    }


def run_end(lib: Path, fx: ModuleType, kind: str, trials: int) -> dict[str, Any]:
    server = fx.spawn_local_server()
    try:
        if kind == "backlog":
            trigger, repeat = agent_response("backlog"), 10_000
            params = {"handler_s": 0.01}
        elif kind == "tool":
            trigger, repeat = tool_call("hung-1"), 1
            params = {"handler_s": 0.0, "wait": 3.0}
        else:
            trigger, repeat = agent_response("block"), 1
            params = {"handler_s": 2.0}
        params.update(url=server.base_url, kind=kind, trials=trials)
        w = Worker("end", params, lib)
        try:
            for i in range(trials):
                line = w.expect("READY", 40)
                if not line.startswith("READY"):
                    break
                server.send(trigger, repeat=repeat)
                server.wait_for(lambda r: r["ev"] == "sent", 30, count=i + 1)
                w.send("GO")
            res = w.result(trials * 30 + 30)
            res["exit_delay_s"] = w.exit_delay(45) if "error" not in res else None
        finally:
            w.kill()
    finally:
        server.kill()
    samples = res.get("samples", [])
    return {
        "kind": kind,
        "end_ms": stats_of([s["end_ms"] for s in samples]),
        "wait_s": [s["wait_s"] for s in samples],
        "handlers_after_end": [s["handlers_after_end"] for s in samples],
        "threads_left": [s["threads_left"] for s in samples],
        "exit_delay_s": res.get("exit_delay_s"),
        "client": res,
    }


def run_rss(lib: Path, fx: ModuleType, kind: str, quick: bool) -> dict[str, Any]:
    server = fx.spawn_local_server()
    try:
        if kind == "events":
            n = 300 if quick else 3000
            params = {"url": server.base_url, "handler_s": 0.05, "events": n}
            w = Worker("rss_events", params, lib)
            try:
                if w.expect("READY", 40).startswith("READY"):
                    server.send(agent_response("x" * 100_000), repeat=n)
                    server.wait_for(lambda r: r["ev"] == "sent", 120)
                    w.send("GO")
                res = w.result(120)
            finally:
                w.kill()
        else:
            params = {"url": server.base_url, "chunk_mb": 10, "chunks": 6 if quick else 60,
                      "interval_s": 0.1}  # fmt: skip
            w = Worker("rss_mic", params, lib)
            try:
                w.expect("READY", 40)
                res = w.result(120)
            finally:
                w.kill()
    finally:
        server.kill()
    res["kind"] = kind
    res["server_bytes"] = sum(r.get("bytes", 0) for r in server.received("user_audio_chunk"))
    return res


# -- the table ---------------------------------------------------------------------------


def _f(x: Any, unit: str = "", digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.{digits}f}{unit}"


Row = tuple[str, str, str, bool]  # figure, value, target, met


def _ok(x: Any, limit: float) -> bool:
    return isinstance(x, (int, float)) and x == x and x <= limit


def figures(r: dict[str, Any]) -> list[Row]:
    """The table rows for one tree's results."""
    rows: list[Row] = []
    for key in ("uplink-64", "uplink-256"):
        u = r.get(key)
        if not u or "pong_delay_s" not in u:
            continue
        k = u["kbit"]
        pd, md, ml = u["pong_delay_s"], u["user_message_delay_s"], u["mic_lag_s"]
        share = u["pongs_delivered"] / max(1, u["pings"])
        um, tr = u["user_messages"], u["tool_results"]
        stats = u["client"].get("stats", {})
        drops = u["client"].get("drops", [])
        rows += [
            (f"{k} kbit/s: pongs delivered", f"{u['pongs_delivered']}/{u['pings']} ({share:.0%})",
             ">= 95%", share >= 0.95),
            (f"{k} kbit/s: pong delay p50 / p95", f"{_f(pd['p50'], ' s')} / {_f(pd['p95'], ' s')}",
             "p95 <= 1.5 s", _ok(pd["p95"], 1.5)),
            (f"{k} kbit/s: user messages delivered; delay p50 / max",
             f"{um['delivered']}/{um['sent']}; {_f(md['p50'], ' s')} / {_f(md['max'], ' s')}",
             "all", um["delivered"] == um["sent"]),
            (f"{k} kbit/s: tool results delivered", f"{tr['delivered']}/{tr['called']}", "all",
             tr["delivered"] == tr["called"]),
            (f"{k} kbit/s: mic lag p50 / p95 / max",
             f"{_f(ml['p50'], ' s')} / {_f(ml['p95'], ' s')} / {_f(ml['max'], ' s')}",
             "<= 1.5 s", _ok(ml["max"], 1.5)),
            (f"{k} kbit/s: mic dropped (stats); mic_audio_dropped events",
             f"{stats.get('dropped_mic_chunks', '-')} chunks, "
             f"{stats.get('dropped_mic_ms', '-')} ms; {len(drops)} events",
             "counted + event", bool(drops)),
        ]  # fmt: skip
    for key in ("frozen", "blackhole"):
        d = r.get(key)
        if d and "detect_s" in d:
            ds = d["detect_s"]
            rows.append(
                (f"{key} peer (ping 1 s / timeout 2 s): noticed; fault -> session_ended p50 / max",
                 f"{d['noticed']}/{d['trials']}; {_f(ds['p50'], ' s')} / {_f(ds['max'], ' s')}",
                 "all, <= 4 s", d["noticed"] == d["trials"] and _ok(ds["max"], 4.0))
            )  # fmt: skip
    for key, what in (("end-blocked", "handler blocked 2 s"), ("end-tool", "hung tool"),
                      ("end-backlog", "10,000-event backlog")):  # fmt: skip
        e = r.get(key)
        if not e or "end_ms" not in e:
            continue
        em = e["end_ms"]
        rows.append((f"end_session(), {what}: p50 / p99",
                     f"{_f(em['p50'], ' ms')} / {_f(em['p99'], ' ms')}", "p99 <= 50 ms",
                     _ok(em["p99"], 50.0)))  # fmt: skip
        late = max(e["handlers_after_end"] or [0])
        rows.append((f"... {what}: handlers started after end_session()", str(late), "0",
                     late == 0))  # fmt: skip
        if key == "end-tool":
            x = e.get("exit_delay_s")
            rows.append(("... hung tool: interpreter exit after the script's end", _f(x, " s"),
                         "< 1 s", _ok(x, 1.0)))  # fmt: skip
        else:
            left = sum(1 for t in e["threads_left"] if t)
            rows.append((f"... {what}: trials with threads left after wait_for_session_end()",
                         f"{left} of {len(e['threads_left'])}", "0", left == 0))  # fmt: skip
    for key, what in (("rss-events", "3,000 x 100 KB events, slow handler"),
                      ("rss-mic", "60 x 10 MB mic chunks")):  # fmt: skip
        m = r.get(key)
        if m and "rss_growth_mb" in m:
            g = m["rss_growth_mb"]
            rows.append((f"RSS growth, {what}", _f(g, " MB", 1), "<= 20 MB", _ok(g, 20.0)))
    return rows


def render(results: dict[str, dict[str, Any]]) -> str:
    trees = list(results)
    tables = {tree: {row[0]: row for row in figures(res)} for tree, res in results.items()}
    names: list[str] = []
    for tree in trees:
        names += [n for n in tables[tree] if n not in names]
    header = "| figure | " + " | ".join(trees) + " | target | met (" + trees[-1] + ") |"
    lines = [header, "|" + "---|" * (len(trees) + 3)]
    for name in names:
        cells = [tables[t][name][1] if name in tables[t] else "-" for t in trees]
        row = tables[trees[-1]].get(name)
        target = row[2] if row else "-"
        met = ("yes" if row[3] else "**no**") if row else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} | {met} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "--worker":
        return worker_main(args[1], json.loads(args[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code paths")
    parser.add_argument("--baseline", type=Path, help="another tree to compare (e.g. a worktree)")
    parser.add_argument("--baseline-label", default="previous main")
    parser.add_argument("--only", default="", help="comma-separated scenarios")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    opts = parser.parse_args(args)

    fx = load_netns()
    reason = fx.unavailable_reason()
    quick = opts.quick
    plan: dict[str, Callable[[Path], dict[str, Any]]] = {
        "end-blocked": lambda lib: run_end(lib, fx, "blocked", 3 if quick else 10),
        "end-tool": lambda lib: run_end(lib, fx, "tool", 3 if quick else 10),
        "end-backlog": lambda lib: run_end(lib, fx, "backlog", 1 if quick else 5),
        "rss-events": lambda lib: run_rss(lib, fx, "events", quick),
        "rss-mic": lambda lib: run_rss(lib, fx, "mic", quick),
    }
    if reason is None:
        plan = {
            "uplink-64": lambda lib: run_uplink(lib, fx, 64, 8 if quick else 30),
            "uplink-256": lambda lib: run_uplink(lib, fx, 256, 8 if quick else 30),
            "frozen": lambda lib: run_dead(lib, fx, "frozen", 1 if quick else 5),
            "blackhole": lambda lib: run_dead(lib, fx, "blackhole", 1 if quick else 5),
            **plan,
        }
    else:
        print(f"network scenarios skipped: {reason}", file=sys.stderr)
    if opts.only:
        plan = {k: v for k, v in plan.items() if k in opts.only.split(",")}
    trees: dict[str, Path] = {}
    if opts.baseline:
        trees[opts.baseline_label] = opts.baseline.resolve()
    trees["this tree"] = ROOT
    results: dict[str, dict[str, Any]] = {t: {} for t in trees}
    for name, run in plan.items():
        for label, lib in trees.items():
            t0 = time.monotonic()
            print(f"== {name} ({label})", file=sys.stderr, flush=True)
            try:
                results[label][name] = run(lib)
            except Exception as exc:  # one broken scenario must not lose the others
                results[label][name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    table = render(results)
    print(table)
    opts.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "trees": {k: str(v) for k, v in trees.items()},
        "quick": quick,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
        },
        "network": "relay" if reason is None else f"skipped: {reason}",
        "table": table,
        "results": results,
    }
    text = json.dumps(doc, indent=1, default=str)
    if quick:
        (opts.out / "field-quick-latest.json").write_text(text)
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        (opts.out / f"field-{stamp}.json").write_text(text)
        (opts.out / "field-latest.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
