/*
 * y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for bf16 operands and small M (1..8 on AVX512,
 * up to MAX_ROWS on AMX).
 *
 * Decode-time linears are memory bound: every weight byte is read once per call, so the
 * kernel streams W row-block by row-block, reuses each 64-byte weight load for all M
 * activation rows (which stay in L1) and accumulates in fp32 with AVX512-BF16 dot products.
 * Each tile keeps 16 zmm accumulators (M * R <= 16); a shuffle tree then turns them into one
 * vector of 16 sums, so the horizontal reduction costs ~3 shuffles/adds per output instead of
 * a full reduce per output. The result is rounded to bf16 once (round-to-nearest-even), as
 * F.linear does.
 *
 * Weights kept in GGUF's Q8_0 form (the tied lm_head) run the same tiles, each block expanded
 * in registers exactly as the loader dequantizes it. Weights in Q4_1 form (every layer linear
 * of the embedded model) run an int8 kernel instead: x is quantized per block of 32 and the
 * products are integer dot products (see "Q4_1 weights against int8 activations" below).
 *
 * No torch headers here (ops.cpp registers the operators): this file compiles in about a
 * second. The instruction sets come from the target pragma below, not from global flags, so
 * the rest of the library stays runnable on CPUs without them; every header is included before
 * it, so no inline function of a header is compiled for AVX512 by this file.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef TF_WITH_AMX
#include <sys/syscall.h>
#include <unistd.h>
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,fma,amx-tile,amx-bf16")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,fma")
#endif

#include "kernels.h"

typedef uint16_t bf16_t;

#define AI static inline __attribute__((always_inline))

#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
/* Software prefetch: each weight line is prefetched this many bytes of W ahead of its use
 * (rounded to whole tiles: the same column, some tiles further down). Hardware prefetchers
 * restart at every 4 KiB page and do not keep up with a cold stream on their own. */
#ifndef PF_BYTES
#define PF_BYTES (32 * 1024)
#endif

/* Lane i of the result = horizontal sum of a[i]. The tree naturally yields lane 4j+i =
 * sum(input[4i+j]), so inputs are read in transposed order to land in natural order. */
#define TR(s) ((((s) & 3) << 2) | ((s) >> 2))
AI __m512 reduce16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++) {
        __m512 x = a[TR(2 * i)], y = a[TR(2 * i + 1)];
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}

/* The tile's 16 sums (lane s = out[s / R, n0 + s % R]) plus bias, rounded once, stored. */
AI void store_tile(const int M, const int R, __m512 sum, int nv, const bf16_t *bias, bf16_t *out,
                   int64_t ldo, int64_t n0) {
    if (bias) {
        /* lane s needs bias[n0 + s % R]: load the tile's biases, widen bf16 -> fp32, spread */
        __m256i b16 = _mm256_maskz_loadu_epi16((__mmask16)((1u << nv) - 1), bias + n0);
        __m512 bf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b16), 16));
        int idx[16];
        for (int s = 0; s < 16; s++) idx[s] = s % R;
        sum = _mm512_add_ps(sum, _mm512_permutexvar_ps(_mm512_loadu_si512(idx), bf));
    }
    __m256i o = (__m256i)_mm512_cvtneps_pbh(sum);
    if (M == 1 && R == 16 && nv == 16) {
        _mm256_storeu_si256((__m256i *)(out + n0), o);
    } else {
        bf16_t tmp[16];
        _mm256_storeu_si256((__m256i *)tmp, o);
        for (int m = 0; m < M; m++) memcpy(out + m * ldo + n0, tmp + m * R, (size_t)nv * 2);
    }
}

/* One tile: rows n0 .. n0+nv-1 of W (nv <= R) against all M activation rows.
 * Accumulator s = m * R + r holds out[m, n0 + r]. Rows past nv re-read row n0+nv-1 (kept in
 * bounds, result discarded) so the hot loop has no per-row branches. */
AI void tile(const int M, const int R, const bf16_t *x, int64_t ldx, const bf16_t *w, int64_t K,
             int64_t n0, int nv, const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t pf_bytes) {
    __m512 acc[16];
    for (int s = 0; s < 16; s++) acc[s] = _mm512_setzero_ps();
    const bf16_t *wr[16];
    for (int r = 0; r < R; r++) wr[r] = w + (n0 + (r < nv ? r : nv - 1)) * K;

    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh xv[8];
        for (int m = 0; m < M; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
        for (int r = 0; r < R; r++) {
            const char *p = (const char *)(wr[r] + k);
            if (pf_bytes) _mm_prefetch(p + pf_bytes, PF_HINT);
            __m512bh wv = (__m512bh)_mm512_loadu_si512(p);
            for (int m = 0; m < M; m++)
                acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], wv, xv[m]);
        }
    }
    if (k < K) { /* K % 32 tail: masked-out lanes load as zero and add nothing */
        const __mmask32 km = (__mmask32)((1ull << (K - k)) - 1);
        __m512bh xv[8];
        for (int m = 0; m < M; m++) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(km, x + m * ldx + k);
        for (int r = 0; r < R; r++) {
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(km, wr[r] + k);
            for (int m = 0; m < M; m++)
                acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], wv, xv[m]);
        }
    }

    store_tile(M, R, reduce16(acc), nv, bias, out, ldo, n0);
}

/* Rows [nb, ne) of W for one M, R rows per tile; W has N rows in all. M and R are
 * compile-time constants in each instantiation, so the accumulators live in registers. */
#define DEFINE_RUN(M_, R_)                                                                      \
    static void run_m##M_(const bf16_t *x, int64_t ldx, const bf16_t *w, int64_t N, int64_t K,  \
                          const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) { \
        const int64_t tile_bytes = (int64_t)(R_) * K * 2;                                       \
        const int64_t pf_tiles = (PF_BYTES + tile_bytes - 1) / tile_bytes;                      \
        const int64_t pf = pf_tiles * tile_bytes;                                               \
        int64_t n0 = nb;                                                                        \
        /* prefetch while the rows it touches exist (past this chunk is fine: still W) */       \
        for (; n0 + (R_) <= ne && n0 + (pf_tiles + 1) * (R_) <= N; n0 += (R_))                   \
            tile(M_, R_, x, ldx, w, K, n0, R_, bias, out, ldo, pf);                             \
        for (; n0 + (R_) <= ne; n0 += (R_))                                                     \
            tile(M_, R_, x, ldx, w, K, n0, R_, bias, out, ldo, 0);                              \
        if (n0 < ne) tile(M_, R_, x, ldx, w, K, n0, (int)(ne - n0), bias, out, ldo, 0);         \
    }

/* R = rows of W per tile: as many as fit 16 accumulators. */
DEFINE_RUN(1, 16)
DEFINE_RUN(2, 8)
DEFINE_RUN(3, 5)
DEFINE_RUN(4, 4)
DEFINE_RUN(5, 3)
DEFINE_RUN(6, 2)
DEFINE_RUN(7, 2)
DEFINE_RUN(8, 2)

static const int ROWS[9] = {0, 16, 8, 5, 4, 3, 2, 2, 2};

typedef void (*run_fn)(const bf16_t *, int64_t, const bf16_t *, int64_t, int64_t, const bf16_t *,
                       bf16_t *, int64_t, int64_t, int64_t);
static const run_fn RUNS[9] = {0, run_m1, run_m2, run_m3, run_m4, run_m5, run_m6, run_m7, run_m8};

/* The 32 bf16 weights of one Q8_0 block (GGUF: per 32 weights a scale d and 32 int8 codes q,
 * w = d*q): d*q is exact in fp32 (11 x 8 significant bits), then bf16, round-to-nearest-even,
 * exactly the loader's float32 dequantization cast to bf16. */
AI __m512bh q8_block(const int8_t *codes, const float *d) {
    const __m512 s = _mm512_set1_ps(d[0]);
    const __m512 lo = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)codes))), s);
    const __m512 hi = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(codes + 16)))),
        s);
    return _mm512_cvtne2ps_pbh(hi, lo);
}

/* `tile` on Q8_0 rows: the same accumulators, dot products and order. */
AI void tile_q8(const int M, const int R, const bf16_t *x, int64_t ldx, const uint8_t *codes,
                const float *dm, int64_t K, int64_t n0, int nv, const bf16_t *bias, bf16_t *out,
                int64_t ldo, int64_t pf) {
    __m512 acc[16];
    for (int s = 0; s < 16; s++) acc[s] = _mm512_setzero_ps();
    const int64_t nb = K / 32;
    const uint8_t *cr[16];
    const float *dr[16];
    for (int r = 0; r < R; r++) {
        const int64_t n = n0 + (r < nv ? r : nv - 1);
        cr[r] = codes + n * nb * 32;
        dr[r] = dm + n * nb;
    }
    /* The tile's codes and scales are two contiguous regions (R rows each), consumed at
     * R * 32 and R * 4 bytes per block step: prefetch both `pf` tiles ahead, at the same
     * rate (rows are short, so the hardware prefetchers never lock on to them). */
    const char *pc = (const char *)(codes + n0 * nb * 32) + pf * nb * 32;
    const char *pd = (const char *)(dm + n0 * nb) + pf * nb * 4;
    for (int64_t b = 0; b < nb; b++) {
        if (pf) {
            for (int64_t off = 0; off < R * 32; off += 64) _mm_prefetch(pc + b * R * 32 + off, PF_HINT);
            _mm_prefetch(pd + b * R * 4, PF_HINT);
        }
        __m512bh xv[16];
        for (int m = 0; m < M; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * ldx + 32 * b);
        for (int r = 0; r < R; r++) {
            const __m512bh wv = q8_block((const int8_t *)cr[r] + 32 * b, dr[r] + b);
            for (int m = 0; m < M; m++)
                acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], wv, xv[m]);
        }
    }
    store_tile(M, R, reduce16(acc), nv, bias, out, ldo, n0);
}

/* R for Q8_0 rows: 8 rows per tile at M = 1 (16 measured slower: the expansion needs
 * registers too); accumulators of different rows never mix, so R does not change any result. */
#ifndef PF_ROWS_Q8
#define PF_ROWS_Q8 64 /* prefetch distance in rows of W */
#endif
#define DEFINE_RUN_Q8(M_, R_)                                                                   \
    static void run_q8_m##M_(const bf16_t *x, int64_t ldx, const uint8_t *codes,                \
                             const float *dm, int64_t N, int64_t K, const bf16_t *bias,         \
                             bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) {                \
        const int64_t pf = (PF_ROWS_Q8 + (R_) - 1) / (R_) * (R_);                               \
        int64_t n0 = nb;                                                                        \
        /* prefetch while the rows it touches exist */                                          \
        for (; n0 + (R_) <= ne && n0 + pf + (R_) <= N; n0 += (R_))                              \
            tile_q8(M_, R_, x, ldx, codes, dm, K, n0, R_, bias, out, ldo, pf);                  \
        for (; n0 + (R_) <= ne; n0 += (R_))                                                     \
            tile_q8(M_, R_, x, ldx, codes, dm, K, n0, R_, bias, out, ldo, 0);                   \
        if (n0 < ne)                                                                            \
            tile_q8(M_, R_, x, ldx, codes, dm, K, n0, (int)(ne - n0), bias, out, ldo, 0);       \
    }
/* Rows of x one pass of the quantized tiles takes; more rows run in passes of this many. */
#define Q_PASS 16
/* 9..16 rows: one W row per tile, so each block is expanded once for up to 16 rows of x (two
 * 8-row passes would expand it twice); the x vectors then come from L1 as memory operands. */
static const int ROWS_Q8[Q_PASS + 1] = {0, 8, 8, 5, 4, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1};
DEFINE_RUN_Q8(1, 8) DEFINE_RUN_Q8(2, 8) DEFINE_RUN_Q8(3, 5) DEFINE_RUN_Q8(4, 4)
DEFINE_RUN_Q8(5, 3) DEFINE_RUN_Q8(6, 2) DEFINE_RUN_Q8(7, 2) DEFINE_RUN_Q8(8, 2)
DEFINE_RUN_Q8(9, 1) DEFINE_RUN_Q8(10, 1) DEFINE_RUN_Q8(11, 1) DEFINE_RUN_Q8(12, 1)
DEFINE_RUN_Q8(13, 1) DEFINE_RUN_Q8(14, 1) DEFINE_RUN_Q8(15, 1) DEFINE_RUN_Q8(16, 1)
/* The runs for 1 .. Q_PASS rows of x, indexed by the row count. */
#define RUNS_BY_ROWS(P)                                                                         \
    {0,       P##_m1,  P##_m2,  P##_m3,  P##_m4,  P##_m5,  P##_m6,  P##_m7,  P##_m8,            \
     P##_m9,  P##_m10, P##_m11, P##_m12, P##_m13, P##_m14, P##_m15, P##_m16}
typedef void (*run_q8_fn)(const bf16_t *, int64_t, const uint8_t *, const float *, int64_t,
                          int64_t, const bf16_t *, bf16_t *, int64_t, int64_t, int64_t);
static const run_q8_fn run_q8_runs[Q_PASS + 1] = RUNS_BY_ROWS(run_q8);

/* ---------------------------------------------------------------------------------------------
 * Q4_1 weights against int8 activations (the scheme llama.cpp runs on Q4_1: its Q8_1 x).
 * Q4_1 keeps per block of 32 weights a scale d, a minimum m and 4-bit codes q: w = d*q + m.
 * Each row of x is quantized per block: dx = max|x| / 127, qx = x / dx rounded to the nearest
 * (even) int8, and then
 *     w . x = sum over blocks of d * dx * (q . qx) + m * sx,   sx = dx * sum(qx),
 * where q . qx is an exact integer sum that AVX512-VNNI computes 64 products at a time
 * (vpdpbusd: unsigned bytes times signed bytes, summed in groups of 4 into 32-bit lanes).
 * The bf16 route instead expands every code to bf16 and was bound by that expansion (~10 vector
 * operations per block); this is ~1.5 per block at one row, so a decode step is bound by its
 * memory reads. The results are not the bf16 products' (x is rounded to 8 bits per block), but
 * each row's outputs depend on that row alone, whatever M.
 *
 * Layout (built at load time, kernels/q4_linear.py), per row of W: whole groups of 16 blocks,
 * then a tail of t = nb % 16 blocks. A group's codes are 4 chunks of 64 bytes; lane b (4 bytes)
 * of chunk j holds bytes 4j .. 4j+3 of block b's 16 code bytes, whose low nibbles are codes
 * 4j .. 4j+3 and high nibbles codes 4j+16 .. 4j+19 (GGUF's order). So each 32-bit lane of a
 * group's dot products belongs to one block, and its scale is one float of d, loaded 16 at a
 * time. The tail keeps GGUF's order (16 code bytes per block): lanes 4k .. 4k+3 of a vector of
 * 4 blocks belong to block k, and its scales are spread to them with a permute. (The embedded
 * model's K = 576 is 18 blocks: one group and a tail of 2.) Scales: d of all blocks of the
 * row, then m: dm [N, 2, K/32] fp32.
 * Quantized x, per row: per group, 8 vectors of 64 bytes (chunk j's activations for the low
 * codes, then for the high ones), then dx and sx per lane (16 floats each); per tail vector of
 * up to 4 blocks, the activations for the low codes (16 per block), for the high ones, then dx
 * and sx per lane (sx on one lane per block). Zero where no block is.
 * ------------------------------------------------------------------------------------------- */
#define QX_GROUP_BYTES (8 * 64 + 2 * 64)
#define QX_TAIL_BYTES (2 * 64 + 2 * 64)

static inline int64_t qx_row_bytes(int64_t K) {
    const int64_t nb = K / 32;
    return nb / 16 * QX_GROUP_BYTES + (nb % 16 + 3) / 4 * QX_TAIL_BYTES;
}

/* Row x[0, K) -> one quantized row of qx_row_bytes(K) bytes (layout above). */
static void quantize_row_q8(const bf16_t *x, int64_t K, int8_t *qrow) {
    const int64_t nb = K / 32, full = nb / 16 * 16;
    memset(qrow, 0, (size_t)qx_row_bytes(K));
    for (int64_t b = 0; b < nb; b++) {
        const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + 32 * b))), 16));
        const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + 32 * b + 16))), 16));
        const float amax =
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        const float dx = amax / 127.0f, id = dx != 0.0f ? 1.0f / dx : 0.0f;
        /* cvtps_epi32 rounds to nearest even (the default MXCSR mode) */
        const __m512i ql = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(id)));
        const __m512i qh = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(id)));
        const float sx = dx * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(ql, qh));
        int8_t l8[16], h8[16];
        _mm_storeu_si128((__m128i *)l8, _mm512_cvtsepi32_epi8(ql));
        _mm_storeu_si128((__m128i *)h8, _mm512_cvtsepi32_epi8(qh));
        if (b < full) {
            int8_t *g = qrow + b / 16 * QX_GROUP_BYTES;
            const int lane = (int)(b % 16);
            for (int j = 0; j < 4; j++) {
                memcpy(g + 128 * j + 4 * lane, l8 + 4 * j, 4);
                memcpy(g + 128 * j + 64 + 4 * lane, h8 + 4 * j, 4);
            }
            float *f = (float *)(g + 512);
            f[lane] = dx;
            f[16 + lane] = sx;
        } else {
            const int64_t k = b - full;
            int8_t *v = qrow + full / 16 * QX_GROUP_BYTES + k / 4 * QX_TAIL_BYTES;
            const int slot = (int)(k % 4);
            memcpy(v + 16 * slot, l8, 16);
            memcpy(v + 64 + 16 * slot, h8, 16);
            float *f = (float *)(v + 128);
            for (int l = 0; l < 4; l++) f[4 * slot + l] = dx;
            f[16 + 4 * slot] = sx;
        }
    }
}

/* One tile: R rows of W against M quantized rows of x (row m at qx + m * ldq bytes).
 * Accumulator s = m * R + r; its lanes sum their blocks' terms. */
AI void tile_q4(const int M, const int R, const int8_t *qx, int64_t ldq, const uint8_t *codes,
                const float *dm, int64_t K, int64_t n0, int nv, const bf16_t *bias,
                bf16_t *out, int64_t ldo) {
    __m512 acc[16];
    for (int s = 0; s < 16; s++) acc[s] = _mm512_setzero_ps();
    const int64_t nb = K / 32, row_bytes = nb * 16, full = nb / 16 * 16;
    const uint8_t *cr[16];
    const float *dr[16];
    for (int r = 0; r < R; r++) {
        const int64_t n = n0 + (r < nv ? r : nv - 1);
        cr[r] = codes + n * row_bytes;
        dr[r] = dm + n * nb * 2;
    }
    const __m512i nib = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < full; b += 16) {
        for (int r = 0; r < R; r++) {
            __m512i lo[4], hi[4];
            for (int j = 0; j < 4; j++) {
                const __m512i c = _mm512_loadu_si512(cr[r] + 16 * b + 64 * j);
                lo[j] = _mm512_and_si512(c, nib);
                hi[j] = _mm512_and_si512(_mm512_srli_epi16(c, 4), nib);
            }
            const __m512 d = _mm512_loadu_ps(dr[r] + b), mn = _mm512_loadu_ps(dr[r] + nb + b);
            for (int m = 0; m < M; m++) {
                const int8_t *g = qx + m * ldq + b / 16 * QX_GROUP_BYTES;
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
                for (int j = 0; j < 4; j++) {
                    s0 = _mm512_dpbusd_epi32(s0, lo[j], _mm512_loadu_si512(g + 128 * j));
                    s1 = _mm512_dpbusd_epi32(s1, hi[j], _mm512_loadu_si512(g + 128 * j + 64));
                }
                const __m512 dx = _mm512_loadu_ps((const float *)(g + 512));
                const __m512 sx = _mm512_loadu_ps((const float *)(g + 576));
                const __m512 q = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                const __m512 a = _mm512_fmadd_ps(q, _mm512_mul_ps(d, dx), acc[m * R + r]);
                acc[m * R + r] = _mm512_fmadd_ps(mn, sx, a);
            }
        }
    }
    /* the tail, up to 4 blocks per vector: lanes 4k .. 4k+3 are block k's */
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int64_t b = full; b < nb; b += 4) {
        const int64_t t = nb - b < 4 ? nb - b : 4;
        const __mmask64 cm = t == 4 ? ~(__mmask64)0 : (((__mmask64)1 << (16 * t)) - 1);
        const __mmask16 fm = (__mmask16)((1u << t) - 1);
        const int8_t *v0 = qx + full / 16 * QX_GROUP_BYTES + (b - full) / 4 * QX_TAIL_BYTES;
        for (int r = 0; r < R; r++) {
            const __m512i c = _mm512_maskz_loadu_epi8(cm, cr[r] + 16 * b);
            const __m512i lo = _mm512_and_si512(c, nib);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), nib);
            const __m512 d = _mm512_permutexvar_ps(spread, _mm512_maskz_loadu_ps(fm, dr[r] + b));
            const __m512 mn =
                _mm512_permutexvar_ps(spread, _mm512_maskz_loadu_ps(fm, dr[r] + nb + b));
            for (int m = 0; m < M; m++) {
                const int8_t *v = v0 + m * ldq;
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(v));
                s = _mm512_dpbusd_epi32(s, hi, _mm512_loadu_si512(v + 64));
                const __m512 dx = _mm512_loadu_ps((const float *)(v + 128));
                const __m512 sx = _mm512_loadu_ps((const float *)(v + 192));
                const __m512 a =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, dx), acc[m * R + r]);
                acc[m * R + r] = _mm512_fmadd_ps(mn, sx, a);
            }
        }
    }
    store_tile(M, R, reduce16(acc), nv, bias, out, ldo, n0);
}

/* No software prefetch here: each tile reads its rows front to back and the tiles follow each
 * other in memory, which the hardware prefetchers follow (prefetching as the Q8_0 tiles do
 * measured slower). */
#define DEFINE_RUN_Q4(M_, R_)                                                                   \
    static void run_q4_m##M_(const int8_t *qx, int64_t ldq, const uint8_t *codes,               \
                             const float *dm, int64_t N, int64_t K, const bf16_t *bias,         \
                             bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) {                \
        (void)N;                                                                                \
        for (int64_t n0 = nb; n0 < ne; n0 += (R_))                                              \
            tile_q4(M_, R_, qx, ldq, codes, dm, K, n0, ne - n0 < (R_) ? (int)(ne - n0) : (R_),  \
                    bias, out, ldo);                                                            \
    }
/* R for Q4_1 rows, measured on the embedded model's linears (tools/q4_decode_check.py, 2-core
 * EPYC): with one row the loads bound the kernel and R hardly matters; from 3 rows, one W row
 * per tile was fastest (its 8 expanded code vectors stay in registers for all M rows; with
 * more W rows per tile they spilled: 8 rows took 9.0 ms with R = 2 and 6.5 with R = 1). */
static const int ROWS_Q4[Q_PASS + 1] = {0, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
DEFINE_RUN_Q4(1, 4) DEFINE_RUN_Q4(2, 2) DEFINE_RUN_Q4(3, 1) DEFINE_RUN_Q4(4, 1)
DEFINE_RUN_Q4(5, 1) DEFINE_RUN_Q4(6, 1) DEFINE_RUN_Q4(7, 1) DEFINE_RUN_Q4(8, 1)
DEFINE_RUN_Q4(9, 1) DEFINE_RUN_Q4(10, 1) DEFINE_RUN_Q4(11, 1) DEFINE_RUN_Q4(12, 1)
DEFINE_RUN_Q4(13, 1) DEFINE_RUN_Q4(14, 1) DEFINE_RUN_Q4(15, 1) DEFINE_RUN_Q4(16, 1)
typedef void (*run_q4_fn)(const int8_t *, int64_t, const uint8_t *, const float *, int64_t,
                          int64_t, const bf16_t *, bf16_t *, int64_t, int64_t, int64_t);
static const run_q4_fn run_q4_runs[Q_PASS + 1] = RUNS_BY_ROWS(run_q4);

/* ---------------------------------------------------------------------------------------------
 * AMX path. With several activation rows the AVX512 kernel becomes compute bound (M dot
 * products per weight load), so for larger M the W tile is fed to TDPBF16PS instead:
 * A = 16 rows x 32 k of W, loaded straight from its row-major layout (no weight repacking);
 * B = the matching 32 k of x, repacked once per call into VNNI pairs (16 rows x M pairs);
 * C = 16 x M fp32 accumulators. Needs K % 32 == 0; leftover rows (N % 16) go to AVX512.
 * ------------------------------------------------------------------------------------------- */
#ifdef TF_WITH_AMX
/* Linux hands out AMX state only on request (once per process). */
int tf_amx_init(void) {
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 0 : -1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg_t;

/* Tile 0: C (16 rows of W x M fp32), tile 1: B (16 k-pairs x M pairs of x), tile 2: A (16
 * rows of W x 32 k). */
static void amx_config(int M) {
    tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 16; cfg.colsb[0] = (uint16_t)(M * 4);
    cfg.rows[1] = 16; cfg.colsb[1] = (uint16_t)(M * 4);
    cfg.rows[2] = 16; cfg.colsb[2] = 64;
    _tile_loadconfig(&cfg);
}

/* x[M, K] -> xp[K/32][16][M][2]: B tile of chunk c starts at xp + c * 32 * M. */
static void pack_x(const bf16_t *x, int64_t M, int64_t ldx, int64_t K, bf16_t *xp) {
    for (int64_t c = 0; c < K / 32; c++)
        for (int i = 0; i < 16; i++)
            for (int64_t m = 0; m < M; m++) {
                const bf16_t *src = x + m * ldx + c * 32 + 2 * i;
                bf16_t *dst = xp + ((c * 16 + i) * M + m) * 2;
                dst[0] = src[0];
                dst[1] = src[1];
            }
}

/* C tile (16 rows of n, M columns, row stride 64 bytes) -> out[m, n0 .. n0+15] (+ bias). */
static inline void amx_store(const float *cbuf, int64_t M, const bf16_t *bias, bf16_t *out,
                             int64_t ldo, int64_t n0) {
    __m512 b = _mm512_setzero_ps();
    if (bias)
        b = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bias + n0))), 16));
    const __m512i rows = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64,
                                          48, 32, 16, 0); /* row r of C at float offset 16 r */
    for (int64_t m = 0; m < M; m++) {
        __m512 v = _mm512_i32gather_ps(_mm512_add_epi32(rows, _mm512_set1_epi32((int)m)), cbuf, 4);
        v = _mm512_add_ps(v, b);
        _mm256_storeu_si256((__m256i *)(out + m * ldo + n0), (__m256i)_mm512_cvtneps_pbh(v));
    }
}

/* Rows [nb, ne) of W (N rows), ne - nb a multiple of 16; tiles configured by the caller.
 * One 16-row block at a time: with two, large K meant 32 concurrent row streams (one page
 * each at K >= 2048) and measured ~15% slower; at K = 576 one block is as fast. */
static void amx_run(const bf16_t *xp, int64_t M, const bf16_t *w, int64_t N, int64_t K,
                    const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) {
    float cbuf[16 * 16] __attribute__((aligned(64)));
    const int64_t ldw = K * 2, ldb = M * 4, nc = K / 32;
    const int64_t pf_rows = (PF_BYTES + 16 * ldw - 1) / (16 * ldw) * 16;
    for (int64_t n0 = nb; n0 < ne; n0 += 16) {
        const bf16_t *w0 = w + n0 * K;
        const int pf = n0 + pf_rows + 16 <= N; /* as in the AVX512 path: stay inside W */
        _tile_zero(0);
        for (int64_t c = 0; c < nc; c++) {
            if (pf)
                for (int r = 0; r < 16; r++)
                    _mm_prefetch((const char *)(w0 + (pf_rows + r) * K + c * 32), PF_HINT);
            _tile_loadd(1, xp + c * 32 * M, ldb);
            _tile_loadd(2, w0 + c * 32, ldw);
            _tile_dpbf16ps(0, 2, 1);
        }
        _tile_stored(0, cbuf, 64);
        amx_store(cbuf, M, bias, out, ldo, n0);
    }
}

/* ---------------------------------------------------------------------------------------------
 * AMX path for batches (M > 8). Same operand roles as above (W tiles as A, straight from their
 * row-major layout; x repacked as B), but M is cut into 16-column tiles and each step of the
 * K loop feeds a 2 x 2 block: 2 W tiles x 2 x tiles -> 4 C accumulators (all 8 tile
 * registers). Each W tile load then serves two x tiles and vice versa, which halves the tile
 * loads per TDPBF16PS compared with 1 x 1. A 32-row block of W (36 KiB at K = 576) is read
 * from DRAM once and re-read from L1/L2 for every further pair of x tiles.
 * x is zero-padded to whole 16-row tiles: TDPBF16PS costs the same for any B width, so a
 * partial tile computes padding for free and needs no second tile configuration.
 * ------------------------------------------------------------------------------------------- */

/* In place: r[j] <- column j of the 16 x 16 matrix whose row i is r[i] (32-bit lanes). */
AI void transpose16(__m512 *r) {
    __m512 t[16], v[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* v[4g + j], 128-bit lane l: column 4 l + j of rows 4 g .. 4 g + 3 */
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        v[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        v[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        v[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        v[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int j = 0; j < 4; j++) {
        __m512 lo01 = _mm512_shuffle_f32x4(v[j], v[4 + j], 0x44);  /* g0 l0, g0 l1, g1 l0, g1 l1 */
        __m512 hi01 = _mm512_shuffle_f32x4(v[j], v[4 + j], 0xEE);  /* g0 l2, g0 l3, g1 l2, g1 l3 */
        __m512 lo23 = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0x44);
        __m512 hi23 = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0xEE);
        r[j] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(lo01, lo23, 0xDD);
        r[8 + j] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(hi01, hi23, 0xDD);
    }
}

/* One B tile: rows m0 .. m0+15 of x (zeros past M), k = 32 c .. 32 c + 31 ->
 * xp[c][16 k-pairs][16 m][2]. A VNNI B tile is the transpose of x's rows read as 16 k-pairs. */
AI void pack_tile16(const bf16_t *x, int64_t M, int64_t ldx, int64_t m0, int64_t c,
                    bf16_t *dst) {
    __m512 r[16];
    for (int i = 0; i < 16; i++)
        r[i] = m0 + i < M ? _mm512_loadu_ps(x + (m0 + i) * ldx + c * 32) : _mm512_setzero_ps();
    transpose16(r);
    for (int i = 0; i < 16; i++) _mm512_store_ps((float *)dst + 16 * i, r[i]);
}

/* C tile (16 rows of n x 16 columns of m, fp32) -> out[m, n0 .. n0+15] for m < mv, + bias. */
AI void store_ct(const float *cbuf, int64_t mv, const bf16_t *bias, bf16_t *out, int64_t ldo,
                 int64_t m0, int64_t n0) {
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_load_ps(cbuf + 16 * i);
    transpose16(r);
    __m512 b = _mm512_setzero_ps();
    if (bias)
        b = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bias + n0))), 16));
    for (int m = 0; m < mv; m++)
        _mm256_storeu_si256((__m256i *)(out + (m0 + m) * ldo + n0),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(r[m], b)));
}

/* Tiles 0-3: C (c[2 i + j] = W tile i x x tile j), 4-5: A (W), 6-7: B (x); all 16 x 64 B. */
static void amx_config_big(void) {
    tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* One NW x MX block (NW W tiles of 16 rows at w0, MX x tiles at xp0, xp1) over all of K.
 * pf: the W rows to prefetch alongside (same layout as w0), or NULL. NW and MX are
 * compile-time constants at every call, so the dead tile operations disappear. */
AI void amx_block(const int NW, const int MX, const bf16_t *w0, int64_t K, const bf16_t *xp0,
                  const bf16_t *xp1, int64_t nc, const bf16_t *pf, float *cbuf) {
    const int64_t ldw = K * 2;
    _tile_zero(0);
    if (MX > 1) _tile_zero(1);
    if (NW > 1) _tile_zero(2);
    if (NW > 1 && MX > 1) _tile_zero(3);
    for (int64_t c = 0; c < nc; c++) {
        if (pf)
            for (int r = 0; r < 16 * NW; r++)
                _mm_prefetch((const char *)(pf + r * K + c * 32), PF_HINT);
        _tile_loadd(4, w0 + c * 32, ldw);
        _tile_loadd(6, xp0 + c * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (MX > 1) {
            _tile_loadd(7, xp1 + c * 512, 64);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (NW > 1) {
            _tile_loadd(5, w0 + 16 * K + c * 32, ldw);
            _tile_dpbf16ps(2, 5, 6);
            if (MX > 1) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, cbuf, 64);
    if (MX > 1) _tile_stored(1, cbuf + 256, 64);
    if (NW > 1) _tile_stored(2, cbuf + 512, 64);
    if (NW > 1 && MX > 1) _tile_stored(3, cbuf + 768, 64);
}

/* Rows [nb, ne) of W (N rows), ne - nb a multiple of 16, against all M rows of x (packed as
 * xp[M/16 tiles][K/32][512]). Tiles configured by the caller. */
static void amx_run_big(const bf16_t *xp, int64_t M, const bf16_t *w, int64_t N, int64_t K,
                        const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) {
    float cbuf[4 * 256] __attribute__((aligned(64)));
    const int64_t nc = K / 32, mtiles = (M + 15) / 16, xts = nc * 512;
    const int64_t pf_rows = (PF_BYTES + 32 * K * 2 - 1) / (32 * K * 2) * 32;
    for (int64_t n0 = nb; n0 < ne; n0 += 32) {
        const int two = n0 + 32 <= ne;
        const bf16_t *w0 = w + n0 * K;
        /* prefetch the W block pf_rows ahead, during the first pass over it only */
        const bf16_t *pf = n0 + pf_rows + 32 <= N ? w0 + pf_rows * K : NULL;
        for (int64_t mt = 0; mt < mtiles; mt += 2) {
            const bf16_t *x0 = xp + mt * xts, *x1 = x0 + xts;
            const int64_t mv0 = M - mt * 16 < 16 ? M - mt * 16 : 16;
            const int64_t mv1 = M - mt * 16 - 16 < 16 ? M - mt * 16 - 16 : 16;
            const bf16_t *p = mt == 0 ? pf : NULL;
            if (mt + 1 < mtiles) {
                if (two) amx_block(2, 2, w0, K, x0, x1, nc, p, cbuf);
                else amx_block(1, 2, w0, K, x0, x1, nc, p, cbuf);
                store_ct(cbuf, mv0, bias, out, ldo, mt * 16, n0);
                store_ct(cbuf + 256, mv1, bias, out, ldo, mt * 16 + 16, n0);
                if (two) {
                    store_ct(cbuf + 512, mv0, bias, out, ldo, mt * 16, n0 + 16);
                    store_ct(cbuf + 768, mv1, bias, out, ldo, mt * 16 + 16, n0 + 16);
                }
            } else {
                if (two) amx_block(2, 1, w0, K, x0, x0, nc, p, cbuf);
                else amx_block(1, 1, w0, K, x0, x0, nc, p, cbuf);
                store_ct(cbuf, mv0, bias, out, ldo, mt * 16, n0);
                if (two) store_ct(cbuf + 512, mv0, bias, out, ldo, mt * 16, n0 + 16);
            }
        }
    }
}
#endif

/* Below this many weight bytes per thread, waking another thread costs more than it saves. */
#ifndef MIN_BYTES_PER_THREAD
#define MIN_BYTES_PER_THREAD (128 * 1024)
#endif
/* Work is handed out in chunks of about this many weight bytes (clamped), several per thread:
 * a thread that starts late or gets preempted then delays the call by one chunk, not by its
 * whole static share. */
#define CHUNK_MIN_BYTES (32 * 1024)
#define CHUNK_MAX_BYTES (1024 * 1024)
#define CHUNKS_PER_THREAD 8

typedef struct {
    const bf16_t *x, *xp, *w, *bias;
    const uint8_t *codes; /* quantized weights (codes, dm) instead of w when not NULL: Q4_1
                           * with qx, Q8_0 without */
    const float *dm;
    const int8_t *qx;     /* Q4_1: x quantized (see above), ldq bytes a row */
    int64_t ldq;
    bf16_t *out;
    int64_t M, ldx, K, N, ldo;
    int64_t n_main;  /* rows done by the main kernel; AVX512 does [n_main, N) as a last unit */
    int64_t chunk;   /* rows per unit of work */
    int64_t nchunks, nunits;
    int64_t next;    /* shared work counter */
    int amx;         /* 1: M <= 8 AMX kernel, 2: batched AMX kernel (M > 8) */
} job_t;

/* x rows m0 .. M-1 for W rows [nb, ne) on AVX512, at most 8 rows of x per pass. */
static void run_avx(const job_t *j, int64_t nb, int64_t ne) {
    /* quantized: passes of Q_PASS rows; each row's sums never depend on the others */
    for (int64_t m0 = 0; j->codes && m0 < j->M; m0 += Q_PASS) {
        const int64_t mr = j->M - m0 < Q_PASS ? j->M - m0 : Q_PASS;
        if (j->qx)
            run_q4_runs[mr](j->qx + m0 * j->ldq, j->ldq, j->codes, j->dm, j->N, j->K, j->bias,
                            j->out + m0 * j->ldo, j->ldo, nb, ne);
        else
            run_q8_runs[mr](j->x + m0 * j->ldx, j->ldx, j->codes, j->dm, j->N, j->K, j->bias,
                            j->out + m0 * j->ldo, j->ldo, nb, ne);
    }
    if (j->codes) return;
    for (int64_t m0 = 0; m0 < j->M; m0 += 8) {
        const int64_t mr = j->M - m0 < 8 ? j->M - m0 : 8;
        RUNS[mr](j->x + m0 * j->ldx, j->ldx, j->w, j->N, j->K, j->bias, j->out + m0 * j->ldo,
                 j->ldo, nb, ne);
    }
}

static void work(job_t *j) {
#ifdef TF_WITH_AMX
    if (j->amx == 2) {
        /* pack x into B tiles, shared among the threads; the loop's barrier then makes all
         * of xp visible before any thread reads it */
        const int64_t nc = j->K / 32, npack = (j->M + 15) / 16 * nc;
#pragma omp for schedule(static)
        for (int64_t u = 0; u < npack; u++)
            pack_tile16(j->x, j->M, j->ldx, u / nc * 16, u % nc, (bf16_t *)j->xp + u * 512);
        amx_config_big();
    } else if (j->amx) {
        amx_config((int)j->M); /* tile config is per thread */
    }
#endif
    for (int64_t u; (u = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->nunits;) {
        if (u == j->nchunks) {
            run_avx(j, j->n_main, j->N);
            continue;
        }
        const int64_t nb = u * j->chunk;
        const int64_t ne = nb + j->chunk < j->n_main ? nb + j->chunk : j->n_main;
#ifdef TF_WITH_AMX
        if (j->amx == 2) {
            amx_run_big(j->xp, j->M, j->w, j->N, j->K, j->bias, j->out, j->ldo, nb, ne);
            continue;
        }
        if (j->amx) {
            amx_run(j->xp, j->M, j->w, j->N, j->K, j->bias, j->out, j->ldo, nb, ne);
            continue;
        }
#endif
        run_avx(j, nb, ne);
    }
#ifdef TF_WITH_AMX
    if (j->amx) _tile_release(); /* leave the thread's AMX state clean for others */
#endif
}

static int run_job(job_t *jp, int64_t row_bytes, int64_t nthreads, int64_t use_amx);

/* Rows of x one call takes: M > 8 runs the batched AMX kernel, whose packed copy of x
 * (M * K * 2 bytes) is allocated per call. */
#define MAX_ROWS 1024

/* out[M, N] = x[M, K] @ w[N, K]^T (+ bias). x rows are ldx elements apart, out rows ldo; w and
 * bias are contiguous. use_amx: 0 = AVX512 only, 1 = AMX where the shape allows.
 * M > 8 needs AMX (this build, use_amx and K % 32 == 0).
 * Returns 0 on success, -1 on unsupported arguments (nothing written). */
int tf_skinny_linear_bf16(const bf16_t *x, int64_t M, int64_t ldx, const bf16_t *w, int64_t N,
                          int64_t K, const bf16_t *bias, bf16_t *out, int64_t ldo,
                          int64_t nthreads, int64_t use_amx) {
    if (M < 1 || M > MAX_ROWS || N < 1 || K < 1) return -1;
    job_t j = {.x = x, .w = w, .bias = bias, .out = out, .M = M, .ldx = ldx, .K = K, .N = N,
               .ldo = ldo};
    return run_job(&j, K * 2, nthreads, use_amx);
}

/* The same product with W as Q4_1 (codes, dm: layout in "Q4_1 weights against int8
 * activations" above), K % 32 == 0, on int8 activations: x's rows are quantized per block of 32
 * first, once per call. Each row's outputs depend on that row alone, for any M (up to 16 rows
 * share each loaded block, more go in passes of 16). */
int tf_skinny_linear_q4_1(const bf16_t *x, int64_t M, int64_t ldx, const uint8_t *codes,
                          const float *dm, int64_t N, int64_t K, const bf16_t *bias, bf16_t *out,
                          int64_t ldo, int64_t nthreads) {
    if (M < 1 || M > MAX_ROWS || N < 1 || K < 32 || K % 32) return -1;
    const int64_t ldq = qx_row_bytes(K);
    /* a decode step's rows fit on the stack (1.9 KB a row at K = 1536); the threads read it
     * while this call waits for them */
    int8_t local[16384] __attribute__((aligned(64)));
    int8_t *qx = M * ldq <= (int64_t)sizeof local ? local : (int8_t *)aligned_alloc(64, (size_t)(M * ldq));
    if (!qx) return -1;
    for (int64_t m = 0; m < M; m++) quantize_row_q8(x + m * ldx, K, qx + m * ldq);
    job_t j = {.x = x, .bias = bias, .codes = codes, .dm = dm, .qx = qx, .ldq = ldq, .out = out,
               .M = M, .ldx = ldx, .K = K, .N = N, .ldo = ldo};
    const int rc = run_job(&j, K / 2 + K / 32 * 8, nthreads, 0);
    if (qx != local) free(qx);
    return rc;
}

/* The same with W as Q8_0: codes [N, K] int8 (block b of a row at byte 32 b), d [N, K/32] fp32
 * (each block's scale). Each output is bit for bit tf_skinny_linear_bf16's AVX512 path for
 * that row alone on the dequantized weight, for any M. */
int tf_skinny_linear_q8_0(const bf16_t *x, int64_t M, int64_t ldx, const int8_t *codes,
                          const float *d, int64_t N, int64_t K, const bf16_t *bias, bf16_t *out,
                          int64_t ldo, int64_t nthreads) {
    if (M < 1 || M > MAX_ROWS || N < 1 || K < 32 || K % 32) return -1;
    job_t j = {.x = x, .bias = bias, .codes = (const uint8_t *)codes, .dm = d,
               .out = out, .M = M, .ldx = ldx, .K = K, .N = N, .ldo = ldo};
    return run_job(&j, K + K / 32 * 4, nthreads, 0);
}

/* Splits the job over threads and runs it; row_bytes: weight bytes read per row of W. */
static int run_job(job_t *jp, int64_t row_bytes, int64_t nthreads, int64_t use_amx) {
    job_t j = *jp;
    const int64_t M = j.M, N = j.N, K = j.K, ldx = j.ldx;
    const bf16_t *x = j.x;
    const int64_t bytes = N * row_bytes;
    /* per-thread work grows with the number of 16-row tiles of x once past 8 rows; quantized
     * rows count as the bf16 rows they stand for (their per-block work costs about that) */
    const int64_t work_bytes = j.codes  ? N * K * 2 * ((M + Q_PASS - 1) / Q_PASS)
                               : M > 8 ? bytes * ((M + 15) / 16)
                                       : bytes;
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    if (nt > work_bytes / MIN_BYTES_PER_THREAD) nt = work_bytes / MIN_BYTES_PER_THREAD;
    if (nt < 1) nt = 1;

#ifdef TF_WITH_AMX
    bf16_t *xp = NULL; /* x repacked for the B tiles */
    if (j.codes) {
        /* quantized: AVX512 tiles only (use_amx is 0) */
    } else if (M > 8) {
        if (!use_amx || K % 32) return -1;
        const int64_t mpad = (M + 15) / 16 * 16;
        if ((xp = (bf16_t *)aligned_alloc(64, (size_t)(mpad * K * 2))) == NULL) return -1;
        j.xp = xp; /* packed by the threads themselves, in work() */
        j.amx = 2;
    } else if (use_amx && K % 32 == 0 && N >= 16 &&
               (xp = (bf16_t *)aligned_alloc(64, (size_t)((M * K * 2 + 63) / 64 * 64))) != NULL) {
        pack_x(x, M, ldx, K, xp); /* 72 KiB at K = 4608 */
        j.xp = xp;
        j.amx = 1;
    }
#else
    if (M > 8 && !j.codes) return -1;
    (void)use_amx;
#endif
    /* AMX covers whole 16-row blocks (the batched kernel works in pairs of them); AVX512 does
     * the < 16 leftover rows */
    const int64_t step = j.amx == 2 ? 32
                         : j.amx    ? 16
                         : j.qx     ? ROWS_Q4[M < Q_PASS ? M : Q_PASS]
                         : j.codes  ? ROWS_Q8[M < Q_PASS ? M : Q_PASS]
                                    : ROWS[M];
    j.n_main = j.amx ? N / 16 * 16 : N;
    j.chunk = j.n_main;
    if (nt > 1) {
        int64_t cb = bytes / (nt * CHUNKS_PER_THREAD);
        cb = cb < CHUNK_MIN_BYTES ? CHUNK_MIN_BYTES : cb > CHUNK_MAX_BYTES ? CHUNK_MAX_BYTES : cb;
        j.chunk = (cb / row_bytes + step - 1) / step * step;
        if (j.chunk < step) j.chunk = step;
    }
    j.nchunks = j.chunk ? (j.n_main + j.chunk - 1) / j.chunk : 0; /* 0: N < 16, all AVX512 */
    j.nunits = j.nchunks + (j.n_main < N);
    if (nt > j.nunits) nt = j.nunits;

    if (nt == 1) {
        work(&j); /* no OpenMP region at all: entering one costs ~1 us even for one thread */
    } else {
#pragma omp parallel num_threads((int)nt)
        work(&j);
    }
#ifdef TF_WITH_AMX
    free(xp);
#endif
    return 0;
}

#ifndef TF_WITH_AMX
int tf_amx_init(void) { return -1; } /* built without AMX: never ask the kernel for it */
#endif
