"""What a bfloat16 or int8 key/value cache costs int8 and int4 in logits, and what it buys per step.

The attention path "own-bf16" (Harmonia's kernel over a bfloat16 cache) rounds a float32
decoder's keys and values to bfloat16 as they are stored: half the bytes a step reads from a
long cache; "own-int8" keeps them as int8 codes with a float32 scale per row (68 bytes of
bfloat16's 128 for heads of 64; the prompt's stay bfloat16). This script measures what that
rounding does to the logits, next to what the precision mode's own rounding does. The model is musicgen-small's architecture with random
weights (as in bench_precision.py). `exact` samples a window of --frames steps through
Harmonia's decoding step (SDPA, float32 cache); every other configuration decodes the same
window teacher-forced (its draws replaced by exact's tokens), so each step's logits are
compared on the same inputs, with bench_precision.py's measures (relative logit error,
greedy and sampled agreement, KL; `exact`'s products are `F.linear`, as there).
Configurations: exact's weights on the kernel over a float32, a bfloat16 and an int8 cache (the
cache's rounding alone), then int8 (`rowwise`) and int4, each on the three caches. It also prints each configuration's median step time (one window each,
in this order: a rough figure; bench_generate.py with HARMONIA_ATTENTION forced to each path,
alternated, is the one to trust for speed).

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
from common import cpu_flags, cpu_name, environment, torch_build

from harmonia.engines import decoding
from harmonia.engines.musicgen import MusicGenEngine
from harmonia.kernels import unavailable

CONFIGS = (  # label -> (precision, attention path)
    ("exact, own, float32 cache", "exact", "own"),
    ("exact, own-bf16", "exact", "own-bf16"),
    ("exact, own-int8", "exact", "own-int8"),
    ("int8 rowwise, own, float32 cache", "int8", "own"),
    ("int8 rowwise, own-bf16", "int8", "own-bf16"),
    ("int8 rowwise, own-int8", "int8", "own-int8"),
    ("int4, own, float32 cache", "int4", "own"),
    ("int4, own-bf16", "int4", "own-bf16"),
    ("int4, own-int8", "int4", "own-int8"),
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

    timed.cache = step.cache
    text = engine.tokenizer(list(PROMPTS), padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.inference_mode(), replaying(draws, record):
        decoding.sample_window(
            engine.model, timed, text["input_ids"], text["attention_mask"], None, frames, decoding.Sampling()
        )
    # (the first step, on the start token alone, is left out: it carries TorchScript's first-call costs)
    return torch.stack(logits[1:]), record, times[1:]


def load(wb, precision: str, threads: int) -> MusicGenEngine:
    env = {  # exact's products as plain transformers runs them (as bench_precision.py); the step is built below
        "HARMONIA_FEW_ROW_PRODUCTS": "linear",
        "HARMONIA_INT8_PRODUCTS": "rowwise",
        "HARMONIA_ATTENTION": "sdpa",
    }
    with environment(env):
        return MusicGenEngine.load(wb, "bench", threads=threads, precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250, help="decoding steps (50 = 1 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of musicgen-small's size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kv_cache.json")
    args = parser.parse_args()

    wb = make_workbench(args.tiny)
    try:
        engines = {"exact": load(wb, "exact", args.threads)}
        exact, draws, times = window(engines["exact"], engines["exact"]._step, args.frames)
        rows = [{"config": "exact, sdpa, float32 cache", "step_ms": round(statistics.median(times) * 1e3, 2)}]
        print(f"{rows[0]['config']:34s} (the reference)  step {rows[0]['step_ms']:.2f} ms", flush=True)
        why = unavailable("decode_attention")
        if why is not None:
            print(f"Harmonia's attention kernel does not run here ({why}): nothing to compare.")
        for label, precision, path in CONFIGS if why is None else ():
            if precision not in engines:
                engines.clear()  # one model in memory at a time
                engines[precision] = load(wb, precision, args.threads)
            step = decoding.decoder_step(engines[precision].model, path)
            logits, drawn, times = window(engines[precision], step, args.frames, draws)
            del step
            row = {
                "config": label,
                "step_ms": round(statistics.median(times) * 1e3, 2),
                # teacher-forced: the window went on with exact's tokens, whatever it would have drawn
                "same_tokens_as_exact": len(drawn) == len(draws)
                and all(torch.equal(a, b) for a, b in zip(drawn, draws, strict=True)),
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
