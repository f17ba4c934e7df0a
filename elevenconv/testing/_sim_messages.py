"""Builders of valid server messages of every type, for scripts (``Step.emit``) and the
default agent's rules.

Each message starts from the contract's example of its type
(:data:`~elevenconv.testing._contract.SERVER_MESSAGE_EXAMPLES`, one per
``mcp_tool_call`` state) with a fresh event id; keyword arguments replace fields of the
message's event object (``agent_response_event``, ``mcp_tool_call``, ...). The simulator
validates what is sent, so a wrong field fails loudly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from elevenconv.errors import ConfigurationError
from elevenconv.testing._contract import MCP_TOOL_CALL_EXAMPLES, SERVER_MESSAGE_EXAMPLES

__all__ = ["attachment", "server_message"]


def _event_key(message: Mapping[str, Any]) -> str | None:
    """The key of the message's event object (``None`` for messages without one)."""
    keys = [k for k in message if k != "type"]
    return keys[0] if len(keys) == 1 and isinstance(message[keys[0]], dict) else None


def server_message(
    message_type: str, next_event_id: Callable[[], int], **fields: Any
) -> dict[str, Any]:
    """A valid ``message_type`` message; ``fields`` replace fields of its event object.

    ``mcp_tool_call`` takes ``state`` (``loading``, ``awaiting_approval``, ``success``,
    ``failure``) to pick the variant. Integer ``event_id`` s are fresh unless given.
    Raises :class:`~elevenconv.errors.ConfigurationError` for an unknown type or field.
    """
    if message_type == "mcp_tool_call":
        state = fields.get("state", "awaiting_approval")
        if state not in MCP_TOOL_CALL_EXAMPLES:
            raise ConfigurationError(
                f"mcp_tool_call state {state!r}: use one of {', '.join(MCP_TOOL_CALL_EXAMPLES)}"
            )
        template: Mapping[str, Any] = MCP_TOOL_CALL_EXAMPLES[state]
    elif message_type in SERVER_MESSAGE_EXAMPLES:
        template = SERVER_MESSAGE_EXAMPLES[message_type]
    else:
        raise ConfigurationError(
            f"unknown server message type {message_type!r}; use one of "
            + ", ".join(sorted(SERVER_MESSAGE_EXAMPLES))
        )
    message = copy.deepcopy(dict(template))
    key = _event_key(message)
    if key is None:
        if fields:
            raise ConfigurationError(f"{message_type} has no fields to set: {sorted(fields)}")
        return message
    event = message[key]
    if isinstance(event.get("event_id"), int) and "event_id" not in fields:
        event["event_id"] = next_event_id()
    if message_type == "mcp_tool_call" and "timestamp" not in fields:
        event["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if message_type == "agent_response" and "attachments" not in fields:
        event.pop("attachments", None)  # the example has one; a plain reply has none
    for name, value in fields.items():
        if name not in event and not _optional_field(message_type, name):
            raise ConfigurationError(
                f"{message_type}.{key} has no field {name!r}; it has {', '.join(sorted(event))}"
            )
        event[name] = value
    return message


_OPTIONAL: Mapping[str, frozenset[str]] = {
    "agent_response": frozenset({"attachments"}),
    "mcp_tool_call": frozenset(
        {"tool_description", "approval_timeout_secs", "result", "error_message"}
    ),
    "ping": frozenset({"ping_ms"}),
    "audio": frozenset({"alignment"}),
    "client_tool_call": frozenset({"expects_response"}),
    "agent_typing": frozenset({"duration_ms"}),
}


def _optional_field(message_type: str, name: str) -> bool:
    return name in _OPTIONAL.get(message_type, frozenset())


def attachment(url: str, name: str, mime_type: str | None = None) -> dict[str, Any]:
    """One ``agent_response_event.attachments`` item."""
    item: dict[str, Any] = {"url": url, "name": name}
    if mime_type is not None:
        item["mime_type"] = mime_type
    return item


def attachments(items: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Copy an attachments list (``None`` stays ``None``)."""
    return None if items is None else [dict(i) for i in items]
