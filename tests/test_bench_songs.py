"""benchmarks/bench_songs.py still runs (on the tiny models); its figures are not asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_songs_runs_on_the_tiny_models(tmp_path):
    out = tmp_path / "songs.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_songs.py"), "--tiny", "--steps", "1", "--seconds", "6",
         "--dtypes", "float32", "--threads", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["part"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ace-step", "demucs"}
    assert all(
        r["same_samples"] and r["engine"]["seconds"] > 0 and r["peak_rss_gib"] > 0 for r in rows.values()
    )
