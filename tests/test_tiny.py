"""Tiny builders: the real architectures, loadable offline, byte-identical from the same seed."""

import json

import pytest
import torch

from harmonia.errors import BuilderError
from harmonia.inventory import read_inventory
from harmonia.snapshots import verify
from harmonia.tiny import CODEBOOK_SIZE, NUM_CODEBOOKS, build_tiny
from harmonia.workbench import Workbench
from tests.conftest import run_cli


def _declare(workbench, builder, name, seed):
    params = workbench.root / "params.yaml"  # a name must be declared before it is built
    params.write_text(
        params.read_text().replace(
            "models:\n", f"models:\n  {name}: {{builder: {builder}, seed: {seed}, engine: musicgen}}\n", 1
        )
    )


def _build_in_fresh_process(workbench, builder, name, seed):
    _declare(workbench, builder, name, seed)
    proc = run_cli("models", "tiny", builder, "--name", name, "--seed", str(seed), cwd=workbench.root)
    assert proc.returncode == 0, proc.stderr
    return read_inventory(workbench.snapshot_dir("model", name))


def _build_in_this_process(workbench, builder, name, seed):
    _declare(workbench, builder, name, seed)
    build_tiny(Workbench.open(workbench.root), builder, name=name, seed=seed)
    return read_inventory(workbench.snapshot_dir("model", name))


@pytest.mark.parametrize("builder", ["musicgen", "musicgen-stereo", "musicgen-melody"])
def test_same_seed_same_bytes_across_processes(workbench, builder):
    """a: built in a fresh `harmonia models tiny` process; b: in this one (a process that has run other
    tests); c: another seed. One process start per builder instead of three."""
    a = _build_in_fresh_process(workbench, builder, "a", 7)
    b = _build_in_this_process(workbench, builder, "b", 7)
    c = _build_in_this_process(workbench, builder, "c", 8)
    assert [(f.path, f.size, f.sha256) for f in a.files] == [(f.path, f.size, f.sha256) for f in b.files]
    assert a.digest == b.digest != c.digest
    weights = {inv.name: inv.by_path()["model.safetensors"].sha256 for inv in (a, b, c)}
    assert weights["a"] == weights["b"] != weights["c"]
    assert a.source.type == "synthetic" and a.source.builder == builder and a.source.seed == 7
    assert set(a.source.versions) == {"torch", "transformers", "safetensors", "tokenizers"}
    assert all(not f.path.endswith((".bin", ".pt", ".ckpt", ".pth")) for f in a.files)


def test_tiny_musicgen_loads_offline_and_its_audio_depends_on_the_codes(workbench):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    built = build_tiny(workbench, "musicgen", seed=0)
    assert built.name == "tiny-musicgen" and verify(workbench, "model", "tiny-musicgen").ok
    model = MusicgenForConditionalGeneration.from_pretrained(built.path, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(built.path, local_files_only=True)
    assert model.config.audio_encoder.sampling_rate == 32_000
    assert model.config.decoder.num_codebooks == NUM_CODEBOOKS == model.config.audio_encoder.num_quantizers
    for layer in model.audio_encoder.quantizer.layers:
        assert layer.codebook.embed.abs().sum() > 0  # filled, not the all-zero random init

    # different codes decode to different audio
    codes = torch.randint(
        0, CODEBOOK_SIZE, (1, 1, NUM_CODEBOOKS, 50), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        one = model.audio_encoder.decode(codes, [None]).audio_values
        two = model.audio_encoder.decode((codes + 1) % CODEBOOK_SIZE, [None]).audio_values
    assert one.shape == (1, 1, 32_000) and not torch.equal(one, two)

    # and the whole text-to-audio path runs
    inputs = processor(text=["calm piano"], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        audio = model.generate(**inputs, max_new_tokens=20)
    assert audio.shape[:2] == (1, 1) and audio.shape[2] > 0 and torch.isfinite(audio).all()


def test_tiny_musicgen_melody_loads_offline(workbench):
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    built = build_tiny(workbench, "musicgen-melody", seed=0)
    model = MusicgenMelodyForConditionalGeneration.from_pretrained(built.path, local_files_only=True)
    assert model.config.num_chroma == 12
    assert (
        AutoTokenizer.from_pretrained(built.path, local_files_only=True)("la la").input_ids[-1] == 1
    )  # </s>
    pre = json.loads((built.path / "preprocessor_config.json").read_text())
    assert (
        pre["feature_extractor_type"] == "MusicgenMelodyFeatureExtractor" and pre["sampling_rate"] == 32_000
    )


def test_the_callers_random_state_is_untouched(workbench):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(workbench, "musicgen", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_builder_and_bad_seed(workbench):
    with pytest.raises(BuilderError) as exc:
        build_tiny(workbench, "musicgne")
    assert (
        str(exc.value)
        == "Unknown tiny builder 'musicgne'. Known builders: musicgen, musicgen-stereo, musicgen-melody, clap, lm, stable-audio, "
        "audiogen, magnet, audiogen-t5, mbd, t5, ace-step, demucs, whisper, wan."
    )
    with pytest.raises(BuilderError, match=r"seed must be an integer in \[0, 2\*\*63\), got -1"):
        build_tiny(workbench, "musicgen", seed=-1)
    assert not workbench.kind_dir("model").exists() or list(workbench.kind_dir("model").iterdir()) == []
