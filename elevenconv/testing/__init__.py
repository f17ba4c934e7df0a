"""Test helpers for applications built on elevenconv.

* :class:`FakeWebSocket` -- an in-memory socket to pass as ``websocket_factory``: push
  server messages, read what the client sent, close from the server side. No network.
* :class:`AgentSimulator` -- a protocol-faithful agent on a real loopback WebSocket
  server, with scripted mode (:class:`Step`), fault injection (:class:`Faults`) and a
  recorded transcript (needs the ``testing`` extra: ``pip install "elevenconv[testing]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from elevenconv.testing._fake import FakeWebSocket

if TYPE_CHECKING:
    from elevenconv.testing._simulator import (
        CONTRACT_DEFAULT_CLIENT_EVENTS,
        SIM_CLIENT_EVENTS,
        AgentConfig,
        AgentSimulator,
        Faults,
        SimSession,
        SimulatorError,
        Step,
        ToolRule,
        TranscriptEntry,
    )

__all__ = [
    "CONTRACT_DEFAULT_CLIENT_EVENTS",
    "SIM_CLIENT_EVENTS",
    "AgentConfig",
    "AgentSimulator",
    "FakeWebSocket",
    "Faults",
    "SimSession",
    "SimulatorError",
    "Step",
    "ToolRule",
    "TranscriptEntry",
]

_SIMULATOR_NAMES = frozenset(__all__) - {"FakeWebSocket"}


def __getattr__(name: str) -> Any:
    # The simulator needs the optional ``websockets`` package: import it on first use only.
    if name in _SIMULATOR_NAMES:
        from elevenconv.testing import _simulator

        return getattr(_simulator, name)
    raise AttributeError(f"module 'elevenconv.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too: dir(), pdoc and IDE completion see the whole public API.
    return sorted({*globals(), *__all__})
