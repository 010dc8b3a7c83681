"""Harmonia's integer products and decoding steps against runtimes built for CPU decoding.

Issue #18 asked whether ONNX Runtime's weight-only products or CTranslate2 read a two-row
decoding step's weights faster than Harmonia's own kernels. Two parts; every path runs in a
process of its own (a runtime's thread pool keeps spinning after a call and slows whatever
runs next in the same process), and the paths take turns over --rounds:

- products: one decoding step's two-row products (musicgen-small's decoder: 24 layers of q, k,
  v, out, cross q, cross out at 1024 x 1024, fc1 4096 x 1024, fc2 1024 x 4096; random weights,
  cold, as bench_products.py). Harmonia's ``int4`` (groups of 64, each row of the input
  quantised to int8) and ``rowwise`` int8 against ONNX Runtime's ``MatMulNBits`` (4 bits,
  groups of 64, accuracy level 4: int8 inputs, given Harmonia's own rounded weights) and
  ``DynamicQuantizeMatMul`` (int8 weights per channel, the input quantised per tensor), all
  192 products in one graph (one call a step, ONNX Runtime's best case); torch's float32
  ``F.linear`` is the memory's yardstick. Each is laid out as it runs in use: Harmonia's
  weights in one buffer in step order (huge pages, as the engine keeps them), ONNX Runtime's
  as it packs its own, torch's as separate tensors. Each row also says how far its outputs lie
  from Harmonia's on the same weights (largest difference over the largest output; where this
  CPU lacks Harmonia's kernels, from their torch stand-ins, which compute the same bits).
- steps: whole decoding steps at batch 1 with guidance (two rows) over --steps steps:
  Harmonia's engine in ``int8`` and ``int4`` on musicgen-small's architecture against
  CTranslate2's ``int8`` on an mBART decoder of the same shape, read from the same config
  (24 layers of 1024/4096, 16 heads, cross-attention on a 12-token prompt, 8192 outputs for
  MusicGen's four heads of 2048), sampling top-k 250 as MusicGen does. Not the same model:
  the same bytes a step and the same kinds of work (CTranslate2's time a step: a take of
  --steps + 10 steps less one of 10, each row's tokens counted; Harmonia's: its progress calls, after the prompt).

    make bench-runtimes                                                  # the README's figures
    .venv/bin/python benchmarks/bench_runtimes.py --tiny --rounds 1 --threads 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRODUCTS = ("torch fp32 F.linear", "Harmonia int4", "ONNX Runtime int4", "Harmonia int8", "ONNX Runtime int8")
STEPS = ("Harmonia int4", "Harmonia int8", "CTranslate2 int8")
SOURCE = [f"t{i}" for i in range(4, 16)]  # CTranslate2's prompt: 12 tokens, as T5 gives a short prompt


def onnx_products(linears, x, int4: bool):
    """ONNX Runtime's session holding every product as one graph node, and its feeds."""
    import numpy as np
    import onnxruntime
    import torch
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, outputs = [], [], []
    for n, linear in enumerate(linears):
        w, (out, width) = linear.weight.detach(), linear.weight.shape
        if int4:  # Harmonia's int4 rounding (groups of 64, scale = largest / 7), stored + 8 as nibbles
            groups = w.reshape(out, width // 64, 64)
            scales = groups.abs().amax(2) / 7
            scales = torch.where(scales > 0, scales, torch.ones_like(scales))
            q = (torch.round(groups / scales[..., None]).clamp(-7, 7) + 8).to(torch.uint8)
            packed = q[..., 0::2] | (q[..., 1::2] << 4)  # [out, groups, 32], low nibble first
            initializers += [numpy_helper.from_array(packed.numpy(), f"w{n}"),
                             numpy_helper.from_array(scales.reshape(-1).numpy(), f"s{n}")]  # fmt: skip
            nodes.append(helper.make_node(
                "MatMulNBits", [f"x{width}", f"w{n}", f"s{n}"], [f"y{n}"], domain="com.microsoft",
                K=width, N=out, bits=4, block_size=64, accuracy_level=4))  # fmt: skip
        else:  # int8 per output channel, symmetric (Harmonia's rowwise weights)
            scales = w.abs().amax(1) / 127
            q = torch.round(w.t() / scales).clamp(-127, 127).to(torch.int8)  # [in, out]
            initializers += [numpy_helper.from_array(np.ascontiguousarray(q.numpy()), f"w{n}"),
                             numpy_helper.from_array(scales.numpy(), f"s{n}"),
                             numpy_helper.from_array(np.zeros(out, np.int8), f"z{n}")]  # fmt: skip
            nodes.append(helper.make_node(
                "DynamicQuantizeMatMul", [f"x{width}", f"w{n}", f"s{n}", f"z{n}"], [f"y{n}"],
                domain="com.microsoft"))  # fmt: skip
        outputs.append(helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, [2, out]))
    inputs = [helper.make_tensor_value_info(f"x{w}", TensorProto.FLOAT, [2, w]) for w in x]
    model = helper.make_model(
        helper.make_graph(nodes, "products", inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 10  # what this onnxruntime reads
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(os.environ["BENCH_THREADS"]), 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, {f"x{w}": rows.numpy() for w, rows in x.items()}


def child_products(path: str, args) -> dict:
    import torch
    from common import best, step_products

    from harmonia.engines.musicgen import (
        _Int4Linear,
        _ReferenceInt4Linear,
        _ReferenceInt8Linear,
        _RowwiseInt8Linear,
        lay_out_in_one_buffer,
    )
    from harmonia.kernels import unavailable

    torch.set_num_threads(args.threads)
    linears, x = step_products(args.layers, args.hidden, args.ffn)
    count, channels = sum(m.weight.numel() for m in linears), sum(m.out_features for m in linears)
    # the bytes each reads: weights, and a float32 scale per group of 64 (int4) or per channel (int8)
    nbytes = {"fp32": 4 * count, "int4": count // 2 + count // 64 * 4, "int8": count + 4 * channels}
    row = {"path": path, "threads": args.threads}
    with torch.inference_mode():
        if path == "torch fp32 F.linear":
            run, kind = (
                (lambda: [torch.nn.functional.linear(x[m.in_features], m.weight) for m in linears]),
                "fp32",
            )
        else:
            kind = "int4" if "int4" in path else "int8"
            why = unavailable(f"{kind}_linear")
            if why is not None and path.startswith("Harmonia"):
                return {**row, "skipped": why}
            if why is None:
                harmonia = [(_Int4Linear if kind == "int4" else _RowwiseInt8Linear)(m) for m in linears]
                lay_out_in_one_buffer(harmonia)  # as the engine lays them out: one buffer, in step order
            else:  # ONNX Runtime compared with the kernels' torch stand-ins (the same bits)
                harmonia = [
                    (_ReferenceInt4Linear if kind == "int4" else _ReferenceInt8Linear)(m) for m in linears
                ]
            reference = [m(x[m.in_features]) for m in harmonia]
            run = lambda: [m(x[m.in_features]) for m in harmonia]  # noqa: E731
            if path.startswith("ONNX Runtime"):
                session, feeds = onnx_products(linears, x, kind == "int4")
                run = lambda: session.run(None, feeds)  # noqa: E731
                got = [torch.from_numpy(y) for y in session.run(None, feeds)]
                largest = max(float(r.abs().max()) for r in reference)
                row["off_harmonia"] = round(
                    max(float((g - r).abs().max()) for g, r in zip(got, reference, strict=True)) / largest, 5
                )
                del harmonia
        seconds = best(run, args.runs)
    gib_s = round(nbytes[kind] / 2**30 / seconds, 1)
    return {**row, "ms": round(seconds * 1e3, 3), "bytes": nbytes[kind], "gib_s": gib_s}


def child_steps(path: str, args) -> dict:
    row = {"path": path, "threads": args.threads, "steps": args.steps}
    if path.startswith("CTranslate2"):
        import ctranslate2

        translator = ctranslate2.Translator(
            str(args.model / "ctranslate2-int8"), device="cpu", compute_type="int8",
            intra_threads=args.threads, inter_threads=1,
        )  # fmt: skip

        def take(steps: int) -> tuple[float, int]:
            """Seconds for a take of ``steps`` forced steps, and the tokens each row got."""
            started = time.perf_counter()
            results = translator.translate_batch(
                [SOURCE] * 2, beam_size=1, sampling_topk=250, max_decoding_length=steps,
                min_decoding_length=steps, target_prefix=[["</s>"]] * 2, max_batch_size=2,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            lengths = {len(r.hypotheses[0]) for r in results}
            assert len(lengths) == 1, f"CTranslate2's rows decoded {sorted(lengths)} tokens"
            return seconds, lengths.pop()

        take(5)
        (short, few), (long, many) = (min(take(n) for _ in range(2)) for n in (10, args.steps + 10))
        return {**row, "steps": many - few, "ms_per_step": round((long - short) / (many - few) * 1e3, 3)}
    from bench_generate import PROMPT

    from harmonia.engines.musicgen import MusicGenEngine, MusicRequest
    from harmonia.workbench import Workbench

    engine = MusicGenEngine.load(
        Workbench.open(args.model / "workbench"), "bench", threads=args.threads, precision=path.split()[-1]
    )
    engine.generate(MusicRequest([PROMPT], duration_s=0.1, seed=1))  # one-off costs of a first call
    frame_rate = engine.model.config.audio_encoder.frame_rate
    request = MusicRequest([PROMPT], duration_s=args.steps / frame_rate, seed=1)
    fastest = float("inf")
    for _ in range(2):
        stamps: list[float] = []
        engine.generate(
            request, progress=lambda done, total, stamps=stamps: stamps.append(time.perf_counter())
        )
        assert len(stamps) > 2, f"a take of {len(stamps)} progress calls"
        fastest = min(fastest, (stamps[-1] - stamps[0]) / (len(stamps) - 1))
    return {**row, "steps": len(stamps) - 1, "ms_per_step": round(fastest * 1e3, 3),
            "paths": dict(engine.loaded.paths)}  # fmt: skip


def build_models(folder: Path, tiny: bool) -> dict:
    """musicgen-small's architecture as a workbench (bench_generate.py's), and an mBART decoder
    of the same shape converted to CTranslate2's int8; the decoder's shape."""
    import ctranslate2
    import torch
    from bench_generate import make_workbench
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MBartConfig, MBartForConditionalGeneration, PreTrainedTokenizerFast

    from harmonia.engines.base import quiet_transformers

    workbench = make_workbench(tiny)
    shutil.move(str(workbench.root), folder / "workbench")
    decoder = json.loads((folder / "workbench" / "models" / "bench" / "config.json").read_text())["decoder"]
    shape = {"layers": decoder["num_hidden_layers"], "hidden": decoder["hidden_size"],
             "heads": decoder["num_attention_heads"], "ffn": decoder["ffn_dim"],
             "outputs": decoder["num_codebooks"] * decoder["vocab_size"]}  # fmt: skip
    config = MBartConfig(
        vocab_size=shape["outputs"], d_model=shape["hidden"], encoder_layers=1, decoder_layers=shape["layers"],
        encoder_attention_heads=shape["heads"], decoder_attention_heads=shape["heads"],
        encoder_ffn_dim=shape["ffn"], decoder_ffn_dim=shape["ffn"], max_position_embeddings=2048,
        activation_function="gelu", normalize_before=True, scale_embedding=False,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    mbart = folder / "mbart"
    with quiet_transformers():
        MBartForConditionalGeneration(config).eval().save_pretrained(mbart)
    vocabulary = {
        "<s>": 0,
        "<pad>": 1,
        "</s>": 2,
        "<unk>": 3,
        **{f"t{i}": i for i in range(4, shape["outputs"])},
    }
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    ).save_pretrained(mbart)
    with quiet_transformers():
        ctranslate2.converters.TransformersConverter(str(mbart)).convert(
            str(folder / "ctranslate2-int8"), quantization="int8"
        )
    shutil.rmtree(mbart)
    return shape


def run_child(part: str, path: str, threads: int, args) -> dict:
    """One path's row from a process of its own; a child that fails or hangs gives a row that
    says why (the run goes on)."""
    command = [sys.executable, __file__, "--child", part, "--path", path, "--threads", str(threads),
               "--runs", str(args.runs), "--steps", str(args.steps), *(["--tiny"] if args.tiny else []),
               *(["--model", str(args.model)] if args.model else [])]  # fmt: skip
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "BENCH_THREADS": str(threads)},
        )
    except subprocess.TimeoutExpired:
        return {"path": path, "threads": threads, "failed": "no result in 30 minutes"}
    errors = (
        "\n".join(proc.stderr.strip().splitlines()[-12:])
        or f"exit status {proc.returncode}, nothing on stderr"
    )
    if proc.returncode != 0:
        return {"path": path, "threads": threads, "failed": errors}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"path": path, "threads": threads, "failed": f"no result line on stdout; {errors}"}


def summary(rows: list[dict], key: str) -> dict:
    figures = [r[key] for r in rows]
    return {**{k: v for k, v in rows[0].items() if k != key}, f"best_{key}": min(figures),
            f"median_{key}": statistics.median(figures), key: figures}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--rounds", type=int, default=2, help="turns each path takes (each in a fresh process)"
    )
    parser.add_argument("--runs", type=int, default=8, help="products: best of N calls")
    parser.add_argument("--steps", type=int, default=250, help="decoding steps a take (250: 5 s of audio)")
    parser.add_argument("--parts", nargs="+", choices=["products", "steps"], default=["products", "steps"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "runtimes.json")
    parser.add_argument("--child", choices=["products", "steps"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.layers, args.hidden, args.ffn = (2, 64, 256) if args.tiny else (24, 1024, 4096)
    if args.child:
        args.threads = args.threads[0]
        row = (child_products if args.child == "products" else child_steps)(args.path, args)
        print(json.dumps(row))
        return

    from importlib.metadata import version

    from common import cpu_flags, cpu_name, torch_build

    rows: dict[tuple, list] = {}  # (part, path, threads) -> a row per round
    with tempfile.TemporaryDirectory(prefix="harmonia-bench-runtimes-") as tmp:
        args.model = Path(tmp)
        shape = None
        if "steps" in args.parts:
            started = time.perf_counter()
            shape = build_models(args.model, args.tiny)
            print(f"models built in {time.perf_counter() - started:.0f} s: decoder {shape}", flush=True)
        for turn in range(args.rounds):
            for threads in args.threads:
                for part, paths in (("products", PRODUCTS), ("steps", STEPS)):
                    for path in paths if part in args.parts else ():
                        row = run_child(part, path, threads, args)
                        rows.setdefault((part, path, threads), []).append(row)
                        print(
                            f"{part:9s} {path:22s} {threads} thr  {line(row)}  (round {turn + 1})", flush=True
                        )
    done = {key: [r for r in got if "failed" not in r and "skipped" not in r] for key, got in rows.items()}
    result = {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch_build(), "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"), "ctranslate2": version("ctranslate2"), "rounds": args.rounds,
        "decoder": shape, "rows": 2,
        "products": [summary(got, "ms") for (part, *_), got in done.items() if part == "products" and got],
        "steps": [summary(got, "ms_per_step") for (part, *_), got in done.items() if part == "steps" and got],
        "skipped": sorted({r["skipped"] for got in rows.values() for r in got if "skipped" in r}),
        "failed": [r for got in rows.values() for r in got if "failed" in r],
    }  # fmt: skip
    for row in result["products"]:
        row["gib_s"] = round(row["bytes"] / 2**30 / row["best_ms"] * 1e3, 1)
    print("best (median) of the rounds:")
    for row in result["products"]:
        print(f"products  {row['path']:22s} {row['threads']} thr  {row['best_ms']:8.2f} ({row['median_ms']:.2f}) ms  "
              f"{row['gib_s']:5.1f} GiB/s")  # fmt: skip
    for row in result["steps"]:
        print(f"steps     {row['path']:22s} {row['threads']} thr  {row['best_ms_per_step']:8.2f} "
              f"({row['median_ms_per_step']:.2f}) ms a step")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']} ({', '.join(result['cpu_flags'])}), torch {result['torch']}, onnxruntime "
          f"{result['onnxruntime']}, ctranslate2 {result['ctranslate2']}; wrote {args.out}")  # fmt: skip
    if result["failed"]:
        raise SystemExit(f"{len(result['failed'])} run(s) failed; their errors are in {args.out}")


def line(row: dict) -> str:
    """A child's row as printed while the run goes on."""
    if "failed" in row or "skipped" in row:
        why = row.get("failed") or row.get("skipped") or "?"
        return f"{'failed' if 'failed' in row else 'skipped'}: {why.splitlines()[-1]}"
    if "ms_per_step" in row:
        return f"{row['ms_per_step']:8.2f} ms a step ({row['steps']} steps)"
    off = f"  off Harmonia's by {row['off_harmonia']}" if "off_harmonia" in row else ""
    return f"{row['ms']:8.2f} ms  {row['bytes'] / 2**30:6.3f} GiB  {row['gib_s']:5.1f} GiB/s{off}"


if __name__ == "__main__":
    main()
