"""Script steps and fault options of the :class:`~elevenconv.testing.AgentSimulator`.

Pure data: a :class:`Step` says *what* the simulated server does next; the runner in
:mod:`elevenconv.testing._sim_script` does it on the connection's handler thread. A
:class:`Faults` bundles the simple per-agent / per-simulator fault options of the default
agent. Nothing here touches sockets or threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from elevenconv.errors import ConfigurationError

if TYPE_CHECKING:
    from elevenconv.testing._sim_session import SimSession

__all__ = ["DEFAULT_IGNORED", "MIB", "Faults", "MessageMatch", "Step"]

#: One mebibyte.
MIB = 1024 * 1024

#: Client message kinds ``Step.expect`` skips by default: they arrive on their own schedule
#: (keepalive answers, microphone audio, typing signals), not in reply to the script.
DEFAULT_IGNORED: tuple[str, ...] = ("pong", "user_audio_chunk", "user_activity")

#: What ``Step.expect`` / ``Step.wait_for`` match: a message kind (``"user_message"``,
#: ``"user_audio_chunk"`` for typeless audio) or a predicate over the decoded message.
MessageMatch = str | Callable[[Any], bool]

# Step kinds that read from the socket: allowed in scripts only, not in fault lists (those
# run on the agent thread, which never reads).
_READING_KINDS = frozenset({"expect", "wait_for"})


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a simulator script. Build steps with the class methods, never directly.

    Fields:
        kind: the step's name (``"send"``, ``"expect"``, ``"close"``, ...).
        args: its arguments, read-only.

    A script is a list of steps run in order, per connection, on the connection's handler
    thread. A step that fails (an ``expect`` that times out or sees the wrong message, an
    invalid ``send``) ends the script: the failure is recorded in
    ``AgentSimulator.errors`` and the connection is closed with 1011.
    """

    kind: str
    args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in self.args.items())
        return f"Step.{self.kind}({shown})"

    @staticmethod
    def _make(kind: str, **args: Any) -> Step:
        return Step(kind, MappingProxyType(dict(args)))

    # -- messages ------------------------------------------------------------------------

    @staticmethod
    def send(message: Mapping[str, Any] | str | bytes, *, validate: bool = True) -> Step:
        """Send ``message``: a dict as JSON text, a ``str`` verbatim, ``bytes`` as binary.

        A dict is checked against the contract first (unless ``validate=False``); an
        invalid one fails the script instead of being sent.
        """
        if isinstance(message, Mapping):
            message = dict(message)
        return Step._make("send", message=message, validate=validate)

    @staticmethod
    def metadata(
        *,
        conversation_id: str | None = None,
        output_format: str | None = None,
        input_format: str | None = None,
    ) -> Step:
        """Send ``conversation_initiation_metadata`` (defaults: the session's id and the
        agent's formats).

        A script containing this step does the handshake itself: the simulator then does
        not wait for ``conversation_initiation_client_data`` nor send metadata on its own.
        """
        return Step._make(
            "metadata",
            conversation_id=conversation_id,
            output_format=output_format,
            input_format=input_format,
        )

    @staticmethod
    def say(
        text: str,
        *,
        audio: bool | None = None,
        attachments: Iterable[Mapping[str, Any]] | None = None,
    ) -> Step:
        """Speak ``text`` at once (not paced): ``agent_response`` plus audio chunks in voice
        mode, or streamed ``agent_chat_response_part`` messages then ``agent_response`` in
        text-only mode. ``audio`` forces voice (``True``) or text (``False``).
        ``attachments``: ``{"url", "name", "mime_type"?}`` dicts the reply carries."""
        items = None if attachments is None else tuple(dict(a) for a in attachments)
        return Step._make("say", text=text, audio=audio, attachments=items)

    @staticmethod
    def emit(message_type: str, **fields: Any) -> Step:
        """Send a valid ``message_type`` message (any server type), built from the
        contract's example with a fresh event id; ``fields`` replace fields of its event
        object, e.g. ``Step.emit("context_usage", context_tokens=900)`` or
        ``Step.emit("mcp_tool_call", state="awaiting_approval", tool_name="refund")``.

        Unlike :meth:`send`, it honours the agent's ``client_events`` (a type they leave
        out is not sent). Raises :class:`ConfigurationError` for an unknown type or field.
        """
        from elevenconv.testing._sim_messages import server_message

        server_message(message_type, lambda: 1, **fields)  # fail now, not mid-script
        return Step._make("emit", message_type=message_type, fields=dict(fields))

    @staticmethod
    def ping() -> Step:
        """Send a ``ping`` with the next event id (the ``pong`` is recorded as usual)."""
        return Step._make("ping")

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def expect(
        match: MessageMatch,
        timeout: float = 5.0,
        *,
        ignore: Iterable[str] = DEFAULT_IGNORED,
    ) -> Step:
        """The next client message (skipping kinds in ``ignore``) must match.

        ``match`` is a kind (``"client_tool_result"``) or a predicate over the decoded
        message. Fails on a different message or after ``timeout`` seconds.
        """
        return Step._make("expect", match=match, timeout=timeout, ignore=tuple(ignore))

    @staticmethod
    def wait_for(match: MessageMatch, timeout: float = 5.0) -> Step:
        """Skip client messages until one matches ``match``; fail after ``timeout`` seconds."""
        return Step._make("wait_for", match=match, timeout=timeout)

    # -- connection ----------------------------------------------------------------------

    @staticmethod
    def close(code: int = 1000, reason: str = "") -> Step:
        """Close the WebSocket with ``code`` and ``reason`` (a proper close frame)."""
        return Step._make("close", code=code, reason=reason)

    @staticmethod
    def drop(*, reset: bool = False) -> Step:
        """Drop the TCP connection without a close frame (``reset=True``: send a RST)."""
        return Step._make("drop", reset=reset)

    @staticmethod
    def sleep(seconds: float) -> Step:
        """Pause the script (interrupted when the simulator closes)."""
        return Step._make("sleep", seconds=seconds)

    @staticmethod
    def call(fn: Callable[[SimSession], None]) -> Step:
        """Run ``fn(session)`` on the handler thread: an escape hatch for anything else."""
        return Step._make("call", fn=fn)

    # -- faults --------------------------------------------------------------------------

    @staticmethod
    def malformed(text: str = '{"type": "agent_response", "agent_response_event": ') -> Step:
        """Send a text frame that is not JSON."""
        return Step._make("send", message=text, validate=False)

    @staticmethod
    def binary(data: bytes = b"\x00\x01 not a protocol frame \xff") -> Step:
        """Send a binary frame (the protocol uses text frames only)."""
        return Step._make("send", message=bytes(data), validate=False)

    @staticmethod
    def unknown_type(type_: str = "simulator_unknown_event") -> Step:
        """Send a well-formed message of a type the contract does not know."""
        msg = {"type": type_, f"{type_}_event": {"event_id": 1, "note": "injected by simulator"}}
        return Step._make("send", message=msg, validate=False)

    @staticmethod
    def bad_message(variant: str = "missing_fields") -> Step:
        """Send a known message type with broken fields.

        ``variant``: ``"missing_fields"`` (an ``agent_response`` without its text and event
        id) or ``"wrong_types"`` (an ``audio`` event whose fields have the wrong types).
        """
        if variant == "missing_fields":
            msg: dict[str, Any] = {"type": "agent_response", "agent_response_event": {}}
        elif variant == "wrong_types":
            msg = {"type": "audio", "audio_event": {"audio_base_64": 12345, "event_id": "one"}}
        else:
            raise ConfigurationError(
                f"unknown bad_message variant {variant!r}: use 'missing_fields' or 'wrong_types'"
            )
        return Step._make("send", message=msg, validate=False)

    @staticmethod
    def huge_audio(size: int = 2 * MIB) -> Step:
        """Send one valid ``audio`` message carrying ``size`` bytes of audio (a tone)."""
        return Step._make("huge_audio", size=size)

    @staticmethod
    def huge_text(size: int = 20_000_000) -> Step:
        """Send one valid ``agent_response`` whose text is ``size`` characters long."""
        return Step._make("huge_text", size=size)


@dataclass(frozen=True)
class Faults:
    """Simple fault options for the default agent (per agent, or for the whole simulator).

    Fields:
        metadata_delay: seconds to wait before sending ``conversation_initiation_metadata``.
        send_metadata: ``False`` never sends it (the client's start should time out); the
            connection stays open and client messages are still recorded.
        response_delay: seconds to wait before each reply to the user (a slow LLM).
        after_metadata: steps run right after the metadata, before the first message.
        after_first_message: steps run once the first message has been sent (and spoken).
        on_user_message: steps run *instead of* the reply to the first user message
            (typed or transcribed).

    The step lists may use any :class:`Step` that does not read (``send``, ``close``,
    ``drop``, ``sleep``, ``malformed``, ``binary``, ``huge_*``, ...); they run on the
    connection's agent thread.
    """

    metadata_delay: float = 0.0
    send_metadata: bool = True
    response_delay: float = 0.0
    after_metadata: tuple[Step, ...] = ()
    after_first_message: tuple[Step, ...] = ()
    on_user_message: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        for name in ("after_metadata", "after_first_message", "on_user_message"):
            steps = tuple(getattr(self, name))
            object.__setattr__(self, name, steps)
            for step in steps:
                if not isinstance(step, Step):
                    raise ConfigurationError(f"Faults.{name}: expected Step, got {step!r}")
                if step.kind in _READING_KINDS or step.kind == "metadata":
                    raise ConfigurationError(
                        f"Faults.{name}: {step!r} cannot run outside a script; "
                        "use AgentSimulator(script=[...]) for steps that read"
                    )
        for name in ("metadata_delay", "response_delay"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"Faults.{name} must be >= 0")

    @staticmethod
    def coerce(value: Faults | Mapping[str, Any] | None) -> Faults | None:
        """Accept a :class:`Faults`, a dict of its fields, or ``None``."""
        if value is None or isinstance(value, Faults):
            return value
        return Faults(**dict(value))


def script_takes_handshake(steps: Iterable[Step]) -> bool:
    """``True`` if a script does the init/metadata exchange itself (see :meth:`Step.metadata`)."""
    steps = list(steps)
    if any(step.kind == "metadata" for step in steps):
        return True
    if steps and steps[0].kind in ("expect", "wait_for"):
        return steps[0].args.get("match") == "conversation_initiation_client_data"
    return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
