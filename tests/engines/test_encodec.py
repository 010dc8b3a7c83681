"""The ``encodec`` path "channels-last": EnCodec's decoder after its LSTM in channels-last
layout, chunk by chunk (harmonia/engines/encodec.py), chosen, recorded and replayed like the
decoding step's paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harmonia.engines import musicgen
from harmonia.engines.encodec import ENCODEC_PATHS, ChannelsLastDecoder, unsupported
from harmonia.engines.musicgen import MusicGenEngine
from harmonia.errors import RequestError
from harmonia.requests import MusicRequest


def test_channels_last_decodes_transformers_audio_to_rounding_and_its_context_is_what_makes_it(wb):
    engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    decoder = engine.model.audio_encoder.decoder  # transformers' (the tests' HARMONIA_ENCODEC)
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


def test_channels_last_refuses_a_decoder_it_would_compute_otherwise():
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(
        audio_channels=1,
        upsampling_ratios=[2, 2],
        hidden_size=8,
        num_filters=2,
        num_lstm_layers=1,
        norm_type="time_group_norm",
    )
    decoder = EncodecModel(config).decoder
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
    monkeypatch.delenv("HARMONIA_ENCODEC")
    cache = wb.state_dir / "calibration.json"
    cache.unlink(missing_ok=True)
    measured = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    line = measured.loaded.choices["encodec"]
    assert line.startswith(("torch (measured: channels-last ", "channels-last (measured: channels-last "))
    assert " ms, torch " in line
    (key,) = [k for k in json.loads(cache.read_text()) if "| encodec " in k]
    assert "| 2 threads | encodec EnCodec decoder of 16 to 1 channel(s), 4 filters, ratios " in key
    assert key.endswith(", 100 frames")
    exact = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)
    assert "encodec" not in exact.loaded.choices
    assert type(exact.model.audio_encoder.decoder).__name__ == "EncodecDecoder"

    request = MusicRequest(["calm piano"], duration_s=0.6, seed=3)
    made, audio = {}, {}
    for path in ENCODEC_PATHS:
        monkeypatch.setenv("HARMONIA_ENCODEC", path)
        forced = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
        assert forced.loaded.choices == {"attention": "sdpa (forced)", "encodec": f"{path} (forced)"}
        assert isinstance(forced.model.audio_encoder.decoder, ChannelsLastDecoder) == (
            path == "channels-last"
        )
        audio[path] = forced.generate(request).audio
        assert np.array_equal(audio[path], forced.generate(request).audio)
        made[path] = generate(
            wb, "tiny-musicgen", request, threads=2, precision="int4", previews=False
        ).artifact
        assert made[path].manifest.runtime.paths == {"attention": "sdpa", "encodec": path}
    # the same tokens (the decoder comes after sampling), so the same audio to rounding
    assert np.abs(audio["channels-last"] - audio["torch"]).max() <= 1e-5 * np.abs(audio["torch"]).max()
    assert made["torch"].id != made["channels-last"].id
    assert "paths" not in made["torch"].manifest.identity["runtime"]  # the id int4 had before the choice
    assert made["channels-last"].manifest.identity["runtime"]["paths"] == {"encodec": "channels-last"}

    monkeypatch.setenv("HARMONIA_ENCODEC", "torch")  # this machine would now take torch ...
    generation._engines.clear()
    assert reproduce(wb, made["channels-last"].id).identical  # ... the recorded path is replayed
    replayed = generation.load_engine(
        wb, "tiny-musicgen", threads=2, precision="int4", paths=(("encodec", "channels-last"),)
    )
    assert replayed.loaded.choices["encodec"] == "channels-last (recorded)"
    assert isinstance(replayed.model.audio_encoder.decoder, ChannelsLastDecoder)
    assert MusicGenEngine.replayed_paths(musicgen.Runtime("cpu", "float32", 2, "int4")) == {
        "attention": "sdpa",
        "encodec": "torch",
    }  # a manifest from before the choice ran transformers' decoder, and still does


def test_a_recorded_channels_last_decoder_that_cannot_run_stops_in_one_line(wb, monkeypatch):
    monkeypatch.setenv("HARMONIA_ENCODEC", "channels-last")
    monkeypatch.setattr(
        musicgen, "channels_last_unsupported", lambda decoder: "it has a GroupNorm after the LSTM"
    )
    with pytest.raises(
        RequestError,
        match=r"^This run needs EnCodec's decoder channels-last \(encodec: channels-last\), but it has a "
        r"GroupNorm after the LSTM\. Ask for encodec torch \(a new artifact\)\.$",
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")
