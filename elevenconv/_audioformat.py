"""Audio format conversion between the Agents wire formats and the device format.

Pure code: no threads, no I/O, no clocks. An :class:`~elevenconv._audio.AudioInterface`
always speaks PCM16 little-endian mono at 16 kHz; the server announces a wire format
(the contract lists :data:`AUDIO_FORMATS`) for its output (``agent_output_audio_format``)
and expects one for the user's microphone (``user_input_audio_format``).
:class:`AgentAudioDecoder` and :class:`UserAudioEncoder` convert between the two, chunk
by chunk.

Supported wire formats: ``pcm_<rate>`` (16-bit PCM at any rate from 8 kHz to 192 kHz, so
a rate the server adds later, such as ``pcm_32000``, works without a release) and
``ulaw_8000``. :func:`check_audio_format` rejects anything else at once, with a
:class:`~elevenconv.errors.ConfigurationError` naming the format and what is supported.

Resampling is done by libsoxr (``soxr.ResampleStream``) on numpy arrays. Both are
optional dependencies and are imported on first use only, so ``pcm_16000`` passthrough
and ``import elevenconv`` work without them; any conversion that needs them raises
:class:`~elevenconv.errors.AudioError` naming ``pip install elevenconv[resample]``.

Threading: the functions are pure and may be called from any thread. The streaming
classes keep state between chunks and are *not* thread-safe: each instance belongs to the
one thread that feeds it (typically the Conversation's audio thread), and ``reset()`` /
``flush()`` must be called from that thread too, or the caller must serialise the calls.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from elevenconv.errors import AudioError, ConfigurationError
from elevenconv.protocol import AUDIO_FORMATS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    _Int16Array = npt.NDArray[np.int16]
    _UInt8Array = npt.NDArray[np.uint8]

__all__ = [
    "AUDIO_FORMATS",
    "MAX_PCM_RATE",
    "MIN_PCM_RATE",
    "AgentAudioDecoder",
    "AudioFormat",
    "PcmResampler",
    "UserAudioEncoder",
    "check_audio_format",
    "parse_audio_format",
    "scale_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]

# The format names of the Agents protocol (``AUDIO_FORMATS``) are defined once, with the
# protocol, and re-exported here: PCM is 16-bit signed little-endian mono; ``ulaw`` is
# G.711 mu-law, 8 bits per sample.
#: The device side of every conversion (see :mod:`elevenconv._audio`).
_DEVICE_RATE = 16000

log = logging.getLogger(__name__)

#: Sample rates accepted in ``pcm_<rate>``: libsoxr converts any rate; the bounds (telephony
#: to studio rates) only reject nonsense (a typo, a 0) with a clear error before a session.
MIN_PCM_RATE = 8000
MAX_PCM_RATE = 192000

# ``pcm_<rate>`` with a canonical decimal rate (no sign, no leading zero); ``ulaw_8000``.
_FORMAT_RE = re.compile(r"(pcm)_([1-9][0-9]{0,6})|(ulaw)_(8000)")

_SUPPORTED = (
    f"pcm_<rate> (16-bit PCM at {MIN_PCM_RATE} to {MAX_PCM_RATE} Hz, e.g. "
    f"{', '.join(f for f in AUDIO_FORMATS if f.startswith('pcm_'))}) or ulaw_8000"
)

_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")

_INSTALL_HINT = 'install the optional dependencies: pip install "elevenconv[resample]"'

# G.711 mu-law constants (ITU-T G.711; the classic Sun g711.c reference).
_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635

# PCM16 is little-endian on the wire. numpy arrays handed to soxr must be native-endian,
# which is the same thing on every platform we run on; the conversions below are no-ops
# there and only copy on a big-endian host.
_NATIVE_IS_LE = sys.byteorder == "little"


@dataclass(frozen=True)
class AudioFormat:
    """One wire audio format of the Agents protocol.

    Fields:
        encoding: ``"pcm"`` (16-bit signed little-endian) or ``"ulaw"`` (G.711 mu-law).
        sample_rate: samples per second, mono.
        name: the protocol name, e.g. ``"pcm_44100"``.

    Build one with :func:`parse_audio_format`.
    """

    encoding: Literal["pcm", "ulaw"]
    sample_rate: int
    name: str


def parse_audio_format(name: str) -> AudioFormat:
    """Return the :class:`AudioFormat` for a protocol format name such as ``"ulaw_8000"``.

    Accepts ``pcm_<rate>`` for any rate from :data:`MIN_PCM_RATE` to :data:`MAX_PCM_RATE`
    (every name of :data:`AUDIO_FORMATS`, and rates the contract does not list yet) and
    ``ulaw_8000``. Pure; any thread. Raises :class:`~elevenconv.errors.ConfigurationError`
    (a ``ValueError``) for anything else; the message names ``name`` and what is supported.
    """
    match = _FORMAT_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ConfigurationError(
            f"unsupported audio format {name!r}: elevenconv supports {_SUPPORTED}"
        )
    if match[1]:
        rate = int(match[2])
        if not MIN_PCM_RATE <= rate <= MAX_PCM_RATE:
            raise ConfigurationError(
                f"unsupported audio format {name!r}: the sample rate is outside "
                f"{MIN_PCM_RATE} to {MAX_PCM_RATE} Hz; elevenconv supports {_SUPPORTED}"
            )
        return AudioFormat(encoding="pcm", sample_rate=rate, name=name)
    return AudioFormat(encoding="ulaw", sample_rate=8000, name=name)


def check_audio_format(name: str) -> AudioFormat:
    """Check a format the server announced: its :class:`AudioFormat`, or
    :class:`~elevenconv.errors.ConfigurationError` naming it and what is supported.

    The same as :func:`parse_audio_format`, under the name the session code uses when the
    metadata arrives, so that an unknown codec fails ``start_session()`` at once. Checks
    the name only: missing numpy/soxr are reported when a decoder or encoder is created.
    Pure; any thread.
    """
    return parse_audio_format(name)


def _as_format(fmt: str | AudioFormat) -> AudioFormat:
    return fmt if isinstance(fmt, AudioFormat) else parse_audio_format(fmt)


# -- optional dependencies ---------------------------------------------------------------


def _import_numpy(purpose: str) -> Any:
    """Import numpy on first use, or raise AudioError saying what to install."""
    try:
        import numpy
    except ImportError as exc:
        raise AudioError(f"{purpose} needs numpy: {_INSTALL_HINT}") from exc
    return numpy


def _import_soxr(purpose: str) -> Any:
    """Import soxr on first use, or raise AudioError saying what to install."""
    try:
        import soxr
    except ImportError as exc:
        raise AudioError(f"{purpose} needs soxr: {_INSTALL_HINT}") from exc
    return soxr


def _samples(pcm: bytes, np: Any) -> _Int16Array:
    """A read-only int16 view of ``pcm`` (even length), without copying on little-endian."""
    samples: _Int16Array = np.frombuffer(pcm, dtype="<i2")
    if not _NATIVE_IS_LE:  # pragma: no cover - no big-endian CI
        samples = samples.astype(np.int16)
    return samples


def _to_bytes(samples: _Int16Array) -> bytes:
    if not _NATIVE_IS_LE:  # pragma: no cover - no big-endian CI
        return samples.astype("<i2").tobytes()
    return samples.tobytes()


# -- G.711 mu-law -------------------------------------------------------------------------

# Built once on first use. Two threads racing here both build identical tables and one
# assignment wins, which is harmless, so no lock.
_ulaw_decode_table: _Int16Array | None = None
_ulaw_encode_table: _UInt8Array | None = None


def _ulaw_tables() -> tuple[_Int16Array, _UInt8Array]:
    """The 256-entry decode table and the 65536-entry encode table (indexed by uint16)."""
    global _ulaw_decode_table, _ulaw_encode_table
    if _ulaw_decode_table is None or _ulaw_encode_table is None:
        np = _import_numpy("mu-law conversion")
        # Decode: complement, then sign / 3-bit exponent / 4-bit mantissa.
        u = ~np.arange(256, dtype=np.int32) & 0xFF
        magnitude = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u >> 4) & 0x07)
        magnitude -= _ULAW_BIAS
        decode = np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)

        # Encode every possible int16 once; encoding a chunk is then one table lookup.
        # Index is the sample's bit pattern as uint16, so build in that order.
        pcm = np.arange(65536, dtype=np.int32)
        pcm = np.where(pcm >= 32768, pcm - 65536, pcm)  # uint16 bit pattern -> int16 value
        sign = np.where(pcm < 0, 0x80, 0x00)
        mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + _ULAW_BIAS
        # Exponent = position of the highest set bit among bits 7..14 (0 if none).
        exponent = np.zeros_like(mag)
        for bit in range(8, 15):  # 7 iterations at table-build time, not per sample
            exponent = np.where(mag >= (1 << bit), bit - 7, exponent)
        mantissa = (mag >> (exponent + 3)) & 0x0F
        encode = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)

        _ulaw_decode_table, _ulaw_encode_table = decode, encode
    return _ulaw_decode_table, _ulaw_encode_table


def _ulaw_decode_array(data: bytes) -> _Int16Array:
    np = _import_numpy("mu-law conversion")
    decode, _ = _ulaw_tables()
    result: _Int16Array = decode[np.frombuffer(data, dtype=np.uint8)]
    return result


def _ulaw_encode_array(samples: _Int16Array) -> bytes:
    np = _import_numpy("mu-law conversion")
    _, encode = _ulaw_tables()
    result: bytes = encode[samples.view(np.uint16)].tobytes()
    return result


def ulaw_decode(data: bytes) -> bytes:
    """Decode G.711 mu-law bytes (one per sample) to PCM16 little-endian.

    Pure; any thread. The output is exactly twice as long as ``data``. Raises
    :class:`~elevenconv.errors.AudioError` if numpy is not installed.
    """
    if not data:
        return b""
    return _to_bytes(_ulaw_decode_array(data))


def ulaw_encode(pcm: bytes) -> bytes:
    """Encode PCM16 little-endian to G.711 mu-law (bias 0x84, clip 32635), one byte per sample.

    Pure; any thread. Standard G.711 without the optional "zero trap" (0x00 is a valid
    code). Raises :class:`~elevenconv.errors.AudioError` if ``pcm`` has an odd number of
    bytes (use :class:`UserAudioEncoder` for a stream split at arbitrary bytes) or if
    numpy is not installed.
    """
    if len(pcm) % 2:
        raise AudioError(f"PCM16 data must have an even number of bytes, got {len(pcm)}")
    if not pcm:
        return b""
    np = _import_numpy("mu-law conversion")
    return _ulaw_encode_array(_samples(pcm, np))


def scale_pcm16(pcm: bytes, gain: float) -> bytes:
    """Return PCM16 ``pcm`` with every sample multiplied by ``gain`` (0.0 to 1.0).

    Pure; any thread. ``gain == 1`` returns ``pcm`` itself (no copy), ``gain == 0`` returns
    zeros of the same length; neither needs numpy. Other gains round to nearest.
    Raises :class:`~elevenconv.errors.ConfigurationError` if ``gain`` is outside 0..1 or
    not a number, and :class:`~elevenconv.errors.AudioError` if ``pcm`` has an odd number
    of bytes or numpy is needed but not installed.
    """
    if not isinstance(gain, (int, float)) or math.isnan(gain) or not 0.0 <= gain <= 1.0:
        raise ConfigurationError(f"gain must be a number from 0.0 to 1.0, got {gain!r}")
    if len(pcm) % 2:
        raise AudioError(f"PCM16 data must have an even number of bytes, got {len(pcm)}")
    if gain == 1.0:
        return pcm
    if gain == 0.0:
        return bytes(len(pcm))
    np = _import_numpy("volume scaling")
    scaled = _samples(pcm, np) * np.float32(gain)  # float32; |gain| <= 1 cannot overflow
    return _to_bytes(np.rint(scaled).astype(np.int16))


# -- resampling ---------------------------------------------------------------------------


class PcmResampler:
    """Streaming sample-rate converter for PCM16 little-endian mono, backed by libsoxr.

    Feed consecutive chunks of one continuous signal to :meth:`process`; the filter state
    carries across chunks, so chunk edges produce no clicks and the output is the same as
    a one-shot conversion of the whole signal, however it is chunked. The resampler holds
    audio back (about 20-70 ms at ``"HQ"``, depending on the rates): the first chunks come
    out shorter, and :meth:`flush` returns what is held back at the end of the signal.

    When ``in_rate == out_rate`` it is a passthrough: no numpy, no soxr, no copies
    (except to join an odd byte carried from the previous chunk).

    Not thread-safe: one instance belongs to the thread that feeds it (see module doc).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        """Create a resampler from ``in_rate`` to ``out_rate`` Hz.

        ``quality`` is a soxr preset: ``"QQ"``, ``"LQ"``, ``"MQ"``, ``"HQ"`` (default) or
        ``"VHQ"``. Raises :class:`~elevenconv.errors.ConfigurationError` for a non-positive
        rate or unknown quality, and :class:`~elevenconv.errors.AudioError` if the rates
        differ and numpy or soxr is not installed.
        """
        for label, rate in (("in_rate", in_rate), ("out_rate", out_rate)):
            if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
                raise ConfigurationError(f"{label} must be a positive int, got {rate!r}")
        if quality not in _QUALITIES:
            raise ConfigurationError(
                f"unknown resampler quality {quality!r}: expected one of {', '.join(_QUALITIES)}"
            )
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        # An odd trailing byte of the last chunk: a sample split across two chunks.
        self._carry = b""
        self._np: Any = None
        self._stream: Any = None
        if in_rate != out_rate:
            purpose = f"resampling {in_rate} Hz to {out_rate} Hz"
            self._np = _import_numpy(purpose)
            soxr = _import_soxr(purpose)
            # float32, not int16: libsoxr dithers int16 output (TPDF, random), so results
            # would differ by an LSB run to run and between chunkings. In float32 the output
            # is deterministic and independent of how the input is chunked; we round and
            # saturate to int16 ourselves.
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality
            )

    @property
    def passthrough(self) -> bool:
        """``True`` if the rates are equal and chunks are returned unchanged."""
        return self._stream is None

    def _take_even(self, pcm: bytes) -> bytes:
        """Join the carried byte and ``pcm``; keep a new odd trailing byte for next time."""
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) % 2:
            self._carry = pcm[-1:]
            pcm = pcm[:-1]
        return pcm

    def _resample_samples(self, samples: _Int16Array) -> _Int16Array:
        """Resample int16 samples of a resampling (not passthrough) stream."""
        return self._to_int16(self._stream.resample_chunk(samples.astype(self._np.float32)))

    def _to_int16(self, floats: Any) -> _Int16Array:
        np = self._np
        # Filter overshoot on loud input can exceed int16: saturate, never wrap.
        clipped = np.clip(floats, -32768.0, 32767.0)
        np.rint(clipped, out=clipped)
        result: _Int16Array = clipped.astype(np.int16)
        return result

    def _process_array(self, pcm: bytes) -> _Int16Array:
        """Like :meth:`process` for a resampling stream, returning int16 samples."""
        return self._resample_samples(_samples(self._take_even(pcm), self._np))

    def process(self, pcm: bytes) -> bytes:
        """Convert the next chunk of the signal; return what is ready (maybe ``b""``).

        ``pcm`` may have any length, odd byte counts included: a split sample is carried
        to the next call. Output length varies chunk to chunk; over a whole signal
        (including :meth:`flush`) it is ``round(n_in * out_rate / in_rate)`` samples.
        Owner thread only; never raises for well-formed input.
        """
        if self._stream is None:
            if not self._carry and len(pcm) % 2 == 0:
                return pcm  # the common passthrough case: zero copies
            return self._take_even(pcm)
        if not pcm:
            return b""
        return _to_bytes(self._process_array(pcm))

    def _flush_array(self) -> _Int16Array:
        np = self._np
        tail = self._to_int16(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        # soxr allows last=True once per signal: start afresh so the object stays usable.
        self._stream.clear()
        self._carry = b""
        return tail

    def flush(self) -> bytes:
        """End of the signal: return the samples still held in the filter.

        A dangling odd byte is dropped (it is half a sample). Afterwards the resampler is
        ready for a new, unrelated signal, exactly as after :meth:`reset`. Owner thread only.
        """
        if self._stream is None:
            self._carry = b""
            return b""
        return _to_bytes(self._flush_array())

    def reset(self) -> None:
        """Forget all state, discarding held-back samples (e.g. after an interruption).

        The next :meth:`process` starts a new signal, as on a fresh instance. Owner
        thread only (or serialise with :meth:`process` yourself).
        """
        self._carry = b""
        if self._stream is not None:
            self._stream.clear()


class AgentAudioDecoder:
    """Streaming conversion of the agent's audio (any supported format, see
    :func:`parse_audio_format`) to the device format, PCM16 little-endian mono 16 kHz.

    ``pcm_16000`` is a passthrough (the same bytes object comes back). ``ulaw_8000`` is
    decoded then upsampled; other PCM rates are resampled. Not thread-safe: feed it from
    one thread (the Conversation's audio thread).
    """

    def __init__(self, fmt: str | AudioFormat) -> None:
        """Create a decoder for ``fmt`` (a format name or an :class:`AudioFormat`).

        Raises :class:`~elevenconv.errors.ConfigurationError` for an unknown format and
        :class:`~elevenconv.errors.AudioError` if the conversion needs numpy/soxr and
        they are not installed.
        """
        self.format = _as_format(fmt)
        if self.format.encoding == "ulaw":
            _import_numpy(f"decoding {self.format.name}")
        self._resampler = PcmResampler(self.format.sample_rate, _DEVICE_RATE)
        if not self.passthrough:
            log.debug("agent audio: %s converted to pcm_16000 for the device", self.format.name)

    def decode(self, data: bytes) -> bytes:
        """Convert the next chunk of server audio; return the PCM16 16 kHz that is ready.

        Chunks may split samples at any byte. Output lags input by the resampler's delay;
        call :meth:`flush` at the end of an agent response to get the tail. Owner thread
        only.
        """
        if self.format.encoding == "ulaw":
            if not data:
                return b""
            decoded = _ulaw_decode_array(data)
            if self._resampler.passthrough:  # pragma: no cover - ulaw is only 8 kHz today
                return _to_bytes(decoded)
            return _to_bytes(self._resampler._resample_samples(decoded))
        return self._resampler.process(data)

    @property
    def passthrough(self) -> bool:
        """``True`` for ``pcm_16000``: nothing is converted or held back."""
        return self.format.encoding == "pcm" and self._resampler.passthrough

    def flush(self) -> bytes:
        """End of an agent response: return the held-back tail and start afresh.

        Owner thread only.
        """
        return self._resampler.flush()

    def reset(self) -> None:
        """Drop held-back audio and state (the agent was interrupted). Owner thread only."""
        self._resampler.reset()


class UserAudioEncoder:
    """Streaming conversion of microphone audio (PCM16 little-endian mono 16 kHz) to the
    ``user_input_audio_format`` the server announced.

    ``pcm_16000`` is a passthrough (the same bytes object comes back). Not thread-safe:
    feed it from one thread (the Conversation's audio or writer thread).
    """

    def __init__(self, fmt: str | AudioFormat) -> None:
        """Create an encoder to ``fmt`` (a format name or an :class:`AudioFormat`).

        Raises :class:`~elevenconv.errors.ConfigurationError` for an unknown format and
        :class:`~elevenconv.errors.AudioError` if the conversion needs numpy/soxr and
        they are not installed.
        """
        self.format = _as_format(fmt)
        if self.format.encoding == "ulaw":
            self._np: Any = _import_numpy(f"encoding {self.format.name}")
        self._resampler = PcmResampler(_DEVICE_RATE, self.format.sample_rate)
        if self.format.name != "pcm_16000":
            log.debug("microphone audio: pcm_16000 converted to %s", self.format.name)

    def encode(self, pcm: bytes) -> bytes:
        """Convert the next microphone chunk; return the encoded audio that is ready.

        Chunks may split samples at any byte; the result may be shorter than a chunk's
        duration (resampler delay) and is empty when nothing is ready. Owner thread only.
        """
        if self.format.encoding == "pcm":
            return self._resampler.process(pcm)
        if not pcm:
            return b""
        if self._resampler.passthrough:  # pragma: no cover - ulaw is only 8 kHz today
            samples = _samples(self._resampler._take_even(pcm), self._np)
        else:
            samples = self._resampler._process_array(pcm)
        return _ulaw_encode_array(samples) if samples.size else b""

    def flush(self) -> bytes:
        """End of the user's audio: return the encoded tail the resampler held back.

        Afterwards the encoder starts afresh, as after :meth:`reset`. Not needed for a live
        microphone (the stream never ends); useful for files. Owner thread only.
        """
        if self.format.encoding == "pcm":
            return self._resampler.flush()
        if self._resampler.passthrough:  # pragma: no cover - ulaw is only 8 kHz today
            self._resampler.reset()
            return b""
        tail = self._resampler._flush_array()
        return _ulaw_encode_array(tail) if tail.size else b""

    def reset(self) -> None:
        """Forget state (e.g. the microphone restarted). Owner thread only."""
        self._resampler.reset()
