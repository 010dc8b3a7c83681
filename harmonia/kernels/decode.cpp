// Harmonia's products (and attention) for MusicGen's decoding steps: one or two rows (batch 1 with guidance)
// against a weight matrix read once from memory, on AVX-512 CPUs (and, in a second form, AVX2 ones).
// Each function carries its own target attribute, so the library loads on any x86-64 CPU and Python
// calls a product only where /proc/cpuinfo lists what it needs (harmonia/kernels/__init__.py).
//
// harmonia.rows_linear: y = x @ W.T + b, float32 or bfloat16 W as stored by torch ([O, I]).
//   Every output is one dot product summed in a fixed order (16 lanes, then a fixed lane
//   reduction), so the bits do not depend on the thread count nor on how many rows x has;
//   they differ from torch's F.linear in the last bits (another order of the same sums). Rows
//   go two by two against each group of weight rows, which stays in cache for the next pair.
// harmonia.int8_linear: W stored as int8 (one scale per output channel), x quantised to int8
//   per row on the fly (symmetric, round half to even). The sums are exact 32-bit integer sums
//   (AVX-512 VNNI vpdpbusd; the AVX2 form: see stream_blocks8x2); the float steps after them are
//   fixed (-ffp-contract=off: no fused multiply-add), and tests compare them with torch's arithmetic
//   to the bit. Weight layout (packed once at load): [O_pad / 16][I_pad / 4][16][4] int8, so one
//   64-byte load holds 4 inputs of 16 outputs and every byte of W is read once per pair of rows.
// harmonia.int4_linear: W in 4 bits (the `int4` precision): each output channel's weights in
//   groups of G inputs (G a multiple of 16), each group with its own float32 scale and its
//   weights rounded to the integers -7..7; x quantised to int8 per row as for int8_linear.
//   Per group the sum is an exact 32-bit integer sum (vpdpbusd on the weights stored + 8 as
//   unsigned nibbles, then 8 x the group's input sum taken back); the float steps after it are
//   fixed, in this order: each group's sum x its scale, added group after group from 0.0, x the
//   row's scale, + bias. Tests compare the bits with torch's arithmetic
//   (musicgen._ReferenceInt4Linear). Weight layout (packed once at load):
//   [O_pad / 16][I_pad / 8][16][4] bytes; byte k of a channel's 4 holds input 8c + k in its low
//   nibble and input 8c + 4 + k in its high one, so a 64-byte load holds 8 inputs of 16 outputs.
//   Scales: [O_pad / 16][I_pad / G][16] float32.
// harmonia.decode_attention: one query position (a decoding step) against the first `end` keys
//   and values of a cache [rows, heads, length, dim] kept in float32 or bfloat16, with an optional
//   boolean mask (True: attend), as torch's scaled_dot_product_attention computes it, in a fixed
//   order of float operations (attend_one): every (row, head) is one task on one thread, so the
//   bits depend on neither the thread count, nor the other rows, nor the cache's dtype (a
//   bfloat16 value widens to float32 exactly). The `attention` path "own" of bf16, int8 and int4.
//   An int8 cache (the path "own-int8"; attend_int8) holds each position's keys and values as int8
//   codes with a float32 scale (store_int8). Keys (uint8: code + 128) in blocks of 16 positions,
//   [rows, heads, blocks, 16 x pad4(dim) + 64]: the codes as [pad4(dim) / 4][16][4] bytes, then the
//   16 scales; values (int8) by position, [rows, heads, length, pad4(dim) + 4]: the codes, then the
//   scale. The query is rounded to int8 codes the same way (per row and head), so each score is an
//   exact integer dot product (AVX-512 VNNI vpdpbusd over a block's 16 positions at once; the AVX2
//   form sums the same integers with vpmaddubsw and vpmaddwd), then, in float32, x the key's scale
//   x the query's scale x `scale`. The values: sum over positions of (p_t x the value's scale) x
//   code, as the float kernel sums p_t x v_t.
// harmonia.store_int8: a window's keys (into a uint8 cache) or values (int8) into such a cache, per
//   position: scale = largest |x| / 127 (1 where that is 0: a zero row, or one below about 9e-44,
//   64 x 2^-149), code = nearbyint(x / scale), round half to even, within -127..127: torch's
//   round(x / scale) to the bit, bounded as CODE_BOUND says (a row with a NaN or an infinity: codes
//   0, scale NaN). harmonia.int8_values reads either back as float32 (code x scale), for a
//   prefill's SDPA.
// harmonia.decode_layers: a decoding step's decoder layers (one position) in one call, where
//   Harmonia's attention and its int8 or int4 products run them all: the functions above with
//   torch's layer_norm and GELU, in the TorchScript layer's order (the same bits), without the
//   interpreter between them.
// Every product has a second form for x86-64 CPUs without AVX-512 (AVX2 with FMA: Intel since
//   Haswell, AMD since Zen), with the same bits: each 16-lane vector of the AVX-512 form is two
//   8-lane halves (lanes 0-7 and 8-15), every lane takes the same operations in the same order (a
//   multiply-add rounds once in both), lanes8x2 sums the lanes by the same tree as lanes, and exp8
//   scales by 2^n with one rounded multiply where vscalefps rounds once too (NaNs come out in the
//   same places; their payloads are not compared). The integer products' AVX2 form takes the same
//   exact integer sums with vpmaddubsw and vpmaddwd (bounded so that no 16-bit sum saturates), then
//   the same float steps. The CPU picks the form as the library loads; use_form changes it (tests
//   force the AVX2 form on AVX-512 CPUs to compare the bits). The integer products and attention
//   over an int8 cache need VNNI for their AVX-512 form: an AVX-512 CPU without it runs their AVX2
//   form (the same bits), whatever use_form says.
// Both integer products read up to eight 16-output blocks at once (streams_for: eight, four or one,
// so that every thread still gets groups of its own); their bits depend neither on that count nor
// on the thread count. Both quantise each row of x with quantise_row (AVX-512; quantise_row8 in the
// AVX2 form: the same IEEE division and round-half-to-even as std::nearbyint(x / scale), without a
// libm call per input).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <limits>
#include <vector>

namespace {

// Four input bytes as one 32-bit lane (memcpy: no aliasing of uint8_t as int32_t).
inline int32_t four(const uint8_t *p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Ask the memory for the line at `begin + offset`. Near the end of the weights the address may
// lie past them: it is formed as an integer (no out-of-bounds pointer), and a prefetch never faults.
inline void ask(const char *begin, const char *, std::uintptr_t offset) {
    _mm_prefetch(reinterpret_cast<const char *>(reinterpret_cast<std::uintptr_t>(begin) + offset), _MM_HINT_T0);
}

// The form of the products that runs: false AVX-512, true AVX2 with FMA (from the CPU as the library
// loads; use_form changes it, refusing a form this CPU cannot run).
bool runs_avx512() {
    __builtin_cpu_init();  // (GCC's advice for calls during static initialisation)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
bool runs_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
std::atomic<bool> narrow{!runs_avx512()};
bool runs_vnni() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
}
const bool vnni = runs_vnni();

// Whether the integer products (int8_linear, int4_linear) and attention over an int8 cache run their AVX2
// form: on a CPU without AVX-512, where it is forced, and on AVX-512 CPUs without VNNI (the same bits).
inline bool integers_narrow() { return narrow.load(std::memory_order_relaxed) || !vnni; }

// A product's refusal on a CPU that runs neither form (an error, not SIGILL).
void check_form(const char *op) {
    static const bool runs = runs_avx512() || runs_avx2();
    TORCH_CHECK(runs, "harmonia.", op, ": this CPU has neither AVX-512 (F, BW, VL) nor AVX2 with FMA");
}

// A vector's 16 lanes summed as a fixed tree written in intrinsics (halves, then quarters, ...):
// the order is this source's, not a compiler's, and it costs a few instructions, not 16 dependent adds.
__attribute__((target("avx512f"))) inline float lanes(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

#define HARMONIA_AVX2 __attribute__((target("avx2,fma")))

// The AVX2 form's `lanes`: lanes 0-7 in lo, 8-15 in hi, summed by lanes' tree (lo + hi first).
HARMONIA_AVX2 inline float lanes8x2(__m256 lo, __m256 hi) {
    const __m256 s8 = _mm256_add_ps(lo, hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// The first `live` (at most 16) of 16 float32 or bfloat16 values as two 8-lane halves, the other
// lanes `fill` (0 as the AVX-512 form's masked loads give; bfloat16 -> float32 is exact).
template <bool BF16>
HARMONIA_AVX2 inline void load8x2(const void *p, int64_t live, __m256 &lo, __m256 &hi, float fill = 0.f) {
    if (live >= 16) {
        if constexpr (BF16) {
            const __m128i *h = static_cast<const __m128i *>(p);
            lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h)), 16));
            hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h + 1)), 16));
        } else {
            lo = _mm256_loadu_ps(static_cast<const float *>(p));
            hi = _mm256_loadu_ps(static_cast<const float *>(p) + 8);
        }
        return;
    }
    float values[16];
    for (int64_t i = 0; i < 16; i++) {
        if (i >= live) {
            values[i] = fill;
        } else if constexpr (BF16) {
            const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t *>(p)[i]) << 16;
            std::memcpy(values + i, &bits, 4);
        } else {
            values[i] = static_cast<const float *>(p)[i];
        }
    }
    lo = _mm256_loadu_ps(values);
    hi = _mm256_loadu_ps(values + 8);
}

// The first `live` lanes of two halves into p.
HARMONIA_AVX2 inline void store8x2(float *p, int64_t live, __m256 lo, __m256 hi) {
    if (live >= 16) {
        _mm256_storeu_ps(p, lo);
        _mm256_storeu_ps(p + 8, hi);
        return;
    }
    float values[16];
    _mm256_storeu_ps(values, lo);
    _mm256_storeu_ps(values + 8, hi);
    std::memcpy(p, values, sizeof(float) * live);
}

// quantise_row's and quantise_row8's common scalar steps. scale_of: the row's scale from the vector
// part's largest |x| `m` and NaN test, the scalar tail [full, I) counted in: NaN for a row with a NaN
// or an infinity, else largest |x| / 127, divided first as torch does (a row below about 9e-44 gets
// 0 here, then 1). quantise_tail: the tail's codes, as the vector part rounds and bounds them and
// adds them to `sums`.
inline float scale_of(const float *p, int64_t full, int64_t I, float m, bool finite) {
    for (int64_t i = full; i < I; i++) {
        finite = finite && !std::isnan(p[i]);
        m = std::max(m, std::fabs(p[i]));
    }
    if (!finite || std::isinf(m)) return std::numeric_limits<float>::quiet_NaN();
    const float scale = m / 127.f;
    return scale == 0.f ? 1.f : scale;
}
inline void quantise_tail(const float *p, int64_t full, int64_t I, float scale, uint8_t *q, int32_t offset,
                          int32_t *sums, int64_t G) {
    for (int64_t i = full; i < I; i++) {
        const int32_t n = std::clamp(static_cast<int32_t>(std::nearbyint(p[i] / scale)), -127, 127);
        q[i] = static_cast<uint8_t>(n + offset);
        if (sums) sums[i / G] += n;
    }
}

// Row p (I floats) quantised by its own scale (largest |x| / 127; 1 where that is 0): q[i] =
// nearbyint(p[i] / scale) within -127..127, + offset as a byte (offset 128: uint8 for vpdpbusd's
// unsigned side; 0: int8). (CODE_BOUND: only a row whose largest |x| is below about 2.3e-41 needs the
// bound: its scale is subnormal and rounds down, 2^-149 for a largest of 190 x 2^-149, code 190.
// Without the bound the AVX-512 form wrapped such a code to -66; every form and torch's now give
// 127.) With `sums`, each group of G inputs' sum of the quantised values (without offset) is
// added to sums[i / G]. Returns the scale. The max and the integer sums do not depend on the
// order; the division and the rounding are IEEE operations, the same as the scalar tail's.
// A row with a NaN or an infinity returns a NaN scale (its products come out NaN, as torch's
// float arithmetic gives them) and quantises to zeros.
__attribute__((target("avx512f,avx512bw,avx512vl"))) float quantise_row(const float *p, int64_t I, uint8_t *q,
                                                                          int32_t offset, int32_t *sums, int64_t G) {
    __m512 mv = _mm512_setzero_ps();
    __mmask16 nan = 0;
    const int64_t full = I / 16 * 16;
    for (int64_t i = 0; i < full; i += 16) {
        const __m512 v = _mm512_abs_ps(_mm512_loadu_ps(p + i));
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        mv = _mm512_max_ps(v, mv);
    }
    float m = _mm512_reduce_max_ps(mv);
    bool finite = nan == 0;
    const float scale = scale_of(p, full, I, m, finite);
    if (std::isnan(scale)) {
        std::memset(q, offset, static_cast<size_t>(I));
        return scale;
    }
    const __m512 sv = _mm512_set1_ps(scale);
    const __m512i ov = _mm512_set1_epi32(offset), top = _mm512_set1_epi32(127), bottom = _mm512_set1_epi32(-127);
    for (int64_t i = 0; i < full; i += 16) {
        const __m512i n = _mm512_max_epi32(  // to nearest even, within -127..127 (see CODE_BOUND)
            _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(p + i), sv)), top), bottom);
        _mm_storeu_si128(reinterpret_cast<__m128i *>(q + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(n, ov)));
        if (sums) sums[i / G] += _mm512_reduce_add_epi32(n);
    }
    quantise_tail(p, full, I, scale, q, offset, sums, G);
    return scale;
}

// quantise_row's AVX2 form: the same largest |x| (NaNs counted apart, as there), the same IEEE
// division and rounding to nearest even per input, the same integer sums: the same bytes and scale.
HARMONIA_AVX2 float quantise_row8(const float *p, int64_t I, uint8_t *q, int32_t offset, int32_t *sums, int64_t G) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256 mv = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    const int64_t full = I / 8 * 8;
    for (int64_t i = 0; i < full; i += 8) {
        const __m256 v = _mm256_andnot_ps(sign, _mm256_loadu_ps(p + i));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        mv = _mm256_max_ps(v, mv);  // a NaN v gives mv, as _mm512_max_ps does
    }
    float lanes8[8];
    _mm256_storeu_ps(lanes8, mv);
    float m = *std::max_element(lanes8, lanes8 + 8);  // the largest of non-NaN values: any order
    bool finite = _mm256_movemask_ps(nan) == 0;
    const float scale = scale_of(p, full, I, m, finite);
    if (std::isnan(scale)) {
        std::memset(q, offset, static_cast<size_t>(I));
        return scale;
    }
    const __m256 sv = _mm256_set1_ps(scale);
    const __m128i ov = _mm_set1_epi8(static_cast<char>(offset));
    const __m256i top = _mm256_set1_epi32(127), bottom = _mm256_set1_epi32(-127);
    for (int64_t i = 0; i < full; i += 8) {
        const __m256i n = _mm256_max_epi32(  // to nearest even, within -127..127
            _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(p + i), sv)), top), bottom);
        // |n| <= 127: both packs are exact; the offset is added modulo 256, as _mm512_cvtepi32_epi8 truncates
        const __m128i n16 = _mm_packs_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256(n, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i *>(q + i), _mm_add_epi8(_mm_packs_epi16(n16, n16), ov));
        if (sums) {
            const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256(n, 1));
            const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            sums[i / G] += _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
        }
    }
    quantise_tail(p, full, I, scale, q, offset, sums, G);
    return scale;
}

// S consecutive 16-output blocks of W (16 x I bytes each, one after another) against two rows:
// S streams from memory at once, one accumulator per block and row. Measured on an Intel Xeon (Ice
// Lake, 2 threads): the 24 layers' products in 16.9-19.0 ms with S = 8 against 24.1-24.9 ms one
// block at a time with software prefetch (which slowed every variant); the integer sums are exact
// in any order, so S changes no bit.
template <int S>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void stream_blocks(
    const int8_t *wp, int64_t I, const uint8_t *x0, const uint8_t *x1, int32_t *out0, int32_t *out1) {
    const int64_t chunks = I / 4, stride = 16 * I;  // 64-byte chunks in a block; bytes between blocks
    __m512i a[S], b[S];
    for (int s = 0; s < S; s++) a[s] = b[s] = _mm512_setzero_si512();
    for (int64_t c = 0; c < chunks; c++) {
        const __m512i p = _mm512_set1_epi32(four(x0 + 4 * c)), q = _mm512_set1_epi32(four(x1 + 4 * c));
        for (int s = 0; s < S; s++) {
            const __m512i w = _mm512_loadu_si512(reinterpret_cast<const __m512i *>(wp + s * stride) + c);
            a[s] = _mm512_dpbusd_epi32(a[s], p, w);
            b[s] = _mm512_dpbusd_epi32(b[s], q, w);
        }
    }
    for (int s = 0; s < S; s++) {
        _mm512_storeu_si512(out0 + 16 * s, a[s]);
        _mm512_storeu_si512(out1 + 16 * s, b[s]);
    }
}

// stream_blocks' AVX2 form, on inputs quantised without the offset (int8 codes, |code| <= 127): the
// same exact sums, less the offset's share (what int8_linear takes back as 128 x colsum). Without
// VNNI: |w| (vpabsb) against the code carrying w's sign (vpsignb) in vpmaddubsw, whose pairs stay
// within 2 x 128 x 127 < 2^15 (no saturation), then vpmaddwd by ones into 32 bits. Lanes 0-7 and
// 8-15 of a block are the two 32-byte halves of each 64-byte chunk.
template <int S>
HARMONIA_AVX2 inline void stream_blocks8x2(const int8_t *wp, int64_t I, const uint8_t *x0, const uint8_t *x1,
                                           int32_t *out0, int32_t *out1) {
    const int64_t chunks = I / 4, stride = 16 * I;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a[S][2], b[S][2];
    for (int s = 0; s < S; s++) a[s][0] = a[s][1] = b[s][0] = b[s][1] = _mm256_setzero_si256();
    for (int64_t c = 0; c < chunks; c++) {
        const __m256i p = _mm256_set1_epi32(four(x0 + 4 * c)), q = _mm256_set1_epi32(four(x1 + 4 * c));
        for (int s = 0; s < S; s++) {
            for (int h = 0; h < 2; h++) {
                const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(wp + s * stride + 64 * c + 32 * h));
                const __m256i u = _mm256_abs_epi8(w);
                a[s][h] = _mm256_add_epi32(a[s][h], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(p, w)), ones));
                b[s][h] = _mm256_add_epi32(b[s][h], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(q, w)), ones));
            }
        }
    }
    for (int s = 0; s < S; s++) {
        for (int h = 0; h < 2; h++) {
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(out0 + 16 * s + 8 * h), a[s][h]);
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(out1 + 16 * s + 8 * h), b[s][h]);
        }
    }
}

constexpr int64_t STREAMS = 8;  // the most blocks int8_linear and int4_linear read at once

// How many blocks a task reads at once: eight where every thread still gets groups of its own,
// fewer where a product has too few blocks for the threads (the bits are the same for any count).
inline int64_t streams_for(int64_t blocks) {
    const int64_t threads = at::get_num_threads();
    return blocks >= 8 * threads ? 8 : blocks >= 4 * threads ? 4 : 1;
}

// n consecutive blocks against two rows in the AVX2 form, AVX2_STREAMS at a time (the integer sums are
// exact in any grouping). Measured on an AMD EPYC (Zen 3, AVX2 only, 2 threads; the 24 layers' products,
// alternated runs): int8 15.6-16.9 ms with 4 against 15.7-22 with 2 and 15.5-21 with 8. int4 (a 1024 x
// 4096 product from the L3 cache, 2 threads): 28.6-28.9 GiB/s with 4 against 22.7-27.3 with 2 and 20.4
// with 8 (the first form, which kept every block's sums in registers and spilled them: 14-22).
constexpr int AVX2_STREAMS = 4;
inline void stream_int8_8x2(const int8_t *wg, int64_t n, int64_t I_pad, const uint8_t *x0, const uint8_t *x1,
                            int32_t *acc0, int32_t *acc1) {
    int64_t k = 0;
    for (; k + AVX2_STREAMS <= n; k += AVX2_STREAMS)
        stream_blocks8x2<AVX2_STREAMS>(wg + k * 16 * I_pad, I_pad, x0, x1, acc0 + 16 * k, acc1 + 16 * k);
    for (; k < n; k++) stream_blocks8x2<1>(wg + k * 16 * I_pad, I_pad, x0, x1, acc0 + 16 * k, acc1 + 16 * k);
}

at::Tensor int8_linear(const at::Tensor &x, const at::Tensor &packed, const at::Tensor &scales,
                  const at::Tensor &colsum, const c10::optional<at::Tensor> &bias) {
    TORCH_CHECK(packed.dim() == 4 && packed.size(2) == 16 && packed.size(3) == 4 && packed.is_contiguous() &&
                    packed.scalar_type() == at::kChar,
                "harmonia.int8_linear: packed weights must be int8 [O/16, I/4, 16, 4]");
    const int64_t I = x.size(-1), O = scales.size(0), I_pad = packed.size(1) * 4;
    TORCH_CHECK(I_pad - I < 16 && I_pad % 16 == 0 && I_pad <= 65536 && O <= packed.size(0) * 16 &&
                    O > (packed.size(0) - 1) * 16,
                "harmonia.int8_linear: x's width and the scales must match the packed weights (at most 65536 "
                "inputs: the integer sums stay below 2**31)");
    TORCH_CHECK(colsum.numel() == O && colsum.scalar_type() == at::kInt && scales.scalar_type() == at::kFloat &&
                    scales.is_contiguous() && colsum.is_contiguous() &&
                    (!bias.has_value() || !bias->defined() ||
                     (bias->numel() == O && bias->scalar_type() == at::kFloat && bias->is_contiguous())),
                "harmonia.int8_linear: scales, colsum and bias must have one float32/int32/float32 entry per output");
    check_form("int8_linear");
    const bool avx2 = integers_narrow();
    const at::Tensor xf = x.reshape({-1, I}).to(at::kFloat).contiguous();
    const int64_t R = xf.size(0), pairs = (R + 1) / 2;
    // each row quantised by its own scale (largest |x| / 127), stored + 128 as uint8 (vpdpbusd's unsigned
    // side; the AVX2 form's codes go without it); pads hold zero
    const int32_t offset = avx2 ? 0 : 128;
    std::vector<uint8_t> xu(static_cast<size_t>(pairs * 2 * I_pad), static_cast<uint8_t>(offset));
    std::vector<float> xs(static_cast<size_t>(pairs * 2), 0.f);
    const float *xp = xf.data_ptr<float>();
    for (int64_t r = 0; r < R; r++)
        xs[r] = (avx2 ? quantise_row8 : quantise_row)(xp + r * I, I, xu.data() + r * I_pad, offset, nullptr, 16);
    at::Tensor y = at::empty({R, O}, xf.options());
    const int8_t *w = packed.data_ptr<int8_t>();
    const float *s = scales.data_ptr<float>();
    const int32_t *cs = colsum.data_ptr<int32_t>();
    const float *b = bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>();
    const int64_t blocks = packed.size(0), streams = streams_for(blocks);
    at::parallel_for(0, (blocks + streams - 1) / streams, 1, [&](int64_t begin, int64_t end) {
        alignas(64) int32_t acc0[16 * STREAMS], acc1[16 * STREAMS];
        for (int64_t g = begin; g < end; g++) {
            const int64_t ob = g * streams, n = std::min(streams, blocks - ob);
            const int8_t *wg = w + ob * 16 * I_pad;
            for (int64_t pair = 0; pair < pairs; pair++) {  // the group's n x 16 x I_pad bytes stay in cache
                const int64_t r0 = 2 * pair;
                const uint8_t *x0 = xu.data() + r0 * I_pad, *x1 = x0 + I_pad;
                if (avx2) {
                    stream_int8_8x2(wg, n, I_pad, x0, x1, acc0, acc1);
                } else if (n == 8) {
                    stream_blocks<8>(wg, I_pad, x0, x1, acc0, acc1);
                } else if (n == 4) {
                    stream_blocks<4>(wg, I_pad, x0, x1, acc0, acc1);
                } else {  // one at a time: small products, and the last blocks of a product
                    for (int64_t k = 0; k < n; k++)
                        stream_blocks<1>(wg + k * 16 * I_pad, I_pad, x0, x1, acc0 + 16 * k, acc1 + 16 * k);
                }
                for (int64_t j = 0; j < 16 * n && ob * 16 + j < O; j++) {
                    const int64_t o = ob * 16 + j;
                    const int32_t zero = avx2 ? 0 : 128 * cs[o];  // the +128 of the inputs, taken back exactly
                    // no bias: nothing added (+ 0.0 would turn an underflowed -0.0 into +0.0)
                    const float y0 = static_cast<float>(acc0[j] - zero) * (s[o] * xs[r0]);
                    yp[r0 * O + o] = b ? y0 + b[o] : y0;
                    if (r0 + 1 < R) {
                        const float y1 = static_cast<float>(acc1[j] - zero) * (s[o] * xs[r0 + 1]);
                        yp[(r0 + 1) * O + o] = b ? y1 + b[o] : y1;
                    }
                }
            }
        }
    });
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = O;
    return y.view(shape);
}


// Dot products of `G` weight rows (fp32 or bf16) with R (1 or 2) float32 rows of x.
constexpr int64_t AHEAD = 16;  // rows ahead that the loop asks the memory for

template <int G, bool BF16, int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dots(const char *wv, const char *wend, int64_t I,
                                                                 const float *x0, const float *x1, float *out0,
                                                                 float *out1) {
    __m512 a[G], c[G];
    for (int g = 0; g < G; g++) a[g] = c[g] = _mm512_setzero_ps();
    const int64_t full = I / 16 * 16;
    for (int64_t i = 0; i < I; i += 16) {
        const __mmask16 mask =
            i < full ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (I - i)) - 1);
        const __m512 v0 = _mm512_maskz_loadu_ps(mask, x0 + i);
        const __m512 v1 = R > 1 ? _mm512_maskz_loadu_ps(mask, x1 + i) : v0;
        for (int g = 0; g < G; g++) {
            // the same place in the next rows: they start a new page, where hardware prefetch stops
            ask(wv, wend, static_cast<std::uintptr_t>((AHEAD * I + g * I + i) * (BF16 ? 2 : 4)));
            __m512 w;
            if (BF16) {  // bfloat16 -> float32 is a 16-bit shift: exact
                const __m256i raw = _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t *>(wv) + g * I + i);
                w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            } else {
                w = _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float *>(wv) + g * I + i);
            }
            a[g] = _mm512_fmadd_ps(w, v0, a[g]);
            if (R > 1) c[g] = _mm512_fmadd_ps(w, v1, c[g]);
        }
    }
    for (int g = 0; g < G; g++) {
        out0[g] = lanes(a[g]);
        if (R > 1) out1[g] = lanes(c[g]);
    }
}

// dots' AVX2 form: the same sums, lane for lane (lanes 0-7 and 8-15 as two halves).
template <int G, bool BF16, int R>
HARMONIA_AVX2 void dots8x2(const char *wv, const char *wend, int64_t I, const float *x0, const float *x1, float *out0,
                  float *out1) {
    __m256 a[G][2], c[G][2];
    for (int g = 0; g < G; g++) a[g][0] = a[g][1] = c[g][0] = c[g][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < I; i += 16) {
        const int64_t live = std::min<int64_t>(16, I - i);
        __m256 v0[2], v1[2], w[2];
        load8x2<false>(x0 + i, live, v0[0], v0[1]);
        if (R > 1) load8x2<false>(x1 + i, live, v1[0], v1[1]);
        for (int g = 0; g < G; g++) {
            ask(wv, wend, static_cast<std::uintptr_t>((AHEAD * I + g * I + i) * (BF16 ? 2 : 4)));
            load8x2<BF16>(wv + (g * I + i) * (BF16 ? 2 : 4), live, w[0], w[1]);
            for (int h = 0; h < 2; h++) {
                a[g][h] = _mm256_fmadd_ps(w[h], v0[h], a[g][h]);
                if (R > 1) c[g][h] = _mm256_fmadd_ps(w[h], v1[h], c[g][h]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        out0[g] = lanes8x2(a[g][0], a[g][1]);
        if (R > 1) out1[g] = lanes8x2(c[g][0], c[g][1]);
    }
}

// PAIRS: the AVX2 form runs four bfloat16 weight rows against two rows of x as two pairs of weight
// rows (each output's sums are the same operations in the same order: the same bits). Measured on an
// AMD EPYC (Zen 3, AVX2 only; the 24 layers' 192 products, weights cold, three rounds): 48.7-50.8 ms
// against 55.4-56.5 on one thread, 28.4-30.6 against 31.3-31.6 on two; whole 4 s bf16 takes at
// musicgen-small's size 7.72-8.09 s against 8.55-8.71 (the better of two in each round). float32
// weight rows ran slower that way (16.0 against 19.3 GiB/s on one thread), and stay four at a time.

// G weight rows against R rows of x, in the form that runs (the same bits either way).
template <int G, bool BF16, int R>
inline void dots_any(const char *wv, const char *wend, int64_t I, const float *x0, const float *x1, float *out0,
                     float *out1) {
    if (!narrow.load(std::memory_order_relaxed)) return dots<G, BF16, R>(wv, wend, I, x0, x1, out0, out1);
    if constexpr (BF16 && G > 2 && R > 1) {  // (see PAIRS)
        for (int g = 0; g < G; g += 2) dots8x2<2, BF16, R>(wv + g * I * 2, wend, I, x0, x1, out0 + g, out1 + g);
    } else {
        dots8x2<G, BF16, R>(wv, wend, I, x0, x1, out0, out1);
    }
}

template <bool BF16>
void rows(const void *w, const float *x, const float *b, float *y, int64_t O, int64_t I, int64_t R) {
    constexpr int G = 4;  // four weight rows at once: up to eight independent sums in flight
    const int64_t groups = (O + G - 1) / G;
    const int64_t bytes = BF16 ? 2 : 4;
    const char *wend = static_cast<const char *>(w) + O * I * bytes;
    at::parallel_for(0, groups, 16, [&](int64_t begin, int64_t end) {
        float s0[G], s1[G];
        for (int64_t grp = begin; grp < end; grp++) {
            const int64_t o = grp * G;
            const char *wg = static_cast<const char *>(w) + o * I * bytes;
            // rows two by two against the same G weight rows (in cache after the first pair): a
            // row's sums are the same operations whichever pair it is in, so its bits do not
            // depend on R
            for (int64_t r = 0; r < R; r += 2) {
                const float *x0 = x + r * I;
                const bool two = r + 1 < R;
                if (o + G <= O) {
                    two ? dots_any<G, BF16, 2>(wg, wend, I, x0, x0 + I, s0, s1)
                        : dots_any<G, BF16, 1>(wg, wend, I, x0, x0, s0, s1);
                } else {
                    for (int64_t k = 0; o + k < O; k++)
                        two ? dots_any<1, BF16, 2>(wg + k * I * bytes, wend, I, x0, x0 + I, s0 + k, s1 + k)
                            : dots_any<1, BF16, 1>(wg + k * I * bytes, wend, I, x0, x0, s0 + k, s1 + k);
                }
                for (int64_t k = 0; k < G && o + k < O; k++) {
                    const float bo = b ? b[o + k] : 0.f;
                    y[r * O + o + k] = s0[k] + bo;
                    if (two) y[(r + 1) * O + o + k] = s1[k] + bo;
                }
            }
        }
    });
}

at::Tensor rows_linear(const at::Tensor &x, const at::Tensor &weight, const c10::optional<at::Tensor> &bias) {
    check_form("rows_linear");
    const bool bf16 = weight.scalar_type() == at::kBFloat16;
    TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && (bf16 || weight.scalar_type() == at::kFloat),
                "harmonia.rows_linear: weight must be a contiguous float32 or bfloat16 [O, I]");
    const int64_t I = weight.size(1), O = weight.size(0);
    TORCH_CHECK(x.size(-1) == I && x.scalar_type() == weight.scalar_type(), "harmonia.rows_linear: x");
    const at::Tensor xf = x.reshape({-1, I}).to(at::kFloat).contiguous();  // bfloat16 -> float32 is exact
    const int64_t R = xf.size(0);
    TORCH_CHECK(R >= 1, "harmonia.rows_linear: at least one row");
    at::Tensor bf;
    if (bias.has_value() && bias->defined()) {
        TORCH_CHECK(bias->numel() == O, "harmonia.rows_linear: one bias per output");
        bf = bias->to(at::kFloat).contiguous();
    }
    at::Tensor y = at::empty({R, O}, xf.options());
    const float *bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
    const void *w = weight.data_ptr();
    float *yp = y.data_ptr<float>();
    const float *xp = xf.data_ptr<float>();
    bf16 ? rows<true>(w, xp, bp, yp, O, I, R) : rows<false>(w, xp, bp, yp, O, I, R);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = O;
    return y.to(weight.scalar_type()).view(shape);  // bfloat16: round to nearest even, as torch does
}

// S consecutive blocks of 16 outputs (each chunks_all x 64 bytes, one after another) against two
// quantised rows, S streams from memory at once: per output lane, out = sum over groups of
// (integer group sum) x (the group's scale), in group order. The integer sums are exact in any
// order and each lane's float steps are the same whatever S is, so S changes no bit. Measured on
// an Intel Xeon (Ice Lake; the 24 layers' products): 11.5-13.6 ms with S = 8 against 15.6-16.5
// one block at a time with software prefetch at 2 threads, 17.5-21 against 24-26 ms at 1.
template <int S>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void stream_blocks4(
    const uint8_t *wp, int64_t chunks_all, const float *sp, const uint8_t *x0, const uint8_t *x1,
    const int32_t *sum0, const int32_t *sum1, int64_t groups, int64_t chunks, float *out0, float *out1) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 f0[S], f1[S];
    for (int s = 0; s < S; s++) f0[s] = f1[s] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m512i a[S], b[S];
        for (int s = 0; s < S; s++) a[s] = b[s] = _mm512_setzero_si512();
        for (int64_t c = g * chunks; c < (g + 1) * chunks; c++) {
            const uint8_t *p0 = x0 + 8 * c, *p1 = x1 + 8 * c;  // chunk c: inputs 8c..8c+3 low, 8c+4..8c+7 high
            const __m512i pl = _mm512_set1_epi32(four(p0)), ph = _mm512_set1_epi32(four(p0 + 4));
            const __m512i ql = _mm512_set1_epi32(four(p1)), qh = _mm512_set1_epi32(four(p1 + 4));
            for (int s = 0; s < S; s++) {
                const __m512i v = _mm512_loadu_si512(reinterpret_cast<const __m512i *>(wp + s * chunks_all * 64) + c);
                const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                a[s] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a[s], lo, pl), hi, ph);
                b[s] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(b[s], lo, ql), hi, qh);
            }
        }
        // the weights were stored + 8: take back 8 x the group's input sum (exact integers)
        const __m512i e0 = _mm512_set1_epi32(8 * sum0[g]), e1 = _mm512_set1_epi32(8 * sum1[g]);
        for (int s = 0; s < S; s++) {
            const __m512 scale = _mm512_loadu_ps(sp + (s * groups + g) * 16);
            f0[s] = _mm512_add_ps(f0[s], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a[s], e0)), scale));
            f1[s] = _mm512_add_ps(f1[s], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(b[s], e1)), scale));
        }
    }
    for (int s = 0; s < S; s++) {
        _mm512_storeu_ps(out0 + 16 * s, f0[s]);
        _mm512_storeu_ps(out1 + 16 * s, f1[s]);
    }
}

// stream_blocks4's AVX2 form: the same integer group sums, then the same float steps on every lane
// (lanes 0-7 and 8-15 of a block are the two 32-byte halves of each 64-byte chunk). Without VNNI:
// vpmaddubsw of the nibbles (0..15) and the codes (|code| <= 127) gives pairs within 2 x 15 x 127 =
// 3810, so RUN chunks' (two vpmaddubsw each; RUN <= 4) add up exactly in 16 bits (at most 30480)
// before vpmaddwd by ones widens them into 32. Each group goes block after block (S blocks read in
// turn), its float sums kept in memory: AVX2's 16 registers then hold every integer sum.
template <int RUN>
HARMONIA_AVX2 inline void group4_8x2(const uint8_t *w, const uint8_t *x0, const uint8_t *x1, int64_t c0,
                                     int64_t chunks, __m256i sums[4]) {
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256i a32[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t run = c0; run < c0 + chunks; run += RUN) {
        __m256i a16[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 4
        for (int64_t c = run; c < run + RUN; c++) {
            const __m256i pl = _mm256_set1_epi32(four(x0 + 8 * c)), ph = _mm256_set1_epi32(four(x0 + 8 * c + 4));
            const __m256i ql = _mm256_set1_epi32(four(x1 + 8 * c)), qh = _mm256_set1_epi32(four(x1 + 8 * c + 4));
            for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + 64 * c + 32 * h));
                const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                a16[h] = _mm256_add_epi16(a16[h], _mm256_add_epi16(_mm256_maddubs_epi16(lo, pl), _mm256_maddubs_epi16(hi, ph)));
                a16[2 + h] = _mm256_add_epi16(a16[2 + h], _mm256_add_epi16(_mm256_maddubs_epi16(lo, ql), _mm256_maddubs_epi16(hi, qh)));
            }
        }
        for (int i = 0; i < 4; i++) a32[i] = _mm256_add_epi32(a32[i], _mm256_madd_epi16(a16[i], ones));
    }
    for (int i = 0; i < 4; i++) sums[i] = a32[i];
}

template <int S>
HARMONIA_AVX2 inline void stream_blocks4_8x2(const uint8_t *wp, int64_t chunks_all, const float *sp,
                                             const uint8_t *x0, const uint8_t *x1, const int32_t *sum0,
                                             const int32_t *sum1, int64_t groups, int64_t chunks, float *out0,
                                             float *out1) {
    alignas(32) float f[2][16 * S] = {};  // per row, per block: lanes 0-7, then 8-15
    for (int64_t g = 0; g < groups; g++) {
        const __m256i e[2] = {_mm256_set1_epi32(8 * sum0[g]), _mm256_set1_epi32(8 * sum1[g])};
        for (int s = 0; s < S; s++) {
            __m256i sums[4];  // row 0 lanes 0-7, 8-15; row 1 lanes 0-7, 8-15
            const uint8_t *w = wp + s * chunks_all * 64;
            chunks % 4 == 0 ? group4_8x2<4>(w, x0, x1, g * chunks, chunks, sums)
                            : group4_8x2<2>(w, x0, x1, g * chunks, chunks, sums);  // (chunks = G / 8 is even)
            for (int i = 0; i < 4; i++) {
                const __m256 scale = _mm256_loadu_ps(sp + (s * groups + g) * 16 + 8 * (i % 2));
                float *p = f[i / 2] + 16 * s + 8 * (i % 2);
                const __m256 term = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sums[i], e[i / 2])), scale);
                _mm256_store_ps(p, _mm256_add_ps(_mm256_load_ps(p), term));
            }
        }
    }
    std::memcpy(out0, f[0], sizeof f[0]);
    std::memcpy(out1, f[1], sizeof f[1]);
}

at::Tensor int4_linear(const at::Tensor &x, const at::Tensor &packed, const at::Tensor &scales,
                       const c10::optional<at::Tensor> &bias, int64_t out_features) {
    TORCH_CHECK(packed.dim() == 4 && packed.size(2) == 16 && packed.size(3) == 4 && packed.is_contiguous() &&
                    packed.scalar_type() == at::kByte,
                "harmonia.int4_linear: packed weights must be uint8 [O/16, I/8, 16, 4]");
    const int64_t I = x.size(-1), O = out_features, blocks = packed.size(0), chunks_all = packed.size(1);
    const int64_t I_pad = chunks_all * 8;
    TORCH_CHECK(scales.dim() == 3 && scales.size(0) == blocks && scales.size(2) == 16 && scales.is_contiguous() &&
                    scales.scalar_type() == at::kFloat && scales.size(1) > 0 && I_pad % scales.size(1) == 0,
                "harmonia.int4_linear: scales must be float32 [O/16, I/G, 16]");
    const int64_t groups = scales.size(1), G = I_pad / groups, chunks = G / 8;
    TORCH_CHECK(G % 16 == 0 && I_pad - I < G && I <= I_pad && O <= blocks * 16 && O > (blocks - 1) * 16,
                "harmonia.int4_linear: x's width and out_features must match the packed weights (groups of a "
                "multiple of 16 inputs)");
    TORCH_CHECK(!bias.has_value() || !bias->defined() ||
                    (bias->numel() == O && bias->scalar_type() == at::kFloat && bias->is_contiguous()),
                "harmonia.int4_linear: bias must have one float32 entry per output");
    check_form("int4_linear");
    const bool avx2 = integers_narrow();
    const at::Tensor xf = x.reshape({-1, I}).to(at::kFloat).contiguous();
    const int64_t R = xf.size(0), pairs = (R + 1) / 2;
    // each row quantised by its own scale; pads hold 0; each group's input sum kept
    std::vector<uint8_t> xq(static_cast<size_t>(pairs * 2 * I_pad), 0);  // int8 values as bytes
    std::vector<int32_t> xsum(static_cast<size_t>(pairs * 2 * groups), 0);
    std::vector<float> xs(static_cast<size_t>(pairs * 2), 0.f);
    const float *xp = xf.data_ptr<float>();
    for (int64_t r = 0; r < R; r++)
        xs[r] = (avx2 ? quantise_row8 : quantise_row)(xp + r * I, I, xq.data() + r * I_pad, 0, xsum.data() + r * groups, G);
    at::Tensor y = at::empty({R, O}, xf.options());
    const uint8_t *w = packed.data_ptr<uint8_t>();
    const float *s = scales.data_ptr<float>();
    const float *b = bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>();
    const int64_t streams = streams_for(blocks);
    at::parallel_for(0, (blocks + streams - 1) / streams, 1, [&](int64_t begin, int64_t end) {
        alignas(64) float acc0[16 * STREAMS], acc1[16 * STREAMS];
        for (int64_t grp = begin; grp < end; grp++) {
            const int64_t ob = grp * streams, n = std::min(streams, blocks - ob);
            const uint8_t *wg = w + ob * chunks_all * 64;
            const float *sg = s + ob * groups * 16;
            for (int64_t pair = 0; pair < pairs; pair++) {  // the group's bytes stay in cache
                const int64_t r0 = 2 * pair;
                const uint8_t *x0 = xq.data() + r0 * I_pad, *x1 = x0 + I_pad;
                const int32_t *sum0 = xsum.data() + r0 * groups, *sum1 = sum0 + groups;
                if (avx2) {
                    int64_t k = 0;
                    for (; k + AVX2_STREAMS <= n; k += AVX2_STREAMS)
                        stream_blocks4_8x2<AVX2_STREAMS>(wg + k * chunks_all * 64, chunks_all, sg + k * groups * 16, x0,
                                                         x1, sum0, sum1, groups, chunks, acc0 + 16 * k, acc1 + 16 * k);
                    for (; k < n; k++)
                        stream_blocks4_8x2<1>(wg + k * chunks_all * 64, chunks_all, sg + k * groups * 16, x0, x1, sum0,
                                              sum1, groups, chunks, acc0 + 16 * k, acc1 + 16 * k);
                } else if (n == 8) {
                    stream_blocks4<8>(wg, chunks_all, sg, x0, x1, sum0, sum1, groups, chunks, acc0, acc1);
                } else if (n == 4) {
                    stream_blocks4<4>(wg, chunks_all, sg, x0, x1, sum0, sum1, groups, chunks, acc0, acc1);
                } else {  // one at a time: small products, and the last blocks of a product
                    for (int64_t k = 0; k < n; k++)
                        stream_blocks4<1>(wg + k * chunks_all * 64, chunks_all, sg + k * groups * 16, x0, x1, sum0,
                                          sum1, groups, chunks, acc0 + 16 * k, acc1 + 16 * k);
                }
                for (int64_t j = 0; j < 16 * n && ob * 16 + j < O; j++) {
                    const int64_t o = ob * 16 + j;
                    const float y0 = acc0[j] * xs[r0], y1 = acc1[j] * xs[r0 + 1];
                    yp[r0 * O + o] = b ? y0 + b[o] : y0;  // no bias: nothing added (keeps a -0.0)
                    if (r0 + 1 < R) yp[(r0 + 1) * O + o] = b ? y1 + b[o] : y1;
                }
            }
        }
    });
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = O;
    return y.view(shape);
}


// e^x over 16 lanes for x <= 0 (scores less their maximum): Cephes' expf, a degree-6
// polynomial on x - n ln 2 and a scale by 2^n (vscalefps); below -87.3 it is 0, a NaN stays NaN.
// Written with explicit multiply-adds, so its bits are this source's on every AVX-512 CPU.
// exp16's and exp8's constants (one place, so both forms compute the same): the floor, log2(e),
// ln 2 in two parts, and the polynomial's coefficients from the highest power down.
constexpr float EXP_FLOOR = -87.33654f, LOG2E = 1.44269504088896341f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_POLY[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
    const __m512 floor = _mm512_set1_ps(EXP_FLOOR);
    const __mmask16 zero = _mm512_cmp_ps_mask(x, floor, _CMP_LT_OQ);
    x = _mm512_max_ps(floor, x);  // the second operand when either is NaN: a NaN goes through
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 y = _mm512_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_POLY[i]));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_maskz_mov_ps(static_cast<__mmask16>(~zero), _mm512_scalef_ps(y, n));
}

// Up to 16 float32 or bfloat16 values, the lanes `live` names (the others 0; bfloat16 -> float32
// is exact: the bits shifted up by 16)
template <bool BF16>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const void *p, __mmask16 live) {
    if constexpr (BF16) {
        const __m256i h = _mm256_maskz_loadu_epi16(live, p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
        return _mm512_maskz_loadu_ps(live, p);
    }
}

constexpr int64_t ATTEND_AHEAD = 16;  // cache rows ahead that attend_one asks the memory for

// Softmax's numerators in place: scores[t] = exp16(scores[t] - top) for t < T, summed in 16 lanes in
// t order, then `lanes` (the sum returned). Every attention kernel's, so all compute it alike.
__attribute__((target("avx512f,avx512bw,avx512vl"))) float softmax16(float *scores, int64_t T, float top) {
    const __m512 m = _mm512_set1_ps(top);
    __m512 total = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; t += 16) {
        const __mmask16 keys = T - t >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (T - t)) - 1);
        const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), keys, scores + t);
        const __m512 p = exp16(_mm512_sub_ps(s, m));
        _mm512_mask_storeu_ps(scores + t, keys, p);
        total = _mm512_add_ps(total, p);
    }
    return lanes(total);
}

// Ask the memory for every 64-byte line of a row of keys or values (`bytes` long, inside the
// tensor: a real address). A row that does not start on a line may end on one line more.
inline void ask_row(const char *row, int64_t bytes) {
    for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch(row + at, _MM_HINT_T0);
    if (reinterpret_cast<std::uintptr_t>(row) % 64) _mm_prefetch(row + bytes - 1, _MM_HINT_T0);
}

// One query position against keys[0, T) of one (row, head): D at most 256 (in 16-lane chunks,
// the last one masked).
// Scores: q . k_t summed over D in 16 lanes (multiply-adds in D order), the lanes by `lanes`,
// times the scale; a masked key scores -inf. Softmax: the largest score m; p_t = exp16(s_t - m),
// summed in 16 lanes in t order, then `lanes`. Output: sum over t of p_t v_t (multiply-adds in
// t order), divided by the sum; a row with every key masked gives zeros (as torch's SDPA does).
// A masked key is never read: a NaN in it does not reach the output (SDPA's would).
// The rows ATTEND_AHEAD ahead of the one read are asked for (ask_row), and the first ATTEND_AHEAD
// of the keys and of the values as a (row, head) starts (masked ones too: asking reads no value into
// the arithmetic, and changes no bit). In a decoding step the keys and values are cold (the step's
// weights have swept the CPU's caches since this layer ran), and a prompt's keys lie a whole
// projection row apart (heads x D values: 2 KiB in bfloat16 for musicgen-small), across pages where
// the hardware's prefetcher stops. Measured in the int4 steps of 3 s takes on musicgen-small's
// architecture (Intel Xeon, Ice Lake, 2 threads): cross-attention 0.83-0.92 ms a step against
// 1.43-1.46 without, self-attention 1.02-1.10 against 1.25-1.28.
template <bool BF16>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void attend_one(
    const float *q, const char *k, const char *v, int64_t T, int64_t D, int64_t kstride, int64_t vstride,
    const bool *mask, int64_t mstride, float scale, float *scores, float *out) {
    constexpr int64_t bytes = BF16 ? 2 : 4;
    __m512 qv[16];
    const int64_t chunks = (D + 15) / 16;
    __mmask16 live[16];
    for (int64_t c = 0; c < chunks; c++) {
        live[c] = D - 16 * c >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (D - 16 * c)) - 1);
        qv[c] = _mm512_maskz_loadu_ps(live[c], q + 16 * c);
    }
    const int64_t row = D * bytes;
    for (int64_t t = 0; t < std::min(ATTEND_AHEAD, T); t++) {  // the first rows of both, while the scores start
        ask_row(k + t * kstride * bytes, row);
        ask_row(v + t * vstride * bytes, row);
    }
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < T; t++) {
        if (t + ATTEND_AHEAD < T) ask_row(k + (t + ATTEND_AHEAD) * kstride * bytes, row);
        if (mask && !mask[t * mstride]) {
            scores[t] = -std::numeric_limits<float>::infinity();
            continue;
        }
        const char *kt = k + t * kstride * bytes;
        __m512 acc = _mm512_mul_ps(qv[0], load16<BF16>(kt, live[0]));
        for (int64_t c = 1; c < chunks; c++)
            acc = _mm512_fmadd_ps(qv[c], load16<BF16>(kt + 16 * c * bytes, live[c]), acc);
        const float s = lanes(acc) * scale;
        scores[t] = s;
        top = s > top || std::isnan(s) ? s : top;
    }
    if (top == -std::numeric_limits<float>::infinity()) {  // every key masked
        std::memset(out, 0, sizeof(float) * D);
        return;
    }
    const __m512 sum = _mm512_set1_ps(softmax16(scores, T, top));
    __m512 acc[16];
    for (int64_t c = 0; c < chunks; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        if (t + ATTEND_AHEAD < T) ask_row(v + (t + ATTEND_AHEAD) * vstride * bytes, row);
        if (mask && !mask[t * mstride]) continue;
        const __m512 p = _mm512_set1_ps(scores[t]);
        const char *vt = v + t * vstride * bytes;
        for (int64_t c = 0; c < chunks; c++)
            acc[c] = _mm512_fmadd_ps(p, load16<BF16>(vt + 16 * c * bytes, live[c]), acc[c]);
    }
    for (int64_t c = 0; c < chunks; c++) _mm512_mask_storeu_ps(out + 16 * c, live[c], _mm512_div_ps(acc[c], sum));
}

// exp16's AVX2 form over 8 lanes. n is an integer in [-126, 0] for every x it scales (x in
// [-87.34, 0]: scores less their maximum), so 2^n is a normal float and y x 2^n rounds once, as
// vscalefps does; a NaN lane's n converts to garbage, but y is that NaN and the product keeps it.
HARMONIA_AVX2 inline __m256 exp8(__m256 x) {
    const __m256 floor = _mm256_set1_ps(EXP_FLOOR);
    const __m256 zero = _mm256_cmp_ps(x, floor, _CMP_LT_OQ);
    x = _mm256_max_ps(floor, x);  // the second operand when either is NaN, as exp16's
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 y = _mm256_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_POLY[i]));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(y, _mm256_castsi256_ps(power)));
}

// softmax16's AVX2 form.
HARMONIA_AVX2 float softmax8x2(float *scores, int64_t T, float top) {
    const __m256 m = _mm256_set1_ps(top);
    __m256 total[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t t = 0; t < T; t += 16) {
        const int64_t keys = std::min<int64_t>(16, T - t);
        __m256 p[2];
        load8x2<false>(scores + t, keys, p[0], p[1], -std::numeric_limits<float>::infinity());
        for (int h = 0; h < 2; h++) {
            p[h] = exp8(_mm256_sub_ps(p[h], m));
            total[h] = _mm256_add_ps(total[h], p[h]);
        }
        store8x2(scores + t, keys, p[0], p[1]);
    }
    return lanes8x2(total[0], total[1]);
}

// FIXED_CHUNKS: the AVX2 attention kernels for a head of D values in 16-lane chunks, their count
// fixed at compile time where D is 16, 32, 48 or 64 (MusicGen's heads are 64 wide), counted at
// run time (0) otherwise. Fixed, the loops over chunks unroll and the sums over values stay in
// registers; counted at run time, the compiler keeps them in memory and each multiply-add of a
// position waits for the store of the one before. The same operations in the same order either
// way: the same bits.
#define FIXED_CHUNKS(kernel, D, ...)                                                                          \
    ((D) == 16 ? kernel<1, ##__VA_ARGS__> : (D) == 32 ? kernel<2, ##__VA_ARGS__>                               \
     : (D) == 48 ? kernel<3, ##__VA_ARGS__> : (D) == 64 ? kernel<4, ##__VA_ARGS__> : kernel<0, ##__VA_ARGS__>)

// attend_one's AVX2 form: the same operations on every lane, in the same order (see above).
// CHUNKS: see FIXED_CHUNKS.
template <int64_t CHUNKS, bool BF16>
HARMONIA_AVX2 void attend_one8x2(const float *q, const char *k, const char *v, int64_t T, int64_t D, int64_t kstride,
                        int64_t vstride, const bool *mask, int64_t mstride, float scale, float *scores,
                        float *out) {
    if constexpr (CHUNKS > 0) TORCH_INTERNAL_ASSERT(D == 16 * CHUNKS, "attend_one8x2: a head of ", D, " for ", 16 * CHUNKS);
    constexpr int64_t bytes = BF16 ? 2 : 4;
    __m256 qv[16][2];
    const int64_t chunks = CHUNKS ? CHUNKS : (D + 15) / 16;
    int64_t live[16];
#pragma GCC unroll 16
    for (int64_t c = 0; c < chunks; c++) {
        live[c] = CHUNKS ? 16 : std::min<int64_t>(16, D - 16 * c);
        load8x2<false>(q + 16 * c, live[c], qv[c][0], qv[c][1]);
    }
    const int64_t row = D * bytes;
    for (int64_t t = 0; t < std::min(ATTEND_AHEAD, T); t++) {
        ask_row(k + t * kstride * bytes, row);
        ask_row(v + t * vstride * bytes, row);
    }
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < T; t++) {
        if (t + ATTEND_AHEAD < T) ask_row(k + (t + ATTEND_AHEAD) * kstride * bytes, row);
        if (mask && !mask[t * mstride]) {
            scores[t] = -std::numeric_limits<float>::infinity();
            continue;
        }
        const char *kt = k + t * kstride * bytes;
        __m256 acc[2], kv[2];
        load8x2<BF16>(kt, live[0], kv[0], kv[1]);
        for (int h = 0; h < 2; h++) acc[h] = _mm256_mul_ps(qv[0][h], kv[h]);
#pragma GCC unroll 16
        for (int64_t c = 1; c < chunks; c++) {
            load8x2<BF16>(kt + 16 * c * bytes, live[c], kv[0], kv[1]);
            for (int h = 0; h < 2; h++) acc[h] = _mm256_fmadd_ps(qv[c][h], kv[h], acc[h]);
        }
        const float s = lanes8x2(acc[0], acc[1]) * scale;
        scores[t] = s;
        top = s > top || std::isnan(s) ? s : top;
    }
    if (top == -std::numeric_limits<float>::infinity()) {
        std::memset(out, 0, sizeof(float) * D);
        return;
    }
    const __m256 sum = _mm256_set1_ps(softmax8x2(scores, T, top));
    __m256 acc[16][2];
#pragma GCC unroll 16
    for (int64_t c = 0; c < chunks; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        if (t + ATTEND_AHEAD < T) ask_row(v + (t + ATTEND_AHEAD) * vstride * bytes, row);
        if (mask && !mask[t * mstride]) continue;
        const __m256 p = _mm256_set1_ps(scores[t]);
        const char *vt = v + t * vstride * bytes;
#pragma GCC unroll 16
        for (int64_t c = 0; c < chunks; c++) {
            __m256 vv[2];
            load8x2<BF16>(vt + 16 * c * bytes, live[c], vv[0], vv[1]);
            for (int h = 0; h < 2; h++) acc[c][h] = _mm256_fmadd_ps(p, vv[h], acc[c][h]);
        }
    }
#pragma GCC unroll 16
    for (int64_t c = 0; c < chunks; c++)
        store8x2(out + 16 * c, live[c], _mm256_div_ps(acc[c][0], sum), _mm256_div_ps(acc[c][1], sum));
}

// ---- The int8 cache ("own-int8"; layout above) ----
constexpr int64_t KEY_BLOCK = 16;           // positions in a block of keys
constexpr int64_t VALUES_AHEAD = 32;        // value rows (pad4(dim) + 4 bytes) ahead that attend_int8 asks for
constexpr int64_t KEYS_AHEAD = 2;           // key blocks ahead
constexpr int64_t padded(int64_t D) { return (D + 3) / 4 * 4; }
constexpr int64_t key_block_bytes(int64_t D) { return KEY_BLOCK * padded(D) + KEY_BLOCK * 4; }

// A value row's scale (the 4 bytes after its padded codes).
inline float row_scale(const int8_t *row, int64_t D) {
    float scale;
    std::memcpy(&scale, row + padded(D), 4);
    return scale;
}

// n values (stride apart) as int8 codes (codes[n..padded(n)) 0) and their scale: largest |x| / 127
// (1 where that is 0), code = nearbyint(x / scale) by adding and taking away 1.5 x 2^23 (exact for
// |y| <= 2^22 in the default rounding, to nearest with ties to even: here |y| <= 127.5, or about
// 190.5 where the scale is subnormal, then bounded to 127 as CODE_BOUND says; no fast-math, so the
// compiler keeps both). A NaN or an infinity among them: codes 0, scale NaN.
inline float quantise_codes(const float *x, int64_t n, int64_t stride, int8_t *codes) {
    float top = 0.f;
    bool finite = true;
    for (int64_t d = 0; d < n; d++) {
        finite = finite && std::isfinite(x[d * stride]);
        top = std::max(top, std::fabs(x[d * stride]));
    }
    std::memset(codes, 0, static_cast<size_t>(padded(n)));
    if (!finite) return std::numeric_limits<float>::quiet_NaN();
    float scale = top / 127.f;  // (divided first, as torch does: a tiny row's scale can be 0 too)
    if (scale == 0.f) scale = 1.f;
    constexpr float magic = 12582912.f;
    for (int64_t d = 0; d < n; d++) {
        const float y = (x[d * stride] / scale + magic) - magic;
        codes[d] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, y)));
    }
    return scale;
}

// The query of one (row, head) as codes, four to an int32 (vpdpbusd's signed side), their sum, its scale.
struct Query {
    int32_t four[64];
    int32_t sum = 0;
    float scale;
    Query(const float *q, int64_t D) {
        int8_t codes[256];
        scale = quantise_codes(q, D, 1, codes);
        for (int64_t d = 0; d < padded(D); d++) sum += codes[d];
        std::memcpy(four, codes, static_cast<size_t>(padded(D)));
    }
};

// With a mask: masked scores -inf, and the largest of the others (NaN if any is NaN, as attend_one's).
inline float masked_top(float *scores, int64_t T, const bool *mask, int64_t mstride) {
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < T; t++) {
        if (!mask[t * mstride]) scores[t] = -std::numeric_limits<float>::infinity();
        top = scores[t] > top || std::isnan(scores[t]) ? scores[t] : top;
    }
    return top;
}

// Keys [0, T) of one (row, head) against the query: scores[t] = ((float(dot_t) x key scale_t) x
// query scale) x scale, -inf where masked; returns the largest (NaN wins, as attend_one's). dot_t
// = sum of (key code + 128) x query code, less 128 x the query codes' sum: exact in int32.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) float int8_scores(
    const Query &query, const uint8_t *k, int64_t T, int64_t D, int64_t kstride, const bool *mask, int64_t mstride,
    float scale, float *scores) {
    const int64_t groups = padded(D) / 4, block = key_block_bytes(D), blocks = (T + KEY_BLOCK - 1) / KEY_BLOCK;
    const __m512i bias = _mm512_set1_epi32(128 * query.sum);
    const __m512 qs = _mm512_set1_ps(query.scale), sc = _mm512_set1_ps(scale);
    __m512 most = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __mmask16 nan = 0;
    for (int64_t b = 0; b < std::min(KEYS_AHEAD, blocks); b++) ask_row(reinterpret_cast<const char *>(k + b * kstride), block);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *kb = k + b * kstride;
        if (b + KEYS_AHEAD < blocks) ask_row(reinterpret_cast<const char *>(kb + KEYS_AHEAD * kstride), block);
        __m512i dot = _mm512_setzero_si512();
        for (int64_t j = 0; j < groups; j++)
            dot = _mm512_dpbusd_epi32(dot, _mm512_loadu_si512(kb + 64 * j), _mm512_set1_epi32(query.four[j]));
        const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, bias));
        const __m512 keys = _mm512_loadu_ps(reinterpret_cast<const float *>(kb + KEY_BLOCK * padded(D)));
        const __m512 s = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(f, keys), qs), sc);
        const int64_t live = std::min<int64_t>(KEY_BLOCK, T - b * KEY_BLOCK);
        const __mmask16 lanes_live = static_cast<__mmask16>((1u << live) - 1);
        _mm512_mask_storeu_ps(scores + b * KEY_BLOCK, lanes_live, s);
        most = _mm512_mask_max_ps(most, lanes_live, most, s);
        nan |= _mm512_mask_cmp_ps_mask(lanes_live, s, s, _CMP_UNORD_Q);
    }
    if (mask) return masked_top(scores, T, mask, mstride);
    return nan ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(most);
}

// int8_scores' AVX2 form: the same integers, then the same float operations on every lane. Without
// VNNI: each key code k (stored k + 128: the XOR of 0x80 gives it back) against the query's code
// q by vpmaddubsw of |k| (vpabsb) and q carrying k's sign (vpsignb), then vpmaddwd by ones into
// each position's sum over its four inputs: sum of k x q, exactly the VNNI form's sum of (k + 128)
// x q less 128 x the query codes' sum. Exact for any byte of the cache (one never written, k =
// -128, gives pairs within 2 x 128 x 127 < 2^15: no saturation, and its lane is not kept), given
// query codes within -127..127 (vpsignb cannot negate -128; quantise_codes bounds them). Each
// group's query broadcast serves both halves of the block.
HARMONIA_AVX2 float int8_scores8x2(const Query &query, const uint8_t *k, int64_t T, int64_t D, int64_t kstride,
                                   const bool *mask, int64_t mstride, float scale, float *scores) {
    const int64_t groups = padded(D) / 4, block = key_block_bytes(D), blocks = (T + KEY_BLOCK - 1) / KEY_BLOCK;
    const __m256 qs = _mm256_set1_ps(query.scale), sc = _mm256_set1_ps(scale);
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
    __m256 most[2] = {_mm256_set1_ps(-std::numeric_limits<float>::infinity()),
                      _mm256_set1_ps(-std::numeric_limits<float>::infinity())};
    __m256 nan = _mm256_setzero_ps();
    for (int64_t b = 0; b < std::min(KEYS_AHEAD, blocks); b++) ask_row(reinterpret_cast<const char *>(k + b * kstride), block);
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *kb = k + b * kstride;
        if (b + KEYS_AHEAD < blocks) ask_row(reinterpret_cast<const char *>(kb + KEYS_AHEAD * kstride), block);
        __m256 s[2];
        __m256i dot[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int64_t j = 0; j < groups; j++) {
            const __m256i four = _mm256_set1_epi32(query.four[j]);
            for (int h = 0; h < 2; h++) {  // positions 8h .. 8h + 7: bytes 32h .. 32h + 31 of each group
                const __m256i codes = _mm256_xor_si256(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i *>(kb + 64 * j + 32 * h)), flip);
                const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(codes), _mm256_sign_epi8(four, codes));
                dot[h] = _mm256_add_epi32(dot[h], _mm256_madd_epi16(pairs, ones));
            }
        }
        for (int h = 0; h < 2; h++) {
            const __m256 f = _mm256_cvtepi32_ps(dot[h]);
            const __m256 keys = _mm256_loadu_ps(reinterpret_cast<const float *>(kb + KEY_BLOCK * padded(D)) + 8 * h);
            s[h] = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(f, keys), qs), sc);
        }
        const int64_t live = std::min<int64_t>(KEY_BLOCK, T - b * KEY_BLOCK);
        store8x2(scores + b * KEY_BLOCK, live, s[0], s[1]);
        for (int h = 0; h < 2; h++) {  // the lanes past T count as -inf
            const __m256i lane = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * h));
            const __m256 in = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(live)), lane));
            const __m256 x = _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), s[h], in);
            most[h] = _mm256_max_ps(x, most[h]);  // a NaN x gives most[h]: NaNs are counted apart
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        }
    }
    if (mask) return masked_top(scores, T, mask, mstride);
    if (_mm256_movemask_ps(nan)) return std::numeric_limits<float>::quiet_NaN();
    float lanes8[8];
    _mm256_storeu_ps(lanes8, _mm256_max_ps(most[0], most[1]));
    return *std::max_element(lanes8, lanes8 + 8);
}

// One query position against an int8 cache's first T positions (see above): scores, softmax16, then
// the values, sum over t of (p_t x value scale_t) x code (multiply-adds in t order, 16 lanes), / the sum.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void attend_int8(
    const float *q, const uint8_t *k, const int8_t *v, int64_t T, int64_t D, int64_t kstride, int64_t vstride,
    const bool *mask, int64_t mstride, float scale, float *scores, float *out) {
    const Query query(q, D);
    const float top = int8_scores(query, k, T, D, kstride, mask, mstride, scale, scores);
    if (top == -std::numeric_limits<float>::infinity()) {  // every key masked
        std::memset(out, 0, sizeof(float) * D);
        return;
    }
    const int64_t chunks = (D + 15) / 16, row = padded(D) + 4;
    const __m512 sum = _mm512_set1_ps(softmax16(scores, T, top));
    __m512 acc[16];
    __mmask16 live[16];
    for (int64_t c = 0; c < chunks; c++) {
        acc[c] = _mm512_setzero_ps();
        live[c] = D - 16 * c >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (D - 16 * c)) - 1);
    }
    for (int64_t t = 0; t < std::min(VALUES_AHEAD, T); t++) ask_row(reinterpret_cast<const char *>(v + t * vstride), row);
    for (int64_t t = 0; t < T; t++) {
        if (t + VALUES_AHEAD < T) ask_row(reinterpret_cast<const char *>(v + (t + VALUES_AHEAD) * vstride), row);
        if (mask && !mask[t * mstride]) continue;
        const int8_t *vt = v + t * vstride;
        const __m512 p = _mm512_set1_ps(scores[t] * row_scale(vt, D));
        for (int64_t c = 0; c < chunks; c++) {
            const __m128i bytes = _mm_maskz_loadu_epi8(live[c], vt + 16 * c);
            acc[c] = _mm512_fmadd_ps(p, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), acc[c]);
        }
    }
    for (int64_t c = 0; c < chunks; c++) _mm512_mask_storeu_ps(out + 16 * c, live[c], _mm512_div_ps(acc[c], sum));
}

// attend_int8's AVX2 form (and the form of AVX-512 CPUs without VNNI): the same bits. CHUNKS: see
// FIXED_CHUNKS.
template <int64_t CHUNKS>
HARMONIA_AVX2 void attend_int8_8x2(const float *q, const uint8_t *k, const int8_t *v, int64_t T, int64_t D,
                                   int64_t kstride, int64_t vstride, const bool *mask, int64_t mstride, float scale,
                                   float *scores, float *out) {
    if constexpr (CHUNKS > 0) TORCH_INTERNAL_ASSERT(D == 16 * CHUNKS, "attend_int8_8x2: a head of ", D, " for ", 16 * CHUNKS);
    const Query query(q, D);
    const float top = int8_scores8x2(query, k, T, D, kstride, mask, mstride, scale, scores);
    if (top == -std::numeric_limits<float>::infinity()) {
        std::memset(out, 0, sizeof(float) * D);
        return;
    }
    const int64_t chunks = CHUNKS ? CHUNKS : (D + 15) / 16, row = padded(D) + 4;
    const __m256 sum = _mm256_set1_ps(softmax8x2(scores, T, top));
    __m256 acc[16][2];
#pragma GCC unroll 16
    for (int64_t c = 0; c < chunks; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    for (int64_t t = 0; t < std::min(VALUES_AHEAD, T); t++) ask_row(reinterpret_cast<const char *>(v + t * vstride), row);
    for (int64_t t = 0; t < T; t++) {
        if (t + VALUES_AHEAD < T) ask_row(reinterpret_cast<const char *>(v + (t + VALUES_AHEAD) * vstride), row);
        if (mask && !mask[t * mstride]) continue;
        const int8_t *vt = v + t * vstride;
        const __m256 p = _mm256_set1_ps(scores[t] * row_scale(vt, D));
#pragma GCC unroll 16
        for (int64_t c = 0; c < chunks; c++) {
            __m256 codes[2];
            const int64_t live = CHUNKS ? 16 : std::min<int64_t>(16, D - 16 * c);
            if (live == 16) {
                for (int h = 0; h < 2; h++)  // (vpmovsxbd from memory: no shift of the register)
                    codes[h] = _mm256_cvtepi32_ps(
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(vt + 16 * c + 8 * h))));
            } else {
                float values[16] = {};
                for (int64_t i = 0; i < live; i++) values[i] = static_cast<float>(vt[16 * c + i]);
                codes[0] = _mm256_loadu_ps(values);
                codes[1] = _mm256_loadu_ps(values + 8);
            }
            for (int h = 0; h < 2; h++) acc[c][h] = _mm256_fmadd_ps(p, codes[h], acc[c][h]);
        }
    }
#pragma GCC unroll 16
    for (int64_t c = 0; c < chunks; c++)
        store8x2(out + 16 * c, CHUNKS ? 16 : std::min<int64_t>(16, D - 16 * c), _mm256_div_ps(acc[c][0], sum),
                 _mm256_div_ps(acc[c][1], sum));
}

// The mask as decode_attention takes it: expanded to [R, H, 1, end] (undefined: none).
at::Tensor expand_mask(const c10::optional<at::Tensor> &mask, int64_t R, int64_t H, int64_t end) {
    if (!mask.has_value() || !mask->defined()) return at::Tensor();
    TORCH_CHECK(mask->scalar_type() == at::kBool,
                "harmonia.decode_attention: the mask must be boolean (True: attend), as SDPA's boolean masks");
    return mask->expand({R, H, 1, end});
}

// ROWS_INTERLEAVED: both attention kernels hand (row, head) pairs to threads rows first (i -> row
// i % R, head i / R), so that each thread gets a share of every row's heads (an equal share where
// its range of pairs is a multiple of R: two threads, two rows, an even head count). Row after row
// gave one thread the prompt's rows and the other guidance's, whose empty prompt is masked whole and
// costs little: in cross-attention one thread did nearly all the work. Each pair is computed alone,
// so the split changes no bit. Measured on an AMD EPYC (Zen 3, 2 threads; 10 s int4 takes at musicgen-small's
// size, three rounds of alternated processes, the better of two takes each): 8.47-8.60 s against
// 8.77-9.05 s.

// decode_attention over an int8 cache (keys uint8 in blocks, values int8 by position: see above).
at::Tensor decode_attention_int8(const at::Tensor &query, const at::Tensor &keys, const at::Tensor &values,
                                 int64_t end, double scale, const c10::optional<at::Tensor> &mask) {
    TORCH_CHECK(query.dim() == 4 && keys.dim() == 4 && values.dim() == 4 && query.size(2) == 1 &&
                    query.scalar_type() == at::kFloat && values.scalar_type() == at::kChar,
                "harmonia.decode_attention: query [rows, heads, 1, dim] float32; an int8 cache's keys uint8 "
                "[rows, heads, blocks, 16 x pad4(dim) + 64] and values int8 [rows, heads, length, pad4(dim) + 4]");
    const int64_t R = query.size(0), H = query.size(1), D = query.size(3);
    TORCH_CHECK(keys.size(0) == R && keys.size(1) == H && keys.size(3) == key_block_bytes(D) && keys.stride(3) == 1 &&
                    values.size(0) == R && values.size(1) == H && values.size(3) == padded(D) + 4 &&
                    values.stride(3) == 1 && D >= 1 && D <= 256 && end >= 1 && end <= values.size(2) &&
                    end <= keys.size(2) * KEY_BLOCK,
                "harmonia.decode_attention: an int8 cache must match the query (dim up to 256; keys in blocks of "
                "16 positions, 16 x pad4(dim) + 64 bytes; values pad4(dim) + 4 bytes a position), and 1 <= end <= "
                "its length");
    const at::Tensor m = expand_mask(mask, R, H, end);
    const at::Tensor q = query.contiguous();
    at::Tensor out = at::empty({R, H, 1, D}, q.options());
    const float *qp = q.data_ptr<float>();
    float *op = out.data_ptr<float>();
    const uint8_t *kp = keys.data_ptr<uint8_t>();
    const int8_t *vp = values.data_ptr<int8_t>();
    const bool *mp = m.defined() ? m.data_ptr<bool>() : nullptr;
    const float s = static_cast<float>(scale);
    const bool avx2 = integers_narrow();
    at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t stop) {
        std::vector<float> scores(static_cast<size_t>(end + KEY_BLOCK));
        for (int64_t i = begin; i < stop; i++) {
            const int64_t r = i % R, h = i / R, slot = r * H + h;  // (see ROWS_INTERLEAVED)
            const uint8_t *k = kp + r * keys.stride(0) + h * keys.stride(1);
            const int8_t *v = vp + r * values.stride(0) + h * values.stride(1);
            const bool *mr = mp ? mp + r * m.stride(0) + h * m.stride(1) : nullptr;
            const int64_t ms = mp ? m.stride(3) : 0;
            (avx2 ? FIXED_CHUNKS(attend_int8_8x2, D) : attend_int8)(qp + slot * D, k, v, end, D, keys.stride(2), values.stride(2), mr, ms, s,
                                                   scores.data(), op + slot * D);
        }
    });
    return out;
}

// x [rows, heads, P, dim] float32 (any strides) into positions [start, start + P) of an int8 cache:
// keys (uint8, in blocks) or values (int8, by position), as quantise_codes rounds them.
void store_int8(at::Tensor cache, const at::Tensor &x, int64_t start) {
    const bool keys = cache.scalar_type() == at::kByte;
    TORCH_CHECK((keys || cache.scalar_type() == at::kChar) && x.scalar_type() == at::kFloat && cache.dim() == 4 &&
                    x.dim() == 4 && cache.is_contiguous(),
                "harmonia.store_int8: a contiguous int8 cache (keys uint8, values int8) and float32 values "
                "[rows, heads, positions, dim]");
    const int64_t R = x.size(0), H = x.size(1), P = x.size(2), D = x.size(3), W = cache.size(3);
    const int64_t length = keys ? cache.size(2) * KEY_BLOCK : cache.size(2);
    TORCH_CHECK(cache.size(0) == R && cache.size(1) == H && W == (keys ? key_block_bytes(D) : padded(D) + 4) &&
                    D <= 256 && start >= 0 && start + P <= length,
                "harmonia.store_int8: the values must match the cache (rows, heads, dim) and fit in it from start");
    const float *xp = x.data_ptr<float>();
    uint8_t *cp = static_cast<uint8_t *>(cache.data_ptr());
    const int64_t L = cache.size(2);
    at::parallel_for(0, R * H * P, 256, [&](int64_t begin, int64_t stop) {
        int8_t codes[256];
        for (int64_t i = begin; i < stop; i++) {
            const int64_t r = i / (H * P), h = i / P % H, t = start + i % P;
            const float scale = quantise_codes(xp + r * x.stride(0) + h * x.stride(1) + (i % P) * x.stride(2), D,
                                               x.stride(3), codes);
            uint8_t *head = cp + (r * H + h) * L * W;
            if (keys) {  // byte t % 16 x 4 + d % 4 of group d / 4 in block t / 16, then the block's scales
                uint8_t *block = head + t / KEY_BLOCK * W;
                for (int64_t d = 0; d < padded(D); d++)
                    block[d / 4 * 64 + t % KEY_BLOCK * 4 + d % 4] = static_cast<uint8_t>(codes[d] + 128);
                std::memcpy(block + KEY_BLOCK * padded(D) + t % KEY_BLOCK * 4, &scale, 4);
            } else {
                uint8_t *row = head + t * W;
                std::memcpy(row, codes, static_cast<size_t>(padded(D)));
                std::memcpy(row + padded(D), &scale, 4);
            }
        }
    });
}

// Positions [0, end) of an int8 cache as float32 [rows, heads, end, dim]: code x scale, one
// rounded product each (what the cache means: a prefill's SDPA reads these).
at::Tensor int8_values(const at::Tensor &cache, int64_t end, int64_t dim) {
    const bool keys = cache.scalar_type() == at::kByte;
    TORCH_CHECK((keys || cache.scalar_type() == at::kChar) && cache.dim() == 4 && cache.is_contiguous() && dim >= 1 &&
                    cache.size(3) == (keys ? key_block_bytes(dim) : padded(dim) + 4) && end >= 0 &&
                    end <= (keys ? cache.size(2) * KEY_BLOCK : cache.size(2)),
                "harmonia.int8_values: a contiguous int8 cache of this dim (keys uint8, values int8) and 0 <= end "
                "<= its length");
    const int64_t R = cache.size(0), H = cache.size(1), L = cache.size(2), W = cache.size(3);
    at::Tensor out = at::empty({R, H, end, dim}, cache.options().dtype(at::kFloat));
    const uint8_t *cp = static_cast<const uint8_t *>(cache.data_ptr());
    float *op = out.data_ptr<float>();
    at::parallel_for(0, R * H * end, 256, [&](int64_t begin, int64_t stop) {
        for (int64_t i = begin; i < stop; i++) {
            const int64_t t = i % end;
            const uint8_t *head = cp + i / end * L * W;
            float scale;
            if (keys) {
                const uint8_t *block = head + t / KEY_BLOCK * W;
                std::memcpy(&scale, block + KEY_BLOCK * padded(dim) + t % KEY_BLOCK * 4, 4);
                for (int64_t d = 0; d < dim; d++)
                    op[i * dim + d] = static_cast<float>(block[d / 4 * 64 + t % KEY_BLOCK * 4 + d % 4] - 128) * scale;
            } else {
                const int8_t *row = reinterpret_cast<const int8_t *>(head + t * W);
                scale = row_scale(row, dim);
                for (int64_t d = 0; d < dim; d++) op[i * dim + d] = static_cast<float>(row[d]) * scale;
            }
        }
    });
    return out;
}

at::Tensor decode_attention(const at::Tensor &query, const at::Tensor &keys, const at::Tensor &values, int64_t end,
                            double scale, const c10::optional<at::Tensor> &mask) {
    check_form("decode_attention");
    TORCH_CHECK(query.dim() == 4 && keys.dim() == 4 && values.dim() == 4 && query.size(2) == 1,
                "harmonia.decode_attention: query [rows, heads, 1, dim], keys and values [rows, heads, length, dim]");
    const int64_t R = query.size(0), H = query.size(1), D = query.size(3);
    if (keys.scalar_type() == at::kByte) return decode_attention_int8(query, keys, values, end, scale, mask);
    TORCH_CHECK(query.scalar_type() == at::kFloat && keys.scalar_type() == values.scalar_type() &&
                    (keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kBFloat16),
                "harmonia.decode_attention: a float32 query; float32 or bfloat16 keys and values (or an int8 "
                "cache: uint8 keys, int8 values)");
    TORCH_CHECK(keys.size(0) == R && keys.size(1) == H && keys.size(3) == D && values.sizes() == keys.sizes() &&
                    keys.stride(3) == 1 && values.stride(3) == 1 && D >= 1 && D <= 256 && end >= 1 &&
                    end <= keys.size(2),
                "harmonia.decode_attention: keys and values must match the query (dim up to 256, unit stride), "
                "and 1 <= end <= their length");
    const at::Tensor m = expand_mask(mask, R, H, end);
    const at::Tensor q = query.contiguous();
    at::Tensor out = at::empty({R, H, 1, D}, q.options());
    const bool bf16 = keys.scalar_type() == at::kBFloat16;
    const int64_t bytes = bf16 ? 2 : 4;
    const float *qp = q.data_ptr<float>();
    float *op = out.data_ptr<float>();
    const char *kp = static_cast<const char *>(keys.data_ptr()), *vp = static_cast<const char *>(values.data_ptr());
    const bool *mp = m.defined() ? m.data_ptr<bool>() : nullptr;
    const float s = static_cast<float>(scale);
    at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t stop) {
        std::vector<float> scores(static_cast<size_t>(end + 16));
        for (int64_t i = begin; i < stop; i++) {
            const int64_t r = i % R, h = i / R, slot = r * H + h;  // (see ROWS_INTERLEAVED)
            const char *k = kp + (r * keys.stride(0) + h * keys.stride(1)) * bytes;
            const char *v = vp + (r * values.stride(0) + h * values.stride(1)) * bytes;
            const bool *mr = mp ? mp + r * m.stride(0) + h * m.stride(1) : nullptr;
            const int64_t ms = mp ? m.stride(3) : 0;
            const auto one = narrow.load(std::memory_order_relaxed)
                                 ? (bf16 ? FIXED_CHUNKS(attend_one8x2, D, true) : FIXED_CHUNKS(attend_one8x2, D, false))
                                 : (bf16 ? attend_one<true> : attend_one<false>);
            one(qp + slot * D, k, v, end, D, keys.stride(2), values.stride(2), mr, ms, s, scores.data(), op + slot * D);
        }
    });
    return out;
}

// ---- A decoding step's layers in one call (decode_layers) ----

// A layer's parameters in decode_layers' list: its three norms' weights and biases (self-attention's,
// cross-attention's, the feed-forward's), then for each of its eight products (q, k, v, out, cross
// q, cross out, fc1, fc2) four tensors: packed weights, scales, int8_linear's column sums (empty for
// int4_linear) and the bias (empty: none).
constexpr int64_t NORM_PARAMS = 6, PRODUCTS = 8, PRODUCT_PARAMS = 4, LAYER_PARAMS = NORM_PARAMS + PRODUCTS * PRODUCT_PARAMS;

// decode_layers: MusicGen's decoder layers for one position (a decoding step), the way the
// TorchScript layer (_Layer.forward in harmonia/engines/decoding.py, with Harmonia's attention and
// its int8 or int4 products) runs them: the same functions on the same values in the same order
// (layer_norm, the products, the keys and values stored, decode_attention, the residual adds,
// GELU), so the same bits. What goes is the interpreter between them (the profiler counts about
// 2,700 calls a step at musicgen-small's size, most of them views and the calls inside layer_norm).
// hidden: [rows, 1, width] float32; keys, values: each layer's cache (int8, as store_int8 keeps it,
// or float32/bfloat16, stored by copy_ as the TorchScript slice assignment does); cross_keys,
// cross_values: the prompt's, with cross_mask; params: LAYER_PARAMS a layer; outs: each product's
// out_features (int4_linear's); head_dim, scaling: attention's; eps: the norms'. Returns the last
// layer's hidden states (before the final norm).
at::Tensor decode_layers(const at::Tensor &hidden_in, at::TensorList keys, at::TensorList values, int64_t start,
                         at::TensorList cross_keys, at::TensorList cross_values,
                         const c10::optional<at::Tensor> &cross_mask, at::TensorList params, at::IntArrayRef outs,
                         int64_t head_dim, double scaling, double eps) {
    const int64_t L = static_cast<int64_t>(keys.size());
    TORCH_CHECK(L >= 1, "harmonia.decode_layers: no layers (empty lists of keys and values)");
    TORCH_CHECK(hidden_in.dim() == 3 && hidden_in.size(1) == 1 && hidden_in.scalar_type() == at::kFloat,
                "harmonia.decode_layers: hidden must be float32 [rows, 1, width] (one position: a decoding step)");
    TORCH_CHECK(static_cast<int64_t>(values.size()) == L && static_cast<int64_t>(cross_keys.size()) == L &&
                    static_cast<int64_t>(cross_values.size()) == L &&
                    static_cast<int64_t>(params.size()) == L * LAYER_PARAMS &&
                    static_cast<int64_t>(outs.size()) == L * PRODUCTS,
                "harmonia.decode_layers: each layer needs its keys, values, prompt keys and values, ", LAYER_PARAMS,
                " parameters and ", PRODUCTS, " out_features");
    const int64_t R = hidden_in.size(0), C = hidden_in.size(2);
    TORCH_CHECK(head_dim >= 1 && C % head_dim == 0, "harmonia.decode_layers: the width must split into heads of head_dim");
    TORCH_CHECK(start >= 0, "harmonia.decode_layers: start must be a position (>= 0)");
    const int64_t D = head_dim;
    for (int64_t l = 0; l < L; l++)
        for (int64_t j = 0; j < PRODUCTS; j++) {
            const at::Tensor &packed = params[l * LAYER_PARAMS + NORM_PARAMS + j * PRODUCT_PARAMS];
            TORCH_CHECK(packed.scalar_type() == at::kChar || packed.scalar_type() == at::kByte,
                        "harmonia.decode_layers: every product must be int8_linear's (int8 weights) or "
                        "int4_linear's (uint8)");
        }
    const auto product = [&](const at::Tensor &x, int64_t l, int64_t j) {
        const at::Tensor *p = params.data() + l * LAYER_PARAMS + NORM_PARAMS + j * PRODUCT_PARAMS;
        const c10::optional<at::Tensor> bias = p[3].numel() ? c10::optional<at::Tensor>(p[3]) : c10::nullopt;
        if (p[0].scalar_type() == at::kChar) return int8_linear(x, p[0], p[1], p[2], bias);
        return int4_linear(x, p[0], p[1], bias, outs[l * PRODUCTS + j]);
    };
    // [rows, 1, width] -> [rows, heads, 1, D] (a view), and back (_Layer's view-transpose and _merge)
    const auto split = [&](const at::Tensor &y) { return y.view({R, 1, -1, D}).transpose(1, 2); };
    const auto merge = [&](const at::Tensor &a) { return a.transpose(1, 2).contiguous().reshape({R, 1, -1}).contiguous(); };
    const auto store = [&](const at::Tensor &cache, const at::Tensor &window) {
        if (cache.scalar_type() == at::kChar || cache.scalar_type() == at::kByte)
            store_int8(cache, window, start);
        else
            cache.slice(2, start, start + 1).copy_(window);
    };
    const c10::optional<at::Tensor> none;
    at::Tensor hidden = hidden_in;
    for (int64_t l = 0; l < L; l++) {
        const at::Tensor *norm = params.data() + l * LAYER_PARAMS;
        at::Tensor normed = at::layer_norm(hidden, {C}, norm[0], norm[1], eps);
        const at::Tensor query = split(product(normed, l, 0));
        store(keys[l], split(product(normed, l, 1)));
        store(values[l], split(product(normed, l, 2)));
        hidden = hidden + product(merge(decode_attention(query, keys[l], values[l], start + 1, scaling, none)), l, 3);
        normed = at::layer_norm(hidden, {C}, norm[2], norm[3], eps);
        const at::Tensor cross = split(product(normed, l, 4));
        hidden = hidden + product(merge(decode_attention(cross, cross_keys[l], cross_values[l], cross_keys[l].size(2),
                                                         scaling, cross_mask)),
                                  l, 5);
        hidden = hidden + product(at::gelu(product(at::layer_norm(hidden, {C}, norm[4], norm[5], eps), l, 6)), l, 7);
    }
    return hidden;
}

// The form the integer products and attention over an int8 cache run now (tests check it).
std::string integer_form() { return integers_narrow() ? "avx2" : "avx512"; }

// Set which form of the products runs ("avx512" or "avx2"); returns the one before.
// The flag is the process's: for tests and benchmarks, not for threads to flip while others compute.
std::string use_form(const std::string &form) {
    TORCH_CHECK(form == "avx512" || form == "avx2", "harmonia.use_form: avx512 or avx2, got ", form);
    TORCH_CHECK(form == "avx2" ? runs_avx2() : runs_avx512(), "harmonia.use_form: this CPU cannot run the ",
                form, " form");
    return narrow.exchange(form == "avx2") ? "avx2" : "avx512";
}

}  // namespace

#undef FIXED_CHUNKS
#undef HARMONIA_AVX2

TORCH_LIBRARY(harmonia, m) {
    m.def("use_form(str form) -> str", &use_form);
    m.def("integer_form() -> str", &integer_form);
    m.def("int8_linear(Tensor x, Tensor packed, Tensor scales, Tensor colsum, Tensor? bias) -> Tensor");
    m.def("int4_linear(Tensor x, Tensor packed, Tensor scales, Tensor? bias, int out_features) -> Tensor");
    m.def("rows_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
    m.def("decode_attention(Tensor query, Tensor keys, Tensor values, int end, float scale, Tensor? mask) -> Tensor");
    m.def("store_int8(Tensor(a!) cache, Tensor x, int start) -> ()");
    m.def("int8_values(Tensor cache, int end, int dim) -> Tensor");
    m.def(
        "decode_layers(Tensor hidden, Tensor(a!)[] keys, Tensor(b!)[] values, int start, Tensor[] cross_keys, "
        "Tensor[] cross_values, Tensor? cross_mask, Tensor[] params, int[] outs, int head_dim, float scaling, float eps) "
        "-> Tensor");
}
TORCH_LIBRARY_IMPL(harmonia, CPU, m) {
    m.impl("int8_linear", &int8_linear);
    m.impl("int4_linear", &int4_linear);
    m.impl("rows_linear", &rows_linear);
    m.impl("decode_attention", &decode_attention);
    m.impl("store_int8", &store_int8);
    m.impl("int8_values", &int8_values);
    m.impl("decode_layers", &decode_layers);
}
