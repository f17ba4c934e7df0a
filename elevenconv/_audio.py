"""The audio device contract between a Conversation and a sound device.

Both sides of an :class:`AudioInterface` speak 16-bit signed little-endian mono PCM at
16 kHz (:data:`SAMPLE_RATE`). The Conversation converts the server's formats to and from
this (see :mod:`elevenconv._audioformat`); an interface never sees mu-law or 44.1 kHz.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

__all__ = [
    "CHANNELS",
    "SAMPLE_RATE",
    "SAMPLE_WIDTH",
    "AudioInterface",
    "PlaybackCallback",
    "PlaybackReferenceCallback",
]

SAMPLE_RATE = 16000
SAMPLE_WIDTH = 2
CHANNELS = 1

#: ``callback(playing)``: ``True`` when agent audio starts coming out of the speaker,
#: ``False`` when it has drained or was interrupted. Called from the device's thread; it
#: must return at once (the Conversation's own callback only puts on a queue).
PlaybackCallback = Callable[[bool], None]

#: ``callback(pcm, played_at)``: ``pcm`` (PCM16 mono 16 kHz) is exactly what the speaker
#: plays, after gain and including silence, and ``played_at`` the ``time.monotonic()``
#: instant its first sample is heard. The echo canceller's reference. Any thread; it
#: returns at once. Deliver each stretch no later than the microphone chunk that holds
#: its echo (DefaultAudioInterface records it in its output callback and delivers it on
#: its ``elevenconv-mic`` thread just before each microphone chunk).
PlaybackReferenceCallback = Callable[[bytes, float], None]


class AudioInterface(ABC):
    """A microphone and a speaker, as the Conversation uses them.

    Same four methods as the official SDKs' ``AudioInterface``, so existing
    implementations port unchanged. The optional methods below have working defaults;
    override them to give the Conversation exact playback state and prompt controls.
    """

    @abstractmethod
    def start(self, input_callback: Callable[[bytes], None]) -> None:
        """Open the devices. Call ``input_callback(pcm)`` with each microphone chunk.

        ``input_callback`` never blocks and may be called from any thread (a PortAudio
        callback included): it only puts the chunk on a bounded queue.
        """

    @abstractmethod
    def stop(self) -> None:
        """Close the devices and free them. Called once, from the Conversation's thread."""

    @abstractmethod
    def output(self, audio: bytes) -> None:
        """Queue ``audio`` (PCM16 mono 16 kHz) for playback and return at once."""

    @abstractmethod
    def interrupt(self) -> None:
        """Drop all queued audio and silence the speaker as soon as possible."""

    #: Whether what this interface plays can come back into its microphone (speakers in
    #: a room). ``None`` (unknown) counts as ``True``; file and loopback interfaces say
    #: ``False``, so ``echo_cancellation=None`` does not turn the canceller on for them.
    acoustic_echo: bool | None = None

    # -- optional capabilities ---------------------------------------------------------

    def set_playback_callback(self, callback: PlaybackCallback | None) -> bool:
        """Ask to be told when playback starts and stops (see :data:`PlaybackCallback`).

        Return ``True`` if the interface will call it. The default returns ``False``: the
        Conversation then infers ``mode_change`` from the audio it hands to :meth:`output`.
        """
        return False

    def set_output_gain(self, gain: float) -> bool:
        """Scale playback by ``gain`` (0.0 = silent, 1.0 = unchanged), effective at once.

        Return ``True`` if handled here. The default returns ``False``: the Conversation
        then scales audio before :meth:`output`, which reaches audio already queued late.
        """
        return False

    def set_playback_reference_callback(self, callback: PlaybackReferenceCallback | None) -> bool:
        """Ask for the exact played audio (see :data:`PlaybackReferenceCallback`).

        Return ``True`` if the interface will call it, for everything it plays from then
        on. The default returns ``False``: the echo canceller then uses the audio handed
        to :meth:`output` as its reference, timed by the Conversation as if it played back
        to back from the moment it was handed over (less exact), and forgets the part not
        yet played when :meth:`interrupt` is called.
        """
        return False

    def capture_time(self) -> float | None:
        """When the chunk being delivered was recorded: the ``time.monotonic()`` instant of
        its first sample, or ``None`` if unknown (the default).

        Valid only while ``input_callback`` runs, on its thread; the echo canceller uses it
        to line the microphone up with the speaker reference.
        """
        return None

    def wait_until_drained(self, timeout: float) -> bool:
        """Block until queued audio has played, at most ``timeout`` s; ``True`` if drained.

        Used when the agent ends the call, so its last words are heard. The default
        returns ``True`` at once.
        """
        return True
