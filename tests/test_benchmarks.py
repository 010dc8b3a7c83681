"""The benchmark scripts still run (on small sizes); their figures are not asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, script: str, *args: str, timeout: int = 300):
    """Run benchmarks/<script>.py with ``args`` and --out in tmp_path; its JSON and the process."""
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args, "--out", str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc


def test_bench_verify_runs_and_writes_its_figures(tmp_path):
    result, proc = run_bench(
        tmp_path, "bench_verify", "--size-mib", "8", "--files", "16", "--small-files", "200", "--runs", "1"
    )
    assert result["big_tree"] == {"bytes": 8 << 20, "files": 16}
    assert result["small_tree_files"] == 200
    assert result["ratio_vs_single_stream"] > 0 and result["fast_verify_unchanged_s_best"] > 0
    assert "default verify of 200 unchanged files" in proc.stdout


def test_bench_generate_runs_on_the_tiny_model(tmp_path):
    from harmonia import kernels

    args = ("--tiny", "--steps", "13", "--runs", "1", "--batches", "1,2", "--long", "0.6")
    result, _ = run_bench(tmp_path, "bench_generate", *args)
    rows = {(r["mode"], r["batch"]): r for r in result["generate"] if r["clip"] == "short"}
    assert set(rows) == {(m, b) for m in ("exact", "bf16", "int8", "int4") for b in (1, 2)}
    long = {r["mode"]: r for r in result["generate"] if r["clip"] == "long"}
    assert set(long) == {"exact", "bf16", "int8", "int4"} and long["exact"]["same_samples_as_transformers"]
    assert long["int8"]["batch"] == 1 and long["int8"]["seconds"] > rows["int8", 1]["seconds"]
    assert (
        rows["exact", 1]["same_samples_as_transformers"] and rows["exact", 2]["same_samples_as_transformers"]
    )
    assert result["steps"] == 13 and result["load_s"] > 0 and result["memory_bandwidth_gib_s"] > 0
    per_step = {mode: rows[mode, 1]["decoder_bytes_per_step"] for mode in ("exact", "bf16", "int8", "int4")}
    # int8's bytes follow its measured path (fbgemm counts one byte a weight, rowwise its scales too):
    # on the tiny widths int4's padded groups and float32 scales can outweigh fbgemm's count; int4's
    # torch form (a CPU without either kernel form) keeps float32 weights
    assert per_step["int8"] < per_step["bf16"] < per_step["exact"]
    assert per_step["int4"] < per_step["bf16"] or kernels.unavailable("int4_linear") is not None
    for r in result["generate"]:  # the steps' share: their bytes over their time, against the bandwidth
        expected = (
            r["decoder_bytes_per_step"] / (1 << 30) / (r["step_ms"] / 1000) / result["memory_bandwidth_gib_s"]
        )
        assert r["step_ms"] > 0 and abs(r["step_bandwidth_share"] - expected) <= 0.001 + 0.05 * expected, r
    assert set(result["memory_bandwidth_by_pages_gib_s"]) == {"4k_pages", "huge_pages"}
    assert result["memory_bandwidth_gib_s"] == max(result["memory_bandwidth_by_pages_gib_s"].values())
    # each mode's product path, as the engine's calibration chose it on this CPU
    assert {"exact: few_row_products", "bf16: bf16_products", "int8: int8_products"} <= set(
        result["calibration"]
    )


def test_bench_precision_compares_every_mode_with_float32_on_the_tiny_model(tmp_path):
    result, proc = run_bench(tmp_path, "bench_precision", "--tiny", "--frames", "20")
    rows = {r["mode"]: r for r in result["modes"]}
    assert list(rows) == ["exact", "bf16", "int8 fbgemm", "int8 rowwise", "int4"] and result["frames"] == 20
    assert rows["exact"] | {"forward_s": 0} == {
        "mode": "exact", "layer": "Linear", "forward_s": 0, "relative_logit_error": 0.0,
        "relative_logit_error_max": 0.0, "greedy_agreement": 1.0, "sampled_agreement": 1.0, "kl_nats": 0.0,
    }  # fmt: skip
    assert rows["int4"]["layer"] in ("_Int4Linear", "_ReferenceInt4Linear")
    assert rows["int8 rowwise"]["layer"] in ("_RowwiseInt8Linear", "_ReferenceInt8Linear")
    for name in ("bf16", "int8 fbgemm", "int8 rowwise", "int4"):
        row = rows[name]
        assert 0 < row["relative_logit_error"] <= row["relative_logit_error_max"] < 1, row
        assert 0 < row["sampled_agreement"] < 1 and 0 <= row["greedy_agreement"] <= 1 and row["kl_nats"] > 0
    # fewer bits, further from float32
    assert rows["int4"]["relative_logit_error"] > rows["int8 rowwise"]["relative_logit_error"]
    assert "int4" in proc.stdout and "float32 logits:" in proc.stdout


def test_bench_products_times_every_path_this_cpu_runs(tmp_path):
    from harmonia import kernels

    result, proc = run_bench(tmp_path, "bench_products", "--tiny", "--runs", "2")
    paths = {r["path"]: r for r in result["paths"]}
    expected = {"fp32 F.linear", "fp32 W @ x.T", "bf16 F.linear", "int8 fbgemm", "int4 torch form"}
    if kernels.unavailable("rows_linear") is None:
        expected |= {"fp32 rows (Harmonia)", "bf16 rows (Harmonia)"}
        if kernels.form("rows_linear") == "avx512":  # and what a CPU without AVX-512 runs
            expected |= {"fp32 rows, AVX2 form", "bf16 rows, AVX2 form"}
    if kernels.unavailable("int4_linear") is None:
        expected |= {"int8 rowwise (Harmonia)", "int4 (Harmonia)"}
        if kernels.form("int4_linear") == "avx512":
            expected |= {"int8 rowwise, AVX2 form", "int4, AVX2 form"}
        assert [c["products"] for c in result["calls"]] == ["fc2", "hidden x hidden"]
        assert result["calls"][1]["calls"] == 6 * result["layers"]
    assert set(paths) == expected and (result["layers"], result["hidden"], result["ffn"]) == (2, 64, 256)
    weights = result["layers"] * (6 * 64 * 64 + 2 * 64 * 256)
    assert paths["fp32 F.linear"]["bytes"] == 4 * weights and paths["bf16 F.linear"]["bytes"] == 2 * weights
    assert (
        paths["int4 torch form"]["bytes"] > 4 * weights
    )  # float32 weights (padded to the groups) and scales
    for row in paths.values():  # GiB/s: the bytes over the time (rounded to 0.1)
        assert row["ms"] > 0 and abs(row["gib_s"] - row["bytes"] / 2**30 / row["seconds"]) <= 0.051
    assert "the sum of a buffer" in proc.stdout


def test_bench_calibration_times_every_step_path_against_the_calibrated_one(tmp_path):
    from harmonia import kernels

    result, proc = run_bench(
        tmp_path, "bench_calibration", "--tiny", "--seconds", "0.3", "--rounds", "2", "--modes", "exact,int4"
    )
    exact, int4 = result["modes"]
    assert (exact["mode"], int4["mode"], result["rounds"]) == ("exact", "int4", 2)
    rows = "rows" if kernels.unavailable("rows_linear") is None else None
    assert set(exact["step_ms"]) == {f"few_row_products {p}" for p in ("linear", "matmul", rows) if p}
    own = kernels.unavailable("decode_attention") is None
    assert set(int4["step_ms"]) == {
        f"attention {p}" for p in ("sdpa", "own-bf16", "own-int8") if own or p == "sdpa"
    }
    for mode in result["modes"]:
        assert mode["calibrated"] in mode["step_ms"] and mode["fastest_by_steps"] in mode["step_ms"]
        assert mode["verdict"] == "agrees" or mode["verdict"] == f"slower than {mode['fastest_by_steps']}"
        for times in mode["step_ms"].values():
            assert len(times["all"]) == 2 and times["median"] > 0
        assert f"{mode['mode']}: calibrated {mode['calibrated']}: {mode['verdict']}" in proc.stdout
    assert exact["calibration"]["few_row_products"].split()[1] == "(measured:"  # a fresh workbench


def test_bench_attention_times_sdpa_and_the_kernel_on_every_cache(tmp_path):
    from harmonia import kernels

    result, proc = run_bench(tmp_path, "bench_attention", "--tiny", "--runs", "2")
    seen = {(r["path"], r["cache"], r["keys"]) for r in result["paths"]}
    expected = {("sdpa", "float32", n) for n in (5, 40)}
    if kernels.unavailable("decode_attention") is None:
        forms = ["own (Harmonia)"] + (
            ["own, AVX2 form"] if kernels.form("decode_attention") == "avx512" else []
        )
        expected |= {
            (form, cache, n) for form in forms for cache in ("float32", "bfloat16", "int8") for n in (5, 40)
        }
    assert seen == expected and (result["layers"], result["heads"], result["dim"], result["rows"]) == (
        2,
        4,
        8,
        2,
    )
    # the bytes: keys and values of every layer, a position of 8 values 32, 16 or 8 + 4
    for row in result["paths"]:
        width = {"float32": 32, "bfloat16": 16, "int8": 12}[row["cache"]]
        assert row["bytes"] == 2 * 2 * 2 * 4 * row["keys"] * width
        assert abs(row["gib_s"] - row["bytes"] / 2**30 / row["seconds"]) <= 0.051
        assert ("vs_sdpa" in row) == (row["path"] != "sdpa")
    assert "the sum of a buffer" in proc.stdout


def test_bench_kv_cache_compares_every_cache_on_the_same_tokens(tmp_path):
    from harmonia import kernels

    result, proc = run_bench(tmp_path, "bench_kv_cache", "--tiny", "--frames", "12")
    rows = {r["config"]: r for r in result["rows"]}
    assert result["frames"] == 12 and rows["exact, sdpa, float32 cache"]["step_ms"] > 0
    if kernels.unavailable("decode_attention") is not None:
        assert set(rows) == {"exact, sdpa, float32 cache"} and "nothing to compare" in proc.stdout
        return
    assert len(rows) == 10
    # teacher-forced on exact's tokens: the kernel on exact's float32 cache is SDPA to rounding
    assert rows["exact, own, float32 cache"]["relative_logit_error"] < 1e-4
    assert 0 < rows["exact, own-bf16"]["relative_logit_error"] < 1e-2  # the cache's rounding alone
    assert 0 < rows["exact, own-int8"]["relative_logit_error"] < 1e-2
    assert all(row["same_tokens_as_exact"] for row in result["rows"][1:])  # teacher-forced: the same inputs
    for mode in ("int8 rowwise", "int4"):  # the modes' own rounding: further from float32 than the cache's
        assert rows[f"{mode}, own, float32 cache"]["relative_logit_error"] > 0
        for cache in ("own-bf16", "own-int8"):
            assert (
                rows[f"{mode}, {cache}"]["relative_logit_error"]
                > rows[f"exact, {cache}"]["relative_logit_error"]
            )


def test_bench_runtimes_times_harmonia_against_onnx_runtime_and_ctranslate2(tmp_path):
    from harmonia import kernels

    result, proc = run_bench(
        tmp_path, "bench_runtimes", "--tiny", "--rounds", "1", "--threads", "1", "--steps", "20"
    )
    products = {r["path"]: r for r in result["products"]}
    steps = {r["path"]: r for r in result["steps"]}
    assert result["decoder"] == {"layers": 2, "hidden": 32, "heads": 4, "ffn": 64, "outputs": 256}
    assert result["onnxruntime"] and result["ctranslate2"] and products["torch fp32 F.linear"]["best_ms"] > 0
    if kernels.unavailable("int4_linear") is None and kernels.unavailable("int8_linear") is None:
        assert set(products) == {"torch fp32 F.linear", "Harmonia int4", "ONNX Runtime int4", "Harmonia int8",
                                 "ONNX Runtime int8"}  # fmt: skip
        # the same rounded weights: only how each quantises its input differs
        assert 0 < products["ONNX Runtime int4"]["off_harmonia"] < 0.05
        # ONNX Runtime's u8 x s8 int8 product without VNNI sums byte pairs with a saturating
        # vpmaddubsw (its documentation warns of it): full-range weights then lie far off (0.20 on an
        # AMD EPYC with AVX2 only): bounded there at 0.3, so that a worse drift still fails
        vnni = {"avx512_vnni", "avx_vnni"} & kernels.cpu_flags()
        assert 0 < products["ONNX Runtime int8"]["off_harmonia"] < (0.05 if vnni else 0.3)
        assert all(r["bytes"] > 0 and r["best_ms"] > 0 and len(r["ms"]) == 1 for r in result["products"])
    else:  # without Harmonia's kernels: ONNX Runtime against their torch stand-ins (the same bits)
        assert set(products) == {"torch fp32 F.linear", "ONNX Runtime int4", "ONNX Runtime int8"}
        assert result["skipped"] and 0 < products["ONNX Runtime int4"]["off_harmonia"] < 0.05
    assert set(steps) == {"Harmonia int4", "Harmonia int8", "CTranslate2 int8"}
    # CTranslate2's steps are the tokens its rows got: 20 more in the long take than in the short
    assert steps["CTranslate2 int8"]["steps"] == 20 and steps["Harmonia int8"]["steps"] >= 20
    assert result["failed"] == []
    assert all(r["best_ms_per_step"] > 0 for r in result["steps"])
    assert steps["Harmonia int4"]["paths"]["attention"] in ("sdpa", "own-bf16", "own-int8")
    assert "best (median) of the rounds:" in proc.stdout


def test_bench_samples_runs_on_the_tiny_model(tmp_path):
    result, _ = run_bench(tmp_path, "bench_samples", "--tiny", "--steps", "2")
    assert [r["dtype"] for r in result["rows"]] == ["float32", "bfloat16"] and result["steps"] == 2
    for row in result["rows"]:
        assert row["same_samples"] and row["plain"]["seconds"] > 0 and row["engine"]["seconds_per_step"] > 0
        assert row["peak_rss_gib"] > 0 and "engine_overhead_pct" in row


@pytest.mark.slow
def test_bench_audiocraft_runs_on_a_small_width(tmp_path):
    result, proc = run_bench(
        tmp_path,
        "bench_audiocraft",
        "--seconds",
        "0.2",
        "--threads",
        "1",
        "--dim",
        "64",
        "--layers",
        "2",
        timeout=600,
    )
    assert set(result["models"]) == {"musicgen-small", "magnet-small"} and result["magnet_speedup"] > 0
    assert "MAGNeT is" in proc.stdout


@pytest.mark.slow
def test_bench_video_runs_on_the_tiny_model(tmp_path):
    result, _ = run_bench(
        tmp_path, "bench_video", "--tiny", "--steps", "2", "--size", "32", "--frames", "5", "--warmup", "0"
    )
    assert [r["dtype"] for r in result["rows"]] == ["float32", "bfloat16"]
    assert all(r["same_frames"] and r["size"] == "32x32x5" for r in result["rows"])
