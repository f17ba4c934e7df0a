"""elevenconv._audioformat: format names, mu-law, gain, streaming resampling."""

from __future__ import annotations

import itertools
import math
import random
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elevenconv._audioformat import (
    AUDIO_FORMATS,
    MAX_PCM_RATE,
    MIN_PCM_RATE,
    AgentAudioDecoder,
    AudioFormat,
    PcmResampler,
    UserAudioEncoder,
    check_audio_format,
    parse_audio_format,
    scale_pcm16,
    ulaw_decode,
    ulaw_encode,
)
from elevenconv.errors import AudioError, ConfigurationError

RATES = (8000, 16000, 22050, 24000, 44100, 48000)


# -- helpers ----------------------------------------------------------------------------


def sine(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> bytes:
    n = round(rate * seconds)
    t = np.arange(n) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


def amplitude(x: np.ndarray) -> float:
    """Peak amplitude of a sine, from the RMS of its middle half (edges have filter ramps)."""
    mid = x[len(x) // 4 : 3 * len(x) // 4].astype(np.float64)
    return float(np.sqrt(np.mean(mid**2)) * math.sqrt(2))


def max_jump(x: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(x))))


def random_chunks(data: bytes, rng: random.Random, max_size: int = 2001) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = rng.randint(1, max_size)  # odd sizes included: samples split across chunks
        chunks.append(data[i : i + size])
        i += size
    return chunks


# -- reference G.711 mu-law, one sample at a time (written from the ITU-T description) ---

_SEG_ENDS = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)


def ref_linear_to_ulaw(sample: int) -> int:
    if sample < 0:
        sample, mask = -sample, 0x7F
    else:
        mask = 0xFF
    sample = min(sample, 32635) + 0x84
    seg = next((i for i, end in enumerate(_SEG_ENDS) if sample <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((sample >> (seg + 3)) & 0x0F)) ^ mask


def ref_ulaw_to_linear(code: int) -> int:
    code = ~code & 0xFF
    t = ((code & 0x0F) << 3) + 0x84
    t <<= (code & 0x70) >> 4
    return 0x84 - t if code & 0x80 else t - 0x84


# -- format names -----------------------------------------------------------------------


def test_audio_formats_are_the_protocol_names_in_order() -> None:
    assert AUDIO_FORMATS == (
        "pcm_8000",
        "pcm_16000",
        "pcm_22050",
        "pcm_24000",
        "pcm_44100",
        "pcm_48000",
        "ulaw_8000",
    )


@pytest.mark.parametrize("name", AUDIO_FORMATS)
def test_parse_audio_format(name: str) -> None:
    fmt = parse_audio_format(name)
    encoding, rate = name.split("_")
    assert fmt == AudioFormat(encoding=encoding, sample_rate=int(rate), name=name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "mp3_44100",
        "opus_48000",
        "PCM_16000",
        "",
        "pcm",
        "pcm_",
        "ulaw_16000",
        "pcm_0",
        "pcm_016000",
        "pcm_-16000",
        "pcm_16000 ",
        "pcm_16k",
        "pcm_7999",
        "pcm_192001",
        "pcm_1",
        "pcm_99999999",
        None,
        16000,
    ],
)
def test_unsupported_format_raises_configuration_error_naming_it_and_what_works(
    bad: object,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_audio_format(bad)  # type: ignore[arg-type]
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert repr(bad) in message
    assert "pcm_<rate>" in message and "ulaw_8000" in message
    assert "8000 to 192000 Hz" in message
    for exc_source in (check_audio_format, AgentAudioDecoder, UserAudioEncoder):
        with pytest.raises(ConfigurationError, match="unsupported audio format"):
            exc_source(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", [*AUDIO_FORMATS, "pcm_32000", "pcm_12345", "pcm_96000", "pcm_8000", "pcm_192000"]
)
def test_check_audio_format_accepts_every_supported_name(name: str) -> None:
    assert check_audio_format(name) == parse_audio_format(name)


@pytest.mark.parametrize("rate", [MIN_PCM_RATE, 11025, 32000, 96000, MAX_PCM_RATE])
def test_any_pcm_rate_parses(rate: int) -> None:
    assert parse_audio_format(f"pcm_{rate}") == AudioFormat("pcm", rate, f"pcm_{rate}")


# -- mu-law -----------------------------------------------------------------------------


def test_ulaw_encode_matches_reference_for_every_int16() -> None:
    every = np.arange(-32768, 32768, dtype="<i2")
    encoded = ulaw_encode(every.tobytes())
    expected = bytes(ref_linear_to_ulaw(int(v)) for v in every)
    assert encoded == expected


def test_ulaw_decode_matches_reference_for_every_code() -> None:
    decoded = samples(ulaw_decode(bytes(range(256))))
    assert decoded.tolist() == [ref_ulaw_to_linear(c) for c in range(256)]
    assert decoded.max() == 32124
    assert decoded.min() == -32124


def test_ulaw_round_trip_error_is_bounded() -> None:
    every = np.arange(-32768, 32768, dtype="<i2")
    back = samples(ulaw_decode(ulaw_encode(every.tobytes())))
    x = every.astype(np.int64)
    err = np.abs(back - x)
    inside = np.abs(x) <= 32635
    # Logarithmic quantisation: error within 1/32 of the magnitude (+ the small first step).
    assert np.all(err[inside] <= np.maximum(8, np.abs(x[inside]) // 32 + 8))
    # Beyond the clip level, values saturate at the largest code instead of wrapping.
    assert np.all(np.abs(back[~inside]) == 32124)
    assert np.all(np.sign(back[~inside]) == np.sign(x[~inside]))
    # Decoded values are fixed points of encode/decode.
    table = ulaw_decode(bytes(range(256)))
    assert ulaw_decode(ulaw_encode(table)) == table


def test_ulaw_edge_cases() -> None:
    assert ulaw_decode(b"") == b""
    assert ulaw_encode(b"") == b""
    assert ulaw_encode(b"\x00\x00") == b"\xff"
    with pytest.raises(AudioError):
        ulaw_encode(b"\x00\x00\x00")


# -- gain -------------------------------------------------------------------------------


def test_scale_pcm16() -> None:
    pcm = np.array([0, 1, -1, 3, -3, 1000, -1000, 32767, -32768], dtype="<i2").tobytes()
    assert scale_pcm16(pcm, 1.0) is pcm
    assert scale_pcm16(pcm, 1) is pcm
    assert scale_pcm16(pcm, 0.0) == bytes(len(pcm))
    half = samples(scale_pcm16(pcm, 0.5))
    assert half.tolist() == np.rint(samples(pcm) * 0.5).astype(int).tolist()
    assert half[-1] == -16384
    quiet = samples(scale_pcm16(pcm, 0.001))
    assert np.all(np.abs(quiet) <= 33)
    assert scale_pcm16(b"", 0.3) == b""


@pytest.mark.parametrize("gain", [-0.1, 1.01, math.nan, math.inf])
def test_scale_pcm16_rejects_gain_outside_0_1(gain: float) -> None:
    with pytest.raises(ConfigurationError):
        scale_pcm16(b"\x00\x00", gain)


def test_scale_pcm16_rejects_odd_length() -> None:
    with pytest.raises(AudioError):
        scale_pcm16(b"\x00\x00\x00", 0.5)


# -- passthrough ------------------------------------------------------------------------


def test_pcm_16000_passthrough_returns_the_same_bytes() -> None:
    pcm = sine(440, 16000, 0.1)
    assert AgentAudioDecoder("pcm_16000").decode(pcm) is pcm
    assert UserAudioEncoder(parse_audio_format("pcm_16000")).encode(pcm) is pcm
    resampler = PcmResampler(16000, 16000)
    assert resampler.passthrough
    assert resampler.process(pcm) is pcm
    assert resampler.flush() == b""


def test_passthrough_carries_odd_bytes() -> None:
    r = PcmResampler(16000, 16000)
    assert r.process(b"\x01") == b""
    assert r.process(b"\x02\x03") == b"\x01\x02"
    assert r.process(b"\x04") == b"\x03\x04"
    assert r.process(b"\x05") == b""
    r.reset()  # forgets the half sample
    assert r.process(b"\x06\x07") == b"\x06\x07"


def test_without_numpy_and_soxr(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import numpy` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "numpy", None)
    monkeypatch.setitem(sys.modules, "soxr", None)
    pcm = sine(440, 16000, 0.05)
    assert AgentAudioDecoder("pcm_16000").decode(pcm) is pcm
    assert UserAudioEncoder("pcm_16000").encode(pcm) is pcm
    assert scale_pcm16(pcm, 0.0) == bytes(len(pcm))
    for make in (
        lambda: PcmResampler(44100, 16000),
        lambda: AgentAudioDecoder("pcm_24000"),
        lambda: AgentAudioDecoder("ulaw_8000"),
        lambda: UserAudioEncoder("ulaw_8000"),
        lambda: scale_pcm16(pcm, 0.5),
    ):
        with pytest.raises(AudioError, match=r"pip install \"?elevenconv\[resample\]"):
            make()


def test_resampler_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        PcmResampler(0, 16000)
    with pytest.raises(ConfigurationError):
        PcmResampler(16000, -1)
    with pytest.raises(ConfigurationError):
        PcmResampler(16000, 8000, quality="best")


# -- every format round-trips -----------------------------------------------------------


#: Rates the contract does not list: the server may announce them (issue 8 point 7).
EXTRA_FORMATS = ("pcm_32000", "pcm_11025", "pcm_96000")


@pytest.mark.parametrize("name", [*AUDIO_FORMATS, *EXTRA_FORMATS])
def test_every_format_round_trips(name: str) -> None:
    fmt = parse_audio_format(name)
    pcm = sine(440, 16000, 1.0)
    encoder, decoder = UserAudioEncoder(name), AgentAudioDecoder(fmt)
    chunk = 3200  # 100 ms
    wire = b"".join(encoder.encode(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk))
    wire += encoder.flush()
    bytes_per_sample = 1 if fmt.encoding == "ulaw" else 2
    assert abs(len(wire) // bytes_per_sample - fmt.sample_rate) <= 2

    # The server's chunks need not align with ours: split the wire audio differently.
    wire_chunk = 1111
    back = b"".join(
        decoder.decode(wire[i : i + wire_chunk]) for i in range(0, len(wire), wire_chunk)
    )
    back += decoder.flush()
    x = samples(back)
    assert abs(len(x) - 16000) <= 4
    assert dominant_frequency(x, 16000) == pytest.approx(440, abs=2)
    assert amplitude(x) == pytest.approx(10000, rel=0.05)


@pytest.mark.parametrize("name", [*AUDIO_FORMATS, *EXTRA_FORMATS])
def test_decoder_converts_server_audio_to_16k(name: str) -> None:
    fmt = parse_audio_format(name)
    server_pcm = sine(1000, fmt.sample_rate, 0.5, amplitude=8000)
    wire = ulaw_encode(server_pcm) if fmt.encoding == "ulaw" else server_pcm
    decoder = AgentAudioDecoder(fmt)
    x = samples(decoder.decode(wire) + decoder.flush())
    assert abs(len(x) - 8000) <= 2
    assert dominant_frequency(x, 16000) == pytest.approx(1000, abs=3)
    assert amplitude(x) == pytest.approx(8000, rel=0.05)


# -- streaming resampler ----------------------------------------------------------------


def _one_shot(in_rate: int, out_rate: int, pcm: bytes) -> np.ndarray:
    r = PcmResampler(in_rate, out_rate)
    return samples(r.process(pcm) + r.flush())


def _chunked(in_rate: int, out_rate: int, chunks: list[bytes]) -> np.ndarray:
    r = PcmResampler(in_rate, out_rate)
    return samples(b"".join(r.process(c) for c in chunks) + r.flush())


def _assert_same_signal(chunked: np.ndarray, one_shot: np.ndarray) -> None:
    assert len(chunked) == len(one_shot)
    # Resampling runs in float32 (no dither), so chunking changes nothing; allow one LSB
    # of rounding in case a libsoxr build differs.
    assert int(np.max(np.abs(chunked - one_shot))) <= 1
    # No clicks at chunk edges: no jump larger than the one-shot signal has anywhere.
    assert max_jump(chunked) <= max_jump(one_shot) + 1


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(16000, 44100), (44100, 16000), (8000, 16000), (16000, 8000), (48000, 16000), (16000, 22050)],
)
def test_chunked_resampling_equals_one_shot(in_rate: int, out_rate: int) -> None:
    pcm = sine(440, in_rate, 0.5) + sine(1234, in_rate, 0.25, amplitude=20000)
    rng = random.Random(in_rate * 7 + out_rate)
    chunked = _chunked(in_rate, out_rate, random_chunks(pcm, rng))
    one_shot = _one_shot(in_rate, out_rate, pcm)
    _assert_same_signal(chunked, one_shot)
    assert len(one_shot) == round(len(pcm) // 2 * out_rate / in_rate)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rates=st.sampled_from([(44100, 16000), (16000, 24000), (8000, 16000), (16000, 48000)]),
    cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=12),
)
def test_chunk_boundaries_do_not_matter(rates: tuple[int, int], cuts: list[int]) -> None:
    in_rate, out_rate = rates
    pcm = sine(440, in_rate, 0.25)
    bounds = sorted({min(c, len(pcm)) for c in cuts} | {0, len(pcm)})
    chunks = [pcm[a:b] for a, b in itertools.pairwise(bounds)]
    _assert_same_signal(_chunked(in_rate, out_rate, chunks), _one_shot(in_rate, out_rate, pcm))


def test_full_scale_input_clips_instead_of_wrapping() -> None:
    # A full-scale sine overshoots after filtering; int16 must saturate, not wrap around.
    pcm = sine(3000, 44100, 0.2, amplitude=32767)
    x = _one_shot(44100, 16000, pcm)
    assert max_jump(x) < 2 * 32767 * math.sin(math.pi * 3000 / 16000) * 1.1


def test_reset_forgets_state() -> None:
    noise = np.random.default_rng(1).integers(-30000, 30000, 4411, dtype=np.int16)
    pcm = sine(440, 44100, 0.2)
    fresh = _one_shot(44100, 16000, pcm)

    r = PcmResampler(44100, 16000)
    r.process(noise.astype("<i2").tobytes() + b"\x7f")  # ends mid-sample too
    r.reset()
    assert np.array_equal(samples(r.process(pcm) + r.flush()), fresh)
    # flush() also leaves the resampler ready for a new signal.
    assert np.array_equal(samples(r.process(pcm) + r.flush()), fresh)


@pytest.mark.parametrize("name", ["pcm_44100", "ulaw_8000"])
def test_decoder_and_encoder_reset_forget_state(name: str) -> None:
    fmt = parse_audio_format(name)
    server = sine(440, fmt.sample_rate, 0.2)
    wire = ulaw_encode(server) if fmt.encoding == "ulaw" else server
    fresh = AgentAudioDecoder(name)
    expected = fresh.decode(wire) + fresh.flush()

    used = AgentAudioDecoder(name)
    used.decode(bytes(range(256)) * 7)  # interrupted garbage
    used.reset()
    assert used.decode(wire) + used.flush() == expected

    mic = sine(440, 16000, 0.2)
    enc_fresh = UserAudioEncoder(name)
    enc_expected = enc_fresh.encode(mic) + enc_fresh.flush()
    enc_used = UserAudioEncoder(name)
    enc_used.encode(sine(3000, 16000, 0.1, amplitude=30000) + b"\x01")
    enc_used.reset()
    assert enc_used.encode(mic) + enc_used.flush() == enc_expected


def test_empty_chunks_are_fine() -> None:
    for name in AUDIO_FORMATS:
        assert AgentAudioDecoder(name).decode(b"") == b""
        assert UserAudioEncoder(name).encode(b"") == b""
    r = PcmResampler(16000, 44100)
    assert r.process(b"") == b""
    assert r.flush() == b""
