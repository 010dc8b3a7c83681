"""Does the calibration pick what whole decoding steps pick? Each mode's choice against every candidate, timed by whole steps.

The engine chooses a decoding step's paths (products, attention) by timing each part on its
own: a step's products on two rows, a step's attention over caches of 64 and 512 keys, each
candidate as a step would run it. This script checks those choices against the measure that
counts: whole decoding steps. For each precision mode it loads the engine once as the
calibration chooses (a fresh workbench: measured in this run; a later mode reads what an
earlier one measured for the same key, as any load would), and once per combination of the
step's candidate paths (forced through ``HARMONIA_<PATH>``), then makes the same take with each
in turns (--rounds rounds, the candidates in a new order each round, so a slow minute of the
machine falls on all of them) and reports each combination's median step time (the steps
after the prompt's prefill, timed by the engine's progress calls). The audio decoder's layout
(``encodec_layout``) is not a step's path and stays as measured. A mode's engines are all
loaded at once (bf16's six on musicgen-small's architecture: about 9 GiB).

The model is bench_generate's musicgen-small architecture with random weights (``--tiny``: the
tiny model, a smoke run). A mode's verdict is "agrees" when the calibrated combination's median
is within --tolerance of the fastest's, else it names the faster one.

    .venv/bin/python benchmarks/bench_calibration.py                     # the README's figures
    .venv/bin/python benchmarks/bench_calibration.py --tiny --seconds 0.5 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
from bench_generate import PROMPT, make_workbench
from common import cpu_flags, cpu_name, torch_build

from harmonia.engines.base import quiet_transformers
from harmonia.engines.musicgen import (
    CHOICES,
    KERNEL_PATHS,
    PRODUCT_PATHS,
    MusicGenEngine,
    MusicRequest,
    _bfloat16_decoder,
)
from harmonia.kernels import unavailable


def candidates(mode: str) -> list[dict[str, str]]:
    """Every combination of the mode's step paths that this machine can run."""
    names = [name for name in CHOICES[mode] if name != "encodec_layout"]
    options = []
    for name in names:
        runnable = [
            path
            for path in PRODUCT_PATHS[name]
            if (name, path) not in KERNEL_PATHS or unavailable(KERNEL_PATHS[name, path]) is None
        ]
        # a float32 decoder's kernel paths are own-bf16 and own-int8, a bfloat16 one's own
        if name == "attention":
            runnable = [p for p in runnable if p == "sdpa" or (p == "own") == _bfloat16_decoder(mode)]
        options.append(runnable)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*options)]


@contextlib.contextmanager
def forced(paths: dict[str, str]):
    """The engine's paths forced through the environment inside the block."""
    before = {name: os.environ.get(f"HARMONIA_{name.upper()}") for name in paths}
    os.environ.update({f"HARMONIA_{name.upper()}": path for name, path in paths.items()})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(f"HARMONIA_{name.upper()}", None)
            else:
                os.environ[f"HARMONIA_{name.upper()}"] = value


def step_ms(engine: MusicGenEngine, seconds: float) -> float:
    """One take's decoding steps after the prompt's prefill, mean ms a step."""
    stamps: list[float] = []
    engine.generate(
        MusicRequest([PROMPT], duration_s=seconds, seed=1, top_k=250),
        progress=lambda done, total: stamps.append(time.perf_counter()),
    )
    if len(stamps) < 2:
        raise SystemExit(f"a take of {seconds} s has no step after its prefill: ask for a longer one")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3


def label(paths: dict[str, str]) -> str:
    return ", ".join(f"{name} {paths[name]}" for name in sorted(paths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="exact,bf16,int8,int4")
    parser.add_argument("--seconds", type=float, default=3.0, help="the take's length (3 s: 153 steps)")
    parser.add_argument("--rounds", type=int, default=5, help="takes per combination (the median counts)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="within this of the fastest: agrees")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of musicgen-small's size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration.json")
    args = parser.parse_args()
    steps = [name for name in PRODUCT_PATHS if name != "encodec_layout"]  # (the audio decoder may be forced)
    forcing = sorted(f"HARMONIA_{n.upper()}" for n in steps if os.environ.get(f"HARMONIA_{n.upper()}"))
    if forcing:  # the calibrated load must be the calibration's
        raise SystemExit(f"unset {', '.join(forcing)}: this benchmark forces each path itself")
    torch.set_num_threads(args.threads)
    shuffle = random.Random(0)
    wb = make_workbench(args.tiny)
    modes_out = []
    try:
        for mode in args.modes.split(","):
            with quiet_transformers():
                calibrated = MusicGenEngine.load(wb, "bench", threads=args.threads, precision=mode)
            chosen = {name: path for name, path in calibrated.loaded.paths if name != "encodec_layout"}
            engines = {label(chosen): calibrated}
            for paths in candidates(mode):
                if paths != chosen:
                    with forced(paths), quiet_transformers():
                        engines[label(paths)] = MusicGenEngine.load(
                            wb, "bench", threads=args.threads, precision=mode
                        )
            times: dict[str, list[float]] = {name: [] for name in engines}
            for engine in engines.values():  # one-off costs of a first call
                step_ms(engine, 0.1)
            for _ in range(args.rounds):
                order = list(engines)
                shuffle.shuffle(order)
                for name in order:
                    times[name].append(step_ms(engines[name], args.seconds))
            medians = {name: statistics.median(ms) for name, ms in times.items()}
            fastest = min(medians, key=medians.get)
            agrees = medians[label(chosen)] <= (1 + args.tolerance) * medians[fastest]
            modes_out.append(
                {
                    "mode": mode,
                    "calibrated": label(chosen),
                    "calibration": calibrated.loaded.choices,
                    "fastest_by_steps": fastest,
                    "verdict": "agrees" if agrees else f"slower than {fastest}",
                    "step_ms": {
                        name: {"median": round(medians[name], 2), "all": [round(t, 2) for t in ms]}
                        for name, ms in times.items()
                    },
                }
            )
            row = modes_out[-1]
            print(
                f"{mode}: calibrated {row['calibrated'] or '(no step paths)'}: {row['verdict']}", flush=True
            )
            for name in sorted(medians, key=medians.get):
                mark = " (calibrated)" if name == label(chosen) else ""
                print(f"  {name or '(no step paths)':45s} {medians[name]:7.2f} ms a step{mark}", flush=True)
            del engines, calibrated, engine
            gc.collect()
    finally:
        shutil.rmtree(wb.root, ignore_errors=True)
    result = {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch_build(), "python": platform.python_version(),
        "threads": args.threads, "model": "tiny MusicGen" if args.tiny else "musicgen-small architecture, random weights",
        "seconds": args.seconds, "rounds": args.rounds, "tolerance": args.tolerance, "modes": modes_out,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']} ({', '.join(result['cpu_flags'])}), torch {result['torch']}, {args.threads} threads, "
          f"{args.seconds} s takes, median of {args.rounds}; wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
