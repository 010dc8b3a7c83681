"""The decoder's two-row products alone, on every path Harmonia can take, against the memory.

One decoding step of MusicGen at batch 1 with guidance multiplies two rows by every weight
of the decoder: per layer the self-attention's q, k, v and output (hidden x hidden), the
cross-attention's q and output, fc1 (ffn x hidden) and fc2 (hidden x ffn). This script builds
those weights at random for musicgen-small's shapes (24 layers of 1024/4096) and times all
of one step's products on each path, best of --runs, weights cold (1.5 GB of float32 do not
fit a cache): torch's `F.linear` and `W @ x.T` in float32, `F.linear` in bfloat16, torch.ao's
fbgemm int8, and Harmonia's kernels (`rows` in float32 and bfloat16, `rowwise` int8, `int4`)
where this CPU runs them; on an AVX-512 CPU also their AVX2 forms (the same bits: what a CPU
without AVX-512 runs), and `int4`'s torch form (the same bits again, float32 weights: what a
CPU without either form runs). GiB/s is the bytes each path reads (its weights and scales)
over its time; the plain sum of a 1 GiB buffer is the machine's limit.

It also times the same int4 weights as many products and as one: every layer's fc2 as 24
calls on separate tensors, as 24 calls on views of one buffer (as the engine lays them out),
and stacked into one matrix as one call (and the 144 hidden x hidden products likewise). The
gap is what each call costs besides reading its weights (dispatch, setting up, starting both
threads, the memory stream starting again elsewhere).

    .venv/bin/python benchmarks/bench_products.py            # the README's figures
    .venv/bin/python benchmarks/bench_products.py --tiny     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings
from pathlib import Path

import torch
from common import avx2_form, best, cpu_flags, cpu_name, step_products, torch_build

from harmonia.engines.musicgen import _Int4Linear, _ReferenceInt4Linear, _RowwiseInt8Linear
from harmonia.kernels import unavailable


def packed_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.buffers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=8, help="best of N")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tiny", action="store_true", help="2 layers of 64/256: a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "products.json")
    args = parser.parse_args()
    if args.tiny:
        args.layers, args.hidden, args.ffn = 2, 64, 256
    torch.set_num_threads(args.threads)
    hidden, ffn = args.hidden, args.ffn
    linears, x = step_products(args.layers, hidden, ffn)
    shapes = [(m.out_features, m.in_features) for m in linears]
    weights = sum(out * width for out, width in shapes)

    paths: dict[str, tuple] = {}  # name -> (one step's products, bytes they read)
    with torch.inference_mode():
        paths["fp32 F.linear"] = (
            lambda: [torch.nn.functional.linear(x[m.in_features], m.weight) for m in linears],
            4 * weights,
        )
        paths["fp32 W @ x.T"] = (
            lambda: [(m.weight @ x[m.in_features].t()).t() for m in linears],
            4 * weights,
        )
        rows = unavailable("rows_linear") is None
        if rows:
            paths["fp32 rows (Harmonia)"] = (
                lambda: [torch.ops.harmonia.rows_linear(x[m.in_features], m.weight, None) for m in linears],
                4 * weights,
            )
            if narrow := avx2_form("rows_linear", paths["fp32 rows (Harmonia)"][0]):
                paths["fp32 rows, AVX2 form"] = (narrow, 4 * weights)
        halves = [m.weight.to(torch.bfloat16) for m in linears]
        xb = {k: v.to(torch.bfloat16) for k, v in x.items()}
        paths["bf16 F.linear"] = (
            lambda: [torch.nn.functional.linear(xb[w.shape[1]], w) for w in halves],
            2 * weights,
        )
        if rows:
            paths["bf16 rows (Harmonia)"] = (
                lambda: [torch.ops.harmonia.rows_linear(xb[w.shape[1]], w, None) for w in halves],
                2 * weights,
            )
            if narrow := avx2_form("rows_linear", paths["bf16 rows (Harmonia)"][0]):
                paths["bf16 rows, AVX2 form"] = (narrow, 2 * weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            fbgemm = list(
                torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(*linears), {torch.nn.Linear}, dtype=torch.qint8
                )
            )
        paths["int8 fbgemm"] = (lambda: [m(x[m.in_features]) for m in fbgemm], weights)
        if unavailable("int8_linear") is None:
            rowwise = [_RowwiseInt8Linear(m) for m in linears]
            paths["int8 rowwise (Harmonia)"] = (
                lambda: [m(x[m.in_features]) for m in rowwise],
                sum(map(packed_bytes, rowwise)),
            )
            if narrow := avx2_form("int8_linear", paths["int8 rowwise (Harmonia)"][0]):
                paths["int8 rowwise, AVX2 form"] = (narrow, paths["int8 rowwise (Harmonia)"][1])
        int4 = None
        if unavailable("int4_linear") is None:
            int4 = [_Int4Linear(m) for m in linears]
            paths["int4 (Harmonia)"] = (
                lambda: [m(x[m.in_features]) for m in int4],
                sum(map(packed_bytes, int4)),
            )
            if narrow := avx2_form("int4_linear", paths["int4 (Harmonia)"][0]):
                paths["int4, AVX2 form"] = (narrow, paths["int4 (Harmonia)"][1])
        # int4's torch form (the same bits, float32 weights): what runs where neither kernel form does
        reference4 = [_ReferenceInt4Linear(m) for m in linears]
        paths["int4 torch form"] = (
            lambda: [m(x[m.in_features]) for m in reference4],
            sum(map(packed_bytes, reference4)),
        )

        rows_out = []
        for name, (run, nbytes) in paths.items():
            seconds = best(run, args.runs)
            rows_out.append(
                {"path": name, "ms": round(seconds * 1000, 3), "seconds": round(seconds, 9), "bytes": nbytes, "gib": round(nbytes / 2**30, 4),
                 "gib_s": round(nbytes / 2**30 / seconds, 1)}
            )  # fmt: skip
            print(
                f"{name:26s} {seconds * 1000:8.2f} ms  {nbytes / 2**30:6.3f} GiB  {rows_out[-1]['gib_s']:6.1f} GiB/s",
                flush=True,
            )

        calls = []
        if int4 is not None:  # the same int4 weights as many calls and as one
            for label, width, picked in (
                ("fc2", ffn, [m for (out, w), m in zip(shapes, linears, strict=True) if w == ffn]),
                (
                    "hidden x hidden",
                    hidden,
                    [m for (out, w), m in zip(shapes, linears, strict=True) if (out, w) == (hidden, hidden)],
                ),
            ):
                many = [_Int4Linear(m) for m in picked]
                stacked = torch.nn.Linear(width, sum(m.out_features for m in picked), bias=False)
                with torch.no_grad():
                    stacked.weight.copy_(torch.cat([m.weight for m in picked]))
                one = _Int4Linear(stacked)
                nbytes = packed_bytes(one)
                many_s = best(lambda many=many, width=width: [m(x[width]) for m in many], args.runs)
                one_s = best(lambda one=one, width=width: one(x[width]), args.runs)
                blocks = (
                    picked[0].out_features // 16
                )  # each product's 16-output blocks, as views of one buffer
                views = [
                    (
                        one.packed[i * blocks : (i + 1) * blocks],
                        one.scales[i * blocks : (i + 1) * blocks],
                        m.out_features,
                    )
                    for i, m in enumerate(picked)
                ]
                views_s = best(
                    lambda views=views, width=width: [
                        torch.ops.harmonia.int4_linear(x[width], p, s, None, o) for p, s, o in views
                    ],
                    args.runs,
                )
                calls.append(
                    {"products": label, "calls": len(many), "gib": round(nbytes / 2**30, 4),
                     "many_calls_gib_s": round(nbytes / 2**30 / many_s, 1),
                     "many_calls_one_buffer_gib_s": round(nbytes / 2**30 / views_s, 1),
                     "one_call_gib_s": round(nbytes / 2**30 / one_s, 1),
                     "cost_per_call_us": round((many_s - one_s) / len(many) * 1e6, 2)}
                )  # fmt: skip
                c = calls[-1]
                print(
                    f"int4 {label}: {c['calls']} calls {c['many_calls_gib_s']} GiB/s (on views of one buffer "
                    f"{c['many_calls_one_buffer_gib_s']}), one call {c['one_call_gib_s']} GiB/s: "
                    f"{c['cost_per_call_us']} us a call besides its bytes",
                    flush=True,
                )
        data = torch.ones(1 << (20 if args.tiny else 28))  # 4 MiB or 1 GiB of float32
        gib = data.numel() * 4 / 2**30
        bandwidth = round(gib / best(lambda: data.sum(), 5), 1)
    result = {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch_build(), "python": platform.python_version(),
        "threads": args.threads, "layers": args.layers, "hidden": hidden, "ffn": ffn, "rows": 2,
        "memory_bandwidth_gib_s": bandwidth, "paths": rows_out, "calls": calls,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']} ({', '.join(result['cpu_flags'])}), torch {result['torch']}, {args.threads} threads; "
          f"the sum of a buffer: {bandwidth} GiB/s; wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
