"""Harmonia's song engines against the plain library calls: ACE-Step 1.5 (diffusers' AceStepPipeline)
and htdemucs (demucs' apply_model), same model, same input, in the same process.

The full-size models are built in code with random weights: the same compute as the real
checkpoints. ACE-Step 1.5 turbo's architecture as diffusers' defaults give it (a 24-layer DiT
of width 2048, the condition encoder with its 8-layer lyric and 4-layer timbre encoders, a
Qwen3-Embedding-0.6B-sized text encoder, the 48 kHz Oobleck VAE with hop 1920), and HTDemucs
with demucs' defaults (htdemucs: 48 channels, depth 4, a 5-layer cross-domain transformer,
7.8 s segments). Weights stay in memory; their configs and a byte-level tokenizer are saved as
a snapshot folder for the engine's checks. ``--tiny`` runs the tiny models instead (seconds).

For each dtype (float32, bfloat16), in a process of its own (so peak memory is its own): one
short warm-up call, then a plain call and the engine's call on the same request, best of R:
seconds per denoising step (between step callbacks), the whole call, the real-time factor,
the engine's overhead against the plain call, whether both gave the same samples, and the
process's peak resident memory. demucs runs in float32 (the engine's only dtype).

    .venv/bin/python benchmarks/bench_songs.py                      # the full-size figures
    .venv/bin/python benchmarks/bench_songs.py --tiny --steps 2     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import against_plain, finish, peak_rss_gib, run_children

from harmonia.engines.base import LoadedModel
from harmonia.requests import SongRequest, StemsRequest
from harmonia.workbench import Workbench

ACE_STEP_PARAMS = (
    3.2e9  # DiT 2.0e9 (with its embedders), condition encoder 0.6e9, text encoder 0.6e9, VAE 0.1e9
)
STYLE = "dreamy synth pop, female vocals, warm pads"
LYRICS = "[verse]\nNeon rivers in the rain\nEvery window calls your name\n[chorus]\nHold on to the light"


def full_size_ace_step():
    """ACE-Step 1.5 turbo's components at their real sizes (diffusers' defaults), random weights."""
    from diffusers import (
        AceStepPipeline,
        AceStepTransformer1DModel,
        AutoencoderOobleck,
        FlowMatchEulerDiscreteScheduler,
    )
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    from harmonia.engines.stable_audio import _quiet

    text_encoder = Qwen3Model(
        Qwen3Config(vocab_size=151_669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32_768)
    ).eval()  # fmt: skip
    with _quiet():
        vae = AutoencoderOobleck(
            encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
            decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48_000,
        ).eval()  # fmt: skip
    return AceStepPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(), transformer=AceStepTransformer1DModel(is_turbo=True).eval(),
        condition_encoder=AceStepConditionEncoder().eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
    )  # fmt: skip


def _tokenizer():
    """A byte-level Qwen tokenizer (an offline vocabulary: its ids fit Qwen3's 151669)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {t: i for i, t in enumerate([*sorted(ByteLevel.alphabet()), "<|endoftext|>"])}
    return Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                          model_max_length=4096)  # fmt: skip


def ace_step_engine(args, folder: Path):
    from harmonia.engines.ace_step import AceStepEngine, model_facts

    if args.tiny:
        wb = _tiny_wb(folder, "ace-step")
        return AceStepEngine.load(wb, "tiny-ace-step", device="cpu", dtype=args.dtype, threads=args.threads)
    from harmonia.engines.base import available_memory_bytes

    need = ACE_STEP_PARAMS * torch.finfo(getattr(torch, args.dtype)).bits // 8 * 1.3
    free = available_memory_bytes()
    if free is not None and need > free:
        raise SystemExit(
            f"ace-step {args.dtype}: the full-size model needs about {need / 2**30:.1f} GiB but "
            f"{free / 2**30:.1f} GiB are available; skipped."
        )
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, args.dtype))  # built in its dtype: no float32 copy at the peak
    try:
        with torch.no_grad():
            pipe = full_size_ace_step()
    finally:
        torch.set_default_dtype(before)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_config(folder)
    for name in ("transformer", "vae", "condition_encoder"):
        getattr(pipe, name).save_config(folder / name)
    (folder / "text_encoder").mkdir(exist_ok=True)
    pipe.text_encoder.config.to_json_file(folder / "text_encoder" / "config.json")
    pipe.scheduler.save_config(folder / "scheduler")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    loaded = LoadedModel(
        "acestep-v15 turbo (random)", folder, None, None, "cpu", args.dtype, args.threads, 0.0
    )
    return AceStepEngine(pipe, loaded, model_facts(folder))


def _tiny_wb(folder: Path, builder: str) -> Workbench:
    from harmonia.tiny import build_tiny

    (folder / "params.yaml").write_text(
        f"models:\n  tiny-{builder}: {{builder: {builder}, seed: 0, engine: {builder}, license: mit}}\n"
    )
    wb = Workbench.open(folder)
    build_tiny(wb, builder, seed=0)
    return wb


def plain_ace_step(pipe, r: SongRequest, marks: list[float]) -> np.ndarray:
    """What a diffusers user writes: one seeded generator; the step callback only records times."""
    generator = torch.Generator("cpu").manual_seed(r.seed)

    def on_step(p, i, t, tensors):
        marks.append(time.perf_counter())
        return {}

    with torch.inference_mode():
        out = pipe(
            r.prompts[0], lyrics=r.lyrics, audio_duration=r.duration_s, vocal_language=r.language,
            num_inference_steps=r.steps, guidance_scale=r.guidance_scale, shift=r.shift, generator=generator,
            output_type="np", callback_on_step_end=on_step,
        )  # fmt: skip
    return out.audios[0]


def one_ace_step(args) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-songs-") as tmp:
        started = time.perf_counter()
        engine = ace_step_engine(args, Path(tmp))
        build_s = time.perf_counter() - started
        request = SongRequest(STYLE, lyrics=LYRICS, duration_s=args.seconds, steps=args.steps, seed=0)
        request = engine.check(request, engine.loaded.path)
        plain_ace_step(
            engine.pipe, SongRequest(STYLE, lyrics=LYRICS, duration_s=args.seconds, steps=1, seed=0), []
        )
        rows: dict[str, list] = {"plain": [], "engine": []}
        same = True
        for _ in range(args.runs):
            marks: list[float] = []
            t0 = time.perf_counter()
            plain = plain_ace_step(engine.pipe, request, marks)
            rows["plain"].append((time.perf_counter() - t0, np.diff([t0, *marks]).tolist()))
            engine_marks: list[float] = []
            t0 = time.perf_counter()
            result = engine.generate(
                request, progress=lambda d, t, m=engine_marks: m.append(time.perf_counter())
            )
            rows["engine"].append((time.perf_counter() - t0, np.diff([t0, *engine_marks]).tolist()))
            same = same and bool(np.array_equal(result.audio[0], plain[:, : result.audio[0].shape[1]]))
    return _figures(args, "ace-step", rows, same, build_s, args.seconds)


def one_demucs(args) -> dict:
    from fractions import Fraction

    from demucs.apply import BagOfModels, apply_model
    from demucs.htdemucs import HTDemucs

    from harmonia.audio import from_array
    from harmonia.engines.demucs import DemucsEngine

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-stems-") as tmp:
        started = time.perf_counter()
        if args.tiny:
            engine = DemucsEngine.load(
                _tiny_wb(Path(tmp), "demucs"), "tiny-demucs", device="cpu", threads=args.threads
            )
        else:
            import yaml
            from safetensors.torch import save_file

            torch.manual_seed(0)
            kwargs = {"sources": ["drums", "bass", "other", "vocals"], "segment": Fraction(39, 5)}
            model = HTDemucs(**kwargs).eval()
            segment = {"_type": "fraction", "numerator": 39, "denominator": 5}
            meta = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]",
                    "kwargs": json.dumps({"sources": kwargs["sources"], "segment": segment})}  # fmt: skip
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, f"{tmp}/bench.safetensors", metadata=meta)
            Path(tmp, "htdemucs.yaml").write_text(yaml.safe_dump({"models": ["bench"]}))  # what check() reads
            loaded = LoadedModel(
                "htdemucs (random)", Path(tmp), None, None, "cpu", "float32", args.threads, 0.0
            )
            engine = DemucsEngine(BagOfModels([model]), loaded)
        build_s = time.perf_counter() - started
        rate = engine.sample_rate
        t = np.arange(int(args.seconds * rate)) / rate
        wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sign(np.sin(2 * np.pi * 2 * t)))).astype(
            np.float32
        )
        mix = np.stack([wave, wave])
        request = StemsRequest(source=from_array(mix, rate))
        rows: dict[str, list] = {"plain": [], "engine": []}
        same = True
        for _ in range(args.runs):
            marks: list[float] = []
            t0 = time.perf_counter()
            with torch.inference_mode():
                plain = apply_model(engine.bag, torch.from_numpy(mix)[None], shifts=0, split=True, overlap=0.25,
                                    callback=lambda d, m=marks: d.get("state") == "end" and m.append(time.perf_counter()))[0]  # fmt: skip
            rows["plain"].append((time.perf_counter() - t0, np.diff([t0, *marks]).tolist()))
            engine_marks: list[float] = []
            t0 = time.perf_counter()
            result = engine.generate(
                request, progress=lambda d, t, m=engine_marks: m.append(time.perf_counter())
            )
            rows["engine"].append((time.perf_counter() - t0, np.diff([t0, *engine_marks]).tolist()))
            import io

            import soundfile as sf

            vocals, _ = sf.read(io.BytesIO(result.takes[0].data), dtype="float32", always_2d=True)
            same = same and bool(np.array_equal(vocals.T, plain[engine.bag.sources.index("vocals")].numpy()))
    return _figures(args, "demucs", rows, same, build_s, args.seconds)


def _figures(args, part: str, rows: dict, same: bool, build_s: float, seconds: float) -> dict:
    best = {k: min(v, key=lambda r: r[0]) for k, v in rows.items()}

    def figures(total: float, gaps: list[float]) -> dict:
        steps = gaps[1:] if len(gaps) > 1 else gaps  # the first gap includes text or audio encoding
        return {"seconds": round(total, 4), "seconds_per_step": round(float(np.median(steps)), 4),
                "real_time_factor": round(seconds / total, 4)}  # fmt: skip

    plain, eng = figures(*best["plain"]), figures(*best["engine"])
    return {
        "part": part,
        "dtype": args.dtype,
        "build_or_load_s": round(build_s, 2),
        "duration_s": seconds,
        "plain": plain,
        "engine": eng,
        "engine_overhead_pct": round(100 * (eng["seconds"] / plain["seconds"] - 1), 2),
        "same_samples": same,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models (a smoke run)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per call (default 8, turbo's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of song (default 10)")
    parser.add_argument("--runs", type=int, default=1, help="best of R (default 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--parts", default="ace-step,demucs")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # the child process's one part and dtype
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(one_ace_step(args) if args.part == "ace-step" else one_demucs(args)))
        return
    runs = [
        (f"{part:8} {dtype:9}", ["--part", part, "--dtype", dtype, "--steps", str(args.steps), "--seconds",
                                 str(args.seconds), "--runs", str(args.runs), "--threads", str(args.threads)])
        for part in args.parts.split(",")
        for dtype in (args.dtypes.split(",") if part == "ace-step" else ["float32"])
    ]  # fmt: skip
    rows = run_children(__file__, runs, args.tiny, against_plain)
    model = "tiny" if args.tiny else "ACE-Step 1.5 turbo and htdemucs architectures, random weights"
    finish(args, model, rows)


if __name__ == "__main__":
    main()
