"""What a bfloat16 key/value cache costs int8 and int4 in logits, and what it buys per step.

The attention path "own-bf16" (Harmonia's kernel over a bfloat16 cache) rounds a float32
decoder's keys and values to bfloat16 as they are stored: half the bytes a step reads from a
long cache. This script measures what that rounding does to the logits, next to what the
precision mode's own rounding does. The model is musicgen-small's architecture with random
weights (as in bench_precision.py). `exact` samples a window of --frames steps through
Harmonia's decoding step (SDPA, float32 cache); every other configuration decodes the same
window teacher-forced (its draws replaced by exact's tokens), so each step's logits are
compared on the same inputs, with bench_precision.py's measures (relative logit error,
greedy and sampled agreement, KL). Configurations: exact's weights on the kernel over a
float32 and a bfloat16 cache (the cache's rounding alone), then int8 (`rowwise`) and int4,
each on both caches. It also prints each configuration's median step time.

What it cannot say: random weights attend nearly uniformly, and trained ones attend sharply,
so a trained model's error from the cache may be larger than measured here (still far below
int4's and int8's weights' own, by these figures); no released weights are reachable here.

    .venv/bin/python benchmarks/bench_kv_cache.py            # the README's figures
    .venv/bin/python benchmarks/bench_kv_cache.py --tiny     # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
from bench_generate import make_workbench
from bench_precision import PROMPTS, compare
from common import cpu_flags, cpu_name, torch_build

from harmonia.engines import decoding
from harmonia.engines.musicgen import MusicGenEngine
from harmonia.kernels import unavailable

CONFIGS = (  # label -> (precision, attention path)
    ("exact, own, float32 cache", "exact", "own"),
    ("exact, own-bf16", "exact", "own-bf16"),
    ("int8 rowwise, own, float32 cache", "int8", "own"),
    ("int8 rowwise, own-bf16", "int8", "own-bf16"),
    ("int4, own, float32 cache", "int4", "own"),
    ("int4, own-bf16", "int4", "own-bf16"),
)


@contextlib.contextmanager
def replaying(draws: list[torch.Tensor] | None, record: list[torch.Tensor]):
    """torch.multinomial, recording its draws into ``record``, or (given ``draws``) returning
    them in order instead: the window is then teacher-forced on those tokens."""
    real = torch.multinomial
    replay = iter(draws) if draws is not None else None

    def draw(probs, num_samples, *args, **kwargs):
        out = next(replay) if replay is not None else real(probs, num_samples, *args, **kwargs)
        record.append(out)
        return out

    torch.multinomial = draw
    try:
        yield
    finally:
        torch.multinomial = real


def window(engine: MusicGenEngine, step, frames: int, draws=None):
    """Every single-position step's logits ``[steps, rows, vocab]``, the draws, and the step times."""
    logits, times, record = [], [], []

    def timed(*args):
        started = time.perf_counter()
        out = step(*args)
        times.append(time.perf_counter() - started)
        logits.append(out)
        return out

    timed.cache_bf16 = step.cache_bf16
    text = engine.tokenizer(list(PROMPTS), padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.inference_mode(), replaying(draws, record):
        decoding.sample_window(
            engine.model, timed, text["input_ids"], text["attention_mask"], None, frames, decoding.Sampling()
        )
    return torch.stack(logits[1:]), record, times[1:]  # (the first call is the prompt's prefill)


def load(wb, precision: str, threads: int) -> MusicGenEngine:
    env = {"HARMONIA_ATTENTION": "sdpa", "HARMONIA_INT8_PRODUCTS": "rowwise"}  # the step is built below
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return MusicGenEngine.load(wb, "bench", threads=threads, precision=precision)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250, help="decoding steps (50 = 1 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of musicgen-small's size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kv_cache.json")
    args = parser.parse_args()

    wb = make_workbench(args.tiny)
    try:
        engine = load(wb, "exact", args.threads)
        exact, draws, times = window(engine, engine._step, args.frames)
        rows = [{"config": "exact, sdpa, float32 cache", "step_ms": round(statistics.median(times) * 1e3, 2)}]
        print(f"{rows[0]['config']:34s} (the reference)  step {rows[0]['step_ms']:.2f} ms", flush=True)
        why = unavailable("decode_attention")
        if why is not None:
            print(f"Harmonia's attention kernel does not run here ({why}): nothing to compare.")
        engines = {"exact": engine}
        for label, precision, path in CONFIGS if why is None else ():
            if precision not in engines:
                engines = {precision: load(wb, precision, args.threads)}  # one model in memory at a time
            step = decoding.decoder_step(engines[precision].model, path)
            logits, _, times = window(engines[precision], step, args.frames, draws)
            row = {
                "config": label,
                "step_ms": round(statistics.median(times) * 1e3, 2),
                **compare(logits, exact),
            }
            rows.append(row)
            print(
                f"{label:34s} logit error {row['relative_logit_error']:.5f} (max "
                f"{row['relative_logit_error_max']:.5f})  greedy {row['greedy_agreement']:.3f}  sampled "
                f"{row['sampled_agreement']:.4f}  KL {row['kl_nats']:.6f}  step {row['step_ms']:.2f} ms",
                flush=True,
            )
        result = {
            "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "torch": torch_build(),
            "python": platform.python_version(),
            "threads": args.threads,
            "model": "tiny" if args.tiny else "musicgen-small architecture, random weights (seed 0)",
            "frames": args.frames,
            "prompts": len(PROMPTS),
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{cpu_name()} ({', '.join(cpu_flags())}), torch {torch_build()}, {args.threads} threads; wrote {args.out}"
        )
    finally:
        shutil.rmtree(wb.root, ignore_errors=True)


if __name__ == "__main__":
    main()
