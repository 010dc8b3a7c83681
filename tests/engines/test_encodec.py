"""The ``encodec_layout`` path "channels-last": EnCodec's decoder after its LSTM in channels-last
layout, chunk by chunk (harmonia/engines/encodec.py), chosen, recorded and replayed like the
decoding step's paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harmonia.engines import musicgen
from harmonia.engines.encodec import (
    CHUNK_FRAMES,
    ENCODEC_LAYOUTS,
    HALO_FRAMES,
    ChannelsLastDecoder,
    context_frames,
    split,
    unsupported,
)
from harmonia.engines.musicgen import MusicGenEngine
from harmonia.errors import RequestError
from harmonia.requests import MusicRequest


def test_channels_last_decodes_transformers_audio_to_rounding_and_its_context_is_what_makes_it(wb):
    engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    decoder = engine.model.audio_encoder.decoder  # transformers' (the tests' HARMONIA_ENCODEC_LAYOUT)
    assert type(decoder).__name__ == "EncodecDecoder" and unsupported(decoder) is None
    width = decoder.layers[0].conv.in_channels
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for frames in (1, 5, 8, 9, 37):
            hidden = torch.randn(1, width, frames, generator=generator)
            plain = decoder(hidden)
            for chunk in (4, 8, 100):  # several chunks, a short last one, one chunk
                fast = ChannelsLastDecoder(decoder, chunk_frames=chunk)
                got = fast(hidden)
                assert got.shape == plain.shape == (1, 1, frames * fast.hop)
                assert (got - plain).abs().max() <= 1e-5 * plain.abs().max()
                assert torch.equal(got, fast(hidden))  # deterministic
        hidden = torch.randn(1, width, 37, generator=generator)
        plain = decoder(hidden)
        blind = ChannelsLastDecoder(decoder, chunk_frames=4, halo_frames=0)(hidden)  # chunks without context
        assert (blind - plain).abs().max() > 1e-3 * plain.abs().max()


def _small_decoder(**settings) -> torch.nn.Module:
    """A random EnCodec decoder of 8 hidden channels, 4 filters and ratios 4, 2 (a hop of 8)."""
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(
        audio_channels=1,
        upsampling_ratios=[4, 2],
        hidden_size=8,
        num_filters=4,
        num_lstm_layers=1,
        **settings,
    )
    return EncodecModel(config).decoder.eval()


def test_channels_last_refuses_a_decoder_it_would_compute_otherwise():
    decoder = _small_decoder(norm_type="time_group_norm")
    why = "its convolutions are normalised by 'time_group_norm', not weight_norm"
    assert unsupported(decoder) == why
    with pytest.raises(ValueError, match=rf"^EnCodec's decoder cannot run channels-last: {why}$"):
        ChannelsLastDecoder(decoder)


def test_the_encodec_path_is_measured_forced_recorded_and_replayed(wb, monkeypatch):
    """bf16, int8 and int4 choose between transformers' EnCodec decoder and channels-last; exact
    keeps transformers' (its bytes). transformers' is what every mode ran before the choice: it
    leaves ids as they were, and a manifest that names no audio decoder replays it."""
    from harmonia import generation
    from harmonia.generation import generate, reproduce

    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")  # (the attention path is tested on its own)
    monkeypatch.delenv("HARMONIA_ENCODEC_LAYOUT")
    cache = wb.state_dir / "calibration.json"
    cache.unlink(missing_ok=True)
    measured = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    line = measured.loaded.choices["encodec_layout"]
    assert line.startswith(("torch (measured: channels-last ", "channels-last (measured: channels-last "))
    assert " ms, torch " in line
    (key,) = [k for k in json.loads(cache.read_text()) if "| encodec_layout " in k]
    assert "| 2 threads | encodec_layout EnCodec decoder of 16 to 1 channel(s), 4 filters, ratios " in key
    assert key.endswith(", weight_norm, float32, 100 frames")
    monkeypatch.setenv("HARMONIA_ENCODEC_LAYOUT", "channels-last")  # exact ignores it: transformers' bytes
    exact = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)
    assert "encodec_layout" not in exact.loaded.choices
    assert type(exact.model.audio_encoder.decoder).__name__ == "EncodecDecoder"
    monkeypatch.delenv("HARMONIA_ENCODEC_LAYOUT")
    bfloat16 = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16", dtype="bfloat16")
    assert bfloat16.loaded.choices["encodec_layout"].split()[1] == "(measured:"  # its own key: its dtype
    assert bfloat16.generate(MusicRequest(["calm piano"], duration_s=0.2, seed=1)).audio.shape[0] == 1

    request = MusicRequest(["calm piano"], duration_s=0.6, seed=3)
    made, audio = {}, {}
    for path in ENCODEC_LAYOUTS:
        monkeypatch.setenv("HARMONIA_ENCODEC_LAYOUT", path)
        forced = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
        assert forced.loaded.choices == {"attention": "sdpa (forced)", "encodec_layout": f"{path} (forced)"}
        assert isinstance(forced.model.audio_encoder.decoder, ChannelsLastDecoder) == (
            path == "channels-last"
        )
        audio[path] = forced.generate(request).audio
        assert np.array_equal(audio[path], forced.generate(request).audio)
        made[path] = generate(
            wb, "tiny-musicgen", request, threads=2, precision="int4", previews=False
        ).artifact
        assert made[path].manifest.runtime.paths == {"attention": "sdpa", "encodec_layout": path}
    # the same tokens (the decoder comes after sampling), so the same audio to rounding
    assert np.abs(audio["channels-last"] - audio["torch"]).max() <= 1e-5 * np.abs(audio["torch"]).max()
    assert made["torch"].id != made["channels-last"].id
    assert "paths" not in made["torch"].manifest.identity["runtime"]  # the id int4 had before the choice
    assert made["channels-last"].manifest.identity["runtime"]["paths"] == {"encodec_layout": "channels-last"}

    monkeypatch.setenv("HARMONIA_ENCODEC_LAYOUT", "torch")  # this machine would now take torch ...
    generation._engines.clear()
    assert reproduce(wb, made["channels-last"].id).identical  # ... the recorded path is replayed
    replayed = generation.load_engine(
        wb, "tiny-musicgen", threads=2, precision="int4", paths=(("encodec_layout", "channels-last"),)
    )
    assert replayed.loaded.choices["encodec_layout"] == "channels-last (recorded)"
    assert isinstance(replayed.model.audio_encoder.decoder, ChannelsLastDecoder)
    assert MusicGenEngine.replayed_paths(musicgen.Runtime("cpu", "float32", 2, "int4")) == {
        "attention": "sdpa",
        "encodec_layout": "torch",
    }  # a manifest from before the choice ran transformers' decoder, and still does


@pytest.mark.parametrize(
    ("name", "precision"),
    [("tiny-musicgen", "int8"), ("tiny-musicgen-stereo", "int4"), ("tiny-musicgen-melody", "bf16")],
)
def test_channels_last_decodes_batches_stereo_and_melody_takes_to_rounding(wb, monkeypatch, name, precision):
    """Two prompts at once, a stereo model (two streams of codebooks through one EnCodec) and a
    melody model: the same tokens either way, so the same audio to rounding, take by take."""
    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")
    request = MusicRequest(["calm piano", "fast drums"], duration_s=0.5, seed=4)
    audio = {}
    for layout in ENCODEC_LAYOUTS:
        monkeypatch.setenv("HARMONIA_ENCODEC_LAYOUT", layout)
        engine = MusicGenEngine.load(wb, name, threads=2, precision=precision)
        assert dict(engine.loaded.paths)["encodec_layout"] == layout
        audio[layout] = engine.generate(request).audio
    plain, fast = audio["torch"], audio["channels-last"]
    channels = 2 if name.endswith("stereo") else 1
    assert plain.shape == fast.shape == (2, channels, 16_000) and fast.dtype == np.float32
    assert not np.array_equal(plain[0], plain[1])  # two takes, each decoded as its own
    for take in range(2):
        assert np.abs(fast[take] - plain[take]).max() <= 1e-5 * np.abs(plain[take]).max()


def test_a_recorded_channels_last_decoder_that_cannot_run_stops_in_one_line(wb, monkeypatch):
    monkeypatch.setenv("HARMONIA_ENCODEC_LAYOUT", "channels-last")
    monkeypatch.setattr(
        musicgen, "channels_last_unsupported", lambda decoder: "it has a GroupNorm after the LSTM"
    )
    with pytest.raises(
        RequestError,
        match=r"^This run needs EnCodec's decoder channels-last \(encodec_layout: channels-last\), but it has a "
        r"GroupNorm after the LSTM\. Set HARMONIA_ENCODEC_LAYOUT to torch \(a new artifact\)\.$",
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")


@pytest.mark.parametrize(
    "settings",
    [
        {"use_causal_conv": True, "trim_right_ratio": 0.5},
        {"use_causal_conv": False, "pad_mode": "replicate", "use_conv_shortcut": False},
        {"use_causal_conv": False, "num_residual_layers": 3, "dilation_growth_rate": 4},  # sees further
        {"use_causal_conv": True, "num_residual_layers": 2, "residual_kernel_size": 7},
    ],
)
def test_channels_last_follows_every_decoder_it_accepts_and_takes_the_context_its_layers_need(settings):
    torch.manual_seed(0)
    decoder = _small_decoder(**settings)
    _, tail = split(decoder)
    hop = 8
    need = context_frames(tail, hop)
    fast = ChannelsLastDecoder(decoder, chunk_frames=4)
    assert fast.hop == hop and fast.halo_frames == max(HALO_FRAMES, need)
    hidden = torch.randn(1, 8, 37)
    with torch.no_grad():
        plain, got = decoder(hidden), fast(hidden)
        assert got.shape == plain.shape == (1, 1, 37 * hop)
        off = (got - plain).abs().max()
        assert off <= 1e-5 * plain.abs().max()
        if need > 1:  # less context than the layers need is wrong at the chunks' edges, beyond rounding
            short = ChannelsLastDecoder(decoder, chunk_frames=4, halo_frames=1)
            short.halo_frames = need - 1
            assert (short(hidden) - plain).abs().max() > 10 * off + 1e-7 * plain.abs().max()


def test_the_chunking_that_fixes_a_channels_last_takes_bytes_is_pinned():
    """The bytes of every channels-last artifact follow the chunks' shapes: changing them needs a
    new path name (a new id), not an edit under the old one."""
    assert (CHUNK_FRAMES, HALO_FRAMES) == (100, 3), "a new chunking is a new path: name it in ENCODEC_LAYOUTS"
    assert ENCODEC_LAYOUTS == ("torch", "channels-last")
