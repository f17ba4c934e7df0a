"""Client side of the benchmark: one adapter per library, and the worker entry point.

    python benchmarks/clients.py --lib elevenconv|official|floor --scenario NAME --port N \
        --tag TAG --params '{...}' [--elevenconv-path TREE]

runs one scenario in this (fresh) process against the benchmark server and prints
``RESULT {json}``. The adapters expose the same few operations for every library --
``create`` (a Conversation with a given audio interface, an ``agent_response`` callback,
a ``bench_tool`` client tool and ``user_id=tag``), ``start`` (return when the session is
ready: the conversation id is known), ``send`` (a user message) and ``end`` -- so every
scenario below is written once and runs unchanged against each. ``floor`` is no library:
the least a correct client does with websocket-client (:class:`FloorConversation`), the
floor each figure has in this setup.

``--elevenconv-path TREE`` imports ``elevenconv`` from the checkout TREE instead of this
one (``run.py --baseline``: the previous main, measured with these same scenarios). The
worker asserts that ``elevenconv.__file__`` is under TREE and reports it in the result;
Conversation keywords TREE's Conversation does not accept are dropped (and reported).

Measurement points are inside this process: ``output()`` of the audio interface (same
code for every library), ``time.process_time()`` (CPU of all threads of the process),
``threading.enumerate()`` (threads the library created), ``psutil`` (RSS).
"""

from __future__ import annotations

import argparse
import base64
import gc
import inspect
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AGENT = "bench-{}"
API_KEY = "sim-api-key"
START_TIMEOUT = 30.0


# ======================================================================================
# Adapters
# ======================================================================================


class Adapter:
    """The operations every scenario needs, for one library."""

    name = ""
    AudioInterface: Any = None

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"

    mod: Any = None  # the module with Conversation and ClientTools
    client: Any = None
    #: Extra Conversation arguments only this library has.
    extra_kwargs: dict[str, Any] = {}

    def create(
        self,
        scenario: str,
        tag: str,
        iface: Any,
        on_agent_response: Callable[[str], None] | None = None,
    ) -> Any:
        """The same Conversation call, with the same tool, for both libraries."""
        tools = self.mod.ClientTools()
        tools.register("bench_tool", _bench_tool)
        kwargs = self.accepted(
            {
                "requires_auth": False,
                "audio_interface": iface,
                "client_tools": tools,
                "user_id": tag,
                "callback_agent_response": on_agent_response,
                **self.extra_kwargs,
            }
        )
        return self.mod.Conversation(self.client, AGENT.format(scenario), **kwargs)

    def accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keywords this library's Conversation takes (all of them, by default)."""
        return kwargs

    def info(self) -> dict[str, Any]:
        """What the worker reports beside the scenario's figures."""
        return {}

    def start(self, conv: Any) -> None:
        raise NotImplementedError

    def send(self, conv: Any, text: str) -> None:
        conv.send_user_message(text)

    def end(self, conv: Any) -> None:
        conv.end_session()

    def default_audio_interface(self) -> Any:
        raise NotImplementedError


def _bench_tool(params: dict[str, Any]) -> str:
    return "ok"


class ElevenconvAdapter(Adapter):
    name = "elevenconv"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        import elevenconv

        self.mod = elevenconv
        self.AudioInterface = elevenconv.AudioInterface
        self.client = elevenconv.ElevenLabsClient(api_key=API_KEY, base_url=self.base_url)
        self.extra_kwargs = {"start_timeout": START_TIMEOUT}
        # Another tree's Conversation (--elevenconv-path) may lack newer keywords: those
        # are dropped, so it runs as it did.
        params = inspect.signature(elevenconv.Conversation).parameters
        self.takes_any = any(x.kind is inspect.Parameter.VAR_KEYWORD for x in params.values())
        self.parameters = set(params)
        self.dropped: set[str] = set()

    def accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.takes_any:
            return kwargs
        self.dropped.update(k for k in kwargs if k not in self.parameters)
        return {k: v for k, v in kwargs.items() if k in self.parameters}

    def info(self) -> dict[str, Any]:
        return {
            "elevenconv_file": self.mod.__file__,
            "elevenconv_version": getattr(self.mod, "__version__", "?"),
            "dropped_kwargs": sorted(self.dropped),
        }

    def start(self, conv: Any) -> None:
        conv.start_session()  # returns once conversation_initiation_metadata arrived

    def default_audio_interface(self) -> Any:
        from elevenconv import DefaultAudioInterface

        class Timed(DefaultAudioInterface):  # type: ignore[misc, valid-type]
            """Notes when the first agent audio buffer went to the device."""

            first_play: float | None = None

            def set_playback_callback(self, callback):  # type: ignore[no-untyped-def]
                def wrapped(playing: bool) -> None:
                    if playing and self.first_play is None:
                        self.first_play = time.monotonic()
                    if callback is not None:
                        callback(playing)

                return super().set_playback_callback(wrapped)

        return Timed()


class OfficialAdapter(Adapter):
    name = "official"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        from elevenlabs import ElevenLabs
        from elevenlabs.conversational_ai import conversation as conv_mod

        self.mod = conv_mod
        self.AudioInterface = conv_mod.AudioInterface
        self.client = ElevenLabs(api_key=API_KEY, base_url=self.base_url)

    def start(self, conv: Any) -> None:
        # start_session() returns at once (it connects on its thread) and the SDK has no
        # "ready" signal: wait for the conversation id, as the metadata sets it.
        conv.start_session()
        deadline = time.monotonic() + START_TIMEOUT
        while conv._conversation_id is None:
            if time.monotonic() > deadline or (conv._thread and not conv._thread.is_alive()):
                raise TimeoutError("official Conversation did not start")
            time.sleep(0.001)

    def default_audio_interface(self) -> Any:
        import queue

        from elevenlabs.conversational_ai.default_audio_interface import DefaultAudioInterface

        class Timed(DefaultAudioInterface):  # type: ignore[misc]
            """The SDK's output thread, unchanged, noting when the first write started."""

            first_play: float | None = None

            def _output_thread(self) -> None:
                while not self.should_stop.is_set():
                    try:
                        audio = self.output_queue.get(timeout=0.25)
                        if self.first_play is None:
                            self.first_play = time.monotonic()
                        self.out_stream.write(audio)
                    except queue.Empty:
                        pass

        return Timed()


class FloorAudioInterface:
    """The audio interface the floor client drives: start / stop / output / interrupt."""

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        pass

    def stop(self) -> None:
        pass

    def output(self, audio: bytes) -> None:
        pass

    def interrupt(self) -> None:
        pass


class FloorConversation:
    """The least work a correct client does, written plainly with websocket-client.

    One reader thread: ``recv()`` -> ``json.loads`` -> by type, inline: ``audio`` ->
    ``base64.b64decode`` -> ``output(pcm)``; ``ping`` -> ``pong``; ``client_tool_call`` ->
    the tool -> ``client_tool_result``; ``conversation_initiation_metadata`` -> started.
    ``agent_response`` goes through a ``SimpleQueue`` to one callback thread, so a
    blocking user callback does not hold up pongs (the minimum a correct client must do).
    No reconnects, no outbox, no validation, no events beyond these; UTF-8 is checked by
    ``recv()``'s decode (``skip_utf8_validation`` skips websocket-client's second,
    pure-Python check, as elevenconv does too).
    """

    def __init__(
        self,
        url: str,
        user_id: str,
        iface: FloorAudioInterface,
        tools: dict[str, Callable[[dict[str, Any]], str]],
        on_agent_response: Callable[[str], None] | None,
    ) -> None:
        self.url = url
        self.user_id = user_id
        self.iface = iface
        self.tools = tools
        self.on_agent_response = on_agent_response
        self.ws: Any = None
        self.started = threading.Event()
        self.conversation_id: str | None = None
        self.callbacks: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, name="floor-reader", daemon=True)
        self.callback_thread = threading.Thread(
            target=self._run_callbacks, name="floor-callbacks", daemon=True
        )

    def start(self) -> None:
        self.ws = websocket.create_connection(
            self.url, timeout=START_TIMEOUT, skip_utf8_validation=True
        )
        self.ws.settimeout(None)  # the reader blocks in recv() until the socket closes
        self.ws.send(
            json.dumps(
                {
                    "type": "conversation_initiation_client_data",
                    "conversation_config_override": {},
                    "user_id": self.user_id,
                }
            )
        )
        self.callback_thread.start()
        self.reader.start()
        if not self.started.wait(START_TIMEOUT):
            raise TimeoutError("floor client: no conversation_initiation_metadata")
        self.iface.start(self._send_mic)

    def _send_mic(self, pcm: bytes) -> None:
        self.ws.send(json.dumps({"user_audio_chunk": base64.b64encode(pcm).decode()}))

    def send_user_message(self, text: str) -> None:
        self.ws.send(json.dumps({"type": "user_message", "text": text}))

    def _read(self) -> None:
        ws, output = self.ws, self.iface.output
        try:
            while True:
                frame = ws.recv()
                if not frame:  # "" : the close frame (websocket-client answered it)
                    break
                msg = json.loads(frame)
                kind = msg.get("type")
                if kind == "audio":
                    output(base64.b64decode(msg["audio_event"]["audio_base_64"]))
                elif kind == "ping":
                    ws.send(json.dumps({"type": "pong", "event_id": msg["ping_event"]["event_id"]}))
                elif kind == "agent_response":
                    self.callbacks.put(msg["agent_response_event"]["agent_response"])
                elif kind == "client_tool_call":
                    self._tool_call(msg["client_tool_call"])
                elif kind == "conversation_initiation_metadata":
                    event = msg["conversation_initiation_metadata_event"]
                    self.conversation_id = event["conversation_id"]
                    self.started.set()
        except (OSError, ValueError, websocket.WebSocketException):
            pass  # the socket closed under us (end() aborted it, or the peer went away)
        finally:
            self.callbacks.put(None)
            ws.shutdown()

    def _tool_call(self, call: dict[str, Any]) -> None:
        try:
            result, is_error = self.tools[call["tool_name"]](call.get("parameters") or {}), False
        except Exception as exc:
            result, is_error = f"{type(exc).__name__}: {exc}", True
        if call.get("expects_response", True):
            self.ws.send(
                json.dumps(
                    {
                        "type": "client_tool_result",
                        "tool_call_id": call["tool_call_id"],
                        "result": result,
                        "is_error": is_error,
                    }
                )
            )

    def _run_callbacks(self) -> None:
        while (text := self.callbacks.get()) is not None:
            if self.on_agent_response is not None:
                self.on_agent_response(text)

    def end_session(self) -> None:
        """Send the close frame; the reader sees the server's answer, shuts the socket and
        exits; then the callback thread drains and exits. Both are joined."""
        try:
            self.ws.send_close()
        except Exception:  # already closed: the reader is on its way out
            pass
        self.reader.join(2.0)
        if self.reader.is_alive():  # no close answer: wake the reader
            self.ws.abort()
            self.reader.join()
        self.iface.stop()
        if threading.current_thread() is not self.callback_thread:
            self.callback_thread.join()


class FloorAdapter(Adapter):
    """Not a library: what a bare websocket-client reader costs (see FloorConversation)."""

    name = "floor"
    AudioInterface = FloorAudioInterface

    def create(
        self,
        scenario: str,
        tag: str,
        iface: Any,
        on_agent_response: Callable[[str], None] | None = None,
    ) -> Any:
        url = f"ws://127.0.0.1:{self.port}/v1/convai/conversation?agent_id={AGENT.format(scenario)}"
        return FloorConversation(url, tag, iface, {"bench_tool": _bench_tool}, on_agent_response)

    def start(self, conv: Any) -> None:
        conv.start()

    def default_audio_interface(self) -> Any:
        raise NotImplementedError("the floor has no audio device (barge-in is not measured)")


ADAPTERS: dict[str, type[Adapter]] = {
    "elevenconv": ElevenconvAdapter,
    "official": OfficialAdapter,
    "floor": FloorAdapter,
}


def recording_interface(base: type) -> Any:
    """A null audio device whose ``output()`` notes each chunk's delivery latency: the
    server wrote ``time.monotonic_ns()`` into the first 8 bytes of the chunk."""

    class Recording(base):  # type: ignore[misc, valid-type]
        # A null device: no speaker reaches a microphone, so elevenconv does not run its
        # echo canceller here (its cost is measured on its own by benchmarks/echo.py).
        acoustic_echo = False

        def __init__(self, expected: int = 0, sink: list[int] | None = None) -> None:
            self.latencies_ns: list[int] = [] if sink is None else sink
            self.expected = expected
            self.count = 0
            self.done = threading.Event()
            self.cpu_at_done = 0.0
            self.t_done = 0.0

        def start(self, input_callback: Callable[[bytes], None]) -> None:
            pass

        def stop(self) -> None:
            pass

        def output(self, audio: bytes) -> None:
            now = time.monotonic_ns()
            self.latencies_ns.append(now - int.from_bytes(audio[:8], "little"))
            self.count += 1
            if self.count == self.expected:
                self.t_done = time.monotonic()
                self.done.set()

        def interrupt(self) -> None:
            pass

    return Recording


# ======================================================================================
# Scenarios (each returns a JSON-able dict)
# ======================================================================================


def _library_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _done_waiter() -> tuple[threading.Event, dict[str, Any], Callable[[str], None]]:
    done = threading.Event()
    box: dict[str, Any] = {}

    def on_response(text: str) -> None:
        if text.startswith("bench-done"):
            box.update(json.loads(text[len("bench-done") :]))
            done.set()

    return done, box, on_response


def scenario_stream(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    """Paced audio messages; latency per chunk at ``output()``, CPU of the whole burst."""
    n, interval, size = int(p["n"]), float(p["interval_s"]), int(p["chunk_bytes"])
    iface = recording_interface(ad.AudioInterface)(expected=n)
    conv = ad.create("stream", tag, iface)
    ad.start(conv)
    time.sleep(0.3)  # settle: connection threads idle
    gc.collect()
    cpu0, t0 = time.process_time(), time.monotonic()
    ad.send(conv, f"go {n} {interval} {size}")
    if not iface.done.wait(30 + n * interval * 3):
        raise TimeoutError(f"only {iface.count} of {n} chunks reached output()")
    # Work a library defers (events for the same messages) is counted too: settle first.
    time.sleep(0.1)
    cpu1 = time.process_time()
    ad.end(conv)
    return {
        "n": n,
        "cpu_s": cpu1 - cpu0,
        "wall_s": iface.t_done - t0,
        "latency_ms": [x / 1e6 for x in iface.latencies_ns],
    }


def scenario_idle(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    seconds = float(p["seconds"])
    iface = recording_interface(ad.AudioInterface)()
    conv = ad.create("idle", tag, iface)
    ad.start(conv)
    time.sleep(0.5)
    gc.collect()
    cpu0 = time.process_time()
    time.sleep(seconds)
    cpu1 = time.process_time()
    ad.end(conv)
    return {"seconds": seconds, "cpu_s": cpu1 - cpu0}


def scenario_end(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    """``end_session()`` -> every thread the library created is gone (diff of
    ``threading.enumerate()`` around the whole session, polled every 0.2 ms)."""
    gone_ms, returned_ms, created = [], [], []
    for i in range(int(p["sessions"])):
        before = set(threading.enumerate())
        iface = recording_interface(ad.AudioInterface)()
        conv = ad.create("idle", f"{tag}:{i}", iface)
        ad.start(conv)
        time.sleep(0.05)
        created.append(len(_library_threads(before)))
        t0 = time.perf_counter()
        ad.end(conv)
        t_ret = time.perf_counter()
        deadline = t0 + 10.0
        while _library_threads(before):
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"threads still alive 10 s after end_session(): "
                    f"{[t.name for t in _library_threads(before)]}"
                )
            time.sleep(0.0002)
        t_gone = time.perf_counter()
        gone_ms.append((t_gone - t0) * 1000)
        returned_ms.append((t_ret - t0) * 1000)
    return {"gone_ms": gone_ms, "returned_ms": returned_ms, "threads_created": created}


def scenario_pong(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    blocks, block_s = int(p["blocks"]), float(p["block_s"])
    done, box, on_done = _done_waiter()

    def on_response(text: str) -> None:
        if text == "block":
            time.sleep(block_s)  # a slow user callback
        else:
            on_done(text)

    conv = ad.create("pong", tag, recording_interface(ad.AudioInterface)(), on_response)
    ad.start(conv)
    ad.send(conv, f"go {blocks} {block_s}")
    if not done.wait(30 + blocks * (block_s + 1) * 2):
        raise TimeoutError("no bench-done from the pong scenario")
    ad.end(conv)
    return {"pong_ms": box["pong_ms"]}


def scenario_tool(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    n, gap = int(p["n"]), float(p["gap_s"])
    done, box, on_done = _done_waiter()
    conv = ad.create("tool", tag, recording_interface(ad.AudioInterface)(), on_done)
    ad.start(conv)
    time.sleep(0.1)
    ad.send(conv, f"go {n} {gap}")
    if not done.wait(30 + n * (gap + 0.1)):
        raise TimeoutError("no bench-done from the tool scenario")
    ad.end(conv)
    return {"tool_ms": box["tool_ms"]}


def scenario_bargein(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    """Real DefaultAudioInterface of each library on the PulseAudio test stack; the
    speaker monitor is recorded and the audio heard after the interruption measured."""
    import numpy as np

    from tests.fixtures_sound import RATE, SpeakerCapture, as_array, envelope

    threshold = 500.0
    trials = []
    for i in range(int(p["trials"])):
        done, box, on_done = _done_waiter()
        iface = ad.default_audio_interface()
        conv = ad.create("bargein", f"{tag}:{i}", iface, on_done)
        with SpeakerCapture() as cap:
            if not cap.wait_recording(10):
                raise RuntimeError("parecord delivered nothing: is the sound server up?")
            ad.start(conv)
            ad.send(conv, "go 0.5")
            if not done.wait(30):
                raise TimeoutError("no bench-done from the barge-in scenario")
            t_int = box["t_interrupt_ns"] / 1e9
            cap.wait_until(time.monotonic() + 0.5, 10)
            ad.end(conv)
        x = as_array(cap.pcm)
        loud = np.nonzero(envelope(x) > threshold)[0]
        if not len(loud) or iface.first_play is None:
            raise RuntimeError("no agent audio was heard")
        onset, silence = int(loud[0]), int(loud[-1]) + 1
        # Gaps inside the played span (underruns) would spoil the anchoring: count them.
        quiet = envelope(x[onset:silence]) <= threshold
        gaps = int(np.count_nonzero(np.diff(quiet.astype(np.int8)) == 1))
        played_s = (silence - onset) / RATE
        # Anchored at the sound's onset: the device latency (the same for the first and
        # the last sample) cancels, leaving what the library + interface add.
        after_ms = (played_s - (t_int - iface.first_play)) * 1000
        trials.append(
            {
                "after_interrupt_ms": after_ms,
                "absolute_ms": (cap.time_of(silence) - t_int) * 1000,
                "onset_latency_ms": (cap.time_of(onset) - iface.first_play) * 1000,
                "played_s": played_s,
                "gaps": gaps,
            }
        )
    return {"trials": trials, "after_interrupt_ms": [t["after_interrupt_ms"] for t in trials]}


def scenario_concurrent(ad: Adapter, tag: str, p: dict[str, Any]) -> dict[str, Any]:
    """``conversations`` sessions in this process, each streamed ``chunks`` audio chunks of
    ``chunk_bytes`` at ``rate`` chunks/s; per-chunk latency, RSS and threads."""
    import psutil

    n_conv, chunks = int(p["conversations"]), int(p["chunks"])
    rate, size = float(p["rate"]), int(p["chunk_bytes"])
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    threads0 = threading.active_count()
    sink: list[int] = []
    Recording = recording_interface(ad.AudioInterface)
    ifaces = [Recording(expected=chunks, sink=sink) for _ in range(n_conv)]
    convs = []
    t_start = time.monotonic()
    for i, iface in enumerate(ifaces):
        conv = ad.create("stream", f"{tag}:{i}", iface)
        ad.start(conv)
        convs.append(conv)
    start_s = time.monotonic() - t_start
    time.sleep(0.5)
    cpu0 = time.process_time()
    for conv in convs:
        ad.send(conv, f"go {chunks} {1 / rate} {size} {1 / rate}")
    deadline = time.monotonic() + chunks / rate + 60
    rss_max, threads_max = 0, 0
    while not all(i.done.is_set() for i in ifaces):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{sum(i.count for i in ifaces)} of {n_conv * chunks} chunks delivered"
            )
        rss_max = max(rss_max, proc.memory_info().rss)
        threads_max = max(threads_max, threading.active_count())
        time.sleep(0.25)
    cpu_s = time.process_time() - cpu0
    for conv in convs:
        ad.end(conv)
    return {
        "conversations": n_conv,
        "start_all_s": start_s,
        "latency_ms": [x / 1e6 for x in sink],
        "rss_mb": rss_max / 2**20,
        "rss_delta_mb": (rss_max - rss0) / 2**20,
        "threads": threads_max,
        "threads_before": threads0,
        "cpu_s": cpu_s,
    }


SCENARIOS: dict[str, Callable[[Adapter, str, dict[str, Any]], dict[str, Any]]] = {
    "end_session": scenario_end,
    "pong": scenario_pong,
    "stream": scenario_stream,
    "idle": scenario_idle,
    "tool": scenario_tool,
    "bargein": scenario_bargein,
    "concurrent": scenario_concurrent,
}


def import_elevenconv(tree: Path) -> Any:
    """Import ``elevenconv`` from the checkout ``tree`` (not from this one, which is first
    on sys.path), and check that it really came from there. ``tree`` leaves sys.path
    again afterwards: the package's own later imports go by its ``__path__``, and
    ``tests.fixtures_sound`` (barge-in) must still come from this tree."""
    tree = tree.resolve()
    if not (tree / "elevenconv" / "__init__.py").is_file():
        raise SystemExit(f"--elevenconv-path {tree}: no elevenconv package there")
    if "elevenconv" in sys.modules:
        raise RuntimeError("elevenconv was imported before --elevenconv-path applied")
    sys.path.insert(0, str(tree))
    try:
        import elevenconv
    finally:
        sys.path.remove(str(tree))  # the first occurrence: the one inserted above
    where = Path(elevenconv.__file__ or "").resolve()
    assert where.is_relative_to(tree), f"elevenconv imported from {where}, not under {tree}"
    return elevenconv


def main() -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark scenario in this process.")
    parser.add_argument("--lib", choices=sorted(ADAPTERS), required=True)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--params", default="{}")
    parser.add_argument(
        "--elevenconv-path",
        type=Path,
        help="the checkout whose elevenconv package to import (default: this one's)",
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if args.elevenconv_path is not None:
            import_elevenconv(args.elevenconv_path)
        adapter = ADAPTERS[args.lib](args.port)
        result = SCENARIOS[args.scenario](adapter, args.tag, json.loads(args.params))
        result.update(adapter.info())
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    # The official SDK may leave non-daemon threads behind; measurements are done.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
