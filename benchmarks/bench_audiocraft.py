"""MAGNeT-small's architecture against MusicGen-small's, random weights, on this CPU, same run.

Seconds of compute per second of audio for the same clip length, both in audiocraft 1.3.0 in
Harmonia's audiocraft worker environment (made on first use). Both use the 32 kHz EnCodec of
the released models (4 codebooks of 2048) and a 1024-wide, 24-layer, 16-head transformer
(the released -small sizes); the text conditioner is a lookup table instead of T5 (no
download), the same for both. MusicGen decodes autoregressively (frames + 3 steps, delayed
pattern); MAGNeT decodes masked spans in 20 + 10 + 10 + 10 steps over the whole sequence.

    python benchmarks/bench_audiocraft.py [--seconds 2] [--threads 2]

The 10 s case (MAGNeT-small-10secs' whole window; MusicGen makes it in one 30 s window too):

    taskset -c 0 python benchmarks/bench_audiocraft.py --seconds 10 --threads 1 --out bench-audiocraft-10s.json

A quick check that the script runs (tiny widths, not a measurement):
``--seconds 10 --dim 64 --layers 2``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAGNET_WINDOW_S = (
    10  # an int: audiocraft sizes its masks from it; magnet-small-10secs makes one window of 10 s
)


def in_worker(seconds: float, threads: int, dim: int = 1024, layers: int = 24) -> dict:
    """Run inside the worker's environment (imports audiocraft)."""
    import torch
    from audiocraft.models import MAGNeT, MusicGen, builders
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    compression_cfg = {
        "compression_model": "encodec", "device": "cpu", "dtype": "float32",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": 32000, "channels": 1,
                    "causal": False, "renormalize": False},
        "seanet": {"dimension": 128, "channels": 1, "n_filters": 64, "n_residual_layers": 1, "ratios": [8, 5, 4, 4],
                   "lstm": 2, "encoder": {}, "decoder": {}},
        "rvq": {"n_q": 4, "bins": 2048, "q_dropout": False, "decay": 0.99, "kmeans_init": False},
    }  # fmt: skip

    def lm_cfg(magnet: bool) -> dict:
        cfg = {
            "lm_model": "transformer_lm_magnet" if magnet else "transformer_lm", "device": "cpu", "dtype": "float32",
            "dataset": {"segment_duration": MAGNET_WINDOW_S if magnet else 30},  # musicgen-small: 30 s windows
            "transformer_lm": {"n_q": 4, "card": 2048, "dim": dim, "num_heads": 16, "num_layers": layers,
                               "hidden_scale": 4, "custom": False, "causal": not magnet, "norm_first": True,
                               "memory_efficient": magnet, "bias_proj": False},
            "codebooks_pattern": {"modeling": "parallel" if magnet else "delay",
                                  "delay": {"delays": [0, 1, 2, 3]}, "parallel": {}},
            "attribute_dropout": {}, "classifier_free_guidance": {"training_dropout": 0.0, "inference_coef": 3.0},
            "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
                      "prepend": [], "cross": ["description"], "input_interpolate": []},
            "conditioners": {"description": {"model": "lut", "lut": {"n_bins": 256, "dim": dim, "tokenizer": "noop"}}},
        }  # fmt: skip
        if magnet:
            cfg["transformer_lm"].update(subcodes_context=5, compression_model_framerate=50,
                                         segment_duration=MAGNET_WINDOW_S, span_len=3)  # fmt: skip
            cfg["masking"] = {"span_len": 3}
        return cfg

    compression = builders.get_compression_model(OmegaConf.create(compression_cfg)).eval()
    results = {}
    for name, magnet in (("musicgen-small", False), ("magnet-small", True)):
        cfg = OmegaConf.create(lm_cfg(magnet))
        lm = builders.get_lm_model(cfg).eval()
        lm.cfg = cfg
        if magnet:
            model = MAGNeT(name=name, compression_model=compression, lm=lm)
            model.set_generation_params()  # its defaults: 20/10/10/10 steps, temperature 3, top_p 0.9
            model.duration = seconds
        else:
            model = MusicGen(name=name, compression_model=compression, lm=lm)
            model.set_generation_params(duration=seconds, extend_stride=5)
        params = sum(p.numel() for p in lm.parameters())
        with torch.inference_mode():
            started = time.perf_counter()
            wav = model.generate(["calm piano"])
            took = time.perf_counter() - started
        made = wav.shape[-1] / 32000
        results[name] = {"lm_params_m": round(params / 1e6, 1), "audio_s": round(made, 3),
                         "compute_s": round(took, 2), "s_per_audio_s": round(took / made, 3)}  # fmt: skip
        del model, lm
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=1024, help="transformer width (1024: the -small models)")
    parser.add_argument("--layers", type=int, default=24, help="transformer layers (24: the -small models)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--in-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.seconds <= MAGNET_WINDOW_S:
        parser.error(
            f"--seconds must be > 0 and <= {MAGNET_WINDOW_S:g} (MAGNeT-small's window), got {args.seconds:g}"
        )
    if args.in_worker:
        print(json.dumps(in_worker(args.seconds, args.threads, args.dim, args.layers)))
        return
    sys.path.insert(0, str(ROOT))
    from harmonia.calibration import cpu_model
    from harmonia.engines.audiocraft import ensure_worker_env

    python = ensure_worker_env()
    done = subprocess.run(
        [str(python), __file__, "--in-worker", "--seconds", str(args.seconds), "--threads", str(args.threads),
         "--dim", str(args.dim), "--layers", str(args.layers)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"the benchmark failed in the worker's environment: {done.stderr.strip()[-2000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = cpu_model() or platform.processor()
    print(f"{cpu}, {args.threads} threads, {args.seconds:g} s clips, random weights (audiocraft 1.3.0), "
          f"width {args.dim}, {args.layers} layers:")  # fmt: skip
    for name, r in results.items():
        print(f"  {name:15s} {r['lm_params_m']:7.1f} M LM params  {r['compute_s']:7.2f} s  "
              f"{r['s_per_audio_s']:7.3f} s per s of audio")  # fmt: skip
    ratio = results["musicgen-small"]["s_per_audio_s"] / results["magnet-small"]["s_per_audio_s"]
    print(f"  MAGNeT is {ratio:.2f}x MusicGen's speed on this clip")
    if args.out is not None:
        figures = {"cpu": cpu, "threads": args.threads, "seconds": args.seconds, "dim": args.dim,
                   "layers": args.layers, "models": results, "magnet_speedup": round(ratio, 3)}  # fmt: skip
        args.out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
