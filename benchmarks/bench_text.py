"""Tokens per second of the text engine on Qwen2.5-0.5B-Instruct's architecture, against plain transformers.

The model is Qwen/Qwen2.5-0.5B-Instruct's config (24 layers, 896 wide, 14 heads with 2 KV
heads, a 151,936-token vocabulary tied to the embedding) built in code with random weights:
the same compute as the real checkpoint. It is saved as an ordinary snapshot and loaded
through Harmonia's verified path. The script times N greedy tokens through the engine's
in-process decoding (chat template, generate with the progress/cancel hook, on the
request's pinned threads) and through a plain ``model.generate`` on the same input ids,
best of R (interleaved, so both see the same contention), and checks that both write the
same text. The 1-minute load average before and after is recorded: on a shared machine
other work slows both.

    .venv/bin/python benchmarks/bench_text.py                  # the README's figure
    .venv/bin/python benchmarks/bench_text.py --tokens 8 --runs 1 --tiny   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_name

from harmonia.engines.base import Steps, quiet_transformers
from harmonia.engines.text import TextEngine, messages_of
from harmonia.hashing import hash_files
from harmonia.inventory import FileEntry, Inventory, Source, write_inventory
from harmonia.requests import TextRequest
from harmonia.snapshots import scan_tree
from harmonia.tiny import build_lm
from harmonia.workbench import Workbench

IDEA = "a slow, warm lo-fi piece for a rainy evening, with a muted piano and soft brushes on the snare"
QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B-Instruct config.json
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu",
)  # fmt: skip


def build_snapshot(root: Path, tiny: bool) -> str:
    """models/bench-lm: the tiny LM's tokenizer and chat template, Qwen2.5-0.5B's model (random)."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    folder = root / "models" / "bench-lm"
    folder.mkdir(parents=True)
    build_lm(folder)  # tokenizer, chat template, tiny weights (replaced below unless --tiny)
    if not tiny:
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).eval()
        # random weights never emit the end token (an id of the byte tokenizer): all N steps run
        model.generation_config = GenerationConfig(eos_token_id=QWEN25_05B["vocab_size"] - 1, pad_token_id=0)
        for stale in folder.glob("model*.safetensors"):
            stale.unlink()
        model.save_pretrained(folder)
    files = sorted(scan_tree(folder))
    digests = hash_files(folder / f for f in files)
    entries = tuple(FileEntry(f, (folder / f).stat().st_size, digests[str(folder / f)]) for f in files)
    write_inventory(
        folder, Inventory("bench-lm", "model", Source("synthetic", builder="bench"), "mit", entries)
    )
    (root / "params.yaml").write_text("models:\n  bench-lm: {builder: bench, engine: text, license: mit}\n")
    return "bench-lm"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tiny", action="store_true", help="the tiny LM instead (a smoke run)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="harmonia-bench-text-") as tmp:
        root = Path(tmp)
        name = build_snapshot(root, args.tiny)
        wb = Workbench.open(root)
        started = time.perf_counter()
        engine = TextEngine.load(wb, name, threads=args.threads)
        load_s = time.perf_counter() - started
        request = TextEngine.check(TextRequest(IDEA, seed=0, max_new_tokens=args.tokens), engine.loaded.path)
        encoded = engine.tokenizer.apply_chat_template(
            messages_of(request), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

        def harmonia() -> tuple[float, str, dict]:
            t = time.perf_counter()
            text, info = engine._write(request, Steps(args.tokens))
            return time.perf_counter() - t, text, info

        def plain() -> tuple[float, str]:
            torch.set_num_threads(args.threads)
            t = time.perf_counter()
            with torch.inference_mode(), quiet_transformers():
                out = engine.model.generate(**encoded, max_new_tokens=args.tokens, do_sample=False)
            new = out[0, encoded["input_ids"].shape[1] :]
            return time.perf_counter() - t, engine.tokenizer.decode(new, skip_special_tokens=True)

        harmonia(), plain()  # first calls: one-off costs
        load_before = os.getloadavg()[0]
        times = [(harmonia()[0], plain()[0]) for _ in range(args.runs)]  # interleaved: the same contention
        ours, theirs = min(t[0] for t in times), min(t[1] for t in times)
        load_after = os.getloadavg()[0]
        _, text, info = harmonia()
        if text != plain()[1]:
            raise SystemExit("the engine and plain transformers wrote different text")
        prompt_tokens, new_tokens = info["prompt_tokens"], info["new_tokens"]
    result = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "model": "tiny-lm" if args.tiny else "Qwen2.5-0.5B-Instruct architecture, random weights, float32",
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "load_s": round(load_s, 2),
        "harmonia_tokens_per_s": round(new_tokens / ours, 2),
        "transformers_tokens_per_s": round(new_tokens / theirs, 2),
        "ratio": round(theirs / ours, 3),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],  # other work on the machine
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
