"""Rows per minute of `harmonia batch` on the local process pool and on Ray, and Ray's start-up cost.

The same batch (N rows of the tiny MusicGen, each its own prompt and seed) runs on each executor
into an empty artifact store, so every row is generated (no cache hits); then once more on the
local pool to show what a re-run of cached rows costs. Two row sizes: "tiny" rows (0.5 s clips)
where start-up and per-row overhead dominate, and "small" rows (longer clips) where generation
does. Ray runs on a local cluster started for the run (what `--executor ray` does without
RAY_ADDRESS); its start-up is reported apart: `ray.init` plus the resource check, and the time
until the first row came back (actors importing torch and loading the model).

    .venv/bin/python benchmarks/bench_batch.py                        # N=8 rows of 0.5 s and 3 s
    .venv/bin/python benchmarks/bench_batch.py --rows 4 --durations 0.5 --executors local
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_flags, cpu_name

from harmonia.batch import executor_config, load_batch, run_batch
from harmonia.workbench import Workbench

PARAMS = """\
models:
  tiny-musicgen: {builder: musicgen, seed: 0, engine: musicgen, license: mit}
music:
  model: tiny-musicgen
"""
PROMPTS = ["calm piano", "funk drums", "warm bass", "bright synth lead", "string pad", "jazz trio",
           "lofi beat", "rock guitar"]  # fmt: skip


def batch_text(rows: int, duration_s: float) -> str:
    lines = [f"defaults: {{duration_s: {duration_s}}}", "rows:"]
    lines += [f"  - {{prompt: {PROMPTS[i % len(PROMPTS)]!r}, seed: {i}}}" for i in range(rows)]
    return "\n".join(lines) + "\n"


def run_once(wb: Workbench, executor: str, workers: int, path: Path, fresh: bool) -> dict:
    if fresh:
        shutil.rmtree(wb.artifacts_dir, ignore_errors=True)
    report = run_batch(wb, load_batch(wb, path), executor_config(wb, executor=executor, workers=workers))
    made = len(report.results) - len(report.failed)
    return {
        "executor": executor, "rows": len(report.results), "done": report.done, "cached": report.cached,
        "failed": len(report.failed), "seconds": round(report.seconds, 2), "startup_s": round(report.startup_s, 2),
        "first_row_s": round(report.first_row_s, 2) if report.first_row_s is not None else None,
        "rows_per_min": round(60 * made / report.seconds, 1), "artifacts": [r.artifact for r in report.results],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--durations", default="0.5,3", help="seconds of audio per row, one run per value")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch.json"))
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)  # a local cluster per run, what the start-up cost is about
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # its token stays in this process, not ~/.ray
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

    from harmonia.tiny import build_tiny

    root = Path(tempfile.mkdtemp(prefix="harmonia-bench-batch-"))
    try:
        (root / "params.yaml").write_text(PARAMS)
        wb = Workbench.open(root)
        build_tiny(wb, "musicgen", name="tiny-musicgen", seed=0)
        runs = []
        for duration in (float(d) for d in args.durations.split(",")):
            path = root / f"batch-{duration:g}.yaml"
            path.write_text(batch_text(args.rows, duration))
            ids = {}
            for executor in args.executors.split(","):
                run = run_once(wb, executor, args.workers, path, fresh=True)
                ids[executor] = run.pop("artifacts")
                runs.append({"duration_s": duration, "cached_rerun": False, **run})
                print(f"{duration:>4g} s rows  {executor:5}  {run['rows_per_min']:7.1f} rows/min  "
                      f"{run['seconds']:6.1f} s  start-up {run['startup_s']:5.1f} s  first row {run['first_row_s']} s",
                      flush=True)  # fmt: skip
            again = run_once(wb, "local", args.workers, path, fresh=False)
            again.pop("artifacts")
            runs.append({"duration_s": duration, "cached_rerun": True, **again})
            print(f"{duration:>4g} s rows  local re-run (all cached)  {again['seconds']:.1f} s", flush=True)
            if len(ids) > 1:
                same = len({tuple(v) for v in ids.values()}) == 1
                print(f"  same artifact ids on every executor: {same}")
                runs[-1]["same_ids_across_executors"] = same
        result = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "workers": args.workers,
                  "rows": args.rows, "runs": runs}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
