"""Harmonia's stable-audio engine against a plain diffusers `StableAudioPipeline` call, same pipeline.

The full-size model is Stable Audio Open 1.0's architecture as diffusers documents it (T5-base
text encoder, a 768-wide projection, a 24-layer DiT of 24 heads x 64 over 1024 latent frames of
64 channels, the Oobleck VAE at 44.1 kHz with hop 2048), built in code with random weights:
the same compute as the real checkpoint. Its configs and tokenizer are saved as a snapshot
folder (the engine's checks read them), its weights stay in memory (writing and hashing
5 GB is not what is measured here). ``--tiny`` uses the tiny model through Harmonia's whole
verified loading path instead: a smoke run of seconds.

For each dtype (float32, bfloat16), in a process of its own (so peak memory is its own), the
script makes one short warm-up call, then alternates a plain ``pipe(...)`` call and
``StableAudioEngine.generate`` (type sfx: its shaping is a trim) on the same prompt, seed,
steps and length, best of R, and reports seconds per denoising step (between consecutive
step callbacks), the whole call, the real-time factor (seconds of audio per second), the
engine's overhead against the plain call, whether both gave the same samples, and the
process's peak resident memory.

    .venv/bin/python benchmarks/bench_samples.py                    # the full-size figures
    .venv/bin/python benchmarks/bench_samples.py --tiny --steps 3   # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import against_plain, finish, peak_rss_gib, run_children

from harmonia.engines.base import LoadedModel
from harmonia.engines.stable_audio import StableAudioEngine, _quiet, model_facts
from harmonia.requests import SampleRequest
from harmonia.samples import sfx
from harmonia.tiny import _t5_tokenizer
from harmonia.workbench import Workbench

PROMPT = "a punchy techno kick drum with a short tail"


def full_size_pipeline():
    """Stable Audio Open 1.0's components at their real sizes, random weights (diffusers' defaults are its sizes)."""
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = _t5_tokenizer()  # an offline vocabulary: its ids fit T5-base's 32128
    tokenizer.model_max_length = 128
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu")
    ).eval()  # fmt: skip
    projection = StableAudioProjectionModel(
        text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512
    )
    transformer = StableAudioDiTModel().eval()  # sample_size 1024, 64 channels, 24 layers, 24 x 64 heads
    with _quiet():
        vae = AutoencoderOobleck().eval()  # 44.1 kHz stereo, hop 2048, 64 latent channels
    scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
        prediction_type="v_prediction", rho=7.0, final_sigmas_type="zero",
    )  # fmt: skip
    return StableAudioPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, projection_model=projection.eval(),
    )  # fmt: skip


def save_configs(pipe, folder: Path) -> None:
    """model_index.json, each component's config and the tokenizer: what the engine's checks read."""
    pipe.save_config(folder)
    for name in ("transformer", "vae", "projection_model", "text_encoder"):
        component = getattr(pipe, name)
        (folder / name).mkdir(parents=True, exist_ok=True)
        if hasattr(component, "save_config"):
            component.save_config(folder / name)
        else:
            component.config.to_json_file(folder / name / "config.json")
    pipe.scheduler.save_config(folder / "scheduler")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")


def engine_for(args, dtype: str, folder: Path) -> StableAudioEngine:
    if args.tiny:
        from harmonia.tiny import build_tiny

        (folder / "params.yaml").write_text(
            "models:\n  tiny-stable-audio: {builder: stable-audio, seed: 0, engine: stable-audio, license: mit}\n"
        )
        wb = Workbench.open(folder)
        build_tiny(wb, "stable-audio", seed=0)
        return StableAudioEngine.load(
            wb, "tiny-stable-audio", device="cpu", dtype=dtype, threads=args.threads
        )
    torch.manual_seed(0)
    with torch.no_grad():
        pipe = full_size_pipeline().to(dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    save_configs(pipe, folder)
    loaded = LoadedModel(
        "stable-audio-open-1.0 (random)", folder, None, None, "cpu", dtype, args.threads, 0.0
    )
    return StableAudioEngine(pipe, loaded, model_facts(folder))


def plain_call(pipe, request: SampleRequest, marks: list[float]):
    """What a diffusers user writes: one seeded generator, the step callback only records times."""
    generator = torch.Generator("cpu").manual_seed(request.seed)
    with torch.inference_mode(), _quiet():
        out = pipe(
            request.prompts[0], audio_end_in_s=request.duration_s, num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale, generator=generator, output_type="np",
            callback=lambda i, t, x: marks.append(time.perf_counter()), callback_steps=1,
        )  # fmt: skip
    return out.audios[0]


def one_dtype(args) -> dict:
    """Runs in its own process: build, warm up, then alternate plain and engine calls."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-samples-") as tmp:
        started = time.perf_counter()
        engine = engine_for(args, args.dtype, Path(tmp))
        build_s = time.perf_counter() - started
        duration = min(args.seconds, engine.facts.max_duration_s)
        request = SampleRequest(PROMPT, type="sfx", duration_s=duration, steps=args.steps, seed=0)
        plain_call(engine.pipe, replace(request, steps=1), [])  # one-off costs of a first call
        rows = {"plain": [], "engine": []}
        same = True
        for _ in range(args.runs):
            marks: list[float] = []
            t0 = time.perf_counter()
            plain_audio = plain_call(engine.pipe, request, marks)
            t1 = time.perf_counter()
            rows["plain"].append((t1 - t0, np.diff([t0, *marks]).tolist()))
            engine_marks: list[float] = []
            t0 = time.perf_counter()
            result = engine.generate(
                request, progress=lambda d, t, marks=engine_marks: marks.append(time.perf_counter())
            )
            t1 = time.perf_counter()
            rows["engine"].append((t1 - t0, np.diff([t0, *engine_marks]).tolist()))
            # the engine's take is the plain call's audio trimmed (type sfx), to the bit
            same = same and bool(np.array_equal(result.audio[0], sfx(plain_audio, engine.sample_rate)))
    best = {k: min(v, key=lambda r: r[0]) for k, v in rows.items()}

    def figures(total: float, gaps: list[float]) -> dict:
        steps = gaps[1:] if len(gaps) > 1 else gaps  # the first gap includes text encoding
        return {
            "seconds": round(total, 4),
            "seconds_per_step": round(float(np.median(steps)), 4),
            "real_time_factor": round(duration / total, 4),
        }

    plain, eng = figures(*best["plain"]), figures(*best["engine"])
    return {
        "dtype": args.dtype,
        "build_or_load_s": round(build_s, 2),
        "duration_s": round(duration, 4),
        "plain": plain,
        "engine": eng,
        "engine_overhead_pct": round(100 * (eng["seconds"] / plain["seconds"] - 1), 2),
        "same_samples": same,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model (a smoke run)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per call (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of audio asked for (default 10)")
    parser.add_argument("--runs", type=int, default=1, help="best of R (default 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--dtype", help=argparse.SUPPRESS)  # the child process's one dtype
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.dtype:
        print(json.dumps(one_dtype(args)))
        return
    runs = [
        (f"{dtype:9}", ["--dtype", dtype, "--steps", str(args.steps), "--seconds", str(args.seconds),
                        "--runs", str(args.runs), "--threads", str(args.threads)])
        for dtype in args.dtypes.split(",")
    ]  # fmt: skip
    rows = run_children(__file__, runs, args.tiny, against_plain)
    model = "tiny-stable-audio" if args.tiny else "stable-audio-open-1.0 architecture, random weights"
    finish(args, model, rows)


if __name__ == "__main__":
    main()
