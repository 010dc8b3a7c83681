"""How fast `harmonia models verify` is, against the plain tools on the same files in the same run.

1. Full verify of a generated tree (default 2 GiB in 1024 files): throughput against a
   single-stream ``hashlib.sha256`` loop and against ``sha256sum`` over the same files.
2. Default (fast) verify of 10,000 unchanged small files: the time of a stat-only pass.

Files are read once before timing so every contender reads from the page cache.
Figures go to stdout and to benchmarks/results/verify.json.

    .venv/bin/python benchmarks/bench_verify.py            # the README's figures
    .venv/bin/python benchmarks/bench_verify.py --size-mib 64 --files 32 --small-files 500
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

from common import cpu_name

from harmonia.hashing import default_workers, hash_files, sha256_file
from harmonia.inventory import FileEntry, Inventory, Source, write_inventory
from harmonia.snapshots import verify
from harmonia.workbench import Workbench

BLOCK = os.urandom(8 << 20)


def make_snapshot(wb: Workbench, name: str, files: int, file_bytes: int, fan_out: int = 100) -> list[Path]:
    folder = wb.snapshot_dir("model", name)
    paths = []
    for i in range(files):
        path = folder / f"d{i // fan_out:03d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(i.to_bytes(8, "little"))
            left = file_bytes - 8
            while left > 0:
                piece = BLOCK[: min(left, len(BLOCK))]
                f.write(piece)
                left -= len(piece)
        paths.append(path)
    digests = hash_files(paths)
    entries = tuple(FileEntry(str(p.relative_to(folder)), p.stat().st_size, digests[str(p)]) for p in paths)
    write_inventory(
        folder, Inventory(name, "model", Source("synthetic", builder="bench", seed=0), None, entries)
    )
    return paths


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="size of the big tree (default 2048)")
    parser.add_argument("--files", type=int, default=1024, help="files in the big tree (default 1024)")
    parser.add_argument("--small-files", type=int, default=10_000, help="files in the small tree")
    parser.add_argument("--runs", type=int, default=3, help="best of N for each contender")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "verify.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="harmonia-bench-verify-"))
    try:
        (tmp / "params.yaml").write_text("models: {}\n")
        wb = Workbench.open(tmp)
        # 1. The big tree: full verify against single-stream sha256 and sha256sum.
        file_bytes = args.size_mib * (1 << 20) // args.files
        paths = make_snapshot(wb, "big", args.files, file_bytes)
        total = sum(p.stat().st_size for p in paths)
        subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)  # warm the cache

        t_single = best_of(args.runs, lambda: [sha256_file(p) for p in paths])
        t_sum = best_of(
            args.runs,
            lambda: subprocess.run(["sha256sum", *map(str, paths)], stdout=subprocess.DEVNULL, check=True),
        )
        reports = []
        t_full = best_of(args.runs, lambda: reports.append(verify(wb, "model", "big", full=True)))
        assert all(r.ok and r.hashed == args.files for r in reports)

        # 2. The small tree: default verify of unchanged files.
        make_snapshot(wb, "small", args.small_files, 1024)
        assert verify(wb, "model", "small", full=True).ok  # records the stat facts
        fast_times = []
        for _ in range(max(5, args.runs)):
            started = time.perf_counter()
            report = verify(wb, "model", "small")
            fast_times.append(time.perf_counter() - started)
            assert report.ok and report.hashed == 0 and report.skipped == args.small_files

        gib = total / (1 << 30)
        result = {
            "machine": {
                "cpu": cpu_name(),
                "cores": os.cpu_count(),
                "hash_threads": default_workers(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "big_tree": {"bytes": total, "files": args.files},
            "full_verify_s": round(t_full, 3),
            "single_stream_sha256_s": round(t_single, 3),
            "sha256sum_s": round(t_sum, 3),
            "full_verify_gib_s": round(gib / t_full, 3),
            "single_stream_gib_s": round(gib / t_single, 3),
            "sha256sum_gib_s": round(gib / t_sum, 3),
            "ratio_vs_single_stream": round(t_single / t_full, 2),
            "ratio_vs_sha256sum": round(t_sum / t_full, 2),
            "small_tree_files": args.small_files,
            "fast_verify_unchanged_s_best": round(min(fast_times), 4),
            "fast_verify_unchanged_s_median": round(statistics.median(fast_times), 4),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    r = result
    print(f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, Python {r['machine']['python']}")
    print(f"full verify of {gib:.2f} GiB in {args.files} files (best of {args.runs}, page cache warm):")
    print(f"  harmonia verify --full   {r['full_verify_s']:7.3f} s  {r['full_verify_gib_s']:.2f} GiB/s")
    print(
        f"  hashlib.sha256, 1 stream {r['single_stream_sha256_s']:7.3f} s  {r['single_stream_gib_s']:.2f} GiB/s"
    )
    print(f"  sha256sum                {r['sha256sum_s']:7.3f} s  {r['sha256sum_gib_s']:.2f} GiB/s")
    print(
        f"  ratio vs single stream   {r['ratio_vs_single_stream']:.2f}x   vs sha256sum {r['ratio_vs_sha256sum']:.2f}x"
    )
    print(
        f"default verify of {args.small_files} unchanged files: best {r['fast_verify_unchanged_s_best']:.3f} s, "
        f"median {r['fast_verify_unchanged_s_median']:.3f} s"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
