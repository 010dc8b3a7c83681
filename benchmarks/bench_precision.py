"""How far each precision mode's MusicGen decoder is from float32: logit error and token agreement.

The model is musicgen-small's architecture with random weights (as in bench_generate.py; no
released weights are reachable here). Every mode decodes the same text prompts and the same
teacher-forced codes (seeded random tokens, after the start token) in one forward pass, and
its logits for every position, codebook and prompt are compared with float32's (`exact`):

- relative logit error: ``||logits - exact|| / ||exact - mean(exact)||`` per position, averaged;
- greedy agreement: how often the top token is float32's;
- sampled agreement: the chance that a draw from the mode's top-k 250 distribution (the
  engine's default sampling, temperature 1) gives float32's draw when both share their random
  numbers as well as they can: 1 - the distributions' total-variation distance;
- KL divergence from float32's full distribution, in nats.

What it cannot say: trained weights have larger outliers and peakier distributions than random
ones, so these figures rank the modes on the same architecture; they do not measure how the
music of a trained checkpoint changes.

    .venv/bin/python benchmarks/bench_precision.py           # the README's figures
    .venv/bin/python benchmarks/bench_precision.py --tiny    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
from bench_generate import make_workbench
from common import cpu_flags, cpu_name, environment, torch_build

from harmonia.engines.musicgen import MusicGenEngine

PROMPTS = ("an upbeat electronic track with a driving bass line", "a slow ambient drone with soft strings")
MODES = {  # name -> (precision, forced product paths)
    "exact": ("exact", {"HARMONIA_FEW_ROW_PRODUCTS": "linear"}),
    "bf16": ("bf16", {"HARMONIA_BF16_PRODUCTS": "linear"}),
    "int8 fbgemm": ("int8", {"HARMONIA_INT8_PRODUCTS": "fbgemm"}),
    "int8 rowwise": ("int8", {"HARMONIA_INT8_PRODUCTS": "rowwise"}),
    "int4": ("int4", {}),
}
TOP_K = 250


def logits_of(engine: MusicGenEngine, frames: int, seed: int) -> torch.Tensor:
    """float32 logits ``[prompts, codebooks, frames, vocab]`` for seeded codes, teacher-forced."""
    config = engine.model.config.decoder
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(
        0, config.vocab_size, (len(PROMPTS) * config.num_codebooks, frames), generator=generator
    )
    start = torch.full((codes.shape[0], 1), config.bos_token_id)
    text = engine.tokenizer(list(PROMPTS), padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = engine.model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            decoder_input_ids=torch.cat([start, codes], dim=1),
        )
    return out.logits.float().reshape(len(PROMPTS), config.num_codebooks, frames + 1, -1)


def top_k_probabilities(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The engine's sampling distribution at temperature 1: softmax over the k largest logits."""
    kept = logits.topk(min(k, logits.shape[-1]), dim=-1)
    filtered = torch.full_like(logits, float("-inf")).scatter(-1, kept.indices, kept.values)
    return filtered.softmax(-1)


def compare(logits: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    centred = exact - exact.mean(-1, keepdim=True)
    relative = (logits - exact).norm(dim=-1) / centred.norm(dim=-1)
    p, q = top_k_probabilities(exact, TOP_K), top_k_probabilities(logits, TOP_K)
    total_variation = 0.5 * (p - q).abs().sum(-1)
    log_p, log_q = exact.log_softmax(-1), logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "relative_logit_error": round(relative.mean().item(), 5),
        "relative_logit_error_max": round(relative.max().item(), 5),
        "greedy_agreement": round((logits.argmax(-1) == exact.argmax(-1)).float().mean().item(), 4),
        "sampled_agreement": round(1 - total_variation.mean().item(), 4),
        "kl_nats": round(kl.mean().item(), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250, help="teacher-forced frames (50 = 1 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of musicgen-small's size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args = parser.parse_args()

    wb = make_workbench(args.tiny)
    try:
        results, exact = [], None
        for name, (precision, env) in MODES.items():
            with environment(env):
                engine = MusicGenEngine.load(wb, "bench", threads=args.threads, precision=precision)
            started = time.perf_counter()
            logits = logits_of(engine, args.frames, seed=0)
            seconds = time.perf_counter() - started
            layer = type(engine.model.decoder.model.decoder.layers[0].fc1).__name__
            del engine
            if exact is None:
                exact = logits
            row = {"mode": name, "layer": layer, "forward_s": round(seconds, 2), **compare(logits, exact)}
            results.append(row)
            print(
                f"{name:13s} {layer:22s} logit error {row['relative_logit_error']:.4f} (max "
                f"{row['relative_logit_error_max']:.4f})  greedy {row['greedy_agreement']:.3f}  sampled "
                f"{row['sampled_agreement']:.3f}  KL {row['kl_nats']:.5f}",
                flush=True,
            )
        spread = exact.std(-1).mean().item()
        result = {
            "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "torch": torch_build(),
            "python": platform.python_version(),
            "threads": args.threads,
            "model": "tiny" if args.tiny else "musicgen-small architecture, random weights (seed 0)",
            "frames": args.frames,
            "prompts": len(PROMPTS),
            "exact_logit_std": round(spread, 5),
            "modes": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{result['cpu']} ({', '.join(result['cpu_flags'])}), torch {result['torch']}, {args.threads} threads"
        )
        print(f"float32 logits: {spread:.4f} standard deviation over the vocabulary; wrote {args.out}")
    finally:
        shutil.rmtree(wb.root, ignore_errors=True)


if __name__ == "__main__":
    main()
