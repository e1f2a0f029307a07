/*
 * Decode attention over a paged KV cache: one query token per sequence, K/V read in place
 * through the block table (no gathered copy), fp32 math with an online (streaming) softmax.
 *
 * Cache layout: [num_blocks, block_size, kv_heads, head_dim], bf16 or fp32, contiguous.
 * Work unit: one (sequence, kv head) pair. All G = heads / kv_heads query heads of the group
 * are handled together, so each K/V row is pulled from memory once per group. A bf16 V row is
 * widened to fp32 in registers where the accumulation reads it (once for all G heads): a chunk
 * buffer in between cost a store and a reload per vector, about a third of the kernel's time
 * at long contexts. K is read by bf16 dot products, or widened into a chunk buffer when q is
 * fp32.
 *
 * Tokens go in chunks of 16 (chunks may straddle blocks: each row has its own pointer). Per
 * chunk and query head: 16 dot products, kept as 16 vectors and summed horizontally by one
 * transpose-add tree into a vector of 16 scores; then the usual running max / running sum
 * update and acc += p * V.
 *
 * No torch headers here (ops.cpp registers the operator): this file compiles in about a
 * second. The instruction sets come from the target pragma (headers first, see
 * skinny_linear.cpp); AVX512-BF16 only where the CPU has it (TF_PAGED_BF16), as the fp32 -> bf16
 * output rounding and bf16 dot products are its only users.
 *
 * Those users sit under TF_PAGED_BF16, not __AVX512BF16__: g++ does not define the feature
 * macros for a target pragma, and that guard had left them out of every build. The bf16 dot
 * products are exact per row like the rest (each (sequence, kv head) pair alone); they round
 * differently from widening K to fp32, which, like any change of rounding, moves which of two
 * nearly tied tokens wins after a prefix-cache hit (docs/engine.md).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#ifdef TF_PAGED_BF16
#pragma GCC target("avx512f,fma,avx512bf16,avx512vl,avx512bw")
#else
#pragma GCC target("avx512f,fma")
#endif

#include "kernels.h"

typedef uint16_t bf16_t;

#define AI static inline __attribute__((always_inline))
#define CHUNK 16
#define MAX_G 16   /* query heads per kv head */
#define MAX_HD 256 /* head_dim, a multiple of 16 */

typedef tf_paged_args args_t;

AI __m512 bf16x16_to_ps(const bf16_t *p) {
    /* bf16 -> fp32 is exact: the bf16 bits are the top half of the fp32 */
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

AI __m256i ps_to_bf16x16(__m512 x) {
#ifdef TF_PAGED_BF16
    return (__m256i)_mm512_cvtneps_pbh(x);
#else
    /* round to nearest even on the bits (inputs are finite here) */
    __m512i b = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    b = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16));
#endif
}

/* exp(x) for x <= 0 (the softmax only ever exponentiates s - max). Cody-Waite range reduction
 * to |r| <= ln2/2 and a degree-7 Taylor polynomial: relative error ~1e-7, below fp32 noise of
 * the dot products themselves. */
AI __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f)); /* exp(-87) ~ 1.6e-38: "zero" for us */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Lane t of the result = sum of the 16 lanes of a[t]. Three levels: pairwise unpack-add
 * within 128-bit lanes, a 4x4 transpose-add within 128-bit lanes, then across 128-bit lanes. */
AI __m512 hsum16(const __m512 *a) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int j = 0; j < 4; j++)
        c[j] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * j], b[2 * j + 1], 0x44),
                             _mm512_shuffle_ps(b[2 * j], b[2 * j + 1], 0xEE));
    __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x44),
                              _mm512_shuffle_f32x4(c[0], c[1], 0xEE));
    __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x44),
                              _mm512_shuffle_f32x4(c[2], c[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}

/* Byte offset of token pos's row for kv head h, walking the block table. */
AI int64_t row_off(const int64_t *bt, int64_t pos, int64_t bs, int64_t row, int64_t col,
                   int64_t esz) {
    return ((bt[pos / bs] * bs + pos % bs) * row + col) * esz;
}

/* One (sequence d, kv head h) pair. HD, BF16 (cache dtype) and DOT (q and K both bf16: the
 * scores come from bf16 dot products, exact products with fp32 sums, without converting K)
 * are compile-time constants in each instantiation (HD = 0: runtime head_dim), so the
 * per-row loops unroll into registers. */
AI void pair(const args_t *a, int64_t d, int64_t h, const int HD_, const int G_, const int BF16,
             const int DOT) {
    const int64_t HD = HD_ ? HD_ : a->head_dim;
    const int64_t NV = HD / 16;
    const int64_t G = G_ ? G_ : a->heads / a->kv_heads;
    const int64_t bs = a->block_size;
    const int64_t row = a->kv_heads * HD; /* elements between consecutive tokens */
    const int64_t n_ctx = ((const int64_t *)(intptr_t)a->ctx)[d];
    const int64_t *bt = (const int64_t *)(intptr_t)a->bt + d * a->bt_sd;
    const float scale = (float)a->scale;
    const int64_t esz = BF16 ? 2 : 4;
    const int64_t row_bytes = HD * esz;

    float qf[MAX_G][MAX_HD] __attribute__((aligned(64)));
    bf16_t qb[MAX_G][MAX_HD] __attribute__((aligned(64)));
    float acc[MAX_G][MAX_HD] __attribute__((aligned(64)));
    float kbuf[CHUNK][MAX_HD] __attribute__((aligned(64)));
    float m[MAX_G], l[MAX_G];

    for (int64_t g = 0; g < G; g++) {
        const int64_t qh = h * G + g;
        if (a->q_bf16) {
            const bf16_t *qp = (const bf16_t *)(intptr_t)a->q + d * a->q_sd + qh * a->q_sh;
            memcpy(qb[g], qp, (size_t)HD * 2);
            for (int64_t i = 0; i < NV; i++)
                _mm512_store_ps(&qf[g][16 * i], bf16x16_to_ps(qp + 16 * i));
        } else {
            const float *qp = (const float *)(intptr_t)a->q + d * a->q_sd + qh * a->q_sh;
            for (int64_t i = 0; i < NV; i++)
                _mm512_store_ps(&qf[g][16 * i], _mm512_loadu_ps(qp + 16 * i));
        }
        for (int64_t i = 0; i < NV; i++) _mm512_store_ps(&acc[g][16 * i], _mm512_setzero_ps());
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }

    const char *kbase = (const char *)(intptr_t)a->k;
    const char *vbase = (const char *)(intptr_t)a->v;
    int64_t blk = 0, slot = 0; /* block-table cursor of the chunk's first row */
    for (int64_t c0 = 0; c0 < n_ctx; c0 += CHUNK) {
        const int n = (int)(n_ctx - c0 < CHUNK ? n_ctx - c0 : CHUNK);
        /* Prefetch the next chunk's rows: a sequence's blocks are scattered, so the hardware
         * prefetchers lose the stream at every block boundary. */
        for (int64_t pos = c0 + CHUNK; pos < c0 + 2 * CHUNK && pos < n_ctx; pos++) {
            const int64_t off = row_off(bt, pos, bs, row, h * HD, esz);
            for (int64_t b = 0; b < row_bytes; b += 64) {
                _mm_prefetch(kbase + off + b, _MM_HINT_T0);
                _mm_prefetch(vbase + off + b, _MM_HINT_T0);
            }
        }
        /* Row pointers of the chunk's tokens; rows past n repeat the last valid one (kept in
         * bounds, their scores are masked) so the dot-product loop has no branches. */
        const char *kr[CHUNK];
        const float *vr[CHUNK];   /* fp32 cache: V rows in place */
        const bf16_t *vb[CHUNK];  /* bf16 cache: V rows in place, widened where they are used */
        for (int t = 0; t < CHUNK; t++) {
            const int64_t off = ((bt[blk] * bs + slot) * row + h * HD) * esz;
            if (t + 1 < n && ++slot == bs) {
                slot = 0;
                blk++;
            }
            const int tv = t < n ? t : n - 1;
            if (BF16) {
                const bf16_t *kp = (const bf16_t *)(kbase + off), *vp = (const bf16_t *)(vbase + off);
                if (t < n && !DOT)
                    for (int64_t i = 0; i < NV; i++)
                        _mm512_store_ps(&kbuf[t][16 * i], bf16x16_to_ps(kp + 16 * i));
                kr[t] = DOT ? (t < n ? (const char *)kp : kr[t - 1]) : (const char *)kbuf[tv];
                vb[t] = t < n ? vp : vb[t - 1];
                vr[t] = NULL;
            } else {
                kr[t] = t < n ? kbase + off : kr[t - 1];
                vr[t] = t < n ? (const float *)(vbase + off) : vr[t - 1];
            }
        }
        if (++slot == bs) { /* advance the cursor past the chunk's last row */
            slot = 0;
            blk++;
        }
        const __mmask16 valid = (__mmask16)((1u << n) - 1);

        float pv[MAX_G][CHUNK] __attribute__((aligned(64)));
        for (int64_t g = 0; g < G; g++) {
            __m512 dots[CHUNK];
            for (int t = 0; t < CHUNK; t++) {
                __m512 s = _mm512_setzero_ps();
#ifdef TF_PAGED_BF16
                if (DOT) {
                    const bf16_t *kp = (const bf16_t *)kr[t];
                    for (int64_t i = 0; i < HD / 32; i++)
                        s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(kp + 32 * i),
                                             (__m512bh)_mm512_load_si512(&qb[g][32 * i]));
                } else
#endif
                {
                    const float *kp = (const float *)kr[t];
                    for (int64_t i = 0; i < NV; i++)
                        s = _mm512_fmadd_ps(_mm512_load_ps(&qf[g][16 * i]),
                                            _mm512_loadu_ps(kp + 16 * i), s);
                }
                dots[t] = s;
            }
            const __m512 sc = _mm512_mul_ps(hsum16(dots), _mm512_set1_ps(scale));
            const float cmax = _mm512_mask_reduce_max_ps(valid, sc);
            const float m_new = cmax > m[g] ? cmax : m[g];
            const __m512 p =
                _mm512_maskz_mov_ps(valid, exp_ps(_mm512_sub_ps(sc, _mm512_set1_ps(m_new))));
            _mm512_store_ps(pv[g], p);
            if (m_new != m[g]) { /* the running max moved: rescale what was accumulated */
                const float alpha = _mm512_cvtss_f32(exp_ps(_mm512_set1_ps(m[g] - m_new)));
                l[g] *= alpha;
                for (int64_t i = 0; i < NV; i++)
                    _mm512_store_ps(&acc[g][16 * i], _mm512_mul_ps(_mm512_load_ps(&acc[g][16 * i]),
                                                                   _mm512_set1_ps(alpha)));
                m[g] = m_new;
            }
            l[g] += _mm512_reduce_add_ps(p);
        }
        /* acc += p V with each V vector loaded once for all G heads; with G and HD known at
         * compile time the G * NV accumulators stay in registers across the chunk */
        for (int64_t i0 = 0; i0 < NV; i0 += 4) {
            const int64_t nv = NV - i0 < 4 ? NV - i0 : 4;
            __m512 o[MAX_G][4];
            for (int64_t g = 0; g < G; g++)
                for (int64_t i = 0; i < nv; i++) o[g][i] = _mm512_load_ps(&acc[g][16 * (i0 + i)]);
            for (int t = 0; t < n; t++) {
                __m512 vv[4];
                for (int64_t i = 0; i < nv; i++)
                    vv[i] = BF16 ? bf16x16_to_ps(vb[t] + 16 * (i0 + i))
                                 : _mm512_loadu_ps(vr[t] + 16 * (i0 + i));
                for (int64_t g = 0; g < G; g++) {
                    const __m512 pb = _mm512_set1_ps(pv[g][t]);
                    for (int64_t i = 0; i < nv; i++) o[g][i] = _mm512_fmadd_ps(pb, vv[i], o[g][i]);
                }
            }
            for (int64_t g = 0; g < G; g++)
                for (int64_t i = 0; i < nv; i++) _mm512_store_ps(&acc[g][16 * (i0 + i)], o[g][i]);
        }
    }

    for (int64_t g = 0; g < G; g++) {
        const int64_t qh = h * G + g;
        /* an empty context has nothing to attend to: write zeros rather than 0/0 */
        const __m512 inv = _mm512_set1_ps(l[g] > 0.0f ? 1.0f / l[g] : 0.0f);
        for (int64_t i = 0; i < NV; i++) {
            const __m512 o = _mm512_mul_ps(_mm512_load_ps(&acc[g][16 * i]), inv);
            if (a->out_bf16) {
                bf16_t *op = (bf16_t *)(intptr_t)a->out + d * a->o_sd + qh * a->o_sh + 16 * i;
                _mm256_storeu_si256((__m256i *)op, ps_to_bf16x16(o));
            } else {
                float *op = (float *)(intptr_t)a->out + d * a->o_sd + qh * a->o_sh + 16 * i;
                _mm512_storeu_ps(op, o);
            }
        }
    }
}

/* Instantiations with HD as a constant for the common head sizes. G stays a runtime value:
 * making it a constant too (one copy per G) measured within noise here and multiplies the
 * build time (~1 min instead of ~2 s). */
#define BY_HD(BF16, DOT)                                                                       \
    do {                                                                                       \
        if (hd == 64) pair(a, d, h, 64, 0, BF16, DOT);                                         \
        else if (hd == 128) pair(a, d, h, 128, 0, BF16, DOT);                                  \
        else pair(a, d, h, 0, 0, BF16, DOT);                                                   \
    } while (0)

static void pair_dispatch(const args_t *a, int64_t d, int64_t h) {
    const int64_t hd = a->head_dim;
    if (a->cache_bf16) {
#ifdef TF_PAGED_BF16
        if (a->q_bf16 && hd % 32 == 0) { /* bf16 q: its values are exact in a bf16 dot */
            BY_HD(1, 1);
            return;
        }
#endif
        BY_HD(1, 0);
    } else {
        BY_HD(0, 0);
    }
}

/* Returns 0 on success, -1 for shapes the kernel does not take (nothing written), -2 for a
 * context length or block id out of range (nothing written). */
int tf_paged_decode_attention(const tf_paged_args *a) {
    if (a->D < 0 || a->kv_heads < 1 || a->heads < 1 || a->heads % a->kv_heads ||
        a->heads / a->kv_heads > MAX_G || a->head_dim < 16 || a->head_dim > MAX_HD ||
        a->head_dim % 16 || a->block_size < 1 || a->max_blocks < 0)
        return -1;
    /* validate every block id the kernel will read: a bad table must not read wild memory */
    const int64_t *ctx = (const int64_t *)(intptr_t)a->ctx;
    for (int64_t d = 0; d < a->D; d++) {
        const int64_t n = ctx[d];
        if (n < 0 || n > a->max_blocks * a->block_size) return -2;
        const int64_t *bt = (const int64_t *)(intptr_t)a->bt + d * a->bt_sd;
        for (int64_t b = 0; b < (n + a->block_size - 1) / a->block_size; b++)
            if (bt[b] < 0 || bt[b] >= a->num_blocks) return -2;
    }
    const int64_t pairs = a->D * a->kv_heads;
    int64_t nt = a->nthreads < 1 ? 1 : a->nthreads;
    if (nt > pairs) nt = pairs;
    if (nt <= 1) { /* no OpenMP region: entering one costs ~1 us even for one thread */
        for (int64_t p = 0; p < pairs; p++) pair_dispatch(a, p / a->kv_heads, p % a->kv_heads);
        return 0;
    }
    /* dynamic: context lengths differ between sequences, so equal-count splits are not
     * equal-work splits */
#pragma omp parallel for num_threads((int)nt) schedule(dynamic, 1)
    for (int64_t p = 0; p < pairs; p++) pair_dispatch(a, p / a->kv_heads, p % a->kv_heads);
    return 0;
}
