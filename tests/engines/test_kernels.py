"""Harmonia's own decoding products (harmonia/kernels): what they compute, and how the MusicGen
engine chooses, records, forces and replays them for bf16 and int8, and runs int4 (exact's
few-row path is tested with the engine, in test_musicgen.py)."""

import json

import numpy as np
import pytest
import torch

from harmonia import kernels
from harmonia.engines import musicgen
from harmonia.engines.musicgen import MusicGenEngine, MusicRequest
from harmonia.errors import RequestError

AVX512 = all(flag in kernels.cpu_flags() for flag in kernels.NEEDS["rows_linear"])
VNNI = all(flag in kernels.cpu_flags() for flag in kernels.NEEDS["int8_linear"])
needs_avx512 = pytest.mark.skipif(not AVX512, reason="this CPU lacks AVX-512 (the float kernels' first form)")
# the float kernels in either form (AVX-512, or AVX2 with FMA: the same bits)
needs_float_kernels = pytest.mark.skipif(
    kernels.form("rows_linear") is None, reason="this CPU runs neither form of the float kernels"
)
# the integer kernels in either form (AVX-512 VNNI, or AVX2 with FMA: the same bits)
INTEGER_KERNELS = kernels.form("int8_linear") is not None
needs_integer_kernels = pytest.mark.skipif(
    not INTEGER_KERNELS, reason="this CPU runs neither form of the integer kernels"
)


@pytest.fixture(autouse=True, scope="module")
def _library():
    """The library loaded in this process (built by the test controller; a test that calls a
    product directly must not depend on an earlier test having loaded it)."""
    kernels.build()


def on_one_and_two_threads(run):
    """``run()``'s result on one thread and on two (torch's setting restored after)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        return one, run()
    finally:
        torch.set_num_threads(threads)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN where NaN (its payload and sign carry nothing): torch.equal calls -0.0 and
    +0.0 equal and NaN unequal to itself."""
    nan = a.isnan()
    return (
        a.shape == b.shape
        and torch.equal(nan, b.isnan())
        and a.dtype == b.dtype
        and torch.equal(*(t[~nan].view({4: torch.int32, 2: torch.int16}[t.element_size()]) for t in (a, b)))
    )


def test_the_products_are_built_wherever_the_cpu_runs_them():
    """On a CPU with the instructions (every CI machine so far) the library must compile and load:
    a broken build would otherwise only show as torch's slower paths being chosen."""
    for product, needs in kernels.NEEDS.items():
        why = kernels.unavailable(product)
        if kernels.form(product) is not None:
            assert why is None, why
            assert hasattr(torch.ops.harmonia, product)
        else:
            lacks = f"this CPU lacks {', '.join(f for f in needs if f not in kernels.cpu_flags())}"
            if product in kernels.NARROW:
                narrow = ", ".join(f for f in kernels.NARROW[product] if f not in kernels.cpu_flags())
                lacks += f" (and {narrow}, which its AVX2 form needs)"
            assert why == lacks


def test_a_cpu_without_avx512_runs_the_kernels_in_their_avx2_form(monkeypatch):
    """Every kernel runs on AVX2 with FMA where AVX-512 (or, for the integer kernels, its VNNI) is
    missing: the same bits, tested below. A fresh process on such a CPU sets the AVX2 form as it
    loads the library."""
    import os
    import subprocess
    import sys

    real = kernels.cpu_flags()
    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma"})
    assert {kernels.form(product) for product in kernels.NEEDS} == {"avx2"}
    # an AVX-512 CPU without VNNI (Skylake-SP, Cascade Lake before VNNI): the integer kernels' AVX2 form
    skylake = {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"}
    monkeypatch.setattr(kernels, "cpu_flags", lambda: skylake)
    assert kernels.form("rows_linear") == "avx512" and kernels.form("int4_linear") == "avx2"
    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"sse4_2", "avx"})
    assert kernels.form("decode_attention") is kernels.form("int4_linear") is None
    assert kernels.unavailable("decode_attention") == (
        "this CPU lacks avx512f, avx512bw, avx512vl (and avx2, fma, which its AVX2 form needs)"
    )
    assert kernels.unavailable("int4_linear") == (
        "this CPU lacks avx512f, avx512bw, avx512vl, avx512_vnni (and avx2, fma, which its AVX2 form needs)"
    )
    # the calibration's key names the AVX2 form (another speed than the AVX-512 form's)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma"})
    decoder = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "ffn_dim": 256}
    config = {"decoder": {**decoder, "num_codebooks": 4, "vocab_size": 2048}}
    if kernels.build() is None:
        assert musicgen._product_shape(config, "attention", "int4", None).endswith(
            "| Harmonia's kernels: decode_attention (AVX2 form)"
        )
        assert "rows_linear (AVX2 form)" in musicgen._product_shape(config, "bf16_products", "bf16", None)
        assert musicgen._product_shape(config, "int8_products", "int8", None).endswith(
            "| Harmonia's kernels: rows_linear (AVX2 form), int8_linear (AVX2 form), int4_linear (AVX2 form)"
        )
    if not {"avx2", "fma"} <= real:
        return  # (the rest runs the AVX2 form)
    # a fresh process: the library picks the form from the CPU as it loads (use_form returns the
    # form it replaces), and one whose /proc/cpuinfo lacks AVX-512 takes the AVX2 form
    read = "print(torch.ops.harmonia.use_form('avx2'))"
    faked = "flags = kernels.cpu_flags() - {'avx512f'}; kernels.cpu_flags = lambda: flags; "
    for fake, expected in (("", "avx512" if AVX512 else "avx2"), (faked, "avx2")):
        code = f"import torch; from harmonia import kernels; {fake}assert kernels.build() is None; {read}"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=300
        )
        assert done.returncode == 0 and done.stdout.strip() == expected, done.stderr


def _avx2_cases():
    """(name, call) pairs of every product and decode_attention on awkward inputs."""
    generator = torch.Generator().manual_seed(11)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for out, width, rows, bias in [
            (64, 48, 2, True),
            (33, 70, 1, False),
            (1027, 1000, 3, True),
            (8, 1024, 8, False),
        ]:
            w = torch.randn(out, width, generator=generator).to(dtype)
            x = torch.randn(rows, width, generator=generator).to(dtype)
            b = torch.randn(out, generator=generator).to(dtype) if bias else None
            cases.append(
                (
                    f"rows {dtype} {out}x{width}x{rows}",
                    lambda w=w, x=x, b=b: torch.ops.harmonia.rows_linear(x, w, b),
                )
            )
        for heads, dim, length in [
            (16, 64, 1),
            (16, 64, 37),
            (4, 32, 300),
            (4, 8, 16),
            (3, 40, 20),
            (2, 100, 17),
        ]:
            q, k, v = _attention_inputs(4, heads, length + 5, dim, seed=length + dim)
            k, v = k.to(dtype), v.to(dtype)
            k[1, 0, length // 2, 0] = float("nan")
            v[2, -1, 0, -1] = float("inf")
            mask = torch.rand(4, 1, 1, length, generator=generator) > 0.3
            mask[3] = False  # a row that attends to nothing
            strided = k.transpose(1, 2).contiguous().transpose(1, 2)
            sharp = k.clone()  # scores spread past exp's floor (-87.3)
            sharp[0, 0] *= 40
            if length > 1:
                q[0, 1].abs_()  # a key scoring -inf without a mask
                sharp[0, 1, 1] = float("-inf")
            variants = (
                ("", k, None),
                (" masked", k, mask),
                (" strided", strided, None),
                (" sharp", sharp, None),
            )
            for name, keys, m in variants:
                cases.append(
                    (f"attention {dtype} {heads}x{dim}x{length}{name}",
                     lambda q=q, keys=keys, v=v, m=m, end=length, scale=dim**-0.5:
                         torch.ops.harmonia.decode_attention(q, keys, v, end, scale, m)),
                )  # fmt: skip
        # an int8 cache (the scores' integer sums by vpdpbusd and by vpmaddwd, the same; without
        # VNNI both runs would be the AVX2 form)
        for heads, dim, length in [(16, 64, 37), (3, 13, 20), (2, 100, 17), (2, 64, 300)] if VNNI else []:
            q, k, v = _attention_inputs(4, heads, length + 5, dim, seed=length + dim + 1)
            k[1, 0, length // 2, 0] = float("nan")  # that position's scale NaN
            mask = torch.rand(4, 1, 1, length, generator=generator) > 0.3
            k8, v8 = _int8_cache(k, keys=True), _int8_cache(v, keys=False)
            for name, m in (("", None), (" masked", mask)):
                cases.append(
                    (f"attention int8 {heads}x{dim}x{length}{name}",
                     lambda q=q, k8=k8, v8=v8, m=m, end=length, scale=dim**-0.5:
                         torch.ops.harmonia.decode_attention(q, k8, v8, end, scale, m)),
                )  # fmt: skip
        # at exp's floor: one query against keys scoring 0, -87.30 (just above the floor: e^-87.30,
        # times a value of 1e38, moves the output by 1.2), -87.81 and -90.3 (below it: 0) and -inf
        q = torch.zeros(1, 1, 1, 16)
        q[..., 0] = 1.0
        k = torch.zeros(1, 1, 5, 16)
        k[0, 0, :, 0] = torch.tensor([0.0, -87.0, -87.5, -90.0, float("-inf")])
        v = torch.full((1, 1, 5, 16), 1e38)
        v[0, 0, 0] = 1.0
        k, v = k.to(dtype), v.to(dtype)
        cases.append(
            (f"attention {dtype} at exp's floor",
             lambda q=q, k=k, v=v: torch.ops.harmonia.decode_attention(q, k, v, 5, 1.0035, None)),
        )  # fmt: skip
    # the integer products (vpdpbusd against vpmaddubsw and vpmaddwd: the same integers, then the same
    # float steps; without VNNI both runs would be the AVX2 form): eight, four and one blocks at once,
    # odd rows, widths that need padding, ties, NaN and infinity rows, a row whose scale underflows
    for pair in (_int8_pair, _int4_pair) if VNNI else ():
        shapes = [(64, 64, 2), (33, 70, 5), (144, 128, 3), (4096, 1024, 2), (1024, 4096, 1), (40, 24, 1)]
        for out, width, rows in shapes:
            kernel = pair(out, width, bias=rows != 2)[0]
            x = torch.randn(rows, width, generator=generator) * 3
            cases.append((f"{pair.__name__} {out}x{width}x{rows}", lambda kernel=kernel, x=x: kernel(x)))
        kernel = pair(37, 130, bias=False)[0]
        ties = torch.randint(-254, 255, (4, 130), generator=generator).float() / 2
        ties[:, 0] = 127.0  # the scale is 1: every odd k lands on a tie
        broken = torch.randn(4, 130, generator=generator)
        broken[0, 5], broken[1, 129], broken[2, 64] = float("nan"), float("inf"), float("-inf")
        broken[3] = 1e-44  # the scale underflows: codes 0
        for name, x in (("ties", ties), ("nan, infinity, underflow", broken)):
            cases.append((f"{pair.__name__} {name}", lambda kernel=kernel, x=x: kernel(x)))
        strong, x = pair(37, 130, bias=False, gain=1e30)[0], _subnormal_scale_rows(generator)
        cases.append((f"{pair.__name__} subnormal scale", lambda kernel=strong, x=x: kernel(x)))
    return cases


def _subnormal_scale_rows(generator: torch.Generator) -> torch.Tensor:
    """Rows whose largest |x| is 190 x 2^-149: their scale, 190/127 x 2^-149, rounds to 2^-149, so
    x / scale reaches 190, past an int8 code (the kernels and torch's forms bound codes at 127)."""
    rows = torch.randint(-190, 191, (2, 130), generator=generator).float() * 2.0**-149
    rows[:, 7], rows[1, 9] = 190 * 2.0**-149, -190 * 2.0**-149
    rows[0, 129], rows[1, 128] = -190 * 2.0**-149, 190 * 2.0**-149  # in the kernels' scalar tails too
    assert (rows.abs().amax(1) / 127 == 2.0**-149).all()
    return rows


@needs_avx512
def test_the_avx2_forms_compute_the_avx512_forms_bits():
    """Each 16-lane vector as two 8-lane halves, every lane the same operations in the same order
    (the integer products: the same exact integer sums, then the same float steps): the same bits
    on widths and head sizes that are not multiples of 16, masks, a row with no key, NaN and
    infinity, strided keys, one thread and two."""
    nan = False
    assert torch.ops.harmonia.integer_form() == ("avx512" if VNNI else "avx2")
    for name, call in _avx2_cases():
        wide = on_one_and_two_threads(call)
        with kernels.forced_form("avx2"):
            assert torch.ops.harmonia.integer_form() == "avx2"
            narrow = on_one_and_two_threads(call)
        assert all(same_bits(wide[0], other) for other in (*wide, *narrow)), name
        nan |= bool(wide[0].isnan().any())
    assert nan  # a NaN key reached an output, and both forms put it in the same places


@needs_float_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("out", "width", "rows", "bias"), [(64, 48, 2, True), (33, 70, 1, False), (1024, 1024, 2, False)]
)
def test_the_float_product_is_a_linear_and_its_bits_do_not_depend_on_threads(dtype, out, width, rows, bias):
    generator = torch.Generator().manual_seed(out)
    weight = (torch.randn(out, width, generator=generator) * 0.05).to(dtype)
    b = torch.randn(out, generator=generator).to(dtype) if bias else None
    x = torch.randn(1, rows, width, generator=generator).to(dtype)
    exact = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    one, two = on_one_and_two_threads(lambda: torch.ops.harmonia.rows_linear(x, weight, b))
    assert one.shape == (1, rows, out) and one.dtype == dtype
    assert torch.equal(one, two)
    # as close to the float64 product as torch's own F.linear is (float32: rounding; bfloat16: one rounding)
    plain = torch.nn.functional.linear(x, weight, b).double()
    limit = 2 * (plain - exact).abs().max() + (1e-6 if dtype == torch.float32 else 0) * exact.abs().max()
    assert (one.double() - exact).abs().max() <= limit


@needs_float_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out", "width"), [(33, 70), (1024, 1024)])
def test_the_float_product_gives_a_row_the_same_bits_at_any_row_count(dtype, out, width):
    """bf16's rows8 path runs up to eight rows through the kernel, pair after pair against the
    same weights: each row must come out as it does alone (so batch 1 makes rows' bytes)."""
    generator = torch.Generator().manual_seed(width)
    weight = (torch.randn(out, width, generator=generator) * 0.05).to(dtype)
    b = torch.randn(out, generator=generator).to(dtype)
    x = torch.randn(9, width, generator=generator).to(dtype)
    alone = torch.cat([torch.ops.harmonia.rows_linear(x[r : r + 1], weight, b) for r in range(9)])
    for rows in (3, 5, 8, 9):
        together = torch.ops.harmonia.rows_linear(x[:rows], weight, b)
        assert together.shape == (rows, out) and together.dtype == dtype
        assert torch.equal(together.view(torch.int16), alone[:rows].view(torch.int16))  # every bit


def _int8_pair(out: int, width: int, bias: bool, gain: float = 0.05):
    generator = torch.Generator().manual_seed(width)
    linear = torch.nn.Linear(width, out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out, width, generator=generator) * gain)
    return musicgen._RowwiseInt8Linear(linear), musicgen._ReferenceInt8Linear(linear), linear


@needs_integer_kernels
# (144, 64, 3): eight blocks of 16 outputs read at once, then the ninth alone, for 9 rows (odd)
@pytest.mark.parametrize(
    ("out", "width", "rows"), [(64, 48, 2), (33, 70, 5), (40, 24, 1), (4096, 1024, 2), (144, 64, 3)]
)
def test_the_int8_kernel_computes_the_torch_reference_to_the_bit(out, width, rows):
    kernel, reference, linear = _int8_pair(out, width, bias=rows != 2)
    x = torch.randn(3, rows, width, generator=torch.Generator().manual_seed(1))
    one, two = on_one_and_two_threads(lambda: kernel(x))
    assert one.shape == (3, rows, out) and same_bits(one, two)
    assert same_bits(one, reference(x))
    # an int8 product: near the float32 one, nearer than per-tensor scales would be
    error = (one - linear(x)).abs().max() / linear(x).abs().max()
    assert 0 < error < 0.02


def test_the_int8_reference_runs_anywhere_and_keeps_zero_rows_finite():
    _, reference, linear = _int8_pair(16, 32, bias=True)
    x = torch.zeros(2, 32)
    assert torch.equal(reference(x), linear.bias.detach().expand(2, 16))


def _int4_pair(out: int, width: int, bias: bool, gain: float = 0.05):
    generator = torch.Generator().manual_seed(width)
    linear = torch.nn.Linear(width, out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out, width, generator=generator) * gain)
        linear.weight[0, :8] = 0  # a group with zeros, one without its largest weight
    return musicgen._Int4Linear(linear), musicgen._ReferenceInt4Linear(linear), linear


@needs_integer_kernels
@pytest.mark.parametrize(
    ("out", "width", "rows"),
    [(64, 64, 2), (33, 70, 5), (40, 24, 1), (4096, 1024, 2), (1024, 4096, 1), (144, 128, 3)],
)
def test_the_int4_kernel_computes_the_torch_reference_to_the_bit(out, width, rows):
    kernel, reference, linear = _int4_pair(out, width, bias=rows != 2)
    x = torch.randn(3, rows, width, generator=torch.Generator().manual_seed(1))
    one, two = on_one_and_two_threads(lambda: kernel(x))
    assert one.shape == (3, rows, out) and one.dtype == torch.float32 and same_bits(one, two)
    assert same_bits(one, reference(x))
    # 4 bits with a scale per 64 inputs: further from float32 than int8, still near it
    error = (one - linear(x)).abs().max() / linear(x).abs().max()
    int8_error = (musicgen._ReferenceInt8Linear(linear)(x) - linear(x)).abs().max() / linear(x).abs().max()
    assert int8_error < error < 0.15


@needs_integer_kernels
@pytest.mark.parametrize("group", [16, 48, 128])
def test_the_int4_kernel_takes_groups_of_any_multiple_of_16_inputs(monkeypatch, group):
    """The scheme's groups are 64 inputs; the kernel takes any multiple of 16 (its AVX2 form sums
    runs of four 8-input chunks in 16 bits where a group's chunks come in fours, else runs of two)."""
    monkeypatch.setattr(musicgen, "INT4_GROUP", group)
    kernel, reference, _ = _int4_pair(40, 150, bias=True)
    assert kernel.scales.shape == (3, -(-150 // group), 16)
    x = torch.randn(3, 150, generator=torch.Generator().manual_seed(group)) * 3
    forms = ["avx512", "avx2"] if kernels.form("int4_linear") == "avx512" else [kernels.form("int4_linear")]
    for form in forms:
        with kernels.forced_form(form):
            assert torch.ops.harmonia.integer_form() == form
            assert same_bits(kernel(x), reference(x)), form


@needs_integer_kernels
@pytest.mark.parametrize("pair", [_int8_pair, _int4_pair])
def test_the_integer_kernels_agree_with_torch_on_ties_underflow_nan_and_infinity(pair):
    """Inputs that land on .5 after the row's scale (round half to even), products that
    underflow to -0.0 without a bias, rows with a NaN or an infinity (all NaN out), and a row
    so small that its largest / 127 underflows to 0 (scale 1 and codes 0, as torch's; the kernel
    once tested the largest before dividing and divided by that 0: meaningless codes and sums,
    which the zero scale then hid, so its outputs were the same)."""
    kernel, reference, _ = pair(37, 130, bias=False)
    generator = torch.Generator().manual_seed(3)
    ties = torch.randint(-254, 255, (4, 130), generator=generator).float() / 2  # k/2: many exact .5s
    ties[:, 0] = 127.0  # the scale is 1: every odd k lands on a tie
    broken = torch.randn(3, 130, generator=generator)
    broken[0, 5], broken[1, 129], broken[2, 64] = float("nan"), float("inf"), float("-inf")
    for x in (ties, broken):
        assert same_bits(kernel(x), reference(x))
    assert kernel(broken).isnan().all()
    small_kernel, small_reference, _ = pair(37, 130, bias=False, gain=1e-30)
    tiny = torch.randn(4, 130, generator=generator) * 1e-30  # the weights' scale x the row's underflows
    out = small_kernel(tiny)
    assert same_bits(out, small_reference(tiny))
    assert (torch.signbit(out) & (out == 0)).any()  # -0.0 kept: nothing added where there is no bias
    fine = torch.randn(2, 130, generator=generator)
    assert not kernel(torch.cat([broken, fine]))[3:].isnan().any()  # one row's NaN stays in its row
    subnormal = torch.cat([torch.full((1, 130), 1e-44), fine])
    assert same_bits(kernel(subnormal), reference(subnormal))
    assert torch.equal(kernel(subnormal)[0], torch.zeros(37))  # codes 0, no bias
    # a subnormal scale: x / scale reaches 190, and codes stop at 127 (the AVX-512 form once wrapped
    # them to -66 where torch's form kept 190); weights of 1e30 keep the outputs above underflow
    strong_kernel, strong_reference, _ = pair(37, 130, bias=False, gain=1e30)
    rows = _subnormal_scale_rows(generator)
    out = strong_kernel(rows)
    assert same_bits(out, strong_reference(rows)) and (out != 0).all() and out.isfinite().all()
    clipped = torch.round(rows / 2.0**-149).clamp(-127, 127) * 2.0**-149  # what the codes stand for
    assert same_bits(out, strong_kernel(clipped))  # the same codes and the same scale
    assert same_bits(strong_reference(rows), strong_reference(clipped))


def test_the_int4_scheme_stores_half_a_byte_a_weight_and_the_reference_runs_anywhere():
    kernel, reference, linear = _int4_pair(40, 130, bias=True)
    assert kernel.packed.shape == (3, 192 // 8, 16, 4) and kernel.packed.dtype == torch.uint8
    assert kernel.scales.shape == (3, 3, 16) and reference.weight.shape == (48, 192)
    weights = reference.weight[:40, :130]
    assert (
        weights.abs().max() == 7 and not reference.weight[40:].any() and not reference.weight[:, 130:].any()
    )
    # every group's largest weight maps to +-7: the scale is that weight / 7
    first = linear.weight.detach()[1, :64]
    assert reference.scales[1, 0] == first.abs().max() / 7
    x = torch.zeros(2, 130)
    assert torch.equal(reference(x), linear.bias.detach().expand(2, 40))


@needs_integer_kernels
def test_int4_makes_the_same_audio_with_or_without_the_kernel_and_is_an_artifact_of_its_own(
    wb, monkeypatch, caplog
):
    """The kernel and its torch stand-in compute the same bits, so an int4 artifact made with the
    kernel (either form) reproduces on any CPU (more slowly without it). (Attention: torch's, as before
    int4's only choice existed; the attention path is tested below.)"""
    from harmonia.generation import generate, reproduce

    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")
    request = MusicRequest(["calm piano", "drums"], duration_s=0.6, seed=8)
    made = generate(wb, "tiny-musicgen", request, threads=2, precision="int4", previews=False).artifact
    assert made.manifest.runtime.precision == "int4" and made.manifest.runtime.paths == {
        "attention": "sdpa",
        "encodec_layout": "torch",
    }
    assert made.manifest.identity["runtime"] == {
        "device": "cpu",
        "dtype": "float32",
        "threads": 2,
        "precision": "int4",
    }
    int8 = generate(wb, "tiny-musicgen", request, threads=2, precision="int8", previews=False).artifact
    assert int8.id != made.id
    audio = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(kernels, "unavailable", lambda product: "this CPU lacks avx512_vnni")
        caplog.clear()
        with caplog.at_level("WARNING", logger="harmonia.engines.musicgen"):
            engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
        warning = (
            "Harmonia's int4_linear kernel is unavailable (this CPU lacks avx512_vnni): its torch form "
            "runs, the same bits, slower"
        )
        assert (warning in caplog.text) == (not kernel)
        assert engine.loaded.choices == {"attention": "sdpa (forced)", "encodec_layout": "torch (forced)"}
        layer = type(engine.model.decoder.model.decoder.layers[0].fc1).__name__
        assert layer == ("_Int4Linear" if kernel else "_ReferenceInt4Linear")
        assert isinstance(engine._step, torch.jit.ScriptModule)  # both forms compile to TorchScript
        audio.append(engine.generate(request).audio)
    assert audio[0].shape == (2, 1, 19200) and np.array_equal(audio[0], audio[1])
    assert reproduce(wb, made.id).identical  # on the stand-in (unavailable is still patched)


@needs_integer_kernels
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_the_packed_weights_lie_in_one_buffer_in_step_order_and_the_bytes_do_not_change(
    wb, monkeypatch, precision
):
    monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", "rowwise")
    request = MusicRequest(["calm piano", "drums"], duration_s=0.6, seed=9)
    engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision=precision)
    layers = engine.model.decoder.model.decoder.layers
    step = [
        m
        for layer in layers
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
                  layer.encoder_attn.q_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2)
    ] + list(engine.model.decoder.lm_heads)  # fmt: skip
    storages = {t.untyped_storage().data_ptr() for m in step for t in (m.packed, m.scales)}
    assert len(storages) == 1  # one buffer
    starts = [t.data_ptr() for m in step for t in (m.packed, m.scales)]
    assert starts == sorted(starts) and all(p % 64 == 0 for p in starts)  # in the order a step reads them
    arranged = engine.generate(request).audio
    monkeypatch.setattr(musicgen, "_lay_out_in_step_order", lambda decoder: None)
    apart = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision=precision)
    assert (
        len(
            {
                m.packed.untyped_storage().data_ptr()
                for m in apart.model.decoder.model.decoder.layers[0].modules()
                if hasattr(m, "packed")
            }
        )
        > 1
    )
    assert np.array_equal(arranged, apart.generate(request).audio)


@needs_float_kernels
def test_the_bf16_path_is_measured_cached_recorded_forced_and_replayed(wb, monkeypatch):
    from harmonia.generation import generate, reproduce

    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")  # (the attention path is tested on its own)
    cache = wb.state_dir / "calibration.json"
    cache.unlink(missing_ok=True)
    measured = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")
    line = measured.loaded.choices["bf16_products"]
    assert line.startswith(
        ("rows (measured: linear ", "rows8 (measured: linear ", "linear (measured: linear ")
    )
    assert " ms, rows " in line and " ms, rows8 " in line
    (key,) = json.loads(cache.read_text())
    assert "| 2 threads | bf16_products " in key and " and 8 rows | " in key
    request = MusicRequest(["calm piano"], duration_s=0.6, seed=4)
    made, audio = {}, {}
    for path in ("linear", "rows", "rows8"):
        monkeypatch.setenv("HARMONIA_BF16_PRODUCTS", path)
        forced = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")
        assert forced.loaded.choices == {
            "bf16_products": f"{path} (forced)",
            "attention": "sdpa (forced)",
            "encodec_layout": "torch (forced)",
        }
        fc1 = forced.model.decoder.model.decoder.layers[0].fc1
        assert (
            type(fc1).__name__ == {"linear": "Linear", "rows": "_RowsLinear", "rows8": "_Rows8Linear"}[path]
        )
        assert isinstance(forced._step, torch.jit.ScriptModule)  # every path compiles to TorchScript
        audio[path] = forced.generate(request).audio
        assert np.array_equal(audio[path], forced.generate(request).audio)
        made[path] = generate(
            wb, "tiny-musicgen", request, threads=2, precision="bf16", previews=False
        ).artifact
        assert made[path].manifest.runtime.paths == {
            "bf16_products": path,
            "attention": "sdpa",
            "encodec_layout": "torch",
        }
    assert len({made[path].id for path in made}) == 3
    assert np.array_equal(audio["rows8"], audio["rows"])  # at batch 1 the same bytes (the id names the path)
    four = MusicRequest(["calm piano", "drums", "a", "strings"], duration_s=0.4, seed=5)
    assert np.array_equal(forced.generate(four).audio, forced.generate(four).audio)  # rows8 at batch 4
    assert reproduce(wb, made["rows8"].id).identical
    # ids made before bf16 had a choice ran F.linear: that path leaves the id as it was
    assert "paths" not in made["linear"].manifest.identity["runtime"]
    assert made["rows"].manifest.identity["runtime"]["paths"] == {"bf16_products": "rows"}
    monkeypatch.setenv("HARMONIA_BF16_PRODUCTS", "linear")  # this machine would now pick linear
    assert reproduce(wb, made["rows"].id).identical  # the artifact's own path is replayed ...
    from harmonia.generation import load_engine

    replayed = load_engine(
        wb, "tiny-musicgen", threads=2, precision="bf16", paths=(("bf16_products", "rows"),)
    )
    assert replayed.loaded.choices["bf16_products"] == "rows (recorded)"  # ... and runs as recorded
    assert type(replayed.model.decoder.model.decoder.layers[0].fc1).__name__ == "_RowsLinear"


@needs_float_kernels
def test_rows8_runs_the_kernel_on_a_step_of_up_to_eight_rows_and_nothing_else_that_rows_does_not():
    """rows8 takes a batch-4 step (8 rows of one position) to the kernel; a prompt's rows (several
    positions) and a batch-8 step go to F.linear, as on rows, so at batch 1 both run the same
    products. Eagerly and compiled (the decoding step is TorchScript). The routing does not
    depend on the weights' type: float32 and a wide layer, so the kernel's and F.linear's bits
    differ somewhere in every case (bfloat16's rounding often hides it) and each check is decisive."""
    generator = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(4096, 512, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(512, 4096, generator=generator) * 0.02)
    cases = {
        (8, 1): "rows8",
        (2, 1): "both",
        (1, 1): "both",
        (2, 2): "neither",
        (4, 1): "rows8",
        (16, 1): "neither",
    }
    for kind in (musicgen._RowsLinear, musicgen._Rows8Linear):
        module = torch.nn.Linear(4096, 512, bias=True)
        module.load_state_dict(linear.state_dict())
        module.__class__ = kind
        scripted = torch.jit.script(module)
        with torch.inference_mode():
            for shape, who in cases.items():
                x = torch.randn(*shape, 4096, generator=generator)
                kernel = torch.ops.harmonia.rows_linear(x, linear.weight, linear.bias)
                plain = torch.nn.functional.linear(x, linear.weight, linear.bias)
                assert not torch.equal(kernel, plain)  # the check below tells them apart
                runs_kernel = who == "both" or (who == "rows8" and kind is musicgen._Rows8Linear)
                for m in (module, scripted):
                    assert torch.equal(m(x), kernel if runs_kernel else plain), (kind.__name__, shape)


def test_the_int8_path_is_measured_recorded_and_a_manifest_from_before_replays_fbgemm(wb, monkeypatch):
    from harmonia.generation import generate, reproduce

    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")  # (the attention path is tested on its own)
    (wb.state_dir / "calibration.json").unlink(missing_ok=True)
    measured = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")
    line = measured.loaded.choices["int8_products"]
    assert (
        line.startswith(("fbgemm (measured: fbgemm ", "rowwise (measured: fbgemm "))
        and " ms, rowwise " in line
    )
    chosen = line.split()[0]
    layer = type(measured.model.decoder.model.decoder.layers[0].fc1).__name__
    assert (
        layer
        == {
            "rowwise": "_RowwiseInt8Linear" if INTEGER_KERNELS else "_ReferenceInt8Linear",
            "fbgemm": "Linear",
        }[chosen]
    )
    (entry,) = json.loads((wb.state_dir / "calibration.json").read_text()).values()
    assert entry["path"] == chosen
    request = MusicRequest(["drums"], duration_s=0.6, seed=6)
    auto = generate(wb, "tiny-musicgen", request, threads=2, precision="int8", previews=False).artifact
    assert auto.manifest.runtime.paths == {
        "int8_products": chosen,
        "attention": "sdpa",
        "encodec_layout": "torch",
    }  # the cached choice, honoured
    made = {}
    for path in ("fbgemm", "rowwise"):
        monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", path)
        made[path] = generate(
            wb, "tiny-musicgen", request, threads=2, precision="int8", previews=False
        ).artifact
        assert made[path].manifest.runtime.paths == {
            "int8_products": path,
            "attention": "sdpa",
            "encodec_layout": "torch",
        }
    # fbgemm is what int8 ran before it had a choice: its ids stay as they were
    assert "paths" not in made["fbgemm"].manifest.identity["runtime"]
    assert made["rowwise"].manifest.identity["runtime"]["paths"] == {"int8_products": "rowwise"}
    assert made["fbgemm"].id != made["rowwise"].id
    assert made["fbgemm"].file("take-0.wav").read_bytes() != made["rowwise"].file("take-0.wav").read_bytes()
    monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", "rowwise")  # this machine would now pick rowwise ...
    assert reproduce(wb, made["rowwise"].id).identical
    # ... and an int8 manifest written before int8 had paths (none recorded) ran fbgemm, and still does
    manifest = made["fbgemm"].path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["runtime"].pop("paths")
    manifest.write_text(json.dumps(data, indent=2))
    assert musicgen.MusicGenEngine.replayed_paths(musicgen.Runtime("cpu", "float32", 2, "int8")) == {
        "int8_products": "fbgemm",
        "attention": "sdpa",
        "encodec_layout": "torch",
    }
    assert reproduce(wb, made["fbgemm"].id).identical


def _attention_inputs(rows: int, heads: int, length: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(rows, heads, n, dim, generator=generator) for n in (1, length, length))
    return q, k, v


@needs_float_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "dim", "length"), [(16, 64, 1), (16, 64, 37), (4, 32, 300), (4, 8, 16), (3, 40, 20)]
)
def test_the_attention_kernel_is_sdpa_to_rounding_and_its_bits_depend_on_nothing_else(
    dtype, heads, dim, length
):
    """One position against ``end`` keys: torch's SDPA to rounding; the same bits on one thread and
    two, for a row alone and among others, and for a bfloat16 cache as for a float32 one holding
    the same values (bfloat16 -> float32 is exact, and the arithmetic after it is the same)."""
    q, k, v = _attention_inputs(4, heads, length + 5, dim, seed=length)
    k, v = k.to(dtype), v.to(dtype)
    for end in {1, length}:
        got = torch.ops.harmonia.decode_attention(q, k, v, end, 0.125, None)
        want = torch.nn.functional.scaled_dot_product_attention(
            q, k[:, :, :end].float(), v[:, :, :end].float(), scale=0.125
        )
        assert got.shape == (4, heads, 1, dim) and got.dtype == torch.float32
        assert (got - want).abs().max() <= 2e-6 * want.abs().max()
        one, two = on_one_and_two_threads(
            lambda end=end: torch.ops.harmonia.decode_attention(q, k, v, end, 0.125, None)
        )
        assert same_bits(one, got) and same_bits(two, got)
        alone = torch.ops.harmonia.decode_attention(q[2:3], k[2:3], v[2:3], end, 0.125, None)
        assert same_bits(alone, got[2:3])
        wide = torch.ops.harmonia.decode_attention(q, k.float(), v.float(), end, 0.125, None)
        assert same_bits(wide, got)


def _int8_cache(values: torch.Tensor, keys: bool, start: int = 0, spare: int = 0) -> torch.Tensor:
    """``values`` [rows, heads, length, dim] stored by harmonia.store_int8 from ``start`` in an int8
    cache ``spare`` positions longer: keys (uint8, blocks of 16 positions) or values (int8, by
    position). Every byte it does not write holds 0xFF."""
    rows, heads, length, dim = values.shape
    padded, positions = (dim + 3) // 4 * 4, start + length + spare
    if keys:
        cache = torch.full((rows, heads, -(-positions // 16), 16 * padded + 64), 255, dtype=torch.uint8)
    else:
        cache = torch.full((rows, heads, positions, padded + 4), -1, dtype=torch.int8)
    torch.ops.harmonia.store_int8(cache, values, start)
    return cache


def _rounded(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's int8 rounding of each row of ``x``: codes (float) and scales (1 for a zero row)."""
    scale = x.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    # within -127..127 as store_int8 bounds them (an int8 code has no -0.0)
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8).float(), scale


@needs_float_kernels
@pytest.mark.parametrize("dim", [64, 13, 8])
def test_an_int8_cache_holds_torchs_rounding_and_the_kernel_is_sdpa_over_its_values(dim):
    """harmonia.store_int8 keeps each position as torch would round it (scale = largest |x| / 127,
    1 for a zero row; round(x / scale), half to even), from any strides, and writes nothing else;
    harmonia.int8_values reads it back as code x scale, to the bit. The kernel over such a cache is
    SDPA over those values with the query rounded the same way, to rounding; its bits do not depend
    on the thread count."""
    generator = torch.Generator().manual_seed(dim)
    x = torch.randn(2, 3, 20, dim, generator=generator) * 3
    x[0, 1, 2] = 0.0  # a zero row
    x[1, 2, 0, 0] = 63.5  # scale 0.5: the others' codes 2k + 0.5, ties rounded to even
    x[1, 2, 0, 1:] = (torch.arange(dim - 1) - (dim - 1) // 2) * 0.5 + 0.25
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # as the window's projection is laid out
    codes, scales = _rounded(x)
    padded = (dim + 3) // 4 * 4
    caches = {}
    for keys in (True, False):
        cache = _int8_cache(strided, keys, start=3, spare=10)  # positions 3-22 of 33: three blocks of keys
        values = torch.ops.harmonia.int8_values(cache, 23, dim)
        assert values.shape == (2, 3, 23, dim) and values.dtype == torch.float32
        assert same_bits(values[:, :, 3:], codes * scales)
        assert (values[:, :, 3:] - x).abs().max() <= 0.5 * scales.max() * (1 + 1e-6)  # half a step
        caches[keys] = cache, values
    keys, values = caches[True][0], caches[False][0]
    assert keys.shape == (2, 3, 3, 16 * padded + 64) and values.shape == (2, 3, 33, padded + 4)
    # the layouts: values by position (codes, zeros to 4 bytes, the scale); keys by block of 16
    # positions, [pad4(dim) / 4][16][4] codes + 128, then 16 scales
    assert (
        torch.equal(values[:, :, 3:23, :dim], codes.to(torch.int8))
        and (values[:, :, 3:23, dim:padded] == 0).all()
    )
    assert torch.equal(values[:, :, 3:23, padded:].contiguous().view(torch.float32), scales)
    assert (values[:, :, :3] == -1).all() and (values[:, :, 23:] == -1).all()
    t = 17  # position 17: block 1, slot 1
    block = keys[:, :, 1]
    for d in range(dim):
        assert torch.equal(block[:, :, d // 4 * 64 + 4 + d % 4].int() - 128, codes[:, :, t - 3, d].int())
    slots = block[:, :, 16 * padded :].contiguous().view(torch.float32)
    assert torch.equal(slots[:, :, 1], scales[:, :, t - 3, 0])
    codes_of = keys[..., : 16 * padded].reshape(2, 3, 3, padded // 4, 16, 4)  # [block][group][slot][4]
    assert (codes_of[:, :, 0, :, :3] == 255).all() and (codes_of[:, :, 1, :, 7:] == 255).all()  # 0-2, 23-31
    assert (keys[:, :, 0, 16 * padded : 16 * padded + 12] == 255).all()  # their scales
    assert (keys[:, :, 1, 16 * padded + 28 :] == 255).all() and (keys[:, :, 2] == 255).all()  # 23-47
    query = torch.randn(2, 3, 1, dim, generator=generator)
    mask = torch.rand(2, 1, 1, 20, generator=generator) > 0.3
    q_codes, q_scale = _rounded(query)
    for m in (None, mask):
        # positions 0-2 stored as zeros, then 3-22 (the kernel reads 0-19)
        stored = [_int8_cache(torch.zeros(2, 3, 3, dim), kind, spare=30) for kind in (True, False)]
        for cache in stored:
            torch.ops.harmonia.store_int8(cache, strided, 3)
        one, two = on_one_and_two_threads(
            lambda m=m, stored=stored: torch.ops.harmonia.decode_attention(query, *stored, 20, 0.3, m)
        )
        assert same_bits(one, two) and one.shape == (2, 3, 1, dim)
        k, v = (torch.ops.harmonia.int8_values(cache, 20, dim).double() for cache in stored)
        want = torch.nn.functional.scaled_dot_product_attention(
            (q_codes * q_scale).double(), k, v, attn_mask=m, scale=0.3
        )
        assert (one.double() - want).abs().max() <= 2e-6 * want.abs().max()


@needs_float_kernels
def test_an_int8_cache_keeps_nan_and_refuses_what_it_cannot_hold():
    x = torch.randn(1, 2, 3, 16)
    x[0, 0, 1, 5] = float("nan")
    x[0, 1, 2, 0] = float("inf")
    values = _int8_cache(x, keys=False)
    scales = values[..., 16:].contiguous().view(torch.float32).flatten()
    assert [bool(v) for v in scales.isnan()] == [False, True, False, False, False, True]
    assert int(values[0, 0, 1, :16].abs().max()) == 0  # no code from a NaN row
    for cache in (values, _int8_cache(x, keys=True)):
        read = torch.ops.harmonia.int8_values(cache, 3, 16)
        assert read[0, 0, 1].isnan().all() and read[0, 1, 2].isnan().all() and not read[0, 0, 0].isnan().any()
    tiny = torch.full((1, 1, 1, 16), 1e-44)  # its largest / 127 underflows to 0: scale 1, codes 0, as torch's
    codes, scales = _rounded(tiny)
    assert same_bits(torch.ops.harmonia.int8_values(_int8_cache(tiny, keys=False), 1, 16), codes * scales)
    assert float(scales.max()) == 1.0 and float(codes.abs().max()) == 0.0
    out = torch.ops.harmonia.decode_attention(
        torch.randn(1, 2, 1, 16), _int8_cache(x, keys=True), values, 3, 1.0, None
    )
    assert out.isnan().all()  # a NaN key scores NaN; every output of its head is NaN (as the float kernel's)
    with pytest.raises(RuntimeError, match=r"harmonia\.store_int8: the values must match the cache"):
        torch.ops.harmonia.store_int8(values, torch.randn(1, 2, 3, 12), 0)
    with pytest.raises(RuntimeError, match=r"fit in it from start"):
        torch.ops.harmonia.store_int8(values, x, 1)
    with pytest.raises(
        RuntimeError, match=r"harmonia\.store_int8: a contiguous int8 cache \(keys uint8, values int8\)"
    ):
        torch.ops.harmonia.store_int8(values.float(), x, 0)
    with pytest.raises(
        RuntimeError, match=r"an int8 cache must match the query \(dim up to 256; keys in blocks of 16"
    ):
        torch.ops.harmonia.decode_attention(
            torch.randn(1, 2, 1, 16), _int8_cache(x, keys=True), values[..., :16], 3, 1.0, None
        )
    with pytest.raises(RuntimeError, match=r"harmonia\.int8_values: a contiguous int8 cache of this dim"):
        torch.ops.harmonia.int8_values(values, 4, 16)


@needs_float_kernels
def test_each_row_and_head_is_its_own_task_whichever_thread_takes_it():
    """Threads take (row, head) pairs rows first (ROWS_INTERLEAVED in decode.cpp): with a mask that
    differs by row and by head, odd counts of both and a row masked whole (guidance's), every pair
    reads its own query, keys, values and mask and writes its own output, over a float32,
    bfloat16 or int8 cache, the same bits on one thread and two."""
    rows, heads, length, dim = 3, 5, 19, 24
    q, k, v = _attention_inputs(rows, heads, length, dim, seed=7)
    generator = torch.Generator().manual_seed(7)
    mask = torch.rand(rows, heads, 1, length, generator=generator) > 0.4
    mask[:, :, :, 0] = True  # every pair attends to something...
    mask[2] = False  # ...but the last row (guidance's empty prompt): zeros
    mask[0, 3] = False
    mask[0, 3, 0, 5] = True  # one pair attends to one key alone: its output is that key's value
    for cache in (torch.float32, torch.bfloat16):
        keys, values = k.to(cache), v.to(cache)
        got = torch.ops.harmonia.decode_attention(q, keys, values, length, 0.2, mask)
        want = torch.nn.functional.scaled_dot_product_attention(
            q, keys.float(), values.float(), attn_mask=mask, scale=0.2
        )
        assert torch.equal(got[2], torch.zeros_like(got[2])) and torch.equal(
            got[0, 3, 0], values[0, 3, 5].float()
        )
        assert (got[:2] - want[:2]).abs().max() <= 2e-6 * want.abs().max()
        one, two = on_one_and_two_threads(
            lambda keys=keys, values=values: torch.ops.harmonia.decode_attention(
                q, keys, values, length, 0.2, mask
            )
        )
        assert same_bits(one, got) and same_bits(two, got)
    stored = [_int8_cache(x, kind) for x, kind in ((k, True), (v, False))]
    one, two = on_one_and_two_threads(
        lambda: torch.ops.harmonia.decode_attention(q, *stored, length, 0.2, mask)
    )
    assert same_bits(one, two) and torch.equal(one[2], torch.zeros_like(one[2]))
    q_codes, q_scale = _rounded(q)
    keys, values = (torch.ops.harmonia.int8_values(cache, length, dim).double() for cache in stored)
    want = torch.nn.functional.scaled_dot_product_attention(
        (q_codes * q_scale).double(), keys, values, attn_mask=mask, scale=0.2
    )
    assert (one[:2].double() - want[:2]).abs().max() <= 2e-6 * want.abs().max()


@needs_float_kernels
def test_the_attention_kernel_masks_like_sdpa_reads_strided_keys_and_refuses_what_it_cannot_run():
    """The prompt's mask (True: attend; a row with none, guidance's empty prompt, gives zeros as
    SDPA does), keys kept as a transposed view (the prompt's keys are), NaN carried through."""
    q, k, v = _attention_inputs(4, 4, 12, 32, seed=1)
    mask = torch.tensor([[1] * 7 + [0] * 5, [1] * 12, [0] * 12, [0, 1] * 6], dtype=torch.bool)[
        :, None, None, :
    ]
    got = torch.ops.harmonia.decode_attention(q, k, v, 12, 0.2, mask)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.2)
    assert (got - want).abs().max() <= 2e-6 * want.abs().max()
    assert torch.equal(got[2], torch.zeros_like(got[2])) and torch.equal(want[2], got[2])
    strided = (
        k.transpose(1, 2).contiguous().transpose(1, 2)
    )  # [rows, heads, keys, dim] over [rows, keys, heads, dim]
    assert not strided.is_contiguous()
    assert same_bits(torch.ops.harmonia.decode_attention(q, strided, v, 12, 0.2, mask), got)
    k[1, 0, 3, 0] = float("nan")
    poisoned = torch.ops.harmonia.decode_attention(q, k, v, 12, 0.2, None)
    assert (
        poisoned[1, 0].isnan().all() and not poisoned[1, 1:].isnan().any() and not poisoned[0].isnan().any()
    )
    with pytest.raises(RuntimeError, match=r"harmonia\.decode_attention: query \[rows, heads, 1, dim\]"):
        torch.ops.harmonia.decode_attention(q.expand(4, 4, 2, 32), k, v, 12, 0.2, None)
    with pytest.raises(RuntimeError, match=r"the mask must be boolean \(True: attend\)"):
        torch.ops.harmonia.decode_attention(q, k, v, 12, 0.2, mask.float())
    with pytest.raises(RuntimeError, match=r"and 1 <= end <= their length"):
        torch.ops.harmonia.decode_attention(q, k, v, 13, 0.2, None)
    with pytest.raises(RuntimeError, match=r"must match the query \(dim up to 256, unit stride\)"):
        torch.ops.harmonia.decode_attention(q[..., :24], k, v, 12, 0.2, None)


@pytest.mark.parametrize("cache", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("dim", [16, 32, 48, 64])
def test_the_attention_kernels_unrolled_for_a_head_of_64_compute_what_their_counted_loop_does(cache, dim):
    """The AVX2 attention kernels fix their count of 16-value chunks at compile time for heads of
    16, 32, 48 and 64 (MusicGen's are 64: the loops unroll, the sums stay in registers) and count
    them at run time for any other width. Zeros added to a head change no sum (a product of zeros,
    an integer code 0, the same largest |x| for the rounding), so the head padded with 8 zeros,
    which the counted loop runs, must give the same bits in its first ``dim`` values: over float32,
    bfloat16 and int8 caches, with a mask, a NaN key and the prompt's strided layout."""
    if kernels.form("decode_attention") is None or (cache == "int8" and not INTEGER_KERNELS):
        pytest.skip("this CPU runs neither form of the attention kernels")
    q, k, v = _attention_inputs(2, 3, 40, dim, seed=dim)
    k[1, 2, 5, 0] = float("nan")
    mask = (torch.rand(2, 1, 1, 37, generator=torch.Generator().manual_seed(dim)) > 0.3).expand(2, 3, 1, 37)

    def attend(width: int, mask: torch.Tensor | None) -> torch.Tensor:
        pad = (0, width - dim)
        query, keys, values = (torch.nn.functional.pad(t, pad) for t in (q, k, v))
        if cache == "int8":
            keys, values = kernels.int8_stored(keys, keys=True), kernels.int8_stored(values, keys=False)
        else:  # kept as the prompt's are: [rows, positions, heads, width] seen as [rows, heads, positions, width]
            keys, values = (
                t.transpose(1, 2).contiguous().transpose(1, 2).to(getattr(torch, cache))
                for t in (keys, values)
            )
        return torch.ops.harmonia.decode_attention(query, keys, values, 37, 0.125, mask)

    with kernels.forced_form("avx2"):
        for m in (None, mask):
            unrolled, counted = attend(dim, m), attend(dim + 8, m)
            assert counted[1, 2].isnan().all() == (m is None or bool(m[1, 2, 0, 5]))  # the NaN key reached it
            assert same_bits(unrolled, counted[..., :dim]) and (counted[..., dim:].nan_to_num() == 0).all()


@needs_float_kernels
def test_the_attention_path_is_measured_recorded_forced_and_replayed(wb, monkeypatch):
    """bf16, int8 and int4 choose between torch's SDPA and Harmonia's kernel for a step's attention
    (int8's and int4's on a bfloat16 cache, "own-bf16", or an int8 one, "own-int8"; "own" on their
    float32 cache is still forced or replayed); exact always keeps SDPA (plain transformers' bytes). SDPA is what every
    mode ran before there was a choice: it leaves ids as they were, and a manifest that names no
    attention replays it."""
    from harmonia import generation
    from harmonia.engines.decoding import _OwnAttentionLayer
    from harmonia.generation import generate, load_engine, reproduce

    cache = wb.state_dir / "calibration.json"
    cache.unlink(missing_ok=True)
    measured = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    line = measured.loaded.choices["attention"]
    assert line.startswith(
        ("own-bf16 (measured: own-bf16 ", "own-int8 (measured: own-bf16 ", "sdpa (measured: own-bf16 ")
    )
    assert " ms, own-int8 " in line and " ms, sdpa " in line
    kept = {"own-bf16": "bfloat16", "own-int8": "int8", "sdpa": "float32"}
    assert measured._step.cache == kept[measured._step.attention]
    (key,) = [k for k in json.loads(cache.read_text()) if "| attention " in k]
    assert (
        "| 2 threads | attention 2 rows, 2 layers of 4 heads of 8, a float32 decoder's bfloat16 or int8 cache "
        "of 64 and 512 keys and a prompt of 16 |" in key
    )
    exact = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)
    assert "attention" not in exact.loaded.choices
    assert not any(isinstance(layer, _OwnAttentionLayer) for layer in exact._step.layers)
    request = MusicRequest(["calm piano", "drums"], duration_s=0.6, seed=8)
    made, audio, built = {}, {}, []
    real_step = musicgen.decoder_step

    def spy(model, attention):
        built.append(attention)
        return real_step(model, attention)

    monkeypatch.setattr(musicgen, "decoder_step", spy)
    kept["own"] = "float32"
    for path in ("sdpa", "own", "own-bf16", "own-int8"):
        monkeypatch.setenv("HARMONIA_ATTENTION", path)
        forced = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
        assert forced.loaded.choices == {"attention": f"{path} (forced)", "encodec_layout": "torch (forced)"}
        assert isinstance(forced._step, torch.jit.ScriptModule)  # every path compiles to TorchScript
        assert forced._step.attention == path
        assert forced._step.cache == kept[path]  # int4's decoder is float32
        audio[path] = forced.generate(request).audio
        assert np.array_equal(audio[path], forced.generate(request).audio)
        made[path] = generate(
            wb, "tiny-musicgen", request, threads=2, precision="int4", previews=False
        ).artifact
        assert made[path].manifest.runtime.paths == {"attention": path, "encodec_layout": "torch"}
        loads = []  # after each request: the first may load (made[path] may be an earlier test's artifact)
        for seed in (1, 2):
            again = MusicRequest(["x"], duration_s=0.2, seed=seed)
            generate(wb, "tiny-musicgen", again, threads=2, precision="int4", previews=False)
            loads.append(len(built))
        assert loads[1] == loads[0]  # a second request on the same paths finds the loaded engine
    assert len({made[path].id for path in made}) == 4
    assert "paths" not in made["sdpa"].manifest.identity["runtime"]  # the id int4 had before the choice
    assert made["own"].manifest.identity["runtime"]["paths"] == {"attention": "own"}
    assert made["own-bf16"].manifest.identity["runtime"]["paths"] == {"attention": "own-bf16"}
    assert made["own-int8"].manifest.identity["runtime"]["paths"] == {"attention": "own-int8"}
    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")  # this machine would now pick sdpa ...
    for path in ("own", "own-bf16", "own-int8"):
        built.clear()
        generation._engines.clear()  # (so that reproduce loads, and the spy sees what it builds)
        assert reproduce(wb, made[path].id).identical and built == [path]  # ... the recorded path is replayed
    replayed = load_engine(wb, "tiny-musicgen", threads=2, precision="int4", paths=(("attention", "own"),))
    assert replayed.loaded.choices == {"attention": "own (recorded)", "encodec_layout": "torch (forced)"}
    assert replayed._step.attention == "own" and replayed._step.cache == "float32"
    # a manifest from before the choice (no paths) ran SDPA, and still does
    monkeypatch.setenv("HARMONIA_ATTENTION", "own")
    manifest = made["sdpa"].path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["runtime"].pop("paths")
    manifest.write_text(json.dumps(data, indent=2))
    assert MusicGenEngine.replayed_paths(musicgen.Runtime("cpu", "float32", 2, "int4")) == {
        "attention": "sdpa",
        "encodec_layout": "torch",
    }
    built.clear()
    generation._engines.clear()
    assert reproduce(wb, made["sdpa"].id).identical and built == ["sdpa"]
    built.clear()  # int8 has two choices (products, attention): the engine's key sees them in one order
    loads = []
    for seed in (1, 2, 3):
        again = MusicRequest(["x"], duration_s=0.2, seed=seed)
        generate(wb, "tiny-musicgen", again, threads=2, precision="int8", previews=False)
        loads.append(len(built))
    assert loads[2] == loads[1] == loads[0]  # the first may load (and measure); no other does
    # bf16 keeps its cache in bfloat16 on the kernel (what its projections return), float32 for SDPA
    bf16 = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")
    assert (
        bf16._step.attention == "own" and bf16._step.cache == "bfloat16"
    )  # (HARMONIA_ATTENTION is own here)
    four = MusicRequest(["calm piano", "drums", "a", "strings"], duration_s=0.4, seed=5)
    assert np.array_equal(bf16.generate(four).audio, bf16.generate(four).audio)
    for path in ("own-bf16", "own-int8"):  # int8 on its bfloat16 and its int8 cache, end to end
        monkeypatch.setenv("HARMONIA_ATTENTION", path)
        int8 = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")
        assert int8._step.attention == path and int8._step.cache == kept[path]
        assert np.array_equal(int8.generate(four).audio, int8.generate(four).audio)
    refusals = {  # bf16's decoder is bfloat16 already: own-bf16 would be own under another id, and
        "own-bf16": r"^attention own-bf16 rounds a float32 decoder's keys and values to bfloat16; this decoder "
        r"is bfloat16 already \(precision bf16\), and its kernel path is own\. Set HARMONIA_ATTENTION to "
        r"own or auto\.$",  # own-int8's store takes float32
        "own-int8": r"^attention own-int8 keeps a float32 decoder's keys and values in int8 \(precision int8 or "
        r"int4\); this decoder is bfloat16 \(precision bf16\), and its kernel path is own\. Set "
        r"HARMONIA_ATTENTION to own or auto\.$",
    }
    for path, message in refusals.items():
        monkeypatch.setenv("HARMONIA_ATTENTION", path)
        with pytest.raises(RequestError, match=message):
            MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")
    with pytest.raises(
        RequestError,
        match=r"^attention own-int8 keeps a float32 decoder's .* this decoder is bfloat16, and its",
    ):  # the step itself refuses too (a bf16 model handed to decoder_step directly)
        real_step(bf16.model, "own-int8")
    melody = MusicGenEngine.load(wb, "tiny-musicgen-melody", threads=2, precision="int4")
    # generate() decodes a melody model: no attention of Harmonia's (its audio decoder is chosen as any)
    assert melody.loaded.choices == {"encodec_layout": "torch (forced)"}
    take = melody.generate(MusicRequest(["calm piano"], duration_s=0.4, seed=2)).audio  # (int4 packing
    assert (
        take.shape[0] == 1 and np.isfinite(take).all()
    )  # once failed on its decoder without cross-attention)


@needs_integer_kernels
def test_rowwise_int8_makes_the_same_audio_with_or_without_the_kernel(wb, monkeypatch):
    """The kernel and its float64 stand-in compute the same bits, so an artifact made with the
    kernel (either form) reproduces on any CPU (more slowly without it)."""
    monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", "rowwise")
    monkeypatch.setenv("HARMONIA_ATTENTION", "sdpa")  # the same attention both times
    request = MusicRequest(["calm piano", "drums"], duration_s=0.6, seed=8)
    audio = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(kernels, "unavailable", lambda product: "this CPU lacks avx512_vnni")
        engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")
        layer = type(engine.model.decoder.model.decoder.layers[0].fc1).__name__
        assert layer == ("_RowwiseInt8Linear" if kernel else "_ReferenceInt8Linear")
        assert isinstance(engine._step, torch.jit.ScriptModule)  # both forms compile to TorchScript
        audio.append(engine.generate(request).audio)
    assert audio[0].shape == (2, 1, 19200) and np.array_equal(audio[0], audio[1])


def test_a_path_this_cpu_cannot_run_is_refused_in_one_line(wb, monkeypatch):
    lacks = "this CPU lacks avx512f, avx512bw, avx512vl (and avx2, fma, which its AVX2 form needs)"
    monkeypatch.setattr(kernels, "unavailable", lambda product: lacks)
    monkeypatch.setenv("HARMONIA_BF16_PRODUCTS", "rows")
    with pytest.raises(
        RequestError,
        match=r"^This run needs Harmonia's rows_linear kernel \(bf16_products: rows\), but this CPU lacks "
        r"avx512f, avx512bw, avx512vl \(and avx2, fma, which its AVX2 form needs\)\. Run it on an x86-64 CPU "
        r"with AVX-512, or AVX2 and FMA, and a C\+\+ compiler, or ask for another path \(a new artifact\)\.$",
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")
    monkeypatch.setenv("HARMONIA_BF16_PRODUCTS", "rows8")
    with pytest.raises(
        RequestError, match=r"^This run needs Harmonia's rows_linear kernel \(bf16_products: rows8\), "
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")
    monkeypatch.setenv("HARMONIA_BF16_PRODUCTS", "linear")
    monkeypatch.setenv("HARMONIA_ATTENTION", "own")
    with pytest.raises(
        RequestError,
        match=r"^This run needs Harmonia's decode_attention kernel \(attention: own\), but this CPU lacks "
        r"avx512f, ",
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    monkeypatch.setenv("HARMONIA_ATTENTION", "auto")
    monkeypatch.setenv("HARMONIA_BF16_PRODUCTS", "fast")
    with pytest.raises(
        RequestError,
        match=r"^HARMONIA_BF16_PRODUCTS must be auto or one of linear, rows, rows8, got 'fast'\.$",
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="bf16")


@needs_float_kernels
def test_processes_starting_together_build_the_library_once(tmp_path):
    """Two fresh processes, one empty kernel folder: one compiles, the other waits and loads the same
    file; nothing half-built is left behind."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from harmonia.kernels import unavailable; assert unavailable('rows_linear') is None; "
        "print(torch.ops.harmonia.rows_linear(torch.ones(2, 16), torch.ones(4, 16), None).sum().item())"
    )
    env = {**os.environ, "HARMONIA_KERNEL_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["128.0", "128.0"]
    assert sum("compiling Harmonia's decoding products" in err for _, err in outputs) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [
        next(tmp_path.glob("harmonia_decode_*.so")).name
    ]
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the private build folders are gone


def _decoder(product: type, layers: int = 2, width: int = 32, heads: int = 4, ffn: int = 48):
    """A stand-in for a MusicGen decoder's layers (what DecoderStep's layers read), with random norms and ``product`` (a kernel's Linear) for every product, with biases
    on all but fc2 (MusicGen's own have none: the path is tested here)."""
    torch.manual_seed(0)

    def norm():
        layer_norm = torch.nn.LayerNorm(width)
        torch.nn.init.normal_(layer_norm.weight)
        torch.nn.init.normal_(layer_norm.bias)
        return layer_norm

    def attention():
        module = torch.nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(module, name, product(torch.nn.Linear(width, width)))
        module.head_dim, module.scaling = width // heads, (width // heads) ** -0.5
        return module

    decoder = torch.nn.Module()
    decoder.layer_norm, decoder.layers = norm(), torch.nn.ModuleList()
    for _ in range(layers):
        layer = torch.nn.Module()
        layer.self_attn, layer.encoder_attn = attention(), attention()
        layer.self_attn_layer_norm = norm()
        layer.encoder_attn_layer_norm = norm()
        layer.final_layer_norm = norm()
        layer.fc1 = product(torch.nn.Linear(width, ffn))
        layer.fc2 = product(torch.nn.Linear(ffn, width, bias=False))
        decoder.layers.append(layer)
    return decoder


def _layers(decoder, int8_cache: bool = False) -> list:
    """``decoder``'s layers as DecoderStep builds them on Harmonia's attention (what fused_parameters reads)."""
    from harmonia.engines import decoding

    kind = decoding._Int8CacheLayer if int8_cache else decoding._OwnAttentionLayer
    return [kind(layer, torch.float32) for layer in decoder.layers]


def _fused_call(fused, hidden, keys, values, start, cross_keys, cross_values, mask, **changes):
    arguments = dict(params=fused.params, outs=fused.outs, head_dim=fused.head_dim) | changes
    return torch.ops.harmonia.decode_layers(
        hidden, keys, values, start, cross_keys, cross_values, mask,
        arguments["params"], arguments["outs"], arguments["head_dim"], fused.scaling, fused.eps,
    )  # fmt: skip


@needs_integer_kernels
@pytest.mark.parametrize("product", [musicgen._RowwiseInt8Linear, musicgen._Int4Linear])
@pytest.mark.parametrize("cache", ["float32", "bfloat16", "int8"])
def test_decode_layers_computes_the_torchscript_layers_bits(product, cache):
    """harmonia.decode_layers against the layers it stands for (decoding._OwnAttentionLayer, or
    _Int8CacheLayer for an int8 cache), step after step over a growing cache: the same hidden
    states and the same cache bytes, to the bit, on one thread and two; three rows, the prompt
    masked per row (one row whole), biases, and every kind of cache the engine keeps."""
    from harmonia.engines import decoding

    layers = _layers(_decoder(product), int8_cache=cache == "int8")
    fused = decoding.fused_parameters(layers)
    rows, heads, dim, length = 3, 4, 8, 6
    generator = torch.Generator().manual_seed(1)
    prompt_dtype = torch.float32 if cache == "float32" else torch.bfloat16
    cross_keys, cross_values = (
        [torch.randn(rows, heads, 5, dim, generator=generator).to(prompt_dtype) for _ in layers]
        for _ in range(2)
    )
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)[:, None, None]

    def empty_caches():
        if cache == "int8":
            return [
                [kernels.int8_cache(rows, heads, length, dim, keys=k).fill_(0) for _ in layers]
                for k in (True, False)
            ]
        return [
            [torch.zeros(rows, heads, length, dim, dtype=getattr(torch, cache)) for _ in layers]
            for _ in range(2)
        ]

    def run(threads):
        torch.set_num_threads(threads)
        (keys, values), (fused_keys, fused_values) = empty_caches(), empty_caches()
        for start in range(length):
            hidden = torch.randn(rows, 1, 32, generator=torch.Generator().manual_seed(start))
            want = hidden
            for i, layer in enumerate(layers):
                want = layer(want, keys[i], values[i], start, cross_keys[i], cross_values[i], mask)
            got = _fused_call(fused, hidden, fused_keys, fused_values, start, cross_keys, cross_values, mask)
            assert same_bits(got, want) and want.isfinite().all(), start
        for mine, theirs in zip(fused_keys + fused_values, keys + values, strict=True):
            assert torch.equal(mine, theirs)
        return got

    threads = torch.get_num_threads()
    try:
        assert same_bits(run(1), run(2))
    finally:
        torch.set_num_threads(threads)


@needs_integer_kernels
@pytest.mark.parametrize("product", [musicgen._RowwiseInt8Linear, musicgen._Int4Linear])
def test_decode_layers_refuses_what_it_cannot_run_in_one_line(product):
    from harmonia.engines import decoding

    fused = decoding.fused_parameters(_layers(_decoder(product, layers=1)))
    keys, values = [torch.zeros(2, 4, 8, 8)], [torch.zeros(2, 4, 8, 8)]
    prompt = [torch.randn(2, 4, 5, 8)], [torch.randn(2, 4, 5, 8)]

    def call(hidden=None, start=2, **changes):
        hidden = torch.randn(2, 1, 32) if hidden is None else hidden
        return _fused_call(fused, hidden, keys, values, start, *prompt, None, **changes)

    out = call()
    assert out.shape == (2, 1, 32) and out.isfinite().all()
    assert (keys[0][:, :, 2] != 0).all() and (keys[0][:, :, 3:] == 0).all()  # position 2 stored, no other
    message = r"harmonia\.decode_layers: hidden must be float32 \[rows, 1, width\] \(one position"
    with pytest.raises(RuntimeError, match=message):
        call(hidden=torch.randn(2, 3, 32))
    with pytest.raises(
        RuntimeError, match=r"each layer needs its keys, values, prompt keys and values, 38 param"
    ):
        call(params=fused.params[:-1])
    with pytest.raises(
        RuntimeError, match=r"harmonia\.decode_layers: the width must split into heads of head_dim"
    ):
        call(head_dim=5)
    with pytest.raises(RuntimeError, match=r"harmonia\.decode_layers: start must be a position \(>= 0\)"):
        call(start=-2)
    with pytest.raises(
        RuntimeError, match=r"harmonia\.decode_layers: no layers \(empty lists of keys and values\)"
    ):
        torch.ops.harmonia.decode_layers(
            torch.randn(2, 1, 32), [], [], 0, [], [], None, [], [], 8, 0.35, 1e-5
        )
    floats = list(fused.params)
    floats[6] = torch.randn(32, 32)  # q's weights as float32, not a kernel's
    with pytest.raises(
        RuntimeError, match=r"every product must be int8_linear's \(int8 weights\) or int4_linear's"
    ):
        call(params=floats)
    assert (keys[0][:, :, 3:] == 0).all()  # nothing stored by a refused call


def test_fused_parameters_are_the_layers_own_and_refuse_what_the_call_cannot_run():
    from harmonia.engines import decoding

    decoder = _decoder(musicgen._Int4Linear)
    layers = _layers(decoder)
    fused = decoding.fused_parameters(layers)
    layer = layers[1]
    assert (fused.head_dim, fused.eps) == (8, 1e-5) and fused.scaling == 8**-0.5
    assert len(fused.params) == 2 * 38 and fused.outs[8:] == [32] * 6 + [48, 32]
    assert (  # the modules the TorchScript layer runs, which are the decoder's own
        fused.params[38] is decoder.layers[1].self_attn_layer_norm.weight
        and fused.params[38 + 6] is decoder.layers[1].self_attn.q_proj.packed
    )
    assert fused.params[38 + 6 + 4 * 7 + 3].numel() == 0  # fc2 has no bias: an empty tensor stands for none
    layer.norm_ff.eps = 1e-6
    assert decoding.fused_parameters(layers) is None  # the norms must share one epsilon
    layer.norm_ff.eps = 1e-5
    layer.norm_ff.to(torch.bfloat16)
    assert decoding.fused_parameters(layers) is None
    layer.norm_ff.float()
    assert decoding.fused_parameters(layers) is not None
    layer.scaling = 0.5  # (decode_layers scales every layer's attention alike)
    assert decoding.fused_parameters(layers) is None
    layer.scaling = 8**-0.5
    layer.fc1 = torch.nn.Linear(32, 48)
    assert decoding.fused_parameters(layers) is None
    mixed = _decoder(musicgen._RowwiseInt8Linear)
    mixed.layers[0].fc2 = musicgen._Int4Linear(torch.nn.Linear(48, 32))  # either kernel, product by product
    assert decoding.fused_parameters(_layers(mixed)) is not None


@needs_integer_kernels
def test_only_harmonias_attention_with_its_integer_kernels_runs_a_steps_layers_as_one_call(wb, monkeypatch):
    """An engine's step runs its layers as one call where Harmonia's attention and its int8 or
    int4 kernels run every product; SDPA, float products (exact, bf16), torch.ao's int8 and the
    kernels' torch forms stay layer by layer."""
    from harmonia.engines import decoding

    int4 = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    decoder = int4.model.decoder.model.decoder
    assert int4._step.fused == (int4._step.attention != "sdpa")
    step = decoding.DecoderStep(int4.model, torch.float32, "own-int8", fused=True)  # its eager form
    assert (
        step.fused
        and len(step.parameters_fused) == 38 * len(decoder.layers)
        and step.parameters_fused[6] is decoder.layers[0].self_attn.q_proj.packed
    )
    sdpa = decoding.DecoderStep(int4.model, torch.float32, "sdpa", fused=True)
    assert not sdpa.fused and not hasattr(sdpa, "parameters_fused")  # Harmonia's attention only
    for precision in ("exact", "bf16"):
        engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision=precision)
        asked = decoding.DecoderStep(engine.model, torch.float32, "own", fused=True)
        assert not asked.fused and not engine._step.fused
    monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", "fbgemm")
    fbgemm = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")
    asked = decoding.DecoderStep(fbgemm.model, torch.float32, "own-int8", fused=True)
    assert not asked.fused and not fbgemm._step.fused
    monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", "rowwise")
    monkeypatch.setenv("HARMONIA_ATTENTION", "own-int8")
    rowwise = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int8")
    assert rowwise._step.fused
    monkeypatch.delenv("HARMONIA_ATTENTION")
    monkeypatch.setattr(kernels, "unavailable", lambda product: "testing: no kernels")
    reference = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision="int4")
    assert isinstance(reference.model.decoder.model.decoder.layers[0].fc1, musicgen._ReferenceInt4Linear)
    assert not decoding.DecoderStep(reference.model, torch.float32, "own-int8", fused=True).fused


def test_the_kernel_source_is_pinned_to_the_engines_code_version():
    """decode.cpp computes the bytes of every `rows`, `rowwise` and `int4` artifact, and an id names
    the path or precision, not the source: a change to the source that changes a product's bits
    must bump MusicGenEngine.code_version (so every id moves with it), and any change re-pins here."""
    import hashlib

    digest = hashlib.sha256(kernels.SOURCE.read_bytes()).hexdigest()
    assert (MusicGenEngine.code_version, digest) == (
        1,
        "b9a105319e0a010c6c7ccbc0644a870cd5043c6e38ad2d94adafe42faf162d5a",
    ), (
        "harmonia/kernels/decode.cpp changed: bump MusicGenEngine.code_version if its bits did, then pin the digest"
    )
