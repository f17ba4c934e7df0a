"""elevenconv: a threaded, synchronous client for ElevenLabs Agents conversations.

Quick start (text chat with a public agent)::

    from elevenconv import Conversation

    with Conversation(agent_id="...", requires_auth=False,
                      callback_agent_response=print) as conv:
        conv.send_user_message("Hello!")
        conv.wait_for_session_end()

Names keep those of the official SDKs (snake_case), so code ports by changing imports.
``DefaultAudioInterface`` (PyAudio) is imported lazily: ``import elevenconv`` works
without the ``audio`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from elevenconv._audio import AudioInterface
from elevenconv._client import ElevenLabsClient
from elevenconv._conversation import Conversation, ConversationEvent
from elevenconv._fileaudio import WavFileAudioInterface
from elevenconv._tools import ClientTools
from elevenconv._version import __version__
from elevenconv.errors import (
    AuthenticationError,
    ElevenConvError,
    ProtocolError,
    SessionNotActiveError,
)
from elevenconv.protocol import ConversationInitiationData

if TYPE_CHECKING:
    from elevenconv._pyaudio_interface import DefaultAudioInterface, create_default_audio_interface

__all__ = [
    "AudioInterface",
    "AuthenticationError",
    "ClientTools",
    "Conversation",
    "ConversationEvent",
    "ConversationInitiationData",
    "DefaultAudioInterface",
    "ElevenConvError",
    "ElevenLabsClient",
    "ProtocolError",
    "SessionNotActiveError",
    "WavFileAudioInterface",
    "__version__",
    "create_default_audio_interface",
]


def __getattr__(name: str) -> Any:
    # PyAudio is optional: the module that needs it is imported on first use only.
    if name in ("DefaultAudioInterface", "create_default_audio_interface"):
        from elevenconv import _pyaudio_interface

        return getattr(_pyaudio_interface, name)
    raise AttributeError(f"module 'elevenconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too: dir(), pdoc and IDE completion see the whole public API.
    return sorted({*globals(), *__all__})
