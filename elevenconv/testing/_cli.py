"""The ``elevenconv simulate`` command: an :class:`AgentSimulator` for other programs.

``elevenconv.cli`` builds the ``simulate`` subparser and calls exactly these two::

    add_simulate_arguments(parser)      # the options below
    run_simulate(args) -> int           # serve until SIGTERM / SIGINT, then exit 0

For a front-end team::

    elevenconv simulate --port 8765 --agent support:private --api-key dev-key \\
        --record transcript.json

serves the public ``sim-agent`` and the private ``support`` agent; a page on another origin
fetches ``/v1/convai/conversation/get-signed-url`` (header ``xi-api-key: dev-key``) or
``/v1/convai/conversation/token`` (CORS allowed, preflight answered) and connects. On
SIGTERM or Ctrl+C the simulator closes every connection (1001), stops its threads and
writes the transcript of both directions to ``transcript.json``.

``--script FILE`` replaces the default agent with scripted steps, a JSON list run on every
connection (after the init/metadata exchange unless the script has a ``metadata`` step).
Each item is ``{"<step>": <argument>}`` or ``{"<step>": {<keyword arguments>}}``, where
``<step>`` is a :class:`~elevenconv.testing.Step` method::

    [
      {"expect": "user_message"},
      {"say": "Hello from the script"},
      {"emit": "guardrail_triggered"},
      {"emit": {"message_type": "context_usage", "context_tokens": 900}},
      {"say": {"text": "Here", "attachments": [{"url": "https://x/a.pdf", "name": "a.pdf"}]}},
      {"expect": {"match": "user_message", "timeout": 30}},
      {"close": {"code": 1000, "reason": "bye"}}
    ]

``emit`` sends any server message type (valid, from the contract's example, honouring the
agent's ``client_events``); ``send`` sends exactly the message given.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from elevenconv.errors import ConfigurationError

__all__ = ["SCRIPT_STEPS", "add_simulate_arguments", "load_script", "run_simulate"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_API_KEY = "sim-api-key"

#: Step methods a ``--script`` file may use (``call`` needs Python, so it is not here).
SCRIPT_STEPS: frozenset[str] = frozenset(
    {
        "send",
        "metadata",
        "say",
        "ping",
        "expect",
        "wait_for",
        "close",
        "drop",
        "sleep",
        "malformed",
        "binary",
        "unknown_type",
        "bad_message",
        "huge_audio",
        "huge_text",
        "emit",
    }
)

_SECRET_QUERY = re.compile(r"(conversation_signature|token)=[^&]*")


def _agent_spec(value: str) -> tuple[str, bool]:
    agent_id, sep, flag = value.partition(":")
    if not agent_id or (sep and flag not in ("private", "public")):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use ID or ID:private (e.g. --agent support:private)"
        )
    return agent_id, flag == "private"


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 0")
    return number


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535)")
    return port


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser`` (the ``simulate`` subparser)."""
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8765, help="port (default 8765; 0: any free port)"
    )
    parser.add_argument(
        "--agent",
        dest="agents",
        metavar="ID[:private]",
        type=_agent_spec,
        action="append",
        default=[],
        help="serve this agent too (repeatable); ':private' needs a signed URL, a "
        "conversation token or the API key. The public sim-agent is always served.",
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help=f"the key get-signed-url and private agents accept (default {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--script",
        type=Path,
        metavar="FILE",
        help="run these JSON steps on every connection instead of the default agent",
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="on exit, write the transcript of both directions (and HTTP requests, "
        "violations, errors) to FILE as JSON",
    )
    parser.add_argument(
        "--realtime-factor",
        type=_non_negative,
        default=1.0,
        help="audio pace, 1 = real time (0: as fast as possible)",
    )
    parser.add_argument(
        "--tts",
        choices=("auto", "espeak", "tone"),
        default="auto",
        help="its voice: espeak-ng when installed (auto), or a synthetic tone voice",
    )
    parser.add_argument(
        "--ping-interval",
        type=_non_negative,
        default=5.0,
        help="seconds between pings (0: none)",
    )
    parser.add_argument(
        "--signed-url-ttl",
        type=_non_negative,
        default=900.0,
        help="seconds a signed URL or conversation token stays valid (default 900)",
    )
    parser.add_argument(
        "--fail-on-violations",
        action="store_true",
        help="exit with status 1 if a client broke the contract",
    )


def load_script(path: Path) -> list[Any]:
    """Read a ``--script`` file into :class:`~elevenconv.testing.Step` objects.

    Raises :class:`~elevenconv.errors.ConfigurationError` naming the item at fault.
    """
    from elevenconv.testing._sim_steps import Step

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read script {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigurationError(f"script {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "steps" in data:
        data = data["steps"]
    if not isinstance(data, list):
        raise ConfigurationError(f"script {path}: expected a JSON list of steps")
    steps: list[Step] = []
    for index, item in enumerate(data):
        where = f"script {path}, step {index + 1}"
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigurationError(f'{where}: expected {{"<step>": <arguments>}}, got {item!r}')
        ((name, value),) = item.items()
        if name not in SCRIPT_STEPS:
            raise ConfigurationError(
                f"{where}: unknown step {name!r}; use one of {', '.join(sorted(SCRIPT_STEPS))}"
            )
        method: Callable[..., Step] = getattr(Step, name)
        if name == "binary" and isinstance(value, str):
            value = value.encode()
        try:
            if value is None:
                steps.append(method())
            elif isinstance(value, dict) and (name != "send" or "message" in value):
                steps.append(method(**value))  # keyword arguments
            else:
                steps.append(method(value))  # the first argument (a send's message)
        except (TypeError, ValueError, ConfigurationError) as exc:
            raise ConfigurationError(f"{where} ({name}): {exc}") from None
    return steps


def _redact(path: str) -> str:
    return _SECRET_QUERY.sub(lambda m: m.group(1) + "=<redacted>", path)


def _jsonable(message: Any) -> Any:
    if isinstance(message, bytes):
        return {"binary_frame_hex": message.hex()}
    return message


def _record(sim: Any, path: Path) -> None:
    """Write what the simulator saw to ``path`` as JSON (secrets in URLs redacted)."""
    transcript = sim.transcript
    started = min((e.t for e in transcript), default=0.0)
    data = {
        "sessions": [
            {
                "index": s.index,
                "agent_id": s.agent_id,
                "conversation_id": s.conversation_id,
                "source": s.source,
                "version": s.version,
                "signed": s.signed,
                "bearer": s.bearer,
                "subprotocol": s.subprotocol,
                "close_code": s.close_code,
                "close_reason": s.close_reason,
                "closed_by": s.closed_by,
            }
            for s in sim.sessions
        ],
        "transcript": [
            {
                "t": round(e.t - started, 6),
                "session": e.session,
                "conversation_id": e.conversation_id,
                "direction": e.direction,
                "kind": e.kind,
                "message": _jsonable(e.message),
            }
            for e in transcript
        ],
        "http_requests": [{"path": _redact(r.path), "status": r.status} for r in sim.http_requests],
        "violations": [
            {
                "conversation_id": v.conversation_id,
                "message": _jsonable(v.message),
                "problems": list(v.problems),
            }
            for v in sim.violations
        ],
        "errors": sim.errors + sim.contract_errors,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_simulate(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; then close, write ``--record``, and return the exit
    status (0; 1 with ``--fail-on-violations`` after a violation; 2 for a bad script,
    a port in use or a missing dependency)."""
    try:
        from elevenconv.testing._simulator import DEFAULT_AGENT_ID, AgentSimulator
    except ImportError as exc:  # websockets is missing on a bare install
        print(
            f"elevenconv simulate: {exc}; install it with: pip install 'elevenconv[testing]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        script = load_script(args.script) if args.script is not None else None
        sim = AgentSimulator(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            script=script,
            ping_interval=args.ping_interval or None,
            audio_realtime_factor=args.realtime_factor or None,
            tts=args.tts,
            signed_url_ttl=args.signed_url_ttl,
            strict=False,
        )
        for agent_id, private in args.agents:
            sim.add_agent(agent_id, private=private)
    except ConfigurationError as exc:
        print(f"elevenconv simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    with _StopSignals(signal.SIGINT, signal.SIGTERM) as stop:
        try:
            sim.start()
        except OSError as exc:
            print(
                f"elevenconv simulate: cannot listen on {args.host}:{args.port}: "
                f"{exc.strerror or exc}; choose another --port (0: any free port)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        _banner(sim, args, DEFAULT_AGENT_ID)
        signum = stop.wait()
        logger.info("signal %d: stopping the simulator", signum)
    return _shutdown(sim, args)


class _StopSignals:
    """Wait in the main thread until one of ``signals`` arrives; restore the old handlers.

    The wait is on :func:`signal.set_wakeup_fd`'s socket, which the C-level handler
    writes to in whichever thread the kernel chose. A Python handler setting an Event
    is not enough: it runs only in the main thread, at its next bytecode, so a signal
    taken by another thread (or arriving just as the main thread starts to block) left
    the main thread waiting forever -- a simulator that ignored SIGINT and SIGTERM.
    """

    def __init__(self, *signals: signal.Signals) -> None:
        self._signals = signals
        self._previous: dict[signal.Signals, Any] = {}
        self._old_fd = -1
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # the C handler must never block

    def __enter__(self) -> _StopSignals:
        self._old_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    @staticmethod
    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        pass  # replaces KeyboardInterrupt; the wake-up socket carries the signal to wait()

    def wait(self) -> int:
        """Block until a signal arrives; return its number."""
        while True:
            data = self._reader.recv(64)
            for byte in data:
                if byte in self._signals:
                    return byte

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_fd)
        self._reader.close()
        self._writer.close()


def _banner(sim: Any, args: argparse.Namespace, default_agent: str) -> None:
    key = args.api_key if args.api_key == DEFAULT_API_KEY else "(the --api-key given)"
    agents = [f"{default_agent} (public)"] + [
        f"{agent_id} ({'private' if private else 'public'})" for agent_id, private in args.agents
    ]
    print(
        f"elevenconv agent simulator listening on {sim.base_url}\n"
        f"  agents: {', '.join(agents)}\n"
        f"  api key: {key}\n"
        f"  websocket: {sim.ws_url()}\n"
        f"  signed URL: GET {sim.base_url}/v1/convai/conversation/get-signed-url?agent_id=ID"
        " (header xi-api-key)\n"
        f"  token: GET {sim.base_url}/v1/convai/conversation/token?agent_id=ID\n"
        + (f"  script: {args.script}\n" if args.script is not None else "")
        + "  Ctrl-C (or SIGTERM) to stop",
        flush=True,
    )


def _shutdown(sim: Any, args: argparse.Namespace) -> int:
    status = EXIT_OK
    try:
        sim.close(raise_errors=False)
    except Exception as exc:  # a thread that would not stop: say so, still record
        print(f"elevenconv simulate: {exc}", file=sys.stderr)
        status = EXIT_FAILED
    violations = sim.violations
    problems: Sequence[str] = sim.errors + sim.contract_errors
    for line in problems:
        print(f"elevenconv simulate: {line}", file=sys.stderr)
    for violation in violations:
        print(
            f"elevenconv simulate: client message broke the contract "
            f"({violation.conversation_id}): {'; '.join(violation.problems)}",
            file=sys.stderr,
        )
    if args.record is not None:
        try:
            _record(sim, args.record)
        except OSError as exc:
            print(
                f"elevenconv simulate: cannot write {args.record}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            status = EXIT_FAILED
    print(
        f"[simulator stopped: {len(sim.sessions)} session(s), "
        f"{len(violations)} contract violation(s)]",
        flush=True,
    )
    if violations and args.fail_on_violations:
        return EXIT_FAILED
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m elevenconv.testing._cli``: the same as ``elevenconv simulate``."""
    parser = argparse.ArgumentParser(
        prog="elevenconv simulate", description="Run the elevenconv agent simulator."
    )
    add_simulate_arguments(parser)
    return run_simulate(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
