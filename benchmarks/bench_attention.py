"""A decoding step's self-attention alone: torch's SDPA against Harmonia's kernel, over the cache.

One decoding step of MusicGen at batch 1 with guidance attends from one position of two rows
to every key and value cached so far, in each of the decoder's layers (musicgen-small: 24
layers of 16 heads of 64). The cache grows by one position a step, so on a long clip the
attention reads more bytes than the `int4` weights do (at 500 keys, 10 s of audio, 188 MiB of
float32 keys and values a step). This script times the 24 layers' calls at several cache
lengths, best of --runs, caches cold (each layer its own buffers): torch's
`scaled_dot_product_attention` on a float32 cache (what transformers runs, and Harmonia's
`sdpa` path), and `torch.ops.harmonia.decode_attention` (the `own` path) on a float32 cache
(`int8`, `int4`), a bfloat16 one (`bf16`: its projections return bfloat16, so nothing is
lost; `own-bf16`) and an int8 one (`own-int8`: 64 codes and a float32 scale a row); on an AVX-512 CPU also the kernel's AVX2 form (the same bits: what a CPU without AVX-512
runs). GiB/s is the cache bytes read over the time; the sum of a buffer is the machine's limit.

    .venv/bin/python benchmarks/bench_attention.py            # the README's figures
    .venv/bin/python benchmarks/bench_attention.py --tiny     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from common import avx2_form, best, cpu_flags, cpu_name, torch_build

from harmonia.kernels import int8_stored, unavailable


def kept(values: torch.Tensor, dtype: torch.dtype, keys: bool) -> torch.Tensor:
    """``values`` as a cache of ``dtype`` keeps them (int8: by the kernel's own store, keys in
    blocks of 16 positions, values by position; the same bytes a position)."""
    if dtype != torch.int8:
        return values.to(dtype)
    return int8_stored(values, keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rows", type=int, default=2, help="2: batch 1 with guidance")
    parser.add_argument("--keys", default="57,250,500,1500", help="cache lengths (1 s, 5 s, 10 s, 30 s)")
    parser.add_argument("--runs", type=int, default=15, help="best of N")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="2 layers of 4 heads of 8, short caches")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention.json")
    args = parser.parse_args()
    if args.tiny:
        args.layers, args.heads, args.dim, args.keys = 2, 4, 8, "5,40"
    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.keys.split(",")]
    why = unavailable("decode_attention")
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(args.rows, args.heads, 1, args.dim, generator=generator)
    scale = args.dim**-0.5
    rows_out = []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16) + ((torch.int8,) if why is None else ()):
            shape = (args.rows, args.heads, max(lengths), args.dim)
            # an int8 row: the codes padded to 4 bytes, then its scale (harmonia.store_int8)
            width = (args.dim + 3) // 4 * 4 + 4 if dtype == torch.int8 else args.dim
            cache = [
                (
                    kept(torch.randn(shape, generator=generator), dtype, keys=True),
                    kept(torch.randn(shape, generator=generator), dtype, keys=False),
                )
                for _ in range(args.layers)
            ]
            for n in lengths:
                size = 2 * args.layers * args.rows * args.heads * n * width * cache[0][1].element_size()
                paths = {}
                if dtype == torch.float32:
                    paths["sdpa"] = lambda n=n, cache=cache: [
                        F.scaled_dot_product_attention(query, k[:, :, :n], v[:, :, :n], scale=scale)
                        for k, v in cache
                    ]
                if why is None:
                    paths["own (Harmonia)"] = lambda n=n, cache=cache: [
                        torch.ops.harmonia.decode_attention(query, k, v, n, scale, None) for k, v in cache
                    ]
                    if narrow := avx2_form("decode_attention", paths["own (Harmonia)"]):
                        paths["own, AVX2 form"] = narrow
                for name, run in paths.items():
                    seconds = best(run, args.runs)
                    row = {
                        "path": name, "cache": str(dtype).removeprefix("torch."), "keys": n, "bytes": size,
                        "seconds": seconds, "ms": round(seconds * 1e3, 3), "gib_s": round(size / 2**30 / seconds, 1),
                    }  # fmt: skip
                    rows_out.append(row)
                    print(
                        f"{n:5d} keys  {row['cache']:8s}  {name:15s} {row['ms']:8.2f} ms  {row['gib_s']:5.1f} GiB/s"
                    )
        for n in lengths:  # the kernel against SDPA on the same cache length
            sdpa = next(r for r in rows_out if r["path"] == "sdpa" and r["keys"] == n)
            for r in rows_out:
                if r["keys"] == n and r["path"] != "sdpa":
                    r["vs_sdpa"] = round(sdpa["seconds"] / r["seconds"], 2)
        data = torch.ones(1 << 28 if not args.tiny else 1 << 22)  # 1 GiB (16 MiB for --tiny) of float32
        bandwidth = round(data.numel() * 4 / 2**30 / best(lambda: data.sum(), 5), 1)
    result = {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch_build(), "python": platform.python_version(),
        "threads": args.threads, "layers": args.layers, "heads": args.heads, "dim": args.dim, "rows": args.rows,
        "kernel": why or "available", "memory_bandwidth_gib_s": bandwidth, "paths": rows_out,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']} ({', '.join(result['cpu_flags'])}), torch {result['torch']}, {args.threads} threads; "
          f"Harmonia's kernel: {result['kernel']}; the sum of a buffer: {bandwidth} GiB/s; wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
