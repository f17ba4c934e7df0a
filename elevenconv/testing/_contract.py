"""What the agent contract says messages look like, written as our own table-driven code.

The AsyncAPI document (``agent.asyncapi.yaml``) is the source of truth, but it is not shipped
and not read at runtime: the shapes below are a hand-written transcription that the test
suite (``tests/testing/test_contract.py``) cross-checks against the YAML, field by field.

Semantics follow the YAML read as JSON Schema 2020-12 with OpenAPI's ``nullable``:

* ``null`` is valid only where the contract says ``nullable`` (or allows ``null`` outright);
  optional and nullable are independent.
* ``integer`` accepts JSON integers (and floats with no fractional part, as JSON Schema does);
  ``number`` accepts integers too; ``bool`` is never a number.
* Unknown extra properties are allowed, except in the MCP tool-call variants, which the YAML
  closes with ``additionalProperties: false`` (read as "no fields beyond the variant's own").
* ``format`` (``base64``, ``date-time``) is an annotation only, as in JSON Schema by default.

Contract version: the YAML the project was started from plus the additions of
``@elevenlabs/types`` 0.22-0.23 (the official clients' generated types):
``multimodal_message.files`` and ``agent_response_event.attachments``. :data:`NEWER_THAN_YAML`
lists these paths so that the cross-check with an older YAML knows them.

One deliberate addition: the server's ``error`` message is also accepted under the type
``client_error`` (the newer name the live service uses), with the same shape. It is not in the
YAML, so the cross-check tests leave it out.

Thread-safety: everything here is immutable data and pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

__all__ = [
    "AUDIO_FORMATS",
    "CLIENT_MESSAGE_EXAMPLES",
    "CLIENT_MESSAGE_TYPES",
    "CLOSE_CODES",
    "CONTRACT_VERSION",
    "ERROR_TYPES",
    "MCP_TOOL_CALL_EXAMPLES",
    "NEWER_THAN_YAML",
    "SERVER_MESSAGE_EXAMPLES",
    "SERVER_MESSAGE_TYPES",
    "client_message_kind",
    "validate_client_message",
    "validate_server_message",
]

#: The version of the contract this code follows (the ``@elevenlabs/types`` release).
CONTRACT_VERSION: Final = "@elevenlabs/types 0.23"

#: Fields of contract 0.22-0.23 that an older ``agent.asyncapi.yaml`` does not name:
#: ``(message kind, path of the field)``.
NEWER_THAN_YAML: Final[frozenset[tuple[str, tuple[str, ...]]]] = frozenset(
    {
        ("agent_response", ("agent_response_event", "attachments")),
        ("multimodal_message", ("files",)),
    }
)

# ----------------------------------------------------------------------------------------
# The schema DSL

_Kind = Literal["string", "integer", "number", "boolean", "object", "array"]


class _NoConst:
    def __repr__(self) -> str:
        return "<no const>"


_NO_CONST: Final = _NoConst()


@dataclass(frozen=True)
class _Spec:
    """One value's shape. ``required`` is from the point of view of the enclosing object."""

    kind: _Kind
    required: bool = True
    nullable: bool = False
    enum: tuple[object, ...] = ()
    const: object = _NO_CONST
    minimum: float | None = None
    maximum: float | None = None
    min_items: int | None = None
    max_items: int | None = None
    items: _Spec | None = None
    fields: Mapping[str, _Spec] = field(default_factory=dict)
    closed: bool = False
    # Discriminated union (the YAML's oneOf): discriminator field -> {value: variant spec}.
    discriminator: str | None = None
    variants: Mapping[str, _Spec] = field(default_factory=dict)


def _string(
    *,
    optional: bool = False,
    nullable: bool = False,
    enum: Iterable[str] = (),
    const: object = _NO_CONST,
) -> _Spec:
    return _Spec("string", not optional, nullable, tuple(enum), const)


def _integer(*, optional: bool = False, nullable: bool = False, enum: Iterable[int] = ()) -> _Spec:
    return _Spec("integer", not optional, nullable, tuple(enum))


def _number(
    *,
    optional: bool = False,
    nullable: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> _Spec:
    return _Spec("number", not optional, nullable, minimum=minimum, maximum=maximum)


def _boolean(*, optional: bool = False, nullable: bool = False) -> _Spec:
    return _Spec("boolean", not optional, nullable)


def _array(
    items: _Spec,
    *,
    optional: bool = False,
    nullable: bool = False,
    min_items: int | None = None,
    max_items: int | None = None,
) -> _Spec:
    return _Spec(
        "array", not optional, nullable, items=items, min_items=min_items, max_items=max_items
    )


def _object(
    fields: Mapping[str, _Spec] | None = None,
    *,
    optional: bool = False,
    nullable: bool = False,
    closed: bool = False,
) -> _Spec:
    """An object; with no ``fields`` any object will do (free-form ``type: object``)."""
    return _Spec("object", not optional, nullable, fields=dict(fields or {}), closed=closed)


def _one_of(discriminator: str, variants: Mapping[str, _Spec]) -> _Spec:
    return _Spec("object", discriminator=discriminator, variants=dict(variants))


def _message(type_: str, body: Mapping[str, _Spec] | None = None) -> _Spec:
    """A typed message: ``{"type": <const>, **body}``."""
    return _object({"type": _string(const=type_), **(body or {})})


# ----------------------------------------------------------------------------------------
# Enumerations (the YAML's named enums)

AUDIO_FORMATS: Final[tuple[str, ...]] = (
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
)
"""``AudioFormat`` (agent output); ``UserInputAudioFormat`` lists the same values."""

CLOSE_CODES: Final[tuple[int, ...]] = (1000, 1002, 1008, 1011)
"""``WebSocketCloseCode``: the ``code`` of an ``error`` message's ``error_event``."""

ERROR_TYPES: Final[tuple[str, ...]] = (
    "unknown",
    "invalid_message",
    "telephony_agent_error",
    "mcp_tool_error",
    "mcp_https_error",
    "value_error",
    "missing_fields",
    "override_error",
    "missing_dynamic_variable_transfer",
    "missing_dynamic_variable",
    "websocket_disconnect",
    "safety_violation",
    "llm_timeout",
    "transport_receive_timeout",
    "asyncio_timeout",
    "http_exception",
    "max_duration_exceeded",
    "llm_error",
    "custom_llm_error",
    "cascade_brain_error",
    "asr_transcription_error",
    "vad_error",
    "turn_probability_error",
    "tts_cascade_error",
    "redis_timeout_error",
    "unknown_websocket_crash",
)
"""``ErrorType``: the (nullable) ``error_type`` of an ``error`` message's ``error_event``."""

# ``ClientEvent``: what a client may ask for in ``conversation.client_events``. Note that
# ``error`` is not in it (errors are always sent).
_CLIENT_EVENTS: Final[tuple[str, ...]] = (
    "audio",
    "agent_response",
    "agent_response_correction",
    "agent_chat_response_part",
    "agent_reasoning_response_part",
    "interruption",
    "user_transcript",
    "tentative_user_transcript",
    "conversation_initiation_metadata",
    "client_tool_call",
    "rich_content",
    "agent_tool_request",
    "agent_tool_response",
    "agent_tool_response_full_payload",
    "mcp_tool_call",
    "mcp_connection_status",
    "vad_score",
    "ping",
    "context_usage",
    "asr_initiation_metadata",
    "guardrail_triggered",
    "internal_turn_probability",
    "internal_tentative_agent_response",
    "agent_typing",
    "external_agent_connected",
    "external_agent_disconnected",
)

# ``Language`` (agent override ``language``).
_LANGUAGES: Final[tuple[str, ...]] = (
    "en", "ja", "zh", "de", "hi", "fr", "ko", "pt", "pt-br", "it", "es", "id", "nl", "tr", "pl",
    "sv", "bg", "ro", "ar", "cs", "el", "fi", "ms", "da", "ta", "uk", "ru", "hu", "hr", "sk",
    "no", "vi", "tl", "af", "hy", "as", "az", "be", "bn", "bs", "ca", "et", "gl", "ka", "gu",
    "ha", "he", "is", "ga", "jv", "kn", "kk", "ky", "lv", "lt", "lb", "mk", "ml", "mr", "ne",
    "ps", "fa", "pa", "sr", "sd", "sl", "so", "sw", "te", "th", "ur", "cy",
)  # fmt: skip

_PART_TYPES: Final = ("start", "delta", "stop")

# ----------------------------------------------------------------------------------------
# Server -> client messages (the YAML's ``publish`` operation)


def _mcp_variant(extra: Mapping[str, _Spec]) -> _Spec:
    # MCPToolCallBase + one state's fields; both halves say additionalProperties: false.
    base = {
        "service_id": _string(),
        "tool_call_id": _string(),
        "tool_name": _string(),
        "tool_description": _string(optional=True, nullable=True),
        "parameters": _object(),
        "timestamp": _string(),  # format: date-time (annotation only)
    }
    return _object({**base, **extra}, closed=True)


_ERROR_BODY: Final = {
    "error_event": _object(
        {
            "code": _integer(enum=CLOSE_CODES),
            "message": _string(optional=True),
            "error_type": _string(optional=True, nullable=True, enum=ERROR_TYPES),
            "reason": _string(optional=True, nullable=True),
            "debug_message": _string(optional=True, nullable=True),
            "details": _object(optional=True, nullable=True),
        }
    )
}

_TOOL_RESPONSE: Final = {
    "tool_name": _string(),
    "tool_call_id": _string(),
    "tool_type": _string(),
    "is_error": _boolean(),
    "is_called": _boolean(),
    "event_id": _integer(),
}

_SERVER_SPECS: Final[Mapping[str, _Spec]] = {
    "audio": _message(
        "audio",
        {
            "audio_event": _object(
                {
                    "audio_base_64": _string(),  # format: base64 (annotation only)
                    "event_id": _integer(),
                    "alignment": _object(
                        {
                            "chars": _array(_string()),
                            "char_start_times_ms": _array(_integer()),
                            "char_durations_ms": _array(_integer()),
                        },
                        optional=True,
                    ),
                }
            )
        },
    ),
    "user_transcript": _message(
        "user_transcript",
        {
            "user_transcription_event": _object(
                {"user_transcript": _string(), "event_id": _integer()}
            )
        },
    ),
    "tentative_user_transcript": _message(
        "tentative_user_transcript",
        {
            "tentative_user_transcription_event": _object(
                {"user_transcript": _string(), "event_id": _integer()}
            )
        },
    ),
    "agent_response": _message(
        "agent_response",
        {
            "agent_response_event": _object(
                {
                    "agent_response": _string(),
                    "event_id": _integer(),
                    # Contract 0.22+ (@elevenlabs/types); not in the older YAML.
                    "attachments": _array(
                        _object(
                            {
                                "url": _string(),
                                "name": _string(),
                                "mime_type": _string(optional=True, nullable=True),
                            }
                        ),
                        optional=True,
                    ),
                }
            )
        },
    ),
    "agent_response_correction": _message(
        "agent_response_correction",
        {
            "agent_response_correction_event": _object(
                {
                    "original_agent_response": _string(),
                    "corrected_agent_response": _string(),
                    "event_id": _integer(),
                }
            )
        },
    ),
    "agent_chat_response_part": _message(
        "agent_chat_response_part",
        {
            "text_response_part": _object(
                {"text": _string(), "type": _string(enum=_PART_TYPES), "event_id": _integer()}
            )
        },
    ),
    "agent_reasoning_response_part": _message(
        "agent_reasoning_response_part",
        {
            # Yes, a string event_id here, unlike every other event_id in the contract.
            "reasoning_response_part": _object(
                {"text": _string(), "type": _string(enum=_PART_TYPES), "event_id": _string()}
            )
        },
    ),
    "interruption": _message(
        "interruption", {"interruption_event": _object({"event_id": _integer()})}
    ),
    "conversation_initiation_metadata": _message(
        "conversation_initiation_metadata",
        {
            "conversation_initiation_metadata_event": _object(
                {
                    "conversation_id": _string(),
                    "agent_output_audio_format": _string(enum=AUDIO_FORMATS),
                    "user_input_audio_format": _string(enum=AUDIO_FORMATS),
                }
            )
        },
    ),
    "client_tool_call": _message(
        "client_tool_call",
        {
            "client_tool_call": _object(
                {
                    "tool_name": _string(),
                    "tool_call_id": _string(),
                    "parameters": _object(),
                    "event_id": _integer(),
                }
            )
        },
    ),
    "rich_content": _message(
        "rich_content",
        {
            "rich_content": _object(
                {
                    "rich_content_id": _string(),
                    "component": _string(),
                    "props": _object(),
                    "event_id": _integer(),
                }
            )
        },
    ),
    "agent_tool_request": _message(
        "agent_tool_request",
        {
            "agent_tool_request": _object(
                {
                    "tool_name": _string(),
                    "tool_call_id": _string(),
                    "tool_type": _string(),
                    "event_id": _integer(),
                }
            )
        },
    ),
    "agent_tool_response": _message(
        "agent_tool_response", {"agent_tool_response": _object(_TOOL_RESPONSE)}
    ),
    "agent_tool_response_full_payload": _message(
        "agent_tool_response_full_payload",
        {
            "agent_tool_response_full_payload": _object(
                {
                    **_TOOL_RESPONSE,
                    "is_blocked": _boolean(optional=True),  # only in the full-payload variant
                    "full_tool_result": _string(),
                    "truncated": _boolean(optional=True),
                }
            )
        },
    ),
    "mcp_tool_call": _message(
        "mcp_tool_call",
        {
            "mcp_tool_call": _one_of(
                "state",
                {
                    "loading": _mcp_variant({"state": _string(const="loading")}),
                    "awaiting_approval": _mcp_variant(
                        {
                            "state": _string(const="awaiting_approval"),
                            "approval_timeout_secs": _integer(),
                        }
                    ),
                    "success": _mcp_variant(
                        {"state": _string(const="success"), "result": _array(_object())}
                    ),
                    "failure": _mcp_variant(
                        {"state": _string(const="failure"), "error_message": _string()}
                    ),
                },
            )
        },
    ),
    "mcp_connection_status": _message(
        "mcp_connection_status",
        {
            "mcp_connection_status": _object(
                {
                    "integrations": _array(
                        _object(
                            {
                                "integration_id": _string(),
                                "integration_type": _string(enum=("mcp_server", "mcp_integration")),
                                "is_connected": _boolean(),
                                "tool_count": _integer(),
                            }
                        )
                    )
                }
            )
        },
    ),
    "vad_score": _message(
        "vad_score", {"vad_score_event": _object({"vad_score": _number(minimum=0, maximum=1)})}
    ),
    "ping": _message(
        "ping",
        {
            "ping_event": _object(
                {"event_id": _integer(), "ping_ms": _integer(optional=True, nullable=True)}
            )
        },
    ),
    "context_usage": _message(
        "context_usage",
        {
            "context_usage_event": _object(
                {
                    "event_id": _integer(),
                    "model": _string(),
                    "context_tokens": _integer(),
                    "context_limit_tokens": _integer(),
                }
            )
        },
    ),
    "asr_initiation_metadata": _message(
        "asr_initiation_metadata", {"asr_initiation_metadata_event": _object()}
    ),
    "guardrail_triggered": _message("guardrail_triggered"),
    "internal_turn_probability": _message(
        "internal_turn_probability",
        {
            "turn_probability_internal_event": _object(
                {"turn_probability": _number(minimum=0, maximum=1)}
            )
        },
    ),
    "internal_tentative_agent_response": _message(
        "internal_tentative_agent_response",
        {
            "tentative_agent_response_internal_event": _object(
                {"tentative_agent_response": _string()}
            )
        },
    ),
    "agent_typing": _message(
        "agent_typing",
        {
            "agent_typing_event": _object(
                {"is_typing": _boolean(), "duration_ms": _integer(optional=True, nullable=True)}
            )
        },
    ),
    "external_agent_connected": _message(
        "external_agent_connected", {"external_agent_connected_event": _object(optional=True)}
    ),
    "external_agent_disconnected": _message(
        "external_agent_disconnected",
        {"external_agent_disconnected_event": _object(optional=True)},
    ),
    "error": _message("error", _ERROR_BODY),
    # Not in the YAML: the newer name for ``error``, same shape.
    "client_error": _message("client_error", _ERROR_BODY),
}

# ----------------------------------------------------------------------------------------
# Client -> server messages (the YAML's ``subscribe`` operation)

_USER_MESSAGE_BODY: Final = {
    "text": _string(optional=True, nullable=True),
    "rich_content_id": _string(optional=True),
}

_CONVERSATION_CONFIG_OVERRIDE: Final = _object(
    {
        "agent": _object(
            {
                "first_message": _string(optional=True, nullable=True),
                "language": _string(optional=True, enum=_LANGUAGES),
                "prompt": _object(
                    {
                        "prompt": _string(optional=True, nullable=True),
                        "llm": _string(optional=True, nullable=True),
                    },
                    optional=True,
                ),
                "native_mcp_server_ids": _array(
                    _string(), optional=True, nullable=True, max_items=10
                ),
            },
            optional=True,
        ),
        "asr": _object(
            {"keywords": _array(_string(), optional=True, nullable=True)}, optional=True
        ),
        "tts": _object(
            {
                "voice_id": _string(optional=True, nullable=True),
                "stability": _number(optional=True, nullable=True, minimum=0, maximum=1),
                "speed": _number(optional=True, nullable=True, minimum=0.7, maximum=5),
                "similarity_boost": _number(optional=True, nullable=True, minimum=0, maximum=1),
            },
            optional=True,
        ),
        "conversation": _object(
            {
                "text_only": _boolean(optional=True, nullable=True),
                "client_events": _array(
                    _string(enum=_CLIENT_EVENTS), optional=True, nullable=True, min_items=1
                ),
            },
            optional=True,
        ),
    },
    optional=True,
)

_CLIENT_SPECS: Final[Mapping[str, _Spec]] = {
    # The one typeless message: detected by the presence of ``user_audio_chunk``.
    "user_audio_chunk": _object({"user_audio_chunk": _string()}),  # format: base64
    "pong": _message("pong", {"event_id": _integer()}),
    "user_message": _message("user_message", _USER_MESSAGE_BODY),
    "user_activity": _message("user_activity"),
    "feedback": _message(
        "feedback",
        # Required, but null clears the feedback.
        {"event_id": _integer(), "score": _string(nullable=True, enum=("like", "dislike"))},
    ),
    "client_tool_result": _message(
        "client_tool_result",
        {"tool_call_id": _string(), "result": _string(), "is_error": _boolean()},
    ),
    "mcp_tool_approval_result": _message(
        "mcp_tool_approval_result", {"tool_call_id": _string(), "is_approved": _boolean()}
    ),
    "contextual_update": _message(
        "contextual_update", {"text": _string(), "context_id": _string(optional=True)}
    ),
    "conversation_initiation_client_data": _message(
        "conversation_initiation_client_data",
        {
            "conversation_config_override": _CONVERSATION_CONFIG_OVERRIDE,
            "custom_llm_extra_body": _object(optional=True),
            "dynamic_variables": _object(optional=True),
            "user_id": _string(optional=True, nullable=True),
            "source_info": _object(
                {
                    "source": _string(optional=True, nullable=True),
                    "version": _string(optional=True, nullable=True),
                },
                optional=True,
            ),
            "tool_mock_config": _object(
                {
                    "mocking_strategy": _string(optional=True, enum=("none", "all", "selected")),
                    "mocked_tool_names": _array(_string(), optional=True),
                    "fallback_strategy": _string(
                        optional=True, enum=("raise_error", "call_real_tool")
                    ),
                },
                optional=True,
            ),
        },
    ),
    "multimodal_message": _message(
        "multimodal_message",
        {
            # The YAML types ``text`` as a whole (nullable) UserMessagePayload, not a string.
            "text": _object(
                {"type": _string(const="user_message"), **_USER_MESSAGE_BODY},
                optional=True,
                nullable=True,
            ),
            "file": _object(
                {"type": _string(const="file_input"), "file_id": _string()},
                optional=True,
                nullable=True,
            ),
            # Contract 0.22+ (@elevenlabs/types): every file; ``file`` repeats the first.
            "files": _array(
                _object({"type": _string(const="file_input"), "file_id": _string()}),
                optional=True,
            ),
        },
    ),
}

CLIENT_MESSAGE_TYPES: Final[frozenset[str]] = frozenset(_CLIENT_SPECS)
"""Every client message kind: the ``type`` values, plus ``"user_audio_chunk"`` (typeless)."""

SERVER_MESSAGE_TYPES: Final[frozenset[str]] = frozenset(_SERVER_SPECS)
"""Every server message ``type`` in the contract, plus the ``client_error`` alias of ``error``."""

# ----------------------------------------------------------------------------------------
# Validation


def _is_integer(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPE_CHECKS: Final[Mapping[_Kind, Callable[[object], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _json_equal(a: object, b: object) -> bool:
    # JSON equality: 1 == 1.0, but True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _check(spec: _Spec, value: object, path: str, out: list[str]) -> None:
    if value is None:
        if not spec.nullable:
            out.append(f"{path}: expected {spec.kind}, got null")
        return
    if not _TYPE_CHECKS[spec.kind](value):
        out.append(f"{path}: expected {spec.kind}, got {_type_name(value)}")
        return
    if spec.const is not _NO_CONST and not _json_equal(value, spec.const):
        out.append(f"{path}: expected {spec.const!r}, got {value!r}")
    if spec.enum and not any(_json_equal(value, e) for e in spec.enum):
        out.append(f"{path}: {value!r} is not one of {list(spec.enum)!r}")
    if isinstance(value, (int, float)):
        if spec.minimum is not None and value < spec.minimum:
            out.append(f"{path}: {value!r} is below the minimum {spec.minimum!r}")
        if spec.maximum is not None and value > spec.maximum:
            out.append(f"{path}: {value!r} is above the maximum {spec.maximum!r}")
    if isinstance(value, list):
        if spec.min_items is not None and len(value) < spec.min_items:
            out.append(f"{path}: needs at least {spec.min_items} item(s), got {len(value)}")
        if spec.max_items is not None and len(value) > spec.max_items:
            out.append(f"{path}: allows at most {spec.max_items} item(s), got {len(value)}")
        if spec.items is not None:
            for i, item in enumerate(value):
                _check(spec.items, item, f"{path}[{i}]", out)
    if isinstance(value, dict):
        if spec.discriminator is not None:
            _check_variant(spec, value, path, out)
            return
        for name, sub in spec.fields.items():
            if name in value:
                _check(sub, value[name], f"{path}.{name}", out)
            elif sub.required:
                out.append(f"{path}: missing required field {name!r}")
        if spec.closed:
            out.extend(
                f"{path}: unexpected field {name!r}" for name in value if name not in spec.fields
            )


def _check_variant(spec: _Spec, value: Mapping[str, object], path: str, out: list[str]) -> None:
    key = spec.discriminator
    assert key is not None
    tag = value.get(key)
    for tag_value, variant in spec.variants.items():
        if _json_equal(tag, tag_value):
            _check(variant, value, path, out)
            return
    if key not in value:
        out.append(f"{path}: missing required field {key!r}")
    else:
        out.append(f"{path}.{key}: {tag!r} is not one of {list(spec.variants)!r}")


def client_message_kind(msg: Mapping[str, Any]) -> str:
    """The kind of a client message: its ``type``, or ``"user_audio_chunk"`` for typeless audio.

    Raises ``ValueError`` when the message has neither a string ``type`` nor a
    ``user_audio_chunk`` (it is then no client message at all).
    """
    if "type" in msg:
        kind = msg["type"]
        if not isinstance(kind, str):
            raise ValueError(f"client message 'type' must be a string, got {_type_name(kind)}")
        return kind
    if "user_audio_chunk" in msg:
        return "user_audio_chunk"
    raise ValueError("client message has neither 'type' nor 'user_audio_chunk'")


def validate_client_message(msg: object) -> list[str]:
    """Check a decoded client -> server message against the contract.

    Returns ``[]`` when valid, else every violation found, one human-readable line each
    (``"client_tool_result.result: expected string, got int"``). Never raises.
    """
    if not isinstance(msg, dict):
        return [f"message: expected object, got {_type_name(msg)}"]
    try:
        kind = client_message_kind(msg)
    except ValueError as exc:
        return [f"message: {exc}"]
    spec = _CLIENT_SPECS.get(kind)
    if spec is None:
        return [f"type: unknown client message type {kind!r}"]
    out: list[str] = []
    _check(spec, msg, kind, out)
    return out


def validate_server_message(msg: object) -> list[str]:
    """Check a decoded server -> client message against the contract.

    Returns ``[]`` when valid, else every violation found, one human-readable line each.
    ``client_error`` is accepted as an alias of ``error``. Never raises.
    """
    if not isinstance(msg, dict):
        return [f"message: expected object, got {_type_name(msg)}"]
    if "type" not in msg:
        return ["message: missing required field 'type'"]
    kind = msg["type"]
    if not isinstance(kind, str):
        return [f"type: expected string, got {_type_name(kind)}"]
    spec = _SERVER_SPECS.get(kind)
    if spec is None:
        return [f"type: unknown server message type {kind!r}"]
    out: list[str] = []
    _check(spec, msg, kind, out)
    return out


# ----------------------------------------------------------------------------------------
# Examples: one complete, valid message per kind. Deep-copy before mutating.

_MCP_BASE: Final[dict[str, Any]] = {
    "service_id": "svc_1",
    "tool_call_id": "mcp_call_1",
    "tool_name": "search_docs",
    "tool_description": "Search the product documentation",
    "parameters": {"query": "refund policy"},
    "timestamp": "2025-01-01T12:00:00Z",
}

MCP_TOOL_CALL_EXAMPLES: Final[Mapping[str, dict[str, Any]]] = MappingProxyType(
    {
        "loading": {"type": "mcp_tool_call", "mcp_tool_call": {**_MCP_BASE, "state": "loading"}},
        "awaiting_approval": {
            "type": "mcp_tool_call",
            "mcp_tool_call": {
                **_MCP_BASE,
                "state": "awaiting_approval",
                "approval_timeout_secs": 300,
            },
        },
        "success": {
            "type": "mcp_tool_call",
            "mcp_tool_call": {
                **_MCP_BASE,
                "state": "success",
                "result": [{"type": "text", "text": "Refunds within 30 days."}],
            },
        },
        "failure": {
            "type": "mcp_tool_call",
            "mcp_tool_call": {**_MCP_BASE, "state": "failure", "error_message": "timed out"},
        },
    }
)
"""One ``mcp_tool_call`` server message per ``state`` variant."""

_ERROR_EVENT: Final[dict[str, Any]] = {
    "code": 1008,
    "message": "Missing required field",
    "error_type": "missing_fields",
    "reason": "invalid message",
    "debug_message": "field 'text' is required",
    "details": {"field": "text"},
}

_TOOL_RESPONSE_EXAMPLE: Final[dict[str, Any]] = {
    "tool_name": "get_weather",
    "tool_call_id": "call_1",
    "tool_type": "client",
    "is_error": False,
    "is_called": True,
    "event_id": 7,
}

SERVER_MESSAGE_EXAMPLES: Final[Mapping[str, dict[str, Any]]] = MappingProxyType(
    {
        "audio": {
            "type": "audio",
            "audio_event": {
                "audio_base_64": "AAAAAA==",
                "event_id": 1,
                "alignment": {
                    "chars": ["H", "i"],
                    "char_start_times_ms": [0, 80],
                    "char_durations_ms": [80, 90],
                },
            },
        },
        "user_transcript": {
            "type": "user_transcript",
            "user_transcription_event": {"user_transcript": "Hello there", "event_id": 2},
        },
        "tentative_user_transcript": {
            "type": "tentative_user_transcript",
            "tentative_user_transcription_event": {"user_transcript": "Hello th", "event_id": 2},
        },
        "agent_response": {
            "type": "agent_response",
            "agent_response_event": {
                "agent_response": "Hi! How can I help?",
                "event_id": 3,
                "attachments": [
                    {
                        "url": "https://example.com/files/report.pdf",
                        "name": "report.pdf",
                        "mime_type": "application/pdf",
                    }
                ],
            },
        },
        "agent_response_correction": {
            "type": "agent_response_correction",
            "agent_response_correction_event": {
                "original_agent_response": "Hi! How can I help you today?",
                "corrected_agent_response": "Hi! How can",
                "event_id": 3,
            },
        },
        "agent_chat_response_part": {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": "Hi", "type": "delta", "event_id": 4},
        },
        "agent_reasoning_response_part": {
            "type": "agent_reasoning_response_part",
            "reasoning_response_part": {"text": "Thinking", "type": "delta", "event_id": "4"},
        },
        "interruption": {"type": "interruption", "interruption_event": {"event_id": 3}},
        "conversation_initiation_metadata": {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "conv_123",
                "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000",
            },
        },
        "client_tool_call": {
            "type": "client_tool_call",
            "client_tool_call": {
                "tool_name": "get_weather",
                "tool_call_id": "call_1",
                "parameters": {"city": "Paris"},
                "event_id": 5,
            },
        },
        "rich_content": {
            "type": "rich_content",
            "rich_content": {
                "rich_content_id": "rc_1",
                "component": "item_card",
                "props": {"title": "Blue shirt"},
                "event_id": 6,
            },
        },
        "agent_tool_request": {
            "type": "agent_tool_request",
            "agent_tool_request": {
                "tool_name": "get_weather",
                "tool_call_id": "call_1",
                "tool_type": "client",
                "event_id": 5,
            },
        },
        "agent_tool_response": {
            "type": "agent_tool_response",
            "agent_tool_response": dict(_TOOL_RESPONSE_EXAMPLE),
        },
        "agent_tool_response_full_payload": {
            "type": "agent_tool_response_full_payload",
            "agent_tool_response_full_payload": {
                **_TOOL_RESPONSE_EXAMPLE,
                "is_blocked": False,
                "full_tool_result": '{"temperature": 21}',
                "truncated": False,
            },
        },
        "mcp_tool_call": MCP_TOOL_CALL_EXAMPLES["awaiting_approval"],
        "mcp_connection_status": {
            "type": "mcp_connection_status",
            "mcp_connection_status": {
                "integrations": [
                    {
                        "integration_id": "int_1",
                        "integration_type": "mcp_server",
                        "is_connected": True,
                        "tool_count": 3,
                    }
                ]
            },
        },
        "vad_score": {"type": "vad_score", "vad_score_event": {"vad_score": 0.5}},
        "ping": {"type": "ping", "ping_event": {"event_id": 8, "ping_ms": 42}},
        "context_usage": {
            "type": "context_usage",
            "context_usage_event": {
                "event_id": 9,
                "model": "gemini-2.0-flash",
                "context_tokens": 1200,
                "context_limit_tokens": 1000000,
            },
        },
        "asr_initiation_metadata": {
            "type": "asr_initiation_metadata",
            "asr_initiation_metadata_event": {"model": "scribe"},
        },
        "guardrail_triggered": {"type": "guardrail_triggered"},
        "internal_turn_probability": {
            "type": "internal_turn_probability",
            "turn_probability_internal_event": {"turn_probability": 0.25},
        },
        "internal_tentative_agent_response": {
            "type": "internal_tentative_agent_response",
            "tentative_agent_response_internal_event": {"tentative_agent_response": "Sure"},
        },
        "agent_typing": {
            "type": "agent_typing",
            "agent_typing_event": {"is_typing": True, "duration_ms": 1500},
        },
        "external_agent_connected": {
            "type": "external_agent_connected",
            "external_agent_connected_event": {},
        },
        "external_agent_disconnected": {
            "type": "external_agent_disconnected",
            "external_agent_disconnected_event": {},
        },
        "error": {"type": "error", "error_event": dict(_ERROR_EVENT)},
        "client_error": {"type": "client_error", "error_event": dict(_ERROR_EVENT)},
    }
)
"""One complete, valid server message per type in :data:`SERVER_MESSAGE_TYPES`."""

CLIENT_MESSAGE_EXAMPLES: Final[Mapping[str, dict[str, Any]]] = MappingProxyType(
    {
        "user_audio_chunk": {"user_audio_chunk": "AAAAAA=="},
        "pong": {"type": "pong", "event_id": 8},
        "user_message": {"type": "user_message", "text": "Hello", "rich_content_id": "rc_1"},
        "user_activity": {"type": "user_activity"},
        "feedback": {"type": "feedback", "event_id": 3, "score": "like"},
        "client_tool_result": {
            "type": "client_tool_result",
            "tool_call_id": "call_1",
            "result": "21 degrees",
            "is_error": False,
        },
        "mcp_tool_approval_result": {
            "type": "mcp_tool_approval_result",
            "tool_call_id": "mcp_call_1",
            "is_approved": True,
        },
        "contextual_update": {
            "type": "contextual_update",
            "text": "The user opened the pricing page",
            "context_id": "page",
        },
        "conversation_initiation_client_data": {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {
                "agent": {
                    "first_message": "Hello! How can I help?",
                    "language": "en",
                    "prompt": {"prompt": "You are a helpful agent.", "llm": "gpt-4o-mini"},
                    "native_mcp_server_ids": ["mcp_1"],
                },
                "asr": {"keywords": ["ElevenLabs"]},
                "tts": {
                    "voice_id": "voice_1",
                    "stability": 0.5,
                    "speed": 1.0,
                    "similarity_boost": 0.75,
                },
                "conversation": {
                    "text_only": False,
                    "client_events": ["audio", "agent_response", "interruption", "ping"],
                },
            },
            "custom_llm_extra_body": {"temperature": 0.2},
            "dynamic_variables": {"user_name": "Ada"},
            "user_id": "user_1",
            "source_info": {"source": "python_sdk", "version": "0.1.0"},
            "tool_mock_config": {
                "mocking_strategy": "selected",
                "mocked_tool_names": ["get_weather"],
                "fallback_strategy": "raise_error",
            },
        },
        "multimodal_message": {
            "type": "multimodal_message",
            "text": {
                "type": "user_message",
                "text": "What is in this file?",
                "rich_content_id": "rc_2",
            },
            "file": {"type": "file_input", "file_id": "file_1"},
            "files": [
                {"type": "file_input", "file_id": "file_1"},
                {"type": "file_input", "file_id": "file_2"},
            ],
        },
    }
)
"""One complete, valid client message per kind in :data:`CLIENT_MESSAGE_TYPES`."""
