"""Audio for the simulator: a voice for the agent and an ear (energy VAD) for the user.

* :func:`speech_pcm16k` turns text into PCM16 little-endian mono 16 kHz: ``espeak-ng``
  when installed (and the resampler is available), else a synthetic voice -- a
  pitch-modulated tone with one enveloped "syllable" per vowel group, clearly audible and
  fully deterministic.
* :func:`encode_chunks` converts that to one of the wire formats and cuts it into chunks.
* :class:`EnergyVad` finds speech in the user's (decoded) audio by frame energy.

No threads; the VAD instance belongs to the connection's handler thread.
"""

from __future__ import annotations

import functools
import io
import math
import re
import shutil
import subprocess
import wave
from array import array
from dataclasses import dataclass
from typing import Literal

from elevenconv._audioformat import PcmResampler, UserAudioEncoder, parse_audio_format
from elevenconv.errors import AudioError, ConfigurationError

__all__ = ["EnergyVad", "VadEvent", "encode_chunks", "format_seconds", "speech_pcm16k"]

RATE = 16000
_FRAME = 320  # 20 ms at 16 kHz
_FRAME_SECONDS = _FRAME / RATE

TtsEngine = Literal["auto", "espeak", "tone"]


@functools.lru_cache(maxsize=128)
def speech_pcm16k(text: str, engine: TtsEngine = "auto") -> bytes:
    """Speech for ``text`` as PCM16 little-endian mono 16 kHz (cached per text).

    ``engine``: ``"espeak"`` (raises :class:`AudioError` if espeak-ng or the resampler is
    missing), ``"tone"`` (the synthetic voice) or ``"auto"`` (espeak-ng, else tone).
    """
    if engine not in ("auto", "espeak", "tone"):
        raise ConfigurationError(f"unknown tts engine {engine!r}: use 'auto', 'espeak' or 'tone'")
    if engine != "tone":
        try:
            return _espeak(text)
        except AudioError:
            if engine == "espeak":
                raise
    return _tone_voice(text)


def _espeak(text: str) -> bytes:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise AudioError("espeak-ng is not installed: apt-get install espeak-ng, or use tts='tone'")
    try:
        # Text goes through stdin, never the command line: no option injection.
        done = subprocess.run(  # noqa: S603 - fixed executable, no shell
            [exe, "--stdout", "--stdin"],
            input=text.encode(),
            capture_output=True,
            timeout=20,
            check=True,
        )
        with wave.open(io.BytesIO(done.stdout)) as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            # espeak-ng writes a placeholder length when streaming: read until the end.
            frames = wav.readframes(1 << 30)
    except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
        raise AudioError(f"espeak-ng failed: {exc}") from exc
    if width != 2 or channels != 1:
        raise AudioError(f"espeak-ng produced {channels} channel(s) of {8 * width}-bit audio")
    resampler = PcmResampler(rate, RATE)  # raises AudioError without numpy/soxr
    return resampler.process(frames) + resampler.flush()


def _tone_voice(text: str) -> bytes:
    """A deterministic, speech-like signal: one syllable per vowel group of ``text``."""
    syllables = max(1, len(re.findall(r"[aeiouy]+", text.lower())))
    words = max(1, len(text.split()))
    samples = array("h")
    phase = 0.0
    syllable_len = int(0.16 * RATE)
    gap_len = int(0.05 * RATE)
    word_gap = int(0.08 * RATE)
    per_word = max(1, round(syllables / words))
    for n in range(syllables):
        base = 150.0 + 40.0 * math.sin(n * 1.3)  # intonation moves from syllable to syllable
        for i in range(syllable_len):
            pos = i / syllable_len
            env = math.sin(math.pi * pos) ** 2  # smooth attack and decay: no clicks
            freq = base * (1.0 + 0.08 * math.sin(2 * math.pi * 5.0 * i / RATE))  # vibrato
            phase += 2 * math.pi * freq / RATE
            value = math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase)
            samples.append(int(9000 * env * value))
        samples.extend([0] * (word_gap if (n + 1) % per_word == 0 else gap_len))
    return samples.tobytes()


def encode_chunks(pcm16k: bytes, output_format: str, chunk_seconds: float) -> list[bytes]:
    """Convert PCM16 16 kHz to ``output_format`` and cut it into ``chunk_seconds`` chunks."""
    fmt = parse_audio_format(output_format)
    encoder = UserAudioEncoder(fmt)
    data = encoder.encode(pcm16k) + encoder.flush()
    width = 1 if fmt.encoding == "ulaw" else 2
    step = max(width, int(fmt.sample_rate * chunk_seconds) * width)
    return [data[i : i + step] for i in range(0, len(data), step)]


def format_seconds(nbytes: int, output_format: str) -> float:
    """Duration in seconds of ``nbytes`` of audio in ``output_format``."""
    fmt = parse_audio_format(output_format)
    width = 1 if fmt.encoding == "ulaw" else 2
    return nbytes / width / fmt.sample_rate


@dataclass(frozen=True)
class VadEvent:
    """What :meth:`EnergyVad.process` found.

    Fields:
        kind: ``"score"`` (periodic), ``"start"`` (speech began), ``"end"`` (an utterance
            ended; ``value`` is its duration in seconds) or ``"discard"`` (a too-short
            blip ended; ``value`` is its duration).
        value: the score (0..1) or the duration.
    """

    kind: Literal["score", "start", "end", "discard"]
    value: float


class EnergyVad:
    """Energy-based voice activity detection on PCM16 16 kHz, in 20 ms frames.

    Time is audio time (samples fed), not wall-clock time, so audio sent faster than real
    time is judged exactly like live audio. Speech starts after ``start_seconds`` of
    voiced frames (louder than ``threshold_db`` dBFS RMS), and ends after
    ``end_silence`` seconds below it; an utterance shorter than ``min_utterance`` is
    discarded. A ``score`` event is produced every ``score_interval`` seconds of audio,
    carrying the highest frame score of that interval.

    Not thread-safe: one instance per connection, fed from its handler thread.
    """

    def __init__(
        self,
        *,
        threshold_db: float = -40.0,
        start_seconds: float = 0.1,
        end_silence: float = 0.6,
        min_utterance: float = 0.3,
        score_interval: float = 0.25,
    ) -> None:
        """Create a detector; see the class docstring for the parameters."""
        self.threshold_db = threshold_db
        self.start_frames = max(1, round(start_seconds / _FRAME_SECONDS))
        self.end_frames = max(1, round(end_silence / _FRAME_SECONDS))
        self.min_utterance = min_utterance
        self.score_frames = max(1, round(score_interval / _FRAME_SECONDS))
        self._pending = b""
        self._in_speech = False
        self._voiced_run = 0
        self._silent_run = 0
        self._speech_frames = 0
        self._score_count = 0
        self._score_max = 0.0

    @property
    def in_speech(self) -> bool:
        """``True`` between a ``start`` and its ``end``/``discard``."""
        return self._in_speech

    def score(self, frame: bytes) -> tuple[float, bool]:
        """Score (0..1) and voiced flag of one frame."""
        samples = array("h")
        samples.frombytes(frame)
        if not samples:
            return 0.0, False
        rms = math.sqrt(sum(s * s for s in samples) / len(samples))
        db = 20 * math.log10(max(rms, 1.0) / 32768.0)
        value = (db - (self.threshold_db - 15.0)) / 30.0
        return min(1.0, max(0.0, value)), db > self.threshold_db

    def process(self, pcm: bytes) -> list[VadEvent]:
        """Feed the next chunk of PCM16 16 kHz audio; return what was detected in it."""
        data = self._pending + pcm
        usable = len(data) - len(data) % (2 * _FRAME)
        self._pending = data[usable:]
        events: list[VadEvent] = []
        for offset in range(0, usable, 2 * _FRAME):
            value, voiced = self.score(data[offset : offset + 2 * _FRAME])
            self._score_max = max(self._score_max, value)
            self._score_count += 1
            if self._score_count >= self.score_frames:
                events.append(VadEvent("score", round(self._score_max, 3)))
                self._score_count = 0
                self._score_max = 0.0
            self._step(voiced, events)
        return events

    def _step(self, voiced: bool, events: list[VadEvent]) -> None:
        if not self._in_speech:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self.start_frames:
                self._in_speech = True
                self._speech_frames = self._voiced_run
                self._silent_run = 0
                events.append(VadEvent("start", 0.0))
            return
        if voiced:
            # Short pauses inside an utterance count as part of it.
            self._speech_frames += self._silent_run + 1
            self._silent_run = 0
            return
        self._silent_run += 1
        if self._silent_run >= self.end_frames:
            duration = round(self._speech_frames * _FRAME_SECONDS, 3)
            kind: Literal["end", "discard"] = "end" if duration >= self.min_utterance else "discard"
            events.append(VadEvent(kind, duration))
            self._in_speech = False
            self._voiced_run = 0
            self._silent_run = 0
            self._speech_frames = 0
