"""Harmonia's MusicGen engine against a plain transformers `generate` call, on the same model.

The model is the musicgen-small architecture (T5-base text encoder, 32 kHz EnCodec with
4 codebooks of 2048, a 24-layer 1024-wide decoder) built in code with random weights:
the same compute as the real checkpoint. It is saved as an ordinary snapshot and loaded
through Harmonia's verified path. For batch 1 and 4 the script times N decoding steps
through ``MusicGenEngine.generate`` and through ``model.generate`` on the same inputs and
seed, best of R, and checks that both give the same samples. A longer clip (10 s, batch 1,
best of --long-runs) shows the real-time factor where the fixed costs of a take (text encoder, EnCodec
decoding) weigh less and attention reads a longer cache. Each model makes one short
generation first (one-off costs of a first call: oneDNN primitives, first page touches). It
also times loading against reading the snapshot's bytes.

"Bandwidth share" is the decoder bytes one step reads (products, heads, norms; not the prompt's
cross-attention projections, run once per window) times steps/s over the read bandwidth measured
in the same run: for the whole take (text encoder and EnCodec included), and for the decoding
steps alone ("step share", timed by the engine's progress calls after the prompt's prefill).

    .venv/bin/python benchmarks/bench_generate.py                 # the README's figures
    .venv/bin/python benchmarks/bench_generate.py --tiny --steps 20 --runs 1 --long-runs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_flags, cpu_name, torch_build

from harmonia.engines.base import quiet_transformers
from harmonia.engines.musicgen import MusicGenEngine, MusicRequest
from harmonia.hashing import hash_files
from harmonia.inventory import FileEntry, Inventory, Source, write_inventory
from harmonia.snapshots import scan_tree
from harmonia.tiny import _t5_tokenizer, build_musicgen
from harmonia.workbench import Workbench

PROMPT = "an upbeat electronic track with a driving bass line and bright synth chords"


def build_small(out: Path) -> None:
    """musicgen-small's architecture (facebook/musicgen-small config.json), random weights."""
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    tokenizer = _t5_tokenizer()
    config = MusicgenConfig(
        text_encoder=T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
        audio_encoder=EncodecConfig(
            sampling_rate=32000, audio_channels=1, target_bandwidths=[2.2], upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048, hidden_size=128, num_filters=64, num_residual_layers=1, num_lstm_layers=2,
            use_causal_conv=False, normalize=False, compress=2, kernel_size=7, last_kernel_size=7,
            residual_kernel_size=3, dilation_growth_rate=2, trim_right_ratio=1.0, pad_mode="reflect",
        ),
        decoder=MusicgenDecoderConfig(
            vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=24, ffn_dim=4096,
            num_attention_heads=16, hidden_size=1024, num_codebooks=4, pad_token_id=2048, bos_token_id=2048,
            dropout=0.1, activation_function="gelu",
        ),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MusicgenForConditionalGeneration(config).eval()
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = 2048
    gc.do_sample, gc.guidance_scale, gc.max_length, gc.top_k = True, 3.0, 1500, 250
    model.save_pretrained(out)
    MusicgenProcessor(
        EncodecFeatureExtractor(feature_size=1, sampling_rate=32000), tokenizer
    ).save_pretrained(out)


def make_workbench(tiny: bool) -> Workbench:
    root = Path(tempfile.mkdtemp(prefix="harmonia-bench-generate-"))
    (root / "params.yaml").write_text("models:\n  bench: {builder: musicgen, seed: 0, engine: musicgen}\n")
    folder = root / "models" / "bench"
    folder.mkdir(parents=True)
    with quiet_transformers():
        (build_musicgen if tiny else build_small)(folder)
    files = sorted(scan_tree(folder))
    digests = hash_files(folder / f for f in files)
    entries = tuple(FileEntry(f, (folder / f).stat().st_size, digests[str(folder / f)]) for f in files)
    write_inventory(
        folder, Inventory("bench", "model", Source("synthetic", builder="bench", seed=0), None, entries)
    )
    return Workbench.open(root)


def read_bytes_s(folder: Path) -> tuple[float, int]:
    started, total = time.perf_counter(), 0
    for path in sorted(folder.iterdir()):
        if path.is_file():
            total += len(path.read_bytes())
    return time.perf_counter() - started, total


def memory_bandwidth_gib_s(threads: int, gib: float = 1.0) -> dict[str, float]:
    """Read bandwidth: torch summing a float32 buffer of ``gib`` GiB with ``threads`` threads, best of 5.

    Twice: in torch's own allocation (4 KiB pages unless THP is "always") and in numpy's, which
    asks the kernel for huge pages (fewer TLB misses; 10-15 % faster on the AMD EPYC). The
    limit is the faster of the two: what the memory gives, not what one allocation gets.
    """
    torch.set_num_threads(threads)
    buffers = {
        "4k_pages": torch.ones(int(gib * (1 << 30)) // 4),
        "huge_pages": torch.from_numpy(np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)),
    }
    return {
        name: gib / min(_timed(lambda d=data: d.sum()) for _ in range(5)) for name, data in buffers.items()
    }


def decoder_bytes(engine: MusicGenEngine) -> int:
    """Bytes of decoder weights one decoding step reads, at the engine's precision.

    Every product of the decoder layers and the codebook heads, and the layer norms. Not the
    cross-attention keys' and values' projections (run once per window, on the prompt) and
    not the embedding tables (a step reads one row of each).
    """
    total = 0
    for name, module in engine.model.decoder.named_modules():
        if name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj")) or "embed" in name:
            continue
        if type(module).__name__ == "Linear" and hasattr(module, "_packed_params"):  # torch.ao dynamic int8
            weight, _ = module._packed_params._weight_bias()
            total += weight.numel()  # one byte per weight
        else:  # float weights, or Harmonia's packed int8/int4 weights and their scales
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=53, help="decoding steps per run (53 = 1 s of audio)")
    parser.add_argument("--runs", type=int, default=2, help="best of N")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--modes", default="exact,bf16,int8,int4", help="Harmonia precision modes to time")
    parser.add_argument(
        "--long", type=float, default=10.0, help="seconds of the long clip at batch 1 (0: skip)"
    )
    parser.add_argument("--long-runs", type=int, default=2, help="best of N for the long clip")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of musicgen-small's size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")

    wb = make_workbench(args.tiny)
    try:
        # 1. The machine's memory bandwidth, and loading against reading the same bytes.
        bandwidths = memory_bandwidth_gib_s(args.threads)
        bandwidth = max(bandwidths.values())
        folder = wb.snapshot_dir("model", "bench")
        read_bytes_s(folder)
        read_s, size = read_bytes_s(folder)

        # 2. Plain transformers, float32: the baseline for every ratio (its own model object).
        with quiet_transformers():
            from transformers import MusicgenForConditionalGeneration

            plain_model = MusicgenForConditionalGeneration.from_pretrained(
                folder, local_files_only=True
            ).eval()
        tokenizer = _t5_tokenizer()
        plain, plain_audio = {}, {}
        with torch.inference_mode():  # a first call pays one-off costs (oneDNN primitives, first touches)
            plain_model.generate(**tokenizer([PROMPT], return_tensors="pt"), do_sample=True, max_new_tokens=8)
        for batch in batches:
            inputs = tokenizer([PROMPT] * batch, padding=True, return_tensors="pt")
            times = []
            for _ in range(args.runs):
                torch.set_num_threads(args.threads)
                torch.manual_seed(1)
                started = time.perf_counter()
                with torch.inference_mode():
                    out = plain_model.generate(
                        **inputs, do_sample=True, guidance_scale=3.0, top_k=250, max_new_tokens=args.steps
                    )
                times.append(time.perf_counter() - started)
            plain[batch], plain_audio[batch] = min(times), out.numpy()
        long_steps = round(args.long * 50) + 3 if args.long else 0  # 50 frames/s plus the codebook delay
        if long_steps:
            inputs = tokenizer([PROMPT], padding=True, return_tensors="pt")
            times = []
            for _ in range(args.long_runs):
                torch.manual_seed(1)
                started = time.perf_counter()
                with torch.inference_mode():
                    out = plain_model.generate(
                        **inputs, do_sample=True, guidance_scale=3.0, top_k=250, max_new_tokens=long_steps
                    )
                times.append(time.perf_counter() - started)
            plain["long"], plain_audio["long"] = min(times), out.numpy()
        del plain_model

        # 3. Harmonia in each precision mode, same inputs and seed.
        rows, load_s, choices = [], None, {}
        for mode in modes:
            with quiet_transformers():
                engine = MusicGenEngine.load(wb, "bench", threads=args.threads, precision=mode)
            load_s = load_s or engine.loaded.load_s
            choices.update({f"{mode}: {k}": v for k, v in engine.loaded.choices.items()})
            weight_bytes = decoder_bytes(engine)
            engine.generate(MusicRequest([PROMPT], duration_s=0.1, seed=1))  # the same one-off costs
            for batch in batches + (["long"] if long_steps else []):
                steps = long_steps if batch == "long" else args.steps
                duration = (steps - engine.max_delay) / engine.frame_rate
                runs = args.long_runs if batch == "long" else args.runs
                times, step_times, audio = [], [], None
                for _ in range(runs):
                    stamps = []
                    started = time.perf_counter()
                    audio = engine.generate(
                        MusicRequest(
                            [PROMPT] * (1 if batch == "long" else batch),
                            duration_s=duration,
                            seed=1,
                            top_k=250,
                        ),
                        progress=lambda done, total, stamps=stamps: stamps.append(time.perf_counter()),
                    ).audio
                    times.append(time.perf_counter() - started)
                    # the decoding steps alone: from the end of the first (the prompt's prefill) to the last
                    step_times.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
                best = min(times)
                steps_s = steps / best
                step_s = min(step_times)
                rows.append(
                    {
                        "mode": mode,
                        "batch": 1 if batch == "long" else batch,
                        "clip": "long" if batch == "long" else "short",
                        "seconds": round(duration, 2),
                        "steps_per_s": round(steps_s, 2),
                        "real_time_factor": round(duration / best, 3),
                        "ratio_vs_transformers_fp32": round(plain[batch] / best, 2),
                        "transformers_fp32_steps_per_s": round(steps / plain[batch], 2),
                        "decoder_bytes_per_step": weight_bytes,
                        "decoder_gib_per_step": round(weight_bytes / (1 << 30), 3),
                        "bandwidth_share": round(steps_s * weight_bytes / (1 << 30) / bandwidth, 3),
                        "step_ms": round(step_s * 1000, 2),
                        "step_bandwidth_share": round(weight_bytes / (1 << 30) / step_s / bandwidth, 3),
                        "same_samples_as_transformers": bool(
                            np.array_equal(audio, plain_audio[batch][..., : audio.shape[-1]])
                        ),
                    }
                )
            del engine
        result = {
            "machine": {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(), "threads": args.threads,
                        "python": platform.python_version(), "torch": torch_build()},
            "calibration": choices,
            "model": "tiny MusicGen" if args.tiny else "musicgen-small architecture, random weights",
            "steps": args.steps,
            "memory_bandwidth_gib_s": round(bandwidth, 1),
            "memory_bandwidth_by_pages_gib_s": {k: round(v, 1) for k, v in bandwidths.items()},
            "snapshot_bytes": size,
            "load_s": round(load_s, 3),
            "read_bytes_s": round(read_s, 3),
            "load_ratio": round(load_s / read_s, 2),
            "generate": rows,
        }  # fmt: skip
    finally:
        shutil.rmtree(wb.root, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(
        f"machine: {m['cpu']} ({', '.join(m['flags']) or 'no AVX2'}), {m['cores']} cores, {m['threads']} threads, "
        f"torch {m['torch']}; model: {result['model']}"
    )
    for name, line in result["calibration"].items():
        print(f"calibration: {name} -> {line}")
    pages = ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in result["memory_bandwidth_by_pages_gib_s"].items()
    )
    print(
        f"memory bandwidth (read, {m['threads']} threads): {result['memory_bandwidth_gib_s']} GiB/s ({pages})"
    )
    print(
        f"load: {result['load_s']:.2f} s for {size / 1e9:.2f} GB (reading the bytes: {result['read_bytes_s']:.2f} s, "
        f"ratio {result['load_ratio']:.2f})"
    )
    print(
        "mode   batch  clip s  steps/s  real-time factor  vs transformers fp32  bandwidth share  "
        "step ms  step share  GiB/step  same samples"
    )
    for r in rows:
        print(
            f"{r['mode']:6} {r['batch']:5}  {r['seconds']:6.2f}  {r['steps_per_s']:7.2f}  {r['real_time_factor']:16.3f}  "
            f"{r['ratio_vs_transformers_fp32']:19.2f}x  {r['bandwidth_share']:15.3f}  {r['step_ms']:7.2f}  "
            f"{r['step_bandwidth_share']:10.3f}  {r['decoder_gib_per_step']:8.3f}  {r['same_samples_as_transformers']}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
