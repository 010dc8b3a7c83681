"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The vector and matrix units this CPU reports (what decides which kernels are fast)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in present]
    except OSError:
        pass
    return []


def avx2_form(product: str, run):
    """``run`` in Harmonia's AVX2 form of ``product`` (the same bits as its AVX-512 form), or None
    where the AVX-512 form does not run here (then the plain path is already the AVX2 form, or
    neither runs): what a CPU without AVX-512 would run, measured on this one."""
    from harmonia import kernels

    if kernels.form(product) != "avx512" or kernels.unavailable(product) is not None:
        return None

    def narrow():
        with kernels.forced_form("avx2"):
            return run()

    return narrow


def torch_build() -> str:
    """torch's version and the CPU capability its kernels dispatch to."""
    import torch

    return f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"


def cpu_name() -> str:
    from harmonia.calibration import cpu_model

    return cpu_model()


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def run_children(script: str, runs: list[tuple[str, list[str]]], tiny: bool, line) -> list[dict]:
    """Run ``script`` once per (label, arguments) in a process of its own (so each peak memory is
    its own), read the JSON row its last stdout line holds, print ``label`` and ``line(row)``;
    a child that fails prints its last error line and adds no row."""
    import json
    import subprocess
    import sys

    rows = []
    for label, arguments in runs:
        command = [sys.executable, script, *arguments, *(["--tiny"] if tiny else [])]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{label} {line(rows[-1])}", flush=True)
    return rows


def against_plain(row: dict, same: str = "same_samples") -> str:
    """One line: the plain call, the engine's, the overhead, whether they agree, the peak memory."""

    def call(figures: dict) -> str:
        rtf = f", RTF {figures['real_time_factor']:.3f}" if "real_time_factor" in figures else ""
        return f"{figures['seconds_per_step']:.3f} s/step, {figures['seconds']:.2f} s{rtf}"

    return (
        f"plain {call(row['plain'])} | engine {call(row['engine'])} | overhead "
        f"{row['engine_overhead_pct']:+.2f} % | {same.replace('_', ' ')} {row[same]} | peak {row['peak_rss_gib']} GiB"
    )


def finish(args, model: str, rows: list[dict], **extra) -> dict:
    """The run's record (what ran, on which CPU, threads and torch), written to ``args.out`` if
    given, and its closing line."""
    import json
    import platform

    import torch

    result = {
        "model": model,
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_build": torch_build(),
        "steps": args.steps,
        **extra,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"cpu: {result['cpu']} ({', '.join(result['cpu_flags'])}), {args.threads} threads, torch {torch.__version__}"
    )
    return result


def best(run, runs: int) -> float:
    """The fastest of ``runs`` timed calls of ``run()``, after one untimed call (its one-off costs)."""
    import time

    run()
    fastest = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``values`` set in ``os.environ`` for the block (forcing Harmonia's paths, say); what was
    there before is restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def step_products(layers: int, hidden: int, ffn: int):
    """One MusicGen decoding step's products at batch 1 with guidance: per layer q, k, v, out,
    cross q, cross out (hidden x hidden), fc1 (ffn x hidden) and fc2 (hidden x ffn), as Linears
    with seeded random weights, and two input rows per width."""
    import torch

    shapes = ([(hidden, hidden)] * 6 + [(ffn, hidden), (hidden, ffn)]) * layers  # (out, in)
    generator = torch.Generator().manual_seed(0)
    linears = []
    for out, width in shapes:
        linear = torch.nn.Linear(width, out, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(out, width, generator=generator) * 0.02)
        linears.append(linear)
    return linears, {width: torch.randn(2, width, generator=generator) for width in (hidden, ffn)}
