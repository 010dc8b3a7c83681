import json

import numpy as np
import pytest
import soundfile as sf

from harmonia.datasets import EVAL_PROMPTS, build_dataset, load_prompts
from harmonia.errors import BuilderError
from harmonia.evaluation import clipping_ratio, signal_facts, silence_ratio, true_peak_dbtp

RATE = 32_000


def test_synthetic_audio_is_deterministic_and_captioned(workbench):
    a = build_dataset(workbench, "synthetic-audio", name="a", seed=3)
    b = build_dataset(workbench, "synthetic-audio", name="b", seed=3)
    c = build_dataset(workbench, "synthetic-audio", name="c", seed=4)
    assert a.inventory.digest == b.inventory.digest != c.inventory.digest
    captions = [json.loads(line) for line in (a.path / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 9 and {c["file"].split("/")[0] for c in captions} == {"tones", "chords", "drums"}
    data, rate = sf.read(a.path / "tones/a4.wav", dtype="float32", always_2d=True)
    assert rate == RATE and data.shape == (2 * RATE, 1)
    assert signal_facts(data.T, rate)["spectral_centroid_hz"] == pytest.approx(
        440, abs=10
    )  # fades spread it a little


def test_eval_prompts_and_limits(workbench):
    built = build_dataset(workbench, "eval-prompts")
    assert built.name == "eval-prompts" and built.inventory.source.builder == "eval-prompts"
    entries = load_prompts(workbench, "eval-prompts")
    assert len(entries) == len(EVAL_PROMPTS) and entries[0]["id"] == "p000" and entries[0]["tags"]
    assert [e["id"] for e in load_prompts(workbench, "eval-prompts", limit=2)] == ["p000", "p001"]
    with pytest.raises(
        BuilderError, match=r"Unknown dataset builder 'x'\. Known builders: eval-prompts, synthetic-audio\."
    ):
        build_dataset(workbench, "x")


def test_signal_facts_on_known_signals():
    t = np.arange(RATE) / RATE
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None]
    assert true_peak_dbtp(sine, RATE) == pytest.approx(20 * np.log10(0.5), abs=0.05)
    clipped = np.clip(sine * 4, -1, 1)
    assert 0.5 < clipping_ratio(clipped) < 1 and clipping_ratio(sine) == 0
    half = sine.copy()
    half[:, : RATE // 2] = 0
    assert silence_ratio(half, RATE) == pytest.approx(0.5, abs=0.05) and silence_ratio(sine, RATE) == 0
    facts = signal_facts(sine, RATE)
    assert facts["duration_s"] == 1.0 and facts["spectral_centroid_hz"] == pytest.approx(1000, abs=2)
    assert facts["loudness_lufs"] == pytest.approx(-9.0, abs=1.0)
