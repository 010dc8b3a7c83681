import hashlib

import numpy as np
import pytest
import soundfile as sf

from harmonia.audio import (
    conform,
    facts,
    from_array,
    loudness_lufs,
    normalize_loudness,
    read_audio,
    resample,
    write_audio,
)
from harmonia.errors import AudioError

RATE = 32_000


def tone(seconds=2.0, freq=440.0, rate=RATE, amp=0.5, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def test_wav_is_exact_and_its_bytes_are_stable(tmp_path):
    x = tone(channels=2)
    a = write_audio(tmp_path / "a.wav", x, RATE, "wav")
    b = write_audio(tmp_path / "b.wav", x, RATE, "wav")
    clip = read_audio(a)
    assert clip.samples.shape == (2, 2 * RATE) and clip.sample_rate == RATE
    assert np.array_equal(clip.samples, x)  # 32-bit float: lossless
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert clip.sha256 == hashlib.sha256(a.read_bytes()).hexdigest() and clip.source == str(a)


def test_flac_is_24_bit(tmp_path):
    path = write_audio(tmp_path / "a.flac", tone(), RATE, "flac")
    assert sf.info(path).subtype == "PCM_24"
    assert np.max(np.abs(read_audio(path).samples - tone())) < 2**-22


def test_common_formats_read(tmp_path):
    sf.write(tmp_path / "x.ogg", tone()[0], RATE, format="OGG", subtype="VORBIS")
    sf.write(tmp_path / "x.aiff", tone()[0], RATE, format="AIFF", subtype="PCM_16")
    for name in ("x.ogg", "x.aiff"):
        clip = read_audio(tmp_path / name)
        assert clip.channels == 1 and clip.sample_rate == RATE and abs(clip.duration_s - 2.0) < 0.01


def test_unreadable_and_empty_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not audio")
    with pytest.raises(
        AudioError,
        match=r"^melody: cannot read .*notes.txt as audio \(.*\)\. Give a WAV, FLAC, OGG or MP3 file\.$",
    ):
        read_audio(tmp_path / "notes.txt", "melody")
    with pytest.raises(AudioError, match=r"continuation: cannot read .*missing.wav as audio"):
        read_audio(tmp_path / "missing.wav", "continuation")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), RATE)
    with pytest.raises(AudioError, match=r"melody: .*empty.wav holds no samples"):
        read_audio(tmp_path / "empty.wav", "melody")


def test_from_array_checks(tmp_path):
    assert from_array(np.zeros(100), RATE).samples.shape == (1, 100)
    with pytest.raises(
        AudioError, match=r"expected an array \[samples\] or \[channels, samples\], got shape \(2, 2, 2\)"
    ):
        from_array(np.zeros((2, 2, 2)), RATE)
    with pytest.raises(AudioError, match="NaN or infinite"):
        from_array(np.array([0.0, np.nan]), RATE)
    with pytest.raises(AudioError, match=r"sample_rate must be an integer in \[1000, 384000\], got 10"):
        from_array(np.zeros(10), 10)


def test_resample_and_conform():
    x = tone(1.0, rate=44_100)
    y = resample(x, 44_100, RATE)
    assert y.shape == (1, RATE) and y.dtype == np.float32
    assert np.array_equal(y, resample(x, 44_100, RATE))  # deterministic
    stereo = from_array(tone(1.0, channels=2), RATE)
    assert conform(stereo, RATE, 1).shape == (1, RATE)
    assert conform(from_array(tone(1.0), RATE), 16_000, 2).shape == (2, 16_000)


def test_loudness_normalisation_with_peak_guard():
    x = tone(3.0, amp=0.05)
    assert loudness_lufs(x, RATE) < -25
    y = normalize_loudness(x, RATE, -20.0)
    assert abs(loudness_lufs(y, RATE) - (-20.0)) < 0.1
    loud = normalize_loudness(x, RATE, -3.0)  # would need a peak above full scale
    assert np.max(np.abs(loud)) <= 10 ** (-1 / 20) + 1e-6
    silence = np.zeros((1, RATE), np.float32)
    assert loudness_lufs(silence, RATE) is None and np.array_equal(
        normalize_loudness(silence, RATE, -14), silence
    )


def test_facts():
    f = facts(tone(2.0, amp=0.5, channels=2), RATE)
    assert (f["sample_rate"], f["channels"], f["frames"], f["duration_s"]) == (RATE, 2, 2 * RATE, 2.0)
    assert abs(f["peak"] - 0.5) < 1e-3 and abs(f["peak_dbfs"] - (-6.02)) < 0.01
    assert f["loudness_lufs"] is not None


def test_inputs_with_nan_or_inf_and_over_long_inputs_are_refused(tmp_path):
    """Before: a NaN block was called "silent", an inf melody and a NaN continuation were accepted."""
    from harmonia.audio import MAX_INPUT_S

    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        data = np.zeros(RATE, dtype=np.float32)
        data[100:200] = value
        sf.write(tmp_path / name, data, RATE, subtype="FLOAT")
        with pytest.raises(
            AudioError, match=rf"^melody: .*{name} holds 100 NaN or infinite samples; give a file"
        ):
            read_audio(tmp_path / name, "melody")
    long = tmp_path / "long.wav"
    with sf.SoundFile(long, "w", 1000, 1, "PCM_16") as f:  # 601 s at 1 kHz: 1.2 MB
        f.write(np.zeros(int(1000 * (MAX_INPUT_S + 1)), dtype=np.int16))
    with pytest.raises(
        AudioError, match=r"^melody: .*long.wav is 601.0 s long; audio inputs are limited to 600 s\."
    ):
        read_audio(long, "melody")


def test_devices_that_make_no_samples_and_too_many_threads():
    import os
    import warnings

    from harmonia.engines.base import pick_device, pick_threads
    from harmonia.errors import RequestError

    with pytest.raises(RequestError, match=r"^device must be auto, cpu, cuda, cuda:N or mps, got 'meta'\.$"):
        pick_device("meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pick_threads(512) == 512
    assert f"threads=512 is more than this machine's {os.cpu_count()} cores" in str(caught[0].message)
