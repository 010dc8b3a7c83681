"""Harmonia's wan engine against a plain diffusers `WanPipeline` call, same pipeline, at the CPU default size.

The full-size model is Wan 2.1 T2V 1.3B's architecture as diffusers documents it (a 30-layer
transformer of 12 heads x 128, FFN 8960, text width 4096; the Wan 2.1 VAE), built in code with
random weights: the same compute per denoising step as the real checkpoint. The text encoder
is the one part cut down: UMT5-XXL (5.7B parameters, 23 GB in float32) becomes a one-layer
UMT5 of the same width 4096, so the prompt embedding has the real shape; it runs once per
call, not per step, and is not what is measured. Configs and tokenizer are saved as a
snapshot folder (the engine's checks read them); the weights stay in memory. ``--tiny`` uses
the tiny model through Harmonia's whole verified loading path instead: a smoke run.

For each dtype (float32, bfloat16), in a process of its own (so peak memory is its own), the
script optionally makes a one-step warm-up call, then a plain ``pipe(...)`` call and
``WanEngine.generate`` on the same prompt, seed, steps and size, and reports seconds per
denoising step (from the call's start to the last step callback, over the steps: with one
step this includes the one-off text encoding), the whole call (with the VAE decode), the
engine's overhead against the plain call, whether both gave the same frames, and the
process's peak resident memory.

    .venv/bin/python benchmarks/bench_video.py --steps 2               # the full-size figures
    .venv/bin/python benchmarks/bench_video.py --tiny --steps 3        # a smoke run (seconds)
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
from harmonia.engines.wan import WanEngine, _quiet, model_facts
from harmonia.requests import VideoRequest
from harmonia.tiny import _t5_tokenizer
from harmonia.workbench import Workbench

PROMPT = "a paper boat drifting down a rainy street at dusk, cinematic"


def full_size_pipeline():
    """Wan 2.1 T2V 1.3B's transformer and VAE at their real sizes, random weights; a one-layer text encoder."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer()
    tokenizer.model_max_length = 512
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    ).eval()  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ).eval()  # fmt: skip
    vae = AutoencoderKLWan().eval()  # Wan 2.1's VAE: base 96, z 16, 4x temporal and 8x spatial
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def save_configs(pipe, folder: Path) -> None:
    """model_index.json, each component's config and the tokenizer: what the engine's checks read."""
    pipe.save_config(folder)
    for name in ("transformer", "vae", "text_encoder"):
        component = getattr(pipe, name)
        (folder / name).mkdir(parents=True, exist_ok=True)
        if hasattr(component, "save_config"):
            component.save_config(folder / name)
        else:
            component.config.to_json_file(folder / name / "config.json")
    pipe.scheduler.save_config(folder / "scheduler")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")


def engine_for(args, dtype: str, folder: Path) -> WanEngine:
    if args.tiny:
        from harmonia.tiny import build_tiny

        (folder / "params.yaml").write_text(
            "models:\n  tiny-wan: {builder: wan, seed: 0, engine: wan, license: mit}\n"
        )
        wb = Workbench.open(folder)
        build_tiny(wb, "wan", seed=0)
        return WanEngine.load(wb, "tiny-wan", device="cpu", dtype=dtype, threads=args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        pipe = full_size_pipeline().to(dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    save_configs(pipe, folder)
    loaded = LoadedModel("wan2.1-t2v-1.3b (random)", folder, None, None, "cpu", dtype, args.threads, 0.0)
    return WanEngine(pipe, loaded, model_facts(folder), folder / ".harmonia")


def plain_call(pipe, request: VideoRequest, marks: list[float], tokens: int) -> np.ndarray:
    """What a diffusers user writes: one seeded generator; the step callback only records times."""
    generator = torch.Generator("cpu").manual_seed(request.seed)

    def on_step(p, i, t, kw):
        marks.append(time.perf_counter())
        return {}

    with torch.inference_mode(), _quiet():
        out = pipe(
            request.prompts[0], height=request.height, width=request.width, num_frames=request.frames,
            num_inference_steps=request.steps, guidance_scale=request.guidance_scale, generator=generator,
            output_type="np", max_sequence_length=tokens, callback_on_step_end=on_step,
        )  # fmt: skip
    return out.frames[0]


def one_dtype(args) -> dict:
    """Runs in its own process: build, (warm up,) then a plain call and an engine call."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        started = time.perf_counter()
        engine = engine_for(args, args.dtype, Path(tmp))
        build_s = time.perf_counter() - started
        request = VideoRequest(
            PROMPT, width=args.size, height=args.size, frames=args.frames, steps=args.steps, seed=0
        )
        tokens = engine.facts.max_text_tokens
        if args.warmup:
            plain_call(engine.pipe, VideoRequest(PROMPT, width=args.size, height=args.size, frames=args.frames,
                                                 steps=1, seed=0), [], tokens)  # fmt: skip
        rows = {}
        marks: list[float] = []
        t0 = time.perf_counter()
        plain = plain_call(engine.pipe, request, marks, tokens)
        rows["plain"] = (time.perf_counter() - t0, t0, marks)
        engine_marks: list[float] = []
        t0 = time.perf_counter()
        result = engine.generate(request, progress=lambda d, t: engine_marks.append(time.perf_counter()))
        rows["engine"] = (time.perf_counter() - t0, t0, engine_marks)
        same = bool(np.array_equal(result.videos[0], (np.clip(plain, 0, 1) * 255).round().astype(np.uint8)))

    def figures(total: float, start: float, marks: list[float]) -> dict:
        per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - start
        return {"seconds": round(total, 3), "seconds_per_step": round(per_step, 3)}

    plain_f, engine_f = figures(*rows["plain"]), figures(*rows["engine"])
    return {
        "dtype": args.dtype,
        "build_or_load_s": round(build_s, 2),
        "size": f"{args.size}x{args.size}x{args.frames}",
        "plain": plain_f,
        "engine": engine_f,
        "engine_overhead_pct": round(100 * (engine_f["seconds"] / plain_f["seconds"] - 1), 2),
        "same_frames": same,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model (a smoke run)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per call (default 2)")
    parser.add_argument(
        "--size", type=int, default=256, help="width and height (default 256, the CPU default)"
    )
    parser.add_argument("--frames", type=int, default=17, help="frames, 4k+1 (default 17, the CPU default)")
    parser.add_argument("--warmup", type=int, default=1, help="1: a one-step warm-up call first (default)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--dtype", help=argparse.SUPPRESS)  # the child process's one dtype
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.dtype:
        print(json.dumps(one_dtype(args)))
        return
    runs = [
        (f"{dtype:9}", ["--dtype", dtype, "--steps", str(args.steps), "--size", str(args.size), "--frames",
                        str(args.frames), "--warmup", str(args.warmup), "--threads", str(args.threads)])
        for dtype in args.dtypes.split(",")
    ]  # fmt: skip
    rows = run_children(__file__, runs, args.tiny, lambda r: f"{r['size']} {against_plain(r, 'same_frames')}")
    model = (
        "tiny-wan" if args.tiny else "Wan 2.1 T2V 1.3B architecture, random weights (1-layer text encoder)"
    )
    finish(args, model, rows)


if __name__ == "__main__":
    main()
